//! OpenAI Realtime, GA protocol, over WebSocket (PROTOCOLS.md §5).
//!
//! The gateway connects to `{base_url}?model=…` with the API key as a bearer
//! token and sets the session up with one `session.update` whose every field
//! we rely on is explicit (an unset `turn_detection` would switch the
//! server's voice detection off). Audio is `audio/pcmu` at 8 kHz for G.711
//! calls, so nothing is resampled, or `audio/pcm` at 24 kHz.
//!
//! Barge-in is the delicate part: when the server hears the caller start to
//! speak, the call's playout queue is cleared, the active response is
//! cancelled and the assistant's audio item is truncated at the
//! milliseconds the caller actually heard, read from the call's
//! [`PlayoutClock`] — so the model's memory of what it said matches what
//! the caller heard.
//!
//! Functions offered to the model are the flow's tools; a call becomes an
//! [`switchboard_flows::Action`] and is answered with a
//! `function_call_output` item and `response.create` once the call reports
//! the outcome.
//!
//! The session is a [`PolledBot`], driven by the call's own task rather than
//! a task of its own ([`crate::polled`] says why). It ends with the call
//! (Hangup or dropped: the protocol has no goodbye, so a close frame is sent
//! at once, which ends the session and its billing, and the closing
//! handshake finishes in a small task of its own) or with the server (close
//! frame, socket error, too many malformed events), reported as `Closed`.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use futures_util::SinkExt;
use serde::Deserialize;
use serde_json::{json, Value};
use switchboard_flows::{OpenAiRealtimeConfig, RealtimeAudio, ToolKind};
use switchboard_media::g711::{ulaw_decode, ulaw_encode};
use switchboard_media::{AudioFormat, AudioFrame};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::pcm::S16leDecoder;
use crate::playout_position::PlayoutPosition;
use crate::polled::{
    is_wrong_rate, poll_socket_session, BotOutput, PolledBot, PolledConnector, SocketSession,
};
use crate::socket::{note, Closing, PolledSocket, Socket};
use crate::text::{push_capped, snippet};
use crate::tools::{self, tool_action};
use crate::{BotControl, BotEvent, CallInfo, ConnectorError, PlayoutClock};

/// Past this many malformed messages the peer is clearly not speaking the protocol.
const MAX_MALFORMED: u64 = 20;
/// Function calls awaiting the call's answer; the oldest is forgotten beyond this.
const MAX_PENDING_CALLS: usize = 8;
/// Cap on one transcript kept for the logs.
const MAX_TRANSCRIPT_BYTES: usize = 8 * 1024;
/// Voice detection that ends the model's turn on a pause and lets the
/// caller interrupt; tuned for phone audio, which is quieter than a headset.
const SERVER_VAD: &str = r#"{"type":"server_vad","threshold":0.5,"prefix_padding_ms":300,"silence_duration_ms":500,"create_response":true,"interrupt_response":true}"#;

/// Opens OpenAI Realtime sessions with one flow's settings.
pub struct OpenAiRealtimeConnector {
    config: OpenAiRealtimeConfig,
    tools: Arc<BTreeMap<String, ToolKind>>,
    /// The `session.update`, the same for every call of the flow.
    session_update: String,
}

impl OpenAiRealtimeConnector {
    pub fn new(config: OpenAiRealtimeConfig) -> Self {
        crate::install_crypto_provider();
        Self {
            tools: Arc::new(config.tools.clone()),
            session_update: session_update(&config).to_string(),
            config,
        }
    }

    fn url(&self) -> String {
        let base = self.config.base_url.trim_end_matches('/');
        let separator = if base.contains('?') { '&' } else { '?' };
        format!("{base}{separator}model={}", self.config.model)
    }

    async fn connect(&self, call: &CallInfo) -> Result<OpenAiBot, ConnectorError> {
        let url = self.url();
        let limit = Duration::from_millis(self.config.connect_timeout_ms);
        // The session set-up is part of "ready for audio", so it shares the budget.
        let ws = match timeout(limit, self.connect_and_set_up(&url)).await {
            Err(_) => {
                return Err(ConnectorError::ConnectTimeout {
                    url,
                    timeout_ms: self.config.connect_timeout_ms,
                })
            }
            Ok(Err(reason)) => return Err(ConnectorError::Connect { url, reason }),
            Ok(Ok(ws)) => ws,
        };
        tracing::debug!(call_id = %call.call_id, %url, "OpenAI Realtime session started");

        let format = AudioFormat::new(match self.config.audio {
            RealtimeAudio::Pcmu => 8000,
            RealtimeAudio::Pcm24k => 24_000,
        });
        Ok(OpenAiBot {
            socket: PolledSocket::new(ws),
            output: BotOutput::new(format.sample_rate),
            tools: Arc::clone(&self.tools),
            audio: self.config.audio,
            format,
            clock: call.playout.clone(),
            position: PlayoutPosition::new(format.sample_rate),
            response_active: false,
            pcm_in: S16leDecoder::default(),
            decoded: Vec::new(),
            outgoing: String::new(),
            pending: VecDeque::new(),
            stats: Stats::default(),
        })
    }

