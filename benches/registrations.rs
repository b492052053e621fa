//! Outbound registrations at scale: the gateway holds `--count` extensions
//! registered at Kamailio (its registrar + digest auth, credentials in
//! memory) for `--hold-secs` of real time, then Kamailio dies for
//! `--down-secs` and comes back with an empty location table.
//!
//!   cargo bench --bench registrations -- --count 1000 --hold-secs 600 --expires 120
//!
//! Reports the REGISTER traffic the gateway sends (its
//! `switchboard_registration_requests_total`, sampled every second), its
//! CPU and memory while holding, Kamailio's CPU for the same traffic as the
//! reference, and after the restart how long until every registration is
//! `successful` again and the peak REGISTER rate the gateway sent meanwhile.

mod harness;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{arg, http_get, metric, proc_cpu_ticks, proc_rss_kib, start_gateway};

fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct Kamailio {
    child: Child,
    config: PathBuf,
    dir: PathBuf,
}

impl Kamailio {
    fn start(dir: &Path, port: u16) -> Kamailio {
        let config = dir.join("kamailio.cfg");
        std::fs::write(
            &config,
            format!(
                r#"#!KAMAILIO
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
children=2
tcp_children=2
log_stderror=yes
debug=0
auto_aliases=no
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "textops.so"
modparam("usrloc", "db_mode", 0)
request_route {{
    if (is_method("REGISTER")) {{
        $avp(password) = "pw";
        if (!pv_www_authenticate("bench", "$avp(password)", "0")) {{
            www_challenge("bench", "1");
            exit;
        }}
        save("location");
        exit;
    }}
    if (is_method("OPTIONS")) {{
        sl_send_reply("200", "OK");
        exit;
    }}
    sl_send_reply("405", "Method Not Allowed");
}}
"#
            ),
        )
        .unwrap();
        let mut kamailio = Kamailio {
            child: spawn(dir, &config),
            config,
            dir: dir.to_path_buf(),
        };
        kamailio.wait_up(port);
        kamailio
    }

    fn wait_up(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "kamailio did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self, port: u16) {
        self.kill();
        std::thread::sleep(Duration::from_millis(200));
        self.child = spawn(&self.dir, &self.config);
        self.wait_up(port);
    }

