//! The adaptive jitter buffer over a simulated network: 60 s of 20 ms PCMU
//! packets with loss, jitter, reordering, duplicates, SSRC changes, sequence
//! wrap and a sender clock off by ±1 %. The clock is fake and the randomness
//! seeded, so every run is the same.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchboard_media::jitter::{
    AdaptiveConfig, JitterBuffer, JitterConfig, JitterStats, Playout, PushOutcome,
};
use switchboard_media::rtp::RtpPacket;

const FRAME_US: u64 = 20_000;
const RUN_US: u64 = 60_000_000;
/// Jittery network until then, a quiet one afterwards.
const JITTER_UNTIL_US: u64 = 40_000_000;
const MIN_MS: u32 = 20;
const MAX_MS: u32 = 200;

struct Net {
    seed: u64,
    /// Sender clock error in parts per million (+10 000 = 1 % fast).
    drift_ppm: i64,
    loss: f64,
    duplicate: f64,
    jitter_ms: u64,
    /// Sender times at which it switches to a new SSRC (and new seq/ts).
    ssrc_changes_us: &'static [u64],
}

struct Sent {
    ssrc: u32,
    seq: u16,
    ts: u32,
}

/// What the receiver saw, pop by pop.
#[derive(Default)]
struct Run {
    pops_after_start: u64,
    waiting_after_start: u64,
    packets_out: u64,
    lost_out: u64,
    sim_lost: u64,
    sim_sent: u64,
    reordered: u64,
    /// (our time, stats after the pop)
    samples: Vec<(u64, JitterStats)>,
    /// Our times at which playout (re)started.
    starts_us: Vec<u64>,
    last: JitterStats,
}

fn simulate(net: &Net) -> Run {
    let mut rng = StdRng::seed_from_u64(net.seed);
    let mut packets: Vec<Sent> = Vec::new();
    // (arrival us, index into packets)
    let mut arrivals: Vec<(u64, usize)> = Vec::new();
    let mut run = Run::default();

    // Start close to the wrap so the first stream crosses 65535 -> 0.
    let (mut ssrc, mut seq, mut ts) = (0x1111_0000u32, 65_400u16, rng.random::<u32>());
    let mut changes = net.ssrc_changes_us.iter().peekable();
    for k in 0u64.. {
        // The sender believes it sends every 20 ms; by our clock a fast
        // sender's 20 ms are shorter.
        let sender_us = k * FRAME_US;
        let send = (sender_us as i128 * 1_000_000 / (1_000_000 + net.drift_ppm) as i128) as u64;
        if send >= RUN_US {
            break;
        }
        if changes.next_if(|&&at| sender_us >= at).is_some() {
            ssrc += 1;
            seq = rng.random();
            ts = rng.random();
        }
        packets.push(Sent { ssrc, seq, ts });
        run.sim_sent += 1;
        let index = packets.len() - 1;
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(160);
        if rng.random_bool(net.loss) {
            run.sim_lost += 1;
            continue;
        }
        let copies = if rng.random_bool(net.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let spread = if send < JITTER_UNTIL_US {
                net.jitter_ms * 1000
            } else {
                0
            };
            let delay = 10_000 + rng.random_range(0..=spread);
            arrivals.push((send + delay, index));
        }
    }
    arrivals.sort_by_key(|&(at, i)| (at, i));
    run.reordered = arrivals.windows(2).filter(|w| w[1].1 < w[0].1).count() as u64;

    let mut jb = JitterBuffer::adaptive(
        JitterConfig::default(),
        AdaptiveConfig {
            min_depth_ms: MIN_MS,
            max_depth_ms: MAX_MS,
            ..AdaptiveConfig::default()
        },
    );
    let t0 = Instant::now();
    let at = |us: u64| t0 + Duration::from_micros(us);
    let payload = [0xffu8; 160];
    let mut next_arrival = 0;
    let mut started = false;
    // The receiver ticks every 20 ms of its own clock, off the sender's phase.
    let mut now = 7_000;
    while now < RUN_US {
        while next_arrival < arrivals.len() && arrivals[next_arrival].0 <= now {
            let (arrived, i) = arrivals[next_arrival];
            let p = &packets[i];
            let packet = RtpPacket {
                version: 2,
                padding: false,
                marker: false,
                payload_type: 0,
                sequence: p.seq,
                timestamp: p.ts,
                ssrc: p.ssrc,
                payload: &payload,
            };
            let outcome = jb.push(&packet, at(arrived));
            assert_ne!(outcome, PushOutcome::TooLarge);
            if outcome == PushOutcome::Reset || run.starts_us.is_empty() {
                run.starts_us.push(arrived);
            }
            next_arrival += 1;
        }
        match jb.pop(at(now)) {
            Playout::Waiting => {
                if started {
                    run.waiting_after_start += 1;
                }
            }
            Playout::Packet { payload, .. } => {
                assert_eq!(payload.len(), 160);
                started = true;
                run.packets_out += 1;
            }
            Playout::Lost => {
                assert!(started, "concealment before the stream started");
                run.lost_out += 1;
            }
        }
        if started {
            run.pops_after_start += 1;
            run.samples.push((now, jb.stats()));
        }
        now += FRAME_US;
    }
    run.last = jb.stats();
    run
}

fn net(seed: u64, drift_ppm: i64) -> Net {
    Net {
        seed,
        drift_ppm,
        loss: 0.05,
        duplicate: 0.01,
        jitter_ms: 60,
        ssrc_changes_us: &[2_000_000, 30_000_000],
    }
}

