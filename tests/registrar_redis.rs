//! Two gateways share one registrar's bindings through a real Redis: a
//! phone registers with the first, a call arriving at the second reaches
//! it; Redis itself expires the binding.

mod common;

use std::time::Duration;

use common::gateway::{config_with, GatewayProcess};
use common::raw_sip::{status, RawSip};
use common::redis::Redis;
use common::registering::Phone;
use common::sipp::{self, G711_OFFER};

fn config(redis: &Redis) -> String {
    config_with(&format!(
        r#"
[registrar]
redis = "{}"

[[users]]
username = "bob"
password = "builder"

[[trunks]]
name = "loopback"
allow = ["127.0.0.1"]
routes = [{{ pattern = '^bob$', user = "bob" }}]
"#,
        redis.url()
    ))
}

#[test]
fn a_phone_registered_at_one_gateway_is_called_through_another() {
    let redis = Redis::start();
    let first = GatewayProcess::start("redis-first", &config(&redis));
    let second = GatewayProcess::start("redis-second", &config(&redis));
    let mut bob = Phone::new(first.udp, "bob", "builder");
    let ok = bob.register(
        &[format!("<sip:bob@{}>", bob.sip.sent_by())],
        Some(120),
        "MD5",
    );
    assert_eq!(status(&ok), Some(200), "{ok}");

    // Redis holds the binding, with an expiry of its own.
    let keys = redis.cli(&["KEYS", "switchboard:registrar:binding:bob:*"]);
    assert!(!keys.is_empty(), "no binding key in Redis");
    let ttl: i64 = redis
        .cli(&["TTL", keys.lines().next().unwrap()])
        .parse()
        .unwrap();
    assert!((100..=120).contains(&ttl), "binding TTL {ttl}");

    // The second gateway never saw bob register, yet routes to him.
    let caller = RawSip::new(second.udp);
    let sdp = sipp::sdp_offer(4000, G711_OFFER);
    caller.send(&caller.request(
        "INVITE",
        "bob",
        "via-second",
        1,
        "Content-Type: application/sdp\r\n",
        &sdp,
    ));
    let invite = bob
        .sip
        .wait_for(|t| t.starts_with("INVITE "), Duration::from_secs(5))
        .expect("bob's phone rings through the second gateway");
    assert!(
        invite.contains(&format!("sip:bob@{}", bob.sip.sent_by())),
        "{invite}"
    );
    second.wait_for_log(&["transfer: INVITE sent"], Duration::from_secs(2));

    // Un-registering at the second gateway empties Redis for both.
    let mut again = Phone::new(second.udp, "bob", "builder");
    again.call_id = format!("{}-other-phone", bob.call_id);
    let gone = again.register(&["*".to_string()], Some(0), "MD5");
    assert_eq!(status(&gone), Some(200), "{gone}");
    assert_eq!(
        redis.cli(&["KEYS", "switchboard:registrar:binding:bob:*"]),
        ""
    );
}

/// Two gateways decide on the same read of an AOR: the first write wins and
/// the second is refused (its registrar then reads again), so the rules
/// (`max_contacts`, CSeq order) hold across gateways. The version outlives
/// the AOR's set, so it never restarts under a reader.
#[test]
fn a_write_decided_on_a_stale_read_is_refused() {
    use switchboard_gateway::registrar::redis_store::RedisStore;
    use switchboard_gateway::registrar::store::LocationStore;
    use switchboard_gateway::registrar::{unix_now, Binding, Change};
    use switchboard_gateway::sip::transaction::Transport;

    let redis = Redis::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = RedisStore::connect(&redis.url()).await.unwrap();
        let now = unix_now();
        let binding = |host: &str| Binding {
            contact: format!("sip:bob@{host}"),
            expires_at: now + 600,
            call_id: format!("call-{host}"),
            cseq: 1,
            source: "127.0.0.1:5070".parse().unwrap(),
            transport: Transport::Udp,
            instance: None,
            reg_id: None,
            user_agent: None,
        };
        let (empty, read) = store.snapshot("bob", now).await.unwrap();
        assert!(empty.is_empty());
        let first = [Change::Put(binding("10.0.0.1"))];
        assert!(store.apply_if("bob", &first, now, read).await.unwrap());
        let second = [Change::Put(binding("10.0.0.2"))];
        assert!(
            !store.apply_if("bob", &second, now, read).await.unwrap(),
            "a write decided on a stale read went through"
        );
        let (bindings, fresh) = store.snapshot("bob", now).await.unwrap();
        assert_eq!(bindings, vec![binding("10.0.0.1")]);
        assert_ne!(fresh, read);
        assert!(store.apply_if("bob", &second, now, fresh).await.unwrap());
        assert_eq!(store.bindings("bob", now).await.unwrap().len(), 2);
    });
    let ttl = |key: &str| redis.cli(&["PTTL", key]).parse::<i64>().unwrap();
    let (set, version) = (
        ttl("switchboard:registrar:aor:bob"),
        ttl("switchboard:registrar:version:bob"),
    );
    assert!(
        set > 590_000 && version > set,
        "set {set} ms, version {version} ms"
    );
}
