//! RTP jitter buffer, sans-IO, fixed-depth or adaptive.
//!
//! Packets go in with [`JitterBuffer::push`] as they arrive; the call task
//! takes one packet slot out every packet time with [`JitterBuffer::pop`].
//! Playout follows sequence numbers, so timestamps only matter for telling a
//! new talkspurt (silence suppression) from a packet that is merely late.
//!
//! A fixed-depth buffer holds `depth_ms` when playout starts and never
//! steers afterwards. An adaptive one ([`JitterBuffer::adaptive`]) measures
//! RFC 3550 jitter, derives a target delay from it, and keeps the buffering
//! delay near that target by inserting a concealed frame or skipping one,
//! never more than one frame at a time; that also absorbs sender clock drift.
//! New talkspurts start at the current target. All memory is allocated in
//! the constructor.

use std::time::{Duration, Instant};

pub use crate::jitter_adapt::AdaptiveConfig;
use crate::jitter_adapt::{Action, DelayController, JitterEstimator};
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
/// After an SSRC change, packets of the previous SSRC arriving within this
/// time are stragglers still in flight, not the sender switching back.
const STALE_SSRC: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    pub clock_rate: u32,
    /// RTP timestamp units per packet: 160 for 20 ms at 8 kHz.
    pub samples_per_packet: u32,
    /// Target playout delay; the starting target of an adaptive buffer.
    pub depth_ms: u32,
    /// Packet slots; bounds memory and the worst-case delay.
    pub capacity: usize,
    /// Largest payload a slot can hold, in bytes.
    pub max_payload: usize,
    /// `Some` makes the buffer adaptive; `None` keeps `depth_ms` fixed.
    pub adaptive: Option<AdaptiveConfig>,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            clock_rate: 8000,
            samples_per_packet: 160,
            depth_ms: 40,
            capacity: 32,
            max_payload: 1024,
            adaptive: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Accepted,
    /// Already buffered: dropped.
    Duplicate,
    /// Its slot was already played or declared lost, or it belongs to the
    /// SSRC the stream just switched away from: dropped.
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
    /// No packet to play this time: the caller conceals a frame. Either the
    /// packet due is missing, or an adaptive buffer is adding a frame of
    /// delay (see [`JitterStats::inserted`]).
    Lost,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Every packet pushed (except `TooLarge`), whatever became of it.
    pub received: u64,
    /// Sequence numbers that never played because their packet was missing
    /// when due (most reported as [`Playout::Lost`]; an adaptive buffer
    /// shrinking its delay skips a missing one silently).
    pub lost: u64,
    pub late: u64,
    pub duplicate: u64,
    pub reset: u64,
    /// Buffered packets dropped unplayed because the window was full.
    pub overflow: u64,
    /// Packets of a previous stream dropped at a reset or arriving after it.
    pub flushed: u64,
    /// Packets handed out by [`Playout::Packet`].
    pub played: u64,
    /// Packets skipped to shrink the delay (adaptive).
    pub dropped: u64,
    /// [`Playout::Lost`] frames that stand for no missing packet: delay
    /// added to reach the target, to wait out an underrun, or while
    /// refilling after a reset (adaptive).
    pub inserted: u64,
    /// Every [`Playout::Lost`]: the frames the caller concealed.
    pub concealed_frames: u64,
    pub concealed_ms: u64,
    /// Packets currently held.
    pub depth_packets: usize,
    /// Smoothed buffering delay: how long the newest packet waits between
    /// arrival and playout. This is what adaptation steers to `target_ms`.
    pub depth_ms: u32,
    /// Audio held from the playout point to the newest packet.
    pub held_ms: u32,
    pub target_ms: u32,
    /// RFC 3550 interarrival jitter in RTP timestamp units (as in RTCP RR).
    pub interarrival_jitter: u32,
    pub jitter_us: u32,
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

/// `len` zero bytes, zeroed by the CPU rather than asked of the allocator
/// zeroed: a calloc this large (32 KB) is served by jemalloc from pages a
/// finished call left dirty, which it zeroes by handing them back to the
/// kernel (madvise, a TLB shootdown on every core) and faulting them in
/// again: 4 % of the gateway at 14,000 INVITEs/s. A memset of pages that
/// are already mapped costs a microsecond.
#[allow(clippy::slow_vector_initialization)] // the point: vec![0; n] is the calloc
fn filled_with_zeros(len: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(len);
    data.resize(len, 0);
    data
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
    /// The SSRC before the last change and when its successor last sent.
    previous_ssrc: Option<u32>,
    last_arrival: Option<Instant>,
    /// Extended sequence number of the newest packet of this stream.
    highest: i64,
    highest_ts: u32,
    highest_arrival: Option<Instant>,
    /// Set while packets are being played out: extended seq due next.
    playing: Option<i64>,
    /// Extended seq and timestamp of the last packet handed out.
    last_played: Option<(i64, u32)>,
    /// Arrival of the first packet held while not playing.
    filling_since: Option<Instant>,
    dry_pops: u32,
    /// Adaptive: conceal rather than wait while refilling after a reset of
    /// a stream that was playing, so the caller's timeline has no hole.
    refill_conceal: bool,
    estimator: JitterEstimator,
    control: DelayController,
    stats: JitterStats,
}

