//! A flood of new requests from one address is dropped at the socket
//! (`[limits] new_requests_per_ip`) while other sources and the trunk's
//! calls are served; the trunk's own network is exempt.

mod common;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::{api_addr, http_get, sample};
use common::gateway::{echo_config, GatewayProcess};
use common::raw_sip::{status, RawSip};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, G711_OFFER};

const RATE: u64 = 20;
const BURST: u64 = 40;

/// A raw UDP client bound on `ip` (a loopback alias).
fn client_on(ip: &str, target: std::net::SocketAddr) -> RawSip {
    RawSip {
        socket: UdpSocket::bind((ip, 0)).unwrap(),
        target,
    }
}

/// How many different requests (by Call-ID) got answers on `socket`
/// until it has been quiet for `quiet`: a final response is retransmitted
/// until the ACK, so messages overcount.
fn count_answers(socket: &UdpSocket, quiet: Duration) -> u64 {
    socket.set_read_timeout(Some(quiet)).unwrap();
    let mut buf = [0u8; 65_536];
    let mut answered = std::collections::HashSet::new();
    while let Ok((len, _)) = socket.recv_from(&mut buf) {
        let text = String::from_utf8_lossy(&buf[..len]);
        if let Some(call_id) = common::raw_sip::header(&text, "Call-ID") {
            answered.insert(call_id.to_string());
        }
    }
    answered.len() as u64
}

#[test]
fn a_flooding_source_is_dropped_while_other_sources_and_the_trunk_are_served() {
    let config = echo_config(&format!(
        "[limits]\nnew_requests_per_ip = {RATE}\nnew_requests_burst_per_ip = {BURST}\n\n[api]\nlisten = \"127.0.0.1:0\"\n"
    ));
    let gateway = GatewayProcess::start("source-limits", &config);
    let api = api_addr(&gateway);

    // 127.0.0.2 floods INVITEs (it is no trunk: each would cost a 403
    // transaction) for as long as the rest of the test runs.
    let flooding = Arc::new(AtomicBool::new(true));
    let flooder = client_on("127.0.0.2", gateway.udp);
    let flood = {
        let flooding = flooding.clone();
        // The same socket: its answers are counted below.
        let flooder = RawSip {
            socket: flooder.socket.try_clone().unwrap(),
            target: gateway.udp,
        };
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut sent = 0u64;
            while flooding.load(Ordering::Relaxed) || sent < 5_000 {
                let invite = flooder.request("INVITE", "100", &format!("flood-{sent}"), 1, "", "");
                let _ = flooder.socket.send_to(invite.as_bytes(), flooder.target);
                sent += 1;
                if sent.is_multiple_of(10) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            (sent, started.elapsed())
        })
    };

    // Meanwhile a call from the trunk's address goes through.
    let peer = RtpPeer::bind();
    let scenario = sipp::caller_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER), 1000);
    let output = sipp::spawn_udp_call(&gateway, scenario).join().unwrap();
    sipp::assert_success(&output, &gateway.dir);

    // Another unauthenticated source is answered: the limit is per source.
    let other = client_on("127.0.0.3", gateway.udp);
    other.send(&other.request("OPTIONS", "probe", "other-1", 1, "", ""));
    let answer = other.wait_for(|m| status(m).is_some(), Duration::from_secs(2));
    assert_eq!(
        answer.as_deref().and_then(status),
        Some(200),
        "OPTIONS from another source"
    );

    // The trunk's network is exempt: far more than a burst, all answered.
    let trunk = RawSip::new(gateway.udp);
    for n in 0..3 * BURST {
        trunk.send(&trunk.request("OPTIONS", "probe", &format!("trunk-{n}"), 1, "", ""));
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        count_answers(&trunk.socket, Duration::from_millis(500)),
        3 * BURST,
        "every OPTIONS from the trunk answered"
    );

    flooding.store(false, Ordering::Relaxed);
    let (sent, elapsed) = flood.join().unwrap();
    let answered = count_answers(&flooder.socket, Duration::from_millis(500));
    let allowed = BURST + RATE * (elapsed.as_secs() + 1);
    println!("flood: {sent} INVITEs in {elapsed:?}, {answered} answered (allowance {allowed})");
    assert!(sent >= 5_000);
    assert!(
        answered <= allowed,
        "{answered} answers to {sent} flooding INVITEs: the rate limit did not hold"
    );
    assert!(answered > 0, "the burst is served");

    let (code, metrics) = http_get(api, "/metrics");
    assert_eq!(code, 200);
    let dropped = sample(&metrics, "switchboard_sip_shed_total{stage=\"rate\"}").unwrap_or(0.0);
    assert!(
        dropped as u64 >= sent / 2,
        "{dropped} counted as dropped of {sent}"
    );
    gateway.wait_for_log(
        &[
            "more new requests than limits.new_requests_per_ip",
            "127.0.0.2",
        ],
        Duration::from_secs(1),
    );
    gateway.assert_no_panic();
}
