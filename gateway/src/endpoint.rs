//! The SIP endpoint task: owns the transaction layer, admits new calls
//! (capacity, routing), answers out-of-dialog requests and routes everything
//! in a dialog to its call task by Call-ID. It never touches media.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard_connectors::BotConnector;
use switchboard_flows::FlowConfig;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::call::{run_call, CallInput, CallSetup, EndpointCommand, RtpPorts, CALL_INPUT_CAPACITY};
use crate::routing::Router;
use crate::sip::message::{Method, Request};
use crate::sip::response::response_for;
use crate::sip::transaction::{
    ClientTxId, Peer, ServerTxId, Timers, TransactionEvent, TransactionLayer,
};
use crate::transport::{Inbound, Transports};

/// Commands queued from all calls towards the endpoint.
pub const COMMAND_CAPACITY: usize = 4096;
const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE";

/// A flow ready to take calls.
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

pub struct Endpoint {
    pub transports: Transports,
    pub router: Router,
    pub flows: HashMap<String, FlowRuntime>,
    pub max_calls: usize,
    pub media: MediaSettings,
    pub rtp_ports: Arc<RtpPorts>,
    pub inbound: mpsc::Receiver<Inbound>,
    pub shutdown: watch::Receiver<EndpointState>,
    /// Live call count, readable by whoever drains the gateway.
    pub active_calls: watch::Sender<usize>,
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

struct CallEntry {
    inputs: mpsc::Sender<CallInput>,
}

impl Endpoint {
    pub async fn run(mut self) {
        let mut layer = TransactionLayer::new(Timers::default());
        let (commands_tx, mut commands) = mpsc::channel::<EndpointCommand>(COMMAND_CAPACITY);
        let mut calls: HashMap<String, CallEntry> = HashMap::new();
        let mut client_txs: HashMap<ClientTxId, String> = HashMap::new();
        let mut state = EndpointState::Running;
        loop {
            let deadline = layer
                .poll_timeout()
                .map(Instant::from_std)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                inbound = self.inbound.recv() => {
                    let Some(Inbound { message, peer }) = inbound else { break };
                    layer.handle_input(message, peer, std::time::Instant::now());
                }
                command = commands.recv() => {
                    // The endpoint holds a sender itself, so this never closes.
                    let Some(command) = command else { break };
                    let now = std::time::Instant::now();
                    match command {
                        EndpointCommand::Respond { tx, response } => layer.send_response(tx, response, now),
                        EndpointCommand::SendRequest { call_id, request, peer } => {
                            let tx = layer.send_request(request, peer, now);
                            client_txs.insert(tx, call_id);
                        }
                        EndpointCommand::SendStateless { message, peer } => layer.send_stateless(message, peer),
                        EndpointCommand::CallEnded { call_id } => {
                            calls.remove(&call_id);
                            client_txs.retain(|_, owner| *owner != call_id);
                            let _ = self.active_calls.send(calls.len());
                            crate::metrics::active_calls(calls.len());
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    layer.handle_timeout(std::time::Instant::now());
                }
                changed = self.shutdown.changed() => {
                    let next = if changed.is_err() { EndpointState::Stopping } else { *self.shutdown.borrow() };
                    if next == EndpointState::Stopping && state != EndpointState::Stopping {
                        for call in calls.values() {
                            let _ = call.inputs.try_send(CallInput::Shutdown);
                        }
                    }
                    state = next;
                }
            }
            while let Some(transmit) = layer.poll_transmit() {
                self.transports.send(transmit.peer, transmit.bytes);
            }
            while let Some(event) = layer.poll_event() {
                self.dispatch(
                    event,
                    &mut layer,
                    &mut calls,
                    &mut client_txs,
                    &commands_tx,
                    state,
                );
            }
            while let Some(transmit) = layer.poll_transmit() {
                self.transports.send(transmit.peer, transmit.bytes);
            }
            if state == EndpointState::Stopping && calls.is_empty() {
                break;
            }
        }
    }

    fn dispatch(
        &self,
        event: TransactionEvent,
        layer: &mut TransactionLayer,
        calls: &mut HashMap<String, CallEntry>,
        client_txs: &mut HashMap<ClientTxId, String>,
        commands: &mpsc::Sender<EndpointCommand>,
        state: EndpointState,
    ) {
        let now = std::time::Instant::now();
        match event {
            TransactionEvent::Request { tx, request, peer } => {
                let call_id = request.call_id().unwrap_or_default().to_string();
                let in_dialog = request
                    .to()
                    .ok()
                    .and_then(|to| to.tag().map(str::to_string))
                    .is_some();
                if let Some(call) = calls.get(&call_id) {
                    if in_dialog || request.method != Method::Invite {
                        forward(call, CallInput::Request { tx, request }, &call_id);
                    } else {
                        // Same Call-ID, no tag: a retransmission that escaped
                        // the transaction layer or a forked loop.
                        reply(layer, tx, &request, 482, None, now);
                    }
                    return;
                }
                match request.method {
                    Method::Invite if !in_dialog => {
                        self.admit(tx, request, peer, layer, calls, commands, state, now)
                    }
                    Method::Options => {
                        let mut response = response_for(&request, 200, "OK", None);
                        response.headers.push("Allow", ALLOW);
                        response.headers.push("Accept", "application/sdp");
                        layer.send_response(tx, response, now);
                    }
                    Method::Ack => {}
                    _ if in_dialog => {
                        tracing::info!(method = %request.method, %call_id, "request for an unknown dialog: 481");
                        reply(layer, tx, &request, 481, None, now);
                    }
                    Method::Bye | Method::Info | Method::Update | Method::Invite => {
                        reply(layer, tx, &request, 481, None, now)
                    }
                    _ => {
                        tracing::info!(method = %request.method, peer = %peer.addr, "method not supported: 405");
                        let mut response = response_for(&request, 405, "Method Not Allowed", None);
                        response.headers.push("Allow", ALLOW);
                        layer.send_response(tx, response, now);
                    }
                }
            }
            TransactionEvent::Ack { request, .. } => {
                let call_id = request.call_id().unwrap_or_default().to_string();
                if let Some(call) = calls.get(&call_id) {
                    forward(call, CallInput::Ack(request), &call_id);
                }
            }
            TransactionEvent::Cancelled { cancel, .. } => {
                let call_id = cancel.call_id().unwrap_or_default().to_string();
                if let Some(call) = calls.get(&call_id) {
                    forward(call, CallInput::Cancelled, &call_id);
                }
            }
            TransactionEvent::Response { tx, response } => {
                let done = response.status >= 200;
                let owner = if done {
                    client_txs.remove(&tx)
                } else {
                    client_txs.get(&tx).cloned()
                };
                if let Some(call_id) = owner {
                    if let Some(call) = calls.get(&call_id) {
                        forward(call, CallInput::Response { tx, response }, &call_id);
                    }
                }
            }
            TransactionEvent::Timeout { tx } | TransactionEvent::Unreachable { tx } => {
                if let Some(call_id) = client_txs.remove(&tx) {
                    if let Some(call) = calls.get(&call_id) {
                        forward(call, CallInput::RequestTimeout { tx }, &call_id);
                    }
                }
            }
            TransactionEvent::AckTimeout { call_id, .. } => {
                if let Some(call) = calls.get(&call_id) {
                    forward(call, CallInput::AckTimeout, &call_id);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        tx: ServerTxId,
        request: Request,
        peer: Peer,
        layer: &mut TransactionLayer,
        calls: &mut HashMap<String, CallEntry>,
        commands: &mpsc::Sender<EndpointCommand>,
        state: EndpointState,
        now: std::time::Instant,
    ) {
        let call_id = request.call_id().unwrap_or_default().to_string();
        let dialed = request.uri.user_decoded().unwrap_or_default();
        if state != EndpointState::Running {
            tracing::info!(%call_id, "shutting down: 503 for a new call");
            reply(layer, tx, &request, 503, Some("5"), now);
            crate::metrics::call_rejected(503);
            return;
        }
        if calls.len() >= self.max_calls {
            tracing::warn!(%call_id, max_calls = self.max_calls, "at capacity: 503");
            reply(layer, tx, &request, 503, Some("5"), now);
            crate::metrics::call_rejected(503);
            return;
        }
        let route = match self.router.route(peer.addr.ip(), &dialed) {
            Ok(route) => route,
            Err(error) => {
                tracing::warn!(%call_id, peer = %peer.addr, %dialed, status = error.status(), "call rejected: {error}");
                reply(layer, tx, &request, error.status(), None, now);
                crate::metrics::call_rejected(error.status());
                return;
            }
        };
        let Some(flow) = self.flows.get(&route.flow) else {
            // Config validation makes this unreachable; answer sanely anyway.
            reply(layer, tx, &request, 500, None, now);
            crate::metrics::call_rejected(500);
            return;
        };
        let Some(local_sip) = self.transports.local_for(peer) else {
            reply(layer, tx, &request, 500, None, now);
            crate::metrics::call_rejected(500);
            return;
        };
        let (inputs_tx, inputs) = mpsc::channel(CALL_INPUT_CAPACITY);
        calls.insert(call_id.clone(), CallEntry { inputs: inputs_tx });
        let _ = self.active_calls.send(calls.len());
        crate::metrics::active_calls(calls.len());
        let setup = CallSetup {
            call_id,
            tx,
            invite: request,
            peer,
            route,
            flow: flow.config.clone(),
            connector: flow.connector.clone(),
            local_sip,
            media: self.media.clone(),
            rtp_ports: self.rtp_ports.clone(),
            endpoint: commands.clone(),
            inputs,
        };
        tokio::spawn(run_call(setup));
    }
}

fn forward(call: &CallEntry, input: CallInput, call_id: &str) {
    if call.inputs.try_send(input).is_err() {
        tracing::warn!(%call_id, "call task not keeping up: dropped a SIP message");
    }
}

fn reply(
    layer: &mut TransactionLayer,
    tx: ServerTxId,
    request: &Request,
    status: u16,
    retry_after: Option<&str>,
    now: std::time::Instant,
) {
    let tag = crate::sip::response::new_tag();
    let mut response = response_for(
        request,
        status,
        crate::sip::response::default_reason(status),
        Some(&tag),
    );
    if let Some(seconds) = retry_after {
        response.headers.push("Retry-After", seconds);
    }
    layer.send_response(tx, response, now);
}
