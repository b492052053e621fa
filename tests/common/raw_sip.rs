//! A bare-bones SIP UAC over UDP for targeted protocol checks: writes
//! requests by hand and reads whatever comes back.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

pub struct RawSip {
    pub socket: UdpSocket,
    pub target: SocketAddr,
}

impl RawSip {
    pub fn new(target: SocketAddr) -> RawSip {
        let bind = if target.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        };
        let socket = UdpSocket::bind(bind).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        RawSip { socket, target }
    }

    pub fn local(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    /// `host:port` of our socket as written in Via/Contact.
    pub fn sent_by(&self) -> String {
        match self.local() {
            SocketAddr::V4(addr) => addr.to_string(),
            SocketAddr::V6(addr) => format!("[{}]:{}", addr.ip(), addr.port()),
        }
    }

    pub fn send(&self, text: &str) {
        self.socket.send_to(text.as_bytes(), self.target).unwrap();
    }

    /// Reads messages until one satisfies `wanted` or `timeout` passes.
    pub fn wait_for(&self, wanted: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 65_536];
        while Instant::now() < deadline {
            if let Ok((len, _)) = self.socket.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..len]).to_string();
                if wanted(&text) {
                    return Some(text);
                }
            }
        }
        None
    }

    /// A request outside any dialog.
    pub fn request(
        &self,
        method: &str,
        user: &str,
        call_id: &str,
        cseq: u32,
        extra: &str,
        body: &str,
    ) -> String {
        let host = self.target;
        format!(
            "{method} sip:{user}@{host} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK{call_id}{cseq}{method}\r\nFrom: <sip:tester@{via}>;tag=tester\r\nTo: <sip:{user}@{host}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:tester@{via}>\r\nMax-Forwards: 70\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len(),
            via = self.sent_by(),
        )
    }
}

pub fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

pub fn status(message: &str) -> Option<u16> {
    message.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}
