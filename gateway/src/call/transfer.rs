//! Transferring the caller to a human: one code path for a bot's `<Dial>`
//! or transfer tool, a flow's `on_failure = { dial }` and a `<Dial
//! action>`'s TwiML. Check the target against `[dial] allow`, resolve it,
//! place the INVITE (a UAC leg), keep the caller company (ringback, or the
//! callee's early media), bridge on answer, and report how it went: to the
//! `<Dial action>` URL, or back to the bot with the caller returned to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard_flows::{DialTarget, TransferMode};
use tokio::time::Instant;

use super::bridge::AgentMedia;
use super::dial::{parse_target, CallShared, Target};
use super::leg::{
    DialFailure, FailKind, Leg, LegConfig, LegEvent, LegState, OutgoingCall, RedirectCheck,
};
use super::session::{contact_uri, Call, JobOutput};
use super::LegId;
use crate::sip::transaction::Peer;
use crate::sip::uri::NameAddr;

/// Who asked for the transfer; decides who hears how it went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// A bot's action or tool call: checked against `[dial] allow`.
    Bot,
    /// The flow's `on_failure = { dial }`: the operator's own target.
    OnFailure,
    /// The TwiML a `<Dial action>` URL returned: checked like a bot's.
    DialAction,
    /// The call was routed to a registered user: the operator's routing.
    Route,
    /// TwiML from a webhook flow's URL: checked like a bot's; with no bot
    /// to go back to, a failed dial ends the call.
    Webhook,
}

impl Origin {
    /// The operator chose the target: no allow-list check, and no bot to
    /// go back to if it fails.
    fn operators(self) -> bool {
        matches!(self, Origin::OnFailure | Origin::Route)
    }
}

pub(super) enum Stage {
    Resolving,
    /// One leg per target (a user's phones ring in parallel): the first
    /// to answer wins, the others are cancelled.
    Ringing {
        legs: Vec<LegId>,
        failures: Vec<DialFailure>,
        media: AgentMedia,
    },
    Bridged {
        leg: LegId,
        media: AgentMedia,
        since: Instant,
        limit: Instant,
    },
    /// The `<Dial action>` URL is being told the outcome.
    Reporting,
}

pub(super) struct Transfer {
    pub(super) attempt: u64,
    pub(super) target: DialTarget,
    parsed: Target,
    pub(super) origin: Origin,
    pub(super) stage: Stage,
    /// The party's Call-ID (`DialSipCallId`).
    pub(super) dial_call_id: Option<String>,
    /// The party answered at some point (the action then reports a call
    /// that happened, not a failed dial).
    pub(super) was_bridged: bool,
    /// Our From on the party's leg when it is not the caller's ID (the
    /// registration's extension).
    from: Option<NameAddr>,
    /// What the caller hears while the party rings, fixed when dialing.
    pub(super) ringback: super::dial::Ringback,
    /// The dialed leg as a Calls API resource, once its INVITE is out.
    dialed: Option<super::dial_resource::DialResource>,
    /// The target's other addresses, tried in turn when one fails with a
    /// transport error, a timeout or a 503 (RFC 3263 §4.3).
    pub(super) alternates: Vec<Peer>,
}

/// A dial through an outbound registration, worked out.
pub(super) struct Through {
    pub(super) target: Target,
    pub(super) peer: Peer,
    pub(super) from: NameAddr,
    pub(super) credentials: (String, String),
}

impl Transfer {
    pub(super) fn media(&self) -> Option<&AgentMedia> {
        match &self.stage {
            Stage::Ringing { media, .. } | Stage::Bridged { media, .. } => Some(media),
            _ => None,
        }
    }

    /// The party's SRTP keys, when its media is SRTP.
    pub(super) fn srtp_mut(&mut self) -> Option<&mut switchboard_media::srtp::SrtpContext> {
        self.media_mut().and_then(|media| media.srtp.as_mut())
    }

    pub(super) fn media_mut(&mut self) -> Option<&mut AgentMedia> {
        match &mut self.stage {
            Stage::Ringing { media, .. } | Stage::Bridged { media, .. } => Some(media),
            _ => None,
        }
    }

    /// The leg bridged to the caller.
    pub(super) fn leg(&self) -> Option<LegId> {
        match &self.stage {
            Stage::Bridged { leg, .. } => Some(*leg),
            _ => None,
        }
    }

