//! What every WebSocket bot session shares: the socket type, the
//! non-blocking shell its call drives it through, and the bounded closing
//! handshake.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Sleep};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long the bot may take to answer our close frame (or to finish
/// closing after its own) before the socket is dropped.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends our close frame, bounded by [`CLOSE_TIMEOUT`]; `peer` names the
/// bot in the debug lines.
pub(crate) async fn send_close(ws: &mut Socket, peer: &str) {
    match timeout(CLOSE_TIMEOUT, ws.close(None)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "could not send a close frame to {peer}"),
        Err(_) => tracing::debug!("{peer} took no close frame in time"),
    }
}

/// Finishes the closing handshake, bounded by [`CLOSE_TIMEOUT`]: flushes any
/// close reply and reads (dropping data) until the bot, which as the server
/// closes TCP first (RFC 6455 §7.1.1), is gone.
pub(crate) async fn finish_close(ws: &mut Socket, peer: &str) {
    let drained = timeout(CLOSE_TIMEOUT, async {
        while let Some(message) = ws.next().await {
            message?;
        }
        Ok::<(), tokio_tungstenite::tungstenite::Error>(())
    })
    .await;
    match drained {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "error while closing {peer}'s socket"),
        Err(_) => tracing::debug!("{peer} did not finish closing in time"),
    }
}

/// Largest WebSocket message (and frame) a bot may send: generous for
/// any audio chunk or event, far below tungstenite's 64 MiB default, so a
/// broken or hostile bot cannot make a call buffer megabytes.
pub(crate) const MAX_BOT_MESSAGE: usize = 1 << 20;

/// Bytes read from a bot's socket at a time. tungstenite's default of
/// 128 KiB suits one busy connection, not one per call: the buffer is
/// touched end to end as reads advance through it, and was most of the
/// 130 KiB an external bot added to a call's memory. A 20 ms frame is
/// 0.3-2 KB; larger messages simply take several reads.
const BOT_READ_BUFFER: usize = 8 * 1024;

/// The WebSocket settings every connector connects with.
pub(crate) fn bot_socket_limits() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(BOT_READ_BUFFER)
        .max_message_size(Some(MAX_BOT_MESSAGE))
        .max_frame_size(Some(MAX_BOT_MESSAGE))
}

/// Log the first few occurrences and then one in a hundred.
pub(crate) fn worth_logging(count: u64) -> bool {
    count <= 3 || count.is_multiple_of(100)
}

/// Counts one more occurrence; true when this one is worth logging.
pub(crate) fn note(count: &mut u64) -> bool {
    *count += 1;
    worth_logging(*count)
}

/// Messages for the bot (marks, digits, action results) held while its
/// socket is backed up; beyond this they are dropped, like caller audio.
const OUTBOX_CAPACITY: usize = crate::CONTROL_CAPACITY;
/// A bot that takes no data for this long is considered dead.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who ends a session, which decides what is left to send.
pub(crate) enum Closing {
    /// We do: the protocol's goodbye if it has one (a `stop`, Ultravox's
    /// `hang_up`), then our close frame.
    Ours(Option<Message>),
    /// The bot sent its close frame; tungstenite has queued the reply.
    Theirs,
}

/// A bot's socket driven from its call's task (see [`crate::polled`]):
/// nothing here waits. Caller audio goes out only when it can at once,
/// other messages queue (bounded) until [`PolledSocket::poll_message`],
/// which the call polls whenever it waits, moves them.
pub(crate) struct PolledSocket {
    /// `None` once the socket failed or was handed to the closing task.
    ws: Option<Socket>,
    /// Messages the socket could not take yet.
    outbox: VecDeque<Message>,
    /// Written to tungstenite but not yet to the socket.
    unflushed: bool,
    /// Armed while the socket takes nothing: [`WRITE_TIMEOUT`].
    write_deadline: Option<Pin<Box<Sleep>>>,
    /// tungstenite may hold a whole message already read from the socket.
    /// Cleared when a read finds nothing, so the call's other wake-ups
    /// skip tungstenite's read (which zero-fills its read buffer on every
    /// attempt) until the kernel reports new data.
    read_pending: bool,
    /// Why the socket failed, until [`PolledSocket::poll_message`] says so.
    failure: Option<String>,
}

