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

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_flows::WebsocketBotConfig;
use switchboard_media::{AudioFormat, AudioFrame, FramePool, MAX_FRAME_SAMPLES};
use tokio::time::{timeout, Sleep};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

use crate::polled::{spawn_session, PolledBot};
use crate::socket::{finish_close, send_close, worth_logging, Socket};
use crate::{BotConnector, BotControl, BotEvent, BotSession, CallInfo, ConnectorError};

/// Room for the largest frame's s16le bytes, kept per session and reused.
const PCM_OUT_CAPACITY: usize = 2 * MAX_FRAME_SAMPLES;
/// Malformed messages tolerated before the bot is considered broken.
pub const MAX_MALFORMED: u64 = 20;
/// A bot that cannot take one message within this time is considered dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages for the bot (marks, digits, action results) held while its
/// socket is backed up; beyond this they are dropped, like caller audio.
const OUTBOX_CAPACITY: usize = crate::CONTROL_CAPACITY;

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
impl BotConnector for WebsocketConnector {
    async fn open(&self, call: &CallInfo) -> Result<BotSession, ConnectorError> {
        let bot = self.connect(call).await?;
        Ok(spawn_session(Box::new(bot)))
    }

    async fn open_polled(
        &self,
        call: &CallInfo,
    ) -> Option<Result<Box<dyn PolledBot>, ConnectorError>> {
        let bot = self.connect(call).await;
        Some(bot.map(|bot| Box::new(bot) as Box<dyn PolledBot>))
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
    /// `None` once the session is over: the socket was dropped (failure)
    /// or handed to the task that finishes closing it.
    ws: Option<Socket>,
    rate: u32,
    /// Bot audio is cut into 20 ms frames so the call's pacer sees ordinary frames.
    frame_samples: usize,
    /// The first byte of a sample split across two binary messages.
    odd_byte: Option<u8>,
    /// The last binary message's samples; `samples[framed..]` are not yet
    /// handed to the call. The next message is read only once all are, so
    /// the bot's socket, not memory here, absorbs a bot that runs ahead.
    samples: Vec<i16>,
    framed: usize,
    /// Events from the last text message not yet handed to the call.
    events: VecDeque<BotEvent>,
    /// Messages for the bot its socket could not take yet.
    outbox: VecDeque<Message>,
    /// Written to tungstenite but not yet to the socket.
    unflushed: bool,
    /// Armed while the socket takes nothing: [`WRITE_TIMEOUT`].
    write_deadline: Option<Pin<Box<Sleep>>>,
    /// How the session ended, until the call is told.
    ending: Option<Option<String>>,
    /// `Closed` was returned: nothing more to say.
    done: bool,
    /// tungstenite may hold a whole message already read from the socket.
    /// Cleared when a read finds nothing, so the call's other wake-ups
    /// skip tungstenite's read (which zero-fills its 8 KiB read buffer on
    /// every attempt) until the kernel reports new data.
    read_pending: bool,
    /// Caller audio on its way out: each frame's bytes are split off as the
    /// message's payload, and the space is reclaimed once tungstenite has
    /// copied them, so sending allocates nothing per frame.
    pcm_out: BytesMut,
    /// Boxes for the bot's frames, back here once the call plays them.
    frames: FramePool,
    stats: Stats,
}

impl WebsocketBot {
    fn new(ws: Socket, rate: u32) -> Self {
        let format = AudioFormat::new(rate);
        WebsocketBot {
            ws: Some(ws),
            rate,
            frame_samples: format.frame_samples().clamp(1, MAX_FRAME_SAMPLES),
            odd_byte: None,
            samples: Vec::with_capacity(MAX_FRAME_SAMPLES),
            framed: 0,
            events: VecDeque::new(),
            outbox: VecDeque::new(),
            unflushed: false,
            write_deadline: None,
            ending: None,
            done: false,
            read_pending: true,
            pcm_out: BytesMut::with_capacity(PCM_OUT_CAPACITY),
            frames: FramePool::new(),
            stats: Stats::default(),
        }
    }

    /// Whether tungstenite takes another message now.
    fn writable(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(ws) = self.ws.as_mut() else {
            return false;
        };
        match ws.poll_ready_unpin(cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(e)) => {
                self.fail(e.to_string());
                false
            }
            Poll::Pending => false,
        }
    }

