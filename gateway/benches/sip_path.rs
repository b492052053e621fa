//! What one SIP message costs on its way in, before any call exists:
//! parsing, the socket's classification, and the refusal a new INVITE gets
//! under overload (a 503 without a transaction, whose ACK stops at the
//! socket). Offered four times its capacity, the gateway spends most of its
//! signalling time here, once per INVITE and once per ACK.
//!
//!   cargo bench -p switchboard-gateway --bench sip_path

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use criterion::{criterion_group, criterion_main, Criterion};
use switchboard_gateway::endpoint::shards::Occupancy;
use switchboard_gateway::overload::Overload;
use switchboard_gateway::sip::framing::parse_message;
use switchboard_gateway::sip::message::SipMessage;
use switchboard_gateway::sip::transaction::{Peer, Transport};
use switchboard_gateway::transport::inbound::{
    self, is_fresh, is_refusal_ack, shed_response, Delivery, Screened, SocketAdmission,
};
use switchboard_gateway::transport::source_limit::SourceLimiter;

/// An INVITE as sipp's built-in `uac` scenario sends it.
const INVITE: &str = "INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5098;branch=z9hG4bK-4242-1-0\r\n\
From: sipp <sip:sipp@127.0.0.1:5098>;tag=4242SIPpTag001\r\n\
To: service <sip:service@127.0.0.1:5060>\r\n\
Call-ID: 1-4242@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: sip:sipp@127.0.0.1:5098\r\n\
Max-Forwards: 70\r\n\
Subject: Performance Test\r\n\
Content-Type: application/sdp\r\n\
Content-Length:   129\r\n\
\r\n\
v=0\r\n\
o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n\
s=-\r\n\
c=IN IP4 127.0.0.1\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

fn ack_for(refusal: &str) -> String {
    let to = refusal
        .lines()
        .find(|line| line.starts_with("To:"))
        .expect("a To header");
    format!(
        "ACK sip:service@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5098;branch=z9hG4bK-4242-1-0\r\n\
From: sipp <sip:sipp@127.0.0.1:5098>;tag=4242SIPpTag001\r\n\
{to}\r\n\
Call-ID: 1-4242@127.0.0.1\r\n\
CSeq: 1 ACK\r\n\
Contact: sip:sipp@127.0.0.1:5098\r\n\
Max-Forwards: 70\r\n\
Subject: Performance Test\r\n\
Content-Length: 0\r\n\r\n"
    )
}

fn sip_path(c: &mut Criterion) {
    let peer = Peer {
        transport: Transport::Udp,
        addr: SocketAddr::from(([127, 0, 0, 1], 5098)),
    };
    let SipMessage::Request(invite) = parse_message(INVITE.as_bytes()).unwrap() else {
        panic!("a request")
    };
    let refusal = String::from_utf8(shed_response(&invite)).unwrap();
    let ack = ack_for(&refusal);
    let limiter = Arc::new(Mutex::new(SourceLimiter::new(0, 1, Vec::new())));
    let (sender, _queues) = inbound::queues(1, Arc::new(Overload::default()), limiter);

    c.bench_function("sip parse INVITE with SDP", |b| {
        b.iter(|| parse_message(black_box(INVITE.as_bytes())).unwrap())
    });
    c.bench_function("sip new INVITE refused: is_fresh + 503", |b| {
        b.iter(|| {
            assert!(is_fresh(black_box(&invite)));
            shed_response(black_box(&invite))
        })
    });
    // No place free, and the endpoint refused a call lately (noted in each
    // iteration: it holds 100 ms): every new INVITE is refused at the
    // socket, unparsed.
    let occupancy = Arc::new(Occupancy::new(tokio::sync::watch::channel(0).0));
    let full = sender.clone().with_admission(SocketAdmission {
        occupancy: occupancy.clone(),
        max_calls: 0,
        pending: Arc::default(),
    });
    c.bench_function(
        "sip new INVITE refused at the socket, from its bytes",
        |b| {
            b.iter(|| {
                occupancy.note_refusal(std::time::Instant::now());
                let Screened::Refused(bytes) = full.screen(black_box(INVITE.as_bytes()), peer)
                else {
                    panic!("refused")
                };
                bytes
            })
        },
    );
    c.bench_function("sip ACK of a refusal: recognised from its bytes", |b| {
        b.iter(|| assert!(is_refusal_ack(black_box(ack.as_bytes()))))
    });
    c.bench_function("sip ACK of a refusal: parse + absorb", |b| {
        b.iter(|| {
            let message = parse_message(black_box(ack.as_bytes())).unwrap();
            assert!(matches!(
                sender.deliver(message, peer, false),
                Delivery::Absorbed
            ));
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = sip_path
}
criterion_main!(benches);
