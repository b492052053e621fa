//! Which Call-IDs have an INVITE still waiting for its final answer: a
//! counting filter the transaction layers write and the socket tasks read
//! without a lock. A socket task may refuse a new INVITE from its bytes,
//! before parsing it, only if no transaction holds its Call-ID here: a
//! retransmission of an INVITE the gateway has taken on must reach its
//! transaction, not get a 503. A false "maybe held" (two Call-IDs sharing
//! a slot) only sends an INVITE the ordinary way.
//!
//! Only INVITEs without a final response are held: a few hundred at a time
//! at thousands of calls per second, so the slots stay sparse. Once a final
//! response has gone out the caller stops retransmitting, and a stray 503
//! after it is ignored by the caller's transaction (RFC 3261 §17.1.1.2).

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, Ordering};

/// 128 KiB of counters; a thousand held Call-IDs leave 97 % of the slots
/// empty.
const SLOTS: usize = 1 << 15;

pub struct PendingInvites {
    slots: Box<[AtomicU32]>,
    /// Seeded per process, so nobody can aim Call-IDs at one slot.
    hasher: RandomState,
}

impl Default for PendingInvites {
    fn default() -> Self {
        PendingInvites {
            slots: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl PendingInvites {
    fn slot(&self, call_id: &str) -> &AtomicU32 {
        let hash = self.hasher.hash_one(call_id.as_bytes());
        &self.slots[hash as usize % SLOTS]
    }

    /// An INVITE server transaction for `call_id` began.
    pub fn hold(&self, call_id: &str) {
        self.slot(call_id).fetch_add(1, Ordering::AcqRel);
    }

    /// That transaction sent its final response or ended; once per
    /// [`hold`](Self::hold).
    pub fn release(&self, call_id: &str) {
        let _ = self
            .slot(call_id)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_sub(1)
            });
    }

    /// False only if no transaction holds `call_id`.
    pub fn may_hold(&self, call_id: &str) -> bool {
        self.slot(call_id).load(Ordering::Acquire) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_id_is_held_until_every_hold_is_released() {
        let pending = PendingInvites::default();
        assert!(!pending.may_hold("a@host"));
        pending.hold("a@host");
        pending.hold("a@host");
        assert!(pending.may_hold("a@host"));
        pending.release("a@host");
        assert!(pending.may_hold("a@host"));
        pending.release("a@host");
        assert!(!pending.may_hold("a@host"));
        // A release too many does not wrap around into "held".
        pending.release("a@host");
        assert!(!pending.may_hold("a@host"));
    }

    #[test]
    fn a_thousand_held_call_ids_leave_most_others_free() {
        let pending = PendingInvites::default();
        for n in 0..1000 {
            pending.hold(&format!("{n}-held@10.0.0.1"));
        }
        let falsely_held = (0..10_000)
            .filter(|n| pending.may_hold(&format!("{n}-new@10.0.0.1")))
            .count();
        // 1,000 of 32,768 slots taken: about 3 % expected.
        assert!(falsely_held < 600, "{falsely_held} of 10,000");
    }
}
