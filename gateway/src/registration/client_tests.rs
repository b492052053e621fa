//! The registration client against a scripted registrar, with a fake clock.

use std::time::{Duration, Instant};

use super::*;
use crate::sip::framing::parse_message;
use crate::sip::message::SipMessage;
use crate::sip::response::response_for;

fn client(now: Instant) -> Client {
    Client::new(
        Settings {
            aor: SipUri::parse("sip:1001@pbx.test").unwrap(),
            registrar: SipUri::parse("sip:pbx.test").unwrap(),
            transport: Transport::Udp,
            auth_user: "1001".into(),
            password: "pw".into(),
            expires: 3600,
        },
        SipUri::parse("sip:sb-1001@127.0.0.1:5060").unwrap(),
        "127.0.0.1:5060".into(),
        now,
    )
}

/// Runs due timers and returns the REGISTERs sent (re-parsed) and the
/// status changes.
fn step(client: &mut Client, now: Instant) -> (Vec<Request>, Vec<(State, State)>) {
    client.handle_timeout(now);
    let mut registers = Vec::new();
    let mut changes = Vec::new();
    while let Some(output) = client.poll_output() {
        match output {
            Output::Register(request) => {
                let SipMessage::Request(parsed) = parse_message(&request.to_bytes()).unwrap()
                else {
                    unreachable!()
                };
                registers.push(parsed);
            }
            Output::Changed { previous, status } => changes.push((previous, status.state)),
            Output::KeepAlive => {}
        }
    }
    (registers, changes)
}

fn reply(request: &Request, status: u16, headers: &[(&str, &str)]) -> Response {
    let mut response = response_for(
        request,
        status,
        crate::sip::response::default_reason(status),
        Some("r"),
    );
    for (name, value) in headers {
        response.headers.push(name, value);
    }
    response
}

const CHALLENGE: &str = r#"Digest realm="pbx.test", nonce="n1", qop="auth", algorithm=MD5"#;

#[test]
fn registers_with_digest_and_refreshes_at_half_the_expiry() {
    let t0 = Instant::now();
    let mut client = client(t0);
    let (sent, _) = step(&mut client, t0);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].headers.get("Expires"), Some("3600"));
    assert!(sent[0].headers.get("Authorization").is_none());
    client.handle_response(
        &reply(&sent[0], 401, &[("WWW-Authenticate", CHALLENGE)]),
        t0,
    );
    let (sent, _) = step(&mut client, t0);
    let auth = sent[0].headers.get("Authorization").unwrap().to_string();
    let credentials = crate::sip::digest::Credentials::parse(&auth).unwrap();
    let ha1 = crate::sip::digest::Algorithm::Md5.hex("1001:pbx.test:pw");
    assert!(credentials.verify(&ha1, "REGISTER"));
    assert_eq!(sent[0].cseq().unwrap().0, 2, "a new CSeq for the retry");
    client.handle_response(
        &reply(
            &sent[0],
            200,
            &[("Contact", "<sip:sb-1001@127.0.0.1:5060>;expires=120")],
        ),
        t0,
    );
    let (_, changes) = step(&mut client, t0);
    assert_eq!(changes, vec![(State::InProgress, State::Successful)]);
    assert_eq!(client.status().granted_expires, Some(120));
    let keepalive = client.poll_timeout().unwrap() - t0;
    assert!(
        (Duration::from_secs(24)..=Duration::from_secs(30)).contains(&keepalive),
        "keep-alive first, within 24-30 s: {keepalive:?}"
    );
    let (sent, _) = step(&mut client, t0 + Duration::from_secs(47));
    assert!(sent.is_empty());
    let (sent, _) = step(&mut client, t0 + Duration::from_secs(60));
    assert_eq!(sent.len(), 1, "refresh between 48 s and 60 s of 120 s");
    let refresh =
        crate::sip::digest::Credentials::parse(sent[0].headers.get("Authorization").unwrap())
            .unwrap();
    assert_eq!(
        refresh.nonce_count(),
        Some(2),
        "the nonce is reused with the next count"
    );
}

