//! The Twilio Media Streams connector against a bot server written here,
//! speaking the documented protocol over real sockets on 127.0.0.1.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_connectors::twilio_stream::TwilioStreamConnector;
use switchboard_connectors::{
    BotConnector, BotControl, BotEvent, BotSession, CallInfo, ConnectorError,
};
use switchboard_flows::{Action, DialTarget, TwilioStreamConfig};
use switchboard_media::g711::{ulaw_decode, ulaw_encode};
use switchboard_media::AudioFrame;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Receiver;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const WAIT: Duration = Duration::from_secs(5);

type BotSocket = WebSocketStream<TcpStream>;

fn connector(url: String, connect_timeout_ms: u64) -> TwilioStreamConnector {
    TwilioStreamConnector::new(TwilioStreamConfig {
        url,
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

/// Open a session to a fresh local bot; returns both ends.
async fn open_session() -> (BotSession, BotSocket) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/media", listener.local_addr().unwrap());
    let bot = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio_tungstenite::accept_async(tcp).await.unwrap()
    });
    let session = connector(url, 2_000).open(&call()).await.unwrap();
    let ws = bot.await.unwrap();
    (session, ws)
}

/// Next text message from the gateway, parsed.
async fn next_json(ws: &mut BotSocket) -> Value {
    loop {
        let message = timeout(WAIT, ws.next())
            .await
            .expect("gateway went quiet")
            .expect("socket ended")
            .expect("socket error");
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

async fn next_event(events: &mut Receiver<BotEvent>) -> BotEvent {
    timeout(WAIT, events.recv())
        .await
        .expect("no bot event in time")
        .expect("events ended early")
}

/// Skip the greeting, returning the `start` message.
async fn read_greeting(ws: &mut BotSocket) -> Value {
    let connected = next_json(ws).await;
    assert_eq!(connected["event"], "connected");
    next_json(ws).await
}

async fn expect_closed_then_end(events: &mut Receiver<BotEvent>, clean: bool) {
    expect_closed(events, clean).await;
    expect_end(events).await;
}

async fn expect_closed(events: &mut Receiver<BotEvent>, clean: bool) {
    match next_event(events).await {
        BotEvent::Closed { error } => assert_eq!(error.is_none(), clean, "error: {error:?}"),
        other => panic!("expected Closed, got {other:?}"),
    }
}

/// The events channel ending means the session task has exited.
async fn expect_end(events: &mut Receiver<BotEvent>) {
    let end = timeout(WAIT, events.recv())
        .await
        .expect("the task must end");
    assert!(end.is_none(), "nothing after Closed");
}

/// After `stop`, the gateway closes the socket; like a real server the bot
/// then drops the TCP connection, which lets the gateway's task finish.
async fn expect_stop_and_close(mut ws: BotSocket, start: &Value) {
    let stop = next_json(&mut ws).await;
    assert_eq!(stop["event"], "stop");
    assert_eq!(stop["streamSid"], start["streamSid"]);
    assert_eq!(stop["stop"]["callSid"], start["start"]["callSid"]);
    assert_eq!(stop["stop"]["accountSid"], start["start"]["accountSid"]);
    let close = timeout(WAIT, ws.next()).await.expect("no close frame");
    assert!(
        matches!(close, Some(Ok(Message::Close(_)))),
        "got {close:?}"
    );
    // Reading on sends tungstenite's reply; the handshake is then complete.
    let end = timeout(WAIT, ws.next()).await.expect("no end of stream");
    assert!(end.is_none(), "got {end:?}");
}

fn is_sid(value: &Value, prefix: &str) -> bool {
    let s = value.as_str().unwrap_or_default();
    s.len() == 34 && s.starts_with(prefix) && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn sine(len: usize, offset: usize) -> Vec<i16> {
    (0..len)
        .map(|i| {
            let t = (i + offset) as f64 / 8_000.0;
            (8_000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
        })
        .collect()
}

#[tokio::test]
async fn full_conversation() {
    let (mut session, mut ws) = open_session().await;
    assert_eq!(session.audio_format.sample_rate, 8_000);

    // Greeting shapes.
    let connected = next_json(&mut ws).await;
    assert_eq!(
        connected,
        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    );
    let start = next_json(&mut ws).await;
    assert_eq!(start["event"], "start");
    assert_eq!(start["sequenceNumber"], "1");
    assert!(is_sid(&start["streamSid"], "MZ"), "{start}");
    let body = &start["start"];
    assert_eq!(body["streamSid"], start["streamSid"]);
    assert!(is_sid(&body["accountSid"], "AC"), "{start}");
    assert!(is_sid(&body["callSid"], "CA"), "{start}");
    assert_eq!(body["tracks"], json!(["inbound"]));
    assert_eq!(
        body["mediaFormat"],
        json!({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1})
    );
    assert_eq!(
        body["customParameters"],
        json!({
            "lang": "en",
            "from": "alice",
            "to": "1000",
            "sip_call_id": "a84b4c76e66710@pc33.example.com",
            "X-Customer-Id": "42",
        })
    );
    let stream_sid = start["streamSid"].as_str().unwrap().to_owned();

    // Caller audio → media events, in order, decoding to what went in.
    for k in 0..10 {
        let samples = sine(160, k * 160);
        session
            .audio_in
            .send(AudioFrame::from_samples(8_000, &samples).into())
            .await
            .unwrap();
        let media = next_json(&mut ws).await;
        assert_eq!(media["event"], "media");
        assert_eq!(media["streamSid"], stream_sid.as_str());
        assert_eq!(media["sequenceNumber"], (k + 2).to_string());
        assert_eq!(media["media"]["track"], "inbound");
        assert_eq!(media["media"]["chunk"], (k + 1).to_string());
        let timestamp: u64 = media["media"]["timestamp"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(timestamp < 10_000);
        let payload = B64
            .decode(media["media"]["payload"].as_str().unwrap())
            .unwrap();
        assert_eq!(payload.len(), 160);
        for (byte, sample) in payload.iter().zip(&samples) {
            let decoded = ulaw_decode(*byte);
            let tolerance = (sample.unsigned_abs() / 16 + 8) as i32;
            assert!(
                (i32::from(decoded) - i32::from(*sample)).abs() <= tolerance,
                "{sample} came out as {decoded}"
            );
        }
    }

    // Bot audio of odd lengths → frames of at most 160 samples, same samples.
    let bot_audio: Vec<u8> = sine(433, 0).into_iter().map(ulaw_encode).collect();
    for part in [&bot_audio[..100], &bot_audio[100..]] {
        let msg = json!({"event": "media", "streamSid": stream_sid, "media": {"payload": B64.encode(part)}});
        ws.send(Message::text(msg.to_string())).await.unwrap();
    }
    let mut heard = Vec::new();
    while heard.len() < bot_audio.len() {
        match next_event(&mut session.events).await {
            BotEvent::Audio(frame) => {
                assert_eq!(frame.sample_rate(), 8_000);
                assert!(!frame.is_empty() && frame.len() <= 160, "{frame:?}");
                heard.extend_from_slice(frame.samples());
            }
            other => panic!("expected audio, got {other:?}"),
        }
    }
    let expected: Vec<i16> = bot_audio.iter().map(|b| ulaw_decode(*b)).collect();
    assert_eq!(heard, expected);

    // Garbage is ignored and the call goes on; the mark after it arrives.
    for junk in [
        "not json at all".to_owned(),
        json!({"event": "media", "streamSid": stream_sid, "media": {"payload": "!!not base64!!"}})
            .to_string(),
        json!({"event": "media", "media": {}}).to_string(),
        json!({"event": "somethingNew", "data": [1, 2, 3]}).to_string(),
    ] {
        ws.send(Message::text(junk)).await.unwrap();
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let mark_name = "greeting \"done\"";
    let mark = json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": mark_name}});
    ws.send(Message::text(mark.to_string())).await.unwrap();
    match next_event(&mut session.events).await {
        BotEvent::Mark(name) => assert_eq!(name, mark_name),
        other => panic!("expected the mark, got {other:?}"),
    }

    // MarkPlayed and DTMF go back to the bot, numbered after the media.
    session
        .control
        .send(BotControl::MarkPlayed(mark_name.to_owned()))
        .await
        .unwrap();
    let echoed = next_json(&mut ws).await;
    assert_eq!(
        echoed,
        json!({"event": "mark", "sequenceNumber": "12", "streamSid": stream_sid, "mark": {"name": mark_name}})
    );
    session.control.send(BotControl::Dtmf('5')).await.unwrap();
    let dtmf = next_json(&mut ws).await;
    assert_eq!(
        dtmf,
        json!({"event": "dtmf", "sequenceNumber": "13", "streamSid": stream_sid,
               "dtmf": {"track": "inbound_track", "digit": "5"}})
    );

    // Barge-in.
    let clear = json!({"event": "clear", "streamSid": stream_sid});
    ws.send(Message::text(clear.to_string())).await.unwrap();
    assert!(matches!(
        next_event(&mut session.events).await,
        BotEvent::Clear
    ));

    // Hangup: stop, then a close, then the session ends cleanly.
    session.control.send(BotControl::Hangup).await.unwrap();
    let stop = next_json(&mut ws).await;
    assert_eq!(stop["sequenceNumber"], "14");
    assert_eq!(stop["streamSid"], stream_sid.as_str());
    // The rest of stop's shape, and the close, as in the other tests.
    let bot = tokio::spawn(async move {
        let mut ws = ws;
        let close = timeout(WAIT, ws.next()).await.unwrap();
        assert!(matches!(close, Some(Ok(Message::Close(_)))), "{close:?}");
        assert!(timeout(WAIT, ws.next()).await.unwrap().is_none());
    });
    expect_closed_then_end(&mut session.events, true).await;
    bot.await.unwrap();
    assert!(session.audio_in.is_closed(), "the task is gone");
}

#[tokio::test]
async fn caller_audio_ending_sends_stop_and_closes() {
    let (session, mut ws) = open_session().await;
    let start = read_greeting(&mut ws).await;
    let BotSession {
        audio_in,
        mut events,
        control,
        ..
    } = session;
    drop(audio_in);
    expect_stop_and_close(ws, &start).await;
    expect_closed_then_end(&mut events, true).await;
    assert!(control.is_closed());
}

#[tokio::test]
async fn dropping_the_session_sends_stop_and_closes() {
    let (session, mut ws) = open_session().await;
    let start = read_greeting(&mut ws).await;
    drop(session);
    expect_stop_and_close(ws, &start).await;
}

#[tokio::test]
async fn bot_closing_ends_the_session_cleanly() {
    let (mut session, mut ws) = open_session().await;
    read_greeting(&mut ws).await;
    ws.close(None).await.unwrap();
    expect_closed(&mut session.events, true).await;
    // The gateway answered the close handshake.
    let reply = timeout(WAIT, ws.next()).await.expect("no close reply");
    assert!(
        matches!(reply, Some(Ok(Message::Close(_)))),
        "got {reply:?}"
    );
    let end = timeout(WAIT, ws.next()).await.expect("socket stayed open");
    assert!(end.is_none(), "got {end:?}");
    // As the server, the bot drops TCP first; the gateway's task then ends.
    drop(ws);
    expect_end(&mut session.events).await;
    assert!(session.audio_in.is_closed());
}

#[tokio::test]
async fn bot_vanishing_is_an_error() {
    let (mut session, mut ws) = open_session().await;
    read_greeting(&mut ws).await;
    // Drop the TCP connection without a closing handshake.
    drop(ws);
    expect_closed_then_end(&mut session.events, false).await;
}

#[tokio::test]
async fn handshake_that_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/media", listener.local_addr().unwrap());
    // Accept and hold the connection, never answering the upgrade.
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
    let url = format!("ws://127.0.0.1:{port}/media");
    match connector(url.clone(), 2_000).open(&call()).await {
        Err(ConnectorError::Connect { url: got, reason }) => {
            assert_eq!(got, url);
            assert!(!reason.is_empty());
        }
        Err(other) => panic!("expected a connect error, got {other}"),
        Ok(_) => panic!("expected a connect error, got a session"),
    }
}

#[tokio::test]
async fn bad_url_is_a_connect_error() {
    let result = connector("not a url".into(), 2_000).open(&call()).await;
    assert!(matches!(result, Err(ConnectorError::Connect { .. })));
}

/// A `wss://` bot whose port speaks no TLS: a clean connect error, not a
/// rustls panic for want of a crypto provider.
#[tokio::test]
async fn tls_handshake_failure_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = stream.write_all(b"HTTP/1.1 400 Not TLS\r\n\r\n").await;
        }
    });
    let url = format!("wss://127.0.0.1:{port}/media");
    let result = connector(url, 2_000).open(&call()).await;
    assert!(
        matches!(result, Err(ConnectorError::Connect { .. })),
        "{:?}",
        result.err()
    );
    server.abort();
}

#[tokio::test]
async fn twiml_action_becomes_a_dial() {
    let (mut session, mut ws) = open_session().await;
    let start = read_greeting(&mut ws).await;
    let stream_sid = start["streamSid"].clone();
    let twiml = "<Response><Dial callerId=\"+15550001111\"><Sip>sip:agent@pbx;transport=tcp</Sip></Dial></Response>";
    let action =
        json!({"event": "action", "streamSid": stream_sid, "name": "twiml", "body": twiml});
    ws.send(Message::text(action.to_string())).await.unwrap();
    match next_event(&mut session.events).await {
        BotEvent::Action(Action::Dial(DialTarget {
            uri,
            caller_id,
            timeout_secs,
            ..
        })) => {
            assert_eq!(uri, "sip:agent@pbx;transport=tcp");
            assert_eq!(caller_id.as_deref(), Some("+15550001111"));
            assert_eq!(timeout_secs, 30);
        }
        other => panic!("expected a dial action, got {other:?}"),
    }
    // Other action names, several in one TwiML document.
    let forward =
        json!({"event": "action", "name": "forward-call", "body": "{\"number\":\"+1 555 0100\"}"});
    ws.send(Message::text(forward.to_string())).await.unwrap();
    match next_event(&mut session.events).await {
        BotEvent::Action(Action::Dial(target)) => assert_eq!(target.uri, "tel:+15550100"),
        other => panic!("expected a dial action, got {other:?}"),
    }
    let two = json!({"event": "action", "name": "twiml",
        "body": "<Response><Refer><Sip>sip:desk@pbx</Sip></Refer><Hangup/></Response>"});
    ws.send(Message::text(two.to_string())).await.unwrap();
    assert!(matches!(
        next_event(&mut session.events).await,
        BotEvent::Action(Action::Refer { uri }) if uri == "sip:desk@pbx"
    ));
    assert!(matches!(
        next_event(&mut session.events).await,
        BotEvent::Action(Action::Hangup { reason: None })
    ));
    session.control.send(BotControl::Hangup).await.unwrap();
    expect_stop_and_close(ws, &start).await;
    expect_closed_then_end(&mut session.events, true).await;
}

#[tokio::test]
async fn bad_twiml_is_answered_with_a_failed_action_result() {
    let (mut session, mut ws) = open_session().await;
    let start = read_greeting(&mut ws).await;
    for (name, body, needle) in [
        (
            "twiml",
            json!("<Response><Dial><Sip>sip:a@b</Dial></Response>"),
            "malformed",
        ),
        (
            "twiml",
            json!("<Response><Say>hi</Say></Response>"),
            "<Say>",
        ),
        ("DTMF", json!({"digits": "12x"}), "'x'"),
        ("transfer-somewhere", json!({}), "unknown action"),
    ] {
        let action = json!({"event": "action", "name": name, "body": body});
        ws.send(Message::text(action.to_string())).await.unwrap();
        let result = next_json(&mut ws).await;
        assert_eq!(result["event"], "action_result", "{result}");
        assert_eq!(result["name"], name);
        assert_eq!(result["ok"], false);
        assert_eq!(result["streamSid"], start["streamSid"]);
        let message = result["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
    }
    // Nothing reached the call; the session goes on.
    ws.send(Message::text(json!({"event": "clear"}).to_string()))
        .await
        .unwrap();
    assert!(matches!(
        next_event(&mut session.events).await,
        BotEvent::Clear
    ));
    drop(ws);
    expect_closed_then_end(&mut session.events, false).await;
}

#[tokio::test]
async fn action_results_are_forwarded_to_the_bot() {
    let (session, mut ws) = open_session().await;
    let start = read_greeting(&mut ws).await;
    session
        .control
        .send(BotControl::ActionResult {
            action: "dial".into(),
            ok: false,
            message: "dial is not available yet".into(),
        })
        .await
        .unwrap();
    let result = next_json(&mut ws).await;
    assert_eq!(
        result,
        json!({"event": "action_result", "sequenceNumber": "2", "streamSid": start["streamSid"],
               "name": "dial", "ok": false, "message": "dial is not available yet"})
    );
    session
        .control
        .send(BotControl::ActionResult {
            action: "hangup".into(),
            ok: true,
            message: "hanging up".into(),
        })
        .await
        .unwrap();
    let result = next_json(&mut ws).await;
    assert_eq!(result["sequenceNumber"], "3");
    assert_eq!(result["ok"], true);
    drop(session);
    expect_stop_and_close(ws, &start).await;
}

/// The way the gateway runs a session: polled by the call's own task.
#[tokio::test]
async fn a_polled_session_runs_in_its_callers_task() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/media", listener.local_addr().unwrap());
    let bot = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio_tungstenite::accept_async(tcp).await.unwrap()
    });
    let mut session = connector(url, 2_000)
        .open_polled(&call())
        .await
        .expect("the Media Streams connector is polled")
        .unwrap();
    let mut ws = bot.await.unwrap();
    let start = read_greeting(&mut ws).await;
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert_eq!(tasks, 0, "no task of its own");

    let samples = sine(160, 0);
    assert!(session.send_audio(&AudioFrame::from_samples(8_000, &samples)));
    let media = next_json(&mut ws).await;
    assert_eq!(media["event"], "media");
    assert_eq!(media["sequenceNumber"], "2");
    let payload = B64
        .decode(media["media"]["payload"].as_str().unwrap())
        .unwrap();
    let expected: Vec<u8> = samples.iter().map(|&s| ulaw_encode(s)).collect();
    assert_eq!(payload, expected);

    // 400 samples of bot audio: frames of 160, 160 and 80, then the mark.
    let bot_audio: Vec<u8> = sine(400, 9).iter().map(|&s| ulaw_encode(s)).collect();
    let media = json!({"event": "media", "streamSid": start["streamSid"],
                       "media": {"payload": B64.encode(&bot_audio)}});
    ws.send(Message::text(media.to_string())).await.unwrap();
    let mark = json!({"event": "mark", "streamSid": start["streamSid"], "mark": {"name": "m"}});
    ws.send(Message::text(mark.to_string())).await.unwrap();
    let mut got = Vec::new();
    for expected_len in [160, 160, 80] {
        match timeout(WAIT, poll_fn(|cx| session.poll_event(cx)))
            .await
            .unwrap()
        {
            BotEvent::Audio(frame) => {
                assert_eq!(frame.len(), expected_len);
                got.extend_from_slice(frame.samples());
            }
            other => panic!("expected audio, got {other:?}"),
        }
    }
    let decoded: Vec<i16> = bot_audio.iter().map(|&b| ulaw_decode(b)).collect();
    assert_eq!(got, decoded);
    let mark = timeout(WAIT, poll_fn(|cx| session.poll_event(cx)))
        .await
        .unwrap();
    assert!(
        matches!(&mark, BotEvent::Mark(name) if name == "m"),
        "{mark:?}"
    );

    session.control(BotControl::Hangup);
    let closed = timeout(WAIT, poll_fn(|cx| session.poll_event(cx)))
        .await
        .unwrap();
    assert!(
        matches!(closed, BotEvent::Closed { error: None }),
        "{closed:?}"
    );
    drop(session);
    expect_stop_and_close(ws, &start).await;
}
