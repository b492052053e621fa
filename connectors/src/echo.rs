//! Built-in echo bot: plays the caller's own audio back after a fixed delay.
//!
//! Useful to check a trunk or softphone end to end without any external bot:
//! the caller hears themself `delay_ms` later, at whatever rate the flow asks
//! for (16 kHz by default, so the resamplers are exercised like with a real bot).
//!
//! A call runs it inline ([`EchoBot`], through [`BotConnector::open_inline`]):
//! no task, channel or timer of its own. [`BotConnector::open`] runs the same
//! delay line in a task behind channels, for callers that want a
//! [`BotSession`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use switchboard_flows::EchoBotConfig;
use switchboard_media::{AudioFormat, AudioFrame, FramePool, PooledFrame, FRAME_MS};
use tokio::sync::mpsc;

use crate::{
    BotConnector, BotControl, BotEvent, BotSession, CallInfo, ConnectorError, InlineBot,
    AUDIO_IN_CAPACITY, CONTROL_CAPACITY, EVENTS_CAPACITY,
};

/// Extra room in the delay line beyond `delay / 20 ms`, so ordinary arrival
/// jitter (a burst of frames after a scheduling hiccup) drops nothing.
const QUEUE_SLACK: usize = 10;

/// How early an inline echo may play a frame: each frame comes back with
/// the caller frame that arrives `delay` after it, whichever side of the
/// exact instant that one lands (the call pulls caller frames up to 2 ms
/// off their 20 ms grid), instead of on a wake-up of its own.
const INLINE_EARLY: Duration = Duration::from_millis(2);
/// How long past its due time a frame waits for the caller's next frame
/// to carry it before it asks for a wake-up of its own: only the tail of
/// a stream that stopped needs one.
const INLINE_TAIL_WAIT: Duration = Duration::from_millis(FRAME_MS as u64 / 2);

/// Opens echo sessions; one per flow, shared by its calls.
pub struct EchoConnector {
    config: EchoBotConfig,
}

impl EchoConnector {
    pub fn new(config: EchoBotConfig) -> Self {
        Self { config }
    }

    fn delay(&self) -> Duration {
        Duration::from_millis(u64::from(self.config.delay_ms))
    }
}

#[async_trait::async_trait]
impl BotConnector for EchoConnector {
    async fn open(&self, call: &CallInfo) -> Result<BotSession, ConnectorError> {
        let (audio_tx, audio_rx) = mpsc::channel(AUDIO_IN_CAPACITY);
        let (control_tx, control_rx) = mpsc::channel(CONTROL_CAPACITY);
        let (events_tx, events_rx) = mpsc::channel(EVENTS_CAPACITY);
        tracing::debug!(call_id = %call.call_id, delay_ms = self.config.delay_ms, "echo bot session opened");
        let line = DelayLine::new(self.delay(), Duration::ZERO);
        tokio::spawn(run(line, audio_rx, control_rx, events_tx));
        Ok(BotSession {
            audio_format: AudioFormat::new(self.config.sample_rate),
            audio_in: audio_tx,
            frames: FramePool::new(),
            control: control_tx,
            events: events_rx,
        })
    }

    fn open_inline(&self, call: &CallInfo) -> Option<Box<dyn InlineBot>> {
        tracing::debug!(call_id = %call.call_id, delay_ms = self.config.delay_ms, "echo bot session opened inline");
        Some(Box::new(EchoBot {
            format: AudioFormat::new(self.config.sample_rate),
            line: DelayLine::new(self.delay(), INLINE_EARLY),
            tail_wait: INLINE_TAIL_WAIT,
            frames: FramePool::new(),
        }))
    }
}

/// Frames held until their echo is due. Allocated once per session; the
/// frames' boxes come from (and go back to) a call's pool.
struct DelayLine {
    delay: Duration,
    /// How long before its exact due time a frame may leave.
    early: Duration,
    capacity: usize,
    queue: VecDeque<(Instant, PooledFrame)>,
    dropped: u64,
}

impl DelayLine {
    fn new(delay: Duration, early: Duration) -> Self {
        let capacity = queue_capacity(delay);
        DelayLine {
            delay,
            early: early.min(delay),
            capacity,
            queue: VecDeque::with_capacity(capacity),
            dropped: 0,
        }
    }

