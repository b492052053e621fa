//! The generic WebSocket connector against a bot server written here,
//! speaking the protocol documented in `switchboard_connectors::websocket`
//! over real sockets on 127.0.0.1.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_connectors::websocket::{WebsocketConnector, MAX_MALFORMED};
use switchboard_connectors::{
    BotConnector, BotControl, BotEvent, BotSession, CallInfo, ConnectorError, PolledBot,
};
use switchboard_flows::{Action, DialTarget, WebsocketBotConfig};
use switchboard_media::AudioFrame;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Receiver;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(5);
const RATE: u32 = 16_000;

type BotSocket = WebSocketStream<TcpStream>;

fn connector(url: String, connect_timeout_ms: u64) -> WebsocketConnector {
    WebsocketConnector::new(WebsocketBotConfig {
        url,
        sample_rate: RATE,
        connect_timeout_ms,
    })
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

/// Open a session to a fresh local bot; returns both ends and the start message.
async fn open_session() -> (BotSession, BotSocket, Value) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/bot", listener.local_addr().unwrap());
    let bot = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio_tungstenite::accept_async(tcp).await.unwrap()
    });
    let session = connector(url, 2_000).open(&call()).await.unwrap();
    let mut ws = bot.await.unwrap();
    let start = next_json(&mut ws).await;
    (session, ws, start)
}

