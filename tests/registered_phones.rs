//! Real softphones (baresip) registered to the gateway: one calls a flow,
//! two share a user and ring together when that user is called.

mod common;

use std::time::Duration;

use common::api::{api_addr, http_get};
use common::audio::best_correlation;
use common::baresip::{peak_correlation, voice_like, Baresip, Wav, PCMU};
use common::gateway::{config_with, GatewayProcess};
use common::linphone::Linphone;
use common::rtp_peer::RtpPeer;
use common::sipp::{self, SipTransport, G711_OFFER};

fn config() -> String {
    config_with(
        r#"
[api]
listen = "127.0.0.1:0"

[[users]]
username = "alice"
password = "wonderland"
flow = "echo"

[[users]]
username = "bob"
password = "builder"

[[flows]]
name = "echo"
bot = { kind = "echo", delay_ms = 200, sample_rate = 16000 }
"#,
    )
}

fn microphone(gateway: &GatewayProcess, name: &str) -> std::path::PathBuf {
    let path = gateway.dir.join(format!("{name}.wav"));
    Wav {
        rate: 8000,
        channels: 1,
        samples: voice_like(8000, 12 * 8000),
    }
    .write(&path);
    path
}

/// Where the echo is checked: after the adaptive jitter buffer has dropped
/// the one frame that takes it from its 40 ms start to 20 ms on loopback
/// (about a second in), which would split a window holding it.
const AFTER_JITTER_SETTLES: usize = 12_000;

/// alice registers, calls the echo flow (her own flow) and hears herself.
#[test]
fn registered_baresip_calls_its_flow() {
    let gateway = GatewayProcess::start("phones-alice", &config());
    let mic = microphone(&gateway, "alice-mic");
    let target = format!("sip:100@{}", gateway.udp);
    let mut alice = Baresip::registered(
        &gateway.dir,
        "alice",
        &PCMU,
        &mic,
        gateway.udp,
        "alice",
        "wonderland",
        "manual",
        Some(&target),
        6,
    );
    std::thread::sleep(Duration::from_secs(2));
    let (_, users) = http_get(api_addr(&gateway), "/v1/users");
    assert!(
        users.contains("baresip"),
        "alice's baresip is registered: {users}"
    );
    let status = alice.wait(Duration::from_secs(20));
    let log = alice.log();
    assert!(status.success(), "{log}");
    assert!(log.contains("Call established"), "{log}");
    let heard = alice.recording("dec").mono();
    let sent = voice_like(8000, 12 * 8000);
    let (score, delay) = peak_correlation(&sent, &heard, 8000, AFTER_JITTER_SETTLES);
    assert!(
        score > 0.8,
        "alice hears her echo ({score:.3} at {delay} samples)\n{log}"
    );
    gateway.wait_for_log(
        &["incoming call", "source=user:alice"],
        Duration::from_secs(1),
    );
    gateway.assert_no_panic();
}

/// linphonec (linphone-cli 5.1) registers as alice (digest, 401), shows up
/// in `/v1/users` with its User-Agent, and calls: the gateway challenges its
/// INVITE (407), it answers with alice's credentials and the call reaches
/// her flow. (The sandbox has no sound card, so linphonec sends no audio;
/// the echo is checked with baresip above.)
#[test]
fn linphonec_registers_and_calls() {
    let gateway = GatewayProcess::start("phones-linphone", &config());
    let mut phone = Linphone::start(&gateway.dir);
    phone.command(&format!("ports sip {}", free_udp_port()));
    phone.command(&format!(
        "register sip:alice@{gw} sip:{gw} wonderland",
        gw = gateway.udp
    ));
    let api = api_addr(&gateway);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, users) = http_get(api, "/v1/users");
        if users.contains("Linphonec/") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "linphonec did not register: {users}\n{}",
            phone.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    gateway.wait_for_log(&["registered aor=alice"], Duration::from_secs(1));
    phone.command(&format!("call sip:100@{}", gateway.udp));
    phone.wait_for("Media streams established", Duration::from_secs(10));
    gateway.wait_for_log(&["answered", "codec="], Duration::from_secs(2));
    gateway.wait_for_log(
        &["incoming call", "source=user:alice"],
        Duration::from_secs(1),
    );
    phone.command("terminate");
    gateway.wait_for_log(&["call ended", "caller hung up"], Duration::from_secs(5));
    phone.command("quit");
    gateway.assert_no_panic();
}

