//! A call routed to a bot speaking Twilio Media Streams: caller audio reaches
//! the bot byte-exact, bot audio reaches the caller, `clear` stops playout,
//! marks come back after playback, and hang-up closes the bot.

mod common;

use std::time::{Duration, Instant};

use common::audio::{best_correlation, rms, speech_like};
use common::gateway::{config_with, GatewayProcess};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, SipTransport, G711_OFFER};
use common::twilio_bot::{BotCommand, TwilioBot};
use serde_json::json;
use switchboard_media::g711::{ulaw_decode, ulaw_encode};

fn twilio_config(url: &str) -> String {
    config_with(&format!(
        r#"
[[trunks]]
name = "loopback"
allow = ["127.0.0.1"]
routes = [{{ pattern = '^\+1\d{{10}}$', flow = "bot" }}]

[[flows]]
name = "bot"
bot = {{ kind = "twilio_stream", url = "{url}", connect_timeout_ms = 2000 }}
parameters = {{ language = "en", tenant = "acme" }}
on_failure = {{ hangup = 503 }}
"#
    ))
    // These tests compare the caller's audio byte for byte; an adaptive
    // buffer may skip a frame while it settles from 40 ms to its target.
    .replace(
        "jitter_depth_ms = 40",
        "jitter_depth_ms = 40\njitter_adaptive = false",
    )
}

#[test]
fn twilio_bot_hears_the_caller_and_the_caller_hears_the_bot() {
    let bot = TwilioBot::start();
    let gateway = GatewayProcess::start(
        "twilio",
        &twilio_config(&format!("ws://{}/media", bot.addr)),
    );
    let peer = RtpPeer::bind();
    let scenario = sipp::caller_hangs_up(
        "+12125550100",
        &sipp::sdp_offer(peer.port(), G711_OFFER),
        9000,
    );
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

    let (_, start) = bot.wait_event("start", |_| true, Duration::from_secs(10));
    assert_eq!(start["start"]["mediaFormat"]["encoding"], "audio/x-mulaw");
    assert_eq!(start["start"]["mediaFormat"]["sampleRate"], 8000);
    assert_eq!(start["start"]["customParameters"]["tenant"], "acme");
    bot.wait_event("connected", |_| true, Duration::from_secs(1));

    let gateway_rtp = peer
        .wait_first_packet(Duration::from_secs(10))
        .expect("gateway RTP");
    let sent = speech_like(2 * 8000);
    let mark_delay = std::thread::scope(|scope| {
        scope.spawn(|| peer.stream_pcmu(gateway_rtp, &sent));
        // While the caller talks, the bot speaks: 1.5 s in odd-sized chunks, then a mark.
        let reply: Vec<u8> = speech_like(12_000)
            .iter()
            .map(|s| ulaw_encode(s / 2))
            .collect();
        bot.send(BotCommand::Media {
            ulaw: reply,
            chunk: 333,
        });
        let mark_sent = Instant::now();
        bot.send(BotCommand::Mark("reply-1".into()));
        let (mark_back, _) = bot.wait_event(
            "mark",
            |v| v["mark"]["name"] == "reply-1",
            Duration::from_secs(5),
        );
        mark_back.duration_since(mark_sent)
    });
    assert!(
        mark_delay >= Duration::from_millis(1300),
        "mark came back after {mark_delay:?}, before its 1.5 s of audio could have played"
    );

    // The caller's audio reached the bot unchanged: PCMU in, μ-law out at 8 kHz.
    // The jitter buffer still holds the last packets for a moment.
    std::thread::sleep(Duration::from_millis(300));
    let inbound = bot.log.lock().unwrap().inbound_ulaw.clone();
    let sent_ulaw: Vec<u8> = sent.iter().map(|s| ulaw_encode(*s)).collect();
    let start_at = inbound
        .windows(160)
        .position(|window| window == &sent_ulaw[..160])
        .expect("the caller's first packet reached the bot byte-exact");
    let arrived = &inbound[start_at..inbound.len().min(start_at + sent_ulaw.len())];
    assert_eq!(
        arrived.len(),
        sent_ulaw.len(),
        "all the caller's audio reached the bot"
    );
    // Compare decoded values: μ-law has two codes for zero (0x7f, 0xff).
    let differing: Vec<usize> = (0..arrived.len())
        .filter(|i| ulaw_decode(arrived[*i]) != ulaw_decode(sent_ulaw[*i]))
        .collect();
    assert!(
        differing.is_empty(),
        "caller audio changed on its way to the bot: {} bytes differ, first at {:?}",
        differing.len(),
        &differing[..differing.len().min(10)]
    );

    // The caller heard the bot.
    let heard = peer.received_pcmu();
    let bot_audio: Vec<i16> = speech_like(12_000)
        .iter()
        .map(|s| ulaw_decode(ulaw_encode(s / 2)))
        .collect();
    let (score, _) = best_correlation(&bot_audio, &heard, 0..heard.len());
    assert!(
        score > 0.95,
        "caller did not hear the bot (correlation {score:.3})"
    );

    // A long answer, interrupted: after `clear` the caller hears silence within a frame or two.
    let long: Vec<u8> = speech_like(80_000)
        .iter()
        .map(|s| ulaw_encode(*s))
        .collect();
    bot.send(BotCommand::Media {
        ulaw: long,
        chunk: 160,
    });
    std::thread::sleep(Duration::from_millis(600));
    bot.send(BotCommand::Mark("after-clear".into()));
    let cleared_at = Instant::now();
    bot.send(BotCommand::Clear);
    let (mark_back, _) = bot.wait_event(
        "mark",
        |v| v["mark"]["name"] == "after-clear",
        Duration::from_secs(2),
    );
    assert!(
        mark_back.duration_since(cleared_at) < Duration::from_millis(500),
        "a cleared mark is returned at once"
    );
    std::thread::sleep(Duration::from_millis(300));
    let after: Vec<i16> = peer
        .received()
        .iter()
        .filter(|p| p.at > cleared_at + Duration::from_millis(100))
        .flat_map(|p| p.payload.iter().map(|b| ulaw_decode(*b)))
        .collect();
    assert!(after.len() >= 160, "RTP keeps flowing after clear");
    assert!(
        rms(&after) < 50.0,
        "bot audio still playing after clear (rms {})",
        rms(&after)
    );

    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    bot.wait_event("stop", |_| true, Duration::from_secs(5));
    bot.wait_closed(Duration::from_secs(5));
    gateway.wait_for_log(&["call ended", "caller hung up"], Duration::from_secs(5));
    gateway.assert_no_panic();
}

