//! Switchboard flows: what a call does once routed — which bot it talks to,
//! with which parameters, what happens when the bot fails — and the actions a
//! bot (or later TwiML and the API) can ask the gateway to carry out.
//!
//! This crate knows no sockets: it is data and validation.

pub mod action;
pub mod bots;
pub mod flow;
mod sid;
pub mod template;
pub mod twiml;

pub use action::{
    Action, DialStatusCallback, DialTarget, DEFAULT_DIAL_TIMEOUT_SECS, DEFAULT_TIME_LIMIT_SECS,
};
pub use bots::{OpenAiRealtimeConfig, RealtimeAudio, ToolKind, UltravoxConfig, WebsocketBotConfig};
pub use flow::{
    AudioConfig, BotConfig, EchoBotConfig, FlowConfig, FlowError, OnFailure, RecordingConfig,
    TransferMode, TwilioStreamConfig, WebhookConfig,
};
pub use sid::call_sid;
pub use twiml::{actions_from_twiml, parse_twiml, Dial, DialNoun, Gather, TwimlError, Verb};
