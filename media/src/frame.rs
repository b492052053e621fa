//! Fixed-capacity PCM frames that travel between the media pipeline and bots.
//!
//! A frame is a plain value (no heap) for the pipeline's own buffers; frames
//! that cross between tasks travel as [`crate::frame_pool::PooledFrame`].

/// Largest number of samples one frame may carry: 20 ms at 48 kHz.
pub const MAX_FRAME_SAMPLES: usize = 960;

/// Packetisation time of every frame on the media path.
pub const FRAME_MS: u32 = 20;

/// Signed 16-bit mono PCM at a known rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AudioFormat {
    pub sample_rate: u32,
}

impl AudioFormat {
    pub const fn new(sample_rate: u32) -> Self {
        Self { sample_rate }
    }

    /// Samples in one 20 ms frame at this rate.
    pub const fn frame_samples(&self) -> usize {
        (self.sample_rate * FRAME_MS / 1000) as usize
    }
}

/// Up to [`MAX_FRAME_SAMPLES`] samples of mono `i16` PCM with their rate.
#[derive(Clone, Copy)]
pub struct AudioFrame {
    sample_rate: u32,
    len: u16,
    samples: [i16; MAX_FRAME_SAMPLES],
}

impl AudioFrame {
    /// An empty frame at `sample_rate`.
    pub const fn new(sample_rate: u32) -> Self {
        Self {
            sample_rate,
            len: 0,
            samples: [0; MAX_FRAME_SAMPLES],
        }
    }

    /// A frame holding a copy of `samples`, truncated to [`MAX_FRAME_SAMPLES`].
    pub fn from_samples(sample_rate: u32, samples: &[i16]) -> Self {
        let mut frame = Self::new(sample_rate);
        let len = samples.len().min(MAX_FRAME_SAMPLES);
        frame.samples[..len].copy_from_slice(&samples[..len]);
        frame.len = len as u16;
        frame
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    pub fn samples(&self) -> &[i16] {
        &self.samples[..self.len as usize]
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Duration of the audio held, in milliseconds (rounded down).
    pub fn duration_ms(&self) -> u32 {
        if self.sample_rate == 0 {
            return 0;
        }
        self.len as u32 * 1000 / self.sample_rate
    }

    /// Empties the frame and gives it a new rate.
    pub fn reset(&mut self, sample_rate: u32) {
        self.sample_rate = sample_rate;
        self.len = 0;
    }

    /// Mutable access to the first `len` samples, setting the frame's length.
    /// `len` is clamped to [`MAX_FRAME_SAMPLES`].
    pub fn fill(&mut self, len: usize) -> &mut [i16] {
        let len = len.min(MAX_FRAME_SAMPLES);
        self.len = len as u16;
        &mut self.samples[..len]
    }
}

impl std::fmt::Debug for AudioFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioFrame")
            .field("sample_rate", &self.sample_rate)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_copies_and_truncates() {
        let data: Vec<i16> = (0..1000).map(|i| i as i16).collect();
        let frame = AudioFrame::from_samples(48_000, &data);
        assert_eq!(frame.len(), MAX_FRAME_SAMPLES);
        assert_eq!(frame.samples()[959], 959);
        assert_eq!(frame.duration_ms(), 20);
        assert_eq!(AudioFormat::new(16_000).frame_samples(), 320);
    }
}
