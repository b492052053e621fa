//! The Twilio-style Calls API against live calls: a Twilio Media Streams bot
//! reads its `callSid` and hangs up or transfers its own call the way it
//! would on Twilio; the official `twilio` Python package reads and updates
//! calls and validates the gateway's webhook signatures.

mod common;

use std::time::Duration;

use common::agent::{Agent, AgentScenario, Behaviour};
use common::api::{api_addr, http_get, twilio_request, wait_for_call_status};
use common::gateway::{config_with, scratch_dir, GatewayProcess};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, SipTransport, G711_OFFER};
use common::twilio_bot::TwilioBot;

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "token-0123456789abcdef";
const LOGIN: (&str, &str) = (ACCOUNT, TOKEN);

fn config(bot_url: &str) -> String {
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
routes = [{{ pattern = '^\+1\d{{10}}$', flow = "bot" }}, {{ pattern = '^echo$', flow = "echo" }}]

[[flows]]
name = "bot"
bot = {{ kind = "twilio_stream", url = "{bot_url}", connect_timeout_ms = 2000 }}
on_failure = {{ hangup = 503 }}

[[flows]]
name = "echo"
bot = {{ kind = "echo", delay_ms = 100, sample_rate = 8000 }}
"#
    ))
}

fn calls_path(sid: &str) -> String {
    format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}.json")
}

/// A caller on `number` talking to the Twilio Media Streams bot: the
/// bot, the gateway, its API address, the caller's sipp and the callSid.
struct LiveCall {
    bot: TwilioBot,
    gateway: GatewayProcess,
    api: std::net::SocketAddr,
    caller: std::thread::JoinHandle<std::process::Output>,
    sid: String,
    _caller_rtp: RtpPeer,
}

fn call_the_bot(name: &str, number: &str) -> LiveCall {
    let bot = TwilioBot::start();
    let gateway = GatewayProcess::start(name, &config(&format!("ws://{}/media", bot.addr)));
    let api = api_addr(&gateway);
    let caller_rtp = RtpPeer::bind();
    let caller = sipp::spawn_udp_call(
        &gateway,
        sipp::gateway_hangs_up(number, &sipp::sdp_offer(caller_rtp.port(), G711_OFFER)),
    );
    let (_, start) = bot.wait_event("start", |_| true, Duration::from_secs(10));
    let sid = start["start"]["callSid"]
        .as_str()
        .expect("callSid")
        .to_string();
    LiveCall {
        bot,
        gateway,
        api,
        caller,
        sid,
        _caller_rtp: caller_rtp,
    }
}

