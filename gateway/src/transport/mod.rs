//! Sockets for SIP: the thin async shell that moves bytes between the network
//! and the endpoint task. Parsing happens here, per socket, so a flood of
//! garbage costs the reader task and never the endpoint.

pub mod inbound;
pub mod new_invite;
pub mod source_limit;
pub mod tcp;
pub mod tls;
mod udp;
mod udp_batch;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::ListenAddr;
use crate::sip::message::SipMessage;
use crate::sip::transaction::{Peer, Transport};

pub use inbound::{Delivery, InboundQueues, InboundSender};
pub use tcp::TcpConnections;

/// What the sockets tell the endpoint; messages, by far the most common,
/// travel inline.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Inbound {
    /// A parsed message and who sent it.
    Message {
        message: SipMessage,
        peer: Peer,
        /// When the socket read it: how long it waited tells the endpoint
        /// whether it is keeping up.
        received: std::time::Instant,
    },
    /// An outbound TCP or TLS connection we opened is up.
    Connected { peer: Peer },
    /// An outbound connection could not be opened: what waited for it is
    /// unreachable.
    ConnectFailed { peer: Peer },
    /// A TCP or TLS connection closed.
    Closed { peer: Peer },
}

/// Every bound SIP socket, for sending.
#[derive(Clone)]
pub struct Transports {
    udp: Vec<Arc<tokio::net::UdpSocket>>,
    tcp: TcpConnections,
    tls: TcpConnections,
    local: Vec<(Transport, SocketAddr)>,
}

impl Transports {
    /// Binds every listen address and starts its reader tasks.
    pub async fn bind(
        listen: &[ListenAddr],
        inbound: InboundSender,
        shutdown: watch::Receiver<bool>,
        tcp_limits: tcp::TcpLimits,
        tls: Arc<tls::TlsContext>,
    ) -> std::io::Result<Transports> {
        let mut udp = Vec::new();
        let tcp = TcpConnections::new(inbound.clone(), shutdown.clone(), tcp_limits, None);
        let tls = TcpConnections::new(inbound.clone(), shutdown.clone(), tcp_limits, Some(tls));
        let mut local = Vec::new();
        for entry in listen {
            match entry.transport {
                Transport::Udp => {
                    let socket = Arc::new(udp::bind(entry.addr)?);
                    local.push((Transport::Udp, socket.local_addr()?));
                    tokio::spawn(udp::read_loop(
                        socket.clone(),
                        inbound.clone(),
                        shutdown.clone(),
                    ));
                    udp.push(socket);
                }
                Transport::Tcp | Transport::Tls => {
                    let listener = tokio::net::TcpListener::bind(entry.addr).await?;
                    local.push((entry.transport, listener.local_addr()?));
                    let connections = if entry.transport == Transport::Tls {
                        tls.clone()
                    } else {
                        tcp.clone()
                    };
                    tokio::spawn(tcp::accept_loop(
                        listener,
                        connections,
                        inbound.clone(),
                        shutdown.clone(),
                    ));
                }
            }
        }
        Ok(Transports {
            udp,
            tcp,
            tls,
            local,
        })
    }

    pub fn local_addrs(&self) -> &[(Transport, SocketAddr)] {
        &self.local
    }

    /// The local address to advertise for `peer`'s transport and family.
    pub fn local_for(&self, peer: Peer) -> Option<SocketAddr> {
        let same_family = |addr: &SocketAddr| addr.is_ipv4() == peer.addr.is_ipv4();
        self.local
            .iter()
            .filter(|(transport, _)| *transport == peer.transport)
            .map(|(_, addr)| *addr)
            .find(same_family)
            .or_else(|| self.local.iter().map(|(_, addr)| *addr).find(same_family))
    }

    /// Whether a connection to a TCP or TLS `peer` is open (not just being
    /// opened); always true for UDP.
    pub fn ready(&self, peer: Peer) -> bool {
        match peer.transport {
            Transport::Udp => true,
            Transport::Tcp => self.tcp.is_ready(peer.addr),
            Transport::Tls => self.tls.is_ready(peer.addr),
        }
    }

    /// The verified certificate of the TLS client at `peer`, if it gave one.
    pub fn client_certificate(
        &self,
        peer: Peer,
    ) -> Option<Arc<rustls::pki_types::CertificateDer<'static>>> {
        match peer.transport {
            Transport::Tls => self.tls.client_certificate(peer.addr),
            Transport::Udp | Transport::Tcp => None,
        }
    }

    /// Sends without waiting: a full socket buffer or a vanished TCP
    /// connection loses the message, which SIP retransmission recovers. A
    /// TCP or TLS peer we have no connection to gets one opened (the
    /// message waits for it), with our listening address as its local one.
    pub fn send(&self, peer: Peer, bytes: Vec<u8>) {
        match peer.transport {
            Transport::Udp => {
                let socket = self
                    .udp
                    .iter()
                    .find(|socket| {
                        socket
                            .local_addr()
                            .map(|addr| addr.is_ipv4() == peer.addr.is_ipv4())
                            .unwrap_or(false)
                    })
                    .or_else(|| self.udp.first());
                match socket {
                    Some(socket) => {
                        if let Err(error) = socket.try_send_to(&bytes, peer.addr) {
                            tracing::warn!(peer = %peer.addr, %error, "SIP send over UDP failed");
                        }
                    }
                    None => tracing::warn!(peer = %peer.addr, "no UDP socket to send SIP on"),
                }
            }
            Transport::Tcp | Transport::Tls => {
                let local = self
                    .local
                    .iter()
                    .find(|(t, a)| *t == peer.transport && a.is_ipv4() == peer.addr.is_ipv4())
                    .map(|(_, a)| a.ip());
                let connections = if peer.transport == Transport::Tls {
                    &self.tls
                } else {
                    &self.tcp
                };
                connections.send(peer.addr, bytes, local)
            }
        }
    }
}
