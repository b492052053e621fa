//! The UAC side: our INVITE to a party we dial, its provisional and final
//! responses, digest challenges, one redirect, the ring timeout and CANCEL
//! (RFC 3261 §9, §13.2, §22.2), and 2xx from forks that lost the race.

use std::time::{Duration, Instant};

use super::{
    literal_peer, sdp_of, via, DialFailure, FailKind, Leg, LegConfig, LegEvent, LegOutput,
    LegState, Pending, Purpose, Role,
};
use crate::sip::dialog::Dialog;
use crate::sip::digest::Challenge;
use crate::sip::message::{Method, Request, Response};
use crate::sip::response::{new_branch, new_tag};
use crate::sip::uri::{NameAddr, SipUri};

/// Everything needed to place a call.
#[derive(Clone, Debug)]
pub struct OutgoingCall {
    pub call_id: String,
    /// The Request-URI: the target with its parameters, without its
    /// `?headers` part.
    pub request_uri: SipUri,
    /// From, without a tag (the leg adds its own).
    pub from: NameAddr,
    pub to: NameAddr,
    /// Extra headers (`X-…`, `User-to-User`) from the target URI.
    pub headers: Vec<(String, String)>,
    /// Our offer.
    pub sdp: String,
    /// Digest username and password for the target's challenges.
    pub credentials: Option<(String, String)>,
    /// How long it may ring before we CANCEL.
    pub ring_timeout: Duration,
    /// Whether a 3xx may send the call to this URI. A bot's dial passes
    /// `[dial] allow` here: an allowed PBX must not be able to redirect the
    /// call (and its credentials) to a premium number. `None` follows any.
    pub redirect_check: Option<RedirectCheck>,
}

/// Decides whether a redirect target (the URI as text) may be dialed.
#[derive(Clone)]
pub struct RedirectCheck(pub std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for RedirectCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedirectCheck")
    }
}

/// How many realms one request may be challenged by (a proxy, the PBX
/// behind it, ...) before we give up. A second challenge from a realm
/// already answered means the password is wrong, unless it says `stale`.
const MAX_AUTH_REALMS: usize = 3;

/// A challenge answered for a request, answered again on every resend.
#[derive(Clone, Debug)]
pub(super) struct Answered {
    proxy: bool,
    challenge: Challenge,
    /// The nonce count last used with its nonce.
    count: u32,
}

pub(super) struct OutboundInvite {
    /// The INVITE last sent (after auth retries and a redirect).
    request: Request,
    /// A provisional arrived: CANCEL is allowed (§9.1).
    provisional: bool,
    ring_deadline: Option<Instant>,
    /// Why we are cancelling, once decided.
    cancelling: Option<FailKind>,
    cancel_sent: bool,
    redirected: bool,
    redirect_check: Option<RedirectCheck>,
    early_sdp_seen: bool,
    /// The ACK for the 2xx that won, resent on its retransmissions.
    ack: Option<Request>,
}

impl OutboundInvite {
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.ring_deadline
    }
}

impl Leg {
    /// A leg that places `call`: the INVITE is queued at once.
    pub fn outgoing(call: OutgoingCall, config: LegConfig, now: Instant) -> Leg {
        let local_tag = new_tag();
        let mut from = call.from.clone();
        from.set_tag(&local_tag);
        let mut invite = Request {
            method: Method::Invite,
            uri: call.request_uri.clone(),
            headers: Default::default(),
            body: call.sdp.into_bytes(),
        };
        invite
            .headers
            .push("Via", &via(config.local, config.peer.transport));
        invite.headers.push("Max-Forwards", "70");
        invite.headers.push("From", &from.to_string());
        invite.headers.push("To", &call.to.to_string());
        invite.headers.push("Call-ID", &call.call_id);
        invite.headers.push("CSeq", "1 INVITE");
        invite
            .headers
            .push("Contact", &format!("<{}>", config.contact));
        invite.headers.push("Allow", super::ALLOW);
        invite.headers.push("User-Agent", "switchboard");
        for (name, value) in &call.headers {
            invite.headers.push(name, value);
        }
        invite.headers.push("Content-Type", "application/sdp");
        let mut leg = Leg::new(Role::Uac, config, call.call_id, local_tag);
        leg.credentials = call.credentials;
        leg.outbound = Some(OutboundInvite {
            request: invite.clone(),
            provisional: false,
            ring_deadline: Some(now + call.ring_timeout),
            cancelling: None,
            cancel_sent: false,
            redirected: false,
            redirect_check: call.redirect_check,
            early_sdp_seen: false,
            ack: None,
        });
        leg.send(invite, Purpose::Invite);
        leg
    }

