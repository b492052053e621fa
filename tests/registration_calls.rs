//! Outbound registrations against a real PBX: Kamailio, started by the
//! test as a registrar with digest auth and credentials in its script,
//! holds the gateway's extension 1001. The registration's status (API and
//! callbacks) follows the PBX going away and coming back; calls to 1001
//! reach the registration's flow; a flow dials 1002 through the
//! registration; a reload adds and removes registrations mid-call.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::agent::{Agent, AgentScenario, Behaviour};
use common::api::{api_addr, http_get, http_post};
use common::audio::{best_correlation, speech_like};
use common::gateway::{config_with, scratch_dir, GatewayProcess};
use common::http_server::HttpServer;
use common::kamailio::Kamailio;
use common::registering::Phone;
use common::rtp_peer::RtpPeer;
use common::sipp::{self, SipTransport, G711_OFFER};
use common::twilio_bot::{BotCommand, TwilioBot};
use serde_json::{json, Value};

/// Kamailio as the PBX: registrar for 1001/1002/1003 with digest auth, and
/// a proxy that makes its own extensions authenticate their calls.
fn pbx_routing(min_expires: u32) -> String {
    format!(
        r#"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "xlog.so"
modparam("usrloc", "db_mode", 0)
modparam("registrar", "min_expires", {min_expires})
modparam("registrar", "min_expires_mode", 1)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (is_method("OPTIONS") && uri == myself && $rU == $null) {{
        sl_send_reply("200", "OK");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) {{
                t_relay();
            }}
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    t_check_trans();
    if (is_method("REGISTER")) {{
        route(PASSWORD);
        if (!pv_www_authenticate("pbx.test", "$var(password)", "0")) {{
            xlog("L_INFO", "REGISTER of $tU challenged\n");
            www_challenge("pbx.test", "1");
            exit;
        }}
        consume_credentials();
        xlog("L_INFO", "REGISTER of $tU over $pr with Expires $hdr(Expires)\n");
        if (!save("location")) {{
            sl_reply_error();
        }}
        exit;
    }}
    if (is_method("INVITE")) {{
        if ($fU =~ "^100[0-9]$") {{
            route(PASSWORD);
            if (!pv_proxy_authenticate("pbx.test", "$var(password)", "0")) {{
                xlog("L_INFO", "INVITE from $fU challenged\n");
                proxy_challenge("pbx.test", "1");
                exit;
            }}
            consume_credentials();
            xlog("L_INFO", "INVITE from $fU authenticated\n");
        }}
        record_route();
        if (!lookup("location")) {{
            sl_send_reply("404", "Not Found");
            exit;
        }}
        t_relay();
        exit;
    }}
    sl_send_reply("405", "Method Not Allowed");
}}

route[PASSWORD] {{
    $var(password) = "";
    if ($au == "1001") {{ $var(password) = "pw1001"; }}
    if ($au == "1002") {{ $var(password) = "pw1002"; }}
    if ($au == "1003") {{ $var(password) = "pw1003"; }}
}}
"#
    )
}

fn registration(id: &str, user: &str, password: &str, pbx: &Kamailio, extra: &str) -> String {
    format!(
        r#"
[[registrations]]
id = "{id}"
proxy = "{addr}{extra}"
username = "{user}"
password = "{password}"
expires = 60
flow = "echo"
"#,
        addr = pbx.addr
    )
}

fn config(registrations: &str, extra: &str) -> String {
    config_with(&format!(
        r#"
[api]
listen = "127.0.0.1:0"

{extra}

[[flows]]
name = "echo"
bot = {{ kind = "echo", delay_ms = 200, sample_rate = 16000 }}

{registrations}
"#
    ))
    .replace(
        "jitter_depth_ms = 40",
        "jitter_depth_ms = 40\njitter_adaptive = false",
    )
}

