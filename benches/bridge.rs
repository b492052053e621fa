//! Bridged calls under load, beside the echo bot in the same run:
//!
//!   cargo bench --bench bridge -- --calls 200 --seconds 15
//!
//! Three phases, each a fresh gateway holding N calls from the shared load
//! caller (PCMU, a 1 kHz burst once a second):
//! - `echo`: the built-in echo bot, as `--bench load` measures it;
//! - `relay`: a Twilio Media Streams bot (in this process) asks, as soon as
//!   the call starts, to `<Dial>` an agent (a UAS in this process) that
//!   answers PCMU like the caller, so the gateway relays RTP untouched; the
//!   agent echoes every packet back at once;
//! - `transcode`: the same with an agent that answers PCMA, so both legs
//!   run a full pipeline.
//!
//! Per phase: CPU and RSS per call, late frames, the burst's round trip
//! (caller → gateway → agent → gateway → caller; for echo minus the bot's
//! 200 ms), and for the bridged phases the time from the bot's action to
//! the agent's INVITE and from the agent's 200 OK to the first packet the
//! gateway bridged to it.

mod harness;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use harness::{arg, hold_calls, start_gateway, Figures};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

const ECHO_DELAY_MS: u64 = 200;

#[derive(Default)]
struct Timings {
    /// By caller (`loadN`): when the bot sent its dial action.
    action_sent: HashMap<String, Instant>,
    /// By caller: bot action → INVITE at the agent, in ms.
    action_to_invite_ms: Vec<f64>,
    /// Agent 200 OK → first RTP packet bridged to the agent, in ms.
    ok_to_media_ms: Vec<f64>,
}

type Shared = Arc<Mutex<Timings>>;

fn main() {
    let calls = arg("--calls", 200) as usize;
    let seconds = arg("--seconds", 15);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let echo = phase_echo(calls, seconds).await;
        let relay = phase_bridge(calls, seconds, 0).await;
        let transcode = phase_bridge(calls, seconds, 8).await;
        println!();
        println!("| phase | calls answered | late frames | CPU per call | RSS per call | round trip p50 / p99 ms | action → INVITE p50 / p99 ms | 200 OK → first bridged packet p50 / p99 ms |");
        println!("|---|---|---|---|---|---|---|---|");
        row("echo bot", &echo.0, None);
        row("bridge, relay (PCMU ↔ PCMU)", &relay.0, Some(&relay.1));
        row("bridge, transcode (PCMU ↔ PCMA)", &transcode.0, Some(&transcode.1));
    });
}

fn pct(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    sorted
        .get(((sorted.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

fn row(label: &str, figures: &Figures, timings: Option<&Timings>) {
    let transfer = |values: &[f64]| format!("{:.1} / {:.1}", pct(values, 0.5), pct(values, 0.99));
    let (invite, media) = match timings {
        Some(t) => (
            transfer(&t.action_to_invite_ms),
            transfer(&t.ok_to_media_ms),
        ),
        None => ("–".into(), "–".into()),
    };
    println!(
        "| {label} | {} / {} | {} | {:.3}% | {:.0} KiB | {:.1} / {:.1} | {invite} | {media} |",
        figures.answered,
        figures.requested,
        figures.late,
        figures.cpu_per_call(),
        figures.rss_per_call(),
        figures.percentile(0.5),
        figures.percentile(0.99),
    );
}

fn base_config(calls: usize) -> String {
    format!(
        r#"
[sip]
listen = ["udp:127.0.0.1:0"]
[media]
rtp_ports = "20000-39999"
rtp_timeout_secs = 30
[limits]
max_calls = {}
[[trunks]]
name = "load"
allow = ["127.0.0.1"]
routes = [{{ pattern = ".*", flow = "main" }}]
"#,
        calls + 10
    )
}

async fn phase_echo(calls: usize, seconds: u64) -> (Figures, ()) {
    println!("== echo bot, {calls} calls");
    let config = format!(
        "{}\n[[flows]]\nname = \"main\"\nbot = {{ kind = \"echo\", delay_ms = {ECHO_DELAY_MS}, sample_rate = 16000 }}\n",
        base_config(calls)
    );
    let gateway = start_gateway(&config);
    let figures = hold_calls(
        &gateway,
        calls,
        seconds,
        ECHO_DELAY_MS,
        Duration::from_secs(2),
    )
    .await;
    figures.print();
    (figures, ())
}

async fn phase_bridge(calls: usize, seconds: u64, agent_payload_type: u8) -> (Figures, Timings) {
    let label = if agent_payload_type == 0 {
        "relay"
    } else {
        "transcode"
    };
    println!("== bridge ({label}), {calls} calls");
    let timings: Shared = Arc::default();
    let agent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = agent.local_addr().unwrap();
    tokio::spawn(run_agent(agent, agent_payload_type, timings.clone()));
    let bot = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bot_addr = bot.local_addr().unwrap();
    tokio::spawn(run_bot(bot, agent_addr, timings.clone()));
    let config = format!(
        "{}\n[dial]\nallow = ['^sip:agent@127\\.0\\.0\\.1:']\n[[flows]]\nname = \"main\"\nbot = {{ kind = \"twilio_stream\", url = \"ws://{bot_addr}/media\" }}\n",
        base_config(calls)
    );
    let gateway = start_gateway(&config);
    let figures = hold_calls(&gateway, calls, seconds, 0, Duration::from_secs(3)).await;
    figures.print();
    let timings = std::mem::take(&mut *timings.lock().unwrap());
    println!(
        "bot action -> INVITE   p50 {:.2} ms  p99 {:.2} ms ({} transfers)",
        pct(&timings.action_to_invite_ms, 0.5),
        pct(&timings.action_to_invite_ms, 0.99),
        timings.action_to_invite_ms.len()
    );
    println!(
        "200 OK -> first media  p50 {:.2} ms  p99 {:.2} ms",
        pct(&timings.ok_to_media_ms, 0.5),
        pct(&timings.ok_to_media_ms, 0.99)
    );
    (figures, timings)
}

/// A Twilio Media Streams bot that transfers every call at once.
async fn run_bot(listener: tokio::net::TcpListener, agent: SocketAddr, timings: Shared) {
    while let Ok((stream, _)) = listener.accept().await {
        let timings = timings.clone();
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let (mut sink, mut stream) = ws.split();
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                if value["event"] != "start" {
                    continue;
                }
                let caller = value["start"]["customParameters"]["from"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let twiml =
                    format!("<Response><Dial><Sip>sip:agent@{agent}</Sip></Dial></Response>");
                let action = serde_json::json!({"event": "action", "name": "twiml", "body": twiml});
                timings
                    .lock()
                    .unwrap()
                    .action_sent
                    .insert(caller, Instant::now());
                let _ = sink.send(Message::text(action.to_string())).await;
            }
        });
    }
}

fn header<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && line.as_bytes()[name.len()] == b':'
        })
        .map(|line| line[name.len() + 1..].trim())
        .unwrap_or("")
}

