//! Transfers to a human, end to end: sipp plays the caller and the agent
//! (a UAS on its own port), a Twilio Media Streams bot asks for the
//! transfer, and the audio is checked by content in both directions.

mod common;

use std::time::{Duration, Instant};

use common::agent::{check_proxy_authorization, Agent, AgentScenario, Behaviour};
use common::audio::{best_correlation, rms, speech_like};
use common::baresip::voice_like;
use common::gateway::{config_with, scratch_dir, GatewayProcess};
use common::http_server::HttpServer;
use common::rtp_peer::RtpPeer;
use common::sipp::{self, SipTransport, G711_OFFER};
use common::twilio_bot::{BotCommand, TwilioBot};
use serde_json::json;
use switchboard_media::g711::{ulaw_decode, ulaw_encode};

const PCMU_AGENT: &[(u8, &str)] = &[(0, "PCMU/8000"), (101, "telephone-event/8000")];

fn config(bot_url: &str, extra: &str) -> String {
    config_with(&format!(
        r#"
[dial]
allow = ['^sip:(agent|frontdesk)@127\.0\.0\.1[:;?]']

[[trunks]]
name = "loopback"
allow = ["127.0.0.1"]
routes = [{{ pattern = '^\+1\d{{10}}$', flow = "bot" }}]

[[flows]]
name = "bot"
bot = {{ kind = "twilio_stream", url = "{bot_url}", connect_timeout_ms = 2000 }}
on_failure = {{ hangup = 503 }}
{extra}
"#
    ))
    .replace(
        "jitter_depth_ms = 40",
        "jitter_depth_ms = 40\njitter_adaptive = false",
    )
}

fn dial_twiml(sip: &str, attributes: &str) -> serde_json::Value {
    let twiml = format!("<Response><Dial{attributes}>{sip}</Dial></Response>");
    json!({"event": "action", "name": "twiml", "body": twiml})
}

/// μ-law payloads received after `since`, decoded.
fn heard_since(peer: &RtpPeer, since: Instant) -> Vec<i16> {
    peer.received()
        .iter()
        .filter(|p| p.at >= since && p.payload_type == 0)
        .flat_map(|p| p.payload.iter().map(|b| ulaw_decode(*b)))
        .collect()
}

#[test]
fn bot_transfers_the_caller_to_an_agent_who_challenges_and_talks() {
    let scratch = scratch_dir("transfer-answer");
    let agent_rtp = RtpPeer::bind();
    let agent = Agent::start(
        &scratch,
        "agent",
        &AgentScenario {
            behaviour: Behaviour::Answer {
                rtp_port: agent_rtp.port(),
                hold_ms: 6000,
            },
            challenge: true,
            require: Some("X-Case: 42"),
            formats: PCMU_AGENT,
        },
        SipTransport::Udp,
    );
    let BotCall {
        bot,
        gateway,
        caller_rtp,
        caller,
    } = bot_call("transfer-answer", |config| config, None);
    let gateway_rtp = caller_rtp
        .wait_first_packet(Duration::from_secs(5))
        .expect("gateway RTP towards the caller");

    let action_sent = Instant::now();
    bot.send(BotCommand::Json(dial_twiml(
        &format!(
            "<Sip username=\"agent\" password=\"s3cret\">sip:agent@{}?X-Case=42</Sip>",
            agent.addr
        ),
        "",
    )));
    gateway.wait_for_log(&["transfer: INVITE sent"], Duration::from_secs(5));
    gateway.wait_for_log(&["transfer: bridged"], Duration::from_secs(10));
    let bridged_at = Instant::now();
    assert!(bridged_at - action_sent < Duration::from_secs(5));
    bot.wait_event("stop", |_| true, Duration::from_secs(3));
    bot.wait_closed(Duration::from_secs(3));

    // Both talk at once: the caller a speech-like signal, the agent a
    // different voice-like one.
    let from_caller = speech_like(3 * 8000);
    let from_agent: Vec<i16> = voice_like(8000, 3 * 8000);
    std::thread::scope(|scope| {
        scope.spawn(|| caller_rtp.stream_pcmu(gateway_rtp, &from_caller));
        let gateway_agent_rtp = agent_rtp
            .wait_first_packet(Duration::from_secs(3))
            .expect("the caller's audio reaches the agent");
        agent_rtp.stream_pcmu(gateway_agent_rtp, &from_agent[..20_000]);
    });
    std::thread::sleep(Duration::from_millis(300));
    let heard_by_caller = heard_since(&caller_rtp, bridged_at);
    let heard_by_agent = heard_since(&agent_rtp, bridged_at);
    let (caller_score, _) = best_correlation(
        &from_agent[8000..],
        &heard_by_caller,
        0..heard_by_caller.len(),
    );
    let (agent_score, _) = best_correlation(
        &from_caller[8000..],
        &heard_by_agent,
        0..heard_by_agent.len(),
    );
    assert!(
        caller_score > 0.95,
        "the caller hears the agent (correlation {caller_score:.3})"
    );
    assert!(
        agent_score > 0.95,
        "the agent hears the caller (correlation {agent_score:.3})"
    );
    gateway.wait_for_log(
        &["bridge relays RTP without decoding"],
        Duration::from_secs(1),
    );

    // The agent hangs up: the caller gets BYE.
    let messages = agent.messages();
    check_proxy_authorization(&messages);
    let agent_output = agent.join();
    sipp::assert_success(&agent_output, &scratch.join("agent"));
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    gateway.wait_for_log(
        &["call ended", "the transferred call ended"],
        Duration::from_secs(5),
    );
    gateway.assert_no_panic();
}

