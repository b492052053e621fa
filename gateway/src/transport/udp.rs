//! SIP over UDP: one reader task per socket.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::inbound::Screened;
use super::{Delivery, InboundSender};
use crate::sip::framing::{bad_request, parse_datagram, Datagram};
use crate::sip::transaction::{Peer, Transport};

/// Largest datagram we accept; anything bigger is truncated by the kernel
/// and then rejected by the parser.
const MAX_DATAGRAM: usize = 65_535;

/// Kernel buffers asked for on SIP sockets (Linux caps them at
/// net.core.rmem_max / wmem_max, 4 MiB on Debian). The default ~200 KiB
/// overflows within milliseconds at thousands of calls per second, whenever
/// the reader task waits for a worker; every datagram lost there is a
/// retransmission 500 ms later and a call that lives that much longer.
const SOCKET_BUFFER: usize = 4 << 20;

/// Datagrams read in a row, while refusing, before the reader lets the
/// other tasks run.
const DRAIN_BATCH: usize = 1024;

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
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let drop_log = crate::burst_log::BurstLog::default();
    let mut drained = 0usize;
    loop {
        // While new calls are being refused, what waits in the socket is
        // mostly INVITEs refused here in a microsecond and their ACKs; the
        // BYEs and ACKs of calls in progress queue behind them in arrival
        // order. Read on without giving the worker back after every 128
        // datagrams (tokio's budget), so those reach the endpoint's urgent
        // queue in time; below capacity, read as any task would.
        let ready = if inbound.refusing_new_calls() {
            socket.try_recv_from(&mut buf).ok()
        } else {
            None
        };
        let received = match ready {
            Some(received) => {
                drained += 1;
                if drained == DRAIN_BATCH {
                    drained = 0;
                    tokio::task::yield_now().await;
                    if shutdown.has_changed().unwrap_or(true) {
                        return;
                    }
                }
                Ok(received)
            }
            None => {
                drained = 0;
                tokio::select! {
                    received = socket.recv_from(&mut buf) => received,
                    _ = shutdown.changed() => return,
                }
            }
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
        if super::inbound::is_refusal_ack(&buf[..len]) {
            continue;
        }
        let peer = Peer {
            transport: Transport::Udp,
            addr: from,
        };
        let admitted = match inbound.screen(&buf[..len], peer) {
            Screened::Unread => false,
            Screened::Admitted => true,
            Screened::Refused(response) => {
                let _ = socket.try_send_to(&response, from);
                continue;
            }
            Screened::Limited => continue,
        };
        match parse_datagram(&buf[..len]) {
            Datagram::KeepAlive => {}
            Datagram::Message(message) => match inbound.deliver(message, peer, admitted) {
                Delivery::Queued | Delivery::Closed | Delivery::Limited | Delivery::Absorbed => {}
                Delivery::Shed(response) => {
                    let _ = socket.try_send_to(&response, from);
                }
                Delivery::Dropped => {
                    crate::metrics::sip_shed("dropped");
                    if let Some(count) = drop_log.note() {
                        tracing::warn!(peer = %from, count, "endpoint busy: dropped in-dialog SIP datagrams, the senders retransmit (logged once per 10 s; see switchboard_sip_shed_total)");
                    }
                }
            },
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
