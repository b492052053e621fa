//! The human a call is transferred to, played by sipp as a UAS on its own
//! port: it may challenge the INVITE with 407 and check the digest, check a
//! header by regex, ring, answer with SDP pointing at a test RTP peer, hang
//! up after a while — or be busy, or never answer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;

use super::sipp::SipTransport;

pub const AGENT_USER: &str = "agent";
pub const AGENT_PASSWORD: &str = "s3cret";
const REALM: &str = "pbx.test";

/// How the agent answers.
pub enum Behaviour {
    /// Rings, answers with media at `rtp_port`, hangs up after `hold_ms`.
    Answer { rtp_port: u16, hold_ms: u64 },
    /// Rings, answers, then waits for the gateway's BYE.
    AnswerAndWait { rtp_port: u16 },
    /// Rings, answers, puts the call on hold with a re-INVITE (`sendonly`)
    /// whose answer must be `recvonly` with only the first format, then
    /// hangs up after `hold_ms`.
    AnswerThenHold { rtp_port: u16, hold_ms: u64 },
    /// 486 Busy Here.
    Busy,
    /// 503 Service Unavailable (a server that is down for maintenance).
    Unavailable,
    /// Rings until the gateway cancels.
    NeverAnswers,
    /// 183 with SDP (early media at `rtp_port`), `early_ms` later 200 OK,
    /// then waits for the gateway's BYE.
    EarlyMediaThenAnswer { rtp_port: u16, early_ms: u64 },
}

pub struct AgentScenario {
    pub behaviour: Behaviour,
    /// Challenge the first INVITE with 407 and verify the second.
    pub challenge: bool,
    /// A regex the INVITE must match (e.g. `X-Case: 42`).
    pub require: Option<&'static str>,
    /// Payload types and rtpmaps of the answer.
    pub formats: &'static [(u8, &'static str)],
}

fn response(status: &str, tag: u32, extra: &str, sdp: Option<&str>) -> String {
    let (content, body) = match sdp {
        Some(sdp) => (
            "Content-Type: application/sdp\n      Content-Length: [len]".to_string(),
            format!("\n{sdp}"),
        ),
        None => ("Content-Length: 0".to_string(), String::new()),
    };
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("{extra}\n      ")
    };
    // Only a 2xx is retransmitted by its sender (until the ACK).
    let retrans = if status.starts_with('2') {
        " retrans=\"500\""
    } else {
        ""
    };
    format!(
        r#"  <send{retrans}>
    <![CDATA[
      SIP/2.0 {status}
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag0{tag}[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:agent@[local_ip]:[local_port];transport=[transport]>
      {extra}{content}
{body}
    ]]>
  </send>
"#
    )
}

/// The agent's BYE after `hold_ms`, as request `cseq` of its side of the
/// dialog (`remote` holds the gateway's From, with its tag).
fn hang_up_after(hold_ms: u64, cseq: u32) -> String {
    format!(
        r#"  <pause milliseconds="{hold_ms}"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:agent@[local_ip]:[local_port]>;tag=[pid]SIPpTag02[call_number]
      To: [$remote]
      [last_Call-ID:]
      CSeq: {cseq} BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
"#
    )
}

fn checks(require: Option<&str>, id: &str) -> String {
    match require {
        Some(regex) => format!(
            r#"<ereg regexp="{regex}" search_in="msg" check_it="true" assign_to="check{id}"/><log message="required header seen: [$check{id}]"/>"#
        ),
        None => String::new(),
    }
}

