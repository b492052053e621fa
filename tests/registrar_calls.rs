//! The registrar on the real binary: digest REGISTER (MD5 by sipp, SHA-256
//! and MD5 by a test phone of our own), the registrar's rules, throttling,
//! `/v1/users`, NAT'd bindings called at their source, and calls that
//! must authenticate.

mod common;

use std::time::Duration;

use common::api::{api_addr, http_get, sample};
use common::gateway::{config_with, GatewayProcess};
use common::raw_sip::{header, status, RawSip};
use common::registering::Phone;
use common::sipp::{self, SipTransport, G711_OFFER};

fn config(extra: &str) -> String {
    config_with(&format!(
        r#"
[api]
listen = "127.0.0.1:0"

[registrar]
max_failures = 5
{extra}

[[users]]
username = "alice"
password = "wonderland"
flow = "echo"

[[users]]
username = "nat"
password = "behind"

[[trunks]]
name = "loopback"
allow = ["127.0.0.1"]
routes = [
  {{ pattern = '^nat$', user = "nat" }},
  {{ pattern = '.*', flow = "echo" }},
]

[[flows]]
name = "echo"
bot = {{ kind = "echo" }}
"#
    ))
}

fn contact(phone: &Phone, tag: &str) -> String {
    format!("<sip:{}@{};line={tag}>", phone.user, phone.sip.sent_by())
}

