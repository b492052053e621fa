//! Bots that run inside the call's own task.
//!
//! A bot behind a socket needs tasks and channels: its audio arrives when the
//! network delivers it. A bot that needs no I/O (the built-in echo bot) does
//! not: run as a state machine inside the call task, it costs no task, no
//! channel and no timer of its own, and the call serves it on the wake-ups it
//! has anyway (a caller packet, the 20 ms send). Measured in BENCHMARKS.md,
//! "Whole calls … one wake-up per packet".

use std::time::Instant;

use switchboard_media::{AudioFormat, AudioFrame};

use crate::{BotControl, BotEvent};

/// A bot session driven by its call: inputs with the time they happen,
/// outputs polled after each, and the next time it wants to be polled.
pub trait InlineBot: Send {
    /// Rate the bot wants caller audio in and sends its own audio at.
    fn audio_format(&self) -> AudioFormat;
    /// One 20 ms frame of caller audio at `audio_format`.
    fn push_audio(&mut self, frame: &AudioFrame, now: Instant);
    /// What the call tells the bot besides audio.
    fn control(&mut self, control: BotControl, now: Instant);
    /// The bot's next event due by `now`, if any.
    fn poll_event(&mut self, now: Instant) -> Option<BotEvent>;
    /// When [`InlineBot::poll_event`] next has something without new input.
    fn poll_timeout(&self) -> Option<Instant>;
}
