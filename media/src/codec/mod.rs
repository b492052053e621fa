//! Audio codecs behind one interface: G.711 (both laws), G.722 and Opus.
//!
//! [`Codec`] names a codec and carries the facts signalling and RTP need
//! (encoding name, RTP clock, payload type); [`Decoder`] and [`Encoder`] are
//! enums rather than boxed trait objects so a call's media pipeline holds its
//! codec state inline and every frame is a `match`, not a vtable call behind
//! an allocation. The [`AudioDecoder`] / [`AudioEncoder`] traits describe the
//! contract and let tests or future codecs plug in generically.

mod g722;
mod opus;

pub use self::g722::{G722Decoder, G722Encoder};
pub use self::opus::{OpusConfig, OpusDecoder, OpusEncoder};

use crate::frame::FRAME_MS;
use crate::g711::G711;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("output buffer holds {available}, the frame needs {needed}")]
    BufferTooSmall { needed: usize, available: usize },
    #[error("{codec} cannot take {samples} samples in one frame")]
    BadFrameSize { codec: &'static str, samples: usize },
    #[error("empty payload")]
    EmptyPayload,
    #[error("opus: {0}")]
    Opus(#[from] audiopus::Error),
}

/// The audio codecs the gateway can speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    Pcmu,
    Pcma,
    G722,
    Opus,
}

impl Codec {
    /// Best first: Opus and G.722 are wideband, so a bot hears more of the
    /// caller; G.711 is what every phone has.
    pub const DEFAULT_PREFERENCE: [Codec; 4] = [Codec::Opus, Codec::G722, Codec::Pcmu, Codec::Pcma];

    /// Payload type we put in our own offers for Opus (dynamic, RFC 7587);
    /// 111 is what browsers and most softphones use, which eases debugging.
    pub const OPUS_DEFAULT_PAYLOAD_TYPE: u8 = 111;

    /// Encoding name as written in SDP `rtpmap`.
    pub const fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::Opus => "opus",
        }
    }

    /// The `rtpmap` encoding parameters after the payload type, e.g.
    /// `opus/48000/2`: RFC 7587 always signals two channels, whatever is sent.
    pub const fn rtpmap(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU/8000",
            Codec::Pcma => "PCMA/8000",
            Codec::G722 => "G722/8000",
            Codec::Opus => "opus/48000/2",
        }
    }

    /// Clock of RTP timestamps and of the SDP `rtpmap`. G.722 says 8000 even
    /// though it carries 16 kHz audio, an error in RFC 1890 that RFC 3551 kept
    /// for compatibility.
    pub const fn rtp_clock_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G722 => 8000,
            Codec::Opus => 48000,
        }
    }

    /// Sample rate of the PCM a decoder produces and an encoder takes.
    pub const fn sample_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8000,
            Codec::G722 => 16000,
            Codec::Opus => 48000,
        }
    }

    /// PCM samples in one 20 ms frame (at [`Codec::sample_rate`]).
    pub const fn samples_per_frame(self) -> usize {
        (self.sample_rate() * FRAME_MS / 1000) as usize
    }

    /// RTP timestamp increment of one 20 ms frame (at [`Codec::rtp_clock_rate`]).
    pub const fn timestamp_step(self) -> u32 {
        self.rtp_clock_rate() * FRAME_MS / 1000
    }

    /// Largest payload one 20 ms frame encodes to: the size to give
    /// [`AudioEncoder::encode`]. 1275 bytes is Opus's limit for one frame.
    pub const fn max_payload_bytes(self) -> usize {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G722 => 160,
            Codec::Opus => 1275,
        }
    }

    /// RFC 3551 static payload type; `None` for Opus, which is dynamic.
    pub const fn static_payload_type(self) -> Option<u8> {
        match self {
            Codec::Pcmu => Some(0),
            Codec::Pcma => Some(8),
            Codec::G722 => Some(9),
            Codec::Opus => None,
        }
    }

    /// The G.711 law, for code that still speaks only G.711.
    pub const fn g711(self) -> Option<G711> {
        match self {
            Codec::Pcmu => Some(G711::Pcmu),
            Codec::Pcma => Some(G711::Pcma),
            _ => None,
        }
    }

    /// The codec an `rtpmap` names. `encoding` is compared without case
    /// (the SDP parser upper-cases it); the clock rate must match, since a
    /// name at another rate is a different format.
    pub fn from_rtpmap(encoding: &str, clock_rate: u32) -> Option<Codec> {
        [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus]
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(encoding) && c.rtp_clock_rate() == clock_rate)
    }

    /// A decoder with fresh state, for one direction of one call.
    pub fn decoder(self) -> Result<Decoder, CodecError> {
        Ok(match self {
            Codec::Pcmu => Decoder::G711(G711::Pcmu),
            Codec::Pcma => Decoder::G711(G711::Pcma),
            Codec::G722 => Decoder::G722(G722Decoder::new()),
            Codec::Opus => Decoder::Opus(OpusDecoder::new()?),
        })
    }

    /// An encoder with fresh state; Opus gets [`OpusConfig::default`].
    pub fn encoder(self) -> Result<Encoder, CodecError> {
        Ok(match self {
            Codec::Pcmu => Encoder::G711(G711::Pcmu),
            Codec::Pcma => Encoder::G711(G711::Pcma),
            Codec::G722 => Encoder::G722(G722Encoder::new()),
            Codec::Opus => Encoder::Opus(OpusEncoder::new(OpusConfig::default())?),
        })
    }
}

