//! Bots behind a socket that their call's task drives itself.
//!
//! A connector with a task of its own costs every 20 ms frame two hops
//! through channels and two task wake-ups on top of the socket's: the call
//! hands the caller's frame to the connector's task, which wakes to write it;
//! the bot's frame wakes that task, which hands it to the call, which wakes
//! again. A [`PolledBot`] owns its socket and is polled by the call: caller
//! audio is written from the call's own wake-up, and the bot's messages wake
//! the call directly. Measured in BENCHMARKS.md, "Bots behind a socket
//! polled by their call".
//!
//! [`spawn_session`] runs one in a task behind the channels of a
//! [`BotSession`], for callers of [`crate::BotConnector::open`].

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Context, Poll};

use switchboard_media::{AudioFormat, AudioFrame, FramePool, PooledFrame, MAX_FRAME_SAMPLES};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::socket::{Closing, PolledSocket};
use crate::{
    BotConnector, BotControl, BotEvent, BotSession, CallInfo, ConnectorError, AUDIO_IN_CAPACITY,
    CONTROL_CAPACITY, EVENTS_CAPACITY,
};

/// A bot session driven from its call's task. Nothing here waits: writes the
/// socket cannot take at once are queued (bounded) and moved on by
/// [`PolledBot::poll_event`], which the call polls whenever it waits.
pub trait PolledBot: Send {
    /// Rate the bot wants caller audio in and sends its own audio at.
    fn audio_format(&self) -> AudioFormat;
    /// One 20 ms frame of caller audio at `audio_format`; false when the
    /// socket is backed up and the frame was dropped rather than queued.
    fn send_audio(&mut self, frame: &AudioFrame) -> bool;
    /// What the call tells the bot besides audio. After
    /// [`BotControl::Hangup`] the session says goodbye and closes its socket
    /// in the background, and its next event is `Closed { error: None }`.
    fn control(&mut self, control: BotControl);
    /// The bot's next event. Also flushes queued writes, so the call must
    /// keep polling it while it waits. Once `Closed` has been returned the
    /// session is over and this stays pending.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<BotEvent>;
}

/// Runs a polled bot in a task of its own, behind the channels of a
/// [`BotSession`]: what [`crate::BotConnector::open`] returns for a
/// connector whose calls normally poll it. The task ends after passing on
/// `Closed`, or when the session's caller audio or events are dropped (the
/// bot then closes its socket itself).
pub fn spawn_session(mut bot: Box<dyn PolledBot>) -> BotSession {
    let (audio_tx, mut audio_rx) = mpsc::channel::<PooledFrame>(AUDIO_IN_CAPACITY);
    let (control_tx, mut control_rx) = mpsc::channel(CONTROL_CAPACITY);
    let (events_tx, events_rx) = mpsc::channel(EVENTS_CAPACITY);
    let audio_format = bot.audio_format();
    tokio::spawn(async move {
        let (mut control_open, mut audio_open) = (true, true);
        loop {
            tokio::select! {
                // Control first so a Hangup is not starved by audio.
                biased;
                control = control_rx.recv(), if control_open => match control {
                    Some(control) => bot.control(control),
                    // Caller audio still tells us when the call is gone.
                    None => control_open = false,
                },
                frame = audio_rx.recv(), if audio_open => match frame {
                    Some(frame) => {
                        bot.send_audio(&frame);
                    }
                    // The call is gone.
                    None => {
                        audio_open = false;
                        bot.control(BotControl::Hangup);
                    }
                },
                event = poll_fn(|cx| bot.poll_event(cx)) => {
                    let closed = matches!(event, BotEvent::Closed { .. });
                    // Waiting here is the back-pressure: the bot's socket is not read.
                    if events_tx.send(event).await.is_err() || closed {
                        return;
                    }
                }
                () = events_tx.closed() => return,
            }
        }
    });
    BotSession {
        audio_format,
        audio_in: audio_tx,
        frames: FramePool::new(),
        control: control_tx,
        events: events_rx,
    }
}

/// What a polled session has for its call, in the order the call must hear
/// it: the audio of the bot's last message, cut into 20 ms frames as the
/// call takes them, then the other events of that message, then how the
/// session ended. The next message is read only once all of it is taken,
/// so a bot that runs ahead is held back by its socket, not by memory here.
pub(crate) struct BotOutput {
    rate: u32,
    frame_samples: usize,
    audio: Vec<i16>,
    /// `audio[..framed]` is with the call already.
    framed: usize,
    events: VecDeque<BotEvent>,
    /// How the session ended, until the call is told.
    ending: Option<Option<String>>,
    ended: bool,
    /// `Closed` was returned: nothing more to say.
    done: bool,
    /// Boxes for the bot's frames, back here once the call plays them.
    frames: FramePool,
}

