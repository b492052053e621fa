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
    config: PathBuf,
    dir: PathBuf,
}

impl Kamailio {
    /// Writes `routing` (the config after the global section) under a
    /// global section listening on a free UDP port, and starts Kamailio.
    pub fn start(dir: &Path, routing: &str) -> Kamailio {
        Kamailio::start_with(dir, false, routing)
    }

    /// Like [`Kamailio::start`]; with `tcp` it listens on TCP too, on the
    /// same port.
    pub fn start_with(dir: &Path, tcp: bool, routing: &str) -> Kamailio {
        let port = loop {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = udp.local_addr().unwrap().port();
            if !tcp || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                break port;
            }
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let listen = if tcp {
            format!("listen=udp:127.0.0.1:{port}\nlisten=tcp:127.0.0.1:{port}\n")
        } else {
            format!("listen=udp:127.0.0.1:{port}\ndisable_tcp=yes\n")
        };
        let config = format!(
            "#!KAMAILIO\n{listen}children=1\ntcp_children=1\nlog_stderror=yes\ndebug=2\nauto_aliases=no\nmpath=\"{MODULES}\"\n{routing}"
        );
        let path = dir.join("kamailio.cfg");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("kamailio.log");
        let child = spawn(dir, &path, &log);
        let kamailio = Kamailio {
            child,
            addr,
            log,
            config: path,
            dir: dir.to_path_buf(),
        };
        kamailio.wait_listening();
        kamailio
    }

    /// Kills Kamailio and its worker processes (as a crash would: nothing
    /// is sent; the kernel closes its TCP connections).
    pub fn kill(&mut self) {
        // Workers are forked children: signal the whole process group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Orphaned workers may take a moment to go and free the port.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::UdpSocket::bind(self.addr).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts Kamailio again, same config and port, with an empty
    /// location table.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(&self.dir, &self.config, &self.log);
        self.wait_listening();
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

fn spawn(dir: &Path, config: &Path, log: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    use std::os::unix::process::CommandExt;
    Command::new("kamailio")
        .process_group(0)
        .args(["-DD", "-E", "-f"])
        .arg(config)
        .args(["-Y", &dir.to_string_lossy()])
        .args(["-P", &dir.join("kamailio.pid").to_string_lossy()])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawning kamailio (scripts/bootstrap installs it)")
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.kill();
    }
}