impl JitterBuffer {
    pub fn new(config: JitterConfig) -> Self {
        let mut config = JitterConfig {
            capacity: config.capacity.max(2),
            samples_per_packet: config.samples_per_packet.max(1),
            clock_rate: config.clock_rate.max(1),
            ..config
        };
        let packet_us = config.samples_per_packet as i64 * 1_000_000 / config.clock_rate as i64;
        let control = DelayController::new(config.adaptive, packet_us, config.depth_ms);
        if config.adaptive.is_some() {
            // Room for the largest delay plus reordering beyond it.
            let max_packets = (control.max_us() / packet_us.max(1)) as usize;
            config.capacity = config.capacity.max(max_packets + 4);
        }
        let mut jb = Self {
            config,
            target: Duration::ZERO,
            target_packets: 1,
            slots: vec![Slot::default(); config.capacity],
            data: filled_with_zeros(config.capacity * config.max_payload),
            buffered: 0,
            ssrc: None,
            previous_ssrc: None,
            last_arrival: None,
            highest: 0,
            highest_ts: 0,
            highest_arrival: None,
            playing: None,
            last_played: None,
            filling_since: None,
            dry_pops: 0,
            refill_conceal: false,
            estimator: JitterEstimator::new(config.clock_rate),
            control,
            stats: JitterStats::default(),
        };
        jb.set_depth_ms(config.depth_ms);
        jb
    }

    /// An adaptive buffer starting at `config.depth_ms` (clamped to the
    /// adaptive bounds).
    pub fn adaptive(config: JitterConfig, adaptive: AdaptiveConfig) -> Self {
        Self::new(JitterConfig {
            adaptive: Some(adaptive),
            ..config
        })
    }

    /// Changes the target playout delay. A fixed buffer applies it the next
    /// time playout (re)starts; an adaptive one takes it (clamped) as its
    /// current target and moves the running stream there a frame at a time.
    pub fn set_depth_ms(&mut self, depth_ms: u32) {
        self.control.set_target_ms(depth_ms);
        let depth_ms = (self.control.target_us() / 1000) as u32;
        self.config.depth_ms = depth_ms;
        self.sync_target();
    }

    fn sync_target(&mut self) {
        self.target = Duration::from_micros(self.control.target_us().max(0) as u64);
        let packet_us = self.packet_us();
        let packets = (self.control.target_us() + packet_us - 1) / packet_us;
        self.target_packets = (packets.max(1) as usize).min(self.config.capacity);
    }

    pub fn config(&self) -> &JitterConfig {
        &self.config
    }

    /// Duration of one packet, in milliseconds.
    pub fn packet_ms(&self) -> u32 {
        self.config.samples_per_packet * 1000 / self.config.clock_rate
    }

    fn packet_us(&self) -> i64 {
        (self.config.samples_per_packet as i64 * 1_000_000 / self.config.clock_rate as i64).max(1)
    }

    pub fn is_playing(&self) -> bool {
        self.playing.is_some()
    }

