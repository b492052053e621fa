//! The per-call media pipeline must not touch the heap per packet: after a
//! warm-up, RTP in → jitter → decode → resample, bot audio → resample →
//! pacer → encode → RTP out runs with zero allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use switchboard_gateway::call::media::MediaPipeline;
use switchboard_media::aec::AudioSettings;
use switchboard_media::jitter::AdaptiveConfig;
use switchboard_media::sdp::{negotiate_media, CodecPreferences, SessionOffer};
use switchboard_media::{AudioEncoder, AudioFrame, Codec};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// An RTP packet of `payload_type` with 20 ms steps of `step` clock units.
fn rtp(sequence: u16, payload_type: u8, step: u32, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x80, payload_type];
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(&(sequence as u32 * step).to_be_bytes());
    packet.extend_from_slice(&7u32.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// Every codec: G.711, G.722 and Opus.
#[test]
fn steady_state_media_path_does_not_allocate() {
    let offer = SessionOffer::parse(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 111 9 0\r\na=rtpmap:111 opus/48000/2\r\n",
    )
    .unwrap();
    for codec in [Codec::Pcmu, Codec::G722, Codec::Opus] {
        let negotiated = negotiate_media(&offer, &CodecPreferences::new(&[codec])).unwrap();
        assert_eq!(negotiated.codec, codec);
        // A real encoded frame of the codec, made before counting starts.
        let mut encoder = codec.encoder().unwrap();
        let pcm: Vec<i16> = (0..codec.samples_per_frame())
            .map(|i| ((i as f32 * 0.05).sin() * 6000.0) as i16)
            .collect();
        let mut encoded = vec![0u8; 1500];
        let size = encoder.encode(&pcm, &mut encoded).unwrap();
        let packets: Vec<Vec<u8>> = (0..1200u16)
            .map(|i| {
                rtp(
                    i,
                    negotiated.payload_type,
                    codec.timestamp_step(),
                    &encoded[..size],
                )
            })
            .collect();
        let adaptive = Some(AdaptiveConfig::default());
        let cases = [
            (8_000, AudioSettings::default(), None),
            (16_000, AudioSettings::default(), adaptive),
            (24_000, AudioSettings::default(), adaptive),
            // Echo cancellation, noise suppression and AGC on.
            (16_000, AudioSettings::ALL, adaptive),
        ];
        for (bot_rate, audio, adaptive) in cases {
            let mut pipeline =
                MediaPipeline::new(&negotiated, bot_rate, 40, adaptive, "gw@127.0.0.1", audio)
                    .unwrap();
            let from = "127.0.0.1:4000".parse().unwrap();
            let bot_frame =
                AudioFrame::from_samples(bot_rate, &vec![1000i16; bot_rate as usize / 50]);
            let mut out = [0u8; 1500];
            let start = Instant::now();
            let mut step = |index: u32, pipeline: &mut MediaPipeline| {
                let now = start + Duration::from_millis(20 * index as u64);
                // Every tenth packet is lost: concealment runs too.
                // Caller frames move on packet arrival, or on their schedule
                // when one is lost.
                if index % 10 != 5 {
                    pipeline.on_datagram(&packets[index as usize], from, now);
                    let _ = pipeline.pull_on_arrival(now);
                }
                let _ = pipeline.poll_pull(now);
                pipeline.push_bot_audio(&bot_frame, now);
                assert!(pipeline.send(now, &mut out).rtp.is_some());
                while pipeline.poll_mark().is_some() {}
            };
            for index in 0..200 {
                step(index, &mut pipeline);
            }
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            for index in 200..1200 {
                step(index, &mut pipeline);
            }
            let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
            if codec == Codec::Opus {
                // The lost tenth came back from the next packet's FEC.
                let recovered = pipeline.counters().fec_recovered;
                assert!(recovered >= 100, "{recovered} frames recovered by FEC");
            }
            assert_eq!(
                allocations,
                0,
                "{allocations} allocations in 1000 {} frames at a {bot_rate} Hz bot, {audio:?}",
                codec.name()
            );
        }
    }
}