    /// Whether `id` is one of this transfer's live legs.
    fn owns(&self, id: LegId) -> bool {
        match &self.stage {
            Stage::Ringing { legs, .. } => legs.contains(&id),
            Stage::Bridged { leg, .. } => *leg == id,
            _ => false,
        }
    }

    pub(super) fn is_bridged(&self) -> bool {
        matches!(self.stage, Stage::Bridged { .. })
    }

    /// Bridged with RTP relayed untouched.
    pub(super) fn is_relaying(&self) -> bool {
        matches!(&self.stage, Stage::Bridged { media, .. } if media.is_relay())
    }

    pub(super) fn is_ringing(&self) -> bool {
        matches!(self.stage, Stage::Ringing { .. })
    }

    /// The bridge's time limit.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match &self.stage {
            Stage::Bridged { limit, .. } => Some(*limit),
            _ => None,
        }
    }

    pub(super) fn on_agent_rtcp(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now: std::time::Instant,
    ) {
        if let Some(pipeline) = self.media_mut().and_then(AgentMedia::pipeline_mut) {
            pipeline.on_rtcp_datagram(datagram, from, now);
        }
    }
}

static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Where a dial goes: Request-URI and next hop of each target, or the
/// status and reason it cannot go anywhere.
pub(super) type DialTargets = Result<Vec<(crate::sip::uri::SipUri, Peer)>, (u16, String)>;

/// A user's live contacts, each reached where its REGISTER came from.
pub(super) async fn user_contacts(
    registrar: &crate::registrar::service::Registrar,
    user: &str,
) -> DialTargets {
    let bindings = registrar
        .store
        .bindings(user, crate::registrar::unix_now())
        .await
        .map_err(|error| (503, error.to_string()))?;
    let targets: Vec<_> = bindings
        .iter()
        .filter_map(|binding| {
            let uri = crate::sip::uri::SipUri::parse(&binding.contact).ok()?;
            Some((uri, binding.peer()))
        })
        .collect();
    if targets.is_empty() {
        return Err((480, format!("{user} has no registered phone")));
    }
    Ok(targets)
}

/// What a dial whose every fork failed reports: busy when all were busy,
/// else the most telling failure (not a timeout or a cancel).
fn overall_failure(failures: &[DialFailure]) -> DialFailure {
    if !failures.is_empty() && failures.iter().all(|f| f.kind == FailKind::Busy) {
        return failures[0].clone();
    }
    failures
        .iter()
        .find(|f| !matches!(f.kind, FailKind::Busy) && f.status != 408 && f.status != 487)
        .or_else(|| failures.iter().find(|f| f.kind == FailKind::NoAnswer))
        .or(failures.first())
        .cloned()
        .unwrap_or(DialFailure {
            status: 480,
            reason: "nobody answered".into(),
            kind: FailKind::NoAnswer,
        })
}

impl Call {
    /// Starts a transfer to `target` the way the flow transfers (bridge or
    /// REFER), or says why not.
    pub(super) fn start_dial(&mut self, target: DialTarget, origin: Origin) {
        self.dial(target, origin, true);
    }

    /// Bridges to `target` whatever the flow's transfer mode (a REFER that
    /// failed falls back here).
    pub(super) fn start_bridge(&mut self, target: DialTarget, origin: Origin) {
        self.dial(target, origin, false);
    }

