//! Load harness: holds N concurrent echo-bot calls against the real binary
//! and reports CPU and RSS per call, late frames and the gateway's added
//! latency (RTP in → bot → RTP out, minus the echo bot's own delay).
//!
//!   cargo bench --bench load -- --calls 100 --seconds 20 [--fixed-jitter] [--jitter-ms 40]
//!       [--bot-rate 16000] [--srtp] [--json]
//!
//! `--jitter-ms`: the jitter buffer's starting depth (40 by default; the
//! adaptive buffer's floor is 20). `--bot-rate`: the echo bot's sample rate;
//! 8000 takes resampling (and its filter delay) out of the path.
//!
//! `--srtp`: the callers offer RTP/SAVP with an SDES key, so every packet
//! is protected and unprotected on both sides.
//!
//! Each call is a UDP SIP dialog plus an RTP stream of silence with a 20 ms
//! tone burst once a second; the burst's return time gives the latency.

mod harness;

use std::time::Duration;

use harness::{arg, hold_calls_with, start_gateway};

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

fn echo_config(calls: usize, fixed_jitter: bool, jitter_ms: u64, bot_rate: u64) -> String {
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
bot = {{ kind = "echo", delay_ms = {ECHO_DELAY_MS}, sample_rate = {} }}
"#,
        jitter_ms,
        !fixed_jitter,
        calls + 10,
        bot_rate
    )
}

async fn run(calls: usize, seconds: u64, fixed_jitter: bool, jitter_ms: u64, bot_rate: u64) {
    let gateway = start_gateway(&echo_config(calls, fixed_jitter, jitter_ms, bot_rate));
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
    if std::env::args().any(|a| a == "--json") {
        let mut json: serde_json::Value = serde_json::from_str(&figures.json()).unwrap();
        if let Some((delay, early)) = jitter {
            json["jitter_delay_ms_p50"] = delay.into();
            json["latency_beyond_jitter_ms_p50"] = (figures.percentile(0.5) - delay as f64).into();
            json["talkspurts_sent_early"] = early.into();
        }
        println!("{json}");
    } else {
        figures.print();
        if let Some((delay, early)) = jitter {
            println!(
                "jitter buffer delay    p50 {delay} ms: added latency beyond it p50 {:.1} ms ({early} bot talkspurts sent on arrival)",
                figures.percentile(0.5) - delay as f64
            );
        }
    }
}
