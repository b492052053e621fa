//! The registrar's rules, with a fake clock.

use super::*;
use crate::sip::framing::parse_message;
use crate::sip::message::SipMessage;

const NOW: u64 = 1_800_000_000;

fn policy() -> Policy {
    Policy {
        min_expires: 60,
        max_expires: 3600,
        max_expires_reliable: 270,
        default_expires: 3600,
        max_contacts: 3,
    }
}

fn peer() -> Peer {
    Peer {
        transport: Transport::Udp,
        addr: "127.0.0.1:5070".parse().unwrap(),
    }
}

fn request(contacts: &[&str], expires: Option<u32>, call_id: &str, cseq: u32) -> RegisterRequest {
    let mut text = format!(
        "REGISTER sip:sb SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKr{cseq}\r\nFrom: <sip:alice@sb>;tag=a\r\nTo: <sip:alice@sb>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nUser-Agent: phone/1.0\r\n"
    );
    for contact in contacts {
        text.push_str(&format!("Contact: {contact}\r\n"));
    }
    if let Some(expires) = expires {
        text.push_str(&format!("Expires: {expires}\r\n"));
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    let SipMessage::Request(request) = parse_message(text.as_bytes()).unwrap() else {
        unreachable!()
    };
    RegisterRequest::from_request(&request, peer()).unwrap()
}

fn registered(outcome: Outcome) -> (Vec<Change>, Vec<Binding>) {
    match outcome {
        Outcome::Registered { changes, bindings } => (changes, bindings),
        other => panic!("not registered: {other:?}"),
    }
}

fn apply(current: &mut Vec<Binding>, changes: &[Change]) {
    for change in changes {
        match change {
            Change::Put(binding) => {
                current.retain(|b| b.key() != binding.key());
                current.push(binding.clone());
            }
            Change::Remove(key) => current.retain(|b| &b.key() != key),
        }
    }
}

#[test]
fn register_refresh_and_remove() {
    let mut store = Vec::new();
    let (changes, bindings) = registered(register(
        &policy(),
        &store,
        &request(&["<sip:alice@10.0.0.5:5060>"], Some(600), "c1", 1),
        NOW,
    ));
    apply(&mut store, &changes);
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0].expires_at, NOW + 600);
    assert_eq!(
        bindings[0].source,
        peer().addr,
        "the source, not the Contact, is kept for NAT"
    );
    assert_eq!(bindings[0].user_agent.as_deref(), Some("phone/1.0"));
    assert_eq!(
        contact_headers(&bindings, NOW + 100),
        vec!["<sip:alice@10.0.0.5:5060>;expires=500"]
    );
    // A refresh with a higher CSeq moves the expiry.
    let (changes, bindings) = registered(register(
        &policy(),
        &store,
        &request(&["<sip:alice@10.0.0.5:5060>"], Some(600), "c1", 2),
        NOW + 300,
    ));
    apply(&mut store, &changes);
    assert_eq!((bindings.len(), bindings[0].expires_at), (1, NOW + 900));
    // An old CSeq of the same Call-ID is out of order.
    assert_eq!(
        register(
            &policy(),
            &store,
            &request(&["<sip:alice@10.0.0.5:5060>"], None, "c1", 2),
            NOW
        ),
        Outcome::OutOfOrder
    );
    // Expires: 0 removes it.
    let (changes, bindings) = registered(register(
        &policy(),
        &store,
        &request(&["<sip:alice@10.0.0.5:5060>"], Some(0), "c1", 3),
        NOW + 301,
    ));
    apply(&mut store, &changes);
    assert!(bindings.is_empty() && store.is_empty());
}

#[test]
fn expiry_bounds() {
    assert_eq!(
        register(
            &policy(),
            &[],
            &request(&["<sip:a@h>"], Some(30), "c", 1),
            NOW
        ),
        Outcome::IntervalTooBrief { min_expires: 60 }
    );
    let (_, bindings) = registered(register(
        &policy(),
        &[],
        &request(&["<sip:a@h>;expires=86400"], Some(60), "c", 1),
        NOW,
    ));
    assert_eq!(bindings[0].expires_at, NOW + 3600, "clamped to max_expires");
    let (_, bindings) = registered(register(
        &policy(),
        &[],
        &request(&["<sip:a@h>"], None, "c", 1),
        NOW,
    ));
    assert_eq!(bindings[0].expires_at, NOW + 3600, "default_expires");
    let mut over_tcp = request(&["<sip:a@h;transport=tcp>"], Some(3600), "c", 1);
    over_tcp.transport = Transport::Tcp;
    let (_, bindings) = registered(register(&policy(), &[], &over_tcp, NOW));
    assert_eq!(
        bindings[0].expires_at,
        NOW + 270,
        "a TCP binding is refreshed before its connection idles out"
    );
}

#[test]
fn too_many_contacts_and_wildcard_removal() {
    let mut store = Vec::new();
    for n in 0..3 {
        let contact = format!("<sip:alice@10.0.0.{n}>");
        let (changes, _) = registered(register(
            &policy(),
            &store,
            &request(&[&contact], Some(600), &format!("c{n}"), 1),
            NOW,
        ));
        apply(&mut store, &changes);
    }
    assert_eq!(
        register(
            &policy(),
            &store,
            &request(&["<sip:alice@10.0.0.9>"], Some(600), "c9", 1),
            NOW
        ),
        Outcome::TooManyContacts { max: 3 }
    );
    // Once one lapses there is room again.
    store[0].expires_at = NOW - 1;
    let (changes, bindings) = registered(register(
        &policy(),
        &store,
        &request(&["<sip:alice@10.0.0.9>"], Some(600), "c9", 1),
        NOW,
    ));
    assert_eq!(bindings.len(), 3);
    assert!(
        changes.contains(&Change::Remove(store[0].key())),
        "the lapsed one is swept"
    );
    apply(&mut store, &changes);
    assert!(matches!(
        register(
            &policy(),
            &store,
            &request(&["*"], Some(3600), "cx", 1),
            NOW
        ),
        Outcome::Invalid(_)
    ));
    let (changes, bindings) = registered(register(
        &policy(),
        &store,
        &request(&["*"], Some(0), "cx", 1),
        NOW,
    ));
    apply(&mut store, &changes);
    assert!(bindings.is_empty() && store.is_empty());
}

/// RFC 5626: the same phone (instance + reg-id) registering from a new
/// address replaces its binding rather than adding one.
#[test]
fn instance_and_reg_id_replace_a_phones_binding() {
    let mut store = Vec::new();
    let phone = r#"<sip:alice@10.0.0.5:5060>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1"#;
    let (changes, _) = registered(register(
        &policy(),
        &store,
        &request(&[phone], Some(600), "c1", 1),
        NOW,
    ));
    apply(&mut store, &changes);
    let moved = phone.replace("10.0.0.5", "10.0.0.77");
    let (changes, bindings) = registered(register(
        &policy(),
        &store,
        &request(&[&moved], Some(600), "c2", 1),
        NOW,
    ));
    apply(&mut store, &changes);
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0].contact, "sip:alice@10.0.0.77:5060");
    assert_eq!(store.len(), 1);
}