    fn push(&mut self, frame: PooledFrame, now: Instant) {
        if self.queue.len() >= self.capacity {
            // Older audio is the least useful to hear late.
            self.queue.pop_front();
            self.dropped += 1;
        }
        self.queue.push_back((now, frame));
    }

    /// When the oldest frame may leave.
    fn next_due(&self) -> Option<Instant> {
        let (arrived, _) = self.queue.front()?;
        Some(*arrived + self.delay - self.early)
    }

    /// Forgets every frame waiting (their boxes go back to their pool).
    fn clear(&mut self) {
        self.queue.clear();
    }

    fn pop_due(&mut self, now: Instant) -> Option<PooledFrame> {
        if self.next_due()? > now {
            return None;
        }
        self.queue.pop_front().map(|(_, frame)| frame)
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        if self.dropped > 0 {
            tracing::debug!(
                dropped = self.dropped,
                "echo bot dropped frames on a full delay line"
            );
        }
    }
}

/// Capacity of the delay line: enough 20 ms frames to cover `delay`, plus slack.
fn queue_capacity(delay: Duration) -> usize {
    let frames = delay.as_millis() / u128::from(FRAME_MS);
    usize::try_from(frames).unwrap_or(usize::MAX / 2) + QUEUE_SLACK
}

/// The echo bot as a state machine its call drives.
struct EchoBot {
    format: AudioFormat,
    line: DelayLine,
    tail_wait: Duration,
    /// Where the delay line's copies of the caller's frames come from.
    frames: FramePool,
}

impl InlineBot for EchoBot {
    fn audio_format(&self) -> AudioFormat {
        self.format
    }

    fn push_audio(&mut self, frame: &AudioFrame, now: Instant) {
        self.line.push(self.frames.copy_of(frame), now);
    }

    fn control(&mut self, control: BotControl, _now: Instant) {
        match control {
            // Queued audio goes with the call.
            BotControl::Hangup => self.line.clear(),
            other => note_control(&other),
        }
    }

    fn poll_event(&mut self, now: Instant) -> Option<BotEvent> {
        self.line.pop_due(now).map(BotEvent::Audio)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.line.next_due()? + self.line.early + self.tail_wait)
    }
}

/// What the echo bot does with anything but Hangup: it has nothing to
/// say back, so only the debug log hears of it.
fn note_control(control: &BotControl) {
    match control {
        BotControl::Dtmf(digit) => tracing::debug!(%digit, "echo bot got DTMF"),
        BotControl::ActionResult { action, ok, .. } => {
            tracing::debug!(%action, ok, "echo bot got an action result");
        }
        BotControl::MarkPlayed(_) | BotControl::Hangup => {}
    }
}