impl From<G711> for Codec {
    fn from(law: G711) -> Codec {
        match law {
            G711::Pcmu => Codec::Pcmu,
            G711::Pcma => Codec::Pcma,
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Turns RTP payloads into PCM at the codec's [`Codec::sample_rate`].
pub trait AudioDecoder {
    fn codec(&self) -> Codec;

    fn sample_rate(&self) -> u32 {
        self.codec().sample_rate()
    }

    /// Decodes one payload into the start of `out`; returns samples written.
    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> Result<usize, CodecError>;

    /// Fills in one lost 20 ms frame with the codec's own loss concealment;
    /// `None` when the codec has none and the caller must conceal (repeat,
    /// fade, silence) itself.
    fn conceal(&mut self, out: &mut [i16]) -> Option<usize>;

    /// Rebuilds a lost 20 ms frame from the redundancy carried in the packet
    /// that followed it (Opus in-band FEC); `None` when the codec carries no
    /// such data. Decode `next_payload` normally afterwards.
    fn decode_fec(&mut self, next_payload: &[u8], out: &mut [i16]) -> Option<usize> {
        let _ = (next_payload, out);
        None
    }
}

/// Turns PCM at the codec's [`Codec::sample_rate`] into RTP payloads.
pub trait AudioEncoder {
    fn codec(&self) -> Codec;

    fn sample_rate(&self) -> u32 {
        self.codec().sample_rate()
    }

    /// Encodes one frame (normally [`Codec::samples_per_frame`] samples) into
    /// the start of `out`; returns bytes written.
    fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError>;
}

impl AudioDecoder for G711 {
    fn codec(&self) -> Codec {
        Codec::from(*self)
    }

    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        ensure_room(payload.len(), out.len())?;
        Ok(G711::decode(*self, payload, out))
    }

    fn conceal(&mut self, _out: &mut [i16]) -> Option<usize> {
        None
    }
}

impl AudioEncoder for G711 {
    fn codec(&self) -> Codec {
        Codec::from(*self)
    }

    fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        ensure_room(pcm.len(), out.len())?;
        Ok(G711::encode(*self, pcm, out))
    }
}

/// A decoder of any codec, dispatched by `match`.
// G.722's ~470 bytes of filter state stay inline on purpose: there is one
// decoder per call, created once, and boxing would only add a pointer chase.
#[allow(clippy::large_enum_variant)]
pub enum Decoder {
    G711(G711),
    G722(G722Decoder),
    Opus(OpusDecoder),
}

/// An encoder of any codec, dispatched by `match`.
#[allow(clippy::large_enum_variant)] // as for Decoder
pub enum Encoder {
    G711(G711),
    G722(G722Encoder),
    Opus(OpusEncoder),
}

impl AudioDecoder for Decoder {
    fn codec(&self) -> Codec {
        match self {
            Decoder::G711(d) => AudioDecoder::codec(d),
            Decoder::G722(d) => d.codec(),
            Decoder::Opus(d) => d.codec(),
        }
    }

    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        match self {
            Decoder::G711(d) => AudioDecoder::decode(d, payload, out),
            Decoder::G722(d) => d.decode(payload, out),
            Decoder::Opus(d) => d.decode(payload, out),
        }
    }

