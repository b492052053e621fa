//! The bot side of a call: opening its session (before answering the
//! caller, again after a mid-call failure if the flow allows, and when a
//! caller comes back from a human), its events, and the actions it asks for.
//! While a transfer rings the bot stays connected but muted, so a failed
//! transfer can return the caller to it.

use switchboard_connectors::{BotControl, BotEvent};
use switchboard_flows::{Action, DialTarget, OnFailure};

use super::bot_link::BotLink;
use super::session::{Call, JobOutput};
use super::transfer::Origin;

/// Why a bot session is being opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpenPurpose {
    /// At the start of the call, before it is answered.
    Initial,
    /// After the session failed mid-call (`reconnect_once`).
    Reconnect,
    /// The caller comes back from a human (`hangupOnStar`, a dial action).
    Return,
}

pub(super) struct BotState {
    pub(super) link: BotLink,
    /// A transfer is ringing: the bot's audio is dropped and it hears nothing.
    pub(super) muted: bool,
    reconnects_left: u32,
    /// A replacement session is being opened; this one is dead.
    reopening: bool,
}

impl BotState {
    fn new(link: BotLink, reconnects_left: u32) -> Self {
        BotState {
            link,
            muted: false,
            reconnects_left,
            reopening: false,
        }
    }

    /// Its events are worth reading.
    pub(super) fn listening(&self) -> bool {
        !self.reopening
    }

    pub(super) fn tell(&mut self, control: BotControl) {
        self.link.tell(control);
    }
}

impl Call {
    pub(super) fn open_bot(&mut self, purpose: OpenPurpose) {
        let connector = self.connector.clone();
        let info = self.info.clone();
        self.spawn_job(Box::pin(async move {
            let result = match connector.open_inline(&info) {
                Some(bot) => Ok(BotLink::Inline(bot)),
                None => match connector.open_polled(&info).await {
                    Some(polled) => polled.map(BotLink::Polled),
                    None => connector.open(&info).await.map(BotLink::Remote),
                }
                .map_err(|e| e.to_string()),
            };
            JobOutput::BotOpened { purpose, result }
        }));
    }

    pub(super) fn on_bot_opened(&mut self, purpose: OpenPurpose, result: Result<BotLink, String>) {
        if self.is_ending() {
            if let Ok(mut session) = result {
                session.tell(BotControl::Hangup);
            }
            return;
        }
        match (purpose, result) {
            (OpenPurpose::Initial, Ok(session)) => {
                let rate = session.audio_format().sample_rate;
                let reconnects = u32::from(self.flow.reconnect_once);
                self.bot = Some(BotState::new(session, reconnects));
                if let Err(error) = self.answer_caller(rate) {
                    tracing::error!(%error, "media pipeline could not start");
                    self.reject(500, format!("media pipeline failed ({error})"));
                }
            }
            (OpenPurpose::Initial, Err(error)) => {
                crate::metrics::bot_failed(&self.flow.name);
                match self.flow.on_failure.clone() {
                    OnFailure::Hangup(status) => {
                        tracing::warn!(flow = %self.flow.name, %error, status, "bot unreachable: on_failure hang-up");
                        self.reject(status, format!("bot failed before answer ({error})"));
                    }
                    OnFailure::Dial(uri) => {
                        tracing::warn!(flow = %self.flow.name, %error, %uri, "bot unreachable: on_failure dial");
                        self.start_dial(on_failure_target(uri), Origin::OnFailure);
                    }
                }
            }
            (OpenPurpose::Reconnect, Ok(mut session)) => {
                let same_format = self
                    .bot
                    .as_ref()
                    .is_some_and(|bot| bot.link.audio_format() == session.audio_format());
                if !same_format {
                    session.tell(BotControl::Hangup);
                    return self.bot_failed("the reopened session changed its audio format".into());
                }
                tracing::info!(flow = %self.flow.name, "bot session reopened");
                if let Some(bot) = &mut self.bot {
                    bot.link = session;
                    bot.reopening = false;
                }
            }
            (OpenPurpose::Return, Ok(mut session))
                if session.audio_format().sample_rate != self.caller_media.pipeline_rate() =>
            {
                session.tell(BotControl::Hangup);
                self.end("the flow's bot cannot take the call back at this call's audio rate");
            }
            (OpenPurpose::Return, Ok(session)) => {
                tracing::info!(flow = %self.flow.name, "caller back with the bot");
                self.bot = Some(BotState::new(session, u32::from(self.flow.reconnect_once)));
            }
            (OpenPurpose::Reconnect | OpenPurpose::Return, Err(error)) => self.bot_failed(error),
        }
    }