#[test]
fn a_twilio_bot_hangs_up_its_own_call_with_a_form_post() {
    let LiveCall {
        bot,
        gateway,
        api,
        caller,
        sid,
        _caller_rtp,
    } = call_the_bot("calls-api-hangup", "+12125550100");
    assert!(sid.starts_with("CA") && sid.len() == 34, "{sid}");

    // The call is a resource while it lasts. The bot hears `start` while
    // its session opens, a moment before the call task answers the caller.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (status, call) = loop {
        let (status, call) = twilio_request(api, "GET", &calls_path(&sid), "", LOGIN);
        if call["status"] != "ringing" || std::time::Instant::now() >= deadline {
            break (status, call);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status, 200, "{call}");
    assert_eq!(call["sid"], sid.as_str());
    assert_eq!(call["status"], "in-progress");
    assert_eq!(call["direction"], "inbound");
    assert_eq!(call["to"], "+12125550100");
    assert_eq!(call["account_sid"], ACCOUNT);
    assert_eq!(call["api_version"], "2010-04-01");
    assert!(call["start_time"].as_str().unwrap().ends_with("+0000"));
    assert!(call["duration"].is_null());
    let list_path =
        format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json?Status=in-progress&PageSize=5");
    let (status, list) = twilio_request(api, "GET", &list_path, "", LOGIN);
    assert_eq!(status, 200);
    assert!(list["calls"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["sid"] == sid.as_str()));
    assert_eq!(list["page_size"], 5);

    // No login, a wrong token, another account: refused, the call untouched.
    let (status, body) = common::api::http_post(api, &calls_path(&sid), "Status=completed");
    assert_eq!(status, 401);
    assert!(body.contains("20003"), "{body}");
    let (status, error) = twilio_request(
        api,
        "POST",
        &calls_path(&sid),
        "Status=completed",
        (ACCOUNT, "wrong-token-0123456"),
    );
    assert_eq!((status, error["code"].as_u64()), (401, Some(20003)));
    let other = "/2010-04-01/Accounts/ACffffffffffffffffffffffffffffffff/Calls.json";
    let (status, error) = twilio_request(api, "GET", other, "", LOGIN);
    assert_eq!((status, error["code"].as_u64()), (404, Some(20404)));
    // Bad TwiML is refused whole.
    let (status, error) = twilio_request(
        api,
        "POST",
        &calls_path(&sid),
        "Twiml=%3CResponse%3E%3CSay%3Ehi%3C%2FSay%3E%3C%2FResponse%3E",
        LOGIN,
    );
    assert_eq!(
        (status, error["code"].as_u64()),
        (400, Some(12100)),
        "{error}"
    );
    assert!(
        error["message"].as_str().unwrap().contains("Say"),
        "{error}"
    );

    // The bot hangs up its own call.
    let (status, call) = twilio_request(api, "POST", &calls_path(&sid), "Status=completed", LOGIN);
    assert_eq!(status, 200, "{call}");
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    gateway.wait_for_log(
        &["call ended", "hung up through the Calls API"],
        Duration::from_secs(5),
    );
    bot.wait_event("stop", |_| true, Duration::from_secs(3));

    // Gone: a second hang-up is "not found", yet the record reads completed.
    let (status, error) = twilio_request(api, "POST", &calls_path(&sid), "Status=completed", LOGIN);
    assert_eq!(
        (status, error["code"].as_u64()),
        (404, Some(20404)),
        "{error}"
    );
    assert_eq!(error["status"], 404);
    assert!(error["more_info"].as_str().unwrap().contains("20404"));
    let (status, call) = twilio_request(api, "GET", &calls_path(&sid), "", LOGIN);
    assert_eq!(status, 200);
    assert_eq!(call["status"], "completed");
    assert!(call["duration"].as_str().is_some(), "{call}");
    assert!(call["end_time"].as_str().is_some(), "{call}");
    let (status, error) = twilio_request(
        api,
        "GET",
        &calls_path("CA00000000000000000000000000000000"),
        "",
        LOGIN,
    );
    assert_eq!((status, error["code"].as_u64()), (404, Some(20404)));
    gateway.assert_no_panic();
}

#[test]
fn new_twiml_posted_to_a_live_call_transfers_it_to_an_agent() {
    let scratch = scratch_dir("calls-api-dial");
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
    // The bot and the caller's RTP socket live as long as the call.
    let LiveCall {
        bot: _bot,
        gateway,
        api,
        caller,
        sid,
        _caller_rtp,
    } = call_the_bot("calls-api-dial", "+12125550101");

    // A target outside `[dial] allow` is refused like a bot's own dial.
    let twiml = |uri: &str| {
        let doc = format!("<Response><Dial><Sip>{uri}</Sip></Dial></Response>");
        format!("Twiml={}", url_encode(&doc))
    };
    let (status, _) = twilio_request(
        api,
        "POST",
        &calls_path(&sid),
        &twiml("sip:mallory@127.0.0.1:5999"),
        LOGIN,
    );
    assert_eq!(status, 200);
    gateway.wait_for_log(&["not allowed"], Duration::from_secs(5));

    // The dialed leg reports its progress to <Sip statusCallback>.
    let callbacks = common::http_server::HttpServer::start(|_| (204, String::new()));
    let sip = format!(
        "<Sip statusCallback=\"http://{}/dial\" statusCallbackEvent=\"initiated ringing answered completed\">sip:agent@{}</Sip>",
        callbacks.addr, agent.addr
    );
    let doc = format!("<Response><Dial>{sip}</Dial></Response>");
    let (status, call) = twilio_request(
        api,
        "POST",
        &calls_path(&sid),
        &format!("Twiml={}", url_encode(&doc)),
        LOGIN,
    );
    assert_eq!(status, 200, "{call}");
    gateway.wait_for_log(&["transfer: bridged"], Duration::from_secs(10));
    // While bridged, the dialed leg is a child call resource.
    let list = format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json?Status=in-progress");
    let (_, live) = twilio_request(api, "GET", &list, "", LOGIN);
    let child = live["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["parent_call_sid"] == sid.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no child call in {live}"));
    assert_eq!(child["direction"], "outbound-dial");
    // A live dialed leg is not "not found": it is updated through its parent.
    let child_path = calls_path(child["sid"].as_str().unwrap());
    let (status, error) = twilio_request(api, "POST", &child_path, "Status=completed", LOGIN);
    assert_eq!(
        (status, error["code"].as_u64()),
        (400, Some(21220)),
        "{error}"
    );
    // The agent hangs up after its hold: the caller gets BYE.
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.wait_for_log(&["call ended"], Duration::from_secs(5));
    let call = wait_for_call_status(api, &calls_path(&sid), "completed", LOGIN);
    assert_eq!(call["status"], "completed");
    let child_sid = child["sid"].as_str().unwrap();
    let child = wait_for_call_status(api, &calls_path(child_sid), "completed", LOGIN);
    assert_eq!(child["status"], "completed");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while callbacks.requests.lock().unwrap().len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "dial callbacks missing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let statuses: Vec<(String, String)> = callbacks
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| {
            let params: std::collections::HashMap<String, String> =
                url::form_urlencoded::parse(r.body.as_bytes())
                    .into_owned()
                    .collect();
            assert_eq!(params["CallSid"], child_sid);
            (
                params["CallStatus"].clone(),
                params["SequenceNumber"].clone(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("initiated".to_string(), "0".to_string()),
            ("ringing".into(), "1".into()),
            ("in-progress".into(), "2".into()),
            ("completed".into(), "3".into())
        ]
    );
    gateway.assert_no_panic();
}