    async fn connect_and_set_up(&self, url: &str) -> Result<Socket, String> {
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.config.api_key))
            .map_err(|_| "the API key is not a valid header value".to_owned())?;
        request.headers_mut().insert("Authorization", bearer);
        let limits = crate::socket::bot_socket_limits();
        // Nagle would hold back 20 ms frames waiting for ACKs: disable it.
        let (mut ws, _response) =
            tokio_tungstenite::connect_async_with_config(request, Some(limits), true)
                .await
                .map_err(|e| handshake_error(&e))?;
        ws.send(Message::text(self.session_update.clone()))
            .await
            .map_err(|e| format!("sending session.update: {e}"))?;
        if self.config.speak_first {
            ws.send(Message::text(r#"{"type":"response.create"}"#))
                .await
                .map_err(|e| format!("sending response.create: {e}"))?;
        }
        Ok(ws)
    }
}

/// The server's refusal says why (bad key, unknown model) in its body.
fn handshake_error(error: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match error {
        Error::Http(response) => {
            // The body is there only when it came with the head.
            let status = response.status();
            let reason = status.canonical_reason().unwrap_or("");
            match response.body().as_deref().filter(|b| !b.is_empty()) {
                Some(body) => format!("HTTP {} {reason}: {}", status.as_u16(), snippet(body)),
                None => format!("HTTP {} {reason}", status.as_u16()),
            }
        }
        other => other.to_string(),
    }
}

#[async_trait::async_trait]
impl PolledConnector for OpenAiRealtimeConnector {
    async fn connect_polled(&self, call: &CallInfo) -> Result<Box<dyn PolledBot>, ConnectorError> {
        Ok(Box::new(self.connect(call).await?))
    }
}

/// The GA `session.update` for a flow.
fn session_update(config: &OpenAiRealtimeConfig) -> Value {
    let format = match config.audio {
        RealtimeAudio::Pcmu => json!({"type": "audio/pcmu"}),
        RealtimeAudio::Pcm24k => json!({"type": "audio/pcm", "rate": 24000}),
    };
    let vad: Value = serde_json::from_str(SERVER_VAD).unwrap_or(Value::Null);
    let tools: Vec<Value> = config
        .tools
        .iter()
        .map(|(name, kind)| function_definition(name, *kind))
        .collect();
    let mut session = json!({
        "type": "realtime",
        "model": config.model,
        "output_modalities": ["audio"],
        "audio": {
            "input": {"format": format, "turn_detection": vad},
            "output": {"format": format, "voice": config.voice},
        },
        "tools": tools,
        "tool_choice": "auto",
    });
    if let Some(instructions) = &config.instructions {
        session["instructions"] = json!(instructions);
    }
    json!({"type": "session.update", "session": session})
}

fn function_definition(name: &str, kind: ToolKind) -> Value {
    let spec = tools::spec(kind);
    let properties: serde_json::Map<String, Value> = spec
        .parameters
        .iter()
        .map(|(param, description)| {
            let schema = json!({"type": "string", "description": description});
            ((*param).to_owned(), schema)
        })
        .collect();
    let required: Vec<&str> = spec.parameters.iter().map(|(param, _)| *param).collect();
    json!({
        "type": "function",
        "name": name,
        "description": spec.description,
        "parameters": {"type": "object", "properties": properties, "required": required},
    })
}

// ---- server events -------------------------------------------------------------

/// The fields we use of any server event; the rest is ignored.
#[derive(Deserialize)]
struct Inbound<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    delta: Option<Cow<'a, str>>,
    #[serde(borrow)]
    item_id: Option<Cow<'a, str>>,
    content_index: Option<u64>,
    #[serde(borrow)]
    transcript: Option<Cow<'a, str>>,
    #[serde(borrow)]
    item: Option<Item<'a>>,
    error: Option<ServerError>,
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    call_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Debug)]
struct ServerError {
    code: Option<String>,
    message: Option<String>,
}