#[test]
fn busy_agent_reports_to_the_dial_action_which_hangs_up() {
    let scratch = scratch_dir("transfer-busy");
    let agent = Agent::start(
        &scratch,
        "agent",
        &AgentScenario {
            behaviour: Behaviour::Busy,
            challenge: false,
            require: None,
            formats: PCMU_AGENT,
        },
        SipTransport::Tcp,
    );
    let action = HttpServer::start(|_| (200, "<Response><Hangup/></Response>".to_string()));
    let bot = TwilioBot::start();
    let gateway = GatewayProcess::start(
        "transfer-busy",
        &config(&format!("ws://{}/media", bot.addr), ""),
    );
    let caller_rtp = RtpPeer::bind();
    let scenario = sipp::gateway_hangs_up(
        "+12125550100",
        &sipp::sdp_offer(caller_rtp.port(), G711_OFFER),
    );
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    let (_, start) = bot.wait_event("start", |_| true, Duration::from_secs(10));
    let call_sid = start["start"]["callSid"].as_str().unwrap().to_string();
    bot.send(BotCommand::Json(dial_twiml(
        &format!("<Sip>sip:agent@{};transport=tcp</Sip>", agent.addr),
        &format!(" action=\"http://{}/after-dial\"", action.addr),
    )));
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
    let requests = action.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(requests[0].body.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/after-dial");
    assert_eq!(form["DialCallStatus"], "busy");
    assert_eq!(form["DialSipResponseCode"], "486");
    assert_eq!(form["CallSid"], call_sid);
    assert_eq!(form["To"], "+12125550100");
    assert!(form["DialCallSid"].starts_with("CA"));
    assert!(!form["DialSipCallId"].is_empty());
    gateway.wait_for_log(
        &["call ended", "dial action hung up"],
        Duration::from_secs(5),
    );
    gateway.assert_no_panic();
}

#[test]
fn unanswered_transfer_returns_the_caller_to_the_bot() {
    let scratch = scratch_dir("transfer-noanswer");
    let agent = udp_agent(&scratch, "agent", Behaviour::NeverAnswers, PCMU_AGENT, None);
    let BotCall {
        bot,
        gateway,
        caller_rtp,
        caller,
    } = bot_call("transfer-noanswer", |config| config, None);
    caller_rtp
        .wait_first_packet(Duration::from_secs(5))
        .unwrap();
    bot.send(BotCommand::Json(dial_twiml(
        &format!("<Sip>sip:agent@{}</Sip>", agent.addr),
        " timeout=\"2\"",
    )));
    // While it rings the caller hears ringback: 440 + 480 Hz.
    gateway.wait_for_log(&["transfer: INVITE sent"], Duration::from_secs(5));
    let ringing_from = Instant::now() + Duration::from_millis(300);
    std::thread::sleep(Duration::from_millis(1500));
    let ringback = heard_since(&caller_rtp, ringing_from);
    assert!(
        rms(&ringback) > 1000.0,
        "ringback is heard (rms {})",
        rms(&ringback)
    );
    let crossings = ringback
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count() as f64
        / (ringback.len() as f64 / 8000.0);
    assert!(
        (800.0..1000.0).contains(&crossings),
        "a 440+480 Hz tone crosses zero ~920 times a second, not {crossings}"
    );

    let (_, result) = bot.wait_event(
        "action_result",
        |v| v["name"] == "dial",
        Duration::from_secs(5),
    );
    assert_eq!(result["ok"], false);
    let message = result["message"].as_str().unwrap();
    assert!(message.contains("no-answer"), "{message}");
    sipp::assert_success(&agent.join(), &scratch.join("agent"));

    // The bot speaks again and the caller hears it.
    assert_bot_heard_again(&bot, &caller_rtp);
    bot.send(BotCommand::Json(
        json!({"event": "action", "name": "hangup"}),
    ));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.assert_no_panic();
}

/// The flow's bot cannot be reached: `on_failure = { dial }` sends the
/// caller to a human within a second, and they talk.
#[test]
fn unreachable_bot_sends_the_caller_to_a_human() {
    let scratch = scratch_dir("transfer-onfailure");
    let agent_rtp = RtpPeer::bind();
    let agent = udp_agent(
        &scratch,
        "agent",
        Behaviour::AnswerAndWait {
            rtp_port: agent_rtp.port(),
        },
        PCMU_AGENT,
        None,
    );
    // A port nobody listens on: the bot's connection is refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gateway = GatewayProcess::start(
        "transfer-onfailure",
        &config(&format!("ws://{closed}/media"), "").replace(
            "on_failure = { hangup = 503 }",
            &format!("on_failure = {{ dial = \"sip:frontdesk@{}\" }}", agent.addr),
        ),
    );
    let caller_rtp = RtpPeer::bind();
    let scenario = sipp::caller_hangs_up(
        "+12125550100",
        &sipp::sdp_offer(caller_rtp.port(), G711_OFFER),
        4000,
    );
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    gateway.wait_for_log(&["transfer: bridged"], Duration::from_secs(5));
    let incoming = gateway.wait_for_log(&["incoming call"], Duration::from_secs(1));
    let dialing = gateway.wait_for_log(&["transfer: INVITE sent"], Duration::from_secs(1));
    let waited = log_time(&dialing) - log_time(&incoming);
    assert!(
        waited < 1.0,
        "the human was dialed {waited:.3} s after the call came in"
    );
    // The agent speaks first (the gateway learns nothing of the caller's
    // RTP before it does); the caller answers back.
    let from_agent = voice_like(8000, 16_000);
    let from_caller = speech_like(16_000);
    std::thread::scope(|scope| {
        scope.spawn(|| agent_rtp.stream_pcmu(agent.gateway_rtp(), &from_agent));
        let gateway_rtp = caller_rtp
            .wait_first_packet(Duration::from_secs(3))
            .expect("the agent's audio reaches the caller");
        caller_rtp.stream_pcmu(gateway_rtp, &from_caller[..12_000]);
    });
    let heard_by_caller = heard_since(&caller_rtp, Instant::now() - Duration::from_secs(10));
    let heard_by_agent = heard_since(&agent_rtp, Instant::now() - Duration::from_secs(10));
    let (to_caller, _) = best_correlation(
        &from_agent[4000..],
        &heard_by_caller,
        0..heard_by_caller.len(),
    );
    let (to_agent, _) = best_correlation(
        &from_caller[4000..],
        &heard_by_agent,
        0..heard_by_agent.len(),
    );
    assert!(
        to_caller > 0.95 && to_agent > 0.95,
        "{to_caller:.3} {to_agent:.3}"
    );
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
    gateway.wait_for_log(
        &["bot unreachable: on_failure dial"],
        Duration::from_secs(1),
    );
    gateway.assert_no_panic();
}