#[test]
fn digest_registration_follows_the_registrars_rules() {
    let gateway = GatewayProcess::start("registrar-rules", &config(""));
    let api = api_addr(&gateway);
    let mut alice = Phone::new(gateway.udp, "alice", "wonderland");

    // Unauthenticated: challenged with MD5 (the default) only.
    let text = alice.sip.request(
        "REGISTER",
        "alice",
        "bare",
        1,
        "Contact: <sip:alice@127.0.0.1:9>\r\n",
        "",
    );
    alice.sip.send(&text);
    let challenge = alice
        .sip
        .wait_for(|t| status(t) == Some(401), Duration::from_secs(3))
        .expect("401");
    let www: Vec<&str> = challenge
        .lines()
        .filter(|l| l.starts_with("WWW-Authenticate"))
        .collect();
    assert_eq!(www.len(), 1, "{challenge}");
    assert!(www[0].contains("algorithm=MD5") && www[0].contains("qop=\"auth\""));

    // The right password: 200 with the granted expiry.
    let line = contact(&alice, "a");
    let ok = alice.register(std::slice::from_ref(&line), Some(600), "MD5");
    assert_eq!(status(&ok), Some(200), "{ok}");
    assert!(
        ok.contains(";expires=600") || ok.contains(";expires=599"),
        "{ok}"
    );
    let (code, users) = http_get(api, "/v1/users");
    assert_eq!(code, 200);
    let users: serde_json::Value = serde_json::from_str(&users).unwrap();
    let alice_entry = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "alice")
        .unwrap();
    let contacts = alice_entry["contacts"].as_array().unwrap();
    assert_eq!(contacts.len(), 1, "{users}");
    assert_eq!(contacts[0]["source"], alice.sip.local().to_string());
    assert_eq!(contacts[0]["transport"], "udp");
    assert_eq!(contacts[0]["user_agent"], "test-phone/1.0");
    assert!(contacts[0]["expires_in"].as_u64().unwrap() > 590);

    // The same Authorization again is a replay: challenged, not accepted.
    let replayed = alice.last_authorization.clone().unwrap();
    let again = alice.register_with(std::slice::from_ref(&line), Some(600), &replayed);
    assert_eq!(status(&again), Some(401), "{again}");

    // Too brief: 423 with Min-Expires; too long: clamped to the maximum.
    let brief = alice.register(std::slice::from_ref(&line), Some(30), "MD5");
    assert_eq!(status(&brief), Some(423), "{brief}");
    assert_eq!(header(&brief, "Min-Expires"), Some("60"));
    let long = alice.register(std::slice::from_ref(&line), Some(86_400), "MD5");
    assert_eq!(status(&long), Some(200));
    assert!(
        long.contains(";expires=3600") || long.contains(";expires=3599"),
        "{long}"
    );

    // Ten contacts fit; the eleventh is refused with the reason.
    let lines: Vec<String> = (0..10).map(|n| contact(&alice, &format!("c{n}"))).collect();
    let ten = alice.register(&lines[1..], Some(600), "MD5");
    assert_eq!(status(&ten), Some(200), "{ten}");
    assert_eq!(
        ten.lines().filter(|l| l.starts_with("Contact:")).count(),
        10
    );
    // The bindings gauge follows at once, not at the next sweep.
    let (_, metrics) = http_get(api, "/metrics");
    assert_eq!(
        sample(&metrics, "switchboard_registrar_bindings"),
        Some(10.0),
        "{metrics}"
    );
    let eleventh = alice.register(&[contact(&alice, "c10")], Some(600), "MD5");
    assert_eq!(status(&eleventh), Some(403), "{eleventh}");
    assert!(eleventh
        .lines()
        .next()
        .unwrap()
        .contains("Too Many Contacts (at most 10)"));

    // Un-REGISTER: Contact * with Expires 0 empties the AOR.
    let gone = alice.register(&["*".to_string()], Some(0), "MD5");
    assert_eq!(status(&gone), Some(200), "{gone}");
    assert!(!gone.contains("Contact:"));
    let (_, metrics) = http_get(api, "/metrics");
    assert_eq!(
        sample(&metrics, "switchboard_registrar_bindings"),
        Some(0.0),
        "{metrics}"
    );
    let (_, users) = http_get(api, "/v1/users");
    assert!(!users.contains("test-phone"), "{users}");

    // A wrong password is challenged again, then the source is refused:
    // five failures a minute (the replay above was the first).
    let mut mallory = Phone::new(gateway.udp, "alice", "guess");
    for _ in 0..4 {
        let response = mallory.register(&[contact(&mallory, "m")], Some(600), "MD5");
        assert_eq!(status(&response), Some(401), "{response}");
    }
    let refused = mallory.register(&[contact(&mallory, "m")], Some(600), "MD5");
    assert_eq!(status(&refused), Some(403), "{refused}");
    gateway.wait_for_log(
        &["authentication failures: refusing"],
        Duration::from_secs(2),
    );
    let (_, metrics) = http_get(api, "/metrics");
    let wrong = sample(
        &metrics,
        "switchboard_auth_failures_total{reason=\"wrong password\"}",
    );
    assert!(wrong.is_some_and(|n| n >= 4.0), "{metrics}");
    gateway.assert_no_panic();
}

#[test]
fn sha256_phone_registers_when_sha256_is_offered_first() {
    let gateway = GatewayProcess::start(
        "registrar-sha256",
        &config("algorithms = [\"SHA-256\", \"MD5\"]\ndomains = [\"127.0.0.1\"]"),
    );
    let mut alice = Phone::new(gateway.udp, "alice", "wonderland");
    alice.domain = "127.0.0.1".into();
    let text = alice.sip.request("REGISTER", "alice", "probe", 1, "", "");
    alice.sip.send(&text);
    let challenge = alice
        .sip
        .wait_for(|t| status(t) == Some(401), Duration::from_secs(3))
        .unwrap();
    let algorithms: Vec<&str> = challenge
        .lines()
        .filter(|l| l.starts_with("WWW-Authenticate"))
        .map(|l| {
            if l.contains("SHA-256") {
                "SHA-256"
            } else {
                "MD5"
            }
        })
        .collect();
    assert_eq!(
        algorithms,
        vec!["SHA-256", "MD5"],
        "one challenge per algorithm, in order"
    );
    let ok = alice.register(&[contact(&alice, "s")], Some(300), "SHA-256");
    assert_eq!(status(&ok), Some(200), "{ok}");
    assert!(alice
        .last_authorization
        .as_deref()
        .unwrap()
        .contains("algorithm=SHA-256"));
    // A domain we do not serve.
    let mut stranger = Phone::new(gateway.udp, "alice", "wonderland");
    stranger.domain = "elsewhere.example".into();
    let refused = stranger.register(&[contact(&stranger, "x")], Some(300), "MD5");
    assert_eq!(status(&refused), Some(404), "{refused}");
}