async fn next_message(ws: &mut BotSocket) -> Message {
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

async fn next_json(ws: &mut BotSocket) -> Value {
    match next_message(ws).await {
        Message::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

async fn send_json(ws: &mut BotSocket, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

async fn next_event(events: &mut Receiver<BotEvent>) -> BotEvent {
    timeout(WAIT, events.recv())
        .await
        .expect("no bot event in time")
        .expect("events ended early")
}

async fn expect_closed_then_end(events: &mut Receiver<BotEvent>, clean: bool) {
    match next_event(events).await {
        BotEvent::Closed { error } => assert_eq!(error.is_none(), clean, "error: {error:?}"),
        other => panic!("expected Closed, got {other:?}"),
    }
    let end = timeout(WAIT, events.recv())
        .await
        .expect("the task must end");
    assert!(end.is_none(), "nothing after Closed");
}

/// `stop`, then a close frame; the bot (the server) then drops TCP.
async fn expect_stop_and_close(mut ws: BotSocket) {
    assert_eq!(next_json(&mut ws).await, json!({"event": "stop"}));
    let close = timeout(WAIT, ws.next()).await.expect("no close frame");
    assert!(
        matches!(close, Some(Ok(Message::Close(_)))),
        "got {close:?}"
    );
    let end = timeout(WAIT, ws.next()).await.expect("no end of stream");
    assert!(end.is_none(), "got {end:?}");
}

fn sine(len: usize, offset: usize) -> Vec<i16> {
    (0..len)
        .map(|i| {
            let t = (i + offset) as f64 / f64::from(RATE);
            (8_000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
        })
        .collect()
}

fn le_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

#[tokio::test]
async fn start_message_shape() {
    let (session, ws, start) = open_session().await;
    assert_eq!(session.audio_format.sample_rate, RATE);
    assert_eq!(
        start,
        json!({"event": "start", "callId": "a84b4c76e66710@pc33.example.com",
               "from": "alice", "to": "1000", "flow": "support",
               "parameters": {"lang": "en"}, "headers": {"X-Customer-Id": "42"},
               "sampleRate": 16000, "encoding": "pcm_s16le"})
    );
    drop(session);
    expect_stop_and_close(ws).await;
}

#[tokio::test]
async fn audio_is_exact_both_ways_at_the_declared_rate() {
    let (mut session, mut ws, _) = open_session().await;

    // Caller audio: one binary frame of s16le per 20 ms frame, unchanged.
    let frames = 50; // one second
    let mut heard = Vec::new();
    for k in 0..frames {
        let samples = sine(320, k * 320);
        let frame = AudioFrame::from_samples(RATE, &samples);
        session.audio_in.send(frame.into()).await.unwrap();
        match next_message(&mut ws).await {
            Message::Binary(bytes) => {
                assert_eq!(bytes.as_ref(), le_bytes(&samples).as_slice());
                heard.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|p| i16::from_le_bytes([p[0], p[1]])),
                );
            }
            other => panic!("expected binary audio, got {other:?}"),
        }
    }
    // Rate by content: 440 Hz for one second at 16 kHz crosses zero ~880 times.
    let crossings = heard
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count();
    assert!(
        (870..=890).contains(&crossings),
        "{crossings} zero crossings"
    );

    // Bot audio split at odd byte counts → frames of at most 20 ms, same samples.
    let bot_samples = sine(1_001, 7);
    let bytes = le_bytes(&bot_samples);
    for part in [&bytes[..1], &bytes[1..2], &bytes[2..333], &bytes[333..]] {
        ws.send(Message::binary(part.to_vec())).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < bot_samples.len() {
        match next_event(&mut session.events).await {
            BotEvent::Audio(frame) => {
                assert_eq!(frame.sample_rate(), RATE);
                assert!(!frame.is_empty() && frame.len() <= 320, "{frame:?}");
                got.extend_from_slice(frame.samples());
            }
            other => panic!("expected audio, got {other:?}"),
        }
    }
    assert_eq!(got, bot_samples);

    session.control.send(BotControl::Hangup).await.unwrap();
    expect_stop_and_close(ws).await;
    expect_closed_then_end(&mut session.events, true).await;
}

#[tokio::test]
async fn clear_mark_dtmf_transcript_and_hangup() {
    let (mut session, mut ws, _) = open_session().await;
    send_json(&mut ws, json!({"event": "clear"})).await;
    assert!(matches!(
        next_event(&mut session.events).await,
        BotEvent::Clear
    ));
    let mark_name = "greeting \"done\"";
    send_json(&mut ws, json!({"event": "mark", "name": mark_name})).await;
    match next_event(&mut session.events).await {
        BotEvent::Mark(name) => assert_eq!(name, mark_name),
        other => panic!("expected the mark, got {other:?}"),
    }
    session
        .control
        .send(BotControl::MarkPlayed(mark_name.to_owned()))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"event": "mark", "name": mark_name})
    );
    session.control.send(BotControl::Dtmf('5')).await.unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"event": "dtmf", "digit": "5"})
    );
    send_json(
        &mut ws,
        json!({"event": "transcript", "role": "user", "text": "hello"}),
    )
    .await;
    match next_event(&mut session.events).await {
        BotEvent::Transcript { role, text } => {
            assert_eq!((role.as_str(), text.as_str()), ("user", "hello"))
        }
        other => panic!("expected a transcript, got {other:?}"),
    }
    send_json(&mut ws, json!({"event": "hangup", "reason": "goodbye"})).await;
    match next_event(&mut session.events).await {
        BotEvent::Hangup { reason } => assert_eq!(reason.as_deref(), Some("goodbye")),
        other => panic!("expected a hangup, got {other:?}"),
    }
    send_json(&mut ws, json!({"event": "hangup"})).await;
    assert!(matches!(
        next_event(&mut session.events).await,
        BotEvent::Hangup { reason: None }
    ));
    // The call then ends the session: stop, close, clean Closed.
    session.control.send(BotControl::Hangup).await.unwrap();
    expect_stop_and_close(ws).await;
    expect_closed_then_end(&mut session.events, true).await;
    assert!(session.audio_in.is_closed(), "the task is gone");
}

