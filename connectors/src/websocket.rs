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
//! The session is a [`PolledBot`]: the call's own task writes caller audio
//! to the socket and reads the bot's messages, with no task or channel in
//! between ([`crate::polled`] says why). It ends with the call (Hangup or
//! dropped: `stop` and a close frame are sent, and the closing handshake
//! finishes in a small task of its own) or with the bot (close frame, socket
//! error), reported as `Closed`.

use std::collections::BTreeMap;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::SinkExt;
use serde_json::{json, Value};
use switchboard_flows::WebsocketBotConfig;
use switchboard_media::{AudioFormat, AudioFrame, MAX_FRAME_SAMPLES};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::pcm::{s16le_message, S16leDecoder};
use crate::polled::{poll_socket_session, BotOutput, PolledBot, PolledConnector, SocketSession};
use crate::socket::{worth_logging, Closing, PolledSocket, Socket};
use crate::{BotControl, BotEvent, CallInfo, ConnectorError};

/// Room for the largest frame's s16le bytes, kept per session and reused.
const PCM_OUT_CAPACITY: usize = 2 * MAX_FRAME_SAMPLES;
/// Malformed messages tolerated before the bot is considered broken.
pub const MAX_MALFORMED: u64 = 20;

/// Opens generic WebSocket bot sessions to one URL.
pub struct WebsocketConnector {
    config: WebsocketBotConfig,
}

impl WebsocketConnector {
    pub fn new(config: WebsocketBotConfig) -> Self {
        crate::install_crypto_provider();
        Self { config }
    }

    async fn connect(&self, call: &CallInfo) -> Result<WebsocketBot, ConnectorError> {
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
        Ok(WebsocketBot::new(ws, rate))
    }
}

#[async_trait::async_trait]
impl PolledConnector for WebsocketConnector {
    async fn connect_polled(&self, call: &CallInfo) -> Result<Box<dyn PolledBot>, ConnectorError> {
        Ok(Box::new(self.connect(call).await?))
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
    frames_dropped: u64,
    bytes_in: u64,
}

/// One session with a generic WebSocket bot, driven by its call.
struct WebsocketBot {
    socket: PolledSocket,
    output: BotOutput,
    rate: u32,
    pcm_in: S16leDecoder,
    /// Caller audio on its way out: each frame's bytes are split off as the
    /// message's payload, and the space is reclaimed once tungstenite has
    /// copied them, so sending allocates nothing per frame.
    pcm_out: BytesMut,
    stats: Stats,
}

impl WebsocketBot {
    fn new(ws: Socket, rate: u32) -> Self {
        WebsocketBot {
            socket: PolledSocket::new(ws),
            output: BotOutput::new(rate),
            rate,
            pcm_in: S16leDecoder::default(),
            pcm_out: BytesMut::with_capacity(PCM_OUT_CAPACITY),
            stats: Stats::default(),
        }
    }

    fn send_json(&mut self, value: &Value) {
        self.socket.send(text(value));
    }

    fn send_action_result(&mut self, name: &str, ok: bool, message: &str) {
        let msg = json!({"event": "action_result", "name": name, "ok": ok, "message": message});
        self.send_json(&msg);
    }

    /// The call is done with the bot: `stop`, a close frame, and the
    /// closing handshake in the background.
    fn hang_up(&mut self) {
        self.end(None);
        self.socket
            .close_in_background(Closing::Ours(Some(text(&json!({"event": "stop"})))));
    }

    /// s16le of any length becomes 20 ms frames (the last may be shorter).
    fn on_audio(&mut self, bytes: &[u8]) {
        self.stats.bytes_in += bytes.len() as u64;
        self.pcm_in.decode(bytes, self.output.audio());
    }

    /// The actions a bot asks for go to the call; one it got wrong is
    /// answered at once so the bot can carry on.
    fn on_action(&mut self, value: &Value) {
        match crate::actions::parse_action_message(value) {
            Ok(actions) => {
                for action in actions {
                    self.output.push(BotEvent::Action(action));
                }
            }
            Err(reason) => {
                self.stats.bad_actions += 1;
                let name = crate::actions::action_name(value);
                tracing::warn!(action = name, %reason, "refusing an action from the bot");
                self.send_action_result(name, false, &reason);
            }
        }
    }

