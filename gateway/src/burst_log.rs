//! One log line per burst instead of one per event: under a flood or an
//! overload, a line per refused request would add to the load it reports.
//! Lock-free, so socket tasks can share one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one line per this long.
pub const EVERY: Duration = Duration::from_secs(10);

pub struct BurstLog {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last line, plus one; 0 = never.
    last_ms: AtomicU64,
    since_last: AtomicU64,
}

impl Default for BurstLog {
    fn default() -> Self {
        BurstLog {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            since_last: AtomicU64::new(0),
        }
    }
}

impl BurstLog {
    /// Counts one event; `Some(events since the last line)` when a line is
    /// due now.
    pub fn note(&self) -> Option<u64> {
        let count = self.since_last.fetch_add(1, Ordering::Relaxed) + 1;
        let now_ms = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms < last + EVERY.as_millis() as u64 {
            return None;
        }
        self.last_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        self.since_last.store(0, Ordering::Relaxed);
        Some(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_logs_and_the_burst_after_it_does_not() {
        let log = BurstLog::default();
        assert_eq!(log.note(), Some(1));
        assert!((0..1000).all(|_| log.note().is_none()));
    }
}
