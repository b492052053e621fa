//! Calls the gateway places itself (the Calls API's `POST Calls.json`).
//! The party we call is the call's "caller" leg, in the UAC role: we
//! resolve it, offer our codecs, follow it ringing, and when it answers it
//! gets what the request asked for — a flow's bot, a `<Connect><Stream>`
//! bot, or a `<Hangup/>` — exactly as an inbound caller would. Everything
//! after the answer (transfers, the Calls API's updates, media) is the
//! ordinary call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchboard_connectors::{BotConnector, CallInfo};
use switchboard_flows::FlowConfig;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::dial::{CallShared, Target};
use super::leg::{FailKind, Leg, LegConfig, LegEvent, OutgoingCall};
use super::registry::{CallRecord, CallResource, CallStatus};
use super::session::{contact_uri, Call, CallParts, JobOutput};
use super::status_callback::{StatusCallbackSpec, StatusCallbacks};
use super::transfer::caller_id_at;
use super::{CallInput, CallRef, EndpointCommand, LegId};
use crate::routing::{Destination, RouteMatch};

/// What a placed call does once answered.
#[derive(Clone, Debug)]
pub enum Program {
    /// A configured flow, by name (our `Flow` parameter).
    Flow(String),
    /// A TwiML document (`Twiml`), run by the interpreter once answered.
    Twiml(String),
    /// `Url`: ask it for TwiML once answered (`FallbackUrl` if it fails).
    Url(switchboard_flows::WebhookConfig),
}

/// How the party is reached.
#[derive(Debug)]
pub enum Reach {
    /// `To` is a SIP URI, found by DNS (SRV, A/AAAA).
    Uri(Target),
    /// `To` is one of our registered users: their most recently registered
    /// phone (one leg: placed calls do not fork).
    User(String),
    /// `To` is an extension of the PBX our registration `id` is registered
    /// to: sent there as that extension, with its credentials.
    Registration { id: String, extension: String },
    /// `To` is a phone number: out through the first trunk with an
    /// outbound side.
    Number(String),
}

/// A call to place, checked by the API.
#[derive(Debug)]
pub struct OutboundRequest {
    /// `To` as given.
    pub to: String,
    pub reach: Reach,
    /// `From` as given: a number, a user or a SIP URI.
    pub from: String,
    pub credentials: Option<(String, String)>,
    pub ring_timeout: Duration,
    pub time_limit: Option<Duration>,
    pub program: Program,
    pub callbacks: Option<StatusCallbackSpec>,
    /// `Record=true`: a stereo WAV of the call in `[api] recording_dir`.
    pub record: bool,
}

/// Why the endpoint would not place a call.
#[derive(Debug)]
pub enum PlaceError {
    /// Full, or shutting down.
    Unavailable(String),
    /// The request names something that does not exist (a flow).
    Invalid(String),
}

/// The API asks the endpoint to place a call; the reply is its resource.
#[derive(Debug)]
pub struct PlaceCall {
    pub request: OutboundRequest,
    pub reply: PlaceReply,
}

/// Where the endpoint answers a [`PlaceCall`].
pub type PlaceReply = oneshot::Sender<Result<CallRecord, PlaceError>>;

/// Everything a placed call's task starts with.
pub struct OutboundSetup {
    pub call: CallRef,
    pub call_id: String,
    pub request: OutboundRequest,
    pub flow: Arc<FlowConfig>,
    pub connector: Arc<dyn BotConnector>,
    pub shared: Arc<CallShared>,
    pub endpoint: mpsc::Sender<EndpointCommand>,
    pub inputs: mpsc::Receiver<CallInput>,
    pub resource: CallResource,
    /// The endpoint shard the call belongs to (its Call-ID routes there).
    pub shard: crate::endpoint::Shard,
}

/// A placed call's own state.
pub(super) struct Outbound {
    time_limit: Option<Duration>,
    callbacks: Option<StatusCallbacks>,
}