    fn dial(&mut self, target: DialTarget, origin: Origin, may_refer: bool) {
        if self.is_ending() {
            return;
        }
        if self.transfer.is_some() || self.referring.is_some() || self.dial_after_ack.is_some() {
            self.action_result("dial", false, "a transfer is already in progress");
            return;
        }
        // Through an outbound registration: an extension of that PBX.
        let mut target = target;
        let through = match target.registration.clone() {
            Some(id) => match through_registration(&self.shared, &id, &target.uri) {
                Ok(found) => Some(found),
                Err(reason) => {
                    tracing::warn!(target = %target.uri, registration = %id, %reason, "dial refused");
                    crate::metrics::transfer_finished("refused");
                    return self.dial_refused(&target, origin, reason);
                }
            },
            None => None,
        };
        // A phone number: out through a carrier's trunk.
        let trunk = match &target.number {
            Some(number) => {
                let trunk = self.shared.dial.borrow().trunks.first().cloned();
                match trunk {
                    Some(trunk) => Some((trunk.target(number), trunk)),
                    None => {
                        let reason = "no [[trunks]] has an outbound side for phone numbers";
                        tracing::warn!(number = %number, "dial refused: {reason}");
                        crate::metrics::transfer_finished("refused");
                        return self.dial_refused(&target, origin, reason.into());
                    }
                }
            }
            None => None,
        };
        let checked = match (&through, &trunk) {
            (Some(through), _) => through.target.request_uri.to_string(),
            (None, Some((trunk_target, _))) => trunk_target.request_uri.to_string(),
            (None, None) => target.uri.clone(),
        };
        if !origin.operators() && !self.shared.dial.borrow().allows(&checked) {
            tracing::warn!(target = %checked, "dial refused: the target is not allowed by [dial] allow");
            crate::metrics::transfer_finished("refused");
            return self.dial_refused(
                &target,
                origin,
                format!("{checked} is not an allowed dial target"),
            );
        }
        let parsed = match (&through, &trunk) {
            (Some(through), _) => through.target.clone(),
            (None, Some((trunk_target, _))) => trunk_target.clone(),
            (None, None) => match parse_target(&target.uri) {
                Ok(parsed) => parsed,
                Err(reason) => {
                    tracing::warn!(target = %target.uri, %reason, "dial refused: unusable target");
                    crate::metrics::transfer_finished("refused");
                    return self.dial_refused(&target, origin, reason);
                }
            },
        };
        if let Some(through) = &through {
            if target.username.is_none() {
                target.username = Some(through.credentials.0.clone());
                target.password = Some(through.credentials.1.clone());
            }
        }
        let trunk_from = trunk.map(|(_, trunk)| {
            if let (None, Some((user, password))) = (&target.username, &trunk.credentials) {
                target.username = Some(user.clone());
                target.password = Some(password.clone());
            }
            let caller_id = target
                .caller_id
                .clone()
                .unwrap_or_else(|| self.from_user.clone());
            trunk.from(&caller_id)
        });
        let answered = self.caller.state() == LegState::Confirmed;
        let refers = self.flow.transfer != TransferMode::Bridge;
        if !origin.operators() && may_refer && refers && self.caller.state() == LegState::Answered {
            tracing::info!(target = %target.uri, "transfer waits for the caller's ACK to REFER");
            self.dial_after_ack = Some((target, origin));
            return;
        }
        if !origin.operators() && answered && may_refer {
            match self.flow.transfer {
                TransferMode::Bridge => {}
                TransferMode::Refer => return self.start_refer(target.uri, None, origin),
                TransferMode::ReferOrBridge => {
                    let uri = target.uri.clone();
                    return self.start_refer(uri, Some(target), origin);
                }
            }
        }
        self.mute_bot(true);
        let attempt = ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let job = match (&through, self.local_user(&parsed)) {
            (Some(through), _) => {
                let ready = vec![(through.target.request_uri.clone(), through.peer)];
                Box::pin(async move {
                    JobOutput::Resolved {
                        attempt,
                        result: Ok(ready),
                        alternates: Vec::new(),
                    }
                }) as super::session::Job
            }
            (None, found) => match found {
                Some(user) => {
                    let registrar = self
                        .shared
                        .registrar
                        .clone()
                        .expect("a local user has a registrar");
                    Box::pin(async move {
                        JobOutput::Resolved {
                            attempt,
                            result: user_contacts(&registrar, &user).await,
                            alternates: Vec::new(),
                        }
                    }) as super::session::Job
                }
                None => {
                    let resolver = self.shared.resolver.clone();
                    let (uri, transport) = (parsed.request_uri.clone(), parsed.transport);
                    Box::pin(async move {
                        match resolver.resolve_all(&uri, transport).await {
                            Ok(mut peers) => {
                                let first = peers.remove(0);
                                JobOutput::Resolved {
                                    attempt,
                                    result: Ok(vec![(uri, first)]),
                                    alternates: peers,
                                }
                            }
                            Err(reason) => JobOutput::Resolved {
                                attempt,
                                result: Err((503, reason)),
                                alternates: Vec::new(),
                            },
                        }
                    })
                }
            },
        };
        self.spawn_job(job);
        tracing::info!(target = %target.uri, ring_secs = target.timeout_secs, "transfer: dialing");
        self.transfer = Some(Transfer {
            attempt,
            target,
            parsed,
            origin,
            stage: Stage::Resolving,
            dial_call_id: None,
            was_bridged: false,
            from: through.map(|t| t.from).or(trunk_from),
            ringback: self.shared.dial.borrow().ringback,
            dialed: None,
            alternates: Vec::new(),
        });
    }

