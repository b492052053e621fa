use super::*;
use rand::{Rng, SeedableRng};

/// Deterministic speech-like signal: voiced "syllables" (a gliding pitch with
/// harmonics up to the band edge, falling off like a vowel's spectrum) with
/// 20 ms fades, a noisy fricative now and then, and pauses between them.
/// RMS over the talk spurts is about `level_dbfs`.
fn speech(rate: u32, seconds: f64, f0: f64, level_dbfs: f64, seed: u64) -> Vec<i16> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = (rate as f64 * seconds) as usize;
    let mut env = vec![0.0f64; n];
    let mut fricative = vec![false; n];
    let mut i = 0;
    while i < n {
        let on = (rate as f64 * rng.random_range(0.12..0.35)) as usize;
        let off = (rate as f64 * rng.random_range(0.04..0.25)) as usize;
        let fade = (rate / 50) as usize;
        let noisy = rng.random_bool(0.2);
        let gain = rng.random_range(0.6..1.0);
        for j in 0..on.min(n - i) {
            let edge = (j.min(on - j) as f64 / fade as f64).min(1.0);
            env[i + j] = gain * (0.5 - 0.5 * (std::f64::consts::PI * edge).cos());
            fricative[i + j] = noisy;
        }
        i += on + off;
    }
    let top = 0.45 * rate as f64;
    let mut phases = vec![0.0f64; 64];
    let mut raw: Vec<f64> = (0..n)
        .map(|i| {
            let t = i as f64 / rate as f64;
            if fricative[i] {
                return env[i] * rng.random_range(-0.5..0.5);
            }
            let pitch = f0 * (1.0 + 0.12 * (std::f64::consts::TAU * 0.7 * t).sin());
            let mut v = 0.0;
            for (k, phase) in phases.iter_mut().enumerate() {
                let f = pitch * (k + 1) as f64;
                if f > top {
                    break;
                }
                *phase += std::f64::consts::TAU * f / rate as f64;
                // Vowel-like: a broad peak around 700 Hz, then -6 dB/octave.
                let formant = 1.0 / (1.0 + ((f - 700.0) / 600.0).powi(2));
                v += (0.3 + formant) / (k + 1) as f64 * phase.sin();
            }
            env[i] * v
        })
        .collect();
    let active: Vec<f64> = raw.iter().copied().filter(|v| v.abs() > 1e-9).collect();
    let rms = (active.iter().map(|v| v * v).sum::<f64>() / active.len() as f64).sqrt();
    let scale = 32768.0 * 10f64.powf(level_dbfs / 20.0) / rms;
    raw.iter_mut().for_each(|v| *v *= scale);
    raw.iter()
        .map(|v| v.round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

fn noise(n: usize, level_dbfs: f64, seed: u64) -> Vec<i16> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Uniform noise has an RMS of amplitude / sqrt(3).
    let amp = 32768.0 * 10f64.powf(level_dbfs / 20.0) * 3f64.sqrt();
    (0..n)
        .map(|_| rng.random_range(-amp..amp).round() as i16)
        .collect()
}

fn mix(a: &[i16], b: &[i16]) -> Vec<i16> {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as i32 + y as i32).clamp(-32768, 32767) as i16)
        .collect()
}

/// `x` delayed by `delay` samples and scaled by `gain_db`: the echo path.
fn echo_of(x: &[i16], delay: usize, gain_db: f64) -> Vec<i16> {
    let g = 10f64.powf(gain_db / 20.0);
    (0..x.len())
        .map(|i| {
            if i < delay {
                0
            } else {
                (x[i - delay] as f64 * g).round() as i16
            }
        })
        .collect()
}

fn power(x: &[i16]) -> f64 {
    x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64
}

fn db(ratio: f64) -> f64 {
    10.0 * ratio.log10()
}

/// Samples `from..to` seconds of a signal at `rate`.
fn window(x: &[i16], rate: u32, from: f64, to: f64) -> &[i16] {
    &x[(from * rate as f64) as usize..((to * rate as f64) as usize).min(x.len())]
}

