//! The two queues from the sockets to the endpoint. Overload must shed new
//! work, never the work that finishes calls: responses and in-dialog
//! requests (ACK, BYE, re-INVITE, CANCEL) travel on the `urgent` queue,
//! which the endpoint always serves first; requests that would start
//! something new (an INVITE without a To tag, REGISTER, OPTIONS…) travel on
//! the `fresh` queue. When `fresh` is full the socket task answers the
//! request 503 with Retry-After itself: no transaction, no call state, a
//! few microseconds.
//!
//! There is one pair of queues per endpoint shard: a message goes to the
//! shard its Call-ID belongs to ([`crate::endpoint::shards`]); connection
//! events go to every shard, since each keeps its own waiting requests.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::source_limit::SourceLimiter;
use super::Inbound;
use crate::burst_log::BurstLog;
use crate::endpoint::shards::{shard_of, Occupancy};
use crate::overload::Overload;
use crate::sip::message::{Method, Request, SipMessage};
use crate::sip::pending_invites::PendingInvites;
use crate::sip::response::{new_tag, response_for};
use crate::sip::transaction::Peer;

/// In-dialog traffic and responses; when full, UDP drops (the sender
/// retransmits) and TCP readers wait.
pub const URGENT_CAPACITY: usize = 4096;
/// New requests waiting for the endpoint: about a second at the rates this
/// machine sustains, so a stall of the endpoint's worker is absorbed; the
/// endpoint itself refuses what waited longer than `overload_delay_ms`.
pub const FRESH_CAPACITY: usize = 4096;
/// What a shed request is told: try again in this many seconds.
pub const SHED_RETRY_AFTER: &str = "5";
/// The To tag of every 503 that refuses a new call without keeping a
/// transaction starts with this: the caller's ACK for it is recognised at
/// the socket and dropped there, instead of travelling to the endpoint
/// once per refused call.
const SHED_TAG_PREFIX: &str = "shed";

/// The endpoint's ends of both queues.
pub struct InboundQueues {
    pub urgent: mpsc::Receiver<Inbound>,
    pub fresh: mpsc::Receiver<Inbound>,
}

/// One shard's pair of queues, the sockets' end.
struct ShardQueues {
    urgent: mpsc::Sender<Inbound>,
    fresh: mpsc::Sender<Inbound>,
}

/// The sockets' end: clone one per reader task.
#[derive(Clone)]
pub struct InboundSender {
    shards: Arc<[ShardQueues]>,
    shed_log: Arc<BurstLog>,
    limited_log: Arc<BurstLog>,
    overload: Arc<Overload>,
    /// Shared by every socket task; held for a hash lookup per new request.
    limiter: Arc<std::sync::Mutex<SourceLimiter>>,
    /// Set once the endpoint's capacity is known: new INVITEs it cannot
    /// take are then refused before parsing.
    admission: Option<SocketAdmission>,
}

/// What a socket task knows of the endpoint's capacity.
#[derive(Clone)]
pub struct SocketAdmission {
    pub occupancy: Arc<Occupancy>,
    pub max_calls: usize,
    pub pending: Arc<PendingInvites>,
}

/// A datagram screened before parsing ([`InboundSender::screen`]).
pub enum Screened {
    /// Not a new INVITE read from its bytes: parse and deliver it.
    Unread,
    /// A new INVITE that passed overload control (or may be the
    /// retransmission of one taken on): parse and deliver it without
    /// asking again.
    Admitted,
    /// Refused: send these bytes back (a 503).
    Refused(Vec<u8>),
    /// Its source sends more new requests than it may: dropped.
    Limited,
}

/// What became of a message handed to the endpoint.
pub enum Delivery {
    Queued,
    /// The endpoint is behind on new work: send these bytes back (a 503).
    Shed(Vec<u8>),
    /// In-dialog traffic could not be queued (UDP: the sender retransmits).
    Dropped,
    /// The source sent more new requests than its rate allows: no answer,
    /// since answering a flood would double it. Logged here.
    Limited,
    /// The endpoint is gone.
    Closed,
    /// The ACK of a refusal sent without a transaction: nothing to do.
    Absorbed,
}

/// Queues for `shards` endpoint shards; the receivers in shard order.
pub fn queues(
    shards: usize,
    overload: Arc<Overload>,
    limiter: Arc<std::sync::Mutex<SourceLimiter>>,
) -> (InboundSender, Vec<InboundQueues>) {
    queues_with(shards, URGENT_CAPACITY, FRESH_CAPACITY, overload, limiter)
}