impl PolledSocket {
    pub(crate) fn new(ws: Socket) -> Self {
        PolledSocket {
            ws: Some(ws),
            outbox: VecDeque::new(),
            unflushed: false,
            write_deadline: None,
            read_pending: true,
            failure: None,
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.ws.is_some()
    }

    /// Whether caller audio written now goes straight out. A bot whose
    /// socket is backed up loses caller audio, not our memory: nothing is
    /// queued behind a write the socket has not taken.
    pub(crate) fn ready_for_audio(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        if self.unflushed || !self.outbox.is_empty() {
            self.flush(&mut cx);
        }
        !self.unflushed && self.outbox.is_empty() && self.writable(&mut cx)
    }

    /// Writes caller audio after [`PolledSocket::ready_for_audio`] said yes.
    pub(crate) fn send_audio(&mut self, message: Message) {
        self.start(message);
        // Written from the call's wake-up; if the socket takes only part of
        // it, `poll_message` (polled before the call sleeps) moves the rest.
        self.flush(&mut Context::from_waker(Waker::noop()));
    }

    /// A message for the bot, written now or queued behind earlier ones.
    pub(crate) fn send(&mut self, message: Message) {
        if self.ws.is_none() {
            return;
        }
        if self.outbox.len() >= OUTBOX_CAPACITY {
            tracing::debug!("the bot's socket is backed up: a message for it was dropped");
            return;
        }
        self.outbox.push_back(message);
        self.flush(&mut Context::from_waker(Waker::noop()));
    }

    /// The bot's next message, moving queued writes meanwhile; `Err` once
    /// the socket failed (then pending for ever).
    pub(crate) fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Message, String>> {
        self.flush(cx);
        if let Some(deadline) = self.write_deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                let seconds = WRITE_TIMEOUT.as_secs();
                self.fail(format!("the bot took no data for {seconds} s"));
            }
        }
        if let Some(reason) = self.failure.take() {
            return Poll::Ready(Err(reason));
        }
        let Some(ws) = self.ws.as_mut() else {
            return Poll::Pending;
        };
        if !self.read_pending && !socket_readable(ws, cx) {
            return Poll::Pending;
        }
        match ws.poll_next_unpin(cx) {
            Poll::Pending => {
                self.read_pending = false;
                Poll::Pending
            }
            Poll::Ready(Some(Ok(message))) => {
                self.read_pending = true;
                Poll::Ready(Ok(message))
            }
            Poll::Ready(Some(Err(e))) => {
                self.ws = None;
                Poll::Ready(Err(e.to_string()))
            }
            Poll::Ready(None) => {
                self.ws = None;
                Poll::Ready(Err("connection closed".to_owned()))
            }
        }
    }

    /// Hands the socket to a task that finishes closing it, so the call
    /// need not wait.
    pub(crate) fn close_in_background(&mut self, closing: Closing) {
        self.outbox.clear();
        self.write_deadline = None;
        let Some(mut ws) = self.ws.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if let Closing::Ours(goodbye) = closing {
                let said = match goodbye {
                    Some(goodbye) => match timeout(WRITE_TIMEOUT, ws.send(goodbye)).await {
                        Ok(Ok(())) => true,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "could not say goodbye to the bot");
                            false
                        }
                        Err(_) => {
                            tracing::debug!("the bot took no goodbye in time");
                            false
                        }
                    },
                    None => true,
                };
                if said {
                    send_close(&mut ws, "the bot").await;
                }
            }
            finish_close(&mut ws, "the bot").await;
        });
    }

    /// A bot that broke the protocol gets no goodbye: the socket is dropped.
    pub(crate) fn abandon(&mut self) {
        self.ws = None;
        self.outbox.clear();
        self.write_deadline = None;
    }

    /// Whether tungstenite takes another message now.
    fn writable(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(ws) = self.ws.as_mut() else {
            return false;
        };
        match ws.poll_ready_unpin(cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(e)) => {
                self.fail(e.to_string());
                false
            }
            Poll::Pending => false,
        }
    }

    /// Hands `message` to tungstenite, after [`Self::writable`] said yes.
    fn start(&mut self, message: Message) {
        let Some(ws) = self.ws.as_mut() else {
            return;
        };
        match ws.start_send_unpin(message) {
            Ok(()) => self.unflushed = true,
            Err(e) => self.fail(e.to_string()),
        }
    }

    /// Moves queued messages and tungstenite's buffer to the socket; arms
    /// the write timeout while the socket takes nothing.
    fn flush(&mut self, cx: &mut Context<'_>) {
        while !self.outbox.is_empty() && self.writable(cx) {
            if let Some(message) = self.outbox.pop_front() {
                self.start(message);
            }
        }
        let Some(ws) = self.ws.as_mut() else {
            return;
        };
        if self.unflushed {
            match ws.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return self.fail(e.to_string()),
                Poll::Pending => {}
            }
        }
        if !self.unflushed && self.outbox.is_empty() {
            self.write_deadline = None;
        } else if self.write_deadline.is_none() {
            self.write_deadline = Some(Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
        }
    }

    /// The socket failed: dropped at once, the reason kept for the call.
    fn fail(&mut self, reason: String) {
        self.abandon();
        self.failure.get_or_insert(reason);
    }
}

/// Whether the kernel reported data since tungstenite last found the
/// socket empty (registering the waker if not). TLS keeps its own buffer,
/// so a `wss://` socket is always worth a read.
fn socket_readable(ws: &Socket, cx: &mut Context<'_>) -> bool {
    match ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.poll_read_ready(cx).is_ready(),
        _ => true,
    }
}
