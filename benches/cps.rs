//! Calls per second: sipp's built-in `uac` scenario (INVITE, 100, 200,
//! ACK, BYE, 200 — no media, no hold) against the gateway on its embedded
//! default configuration (echo flow, default logging), and the same sipp
//! command against `sipp -sn uas` in the same run as the reference.
//!
//!   cargo bench --bench cps -- --rate 2000 --seconds 30 --runs 5 --overload 2,4 [--json]
//!   cargo bench --bench cps -- --find-max --seconds 10
//!
//! `--runs N` repeats the run on one gateway process: the cost per 1,000
//! calls must not grow with the calls already handled. `--overload 2,4`
//! then offers 2x and 4x the rate; the figure that matters is completed
//! calls/s against the peak. `--find-max` raises the rate in steps of 250
//! until a run has a failed call and reports the last clean rate. Every
//! run prints one line (one JSON object with `--json`). `--sip-workers N`
//! sets `[limits] sip_workers` (default: one endpoint worker per CPU).
//! `--pin` runs the server under test on CPU 0 and the sipp client on CPU
//! 1 (`taskset`): unpinned, the load generator takes from the same two
//! cores what the gateway would need, so past the peak a run measures the
//! two processes' contest for CPU rather than how the gateway sheds.

mod harness;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{arg, http_get, metric, proc_cpu_ticks, proc_rss_kib, start_gateway};

const DEFAULT_CONFIG: &str = include_str!("../config/switchboard.toml");

/// What one sipp run measured.
#[derive(Debug, Clone, Default)]
struct Run {
    label: String,
    offered_rate: u64,
    seconds: f64,
    offered: u64,
    completed: u64,
    failed: u64,
    retransmissions: u64,
    /// Server under test, one core = 100.
    server_cpu_percent: f64,
    server_cpu_ms_per_1000: f64,
    /// The sipp client generating the load.
    client_cpu_percent: f64,
    rss_before_kib: u64,
    rss_peak_kib: u64,
    rss_after_idle_kib: u64,
    /// How the gateway turned new INVITEs away during the run (none for
    /// the reference).
    refusals: Option<Refusals>,
}

/// New INVITEs refused during one run, by where (the gateway's
/// `switchboard_sip_shed_total` stages and its 503 count).
#[derive(Debug, Clone, Copy, Default)]
struct Refusals {
    /// At the socket, while tasks waited too long for a CPU.
    overload: u64,
    /// At the socket, the endpoint's queue full.
    queue: u64,
    /// Before a transaction: waited over `overload_delay_ms`.
    delay: u64,
    /// Before a transaction: `max_calls` calls up.
    capacity: u64,
    /// Before a transaction: the adaptive call limit (below `max_calls`)
    /// reached, at the socket or the endpoint.
    call_limit: u64,
    /// Every call the endpoint answered 503 (`delay` and `capacity`
    /// included; the rest went through a transaction).
    rejected_503: u64,
}

impl Refusals {
    fn read(api: SocketAddr) -> Refusals {
        let metrics = http_get(api, "/metrics");
        let shed = |stage: &str| {
            metric(
                &metrics,
                &format!("switchboard_sip_shed_total{{stage=\"{stage}\"}}"),
            )
        };
        Refusals {
            overload: shed("overload"),
            queue: shed("queue"),
            delay: shed("delay"),
            capacity: shed("capacity"),
            call_limit: shed("call_limit"),
            rejected_503: metric(&metrics, "switchboard_calls_rejected_total{status=\"503\"}"),
        }
    }

    fn since(self, before: Refusals) -> Refusals {
        Refusals {
            overload: self.overload - before.overload,
            queue: self.queue - before.queue,
            delay: self.delay - before.delay,
            capacity: self.capacity - before.capacity,
            call_limit: self.call_limit - before.call_limit,
            rejected_503: self.rejected_503 - before.rejected_503,
        }
    }

    fn with_transaction(&self) -> u64 {
        self.rejected_503
            .saturating_sub(self.delay + self.capacity + self.call_limit)
    }
}

impl Run {
    fn completed_per_second(&self) -> f64 {
        self.completed as f64 / self.seconds.max(1e-9)
    }

