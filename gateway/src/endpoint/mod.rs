//! The SIP endpoint task: owns the transaction layer, admits new calls
//! (capacity, routing), answers out-of-dialog requests, and routes every
//! response and in-dialog request to the leg that owns its dialog. It
//! supervises call tasks: however a call ends (even by panicking), its slot
//! and routes are released and an INVITE it left unanswered gets a 500.
//! It never touches media.
//!
//! The endpoint runs as one such task per shard ([`shards`]), so SIP work
//! spreads over every core: each shard owns the Call-IDs that hash to it.

mod admission;
mod place;
mod routes;
pub mod shards;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard_connectors::BotConnector;
use switchboard_flows::FlowConfig;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::call::leg::LegInput;
use crate::call::{
    registry::CallRecord, run_call, CallInput, CallRef, CallSetup, EndpointCommand, LegId,
    CALL_INPUT_CAPACITY,
};
use crate::routing::Router;
use crate::sip::message::{Method, Request, SipMessage};
use crate::sip::response::{default_reason, new_tag, response_for};
use crate::sip::transaction::{
    ClientTxId, Peer, ServerTxId, Timers, TransactionEvent, TransactionLayer,
};
use crate::transport::{Inbound, InboundQueues, Transports};

pub use routes::{ClientOwner, Routes};
pub use shards::{EndpointSender, Occupancy, Shard};

/// Commands queued from all calls towards the endpoint.
pub const COMMAND_CAPACITY: usize = 4096;
/// What we answer out of dialog.
const ALLOW: &str = crate::call::leg::ALLOW;

/// A flow ready to take calls.
#[derive(Clone)]
pub struct FlowRuntime {
    pub config: Arc<FlowConfig>,
    pub connector: Arc<dyn BotConnector>,
}

/// Media settings every call gets.
#[derive(Clone, Debug)]
pub struct MediaSettings {
    pub public_ip: Option<IpAddr>,
    pub rtp_timeout: Duration,
    pub jitter_depth_ms: u32,
    /// Adaptive jitter bounds; `None` keeps the depth fixed.
    pub jitter_adaptive: Option<switchboard_media::jitter::AdaptiveConfig>,
    pub codecs: switchboard_media::sdp::CodecPreferences,
    /// Send nothing while the bot is silent (RFC 3551 silence suppression).
    pub suppress_silence: bool,
}

/// One shard of the endpoint.
pub struct Endpoint {
    /// Which Call-IDs are this shard's.
    pub shard: Shard,
    pub transports: Transports,
    pub router: Arc<Router>,
    pub flows: Arc<HashMap<String, FlowRuntime>>,
    pub max_calls: usize,
    /// What every call shares: media settings, RTP ports, dial policy…
    pub calls: Arc<crate::call::dial::CallShared>,
    /// From the sockets, this shard's messages: in-dialog traffic first,
    /// then new requests.
    pub inbound: InboundQueues,
    /// A new INVITE that waited longer than this in the queue is answered
    /// 503 before any call state exists: the gateway is not keeping up.
    pub overload_delay: Duration,
    pub shutdown: watch::Receiver<EndpointState>,
    /// Calls in progress in every shard, against `max_calls`.
    pub occupancy: Arc<Occupancy>,
    /// INVITEs not yet answered finally, in every shard: the socket tasks
    /// read it before refusing an INVITE unparsed.
    pub pending_invites: Arc<crate::sip::pending_invites::PendingInvites>,
    /// Digest authentication, shared with the registrar.
    pub auth: Arc<std::sync::Mutex<crate::sip::authenticator::Authenticator>>,
    /// Users and trunk logins.
    pub directory: Arc<crate::registrar::users::Directory>,
    /// Our registrar, when users are configured, and its queue.
    pub registrar: Option<Arc<crate::registrar::service::Registrar>>,
    pub register_jobs: Option<crate::registrar::service::RegisterJobs>,
    /// What calls routed straight to a user run as (they have no bot).
    pub user_calls: FlowRuntime,
    /// The outbound registrations' manager, and what they share.
    pub registrations: Option<mpsc::Sender<crate::registration::manager::Event>>,
    pub registry: Arc<crate::registration::manager::Registry>,
    /// This shard's command queue (its calls and the registrar send on
    /// it), and its end.
    pub commands_tx: mpsc::Sender<EndpointCommand>,
    pub commands_rx: mpsc::Receiver<EndpointCommand>,
}

