//! The call task: the async shell around a call's legs. It owns the legs,
//! the RTP sockets and media pipelines, the bot session and the transfer in
//! progress, waits on all of them at once, and hands each wake-up to the
//! part of the call it concerns (caller, bot, transfer, bridge). Legs are
//! sans-IO: after every wake-up their outputs go to the endpoint and their
//! events back into the call, until nothing moves.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use switchboard_connectors::{BotConnector, BotEvent, CallInfo};
use switchboard_flows::FlowConfig;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tracing::Instrument;

use super::bot::BotState;
use super::bot_link::BotLink;
use super::caller::CallerMedia;
use super::dial::CallShared;
use super::leg::{Leg, LegConfig, LegEvent, LegOutput};
use super::registry::{CallResource, CallStatus};
use super::secure_io::receive;
use super::transfer::Transfer;
use super::{CallInput, CallRef, EndpointCommand, LegId};
use crate::endpoint::Shard;
use crate::routing::RouteMatch;
use crate::sip::message::{Request, SipMessage};
use crate::sip::transaction::{Peer, ServerTxId, Transport};
use crate::sip::uri::SipUri;

/// Longest a call lingers once it has decided to end, for its legs to
/// finish (a BYE's answer, a CANCEL's 487).
const END_GRACE: Duration = Duration::from_secs(40);
/// How often a relayed bridge looks for media that stopped.
const RELAY_CHECK: Duration = Duration::from_secs(1);

pub struct CallSetup {
    pub call: CallRef,
    pub call_id: String,
    pub tx: ServerTxId,
    pub invite: Request,
    pub peer: Peer,
    /// Our To tag: the endpoint routes the dialog by it.
    pub local_tag: String,
    pub route: RouteMatch,
    pub flow: Arc<FlowConfig>,
    pub connector: Arc<dyn BotConnector>,
    /// Our SIP address on the transport the INVITE came in on.
    pub local_sip: SocketAddr,
    pub shared: Arc<CallShared>,
    pub endpoint: mpsc::Sender<EndpointCommand>,
    /// The endpoint shard the call belongs to: Call-IDs it chooses must
    /// route back there.
    pub shard: Shard,
    pub inputs: mpsc::Receiver<CallInput>,
    /// The call as a Calls API resource: marked ended when the call drops it.
    pub resource: CallResource,
}

/// Runs the call to its end, inside a span carrying its identity.
pub async fn run_call(setup: CallSetup) {
    let from = super::registry::caller_id(&setup.invite);
    let span = tracing::info_span!(
        "call",
        call_id = %setup.call_id,
        from = %from,
        to = %setup.route.number,
        flow = %setup.flow.name,
    );
    async move {
        let reason = match Call::start(setup, from).await {
            Ok(call) => call.run().await,
            Err(reason) => reason,
        };
        tracing::info!(reason = %reason, "call ended");
    }
    .instrument(span)
    .await;
}

/// Work a call waits for besides sockets and SIP: a bot connecting, a name
/// resolving, a webhook answering.
pub(super) type Job = Pin<Box<dyn Future<Output = JobOutput> + Send>>;

pub(super) enum JobOutput {
    /// A bot session opened (or failed to) for `purpose`.
    BotOpened {
        purpose: super::bot::OpenPurpose,
        result: Result<super::bot_link::BotLink, String>,
    },
    /// A dial target resolved, for transfer `attempt`.
    Resolved {
        attempt: u64,
        result: super::transfer::DialTargets,
        /// Where to try next, in order, if the first target fails with a
        /// transport error, a timeout or a 503 (RFC 3263 §4.3).
        alternates: Vec<crate::sip::transaction::Peer>,
    },
    /// A `<Dial action>` webhook answered with TwiML (or failed).
    DialAction {
        attempt: u64,
        result: Result<String, String>,
    },
    /// The recording file is open (or could not be).
    Recorder(Result<super::recording::Recorder, String>),
    /// A placed call's `TimeLimit` is up.
    TimeLimit,
    /// A `<Gather>`'s wait for a key (timer `epoch`) is over.
    GatherTimeout { epoch: u64 },
    /// A `<Pause>` (TwiML step `step`) is over.
    VerbDone { step: u64 },
    /// A `<Play>` clip arrived (or could not be had).
    Clip {
        step: u64,
        url: String,
        loops: u32,
        result: Result<Arc<super::play::Clip>, String>,
    },
    /// The webhook answered fetch `attempt` with TwiML (or failed).
    Twiml {
        attempt: u64,
        result: Result<String, String>,
    },
}

