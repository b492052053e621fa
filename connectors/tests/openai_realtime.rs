//! The OpenAI Realtime connector against a server written here speaking the
//! GA protocol over real sockets on 127.0.0.1: the 24 kHz PCM mode, function
//! calls refused or answered, the truncation arithmetic against a playout
//! clock the test moves by hand, and a session polled by its caller's task.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_connectors::openai_realtime::OpenAiRealtimeConnector;
use switchboard_connectors::{BotConnector, BotControl, BotEvent, BotSession, CallInfo};
use switchboard_flows::{Action, OpenAiRealtimeConfig, RealtimeAudio, ToolKind};
use switchboard_media::g711::{ulaw_decode, ulaw_encode};
use switchboard_media::AudioFrame;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(5);

type ServerSocket = WebSocketStream<TcpStream>;

fn config(url: String, audio: RealtimeAudio) -> OpenAiRealtimeConfig {
    OpenAiRealtimeConfig {
        api_key: "sk-test".into(),
        base_url: url,
        model: "gpt-realtime".into(),
        instructions: None,
        voice: "alloy".into(),
        audio,
        tools: BTreeMap::from([
            ("transfer".to_owned(), ToolKind::Transfer),
            ("press".to_owned(), ToolKind::SendDtmf),
        ]),
        connect_timeout_ms: 2000,
        speak_first: false,
    }
}

/// A fake server on a fresh port: its URL and the task that accepts one
/// connection.
async fn listen() -> (String, JoinHandle<ServerSocket>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/realtime", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio_tungstenite::accept_async(tcp).await.unwrap()
    });
    (url, server)
}

fn call() -> CallInfo {
    CallInfo {
        call_id: "oa-test".into(),
        ..CallInfo::default()
    }
}

async fn open(audio: RealtimeAudio) -> (BotSession, ServerSocket, CallInfo) {
    let (url, server) = listen().await;
    let call = call();
    let connector = OpenAiRealtimeConnector::new(config(url, audio));
    let session = connector.open(&call).await.unwrap();
    let mut ws = server.await.unwrap();
    let update = next_json(&mut ws).await;
    assert_eq!(update["type"], "session.update");
    (session, ws, call)
}

