//! A running gateway: sockets, the endpoint task and the drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard_connectors::connector_for;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;

use crate::api::{ApiContext, ApiServer};
use crate::call::dial::CallShared;
use crate::call::RtpPorts;
use crate::config::{Config, ValidConfig};
use crate::endpoint::{
    Endpoint, EndpointSender, EndpointState, FlowRuntime, MediaSettings, Occupancy, Shard,
};
use crate::registrar::redis_store::RedisStore;
use crate::registrar::service::{RegisterJobs, Registrar, JOBS_CAPACITY};
use crate::registrar::store::{LocationStore, MemoryStore};
use crate::registration::manager::{
    Addresses, Event as RegistrationEvent, Manager, Registry,
    EVENTS_CAPACITY as REGISTRATION_EVENTS,
};
use crate::reload::{flow_runtimes, ReloadError, ReloadReport, ReloadRequest, Reloader};
use crate::sip::authenticator::Authenticator;
use crate::sip::resolve::Resolver;
use crate::sip::transaction::Transport;
use crate::transport::Transports;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen: {0}")]
    Bind(#[from] std::io::Error),
    #[error("cannot reach the location store at {url}: {reason}")]
    Store { url: String, reason: String },
    #[error("cannot listen for the HTTP API on {addr}: {source}")]
    Api {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct Gateway {
    local: Vec<(Transport, SocketAddr)>,
    state: watch::Sender<EndpointState>,
    sockets_shutdown: watch::Sender<bool>,
    active_calls: watch::Receiver<usize>,
    /// One task per endpoint shard.
    endpoint: Vec<JoinHandle<()>>,
    api: Option<ApiServer>,
    registrations: mpsc::Sender<RegistrationEvent>,
    registrations_task: JoinHandle<()>,
    reloader: Mutex<Reloader>,
    reload_requests: Option<mpsc::Receiver<ReloadRequest>>,
}

impl Gateway {
    pub async fn start(config: Config, valid: ValidConfig) -> Result<Gateway, GatewayError> {
        let (sockets_shutdown, sockets_watch) = watch::channel(false);
        let (active_tx, active_calls) = watch::channel(0usize);
        let occupancy = Arc::new(Occupancy::new(active_tx));
        let overload = Arc::new(crate::overload::Overload::default());
        tokio::spawn(
            overload.clone().monitor(
                std::time::Duration::from_millis(config.limits.overload_task_delay_ms),
                (config.limits.overload_call_delay_ms > 0).then(|| {
                    std::time::Duration::from_millis(config.limits.overload_call_delay_ms)
                }),
                occupancy.clone(),
                sockets_watch.clone(),
            ),
        );
        let rtp_ports = Arc::new(RtpPorts::new(valid.rtp_ports.clone()));
        tokio::spawn(rtp_ports.clone().close_idle_pairs(sockets_watch.clone()));
        let limiter = Arc::new(std::sync::Mutex::new(
            crate::transport::source_limit::SourceLimiter::new(
                config.limits.new_requests_per_ip,
                config.limits.new_requests_burst_per_ip,
                valid.router.trusted_networks(),
            ),
        ));
        let shards = config.limits.endpoint_shards();
        tracing::info!(
            workers = shards,
            "SIP endpoint: one worker per shard of Call-IDs"
        );
        let pending_invites = Arc::new(crate::sip::pending_invites::PendingInvites::default());
        let (inbound_tx, inbound) =
            crate::transport::inbound::queues(shards, overload, limiter.clone());
        let inbound_tx = inbound_tx.with_admission(crate::transport::inbound::SocketAdmission {
            occupancy: occupancy.clone(),
            max_calls: config.limits.max_calls,
            pending: pending_invites.clone(),
        });
        let server_names = Arc::new(crate::sip::resolve::ServerNames::default());
        let tls = crate::transport::tls::TlsContext::new(valid.tls.clone(), server_names.clone());
        let transports = Transports::bind(
            &valid.listen,
            inbound_tx,
            sockets_watch,
            config.limits.tcp(),
            tls.clone(),
        )
        .await?;
        let resolver = || {
            let resolver = if valid.dns_servers.is_empty() {
                Resolver::system()
            } else {
                Resolver::with_servers(&valid.dns_servers)
            };
            resolver.noting_tls_names(server_names.clone())
        };
        let local = transports.local_addrs().to_vec();
        let flows = flow_runtimes(&config);
        let (command_senders, command_receivers): (Vec<_>, Vec<_>) = (0..shards)
            .map(|_| mpsc::channel(crate::endpoint::COMMAND_CAPACITY))
            .unzip();
        let commands_tx = EndpointSender::new(command_senders);
        let auth = Arc::new(std::sync::Mutex::new(Authenticator::new(
            valid.auth.clone(),
        )));
        let directory = Arc::new(valid.directory);
        let (directory_tx, directory_rx) = watch::channel(directory.clone());
        // The registrar runs even without users, so a reload can add some;
        // the endpoint only hands it REGISTERs while there are.
        let (registrar, register_jobs) = {
            let store: Arc<dyn LocationStore> = match &config.registrar.redis {
                Some(url) => Arc::new(RedisStore::connect(url).await.map_err(|error| {
                    GatewayError::Store {
                        url: url.clone(),
                        reason: error.to_string(),
                    }
                })?),
                None => Arc::new(MemoryStore::default()),
            };
            let registrar = Arc::new(Registrar {
                policy: valid.policy.clone(),
                domains: config
                    .registrar
                    .domains
                    .iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect(),
                auth: auth.clone(),
                directory: directory_rx,
                store,
            });
            // One registrar task per endpoint shard, each owning the AORs
            // that hash to it: digest checks use every core, and one AOR's
            // REGISTERs still never race each other here.
            let senders: Vec<_> = (0..shards)
                .map(|index| {
                    let (jobs_tx, jobs_rx) = mpsc::channel(JOBS_CAPACITY);
                    let sweeps = index == 0;
                    tokio::spawn(registrar.clone().run(jobs_rx, commands_tx.clone(), sweeps));
                    jobs_tx
                })
                .collect();
            (Some(registrar), Some(RegisterJobs::new(senders)))
        };
        let api_registrar = registrar.clone();
        let registry = Arc::new(Registry::default());
        let (registrations_tx, registrations_rx) = mpsc::channel(REGISTRATION_EVENTS);
        let manager = Manager::new(
            registry.clone(),
            commands_tx.clone(),
            resolver(),
            http_client(),
            Addresses {
                local: local.clone(),
                public_ip: config.sip.public_address,
            },
        );
        let registrations_task =
            tokio::spawn(manager.run(valid.registrations.clone(), registrations_rx));
        let (dial_tx, dial_rx) = watch::channel(Arc::new(valid.dial));
        let call_resources = Arc::new(crate::call::registry::CallRegistry::default());
        let (state, state_watch) = watch::channel(EndpointState::Running);
        let calls = Arc::new(CallShared {
            media: MediaSettings {
                public_ip: config.sip.public_address,
                rtp_timeout: Duration::from_secs(config.media.rtp_timeout_secs),
                jitter_depth_ms: config.media.jitter_depth_ms,
                jitter_adaptive: config.media.jitter_adaptive.then(|| {
                    switchboard_media::jitter::AdaptiveConfig {
                        min_depth_ms: config.media.jitter_min_ms,
                        max_depth_ms: config.media.jitter_max_ms,
                        ..Default::default()
                    }
                }),
                suppress_silence: config.media.send_silence == crate::config::SendSilence::Never,
                codecs: switchboard_media::sdp::CodecPreferences::new(
                    &config
                        .media
                        .codecs
                        .iter()
                        .filter_map(|name| crate::config::codec_named(name))
                        .collect::<Vec<_>>(),
                ),
            },
            rtp_ports: rtp_ports.clone(),
            dial: dial_rx,
            http: http_client(),
            resolver: resolver(),
            local: local.clone(),
            registrar: registrar.clone(),
            registry: registry.clone(),
            call_resources: call_resources.clone(),
            twilio: valid.api_credentials.clone(),
            clips: Arc::default(),
            api_recordings: config.api.recording_dir.clone(),
        });
        let router = Arc::new(valid.router);
        let flows = Arc::new(flows);
        let user_calls = user_calls();
        let shard_ends = inbound
            .into_iter()
            .zip(command_receivers)
            .zip(commands_tx.all().cloned());
        let endpoints: Vec<Endpoint> = shard_ends
            .enumerate()
            .map(|(index, ((inbound, commands_rx), own_tx))| Endpoint {
                shard: Shard {
                    index,
                    count: shards,
                },
                transports: transports.clone(),
                router: router.clone(),
                flows: flows.clone(),
                max_calls: config.limits.max_calls,
                calls: calls.clone(),
                inbound,
                overload_delay: Duration::from_millis(config.limits.overload_delay_ms),
                shutdown: state_watch.clone(),
                occupancy: occupancy.clone(),
                pending_invites: pending_invites.clone(),
                auth: auth.clone(),
                directory: directory.clone(),
                registrar: registrar.clone(),
                register_jobs: register_jobs.clone(),
                user_calls: user_calls.clone(),
                registrations: Some(registrations_tx.clone()),
                registry: registry.clone(),
                commands_tx: own_tx,
                commands_rx,
            })
            .collect();
        let (reload_tx, reload_requests) = mpsc::channel(crate::reload::REQUESTS_CAPACITY);
        let api = match valid.api_listen {
            Some(listen) => {
                let server = ApiServer::start(
                    listen,
                    ApiContext {
                        active_calls: active_calls.clone(),
                        state: state_watch,
                        registrar: api_registrar,
                        registry: registry.clone(),
                        reload: reload_tx,
                        calls: call_resources,
                        credentials: valid.api_credentials.clone(),
                        http: http_client(),
                        endpoint: commands_tx.clone(),
                    },
                )
                .await
                .map_err(|source| GatewayError::Api {
                    addr: listen,
                    source,
                })?;
                Some(server)
            }
            None => None,
        };
        let endpoint = endpoints
            .into_iter()
            .map(|endpoint| tokio::spawn(endpoint.run()))
            .collect();
        Ok(Gateway {
            local,
            state,
            sockets_shutdown,
            active_calls,
            endpoint,
            api,
            registrations: registrations_tx.clone(),
            registrations_task,
            reloader: Mutex::new(Reloader {
                limiter,
                tls,
                running: config,
                endpoint: commands_tx,
                registrations: registrations_tx,
                directory: directory_tx,
                dial: dial_tx,
            }),
            reload_requests: Some(reload_requests),
        })
    }

    /// Where the gateway actually listens (ports resolved when configured as 0).
    pub fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        self.local.clone()
    }

    /// Where the HTTP API listens, when `[api] listen` is set.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(ApiServer::local_addr)
    }

    /// Puts a new configuration in force without dropping calls (see
    /// [`crate::reload`]). The caller has read and validated it; a bad file
    /// never gets here, so the running configuration stays.
    pub async fn reload(
        &self,
        config: Config,
        valid: ValidConfig,
    ) -> Result<ReloadReport, ReloadError> {
        self.reloader.lock().await.apply(config, valid).await
    }

    /// Reloads asked for over the HTTP API; whoever owns the configuration
    /// file answers them (once: the receiver moves out).
    pub fn take_reload_requests(&mut self) -> Option<mpsc::Receiver<ReloadRequest>> {
        self.reload_requests.take()
    }

    /// Refuses new calls, waits up to `drain` for live calls to end, hangs
    /// up the rest and stops.
    pub async fn shutdown(mut self, drain: Duration) {
        let _ = self.state.send(EndpointState::Draining);
        let drained = tokio::time::timeout(drain, async {
            while *self.active_calls.borrow_and_update() > 0 {
                if self.active_calls.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                calls = *self.active_calls.borrow(),
                "drain timed out: hanging up remaining calls"
            );
        }
        // Un-REGISTER while the endpoint can still carry the requests.
        let _ = self.registrations.send(RegistrationEvent::Shutdown).await;
        if tokio::time::timeout(Duration::from_secs(5), &mut self.registrations_task)
            .await
            .is_err()
        {
            tracing::warn!("registrations did not all un-register in time");
        }
        let _ = self.state.send(EndpointState::Stopping);
        // Calls need the sockets to send their BYEs; close them last.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for shard in &mut self.endpoint {
            if tokio::time::timeout_at(deadline, &mut *shard)
                .await
                .is_err()
            {
                tracing::warn!("endpoint did not stop in time");
                shard.abort();
            }
        }
        let _ = self.sockets_shutdown.send(true);
        if let Some(api) = self.api.take() {
            api.stop().await;
        }
    }
}

/// The HTTP client calls use for webhooks: no redirects to other hosts'
/// surprises, bounded waits.
fn http_client() -> reqwest::Client {
    switchboard_connectors::install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::limited(3))
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// The flow calls routed to a registered user run as: no bot is ever
/// opened for them (they go straight to the user's phones).
fn user_calls() -> FlowRuntime {
    let config = switchboard_flows::FlowConfig {
        name: "users".into(),
        bot: Some(switchboard_flows::BotConfig::Echo(
            switchboard_flows::EchoBotConfig {
                delay_ms: 0,
                sample_rate: 8000,
            },
        )),
        webhook: None,
        twiml: None,
        on_failure: switchboard_flows::OnFailure::Hangup(480),
        parameters: Default::default(),
        reconnect_once: false,
        recording: None,
        audio: Default::default(),
        transfer: Default::default(),
    };
    FlowRuntime {
        connector: Arc::from(connector_for(&config.bot_or_placeholder())),
        config: Arc::new(config),
    }
}
