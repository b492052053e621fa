//! Transaction layer driven by a fake clock: no sockets, no sleeps.

use std::time::{Duration, Instant};

use super::*;
use crate::sip::framing::parse_message;
use crate::sip::message::{Request, SipMessage};

const UDP: Peer = Peer {
    transport: Transport::Udp,
    addr: SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(127, 0, 0, 1),
        5070,
    )),
};
const TCP: Peer = Peer {
    transport: Transport::Tcp,
    addr: UDP.addr,
};

fn request(method: &str, branch: &str, cseq: u32) -> Request {
    let text = format!(
        "{method} sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\nFrom: <sip:a@127.0.0.1>;tag=f1\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: call-1\r\nCSeq: {cseq} {method}\r\nContact: <sip:a@127.0.0.1:5070>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    match parse_message(text.as_bytes()).unwrap() {
        SipMessage::Request(request) => request,
        _ => unreachable!(),
    }
}

fn drain(layer: &mut TransactionLayer) -> (Vec<String>, Vec<TransactionEvent>) {
    let mut sent = Vec::new();
    while let Some(transmit) = layer.poll_transmit() {
        sent.push(
            String::from_utf8_lossy(&transmit.bytes)
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        );
    }
    let mut events = Vec::new();
    while let Some(event) = layer.poll_event() {
        events.push(event);
    }
    (sent, events)
}

fn new_request_tx(
    layer: &mut TransactionLayer,
    req: Request,
    peer: Peer,
    now: Instant,
) -> ServerTxId {
    layer.handle_input(SipMessage::Request(req), peer, now);
    let (_, events) = drain(layer);
    match events.as_slice() {
        [TransactionEvent::Request { tx, .. }] => *tx,
        other => panic!("expected one request event, got {other:?}"),
    }
}

/// Advances the clock to each deadline up to `until`, noting when something was sent.
fn run_until(
    layer: &mut TransactionLayer,
    start: Instant,
    until: Duration,
) -> (Vec<u64>, Vec<TransactionEvent>) {
    let mut sends = Vec::new();
    let mut events = Vec::new();
    while let Some(deadline) = layer.poll_timeout() {
        if deadline > start + until {
            break;
        }
        layer.handle_timeout(deadline);
        let (sent, mut evs) = drain(layer);
        for _ in sent {
            sends.push(deadline.duration_since(start).as_millis() as u64);
        }
        events.append(&mut evs);
    }
    (sends, events)
}

/// §17.2.1: a 100 Trying only when the TU does not answer within 200 ms;
/// retransmissions get the last response.
#[test]
fn server_invite_sends_trying_when_the_tu_is_slow_and_absorbs_retransmissions() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    layer.handle_input(
        SipMessage::Request(request("INVITE", "z9hG4bK1", 1)),
        UDP,
        t0,
    );
    let (sent, events) = drain(&mut layer);
    assert!(sent.is_empty(), "nothing before 200 ms: {sent:?}");
    assert_eq!(events.len(), 1);
    assert_eq!(layer.poll_timeout(), Some(t0 + server::TRYING_DELAY));
    layer.handle_timeout(t0 + server::TRYING_DELAY);
    let (sent, _) = drain(&mut layer);
    assert_eq!(sent, vec!["SIP/2.0 100 Trying"]);
    layer.handle_input(
        SipMessage::Request(request("INVITE", "z9hG4bK1", 1)),
        UDP,
        t0 + Duration::from_millis(500),
    );
    let (sent, events) = drain(&mut layer);
    assert_eq!(
        sent,
        vec!["SIP/2.0 100 Trying"],
        "retransmission gets the last response"
    );
    assert!(events.is_empty());
}