/// What a configuration reload changes in the endpoint. Calls in progress
/// keep the flow they were admitted to. Every shard gets a copy.
#[derive(Clone)]
pub struct Reconfiguration {
    pub router: Arc<Router>,
    pub flows: Arc<HashMap<String, FlowRuntime>>,
    pub directory: Arc<crate::registrar::users::Directory>,
    pub max_calls: usize,
}

impl std::fmt::Debug for Reconfiguration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconfiguration")
            .field("flows", &self.flows.len())
            .field("max_calls", &self.max_calls)
            .finish_non_exhaustive()
    }
}

/// What the owner of the gateway wants the endpoint to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointState {
    Running,
    /// Refuse new calls (503), let existing ones finish.
    Draining,
    /// Hang up every call, then stop.
    Stopping,
}

/// The endpoint's moving parts, apart from its configuration.
struct Core {
    layer: TransactionLayer,
    routes: Routes,
    tasks: JoinSet<()>,
    commands: mpsc::Sender<EndpointCommand>,
    /// Our requests waiting for an outbound TCP connection to open.
    connecting: HashMap<Peer, Vec<ClientTxId>>,
    /// Outbound registrations' REGISTERs: registration id and CSeq.
    registering: HashMap<ClientTxId, (String, u32)>,
    state: EndpointState,
    /// One line per burst of new calls refused.
    shed_log: crate::burst_log::BurstLog,
    /// One line per burst of REGISTERs refused by a full registrar.
    register_shed_log: crate::burst_log::BurstLog,
    /// Calls in progress in every shard.
    occupancy: Arc<Occupancy>,
}

