//! SIP over UDP: one reader task per socket.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::inbound::Screened;
use super::udp_batch::{RecvBatch, SendBatch};
use super::{Delivery, InboundSender};
use crate::sip::framing::{bad_request, parse_datagram, Datagram};
use crate::sip::transaction::{Peer, Transport};

/// Kernel buffers asked for on SIP sockets (Linux caps them at
/// net.core.rmem_max / wmem_max, 4 MiB on Debian). The default ~200 KiB
/// overflows within milliseconds at thousands of calls per second, whenever
/// the reader task waits for a worker; every datagram lost there is a
/// retransmission 500 ms later and a call that lives that much longer.
const SOCKET_BUFFER: usize = 4 << 20;

pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Best effort: a smaller buffer than asked for still works.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

pub async fn read_loop(
    socket: Arc<UdpSocket>,
    inbound: InboundSender,
    mut shutdown: watch::Receiver<bool>,
) {
    let fd = socket.as_raw_fd();
    let mut batch = RecvBatch::default();
    let mut answers = SendBatch::default();
    let drop_log = crate::burst_log::BurstLog::default();
    loop {
        // While new calls are refused, what waits in the socket is mostly
        // INVITEs refused here in a microsecond and their ACKs; the BYEs and
        // ACKs of calls in progress queue behind them in arrival order.
        // Reading a batch per system call, and a budget of 128 batches before
        // tokio makes the task yield, gets those to the endpoint's urgent
        // queue in time.
        tokio::select! {
            ready = socket.readable() => {
                if ready.is_err() {
                    return;
                }
            }
            _ = shutdown.changed() => return,
        }
        let count = match socket.try_io(Interest::READABLE, || batch.recv(fd)) {
            Ok(count) => count,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(error) => {
                // ICMP port unreachable from an earlier send surfaces here on
                // Linux; it says nothing about this socket.
                tracing::debug!(%error, "UDP receive error");
                continue;
            }
        };
        if count == 0 {
            continue;
        }
        for (datagram, from) in batch.datagrams() {
            if let Some(answer) = handle(datagram, from, &inbound, &drop_log) {
                answers.push(answer, from);
            }
        }
        if !answers.is_empty() {
            // A full socket buffer drops the answers, as try_send_to did:
            // each answers a request its sender retransmits.
            let _ = socket.try_io(Interest::WRITABLE, || Ok(answers.flush(fd)));
            answers.clear();
        }
    }
}

/// One datagram: screened, parsed and handed to the endpoint. Returns what
/// to send back at once (a refusal or a 400), if anything.
fn handle(
    datagram: &[u8],
    from: SocketAddr,
    inbound: &InboundSender,
    drop_log: &crate::burst_log::BurstLog,
) -> Option<Vec<u8>> {
    if super::inbound::is_refusal_ack(datagram) {
        return None;
    }
    let peer = Peer {
        transport: Transport::Udp,
        addr: from,
    };
    let admitted = match inbound.screen(datagram, peer) {
        Screened::Unread => false,
        Screened::Admitted => true,
        Screened::Refused(response) => return Some(response),
        Screened::Limited => return None,
    };
    match parse_datagram(datagram) {
        Datagram::KeepAlive => None,
        Datagram::Message(message) => match inbound.deliver(message, peer, admitted) {
            Delivery::Queued | Delivery::Closed | Delivery::Limited | Delivery::Absorbed => None,
            Delivery::Shed(response) => Some(response),
            Delivery::Dropped => {
                crate::metrics::sip_shed("dropped");
                if let Some(count) = drop_log.note() {
                    tracing::warn!(peer = %from, count, "endpoint busy: dropped in-dialog SIP datagrams, the senders retransmit (logged once per 10 s; see switchboard_sip_shed_total)");
                }
                None
            }
        },
        Datagram::Malformed(error) => {
            tracing::warn!(peer = %from, transport = "udp", reason = %error.reason, "malformed SIP message");
            error
                .partial
                .as_ref()
                .and_then(|p| bad_request(p, &error.reason))
        }
    }
}
