//! A global allocator that counts, per thread, how often it was asked for
//! memory, so a test can hold a code path at zero allocations. Each test
//! binary that uses it installs it with `#[global_allocator]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct Counting;

thread_local! {
    // Per thread, so tests running in parallel do not count each other;
    // `const` so that touching it from inside the allocator cannot allocate.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static LARGE_ZEROED: Cell<u64> = const { Cell::new(0) };
}

/// From this size a zeroed allocation is served from whole pages, which an
/// allocator reusing freed memory zeroes by giving them back to the kernel.
#[allow(dead_code)] // not every test binary asks
pub const LARGE: usize = 16 * 1024;

/// Zeroed allocations of [`LARGE`] bytes or more made by this thread.
#[allow(dead_code)]
pub fn large_zeroed() -> u64 {
    LARGE_ZEROED.with(Cell::get)
}

/// Allocations (and reallocations) made by this thread so far.
#[allow(dead_code)] // not every test binary asks
pub fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn count() {
    // `try_with`: the allocator may run while this thread's locals are
    // being torn down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        if layout.size() >= LARGE {
            let _ = LARGE_ZEROED.try_with(|n| n.set(n.get() + 1));
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
