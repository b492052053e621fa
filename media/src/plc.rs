//! Packet loss concealment for codecs without their own (G.711): repeat the
//! end of the last good frame (one pitch period of it), fading by 6 dB per consecutive lost frame to silence
//! after five, and crossfade back into the next good frame. Sans-IO and
//! allocation-free: it works on decoded PCM in place.
//!
//! Feed every frame the jitter buffer plays through [`Concealer::good_frame`]
//! and call [`Concealer::conceal`] for every [`crate::jitter::Playout::Lost`].

use crate::frame::MAX_FRAME_SAMPLES;

/// Consecutive lost frames after which concealment is silence: repeating
/// one frame for longer turns into an audible buzz, and by then its gain
/// is already down 24 dB.
pub const FADE_FRAMES: u32 = 5;
/// Length of the crossfades that hide the seams, in milliseconds.
const CROSSFADE_MS: u32 = 5;

/// Highest voice pitch searched for; its period is the shortest cycle.
const MAX_PITCH_HZ: u32 = 400;
/// Below this normalised correlation the frame is not periodic enough for a
/// short cycle, and the longest one is repeated instead (less buzzy).
const VOICED: f32 = 0.5;

/// Repeat-and-fade concealer for one stream of mono `i16` frames.
///
/// The repeated segment is the last pitch period (the lag that best matches
/// the frame's end with what came one period earlier) rather than the whole
/// frame, because a voice rarely fits a whole number of periods in 20 ms and
/// repeating the frame as is would put a jump at every frame start.
#[derive(Clone)]
pub struct Concealer {
    /// The last frame played (good or smoothed), repeated on loss.
    last: [i16; MAX_FRAME_SAMPLES],
    len: usize,
    /// Consecutive frames concealed since the last good one.
    lost_run: u32,
    crossfade: usize,
    min_lag: usize,
    /// Repetition period of the current loss, in samples.
    lag: usize,
    /// Mismatch at the cycle's seam, faded out over its first samples.
    seam: f32,
    /// Position in the cycle of the next concealed sample.
    phase: usize,
    concealed: u64,
}

impl std::fmt::Debug for Concealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Concealer")
            .field("len", &self.len)
            .field("lost_run", &self.lost_run)
            .field("lag", &self.lag)
            .field("concealed", &self.concealed)
            .finish()
    }
}

impl Concealer {
    pub fn new(sample_rate: u32) -> Self {
        let crossfade = (sample_rate * CROSSFADE_MS / 1000).max(1) as usize;
        Self {
            last: [0; MAX_FRAME_SAMPLES],
            len: 0,
            lost_run: 0,
            crossfade,
            min_lag: (sample_rate / MAX_PITCH_HZ).max(2) as usize,
            lag: 1,
            seam: 0.0,
            phase: 0,
            concealed: 0,
        }
    }

    /// A frame that arrived. After a loss its start is crossfaded from where
    /// the concealment would have gone on, so the switch does not click;
    /// otherwise it passes through untouched. Either way it is remembered.
    pub fn good_frame(&mut self, frame: &mut [i16]) {
        if self.lost_run > 0 && self.len > 0 {
            let n = self.crossfade.min(frame.len() / 2);
            let gain = gain_at(self.lost_run, 0.0);
            for (i, sample) in frame.iter_mut().enumerate().take(n) {
                let w = (i + 1) as f32 / (n + 1) as f32;
                let from = self.cycle((self.phase + i) % self.lag) * gain;
                *sample = clamp(mix(from, *sample as f32, w));
            }
        }
        let len = frame.len().min(MAX_FRAME_SAMPLES);
        self.last[..len].copy_from_slice(&frame[..len]);
        self.len = len;
        self.lost_run = 0;
    }

    /// A frame that is missing: fills `out` with the last pitch period
    /// repeated and faded. Silence if nothing has been received yet or the
    /// loss is long.
    pub fn conceal(&mut self, out: &mut [i16]) {
        self.concealed += 1;
        self.lost_run = self.lost_run.saturating_add(1);
        if self.len == 0 || self.lost_run > FADE_FRAMES {
            out.fill(0);
            return;
        }
        if self.lost_run == 1 {
            self.choose_cycle();
        }
        let frame = out.len().max(1) as f32;
        for (i, sample) in out.iter_mut().enumerate() {
            // Ramping within the frame, rather than stepping between
            // frames, keeps the fade itself from clicking.
            let gain = gain_at(self.lost_run - 1, i as f32 / frame);
            *sample = clamp(self.cycle(self.phase) * gain);
            self.phase = (self.phase + 1) % self.lag;
        }
    }

    /// Consecutive frames concealed since the last good one.
    pub fn lost_run(&self) -> u32 {
        self.lost_run
    }

    /// Frames concealed in total.
    pub fn concealed(&self) -> u64 {
        self.concealed
    }

    /// Forgets the stream (new call, or a new source after an SSRC change).
    pub fn reset(&mut self) {
        self.len = 0;
        self.lost_run = 0;
    }

    /// Picks the repetition period for a loss starting now.
    fn choose_cycle(&mut self) {
        let len = self.len;
        let window = self.crossfade.min(len / 4).max(1);
        let longest = len.saturating_sub(window);
        self.phase = 0;
        if longest <= self.min_lag {
            self.lag = len;
            self.seam = 0.0;
            return;
        }
        let x = &self.last[..len];
        let tail = &x[len - window..];
        let mut best = (VOICED, longest);
        // Longest first, so that multiples of the period (equally good)
        // resolve to the longest cycle, which sounds least buzzy.
        for lag in (self.min_lag..=longest).rev() {
            let earlier = &x[len - window - lag..len - lag];
            let c = correlation(tail, earlier);
            if c > best.0 + 0.01 {
                best = (c, lag);
            }
        }
        self.lag = best.1;
        // The cycle ends on the frame's last sample and restarts one period
        // back; this is how far apart the two sides of that seam are.
        self.seam = x[len - 1] as f32 - x[len - 1 - self.lag] as f32;
    }

    /// Sample `j` of the repeated cycle, with the seam mismatch faded out
    /// over its first samples so every wrap-around is continuous.
    fn cycle(&self, j: usize) -> f32 {
        let base = self.last[self.len - self.lag + j] as f32;
        let n = self.crossfade.min(self.lag / 2);
        if j < n {
            base + self.seam * (1.0 - (j + 1) as f32 / (n + 1) as f32)
        } else {
            base
        }
    }
}

fn correlation(a: &[i16], b: &[i16]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0i64, 0i64, 0i64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as i64, y as i64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0 || bb == 0 {
        return 0.0;
    }
    (ab as f64 / ((aa as f64) * (bb as f64)).sqrt()) as f32
}

/// Gain at fraction `t` (0..1) through lost frame `k + 1`: from 2^-k down to
/// 2^-(k+1), -6 dB per frame, with the last one ramping to silence.
fn gain_at(k: u32, t: f32) -> f32 {
    if k >= FADE_FRAMES {
        return 0.0;
    }
    let start = 0.5f32.powi(k as i32);
    let end = if k + 1 >= FADE_FRAMES {
        0.0
    } else {
        start * 0.5
    };
    start + (end - start) * t
}

fn mix(from: f32, to: f32, w: f32) -> f32 {
    from * (1.0 - w) + to * w
}

fn clamp(x: f32) -> i16 {
    x.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16
}

#[cfg(test)]
#[path = "plc_tests.rs"]
mod tests;