    /// Hands `message` to tungstenite, after [`Self::writable`] said yes.
    fn start(&mut self, message: Message) {
        let Some(ws) = self.ws.as_mut() else {
            return;
        };
        match ws.start_send_unpin(message) {
            Ok(()) => self.unflushed = true,
            Err(e) => self.fail(e.to_string()),
        }
    }

    /// Moves queued messages and tungstenite's buffer to the socket; arms
    /// the write timeout while the socket takes nothing.
    fn flush(&mut self, cx: &mut Context<'_>) {
        while !self.outbox.is_empty() && self.writable(cx) {
            if let Some(message) = self.outbox.pop_front() {
                self.start(message);
            }
        }
        let Some(ws) = self.ws.as_mut() else {
            return;
        };
        if self.unflushed {
            match ws.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return self.fail(e.to_string()),
                Poll::Pending => {}
            }
        }
        if !self.unflushed && self.outbox.is_empty() {
            self.write_deadline = None;
        } else if self.write_deadline.is_none() {
            self.write_deadline = Some(Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
        }
    }

    /// A message for the bot, written now or queued behind earlier ones.
    fn send_message(&mut self, message: Message) {
        if self.ws.is_none() {
            return;
        }
        if self.outbox.len() >= OUTBOX_CAPACITY {
            tracing::debug!("the bot's socket is backed up: a message for it was dropped");
            return;
        }
        self.outbox.push_back(message);
        // Written from whatever task calls: a wake-up for the socket comes
        // from `poll_event`, which the call polls before it sleeps.
        self.flush(&mut Context::from_waker(Waker::noop()));
    }

    fn send_json(&mut self, value: &Value) {
        self.send_message(text(value));
    }

    fn send_action_result(&mut self, name: &str, ok: bool, message: &str) {
        let msg = json!({"event": "action_result", "name": name, "ok": ok, "message": message});
        self.send_json(&msg);
    }

    /// The session is over; `error` says why when it was not a clean end.
    fn end(&mut self, error: Option<String>) {
        if self.ending.is_some() || self.done {
            return;
        }
        let Stats {
            malformed,
            unknown,
            bad_actions,
            frames_out,
            frames_dropped,
            bytes_in,
        } = self.stats;
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
        self.samples.clear();
        self.framed = 0;
        self.events.clear();
        self.outbox.clear();
        self.write_deadline = None;
        self.ending = Some(error);
    }

    /// The socket failed or the bot broke the protocol: dropped at once.
    fn fail(&mut self, reason: String) {
        self.ws = None;
        self.end(Some(reason));
    }

