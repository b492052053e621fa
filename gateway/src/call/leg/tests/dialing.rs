//! The UAC INVITE: provisional and final responses, 2xx retransmissions,
//! ring timeout and CANCEL (with its race against a 200), digest, redirect.

use std::time::Duration;

use super::netsim::{Net, AGENT};
use crate::call::leg::{DialFailure, EndReason, FailKind, LegEvent, LegState, RedirectCheck};
use crate::sip::digest::{Algorithm, Credentials};
use crate::sip::message::Request;

fn ringing_then_answered(net: &mut Net) -> Request {
    net.run_for(Duration::from_millis(50));
    let invite = net.agent.accept_invite("agent-tag");
    net.agent.leg().ring(None);
    net.run_for(Duration::from_millis(50));
    net.agent.leg().answer("v=0\r\ns=agent\r\n");
    net.run_for(Duration::from_millis(50));
    invite
}

#[test]
fn invite_rings_is_answered_and_acknowledged() {
    let mut net = Net::new();
    net.dial(Duration::from_secs(30), None);
    let invite = ringing_then_answered(&mut net);
    assert_eq!(invite.headers.get("X-Case"), Some("42"));
    assert_eq!(invite.uri.to_string(), format!("sip:agent@{AGENT}"));
    assert_eq!(
        net.gateway.take_events(),
        vec![
            LegEvent::Progress {
                status: 180,
                sdp: None
            },
            LegEvent::Answered {
                sdp: Some("v=0\r\ns=agent\r\n".into())
            },
        ]
    );
    assert_eq!(
        net.agent.take_events(),
        vec![LegEvent::Acknowledged { sdp: None }]
    );
    assert_eq!(net.gateway.leg().state(), LegState::Confirmed);
    assert_eq!(net.agent.leg().state(), LegState::Confirmed);
    let dialog = net.gateway.leg().dialog().unwrap().clone();
    assert_eq!(dialog.remote_tag, "agent-tag");
    // Nothing is retransmitted once acknowledged.
    let sent_before = net.agent.sent.len();
    net.run_for(Duration::from_secs(40));
    assert_eq!(net.agent.sent.len(), sent_before);
    assert!(net.gateway.layer.is_empty() && net.agent.layer.is_empty());
}

/// The first two ACKs are lost: the agent's layer retransmits its 200 and
/// each copy gets one ACK from the leg, until one arrives.
#[test]
fn lost_acks_are_resent_once_per_2xx_retransmission() {
    let mut net = Net::new();
    let mut lost = 0;
    net.lose = Box::new(move |to_agent, line| {
        if to_agent && line.starts_with("ACK") && lost < 2 {
            lost += 1;
            return true;
        }
        false
    });
    net.dial(Duration::from_secs(30), None);
    ringing_then_answered(&mut net);
    net.run_for(Duration::from_secs(5));
    let oks = net
        .agent
        .sent
        .iter()
        .filter(|l| l.starts_with("SIP/2.0 200"))
        .count();
    let acks = net
        .gateway
        .sent
        .iter()
        .filter(|l| l.starts_with("ACK"))
        .count();
    assert_eq!(oks, 3, "the 200 went out three times");
    assert_eq!(acks, 3, "one ACK per 200");
    assert_eq!(
        net.agent.take_events(),
        vec![LegEvent::Acknowledged { sdp: None }]
    );
    assert_eq!(
        net.gateway
            .events
            .iter()
            .filter(|e| matches!(e, LegEvent::Answered { .. }))
            .count(),
        1,
        "answered once"
    );
}

#[test]
fn ring_timeout_cancels_and_the_487_reports_no_answer() {
    let mut net = Net::new();
    net.dial(Duration::from_secs(5), None);
    net.run_for(Duration::from_millis(50));
    net.agent.accept_invite("agent-tag");
    net.agent.leg().ring(None);
    net.run_for(Duration::from_secs(6));
    assert!(net.gateway.sent.iter().any(|l| l.starts_with("CANCEL")));
    assert!(net.agent.sent.iter().any(|l| l.starts_with("SIP/2.0 487")));
    let events = net.gateway.take_events();
    assert_eq!(
        events.last(),
        Some(&LegEvent::Failed(DialFailure {
            status: 487,
            reason: "no answer within the ring time".into(),
            kind: FailKind::NoAnswer
        }))
    );
    assert_eq!(
        net.agent.take_events(),
        vec![LegEvent::Ended(EndReason::Cancelled)]
    );
    assert!(net.gateway.leg().is_finished());
}

