//! The echo bot run inline by its call touches no heap per frame once
//! warm: the caller's frames are copied into boxes from the session's own
//! pool, which come back when the call drops the echoed frame.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use switchboard_connectors::echo::EchoConnector;
use switchboard_connectors::{BotConnector, BotEvent, CallInfo};
use switchboard_flows::EchoBotConfig;
use switchboard_media::AudioFrame;

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

#[test]
fn inline_echo_allocates_nothing_per_frame() {
    let mut bot = EchoConnector::new(EchoBotConfig {
        delay_ms: 200,
        sample_rate: 16_000,
    })
    .open_inline(&CallInfo::default())
    .expect("the echo bot runs inline");
    let frame = AudioFrame::from_samples(16_000, &[1000i16; 320]);
    let start = Instant::now();
    let mut echoed = 0;
    let mut run = |from: u32, to: u32, echoed: &mut u32| {
        for n in from..to {
            let now = start + Duration::from_millis(u64::from(n) * 20);
            bot.push_audio(&frame, now);
            while let Some(event) = bot.poll_event(now) {
                assert!(matches!(event, BotEvent::Audio(_)));
                *echoed += 1;
            }
        }
    };
    // Warm-up: the delay line fills and the pool holds its boxes.
    run(0, 100, &mut echoed);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    run(100, 1100, &mut echoed);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(echoed, 1090, "every frame but the last 200 ms came back");
    assert_eq!(allocations, 0, "allocations over 1,000 frames");
}
