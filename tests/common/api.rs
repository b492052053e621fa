//! The gateway's HTTP API from a test: plain HTTP/1.1 GETs, Prometheus
//! samples, and where the API listens.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::gateway::GatewayProcess;

pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, "")
}

/// A POST with a form body (empty allowed).
pub fn http_post(addr: SocketAddr, path: &str, form: &str) -> (u16, String) {
    http_request(addr, "POST", path, form)
}

fn http_request(addr: SocketAddr, method: &str, path: &str, form: &str) -> (u16, String) {
    http_request_with(addr, method, path, form, "")
}

/// Any request, with `extra` header lines (each ending in CRLF).
pub fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    form: &str,
    extra: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("API reachable");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let content_type = if form.is_empty() {
        String::new()
    } else {
        "Content-Type: application/x-www-form-urlencoded\r\n".to_string()
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}{content_type}Content-Length: {}\r\n\r\n{form}",
        form.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A request to the Twilio-style Calls API with basic auth.
pub fn twilio_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    form: &str,
    login: (&str, &str),
) -> (u16, serde_json::Value) {
    use base64::Engine;
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", login.0, login.1));
    let (status, body) = http_request_with(
        addr,
        method,
        path,
        form,
        &format!("Authorization: Basic {token}\r\n"),
    );
    let json = serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON from {path}: {body}"));
    (status, json)
}

/// GETs a call resource until its status is `wanted` (a call's BYE goes
/// out before its task has finished and marked the resource ended).
pub fn wait_for_call_status(
    addr: SocketAddr,
    path: &str,
    wanted: &str,
    login: (&str, &str),
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, call) = twilio_request(addr, "GET", path, "", login);
        if call["status"] == wanted || std::time::Instant::now() > deadline {
            return call;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the sample whose name and labels start with `prefix`.
pub fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

pub fn api_addr(gateway: &GatewayProcess) -> SocketAddr {
    let line = gateway.wait_for_log(&["HTTP API listening"], Duration::from_secs(5));
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("addr="))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no addr in {line}"))
}
