use super::*;

const PT: u8 = 0;
const SSRC: u32 = 0x1234;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Builds a packet whose payload is the sequence number, so the tests can
/// tell which packet came out.
fn packet(seq: u16, ts: u32, ssrc: u32, marker: bool, buf: &mut [u8; 2]) -> RtpPacket<'_> {
    *buf = seq.to_be_bytes();
    RtpPacket {
        version: 2,
        padding: false,
        marker,
        payload_type: PT,
        sequence: seq,
        timestamp: ts,
        ssrc,
        payload: &buf[..],
    }
}

fn push(jb: &mut JitterBuffer, seq: u16, now: Instant) -> PushOutcome {
    push_ts(jb, seq, seq as u32 * 160, now)
}

fn push_ts(jb: &mut JitterBuffer, seq: u16, ts: u32, now: Instant) -> PushOutcome {
    let mut b = [0; 2];
    jb.push(&packet(seq, ts, SSRC, false, &mut b), now)
}

/// What one pop produced, owned so tests can collect them.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    W,
    P(u16),
    L,
}

fn pop(jb: &mut JitterBuffer, now: Instant) -> Out {
    match jb.pop(now) {
        Playout::Waiting => Out::W,
        Playout::Lost => Out::L,
        Playout::Packet { payload, .. } => Out::P(u16::from_be_bytes([payload[0], payload[1]])),
    }
}

/// Simulated network: packet `i` is sent at `i * 20 ms` and arrives
/// `delay(i)` later (None = lost); the receiver pops every 20 ms, offset
/// by 5 ms, at most `pops` times. Returns the pops in order.
fn simulate(
    jb: &mut JitterBuffer,
    first_seq: u16,
    count: u16,
    delay: impl Fn(u16) -> Option<u64>,
    pops: usize,
) -> Vec<Out> {
    let t0 = Instant::now();
    let mut arrivals: Vec<(u64, u16)> = (0..count)
        .filter_map(|i| delay(i).map(|d| (i as u64 * 20 + d, i)))
        .collect();
    arrivals.sort_by_key(|&(at, _)| at);
    let mut out = Vec::new();
    let mut next_arrival = 0;
    for p in 0..pops {
        let now_ms = p as u64 * 20 + 5;
        while next_arrival < arrivals.len() && arrivals[next_arrival].0 <= now_ms {
            let (at, i) = arrivals[next_arrival];
            let ts = 1_000_000 + i as u32 * 160;
            push_ts(jb, first_seq.wrapping_add(i), ts, t0 + ms(at));
            next_arrival += 1;
        }
        out.push(pop(jb, t0 + ms(now_ms)));
        // Stop at the end of the stream rather than report the silence
        // after it as loss.
        if next_arrival == arrivals.len() && jb.stats().depth_packets == 0 {
            break;
        }
    }
    out
}

fn played(out: &[Out]) -> Vec<u16> {
    out.iter()
        .filter_map(|o| if let Out::P(s) = o { Some(*s) } else { None })
        .collect()
}

#[test]
fn in_order_stream_starts_after_depth_and_plays_every_packet() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let t0 = Instant::now();
    assert_eq!(pop(&mut jb, t0), Out::W);
    let out = simulate(&mut jb, 100, 50, |_| Some(10), 60);
    // Packets arrive at 10, 30, 50 ms; pops at 5, 25, 45: two are held by
    // the 45 ms pop, which is when playout starts.
    assert_eq!(&out[..3], &[Out::W, Out::W, Out::P(100)]);
    assert_eq!(played(&out), (100..150).collect::<Vec<_>>());
    assert!(out[3..52].iter().all(|o| matches!(o, Out::P(_))));
    let s = jb.stats();
    assert_eq!((s.received, s.lost, s.late, s.duplicate), (50, 0, 0, 0));
    assert_eq!(s.depth_packets, 0);
}

#[test]
fn depth_timer_starts_playout_with_a_single_packet() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let t0 = Instant::now();
    assert_eq!(push(&mut jb, 5, t0), PushOutcome::Accepted);
    assert_eq!(pop(&mut jb, t0 + ms(39)), Out::W);
    assert_eq!(pop(&mut jb, t0 + ms(40)), Out::P(5));
}

#[test]
fn reordering_within_the_window_is_undone() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    // Every odd packet is 30 ms slower than its successor.
    let out = simulate(
        &mut jb,
        0,
        40,
        |i| Some(if i % 2 == 1 { 35 } else { 5 }),
        50,
    );
    assert_eq!(played(&out), (0..40).collect::<Vec<_>>());
    assert_eq!(jb.stats().lost, 0);
    assert_eq!(jb.stats().late, 0);
}

#[test]
fn duplicates_are_dropped() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let t0 = Instant::now();
    assert_eq!(push(&mut jb, 1, t0), PushOutcome::Accepted);
    assert_eq!(push(&mut jb, 1, t0), PushOutcome::Duplicate);
    assert_eq!(push(&mut jb, 2, t0), PushOutcome::Accepted);
    assert_eq!(pop(&mut jb, t0), Out::P(1));
    assert_eq!(push(&mut jb, 2, t0), PushOutcome::Duplicate);
    assert_eq!(pop(&mut jb, t0), Out::P(2));
    assert_eq!(jb.stats().duplicate, 2);
}

