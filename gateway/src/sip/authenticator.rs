//! The server side of digest authentication (RFC 3261 §22, RFC 7616,
//! RFC 8760), sans-IO: challenges with fresh nonces (one per configured
//! algorithm), verification against stored HA1s, nonces that expire
//! (`stale=true` when the credentials were right), nonce counts that must
//! grow (a replayed `Authorization` is challenged again), and throttling of
//! failures per source address and per username, so a brute-force run gets
//! cheap refusals and one log line per burst.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use super::digest::{Algorithm, Credentials};

/// Most nonces remembered at once; beyond, the oldest go (their clients
/// get `stale=true` and retry with a new one).
const MAX_NONCES: usize = 200_000;
/// Most sources or usernames with failures remembered at once.
const MAX_FAILURE_KEYS: usize = 100_000;
/// The window failures are counted in.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct AuthSettings {
    pub realm: String,
    /// Challenge algorithms, in the order challenges are sent.
    pub algorithms: Vec<Algorithm>,
    pub nonce_ttl: Duration,
    /// Failures per window before a source or username is refused.
    pub max_failures: u32,
}

/// What a username may authenticate with: HA1 per algorithm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    pub ha1_md5: Option<String>,
    pub ha1_sha256: Option<String>,
}

impl Secret {
    /// From a password: HA1s for both algorithms.
    pub fn from_password(username: &str, realm: &str, password: &str) -> Secret {
        let text = format!("{username}:{realm}:{password}");
        Secret {
            ha1_md5: Some(Algorithm::Md5.hex(&text)),
            ha1_sha256: Some(Algorithm::Sha256.hex(&text)),
        }
    }

    fn ha1(&self, algorithm: Algorithm) -> Option<&str> {
        match algorithm {
            Algorithm::Md5 => self.ha1_md5.as_deref(),
            Algorithm::Sha256 => self.ha1_sha256.as_deref(),
        }
    }
}

/// The outcome of checking a request's credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated as this username.
    Authenticated(String),
    /// Send a new challenge. `stale`: the credentials were right but the
    /// nonce had expired, so the client may retry without asking its user.
    Challenge { stale: bool, reason: &'static str },
    /// Refuse without a challenge (403): too many failures.
    Throttled,
}

struct NonceState {
    issued: Instant,
    /// Highest nonce count accepted so far (0: none yet).
    last_count: u32,
}

#[derive(Clone, Copy)]
struct Failures {
    since: Instant,
    count: u32,
    /// The burst was logged already.
    logged: bool,
}

pub struct Authenticator {
    settings: AuthSettings,
    nonces: HashMap<String, NonceState>,
    /// Nonces by issue time, oldest first: expiry sweeps pop the front.
    issued: VecDeque<(Instant, String)>,
    failures_by_source: HashMap<IpAddr, Failures>,
    failures_by_user: HashMap<String, Failures>,
}

impl Authenticator {
    pub fn new(settings: AuthSettings) -> Authenticator {
        Authenticator {
            settings,
            nonces: HashMap::new(),
            issued: VecDeque::new(),
            failures_by_source: HashMap::new(),
            failures_by_user: HashMap::new(),
        }
    }

    pub fn realm(&self) -> &str {
        &self.settings.realm
    }

