//! G.722 at 64 kbit/s (mode 1), 16 kHz PCM, through the `ezk-g722` crate.
//!
//! Known cost: `ezk-g722` returns a fresh `Vec` from every encode and decode
//! call (grown by pushes), so unlike G.711 and Opus this codec allocates a
//! few times per frame. We copy out into the caller's buffer so the
//! interface stays allocation-free and a better backend can replace it
//! without touching callers.

use ezk_g722::libg722::{decoder, encoder, Bitrate};

use super::{ensure_room, AudioDecoder, AudioEncoder, Codec, CodecError};

pub struct G722Decoder {
    inner: decoder::Decoder,
}

impl G722Decoder {
    pub fn new() -> Self {
        // Unpacked 8 bits per code pair and 16 kHz output: the RTP format of
        // RFC 3551, which only uses mode 1.
        let (packed, eight_k) = (false, false);
        G722Decoder {
            inner: decoder::Decoder::new(Bitrate::Mode1_64000, packed, eight_k),
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
        let pcm = self.inner.decode(payload);
        let count = pcm.len().min(out.len());
        out[..count].copy_from_slice(&pcm[..count]);
        Ok(count)
    }

    fn conceal(&mut self, _out: &mut [i16]) -> Option<usize> {
        // G.722 itself has no PLC (that is Appendix III/IV, not in ezk-g722).
        None
    }
}

pub struct G722Encoder {
    inner: encoder::Encoder,
}

impl G722Encoder {
    pub fn new() -> Self {
        let (eight_k, packed) = (false, false);
        G722Encoder {
            inner: encoder::Encoder::new(Bitrate::Mode1_64000, eight_k, packed),
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
        let bytes = self.inner.encode(pcm);
        let count = bytes.len().min(out.len());
        out[..count].copy_from_slice(&bytes[..count]);
        Ok(count)
    }
}