#[test]
fn packet_after_its_slot_played_is_late() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let t0 = Instant::now();
    push(&mut jb, 10, t0);
    push(&mut jb, 12, t0);
    assert_eq!(pop(&mut jb, t0), Out::P(10));
    assert_eq!(pop(&mut jb, t0 + ms(20)), Out::L);
    assert_eq!(push(&mut jb, 11, t0 + ms(25)), PushOutcome::Late);
    assert_eq!(push(&mut jb, 10, t0 + ms(25)), PushOutcome::Late);
    assert_eq!(pop(&mut jb, t0 + ms(40)), Out::P(12));
    let s = jb.stats();
    assert_eq!((s.late, s.lost, s.received), (2, 1, 4));
}

#[test]
fn each_missing_packet_is_lost_exactly_once() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let lost = [7u16, 20, 21, 22];
    let out = simulate(&mut jb, 0, 40, |i| (!lost.contains(&i)).then_some(10), 45);
    let losses = out.iter().filter(|o| **o == Out::L).count();
    assert_eq!(losses, 4);
    assert_eq!(jb.stats().lost, 4);
    let expected: Vec<u16> = (0..40).filter(|i| !lost.contains(i)).collect();
    assert_eq!(played(&out), expected);
    // The losses sit exactly where the missing packets would have played.
    let start = out.iter().position(|o| *o == Out::P(0)).unwrap();
    assert_eq!(out[start + 7], Out::L);
    assert_eq!(&out[start + 20..start + 23], &[Out::L, Out::L, Out::L]);
}

#[test]
fn sequence_wraps_at_65535() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    // Reorder across the wrap too: 65535 and 0 swap.
    let out = simulate(
        &mut jb,
        65530,
        20,
        |i| {
            Some(match i {
                5 => 22,
                6 => 0,
                _ => 5,
            })
        },
        25,
    );
    let expected: Vec<u16> = (0..20u16).map(|i| 65530u16.wrapping_add(i)).collect();
    assert_eq!(played(&out), expected);
    assert_eq!(jb.stats().lost, 0);
    assert_eq!(jb.stats().reset, 0);
}

#[test]
fn ssrc_change_resets_onto_the_new_stream() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let t0 = Instant::now();
    push(&mut jb, 1, t0);
    push(&mut jb, 2, t0);
    assert_eq!(pop(&mut jb, t0), Out::P(1));
    let mut b = [0; 2];
    let other = packet(5000, 99, 0x9999, true, &mut b);
    assert_eq!(jb.push(&other, t0 + ms(10)), PushOutcome::Reset);
    assert_eq!(jb.stats().depth_packets, 1);
    // Restarted: waits for depth again, packet 2 of the old stream is gone.
    assert_eq!(pop(&mut jb, t0 + ms(20)), Out::W);
    assert_eq!(pop(&mut jb, t0 + ms(50)), Out::P(5000));
    assert_eq!(jb.stats().reset, 1);
}

#[test]
fn far_sequence_or_timestamp_jump_resets() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let t0 = Instant::now();
    push(&mut jb, 100, t0);
    assert_eq!(push(&mut jb, 100 + 5000, t0), PushOutcome::Reset);
    assert_eq!(push(&mut jb, 100 + 5000 - 500, t0), PushOutcome::Reset);
    let mut b = [0; 2];
    // Next sequence number, but the clock went back ten seconds.
    let p = packet(4601, 0, SSRC, false, &mut b);
    assert_eq!(jb.push(&p, t0), PushOutcome::Reset);
    assert_eq!(jb.stats().reset, 3);
    assert_eq!(jb.stats().depth_packets, 1);
}

#[test]
fn long_silence_re_anchors_instead_of_losing_forever() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let t0 = Instant::now();
    let mut b = [0; 2];
    for seq in 0..3u16 {
        jb.push(&packet(seq, seq as u32 * 160, SSRC, false, &mut b), t0);
    }
    for seq in 0..3u16 {
        assert_eq!(pop(&mut jb, t0 + ms(seq as u64 * 20)), Out::P(seq));
    }
    // The sender goes quiet: ten losses, then Waiting for good.
    let mut t = 60;
    for _ in 0..MAX_DRY_POPS {
        assert_eq!(pop(&mut jb, t0 + ms(t)), Out::L);
        t += 20;
    }
    for _ in 0..50 {
        assert_eq!(pop(&mut jb, t0 + ms(t)), Out::W);
        t += 20;
    }
    assert!(!jb.is_playing());
    // Talk resumes with the next sequence number and a later timestamp.
    let resume = packet(3, 3 * 160 + 8000, SSRC, true, &mut b);
    assert_eq!(jb.push(&resume, t0 + ms(t)), PushOutcome::Accepted);
    assert_eq!(pop(&mut jb, t0 + ms(t)), Out::W);
    let p4 = packet(4, 4 * 160 + 8000, SSRC, false, &mut b);
    assert_eq!(jb.push(&p4, t0 + ms(t + 20)), PushOutcome::Accepted);
    assert_eq!(pop(&mut jb, t0 + ms(t + 20)), Out::P(3));
    assert_eq!(pop(&mut jb, t0 + ms(t + 40)), Out::P(4));
    assert_eq!(jb.stats().lost, MAX_DRY_POPS as u64);
}

