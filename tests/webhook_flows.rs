//! Webhook flows: a local web server answers each call with TwiML, as
//! Twilio's voice webhooks do. The requests carry Twilio's parameters and a
//! valid `X-Twilio-Signature`; `<Connect><Stream>` reaches a bot,
//! `<Dial><Sip>` forwards the caller, a failing URL goes to the fallback,
//! then to `on_failure`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::agent::{Agent, AgentScenario, Behaviour};
use common::clip::{serve_clip, tone_wav};
use common::gateway::{config_with, scratch_dir, GatewayProcess};
use common::http_server::{HttpRequest, HttpServer};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, SipTransport, G711_OFFER};
use common::twilio_bot::{BotCommand, TwilioBot};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "token-0123456789abcdef";

fn config(webhook: &str, on_failure: &str) -> String {
    config_with(&format!(
        r#"
[api]
listen = "127.0.0.1:0"
account_sid = "{ACCOUNT}"
auth_token = "{TOKEN}"

[dial]
allow = ['^sip:agent@127\.0\.0\.1[:;?]']

[[trunks]]
name = "loopback"
allow = ["127.0.0.1"]
routes = [{{ pattern = '^\+1\d{{10}}$', flow = "hook" }}]

[[flows]]
name = "hook"
webhook = {webhook}
on_failure = {on_failure}
"#
    ))
}

fn form(request: &HttpRequest) -> HashMap<String, String> {
    url::form_urlencoded::parse(request.body.as_bytes())
        .into_owned()
        .collect()
}

/// Checks the signature as Twilio's validators do: URL + sorted params.
fn assert_signed(server: &HttpServer, request: &HttpRequest) {
    let url = format!("http://{}{}", server.addr, request.path);
    let params: Vec<(String, String)> = form(request).into_iter().collect();
    let expected = switchboard_gateway::webhook::signature(TOKEN, &url, &params);
    assert_eq!(
        request.header("X-Twilio-Signature"),
        Some(expected.as_str())
    );
}

#[test]
fn a_webhook_connects_the_caller_to_a_stream_bot() {
    let bot = TwilioBot::start();
    let stream = format!("ws://{}/media", bot.addr);
    let server = HttpServer::start(move |_| {
        (
            200,
            format!(
                "<Response><Connect><Stream url=\"{stream}\"><Parameter name=\"lang\" value=\"fr\"/></Stream></Connect></Response>"
            ),
        )
    });
    let gateway = GatewayProcess::start(
        "webhook-connect",
        &config(
            &format!("{{ url = \"http://{}/voice?x=1\" }}", server.addr),
            "{ hangup = 503 }",
        ),
    );
    let caller_rtp = RtpPeer::bind();
    let caller = sipp::spawn_udp_call(
        &gateway,
        sipp::gateway_hangs_up(
            "+12125550100",
            &sipp::sdp_offer(caller_rtp.port(), G711_OFFER),
        ),
    );
    let (_, start) = bot.wait_event("start", |_| true, Duration::from_secs(10));
    assert_eq!(start["start"]["customParameters"]["lang"], "fr");
    caller_rtp
        .wait_first_packet(Duration::from_secs(5))
        .expect("the caller is answered and hears the bot's side");
    bot.send(BotCommand::Close);
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);

    let requests = server.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/voice?x=1")
    );
    let params = form(request);
    assert_eq!(
        params["CallSid"],
        start["start"]["callSid"].as_str().unwrap()
    );
    assert_eq!(params["AccountSid"], ACCOUNT);
    assert_eq!(params["To"], "+12125550100");
    assert_eq!(params["From"], "sipp");
    assert_eq!(params["CallStatus"], "ringing");
    assert_eq!(params["Direction"], "inbound");
    assert_eq!(params["SipSourceIp"], "127.0.0.1");
    assert_eq!(params["SipHeader_X-Test-Case"], "switchboard");
    assert_signed(&server, request);
    gateway.assert_no_panic();
}

#[test]
fn a_webhook_forwards_the_caller_to_an_agent() {
    let scratch = scratch_dir("webhook-dial");
    let agent_rtp = RtpPeer::bind();
    let agent = Agent::start(
        &scratch,
        "agent",
        &AgentScenario {
            behaviour: Behaviour::Answer {
                rtp_port: agent_rtp.port(),
                hold_ms: 1500,
            },
            challenge: false,
            require: None,
            formats: &[(0, "PCMU/8000")],
        },
        SipTransport::Udp,
    );
    let agent_addr = agent.addr;
    let server = HttpServer::start(move |_| {
        (
            200,
            format!("<Response><Dial timeout=\"10\"><Sip>sip:agent@{agent_addr}</Sip></Dial></Response>"),
        )
    });
    let gateway = GatewayProcess::start(
        "webhook-dial",
        &config(
            &format!("{{ url = \"http://{}/voice\" }}", server.addr),
            "{ hangup = 503 }",
        ),
    );
    let caller_rtp = RtpPeer::bind();
    let caller = sipp::spawn_udp_call(
        &gateway,
        sipp::gateway_hangs_up(
            "+12125550101",
            &sipp::sdp_offer(caller_rtp.port(), G711_OFFER),
        ),
    );
    gateway.wait_for_log(&["transfer: bridged"], Duration::from_secs(10));
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.assert_no_panic();
}

