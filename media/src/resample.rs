//! Sample-rate conversion between the telephone side and bots.
//!
//! Wraps rubato's asynchronous resampler with a fixed 20 ms input chunk.
//! Upsampling uses cubic polynomial interpolation (tiny delay, and there is
//! nothing to alias); downsampling uses a windowed sinc so that energy above
//! the new Nyquist frequency is filtered out instead of folding back.
//! State carries across calls, so frame boundaries do not click.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, FixedAsync, PolynomialDegree, Resampler as _, SincInterpolationParameters,
    WindowFunction,
};

use crate::frame::{AudioFrame, FRAME_MS, MAX_FRAME_SAMPLES};

/// Rates the media path uses: G.711, wideband bots, OpenAI-style 24 kHz, Opus.
pub const SUPPORTED_RATES: [u32; 4] = [8000, 16_000, 24_000, 48_000];

/// Sinc length for downsampling: long enough for a cutoff close to the new
/// Nyquist frequency with high stop-band attenuation, at ~5 ms of delay at 24 kHz.
const SINC_LEN: usize = 256;

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
    pub fn new(from_rate: u32, to_rate: u32) -> Result<Resampler, ResampleError> {
        for rate in [from_rate, to_rate] {
            if !SUPPORTED_RATES.contains(&rate) {
                return Err(ResampleError::UnsupportedRate(rate));
            }
        }
        let inner = if from_rate == to_rate {
            None
        } else {
            Some(Inner::new(from_rate, to_rate)?)
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

    /// Latency added by the filter, in output-rate samples. Input held back
    /// while a 20 ms chunk fills up comes on top when feeding odd sizes.
    pub fn delay_samples(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.rubato.output_delay())
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
    fn new(from: u32, to: u32) -> Result<Inner, ResampleError> {
        let chunk = (from * FRAME_MS / 1000) as usize;
        let ratio = to as f64 / from as f64;
        let rubato = if to > from {
            Async::new_poly(
                ratio,
                1.0,
                PolynomialDegree::Cubic,
                chunk,
                1,
                FixedAsync::Input,
            )
        } else {
            let params =
                SincInterpolationParameters::new(SINC_LEN, WindowFunction::BlackmanHarris2);
            Async::new_sinc(ratio, 1.0, &params, chunk, 1, FixedAsync::Input)
        }
        .map_err(|e| ResampleError::Construction(e.to_string()))?;
        let out_max = rubato.output_frames_max();
        Ok(Inner {
            rubato,
            chunk,
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

#[cfg(test)]
#[path = "resample_tests.rs"]
mod tests;
