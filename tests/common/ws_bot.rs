//! A generic bot-side WebSocket server: records every message it gets and
//! sends what the test tells it to. Protocol logic lives in each test.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Debug)]
pub enum Received {
    Text(Value),
    Binary(Vec<u8>),
}

pub enum Send {
    Text(String),
    Binary(Vec<u8>),
    Close,
    /// Drop the TCP connection without a closing handshake.
    Drop,
}

#[derive(Default)]
pub struct WsLog {
    pub messages: Vec<(Instant, Received)>,
    /// Request path and query of the upgrade, and its headers.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub closed: bool,
    /// TCP connections accepted so far.
    pub connections: usize,
}

pub struct WsBot {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<WsLog>>,
    commands: mpsc::Sender<Send>,
    _runtime: tokio::runtime::Runtime,
}

impl WsBot {
    pub fn start() -> WsBot {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(WsLog::default()));
        let (commands, mut command_rx) = mpsc::channel::<Send>(1024);
        let server_log = log.clone();
        // Connections are served one after the other (a reconnecting
        // gateway opens the next only after the last failed), all logged
        // together and all driven by the same commands.
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let header_log = server_log.clone();
                #[allow(clippy::result_large_err)]
                let callback =
                    move |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          response| {
                        let mut log = header_log.lock().unwrap();
                        log.path = request.uri().to_string();
                        log.headers = request
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        Ok(response)
                    };
                server_log.lock().unwrap().connections += 1;
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    continue;
                };
                let (mut sink, mut stream) = ws.split();
                loop {
                    tokio::select! {
                        message = stream.next() => {
                            let received = match message {
                                Some(Ok(Message::Text(text))) => match serde_json::from_str(&text) {
                                    Ok(value) => Received::Text(value),
                                    Err(_) => Received::Text(Value::String(text.to_string())),
                                },
                                Some(Ok(Message::Binary(data))) => Received::Binary(data.to_vec()),
                                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                                Some(Ok(_)) => continue,
                            };
                            server_log.lock().unwrap().messages.push((Instant::now(), received));
                        }
                        command = command_rx.recv() => {
                            let message = match command {
                                Some(Send::Text(text)) => Message::Text(text.into()),
                                Some(Send::Binary(data)) => Message::Binary(data.into()),
                                Some(Send::Drop) => break,
                                Some(Send::Close) | None => {
                                    let _ = sink.send(Message::Close(None)).await;
                                    break;
                                }
                            };
                            if sink.send(message).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                server_log.lock().unwrap().closed = true;
            }
        });
        WsBot {
            addr,
            log,
            commands,
            _runtime: runtime,
        }
    }

    pub fn send_json(&self, value: Value) {
        self.commands
            .blocking_send(Send::Text(value.to_string()))
            .unwrap();
    }

    pub fn send_binary(&self, data: Vec<u8>) {
        self.commands.blocking_send(Send::Binary(data)).unwrap();
    }

    pub fn send_text(&self, text: &str) {
        self.commands
            .blocking_send(Send::Text(text.to_owned()))
            .unwrap();
    }

    /// Vanish mid-call, as a crashed bot or a broken network would.
    pub fn drop_connection(&self) {
        let _ = self.commands.blocking_send(Send::Drop);
    }

    pub fn close(&self) {
        let _ = self.commands.blocking_send(Send::Close);
    }

    /// All JSON messages whose `field` equals `value`.
    pub fn texts_where(&self, field: &str, value: &str) -> Vec<(Instant, Value)> {
        self.log
            .lock()
            .unwrap()
            .messages
            .iter()
            .filter_map(|(at, message)| match message {
                Received::Text(json) if json[field] == value => Some((*at, json.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn wait_text(&self, field: &str, value: &str, timeout: Duration) -> (Instant, Value) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.texts_where(field, value).into_iter().next() {
                return found;
            }
            assert!(Instant::now() < deadline, "bot never got {field}={value}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Concatenated binary payloads received so far.
    pub fn binary(&self) -> Vec<u8> {
        self.log
            .lock()
            .unwrap()
            .messages
            .iter()
            .filter_map(|(_, message)| match message {
                Received::Binary(data) => Some(data.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    pub fn wait_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log.lock().unwrap().closed {
            assert!(Instant::now() < deadline, "bot connection never closed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Zero crossings per second of `samples` taken at `rate`: twice the
/// frequency of a pure tone, whatever rate it was resampled through.
pub fn crossings_per_second(samples: &[i16], rate: u32) -> f64 {
    let crossings = samples
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count();
    crossings as f64 * rate as f64 / samples.len().max(1) as f64
}

pub fn sine(freq: f64, rate: u32, samples: usize, amplitude: f64) -> Vec<i16> {
    (0..samples)
        .map(|n| {
            (amplitude * (2.0 * std::f64::consts::PI * freq * n as f64 / rate as f64).sin()) as i16
        })
        .collect()
}

pub fn s16le(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

pub fn from_s16le(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}