impl BotOutput {
    pub(crate) fn new(rate: u32) -> Self {
        BotOutput {
            rate,
            frame_samples: AudioFormat::new(rate)
                .frame_samples()
                .clamp(1, MAX_FRAME_SAMPLES),
            audio: Vec::with_capacity(MAX_FRAME_SAMPLES),
            framed: 0,
            events: VecDeque::new(),
            ending: None,
            ended: false,
            done: false,
            frames: FramePool::new(),
        }
    }

    /// Where the next message's samples go (empty: the last one's were all
    /// taken).
    pub(crate) fn audio(&mut self) -> &mut Vec<i16> {
        self.audio.clear();
        self.framed = 0;
        &mut self.audio
    }

    pub(crate) fn push(&mut self, event: BotEvent) {
        if !self.ended {
            self.events.push_back(event);
        }
    }

    /// The session is over: whatever was not taken is dropped, and the call
    /// hears `Closed` next. False when it had ended already.
    pub(crate) fn end(&mut self, error: Option<String>) -> bool {
        if self.ended {
            return false;
        }
        self.ended = true;
        self.audio.clear();
        self.framed = 0;
        self.events.clear();
        self.ending = Some(error);
        true
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended
    }

    /// `Closed` has been handed to the call.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// The next thing for the call, if the last message has any left.
    pub(crate) fn next(&mut self) -> Option<BotEvent> {
        if self.framed < self.audio.len() {
            let end = (self.framed + self.frame_samples).min(self.audio.len());
            let frame = self
                .frames
                .with_samples(self.rate, &self.audio[self.framed..end]);
            self.framed = end;
            return Some(BotEvent::Audio(frame));
        }
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        let error = self.ending.take()?;
        self.done = true;
        Some(BotEvent::Closed { error })
    }
}

/// A protocol's session over a [`PolledSocket`]: what
/// [`poll_socket_session`] needs of it.
pub(crate) trait SocketSession {
    fn output(&mut self) -> &mut BotOutput;
    fn socket(&mut self) -> &mut PolledSocket;
    /// A text message from the bot: its events go to the output.
    fn on_text(&mut self, text: &str);
    /// A binary message from the bot.
    fn on_binary(&mut self, data: &[u8]);
    /// The socket failed: the session ends with `error`.
    fn end(&mut self, error: Option<String>);
}

/// [`PolledBot::poll_event`] for a socket session: what the bot's last
/// message left for the call first, and only then the next message.
pub(crate) fn poll_socket_session(
    session: &mut impl SocketSession,
    cx: &mut Context<'_>,
) -> Poll<BotEvent> {
    loop {
        if let Some(event) = session.output().next() {
            return Poll::Ready(event);
        }
        if session.output().is_done() {
            return Poll::Pending;
        }
        match session.socket().poll_message(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(Message::Text(text))) => session.on_text(text.as_str()),
            Poll::Ready(Ok(Message::Binary(data))) => session.on_binary(&data),
            Poll::Ready(Ok(Message::Close(_))) => {
                session.end(None);
                // tungstenite has queued the reply to the bot's close frame.
                session.socket().close_in_background(Closing::Theirs);
            }
            // tungstenite answers pings itself.
            Poll::Ready(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Poll::Ready(Err(reason)) => session.end(Some(reason)),
        }
    }
}

/// A connector whose sessions are [`PolledBot`]s. It only connects: being
/// a [`BotConnector`] follows, polled by the call ([`BotConnector::open_polled`])
/// or driven by a task of its own ([`BotConnector::open`], [`spawn_session`]).
#[async_trait::async_trait]
pub(crate) trait PolledConnector: Send + Sync {
    /// Connects (and sets up, if the protocol needs it) a session.
    async fn connect_polled(&self, call: &CallInfo) -> Result<Box<dyn PolledBot>, ConnectorError>;
}

#[async_trait::async_trait]
impl<T: PolledConnector> BotConnector for T {
    async fn open(&self, call: &CallInfo) -> Result<BotSession, ConnectorError> {
        Ok(spawn_session(self.connect_polled(call).await?))
    }

    async fn open_polled(
        &self,
        call: &CallInfo,
    ) -> Option<Result<Box<dyn PolledBot>, ConnectorError>> {
        Some(self.connect_polled(call).await)
    }
}

/// Caller audio at another rate than the session declared would play at
/// the wrong speed: true when `frame` is such audio, which the session
/// drops, warning now and then (`dropped` counts them).
pub(crate) fn is_wrong_rate(frame: &AudioFrame, declared: u32, dropped: &mut u64) -> bool {
    if frame.sample_rate() == declared {
        return false;
    }
    if crate::socket::note(dropped) {
        tracing::warn!(
            got = frame.sample_rate(),
            declared,
            count = *dropped,
            "dropping caller audio at the wrong rate"
        );
    }
    true
}
