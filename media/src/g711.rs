//! G.711 μ-law (PCMU) and A-law (PCMA), ITU-T G.711.
//!
//! Decoding goes through 256-entry tables built at compile time; encoding is
//! the segment search of the reference implementation. Both work on caller
//! supplied slices so the media path never allocates.

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32635;

/// Encode one linear sample to μ-law.
pub fn ulaw_encode(sample: i16) -> u8 {
    let mut pcm = sample as i32;
    let sign = if pcm < 0 {
        pcm = -pcm;
        0x80
    } else {
        0
    };
    pcm = pcm.min(ULAW_CLIP) + ULAW_BIAS;
    let exponent = segment(pcm >> 7);
    let mantissa = (pcm >> (exponent + 3)) & 0x0f;
    !(sign | ((exponent as i32) << 4) | mantissa) as u8
}

/// Decode one μ-law byte to a linear sample.
pub fn ulaw_decode(byte: u8) -> i16 {
    ULAW_TABLE[byte as usize]
}

/// Encode one linear sample to A-law.
pub fn alaw_encode(sample: i16) -> u8 {
    let pcm = sample as i32;
    let (sign, magnitude) = if pcm >= 0 {
        (0xd5, pcm)
    } else {
        (0x55, -pcm - 1)
    };
    let magnitude = magnitude.min(0x7fff);
    let exponent = segment(magnitude >> 7);
    let mantissa = if exponent < 1 {
        (magnitude >> 4) & 0x0f
    } else {
        (magnitude >> (exponent + 3)) & 0x0f
    };
    (((exponent as i32) << 4 | mantissa) ^ sign) as u8
}

/// Decode one A-law byte to a linear sample.
pub fn alaw_decode(byte: u8) -> i16 {
    ALAW_TABLE[byte as usize]
}

/// Position of the highest set bit among the low 8 bits of `value`, 0..=7.
fn segment(value: i32) -> u32 {
    let mut segment = 0;
    let mut rest = value;
    while rest > 1 && segment < 7 {
        rest >>= 1;
        segment += 1;
    }
    segment
}

const fn ulaw_decode_const(byte: u8) -> i16 {
    let byte = !byte;
    let sign = byte & 0x80;
    let exponent = ((byte >> 4) & 0x07) as i32;
    let mantissa = (byte & 0x0f) as i32;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const fn alaw_decode_const(byte: u8) -> i16 {
    let byte = byte ^ 0x55;
    let exponent = ((byte & 0x70) >> 4) as i32;
    let mantissa = (byte & 0x0f) as i32;
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    if byte & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

const fn build_table(alaw: bool) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = if alaw {
            alaw_decode_const(i as u8)
        } else {
            ulaw_decode_const(i as u8)
        };
        i += 1;
    }
    table
}

static ULAW_TABLE: [i16; 256] = build_table(false);
static ALAW_TABLE: [i16; 256] = build_table(true);

/// The two G.711 laws, with their static RTP payload types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum G711 {
    Pcmu,
    Pcma,
}

impl G711 {
    /// Static payload type from RFC 3551.
    pub const fn payload_type(self) -> u8 {
        match self {
            G711::Pcmu => 0,
            G711::Pcma => 8,
        }
    }

    /// Encoding name as written in SDP `rtpmap`.
    pub const fn name(self) -> &'static str {
        match self {
            G711::Pcmu => "PCMU",
            G711::Pcma => "PCMA",
        }
    }

    /// Decode `input` into the start of `output`; returns samples written
    /// (the shorter of the two lengths).
    pub fn decode(self, input: &[u8], output: &mut [i16]) -> usize {
        let table = match self {
            G711::Pcmu => &ULAW_TABLE,
            G711::Pcma => &ALAW_TABLE,
        };
        let count = input.len().min(output.len());
        for (out, byte) in output[..count].iter_mut().zip(input) {
            *out = table[*byte as usize];
        }
        count
    }

    /// Encode `input` into the start of `output`; returns bytes written.
    pub fn encode(self, input: &[i16], output: &mut [u8]) -> usize {
        let count = input.len().min(output.len());
        let encode = match self {
            G711::Pcmu => ulaw_encode,
            G711::Pcma => alaw_encode,
        };
        for (out, sample) in output[..count].iter_mut().zip(input) {
            *out = encode(*sample);
        }
        count
    }

    /// The byte that decodes to silence, for filling gaps.
    pub const fn silence(self) -> u8 {
        match self {
            G711::Pcmu => 0xff,
            G711::Pcma => 0xd5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_survives_decode_then_encode() {
        for byte in 0..=255u8 {
            let ulaw = ulaw_decode(byte);
            // 0x7f and 0xff both mean zero in μ-law; encode picks 0xff.
            if byte != 0x7f {
                assert_eq!(ulaw_encode(ulaw), byte, "ulaw {byte:#x} -> {ulaw}");
            }
            let alaw = alaw_decode(byte);
            assert_eq!(alaw_encode(alaw), byte, "alaw {byte:#x} -> {alaw}");
        }
    }

    #[test]
    fn known_values_match_the_standard() {
        assert_eq!(ulaw_decode(0xff), 0);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(alaw_decode(0xd5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(ulaw_encode(0), 0xff);
        assert_eq!(alaw_encode(0), 0xd5);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
    }

    #[test]
    fn round_trip_error_stays_within_the_quantisation_step() {
        for sample in (i16::MIN..=i16::MAX).step_by(7) {
            for law in [G711::Pcmu, G711::Pcma] {
                let mut byte = [0u8; 1];
                law.encode(&[sample], &mut byte);
                let mut back = [0i16; 1];
                law.decode(&byte, &mut back);
                let error = (sample as i32 - back[0] as i32).abs();
                // Largest segment step is 1024 (μ-law) / 1024 (A-law); half of it plus clipping.
                let bound = (sample as i32).abs() / 16 + 16;
                assert!(error <= bound.max(600), "{law:?} {sample} -> {} ", back[0]);
            }
        }
    }
}