    /// Stops ringing the callee: CANCEL once a provisional allows it.
    /// Without one yet the failure is reported now and the CANCEL (or the
    /// BYE of a late 2xx) follows when the callee speaks.
    pub(super) fn cancel(&mut self, kind: FailKind, _now: Instant) {
        if self.role != Role::Uac || self.state != LegState::Inviting {
            return;
        }
        let Some(outbound) = &mut self.outbound else {
            return;
        };
        if outbound.cancelling.is_some() {
            return;
        }
        outbound.cancelling = Some(kind);
        outbound.ring_deadline = None;
        if outbound.provisional {
            self.send_cancel();
        } else {
            let failure = cancel_failure(kind, 487);
            self.report_failure(failure);
        }
    }

    fn send_cancel(&mut self) {
        let Some(outbound) = &mut self.outbound else {
            return;
        };
        if outbound.cancel_sent {
            return;
        }
        outbound.cancel_sent = true;
        let invite = &outbound.request;
        let mut cancel = Request {
            method: Method::Cancel,
            uri: invite.uri.clone(),
            headers: Default::default(),
            body: Vec::new(),
        };
        // §9.1: same top Via (branch), Route, From, To, Call-ID as the INVITE.
        if let Some(top) = invite.headers.get_all_split("Via").first() {
            cancel.headers.push("Via", top);
        }
        for name in ["Route", "From", "To", "Call-ID"] {
            for value in invite.headers.get_all(name) {
                cancel.headers.push(name, value);
            }
        }
        let cseq = invite.cseq().map(|(n, _)| n).unwrap_or(1);
        cancel.headers.push("CSeq", &format!("{cseq} CANCEL"));
        cancel.headers.push("Max-Forwards", "70");
        self.send(cancel, Purpose::Cancel);
    }

    /// The failure is known: tell the call, keep finishing the INVITE.
    fn report_failure(&mut self, failure: DialFailure) {
        if !self.end_reported {
            self.end_reported = true;
            self.events.push_back(LegEvent::Failed(failure));
        }
    }

    pub(super) fn outbound_timeout(&mut self, now: Instant) {
        let due = self
            .outbound
            .as_ref()
            .and_then(|o| o.ring_deadline)
            .is_some_and(|at| at <= now);
        if due {
            self.cancel(FailKind::NoAnswer, now);
        }
    }

    pub(super) fn on_invite_provisional(&mut self, response: Response) {
        let status = response.status;
        let Some(outbound) = &mut self.outbound else {
            return;
        };
        outbound.provisional = true;
        if outbound.cancelling.is_some() {
            self.send_cancel();
            return;
        }
        if status == 100 || self.state != LegState::Inviting {
            return;
        }
        let mut sdp = sdp_of(&response.headers, &response.body);
        if outbound.early_sdp_seen {
            sdp = None;
        } else if sdp.is_some() {
            outbound.early_sdp_seen = true;
        }
        self.events.push_back(LegEvent::Progress { status, sdp });
    }

    pub(super) fn on_invite_response(
        &mut self,
        pending: Pending,
        response: Response,
        now: Instant,
    ) {
        let status = response.status;
        let cancelling = self.outbound.as_ref().and_then(|o| o.cancelling);
        match status {
            200..=299 => self.on_invite_2xx(&response, now),
            300..=399 if cancelling.is_none() => self.redirect(&response),
            401 | 407
                if cancelling.is_none()
                    && self.retry_with_credentials(&pending, &response, now) => {}
            _ => {
                let failure = match cancelling {
                    Some(kind) => cancel_failure(kind, status),
                    None => DialFailure {
                        status,
                        reason: response.reason.clone(),
                        kind: fail_kind(status),
                    },
                };
                self.fail(failure);
            }
        }
    }

