//! The generic WebSocket bot: Switchboard's own, simplest protocol, for bots
//! written against the gateway directly. The gateway is the client and
//! connects to the flow's `url`.
//!
//! **Audio** travels in binary frames of raw PCM, signed 16-bit little-endian
//! mono, at the flow's `sample_rate` in both directions. The gateway sends one
//! frame per 20 ms of caller audio; the bot may send any length (even odd
//! byte counts: a split sample is completed by the next frame) and faster
//! than real time: the gateway queues and paces it.
//!
//! **Messages** are text frames of JSON objects named by `event`.
//!
//! Gateway → bot:
//! - first, `{"event":"start","callId":…,"from":…,"to":…,"flow":…,
//!   "parameters":{…},"headers":{"X-…":…},"sampleRate":16000,"encoding":"pcm_s16le"}`
//!   (`headers` are the INVITE's X- headers; repeated ones are joined with `, `);
//! - `{"event":"mark","name":…}` once the audio sent before the bot's mark of
//!   that name has played (or was dropped by a clear);
//! - `{"event":"dtmf","digit":"5"}` when the caller presses a key;
//! - `{"event":"action_result","name":…,"ok":…,"message":…}`: outcome of an
//!   action, also sent at once with `ok: false` for one that cannot be understood;
//! - `{"event":"stop"}` when the call ends, then a close frame.
//!
//! Bot → gateway:
//! - `{"event":"clear"}`: drop the bot audio not yet played (barge-in);
//! - `{"event":"mark","name":…}`: report back when the audio before it has played;
//! - `{"event":"transcript","role":…,"text":…}`: for the logs (`role` defaults to `bot`);
//! - `{"event":"hangup","reason":…}`: end the call (`reason` optional);
//! - `{"event":"action","name":…,"body":…}`: `twiml`, `forward-call`,
//!   `hangup`, `DTMF`, as described in [`crate::actions`].
//!
//! Unknown events are ignored. Messages that are not JSON objects with an
//! `event`, or lack a required field, are ignored too, but a bot that sends
//! more than [`MAX_MALFORMED`] of them is dropped as broken.
//!
//! One task per session owns the socket, as in [`crate::twilio_stream`]: it
//! ends with the session (Hangup, caller audio closed, events receiver
//! dropped: `stop` and a close frame are sent) or with the bot (close frame,
//! socket error), always after sending `Closed` if anyone still listens.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_flows::WebsocketBotConfig;
use switchboard_media::{AudioFormat, FramePool, PooledFrame, MAX_FRAME_SAMPLES};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::socket::{finish_close, send_close, worth_logging, Ending, Socket};
use crate::{
    BotConnector, BotControl, BotEvent, BotSession, CallInfo, ConnectorError, AUDIO_IN_CAPACITY,
    CONTROL_CAPACITY, EVENTS_CAPACITY,
};

/// Room for the largest frame's s16le bytes, kept per session and reused.
const PCM_OUT_CAPACITY: usize = 2 * MAX_FRAME_SAMPLES;
/// Malformed messages tolerated before the bot is considered broken.
pub const MAX_MALFORMED: u64 = 20;
/// A bot that cannot take one message within this time is considered dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens generic WebSocket bot sessions to one URL.
pub struct WebsocketConnector {
    config: WebsocketBotConfig,
}

impl WebsocketConnector {
    pub fn new(config: WebsocketBotConfig) -> Self {
        crate::install_crypto_provider();
        Self { config }
    }
}