pub fn queues_with(
    shards: usize,
    urgent: usize,
    fresh: usize,
    overload: Arc<Overload>,
    limiter: Arc<std::sync::Mutex<SourceLimiter>>,
) -> (InboundSender, Vec<InboundQueues>) {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards.max(1))
        .map(|_| {
            let (urgent_tx, urgent_rx) = mpsc::channel(urgent);
            let (fresh_tx, fresh_rx) = mpsc::channel(fresh);
            (
                ShardQueues {
                    urgent: urgent_tx,
                    fresh: fresh_tx,
                },
                InboundQueues {
                    urgent: urgent_rx,
                    fresh: fresh_rx,
                },
            )
        })
        .unzip();
    (
        InboundSender {
            shards: senders.into(),
            shed_log: Arc::default(),
            limited_log: Arc::default(),
            overload,
            limiter,
            admission: None,
        },
        receivers,
    )
}

/// Whether a request would start new work rather than continue a dialog
/// or a transaction the endpoint already has.
pub fn is_fresh(request: &Request) -> bool {
    if matches!(request.method, Method::Ack | Method::Cancel) {
        return false;
    }
    request.tag_in_to().is_none()
}

impl InboundSender {
    pub fn with_admission(mut self, admission: SocketAdmission) -> Self {
        self.admission = Some(admission);
        self
    }

    /// Looks at a UDP datagram before it is parsed: a new INVITE that finds
    /// every place taken, or that overload control turns away, is refused
    /// from its bytes here, with no parse and no trip to the endpoint. One
    /// whose Call-ID an unanswered INVITE transaction may hold goes on, so
    /// that a retransmission reaches its transaction.
    pub fn screen(&self, datagram: &[u8], peer: Peer) -> Screened {
        let Some(admission) = &self.admission else {
            return Screened::Unread;
        };
        // Unless the shards are turning calls away for want of a place or
        // overload control sheds, the INVITE goes the ordinary way: no need
        // to read it twice.
        let at_capacity = admission.occupancy.refusing(admission.max_calls);
        if !at_capacity && !self.overload.is_shedding() {
            return Screened::Unread;
        }
        let Some(invite) = super::new_invite::read(datagram) else {
            return Screened::Unread;
        };
        if admission.pending.may_hold(invite.call_id()) {
            return Screened::Admitted;
        }
        let (stage, why) = if at_capacity {
            admission.occupancy.no_place_reason(admission.max_calls)
        } else if !self.overload.admit() {
            ("overload", "overloaded")
        } else {
            return Screened::Admitted;
        };
        if !self.allowed(&Method::Invite, peer, Instant::now()) {
            return Screened::Limited;
        }
        if at_capacity {
            admission.occupancy.count_refusal();
        }
        self.note_shed(stage, why, &Method::Invite, peer);
        Screened::Refused(invite.refusal(&shed_tag(), SHED_RETRY_AFTER))
    }

    /// Whether `peer` may send another new request now (the per-source
    /// rate); logs the drops.
    fn allowed(&self, method: &dyn std::fmt::Display, peer: Peer, now: Instant) -> bool {
        let allowed = self
            .limiter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .allow(peer.addr.ip(), now);
        if !allowed {
            crate::metrics::sip_shed("rate");
            if let Some(count) = self.limited_log.note() {
                tracing::warn!(%method, peer = %peer.addr, count, "a source sends more new requests than limits.new_requests_per_ip: dropping them (logged once per 10 s; see switchboard_sip_shed_total)");
            }
        }
        allowed
    }

    /// The queues of the shard that owns this message's Call-ID (a message
    /// without one goes to the first shard, which answers it 400).
    fn shard_for(&self, message: &SipMessage) -> &ShardQueues {
        let call_id = match message {
            SipMessage::Request(request) => request.call_id(),
            SipMessage::Response(response) => response.call_id(),
        };
        let shard = call_id.map_or(0, |id| shard_of(id, self.shards.len()));
        &self.shards[shard]
    }

