//! Targeted SIP behaviour of the running binary: OPTIONS, 481, capacity,
//! CANCEL → 487, re-INVITE without breaking media, IPv6, and shutdown that
//! drains and then hangs up.

mod common;

use std::time::Duration;

use common::gateway::{config_with, echo_config, GatewayProcess};
use common::raw_sip::{header, status, RawSip};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, SipTransport, G711_OFFER};

/// A new INVITE (or re-INVITE, by `cseq`) to 100 offering G.711 at
/// `rtp_port`.
fn sdp_invite(sip: &RawSip, call_id: &str, cseq: u32, rtp_port: u16) -> String {
    let sdp = sipp::sdp_offer(rtp_port, G711_OFFER);
    sip.request(
        "INVITE",
        "100",
        call_id,
        cseq,
        "Content-Type: application/sdp\r\n",
        &sdp,
    )
}

fn ack_for(sip: &RawSip, response: &str, user: &str, call_id: &str, cseq: u32) -> String {
    let to = header(response, "To").unwrap();
    format!(
        "ACK sip:{user}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bKack{call_id}{cseq}\r\nFrom: <sip:tester@{via}>;tag=tester\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        target = sip.target,
        via = sip.sent_by(),
    )
}

/// A configuration whose every call goes to a bot that accepts TCP but
/// never completes the WebSocket handshake, so calls stay unanswered for
/// 10 s; and that bot's listener, to keep while the test runs.
fn unanswering_bot(limits: &str) -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/media", listener.local_addr().unwrap());
    let config = config_with(&format!(
        r#"
{limits}
[[trunks]]
name = "loopback"
allow = ["127.0.0.1"]
routes = [{{ pattern = ".*", flow = "slow" }}]

[[flows]]
name = "slow"
bot = {{ kind = "twilio_stream", url = "{url}", connect_timeout_ms = 10000 }}
"#
    ));
    (listener, config)
}

#[test]
fn options_is_answered_and_unknown_dialogs_get_481() {
    let gateway = GatewayProcess::start("options", &echo_config(""));
    let sip = RawSip::new(gateway.udp);
    sip.send(&sip.request("OPTIONS", "100", "opt-1", 1, "", ""));
    let ok = sip
        .wait_for(|m| status(m).is_some(), Duration::from_secs(3))
        .expect("OPTIONS answered");
    assert_eq!(status(&ok), Some(200));
    assert!(header(&ok, "Allow").unwrap().contains("INVITE"));

    let bye = sip
        .request("BYE", "100", "no-such-call", 2, "", "")
        .replace(
            &format!("To: <sip:100@{}>", gateway.udp),
            &format!("To: <sip:100@{}>;tag=gone", gateway.udp),
        );
    sip.send(&bye);
    let reply = sip
        .wait_for(|m| status(m).is_some(), Duration::from_secs(3))
        .expect("BYE answered");
    assert_eq!(status(&reply), Some(481));

    sip.send(&sip.request("REGISTER", "alice", "reg-1", 1, "Expires: 60\r\n", ""));
    let reply = sip
        .wait_for(|m| status(m).is_some(), Duration::from_secs(3))
        .expect("REGISTER answered");
    assert_eq!(status(&reply), Some(405));
}

#[test]
fn calls_beyond_capacity_get_503_with_retry_after() {
    let config = echo_config("").replace("[media]", "[limits]\nmax_calls = 1\n\n[media]");
    let gateway = GatewayProcess::start("capacity", &config);
    let first = RawSip::new(gateway.udp);
    let peer = RtpPeer::bind();
    first.send(&sdp_invite(&first, "cap-1", 1, peer.port()));
    let ok = first
        .wait_for(|m| status(m) == Some(200), Duration::from_secs(5))
        .expect("first call answered");
    first.send(&ack_for(&first, &ok, "100", "cap-1", 1));

    let second = RawSip::new(gateway.udp);
    second.send(&sdp_invite(&second, "cap-2", 1, 4000));
    // Refused before any transaction: the 503 is the first and only
    // answer (no 100 Trying), and its ACK needs nothing from the endpoint.
    let busy = second
        .wait_for(|m| status(m).is_some(), Duration::from_secs(5))
        .expect("second call answered");
    assert_eq!(status(&busy), Some(503), "{busy}");
    assert!(header(&busy, "Retry-After").is_some());
    // Not ACKed on purpose: a 503 sent through a transaction would come
    // again on Timer G (500 ms, then 1 s); one sent without state, once.
    let again = second.wait_for(|m| status(m).is_some(), Duration::from_millis(1600));
    assert!(again.is_none(), "the 503 was retransmitted: {again:?}");
    gateway.wait_for_log(&["at capacity"], Duration::from_secs(2));
}

