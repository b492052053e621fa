//! The UAS side: the caller's INVITE, answered, rejected or cancelled,
//! and the ACK that confirms our 2xx (RFC 3261 §13.3).

use std::time::Instant;

use super::{sdp_of, EndReason, Leg, LegConfig, LegEvent, LegOutput, LegState, Role, ALLOW};
use crate::sip::dialog::Dialog;
use crate::sip::message::{Request, Response};
use crate::sip::response::{default_reason, response_for};
use crate::sip::transaction::ServerTxId;

impl Leg {
    /// The leg of an INVITE we received. `local_tag` is our To tag, chosen
    /// by whoever routes the dialog's requests. An INVITE that cannot form
    /// a dialog (no usable Contact, From or CSeq) is refused with the 400
    /// to send back.
    pub fn incoming(
        tx: ServerTxId,
        invite: Request,
        local_tag: String,
        config: LegConfig,
    ) -> Result<Leg, Response> {
        let dialog = match Dialog::new_uas(&invite, local_tag.clone()) {
            Ok(dialog) => dialog,
            Err(error) => {
                let mut response = response_for(&invite, 400, "Bad Request", Some(&local_tag));
                response
                    .headers
                    .push("Warning", &format!("399 switchboard \"{error}\""));
                return Err(response);
            }
        };
        let call_id = dialog.call_id.clone();
        let mut leg = Leg::new(Role::Uas, config, call_id, local_tag);
        leg.dialog = Some(dialog);
        leg.invite = Some((tx, invite));
        Ok(leg)
    }

    /// The INVITE this UAS leg answers.
    pub fn invite(&self) -> Option<&Request> {
        self.invite.as_ref().map(|(_, invite)| invite)
    }

    /// 180 Ringing, or 183 Session Progress with `sdp` for early media.
    pub fn ring(&mut self, sdp: Option<&str>) {
        if self.state != LegState::Inviting || self.role != Role::Uas {
            return;
        }
        let status = if sdp.is_some() { 183 } else { 180 };
        let response = self.invite_response(status, sdp);
        self.respond_invite(response);
    }

    /// 200 OK with our SDP (an answer, or an offer when the INVITE had none).
    pub fn answer(&mut self, sdp: &str) {
        if self.state != LegState::Inviting || self.role != Role::Uas {
            return;
        }
        let response = self.invite_response(200, Some(sdp));
        self.respond_invite(response);
        self.state = LegState::Answered;
    }

    /// A final non-2xx to the INVITE.
    pub fn reject(&mut self, status: u16, now: Instant) {
        self.reject_with(status, &[], now);
    }

    /// A final non-2xx with extra headers (`Retry-After`, `Warning`…).
    pub fn reject_with(&mut self, status: u16, headers: &[(&str, &str)], _now: Instant) {
        if self.state != LegState::Inviting || self.role != Role::Uas {
            return;
        }
        let Some((_, invite)) = &self.invite else {
            return;
        };
        let mut response = response_for(
            invite,
            status,
            default_reason(status),
            Some(&self.local_tag),
        );
        for (name, value) in headers {
            response.headers.push(name, value);
        }
        self.respond_invite(response);
        self.finish(EndReason::Rejected(status));
    }

    fn invite_response(&self, status: u16, sdp: Option<&str>) -> Response {
        let invite = &self.invite.as_ref().expect("a UAS leg has its INVITE").1;
        let mut response = response_for(
            invite,
            status,
            default_reason(status),
            Some(&self.local_tag),
        );
        response
            .headers
            .push("Contact", &format!("<{}>", self.config.contact));
        response.headers.push("Allow", ALLOW);
        if let Some(sdp) = sdp {
            response.headers.push("Content-Type", "application/sdp");
            response.body = sdp.as_bytes().to_vec();
        }
        response
    }

    fn respond_invite(&mut self, response: Response) {
        let Some((tx, _)) = &self.invite else {
            return;
        };
        let tx = *tx;
        self.outputs.push_back(LegOutput::Respond { tx, response });
    }

    pub(super) fn on_ack(&mut self, ack: Request, now: Instant) {
        let Some(dialog) = &self.dialog else {
            return;
        };
        if !dialog.matches(&ack) {
            return;
        }
        let cseq = ack.cseq().map(|(n, _)| n).unwrap_or(0);
        let sdp = sdp_of(&ack.headers, &ack.body);
        if self.state == LegState::Answered && Some(cseq) == self.invite_cseq() {
            self.state = LegState::Confirmed;
            self.events.push_back(LegEvent::Acknowledged { sdp });
            if self.bye_pending {
                self.send_bye(now);
            }
            return;
        }
        self.on_reinvite_ack(cseq, sdp);
    }

    fn invite_cseq(&self) -> Option<u32> {
        self.invite
            .as_ref()
            .and_then(|(_, invite)| invite.cseq().ok())
            .map(|(n, _)| n)
    }

    pub(super) fn on_cancelled(&mut self) {
        if self.role != Role::Uas || self.state != LegState::Inviting {
            return;
        }
        let Some((_, invite)) = &self.invite else {
            return;
        };
        let response = response_for(invite, 487, default_reason(487), Some(&self.local_tag));
        self.respond_invite(response);
        self.finish(EndReason::Cancelled);
    }

    /// Our 2xx went unacknowledged for 64*T1: the dialog is dead on
    /// arrival; say so and BYE it (RFC 3261 §13.3.1.4).
    pub(super) fn on_ack_timeout(&mut self, now: Instant) {
        if self.state != LegState::Answered {
            return;
        }
        if !self.end_reported {
            self.end_reported = true;
            self.events
                .push_back(LegEvent::Ended(EndReason::AckTimeout));
        }
        self.send_bye(now);
    }

    /// The caller's INVITE carried no SDP: our 200 OK makes the offer.
    pub fn is_delayed_offer(&self) -> bool {
        self.invite
            .as_ref()
            .is_some_and(|(_, invite)| invite.body.is_empty())
    }
}