#[test]
fn sipp_registers_with_md5_digest() {
    let gateway = GatewayProcess::start("registrar-sipp", &config(""));
    let scenario = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register">
  <send retrans="500">
    <![CDATA[
      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:alice@[remote_ip]:[remote_port]>;tag=[pid]r[call_number]
      To: <sip:alice@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:alice@[local_ip]:[local_port]>
      Expires: 600
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="401" auth="true"/>
  <send retrans="500">
    <![CDATA[
      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:alice@[remote_ip]:[remote_port]>;tag=[pid]r[call_number]
      To: <sip:alice@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 2 REGISTER
      Contact: <sip:alice@[local_ip]:[local_port]>
      Expires: 600
      [authentication username=alice password=wonderland]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200">
    <action><ereg regexp="expires=(600|599)" search_in="msg" check_it="true" assign_to="granted"/><log message="[$granted]"/></action>
  </recv>
</scenario>
"#;
    let output = sipp::run(
        &gateway.dir,
        "register",
        scenario,
        gateway.udp,
        SipTransport::Udp,
        "127.0.0.1",
    );
    sipp::assert_success(&output, &gateway.dir);
}

/// A phone behind NAT registers a private Contact; a call for it is sent
/// where its REGISTER came from.
#[test]
fn nat_binding_is_called_at_its_source_address() {
    let gateway = GatewayProcess::start("registrar-nat", &config(""));
    let mut phone = Phone::new(gateway.udp, "nat", "behind");
    let ok = phone.register(&["<sip:nat@10.0.0.5:5060>".to_string()], Some(600), "MD5");
    assert_eq!(status(&ok), Some(200), "{ok}");
    // A trunk call routed to the user `nat`.
    let caller = RawSip::new(gateway.udp);
    let sdp = sipp::sdp_offer(4000, G711_OFFER);
    let invite = caller.request(
        "INVITE",
        "nat",
        "to-nat",
        1,
        "Content-Type: application/sdp\r\n",
        &sdp,
    );
    caller.send(&invite);
    let reached = phone
        .sip
        .wait_for(|t| t.starts_with("INVITE "), Duration::from_secs(5))
        .expect("the INVITE reaches the phone at its source address");
    assert!(
        reached.starts_with("INVITE sip:nat@10.0.0.5:5060 SIP/2.0"),
        "{reached}"
    );
    gateway.wait_for_log(
        &["transfer: INVITE sent", &phone.sip.local().to_string()],
        Duration::from_secs(2),
    );
}

/// An INVITE from a source in no trunk must authenticate; it never
/// reaches a flow on its own.
#[test]
fn strangers_must_authenticate_to_call() {
    let gateway = GatewayProcess::start(
        "registrar-stranger",
        &config("").replace("allow = [\"127.0.0.1\"]", "allow = [\"192.0.2.1\"]"),
    );
    let stranger = RawSip::new(gateway.udp);
    let sdp = sipp::sdp_offer(4000, G711_OFFER);
    let invite = stranger.request(
        "INVITE",
        "100",
        "stranger",
        1,
        "Content-Type: application/sdp\r\n",
        &sdp,
    );
    stranger.send(&invite);
    let response = stranger
        .wait_for(
            |t| status(t).is_some_and(|s| s >= 200),
            Duration::from_secs(3),
        )
        .unwrap();
    assert_eq!(status(&response), Some(407), "{response}");
    assert!(header(&response, "Proxy-Authenticate").is_some());
    assert!(!gateway.logs().iter().any(|l| l.contains("incoming call")));
}

/// Guessing a user's password with INVITEs: each wrong guess is challenged
/// again until the source is refused; the refusals that follow are counted
/// and answered 403, with one log line for the whole run rather than one per
/// attempt.
#[test]
fn invite_password_guessing_is_refused_with_one_log_line() {
    let gateway = GatewayProcess::start(
        "registrar-invite-guessing",
        &config("").replace("allow = [\"127.0.0.1\"]", "allow = [\"192.0.2.1\"]"),
    );
    let api = api_addr(&gateway);
    let guesser = RawSip::new(gateway.udp);
    let mut guess = Phone::new(gateway.udp, "alice", "guess");
    let sdp = sipp::sdp_offer(4000, G711_OFFER);
    let final_for = |call_id: &str| {
        guesser
            .wait_for(
                |t| status(t).is_some_and(|s| s >= 200) && header(t, "Call-ID") == Some(call_id),
                Duration::from_secs(3),
            )
            .unwrap_or_else(|| panic!("no final response for {call_id}"))
    };
    let mut statuses = Vec::new();
    for attempt in 0..30 {
        let call_id = format!("guess-{attempt}");
        let invite = guesser.request(
            "INVITE",
            "100",
            &call_id,
            1,
            "Content-Type: application/sdp\r\n",
            &sdp,
        );
        guesser.send(&invite);
        let challenge = final_for(&call_id);
        if status(&challenge) != Some(407) {
            statuses.push(status(&challenge));
            continue;
        }
        let authorization = guess.answer(&challenge, "MD5", "INVITE");
        let invite = guesser.request(
            "INVITE",
            "100",
            &call_id,
            2,
            &format!("Proxy-Authorization: {authorization}\r\nContent-Type: application/sdp\r\n"),
            &sdp,
        );
        guesser.send(&invite);
        statuses.push(status(&final_for(&call_id)));
    }
    // max_failures = 5: five guesses are challenged again, everything
    // after them is refused.
    assert_eq!(statuses[..5], [Some(407); 5], "{statuses:?}");
    assert!(
        statuses[5..].iter().all(|s| *s == Some(403)),
        "{statuses:?}"
    );
    gateway.wait_for_log(
        &["authentication failures: refusing"],
        Duration::from_secs(2),
    );
    let logs = gateway.logs();
    // One line when the source crossed the limit, one when the username
    // did; the refusals after them log at debug only.
    let refusing: Vec<_> = logs
        .iter()
        .filter(|l| l.contains("authentication failures: refusing"))
        .collect();
    assert_eq!(refusing.len(), 2, "{refusing:#?}");
    let loud = logs
        .iter()
        .filter(|l| l.contains("too many failed") && !l.contains("DEBUG"))
        .count();
    assert_eq!(loud, 0, "{logs:#?}");
    assert!(!logs.iter().any(|l| l.contains("incoming call")));
    let (_, metrics) = http_get(api, "/metrics");
    let throttled = sample(
        &metrics,
        "switchboard_auth_failures_total{reason=\"throttled\"}",
    );
    assert!(throttled.is_some_and(|n| n >= 25.0), "{metrics}");
    gateway.assert_no_panic();
}

/// The carrier `acme` calls with the right password, and gets in.
fn carrier_logs_in(gateway: &GatewayProcess, peer: &common::rtp_peer::RtpPeer) {
    let scenario = sipp::caller_with_digest(
        "100",
        &sipp::sdp_offer(peer.port(), G711_OFFER),
        ("acme", "trunk-secret"),
    );
    let output = sipp::run(
        &gateway.dir,
        "carrier",
        &scenario,
        gateway.udp,
        SipTransport::Udp,
        "127.0.0.1",
    );
    sipp::assert_success(&output, &gateway.dir);
    gateway.wait_for_log(&["incoming call", "source=carrier"], Duration::from_secs(2));
}

/// A carrier trunk with credentials and no address list: its calls pass
/// digest and go by the trunk's routes; a wrong password never gets in.
#[test]
fn trunk_with_credentials_and_no_allow_list() {
    let gateway = GatewayProcess::start(
        "registrar-trunk-auth",
        &config("").replace(
            "[[trunks]]\nname = \"loopback\"\nallow = [\"127.0.0.1\"]",
            "[[trunks]]\nname = \"carrier\"\nauth = { username = \"acme\", password = \"trunk-secret\" }",
        ),
    );
    let peer = common::rtp_peer::RtpPeer::bind();
    carrier_logs_in(&gateway, &peer);
    let wrong = sipp::caller_with_digest(
        "100",
        &sipp::sdp_offer(peer.port(), G711_OFFER),
        ("acme", "guess"),
    );
    let output = sipp::run_with(
        &gateway.dir,
        "intruder",
        &wrong,
        gateway.udp,
        SipTransport::Udp,
        "127.0.0.1",
        &["-timeout", "5s"],
    );
    assert!(!output.status.success(), "a wrong trunk password got in");
    assert_eq!(
        gateway
            .logs()
            .iter()
            .filter(|l| l.contains("incoming call"))
            .count(),
        1
    );
}

/// A trunk with both an address list and a login: calls from its address
/// must still pass digest (407 first); with the password they route by the
/// trunk's rules.
#[test]
fn trunk_with_an_address_list_and_credentials_needs_both() {
    let gateway = GatewayProcess::start(
        "registrar-trunk-both",
        &config("").replace(
            "[[trunks]]\nname = \"loopback\"\nallow = [\"127.0.0.1\"]",
            "[[trunks]]\nname = \"carrier\"\nallow = [\"127.0.0.1\"]\nauth = { username = \"acme\", password = \"trunk-secret\" }",
        ),
    );
    let peer = common::rtp_peer::RtpPeer::bind();
    let unauthenticated = sipp::rejected("100", &sipp::sdp_offer(peer.port(), G711_OFFER), 407);
    let output = sipp::run(
        &gateway.dir,
        "no-login",
        &unauthenticated,
        gateway.udp,
        SipTransport::Udp,
        "127.0.0.1",
    );
    sipp::assert_success(&output, &gateway.dir);
    carrier_logs_in(&gateway, &peer);
    let calls = gateway
        .logs()
        .iter()
        .filter(|l| l.contains("incoming call"))
        .count();
    assert_eq!(calls, 1, "only the authenticated call got in");
    gateway.assert_no_panic();
}

#[test]
fn a_reload_adds_changes_and_removes_users() {
    let without = config_with(
        r#"
[api]
listen = "127.0.0.1:0"

[[trunks]]
name = "loopback"
allow = ["127.0.0.1"]
routes = [{ pattern = '.*', flow = "echo" }]

[[flows]]
name = "echo"
bot = { kind = "echo" }
"#,
    );
    let with = |password: &str| {
        format!("{without}\n[[users]]\nusername = \"alice\"\npassword = \"{password}\"\nflow = \"echo\"\n")
    };
    let gateway = GatewayProcess::start("registrar-reload", &without);
    let api = api_addr(&gateway);
    let path = gateway.dir.join("switchboard.toml");
    let reload = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let (code, body) = common::api::http_post(api, "/v1/reload", "");
        assert_eq!(code, 200, "{body}");
    };
    let contact = |phone: &Phone| format!("<sip:alice@{}>", phone.sip.sent_by());

    let mut alice = Phone::new(gateway.udp, "alice", "wonderland");
    let answer = alice.register(&[contact(&alice)], Some(300), "MD5");
    assert_eq!(
        status(&answer),
        Some(405),
        "no users, no registrar: {answer}"
    );

    reload(&with("wonderland"));
    let answer = alice.register(&[contact(&alice)], Some(300), "MD5");
    assert_eq!(status(&answer), Some(200), "{answer}");
    let (_, users) = http_get(api, "/v1/users");
    assert!(users.contains("\"alice\""), "{users}");

    // A new password: the old one no longer registers.
    reload(&with("looking-glass"));
    let answer = alice.register(&[contact(&alice)], Some(300), "MD5");
    assert_eq!(status(&answer), Some(401), "{answer}");
    let mut changed = Phone::new(gateway.udp, "alice", "looking-glass");
    let answer = changed.register(&[contact(&changed)], Some(300), "MD5");
    assert_eq!(status(&answer), Some(200), "{answer}");

    reload(&without);
    let answer = changed.register(&[contact(&changed)], Some(300), "MD5");
    assert_eq!(status(&answer), Some(405), "{answer}");
    gateway.assert_no_panic();
}

/// A phone's 486 Busy Here to `invite`.
fn busy_here(invite: &str) -> String {
    let copy = |name: &str| format!("{name}: {}\r\n", header(invite, name).unwrap());
    format!(
        "SIP/2.0 486 Busy Here\r\n{}{}To: {};tag=phone\r\n{}{}Content-Length: 0\r\n\r\n",
        copy("Via"),
        copy("From"),
        header(invite, "To").unwrap(),
        copy("Call-ID"),
        copy("CSeq"),
    )
}

/// One SIP message from a stream: headers, then Content-Length bytes.
fn read_message(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("a SIP message");
        bytes.push(byte[0]);
        // Keep-alive CRLFs between messages are not part of one.
        if bytes == b"\r\n" {
            bytes.clear();
        }
    }
    let head = String::from_utf8_lossy(&bytes).to_string();
    let length: usize = header(&head, "Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

/// A phone registered over TCP, and calls to a user:
/// - nobody registered: the caller gets 480;
/// - the grant is shorter than the TCP idle timeout, so the phone's refresh
///   keeps the connection open; its CRLF keep-alive gets a CRLF back;
/// - a call reaches the phone over that same connection, and its 486 reaches
///   the caller.
#[test]
fn tcp_registration_is_called_over_its_connection() {
    use std::io::Write;
    let gateway = GatewayProcess::start("registrar-tcp", &config(""));
    let caller = RawSip::new(gateway.udp);
    let sdp = sipp::sdp_offer(4000, G711_OFFER);
    let call_nat = |call_id: &str| {
        let invite = caller.request(
            "INVITE",
            "nat",
            call_id,
            1,
            "Content-Type: application/sdp\r\n",
            &sdp,
        );
        caller.send(&invite);
    };
    let final_for = |call_id: &str| {
        caller
            .wait_for(
                |t| status(t).is_some_and(|s| s >= 200) && header(t, "Call-ID") == Some(call_id),
                Duration::from_secs(5),
            )
            .unwrap_or_else(|| panic!("no final response for {call_id}"))
    };
    call_nat("nobody-home");
    assert_eq!(status(&final_for("nobody-home")), Some(480));

    let mut stream = std::net::TcpStream::connect(gateway.tcp).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let local = stream.local_addr().unwrap();
    let register = |cseq: u32, authorization: &str| {
        format!(
            "REGISTER sip:{gw} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKtcpreg{cseq}\r\nFrom: <sip:nat@{gw}>;tag=t{cseq}\r\nTo: <sip:nat@{gw}>\r\nCall-ID: tcp-reg\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:nat@{local};transport=tcp>\r\nExpires: 3600\r\nMax-Forwards: 70\r\n{authorization}Content-Length: 0\r\n\r\n",
            gw = gateway.tcp
        )
    };
    stream.write_all(register(1, "").as_bytes()).unwrap();
    let challenge = read_message(&mut stream);
    assert_eq!(status(&challenge), Some(401), "{challenge}");
    let mut phone = Phone::new(gateway.tcp, "nat", "behind");
    let authorization = phone.answer(&challenge, "MD5", "REGISTER");
    stream
        .write_all(register(2, &format!("Authorization: {authorization}\r\n")).as_bytes())
        .unwrap();
    let ok = read_message(&mut stream);
    assert_eq!(status(&ok), Some(200), "{ok}");
    // limits.tcp_idle_timeout_secs is 300 by default: 90 % of it.
    assert!(
        header(&ok, "Contact").is_some_and(|c| c.ends_with(";expires=270")),
        "{ok}"
    );

    stream.write_all(b"\r\n\r\n").unwrap();
    let mut pong = [0u8; 2];
    std::io::Read::read_exact(&mut stream, &mut pong).unwrap();
    assert_eq!(&pong, b"\r\n");

    call_nat("to-tcp-phone");
    let invite = read_message(&mut stream);
    assert!(
        invite.starts_with(&format!("INVITE sip:nat@{local};transport=tcp SIP/2.0")),
        "{invite}"
    );
    let busy = busy_here(&invite);
    stream.write_all(busy.as_bytes()).unwrap();
    let ack = read_message(&mut stream);
    assert!(ack.starts_with("ACK "), "{ack}");
    assert_eq!(status(&final_for("to-tcp-phone")), Some(486));
    gateway.assert_no_panic();
}

/// A bot's `<Dial><Sip>sip:nat@GATEWAY</Sip>` names one of our users (the
/// gateway's own address, no `[registrar] domains`): the user's phone
/// rings, and its 486 reaches the bot as a busy dial. A `nat` at another
/// address is somebody else: our user's phone does not ring.
#[test]
fn a_bot_dials_a_registered_user() {
    use common::twilio_bot::{BotCommand, TwilioBot};
    let bot = TwilioBot::start();
    let gateway = GatewayProcess::start(
        "registrar-bot-dials-user",
        &config(&format!(
            "[dial]\nallow = ['^sip:nat@']\n\n[[flows]]\nname = \"bot\"\nbot = {{ kind = \"twilio_stream\", url = \"ws://{}/media\" }}\n",
            bot.addr
        ))
        .replace("{ pattern = '.*', flow = \"echo\" }", "{ pattern = '.*', flow = \"bot\" }"),
    );
    let mut phone = Phone::new(gateway.udp, "nat", "behind");
    let contact = contact(&phone, "n");
    let ok = phone.register(&[contact], Some(600), "MD5");
    assert_eq!(status(&ok), Some(200), "{ok}");

    let caller_rtp = common::rtp_peer::RtpPeer::bind();
    let scenario = sipp::gateway_hangs_up(
        "+12125550100",
        &sipp::sdp_offer(caller_rtp.port(), G711_OFFER),
    );
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    bot.wait_event("start", |_| true, Duration::from_secs(10));
    let dial = |uri: &str| {
        let twiml = format!("<Response><Dial><Sip>{uri}</Sip></Dial></Response>");
        bot.send(BotCommand::Json(
            serde_json::json!({"event": "action", "name": "twiml", "body": twiml}),
        ));
    };

    // Another PBX's nat (an IPv6 loopback we do not listen on) is not ours.
    dial("sip:nat@[::1]:5999");
    let (_, result) = bot.wait_event(
        "action_result",
        |v| v["name"] == "dial",
        Duration::from_secs(10),
    );
    assert_eq!(result["ok"], false, "{result}");
    assert!(
        phone
            .sip
            .wait_for(|t| t.starts_with("INVITE "), Duration::from_millis(300))
            .is_none(),
        "our nat's phone rang for somebody else's nat"
    );

    dial(&format!("sip:nat@{}", gateway.udp));
    let invite = phone
        .sip
        .wait_for(|t| t.starts_with("INVITE "), Duration::from_secs(5))
        .expect("the user's phone rings");
    let busy = busy_here(&invite);
    phone.sip.send(&busy);
    let (_, result) = bot.wait_event(
        "action_result",
        |v| v["name"] == "dial" && v["message"].as_str().is_some_and(|m| m.contains("busy")),
        Duration::from_secs(5),
    );
    assert_eq!(result["ok"], false, "{result}");
    bot.send(BotCommand::Json(
        serde_json::json!({"event": "action", "name": "hangup"}),
    ));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.assert_no_panic();
}