fn report(name: &str, run: &Run) {
    let s = &run.last;
    eprintln!(
        "{name}: out {} (packets {} lost {}) sent {} sim_lost {} reordered {} | \
         received {} lost {} late {} dup {} reset {} flushed {} overflow {} dropped {} inserted {} \
         concealed {} jitter {} us target {} depth {} held {}",
        run.pops_after_start,
        run.packets_out,
        run.lost_out,
        run.sim_sent,
        run.sim_lost,
        run.reordered,
        s.received,
        s.lost,
        s.late,
        s.duplicate,
        s.reset,
        s.flushed,
        s.overflow,
        s.dropped,
        s.inserted,
        s.concealed_frames,
        s.jitter_us,
        s.target_ms,
        s.depth_ms,
        s.held_ms
    );
    for (t, st) in run.samples.iter().step_by(100) {
        eprintln!(
            "  t={:>5} ms target {:>3} depth {:>3} held {:>3} jitter {:>5} us",
            t / 1000,
            st.target_ms,
            st.depth_ms,
            st.held_ms,
            st.jitter_us
        );
    }
}

/// Our times around which a stream (re)started, for excluding refills.
fn near_start(run: &Run, t: u64) -> bool {
    run.starts_us.iter().any(|&s| t >= s && t < s + 1_000_000)
}

fn mean_target(run: &Run, from_us: u64, to_us: u64) -> u32 {
    let window: Vec<u32> = run
        .samples
        .iter()
        .filter(|(t, _)| (from_us..to_us).contains(t))
        .map(|(_, s)| s.target_ms)
        .collect();
    window.iter().sum::<u32>() / window.len() as u32
}

/// Everything the buffer promises, for one run.
fn check(run: &Run) {
    let s = &run.last;
    // One frame out every 20 ms from the first one on, never a gap.
    assert_eq!(run.waiting_after_start, 0);
    let first_out = run.samples[0].0;
    let elapsed_frames = (RUN_US - first_out).div_ceil(FRAME_US);
    assert!(run.pops_after_start.abs_diff(elapsed_frames) <= 1);
    assert_eq!(run.packets_out + run.lost_out, run.pops_after_start);
    assert_eq!(
        (s.played, s.concealed_frames),
        (run.packets_out, run.lost_out)
    );

    // What the network lost is reported as loss, give or take a few packets
    // that were late or flushed at an SSRC change.
    assert!(
        s.lost.abs_diff(run.sim_lost) <= run.sim_lost / 10,
        "lost {} vs simulated {}",
        s.lost,
        run.sim_lost
    );
    assert!(s.late <= run.sim_sent / 200, "late {}", s.late);
    assert_eq!(
        s.duplicate + s.late + s.flushed + s.overflow + s.dropped + s.played,
        {
            // Every packet that arrived went exactly one way (a few may still
            // be buffered at the end).
            s.received - s.depth_packets as u64
        }
    );
    assert_eq!(s.reset, 2);
    assert_eq!(s.overflow, 0, "never hit the hard ceiling");

    // Bounds at every pop.
    for (t, st) in &run.samples {
        assert!(
            (MIN_MS..=MAX_MS).contains(&st.target_ms),
            "target {} at {t}",
            st.target_ms
        );
        assert!(st.depth_ms <= MAX_MS, "depth {} at {t}", st.depth_ms);
        assert!(st.held_ms <= MAX_MS, "held {} at {t}", st.held_ms);
        if !near_start(run, *t) {
            assert!(st.depth_ms >= MIN_MS / 2, "depth {} at {t}", st.depth_ms);
        }
    }

    // The target follows the jitter up, and comes back down without it.
    let jittery = mean_target(run, 5_000_000, JITTER_UNTIL_US);
    assert!(jittery >= 60, "target under 60 ms jitter: {jittery}");
    let quiet = mean_target(run, JITTER_UNTIL_US + 5_000_000, RUN_US);
    assert_eq!(quiet, MIN_MS);

    // Drift is absorbed: on the quiet network the delay sits in the dead
    // band above the minimum target however far the clocks have run apart.
    for (t, st) in run
        .samples
        .iter()
        .filter(|(t, _)| *t > JITTER_UNTIL_US + 5_000_000)
    {
        assert!(
            (MIN_MS - 10..=MIN_MS + 20).contains(&st.depth_ms),
            "depth {} at {t}",
            st.depth_ms
        );
    }
}

#[test]
fn netsim_same_clock() {
    let run = simulate(&net(1, 0));
    report("same clock", &run);
    check(&run);
    assert!(run.reordered > 100);
    // Up and down moves of the target cost a few frames each way.
    assert!(run.last.dropped < 40 && run.last.inserted < 40);
}

#[test]
fn netsim_sender_clock_fast() {
    let run = simulate(&net(2, 10_000));
    report("sender +1 %", &run);
    check(&run);
    // 60 s at +1 % is 30 frames too many; they are shed one at a time.
    let net_shed = run.last.dropped as i64 - run.last.inserted as i64;
    assert!(
        net_shed >= 15,
        "dropped {} inserted {}",
        run.last.dropped,
        run.last.inserted
    );
}

#[test]
fn netsim_sender_clock_slow() {
    let run = simulate(&net(3, -10_000));
    report("sender -1 %", &run);
    check(&run);
    let net_added = run.last.inserted as i64 - run.last.dropped as i64;
    assert!(
        net_added >= 20,
        "dropped {} inserted {}",
        run.last.dropped,
        run.last.inserted
    );
}

#[test]
fn netsim_holds_for_other_seeds() {
    for seed in 10..16 {
        for drift in [0, 10_000, -10_000] {
            check(&simulate(&net(seed, drift)));
        }
    }
}