/// A function call waiting for the call's [`BotControl::ActionResult`].
struct Pending {
    /// [`switchboard_flows::Action::kind`], which is what `ActionResult.action` names.
    action: &'static str,
    call_id: String,
    hang_up: bool,
}

#[derive(Default, Debug)]
struct Stats {
    malformed: u64,
    unknown: u64,
    server_errors: u64,
    unknown_tools: u64,
    bad_arguments: u64,
    wrong_rate: u64,
    truncations: u64,
}

/// One Realtime session, driven by its call.
struct OpenAiBot {
    socket: PolledSocket,
    output: BotOutput,
    tools: Arc<BTreeMap<String, ToolKind>>,
    audio: RealtimeAudio,
    format: AudioFormat,
    /// What the caller has heard, kept current by the call.
    clock: PlayoutClock,
    /// Where each assistant item sits in the played timeline.
    position: PlayoutPosition,
    /// Between `response.created` and `response.done`: a cancel is meaningful.
    response_active: bool,
    /// 24 kHz PCM: a sample may be split across deltas.
    pcm_in: S16leDecoder,
    /// Reused for every delta's decoded bytes and every outgoing append.
    decoded: Vec<u8>,
    outgoing: String,
    pending: VecDeque<Pending>,
    stats: Stats,
}

impl OpenAiBot {
    fn send_json(&mut self, value: &Value) {
        self.socket.send(Message::text(value.to_string()));
    }

    /// The call is done with the model. The protocol has no goodbye: closing
    /// the socket ends the session (and its billing) at once.
    fn hang_up(&mut self) {
        self.end(None);
        self.socket.close_in_background(Closing::Ours(None));
    }