impl Endpoint {
    pub async fn run(mut self) {
        let commands_tx = self.commands_tx.clone();
        let (_, unused) = mpsc::channel(1);
        let mut commands = std::mem::replace(&mut self.commands_rx, unused);
        let mut core = Core {
            layer: TransactionLayer::new(Timers::default())
                .with_pending_invites(self.pending_invites.clone()),
            routes: Routes::for_shard(self.shard),
            tasks: JoinSet::new(),
            commands: commands_tx,
            connecting: HashMap::new(),
            registering: HashMap::new(),
            state: EndpointState::Running,
            shed_log: Default::default(),
            register_shed_log: Default::default(),
            occupancy: self.occupancy.clone(),
        };
        let far = || Instant::now() + Duration::from_secs(3600);
        let timer = tokio::time::sleep_until(far());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            // Re-arm the timer only when the next deadline moved: most
            // messages do not change it, and re-registering costs.
            let deadline = core.layer.poll_timeout().map(Instant::from_std);
            if deadline != armed {
                timer.as_mut().reset(deadline.unwrap_or_else(far));
                armed = deadline;
            }
            // Biased: what ends calls (responses, ACK, BYE, the calls' own
            // commands) always comes before new work, so overload delays
            // and sheds new calls instead of failing the ones in progress.
            tokio::select! {
                biased;
                inbound = self.inbound.urgent.recv() => {
                    let Some(inbound) = inbound else { break };
                    self.on_inbound(&mut core, inbound, false);
                }
                command = commands.recv() => {
                    // The endpoint holds a sender itself, so this never closes.
                    let Some(command) = command else { break };
                    self.on_command(&mut core, command);
                }
                Some(joined) = core.tasks.join_next_with_id(), if !core.tasks.is_empty() => {
                    // What the call sent before it ended comes first: its
                    // last responses must not lose the race to our cleanup.
                    while let Ok(command) = commands.try_recv() {
                        self.on_command(&mut core, command);
                    }
                    self.on_call_ended(&mut core, joined);
                }
                _ = &mut timer => {
                    // An elapsed Sleep stays ready: park it far away until
                    // the layer asks for a new deadline.
                    timer.as_mut().reset(far());
                    armed = None;
                    core.layer.handle_timeout(std::time::Instant::now());
                }
                changed = self.shutdown.changed() => {
                    let next = if changed.is_err() { EndpointState::Stopping } else { *self.shutdown.borrow() };
                    if next == EndpointState::Stopping && core.state != EndpointState::Stopping {
                        for inputs in core.routes.senders() {
                            let _ = inputs.try_send(CallInput::Shutdown);
                        }
                    }
                    core.state = next;
                }
                inbound = self.inbound.fresh.recv() => {
                    let Some(inbound) = inbound else { break };
                    self.on_inbound(&mut core, inbound, true);
                }
            }
            self.flush(&mut core);
            while let Some(event) = core.layer.poll_event() {
                self.dispatch(&mut core, event);
            }
            self.flush(&mut core);
            if core.state == EndpointState::Stopping && core.routes.is_empty() {
                break;
            }
        }
    }

    fn flush(&self, core: &mut Core) {
        while let Some(transmit) = core.layer.poll_transmit() {
            self.transports.send(transmit.peer, transmit.bytes);
        }
    }

    fn on_inbound(&self, core: &mut Core, inbound: Inbound, fresh: bool) {
        match inbound {
            Inbound::Message {
                message,
                peer,
                received,
            } => {
                let now = std::time::Instant::now();
                let early = if !fresh {
                    None
                } else if now.saturating_duration_since(received) > self.overload_delay {
                    Some(EarlyRefusal::Late)
                } else if !core.occupancy.has_place(self.max_calls) {
                    Some(EarlyRefusal::NoPlace(
                        core.occupancy.no_place_reason(self.max_calls),
                    ))
                } else {
                    None
                };
                if let Some(refusal) = core.refuse_before_transaction(&message, early) {
                    self.transports.send(peer, refusal);
                    return;
                }
                core.layer.handle_input(message, peer, now);
            }
            Inbound::Connected { peer } => {
                core.connecting.remove(&peer);
            }
            Inbound::ConnectFailed { peer } => {
                for tx in core.connecting.remove(&peer).unwrap_or_default() {
                    core.layer.unreachable(tx);
                }
            }
            Inbound::Closed { peer } => {
                if let Some(registrations) = &self.registrations {
                    let event = crate::registration::manager::Event::ConnectionClosed { peer };
                    let _ = registrations.try_send(event);
                }
            }
        }
    }

    fn on_command(&mut self, core: &mut Core, command: EndpointCommand) {
        let now = std::time::Instant::now();
        match command {
            EndpointCommand::Respond { tx, response } => {
                core.layer.send_response(tx, response, now)
            }
            EndpointCommand::RespondStatelessly { tx, response } => {
                core.layer.respond_statelessly(tx, response)
            }
            EndpointCommand::SendRequest {
                call,
                leg,
                request,
                peer,
            } => {
                let Ok((cseq, method)) = request.cseq() else {
                    return;
                };
                let tx = core.layer.send_request(request, peer, now);
                core.routes.add_client(
                    tx,
                    ClientOwner {
                        call,
                        leg,
                        cseq,
                        method,
                    },
                );
                if !self.transports.ready(peer) {
                    core.connecting.entry(peer).or_default().push(tx);
                }
            }
            EndpointCommand::SendStateless { message, peer } => {
                core.layer.send_stateless(message, peer)
            }
            EndpointCommand::Register { id, request, peer } => {
                let cseq = request.cseq().map(|(n, _)| n).unwrap_or(0);
                let tx = core.layer.send_request(request, peer, now);
                core.registering.insert(tx, (id, cseq));
                if !self.transports.ready(peer) {
                    core.connecting.entry(peer).or_default().push(tx);
                }
            }
            EndpointCommand::SendRaw { peer, bytes } => self.transports.send(peer, bytes),
            EndpointCommand::AddDialog {
                call,
                leg,
                call_id,
                local_tag,
            } => core.routes.add_dialog(call, leg, call_id, local_tag),
            EndpointCommand::PlaceCall(place) => self.place(core, *place),
            EndpointCommand::Reconfigure(new) => {
                let Reconfiguration {
                    router,
                    flows,
                    directory,
                    max_calls,
                } = *new;
                self.router = router;
                self.flows = flows;
                self.directory = directory;
                self.max_calls = max_calls;
                if self.shard.index == 0 {
                    tracing::info!(
                        flows = self.flows.len(),
                        max_calls,
                        "new calls follow the reloaded configuration"
                    );
                }
            }
        }
    }

    fn on_call_ended(
        &self,
        core: &mut Core,
        joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    ) {
        core.release(joined);
    }

    fn forward(&self, core: &mut Core, call: CallRef, leg: LegId, input: LegInput) {
        core.forward(call, leg, input);
    }

    fn to_registrations(&self, event: crate::registration::manager::Event) {
        if let Some(registrations) = &self.registrations {
            if registrations.try_send(event).is_err() {
                tracing::warn!("registration manager busy: an answer to a REGISTER was dropped");
            }
        }
    }

    fn dispatch(&self, core: &mut Core, event: TransactionEvent) {
        match event {
            TransactionEvent::Request { tx, request, peer } => {
                self.on_request(core, tx, request, peer)
            }
            TransactionEvent::Ack { request, .. } => {
                let call_id = request.call_id().unwrap_or_default();
                let to_tag = request.tag_in_to().map(str::to_string);
                if let Some((call, leg)) = to_tag.and_then(|tag| core.routes.dialog(call_id, &tag))
                {
                    self.forward(core, call, leg, LegInput::Ack(request));
                }
            }
            TransactionEvent::Cancelled { invite_tx, .. } => {
                if let Some((call, leg)) = core.routes.invite(invite_tx) {
                    self.forward(core, call, leg, LegInput::Cancelled);
                }
            }
            TransactionEvent::Response { tx, response } if core.registering.contains_key(&tx) => {
                if response.status >= 200 {
                    if let Some((id, _)) = core.registering.remove(&tx) {
                        self.to_registrations(crate::registration::manager::Event::Response {
                            id,
                            response,
                        });
                    }
                }
            }
            TransactionEvent::Timeout { tx } | TransactionEvent::Unreachable { tx }
                if core.registering.contains_key(&tx) =>
            {
                let unreachable = matches!(event, TransactionEvent::Unreachable { .. });
                if let Some((id, cseq)) = core.registering.remove(&tx) {
                    self.to_registrations(crate::registration::manager::Event::Failed {
                        id,
                        cseq,
                        unreachable,
                    });
                }
            }
            TransactionEvent::Response { tx, response } => {
                let owner = if response.status >= 200 {
                    core.routes.take_client(tx)
                } else {
                    core.routes.client(tx).cloned()
                };
                if let Some(owner) = owner {
                    self.forward(core, owner.call, owner.leg, LegInput::Response(response));
                }
            }
            TransactionEvent::Timeout { tx } | TransactionEvent::Unreachable { tx } => {
                let unreachable = matches!(event, TransactionEvent::Unreachable { .. });
                if let Some(owner) = core.routes.take_client(tx) {
                    let input = LegInput::RequestFailed {
                        cseq: owner.cseq,
                        method: owner.method,
                        unreachable,
                    };
                    self.forward(core, owner.call, owner.leg, input);
                }
            }
            TransactionEvent::AckTimeout { tx, .. } => {
                if let Some((call, leg)) = core.routes.invite(tx) {
                    self.forward(core, call, leg, LegInput::AckTimeout);
                }
            }
        }
    }

    fn on_request(&self, core: &mut Core, tx: ServerTxId, request: Request, peer: Peer) {
        let call_id = request.call_id().unwrap_or_default().to_string();
        let to_tag = request.tag_in_to().map(str::to_string);
        if let Some(tag) = to_tag {
            match core.routes.dialog(&call_id, &tag) {
                Some((call, leg)) => {
                    self.forward(core, call, leg, LegInput::Request { tx, request })
                }
                None => {
                    tracing::info!(method = %request.method, %call_id, peer = %peer.addr, "request for an unknown dialog: 481");
                    reply(&mut core.layer, tx, &request, 481, None);
                }
            }
            return;
        }
        match request.method {
            Method::Register if self.register_jobs.is_some() && self.directory.has_users() => {
                let jobs = self.register_jobs.as_ref().expect("checked");
                let job = crate::registrar::service::RegisterJob { tx, request, peer };
                if let Err(job) = jobs.try_send(job) {
                    if let Some(count) = core.register_shed_log.note() {
                        tracing::warn!(peer = %peer.addr, refused = count, "registrar busy: REGISTERs answered 503 (one line per 10 s)");
                    }
                    reply(&mut core.layer, tx, &job.request, 503, Some("2"));
                }
            }
            Method::Invite => {
                let from_tag = request.tag_in_from().unwrap_or_default().to_string();
                if core.routes.is_known_invite(&call_id, &from_tag) {
                    // The same INVITE by another path (RFC 3261 §8.2.2.2).
                    tracing::info!(%call_id, peer = %peer.addr, "merged INVITE: 482");
                    reply(&mut core.layer, tx, &request, 482, None);
                    return;
                }
                self.admit(core, tx, request, peer, from_tag);
            }
            Method::Options => {
                let mut response = response_for(&request, 200, "OK", Some(&new_tag()));
                response.headers.push("Allow", ALLOW);
                response.headers.push("Accept", "application/sdp");
                core.layer
                    .send_response(tx, response, std::time::Instant::now());
            }
            Method::Bye
            | Method::Info
            | Method::Update
            | Method::Notify
            | Method::Prack
            | Method::Ack
            | Method::Cancel => {
                tracing::info!(method = %request.method, %call_id, peer = %peer.addr, "request outside any dialog: 481");
                reply(&mut core.layer, tx, &request, 481, None)
            }
            _ => {
                tracing::info!(method = %request.method, peer = %peer.addr, "method not supported: 405");
                let mut response =
                    response_for(&request, 405, "Method Not Allowed", Some(&new_tag()));
                response.headers.push("Allow", ALLOW);
                core.layer
                    .send_response(tx, response, std::time::Instant::now());
            }
        }
    }

    fn admit(
        &self,
        core: &mut Core,
        tx: ServerTxId,
        request: Request,
        peer: Peer,
        from_tag: String,
    ) {
        let call_id = request.call_id().unwrap_or_default().to_string();
        if core.state != EndpointState::Running {
            tracing::info!(%call_id, "shutting down: 503 for a new call");
            reply(&mut core.layer, tx, &request, 503, Some("5"));
            crate::metrics::call_rejected(503);
            return;
        }
        let Some(route) = self.authorize(core, tx, &request, peer) else {
            return;
        };
        let flow = match &route.destination {
            crate::routing::Destination::Flow(name) => self.flows.get(name),
            crate::routing::Destination::User(_) => Some(&self.user_calls),
        };
        let Some(flow) = flow else {
            // Config validation makes this unreachable; answer sanely anyway.
            reply(&mut core.layer, tx, &request, 500, None);
            crate::metrics::call_rejected(500);
            return;
        };
        let Some(local_sip) = self.transports.local_for(peer) else {
            reply(&mut core.layer, tx, &request, 500, None);
            crate::metrics::call_rejected(500);
            return;
        };
        // The first look was before the transaction (`on_inbound`); the
        // place is taken once the call is certain, since another shard
        // may have taken the last one since.
        if !core.occupancy.try_take(self.max_calls) {
            let (_, why) = core.occupancy.no_place_reason(self.max_calls);
            core.refuse_new_call(tx, &request, &call_id, why);
            return;
        }
        let (inputs_tx, inputs) = mpsc::channel(CALL_INPUT_CAPACITY);
        let resource = self.calls.call_resources.open(CallRecord::inbound(
            &call_id,
            &request,
            &route.number,
            inputs_tx.clone(),
        ));
        let local_tag = new_tag();
        let call = core
            .routes
            .admit(&call_id, &from_tag, &local_tag, tx, inputs_tx);
        let setup = CallSetup {
            call,
            call_id,
            tx,
            invite: request,
            peer,
            local_tag,
            route,
            shard: self.shard,
            flow: flow.config.clone(),
            connector: flow.connector.clone(),
            local_sip,
            shared: self.calls.clone(),
            endpoint: core.commands.clone(),
            inputs,
            resource,
        };
        let task = core.tasks.spawn(run_call(setup));
        core.routes.attach_task(task.id(), call);
    }
}