#[test]
fn bot_closing_the_socket_hangs_up_the_caller() {
    let bot = TwilioBot::start();
    let gateway = GatewayProcess::start(
        "twilio-close",
        &twilio_config(&format!("ws://{}/media", bot.addr)),
    );
    let peer = RtpPeer::bind();
    let scenario =
        sipp::gateway_hangs_up("+12125550100", &sipp::sdp_offer(peer.port(), G711_OFFER));
    let dir = gateway.dir.clone();
    let target = gateway.tcp;
    let caller = std::thread::spawn(move || {
        sipp::run(
            &dir,
            "call",
            &scenario,
            target,
            SipTransport::Tcp,
            "127.0.0.1",
        )
    });
    bot.wait_event("start", |_| true, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    bot.send(BotCommand::Close);
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    gateway.wait_for_log(&["call ended", "bot closed"], Duration::from_secs(5));
}

#[test]
fn unreachable_bot_rejects_with_the_flows_on_failure_status() {
    // Nothing listens here: bind, note the port, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gateway = GatewayProcess::start(
        "twilio-unreachable",
        &twilio_config(&format!("ws://127.0.0.1:{port}/media")),
    );
    let scenario = sipp::rejected("+12125550100", &sipp::sdp_offer(4000, G711_OFFER), 503);
    let output = sipp::run(
        &gateway.dir,
        "call",
        &scenario,
        gateway.udp,
        SipTransport::Udp,
        "127.0.0.1",
    );
    sipp::assert_success(&output, &gateway.dir);
    let line = gateway.wait_for_log(&["bot unreachable"], Duration::from_secs(5));
    assert!(
        line.contains("flow=bot") || line.contains("flow=\"bot\"") || line.contains("bot"),
        "{line}"
    );
}

