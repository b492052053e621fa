//! Inside the dialog: BYE both ways (and crossing), re-INVITE with glare,
//! the UAS's missing ACK, and the answers to methods we do not handle.

use std::time::Duration;

use super::netsim::Net;
use crate::call::leg::{EndReason, LegEvent, LegInput, LegOutput, LegState};
use crate::sip::framing::parse_message;
use crate::sip::message::{Request, SipMessage};
use crate::sip::transaction::ServerTxId;

fn connected() -> Net {
    let mut net = Net::new();
    net.dial(Duration::from_secs(30), None);
    net.run_for(Duration::from_millis(50));
    net.agent.accept_invite("agent-tag");
    net.agent.leg().answer("v=0\r\ns=a\r\n");
    net.run_for(Duration::from_millis(100));
    net.gateway.take_events();
    net.agent.take_events();
    net
}

#[test]
fn bye_from_the_gateway() {
    let mut net = connected();
    let now = net.now;
    net.gateway.leg().hang_up(now);
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        net.gateway.take_events(),
        vec![LegEvent::Ended(EndReason::LocalBye)]
    );
    assert_eq!(
        net.agent.take_events(),
        vec![LegEvent::Ended(EndReason::RemoteBye)]
    );
    assert!(net.gateway.leg().is_finished() && net.agent.leg().is_finished());
    let bye = net
        .gateway
        .sent
        .iter()
        .find(|l| l.starts_with("BYE"))
        .unwrap();
    assert_eq!(bye, "BYE sip:agent@127.0.0.1:5070 SIP/2.0");
}

#[test]
fn bye_from_the_agent() {
    let mut net = connected();
    let now = net.now;
    net.agent.leg().hang_up(now);
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        net.gateway.take_events(),
        vec![LegEvent::Ended(EndReason::RemoteBye)]
    );
    assert_eq!(
        net.agent.take_events(),
        vec![LegEvent::Ended(EndReason::LocalBye)]
    );
}

/// Both hang up at once: each answers the other's BYE and ends once.
#[test]
fn crossing_byes_end_each_side_once() {
    let mut net = connected();
    net.latency = Duration::from_millis(50);
    let now = net.now;
    net.gateway.leg().hang_up(now);
    net.agent.leg().hang_up(now);
    net.run_for(Duration::from_secs(1));
    for side in [&mut net.gateway, &mut net.agent] {
        let events = side.take_events();
        assert_eq!(events.len(), 1, "{}: {events:?}", side.name);
        assert!(matches!(events[0], LegEvent::Ended(_)));
        assert!(side.sent.iter().any(|l| l.starts_with("SIP/2.0 200")));
    }
}

/// A BYE nobody answers does not hold the leg for 32 s.
#[test]
fn unanswered_bye_ends_the_leg_after_five_seconds() {
    let mut net = connected();
    net.lose = Box::new(|to_agent, _| to_agent);
    let now = net.now;
    net.gateway.leg().hang_up(now);
    net.run_for(Duration::from_millis(4_900));
    assert_eq!(net.gateway.leg().state(), LegState::Ending);
    net.run_for(Duration::from_millis(200));
    assert_eq!(
        net.gateway.take_events(),
        vec![LegEvent::Ended(EndReason::LocalBye)]
    );
}

#[test]
fn reinvite_from_the_agent_is_answered() {
    let mut net = connected();
    assert!(net.agent.leg().reinvite("v=0\r\ns=hold\r\n", net.now));
    net.run_for(Duration::from_millis(50));
    assert_eq!(
        net.gateway.take_events(),
        vec![LegEvent::Offer {
            sdp: Some("v=0\r\ns=hold\r\n".into())
        }]
    );
    net.gateway.leg().accept_offer(Some("v=0\r\ns=ok\r\n"));
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        net.agent.take_events(),
        vec![LegEvent::OfferAnswered {
            sdp: Some("v=0\r\ns=ok\r\n".into())
        }]
    );
    assert_eq!(
        net.gateway.take_events(),
        vec![LegEvent::Acknowledged { sdp: None }]
    );
}

/// Both re-INVITE at once: both get 491, each retries after its random
/// pause (the agent, UAS of the dialog, sooner), and both exchanges end
/// answered.
#[test]
fn reinvite_glare_is_resolved_by_491_and_retries() {
    let mut net = connected();
    net.latency = Duration::from_millis(30);
    let now = net.now;
    assert!(net.gateway.leg().reinvite("v=0\r\ns=g\r\n", now));
    assert!(net.agent.leg().reinvite("v=0\r\ns=a\r\n", now));
    net.run_for(Duration::from_millis(200));
    assert!(net
        .gateway
        .sent
        .iter()
        .any(|l| l.starts_with("SIP/2.0 491")));
    assert!(net.agent.sent.iter().any(|l| l.starts_with("SIP/2.0 491")));
    // Answer every offer that comes, for up to 10 s.
    for _ in 0..100 {
        net.run_for(Duration::from_millis(100));
        for side in [&mut net.gateway, &mut net.agent] {
            if side
                .events
                .iter()
                .any(|e| matches!(e, LegEvent::Offer { .. }))
            {
                side.events.retain(|e| !matches!(e, LegEvent::Offer { .. }));
                side.events.push(LegEvent::Info {
                    content_type: "answered".into(),
                    body: vec![],
                });
                side.leg().accept_offer(Some("v=0\r\n"));
            }
        }
    }
    for side in [&mut net.gateway, &mut net.agent] {
        assert!(
            side.events
                .iter()
                .any(|e| matches!(e, LegEvent::OfferAnswered { .. })),
            "{}'s re-INVITE went through: {:?}",
            side.name,
            side.events
        );
        assert!(!side
            .events
            .iter()
            .any(|e| matches!(e, LegEvent::OfferRefused { .. })));
    }
}