/// Runs a call: frame by frame, the far end is fed first, then the near end
/// is processed. Returns the processed near end.
fn run(aec: &mut EchoCanceller, far: &[i16], near: &[i16]) -> Vec<i16> {
    let n = aec.frame_samples();
    let mut out = Vec::with_capacity(near.len());
    let mut buf = vec![0i16; n];
    for (f, x) in far.chunks_exact(n).zip(near.chunks_exact(n)) {
        aec.far_end(f);
        buf.copy_from_slice(x);
        aec.near_end(&mut buf);
        out.extend_from_slice(&buf);
    }
    out
}

const AEC_ONLY: AudioSettings = AudioSettings {
    echo_cancellation: true,
    noise_suppression: false,
    gain_control: false,
};

const AEC_NS: AudioSettings = AudioSettings {
    echo_cancellation: true,
    noise_suppression: true,
    gain_control: false,
};

/// Echo of the far end at `delay_ms` and -6 dB over -65 dBFS line noise,
/// no near-end talker. Returns ERLE in dB over seconds 3..10 and the canceller.
fn erle(
    settings: AudioSettings,
    rate: u32,
    hint_ms: Option<u32>,
    delay_ms: u32,
) -> (f64, EchoCanceller) {
    let seconds = 10.0;
    let far = speech(rate, seconds, 130.0, -20.0, 1);
    let echo = echo_of(&far, (rate * delay_ms / 1000) as usize, -6.0);
    let near = mix(&echo, &noise(echo.len(), -65.0, 2));
    let mut aec = EchoCanceller::new(settings, rate).unwrap();
    aec.set_echo_delay_hint_ms(hint_ms);
    let out = run(&mut aec, &far, &near);
    for s in 0..10 {
        let (a, b) = (s as f64, s as f64 + 1.0);
        eprintln!(
            "{rate} Hz, {delay_ms} ms: second {s}: echo {:.1} dB -> out {:.1} dB",
            db(power(window(&echo, rate, a, b)) / 32768f64.powi(2)),
            db(power(window(&out, rate, a, b)) / 32768f64.powi(2)),
        );
    }
    let erle = db(power(window(&echo, rate, 3.0, 10.0)) / power(window(&out, rate, 3.0, 10.0)));
    eprintln!("{rate} Hz, {delay_ms} ms, hint {hint_ms:?}, {settings:?}: ERLE {erle:.1} dB");
    (erle, aec)
}

#[test]
fn echo_is_cancelled_at_8k() {
    let (erle, mut aec) = erle(AEC_ONLY, 8000, None, 40);
    assert!(erle >= 20.0, "ERLE {erle:.1} dB");
    let stats = aec.stats();
    eprintln!("{stats:?}");
    assert_eq!(stats.echo_detected, Some(true));
    assert!(stats.erle_db.is_some_and(|db| db >= 20.0));
    assert!(stats
        .delay_median_ms
        .is_some_and(|ms| (25..=55).contains(&ms)));
    assert_eq!(stats.errors, 0);
    assert_eq!(stats.capture_frames, 1000);
    assert_eq!(stats.render_frames, 1000);
}

#[test]
fn echo_is_cancelled_at_16k() {
    let (erle, _) = erle(AEC_ONLY, 16_000, None, 40);
    assert!(erle >= 20.0, "ERLE {erle:.1} dB");
}

#[test]
fn echo_is_cancelled_at_48k_for_opus_calls() {
    let (erle, _) = erle(AEC_ONLY, 48_000, None, 40);
    assert!(erle >= 20.0, "ERLE {erle:.1} dB");
}

#[test]
fn echo_is_cancelled_with_noise_suppression_on() {
    for rate in [8000, 16_000] {
        let (erle, _) = erle(AEC_NS, rate, None, 40);
        assert!(erle >= 20.0, "{rate}: ERLE {erle:.1} dB");
    }
}