/// Why a new INVITE is refused before it has a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EarlyRefusal {
    /// It waited longer than `overload_delay_ms` in this shard's queue.
    Late,
    /// Every place is taken (`limits.max_calls`, or fewer while calls in
    /// progress run late): the stage and the reason, as
    /// `Occupancy::no_place_reason` gives them.
    NoPlace((&'static str, &'static str)),
}

impl Core {
    /// Answers a new INVITE 503 + Retry-After before any call state
    /// exists, with one log line per burst rather than one per call: a line
    /// per refused call would add to the load it reports.
    fn refuse_new_call(&mut self, tx: ServerTxId, request: &Request, call_id: &str, why: &str) {
        self.note_refusal(call_id, why);
        let retry_after = crate::transport::inbound::SHED_RETRY_AFTER;
        reply(&mut self.layer, tx, request, 503, Some(retry_after));
    }

    fn note_refusal(&mut self, call_id: &str, why: &str) {
        self.occupancy.note_refusal(std::time::Instant::now());
        crate::metrics::call_rejected(503);
        if let Some(refused) = self.shed_log.note() {
            tracing::warn!(
                %call_id,
                refused,
                "{why}: new calls answered 503 (logged once per 10 s; see switchboard_calls_rejected_total)"
            );
        }
    }

