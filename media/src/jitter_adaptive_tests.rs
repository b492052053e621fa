//! Adaptive mode: jitter estimate, target movement, stretch/shrink, drift,
//! silence suppression and stream changes. The long randomised run lives in
//! `tests/jitter_netsim.rs`.

use super::*;

const SSRC: u32 = 0xabcd;
/// 20 ms at 8 kHz.
const SPP: u32 = 160;

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

fn adaptive() -> JitterBuffer {
    JitterBuffer::adaptive(JitterConfig::default(), AdaptiveConfig::default())
}

/// Starts at the floor, where a calm network keeps it: the only actions
/// left are the drift's.
fn adaptive_at_floor() -> JitterBuffer {
    JitterBuffer::adaptive(
        JitterConfig {
            depth_ms: 20,
            ..JitterConfig::default()
        },
        AdaptiveConfig::default(),
    )
}

fn rtp(seq: u16, ts: u32, ssrc: u32, marker: bool, buf: &mut [u8; 2]) -> RtpPacket<'_> {
    *buf = seq.to_be_bytes();
    RtpPacket {
        version: 2,
        padding: false,
        marker,
        payload_type: 0,
        sequence: seq,
        timestamp: ts,
        ssrc,
        payload: &buf[..],
    }
}

fn push(jb: &mut JitterBuffer, seq: u16, ts: u32, marker: bool, at: Instant) -> PushOutcome {
    let mut b = [0; 2];
    jb.push(&rtp(seq, ts, SSRC, marker, &mut b), at)
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Out {
    W,
    P(u16),
    L,
}

fn pop(jb: &mut JitterBuffer, at: Instant) -> Out {
    match jb.pop(at) {
        Playout::Waiting => Out::W,
        Playout::Lost => Out::L,
        Playout::Packet { payload, .. } => Out::P(u16::from_be_bytes([payload[0], payload[1]])),
    }
}

/// Drives a stream: packet `i` is sent at `send_us(i)` (our clock) and
/// arrives `delay_us(i)` later; pops every 20 ms from `pop_phase_us`. Calls
/// `each` after every pop with the pop index.
fn drive(
    jb: &mut JitterBuffer,
    t0: Instant,
    packets: u32,
    send_us: impl Fn(u32) -> u64,
    delay_us: impl Fn(u32) -> u64,
    pops: u32,
    mut each: impl FnMut(u32, Out, &JitterBuffer),
) {
    let mut arrivals: Vec<(u64, u32)> = (0..packets)
        .map(|i| (send_us(i) + delay_us(i), i))
        .collect();
    arrivals.sort();
    let mut next = 0;
    for n in 0..pops {
        let now = 5_000 + n as u64 * 20_000;
        while next < arrivals.len() && arrivals[next].0 <= now {
            let (at, i) = arrivals[next];
            push(jb, i as u16, 1000 + i * SPP, false, t0 + us(at));
            next += 1;
        }
        let out = pop(jb, t0 + us(now));
        each(n, out, jb);
    }
}

#[test]
fn rfc3550_jitter_matches_hand_computation() {
    let mut jb = adaptive();
    let t0 = Instant::now();
    // Transit alternates between 0 and 8 ms, so every |D| is 64 units and
    // J converges on 64 (J += (|D| - J) / 16).
    for i in 0..300u32 {
        let at = i as u64 * 20_000 + if i % 2 == 1 { 8_000 } else { 0 };
        push(&mut jb, i as u16, i * SPP, false, t0 + us(at));
        if i == 1 {
            // First difference: 64 / 16.
            assert_eq!(jb.stats().interarrival_jitter, 4);
        }
        if i == 16 {
            // 64 * (1 - (15/16)^16) = 41.6 (integer form rounds down).
            assert!((40..=42).contains(&jb.stats().interarrival_jitter));
        }
        jb.pop(t0 + us(at));
    }
    let s = jb.stats();
    assert!(
        (63..=64).contains(&s.interarrival_jitter),
        "{}",
        s.interarrival_jitter
    );
    assert!((7_850..=8_000).contains(&s.jitter_us), "{}", s.jitter_us);
}

#[test]
fn timestamp_jump_does_not_inflate_jitter() {
    let mut jb = adaptive();
    let t0 = Instant::now();
    for i in 0..50u32 {
        // Sequence runs on; at 25 the sender's clock leaps ten seconds ahead.
        let ts = i * SPP + if i >= 25 { 80_000 } else { 0 };
        let outcome = push(&mut jb, i as u16, ts, false, t0 + us(i as u64 * 20_000));
        assert_eq!(outcome, PushOutcome::Accepted);
        jb.pop(t0 + us(i as u64 * 20_000 + 5_000));
    }
    assert_eq!(jb.stats().interarrival_jitter, 0);
    assert_eq!(jb.stats().reset, 0);
}

#[test]
fn target_rises_a_frame_at_a_time_and_falls_slowly() {
    let mut jb = adaptive();
    let t0 = Instant::now();
    let mut targets = Vec::new();
    // 8 s of 0-60 ms jitter (a fixed pseudo-random pattern), then 8 s calm.
    let delay = |i: u32| {
        if i < 400 {
            (i.wrapping_mul(2_654_435_761) >> 7) as u64 % 60_000
        } else {
            5_000
        }
    };
    drive(
        &mut jb,
        t0,
        800,
        |i| i as u64 * 20_000,
        delay,
        800,
        |_, _, jb| targets.push(jb.stats().target_ms),
    );
    // Never more than one frame per change.
    assert!(targets.windows(2).all(|w| w[0].abs_diff(w[1]) <= 20));
    let peak = *targets[..400].iter().max().unwrap();
    assert!(peak >= 60, "peak target {peak}");
    // Rising: from 40 to 60 within the first second of jitter.
    assert!(targets[..50].iter().any(|&t| t >= 60));
    // Falling: once calm, no faster than a frame per second, down to 20.
    let calm = &targets[400..];
    let first_drop = calm.iter().position(|&t| t < targets[399]).unwrap();
    assert!(first_drop >= 40, "dropped after {first_drop} pops");
    assert_eq!(*calm.last().unwrap(), 20);
}

#[test]
fn fast_sender_is_shed_one_frame_at_a_time() {
    let mut jb = adaptive_at_floor();
    let t0 = Instant::now();
    let mut actions = Vec::new();
    let mut last_dropped = 0;
    // +1 %: the sender's 20 ms last 19.8 ms of ours; 3030 packets in 60 s.
    drive(
        &mut jb,
        t0,
        3030,
        |i| i as u64 * 19_802,
        |_| 10_000,
        3000,
        |n, out, jb| {
            assert!(n < 2 || out != Out::W, "gap at pop {n}");
            let s = jb.stats();
            assert!(s.depth_ms <= 60 && s.held_ms <= 60, "{s:?}");
            if s.dropped != last_dropped {
                assert_eq!(s.dropped, last_dropped + 1);
                actions.push(n);
                last_dropped = s.dropped;
            }
        },
    );
    let s = jb.stats();
    assert!((28..=32).contains(&s.dropped), "{s:?}");
    assert_eq!((s.lost, s.late, s.inserted, s.overflow), (0, 0, 0, 0));
    // Spread over the minute, not bunched.
    assert!(actions.windows(2).all(|w| w[1] - w[0] >= MIN_SPACING));
}

/// Pops between two drift corrections of a 1 % drift (100 expected).
const MIN_SPACING: u32 = 50;

#[test]
fn slow_sender_gets_frames_inserted_not_losses() {
    let mut jb = adaptive_at_floor();
    let t0 = Instant::now();
    let mut inserted = 0;
    drive(
        &mut jb,
        t0,
        2970,
        |i| i as u64 * 20_202,
        |_| 10_000,
        3010,
        |n, out, jb| {
            assert!(n < 3 || out != Out::W, "gap at pop {n}");
            // Past the end of the stream the waiting is not drift.
            if jb.stats().played < 2970 {
                inserted = jb.stats().inserted;
            }
        },
    );
    let s = jb.stats();
    assert!((28..=33).contains(&inserted), "{inserted} {s:?}");
    assert_eq!((s.lost, s.late, s.dropped), (0, 0, 0));
    assert_eq!(s.played, 2970);
}

#[test]
fn underrun_waits_for_the_delayed_packet_instead_of_losing_it() {
    let mut jb = adaptive();
    let t0 = Instant::now();
    let mut outs = Vec::new();
    // A 70 ms stall: packets 20-23 all arrive together at 490 ms, the
    // first of them far beyond the 40 ms the buffer holds.
    drive(
        &mut jb,
        t0,
        40,
        |i| i as u64 * 20_000,
        |i| {
            if (20..24).contains(&i) {
                490_000 - i as u64 * 20_000
            } else {
                10_000
            }
        },
        45,
        |_, out, _| outs.push(out),
    );
    let s = jb.stats();
    assert_eq!((s.lost, s.late), (0, 0));
    let played: Vec<u16> = outs
        .iter()
        .filter_map(|o| if let Out::P(n) = o { Some(*n) } else { None })
        .collect();
    assert!(played.windows(2).all(|w| w[0] < w[1]));
    // The packet due during the stall plays: the wait became delay...
    assert!(played.contains(&20), "{played:?}");
    assert!(s.inserted >= 3);
    // ...which is shed again afterwards, one frame at a time, since the
    // jitter of one stall does not justify keeping it.
    assert!(s.dropped >= 1 && s.dropped <= s.inserted, "{s:?}");
}

#[test]
fn reordered_packet_after_a_newer_one_is_lost_when_due() {
    let mut jb = adaptive();
    let t0 = Instant::now();
    // A packet overtaken by a newer one and still missing when due is lost
    // (the newer one proves it is not just a quiet sender).
    let mut outs = Vec::new();
    drive(
        &mut jb,
        t0,
        30,
        |i| i as u64 * 20_000,
        |i| if i == 10 { 200_000 } else { 10_000 },
        35,
        |_, out, _| outs.push(out),
    );
    let s = jb.stats();
    assert_eq!((s.lost, s.late), (1, 1));
    assert!(!outs.contains(&Out::P(10)));
}

#[test]
fn silence_suppression_conceals_then_waits_and_restarts_at_target() {
    let mut jb = adaptive();
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut outs = Vec::new();
    for n in 0..30u64 {
        if n < 10 {
            push(&mut jb, n as u16, n as u32 * SPP, false, at(n * 20 + 10));
        }
        outs.push(pop(&mut jb, at(25 + n * 20)));
    }
    // Ten packets, then MAX_DRY_POPS concealed frames, then waiting.
    let played = outs.iter().filter(|o| matches!(o, Out::P(_))).count();
    assert_eq!(played, 10);
    let first_lost = outs.iter().position(|o| *o == Out::L).unwrap();
    assert!(outs[first_lost..first_lost + MAX_DRY_POPS as usize]
        .iter()
        .all(|o| *o == Out::L));
    assert_eq!(outs[first_lost + MAX_DRY_POPS as usize], Out::W);
    // Talk resumes two seconds later: marker, timestamp past the silence.
    let resume = 2000;
    let mut outs = Vec::new();
    for i in 10..14u16 {
        let sent = resume + (i as u64 - 10) * 20;
        push(&mut jb, i, i as u32 * SPP + 16_000, i == 10, at(sent));
        outs.push(pop(&mut jb, at(sent + 5)));
    }
    // Held until the newest packet would wait the 40 ms target.
    assert_eq!(outs, [Out::W, Out::W, Out::P(10), Out::P(11)]);
    let s = jb.stats();
    // Silence is not loss.
    assert_eq!((s.lost, s.late, s.reset), (0, 0, 0));
}

#[test]
fn short_silence_is_lengthened_to_the_target_at_the_talkspurt() {
    let mut jb = adaptive();
    jb.set_depth_ms(60);
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    for i in 0..5u16 {
        push(&mut jb, i, i as u32 * SPP, false, at(i as u64 * 20));
    }
    let mut outs = Vec::new();
    let mut t = 65;
    while t < 400 {
        // 100 ms of silence after packet 4: resume with the marker at 200.
        if t == 225 {
            for i in 5..8u16 {
                push(
                    &mut jb,
                    i,
                    i as u32 * SPP + 800,
                    i == 5,
                    at(200 + (i as u64 - 5) * 20),
                );
            }
        }
        outs.push(pop(&mut jb, at(t)));
        t += 20;
    }
    let resumed = outs.iter().position(|o| *o == Out::P(5)).unwrap();
    // Packets 0-4, concealment over the silence and the refill, then 5-7
    // back to back: no gap, no loss.
    assert!(outs[..resumed].iter().all(|o| *o != Out::W));
    assert_eq!(
        &outs[resumed..resumed + 3],
        &[Out::P(5), Out::P(6), Out::P(7)]
    );
    let s = jb.stats();
    assert_eq!((s.lost, s.late), (0, 0));
    assert_eq!(s.inserted, s.concealed_frames);
}

#[test]
fn ssrc_change_refills_with_concealment_and_ignores_stragglers() {
    let mut jb = adaptive();
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut b = [0; 2];
    for i in 0..6u16 {
        push(&mut jb, i, i as u32 * SPP, false, at(i as u64 * 20));
    }
    assert_eq!(pop(&mut jb, at(45)), Out::P(0));
    assert_eq!(pop(&mut jb, at(65)), Out::P(1));
    let new = rtp(9000, 5, 0x7777, true, &mut b);
    assert_eq!(jb.push(&new, at(70)), PushOutcome::Reset);
    // A straggler of the old SSRC must not switch back.
    assert_eq!(push(&mut jb, 6, 6 * SPP, false, at(72)), PushOutcome::Late);
    let new = rtp(9001, 5 + SPP, 0x7777, false, &mut b);
    assert_eq!(jb.push(&new, at(90)), PushOutcome::Accepted);
    // Concealment until the new stream is 40 ms deep, never Waiting.
    assert_eq!(pop(&mut jb, at(85)), Out::L);
    // 9001 has waited 15 ms and is one packet behind 9000: 35 ms < 40.
    assert_eq!(pop(&mut jb, at(105)), Out::L);
    assert_eq!(pop(&mut jb, at(125)), Out::P(9000));
    let s = jb.stats();
    assert_eq!((s.reset, s.flushed, s.lost, s.inserted), (1, 4 + 1, 0, 2));
    // Much later the old SSRC is a real switch back.
    let old = rtp(7, 7 * SPP, SSRC, false, &mut b);
    assert_eq!(jb.push(&old, at(2000)), PushOutcome::Reset);
}

#[test]
fn burst_after_a_stall_never_holds_more_than_the_maximum() {
    let mut jb = JitterBuffer::adaptive(
        JitterConfig::default(),
        AdaptiveConfig {
            max_depth_ms: 100,
            ..AdaptiveConfig::default()
        },
    );
    let t0 = Instant::now();
    // A 400 ms stall releases 20 packets at once.
    drive(
        &mut jb,
        t0,
        60,
        |i| i as u64 * 20_000,
        |i| {
            if (10..30).contains(&i) {
                600_000 - i as u64 * 20_000
            } else {
                10_000
            }
        },
        70,
        |_, _, jb| {
            let s = jb.stats();
            assert!(s.held_ms <= 100 && s.depth_ms <= 100, "{s:?}");
            assert!(s.target_ms <= 80, "{s:?}");
        },
    );
    assert!(jb.stats().overflow > 0);
}

#[test]
fn depth_is_clamped_to_the_adaptive_bounds() {
    let mut jb = adaptive();
    jb.set_depth_ms(5);
    assert_eq!(jb.stats().target_ms, 20);
    jb.set_depth_ms(1000);
    assert_eq!(jb.stats().target_ms, 180);
    let fixed = JitterBuffer::new(JitterConfig::default());
    assert_eq!(fixed.stats().target_ms, 40);
}