    /// CPU ticks of Kamailio and all its workers (its process group).
    fn cpu_ticks(&self) -> u64 {
        let group = self.child.id().to_string();
        let mut ticks = 0;
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            if fields.get(2) == Some(&group.as_str()) {
                ticks +=
                    fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
            }
        }
        ticks
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(dir: &Path, config: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    Command::new("kamailio")
        .process_group(0)
        .args(["-DD", "-E", "-m", "256", "-f"])
        .arg(config)
        .args(["-Y", &dir.to_string_lossy()])
        .args(["-P", &dir.join("kamailio.pid").to_string_lossy()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kamailio")
}

/// One sample of the gateway's metrics.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    registers_sent: u64,
    successful: u64,
}

fn sample(api: SocketAddr) -> Sample {
    let metrics = http_get(api, "/metrics");
    let value = |prefix: &str| metric(&metrics, prefix);
    Sample {
        registers_sent: value("switchboard_registration_requests_total"),
        successful: value("switchboard_registrations{state=\"successful\"}"),
    }
}

/// Samples once a second until `done` says stop (or `limit` passes);
/// returns the samples and whether `done` was met.
fn watch(
    api: SocketAddr,
    limit: Duration,
    mut done: impl FnMut(&Sample) -> bool,
) -> (Vec<(Instant, Sample)>, bool) {
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut tick = start;
    loop {
        let now = sample(api);
        samples.push((Instant::now(), now));
        if done(&now) {
            return (samples, true);
        }
        if start.elapsed() >= limit {
            return (samples, false);
        }
        tick += Duration::from_millis(250);
        if let Some(wait) = tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// Highest REGISTER rate over any one-second window of `samples`.
fn peak_rate(samples: &[(Instant, Sample)]) -> u64 {
    let mut peak = 0;
    for (i, (at, first)) in samples.iter().enumerate() {
        if let Some((_, later)) = samples[i..]
            .iter()
            .take_while(|(t, _)| *t - *at <= Duration::from_millis(1000))
            .last()
        {
            peak = peak.max(later.registers_sent - first.registers_sent);
        }
    }
    peak
}

fn main() {
    let count = arg("--count", 1000) as usize;
    let hold = Duration::from_secs(arg("--hold-secs", 600));
    let expires = arg("--expires", 120);
    let down = Duration::from_secs(arg("--down-secs", 60));
    let tcp = std::env::args().any(|a| a == "--tcp");
    let transport = if tcp { "tcp" } else { "udp" };
    let dir =
        std::env::temp_dir().join(format!("switchboard-registrations-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "{count} registrations over {transport}, expires {expires} s, held {} s, then Kamailio down {} s",
        hold.as_secs(),
        down.as_secs()
    );

    let pbx_port = free_port();
    let mut pbx = Kamailio::start(&dir, pbx_port);
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut config = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\"]\n[api]\nlisten = \"{api}\"\n[[flows]]\nname = \"echo\"\nbot = {{ kind = \"echo\" }}\n"
    );
    for n in 0..count {
        config.push_str(&format!(
            "[[registrations]]\nid = \"r{n}\"\nproxy = \"127.0.0.1:{pbx_port};transport={transport}\"\nusername = \"u{n}\"\npassword = \"pw\"\nexpires = {expires}\nflow = \"echo\"\n"
        ));
    }
    let started = Instant::now();
    let gateway = start_gateway(&config);
    let pid = gateway.child.id();
    let everyone = |s: &Sample| s.successful as usize == count;
    let (samples, all) = watch(api, Duration::from_secs(120), everyone);
    assert!(
        all,
        "not every registration succeeded: {:?}",
        samples.last()
    );
    let first = samples.last().unwrap().1;
    println!(
        "start        all {count} successful {:.2} s after the gateway started; {} REGISTERs ({:.2} per registration), peak {} REGISTER/s",
        started.elapsed().as_secs_f64(),
        first.registers_sent,
        first.registers_sent as f64 / count as f64,
        peak_rate(&samples)
    );

    // Hold: refreshes only.
    let rss_start = proc_rss_kib(pid);
    let (cpu_start, pbx_cpu_start) = (proc_cpu_ticks(pid), pbx.cpu_ticks());
    let (samples, _) = watch(api, hold, |_| false);
    let last = samples.last().unwrap().1;
    let held = samples.last().unwrap().0 - samples[0].0;
    let sent = last.registers_sent - samples[0].1.registers_sent;
    let ticks = proc_cpu_ticks(pid) - cpu_start;
    let pbx_ticks = pbx.cpu_ticks() - pbx_cpu_start;
    let rss_end = proc_rss_kib(pid);
    let lowest = samples.iter().map(|(_, s)| s.successful).min().unwrap_or(0);
    println!(
        "hold         {sent} REGISTERs in {:.0} s: {:.2}/s ({:.2} per registration per minute), peak {} REGISTER/s; at least {lowest} of {count} successful throughout",
        held.as_secs_f64(),
        sent as f64 / held.as_secs_f64(),
        sent as f64 / count as f64 / (held.as_secs_f64() / 60.0),
        peak_rate(&samples)
    );
    println!(
        "cpu          gateway {:.2} s ({:.3}% of one core); kamailio answering the same REGISTERs {:.2} s; ratio gateway / kamailio = {:.2}",
        ticks as f64 / 100.0,
        ticks as f64 / held.as_secs_f64(),
        pbx_ticks as f64 / 100.0,
        ticks as f64 / (pbx_ticks.max(1)) as f64
    );
    println!(
        "memory       gateway RSS {rss_start} KiB after registering, {rss_end} KiB after holding ({:+} KiB)",
        rss_end as i64 - rss_start as i64
    );

    // Kamailio dies, stays away, comes back empty.
    let before_outage = sample(api).registers_sent;
    pbx.kill();
    let (samples, _) = watch(api, down, |_| false);
    let during = samples.last().unwrap().1;
    println!(
        "outage       {} s down: {} REGISTERs sent meanwhile (peak {} REGISTER/s), {} still successful at the end",
        down.as_secs(),
        during.registers_sent - before_outage,
        peak_rate(&samples),
        during.successful
    );
    let restarted = Instant::now();
    pbx.restart(pbx_port);
    let (samples, all) = watch(api, Duration::from_secs(900), everyone);
    let recovered = samples.last().unwrap().1;
    println!(
        "recovery     all {count} successful {:.1} s after Kamailio restarted: {}; {} REGISTERs, peak {} REGISTER/s",
        restarted.elapsed().as_secs_f64(),
        if all { "yes" } else { "NO" },
        recovered.registers_sent - during.registers_sent,
        peak_rate(&samples)
    );
    drop(gateway);
}
