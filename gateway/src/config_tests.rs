//! Configuration parsing and validation: every error names its key.
use super::*;

fn parse(text: &str) -> Config {
    toml::from_str(text).expect("config parses")
}

const MINIMAL: &str = r#"
    [[trunks]]
    name = "local"
    allow = ["127.0.0.1", "::1"]
    routes = [{ pattern = ".*", flow = "echo" }]

    [[flows]]
    name = "echo"
    bot = { kind = "echo" }
"#;

#[test]
fn minimal_config_gets_defaults() {
    let config = parse(MINIMAL);
    let valid = config.validate().unwrap();
    assert_eq!(valid.listen.len(), 2);
    assert_eq!(valid.rtp_ports, 20000..=30000);
    assert_eq!(config.limits.max_calls, 1000);
    assert_eq!(config.limits.overload_call_delay_ms, 10);
    // 0 turns the adaptive call limit off; it is not refused.
    let off = parse(&format!(
        "{MINIMAL}\n[limits]\noverload_call_delay_ms = 0\n"
    ));
    assert_eq!(off.limits.overload_call_delay_ms, 0);
    off.validate().unwrap();
}

#[test]
fn listen_addresses_parse_ipv4_and_ipv6() {
    let udp6 = ListenAddr::parse("udp:[::1]:5070").unwrap();
    assert_eq!(udp6.transport, Transport::Udp);
    assert_eq!(udp6.addr, "[::1]:5070".parse().unwrap());
    assert!(ListenAddr::parse("sctp:127.0.0.1:5060").is_err());
    assert!(ListenAddr::parse("udp:127.0.0.1").is_err());
}

#[test]
fn errors_name_the_key() {
    let mut config = parse(MINIMAL);
    config.media.rtp_ports = "30000-20000".into();
    assert_eq!(config.validate().unwrap_err().key, "media.rtp_ports");

    let mut config = parse(MINIMAL);
    config.trunks[0].routes[0].flow = Some("missing".into());
    let error = config.validate().unwrap_err();
    assert_eq!(error.key, "trunks[0].routes[0].flow");
    assert!(error.reason.contains("missing"), "{error}");

    let mut config = parse(MINIMAL);
    config.flows.push(config.flows[0].clone());
    assert_eq!(config.validate().unwrap_err().key, "flows[1].name");

    let mut config = parse(MINIMAL);
    config.dial.allow = vec!["^sip:ok@".into(), "(unclosed".into()];
    assert_eq!(config.validate().unwrap_err().key, "dial.allow[1]");

    let mut config = parse(MINIMAL);
    config.dial.ringback = Some("mars".into());
    assert_eq!(config.validate().unwrap_err().key, "dial.ringback");
}

#[test]
fn registration_errors_name_the_key() {
    let with = |registration: &str, listen: &str| {
        parse(&format!(
            "[sip]\nlisten = [{listen}]\n{MINIMAL}\n[[registrations]]\n{registration}"
        ))
        .validate()
    };
    let base = "id = \"pbx-1\"\nusername = \"1001\"\npassword = \"x\"\nflow = \"echo\"\n";
    let udp = "\"udp:127.0.0.1:5060\"";
    let valid = with(&format!("{base}proxy = \"pbx.test:5090\""), udp).unwrap();
    assert_eq!(valid.registrations[0].expires, 3600);
    let cases = [
        (
            "proxy = \"pbx.test;transport=tcp\"",
            "registrations[0].proxy",
            "no tcp",
        ),
        (
            "proxy = \"pbx.test;transport=tls\"",
            "registrations[0].proxy",
            "no tls address",
        ),
        (
            "proxy = \"pbx.test;transport=sctp\"",
            "registrations[0].proxy",
            "not udp, tcp or tls",
        ),
        (
            "proxy = \"1001@pbx.test\"",
            "registrations[0].proxy",
            "without a user",
        ),
        (
            "proxy = \"pbx.test\"\nexpires = 10",
            "registrations[0].expires",
            "30",
        ),
        (
            "proxy = \"pbx.test\"\nstatus_callback = \"ftp://x\"",
            "registrations[0].status_callback",
            "http",
        ),
    ];
    for (extra, key, reason) in cases {
        let error = with(&format!("{base}{extra}"), udp).unwrap_err();
        assert_eq!(error.key, key, "{extra}: {error}");
        assert!(error.reason.contains(reason), "{extra}: {error}");
    }
    let twice =
        format!("{base}proxy = \"pbx.test\"\n[[registrations]]\n{base}proxy = \"pbx.test\"");
    assert_eq!(with(&twice, udp).unwrap_err().key, "registrations[1].id");
    let other_flow = base.replace("\"echo\"", "\"nope\"");
    let error = with(&format!("{other_flow}proxy = \"pbx.test\""), udp).unwrap_err();
    assert_eq!(error.key, "registrations[0].flow");
}

#[test]
fn calls_api_login_needs_both_halves_and_a_real_token() {
    let with = |api: &str| {
        parse(&format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:5060\"]\n{MINIMAL}\n[api]\n{api}"
        ))
        .validate()
    };
    let good = with("account_sid = \"AC1\"\nauth_token = \"0123456789abcdef\"").unwrap();
    assert_eq!(good.api_credentials.unwrap().account_sid, "AC1");
    assert!(with("").unwrap().api_credentials.is_none());
    let cases = [
        ("account_sid = \"AC1\"", "api.auth_token", "required"),
        (
            "auth_token = \"0123456789abcdef\"",
            "api.account_sid",
            "required",
        ),
        (
            "account_sid = \"AC1\"\nauth_token = \"short\"",
            "api.auth_token",
            "16",
        ),
        (
            "account_sid = \"A:C\"\nauth_token = \"0123456789abcdef\"",
            "api.account_sid",
            ":",
        ),
    ];
    for (api, key, reason) in cases {
        let error = with(api).unwrap_err();
        assert_eq!(error.key, key, "{api}: {error}");
        assert!(error.reason.contains(reason), "{api}: {error}");
    }
}

