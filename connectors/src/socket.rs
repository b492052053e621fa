//! What every WebSocket bot session shares: the socket type, why a session
//! loop stops, and the bounded closing handshake.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long the bot may take to answer our close frame (or to finish
/// closing after its own) before the socket is dropped.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a session loop stopped.
pub(crate) enum Ending {
    /// The call asked us to hang up.
    Hangup,
    /// Caller audio closed: the call is gone.
    CallGone,
    /// Nobody reads events any more: the session was dropped.
    Abandoned,
    /// The bot sent a close frame.
    BotClosed,
    /// The socket failed or the bot broke the protocol; the reason goes
    /// into `BotEvent::Closed`.
    Failed(String),
}

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
