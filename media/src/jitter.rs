//! Fixed-depth RTP jitter buffer, sans-IO.
//!
//! Packets go in with [`JitterBuffer::push`] as they arrive; the call task
//! takes one packet slot out every packet time with [`JitterBuffer::pop`].
//! Playout follows sequence numbers, so timestamps only matter for telling a
//! new talkspurt (silence suppression) from a packet that is merely late.
//!
//! The playout delay lives in one place (`target`), so an adaptive version
//! only has to move it with [`JitterBuffer::set_depth_ms`].

use std::time::{Duration, Instant};

use crate::rtp::RtpPacket;

/// A forward sequence jump larger than this is a new stream, not loss
/// (RFC 3550 appendix A.1 uses the same value).
const MAX_DROPOUT: i64 = 3000;
/// How far behind the newest packet a straggler may be before it is taken
/// as a restarted stream rather than reordering.
const MAX_MISORDER: i64 = 100;
/// Consecutive empty pops after which playout stops and waits for a new
/// anchor instead of reporting loss forever.
const MAX_DRY_POPS: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    pub clock_rate: u32,
    /// RTP timestamp units per packet: 160 for 20 ms at 8 kHz.
    pub samples_per_packet: u32,
    /// Target playout delay.
    pub depth_ms: u32,
    /// Packet slots; bounds memory and the worst-case delay.
    pub capacity: usize,
    /// Largest payload a slot can hold, in bytes.
    pub max_payload: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            clock_rate: 8000,
            samples_per_packet: 160,
            depth_ms: 40,
            capacity: 32,
            max_payload: 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Accepted,
    /// Already buffered: dropped.
    Duplicate,
    /// Its slot was already played or declared lost: dropped.
    Late,
    /// Payload larger than `max_payload`: dropped.
    TooLarge,
    /// New SSRC or a jump far outside the window: the buffer was emptied and
    /// restarted on this packet, which was accepted.
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Playout<'a> {
    /// Not playing: nothing received yet, or still filling to the target depth.
    Waiting,
    Packet {
        payload: &'a [u8],
        payload_type: u8,
        marker: bool,
        timestamp: u32,
    },
    /// The packet due now is missing: the caller conceals it.
    Lost,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Every packet pushed (except `TooLarge`), whatever became of it.
    pub received: u64,
    /// Pops that reported [`Playout::Lost`], plus packets skipped when the
    /// window was pushed forward past slots that never arrived.
    pub lost: u64,
    pub late: u64,
    pub duplicate: u64,
    pub reset: u64,
    /// Buffered packets dropped unplayed because the buffer was full.
    pub overflow: u64,
    /// Packets currently held.
    pub depth_packets: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    filled: bool,
    ext: i64,
    len: usize,
    payload_type: u8,
    marker: bool,
    timestamp: u32,
}

#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    target: Duration,
    target_packets: usize,
    slots: Vec<Slot>,
    /// `capacity * max_payload` bytes, slot `i` owns `[i * max_payload ..]`.
    data: Vec<u8>,
    buffered: usize,
    ssrc: Option<u32>,
    /// Extended sequence number of the newest packet of this stream.
    highest: i64,
    highest_ts: u32,
    /// Set while packets are being played out: extended seq due next.
    playing: Option<i64>,
    /// Extended seq and timestamp of the last packet handed out.
    last_played: Option<(i64, u32)>,
    /// Arrival of the first packet held while not playing.
    filling_since: Option<Instant>,
    dry_pops: u32,
    stats: JitterStats,
}

impl JitterBuffer {
    pub fn new(config: JitterConfig) -> Self {
        let config = JitterConfig {
            capacity: config.capacity.max(2),
            samples_per_packet: config.samples_per_packet.max(1),
            clock_rate: config.clock_rate.max(1),
            ..config
        };
        let mut jb = Self {
            config,
            target: Duration::ZERO,
            target_packets: 1,
            slots: vec![Slot::default(); config.capacity],
            data: vec![0; config.capacity * config.max_payload],
            buffered: 0,
            ssrc: None,
            highest: 0,
            highest_ts: 0,
            playing: None,
            last_played: None,
            filling_since: None,
            dry_pops: 0,
            stats: JitterStats::default(),
        };
        jb.set_depth_ms(config.depth_ms);
        jb
    }

