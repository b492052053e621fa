//! SIP over TCP: an accept loop, one reader and one writer task per
//! connection, and a table of live connections for sending responses and
//! in-dialog requests back on the connection the peer opened.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

use super::{Delivery, Inbound, InboundSender};
use crate::sip::framing::{bad_request, StreamDecoder, StreamItem};
use crate::sip::transaction::{Peer, Transport};

/// Largest SIP message accepted on a stream.
const MAX_MESSAGE: usize = 64 * 1024;
/// Messages, and bytes, queued towards one connection; a peer that does
/// not read is disconnected rather than allowed to hold memory. Generous
/// enough for a burst (a thousand registrations' REGISTERs while the
/// connection opens), bounded by bytes whatever the message sizes.
const WRITE_QUEUE: usize = 4096;
const WRITE_QUEUE_BYTES: usize = 2 * 1024 * 1024;

/// Longest wait for an outbound connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Writer {
    queue: mpsc::Sender<Vec<u8>>,
    /// Bytes queued and not yet written.
    pending: Arc<AtomicUsize>,
    /// Set once an outbound connection is open (accepted ones start open).
    ready: Arc<AtomicBool>,
}

/// What one peer, and all of them, may hold open; and how long a
/// connection may take to say something.
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    /// Connections, accepted and opened, beyond which accepts are refused.
    pub max_connections: usize,
    /// Accepted connections from one source IP.
    pub max_per_ip: usize,
    /// A message must arrive whole within this of its first byte (and an
    /// accepted connection must send its first message within it).
    pub message_timeout: Duration,
    /// A connection with no traffic at all (CRLF keep-alives count) for
    /// this long is closed.
    pub idle_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 10_000,
            max_per_ip: 256,
            message_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Every live connection, accepted or opened by us, by peer address.
#[derive(Clone)]
pub struct TcpConnections {
    writers: Arc<Mutex<HashMap<SocketAddr, Writer>>>,
    /// Accepted connections per source IP (touched per accept and close).
    accepted: Arc<Mutex<HashMap<IpAddr, usize>>>,
    limits: TcpLimits,
    inbound: InboundSender,
    shutdown: watch::Receiver<bool>,
}

/// An accepted connection's place in its source's count, given back when
/// the connection ends however it ends.
struct AcceptedSlot {
    accepted: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for AcceptedSlot {
    fn drop(&mut self) {
        let mut accepted = self.accepted.lock().unwrap();
        if let Some(count) = accepted.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                accepted.remove(&self.ip);
            }
        }
    }
}

impl TcpConnections {
    pub fn new(inbound: InboundSender, shutdown: watch::Receiver<bool>, limits: TcpLimits) -> Self {
        TcpConnections {
            writers: Arc::default(),
            accepted: Arc::default(),
            limits,
            inbound,
            shutdown,
        }
    }