    /// A new INVITE that waited too long for this shard, or that finds
    /// every call place taken, is refused before the transaction layer sees
    /// it: no 100 Trying, no transaction, no timers — the 503 is all it
    /// costs (bytes to send back). At four times the capacity a refusal
    /// with a transaction cost as much CPU as the calls being completed,
    /// and the gateway collapsed. If the 503 is lost, the INVITE's
    /// retransmission is refused the same way; its ACK stops at the
    /// socket. A retransmission of an INVITE we already took on goes on to
    /// its transaction instead.
    fn refuse_before_transaction(
        &mut self,
        message: &SipMessage,
        refusal: Option<EarlyRefusal>,
    ) -> Option<Vec<u8>> {
        let SipMessage::Request(request) = message else {
            return None;
        };
        let refusal = refusal?;
        if request.method != Method::Invite || self.layer.is_known_request(request) {
            return None;
        }
        let (stage, why) = match refusal {
            EarlyRefusal::Late => (
                "delay",
                "overloaded: new calls waited too long for the SIP endpoint",
            ),
            EarlyRefusal::NoPlace(reason) => reason,
        };
        crate::metrics::sip_shed(stage);
        self.note_refusal(request.call_id().unwrap_or_default(), why);
        Some(crate::transport::inbound::shed_response(request))
    }

