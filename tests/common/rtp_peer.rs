//! The caller's media end: a UDP socket on loopback that streams PCMU at
//! real-time pace and records every RTP packet that comes back.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use switchboard_media::g711::{ulaw_decode, ulaw_encode};

/// The SSRC of what [`RtpPeer::stream_pcmu`] sends; its sequence starts at 1000.
pub const CALLER_SSRC: u32 = 0x5157_1c4e;

pub struct RtpPeer {
    socket: Arc<UdpSocket>,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub from: SocketAddr,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub marker: bool,
    pub payload: Vec<u8>,
}

impl RtpPeer {
    /// A peer whose RTP port + 1 is free, with its RTCP socket bound there
    /// (200 ms read timeout).
    pub fn bind_with_rtcp() -> (RtpPeer, UdpSocket) {
        for _ in 0..50 {
            let peer = RtpPeer::bind();
            if let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", peer.port() + 1)) {
                rtcp.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                return (peer, rtcp);
            }
        }
        panic!("no RTP/RTCP port pair free on loopback");
    }

    pub fn bind() -> RtpPeer {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (socket, received, stop) = (socket.clone(), received.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if len < 12 || buf[0] >> 6 != 2 {
                        continue;
                    }
                    let payload_type = buf[1] & 0x7f;
                    if (72..=76).contains(&payload_type) {
                        continue; // RTCP
                    }
                    received.lock().unwrap().push(Received {
                        at: Instant::now(),
                        from,
                        payload_type,
                        sequence: u16::from_be_bytes([buf[2], buf[3]]),
                        timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
                        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
                        marker: buf[1] & 0x80 != 0,
                        payload: buf[12..len].to_vec(),
                    });
                }
            })
        };
        RtpPeer {
            socket,
            received,
            stop,
            reader: Some(reader),
        }
    }

    pub fn port(&self) -> u16 {
        self.socket.local_addr().unwrap().port()
    }

    /// Sends `samples` as 20 ms PCMU packets to `target`, paced in real time.
    pub fn stream_pcmu(&self, target: SocketAddr, samples: &[i16]) {
        self.stream_pcmu_from(target, samples, 0);
    }

    /// Like [`RtpPeer::stream_pcmu`], numbering packets from `first` on, so
    /// a second stream continues the first's sequence and timestamps.
    pub fn stream_pcmu_from(&self, target: SocketAddr, samples: &[i16], first: usize) {
        let ssrc = CALLER_SSRC;
        let start = Instant::now();
        for (offset, chunk) in samples.chunks(160).enumerate() {
            let index = first + offset;
            let mut packet = Vec::with_capacity(172);
            packet.push(0x80);
            packet.push(if offset == 0 { 0x80 } else { 0 });
            packet.extend_from_slice(&(1000u16.wrapping_add(index as u16)).to_be_bytes());
            packet.extend_from_slice(&(160 * index as u32).to_be_bytes());
            packet.extend_from_slice(&u32::to_be_bytes(ssrc));
            packet.extend(chunk.iter().map(|s| ulaw_encode(*s)));
            let due = start + Duration::from_millis(20 * offset as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            self.socket.send_to(&packet, target).unwrap();
        }
    }

    /// Presses one key as RFC 4733 events of payload type `pt` (`event`
    /// 0-9, 10 for `*`, 11 for `#`): three packets of progress, then the
    /// end packet three times, 20 ms apart, from sequence `sequence` on.
    pub fn press(&self, target: SocketAddr, pt: u8, event: u8, sequence: u16, timestamp: u32) {
        for n in 0..6u16 {
            let end = n >= 3;
            let duration = 160 * (n.min(3) + 1);
            let mut packet = Vec::with_capacity(16);
            packet.push(0x80);
            packet.push(pt | if n == 0 { 0x80 } else { 0 });
            packet.extend_from_slice(&sequence.wrapping_add(n).to_be_bytes());
            packet.extend_from_slice(&timestamp.to_be_bytes());
            packet.extend_from_slice(&CALLER_SSRC.to_be_bytes());
            packet.push(event);
            packet.push(if end { 0x80 | 10 } else { 10 });
            packet.extend_from_slice(&duration.to_be_bytes());
            self.socket.send_to(&packet, target).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one datagram from the peer's RTP socket.
    pub fn send_raw(&self, datagram: &[u8], target: SocketAddr) {
        let _ = self.socket.send_to(datagram, target);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Everything received so far, decoded from μ-law in arrival order.
    pub fn received_pcmu(&self) -> Vec<i16> {
        self.received()
            .iter()
            .filter(|packet| packet.payload_type == 0)
            .flat_map(|packet| packet.payload.iter().map(|b| ulaw_decode(*b)))
            .collect()
    }

    /// Waits for the first packet from the gateway and returns its source.
    pub fn wait_first_packet(&self, timeout: Duration) -> Option<SocketAddr> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(first) = self.received.lock().unwrap().first() {
                return Some(first.from);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for RtpPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
