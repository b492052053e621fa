//! The generic WebSocket bot through the real binary: the start message,
//! caller audio at the declared 16 kHz (checked by a tone's frequency), bot
//! audio to the caller, clear, a TwiML transfer action answered, the bot's
//! hang-up, and the flow's `reconnect_once` after a mid-call drop.

mod common;

use std::time::{Duration, Instant};

use common::audio::rms;
use common::gateway::{config_with, GatewayProcess};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, SipTransport, G711_OFFER};
use common::ws_bot::{crossings_per_second, from_s16le, s16le, sine, Received, WsBot};
use serde_json::json;

fn config(url: &str, reconnect_once: bool) -> String {
    config_with(&format!(
        r#"
[[trunks]]
name = "loopback"
allow = ["127.0.0.1"]
routes = [{{ pattern = ".*", flow = "own-bot" }}]

[[flows]]
name = "own-bot"
bot = {{ kind = "websocket", url = "{url}", sample_rate = 16000 }}
parameters = {{ tenant = "acme" }}
reconnect_once = {reconnect_once}
on_failure = {{ hangup = 480 }}
"#
    ))
}

/// Everything the bot received as binary, as 16-bit samples.
fn caller_audio_at_bot(ws: &WsBot) -> Vec<i16> {
    let log = ws.log.lock().unwrap();
    let bytes: Vec<u8> = log
        .messages
        .iter()
        .filter_map(|(_, m)| match m {
            Received::Binary(data) => Some(data.clone()),
            Received::Text(_) => None,
        })
        .flatten()
        .collect();
    from_s16le(&bytes)
}

#[test]
fn websocket_bot_call_end_to_end() {
    let ws = WsBot::start();
    let gateway = GatewayProcess::start(
        "websocket",
        &config(&format!("ws://{}/bot", ws.addr), false),
    );
    let peer = RtpPeer::bind();
    let scenario = sipp::gateway_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER));
    let (dir, target) = (gateway.dir.clone(), gateway.tcp);
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

    let (_, start) = ws.wait_text("event", "start", Duration::from_secs(10));
    assert_eq!(start["sampleRate"], 16000);
    assert_eq!(start["encoding"], "pcm_s16le");
    assert_eq!(start["flow"], "own-bot");
    assert_eq!(start["to"], "100");
    assert_eq!(start["parameters"]["tenant"], "acme");

    // The caller's 440 Hz reaches the bot at 16 kHz: 880 crossings/s.
    let gateway_rtp = peer
        .wait_first_packet(Duration::from_secs(10))
        .expect("answered");
    peer.stream_pcmu(gateway_rtp, &sine(440.0, 8000, 8000, 12000.0));
    std::thread::sleep(Duration::from_millis(200));
    let loud: Vec<i16> = caller_audio_at_bot(&ws)
        .chunks(320)
        .filter(|c| rms(c) > 2000.0)
        .flatten()
        .copied()
        .collect();
    assert!(loud.len() >= 12_000, "bot got {} loud samples", loud.len());
    let rate = crossings_per_second(&loud, 16_000);
    assert!(
        (rate - 880.0).abs() < 40.0,
        "bot hears {rate:.0} crossings/s at 16 kHz"
    );

    // 3 s of 600 Hz from the bot at 16 kHz, in odd-sized messages; clear after ~0.5 s.
    let answer = s16le(&sine(600.0, 16_000, 48_000, 10_000.0));
    for chunk in answer.chunks(1001) {
        ws.send_binary(chunk.to_vec());
    }
    std::thread::sleep(Duration::from_millis(500));
    let cleared = Instant::now();
    ws.send_json(json!({"event": "clear"}));
    std::thread::sleep(Duration::from_millis(300));
    let heard: Vec<i16> = peer
        .received_pcmu()
        .chunks(160)
        .filter(|c| rms(c) > 2000.0)
        .flatten()
        .copied()
        .collect();
    let rate = crossings_per_second(&heard, 8000);
    assert!(
        (rate - 1200.0).abs() < 60.0,
        "caller hears {rate:.0} crossings/s, expected 1200"
    );
    let after: Vec<i16> = peer
        .received()
        .iter()
        .filter(|p| p.at > cleared + Duration::from_millis(60))
        .flat_map(|p| {
            p.payload
                .iter()
                .map(|b| switchboard_media::g711::ulaw_decode(*b))
        })
        .collect();
    assert!(
        after.len() >= 160 && rms(&after) < 50.0,
        "playout went on after clear"
    );

    // A Voiceflow-style TwiML transfer is parsed and answered: refused, as
    // this config allows no dial target.
    let twiml = "<Response><Dial><Sip>sip:agent@127.0.0.1;transport=tcp</Sip></Dial></Response>";
    ws.send_json(json!({"event": "action", "name": "twiml", "body": twiml}));
    let (_, result) = ws.wait_text("event", "action_result", Duration::from_secs(3));
    assert_eq!(result["name"], "dial");
    assert_eq!(result["ok"], false);
    gateway.wait_for_log(
        &[
            "dial refused",
            "[dial] allow",
            "sip:agent@127.0.0.1;transport=tcp",
        ],
        Duration::from_secs(2),
    );
    // A malformed one is refused without ending the call.
    ws.send_json(json!({"event": "action", "name": "twiml", "body": "<Response><Dial>"}));
    let deadline = Instant::now() + Duration::from_secs(3);
    while ws.texts_where("event", "action_result").len() < 2 {
        assert!(Instant::now() < deadline, "no answer to a malformed action");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The bot hangs up: BYE to the caller, stop to the bot.
    ws.send_json(json!({"event": "hangup", "reason": "done"}));
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    ws.wait_text("event", "stop", Duration::from_secs(3));
    gateway.wait_for_log(&["call ended", "bot hung up: done"], Duration::from_secs(3));
    gateway.assert_no_panic();
}

