//! Time from our 200 OK to the first caller audio frame delivered to the
//! bot, over sequential calls to a Twilio Media Streams bot on loopback.
//!
//!   cargo bench --bench first_audio -- --calls 30
//!
//! The caller starts streaming RTP the moment it sees the 200 OK, as phones
//! do; the figure therefore includes the jitter buffer's configured depth.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let calls = arg("--calls", 30) as usize;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let bot_addr = listener.local_addr().unwrap();
    let (first_media, first_media_rx) = mpsc::channel::<Instant>();
    runtime.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let first_media = first_media.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let mut reported = false;
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Text(text) = message {
                        if !reported
                            && text.contains("\"event\":\"media\"")
                            && !text.contains("\"payload\":\"//////")
                        {
                            let _ = first_media.send(Instant::now());
                            reported = true;
                        }
                    }
                }
            });
        }
    });

    let dir = std::env::temp_dir().join(format!("switchboard-first-audio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:0\"]\n[media]\nrtp_ports = \"40000-49999\"\njitter_depth_ms = 40\n\
         [[trunks]]\nname = \"t\"\nallow = [\"127.0.0.1\"]\nroutes = [{{ pattern = \".*\", flow = \"bot\" }}]\n\
         [[flows]]\nname = \"bot\"\nbot = {{ kind = \"twilio_stream\", url = \"ws://{bot_addr}/media\" }}\n"
    );
    std::fs::write(dir.join("c.toml"), config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["run", "--config"])
        .arg(dir.join("c.toml"))
        .env("SWITCHBOARD_LOG", "warn,switchboard=info")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let gateway: SocketAddr = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(addr) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
        {
            break addr.parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    let mut samples = Vec::new();
    for index in 0..calls {
        let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        sip.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (sip_port, rtp_port) = (
            sip.local_addr().unwrap().port(),
            rtp.local_addr().unwrap().port(),
        );
        let sdp = format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 0\r\n");
        let call_id = format!("first-{index}");
        let invite = format!(
            "INVITE sip:1@{gateway} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bK{call_id}\r\nFrom: <sip:a@127.0.0.1>;tag=a\r\nTo: <sip:1@{gateway}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:{sip_port}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        sip.send_to(invite.as_bytes(), gateway).unwrap();
        let mut buf = [0u8; 4096];
        let (ok_at, media_port) = loop {
            let (len, _) = sip.recv_from(&mut buf).expect("response");
            let text = String::from_utf8_lossy(&buf[..len]);
            if text.starts_with("SIP/2.0 200") {
                let port: u16 = text
                    .lines()
                    .find(|l| l.starts_with("m=audio"))
                    .unwrap()
                    .split(' ')
                    .nth(1)
                    .unwrap()
                    .parse()
                    .unwrap();
                break (Instant::now(), port);
            }
        };
        let target = SocketAddr::from(([127, 0, 0, 1], media_port));
        let tone: Vec<u8> = (0..160)
            .map(|n| switchboard_media::g711::ulaw_encode(((n as f64 * 0.3).sin() * 9000.0) as i16))
            .collect();
        for sequence in 0..15u16 {
            let mut packet = vec![0x80, 0];
            packet.extend_from_slice(&sequence.to_be_bytes());
            packet.extend_from_slice(&(sequence as u32 * 160).to_be_bytes());
            packet.extend_from_slice(&1u32.to_be_bytes());
            packet.extend_from_slice(&tone);
            rtp.send_to(&packet, target).unwrap();
            if let Ok(at) = first_media_rx.recv_timeout(Duration::from_millis(20)) {
                samples.push(at.duration_since(ok_at).as_secs_f64() * 1000.0);
                break;
            }
        }
        let _ = first_media_rx.try_recv();
    }
    let _ = child.kill();
    let _ = child.wait();
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pick = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    println!(
        "200 OK -> first caller audio at the bot over {} calls: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms (jitter depth 40 ms)",
        samples.len(),
        pick(0.5),
        pick(0.9),
        samples.last().unwrap()
    );
}
