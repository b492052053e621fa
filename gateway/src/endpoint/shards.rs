//! The endpoint runs as several workers (shards), one per core by default,
//! each with its own transaction layer, routes and calls. A message belongs
//! to the shard its Call-ID hashes to: every request and response of a
//! transaction or a dialog carries the same Call-ID, so a shard never needs
//! another's state. Call-IDs a call chooses (a transfer's agent leg, a
//! call the API places) are drawn until they hash to the call's shard; an
//! outbound registration's REGISTERs are sent through the shard its
//! Call-ID hashes to.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::call::EndpointCommand;
use crate::sip::response::new_call_id;

/// Which shard owns `call_id` among `count`. Stable for the process's life
/// (a fixed-key hash), so the sockets, the calls and the registrar agree.
pub fn shard_of(call_id: &str, count: usize) -> usize {
    if count <= 1 {
        return 0;
    }
    let mut hasher = std::hash::DefaultHasher::new();
    call_id.hash(&mut hasher);
    (hasher.finish() % count as u64) as usize
}

/// One shard's place among all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub fn owns(&self, call_id: &str) -> bool {
        shard_of(call_id, self.count) == self.index
    }

    /// A fresh Call-ID whose messages will come back to this shard
    /// (`count` draws on average).
    pub fn new_call_id(&self, host: &str) -> String {
        loop {
            let call_id = new_call_id(host);
            if self.owns(&call_id) {
                return call_id;
            }
        }
    }
}

/// The command queues of every shard, for those outside the calls (API,
/// registrar, registrations, reload) who must reach the right one.
#[derive(Clone, Debug)]
pub struct EndpointSender {
    shards: Arc<[mpsc::Sender<EndpointCommand>]>,
    next: Arc<AtomicUsize>,
}

impl EndpointSender {
    pub fn new(shards: Vec<mpsc::Sender<EndpointCommand>>) -> Self {
        assert!(!shards.is_empty(), "an endpoint has at least one shard");
        Self {
            shards: shards.into(),
            next: Arc::default(),
        }
    }

    /// The shard that owns this Call-ID's transactions and dialogs.
    pub fn for_call_id(&self, call_id: &str) -> &mpsc::Sender<EndpointCommand> {
        &self.shards[shard_of(call_id, self.shards.len())]
    }

    /// A shard for new work that has no Call-ID yet, in turn.
    pub fn next_shard(&self) -> &mpsc::Sender<EndpointCommand> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        &self.shards[index]
    }

    pub fn all(&self) -> impl Iterator<Item = &mpsc::Sender<EndpointCommand>> {
        self.shards.iter()
    }
}

/// Calls in progress across all shards: `limits.max_calls` holds for the
/// gateway, not per shard, and whoever drains it watches one number.
#[derive(Debug)]
pub struct Occupancy {
    calls: AtomicUsize,
    watch: watch::Sender<usize>,
    /// When a shard last turned a new call away for want of a place, in ms
    /// since `epoch` (0: never).
    refused_ms: AtomicU64,
    epoch: Instant,
    /// What the CPU carries now (`call_limit`); `max_calls` still holds.
    adaptive_limit: AtomicUsize,
    /// New calls refused for want of a place so far, by the shards and
    /// the sockets: whether demand exceeds the places, for `call_limit`.
    refusals: AtomicU64,
}

/// How long after a shard refused a call for want of a place the socket
/// tasks may refuse too, unparsed, while every place is still taken.
const REFUSING_FOR: Duration = Duration::from_millis(100);

impl Occupancy {
    pub fn new(watch: watch::Sender<usize>) -> Self {
        Self {
            calls: AtomicUsize::new(0),
            watch,
            refused_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            adaptive_limit: AtomicUsize::new(usize::MAX),
            refusals: AtomicU64::new(0),
        }
    }

    /// A shard refused a new call: every place was taken when it looked.
    pub fn note_refusal(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.refused_ms.store(ms.max(1), Ordering::Relaxed);
        self.count_refusal();
    }

    /// Counts a new call refused for want of a place (the sockets call it
    /// alone: only the shards open the sockets' window).
    pub fn count_refusal(&self) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// New calls refused for want of a place so far.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }

    /// Whether the socket tasks should refuse new calls themselves: every
    /// place is taken now and a shard refused one lately. Only the shards
    /// see a full gateway first: they serve the BYEs already read before
    /// new INVITEs, so a short stall that fills every place for a few
    /// milliseconds does not turn into refusals at the socket.
    pub fn refusing(&self, max: usize) -> bool {
        !self.has_place(max) && self.refused_lately(Instant::now())
    }

    /// Sets the limit overload control computes (`usize::MAX`: none).
    pub fn set_adaptive_limit(&self, limit: usize) {
        self.adaptive_limit.store(limit, Ordering::Relaxed);
    }

