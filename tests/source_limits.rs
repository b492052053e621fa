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
use common::sipp::{self, SipTransport, G711_OFFER};

const RATE: u64 = 20;
const BURST: u64 = 40;

fn options(from: &UdpSocket, target: std::net::SocketAddr, n: u64) -> String {
    let via = from.local_addr().unwrap();
    format!(
        "OPTIONS sip:probe@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bKo{n}\r\nFrom: <sip:probe@{via}>;tag=p{n}\r\nTo: <sip:probe@{target}>\r\nCall-ID: options-{n}-{}@{via}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        via.port()
    )
}

fn invite(from: &UdpSocket, target: std::net::SocketAddr, n: u64) -> String {
    let via = from.local_addr().unwrap();
    format!(
        "INVITE sip:100@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bKf{n}\r\nFrom: <sip:flood@{via}>;tag=f{n}\r\nTo: <sip:100@{target}>\r\nCall-ID: flood-{n}@{via}\r\nCSeq: 1 INVITE\r\nContact: <sip:flood@{via}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
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
    let flooder = UdpSocket::bind("127.0.0.2:0").unwrap();
    let flood = {
        let (flooding, flooder, target) =
            (flooding.clone(), flooder.try_clone().unwrap(), gateway.udp);
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut sent = 0u64;
            while flooding.load(Ordering::Relaxed) || sent < 5_000 {
                let _ = flooder.send_to(invite(&flooder, target, sent).as_bytes(), target);
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
    let output = sipp::run(
        &gateway.dir,
        "call",
        &scenario,
        gateway.udp,
        SipTransport::Udp,
        "127.0.0.1",
    );
    sipp::assert_success(&output, &gateway.dir);

    // Another unauthenticated source is answered: the limit is per source.
    let other = UdpSocket::bind("127.0.0.3:0").unwrap();
    other
        .send_to(options(&other, gateway.udp, 1).as_bytes(), gateway.udp)
        .unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 65_536];
    let (len, _) = other.recv_from(&mut buf).expect("127.0.0.3 answered");
    assert_eq!(
        status(&String::from_utf8_lossy(&buf[..len])),
        Some(200),
        "OPTIONS from another source"
    );

    // The trunk's network is exempt: far more than a burst, all answered.
    let trunk = RawSip::new(gateway.udp);
    for n in 0..3 * BURST {
        trunk.send(&options(&trunk.socket, gateway.udp, 1_000 + n));
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        count_answers(&trunk.socket, Duration::from_millis(500)),
        3 * BURST,
        "every OPTIONS from the trunk answered"
    );

    flooding.store(false, Ordering::Relaxed);
    let (sent, elapsed) = flood.join().unwrap();
    let answered = count_answers(&flooder, Duration::from_millis(500));
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
