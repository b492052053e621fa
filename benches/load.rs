//! Load harness: holds N concurrent echo-bot calls against the real binary
//! and reports CPU and RSS per call, late frames and the gateway's added
//! latency (RTP in → bot → RTP out, minus the echo bot's own delay).
//!
//!   cargo bench --bench load -- --calls 100 --seconds 20 [--fixed-jitter] [--jitter-ms 40]
//!       [--bot-rate 16000] [--srtp] [--ws-bot] [--runs 1] [--json]
//!
//! `--jitter-ms`: the jitter buffer's starting depth (40 by default; the
//! adaptive buffer's floor is 20). `--bot-rate`: the echo bot's sample rate;
//! 8000 takes resampling (and its filter delay) out of the path.
//!
//! `--srtp`: the callers offer RTP/SAVP with an SDES key, so every packet
//! is protected and unprotected on both sides.
//!
//! `--ws-bot`: instead of the built-in echo bot, an external one over
//! WebSocket (Switchboard's own protocol: s16le binary frames at
//! `--bot-rate`), run by the load tool on loopback, the way real bots
//! connect. It echoes each frame after the same delay, on a thread of its
//! own; its CPU counts as the load tool's.
//!
//! Each call is a UDP SIP dialog plus an RTP stream of silence with a 20 ms
//! tone burst once a second; the burst's return time gives the latency.

mod harness;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use harness::{arg, hold_calls_with, start_gateway};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;

const ECHO_DELAY_MS: u64 = 200;

fn main() {
    // `cargo bench` passes `--bench`; ignore everything but our flags.
    let calls = arg("--calls", 100) as usize;
    let seconds = arg("--seconds", 20);
    // The default is the adaptive jitter buffer; `--fixed-jitter` pins it at
    // 40 ms, for comparison with figures taken before it existed.
    let fixed_jitter = std::env::args().any(|a| a == "--fixed-jitter");
    let jitter_ms = arg("--jitter-ms", 40);
    let bot_rate = arg("--bot-rate", 16_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(calls, seconds, fixed_jitter, jitter_ms, bot_rate));
}

fn echo_config(
    calls: usize,
    fixed_jitter: bool,
    jitter_ms: u64,
    bot_rate: u64,
    ws_bot: Option<SocketAddr>,
) -> String {
    let bot = match ws_bot {
        Some(addr) => {
            format!(r#"{{ kind = "websocket", url = "ws://{addr}", sample_rate = {bot_rate} }}"#)
        }
        None => {
            format!(r#"{{ kind = "echo", delay_ms = {ECHO_DELAY_MS}, sample_rate = {bot_rate} }}"#)
        }
    };
    format!(
        r#"
[sip]
listen = ["udp:127.0.0.1:0"]
[media]
rtp_ports = "20000-39999"
rtp_timeout_secs = 30
jitter_depth_ms = {}
jitter_adaptive = {}
[limits]
max_calls = {}
[[trunks]]
name = "load"
allow = ["127.0.0.1"]
routes = [{{ pattern = ".*", flow = "echo" }}]
[[flows]]
name = "echo"
bot = {}
"#,
        jitter_ms,
        !fixed_jitter,
        calls + 10,
        bot
    )
}

/// An external echo bot: every binary frame goes back after the echo delay.
/// It runs on a thread of its own, as a bot in its own process would: on
/// the callers' thread, 500 calls' bot traffic and their RTP together kept
/// that thread busy enough to delay the echo by 20-40 ms, which read as the
/// gateway's latency.
async fn ws_echo_bot() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::Builder::new()
        .name("ws-echo-bot".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(echo_session(stream));
                }
            });
        })
        .unwrap();
    addr
}

