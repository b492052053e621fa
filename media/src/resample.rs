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
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn sine(rate: u32, freq: f64, amplitude: f64, seconds: f64) -> Vec<i16> {
        let n = (rate as f64 * seconds) as usize;
        (0..n)
            .map(|i| {
                let t = i as f64 / rate as f64;
                (amplitude * (2.0 * std::f64::consts::PI * freq * t).sin()).round() as i16
            })
            .collect()
    }

    /// Power of `freq` in `x` by the Goertzel algorithm, as an amplitude.
    fn goertzel(x: &[i16], rate: u32, freq: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * freq / rate as f64;
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &v in x {
            let s = v as f64 + coeff * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        2.0 * power.sqrt() / x.len() as f64
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    fn db(ratio: f64) -> f64 {
        20.0 * ratio.log10()
    }

    /// Feeds one second in 20 ms frames through `process`.
    fn run_frames(from: u32, to: u32, input: &[i16]) -> (Vec<i16>, Resampler) {
        let mut rs = Resampler::new(from, to).unwrap();
        let frame = (from / 50) as usize;
        let mut out = Vec::new();
        let mut buf = AudioFrame::new(0);
        for chunk in input.chunks(frame) {
            rs.process(chunk, &mut buf);
            assert_eq!(buf.sample_rate(), to);
            assert!(buf.len() <= MAX_FRAME_SAMPLES);
            out.extend_from_slice(buf.samples());
        }
        (out, rs)
    }

    fn check_sine(from: u32, to: u32) {
        let amplitude = 16_000.0;
        let input = sine(from, 1000.0, amplitude, 1.0);
        let (out, rs) = run_frames(from, to, &input);
        let expected = to as f64;
        let len_err = (out.len() as f64 - expected).abs() / expected;
        assert!(len_err < 0.01, "{from}->{to}: {} samples", out.len());
        // Skip the filter's start-up; 0.9 s of steady state remains.
        let steady = &out[rs.delay_samples() + to as usize / 20..];
        let steady = &steady[..(to as usize * 9 / 10).min(steady.len())];
        let tone = goertzel(steady, to, 1000.0);
        let off = goertzel(steady, to, 1300.0);
        assert!(
            db(tone / amplitude).abs() < 1.0,
            "{from}->{to}: tone {tone:.0}"
        );
        assert!(db(off / tone) < -40.0, "{from}->{to}: off-tone {off:.1}");
        let level = db(rms(steady) * 2f64.sqrt() / amplitude);
        assert!(level.abs() < 1.0, "{from}->{to}: level {level:.2} dB");
    }

    #[test]
    fn upsample_8k_to_16k_keeps_frequency_and_level() {
        check_sine(8000, 16_000);
    }

    #[test]
    fn downsample_16k_to_8k_keeps_frequency_and_level() {
        check_sine(16_000, 8000);
    }

    #[test]
    fn downsample_24k_to_8k_keeps_frequency_and_level() {
        check_sine(24_000, 8000);
    }

    #[test]
    fn other_pairs_keep_frequency_and_level() {
        check_sine(8000, 48_000);
        check_sine(48_000, 8000);
        check_sine(16_000, 24_000);
    }

    #[test]
    fn output_frames_stay_near_20ms() {
        let input = sine(8000, 440.0, 8000.0, 1.0);
        let (_, _) = run_frames(8000, 48_000, &input);
        let mut rs = Resampler::new(24_000, 8000).unwrap();
        let mut buf = AudioFrame::new(0);
        let frame = sine(24_000, 440.0, 8000.0, 0.02);
        for i in 0..100 {
            rs.process(&frame, &mut buf);
            if i > 0 {
                assert!((158..=162).contains(&buf.len()), "frame {i}: {}", buf.len());
            }
        }
        assert_eq!(rs.dropped_samples(), 0);
    }

    #[test]
    fn downsampling_filters_out_what_would_alias() {
        // 6 kHz at 24 kHz would fold back to 2 kHz at 8 kHz without a filter.
        let input = sine(24_000, 6000.0, 16_000.0, 1.0);
        let (out, rs) = run_frames(24_000, 8000, &input);
        let steady = &out[rs.delay_samples() + 400..];
        let alias = goertzel(steady, 8000, 2000.0);
        assert!(
            db(alias / 16_000.0) < -60.0,
            "alias {:.1} dB",
            db(alias / 16_000.0)
        );
        assert!(db(rms(steady) / 16_000.0) < -55.0);
    }

    #[test]
    fn passthrough_is_bit_exact() {
        let mut rs = Resampler::new(16_000, 16_000).unwrap();
        assert!(rs.is_passthrough());
        assert_eq!(rs.delay_samples(), 0);
        let input: Vec<i16> = (0..320).map(|i| (i * 97 % 65536 - 32768) as i16).collect();
        let mut buf = AudioFrame::new(0);
        rs.process(&input, &mut buf);
        assert_eq!(buf.samples(), &input[..]);
        let mut got = Vec::new();
        rs.process_any(&input[..7], |s| got.extend_from_slice(s));
        assert_eq!(got, &input[..7]);
    }

    #[test]
    fn arbitrary_chunks_match_whole_frames() {
        let input = sine(24_000, 700.0, 12_000.0, 1.0);
        let (framed, _) = run_frames(24_000, 8000, &input);

        let mut rs = Resampler::new(24_000, 8000).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut streamed = Vec::new();
        let mut rest = &input[..];
        while !rest.is_empty() {
            let n = rng.random_range(1..=2000).min(rest.len());
            rs.process_any(&rest[..n], |s| streamed.extend_from_slice(s));
            rest = &rest[n..];
        }
        assert_eq!(streamed, framed);
    }

    #[test]
    fn oversized_input_to_process_is_carried_not_lost() {
        let mut rs = Resampler::new(8000, 48_000).unwrap();
        let input = sine(8000, 500.0, 8000.0, 0.06);
        let mut buf = AudioFrame::new(0);
        rs.process(&input, &mut buf);
        let mut total = buf.len();
        assert_eq!(total, MAX_FRAME_SAMPLES);
        rs.process(&[], &mut buf);
        total += buf.len();
        rs.process(&[], &mut buf);
        total += buf.len();
        // Three chunks, less what the filter's start-up holds back.
        assert!((2850..=2890).contains(&total), "{total}");
        assert_eq!(rs.dropped_samples(), 0);
        // Odd input sizes never panic.
        rs.process(&input[..7], &mut buf);
        rs.process(&input[..333], &mut buf);
    }

    #[test]
    fn unsupported_rates_are_refused() {
        assert_eq!(
            Resampler::new(44_100, 8000).unwrap_err(),
            ResampleError::UnsupportedRate(44_100)
        );
        let rs = Resampler::new(8000, 24_000).unwrap();
        assert_eq!((rs.input_rate(), rs.output_rate()), (8000, 24_000));
        assert!(rs.delay_samples() < 24);
    }
}