/// The flow a `<Connect><Stream>` runs as.
pub fn stream_flow(url: &str, parameters: BTreeMap<String, String>) -> FlowConfig {
    FlowConfig {
        name: "twiml-stream".into(),
        bot: Some(switchboard_flows::BotConfig::TwilioStream(
            switchboard_flows::TwilioStreamConfig {
                url: url.to_string(),
                connect_timeout_ms: 3_000,
            },
        )),
        webhook: None,
        twiml: None,
        on_failure: switchboard_flows::OnFailure::Hangup(480),
        parameters,
        reconnect_once: false,
        recording: None,
        audio: Default::default(),
        transfer: Default::default(),
    }
}

/// The flow a call that runs the TwiML `document` runs as.
pub fn twiml_flow(document: String) -> FlowConfig {
    FlowConfig {
        name: "twiml".into(),
        bot: None,
        twiml: Some(document),
        ..stream_flow("ws://unused.invalid/", BTreeMap::new())
    }
}

/// The flow a call whose TwiML comes from `webhook` runs as.
pub fn webhook_flow(webhook: switchboard_flows::WebhookConfig) -> FlowConfig {
    FlowConfig {
        name: "twiml-url".into(),
        bot: None,
        webhook: Some(webhook),
        ..stream_flow("ws://unused.invalid/", BTreeMap::new())
    }
}

/// Places the call and runs it to its end, inside its span.
pub async fn run_outbound_call(setup: OutboundSetup) {
    let span = tracing::info_span!(
        "call",
        call_id = %setup.call_id,
        from = %setup.request.from,
        to = %setup.request.to,
        flow = %setup.flow.name,
    );
    async move {
        let registry = setup.shared.call_resources.clone();
        let sid = setup.resource.sid().to_string();
        let callbacks = setup
            .request
            .callbacks
            .clone()
            .map(|spec| StatusCallbacks::start(spec, setup.shared.http.clone()));
        let reason = match place(setup, callbacks.clone()).await {
            Ok(call) => call.run().await,
            Err(reason) => reason,
        };
        tracing::info!(reason = %reason, "call ended");
        // The call and its resource are gone: the record is final now.
        if let (Some(callbacks), Some(record)) = (callbacks, registry.get(&sid)) {
            callbacks.report("completed", &record, None);
        }
    }
    .instrument(span)
    .await
}

