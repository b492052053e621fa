//! Tests for [`super::Resampler`].

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
}

/// The echo canceller regroups its 48 kHz stream into 10 ms module frames,
/// so every 20 ms chunk must give exactly 20 ms of output, from the first
/// one on, however long the call.
#[test]
fn every_chunk_yields_exactly_20ms() {
    for (from, to) in pairs() {
        let mut rs = Resampler::new(from, to).unwrap();
        let input = vec![0i16; from as usize / 50];
        let mut sizes = Vec::new();
        // Two minutes.
        for _ in 0..6000 {
            rs.process_any(&input, |s| sizes.push(s.len()));
        }
        let expected = to as usize / 50;
        assert!(
            sizes.iter().all(|&n| n == expected),
            "{from}->{to}: {:?}",
            &sizes[..8]
        );
    }
}

/// Every call opens two resamplers: the filter of a rate pair is designed
/// once and shared, while each stream keeps its own state.
#[test]
fn streams_of_one_rate_pair_share_its_filter() {
    let mut first = Resampler::new(8000, 16_000).unwrap();
    let second = Resampler::new(8000, 16_000).unwrap();
    let filter = |rs: &Resampler| rs.inner.as_ref().unwrap().filter.clone();
    assert!(Arc::ptr_eq(&filter(&first), &filter(&second)));
    let reverse = Resampler::new(16_000, 8000).unwrap();
    assert!(!Arc::ptr_eq(&filter(&first), &filter(&reverse)));
    let mut out = AudioFrame::new(0);
    first.process(&[1000; 160], &mut out);
    assert_ne!(
        first.inner.as_ref().unwrap().work,
        second.inner.as_ref().unwrap().work,
        "state is per stream"
    );
}

/// Upsampling, every `up`-th output falls on an input instant and is that
/// input sample itself (the branch is copied, not filtered); the others
/// are interpolated. Downsampling has no such branch.
#[test]
fn upsampling_passes_input_samples_through_exactly() {
    for (from, to) in pairs() {
        let rs = Resampler::new(from, to).unwrap();
        let inner = rs.inner.as_ref().unwrap();
        assert_eq!(inner.filter.copy.is_some(), to > from, "{from}->{to}");
    }
    // Pseudo-random samples: a filtered output would not equal them.
    let input: Vec<i16> = (0..8000u32)
        .map(|n| (n.wrapping_mul(2_654_435_761) >> 16) as i16)
        .collect();
    for to in [16_000u32, 48_000] {
        let (out, rs) = run_frames(8000, to, &input);
        let up = (to / 8000) as usize;
        let delay = rs.delay_samples();
        assert_eq!(
            rs.inner.as_ref().unwrap().filter.delay,
            delay as f64,
            "8000->{to}"
        );
        let copied = (0..input.len())
            .filter(|m| up * m + delay < out.len())
            .filter(|&m| out[up * m + delay] == input[m])
            .count();
        assert_eq!(copied, (out.len() - delay).div_ceil(up), "8000->{to}");
        // ...and the samples between them are not copies of anything.
        assert_ne!(out[up * 100 + delay + 1], input[100]);
    }
}

#[test]
fn no_pair_delays_by_more_than_3ms() {
    for (from, to) in pairs() {
        let rs = Resampler::new(from, to).unwrap();
        let ms = rs.delay_samples() as f64 * 1000.0 / to as f64;
        assert!(ms <= 3.0, "{from}->{to}: {ms:.2} ms");
    }
}

// ---------------------------------------------------------------------------
// Measurements for every pair of supported rates: in-band SNR against the
// ideal signal, alias attenuation, continuity across frames, and delay.
//
// Specification (all pairs): the pass band runs to PASS_EDGE × the lower rate
// (3.44 kHz at 8 kHz, just above the 3.4 kHz telephone band); tones from
// ALIAS_EDGE × the output rate up to 0.95 × the input Nyquist frequency must
// come out of a downsampler at least 60 dB down.

use std::f64::consts::TAU;

const PASS_EDGE: f64 = 0.43;
const ALIAS_EDGE: f64 = 0.55;
const AMPLITUDE: f64 = 16_000.0;
const REQUIRED_DB: f64 = 60.0;