#[tokio::test]
async fn actions_and_their_results() {
    let (mut session, mut ws, _) = open_session().await;
    let twiml = "<Response><Dial timeout=\"20\"><Sip username=\"u\" password=\"p\">sip:agent@pbx;transport=tcp?X-Case=42</Sip></Dial></Response>";
    send_json(
        &mut ws,
        json!({"event": "action", "name": "twiml", "body": twiml}),
    )
    .await;
    match next_event(&mut session.events).await {
        BotEvent::Action(Action::Dial(target)) => assert_eq!(
            target,
            DialTarget {
                uri: "sip:agent@pbx;transport=tcp?X-Case=42".into(),
                username: Some("u".into()),
                password: Some("p".into()),
                timeout_secs: 20,
                ..DialTarget::default()
            }
        ),
        other => panic!("expected a dial, got {other:?}"),
    }
    send_json(
        &mut ws,
        json!({"event": "action", "name": "DTMF", "body": {"digits": "12#"}}),
    )
    .await;
    assert!(matches!(
        next_event(&mut session.events).await,
        BotEvent::Action(Action::SendDtmf { digits }) if digits == "12#"
    ));
    // A bad one is answered at once and reaches nobody.
    send_json(
        &mut ws,
        json!({"event": "action", "name": "twiml", "body": "<Dial/>"}),
    )
    .await;
    let result = next_json(&mut ws).await;
    assert_eq!(result["event"], "action_result");
    assert_eq!(result["name"], "twiml");
    assert_eq!(result["ok"], false);
    assert!(
        result["message"].as_str().unwrap().contains("<Response>"),
        "{result}"
    );
    // The call's verdict is forwarded.
    session
        .control
        .send(BotControl::ActionResult {
            action: "dial".into(),
            ok: false,
            message: "not available yet".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"event": "action_result", "name": "dial", "ok": false, "message": "not available yet"})
    );
    drop(session);
    expect_stop_and_close(ws).await;
}

#[tokio::test]
async fn malformed_messages_are_tolerated_up_to_a_limit() {
    let (mut session, mut ws, _) = open_session().await;
    let junk = [
        "not json".to_owned(),
        "[1, 2]".to_owned(),
        json!({"no": "event"}).to_string(),
        json!({"event": "mark"}).to_string(),
        json!({"event": "transcript", "role": "bot"}).to_string(),
    ];
    for message in junk.iter().cycle().take(MAX_MALFORMED as usize) {
        ws.send(Message::text(message.clone())).await.unwrap();
    }
    // Unknown events are not malformed; the session still works.
    send_json(&mut ws, json!({"event": "somethingNew", "data": [1]})).await;
    send_json(&mut ws, json!({"event": "clear"})).await;
    assert!(matches!(
        next_event(&mut session.events).await,
        BotEvent::Clear
    ));
    // One more is too many.
    ws.send(Message::text("garbage")).await.unwrap();
    match next_event(&mut session.events).await {
        BotEvent::Closed { error: Some(error) } => assert!(error.contains("malformed"), "{error}"),
        other => panic!("expected Closed with an error, got {other:?}"),
    }
}

#[tokio::test]
async fn bot_vanishing_mid_call_is_an_error() {
    let (mut session, ws, _) = open_session().await;
    session
        .audio_in
        .send(AudioFrame::from_samples(RATE, &sine(320, 0)).into())
        .await
        .unwrap();
    drop(ws);
    match next_event(&mut session.events).await {
        BotEvent::Closed { error } => assert!(error.is_some(), "a vanished bot is not clean"),
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(timeout(WAIT, session.events.recv())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn bot_closing_ends_the_session_cleanly() {
    let (mut session, mut ws, _) = open_session().await;
    ws.close(None).await.unwrap();
    match next_event(&mut session.events).await {
        BotEvent::Closed { error } => assert!(error.is_none(), "{error:?}"),
        other => panic!("expected Closed, got {other:?}"),
    }
    let reply = timeout(WAIT, ws.next()).await.expect("no close reply");
    assert!(matches!(reply, Some(Ok(Message::Close(_)))), "{reply:?}");
    drop(ws);
    assert!(timeout(WAIT, session.events.recv())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn caller_audio_ending_sends_stop_and_closes() {
    let (session, ws, _) = open_session().await;
    let BotSession {
        audio_in,
        mut events,
        ..
    } = session;
    drop(audio_in);
    expect_stop_and_close(ws).await;
    expect_closed_then_end(&mut events, true).await;
}

#[tokio::test]
async fn handshake_that_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/bot", listener.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(tcp);
    });
    let started = std::time::Instant::now();
    let result = connector(url.clone(), 200).open(&call()).await;
    let took = started.elapsed();
    match result {
        Err(ConnectorError::ConnectTimeout {
            url: got,
            timeout_ms: 200,
        }) => assert_eq!(got, url),
        Err(other) => panic!("expected a timeout, got {other}"),
        Ok(_) => panic!("expected a timeout, got a session"),
    }
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    holder.abort();
}

#[tokio::test]
async fn refused_connection_is_a_connect_error() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("ws://127.0.0.1:{port}/bot");
    match connector(url.clone(), 2_000).open(&call()).await {
        Err(ConnectorError::Connect { url: got, reason }) => {
            assert_eq!(got, url);
            assert!(!reason.is_empty());
        }
        Err(other) => panic!("expected a connect error, got {other}"),
        Ok(_) => panic!("expected a connect error, got a session"),
    }
}

/// Opens a session the way the gateway does: polled by the caller's task.
async fn open_polled_session() -> (Box<dyn PolledBot>, BotSocket) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/bot", listener.local_addr().unwrap());
    let bot = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio_tungstenite::accept_async(tcp).await.unwrap()
    });
    let session = connector(url, 2_000)
        .open_polled(&call())
        .await
        .expect("the websocket connector is polled")
        .unwrap();
    let mut ws = bot.await.unwrap();
    assert_eq!(next_json(&mut ws).await["event"], "start");
    (session, ws)
}

