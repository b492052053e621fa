//! A caller on a trunk (sipp for SIP, a loopback RTP peer for media) talks to
//! the built-in echo bot through the real binary.

mod common;

use std::time::Duration;

use common::audio::{best_correlation, distinct_values, rms, speech_like};
use common::gateway::{echo_config, GatewayProcess};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, SipTransport, G711_OFFER};

/// Places a call with sipp over `transport`, streams 3 s of speech-like audio
/// and checks the echo bot's audio comes back carrying it.
fn echo_round_trip(name: &str, transport: SipTransport) {
    let gateway = GatewayProcess::start(name, &echo_config(""));
    let peer = RtpPeer::bind();
    let scenario = sipp::caller_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER), 5000);
    let target = match transport {
        SipTransport::Udp => gateway.udp,
        SipTransport::Tcp => gateway.tcp,
    };
    let dir = gateway.dir.clone();
    let caller = std::thread::spawn(move || {
        sipp::run(&dir, "call", &scenario, target, transport, "127.0.0.1")
    });

    // The gateway sends from the start of the call (silence until the bot
    // speaks), which tells us where its RTP socket is.
    let gateway_rtp = peer
        .wait_first_packet(Duration::from_secs(10))
        .expect("the gateway never sent RTP");
    let sent = speech_like(3 * 8000);
    peer.stream_pcmu(gateway_rtp, &sent);
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);

    let received = peer.received();
    assert!(
        received.iter().all(|p| p.from == gateway_rtp),
        "RTP came from one socket"
    );
    assert!(
        received.iter().all(|p| p.payload_type == 0),
        "the answer chose PCMU"
    );
    let audio = peer.received_pcmu();
    assert!(
        received.len() >= 150,
        "expected ≥ 3 s of RTP back, got {} packets",
        received.len()
    );
    assert!(
        rms(&audio) > 1000.0,
        "echo is silence (rms {})",
        rms(&audio)
    );
    assert!(distinct_values(&audio) > 50, "echo is a constant");
    let (score, lag) = best_correlation(&sent, &audio, 0..audio.len());
    eprintln!(
        "echo correlation {score:.3} at lag {lag} samples ({} ms)",
        lag / 8
    );
    assert!(
        score > 0.9,
        "echoed audio does not carry what was sent: correlation {score:.3} at lag {lag}"
    );
    gateway.wait_for_log(&["call ended", "reason="], Duration::from_secs(5));
    gateway.assert_no_panic();
    let status = gateway.stop();
    assert!(status.success(), "gateway exit status {status}");
}

#[test]
fn echo_call_over_udp_returns_the_callers_audio() {
    echo_round_trip("echo-udp", SipTransport::Udp);
}

#[test]
fn echo_call_over_tcp_returns_the_callers_audio() {
    echo_round_trip("echo-tcp", SipTransport::Tcp);
}

#[test]
fn gateway_hangs_up_first_when_the_caller_goes_silent() {
    let config = echo_config("").replace("rtp_timeout_secs = 10", "rtp_timeout_secs = 2");
    let gateway = GatewayProcess::start("gateway-hangs-up", &config);
    let peer = RtpPeer::bind();
    let scenario = sipp::gateway_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER));
    let output = sipp::run(
        &gateway.dir,
        "call",
        &scenario,
        gateway.udp,
        SipTransport::Udp,
        "127.0.0.1",
    );
    sipp::assert_success(&output, &gateway.dir);
    gateway.wait_for_log(&["call ended", "rtp timeout"], Duration::from_secs(5));
    gateway.assert_no_panic();
}

#[test]
fn unknown_source_gets_403() {
    // Only 127.0.0.1 is allowed; sipp calls from 127.0.0.2.
    let gateway = GatewayProcess::start("forbidden", &echo_config(""));
    let scenario = sipp::rejected("100", &sipp::sdp_offer(4000, G711_OFFER), 403);
    let output = sipp::run(
        &gateway.dir,
        "call",
        &scenario,
        gateway.udp,
        SipTransport::Udp,
        "127.0.0.2",
    );
    sipp::assert_success(&output, &gateway.dir);
    gateway.wait_for_log(&["403", "127.0.0.2"], Duration::from_secs(5));
}

#[test]
fn unmatched_number_gets_404() {
    let gateway = GatewayProcess::start("not-found", &echo_config(""));
    let scenario = sipp::rejected("nobody", &sipp::sdp_offer(4000, G711_OFFER), 404);
    let output = sipp::run(
        &gateway.dir,
        "call",
        &scenario,
        gateway.udp,
        SipTransport::Udp,
        "127.0.0.1",
    );
    sipp::assert_success(&output, &gateway.dir);
    gateway.wait_for_log(&["404", "nobody"], Duration::from_secs(5));
}

#[test]
fn no_common_codec_gets_488() {
    let gateway = GatewayProcess::start("no-codec", &echo_config(""));
    let offer = sipp::sdp_offer(4000, &[(18, "G729/8000"), (97, "iLBC/8000")]);
    let scenario = sipp::rejected("100", &offer, 488);
    let output = sipp::run(
        &gateway.dir,
        "call",
        &scenario,
        gateway.udp,
        SipTransport::Udp,
        "127.0.0.1",
    );
    sipp::assert_success(&output, &gateway.dir);
    gateway.wait_for_log(&["488"], Duration::from_secs(5));
}
