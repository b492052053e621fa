//! Hostile input: every message of the torture corpus
//! (gateway/tests/torture/) is fired at the UDP and TCP ports of the running
//! binary. Malformed requests get 400 where one can be addressed, nothing
//! panics, and a normal call still works afterwards.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use common::gateway::{echo_config, GatewayProcess};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, SipTransport, G711_OFFER};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gateway/tests/torture");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("torture corpus directory")
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "sip"))
        .map(|entry| {
            (
                entry.file_name().to_string_lossy().to_string(),
                std::fs::read(entry.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "torture corpus has only {} messages",
        files.len()
    );
    files
}

/// Files named `*_invalid400_*` must draw a 400.
fn expects_400(name: &str) -> bool {
    name.contains("invalid400")
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn torture_messages_over_udp_and_tcp_then_a_normal_call() {
    let gateway = GatewayProcess::start("torture", &echo_config(""));
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let mut failures = Vec::new();
    for (name, bytes) in corpus() {
        // UDP: one datagram each.
        udp.send_to(&bytes, gateway.udp).unwrap();
        let mut buf = [0u8; 65_536];
        let mut responses = Vec::new();
        while let Ok((len, _)) = udp.recv_from(&mut buf) {
            responses.push(first_line(&buf[..len]));
            if !expects_400(&name) && responses.len() > 3 {
                break;
            }
        }
        if expects_400(&name) && !responses.iter().any(|line| line.starts_with("SIP/2.0 400")) {
            failures.push(format!("udp {name}: expected 400, got {responses:?}"));
        }
        if name.contains("invalid_noreply") && !responses.is_empty() {
            failures.push(format!(
                "udp {name}: expected no response, got {responses:?}"
            ));
        }

        // TCP: a fresh connection each, so a fatal framing error on one
        // message cannot hide the next.
        let mut stream = TcpStream::connect(gateway.tcp).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        let _ = stream.write_all(&bytes);
        let mut received = Vec::new();
        let mut chunk = [0u8; 8192];
        while let Ok(len) = stream.read(&mut chunk) {
            if len == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..len]);
            if expects_400(&name) && String::from_utf8_lossy(&received).contains("SIP/2.0 400") {
                break;
            }
        }
        // A Content-Length beyond the bytes sent is, on a stream, a message
        // still arriving: no answer is possible until the connection closes.
        let stream_can_answer = !name.contains("content_length_too_large");
        if expects_400(&name)
            && stream_can_answer
            && !String::from_utf8_lossy(&received).contains("SIP/2.0 400")
        {
            failures.push(format!(
                "tcp {name}: expected 400, got {:?}",
                first_line(&received)
            ));
        }
    }
    gateway.assert_no_panic();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let malformed_lines = gateway
        .logs()
        .iter()
        .filter(|line| line.contains("malformed SIP message"))
        .count();
    assert!(malformed_lines > 0, "malformed messages were not logged");

    // The gateway still takes a normal call.
    let peer = RtpPeer::bind();
    let scenario = sipp::caller_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER), 1500);
    let output = sipp::run(
        &gateway.dir,
        "after-torture",
        &scenario,
        gateway.udp,
        SipTransport::Udp,
        "127.0.0.1",
    );
    sipp::assert_success(&output, &gateway.dir);
    gateway.assert_no_panic();
}