#[test]
fn reconnect_once_survives_one_mid_call_drop() {
    let ws = WsBot::start();
    let gateway = GatewayProcess::start(
        "websocket-reconnect",
        &config(&format!("ws://{}/bot", ws.addr), true),
    );
    let peer = RtpPeer::bind();
    let scenario = sipp::caller_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER), 4000);
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    ws.wait_text("event", "start", Duration::from_secs(10));
    let gateway_rtp = peer
        .wait_first_packet(Duration::from_secs(10))
        .expect("answered");
    std::thread::sleep(Duration::from_millis(300));
    ws.drop_connection();
    gateway.wait_for_log(&["reconnecting once"], Duration::from_secs(3));
    gateway.wait_for_log(&["bot session reopened"], Duration::from_secs(3));
    assert_eq!(ws.log.lock().unwrap().connections, 2);
    assert_eq!(
        ws.texts_where("event", "start").len(),
        2,
        "a new start on the new session"
    );

    // The new session carries audio both ways.
    let before = caller_audio_at_bot(&ws).len();
    peer.stream_pcmu(gateway_rtp, &sine(440.0, 8000, 4000, 12000.0));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        caller_audio_at_bot(&ws).len() >= before + 7000,
        "caller audio after the reconnect"
    );
    ws.send_binary(s16le(&sine(600.0, 16_000, 8000, 10_000.0)));

    // The caller hangs up as planned: the call was not ended by the drop.
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    gateway.wait_for_log(&["call ended", "caller hung up"], Duration::from_secs(3));
    let loud = peer
        .received_pcmu()
        .chunks(160)
        .filter(|c| rms(c) > 2000.0)
        .count();
    assert!(
        loud >= 20,
        "the caller heard the new session's bot ({loud} loud frames)"
    );
}

#[test]
fn without_reconnect_a_drop_hangs_up_with_on_failure() {
    let ws = WsBot::start();
    let gateway = GatewayProcess::start(
        "websocket-drop",
        &config(&format!("ws://{}/bot", ws.addr), false),
    );
    let peer = RtpPeer::bind();
    let scenario = sipp::gateway_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER));
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    ws.wait_text("event", "start", Duration::from_secs(10));
    peer.wait_first_packet(Duration::from_secs(10))
        .expect("answered");
    ws.drop_connection();
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    gateway.wait_for_log(&["bot failed mid-call", "own-bot"], Duration::from_secs(3));
    assert_eq!(ws.log.lock().unwrap().connections, 1);
}

