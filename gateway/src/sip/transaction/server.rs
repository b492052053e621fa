//! Server transactions, INVITE (§17.2.1 + RFC 6026) and non-INVITE (§17.2.2).

use std::time::{Duration, Instant};

use super::{Peer, ServerKey, Timers};
use crate::sip::message::{Method, Request, Response};
use crate::sip::response::new_tag;

/// Longest an INVITE may go unanswered before the transaction answers it
/// 500 itself: above the longest ring time a call may wait for (600 s), so
/// only an owner that vanished hits it.
pub(super) const INVITE_ANSWER_LIMIT: Duration = Duration::from_secs(660);

/// How long an INVITE may wait for its first response before the
/// transaction sends 100 Trying itself: §17.2.1 asks for one only "if the
/// TU will not respond within 200 ms". A call answered sooner (an in-process
/// bot) then costs one message less on both sides, and the caller's first
/// retransmission (T1, 500 ms) is still stopped in time.
pub(super) const TRYING_DELAY: Duration = Duration::from_millis(200);

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
    pub(super) cseq: u32,
    pub(super) is_invite: bool,
    /// Holds its Call-ID in the layer's [`PendingInvites`] until its final
    /// response goes out.
    ///
    /// [`PendingInvites`]: crate::sip::pending_invites::PendingInvites
    pub(super) pending: bool,
    state: State,
    pub(super) last_response: Option<Vec<u8>>,
    /// The 100 Trying of an INVITE: sent when the TU is slow to answer, and
    /// the template of a final response the transaction sends itself when
    /// nobody else does.
    pub(super) trying: Option<Response>,
    /// When the 100 Trying is due, until the first response goes out.
    trying_at: Option<Instant>,
    retransmit_at: Option<Instant>,
    interval: Duration,
    expire_at: Option<Instant>,
}

pub(super) struct ServerTimeout {
    pub resend: Option<Vec<u8>>,
    pub ack_timeout: bool,
    pub terminated: bool,
    /// Nobody answered: send this final response (an INVITE's 500).
    pub give_up: Option<Response>,
}

impl ServerTx {
    pub(super) fn new(
        key: ServerKey,
        peer: Peer,
        request: &Request,
        now: Instant,
        timers: &Timers,
    ) -> Self {
        let is_invite = request.method == Method::Invite;
        ServerTx {
            key,
            peer,
            call_id: request.call_id().unwrap_or_default().to_string(),
            cseq: request.cseq().map(|(n, _)| n).unwrap_or(0),
            is_invite,
            pending: false,
            state: State::Proceeding,
            last_response: None,
            trying: None,
            trying_at: is_invite.then(|| now + TRYING_DELAY),
            retransmit_at: None,
            interval: Duration::ZERO,
            // Every transaction ends, answered or not. A non-INVITE's client
            // gives up after 64*T1 (Timer F); an INVITE is answered 500.
            expire_at: Some(
                now + if is_invite {
                    INVITE_ANSWER_LIMIT
                } else {
                    timers.t1 * 64
                },
            ),
        }
    }

    pub(super) fn awaiting_final(&self) -> bool {
        self.state == State::Proceeding
    }

    pub(super) fn awaits_ack(&self) -> bool {
        self.is_invite && self.state == State::Accepted
    }

    /// The final response for an INVITE nobody answered.
    pub(super) fn abandoned_response(&self) -> Option<Response> {
        if self.state != State::Proceeding {
            return None;
        }
        let mut response = self.trying.clone()?;
        response.status = 500;
        response.reason = "Server Internal Error".into();
        if let Some(to) = response.headers.get("To") {
            let tagged = format!("{to};tag={}", new_tag());
            response.headers.set("To", &tagged);
        }
        Some(response)
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        [self.trying_at, self.retransmit_at, self.expire_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// The 100 Trying, now: the TU has not answered in time, or the caller
    /// retransmitted before anything was sent. `None` once any response
    /// went out.
    pub(super) fn send_trying(&mut self) -> Option<Vec<u8>> {
        self.trying_at.take()?;
        if self.last_response.is_some() {
            return None;
        }
        let bytes = self.trying.as_ref()?.to_bytes();
        self.last_response = Some(bytes.clone());
        Some(bytes)
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
        self.trying_at = None;
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
        self.trying = None;
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
            give_up: None,
        };
        if self.expire_at.is_some_and(|at| at <= now) {
            if self.state == State::Proceeding {
                outcome.give_up = self.abandoned_response();
                if outcome.give_up.is_some() {
                    return outcome;
                }
            }
            outcome.terminated = true;
            outcome.ack_timeout = self.state == State::Accepted;
            return outcome;
        }
        if self.trying_at.is_some_and(|at| at <= now) {
            outcome.resend = self.send_trying();
        }
        if self.retransmit_at.is_some_and(|at| at <= now) {
            outcome.resend = self.last_response.clone();
            self.interval = (self.interval * 2).min(timers.t2);
            self.retransmit_at = Some(now + self.interval);
        }
        outcome
    }
}