    /// Hands the socket to a task that finishes closing it, so the call
    /// need not wait: after `stop` and our close frame when `say_stop`,
    /// else only the handshake the bot started.
    fn close_in_background(&mut self, say_stop: bool) {
        let Some(mut ws) = self.ws.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if say_stop {
                let stop = text(&json!({"event": "stop"}));
                match timeout(WRITE_TIMEOUT, ws.send(stop)).await {
                    Ok(Ok(())) => send_close(&mut ws, "the bot").await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "could not send stop"),
                    Err(_) => tracing::debug!("the bot took no stop in time"),
                }
            }
            finish_close(&mut ws, "the bot").await;
        });
    }

    /// The next 20 ms (or shorter, at the end) of the last message's audio.
    fn next_audio_frame(&mut self) -> Option<BotEvent> {
        if self.framed >= self.samples.len() {
            return None;
        }
        let end = (self.framed + self.frame_samples).min(self.samples.len());
        let frame = self
            .frames
            .with_samples(self.rate, &self.samples[self.framed..end]);
        self.framed = end;
        Some(BotEvent::Audio(frame))
    }

    fn on_message(&mut self, message: Message) {
        match message {
            Message::Binary(bytes) => self.on_audio(&bytes),
            Message::Text(text) => self.on_text(text.as_str()),
            Message::Close(_) => {
                self.end(None);
                // tungstenite has queued the reply to the bot's close frame.
                self.close_in_background(false);
            }
            // tungstenite answers pings itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }

    /// s16le of any length becomes 20 ms frames (the last may be shorter);
    /// an odd trailing byte waits for the next message.
    fn on_audio(&mut self, bytes: &[u8]) {
        self.stats.bytes_in += bytes.len() as u64;
        self.samples.clear();
        self.framed = 0;
        let mut data = bytes;
        if let Some(low) = self.odd_byte.take() {
            let Some((&high, rest)) = data.split_first() else {
                self.odd_byte = Some(low);
                return;
            };
            self.samples.push(i16::from_le_bytes([low, high]));
            data = rest;
        }
        let mut pairs = data.chunks_exact(2);
        self.samples
            .extend(pairs.by_ref().map(|p| i16::from_le_bytes([p[0], p[1]])));
        self.odd_byte = pairs.remainder().first().copied();
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
            "clear" => self.events.push_back(BotEvent::Clear),
            "mark" => match field("name") {
                Some(name) => self.events.push_back(BotEvent::Mark(name.to_owned())),
                None => self.malformed("a mark without a name"),
            },
            "hangup" => {
                let reason = field("reason").map(str::to_owned);
                self.events.push_back(BotEvent::Hangup { reason });
            }
            "transcript" => match field("text") {
                Some(text) => {
                    let role = field("role").unwrap_or("bot").to_owned();
                    let text = text.to_owned();
                    self.events.push_back(BotEvent::Transcript { role, text });
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

    /// The actions a bot asks for go to the call; one it got wrong is
    /// answered at once so the bot can carry on.
    fn on_action(&mut self, value: &Value) {
        match crate::actions::parse_action_message(value) {
            Ok(actions) => self
                .events
                .extend(actions.into_iter().map(BotEvent::Action)),
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
            return self.fail(format!(
                "the bot sent more than {MAX_MALFORMED} malformed messages"
            ));
        }
        if worth_logging(count) {
            tracing::warn!(count, "ignoring {what} from the bot");
        }
    }
}

impl PolledBot for WebsocketBot {
    fn audio_format(&self) -> AudioFormat {
        AudioFormat::new(self.rate)
    }

    fn send_audio(&mut self, frame: &AudioFrame) -> bool {
        if self.ws.is_none() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        if self.unflushed || !self.outbox.is_empty() {
            self.flush(&mut cx);
        }
        // A bot whose socket is backed up loses caller audio, not our
        // memory: nothing is queued behind a write the socket has not taken.
        if self.unflushed || !self.outbox.is_empty() || !self.writable(&mut cx) {
            self.stats.frames_dropped += 1;
            return false;
        }
        self.pcm_out.reserve(2 * frame.len());
        for &sample in frame.samples() {
            self.pcm_out.put_i16_le(sample);
        }
        let pcm = self.pcm_out.split().freeze();
        self.start(Message::binary(pcm));
        self.stats.frames_out += 1;
        self.flush(&mut cx);
        self.ws.is_some()
    }

    fn control(&mut self, control: BotControl) {
        match control {
            BotControl::Hangup => {
                self.end(None);
                self.close_in_background(true);
            }
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
        loop {
            if self.done {
                return Poll::Pending;
            }
            if let Some(frame) = self.next_audio_frame() {
                return Poll::Ready(frame);
            }
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(event);
            }
            if let Some(error) = self.ending.take() {
                self.done = true;
                return Poll::Ready(BotEvent::Closed { error });
            }
            self.flush(cx);
            if let Some(deadline) = self.write_deadline.as_mut() {
                if deadline.as_mut().poll(cx).is_ready() {
                    let seconds = WRITE_TIMEOUT.as_secs();
                    self.fail(format!("the bot took no data for {seconds} s"));
                    continue;
                }
            }
            let Some(ws) = self.ws.as_mut() else {
                // Unreachable in practice: a session loses its socket as it ends.
                self.end(Some("the bot's socket is gone".to_owned()));
                continue;
            };
            if !self.read_pending && !socket_readable(ws, cx) {
                return Poll::Pending;
            }
            match ws.poll_next_unpin(cx) {
                Poll::Pending => {
                    self.read_pending = false;
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(message))) => {
                    self.read_pending = true;
                    self.on_message(message);
                }
                Poll::Ready(Some(Err(e))) => self.fail(e.to_string()),
                Poll::Ready(None) => self.fail("connection closed".to_owned()),
            }
        }
    }
}

/// Whether the kernel reported data since tungstenite last found the
/// socket empty (registering the waker if not). TLS keeps its own buffer,
/// so a `wss://` socket is always worth a read.
fn socket_readable(ws: &Socket, cx: &mut Context<'_>) -> bool {
    match ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.poll_read_ready(cx).is_ready(),
        _ => true,
    }
}

impl Drop for WebsocketBot {
    /// A session dropped without a Hangup still says goodbye to the bot.
    fn drop(&mut self) {
        self.end(None);
        self.close_in_background(true);
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