/// Receive buffers, one per socket a wake-up may read from at once.
/// RTP buffers are boxed slices so a packet can be taken out of the call
/// (`mem::take` leaves an empty slice, no allocation) and handled in place
/// while the call is borrowed mutably, rather than copied per packet.
struct Buffers {
    caller_rtp: Box<[u8]>,
    caller_rtcp: [u8; 1500],
    agent_rtp: Box<[u8]>,
    agent_rtcp: [u8; 1500],
}

const RTP_BUFFER: usize = 2048;

/// What woke the call. Carried by value once per wake-up; boxing the big
/// variants would cost an allocation per SIP message instead.
#[allow(clippy::large_enum_variant)]
enum Wake {
    Input(Option<CallInput>),
    Timer,
    Job(JobOutput),
    CallerRtp(usize, SocketAddr),
    CallerRtcp(usize, SocketAddr),
    AgentRtp(usize, SocketAddr),
    AgentRtcp(usize, SocketAddr),
    Bot(Option<BotEvent>),
}

pub(super) struct Call {
    pub(super) call: CallRef,
    pub(super) call_id: String,
    /// Twilio-style CallSid of the caller's call.
    pub(super) sid: String,
    pub(super) flow: Arc<FlowConfig>,
    pub(super) connector: Arc<dyn BotConnector>,
    pub(super) shared: Arc<CallShared>,
    pub(super) route: RouteMatch,
    pub(super) local_sip: SocketAddr,
    /// Caller ID: the user part of the caller's From.
    pub(super) from_user: String,
    endpoint: mpsc::Sender<EndpointCommand>,
    pub(super) shard: Shard,
    inputs: mpsc::Receiver<CallInput>,
    pub(super) resource: CallResource,
    pub(super) caller: Leg,
    /// Legs we placed (transfers), kept until each is finished.
    pub(super) legs: Vec<(LegId, Leg)>,
    next_leg: u32,
    pub(super) caller_media: CallerMedia,
    pub(super) info: CallInfo,
    pub(super) bot: Option<BotState>,
    pub(super) transfer: Option<Transfer>,
    pub(super) referring: Option<super::refer::Referring>,
    /// A transfer the flow makes by REFER, asked for after our 200 OK but
    /// before the caller's ACK: a REFER needs a confirmed dialog, so it
    /// waits for the ACK instead of falling back to a bridge.
    pub(super) dial_after_ack: Option<(switchboard_flows::DialTarget, super::transfer::Origin)>,
    /// What an API-placed call does (its TwiML or flow, its callbacks).
    pub(super) outbound: Option<super::outbound::Outbound>,
    /// Where the call's TwiML comes from (webhook flows, `Url`).
    pub(super) twiml: Option<super::twiml_program::TwimlSource>,
    /// The `<Play>` clip being played, if any.
    pub(super) playing: Option<super::play::Playing>,
    /// The `<Gather>` collecting keys, if any.
    pub(super) gathering: Option<super::gather::Gathering>,
    jobs: FuturesUnordered<Job>,
    /// Commands to send before the legs' next outputs (dialog routes).
    pub(super) outbox: Vec<EndpointCommand>,
    /// When the caller's next 20 ms send (and a transcoded bridge's
    /// party's) is due, while media runs.
    pub(super) tick_due: std::time::Instant,
    /// The call's one timer, moved to its next deadline only when that
    /// changes: the 20 ms send, the caller's pull, legs, bot, transfer.
    timer: Pin<Box<Sleep>>,
    /// What the timer waits for when nothing is due.
    far_future: Instant,
    /// The caller's send is held for late bot audio since this tick.
    pub(super) send_held: Option<std::time::Instant>,
    bufs: Box<Buffers>,
    /// Why the call is ending, once it is, and since when.
    pub(super) ending: Option<(String, Instant)>,
    /// When a relayed bridge last checked that media still flows.
    relay_checked: Instant,
}