    fn on_invite_2xx(&mut self, response: &Response, _now: Instant) {
        let Some(outbound) = &mut self.outbound else {
            return;
        };
        let invite = outbound.request.clone();
        let cancelling = outbound.cancelling;
        outbound.ring_deadline = None;
        let Some((mut dialog, ack)) = dialog_and_ack(&invite, response, self.config.clone()) else {
            self.fail(DialFailure {
                status: 502,
                reason: "unusable 2xx".into(),
                kind: FailKind::Failed,
            });
            return;
        };
        self.dialog = Some(dialog.clone());
        let ack_peer = self.next_hop();
        self.outputs.push_back(LegOutput::SendStateless {
            request: ack.clone(),
            peer: ack_peer,
        });
        if let Some(outbound) = &mut self.outbound {
            outbound.ack = Some(ack);
        }
        match cancelling {
            Some(kind) => {
                // Answered as we gave up: the call is over before it began.
                let bye = dialog.create_request(
                    Method::Bye,
                    &super::sent_by(self.config.local),
                    &self.config.peer.transport.to_string(),
                    &self.config.contact,
                );
                self.dialog = Some(dialog);
                self.send(bye, Purpose::StrayBye);
                self.fail(cancel_failure(kind, 487));
            }
            None => {
                self.state = LegState::Confirmed;
                let sdp = sdp_of(&response.headers, &response.body);
                self.events.push_back(LegEvent::Answered { sdp });
            }
        }
    }

    /// A 2xx for an INVITE already settled: the winner's retransmission
    /// gets its ACK again; another fork's answer gets an ACK and a BYE
    /// (§13.2.2.4).
    pub(super) fn on_invite_2xx_again(&mut self, response: &Response, _now: Instant) {
        let Some(outbound) = &self.outbound else {
            return;
        };
        let remote_tag = response
            .to()
            .ok()
            .and_then(|to| to.tag().map(str::to_string));
        let winner = self.dialog.as_ref().map(|d| d.remote_tag.clone());
        if remote_tag.is_some() && remote_tag == winner {
            if let Some(ack) = outbound.ack.clone() {
                let peer = self.next_hop();
                self.outputs
                    .push_back(LegOutput::SendStateless { request: ack, peer });
            }
            return;
        }
        let invite = outbound.request.clone();
        let Some((mut stray, ack)) = dialog_and_ack(&invite, response, self.config.clone()) else {
            return;
        };
        let peer = self.config.peer;
        self.outputs
            .push_back(LegOutput::SendStateless { request: ack, peer });
        let bye = stray.create_request(
            Method::Bye,
            &super::sent_by(self.config.local),
            &self.config.peer.transport.to_string(),
            &self.config.contact,
        );
        self.pending.push(Pending {
            cseq: bye.cseq().map(|(n, _)| n).unwrap_or(0),
            method: Method::Bye,
            purpose: Purpose::StrayBye,
            request: bye.clone(),
            answered: Vec::new(),
        });
        self.outputs
            .push_back(LegOutput::Send { request: bye, peer });
    }

    /// Follows a 3xx once, to its first Contact.
    fn redirect(&mut self, response: &Response) {
        let target = response.contact().map(|contact| contact.uri);
        let Some(outbound) = &mut self.outbound else {
            return;
        };
        let Some(mut target) = target.filter(|_| !outbound.redirected) else {
            self.fail(DialFailure {
                status: response.status,
                reason: response.reason.clone(),
                kind: FailKind::Failed,
            });
            return;
        };
        outbound.redirected = true;
        target.headers.clear();
        if let Some(check) = outbound.redirect_check.clone() {
            if !(check.0)(&target.to_string()) {
                tracing::warn!(%target, status = response.status, "redirect refused: the target is not allowed by [dial] allow");
                self.fail(DialFailure {
                    status: response.status,
                    reason: format!("redirected to {target}, which is not an allowed dial target"),
                    kind: FailKind::Failed,
                });
                return;
            }
        }
        if let Some(peer) = literal_peer(&target, self.config.peer.transport) {
            self.config.peer = peer;
        }
        let mut invite = outbound.request.clone();
        invite.uri = target;
        next_attempt(&mut invite);
        outbound.request = invite.clone();
        outbound.provisional = false;
        self.send(invite, Purpose::Invite);
    }