    fn malformed(&mut self, what: &str) {
        self.stats.malformed += 1;
        let count = self.stats.malformed;
        if count > MAX_MALFORMED {
            // Broken: dropped at once, no goodbye.
            self.end(Some(format!(
                "the bot sent more than {MAX_MALFORMED} malformed messages"
            )));
            self.socket.abandon();
            return;
        }
        if worth_logging(count) {
            tracing::warn!(count, "ignoring {what} from the bot");
        }
    }
}

impl SocketSession for WebsocketBot {
    fn output(&mut self) -> &mut BotOutput {
        &mut self.output
    }

    fn socket(&mut self) -> &mut PolledSocket {
        &mut self.socket
    }

    fn on_text(&mut self, text: &str) {
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(e) => return self.malformed(&format!("a message that is not JSON ({e})")),
        };
        let Some(event) = value.get("event").and_then(Value::as_str) else {
            return self.malformed("a message without an event");
        };
        let field = |name: &str| value.get(name).and_then(Value::as_str);
        match event {
            "clear" => self.output.push(BotEvent::Clear),
            "mark" => match field("name") {
                Some(name) => self.output.push(BotEvent::Mark(name.to_owned())),
                None => self.malformed("a mark without a name"),
            },
            "hangup" => {
                let reason = field("reason").map(str::to_owned);
                self.output.push(BotEvent::Hangup { reason });
            }
            "transcript" => match field("text") {
                Some(text) => {
                    let role = field("role").unwrap_or("bot").to_owned();
                    let text = text.to_owned();
                    self.output.push(BotEvent::Transcript { role, text });
                }
                None => self.malformed("a transcript without text"),
            },
            "action" => self.on_action(&value),
            other => {
                self.stats.unknown += 1;
                if worth_logging(self.stats.unknown) {
                    tracing::debug!(
                        event = other,
                        count = self.stats.unknown,
                        "ignoring an unknown event from the bot"
                    );
                }
            }
        }
    }

    fn on_binary(&mut self, data: &[u8]) {
        self.on_audio(data);
    }

    /// The session is over; `error` says why when it was not a clean end.
    fn end(&mut self, error: Option<String>) {
        let Stats {
            malformed,
            unknown,
            bad_actions,
            frames_out,
            frames_dropped,
            bytes_in,
        } = self.stats;
        if !self.output.is_ended() {
            tracing::debug!(
                malformed,
                unknown,
                bad_actions,
                frames_out,
                frames_dropped,
                bytes_in,
                ?error,
                "websocket bot session ended"
            );
        }
        self.output.end(error);
    }
}

impl PolledBot for WebsocketBot {
    fn audio_format(&self) -> AudioFormat {
        AudioFormat::new(self.rate)
    }

    fn send_audio(&mut self, frame: &AudioFrame) -> bool {
        if !self.socket.is_open() || self.output.is_ended() {
            return false;
        }
        if !self.socket.ready_for_audio() {
            self.stats.frames_dropped += 1;
            return false;
        }
        let message = s16le_message(&mut self.pcm_out, frame.samples());
        self.socket.send_audio(message);
        self.stats.frames_out += 1;
        true
    }

    fn control(&mut self, control: BotControl) {
        match control {
            BotControl::Hangup => self.hang_up(),
            BotControl::MarkPlayed(name) => self.send_json(&json!({"event": "mark", "name": name})),
            BotControl::Dtmf(digit) => {
                self.send_json(&json!({"event": "dtmf", "digit": digit.to_string()}));
            }
            BotControl::ActionResult {
                action,
                ok,
                message,
            } => self.send_action_result(&action, ok, &message),
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<BotEvent> {
        poll_socket_session(self, cx)
    }
}

impl Drop for WebsocketBot {
    /// A session dropped without a Hangup still says goodbye to the bot.
    fn drop(&mut self) {
        self.hang_up();
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