/// What every call is made of, however it started.
pub(super) struct CallParts {
    pub call: CallRef,
    pub call_id: String,
    pub flow: Arc<FlowConfig>,
    pub connector: Arc<dyn BotConnector>,
    pub shared: Arc<CallShared>,
    pub route: RouteMatch,
    pub local_sip: SocketAddr,
    pub from_user: String,
    pub endpoint: mpsc::Sender<EndpointCommand>,
    pub shard: Shard,
    pub inputs: mpsc::Receiver<CallInput>,
    pub resource: CallResource,
    pub caller: Leg,
    pub info: CallInfo,
}

impl Call {
    /// Boxed: a call is ~20 KB, and the futures that own it would otherwise
    /// hold it inline several times over (63 KB per call task, measured).
    pub(super) fn assemble(parts: CallParts) -> Box<Call> {
        let far_future = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let media_ip = parts.shared.media.public_ip.unwrap_or(parts.local_sip.ip());
        Box::new(Call {
            call: parts.call,
            sid: parts.resource.sid().to_string(),
            call_id: parts.call_id,
            flow: parts.flow,
            connector: parts.connector,
            shared: parts.shared,
            route: parts.route,
            local_sip: parts.local_sip,
            from_user: parts.from_user,
            endpoint: parts.endpoint,
            shard: parts.shard,
            inputs: parts.inputs,
            resource: parts.resource,
            caller: parts.caller,
            legs: Vec::new(),
            next_leg: 1,
            caller_media: CallerMedia::new(media_ip),
            info: parts.info,
            bot: None,
            transfer: None,
            referring: None,
            dial_after_ack: None,
            outbound: None,
            twiml: None,
            playing: None,
            gathering: None,
            jobs: FuturesUnordered::new(),
            outbox: Vec::new(),
            tick_due: std::time::Instant::now(),
            timer: Box::pin(tokio::time::sleep_until(far_future)),
            far_future,
            send_held: None,
            bufs: Box::new(Buffers {
                caller_rtp: vec![0; RTP_BUFFER].into_boxed_slice(),
                caller_rtcp: [0; 1500],
                agent_rtp: vec![0; RTP_BUFFER].into_boxed_slice(),
                agent_rtcp: [0; 1500],
            }),
            ending: None,
            relay_checked: Instant::now(),
        })
    }

    /// Takes the caller's INVITE: forms its leg, checks its offer, binds
    /// RTP and starts opening the bot. Errors end the call at once.
    async fn start(setup: CallSetup, from_user: String) -> Result<Box<Call>, String> {
        let contact = contact_uri(&setup.shared, setup.local_sip, setup.peer.transport);
        let config = LegConfig {
            local: setup.local_sip,
            contact,
            peer: setup.peer,
        };
        let caller = match Leg::incoming(setup.tx, setup.invite, setup.local_tag, config) {
            Ok(leg) => leg,
            Err(refusal) => {
                tracing::warn!("cannot form a dialog from the INVITE: 400");
                crate::metrics::call_rejected(400);
                let _ = setup
                    .endpoint
                    .send(EndpointCommand::Respond {
                        tx: setup.tx,
                        response: refusal,
                    })
                    .await;
                return Err("rejected 400 (no dialog)".into());
            }
        };
        tracing::info!(peer = %setup.peer.addr, transport = %setup.peer.transport, source = %setup.route.source, "incoming call");
        let invite = caller.invite().expect("an incoming leg has its INVITE");
        let info = CallInfo {
            call_id: setup.call_id.clone(),
            from: from_user.clone(),
            to: setup.route.number.clone(),
            flow: setup.flow.name.clone(),
            parameters: setup.flow.parameters.clone(),
            x_headers: invite
                .headers
                .iter()
                .filter(|(name, _)| crate::sip::headers::is_x_header(name))
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            playout: Default::default(),
        };
        let mut call = Call::assemble(CallParts {
            call: setup.call,
            call_id: setup.call_id,
            flow: setup.flow,
            connector: setup.connector,
            shared: setup.shared,
            route: setup.route,
            local_sip: setup.local_sip,
            from_user,
            endpoint: setup.endpoint,
            shard: setup.shard,
            inputs: setup.inputs,
            resource: setup.resource,
            caller,
            info,
        });
        call.take_offer();
        call.drive().await;
        Ok(call)
    }

