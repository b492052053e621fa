//! The registrar tasks: take REGISTERs from the endpoint, check the domain
//! and the credentials, apply the registrar's rules against the location
//! store and answer through the endpoint. An AOR belongs to one task (by
//! hash), so its REGISTERs never race each other on this gateway.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::store::LocationStore;
use super::users::Directory;
use super::{aor_of, contact_headers, register, unix_now, Outcome, Policy, RegisterRequest};
use crate::call::EndpointCommand;
use crate::sip::authenticator::{Authenticator, Verdict};
use crate::sip::message::{Request, Response};
use crate::sip::response::{default_reason, new_tag, response_for};
use crate::sip::transaction::{Peer, ServerTxId};

/// REGISTERs queued towards the registrar; when full the endpoint answers
/// 503 itself.
pub const JOBS_CAPACITY: usize = 1024;
/// Attempts after the first when another gateway changed the AOR between
/// our read and our write.
const MAX_CONFLICTS: u32 = 3;
/// How often lapsed bindings are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

pub struct RegisterJob {
    pub tx: ServerTxId,
    pub request: Request,
    pub peer: Peer,
}

/// Where the endpoint hands REGISTERs: one registrar task per AOR hash.
#[derive(Clone)]
pub struct RegisterJobs {
    senders: Arc<[mpsc::Sender<RegisterJob>]>,
}

impl RegisterJobs {
    pub fn new(senders: Vec<mpsc::Sender<RegisterJob>>) -> RegisterJobs {
        assert!(!senders.is_empty(), "at least one registrar task");
        RegisterJobs {
            senders: senders.into(),
        }
    }

    /// Queues `job` for the task that owns its AOR; gives it back when that
    /// task's queue is full (or it is gone). By value, as mpsc's own error
    /// does: boxing it would allocate for every REGISTER refused under load.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, job: RegisterJob) -> Result<(), RegisterJob> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        aor_of(&job.request)
            .map(|(user, _)| user)
            .unwrap_or_default()
            .hash(&mut hasher);
        let index = (hasher.finish() % self.senders.len() as u64) as usize;
        self.senders[index]
            .try_send(job)
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => {
                    job
                }
            })
    }
}

/// What the registrar and the calls that look users up share.
pub struct Registrar {
    pub policy: Policy,
    /// Domains we serve (lower case); empty: any.
    pub domains: Vec<String>,
    pub auth: Arc<Mutex<Authenticator>>,
    /// Users and trunk logins; a reload publishes a new one.
    pub directory: tokio::sync::watch::Receiver<Arc<Directory>>,
    pub store: Arc<dyn LocationStore>,
}

impl Registrar {
    /// The users and logins in force now.
    pub fn directory(&self) -> Arc<Directory> {
        self.directory.borrow().clone()
    }

