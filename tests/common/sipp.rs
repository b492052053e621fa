//! sipp (Debian `sip-tester`) as the caller: scenarios are generated per test
//! so the SDP can point at whatever RTP endpoint the test runs.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SipTransport {
    Udp,
    Tcp,
}

/// An SDP offer for a caller whose RTP lives at `rtp_port` on 127.0.0.1.
pub fn sdp_offer(rtp_port: u16, formats: &[(u8, &str)]) -> String {
    let pts: Vec<String> = formats.iter().map(|(pt, _)| pt.to_string()).collect();
    let mut sdp = format!(
        "v=0\r\no=sipp 1 1 IN IP4 127.0.0.1\r\ns=call\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP {}\r\n",
        pts.join(" ")
    );
    for (pt, map) in formats {
        sdp.push_str(&format!("a=rtpmap:{pt} {map}\r\n"));
        if map.starts_with("telephone-event") {
            sdp.push_str(&format!("a=fmtp:{pt} 0-16\r\n"));
        }
    }
    sdp.push_str("a=ptime:20\r\na=sendrecv\r\n");
    sdp
}

pub const G711_OFFER: &[(u8, &str)] = &[
    (0, "PCMU/8000"),
    (8, "PCMA/8000"),
    (101, "telephone-event/8000"),
];

fn invite(dialed: &str, sdp: &str) -> String {
    format!(
        r#"  <send retrans="500">
    <![CDATA[
      INVITE sip:{dialed}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:{dialed}@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      X-Test-Case: switchboard
      Content-Type: application/sdp
      Content-Length: [len]

{sdp}
    ]]>
  </send>
"#
    )
}

const ACK: &str = r#"  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"#;

/// Caller places the call, holds it `hold_ms`, then hangs up.
pub fn caller_hangs_up(dialed: &str, sdp: &str, hold_ms: u64) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="caller hangs up">
{invite}
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rrs="true"/>
{ack}
  <pause milliseconds="{hold_ms}"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 2 BYE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
"#,
        invite = invite(dialed, sdp),
        ack = ACK.replace("sip:[service]@[remote_ip]:[remote_port]", "[next_url]"),
    )
}

/// Caller answers the gateway's BYE.
pub fn gateway_hangs_up(dialed: &str, sdp: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="gateway hangs up">
{invite}
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
{ack}
  <recv request="BYE" timeout="30000"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"#,
        invite = invite(dialed, sdp),
        ack = ACK.replace("sip:[service]@[remote_ip]:[remote_port]", "[next_url]"),
    )
}

/// Caller expects a final error `status` and ACKs it.
pub fn rejected(dialed: &str, sdp: &str, status: u16) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="rejected with {status}">
{invite}
  <recv response="100" optional="true"/>
  <recv response="{status}"/>
  <send>
    <![CDATA[
      ACK sip:{dialed}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-1]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
</scenario>
"#,
        invite = invite(dialed, sdp),
    )
}

/// Runs one call of `scenario` against `target`; returns sipp's output.
pub fn run(
    dir: &Path,
    name: &str,
    scenario: &str,
    target: SocketAddr,
    transport: SipTransport,
    source_ip: &str,
) -> Output {
    run_with(dir, name, scenario, target, transport, source_ip, &[])
}

/// Runs one call of `scenario` over UDP from 127.0.0.1 on its own thread,
/// so the test can play the caller's RTP meanwhile; join for sipp's output.
pub fn spawn_udp_call(
    gateway: &super::gateway::GatewayProcess,
    scenario: String,
) -> std::thread::JoinHandle<Output> {
    let (dir, target) = (gateway.dir.clone(), gateway.udp);
    std::thread::spawn(move || {
        run(
            &dir,
            "call",
            &scenario,
            target,
            SipTransport::Udp,
            "127.0.0.1",
        )
    })
}

