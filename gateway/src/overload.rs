//! Is the gateway keeping up? Calls are set up by tasks on the runtime's
//! workers; when INVITEs arrive faster than those tasks can answer them,
//! every task waits longer to run, calls in progress slow down with the
//! new ones, and the gateway collapses (calls pile up to `max_calls`,
//! answers come after the callers' retransmissions). A probe task sleeps
//! a few milliseconds at a time and measures how late it wakes: that is
//! how long any runnable task waits for a worker. While it stays high, new
//! INVITEs are answered 503 + Retry-After by the socket tasks themselves,
//! before anything is created, and the calls already admitted finish.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// How often the probe wakes.
pub const PROBE_EVERY: Duration = Duration::from_millis(5);

/// Decides from lateness samples, with hysteresis, whether to shed.
/// Sans-IO: fed samples, no clock of its own.
#[derive(Debug, Clone)]
pub struct LagDetector {
    /// Smoothed lateness (exponential average, 1/8 per sample), in µs.
    average_us: f64,
    start_above_us: f64,
    stop_below_us: f64,
    shedding: bool,
}

impl LagDetector {
    /// Sheds once the smoothed lateness passes `limit`, and stops once it
    /// falls under a quarter of it.
    pub fn new(limit: Duration) -> Self {
        let limit_us = limit.as_micros() as f64;
        LagDetector {
            average_us: 0.0,
            start_above_us: limit_us,
            stop_below_us: limit_us / 4.0,
            shedding: false,
        }
    }

    /// One probe's lateness; returns whether new calls should be shed.
    pub fn sample(&mut self, late: Duration) -> bool {
        let late_us = late.as_micros() as f64;
        self.average_us += (late_us - self.average_us) / 8.0;
        if self.shedding {
            self.shedding = self.average_us >= self.stop_below_us;
        } else {
            self.shedding = self.average_us > self.start_above_us;
        }
        self.shedding
    }

    pub fn average(&self) -> Duration {
        Duration::from_micros(self.average_us as u64)
    }
}

/// What the socket tasks read per new request, and the probe writes.
#[derive(Debug, Default)]
pub struct Overload {
    shedding: AtomicBool,
    average_us: AtomicU64,
}

impl Overload {
    pub fn is_shedding(&self) -> bool {
        self.shedding.load(Ordering::Relaxed)
    }

    /// The smoothed scheduling delay the probe last measured.
    pub fn scheduling_delay(&self) -> Duration {
        Duration::from_micros(self.average_us.load(Ordering::Relaxed))
    }

    /// Runs the probe until `shutdown` changes or closes.
    pub async fn monitor(self: Arc<Self>, limit: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut detector = LagDetector::new(limit);
        loop {
            let asleep = std::time::Instant::now();
            tokio::select! {
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = shutdown.changed() => return,
            }
            // The timer's own granularity is about a millisecond.
            let late = asleep
                .elapsed()
                .saturating_sub(PROBE_EVERY + Duration::from_millis(1));
            let was = self.is_shedding();
            let shedding = detector.sample(late);
            self.average_us
                .store(detector.average().as_micros() as u64, Ordering::Relaxed);
            if shedding != was {
                self.shedding.store(shedding, Ordering::Relaxed);
                crate::metrics::overloaded(shedding);
                if shedding {
                    tracing::warn!(
                        delay_ms = detector.average().as_millis() as u64,
                        "overloaded: tasks wait too long for a CPU; new calls get 503 until it recovers"
                    );
                } else {
                    tracing::info!("load back to normal: taking new calls again");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_short_spike_does_not_shed_but_sustained_lag_does_and_recovery_ends_it() {
        let mut detector = LagDetector::new(40 * MS);
        for _ in 0..100 {
            assert!(!detector.sample(Duration::ZERO));
        }
        // One 200 ms stall moves the average to 25 ms: no shedding.
        assert!(!detector.sample(200 * MS));
        let mut samples = 1;
        while !detector.sample(100 * MS) {
            samples += 1;
            assert!(samples < 20, "sustained 100 ms lag must shed");
        }
        // Between a quarter of the limit and the limit: keeps shedding.
        for _ in 0..50 {
            assert!(detector.sample(20 * MS));
        }
        let mut samples = 0;
        while detector.sample(Duration::ZERO) {
            samples += 1;
            assert!(samples < 30, "no lag must end shedding");
        }
        assert!(detector.average() < 10 * MS);
    }
}
