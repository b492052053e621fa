//! One outbound registration as a sans-IO state machine: the gateway as an
//! extension of a PBX. REGISTER with digest (401/407), refresh at half the
//! granted expiry, `Min-Expires` obeyed after a 423, failures retried with
//! capped exponential backoff and full jitter (so a thousand registrations
//! do not retry in step), 503 `Retry-After` honoured, a dropped TCP
//! connection re-registered at once, keep-alives to hold NAT bindings open,
//! and an un-REGISTER when told to stop. Feed it responses, failures and the
//! clock; take requests, keep-alives, status changes and its next deadline.

use std::time::{Duration, Instant, SystemTime};

use rand::Rng;

use crate::sip::digest::Challenge;
use crate::sip::message::{Method, Request, Response};
use crate::sip::response::{new_branch, new_call_id, new_tag};
use crate::sip::transaction::Transport;
use crate::sip::uri::SipUri;

/// Shortest and longest pause before retrying a failed registration.
const BACKOFF_MIN: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Refresh this long before the binding lapses at the latest.
const REFRESH_MARGIN: Duration = Duration::from_secs(5);
/// How soon after its TCP connection drops a registration tries again.
const RECONNECT_SPREAD: Duration = Duration::from_secs(2);
/// Keep-alive interval (RFC 5626 suggests ~30 s for UDP NAT bindings).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(30);
/// Challenges answered in a row before the credentials count as wrong: a
/// second 401 to an answered challenge (not stale) means they are.
const MAX_CHALLENGES: u32 = 1;

/// What an operator sees of a registration (Voximplant's model).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    InProgress,
    Successful,
    Failed,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::InProgress => "in_progress",
            State::Successful => "successful",
            State::Failed => "failed",
        }
    }
}

/// The registration's status with the last SIP outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    /// Last final status code (0: no answer; 503 for a transport error).
    pub code: u16,
    pub reason: String,
    /// When `state` last changed (wall clock, for the API and callbacks).
    pub changed_at: SystemTime,
    /// When the next REGISTER goes out.
    pub next_attempt: Option<Instant>,
    /// Expiry the registrar granted, seconds.
    pub granted_expires: Option<u32>,
}

/// What a registration needs to know about itself.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The address-of-record: `sip:username@domain`.
    pub aor: SipUri,
    /// The Request-URI: `sip:domain` (with its port/transport).
    pub registrar: SipUri,
    pub transport: Transport,
    /// Digest username (`auth_user`, else the username) and password.
    pub auth_user: String,
    pub password: String,
    /// Expiry we ask for.
    pub expires: u32,
}

/// Something for the shell to do.
#[derive(Debug)]
pub enum Output {
    /// Send this REGISTER in a new client transaction.
    Register(Request),
    /// Send a keep-alive (CRLF) to the registrar.
    KeepAlive,
    /// The status changed from `previous`.
    Changed { previous: State, status: Status },
}

pub struct Client {
    settings: Settings,
    contact: SipUri,
    /// Our address for the Via.
    via: String,
    call_id: String,
    from_tag: String,
    cseq: u32,
    /// Expiry to ask for next (raised by a 423's Min-Expires).
    asking: u32,
    status: Status,
    /// The REGISTER in flight (its CSeq), if any.
    in_flight: Option<u32>,
    /// The challenge to answer next, and how many we answered in a row.
    challenge: Option<(Challenge, bool)>,
    challenges_in_row: u32,
    nonce_count: u32,
    /// Consecutive failures, for the backoff.
    failures: u32,
    next_register: Option<Instant>,
    next_keepalive: Option<Instant>,
    /// Stopping: the next REGISTER is an un-REGISTER, then nothing.
    stopping: bool,
    stopped: bool,
    outputs: std::collections::VecDeque<Output>,
}