async fn next_json(ws: &mut ServerSocket) -> Value {
    loop {
        let message = timeout(WAIT, ws.next())
            .await
            .expect("gateway went quiet")
            .expect("socket ended")
            .expect("socket error");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

async fn send(ws: &mut ServerSocket, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

async fn next_event(session: &mut BotSession) -> BotEvent {
    timeout(WAIT, session.events.recv())
        .await
        .expect("no event")
        .expect("events closed")
}

fn tone(rate: u32, freq: f64, samples: usize) -> Vec<i16> {
    (0..samples)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            (10_000.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
        })
        .collect()
}

fn crossings_per_second(samples: &[i16], rate: u32) -> f64 {
    let crossings = samples
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count();
    crossings as f64 * f64::from(rate) / samples.len() as f64
}

#[tokio::test]
async fn pcm24k_audio_both_ways_at_the_declared_rate() {
    let (mut session, mut ws, _call) = open(RealtimeAudio::Pcm24k).await;
    assert_eq!(session.audio_format.sample_rate, 24_000);

    // Caller audio: 0.2 s of 1 kHz at 24 kHz, in 20 ms frames.
    for chunk in tone(24_000, 1000.0, 4800).chunks(480) {
        session
            .audio_in
            .send(AudioFrame::from_samples(24_000, chunk).into())
            .await
            .unwrap();
    }
    let mut heard = Vec::new();
    while heard.len() < 4800 {
        let append = next_json(&mut ws).await;
        assert_eq!(append["type"], "input_audio_buffer.append");
        let bytes = B64.decode(append["audio"].as_str().unwrap()).unwrap();
        assert_eq!(bytes.len(), 960, "one 20 ms frame of s16le per append");
        heard.extend(bytes.chunks(2).map(|p| i16::from_le_bytes([p[0], p[1]])));
    }
    let rate = crossings_per_second(&heard, 24_000);
    assert!((rate - 2000.0).abs() < 40.0, "{rate} crossings/s");

    // Bot audio: 100 ms of 500 Hz as s16le, split at an odd byte.
    let answer: Vec<u8> = tone(24_000, 500.0, 2400)
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    let (first, second) = answer.split_at(1001);
    for part in [first, second] {
        let delta = json!({"type": "response.output_audio.delta", "response_id": "r",
            "item_id": "i1", "output_index": 0, "content_index": 0, "delta": B64.encode(part)});
        send(&mut ws, delta).await;
    }
    let mut played = Vec::new();
    while played.len() < 2400 {
        match next_event(&mut session).await {
            BotEvent::Audio(frame) => {
                assert_eq!(frame.sample_rate(), 24_000);
                assert!(frame.len() <= 480, "frames of at most 20 ms");
                played.extend_from_slice(frame.samples());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected: Vec<i16> = tone(24_000, 500.0, 2400);
    assert_eq!(played, expected, "bot audio is passed through bit-exact");
}

#[tokio::test]
async fn truncate_carries_the_played_milliseconds_of_the_item() {
    let (mut session, mut ws, call) = open(RealtimeAudio::Pcmu).await;
    send(
        &mut ws,
        json!({"type": "response.created", "response": {"id": "r1"}}),
    )
    .await;
    // 1 s of μ-law for item i1.
    let delta = json!({"type": "response.output_audio.delta", "response_id": "r1",
        "item_id": "i1", "output_index": 0, "content_index": 0, "delta": B64.encode([0x7fu8; 8000])});
    send(&mut ws, delta).await;
    for _ in 0..50 {
        assert!(matches!(next_event(&mut session).await, BotEvent::Audio(_)));
    }
    // The call reports 340 ms heard, then the caller speaks.
    call.playout.set_played_ms(340);
    send(
        &mut ws,
        json!({"type": "input_audio_buffer.speech_started", "item_id": "u1"}),
    )
    .await;
    assert!(matches!(next_event(&mut session).await, BotEvent::Clear));
    assert_eq!(next_json(&mut ws).await["type"], "response.cancel");
    let truncate = next_json(&mut ws).await;
    assert_eq!(
        truncate,
        json!({"type": "conversation.item.truncate", "item_id": "i1", "content_index": 0, "audio_end_ms": 340})
    );
    // Late audio of the interrupted item is dropped; a new item plays.
    let late = json!({"type": "response.output_audio.delta", "response_id": "r1",
        "item_id": "i1", "output_index": 0, "content_index": 0, "delta": B64.encode([0x7fu8; 160])});
    send(&mut ws, late).await;
    let fresh = json!({"type": "response.output_audio.delta", "response_id": "r2",
        "item_id": "i2", "output_index": 0, "content_index": 0, "delta": B64.encode([0x10u8; 160])});
    send(&mut ws, fresh).await;
    match next_event(&mut session).await {
        BotEvent::Audio(frame) => assert_ne!(frame.samples()[0], 0, "the new item's audio"),
        other => panic!("unexpected {other:?}"),
    }
    // A second barge-in before any of i2 was heard sends no truncate (0 is rejected).
    send(
        &mut ws,
        json!({"type": "input_audio_buffer.speech_started"}),
    )
    .await;
    assert!(matches!(next_event(&mut session).await, BotEvent::Clear));
    send(
        &mut ws,
        json!({"type": "input_audio_buffer.speech_stopped"}),
    )
    .await;
    session
        .audio_in
        .send(AudioFrame::from_samples(8000, &[0; 160]).into())
        .await
        .unwrap();
    let next = next_json(&mut ws).await;
    assert_eq!(
        next["type"], "input_audio_buffer.append",
        "no truncate at 0 ms: {next}"
    );
}

#[tokio::test]
async fn function_calls_become_actions_or_are_refused() {
    let (mut session, mut ws, _call) = open(RealtimeAudio::Pcmu).await;
    let call = |name: &str, id: &str, arguments: &str| {
        json!({"type": "response.output_item.done", "response_id": "r", "output_index": 0,
            "item": {"type": "function_call", "id": "f", "name": name, "call_id": id, "arguments": arguments}})
    };
    // Unknown function and bad arguments are answered at once.
    send(&mut ws, call("launch", "c1", "{}")).await;
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["item"]["call_id"], "c1");
    assert!(refused["item"]["output"]
        .as_str()
        .unwrap()
        .contains("no function named launch"));
    assert_eq!(next_json(&mut ws).await["type"], "response.create");
    send(&mut ws, call("press", "c2", r#"{"digits":"12x"}"#)).await;
    let refused = next_json(&mut ws).await;
    assert!(refused["item"]["output"]
        .as_str()
        .unwrap()
        .contains("\"ok\":false"));
    assert_eq!(next_json(&mut ws).await["type"], "response.create");

    // A good one becomes an Action; the call's answer goes back.
    send(&mut ws, call("press", "c3", r#"{"digits":"42#"}"#)).await;
    match next_event(&mut session).await {
        BotEvent::Action(Action::SendDtmf { digits }) => assert_eq!(digits, "42#"),
        other => panic!("unexpected {other:?}"),
    }
    session
        .control
        .send(BotControl::ActionResult {
            action: "dtmf".into(),
            ok: true,
            message: "sent".into(),
        })
        .await
        .unwrap();
    let output = next_json(&mut ws).await;
    assert_eq!(output["type"], "conversation.item.create");
    assert_eq!(output["item"]["type"], "function_call_output");
    assert_eq!(output["item"]["call_id"], "c3");
    assert_eq!(output["item"]["output"], r#"{"message":"sent","ok":true}"#);
    assert_eq!(next_json(&mut ws).await["type"], "response.create");

    // DTMF from the caller reaches the model as words.
    session.control.send(BotControl::Dtmf('7')).await.unwrap();
    let item = next_json(&mut ws).await;
    assert!(item["item"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains('7'));

    // The caller hangs up: the socket is closed.
    session.control.send(BotControl::Hangup).await.unwrap();
    loop {
        match timeout(WAIT, ws.next()).await.expect("no close") {
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("{e}"),
        }
    }
    assert!(matches!(
        next_event(&mut session).await,
        BotEvent::Closed { error: None }
    ));
}

/// The way the gateway runs a session: polled by the call's own task.
#[tokio::test]
async fn a_polled_session_runs_in_its_callers_task() {
    let (url, server) = listen().await;
    let connector = OpenAiRealtimeConnector::new(config(url, RealtimeAudio::Pcmu));
    let mut session = connector
        .open_polled(&call())
        .await
        .expect("the OpenAI Realtime connector is polled")
        .unwrap();
    let mut ws = server.await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "session.update");
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert_eq!(tasks, 0, "no task of its own");

    let samples = tone(8000, 440.0, 160);
    assert!(session.send_audio(&AudioFrame::from_samples(8000, &samples)));
    let append = next_json(&mut ws).await;
    assert_eq!(append["type"], "input_audio_buffer.append");
    let ulaw = B64.decode(append["audio"].as_str().unwrap()).unwrap();
    let expected: Vec<u8> = samples.iter().map(|&s| ulaw_encode(s)).collect();
    assert_eq!(ulaw, expected);

    // 400 samples of μ-law: frames of 160, 160 and 80.
    let answer: Vec<u8> = tone(8000, 500.0, 400)
        .iter()
        .map(|&s| ulaw_encode(s))
        .collect();
    let delta = json!({"type": "response.output_audio.delta", "response_id": "r",
        "item_id": "i1", "output_index": 0, "content_index": 0, "delta": B64.encode(&answer)});
    send(&mut ws, delta).await;
    let mut played = Vec::new();
    for expected_len in [160, 160, 80] {
        match timeout(WAIT, poll_fn(|cx| session.poll_event(cx)))
            .await
            .unwrap()
        {
            BotEvent::Audio(frame) => {
                assert_eq!(frame.sample_rate(), 8000);
                assert_eq!(frame.len(), expected_len);
                played.extend_from_slice(frame.samples());
            }
            other => panic!("expected audio, got {other:?}"),
        }
    }
    let decoded: Vec<i16> = answer.iter().map(|&b| ulaw_decode(b)).collect();
    assert_eq!(played, decoded);

    session.control(BotControl::Hangup);
    let closed = timeout(WAIT, poll_fn(|cx| session.poll_event(cx)))
        .await
        .unwrap();
    assert!(
        matches!(closed, BotEvent::Closed { error: None }),
        "{closed:?}"
    );
    drop(session);
    // The protocol has no goodbye: a close frame straight away.
    let close = timeout(WAIT, ws.next()).await.expect("no close frame");
    assert!(
        matches!(close, Some(Ok(Message::Close(_)))),
        "got {close:?}"
    );
    // Reading on sends tungstenite's reply; the handshake is then complete.
    let end = timeout(WAIT, ws.next()).await.expect("no end of stream");
    assert!(end.is_none(), "got {end:?}");
}
