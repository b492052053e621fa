//! Built-in echo bot: plays the caller's own audio back after a fixed delay.
//!
//! Useful to check a trunk or softphone end to end without any external bot:
//! the caller hears themself `delay_ms` later, at whatever rate the flow asks
//! for (16 kHz by default, so the resamplers are exercised like with a real bot).

use std::collections::VecDeque;
use std::time::Duration;

use switchboard_flows::EchoBotConfig;
use switchboard_media::{AudioFormat, FramePool, PooledFrame, FRAME_MS};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{
    BotConnector, BotControl, BotEvent, BotSession, CallInfo, ConnectorError, AUDIO_IN_CAPACITY,
    CONTROL_CAPACITY, EVENTS_CAPACITY,
};

/// Extra room in the delay line beyond `delay / 20 ms`, so ordinary arrival
/// jitter (a burst of frames after a scheduling hiccup) drops nothing.
const QUEUE_SLACK: usize = 10;

/// Opens echo sessions; one per flow, shared by its calls.
pub struct EchoConnector {
    config: EchoBotConfig,
}

impl EchoConnector {
    pub fn new(config: EchoBotConfig) -> Self {
        Self { config }
    }
}

#[async_trait::async_trait]
impl BotConnector for EchoConnector {
    async fn open(&self, call: &CallInfo) -> Result<BotSession, ConnectorError> {
        let (audio_tx, audio_rx) = mpsc::channel(AUDIO_IN_CAPACITY);
        let (control_tx, control_rx) = mpsc::channel(CONTROL_CAPACITY);
        let (events_tx, events_rx) = mpsc::channel(EVENTS_CAPACITY);
        let delay = Duration::from_millis(u64::from(self.config.delay_ms));
        tracing::debug!(call_id = %call.call_id, delay_ms = self.config.delay_ms, "echo bot session opened");
        tokio::spawn(run(delay, audio_rx, control_rx, events_tx));
        Ok(BotSession {
            audio_format: AudioFormat::new(self.config.sample_rate),
            audio_in: audio_tx,
            frames: FramePool::new(),
            control: control_tx,
            events: events_rx,
        })
    }
}

/// Capacity of the delay line: enough 20 ms frames to cover `delay`, plus slack.
fn queue_capacity(delay: Duration) -> usize {
    let frames = delay.as_millis() / u128::from(FRAME_MS);
    usize::try_from(frames).unwrap_or(usize::MAX / 2) + QUEUE_SLACK
}

/// The session task. Ends on Hangup, when caller audio stops (the call is
/// gone), or when nobody listens to events any more.
async fn run(
    delay: Duration,
    mut audio_in: mpsc::Receiver<PooledFrame>,
    mut control: mpsc::Receiver<BotControl>,
    events: mpsc::Sender<BotEvent>,
) {
    let capacity = queue_capacity(delay);
    // Allocated once per session. The caller's frames are echoed in their own
    // boxes, which go back to the call's pool once played.
    let mut queue: VecDeque<(Instant, PooledFrame)> = VecDeque::with_capacity(capacity);
    let mut control_open = true;
    let mut dropped: u64 = 0;
    // One timer for the session, moved to each frame's due time.
    let sleep = tokio::time::sleep_until(Instant::now());
    tokio::pin!(sleep);
    let mut armed_for = None;

    loop {
        let due = queue.front().map(|(arrived, _)| *arrived + delay);
        if let Some(due) = due.filter(|due| armed_for != Some(*due)) {
            sleep.as_mut().reset(due);
            armed_for = Some(due);
        }
        tokio::select! {
            // Control first: a Hangup must win over a steady stream of audio.
            biased;
            message = control.recv(), if control_open => match message {
                Some(BotControl::Hangup) => break,
                Some(BotControl::Dtmf(digit)) => tracing::debug!(%digit, "echo bot got DTMF"),
                Some(BotControl::MarkPlayed(_)) => {}
                Some(BotControl::ActionResult { action, ok, .. }) => {
                    tracing::debug!(%action, ok, "echo bot got an action result");
                }
                // The caller may keep audio_in and drop control; audio_in decides then.
                None => control_open = false,
            },
            // Due frames go out before new ones are queued, so the line never
            // overflows just because emitting lagged one loop.
            () = &mut sleep, if due.is_some() => {
                armed_for = None;
                if let Some((_, frame)) = queue.pop_front() {
                    if events.send(BotEvent::Audio(frame)).await.is_err() {
                        // Nobody listens: the session is gone.
                        return;
                    }
                }
            }
            frame = audio_in.recv() => match frame {
                Some(frame) => {
                    if queue.len() >= capacity {
                        // Older audio is the least useful to hear late.
                        queue.pop_front();
                        dropped += 1;
                    }
                    queue.push_back((Instant::now(), frame));
                }
                None => break,
            },
            () = events.closed() => return,
        }
    }
    if dropped > 0 {
        tracing::debug!(dropped, "echo bot dropped frames on a full delay line");
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
}
