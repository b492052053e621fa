//! RFC 3261 §17 transactions, with RFC 6026's Accepted state, as one sans-IO
//! layer: feed it messages and `now`, collect what to send, what happened
//! and when to call back. It owns every live transaction of the endpoint.
//!
//! Deadlines live in a binary heap with lazy deletion: finding the next one
//! and firing the due ones cost O(log n) each, so the cost of a message does
//! not grow with the number of live transactions (tens of thousands at
//! 1,000 calls/s, each lingering up to 32 s).

mod client;
mod server;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::message::{Method, Request, Response, SipMessage, MAGIC_COOKIE};
use super::pending_invites::PendingInvites;
use super::response::response_for;
use client::ClientTx;
use server::ServerTx;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Reliable transports need no retransmissions and no linger timers.
    pub fn reliable(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    /// A URI's `;transport=` value or a listen address's scheme.
    pub fn from_name(name: &str) -> Option<Transport> {
        match name.to_ascii_lowercase().as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            _ => None,
        }
    }

    /// The port a URI without one means (RFC 3261 §19.1.2).
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tls => 5061,
            Transport::Udp | Transport::Tcp => 5060,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        })
    }
}

/// Who is on the other end of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
}

#[derive(Clone, Copy, Debug)]
pub struct Timers {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerTxId(u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientTxId(u64);

#[cfg(test)]
impl ServerTxId {
    /// An id for tests that hand a leg requests without a transaction layer.
    pub fn for_tests(id: u64) -> ServerTxId {
        ServerTxId(id)
    }
}

#[derive(Debug)]
pub struct Transmit {
    pub peer: Peer,
    pub bytes: Vec<u8>,
}

#[derive(Debug)]
pub enum TransactionEvent {
    /// A new request; retransmissions never show up here.
    Request {
        tx: ServerTxId,
        request: Request,
        peer: Peer,
    },
    /// An ACK for a 2xx (its own transaction-less request).
    Ack { request: Request, peer: Peer },
    /// A response to one of our requests; 2xx retransmissions to an INVITE
    /// are passed on so the dialog can ACK them again.
    Response { tx: ClientTxId, response: Response },
    /// Our request got no final response (Timer B or F).
    Timeout { tx: ClientTxId },
    /// The INVITE was cancelled; the CANCEL is already answered 200 and the
    /// TU must now answer the INVITE with 487.
    Cancelled {
        invite_tx: ServerTxId,
        cancel: Request,
    },
    /// Our 2xx to an INVITE was never ACKed (Timer L); the TU should BYE.
    AckTimeout { tx: ServerTxId, call_id: String },
    /// Our request could not be sent at all (RFC 3261 §8.1.3.1: a transport
    /// error counts as a 503 from the next hop).
    Unreachable { tx: ClientTxId },
}

/// A transaction a heap entry points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TxRef {
    Server(ServerTxId),
    Client(ClientTxId),
}

/// Server transaction key (RFC 3261 §17.2.3): branch + sent-by + method,
/// with ACK matching its INVITE. Requests without the magic cookie fall back
/// to Call-ID, CSeq and From tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ServerKey {
    branch: String,
    sent_by: String,
    method: Method,
}

/// Lets go of a transaction's Call-ID in `pending`, once.
fn unpend(pending: &Option<Arc<PendingInvites>>, tx: &mut ServerTx) {
    if let (Some(pending), true) = (pending, tx.pending) {
        pending.release(&tx.call_id);
        tx.pending = false;
    }
}

fn server_key(request: &Request) -> Option<ServerKey> {
    let via = request.top_via().ok()?;
    let method = match request.method {
        Method::Ack => Method::Invite,
        ref other => other.clone(),
    };
    let branch = match via.branch() {
        Some(branch) if branch.starts_with(MAGIC_COOKIE) => branch.to_string(),
        _ => {
            let (cseq, _) = request.cseq().ok()?;
            let from_tag = request.from().ok()?.tag().unwrap_or("").to_string();
            format!("rfc2543:{}:{cseq}:{from_tag}", request.call_id().ok()?)
        }
    };
    Some(ServerKey {
        branch,
        sent_by: via.sent_by().to_ascii_lowercase(),
        method,
    })
}