#[async_trait::async_trait]
impl BotConnector for WebsocketConnector {
    async fn open(&self, call: &CallInfo) -> Result<BotSession, ConnectorError> {
        let url = &self.config.url;
        let rate = self.config.sample_rate;
        let limit = Duration::from_millis(self.config.connect_timeout_ms);
        // The start message is part of "ready for audio", so it shares the budget.
        let ws = match timeout(limit, connect_and_start(url, call, rate)).await {
            Err(_) => {
                return Err(ConnectorError::ConnectTimeout {
                    url: url.clone(),
                    timeout_ms: self.config.connect_timeout_ms,
                })
            }
            Ok(Err(reason)) => {
                return Err(ConnectorError::Connect {
                    url: url.clone(),
                    reason,
                })
            }
            Ok(Ok(ws)) => ws,
        };
        tracing::debug!(call_id = %call.call_id, %url, rate, "websocket bot started");

        let (audio_tx, audio_rx) = mpsc::channel(AUDIO_IN_CAPACITY);
        let (control_tx, control_rx) = mpsc::channel(CONTROL_CAPACITY);
        let (events_tx, events_rx) = mpsc::channel(EVENTS_CAPACITY);
        let format = AudioFormat::new(rate);
        let session = Session {
            ws,
            events: events_tx,
            rate,
            frame_samples: format.frame_samples().clamp(1, MAX_FRAME_SAMPLES),
            odd_byte: None,
            samples: Vec::with_capacity(MAX_FRAME_SAMPLES),
            pcm_out: BytesMut::with_capacity(PCM_OUT_CAPACITY),
            frames: FramePool::new(),
            stats: Stats::default(),
        };
        tokio::spawn(session.run(audio_rx, control_rx));
        Ok(BotSession {
            audio_format: format,
            audio_in: audio_tx,
            frames: FramePool::new(),
            control: control_tx,
            events: events_rx,
        })
    }
}

async fn connect_and_start(url: &str, call: &CallInfo, rate: u32) -> Result<Socket, String> {
    // Nagle would hold back 20 ms frames waiting for ACKs: disable it.
    let (mut ws, _response) = tokio_tungstenite::connect_async_with_config(
        url,
        Some(crate::socket::bot_socket_limits()),
        true,
    )
    .await
    .map_err(|e| e.to_string())?;
    ws.send(Message::text(start_message(call, rate).to_string()))
        .await
        .map_err(|e| format!("sending start: {e}"))?;
    Ok(ws)
}