/// The official `twilio` package (PyPI) as a bot framework uses it.
#[test]
fn the_twilio_python_client_reads_and_updates_calls() {
    let bot = TwilioBot::start();
    let gateway = GatewayProcess::start(
        "calls-api-python",
        &config(&format!("ws://{}/media", bot.addr)),
    );
    let api = api_addr(&gateway);
    let caller_rtp = RtpPeer::bind();
    let caller = sipp::spawn_udp_call(
        &gateway,
        sipp::gateway_hangs_up("echo", &sipp::sdp_offer(caller_rtp.port(), G711_OFFER)),
    );
    gateway.wait_for_log(&["answered"], Duration::from_secs(10));
    let (status, _) = http_get(api, "/health");
    assert_eq!(status, 200);
    python("calls_api_client.py", api, &[]);
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.assert_no_panic();
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `calls.create` from Twilio's Python client: a sipp agent on TCP that
/// challenges and needs the X- header answers, the `<Connect><Stream>` bot
/// gets the call, `update(twiml=<Hangup/>)` ends it, callbacks arrive.
#[test]
fn the_twilio_python_client_places_a_call_to_a_sip_agent() {
    let scratch = scratch_dir("calls-api-create");
    let agent_rtp = RtpPeer::bind();
    let agent = Agent::start(
        &scratch,
        "agent",
        &AgentScenario {
            behaviour: Behaviour::AnswerAndWait {
                rtp_port: agent_rtp.port(),
            },
            challenge: true,
            require: Some("X-Case: 42"),
            formats: &[(0, "PCMU/8000")],
        },
        SipTransport::Tcp,
    );
    let bot = TwilioBot::start();
    let stream_url = format!("ws://{}/media", bot.addr);
    let gateway = GatewayProcess::start("calls-api-create", &config(&stream_url));
    let api = api_addr(&gateway);
    let agent_uri = format!("sip:agent@{};transport=tcp?X-Case=42", agent.addr);
    let output = python(
        "calls_create.py",
        api,
        &[("AGENT_URI", &agent_uri), ("STREAM_URL", &stream_url)],
    );
    let sid = output
        .lines()
        .find_map(|line| line.strip_prefix("SID="))
        .expect("the script prints the call's Sid")
        .to_string();
    // The bot got the call under the same Sid, with the TwiML's parameter.
    let (_, start) = bot.wait_event("start", |_| true, Duration::from_secs(5));
    assert_eq!(start["start"]["callSid"], sid.as_str());
    assert_eq!(start["start"]["customParameters"]["case"], "42");
    // Media flowed to the party we called while the bot had the call.
    assert!(
        !agent_rtp.received().is_empty(),
        "the agent got RTP from the gateway"
    );
    // The agent saw TCP, the header and a digest answer, and got our BYE.
    let messages = agent.messages();
    common::agent::check_proxy_authorization(&messages);
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
    gateway.wait_for_log(
        &["call ended", "hung up by TwiML from the Calls API"],
        Duration::from_secs(5),
    );
    gateway.assert_no_panic();
}

/// Runs `tests/python/SCRIPT` against the API; its stdout, once it passed.
fn python(script: &str, api: std::net::SocketAddr, env: &[(&str, &str)]) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let output = std::process::Command::new("python3")
        .arg(&path)
        .env("API_BASE", format!("http://{api}"))
        .env("ACCOUNT_SID", ACCOUNT)
        .env("AUTH_TOKEN", TOKEN)
        .envs(env.iter().copied())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}\n{stderr}");
    stdout
}

