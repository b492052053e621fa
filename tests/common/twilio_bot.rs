//! A bot server speaking the Twilio Media Streams protocol (PROTOCOLS.md §3),
//! scripted by the test: it records what it receives and does what the test
//! tells it to.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Something the test wants the bot to send.
pub enum BotCommand {
    /// μ-law bytes, sent as `media` events in chunks of `chunk` bytes.
    Media {
        ulaw: Vec<u8>,
        chunk: usize,
    },
    Mark(String),
    Clear,
    /// Close the WebSocket (the bot hangs up).
    Close,
    /// Any other message, e.g. a Voiceflow-style action.
    Json(Value),
}

#[derive(Default)]
pub struct BotLog {
    pub start: Option<Value>,
    pub events: Vec<(Instant, Value)>,
    pub inbound_ulaw: Vec<u8>,
    pub closed: bool,
}

pub struct TwilioBot {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<BotLog>>,
    pub commands: mpsc::Sender<BotCommand>,
    _runtime: tokio::runtime::Runtime,
}

impl TwilioBot {
    pub fn start() -> TwilioBot {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(BotLog::default()));
        let (commands, mut command_rx) = mpsc::channel::<BotCommand>(64);
        let server_log = log.clone();
        runtime.spawn(async move {
            // Sessions one after another (a caller back from a transfer
            // gets a new one); commands go to the current session.
            while let Ok((stream, _)) = listener.accept().await {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { continue };
                let (mut sink, mut stream) = ws.split();
                let mut stream_sid = String::new();
                loop {
                    tokio::select! {
                        message = stream.next() => {
                            let Some(Ok(message)) = message else { break };
                            let text = match message {
                                Message::Text(text) => text.to_string(),
                                Message::Close(_) => break,
                                _ => continue,
                            };
                            let value: Value = serde_json::from_str(&text).expect("bot got JSON");
                            let mut log = server_log.lock().unwrap();
                            match value["event"].as_str() {
                                Some("start") => {
                                    stream_sid = value["streamSid"].as_str().unwrap_or_default().to_string();
                                    log.start = Some(value.clone());
                                }
                                Some("media") => {
                                    let payload = value["media"]["payload"].as_str().unwrap_or_default();
                                    let bytes = base64::engine::general_purpose::STANDARD.decode(payload).expect("base64 payload");
                                    log.inbound_ulaw.extend_from_slice(&bytes);
                                }
                                _ => {}
                            }
                            log.events.push((Instant::now(), value));
                        }
                        command = command_rx.recv() => {
                            let Some(command) = command else { return };
                            let messages: Vec<Value> = match command {
                                BotCommand::Media { ulaw, chunk } => ulaw
                                    .chunks(chunk)
                                    .map(|part| json!({
                                        "event": "media",
                                        "streamSid": stream_sid,
                                        "media": { "payload": base64::engine::general_purpose::STANDARD.encode(part) }
                                    }))
                                    .collect(),
                                BotCommand::Mark(name) => vec![json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})],
                                BotCommand::Clear => vec![json!({"event": "clear", "streamSid": stream_sid})],
                                BotCommand::Json(value) => vec![value],
                                BotCommand::Close => {
                                    let _ = sink.send(Message::Close(None)).await;
                                    break;
                                }
                            };
                            for message in messages {
                                if sink.send(Message::Text(message.to_string().into())).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
                server_log.lock().unwrap().closed = true;
            }
        });
        TwilioBot {
            addr,
            log,
            commands,
            _runtime: runtime,
        }
    }

    pub fn send(&self, command: BotCommand) {
        self.commands.blocking_send(command).unwrap();
    }

    /// Waits for an event of `kind` satisfying `check`; returns when it arrived.
    pub fn wait_event(
        &self,
        kind: &str,
        check: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> (Instant, Value) {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let log = self.log.lock().unwrap();
                if let Some(found) = log
                    .events
                    .iter()
                    .find(|(_, value)| value["event"] == kind && check(value))
                {
                    return found.clone();
                }
            }
            if Instant::now() > deadline {
                let kinds: Vec<String> = self
                    .log
                    .lock()
                    .unwrap()
                    .events
                    .iter()
                    .map(|(_, v)| v["event"].to_string())
                    .collect();
                panic!("bot never got a `{kind}` event; got {kinds:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log.lock().unwrap().closed {
            assert!(Instant::now() < deadline, "bot session was never closed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
