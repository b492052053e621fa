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
    assert!(rs.delay_samples() < 24);
}
