//! An agent (SIP UAS) in the bench's own process: answers every INVITE
//! with 200 OK (PCMU or PCMA), echoes each call's RTP straight back, and
//! answers BYE. Hooks let a bench time what it cares about.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// What a bench wants to know from the agent.
pub struct AgentHooks {
    /// A new INVITE arrived (its text).
    pub on_invite: Box<dyn Fn(&str) + Send + Sync>,
    /// A call's first RTP packet arrived, this long after our 200 OK.
    pub on_first_media: Box<dyn Fn(Duration) + Send + Sync>,
}

impl AgentHooks {
    pub fn none() -> AgentHooks {
        AgentHooks {
            on_invite: Box::new(|_| {}),
            on_first_media: Box::new(|_| {}),
        }
    }
}

pub fn header<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && line.as_bytes()[name.len()] == b':'
        })
        .map(|line| line[name.len() + 1..].trim())
        .unwrap_or("")
}

/// The agent: answers every INVITE with 200 OK (PCMU or PCMA) and echoes
/// each call's RTP straight back.
pub async fn run_agent(socket: UdpSocket, payload_type: u8, hooks: AgentHooks) {
    let hooks = Arc::new(hooks);
    let socket = Arc::new(socket);
    let mut answers: HashMap<String, String> = HashMap::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..len]).to_string();
        let call_id = header(&text, "Call-ID").to_string();
        let reply = |status: &str, extra: &str, body: &str| {
            let via: String = text
                .lines()
                .filter(|l| l.to_ascii_lowercase().starts_with("via:"))
                .map(|l| format!("{l}\r\n"))
                .collect();
            format!(
                "SIP/2.0 {status}\r\n{via}From: {}\r\nTo: {}\r\nCall-ID: {call_id}\r\nCSeq: {}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                header(&text, "From"),
                header(&text, "To"),
                header(&text, "CSeq"),
                body.len()
            )
        };
        if text.starts_with("INVITE ") {
            if let Some(answer) = answers.get(&call_id) {
                let _ = socket.send_to(answer.as_bytes(), from).await;
                continue;
            }
            (hooks.on_invite)(&text);
            let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = rtp.local_addr().unwrap().port();
            let codec = if payload_type == 0 { "PCMU" } else { "PCMA" };
            let sdp = format!(
                "v=0\r\no=agent 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP {payload_type}\r\na=rtpmap:{payload_type} {codec}/8000\r\na=ptime:20\r\n"
            );
            let mut ok = reply(
                "200 OK",
                &format!(
                    "Contact: <sip:agent@{}>\r\nContent-Type: application/sdp\r\n",
                    socket.local_addr().unwrap()
                ),
                &sdp,
            );
            ok = ok.replacen(
                &format!("To: {}", header(&text, "To")),
                &format!("To: {};tag=agent", header(&text, "To")),
                1,
            );
            answers.insert(call_id, ok.clone());
            let _ = socket.send_to(ok.as_bytes(), from).await;
            let answered_at = Instant::now();
            let hooks = hooks.clone();
            tokio::spawn(async move {
                let mut packet = [0u8; 2048];
                let mut first = true;
                while let Ok(Ok((len, from))) =
                    tokio::time::timeout(Duration::from_secs(60), rtp.recv_from(&mut packet)).await
                {
                    if first {
                        first = false;
                        (hooks.on_first_media)(answered_at.elapsed());
                    }
                    let _ = rtp.send_to(&packet[..len], from).await;
                }
            });
        } else if text.starts_with("BYE ") || text.starts_with("OPTIONS ") {
            let ok = reply("200 OK", "", "");
            let _ = socket.send_to(ok.as_bytes(), from).await;
            answers.remove(&call_id);
        }
    }
}
