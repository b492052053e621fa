//! Raw PCM (s16le) over WebSocket messages, as the generic WebSocket bot,
//! Ultravox and OpenAI's 24 kHz audio carry it.

use bytes::{BufMut, BytesMut};
use tokio_tungstenite::tungstenite::Message;

/// Decodes s16le arriving in messages of any length: a sample split across
/// two messages (an odd byte count) is completed by the next one.
#[derive(Default)]
pub(crate) struct S16leDecoder {
    odd_byte: Option<u8>,
}

impl S16leDecoder {
    /// Appends the samples `bytes` complete; a byte left over waits.
    pub(crate) fn decode(&mut self, bytes: &[u8], samples: &mut Vec<i16>) {
        let mut bytes = bytes;
        if let Some(low) = self.odd_byte.take() {
            let Some((&high, rest)) = bytes.split_first() else {
                self.odd_byte = Some(low);
                return;
            };
            samples.push(i16::from_le_bytes([low, high]));
            bytes = rest;
        }
        let mut pairs = bytes.chunks_exact(2);
        samples.extend(pairs.by_ref().map(|p| i16::from_le_bytes([p[0], p[1]])));
        self.odd_byte = pairs.remainder().first().copied();
    }

    /// How many samples `bytes` more would complete.
    pub(crate) fn samples_in(&self, bytes: usize) -> usize {
        (usize::from(self.odd_byte.is_some()) + bytes) / 2
    }

    /// Forgets a half sample: the audio it belonged to was dropped.
    pub(crate) fn clear(&mut self) {
        self.odd_byte = None;
    }
}

/// `samples` as one binary message. The bytes are split off `buffer`, whose
/// space is reclaimed once tungstenite has copied them, so a session that
/// keeps its buffer allocates nothing per frame.
pub(crate) fn s16le_message(buffer: &mut BytesMut, samples: &[i16]) -> Message {
    buffer.reserve(2 * samples.len());
    for &sample in samples {
        buffer.put_i16_le(sample);
    }
    Message::binary(buffer.split().freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_split_across_messages_are_completed() {
        let mut decoder = S16leDecoder::default();
        let mut samples = Vec::new();
        // 0x1234 and 0x5678 little-endian, cut after one and after four bytes.
        decoder.decode(&[0x34], &mut samples);
        assert!(samples.is_empty());
        assert_eq!(decoder.samples_in(3), 2);
        decoder.decode(&[0x12, 0x78, 0x56, 0xcd], &mut samples);
        assert_eq!(samples, [0x1234, 0x5678]);
        decoder.clear();
        decoder.decode(&[0x01, 0x00], &mut samples);
        assert_eq!(
            samples,
            [0x1234, 0x5678, 1],
            "the cleared half sample is gone"
        );
    }

    #[test]
    fn messages_carry_exact_little_endian_samples() {
        let mut buffer = BytesMut::new();
        let message = s16le_message(&mut buffer, &[1, -2]);
        assert_eq!(message.into_data().as_ref(), [1, 0, 0xfe, 0xff]);
    }
}