/// Caller plays RFC 4733 digits with sipp's own RTP (`play_pcap_audio` of
/// the pcaps Debian's sip-tester ships), then hangs up. The SDP offers
/// sipp's media port, so `run_with` must pass a free `-mp`.
pub fn caller_sends_dtmf(dialed: &str, digits: &[&str]) -> String {
    let sdp = "v=0\no=sipp 1 1 IN IP[local_ip_type] [local_ip]\ns=call\nc=IN IP[media_ip_type] [media_ip]\nt=0 0\nm=audio [media_port] RTP/AVP 0 101\na=rtpmap:0 PCMU/8000\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-16\na=ptime:20\n";
    let mut plays = String::new();
    for digit in digits {
        plays.push_str(&format!(
            "  <nop><action><exec play_pcap_audio=\"/usr/share/sip-tester/dtmf_2833_{digit}.pcap\"/></action></nop>\n  <pause milliseconds=\"700\"/>\n"
        ));
    }
    caller_hangs_up(dialed, sdp, 300).replace(
        "  <pause milliseconds=\"300\"/>\n",
        &format!("  <pause milliseconds=\"300\"/>\n{plays}"),
    )
}

/// An even UDP port free right now, for sipp's media (`-mp`).
pub fn free_media_port() -> u16 {
    loop {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        if port.is_multiple_of(2) && port < 65_000 {
            return port;
        }
    }
}

pub fn run_with(
    dir: &Path,
    name: &str,
    scenario: &str,
    target: SocketAddr,
    transport: SipTransport,
    source_ip: &str,
    extra: &[&str],
) -> Output {
    let path = dir.join(format!("{name}.xml"));
    std::fs::write(&path, scenario).unwrap();
    let mut command = Command::new("sipp");
    command
        .current_dir(dir)
        .arg(target.to_string())
        .arg("-sf")
        .arg(&path)
        .args(["-m", "1", "-l", "1", "-i", source_ip])
        .args([
            "-timeout",
            "40s",
            "-timeout_error",
            "-nostdin",
            "-trace_err",
            "-trace_msg",
        ])
        .args(["-s", "echo"])
        .arg("-t")
        .arg(match transport {
            SipTransport::Udp => "u1",
            SipTransport::Tcp => "t1",
        })
        .args(extra);
    // sipp's default port is 5060 with SO_REUSEADDR: two sipps running at
    // once (tests run in parallel) both bind it and one receives the
    // other's requests. Give each its own.
    if !extra.contains(&"-p") {
        command.args(["-p", &free_port(source_ip).to_string()]);
    }
    command
        .output()
        .expect("running sipp (Debian package sip-tester)")
}

/// A port free on `ip` for both UDP and TCP as far as we can tell.
fn free_port(ip: &str) -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind((ip, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

pub fn assert_success(output: &Output, dir: &Path) {
    if !output.status.success() {
        let mut traces = String::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with("_errors.log") || name.ends_with("_messages.log") {
                traces.push_str(&format!("--- {name}\n"));
                traces.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        panic!(
            "sipp failed ({}):\nstdout: {}\nstderr: {}\n{traces}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A caller that answers a 407 with `credentials`, talks for a few
/// seconds and hangs up.
pub fn caller_with_digest(dialed: &str, sdp: &str, credentials: (&str, &str)) -> String {
    let (user, password) = credentials;
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="authenticated caller">
  <send retrans="500">
    <![CDATA[
      INVITE sip:{dialed}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:{user}@[remote_ip]:[remote_port]>;tag=[pid]a[call_number]
      To: <sip:{dialed}@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:{user}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

{sdp}
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="407" auth="true"/>
  <send>
    <![CDATA[
      ACK sip:{dialed}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-1]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <send retrans="500">
    <![CDATA[
      INVITE sip:{dialed}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:{user}@[remote_ip]:[remote_port]>;tag=[pid]a[call_number]
      To: <sip:{dialed}@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 2 INVITE
      Contact: <sip:{user}@[local_ip]:[local_port]>
      [authentication username={user} password={password}]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

{sdp}
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rrs="true"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 2 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <pause milliseconds="4000"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 3 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
"#
    )
}
