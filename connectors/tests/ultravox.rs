//! The Ultravox connector against a stand-in for Ultravox written here: a
//! minimal HTTP/1.1 server for call creation and a WebSocket server for the
//! `serverWebSocket` medium, over real sockets on 127.0.0.1.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_connectors::ultravox::UltravoxConnector;
use switchboard_connectors::{
    BotConnector, BotControl, BotEvent, BotSession, CallInfo, ConnectorError, PolledBot,
};
use switchboard_flows::{Action, DialTarget, ToolKind, UltravoxConfig};
use switchboard_media::AudioFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(5);

type UvSocket = WebSocketStream<TcpStream>;

// ---- the stand-in for Ultravox ----------------------------------------------

/// How the REST endpoint answers.
#[derive(Clone, Copy)]
enum Rest {
    Created,
    Status(u16, &'static str),
    NoJoinUrl,
    /// Reads the request and never answers.
    Silent,
    /// Points at a port nobody listens on.
    DeadJoinUrl,
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct FakeUltravox {
    base_url: String,
    requests: mpsc::UnboundedReceiver<Request>,
    ws: JoinHandle<UvSocket>,
}

impl FakeUltravox {
    async fn start(rest: Rest) -> Self {
        let ws_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut join_url = format!(
            "ws://{}/join?token=secret",
            ws_listener.local_addr().unwrap()
        );
        if let Rest::DeadJoinUrl = rest {
            let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
            join_url = format!("ws://{}/join", unused.local_addr().unwrap());
        }
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", http.local_addr().unwrap());
        let (tx, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = http.accept().await.unwrap();
                let (tx, join_url) = (tx.clone(), join_url.clone());
                tokio::spawn(serve_rest(tcp, rest, join_url, tx));
            }
        });
        let ws = tokio::spawn(async move {
            let (tcp, _) = ws_listener.accept().await.unwrap();
            tokio_tungstenite::accept_async(tcp).await.unwrap()
        });
        Self {
            base_url,
            requests,
            ws,
        }
    }

    async fn request(&mut self) -> Request {
        timeout(WAIT, self.requests.recv())
            .await
            .expect("no REST request")
            .unwrap()
    }
}

