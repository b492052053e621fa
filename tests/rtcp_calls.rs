//! RTCP on a real call: the gateway reads the caller's receiver report
//! (its loss and jitter of our stream land in the call's media summary) and
//! sends a sender report about the caller's stream from RTP port + 1.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::gateway::{echo_config, GatewayProcess};
use common::rtp_peer::{RtpPeer, CALLER_SSRC};
use common::sipp::{self, G711_OFFER};
use common::ws_bot::sine;

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

#[test]
fn reports_flow_both_ways() {
    let gateway = GatewayProcess::start("rtcp", &echo_config(""));
    let (peer, rtcp) = RtpPeer::bind_with_rtcp();
    let scenario = sipp::caller_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER), 3000);
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    let gateway_rtp = peer
        .wait_first_packet(Duration::from_secs(10))
        .expect("answered");
    peer.stream_pcmu(gateway_rtp, &sine(440.0, 8000, 8000, 8000.0));
    let gateway_ssrc = peer.received()[0].ssrc;

    // Our receiver report: a quarter of the gateway's packets lost, 10 ms jitter.
    let mut rr = vec![0x81, 201, 0, 7];
    rr.extend_from_slice(&0x0bad_cafe_u32.to_be_bytes());
    rr.extend_from_slice(&gateway_ssrc.to_be_bytes());
    rr.extend_from_slice(&[64, 0, 0, 10]);
    rr.extend_from_slice(&1234u32.to_be_bytes());
    rr.extend_from_slice(&80u32.to_be_bytes());
    rr.extend_from_slice(&[0; 8]);
    let gateway_rtcp = SocketAddr::new(gateway_rtp.ip(), gateway_rtp.port() + 1);
    rtcp.send_to(&rr, gateway_rtcp).unwrap();

    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    let summary = gateway.wait_for_log(&["media summary"], Duration::from_secs(3));
    for expected in [
        "remote_loss_pct=25",
        "remote_jitter_ms=10",
        "rtcp_received=1",
        "loss_pct=0",
    ] {
        assert!(summary.contains(expected), "{expected} missing: {summary}");
    }

    // The gateway's last sender report, sent as the call ended, from RTP port + 1.
    let mut buf = [0u8; 1500];
    let (len, from) = loop {
        let (len, from) = rtcp
            .recv_from(&mut buf)
            .expect("an RTCP report from the gateway");
        if buf[1] == 200 {
            break (len, from);
        }
    };
    assert_eq!(from, gateway_rtcp);
    assert!(len >= 52 + 8, "SR with a report block and SDES");
    assert_eq!(
        be32(&buf[4..]),
        gateway_ssrc,
        "the SR names the gateway's RTP stream"
    );
    assert_eq!(buf[0] & 0x1f, 1, "one report block");
    let block = &buf[28..52];
    assert_eq!(be32(block), CALLER_SSRC);
    assert_eq!(be32(&block[4..]) & 0x00ff_ffff, 0, "nothing lost");
    assert_eq!(
        be32(&block[8..]),
        1049,
        "highest sequence: 50 packets from 1000"
    );
    assert!(be32(&buf[20..]) > 100, "packets sent by the gateway");
    gateway.assert_no_panic();
}