    /// Queues without waiting (UDP). `admitted`: [`screen`](Self::screen)
    /// let this new INVITE past overload control already (it is not asked
    /// twice).
    pub fn deliver(&self, message: SipMessage, peer: Peer, admitted: bool) -> Delivery {
        if acknowledges_a_refusal(&message) {
            return Delivery::Absorbed;
        }
        let shard = self.shard_for(&message);
        match self.deliver_fresh(shard, message, peer, admitted) {
            Ok(delivery) => delivery,
            Err(inbound) => match shard.urgent.try_send(inbound) {
                Ok(()) => Delivery::Queued,
                Err(mpsc::error::TrySendError::Full(_)) => Delivery::Dropped,
                Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
            },
        }
    }

    /// Queues, waiting for room for in-dialog traffic (TCP: the
    /// connection's reader slows down instead of losing a message it
    /// cannot get back); new requests are still shed when the endpoint is
    /// behind.
    pub async fn deliver_waiting(&self, message: SipMessage, peer: Peer) -> Delivery {
        if acknowledges_a_refusal(&message) {
            return Delivery::Absorbed;
        }
        let shard = self.shard_for(&message);
        match self.deliver_fresh(shard, message, peer, false) {
            Ok(delivery) => delivery,
            Err(inbound) => match shard.urgent.send(inbound).await {
                Ok(()) => Delivery::Queued,
                Err(_) => Delivery::Closed,
            },
        }
    }

    /// Takes a new request: queued on `fresh`, or refused (rate, overload,
    /// queue full). Anything else comes back, stamped, for `urgent`.
    // The message travels inline, as on the queues: boxing it would cost
    // an allocation per message.
    #[allow(clippy::result_large_err)]
    fn deliver_fresh(
        &self,
        shard: &ShardQueues,
        message: SipMessage,
        peer: Peer,
        admitted: bool,
    ) -> Result<Delivery, Inbound> {
        let received = Instant::now();
        let request = match message {
            SipMessage::Request(request) if is_fresh(&request) => request,
            message => {
                return Err(Inbound::Message {
                    message,
                    peer,
                    received,
                })
            }
        };
        if !self.allowed(&request.method, peer, received) {
            return Ok(Delivery::Limited);
        }
        if request.method == Method::Invite && !admitted && !self.overload.admit() {
            return Ok(self.shed(&request, peer, "overload"));
        }
        let inbound = Inbound::Message {
            message: SipMessage::Request(request),
            peer,
            received,
        };
        Ok(match shard.fresh.try_send(inbound) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
            Err(mpsc::error::TrySendError::Full(Inbound::Message {
                message: SipMessage::Request(request),
                ..
            })) => self.shed(&request, peer, "queue"),
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Dropped,
        })
    }

    fn shed(&self, request: &Request, peer: Peer, stage: &'static str) -> Delivery {
        self.note_shed(stage, "overloaded", &request.method, peer);
        Delivery::Shed(shed_response(request))
    }

    /// Counts a refusal at the socket by stage, with one log line per burst.
    fn note_shed(
        &self,
        stage: &'static str,
        why: &str,
        method: &dyn std::fmt::Display,
        peer: Peer,
    ) {
        crate::metrics::sip_shed(stage);
        if let Some(count) = self.shed_log.note() {
            tracing::warn!(%method, peer = %peer.addr, count, "{why}: new requests answered 503 before any work (logged once per 10 s; see switchboard_sip_shed_total)");
        }
    }

    /// Events other than messages (TCP connections opening and closing):
    /// they settle transactions, so they wait for room. False when the
    /// endpoint is gone.
    pub async fn send(&self, inbound: Inbound) -> bool {
        let mut sent = false;
        for (shard, event) in self.connection_event(inbound) {
            sent |= shard.urgent.send(event).await.is_ok();
        }
        sent
    }

    /// As [`send`](Self::send) without waiting; false when not queued.
    pub fn try_send(&self, inbound: Inbound) -> bool {
        let mut sent = false;
        for (shard, event) in self.connection_event(inbound) {
            sent |= shard.urgent.try_send(event).is_ok();
        }
        sent
    }

    /// Who hears of a connection event: requests waiting for a connection
    /// may be in any shard; only the first tells the registrations of a
    /// closed one (once is enough).
    fn connection_event(&self, inbound: Inbound) -> Vec<(&ShardQueues, Inbound)> {
        match inbound {
            Inbound::Connected { peer } => self
                .shards
                .iter()
                .map(|shard| (shard, Inbound::Connected { peer }))
                .collect(),
            Inbound::ConnectFailed { peer } => self
                .shards
                .iter()
                .map(|shard| (shard, Inbound::ConnectFailed { peer }))
                .collect(),
            Inbound::Closed { .. } => vec![(&self.shards[0], inbound)],
            Inbound::Message { ref message, .. } => vec![(self.shard_for(message), inbound)],
        }
    }
}

