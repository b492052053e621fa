//! REGISTER throughput with digest authentication, Switchboard beside
//! Kamailio (its registrar + auth, credentials in memory) driven by the
//! same sipp command in the same run; then memory per 10,000 bindings.
//!
//!   cargo bench --bench register -- --rate 12000 --seconds 20 --users 10000
//!
//! Each sipp "call" is one registration: REGISTER, 401, REGISTER with
//! credentials (MD5, qop=auth), 200 — all for user `u0` (sipp 3.6 cannot
//! take digest usernames from its CSV file), each replacing the previous
//! binding. Memory is then measured with a client of this bench that
//! registers `u0..uN` once each.

mod harness;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{arg, proc_rss_kib};

const SCENARIO: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register">
  <send retrans="500">
    <![CDATA[
      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:u0@[remote_ip]:[remote_port]>;tag=[pid]r[call_number]
      To: <sip:u0@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:u0@[local_ip]:[local_port]>
      Expires: 3600
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="401" auth="true"/>
  <send retrans="500">
    <![CDATA[
      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:u0@[remote_ip]:[remote_port]>;tag=[pid]r[call_number]
      To: <sip:u0@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 2 REGISTER
      Contact: <sip:u0@[local_ip]:[local_port]>
      Expires: 3600
      [authentication username=u0 password=pw]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
"#;

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Kamailio's workers are forked children: kill its process group
        // (each server is spawned leading one), or they outlive the bench.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn switchboard(dir: &Path, users: usize) -> Server {
    let port = free_port();
    let mut config = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:{port}\"]\n[limits]\nnew_requests_per_ip = 0\n[registrar]\nrealm = \"bench\"\nmax_failures = 1000000\n"
    );
    for n in 0..users {
        config.push_str(&format!(
            "[[users]]\nusername = \"u{n}\"\npassword = \"pw\"\n"
        ));
    }
    config.push_str("[[flows]]\nname = \"echo\"\nbot = { kind = \"echo\" }\n");
    let path = dir.join("switchboard.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["run", "--config"])
        .arg(&path)
        .env("SWITCHBOARD_LOG", "warn,switchboard=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn switchboard");
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    while let Some(Ok(line)) = lines.next() {
        if line.contains("listening for SIP") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        addr: format!("127.0.0.1:{port}"),
    }
}

fn kamailio(dir: &Path) -> Server {
    let port = free_port();
    let config = format!(
        r#"#!KAMAILIO
listen=udp:127.0.0.1:{port}
children=2
disable_tcp=yes
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
modparam("registrar", "max_contacts", 10)
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
    sl_send_reply("405", "Method Not Allowed");
}}
"#
    );
    let path = dir.join("kamailio.cfg");
    std::fs::write(&path, config).unwrap();
    use std::os::unix::process::CommandExt;
    let child = Command::new("kamailio")
        .process_group(0)
        .args(["-DD", "-E", "-m", "256", "-f"])
        .arg(&path)
        .args(["-Y", &dir.to_string_lossy()])
        .args(["-P", &dir.join("kamailio.pid").to_string_lossy()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kamailio");
    std::thread::sleep(Duration::from_secs(2));
    Server {
        child,
        addr: format!("127.0.0.1:{port}"),
    }
}

/// Runs sipp at `rate` registrations/s for `count` registrations; returns
/// (successful, failed, seconds).
fn sipp(dir: &Path, target: &str, rate: u64, count: u64) -> (u64, u64, f64) {
    let scenario = dir.join("register.xml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let started = Instant::now();
    let output = Command::new("sipp")
        .current_dir(dir)
        .arg(target)
        .arg("-sf")
        .arg(&scenario)
        .args(["-i", "127.0.0.1", "-p", &free_port().to_string()])
        .args([
            "-r",
            &rate.to_string(),
            "-rp",
            "1000",
            "-m",
            &count.to_string(),
        ])
        .args([
            "-l",
            "20000",
            "-timeout",
            "120s",
            "-nostdin",
            "-trace_screen",
        ])
        .args(["-max_socket", "1024"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run sipp");
    let seconds = started.elapsed().as_secs_f64();
    let _ = output;
    let screen = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with("_screen.log"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .unwrap_or_default();
    let count_of = |label: &str| {
        screen
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split('|').nth(2))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().ends_with("_screen.log") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    (
        count_of("Successful call"),
        count_of("Failed call"),
        seconds,
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchboard-register-{name}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn main() {
    let rate = arg("--rate", 12_000);
    let seconds = arg("--seconds", 20);
    let users = arg("--users", 10_000) as usize;
    let count = rate * seconds;
    println!("sipp: {count} registrations offered at {rate}/s, {users} users, MD5 digest each");

    let dir = scratch("kamailio");
    let server = kamailio(&dir);
    // Kamailio keeps bindings in shared memory across its processes: the
    // proportional set size of the whole group counts each page once.
    let group = server.child.id();
    let kamailio_before = group_pss_kib(group);
    let kamailio_registered = register_all(&server.addr, users);
    std::thread::sleep(Duration::from_millis(300));
    let kamailio_after = group_pss_kib(group);
    let (ok, failed, secs) = sipp(&dir, &server.addr, rate, count);
    let kamailio_rate = ok as f64 / secs;
    println!(
        "kamailio     {ok} ok, {failed} failed in {secs:.1} s: {kamailio_rate:.0} registrations/s"
    );
    drop(server);

    let dir = scratch("switchboard");
    let server = switchboard(&dir, users);
    let pid = server.child.id();
    std::thread::sleep(Duration::from_millis(500));
    // Memory first, on a fresh process: every user registers once.
    let rss_before = group_pss_kib(pid);
    let registered = register_all(&server.addr, users);
    std::thread::sleep(Duration::from_millis(300));
    let rss_after = group_pss_kib(pid);
    // Timer J (32 s) ends every REGISTER's transaction: what is left is
    // the bindings (and the allocator's hold on freed memory).
    std::thread::sleep(Duration::from_secs(33));
    let rss_settled = group_pss_kib(pid);
    let (ok, failed, secs) = sipp(&dir, &server.addr, rate, count);
    let switchboard_rate = ok as f64 / secs;
    let rss_burst = proc_rss_kib(pid);
    println!("switchboard  {ok} ok, {failed} failed in {secs:.1} s: {switchboard_rate:.0} registrations/s");
    println!(
        "ratio        switchboard / kamailio = {:.2}",
        switchboard_rate / kamailio_rate.max(1.0)
    );
    let per_10k = |before: u64, after: u64, count: usize| {
        after.saturating_sub(before) as f64 * 10_000.0 / count.max(1) as f64
    };
    println!(
        "memory (PSS) kamailio: {kamailio_before} -> {kamailio_after} KiB for {kamailio_registered} bindings: {:.0} KiB per 10,000",
        per_10k(kamailio_before, kamailio_after, kamailio_registered)
    );
    println!(
        "memory (PSS) switchboard: {rss_before} KiB with {users} users configured, {rss_after} KiB with {registered} registered ({:.0} KiB per 10,000, transactions included), {rss_settled} KiB 33 s later ({:.0} KiB per 10,000)",
        per_10k(rss_before, rss_after, registered),
        per_10k(rss_before, rss_settled, registered)
    );
    println!(
        "after burst  {rss_burst} KiB RSS right after the sipp run (each answered REGISTER's transaction lives 32 s, RFC 3261 Timer J)"
    );
}

/// Proportional set size of every process in process group `group`
/// (`/proc/PID/smaps_rollup`), in KiB.
fn group_pss_kib(group: u32) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pgrp is the 3rd field after the parenthesised command name.
        let pgrp = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|v| v.parse::<u32>().ok());
        if pid != group && pgrp != Some(group) {
            continue;
        }
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        total += rollup
            .lines()
            .find(|l| l.starts_with("Pss:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Registers `u0..u{users}` once each (MD5 digest computed here), 64 at a
/// time; returns how many got their 200.
fn register_all(target: &str, users: usize) -> usize {
    use md5::{Digest, Md5};
    let hex = |text: String| -> String {
        Md5::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let target: std::net::SocketAddr = target.parse().unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let local = socket.local_addr().unwrap();
    let register = |user: usize, cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKm{user}x{cseq}\r\nFrom: <sip:u{user}@{target}>;tag=m{user}\r\nTo: <sip:u{user}@{target}>\r\nCall-ID: mem-{user}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:u{user}@{local}>\r\nExpires: 3600\r\n{auth}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let mut registered = 0;
    let mut buf = [0u8; 4096];
    for batch in (0..users).collect::<Vec<_>>().chunks(64) {
        for user in batch {
            let _ = socket.send_to(register(*user, 1, "").as_bytes(), target);
        }
        let mut pending = batch.len();
        while pending > 0 {
            let Ok((len, _)) = socket.recv_from(&mut buf) else {
                break;
            };
            let text = String::from_utf8_lossy(&buf[..len]).to_string();
            let user: usize = text
                .lines()
                .find(|l| l.starts_with("Call-ID: mem-"))
                .and_then(|l| l["Call-ID: mem-".len()..].trim().parse().ok())
                .unwrap_or(usize::MAX);
            if text.starts_with("SIP/2.0 401") {
                let nonce = text
                    .split("nonce=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or("")
                    .to_string();
                let uri = format!("sip:{target}");
                let ha1 = hex(format!("u{user}:bench:pw"));
                let ha2 = hex(format!("REGISTER:{uri}"));
                let response = hex(format!("{ha1}:{nonce}:00000001:c:auth:{ha2}"));
                let auth = format!(
                    "Authorization: Digest username=\"u{user}\", realm=\"bench\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c\"\r\n"
                );
                let _ = socket.send_to(register(user, 2, &auth).as_bytes(), target);
            } else if text.starts_with("SIP/2.0 200") {
                registered += 1;
                pending -= 1;
            } else {
                pending -= 1;
            }
        }
    }
    registered
}
