//! SIP over UDP: one reader task per socket.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::Inbound;
use crate::sip::framing::{bad_request, parse_datagram, Datagram};
use crate::sip::transaction::{Peer, Transport};

/// Largest datagram we accept; anything bigger is truncated by the kernel
/// and then rejected by the parser.
const MAX_DATAGRAM: usize = 65_535;

pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

pub async fn read_loop(
    socket: Arc<UdpSocket>,
    inbound: mpsc::Sender<Inbound>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buf) => received,
            _ = shutdown.changed() => return,
        };
        let (len, from) = match received {
            Ok(received) => received,
            Err(error) => {
                // ICMP port unreachable from an earlier send surfaces here on
                // Linux; it says nothing about this socket.
                tracing::debug!(%error, "UDP receive error");
                continue;
            }
        };
        let peer = Peer {
            transport: Transport::Udp,
            addr: from,
        };
        match parse_datagram(&buf[..len]) {
            Datagram::KeepAlive => {}
            Datagram::Message(message) => {
                if inbound
                    .try_send(Inbound::Message { message, peer })
                    .is_err()
                {
                    tracing::warn!(peer = %from, "endpoint busy: dropped a SIP datagram");
                }
            }
            Datagram::Malformed(error) => {
                tracing::warn!(peer = %from, transport = "udp", reason = %error.reason, "malformed SIP message");
                if let Some(response) = error
                    .partial
                    .as_ref()
                    .and_then(|p| bad_request(p, &error.reason))
                {
                    let _ = socket.try_send_to(&response, from);
                }
            }
        }
    }
}
