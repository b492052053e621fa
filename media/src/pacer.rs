//! Playout pacer for bot audio, sans-IO.
//!
//! Bots send audio faster than real time. The pacer queues it and hands out
//! exactly one frame each time the owner's 20 ms timer fires, so what has
//! been emitted is what the caller has heard (give or take the network).
//! Marks are queued at sample positions and fire once everything before them
//! has gone out; that is what lets a bot know how far its speech got before
//! a barge-in.

use std::collections::VecDeque;

/// Audio the queue holds without reallocating.
const PREALLOCATED_MS: u32 = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Bot audio, zero-padded if the queue ran short.
    Audio,
    /// Nothing queued: the frame is all zeros.
    Silence,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacerEvent {
    /// All audio queued before the mark has been emitted (or was cleared).
    MarkPlayed(String),
}

#[derive(Debug)]
pub struct Pacer {
    sample_rate: u32,
    max_samples: usize,
    queue: VecDeque<i16>,
    /// Marks with the absolute sample position they wait for.
    marks: VecDeque<(u64, String)>,
    events: VecDeque<PacerEvent>,
    /// Absolute position of the queue's first sample: every sample ever
    /// queued before it has been emitted or cleared.
    head: u64,
    played: u64,
    dropped: u64,
    /// Silent samples dropped to shorten a standing queue.
    skipped: u64,
}

