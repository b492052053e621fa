//! The task that runs every outbound registration: resolves each proxy,
//! drives the sans-IO clients (their REGISTERs go out as the endpoint's
//! client transactions, their answers come back here), keeps the status
//! the API and call routing read, logs and counts every change, and tells
//! each registration's `status_callback` when it turns successful or failed
//! (retried with backoff, never holding the registration up).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use rand::Rng;
use tokio::sync::mpsc;

use super::client::{Client, Output, Settings, State, Status};
pub use super::registry::{Entry, Registry};
use crate::call::EndpointCommand;
use crate::sip::message::{Request, Response};
use crate::sip::resolve::Resolver;
use crate::sip::transaction::{Peer, Transport};
use crate::sip::uri::SipUri;

/// Events queued from the endpoint to the manager; when full, the endpoint
/// drops them (a REGISTER that loses its answer times out and is retried).
pub const EVENTS_CAPACITY: usize = 4096;
/// Callback attempts, and the first pause between them (doubling).
const CALLBACK_ATTEMPTS: u32 = 4;
const CALLBACK_FIRST_PAUSE: Duration = Duration::from_secs(1);
/// After a registrar recovers, its failed registrations come back at most
/// this many per second.
const RECOVERY_RATE: u64 = 200;
const RECOVERY_EVERY: Duration = Duration::from_secs(10);
/// New registrations (at start-up, after a reload) begin at most this many
/// per second.
const START_RATE: u32 = 500;

/// One `[[registrations]]` entry, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationSpec {
    pub id: String,
    /// `sip:host[:port][;transport=…]` of the registrar.
    pub proxy: SipUri,
    pub username: String,
    pub password: String,
    pub auth_user: Option<String>,
    /// Where requests go instead of the proxy's address, if set.
    pub outbound_proxy: Option<SipUri>,
    pub expires: u32,
    pub flow: String,
    pub status_callback: Option<String>,
}

impl RegistrationSpec {
    /// The transport of the first hop: the outbound proxy's when set.
    pub fn transport(&self) -> Transport {
        match self
            .outbound_proxy
            .as_ref()
            .unwrap_or(&self.proxy)
            .transport()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("tcp") => Transport::Tcp,
            Some("tls") => Transport::Tls,
            _ if self.outbound_proxy.as_ref().unwrap_or(&self.proxy).scheme
                == crate::sip::uri::Scheme::Sips =>
            {
                Transport::Tls
            }
            _ => Transport::Udp,
        }
    }

    /// The registration's domain: its proxy's host.
    pub fn domain(&self) -> String {
        self.proxy.host.to_string()
    }

    pub fn aor(&self) -> SipUri {
        let mut aor = self.proxy.clone();
        aor.user = Some(self.username.clone());
        aor.params.clear();
        aor.port = None;
        aor
    }
}

/// What the endpoint (and the gateway) tell the manager.
#[derive(Debug)]
pub enum Event {
    /// A final response to one of the registration's REGISTERs.
    Response { id: String, response: Response },
    /// A REGISTER got no answer, or could not be sent.
    Failed {
        id: String,
        cseq: u32,
        unreachable: bool,
    },
    /// A TCP or TLS connection closed: registrations over it register again.
    ConnectionClosed { peer: Peer },
    /// The configuration changed: these are the registrations now.
    Reload(Vec<RegistrationSpec>),
    /// Un-REGISTER everything and stop.
    Shutdown,
}

struct Running {
    client: Option<Client>,
    spec: RegistrationSpec,
    peer: Option<Peer>,
    /// The last settled state (successful or failed) callbacks reported:
    /// a refresh passing through `in_progress` is not a change to report.
    reported: State,
    /// The registrar's name did not resolve: when to try again, and how
    /// many times it failed in a row (for the backoff).
    resolve_again: Option<Instant>,
    resolve_failures: u32,
    /// The one live entry this registration has in the deadline heap;
    /// others left behind by rescheduling are skipped when they surface.
    scheduled: Option<Instant>,
}