    /// Forgets a call whose task ended, however it ended (a panic too):
    /// its routes go, and an INVITE it left unanswered gets a 500.
    fn release(&mut self, joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = match joined {
            Ok((id, ())) => id,
            Err(error) => {
                if error.is_panic() {
                    tracing::error!(task = %error.id(), "call task panicked; releasing its call");
                }
                error.id()
            }
        };
        if let Some((_, invite)) = self.routes.remove_task(id) {
            self.occupancy.release();
            if let Some(tx) = invite {
                self.layer.abandon(tx, std::time::Instant::now());
            }
        }
    }

    /// Hands `input` to a call; a call that cannot take it gets its
    /// request answered here (503, or 481 when it is gone), so no server
    /// transaction is left waiting for an answer nobody will give.
    fn forward(&mut self, call: CallRef, leg: LegId, input: LegInput) {
        let Some(inputs) = self.routes.sender(call) else {
            if let LegInput::Request { tx, request } = input {
                reply(&mut self.layer, tx, &request, 481, None);
            }
            return;
        };
        if let Err(error) = inputs.try_send(CallInput::Leg { leg, input }) {
            let (input, status) = match error {
                mpsc::error::TrySendError::Full(input) => (input, 503),
                mpsc::error::TrySendError::Closed(input) => (input, 481),
            };
            tracing::warn!(
                call = call.0,
                status,
                "call task cannot take a SIP message: answered here"
            );
            if let CallInput::Leg {
                input: LegInput::Request { tx, request },
                ..
            } = input
            {
                let retry = (status == 503).then_some("1");
                reply(&mut self.layer, tx, &request, status, retry);
            }
        }
    }
}