async fn echo_session(stream: tokio::net::TcpStream) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut out, mut incoming) = ws.split();
    let delay = Duration::from_millis(ECHO_DELAY_MS);
    let mut queue = VecDeque::new();
    loop {
        let due = queue.front().map(|(at, _)| *at + delay);
        tokio::select! {
            message = incoming.next() => match message {
                Some(Ok(Message::Binary(audio))) => queue.push_back((Instant::now(), audio)),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            () = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                if let Some((_, audio)) = queue.pop_front() {
                    if out.send(Message::Binary(audio)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// One run's figures, and what the gateway's logs said of its jitter
/// buffers (median delay, talkspurts sent on arrival).
struct Run {
    figures: harness::Figures,
    jitter: Option<(u32, u64)>,
}

impl Run {
    fn latency_beyond_jitter(&self) -> Option<f64> {
        self.jitter
            .map(|(delay, _)| self.figures.percentile(0.5) - delay as f64)
    }

    fn json(&self) -> serde_json::Value {
        let mut json: serde_json::Value = serde_json::from_str(&self.figures.json()).unwrap();
        if let Some((delay, early)) = self.jitter {
            json["jitter_delay_ms_p50"] = delay.into();
            json["latency_beyond_jitter_ms_p50"] = self.latency_beyond_jitter().into();
            json["talkspurts_sent_early"] = early.into();
        }
        json
    }

    fn print(&self) {
        self.figures.print();
        if let (Some((delay, early)), Some(beyond)) = (self.jitter, self.latency_beyond_jitter()) {
            println!(
                "jitter buffer delay    p50 {delay} ms: added latency beyond it p50 {beyond:.1} ms ({early} bot talkspurts sent on arrival)"
            );
        }
    }
}

/// `--runs N` (default 1): N runs, each with a fresh gateway, then the
/// median and range of each figure. Single runs on a shared VM vary by
/// 10-20 %; a median of five is what a comparison should quote.
async fn run(calls: usize, seconds: u64, fixed_jitter: bool, jitter_ms: u64, bot_rate: u64) {
    let ws_bot = if std::env::args().any(|a| a == "--ws-bot") {
        Some(ws_echo_bot().await)
    } else {
        None
    };
    let json = std::env::args().any(|a| a == "--json");
    let count = arg("--runs", 1).max(1);
    let mut runs = Vec::new();
    for index in 0..count {
        let run = run_once(calls, seconds, fixed_jitter, jitter_ms, bot_rate, ws_bot).await;
        if !json {
            if count > 1 {
                println!("-- run {} of {count}", index + 1);
            }
            run.print();
        }
        runs.push(run);
    }
    if json {
        let mut summary = runs[0].json();
        if count > 1 {
            summary = serde_json::json!({
                "runs": runs.iter().map(Run::json).collect::<Vec<_>>(),
                "median": median_json(&runs),
            });
        }
        println!("{summary}");
    } else if count > 1 {
        print_medians(&runs);
    }
}

/// The median and range of a figure over the runs.
fn spread(runs: &[Run], figure: impl Fn(&Run) -> f64) -> (f64, f64, f64) {
    let mut values: Vec<f64> = runs.iter().map(figure).filter(|v| !v.is_nan()).collect();
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let middle = values.len() / 2;
    let median = if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    };
    (median, values[0], values[values.len() - 1])
}

type Figure = (&'static str, fn(&Run) -> f64);

const FIGURES: [Figure; 7] = [
    ("cpu_percent_per_call", |r| r.figures.cpu_per_call()),
    ("late_frames", |r| r.figures.late as f64),
    ("late_frame_windows_100ms", |r| {
        r.figures.late_windows as f64
    }),
    ("late_frames_in_measured_window", |r| {
        r.figures.late_measured as f64
    }),
    ("load_tool_cpu_percent", |r| r.figures.tool_cpu_percent),
    ("rss_per_call_kib", |r| r.figures.rss_per_call()),
    ("latency_beyond_jitter_ms_p50", |r| {
        r.latency_beyond_jitter().unwrap_or(f64::NAN)
    }),
];

fn median_json(runs: &[Run]) -> serde_json::Value {
    let mut json = serde_json::Map::new();
    for (name, figure) in FIGURES {
        let (median, low, high) = spread(runs, figure);
        json.insert(
            name.into(),
            serde_json::json!({ "median": median, "min": low, "max": high }),
        );
    }
    json.into()
}

fn print_medians(runs: &[Run]) {
    println!("-- median (min-max) over {} runs", runs.len());
    for (name, figure) in FIGURES {
        let (median, low, high) = spread(runs, figure);
        println!("{name:<29} {median:.3} ({low:.3}-{high:.3})");
    }
}

async fn run_once(
    calls: usize,
    seconds: u64,
    fixed_jitter: bool,
    jitter_ms: u64,
    bot_rate: u64,
    ws_bot: Option<SocketAddr>,
) -> Run {
    let gateway = start_gateway(&echo_config(
        calls,
        fixed_jitter,
        jitter_ms,
        bot_rate,
        ws_bot,
    ));
    let srtp = std::env::args().any(|a| a == "--srtp");
    let figures = hold_calls_with(
        &gateway,
        calls,
        seconds,
        ECHO_DELAY_MS,
        Duration::from_secs(2),
        srtp,
    )
    .await;
    // The calls' media summaries are logged as they end.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let jitter = gateway.jitter_delay_summary();
    Run { figures, jitter }
}