/// An INVITE answered within 200 ms never gets a 100 Trying.
#[test]
fn server_invite_answered_at_once_sends_no_trying() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    let invite = request("INVITE", "z9hG4bKquick", 1);
    let tx = new_request_tx(&mut layer, invite.clone(), UDP, t0);
    let ok = crate::sip::response::response_for(&invite, 200, "OK", Some("t"));
    layer.send_response(tx, ok, t0 + Duration::from_millis(5));
    let (sent, _) = drain(&mut layer);
    assert_eq!(sent, vec!["SIP/2.0 200 OK"]);
    layer.handle_input(
        SipMessage::Request(request("ACK", "z9hG4bKquickack", 1)),
        UDP,
        t0 + Duration::from_millis(10),
    );
    drain(&mut layer);
    let (sends, _) = run_until(&mut layer, t0, Duration::from_secs(40));
    assert!(sends.is_empty(), "sent at {sends:?} ms");
    assert!(layer.is_empty());
}

/// A retransmitted INVITE before the 100 was due gets it at once, and the
/// timer then sends no second one.
#[test]
fn server_invite_retransmitted_early_gets_trying_once() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    let invite = request("INVITE", "z9hG4bKearly", 1);
    new_request_tx(&mut layer, invite.clone(), UDP, t0);
    layer.handle_input(
        SipMessage::Request(invite),
        UDP,
        t0 + Duration::from_millis(50),
    );
    let (sent, events) = drain(&mut layer);
    assert_eq!(sent, vec!["SIP/2.0 100 Trying"]);
    assert!(events.is_empty());
    let (sends, _) = run_until(&mut layer, t0, Duration::from_secs(1));
    assert!(sends.is_empty(), "sent again at {sends:?} ms");
}

#[test]
fn server_invite_non_2xx_retransmits_on_timer_g_until_ack_then_timer_i() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    let invite = request("INVITE", "z9hG4bK2", 1);
    let tx = new_request_tx(&mut layer, invite.clone(), UDP, t0);
    layer.send_response(
        tx,
        crate::sip::response::response_for(&invite, 486, "Busy Here", Some("t")),
        t0,
    );
    drain(&mut layer);
    let (sends, _) = run_until(&mut layer, t0, Duration::from_millis(15_000));
    assert_eq!(
        sends,
        vec![500, 1500, 3500, 7500, 11500, 15500]
            .into_iter()
            .filter(|t| *t <= 15_000)
            .collect::<Vec<_>>()
    );
    // The ACK arrives: no more retransmissions; Timer I (T4) ends it.
    let now = t0 + Duration::from_millis(15_100);
    layer.handle_input(SipMessage::Request(request("ACK", "z9hG4bK2", 1)), UDP, now);
    let (sent, events) = drain(&mut layer);
    assert!(
        sent.is_empty() && events.is_empty(),
        "ACK for non-2xx is absorbed"
    );
    assert_eq!(layer.poll_timeout(), Some(now + Duration::from_secs(5)));
    layer.handle_timeout(now + Duration::from_secs(5));
    assert!(layer.is_empty());
}

#[test]
fn server_invite_timer_h_gives_up_without_ack() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    let invite = request("INVITE", "z9hG4bK3", 1);
    let tx = new_request_tx(&mut layer, invite.clone(), UDP, t0);
    layer.send_response(
        tx,
        crate::sip::response::response_for(&invite, 404, "Not Found", Some("t")),
        t0,
    );
    drain(&mut layer);
    let (sends, _) = run_until(&mut layer, t0, Duration::from_secs(40));
    assert_eq!(
        *sends.last().unwrap(),
        31_500,
        "last retransmission before H at 32 s"
    );
    assert!(layer.is_empty(), "Timer H removed the transaction");
}

