//! Ultravox (`serverWebSocket` medium) through the real binary: the REST
//! call creation, audio both ways at the declared rate, barge-in, a client
//! tool answered, hang-up, and a REST failure reaching `on_failure`.

mod common;

use std::time::{Duration, Instant};

use common::audio::rms;
use common::gateway::{config_with, GatewayProcess};
use common::http_server::HttpServer;
use common::raw_sip::{status, RawSip};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, G711_OFFER};
use common::ws_bot::{crossings_per_second, from_s16le, s16le, sine, WsBot};
use serde_json::json;

fn config(base_url: &str) -> String {
    config_with(&format!(
        r#"
[[trunks]]
name = "loopback"
allow = ["127.0.0.1"]
routes = [{{ pattern = ".*", flow = "agent" }}]

[[flows]]
name = "agent"
bot = {{ kind = "ultravox", api_key = "test-key", base_url = "{base_url}", system_prompt = "You are a test.", voice = "Mark", sample_rate = 16000, tools = {{ transferCall = "transfer", hangUp = "hangup" }}, connect_timeout_ms = 2000 }}
parameters = {{ tenant = "acme" }}
on_failure = {{ hangup = 503 }}
"#
    ))
}

fn rest_server(ws: &WsBot, status: u16) -> HttpServer {
    let join = format!("ws://{}/join", ws.addr);
    HttpServer::start(move |_| match status {
        201 => (201, json!({"callId": "uv-1", "joinUrl": join}).to_string()),
        other => (other, json!({"detail": "nope"}).to_string()),
    })
}

/// Samples of loud 20 ms chunks only, so leading/trailing silence does not
/// dilute a tone's zero-crossing rate.
fn loud(samples: &[i16], chunk: usize) -> Vec<i16> {
    samples
        .chunks(chunk)
        .filter(|c| c.len() == chunk && rms(c) > 2000.0)
        .flatten()
        .copied()
        .collect()
}

#[test]
fn ultravox_call_end_to_end() {
    let ws = WsBot::start();
    let rest = rest_server(&ws, 201);
    let gateway = GatewayProcess::start("ultravox", &config(&format!("http://{}", rest.addr)));
    let peer = RtpPeer::bind();
    let scenario = sipp::caller_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER), 6000);
    let caller = sipp::spawn_udp_call(&gateway, scenario);

    // REST step: the declared rates are the ones we use.
    let gateway_rtp = peer
        .wait_first_packet(Duration::from_secs(10))
        .expect("gateway RTP");
    let request = rest.requests.lock().unwrap()[0].clone();
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/api/calls")
    );
    assert_eq!(request.header("X-API-Key"), Some("test-key"));
    let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(body["medium"]["serverWebSocket"]["inputSampleRate"], 16000);
    assert_eq!(body["medium"]["serverWebSocket"]["outputSampleRate"], 16000);
    assert_eq!(body["systemPrompt"], "You are a test.");

    // Caller speaks a 440 Hz tone at 8 kHz; the bot must get it at 16 kHz.
    let tone = sine(440.0, 8000, 8000, 12000.0);
    std::thread::scope(|scope| {
        scope.spawn(|| peer.stream_pcmu(gateway_rtp, &tone));
        // The bot answers with 1 s of 1 kHz at 16 kHz, in odd-sized chunks.
        let reply = s16le(&sine(1000.0, 16000, 16000, 10000.0));
        for chunk in reply.chunks(333) {
            ws.send_binary(chunk.to_vec());
        }
    });
    std::thread::sleep(Duration::from_millis(1300));
    let heard_by_bot = loud(&from_s16le(&ws.binary()), 320);
    assert!(
        heard_by_bot.len() >= 16000 / 2,
        "bot got {} loud samples",
        heard_by_bot.len()
    );
    let rate = crossings_per_second(&heard_by_bot, 16000);
    assert!(
        (rate - 880.0).abs() < 40.0,
        "bot hears {rate:.0} crossings/s, expected 880 (440 Hz at 16 kHz)"
    );
    let heard_by_caller = loud(&peer.received_pcmu(), 160);
    assert!(
        heard_by_caller.len() >= 6000,
        "caller heard {} loud samples",
        heard_by_caller.len()
    );
    let rate = crossings_per_second(&heard_by_caller, 8000);
    assert!(
        (rate - 2000.0).abs() < 80.0,
        "caller hears {rate:.0} crossings/s, expected 2000 (1 kHz)"
    );

    // Barge-in: a long answer, then playback_clear_buffer; silence follows.
    for chunk in s16le(&sine(700.0, 16000, 16000 * 5, 10000.0)).chunks(640) {
        ws.send_binary(chunk.to_vec());
    }
    std::thread::sleep(Duration::from_millis(400));
    let cleared_at = Instant::now();
    ws.send_json(json!({"type": "playback_clear_buffer"}));
    std::thread::sleep(Duration::from_millis(400));
    let after: Vec<i16> = peer
        .received()
        .iter()
        .filter(|p| p.at > cleared_at + Duration::from_millis(60))
        .flat_map(|p| {
            p.payload
                .iter()
                .map(|b| switchboard_media::g711::ulaw_decode(*b))
        })
        .collect();
    assert!(
        after.len() >= 160 && rms(&after) < 50.0,
        "playout continued after clear (rms {})",
        rms(&after)
    );

    // A transfer tool call is answered; with no [dial] allow the target is
    // refused by the toll-fraud guard.
    ws.send_json(json!({
        "type": "client_tool_invocation",
        "toolName": "transferCall",
        "invocationId": "inv-1",
        "parameters": {"target": "sip:agent@127.0.0.1"}
    }));
    let (_, result) = ws.wait_text("type", "client_tool_result", Duration::from_secs(3));
    assert_eq!(result["invocationId"], "inv-1");
    gateway.wait_for_log(
        &["dial refused", "[dial] allow", "sip:agent@127.0.0.1"],
        Duration::from_secs(2),
    );

    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    ws.wait_text("type", "hang_up", Duration::from_secs(5));
    ws.wait_closed(Duration::from_secs(5));
    gateway.assert_no_panic();
}

