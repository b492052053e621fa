//! Delay adaptation for the jitter buffer: the RFC 3550 interarrival jitter
//! estimate and the controller that turns it into a target playout delay and
//! one-frame stretch/shrink decisions.
//!
//! Kept apart from the buffer so the policy can be read (and tuned) without
//! wading through sequence-number bookkeeping.

use std::time::Instant;

/// Bounds and tuning of an adaptive jitter buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveConfig {
    /// Smallest target playout delay.
    pub min_depth_ms: u32,
    /// Largest playout delay, dead band included: the target itself stays
    /// one frame below so that a frame of excess still fits under it.
    pub max_depth_ms: u32,
    /// Target = jitter × this / 100 + `headroom_ms`. RFC 3550 jitter is a
    /// mean deviation; uniform delay spread of width W gives about W/3, so
    /// three times it covers the spread.
    pub jitter_factor_percent: u32,
    pub headroom_ms: u32,
    /// How long the jitter must stay low before the target comes down by
    /// one frame. Raising is quick (a late packet is an audible loss);
    /// lowering is slow (jitter comes in bursts and a calm spell between
    /// them is no reason to thin the buffer).
    pub decrease_hold_ms: u32,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self {
            min_depth_ms: 20,
            max_depth_ms: 200,
            jitter_factor_percent: 300,
            headroom_ms: 10,
            decrease_hold_ms: 1000,
        }
    }
}

/// Interarrival jitter of RFC 3550 section 6.4.1, in the integer form of
/// appendix A.8 (scaled by 16), so the figure matches what an RTCP receiver
/// report would carry.
#[derive(Debug, Clone)]
pub(crate) struct JitterEstimator {
    clock_rate: u64,
    /// Arrival times are converted to RTP units relative to this.
    epoch: Option<Instant>,
    /// Arrival (RTP units) and RTP timestamp of the previous packet.
    prev: Option<(i64, u32)>,
    jitter_q4: u64,
}

impl JitterEstimator {
    pub(crate) fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1) as u64,
            epoch: None,
            prev: None,
            jitter_q4: 0,
        }
    }

    pub(crate) fn on_packet(&mut self, timestamp: u32, now: Instant) {
        let epoch = *self.epoch.get_or_insert(now);
        let micros = now.saturating_duration_since(epoch).as_micros();
        let arrival = (micros * self.clock_rate as u128 / 1_000_000) as i64;
        if let Some((prev_arrival, prev_ts)) = self.prev {
            let sent = timestamp.wrapping_sub(prev_ts) as i32 as i64;
            let d = (arrival - prev_arrival) - sent;
            // Half a second of transit change between two packets is a
            // timestamp jump (a sender restarting its clock), not network
            // jitter: one such sample would otherwise pin the target at its
            // maximum for seconds.
            if d.unsigned_abs() <= self.clock_rate / 2 {
                let d = d.unsigned_abs();
                self.jitter_q4 = self.jitter_q4 + d - ((self.jitter_q4 + 8) >> 4);
            }
        }
        self.prev = Some((arrival, timestamp));
    }

    /// Forgets the transit reference (new stream) but keeps the estimate:
    /// the network path, and so its jitter, is usually the same.
    pub(crate) fn restart(&mut self) {
        self.prev = None;
    }

    /// Jitter in RTP timestamp units, as in an RTCP receiver report.
    pub(crate) fn jitter_rtp(&self) -> u32 {
        (self.jitter_q4 >> 4).min(u32::MAX as u64) as u32
    }

    pub(crate) fn jitter_us(&self) -> u64 {
        self.jitter_q4 * 1_000_000 / (16 * self.clock_rate)
    }
}

/// What playout should do with the slot due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Play,
    /// Output one concealed frame without consuming the slot: +1 frame delay.
    Stretch,
    /// Consume the slot without outputting it: -1 frame delay.
    Shrink,
}

/// Pops a stretch or shrink must wait after the previous one, so that a
/// single noisy sample cannot trigger a burst of them.
const MIN_ACTION_POPS: u32 = 4;
/// Pops the jitter must call for more delay before each one-frame raise.
const RAISE_HOLD_POPS: u32 = 5;
/// Weight of a new delay sample in the smoothed delay: 1/16, a time constant
/// of about 16 packets (320 ms at 20 ms), long enough to average out jitter
/// and short enough to catch drift (1 % is one frame per 2 s).
const SMOOTHING_SHIFT: u32 = 4;

/// Steers the buffering delay (how long the newest packet waits before it
/// plays) towards a target derived from the jitter, one frame at a time.
#[derive(Debug, Clone)]
pub(crate) struct DelayController {
    /// False for a fixed-depth buffer: delay is measured but never steered.
    adaptive: bool,
    packet_us: i64,
    min_us: i64,
    /// Highest target; `max_depth_ms` less one frame.
    max_target_us: i64,
    max_us: i64,
    factor_percent: i64,
    headroom_us: i64,
    lower_hold_pops: u32,
    target_us: i64,
    smoothed_us: Option<i64>,
    since_action: u32,
    raise_pops: u32,
    lower_pops: u32,
}