fn start_message(call: &CallInfo, rate: u32) -> Value {
    let mut headers: BTreeMap<&str, String> = BTreeMap::new();
    for (name, value) in &call.x_headers {
        headers
            .entry(name)
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    json!({
        "event": "start",
        "callId": call.call_id,
        "from": call.from,
        "to": call.to,
        "flow": call.flow,
        "parameters": call.parameters,
        "headers": headers,
        "sampleRate": rate,
        "encoding": "pcm_s16le",
    })
}

fn text(value: &Value) -> Message {
    Message::text(value.to_string())
}

/// Things the bot got wrong, counted for the logs and the malformed limit.
#[derive(Default, Debug)]
struct Stats {
    malformed: u64,
    unknown: u64,
    bad_actions: u64,
    frames_out: u64,
    bytes_in: u64,
}

struct Session {
    ws: Socket,
    events: mpsc::Sender<BotEvent>,
    rate: u32,
    /// Bot audio is cut into 20 ms frames so the call's pacer sees ordinary frames.
    frame_samples: usize,
    /// The first byte of a sample split across two binary messages.
    odd_byte: Option<u8>,
    /// Reused for every binary message's samples.
    samples: Vec<i16>,
    /// Caller audio on its way out: each frame's bytes are split off as the
    /// message's payload, and the space is reclaimed once tungstenite has
    /// copied them, so sending allocates nothing per frame.
    pcm_out: BytesMut,
    /// Boxes for the bot's frames, back here once the call plays them.
    frames: FramePool,
    stats: Stats,
}

impl Session {
    async fn run(
        mut self,
        audio_in: mpsc::Receiver<PooledFrame>,
        control: mpsc::Receiver<BotControl>,
    ) {
        let ending = match self.pump(audio_in, control).await {
            Ok(never) => match never {},
            Err(ending) => ending,
        };
        let error = match &ending {
            Ending::Hangup | Ending::CallGone | Ending::Abandoned => {
                if let Err(reason) = self.send(text(&json!({"event": "stop"}))).await {
                    tracing::debug!(%reason, "could not send stop");
                } else {
                    send_close(&mut self.ws, "the bot").await;
                }
                None
            }
            // tungstenite has queued the reply to the bot's close frame.
            Ending::BotClosed => None,
            Ending::Failed(reason) => Some(reason.clone()),
        };
        let Stats {
            malformed,
            unknown,
            bad_actions,
            frames_out,
            bytes_in,
        } = self.stats;
        tracing::debug!(
            malformed,
            unknown,
            bad_actions,
            frames_out,
            bytes_in,
            ?error,
            "websocket bot session ended"
        );
        let failed = error.is_some();
        // The call learns first; the close handshake is only socket hygiene.
        let _ = self.events.send(BotEvent::Closed { error }).await;
        if !failed {
            finish_close(&mut self.ws, "the bot").await;
        }
    }

    /// Moves messages until something ends the session; never returns `Ok`.
    async fn pump(
        &mut self,
        mut audio_in: mpsc::Receiver<PooledFrame>,
        mut control: mpsc::Receiver<BotControl>,
    ) -> Result<std::convert::Infallible, Ending> {
        let mut control_open = true;
        loop {
            tokio::select! {
                // Control first so a Hangup is not starved by audio.
                biased;
                message = control.recv(), if control_open => match message {
                    Some(BotControl::Hangup) => return Err(Ending::Hangup),
                    Some(BotControl::MarkPlayed(name)) => {
                        self.send_json(&json!({"event": "mark", "name": name})).await?;
                    }
                    Some(BotControl::Dtmf(digit)) => {
                        self.send_json(&json!({"event": "dtmf", "digit": digit.to_string()})).await?;
                    }
                    Some(BotControl::ActionResult { action, ok, message }) => {
                        self.send_action_result(&action, ok, &message).await?;
                    }
                    // audio_in still tells us when the call is gone.
                    None => control_open = false,
                },
                // Caller audio before the bot's messages, as in twilio_stream.
                frame = audio_in.recv() => match frame {
                    Some(frame) => {
                        self.pcm_out.reserve(2 * frame.len());
                        for &sample in frame.samples() {
                            self.pcm_out.put_i16_le(sample);
                        }
                        let pcm = self.pcm_out.split().freeze();
                        self.stats.frames_out += 1;
                        self.send(Message::binary(pcm)).await.map_err(Ending::Failed)?;
                    }
                    None => return Err(Ending::CallGone),
                },
                incoming = self.ws.next() => match incoming {
                    Some(Ok(message)) => self.on_message(message).await?,
                    Some(Err(e)) => return Err(Ending::Failed(e.to_string())),
                    None => return Err(Ending::Failed("connection closed".to_owned())),
                },
                () = self.events.closed() => return Err(Ending::Abandoned),
            }
        }
    }

    async fn send(&mut self, message: Message) -> Result<(), String> {
        match timeout(WRITE_TIMEOUT, self.ws.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "the bot took no data for {} s",
                WRITE_TIMEOUT.as_secs()
            )),
        }
    }

    async fn send_json(&mut self, value: &Value) -> Result<(), Ending> {
        self.send(text(value)).await.map_err(Ending::Failed)
    }

    async fn send_action_result(
        &mut self,
        name: &str,
        ok: bool,
        message: &str,
    ) -> Result<(), Ending> {
        let msg = json!({"event": "action_result", "name": name, "ok": ok, "message": message});
        self.send_json(&msg).await
    }

    async fn emit(&self, event: BotEvent) -> Result<(), Ending> {
        // Awaiting here is the back-pressure: we stop reading the socket.
        self.events.send(event).await.map_err(|_| Ending::Abandoned)
    }

    async fn on_message(&mut self, message: Message) -> Result<(), Ending> {
        match message {
            Message::Binary(bytes) => self.on_audio(&bytes).await,
            Message::Text(text) => self.on_text(text.as_str()).await,
            Message::Close(_) => Err(Ending::BotClosed),
            // tungstenite answers pings itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
        }
    }

    /// s16le of any length becomes 20 ms frames (the last may be shorter);
    /// an odd trailing byte waits for the next message.
    async fn on_audio(&mut self, bytes: &[u8]) -> Result<(), Ending> {
        self.stats.bytes_in += bytes.len() as u64;
        self.samples.clear();
        let mut data = bytes;
        if let Some(low) = self.odd_byte.take() {
            let Some((&high, rest)) = data.split_first() else {
                self.odd_byte = Some(low);
                return Ok(());
            };
            self.samples.push(i16::from_le_bytes([low, high]));
            data = rest;
        }
        let mut pairs = data.chunks_exact(2);
        self.samples
            .extend(pairs.by_ref().map(|p| i16::from_le_bytes([p[0], p[1]])));
        self.odd_byte = pairs.remainder().first().copied();
        for chunk in self.samples.chunks(self.frame_samples) {
            let frame = self.frames.with_samples(self.rate, chunk);
            // Field-level borrows: `samples` is read while `events` sends.
            self.events
                .send(BotEvent::Audio(frame))
                .await
                .map_err(|_| Ending::Abandoned)?;
        }
        Ok(())
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Ending> {
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(e) => return self.malformed(&format!("a message that is not JSON ({e})")),
        };
        let Some(event) = value.get("event").and_then(Value::as_str) else {
            return self.malformed("a message without an event");
        };
        let field = |name: &str| value.get(name).and_then(Value::as_str);
        match event {
            "clear" => self.emit(BotEvent::Clear).await,
            "mark" => match field("name") {
                Some(name) => self.emit(BotEvent::Mark(name.to_owned())).await,
                None => self.malformed("a mark without a name"),
            },
            "hangup" => {
                let reason = field("reason").map(str::to_owned);
                self.emit(BotEvent::Hangup { reason }).await
            }
            "transcript" => match field("text") {
                Some(text) => {
                    let role = field("role").unwrap_or("bot").to_owned();
                    let text = text.to_owned();
                    self.emit(BotEvent::Transcript { role, text }).await
                }
                None => self.malformed("a transcript without text"),
            },
            "action" => self.on_action(&value).await,
            other => {
                self.stats.unknown += 1;
                if worth_logging(self.stats.unknown) {
                    tracing::debug!(
                        event = other,
                        count = self.stats.unknown,
                        "ignoring an unknown event from the bot"
                    );
                }
                Ok(())
            }
        }
    }

    /// The actions a bot asks for go to the call; one it got wrong is
    /// answered at once so the bot can carry on.
    async fn on_action(&mut self, value: &Value) -> Result<(), Ending> {
        match crate::actions::parse_action_message(value) {
            Ok(actions) => {
                for action in actions {
                    self.emit(BotEvent::Action(action)).await?;
                }
                Ok(())
            }
            Err(reason) => {
                self.stats.bad_actions += 1;
                let name = crate::actions::action_name(value);
                tracing::warn!(action = name, %reason, "refusing an action from the bot");
                self.send_action_result(name, false, &reason).await
            }
        }
    }

    fn malformed(&mut self, what: &str) -> Result<(), Ending> {
        self.stats.malformed += 1;
        let count = self.stats.malformed;
        if count > MAX_MALFORMED {
            return Err(Ending::Failed(format!(
                "the bot sent more than {MAX_MALFORMED} malformed messages"
            )));
        }
        if worth_logging(count) {
            tracing::warn!(count, "ignoring {what} from the bot");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_message_shape() {
        let call = CallInfo {
            call_id: "cid@host".into(),
            from: "alice".into(),
            to: "100".into(),
            flow: "support".into(),
            parameters: BTreeMap::from([("lang".to_owned(), "en".to_owned())]),
            x_headers: vec![
                ("X-Case".into(), "1".into()),
                ("X-Tag".into(), "a".into()),
                ("X-Case".into(), "2".into()),
            ],
            ..CallInfo::default()
        };
        assert_eq!(
            start_message(&call, 24_000),
            json!({"event": "start", "callId": "cid@host", "from": "alice", "to": "100",
                   "flow": "support", "parameters": {"lang": "en"},
                   "headers": {"X-Case": "1, 2", "X-Tag": "a"},
                   "sampleRate": 24000, "encoding": "pcm_s16le"})
        );
    }
}