    pub(super) async fn run(mut self: Box<Self>) -> String {
        loop {
            if let Some((_, since)) = &self.ending {
                let legs_done =
                    self.caller.is_finished() && self.legs.iter().all(|(_, leg)| leg.is_finished());
                if legs_done || since.elapsed() >= END_GRACE {
                    break;
                }
            }
            let wake = self.next_wake().await;
            let now = std::time::Instant::now();
            match wake {
                Wake::Input(Some(CallInput::Leg { leg, input })) => {
                    if let Some(target) = self.leg_mut(leg) {
                        target.handle_input(input, now);
                    }
                }
                Wake::Input(Some(CallInput::Control(control))) => self.on_control(control),
                Wake::Input(Some(CallInput::Shutdown)) | Wake::Input(None) => {
                    self.end("gateway shutting down");
                }
                Wake::Timer => self.on_timer(now),
                Wake::Job(output) => self.on_job(output),
                Wake::CallerRtp(len, from) => {
                    let mut packet = std::mem::take(&mut self.bufs.caller_rtp);
                    let srtp = self.caller_media.srtp.as_mut();
                    if let Some(len) = receive(srtp, &mut packet[..len]) {
                        self.on_caller_rtp(&mut packet[..len], from, now);
                    }
                    self.bufs.caller_rtp = packet;
                }
                Wake::CallerRtcp(len, from) => {
                    let datagram = &mut self.bufs.caller_rtcp[..len];
                    if let Some(len) = receive(self.caller_media.srtp.as_mut(), datagram) {
                        let datagram = &self.bufs.caller_rtcp[..len];
                        self.caller_media.on_rtcp(datagram, from, now);
                    }
                }
                Wake::AgentRtp(len, from) => {
                    let mut packet = std::mem::take(&mut self.bufs.agent_rtp);
                    let srtp = self.transfer.as_mut().and_then(|t| t.srtp_mut());
                    if let Some(len) = receive(srtp, &mut packet[..len]) {
                        self.on_agent_rtp(&mut packet[..len], from, now);
                    }
                    self.bufs.agent_rtp = packet;
                }
                Wake::AgentRtcp(len, from) => {
                    if let Some(transfer) = &mut self.transfer {
                        let datagram = &mut self.bufs.agent_rtcp[..len];
                        if let Some(len) = receive(transfer.srtp_mut(), datagram) {
                            transfer.on_agent_rtcp(&self.bufs.agent_rtcp[..len], from, now);
                        }
                    }
                }
                Wake::Bot(event) => self.on_bot_event(event),
            }
            // Whatever the wake-up was, an inline bot answers the audio it
            // brought, and a send due within a moment goes out with it.
            self.pump_inline_bot(now);
            self.tick_if_due(now);
            self.drive().await;
        }
        self.finish_media().await;
        // Ended without an answer and without a refusal: the caller gave up.
        self.resource.end_status = CallStatus::Canceled;
        self.ending
            .take()
            .map(|(reason, _)| reason)
            .unwrap_or_else(|| "ended".into())
    }

