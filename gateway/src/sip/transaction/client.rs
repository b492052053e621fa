//! Client transactions, INVITE (§17.1.1 + RFC 6026) and non-INVITE (§17.1.2).

use std::time::{Duration, Instant};

use super::{Peer, Timers};
use crate::sip::message::{Method, Request, Response};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Sent, nothing back yet (Calling / Trying).
    Sent,
    Proceeding,
    /// Final non-2xx (INVITE: ACK sent, Timer D) or any final (non-INVITE, K).
    Completed,
    /// INVITE got a 2xx: pass retransmissions to the TU until Timer M.
    Accepted,
}

pub(super) struct ClientTx {
    pub(super) request: Request,
    pub(super) bytes: Vec<u8>,
    pub(super) peer: Peer,
    is_invite: bool,
    state: State,
    ack: Option<Vec<u8>>,
    retransmit_at: Option<Instant>,
    interval: Duration,
    expire_at: Option<Instant>,
}

pub(super) struct ResponseOutcome {
    pub send: Option<Vec<u8>>,
    pub deliver: bool,
    pub terminated: bool,
}

pub(super) struct ClientTimeout {
    pub resend: bool,
    pub timed_out: bool,
    pub terminated: bool,
}

impl ClientTx {
    pub(super) fn new(request: Request, peer: Peer, now: Instant, timers: &Timers) -> Self {
        let bytes = request.to_bytes();
        let reliable = peer.transport.reliable();
        ClientTx {
            is_invite: request.method == Method::Invite,
            request,
            bytes,
            peer,
            state: State::Sent,
            ack: None,
            // Timer A / E
            retransmit_at: (!reliable).then_some(now + timers.t1),
            interval: timers.t1,
            // Timer B / F
            expire_at: Some(now + timers.t1 * 64),
        }
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        match (self.retransmit_at, self.expire_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn on_response(
        &mut self,
        response: &Response,
        now: Instant,
        timers: &Timers,
    ) -> ResponseOutcome {
        let reliable = self.peer.transport.reliable();
        let mut outcome = ResponseOutcome {
            send: None,
            deliver: false,
            terminated: false,
        };
        match (self.state, response.status) {
            (State::Sent | State::Proceeding, 100..=199) => {
                if self.is_invite && self.state == State::Sent {
                    // Timer B runs only while Calling: a ringing INVITE
                    // lasts as long as the TU lets it (ring timeout, then
                    // CANCEL). Capped so a TU that forgets it cannot leak it.
                    self.expire_at = Some(now + super::server::INVITE_ANSWER_LIMIT);
                }
                self.state = State::Proceeding;
                outcome.deliver = true;
                if self.is_invite {
                    self.retransmit_at = None; // Timer A stops
                } else if !reliable {
                    self.interval = timers.t2;
                }
            }
            (State::Sent | State::Proceeding, 200..=299) if self.is_invite => {
                self.state = State::Accepted;
                self.retransmit_at = None;
                self.expire_at = Some(now + timers.t1 * 64); // Timer M
                outcome.deliver = true;
            }
            (State::Sent | State::Proceeding, _) => {
                self.state = State::Completed;
                self.retransmit_at = None;
                outcome.deliver = true;
                if self.is_invite {
                    let ack = self.ack_for(response).to_bytes();
                    outcome.send = Some(ack.clone());
                    self.ack = Some(ack);
                    self.expire_at = Some(if reliable {
                        now
                    } else {
                        now + Duration::from_secs(32)
                    }); // Timer D
                } else {
                    self.expire_at = Some(if reliable { now } else { now + timers.t4 });
                    // Timer K
                }
                outcome.terminated = reliable;
            }
            (State::Completed, 300..=699) if self.is_invite => outcome.send = self.ack.clone(),
            (State::Accepted, 200..=299) => outcome.deliver = true,
            _ => {}
        }
        outcome
    }

    pub(super) fn on_timeout(&mut self, now: Instant, timers: &Timers) -> ClientTimeout {
        let mut outcome = ClientTimeout {
            resend: false,
            timed_out: false,
            terminated: false,
        };
        if self.expire_at.is_some_and(|at| at <= now) {
            outcome.terminated = true;
            outcome.timed_out = matches!(self.state, State::Sent | State::Proceeding);
            return outcome;
        }
        if self.retransmit_at.is_some_and(|at| at <= now) {
            outcome.resend = true;
            self.interval = if self.is_invite {
                self.interval * 2 // Timer A doubles without cap
            } else if self.state == State::Proceeding {
                timers.t2
            } else {
                (self.interval * 2).min(timers.t2) // Timer E
            };
            self.retransmit_at = Some(now + self.interval);
        }
        outcome
    }

    /// We sent a CANCEL for this INVITE: its final response must come within
    /// 64*T1 or the transaction ends (§9.1).
    pub(super) fn cancelled(&mut self, now: Instant, timers: &Timers) {
        if self.is_invite && matches!(self.state, State::Sent | State::Proceeding) {
            let limit = now + timers.t1 * 64;
            self.expire_at = Some(self.expire_at.map_or(limit, |at| at.min(limit)));
        }
    }

    /// The ACK for a non-2xx final (§17.1.1.3): same branch, To from the response.
    fn ack_for(&self, response: &Response) -> Request {
        let mut ack = Request {
            method: Method::Ack,
            uri: self.request.uri.clone(),
            headers: Default::default(),
            body: Vec::new(),
        };
        if let Some(via) = self.request.headers.get_all_split("Via").first() {
            ack.headers.push("Via", via);
        }
        for name in ["Route", "From"] {
            for value in self.request.headers.get_all(name) {
                ack.headers.push(name, value);
            }
        }
        if let Some(to) = response.headers.get("To") {
            ack.headers.push("To", to);
        }
        if let Some(call_id) = self.request.headers.get("Call-ID") {
            ack.headers.push("Call-ID", call_id);
        }
        let cseq = self.request.cseq().map(|(n, _)| n).unwrap_or(1);
        ack.headers.push("CSeq", &format!("{cseq} ACK"));
        ack.headers.push("Max-Forwards", "70");
        ack
    }

    /// A CANCEL for this INVITE (§9.1), once it is proceeding.
    pub(super) fn cancel_request(&self) -> Option<Request> {
        if !self.is_invite || self.state != State::Proceeding {
            return None;
        }
        let mut cancel = Request {
            method: Method::Cancel,
            uri: self.request.uri.clone(),
            headers: Default::default(),
            body: Vec::new(),
        };
        if let Some(via) = self.request.headers.get_all_split("Via").first() {
            cancel.headers.push("Via", via);
        }
        for name in ["Route", "From", "To", "Call-ID"] {
            for value in self.request.headers.get_all(name) {
                cancel.headers.push(name, value);
            }
        }
        let cseq = self.request.cseq().map(|(n, _)| n).unwrap_or(1);
        cancel.headers.push("CSeq", &format!("{cseq} CANCEL"));
        cancel.headers.push("Max-Forwards", "70");
        Some(cancel)
    }
}