impl Client {
    /// A client that registers at once.
    pub fn new(settings: Settings, contact: SipUri, via: String, now: Instant) -> Client {
        let asking = settings.expires;
        let host = contact.host.to_string();
        Client {
            settings,
            contact,
            via,
            call_id: new_call_id(&host),
            from_tag: new_tag(),
            cseq: 0,
            asking,
            status: Status {
                state: State::InProgress,
                code: 0,
                reason: "not registered yet".into(),
                changed_at: SystemTime::now(),
                next_attempt: Some(now),
                granted_expires: None,
            },
            in_flight: None,
            challenge: None,
            challenges_in_row: 0,
            nonce_count: 0,
            failures: 0,
            next_register: Some(now),
            next_keepalive: None,
            stopping: false,
            stopped: false,
            outputs: Default::default(),
        }
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    pub fn contact(&self) -> &SipUri {
        &self.contact
    }

    /// Done: un-registered (or gave up doing so) after [`Client::stop`].
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.next_register, self.next_keepalive]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_keepalive.is_some_and(|at| at <= now) {
            self.next_keepalive = Some(now + keepalive_interval());
            if self.status.state == State::Successful {
                self.outputs.push_back(Output::KeepAlive);
            }
        }
        if self.next_register.is_some_and(|at| at <= now) && self.in_flight.is_none() {
            self.next_register = None;
            self.send_register(now);
        }
    }

    /// Un-REGISTERs (Expires 0) when registered; stops either way.
    pub fn stop(&mut self, now: Instant) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.next_keepalive = None;
        self.next_register = None;
        if self.status.state == State::Successful && self.in_flight.is_none() {
            self.send_register(now);
        } else if self.in_flight.is_none() {
            self.stopped = true;
        }
    }

    /// The connection the registration used is gone (TCP): register again
    /// on a new one, soon — within [`RECONNECT_SPREAD`], so the many
    /// registrations that shared the connection do not all come back in
    /// the same millisecond.
    pub fn connection_lost(&mut self, now: Instant) {
        if self.settings.transport.reliable() && !self.stopping {
            self.in_flight = None;
            self.set_state(State::InProgress, 503, "connection lost".into(), now);
            let spread = rand::rng().random_range(0..=RECONNECT_SPREAD.as_millis() as u64);
            self.schedule(now + Duration::from_millis(spread), now);
        }
    }

    /// Brings a failed registration's next attempt forward to `at` (its
    /// registrar answered another registration again); keeps the backoff
    /// count, so if it still fails it backs off as before.
    pub fn retry_soon(&mut self, at: Instant) {
        let failed = self.status.state == State::Failed && self.in_flight.is_none();
        if failed && !self.stopping && self.next_register.is_some_and(|next| next > at) {
            self.schedule(at, at);
        }
    }

    fn schedule(&mut self, at: Instant, _now: Instant) {
        self.next_register = Some(at);
        self.status.next_attempt = Some(at);
    }

    fn send_register(&mut self, now: Instant) {
        self.cseq += 1;
        let expires = if self.stopping { 0 } else { self.asking };
        let mut request = Request {
            method: Method::Register,
            uri: self.settings.registrar.clone(),
            headers: Default::default(),
            body: Vec::new(),
        };
        let transport = self.settings.transport.to_string().to_ascii_uppercase();
        request.headers.push(
            "Via",
            &format!(
                "SIP/2.0/{transport} {};branch={};rport",
                self.via,
                new_branch()
            ),
        );
        request.headers.push("Max-Forwards", "70");
        request.headers.push(
            "From",
            &format!("<{}>;tag={}", self.settings.aor, self.from_tag),
        );
        request
            .headers
            .push("To", &format!("<{}>", self.settings.aor));
        request.headers.push("Call-ID", &self.call_id);
        request
            .headers
            .push("CSeq", &format!("{} REGISTER", self.cseq));
        request
            .headers
            .push("Contact", &format!("<{}>;expires={expires}", self.contact));
        request.headers.push("Expires", &expires.to_string());
        request.headers.push("User-Agent", "switchboard");
        request.headers.push("Allow", crate::call::leg::ALLOW);
        if let Some((challenge, proxy)) = &self.challenge {
            self.nonce_count += 1;
            let uri = self.settings.registrar.to_string();
            let value = challenge.authorization(
                &self.settings.auth_user,
                &self.settings.password,
                "REGISTER",
                &uri,
                &new_tag(),
                self.nonce_count,
            );
            let name = if *proxy {
                "Proxy-Authorization"
            } else {
                "Authorization"
            };
            request.headers.push(name, &value);
        }
        self.in_flight = Some(self.cseq);
        self.status.next_attempt = None;
        if self.status.state != State::Successful && !self.stopping {
            // Still trying: the API shows when it went out.
            self.status.next_attempt = Some(now);
        }
        self.outputs.push_back(Output::Register(request));
    }

    /// A final response to our REGISTER.
    pub fn handle_response(&mut self, response: &Response, now: Instant) {
        let Ok((cseq, Method::Register)) = response.cseq() else {
            return;
        };
        if Some(cseq) != self.in_flight || response.status < 200 {
            return;
        }
        self.in_flight = None;
        if self.stopping {
            if matches!(response.status, 401 | 407) && self.take_challenge(response) {
                self.send_register(now);
                return;
            }
            self.stopped = true;
            return;
        }
        match response.status {
            200..=299 => self.registered(response, now),
            401 | 407 => {
                if self.take_challenge(response) {
                    self.send_register(now);
                } else {
                    let reason =
                        format!("{}: the registrar refused our credentials", response.reason);
                    self.failed(response.status, reason, None, now);
                }
            }
            423 => {
                let min = response
                    .headers
                    .get("Min-Expires")
                    .and_then(|v| v.trim().parse::<u32>().ok());
                match min {
                    Some(min) if min > self.asking => {
                        tracing::info!(
                            min_expires = min,
                            "423 Interval Too Brief: asking again with Min-Expires"
                        );
                        self.asking = min;
                        self.send_register(now);
                    }
                    _ => self.failed(423, response.reason.clone(), None, now),
                }
            }
            status => {
                let retry_after = response
                    .headers
                    .get("Retry-After")
                    .and_then(|v| v.split(';').next())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                self.failed(status, response.reason.clone(), retry_after, now);
            }
        }
    }

    /// Our REGISTER got no answer (`unreachable`: could not be sent).
    pub fn handle_failure(&mut self, cseq: u32, unreachable: bool, now: Instant) {
        if Some(cseq) != self.in_flight {
            return;
        }
        self.in_flight = None;
        if self.stopping {
            self.stopped = true;
            return;
        }
        let (code, reason) = if unreachable {
            (503, "registrar unreachable".to_string())
        } else {
            (408, "no answer from the registrar".to_string())
        };
        self.failed(code, reason, None, now);
    }

    /// Keeps the challenge to answer with the next REGISTER; false when it
    /// cannot be answered or the same credentials failed already.
    fn take_challenge(&mut self, response: &Response) -> bool {
        let proxy = response.status == 407;
        let header = if proxy {
            "Proxy-Authenticate"
        } else {
            "WWW-Authenticate"
        };
        let Some(challenge) = Challenge::best(response.headers.get_all(header)) else {
            return false;
        };
        if self.challenges_in_row >= MAX_CHALLENGES && !challenge.stale {
            return false;
        }
        self.challenges_in_row += 1;
        self.nonce_count = 0;
        self.challenge = Some((challenge, proxy));
        true
    }

    fn registered(&mut self, response: &Response, now: Instant) {
        let granted = granted_expiry(response, &self.contact).unwrap_or(self.asking);
        self.challenges_in_row = 0;
        self.failures = 0;
        self.status.granted_expires = Some(granted);
        if granted == 0 {
            // The registrar took nothing: treat as a refusal.
            return self.failed(
                response.status,
                "registrar granted no expiry".into(),
                None,
                now,
            );
        }
        let granted_for = Duration::from_secs(u64::from(granted));
        // Half the expiry, less up to a tenth at random: registrations made
        // together drift apart instead of refreshing in step forever.
        let spread = rand::rng().random_range(0..=granted_for.as_millis() as u64 / 10);
        let refresh = (granted_for / 2)
            .saturating_sub(Duration::from_millis(spread))
            .min(granted_for.saturating_sub(REFRESH_MARGIN));
        let at = now + refresh.max(Duration::from_secs(1));
        self.schedule(at, now);
        self.next_keepalive = Some(now + keepalive_interval());
        let reason = response.reason.clone();
        self.set_state(State::Successful, response.status, reason, now);
        self.status.next_attempt = Some(at);
    }

    fn failed(&mut self, code: u16, reason: String, retry_after: Option<Duration>, now: Instant) {
        self.failures += 1;
        self.challenge = None;
        self.challenges_in_row = 0;
        self.next_keepalive = None;
        let backoff = retry_after.unwrap_or_else(|| backoff(self.failures));
        let at = now + backoff;
        self.set_state(State::Failed, code, reason, now);
        self.schedule(at, now);
    }

    fn set_state(&mut self, state: State, code: u16, reason: String, _now: Instant) {
        let previous = self.status.state;
        self.status.code = code;
        self.status.reason = reason;
        if previous != state {
            self.status.state = state;
            self.status.changed_at = SystemTime::now();
            self.outputs.push_back(Output::Changed {
                previous,
                status: self.status.clone(),
            });
        }
    }
}

