//! Kamailio (Debian `kamailio`) started by a test with a config of its own,
//! on loopback, in the foreground, logging to a file; killed on drop.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MODULES: &str = "/usr/lib/x86_64-linux-gnu/kamailio/modules/";

pub struct Kamailio {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Kamailio {
    /// Writes `routing` (the config after the global section) under a
    /// global section listening on a free UDP port, and starts Kamailio.
    pub fn start(dir: &Path, routing: &str) -> Kamailio {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = format!(
            "#!KAMAILIO\nlisten=udp:127.0.0.1:{port}\nchildren=1\ntcp_children=1\ndisable_tcp=yes\nlog_stderror=yes\ndebug=2\nauto_aliases=no\nmpath=\"{MODULES}\"\n{routing}"
        );
        let path = dir.join("kamailio.cfg");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("kamailio.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("kamailio")
            .args(["-DD", "-E", "-f"])
            .arg(&path)
            .args(["-Y", &dir.to_string_lossy()])
            .args(["-P", &dir.join("kamailio.pid").to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawning kamailio (scripts/bootstrap installs it)");
        let kamailio = Kamailio { child, addr, log };
        kamailio.wait_listening();
        kamailio
    }

    /// Waits until Kamailio answers an OPTIONS (any response will do).
    fn wait_listening(&self) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let local = socket.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let options = format!(
                "OPTIONS sip:{addr} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKprobe{n}\r\nFrom: <sip:probe@{local}>;tag=p\r\nTo: <sip:{addr}>\r\nCall-ID: probe-{n}@test\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                addr = self.addr,
                n = Instant::now().elapsed().as_nanos()
            );
            let _ = socket.send_to(options.as_bytes(), self.addr);
            if socket.recv_from(&mut buf).is_ok() {
                return;
            }
        }
        panic!("kamailio did not start:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