#[test]
fn a_wrong_password_fails_with_the_registrars_answer() {
    let t0 = Instant::now();
    let mut client = client(t0);
    let (sent, _) = step(&mut client, t0);
    client.handle_response(
        &reply(&sent[0], 401, &[("WWW-Authenticate", CHALLENGE)]),
        t0,
    );
    let (sent, _) = step(&mut client, t0);
    client.handle_response(
        &reply(&sent[0], 401, &[("WWW-Authenticate", CHALLENGE)]),
        t0,
    );
    let (sent, changes) = step(&mut client, t0);
    assert!(sent.is_empty(), "no third attempt at once");
    assert_eq!(changes, vec![(State::InProgress, State::Failed)]);
    assert_eq!(
        (client.status().code, client.status().reason.as_str()),
        (401, "Unauthorized: the registrar refused our credentials")
    );
    let retry = client.poll_timeout().unwrap();
    assert!(retry >= t0 + BACKOFF_MIN && retry <= t0 + BACKOFF_MIN * 2);
}

#[test]
fn interval_too_brief_asks_again_with_min_expires() {
    let t0 = Instant::now();
    let mut client = client(t0);
    let (sent, _) = step(&mut client, t0);
    client.handle_response(&reply(&sent[0], 423, &[("Min-Expires", "7200")]), t0);
    let (sent, _) = step(&mut client, t0);
    assert_eq!(sent[0].headers.get("Expires"), Some("7200"));
    client.handle_response(&reply(&sent[0], 200, &[("Expires", "7200")]), t0);
    assert_eq!(client.status().state, State::Successful);
    assert_eq!(client.status().granted_expires, Some(7200));
}

#[test]
fn timeouts_back_off_exponentially_with_jitter_and_retry_after_is_obeyed() {
    let t0 = Instant::now();
    let mut client = client(t0);
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..10 {
        let (sent, _) = step(&mut client, now);
        assert_eq!(sent.len(), 1);
        client.handle_failure(sent[0].cseq().unwrap().0, false, now);
        let next = client.poll_timeout().unwrap();
        waits.push(next - now);
        now = next;
    }
    assert_eq!(client.status().state, State::Failed);
    assert_eq!(client.status().code, 408);
    assert!(waits.iter().all(|w| *w >= BACKOFF_MIN && *w <= BACKOFF_MAX));
    assert!(waits[9] > waits[0], "backs off: {waits:?}");
    // A 503 with Retry-After sets the next attempt exactly.
    let (sent, _) = step(&mut client, now);
    client.handle_response(&reply(&sent[0], 503, &[("Retry-After", "20")]), now);
    assert_eq!(client.poll_timeout(), Some(now + Duration::from_secs(20)));
    // Success resets the backoff.
    let (sent, _) = step(&mut client, now + Duration::from_secs(20));
    client.handle_response(&reply(&sent[0], 200, &[]), now + Duration::from_secs(20));
    assert_eq!(client.status().state, State::Successful);
}

/// The most attempts of `times` (ms after t0) that fall in one 100 ms slot.
fn busiest_slot(times: &[u64]) -> usize {
    let mut slots = std::collections::HashMap::new();
    for t in times {
        *slots.entry(t / 100).or_insert(0usize) += 1;
    }
    slots.into_values().max().unwrap_or(0)
}

