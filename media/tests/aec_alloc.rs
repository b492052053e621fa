//! The per-frame path must not allocate: a call runs 50 frames a second in
//! each direction for as long as it lasts. Its own test binary, because
//! counting needs a global allocator.

mod common {
    pub mod counting_alloc;
}

use common::counting_alloc::{allocations, Counting};
use switchboard_media::aec::{AudioSettings, EchoCanceller};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn frames_do_not_allocate() {
    // The counter itself works.
    let before = allocations();
    drop(std::hint::black_box(Box::new(1u8)));
    assert_eq!(allocations(), before + 1);

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
        let before = allocations();
        for _ in 0..500 {
            frame(&mut aec);
        }
        let allocations = allocations() - before;
        assert_eq!(
            allocations, 0,
            "{rate} Hz: {allocations} allocations in 500 frames"
        );
    }
}