/// Where the manager sends from: our address per transport and family.
#[derive(Clone)]
pub struct Addresses {
    pub local: Vec<(Transport, SocketAddr)>,
    pub public_ip: Option<std::net::IpAddr>,
}

pub struct Manager {
    registry: Arc<Registry>,
    endpoint: crate::endpoint::EndpointSender,
    resolver: Resolver,
    http: reqwest::Client,
    addresses: Addresses,
    running: HashMap<String, Running>,
    deadlines: BinaryHeap<Reverse<(Instant, String)>>,
    /// When each registrar was last seen recovering.
    recovered_at: HashMap<Peer, Instant>,
    /// The earliest a registration added now may send its first REGISTER.
    next_start: Instant,
}

type Resolution =
    std::pin::Pin<Box<dyn std::future::Future<Output = (String, Result<Peer, String>)> + Send>>;

impl Manager {
    pub fn new(
        registry: Arc<Registry>,
        endpoint: crate::endpoint::EndpointSender,
        resolver: Resolver,
        http: reqwest::Client,
        addresses: Addresses,
    ) -> Manager {
        Manager {
            registry,
            endpoint,
            resolver,
            http,
            addresses,
            running: HashMap::new(),
            deadlines: BinaryHeap::new(),
            recovered_at: HashMap::new(),
            next_start: Instant::now(),
        }
    }

