//! RTP port allocation from the configured range: even ports (RTCP takes the
//! odd one above), tried round-robin so a just-freed port is not reused at
//! once while stray packets of the old call may still arrive.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::net::UdpSocket;

#[derive(Debug)]
pub struct RtpPorts {
    low: u16,
    count: u32,
    cursor: AtomicU32,
}

impl RtpPorts {
    pub fn new(range: RangeInclusive<u16>) -> RtpPorts {
        let low = *range.start() + (*range.start() % 2);
        let count = (u32::from(*range.end()) - u32::from(low)) / 2 + 1;
        RtpPorts {
            low,
            count,
            cursor: AtomicU32::new(rand::random::<u32>() % count.max(1)),
        }
    }

    /// Binds the next free even port for RTP and the odd one above it for
    /// RTCP (RFC 3550 §11); the sockets are released when dropped, which is
    /// how a call gives its ports back.
    pub fn bind(&self, ip: IpAddr) -> std::io::Result<(UdpSocket, UdpSocket)> {
        let attempts = self.count.min(256);
        let mut last_error = None;
        for _ in 0..attempts {
            let slot = self.cursor.fetch_add(1, Ordering::Relaxed) % self.count;
            let port = self.low as u32 + slot * 2;
            if port >= u16::MAX as u32 {
                continue;
            }
            let pair =
                std::net::UdpSocket::bind(SocketAddr::new(ip, port as u16)).and_then(|rtp| {
                    let rtcp = std::net::UdpSocket::bind(SocketAddr::new(ip, port as u16 + 1))?;
                    Ok((rtp, rtcp))
                });
            match pair {
                Ok((rtp, rtcp)) => {
                    rtp.set_nonblocking(true)?;
                    rtcp.set_nonblocking(true)?;
                    return Ok((UdpSocket::from_std(rtp)?, UdpSocket::from_std(rtcp)?));
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::AddrInUse, "RTP port range exhausted")
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hands_out_even_ports_in_range_and_reuses_after_drop() {
        let ports = RtpPorts::new(41001..=41010);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..5 {
            let (socket, rtcp) = ports.bind(ip).unwrap();
            let port = socket.local_addr().unwrap().port();
            assert_eq!(rtcp.local_addr().unwrap().port(), port + 1);
            assert!(
                port.is_multiple_of(2) && (41002..=41010).contains(&port),
                "{port}"
            );
            held.push((socket, rtcp));
        }
        assert!(
            ports.bind(ip).is_err(),
            "range of 5 even ports is exhausted"
        );
        held.pop();
        assert!(ports.bind(ip).is_ok(), "a dropped socket frees its port");
    }
}