#[test]
fn server_invite_2xx_retransmits_until_ack_and_reports_missing_ack() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    let invite = request("INVITE", "z9hG4bK4", 1);
    let tx = new_request_tx(&mut layer, invite.clone(), UDP, t0);
    layer.send_response(
        tx,
        crate::sip::response::response_for(&invite, 200, "OK", Some("t")),
        t0,
    );
    drain(&mut layer);
    let (sends, events) = run_until(&mut layer, t0, Duration::from_secs(40));
    assert_eq!(&sends[..4], &[500, 1500, 3500, 7500]);
    assert!(
        matches!(events.as_slice(), [TransactionEvent::AckTimeout { call_id, .. }] if call_id == "call-1")
    );
    assert!(layer.is_empty());

    // With an ACK (new branch, same Call-ID/CSeq) the 2xx stops and the ACK is delivered.
    let tx = new_request_tx(&mut layer, request("INVITE", "z9hG4bK5", 2), UDP, t0);
    layer.send_response(
        tx,
        crate::sip::response::response_for(&request("INVITE", "z9hG4bK5", 2), 200, "OK", Some("t")),
        t0,
    );
    drain(&mut layer);
    layer.handle_input(
        SipMessage::Request(request("ACK", "z9hG4bKack", 2)),
        UDP,
        t0 + Duration::from_millis(100),
    );
    let (_, events) = drain(&mut layer);
    assert!(matches!(events.as_slice(), [TransactionEvent::Ack { .. }]));
    assert!(layer.is_empty());
}

#[test]
fn tcp_server_transactions_never_retransmit() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    let invite = request("INVITE", "z9hG4bK6", 1);
    let tx = new_request_tx(&mut layer, invite.clone(), TCP, t0);
    layer.send_response(
        tx,
        crate::sip::response::response_for(&invite, 486, "Busy Here", Some("t")),
        t0,
    );
    drain(&mut layer);
    let (sends, _) = run_until(&mut layer, t0, Duration::from_secs(40));
    assert!(sends.is_empty());
    let bye = request("BYE", "z9hG4bK7", 2);
    let tx = new_request_tx(&mut layer, bye.clone(), TCP, t0);
    layer.send_response(
        tx,
        crate::sip::response::response_for(&bye, 200, "OK", None),
        t0,
    );
    assert!(
        layer.is_empty(),
        "non-INVITE over TCP ends with its final response (J = 0)"
    );
}

#[test]
fn server_non_invite_timer_j_absorbs_retransmissions() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    let bye = request("BYE", "z9hG4bK8", 2);
    let tx = new_request_tx(&mut layer, bye.clone(), UDP, t0);
    layer.send_response(
        tx,
        crate::sip::response::response_for(&bye, 200, "OK", None),
        t0,
    );
    drain(&mut layer);
    layer.handle_input(
        SipMessage::Request(bye.clone()),
        UDP,
        t0 + Duration::from_secs(1),
    );
    let (sent, events) = drain(&mut layer);
    assert_eq!(sent, vec!["SIP/2.0 200 OK"]);
    assert!(events.is_empty());
    assert_eq!(layer.poll_timeout(), Some(t0 + Duration::from_secs(32)));
    layer.handle_timeout(t0 + Duration::from_secs(32));
    assert!(layer.is_empty());
}

#[test]
fn cancel_is_answered_and_reported() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    let invite = request("INVITE", "z9hG4bK9", 1);
    let invite_tx = new_request_tx(&mut layer, invite.clone(), UDP, t0);
    layer.handle_input(
        SipMessage::Request(request("CANCEL", "z9hG4bK9", 1)),
        UDP,
        t0,
    );
    let (sent, events) = drain(&mut layer);
    assert_eq!(sent, vec!["SIP/2.0 200 OK"]);
    assert!(
        matches!(events.as_slice(), [TransactionEvent::Cancelled { invite_tx: id, .. }] if *id == invite_tx)
    );
    layer.handle_input(
        SipMessage::Request(request("CANCEL", "z9hG4bKnomatch", 1)),
        UDP,
        t0,
    );
    let (sent, events) = drain(&mut layer);
    assert_eq!(sent, vec!["SIP/2.0 481 Call/Transaction Does Not Exist"]);
    assert!(events.is_empty());
}

#[test]
fn client_invite_timer_a_doubles_and_b_times_out() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    layer.send_request(request("INVITE", "z9hG4bKc1", 1), UDP, t0);
    drain(&mut layer);
    let (sends, events) = run_until(&mut layer, t0, Duration::from_secs(40));
    assert_eq!(sends, vec![500, 1500, 3500, 7500, 15500, 31500]);
    assert!(matches!(
        events.as_slice(),
        [TransactionEvent::Timeout { .. }]
    ));
    assert!(layer.is_empty());
}

