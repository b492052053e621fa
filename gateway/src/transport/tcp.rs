//! SIP over TCP: an accept loop, one reader and one writer task per
//! connection, and a table of live connections for sending responses and
//! in-dialog requests back on the connection the peer opened.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

use super::Inbound;
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
/// Connections beyond this are refused at accept.
const MAX_CONNECTIONS: usize = 10_000;
/// A connection with no traffic for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest wait for an outbound connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Writer {
    queue: mpsc::Sender<Vec<u8>>,
    /// Bytes queued and not yet written.
    pending: Arc<AtomicUsize>,
    /// Set once an outbound connection is open (accepted ones start open).
    ready: Arc<AtomicBool>,
}

/// Every live connection, accepted or opened by us, by peer address.
#[derive(Clone)]
pub struct TcpConnections {
    writers: Arc<Mutex<HashMap<SocketAddr, Writer>>>,
    inbound: mpsc::Sender<Inbound>,
    shutdown: watch::Receiver<bool>,
}

impl TcpConnections {
    pub fn new(inbound: mpsc::Sender<Inbound>, shutdown: watch::Receiver<bool>) -> Self {
        TcpConnections {
            writers: Arc::default(),
            inbound,
            shutdown,
        }
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
        if writers.len() >= MAX_CONNECTIONS {
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
            run(stream, peer, connections, inbound, shutdown, channel).await;
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
    inbound: mpsc::Sender<Inbound>,
    mut shutdown: watch::Receiver<bool>,
) {
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
        if connections.len() >= MAX_CONNECTIONS {
            tracing::warn!(%peer, "too many TCP connections: refusing");
            continue;
        }
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(
            stream,
            peer,
            connections.clone(),
            inbound.clone(),
            shutdown.clone(),
        ));
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    connections: TcpConnections,
    inbound: mpsc::Sender<Inbound>,
    shutdown: watch::Receiver<bool>,
) {
    let (queue, outgoing) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let pending = Arc::new(AtomicUsize::new(0));
    connections.insert(peer, queue.clone(), pending.clone());
    let channel = Channel {
        queue,
        outgoing,
        pending,
    };
    run(stream, peer, connections, inbound, shutdown, channel).await;
}

/// Reads and writes one connection until either side ends it.
async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    connections: TcpConnections,
    inbound: mpsc::Sender<Inbound>,
    mut shutdown: watch::Receiver<bool>,
    channel: Channel,
) {
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
    'connection: loop {
        let read = tokio::select! {
            read = tokio::time::timeout(IDLE_TIMEOUT, reader.read(&mut buf)) => read,
            _ = shutdown.changed() => break,
        };
        let len = match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Err(_) => {
                tracing::debug!(%peer, "idle TCP connection closed");
                break;
            }
            Ok(Ok(len)) => len,
        };
        decoder.extend(&buf[..len]);
        while let Some(item) = decoder.next() {
            match item {
                StreamItem::Message(message) => {
                    let delivered = inbound
                        .send(Inbound::Message {
                            message,
                            peer: tcp_peer,
                        })
                        .await;
                    if delivered.is_err() {
                        break 'connection;
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
    }
    connections.remove(peer, &queue);
    drop(queue);
    let _ = write_task.await;
    let _ = inbound.try_send(Inbound::Closed { addr: peer });
}
