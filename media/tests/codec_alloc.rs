//! Heap use per 20 ms frame of each codec once created: the media path
//! runs every 20 ms for every call, so the allocator must stay out of it.

mod common {
    pub mod counting_alloc;
}

use common::counting_alloc::{allocations, Counting};
use switchboard_media::codec::{AudioDecoder, AudioEncoder, Codec};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations per frame over 50 frames of encode + decode (+ PLC and FEC).
fn allocations_per_frame(codec: Codec) -> f64 {
    let mut encoder = codec.encoder().unwrap();
    let mut decoder = codec.decoder().unwrap();
    let frame = codec.samples_per_frame();
    let pcm: Vec<i16> = (0..frame)
        .map(|n| ((n as f64 * 0.05).sin() * 8000.0) as i16)
        .collect();
    let mut payload = [0u8; 1275];
    let mut out = [0i16; 960];
    // Warm up: the first frames may set up lazily.
    for _ in 0..5 {
        let len = encoder.encode(&pcm, &mut payload).unwrap();
        decoder.decode(&payload[..len], &mut out).unwrap();
    }
    let before = allocations();
    for _ in 0..50 {
        let len = encoder.encode(&pcm, &mut payload).unwrap();
        decoder.decode_fec(&payload[..len], &mut out);
        decoder.conceal(&mut out);
        decoder.decode(&payload[..len], &mut out).unwrap();
    }
    (allocations() - before) as f64 / 50.0
}

#[test]
fn no_codec_allocates_per_frame() {
    for codec in [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus] {
        let per_frame = allocations_per_frame(codec);
        println!("{codec}: {per_frame} allocations per frame");
        assert_eq!(per_frame, 0.0, "{codec}");
    }
}
