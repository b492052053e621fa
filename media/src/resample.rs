//! Sample-rate conversion between the telephone side and bots.
//!
//! One instance per stream direction: filter state carries across calls, so
//! frame boundaries do not click.
//!
//! Every ratio between the supported rates is rational with a small
//! numerator and denominator (`L / M`, at most 6), so conversion is an exact
//! polyphase FIR: each output sample is one dot product of the newest input
//! samples with one of `L` branches of a windowed-sinc low-pass, chosen by
//! where the output instant falls between two input samples. There is no
//! interpolation between table entries to add error and no input chunking:
//! each input sample yields its outputs at once, so nothing is held back
//! beyond the filter's own delay. One specification serves both directions,
//! set by the lower of the two rates `fs`:
//!
//! - pass band to 0.43 fs (3.44 kHz at 8 kHz): tones there come out with an
//!   SNR of 60 dB or more against the ideal signal (gain and phase errors,
//!   images, aliases and rounding all counted as noise);
//! - downsampling: everything from 0.55 fs up is at least 60 dB down, so
//!   24 kHz TTS audio does not fold back into an 8 kHz call;
//! - upsampling: images of the pass band (from 0.57 fs up) are 60 dB down.
//!
//! The transition band is spent where little speech energy is (3.44–4.4 kHz
//! at 8 kHz) because its width sets the filter length, and so the delay:
//! 2.4–2.8 ms for pairs involving 8 kHz, 1.2–1.4 ms with 16 kHz, under 1 ms
//! between 24 and 48 kHz. `resample_tests.rs` measures all of this for every
//! pair.
//!
//! This replaced rubato's asynchronous sinc resampler (with an exact
//! polyphase table, the same filter): rubato steps a floating-point read
//! position and rounds it for every output sample, which cost more than the
//! dot products themselves — a third of the gateway's CPU at 200 calls
//! with 16 kHz bots.

use std::f64::consts::PI;
use std::sync::{Arc, OnceLock};

use crate::frame::{AudioFrame, MAX_FRAME_SAMPLES};

/// Rates the media path uses: G.711, wideband bots, OpenAI-style 24 kHz, Opus.
pub const SUPPORTED_RATES: [u32; 4] = [8000, 16_000, 24_000, 48_000];

/// Top of the pass band, as a fraction of the lower rate.
const PASS_EDGE: f64 = 0.43;
/// Start of the stop band when downsampling: anything above would alias.
const STOP_EDGE_DOWN: f64 = 0.55;
/// Start of the stop band when upsampling: the lowest image of the pass
/// band. Content between the pass edge and Nyquist images into the
/// transition band only partly attenuated; in exchange the wider transition
/// allows a shorter filter, and so less delay.
const STOP_EDGE_UP: f64 = 1.0 - PASS_EDGE;

/// Length of a Blackman-windowed sinc, in input samples, times the width of
/// its transition band as a fraction of the input rate. Blackman's stop band
/// sits near -74 dB. Measured: 5.5 leaves every pair at least 5 dB above
/// both 60 dB targets; 5.0 already drops aliasing to 63 dB.
const BLACKMAN_WIDTH: f64 = 5.5;

/// The filter's length is rounded up to a multiple of this many taps.
const TAP_STEP: usize = 8;

/// Dot products run over this many lanes at once, which lets the compiler
/// vectorise them; branches are padded to a multiple of it with zero taps
/// (at the old end: the filter and its delay do not change).
const LANES: usize = 16;

/// Coefficients are fixed point with this many fraction bits (Q15). Integer
/// dot products of `i16` pairs (`pmaddwd`: 16 products a step with AVX2,
/// twice the `f32` rate, and no conversion of the input) are exact, so the
/// sum's order cannot change a sample. Every tap but the copied one (see
/// `copy`) is below 1 in magnitude; a branch's sum of |taps| stays under
/// 1.5, so the `i32` sum cannot overflow. Against `f32` coefficients, Q15
/// measures within 1 dB of in-band SNR and 1-7 dB less alias attenuation
/// (69-75 dB against the specified 60); Q14 lost up to 12 dB.
const FRACTION_BITS: u32 = 15;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResampleError {
    #[error("unsupported sample rate {0} (supported: 8000, 16000, 24000, 48000)")]
    UnsupportedRate(u32),
}

/// Converts one mono `i16` stream from `input_rate` to `output_rate`.
pub struct Resampler {
    from: u32,
    to: u32,
    inner: Option<Inner>,
    /// Output that did not fit the caller's frame in [`Resampler::process`].
    carry: Vec<i16>,
    carry_len: usize,
    dropped: u64,
}