impl AgentScenario {
    pub fn xml(&self) -> String {
        let mut xml = String::from(
            "<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n<scenario name=\"agent\">\n",
        );
        // Placeholder for what the INVITE's recv extracts (see the end).
        let grab_from = "<!--grab-->";
        if self.challenge {
            xml.push_str(&format!(
                "  <recv request=\"INVITE\"><action>{}</action></recv>\n",
                checks(self.require, "1")
            ));
            xml.push_str(&response(
                "407 Proxy Authentication Required",
                1,
                "Proxy-Authenticate: Digest realm=\"pbx.test\", nonce=\"[pid]n[call_number]\", qop=\"auth\", algorithm=MD5",
                None,
            ));
            xml.push_str("  <recv request=\"ACK\"/>\n");
            // sipp's verifyauth reads only Authorization: the test checks
            // the Proxy-Authorization of this INVITE itself
            // (`check_proxy_authorization`).
            xml.push_str(&format!(
                "  <recv request=\"INVITE\" rrs=\"true\"><action>{}{grab_from}</action></recv>\n",
                checks(self.require, "2")
            ));
        } else {
            xml.push_str(&format!(
                "  <recv request=\"INVITE\" rrs=\"true\"><action>{}{grab_from}</action></recv>\n",
                checks(self.require, "1")
            ));
        }
        let sdp = |port: u16| {
            let pts: Vec<String> = self.formats.iter().map(|(pt, _)| pt.to_string()).collect();
            let mut sdp = format!(
                "v=0\no=agent 1 1 IN IP4 127.0.0.1\ns=agent\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio {port} RTP/AVP {}\n",
                pts.join(" ")
            );
            for (pt, map) in self.formats {
                sdp.push_str(&format!("a=rtpmap:{pt} {map}\n"));
            }
            sdp.push_str("a=ptime:20\na=sendrecv\n");
            sdp
        };
        match self.behaviour {
            Behaviour::Answer { rtp_port, .. }
            | Behaviour::AnswerAndWait { rtp_port }
            | Behaviour::AnswerThenHold { rtp_port, .. } => {
                xml.push_str(&response("180 Ringing", 2, "", None));
                xml.push_str("  <pause milliseconds=\"300\"/>\n");
                xml.push_str(&response("200 OK", 2, "", Some(&sdp(rtp_port))));
                xml.push_str("  <recv request=\"ACK\"/>\n");
            }
            Behaviour::EarlyMediaThenAnswer { rtp_port, early_ms } => {
                xml.push_str(&response(
                    "183 Session Progress",
                    2,
                    "",
                    Some(&sdp(rtp_port)),
                ));
                xml.push_str(&format!("  <pause milliseconds=\"{early_ms}\"/>\n"));
                xml.push_str(&response("200 OK", 2, "", Some(&sdp(rtp_port))));
                xml.push_str("  <recv request=\"ACK\"/>\n");
            }
            Behaviour::Busy => {
                xml.push_str(&response("486 Busy Here", 2, "", None));
                xml.push_str("  <recv request=\"ACK\"/>\n");
            }
            Behaviour::Unavailable => {
                xml.push_str(&response("503 Service Unavailable", 2, "", None));
                xml.push_str("  <recv request=\"ACK\"/>\n");
            }
            Behaviour::NeverAnswers => {
                xml.push_str(&response("180 Ringing", 2, "", None));
                xml.push_str("  <recv request=\"CANCEL\"/>\n");
                xml.push_str(
                    r#"  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag02[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <send>
    <![CDATA[
      SIP/2.0 487 Request Terminated
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag02[call_number]
      [last_Call-ID:]
      CSeq: [$cseq] INVITE
      Content-Length: 0

    ]]>
  </send>
  <recv request="ACK"/>
"#,
                );
            }
        }
        match self.behaviour {
            Behaviour::Answer { hold_ms, .. } => xml.push_str(&hang_up_after(hold_ms, 1)),
            Behaviour::AnswerThenHold { rtp_port, hold_ms } => {
                let (pt, _) = self.formats[0];
                let held = sdp(rtp_port).replace("a=sendrecv", "a=sendonly");
                xml.push_str(&format!(
                    r#"  <pause milliseconds="300"/>
  <send retrans="500">
    <![CDATA[
      INVITE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:agent@[local_ip]:[local_port]>;tag=[pid]SIPpTag02[call_number]
      To: [$remote]
      [last_Call-ID:]
      CSeq: 1 INVITE
      Contact: <sip:agent@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

{held}
    ]]>
  </send>
  <recv response="200">
    <action>
      <ereg regexp="a=recvonly" search_in="body" check_it="true" assign_to="direction"/>
      <ereg regexp="m=audio [0-9]+ RTP/AVP {pt} 101\r?\n" search_in="body" check_it="true" assign_to="formats"/>
      <log message="held: [$direction] [$formats]"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:agent@[local_ip]:[local_port]>;tag=[pid]SIPpTag02[call_number]
      To: [$remote]
      [last_Call-ID:]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"#
                ));
                xml.push_str(&hang_up_after(hold_ms, 2));
            }
            Behaviour::AnswerAndWait { .. } | Behaviour::EarlyMediaThenAnswer { .. } => xml
                .push_str(
                    r#"  <recv request="BYE" timeout="60000"/>
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
"#,
                ),
            _ => {}
        }
        xml.push_str("</scenario>\n");
        // The gateway's From (with its tag) is the To of the agent's BYE;
        // the CANCEL path needs the INVITE's CSeq number.
        let grab = match self.behaviour {
            Behaviour::Answer { .. } | Behaviour::AnswerThenHold { .. } => {
                r#"<ereg regexp=".*" search_in="hdr" header="From:" assign_to="remote"/>"#
            }
            Behaviour::NeverAnswers => {
                r#"<ereg regexp="[0-9]+" search_in="hdr" header="CSeq:" assign_to="cseq"/>"#
            }
            _ => "",
        };
        xml.replace(grab_from, grab)
    }
}

