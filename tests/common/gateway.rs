//! Runs the real `switchboard` binary on loopback with a config written by
//! the test, and finds the ports it bound from its log.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct GatewayProcess {
    child: Child,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    /// The `tls:` listener, when the configuration has one.
    pub tls: Option<SocketAddr>,
    logs: Arc<Mutex<Vec<String>>>,
    pub dir: PathBuf,
}

/// A scratch directory under the target dir, unique per test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish() % 1_000_000
}

/// Trunk and flows appended to a listen section on ephemeral ports.
pub fn config_with(body: &str) -> String {
    format!(
        r#"
[sip]
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]

[media]
rtp_ports = "40000-49999"
rtp_timeout_secs = 10
jitter_depth_ms = 40

{body}
"#
    )
}

/// `config` (from [`config_with`]) also listening for TLS with `cert` and
/// `key`, plus any other `[sip.tls]` lines.
pub fn with_tls(config: &str, cert: &Path, key: &Path, more: &str) -> String {
    config.replace(
        r#"listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]"#,
        &format!(
            "listen = [\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\", \"tls:127.0.0.1:0\"]\n\n[sip.tls]\ncert = \"{}\"\nkey = \"{}\"\n{more}",
            cert.display(),
            key.display()
        ),
    )
}

/// The default echo setup every basic test uses.
pub fn echo_config(extra: &str) -> String {
    config_with(&format!(
        r#"
[[trunks]]
name = "loopback"
allow = ["127.0.0.1"]
routes = [{{ pattern = '^(echo|\d+)$', flow = "echo" }}]

[[flows]]
name = "echo"
bot = {{ kind = "echo", delay_ms = 200, sample_rate = 16000 }}

{extra}
"#
    ))
}

impl GatewayProcess {
    pub fn start(name: &str, config: &str) -> GatewayProcess {
        let dir = scratch_dir(name);
        let path = dir.join("switchboard.toml");
        std::fs::write(&path, with_sip_workers(config)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["run", "--config"])
            .arg(&path)
            .args(["--drain-secs", "2"])
            .env("SWITCHBOARD_LOG", "info,switchboard_gateway=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning switchboard");
        let logs = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let logs = logs.clone();
            let test = name.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("SWITCHBOARD_TEST_ECHO_LOGS").is_some() {
                        eprintln!("[{test}] {line}");
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut udp, mut tcp, mut tls) = (None, None, None);
        let wants_tls = config.contains("\"tls:");
        while udp.is_none() || tcp.is_none() || (wants_tls && tls.is_none()) {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("gateway did not start: {:#?}", logs.lock().unwrap());
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("gateway exited with {status}: {:#?}", logs.lock().unwrap());
            }
            for line in logs.lock().unwrap().iter() {
                if !line.contains("listening for SIP") {
                    continue;
                }
                let addr = line
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix("addr="))
                    .and_then(|addr| addr.parse::<SocketAddr>().ok());
                if line.contains("transport=udp") {
                    udp = addr;
                } else if line.contains("transport=tcp") {
                    tcp = addr;
                } else if line.contains("transport=tls") {
                    tls = addr;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        GatewayProcess {
            child,
            udp: udp.unwrap(),
            tcp: tcp.unwrap(),
            tls,
            logs,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open file descriptors of the gateway process (sockets included).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until a log line contains every one of `needles`.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .logs()
                .into_iter()
                .find(|line| needles.iter().all(|needle| line.contains(needle)))
            {
                return line;
            }
            if Instant::now() > deadline {
                panic!(
                    "no log line with {needles:?} in:\n{}",
                    self.logs().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn assert_no_panic(&self) {
        let logs = self.logs();
        assert!(
            !logs.iter().any(|line| line.contains("panicked")),
            "gateway panicked:\n{}",
            logs.join("\n")
        );
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "gateway did not stop on SIGTERM:\n{}",
                    self.logs().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every gateway a test starts runs three endpoint shards unless its
/// configuration says otherwise, whatever the machine's CPU count: a
/// message or a command that reached the wrong shard (a transfer's agent
/// leg, a registrar answer, a placed call) then fails a test two times in
/// three instead of passing on a one-CPU machine.
pub fn with_sip_workers(config: &str) -> String {
    const WORKERS: &str = "sip_workers = 3\n";
    if config.contains("sip_workers") {
        config.to_string()
    } else if config.contains("[limits]\n") {
        config.replacen("[limits]\n", &format!("[limits]\n{WORKERS}"), 1)
    } else {
        format!("{config}\n[limits]\n{WORKERS}")
    }
}