/// One rate pair's polyphase filter. Designing it takes a few hundred
/// sines and cosines; every call needs two, so each pair is designed once
/// per process and shared (see [`filter_for`]).
struct Filter {
    /// The ratio `L / M`: `up` output samples for every `down` input samples.
    up: usize,
    down: usize,
    /// Input samples converted per pass: one frame of output at most.
    block: usize,
    /// Branch length in input samples: the filter's, padded to a multiple
    /// of [`LANES`].
    taps: usize,
    /// `up` branches of `taps` coefficients in Q15, each stored oldest
    /// sample first, so a branch lines up with a contiguous run of input.
    branches: Vec<i16>,
    /// When upsampling, the branch that falls on input instants is the
    /// input itself, delayed: its phase and the one tap (oldest-first
    /// index) whose weight is 1. Copying skips that branch's dot product.
    copy: Option<(usize, usize)>,
    /// Exact filter delay in output samples.
    delay: f64,
}

/// A stream's state around its shared [`Filter`].
struct Inner {
    filter: Arc<Filter>,
    /// The last `taps - 1` input samples, then the block being converted.
    work: Vec<i16>,
    /// Branch of the next output, counted in steps of 1 / `up` input samples
    /// past the newest input sample: outputs are due while it is below `up`.
    phase: usize,
    out: Vec<i16>,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("passthrough", &self.inner.is_none())
            .finish()
    }
}

impl Resampler {
    /// Output follows input sample by sample: 20 ms in gives exactly 20 ms
    /// out, and audio fed in pieces of any size comes out at once.
    pub fn new(from_rate: u32, to_rate: u32) -> Result<Resampler, ResampleError> {
        for rate in [from_rate, to_rate] {
            if !SUPPORTED_RATES.contains(&rate) {
                return Err(ResampleError::UnsupportedRate(rate));
            }
        }
        let inner = (from_rate != to_rate).then(|| Inner::new(from_rate, to_rate));
        Ok(Resampler {
            from: from_rate,
            to: to_rate,
            inner,
            // Room for a few frames of backlog before output is dropped.
            carry: vec![0; 4 * MAX_FRAME_SAMPLES],
            carry_len: 0,
            dropped: 0,
        })
    }

    pub fn input_rate(&self) -> u32 {
        self.from
    }

    pub fn output_rate(&self) -> u32 {
        self.to
    }

    pub fn is_passthrough(&self) -> bool {
        self.inner.is_none()
    }

    /// Latency added by the filter, in output-rate samples, rounded to the
    /// nearest sample (some pairs delay by a fraction more).
    pub fn delay_samples(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, |i| i.filter.delay.round() as usize)
    }

    /// Output samples dropped by [`Resampler::process`] because the caller
    /// fed more than it took out.
    pub fn dropped_samples(&self) -> u64 {
        self.dropped
    }

    /// Resamples `input` into `output` (which is reset to the output rate).
    ///
    /// Meant for 20 ms input frames, each of which yields exactly 20 ms of
    /// output. Other input lengths work: output beyond [`MAX_FRAME_SAMPLES`]
    /// is held over to the next call (up to 80 ms, beyond which it is
    /// dropped and counted). Use [`Resampler::process_any`] for large or
    /// irregular input.
    pub fn process(&mut self, input: &[i16], output: &mut AudioFrame) {
        // Only the length and rate: zeroing 1.9 KB per frame cost more
        // than the copy that follows.
        output.reset(self.to);
        let carried = self.carry_len.min(MAX_FRAME_SAMPLES);
        output.fill(carried).copy_from_slice(&self.carry[..carried]);
        self.carry.copy_within(carried..self.carry_len, 0);
        self.carry_len -= carried;

        let Self {
            inner,
            carry,
            carry_len,
            dropped,
            ..
        } = self;
        let mut emit = |samples: &[i16]| {
            let have = output.len();
            let direct = if *carry_len == 0 {
                samples.len().min(MAX_FRAME_SAMPLES - have)
            } else {
                0
            };
            output.fill(have + direct)[have..].copy_from_slice(&samples[..direct]);
            let rest = &samples[direct..];
            let room = carry.len() - *carry_len;
            let kept = rest.len().min(room);
            carry[*carry_len..*carry_len + kept].copy_from_slice(&rest[..kept]);
            *carry_len += kept;
            *dropped += (rest.len() - kept) as u64;
        };
        match inner {
            Some(inner) => inner.run(input, &mut emit),
            None => emit(input),
        }
    }

    /// Resamples any amount of input, calling `emit` with each block of
    /// output (at most [`MAX_FRAME_SAMPLES`], and a 20 ms input frame is
    /// always one block; passthrough hands `input` straight on).
    pub fn process_any(&mut self, input: &[i16], mut emit: impl FnMut(&[i16])) {
        match &mut self.inner {
            Some(inner) => inner.run(input, &mut emit),
            None => emit(input),
        }
    }

    /// Forgets filter state and held-over output, for a new stream.
    pub fn reset(&mut self) {
        if let Some(inner) = &mut self.inner {
            inner.reset();
        }
        self.carry_len = 0;
    }
}