fn status_of(api: std::net::SocketAddr, id: &str) -> Value {
    let (code, body) = http_get(api, &format!("/v1/registrations/{id}"));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until registration `id` is in `state`; its JSON.
fn wait_status(api: std::net::SocketAddr, id: &str, state: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (code, body) = http_get(api, &format!("/v1/registrations/{id}"));
        let status: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if code == 200 && status["status"] == state {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "registration {id} never became {state}: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The callbacks' JSON bodies received so far.
fn callbacks(server: &HttpServer) -> Vec<Value> {
    server
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|request| serde_json::from_str(&request.body).unwrap())
        .collect()
}

fn wait_callbacks(server: &HttpServer, count: usize, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = callbacks(server);
        if seen.len() >= count {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} status callbacks, got {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn registration_status_follows_the_pbx_and_its_callback_is_told() {
    let dir = scratch_dir("registration-status");
    let mut pbx = Kamailio::start_with(&dir, true, &pbx_routing(30));
    let hook = HttpServer::start(|_| (200, "{}".to_string()));
    let registrations = format!(
        "{}status_callback = \"http://{}/sip-status\"\n{}",
        registration("pbx-1001", "1001", "pw1001", &pbx, ";transport=tcp"),
        hook.addr,
        registration("wrong", "1003", "not-the-password", &pbx, ""),
    );
    let gateway = GatewayProcess::start("registration-status", &config(&registrations, ""));
    let api = api_addr(&gateway);

    let good = wait_status(api, "pbx-1001", "successful", Duration::from_secs(10));
    assert_eq!(good["code"], 200, "{good}");
    assert!(good["expires"].as_u64().unwrap() >= 30, "{good}");
    let wrong = wait_status(api, "wrong", "failed", Duration::from_secs(10));
    assert_eq!(wrong["code"], 401, "{wrong}");
    assert!(
        wrong["reason"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("credentials"),
        "{wrong}"
    );
    let first = wait_callbacks(&hook, 1, Duration::from_secs(5));
    assert_eq!(first[0]["id"], "pbx-1001");
    assert_eq!(first[0]["status"], "successful");

    // The PBX dies: its TCP connection drops, re-registering fails.
    pbx.kill();
    let down = wait_status(api, "pbx-1001", "failed", Duration::from_secs(20));
    let seen = wait_callbacks(&hook, 2, Duration::from_secs(5));
    assert_eq!(seen[1]["status"], "failed", "{seen:?}");
    assert_eq!(seen[1]["previous"], "successful", "{seen:?}");
    assert_eq!(seen[1]["code"], down["code"], "{seen:?} {down}");
    gateway.wait_for_log(
        &["registration status changed", "pbx-1001", "to=\"failed\""],
        Duration::from_secs(1),
    );

    // It comes back: the backoff's next attempt registers again.
    pbx.restart();
    wait_status(api, "pbx-1001", "successful", Duration::from_secs(40));
    let seen = wait_callbacks(&hook, 3, Duration::from_secs(5));
    assert_eq!(seen[2]["status"], "successful", "{seen:?}");
    assert_eq!(seen[2]["previous"], "failed", "{seen:?}");
    assert!(
        callbacks(&hook).iter().all(|c| c["id"] == "pbx-1001"),
        "only the registration with a callback reports"
    );
    let (_, metrics) = http_get(api, "/metrics");
    assert!(
        metrics.contains("switchboard_registrations{state=\"successful\"} 1"),
        "{metrics}"
    );
    gateway.assert_no_panic();
}

/// A caller's INVITE to 1001 through the PBX, talking for `hold_ms`.
fn call_extension_scenario(sdp: &str, hold_ms: u64) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="call the extension">
  <send retrans="500">
    <![CDATA[
      INVITE sip:1001@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "caller" <sip:caller@[local_ip]:[local_port]>;tag=[pid]c[call_number]
      To: <sip:1001@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:caller@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

{sdp}
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <pause milliseconds="{hold_ms}"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
"#
    )
}

/// Streams speech at the gateway and checks the echo flow sent it back.
fn assert_echo(peer: &RtpPeer, what: &str, first_packet: usize) {
    let gateway_rtp = peer
        .wait_first_packet(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{what}: no RTP from the gateway"));
    let sent = speech_like(2 * 8000);
    let since = Instant::now();
    peer.stream_pcmu_from(gateway_rtp, &sent, first_packet);
    std::thread::sleep(Duration::from_millis(600));
    let heard: Vec<i16> = peer
        .received()
        .iter()
        .filter(|p| p.at >= since && p.payload_type == 0)
        .flat_map(|p| {
            p.payload
                .iter()
                .map(|b| switchboard_media::g711::ulaw_decode(*b))
        })
        .collect();
    let (score, _) = best_correlation(&sent[4000..12_000], &heard, 0..heard.len());
    assert!(score > 0.9, "{what}: echo correlation {score:.3}");
}

/// A call to 1001 through the PBX: its audio is checked for echo once at
/// once, and again when the test sends on the returned channel.
fn call_extension(
    dir: &Path,
    pbx: &Kamailio,
    hold_ms: u64,
) -> (std::thread::JoinHandle<()>, std::sync::mpsc::Sender<()>) {
    let peer = RtpPeer::bind();
    let scenario = call_extension_scenario(&sipp::sdp_offer(peer.port(), G711_OFFER), hold_ms);
    let (dir, target) = (dir.to_path_buf(), pbx.addr);
    let (again, check_again) = std::sync::mpsc::channel();
    let call = std::thread::spawn(move || {
        let caller = std::thread::spawn({
            let dir = dir.clone();
            move || {
                sipp::run(
                    &dir,
                    "call-1001",
                    &scenario,
                    target,
                    SipTransport::Udp,
                    "127.0.0.1",
                )
            }
        });
        let first_stream = Instant::now();
        assert_echo(&peer, "call to the extension", 0);
        check_again.recv().unwrap();
        // Numbered as a phone would after a silent spell: by the clock.
        let packets = (first_stream.elapsed().as_millis() / 20) as usize;
        assert_echo(&peer, "call to the extension, later", packets);
        let output = caller.join().unwrap();
        sipp::assert_success(&output, &dir);
    });
    (call, again)
}

#[test]
fn a_call_to_the_extension_reaches_the_registrations_flow() {
    let dir = scratch_dir("registration-incoming");
    let pbx = Kamailio::start_with(&dir, true, &pbx_routing(30));
    // No trunk at all: the only way in is the registration.
    let gateway = GatewayProcess::start(
        "registration-incoming",
        &config(
            &registration("pbx-1001", "1001", "pw1001", &pbx, ";transport=tcp"),
            "",
        ),
    );
    let api = api_addr(&gateway);
    wait_status(api, "pbx-1001", "successful", Duration::from_secs(10));
    let (call, again) = call_extension(&gateway.dir, &pbx, 6000);
    again.send(()).unwrap();
    if call.join().is_err() {
        panic!(
            "the call failed; kamailio:\n{}\ngateway:\n{}",
            pbx.log(),
            gateway.logs().join("\n")
        );
    }
    gateway.wait_for_log(
        &["incoming call", "to=1001", "source=registration:pbx-1001"],
        Duration::from_secs(1),
    );
    gateway.wait_for_log(&["call ended", "caller hung up"], Duration::from_secs(5));
    gateway.assert_no_panic();
}

#[test]
fn a_flow_dials_another_extension_through_the_registration() {
    let dir = scratch_dir("registration-dial");
    let pbx = Kamailio::start_with(&dir, false, &pbx_routing(30));
    // Extension 1002 is a sipp UAS whose contact a test phone registered.
    let agent_rtp = RtpPeer::bind();
    let agent = Agent::start(
        &dir,
        "agent",
        &AgentScenario {
            behaviour: Behaviour::AnswerAndWait {
                rtp_port: agent_rtp.port(),
            },
            challenge: false,
            require: Some("From: .*sip:1001@"),
            formats: &[(0, "PCMU/8000"), (101, "telephone-event/8000")],
        },
        SipTransport::Udp,
    );
    let mut phone = Phone::new(pbx.addr, "1002", "pw1002");
    let answer = phone.register(&[format!("<sip:1002@{}>", agent.addr)], Some(300), "MD5");
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");

    let bot = TwilioBot::start();
    let gateway = GatewayProcess::start(
        "registration-dial",
        &config(
            &registration("pbx-1001", "1001", "pw1001", &pbx, ""),
            &format!(
                r#"
[dial]
allow = ['^sip:1002@127\.0\.0\.1']

[[trunks]]
name = "loopback"
allow = ["127.0.0.1"]
routes = [{{ pattern = '^\+1\d{{10}}$', flow = "bot" }}]

[[flows]]
name = "bot"
bot = {{ kind = "twilio_stream", url = "ws://{}/media" }}
"#,
                bot.addr
            ),
        ),
    );
    let api = api_addr(&gateway);
    wait_status(api, "pbx-1001", "successful", Duration::from_secs(10));

    let caller_rtp = RtpPeer::bind();
    let caller = sipp::spawn_udp_call(
        &gateway,
        sipp::gateway_hangs_up(
            "+12125550100",
            &sipp::sdp_offer(caller_rtp.port(), G711_OFFER),
        ),
    );
    bot.wait_event("start", |_| true, Duration::from_secs(10));
    let gateway_rtp = caller_rtp
        .wait_first_packet(Duration::from_secs(5))
        .expect("gateway RTP towards the caller");
    let twiml = "<Response><Dial><Sip registration=\"pbx-1001\">sip:1002</Sip></Dial></Response>";
    bot.send(BotCommand::Json(
        json!({"event": "action", "name": "twiml", "body": twiml}),
    ));
    gateway.wait_for_log(&["transfer: bridged"], Duration::from_secs(10));
    let bridged_at = Instant::now();

    // The caller talks; the agent behind the PBX hears it.
    let from_caller = speech_like(2 * 8000);
    caller_rtp.stream_pcmu(gateway_rtp, &from_caller);
    std::thread::sleep(Duration::from_millis(300));
    let heard: Vec<i16> = agent_rtp
        .received()
        .iter()
        .filter(|p| p.at >= bridged_at && p.payload_type == 0)
        .flat_map(|p| {
            p.payload
                .iter()
                .map(|b| switchboard_media::g711::ulaw_decode(*b))
        })
        .collect();
    let (score, _) = best_correlation(&from_caller[4000..12_000], &heard, 0..heard.len());
    assert!(score > 0.9, "the agent hears the caller ({score:.3})");

    // The PBX challenged the gateway's INVITE and let the second through.
    let log = pbx.log();
    assert!(log.contains("INVITE from 1001 challenged"), "{log}");
    assert!(log.contains("INVITE from 1001 authenticated"), "{log}");
    // The caller hangs up the bridge through the gateway ending it: the
    // agent gets its BYE.
    bot.send(BotCommand::Json(json!({"event": "noop"})));
    gateway.terminate();
    let _ = caller.join();
    sipp::assert_success(&agent.join(), &dir.join("agent"));
    gateway.assert_no_panic();
}

/// The Calls API places a call to extension 1002 through registration
/// pbx-1001: the PBX challenges, the gateway answers as 1001, the callee
/// talks to the echo flow, and a form POST hangs up.
#[test]
fn the_calls_api_dials_an_extension_through_the_registration() {
    let dir = scratch_dir("registration-api");
    let pbx = Kamailio::start_with(&dir, false, &pbx_routing(30));
    let agent_rtp = RtpPeer::bind();
    let agent = Agent::start(
        &dir,
        "agent",
        &AgentScenario {
            behaviour: Behaviour::AnswerAndWait {
                rtp_port: agent_rtp.port(),
            },
            challenge: false,
            require: Some("From: .*sip:1001@"),
            formats: &[(0, "PCMU/8000")],
        },
        SipTransport::Udp,
    );
    let mut phone = Phone::new(pbx.addr, "1002", "pw1002");
    let answer = phone.register(&[format!("<sip:1002@{}>", agent.addr)], Some(300), "MD5");
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    let (account, token) = (
        "AC0123456789abcdef0123456789abcdef",
        "token-0123456789abcdef",
    );
    let gateway = GatewayProcess::start(
        "registration-api",
        &config(
            &registration("pbx-1001", "1001", "pw1001", &pbx, ""),
            &format!("account_sid = \"{account}\"\nauth_token = \"{token}\"\n"),
        ),
    );
    let api = api_addr(&gateway);
    wait_status(api, "pbx-1001", "successful", Duration::from_secs(10));
    let calls = format!("/2010-04-01/Accounts/{account}/Calls.json");
    let (status, call) = common::api::twilio_request(
        api,
        "POST",
        &calls,
        "To=1002&From=ignored&Registration=pbx-1001&Flow=echo",
        (account, token),
    );
    assert_eq!(status, 201, "{call}");
    let sid = call["sid"].as_str().unwrap().to_string();
    let path = format!("/2010-04-01/Accounts/{account}/Calls/{sid}.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, call) = common::api::twilio_request(api, "GET", &path, "", (account, token));
        if call["status"] == "in-progress" {
            break;
        }
        assert!(Instant::now() < deadline, "never answered: {call}");
        std::thread::sleep(Duration::from_millis(100));
    }
    agent_rtp
        .wait_first_packet(Duration::from_secs(5))
        .expect("the echo flow's media reaches the extension");
    let log = pbx.log();
    assert!(log.contains("INVITE from 1001 challenged"), "{log}");
    assert!(log.contains("INVITE from 1001 authenticated"), "{log}");
    let (status, _) =
        common::api::twilio_request(api, "POST", &path, "Status=completed", (account, token));
    assert_eq!(status, 200);
    sipp::assert_success(&agent.join(), &dir.join("agent"));
    gateway.assert_no_panic();
}

#[test]
fn a_423_gets_a_second_register_with_the_registrars_minimum() {
    let dir = scratch_dir("registration-423");
    let pbx = Kamailio::start_with(&dir, false, &pbx_routing(1800));
    let gateway = GatewayProcess::start(
        "registration-423",
        &config(&registration("pbx-1001", "1001", "pw1001", &pbx, ""), ""),
    );
    let api = api_addr(&gateway);
    let status = wait_status(api, "pbx-1001", "successful", Duration::from_secs(10));
    assert_eq!(status["expires"], 1800, "{status}");
    gateway.wait_for_log(&["423 Interval Too Brief", "1800"], Duration::from_secs(1));
    let log = pbx.log();
    let short = log
        .find("REGISTER of 1001 over udp with Expires 60")
        .unwrap_or_else(|| panic!("{log}"));
    let long = log
        .find("REGISTER of 1001 over udp with Expires 1800")
        .unwrap_or_else(|| panic!("{log}"));
    assert!(short < long, "{log}");
    gateway.assert_no_panic();
}

#[test]
fn reload_adds_and_removes_registrations_while_a_call_keeps_its_audio() {
    let dir = scratch_dir("registration-reload");
    let pbx = Kamailio::start_with(&dir, true, &pbx_routing(30));
    let before = config(
        &registration("pbx-1001", "1001", "pw1001", &pbx, ";transport=tcp"),
        "",
    );
    let gateway = GatewayProcess::start("registration-reload", &before);
    let api = api_addr(&gateway);
    wait_status(api, "pbx-1001", "successful", Duration::from_secs(10));

    // A call in progress through the first registration.
    let (call, again) = call_extension(&gateway.dir, &pbx, 9000);
    gateway.wait_for_log(&["registration:pbx-1001"], Duration::from_secs(10));

    // A bad file is refused and changes nothing.
    let path = gateway.dir.join("switchboard.toml");
    std::fs::write(&path, before.replace("expires = 60", "expires = 5")).unwrap();
    let (code, body) = http_post(api, "/v1/reload", "");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("registrations[0].expires"), "{body}");
    assert_eq!(status_of(api, "pbx-1001")["status"], "successful");

    // 1001 goes, 1002 comes.
    let after = config(
        &registration("pbx-1002", "1002", "pw1002", &pbx, ";transport=tcp"),
        "",
    );
    std::fs::write(&path, after).unwrap();
    let (code, body) = http_post(api, "/v1/reload", "");
    assert_eq!(code, 200, "{body}");
    wait_status(api, "pbx-1002", "successful", Duration::from_secs(10));
    let (code, _) = http_get(api, "/v1/registrations/pbx-1001");
    assert_eq!(code, 404);
    // The un-REGISTER reached the PBX.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pbx
        .log()
        .contains("REGISTER of 1001 over tcp with Expires 0")
    {
        assert!(
            Instant::now() < deadline,
            "no un-REGISTER for 1001:\n{}",
            pbx.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The call admitted before the reload still echoes and ends cleanly.
    again.send(()).unwrap();
    call.join().expect("the call in progress kept its audio");

    // SIGHUP reloads too: 1001 back beside 1002.
    std::fs::write(
        &path,
        config(
            &format!(
                "{}{}",
                registration("pbx-1001", "1001", "pw1001", &pbx, ";transport=tcp"),
                registration("pbx-1002", "1002", "pw1002", &pbx, ";transport=tcp")
            ),
            "",
        ),
    )
    .unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &gateway.pid().to_string()])
        .status()
        .unwrap();
    wait_status(api, "pbx-1001", "successful", Duration::from_secs(10));
    assert_eq!(status_of(api, "pbx-1002")["status"], "successful");
    gateway.assert_no_panic();
}