    fn dial_refused(&mut self, target: &DialTarget, origin: Origin, reason: String) {
        match origin {
            Origin::Bot => self.action_result("dial", false, reason),
            Origin::DialAction => {
                self.return_to_flow(format!("dial to {} refused: {reason}", target.uri))
            }
            Origin::OnFailure | Origin::Route | Origin::Webhook => {
                self.end_unconnected(FailKind::Failed, 500, format!("dial impossible: {reason}"))
            }
        }
    }

    /// Whether `target` names one of our registered users.
    fn local_user(&self, target: &Target) -> Option<String> {
        let registrar = self.shared.registrar.as_ref()?;
        let user = target.request_uri.user_decoded()?;
        let host = target.request_uri.host.to_string();
        let ours = match registrar.domains.is_empty() {
            true => self.shared.is_own_host(&host),
            false => registrar.serves(&host),
        };
        (ours && registrar.directory().user(&user).is_some()).then_some(user)
    }

    /// Places one INVITE per target (several: a user's phones, in parallel).
    pub(super) fn on_resolved(&mut self, attempt: u64, result: DialTargets) {
        let Some(transfer) = &self.transfer else {
            return;
        };
        if transfer.attempt != attempt || self.is_ending() {
            return;
        }
        let targets = match result {
            Ok(targets) if !targets.is_empty() => targets,
            Ok(_) => return self.dial_failed(FailKind::Failed, 480, "no contact to call".into()),
            Err((status, reason)) => {
                tracing::warn!(target = %transfer.target.uri, status, %reason, "transfer target unreachable");
                let kind = if status == 480 {
                    FailKind::NoAnswer
                } else {
                    FailKind::Failed
                };
                return self.dial_failed(kind, status, reason);
            }
        };
        let first = targets[0].1;
        let Some(local) = self.shared.local_for(first.transport, first.addr) else {
            let reason = format!(
                "no {} listener to reach {} from",
                first.transport, first.addr
            );
            tracing::warn!(%reason, "transfer impossible");
            return self.dial_failed(FailKind::Failed, 503, reason);
        };
        let sockets = match self.shared.rtp_ports.bind(local.ip()) {
            Ok(sockets) => sockets,
            Err(error) => {
                tracing::error!(%error, "no RTP port for the transfer");
                return self.dial_failed(FailKind::Failed, 503, format!("no RTP port: {error}"));
            }
        };
        let media_ip = self.shared.media.public_ip.unwrap_or(local.ip());
        let caller_codec = self.caller_media.negotiated.as_ref().map(|n| n.codec);
        let secure = transfer.parsed.secure;
        if secure && first.transport != crate::sip::transaction::Transport::Tls {
            let reason = format!(
                "secure=true but {} is reached over {}, not TLS",
                first.addr, first.transport
            );
            tracing::warn!(%reason, "transfer impossible");
            return self.dial_failed(FailKind::Failed, 488, reason);
        }
        let media = AgentMedia::new(
            sockets,
            media_ip,
            caller_codec,
            &self.shared.media.codecs,
            secure,
        );
        let offer = media.offer();
        let mut legs = Vec::with_capacity(targets.len());
        // The agent's answers and requests must reach this call's shard.
        let call_id = self.shard.new_call_id(&local.ip().to_string());
        for (request_uri, peer) in targets {
            let Some(local) = self.shared.local_for(peer.transport, peer.addr) else {
                tracing::warn!(peer = %peer.addr, transport = %peer.transport, "no listener for this contact");
                continue;
            };
            let transfer = self.transfer.as_ref().expect("checked above");
            let from = match &transfer.from {
                Some(from) => from.clone(),
                None => self.caller_id(transfer.target.caller_id.as_deref(), local),
            };
            let credentials = match (&transfer.target.username, &transfer.target.password) {
                (Some(user), Some(password)) => Some((user.clone(), password.clone())),
                _ => None,
            };
            let outgoing = OutgoingCall {
                // Forks of one dial share the Call-ID; each has its own tag.
                call_id: call_id.clone(),
                request_uri,
                from,
                to: transfer.parsed.to_header(),
                headers: transfer.parsed.headers.clone(),
                sdp: offer.clone(),
                credentials,
                ring_timeout: Duration::from_secs(transfer.target.timeout_secs.max(1) as u64),
                redirect_check: (!transfer.origin.operators()).then(|| {
                    let dial = self.shared.dial.clone();
                    RedirectCheck(Arc::new(move |uri: &str| dial.borrow().allows(uri)))
                }),
            };
            let config = LegConfig {
                local,
                contact: contact_uri(&self.shared, local, peer.transport),
                peer,
            };
            let leg = Leg::outgoing(outgoing, config, std::time::Instant::now());
            tracing::info!(peer = %peer.addr, transport = %peer.transport, dial_call_id = %leg.call_id(), "transfer: INVITE sent");
            legs.push(self.add_leg(leg));
        }
        if legs.is_empty() {
            return self.dial_failed(FailKind::Failed, 503, "no contact reachable".into());
        }
        if let Some(transfer) = &mut self.transfer {
            let caller_id = transfer
                .target
                .caller_id
                .clone()
                .unwrap_or_else(|| self.from_user.clone());
            transfer.dialed = Some(super::dial_resource::DialResource::open(
                &self.shared,
                &self.sid,
                &call_id,
                &caller_id,
                &transfer.target.uri,
                transfer.target.status_callback.as_deref(),
            ));
            transfer.dial_call_id = Some(call_id);
            transfer.stage = Stage::Ringing {
                legs,
                failures: Vec::new(),
                media,
            };
        }
    }

