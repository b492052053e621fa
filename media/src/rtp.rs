//! RTP packet parsing and writing (RFC 3550), zero-copy and allocation-free.
//!
//! The parser runs on every datagram that reaches an RTP port, including
//! hostile ones, so it validates every length before slicing and never panics.

/// Size of the fixed RTP header (no CSRCs, no extension).
pub const RTP_HEADER_LEN: usize = 12;

/// Why a datagram is not a usable RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("packet shorter than its RTP header ({0} bytes)")]
    TooShort(usize),
    #[error("unsupported RTP version {0}")]
    BadVersion(u8),
    #[error("CSRC list or header extension runs past the end of the packet")]
    Truncated,
    #[error("invalid padding length {0}")]
    BadPadding(u8),
}

/// A parsed RTP packet borrowing its payload from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// Always 2: other versions are rejected by [`RtpPacket::parse`].
    pub version: u8,
    pub padding: bool,
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Payload with CSRCs, header extension and padding removed.
    pub payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    /// Parses one RTP packet. CSRCs and header extensions are skipped because
    /// a point-to-point gateway has no use for them; padding is stripped.
    pub fn parse(buf: &'a [u8]) -> Result<RtpPacket<'a>, RtpError> {
        if buf.len() < RTP_HEADER_LEN {
            return Err(RtpError::TooShort(buf.len()));
        }
        let version = buf[0] >> 6;
        if version != 2 {
            return Err(RtpError::BadVersion(version));
        }
        let padding = buf[0] & 0x20 != 0;
        let extension = buf[0] & 0x10 != 0;
        let csrc_count = (buf[0] & 0x0f) as usize;

        let mut offset = RTP_HEADER_LEN + 4 * csrc_count;
        if extension {
            let ext = buf.get(offset..offset + 4).ok_or(RtpError::Truncated)?;
            let words = u16::from_be_bytes([ext[2], ext[3]]) as usize;
            offset += 4 + 4 * words;
        }
        if offset > buf.len() {
            return Err(RtpError::Truncated);
        }

        let mut end = buf.len();
        if padding {
            let pad = buf[end - 1];
            // RFC 3550 5.1: the count includes itself, so zero is invalid.
            if pad == 0 || pad as usize > end - offset {
                return Err(RtpError::BadPadding(pad));
            }
            end -= pad as usize;
        }

        Ok(RtpPacket {
            version,
            padding,
            marker: buf[1] & 0x80 != 0,
            payload_type: buf[1] & 0x7f,
            sequence: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: &buf[offset..end],
        })
    }
}

/// True when a datagram on a shared RTP/RTCP port is RTCP (RFC 5761 section 4).
///
/// RTCP packet types occupy 192..=223 in the second byte; RFC 5761 reserves
/// the matching RTP payload types (64..=95 with the marker set), so the whole
/// range is treated as RTCP, which covers SR/RR/SDES/BYE/APP (200..=204) as
/// well as feedback and XR packets.
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 8 && buf[0] >> 6 == 2 && (192..=223).contains(&buf[1])
}

