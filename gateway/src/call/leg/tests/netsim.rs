//! The simulated network and the two sides of a call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::call::leg::{
    Leg, LegConfig, LegEvent, LegInput, LegOutput, OutgoingCall, RedirectCheck,
};
use crate::sip::framing::parse_message;
use crate::sip::message::{Method, Request, SipMessage};
use crate::sip::transaction::{
    ClientTxId, Peer, Timers, TransactionEvent, TransactionLayer, Transport,
};
use crate::sip::uri::{NameAddr, SipUri};

pub const GATEWAY: &str = "127.0.0.1:5060";
pub const AGENT: &str = "127.0.0.1:5070";

pub fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

pub fn udp(text: &str) -> Peer {
    Peer {
        transport: Transport::Udp,
        addr: addr(text),
    }
}

/// One end of the network: a transaction layer and its leg.
pub struct Side {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub layer: TransactionLayer,
    pub leg: Option<Leg>,
    /// Every event the leg reported, in order.
    pub events: Vec<LegEvent>,
    /// Every message this side's layer put on the wire (first lines).
    pub sent: Vec<String>,
    /// Initial INVITEs that arrived with no leg to take them: the test
    /// decides what to do (`accept_invite`).
    pub invites: Vec<(crate::sip::transaction::ServerTxId, Request)>,
    client_txs: HashMap<ClientTxId, (u32, Method)>,
}

impl Side {
    fn new(name: &'static str, addr: SocketAddr) -> Side {
        Side {
            name,
            addr,
            layer: TransactionLayer::new(Timers::default()),
            leg: None,
            events: Vec::new(),
            sent: Vec::new(),
            invites: Vec::new(),
            client_txs: HashMap::new(),
        }
    }

    pub fn config(&self, peer: SocketAddr) -> LegConfig {
        LegConfig {
            local: self.addr,
            contact: SipUri::parse(&format!("sip:{}@{}", self.name, self.addr)).unwrap(),
            peer: Peer {
                transport: Transport::Udp,
                addr: peer,
            },
        }
    }

    pub fn leg(&mut self) -> &mut Leg {
        self.leg.as_mut().expect("this side has a leg")
    }

    /// Routes what the transaction layer reported to the leg.
    fn route(&mut self, now: Instant) {
        while let Some(event) = self.layer.poll_event() {
            let input = match event {
                TransactionEvent::Request { tx, request, .. } => {
                    let in_dialog = request.to().ok().and_then(|t| t.tag().map(str::to_string));
                    if request.method == Method::Invite && in_dialog.is_none() {
                        self.invites.push((tx, request));
                        continue;
                    }
                    LegInput::Request { tx, request }
                }
                TransactionEvent::Ack { request, .. } => LegInput::Ack(request),
                TransactionEvent::Cancelled { invite_tx, .. } => {
                    // An INVITE the test never took: refuse it as a UA would.
                    if let Some(index) = self.invites.iter().position(|(tx, _)| *tx == invite_tx) {
                        let (tx, invite) = self.invites.remove(index);
                        let terminated = crate::sip::response::response_for(
                            &invite,
                            487,
                            "Request Terminated",
                            Some("never-taken"),
                        );
                        self.layer.send_response(tx, terminated, now);
                        continue;
                    }
                    LegInput::Cancelled
                }
                TransactionEvent::Response { response, .. } => LegInput::Response(response),
                TransactionEvent::Timeout { tx } | TransactionEvent::Unreachable { tx } => {
                    let Some((cseq, method)) = self.client_txs.remove(&tx) else {
                        continue;
                    };
                    LegInput::RequestFailed {
                        cseq,
                        method,
                        unreachable: false,
                    }
                }
                TransactionEvent::AckTimeout { .. } => LegInput::AckTimeout,
            };
            if let Some(leg) = &mut self.leg {
                leg.handle_input(input, now);
            }
        }
    }

    /// Moves the leg's outputs into the transaction layer.
    fn flush(&mut self, now: Instant) {
        let Some(leg) = &mut self.leg else { return };
        while let Some(event) = leg.poll_event() {
            self.events.push(event);
        }
        while let Some(output) = leg.poll_output() {
            match output {
                LegOutput::Respond { tx, response } => self.layer.send_response(tx, response, now),
                LegOutput::Send { request, peer } => {
                    let key = request.cseq().unwrap();
                    let tx = self.layer.send_request(request, peer, now);
                    self.client_txs.insert(tx, key);
                }
                LegOutput::SendStateless { request, peer } => self
                    .layer
                    .send_stateless(SipMessage::Request(request), peer),
            }
        }
    }

