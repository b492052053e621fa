//! Server transactions, INVITE (§17.2.1 + RFC 6026) and non-INVITE (§17.2.2).

use std::time::{Duration, Instant};

use super::{Peer, ServerKey, Timers};
use crate::sip::message::{Method, Request};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No final response yet.
    Proceeding,
    /// Final non-2xx sent: INVITE waits for the ACK (G/H); non-INVITE
    /// absorbs retransmissions (J).
    Completed,
    /// INVITE: ACK received, absorbing ACK retransmissions (I).
    Confirmed,
    /// INVITE: 2xx sent, retransmitting it until the ACK (L).
    Accepted,
}

pub(super) struct ServerTx {
    pub(super) key: ServerKey,
    pub(super) peer: Peer,
    pub(super) call_id: String,
    cseq: u32,
    is_invite: bool,
    state: State,
    pub(super) last_response: Option<Vec<u8>>,
    retransmit_at: Option<Instant>,
    interval: Duration,
    expire_at: Option<Instant>,
}

pub(super) struct ServerTimeout {
    pub resend: Option<Vec<u8>>,
    pub ack_timeout: bool,
    pub terminated: bool,
}

impl ServerTx {
    pub(super) fn new(key: ServerKey, peer: Peer, request: &Request) -> Self {
        ServerTx {
            key,
            peer,
            call_id: request.call_id().unwrap_or_default().to_string(),
            cseq: request.cseq().map(|(n, _)| n).unwrap_or(0),
            is_invite: request.method == Method::Invite,
            state: State::Proceeding,
            last_response: None,
            retransmit_at: None,
            interval: Duration::ZERO,
            expire_at: None,
        }
    }

    pub(super) fn awaiting_final(&self) -> bool {
        self.state == State::Proceeding
    }

    pub(super) fn awaits_ack(&self, call_id: &str, cseq: u32) -> bool {
        self.is_invite
            && self.state == State::Accepted
            && self.call_id == call_id
            && self.cseq == cseq
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        match (self.retransmit_at, self.expire_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Records a response the TU sent; returns true when the transaction is
    /// over at once (final response on a reliable transport, non-INVITE).
    pub(super) fn on_response_sent(
        &mut self,
        status: u16,
        bytes: Vec<u8>,
        now: Instant,
        timers: &Timers,
    ) -> bool {
        if self.state != State::Proceeding {
            // A 2xx retransmission by the TU or a late response: just resend.
            self.last_response = Some(bytes);
            return false;
        }
        self.last_response = Some(bytes);
        let reliable = self.peer.transport.reliable();
        if status < 200 {
            return false;
        }
        if !self.is_invite {
            self.state = State::Completed;
            if reliable {
                return true;
            }
            self.expire_at = Some(now + timers.t1 * 64); // Timer J
            return false;
        }
        self.state = if status < 300 {
            State::Accepted
        } else {
            State::Completed
        };
        if !reliable {
            self.interval = timers.t1;
            self.retransmit_at = Some(now + timers.t1); // Timer G, or 2xx resend
        }
        self.expire_at = Some(now + timers.t1 * 64); // Timer H or L
        false
    }

    /// An ACK matching this INVITE's branch; true when it was ours to absorb.
    pub(super) fn on_ack_for_non_2xx(&mut self, now: Instant, timers: &Timers) -> bool {
        match self.state {
            State::Completed if self.is_invite => {
                self.state = State::Confirmed;
                self.retransmit_at = None;
                self.expire_at = Some(if self.peer.transport.reliable() {
                    now
                } else {
                    now + timers.t4 // Timer I
                });
                true
            }
            State::Confirmed => true,
            _ => false,
        }
    }

    pub(super) fn on_timeout(&mut self, now: Instant, timers: &Timers) -> ServerTimeout {
        let mut outcome = ServerTimeout {
            resend: None,
            ack_timeout: false,
            terminated: false,
        };
        if self.expire_at.is_some_and(|at| at <= now) {
            outcome.terminated = true;
            outcome.ack_timeout = self.state == State::Accepted;
            return outcome;
        }
        if self.retransmit_at.is_some_and(|at| at <= now) {
            outcome.resend = self.last_response.clone();
            self.interval = (self.interval * 2).min(timers.t2);
            self.retransmit_at = Some(now + self.interval);
        }
        outcome
    }
}