/// Seconds of the day of a log line's RFC 3339 timestamp.
fn log_time(line: &str) -> f64 {
    let time = line
        .split('T')
        .nth(1)
        .and_then(|t| t.split('Z').next())
        .unwrap();
    let mut parts = time.split(':');
    let hours: f64 = parts.next().unwrap().parse().unwrap();
    let minutes: f64 = parts.next().unwrap().parse().unwrap();
    let seconds: f64 = parts.next().unwrap().parse().unwrap();
    hours * 3600.0 + minutes * 60.0 + seconds
}

/// A bridged call with `hangupOnStar`: the caller's RFC 4733 `5` reaches
/// the agent through the relay, its `*` drops the agent (BYE) and brings
/// the caller back to the flow: a new bot session starts.
#[test]
fn star_drops_the_agent_and_returns_the_caller_to_the_bot() {
    let scratch = scratch_dir("transfer-star");
    let agent_rtp = RtpPeer::bind();
    let agent = udp_agent(
        &scratch,
        "agent",
        Behaviour::AnswerAndWait {
            rtp_port: agent_rtp.port(),
        },
        PCMU_AGENT,
        None,
    );
    let BotCall {
        bot,
        gateway,
        caller_rtp,
        caller,
    } = bot_call("transfer-star", |config| config, None);
    let gateway_rtp = caller_rtp
        .wait_first_packet(Duration::from_secs(5))
        .unwrap();
    bot.send(BotCommand::Json(dial_twiml(
        &format!("<Sip>sip:agent@{}</Sip>", agent.addr),
        " hangupOnStar=\"true\"",
    )));
    gateway.wait_for_log(&["transfer: bridged"], Duration::from_secs(10));
    bot.wait_closed(Duration::from_secs(3));
    caller_rtp.stream_pcmu(gateway_rtp, &speech_like(4000));
    // Key 5 crosses the relay as an RFC 4733 event (payload type 101 both sides).
    caller_rtp.press(gateway_rtp, 101, 5, 2000, 100_000);
    std::thread::sleep(Duration::from_millis(200));
    let events: Vec<u8> = agent_rtp
        .received()
        .iter()
        .filter(|p| p.payload_type == 101)
        .map(|p| p.payload[0])
        .collect();
    assert!(
        events.len() >= 4 && events.iter().all(|e| *e == 5),
        "the agent got the caller's key: {events:?}"
    );
    // And the agent's 7 reaches the caller.
    let gateway_agent_side = agent_rtp.wait_first_packet(Duration::from_secs(1)).unwrap();
    agent_rtp.press(gateway_agent_side, 101, 7, 3000, 200_000);
    std::thread::sleep(Duration::from_millis(200));
    let events: Vec<u8> = caller_rtp
        .received()
        .iter()
        .filter(|p| p.payload_type == 101)
        .map(|p| p.payload[0])
        .collect();
    assert!(
        events.len() >= 4 && events.iter().all(|e| *e == 7),
        "the caller got the agent's key: {events:?}"
    );
    // `*` ends the bridge: the agent gets BYE, the bot a new session.
    caller_rtp.press(gateway_rtp, 101, 10, 2010, 101_000);
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
    gateway.wait_for_log(&["hangupOnStar"], Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(5);
    while bot
        .log
        .lock()
        .unwrap()
        .events
        .iter()
        .filter(|(_, e)| e["event"] == "start")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "no second bot session");
        std::thread::sleep(Duration::from_millis(20));
    }
    gateway.wait_for_log(&["caller back with the bot"], Duration::from_secs(3));
    bot.send(BotCommand::Json(
        json!({"event": "action", "name": "hangup"}),
    ));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.assert_no_panic();
}

