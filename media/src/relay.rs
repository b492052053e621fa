//! Relaying RTP between two calls' legs without decoding (a B2BUA bridge
//! whose legs agreed on the same codec): each packet's header is rewritten
//! in place so the receiver sees one continuous stream from us — our SSRC,
//! sequence numbers and timestamps carrying on from what we sent before the
//! bridge, whatever the far side's stream does (a new SSRC after a transfer
//! or a re-INVITE is folded in without a jump). Payload types are mapped
//! between the two legs' numbering; anything unmapped is dropped.
//! No allocation per packet.

use std::time::Instant;

use crate::rtp::RTP_HEADER_LEN;

/// Payload types one way: `(theirs, ours)`; at most a handful.
const MAX_MAPPINGS: usize = 4;

#[derive(Debug, Clone)]
pub struct RtpRewriter {
    ssrc: u32,
    /// The sequence number our next packet carries.
    next_sequence: u16,
    /// The timestamp of our last packet, and when it went out.
    last_timestamp: u32,
    last_sent: Option<Instant>,
    /// RTP clock of the relayed stream, to carry time across a switch.
    clock_rate: u32,
    /// Timestamp units of one packet, the least a switch may advance.
    packet_units: u32,
    source: Option<u32>,
    sequence_offset: u16,
    timestamp_offset: u32,
    mappings: [(u8, u8); MAX_MAPPINGS],
    mapping_count: usize,
    relayed: u64,
    dropped: u64,
}

/// What to do with a packet after [`RtpRewriter::rewrite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewritten {
    /// Send it; `payload_type` is the (mapped) one it now carries.
    Send { payload_type: u8 },
    /// Not RTP, or a payload type the other leg did not agree to.
    Drop,
}

impl RtpRewriter {
    /// A rewriter that continues the stream whose next packet would carry
    /// `next_sequence` and whose clock stands at `next_timestamp`.
    pub fn continuing(
        ssrc: u32,
        next_sequence: u16,
        next_timestamp: u32,
        clock_rate: u32,
        packet_units: u32,
    ) -> Self {
        RtpRewriter {
            ssrc,
            next_sequence,
            last_timestamp: next_timestamp.wrapping_sub(packet_units),
            last_sent: None,
            clock_rate,
            packet_units,
            source: None,
            sequence_offset: 0,
            timestamp_offset: 0,
            mappings: [(0, 0); MAX_MAPPINGS],
            mapping_count: 0,
            relayed: 0,
            dropped: 0,
        }
    }

    /// A new stream with random SSRC, sequence and timestamp (RFC 3550).
    pub fn random(clock_rate: u32, packet_units: u32) -> Self {
        Self::continuing(
            rand::random(),
            rand::random(),
            rand::random(),
            clock_rate,
            packet_units,
        )
    }

    /// Relays payload type `theirs` as `ours`.
    pub fn map(&mut self, theirs: u8, ours: u8) -> &mut Self {
        if self.mapping_count < MAX_MAPPINGS {
            self.mappings[self.mapping_count] = (theirs, ours);
            self.mapping_count += 1;
        }
        self
    }

    fn mapped(&self, theirs: u8) -> Option<u8> {
        self.mappings[..self.mapping_count]
            .iter()
            .find(|(from, _)| *from == theirs)
            .map(|(_, to)| *to)
    }

