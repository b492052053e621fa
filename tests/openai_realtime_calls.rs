//! OpenAI Realtime through the real binary: GA session set-up with μ-law so
//! G.711 calls need no resampling, audio both ways, barge-in that clears
//! playout and truncates the answer at the milliseconds actually played, and
//! a function call answered.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::audio::rms;
use common::gateway::{config_with, GatewayProcess};
use common::http_server::HttpServer;
use common::raw_sip::{status, RawSip};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, G711_OFFER};
use common::ws_bot::{crossings_per_second, sine, WsBot};
use serde_json::json;
use switchboard_media::g711::{ulaw_decode, ulaw_encode};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn config(base_url: &str) -> String {
    config_timeout(base_url, 2000)
}

fn config_timeout(base_url: &str, connect_timeout_ms: u64) -> String {
    config_with(&format!(
        r#"
[[trunks]]
name = "loopback"
allow = ["127.0.0.1"]
routes = [{{ pattern = ".*", flow = "assistant" }}]

[[flows]]
name = "assistant"
bot = {{ kind = "openai_realtime", api_key = "sk-test", base_url = "{base_url}", model = "gpt-realtime", instructions = "Be brief.", voice = "marin", tools = {{ transfer_call = "transfer" }}, connect_timeout_ms = {connect_timeout_ms} }}
on_failure = {{ hangup = 503 }}
"#
    ))
}

fn delta(item: &str, ulaw: &[u8]) -> serde_json::Value {
    json!({
        "type": "response.output_audio.delta",
        "response_id": "resp-1",
        "item_id": item,
        "output_index": 0,
        "content_index": 0,
        "delta": B64.encode(ulaw)
    })
}

#[test]
fn openai_realtime_call_end_to_end() {
    let ws = WsBot::start();
    let gateway =
        GatewayProcess::start("openai", &config(&format!("ws://{}/v1/realtime", ws.addr)));
    let peer = RtpPeer::bind();
    let scenario = sipp::caller_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER), 6000);
    let caller = sipp::spawn_udp_call(&gateway, scenario);

    let (_, update) = ws.wait_text("type", "session.update", Duration::from_secs(10));
    {
        let log = ws.log.lock().unwrap();
        assert!(log.path.contains("model=gpt-realtime"), "{}", log.path);
        let auth = log
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        assert_eq!(auth.map(|(_, v)| v.as_str()), Some("Bearer sk-test"));
    }
    assert_eq!(
        update["session"]["audio"]["input"]["format"]["type"],
        "audio/pcmu"
    );
    assert_eq!(
        update["session"]["audio"]["output"]["format"]["type"],
        "audio/pcmu"
    );
    assert_eq!(update["session"]["audio"]["output"]["voice"], "marin");
    assert!(
        update["session"]["audio"]["input"]["turn_detection"].is_object(),
        "turn detection set explicitly"
    );
    assert_eq!(update["session"]["tools"][0]["name"], "transfer_call");
    // speak_first (the default): the bot is asked to greet the caller.
    ws.wait_text("type", "response.create", Duration::from_secs(5));

    // Caller audio arrives as μ-law appends carrying a 440 Hz tone.
    let gateway_rtp = peer
        .wait_first_packet(Duration::from_secs(10))
        .expect("gateway RTP");
    peer.stream_pcmu(gateway_rtp, &sine(440.0, 8000, 8000, 12000.0));
    std::thread::sleep(Duration::from_millis(200));
    let heard: Vec<i16> = ws
        .texts_where("type", "input_audio_buffer.append")
        .iter()
        .flat_map(|(_, v)| B64.decode(v["audio"].as_str().unwrap()).unwrap())
        .map(ulaw_decode)
        .collect();
    let loud: Vec<i16> = heard
        .chunks(160)
        .filter(|c| rms(c) > 2000.0)
        .flatten()
        .copied()
        .collect();
    assert!(loud.len() >= 6000, "bot got {} loud samples", loud.len());
    let rate = crossings_per_second(&loud, 8000);
    assert!(
        (rate - 880.0).abs() < 40.0,
        "bot hears {rate:.0} crossings/s, expected 880"
    );

    // A 4 s answer; the caller barges in after ~600 ms of it.
    ws.send_json(json!({"type": "response.created", "response": {"id": "resp-1"}}));
    let answer: Vec<u8> = sine(600.0, 8000, 32000, 10000.0)
        .iter()
        .map(|s| ulaw_encode(*s))
        .collect();
    let started = Instant::now();
    for chunk in answer.chunks(800) {
        ws.send_json(delta("item-1", chunk));
    }
    std::thread::sleep(Duration::from_millis(600));
    let barge_in = Instant::now();
    ws.send_json(json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 1000, "item_id": "item-user"}));
    let (_, cancel) = ws.wait_text("type", "response.cancel", Duration::from_secs(2));
    let _ = cancel;
    let (_, truncate) = ws.wait_text("type", "conversation.item.truncate", Duration::from_secs(2));
    assert_eq!(truncate["item_id"], "item-1");
    let played = truncate["audio_end_ms"].as_u64().unwrap();
    let elapsed = barge_in.duration_since(started).as_millis() as u64;
    assert!(
        played > 0 && played <= elapsed + 20,
        "truncate at {played} ms after {elapsed} ms of playout"
    );
    assert!(
        played + 150 >= elapsed,
        "truncate at {played} ms but ~{elapsed} ms had played"
    );
    std::thread::sleep(Duration::from_millis(300));
    let after: Vec<i16> = peer
        .received()
        .iter()
        .filter(|p| p.at > barge_in + Duration::from_millis(60))
        .flat_map(|p| p.payload.iter().map(|b| ulaw_decode(*b)))
        .collect();
    assert!(
        after.len() >= 160 && rms(&after) < 50.0,
        "playout continued after barge-in (rms {})",
        rms(&after)
    );
    let heard_by_caller: Vec<i16> = peer
        .received_pcmu()
        .chunks(160)
        .filter(|c| rms(c) > 2000.0)
        .flatten()
        .copied()
        .collect();
    let rate = crossings_per_second(&heard_by_caller, 8000);
    assert!(
        (rate - 1200.0).abs() < 60.0,
        "caller hears {rate:.0} crossings/s, expected 1200 (600 Hz)"
    );

    // A function call becomes an action and its result goes back.
    ws.send_json(json!({
        "type": "response.output_item.done",
        "response_id": "resp-2",
        "output_index": 0,
        "item": {"type": "function_call", "id": "item-f", "name": "transfer_call", "call_id": "call-7", "arguments": "{\"target\":\"sip:agent@127.0.0.1\"}"}
    }));
    let (_, output) = ws.wait_text("type", "conversation.item.create", Duration::from_secs(3));
    assert_eq!(output["item"]["type"], "function_call_output");
    assert_eq!(output["item"]["call_id"], "call-7");
    let deadline = Instant::now() + Duration::from_secs(3);
    while ws.texts_where("type", "response.create").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no response.create after the function output"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    ws.wait_closed(Duration::from_secs(5));
    gateway.assert_no_panic();
}

