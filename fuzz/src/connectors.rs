//! Each bot connector's message handling, driven for real: a session is
//! opened to a bot server in this thread (a WebSocket, and for Ultravox the
//! REST call it creates first), every input is sent to it as one message
//! (text when it is UTF-8, else binary), then a ping; the pong says the
//! connector has handled the input. A session that ends (a `stop`, a
//! hang-up) is reopened for the next input.
//!
//! Connectors run their sessions in tokio tasks, whose panics tokio
//! catches; the driver's panic hook counts every panic, so a target panics
//! itself when the count moved while its input was handled.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchboard_connectors::{BotConnector, BotSession, CallInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    TwilioStream,
    Websocket,
    Ultravox,
    OpenAiRealtime,
}

struct Live {
    bot: WebSocketStream<TcpStream>,
    /// Held so the session does not end for want of a caller.
    _session: (
        tokio::sync::mpsc::Sender<switchboard_media::PooledFrame>,
        tokio::sync::mpsc::Sender<switchboard_connectors::BotControl>,
    ),
    ended: Arc<AtomicBool>,
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    live: Option<Live>,
}

/// Sessions opened and inputs a live session acknowledged, since start:
/// a target whose sessions never open would otherwise look fast and clean.
static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static HANDLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn sessions_opened_and_inputs_handled() -> (u64, u64) {
    (
        OPENED.load(Ordering::Relaxed),
        HANDLED.load(Ordering::Relaxed),
    )
}

thread_local! {
    static HARNESSES: RefCell<HashMap<Kind, Harness>> = RefCell::new(HashMap::new());
}

fn call() -> CallInfo {
    CallInfo {
        call_id: "fuzz@127.0.0.1".into(),
        from: "fuzzer".into(),
        to: "100".into(),
        flow: "fuzz".into(),
        ..CallInfo::default()
    }
}

/// Answers Ultravox's call creation with a join URL to `ws`.
async fn fake_ultravox_rest(listener: TcpListener, ws: String) {
    let Ok((mut tcp, _)) = listener.accept().await else {
        return;
    };
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    // Headers, then the body its Content-Length announces.
    loop {
        let Ok(n) = tcp.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                break;
            }
        }
    }
    let body = format!(r#"{{"callId":"fuzz-call","joinUrl":"{ws}"}}"#);
    let response = format!(
        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(response.as_bytes()).await;
}

async fn open(kind: Kind) -> Option<Live> {
    let listener = TcpListener::bind("127.0.0.1:0").await.ok()?;
    let ws_url = format!("ws://{}/bot", listener.local_addr().ok()?);
    let connector: Box<dyn BotConnector> = match kind {
        Kind::TwilioStream => Box::new(
            switchboard_connectors::twilio_stream::TwilioStreamConnector::new(
                serde_json::from_value(serde_json::json!({ "url": ws_url })).ok()?,
            ),
        ),
        Kind::Websocket => Box::new(switchboard_connectors::websocket::WebsocketConnector::new(
            serde_json::from_value(serde_json::json!({ "url": ws_url })).ok()?,
        )),
        Kind::OpenAiRealtime => Box::new(
            switchboard_connectors::openai_realtime::OpenAiRealtimeConnector::new(
                serde_json::from_value(
                    serde_json::json!({ "api_key": "fuzz", "base_url": ws_url }),
                )
                .ok()?,
            ),
        ),
        Kind::Ultravox => {
            let rest = TcpListener::bind("127.0.0.1:0").await.ok()?;
            let base = format!("http://{}", rest.local_addr().ok()?);
            tokio::spawn(fake_ultravox_rest(rest, ws_url.clone()));
            Box::new(switchboard_connectors::ultravox::UltravoxConnector::new(
                serde_json::from_value(serde_json::json!({ "api_key": "fuzz", "base_url": base }))
                    .ok()?,
            ))
        }
    };
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.ok()?;
        // Two small writes per input: Nagle would hold the ping 40 ms.
        tcp.set_nodelay(true).ok()?;
        tokio_tungstenite::accept_async(tcp).await.ok()
    });
    let session: BotSession = tokio::time::timeout(Duration::from_secs(5), connector.open(&call()))
        .await
        .ok()?
        .ok()?;
    let bot = accept.await.ok()??;
    let ended = Arc::new(AtomicBool::new(false));
    let BotSession {
        audio_in,
        control,
        mut events,
        ..
    } = session;
    let flag = ended.clone();
    tokio::spawn(async move {
        while events.recv().await.is_some() {}
        flag.store(true, Ordering::Relaxed);
    });
    Some(Live {
        bot,
        _session: (audio_in, control),
        ended,
    })
}

/// Sends `bytes` to a live session of `kind` and waits until it is handled.
fn feed(kind: Kind, bytes: &[u8]) {
    let panics_before = crate::panics_seen();
    HARNESSES.with(|harnesses| {
        let mut harnesses = harnesses.borrow_mut();
        let harness = harnesses.entry(kind).or_insert_with(|| Harness {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime"),
            live: None,
        });
        let Harness { runtime, live } = harness;
        runtime.block_on(async {
            if live
                .as_ref()
                .is_none_or(|l| l.ended.load(Ordering::Relaxed))
            {
                *live = open(kind).await;
                if live.is_some() {
                    OPENED.fetch_add(1, Ordering::Relaxed);
                }
            }
            let Some(session) = live.as_mut() else {
                return;
            };
            let message = match std::str::from_utf8(bytes) {
                Ok(text) => Message::text(text),
                Err(_) => Message::binary(bytes.to_vec()),
            };
            let handled = async {
                session.bot.send(message).await.ok()?;
                session
                    .bot
                    .send(Message::Ping(b"sync".to_vec().into()))
                    .await
                    .ok()?;
                while let Some(Ok(message)) = session.bot.next().await {
                    if let Message::Pong(payload) = message {
                        if &payload[..] == b"sync" {
                            return Some(());
                        }
                    }
                }
                None
            };
            let outcome = tokio::time::timeout(Duration::from_secs(2), handled).await;
            if matches!(outcome, Ok(Some(()))) {
                HANDLED.fetch_add(1, Ordering::Relaxed);
            } else {
                // Ended (or stuck, which a later session would show too):
                // a new session for the next input.
                *live = None;
            }
        });
    });
    assert_eq!(
        crate::panics_seen(),
        panics_before,
        "the {kind:?} session panicked on this input"
    );
}

pub fn twilio_stream(bytes: &[u8]) {
    feed(Kind::TwilioStream, bytes);
}

pub fn websocket(bytes: &[u8]) {
    feed(Kind::Websocket, bytes);
}

pub fn ultravox(bytes: &[u8]) {
    feed(Kind::Ultravox, bytes);
}

pub fn openai_realtime(bytes: &[u8]) {
    feed(Kind::OpenAiRealtime, bytes);
}