#[test]
fn client_invite_acks_non_2xx_itself_and_timer_d_absorbs_retransmissions() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    let invite = request("INVITE", "z9hG4bKc2", 1);
    layer.send_request(invite.clone(), UDP, t0);
    drain(&mut layer);
    let busy = crate::sip::response::response_for(&invite, 486, "Busy Here", Some("remote"));
    layer.handle_input(
        SipMessage::Response(busy.clone()),
        UDP,
        t0 + Duration::from_millis(100),
    );
    let (sent, events) = drain(&mut layer);
    assert_eq!(sent, vec!["ACK sip:100@127.0.0.1 SIP/2.0"]);
    assert!(
        matches!(events.as_slice(), [TransactionEvent::Response { response, .. }] if response.status == 486)
    );
    layer.handle_input(
        SipMessage::Response(busy),
        UDP,
        t0 + Duration::from_millis(600),
    );
    let (sent, events) = drain(&mut layer);
    assert_eq!(sent.len(), 1, "retransmitted final is ACKed again");
    assert!(events.is_empty(), "and not delivered twice");
    layer.handle_timeout(t0 + Duration::from_millis(100) + Duration::from_secs(32));
    assert!(layer.is_empty());
}

#[test]
fn client_non_invite_timer_e_caps_at_t2_and_f_times_out() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    layer.send_request(request("BYE", "z9hG4bKc3", 2), UDP, t0);
    drain(&mut layer);
    let (sends, events) = run_until(&mut layer, t0, Duration::from_secs(40));
    assert_eq!(&sends[..6], &[500, 1500, 3500, 7500, 11500, 15500]);
    assert!(matches!(
        events.as_slice(),
        [TransactionEvent::Timeout { .. }]
    ));
    assert!(layer.is_empty());
}

#[test]
fn client_non_invite_completes_with_timer_k() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    let bye = request("BYE", "z9hG4bKc4", 2);
    layer.send_request(bye.clone(), UDP, t0);
    drain(&mut layer);
    let ok = crate::sip::response::response_for(&bye, 200, "OK", None);
    layer.handle_input(
        SipMessage::Response(ok),
        UDP,
        t0 + Duration::from_millis(50),
    );
    let (_, events) = drain(&mut layer);
    assert_eq!(events.len(), 1);
    assert_eq!(
        layer.poll_timeout(),
        Some(t0 + Duration::from_millis(50) + Duration::from_secs(5))
    );
    layer.handle_timeout(t0 + Duration::from_secs(6));
    assert!(layer.is_empty());
}

/// Two layers over a simulated lossy network: the first INVITE and the
/// first 200 are lost; retransmissions carry the call through.
#[test]
fn two_layers_over_a_lossy_network() {
    let mut client = TransactionLayer::new(Timers::default());
    let mut server = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    let invite = request("INVITE", "z9hG4bKnet", 1);
    client.send_request(invite, UDP, t0);
    let _lost = client.poll_transmit().unwrap();
    let mut now = t0;
    let mut answered = false;
    let mut dropped_200 = false;
    let mut got_200 = false;
    for _ in 0..50 {
        let next = [client.poll_timeout(), server.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
        now = now.max(next);
        client.handle_timeout(now);
        server.handle_timeout(now);
        while let Some(transmit) = client.poll_transmit() {
            server.handle_input(parse_message(&transmit.bytes).unwrap(), UDP, now);
        }
        while let Some(event) = server.poll_event() {
            if let TransactionEvent::Request { tx, request, .. } = event {
                server.send_response(
                    tx,
                    crate::sip::response::response_for(&request, 200, "OK", Some("s")),
                    now,
                );
                answered = true;
            }
        }
        while let Some(transmit) = server.poll_transmit() {
            let message = parse_message(&transmit.bytes).unwrap();
            if matches!(&message, SipMessage::Response(r) if r.status == 200) && !dropped_200 {
                dropped_200 = true;
                continue;
            }
            client.handle_input(message, UDP, now);
        }
        while let Some(event) = client.poll_event() {
            if matches!(event, TransactionEvent::Response { ref response, .. } if response.status == 200)
            {
                got_200 = true;
            }
        }
        if got_200 {
            break;
        }
    }
    assert!(answered && dropped_200 && got_200);
    assert!(
        now - t0 < Duration::from_secs(3),
        "recovered within a few retransmissions"
    );
}

/// A request nobody answers still ends: the INVITE with a 500 of its own,
/// the non-INVITE silently once its client has given up (64*T1).
#[test]
fn unanswered_server_transactions_end() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    new_request_tx(&mut layer, request("INVITE", "z9hG4bKu1", 1), UDP, t0);
    new_request_tx(&mut layer, request("INFO", "z9hG4bKu2", 2), UDP, t0);
    drain(&mut layer);
    layer.handle_timeout(t0 + Duration::from_secs(33));
    let (sent, _) = drain(&mut layer);
    assert_eq!(sent, vec!["SIP/2.0 100 Trying"], "the INVITE's, at 200 ms");
    assert_eq!(layer.len(), 1, "the INFO ended after 64*T1");
    layer.handle_timeout(t0 + server::INVITE_ANSWER_LIMIT);
    let (sent, _) = drain(&mut layer);
    assert_eq!(sent, vec!["SIP/2.0 500 Server Internal Error"]);
    // Then the usual non-2xx life: ACK or Timer H.
    layer.handle_timeout(t0 + server::INVITE_ANSWER_LIMIT + Duration::from_secs(40));
    assert!(layer.is_empty());
}

