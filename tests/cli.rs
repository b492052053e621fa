//! `switchboard check`: bad configuration refuses to start, naming the file,
//! the key and the reason; the embedded default is valid from any directory.

mod common;

use std::process::Command;

use common::gateway::scratch_dir;

fn check(config: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = scratch_dir("cli");
    let path = dir.join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command.args(["check", "--config"]).arg(&path);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains(path.to_str().unwrap()),
        "output names the file:\n{text}"
    );
    (output.status.success(), text)
}

const GOOD: &str = r#"
[[trunks]]
name = "t"
allow = ["10.0.0.0/8"]
routes = [{ pattern = '^\d+$', flow = "f" }]

[[flows]]
name = "f"
bot = { kind = "twilio_stream", url = "wss://bot.example.com/${BOT_PATH}" }
"#;

#[test]
fn valid_config_passes_with_env_interpolation() {
    let (ok, text) = check(GOOD, &[("BOT_PATH", "media")]);
    assert!(ok, "{text}");
    assert!(text.contains("ok"), "{text}");
}

#[test]
fn errors_name_file_key_and_reason() {
    let cases: &[(&str, &str, &[&str])] = &[
        (GOOD, "missing env", &["BOT_PATH", "is not set", "url"]),
        (
            &GOOD.replace("10.0.0.0/8", "10.0.0.0/33"),
            "bad cidr",
            &["trunks[0].allow[0]", "10.0.0.0/33"],
        ),
        (
            &GOOD.replace(r"^\d+$", r"^(\d+$"),
            "bad regex",
            &["trunks[0].routes[0].pattern", "regex"],
        ),
        (
            &GOOD.replace("flow = \"f\"", "flow = \"nope\""),
            "unknown flow",
            &["trunks[0].routes[0].flow", "nope"],
        ),
        (
            &format!("{GOOD}\n[sip]\nlisten = [\"udp:localhost\"]\n"),
            "bad listen",
            &["sip.listen[0]"],
        ),
        (
            &format!("{GOOD}\n[media]\nrtp_ports = \"9-1\"\n"),
            "bad ports",
            &["media.rtp_ports"],
        ),
        (
            &GOOD.replace("kind = \"twilio_stream\"", "kind = \"telepathy\""),
            "unknown bot",
            &["telepathy"],
        ),
        (
            &format!("{GOOD}\n[limits]\nmax_calls = 0\nsurprise = 1\n"),
            "unknown key",
            &["surprise"],
        ),
    ];
    for (config, what, needles) in cases {
        let env: &[(&str, &str)] = if *what == "missing env" {
            &[]
        } else {
            &[("BOT_PATH", "m")]
        };
        let (ok, text) = check(config, env);
        assert!(!ok, "{what}: accepted:\n{text}");
        for needle in *needles {
            assert!(
                text.contains(needle),
                "{what}: `{needle}` missing from:\n{text}"
            );
        }
    }
}

#[test]
fn embedded_default_runs_from_any_directory() {
    let dir = scratch_dir("cli-default");
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("check")
        .current_dir(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("<embedded default>: ok"), "{text}");
}
