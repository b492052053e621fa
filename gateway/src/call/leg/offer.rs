//! Offer/answer after the call is up (RFC 3261 §14, RFC 3311): the far
//! end's re-INVITE or UPDATE, ours, and glare — two INVITEs crossing get
//! 491 and the side that loses retries after a random pause (§14.1: 2.1-4 s
//! for the dialog's owner of the Call-ID, 0-2 s for the other).

use std::time::{Duration, Instant};

use rand::Rng;

use super::{sdp_of, EndReason, Leg, LegEvent, LegOutput, LegState, Pending, Purpose, Role};
use crate::sip::message::{Method, Request};
use crate::sip::response::{default_reason, response_for};
use crate::sip::transaction::ServerTxId;

#[derive(Default)]
pub(super) struct OfferState {
    /// The far end's re-INVITE or UPDATE, until we answer it.
    server: Option<(ServerTxId, Request)>,
    /// The CSeq of our re-INVITE in flight.
    client: Option<u32>,
    /// Our 2xx to their re-INVITE, awaiting its ACK (CSeq).
    awaiting_ack: Option<u32>,
    /// A re-INVITE to send again after glare, and when.
    retry: Option<(Instant, String)>,
}

impl OfferState {
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.retry.as_ref().map(|(at, _)| *at)
    }

    /// An INVITE transaction is in progress in either direction.
    fn busy(&self) -> bool {
        self.server.is_some() || self.client.is_some() || self.awaiting_ack.is_some()
    }
}

impl Leg {
    /// Sends a re-INVITE with `sdp`. False when the dialog is not up or an
    /// offer exchange is already under way (§14.1 forbids overlapping them).
    pub fn reinvite(&mut self, sdp: &str, _now: Instant) -> bool {
        if self.state != LegState::Confirmed || self.offer.busy() {
            return false;
        }
        let Some(mut request) = self.in_dialog_request(Method::Invite) else {
            return false;
        };
        request.headers.push("Allow", super::ALLOW);
        request.headers.push("Content-Type", "application/sdp");
        request.body = sdp.as_bytes().to_vec();
        self.offer.client = request.cseq().ok().map(|(n, _)| n);
        self.send(request, Purpose::ReInvite);
        true
    }

    pub(super) fn on_reinvite_response(
        &mut self,
        pending: Pending,
        response: crate::sip::message::Response,
        now: Instant,
    ) {
        self.offer.client = None;
        match response.status {
            200..=299 => {
                if let Some(dialog) = &mut self.dialog {
                    if let Some(contact) = response.contact() {
                        dialog.remote_target = contact.uri; // §12.2.1.2
                    }
                }
                if let Some(mut ack) = self.in_dialog_request(Method::Ack) {
                    ack.headers.set("CSeq", &format!("{} ACK", pending.cseq));
                    let peer = self.next_hop();
                    self.outputs
                        .push_back(LegOutput::SendStateless { request: ack, peer });
                }
                let sdp = sdp_of(&response.headers, &response.body);
                self.events.push_back(LegEvent::OfferAnswered { sdp });
            }
            491 => {
                let pause = glare_pause(self.role);
                let sdp = String::from_utf8_lossy(&pending.request.body).into_owned();
                self.offer.retry = Some((now + pause, sdp));
            }
            401 | 407 => {
                let cseq_before = pending.cseq;
                if self.retry_with_credentials(&pending, &response, now) {
                    self.offer.client = self
                        .pending
                        .iter()
                        .rev()
                        .find(|p| p.purpose == Purpose::ReInvite)
                        .map(|p| p.cseq)
                        .filter(|cseq| *cseq != cseq_before);
                } else {
                    self.events.push_back(LegEvent::OfferRefused {
                        status: response.status,
                    });
                }
            }
            status => {
                self.events.push_back(LegEvent::OfferRefused { status });
                // §14.1: a 481 or 408 means the dialog is gone.
                if matches!(status, 408 | 481) {
                    self.send_bye(now);
                }
            }
        }
    }

    pub(super) fn on_reinvite_failed(&mut self, status: u16, now: Instant) {
        self.offer.client = None;
        self.events.push_back(LegEvent::OfferRefused { status });
        self.send_bye(now);
    }