impl DelayController {
    pub(crate) fn new(
        adaptive: Option<AdaptiveConfig>,
        packet_us: i64,
        depth_ms: u32,
    ) -> DelayController {
        let packet_us = packet_us.max(1);
        let cfg = adaptive.unwrap_or(AdaptiveConfig {
            min_depth_ms: depth_ms,
            max_depth_ms: depth_ms,
            ..AdaptiveConfig::default()
        });
        let min_us = cfg.min_depth_ms as i64 * 1000;
        let max_us = (cfg.max_depth_ms as i64 * 1000).max(min_us);
        let mut c = DelayController {
            adaptive: adaptive.is_some(),
            packet_us,
            min_us,
            max_target_us: (max_us - packet_us).max(min_us),
            max_us,
            factor_percent: cfg.jitter_factor_percent as i64,
            headroom_us: cfg.headroom_ms as i64 * 1000,
            lower_hold_pops: (cfg.decrease_hold_ms as i64 * 1000 / packet_us).max(1) as u32,
            target_us: 0,
            smoothed_us: None,
            since_action: 0,
            raise_pops: 0,
            lower_pops: 0,
        };
        c.set_target_ms(depth_ms);
        c
    }

    pub(crate) fn is_adaptive(&self) -> bool {
        self.adaptive
    }

    pub(crate) fn set_target_ms(&mut self, depth_ms: u32) {
        let us = depth_ms as i64 * 1000;
        self.target_us = if self.adaptive {
            us.clamp(self.min_us, self.max_target_us)
        } else {
            us
        };
    }

    pub(crate) fn target_us(&self) -> i64 {
        self.target_us
    }

    pub(crate) fn max_us(&self) -> i64 {
        self.max_us
    }

    pub(crate) fn smoothed_us(&self) -> Option<i64> {
        self.smoothed_us
    }

    /// Playout (re)starts: the delay is whatever the start rule produced.
    pub(crate) fn restart(&mut self) {
        self.smoothed_us = None;
        self.since_action = 0;
    }

    /// Called once per packet time while playing, with the current
    /// buffering delay and jitter. Returns what to do with the due slot.
    pub(crate) fn on_pop(&mut self, delay_us: i64, jitter_us: u64) -> Action {
        let smoothed = match self.smoothed_us {
            None => delay_us,
            Some(s) => s + ((delay_us - s) >> SMOOTHING_SHIFT),
        };
        self.smoothed_us = Some(smoothed);
        if !self.adaptive {
            return Action::Play;
        }
        self.update_target(jitter_us);
        self.since_action = self.since_action.saturating_add(1);
        let p = self.packet_us;
        // Shrinking at a full frame of excess and stretching at half a frame
        // short leaves a dead band wider than one action, so a shrink cannot
        // be answered by a stretch on the next noisy sample.
        let over_max = smoothed > self.max_us;
        let ready = self.since_action >= MIN_ACTION_POPS;
        if over_max || (ready && smoothed >= self.target_us + p) {
            self.act(-p);
            return Action::Shrink;
        }
        if ready && smoothed <= self.target_us - p / 2 {
            self.act(p);
            return Action::Stretch;
        }
        Action::Play
    }

    /// A frame was inserted or removed outside [`Self::on_pop`] (waiting
    /// for a late packet): every later delay sample shifts by `delta_us`.
    pub(crate) fn shifted(&mut self, delta_us: i64) {
        if let Some(s) = &mut self.smoothed_us {
            *s += delta_us;
        }
    }

    fn act(&mut self, delta_us: i64) {
        // The action moves every future sample by exactly one frame, so the
        // smoothed value moves with it instead of lagging and re-triggering.
        self.shifted(delta_us);
        self.since_action = 0;
    }

    fn update_target(&mut self, jitter_us: u64) {
        let desired = (jitter_us as i64 * self.factor_percent / 100 + self.headroom_us)
            .clamp(self.min_us, self.max_target_us);
        let p = self.packet_us;
        if desired > self.target_us {
            self.lower_pops = 0;
            self.raise_pops += 1;
            if self.raise_pops >= RAISE_HOLD_POPS {
                self.target_us = desired.min(self.target_us + p);
                self.raise_pops = 0;
            }
        } else if desired < self.target_us {
            self.raise_pops = 0;
            self.lower_pops += 1;
            if self.lower_pops >= self.lower_hold_pops {
                self.target_us = desired.max(self.target_us - p);
                self.lower_pops = 0;
            }
        } else {
            self.raise_pops = 0;
            self.lower_pops = 0;
        }
    }
}