#[test]
fn unreachable_realtime_reaches_on_failure_within_a_second() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gateway = GatewayProcess::start(
        "openai-down",
        &config(&format!("ws://127.0.0.1:{port}/v1/realtime")),
    );
    let sip = RawSip::new(gateway.udp);
    let started = Instant::now();
    sip.send(&sip.request(
        "INVITE",
        "100",
        "oa-fail",
        1,
        "Content-Type: application/sdp\r\n",
        &sipp::sdp_offer(4000, G711_OFFER),
    ));
    let answer = sip
        .wait_for(
            |m| status(m).is_some_and(|s| s >= 200),
            Duration::from_secs(5),
        )
        .expect("final response");
    assert_eq!(status(&answer), Some(503));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    gateway.wait_for_log(&["bot unreachable", "assistant"], Duration::from_secs(2));
}

/// INVITE to a gateway whose bot cannot be opened: the final status and how
/// long it took.
fn invite_expecting_failure(gateway: &GatewayProcess, call_id: &str) -> (Option<u16>, Duration) {
    let sip = RawSip::new(gateway.udp);
    let started = Instant::now();
    sip.send(&sip.request(
        "INVITE",
        "100",
        call_id,
        1,
        "Content-Type: application/sdp\r\n",
        &sipp::sdp_offer(4000, G711_OFFER),
    ));
    let answer = sip
        .wait_for(
            |m| status(m).is_some_and(|s| s >= 200),
            Duration::from_secs(5),
        )
        .expect("final response");
    (status(&answer), started.elapsed())
}

#[test]
fn rejected_api_key_reaches_on_failure_with_the_status_in_the_log() {
    let server = HttpServer::start(|_| {
        (
            401,
            r#"{"error":{"message":"Incorrect API key provided"}}"#.into(),
        )
    });
    let gateway = GatewayProcess::start(
        "openai-401",
        &config(&format!("ws://{}/v1/realtime", server.addr)),
    );
    let (status, took) = invite_expecting_failure(&gateway, "oa-401");
    assert_eq!(status, Some(503));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let line = gateway.wait_for_log(&["bot unreachable"], Duration::from_secs(2));
    assert!(line.contains("HTTP 401 Unauthorized"), "{line}");
}

