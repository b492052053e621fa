//! SIP over TCP: an accept loop, one reader and one writer task per
//! connection, and a table of live connections for sending responses and
//! in-dialog requests back on the connection the peer opened.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::Inbound;
use crate::sip::framing::{bad_request, StreamDecoder, StreamItem};
use crate::sip::transaction::{Peer, Transport};

/// Largest SIP message accepted on a stream.
const MAX_MESSAGE: usize = 64 * 1024;
/// Messages queued towards one connection; a peer that does not read is
/// disconnected rather than allowed to hold memory.
const WRITE_QUEUE: usize = 256;
/// Connections beyond this are refused at accept.
const MAX_CONNECTIONS: usize = 10_000;
/// A connection with no traffic for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Default)]
pub struct TcpConnections {
    writers: Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>,
}

impl TcpConnections {
    pub fn send(&self, peer: SocketAddr, bytes: Vec<u8>) {
        let writer = self.writers.lock().unwrap().get(&peer).cloned();
        match writer {
            Some(writer) => {
                if writer.try_send(bytes).is_err() {
                    tracing::warn!(%peer, "TCP peer not reading: closing its connection");
                    self.writers.lock().unwrap().remove(&peer);
                }
            }
            None => {
                tracing::warn!(%peer, "no TCP connection to this peer any more; message dropped")
            }
        }
    }

    fn len(&self) -> usize {
        self.writers.lock().unwrap().len()
    }

    fn insert(&self, peer: SocketAddr, writer: mpsc::Sender<Vec<u8>>) {
        self.writers.lock().unwrap().insert(peer, writer);
    }

    fn remove(&self, peer: SocketAddr) {
        self.writers.lock().unwrap().remove(&peer);
    }
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
    mut shutdown: watch::Receiver<bool>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let (queue, mut outgoing) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    connections.insert(peer, queue.clone());
    let write_task = tokio::spawn(async move {
        while let Some(bytes) = outgoing.recv().await {
            if writer.write_all(&bytes).await.is_err() {
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
                        .send(Inbound {
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
    connections.remove(peer);
    drop(queue);
    let _ = write_task.await;
}