/// The keep-alive interval, 80–100 % of [`KEEPALIVE_EVERY`] at random
/// (RFC 5626 §4.4.1), so registrations made together keep apart.
fn keepalive_interval() -> Duration {
    let ms = KEEPALIVE_EVERY.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(ms * 4 / 5..=ms))
}

/// Jittered exponential backoff after `failures` (≥ 1) in a row: random in
/// [min, min * 2^failures], capped — even the first retry is spread, so
/// registrations that failed together do not retry together.
pub(crate) fn backoff(failures: u32) -> Duration {
    let ceiling = BACKOFF_MIN
        .saturating_mul(1u32 << failures.clamp(1, 16))
        .min(BACKOFF_MAX);
    let ms = rand::rng().random_range(BACKOFF_MIN.as_millis() as u64..=ceiling.as_millis() as u64);
    Duration::from_millis(ms)
}

/// The expiry a 2xx grants our contact: its Contact's `expires`, else the
/// `Expires` header.
fn granted_expiry(response: &Response, ours: &SipUri) -> Option<u32> {
    let ours_text = ours.to_string();
    for value in response.headers.get_all_split("Contact") {
        let Ok(contact) = crate::sip::uri::NameAddr::parse(value) else {
            continue;
        };
        let same = contact.uri.to_string() == ours_text
            || (contact.uri.user == ours.user
                && contact.uri.host == ours.host
                && contact.uri.port == ours.port);
        if same {
            if let Some(Some(expires)) = crate::sip::uri::find_param(&contact.params, "expires") {
                return expires.parse().ok();
            }
        }
    }
    response
        .headers
        .get("Expires")
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
