//! Stalled TCP connections cannot lock the gateway out: one source holds
//! at most `tcp_connections_per_ip`, each must send a whole message within
//! `tcp_message_timeout_secs`, and meanwhile a carrier's call over TCP from
//! another address goes through.

mod common;

use std::time::{Duration, Instant};

use common::gateway::{echo_config, GatewayProcess};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, SipTransport, G711_OFFER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PER_IP: usize = 20;

#[test]
fn stalled_connections_are_capped_and_closed_while_calls_go_on() {
    let config = echo_config("").replace(
        "[media]",
        &format!(
            "[limits]\ntcp_connections_per_ip = {PER_IP}\ntcp_message_timeout_secs = 2\n\n[media]"
        ),
    );
    let gateway = GatewayProcess::start("tcp-limits", &config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // 127.0.0.2 opens twice its allowance, each sending half a header.
    let mut stalled = runtime.block_on(async {
        let mut streams = Vec::new();
        for _ in 0..2 * PER_IP {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let mut stream = socket.connect(gateway.tcp).await.unwrap();
            let _ = stream
                .write_all(b"INVITE sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2")
                .await;
            streams.push(stream);
        }
        streams
    });
    // Those beyond the allowance are closed at once.
    let open_at_first = runtime.block_on(count_open(&mut stalled, Duration::from_millis(500)));
    assert_eq!(
        open_at_first, PER_IP,
        "one source keeps {PER_IP} connections"
    );
    gateway.wait_for_log(
        &["refusing TCP connections", "127.0.0.2"],
        Duration::from_secs(2),
    );

    // A call over TCP from another address meanwhile.
    let peer = RtpPeer::bind();
    let scenario = sipp::caller_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER), 1000);
    let output = sipp::run(
        &gateway.dir,
        "call",
        &scenario,
        gateway.tcp,
        SipTransport::Tcp,
        "127.0.0.1",
    );
    sipp::assert_success(&output, &gateway.dir);

    // The stalled ones are closed once their message is overdue.
    let started = Instant::now();
    let open = runtime.block_on(count_open(&mut stalled, Duration::from_secs(4)));
    assert_eq!(
        open, 0,
        "stalled connections closed within the message timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    gateway.wait_for_log(&["no whole SIP message in time"], Duration::from_secs(1));

    // Its allowance is free again: a well-behaved client from 127.0.0.2 is served.
    let answered = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut stream = socket.connect(gateway.tcp).await.unwrap();
        stream
            .write_all(
                b"OPTIONS sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2:5070;branch=z9hG4bKtcp1\r\nFrom: <sip:probe@127.0.0.2>;tag=1\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: tcp-limits-probe\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            )
            .await
            .unwrap();
        let mut buf = vec![0u8; 2048];
        let len = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        String::from_utf8_lossy(&buf[..len]).to_string()
    });
    assert!(answered.starts_with("SIP/2.0 200"), "{answered}");
    gateway.assert_no_panic();
}

/// How many of `streams` are still open after `wait` (closed: EOF or reset).
async fn count_open(streams: &mut [tokio::net::TcpStream], wait: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + wait;
    let mut open = 0;
    for stream in streams.iter_mut() {
        let mut buf = [0u8; 512];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => open += 1,
            Ok(Ok(0)) | Ok(Err(_)) => {}
            // A 400 or the like before closing still counts as closing.
            Ok(Ok(_)) => {
                if !matches!(
                    tokio::time::timeout_at(deadline, stream.read(&mut buf)).await,
                    Ok(Ok(0)) | Ok(Err(_))
                ) {
                    open += 1;
                }
            }
        }
    }
    open
}