/// The filter for `from` → `to`, designed on first use. Both rates must
/// be in [`SUPPORTED_RATES`].
fn filter_for(from: u32, to: u32) -> Arc<Filter> {
    const PAIRS: usize = SUPPORTED_RATES.len() * SUPPORTED_RATES.len();
    static FILTERS: [OnceLock<Arc<Filter>>; PAIRS] = [const { OnceLock::new() }; PAIRS];
    let index = |rate: u32| {
        SUPPORTED_RATES
            .iter()
            .position(|&supported| supported == rate)
            .expect("checked by Resampler::new")
    };
    FILTERS[index(from) * SUPPORTED_RATES.len() + index(to)]
        .get_or_init(|| Arc::new(Filter::design(from, to)))
        .clone()
}

impl Inner {
    fn new(from: u32, to: u32) -> Inner {
        let filter = filter_for(from, to);
        let mut work = Vec::with_capacity(filter.taps - 1 + filter.block);
        work.resize(filter.taps - 1, 0);
        Inner {
            filter,
            work,
            phase: 0,
            out: vec![0; MAX_FRAME_SAMPLES],
        }
    }
}

impl Filter {
    fn design(from: u32, to: u32) -> Filter {
        let gcd = gcd(from, to);
        let (up, down) = ((to / gcd) as usize, (from / gcd) as usize);
        let lower = f64::from(from.min(to));
        let stop = if to > from {
            STOP_EDGE_UP
        } else {
            STOP_EDGE_DOWN
        };
        let filter_taps = BLACKMAN_WIDTH * f64::from(from) / ((stop - PASS_EDGE) * lower);
        let filter_taps = (filter_taps.ceil() as usize).next_multiple_of(TAP_STEP);
        let taps = filter_taps.next_multiple_of(LANES);
        // The prototype runs at `up` times the input rate; its cut-off sits
        // in the middle of the transition band. Upsampling, that middle is
        // the input's Nyquist rate, so the sinc is zero every `up` samples
        // from its centre: centred on a sample (an odd length, the last tap
        // left zero), one branch is a plain copy of the input.
        let length = if to > from {
            filter_taps * up - 1
        } else {
            filter_taps * up
        };
        let cutoff = (PASS_EDGE + stop) / 2.0 * lower / (f64::from(from) * up as f64);
        let centre = (length - 1) as f64 / 2.0;
        let prototype: Vec<f64> = (0..length)
            .map(|j| {
                let x = j as f64 - centre;
                let sinc = if x == 0.0 {
                    2.0 * cutoff
                } else {
                    (2.0 * PI * cutoff * x).sin() / (PI * x)
                };
                // Blackman over `length + 1` points, so no tap is wasted on
                // a zero at either end.
                let w = 2.0 * PI * (j + 1) as f64 / (length + 1) as f64;
                sinc * (0.42 - 0.5 * w.cos() + 0.08 * (2.0 * w).cos())
            })
            .collect();
        let mut exact = vec![0.0f64; up * taps];
        for (phase, branch) in exact.chunks_exact_mut(taps).enumerate() {
            // Tap k weighs the input k samples before the newest; stored
            // oldest first, after the padding. Each branch is scaled to
            // unit gain at DC.
            let tap = |k: usize| prototype.get(phase + k * up).copied().unwrap_or(0.0);
            let gain: f64 = (0..filter_taps).map(tap).sum();
            let padding = taps - filter_taps;
            for (t, coefficient) in branch[padding..].iter_mut().enumerate() {
                *coefficient = tap(filter_taps - 1 - t) / gain;
            }
        }
        let copy = exact
            .chunks_exact(taps)
            .enumerate()
            .find_map(|(phase, branch)| Some((phase, single_unit_tap(branch)?)));
        // Every other tap is below 1 in magnitude, so fits Q15; the copied
        // branch, whose one tap is exactly 1, is never multiplied and
        // stays zero.
        let scale = f64::from(1u32 << FRACTION_BITS);
        let branches = exact
            .chunks_exact(taps)
            .enumerate()
            .flat_map(|(phase, branch)| {
                let copied = copy.is_some_and(|(p, _)| p == phase);
                branch.iter().map(move |&c| {
                    let q = if copied { 0.0 } else { (c * scale).round() };
                    q.clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16
                })
            })
            .collect();
        Filter {
            up,
            down,
            // At most one frame of output per block, so `out` stays one frame.
            block: MAX_FRAME_SAMPLES.min(MAX_FRAME_SAMPLES * down / up).max(1),
            taps,
            branches,
            copy,
            delay: centre / down as f64,
        }
    }
}

