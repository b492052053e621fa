//! What everyone else reads about the outbound registrations: each one's
//! spec, status and resolved registrar, indexed by id and by extension so
//! routing an INVITE never walks them, with per-state counts kept as they
//! change.

use std::collections::HashMap;
use std::sync::RwLock;

use super::client::{State, Status};
use super::manager::RegistrationSpec;
use crate::sip::transaction::Peer;

/// What others read about a registration.
#[derive(Clone, Debug)]
pub struct Entry {
    pub spec: RegistrationSpec,
    pub status: Status,
    /// Where its requests go, once resolved.
    pub peer: Option<Peer>,
}

/// Every registration's current state, shared with the endpoint (routing
/// the PBX's calls), calls (dialing through one) and the API. Indexed so
/// an INVITE never walks the registrations.
#[derive(Default)]
pub struct Registry {
    inner: RwLock<Indexed>,
}

#[derive(Default)]
struct Indexed {
    entries: HashMap<String, Entry>,
    /// Registration ids by the extension they register (usually one).
    by_username: HashMap<String, Vec<String>>,
    /// How many are in_progress, successful, failed.
    counts: [usize; 3],
}

fn slot(state: State) -> usize {
    match state {
        State::InProgress => 0,
        State::Successful => 1,
        State::Failed => 2,
    }
}

impl Registry {
    pub fn get(&self, id: &str) -> Option<Entry> {
        self.inner.read().unwrap().entries.get(id).cloned()
    }

    pub fn all(&self) -> Vec<Entry> {
        let mut all: Vec<Entry> = self
            .inner
            .read()
            .unwrap()
            .entries
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        all
    }

    /// The registration an INVITE from `source` for `user` is meant for:
    /// our registered contact (user = the registration's id), or its AOR's
    /// user, sent by its registrar.
    pub fn for_incoming(&self, user: &str, source: std::net::IpAddr) -> Option<Entry> {
        let inner = self.inner.read().unwrap();
        let from_registrar = |e: &&Entry| e.peer.is_some_and(|p| p.addr.ip() == source);
        if let Some(entry) = inner.entries.get(user).filter(from_registrar) {
            return Some(entry.clone());
        }
        inner
            .by_username
            .get(user)?
            .iter()
            .filter_map(|id| inner.entries.get(id))
            .find(from_registrar)
            .cloned()
    }

    pub(super) fn set(&self, entry: Entry) {
        let mut inner = self.inner.write().unwrap();
        let id = entry.spec.id.clone();
        inner.counts[slot(entry.status.state)] += 1;
        inner
            .by_username
            .entry(entry.spec.username.clone())
            .or_default()
            .push(id.clone());
        if let Some(old) = inner.entries.insert(id.clone(), entry) {
            inner.counts[slot(old.status.state)] -= 1;
            inner.unindex(&old.spec.username, &id);
        }
    }

    pub(super) fn update(&self, id: &str, change: impl FnOnce(&mut Entry)) {
        let mut inner = self.inner.write().unwrap();
        let Some(entry) = inner.entries.get_mut(id) else {
            return;
        };
        let before = entry.status.state;
        change(entry);
        let after = entry.status.state;
        inner.counts[slot(before)] -= 1;
        inner.counts[slot(after)] += 1;
    }

    pub(super) fn remove(&self, id: &str) {
        let mut inner = self.inner.write().unwrap();
        if let Some(old) = inner.entries.remove(id) {
            inner.counts[slot(old.status.state)] -= 1;
            inner.unindex(&old.spec.username, id);
        }
    }

    pub(super) fn count_by_state(&self) -> [(State, usize); 3] {
        let counts = self.inner.read().unwrap().counts;
        [State::InProgress, State::Successful, State::Failed].map(|s| (s, counts[slot(s)]))
    }
}

impl Indexed {
    fn unindex(&mut self, username: &str, id: &str) {
        if let Some(ids) = self.by_username.get_mut(username) {
            if let Some(at) = ids.iter().position(|x| x == id) {
                ids.swap_remove(at);
            }
            if ids.is_empty() {
                self.by_username.remove(username);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::uri::SipUri;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::SystemTime;

    fn entry(id: &str, username: &str, registrar: [u8; 4], state: State) -> Entry {
        Entry {
            spec: RegistrationSpec {
                id: id.into(),
                proxy: SipUri::parse("sip:pbx.test").unwrap(),
                username: username.into(),
                password: "x".into(),
                auth_user: None,
                outbound_proxy: None,
                expires: 3600,
                flow: "echo".into(),
                status_callback: None,
            },
            status: Status {
                state,
                code: 0,
                reason: String::new(),
                changed_at: SystemTime::now(),
                next_attempt: None,
                granted_expires: None,
            },
            peer: Some(Peer {
                transport: crate::sip::transaction::Transport::Udp,
                addr: SocketAddr::from((registrar, 5060)),
            }),
        }
    }

    #[test]
    fn incoming_calls_find_their_registration_by_contact_or_extension_from_its_registrar() {
        let registry = Registry::default();
        registry.set(entry("pbx-a", "1001", [10, 0, 0, 1], State::Successful));
        registry.set(entry("pbx-b", "1001", [10, 0, 0, 2], State::InProgress));
        let from = |ip: [u8; 4]| IpAddr::V4(Ipv4Addr::from(ip));
        assert_eq!(
            registry
                .for_incoming("pbx-a", from([10, 0, 0, 1]))
                .unwrap()
                .spec
                .id,
            "pbx-a"
        );
        assert!(registry
            .for_incoming("pbx-a", from([10, 0, 0, 9]))
            .is_none());
        assert_eq!(
            registry
                .for_incoming("1001", from([10, 0, 0, 2]))
                .unwrap()
                .spec
                .id,
            "pbx-b"
        );
        assert!(registry.for_incoming("1002", from([10, 0, 0, 2])).is_none());

        registry.update("pbx-b", |e| e.status.state = State::Failed);
        let counts = registry.count_by_state();
        assert_eq!(counts.map(|(_, n)| n), [0, 1, 1]);
        registry.remove("pbx-a");
        assert!(registry.for_incoming("1001", from([10, 0, 0, 1])).is_none());
        assert_eq!(registry.count_by_state().map(|(_, n)| n), [0, 0, 1]);
        // Replaced under the same id with another extension: re-indexed.
        registry.set(entry("pbx-b", "2002", [10, 0, 0, 2], State::Successful));
        assert!(registry.for_incoming("1001", from([10, 0, 0, 2])).is_none());
        assert!(registry.for_incoming("2002", from([10, 0, 0, 2])).is_some());
        assert_eq!(registry.count_by_state().map(|(_, n)| n), [0, 1, 0]);
    }
}