    /// From for the party: the dial's `callerId`, else the caller's number.
    fn caller_id(&self, chosen: Option<&str>, local: SocketAddr) -> NameAddr {
        caller_id_at(chosen.unwrap_or(&self.from_user), &self.shared, local)
    }

    pub(super) fn on_agent_event(&mut self, id: LegId, event: LegEvent) {
        if !self.transfer.as_ref().is_some_and(|t| t.owns(id)) {
            return;
        }
        match event {
            LegEvent::Progress { status, sdp } => self.on_agent_progress(status, sdp),
            LegEvent::Answered { sdp } => self.on_agent_answered(id, sdp),
            LegEvent::Failed(failure) => self.on_fork_failed(id, failure),
            LegEvent::Ended(reason) => {
                tracing::info!(?reason, "transfer: the party hung up");
                self.bridge_ended("completed");
            }
            LegEvent::Offer { sdp } => self.reanswer_agent(id, sdp),
            LegEvent::Info { content_type, body } => {
                let digit = std::str::from_utf8(&body)
                    .ok()
                    .filter(|_| content_type.contains("dtmf"))
                    .and_then(|text| text.trim().chars().last());
                if let (Some(digit), Some(pipeline)) = (digit, self.caller_media.pipeline.as_mut())
                {
                    let _ = pipeline.send_digits(&digit.to_string());
                }
            }
            _ => {}
        }
    }

    /// One fork failed; when the last one has, the dial has.
    fn on_fork_failed(&mut self, id: LegId, failure: DialFailure) {
        tracing::info!(status = failure.status, reason = %failure.reason, outcome = failure.kind.twilio_status(), "transfer: not connected");
        let Some(Transfer {
            stage: Stage::Ringing { legs, failures, .. },
            ..
        }) = &mut self.transfer
        else {
            return;
        };
        legs.retain(|leg| *leg != id);
        let failover = matches!(failure.status, 408 | 503) && failure.kind == FailKind::Failed;
        failures.push(failure);
        if !legs.is_empty() {
            return;
        }
        if let Some(transfer) = self.transfer.as_mut().filter(|_| failover) {
            if !transfer.alternates.is_empty() {
                let next = transfer.alternates.remove(0);
                // Each address tried is a dialed call of its own.
                if let Some(dialed) = transfer.dialed.take() {
                    dialed.failed(FailKind::Failed);
                }
                let uri = transfer.parsed.request_uri.clone();
                let attempt = transfer.attempt;
                tracing::info!(peer = %next.addr, transport = %next.transport, "transfer: trying the target's next address");
                return self.on_resolved(attempt, Ok(vec![(uri, next)]));
            }
        }
        let Some(Transfer {
            stage: Stage::Ringing { failures, .. },
            ..
        }) = &mut self.transfer
        else {
            return;
        };
        let overall = overall_failure(failures);
        self.dial_failed(overall.kind, overall.status, overall.reason);
    }

