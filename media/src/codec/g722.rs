//! G.722 at 64 kbit/s (mode 1), 16 kHz PCM, through the `audio-codec`
//! crate, whose G.722 encodes and decodes straight into caller buffers: no
//! heap allocation per frame (`ezk-g722`, used before, returned a fresh
//! `Vec` from every call, 14 allocations per frame).

use audio_codec::g722::{self, Bitrate};
use audio_codec::{Decoder as _, Encoder as _};

use super::{ensure_room, AudioDecoder, AudioEncoder, Codec, CodecError};

pub struct G722Decoder {
    inner: g722::G722Decoder,
}

impl G722Decoder {
    pub fn new() -> Self {
        // Unpacked 8 bits per code pair and 16 kHz output: the RTP format of
        // RFC 3551, which only uses mode 1.
        let (packed, eight_k) = (false, false);
        G722Decoder {
            inner: g722::G722Decoder::with_options(Bitrate::Mode1_64000, packed, eight_k),
        }
    }
}

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl AudioDecoder for G722Decoder {
    fn codec(&self) -> Codec {
        Codec::G722
    }

    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        // Each byte holds one low-band and one high-band code: two samples.
        ensure_room(payload.len() * 2, out.len())?;
        // Room was checked above, so the library cannot run out of it.
        self.inner
            .decode_into(payload, out)
            .map_err(|_| CodecError::BufferTooSmall {
                needed: payload.len() * 2,
                available: out.len(),
            })
    }

    fn conceal(&mut self, _out: &mut [i16]) -> Option<usize> {
        // G.722 itself has no PLC (that is Appendix III/IV); the repeat-and-fade concealer covers it.
        None
    }
}

pub struct G722Encoder {
    inner: g722::G722Encoder,
}

impl G722Encoder {
    pub fn new() -> Self {
        let (eight_k, packed) = (false, false);
        G722Encoder {
            inner: g722::G722Encoder::with_options(Bitrate::Mode1_64000, eight_k, packed),
        }
    }
}

impl Default for G722Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl AudioEncoder for G722Encoder {
    fn codec(&self) -> Codec {
        Codec::G722
    }

    fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        // The QMF splits sample pairs; an odd count would silently drop one
        // and shift every later frame by half a code.
        if pcm.len() & 1 != 0 {
            return Err(CodecError::BadFrameSize {
                codec: "G722",
                samples: pcm.len(),
            });
        }
        ensure_room(pcm.len() / 2, out.len())?;
        self.inner
            .encode_into(pcm, out)
            .map_err(|_| CodecError::BufferTooSmall {
                needed: pcm.len() / 2,
                available: out.len(),
            })
    }
}