#[test]
fn short_silence_gap_restarts_the_talkspurt() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let t0 = Instant::now();
    let mut b = [0; 2];
    for seq in 0..2u16 {
        jb.push(&packet(seq, seq as u32 * 160, SSRC, false, &mut b), t0);
    }
    assert_eq!(pop(&mut jb, t0), Out::P(0));
    assert_eq!(pop(&mut jb, t0 + ms(20)), Out::P(1));
    // 100 ms of suppressed silence: a few losses reported meanwhile.
    for i in 0..3 {
        assert_eq!(pop(&mut jb, t0 + ms(40 + i * 20)), Out::L);
    }
    // Seq 2 is behind the playout point but its timestamp skipped ahead.
    let p = packet(2, 2 * 160 + 800, SSRC, false, &mut b);
    assert_eq!(jb.push(&p, t0 + ms(110)), PushOutcome::Accepted);
    let p = packet(3, 3 * 160 + 800, SSRC, false, &mut b);
    assert_eq!(jb.push(&p, t0 + ms(115)), PushOutcome::Accepted);
    assert_eq!(pop(&mut jb, t0 + ms(120)), Out::P(2));
    assert_eq!(pop(&mut jb, t0 + ms(140)), Out::P(3));
    assert_eq!(jb.stats().late, 0);
}

#[test]
fn overflow_drops_the_oldest_and_bounds_depth() {
    let config = JitterConfig {
        capacity: 8,
        ..JitterConfig::default()
    };
    let mut jb = JitterBuffer::new(config);
    let t0 = Instant::now();
    // A burst of 20 packets before the first pop.
    for seq in 0..20u16 {
        assert_eq!(push(&mut jb, seq, t0), PushOutcome::Accepted);
    }
    let s = jb.stats();
    assert_eq!(s.depth_packets, 8);
    assert_eq!(s.overflow, 12);
    assert_eq!(pop(&mut jb, t0), Out::P(12));
    // While playing, a sender running ahead keeps the window bounded too.
    for seq in 20..30u16 {
        push(&mut jb, seq, t0 + ms(1));
    }
    assert_eq!(jb.stats().depth_packets, 8);
    assert_eq!(pop(&mut jb, t0 + ms(20)), Out::P(22));
    assert_eq!(jb.stats().overflow, 12 + 9);
    assert_eq!(jb.stats().lost, 0);
}

#[test]
fn oversized_payload_is_refused() {
    let mut jb = JitterBuffer::new(JitterConfig {
        max_payload: 1,
        ..JitterConfig::default()
    });
    assert_eq!(push(&mut jb, 1, Instant::now()), PushOutcome::TooLarge);
    assert_eq!(jb.stats().received, 0);
}

#[test]
fn loss_then_jitter_spike_keeps_order() {
    let mut jb = JitterBuffer::new(JitterConfig {
        depth_ms: 60,
        ..JitterConfig::default()
    });
    // Packets 10..14 are held up by 35 ms: more than the default depth
    // leaves room for, but within 60 ms.
    let out = simulate(
        &mut jb,
        1000,
        60,
        |i| {
            if (10..15).contains(&i) {
                Some(40)
            } else {
                Some(5)
            }
        },
        70,
    );
    assert_eq!(played(&out), (1000..1060).collect::<Vec<_>>());
    assert_eq!(jb.stats().lost, 0);
}

#[test]
fn peek_due_shows_the_packet_after_a_loss() {
    let start = Instant::now();
    let mut buffer = JitterBuffer::new(JitterConfig::default());
    let mut packet = [0u8; 172];
    for seq in [0u16, 1, 3, 4, 5] {
        let len = crate::rtp::write_rtp(
            &mut packet,
            false,
            0,
            seq,
            u32::from(seq) * 160,
            1,
            &[seq as u8; 160],
        );
        buffer.push(&RtpPacket::parse(&packet[..len]).unwrap(), start);
    }
    let mut seen = Vec::new();
    for tick in 0..5u32 {
        let now = start + Duration::from_millis(40 + 20 * u64::from(tick));
        let lost_before = buffer.stats().lost;
        let outcome = match buffer.pop(now) {
            Playout::Packet { payload, .. } => payload[0] as i32,
            Playout::Lost => -1,
            Playout::Waiting => -2,
        };
        let lost = buffer.stats().lost > lost_before;
        seen.push((outcome, lost, buffer.peek_due().map(|p| p[0])));
    }
    assert_eq!(
        seen[2],
        (-1, true, Some(3)),
        "after losing 2, packet 3 is due: {seen:?}"
    );
    assert_eq!(seen[0], (0, false, Some(1)));
}