/// The agent's 183 with SDP: the caller hears its early media (instead of
/// ringback) before the 200 OK bridges them.
#[test]
fn early_media_reaches_the_caller_while_it_rings() {
    let scratch = scratch_dir("transfer-early");
    let agent_rtp = RtpPeer::bind();
    let agent = udp_agent(
        &scratch,
        "agent",
        Behaviour::EarlyMediaThenAnswer {
            rtp_port: agent_rtp.port(),
            early_ms: 2500,
        },
        PCMU_AGENT,
        None,
    );
    let BotCall {
        bot,
        gateway,
        caller_rtp,
        caller,
    } = bot_call("transfer-early", |config| config, None);
    caller_rtp
        .wait_first_packet(Duration::from_secs(5))
        .unwrap();
    bot.send(BotCommand::Json(dial_twiml(
        &format!("<Sip>sip:agent@{}</Sip>", agent.addr),
        "",
    )));
    gateway.wait_for_log(&["transfer: early media"], Duration::from_secs(5));
    let announcement = voice_like(8000, 12_000);
    let early_from = Instant::now();
    agent_rtp.stream_pcmu(agent.gateway_rtp(), &announcement);
    let bridged = gateway.wait_for_log(&["transfer: bridged"], Duration::from_secs(5));
    assert!(!bridged.is_empty());
    let heard = heard_since(&caller_rtp, early_from);
    let (score, _) = best_correlation(&announcement[2000..], &heard, 0..heard.len());
    assert!(
        score > 0.95,
        "the caller heard the early media ({score:.3})"
    );
    bot.wait_closed(Duration::from_secs(3));
    drop(caller_rtp);
    // The caller side ends: the gateway BYEs both.
    gateway.terminate();
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
}