#[test]
fn hang_up_tool_ends_the_call() {
    let ws = WsBot::start();
    let rest = rest_server(&ws, 201);
    let gateway =
        GatewayProcess::start("ultravox-hangup", &config(&format!("http://{}", rest.addr)));
    let peer = RtpPeer::bind();
    let scenario = sipp::gateway_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER));
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    peer.wait_first_packet(Duration::from_secs(10))
        .expect("answered");
    ws.send_json(json!({"type": "client_tool_invocation", "toolName": "hangUp", "invocationId": "inv-9", "parameters": {}}));
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    let (_, result) = ws.wait_text("type", "client_tool_result", Duration::from_secs(3));
    assert_eq!(result["invocationId"], "inv-9");
    gateway.wait_for_log(&["call ended", "bot hung up"], Duration::from_secs(3));
}

#[test]
fn rest_failure_reaches_on_failure_within_a_second() {
    let ws = WsBot::start();
    let rest = rest_server(&ws, 401);
    let gateway = GatewayProcess::start("ultravox-401", &config(&format!("http://{}", rest.addr)));
    let sip = RawSip::new(gateway.udp);
    let started = Instant::now();
    sip.send(&sip.request(
        "INVITE",
        "100",
        "uv-fail",
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
    let line = gateway.wait_for_log(&["bot unreachable"], Duration::from_secs(2));
    assert!(line.contains("401"), "{line}");
}

/// An allowed `transferCall` target: the model's tool call dials the agent
/// and bridges the caller; the Ultravox session ends at the bridge, and the
/// agent hanging up ends the caller's side.
#[test]
fn transfer_tool_bridges_the_caller_to_an_agent() {
    let scratch = common::gateway::scratch_dir("ultravox-transfer");
    let agent_rtp = RtpPeer::bind();
    let agent = common::agent::Agent::answering(&scratch, "agent", agent_rtp.port(), 1000);
    let ws = WsBot::start();
    let rest = rest_server(&ws, 201);
    let gateway = GatewayProcess::start(
        "ultravox-transfer",
        &format!(
            "{}\n[dial]\nallow = ['^sip:agent@127\\.0\\.0\\.1:']\n",
            config(&format!("http://{}", rest.addr))
        ),
    );
    let peer = RtpPeer::bind();
    let scenario = sipp::gateway_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER));
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    // Sent once the gateway's session is up (the bot queues it till then).
    ws.send_json(json!({
        "type": "client_tool_invocation",
        "toolName": "transferCall",
        "invocationId": "inv-1",
        "parameters": {"target": format!("sip:agent@{}", agent.addr)}
    }));
    gateway.wait_for_log(&["transfer: bridged"], Duration::from_secs(5));
    ws.wait_closed(Duration::from_secs(5));
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.assert_no_panic();
}
