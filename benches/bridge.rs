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
use harness::agent::{header, run_agent, AgentHooks};
use harness::{arg, hold_calls, pct, start_gateway, Figures};
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
    let (on_invite, on_media) = (timings.clone(), timings.clone());
    let hooks = AgentHooks {
        on_invite: Box::new(move |invite: &str| {
            // The caller's number (`loadN`) names the call.
            let caller = header(invite, "From")
                .split("sip:")
                .nth(1)
                .and_then(|rest| rest.split('@').next())
                .unwrap_or("")
                .to_string();
            let mut t = on_invite.lock().unwrap();
            if let Some(sent) = t.action_sent.get(&caller).copied() {
                t.action_to_invite_ms
                    .push(sent.elapsed().as_secs_f64() * 1000.0);
            }
        }),
        on_first_media: Box::new(move |since_answer: Duration| {
            on_media
                .lock()
                .unwrap()
                .ok_to_media_ms
                .push(since_answer.as_secs_f64() * 1000.0);
        }),
    };
    tokio::spawn(run_agent(agent, agent_payload_type, hooks));
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
