//! The per-call media pipeline must not touch the heap per packet: after a
//! warm-up, RTP in → jitter → decode → resample, bot audio → resample →
//! pacer → encode → RTP out runs with zero allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use switchboard_gateway::call::media::MediaPipeline;
use switchboard_media::sdp::{negotiate, SessionOffer};
use switchboard_media::{AudioFrame, G711};

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

fn rtp(sequence: u16, payload: &[u8; 160]) -> [u8; 172] {
    let mut packet = [0u8; 172];
    packet[0] = 0x80;
    packet[2..4].copy_from_slice(&sequence.to_be_bytes());
    packet[4..8].copy_from_slice(&(sequence as u32 * 160).to_be_bytes());
    packet[8..12].copy_from_slice(&7u32.to_be_bytes());
    packet[12..].copy_from_slice(payload);
    packet
}

#[test]
fn steady_state_media_path_does_not_allocate() {
    let offer = SessionOffer::parse(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
    )
    .unwrap();
    let negotiated = negotiate(&offer, &[G711::Pcmu]).unwrap();
    for bot_rate in [8_000, 16_000, 24_000] {
        let mut pipeline = MediaPipeline::new(&negotiated, bot_rate, 40, "gw@127.0.0.1").unwrap();
        let from = "127.0.0.1:4000".parse().unwrap();
        let payload = [0x55u8; 160];
        let bot_frame = AudioFrame::from_samples(bot_rate, &vec![1000i16; bot_rate as usize / 50]);
        let mut out = [0u8; 512];
        let start = Instant::now();
        let mut step = |index: u32, pipeline: &mut MediaPipeline| {
            let now = start + Duration::from_millis(20 * index as u64);
            pipeline.on_datagram(&rtp(index as u16, &payload), from, now);
            pipeline.push_bot_audio(&bot_frame);
            let tick = pipeline.tick(now, &mut out);
            assert!(tick.rtp.is_some());
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
        assert_eq!(
            allocations, 0,
            "{allocations} allocations in 1000 frames at a {bot_rate} Hz bot"
        );
    }
}