/// Resolves the party, offers our media and sends the INVITE. A hang-up
/// from the API or a shutdown while resolving ends it before any INVITE.
async fn place(
    mut setup: OutboundSetup,
    callbacks: Option<StatusCallbacks>,
) -> Result<Box<Call>, String> {
    let shared = setup.shared.clone();
    let reached = tokio::select! {
        reached = reach(&shared, &setup.request.reach, &setup.request.from) => reached,
        _ = stop_requested(&mut setup.inputs) => {
            setup.resource.end_status = CallStatus::Canceled;
            return Err("canceled before dialing".into());
        }
    };
    let fail = |resource: &CallResource, reason: String| {
        tracing::warn!(%reason, "cannot place the call");
        resource.set_status(CallStatus::Failed);
        Err(reason)
    };
    let Reached {
        target,
        peer,
        from: through_from,
        credentials: through_credentials,
    } = match reached {
        Ok(reached) => reached,
        Err(reason) => return fail(&setup.resource, format!("unreachable: {reason}")),
    };
    let Some(local) = setup.shared.local_for(peer.transport, peer.addr) else {
        let reason = format!("no {} listener to reach {}", peer.transport, peer.addr);
        return fail(&setup.resource, reason);
    };
    let sockets = match setup.shared.rtp_ports.bind(local.ip()) {
        Ok(sockets) => sockets,
        Err(error) => return fail(&setup.resource, format!("no RTP port: {error}")),
    };
    let request = setup.request;
    let from = through_from.unwrap_or_else(|| caller_id_at(&request.from, &setup.shared, local));
    let credentials = request.credentials.clone().or(through_credentials);
    let info = CallInfo {
        call_id: setup.call_id.clone(),
        from: request.from.clone(),
        to: request.to.clone(),
        flow: setup.flow.name.clone(),
        parameters: setup.flow.parameters.clone(),
        x_headers: target
            .headers
            .iter()
            .filter(|(name, _)| crate::sip::headers::is_x_header(name))
            .cloned()
            .collect(),
        playout: Default::default(),
    };
    let config = LegConfig {
        local,
        contact: contact_uri(&setup.shared, local, peer.transport),
        peer,
    };
    let mut media =
        super::caller::CallerMedia::new(setup.shared.media.public_ip.unwrap_or(local.ip()));
    let offer = media.offer_on(sockets, &setup.shared.media.codecs, target.secure);
    let leg = Leg::outgoing(
        OutgoingCall {
            call_id: setup.call_id.clone(),
            request_uri: target.request_uri.clone(),
            from,
            to: target.to_header(),
            headers: target.headers.clone(),
            sdp: offer,
            credentials,
            ring_timeout: request.ring_timeout,
            // The operator placed this call through the API: a redirect
            // is theirs to follow, as Twilio does.
            redirect_check: None,
        },
        config,
        std::time::Instant::now(),
    );
    let local_tag = leg.local_tag().to_string();
    let mut call = Call::assemble(CallParts {
        call: setup.call,
        call_id: setup.call_id.clone(),
        flow: setup.flow,
        connector: setup.connector,
        shared: setup.shared,
        route: RouteMatch {
            source: "api".into(),
            destination: Destination::Flow(info.flow.clone()),
            number: request.to.clone(),
        },
        local_sip: local,
        from_user: request.from.clone(),
        endpoint: setup.endpoint,
        shard: setup.shard,
        inputs: setup.inputs,
        resource: setup.resource,
        caller: leg,
        info,
    });
    call.caller_media = media;
    call.outbox.push(EndpointCommand::AddDialog {
        call: call.call,
        leg: LegId::CALLER,
        call_id: setup.call_id,
        local_tag,
    });
    call.outbound = Some(Outbound {
        time_limit: request.time_limit,
        callbacks,
    });
    tracing::info!(peer = %peer.addr, transport = %peer.transport, "placing a call: INVITE sent");
    call.report("initiated", None);
    call.drive().await;
    Ok(call)
}

/// Where a placed call goes, worked out.
struct Reached {
    target: Target,
    peer: crate::sip::transaction::Peer,
    /// From and credentials of a registration we dial through.
    from: Option<crate::sip::uri::NameAddr>,
    credentials: Option<(String, String)>,
}

async fn reach(shared: &CallShared, reach: &Reach, from: &str) -> Result<Reached, String> {
    match reach {
        Reach::Number(number) => {
            let trunk = shared
                .dial
                .borrow()
                .trunks
                .first()
                .cloned()
                .ok_or_else(|| {
                    "no [[trunks]] has an outbound side for phone numbers".to_string()
                })?;
            let target = trunk.target(number);
            let peer = shared
                .resolver
                .resolve(&target.request_uri, target.transport)
                .await?;
            Ok(Reached {
                target,
                peer,
                from: Some(trunk.from(from)),
                credentials: trunk.credentials.clone(),
            })
        }
        Reach::Uri(target) => {
            let peer = shared
                .resolver
                .resolve(&target.request_uri, target.transport)
                .await?;
            Ok(Reached {
                target: target.clone(),
                peer,
                from: None,
                credentials: None,
            })
        }
        Reach::User(user) => {
            let registrar = shared
                .registrar
                .as_ref()
                .ok_or_else(|| "this gateway has no registered users".to_string())?;
            let contacts = super::transfer::user_contacts(registrar, user)
                .await
                .map_err(|(_, reason)| reason)?;
            let (uri, peer) = contacts
                .into_iter()
                .next()
                .ok_or_else(|| format!("{user} has no registered phone"))?;
            Ok(Reached {
                target: Target {
                    request_uri: uri,
                    headers: Vec::new(),
                    transport: Some(peer.transport),
                    secure: false,
                },
                peer,
                from: None,
                credentials: None,
            })
        }
        Reach::Registration { id, extension } => {
            let through = super::transfer::through_registration(shared, id, extension)?;
            Ok(Reached {
                target: through.target,
                peer: through.peer,
                from: Some(through.from),
                credentials: Some(through.credentials),
            })
        }
    }
}