/// A recorded call keeps recording through the bridge: caller left, agent
/// right (the bridge transcodes to get at the audio).
#[test]
fn recording_goes_on_through_the_bridge() {
    let scratch = scratch_dir("transfer-recording");
    let agent_rtp = RtpPeer::bind();
    let agent = udp_agent(
        &scratch,
        "agent",
        Behaviour::Answer {
            rtp_port: agent_rtp.port(),
            hold_ms: 4000,
        },
        PCMU_AGENT,
        None,
    );
    let bot = TwilioBot::start();
    let recordings = scratch.join("calls");
    let gateway = GatewayProcess::start(
        "transfer-recording",
        &config(
            &format!("ws://{}/media", bot.addr),
            &format!("recording = {{ dir = \"{}\" }}", recordings.display()),
        ),
    );
    let caller_rtp = RtpPeer::bind();
    let scenario = sipp::gateway_hangs_up(
        "+12125550100",
        &sipp::sdp_offer(caller_rtp.port(), G711_OFFER),
    );
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    bot.wait_event("start", |_| true, Duration::from_secs(10));
    let gateway_rtp = caller_rtp
        .wait_first_packet(Duration::from_secs(5))
        .unwrap();
    bot.send(BotCommand::Json(dial_twiml(
        &format!("<Sip>sip:agent@{}</Sip>", agent.addr),
        "",
    )));
    gateway.wait_for_log(&["bridge transcodes"], Duration::from_secs(10));
    let from_caller = speech_like(2 * 8000);
    let from_agent = voice_like(8000, 2 * 8000);
    std::thread::scope(|scope| {
        scope.spawn(|| caller_rtp.stream_pcmu(gateway_rtp, &from_caller));
        agent_rtp.stream_pcmu(agent.gateway_rtp(), &from_agent);
    });
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.wait_for_log(&["recording saved"], Duration::from_secs(5));
    let file = std::fs::read_dir(&recordings)
        .unwrap()
        .next()
        .expect("a recording")
        .unwrap()
        .path();
    let wav = common::baresip::Wav::read(&file);
    assert_eq!((wav.rate, wav.channels), (8000, 2));
    let left: Vec<i16> = wav.samples.iter().step_by(2).copied().collect();
    let right: Vec<i16> = wav.samples.iter().skip(1).step_by(2).copied().collect();
    let (caller_score, _) = best_correlation(&from_caller[4000..], &left, 0..left.len());
    let (agent_score, _) = best_correlation(&from_agent[4000..], &right, 0..right.len());
    assert!(caller_score > 0.9, "left is the caller ({caller_score:.3})");
    assert!(agent_score > 0.9, "right is the agent ({agent_score:.3})");
    gateway.assert_no_panic();
}

/// The bot speaks and the caller hears it: after a failed transfer its
/// audio plays again.
fn assert_bot_heard_again(bot: &TwilioBot, caller_rtp: &RtpPeer) {
    let spoken = speech_like(8000);
    let back_at = Instant::now();
    bot.send(BotCommand::Media {
        ulaw: spoken.iter().map(|s| ulaw_encode(*s)).collect(),
        chunk: 160,
    });
    std::thread::sleep(Duration::from_millis(1300));
    let heard = heard_since(caller_rtp, back_at);
    let (score, _) = best_correlation(&spoken, &heard, 0..heard.len());
    assert!(
        score > 0.95,
        "the bot's audio reaches the caller again ({score:.3})"
    );
}

/// A sipp agent on UDP that answers `formats` and never challenges.
fn udp_agent(
    scratch: &std::path::Path,
    name: &str,
    behaviour: Behaviour,
    formats: &'static [(u8, &'static str)],
    require: Option<&'static str>,
) -> Agent {
    let scenario = AgentScenario {
        behaviour,
        challenge: false,
        require,
        formats,
    };
    Agent::start(scratch, name, &scenario, SipTransport::Udp)
}