    /// Rewrites `packet` in place. A new source SSRC is spliced on so that
    /// our sequence goes on by one and our clock by the time that passed.
    pub fn rewrite(&mut self, packet: &mut [u8], now: Instant) -> Rewritten {
        if packet.len() < RTP_HEADER_LEN || packet[0] >> 6 != 2 {
            self.dropped += 1;
            return Rewritten::Drop;
        }
        let their_pt = packet[1] & 0x7f;
        let Some(payload_type) = self.mapped(their_pt) else {
            self.dropped += 1;
            return Rewritten::Drop;
        };
        let sequence = u16::from_be_bytes([packet[2], packet[3]]);
        let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let source = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let mut marker = packet[1] & 0x80 != 0;
        if self.source != Some(source) {
            self.source = Some(source);
            let elapsed_units = match self.last_sent {
                Some(at) => {
                    let elapsed = now.saturating_duration_since(at);
                    (elapsed.as_micros() as u64 * self.clock_rate as u64 / 1_000_000) as u32
                }
                None => 0,
            };
            let out_timestamp = self
                .last_timestamp
                .wrapping_add(elapsed_units.max(self.packet_units));
            self.sequence_offset = self.next_sequence.wrapping_sub(sequence);
            self.timestamp_offset = out_timestamp.wrapping_sub(timestamp);
            // The receiver's jitter buffer should resynchronise here.
            marker = true;
        }
        let out_sequence = sequence.wrapping_add(self.sequence_offset);
        let out_timestamp = timestamp.wrapping_add(self.timestamp_offset);
        // Only packets that move the stream forward move our bookkeeping:
        // a late one keeps its (earlier) place.
        let ahead = out_sequence.wrapping_sub(self.next_sequence) < 0x8000;
        if ahead {
            self.next_sequence = out_sequence.wrapping_add(1);
            self.last_timestamp = out_timestamp;
            self.last_sent = Some(now);
        }
        packet[1] = payload_type | if marker { 0x80 } else { 0 };
        packet[2..4].copy_from_slice(&out_sequence.to_be_bytes());
        packet[4..8].copy_from_slice(&out_timestamp.to_be_bytes());
        packet[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        self.relayed += 1;
        Rewritten::Send { payload_type }
    }

    /// Where our stream stands: the next sequence number and timestamp a
    /// sender continuing it should use at `now`.
    pub fn position(&self, now: Instant) -> (u16, u32) {
        let elapsed_units = self
            .last_sent
            .map(|at| {
                let elapsed = now.saturating_duration_since(at);
                (elapsed.as_micros() as u64 * self.clock_rate as u64 / 1_000_000) as u32
            })
            .unwrap_or(0);
        (
            self.next_sequence,
            self.last_timestamp
                .wrapping_add(elapsed_units.max(self.packet_units)),
        )
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Packets relayed and dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.relayed, self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rtp::write_rtp;

    fn packet(pt: u8, seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
        let mut buf = vec![0u8; 12 + 160];
        write_rtp(&mut buf, false, pt, seq, ts, ssrc, &[0xff; 160]);
        buf
    }

    fn fields(p: &[u8]) -> (bool, u8, u16, u32, u32) {
        (
            p[1] & 0x80 != 0,
            p[1] & 0x7f,
            u16::from_be_bytes([p[2], p[3]]),
            u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
        )
    }

    #[test]
    fn continues_our_stream_across_sources() {
        let t0 = Instant::now();
        let mut relay = RtpRewriter::continuing(0xabcd, 500, 16_000, 8000, 160);
        relay.map(0, 0).map(101, 96);
        let mut first = packet(0, 9000, 1_000_000, 7);
        assert_eq!(
            relay.rewrite(&mut first, t0),
            Rewritten::Send { payload_type: 0 }
        );
        assert_eq!(fields(&first), (true, 0, 500, 16_000, 0xabcd));
        let mut second = packet(0, 9001, 1_000_160, 7);
        relay.rewrite(&mut second, t0 + Duration::from_millis(20));
        assert_eq!(fields(&second), (false, 0, 501, 16_160, 0xabcd));
        // A DTMF event keeps its mapped type.
        let mut event = packet(101, 9002, 1_000_320, 7);
        assert_eq!(
            relay.rewrite(&mut event, t0 + Duration::from_millis(40)),
            Rewritten::Send { payload_type: 96 }
        );
        // The far side switches SSRC after 100 ms of silence: sequence goes
        // on by one, the clock by the 100 ms that passed.
        let mut switched = packet(0, 3, 42, 8);
        relay.rewrite(&mut switched, t0 + Duration::from_millis(140));
        assert_eq!(fields(&switched), (true, 0, 503, 16_320 + 800, 0xabcd));
        // A late packet of the new source keeps its place without moving us back.
        let mut late = packet(0, 2, 42u32.wrapping_sub(160), 8);
        relay.rewrite(&mut late, t0 + Duration::from_millis(141));
        assert_eq!(fields(&late).2, 502);
        assert_eq!(relay.position(t0 + Duration::from_millis(140)).0, 504);
        assert_eq!(relay.counts(), (5, 0));
    }

    #[test]
    fn unmapped_payloads_and_garbage_are_dropped() {
        let t0 = Instant::now();
        let mut relay = RtpRewriter::random(8000, 160);
        relay.map(8, 8);
        assert_eq!(relay.rewrite(&mut packet(0, 1, 1, 1), t0), Rewritten::Drop);
        assert_eq!(relay.rewrite(&mut [0x80, 8, 0], t0), Rewritten::Drop);
        assert_eq!(relay.rewrite(&mut [0u8; 20], t0), Rewritten::Drop);
        assert_eq!(relay.counts(), (0, 3));
    }
}