#[test]
fn longer_echo_delays_are_found() {
    let (erle, mut aec) = erle(AEC_ONLY, 8000, None, 120);
    let stats = aec.stats();
    eprintln!("{stats:?}");
    assert!(erle >= 20.0, "ERLE {erle:.1} dB");
    assert!(stats
        .delay_median_ms
        .is_some_and(|d| (100..=130).contains(&d)));
}

#[test]
fn a_delay_hint_reaches_longer_echo() {
    for delay in [160, 250] {
        let (erle, _) = erle(AEC_ONLY, 8000, Some(150), delay);
        assert!(erle >= 20.0, "{delay} ms: ERLE {erle:.1} dB");
    }
    // Without the hint, 250 ms is out of reach.
    let (erle, _) = erle(AEC_ONLY, 8000, None, 250);
    assert!(erle < 20.0, "ERLE {erle:.1} dB");
}

/// The caller talking while the bot is silent must reach the bot intact.
fn near_end_alone(rate: u32) {
    let seconds = 8.0;
    let talker = speech(rate, seconds, 210.0, -20.0, 7);
    let near = mix(&talker, &noise(talker.len(), -65.0, 8));
    let silence = vec![0i16; near.len()];
    let mut aec = EchoCanceller::new(AEC_NS, rate).unwrap();
    let out = run(&mut aec, &silence, &near);
    let loss = db(power(window(&near, rate, 1.0, 8.0)) / power(window(&out, rate, 1.0, 8.0)));
    eprintln!("{rate} Hz: near end alone loses {loss:.2} dB");
    assert!(loss.abs() < 6.0, "{rate}: {loss:.2} dB");
}

#[test]
fn near_end_alone_passes_at_8k() {
    near_end_alone(8000);
}

#[test]
fn near_end_alone_passes_at_16k() {
    near_end_alone(16_000);
}

/// Lag of `out` behind `input` in samples, by cross-correlation.
fn lag(input: &[i16], out: &[i16], max: usize) -> usize {
    (0..max)
        .max_by_key(|&lag| {
            let dot: f64 = (max..input.len() - lag)
                .map(|i| input[i] as f64 * out[i + lag] as f64)
                .sum();
            dot as i64
        })
        .unwrap()
}

#[test]
fn latency_stays_under_20ms() {
    let one = AudioSettings::default();
    for settings in [
        AudioSettings {
            gain_control: true,
            ..one
        },
        AudioSettings {
            noise_suppression: true,
            ..one
        },
        AudioSettings {
            echo_cancellation: true,
            ..one
        },
        AEC_NS,
    ] {
        for rate in [8000, 16_000] {
            // Noise has one sharp correlation peak; voiced speech has many.
            let probe = noise(rate as usize * 2, -20.0, 11);
            let mut aec = EchoCanceller::new(settings, rate).unwrap();
            let out = run(&mut aec, &vec![0; probe.len()], &probe);
            let ms = lag(&probe, &out, rate as usize / 20) as f64 * 1000.0 / rate as f64;
            eprintln!("{settings:?} at {rate} Hz: {ms:.2} ms");
            assert!(ms < 20.0, "{settings:?} at {rate} Hz: {ms:.2} ms");
        }
    }
}

#[test]
fn double_talk_keeps_the_caller_audible() {
    // Converge on 4 s of echo, then the caller talks over the bot for 4 s.
    let rate = 8000;
    let far = speech(rate, 8.0, 130.0, -20.0, 1);
    let echo = echo_of(&far, 320, -6.0);
    let mut talker = speech(rate, 8.0, 210.0, -20.0, 7);
    talker[..4 * rate as usize].fill(0);
    let near = mix(&mix(&echo, &talker), &noise(far.len(), -65.0, 2));
    let mut aec = EchoCanceller::new(AEC_ONLY, rate).unwrap();
    let out = run(&mut aec, &far, &near);
    let residual = db(power(window(&out, rate, 2.0, 4.0)) / power(window(&echo, rate, 2.0, 4.0)));
    let kept = db(power(window(&out, rate, 4.5, 8.0)) / power(window(&talker, rate, 4.5, 8.0)));
    eprintln!("double talk: echo alone {residual:.1} dB, caller over echo {kept:.1} dB");
    assert!(kept > -10.0, "caller {kept:.1} dB");
}

