//! Where a bot's audio items sit on the caller's playout timeline, so an
//! interrupted item can be cut at what the caller actually heard.
//!
//! The timeline is the call's [`crate::PlayoutClock`]: milliseconds of bot
//! audio played, which stands still during silence and never counts cleared
//! audio. Audio queued behind the playing audio starts where the queue ends;
//! audio queued after the queue ran dry (or was cleared) starts at the
//! clock's current value. Sans-IO: the caller passes the clock's reading.

/// Interrupted items remembered so their in-flight audio can be dropped.
const REMEMBERED_CUTS: usize = 4;

/// An item the caller interrupted and how much of it they heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cut {
    pub item_id: String,
    pub content_index: u64,
    pub heard_ms: u64,
}

#[derive(Debug)]
struct Item {
    id: String,
    content_index: u64,
    /// Start on the timeline, in microseconds.
    start_us: u64,
    samples: u64,
}

#[derive(Debug)]
pub(crate) struct PlayoutPosition {
    sample_rate: u64,
    /// End of all queued audio on the timeline, in microseconds.
    queue_end_us: u64,
    current: Option<Item>,
    /// Recently cut items, oldest first.
    cut: Vec<String>,
}

impl PlayoutPosition {
    pub fn new(sample_rate: u32) -> Self {
        Self {
            sample_rate: u64::from(sample_rate.max(1)),
            queue_end_us: 0,
            current: None,
            cut: Vec::with_capacity(REMEMBERED_CUTS),
        }
    }

    /// `samples` more of `item_id` were queued for the caller, with the
    /// clock reading `played_ms`.
    pub fn queued(&mut self, item_id: &str, content_index: u64, samples: u64, played_ms: u64) {
        let now_us = played_ms.saturating_mul(1000);
        let same = self
            .current
            .as_ref()
            .is_some_and(|item| item.id == item_id && item.content_index == content_index);
        if !same {
            // Behind whatever still plays, or now if nothing does.
            let start_us = self.queue_end_us.max(now_us);
            self.current = Some(Item {
                id: item_id.to_owned(),
                content_index,
                start_us,
                samples: 0,
            });
        }
        if let Some(item) = &mut self.current {
            item.samples = item.samples.saturating_add(samples);
            let length_us = item.samples.saturating_mul(1_000_000) / self.sample_rate;
            self.queue_end_us = item.start_us.saturating_add(length_us);
        }
    }

    /// The caller interrupted with the clock at `played_ms`: the queue is
    /// being cleared. Returns the item that was playing, cut where the
    /// caller stopped hearing it, if there was one.
    pub fn interrupt(&mut self, played_ms: u64) -> Option<Cut> {
        let now_us = played_ms.saturating_mul(1000);
        self.queue_end_us = now_us;
        let item = self.current.take()?;
        let length_us = item.samples.saturating_mul(1_000_000) / self.sample_rate;
        let heard_us = now_us.saturating_sub(item.start_us).min(length_us);
        if self.cut.len() == REMEMBERED_CUTS {
            self.cut.remove(0);
        }
        self.cut.push(item.id.clone());
        Some(Cut {
            item_id: item.id,
            content_index: item.content_index,
            heard_ms: heard_us / 1000,
        })
    }

    /// True for an item cut by an interruption: its late audio must not play.
    pub fn is_truncated(&self, item_id: &str) -> bool {
        self.cut.iter().any(|id| id == item_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 8000;

    #[test]
    fn cut_at_what_was_heard() {
        let mut position = PlayoutPosition::new(RATE);
        // 4 s queued at once while nothing had played.
        position.queued("a", 0, 32_000, 0);
        let cut = position.interrupt(600).unwrap();
        assert_eq!(cut.heard_ms, 600);
        assert_eq!(cut.item_id, "a");
        assert!(position.is_truncated("a"));
        assert!(position.interrupt(700).is_none(), "nothing left to cut");
    }

    #[test]
    fn an_item_behind_another_starts_where_the_queue_ends() {
        let mut position = PlayoutPosition::new(RATE);
        position.queued("a", 0, 8000, 0); // 1 s
        position.queued("b", 0, 8000, 200);
        // 1.5 s played: half a second of b.
        assert_eq!(position.interrupt(1500).unwrap().heard_ms, 500);
    }

    #[test]
    fn after_a_cut_or_silence_the_next_item_starts_now() {
        let mut position = PlayoutPosition::new(RATE);
        position.queued("a", 0, 8000, 0);
        position.interrupt(300).unwrap();
        position.queued("b", 0, 800, 300); // 100 ms, played by 400
        position.queued("c", 0, 8000, 2000); // the queue ran dry before this
        assert_eq!(position.interrupt(2250).unwrap().heard_ms, 250);
    }

    #[test]
    fn never_more_than_the_item_holds_and_zero_before_it_plays() {
        let mut position = PlayoutPosition::new(RATE);
        position.queued("a", 0, 1600, 0); // 200 ms
        assert_eq!(position.interrupt(5000).unwrap().heard_ms, 200);
        position.queued("b", 0, 1600, 5000);
        assert_eq!(position.interrupt(5000).unwrap().heard_ms, 0);
    }

    #[test]
    fn remembers_only_recent_cuts() {
        let mut position = PlayoutPosition::new(RATE);
        for i in 0..10 {
            position.queued(&i.to_string(), 0, 160, i * 100);
            position.interrupt(i * 100 + 10);
        }
        assert!(position.is_truncated("9"));
        assert!(!position.is_truncated("0"));
    }
}
