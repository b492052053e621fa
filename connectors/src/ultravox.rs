//! Ultravox over the `serverWebSocket` medium (PROTOCOLS.md §4): a REST call
//! creates the call and returns a `joinUrl`; joined, it carries raw s16le PCM
//! (binary frames) and JSON data messages (text frames).
//!
//! Like the Twilio connector, the session is a [`PolledBot`] driven by the
//! call's own task ([`crate::polled`] says why); every way it ends is
//! reported as `Closed`, and the closing handshake finishes in the
//! background.
//! Bot tools are Ultravox client tools: each invocation becomes an [`Action`]
//! and is answered with `client_tool_result` once the call reports back.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use serde::Deserialize;
use serde_json::{json, Value};
use switchboard_flows::{ToolKind, UltravoxConfig};
use switchboard_media::{AudioFormat, AudioFrame};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::pcm::{s16le_message, S16leDecoder};
use crate::polled::{
    is_wrong_rate, poll_socket_session, BotOutput, PolledBot, PolledConnector, SocketSession,
};
use crate::socket::{note, Closing, PolledSocket, Socket};
use crate::text::{error_chain, push_capped, snippet};
use crate::tools::{self, tool_action};
use crate::{BotControl, BotEvent, CallInfo, ConnectorError};

/// Audio Ultravox buffers on its side; small keeps barge-in quick.
const CLIENT_BUFFER_MS: u32 = 60;
/// A call-creation reply is small; reading a huge one whole could exhaust memory.
const MAX_REPLY_BYTES: usize = 64 * 1024;
/// Past this many malformed data messages the peer is clearly not speaking
/// the protocol: end the session.
const MAX_MALFORMED: u64 = 20;
/// Cap on one transcript's accumulated text and on how many utterances are
/// accumulated at once: deltas from a misbehaving peer must not grow memory.
const MAX_TRANSCRIPT_BYTES: usize = 8 * 1024;
const MAX_OPEN_TRANSCRIPTS: usize = 4;
/// Tool invocations awaiting the call's answer (it answers promptly); the
/// oldest is forgotten beyond this.
const MAX_PENDING_TOOLS: usize = 8;

/// Opens Ultravox calls with one flow's settings.
pub struct UltravoxConnector {
    config: UltravoxConfig,
    tools: Arc<BTreeMap<String, ToolKind>>,
    /// One client for all calls of the flow so TLS sessions and connections
    /// are reused. Building it can only fail on a broken TLS set-up, which
    /// is reported on the first call rather than panicking at start-up.
    http: Result<reqwest::Client, String>,
}

impl UltravoxConnector {
    pub fn new(config: UltravoxConfig) -> Self {
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            // A redirect would replay the API key to wherever it points and
            // turn the POST into a GET: report it instead.
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .build()
            .map_err(|e| error_chain(&e));
        Self {
            tools: Arc::new(config.tools.clone()),
            config,
            http,
        }
    }