/// A thousand registrations failing together do not retry together: not
/// the first retry, not the fourth, not after their shared TCP connection
/// drops, and their refreshes drift apart.
#[test]
fn retries_of_many_registrations_spread_out() {
    let t0 = Instant::now();
    let (mut first, mut fourth, mut reconnects, mut refreshes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..1000 {
        let mut udp = client(t0);
        let mut now = t0;
        for failure in 1..=4 {
            let (sent, _) = step(&mut udp, now);
            udp.handle_failure(sent[0].cseq().unwrap().0, true, now);
            now = udp.poll_timeout().unwrap();
            if failure == 1 {
                first.push((now - t0).as_millis() as u64);
            }
        }
        fourth.push((now - t0).as_millis() as u64);

        let mut tcp = client(t0);
        tcp.settings.transport = Transport::Tcp;
        let (sent, _) = step(&mut tcp, t0);
        tcp.handle_response(&reply(&sent[0], 200, &[("Expires", "3600")]), t0);
        refreshes.push((tcp.status().next_attempt.unwrap() - t0).as_millis() as u64);
        tcp.connection_lost(t0);
        reconnects.push((tcp.status().next_attempt.unwrap() - t0).as_millis() as u64);
    }
    // Evenly spread, 1000 attempts over 2 s put 50 in a 100 ms slot; over
    // 6 minutes, about 0.3. Allow twice the even share (and a floor).
    let first_peak = busiest_slot(&first);
    assert!(first_peak <= 100, "first retries: {first_peak} in 100 ms");
    let reconnect_peak = busiest_slot(&reconnects);
    assert!(
        reconnect_peak <= 100,
        "reconnects: {reconnect_peak} in 100 ms"
    );
    let fourth_peak = busiest_slot(&fourth);
    assert!(fourth_peak <= 15, "fourth retries: {fourth_peak} in 100 ms");
    let refresh_peak = busiest_slot(&refreshes);
    assert!(refresh_peak <= 10, "refreshes: {refresh_peak} in 100 ms");
    assert!(first.iter().all(|t| (2000..=4000).contains(t)), "{first:?}");
    assert!(reconnects.iter().all(|t| *t <= 2000));
    assert!(refreshes
        .iter()
        .all(|t| (1_440_000..=1_800_000).contains(t)));
}

#[test]
fn stop_unregisters_and_a_lost_tcp_connection_registers_again() {
    let t0 = Instant::now();
    let mut client = client(t0);
    client.settings.transport = Transport::Tcp;
    let (sent, _) = step(&mut client, t0);
    client.handle_response(&reply(&sent[0], 200, &[]), t0);
    let (_, changes) = step(&mut client, t0);
    assert_eq!(changes.len(), 1);
    client.connection_lost(t0 + Duration::from_secs(5));
    let (sent, changes) = step(&mut client, t0 + Duration::from_secs(7));
    assert_eq!(sent.len(), 1, "registers again within 2 s");
    assert_eq!(changes, vec![(State::Successful, State::InProgress)]);
    client.handle_response(&reply(&sent[0], 200, &[]), t0 + Duration::from_secs(7));
    client.stop(t0 + Duration::from_secs(6));
    let (sent, _) = step(&mut client, t0 + Duration::from_secs(6));
    assert_eq!(sent[0].headers.get("Expires"), Some("0"));
    assert!(sent[0]
        .headers
        .get("Contact")
        .unwrap()
        .ends_with(";expires=0"));
    assert!(!client.is_stopped());
    client.handle_response(&reply(&sent[0], 200, &[]), t0 + Duration::from_secs(6));
    assert!(client.is_stopped());
    assert_eq!(client.poll_timeout(), None);
}

#[test]
fn a_failed_registration_retries_soon_when_its_registrar_is_back() {
    let t0 = Instant::now();
    let mut client = client(t0);
    let mut now = t0;
    let mut failed_at = t0;
    for _ in 0..5 {
        let (sent, _) = step(&mut client, now);
        client.handle_failure(sent[0].cseq().unwrap().0, true, now);
        failed_at = now;
        now = client.poll_timeout().unwrap();
    }
    let soon = failed_at + Duration::from_millis(500);
    assert!(client.poll_timeout().unwrap() > soon);
    client.retry_soon(soon);
    assert_eq!(client.poll_timeout(), Some(soon));
    assert_eq!(client.status().next_attempt, Some(soon));
    // Later than what is planned, or registered: no change.
    client.retry_soon(soon + Duration::from_secs(3600));
    assert_eq!(client.poll_timeout(), Some(soon));
    let (sent, _) = step(&mut client, soon);
    client.handle_response(&reply(&sent[0], 200, &[("Expires", "3600")]), soon);
    let planned = client.poll_timeout();
    client.retry_soon(soon);
    assert_eq!(client.poll_timeout(), planned);
}