/// The agent answers just as the ring time runs out: the 200 crosses our
/// CANCEL. The gateway ACKs that 200, hangs it up at once, and reports no
/// answer; the agent sees its call acknowledged and ended by BYE.
#[test]
fn cancel_racing_a_200_is_acked_and_hung_up() {
    let mut net = Net::new();
    net.latency = Duration::from_millis(40);
    net.dial(Duration::from_millis(500), None);
    net.run_for(Duration::from_millis(100));
    net.agent.accept_invite("agent-tag");
    net.agent.leg().ring(None);
    // Ringing reaches the gateway at ~140 ms; answer so that the 200 is in
    // flight when the ring time ends at 500 ms.
    net.run_for(Duration::from_millis(380));
    net.agent.leg().answer("v=0\r\n");
    net.run_for(Duration::from_secs(2));
    assert!(net.gateway.sent.iter().any(|l| l.starts_with("CANCEL")));
    assert!(net.gateway.sent.iter().any(|l| l.starts_with("ACK")));
    assert!(net.gateway.sent.iter().any(|l| l.starts_with("BYE")));
    let failed: Vec<_> = net
        .gateway
        .take_events()
        .into_iter()
        .filter(|e| !matches!(e, LegEvent::Progress { .. }))
        .collect();
    assert!(
        matches!(
            failed.as_slice(),
            [LegEvent::Failed(DialFailure {
                kind: FailKind::NoAnswer,
                ..
            })]
        ),
        "{failed:?}"
    );
    assert_eq!(
        net.agent.take_events(),
        vec![
            LegEvent::Acknowledged { sdp: None },
            LegEvent::Ended(EndReason::RemoteBye)
        ]
    );
    assert!(net.gateway.leg().is_finished());
}

/// Ring time over before the agent said anything: the failure is reported
/// at once, without a CANCEL (§9.1 forbids one before a provisional); the
/// CANCEL follows the agent's first provisional.
#[test]
fn no_provisional_no_cancel_until_one_arrives() {
    let mut net = Net::new();
    let cut_until = net.now + Duration::from_millis(2_500);
    let clock = std::rc::Rc::new(std::cell::Cell::new(net.now));
    let seen = clock.clone();
    net.lose = Box::new(move |to_agent, _| to_agent && seen.get() < cut_until);
    net.dial(Duration::from_secs(2), None);
    for _ in 0..25 {
        net.run_for(Duration::from_millis(100));
        clock.set(net.now);
    }
    assert!(matches!(
        net.gateway.take_events().as_slice(),
        [LegEvent::Failed(DialFailure {
            kind: FailKind::NoAnswer,
            ..
        })]
    ));
    assert!(!net.gateway.sent.iter().any(|l| l.starts_with("CANCEL")));
    assert!(!net.gateway.leg().is_finished(), "the INVITE is still out");
    // The retransmission at 3.5 s gets through: 100 Trying, then CANCEL.
    for _ in 0..20 {
        net.run_for(Duration::from_millis(100));
        clock.set(net.now);
    }
    assert!(net.gateway.sent.iter().any(|l| l.starts_with("CANCEL")));
    assert!(net.agent.sent.iter().any(|l| l.starts_with("SIP/2.0 487")));
    assert!(net.gateway.take_events().is_empty(), "reported once");
    assert!(net.gateway.leg().is_finished());
}

#[test]
fn busy_and_other_failures_map_to_twilio_statuses() {
    for (status, kind) in [
        (486, FailKind::Busy),
        (603, FailKind::Busy),
        (480, FailKind::NoAnswer),
        (404, FailKind::Failed),
        (503, FailKind::Failed),
    ] {
        let mut net = Net::new();
        net.dial(Duration::from_secs(30), None);
        net.run_for(Duration::from_millis(50));
        net.agent.accept_invite("t");
        let now = net.now;
        net.agent.leg().reject(status, now);
        net.run_for(Duration::from_millis(100));
        assert!(
            matches!(net.gateway.take_events().as_slice(), [LegEvent::Failed(f)] if f.status == status && f.kind == kind),
            "{status}"
        );
        assert!(net.gateway.leg().is_finished());
        // The transaction layer ACKed the final response.
        assert!(net.gateway.sent.iter().any(|l| l.starts_with("ACK")));
    }
}