/// `503 Service Unavailable` with Retry-After, for a request we will not
/// take on now. Sent without a transaction (before any 100 Trying): if it
/// is lost, the INVITE's retransmission is refused the same way.
pub fn shed_response(request: &Request) -> Vec<u8> {
    let mut response = response_for(request, 503, "Service Unavailable", Some(&shed_tag()));
    response.headers.push("Retry-After", SHED_RETRY_AFTER);
    response.to_bytes()
}

/// The To tag of a refusal sent without a transaction: its ACK is
/// recognised by the prefix.
fn shed_tag() -> String {
    format!("{SHED_TAG_PREFIX}{}", new_tag())
}

/// An ACK for one of [`shed_response`]'s 503s (RFC 3261 §17.1.1.3: same
/// To tag).
fn acknowledges_a_refusal(message: &SipMessage) -> bool {
    match message {
        SipMessage::Request(request) if request.method == Method::Ack => request
            .tag_in_to()
            .is_some_and(|tag| tag.starts_with(SHED_TAG_PREFIX)),
        _ => false,
    }
}

/// [`acknowledges_a_refusal`] on a datagram's bytes, before any parsing:
/// offered four times its capacity, the gateway refuses most INVITEs, and
/// each refusal's ACK would otherwise be parsed whole only to be dropped.
/// Reads the start line and the first To header; anything it cannot read
/// that way (not UTF-8, a folded To) is left to the parser, which decides
/// the same.
pub fn is_refusal_ack(datagram: &[u8]) -> bool {
    if !datagram.starts_with(b"ACK ") {
        return false;
    }
    let to = datagram
        .split(|&byte| byte == b'\n')
        .skip(1)
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let colon = line.iter().position(|&byte| byte == b':')?;
            let name = line[..colon].trim_ascii();
            (name.eq_ignore_ascii_case(b"to") || name.eq_ignore_ascii_case(b"t"))
                .then(|| &line[colon + 1..])
        });
    to.and_then(|value| std::str::from_utf8(value).ok())
        .and_then(crate::sip::uri::tag_param)
        .is_some_and(|tag| tag.starts_with(SHED_TAG_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::framing::parse_message;
    use crate::sip::transaction::Transport;

    fn message(method: &str, to_tag: &str) -> SipMessage {
        let text = format!(
            "{method} sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\nFrom: <sip:a@127.0.0.1>;tag=f1\r\nTo: <sip:100@127.0.0.1>{to_tag}\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        );
        parse_message(text.as_bytes()).unwrap()
    }

    const PEER: Peer = Peer {
        transport: Transport::Udp,
        addr: std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::LOCALHOST,
            5070,
        )),
    };

    /// With the fresh queue full, a new INVITE is answered 503 at once
    /// while a BYE and an ACK of existing calls still get through.
    #[test]
    fn new_requests_are_shed_and_dialog_traffic_is_not() {
        let overload = Arc::new(Overload::default());
        let limiter = Arc::new(std::sync::Mutex::new(SourceLimiter::new(0, 1, Vec::new())));
        let (sender, mut queues) = queues_with(1, 8, 1, overload, limiter);
        let queues = &mut queues[0];
        assert!(matches!(
            sender.deliver(message("INVITE", ""), PEER, false),
            Delivery::Queued
        ));
        let Delivery::Shed(bytes) = sender.deliver(message("INVITE", ""), PEER, false) else {
            panic!("a second new INVITE must be shed")
        };
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("SIP/2.0 503 Service Unavailable\r\n"));
        assert!(text.contains("\r\nRetry-After: 5\r\n"));
        assert!(text.contains("\r\nCall-ID: c1\r\n"));
        for (method, tag) in [("BYE", ";tag=x"), ("ACK", ""), ("CANCEL", "")] {
            assert!(matches!(
                sender.deliver(message(method, tag), PEER, false),
                Delivery::Queued
            ));
        }
        assert_eq!(queues.urgent.len(), 3);
        assert_eq!(queues.fresh.len(), 1);
        assert!(queues.fresh.try_recv().is_ok());
        assert!(matches!(
            sender.deliver(message("REGISTER", ""), PEER, false),
            Delivery::Queued
        ));
        // The caller's ACK for the refusal stops at the socket.
        let to = text.lines().find(|line| line.starts_with("To:")).unwrap();
        let tag = to.split("tag=").nth(1).unwrap();
        assert!(tag.starts_with(SHED_TAG_PREFIX), "{text}");
        let ack = message("ACK", &format!(";tag={tag}"));
        assert!(matches!(
            sender.deliver(ack, PEER, false),
            Delivery::Absorbed
        ));
        assert_eq!(queues.urgent.len(), 3, "nothing more queued");
    }

    /// With three shards, a message goes to the one its Call-ID belongs to
    /// (responses and in-dialog requests included); a connection failing
    /// reaches every shard, since any may have requests waiting on it.
    #[test]
    fn messages_go_to_their_call_ids_shard_and_connection_events_to_all() {
        let overload = Arc::new(Overload::default());
        let limiter = Arc::new(std::sync::Mutex::new(SourceLimiter::new(0, 1, Vec::new())));
        let (sender, mut queues) = queues_with(3, 64, 64, overload, limiter);
        for n in 0..30 {
            let call_id = format!("call-{n}");
            let text = |method: &str, to_tag: &str| {
                format!(
                    "{method} sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{n}\r\nFrom: <sip:a@127.0.0.1>;tag=f1\r\nTo: <sip:100@127.0.0.1>{to_tag}\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
                )
            };
            let response = format!(
                "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKr{n}\r\nFrom: <sip:a@127.0.0.1>;tag=f1\r\nTo: <sip:100@127.0.0.1>;tag=t\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            );
            for bytes in [text("INVITE", ""), text("BYE", ";tag=t"), response] {
                let message = parse_message(bytes.as_bytes()).unwrap();
                assert!(matches!(
                    sender.deliver(message, PEER, false),
                    Delivery::Queued
                ));
            }
            let owner = shard_of(&call_id, 3);
            for (index, queue) in queues.iter_mut().enumerate() {
                let fresh = std::iter::from_fn(|| queue.fresh.try_recv().ok()).count();
                let urgent = std::iter::from_fn(|| queue.urgent.try_recv().ok()).count();
                let expected = if index == owner { (1, 2) } else { (0, 0) };
                assert_eq!((fresh, urgent), expected, "{call_id} at shard {index}");
            }
        }
        assert!(sender.try_send(Inbound::ConnectFailed { peer: PEER }));
        for queue in &mut queues {
            assert!(matches!(
                queue.urgent.try_recv(),
                Ok(Inbound::ConnectFailed { .. })
            ));
        }
        assert!(sender.try_send(Inbound::Closed { peer: PEER }));
        assert!(matches!(
            queues[0].urgent.try_recv(),
            Ok(Inbound::Closed { .. })
        ));
        assert!(queues[1].urgent.try_recv().is_err() && queues[2].urgent.try_recv().is_err());
    }

    /// The ACK of a refusal is recognised from its bytes alone; other ACKs,
    /// a `shed` tag anywhere but To's own tag, and other methods are not.
    #[test]
    fn a_refusals_ack_is_known_before_parsing() {
        let ack = |from_tag: &str, to: &str| {
            format!(
                "ACK sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\nFrom: <sip:a@127.0.0.1>;tag={from_tag}\r\n{to}\r\nCall-ID: c1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let SipMessage::Request(invite) = message("INVITE", "") else {
            panic!("a request")
        };
        let refusal = String::from_utf8(shed_response(&invite)).unwrap();
        let to = refusal.lines().find(|l| l.starts_with("To:")).unwrap();
        let cases = [
            (ack("f1", to), true),
            (ack("f1", &to.replacen("To:", "t :", 1)), true),
            (ack("f1", "To: <sip:100@127.0.0.1>;tag=ours"), false),
            (ack("shedf1", "To: <sip:100@127.0.0.1>;tag=ours"), false),
            (
                ack("f1", "To: \"x;tag=shed1\" <sip:100@127.0.0.1>;tag=ours"),
                false,
            ),
            (ack("f1", "To: <sip:100@127.0.0.1;tag=shed1>"), false),
            (ack("f1", to).replace("ACK", "BYE"), false),
        ];
        for (bytes, expected) in cases {
            assert_eq!(is_refusal_ack(bytes.as_bytes()), expected, "{bytes}");
            // The parsed path decides the same.
            let parsed = parse_message(bytes.as_bytes()).unwrap();
            assert_eq!(acknowledges_a_refusal(&parsed), expected, "{bytes}");
        }
    }
}