    /// `{base_url}/api/calls` or `{base_url}/api/agents/{agent_id}/calls`,
    /// with the agent id escaped as one path segment.
    fn calls_url(&self) -> Result<reqwest::Url, String> {
        let mut url = reqwest::Url::parse(self.config.base_url.trim_end_matches('/'))
            .map_err(|e| format!("bad base_url: {e}"))?;
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| "base_url cannot have a path".to_owned())?;
            path.pop_if_empty();
            match &self.config.agent_id {
                Some(agent) => path.extend(["api", "agents", agent.as_str(), "calls"]),
                None => path.extend(["api", "calls"]),
            };
        }
        Ok(url)
    }

    /// REST step then WebSocket; `stage` names the URL being worked on so a
    /// timeout can say which step hung.
    async fn create_and_join(
        &self,
        http: &reqwest::Client,
        url: reqwest::Url,
        call: &CallInfo,
        stage: &mut String,
    ) -> Result<(Socket, String), ConnectorError> {
        let connect_error = |url: &str, reason: String| ConnectorError::Connect {
            url: url.to_owned(),
            reason,
        };
        let body = create_call_body(&self.config, call);
        let mut response = http
            .post(url)
            .header("X-API-Key", &self.config.api_key)
            .json(&body)
            .send()
            .await
            .map_err(|e| connect_error(stage, error_chain(&e)))?;
        let status = response.status();
        let mut reply = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| connect_error(stage, format!("reading the reply: {}", error_chain(&e))))?
        {
            if reply.len() + chunk.len() > MAX_REPLY_BYTES {
                return Err(connect_error(stage, "the reply is too large".to_owned()));
            }
            reply.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let reason = format!("HTTP {}: {}", status.as_u16(), snippet(&reply));
            return Err(connect_error(stage, reason));
        }
        let created: CreatedCall = serde_json::from_slice(&reply).map_err(|e| {
            ConnectorError::Protocol(format!("the call-creation reply is not JSON: {e}"))
        })?;
        let join_url = created.join_url.filter(|u| !u.is_empty()).ok_or_else(|| {
            ConnectorError::Protocol("the call-creation reply has no joinUrl".into())
        })?;
        let ultravox_call = created.call_id.unwrap_or_default();
        *stage = without_query(&join_url);
        if !(join_url.starts_with("ws://") || join_url.starts_with("wss://")) {
            return Err(ConnectorError::Protocol(format!(
                "joinUrl {stage} is not a ws:// or wss:// URL"
            )));
        }
        // Nagle would hold back 20 ms frames waiting for ACKs: disable it.
        let (ws, _response) = tokio_tungstenite::connect_async_with_config(
            &join_url,
            Some(crate::socket::bot_socket_limits()),
            true,
        )
        .await
        .map_err(|e| connect_error(stage, e.to_string()))?;
        Ok((ws, ultravox_call))
    }
}

impl UltravoxConnector {
    /// Creates the Ultravox call and joins it, within one connect budget.
    async fn connect(&self, call: &CallInfo) -> Result<UltravoxBot, ConnectorError> {
        let url = self.calls_url().map_err(|reason| ConnectorError::Connect {
            url: self.config.base_url.clone(),
            reason,
        })?;
        let http = self
            .http
            .as_ref()
            .map_err(|reason| ConnectorError::Connect {
                url: url.to_string(),
                reason: format!("no HTTP client: {reason}"),
            })?;
        let mut stage = url.to_string();
        // Creating and joining the call is one "connect" with one budget.
        let limit = Duration::from_millis(self.config.connect_timeout_ms);
        let outcome = timeout(limit, self.create_and_join(http, url, call, &mut stage)).await;
        let (ws, ultravox_call) = match outcome {
            Err(_) => {
                return Err(ConnectorError::ConnectTimeout {
                    url: stage,
                    timeout_ms: self.config.connect_timeout_ms,
                })
            }
            Ok(result) => result?,
        };
        tracing::debug!(call_id = %call.call_id, %ultravox_call, join_url = %stage, "joined the Ultravox call");

        let rate = self.config.sample_rate;
        Ok(UltravoxBot {
            socket: PolledSocket::new(ws),
            output: BotOutput::new(rate),
            tools: Arc::clone(&self.tools),
            format: AudioFormat::new(rate),
            pcm_in: S16leDecoder::default(),
            transcripts: VecDeque::new(),
            pending: VecDeque::new(),
            pcm_out: BytesMut::new(),
            stats: Stats::default(),
            ultravox_call,
        })
    }
}

#[async_trait::async_trait]
impl PolledConnector for UltravoxConnector {
    async fn connect_polled(&self, call: &CallInfo) -> Result<Box<dyn PolledBot>, ConnectorError> {
        Ok(Box::new(self.connect(call).await?))
    }
}

// ---- call creation -----------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreatedCall {
    #[serde(default)]
    join_url: Option<String>,
    #[serde(default)]
    call_id: Option<String>,
}

