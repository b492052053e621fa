//! Call-progress tones played by the gateway itself: the ringback a caller
//! hears while a transfer rings (ITU-T E.180 cadences). Generated sample by
//! sample into caller-provided buffers: no allocation.

use std::f64::consts::TAU;

/// A cadenced tone of one or two frequencies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cadence {
    pub frequencies: [f64; 2],
    /// Tone on, then off, in milliseconds; repeated.
    pub on_ms: u32,
    pub off_ms: u32,
}

impl Cadence {
    /// North American ringback: 440 + 480 Hz, 2 s on, 4 s off.
    pub const US_RINGBACK: Cadence = Cadence {
        frequencies: [440.0, 480.0],
        on_ms: 2000,
        off_ms: 4000,
    };
    /// European (CEPT) ringback: 425 Hz, 1 s on, 4 s off.
    pub const EU_RINGBACK: Cadence = Cadence {
        frequencies: [425.0, 0.0],
        on_ms: 1000,
        off_ms: 4000,
    };
    /// UK ringback: 400 + 450 Hz, 0.4 s on, 0.2 s off, 0.4 s on, 2 s off,
    /// approximated as 0.4 on / 0.2 off (its double ring).
    pub const UK_RINGBACK: Cadence = Cadence {
        frequencies: [400.0, 450.0],
        on_ms: 400,
        off_ms: 200,
    };
}

#[derive(Debug, Clone)]
pub struct ToneGenerator {
    cadence: Cadence,
    sample_rate: u32,
    /// Samples into the current on+off period.
    position: u64,
    phases: [f64; 2],
    /// Peak of each component, in i16 units (−16 dBm0-ish per tone).
    amplitude: f64,
}

impl ToneGenerator {
    pub fn new(cadence: Cadence, sample_rate: u32) -> Self {
        ToneGenerator {
            cadence,
            sample_rate,
            position: 0,
            phases: [0.0; 2],
            amplitude: 3000.0,
        }
    }

    /// Fills `out` with the next samples of the tone.
    pub fn fill(&mut self, out: &mut [i16]) {
        let rate = self.sample_rate as f64;
        let on = self.cadence.on_ms as u64 * self.sample_rate as u64 / 1000;
        let period = on + self.cadence.off_ms as u64 * self.sample_rate as u64 / 1000;
        for sample in out.iter_mut() {
            let sounding = self.position % period.max(1) < on;
            let mut value = 0.0;
            for (phase, frequency) in self.phases.iter_mut().zip(self.cadence.frequencies) {
                if frequency > 0.0 {
                    if sounding {
                        value += phase.sin() * self.amplitude;
                    }
                    *phase = (*phase + TAU * frequency / rate) % TAU;
                }
            }
            *sample = value as i16;
            self.position += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn us_ringback_is_two_seconds_on_four_off() {
        let mut tone = ToneGenerator::new(Cadence::US_RINGBACK, 8000);
        let mut out = vec![0i16; 8000 * 6];
        tone.fill(&mut out);
        let energy =
            |s: &[i16]| s.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / s.len() as f64;
        assert!(energy(&out[..16_000]) > 1e6, "sounds for 2 s");
        assert_eq!(energy(&out[16_000..48_000]), 0.0, "then silent for 4 s");
        // 440 + 480 Hz beat at 40 Hz: zero crossings ~ 2 * 460 per second.
        let crossings = out[..8000]
            .windows(2)
            .filter(|w| (w[0] < 0) != (w[1] < 0))
            .count();
        assert!((880..=960).contains(&crossings), "{crossings}");
    }

    #[test]
    fn frames_join_without_clicks() {
        let mut whole = ToneGenerator::new(Cadence::EU_RINGBACK, 16_000);
        let mut framed = whole.clone();
        let mut a = vec![0i16; 960];
        whole.fill(&mut a);
        let mut b = vec![0i16; 960];
        for chunk in b.chunks_mut(320) {
            framed.fill(chunk);
        }
        assert_eq!(a, b);
    }
}
