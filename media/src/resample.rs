//! Sample-rate conversion between the telephone side and bots.
//!
//! Wraps rubato's sinc resampler with a fixed 20 ms input chunk, one
//! instance per stream direction: filter state carries across calls, so
//! frame boundaries do not click.
//!
//! Every ratio between the supported rates is rational with a small
//! denominator, so the windowed-sinc table is built with exactly as many
//! phases as the ratio needs ([`SincInterpolationType::Nearest`]): each
//! output sample is one dot product with an exact polyphase FIR branch, with
//! no interpolation between table entries to add error. One specification
//! serves both directions, set by the lower of the two rates `fs`:
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

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, FixedAsync, Resampler as _, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

use crate::frame::{AudioFrame, FRAME_MS, MAX_FRAME_SAMPLES};

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
/// Input chunk of a [`Resampler::streaming`] resampler: 2.5 ms is a whole
/// number of samples, and of output samples, at every supported rate.
const STREAMING_CHUNK_US: u32 = 2_500;
/// Relative excess of the ratio given to rubato; see [`Inner::new`].
const RATIO_BIAS: f64 = 1e-12;

/// Length of a Blackman-windowed sinc, in input samples, times the width of
/// its transition band as a fraction of the input rate. Blackman is the
/// narrowest-transition window rubato offers that gets past 60 dB (its
/// stop band sits near -74 dB). Measured: 5.5 leaves every pair at least
/// 5 dB above both 60 dB targets; 5.0 already drops aliasing to 63 dB.
const BLACKMAN_WIDTH: f64 = 5.5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResampleError {
    #[error("unsupported sample rate {0} (supported: 8000, 16000, 24000, 48000)")]
    UnsupportedRate(u32),
    #[error("resampler construction failed: {0}")]
    Construction(String),
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

struct Inner {
    rubato: Async<f32>,
    chunk: usize,
    /// Exact filter delay in output samples.
    delay: f64,
    pending: Vec<f32>,
    pending_len: usize,
    out: Vec<f32>,
    out_i16: Vec<i16>,
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
    /// For 20 ms frames in, one frame out per call ([`Resampler::process`]).
    pub fn new(from_rate: u32, to_rate: u32) -> Result<Resampler, ResampleError> {
        Self::with_chunk_us(from_rate, to_rate, FRAME_MS * 1000)
    }

    /// For audio arriving in pieces of any size ([`Resampler::process_any`])
    /// that should come out as soon as possible: input waits for a 2.5 ms
    /// chunk, not a 20 ms one. A bot streaming 20 ms frames that do not fall
    /// on the chunk grid (the first frame of a resampled stream is a few
    /// samples short) would otherwise have each frame held ~20 ms.
    pub fn streaming(from_rate: u32, to_rate: u32) -> Result<Resampler, ResampleError> {
        Self::with_chunk_us(from_rate, to_rate, STREAMING_CHUNK_US)
    }

    fn with_chunk_us(
        from_rate: u32,
        to_rate: u32,
        chunk_us: u32,
    ) -> Result<Resampler, ResampleError> {
        for rate in [from_rate, to_rate] {
            if !SUPPORTED_RATES.contains(&rate) {
                return Err(ResampleError::UnsupportedRate(rate));
            }
        }
        let inner = if from_rate == to_rate {
            None
        } else {
            Some(Inner::new(from_rate, to_rate, chunk_us)?)
        };
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
    /// nearest sample (some pairs delay by a fraction more). Input held back
    /// while a 20 ms chunk fills up comes on top when feeding odd sizes.
    pub fn delay_samples(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.delay.round() as usize)
    }

    /// Output samples dropped by [`Resampler::process`] because the caller
    /// fed more than it took out.
    pub fn dropped_samples(&self) -> u64 {
        self.dropped
    }

    /// Resamples `input` into `output` (which is reset to the output rate).
    ///
    /// Meant for 20 ms input frames, each of which yields about 20 ms of
    /// output (a sample or two either way, as rubato's chunks fall). Other
    /// input lengths work: input is buffered internally until a full 20 ms
    /// chunk is available, and output beyond [`MAX_FRAME_SAMPLES`] is held
    /// over to the next call (up to 80 ms, beyond which it is dropped and
    /// counted). Use [`Resampler::process_any`] for large or irregular input.
    pub fn process(&mut self, input: &[i16], output: &mut AudioFrame) {
        *output = AudioFrame::new(self.to);
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
    /// output as it becomes available (about 20 ms at a time; passthrough
    /// hands `input` straight on). Input that does not complete a 20 ms chunk
    /// is kept for the next call, so the stream stays continuous.
    pub fn process_any(&mut self, input: &[i16], mut emit: impl FnMut(&[i16])) {
        match &mut self.inner {
            Some(inner) => inner.run(input, &mut emit),
            None => emit(input),
        }
    }

    /// Forgets filter state and buffered input, for a new stream.
    pub fn reset(&mut self) {
        if let Some(inner) = &mut self.inner {
            inner.rubato.reset();
            inner.pending_len = 0;
        }
        self.carry_len = 0;
    }
}

impl Inner {
    fn new(from: u32, to: u32, chunk_us: u32) -> Result<Inner, ResampleError> {
        let chunk = (u64::from(from) * u64::from(chunk_us) / 1_000_000) as usize;
        let ratio = to as f64 / from as f64;
        let lower = from.min(to) as f64;
        let stop = if to > from {
            STOP_EDGE_UP
        } else {
            STOP_EDGE_DOWN
        };
        // Filter length in input samples (rubato works in multiples of 8).
        let taps = BLACKMAN_WIDTH * from as f64 / ((stop - PASS_EDGE) * lower);
        let sinc_len = (taps.ceil() as usize).next_multiple_of(8);
        // Output instants fall on multiples of 1 / phases of an input sample.
        let gcd = gcd(from, to);
        let phases = (to / gcd) as usize;
        let params = SincInterpolationParameters::new(sinc_len, WindowFunction::Blackman)
            // Centred in the transition band, relative to the lower Nyquist.
            .f_cutoff((PASS_EDGE + stop) as f32)
            .oversampling_factor(phases)
            .interpolation(SincInterpolationType::Nearest);
        // Rubato steps its read position by adding 1 / ratio in f64. Where
        // that is not a binary fraction (1/3, 1/6, 2/3), rounding drifts the
        // position either side of the exact grid, and a drift ahead makes
        // rubato hold one output sample back to the next chunk: the 20 ms
        // chunk then yields 20 ms less one sample, which the echo
        // canceller's 10 ms framing cannot absorb. A ratio 1e-12 high keeps
        // the drift behind the grid, where the counts come out exact; it
        // adds one sample per 10^12 (months of audio).
        let rubato_ratio = ratio * (1.0 + RATIO_BIAS);
        let rubato = Async::new_sinc(rubato_ratio, 1.0, &params, chunk, 1, FixedAsync::Input)
            .map_err(|e| ResampleError::Construction(e.to_string()))?;
        // Half the filter, less one output step and one table step (1 /
        // phases of an input sample) by which rubato's output grid leads
        // the filter's centre. Its own output_delay() leaves both out, so is
        // one to two samples long.
        let delay = ratio * sinc_len as f64 / 2.0 - 1.0 - gcd as f64 / from as f64;
        let out_max = rubato.output_frames_max();
        Ok(Inner {
            rubato,
            chunk,
            delay,
            pending: vec![0.0; chunk],
            pending_len: 0,
            out: vec![0.0; out_max],
            out_i16: vec![0; out_max],
        })
    }

    fn run(&mut self, mut input: &[i16], emit: &mut dyn FnMut(&[i16])) {
        while !input.is_empty() {
            let take = (self.chunk - self.pending_len).min(input.len());
            let dst = &mut self.pending[self.pending_len..self.pending_len + take];
            for (d, &s) in dst.iter_mut().zip(&input[..take]) {
                *d = s as f32 / 32768.0;
            }
            self.pending_len += take;
            input = &input[take..];
            if self.pending_len == self.chunk {
                self.pending_len = 0;
                let n = self.process_chunk();
                emit(&self.out_i16[..n]);
            }
        }
    }

    fn process_chunk(&mut self) -> usize {
        let out_len = self.out.len();
        let (Ok(input), Ok(mut output)) = (
            InterleavedSlice::new(&self.pending[..], 1, self.chunk),
            InterleavedSlice::new_mut(&mut self.out[..], 1, out_len),
        ) else {
            return 0;
        };
        // Buffers are sized from rubato's own limits, so this cannot fail;
        // emitting nothing is the harmless fallback if it ever did.
        let Ok((_, written)) = self.rubato.process_into_buffer(&input, &mut output, None) else {
            return 0;
        };
        for (d, &s) in self.out_i16.iter_mut().zip(&self.out[..written]) {
            *d = (s * 32768.0)
                .round()
                .clamp(i16::MIN as f32, i16::MAX as f32) as i16;
        }
        written
    }
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
