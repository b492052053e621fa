//! The gateway's HTTP API: `GET /health`, `GET /metrics` (Prometheus text
//! format), the `/v1/…` operator endpoints and Twilio's Calls resource
//! ([`twilio`]). Off unless `[api] listen` is set. Only the Calls API
//! checks a login (`[api] account_sid` / `auth_token`): the rest is meant
//! for loopback or a management network.

mod create_call;
mod twilio;
pub use twilio::API_VERSION;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::endpoint::EndpointState;
use crate::metrics as names;

/// How often histograms are compacted so memory stays flat between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct ApiState {
    prometheus: PrometheusHandle,
    active_calls: watch::Receiver<usize>,
    state: watch::Receiver<EndpointState>,
    registrar: Option<std::sync::Arc<crate::registrar::service::Registrar>>,
    registry: std::sync::Arc<crate::registration::manager::Registry>,
    reload: tokio::sync::mpsc::Sender<crate::reload::ReloadRequest>,
}

/// What the API reads and acts on.
pub struct ApiContext {
    pub active_calls: watch::Receiver<usize>,
    pub state: watch::Receiver<EndpointState>,
    pub registrar: Option<std::sync::Arc<crate::registrar::service::Registrar>>,
    pub registry: std::sync::Arc<crate::registration::manager::Registry>,
    pub reload: tokio::sync::mpsc::Sender<crate::reload::ReloadRequest>,
    pub calls: std::sync::Arc<crate::call::registry::CallRegistry>,
    pub credentials: Option<crate::config::ApiCredentials>,
    pub http: reqwest::Client,
    pub endpoint: crate::endpoint::EndpointSender,
}

/// A running API listener; dropped or [`ApiServer::stop`]ped with the gateway.
pub struct ApiServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ApiServer {
    pub async fn start(listen: SocketAddr, context: ApiContext) -> std::io::Result<ApiServer> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let prometheus = prometheus().clone();
        // Scrapes before the first call see the gauge at 0, not missing.
        names::active_calls(*context.active_calls.borrow());
        let twilio = twilio::TwilioState {
            calls: context.calls,
            credentials: context.credentials,
            http: context.http,
            endpoint: context.endpoint,
            registrar: context.registrar.clone(),
            registrations: context.registry.clone(),
        };
        let state = ApiState {
            prometheus: prometheus.clone(),
            active_calls: context.active_calls,
            state: context.state,
            registrar: context.registrar,
            registry: context.registry,
            reload: context.reload,
        };
        let app = Router::new()
            .route("/health", get(health))
            .route("/metrics", get(render_metrics))
            .route("/v1/users", get(users))
            .route("/v1/registrations", get(registrations))
            .route("/v1/registrations/{id}", get(registration))
            .route("/v1/reload", axum::routing::post(reload_config))
            .with_state(state)
            .merge(twilio::routes().with_state(twilio));
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let upkeep = async {
                let mut every = tokio::time::interval(UPKEEP_EVERY);
                loop {
                    every.tick().await;
                    prometheus.run_upkeep();
                }
            };
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            });
            tokio::select! {
                result = serve => if let Err(error) = result {
                    tracing::error!(%error, "HTTP API stopped");
                },
                _ = upkeep => {}
            }
        });
        Ok(ApiServer { addr, stop, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// The process-wide Prometheus recorder, installed on first use. The
/// `metrics` facade allows one global recorder per process, and a process
/// runs one gateway.
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            (names::CALL_LOSS, names::LOSS_BUCKETS),
            (names::CALL_JITTER, names::MS_BUCKETS),
            (names::CALL_RTT, names::MS_BUCKETS),
            (names::CALL_DURATION, names::DURATION_BUCKETS),
        ];
        let mut builder = PrometheusBuilder::new();
        for (name, values) in buckets {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.into()), values)
                .expect("bucket lists are not empty");
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed: /metrics stays empty");
        }
        names::describe();
        handle
    })
}

async fn health(State(state): State<ApiState>) -> impl IntoResponse {
    let status = match *state.state.borrow() {
        EndpointState::Running => "ok",
        EndpointState::Draining | EndpointState::Stopping => "draining",
    };
    Json(serde_json::json!({
        "status": status,
        "active_calls": *state.active_calls.borrow(),
    }))
}

async fn render_metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
}

/// `GET /v1/users`: every configured user with its live contacts.
async fn users(State(state): State<ApiState>) -> impl IntoResponse {
    use axum::http::StatusCode;
    let Some(registrar) = &state.registrar else {
        return (StatusCode::OK, Json(serde_json::json!({ "users": [] })));
    };
    let now = crate::registrar::unix_now();
    let all = match registrar.store.all(now).await {
        Ok(all) => all,
        Err(error) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "error": error.to_string() })),
            )
        }
    };
    let directory = registrar.directory();
    let mut names: Vec<&str> = directory.names().collect();
    names.sort_unstable();
    let users: Vec<serde_json::Value> = names
        .into_iter()
        .map(|name| {
            let contacts: Vec<serde_json::Value> = all
                .iter()
                .find(|(aor, _)| aor == name)
                .map(|(_, bindings)| {
                    bindings
                        .iter()
                        .map(|b| {
                            serde_json::json!({
                                "uri": b.contact,
                                "source": b.source.to_string(),
                                "transport": b.transport.to_string(),
                                "expires_in": b.seconds_left(now),
                                "user_agent": b.user_agent,
                                "instance": b.instance,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            serde_json::json!({ "username": name, "contacts": contacts })
        })
        .collect();
    (StatusCode::OK, Json(serde_json::json!({ "users": users })))
}

fn registration_json(entry: &crate::registration::manager::Entry) -> serde_json::Value {
    let now = std::time::Instant::now();
    let status = &entry.status;
    serde_json::json!({
        "id": entry.spec.id,
        "proxy": entry.spec.proxy.to_string(),
        "username": entry.spec.username,
        "flow": entry.spec.flow,
        "status": status.state.name(),
        "code": status.code,
        "reason": status.reason,
        "changed_at": crate::registration::manager::unix_seconds(status.changed_at),
        "next_attempt_in": status.next_attempt.map(|at| at.saturating_duration_since(now).as_secs()),
        "expires": status.granted_expires,
    })
}

/// `GET /v1/registrations`: every outbound registration's status.
async fn registrations(State(state): State<ApiState>) -> impl IntoResponse {
    let all: Vec<serde_json::Value> = state.registry.all().iter().map(registration_json).collect();
    Json(serde_json::json!({ "registrations": all }))
}

/// `GET /v1/registrations/{id}`.
async fn registration(
    State(state): State<ApiState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> impl IntoResponse {
    use axum::http::StatusCode;
    match state.registry.get(&id) {
        Some(entry) => (StatusCode::OK, Json(registration_json(&entry))),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("no registration `{id}`") })),
        ),
    }
}

/// `POST /v1/reload`: reads the configuration file again and puts it in
/// force (as SIGHUP does). 422 with the reason when the new file is bad —
/// the running configuration stays.
async fn reload_config(State(state): State<ApiState>) -> impl IntoResponse {
    use axum::http::StatusCode;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = crate::reload::ReloadRequest { reply };
    if state.reload.try_send(request).is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": "a reload is already in progress" })),
        );
    }
    match answer.await {
        Ok(Ok(report)) => (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "reloaded", "report": report })),
        ),
        Ok(Err(error)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({ "status": "refused", "error": error })),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": "nobody can reload this gateway's configuration" })),
        ),
    }
}
