//! How many calls the gateway can carry right now, below `max_calls`.
//!
//! Every call costs work for as long as it lives (its RTP, its timers),
//! and under overload calls live longer: their ACKs and BYEs wait behind
//! the work of every other call. Taking every place `max_calls` allows then
//! feeds itself: more calls, slower calls, more calls in progress. Offered
//! four times its peak on one core, the gateway held 1,000 calls living
//! ~80 ms each and completed ~5,000 calls/s; held to 300 places, calls
//! lived ~28 ms and it completed ~6,000/s. But no fixed number is right:
//! in production calls last minutes and 300 places would refuse calls on
//! an idle machine.
//!
//! So once new calls find every place taken, the number of places follows
//! what the CPU can carry, like a TCP congestion window: while tasks wait
//! longer than the target for a CPU (the overload probe's smoothed
//! lateness) and new calls are still refused, the limit drops to 90 % of
//! the calls in progress; late without refusals (a backlog draining) it
//! holds; while they wait less than half of it and the limit is nearly
//! used, it grows by a sixteenth; a second on time with the calls under
//! half the limit lifts it. Lateness alone, with places free, does not
//! engage it: near the peak a stall of the machine makes calls late for a
//! moment, and limiting calls for that turned runs the gateway completed
//! cleanly into thousands of 503s. Sans-IO: fed samples, no clock.

use std::time::Duration;

/// The limit never drops below this: some calls keep completing, and their
/// timing tells when load eases.
const FLOOR: usize = 8;
/// Samples between two changes of the limit: a change needs time to show
/// in the lateness before the next one.
const SAMPLES_PER_STEP: u32 = 5;
/// Steps on time with the calls in progress under half the limit before
/// the limit is lifted (one second): the overload is over.
const STEPS_TO_LIFT: u32 = 40;

#[derive(Debug, Clone)]
pub struct AdaptiveCallLimit {
    target: Duration,
    /// `None` while none is engaged (never yet, or lifted): only
    /// `max_calls` holds.
    limit: Option<usize>,
    samples: u32,
    idle_steps: u32,
    /// The refusal count at the last step.
    refusals: u64,
}

impl AdaptiveCallLimit {
    pub fn new(target: Duration) -> Self {
        AdaptiveCallLimit {
            target,
            limit: None,
            samples: 0,
            idle_steps: 0,
            refusals: 0,
        }
    }