/// bob has two phones. A call to bob rings both; the one that answers
/// talks to the caller, the other is cancelled.
#[test]
fn both_phones_of_a_user_ring_and_the_first_answer_wins() {
    let gateway = GatewayProcess::start("phones-bob", &config());
    let mic = microphone(&gateway, "bob-mic");
    let mut desk = Baresip::registered(
        &gateway.dir,
        "bob-desk",
        &PCMU,
        &mic,
        gateway.udp,
        "bob",
        "builder",
        "manual",
        None,
        12,
    );
    let mut mobile = Baresip::registered(
        &gateway.dir,
        "bob-mobile",
        &PCMU,
        &mic,
        gateway.udp,
        "bob",
        "builder",
        "manual",
        None,
        12,
    );
    let api = api_addr(&gateway);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, users) = http_get(api, "/v1/users");
        let parsed: serde_json::Value = serde_json::from_str(&users).unwrap();
        let bob = parsed["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == "bob")
            .cloned()
            .unwrap();
        if bob["contacts"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bob's phones did not both register: {users}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // alice (sipp, authenticating) calls bob.
    let alice_rtp = RtpPeer::bind();
    let scenario = sipp::caller_with_digest(
        "bob",
        &sipp::sdp_offer(alice_rtp.port(), &G711_OFFER[..1]),
        ("alice", "wonderland"),
    );
    let caller = std::thread::spawn({
        let dir = gateway.dir.clone();
        let target = gateway.udp;
        move || {
            sipp::run(
                &dir,
                "alice",
                &scenario,
                target,
                SipTransport::Udp,
                "127.0.0.1",
            )
        }
    });
    // Both phones ring; the desk phone picks up.
    desk.wait_for_log("Incoming call", Duration::from_secs(5));
    mobile.wait_for_log("Incoming call", Duration::from_secs(5));
    desk.command("/accept");
    gateway.wait_for_log(&["transfer: bridged"], Duration::from_secs(10));
    let sent_at = std::time::Instant::now();
    // alice talks too: the same voice backwards, to tell it from bob's.
    let gateway_rtp = alice_rtp.wait_first_packet(Duration::from_secs(5)).unwrap();
    let backwards = {
        let mut voice = voice_like(8000, 4 * 8000);
        voice.reverse();
        voice
    };
    std::thread::scope(|scope| {
        scope.spawn(|| alice_rtp.stream_pcmu(gateway_rtp, &backwards[..3 * 8000]));
        std::thread::sleep(Duration::from_secs(3));
    });
    let heard: Vec<i16> = alice_rtp
        .received()
        .iter()
        .filter(|p| p.at >= sent_at && p.payload_type == 0)
        .flat_map(|p| {
            p.payload
                .iter()
                .map(|b| switchboard_media::g711::ulaw_decode(*b))
        })
        .collect();
    let voice = voice_like(8000, 12 * 8000);
    let window = &heard[heard.len().saturating_sub(12_000)..heard.len().saturating_sub(4000)];
    let (score, _) = best_correlation(window, &voice, 0..voice.len());
    assert!(score > 0.8, "alice hears bob's desk phone ({score:.3})");
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    let _ = desk.wait(Duration::from_secs(20));
    let _ = mobile.wait(Duration::from_secs(20));
    let (desk_log, mobile_log) = (desk.log(), mobile.log());
    assert!(desk_log.contains("Call established"), "{desk_log}");
    // The desk phone heard alice: the best of two one-second windows (from
    // 1 and 1.5 s, past the jitter buffer's settling).
    let desk_heard = desk.recording("dec").mono();
    let to_desk = [2, 3]
        .into_iter()
        .map(|halves| peak_correlation(&backwards, &desk_heard, 8000, 8000 * halves / 2).0)
        .fold(0.0, f64::max);
    eprintln!("bob's desk phone hears alice: {to_desk:.3}");
    assert!(to_desk > 0.8, "bob's desk phone hears alice ({to_desk:.3})");
    assert!(
        mobile_log.contains("Incoming call") && !mobile_log.contains("Call established"),
        "the other phone rang and was not connected:\n{mobile_log}"
    );
    // baresip reports the CANCEL of a ringing call as the session closing.
    assert!(
        mobile_log.contains("session closed"),
        "the other phone's ringing was cancelled:\n{mobile_log}"
    );
    gateway.assert_no_panic();
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Calls API places a call to a registered user by name: bob's
/// baresip answers, talks to the echo flow and hears himself; a form POST
/// hangs up.
#[test]
fn the_calls_api_calls_a_registered_user() {
    let (account, token) = (
        "AC0123456789abcdef0123456789abcdef",
        "token-0123456789abcdef",
    );
    let config = config().replace(
        "[api]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[api]\nlisten = \"127.0.0.1:0\"\naccount_sid = \"{account}\"\nauth_token = \"{token}\"\n"
        ),
    );
    let gateway = GatewayProcess::start("phones-api", &config);
    let mic = microphone(&gateway, "bob-mic");
    let mut bob = Baresip::registered(
        &gateway.dir,
        "bob",
        &PCMU,
        &mic,
        gateway.udp,
        "bob",
        "builder",
        "auto",
        None,
        10,
    );
    let api = api_addr(&gateway);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !http_get(api, "/v1/users").1.contains("baresip") {
        assert!(std::time::Instant::now() < deadline, "bob never registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let calls = format!("/2010-04-01/Accounts/{account}/Calls.json");
    let (status, call) = common::api::twilio_request(
        api,
        "POST",
        &calls,
        "To=bob&From=%2B15550100&Flow=echo",
        (account, token),
    );
    assert_eq!(status, 201, "{call}");
    let path = format!(
        "/2010-04-01/Accounts/{account}/Calls/{}.json",
        call["sid"].as_str().unwrap()
    );
    bob.wait_for_log("Call established", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(4));
    let (status, call) =
        common::api::twilio_request(api, "POST", &path, "Status=completed", (account, token));
    assert_eq!(status, 200, "{call}");
    let _ = bob.wait(Duration::from_secs(20));
    let heard = bob.recording("dec").mono();
    let sent = voice_like(8000, 12 * 8000);
    let (score, delay) = peak_correlation(&sent, &heard, 8000, AFTER_JITTER_SETTLES);
    let log = bob.log();
    assert!(
        score > 0.8,
        "bob hears his echo ({score:.3} at {delay} samples)\n{log}"
    );
    let (_, call) = common::api::twilio_request(api, "GET", &path, "", (account, token));
    assert_eq!(call["status"], "completed");
    assert_eq!(call["direction"], "outbound-api");
    gateway.assert_no_panic();
}
