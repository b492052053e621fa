//! Switchboard connectors: the contract between a call and a bot, and one
//! module per bot protocol. Connectors know no SIP: they get a [`CallInfo`]
//! and caller audio, and return bot audio and events.

use std::collections::BTreeMap;

use switchboard_flows::{Action, BotConfig};
use switchboard_media::{AudioFormat, FramePool, PooledFrame};
use tokio::sync::mpsc;

pub use inline::InlineBot;
pub use polled::{spawn_session, PolledBot};

pub mod actions;
pub mod echo;
mod inline;
pub mod openai_realtime;
mod pcm;
mod playout_position;
mod polled;
mod socket;
mod text;
mod tools;
pub mod twilio_stream;
pub mod ultravox;
pub mod websocket;

/// Caller audio frames queued towards one bot. When the bot falls behind the
/// call task drops frames (`try_send`) rather than stall the media path.
pub const AUDIO_IN_CAPACITY: usize = 50;
/// Events queued from a bot towards its call. Bot audio arrives faster than
/// real time; the connector waits (back-pressure on the bot's socket) when full.
pub const EVENTS_CAPACITY: usize = 256;
/// Control messages queued from the call towards the bot.
pub const CONTROL_CAPACITY: usize = 64;

/// What a bot needs to know about the call it serves.
#[derive(Clone, Debug, Default)]
pub struct CallInfo {
    /// SIP Call-ID of the caller's leg.
    pub call_id: String,
    /// Caller (user part of From, or the whole URI when it has none).
    pub from: String,
    /// Dialed number or user (Request-URI user part).
    pub to: String,
    /// Name of the flow the call was routed to.
    pub flow: String,
    /// The flow's `parameters`.
    pub parameters: BTreeMap<String, String>,
    /// `X-` headers of the INVITE, in order.
    pub x_headers: Vec<(String, String)>,
    /// How much bot audio the caller has actually heard, kept current by the
    /// call every 20 ms (for OpenAI's `conversation.item.truncate`).
    pub playout: PlayoutClock,
}

/// Milliseconds of bot audio played to the caller since the call started,
/// written by the call task, read by connectors. Cleared audio never counts.
#[derive(Clone, Debug, Default)]
pub struct PlayoutClock(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl PlayoutClock {
    pub fn played_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_played_ms(&self, ms: u64) {
        self.0.store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Something the bot said or did.
#[derive(Debug)]
pub enum BotEvent {
    /// Audio for the caller, at the session's `audio_format` rate; any length.
    Audio(PooledFrame),
    /// Drop all queued audio (barge-in).
    Clear,
    /// Report back with [`BotControl::MarkPlayed`] once the audio queued before it has played.
    Mark(String),
    /// Text of what someone said, for the logs.
    Transcript { role: String, text: String },
    /// Something the bot wants done with the call.
    Action(Action),
    /// The bot ended the conversation.
    Hangup { reason: Option<String> },
    /// The bot's session ended; `error` says why when it was not a clean close.
    Closed { error: Option<String> },
}

/// What the call tells the bot besides caller audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BotControl {
    /// The audio queued before this mark was played (or discarded by a clear).
    MarkPlayed(String),
    /// The caller pressed a key.
    Dtmf(char),
    /// Outcome of an [`Action`] the bot asked for.
    ActionResult {
        action: String,
        ok: bool,
        message: String,
    },
    /// The caller hung up or the call is ending: say goodbye and close.
    Hangup,
}

/// A live conversation with a bot.
pub struct BotSession {
    /// Rate the bot wants caller audio in and sends its own audio at.
    pub audio_format: AudioFormat,
    /// Caller audio towards the bot, frames of 20 ms at `audio_format`.
    pub audio_in: mpsc::Sender<PooledFrame>,
    /// Where the call takes the frames it sends on `audio_in`.
    pub frames: FramePool,
    /// Control messages towards the bot.
    pub control: mpsc::Sender<BotControl>,
    /// Everything the bot says and does.
    pub events: mpsc::Receiver<BotEvent>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("connecting to the bot at {url} timed out after {timeout_ms} ms")]
    ConnectTimeout { url: String, timeout_ms: u64 },
    #[error("connecting to the bot at {url} failed: {reason}")]
    Connect { url: String, reason: String },
    #[error("the bot broke the protocol: {0}")]
    Protocol(String),
}

/// Opens bot sessions for calls. One connector per flow, shared by its calls.
#[async_trait::async_trait]
pub trait BotConnector: Send + Sync {
    /// Start a bot session for this call: REST set-up if the protocol needs
    /// one, then the WebSocket. Returns once the bot is ready for audio.
    async fn open(&self, call: &CallInfo) -> Result<BotSession, ConnectorError>;

    /// A session that runs inside the call's own task, for bots that need
    /// no I/O; `None` (the default) means the call uses [`BotConnector::open`].
    fn open_inline(&self, _call: &CallInfo) -> Option<Box<dyn InlineBot>> {
        None
    }

    /// A session that the call's own task polls, for bots behind a socket
    /// whose connector supports it; `None` (the default) means the call
    /// uses [`BotConnector::open`].
    async fn open_polled(
        &self,
        _call: &CallInfo,
    ) -> Option<Result<Box<dyn PolledBot>, ConnectorError>> {
        None
    }
}

/// rustls 0.23 needs one process-wide crypto provider, or the first `wss://`
/// connection panics. Idempotent; every connector calls it on creation.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The connector a flow's `bot` setting asks for.
pub fn connector_for(bot: &BotConfig) -> Box<dyn BotConnector> {
    install_crypto_provider();
    match bot {
        BotConfig::Echo(config) => Box::new(echo::EchoConnector::new(config.clone())),
        BotConfig::TwilioStream(config) => {
            Box::new(twilio_stream::TwilioStreamConnector::new(config.clone()))
        }
        BotConfig::Ultravox(config) => Box::new(ultravox::UltravoxConnector::new(config.clone())),
        BotConfig::OpenaiRealtime(config) => Box::new(
            openai_realtime::OpenAiRealtimeConnector::new(config.clone()),
        ),
        BotConfig::Websocket(config) => {
            Box::new(websocket::WebsocketConnector::new(config.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tokio's mpsc allocates its slots 32 at a time: a slot holding a whole
    /// 1.9 KB frame made each events channel hold 62 KB per block.
    #[test]
    fn channel_slots_stay_small() {
        let event = std::mem::size_of::<BotEvent>();
        // An action (a dial target) is the largest variant now: 6 KB a block.
        assert!(event <= 256, "BotEvent is {event} bytes");
        assert!(std::mem::size_of::<PooledFrame>() <= 16);
    }
}
