//! RTCP for one call (RFC 3550 §6), sans-IO: reception statistics of the
//! caller's stream, our sender or receiver reports, and what the caller's
//! reports tell us (their loss and jitter of our stream, round-trip time).
//!
//! Inputs are RTP packets seen and sent, RTCP datagrams and `now`; outputs
//! are compound RTCP packets written into the caller's buffer when
//! [`RtcpSession::poll_transmit`] says one is due.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Report interval. RFC 3550 §6.2 gives 5 s as the minimum for a two-party
/// session; randomised by ±50% so calls started together do not report in step.
const REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// Seconds from 1900 (NTP) to 1970 (Unix).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
/// Largest compound packet we write: SR + one report block + SDES CNAME.
pub const MAX_RTCP_PACKET: usize = 28 + 24 + 8 + 2 + 64 + 4;
/// Sequence gaps larger than this are a restarted stream (RFC 3550 A.1).
const MAX_DROPOUT: u16 = 3000;

const PT_SR: u8 = 200;
const PT_RR: u8 = 201;
const PT_SDES: u8 = 202;

/// What the caller's stream looked like from here, RFC 3550 A.1 and A.8.
#[derive(Debug, Default, Clone, Copy)]
struct Reception {
    ssrc: u32,
    started: bool,
    base_seq: u32,
    /// Extended highest sequence number (cycles in the upper 16 bits).
    max_seq: u32,
    received: u64,
    /// At the last report, for the fraction lost since.
    expected_prior: u64,
    received_prior: u64,
    /// Interarrival jitter in timestamp units, scaled by 16 (A.8).
    jitter_q4: u32,
    /// Transit time of the previous packet, in timestamp units.
    last_transit: Option<i64>,
}

/// Figures for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct RtcpStats {
    /// Caller → us: packets expected but not received, and the ratio.
    pub packets_lost: i64,
    pub loss_ratio: f64,
    /// Caller → us: interarrival jitter, ms.
    pub jitter_ms: f64,
    /// Us → caller, as the caller reported it.
    pub remote_loss_ratio: Option<f64>,
    pub remote_jitter_ms: Option<f64>,
    /// Round-trip time from the caller's report of our sender report.
    pub rtt_ms: Option<f64>,
    pub reports_sent: u64,
    pub reports_received: u64,
}

#[derive(Debug)]
pub struct RtcpSession {
    ssrc: u32,
    clock_rate: u32,
    cname: String,
    /// An instant and the wall clock then, to express instants as NTP time.
    epoch: (Instant, u64),
    reception: Reception,
    /// Packets and payload octets we sent, and the last RTP timestamp with its instant.
    sent_packets: u32,
    sent_octets: u32,
    last_sent: Option<(u32, Instant)>,
    /// Middle 32 bits of the caller's last SR NTP time and when it arrived.
    last_sr: Option<(u32, Instant)>,
    next_report: Instant,
    stats: RtcpStats,
}