/// Writes a 12-byte header plus `payload` into `buf`. Returns the number of
/// bytes written, or 0 when `buf` is too small (nothing is written then).
pub fn write_rtp(
    buf: &mut [u8],
    marker: bool,
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    payload: &[u8],
) -> usize {
    let total = RTP_HEADER_LEN + payload.len();
    if buf.len() < total {
        return 0;
    }
    buf[0] = 0x80;
    buf[1] = (payload_type & 0x7f) | if marker { 0x80 } else { 0 };
    buf[2..4].copy_from_slice(&sequence.to_be_bytes());
    buf[4..8].copy_from_slice(&timestamp.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    buf[RTP_HEADER_LEN..total].copy_from_slice(payload);
    total
}

/// Sequence and timestamp bookkeeping for one outgoing RTP stream.
#[derive(Debug, Clone)]
pub struct RtpSender {
    payload_type: u8,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
}

impl RtpSender {
    pub fn new(payload_type: u8, ssrc: u32, initial_sequence: u16, initial_timestamp: u32) -> Self {
        Self {
            payload_type,
            ssrc,
            sequence: initial_sequence,
            timestamp: initial_timestamp,
        }
    }

    /// Random SSRC, sequence and timestamp, as RFC 3550 asks, so that
    /// known-plaintext attacks and SSRC collisions are unlikely.
    pub fn random(payload_type: u8) -> Self {
        Self::new(payload_type, rand::random(), rand::random(), rand::random())
    }

    /// Writes the next packet into `buf` and advances the stream by one
    /// packet and `samples` timestamp units. Returns bytes written; 0 means
    /// `buf` was too small, and then the stream does not advance.
    pub fn packet(&mut self, payload: &[u8], samples: u32, marker: bool, buf: &mut [u8]) -> usize {
        let n = write_rtp(
            buf,
            marker,
            self.payload_type,
            self.sequence,
            self.timestamp,
            self.ssrc,
            payload,
        );
        if n > 0 {
            self.sequence = self.sequence.wrapping_add(1);
            self.timestamp = self.timestamp.wrapping_add(samples);
        }
        n
    }

    /// Writes a packet of another payload type at a given timestamp (an RFC
    /// 4733 event keeps its start timestamp in every packet); advances the
    /// sequence only, so the audio clock goes on with [`RtpSender::skip`].
    pub fn packet_at(
        &mut self,
        payload_type: u8,
        timestamp: u32,
        payload: &[u8],
        marker: bool,
        buf: &mut [u8],
    ) -> usize {
        let n = write_rtp(
            buf,
            marker,
            payload_type,
            self.sequence,
            timestamp,
            self.ssrc,
            payload,
        );
        if n > 0 {
            self.sequence = self.sequence.wrapping_add(1);
        }
        n
    }

    /// Carries on from where another sender of the same stream left off
    /// (a relay that spoke for us while a call was bridged).
    pub fn resume_at(&mut self, sequence: u16, timestamp: u32) {
        self.sequence = sequence;
        self.timestamp = timestamp;
    }

    /// Lets time pass without sending (silence suppression): the receiver
    /// sees a timestamp jump with contiguous sequence numbers.
    pub fn skip(&mut self, samples: u32) {
        self.timestamp = self.timestamp.wrapping_add(samples);
    }

    pub fn payload_type(&self) -> u8 {
        self.payload_type
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Sequence number the next packet will carry.
    pub fn sequence(&self) -> u16 {
        self.sequence
    }

    /// Timestamp the next packet will carry.
    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn write_then_parse_round_trips() {
        let mut buf = [0u8; 200];
        let payload = [0xffu8; 160];
        let n = write_rtp(&mut buf, true, 8, 65535, 0xdead_beef, 0x1234_5678, &payload);
        assert_eq!(n, 172);
        let p = RtpPacket::parse(&buf[..n]).unwrap();
        assert_eq!(p.version, 2);
        assert!(p.marker);
        assert!(!p.padding);
        assert_eq!(p.payload_type, 8);
        assert_eq!(p.sequence, 65535);
        assert_eq!(p.timestamp, 0xdead_beef);
        assert_eq!(p.ssrc, 0x1234_5678);
        assert_eq!(p.payload, &payload[..]);
    }

    #[test]
    fn write_refuses_small_buffer() {
        let mut buf = [0u8; 20];
        assert_eq!(write_rtp(&mut buf, false, 0, 1, 2, 3, &[0; 9]), 0);
        assert_eq!(buf, [0u8; 20]);
        assert_eq!(write_rtp(&mut buf, false, 0, 1, 2, 3, &[0; 8]), 20);
    }

    #[test]
    fn parse_skips_csrcs_extension_and_padding() {
        // V=2, P=1, X=1, CC=2
        let mut pkt = vec![
            0x80 | 0x20 | 0x10 | 0x02,
            0x00,
            0,
            7,
            0,
            0,
            0,
            160,
            0,
            0,
            0,
            9,
        ];
        pkt.extend_from_slice(&[1, 1, 1, 1, 2, 2, 2, 2]); // two CSRCs
        pkt.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]); // one-word extension
        pkt.extend_from_slice(&[10, 20, 30]); // payload
        pkt.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let p = RtpPacket::parse(&pkt).unwrap();
        assert!(p.padding);
        assert_eq!(p.sequence, 7);
        assert_eq!(p.timestamp, 160);
        assert_eq!(p.ssrc, 9);
        assert_eq!(p.payload, &[10, 20, 30]);
    }

    #[test]
    fn parse_rejects_bad_input() {
        assert_eq!(RtpPacket::parse(&[0x80; 11]), Err(RtpError::TooShort(11)));
        let mut hdr = [0u8; 12];
        hdr[0] = 0x40;
        assert_eq!(RtpPacket::parse(&hdr), Err(RtpError::BadVersion(1)));
        hdr[0] = 0x81; // one CSRC missing
        assert_eq!(RtpPacket::parse(&hdr), Err(RtpError::Truncated));
        hdr[0] = 0x90; // extension header missing
        assert_eq!(RtpPacket::parse(&hdr), Err(RtpError::Truncated));
        let mut padded = [0u8; 14];
        padded[0] = 0xa0;
        padded[13] = 0;
        assert_eq!(RtpPacket::parse(&padded), Err(RtpError::BadPadding(0)));
        padded[13] = 3;
        assert_eq!(RtpPacket::parse(&padded), Err(RtpError::BadPadding(3)));
        padded[13] = 2;
        assert_eq!(RtpPacket::parse(&padded).unwrap().payload, &[] as &[u8]);
    }

    #[test]
    fn parse_never_panics_on_random_or_truncated_input() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut buf = [0u8; 64];
        let mut ok = 0;
        for _ in 0..50_000 {
            rng.fill(&mut buf[..]);
            // Bias towards version 2 so the deeper paths get exercised.
            if rng.random_bool(0.8) {
                buf[0] = (buf[0] & 0x3f) | 0x80;
            }
            let len = rng.random_range(0..=buf.len());
            if let Ok(p) = RtpPacket::parse(&buf[..len]) {
                assert!(p.payload.len() + RTP_HEADER_LEN <= len);
                ok += 1;
            }
            let _ = is_rtcp(&buf[..len]);
        }
        assert!(ok > 1000, "only {ok} random packets parsed");
        let mut full = [0u8; 40];
        let n = write_rtp(&mut full, false, 0, 1, 2, 3, &[5; 28]);
        for len in 0..n {
            let _ = RtpPacket::parse(&full[..len]);
        }
    }

    #[test]
    fn rtcp_demux() {
        let rr = [0x81u8, 201, 0, 7, 0, 0, 0, 1];
        assert!(is_rtcp(&rr));
        let sr = [0x80u8, 200, 0, 6, 0, 0, 0, 1];
        assert!(is_rtcp(&sr));
        let mut rtp = [0u8; 172];
        write_rtp(&mut rtp, true, 0, 1, 2, 3, &[0; 160]);
        assert!(!is_rtcp(&rtp));
        write_rtp(&mut rtp, true, 101, 1, 2, 3, &[0; 160]);
        assert_eq!(rtp[1], 0x80 | 101);
        assert!(!is_rtcp(&rtp));
        assert!(!is_rtcp(&rr[..4]));
    }

    #[test]
    fn sender_advances_and_wraps() {
        let mut s = RtpSender::new(0, 42, 65534, u32::MAX - 159);
        let mut buf = [0u8; 172];
        let payload = [0xffu8; 160];
        assert_eq!(s.packet(&payload, 160, true, &mut buf), 172);
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(
            (p.sequence, p.timestamp, p.marker),
            (65534, u32::MAX - 159, true)
        );
        assert_eq!(s.packet(&payload, 160, false, &mut buf), 172);
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!((p.sequence, p.timestamp), (65535, 0));
        s.skip(800);
        assert_eq!(s.packet(&payload, 160, false, &mut buf), 172);
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!((p.sequence, p.timestamp), (0, 960));
        assert_eq!((s.sequence(), s.timestamp(), s.ssrc()), (1, 1120, 42));
        // A failed write leaves the stream where it was.
        assert_eq!(s.packet(&payload, 160, false, &mut buf[..100]), 0);
        assert_eq!(s.sequence(), 1);
        let r = RtpSender::random(8);
        assert_eq!(r.payload_type(), 8);
    }
}