    /// How many calls may be in progress: `max`, or fewer while the CPU
    /// cannot carry that many.
    pub fn limit(&self, max: usize) -> usize {
        max.min(self.adaptive_limit.load(Ordering::Relaxed))
    }

    /// Why a new call finds no place: its stage in
    /// `switchboard_sip_shed_total`, and the reason logged.
    pub fn no_place_reason(&self, max: usize) -> (&'static str, &'static str) {
        if self.limit(max) < max {
            (
                "call_limit",
                "overloaded: calls in progress run late, so fewer places for now (adaptive call limit)",
            )
        } else {
            ("capacity", "at capacity (limits.max_calls)")
        }
    }

    pub fn has_place(&self, max: usize) -> bool {
        self.calls() < self.limit(max)
    }

    fn refused_lately(&self, now: Instant) -> bool {
        let refused = self.refused_ms.load(Ordering::Relaxed);
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        refused != 0 && ms.saturating_sub(refused) < REFUSING_FOR.as_millis() as u64
    }

    /// Takes a place for a new call unless `max` (or the adaptive limit)
    /// are in progress.
    pub fn try_take(&self, max: usize) -> bool {
        let max = self.limit(max);
        let taken = self
            .calls
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |calls| {
                (calls < max).then_some(calls + 1)
            })
            .is_ok();
        if taken {
            self.publish();
        }
        taken
    }

    /// Gives back the place of a call that ended.
    pub fn release(&self) {
        let _ = self
            .calls
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |calls| {
                calls.checked_sub(1)
            });
        self.publish();
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Acquire)
    }

    fn publish(&self) {
        let calls = self.calls();
        self.watch.send_replace(calls);
        crate::metrics::active_calls(calls);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_id_has_one_stable_shard() {
        for count in [1, 2, 3, 8] {
            let mut seen = vec![0usize; count];
            for n in 0..4000 {
                let call_id = format!("{n:x}@10.0.0.1");
                let shard = shard_of(&call_id, count);
                assert_eq!(shard, shard_of(&call_id, count));
                seen[shard] += 1;
            }
            // Roughly even: no shard gets under half its share.
            assert!(seen.iter().all(|n| *n > 4000 / count / 2), "{seen:?}");
        }
    }

    #[test]
    fn call_ids_we_choose_come_back_to_their_shard() {
        for index in 0..4 {
            let shard = Shard { index, count: 4 };
            for _ in 0..50 {
                let call_id = shard.new_call_id("127.0.0.1");
                assert_eq!(shard_of(&call_id, 4), index);
                assert!(call_id.ends_with("@127.0.0.1"));
            }
        }
    }

    #[test]
    fn max_calls_holds_across_shards() {
        let (watch, seen) = watch::channel(0);
        let occupancy = Arc::new(Occupancy::new(watch));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let occupancy = occupancy.clone();
                std::thread::spawn(move || (0..100).filter(|_| occupancy.try_take(150)).count())
            })
            .collect();
        let taken: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(taken, 150);
        assert_eq!(*seen.borrow(), 150);
        occupancy.release();
        assert_eq!(occupancy.calls(), 149);
        assert!(occupancy.try_take(150));
        assert!(!occupancy.try_take(150));
    }

    #[test]
    fn the_adaptive_limit_holds_below_max_calls_and_says_so() {
        let occupancy = Occupancy::new(watch::channel(0).0);
        assert!(occupancy.try_take(10) && occupancy.try_take(10));
        assert_eq!(occupancy.no_place_reason(10).0, "capacity");
        occupancy.set_adaptive_limit(2);
        assert!(!occupancy.has_place(10) && !occupancy.try_take(10));
        assert_eq!(occupancy.no_place_reason(10).0, "call_limit");
        occupancy.note_refusal(Instant::now());
        assert!(
            occupancy.refusing(10),
            "the sockets refuse at the limit too"
        );
        // max_calls still holds when it is the lower.
        assert_eq!(occupancy.limit(1), 1);
        assert_eq!(occupancy.no_place_reason(1).0, "capacity");
        occupancy.set_adaptive_limit(usize::MAX);
        assert!(occupancy.try_take(10));
    }

    /// Only a shard's refusal lets the sockets refuse, and only for a while.
    #[test]
    fn the_sockets_refuse_only_after_a_shard_did_lately() {
        let occupancy = Occupancy::new(watch::channel(0).0);
        assert!(occupancy.try_take(1));
        assert!(!occupancy.refusing(1), "full, but no shard refused yet");
        let now = Instant::now();
        occupancy.note_refusal(now);
        assert!(occupancy.refusing(1));
        assert!(!occupancy.refusing(2), "a place is free");
        assert!(occupancy.refused_lately(now + REFUSING_FOR / 2));
        assert!(!occupancy.refused_lately(now + REFUSING_FOR * 2));
    }
}