#[test]
fn sip_info_dtmf_reaches_the_bot_once() {
    use common::raw_sip::{header, status, RawSip};
    let bot = TwilioBot::start();
    let gateway = GatewayProcess::start(
        "twilio-dtmf",
        &twilio_config(&format!("ws://{}/media", bot.addr)),
    );
    let sip = RawSip::new(gateway.udp);
    let invite = sip.request(
        "INVITE",
        "+12125550100",
        "dtmf-1",
        1,
        "Content-Type: application/sdp\r\n",
        &sipp::sdp_offer(4000, G711_OFFER),
    );
    sip.send(&invite);
    let ok = sip
        .wait_for(|m| status(m) == Some(200), Duration::from_secs(5))
        .expect("answered");
    let to = header(&ok, "To").unwrap().to_string();
    let in_dialog = |method: &str, cseq: u32, extra: &str, body: &str| {
        sip.request(method, "+12125550100", "dtmf-1", cseq, extra, body)
            .replace(
                &format!("To: <sip:+12125550100@{}>", gateway.udp),
                &format!("To: {to}"),
            )
    };
    sip.send(&in_dialog("ACK", 1, "", ""));
    for (cseq, digit) in [(2, "5"), (3, "11")] {
        let info = in_dialog(
            "INFO",
            cseq,
            "Content-Type: application/dtmf-relay\r\n",
            &format!("Signal={digit}\r\nDuration=160\r\n"),
        );
        sip.send(&info);
        // A retransmission of the same INFO must not repeat the digit.
        sip.send(&info);
        sip.wait_for(
            |m| status(m) == Some(200) && m.contains(&format!("CSeq: {cseq} INFO")),
            Duration::from_secs(3),
        )
        .expect("INFO answered");
    }
    bot.wait_event(
        "dtmf",
        |v| v["dtmf"]["digit"] == "#",
        Duration::from_secs(3),
    );
    let digits: Vec<String> = bot
        .log
        .lock()
        .unwrap()
        .events
        .iter()
        .filter(|(_, v)| v["event"] == "dtmf")
        .map(|(_, v)| v["dtmf"]["digit"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(digits, vec!["5", "#"]);
}

/// sipp plays RFC 4733 events from its own media socket (the pcaps Debian
/// ships: marker on the first packet, end packet sent three times): the bot
/// receives exactly those digits, once each, in order.
#[test]
fn rfc4733_digits_from_sipp_reach_the_bot_once() {
    let bot = TwilioBot::start();
    let gateway = GatewayProcess::start(
        "twilio-rfc4733",
        &twilio_config(&format!("ws://{}/media", bot.addr)),
    );
    let scenario = sipp::caller_sends_dtmf("+12125550100", &["1", "5", "pound", "9"]);
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
    bot.wait_event("stop", |_| true, Duration::from_secs(5));
    let digits: Vec<String> = bot
        .log
        .lock()
        .unwrap()
        .events
        .iter()
        .filter(|(_, v)| v["event"] == "dtmf")
        .map(|(_, v)| v["dtmf"]["digit"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(digits, vec!["1", "5", "#", "9"]);
}

#[test]
fn voiceflow_actions_are_parsed_delivered_and_answered() {
    let bot = TwilioBot::start();
    let gateway = GatewayProcess::start(
        "twilio-actions",
        &twilio_config(&format!("ws://{}/media", bot.addr)),
    );
    let peer = RtpPeer::bind();
    let scenario =
        sipp::gateway_hangs_up("+12125550100", &sipp::sdp_offer(peer.port(), G711_OFFER));
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    bot.wait_event("start", |_| true, Duration::from_secs(10));
    let twiml = "<Response><Dial callerId=\"+12125550199\"><Sip>sip:agent@pbx.example;transport=tcp</Sip></Dial></Response>";
    bot.send(BotCommand::Json(
        json!({"event": "action", "name": "twiml", "body": twiml}),
    ));
    let (_, result) = bot.wait_event("action_result", |_| true, Duration::from_secs(3));
    assert_eq!(result["name"], "dial");
    // No [dial] allow in this config: the toll-fraud guard refuses every
    // target, and no INVITE leaves.
    assert_eq!(result["ok"], false);
    assert!(
        result["message"]
            .as_str()
            .is_some_and(|m| m.contains("not an allowed dial target")),
        "{result}"
    );
    gateway.wait_for_log(
        &[
            "dial refused",
            "[dial] allow",
            "sip:agent@pbx.example;transport=tcp",
        ],
        Duration::from_secs(2),
    );
    // forward-call with a body given as a JSON string, as Voiceflow sends it.
    bot.send(BotCommand::Json(
        json!({"event": "action", "name": "forward-call",
        "body": "{\"number\":\"sip:frontdesk@pbx.example\"}"}),
    ));
    bot.wait_event(
        "action_result",
        |v| v["sequenceNumber"] != result["sequenceNumber"],
        Duration::from_secs(3),
    );
    // Broken TwiML is refused by name, and the call goes on.
    bot.send(BotCommand::Json(
        json!({"event": "action", "name": "twiml", "body": "<Response><Dial>"}),
    ));
    let (_, refused) = bot.wait_event(
        "action_result",
        |v| v["message"].as_str().is_some_and(|m| m.contains("TwiML")),
        Duration::from_secs(3),
    );
    assert_eq!(refused["ok"], false);
    // A hangup action ends the call: BYE to the caller.
    bot.send(BotCommand::Json(
        json!({"event": "action", "name": "hangup", "body": {"reason": "done"}}),
    ));
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    gateway.wait_for_log(&["call ended", "bot hung up: done"], Duration::from_secs(3));
}

/// A bot sending a message beyond the connectors' 1 MiB cap is a failed
/// bot: the call ends (here by `on_failure`), nothing buffers megabytes.
#[test]
fn an_oversized_bot_message_fails_the_session() {
    let bot = TwilioBot::start();
    let gateway = GatewayProcess::start(
        "twilio-oversized",
        &twilio_config(&format!("ws://{}/media", bot.addr)),
    );
    let peer = RtpPeer::bind();
    let caller = sipp::spawn_udp_call(
        &gateway,
        sipp::gateway_hangs_up("+12125550100", &sipp::sdp_offer(peer.port(), G711_OFFER)),
    );
    bot.wait_event("start", |_| true, Duration::from_secs(10));
    let huge = "x".repeat(2 << 20);
    bot.send(BotCommand::Json(
        serde_json::json!({"event": "mark", "mark": {"name": huge}}),
    ));
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    gateway.wait_for_log(&["call ended"], Duration::from_secs(5));
    gateway.wait_for_log(&["Message too long"], Duration::from_secs(1));
    gateway.assert_no_panic();
}
