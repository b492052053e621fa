//! Our registrar (RFC 3261 §10.3, RFC 5626 basics): what a REGISTER asks,
//! what it changes in an address-of-record's bindings, and what to answer.
//! The rules are a pure function of the current bindings, the request and
//! the wall clock (expiries are shared with other gateways through the
//! location store, so they are in Unix seconds); storage is
//! [`store::LocationStore`]'s, the I/O is [`service`]'s.

pub mod redis_store;
pub mod service;
pub mod store;
#[cfg(test)]
mod tests;
pub mod users;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::sip::message::Request;
use crate::sip::transaction::{Peer, Transport};
use crate::sip::uri::{find_param, NameAddr};

/// One registered contact of an address-of-record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The Contact URI as the phone registered it.
    pub contact: String,
    /// Unix seconds when it lapses.
    pub expires_at: u64,
    pub call_id: String,
    pub cseq: u32,
    /// Where the REGISTER came from: where calls to this contact go, since
    /// a phone behind NAT registers a Contact nobody can reach.
    pub source: SocketAddr,
    pub transport: Transport,
    /// RFC 5626 `+sip.instance` and `reg-id`: the same phone registering
    /// again replaces its binding instead of adding one.
    pub instance: Option<String>,
    pub reg_id: Option<u32>,
    pub user_agent: Option<String>,
}

impl Binding {
    /// The key a binding is stored under: the phone (instance + reg-id)
    /// when it says which it is, else its Contact URI.
    pub fn key(&self) -> String {
        match (&self.instance, self.reg_id) {
            (Some(instance), Some(reg_id)) => format!("instance:{instance};reg-id={reg_id}"),
            (Some(instance), None) => format!("instance:{instance}"),
            _ => format!("contact:{}", self.contact),
        }
    }

    pub fn seconds_left(&self, now: u64) -> u64 {
        self.expires_at.saturating_sub(now)
    }

    /// Where to send a call to this contact.
    pub fn peer(&self) -> Peer {
        Peer {
            transport: self.transport,
            addr: self.source,
        }
    }
}

/// The operator's limits on registrations.
#[derive(Clone, Debug)]
pub struct Policy {
    pub min_expires: u32,
    pub max_expires: u32,
    /// The longest binding over TCP or TLS: calls to the phone go over the
    /// connection it registered on, which is closed after this long idle
    /// (`limits.tcp_idle_timeout_secs`, less a margin). A shorter grant has
    /// the phone's refresh keep that connection open.
    pub max_expires_reliable: u32,
    pub default_expires: u32,
    pub max_contacts: usize,
}

/// One Contact of a REGISTER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactRequest {
    pub uri: String,
    pub expires: Option<u32>,
    pub instance: Option<String>,
    pub reg_id: Option<u32>,
}

/// What a REGISTER asks, taken out of the message.
#[derive(Clone, Debug)]
pub struct RegisterRequest {
    /// `Contact: *`: remove every binding (with `Expires: 0`).
    pub wildcard: bool,
    pub contacts: Vec<ContactRequest>,
    pub expires: Option<u32>,
    pub call_id: String,
    pub cseq: u32,
    pub source: SocketAddr,
    pub transport: Transport,
    pub user_agent: Option<String>,
}

impl RegisterRequest {
    pub fn from_request(request: &Request, peer: Peer) -> Result<RegisterRequest, String> {
        let (cseq, _) = request.cseq().map_err(|e| e.to_string())?;
        let call_id = request.call_id().map_err(|e| e.to_string())?.to_string();
        let expires = match request.headers.get("Expires") {
            Some(value) => Some(
                value
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| format!("Expires `{value}` is not a number"))?,
            ),
            None => None,
        };
        let mut wildcard = false;
        let mut contacts = Vec::new();
        for value in request.headers.get_all_split("Contact") {
            if value.trim() == "*" {
                wildcard = true;
                continue;
            }
            let contact = NameAddr::parse(value).map_err(|e| format!("Contact: {e}"))?;
            let expires = match find_param(&contact.params, "expires").flatten() {
                Some(text) => Some(
                    text.parse::<u32>()
                        .map_err(|_| format!("Contact expires `{text}` is not a number"))?,
                ),
                None => None,
            };
            let instance = find_param(&contact.params, "+sip.instance")
                .flatten()
                .map(|value| value.trim_matches('"').to_string());
            let reg_id = find_param(&contact.params, "reg-id")
                .flatten()
                .and_then(|value| value.parse().ok());
            contacts.push(ContactRequest {
                uri: contact.uri.to_string(),
                expires,
                instance,
                reg_id,
            });
        }
        if contacts.len() > 64 {
            return Err("more than 64 Contacts".into());
        }
        Ok(RegisterRequest {
            wildcard,
            contacts,
            expires,
            call_id,
            cseq,
            source: peer.addr,
            transport: peer.transport,
            user_agent: request.headers.get("User-Agent").map(|ua| {
                let ua = ua.trim();
                ua.chars().take(128).collect()
            }),
        })
    }
}

