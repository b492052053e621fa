//! linphonec (Debian `linphone-cli`), driven on its stdin like a person at
//! its prompt, on loopback ports of its own; killed on drop.

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

pub struct Linphone {
    child: Child,
    stdin: ChildStdin,
    pub log: std::path::PathBuf,
}

impl Linphone {
    pub fn start(dir: &Path) -> Linphone {
        let dir = dir.join("linphone");
        // Without its data directory linphonec cannot open its database,
        // never leaves start-up and opens no SIP socket.
        std::fs::create_dir_all(dir.join(".local/share/linphone")).unwrap();
        let free = || {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let rc = dir.join("linphonerc");
        std::fs::write(
            &rc,
            format!(
                "[sip]\nsip_port={}\nsip_tcp_port=-1\nsip_tls_port=-1\nguess_hostname=1\nipv6_enabled=0\n[rtp]\naudio_rtp_port={}\n[video]\nenabled=0\nautomatically_initiate=0\n[sound]\nechocancellation=0\n",
                free(),
                free()
            ),
        )
        .unwrap();
        let log = dir.join("linphonec.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut child = Command::new("linphonec")
            .arg("-c")
            .arg(&rc)
            .args(["-d", "0"])
            .env("HOME", &dir)
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawning linphonec (scripts/bootstrap installs linphone-cli)");
        let stdin = child.stdin.take().unwrap();
        Linphone { child, stdin, log }
    }

    /// Types a command at its prompt.
    pub fn command(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its output holds `needle`.
    pub fn wait_for(&self, needle: &str, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "linphonec never printed {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Linphone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