/// A 407 is answered once with the credentials; the agent verifies them.
/// A second 407 means they were wrong: the dial fails with 407.
#[test]
fn proxy_challenge_is_answered_with_digest() {
    let mut net = Net::new();
    net.dial(Duration::from_secs(30), Some(("alice", "s3cret")));
    net.run_for(Duration::from_millis(50));
    net.agent.accept_invite("t1");
    let now = net.now;
    net.agent.leg().reject_with(
        407,
        &[(
            "Proxy-Authenticate",
            r#"Digest realm="pbx", nonce="abc123", qop="auth", algorithm=MD5"#,
        )],
        now,
    );
    net.run_for(Duration::from_millis(100));
    let retried = net.agent.accept_invite("t2");
    assert_eq!(retried.cseq().unwrap().0, 2);
    let credentials =
        Credentials::parse(retried.headers.get("Proxy-Authorization").unwrap()).unwrap();
    assert_eq!(credentials.username, "alice");
    assert!(credentials.verify(&Algorithm::Md5.hex("alice:pbx:s3cret"), "INVITE"));
    assert_eq!(retried.headers.get("X-Case"), Some("42"));
    // Refused again: no third attempt.
    let now = net.now;
    net.agent.leg().reject_with(
        407,
        &[("Proxy-Authenticate", r#"Digest realm="pbx", nonce="n2""#)],
        now,
    );
    net.run_for(Duration::from_millis(100));
    assert!(net.agent.invites.is_empty());
    assert!(matches!(
        net.gateway.take_events().as_slice(),
        [LegEvent::Failed(DialFailure { status: 407, .. })]
    ));
}

/// A proxy challenges (407), then the PBX behind it (401): the third
/// INVITE answers both, the proxy's with its next nonce count. A second
/// 401 from the PBX's realm means the password is wrong: no fourth.
#[test]
fn proxy_then_registrar_challenges_are_both_answered() {
    let mut net = Net::new();
    net.dial(Duration::from_secs(30), Some(("alice", "s3cret")));
    net.run_for(Duration::from_millis(50));
    net.agent.accept_invite("t1");
    let now = net.now;
    net.agent.leg().reject_with(
        407,
        &[(
            "Proxy-Authenticate",
            r#"Digest realm="proxy", nonce="p1", qop="auth", algorithm=MD5"#,
        )],
        now,
    );
    net.run_for(Duration::from_millis(100));
    net.agent.accept_invite("t2");
    let now = net.now;
    net.agent.leg().reject_with(
        401,
        &[(
            "WWW-Authenticate",
            r#"Digest realm="pbx", nonce="b1", qop="auth", algorithm=MD5"#,
        )],
        now,
    );
    net.run_for(Duration::from_millis(100));
    let third = net.agent.accept_invite("t3");
    assert_eq!(third.cseq().unwrap().0, 3);
    let to_proxy = Credentials::parse(third.headers.get("Proxy-Authorization").unwrap()).unwrap();
    assert_eq!(
        (to_proxy.realm.as_str(), to_proxy.nonce_count()),
        ("proxy", Some(2))
    );
    assert!(to_proxy.verify(&Algorithm::Md5.hex("alice:proxy:s3cret"), "INVITE"));
    let to_pbx = Credentials::parse(third.headers.get("Authorization").unwrap()).unwrap();
    assert_eq!(
        (to_pbx.realm.as_str(), to_pbx.nonce_count()),
        ("pbx", Some(1))
    );
    assert!(to_pbx.verify(&Algorithm::Md5.hex("alice:pbx:s3cret"), "INVITE"));
    let now = net.now;
    net.agent.leg().reject_with(
        401,
        &[(
            "WWW-Authenticate",
            r#"Digest realm="pbx", nonce="b2", qop="auth", algorithm=MD5"#,
        )],
        now,
    );
    net.run_for(Duration::from_millis(100));
    assert!(net.agent.invites.is_empty());
    assert!(matches!(
        net.gateway.take_events().as_slice(),
        [LegEvent::Failed(DialFailure { status: 401, .. })]
    ));
}

#[test]
fn challenge_without_credentials_fails() {
    let mut net = Net::new();
    net.dial(Duration::from_secs(30), None);
    net.run_for(Duration::from_millis(50));
    net.agent.accept_invite("t1");
    let now = net.now;
    net.agent.leg().reject_with(
        401,
        &[("WWW-Authenticate", r#"Digest realm="pbx", nonce="n""#)],
        now,
    );
    net.run_for(Duration::from_millis(100));
    assert!(matches!(
        net.gateway.take_events().as_slice(),
        [LegEvent::Failed(DialFailure {
            status: 401,
            kind: FailKind::Failed,
            ..
        })]
    ));
}

/// A 302 is followed once, to its Contact; a second is a failure.
#[test]
fn redirect_is_followed_once() {
    let mut net = Net::new();
    net.dial(Duration::from_secs(30), None);
    net.run_for(Duration::from_millis(50));
    net.agent.accept_invite("t1");
    let now = net.now;
    net.agent
        .leg()
        .reject_with(302, &[("Contact", &format!("<sip:desk-7@{AGENT}>"))], now);
    net.run_for(Duration::from_millis(100));
    let redirected = net.agent.accept_invite("t2");
    assert_eq!(redirected.uri.to_string(), format!("sip:desk-7@{AGENT}"));
    let now = net.now;
    net.agent
        .leg()
        .reject_with(302, &[("Contact", "<sip:elsewhere@127.0.0.1:5070>")], now);
    net.run_for(Duration::from_millis(100));
    assert!(net.agent.invites.is_empty());
    assert!(matches!(
        net.gateway.take_events().as_slice(),
        [LegEvent::Failed(DialFailure { status: 302, .. })]
    ));
}

/// A bot's dial may only be redirected where `[dial] allow` lets it go: an
/// allowed PBX answering 302 to a premium number gets no INVITE sent there.
#[test]
fn redirect_outside_the_allow_list_is_refused() {
    let mut net = Net::new();
    net.redirect_check = Some(RedirectCheck(std::sync::Arc::new(|uri: &str| {
        uri.starts_with("sip:desk-")
    })));
    net.dial(Duration::from_secs(30), Some(("agent", "secret")));
    net.run_for(Duration::from_millis(50));
    net.agent.accept_invite("t1");
    let now = net.now;
    net.agent.leg().reject_with(
        302,
        &[("Contact", "<sip:+19005550100@127.0.0.1:5070>")],
        now,
    );
    net.run_for(Duration::from_millis(100));
    assert!(
        net.agent.invites.is_empty(),
        "no INVITE to the premium number"
    );
    match net.gateway.take_events().as_slice() {
        [LegEvent::Failed(DialFailure {
            status: 302,
            reason,
            kind: FailKind::Failed,
        })] => {
            assert!(reason.contains("not an allowed dial target"), "{reason}")
        }
        other => panic!("{other:?}"),
    }

    let mut net = Net::new();
    net.redirect_check = Some(RedirectCheck(std::sync::Arc::new(|uri: &str| {
        uri.starts_with("sip:desk-")
    })));
    net.dial(Duration::from_secs(30), None);
    net.run_for(Duration::from_millis(50));
    net.agent.accept_invite("t1");
    let now = net.now;
    net.agent
        .leg()
        .reject_with(302, &[("Contact", &format!("<sip:desk-7@{AGENT}>"))], now);
    net.run_for(Duration::from_millis(100));
    let redirected = net.agent.accept_invite("t2");
    assert_eq!(redirected.uri.to_string(), format!("sip:desk-7@{AGENT}"));
}

#[test]
fn early_media_sdp_is_reported_once() {
    let mut net = Net::new();
    net.dial(Duration::from_secs(30), None);
    net.run_for(Duration::from_millis(50));
    net.agent.accept_invite("t");
    net.agent.leg().ring(Some("v=0\r\ns=early\r\n"));
    net.run_for(Duration::from_millis(50));
    net.agent.leg().ring(Some("v=0\r\ns=early\r\n"));
    net.run_for(Duration::from_millis(50));
    assert_eq!(
        net.gateway.take_events(),
        vec![
            LegEvent::Progress {
                status: 183,
                sdp: Some("v=0\r\ns=early\r\n".into())
            },
            LegEvent::Progress {
                status: 183,
                sdp: None
            },
        ]
    );
}

/// No answer at all: Timer B ends the INVITE as a failure with 408.
#[test]
fn silent_target_times_out() {
    let mut net = Net::new();
    net.lose = Box::new(|to_agent, _| to_agent);
    net.dial(Duration::from_secs(60), None);
    net.run_for(Duration::from_secs(33));
    assert!(matches!(
        net.gateway.take_events().as_slice(),
        [LegEvent::Failed(DialFailure {
            status: 408,
            kind: FailKind::Failed,
            ..
        })]
    ));
    assert!(net.gateway.leg().is_finished());
}
