//! Call recording through the real binary: a stereo WAV per call with the
//! caller on the left and what the caller heard on the right, aligned.

mod common;

use std::time::Duration;

use common::audio::{best_correlation, speech_like};
use common::gateway::{config_with, scratch_dir, GatewayProcess};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, SipTransport, G711_OFFER};

#[test]
fn echo_call_is_recorded_in_stereo_and_aligned() {
    let dir = scratch_dir("recordings");
    let config = config_with(&format!(
        r#"
[[trunks]]
name = "loopback"
allow = ["127.0.0.1"]
routes = [{{ pattern = ".*", flow = "echo" }}]

[[flows]]
name = "echo"
bot = {{ kind = "echo", delay_ms = 200, sample_rate = 8000 }}
recording = {{ dir = "{}" }}
"#,
        dir.join("calls").display()
    ));
    let gateway = GatewayProcess::start("recording", &config);
    let peer = RtpPeer::bind();
    let scenario = sipp::caller_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER), 3000);
    let (sipp_dir, target) = (gateway.dir.clone(), gateway.udp);
    let caller = std::thread::spawn(move || {
        sipp::run(
            &sipp_dir,
            "call",
            &scenario,
            target,
            SipTransport::Udp,
            "127.0.0.1",
        )
    });
    let gateway_rtp = peer
        .wait_first_packet(Duration::from_secs(10))
        .expect("answered");
    let sent = speech_like(12_000);
    peer.stream_pcmu(gateway_rtp, &sent);
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    let line = gateway.wait_for_log(&["recording saved"], Duration::from_secs(5));
    assert!(line.contains("dropped=0"), "{line}");

    let files: Vec<_> = std::fs::read_dir(dir.join("calls"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let bytes = std::fs::read(&files[0]).unwrap();
    assert_eq!(&bytes[..4], b"RIFF");
    assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 2, "stereo");
    assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap()), 8000);
    let data_len = u32::from_le_bytes(bytes[40..44].try_into().unwrap()) as usize;
    assert_eq!(
        data_len,
        bytes.len() - 44,
        "header sizes patched at the end"
    );
    let samples: Vec<i16> = bytes[44..]
        .chunks_exact(2)
        .map(|p| i16::from_le_bytes([p[0], p[1]]))
        .collect();
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
    // ~3 s of call: one 20 ms frame per tick on each channel.
    assert!(
        (20_000..=32_000).contains(&left.len()),
        "{} samples",
        left.len()
    );

    // The caller's audio is on the left (μ-law round trip only)…
    let (left_score, left_at) = best_correlation(&sent, &left, 0..left.len());
    assert!(left_score > 0.95, "left correlates {left_score:.3}");
    // …and its echo on the right, 200 ms (1600 samples) later plus the
    // pipeline's few frames: the channels share one clock. A send pairs
    // with the caller frame pulled before it; pulls and sends keep separate
    // schedules, so which one comes first in a 20 ms period sets whether
    // the left channel is one frame later (both seen, run to run).
    let (right_score, right_at) = best_correlation(&sent, &right, 0..right.len());
    assert!(right_score > 0.9, "right correlates {right_score:.3}");
    let lag = right_at as i64 - left_at as i64;
    eprintln!("recording: left {left_score:.3}, right {right_score:.3}, echo lag {lag} samples");
    assert!(
        (1600 - 160..=1600 + 800).contains(&lag),
        "echo lags the caller by {lag} samples"
    );
    gateway.assert_no_panic();
}