#[test]
fn tcp_limits_must_be_usable() {
    let with = |limits: &str| {
        parse(&format!(
            "[sip]\nlisten = [\"tcp:127.0.0.1:5060\"]\n{MINIMAL}\n[limits]\n{limits}"
        ))
        .validate()
    };
    assert!(with("tcp_connections_per_ip = 8").is_ok());
    assert_eq!(
        with("tcp_connections_per_ip = 0").unwrap_err().key,
        "limits.tcp_connections_per_ip"
    );
    assert_eq!(
        with("tcp_message_timeout_secs = 30\ntcp_idle_timeout_secs = 20")
            .unwrap_err()
            .key,
        "limits.tcp_idle_timeout_secs"
    );
}

#[test]
fn outbound_trunks_are_checked() {
    let with = |outbound: &str| {
        let text = MINIMAL.replace(
            "routes = [{ pattern = \".*\", flow = \"echo\" }]",
            &format!(
                "routes = [{{ pattern = \".*\", flow = \"echo\" }}]\n    outbound = {outbound}"
            ),
        );
        parse(&format!("[sip]\nlisten = [\"udp:127.0.0.1:5060\"]\n{text}")).validate()
    };
    let valid =
        with("{ proxy = \"sip:carrier.test:5080\", username = \"u\", password = \"p\" }").unwrap();
    assert_eq!(valid.dial.trunks.len(), 1);
    assert_eq!(valid.dial.trunks[0].from_domain, "carrier.test");
    let cases = [
        (
            "{ proxy = \"carrier.test;transport=tcp\" }",
            "trunks[0].outbound.proxy",
        ),
        (
            "{ proxy = \"carrier.test;transport=tls\" }",
            "trunks[0].outbound.proxy",
        ),
        (
            "{ proxy = \"carrier.test\", username = \"u\" }",
            "trunks[0].outbound.username",
        ),
        (
            "{ proxy = \"carrier.test\", from_domain = \"a b\" }",
            "trunks[0].outbound.from_domain",
        ),
    ];
    for (outbound, key) in cases {
        assert_eq!(with(outbound).unwrap_err().key, key, "{outbound}");
    }
}

#[test]
fn tls_settings_are_checked_with_file_key_and_reason() {
    let tls_listener = format!("[sip]\nlisten = [\"tls:127.0.0.1:5061\"]\n{MINIMAL}");
    let error = parse(&tls_listener).validate().unwrap_err();
    assert_eq!(error.key, "sip.tls.cert");
    assert!(error.reason.contains("sip.tls.key"), "{}", error.reason);

    let missing = format!(
        "[sip]\nlisten = [\"tls:127.0.0.1:5061\"]\n[sip.tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n{MINIMAL}"
    );
    let error = parse(&missing).validate().unwrap_err();
    assert_eq!(error.key, "sip.tls.cert");
    assert!(
        error.reason.contains("/nonexistent/cert.pem"),
        "{}",
        error.reason
    );

    let dir = std::env::temp_dir().join(format!("switchboard-tls-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let garbage = format!(
        "[sip]\nlisten = [\"tls:127.0.0.1:5061\"]\n[sip.tls]\ncert = \"{0}\"\nkey = \"{0}\"\n{MINIMAL}",
        not_pem.display()
    );
    let error = parse(&garbage).validate().unwrap_err();
    assert_eq!(error.key, "sip.tls.cert");
    assert!(
        error.reason.contains("no PEM certificate"),
        "{}",
        error.reason
    );

    let names_without_ca = format!(
        "{MINIMAL}\n[[trunks]]\nname = \"carrier\"\ntls_client_names = [\"sbc.carrier.test\"]\nroutes = [{{ pattern = \".*\", flow = \"echo\" }}]\n"
    );
    let error = parse(&names_without_ca).validate().unwrap_err();
    assert_eq!(error.key, "trunks[1].tls_client_names");

    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sip_workers_default_to_one_per_cpu_and_are_bounded() {
    let with = |limits: &str| {
        parse(&format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:5060\"]\n{MINIMAL}\n[limits]\n{limits}"
        ))
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(with("").limits.endpoint_shards(), cpus);
    assert_eq!(with("sip_workers = 3").limits.endpoint_shards(), 3);
    assert!(with("sip_workers = 256").validate().is_ok());
    let error = with("sip_workers = 257").validate().unwrap_err();
    assert_eq!(error.key, "limits.sip_workers");
}

#[test]
fn an_md5_ha1_needs_an_md5_challenge() {
    let config = parse(
        r#"
[registrar]
algorithms = ["SHA-256"]

[[users]]
username = "alice"
ha1 = "0123456789abcdef0123456789abcdef"
"#,
    );
    let error = config.validate().unwrap_err();
    assert_eq!(error.key, "users[0].ha1");
    assert!(
        error.reason.contains("does not offer MD5"),
        "{}",
        error.reason
    );
}
