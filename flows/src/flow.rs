//! Flow definitions as they appear under `[[flows]]` in the configuration.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::bots::{OpenAiRealtimeConfig, UltravoxConfig, WebsocketBotConfig};

/// A flow: the bot a call talks to and what happens when that bot fails.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    pub name: String,
    /// The bot calls talk to. A flow has a bot or a `webhook`.
    #[serde(default)]
    pub bot: Option<BotConfig>,
    /// Instead of a bot: a URL that answers each call with TwiML, as
    /// Twilio's voice webhooks do.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// Instead of a bot or a webhook: TwiML run for every call, with
    /// `{{From}}`, `{{To}}` and `{{#e164}}…{{/e164}}` filled in.
    #[serde(default)]
    pub twiml: Option<String>,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Free-form parameters handed to the bot at call start
    /// (Twilio's `<Stream><Parameter>`).
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// When the bot's connection fails mid-call, open a new session once
    /// before giving up (the caller hears silence meanwhile). A bot that
    /// closes cleanly or hangs up is never reconnected.
    #[serde(default)]
    pub reconnect_once: bool,
    /// Record each call as a stereo WAV (caller left, bot right).
    #[serde(default)]
    pub recording: Option<RecordingConfig>,
    /// Processing of the caller's audio before the bot hears it.
    #[serde(default)]
    pub audio: AudioConfig,
    /// How a bot's transfer (`<Dial><Sip>`, `forward-call`, a transfer
    /// tool) reaches the human: bridged through the gateway (default), or
    /// handed to the caller's side with REFER.
    #[serde(default)]
    pub transfer: TransferMode,
}

/// A webhook flow's TwiML source.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// `POST` (the default) or `GET`.
    #[serde(default = "default_webhook_method")]
    pub method: String,
    /// Asked when `url` fails (an error, a timeout, TwiML that cannot run).
    #[serde(default)]
    pub fallback_url: Option<String>,
}

fn default_webhook_method() -> String {
    "POST".into()
}

impl WebhookConfig {
    pub fn method_get(&self) -> bool {
        self.method.eq_ignore_ascii_case("GET")
    }
}

/// How transfers leave a flow.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TransferMode {
    /// The gateway dials the target and bridges the caller to it (B2BUA).
    #[default]
    Bridge,
    /// REFER the caller's side to the target (blind transfer); a refused or
    /// failed REFER returns the caller to the bot.
    Refer,
    /// REFER, and bridge instead when the REFER is refused or fails.
    ReferOrBridge,
}

/// Echo cancellation (the bot's own voice coming back from a speakerphone),
/// noise suppression and automatic gain control, each off by default.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AudioConfig {
    #[serde(default)]
    pub echo_cancellation: bool,
    #[serde(default)]
    pub noise_suppression: bool,
    #[serde(default)]
    pub gain_control: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    /// Directory the WAV files go to; created if missing.
    pub dir: std::path::PathBuf,
}

/// Which bot a flow talks to, tagged by `kind`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BotConfig {
    /// Built-in bot that plays the caller's audio back after a delay.
    Echo(EchoBotConfig),
    /// Any WebSocket bot speaking the Twilio Media Streams protocol.
    TwilioStream(TwilioStreamConfig),
    /// Ultravox, `serverWebSocket` medium.
    Ultravox(UltravoxConfig),
    /// OpenAI Realtime over WebSocket.
    OpenaiRealtime(OpenAiRealtimeConfig),
    /// Raw PCM frames over WebSocket plus JSON control messages.
    Websocket(WebsocketBotConfig),
}

impl BotConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            BotConfig::Echo(_) => "echo",
            BotConfig::TwilioStream(_) => "twilio_stream",
            BotConfig::Ultravox(_) => "ultravox",
            BotConfig::OpenaiRealtime(_) => "openai_realtime",
            BotConfig::Websocket(_) => "websocket",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoBotConfig {
    /// How long the caller's audio takes to come back.
    #[serde(default = "default_echo_delay_ms")]
    pub delay_ms: u32,
    /// Rate the echo bot asks for; 16 kHz exercises the resampler like a real bot.
    #[serde(default = "default_echo_rate")]
    pub sample_rate: u32,
}

impl Default for EchoBotConfig {
    fn default() -> Self {
        Self {
            delay_ms: default_echo_delay_ms(),
            sample_rate: default_echo_rate(),
        }
    }
}

fn default_echo_delay_ms() -> u32 {
    200
}