    /// Waits for whatever comes first. Each source reads into its own
    /// buffer, so the wake-up owns nothing borrowed from the call.
    async fn next_wake(&mut self) -> Wake {
        let deadline = self.next_deadline();
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        let Call {
            inputs,
            jobs,
            timer,
            bufs,
            caller_media,
            transfer,
            bot,
            ..
        } = self;
        let caller_sockets = caller_media.sockets();
        let agent_sockets = transfer
            .as_ref()
            .and_then(|t| t.media())
            .map(|m| (m.sockets.rtp(), m.sockets.rtcp()));
        let bot_link = bot.as_mut().filter(|b| b.listening()).map(|b| &mut b.link);
        let Buffers {
            caller_rtp,
            caller_rtcp,
            agent_rtp,
            agent_rtcp,
        } = &mut **bufs;
        tokio::select! {
            input = inputs.recv() => Wake::Input(input),
            _ = timer.as_mut() => Wake::Timer,
            Some(output) = jobs.next(), if !jobs.is_empty() => Wake::Job(output),
            Ok((len, from)) = recv(caller_sockets.map(|s| s.0), caller_rtp) => Wake::CallerRtp(len, from),
            Ok((len, from)) = recv(caller_sockets.map(|s| s.1), caller_rtcp) => Wake::CallerRtcp(len, from),
            Ok((len, from)) = recv(agent_sockets.map(|s| s.0), agent_rtp) => Wake::AgentRtp(len, from),
            Ok((len, from)) = recv(agent_sockets.map(|s| s.1), agent_rtcp) => Wake::AgentRtcp(len, from),
            event = next_bot_event(bot_link) => Wake::Bot(event),
        }
    }

    fn next_deadline(&self) -> Instant {
        let legs = std::iter::once(self.caller.poll_timeout())
            .chain(self.legs.iter().map(|(_, leg)| leg.poll_timeout()))
            .flatten()
            .map(Instant::from_std);
        let transfer = self.transfer.as_ref().and_then(Transfer::deadline);
        let ending = self.ending.as_ref().map(|(_, since)| *since + END_GRACE);
        let relay_check = self
            .transfer
            .as_ref()
            .filter(|t| t.is_relaying())
            .map(|_| self.relay_checked + RELAY_CHECK);
        let caller_pull = self.caller_pull_deadline().map(Instant::from_std);
        let tick = Some(self.tick_due)
            .filter(|_| self.media_ticking())
            .map(Instant::from_std);
        let bot = self
            .bot
            .as_ref()
            .filter(|bot| bot.listening())
            .and_then(|bot| bot.link.deadline())
            .map(Instant::from_std);
        legs.chain(transfer)
            .chain(caller_pull)
            .chain(ending)
            .chain(relay_check)
            .chain(tick)
            .chain(bot)
            .min()
            .unwrap_or(self.far_future)
    }

    fn on_timer(&mut self, now: std::time::Instant) {
        if self.caller_pull_deadline().is_some_and(|due| due <= now) {
            self.pull_caller(now, false);
        }
        self.caller.handle_timeout(now);
        for (_, leg) in &mut self.legs {
            leg.handle_timeout(now);
        }
        self.transfer_timeout(Instant::from_std(now));
        let relaying = self.transfer.as_ref().is_some_and(Transfer::is_relaying);
        if relaying && Instant::from_std(now) >= self.relay_checked + RELAY_CHECK {
            self.relay_checked = Instant::from_std(now);
            self.check_rtp_timeouts(now, true);
        }
    }

    fn on_job(&mut self, output: JobOutput) {
        match output {
            JobOutput::BotOpened { purpose, result } => self.on_bot_opened(purpose, result),
            JobOutput::Resolved {
                attempt,
                result,
                alternates,
            } => {
                if let Some(transfer) = self.transfer.as_mut().filter(|t| t.attempt == attempt) {
                    transfer.alternates = alternates;
                }
                self.on_resolved(attempt, result)
            }
            JobOutput::DialAction { attempt, result } => self.on_dial_action(attempt, result),
            JobOutput::Recorder(result) => self.on_recorder(result),
            JobOutput::TimeLimit => self.end("time limit reached"),
            JobOutput::Twiml { attempt, result } => self.on_twiml(attempt, result),
            JobOutput::VerbDone { step } => self.on_verb_done(step),
            JobOutput::GatherTimeout { epoch } => self.on_gather_timeout(epoch),
            JobOutput::Clip {
                step,
                url,
                loops,
                result,
            } => self.on_clip(step, url, loops, result),
        }
    }

    pub(super) fn spawn_job(&mut self, job: Job) {
        self.jobs.push(job);
    }