/// The JSON body of the call-creation request.
///
/// An agent call (`/api/agents/{id}/calls`) only accepts overrides of the
/// agent's template (`templateContext`, `metadata`, `medium`, …): prompt,
/// voice, model and tools belong to the agent there, so they are sent only
/// for plain calls. `templateContext` in turn exists only for agent calls;
/// plain calls carry the flow parameters in `metadata`.
fn create_call_body(config: &UltravoxConfig, call: &CallInfo) -> Value {
    let rate = config.sample_rate;
    let mut body = json!({
        "medium": {"serverWebSocket": {
            "inputSampleRate": rate,
            "outputSampleRate": rate,
            "clientBufferSizeMs": CLIENT_BUFFER_MS,
        }},
    });
    // Caller-supplied headers first, then flow parameters (plain calls),
    // then the gateway's own facts, so none can spoof what follows it.
    // "ultravox." keys are reserved by Ultravox.
    let params = call.parameters.iter().filter(|_| config.agent_id.is_none());
    let mut metadata: BTreeMap<&str, &str> = call
        .x_headers
        .iter()
        .map(|(name, value)| (name, value))
        .chain(params)
        .filter(|(name, _)| !name.to_ascii_lowercase().starts_with("ultravox."))
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    metadata.extend([
        ("from", call.from.as_str()),
        ("to", &call.to),
        ("sipCallId", &call.call_id),
        ("flow", &call.flow),
    ]);
    body["metadata"] = json!(metadata);
    if config.agent_id.is_some() {
        body["templateContext"] = json!(call.parameters);
    } else {
        for (key, value) in [
            ("systemPrompt", &config.system_prompt),
            ("voice", &config.voice),
            ("model", &config.model),
        ] {
            if let Some(value) = value {
                body[key] = json!(value);
            }
        }
        let tools: Vec<Value> = config
            .tools
            .iter()
            .map(|(name, kind)| tool_definition(name, *kind))
            .collect();
        body["selectedTools"] = Value::Array(tools);
    }
    body
}

/// A temporary client tool for one configured tool.
fn tool_definition(name: &str, kind: ToolKind) -> Value {
    let spec = tools::spec(kind);
    let parameters: Vec<Value> = spec
        .parameters
        .iter()
        .map(|(param, description)| {
            json!({
                "name": param,
                "location": "PARAMETER_LOCATION_BODY",
                "schema": {"type": "string", "description": description},
                "required": true,
            })
        })
        .collect();
    let description = spec.description;
    json!({"temporaryTool": {
        "modelToolName": name,
        "description": description,
        "dynamicParameters": parameters,
        "client": {},
    }})
}

/// Join URLs may carry credentials in the query: keep them out of logs.
fn without_query(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or(url).to_owned()
}

// ---- data messages ------------------------------------------------------------

/// The fields we use of any Ultravox data message; the rest is ignored.
/// Strings borrow from the frame unless they contain escapes; missing
/// `Option`s are `None`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Inbound<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    delta: Option<Cow<'a, str>>,
    #[serde(rename = "final")]
    is_final: Option<bool>,
    ordinal: Option<u64>,
    #[serde(borrow)]
    tool_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    invocation_id: Option<Cow<'a, str>>,
    parameters: Option<Value>,
    #[serde(borrow)]
    state: Option<Cow<'a, str>>,
}

/// An utterance being assembled from `delta`s.
struct Utterance {
    ordinal: Option<u64>,
    role: String,
    text: String,
}

/// A tool invocation waiting for the call's [`BotControl::ActionResult`].
struct Pending {
    /// [`Action::kind`], which is what `ActionResult.action` names.
    action: &'static str,
    invocation_id: String,
    hang_up: bool,
}

/// Things the peer got wrong or we dropped, counted for rate-limited logs.
#[derive(Default, Debug)]
struct Stats {
    malformed: u64,
    unknown: u64,
    unknown_tools: u64,
    bad_tool_args: u64,
    wrong_rate: u64,
}

/// One joined Ultravox call, driven by its gateway call.
struct UltravoxBot {
    socket: PolledSocket,
    output: BotOutput,
    tools: Arc<BTreeMap<String, ToolKind>>,
    format: AudioFormat,
    pcm_in: S16leDecoder,
    transcripts: VecDeque<Utterance>,
    pending: VecDeque<Pending>,
    /// Caller audio on its way out: each frame's bytes are split off as the
    /// message's payload and the space reclaimed once tungstenite has copied
    /// them, so sending allocates nothing per frame.
    pcm_out: BytesMut,
    stats: Stats,
    /// Ultravox's id of the call, for logs.
    ultravox_call: String,
}