/// The session task. Ends on Hangup, when caller audio stops (the call is
/// gone), or when nobody listens to events any more.
async fn run(
    mut line: DelayLine,
    mut audio_in: mpsc::Receiver<PooledFrame>,
    mut control: mpsc::Receiver<BotControl>,
    events: mpsc::Sender<BotEvent>,
) {
    let mut control_open = true;
    // One timer for the session, moved to each frame's due time. The
    // caller's frames are echoed in their own boxes, which go back to the
    // call's pool once played.
    let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(sleep);
    let mut armed_for = None;

    loop {
        let due = line.next_due().map(tokio::time::Instant::from_std);
        if let Some(due) = due.filter(|due| armed_for != Some(*due)) {
            sleep.as_mut().reset(due);
            armed_for = Some(due);
        }
        tokio::select! {
            // Control first: a Hangup must win over a steady stream of audio.
            biased;
            message = control.recv(), if control_open => match message {
                Some(BotControl::Hangup) => break,
                Some(other) => note_control(&other),
                // The caller may keep audio_in and drop control; audio_in decides then.
                None => control_open = false,
            },
            // Due frames go out before new ones are queued, so the line never
            // overflows just because emitting lagged one loop.
            () = &mut sleep, if due.is_some() => {
                armed_for = None;
                let now = tokio::time::Instant::now().into_std();
                if let Some(frame) = line.pop_due(now) {
                    if events.send(BotEvent::Audio(frame)).await.is_err() {
                        // Nobody listens: the session is gone.
                        return;
                    }
                }
            }
            frame = audio_in.recv() => match frame {
                Some(frame) => line.push(frame, tokio::time::Instant::now().into_std()),
                None => break,
            },
            () = events.closed() => return,
        }
    }
    let _ = events.send(BotEvent::Closed { error: None }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_covers_the_delay() {
        assert_eq!(queue_capacity(Duration::ZERO), QUEUE_SLACK);
        assert_eq!(queue_capacity(Duration::from_millis(500)), 25 + QUEUE_SLACK);
    }

    fn inline(delay_ms: u32) -> Box<dyn InlineBot> {
        EchoConnector::new(EchoBotConfig {
            delay_ms,
            sample_rate: 16_000,
        })
        .open_inline(&CallInfo::default())
        .expect("the echo bot runs inline")
    }

    fn tagged(tag: i16) -> AudioFrame {
        AudioFrame::from_samples(16_000, &[tag; 320])
    }

    fn audio_tag(event: Option<BotEvent>) -> Option<i16> {
        match event? {
            BotEvent::Audio(frame) => Some(frame.samples()[0]),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Each frame comes back on the caller frame that arrives `delay` after
    /// it, even when that one is a little early: no wake-up of its own.
    #[test]
    fn inline_echo_rides_on_the_callers_frames() {
        let mut bot = inline(100);
        assert_eq!(bot.audio_format().sample_rate, 16_000);
        let start = Instant::now();
        let mut echoed = Vec::new();
        for tag in 0..20i16 {
            // Arrivals jitter by up to 2 ms either way.
            let jitter = [0i64, 2, -2, 1, -1][tag as usize % 5];
            let at = start + Duration::from_millis((i64::from(tag) * 20 + 10 + jitter) as u64);
            assert!(
                bot.poll_timeout().is_none_or(|wake| wake > at),
                "frame {tag}: the bot asked for a wake-up of its own"
            );
            bot.push_audio(&tagged(tag), at);
            while let Some(tag) = audio_tag(bot.poll_event(at)) {
                echoed.push((tag, at));
            }
        }
        let tags: Vec<i16> = echoed.iter().map(|(tag, _)| *tag).collect();
        assert_eq!(
            tags,
            (0..15).collect::<Vec<i16>>(),
            "five frames echo per 100 ms"
        );
        for (tag, at) in echoed {
            let sent = start + Duration::from_millis(tag as u64 * 20 + 10);
            let delay = at - sent;
            assert!(
                delay >= Duration::from_millis(96) && delay <= Duration::from_millis(104),
                "frame {tag} after {delay:?}"
            );
        }
    }

    #[test]
    fn inline_echo_plays_the_tail_on_its_timeout() {
        let mut bot = inline(100);
        let start = Instant::now();
        bot.push_audio(&tagged(1), start);
        assert!(bot.poll_event(start).is_none());
        // With no caller frame to carry it, the tail asks for a wake-up of
        // its own, a little after its due time.
        let wake = bot.poll_timeout().expect("a frame waits");
        assert_eq!(wake, start + Duration::from_millis(110));
        assert!(bot.poll_event(start + Duration::from_millis(97)).is_none());
        assert_eq!(audio_tag(bot.poll_event(wake)), Some(1));
        assert!(bot.poll_timeout().is_none());
    }

    #[test]
    fn inline_hangup_drops_queued_audio() {
        let mut bot = inline(200);
        let start = Instant::now();
        bot.push_audio(&tagged(1), start);
        bot.control(BotControl::Hangup, start);
        assert!(bot.poll_timeout().is_none());
        assert!(bot.poll_event(start + Duration::from_secs(1)).is_none());
    }

    #[test]
    fn inline_zero_delay_echoes_at_once() {
        let mut bot = inline(0);
        let now = Instant::now();
        bot.push_audio(&tagged(7), now);
        assert_eq!(audio_tag(bot.poll_event(now)), Some(7));
    }
}