    fn print(&self, json: bool) {
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "label": self.label,
                    "offered_rate": self.offered_rate,
                    "seconds": self.seconds,
                    "offered": self.offered,
                    "completed": self.completed,
                    "failed": self.failed,
                    "retransmissions": self.retransmissions,
                    "completed_per_second": self.completed_per_second(),
                    "server_cpu_percent": self.server_cpu_percent,
                    "server_cpu_ms_per_1000_calls": self.server_cpu_ms_per_1000,
                    "client_cpu_percent": self.client_cpu_percent,
                    "rss_before_kib": self.rss_before_kib,
                    "rss_peak_kib": self.rss_peak_kib,
                    "rss_after_idle_kib": self.rss_after_idle_kib,
                    "refused": self.refusals.map(|r| serde_json::json!({
                        "socket_overload": r.overload,
                        "socket_queue_full": r.queue,
                        "endpoint_late": r.delay,
                        "endpoint_capacity": r.capacity,
                        "endpoint_call_limit": r.call_limit,
                        "with_a_transaction": r.with_transaction(),
                    })),
                })
            );
        } else {
            println!(
                "{:<18} offered {:>5}/s: {:>6} completed ({:>6.0}/s), {:>6} failed, {:>6} retrans | server {:>5.1}% CPU, {:>6.1} ms CPU per 1,000 calls | sipp client {:>5.1}% | RSS {} -> peak {} -> {} KiB",
                self.label,
                self.offered_rate,
                self.completed,
                self.completed_per_second(),
                self.failed,
                self.retransmissions,
                self.server_cpu_percent,
                self.server_cpu_ms_per_1000,
                self.client_cpu_percent,
                self.rss_before_kib,
                self.rss_peak_kib,
                self.rss_after_idle_kib,
            );
            if let Some(r) = self.refusals {
                println!(
                    "  refused: at the socket {} (overload) + {} (queue full); before a transaction {} (late) + {} (capacity: at the socket or the endpoint) + {} (adaptive call limit); with a transaction {}",
                    r.overload,
                    r.queue,
                    r.delay,
                    r.capacity,
                    r.call_limit,
                    r.with_transaction()
                );
            }
        }
    }
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn text_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchboard-cps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Samples a process's CPU ticks and RSS every 100 ms until stopped, so
/// figures survive the process exiting (sipp) and peaks are seen.
struct Sampler {
    stop: Arc<AtomicU64>,
    ticks: Arc<AtomicU64>,
    peak_rss: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicU64::new(0));
        let ticks = Arc::new(AtomicU64::new(0));
        let peak_rss = Arc::new(AtomicU64::new(0));
        let first = read_ticks(pid).unwrap_or(0);
        let thread = {
            let (stop, ticks, peak_rss) = (stop.clone(), ticks.clone(), peak_rss.clone());
            std::thread::spawn(move || {
                while stop.load(Ordering::Relaxed) == 0 {
                    match read_ticks(pid) {
                        Some(now) => ticks.store(now.saturating_sub(first), Ordering::Relaxed),
                        None => break,
                    }
                    peak_rss.fetch_max(read_rss(pid).unwrap_or(0), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Sampler {
            stop,
            ticks,
            peak_rss,
            thread: Some(thread),
        }
    }

    /// (CPU seconds, peak RSS KiB)
    fn finish(mut self) -> (f64, u64) {
        self.stop.store(1, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        (
            self.ticks.load(Ordering::Relaxed) as f64 / 100.0,
            self.peak_rss.load(Ordering::Relaxed),
        )
    }
}

fn read_ticks(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/stat")).ok()?;
    std::panic::catch_unwind(|| proc_cpu_ticks(pid)).ok()
}

fn read_rss(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/status")).ok()?;
    std::panic::catch_unwind(|| proc_rss_kib(pid)).ok()
}

/// sipp's cumulative counters from the last line of its `-trace_stat` file.
fn sipp_counters(stat: &Path) -> (u64, u64, u64, u64) {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return (0, 0, 0, 0);
    };
    let last = lines.next_back().unwrap_or("");
    let names: Vec<&str> = header.split(';').collect();
    let values: Vec<&str> = last.split(';').collect();
    let get = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| values.get(i))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        get("OutgoingCall(C)"),
        get("SuccessfulCall(C)"),
        get("FailedCall(C)"),
        get("Retransmissions(C)"),
    )
}

/// Offers `rate` calls/s for `seconds` from a sipp client to `target`;
/// `server` is the process under test.
fn run(
    dir: &Path,
    label: &str,
    target: &str,
    server: (u32, Option<SocketAddr>),
    rate: u64,
    seconds: u64,
) -> Run {
    let (server, api) = server;
    let refused_before = api.map(Refusals::read);
    let stat = dir.join(format!("{label}-{rate}.csv"));
    let _ = std::fs::remove_file(&stat);
    let rss_before = read_rss(server).unwrap_or(0);
    let server_sampler = Sampler::start(server);
    let started = Instant::now();
    let mut client = sipp_command(CLIENT_CPU)
        .current_dir(dir)
        .args(["-sn", "uac", target, "-s", "100"])
        .args(["-i", "127.0.0.1", "-p", &free_port().to_string()])
        .args(["-r", &rate.to_string(), "-rp", "1000"])
        .args(["-m", &(rate * seconds).to_string()])
        .args(["-l", "200000", "-max_socket", "1024"])
        // sipp's own socket must not be what drops messages at high rates.
        .args(["-buff_size", "4194304"])
        .args(["-timeout", &format!("{}s", seconds + 60)])
        .args(["-trace_stat", "-stf"])
        .arg(&stat)
        .args(["-fd", "1", "-nostdin"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run sipp (Debian package sip-tester)");
    let client_sampler = Sampler::start(client.id());
    let _ = client.wait();
    let elapsed = started.elapsed().as_secs_f64();
    let (client_cpu, _) = client_sampler.finish();
    let (server_cpu, rss_peak) = server_sampler.finish();
    std::thread::sleep(Duration::from_secs(3));
    let rss_after = read_rss(server).unwrap_or(0);
    let (offered, completed, failed, retransmissions) = sipp_counters(&stat);
    // sipp stops after its last call ended; the rate window is how long
    // it offered calls, not the tail where the last ones complete.
    let window = (seconds as f64).min(elapsed);
    Run {
        label: label.to_string(),
        offered_rate: rate,
        seconds: window,
        offered,
        completed,
        failed,
        retransmissions,
        server_cpu_percent: server_cpu * 100.0 / elapsed,
        server_cpu_ms_per_1000: server_cpu * 1000.0 * 1000.0 / completed.max(1) as f64,
        client_cpu_percent: client_cpu * 100.0 / elapsed,
        rss_before_kib: rss_before,
        rss_peak_kib: rss_peak,
        rss_after_idle_kib: rss_after,
        refusals: api
            .zip(refused_before)
            .map(|(api, before)| Refusals::read(api).since(before)),
    }
}

/// With `--pin`: where the server under test (the gateway, or the
/// reference `sipp -sn uas`) runs, and where the sipp client runs.
const SERVER_CPU: &str = "0";
const CLIENT_CPU: &str = "1";

/// sipp, under `taskset -c CPU` with `--pin`.
fn sipp_command(cpu: &str) -> Command {
    if flag("--pin") {
        let mut command = Command::new("taskset");
        command.args(["-c", cpu, "sipp"]);
        command
    } else {
        Command::new("sipp")
    }
}

/// `sipp -sn uas`: the reference server, answering every call at once.
struct Reference {
    child: Child,
    addr: String,
}

impl Reference {
    fn start(dir: &Path) -> Reference {
        let port = free_port();
        let child = sipp_command(SERVER_CPU)
            .current_dir(dir)
            .args(["-sn", "uas", "-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["-buff_size", "4194304"])
            .args(["-nostdin"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run sipp uas");
        std::thread::sleep(Duration::from_millis(500));
        Reference {
            child,
            addr: format!("127.0.0.1:{port}"),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The embedded default configuration on free ports, with the HTTP API
/// on (its metrics say how INVITEs were refused); and the API's address.
fn gateway_config() -> (String, SocketAddr) {
    let port = free_port();
    let api: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free TCP port");
    let config = DEFAULT_CONFIG.replace(
        r#"listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]"#,
        &format!(r#"listen = ["udp:127.0.0.1:{port}"]"#),
    ) + &format!("\n[api]\nlisten = \"{api}\"\n");
    let config = match text_arg("--sip-workers") {
        Some(workers) => config.replacen(
            "[limits]\n",
            &format!("[limits]\nsip_workers = {workers}\n"),
            1,
        ),
        None => config,
    };
    (config, api)
}

fn main() {
    let json = flag("--json");
    let seconds = arg("--seconds", 30);
    let dir = scratch();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    if !json {
        println!(
            "CPU: {cpu}, {} cores; sipp -sn uac, {seconds} s per run{}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            if flag("--pin") {
                format!("; server under test on CPU {SERVER_CPU}, sipp client on CPU {CLIENT_CPU}")
            } else {
                String::new()
            }
        );
    }

    // Logging as an operator runs it (one line per call event), unless
    // BENCH_SWITCHBOARD_LOG says otherwise.
    if std::env::var_os("BENCH_SWITCHBOARD_LOG").is_none() {
        std::env::set_var("BENCH_SWITCHBOARD_LOG", "info");
    }
    let (config, api) = gateway_config();
    if flag("--pin") {
        // The harness runs the gateway through this wrapper; an A/B wrapper
        // already set stays, under taskset.
        let wrapper = std::env::var("BENCH_GATEWAY_WRAPPER").unwrap_or_default();
        std::env::set_var(
            "BENCH_GATEWAY_WRAPPER",
            format!("taskset -c {SERVER_CPU} {wrapper}"),
        );
    }
    let gateway = start_gateway(&config);
    let pid = gateway.child.id();
    let server = (pid, Some(api));
    let target = gateway.udp.to_string();
    std::thread::sleep(Duration::from_millis(500));

    if flag("--find-max") {
        let mut rate = arg("--rate", 500);
        let mut best = 0;
        loop {
            let result = run(&dir, "switchboard", &target, server, rate, seconds);
            result.print(json);
            if result.failed > 0 || result.completed < result.offered_rate * seconds {
                break;
            }
            best = rate;
            rate += 250;
        }
        println!("highest rate with no failed call over {seconds} s: {best} calls/s");
        return;
    }

    let rate = arg("--rate", 2000);
    let runs = arg("--runs", 5);
    let mut peak: f64 = 0.0;
    let mut costs = Vec::new();
    for n in 1..=runs {
        let result = run(
            &dir,
            &format!("switchboard#{n}"),
            &target,
            server,
            rate,
            seconds,
        );
        result.print(json);
        peak = peak.max(result.completed_per_second());
        costs.push(result.server_cpu_ms_per_1000);
    }
    if costs.len() > 1 && !json {
        let (min, max) = costs
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), c| (lo.min(*c), hi.max(*c)));
        println!(
            "cost per 1,000 calls over {runs} runs: {min:.1}..{max:.1} ms CPU (spread {:.1}%)",
            (max - min) * 100.0 / min
        );
    }
    let overload: Vec<u64> = text_arg("--overload")
        .map(|list| list.split(',').filter_map(|m| m.parse().ok()).collect())
        .unwrap_or_default();
    for factor in overload {
        let result = run(
            &dir,
            &format!("switchboard x{factor}"),
            &target,
            server,
            rate * factor,
            seconds,
        );
        result.print(json);
        if !json {
            println!(
                "  completed {:.0}/s at {factor}x offered = {:.0}% of the peak {peak:.0}/s",
                result.completed_per_second(),
                result.completed_per_second() * 100.0 / peak.max(1.0)
            );
        }
    }
    // Answered transactions live 32 s (RFC 3261 Timers J and L): what the
    // process holds after that is what a burst leaves behind for good.
    std::thread::sleep(Duration::from_secs(40));
    let rss_settled = read_rss(pid).unwrap_or(0);
    if json {
        println!(
            "{}",
            serde_json::json!({ "label": "settled", "rss_kib": rss_settled })
        );
    } else {
        println!("RSS 40 s after the last run: {rss_settled} KiB");
    }
    drop(gateway);

    let reference = Reference::start(&dir);
    let result = run(
        &dir,
        "sipp-uas reference",
        &reference.addr,
        (reference.pid(), None),
        rate,
        seconds,
    );
    result.print(json);
    if !json {
        println!(
            "ratio: switchboard's CPU per call / sipp uas's = {:.2}",
            costs.first().copied().unwrap_or(0.0) / result.server_cpu_ms_per_1000.max(1e-9)
        );
    }
}