/// The 12 conversions between distinct supported rates.
fn pairs() -> Vec<(u32, u32)> {
    let mut pairs = Vec::new();
    for from in SUPPORTED_RATES {
        for to in SUPPORTED_RATES {
            if from != to {
                pairs.push((from, to));
            }
        }
    }
    pairs
}

fn quantize(x: impl Iterator<Item = f64>) -> Vec<i16> {
    x.map(|v| v.round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

/// A sum of in-band tones at random frequencies and phases: broadband and
/// aperiodic enough for one sharp cross-correlation peak, yet exactly known
/// at any instant. Frequencies are log-uniform, so most of the energy sits
/// where a half-sample lag barely lowers the correlation.
struct MultiTone(Vec<(f64, f64)>);

impl MultiTone {
    fn new(top: f64) -> MultiTone {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        MultiTone(
            (0..24)
                .map(|_| {
                    let f = 100.0 * (top / 100.0).powf(rng.random_range(0.0..1.0));
                    (f, rng.random_range(0.0..TAU))
                })
                .collect(),
        )
    }

    fn at(&self, t: f64) -> f64 {
        self.0
            .iter()
            .map(|&(f, p)| (TAU * f * t + p).sin())
            .sum::<f64>()
            * 900.0
    }
}

/// Sum of squared differences between `out` and `ideal(n - delay)` over the
/// steady part of the output (after `skip` samples).
fn error_energy(out: &[i16], skip: usize, delay: f64, ideal: &dyn Fn(f64) -> f64) -> f64 {
    out[skip..]
        .iter()
        .enumerate()
        .map(|(i, &y)| (y as f64 - ideal((i + skip) as f64 - delay)).powi(2))
        .sum()
}

/// The resampler's actual (fractional) delay in output samples: the integer
/// cross-correlation peak against the ideal signal, refined to 1/1000 sample
/// by a golden-section search on the error energy.
fn measure_delay(from: u32, to: u32) -> f64 {
    let probe = MultiTone::new(PASS_EDGE * from.min(to) as f64);
    let input = quantize((0..from as usize / 2).map(|n| probe.at(n as f64 / from as f64)));
    let (out, _) = run_frames(from, to, &input);
    let ideal = |n: f64| {
        if n < 0.0 {
            0.0
        } else {
            probe.at(n / to as f64)
        }
    };
    let max_lag = to as usize / 100; // 10 ms
    let skip = max_lag + to as usize / 50;
    let table: Vec<f64> = (0..out.len()).map(|n| ideal(n as f64)).collect();
    let corr = |lag: usize| -> f64 {
        (skip..out.len())
            .map(|n| out[n] as f64 * table[n - lag])
            .sum()
    };
    let lag = (0..max_lag)
        .max_by(|&a, &b| corr(a).total_cmp(&corr(b)))
        .unwrap() as f64;
    let energy = |d: f64| error_energy(&out, skip, d, &ideal);
    let (mut lo, mut hi) = (lag - 1.0, lag + 1.0);
    let g = (5f64.sqrt() - 1.0) / 2.0;
    while hi - lo > 1e-3 {
        let (a, b) = (hi - g * (hi - lo), lo + g * (hi - lo));
        if energy(a) < energy(b) {
            hi = b;
        } else {
            lo = a;
        }
    }
    (lo + hi) / 2.0
}

/// Signal-to-(noise + distortion) in dB of `out` against `ideal` delayed by
/// `delay`, skipping the first `skip` samples. Gain error, phase error,
/// images, aliases and rounding all count as noise.
fn snr_db(out: &[i16], skip: usize, delay: f64, ideal: &dyn Fn(f64) -> f64) -> f64 {
    let signal: f64 = (skip..out.len())
        .map(|n| ideal(n as f64 - delay).powi(2))
        .sum();
    10.0 * (signal / error_energy(out, skip, delay, ideal)).log10()
}

/// Start-up to leave out of measurements: the filter's delay plus 20 ms.
fn settle(rs: &Resampler) -> usize {
    rs.delay_samples() + rs.output_rate() as usize / 50
}

#[test]
fn delay_samples_matches_measured_delay_for_every_pair() {
    let mut failures = Vec::new();
    for (from, to) in pairs() {
        let measured = measure_delay(from, to);
        let rs = Resampler::new(from, to).unwrap();
        let reported = rs.delay_samples();
        eprintln!(
            "{from:>5} -> {to:>5}: delay reported {reported} measured {measured:.3} samples \
             ({:.2} ms)",
            measured * 1000.0 / to as f64
        );
        if (measured - reported as f64).abs() > 1.0 {
            failures.push(format!(
                "{from}->{to}: reported {reported}, measured {measured:.3}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn passband_snr_is_at_least_60db_for_every_pair() {
    let mut failures = Vec::new();
    for (from, to) in pairs() {
        let delay = measure_delay(from, to);
        let edge = PASS_EDGE * from.min(to) as f64;
        let mut worst = (f64::INFINITY, 0.0);
        // 100 Hz to the pass-band edge, log-spaced, edge included.
        for k in 0..=12 {
            let f = 100.0 * (edge / 100.0).powf(k as f64 / 12.0);
            let input = quantize(
                (0..from as usize / 2)
                    .map(|n| AMPLITUDE * (TAU * f * n as f64 / from as f64).sin()),
            );
            let (out, rs) = run_frames(from, to, &input);
            let ideal = |n: f64| AMPLITUDE * (TAU * f * n / to as f64).sin();
            let snr = snr_db(&out, settle(&rs), delay, &ideal);
            if snr < worst.0 {
                worst = (snr, f);
            }
        }
        eprintln!(
            "{from:>5} -> {to:>5}: worst in-band SNR {:.1} dB at {:.0} Hz",
            worst.0, worst.1
        );
        if worst.0 < REQUIRED_DB {
            failures.push(format!(
                "{from}->{to}: SNR {:.1} dB at {:.0} Hz",
                worst.0, worst.1
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn downsampling_attenuates_aliases_by_60db() {
    let mut failures = Vec::new();
    for (from, to) in pairs().into_iter().filter(|(from, to)| to < from) {
        let lowest = ALIAS_EDGE * to as f64;
        let highest = 0.95 * from as f64 / 2.0;
        let mut worst = (f64::INFINITY, lowest);
        for k in 0..=16 {
            let f = lowest + (highest - lowest) * k as f64 / 16.0;
            let input = quantize(
                (0..from as usize / 2)
                    .map(|n| AMPLITUDE * (TAU * f * n as f64 / from as f64).sin()),
            );
            let (out, rs) = run_frames(from, to, &input);
            // Whatever comes out, at any frequency, is alias.
            let steady = &out[settle(&rs)..];
            let attenuation = -db(rms(steady) * 2f64.sqrt() / AMPLITUDE);
            if attenuation < worst.0 {
                worst = (attenuation, f);
            }
        }
        eprintln!(
            "{from:>5} -> {to:>5}: worst alias attenuation {:.1} dB at {:.0} Hz \
             ({lowest:.0}..{highest:.0} Hz)",
            worst.0, worst.1
        );
        if worst.0 < REQUIRED_DB {
            failures.push(format!(
                "{from}->{to}: alias only {:.1} dB down at {:.0} Hz",
                worst.0, worst.1
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A 2 s logarithmic sweep over the whole pass band, fed 20 ms at a time:
/// the output must follow the ideal sweep everywhere, frame boundaries
/// included, and must equal what one call over the whole input gives.
#[test]
fn sweeps_are_continuous_across_frame_boundaries() {
    let mut failures = Vec::new();
    for (from, to) in pairs() {
        let delay = measure_delay(from, to);
        let (f0, f1, seconds) = (100.0, PASS_EDGE * from.min(to) as f64, 2.0);
        let k = (f1 / f0).ln() / seconds;
        let sweep = |t: f64| AMPLITUDE * (TAU * f0 * ((k * t).exp() - 1.0) / k).sin();
        let input = quantize((0..from as usize * 2).map(|n| sweep(n as f64 / from as f64)));

        let mut rs = Resampler::new(from, to).unwrap();
        let mut framed = Vec::new();
        let mut boundaries = Vec::new();
        let mut buf = AudioFrame::new(0);
        for chunk in input.chunks(from as usize / 50) {
            rs.process(chunk, &mut buf);
            framed.extend_from_slice(buf.samples());
            boundaries.push(framed.len());
        }
        let mut whole = Vec::new();
        Resampler::new(from, to)
            .unwrap()
            .process_any(&input, |s| whole.extend_from_slice(s));
        assert_eq!(framed, whole, "{from}->{to}: framing changed the output");

        let ideal = |n: f64| if n < 0.0 { 0.0 } else { sweep(n / to as f64) };
        let skip = settle(&rs);
        let snr = snr_db(&framed, skip, delay, &ideal);
        // Largest error, and largest error in the step from one sample to
        // the next (a click), within two samples of any frame boundary; the
        // step error elsewhere, for comparison.
        let error = |n: usize| framed[n] as f64 - ideal(n as f64 - delay);
        let step_error = |n: usize| (error(n) - error(n - 1)).abs();
        let near = |n: usize| boundaries.iter().any(|&b| n + 2 >= b && n <= b + 2);
        let (edges, inner): (Vec<usize>, Vec<usize>) = (skip..framed.len()).partition(|&n| near(n));
        let edge_error = edges.iter().map(|&n| error(n).abs()).fold(0.0, f64::max);
        let edge_step = edges.iter().map(|&n| step_error(n)).fold(0.0, f64::max);
        let inner_step = inner.iter().map(|&n| step_error(n)).fold(0.0, f64::max);
        eprintln!(
            "{from:>5} -> {to:>5}: sweep SNR {snr:.1} dB, worst error at frame edges \
             {:.1} dB, step error {edge_step:.1} there vs {inner_step:.1} elsewhere",
            db(edge_error / AMPLITUDE)
        );
        if snr < REQUIRED_DB {
            failures.push(format!("{from}->{to}: sweep SNR {snr:.1} dB"));
        }
        if db(edge_error / AMPLITUDE) > -REQUIRED_DB {
            failures.push(format!(
                "{from}->{to}: error {edge_error:.1} at a frame boundary"
            ));
        }
        // Two LSB of slack: both errors include the output's rounding.
        if edge_step > inner_step + 2.0 {
            failures.push(format!("{from}->{to}: click at a frame boundary"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn reset_starts_a_new_stream_like_a_fresh_resampler() {
    for (from, to) in pairs() {
        let input = sine(from, 440.0, 12_000.0, 0.2);
        let mut used = Resampler::new(from, to).unwrap();
        let mut sink = Vec::new();
        used.process_any(&input[..input.len() / 3], |s| sink.extend_from_slice(s));
        used.reset();
        let (mut again, mut fresh) = (Vec::new(), Vec::new());
        used.process_any(&input, |s| again.extend_from_slice(s));
        Resampler::new(from, to)
            .unwrap()
            .process_any(&input, |s| fresh.extend_from_slice(s));
        assert_eq!(again, fresh, "{from}->{to}");
    }
}

/// A bot hands back frames of any size, off the 20 ms grid. Nothing waits
/// for a chunk to fill: every input sample's outputs come out at once, so
/// what is held back is under one output sample.
#[test]
fn odd_sized_input_is_not_held_back() {
    for (from, to) in pairs() {
        let mut rs = Resampler::new(from, to).unwrap();
        let input = sine(from, 440.0, 8000.0, 1.0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (mut fed, mut out) = (0usize, 0usize);
        let mut rest = &input[..];
        while !rest.is_empty() {
            let n = rng.random_range(1..=700).min(rest.len());
            rs.process_any(&rest[..n], |c: &[i16]| out += c.len());
            fed += n;
            rest = &rest[n..];
            let due = (fed * to as usize).div_ceil(from as usize);
            assert_eq!(out, due, "{from}->{to} after {fed} samples");
        }
    }
}

/// Where the CPU runs the AVX2 loop, it gives exactly what the portable
/// loop gives, for every pair: speed must not change a sample.
#[test]
fn the_simd_loop_matches_the_portable_one_bit_for_bit() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for from in SUPPORTED_RATES {
        for to in SUPPORTED_RATES {
            if from == to {
                continue;
            }
            let input: Vec<i16> = (0..from as usize / 5).map(|_| rng.random()).collect();
            let mut dispatched = Resampler::new(from, to).unwrap();
            let mut portable = Resampler::new(from, to).unwrap();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for frame in input.chunks(from as usize / 50) {
                let inner = dispatched.inner.as_mut().unwrap();
                inner.run(frame, &mut |out| a.extend_from_slice(out));
                let inner = portable.inner.as_mut().unwrap();
                inner.run_portable(frame, &mut |out| b.extend_from_slice(out));
            }
            assert!(!a.is_empty());
            assert_eq!(a, b, "{from} -> {to}");
        }
    }
}
