//! The HTTP API on a real binary: `/health` answers, and after a call the
//! Prometheus `/metrics` carry its admission, RTCP loss, jitter and
//! round-trip time, and a refused call's status.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::api::{api_addr, http_get, sample};
use common::gateway::{echo_config, GatewayProcess};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, SipTransport, G711_OFFER};
use common::ws_bot::sine;

#[test]
fn metrics_carry_call_quality_and_refusals() {
    let gateway = GatewayProcess::start(
        "api-metrics",
        &echo_config("[api]\nlisten = \"127.0.0.1:0\""),
    );
    let api = api_addr(&gateway);
    let (status, body) = http_get(api, "/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    assert!(body.contains("\"active_calls\":0"), "{body}");

    // A call long enough for the gateway's first sender report (2.5–7.5 s).
    let (peer, rtcp) = RtpPeer::bind_with_rtcp();
    let scenario = sipp::caller_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER), 9000);
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    let gateway_rtp = peer
        .wait_first_packet(Duration::from_secs(10))
        .expect("answered");
    peer.stream_pcmu(gateway_rtp, &sine(440.0, 8000, 8000, 8000.0));
    let (_, body) = http_get(api, "/health");
    assert!(body.contains("\"active_calls\":1"), "{body}");

    // Answer the first sender report with a receiver report: a quarter of
    // the gateway's packets lost, 10 ms of jitter, and LSR/DLSR for RTT.
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(8);
    let sr = loop {
        assert!(
            Instant::now() < deadline,
            "no sender report from the gateway"
        );
        if let Ok((len, _)) = rtcp.recv_from(&mut buf) {
            if len >= 28 && buf[1] == 200 {
                break buf[..len].to_vec();
            }
        }
    };
    let gateway_ssrc = &sr[4..8];
    let lsr = &sr[10..14];
    let mut rr = vec![0x81, 201, 0, 7];
    rr.extend_from_slice(&0x0bad_cafe_u32.to_be_bytes());
    rr.extend_from_slice(gateway_ssrc);
    rr.extend_from_slice(&[64, 0, 0, 10]);
    rr.extend_from_slice(&1234u32.to_be_bytes());
    rr.extend_from_slice(&80u32.to_be_bytes());
    rr.extend_from_slice(lsr);
    rr.extend_from_slice(&0u32.to_be_bytes());
    let gateway_rtcp = SocketAddr::new(gateway_rtp.ip(), gateway_rtp.port() + 1);
    rtcp.send_to(&rr, gateway_rtcp).unwrap();

    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.wait_for_log(&["media summary"], Duration::from_secs(3));

    // A number no route matches: 404, counted by status.
    let scenario = sipp::rejected(
        "nobody",
        &sipp::sdp_offer(sipp::free_media_port(), G711_OFFER),
        404,
    );
    let output = sipp::run(
        &gateway.dir,
        "rejected",
        &scenario,
        gateway.udp,
        SipTransport::Udp,
        "127.0.0.1",
    );
    sipp::assert_success(&output, &gateway.dir);

    let (status, metrics) = http_get(api, "/metrics");
    assert_eq!(status, 200);
    let expect = |prefix: &str| {
        sample(&metrics, prefix).unwrap_or_else(|| panic!("{prefix} missing in:\n{metrics}"))
    };
    assert_eq!(
        expect("switchboard_calls_answered_total{flow=\"echo\"}"),
        1.0
    );
    assert_eq!(
        expect("switchboard_calls_rejected_total{status=\"404\"}"),
        1.0
    );
    assert_eq!(expect("switchboard_calls_active"), 0.0);
    let outbound = "{flow=\"echo\",direction=\"outbound\"}";
    assert_eq!(
        expect(&format!(
            "switchboard_call_packet_loss_ratio_count{outbound}"
        )),
        1.0
    );
    assert_eq!(
        expect(&format!("switchboard_call_packet_loss_ratio_sum{outbound}")),
        0.25
    );
    assert_eq!(
        expect(&format!("switchboard_call_jitter_ms_sum{outbound}")),
        10.0
    );
    let inbound = "{flow=\"echo\",direction=\"inbound\"}";
    assert_eq!(
        expect(&format!("switchboard_call_packet_loss_ratio_sum{inbound}")),
        0.0
    );
    assert_eq!(expect("switchboard_call_rtt_ms_count{flow=\"echo\"}"), 1.0);
    let rtt = expect("switchboard_call_rtt_ms_sum{flow=\"echo\"}");
    assert!((0.0..50.0).contains(&rtt), "loopback RTT {rtt} ms");
    assert!(
        expect("switchboard_call_duration_seconds_sum{flow=\"echo\"}") > 5.0,
        "{metrics}"
    );
    assert_eq!(
        expect("switchboard_rtp_packets_total{direction=\"inbound\"}"),
        50.0
    );
    assert!(expect("switchboard_rtp_packets_total{direction=\"outbound\"}") > 300.0);
    gateway.assert_no_panic();
}

#[test]
fn a_bad_api_address_refuses_to_start() {
    let dir = common::gateway::scratch_dir("api-bad-listen");
    let path = dir.join("bad.toml");
    std::fs::write(&path, echo_config("[api]\nlisten = \"localhost-8080\"")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("api.listen"), "{stderr}");
    assert!(stderr.contains("localhost-8080"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");
}