    /// The bot is gone mid-call: the flow's `on_failure` decides.
    pub(super) fn bot_failed(&mut self, error: String) {
        crate::metrics::bot_failed(&self.flow.name);
        self.close_bot();
        match self.flow.on_failure.clone() {
            OnFailure::Hangup(status) => {
                tracing::warn!(flow = %self.flow.name, %error, status, "bot failed mid-call: on_failure hang-up");
                self.end(format!("bot failed: {error}"));
            }
            OnFailure::Dial(uri) => {
                tracing::warn!(flow = %self.flow.name, %error, %uri, "bot failed mid-call: on_failure dial");
                if self.transfer.is_none() {
                    self.start_dial(on_failure_target(uri), Origin::OnFailure);
                }
            }
        }
    }

    /// Ends the bot's session with its protocol's goodbye (`stop` for
    /// Twilio Media Streams) and forgets it.
    pub(super) fn close_bot(&mut self) {
        if let Some(mut bot) = self.bot.take() {
            bot.tell(BotControl::Hangup);
        }
    }

    pub(super) fn on_bot_event(&mut self, event: Option<BotEvent>) {
        let Some(bot) = &mut self.bot else {
            return;
        };
        let muted = bot.muted;
        let pipeline = self.caller_media.pipeline.as_mut();
        match event {
            Some(BotEvent::Audio(frame)) => {
                if !muted {
                    self.play_bot_audio(&frame);
                }
            }
            Some(BotEvent::Clear) => {
                if let (false, Some(pipeline)) = (muted, pipeline) {
                    pipeline.clear();
                }
            }
            Some(BotEvent::Mark(name)) => match (muted, pipeline) {
                (false, Some(pipeline)) => pipeline.push_mark(name),
                // Nothing of the bot's plays now: the mark's audio is discarded.
                _ => bot.tell(BotControl::MarkPlayed(name)),
            },
            Some(BotEvent::Transcript { role, text }) => tracing::info!(%role, %text, "transcript"),
            Some(BotEvent::Action(action)) => self.on_bot_action(action),
            Some(BotEvent::Hangup { reason }) => self.end(format!(
                "bot hung up{}",
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            )),
            Some(BotEvent::Closed { error: None }) | None => {
                self.bot = None;
                if self.transfer.is_none() && self.referring.is_none() {
                    self.end("bot closed the session");
                }
            }
            Some(BotEvent::Closed { error: Some(error) }) if bot.reconnects_left > 0 => {
                bot.reconnects_left -= 1;
                bot.reopening = true;
                tracing::warn!(flow = %self.flow.name, %error, "bot failed mid-call: reconnecting once");
                // What the failed session queued belongs to a conversation that is gone.
                if let Some(pipeline) = self.caller_media.pipeline.as_mut() {
                    pipeline.clear();
                }
                self.open_bot(OpenPurpose::Reconnect);
            }
            Some(BotEvent::Closed { error: Some(error) }) => self.bot_failed(error),
        }
    }

    /// Hands an inline bot's due events to the call, as a remote bot's
    /// would arrive on their channel.
    pub(super) fn pump_inline_bot(&mut self, now: std::time::Instant) {
        while let Some(event) = self
            .bot
            .as_mut()
            .filter(|bot| bot.listening())
            .and_then(|bot| bot.link.poll_inline(now))
        {
            self.on_bot_event(Some(event));
        }
    }

    /// Tells the bot how an action went.
    pub(super) fn action_result(&mut self, action: &str, ok: bool, message: impl Into<String>) {
        if let Some(bot) = &mut self.bot {
            bot.tell(BotControl::ActionResult {
                action: action.to_string(),
                ok,
                message: message.into(),
            });
        }
    }

    fn on_bot_action(&mut self, action: Action) {
        let kind = action.kind();
        match action {
            Action::Hangup { reason } => {
                self.action_result(kind, true, "hanging up");
                self.end(format!(
                    "bot hung up{}",
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                ));
            }
            Action::SendDtmf { digits } => {
                let outcome = match self.caller_media.pipeline.as_mut() {
                    Some(pipeline) => pipeline.send_digits(&digits),
                    None => Err("the call has no media yet".into()),
                };
                let (ok, message) = match outcome {
                    Ok(count) => (true, format!("sending {count} digits")),
                    Err(reason) => (false, reason),
                };
                tracing::info!(%digits, ok, %message, "bot sends DTMF");
                self.action_result(kind, ok, message);
            }
            Action::Dial(target) => self.start_dial(target, Origin::Bot),
            Action::Refer { uri } => self.start_refer(uri, None, Origin::Bot),
            Action::Redirect { url } => {
                tracing::info!(%url, "bot asked for a redirect, which is not available yet");
                self.action_result(kind, false, "redirect is not available yet on this gateway");
            }
        }
    }

    /// Mutes or unmutes the bot; unmuting drops whatever the gateway was
    /// playing meanwhile (ringback).
    pub(super) fn mute_bot(&mut self, muted: bool) {
        if let Some(bot) = &mut self.bot {
            bot.muted = muted;
        }
        if !muted {
            if let Some(pipeline) = self.caller_media.pipeline.as_mut() {
                pipeline.clear();
            }
        }
    }
}

fn on_failure_target(uri: String) -> DialTarget {
    DialTarget {
        uri,
        ..DialTarget::default()
    }
}