    fn on_agent_progress(&mut self, status: u16, sdp: Option<String>) {
        if (180..=183).contains(&status) {
            if let Some(dialed) = self.transfer.as_ref().and_then(|t| t.dialed.as_ref()) {
                dialed.ringing();
            }
        }
        if self.caller.state() == LegState::Inviting {
            // The caller has not been answered (on_failure before answer):
            // let it hear that the human's phone rings.
            self.caller.ring(None);
        }
        let forked = matches!(&self.transfer, Some(Transfer { stage: Stage::Ringing { legs, .. }, .. }) if legs.len() > 1);
        // Several phones' early media cannot share one stream: ringback.
        let Some(sdp) = sdp.filter(|_| !forked) else {
            return;
        };
        let recording = self.flow.recording.is_some();
        let (party_rate, jitter) = (self.caller_media.pipeline_rate(), self.jitter_settings());
        let Some(caller) = self.caller_media.pipeline.as_mut() else {
            return;
        };
        let Some(media) = self.transfer.as_mut().and_then(Transfer::media_mut) else {
            return;
        };
        if let Err(error) = media.take_answer(&sdp) {
            tracing::info!(%error, status, "early media not usable");
            return;
        }
        let now = std::time::Instant::now();
        match media.choose_path(caller, recording, party_rate, jitter, now) {
            Ok(()) => {
                if media.is_relay() {
                    caller.pause_sending(true);
                } else if let Some(agent) = media.pipeline_mut() {
                    agent.pause_sending(true);
                }
                caller.clear();
                tracing::info!(status, "transfer: early media from the party");
            }
            Err(error) => tracing::info!(%error, "early media not usable"),
        }
    }

    fn on_agent_answered(&mut self, id: LegId, sdp: Option<String>) {
        if let Some(dialed) = self.transfer.as_ref().and_then(|t| t.dialed.as_ref()) {
            dialed.answered();
        }
        // The first phone to answer wins; the others stop ringing.
        let others: Vec<LegId> = match &self.transfer {
            Some(Transfer {
                stage: Stage::Ringing { legs, .. },
                ..
            }) => legs.iter().copied().filter(|leg| *leg != id).collect(),
            _ => Vec::new(),
        };
        let now = std::time::Instant::now();
        for other in others {
            if let Some(leg) = self.leg_mut(other) {
                leg.hang_up(now);
            }
        }
        let answered_caller = self.caller.state() != LegState::Inviting;
        if !answered_caller {
            let rate = self
                .caller_media
                .negotiated
                .as_ref()
                .map(|n| n.codec.sample_rate())
                .unwrap_or(8000);
            if let Err(error) = self.answer_caller(rate) {
                tracing::error!(%error, "cannot answer the caller for the bridge");
                return self.hang_up_agent_and_end(format!("media pipeline failed ({error})"));
            }
        }
        let recording = self.flow.recording.is_some();
        let (party_rate, jitter) = (self.caller_media.pipeline_rate(), self.jitter_settings());
        let now = std::time::Instant::now();
        let Some(caller) = self.caller_media.pipeline.as_mut() else {
            return self
                .hang_up_agent_and_end("the caller's media is not ready for a bridge".into());
        };
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        let Some(media) = transfer.media_mut() else {
            return;
        };
        let ready = match (sdp, media.negotiated.is_some()) {
            (Some(sdp), _) => media.take_answer(&sdp).map(|_| ()),
            (None, true) => Ok(()),
            (None, false) => Err("the party answered without SDP".to_string()),
        }
        .and_then(|()| {
            if media.path.is_none() {
                media.choose_path(caller, recording, party_rate, jitter, now)
            } else {
                Ok(())
            }
        });
        if let Err(error) = ready {
            tracing::warn!(%error, "transfer: cannot bridge");
            return self.hang_up_agent_and_end(format!("bridge failed: {error}"));
        }
        caller.clear();
        if media.is_relay() {
            caller.pause_sending(true);
        } else if let Some(agent) = media.pipeline_mut() {
            agent.pause_sending(false);
        }
        let limit =
            Instant::now() + Duration::from_secs(transfer.target.time_limit_secs.max(1) as u64);
        let Stage::Ringing { media, .. } = std::mem::replace(&mut transfer.stage, Stage::Resolving)
        else {
            return;
        };
        transfer.stage = Stage::Bridged {
            leg: id,
            media,
            since: Instant::now(),
            limit,
        };
        transfer.was_bridged = true;
        tracing::info!("transfer: bridged");
        crate::metrics::transfer_finished("answered");
        // The bot's part is over: it gets its protocol's goodbye.
        self.close_bot();
    }