    /// Takes a slot for a connection from `ip`, or says which limit is hit.
    fn admit(&self, ip: IpAddr) -> Result<AcceptedSlot, &'static str> {
        if self.len() >= self.limits.max_connections {
            return Err("too many TCP connections");
        }
        let mut accepted = self.accepted.lock().unwrap();
        let count = accepted.entry(ip).or_insert(0);
        if *count >= self.limits.max_per_ip {
            return Err("too many TCP connections from this address");
        }
        *count += 1;
        Ok(AcceptedSlot {
            accepted: self.accepted.clone(),
            ip,
        })
    }

    /// Queues `bytes` for `peer`, opening a connection from `local` when
    /// there is none.
    pub fn send(&self, peer: SocketAddr, mut bytes: Vec<u8>, local: Option<IpAddr>) {
        let mut writers = self.writers.lock().unwrap();
        if let Some(writer) = writers.get(&peer) {
            let len = bytes.len();
            // Counted before it is queued: the writer subtracts once written.
            let before = writer.pending.fetch_add(len, Ordering::Relaxed);
            let outcome = if before + len > WRITE_QUEUE_BYTES {
                Err(mpsc::error::TrySendError::Full(bytes))
            } else {
                writer.queue.try_send(bytes)
            };
            match outcome {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(%peer, "TCP peer not reading: closing its connection");
                    writers.remove(&peer);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(returned)) => {
                    // Its connection just ended: this message opens a new one.
                    writers.remove(&peer);
                    bytes = returned;
                }
            }
        }
        if writers.len() >= self.limits.max_connections {
            tracing::warn!(%peer, "too many TCP connections: not opening another");
            drop(writers);
            let _ = self.inbound.try_send(Inbound::ConnectFailed { addr: peer });
            return;
        }
        let (queue, outgoing) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        let pending = Arc::new(AtomicUsize::new(bytes.len()));
        let _ = queue.try_send(bytes);
        let ready = Arc::new(AtomicBool::new(false));
        writers.insert(
            peer,
            Writer {
                queue: queue.clone(),
                pending: pending.clone(),
                ready: ready.clone(),
            },
        );
        drop(writers);
        let channel = Channel {
            queue,
            outgoing,
            pending,
        };
        tokio::spawn(connect(self.clone(), peer, local, channel, ready));
    }

    pub fn is_ready(&self, peer: SocketAddr) -> bool {
        self.writers
            .lock()
            .unwrap()
            .get(&peer)
            .is_some_and(|writer| writer.ready.load(Ordering::Relaxed))
    }

    fn len(&self) -> usize {
        self.writers.lock().unwrap().len()
    }

    fn insert(&self, peer: SocketAddr, queue: mpsc::Sender<Vec<u8>>, pending: Arc<AtomicUsize>) {
        let ready = Arc::new(AtomicBool::new(true));
        self.writers.lock().unwrap().insert(
            peer,
            Writer {
                queue,
                pending,
                ready,
            },
        );
    }

    /// Forgets the connection that `queue` feeds — not a newer one to the
    /// same peer that replaced it.
    fn remove(&self, peer: SocketAddr, queue: &mpsc::Sender<Vec<u8>>) {
        let mut writers = self.writers.lock().unwrap();
        if writers
            .get(&peer)
            .is_some_and(|writer| writer.queue.same_channel(queue))
        {
            writers.remove(&peer);
        }
    }
}

/// A connection's write queue: both ends and its byte count.
struct Channel {
    queue: mpsc::Sender<Vec<u8>>,
    outgoing: mpsc::Receiver<Vec<u8>>,
    pending: Arc<AtomicUsize>,
}

/// Opens an outbound connection and serves it like an accepted one.
async fn connect(
    connections: TcpConnections,
    peer: SocketAddr,
    local: Option<IpAddr>,
    channel: Channel,
    ready: Arc<AtomicBool>,
) {
    let attempt = async {
        let socket = if peer.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = local.filter(|ip| ip.is_ipv4() == peer.is_ipv4() && !ip.is_unspecified())
        {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.connect(peer).await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(stream)) => {
            tracing::debug!(%peer, "TCP connection opened");
            ready.store(true, Ordering::Relaxed);
            let _ = connections
                .inbound
                .send(Inbound::Connected { addr: peer })
                .await;
            let _ = stream.set_nodelay(true);
            let shutdown = connections.shutdown.clone();
            let inbound = connections.inbound.clone();
            run(stream, peer, connections, inbound, shutdown, channel, false).await;
        }
        Ok(Err(error)) => {
            connect_failed(&connections, peer, &channel.queue, &error.to_string()).await
        }
        Err(_) => connect_failed(&connections, peer, &channel.queue, "timed out").await,
    }
}

async fn connect_failed(
    connections: &TcpConnections,
    peer: SocketAddr,
    queue: &mpsc::Sender<Vec<u8>>,
    reason: &str,
) {
    tracing::warn!(%peer, %reason, "cannot open a TCP connection");
    connections.remove(peer, queue);
    let _ = connections
        .inbound
        .send(Inbound::ConnectFailed { addr: peer })
        .await;
}

