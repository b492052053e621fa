//! Blind transfer by REFER (RFC 3515, RFC 4488 not assumed): we ask the far
//! end to call someone else, then follow the implicit subscription's
//! NOTIFYs, whose `message/sipfrag` bodies carry the new call's progress.

use std::time::{Duration, Instant};

use super::{Leg, LegEvent, Pending, Purpose};
use crate::sip::message::{Method, Request, Response};
use crate::sip::transaction::ServerTxId;

/// How long we wait for the NOTIFY with the transfer's final status.
const FINAL_NOTIFY_WAIT: Duration = Duration::from_secs(60);

/// How a REFER ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReferOutcome {
    /// The far end reached the target (final sipfrag 2xx).
    Transferred,
    /// The REFER itself was refused (405, 403, 501…) or went unanswered.
    Refused { status: u16, reason: String },
    /// The far end accepted the REFER but its call to the target failed.
    Failed { status: u16, reason: String },
}

pub(super) struct ReferState {
    deadline: Option<Instant>,
}

impl ReferState {
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

impl Leg {
    /// Sends REFER to `refer_to` (a SIP URI, its X- headers as URI
    /// headers). False when the dialog is not up or a REFER is under way.
    pub fn refer(&mut self, refer_to: &str, referred_by: &str, now: Instant) -> bool {
        if self.state != super::LegState::Confirmed || self.refer.is_some() {
            return false;
        }
        let Some(mut request) = self.in_dialog_request(Method::Refer) else {
            return false;
        };
        request.headers.push("Refer-To", &format!("<{refer_to}>"));
        request
            .headers
            .push("Referred-By", &format!("<{referred_by}>"));
        self.refer = Some(ReferState {
            deadline: Some(now + FINAL_NOTIFY_WAIT),
        });
        self.send(request, Purpose::Refer);
        true
    }

    pub(super) fn on_refer_response(
        &mut self,
        pending: Pending,
        response: &Response,
        now: Instant,
    ) {
        if self.refer.is_none() {
            return;
        }
        match response.status {
            200..=299 => self.events.push_back(LegEvent::ReferProgress {
                status: response.status,
            }),
            401 | 407 if self.retry_with_credentials(&pending, response, now) => {}
            status => self.end_refer(super::ReferOutcome::Refused {
                status,
                reason: response.reason.clone(),
            }),
        }
    }

    pub(super) fn on_refer_failed(&mut self, status: u16) {
        self.end_refer(ReferOutcome::Refused {
            status,
            reason: "no answer to the REFER".into(),
        });
    }

    pub(super) fn refer_timeout(&mut self, now: Instant) {
        let due = self
            .refer
            .as_ref()
            .and_then(|r| r.deadline)
            .is_some_and(|at| at <= now);
        if due {
            self.end_refer(ReferOutcome::Failed {
                status: 408,
                reason: "no final NOTIFY for the transfer".into(),
            });
        }
    }

    fn end_refer(&mut self, outcome: ReferOutcome) {
        if self.refer.take().is_some() {
            self.events.push_back(LegEvent::ReferEnded(outcome));
        }
    }

    pub(super) fn on_notify(&mut self, tx: ServerTxId, request: &Request, _now: Instant) {
        let is_refer_event = request
            .headers
            .get("Event")
            .map(|event| {
                event
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("refer")
            })
            .unwrap_or(false);
        if self.refer.is_none() || !is_refer_event {
            // No subscription of ours matches (RFC 6665 §4.1.3).
            self.respond(tx, request, 481, &[]);
            return;
        }
        self.respond(tx, request, 200, &[]);
        let terminated = request
            .headers
            .get("Subscription-State")
            .is_some_and(|state| state.trim().to_ascii_lowercase().starts_with("terminated"));
        match sipfrag_status(&request.body) {
            Some((status, _)) if status < 200 => {
                self.events.push_back(LegEvent::ReferProgress { status });
                if terminated {
                    self.end_refer(ReferOutcome::Failed {
                        status: 487,
                        reason: "subscription ended before the transfer did".into(),
                    });
                }
            }
            Some((status, _)) if status < 300 => self.end_refer(ReferOutcome::Transferred),
            Some((status, reason)) => self.end_refer(ReferOutcome::Failed { status, reason }),
            None if terminated => self.end_refer(ReferOutcome::Failed {
                status: 487,
                reason: "subscription ended without a final status".into(),
            }),
            None => {}
        }
    }
}

/// The status line of a `message/sipfrag` body: `SIP/2.0 200 OK`.
fn sipfrag_status(body: &[u8]) -> Option<(u16, String)> {
    let text = std::str::from_utf8(body).ok()?;
    let line = text.lines().next()?.trim();
    let rest = line.strip_prefix("SIP/2.0 ")?;
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|s| (100..700).contains(s))?;
    Some((status, reason.trim().to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sipfrag_status_lines() {
        assert_eq!(
            super::sipfrag_status(b"SIP/2.0 200 OK\r\n"),
            Some((200, "OK".into()))
        );
        assert_eq!(
            super::sipfrag_status(b"SIP/2.0 100 Trying"),
            Some((100, "Trying".into()))
        );
        assert_eq!(super::sipfrag_status(b"garbage"), None);
        assert_eq!(super::sipfrag_status(b"SIP/2.0 999 No"), None);
    }
}