#[test]
fn silent_server_times_out_into_on_failure() {
    // Accepts TCP and never answers the upgrade.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _held = std::thread::spawn(move || {
        let connections: Vec<_> = listener.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(10));
        drop(connections);
    });
    let gateway = GatewayProcess::start(
        "openai-timeout",
        &config_timeout(&format!("ws://{addr}/v1/realtime"), 500),
    );
    let (status, took) = invite_expecting_failure(&gateway, "oa-timeout");
    assert_eq!(status, Some(503));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    gateway.wait_for_log(&["bot unreachable", "timed out"], Duration::from_secs(2));
}

/// A call that is up, with the bot's side of the socket in `ws`.
fn answered_call(
    name: &str,
) -> (
    WsBot,
    GatewayProcess,
    std::thread::JoinHandle<std::process::Output>,
) {
    let ws = WsBot::start();
    let gateway = GatewayProcess::start(name, &config(&format!("ws://{}/v1/realtime", ws.addr)));
    let peer = RtpPeer::bind();
    let scenario = sipp::gateway_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER));
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    ws.wait_text("type", "session.update", Duration::from_secs(10));
    peer.wait_first_packet(Duration::from_secs(10))
        .expect("answered");
    (ws, gateway, caller)
}

#[test]
fn socket_dropped_mid_call_hangs_up_the_caller() {
    let (ws, gateway, caller) = answered_call("openai-drop");
    let dropped = Instant::now();
    ws.drop_connection();
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    let line = gateway.wait_for_log(&["bot failed mid-call"], Duration::from_secs(3));
    assert!(line.contains("assistant"), "{line}");
    assert!(
        dropped.elapsed() < Duration::from_secs(3),
        "BYE took {:?}",
        dropped.elapsed()
    );
    gateway.assert_no_panic();
}

#[test]
fn a_bot_sending_garbage_is_dropped_and_the_caller_hung_up() {
    let (ws, gateway, caller) = answered_call("openai-garbage");
    for i in 0..25 {
        ws.send_text(&format!("not json {i}"));
    }
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    gateway.wait_for_log(
        &["bot failed mid-call", "malformed"],
        Duration::from_secs(3),
    );
    gateway.assert_no_panic();
}

#[test]
fn tls_failure_reaches_on_failure() {
    // A plain-HTTP server where the flow expects TLS: the handshake fails.
    let server = HttpServer::start(|_| (200, "{}".into()));
    let gateway = GatewayProcess::start(
        "openai-tls",
        &config(&format!(
            "wss://127.0.0.1:{}/v1/realtime",
            server.addr.port()
        )),
    );
    let (status, took) = invite_expecting_failure(&gateway, "oa-tls");
    assert_eq!(status, Some(503));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let line = gateway.wait_for_log(&["bot unreachable"], Duration::from_secs(2));
    assert!(
        line.to_lowercase().contains("tls")
            || line.contains("InvalidContentType")
            || line.contains("corrupt"),
        "{line}"
    );
}

/// An allowed `transfer_call` function call dials the agent and bridges
/// the caller; the Realtime session ends at the bridge, and the agent
/// hanging up ends the caller's side.
#[test]
fn transfer_function_bridges_the_caller_to_an_agent() {
    let scratch = common::gateway::scratch_dir("openai-transfer");
    let agent_rtp = RtpPeer::bind();
    let agent = common::agent::Agent::answering(&scratch, "agent", agent_rtp.port(), 1000);
    let ws = WsBot::start();
    let gateway = GatewayProcess::start(
        "openai-transfer",
        &format!(
            "{}\n[dial]\nallow = ['^sip:agent@127\\.0\\.0\\.1:']\n",
            config(&format!("ws://{}/v1/realtime", ws.addr))
        ),
    );
    let peer = RtpPeer::bind();
    let scenario = sipp::gateway_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER));
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    ws.wait_text("type", "session.update", Duration::from_secs(10));
    ws.send_json(json!({
        "type": "response.output_item.done",
        "response_id": "resp-1",
        "output_index": 0,
        "item": {"type": "function_call", "id": "item-f", "name": "transfer_call", "call_id": "call-1",
                 "arguments": json!({"target": format!("sip:agent@{}", agent.addr)}).to_string()}
    }));
    gateway.wait_for_log(&["transfer: bridged"], Duration::from_secs(5));
    ws.wait_closed(Duration::from_secs(5));
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.assert_no_panic();
}
