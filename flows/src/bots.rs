//! Settings of the bots that need an account: Ultravox, OpenAI Realtime, and
//! the generic WebSocket bot. Keys come from the environment through
//! `${ENV}` interpolation; base URLs are overridable so tests (and
//! self-hosted gateways) can point them elsewhere.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::flow::FlowError;

/// What a bot tool (Ultravox client tool, OpenAI function) does when called.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    /// Transfer the caller: the tool's `target` argument is a SIP URI → `Action::Dial`.
    Transfer,
    /// End the call → `Action::Hangup`.
    Hangup,
    /// Send the `digits` argument as DTMF → `Action::SendDtmf`.
    SendDtmf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UltravoxConfig {
    pub api_key: String,
    /// REST base; the call is created at `{base_url}/api/calls` or
    /// `{base_url}/api/agents/{agent_id}/calls`.
    #[serde(default = "default_ultravox_base")]
    pub base_url: String,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub system_prompt: Option<String>,
    #[serde(default)]
    pub voice: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    /// Rate declared as both input and output sample rate, and actually used.
    #[serde(default = "default_ultravox_rate")]
    pub sample_rate: u32,
    /// Client tools offered to the agent, by name.
    #[serde(default)]
    pub tools: BTreeMap<String, ToolKind>,
    #[serde(default = "default_rest_timeout_ms")]
    pub connect_timeout_ms: u64,
}

fn default_ultravox_base() -> String {
    "https://api.ultravox.ai".into()
}
fn default_ultravox_rate() -> u32 {
    16_000
}
fn default_rest_timeout_ms() -> u64 {
    5_000
}

/// Audio format spoken with OpenAI Realtime.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RealtimeAudio {
    /// `audio/pcmu` at 8 kHz: no resampling on G.711 calls.
    #[default]
    Pcmu,
    /// `audio/pcm` at 24 kHz.
    Pcm24k,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiRealtimeConfig {
    pub api_key: String,
    /// WebSocket base; `?model=` is appended.
    #[serde(default = "default_openai_base")]
    pub base_url: String,
    #[serde(default = "default_openai_model")]
    pub model: String,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default = "default_openai_voice")]
    pub voice: String,
    #[serde(default)]
    pub audio: RealtimeAudio,
    /// Functions offered to the model, by name.
    #[serde(default)]
    pub tools: BTreeMap<String, ToolKind>,
    #[serde(default = "default_rest_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Ask for a response as soon as the session is set up, so the bot
    /// greets the caller instead of waiting in silence for them to speak.
    #[serde(default = "default_true")]
    pub speak_first: bool,
}

fn default_true() -> bool {
    true
}
fn default_openai_base() -> String {
    "wss://api.openai.com/v1/realtime".into()
}
fn default_openai_model() -> String {
    "gpt-realtime".into()
}
fn default_openai_voice() -> String {
    "alloy".into()
}

/// The simplest bot protocol: raw s16le PCM binary frames both ways at a
/// declared rate, plus JSON text messages for clear, mark and actions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebsocketBotConfig {
    pub url: String,
    #[serde(default = "default_ultravox_rate")]
    pub sample_rate: u32,
    #[serde(default = "default_rest_timeout_ms")]
    pub connect_timeout_ms: u64,
}

pub(crate) fn check_url(key: &str, text: &str, schemes: &[&str]) -> Result<(), FlowError> {
    let url = url::Url::parse(text).map_err(|e| FlowError::new(key, format!("not a URL: {e}")))?;
    if !schemes.contains(&url.scheme()) {
        return Err(FlowError::new(
            key,
            format!("scheme must be one of {}", schemes.join(", ")),
        ));
    }
    Ok(())
}

pub(crate) fn check_timeout(ms: u64) -> Result<(), FlowError> {
    if ms == 0 || ms > 60_000 {
        return Err(FlowError::new(
            "bot.connect_timeout_ms",
            "must be between 1 and 60000",
        ));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), FlowError> {
    if key.trim().is_empty() {
        return Err(FlowError::new(
            "bot.api_key",
            "must not be empty (use \"${ENV_VAR}\")",
        ));
    }
    Ok(())
}

fn check_rate(rate: u32) -> Result<(), FlowError> {
    if !crate::flow::SUPPORTED_RATES.contains(&rate) {
        return Err(FlowError::new(
            "bot.sample_rate",
            format!("{rate} Hz is not one of 8000, 16000, 24000, 48000"),
        ));
    }
    Ok(())
}

impl UltravoxConfig {
    pub fn validate(&self) -> Result<(), FlowError> {
        check_key(&self.api_key)?;
        check_url("bot.base_url", &self.base_url, &["http", "https"])?;
        check_rate(self.sample_rate)?;
        check_timeout(self.connect_timeout_ms)
    }
}

impl OpenAiRealtimeConfig {
    pub fn validate(&self) -> Result<(), FlowError> {
        check_key(&self.api_key)?;
        check_url("bot.base_url", &self.base_url, &["ws", "wss"])?;
        if self.model.trim().is_empty() {
            return Err(FlowError::new("bot.model", "must not be empty"));
        }
        check_timeout(self.connect_timeout_ms)
    }
}

impl WebsocketBotConfig {
    pub fn validate(&self) -> Result<(), FlowError> {
        check_url("bot.url", &self.url, &["ws", "wss"])?;
        check_rate(self.sample_rate)?;
        check_timeout(self.connect_timeout_ms)
    }
}