    fn conceal(&mut self, out: &mut [i16]) -> Option<usize> {
        match self {
            Decoder::G711(d) => d.conceal(out),
            Decoder::G722(d) => d.conceal(out),
            Decoder::Opus(d) => d.conceal(out),
        }
    }

    fn decode_fec(&mut self, next_payload: &[u8], out: &mut [i16]) -> Option<usize> {
        match self {
            Decoder::Opus(d) => d.decode_fec(next_payload, out),
            Decoder::G711(_) | Decoder::G722(_) => None,
        }
    }
}

impl AudioEncoder for Encoder {
    fn codec(&self) -> Codec {
        match self {
            Encoder::G711(e) => AudioEncoder::codec(e),
            Encoder::G722(e) => e.codec(),
            Encoder::Opus(e) => e.codec(),
        }
    }

    fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        match self {
            Encoder::G711(e) => AudioEncoder::encode(e, pcm, out),
            Encoder::G722(e) => e.encode(pcm, out),
            Encoder::Opus(e) => e.encode(pcm, out),
        }
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Decoder({})", self.codec())
    }
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encoder({})", self.codec())
    }
}

fn ensure_room(needed: usize, available: usize) -> Result<(), CodecError> {
    if available < needed {
        return Err(CodecError::BufferTooSmall { needed, available });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_facts_follow_rfc_3551_and_7587() {
        let facts: Vec<_> = Codec::DEFAULT_PREFERENCE
            .iter()
            .map(|c| {
                (
                    c.rtpmap(),
                    c.rtp_clock_rate(),
                    c.sample_rate(),
                    c.samples_per_frame(),
                    c.timestamp_step(),
                    c.static_payload_type(),
                )
            })
            .collect();
        assert_eq!(
            facts,
            [
                ("opus/48000/2", 48000, 48000, 960, 960, None),
                ("G722/8000", 8000, 16000, 320, 160, Some(9)),
                ("PCMU/8000", 8000, 8000, 160, 160, Some(0)),
                ("PCMA/8000", 8000, 8000, 160, 160, Some(8)),
            ]
        );
        assert_eq!(Codec::from_rtpmap("OPUS", 48000), Some(Codec::Opus));
        assert_eq!(Codec::from_rtpmap("G722", 16000), None);
        assert_eq!(Codec::from_rtpmap("pcma", 8000), Some(Codec::Pcma));
        assert_eq!(Codec::from(G711::Pcmu).g711(), Some(G711::Pcmu));
    }

    #[test]
    fn codec_state_can_move_into_a_call_task() {
        fn send<T: Send>() {}
        send::<Decoder>();
        send::<Encoder>();
    }

    #[test]
    fn every_codec_builds_and_reports_itself() {
        for codec in Codec::DEFAULT_PREFERENCE {
            assert_eq!(codec.decoder().unwrap().codec(), codec);
            assert_eq!(codec.encoder().unwrap().codec(), codec);
        }
    }

    #[test]
    fn short_buffers_are_errors_not_truncation() {
        let mut encoder = Codec::Pcmu.encoder().unwrap();
        let err = encoder.encode(&[0; 160], &mut [0; 100]).unwrap_err();
        assert!(matches!(
            err,
            CodecError::BufferTooSmall {
                needed: 160,
                available: 100
            }
        ));
        let mut decoder = Codec::G722.decoder().unwrap();
        let err = decoder.decode(&[0; 160], &mut [0; 160]).unwrap_err();
        assert!(matches!(
            err,
            CodecError::BufferTooSmall { needed: 320, .. }
        ));
    }
}
