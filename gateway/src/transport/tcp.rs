//! SIP over TCP and TLS: an accept loop, one reader and one writer task per
//! connection, and a table of live connections for sending responses and
//! in-dialog requests back on the connection the peer opened. A table with
//! a TLS context runs every connection, accepted or opened, through TLS.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

use super::tls::TlsContext;
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
    /// The verified certificate an accepted TLS client presented.
    client_cert: Option<Arc<CertificateDer<'static>>>,
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
    /// Set for the TLS table.
    tls: Option<Arc<TlsContext>>,
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
    pub fn new(
        inbound: InboundSender,
        shutdown: watch::Receiver<bool>,
        limits: TcpLimits,
        tls: Option<Arc<TlsContext>>,
    ) -> Self {
        TcpConnections {
            writers: Arc::default(),
            accepted: Arc::default(),
            limits,
            inbound,
            shutdown,
            tls,
        }
    }

    fn transport(&self) -> Transport {
        if self.tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        }
    }

    fn peer(&self, addr: SocketAddr) -> Peer {
        Peer {
            transport: self.transport(),
            addr,
        }
    }

    /// The verified certificate the TLS client at `addr` presented.
    pub fn client_certificate(&self, addr: SocketAddr) -> Option<Arc<CertificateDer<'static>>> {
        self.writers
            .lock()
            .unwrap()
            .get(&addr)
            .and_then(|writer| writer.client_cert.clone())
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
            let _ = self.inbound.try_send(Inbound::ConnectFailed {
                peer: self.peer(peer),
            });
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
                client_cert: None,
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

    fn insert(
        &self,
        peer: SocketAddr,
        queue: mpsc::Sender<Vec<u8>>,
        pending: Arc<AtomicUsize>,
        client_cert: Option<Arc<CertificateDer<'static>>>,
    ) {
        let ready = Arc::new(AtomicBool::new(true));
        self.writers.lock().unwrap().insert(
            peer,
            Writer {
                queue,
                pending,
                ready,
                client_cert,
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

/// Opens an outbound connection (TLS on the TLS table, the server's
/// certificate verified) and serves it like an accepted one.
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
        let stream = socket.connect(peer).await?;
        let _ = stream.set_nodelay(true);
        match &connections.tls {
            None => Ok(Stream::Plain(stream)),
            Some(tls) => {
                let name = tls.server_name(peer);
                let stream = tls.connector().connect(name, stream).await?;
                Ok::<_, std::io::Error>(Stream::Tls(Box::new(stream.into())))
            }
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(stream)) => {
            tracing::debug!(%peer, transport = %connections.transport(), "connection opened");
            ready.store(true, Ordering::Relaxed);
            let _ = connections
                .inbound
                .send(Inbound::Connected {
                    peer: connections.peer(peer),
                })
                .await;
            let shutdown = connections.shutdown.clone();
            let inbound = connections.inbound.clone();
            stream
                .run(peer, connections, inbound, shutdown, channel, false)
                .await;
        }
        Ok(Err(error)) => {
            connect_failed(&connections, peer, &channel.queue, &error.to_string()).await
        }
        Err(_) => connect_failed(&connections, peer, &channel.queue, "timed out").await,
    }
}

/// A connection, plain or TLS, before it is split into its two halves.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Stream {
    async fn run(
        self,
        peer: SocketAddr,
        connections: TcpConnections,
        inbound: InboundSender,
        shutdown: watch::Receiver<bool>,
        channel: Channel,
        accepted: bool,
    ) {
        match self {
            Stream::Plain(stream) => {
                let (reader, writer) = stream.into_split();
                run(
                    reader,
                    writer,
                    peer,
                    connections,
                    inbound,
                    shutdown,
                    channel,
                    accepted,
                )
                .await
            }
            Stream::Tls(stream) => {
                let (reader, writer) = tokio::io::split(*stream);
                run(
                    reader,
                    writer,
                    peer,
                    connections,
                    inbound,
                    shutdown,
                    channel,
                    accepted,
                )
                .await
            }
        }
    }
}

async fn connect_failed(
    connections: &TcpConnections,
    peer: SocketAddr,
    queue: &mpsc::Sender<Vec<u8>>,
    reason: &str,
) {
    tracing::warn!(%peer, transport = %connections.transport(), %reason, "cannot open a connection");
    connections.remove(peer, queue);
    let _ = connections
        .inbound
        .send(Inbound::ConnectFailed {
            peer: connections.peer(peer),
        })
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
    let (stream, client_cert) = match &connections.tls {
        None => (Stream::Plain(stream), None),
        Some(tls) => {
            let Some(acceptor) = tls.acceptor() else {
                return;
            };
            // The handshake counts as the first message: a client that
            // opens a connection and stalls is closed as soon.
            let timeout = connections.limits.message_timeout;
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let client_cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|leaf| Arc::new(leaf.clone().into_owned()));
                    (Stream::Tls(Box::new(stream.into())), client_cert)
                }
                Ok(Err(error)) => {
                    crate::metrics::tcp_refused("tls handshake");
                    tracing::info!(%peer, %error, "TLS handshake failed: closing the connection");
                    return;
                }
                Err(_) => {
                    crate::metrics::tcp_refused("tls handshake timeout");
                    tracing::info!(%peer, timeout_secs = timeout.as_secs_f32(), "no TLS handshake in time: closing the connection");
                    return;
                }
            }
        }
    };
    let (queue, outgoing) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let pending = Arc::new(AtomicUsize::new(0));
    connections.insert(peer, queue.clone(), pending.clone(), client_cert);
    let channel = Channel {
        queue,
        outgoing,
        pending,
    };
    stream
        .run(peer, connections, inbound, shutdown, channel, true)
        .await;
}

/// Reads and writes one connection until either side ends it.
#[allow(clippy::too_many_arguments)]
async fn run<R, W>(
    mut reader: R,
    mut writer: W,
    peer: SocketAddr,
    connections: TcpConnections,
    inbound: InboundSender,
    mut shutdown: watch::Receiver<bool>,
    channel: Channel,
    accepted: bool,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let limits = connections.limits;
    let Channel {
        queue,
        mut outgoing,
        pending,
    } = channel;
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
    let stream_peer = connections.peer(peer);
    let transport = connections.transport();
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
                tracing::info!(%peer, timeout_secs = limits.message_timeout.as_secs_f32(), "no whole SIP message in time: closing the connection");
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
                    match inbound.deliver_waiting(message, stream_peer).await {
                        Delivery::Queued
                        | Delivery::Dropped
                        | Delivery::Limited
                        | Delivery::Absorbed => {}
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
                    tracing::warn!(%peer, %transport, reason = %error.reason, "malformed SIP message");
                    if let Some(response) = error
                        .partial
                        .as_ref()
                        .and_then(|p| bad_request(p, &error.reason))
                    {
                        let _ = queue.try_send(response);
                    }
                }
                StreamItem::Fatal(error) => {
                    tracing::warn!(%peer, %transport, reason = %error.reason, "malformed SIP message; framing lost, closing connection");
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
    let _ = inbound.try_send(Inbound::Closed { peer: stream_peer });
}