    fn hang_up_agent_and_end(&mut self, reason: String) {
        self.end(reason);
    }

    /// A re-INVITE from the party: answered from its offer, keeping the
    /// bridge's codec (see [`AgentMedia::reanswer`]).
    fn reanswer_agent(&mut self, id: LegId, sdp: Option<String>) {
        let answer = self
            .transfer
            .as_mut()
            .and_then(Transfer::media_mut)
            .map(|media| media.reanswer(sdp.as_deref()));
        if let Some(leg) = self.leg_mut(id) {
            match answer {
                Some(Ok(sdp)) => leg.accept_offer(Some(&sdp)),
                Some(Err(status)) => {
                    tracing::info!(status, "the party's re-INVITE drops the bridge's codec");
                    leg.reject_offer(status)
                }
                None => leg.reject_offer(488),
            }
        }
    }

    pub(super) fn transfer_timeout(&mut self, now: Instant) {
        let due = self
            .transfer
            .as_ref()
            .and_then(Transfer::deadline)
            .is_some_and(|at| at <= now);
        if due {
            tracing::info!("transfer: time limit reached");
            if let Some(id) = self.transfer.as_ref().and_then(Transfer::leg) {
                if let Some(leg) = self.leg_mut(id) {
                    leg.hang_up(now.into_std());
                }
            }
            self.bridge_ended("completed");
        }
    }

    /// The caller pressed `*` in a bridge with `hangupOnStar`.
    pub(super) fn star_hang_up(&mut self) {
        tracing::info!("transfer: the caller pressed * (hangupOnStar)");
        if let Some(id) = self.transfer.as_ref().and_then(Transfer::leg) {
            if let Some(leg) = self.leg_mut(id) {
                leg.hang_up(std::time::Instant::now());
            }
        }
        self.bridge_ended("completed");
    }

    /// The bridge is over with the caller still here.
    fn bridge_ended(&mut self, status: &'static str) {
        let Some(transfer) = &self.transfer else {
            return;
        };
        let Stage::Bridged { since, .. } = &transfer.stage else {
            return;
        };
        let seconds = since.elapsed().as_secs();
        let star = transfer.target.hangup_on_star;
        self.stop_agent_media();
        let has_action = self
            .transfer
            .as_ref()
            .is_some_and(|t| t.target.action.is_some());
        if has_action {
            self.report_dial(status, 200, seconds);
        } else if star {
            self.transfer = None;
            self.return_to_flow("the caller left the human (hangupOnStar)".into());
        } else {
            self.transfer = None;
            self.end("the transferred call ended");
        }
    }

    /// The party was not reached: tell the action URL, else the bot.
    pub(super) fn dial_failed(&mut self, kind: FailKind, status: u16, reason: String) {
        crate::metrics::transfer_finished(kind.twilio_status());
        if let Some(dialed) = self.transfer.as_ref().and_then(|t| t.dialed.as_ref()) {
            dialed.failed(kind);
        }
        self.stop_agent_media();
        let Some(transfer) = &self.transfer else {
            return;
        };
        if transfer.target.action.is_some() {
            return self.report_dial(kind.twilio_status(), status, 0);
        }
        let origin = transfer.origin;
        let uri = transfer.target.uri.clone();
        self.transfer = None;
        let message = format!("{}: {status} {reason}", kind.twilio_status());
        match origin {
            Origin::OnFailure | Origin::Route | Origin::Webhook => {
                self.end_unconnected(kind, status, message)
            }
            Origin::Bot | Origin::DialAction => {
                self.return_to_flow(format!("transfer to {uri} failed ({message})"));
            }
        }
    }

    /// Nobody is left to talk to: refuse or hang up the caller.
    fn end_unconnected(&mut self, kind: FailKind, status: u16, message: String) {
        if self.caller.state() == LegState::Inviting {
            let status = match kind {
                FailKind::Busy => 486,
                _ if (400..700).contains(&status) && status != 487 => status,
                _ => 480,
            };
            self.reject(status, format!("transfer failed ({message})"));
        } else {
            self.end(format!("transfer failed ({message})"));
        }
    }