    /// Header values for a 401/407: one challenge per algorithm, each with
    /// its own fresh nonce.
    pub fn challenges(&mut self, stale: bool, now: Instant) -> Vec<String> {
        self.sweep(now);
        let algorithms = self.settings.algorithms.clone();
        algorithms
            .into_iter()
            .map(|algorithm| {
                let nonce = self.new_nonce(now);
                let mut value = format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", qop=\"auth\", algorithm={}",
                    self.settings.realm,
                    algorithm.name()
                );
                if stale {
                    value.push_str(", stale=true");
                }
                value
            })
            .collect()
    }

    fn new_nonce(&mut self, now: Instant) -> String {
        let nonce = format!("{:032x}", rand::rng().random::<u128>());
        if self.nonces.len() >= MAX_NONCES {
            if let Some((_, oldest)) = self.issued.pop_front() {
                self.nonces.remove(&oldest);
            }
        }
        self.nonces.insert(
            nonce.clone(),
            NonceState {
                issued: now,
                last_count: 0,
            },
        );
        self.issued.push_back((now, nonce.clone()));
        nonce
    }

    fn sweep(&mut self, now: Instant) {
        while let Some((issued, _)) = self.issued.front() {
            if now.duration_since(*issued) < self.settings.nonce_ttl {
                break;
            }
            if let Some((_, nonce)) = self.issued.pop_front() {
                self.nonces.remove(&nonce);
            }
        }
    }

    /// Whether `source` is refused for now, without looking at anything else.
    pub fn is_throttled(&mut self, source: IpAddr, now: Instant) -> bool {
        Self::over(
            &mut self.failures_by_source,
            &source,
            self.settings.max_failures,
            now,
        )
    }

    /// Checks the credentials of a `method` request from `source`, with
    /// `lookup` giving the secret of a username.
    pub fn verify(
        &mut self,
        header: &str,
        method: &str,
        source: IpAddr,
        lookup: impl Fn(&str) -> Option<Secret>,
        now: Instant,
    ) -> Verdict {
        self.sweep(now);
        let max = self.settings.max_failures;
        if Self::over(&mut self.failures_by_source, &source, max, now) {
            return Verdict::Throttled;
        }
        let credentials = match Credentials::parse(header) {
            Ok(credentials) => credentials,
            Err(_) => return self.failed(source, None, "malformed credentials", now),
        };
        if Self::over(&mut self.failures_by_user, &credentials.username, max, now) {
            return Verdict::Throttled;
        }
        if credentials.realm != self.settings.realm {
            return self.failed(source, Some(&credentials.username), "wrong realm", now);
        }
        if !self.settings.algorithms.contains(&credentials.algorithm) {
            return self.failed(
                source,
                Some(&credentials.username),
                "algorithm not offered",
                now,
            );
        }
        if credentials.qop.is_none() {
            // Every challenge offers qop=auth; answering without it is the
            // RFC 2069 form, which has no nonce count to stop replays.
            return self.failed(
                source,
                Some(&credentials.username),
                "no qop (RFC 2069 digest)",
                now,
            );
        }
        let Some(secret) = lookup(&credentials.username) else {
            return self.failed(source, Some(&credentials.username), "unknown user", now);
        };
        let Some(ha1) = secret.ha1(credentials.algorithm) else {
            return self.failed(
                source,
                Some(&credentials.username),
                "no secret for the algorithm",
                now,
            );
        };
        if !credentials.verify(ha1, method) {
            return self.failed(source, Some(&credentials.username), "wrong password", now);
        }
        let ttl = self.settings.nonce_ttl;
        let Some(state) = self.nonces.get_mut(&credentials.nonce) else {
            // Right password, nonce gone: the client retries on its own.
            return Verdict::Challenge {
                stale: true,
                reason: "stale nonce",
            };
        };
        if now.duration_since(state.issued) >= ttl {
            return Verdict::Challenge {
                stale: true,
                reason: "stale nonce",
            };
        }
        let Some(count) = credentials.nonce_count() else {
            return self.failed(
                source,
                Some(&credentials.username),
                "malformed nonce count",
                now,
            );
        };
        if count <= state.last_count {
            return self.failed(
                source,
                Some(&credentials.username),
                "nonce count replayed",
                now,
            );
        }
        state.last_count = count;
        Verdict::Authenticated(credentials.username)
    }

    fn failed(
        &mut self,
        source: IpAddr,
        username: Option<&str>,
        reason: &'static str,
        now: Instant,
    ) -> Verdict {
        crate::metrics::auth_failed(reason);
        let max = self.settings.max_failures;
        Self::count_failure(&mut self.failures_by_source, source, max, now, || {
            format!("source {source}")
        });
        if let Some(name) = username {
            Self::count_failure(
                &mut self.failures_by_user,
                name.to_string(),
                max,
                now,
                || format!("username {name:?}"),
            );
        }
        Verdict::Challenge {
            stale: false,
            reason,
        }
    }

    fn count_failure<K: std::hash::Hash + Eq>(
        map: &mut HashMap<K, Failures>,
        key: K,
        max: u32,
        now: Instant,
        describe: impl Fn() -> String,
    ) {
        if map.len() >= MAX_FAILURE_KEYS {
            map.retain(|_, f| now.duration_since(f.since) < FAILURE_WINDOW);
            if map.len() >= MAX_FAILURE_KEYS {
                return;
            }
        }
        let entry = map.entry(key).or_insert(Failures {
            since: now,
            count: 0,
            logged: false,
        });
        if now.duration_since(entry.since) >= FAILURE_WINDOW {
            *entry = Failures {
                since: now,
                count: 0,
                logged: false,
            };
        }
        entry.count += 1;
        if entry.count >= max && !entry.logged {
            entry.logged = true;
            tracing::warn!(
                who = %describe(),
                failures = entry.count,
                window_secs = FAILURE_WINDOW.as_secs(),
                "authentication failures: refusing for the rest of the minute"
            );
        }
    }

    fn over<K: std::hash::Hash + Eq>(
        map: &mut HashMap<K, Failures>,
        key: &K,
        max: u32,
        now: Instant,
    ) -> bool {
        match map.get(key) {
            Some(f) if now.duration_since(f.since) >= FAILURE_WINDOW => {
                map.remove(key);
                false
            }
            Some(f) => f.count >= max,
            None => false,
        }
    }

    /// Nonces held, for leak checks.
    pub fn nonces(&self) -> usize {
        self.nonces.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::digest::Challenge;

    fn authenticator(algorithms: &[Algorithm]) -> Authenticator {
        Authenticator::new(AuthSettings {
            realm: "sb".into(),
            algorithms: algorithms.to_vec(),
            nonce_ttl: Duration::from_secs(300),
            max_failures: 5,
        })
    }

    fn lookup(name: &str) -> Option<Secret> {
        (name == "alice").then(|| Secret::from_password("alice", "sb", "pw"))
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn answer(challenge: &str, password: &str, nc: u32) -> String {
        Challenge::parse(challenge)
            .unwrap()
            .authorization("alice", password, "REGISTER", "sip:sb", "cn", nc)
    }

    #[test]
    fn right_password_passes_once_per_nonce_count() {
        let mut auth = authenticator(&[Algorithm::Sha256, Algorithm::Md5]);
        let t0 = Instant::now();
        let challenges = auth.challenges(false, t0);
        assert_eq!(challenges.len(), 2);
        assert!(
            challenges[0].contains("algorithm=SHA-256") && challenges[1].contains("algorithm=MD5")
        );
        for challenge in &challenges {
            let header = answer(challenge, "pw", 1);
            assert_eq!(
                auth.verify(&header, "REGISTER", IP, lookup, t0),
                Verdict::Authenticated("alice".into())
            );
            // The same Authorization again is a replay.
            assert!(matches!(
                auth.verify(&header, "REGISTER", IP, lookup, t0),
                Verdict::Challenge {
                    stale: false,
                    reason: "nonce count replayed"
                }
            ));
            let next = answer(challenge, "pw", 2);
            assert!(matches!(
                auth.verify(&next, "REGISTER", IP, lookup, t0),
                Verdict::Authenticated(_)
            ));
        }
    }

    /// The right password in the RFC 2069 form (no qop, so no nonce
    /// count) could be replayed at will: refused.
    #[test]
    fn credentials_without_qop_are_refused() {
        let mut auth = authenticator(&[Algorithm::Md5]);
        let t0 = Instant::now();
        let challenge = auth.challenges(false, t0).remove(0);
        let downgraded = challenge.replace(", qop=\"auth\"", "");
        assert_ne!(challenge, downgraded);
        let header = answer(&downgraded, "pw", 1);
        assert!(!header.contains("qop"), "{header}");
        assert!(matches!(
            auth.verify(&header, "REGISTER", IP, lookup, t0),
            Verdict::Challenge {
                stale: false,
                reason: "no qop (RFC 2069 digest)"
            }
        ));
    }

    #[test]
    fn expired_nonce_with_the_right_password_is_stale() {
        let mut auth = authenticator(&[Algorithm::Md5]);
        let t0 = Instant::now();
        let challenge = auth.challenges(false, t0).remove(0);
        let later = t0 + Duration::from_secs(301);
        assert!(matches!(
            auth.verify(&answer(&challenge, "pw", 1), "REGISTER", IP, lookup, later),
            Verdict::Challenge { stale: true, .. }
        ));
        assert!(auth.challenges(true, later)[0].ends_with("stale=true"));
        assert_eq!(auth.nonces(), 1, "the expired nonce was swept");
        // A wrong password on an expired nonce is not stale: it is wrong.
        assert!(matches!(
            auth.verify(
                &answer(&challenge, "nope", 1),
                "REGISTER",
                IP,
                lookup,
                later
            ),
            Verdict::Challenge {
                stale: false,
                reason: "wrong password"
            }
        ));
    }

    #[test]
    fn brute_force_is_throttled_per_source_then_forgiven() {
        let mut auth = authenticator(&[Algorithm::Md5]);
        let t0 = Instant::now();
        let challenge = auth.challenges(false, t0).remove(0);
        for attempt in 0..5 {
            let verdict = auth.verify(
                &answer(&challenge, &format!("guess{attempt}"), 1),
                "REGISTER",
                IP,
                lookup,
                t0,
            );
            assert!(
                matches!(verdict, Verdict::Challenge { stale: false, .. }),
                "{verdict:?}"
            );
        }
        // Even the right password is refused now, without digest work.
        assert_eq!(
            auth.verify(&answer(&challenge, "pw", 1), "REGISTER", IP, lookup, t0),
            Verdict::Throttled
        );
        assert!(auth.is_throttled(IP, t0));
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(
            auth.verify(&answer(&challenge, "pw", 1), "REGISTER", other, lookup, t0),
            Verdict::Throttled,
            "the username is throttled too, from anywhere"
        );
        let later = t0 + FAILURE_WINDOW;
        assert!(!auth.is_throttled(IP, later));
        let fresh = auth.challenges(false, later).remove(0);
        assert!(matches!(
            auth.verify(&answer(&fresh, "pw", 1), "REGISTER", IP, lookup, later),
            Verdict::Authenticated(_)
        ));
    }

    #[test]
    fn unknown_users_wrong_realms_and_garbage_are_challenged() {
        let mut auth = authenticator(&[Algorithm::Md5]);
        let t0 = Instant::now();
        let challenge = auth.challenges(false, t0).remove(0);
        let bob = Challenge::parse(&challenge)
            .unwrap()
            .authorization("bob", "pw", "REGISTER", "sip:sb", "c", 1);
        assert!(matches!(
            auth.verify(&bob, "REGISTER", IP, lookup, t0),
            Verdict::Challenge {
                reason: "unknown user",
                ..
            }
        ));
        let other_realm = answer(&challenge, "pw", 1).replace("realm=\"sb\"", "realm=\"x\"");
        assert!(matches!(
            auth.verify(&other_realm, "REGISTER", IP, lookup, t0),
            Verdict::Challenge {
                reason: "wrong realm",
                ..
            }
        ));
        assert!(matches!(
            auth.verify("Basic YWxpY2U6cHc=", "REGISTER", IP, lookup, t0),
            Verdict::Challenge {
                reason: "malformed credentials",
                ..
            }
        ));
    }
}
