//! Every call opens a jitter buffer of `capacity * max_payload` bytes (32 KB
//! by default). Asked for zeroed, jemalloc zeroes such a block by handing its
//! pages back to the kernel and faulting them in again, with a TLB shootdown
//! on every core: 4 % of the gateway at 14,000 INVITEs/s (BENCHMARKS.md). Its
//! own test binary, because counting needs a global allocator.

mod common {
    pub mod counting_alloc;
}

use common::counting_alloc::{large_zeroed, Counting, LARGE};
use switchboard_media::{JitterBuffer, JitterConfig};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn opening_a_jitter_buffer_asks_for_no_large_zeroed_block() {
    // The counter itself works.
    let before = large_zeroed();
    drop(std::hint::black_box(vec![0u8; LARGE]));
    assert_eq!(large_zeroed(), before + 1);

    let config = JitterConfig::default();
    assert!(config.capacity * config.max_payload >= LARGE);
    let before = large_zeroed();
    let buffer = std::hint::black_box(JitterBuffer::new(config));
    assert_eq!(large_zeroed(), before, "the buffer's storage came zeroed");
    drop(buffer);
}
