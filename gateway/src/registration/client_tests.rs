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
    assert_eq!(
        client.poll_timeout(),
        Some(t0 + Duration::from_secs(30)),
        "keep-alive first"
    );
    let (sent, _) = step(&mut client, t0 + Duration::from_secs(59));
    assert!(sent.is_empty());
    let (sent, _) = step(&mut client, t0 + Duration::from_secs(60));
    assert_eq!(sent.len(), 1, "refresh at half of 120 s");
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

/// A thousand registrations failing together do not retry together.
#[test]
fn retries_of_many_registrations_spread_out() {
    let t0 = Instant::now();
    let mut retries = Vec::new();
    for _ in 0..1000 {
        let mut client = client(t0);
        let mut now = t0;
        for _ in 0..4 {
            let (sent, _) = step(&mut client, now);
            client.handle_failure(sent[0].cseq().unwrap().0, true, now);
            now = client.poll_timeout().unwrap();
        }
        retries.push((now - t0).as_millis() as u64);
    }
    retries.sort_unstable();
    retries.dedup();
    assert!(
        retries.len() > 900,
        "only {} distinct retry times",
        retries.len()
    );
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
    let (sent, changes) = step(&mut client, t0 + Duration::from_secs(5));
    assert_eq!(sent.len(), 1, "registers again at once");
    assert_eq!(changes, vec![(State::Successful, State::InProgress)]);
    client.handle_response(&reply(&sent[0], 200, &[]), t0 + Duration::from_secs(5));
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
