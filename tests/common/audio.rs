//! Test signals and the numbers that say whether audio survived a trip.

use std::f64::consts::PI;

/// A speech-like test signal at 8 kHz: three partials gliding in pitch under
/// a syllable-rate envelope, so a constant, silence or a shifted copy cannot
/// pass for it.
pub fn speech_like(samples: usize) -> Vec<i16> {
    (0..samples)
        .map(|n| {
            let t = n as f64 / 8000.0;
            let pitch = 180.0 + 60.0 * (2.0 * PI * 0.7 * t).sin();
            let envelope = 0.55 + 0.45 * (2.0 * PI * 3.3 * t).sin();
            let phase = 2.0 * PI * pitch * t + 3.0 * (2.0 * PI * 1.1 * t).sin();
            let value = 0.5 * phase.sin() + 0.3 * (3.0 * phase).sin() + 0.2 * (7.0 * phase).sin();
            (value * envelope * 12000.0) as i16
        })
        .collect()
}

/// Best normalised cross-correlation of `sent` found in `received`, and the
/// lag (in samples) where it peaks; only lags in `lags` are tried.
pub fn best_correlation(
    sent: &[i16],
    received: &[i16],
    lags: std::ops::Range<usize>,
) -> (f64, usize) {
    let mut best = (0.0f64, 0usize);
    let window = sent.len().min(8000);
    let sent = &sent[..window];
    let sent_energy: f64 = sent.iter().map(|s| (*s as f64).powi(2)).sum();
    for lag in lags {
        if lag + window > received.len() {
            break;
        }
        let part = &received[lag..lag + window];
        let energy: f64 = part.iter().map(|s| (*s as f64).powi(2)).sum();
        if energy == 0.0 || sent_energy == 0.0 {
            continue;
        }
        let dot: f64 = sent
            .iter()
            .zip(part)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        let score = dot / (sent_energy * energy).sqrt();
        if score > best.0 {
            best = (score, lag);
        }
    }
    best
}

pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

pub fn distinct_values(samples: &[i16]) -> usize {
    let mut values: Vec<i16> = samples.to_vec();
    values.sort_unstable();
    values.dedup();
    values.len()
}