/// `abandon` answers a pending INVITE for an owner that is gone; its 500
/// carries a To tag like any final response.
#[test]
fn abandoned_invite_is_answered_500_with_a_tag() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    let tx = new_request_tx(&mut layer, request("INVITE", "z9hG4bKab", 1), TCP, t0);
    drain(&mut layer);
    layer.abandon(tx, t0);
    let transmit = layer.poll_transmit().unwrap();
    let SipMessage::Response(response) = parse_message(&transmit.bytes).unwrap() else {
        panic!("not a response")
    };
    assert_eq!(response.status, 500);
    assert!(response.to().unwrap().tag().is_some());
}

/// A ringing INVITE is not ended by Timer B; a CANCEL gives it 64*T1 for
/// its final response.
#[test]
fn ringing_client_invite_lives_until_cancelled() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    let invite = request("INVITE", "z9hG4bKring", 1);
    layer.send_request(invite.clone(), UDP, t0);
    drain(&mut layer);
    let ringing = crate::sip::response::response_for(&invite, 180, "Ringing", Some("r"));
    layer.handle_input(SipMessage::Response(ringing), UDP, t0);
    drain(&mut layer);
    let (_, events) = run_until(&mut layer, t0, Duration::from_secs(120));
    assert!(
        events.is_empty(),
        "still ringing after 2 minutes: {events:?}"
    );
    assert_eq!(layer.len(), 1);
    let mut cancel = request("CANCEL", "z9hG4bKring", 1);
    cancel.headers.set("CSeq", "1 CANCEL");
    let at = t0 + Duration::from_secs(120);
    layer.send_request(cancel, UDP, at);
    drain(&mut layer);
    let (_, events) = run_until(&mut layer, at, Duration::from_secs(40));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, TransactionEvent::Timeout { .. }))
            .count(),
        2,
        "both the CANCEL and the INVITE time out without answers"
    );
    assert!(layer.is_empty());
}

/// The heap never walks: ten thousand transactions, each with its own
/// timers, fire in order and leave nothing behind.
#[test]
fn many_transactions_fire_in_order_and_drain() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    for n in 0..10_000u32 {
        let at = t0 + Duration::from_millis(n as u64);
        let bye = request("BYE", &format!("z9hG4bKm{n}"), n + 2);
        let tx = new_request_tx(&mut layer, bye.clone(), UDP, at);
        layer.send_response(
            tx,
            crate::sip::response::response_for(&bye, 200, "OK", None),
            at,
        );
    }
    drain(&mut layer);
    assert_eq!(layer.len(), 10_000);
    let mut last = t0;
    while let Some(next) = layer.poll_timeout() {
        assert!(next >= last);
        last = next;
        layer.handle_timeout(next);
    }
    assert!(layer.is_empty());
    assert_eq!(layer.scheduled(), 0);
}