    pub async fn run(mut self, specs: Vec<RegistrationSpec>, mut events: mpsc::Receiver<Event>) {
        let mut resolutions: FuturesUnordered<Resolution> = FuturesUnordered::new();
        self.reload(specs, &mut resolutions);
        let mut shutting_down = false;
        loop {
            let next = self.next_deadline();
            tokio::select! {
                event = events.recv() => match event {
                    None => break,
                    Some(Event::Shutdown) => {
                        shutting_down = true;
                        let now = Instant::now();
                        let ids: Vec<String> = self.running.keys().cloned().collect();
                        for id in ids {
                            if let Some(client) = self.running.get_mut(&id).and_then(|r| r.client.as_mut()) {
                                client.stop(now);
                            }
                            self.pump(&id).await;
                        }
                    }
                    Some(event) => self.on_event(event, &mut resolutions).await,
                },
                Some((id, result)) = resolutions.next(), if !resolutions.is_empty() => {
                    self.on_resolved(id, result).await;
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {
                    self.on_timers(&mut resolutions).await;
                }
            }
            if shutting_down
                && self
                    .running
                    .values()
                    .all(|r| r.client.as_ref().is_none_or(Client::is_stopped))
            {
                break;
            }
        }
    }

    fn next_deadline(&mut self) -> Instant {
        while let Some(Reverse((at, id))) = self.deadlines.peek() {
            let live = self
                .running
                .get(id)
                .is_some_and(|r| r.scheduled == Some(*at));
            if live {
                return *at;
            }
            self.deadlines.pop();
        }
        Instant::now() + Duration::from_secs(3600)
    }

    fn reload(
        &mut self,
        specs: Vec<RegistrationSpec>,
        resolutions: &mut FuturesUnordered<Resolution>,
    ) {
        let now = Instant::now();
        let wanted: HashMap<String, RegistrationSpec> =
            specs.into_iter().map(|s| (s.id.clone(), s)).collect();
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(id, r)| wanted.get(*id) != Some(&r.spec))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            tracing::info!(registration = %id, "registration removed or changed: un-registering");
            if let Some(mut running) = self.running.remove(&id) {
                if let Some(client) = running.client.as_mut() {
                    client.stop(now);
                    // Its un-REGISTER still goes out; its answers are not
                    // awaited (the registration is no longer ours).
                    let outputs: Vec<Output> =
                        std::iter::from_fn(|| client.poll_output()).collect();
                    let peer = running.peer;
                    for output in outputs {
                        if let (Output::Register(request), Some(peer)) = (output, peer) {
                            let shard = self.endpoint.for_call_id(request.call_id().unwrap_or(""));
                            let _ = shard.try_send(EndpointCommand::Register {
                                id: format!("{id}#removed"),
                                request,
                                peer,
                            });
                        }
                    }
                }
            }
            self.registry.remove(&id);
        }
        for (id, spec) in wanted {
            if self.running.contains_key(&id) {
                continue;
            }
            tracing::info!(registration = %id, proxy = %spec.proxy, "registration added");
            self.registry.set(Entry {
                spec: spec.clone(),
                status: Status {
                    state: State::InProgress,
                    code: 0,
                    reason: "resolving the registrar".into(),
                    changed_at: SystemTime::now(),
                    next_attempt: Some(now),
                    granted_expires: None,
                },
                peer: None,
            });
            self.resolve(&id, &spec, resolutions);
            self.running.insert(
                id,
                Running {
                    client: None,
                    spec,
                    peer: None,
                    reported: State::InProgress,
                    resolve_again: None,
                    resolve_failures: 0,
                    scheduled: None,
                },
            );
        }
        self.publish_counts();
    }

    /// Looks the registrar (or the outbound proxy) up, off the task.
    fn resolve(
        &self,
        id: &str,
        spec: &RegistrationSpec,
        resolutions: &mut FuturesUnordered<Resolution>,
    ) {
        let target = spec
            .outbound_proxy
            .clone()
            .unwrap_or_else(|| spec.proxy.clone());
        let transport = Some(spec.transport());
        let resolver = self.resolver.clone();
        let key = id.to_string();
        resolutions.push(Box::pin(async move {
            (key, resolver.resolve(&target, transport).await)
        }));
    }

    async fn on_resolved(&mut self, id: String, result: Result<Peer, String>) {
        let Some(running) = self.running.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        let peer = match result {
            Ok(peer) => peer,
            Err(reason) => {
                running.resolve_failures += 1;
                let at = now + crate::registration::client::backoff(running.resolve_failures);
                running.resolve_again = Some(at);
                running.scheduled = Some(at);
                self.deadlines.push(Reverse((at, id.clone())));
                tracing::warn!(registration = %id, %reason, retry_in_ms = (at - now).as_millis() as u64, "registrar does not resolve");
                let previous = running.reported;
                let report = (previous != State::Failed).then_some(previous);
                running.reported = State::Failed;
                let spec = running.spec.clone();
                let mut status = None;
                self.registry.update(&id, |entry| {
                    let before = entry.status.state;
                    entry.status.state = State::Failed;
                    entry.status.code = 503;
                    entry.status.reason = format!("registrar does not resolve: {reason}");
                    entry.status.next_attempt = Some(at);
                    if before != State::Failed {
                        entry.status.changed_at = SystemTime::now();
                        status = Some((before, entry.status.clone()));
                    }
                });
                if let Some((before, status)) = status {
                    self.changed(&spec, before, report, &status);
                }
                return;
            }
        };
        let local = self
            .addresses
            .local
            .iter()
            .find(|(t, a)| *t == peer.transport && a.is_ipv4() == peer.addr.is_ipv4())
            .map(|(_, a)| *a);
        let Some(local) = local else {
            tracing::warn!(registration = %id, transport = %peer.transport, "no listener to register from");
            return;
        };
        let host = self.addresses.public_ip.unwrap_or(local.ip());
        let contact = SipUri::parse(&format!(
            "sip:{id}@{}:{};transport={}",
            crate::sip::uri::Host::Ip(host),
            local.port(),
            peer.transport
        ))
        .expect("a contact of an id, an IP and a port parses");
        let spec = &running.spec;
        let settings = Settings {
            aor: spec.aor(),
            registrar: spec.proxy.clone(),
            transport: peer.transport,
            auth_user: spec
                .auth_user
                .clone()
                .unwrap_or_else(|| spec.username.clone()),
            password: spec.password.clone(),
            expires: spec.expires,
        };
        // New registrations start at most START_RATE a second: a thousand
        // configured at once do not land on their PBX in one burst.
        let start = self.next_start.max(now);
        self.next_start = start + Duration::from_secs(1) / START_RATE;
        running.client = Some(Client::new(
            settings,
            contact,
            crate::call::leg::sent_by(local),
            start,
        ));
        running.peer = Some(peer);
        self.registry.update(&id, |entry| entry.peer = Some(peer));
        self.pump(&id).await;
    }

    async fn on_event(&mut self, event: Event, resolutions: &mut FuturesUnordered<Resolution>) {
        let now = Instant::now();
        match event {
            Event::Response { id, response } => {
                if let Some(client) = self.running.get_mut(&id).and_then(|r| r.client.as_mut()) {
                    client.handle_response(&response, now);
                }
                self.pump(&id).await;
            }
            Event::Failed {
                id,
                cseq,
                unreachable,
            } => {
                if let Some(client) = self.running.get_mut(&id).and_then(|r| r.client.as_mut()) {
                    client.handle_failure(cseq, unreachable, now);
                }
                self.pump(&id).await;
            }
            Event::ConnectionClosed { peer: closed } => {
                let ids: Vec<String> = self
                    .running
                    .iter()
                    .filter(|(_, r)| r.peer.is_some_and(|p| p == closed))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in ids {
                    if let Some(client) = self.running.get_mut(&id).and_then(|r| r.client.as_mut())
                    {
                        client.connection_lost(now);
                    }
                    self.pump(&id).await;
                }
            }
            Event::Reload(specs) => self.reload(specs, resolutions),
            Event::Shutdown => {}
        }
    }

    async fn on_timers(&mut self, resolutions: &mut FuturesUnordered<Resolution>) {
        let now = Instant::now();
        while let Some(Reverse((at, _))) = self.deadlines.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, id))) = self.deadlines.pop() else {
                break;
            };
            let Some(running) = self.running.get_mut(&id) else {
                continue;
            };
            if running.scheduled != Some(at) {
                continue; // left behind by a reschedule
            }
            running.scheduled = None;
            match running.client.as_mut() {
                None => {
                    running.resolve_again = None;
                    let spec = running.spec.clone();
                    self.resolve(&id, &spec, resolutions);
                    continue;
                }
                Some(client) => {
                    if client.poll_timeout().is_some_and(|t| t <= now) {
                        client.handle_timeout(now);
                    }
                }
            }
            self.pump(&id).await;
        }
    }

    /// Carries out what a client asks, and schedules its next wake-up.
    async fn pump(&mut self, id: &str) {
        let Some(running) = self.running.get_mut(id) else {
            return;
        };
        let (Some(client), Some(peer)) = (running.client.as_mut(), running.peer) else {
            return;
        };
        let outputs: Vec<Output> = std::iter::from_fn(|| client.poll_output()).collect();
        let status = client.status().clone();
        let next = client.poll_timeout();
        if next != running.scheduled {
            running.scheduled = next;
            if let Some(at) = next {
                self.deadlines.push(Reverse((at, id.to_string())));
            }
        }
        let spec = running.spec.clone();
        self.registry
            .update(id, |entry| entry.status = status.clone());
        for output in outputs {
            match output {
                Output::Register(request) => self.send(id, request, peer).await,
                Output::KeepAlive => {
                    let _ = self
                        .endpoint
                        .next_shard()
                        .send(EndpointCommand::SendRaw {
                            peer,
                            bytes: b"\r\n\r\n".to_vec(),
                        })
                        .await;
                }
                Output::Changed { previous, status } => {
                    let reported = self.running.get(id).map(|r| r.reported);
                    let report = reported.filter(|reported| {
                        status.state != State::InProgress && status.state != *reported
                    });
                    if let (Some(running), Some(_)) = (self.running.get_mut(id), report) {
                        running.reported = status.state;
                    }
                    self.changed(&spec, previous, report, &status);
                    if report == Some(State::Failed) && status.state == State::Successful {
                        self.registrar_is_back(peer).await;
                    }
                }
            }
        }
    }

    /// A registration at `peer` recovered: the others there that failed
    /// try again soon instead of sitting out their backoff, spread so at
    /// most [`RECOVERY_RATE`] of them go per second. Once per registrar per
    /// [`RECOVERY_EVERY`], so a mass recovery walks the registrations once.
    async fn registrar_is_back(&mut self, peer: Peer) {
        let now = Instant::now();
        if self
            .recovered_at
            .get(&peer)
            .is_some_and(|at| now.duration_since(*at) < RECOVERY_EVERY)
        {
            return;
        }
        self.recovered_at.insert(peer, now);
        let waiting: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| {
                r.peer == Some(peer)
                    && r.client
                        .as_ref()
                        .is_some_and(|c| c.status().state == State::Failed)
            })
            .map(|(id, _)| id.clone())
            .collect();
        if waiting.is_empty() {
            return;
        }
        let spread_ms = (waiting.len() as u64 * 1000 / RECOVERY_RATE).max(1000);
        tracing::info!(registrar = %peer.addr, failed = waiting.len(), spread_ms, "registrar answers again: retrying its failed registrations");
        for id in waiting {
            let at = now + Duration::from_millis(rand::rng().random_range(0..=spread_ms));
            if let Some(client) = self.running.get_mut(&id).and_then(|r| r.client.as_mut()) {
                client.retry_soon(at);
            }
            Box::pin(self.pump(&id)).await;
        }
    }

    async fn send(&self, id: &str, request: Request, peer: Peer) {
        crate::metrics::register_sent();
        // The shard that owns the registration's Call-ID gets its answers.
        let _ = self
            .endpoint
            .for_call_id(request.call_id().unwrap_or(""))
            .send(EndpointCommand::Register {
                id: id.to_string(),
                request,
                peer,
            })
            .await;
    }

    /// Logs a change; `report` (the last settled state) when it is a flip
    /// the status callback hears about.
    fn changed(
        &self,
        spec: &RegistrationSpec,
        previous: State,
        report: Option<State>,
        status: &Status,
    ) {
        tracing::info!(
            registration = %spec.id,
            from = previous.name(),
            to = status.state.name(),
            code = status.code,
            reason = %status.reason,
            "registration status changed"
        );
        self.publish_counts();
        let Some(url) = spec.status_callback.clone() else {
            return;
        };
        let Some(previous) = report else {
            return;
        };
        let body = serde_json::json!({
            "id": spec.id,
            "status": status.state.name(),
            "previous": previous.name(),
            "code": status.code,
            "reason": status.reason,
            "at": unix_seconds(status.changed_at),
        });
        let http = self.http.clone();
        let id = spec.id.clone();
        tokio::spawn(async move {
            let mut pause = CALLBACK_FIRST_PAUSE;
            for attempt in 1..=CALLBACK_ATTEMPTS {
                let result = http
                    .post(&url)
                    .timeout(Duration::from_secs(5))
                    .json(&body)
                    .send()
                    .await;
                match result {
                    Ok(response) if response.status().is_success() => return,
                    Ok(response) => {
                        tracing::warn!(registration = %id, %url, attempt, status = %response.status(), "status callback refused")
                    }
                    Err(error) => {
                        tracing::warn!(registration = %id, %url, attempt, %error, "status callback failed")
                    }
                }
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        });
    }

    fn publish_counts(&self) {
        for (state, count) in self.registry.count_by_state() {
            crate::metrics::registrations(state.name(), count);
        }
    }
}

pub fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