/// Client transaction key (§17.1.3): branch + CSeq method.
fn client_key(branch: &str, method: &Method) -> (String, Method) {
    let method = match method {
        Method::Ack => Method::Invite,
        other => other.clone(),
    };
    (branch.to_string(), method)
}

pub struct TransactionLayer {
    timers: Timers,
    next_id: u64,
    servers: HashMap<ServerTxId, ServerTx>,
    server_keys: HashMap<ServerKey, ServerTxId>,
    /// INVITE server transactions whose 2xx awaits its ACK, by Call-ID and
    /// CSeq: the ACK has a branch of its own (§17.1.1.3).
    accepted: HashMap<(String, u32), ServerTxId>,
    clients: HashMap<ClientTxId, ClientTx>,
    client_keys: HashMap<(String, Method), ClientTxId>,
    /// Every deadline ever set, earliest first. An entry is stale once its
    /// transaction is gone or has moved its deadline; stale entries are
    /// skipped when they come up.
    deadlines: BinaryHeap<Reverse<(Instant, TxRef)>>,
    /// When the maps were last offered a chance to give memory back.
    last_shrink: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TransactionEvent>,
    /// INVITEs not yet answered finally, for the socket tasks to see.
    pending: Option<Arc<PendingInvites>>,
}

/// How often the maps may shrink after a burst.
const SHRINK_INTERVAL: Duration = Duration::from_secs(5);

impl TransactionLayer {
    pub fn new(timers: Timers) -> Self {
        TransactionLayer {
            timers,
            next_id: 1,
            servers: HashMap::new(),
            server_keys: HashMap::new(),
            accepted: HashMap::new(),
            clients: HashMap::new(),
            client_keys: HashMap::new(),
            deadlines: BinaryHeap::new(),
            last_shrink: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            pending: None,
        }
    }

    /// Publishes the Call-IDs of INVITEs still waiting for a final answer
    /// in `pending` (shared with the socket tasks and the other shards).
    pub fn with_pending_invites(mut self, pending: Arc<PendingInvites>) -> Self {
        self.pending = Some(pending);
        self
    }

    /// Heap entries, stale ones included: bounded by a few per transaction.
    pub fn scheduled(&self) -> usize {
        self.deadlines.len()
    }

    fn schedule(&mut self, tx: TxRef) {
        let deadline = match tx {
            TxRef::Server(id) => self.servers.get(&id).and_then(ServerTx::deadline),
            TxRef::Client(id) => self.clients.get(&id).and_then(ClientTx::deadline),
        };
        if let Some(at) = deadline {
            self.deadlines.push(Reverse((at, tx)));
        }
    }

