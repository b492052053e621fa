//! Requests the far end sends inside the dialog (RFC 3261 §12.2.2): BYE,
//! re-INVITE/UPDATE, INFO, OPTIONS, NOTIFY for our REFER, and the right
//! refusal for everything else — never a blanket 200.

use std::time::Instant;

use super::{Leg, LegEvent, LegState, Role, ALLOW};
use crate::sip::dialog::DialogError;
use crate::sip::message::{Method, Request};
use crate::sip::response::response_for;
use crate::sip::transaction::ServerTxId;

impl Leg {
    pub(super) fn on_request(&mut self, tx: ServerTxId, request: Request, now: Instant) {
        let Some(dialog) = &mut self.dialog else {
            self.respond(tx, &request, 481, &[]);
            return;
        };
        if self.state == LegState::Terminated {
            self.respond(tx, &request, 481, &[]);
            return;
        }
        match dialog.handle_request(&request) {
            Ok(()) => {}
            Err(DialogError::NotThisDialog) => {
                self.respond(tx, &request, 481, &[]);
                return;
            }
            Err(DialogError::CSeqOutOfOrder { .. }) => {
                // §12.2.2: a lower CSeq is an error of the far end.
                let warning = "399 switchboard \"CSeq out of order\"";
                self.respond(tx, &request, 500, &[("Warning", warning)]);
                return;
            }
            Err(DialogError::Malformed(error)) => {
                let warning = format!("399 switchboard \"{error}\"");
                self.respond(tx, &request, 400, &[("Warning", warning.as_str())]);
                return;
            }
        }
        match request.method {
            Method::Bye => self.on_bye(tx, &request),
            Method::Invite | Method::Update => self.on_remote_offer(tx, request),
            Method::Info => {
                self.respond(tx, &request, 200, &[]);
                let content_type = request
                    .headers
                    .get("Content-Type")
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                self.events.push_back(LegEvent::Info {
                    content_type,
                    body: request.body,
                });
            }
            Method::Options => {
                self.respond(
                    tx,
                    &request,
                    200,
                    &[("Allow", ALLOW), ("Accept", "application/sdp")],
                );
            }
            Method::Notify => self.on_notify(tx, &request, now),
            // We never send reliable provisionals (RFC 3262), so no PRACK
            // can match one.
            Method::Prack => self.respond(tx, &request, 481, &[]),
            Method::Refer
            | Method::Message
            | Method::Subscribe
            | Method::Publish
            | Method::Register => {
                tracing::info!(method = %request.method, "in-dialog request not allowed: 405");
                self.respond(tx, &request, 405, &[("Allow", ALLOW)]);
            }
            Method::Ack | Method::Cancel => {}
            Method::Other(_) => {
                tracing::info!(method = %request.method, "unknown in-dialog method: 501");
                self.respond(tx, &request, 501, &[("Allow", ALLOW)]);
            }
        }
    }

    fn on_bye(&mut self, tx: ServerTxId, request: &Request) {
        let response = response_for(request, 200, "OK", Some(&self.local_tag));
        self.outputs
            .push_back(super::LegOutput::Respond { tx, response });
        if self.role == Role::Uas && self.state == LegState::Inviting {
            // A BYE on the early dialog: the INVITE is over too (§15.1.2).
            if let Some((invite_tx, invite)) = self.invite.clone() {
                self.respond(invite_tx, &invite, 487, &[]);
            }
        }
        // Whatever we were still waiting for from them is moot.
        self.refer = None;
        self.end_remotely();
    }
}
