//! A real softphone, baresip, calls the built-in echo bot through the real
//! binary: its microphone plays a voice-like WAV, it records what it hears,
//! and what comes back must be what it sent, once per codec (PCMU, G.722,
//! Opus), each call forced onto one codec by the caller's offer.

mod common;

use std::time::Duration;

use common::audio::rms;
use common::baresip::{peak_correlation, voice_like, Baresip, CodecCase, Wav, G722, OPUS, PCMU};
use common::gateway::{echo_config, GatewayProcess};

/// baresip hangs up and exits this long after it starts (`-t`).
const CALL_SECS: u32 = 6;
/// Correlation windows (1 s each) taken from what was sent, in seconds from
/// the start of the microphone file: after the call's first second, and
/// again later, so a good start alone cannot pass.
/// One-second windows of what was sent, checked in what came back. They
/// start after 1.5 s: the adaptive jitter buffer starts at 40 ms and, after
/// a second of calm loopback, drops one frame to settle at 20 ms; a window
/// holding that 20 ms step correlates only in part (0.57–0.86 seen), and
/// where in the first second it lands depends on scheduling.
const WINDOWS_SECS: [f64; 2] = [1.5, 2.5];
/// What the issue asks. Measured (loopback, deterministic from run to run):
/// PCMU 0.977, G.722 0.997-1.000, Opus 0.85-0.90. PCMU's figure is capped
/// by the lag search being in whole 8 kHz samples while the gateway's
/// 8 → 16 → 8 kHz resampling leaves ~1.5 samples of delay; at the right
/// fractional lag it is 0.999. Opus is two perceptual encodes at 32 kbit/s,
/// which keep speech but not every waveform detail; the gateway's (VoIP,
/// voice-tuned, with FEC) dominates: baresip at 64 kbit/s only moved the
/// first window from 0.852 to 0.872.
const REQUIRED_CORRELATION: f64 = 0.8;

fn baresip_round_trip(name: &str, codec: CodecCase) {
    let gateway = GatewayProcess::start(name, &echo_config(""));

    // Longer than the call so the microphone never runs dry.
    let voice = voice_like(codec.rate, 10 * codec.rate as usize);
    let source = Wav {
        rate: codec.rate,
        channels: codec.channels,
        samples: voice
            .iter()
            .flat_map(|s| std::iter::repeat_n(*s, codec.channels as usize))
            .collect(),
    };
    let source_path = gateway.dir.join("microphone.wav");
    source.write(&source_path);

    let mut phone = Baresip::call(
        &gateway.dir,
        &codec,
        &source_path,
        gateway.udp,
        "100",
        CALL_SECS,
    );
    let status = phone.wait(Duration::from_secs(CALL_SECS as u64 + 10));
    let log = phone.log();
    assert!(status.success(), "baresip exit status {status}:\n{log}");
    assert!(
        log.contains("Call established"),
        "baresip's call was not established:\n{log}"
    );
    phone.assert_loopback_only();
    assert!(
        log.contains(codec.baresip_decoder),
        "baresip did not decode with {}:\n{log}",
        codec.account
    );
    assert!(
        log.contains(&codec.baresip_decoder.replace("decoder", "encoder")),
        "baresip did not encode with {}:\n{log}",
        codec.account
    );

    let answered = gateway.wait_for_log(&["answered", "codec="], Duration::from_secs(5));
    assert!(
        answered.contains(codec.gateway),
        "gateway answered with another codec than {}: {answered}",
        codec.gateway
    );
    gateway.wait_for_log(&["call ended", "caller hung up"], Duration::from_secs(5));
    if let Some(stats) = gateway.logs().iter().find(|line| line.contains("rtp_in=")) {
        eprintln!("[{name}] {stats}");
    }

    let heard = phone.recording("dec");
    assert_eq!(
        (heard.rate, heard.channels),
        (codec.rate, codec.channels),
        "baresip recorded at another format than the codec's"
    );
    let heard = heard.mono();
    assert!(
        heard.len() >= (CALL_SECS as usize - 2) * codec.rate as usize,
        "baresip heard only {} ms",
        heard.len() as u64 * 1000 / codec.rate as u64
    );
    eprintln!(
        "[{name}] negotiated {}; heard {} ms, rms {:.0} (sent rms {:.0})",
        codec.gateway,
        heard.len() as u64 * 1000 / codec.rate as u64,
        rms(&heard),
        rms(&voice)
    );
    for window_secs in WINDOWS_SECS {
        let start = (window_secs * codec.rate as f64) as usize;
        let (score, delay) = peak_correlation(&voice, &heard, codec.rate, start);
        let delay_ms = delay as u64 * 1000 / codec.rate as u64;
        eprintln!(
            "[{name}] {}: correlation {score:.3} for the second sent at {window_secs} s, heard {delay_ms} ms later",
            codec.gateway
        );
        assert!(
            score >= REQUIRED_CORRELATION,
            "{}: what came back does not carry what was sent at {window_secs} s: \
             correlation {score:.3} (at {delay_ms} ms) < {REQUIRED_CORRELATION}",
            codec.gateway
        );
        // The echo bot waits 200 ms; buffering on both sides adds some.
        assert!(
            (150..1500).contains(&delay_ms),
            "{}: echo {delay_ms} ms after it was sent",
            codec.gateway
        );
    }

    gateway.assert_no_panic();
    let status = gateway.stop();
    assert!(status.success(), "gateway exit status {status}");
}

#[test]
fn baresip_pcmu_call_through_the_echo_bot_returns_its_audio() {
    baresip_round_trip("baresip-pcmu", PCMU);
}

#[test]
fn baresip_g722_call_through_the_echo_bot_returns_its_audio() {
    baresip_round_trip("baresip-g722", G722);
}

#[test]
fn baresip_opus_call_through_the_echo_bot_returns_its_audio() {
    baresip_round_trip("baresip-opus", OPUS);
}