fn default_echo_rate() -> u32 {
    16_000
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioStreamConfig {
    /// `ws://` or `wss://` URL of the bot.
    pub url: String,
    /// Give up on the bot if the WebSocket is not up within this time.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

fn default_connect_timeout_ms() -> u64 {
    3_000
}

/// What the call does when its bot cannot be reached or fails.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OnFailure {
    /// Reject (before answer) or end (after) the call with this SIP status.
    Hangup(u16),
    /// Send the caller to a human at this SIP URI (before or after answer).
    Dial(String),
}

impl Default for OnFailure {
    fn default() -> Self {
        OnFailure::Hangup(480)
    }
}

/// A flow that parsed but makes no sense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{key}: {reason}")]
pub struct FlowError {
    /// Dotted path of the offending key relative to the flow, e.g. `bot.url`.
    pub key: String,
    pub reason: String,
}

impl FlowError {
    pub(crate) fn new(key: &str, reason: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// Sample rates the media pipeline can resample to and from.
pub const SUPPORTED_RATES: [u32; 4] = [8_000, 16_000, 24_000, 48_000];

impl WebhookConfig {
    fn validate(&self) -> Result<(), FlowError> {
        let http = |key: &str, text: &str| -> Result<(), FlowError> {
            let url = url::Url::parse(text)
                .map_err(|e| FlowError::new(key, format!("not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(FlowError::new(key, "scheme must be http or https"));
            }
            Ok(())
        };
        http("webhook.url", &self.url)?;
        if let Some(fallback) = &self.fallback_url {
            http("webhook.fallback_url", fallback)?;
        }
        if !(self.method.eq_ignore_ascii_case("GET") || self.method.eq_ignore_ascii_case("POST")) {
            return Err(FlowError::new("webhook.method", "must be GET or POST"));
        }
        Ok(())
    }
}

impl FlowConfig {
    /// The bot to build a connector for; a webhook flow gets an echo bot
    /// that is never opened (its TwiML decides what runs).
    pub fn bot_or_placeholder(&self) -> BotConfig {
        self.bot
            .clone()
            .unwrap_or_else(|| BotConfig::Echo(EchoBotConfig::default()))
    }

    fn validate_bot(bot: &BotConfig) -> Result<(), FlowError> {
        match bot {
            BotConfig::Echo(echo) => {
                if !SUPPORTED_RATES.contains(&echo.sample_rate) {
                    return Err(FlowError::new(
                        "bot.sample_rate",
                        format!(
                            "{} Hz is not one of 8000, 16000, 24000, 48000",
                            echo.sample_rate
                        ),
                    ));
                }
                if echo.delay_ms > 10_000 {
                    return Err(FlowError::new("bot.delay_ms", "must be at most 10000"));
                }
            }
            BotConfig::TwilioStream(stream) => {
                let url = url::Url::parse(&stream.url)
                    .map_err(|e| FlowError::new("bot.url", format!("not a URL: {e}")))?;
                if !matches!(url.scheme(), "ws" | "wss") {
                    return Err(FlowError::new("bot.url", "scheme must be ws or wss"));
                }
                crate::bots::check_timeout(stream.connect_timeout_ms)?;
            }
            BotConfig::Ultravox(config) => config.validate()?,
            BotConfig::OpenaiRealtime(config) => config.validate()?,
            BotConfig::Websocket(config) => config.validate()?,
        }
        Ok(())
    }

    /// Checks what serde cannot: names, URLs, rates and status codes.
    pub fn validate(&self) -> Result<(), FlowError> {
        if self.name.trim().is_empty() {
            return Err(FlowError::new("name", "must not be empty"));
        }
        match (&self.bot, &self.webhook, &self.twiml) {
            (None, None, None) => {
                return Err(FlowError::new(
                    "bot",
                    "a flow needs a bot, a webhook or twiml",
                ))
            }
            (Some(bot), None, None) => Self::validate_bot(bot)?,
            (None, Some(webhook), None) => webhook.validate()?,
            (None, None, Some(twiml)) => {
                let sample = crate::template::render(twiml, "+15550100", "+15550101");
                let verbs = crate::twiml::parse_twiml(&sample)
                    .map_err(|e| FlowError::new("twiml", e.to_string()))?;
                if verbs.is_empty() {
                    return Err(FlowError::new("twiml", "the document has no verb"));
                }
            }
            _ => {
                return Err(FlowError::new(
                    "webhook",
                    "a flow has one of bot, webhook and twiml, not several",
                ))
            }
        }
        if let Some(recording) = &self.recording {
            if recording.dir.as_os_str().is_empty() {
                return Err(FlowError::new("recording.dir", "must not be empty"));
            }
            if recording.dir.exists() && !recording.dir.is_dir() {
                return Err(FlowError::new(
                    "recording.dir",
                    "exists and is not a directory",
                ));
            }
        }
        match &self.on_failure {
            OnFailure::Hangup(code) if !(400..=699).contains(code) => Err(FlowError::new(
                "on_failure.hangup",
                format!("{code} is not a SIP failure status (400-699)"),
            )),
            OnFailure::Dial(uri) if !crate::twiml::is_sip_uri(uri) => Err(FlowError::new(
                "on_failure.dial",
                format!("{uri:?} is not a sip: or sips: URI"),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrapper {
        flows: Vec<FlowConfig>,
    }

    fn parse(text: &str) -> FlowConfig {
        let wrapper: Wrapper = toml::from_str(text).expect("flow parses");
        wrapper.flows.into_iter().next().unwrap()
    }

    #[test]
    fn echo_flow_gets_defaults() {
        let flow = parse("[[flows]]\nname = \"echo\"\nbot = { kind = \"echo\" }\n");
        assert!(
            matches!(flow.bot, Some(BotConfig::Echo(ref e)) if e.delay_ms == 200 && e.sample_rate == 16_000)
        );
        assert_eq!(flow.on_failure, OnFailure::Hangup(480));
        flow.validate().unwrap();
    }

    #[test]
    fn twilio_flow_validates_url_and_failure_code() {
        let flow = parse(
            "[[flows]]\nname = \"t\"\nbot = { kind = \"twilio_stream\", url = \"http://x\" }\n",
        );
        assert_eq!(flow.validate().unwrap_err().key, "bot.url");
        let flow = parse(
            "[[flows]]\nname = \"t\"\nbot = { kind = \"twilio_stream\", url = \"ws://127.0.0.1:1/\" }\non_failure = { hangup = 200 }\n",
        );
        assert_eq!(flow.validate().unwrap_err().key, "on_failure.hangup");
    }

    #[test]
    fn on_failure_dial_and_transfer_mode() {
        let flow = parse(
            "[[flows]]\nname = \"t\"\nbot = { kind = \"echo\" }\non_failure = { dial = \"sip:desk@127.0.0.1\" }\ntransfer = \"refer_or_bridge\"\n",
        );
        assert_eq!(
            flow.on_failure,
            OnFailure::Dial("sip:desk@127.0.0.1".into())
        );
        assert_eq!(flow.transfer, TransferMode::ReferOrBridge);
        flow.validate().unwrap();
        let flow = parse(
            "[[flows]]\nname = \"t\"\nbot = { kind = \"echo\" }\non_failure = { dial = \"desk\" }\n",
        );
        assert_eq!(flow.validate().unwrap_err().key, "on_failure.dial");
    }

    #[test]
    fn unknown_bot_kind_is_refused() {
        let err = toml::from_str::<Wrapper>("[[flows]]\nname = \"x\"\nbot = { kind = \"nope\" }\n")
            .err()
            .expect("unknown kind must fail");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn a_flow_has_a_bot_or_a_webhook() {
        let webhook = parse(
            "[[flows]]\nname = \"hook\"\nwebhook = { url = \"http://127.0.0.1:9000/voice\", fallback_url = \"https://example.com/fb\" }\n",
        );
        webhook.validate().unwrap();
        let hook = webhook.webhook.as_ref().unwrap();
        assert!(!hook.method_get());
        assert!(matches!(webhook.bot_or_placeholder(), BotConfig::Echo(_)));
        let cases = [
            ("", "bot"),
            ("twiml = \"<Response><Nope/></Response>\"", "twiml"),
            ("twiml = \"<Response></Response>\"", "twiml"),
            ("webhook = { url = \"ftp://x\" }", "webhook.url"),
            (
                "webhook = { url = \"http://x\", method = \"PUT\" }",
                "webhook.method",
            ),
            (
                "webhook = { url = \"http://x\", fallback_url = \"nope\" }",
                "webhook.fallback_url",
            ),
            (
                "bot = { kind = \"echo\" }\nwebhook = { url = \"http://x\" }",
                "webhook",
            ),
        ];
        for (body, key) in cases {
            let flow = parse(&format!("[[flows]]\nname = \"f\"\n{body}\n"));
            assert_eq!(flow.validate().unwrap_err().key, key, "{body}");
        }
    }
}