    /// One smoothed lateness sample, the calls in progress now and how many
    /// new calls were refused for want of a place so far (a counter);
    /// returns the limit on calls in progress (`None`: no limit but
    /// `max_calls`).
    pub fn sample(&mut self, lateness: Duration, calls: usize, refusals: u64) -> Option<usize> {
        self.samples += 1;
        if self.samples < SAMPLES_PER_STEP {
            return self.limit;
        }
        self.samples = 0;
        let refusing = refusals != self.refusals;
        self.refusals = refusals;
        let late = lateness > self.target;
        if late && refusing {
            let carried = self.limit.map_or(calls, |limit| limit.min(calls));
            self.limit = Some((carried * 9 / 10).max(FLOOR));
            self.idle_steps = 0;
        } else if late {
            // Late with no call refused: the calls in progress are below the
            // limit, draining a backlog (after a stall of the machine, say).
            // Following them down would refuse calls at the peak rate once
            // the stall is over; hold the limit until demand presses on it.
            self.idle_steps = 0;
        } else if let Some(limit) = self.limit {
            let on_time = lateness < self.target / 2;
            if on_time && calls * 4 >= limit * 3 {
                self.limit = Some(limit + (limit / 16).max(2));
            }
            self.idle_steps = if on_time && calls < limit / 2 {
                self.idle_steps + 1
            } else {
                0
            };
            if self.idle_steps >= STEPS_TO_LIFT {
                self.limit = None;
                self.idle_steps = 0;
            }
        }
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// `n` steps' worth of samples while new calls find every place taken;
    /// the limit after them (`usize::MAX`: none).
    fn steps(limit: &mut AdaptiveCallLimit, lateness: Duration, calls: usize, n: u32) -> usize {
        steps_refusing(limit, lateness, calls, true, n)
    }

    /// The same, new calls refused for want of a place or not.
    fn steps_refusing(
        limit: &mut AdaptiveCallLimit,
        lateness: Duration,
        calls: usize,
        refusing: bool,
        n: u32,
    ) -> usize {
        let mut now = None;
        for _ in 0..n * SAMPLES_PER_STEP {
            let refusals = limit.refusals + u64::from(refusing);
            now = limit.sample(lateness, calls, refusals);
        }
        now.unwrap_or(usize::MAX)
    }

    #[test]
    fn no_limit_until_calls_run_late() {
        let mut limit = AdaptiveCallLimit::new(5 * MS);
        assert_eq!(steps(&mut limit, MS, 900, 100), usize::MAX);
        assert_eq!(steps(&mut limit, 5 * MS, 900, 100), usize::MAX);
    }

    /// Near the peak a stall makes calls late for a moment; while places
    /// are free that alone must not refuse calls. It engages once demand
    /// exceeds the places too.
    #[test]
    fn lateness_engages_the_limit_only_while_places_run_out() {
        let mut limit = AdaptiveCallLimit::new(5 * MS);
        assert_eq!(
            steps_refusing(&mut limit, 50 * MS, 150, false, 100),
            usize::MAX
        );
        // Every place taken, but calls on time: max_calls is what binds.
        assert_eq!(steps(&mut limit, 4 * MS, 1000, 40), usize::MAX);
        assert_eq!(steps_refusing(&mut limit, 8 * MS, 1000, true, 1), 900);
        // Engaged, it shrinks while calls are late and refused.
        assert_eq!(steps_refusing(&mut limit, 8 * MS, 900, true, 1), 810);
    }

    /// A stall at the peak: every place fills, calls are refused and run
    /// late, and the limit engages. The backlog then drains while the
    /// calls are still late; the limit must not follow the calls in
    /// progress down to what the peak rate needs, or it refuses calls at
    /// that rate once the stall is over.
    #[test]
    fn after_a_stall_the_limit_holds_while_the_backlog_drains() {
        let mut limit = AdaptiveCallLimit::new(10 * MS);
        assert_eq!(steps_refusing(&mut limit, 30 * MS, 1000, true, 1), 900);
        for calls in [800, 600, 400, 200, 150] {
            assert_eq!(steps_refusing(&mut limit, 20 * MS, calls, false, 2), 900);
        }
        assert_eq!(
            steps_refusing(&mut limit, MS, 150, false, STEPS_TO_LIFT),
            usize::MAX,
            "lifted after a second on time"
        );
    }

    #[test]
    fn late_calls_bring_the_limit_below_the_calls_in_progress() {
        let mut limit = AdaptiveCallLimit::new(5 * MS);
        assert_eq!(steps(&mut limit, 8 * MS, 1000, 1), 900);
        // The calls in progress drain below the limit: it follows them.
        assert_eq!(steps(&mut limit, 8 * MS, 500, 1), 450);
        assert_eq!(steps(&mut limit, 8 * MS, 450, 200), FLOOR);
    }

    #[test]
    fn the_limit_grows_back_only_while_used_and_on_time() {
        let mut limit = AdaptiveCallLimit::new(5 * MS);
        assert_eq!(steps(&mut limit, 8 * MS, 320, 1), 288);
        // On time but between half the target and the target: held.
        assert_eq!(steps(&mut limit, 4 * MS, 288, 10), 288);
        // On time, but far from the limit: nothing to grow for.
        assert_eq!(steps(&mut limit, MS, 100, 10), 288);
        // On time and used: grows by a sixteenth per step.
        assert_eq!(steps(&mut limit, MS, 288, 1), 306);
        let mut grown = 306;
        for _ in 0..40 {
            grown = steps(&mut limit, MS, grown, 1);
        }
        assert!(grown > 3000, "{grown}");
    }

    #[test]
    fn the_limit_is_lifted_after_a_second_on_time_and_far_from_it() {
        let mut limit = AdaptiveCallLimit::new(5 * MS);
        assert_eq!(steps(&mut limit, 8 * MS, 200, 1), 180);
        assert_eq!(steps(&mut limit, MS, 80, STEPS_TO_LIFT - 1), 180);
        // A step near the limit starts the count again.
        assert_eq!(steps(&mut limit, MS, 100, 1), 180);
        assert_eq!(steps(&mut limit, MS, 80, STEPS_TO_LIFT - 1), 180);
        assert_eq!(steps(&mut limit, MS, 80, 1), usize::MAX);
    }
}