/// What the maps and the heap hold room for, in entries.
fn capacity(layer: &TransactionLayer) -> usize {
    layer.servers.capacity()
        + layer.server_keys.capacity()
        + layer.accepted.capacity()
        + layer.clients.capacity()
        + layer.client_keys.capacity()
        + layer.deadlines.capacity()
}

/// After a burst the maps give their memory back, even when the last
/// deadlines left in the heap are stale ones (2xx retransmissions an ACK
/// stopped) that no timeout comes for.
#[test]
fn a_burst_gives_its_room_back() {
    let mut layer = TransactionLayer::new(Timers::default());
    let t0 = Instant::now();
    for n in 0..5_000u32 {
        let at = t0 + Duration::from_micros(n as u64 * 250);
        let invite = request("INVITE", &format!("z9hG4bKi{n}"), 2 * n + 1);
        let tx = new_request_tx(&mut layer, invite.clone(), UDP, at);
        let ok = crate::sip::response::response_for(&invite, 200, "OK", Some("t"));
        layer.send_response(tx, ok, at);
        let ack = request("ACK", &format!("z9hG4bKa{n}"), 2 * n + 1);
        layer.handle_input(SipMessage::Request(ack), UDP, at);
        drain(&mut layer);
        let bye = request("BYE", &format!("z9hG4bKb{n}"), 2 * n + 2);
        let tx = new_request_tx(&mut layer, bye.clone(), UDP, at);
        let ok = crate::sip::response::response_for(&bye, 200, "OK", None);
        layer.send_response(tx, ok, at);
        drain(&mut layer);
    }
    let burst = capacity(&layer);
    assert!(burst > 10_000, "the burst grew the maps: {burst}");
    while let Some(next) = layer.poll_timeout() {
        layer.handle_timeout(next);
        drain(&mut layer);
    }
    assert!(layer.is_empty());
    let after = capacity(&layer);
    assert!(
        after <= 64,
        "{after} entries of room kept of the {burst} the burst needed"
    );
}

/// The socket tasks may refuse a new INVITE from its bytes only while no
/// INVITE with its Call-ID waits for a final answer: held from the INVITE
/// until the final response (provisional ones do not count), and released
/// by a transaction that ends unanswered too.
#[test]
fn an_invite_holds_its_call_id_until_answered_finally() {
    let pending = Arc::new(PendingInvites::default());
    let mut layer = TransactionLayer::new(Timers::default()).with_pending_invites(pending.clone());
    let t0 = Instant::now();
    let invite = request("INVITE", "z9hG4bKheld", 1);
    let tx = new_request_tx(&mut layer, invite.clone(), UDP, t0);
    assert!(pending.may_hold("call-1"));
    let ringing = crate::sip::response::response_for(&invite, 180, "Ringing", Some("t"));
    layer.send_response(tx, ringing, t0);
    assert!(
        pending.may_hold("call-1"),
        "a provisional answer is not final"
    );
    let ok = crate::sip::response::response_for(&invite, 200, "OK", Some("t"));
    layer.send_response(tx, ok, t0);
    assert!(!pending.may_hold("call-1"));
    // A second INVITE of the call, never answered: the first one's end
    // (Timer L, 32 s, no ACK came) must not let go of it.
    let again = request("INVITE", "z9hG4bKother", 2);
    new_request_tx(&mut layer, again, UDP, t0);
    run_until(&mut layer, t0, Duration::from_secs(40));
    assert!(pending.may_hold("call-1"), "released twice");
    // Nobody answers it: the transaction gives up (500) and lets go.
    run_until(&mut layer, t0, Duration::from_secs(700));
    assert!(layer.is_empty());
    assert!(!pending.may_hold("call-1"));

    // A non-INVITE holds nothing.
    new_request_tx(&mut layer, request("OPTIONS", "z9hG4bKopt", 3), UDP, t0);
    assert!(!pending.may_hold("call-1"));
}