    fn on_dtmf(&mut self, digit: char) {
        // The protocol has no DTMF event: tell the model in words, without
        // asking for a response, so a menu-driven conversation can use it.
        let item = json!({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": format!("[The caller pressed the key {digit}]")}],
        }});
        self.send_json(&item);
    }

    fn malformed(&mut self, what: &str) {
        if note(&mut self.stats.malformed) {
            tracing::warn!(count = self.stats.malformed, "ignoring {what} from OpenAI");
        }
        if self.stats.malformed > MAX_MALFORMED {
            // Broken: dropped at once, no goodbye.
            self.end(Some("bot sent malformed messages".to_owned()));
            self.socket.abandon();
        }
    }

    fn on_audio_delta(&mut self, m: Inbound<'_>) {
        let (Some(delta), Some(item_id)) = (m.delta, m.item_id) else {
            return self.malformed("an audio delta without delta or item_id");
        };
        if self.position.is_truncated(&item_id) {
            // Audio of an answer the caller interrupted, already in flight.
            return;
        }
        self.decoded.clear();
        if BASE64
            .decode_vec(delta.as_bytes(), &mut self.decoded)
            .is_err()
        {
            return self.malformed("an audio delta that is not base64");
        }
        let samples = match self.audio {
            RealtimeAudio::Pcmu => self.decoded.len(),
            RealtimeAudio::Pcm24k => self.pcm_in.samples_in(self.decoded.len()),
        };
        let played_ms = self.clock.played_ms();
        let content_index = m.content_index.unwrap_or(0);
        self.position
            .queued(&item_id, content_index, samples as u64, played_ms);
        self.decode_audio();
    }

    /// The bytes in `decoded` as PCM for the call, which takes them in
    /// 20 ms frames; a 24 kHz sample split across deltas waits for the next.
    fn decode_audio(&mut self) {
        let samples = self.output.audio();
        match self.audio {
            RealtimeAudio::Pcmu => samples.extend(self.decoded.iter().map(|&b| ulaw_decode(b))),
            RealtimeAudio::Pcm24k => self.pcm_in.decode(&self.decoded, samples),
        }
    }

    /// The caller started speaking: stop the answer where the caller stopped
    /// hearing it.
    fn on_barge_in(&mut self) {
        self.output.push(BotEvent::Clear);
        self.pcm_in.clear();
        if self.response_active {
            self.response_active = false;
            self.send_json(&json!({"type": "response.cancel"}));
        }
        let played_ms = self.clock.played_ms();
        let Some(cut) = self.position.interrupt(played_ms) else {
            return;
        };
        // The server rejects 0; an item not heard at all needs no truncation.
        if cut.heard_ms == 0 {
            tracing::debug!(item = %cut.item_id, "barge-in before the answer was heard");
            return;
        }
        self.stats.truncations += 1;
        tracing::debug!(item = %cut.item_id, heard_ms = cut.heard_ms, "truncating the interrupted answer");
        self.send_json(&json!({
            "type": "conversation.item.truncate",
            "item_id": cut.item_id,
            "content_index": cut.content_index,
            "audio_end_ms": cut.heard_ms,
        }));
    }

    fn on_transcript(&mut self, role: &str, m: Inbound<'_>) {
        let Some(transcript) = m.transcript.filter(|t| !t.trim().is_empty()) else {
            return;
        };
        let mut text = String::new();
        push_capped(&mut text, &transcript, MAX_TRANSCRIPT_BYTES);
        let role = role.to_owned();
        self.output.push(BotEvent::Transcript { role, text });
    }

    fn on_item_done(&mut self, m: Inbound<'_>) {
        let Some(item) = m.item else {
            return self.malformed("an output item without item");
        };
        if item.kind.as_deref() != Some("function_call") {
            return;
        }
        let (Some(name), Some(call_id)) = (item.name, item.call_id) else {
            return self.malformed("a function call without name or call_id");
        };
        let Some(kind) = self.tools.get(&*name).copied() else {
            if note(&mut self.stats.unknown_tools) {
                tracing::warn!(function = %name, "OpenAI called a function this flow does not offer");
            }
            let message = format!("there is no function named {name}");
            return self.answer_call(&call_id, false, &message, true);
        };
        let arguments = item.arguments.as_deref().unwrap_or("{}");
        let arguments: Option<Value> = serde_json::from_str(arguments).ok();
        match tool_action(kind, arguments.as_ref()) {
            Ok(action) => {
                if self.pending.len() >= MAX_PENDING_CALLS {
                    if let Some(old) = self.pending.pop_front() {
                        tracing::debug!(call_id = %old.call_id, "forgetting an unanswered function call");
                    }
                }
                self.pending.push_back(Pending {
                    action: action.kind(),
                    call_id: call_id.into_owned(),
                    hang_up: kind == ToolKind::Hangup,
                });
                tracing::debug!(function = %name, action = action.kind(), "OpenAI asked for an action");
                self.output.push(BotEvent::Action(action));
            }
            Err(reason) => {
                if note(&mut self.stats.bad_arguments) {
                    tracing::warn!(function = %name, %reason, "refusing a function call");
                }
                // The arguments are at fault: the model may correct them.
                self.answer_call(&call_id, false, &reason, true);
            }
        }
    }

    fn on_action_result(&mut self, action: &str, ok: bool, text: &str) {
        let Some(index) = self.pending.iter().position(|p| p.action == action) else {
            tracing::debug!(%action, ok, "an action result with no function call waiting for it");
            return;
        };
        let Some(pending) = self.pending.remove(index) else {
            return;
        };
        // After a hang-up there is nobody left to speak to.
        let respond = !(ok && pending.hang_up);
        self.answer_call(&pending.call_id, ok, text, respond);
    }

    fn answer_call(&mut self, call_id: &str, ok: bool, message: &str, respond: bool) {
        let output = json!({"ok": ok, "message": message}).to_string();
        self.send_json(&json!({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call_id, "output": output,
        }}));
        if respond {
            self.send_json(&json!({"type": "response.create"}));
        }
    }
}

impl SocketSession for OpenAiBot {
    fn output(&mut self) -> &mut BotOutput {
        &mut self.output
    }

    fn socket(&mut self) -> &mut PolledSocket {
        &mut self.socket
    }

    fn on_text(&mut self, text: &str) {
        let inbound: Inbound<'_> = match serde_json::from_str(text) {
            Ok(inbound) => inbound,
            Err(e) => return self.malformed(&format!("a malformed event ({e})")),
        };
        match &*inbound.kind {
            "response.output_audio.delta" => self.on_audio_delta(inbound),
            "input_audio_buffer.speech_started" => self.on_barge_in(),
            "response.created" => self.response_active = true,
            "response.done" => self.response_active = false,
            "response.output_item.done" => self.on_item_done(inbound),
            "response.output_audio_transcript.done" => self.on_transcript("bot", inbound),
            "conversation.item.input_audio_transcription.completed" => {
                self.on_transcript("caller", inbound);
            }
            "error" => {
                let error = inbound.error.unwrap_or(ServerError {
                    code: None,
                    message: None,
                });
                // Cancelling a response the server already ended is a benign race.
                let benign = error.code.as_deref() == Some("response_cancel_not_active");
                if !benign && note(&mut self.stats.server_errors) {
                    tracing::warn!(code = ?error.code, message = ?error.message, "OpenAI reported an error");
                }
            }
            other => {
                if note(&mut self.stats.unknown) {
                    tracing::trace!(kind = other, "ignoring an OpenAI event");
                }
            }
        }
    }

    fn on_binary(&mut self, _data: &[u8]) {
        self.malformed("a binary message");
    }

    /// The session is over; `error` says why when it was not a clean end.
    fn end(&mut self, error: Option<String>) {
        if !self.output.is_ended() {
            tracing::debug!(stats = ?self.stats, ?error, "OpenAI Realtime session ended");
        }
        self.output.end(error);
    }
}