/// The agent: answers every INVITE with 200 OK (PCMU or PCMA) and echoes
/// each call's RTP straight back.
async fn run_agent(socket: UdpSocket, payload_type: u8, timings: Shared) {
    let socket = Arc::new(socket);
    let mut answers: HashMap<String, String> = HashMap::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..len]).to_string();
        let call_id = header(&text, "Call-ID").to_string();
        let reply = |status: &str, extra: &str, body: &str| {
            let via: String = text
                .lines()
                .filter(|l| l.to_ascii_lowercase().starts_with("via:"))
                .map(|l| format!("{l}\r\n"))
                .collect();
            format!(
                "SIP/2.0 {status}\r\n{via}From: {}\r\nTo: {}\r\nCall-ID: {call_id}\r\nCSeq: {}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                header(&text, "From"),
                header(&text, "To"),
                header(&text, "CSeq"),
                body.len()
            )
        };
        if text.starts_with("INVITE ") {
            if let Some(answer) = answers.get(&call_id) {
                let _ = socket.send_to(answer.as_bytes(), from).await;
                continue;
            }
            let caller = header(&text, "From")
                .split("sip:")
                .nth(1)
                .and_then(|rest| rest.split('@').next())
                .unwrap_or("")
                .to_string();
            {
                let mut t = timings.lock().unwrap();
                if let Some(sent) = t.action_sent.get(&caller).copied() {
                    t.action_to_invite_ms
                        .push(sent.elapsed().as_secs_f64() * 1000.0);
                }
            }
            let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = rtp.local_addr().unwrap().port();
            let codec = if payload_type == 0 { "PCMU" } else { "PCMA" };
            let sdp = format!(
                "v=0\r\no=agent 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP {payload_type}\r\na=rtpmap:{payload_type} {codec}/8000\r\na=ptime:20\r\n"
            );
            let mut ok = reply(
                "200 OK",
                &format!(
                    "Contact: <sip:agent@{}>\r\nContent-Type: application/sdp\r\n",
                    socket.local_addr().unwrap()
                ),
                &sdp,
            );
            ok = ok.replacen(
                &format!("To: {}", header(&text, "To")),
                &format!("To: {};tag=agent", header(&text, "To")),
                1,
            );
            answers.insert(call_id, ok.clone());
            let _ = socket.send_to(ok.as_bytes(), from).await;
            let answered_at = Instant::now();
            let timings = timings.clone();
            tokio::spawn(async move {
                let mut packet = [0u8; 2048];
                let mut first = true;
                while let Ok(Ok((len, from))) =
                    tokio::time::timeout(Duration::from_secs(60), rtp.recv_from(&mut packet)).await
                {
                    if first {
                        first = false;
                        timings
                            .lock()
                            .unwrap()
                            .ok_to_media_ms
                            .push(answered_at.elapsed().as_secs_f64() * 1000.0);
                    }
                    let _ = rtp.send_to(&packet[..len], from).await;
                }
            });
        } else if text.starts_with("BYE ") || text.starts_with("OPTIONS ") {
            let ok = reply("200 OK", "", "");
            let _ = socket.send_to(ok.as_bytes(), from).await;
            answers.remove(&call_id);
        }
    }
}