/// `Url` on a new call: asked once the party answers, with Twilio's
/// parameters, signed; its `<Connect><Stream>` runs.
#[test]
fn a_placed_call_asks_its_url_for_twiml_when_answered() {
    let scratch = scratch_dir("calls-api-url");
    let agent_rtp = RtpPeer::bind();
    let agent = Agent::start(
        &scratch,
        "agent",
        &AgentScenario {
            behaviour: Behaviour::AnswerAndWait {
                rtp_port: agent_rtp.port(),
            },
            challenge: false,
            require: None,
            formats: &[(0, "PCMU/8000")],
        },
        SipTransport::Udp,
    );
    let bot = TwilioBot::start();
    let stream = format!("ws://{}/media", bot.addr);
    let server = common::http_server::HttpServer::start(move |_| {
        (
            200,
            format!("<Response><Connect><Stream url=\"{stream}\"/></Connect></Response>"),
        )
    });
    let recordings = scratch.join("recordings");
    let gateway = GatewayProcess::start(
        "calls-api-url",
        &config(&format!("ws://{}/media", bot.addr)).replace(
            &format!("auth_token = \"{TOKEN}\""),
            &format!(
                "auth_token = \"{TOKEN}\"\nrecording_dir = \"{}\"",
                recordings.display()
            ),
        ),
    );
    let api = api_addr(&gateway);
    let form = format!(
        "To={}&From=%2B15550100&Record=true&Url={}",
        url_encode(&format!("sip:agent@{}", agent.addr)),
        url_encode(&format!("http://{}/answer", server.addr))
    );
    let calls = format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json");
    let (status, call) = twilio_request(api, "POST", &calls, &form, LOGIN);
    assert_eq!(status, 201, "{call}");
    let sid = call["sid"].as_str().unwrap().to_string();
    let (_, start) = bot.wait_event("start", |_| true, Duration::from_secs(10));
    assert_eq!(start["start"]["callSid"], sid.as_str());
    let request = server.requests.lock().unwrap()[0].clone();
    let params: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(request.body.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(params["CallSid"], sid);
    assert_eq!(params["Direction"], "outbound-api");
    assert_eq!(params["CallStatus"], "in-progress");
    assert_eq!(params["From"], "+15550100");
    let signed_params: Vec<(String, String)> = params.into_iter().collect();
    let expected = switchboard_gateway::webhook::signature(
        TOKEN,
        &format!("http://{}/answer", server.addr),
        &signed_params,
    );
    assert_eq!(
        request.header("X-Twilio-Signature"),
        Some(expected.as_str())
    );

    // A second of the call, recorded.
    std::thread::sleep(Duration::from_secs(1));
    let (status, _) = twilio_request(api, "POST", &calls_path(&sid), "Status=completed", LOGIN);
    assert_eq!(status, 200);
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
    let call = wait_for_call_status(api, &calls_path(&sid), "completed", LOGIN);
    assert_eq!(call["status"], "completed");
    // Record=true: the call's stereo WAV is there.
    gateway.wait_for_log(&["call ended"], Duration::from_secs(5));
    let wavs: Vec<_> = std::fs::read_dir(&recordings)
        .expect("the recording directory was made")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "wav"))
        .collect();
    assert_eq!(wavs.len(), 1, "one recording");
    assert!(
        wavs[0].metadata().unwrap().len() > 44,
        "the recording has audio"
    );
    gateway.assert_no_panic();
}

/// A document posted to a live call replaces what it was doing: the bot
/// is told goodbye, the clip plays, and `<Hangup/>` ends the call.
#[test]
fn a_new_document_posted_to_a_live_call_replaces_the_bot() {
    let clip = common::clip::serve_clip(common::clip::tone_wav(8000, 1.0));
    let LiveCall {
        bot,
        gateway,
        api,
        caller,
        sid,
        _caller_rtp,
    } = call_the_bot("calls-api-redirect", "+12125550102");
    let doc = format!("<Response><Play>http://{clip}/tone.wav</Play><Hangup/></Response>");
    let (status, call) = twilio_request(
        api,
        "POST",
        &calls_path(&sid),
        &format!("Twiml={}", url_encode(&doc)),
        LOGIN,
    );
    assert_eq!(status, 200, "{call}");
    bot.wait_event("stop", |_| true, Duration::from_secs(3));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.wait_for_log(&["call ended", "TwiML <Hangup/>"], Duration::from_secs(3));
    gateway.wait_for_log(&["playing"], Duration::from_secs(1));
    gateway.assert_no_panic();
}