impl UltravoxBot {
    /// Ending the Ultravox call explicitly stops billing at once instead of
    /// when it notices the socket is gone.
    fn hang_up(&mut self, why: &str) {
        self.end(None);
        let hang_up = json!({"type": "hang_up", "message": why}).to_string();
        self.socket
            .close_in_background(Closing::Ours(Some(Message::text(hang_up))));
    }

    /// s16le of any length (even odd, splitting a sample across frames)
    /// becomes 20 ms frames; the last one of a message may be shorter.
    fn on_bot_audio(&mut self, data: &[u8]) {
        self.pcm_in.decode(data, self.output.audio());
    }

    fn malformed(&mut self, what: &str) {
        if note(&mut self.stats.malformed) {
            tracing::warn!(
                count = self.stats.malformed,
                "ignoring {what} from Ultravox"
            );
        }
        if self.stats.malformed > MAX_MALFORMED {
            // Not speaking the protocol: dropped, no goodbye.
            self.end(Some("bot sent malformed messages".to_owned()));
            self.socket.abandon();
        }
    }

    /// Only final transcripts are reported; until then `text` (the whole
    /// utterance so far) or `delta`s (increments) are accumulated per ordinal.
    fn on_transcript(&mut self, m: Inbound<'_>) {
        let open = &mut self.transcripts;
        let index = open.iter().position(|u| u.ordinal == m.ordinal);
        let index = index.unwrap_or_else(|| {
            if open.len() >= MAX_OPEN_TRANSCRIPTS {
                open.pop_front();
            }
            let (role, text) = (String::new(), String::new());
            open.push_back(Utterance {
                ordinal: m.ordinal,
                role,
                text,
            });
            open.len() - 1
        });
        let utterance = &mut open[index];
        if let Some(role) = &m.role {
            utterance.role = role.chars().take(32).collect();
        }
        match (&m.text, &m.delta) {
            (Some(text), _) => {
                utterance.text.clear();
                push_capped(&mut utterance.text, text, MAX_TRANSCRIPT_BYTES);
            }
            (None, Some(delta)) => push_capped(&mut utterance.text, delta, MAX_TRANSCRIPT_BYTES),
            (None, None) => {}
        }
        if m.is_final != Some(true) {
            return;
        }
        let Some(Utterance { role, text, .. }) = open.remove(index) else {
            return;
        };
        if text.trim().is_empty() {
            return;
        }
        let role = if role.is_empty() {
            "unknown".to_owned()
        } else {
            role
        };
        self.output.push(BotEvent::Transcript { role, text });
    }

    fn on_tool(&mut self, inbound: Inbound<'_>) {
        let (Some(name), Some(invocation_id)) = (inbound.tool_name, inbound.invocation_id) else {
            return self.malformed("a tool invocation without toolName or invocationId");
        };
        let Some(kind) = self.tools.get(&*name).copied() else {
            if note(&mut self.stats.unknown_tools) {
                tracing::warn!(tool = %name, count = self.stats.unknown_tools, "Ultravox invoked a tool this flow does not offer");
            }
            let message = format!("there is no tool named {name}");
            return self.send_tool_result(&invocation_id, &message, None, Some("undefined"));
        };
        match tool_action(kind, inbound.parameters.as_ref()) {
            Ok(action) => {
                if self.pending.len() >= MAX_PENDING_TOOLS {
                    if let Some(old) = self.pending.pop_front() {
                        tracing::debug!(invocation = %old.invocation_id, "forgetting an unanswered tool invocation");
                    }
                }
                self.pending.push_back(Pending {
                    action: action.kind(),
                    invocation_id: invocation_id.into_owned(),
                    hang_up: kind == ToolKind::Hangup,
                });
                tracing::debug!(tool = %name, action = action.kind(), "Ultravox asked for an action");
                self.output.push(BotEvent::Action(action));
            }
            Err(reason) => {
                if note(&mut self.stats.bad_tool_args) {
                    tracing::warn!(tool = %name, %reason, count = self.stats.bad_tool_args, "refusing a tool invocation");
                }
                // The arguments, not the tool, are at fault: the model may retry.
                self.send_tool_result(&invocation_id, &reason, None, Some("implementation-error"));
            }
        }
    }

