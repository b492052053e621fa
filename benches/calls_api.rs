//! Calls placed through the Twilio-style Calls API:
//!
//!   cargo bench --bench calls_api -- --calls 100 --hold-secs 5
//!
//! `--calls` POSTs to `Calls.json`, spread evenly over one second, each
//! placing a call to an agent in this process (a UAS that answers PCMU and
//! echoes RTP) with `Flow=echo` and `TimeLimit=--hold-secs`. Reports: 201s,
//! API request → INVITE at the agent (p50/p99), answered and completed
//! calls (read back through the API), and the gateway's CPU and RSS over
//! the creation second and the whole run.

mod harness;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::agent::{header, run_agent, AgentHooks};
use harness::{arg, pct, proc_cpu_ticks, proc_rss_kib, start_gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

const ACCOUNT: &str = "AC00000000000000000000000000000bench";
const TOKEN: &str = "bench-token-0123456789";
const TICKS_PER_SEC: f64 = 100.0;

fn main() {
    let calls = arg("--calls", 100) as usize;
    let hold = arg("--hold-secs", 5);
    let rounds = arg("--rounds", 1) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(calls, hold, rounds));
}

async fn run(calls: usize, hold: u64, rounds: usize) {
    // INVITE arrival by the X-Bench header the request put in `To`.
    let invites: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let agent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = agent.local_addr().unwrap();
    let seen = invites.clone();
    let hooks = AgentHooks {
        on_invite: Box::new(move |invite: &str| {
            if let Ok(n) = header(invite, "X-Bench").parse() {
                seen.lock().unwrap().entry(n).or_insert_with(Instant::now);
            }
        }),
        ..AgentHooks::none()
    };
    tokio::spawn(run_agent(agent, 0, hooks));
    let api_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let config = format!(
        r#"
[sip]
listen = ["udp:127.0.0.1:0"]
[media]
rtp_ports = "20000-39999"
[limits]
max_calls = {}
[api]
listen = "127.0.0.1:{api_port}"
account_sid = "{ACCOUNT}"
auth_token = "{TOKEN}"
[[trunks]]
name = "none"
allow = ["192.0.2.1"]
routes = [{{ pattern = ".*", flow = "echo" }}]
[[flows]]
name = "echo"
bot = {{ kind = "echo", delay_ms = 200, sample_rate = 16000 }}
"#,
        calls + 10
    );
    let gateway = start_gateway(&config);
    let api: SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    let pid = gateway.child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("{calls} calls through POST Calls.json in one second, held {hold} s, to an in-process agent; {rounds} round(s)");
    for round in 0..rounds {
        println!("-- round {}", round + 1);
        one_round(api, agent_addr, pid, calls, hold, round * calls, &invites).await;
    }
    let (_, health) = get(api, "/health").await;
    println!("after         /health {health}");
}

/// Places `calls` calls (numbered from `first`) in one second and waits
/// for them to end.
async fn one_round(
    api: SocketAddr,
    agent_addr: SocketAddr,
    pid: u32,
    calls: usize,
    hold: u64,
    first: usize,
    invites: &Mutex<HashMap<usize, Instant>>,
) {
    let (ticks_before, rss_before) = (proc_cpu_ticks(pid), proc_rss_kib(pid));
    let started = Instant::now();
    let mut requests = Vec::with_capacity(calls);
    let mut sent_at = HashMap::new();
    for n in first..first + calls {
        let due = started + Duration::from_secs(1).mul_f64((n - first) as f64 / calls as f64);
        tokio::time::sleep_until(due.into()).await;
        let form = format!(
            "To={}&From=bench&Flow=echo&TimeLimit={hold}",
            encode(&format!("sip:agent@{agent_addr}?X-Bench={n}"))
        );
        sent_at.insert(n, Instant::now());
        requests.push(tokio::spawn(post(api, form)));
    }
    let mut created = 0;
    let mut api_ms = Vec::new();
    for (n, request) in (first..).zip(requests) {
        let (status, took) = request.await.unwrap();
        if status == 201 {
            created += 1;
        } else {
            println!("request {n}: HTTP {status}");
        }
        api_ms.push(took.as_secs_f64() * 1000.0);
    }
    let creation = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1000).saturating_sub(creation)).await;
    let (ticks_created, rss_created) = (proc_cpu_ticks(pid), proc_rss_kib(pid));
    // Let every call run its time limit out, and the last BYE be answered.
    tokio::time::sleep(Duration::from_secs(hold + 3)).await;
    let (ticks_after, rss_after) = (proc_cpu_ticks(pid), proc_rss_kib(pid));
    let invite_ms: Vec<f64> = {
        let invites = invites.lock().unwrap();
        invites
            .iter()
            .filter_map(|(n, at)| {
                sent_at
                    .get(n)
                    .map(|sent| at.duration_since(*sent).as_secs_f64() * 1000.0)
            })
            .collect()
    };
    let (_, body) = get(
        api,
        &format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json?Status=completed&PageSize=1000"),
    )
    .await;
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let this_round: Vec<&serde_json::Value> = listed["calls"]
        .as_array()
        .map(|calls| calls.iter().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| {
            c["to"]
                .as_str()
                .and_then(|to| to.rsplit("X-Bench=").next())
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| (first..first + calls).contains(&n))
        })
        .collect();
    let completed = this_round.len();
    let held = this_round
        .iter()
        .filter(|c| {
            c["duration"]
                .as_str()
                .and_then(|d| d.parse::<u64>().ok())
                .is_some_and(|d| d + 1 >= hold)
        })
        .count();
    let cpu = |ticks: u64, secs: f64| ticks as f64 / TICKS_PER_SEC / secs * 100.0;
    println!("created       {created} of {calls} answered 201 in {:.2} s; API answer p50 {:.1} ms p99 {:.1} ms", creation.as_secs_f64(), pct(&api_ms, 0.5), pct(&api_ms, 0.99));
    println!(
        "INVITE        {} at the agent; request → INVITE p50 {:.2} ms p99 {:.2} ms",
        invite_ms.len(),
        pct(&invite_ms, 0.5),
        pct(&invite_ms, 0.99)
    );
    println!("completed     {completed} read back as completed, {held} of them lasting the full {hold} s");
    println!(
        "cpu           creation second {:.1}% of a core ({:.2} ms per call); whole run {:.1}% over {:.0} s",
        cpu(ticks_created - ticks_before, 1.0),
        (ticks_created - ticks_before) as f64 / TICKS_PER_SEC * 1000.0 / calls as f64,
        cpu(ticks_after - ticks_before, (hold + 4) as f64),
        (hold + 4) as f64
    );
    println!(
        "memory        RSS {rss_before} KiB before, {rss_created} KiB with {calls} calls up (+{:.0} KiB per call), {rss_after} KiB after they ended",
        (rss_created.saturating_sub(rss_before)) as f64 / calls as f64
    );
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn authorization() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT}:{TOKEN}"))
}

async fn post(api: SocketAddr, form: String) -> (u16, Duration) {
    let started = Instant::now();
    let path = format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nAuthorization: Basic {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        authorization(),
        form.len()
    );
    let (status, _) = exchange(api, request).await;
    (status, started.elapsed())
}

async fn get(api: SocketAddr, path: &str) -> (u16, String) {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nAuthorization: Basic {}\r\n\r\n",
        authorization()
    );
    exchange(api, request).await
}

async fn exchange(api: SocketAddr, request: String) -> (u16, String) {
    let Ok(mut stream) = tokio::net::TcpStream::connect(api).await else {
        return (0, String::new());
    };
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