/// The caller never ACKs our 2xx: the leg reports it and sends BYE.
#[test]
fn missing_ack_ends_the_uas_leg_with_bye() {
    let mut net = Net::new();
    net.lose = Box::new(|to_agent, line| to_agent && line.starts_with("ACK"));
    net.dial(Duration::from_secs(30), None);
    net.run_for(Duration::from_millis(50));
    net.agent.accept_invite("agent-tag");
    net.agent.leg().answer("v=0\r\n");
    net.run_for(Duration::from_secs(40));
    let events = net.agent.take_events();
    assert_eq!(events, vec![LegEvent::Ended(EndReason::AckTimeout)]);
    assert!(net.agent.sent.iter().any(|l| l.starts_with("BYE")));
}

/// A UAS asked to hang up before the ACK waits for it, then sends BYE.
#[test]
fn uas_hang_up_before_ack_waits_for_it() {
    let mut net = Net::new();
    net.latency = Duration::from_millis(100);
    net.dial(Duration::from_secs(30), None);
    net.run_for(Duration::from_millis(150));
    net.agent.accept_invite("agent-tag");
    net.agent.leg().answer("v=0\r\n");
    net.run_for(Duration::from_millis(10));
    let now = net.now;
    net.agent.leg().hang_up(now);
    net.run_for(Duration::from_millis(50));
    assert!(!net.agent.sent.iter().any(|l| l.starts_with("BYE")));
    net.run_for(Duration::from_secs(1));
    assert!(net.agent.sent.iter().any(|l| l.starts_with("BYE")));
    assert_eq!(
        net.gateway.take_events().last(),
        Some(&LegEvent::Ended(EndReason::RemoteBye))
    );
}

fn in_dialog(net: &mut Net, method: &str, cseq: u32, extra: &str) -> Request {
    let dialog = net.gateway.leg().dialog().unwrap().clone();
    let text = format!(
        "{method} sip:gateway@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{method}{cseq}\r\nFrom: <sip:agent@127.0.0.1:5070>;tag={}\r\nTo: <sip:x@127.0.0.1>;tag={}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n",
        dialog.remote_tag, dialog.local_tag, dialog.call_id
    );
    match parse_message(text.as_bytes()).unwrap() {
        SipMessage::Request(request) => request,
        _ => unreachable!(),
    }
}

fn answer_to(net: &mut Net, request: Request) -> (u16, Option<String>) {
    let now = net.now;
    let leg = net.gateway.leg();
    leg.handle_input(
        LegInput::Request {
            tx: ServerTxId::for_tests(77),
            request,
        },
        now,
    );
    match leg.poll_output() {
        Some(LegOutput::Respond { response, .. }) => (
            response.status,
            response.headers.get("Allow").map(str::to_string),
        ),
        other => panic!("no response: {other:?}"),
    }
}

/// Methods we do not serve get 405 or 501 with Allow, a NOTIFY for no
/// subscription 481, OPTIONS and INFO 200 — never a catch-all 200.
#[test]
fn in_dialog_methods_get_the_right_answers() {
    let mut net = connected();
    let cases = [
        ("MESSAGE", 405),
        ("REFER", 405),
        ("SUBSCRIBE", 405),
        ("FOO", 501),
        ("NOTIFY", 481),
        ("PRACK", 481),
        ("OPTIONS", 200),
        ("INFO", 200),
    ];
    for (index, (method, expected)) in cases.into_iter().enumerate() {
        let request = in_dialog(&mut net, method, 10 + index as u32, "Event: refer\r\n");
        let (status, allow) = answer_to(&mut net, request);
        assert_eq!(status, expected, "{method}");
        if matches!(expected, 405 | 501) || method == "OPTIONS" {
            assert!(allow.unwrap().contains("INVITE"), "{method} carries Allow");
        }
    }
    // A CSeq lower than the last one seen is refused with 500.
    let old = in_dialog(&mut net, "INFO", 3, "");
    assert_eq!(answer_to(&mut net, old).0, 500);
    // Another dialog's request is 481.
    let mut stranger = in_dialog(&mut net, "INFO", 50, "");
    stranger.headers.set("To", "<sip:x@127.0.0.1>;tag=nope");
    assert_eq!(answer_to(&mut net, stranger).0, 481);
}