/// A call to the bot flow: the Twilio Media Streams bot, the gateway
/// serving it (its config passed through `edit`) and the sipp caller,
/// which answers the gateway's BYE, or sends its own after `hangs_up_ms`.
struct BotCall {
    bot: TwilioBot,
    gateway: GatewayProcess,
    caller_rtp: RtpPeer,
    caller: std::thread::JoinHandle<std::process::Output>,
}

/// Starts a [`BotCall`] and returns once the bot has the call.
fn bot_call(name: &str, edit: impl FnOnce(String) -> String, hangs_up_ms: Option<u64>) -> BotCall {
    let bot = TwilioBot::start();
    let gateway =
        GatewayProcess::start(name, &edit(config(&format!("ws://{}/media", bot.addr), "")));
    let caller_rtp = RtpPeer::bind();
    let sdp = sipp::sdp_offer(caller_rtp.port(), G711_OFFER);
    let scenario = match hangs_up_ms {
        Some(ms) => sipp::caller_hangs_up("+12125550100", &sdp, ms),
        None => sipp::gateway_hangs_up("+12125550100", &sdp),
    };
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    bot.wait_event("start", |_| true, Duration::from_secs(10));
    BotCall {
        bot,
        gateway,
        caller_rtp,
        caller,
    }
}

/// The form of the single request `action` received.
fn only_form(action: &HttpServer) -> std::collections::HashMap<String, String> {
    let requests = action.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "{requests:?}");
    url::form_urlencoded::parse(requests[0].body.as_bytes())
        .into_owned()
        .collect()
}