    /// Changes the target playout delay. Takes effect the next time playout
    /// (re)starts; a running stream keeps its current delay.
    pub fn set_depth_ms(&mut self, depth_ms: u32) {
        self.config.depth_ms = depth_ms;
        self.target = Duration::from_millis(depth_ms as u64);
        let packet_ms = self.packet_ms().max(1);
        let packets = depth_ms.div_ceil(packet_ms) as usize;
        self.target_packets = packets.clamp(1, self.config.capacity);
    }

    pub fn config(&self) -> &JitterConfig {
        &self.config
    }

    /// Duration of one packet, in milliseconds.
    pub fn packet_ms(&self) -> u32 {
        self.config.samples_per_packet * 1000 / self.config.clock_rate
    }

    pub fn is_playing(&self) -> bool {
        self.playing.is_some()
    }

    pub fn stats(&self) -> JitterStats {
        JitterStats {
            depth_packets: self.buffered,
            ..self.stats
        }
    }

    /// Forgets the current stream; the next packet starts a new one.
    pub fn reset(&mut self) {
        for slot in &mut self.slots {
            slot.filled = false;
        }
        self.buffered = 0;
        self.ssrc = None;
        self.playing = None;
        self.last_played = None;
        self.filling_since = None;
        self.dry_pops = 0;
    }

    pub fn push(&mut self, packet: &RtpPacket<'_>, now: Instant) -> PushOutcome {
        if packet.payload.len() > self.config.max_payload {
            return PushOutcome::TooLarge;
        }
        self.stats.received += 1;

        let mut outcome = PushOutcome::Accepted;
        let ext = match self.ssrc {
            Some(ssrc) if ssrc == packet.ssrc => {
                let ext = self.extend(packet.sequence);
                if self.is_new_stream(ext, packet.timestamp) {
                    self.restart(packet);
                    outcome = PushOutcome::Reset;
                    self.highest
                } else {
                    ext
                }
            }
            Some(_) => {
                self.restart(packet);
                outcome = PushOutcome::Reset;
                self.highest
            }
            None => {
                self.reset();
                self.ssrc = Some(packet.ssrc);
                // Start high so that extended numbers never go negative.
                self.highest = (1 << 32) + packet.sequence as i64;
                self.highest_ts = packet.timestamp;
                self.highest
            }
        };

        if let Some(next) = self.playing {
            if ext < next {
                if !self.is_talkspurt_restart(packet, ext) {
                    self.stats.late += 1;
                    return PushOutcome::Late;
                }
                // Silence suppression ended while we were declaring its
                // slots lost: start again from this packet with full depth.
                self.playing = None;
                self.filling_since = None;
            }
        } else if matches!(self.last_played, Some((last, _)) if ext <= last) {
            self.stats.late += 1;
            return PushOutcome::Late;
        }

        if !self.make_room(ext) {
            self.stats.late += 1;
            return PushOutcome::Late;
        }

        let idx = self.index(ext);
        if self.slots[idx].filled && self.slots[idx].ext == ext {
            self.stats.duplicate += 1;
            return PushOutcome::Duplicate;
        }
        let len = packet.payload.len();
        let start = idx * self.config.max_payload;
        self.data[start..start + len].copy_from_slice(packet.payload);
        self.slots[idx] = Slot {
            filled: true,
            ext,
            len,
            payload_type: packet.payload_type,
            marker: packet.marker,
            timestamp: packet.timestamp,
        };
        self.buffered += 1;
        if ext > self.highest {
            self.highest = ext;
            self.highest_ts = packet.timestamp;
        }
        if self.playing.is_none() && self.filling_since.is_none() {
            self.filling_since = Some(now);
        }
        outcome
    }

    /// Takes the packet due now. Call once per packet time.
    pub fn pop(&mut self, now: Instant) -> Playout<'_> {
        let next = match self.playing {
            Some(next) => next,
            None => {
                let Some(since) = self.filling_since else {
                    return Playout::Waiting;
                };
                let deep_enough = self.buffered >= self.target_packets;
                if self.buffered == 0 || (!deep_enough && now < since + self.target) {
                    return Playout::Waiting;
                }
                let Some(oldest) = self.oldest() else {
                    return Playout::Waiting;
                };
                self.dry_pops = 0;
                oldest
            }
        };