    pub fn accept_invite(&mut self, local_tag: &str) -> Request {
        let (tx, invite) = self.invites.remove(0);
        let config = self.config(addr(GATEWAY));
        let leg = Leg::incoming(tx, invite.clone(), local_tag.to_string(), config)
            .unwrap_or_else(|refusal| panic!("INVITE refused: {refusal:?}"));
        self.leg = Some(leg);
        invite
    }

    pub fn take_events(&mut self) -> Vec<LegEvent> {
        std::mem::take(&mut self.events)
    }
}

struct InFlight {
    at: Instant,
    to_agent: bool,
    bytes: Vec<u8>,
}

/// Decides whether a message on the wire is lost: `(to_agent, first line)`.
pub type LossRule = Box<dyn FnMut(bool, &str) -> bool>;

pub struct Net {
    pub now: Instant,
    /// The side that dials (our gateway's UAC leg).
    pub gateway: Side,
    /// The side that is called.
    pub agent: Side,
    pub latency: Duration,
    pub lose: LossRule,
    /// What the dialing leg may be redirected to (`None`: anywhere).
    pub redirect_check: Option<RedirectCheck>,
    in_flight: Vec<InFlight>,
}

impl Net {
    pub fn new() -> Net {
        Net {
            now: Instant::now(),
            gateway: Side::new("gateway", addr(GATEWAY)),
            agent: Side::new("agent", addr(AGENT)),
            latency: Duration::from_millis(10),
            lose: Box::new(|_, _| false),
            redirect_check: None,
            in_flight: Vec::new(),
        }
    }

    /// The gateway dials the agent.
    pub fn dial(&mut self, ring: Duration, credentials: Option<(&str, &str)>) {
        let call = OutgoingCall {
            call_id: "leg-test@127.0.0.1".into(),
            request_uri: SipUri::parse(&format!("sip:agent@{AGENT}")).unwrap(),
            from: NameAddr::parse("<sip:+15550100@127.0.0.1>").unwrap(),
            to: NameAddr::parse(&format!("<sip:agent@{AGENT}>")).unwrap(),
            headers: vec![("X-Case".into(), "42".into())],
            sdp: "v=0\r\n".into(),
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
            ring_timeout: ring,
            redirect_check: self.redirect_check.clone(),
        };
        let config = self.gateway.config(addr(AGENT));
        self.gateway.leg = Some(Leg::outgoing(call, config, self.now));
        self.pump();
    }

    /// Runs everything due now, to quiescence.
    pub fn pump(&mut self) {
        for _ in 0..100 {
            let now = self.now;
            let mut moved = false;
            for side in [&mut self.gateway, &mut self.agent] {
                side.route(now);
                side.flush(now);
                side.route(now);
            }
            for (to_agent, side) in [(true, &mut self.gateway), (false, &mut self.agent)] {
                while let Some(transmit) = side.layer.poll_transmit() {
                    moved = true;
                    let first = String::from_utf8_lossy(&transmit.bytes)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    side.sent.push(first.clone());
                    if (self.lose)(to_agent, &first) {
                        continue;
                    }
                    self.in_flight.push(InFlight {
                        at: now + self.latency,
                        to_agent,
                        bytes: transmit.bytes,
                    });
                }
            }
            // Deliver what is due.
            let (due, later): (Vec<_>, Vec<_>) =
                self.in_flight.drain(..).partition(|m| m.at <= now);
            self.in_flight = later;
            for message in due {
                moved = true;
                let (to, from) = if message.to_agent {
                    (&mut self.agent, udp(GATEWAY))
                } else {
                    (&mut self.gateway, udp(AGENT))
                };
                let parsed = parse_message(&message.bytes).expect("legs send valid SIP");
                to.layer.handle_input(parsed, from, now);
            }
            if !moved {
                return;
            }
        }
        panic!("the network never settled");
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let mut next: Vec<Instant> = self.in_flight.iter().map(|m| m.at).collect();
        for side in [&mut self.gateway, &mut self.agent] {
            next.extend(side.layer.poll_timeout());
            if let Some(leg) = &side.leg {
                next.extend(leg.poll_timeout());
            }
        }
        next.into_iter().min()
    }

    /// Advances the clock deadline by deadline for `duration`.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        self.pump();
        while let Some(next) = self.next_deadline() {
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            for side in [&mut self.gateway, &mut self.agent] {
                side.layer.handle_timeout(now);
                if let Some(leg) = &mut side.leg {
                    leg.handle_timeout(now);
                }
            }
            self.pump();
        }
        self.now = until;
        self.pump();
    }
}