impl RtcpSession {
    pub fn new(ssrc: u32, clock_rate: u32, cname: &str, now: Instant) -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let ntp = ((wall.as_secs() + NTP_UNIX_OFFSET) << 32)
            | ((u64::from(wall.subsec_nanos()) << 32) / 1_000_000_000);
        Self {
            ssrc,
            clock_rate: clock_rate.max(1),
            cname: cname.chars().take(64).collect(),
            epoch: (now, ntp),
            reception: Reception::default(),
            sent_packets: 0,
            sent_octets: 0,
            last_sent: None,
            last_sr: None,
            next_report: now + jittered(REPORT_INTERVAL),
            stats: RtcpStats::default(),
        }
    }

    /// An RTP packet of the caller's audio stream arrived.
    pub fn on_rtp_received(&mut self, ssrc: u32, sequence: u16, timestamp: u32, now: Instant) {
        let arrival = self.units_since_epoch(now);
        let r = &mut self.reception;
        if !r.started || r.ssrc != ssrc {
            *r = Reception {
                ssrc,
                started: true,
                base_seq: u32::from(sequence),
                max_seq: u32::from(sequence),
                ..Reception::default()
            };
        } else {
            let max16 = r.max_seq as u16;
            let delta = sequence.wrapping_sub(max16);
            if delta != 0 && delta < MAX_DROPOUT {
                if sequence < max16 {
                    r.max_seq = r.max_seq.wrapping_add(1 << 16);
                }
                r.max_seq = (r.max_seq & 0xffff_0000) | u32::from(sequence);
            } else if delta >= u16::MAX - 100 {
                // Reordered or duplicate: counts as received, moves nothing.
            } else if delta != 0 {
                // A jump: the sender restarted its sequence.
                r.base_seq = u32::from(sequence);
                r.max_seq = u32::from(sequence);
                r.received = 0;
                r.expected_prior = 0;
                r.received_prior = 0;
            }
        }
        r.received += 1;
        let transit = arrival - i64::from(timestamp);
        if let Some(last) = r.last_transit {
            // Timestamps wrap at 2^32: take the difference modulo that.
            let d = (transit - last) as i32;
            let d = i64::from(d).unsigned_abs() as u32;
            r.jitter_q4 = r
                .jitter_q4
                .wrapping_add(d)
                .wrapping_sub((r.jitter_q4 + 8) >> 4);
        }
        r.last_transit = Some(transit);
    }

    /// We sent an RTP packet with `payload_len` bytes of payload.
    pub fn on_rtp_sent(&mut self, payload_len: usize, timestamp: u32, now: Instant) {
        self.sent_packets = self.sent_packets.wrapping_add(1);
        self.sent_octets = self.sent_octets.wrapping_add(payload_len as u32);
        self.last_sent = Some((timestamp, now));
    }

    /// An RTCP datagram from the caller; malformed parts are skipped.
    pub fn handle_rtcp(&mut self, datagram: &[u8], now: Instant) {
        let mut rest = datagram;
        while rest.len() >= 8 {
            let words = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            let len = (words + 1) * 4;
            if rest[0] >> 6 != 2 || len > rest.len() {
                return;
            }
            let (packet, tail) = rest.split_at(len);
            rest = tail;
            let count = usize::from(packet[0] & 0x1f);
            match packet[1] {
                PT_SR if packet.len() >= 28 => {
                    let middle =
                        u32::from_be_bytes([packet[10], packet[11], packet[12], packet[13]]);
                    self.last_sr = Some((middle, now));
                    self.stats.reports_received += 1;
                    self.read_blocks(&packet[28..], count, now);
                }
                // A length word of 0 makes a 4-byte packet: no SSRC, no blocks.
                PT_RR if packet.len() >= 8 => {
                    self.stats.reports_received += 1;
                    self.read_blocks(&packet[8..], count, now);
                }
                _ => {}
            }
        }
    }

    fn read_blocks(&mut self, blocks: &[u8], count: usize, now: Instant) {
        for block in blocks.chunks_exact(24).take(count) {
            let ssrc = u32::from_be_bytes([block[0], block[1], block[2], block[3]]);
            if ssrc != self.ssrc {
                continue;
            }
            self.stats.remote_loss_ratio = Some(f64::from(block[4]) / 256.0);
            let jitter = u32::from_be_bytes([block[12], block[13], block[14], block[15]]);
            self.stats.remote_jitter_ms = Some(self.units_to_ms(jitter));
            let lsr = u32::from_be_bytes([block[16], block[17], block[18], block[19]]);
            let dlsr = u32::from_be_bytes([block[20], block[21], block[22], block[23]]);
            if lsr != 0 {
                // RFC 3550 §6.4.1: RTT = arrival − LSR − DLSR, in 1/65536 s.
                let arrival = (self.ntp_at(now) >> 16) as u32;
                let rtt = arrival.wrapping_sub(lsr).wrapping_sub(dlsr);
                if rtt < 65536 * 10 {
                    self.stats.rtt_ms = Some(f64::from(rtt) * 1000.0 / 65536.0);
                }
            }
        }
    }

    /// When the next report is due.
    pub fn poll_timeout(&self) -> Instant {
        self.next_report
    }

    /// Writes the compound report into `buf` if one is due; returns its length.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if now < self.next_report || buf.len() < MAX_RTCP_PACKET {
            return None;
        }
        self.next_report = now + jittered(REPORT_INTERVAL);
        let len = self.write_report(now, buf);
        self.stats.reports_sent += 1;
        Some(len)
    }

    /// A final report, e.g. just before BYE.
    pub fn final_report(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        self.next_report = now;
        self.poll_transmit(now, buf)
    }

    pub fn stats(&self) -> RtcpStats {
        let mut stats = self.stats;
        let r = &self.reception;
        if r.started {
            let expected = u64::from(r.max_seq.wrapping_sub(r.base_seq)) + 1;
            stats.packets_lost = expected as i64 - r.received as i64;
            stats.loss_ratio = (stats.packets_lost.max(0) as f64) / expected as f64;
            stats.jitter_ms = self.units_to_ms(r.jitter_q4 >> 4);
        }
        stats
    }

    fn write_report(&mut self, now: Instant, buf: &mut [u8]) -> usize {
        let sender = self.last_sent.is_some();
        let blocks = usize::from(self.reception.started);
        let mut at = if sender {
            let ntp = self.ntp_at(now);
            let (last_ts, last_at) = self.last_sent.unwrap_or((0, now));
            // The RTP timestamp that corresponds to `now` on our media clock.
            let elapsed = now.saturating_duration_since(last_at);
            let rtp_now = last_ts.wrapping_add(
                (elapsed.as_micros() as u64 * u64::from(self.clock_rate) / 1_000_000) as u32,
            );
            header(buf, blocks as u8, PT_SR, 6 + 6 * blocks);
            buf[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
            buf[8..16].copy_from_slice(&ntp.to_be_bytes());
            buf[16..20].copy_from_slice(&rtp_now.to_be_bytes());
            buf[20..24].copy_from_slice(&self.sent_packets.to_be_bytes());
            buf[24..28].copy_from_slice(&self.sent_octets.to_be_bytes());
            28
        } else {
            header(buf, blocks as u8, PT_RR, 1 + 6 * blocks);
            buf[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
            8
        };
        if blocks == 1 {
            at += self.write_block(now, &mut buf[at..at + 24]);
        }
        at + self.write_sdes(&mut buf[at..])
    }

    fn write_block(&mut self, now: Instant, block: &mut [u8]) -> usize {
        let r = &mut self.reception;
        let expected = u64::from(r.max_seq.wrapping_sub(r.base_seq)) + 1;
        let lost = (expected as i64 - r.received as i64).clamp(-0x80_0000, 0x7f_ffff);
        let expected_interval = expected.saturating_sub(r.expected_prior);
        let received_interval = r.received.saturating_sub(r.received_prior);
        r.expected_prior = expected;
        r.received_prior = r.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction = (lost_interval << 8)
            .checked_div(expected_interval)
            .map_or(0, |f| f.min(255) as u8);
        block[0..4].copy_from_slice(&r.ssrc.to_be_bytes());
        block[4] = fraction;
        block[5..8].copy_from_slice(&(lost as i32).to_be_bytes()[1..4]);
        block[8..12].copy_from_slice(&r.max_seq.to_be_bytes());
        block[12..16].copy_from_slice(&(r.jitter_q4 >> 4).to_be_bytes());
        let (lsr, dlsr) = match self.last_sr {
            Some((middle, at)) => {
                let delay = now.saturating_duration_since(at);
                (
                    middle,
                    (delay.as_micros() as u64 * 65536 / 1_000_000) as u32,
                )
            }
            None => (0, 0),
        };
        block[16..20].copy_from_slice(&lsr.to_be_bytes());
        block[20..24].copy_from_slice(&dlsr.to_be_bytes());
        24
    }

    /// SDES with our CNAME: RFC 3550 §6.1 wants one in every compound packet.
    fn write_sdes(&self, buf: &mut [u8]) -> usize {
        let name = self.cname.as_bytes();
        // SSRC, CNAME type and length, the name, then at least one null
        // octet ending the item list, padded to 32 bits.
        let body = 4 + 2 + name.len() + 1;
        let total = 4 + body.div_ceil(4) * 4;
        buf[..total].fill(0);
        header(buf, 1, PT_SDES, total / 4 - 1);
        buf[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
        buf[8] = 1;
        buf[9] = name.len() as u8;
        buf[10..10 + name.len()].copy_from_slice(name);
        total
    }

    fn ntp_at(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.epoch.0);
        let fraction = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
        self.epoch
            .1
            .wrapping_add(since.as_secs() << 32)
            .wrapping_add(fraction)
    }

    fn units_since_epoch(&self, now: Instant) -> i64 {
        let since = now.saturating_duration_since(self.epoch.0);
        (since.as_micros() as u64 * u64::from(self.clock_rate) / 1_000_000) as i64
    }

    fn units_to_ms(&self, units: u32) -> f64 {
        f64::from(units) * 1000.0 / f64::from(self.clock_rate)
    }
}

fn header(buf: &mut [u8], count: u8, packet_type: u8, length_words: usize) {
    buf[0] = 0x80 | (count & 0x1f);
    buf[1] = packet_type;
    buf[2..4].copy_from_slice(&(length_words as u16).to_be_bytes());
}

fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.5 + rand::random::<f64>())
}

#[cfg(test)]
#[path = "rtcp_tests.rs"]
mod tests;
