//! Opus (RFC 6716, RTP format RFC 7587) through `audiopus` and the system
//! libopus: 48 kHz mono, 20 ms frames.
//!
//! We always encode and decode mono: RFC 7587 signals `opus/48000/2` for every
//! stream, but a decoder may downmix whatever it receives, and a phone call
//! has one voice. libopus allocates its state once at creation; encode and
//! decode then work in the caller's buffers.

use audiopus::coder::{Decoder as RawDecoder, Encoder as RawEncoder};
use audiopus::{Application, Bitrate, Channels, SampleRate, Signal};

use super::{AudioDecoder, AudioEncoder, Codec, CodecError};

/// Shortest unit libopus can conceal or decode: 2.5 ms at 48 kHz.
const OPUS_QUANTUM: usize = 120;

/// Encoder settings. The defaults suit a voice call over the public
/// internet: ~32 kbit/s is wideband-transparent for speech, and telling the
/// encoder to expect some loss makes it spend bits on in-band FEC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpusConfig {
    /// Target bitrate in bits per second.
    pub bitrate: i32,
    /// Carry a low-bitrate copy of each frame in the next packet (LBRR),
    /// which [`OpusDecoder::decode_fec`] uses to rebuild a lost frame.
    pub inband_fec: bool,
    /// Loss the encoder plans for; libopus only adds FEC when this is above 0.
    pub expected_loss_percent: u8,
    /// 0–10; `None` keeps libopus's default.
    pub complexity: Option<u8>,
}

impl Default for OpusConfig {
    fn default() -> Self {
        OpusConfig {
            bitrate: 32_000,
            inband_fec: true,
            expected_loss_percent: 10,
            complexity: None,
        }
    }
}

pub struct OpusEncoder {
    inner: RawEncoder,
    config: OpusConfig,
}

impl OpusEncoder {
    pub fn new(config: OpusConfig) -> Result<Self, CodecError> {
        let mut inner = RawEncoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip)?;
        inner.set_bitrate(Bitrate::BitsPerSecond(config.bitrate))?;
        inner.set_inband_fec(config.inband_fec)?;
        inner.set_packet_loss_perc(config.expected_loss_percent.min(100))?;
        // Bots and callers both produce speech; the hint steers mode
        // decisions towards SILK/hybrid, which is where FEC lives.
        inner.set_signal(Signal::Voice)?;
        if let Some(complexity) = config.complexity {
            inner.set_complexity(complexity.min(10))?;
        }
        Ok(OpusEncoder { inner, config })
    }

    pub fn config(&self) -> OpusConfig {
        self.config
    }

    /// Samples of delay the encoder adds (its look-ahead), for aligning
    /// decoded audio with the original in tests and echo paths.
    pub fn lookahead(&self) -> Result<u32, CodecError> {
        Ok(self.inner.lookahead()?)
    }

    /// Caps the bitrate, e.g. to a peer's `maxaveragebitrate`.
    pub fn set_bitrate(&mut self, bits_per_second: i32) -> Result<(), CodecError> {
        self.inner
            .set_bitrate(Bitrate::BitsPerSecond(bits_per_second))?;
        self.config.bitrate = bits_per_second;
        Ok(())
    }
}

impl AudioEncoder for OpusEncoder {
    fn codec(&self) -> Codec {
        Codec::Opus
    }

    fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        // libopus accepts 2.5 to 60 ms; anything else is a pipeline bug
        // better reported here than as libopus's generic "bad argument".
        if !matches!(pcm.len(), 120 | 240 | 480 | 960 | 1920 | 2880) {
            return Err(CodecError::BadFrameSize {
                codec: "opus",
                samples: pcm.len(),
            });
        }
        Ok(self.inner.encode(pcm, out)?)
    }
}

pub struct OpusDecoder {
    inner: RawDecoder,
}

impl OpusDecoder {
    pub fn new() -> Result<Self, CodecError> {
        Ok(OpusDecoder {
            inner: RawDecoder::new(SampleRate::Hz48000, Channels::Mono)?,
        })
    }

    /// Samples to produce for a lost packet: as long as the last one (the
    /// peer's ptime), 20 ms before any arrived, trimmed to what `out` holds.
    fn lost_frame_len(&self, out: &[i16]) -> usize {
        let last = match self.inner.last_packet_duration() {
            Ok(n) if n > 0 => n as usize,
            _ => Codec::Opus.samples_per_frame(),
        };
        last.min(out.len()) / OPUS_QUANTUM * OPUS_QUANTUM
    }
}

impl AudioDecoder for OpusDecoder {
    fn codec(&self) -> Codec {
        Codec::Opus
    }

    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        if payload.is_empty() {
            return Err(CodecError::EmptyPayload);
        }
        Ok(self.inner.decode(Some(payload), out, false)?)
    }

    fn conceal(&mut self, out: &mut [i16]) -> Option<usize> {
        let len = self.lost_frame_len(out);
        if len == 0 {
            return None;
        }
        self.inner
            .decode(None::<&[u8]>, &mut out[..len], false)
            .ok()
    }

    /// libopus needs the exact length of the lost audio here; when the next
    /// packet carries no FEC data it falls back to its PLC, so the result is
    /// always usable audio.
    fn decode_fec(&mut self, next_payload: &[u8], out: &mut [i16]) -> Option<usize> {
        let len = self.lost_frame_len(out);
        if len == 0 || next_payload.is_empty() {
            return None;
        }
        self.inner
            .decode(Some(next_payload), &mut out[..len], true)
            .ok()
    }
}