pub async fn accept_loop(
    listener: TcpListener,
    connections: TcpConnections,
    inbound: InboundSender,
    mut shutdown: watch::Receiver<bool>,
) {
    let refusal_log = crate::burst_log::BurstLog::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match connections.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                crate::metrics::tcp_refused(reason);
                if let Some(count) = refusal_log.note() {
                    tracing::warn!(%peer, reason, count, "refusing TCP connections (logged once per 10 s; see switchboard_tcp_refused_total)");
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(
            stream,
            peer,
            connections.clone(),
            inbound.clone(),
            shutdown.clone(),
            slot,
        ));
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    connections: TcpConnections,
    inbound: InboundSender,
    shutdown: watch::Receiver<bool>,
    _slot: AcceptedSlot,
) {
    let (queue, outgoing) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let pending = Arc::new(AtomicUsize::new(0));
    connections.insert(peer, queue.clone(), pending.clone());
    let channel = Channel {
        queue,
        outgoing,
        pending,
    };
    run(stream, peer, connections, inbound, shutdown, channel, true).await;
}

/// Reads and writes one connection until either side ends it.
async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    connections: TcpConnections,
    inbound: InboundSender,
    mut shutdown: watch::Receiver<bool>,
    channel: Channel,
    accepted: bool,
) {
    let limits = connections.limits;
    let Channel {
        queue,
        mut outgoing,
        pending,
    } = channel;
    let (mut reader, mut writer) = stream.into_split();
    let write_task = tokio::spawn(async move {
        while let Some(bytes) = outgoing.recv().await {
            let written = writer.write_all(&bytes).await;
            pending.fetch_sub(bytes.len(), Ordering::Relaxed);
            if written.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });

    let mut decoder = StreamDecoder::new(MAX_MESSAGE);
    let mut buf = vec![0u8; 16 * 1024];
    let tcp_peer = Peer {
        transport: Transport::Tcp,
        addr: peer,
    };
    // A message (and an accepted connection's first one) must arrive
    // whole in time: half a header held open forever is an attack.
    let mut message_since = accepted.then(Instant::now);
    let mut last_activity = Instant::now();
    'connection: loop {
        let idle_deadline = last_activity + limits.idle_timeout;
        let deadline = message_since
            .map(|since| (since + limits.message_timeout).min(idle_deadline))
            .unwrap_or(idle_deadline);
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline.into(), reader.read(&mut buf)) => read,
            _ = shutdown.changed() => break,
        };
        let len = match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Err(_)
                if message_since.is_some_and(|since| since.elapsed() >= limits.message_timeout) =>
            {
                crate::metrics::tcp_refused("message timeout");
                tracing::info!(%peer, timeout_secs = limits.message_timeout.as_secs_f32(), "no whole SIP message in time: closing the TCP connection");
                break;
            }
            Err(_) => {
                tracing::debug!(%peer, "idle TCP connection closed");
                break;
            }
            Ok(Ok(len)) => len,
        };
        last_activity = Instant::now();
        decoder.extend(&buf[..len]);
        while let Some(item) = decoder.next() {
            match item {
                StreamItem::Message(message) => {
                    match inbound.deliver_waiting(message, tcp_peer).await {
                        Delivery::Queued | Delivery::Dropped | Delivery::Limited => {}
                        Delivery::Shed(response) => {
                            let _ = queue.try_send(response);
                        }
                        Delivery::Closed => break 'connection,
                    }
                }
                StreamItem::KeepAlivePing => {
                    let _ = queue.try_send(b"\r\n".to_vec());
                }
                StreamItem::Malformed(error) => {
                    tracing::warn!(%peer, transport = "tcp", reason = %error.reason, "malformed SIP message");
                    if let Some(response) = error
                        .partial
                        .as_ref()
                        .and_then(|p| bad_request(p, &error.reason))
                    {
                        let _ = queue.try_send(response);
                    }
                }
                StreamItem::Fatal(error) => {
                    tracing::warn!(%peer, transport = "tcp", reason = %error.reason, "malformed SIP message; framing lost, closing connection");
                    if let Some(response) = error
                        .partial
                        .as_ref()
                        .and_then(|p| bad_request(p, &error.reason))
                    {
                        let _ = queue.try_send(response);
                    }
                    break 'connection;
                }
            }
        }
        message_since = match (decoder.buffered(), message_since) {
            (0, _) => None,
            (_, Some(since)) => Some(since),
            (_, None) => Some(last_activity),
        };
    }
    connections.remove(peer, &queue);
    drop(queue);
    let _ = write_task.await;
    let _ = inbound.try_send(Inbound::Closed { addr: peer });
}