        let idx = self.index(next);
        let slot = self.slots[idx];
        if slot.filled && slot.ext == next {
            self.slots[idx].filled = false;
            self.buffered -= 1;
            self.playing = Some(next + 1);
            self.last_played = Some((next, slot.timestamp));
            self.dry_pops = 0;
            let start = idx * self.config.max_payload;
            return Playout::Packet {
                payload: &self.data[start..start + slot.len],
                payload_type: slot.payload_type,
                marker: slot.marker,
                timestamp: slot.timestamp,
            };
        }

        if self.buffered == 0 {
            self.dry_pops += 1;
            if self.dry_pops > MAX_DRY_POPS {
                self.playing = None;
                self.filling_since = None;
                return Playout::Waiting;
            }
        } else {
            self.dry_pops = 0;
        }
        self.stats.lost += 1;
        self.playing = Some(next + 1);
        Playout::Lost
    }

    fn index(&self, ext: i64) -> usize {
        ext.rem_euclid(self.config.capacity as i64) as usize
    }

    fn extend(&self, seq: u16) -> i64 {
        let delta = seq.wrapping_sub(self.highest as u16) as i16;
        self.highest + delta as i64
    }

    fn is_new_stream(&self, ext: i64, timestamp: u32) -> bool {
        let delta = ext - self.highest;
        if delta > MAX_DROPOUT || delta < -(MAX_MISORDER + self.config.capacity as i64) {
            return true;
        }
        // Sequence moving on while the clock jumps back by over a second
        // means the sender restarted its stream under the same SSRC.
        let ts_delta = timestamp.wrapping_sub(self.highest_ts) as i32 as i64;
        delta > 0 && ts_delta < -(self.config.clock_rate as i64)
    }

    /// Empties the buffer for a new stream starting with `packet`.
    fn restart(&mut self, packet: &RtpPacket<'_>) {
        self.reset();
        self.stats.reset += 1;
        self.ssrc = Some(packet.ssrc);
        self.highest = (1 << 32) + packet.sequence as i64;
        self.highest_ts = packet.timestamp;
    }

    /// A packet behind the playout point is the start of a new talkspurt,
    /// not a late one, when the buffer ran dry and the sender either marked
    /// it or its timestamp skipped the silence it did not send.
    fn is_talkspurt_restart(&self, packet: &RtpPacket<'_>, ext: i64) -> bool {
        if self.buffered != 0 || self.dry_pops == 0 {
            return false;
        }
        let Some((last, last_ts)) = self.last_played else {
            return false;
        };
        if ext <= last {
            return false;
        }
        let spp = self.config.samples_per_packet as i64;
        let expected = (ext - last) * spp;
        let actual = packet.timestamp.wrapping_sub(last_ts) as i32 as i64;
        packet.marker || actual > expected + spp / 2
    }

    fn oldest(&self) -> Option<i64> {
        self.slots.iter().filter(|s| s.filled).map(|s| s.ext).min()
    }

    fn newest(&self) -> Option<i64> {
        self.slots.iter().filter(|s| s.filled).map(|s| s.ext).max()
    }

    /// Makes `ext` fit the window of `capacity` consecutive sequence numbers,
    /// dropping the oldest packets if it lies beyond the end. Returns false
    /// when `ext` lies before a window that cannot stretch back to it.
    fn make_room(&mut self, ext: i64) -> bool {
        let cap = self.config.capacity as i64;
        let start = match self.playing {
            Some(next) => next,
            None => match (self.oldest(), self.newest()) {
                (Some(oldest), Some(newest)) if ext < oldest => return newest - ext < cap,
                (Some(oldest), _) => oldest,
                _ => return true,
            },
        };
        if ext < start + cap {
            return true;
        }
        let new_start = ext - cap + 1;
        let mut dropped = 0;
        for slot in &mut self.slots {
            if slot.filled && slot.ext < new_start {
                slot.filled = false;
                dropped += 1;
            }
        }
        self.buffered -= dropped;
        self.stats.overflow += dropped as u64;
        if self.playing.is_some() {
            let skipped = (new_start - start) as u64;
            self.stats.lost += skipped.saturating_sub(dropped as u64);
            self.playing = Some(new_start);
        }
        true
    }
}

#[cfg(test)]
#[path = "jitter_tests.rs"]
mod tests;