#[test]
fn noise_suppression_lowers_steady_noise() {
    for rate in [8000, 16_000] {
        let near = noise(rate as usize * 6, -40.0, 5);
        let settings = AudioSettings {
            noise_suppression: true,
            ..AudioSettings::default()
        };
        let mut aec = EchoCanceller::new(settings, rate).unwrap();
        let out = run(&mut aec, &vec![0; near.len()], &near);
        let cut = db(power(window(&near, rate, 2.0, 6.0)) / power(window(&out, rate, 2.0, 6.0)));
        eprintln!("{rate} Hz: noise suppressed by {cut:.1} dB");
        assert!(cut >= 10.0, "{rate}: {cut:.1} dB");
    }
}

#[test]
fn gain_control_lifts_a_quiet_caller() {
    for rate in [8000, 16_000] {
        let near = speech(rate, 6.0, 180.0, -40.0, 9);
        let settings = AudioSettings {
            gain_control: true,
            ..AudioSettings::default()
        };
        let mut aec = EchoCanceller::new(settings, rate).unwrap();
        let out = run(&mut aec, &vec![0; near.len()], &near);
        let gain = db(power(window(&out, rate, 2.0, 6.0)) / power(window(&near, rate, 2.0, 6.0)));
        eprintln!("{rate} Hz: quiet caller raised by {gain:.1} dB");
        assert!(gain >= 6.0, "{rate}: {gain:.1} dB");
    }
}

#[test]
fn everything_off_is_a_bit_exact_passthrough() {
    let mut aec = EchoCanceller::new(AudioSettings::default(), 8000).unwrap();
    let near = speech(8000, 1.0, 150.0, -20.0, 3);
    let out = run(&mut aec, &near, &near);
    assert_eq!(out, near);
    assert_eq!(aec.stats(), AecStats::default());
}

#[test]
fn odd_frame_sizes_keep_the_stream_continuous() {
    let rate = 16_000;
    let near = speech(rate, 2.0, 150.0, -20.0, 4);
    let mut aec = EchoCanceller::new(AudioSettings::ALL, rate).unwrap();
    let mut out = Vec::new();
    let mut rest = &near[..];
    // 10 ms and 30 ms frames by turns.
    for size in [160, 480].into_iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        let mut buf = chunk.to_vec();
        aec.far_end(&vec![0; buf.len()]);
        aec.near_end(&mut buf);
        out.extend_from_slice(&buf);
    }
    assert_eq!(out.len(), near.len());
    let stats = aec.stats();
    assert_eq!((stats.errors, stats.dropped_samples), (0, 0));
    let level = db(power(window(&out, rate, 1.0, 2.0)) / power(window(&near, rate, 1.0, 2.0)));
    assert!(level.abs() < 10.0, "{level:.1} dB");
}

#[test]
fn unsupported_rates_are_refused() {
    for rate in [0, 24_000, 44_100] {
        assert_eq!(
            EchoCanceller::new(AudioSettings::ALL, rate).unwrap_err(),
            AecError::UnsupportedRate(rate)
        );
    }
    let aec = EchoCanceller::new(AudioSettings::ALL, 16_000).unwrap();
    assert_eq!(aec.frame_samples(), 320);
    assert_eq!(aec.settings(), AudioSettings::ALL);
}

#[test]
fn stats_wait_for_an_estimate() {
    let rate = 8000;
    let far = speech(rate, 0.5, 130.0, -20.0, 1);
    let mut aec = EchoCanceller::new(AEC_ONLY, rate).unwrap();
    let _ = run(&mut aec, &far, &echo_of(&far, 320, -6.0));
    let stats = aec.stats();
    assert_eq!((stats.erle_db, stats.erl_db), (None, None));
    assert_eq!(stats.echo_detected, Some(true));
}

#[test]
fn a_canceller_can_move_to_another_thread() {
    fn send<T: Send>() {}
    send::<EchoCanceller>();
}
