//! What the load benchmarks share: the gateway process, /proc figures, and
//! a caller that holds one UDP SIP call streaming PCMU with a tone burst
//! once a second, timing each burst's return.

#![allow(dead_code)]

pub mod agent;
mod stamped;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::Mutex;

pub const BURST_EVERY: u64 = 50;

#[derive(Default, Debug, Clone)]
pub struct CallStats {
    pub answered: bool,
    pub sent: u64,
    pub received: u64,
    /// When each late frame (one after a gap over 40 ms) arrived, in
    /// kernel time since the epoch.
    pub late_at: Vec<Duration>,
    pub latencies_ms: Vec<f64>,
}

pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0..=1) of `values`; NaN when there are none.
pub fn pct(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    sorted
        .get(((sorted.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

pub fn ulaw(sample: i16) -> u8 {
    switchboard_media::g711::ulaw_encode(sample)
}

pub struct Gateway {
    pub child: Child,
    pub udp: SocketAddr,
    /// Each ended call's jitter-buffer playout delay and its bot talkspurts
    /// sent on arrival, from its "media summary" log line.
    pub media_summaries: Arc<std::sync::Mutex<Vec<(u32, u64)>>>,
}

impl Gateway {
    /// Median jitter-buffer delay and total early talkspurts of the calls
    /// that ended so far.
    pub fn jitter_delay_summary(&self) -> Option<(u32, u64)> {
        let summaries = self.media_summaries.lock().unwrap();
        let mut delays: Vec<u32> = summaries.iter().map(|(delay, _)| *delay).collect();
        delays.sort_unstable();
        let median = *delays.get(delays.len() / 2)?;
        Some((median, summaries.iter().map(|(_, early)| early).sum()))
    }
}

/// The value of `key=` in a log line.
fn log_field<T: std::str::FromStr>(line: &str, key: &str) -> Option<T> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))?
        .parse()
        .ok()
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the real binary on `config` (a full TOML document) and waits for
/// its UDP SIP address.
pub fn start_gateway(config: &str) -> Gateway {
    let dir = std::env::temp_dir().join(format!("switchboard-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("load.toml");
    std::fs::write(&path, config).unwrap();
    // BENCH_GATEWAY_WRAPPER="heaptrack -o /tmp/gw" runs the gateway under a
    // profiler (words split on spaces).
    let wrapper = std::env::var("BENCH_GATEWAY_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(env!("CARGO_BIN_EXE_switchboard"));
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_switchboard")),
    };
    let mut child = command
        .args(["run", "--config"])
        .arg(&path)
        .env(
            "SWITCHBOARD_LOG",
            std::env::var("BENCH_SWITCHBOARD_LOG")
                .unwrap_or_else(|_| "warn,switchboard=info".into()),
        )
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn switchboard");
    use std::io::BufRead;
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let udp = loop {
        let line = lines.next().expect("gateway exited").unwrap();
        if line.contains("listening for SIP") {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .unwrap()
                .parse()
                .unwrap();
            break addr;
        }
    };
    // BENCH_GATEWAY_LOG=FILE keeps the gateway's log lines for a look.
    let keep =
        std::env::var_os("BENCH_GATEWAY_LOG").and_then(|path| std::fs::File::create(path).ok());
    let media_summaries = Arc::new(std::sync::Mutex::new(Vec::new()));
    let summaries = media_summaries.clone();
    std::thread::spawn(move || {
        let mut keep = keep;
        for line in lines.map_while(Result::ok) {
            if line.contains("media summary") {
                if let Some(delay) = log_field(&line, "jitter_delay_ms") {
                    let early = log_field(&line, "talkspurts_sent_early").unwrap_or(0);
                    summaries.lock().unwrap().push((delay, early));
                }
            }
            if let Some(file) = keep.as_mut() {
                use std::io::Write;
                let _ = writeln!(file, "{line}");
            }
        }
    });
    Gateway {
        child,
        udp,
        media_summaries,
    }
}

/// A plain HTTP GET (the gateway's API); empty when it cannot connect.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// The value of the first sample in a Prometheus text `metrics` whose name
/// and labels start with `prefix`; 0 when absent.
pub fn metric(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

pub fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

pub fn proc_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What a steady window of N calls measured.
pub struct Figures {
    pub requested: usize,
    pub answered: usize,
    pub sent: u64,
    pub received: u64,
    pub late: u64,
    /// Distinct 100 ms windows the late frames fell in: a few windows
    /// holding many calls' late frames is a stall of the whole gateway (or
    /// of the VM), many windows with one each is calls falling behind.
    pub late_windows: usize,
    /// Late frames inside the window CPU is measured over (calls all up,
    /// none being placed or hung up): the rest came while calls were
    /// being placed.
    pub late_measured: u64,
    /// Gateway CPU over the window, one core = 100.
    pub cpu_percent: f64,
    /// The load tool itself over the same window (it shares the cores).
    pub tool_cpu_percent: f64,
    pub rss_idle_kib: u64,
    pub rss_loaded_kib: u64,
    /// Sorted.
    pub latencies_ms: Vec<f64>,
}

impl Figures {
    pub fn percentile(&self, p: f64) -> f64 {
        self.latencies_ms
            .get(((self.latencies_ms.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    }

    pub fn cpu_per_call(&self) -> f64 {
        self.cpu_percent / self.answered.max(1) as f64
    }

    pub fn rss_per_call(&self) -> f64 {
        self.rss_loaded_kib.saturating_sub(self.rss_idle_kib) as f64 / self.answered.max(1) as f64
    }

    /// One JSON object with every figure, for regression tracking.
    pub fn json(&self) -> String {
        serde_json::json!({
            "calls_requested": self.requested,
            "calls_answered": self.answered,
            "rtp_sent": self.sent,
            "rtp_received": self.received,
            "late_frames": self.late,
            "late_frame_windows_100ms": self.late_windows,
            "late_frames_in_measured_window": self.late_measured,
            "gateway_cpu_percent": self.cpu_percent,
            "cpu_percent_per_call": self.cpu_per_call(),
            "load_tool_cpu_percent": self.tool_cpu_percent,
            "rss_idle_kib": self.rss_idle_kib,
            "rss_loaded_kib": self.rss_loaded_kib,
            "rss_per_call_kib": self.rss_per_call(),
            "latency_ms_p50": self.percentile(0.5),
            "latency_ms_p99": self.percentile(0.99),
            "latency_ms_max": self.latencies_ms.last().copied(),
            "bursts": self.latencies_ms.len(),
        })
        .to_string()
    }

    pub fn print(&self) {
        println!("calls requested        {}", self.requested);
        println!("calls answered         {}", self.answered);
        println!("RTP sent / received    {} / {}", self.sent, self.received);
        println!(
            "late frames (gap>40ms) {} (in {} windows of 100 ms; {} in the measured window)",
            self.late, self.late_windows, self.late_measured
        );
        println!(
            "gateway CPU            {:.1}% of one core ({:.3}% per call)",
            self.cpu_percent,
            self.cpu_per_call()
        );
        println!(
            "load tool CPU          {:.1}% of one core",
            self.tool_cpu_percent
        );
        println!(
            "gateway RSS            {} KiB idle, {} KiB loaded ({:.1} KiB per call)",
            self.rss_idle_kib,
            self.rss_loaded_kib,
            self.rss_per_call()
        );
        println!(
            "added latency (ms)     p50 {:.1}  p99 {:.1}  max {:.1}  ({} bursts)",
            self.percentile(0.5),
            self.percentile(0.99),
            self.latencies_ms.last().copied().unwrap_or(f64::NAN),
            self.latencies_ms.len()
        );
    }
}

/// Places `calls` calls (one every 20 ms), lets them settle for `settle`,
/// measures the gateway over `seconds`, then hangs them all up.
pub async fn hold_calls(
    gateway: &Gateway,
    calls: usize,
    seconds: u64,
    echo_delay_ms: u64,
    settle: Duration,
) -> Figures {
    hold_calls_with(gateway, calls, seconds, echo_delay_ms, settle, false).await
}

/// [`hold_calls`], the callers offering SRTP (SDES) when `srtp` is set.
pub async fn hold_calls_with(
    gateway: &Gateway,
    calls: usize,
    seconds: u64,
    echo_delay_ms: u64,
    settle: Duration,
    srtp: bool,
) -> Figures {
    let pid = gateway.child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle_kib = proc_rss_kib(pid);
    let stop_at = Arc::new(Mutex::new(None::<Instant>));
    let mut tasks = Vec::new();
    for index in 0..calls {
        let stop_at = stop_at.clone();
        let target = gateway.udp;
        tasks.push(tokio::spawn(async move {
            one_call(index, target, stop_at, echo_delay_ms, srtp).await
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(settle).await;
    let ticks_per_sec = 100.0;
    let cpu_start = proc_cpu_ticks(pid);
    let tool_start = proc_cpu_ticks(std::process::id());
    let window_start = Instant::now();
    let measured_from = stamped::wall_clock();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let measured_to = stamped::wall_clock();
    let cpu_ticks = proc_cpu_ticks(pid) - cpu_start;
    let tool_ticks = proc_cpu_ticks(std::process::id()) - tool_start;
    let window = window_start.elapsed().as_secs_f64();
    let rss_loaded_kib = proc_rss_kib(pid);
    *stop_at.lock().await = Some(Instant::now());
    let mut all = Vec::new();
    for task in tasks {
        all.push(task.await.unwrap());
    }
    let mut latencies_ms: Vec<f64> = all.iter().flat_map(|s| s.latencies_ms.clone()).collect();
    latencies_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Figures {
        requested: calls,
        answered: all.iter().filter(|s| s.answered).count(),
        sent: all.iter().map(|s| s.sent).sum(),
        received: all.iter().map(|s| s.received).sum(),
        late: all.iter().map(|s| s.late_at.len() as u64).sum(),
        late_windows: all
            .iter()
            .flat_map(|s| &s.late_at)
            .map(|at| at.as_millis() / 100)
            .collect::<std::collections::HashSet<_>>()
            .len(),
        late_measured: all
            .iter()
            .flat_map(|s| &s.late_at)
            .filter(|&&at| (measured_from..measured_to).contains(&at))
            .count() as u64,
        cpu_percent: cpu_ticks as f64 / ticks_per_sec / window * 100.0,
        tool_cpu_percent: tool_ticks as f64 / ticks_per_sec / window * 100.0,
        rss_idle_kib,
        rss_loaded_kib,
        latencies_ms,
    }
}

/// One call: INVITE/200/ACK, PCMU every 20 ms with a 1 kHz burst once a
/// second until `stop_at` is set, then BYE. A burst coming back
/// `echo_delay_ms` plus the gateway's added latency later is timed.
pub async fn one_call(
    index: usize,
    target: SocketAddr,
    stop_at: Arc<Mutex<Option<Instant>>>,
    echo_delay_ms: u64,
    srtp: bool,
) -> CallStats {
    use switchboard_media::srtp::{CryptoAttribute, SrtpContext, Suite};
    let ours = CryptoAttribute::generate(1, Suite::AesCm128HmacSha1_80);
    let mut stats = CallStats::default();
    let sip = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    stamped::enable(&rtp);
    let sip_port = sip.local_addr().unwrap().port();
    let rtp_port = rtp.local_addr().unwrap().port();
    let call_id = format!("load-{index}-{}", std::process::id());
    let (profile, crypto) = if srtp {
        ("RTP/SAVP", format!("a=crypto:{}\r\n", ours.to_sdp()))
    } else {
        ("RTP/AVP", String::new())
    };
    let sdp = format!(
        "v=0\r\no=load 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} {profile} 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n{crypto}"
    );
    let mut context: Option<SrtpContext> = None;
    let invite = format!(
        "INVITE sip:{index}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bK-inv-{index}\r\nFrom: <sip:load{index}@127.0.0.1>;tag=load{index}\r\nTo: <sip:{index}@{target}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:load@127.0.0.1:{sip_port}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    let mut buf = vec![0u8; 4096];
    let mut to_header = String::new();
    let mut remote_rtp: Option<SocketAddr> = None;
    for _attempt in 0..8 {
        sip.send_to(invite.as_bytes(), target).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1000);
        while let Ok(Ok((len, _))) =
            tokio::time::timeout_at(deadline, sip.recv_from(&mut buf)).await
        {
            let text = String::from_utf8_lossy(&buf[..len]).to_string();
            if text.starts_with("SIP/2.0 200") {
                to_header = text
                    .lines()
                    .find(|l| l.starts_with("To:"))
                    .unwrap_or("")
                    .to_string();
                let port: Option<u16> = text
                    .lines()
                    .find(|l| l.starts_with("m=audio"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|p| p.parse().ok());
                remote_rtp = port.map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
                if srtp {
                    let theirs = text
                        .lines()
                        .find_map(|l| l.strip_prefix("a=crypto:"))
                        .and_then(CryptoAttribute::parse);
                    let Some(theirs) = theirs else {
                        eprintln!("call {index}: the answer has no usable a=crypto");
                        return stats;
                    };
                    context = Some(SrtpContext::new(&ours, &theirs).unwrap());
                }
                break;
            } else if text.starts_with("SIP/2.0 ") && !text.starts_with("SIP/2.0 1") {
                eprintln!("call {index}: {}", text.lines().next().unwrap_or(""));
                return stats;
            }
        }
        if remote_rtp.is_some() {
            break;
        }
    }
    let Some(remote_rtp) = remote_rtp else {
        return stats;
    };
    stats.answered = true;
    let ack = format!(
        "ACK sip:{index}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bK-ack-{index}\r\nFrom: <sip:load@127.0.0.1>;tag=load{index}\r\n{to_header}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    sip.send_to(ack.as_bytes(), target).await.unwrap();

    let tone: Vec<u8> = (0..160)
        .map(|n| {
            ulaw(
                (f64::sin(2.0 * std::f64::consts::PI * 1000.0 * n as f64 / 8000.0) * 16000.0)
                    as i16,
            )
        })
        .collect();
    let silence = [0xffu8; 160];
    let mut packet = [0u8; 172];
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sequence: u16 = 0;
    // Arrivals are the kernel's receive timestamps: on loopback the packet
    // reaches our socket inside the gateway's send, so gaps and latency
    // measure the gateway, however late this tool gets to read them.
    let mut last_burst: Option<Duration> = None;
    let mut last_arrival: Option<Duration> = None;
    let mut in_burst = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if stop_at.lock().await.is_some() { break; }
                let burst = sequence as u64 % BURST_EVERY == 10;
                packet[0] = 0x80;
                packet[1] = 0;
                packet[2..4].copy_from_slice(&sequence.to_be_bytes());
                packet[4..8].copy_from_slice(&(sequence as u32 * 160).to_be_bytes());
                packet[8..12].copy_from_slice(&(index as u32 + 1).to_be_bytes());
                packet[12..].copy_from_slice(if burst { &tone } else { &silence });
                match context.as_mut() {
                    Some(srtp) => {
                        if let Some(wire) = srtp.protect_rtp(&packet) {
                            let _ = rtp.send_to(wire, remote_rtp).await;
                        }
                    }
                    None => {
                        let _ = rtp.send_to(&packet, remote_rtp).await;
                    }
                }
                if burst { last_burst = Some(stamped::wall_clock()); }
                sequence = sequence.wrapping_add(1);
                stats.sent += 1;
            }
            received = stamped::recv(&rtp, &mut buf) => {
                let Ok((len, now)) = received else { continue };
                let len = match context.as_mut() {
                    Some(srtp) => match srtp.unprotect(&mut buf[..len]) {
                        Some(len) => len,
                        None => continue,
                    },
                    None => len,
                };
                if len < 12 { continue; }
                stats.received += 1;
                if let Some(previous) = last_arrival {
                    if now.saturating_sub(previous) > Duration::from_millis(40) && stats.received > 10 {
                        stats.late_at.push(now);
                    }
                }
                last_arrival = Some(now);
                let energy: f64 = buf[12..len].iter().map(|b| (switchboard_media::g711::ulaw_decode(*b) as f64).abs()).sum::<f64>() / (len - 12) as f64;
                let loud = energy > 2000.0;
                if loud && !in_burst {
                    if let Some(sent_at) = last_burst {
                        let latency = now.saturating_sub(sent_at).as_secs_f64() * 1000.0 - echo_delay_ms as f64;
                        if latency > -20.0 && latency < 900.0 { stats.latencies_ms.push(latency); }
                    }
                }
                in_burst = loud;
            }
        }
    }
    let bye = format!(
        "BYE sip:switchboard@{target} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bK-bye-{index}\r\nFrom: <sip:load@127.0.0.1>;tag=load{index}\r\n{to_header}\r\nCall-ID: {call_id}\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    let _ = sip.send_to(bye.as_bytes(), target).await;
    let _ = tokio::time::timeout(Duration::from_millis(500), sip.recv_from(&mut buf)).await;
    stats
}
