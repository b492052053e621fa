//! Who owns what the endpoint receives: calls by their task, dialogs by
//! Call-ID and our tag, pending INVITEs by server transaction, our requests
//! by client transaction. Sans-IO: plain maps, every lookup by key, nothing
//! walks all calls or transactions per message.

use std::collections::HashMap;

use tokio::sync::mpsc;

use crate::call::{CallInput, CallRef, LegId};
use crate::sip::message::Method;
use crate::sip::transaction::{ClientTxId, ServerTxId};

/// A dialog as we route it: its Call-ID and our own tag, which is unique
/// among our dialogs (we chose it).
pub type DialogKey = (String, String);

/// Who sent a client transaction, and which request it was.
#[derive(Clone, Debug)]
pub struct ClientOwner {
    pub call: CallRef,
    pub leg: LegId,
    pub cseq: u32,
    pub method: Method,
}

struct CallEntry {
    inputs: mpsc::Sender<CallInput>,
    dialogs: Vec<DialogKey>,
    /// Call-ID and From tag of the INVITE that started the call, to spot
    /// the same request arriving by another path (a merged request).
    inbound: Option<(String, String)>,
    /// The caller's INVITE transaction, answered by whoever ends the call
    /// if the call could not.
    invite: Option<ServerTxId>,
}

#[derive(Default)]
pub struct Routes {
    next_call: u64,
    /// Shards number calls in turn (shard i of n: i+n, i+2n…), so a
    /// `CallRef` names one call in the whole process.
    stride: u64,
    calls: HashMap<CallRef, CallEntry>,
    tasks: HashMap<tokio::task::Id, CallRef>,
    dialogs: HashMap<DialogKey, (CallRef, LegId)>,
    inbound: HashMap<(String, String), CallRef>,
    invites: HashMap<ServerTxId, (CallRef, LegId)>,
    clients: HashMap<ClientTxId, ClientOwner>,
}

impl Routes {
    pub fn for_shard(shard: super::Shard) -> Self {
        Self {
            next_call: shard.index as u64,
            stride: shard.count as u64,
            ..Self::default()
        }
    }

    fn next_ref(&mut self) -> CallRef {
        self.next_call += self.stride.max(1);
        CallRef(self.next_call)
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Registers a call started by an INVITE (`tx`, Call-ID, From tag) whose
    /// leg answers with `local_tag`.
    pub fn admit(
        &mut self,
        call_id: &str,
        from_tag: &str,
        local_tag: &str,
        tx: ServerTxId,
        inputs: mpsc::Sender<CallInput>,
    ) -> CallRef {
        let call = self.next_ref();
        let dialog = (call_id.to_string(), local_tag.to_string());
        let inbound = (call_id.to_string(), from_tag.to_string());
        self.dialogs.insert(dialog.clone(), (call, LegId::CALLER));
        self.inbound.insert(inbound.clone(), call);
        self.invites.insert(tx, (call, LegId::CALLER));
        self.calls.insert(
            call,
            CallEntry {
                inputs,
                dialogs: vec![dialog],
                inbound: Some(inbound),
                invite: Some(tx),
            },
        );
        call
    }

    /// Registers a call we place; its dialogs are added as its legs form.
    pub fn place(&mut self, inputs: mpsc::Sender<CallInput>) -> CallRef {
        let call = self.next_ref();
        self.calls.insert(
            call,
            CallEntry {
                inputs,
                dialogs: Vec::new(),
                inbound: None,
                invite: None,
            },
        );
        call
    }

    pub fn attach_task(&mut self, task: tokio::task::Id, call: CallRef) {
        self.tasks.insert(task, call);
    }

    pub fn add_dialog(&mut self, call: CallRef, leg: LegId, call_id: String, local_tag: String) {
        let Some(entry) = self.calls.get_mut(&call) else {
            return;
        };
        let key = (call_id, local_tag);
        entry.dialogs.push(key.clone());
        self.dialogs.insert(key, (call, leg));
    }

    /// Forgets a call whose task ended; returns its INVITE transaction so
    /// the caller can make sure it was answered.
    pub fn remove_task(&mut self, task: tokio::task::Id) -> Option<(CallRef, Option<ServerTxId>)> {
        let call = self.tasks.remove(&task)?;
        let entry = self.calls.remove(&call)?;
        for key in entry.dialogs {
            if self
                .dialogs
                .get(&key)
                .is_some_and(|(owner, _)| *owner == call)
            {
                self.dialogs.remove(&key);
            }
        }
        if let Some(key) = entry.inbound {
            self.inbound.remove(&key);
        }
        if let Some(tx) = entry.invite {
            self.invites.remove(&tx);
        }
        Some((call, entry.invite))
    }

    pub fn dialog(&self, call_id: &str, local_tag: &str) -> Option<(CallRef, LegId)> {
        // The key is owned; building it costs two small copies per request.
        self.dialogs
            .get(&(call_id.to_string(), local_tag.to_string()))
            .copied()
    }

    /// An INVITE with this Call-ID and From tag already started a call.
    pub fn is_known_invite(&self, call_id: &str, from_tag: &str) -> bool {
        self.inbound
            .contains_key(&(call_id.to_string(), from_tag.to_string()))
    }

    pub fn invite(&self, tx: ServerTxId) -> Option<(CallRef, LegId)> {
        self.invites.get(&tx).copied()
    }

    pub fn add_client(&mut self, tx: ClientTxId, owner: ClientOwner) {
        self.clients.insert(tx, owner);
    }

    pub fn client(&self, tx: ClientTxId) -> Option<&ClientOwner> {
        self.clients.get(&tx)
    }

    pub fn take_client(&mut self, tx: ClientTxId) -> Option<ClientOwner> {
        self.clients.remove(&tx)
    }

    pub fn sender(&self, call: CallRef) -> Option<&mpsc::Sender<CallInput>> {
        self.calls.get(&call).map(|entry| &entry.inputs)
    }

    pub fn senders(&self) -> impl Iterator<Item = &mpsc::Sender<CallInput>> {
        self.calls.values().map(|entry| &entry.inputs)
    }

    /// Map sizes, for leak checks: (calls, dialogs, invites, clients).
    pub fn sizes(&self) -> (usize, usize, usize, usize) {
        (
            self.calls.len(),
            self.dialogs.len(),
            self.invites.len(),
            self.clients.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_and_everything_it_owns_go_together() {
        let mut routes = Routes::default();
        let (inputs, _rx) = mpsc::channel(1);
        let tx = crate::sip::transaction::ServerTxId::for_tests(7);
        let call = routes.admit("c1", "from", "ours", tx, inputs);
        let task = tokio::spawn(async {});
        let id = task.id();
        routes.attach_task(id, call);
        routes.add_dialog(call, LegId(1), "c2".into(), "uac-tag".into());
        assert_eq!(routes.dialog("c1", "ours"), Some((call, LegId::CALLER)));
        assert_eq!(routes.dialog("c2", "uac-tag"), Some((call, LegId(1))));
        assert_eq!(routes.dialog("c1", "other"), None);
        assert!(routes.is_known_invite("c1", "from"));
        assert_eq!(routes.invite(tx), Some((call, LegId::CALLER)));
        assert_eq!(routes.remove_task(id), Some((call, Some(tx))));
        assert_eq!(routes.sizes(), (0, 0, 0, 0));
        assert!(!routes.is_known_invite("c1", "from"));
    }
}