async fn next_polled_event(session: &mut Box<dyn PolledBot>) -> BotEvent {
    timeout(WAIT, poll_fn(|cx| session.poll_event(cx)))
        .await
        .expect("no bot event in time")
}

#[tokio::test]
async fn a_polled_session_runs_in_its_callers_task() {
    let (mut session, mut ws) = open_polled_session().await;
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert_eq!(
        tasks, 0,
        "no task of its own (the bot's side has ended too)"
    );

    let samples = sine(320, 0);
    assert!(session.send_audio(&AudioFrame::from_samples(RATE, &samples)));
    match next_message(&mut ws).await {
        Message::Binary(bytes) => assert_eq!(bytes.as_ref(), le_bytes(&samples).as_slice()),
        other => panic!("expected binary audio, got {other:?}"),
    }
    let bot_samples = sine(700, 3);
    ws.send(Message::binary(le_bytes(&bot_samples)))
        .await
        .unwrap();
    send_json(&mut ws, json!({"event": "mark", "name": "m1"})).await;
    let mut got = Vec::new();
    while got.len() < bot_samples.len() {
        match next_polled_event(&mut session).await {
            BotEvent::Audio(frame) => got.extend_from_slice(frame.samples()),
            other => panic!("expected audio, got {other:?}"),
        }
    }
    assert_eq!(got, bot_samples, "cut into frames of at most 20 ms");
    assert!(matches!(next_polled_event(&mut session).await, BotEvent::Mark(name) if name == "m1"));
    session.control(BotControl::MarkPlayed("m1".into()));
    assert_eq!(
        next_json(&mut ws).await,
        json!({"event": "mark", "name": "m1"})
    );

    session.control(BotControl::Hangup);
    match next_polled_event(&mut session).await {
        BotEvent::Closed { error } => assert!(error.is_none(), "{error:?}"),
        other => panic!("expected Closed, got {other:?}"),
    }
    // The closing handshake finishes without the call.
    drop(session);
    expect_stop_and_close(ws).await;
}

#[tokio::test]
async fn a_bot_that_stops_reading_costs_caller_audio_not_memory() {
    let (mut session, _ws) = open_polled_session().await;
    // The bot reads nothing more. Caller audio keeps coming, as fast as the
    // socket takes it: once the kernel's buffers stop growing, frames are
    // refused at once instead of queued, and after the write timeout
    // without progress the session ends.
    let frame = AudioFrame::from_samples(RATE, &sine(320, 0));
    let (mut accepted, mut refused) = (0u64, 0u64);
    let closed = timeout(Duration::from_secs(30), async {
        loop {
            if session.send_audio(&frame) {
                accepted += 1;
                continue;
            }
            refused += 1;
            let wait = timeout(
                Duration::from_millis(20),
                poll_fn(|cx| session.poll_event(cx)),
            );
            if let Ok(event) = wait.await {
                return event;
            }
        }
    })
    .await
    .expect("the write timeout ends the session");
    match closed {
        BotEvent::Closed { error: Some(error) } => {
            assert!(error.contains("took no data"), "{error}")
        }
        other => panic!("expected Closed with an error, got {other:?}"),
    }
    assert!(
        accepted > 0 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
    assert!(
        !session.send_audio(&frame),
        "an ended session takes nothing"
    );
}