/// Checks the digest the gateway answered our 407 with, computed here
/// independently (RFC 2617 MD5, qop=auth): returns the header.
pub fn check_proxy_authorization(messages: &str) -> String {
    use md5::{Digest, Md5};
    let hex = |text: String| {
        Md5::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let header = messages
        .lines()
        .find_map(|line| line.strip_prefix("Proxy-Authorization: Digest "))
        .unwrap_or_else(|| panic!("no Proxy-Authorization in:\n{messages}"))
        .to_string();
    let param = |name: &str| {
        header
            .split(", ")
            .find_map(|part| part.strip_prefix(&format!("{name}=")))
            .map(|value| value.trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("no {name} in {header}"))
    };
    assert_eq!(param("username"), AGENT_USER);
    assert_eq!(param("realm"), REALM);
    assert_eq!(param("qop"), "auth");
    let ha1 = hex(format!("{AGENT_USER}:{REALM}:{AGENT_PASSWORD}"));
    let ha2 = hex(format!("INVITE:{}", param("uri")));
    let expected = hex(format!(
        "{ha1}:{}:{}:{}:auth:{ha2}",
        param("nonce"),
        param("nc"),
        param("cnonce")
    ));
    assert_eq!(param("response"), expected, "digest response in {header}");
    header
}

/// A running sipp agent.
pub struct Agent {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    thread: Option<JoinHandle<Output>>,
}

impl Agent {
    /// An agent on UDP that answers PCMU (with RFC 4733) at `rtp_port`
    /// and hangs up after `hold_ms`.
    pub fn answering(dir: &Path, name: &str, rtp_port: u16, hold_ms: u64) -> Agent {
        let scenario = AgentScenario {
            behaviour: Behaviour::Answer { rtp_port, hold_ms },
            challenge: false,
            require: None,
            formats: &[(0, "PCMU/8000"), (101, "telephone-event/8000")],
        };
        Agent::start(dir, name, &scenario, SipTransport::Udp)
    }

    /// Starts sipp as a UAS on a free loopback port.
    pub fn start(
        dir: &Path,
        name: &str,
        scenario: &AgentScenario,
        transport: SipTransport,
    ) -> Agent {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.xml");
        std::fs::write(&path, scenario.xml()).unwrap();
        let port = free_port(transport);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut command = Command::new("sipp");
        command
            .current_dir(&dir)
            .arg("-sf")
            .arg(&path)
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", "1", "-timeout", "60s", "-timeout_error", "-nostdin"])
            .args(["-trace_err", "-trace_msg"])
            .arg("-t")
            .arg(match transport {
                SipTransport::Udp => "u1",
                SipTransport::Tcp => "t1",
            });
        let thread = std::thread::spawn(move || command.output().expect("running sipp"));
        // Give sipp a moment to bind before the gateway dials it.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Agent {
            addr,
            dir,
            thread: Some(thread),
        }
    }

    /// Waits for sipp to finish; its output.
    pub fn join(mut self) -> Output {
        self.thread.take().unwrap().join().unwrap()
    }

    /// Every SIP message sipp logged.
    pub fn messages(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(&self.dir).unwrap().flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .ends_with("_messages.log")
            {
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        text
    }
}

/// The RTP port of the last SDP in `messages` that follows a line starting
/// with `start` (e.g. the INVITE sipp received): where the gateway listens.
pub fn sdp_port_after(messages: &str, start: &str) -> Option<u16> {
    let at = messages.rfind(&format!("\n{start}"))?;
    messages[at..]
        .lines()
        .find_map(|line| line.strip_prefix("m=audio "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|port| port.parse().ok())
}

impl Agent {
    /// Where the gateway takes this agent's RTP, from the INVITE's SDP.
    pub fn gateway_rtp(&self) -> SocketAddr {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(port) = sdp_port_after(&self.messages(), "INVITE ") {
                return SocketAddr::from(([127, 0, 0, 1], port));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no INVITE with SDP reached the agent"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn free_port(transport: SipTransport) -> u16 {
    match transport {
        SipTransport::Udp => std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
        SipTransport::Tcp => std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    }
}
