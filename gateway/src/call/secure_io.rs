//! The socket edge of a media leg: what goes out is protected with SRTP
//! when the leg agreed keys (SDES), what comes in is unprotected before
//! anything reads it. Plain legs pass through untouched.

use std::net::SocketAddr;

use switchboard_media::srtp::SrtpContext;
use tokio::net::UdpSocket;

/// Sends one RTP packet; a full socket buffer loses it, as RTP may.
pub(super) fn send_rtp(
    socket: &UdpSocket,
    srtp: Option<&mut SrtpContext>,
    packet: &[u8],
    to: SocketAddr,
) {
    let wire = match srtp {
        None => Some(packet),
        Some(srtp) => srtp.protect_rtp(packet),
    };
    if let Some(wire) = wire {
        let _ = socket.try_send_to(wire, to);
    }
}

/// Sends one RTCP compound packet.
pub(super) fn send_rtcp(
    socket: &UdpSocket,
    srtp: Option<&mut SrtpContext>,
    packet: &[u8],
    to: SocketAddr,
) {
    let wire = match srtp {
        None => Some(packet),
        Some(srtp) => srtp.protect_rtcp(packet),
    };
    if let Some(wire) = wire {
        let _ = socket.try_send_to(wire, to);
    }
}

/// A received datagram made plain in place: its length, or `None` when it
/// fails authentication (forged, replayed, or plain RTP on an SRTP leg),
/// which drops it.
pub(super) fn receive(srtp: Option<&mut SrtpContext>, datagram: &mut [u8]) -> Option<usize> {
    match srtp {
        None => Some(datagram.len()),
        Some(srtp) => srtp.unprotect(datagram),
    }
}