    pub(super) fn offer_timeout(&mut self, now: Instant) {
        let due = self.offer.retry.as_ref().is_some_and(|(at, _)| *at <= now);
        if !due {
            return;
        }
        let Some((_, sdp)) = self.offer.retry.take() else {
            return;
        };
        if !self.reinvite(&sdp, now) && self.state == LegState::Confirmed {
            // Their offer is being answered: try once more after another pause.
            self.offer.retry = Some((now + glare_pause(self.role), sdp));
        }
    }

    /// A re-INVITE or UPDATE from the far end.
    pub(super) fn on_remote_offer(&mut self, tx: ServerTxId, request: Request) {
        let is_invite = request.method == Method::Invite;
        if is_invite && (self.offer.client.is_some() || self.state == LegState::Answered) {
            // Glare, or a new offer while ours (in the 2xx) is unanswered.
            self.respond(tx, &request, 491, &[]);
            return;
        }
        if self.offer.server.is_some() || (is_invite && self.offer.awaiting_ack.is_some()) {
            let seconds = rand::rng().random_range(0..=10).to_string();
            self.respond(tx, &request, 500, &[("Retry-After", seconds.as_str())]);
            return;
        }
        let sdp = sdp_of(&request.headers, &request.body);
        self.offer.server = Some((tx, request));
        self.events.push_back(LegEvent::Offer { sdp });
    }

    /// Answers the far end's offer with a 200 carrying `sdp` (our answer,
    /// or our offer when theirs came without one).
    pub fn accept_offer(&mut self, sdp: Option<&str>) {
        let Some((tx, request)) = self.offer.server.take() else {
            return;
        };
        let mut response = response_for(&request, 200, "OK", Some(&self.local_tag));
        response
            .headers
            .push("Contact", &format!("<{}>", self.config.contact));
        response.headers.push("Allow", super::ALLOW);
        if let Some(sdp) = sdp {
            response.headers.push("Content-Type", "application/sdp");
            response.body = sdp.as_bytes().to_vec();
        }
        if request.method == Method::Invite {
            self.offer.awaiting_ack = request.cseq().ok().map(|(n, _)| n);
        }
        self.outputs.push_back(LegOutput::Respond { tx, response });
    }

    /// Refuses the far end's offer (488 when it names nothing we take);
    /// the session goes on as it was.
    pub fn reject_offer(&mut self, status: u16) {
        if let Some((tx, request)) = self.offer.server.take() {
            self.respond(tx, &request, status, &[]);
        }
    }

    pub(super) fn on_reinvite_ack(&mut self, cseq: u32, sdp: Option<String>) {
        if self.offer.awaiting_ack == Some(cseq) {
            self.offer.awaiting_ack = None;
            self.events.push_back(LegEvent::Acknowledged { sdp });
        }
    }

    /// The dialog ends while the far end waits for our answer: 487.
    pub(super) fn abandon_server_offer(&mut self) {
        if let Some((tx, request)) = self.offer.server.take() {
            self.respond(tx, &request, 487, &[]);
        }
        self.offer.retry = None;
    }

    pub(super) fn respond(
        &mut self,
        tx: ServerTxId,
        request: &Request,
        status: u16,
        headers: &[(&str, &str)],
    ) {
        let mut response = response_for(
            request,
            status,
            default_reason(status),
            Some(&self.local_tag),
        );
        for (name, value) in headers {
            response.headers.push(name, value);
        }
        self.outputs.push_back(LegOutput::Respond { tx, response });
    }

    /// The BYE that ends a dialog whose far end is gone.
    pub(super) fn end_remotely(&mut self) {
        self.abandon_server_offer();
        self.bye_deadline = None;
        self.finish(EndReason::RemoteBye);
    }
}

fn glare_pause(role: Role) -> Duration {
    let mut rng = rand::rng();
    let ms = match role {
        // The UAC of the dialog chose the Call-ID: it waits longer.
        Role::Uac => rng.random_range(2_100..=4_000),
        Role::Uas => rng.random_range(0..=2_000),
    };
    Duration::from_millis(ms)
}