    pub fn serves(&self, domain: &str) -> bool {
        self.domains.is_empty() || self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// Runs until the endpoint goes away; the task with `sweeps` also
    /// sweeps lapsed bindings.
    pub async fn run(
        self: Arc<Self>,
        mut jobs: mpsc::Receiver<RegisterJob>,
        endpoint: crate::endpoint::EndpointSender,
        sweeps: bool,
    ) {
        // Sweeping a shared store walks every AOR in Redis: in a task of
        // its own, so REGISTERs are not held up meanwhile.
        let sweeper = sweeps.then(|| {
            let store = self.store.clone();
            tokio::spawn(async move {
                let mut sweep = tokio::time::interval(SWEEP_EVERY);
                loop {
                    sweep.tick().await;
                    match store.sweep(unix_now()).await {
                        Ok(left) => crate::metrics::bindings(left),
                        Err(error) => tracing::warn!(%error, "cannot sweep lapsed bindings"),
                    }
                }
            })
        });
        while let Some(job) = jobs.recv().await {
            let response = self.handle(&job).await;
            // A challenge keeps no transaction: a retransmission just gets
            // a fresh one.
            let command = if response.status == 401 {
                EndpointCommand::RespondStatelessly {
                    tx: job.tx,
                    response,
                }
            } else {
                EndpointCommand::Respond {
                    tx: job.tx,
                    response,
                }
            };
            // The shard that received the REGISTER holds its transaction.
            let shard = endpoint.for_call_id(job.request.call_id().unwrap_or(""));
            if shard.send(command).await.is_err() {
                break;
            }
        }
        if let Some(sweeper) = sweeper {
            sweeper.abort();
        }
    }

    async fn handle(&self, job: &RegisterJob) -> Response {
        let request = &job.request;
        let reply = |status: u16, reason: Option<&str>| {
            response_for(
                request,
                status,
                reason.unwrap_or(default_reason(status)),
                Some(&new_tag()),
            )
        };
        let Some((user, domain)) = aor_of(request) else {
            tracing::info!(peer = %job.peer.addr, "REGISTER without a user in To: 400");
            return reply(400, None);
        };
        if !self.serves(&domain) {
            tracing::info!(peer = %job.peer.addr, %domain, "REGISTER for a domain we do not serve: 404");
            return reply(404, Some("Domain Not Served Here"));
        }
        let now = std::time::Instant::now();
        let verdict = match request.headers.get("Authorization") {
            None => Verdict::Challenge {
                stale: false,
                reason: "no credentials",
            },
            Some(header) => {
                let directory = self.directory();
                self.auth.lock().unwrap().verify(
                    header,
                    "REGISTER",
                    job.peer.addr.ip(),
                    |name| directory.secret(name),
                    now,
                )
            }
        };
        match verdict {
            Verdict::Authenticated(name)
                if name == user && self.directory().user(&name).is_some() => {}
            Verdict::Authenticated(name) => {
                tracing::info!(peer = %job.peer.addr, %name, aor = %user, "REGISTER for someone else's AOR: 403");
                crate::metrics::auth_failed("wrong aor");
                return reply(403, Some("Credentials Do Not Match The AOR"));
            }
            Verdict::Challenge { stale, reason } => {
                if reason != "no credentials" {
                    tracing::info!(peer = %job.peer.addr, aor = %user, %reason, "REGISTER not authenticated: 401");
                }
                let mut response = reply(401, None);
                for challenge in self.auth.lock().unwrap().challenges(stale, now) {
                    response.headers.push("WWW-Authenticate", &challenge);
                }
                return response;
            }
            Verdict::Throttled => {
                crate::metrics::auth_failed("throttled");
                return reply(403, Some("Too Many Failed Attempts"));
            }
        }
        let parsed = match RegisterRequest::from_request(request, job.peer) {
            Ok(parsed) => parsed,
            Err(reason) => {
                tracing::info!(peer = %job.peer.addr, aor = %user, %reason, "malformed REGISTER: 400");
                let mut response = reply(400, None);
                response
                    .headers
                    .push("Warning", &format!("399 switchboard \"{reason}\""));
                return response;
            }
        };
        let wall = unix_now();
        // Another gateway sharing the store may change the AOR between our
        // read and our write: the write then fails and we start again.
        let mut conflicts = 0;
        let (current, outcome) = loop {
            let (current, version) = match self.store.snapshot(&user, wall).await {
                Ok(read) => read,
                Err(error) => {
                    tracing::error!(%error, aor = %user, "location store unavailable: 500");
                    return reply(500, None);
                }
            };
            if parsed.contacts.is_empty() && !parsed.wildcard {
                // A query: the current bindings, changed nothing.
                return self.ok(request, &current, wall);
            }
            let outcome = register(&self.policy, &current, &parsed, wall);
            let Outcome::Registered { changes, .. } = &outcome else {
                break (current, outcome);
            };
            match self.store.apply_if(&user, changes, wall, version).await {
                Ok(true) => break (current, outcome),
                Ok(false) if conflicts < MAX_CONFLICTS => conflicts += 1,
                Ok(false) => {
                    tracing::warn!(aor = %user, conflicts, "AOR changed under every attempt: 500");
                    let mut response = reply(500, None);
                    response.headers.push("Retry-After", "1");
                    return response;
                }
                Err(error) => {
                    tracing::error!(%error, aor = %user, "location store unavailable: 500");
                    return reply(500, None);
                }
            }
        };
        match outcome {
            Outcome::Registered { bindings, .. } => {
                let before = current.iter().filter(|b| b.expires_at > wall).count();
                crate::metrics::bindings_changed(bindings.len() as i64 - before as i64);
                tracing::debug!(aor = %user, peer = %job.peer.addr, contacts = bindings.len(), "registered");
                self.ok(request, &bindings, wall)
            }
            Outcome::IntervalTooBrief { min_expires } => {
                tracing::info!(aor = %user, min_expires, "REGISTER interval too brief: 423");
                let mut response = reply(423, None);
                response
                    .headers
                    .push("Min-Expires", &min_expires.to_string());
                response
            }
            Outcome::TooManyContacts { max } => {
                tracing::info!(aor = %user, max, "REGISTER would exceed max_contacts: 403");
                reply(403, Some(&format!("Too Many Contacts (at most {max})")))
            }
            Outcome::OutOfOrder => {
                tracing::info!(aor = %user, "REGISTER out of order: 500");
                reply(500, Some("Out Of Order"))
            }
            Outcome::Invalid(reason) => {
                tracing::info!(aor = %user, %reason, "invalid REGISTER: 400");
                let mut response = reply(400, None);
                response
                    .headers
                    .push("Warning", &format!("399 switchboard \"{reason}\""));
                response
            }
        }
    }

    fn ok(&self, request: &Request, bindings: &[super::Binding], now: u64) -> Response {
        let mut response = response_for(request, 200, "OK", Some(&new_tag()));
        for contact in contact_headers(bindings, now) {
            response.headers.push("Contact", &contact);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::framing::parse_message;
    use crate::sip::message::SipMessage;
    use crate::sip::transaction::Transport;

    fn job(user: &str, display: &str, n: u64) -> RegisterJob {
        let text = format!(
            "REGISTER sip:sb SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{n}\r\nFrom: <sip:{user}@sb>;tag={n}\r\nTo: \"{display}\" <sip:{user}@sb>\r\nCall-ID: c{n}\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
        );
        let Ok(SipMessage::Request(request)) = parse_message(text.as_bytes()) else {
            panic!("a REGISTER")
        };
        RegisterJob {
            tx: ServerTxId::for_tests(n),
            request,
            peer: Peer {
                transport: Transport::Udp,
                addr: "127.0.0.1:5070".parse().unwrap(),
            },
        }
    }

    /// One AOR's REGISTERs always reach the same registrar task (so they
    /// never race); different AORs spread over the tasks.
    #[test]
    fn an_aor_belongs_to_one_task() {
        let (senders, mut receivers): (Vec<_>, Vec<_>) = (0..4).map(|_| mpsc::channel(256)).unzip();
        let jobs = RegisterJobs::new(senders);
        for (n, display) in ["Alice", "alice desk", ""].iter().enumerate() {
            assert!(jobs.try_send(job("alice", display, n as u64)).is_ok());
        }
        let holding: Vec<usize> = receivers.iter().map(|r| r.len()).collect();
        assert_eq!(holding.iter().filter(|&&n| n > 0).count(), 1, "{holding:?}");
        assert_eq!(holding.iter().sum::<usize>(), 3);
        for receiver in &mut receivers {
            while receiver.try_recv().is_ok() {}
        }
        for n in 0..100 {
            assert!(jobs.try_send(job(&format!("user{n}"), "", n)).is_ok());
        }
        let used = receivers.iter().filter(|r| !r.is_empty()).count();
        assert_eq!(used, 4, "100 AORs spread over every task");
    }
}