    /// Live transactions, for leak checks.
    pub fn len(&self) -> usize {
        self.servers.len() + self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn handle_input(&mut self, message: SipMessage, peer: Peer, now: Instant) {
        match message {
            SipMessage::Request(request) => self.handle_request(request, peer, now),
            SipMessage::Response(response) => self.handle_response(response, now),
        }
    }

    fn handle_request(&mut self, mut request: Request, peer: Peer, now: Instant) {
        stamp_received(&mut request, peer);
        let Some(key) = server_key(&request) else {
            return;
        };
        if request.method == Method::Ack {
            if let Some(id) = self.server_keys.get(&key).copied() {
                if let Some(tx) = self.servers.get_mut(&id) {
                    if tx.on_ack_for_non_2xx(now, &self.timers) {
                        self.schedule(TxRef::Server(id));
                        return;
                    }
                }
            }
            // An ACK for a 2xx has its own branch: match the Accepted INVITE
            // by dialog identifiers to stop retransmitting the 2xx.
            let call_id = request.call_id().unwrap_or_default();
            let cseq = request.cseq().map(|(n, _)| n).unwrap_or(0);
            if let Some(id) = self.accepted.get(&(call_id.to_string(), cseq)).copied() {
                self.remove_server(id);
            }
            self.events
                .push_back(TransactionEvent::Ack { request, peer });
            return;
        }
        if let Some(id) = self.server_keys.get(&key).copied() {
            // Retransmission: resend whatever we last said, or the 100
            // Trying that was not due yet.
            if let Some(tx) = self.servers.get_mut(&id) {
                let bytes = match tx.last_response.clone() {
                    Some(bytes) => Some(bytes),
                    None => tx.send_trying(),
                };
                if let Some(bytes) = bytes {
                    self.transmits.push_back(Transmit { peer, bytes });
                }
            }
            return;
        }
        if request.method == Method::Cancel {
            self.handle_cancel(request, key, peer, now);
            return;
        }
        let id = ServerTxId(self.allocate());
        let is_invite = request.method == Method::Invite;
        let mut tx = ServerTx::new(key.clone(), peer, &request, now, &self.timers);
        if is_invite {
            // Sent only if the TU has not answered within TRYING_DELAY.
            tx.trying = Some(response_for(&request, 100, "Trying", None));
            if let Some(pending) = &self.pending {
                pending.hold(&tx.call_id);
                tx.pending = true;
            }
        }
        self.servers.insert(id, tx);
        self.server_keys.insert(key, id);
        self.schedule(TxRef::Server(id));
        self.events.push_back(TransactionEvent::Request {
            tx: id,
            request,
            peer,
        });
    }

    fn handle_cancel(&mut self, cancel: Request, key: ServerKey, peer: Peer, now: Instant) {
        let invite_key = ServerKey {
            method: Method::Invite,
            ..key.clone()
        };
        let invite = self.server_keys.get(&invite_key).copied();
        let id = ServerTxId(self.allocate());
        self.servers.insert(
            id,
            ServerTx::new(key.clone(), peer, &cancel, now, &self.timers),
        );
        self.server_keys.insert(key, id);
        match invite {
            Some(invite_tx) => {
                let pending = self
                    .servers
                    .get(&invite_tx)
                    .is_some_and(|tx| tx.awaiting_final());
                let ok = response_for(&cancel, 200, "OK", Some(&super::response::new_tag()));
                self.send_response(id, ok, now);
                if pending {
                    self.events
                        .push_back(TransactionEvent::Cancelled { invite_tx, cancel });
                }
            }
            None => {
                let unknown = response_for(
                    &cancel,
                    481,
                    "Call/Transaction Does Not Exist",
                    Some(&super::response::new_tag()),
                );
                self.send_response(id, unknown, now);
            }
        }
    }

    fn handle_response(&mut self, response: Response, now: Instant) {
        let Ok(via) = response.top_via() else { return };
        let Some(branch) = via.branch() else { return };
        let Ok((_, method)) = response.cseq() else {
            return;
        };
        let Some(id) = self.client_keys.get(&client_key(branch, &method)).copied() else {
            return;
        };
        let Some(tx) = self.clients.get_mut(&id) else {
            return;
        };
        let outcome = tx.on_response(&response, now, &self.timers);
        if let Some(bytes) = outcome.send {
            self.transmits.push_back(Transmit {
                peer: tx.peer,
                bytes,
            });
        }
        if outcome.deliver {
            self.events
                .push_back(TransactionEvent::Response { tx: id, response });
        }
        if outcome.terminated {
            self.remove_client(id);
        } else {
            self.schedule(TxRef::Client(id));
        }
    }

    /// Answers a server transaction.
    pub fn send_response(&mut self, id: ServerTxId, response: Response, now: Instant) {
        let Some(tx) = self.servers.get_mut(&id) else {
            tracing::debug!(
                ?id,
                status = response.status,
                "response for a finished transaction dropped"
            );
            return;
        };
        let bytes = response.to_bytes();
        let peer = tx.peer;
        if response.status >= 200 {
            unpend(&self.pending, tx);
        }
        let terminated = tx.on_response_sent(response.status, bytes.clone(), now, &self.timers);
        let awaits_ack = tx.awaits_ack();
        self.transmits.push_back(Transmit { peer, bytes });
        if terminated {
            self.remove_server(id);
            return;
        }
        if awaits_ack {
            if let Ok(call_id) = response.call_id() {
                let cseq = response.cseq().map(|(n, _)| n).unwrap_or(0);
                self.accepted.insert((call_id.to_string(), cseq), id);
            }
        }
        self.schedule(TxRef::Server(id));
    }

    /// Whether `request` is a retransmission of one whose server
    /// transaction we hold.
    pub fn is_known_request(&self, request: &Request) -> bool {
        server_key(request).is_some_and(|key| self.server_keys.contains_key(&key))
    }

    /// Answers and forgets at once (RFC 3261 §8.2.7's stateless UAS): for
    /// challenges, which a retransmitted request may just as well get
    /// again, fresh. Keeps nothing for 32 s per challenged request.
    pub fn respond_statelessly(&mut self, id: ServerTxId, response: Response) {
        let Some(tx) = self.servers.get(&id) else {
            return;
        };
        let peer = tx.peer;
        self.transmits.push_back(Transmit {
            peer,
            bytes: response.to_bytes(),
        });
        self.remove_server(id);
    }

    /// Ends a server transaction whose owner is gone without answering: a
    /// pending INVITE gets a 500 so the caller is not left ringing.
    pub fn abandon(&mut self, id: ServerTxId, now: Instant) {
        let Some(tx) = self.servers.get_mut(&id) else {
            return;
        };
        match tx.abandoned_response() {
            Some(response) => self.send_response(id, response, now),
            None => {
                if tx.awaiting_final() {
                    self.remove_server(id);
                }
            }
        }
    }

    /// Sends a request in a new client transaction. The request must carry
    /// a top Via with a fresh magic-cookie branch.
    pub fn send_request(&mut self, request: Request, peer: Peer, now: Instant) -> ClientTxId {
        let id = ClientTxId(self.allocate());
        let branch = request
            .top_via()
            .ok()
            .and_then(|via| via.branch().map(str::to_string))
            .unwrap_or_default();
        if request.method == Method::Cancel {
            // §9.1: the INVITE gets 64*T1 more for its 487 after a CANCEL.
            if let Some(invite) = self.client_keys.get(&client_key(&branch, &Method::Invite)) {
                let invite = *invite;
                if let Some(tx) = self.clients.get_mut(&invite) {
                    tx.cancelled(now, &self.timers);
                    self.schedule(TxRef::Client(invite));
                }
            }
        }
        let tx = ClientTx::new(request, peer, now, &self.timers);
        self.transmits.push_back(Transmit {
            peer,
            bytes: tx.bytes.clone(),
        });
        self.client_keys
            .insert(client_key(&branch, &tx.request.method), id);
        self.clients.insert(id, tx);
        self.schedule(TxRef::Client(id));
        id
    }

    /// The transport could not deliver this transaction's request (a TCP
    /// connection that never opened): it ends now as unreachable.
    pub fn unreachable(&mut self, id: ClientTxId) {
        if self.clients.contains_key(&id) {
            self.remove_client(id);
            self.events
                .push_back(TransactionEvent::Unreachable { tx: id });
        }
    }

    /// Cancels a pending INVITE we sent (only once it has had a provisional
    /// response, §9.1). Returns the CANCEL's own transaction.
    pub fn cancel(&mut self, invite: ClientTxId, now: Instant) -> Option<ClientTxId> {
        let tx = self.clients.get(&invite)?;
        let cancel = tx.cancel_request()?;
        let peer = tx.peer;
        Some(self.send_request(cancel, peer, now))
    }

    /// Sends outside any transaction (the ACK for a 2xx).
    pub fn send_stateless(&mut self, message: SipMessage, peer: Peer) {
        self.transmits.push_back(Transmit {
            peer,
            bytes: message.to_bytes(),
        });
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, tx))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            match tx {
                TxRef::Server(id) => self.server_timeout(id, at, now),
                TxRef::Client(id) => self.client_timeout(id, at, now),
            }
        }
        if self.deadlines.is_empty() {
            // The last transaction of a burst ended: no later timeout will
            // come to shrink the maps, so do it now.
            self.shrink();
        } else {
            self.maybe_shrink(now);
        }
    }

    fn server_timeout(&mut self, id: ServerTxId, at: Instant, now: Instant) {
        let Some(tx) = self.servers.get_mut(&id) else {
            return;
        };
        if tx.deadline() != Some(at) {
            return; // stale: the transaction moved on since
        }
        let outcome = tx.on_timeout(now, &self.timers);
        if let Some(bytes) = outcome.resend {
            self.transmits.push_back(Transmit {
                peer: tx.peer,
                bytes,
            });
        }
        if outcome.ack_timeout {
            self.events.push_back(TransactionEvent::AckTimeout {
                tx: id,
                call_id: tx.call_id.clone(),
            });
        }
        if let Some(response) = outcome.give_up {
            // Nobody answered this INVITE in time: end it properly.
            self.send_response(id, response, now);
            return;
        }
        if outcome.terminated {
            self.remove_server(id);
        } else {
            self.schedule(TxRef::Server(id));
        }
    }

    fn client_timeout(&mut self, id: ClientTxId, at: Instant, now: Instant) {
        let Some(tx) = self.clients.get_mut(&id) else {
            return;
        };
        if tx.deadline() != Some(at) {
            return;
        }
        let outcome = tx.on_timeout(now, &self.timers);
        if outcome.resend {
            self.transmits.push_back(Transmit {
                peer: tx.peer,
                bytes: tx.bytes.clone(),
            });
        }
        if outcome.timed_out {
            self.events.push_back(TransactionEvent::Timeout { tx: id });
        }
        if outcome.terminated {
            self.remove_client(id);
        } else {
            self.schedule(TxRef::Client(id));
        }
    }

    /// Lets the maps return memory after a burst, at most every few seconds.
    fn maybe_shrink(&mut self, now: Instant) {
        if self
            .last_shrink
            .is_some_and(|last| now.duration_since(last) < SHRINK_INTERVAL)
        {
            return;
        }
        self.last_shrink = Some(now);
        self.shrink();
    }

    /// Gives back what the maps and the heap hold beyond twice their
    /// contents, once that is most of their capacity.
    fn shrink(&mut self) {
        fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
            if map.capacity() > 64 && map.len() < map.capacity() / 4 {
                map.shrink_to(map.len() * 2);
            }
        }
        shrink(&mut self.servers);
        shrink(&mut self.server_keys);
        shrink(&mut self.accepted);
        shrink(&mut self.clients);
        shrink(&mut self.client_keys);
        if self.deadlines.capacity() > 64 && self.deadlines.len() < self.deadlines.capacity() / 4 {
            self.deadlines.shrink_to(self.deadlines.len() * 2);
        }
    }

    /// The earliest moment [`handle_timeout`](Self::handle_timeout) has
    /// work. Stale entries on top are dropped on the way.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, tx))) = self.deadlines.peek().copied() {
            let current = match tx {
                TxRef::Server(id) => self.servers.get(&id).and_then(ServerTx::deadline),
                TxRef::Client(id) => self.clients.get(&id).and_then(ClientTx::deadline),
            };
            if current == Some(at) {
                return Some(at);
            }
            self.deadlines.pop();
        }
        // Only stale entries were left: the burst is over and no timeout
        // will come to shrink the maps, so do it now.
        self.shrink();
        None
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TransactionEvent> {
        self.events.pop_front()
    }

    fn allocate(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn remove_server(&mut self, id: ServerTxId) {
        if let Some(mut tx) = self.servers.remove(&id) {
            unpend(&self.pending, &mut tx);
            self.server_keys.remove(&tx.key);
            if tx.is_invite {
                let key = (tx.call_id, tx.cseq);
                if self.accepted.get(&key) == Some(&id) {
                    self.accepted.remove(&key);
                }
            }
        }
    }

    fn remove_client(&mut self, id: ClientTxId) {
        if let Some(tx) = self.clients.remove(&id) {
            let branch = tx
                .request
                .top_via()
                .ok()
                .and_then(|via| via.branch().map(str::to_string))
                .unwrap_or_default();
            self.client_keys
                .remove(&client_key(&branch, &tx.request.method));
        }
    }
}

/// RFC 3261 §18.2.1 and RFC 3581: note where a UDP request really came from
/// so responses copied from it route back through NAT.
fn stamp_received(request: &mut Request, peer: Peer) {
    let Some(first) = request.headers.first_mut("Via") else {
        return;
    };
    let parts = super::uri::split_unquoted(first, b',');
    let Some(top) = parts.first() else { return };
    let Ok(mut via) = super::message::Via::parse(top) else {
        return;
    };
    let rest: Vec<String> = parts[1..].iter().map(|s| s.to_string()).collect();
    let source_ip = peer.addr.ip();
    let sent_by_matches = matches!(via.host, super::uri::Host::Ip(ip) if ip == source_ip);
    let mut changed = false;
    if !sent_by_matches {
        via.set_param("received", Some(source_ip.to_string()));
        changed = true;
    }
    if via.param("rport") == Some(None) {
        via.set_param("rport", Some(peer.addr.port().to_string()));
        via.set_param("received", Some(source_ip.to_string()));
        changed = true;
    }
    if changed {
        let mut value = via.to_string();
        for other in rest {
            value.push(',');
            value.push_str(&other);
        }
        *first = value;
    }
}
