//! The adaptive jitter buffer on a real call: the caller's packets arrive
//! with 0-60 ms of random delay (so also reordered) and 3% lost; the buffer
//! grows its target to ride it out and the echo bot still returns the
//! caller's speech.

mod common;

use std::time::{Duration, Instant};

use common::audio::{best_correlation, speech_like};
use common::gateway::{echo_config, GatewayProcess};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, G711_OFFER};
use switchboard_media::g711::ulaw_encode;

/// xorshift: deterministic delays without a dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn jittery_lossy_caller_is_still_heard() {
    let gateway = GatewayProcess::start("jitter", &echo_config(""));
    let peer = RtpPeer::bind();
    let scenario = sipp::caller_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER), 6000);
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    let gateway_rtp = peer
        .wait_first_packet(Duration::from_secs(10))
        .expect("answered");

    let sent = speech_like(4 * 8000);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let start = Instant::now();
    let mut schedule: Vec<(Duration, Vec<u8>)> = Vec::new();
    let mut lost = 0;
    for (index, chunk) in sent.chunks(160).enumerate() {
        let roll = next(&mut rng);
        if roll % 100 < 3 {
            lost += 1;
            continue;
        }
        let mut packet = vec![0x80, if index == 0 { 0x80 } else { 0 }];
        packet.extend_from_slice(&(index as u16).to_be_bytes());
        packet.extend_from_slice(&(160 * index as u32).to_be_bytes());
        packet.extend_from_slice(&0x7177_u32.to_be_bytes());
        packet.extend(chunk.iter().map(|s| ulaw_encode(*s)));
        let jitter = Duration::from_millis((roll >> 8) % 61);
        schedule.push((Duration::from_millis(20 * index as u64) + jitter, packet));
    }
    schedule.sort_by_key(|(due, _)| *due);
    for (due, packet) in &schedule {
        if let Some(wait) = (start + *due).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        peer.send_raw(packet, gateway_rtp);
    }
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);

    // The echo carries the caller's speech despite jitter, reordering and
    // loss. The buffer stretches and shrinks time while it adapts (frames
    // inserted or skipped), so compare 200 ms segments, each at its own lag.
    let echoed = peer.received_pcmu();
    const SEGMENT: usize = 1600;
    let (_, base) = best_correlation(&sent[..SEGMENT], &echoed, 0..echoed.len());
    let scores: Vec<f64> = (1..sent.len() / SEGMENT)
        .map(|k| {
            let expected = base + k * SEGMENT;
            let lags = expected.saturating_sub(2400)..expected + 2400;
            best_correlation(&sent[k * SEGMENT..(k + 1) * SEGMENT], &echoed, lags).0
        })
        .collect();
    // A segment holding one concealed, inserted or skipped frame scores
    // about 0.85, one holding two of them 0.6-0.75 (more of those when a
    // loaded machine adds its own scheduling jitter to the test's); a
    // segment mostly lost to late packets scores far less. So: the typical
    // segment must come back well, and nearly none may be mostly lost.
    let mut sorted = scores.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = sorted[sorted.len() / 2];
    let heard = scores.iter().filter(|s| **s > 0.55).count();
    let summary = gateway.wait_for_log(&["media summary"], Duration::from_secs(3));
    eprintln!(
        "{lost} packets lost on the way; median segment correlation {median:.2}, {heard} of {} segments > 0.55; {summary}",
        scores.len()
    );
    assert!(
        median >= 0.8 && heard as f64 >= 0.9 * scores.len() as f64,
        "the caller's speech did not come back: {scores:.2?}"
    );
    let field = |name: &str| -> u64 {
        let start = summary
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("{name} in {summary}"));
        let value = &summary[start + name.len() + 1..];
        value
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        field("jitter_target_ms") >= 60,
        "target did not grow: {summary}"
    );
    assert!(
        field("concealed_ms") >= 20 * lost / 2,
        "losses concealed: {summary}"
    );
    assert!(
        field("late") <= 10,
        "few packets arrived too late: {summary}"
    );
}