impl PolledBot for OpenAiBot {
    fn audio_format(&self) -> AudioFormat {
        self.format
    }

    /// One `input_audio_buffer.append` per 20 ms frame, built in reused buffers.
    fn send_audio(&mut self, frame: &AudioFrame) -> bool {
        if is_wrong_rate(frame, self.format.sample_rate, &mut self.stats.wrong_rate) {
            return false;
        }
        if frame.is_empty() {
            return true;
        }
        if self.output.is_ended() || !self.socket.ready_for_audio() {
            return false;
        }
        self.decoded.clear();
        match self.audio {
            RealtimeAudio::Pcmu => self
                .decoded
                .extend(frame.samples().iter().map(|s| ulaw_encode(*s))),
            RealtimeAudio::Pcm24k => {
                for sample in frame.samples() {
                    self.decoded.extend_from_slice(&sample.to_le_bytes());
                }
            }
        }
        self.outgoing.clear();
        self.outgoing
            .push_str(r#"{"type":"input_audio_buffer.append","audio":""#);
        BASE64.encode_string(&self.decoded, &mut self.outgoing);
        self.outgoing.push_str("\"}");
        // tungstenite needs an owned payload per message.
        self.socket
            .send_audio(Message::text(self.outgoing.as_str()));
        true
    }

    fn control(&mut self, control: BotControl) {
        match control {
            BotControl::Hangup => self.hang_up(),
            BotControl::ActionResult {
                action,
                ok,
                message,
            } => self.on_action_result(&action, ok, &message),
            BotControl::Dtmf(digit) => self.on_dtmf(digit),
            // We never send marks, so there are none to acknowledge.
            BotControl::MarkPlayed(_) => {}
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<BotEvent> {
        poll_socket_session(self, cx)
    }
}

impl Drop for OpenAiBot {
    /// A session dropped without a Hangup still closes the model's session.
    fn drop(&mut self) {
        self.hang_up();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(audio: RealtimeAudio) -> OpenAiRealtimeConfig {
        OpenAiRealtimeConfig {
            api_key: "sk".into(),
            base_url: "wss://example.invalid/v1/realtime".into(),
            model: "gpt-realtime".into(),
            instructions: Some("Be brief.".into()),
            voice: "marin".into(),
            audio,
            tools: BTreeMap::from([
                ("transfer".to_owned(), ToolKind::Transfer),
                ("bye".to_owned(), ToolKind::Hangup),
            ]),
            connect_timeout_ms: 1000,
            speak_first: true,
        }
    }

    #[test]
    fn session_update_sets_every_field_we_rely_on() {
        let update = session_update(&config(RealtimeAudio::Pcm24k));
        let session = &update["session"];
        assert_eq!(session["type"], "realtime");
        assert_eq!(
            session["audio"]["input"]["format"],
            json!({"type": "audio/pcm", "rate": 24000})
        );
        assert_eq!(session["audio"]["output"]["voice"], "marin");
        let vad = &session["audio"]["input"]["turn_detection"];
        assert_eq!(vad["type"], "server_vad");
        assert_eq!(vad["interrupt_response"], true);
        assert_eq!(session["instructions"], "Be brief.");
        assert_eq!(session["tools"][0]["name"], "bye");
        assert_eq!(
            session["tools"][1]["parameters"]["required"],
            json!(["target"])
        );
        let pcmu = session_update(&config(RealtimeAudio::Pcmu));
        assert_eq!(
            pcmu["session"]["audio"]["output"]["format"],
            json!({"type": "audio/pcmu"})
        );
    }

    #[test]
    fn url_appends_the_model() {
        let connector = OpenAiRealtimeConnector::new(config(RealtimeAudio::Pcmu));
        assert_eq!(
            connector.url(),
            "wss://example.invalid/v1/realtime?model=gpt-realtime"
        );
    }
}