/// Resolves when the API hangs up the call or the gateway stops.
async fn stop_requested(inputs: &mut mpsc::Receiver<CallInput>) {
    loop {
        match inputs.recv().await {
            None | Some(CallInput::Shutdown) | Some(CallInput::Control(_)) => return,
            Some(CallInput::Leg { .. }) => {}
        }
    }
}

impl Call {
    /// Sends `event` to the call's status callback, if it asked for it.
    fn report(&self, event: &str, sip_status: Option<u16>) {
        let Some(outbound) = &self.outbound else {
            return;
        };
        let (Some(callbacks), Some(record)) = (
            &outbound.callbacks,
            self.shared.call_resources.get(self.resource.sid()),
        ) else {
            return;
        };
        callbacks.report(event, &record, sip_status);
    }

    /// The party we called rings, answers or fails.
    pub(super) fn on_placed_call_event(&mut self, event: LegEvent) {
        if self.outbound.is_none() || self.is_ending() {
            return;
        }
        match event {
            LegEvent::Progress { status, .. } if (180..=183).contains(&status) => {
                let first = self
                    .shared
                    .call_resources
                    .get(self.resource.sid())
                    .is_some_and(|r| r.status == CallStatus::Queued);
                if first {
                    tracing::info!(status, "placed call ringing");
                    self.resource.set_status(CallStatus::Ringing);
                    self.report("ringing", None);
                }
            }
            LegEvent::Progress { .. } => {}
            LegEvent::Answered { sdp } => self.on_placed_call_answered(sdp),
            LegEvent::Failed(failure) => {
                let status = match failure.kind {
                    FailKind::Busy => CallStatus::Busy,
                    FailKind::NoAnswer => CallStatus::NoAnswer,
                    FailKind::Canceled => CallStatus::Canceled,
                    FailKind::Failed => CallStatus::Failed,
                };
                tracing::info!(status = failure.status, reason = %failure.reason, "placed call not answered");
                self.resource.set_status(status);
                self.end(format!(
                    "not answered: {} {}",
                    failure.status, failure.reason
                ));
            }
            _ => {}
        }
    }

    fn on_placed_call_answered(&mut self, sdp: Option<String>) {
        self.caller_media.answered_at = Some(std::time::Instant::now());
        self.resource.set_status(CallStatus::InProgress);
        crate::metrics::call_answered(&self.flow.name);
        self.report("answered", None);
        if let Err(reason) = self.take_answer(sdp) {
            tracing::warn!(%reason, "placed call answered without usable media: hanging up");
            return self.end(reason);
        }
        let Some(time_limit) = self.outbound.as_ref().map(|o| o.time_limit) else {
            return;
        };
        if let Some(limit) = time_limit {
            self.spawn_job(Box::pin(async move {
                tokio::time::sleep(limit).await;
                JobOutput::TimeLimit
            }));
        }
        match (self.flow.webhook.clone(), self.flow.twiml.clone()) {
            (Some(webhook), _) => self.fetch_twiml(
                webhook.url.clone(),
                webhook.method_get(),
                webhook.fallback_url,
            ),
            (None, Some(document)) => self.run_template(&document),
            (None, None) => {
                tracing::info!("placed call answered: opening its bot");
                self.open_bot(super::bot::OpenPurpose::Initial);
            }
        }
    }
}