#[test]
fn a_failing_webhook_goes_to_its_fallback_then_to_on_failure() {
    // The URL fails; the fallback refuses the call as busy.
    let server = HttpServer::start(|request| match request.path.as_str() {
        "/fallback" => (200, "<Response><Reject reason=\"busy\"/></Response>".into()),
        _ => (500, "oops".into()),
    });
    let hook = format!(
        "{{ url = \"http://{0}/voice\", fallback_url = \"http://{0}/fallback\" }}",
        server.addr
    );
    let gateway = GatewayProcess::start("webhook-fallback", &config(&hook, "{ hangup = 503 }"));
    let output = sipp::spawn_udp_call(
        &gateway,
        sipp::rejected(
            "+12125550102",
            &sipp::sdp_offer(sipp::free_media_port(), G711_OFFER),
            486,
        ),
    )
    .join()
    .unwrap();
    sipp::assert_success(&output, &gateway.dir);
    let paths: Vec<String> = server
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(paths, ["/voice", "/fallback"]);

    // TwiML it cannot run, and no fallback: on_failure answers 503.
    let server = HttpServer::start(|_| (200, "<Response><Say>hello</Say></Response>".into()));
    let hook = format!("{{ url = \"http://{}/voice\" }}", server.addr);
    let gateway = GatewayProcess::start("webhook-on-failure", &config(&hook, "{ hangup = 503 }"));
    let output = sipp::spawn_udp_call(
        &gateway,
        sipp::rejected(
            "+12125550103",
            &sipp::sdp_offer(sipp::free_media_port(), G711_OFFER),
            503,
        ),
    )
    .join()
    .unwrap();
    sipp::assert_success(&output, &gateway.dir);
    gateway.wait_for_log(
        &["webhook failed: on_failure", "Say"],
        Duration::from_secs(5),
    );
    gateway.assert_no_panic();
}

#[test]
fn a_webhook_plays_a_clip_pauses_and_hangs_up() {
    let clip = serve_clip(tone_wav(16_000, 1.0));
    let server = HttpServer::start(move |_| {
        (
            200,
            format!(
                "<Response><Play loop=\"2\">http://{clip}/tone.wav</Play><Pause length=\"1\"/><Hangup/></Response>"
            ),
        )
    });
    let gateway = GatewayProcess::start(
        "webhook-play",
        &config(
            &format!("{{ url = \"http://{}/voice\" }}", server.addr),
            "{ hangup = 503 }",
        ),
    );
    let caller_rtp = RtpPeer::bind();
    let started = std::time::Instant::now();
    let caller = sipp::spawn_udp_call(
        &gateway,
        sipp::gateway_hangs_up(
            "+12125550104",
            &sipp::sdp_offer(caller_rtp.port(), G711_OFFER),
        ),
    );
    // Answered, two seconds of tone, one of silence, then BYE.
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2800),
        "the clip played twice and paused: {took:?}"
    );
    let loud: usize = caller_rtp
        .received()
        .iter()
        .filter(|p| p.payload_type == 0)
        .filter(|p| {
            let energy: f64 = p
                .payload
                .iter()
                .map(|b| f64::from(switchboard_media::g711::ulaw_decode(*b)).powi(2))
                .sum();
            (energy / p.payload.len() as f64).sqrt() > 4000.0
        })
        .count();
    assert!(
        (90..=110).contains(&loud),
        "about 2 s of tone reached the caller: {loud} loud packets"
    );
    gateway.wait_for_log(&["call ended", "TwiML <Hangup/>"], Duration::from_secs(1));
    gateway.assert_no_panic();
}

#[test]
fn a_webhook_gathers_the_callers_keys_and_gets_them_in_digits() {
    // sipp presses 1, 5, # and 9 (RFC 4733): # ends the input.
    let server = HttpServer::start(|request| {
        match request.path.as_str() {
        "/voice" => (
            200,
            "<Response><Gather numDigits=\"3\" timeout=\"5\" action=\"/digits\"><Pause length=\"3\"/></Gather><Hangup/></Response>".into(),
        ),
        _ => (200, "<Response><Pause length=\"10\"/></Response>".into()),
    }
    });
    let gateway = GatewayProcess::start(
        "webhook-gather",
        &config(
            &format!("{{ url = \"http://{}/voice\" }}", server.addr),
            "{ hangup = 503 }",
        ),
    );
    let scenario = sipp::caller_sends_dtmf("+12125550105", &["1", "5", "pound", "9"]);
    let media_port = sipp::free_media_port().to_string();
    let output = sipp::run_with(
        &gateway.dir,
        "dtmf",
        &scenario,
        gateway.udp,
        SipTransport::Udp,
        "127.0.0.1",
        &["-mp", &media_port, "-mi", "127.0.0.1"],
    );
    sipp::assert_success(&output, &gateway.dir);
    let requests = server.requests.lock().unwrap().clone();
    let digits: Vec<&HttpRequest> = requests.iter().filter(|r| r.path == "/digits").collect();
    assert_eq!(digits.len(), 1, "one action request: {requests:?}");
    let params = form(digits[0]);
    assert_eq!(params["Digits"], "15");
    assert_eq!(params["CallStatus"], "in-progress");
    assert_signed(&server, digits[0]);
    gateway.assert_no_panic();
}