    fn on_action_result(&mut self, action: &str, ok: bool, text: &str) {
        let Some(index) = self.pending.iter().position(|p| p.action == action) else {
            tracing::debug!(%action, ok, "an action result with no tool invocation waiting for it");
            return;
        };
        let Some(pending) = self.pending.remove(index) else {
            return;
        };
        let (response_type, error_type) = match (ok, pending.hang_up) {
            (true, true) => (Some("hang-up"), None),
            (true, false) => (None, None),
            (false, _) => (None, Some("implementation-error")),
        };
        self.send_tool_result(&pending.invocation_id, text, response_type, error_type);
    }

    fn send_tool_result(
        &mut self,
        invocation_id: &str,
        message: &str,
        response_type: Option<&str>,
        error_type: Option<&str>,
    ) {
        let mut result =
            json!({"type": "client_tool_result", "invocationId": invocation_id, "result": message});
        if let Some(kind) = response_type {
            result["responseType"] = json!(kind);
        }
        if let Some(kind) = error_type {
            result["errorType"] = json!(kind);
            result["errorMessage"] = json!(message);
        }
        self.socket.send(Message::text(result.to_string()));
    }
}

impl SocketSession for UltravoxBot {
    fn output(&mut self) -> &mut BotOutput {
        &mut self.output
    }

    fn socket(&mut self) -> &mut PolledSocket {
        &mut self.socket
    }

    fn on_text(&mut self, text: &str) {
        let inbound: Inbound<'_> = match serde_json::from_str(text) {
            Ok(inbound) => inbound,
            Err(e) => return self.malformed(&format!("a malformed data message ({e})")),
        };
        match &*inbound.kind {
            "playback_clear_buffer" => {
                // A half sample from before the clear belongs to dropped audio.
                self.pcm_in.clear();
                self.output.push(BotEvent::Clear);
            }
            "transcript" => self.on_transcript(inbound),
            "client_tool_invocation" => self.on_tool(inbound),
            "state" | "call_started" | "pong" | "debug" => {
                tracing::debug!(kind = %inbound.kind, state = ?inbound.state, "Ultravox data message");
            }
            other => {
                if note(&mut self.stats.unknown) {
                    tracing::debug!(
                        kind = other,
                        count = self.stats.unknown,
                        "ignoring an unknown Ultravox message"
                    );
                }
            }
        }
    }

    fn on_binary(&mut self, data: &[u8]) {
        self.on_bot_audio(data);
    }

    /// The session is over; `error` says why when it was not a clean end.
    fn end(&mut self, error: Option<String>) {
        if !self.output.is_ended() {
            tracing::debug!(ultravox_call = %self.ultravox_call, stats = ?self.stats, ?error, "Ultravox session ended");
        }
        self.output.end(error);
    }
}

impl PolledBot for UltravoxBot {
    fn audio_format(&self) -> AudioFormat {
        self.format
    }

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
        let message = s16le_message(&mut self.pcm_out, frame.samples());
        self.socket.send_audio(message);
        true
    }

    fn control(&mut self, control: BotControl) {
        match control {
            BotControl::Hangup => self.hang_up("caller hung up"),
            BotControl::ActionResult {
                action,
                ok,
                message,
            } => self.on_action_result(&action, ok, &message),
            BotControl::Dtmf(digit) => {
                // The serverWebSocket medium has no DTMF message.
                tracing::debug!(%digit, "DTMF not forwarded to Ultravox");
            }
            // We never send marks, so there are none to acknowledge.
            BotControl::MarkPlayed(_) => {}
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<BotEvent> {
        poll_socket_session(self, cx)
    }
}

impl Drop for UltravoxBot {
    /// A session dropped without a Hangup still ends the Ultravox call.
    fn drop(&mut self) {
        if self.socket.is_open() {
            self.hang_up("call ended");
        }
    }
}