#[test]
fn bot_sends_dtmf_as_rfc4733_events() {
    let ws = WsBot::start();
    let gateway = GatewayProcess::start(
        "websocket-dtmf",
        &config(&format!("ws://{}/bot", ws.addr), false),
    );
    let peer = RtpPeer::bind();
    let scenario = sipp::caller_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER), 3000);
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    ws.wait_text("event", "start", Duration::from_secs(10));
    peer.wait_first_packet(Duration::from_secs(10))
        .expect("answered");
    ws.send_json(json!({"event": "action", "name": "DTMF", "body": {"digits": "19#"}}));
    let (_, result) = ws.wait_text("event", "action_result", Duration::from_secs(3));
    assert_eq!(result["name"], "dtmf");
    assert_eq!(result["ok"], true, "{result}");
    // 3 keys × (100 ms + 60 ms of ends and gap): well within a second.
    std::thread::sleep(Duration::from_millis(1000));

    let packets = peer.received();
    let mut receiver = switchboard_media::dtmf::DtmfReceiver::new();
    let digits: Vec<char> = packets
        .iter()
        .filter(|p| p.payload_type == 101)
        .filter_map(|p| receiver.on_packet(&p.payload, p.timestamp))
        .map(|d| d.digit)
        .collect();
    assert_eq!(digits, ['1', '9', '#']);
    let events = packets.iter().filter(|p| p.payload_type == 101).count();
    assert_eq!(
        events,
        3 * (5 + 3),
        "5 tone packets and 3 end packets per key"
    );
    // One stream: sequence numbers stay contiguous across audio and events.
    for pair in packets.windows(2) {
        assert_eq!(
            pair[1].sequence,
            pair[0].sequence.wrapping_add(1),
            "gap in the sequence"
        );
    }
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
}

#[test]
fn silence_suppression_sends_talkspurts_with_markers() {
    let ws = WsBot::start();
    let config = config(&format!("ws://{}/bot", ws.addr), false).replace(
        "jitter_depth_ms = 40",
        "jitter_depth_ms = 40\nsend_silence = \"never\"",
    );
    let gateway = GatewayProcess::start("websocket-dtx", &config);
    let peer = RtpPeer::bind();
    let scenario = sipp::caller_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER), 3000);
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    ws.wait_text("event", "start", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        peer.received().is_empty(),
        "nothing is sent while the bot is silent"
    );
    // Two 200 ms talkspurts, 500 ms apart.
    for _ in 0..2 {
        ws.send_binary(s16le(&sine(600.0, 16_000, 3200, 10_000.0)));
        std::thread::sleep(Duration::from_millis(700));
    }
    let packets = peer.received();
    // 200 ms is 10 packets; the resampler may carry a few samples over.
    assert!(
        (19..=22).contains(&packets.len()),
        "{} packets",
        packets.len()
    );
    for pair in packets.windows(2) {
        assert_eq!(
            pair[1].sequence,
            pair[0].sequence.wrapping_add(1),
            "sequence stays contiguous"
        );
    }
    // The RTP clock runs on through the silence: one jump, where the second
    // talkspurt starts, and only talkspurt starts carry the marker.
    let starts: Vec<usize> = (1..packets.len())
        .filter(|i| packets[*i].timestamp.wrapping_sub(packets[i - 1].timestamp) > 160)
        .collect();
    assert_eq!(starts.len(), 1, "one silence gap: {starts:?}");
    let gap = packets[starts[0]]
        .timestamp
        .wrapping_sub(packets[starts[0] - 1].timestamp);
    assert!(gap >= 160 * 20, "{gap} timestamp units across the silence");
    let markers: Vec<usize> = (0..packets.len()).filter(|i| packets[*i].marker).collect();
    assert_eq!(
        markers,
        [0, starts[0]],
        "each talkspurt starts with the marker bit"
    );
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
}
