//! How a call reaches its bot: over channels to a connector's tasks, polled
//! (a bot behind a socket whose session the call task drives: the generic
//! WebSocket bot), or inline, a state machine the call task drives itself
//! (the echo bot: no task, channel or timer of its own).

use std::future::poll_fn;
use std::time::Instant;

use switchboard_connectors::{BotControl, BotEvent, BotSession, InlineBot, PolledBot};
use switchboard_media::{AudioFormat, AudioFrame};

pub(super) enum BotLink {
    Remote(BotSession),
    Polled(Box<dyn PolledBot>),
    Inline(Box<dyn InlineBot>),
}

impl BotLink {
    pub(super) fn audio_format(&self) -> AudioFormat {
        match self {
            BotLink::Remote(session) => session.audio_format,
            BotLink::Polled(bot) => bot.audio_format(),
            BotLink::Inline(bot) => bot.audio_format(),
        }
    }

    /// Never waits: a bot whose control queue is full misses the message.
    pub(super) fn tell(&mut self, control: BotControl) {
        match self {
            BotLink::Remote(session) => {
                let _ = session.control.try_send(control);
            }
            BotLink::Polled(bot) => bot.control(control),
            BotLink::Inline(bot) => bot.control(control, Instant::now()),
        }
    }

    /// One frame of caller audio; false when a remote bot's queue is full
    /// and the frame was dropped rather than stall the media path.
    pub(super) fn send_audio(&mut self, frame: &AudioFrame, now: Instant) -> bool {
        match self {
            BotLink::Remote(session) => {
                let frame = session.frames.copy_of(frame);
                session.audio_in.try_send(frame).is_ok()
            }
            BotLink::Polled(bot) => bot.send_audio(frame),
            BotLink::Inline(bot) => {
                bot.push_audio(frame, now);
                true
            }
        }
    }

    /// A remote or polled bot's next event; `None` when a remote session's
    /// task is gone. Never ready for an inline bot: the call polls those
    /// itself on every wake-up.
    pub(super) async fn next_event(&mut self) -> Option<BotEvent> {
        match self {
            BotLink::Remote(session) => session.events.recv().await,
            BotLink::Polled(bot) => Some(poll_fn(|cx| bot.poll_event(cx)).await),
            BotLink::Inline(_) => std::future::pending().await,
        }
    }

    /// An inline bot's next event due by `now`.
    pub(super) fn poll_inline(&mut self, now: Instant) -> Option<BotEvent> {
        match self {
            BotLink::Remote(_) | BotLink::Polled(_) => None,
            BotLink::Inline(bot) => bot.poll_event(now),
        }
    }

    /// When an inline bot next has an event without new input.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self {
            BotLink::Remote(_) | BotLink::Polled(_) => None,
            BotLink::Inline(bot) => bot.poll_timeout(),
        }
    }
}