async fn serve_rest(
    mut tcp: TcpStream,
    rest: Rest,
    join_url: String,
    requests: mpsc::UnboundedSender<Request>,
) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tcp.read(&mut buf).await.unwrap();
        if n == 0 {
            return;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(data[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap().split(' ');
    let method = request_line.next().unwrap().to_owned();
    let path = request_line.next().unwrap().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    while data.len() < head_end + length {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "body cut short");
        data.extend_from_slice(&buf[..n]);
    }
    let body = serde_json::from_slice(&data[head_end..head_end + length]).unwrap();
    let _ = requests.send(Request {
        method,
        path,
        headers,
        body,
    });
    let (status, reply) = match rest {
        Rest::Created | Rest::DeadJoinUrl => (
            "201 Created".to_owned(),
            json!({"callId": "uv-1", "joinUrl": join_url}).to_string(),
        ),
        Rest::NoJoinUrl => (
            "201 Created".to_owned(),
            json!({"callId": "uv-1"}).to_string(),
        ),
        Rest::Status(code, body) => (format!("{code} Nope"), body.to_owned()),
        Rest::Silent => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
    tcp.write_all(response.as_bytes()).await.unwrap();
    let _ = tcp.shutdown().await;
}

// ---- helpers --------------------------------------------------------------------

fn config(base_url: &str, rate: u32) -> UltravoxConfig {
    UltravoxConfig {
        api_key: "test-key".into(),
        base_url: base_url.to_owned(),
        agent_id: None,
        system_prompt: Some("You are a test.".into()),
        voice: Some("Mark".into()),
        model: None,
        sample_rate: rate,
        tools: BTreeMap::from([
            ("transferCall".to_owned(), ToolKind::Transfer),
            ("hangUp".to_owned(), ToolKind::Hangup),
            ("pressKeys".to_owned(), ToolKind::SendDtmf),
        ]),
        connect_timeout_ms: 2_000,
    }
}

fn call() -> CallInfo {
    CallInfo {
        call_id: "a84b4c76e66710@pc33.example.com".into(),
        from: "alice".into(),
        to: "1000".into(),
        flow: "support".into(),
        parameters: BTreeMap::from([("lang".to_owned(), "en".to_owned())]),
        x_headers: vec![("X-Customer-Id".to_owned(), "42".to_owned())],
        ..CallInfo::default()
    }
}

/// A session at `rate` against a fresh stand-in; returns both ends and the
/// call-creation request.
async fn open_session(rate: u32) -> (BotSession, UvSocket, Request) {
    let mut fake = FakeUltravox::start(Rest::Created).await;
    let connector = UltravoxConnector::new(config(&fake.base_url, rate));
    let session = connector.open(&call()).await.unwrap();
    let request = fake.request().await;
    let ws = timeout(WAIT, fake.ws).await.unwrap().unwrap();
    (session, ws, request)
}

async fn open_error(config: UltravoxConfig) -> ConnectorError {
    match UltravoxConnector::new(config).open(&call()).await {
        Ok(_) => panic!("open must fail"),
        Err(e) => e,
    }
}

async fn next_message(ws: &mut UvSocket) -> Message {
    loop {
        let message = timeout(WAIT, ws.next())
            .await
            .expect("gateway went quiet")
            .expect("socket ended")
            .expect("socket error");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

async fn next_json(ws: &mut UvSocket) -> Value {
    match next_message(ws).await {
        Message::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

async fn send_json(ws: &mut UvSocket, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

async fn next_event(events: &mut mpsc::Receiver<BotEvent>) -> BotEvent {
    timeout(WAIT, events.recv())
        .await
        .expect("no bot event in time")
        .expect("events ended early")
}

async fn expect_closed_then_end(
    events: &mut mpsc::Receiver<BotEvent>,
    clean: bool,
) -> Option<String> {
    let error = match next_event(events).await {
        BotEvent::Closed { error } => error,
        other => panic!("expected Closed, got {other:?}"),
    };
    assert_eq!(error.is_none(), clean, "error: {error:?}");
    let end = timeout(WAIT, events.recv())
        .await
        .expect("the task must end");
    assert!(end.is_none(), "nothing after Closed");
    error
}

fn sine(rate: u32, hz: f64, len: usize) -> Vec<i16> {
    (0..len)
        .map(|i| {
            (10_000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin()) as i16
        })
        .collect()
}

fn s16le(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn zero_crossings(samples: &[i16]) -> usize {
    samples
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count()
}

// ---- call creation ------------------------------------------------------------

#[tokio::test]
async fn creates_the_call_with_declared_rates_and_tools() {
    let (session, _ws, request) = open_session(16_000).await;
    assert_eq!(session.audio_format.sample_rate, 16_000);
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/api/calls");
    assert_eq!(request.header("X-API-Key"), Some("test-key"));
    assert!(request
        .header("Content-Type")
        .is_some_and(|v| v.starts_with("application/json")));
    let body = &request.body;
    assert_eq!(
        body["medium"],
        json!({"serverWebSocket": {"inputSampleRate": 16000, "outputSampleRate": 16000, "clientBufferSizeMs": 60}})
    );
    assert_eq!(body["systemPrompt"], "You are a test.");
    assert_eq!(body["voice"], "Mark");
    assert!(body.get("model").is_none(), "unset model must be omitted");
    assert_eq!(
        body["metadata"],
        json!({"from": "alice", "to": "1000", "sipCallId": "a84b4c76e66710@pc33.example.com",
               "flow": "support", "lang": "en", "X-Customer-Id": "42"})
    );
    let tools = body["selectedTools"].as_array().unwrap();
    assert_eq!(tools.len(), 3);
    let tool = |name: &str| {
        tools
            .iter()
            .map(|t| &t["temporaryTool"])
            .find(|t| t["modelToolName"] == name)
            .unwrap_or_else(|| panic!("no tool {name}"))
            .clone()
    };
    let transfer = tool("transferCall");
    assert_eq!(transfer["client"], json!({}));
    assert!(transfer["description"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));
    let params = transfer["dynamicParameters"].as_array().unwrap();
    assert_eq!(params.len(), 1);
    assert_eq!(params[0]["name"], "target");
    assert_eq!(params[0]["required"], true);
    assert_eq!(params[0]["location"], "PARAMETER_LOCATION_BODY");
    assert_eq!(params[0]["schema"]["type"], "string");
    assert_eq!(tool("hangUp")["dynamicParameters"], json!([]));
    assert_eq!(tool("pressKeys")["dynamicParameters"][0]["name"], "digits");
}

#[tokio::test]
async fn agent_calls_use_the_agent_path_and_template_context() {
    let mut fake = FakeUltravox::start(Rest::Created).await;
    let mut config = config(&format!("{}/", fake.base_url), 8_000);
    config.agent_id = Some("A".into());
    let session = UltravoxConnector::new(config).open(&call()).await.unwrap();
    assert_eq!(session.audio_format.sample_rate, 8_000);
    let request = fake.request().await;
    assert_eq!(request.path, "/api/agents/A/calls");
    assert_eq!(request.header("x-api-key"), Some("test-key"));
    let body = &request.body;
    assert_eq!(body["medium"]["serverWebSocket"]["inputSampleRate"], 8000);
    assert_eq!(body["medium"]["serverWebSocket"]["outputSampleRate"], 8000);
    assert_eq!(body["templateContext"], json!({"lang": "en"}));
    assert_eq!(body["metadata"]["from"], "alice");
    assert_eq!(body["metadata"]["X-Customer-Id"], "42");
    // The agent owns prompt, voice and tools; Ultravox rejects them here.
    for field in ["systemPrompt", "voice", "selectedTools"] {
        assert!(body.get(field).is_none(), "{field} sent to an agent call");
    }
}

// ---- audio --------------------------------------------------------------------

/// Caller audio arrives as binary s16le, byte for byte, at the declared rate:
/// a 440 Hz tone crosses zero 880 times per second of audio.
async fn caller_audio_at(rate: u32) {
    let (session, mut ws, request) = open_session(rate).await;
    assert_eq!(
        request.body["medium"]["serverWebSocket"]["inputSampleRate"],
        rate
    );
    assert_eq!(session.audio_format.sample_rate, rate);
    let frame_len = session.audio_format.frame_samples();
    let tone = sine(rate, 440.0, rate as usize);
    for chunk in tone.chunks(frame_len) {
        session
            .audio_in
            .send(AudioFrame::from_samples(rate, chunk).into())
            .await
            .unwrap();
    }
    let mut heard = Vec::new();
    while heard.len() < tone.len() * 2 {
        match next_message(&mut ws).await {
            Message::Binary(data) => {
                assert_eq!(data.len(), frame_len * 2);
                heard.extend_from_slice(&data);
            }
            other => panic!("expected audio, got {other:?}"),
        }
    }
    assert_eq!(heard, s16le(&tone));
    let samples: Vec<i16> = heard
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let crossings = zero_crossings(&samples);
    assert!(crossings.abs_diff(880) <= 4, "{crossings} crossings in 1 s");
}

#[tokio::test]
async fn caller_audio_at_16k() {
    caller_audio_at(16_000).await;
}

#[tokio::test]
async fn caller_audio_at_8k() {
    caller_audio_at(8_000).await;
}

#[tokio::test]
async fn caller_audio_at_another_rate_is_dropped() {
    let (session, mut ws, _) = open_session(16_000).await;
    let wrong = AudioFrame::from_samples(8_000, &[1000; 160]);
    session.audio_in.send(wrong.into()).await.unwrap();
    let right = AudioFrame::from_samples(16_000, &[7; 320]);
    session.audio_in.send(right.into()).await.unwrap();
    match next_message(&mut ws).await {
        Message::Binary(data) => assert_eq!(data.to_vec(), s16le(&[7; 320])),
        other => panic!("expected audio, got {other:?}"),
    }
}

#[tokio::test]
async fn bot_audio_in_odd_chunks_becomes_frames() {
    for rate in [16_000u32, 8_000] {
        let (mut session, mut ws, _) = open_session(rate).await;
        let tone = sine(rate, 1000.0, rate as usize / 2 + 1);
        let bytes = s16le(&tone);
        for chunk in bytes.chunks(333) {
            ws.send(Message::binary(chunk.to_vec())).await.unwrap();
        }
        let mut heard = Vec::new();
        while heard.len() < tone.len() {
            match next_event(&mut session.events).await {
                BotEvent::Audio(frame) => {
                    assert_eq!(frame.sample_rate(), rate);
                    assert!(!frame.is_empty() && frame.len() <= rate as usize / 50);
                    heard.extend_from_slice(frame.samples());
                }
                other => panic!("expected audio, got {other:?}"),
            }
        }
        assert_eq!(heard, tone, "at {rate} Hz");
    }
}

// ---- data messages ------------------------------------------------------------

#[tokio::test]
async fn clear_and_final_transcripts() {
    let (mut session, mut ws, _) = open_session(16_000).await;
    send_json(&mut ws, json!({"type": "call_started", "callId": "uv-1"})).await;
    send_json(&mut ws, json!({"type": "state", "state": "listening"})).await;
    send_json(&mut ws, json!({"type": "playback_clear_buffer"})).await;
    assert!(matches!(
        next_event(&mut session.events).await,
        BotEvent::Clear
    ));

    // Deltas accumulate; nothing is reported before `final`.
    for (delta, last) in [("Hello ", false), ("there", false), ("!", true)] {
        send_json(
            &mut ws,
            json!({"type": "transcript", "role": "agent", "medium": "voice",
            "delta": delta, "final": last, "ordinal": 3}),
        )
        .await;
    }
    match next_event(&mut session.events).await {
        BotEvent::Transcript { role, text } => {
            assert_eq!((role.as_str(), text.as_str()), ("agent", "Hello there!"));
        }
        other => panic!("expected a transcript, got {other:?}"),
    }
    // A final message with the whole text wins over earlier partials.
    send_json(&mut ws, json!({"type": "transcript", "role": "user", "text": "I nee", "final": false, "ordinal": 4})).await;
    send_json(&mut ws, json!({"type": "transcript", "role": "user", "text": "I need help", "final": true, "ordinal": 4})).await;
    match next_event(&mut session.events).await {
        BotEvent::Transcript { role, text } => {
            assert_eq!((role.as_str(), text.as_str()), ("user", "I need help"));
        }
        other => panic!("expected a transcript, got {other:?}"),
    }
    // Endless deltas stay bounded.
    let chunk = "x".repeat(1000);
    for _ in 0..20 {
        send_json(&mut ws, json!({"type": "transcript", "role": "agent", "delta": chunk, "final": false, "ordinal": 5})).await;
    }
    send_json(
        &mut ws,
        json!({"type": "transcript", "role": "agent", "final": true, "ordinal": 5}),
    )
    .await;
    match next_event(&mut session.events).await {
        BotEvent::Transcript { text, .. } => assert_eq!(text.len(), 8 * 1024),
        other => panic!("expected a transcript, got {other:?}"),
    }
}

async fn invoke(ws: &mut UvSocket, tool: &str, id: &str, parameters: Value) {
    send_json(
        ws,
        json!({"type": "client_tool_invocation", "toolName": tool,
        "invocationId": id, "parameters": parameters}),
    )
    .await;
}

#[tokio::test]
async fn transfer_tool_becomes_dial_and_is_answered() {
    let (mut session, mut ws, _) = open_session(16_000).await;
    invoke(
        &mut ws,
        "transferCall",
        "inv-1",
        json!({"target": "sip:agent@127.0.0.1"}),
    )
    .await;
    match next_event(&mut session.events).await {
        BotEvent::Action(Action::Dial(DialTarget { uri, caller_id, .. })) => {
            assert_eq!(uri, "sip:agent@127.0.0.1");
            assert_eq!(caller_id, None);
        }
        other => panic!("expected a dial, got {other:?}"),
    }
    session
        .control
        .send(BotControl::ActionResult {
            action: "dial".into(),
            ok: true,
            message: "transferred".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "client_tool_result", "invocationId": "inv-1", "result": "transferred"})
    );

    // A failure is reported as an implementation error.
    invoke(
        &mut ws,
        "transferCall",
        "inv-2",
        json!({"target": "tel:+15551234567"}),
    )
    .await;
    assert!(matches!(
        next_event(&mut session.events).await,
        BotEvent::Action(Action::Dial(_))
    ));
    session
        .control
        .send(BotControl::ActionResult {
            action: "dial".into(),
            ok: false,
            message: "busy".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "client_tool_result", "invocationId": "inv-2", "result": "busy",
               "errorType": "implementation-error", "errorMessage": "busy"})
    );
}

#[tokio::test]
async fn hangup_and_dtmf_tools() {
    let (mut session, mut ws, _) = open_session(16_000).await;
    invoke(&mut ws, "pressKeys", "inv-3", json!({"digits": "12#*a"})).await;
    match next_event(&mut session.events).await {
        BotEvent::Action(Action::SendDtmf { digits }) => assert_eq!(digits, "12#*A"),
        other => panic!("expected DTMF, got {other:?}"),
    }
    invoke(&mut ws, "hangUp", "inv-4", json!({})).await;
    match next_event(&mut session.events).await {
        BotEvent::Action(Action::Hangup { reason }) => assert_eq!(reason, None),
        other => panic!("expected a hang-up, got {other:?}"),
    }
    // Answers are matched by action kind, whatever the order.
    for (action, message) in [("hangup", "hanging up"), ("dtmf", "sent")] {
        session
            .control
            .send(BotControl::ActionResult {
                action: action.into(),
                ok: true,
                message: message.into(),
            })
            .await
            .unwrap();
    }
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "client_tool_result", "invocationId": "inv-4", "result": "hanging up",
               "responseType": "hang-up"})
    );
    assert_eq!(next_json(&mut ws).await["invocationId"], "inv-3");
}

#[tokio::test]
async fn bad_tool_calls_are_answered_at_once() {
    let (mut session, mut ws, _) = open_session(16_000).await;
    invoke(&mut ws, "orderPizza", "inv-5", json!({"size": "L"})).await;
    let result = next_json(&mut ws).await;
    assert_eq!(result["type"], "client_tool_result");
    assert_eq!(result["invocationId"], "inv-5");
    assert_eq!(result["errorType"], "undefined");
    assert!(result["errorMessage"]
        .as_str()
        .unwrap()
        .contains("orderPizza"));

    for (tool, id, parameters) in [
        (
            "transferCall",
            "inv-6",
            json!({"target": "http://evil.example"}),
        ),
        ("transferCall", "inv-7", json!({"target": "sip:"})),
        ("transferCall", "inv-8", json!({})),
        (
            "transferCall",
            "inv-9",
            json!({"target": "sip:a@b\r\nVia: x"}),
        ),
        ("pressKeys", "inv-10", json!({"digits": "12x"})),
        ("pressKeys", "inv-11", json!({"digits": ""})),
    ] {
        invoke(&mut ws, tool, id, parameters).await;
        let result = next_json(&mut ws).await;
        assert_eq!(result["invocationId"], id);
        assert_eq!(result["errorType"], "implementation-error", "{result}");
        assert!(result["errorMessage"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // None of them reached the call.
    send_json(&mut ws, json!({"type": "playback_clear_buffer"})).await;
    assert!(matches!(
        next_event(&mut session.events).await,
        BotEvent::Clear
    ));
}

// ---- endings ------------------------------------------------------------------

#[tokio::test]
async fn caller_hangup_sends_hang_up_and_closes() {
    let (mut session, mut ws, _) = open_session(16_000).await;
    // Neither DTMF nor marks have an Ultravox message: nothing is sent.
    session.control.send(BotControl::Dtmf('5')).await.unwrap();
    session
        .control
        .send(BotControl::MarkPlayed("m".into()))
        .await
        .unwrap();
    session.control.send(BotControl::Hangup).await.unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "hang_up", "message": "caller hung up"})
    );
    let close = timeout(WAIT, ws.next()).await.expect("no close frame");
    assert!(
        matches!(close, Some(Ok(Message::Close(_)))),
        "got {close:?}"
    );
    // Reading on sends tungstenite's reply and ends the stream.
    let end = timeout(WAIT, ws.next()).await.expect("no end of stream");
    assert!(end.is_none(), "got {end:?}");
    drop(ws);
    expect_closed_then_end(&mut session.events, true).await;
}

#[tokio::test]
async fn dropping_the_session_hangs_up() {
    let (session, mut ws, _) = open_session(16_000).await;
    drop(session);
    assert_eq!(next_json(&mut ws).await["type"], "hang_up");
    assert!(matches!(next_message(&mut ws).await, Message::Close(_)));
}

#[tokio::test]
async fn server_close_is_clean() {
    let (mut session, mut ws, _) = open_session(16_000).await;
    ws.close(None).await.unwrap();
    // Like a real server, read on until the gateway's reply ends the stream.
    let server = tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    expect_closed_then_end(&mut session.events, true).await;
    timeout(WAIT, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn dropped_socket_is_an_error() {
    let (mut session, ws, _) = open_session(16_000).await;
    drop(ws);
    expect_closed_then_end(&mut session.events, false).await;
}

#[tokio::test]
async fn malformed_flood_ends_the_session() {
    let (mut session, mut ws, _) = open_session(16_000).await;
    // Twenty are tolerated…
    for i in 0..20 {
        let junk = if i % 2 == 0 {
            "not json".to_owned()
        } else {
            json!({"no": "type"}).to_string()
        };
        ws.send(Message::text(junk)).await.unwrap();
    }
    send_json(&mut ws, json!({"type": "playback_clear_buffer"})).await;
    assert!(matches!(
        next_event(&mut session.events).await,
        BotEvent::Clear
    ));
    // …the next one is not.
    ws.send(Message::text("{")).await.unwrap();
    let error = expect_closed_then_end(&mut session.events, false).await;
    assert_eq!(error.as_deref(), Some("bot sent malformed messages"));
}

// ---- failures to connect ------------------------------------------------------

#[tokio::test]
async fn rest_401_is_a_quick_connect_error() {
    let fake = FakeUltravox::start(Rest::Status(401, r#"{"detail": "Invalid API key."}"#)).await;
    let started = Instant::now();
    let error = open_error(config(&fake.base_url, 16_000)).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    match error {
        ConnectorError::Connect { url, reason } => {
            assert_eq!(url, format!("{}/api/calls", fake.base_url));
            assert!(reason.starts_with("HTTP 401: "), "{reason}");
            assert!(reason.contains("Invalid API key."), "{reason}");
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn rest_500_is_a_connect_error() {
    let fake = FakeUltravox::start(Rest::Status(500, "internal error")).await;
    match open_error(config(&fake.base_url, 16_000)).await {
        ConnectorError::Connect { reason, .. } => {
            assert_eq!(reason, "HTTP 500: internal error");
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn silent_rest_times_out() {
    let fake = FakeUltravox::start(Rest::Silent).await;
    let mut config = config(&fake.base_url, 16_000);
    config.connect_timeout_ms = 300;
    let started = Instant::now();
    let error = open_error(config).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "took {took:?}"
    );
    match error {
        ConnectorError::ConnectTimeout { url, timeout_ms } => {
            assert_eq!(timeout_ms, 300);
            assert!(url.ends_with("/api/calls"), "{url}");
        }
        other => panic!("expected ConnectTimeout, got {other:?}"),
    }
}

#[tokio::test]
async fn reply_without_join_url_is_a_protocol_error() {
    let fake = FakeUltravox::start(Rest::NoJoinUrl).await;
    let error = open_error(config(&fake.base_url, 16_000)).await;
    assert!(
        matches!(&error, ConnectorError::Protocol(m) if m.contains("joinUrl")),
        "{error:?}"
    );
}

#[tokio::test]
async fn unreachable_join_url_is_a_connect_error() {
    let fake = FakeUltravox::start(Rest::DeadJoinUrl).await;
    match open_error(config(&fake.base_url, 16_000)).await {
        ConnectorError::Connect { url, .. } => assert!(url.ends_with("/join"), "{url}"),
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn unreachable_rest_is_a_connect_error() {
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    match open_error(config(&base_url, 16_000)).await {
        ConnectorError::Connect { reason, .. } => assert!(!reason.is_empty()),
        other => panic!("expected Connect, got {other:?}"),
    }
}

async fn next_polled(session: &mut Box<dyn PolledBot>) -> BotEvent {
    timeout(WAIT, poll_fn(|cx| session.poll_event(cx)))
        .await
        .expect("no bot event in time")
}

/// The way the gateway runs a session: polled by the call's own task.
#[tokio::test]
async fn a_polled_session_runs_in_its_callers_task() {
    let mut fake = FakeUltravox::start(Rest::Created).await;
    let connector = UltravoxConnector::new(config(&fake.base_url, 16_000));
    let mut session = connector
        .open_polled(&call())
        .await
        .expect("the Ultravox connector is polled")
        .unwrap();
    fake.request().await;
    let mut ws = timeout(WAIT, fake.ws).await.unwrap().unwrap();

    let caller = sine(16_000, 440.0, 320);
    assert!(session.send_audio(&AudioFrame::from_samples(16_000, &caller)));
    match next_message(&mut ws).await {
        Message::Binary(bytes) => assert_eq!(bytes.as_ref(), s16le(&caller).as_slice()),
        other => panic!("expected binary audio, got {other:?}"),
    }
    // 500 samples: frames of 320 and 180, then the clear that followed them.
    let bot = sine(16_000, 300.0, 500);
    ws.send(Message::binary(s16le(&bot))).await.unwrap();
    send_json(&mut ws, json!({"type": "playback_clear_buffer"})).await;
    let mut got = Vec::new();
    for len in [320, 180] {
        match next_polled(&mut session).await {
            BotEvent::Audio(frame) if frame.len() == len => got.extend_from_slice(frame.samples()),
            other => panic!("expected {len} samples of audio, got {other:?}"),
        }
    }
    assert_eq!(got, bot);
    assert!(matches!(next_polled(&mut session).await, BotEvent::Clear));

    // Dropped by its call without a Hangup: the Ultravox call still ends.
    drop(session);
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "hang_up", "message": "call ended"})
    );
    assert!(matches!(next_message(&mut ws).await, Message::Close(_)));
}
