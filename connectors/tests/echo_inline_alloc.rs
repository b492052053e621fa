//! The echo bot run inline by its call touches no heap per frame once
//! warm: the caller's frames are copied into boxes from the session's own
//! pool, which come back when the call drops the echoed frame.

use std::time::{Duration, Instant};

use switchboard_connectors::echo::EchoConnector;
use switchboard_connectors::{BotConnector, BotEvent, CallInfo};
use switchboard_flows::EchoBotConfig;
use switchboard_media::AudioFrame;

// The media crate's counting allocator (per thread), shared rather than copied.
#[path = "../../media/tests/common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{allocations, Counting};

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
    let before = allocations();
    run(100, 1100, &mut echoed);
    let allocations = allocations() - before;
    assert_eq!(echoed, 1090, "every frame but the last 200 ms came back");
    assert_eq!(allocations, 0, "allocations over 1,000 frames");
}