/// A change to one binding of an address-of-record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Add or replace the binding with this key.
    Put(Binding),
    /// Remove the binding with this key.
    Remove(String),
}

/// What to answer a REGISTER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 200 OK listing `bindings` (every current one, after `changes`).
    Registered {
        changes: Vec<Change>,
        bindings: Vec<Binding>,
    },
    /// 423 Interval Too Brief with Min-Expires.
    IntervalTooBrief { min_expires: u32 },
    /// 403: the request would leave more than `max` contacts.
    TooManyContacts { max: usize },
    /// 500: a request older than one already applied (RFC 3261 §10.3 step 7).
    OutOfOrder,
    /// 400 with the reason.
    Invalid(String),
}

/// Applies a REGISTER to the AOR's `current` bindings at `now` (Unix
/// seconds), by RFC 3261 §10.3 steps 6-8.
pub fn register(
    policy: &Policy,
    current: &[Binding],
    request: &RegisterRequest,
    now: u64,
) -> Outcome {
    let live: Vec<&Binding> = current.iter().filter(|b| b.expires_at > now).collect();
    if request.wildcard {
        if !request.contacts.is_empty() || request.expires != Some(0) {
            return Outcome::Invalid("Contact: * needs Expires: 0 and no other Contact".into());
        }
        for binding in &live {
            if binding.call_id == request.call_id && request.cseq <= binding.cseq {
                return Outcome::OutOfOrder;
            }
        }
        let changes = current.iter().map(|b| Change::Remove(b.key())).collect();
        return Outcome::Registered {
            changes,
            bindings: Vec::new(),
        };
    }
    let mut changes = Vec::new();
    let mut result: Vec<Binding> = live.iter().map(|b| (*b).clone()).collect();
    for contact in &request.contacts {
        let asked = contact
            .expires
            .or(request.expires)
            .unwrap_or(policy.default_expires);
        if asked != 0 && asked < policy.min_expires {
            return Outcome::IntervalTooBrief {
                min_expires: policy.min_expires,
            };
        }
        let longest = match request.transport.reliable() {
            true => policy.max_expires.min(policy.max_expires_reliable),
            false => policy.max_expires,
        };
        let granted = asked.min(longest);
        let binding = Binding {
            contact: contact.uri.clone(),
            expires_at: now + u64::from(granted),
            call_id: request.call_id.clone(),
            cseq: request.cseq,
            source: request.source,
            transport: request.transport,
            instance: contact.instance.clone(),
            reg_id: contact.reg_id,
            user_agent: request.user_agent.clone(),
        };
        let key = binding.key();
        if let Some(index) = result.iter().position(|b| b.key() == key) {
            let existing = &result[index];
            if existing.call_id == request.call_id && request.cseq <= existing.cseq {
                return Outcome::OutOfOrder;
            }
            result.remove(index);
        }
        if granted == 0 {
            changes.push(Change::Remove(key));
        } else {
            result.push(binding.clone());
            changes.push(Change::Put(binding));
        }
    }
    if result.len() > policy.max_contacts && result.len() > live.len() {
        return Outcome::TooManyContacts {
            max: policy.max_contacts,
        };
    }
    // Lapsed bindings go with this change.
    for lapsed in current.iter().filter(|b| b.expires_at <= now) {
        if !changes
            .iter()
            .any(|c| matches!(c, Change::Put(b) if b.key() == lapsed.key()))
        {
            changes.push(Change::Remove(lapsed.key()));
        }
    }
    Outcome::Registered {
        changes,
        bindings: result,
    }
}

/// The `Contact` values of a 200 OK: every binding with its seconds left.
pub fn contact_headers(bindings: &[Binding], now: u64) -> Vec<String> {
    bindings
        .iter()
        .map(|b| format!("<{}>;expires={}", b.contact, b.seconds_left(now)))
        .collect()
}

/// The user part of an address, for AOR keys: `alice` of `sip:alice@d`.
pub fn aor_of(request: &Request) -> Option<(String, String)> {
    let to = request.to().ok()?;
    let user = to.uri.user_decoded()?;
    if user.is_empty() {
        return None;
    }
    Some((user, to.uri.host.to_string()))
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
