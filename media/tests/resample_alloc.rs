//! Resampling a frame must not allocate: every call runs several resamplers
//! (to and from the bot, and the echo canceller's) 50 times a second. Its
//! own test binary, because counting needs a global allocator.

mod common {
    pub mod counting_alloc;
}

use common::counting_alloc::{allocations, Counting};
use switchboard_media::resample::{Resampler, SUPPORTED_RATES};
use switchboard_media::AudioFrame;

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn process_and_process_any_do_not_allocate() {
    // The counter itself works.
    let before = allocations();
    drop(std::hint::black_box(Box::new(1u8)));
    assert_eq!(allocations(), before + 1);

    for from in SUPPORTED_RATES {
        for to in SUPPORTED_RATES {
            let mut framed = Resampler::new(from, to).unwrap();
            let mut any = Resampler::new(from, to).unwrap();
            let n = from as usize / 50;
            let input: Vec<i16> = (0..3 * n)
                .map(|i| ((i * 7919) % 8000) as i16 - 4000)
                .collect();
            let mut out = AudioFrame::new(to);
            let mut sum = 0i64;
            let before = allocations();
            for i in 0..200 {
                framed.process(&input[..n], &mut out);
                sum += out.samples().iter().map(|&s| s as i64).sum::<i64>();
                // Odd sizes too, so partial chunks are held over.
                let odd = (i * 37) % (3 * n);
                any.process_any(&input[..odd], |s| sum += s.len() as i64);
            }
            framed.reset();
            any.reset();
            let allocations = allocations() - before;
            std::hint::black_box(sum);
            assert_eq!(allocations, 0, "{from}->{to}");
        }
    }
}