    pub(super) fn leg_mut(&mut self, id: LegId) -> Option<&mut Leg> {
        if id == LegId::CALLER {
            return Some(&mut self.caller);
        }
        self.legs
            .iter_mut()
            .find(|(leg_id, _)| *leg_id == id)
            .map(|(_, leg)| leg)
    }

    /// A new leg of ours: registered with the endpoint before it sends.
    pub(super) fn add_leg(&mut self, leg: Leg) -> LegId {
        let id = LegId(self.next_leg);
        self.next_leg += 1;
        self.outbox.push(EndpointCommand::AddDialog {
            call: self.call,
            leg: id,
            call_id: leg.call_id().to_string(),
            local_tag: leg.local_tag().to_string(),
        });
        self.legs.push((id, leg));
        id
    }

    /// Moves every leg's output to the endpoint and its events into the
    /// call, until nothing moves.
    pub(super) async fn drive(&mut self) {
        for _ in 0..32 {
            for command in std::mem::take(&mut self.outbox) {
                let _ = self.endpoint.send(command).await;
            }
            let mut outputs = Vec::new();
            let mut events = Vec::new();
            for (id, leg) in std::iter::once((LegId::CALLER, &mut self.caller))
                .chain(self.legs.iter_mut().map(|(id, leg)| (*id, leg)))
            {
                while let Some(output) = leg.poll_output() {
                    outputs.push((id, output));
                }
                while let Some(event) = leg.poll_event() {
                    events.push((id, event));
                }
            }
            if outputs.is_empty() && events.is_empty() {
                break;
            }
            for (id, output) in outputs {
                let command = match output {
                    LegOutput::Respond { tx, response } => {
                        EndpointCommand::Respond { tx, response }
                    }
                    LegOutput::Send { request, peer } => EndpointCommand::SendRequest {
                        call: self.call,
                        leg: id,
                        request,
                        peer,
                    },
                    LegOutput::SendStateless { request, peer } => EndpointCommand::SendStateless {
                        message: SipMessage::Request(request),
                        peer,
                    },
                };
                let _ = self.endpoint.send(command).await;
            }
            for (id, event) in events {
                self.on_leg_event(id, event);
            }
        }
        self.legs.retain(|(_, leg)| !leg.is_finished());
    }

    fn on_leg_event(&mut self, id: LegId, event: LegEvent) {
        if id == LegId::CALLER {
            self.on_caller_event(event);
        } else {
            self.on_agent_event(id, event);
        }
    }

    /// Ends the call: every leg hung up, the bot told, media stopped once
    /// the legs are done. The first reason given is the one logged.
    pub(super) fn end(&mut self, reason: impl Into<String>) {
        if self.ending.is_some() {
            return;
        }
        let reason = reason.into();
        self.ending = Some((reason, Instant::now()));
        let now = std::time::Instant::now();
        self.caller.hang_up(now);
        for (_, leg) in &mut self.legs {
            leg.hang_up(now);
        }
        self.close_bot();
        self.report_dial_at_end();
        self.transfer = None;
        self.caller_media.stop_ticking();
    }

    pub(super) fn is_ending(&self) -> bool {
        self.ending.is_some()
    }
}

/// Receives on `socket`, or never when there is none.
async fn recv(
    socket: Option<&tokio::net::UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

async fn next_bot_event(link: Option<&mut BotLink>) -> Option<BotEvent> {
    match link {
        Some(link) => link.next_event().await,
        None => std::future::pending().await,
    }
}

/// Our Contact for a leg on `transport` from `local`.
pub(super) fn contact_uri(shared: &CallShared, local: SocketAddr, transport: Transport) -> SipUri {
    let host = shared.media.public_ip.unwrap_or(local.ip());
    let text = match host {
        std::net::IpAddr::V4(ip) => {
            format!(
                "sip:switchboard@{ip}:{};transport={transport}",
                local.port()
            )
        }
        std::net::IpAddr::V6(ip) => {
            format!(
                "sip:switchboard@[{ip}]:{};transport={transport}",
                local.port()
            )
        }
    };
    SipUri::parse(&text).expect("a contact built from an IP and port parses")
}
