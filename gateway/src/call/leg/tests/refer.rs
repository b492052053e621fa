//! REFER towards the far end, against a scripted referee: 202, then
//! NOTIFYs with sipfrag progress; a refused REFER; a referee that never
//! reports the outcome.

use std::time::Duration;

use super::netsim::Net;
use crate::call::leg::{LegEvent, LegInput, LegOutput, ReferOutcome};
use crate::sip::framing::parse_message;
use crate::sip::message::{Request, SipMessage};
use crate::sip::response::response_for;
use crate::sip::transaction::ServerTxId;

/// A connected call whose agent side is answered by hand from now on.
fn connected() -> Net {
    let mut net = Net::new();
    net.dial(Duration::from_secs(30), None);
    net.run_for(Duration::from_millis(50));
    net.agent.accept_invite("agent-tag");
    net.agent.leg().answer("v=0\r\n");
    net.run_for(Duration::from_millis(100));
    net.gateway.take_events();
    net
}

/// Sends REFER from the gateway's leg and returns the request as built.
fn refer(net: &mut Net) -> Request {
    let now = net.now;
    let leg = net.gateway.leg();
    assert!(leg.refer(
        "sip:desk@127.0.0.1:5090?X-Case=42",
        "sip:switchboard@127.0.0.1",
        now
    ));
    assert!(
        !leg.refer("sip:again@127.0.0.1", "sip:s@127.0.0.1", now),
        "one at a time"
    );
    match leg.poll_output() {
        Some(LegOutput::Send { request, .. }) => request,
        other => panic!("no REFER: {other:?}"),
    }
}

fn notify(net: &mut Net, cseq: u32, sipfrag: &str, state: &str) -> (u16, Vec<LegEvent>) {
    let dialog = net.gateway.leg().dialog().unwrap().clone();
    let text = format!(
        "NOTIFY sip:gateway@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKn{cseq}\r\nFrom: <sip:agent@127.0.0.1:5070>;tag={}\r\nTo: <sip:x@127.0.0.1>;tag={}\r\nCall-ID: {}\r\nCSeq: {cseq} NOTIFY\r\nEvent: refer\r\nSubscription-State: {state}\r\nContent-Type: message/sipfrag;version=2.0\r\nContent-Length: {}\r\n\r\n{sipfrag}",
        dialog.remote_tag,
        dialog.local_tag,
        dialog.call_id,
        sipfrag.len()
    );
    let SipMessage::Request(request) = parse_message(text.as_bytes()).unwrap() else {
        unreachable!()
    };
    let now = net.now;
    let leg = net.gateway.leg();
    leg.handle_input(
        LegInput::Request {
            tx: ServerTxId::for_tests(cseq as u64),
            request,
        },
        now,
    );
    let status = match leg.poll_output() {
        Some(LegOutput::Respond { response, .. }) => response.status,
        other => panic!("NOTIFY unanswered: {other:?}"),
    };
    let mut events = Vec::new();
    while let Some(event) = leg.poll_event() {
        events.push(event);
    }
    (status, events)
}

#[test]
fn accepted_refer_follows_notify_progress_to_success() {
    let mut net = connected();
    let request = refer(&mut net);
    assert_eq!(
        request.headers.get("Refer-To"),
        Some("<sip:desk@127.0.0.1:5090?X-Case=42>")
    );
    assert_eq!(
        request.headers.get("Referred-By"),
        Some("<sip:switchboard@127.0.0.1>")
    );
    let now = net.now;
    let accepted = response_for(&request, 202, "Accepted", None);
    net.gateway
        .leg()
        .handle_input(LegInput::Response(accepted), now);
    let (status, events) = notify(&mut net, 20, "SIP/2.0 100 Trying\r\n", "active;expires=60");
    assert_eq!(status, 200);
    assert_eq!(
        events,
        vec![
            LegEvent::ReferProgress { status: 202 },
            LegEvent::ReferProgress { status: 100 }
        ]
    );
    let (_, events) = notify(
        &mut net,
        21,
        "SIP/2.0 200 OK\r\n",
        "terminated;reason=noresource",
    );
    assert_eq!(
        events,
        vec![LegEvent::ReferEnded(ReferOutcome::Transferred)]
    );
    // A NOTIFY after the end matches no subscription.
    assert_eq!(
        notify(&mut net, 22, "SIP/2.0 200 OK\r\n", "terminated").0,
        481
    );
}

#[test]
fn refused_refer_and_failed_transfer_are_reported() {
    let mut net = connected();
    let request = refer(&mut net);
    let now = net.now;
    let refused = response_for(&request, 405, "Method Not Allowed", None);
    net.gateway
        .leg()
        .handle_input(LegInput::Response(refused), now);
    let events: Vec<_> = std::iter::from_fn(|| net.gateway.leg().poll_event()).collect();
    assert_eq!(
        events,
        vec![LegEvent::ReferEnded(ReferOutcome::Refused {
            status: 405,
            reason: "Method Not Allowed".into()
        })]
    );

    let request = refer(&mut net);
    let now = net.now;
    let accepted = response_for(&request, 202, "Accepted", None);
    net.gateway
        .leg()
        .handle_input(LegInput::Response(accepted), now);
    let (_, events) = notify(&mut net, 30, "SIP/2.0 486 Busy Here\r\n", "terminated");
    assert_eq!(
        events.last(),
        Some(&LegEvent::ReferEnded(ReferOutcome::Failed {
            status: 486,
            reason: "Busy Here".into()
        }))
    );
}

#[test]
fn referee_that_never_reports_times_out() {
    let mut net = connected();
    let request = refer(&mut net);
    let now = net.now;
    let accepted = response_for(&request, 202, "Accepted", None);
    net.gateway
        .leg()
        .handle_input(LegInput::Response(accepted), now);
    let later = now + Duration::from_secs(61);
    net.gateway.leg().handle_timeout(later);
    let events: Vec<_> = std::iter::from_fn(|| net.gateway.leg().poll_event()).collect();
    assert!(matches!(
        events.last(),
        Some(LegEvent::ReferEnded(ReferOutcome::Failed {
            status: 408,
            ..
        }))
    ));
}
