//! Configuration reload (SIGHUP, `POST /v1/reload`): trunks, routes, flows,
//! users, the dial allow-list, `max_calls`, outbound registrations and TLS
//! certificates (`[sip.tls]`, re-read every time) take effect without
//! dropping a call. Sockets, media and registrar settings
//! are bound at start-up; a change to them is reported as needing a
//! restart and otherwise ignored.

use std::collections::HashMap;
use std::sync::Arc;

use switchboard_connectors::connector_for;
use tokio::sync::{mpsc, oneshot, watch};

use crate::call::dial::DialPolicy;
use crate::call::EndpointCommand;
use crate::config::{Config, ValidConfig};
use crate::endpoint::{FlowRuntime, Reconfiguration};
use crate::registrar::users::Directory;
use crate::registration::manager::Event as RegistrationEvent;

/// Reload requests the API may queue; more are refused as busy.
pub const REQUESTS_CAPACITY: usize = 4;

/// A request (from the API) that whoever owns the configuration file load
/// it again and hand it to [`crate::Gateway::reload`].
pub struct ReloadRequest {
    pub reply: oneshot::Sender<Result<ReloadReport, String>>,
}

/// What a reload changed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReloadReport {
    pub flows: usize,
    pub trunks: usize,
    pub users: usize,
    pub registrations: usize,
    /// Sections that differ from the running ones but only take effect
    /// after a restart.
    pub restart_needed: Vec<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the gateway is shutting down")]
    Stopping,
}

/// The handles a reload pushes new settings through.
pub(crate) struct Reloader {
    pub running: Config,
    pub endpoint: crate::endpoint::EndpointSender,
    pub registrations: mpsc::Sender<RegistrationEvent>,
    pub directory: watch::Sender<Arc<Directory>>,
    pub dial: watch::Sender<Arc<DialPolicy>>,
    /// New requests per source; trunks' networks are exempt.
    pub limiter: Arc<std::sync::Mutex<crate::transport::source_limit::SourceLimiter>>,
    /// Certificates for TLS connections opened or accepted from now on.
    pub tls: Arc<crate::transport::tls::TlsContext>,
}

impl Reloader {
    pub async fn apply(
        &mut self,
        config: Config,
        valid: ValidConfig,
    ) -> Result<ReloadReport, ReloadError> {
        let restart_needed = restart_needed(&self.running, &config);
        for section in &restart_needed {
            tracing::warn!(
                section,
                "reload: this section changed but only takes effect after a restart"
            );
        }
        let directory = Arc::new(valid.directory);
        let report = ReloadReport {
            flows: config.flows.len(),
            trunks: config.trunks.len(),
            users: config.users.len(),
            registrations: valid.registrations.len(),
            restart_needed,
        };
        self.limiter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .set_exempt(valid.router.trusted_networks());
        // Re-read even when the paths are the same: renewing a certificate
        // replaces the files' contents.
        self.tls.replace(valid.tls.clone());
        let reconfiguration = Reconfiguration {
            router: Arc::new(valid.router),
            flows: Arc::new(flow_runtimes(&config)),
            directory: directory.clone(),
            max_calls: config.limits.max_calls,
        };
        for shard in self.endpoint.all() {
            shard
                .send(EndpointCommand::Reconfigure(Box::new(
                    reconfiguration.clone(),
                )))
                .await
                .map_err(|_| ReloadError::Stopping)?;
        }
        self.directory.send_replace(directory);
        self.dial.send_replace(Arc::new(valid.dial));
        self.registrations
            .send(RegistrationEvent::Reload(valid.registrations))
            .await
            .map_err(|_| ReloadError::Stopping)?;
        self.running = config;
        tracing::info!(
            flows = report.flows,
            trunks = report.trunks,
            users = report.users,
            registrations = report.registrations,
            "configuration reloaded"
        );
        Ok(report)
    }
}

/// Every flow with its bot connector, by name.
pub(crate) fn flow_runtimes(config: &Config) -> HashMap<String, FlowRuntime> {
    config
        .flows
        .iter()
        .map(|flow| {
            let runtime = FlowRuntime {
                config: Arc::new(flow.clone()),
                connector: Arc::from(connector_for(&flow.bot_or_placeholder())),
            };
            (flow.name.clone(), runtime)
        })
        .collect()
}

/// Sections bound at start-up that differ between `old` and `new`.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    // Debug output compares every field without asking each settings type
    // to implement PartialEq; reloads are rare.
    let same =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    let registrar = |config: &Config| {
        let r = &config.registrar;
        format!(
            "{:?}",
            (
                &r.domains,
                &r.realm,
                &r.algorithms,
                r.min_expires,
                r.max_expires,
                r.default_expires,
                r.max_contacts,
                &r.redis,
                r.nonce_ttl_secs,
                r.max_failures,
            )
        )
    };
    let mut changed = Vec::new();
    let without_tls = |config: &Config| crate::config::SipConfig {
        tls: None,
        ..config.sip.clone()
    };
    if !same(&without_tls(old), &without_tls(new)) {
        changed.push("sip");
    }
    if !same(&old.media, &new.media) {
        changed.push("media");
    }
    if !same(&old.limits.tcp(), &new.limits.tcp()) {
        changed.push("limits.tcp_*");
    }
    let shedding = |c: &Config| {
        (
            c.limits.overload_delay_ms,
            c.limits.overload_task_delay_ms,
            c.limits.overload_call_delay_ms,
            c.limits.new_requests_per_ip,
            c.limits.new_requests_burst_per_ip,
        )
    };
    if old.limits.sip_workers != new.limits.sip_workers {
        changed.push("limits.sip_workers");
    }
    if shedding(old) != shedding(new) {
        changed.push("limits.overload_* / limits.new_requests_*");
    }
    if !same(&old.api, &new.api) {
        changed.push("api");
    }
    if registrar(old) != registrar(new) {
        changed.push("registrar");
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn only_start_up_sections_need_a_restart() {
        let old = config("[sip]\nlisten = [\"udp:127.0.0.1:5060\"]\n[limits]\nmax_calls = 10\n");
        let routes_only = config(
            "[sip]\nlisten = [\"udp:127.0.0.1:5060\"]\n[limits]\nmax_calls = 20\n[registrar]\nroutes = [{ pattern = '.', flow = \"x\" }]\n",
        );
        assert!(restart_needed(&old, &routes_only).is_empty());
        let moved =
            config("[sip]\nlisten = [\"udp:127.0.0.1:5070\"]\n[registrar]\nmin_expires = 120\n");
        assert_eq!(restart_needed(&old, &moved), vec!["sip", "registrar"]);
    }
}
