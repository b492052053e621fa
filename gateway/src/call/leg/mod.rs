//! A call leg: one SIP dialog, UAS (the caller) or UAC (a party we dial),
//! as a sans-IO state machine in the style of quinn-proto's `Connection`.
//! Feed it what arrived for its dialog with [`Leg::handle_input`] and the
//! clock with [`Leg::handle_timeout`]; drive it with the methods named after
//! SIP actions (answer, reject, hang up, cancel, re-INVITE, REFER); collect
//! what to send with [`Leg::poll_output`], what happened with
//! [`Leg::poll_event`] and when to call back with [`Leg::poll_timeout`].
//!
//! Retransmissions belong to the transaction layer below; the leg owns the
//! dialog: tags, CSeq spaces, route set, the INVITE's outcome, offer/answer
//! turns, glare, BYE, CANCEL, digest answers, REFER and its NOTIFYs.
//!
//! Every leg reports its end exactly once: `Failed` for an outgoing INVITE
//! that was never answered, `Ended` otherwise. It may still have work after
//! that (a CANCEL's 487 to absorb, a late 2xx to ACK and BYE); the owner
//! keeps driving it until [`Leg::is_finished`].

mod inbound;
mod offer;
mod outbound;
mod refer;
mod requests;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::sip::dialog::Dialog;
use crate::sip::message::{Method, Request, Response};
use crate::sip::response::new_branch;
use crate::sip::transaction::{Peer, ServerTxId, Transport};
use crate::sip::uri::{Host, SipUri};

pub use outbound::{OutgoingCall, RedirectCheck};
pub use refer::ReferOutcome;

/// Methods we answer inside a dialog; sent in `Allow`.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, NOTIFY";
/// Longest wait for the answer to our BYE before the leg counts as ended.
const BYE_WAIT: Duration = Duration::from_secs(5);

/// Where the leg sends from and what it calls itself.
#[derive(Clone, Debug)]
pub struct LegConfig {
    /// Our SIP address on the leg's transport: the Via sent-by.
    pub local: SocketAddr,
    /// Our Contact.
    pub contact: SipUri,
    /// Next hop for requests: the caller's source address (UAS), or the
    /// resolved target or outbound proxy (UAC).
    pub peer: Peer,
}

/// Which side of the INVITE we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Uas,
    Uac,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegState {
    /// UAS: the INVITE is not answered yet. UAC: our INVITE has no final
    /// response yet.
    Inviting,
    /// UAS: our 2xx is out, its ACK not in.
    Answered,
    Confirmed,
    /// Our BYE is out.
    Ending,
    Terminated,
}

/// What the endpoint routed to this leg.
#[derive(Debug)]
pub enum LegInput {
    /// A request: the initial INVITE's successors inside the dialog.
    Request { tx: ServerTxId, request: Request },
    /// An ACK for a 2xx we sent.
    Ack(Request),
    /// The caller cancelled our pending INVITE server transaction.
    Cancelled,
    /// A response to one of our requests.
    Response(Response),
    /// One of our requests got no answer (`unreachable`: could not be sent).
    RequestFailed {
        cseq: u32,
        method: Method,
        unreachable: bool,
    },
    /// Our 2xx was never acknowledged.
    AckTimeout,
}

/// SIP the leg wants sent.
#[derive(Debug)]
pub enum LegOutput {
    /// Answer a server transaction.
    Respond { tx: ServerTxId, response: Response },
    /// Send a request in a new client transaction.
    Send { request: Request, peer: Peer },
    /// Send without a transaction (the ACK for a 2xx).
    SendStateless { request: Request, peer: Peer },
}

/// Why an outgoing INVITE did not connect, in Twilio's `DialCallStatus`
/// terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailKind {
    /// 486, 600, 603.
    Busy,
    /// Nobody answered within the ring time (or 408/480 from the far end).
    NoAnswer,
    /// We cancelled it (the caller hung up, the call was redirected).
    Canceled,
    /// Anything else: other 4xx-6xx, timeouts, unreachable targets.
    Failed,
}