fn reply(
    layer: &mut TransactionLayer,
    tx: ServerTxId,
    request: &Request,
    status: u16,
    retry_after: Option<&str>,
) {
    let mut response = response_for(request, status, default_reason(status), Some(&new_tag()));
    if let Some(seconds) = retry_after {
        response.headers.push("Retry-After", seconds);
    }
    layer.send_response(tx, response, std::time::Instant::now());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::framing::parse_message;
    use crate::sip::message::SipMessage;
    use crate::sip::transaction::Transport;
    use std::net::SocketAddr;

    fn core() -> Core {
        let (commands, _) = mpsc::channel(1);
        Core {
            layer: TransactionLayer::new(Timers::default()),
            routes: Routes::default(),
            tasks: JoinSet::new(),
            commands,
            connecting: HashMap::new(),
            registering: HashMap::new(),
            state: EndpointState::Running,
            shed_log: Default::default(),
            register_shed_log: Default::default(),
            occupancy: Arc::new(Occupancy::new(watch::channel(0).0)),
        }
    }

    fn request(method: &str, branch: &str, to_tag: &str) -> SipMessage {
        let text = format!(
            "{method} sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\nFrom: <sip:a@127.0.0.1>;tag=f1\r\nTo: <sip:100@127.0.0.1>{to_tag}\r\nCall-ID: c1\r\nCSeq: 2 {method}\r\nContact: <sip:a@127.0.0.1:5070>\r\nContent-Length: 0\r\n\r\n"
        );
        parse_message(text.as_bytes()).unwrap()
    }

    const PEER: Peer = Peer {
        transport: Transport::Udp,
        addr: SocketAddr::V4(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::LOCALHOST,
            5070,
        )),
    };

    fn sent(core: &mut Core) -> Vec<String> {
        std::iter::from_fn(|| core.layer.poll_transmit())
            .map(|t| {
                String::from_utf8_lossy(&t.bytes)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    /// A call task that panics before answering: its routes are released
    /// and the caller's INVITE gets a 500 instead of ringing forever.
    #[tokio::test]
    async fn a_panicking_call_is_released_and_its_invite_answered() {
        let mut core = core();
        let now = std::time::Instant::now();
        core.layer
            .handle_input(request("INVITE", "z9hG4bKp1", ""), PEER, now);
        let Some(TransactionEvent::Request { tx, .. }) = core.layer.poll_event() else {
            panic!("no INVITE")
        };
        assert!(sent(&mut core).is_empty(), "a 100 Trying only after 200 ms");
        let (inputs, _rx) = mpsc::channel(1);
        let call = core.routes.admit("c1", "f1", "ours", tx, inputs);
        let task = core.tasks.spawn(async { panic!("a bug in a call") });
        core.routes.attach_task(task.id(), call);
        let joined = core.tasks.join_next_with_id().await.unwrap();
        assert!(joined.as_ref().is_err_and(|e| e.is_panic()));
        core.release(joined);
        assert_eq!(core.routes.sizes(), (0, 0, 0, 0));
        assert_eq!(sent(&mut core), vec!["SIP/2.0 500 Server Internal Error"]);
    }

    /// A new INVITE that waited too long, or finds no call place, is
    /// refused before any state: a 503 with Retry-After, no 100 Trying, no
    /// transaction to time for 32 s per refusal. A retransmission of an
    /// INVITE already taken on is not refused: its transaction answers it.
    #[test]
    fn a_late_new_invite_is_refused_without_a_transaction() {
        let mut core = core();
        let now = std::time::Instant::now();
        let invite = request("INVITE", "z9hG4bKr1", "");
        assert!(core.refuse_before_transaction(&invite, None).is_none());
        let refusal = core
            .refuse_before_transaction(&invite, Some(EarlyRefusal::Late))
            .expect("refused");
        let text = String::from_utf8(refusal).unwrap();
        assert!(
            text.starts_with("SIP/2.0 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nRetry-After: 5\r\n"));
        assert!(core.layer.is_empty() && sent(&mut core).is_empty());

        core.layer.handle_input(invite.clone(), PEER, now);
        assert!(core.layer.poll_event().is_some(), "taken on");
        assert!(
            core.refuse_before_transaction(&invite, Some(EarlyRefusal::Late))
                .is_none(),
            "a retransmission"
        );
        assert!(
            core.refuse_before_transaction(
                &invite,
                Some(EarlyRefusal::NoPlace(("capacity", "at capacity")))
            )
            .is_none(),
            "a retransmission at capacity"
        );
        assert!(core
            .refuse_before_transaction(
                &request("OPTIONS", "z9hG4bKo", ""),
                Some(EarlyRefusal::Late)
            )
            .is_none());
        let other = request("INVITE", "z9hG4bKr2", "");
        let refusal = core
            .refuse_before_transaction(
                &other,
                Some(EarlyRefusal::NoPlace(("capacity", "at capacity"))),
            )
            .expect("refused at capacity");
        assert!(String::from_utf8(refusal)
            .unwrap()
            .starts_with("SIP/2.0 503 Service Unavailable\r\n"));
    }

    /// A call whose queue is full gets its in-dialog request answered 503
    /// by the endpoint: the transaction ends instead of absorbing the
    /// caller's retransmissions forever.
    #[tokio::test]
    async fn a_request_a_call_cannot_take_is_answered_503() {
        let mut core = core();
        let now = std::time::Instant::now();
        let (inputs, _rx) = mpsc::channel(1);
        let invite_tx = ServerTxId::for_tests(99);
        let call = core
            .routes
            .admit("c1", "f1", "ours", invite_tx, inputs.clone());
        inputs.try_send(CallInput::Shutdown).unwrap(); // the queue is now full
        core.layer
            .handle_input(request("INFO", "z9hG4bKi1", ";tag=ours"), PEER, now);
        let Some(TransactionEvent::Request { tx, request, .. }) = core.layer.poll_event() else {
            panic!("no INFO")
        };
        core.forward(call, LegId::CALLER, LegInput::Request { tx, request });
        assert_eq!(sent(&mut core), vec!["SIP/2.0 503 Service Unavailable"]);
        assert!(core.layer.poll_timeout().is_some(), "Timer J, then gone");
        core.layer.handle_timeout(now + Duration::from_secs(33));
        assert!(core.layer.is_empty());
    }
}