/// Waits until `action` has received `count` requests.
fn wait_requests(action: &HttpServer, count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while action.requests.lock().unwrap().len() < count {
        assert!(
            Instant::now() < deadline,
            "the dial action was not requested"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `timeLimit` ends a bridge: the agent gets BYE after the limit, the
/// action hears `completed` with the duration, and its `<Hangup/>` ends the
/// caller's side.
#[test]
fn time_limit_ends_the_bridge_and_the_action_hears_completed() {
    let scratch = scratch_dir("transfer-timelimit");
    let agent_rtp = RtpPeer::bind();
    let agent = udp_agent(
        &scratch,
        "agent",
        Behaviour::AnswerAndWait {
            rtp_port: agent_rtp.port(),
        },
        PCMU_AGENT,
        Some("From: .*sip:\\+15550001111@"),
    );
    let action = HttpServer::start(|_| (200, "<Response><Hangup/></Response>".to_string()));
    let BotCall {
        bot,
        gateway,
        caller_rtp: _caller_rtp,
        caller,
    } = bot_call("transfer-timelimit", |config| config, None);
    bot.send(BotCommand::Json(dial_twiml(
        &format!("<Sip>sip:agent@{}</Sip>", agent.addr),
        &format!(
            " timeLimit=\"2\" callerId=\"+15550001111\" action=\"http://{}/after\"",
            action.addr
        ),
    )));
    gateway.wait_for_log(&["transfer: bridged"], Duration::from_secs(5));
    let bridged_at = Instant::now();
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
    let bye_after = bridged_at.elapsed();
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(6)).contains(&bye_after),
        "the agent got BYE {bye_after:?} after the bridge, not about 2 s"
    );
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    let form = only_form(&action);
    assert_eq!(form["DialCallStatus"], "completed");
    assert_eq!(form["DialSipResponseCode"], "200");
    assert!(
        ["1", "2", "3"].contains(&form["DialCallDuration"].as_str()),
        "{form:?}"
    );
    gateway.assert_no_panic();
}

/// The caller hangs up while bridged: Twilio still requests the action
/// URL (`DialCallStatus=completed`, `CallStatus=completed`); so do we, and
/// the agent gets BYE.
#[test]
fn caller_hanging_up_a_bridge_still_tells_the_dial_action() {
    let scratch = scratch_dir("transfer-callerbye");
    let agent_rtp = RtpPeer::bind();
    let agent = udp_agent(
        &scratch,
        "agent",
        Behaviour::AnswerAndWait {
            rtp_port: agent_rtp.port(),
        },
        PCMU_AGENT,
        None,
    );
    let action = HttpServer::start(|_| (200, "<Response><Hangup/></Response>".to_string()));
    let BotCall {
        bot,
        gateway,
        caller_rtp: _caller_rtp,
        caller,
    } = bot_call("transfer-callerbye", |config| config, Some(3000));
    bot.send(BotCommand::Json(dial_twiml(
        &format!("<Sip>sip:agent@{}</Sip>", agent.addr),
        &format!(" action=\"http://{}/after\"", action.addr),
    )));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
    wait_requests(&action, 1, Duration::from_secs(5));
    let form = only_form(&action);
    assert_eq!(form["DialCallStatus"], "completed", "{form:?}");
    assert_eq!(form["CallStatus"], "completed", "{form:?}");
    assert_eq!(form["DialSipResponseCode"], "200");
    gateway.wait_for_log(&["call ended"], Duration::from_secs(5));
    gateway.assert_no_panic();
}

/// Nobody answers a dial with an `action`: the URL hears `no-answer` (the
/// CANCEL's 487) and its TwiML runs.
#[test]
fn unanswered_dial_reports_no_answer_to_the_action() {
    let scratch = scratch_dir("transfer-noanswer-action");
    let agent = udp_agent(&scratch, "agent", Behaviour::NeverAnswers, PCMU_AGENT, None);
    let action = HttpServer::start(|_| (200, "<Response><Hangup/></Response>".to_string()));
    let BotCall {
        bot,
        gateway,
        caller_rtp: _caller_rtp,
        caller,
    } = bot_call("transfer-noanswer-action", |config| config, None);
    bot.send(BotCommand::Json(dial_twiml(
        &format!("<Sip>sip:agent@{}</Sip>", agent.addr),
        &format!(" timeout=\"1\" action=\"http://{}/after\"", action.addr),
    )));
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    let form = only_form(&action);
    assert_eq!(form["DialCallStatus"], "no-answer", "{form:?}");
    assert_eq!(form["DialSipResponseCode"], "487", "{form:?}");
    gateway.wait_for_log(&["dial action hung up"], Duration::from_secs(5));
    gateway.assert_no_panic();
}

/// A busy agent and no `action`: the bot hears `busy` in its
/// `action_result` and its audio reaches the caller again.
#[test]
fn busy_agent_without_action_returns_the_caller_to_the_bot() {
    let scratch = scratch_dir("transfer-busy-bot");
    let agent = udp_agent(&scratch, "agent", Behaviour::Busy, PCMU_AGENT, None);
    let BotCall {
        bot,
        gateway,
        caller_rtp,
        caller,
    } = bot_call("transfer-busy-bot", |config| config, None);
    bot.send(BotCommand::Json(dial_twiml(
        &format!("<Sip>sip:agent@{}</Sip>", agent.addr),
        "",
    )));
    let (_, result) = bot.wait_event(
        "action_result",
        |v| v["name"] == "dial",
        Duration::from_secs(5),
    );
    assert_eq!(result["ok"], false);
    let message = result["message"].as_str().unwrap();
    assert!(message.contains("busy: 486"), "{message}");
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
    assert_bot_heard_again(&bot, &caller_rtp);
    bot.send(BotCommand::Json(
        json!({"event": "action", "name": "hangup"}),
    ));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.assert_no_panic();
}

/// RFC 4733 keys cross a transcoding bridge (caller PCMU, agent PCMA) both
/// ways: each side's events are taken out of its pipeline and sent on as
/// events, not as tones.
#[test]
fn dtmf_crosses_a_transcoding_bridge_both_ways() {
    let scratch = scratch_dir("transfer-dtmf-transcode");
    let agent_rtp = RtpPeer::bind();
    let agent = udp_agent(
        &scratch,
        "agent",
        Behaviour::Answer {
            rtp_port: agent_rtp.port(),
            hold_ms: 3000,
        },
        &[(8, "PCMA/8000"), (101, "telephone-event/8000")],
        None,
    );
    let BotCall {
        bot,
        gateway,
        caller_rtp,
        caller,
    } = bot_call("transfer-dtmf-transcode", |config| config, None);
    let gateway_rtp = caller_rtp
        .wait_first_packet(Duration::from_secs(5))
        .unwrap();
    bot.send(BotCommand::Json(dial_twiml(
        &format!("<Sip>sip:agent@{}</Sip>", agent.addr),
        "",
    )));
    gateway.wait_for_log(&["bridge transcodes"], Duration::from_secs(10));
    let gateway_agent_side = agent_rtp.wait_first_packet(Duration::from_secs(2)).unwrap();
    let keys_at = |peer: &RtpPeer| -> Vec<u8> {
        peer.received()
            .iter()
            .filter(|p| p.payload_type == 101)
            .map(|p| p.payload[0])
            .collect()
    };
    caller_rtp.press(gateway_rtp, 101, 5, 2000, 100_000);
    agent_rtp.press(gateway_agent_side, 101, 7, 3000, 200_000);
    let deadline = Instant::now() + Duration::from_secs(2);
    while (keys_at(&agent_rtp).is_empty() || keys_at(&caller_rtp).is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (to_agent, to_caller) = (keys_at(&agent_rtp), keys_at(&caller_rtp));
    assert!(
        !to_agent.is_empty() && to_agent.iter().all(|e| *e == 5),
        "the agent got the caller's key: {to_agent:?}"
    );
    assert!(
        !to_caller.is_empty() && to_caller.iter().all(|e| *e == 7),
        "the caller got the agent's key: {to_caller:?}"
    );
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.assert_no_panic();
}

/// RFC 3263 failover: the target's SRV records name two agents; the first
/// (priority 10) answers 503, so the same dial goes on to the second
/// (priority 20), which answers and talks until it hangs up.
#[test]
fn a_503_moves_the_dial_to_the_targets_next_srv_record() {
    let scratch = scratch_dir("transfer-srv-failover");
    let down = udp_agent(&scratch, "down", Behaviour::Unavailable, PCMU_AGENT, None);
    let agent_rtp = RtpPeer::bind();
    let up = udp_agent(
        &scratch,
        "up",
        Behaviour::Answer {
            rtp_port: agent_rtp.port(),
            hold_ms: 1000,
        },
        PCMU_AGENT,
        None,
    );
    let up_addr = up.addr.to_string();
    let dns = common::dns::DnsServer::start(vec![
        (
            "_sip._udp.agents.test.",
            10,
            0,
            down.addr.port(),
            "down.agents.test.",
        ),
        (
            "_sip._udp.agents.test.",
            20,
            0,
            up.addr.port(),
            "up.agents.test.",
        ),
    ]);
    let dns_server = dns.addr;
    let BotCall {
        bot,
        gateway,
        caller,
        caller_rtp: _caller_rtp,
    } = bot_call(
        "transfer-srv-failover",
        |config| {
            config
                .replace(
                    "[sip]\n",
                    &format!("[sip]\ndns_servers = [\"{dns_server}\"]\n"),
                )
                .replace(
                    r"allow = ['^sip:(agent|frontdesk)@127\.0\.0\.1[:;?]']",
                    r"allow = ['^sip:agent@agents\.test$']",
                )
        },
        None,
    );
    bot.send(BotCommand::Json(dial_twiml(
        "<Sip>sip:agent@agents.test</Sip>",
        "",
    )));
    sipp::assert_success(&down.join(), &scratch.join("down"));
    sipp::assert_success(&up.join(), &scratch.join("up"));
    gateway.wait_for_log(
        &["trying the target's next address", &up_addr],
        Duration::from_secs(2),
    );
    gateway.wait_for_log(&["transfer: bridged"], Duration::from_secs(2));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.assert_no_panic();
}

/// The agent puts the caller on hold (a re-INVITE with `sendonly`, offering
/// PCMU and events): our answer mirrors it (`recvonly`) and holds only the
/// bridge's codec; the bridge lives on until the agent hangs up.
#[test]
fn an_agent_on_hold_gets_an_answer_that_mirrors_its_offer() {
    let scratch = scratch_dir("transfer-hold");
    let agent_rtp = RtpPeer::bind();
    let agent = udp_agent(
        &scratch,
        "agent",
        Behaviour::AnswerThenHold {
            rtp_port: agent_rtp.port(),
            hold_ms: 500,
        },
        PCMU_AGENT,
        None,
    );
    let BotCall {
        bot,
        gateway,
        caller,
        caller_rtp: _caller_rtp,
    } = bot_call("transfer-hold", |config| config, None);
    bot.send(BotCommand::Json(dial_twiml(
        &format!("<Sip>sip:agent@{}</Sip>", agent.addr),
        "",
    )));
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.wait_for_log(&["transfer: bridged"], Duration::from_secs(1));
    gateway.assert_no_panic();
}
