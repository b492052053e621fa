//! Is the gateway keeping up? Calls are set up by tasks on the runtime's
//! workers; when INVITEs arrive faster than those tasks can answer them,
//! every task waits longer to run, calls in progress slow down with the
//! new ones, and the gateway collapses (calls pile up to `max_calls`,
//! answers come after the callers' retransmissions). A probe task sleeps
//! a few milliseconds at a time and measures how late it wakes: that is
//! how long any runnable task waits for a worker. While it stays high, new
//! INVITEs are answered 503 + Retry-After by the socket tasks themselves,
//! before anything is created, and the calls already admitted finish.
//! The same lateness drives the adaptive call limit (`call_limit.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// How often the probe wakes.
pub const PROBE_EVERY: Duration = Duration::from_millis(5);
/// The share of new INVITEs admitted never drops below this: some calls
/// keep completing, and their timing tells when load eases.
const MIN_ADMIT: f64 = 0.02;

/// Decides from lateness samples which share of new INVITEs to admit:
/// multiplicative decrease while tasks wait longer than the limit,
/// additive increase once they wait less than half of it. Shedding all or
/// nothing collapsed: at twice the capacity the 503s alone kept the
/// runtime busy, so nothing was admitted again. Sans-IO: fed samples, no
/// clock of its own.
#[derive(Debug, Clone)]
pub struct LagDetector {
    /// Smoothed lateness (exponential average, 1/8 per sample), in µs.
    average_us: f64,
    limit_us: f64,
    admit: f64,
}

impl LagDetector {
    pub fn new(limit: Duration) -> Self {
        LagDetector {
            average_us: 0.0,
            limit_us: limit.as_micros() as f64,
            admit: 1.0,
        }
    }

    /// One probe's lateness; returns the share of new INVITEs to admit.
    pub fn sample(&mut self, late: Duration) -> f64 {
        let late_us = late.as_micros() as f64;
        self.average_us += (late_us - self.average_us) / 8.0;
        if self.average_us > self.limit_us {
            self.admit = (self.admit * 0.9).max(MIN_ADMIT);
        } else if self.average_us < self.limit_us / 2.0 {
            self.admit = (self.admit + 0.01).min(1.0);
        }
        self.admit
    }

    pub fn average(&self) -> Duration {
        Duration::from_micros(self.average_us as u64)
    }
}

const PPM: u64 = 1_000_000;

/// What the socket tasks read per new INVITE, and the probe writes.
#[derive(Debug)]
pub struct Overload {
    /// Admitted share of new INVITEs, in millionths.
    admit_ppm: AtomicU64,
    /// Running sum of `admit_ppm` over INVITEs seen: one is admitted each
    /// time it passes a whole million, so the share is exact, not random.
    credit: AtomicU64,
}

impl Default for Overload {
    fn default() -> Self {
        Overload {
            admit_ppm: AtomicU64::new(PPM),
            credit: AtomicU64::new(0),
        }
    }
}

impl Overload {
    pub fn is_shedding(&self) -> bool {
        self.admit_ppm.load(Ordering::Relaxed) < PPM
    }

    /// Whether this new INVITE may start a call (always, unless shedding).
    pub fn admit(&self) -> bool {
        let share = self.admit_ppm.load(Ordering::Relaxed);
        if share >= PPM {
            return true;
        }
        let before = self.credit.fetch_add(share, Ordering::Relaxed);
        (before + share) / PPM > before / PPM
    }

    /// Runs the probe until `shutdown` changes or closes.
    pub async fn monitor(
        self: Arc<Self>,
        limit: Duration,
        call_target: Option<Duration>,
        occupancy: Arc<crate::endpoint::Occupancy>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut detector = LagDetector::new(limit);
        let mut limiter = call_target.map(crate::call_limit::AdaptiveCallLimit::new);
        let mut call_limit = None;
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
            let admit = detector.sample(late);
            if let Some(limiter) = &mut limiter {
                let limit =
                    limiter.sample(detector.average(), occupancy.calls(), occupancy.refusals());
                publish_call_limit(&occupancy, &mut call_limit, limit, detector.average());
            }
            self.admit_ppm
                .store((admit * PPM as f64) as u64, Ordering::Relaxed);
            let shedding = self.is_shedding();
            if shedding != was {
                crate::metrics::overloaded(shedding);
                if shedding {
                    tracing::warn!(
                        delay_ms = detector.average().as_millis() as u64,
                        "overloaded: tasks wait too long for a CPU; a share of new calls gets 503 until it recovers"
                    );
                } else {
                    tracing::info!("load back to normal: taking every new call again");
                }
            }
        }
    }
}

/// Applies the adaptive call limit to the places; logs when it starts and
/// when it is lifted.
fn publish_call_limit(
    occupancy: &crate::endpoint::Occupancy,
    current: &mut Option<usize>,
    limit: Option<usize>,
    delay: Duration,
) {
    if limit == *current {
        return;
    }
    occupancy.set_adaptive_limit(limit.unwrap_or(usize::MAX));
    crate::metrics::adaptive_call_limit(limit);
    match (*current, limit) {
        (None, Some(limit)) => tracing::warn!(
            limit,
            delay_ms = delay.as_millis() as u64,
            "overloaded: calls in progress run late; new calls get 503 above an adaptive limit until they run on time"
        ),
        (Some(_), None) => {
            tracing::info!("calls run on time again: the adaptive call limit is lifted")
        }
        _ => {}
    }
    *current = limit;
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn sustained_lag_lowers_the_admitted_share_and_recovery_restores_it() {
        let mut detector = LagDetector::new(40 * MS);
        for _ in 0..100 {
            assert_eq!(detector.sample(Duration::ZERO), 1.0);
        }
        // One 200 ms stall moves the average to 25 ms: nothing shed.
        assert_eq!(detector.sample(200 * MS), 1.0);
        // Sustained 100 ms: the share falls fast, but never to nothing.
        let mut share = 1.0;
        for _ in 0..200 {
            share = detector.sample(100 * MS);
        }
        assert!((MIN_ADMIT..0.05).contains(&share), "{share}");
        // Between half the limit and the limit: the share holds.
        for _ in 0..50 {
            detector.sample(30 * MS);
        }
        let held = detector.sample(30 * MS);
        assert!((held - share).abs() < 0.05, "{held} vs {share}");
        // No lag: back to everything within a second of samples.
        let mut samples = 0;
        while detector.sample(Duration::ZERO) < 1.0 {
            samples += 1;
            assert!(samples < 200, "recovery too slow");
        }
    }

    /// What the controller decides reaches the places the shards and the
    /// sockets read, and is taken away again when lifted.
    #[test]
    fn the_call_limit_reaches_the_places() {
        let occupancy = crate::endpoint::Occupancy::new(watch::channel(0).0);
        let mut current = None;
        publish_call_limit(&occupancy, &mut current, Some(12), MS);
        assert_eq!((current, occupancy.limit(1000)), (Some(12), 12));
        publish_call_limit(&occupancy, &mut current, Some(20), MS);
        assert_eq!(occupancy.limit(1000), 20);
        publish_call_limit(&occupancy, &mut current, None, MS);
        assert_eq!((current, occupancy.limit(1000)), (None, 1000));
    }

    #[test]
    fn the_admitted_share_is_exact() {
        let overload = Overload::default();
        assert!((0..1000).all(|_| overload.admit()));
        overload.admit_ppm.store(PPM / 4, Ordering::Relaxed);
        let admitted = (0..1000).filter(|_| overload.admit()).count();
        assert_eq!(admitted, 250);
    }
}