impl Pacer {
    pub fn new(sample_rate: u32, max_queue_ms: u32) -> Self {
        let max_samples = (sample_rate as u64 * max_queue_ms as u64 / 1000) as usize;
        let prealloc = (sample_rate as u64 * PREALLOCATED_MS as u64 / 1000) as usize;
        Self {
            sample_rate: sample_rate.max(1),
            max_samples,
            queue: VecDeque::with_capacity(prealloc.min(max_samples)),
            marks: VecDeque::with_capacity(16),
            events: VecDeque::with_capacity(16),
            head: 0,
            played: 0,
            dropped: 0,
            skipped: 0,
        }
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Samples in one 20 ms frame.
    pub fn frame_samples(&self) -> usize {
        (self.sample_rate / 50) as usize
    }

    /// Queues bot audio. What would take the queue past `max_queue_ms` is
    /// dropped and counted: a bot that far ahead is misbehaving, and
    /// unbounded memory per call is worse than clipped speech.
    pub fn push_audio(&mut self, samples: &[i16]) {
        let room = self.max_samples.saturating_sub(self.queue.len());
        let take = samples.len().min(room);
        self.queue.extend(&samples[..take]);
        self.dropped += (samples.len() - take) as u64;
    }

    /// Queues a mark after the audio pushed so far.
    pub fn push_mark(&mut self, name: String) {
        if self.queue.is_empty() {
            self.events.push_back(PacerEvent::MarkPlayed(name));
        } else {
            let position = self.head + self.queue.len() as u64;
            self.marks.push_back((position, name));
        }
    }

    /// Drops all queued audio (barge-in). Pending marks fire at once, as
    /// Twilio does, so the bot learns they will never be heard.
    pub fn clear(&mut self) {
        self.head += self.queue.len() as u64;
        self.queue.clear();
        while let Some((_, name)) = self.marks.pop_front() {
            self.events.push_back(PacerEvent::MarkPlayed(name));
        }
    }

    /// Fills `out` with the next frame; call once per frame time.
    pub fn next_frame(&mut self, out: &mut [i16]) -> FrameKind {
        let n = out.len().min(self.queue.len());
        for (dst, src) in out.iter_mut().zip(self.queue.drain(..n)) {
            *dst = src;
        }
        out[n..].fill(0);
        self.advance(n);
        if n > 0 {
            FrameKind::Audio
        } else {
            FrameKind::Silence
        }
    }

    /// Drops the next `frame` samples if every one is within `level` of
    /// zero and more audio waits behind them: a bot streaming in real time
    /// behind a standing queue then plays a frame sooner, and nobody hears
    /// the silence that went. Counted as played, since a bot's playout
    /// position (marks, truncation) runs through it too.
    pub fn skip_silent_frame(&mut self, frame: usize, level: i16) -> bool {
        let level = level.unsigned_abs();
        if frame == 0
            || self.queue.len() < 2 * frame
            || !self.queue.range(..frame).all(|s| s.unsigned_abs() <= level)
        {
            return false;
        }
        self.queue.drain(..frame);
        self.advance(frame);
        self.skipped += frame as u64;
        true
    }

    /// `n` samples left the queue: marks they pass fire.
    fn advance(&mut self, n: usize) {
        self.head += n as u64;
        self.played += n as u64;
        while let Some((position, _)) = self.marks.front() {
            if *position > self.head {
                break;
            }
            if let Some((_, name)) = self.marks.pop_front() {
                self.events.push_back(PacerEvent::MarkPlayed(name));
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<PacerEvent> {
        self.events.pop_front()
    }

    /// True while there is bot audio waiting to be played.
    pub fn is_playing(&self) -> bool {
        !self.queue.is_empty()
    }

    pub fn queued_samples(&self) -> usize {
        self.queue.len()
    }

    pub fn queued_ms(&self) -> u32 {
        (self.queue.len() as u64 * 1000 / self.sample_rate as u64) as u32
    }

    /// Total bot audio emitted by [`Pacer::next_frame`].
    pub fn played_ms(&self) -> u64 {
        self.played * 1000 / self.sample_rate as u64
    }

    pub fn played_samples(&self) -> u64 {
        self.played
    }

    /// Samples refused because the queue was full.
    pub fn dropped_samples(&self) -> u64 {
        self.dropped
    }

    /// Silent samples skipped by [`Pacer::skip_silent_frame`].
    pub fn skipped_samples(&self) -> u64 {
        self.skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(start: i16, n: usize) -> Vec<i16> {
        (0..n).map(|i| start + i as i16).collect()
    }

    fn events(p: &mut Pacer) -> Vec<String> {
        std::iter::from_fn(|| p.poll_event())
            .map(|PacerEvent::MarkPlayed(name)| name)
            .collect()
    }

    #[test]
    fn only_a_silent_frame_with_audio_behind_it_is_skipped() {
        let mut p = Pacer::new(8000, 120_000);
        let quiet = [3i16; 160];
        p.push_audio(&quiet);
        assert!(!p.skip_silent_frame(160, 8), "nothing behind it");
        p.push_audio(&ramp(1000, 160));
        p.push_mark("after-speech".into());
        assert!(!p.skip_silent_frame(160, 2), "louder than the level");
        assert!(p.skip_silent_frame(160, 8));
        assert!(!p.skip_silent_frame(160, 8), "speech is never skipped");
        assert_eq!((p.skipped_samples(), p.played_samples()), (160, 160));
        assert!(events(&mut p).is_empty(), "the mark is after the speech");
        let mut out = [0i16; 160];
        assert_eq!(p.next_frame(&mut out), FrameKind::Audio);
        assert_eq!(out.to_vec(), ramp(1000, 160));
        assert_eq!(events(&mut p), ["after-speech"]);
    }

    #[test]
    fn a_mark_inside_skipped_silence_fires() {
        let mut p = Pacer::new(8000, 120_000);
        p.push_audio(&[0i16; 80]);
        p.push_mark("mid-silence".into());
        p.push_audio(&[0i16; 80]);
        p.push_audio(&ramp(1, 160));
        assert!(p.skip_silent_frame(160, 0));
        assert_eq!(events(&mut p), ["mid-silence"]);
        assert_eq!(p.queued_samples(), 160);
    }

    #[test]
    fn odd_chunks_come_out_on_exact_frame_boundaries() {
        let mut p = Pacer::new(8000, 120_000);
        let data = ramp(1, 1000);
        // 1000 samples in chunks of 7, 333, 1 and the rest.
        p.push_audio(&data[..7]);
        p.push_audio(&data[7..340]);
        p.push_audio(&data[340..341]);
        p.push_audio(&data[341..]);
        assert_eq!(p.queued_ms(), 125);
        let mut out = [0i16; 160];
        let mut got = Vec::new();
        for _ in 0..6 {
            assert_eq!(p.next_frame(&mut out), FrameKind::Audio);
            got.extend_from_slice(&out);
        }
        assert_eq!(got, data[..960]);
        assert_eq!(p.next_frame(&mut out), FrameKind::Audio);
        assert_eq!(&out[..40], &data[960..]);
        assert!(out[40..].iter().all(|&s| s == 0));
        assert_eq!(p.played_ms(), 125);
        assert_eq!(p.played_samples(), 1000);
    }

    #[test]
    fn underrun_gives_silence_then_resumes() {
        let mut p = Pacer::new(8000, 120_000);
        let mut out = [7i16; 160];
        assert_eq!(p.next_frame(&mut out), FrameKind::Silence);
        assert_eq!(out, [0; 160]);
        p.push_audio(&ramp(1, 160));
        assert_eq!(p.next_frame(&mut out), FrameKind::Audio);
        assert_eq!(p.next_frame(&mut out), FrameKind::Silence);
        p.push_audio(&ramp(100, 320));
        assert_eq!(p.next_frame(&mut out), FrameKind::Audio);
        assert_eq!(out[0], 100);
        assert_eq!(p.played_ms(), 40);
    }

    #[test]
    fn clear_drops_audio_within_one_frame_and_fires_marks() {
        let mut p = Pacer::new(16_000, 120_000);
        let mut out = [0i16; 320];
        p.push_audio(&ramp(1, 3200));
        p.push_mark("a".into());
        p.push_audio(&ramp(1, 3200));
        p.push_mark("b".into());
        p.next_frame(&mut out);
        assert_eq!(events(&mut p), Vec::<String>::new());
        p.clear();
        assert_eq!(events(&mut p), ["a", "b"]);
        assert_eq!(p.queued_ms(), 0);
        assert_eq!(p.next_frame(&mut out), FrameKind::Silence);
        assert_eq!(p.played_ms(), 20);
        // Marks after a clear wait for new audio as usual.
        p.push_audio(&ramp(1, 320));
        p.push_mark("c".into());
        assert_eq!(events(&mut p), Vec::<String>::new());
        p.next_frame(&mut out);
        assert_eq!(events(&mut p), ["c"]);
    }

    #[test]
    fn marks_fire_in_order_once_their_audio_is_out() {
        let mut p = Pacer::new(8000, 120_000);
        let mut out = [0i16; 160];
        p.push_mark("empty".into());
        assert_eq!(events(&mut p), ["empty"]);
        p.push_audio(&ramp(0, 200));
        p.push_mark("m1".into());
        p.push_mark("m2".into());
        p.push_audio(&ramp(0, 120));
        p.push_mark("m3".into());
        p.next_frame(&mut out); // 160 of 200
        assert_eq!(events(&mut p), Vec::<String>::new());
        p.next_frame(&mut out); // 320: passes 200 and 320
        assert_eq!(events(&mut p), ["m1", "m2", "m3"]);
        p.push_mark("m4".into());
        assert_eq!(events(&mut p), ["m4"]);
    }

    #[test]
    fn mark_on_a_frame_boundary_fires_with_that_frame() {
        let mut p = Pacer::new(8000, 120_000);
        let mut out = [0i16; 160];
        p.push_audio(&ramp(0, 160));
        p.push_mark("x".into());
        p.push_audio(&ramp(0, 160));
        p.next_frame(&mut out);
        assert_eq!(events(&mut p), ["x"]);
    }

    #[test]
    fn queue_is_capped() {
        let mut p = Pacer::new(8000, 100);
        p.push_audio(&ramp(0, 500));
        p.push_audio(&ramp(0, 500));
        assert_eq!(p.queued_samples(), 800);
        assert_eq!(p.queued_ms(), 100);
        assert_eq!(p.dropped_samples(), 200);
        let mut out = [0i16; 160];
        p.next_frame(&mut out);
        p.push_audio(&ramp(0, 500));
        assert_eq!(p.queued_samples(), 800);
        assert_eq!(p.dropped_samples(), 540);
    }
}