    /// Answers a 401/407 with the leg's credentials by sending the request
    /// again with a higher CSeq. False when there is nothing to answer
    /// with, or the same credentials were already refused.
    pub(super) fn retry_with_credentials(
        &mut self,
        pending: &Pending,
        response: &Response,
        _now: Instant,
    ) -> bool {
        let Some((username, password)) = self.credentials.clone() else {
            return false;
        };
        let challenge_header = match response.status {
            401 => "WWW-Authenticate",
            _ => "Proxy-Authenticate",
        };
        let Some(challenge) = Challenge::best(response.headers.get_all(challenge_header)) else {
            return false;
        };
        let proxy = response.status == 407;
        let mut answered = pending.answered.clone();
        let realms = answered.len();
        match answered
            .iter_mut()
            .find(|a| a.proxy == proxy && a.challenge.realm == challenge.realm)
        {
            // The same realm refused these credentials: the password is
            // wrong, asking again would only repeat it.
            Some(_) if !challenge.stale => return false,
            Some(previous) => {
                previous.challenge = challenge;
                previous.count = 0;
            }
            None if realms >= MAX_AUTH_REALMS => return false,
            None => answered.push(Answered {
                proxy,
                challenge,
                count: 0,
            }),
        }
        let mut request = pending.request.clone();
        let method = request.method.to_string();
        let uri = request.uri.to_string();
        // Every realm answered so far is answered again (a proxy's 407,
        // then the PBX's 401 behind it), each with its next nonce count.
        request.headers.remove("Authorization");
        request.headers.remove("Proxy-Authorization");
        let cnonce = crate::sip::response::new_tag();
        for answer in &mut answered {
            answer.count += 1;
            let value = answer.challenge.authorization(
                &username,
                &password,
                &method,
                &uri,
                &cnonce,
                answer.count,
            );
            let header = match answer.proxy {
                true => "Proxy-Authorization",
                false => "Authorization",
            };
            request.headers.push(header, &value);
        }
        if let Some(dialog) = &mut self.dialog {
            if request.method != Method::Invite {
                dialog.local_cseq += 1;
                request
                    .headers
                    .set("CSeq", &format!("{} {}", dialog.local_cseq, request.method));
                request
                    .headers
                    .set("Via", &via(self.config.local, self.config.peer.transport));
            }
        }
        if request.method == Method::Invite {
            next_attempt(&mut request);
            if let Some(outbound) = &mut self.outbound {
                outbound.request = request.clone();
                outbound.provisional = false;
            }
        }
        let cseq = request.cseq().map(|(n, _)| n).unwrap_or(0);
        self.pending.push(Pending {
            cseq,
            method: request.method.clone(),
            purpose: pending.purpose,
            request: request.clone(),
            answered,
        });
        let peer = self.next_hop();
        self.outputs.push_back(LegOutput::Send { request, peer });
        true
    }

    pub(super) fn on_invite_failed(&mut self, status: u16, unreachable: bool) {
        let cancelling = self.outbound.as_ref().and_then(|o| o.cancelling);
        let failure = match cancelling {
            Some(kind) => cancel_failure(kind, 487),
            None => DialFailure {
                status,
                reason: if unreachable {
                    "unreachable".into()
                } else {
                    "no response".into()
                },
                kind: FailKind::Failed,
            },
        };
        self.fail(failure);
    }
}

/// The same INVITE as a new transaction: CSeq + 1, a fresh branch.
fn next_attempt(invite: &mut Request) {
    let cseq = invite.cseq().map(|(n, _)| n).unwrap_or(1) + 1;
    invite.headers.set("CSeq", &format!("{cseq} INVITE"));
    if let Some(top) = invite.headers.first_mut("Via") {
        if let Ok(mut parsed) = crate::sip::message::Via::parse(top) {
            parsed.set_param("branch", Some(new_branch()));
            *top = parsed.to_string();
        }
    }
}

/// The dialog a 2xx creates and its ACK, with the INVITE's credentials
/// (§22.1: the ACK carries what the INVITE did).
fn dialog_and_ack(
    invite: &Request,
    response: &Response,
    config: LegConfig,
) -> Option<(Dialog, Request)> {
    let mut answer = response.clone();
    if answer.contact().is_none() {
        // A 2xx without Contact is broken; send the ACK where the INVITE went.
        answer.headers.push("Contact", &format!("<{}>", invite.uri));
    }
    let mut dialog = Dialog::new_uac(invite, &answer).ok()?;
    let mut ack = dialog.create_request(
        Method::Ack,
        &super::sent_by(config.local),
        &config.peer.transport.to_string(),
        &config.contact,
    );
    for name in ["Authorization", "Proxy-Authorization"] {
        for value in invite.headers.get_all(name) {
            ack.headers.push(name, value);
        }
    }
    Some((dialog, ack))
}

/// What Twilio would call a final status.
pub(super) fn fail_kind(status: u16) -> FailKind {
    match status {
        486 | 600 | 603 => FailKind::Busy,
        408 | 480 => FailKind::NoAnswer,
        _ => FailKind::Failed,
    }
}

fn cancel_failure(kind: FailKind, status: u16) -> DialFailure {
    DialFailure {
        status,
        reason: match kind {
            FailKind::NoAnswer => "no answer within the ring time".into(),
            _ => "cancelled".into(),
        },
        kind,
    }
}