impl FailKind {
    pub fn twilio_status(self) -> &'static str {
        match self {
            FailKind::Busy => "busy",
            FailKind::NoAnswer => "no-answer",
            FailKind::Canceled => "canceled",
            FailKind::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialFailure {
    /// The final status, or the one the failure stands for (408 timeout,
    /// 503 unreachable, 487 cancelled).
    pub status: u16,
    pub reason: String,
    pub kind: FailKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The far end sent BYE.
    RemoteBye,
    /// We hung up (our BYE was answered, or we stopped waiting).
    LocalBye,
    /// UAS: the caller cancelled before we answered.
    Cancelled,
    /// UAS: we rejected the INVITE with this status.
    Rejected(u16),
    /// UAS: our 2xx was never acknowledged (we sent BYE).
    AckTimeout,
}

/// What happened on the leg, for the call.
#[derive(Debug, PartialEq, Eq)]
pub enum LegEvent {
    /// UAC: a provisional response; `sdp` carries early media.
    Progress { status: u16, sdp: Option<String> },
    /// UAC: the callee answered.
    Answered { sdp: Option<String> },
    /// UAC: the INVITE failed; the leg's one end report.
    Failed(DialFailure),
    /// Our 2xx (to the INVITE or a re-INVITE) was acknowledged; `sdp` is
    /// the answer to an offer we made in it.
    Acknowledged { sdp: Option<String> },
    /// The far end made an offer (re-INVITE or UPDATE; `None`: it asks for
    /// ours). Answer at once with [`Leg::accept_offer`] or [`Leg::reject_offer`].
    Offer { sdp: Option<String> },
    /// Our re-INVITE was answered.
    OfferAnswered { sdp: Option<String> },
    /// Our re-INVITE was refused; the session goes on unchanged.
    OfferRefused { status: u16 },
    /// An INFO (answered 200 already).
    Info { content_type: String, body: Vec<u8> },
    /// Progress of our REFER: the 2xx to it, then each NOTIFY's sipfrag.
    ReferProgress { status: u16 },
    /// Our REFER is over.
    ReferEnded(ReferOutcome),
    /// The dialog is over; the leg's one end report (after answer).
    Ended(EndReason),
}

/// Why one of our requests is outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Invite,
    Cancel,
    ReInvite,
    Bye,
    /// BYE to a fork that answered after another one won.
    StrayBye,
    Refer,
}

#[derive(Clone, Debug)]
struct Pending {
    cseq: u32,
    method: Method,
    purpose: Purpose,
    /// The request as sent, to send again with credentials.
    request: Request,
    /// Challenges answered so far for this request, one per realm.
    answered: Vec<outbound::Answered>,
}

pub struct Leg {
    role: Role,
    state: LegState,
    config: LegConfig,
    call_id: String,
    local_tag: String,
    /// Set once the dialog exists (UAS: at answer or ring; UAC: first 2xx).
    dialog: Option<Dialog>,
    /// UAS: the INVITE and its transaction, until answered or rejected.
    invite: Option<(ServerTxId, Request)>,
    outbound: Option<outbound::OutboundInvite>,
    offer: offer::OfferState,
    refer: Option<refer::ReferState>,
    pending: Vec<Pending>,
    /// Hang up as soon as the dialog allows (UAS waiting for its ACK).
    bye_pending: bool,
    bye_deadline: Option<Instant>,
    /// Credentials for challenges to in-dialog requests (UAC legs).
    credentials: Option<(String, String)>,
    end_reported: bool,
    outputs: VecDeque<LegOutput>,
    events: VecDeque<LegEvent>,
}

impl Leg {
    fn new(role: Role, config: LegConfig, call_id: String, local_tag: String) -> Leg {
        Leg {
            role,
            state: LegState::Inviting,
            config,
            call_id,
            local_tag,
            dialog: None,
            invite: None,
            outbound: None,
            offer: offer::OfferState::default(),
            refer: None,
            pending: Vec::new(),
            bye_pending: false,
            bye_deadline: None,
            credentials: None,
            end_reported: false,
            outputs: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn state(&self) -> LegState {
        self.state
    }

    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    pub fn local_tag(&self) -> &str {
        &self.local_tag
    }

    /// The dialog, once it exists.
    pub fn dialog(&self) -> Option<&Dialog> {
        self.dialog.as_ref()
    }

    pub fn peer(&self) -> Peer {
        self.config.peer
    }

    /// The leg reported its end (`Failed` or `Ended`).
    pub fn has_ended(&self) -> bool {
        self.end_reported
    }

    /// Nothing left to do: the end is reported and no INVITE of ours is
    /// still unresolved (a late provisional still needs our CANCEL, a late
    /// 2xx our ACK and BYE). Other requests in flight are left to the
    /// transaction layer.
    pub fn is_finished(&self) -> bool {
        self.end_reported
            && self.state == LegState::Terminated
            && self.outputs.is_empty()
            && !self.pending.iter().any(|p| p.purpose == Purpose::Invite)
    }

    pub fn handle_input(&mut self, input: LegInput, now: Instant) {
        match input {
            LegInput::Request { tx, request } => self.on_request(tx, request, now),
            LegInput::Ack(ack) => self.on_ack(ack, now),
            LegInput::Cancelled => self.on_cancelled(),
            LegInput::Response(response) => self.on_response(response, now),
            LegInput::RequestFailed {
                cseq,
                method,
                unreachable,
            } => self.on_request_failed(cseq, method, unreachable, now),
            LegInput::AckTimeout => self.on_ack_timeout(now),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.bye_deadline.is_some_and(|at| at <= now) {
            self.bye_deadline = None;
            self.pending.retain(|p| p.purpose != Purpose::Bye);
            self.finish(EndReason::LocalBye);
        }
        self.outbound_timeout(now);
        self.offer_timeout(now);
        self.refer_timeout(now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.bye_deadline,
            self.outbound.as_ref().and_then(|o| o.deadline()),
            self.offer.deadline(),
            self.refer.as_ref().and_then(|r| r.deadline()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn poll_output(&mut self) -> Option<LegOutput> {
        self.outputs.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<LegEvent> {
        self.events.pop_front()
    }

    /// Ends the leg from our side, whatever its state: CANCEL an unanswered
    /// INVITE we sent, reject (480) one we received, BYE a dialog (once the
    /// ACK is in, for a UAS).
    pub fn hang_up(&mut self, now: Instant) {
        match (self.role, self.state) {
            (_, LegState::Terminated | LegState::Ending) => {}
            (Role::Uac, LegState::Inviting) => self.cancel(FailKind::Canceled, now),
            (Role::Uas, LegState::Inviting) => self.reject(480, now),
            (Role::Uas, LegState::Answered) => self.bye_pending = true,
            (_, LegState::Answered | LegState::Confirmed) => self.send_bye(now),
        }
    }

    fn send_bye(&mut self, now: Instant) {
        let Some(bye) = self.in_dialog_request(Method::Bye) else {
            self.finish(EndReason::LocalBye);
            return;
        };
        self.state = LegState::Ending;
        self.bye_deadline = Some(now + BYE_WAIT);
        self.send(bye, Purpose::Bye);
        // Whatever offer the far end was making dies with the dialog.
        self.abandon_server_offer();
    }

    fn on_bye_answered(&mut self, pending: Pending, response: &Response, now: Instant) {
        if matches!(response.status, 401 | 407)
            && self.retry_with_credentials(&pending, response, now)
        {
            return;
        }
        self.bye_deadline = None;
        self.finish(EndReason::LocalBye);
    }

    /// Sends the request in a new client transaction, remembering why.
    fn send(&mut self, request: Request, purpose: Purpose) {
        if let Ok((cseq, method)) = request.cseq() {
            self.pending.push(Pending {
                cseq,
                method,
                purpose,
                request: request.clone(),
                answered: Vec::new(),
            });
        }
        let peer = self.next_hop();
        self.outputs.push_back(LegOutput::Send { request, peer });
    }

    fn take_pending(&mut self, cseq: u32, method: &Method) -> Option<Pending> {
        let index = self
            .pending
            .iter()
            .position(|p| p.cseq == cseq && p.method == *method)?;
        Some(self.pending.remove(index))
    }

    fn pending_purpose(&self, cseq: u32, method: &Method) -> Option<Purpose> {
        self.pending
            .iter()
            .find(|p| p.cseq == cseq && p.method == *method)
            .map(|p| p.purpose)
    }

    fn on_response(&mut self, response: Response, now: Instant) {
        let Ok((cseq, method)) = response.cseq() else {
            return;
        };
        if response.status < 200 {
            if self.pending_purpose(cseq, &method) == Some(Purpose::Invite) {
                self.on_invite_provisional(response);
            }
            return;
        }
        let Some(pending) = self.take_pending(cseq, &method) else {
            // A 2xx retransmission for an INVITE already settled, or noise.
            if method == Method::Invite && (200..300).contains(&response.status) {
                self.on_invite_2xx_again(&response, now);
            }
            return;
        };
        match pending.purpose {
            Purpose::Invite => self.on_invite_response(pending, response, now),
            Purpose::ReInvite => self.on_reinvite_response(pending, response, now),
            Purpose::Bye => self.on_bye_answered(pending, &response, now),
            Purpose::Refer => self.on_refer_response(pending, &response, now),
            Purpose::Cancel | Purpose::StrayBye => {}
        }
    }

    fn on_request_failed(&mut self, cseq: u32, method: Method, unreachable: bool, now: Instant) {
        let Some(pending) = self.take_pending(cseq, &method) else {
            return;
        };
        let status = if unreachable { 503 } else { 408 };
        match pending.purpose {
            Purpose::Invite => self.on_invite_failed(status, unreachable),
            Purpose::ReInvite => self.on_reinvite_failed(status, now),
            Purpose::Bye => {
                self.bye_deadline = None;
                self.finish(EndReason::LocalBye);
            }
            Purpose::Refer => self.on_refer_failed(status),
            Purpose::Cancel | Purpose::StrayBye => {}
        }
    }

    /// A new request inside the dialog, or `None` before there is one.
    fn in_dialog_request(&mut self, method: Method) -> Option<Request> {
        let sent_by = sent_by(self.config.local);
        let transport = self.config.peer.transport.to_string();
        let contact = self.config.contact.clone();
        let mut request = self
            .dialog
            .as_mut()?
            .create_request(method, &sent_by, &transport, &contact);
        request.headers.push("User-Agent", "switchboard");
        Some(request)
    }

    /// Where requests go: the first route or the remote target when they
    /// are IP literals (a UAC leg), else where the INVITE went or came from.
    fn next_hop(&self) -> Peer {
        if self.role == Role::Uas {
            // Symmetric signalling: the caller's source address works
            // through NAT, where its Contact may not.
            return self.config.peer;
        }
        let Some(dialog) = &self.dialog else {
            return self.config.peer;
        };
        let uri = match dialog.route_set.first() {
            Some(route) => crate::sip::uri::NameAddr::parse(route)
                .ok()
                .map(|route| route.uri),
            None => Some(dialog.remote_target.clone()),
        };
        uri.and_then(|uri| literal_peer(&uri, self.config.peer.transport))
            .unwrap_or(self.config.peer)
    }

    /// Reports the end once and stops the leg.
    fn finish(&mut self, reason: EndReason) {
        self.state = LegState::Terminated;
        if !self.end_reported {
            self.end_reported = true;
            self.events.push_back(LegEvent::Ended(reason));
        }
    }

    fn fail(&mut self, failure: DialFailure) {
        self.state = LegState::Terminated;
        if !self.end_reported {
            self.end_reported = true;
            self.events.push_back(LegEvent::Failed(failure));
        }
    }
}

/// `host:port` for a Via, IPv6 in brackets.
pub fn sent_by(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(addr) => addr.to_string(),
        SocketAddr::V6(addr) => format!("[{}]:{}", addr.ip(), addr.port()),
    }
}

/// The peer a URI with an IP-literal host names (default port 5060), on
/// the URI's transport or `default`.
pub fn literal_peer(uri: &SipUri, default: Transport) -> Option<Peer> {
    let Host::Ip(ip) = uri.host else {
        return None;
    };
    let transport = match uri.transport().and_then(Transport::from_name) {
        Some(transport) => transport,
        None if uri.scheme == crate::sip::uri::Scheme::Sips => Transport::Tls,
        None => default,
    };
    Some(Peer {
        transport,
        addr: SocketAddr::new(ip, uri.port.unwrap_or(transport.default_port())),
    })
}

/// A Via header value for a new request from `local` over `transport`.
fn via(local: SocketAddr, transport: Transport) -> String {
    format!(
        "SIP/2.0/{} {};branch={};rport",
        transport.to_string().to_ascii_uppercase(),
        sent_by(local),
        new_branch()
    )
}

/// The SDP of a message, when it carries one.
fn sdp_of(headers: &crate::sip::headers::Headers, body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let is_sdp = headers
        .get("Content-Type")
        .map(|t| t.trim().to_ascii_lowercase().starts_with("application/sdp"))
        .unwrap_or(true);
    if !is_sdp {
        return None;
    }
    String::from_utf8(body.to_vec()).ok()
}