/// At capacity new INVITEs are refused at the socket, before parsing; an
/// INVITE the gateway has taken on and not answered yet holds the only
/// place, and its retransmission must still reach its transaction (100
/// Trying again), not be taken for a new call and refused.
#[test]
fn at_capacity_a_retransmitted_invite_still_reaches_its_transaction() {
    let (listener, config) = unanswering_bot("[limits]\nmax_calls = 1\n");
    let gateway = GatewayProcess::start("capacity-retransmission", &config);
    let first = RawSip::new(gateway.udp);
    let invite = sdp_invite(&first, "held-1", 1, 4000);
    first.send(&invite);
    let trying = first
        .wait_for(|m| status(m).is_some(), Duration::from_secs(3))
        .expect("100 Trying");
    assert_eq!(status(&trying), Some(100), "{trying}");

    let second = RawSip::new(gateway.udp);
    second.send(&sdp_invite(&second, "held-2", 1, 4002));
    let busy = second
        .wait_for(|m| status(m).is_some(), Duration::from_secs(3))
        .expect("second call answered");
    assert_eq!(status(&busy), Some(503), "{busy}");

    first.send(&invite);
    let again = first
        .wait_for(|m| status(m).is_some(), Duration::from_secs(3))
        .expect("the retransmission answered");
    assert_eq!(status(&again), Some(100), "{again}");
    drop(listener);
}

#[test]
fn cancel_before_answer_gets_487() {
    let (_listener, config) = unanswering_bot("");
    let gateway = GatewayProcess::start("cancel", &config);
    let sip = RawSip::new(gateway.udp);
    let invite = sdp_invite(&sip, "cancel-1", 1, 4000);
    sip.send(&invite);
    let trying = sip
        .wait_for(|m| status(m) == Some(100), Duration::from_secs(3))
        .expect("100 Trying");
    assert!(
        header(&trying, "To").unwrap().find("tag=").is_none(),
        "100 carries no To tag"
    );
    let cancel = invite
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
        .split("Content-Type")
        .next()
        .unwrap()
        .to_string()
        + "Content-Length: 0\r\n\r\n";
    sip.send(&cancel);
    let mut statuses = Vec::new();
    while let Some(message) = sip.wait_for(|m| status(m).is_some(), Duration::from_secs(3)) {
        let code = status(&message).unwrap();
        let method = header(&message, "CSeq").unwrap().to_string();
        statuses.push((code, method));
        if code == 487 {
            break;
        }
    }
    assert!(
        statuses.contains(&(200, "1 CANCEL".to_string())),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&(487, "1 INVITE".to_string())),
        "{statuses:?}"
    );
    gateway.wait_for_log(&["call ended", "cancelled"], Duration::from_secs(3));
}

#[test]
fn reinvite_is_answered_without_breaking_media() {
    let gateway = GatewayProcess::start("reinvite", &echo_config(""));
    let sip = RawSip::new(gateway.udp);
    let peer = RtpPeer::bind();
    sip.send(&sdp_invite(&sip, "reinv-1", 1, peer.port()));
    let ok = sip
        .wait_for(|m| status(m) == Some(200), Duration::from_secs(5))
        .expect("answered");
    sip.send(&ack_for(&sip, &ok, "100", "reinv-1", 1));
    let to = header(&ok, "To").unwrap().to_string();
    let gateway_rtp = peer.wait_first_packet(Duration::from_secs(5)).unwrap();

    let reinvite = sdp_invite(&sip, "reinv-1", 2, peer.port()).replace(
        &format!("To: <sip:100@{}>", gateway.udp),
        &format!("To: {to}"),
    );
    sip.send(&reinvite);
    let ok2 = sip
        .wait_for(
            |m| status(m) == Some(200) && m.contains("CSeq: 2 INVITE"),
            Duration::from_secs(5),
        )
        .expect("re-INVITE answered");
    assert!(ok2.contains("m=audio"), "re-INVITE answer carries SDP");
    let port_before = ok
        .lines()
        .find(|l| l.starts_with("m=audio"))
        .unwrap()
        .to_string();
    let port_after = ok2
        .lines()
        .find(|l| l.starts_with("m=audio"))
        .unwrap()
        .to_string();
    assert_eq!(port_before, port_after, "media stays on the same port");
    sip.send(&ack_for(&sip, &ok2, "100", "reinv-1", 2));

    let before = peer.received().len();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        peer.received().len() >= before + 20,
        "RTP keeps flowing after the re-INVITE"
    );
    assert!(peer.received().iter().all(|p| p.from == gateway_rtp));

    // On hold: a sendonly offer gets a recvonly answer (RFC 3264 §6.1).
    let hold = sdp_invite(&sip, "reinv-1", 3, peer.port())
        .replace(
            &format!("To: <sip:100@{}>", gateway.udp),
            &format!("To: {to}"),
        )
        .replace("a=sendrecv", "a=sendonly");
    assert!(hold.contains("a=sendonly"));
    sip.send(&hold);
    let ok3 = sip
        .wait_for(
            |m| status(m) == Some(200) && m.contains("CSeq: 3 INVITE"),
            Duration::from_secs(5),
        )
        .expect("hold answered");
    assert!(
        ok3.contains("a=recvonly") && !ok3.contains("a=sendrecv"),
        "{ok3}"
    );
    sip.send(&ack_for(&sip, &ok3, "100", "reinv-1", 3));
}