    /// Drops the party's media; the caller's pipeline speaks again.
    fn stop_agent_media(&mut self) {
        let now = std::time::Instant::now();
        let Some(transfer) = &mut self.transfer else {
            return;
        };
        let stage = std::mem::replace(&mut transfer.stage, Stage::Reporting);
        if let Stage::Ringing { media, .. } | Stage::Bridged { media, .. } = stage {
            if let Some(pipeline) = self.caller_media.pipeline.as_mut() {
                if let Some((sequence, timestamp)) = media.relay_position(now) {
                    pipeline.resume_rtp(sequence, timestamp);
                }
                pipeline.pause_sending(false);
                pipeline.clear();
            }
        }
    }

    /// Back to the bot after a transfer that did not (or no longer) hold
    /// the caller: told why, its audio heard again. Without a bot (closed
    /// at the bridge) a new session opens; without a connector that works,
    /// the flow's `on_failure` decides.
    pub(super) fn return_to_flow(&mut self, message: String) {
        self.transfer = None;
        if self.is_ending() {
            return;
        }
        match &self.bot {
            Some(_) => {
                self.mute_bot(false);
                tracing::info!(%message, "caller back with the bot");
                self.action_result("dial", false, message);
            }
            // A webhook flow has no bot of its own to go back to.
            None if self.flow.bot.is_none() => self.end(message),
            None if self.caller.state() == LegState::Confirmed => {
                self.open_bot(super::bot::OpenPurpose::Return);
            }
            None => self.end(message),
        }
    }

    fn jitter_settings(&self) -> (u32, Option<switchboard_media::jitter::AdaptiveConfig>) {
        (
            self.shared.media.jitter_depth_ms,
            self.shared.media.jitter_adaptive,
        )
    }
}

/// A From for a call we place: `caller` itself when it is a URI, else a
/// URI of its safe characters at our address.
pub(super) fn caller_id_at(caller: &str, shared: &CallShared, local: SocketAddr) -> NameAddr {
    if let Some(uri) =
        Some(caller).and_then(|c| NameAddr::parse(c).ok().filter(|_| c.contains(':')))
    {
        return uri;
    }
    let user = caller_id_user(caller, "switchboard");
    let host = crate::call::leg::sent_by(SocketAddr::new(
        shared.media.public_ip.unwrap_or(local.ip()),
        local.port(),
    ));
    NameAddr::parse(&format!("<sip:{user}@{host}>"))
        .expect("a caller ID URI of safe characters parses")
}

/// The extension `uri` of the PBX registration `id` is registered to:
/// its Request-URI, where it goes, and as whom.
pub(super) fn through_registration(
    shared: &CallShared,
    id: &str,
    uri: &str,
) -> Result<Through, String> {
    let entry = shared
        .registry
        .get(id)
        .ok_or_else(|| format!("there is no registration `{id}`"))?;
    let peer = entry
        .peer
        .ok_or_else(|| format!("registration `{id}` has not reached its registrar yet"))?;
    let rest = uri.strip_prefix("sip:").unwrap_or(uri);
    let user = rest.split(['@', ';', '?']).next().unwrap_or("");
    if user.is_empty() {
        return Err(format!("{uri:?} names no extension"));
    }
    let mut request_uri = entry.spec.proxy.clone();
    request_uri.user = Some(user.to_string());
    let from = NameAddr {
        display: None,
        uri: entry.spec.aor(),
        params: Vec::new(),
    };
    Ok(Through {
        target: Target {
            request_uri,
            headers: Vec::new(),
            transport: Some(peer.transport),
            secure: false,
        },
        peer,
        from,
        credentials: (
            entry
                .spec
                .auth_user
                .clone()
                .unwrap_or_else(|| entry.spec.username.clone()),
            entry.spec.password.clone(),
        ),
    })
}

/// The user part of a From for `caller`: its alphanumerics and `+-_.`
/// (PROTOCOLS.md §1), at most 64; `fallback` when nothing is left.
pub(super) fn caller_id_user(caller: &str, fallback: &str) -> String {
    let user: String = caller
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "+-_.".contains(*c))
        .take(64)
        .collect();
    if user.is_empty() {
        fallback.to_string()
    } else {
        user
    }
}