impl Inner {
    fn reset(&mut self) {
        self.work.clear();
        self.work.resize(self.filter.taps - 1, 0);
        self.phase = 0;
    }

    /// Runs the AVX2 loop where the CPU has it: `pmaddwd` takes 16 taps a
    /// step. Integer sums are exact in any order, so the output is
    /// bit-identical to the portable loop's (a test compares them).
    fn run(&mut self, input: &[i16], emit: &mut dyn FnMut(&[i16])) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { self.run_avx2(input, emit) };
            return;
        }
        self.run_portable(input, emit);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&mut self, input: &[i16], emit: &mut dyn FnMut(&[i16])) {
        // The closure shares this function's features: `dot_avx2` inlines.
        self.run_with(input, emit, |a, b| dot_avx2(a, b));
    }

    fn run_portable(&mut self, input: &[i16], emit: &mut dyn FnMut(&[i16])) {
        self.run_with(input, emit, dot);
    }

    #[inline(always)]
    fn run_with(
        &mut self,
        input: &[i16],
        emit: &mut dyn FnMut(&[i16]),
        dot: impl Fn(&[i16], &[i16]) -> i32,
    ) {
        let Inner {
            filter,
            work,
            phase,
            out,
        } = self;
        let taps = filter.taps;
        for block in input.chunks(filter.block) {
            work.truncate(taps - 1);
            work.extend_from_slice(block);
            let mut n = 0;
            for newest in 0..block.len() {
                let window = &work[newest..newest + taps];
                while *phase < filter.up {
                    out[n] = match filter.copy {
                        Some((copied, tap)) if copied == *phase => window[tap],
                        _ => to_sample(dot(window, &filter.branches[*phase * taps..][..taps])),
                    };
                    n += 1;
                    *phase += filter.down;
                }
                *phase -= filter.up;
            }
            let len = work.len();
            work.copy_within(len - (taps - 1).., 0);
            emit(&out[..n]);
        }
    }
}

/// `a · b` in Q15 for slices whose length is a multiple of [`LANES`]. The
/// compiler vectorises this into widening multiplies, not `pmaddwd` (even
/// written as pairs), so the AVX2 loop uses [`dot_avx2`] instead.
fn dot(a: &[i16], b: &[i16]) -> i32 {
    let mut acc = [0i32; LANES];
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for lane in 0..LANES {
            acc[lane] += i32::from(x[lane]) * i32::from(y[lane]);
        }
    }
    acc.iter().sum()
}

/// [`dot`] with `pmaddwd`: 16 products and 8 pairwise sums a step. A pair
/// cannot overflow: no two neighbouring taps of a windowed sinc are both
/// near 1, so a pair's sum stays below 2^31.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_avx2(a: &[i16], b: &[i16]) -> i32 {
    use std::arch::x86_64::*;
    let mut acc = _mm256_setzero_si256();
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        // SAFETY: each chunk is exactly 16 i16 (32 bytes); loadu takes any alignment.
        let (x, y) = unsafe {
            (
                _mm256_loadu_si256(x.as_ptr().cast()),
                _mm256_loadu_si256(y.as_ptr().cast()),
            )
        };
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x, y));
    }
    let sum = _mm_add_epi32(
        _mm256_castsi256_si128(acc),
        _mm256_extracti128_si256::<1>(acc),
    );
    let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b01_00_11_10>(sum));
    let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b10_11_00_01>(sum));
    _mm_cvtsi128_si32(sum)
}

/// A Q15 sum as a sample: rounded half away from zero, saturated.
#[inline(always)]
fn to_sample(sum: i32) -> i16 {
    let half = 1 << (FRACTION_BITS - 1);
    let magnitude = (sum.unsigned_abs() + half) >> FRACTION_BITS;
    let rounded = if sum < 0 {
        -(magnitude as i64)
    } else {
        magnitude as i64
    };
    rounded.clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16
}

/// The index of the one tap weighing 1 in a branch whose others are zero
/// (to rounding: the sinc's zeros come out near 1e-17).
fn single_unit_tap(branch: &[f64]) -> Option<usize> {
    let unit = branch.iter().position(|&c| (c - 1.0).abs() < 1e-9)?;
    let others_zero = branch
        .iter()
        .enumerate()
        .all(|(t, &c)| t == unit || c.abs() < 1e-9);
    others_zero.then_some(unit)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
#[path = "resample_tests.rs"]
mod tests;