#[test]
fn ipv6_call_over_udp() {
    let config = echo_config("")
        .replace(
            "\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\"",
            "\"udp:[::1]:0\", \"tcp:[::1]:0\"",
        )
        .replace("allow = [\"127.0.0.1\"]", "allow = [\"::1\"]");
    let gateway = GatewayProcess::start("ipv6", &config);
    assert!(gateway.udp.is_ipv6());
    let sip = RawSip::new(gateway.udp);
    let offer = sipp::sdp_offer(4000, G711_OFFER).replace("IN IP4 127.0.0.1", "IN IP6 ::1");
    sip.send(&sip.request(
        "INVITE",
        "100",
        "v6-1",
        1,
        "Content-Type: application/sdp\r\n",
        &offer,
    ));
    let ok = sip
        .wait_for(|m| status(m) == Some(200), Duration::from_secs(5))
        .expect("answered over IPv6");
    assert!(ok.contains("c=IN IP6 ::1"), "SDP answer is IPv6:\n{ok}");
    assert!(
        header(&ok, "Contact").unwrap().contains("[::1]"),
        "Contact has a bracketed IPv6 host"
    );
    sip.send(&ack_for(&sip, &ok, "100", "v6-1", 1));
}

#[test]
fn shutdown_drains_then_hangs_up_remaining_calls() {
    let gateway = GatewayProcess::start("drain", &echo_config(""));
    let peer = RtpPeer::bind();
    let scenario = sipp::gateway_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER));
    let dir = gateway.dir.clone();
    let target = gateway.udp;
    let caller = std::thread::spawn(move || {
        sipp::run(
            &dir,
            "call",
            &scenario,
            target,
            SipTransport::Udp,
            "127.0.0.1",
        )
    });
    gateway.wait_for_log(&["answered"], Duration::from_secs(10));
    gateway.terminate();
    gateway.wait_for_log(&["draining calls"], Duration::from_secs(5));
    // While draining, new calls are refused.
    let late = RawSip::new(gateway.udp);
    late.send(&sdp_invite(&late, "late-1", 1, 4000));
    let refused = late
        .wait_for(
            |m| status(m).is_some_and(|s| s >= 200),
            Duration::from_secs(3),
        )
        .expect("late call answered");
    assert_eq!(status(&refused), Some(503));
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    // Log lines reach stdout through a writer thread: the BYE that ended
    // sipp's call may be out before the line logged just ahead of it.
    gateway.wait_for_log(&["drain timed out"], Duration::from_secs(5));
    gateway.wait_for_log(&["gateway shutting down"], Duration::from_secs(5));
    let exit = gateway.stop();
    assert!(exit.success(), "exit status {exit}");
}

/// Every resource a call opens is released when it ends: after twenty calls
/// (ended by the caller, by CANCEL-free BYE and by RTP timeout alike) the
/// gateway holds no more file descriptors than before, once the calls' RTP
/// ports have rested (at most 3 s, `call::ports::IDLE` and its sweep).
#[test]
fn calls_leave_no_sockets_behind() {
    let gateway = GatewayProcess::start("leaks", &echo_config(""));
    let sip = RawSip::new(gateway.udp);
    let warm_up = |index: usize| {
        let call_id = format!("leak-{index}");
        sip.send(&sdp_invite(&sip, &call_id, 1, 4000));
        let ok = sip
            .wait_for(
                |m| status(m) == Some(200) && m.contains(&call_id),
                Duration::from_secs(5),
            )
            .expect("answered");
        sip.send(&ack_for(&sip, &ok, "100", &call_id, 1));
        let to = header(&ok, "To").unwrap().to_string();
        let bye = sip.request("BYE", "100", &call_id, 2, "", "").replace(
            &format!("To: <sip:100@{}>", gateway.udp),
            &format!("To: {to}"),
        );
        sip.send(&bye);
        sip.wait_for(
            |m| status(m) == Some(200) && m.contains("CSeq: 2 BYE"),
            Duration::from_secs(5),
        )
        .expect("BYE answered");
    };
    warm_up(0);
    std::thread::sleep(Duration::from_millis(300));
    let baseline = gateway.open_fds();
    for index in 1..=20 {
        warm_up(index);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gateway.open_fds() > baseline && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Fewer is fine: the first call's ports, resting when the baseline was
    // taken, may have been closed since.
    let now_open = gateway.open_fds();
    assert!(
        now_open <= baseline,
        "file descriptors leaked by 20 calls: {now_open} open, {baseline} before"
    );
    gateway.wait_for_log(&["call ended", "leak-20"], Duration::from_secs(2));
}
