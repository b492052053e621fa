//! Frames that cross from one task to another travel boxed, and each box
//! goes back to the pool that filled it when the receiver drops it.
//!
//! Why not send [`AudioFrame`] by value: tokio's mpsc allocates its slots 32
//! at a time, so a channel of 1.9 KB frames holds 62 KB per block, and a
//! call's two audio channels (caller → bot, bot → caller) kept four blocks,
//! ~250 KB per call, measured with heaptrack. A boxed frame's slot is two
//! pointers. Once a pool has as many boxes as a call keeps in flight, taking
//! and dropping frames touches no allocator: the media path stays free of
//! per-packet allocation.
//!
//! Each pool belongs to one call direction, so its lock is only ever shared
//! by the two tasks at either end of that direction.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use crate::frame::{AudioFrame, MAX_FRAME_SAMPLES};

/// Free frames a pool keeps for reuse; more than a call has in flight at
/// once (an echo bot holds 10), fewer than a bot's burst of audio, whose
/// extra boxes are freed as they are played.
const KEEP_FREE: usize = 16;

/// Boxes waiting for reuse. Boxed on purpose: a box moves between the free
/// list and the channel without its 1.9 KB of samples being copied.
#[allow(clippy::vec_box)]
type FreeList = Mutex<Vec<Box<AudioFrame>>>;

/// Source of [`PooledFrame`]s for one direction of one call. Cloning shares
/// the pool.
#[derive(Clone, Default)]
pub struct FramePool {
    free: Arc<FreeList>,
}

impl FramePool {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty frame at `sample_rate`: a reused box when one is free.
    pub fn frame(&self, sample_rate: u32) -> PooledFrame {
        let reused = self.free.lock().ok().and_then(|mut free| free.pop());
        let mut frame = reused.unwrap_or_else(|| Box::new(AudioFrame::new(sample_rate)));
        frame.reset(sample_rate);
        PooledFrame {
            frame: Some(frame),
            home: Some(self.free.clone()),
        }
    }

    /// A frame holding a copy of `samples`, truncated to
    /// [`MAX_FRAME_SAMPLES`] like [`AudioFrame::from_samples`].
    pub fn with_samples(&self, sample_rate: u32, samples: &[i16]) -> PooledFrame {
        let mut frame = self.frame(sample_rate);
        let len = samples.len().min(MAX_FRAME_SAMPLES);
        frame.fill(len).copy_from_slice(&samples[..len]);
        frame
    }

    /// A frame holding a copy of `source`'s samples and rate.
    pub fn copy_of(&self, source: &AudioFrame) -> PooledFrame {
        self.with_samples(source.sample_rate(), source.samples())
    }

    /// Boxes waiting for reuse.
    pub fn free_frames(&self) -> usize {
        self.free.lock().map(|free| free.len()).unwrap_or(0)
    }
}

impl std::fmt::Debug for FramePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramePool")
            .field("free", &self.free_frames())
            .finish()
    }
}

/// A boxed [`AudioFrame`] that returns to its pool when dropped.
pub struct PooledFrame {
    /// `None` only while dropping.
    frame: Option<Box<AudioFrame>>,
    /// `None` for a frame made outside any pool, which is simply freed.
    home: Option<Arc<FreeList>>,
}

impl From<AudioFrame> for PooledFrame {
    /// A frame of no pool: for tests and rare paths, it costs an allocation.
    fn from(frame: AudioFrame) -> Self {
        Self {
            frame: Some(Box::new(frame)),
            home: None,
        }
    }
}

impl Deref for PooledFrame {
    type Target = AudioFrame;

    fn deref(&self) -> &AudioFrame {
        // Some from construction until drop.
        self.frame.as_deref().unwrap_or(&EMPTY)
    }
}

impl DerefMut for PooledFrame {
    fn deref_mut(&mut self) -> &mut AudioFrame {
        self.frame.get_or_insert_with(|| Box::new(EMPTY))
    }
}

static EMPTY: AudioFrame = AudioFrame::new(0);

impl Drop for PooledFrame {
    fn drop(&mut self) {
        let (Some(frame), Some(home)) = (self.frame.take(), self.home.take()) else {
            return;
        };
        if let Ok(mut free) = home.lock() {
            if free.len() < KEEP_FREE {
                free.push(frame);
            }
        };
    }
}

impl std::fmt::Debug for PooledFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_frames_are_reused_up_to_the_limit() {
        let pool = FramePool::new();
        let mut frame = pool.frame(16_000);
        frame.fill(3).copy_from_slice(&[1, 2, 3]);
        let address = &*frame as *const AudioFrame;
        drop(frame);
        assert_eq!(pool.free_frames(), 1);
        let again = pool.frame(8_000);
        assert_eq!(&*again as *const AudioFrame, address, "the box is reused");
        assert_eq!(again.sample_rate(), 8_000);
        assert!(again.is_empty(), "a reused frame starts empty");
        drop(again);

        let held: Vec<PooledFrame> = (0..KEEP_FREE + 5).map(|_| pool.frame(8_000)).collect();
        drop(held);
        assert_eq!(pool.free_frames(), KEEP_FREE);
    }

    #[test]
    fn a_frame_outlives_its_pool_and_copies_its_source() {
        let source = AudioFrame::from_samples(24_000, &[5, 6, 7]);
        let pool = FramePool::new();
        let copy = pool.copy_of(&source);
        drop(pool);
        assert_eq!(copy.samples(), &[5, 6, 7]);
        assert_eq!(copy.sample_rate(), 24_000);
        drop(copy);
        let loose = PooledFrame::from(source);
        assert_eq!(loose.len(), 3);
        let pool = FramePool::new();
        let long = pool.with_samples(48_000, &[1; MAX_FRAME_SAMPLES + 40]);
        assert_eq!(long.len(), MAX_FRAME_SAMPLES, "truncated, not a panic");
    }
}