    /// Packets held, not yet played.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    pub fn stats(&self) -> JitterStats {
        let held = match self.playing {
            Some(next) => (self.highest - next + 1).max(0),
            None if self.buffered > 0 => self.oldest().map_or(0, |o| self.highest - o + 1),
            None => 0,
        };
        let to_ms = |us: i64| (us.max(0) / 1000).min(u32::MAX as i64) as u32;
        JitterStats {
            depth_packets: self.buffered,
            depth_ms: to_ms(self.control.smoothed_us().unwrap_or(0)),
            held_ms: to_ms(held * self.packet_us()),
            target_ms: to_ms(self.control.target_us()),
            concealed_ms: self.stats.concealed_frames * self.packet_ms() as u64,
            interarrival_jitter: self.estimator.jitter_rtp(),
            jitter_us: self.estimator.jitter_us().min(u32::MAX as u64) as u32,
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
        self.refill_conceal = false;
        self.estimator.restart();
        self.control.restart();
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
                    self.restart(packet, now);
                    outcome = PushOutcome::Reset;
                    self.highest
                } else {
                    ext
                }
            }
            Some(_) if self.is_stale_ssrc(packet.ssrc, now) => {
                self.stats.flushed += 1;
                return PushOutcome::Late;
            }
            Some(_) => {
                self.restart(packet, now);
                outcome = PushOutcome::Reset;
                self.highest
            }
            None => {
                self.reset();
                self.start_stream(packet, now);
                self.highest
            }
        };
        self.last_arrival = Some(now);
        self.estimator.on_packet(packet.timestamp, now);

        if let Some(next) = self.playing {
            if ext < next {
                if self.control.is_adaptive() || !self.is_talkspurt_restart(packet, ext) {
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
        if ext >= self.highest {
            self.highest = ext;
            self.highest_ts = packet.timestamp;
            self.highest_arrival = Some(now);
        }
        if self.playing.is_none() && self.filling_since.is_none() {
            self.filling_since = Some(now);
        }
        outcome
    }

    /// Takes the packet due now. Call once per packet time.
    /// The payload of the packet due next, if it has arrived. Right after
    /// a pop reported a real loss ([`JitterStats::lost`] went up) this is the
    /// packet following the lost one, whose Opus in-band FEC can rebuild it.
    pub fn peek_due(&self) -> Option<&[u8]> {
        let next = self.playing?;
        let idx = self.index(next);
        let slot = &self.slots[idx];
        if !(slot.filled && slot.ext == next) {
            return None;
        }
        let start = idx * self.config.max_payload;
        Some(&self.data[start..start + slot.len])
    }

    pub fn pop(&mut self, now: Instant) -> Playout<'_> {
        let mut next = match self.playing {
            Some(next) => next,
            None => match self.try_start(now) {
                Some(next) => next,
                None => return self.refill_output(),
            },
        };

        if self.control.is_adaptive() && self.dry_pops > 0 && self.is_talkspurt_start(next) {
            // Talk resumes after silence suppression: the ideal moment to
            // reach the current target, by lengthening the silence.
            self.playing = None;
            self.filling_since = Some(now);
            self.refill_conceal = true;
            next = match self.try_start(now) {
                Some(next) => next,
                None => return self.refill_output(),
            };
        }

        // An empty buffer says nothing about the delay, and a stretch there
        // would only duplicate the wait below.
        let action = if self.buffered == 0 {
            Action::Play
        } else {
            let delay = self.delay_us(next, now);
            self.control.on_pop(delay, self.estimator.jitter_us())
        };
        match action {
            Action::Play => {}
            Action::Stretch => {
                self.stats.inserted += 1;
                return self.conceal();
            }
            Action::Shrink => {
                let idx = self.index(next);
                if self.slots[idx].filled && self.slots[idx].ext == next {
                    self.slots[idx].filled = false;
                    self.buffered -= 1;
                    self.stats.dropped += 1;
                } else {
                    self.stats.lost += 1;
                }
                next += 1;
                self.playing = Some(next);
            }
        }

        let idx = self.index(next);
        let slot = self.slots[idx];
        if slot.filled && slot.ext == next {
            self.slots[idx].filled = false;
            self.buffered -= 1;
            self.playing = Some(next + 1);
            self.last_played = Some((next, slot.timestamp));
            self.dry_pops = 0;
            self.stats.played += 1;
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
            if self.control.is_adaptive() {
                // Nothing newer has arrived, so the packet due is not known
                // to be lost: wait for it a frame (underrun, or silence
                // suppression) instead of making it late.
                self.stats.inserted += 1;
                self.playing = Some(next);
                return self.conceal();
            }
        } else if !self.control.is_adaptive() {
            self.dry_pops = 0;
        }
        self.stats.lost += 1;
        self.playing = Some(next + 1);
        self.conceal()
    }

    fn conceal(&mut self) -> Playout<'static> {
        self.stats.concealed_frames += 1;
        Playout::Lost
    }

    /// What a pop returns while not playing.
    fn refill_output(&mut self) -> Playout<'static> {
        if self.refill_conceal && self.filling_since.is_some() {
            self.stats.inserted += 1;
            return self.conceal();
        }
        self.refill_conceal = false;
        Playout::Waiting
    }

    /// Decides whether playout may start; returns the first seq to play.
    fn try_start(&mut self, now: Instant) -> Option<i64> {
        let since = self.filling_since?;
        if self.buffered == 0 {
            return None;
        }
        let oldest = self.oldest()?;
        let ready = if self.control.is_adaptive() {
            // Start once the newest packet would wait the target: a burst
            // that arrived together starts sooner than a trickle.
            self.delay_us(oldest, now) >= self.control.target_us()
        } else {
            self.buffered >= self.target_packets || now >= since + self.target
        };
        if !ready {
            return None;
        }
        self.dry_pops = 0;
        self.refill_conceal = false;
        self.control.restart();
        self.playing = Some(oldest);
        Some(oldest)
    }

    /// How long the newest packet will have waited when it plays, given
    /// that `due` plays now.
    fn delay_us(&self, due: i64, now: Instant) -> i64 {
        match self.highest_arrival {
            Some(arrival) if self.highest >= due => {
                let waited = now.saturating_duration_since(arrival).as_micros() as i64;
                (self.highest - due) * self.packet_us() + waited
            }
            _ => 0,
        }
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

    /// Reordering around an SSRC change delivers a few packets of the old
    /// SSRC after the new one; switching back for them would flush the new
    /// stream each time.
    fn is_stale_ssrc(&self, ssrc: u32, now: Instant) -> bool {
        self.previous_ssrc == Some(ssrc)
            && self
                .last_arrival
                .is_some_and(|last| now.saturating_duration_since(last) < STALE_SSRC)
    }

    fn start_stream(&mut self, packet: &RtpPacket<'_>, now: Instant) {
        self.ssrc = Some(packet.ssrc);
        // Start high so that extended numbers never go negative.
        self.highest = (1 << 32) + packet.sequence as i64;
        self.highest_ts = packet.timestamp;
        self.highest_arrival = Some(now);
    }

    /// Empties the buffer for a new stream starting with `packet`.
    fn restart(&mut self, packet: &RtpPacket<'_>, now: Instant) {
        let was_playing = self.playing.is_some() || self.refill_conceal;
        if self.ssrc != Some(packet.ssrc) {
            self.previous_ssrc = self.ssrc;
        }
        self.stats.flushed += self.buffered as u64;
        self.reset();
        self.refill_conceal = self.control.is_adaptive() && was_playing;
        self.stats.reset += 1;
        self.start_stream(packet, now);
    }

    /// A packet behind the playout point is the start of a new talkspurt,
    /// not a late one, when the buffer ran dry and the sender either marked
    /// it or its timestamp skipped the silence it did not send.
    fn is_talkspurt_restart(&self, packet: &RtpPacket<'_>, ext: i64) -> bool {
        if self.buffered != 0 || self.dry_pops == 0 {
            return false;
        }
        self.starts_talkspurt(ext, packet.timestamp, packet.marker)
    }

    /// Whether the buffered packet `ext` begins a talkspurt.
    fn is_talkspurt_start(&self, ext: i64) -> bool {
        let slot = self.slots[self.index(ext)];
        slot.filled && slot.ext == ext && self.starts_talkspurt(ext, slot.timestamp, slot.marker)
    }

    fn starts_talkspurt(&self, ext: i64, timestamp: u32, marker: bool) -> bool {
        let Some((last, last_ts)) = self.last_played else {
            return false;
        };
        if ext <= last {
            return false;
        }
        let spp = self.config.samples_per_packet as i64;
        let expected = (ext - last) * spp;
        let actual = timestamp.wrapping_sub(last_ts) as i32 as i64;
        marker || actual > expected + spp / 2
    }

    fn oldest(&self) -> Option<i64> {
        self.slots.iter().filter(|s| s.filled).map(|s| s.ext).min()
    }

    fn newest(&self) -> Option<i64> {
        self.slots.iter().filter(|s| s.filled).map(|s| s.ext).max()
    }

    /// Consecutive sequence numbers the buffer may span: the slots, or for
    /// an adaptive buffer the largest delay (plus the packet due).
    fn window(&self) -> i64 {
        let cap = self.config.capacity as i64;
        if self.control.is_adaptive() {
            (self.control.max_us() / self.packet_us() + 1).clamp(2, cap)
        } else {
            cap
        }
    }

    /// Makes `ext` fit the window, dropping the oldest packets if it lies
    /// beyond the end. Returns false when `ext` lies before a window that
    /// cannot stretch back to it.
    fn make_room(&mut self, ext: i64) -> bool {
        let cap = self.window();
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
            // Skipping forward shortens the delay the controller tracks.
            self.control.shifted(-(skipped as i64) * self.packet_us());
        }
        true
    }
}

#[cfg(test)]
#[path = "jitter_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "jitter_adaptive_tests.rs"]
mod adaptive_tests;
