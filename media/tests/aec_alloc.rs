//! The per-frame path must not allocate: a call runs 50 frames a second in
//! each direction for as long as it lasts. Its own test binary, because
//! counting needs a global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use switchboard_media::aec::{AudioSettings, EchoCanceller};

struct Counting;

thread_local! {
    // `const` so that touching it from inside the allocator cannot allocate.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn frames_do_not_allocate() {
    // The counter itself works.
    let before = ALLOCATIONS.with(Cell::get);
    drop(std::hint::black_box(Box::new(1u8)));
    assert_eq!(ALLOCATIONS.with(Cell::get), before + 1);

    for rate in [8000, 16_000] {
        let mut aec = EchoCanceller::new(AudioSettings::ALL, rate).unwrap();
        let n = aec.frame_samples();
        let far: Vec<i16> = (0..n).map(|i| ((i * 7919) % 8000) as i16 - 4000).collect();
        let mut near = vec![0i16; n];
        let mut frame = |aec: &mut EchoCanceller| {
            aec.far_end(&far);
            near.copy_from_slice(&far);
            aec.near_end(&mut near);
        };
        for _ in 0..10 {
            frame(&mut aec);
        }
        let before = ALLOCATIONS.with(Cell::get);
        for _ in 0..500 {
            frame(&mut aec);
        }
        let allocations = ALLOCATIONS.with(Cell::get) - before;
        assert_eq!(
            allocations, 0,
            "{rate} Hz: {allocations} allocations in 500 frames"
        );
    }
}
