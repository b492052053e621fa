//! Delayed offer (RFC 3261 §13.2.1): sipp sends an INVITE without SDP, as
//! some PBX trunks do by default. The gateway offers every codec it takes in
//! the 200 OK, and the caller's ACK answers; a call whose ACK carries no
//! usable answer ends with BYE.

mod common;

use std::time::Duration;

use common::audio::{best_correlation, speech_like};
use common::gateway::{echo_config, GatewayProcess};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, SipTransport};

const INVITE_WITHOUT_SDP: &str = r#"  <send retrans="500">
    <![CDATA[
      INVITE sip:100@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:100@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="200" rrs="true">
    <action>
      <ereg regexp="m=audio [0-9]+ RTP/AVP 111 9 0 8 " search_in="msg" check_it="true" assign_to="offer"/>
    </action>
  </recv>
  <Reference variables="offer"/>
"#;

/// Places a delayed-offer call whose ACK carries `ack_body`, then holds the
/// call for `hold_ms` and hangs up.
fn answering_in_ack(ack_body: &str, hold_ms: u64) -> String {
    let content_type = if ack_body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\n      "
    };
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="delayed offer">
{INVITE_WITHOUT_SDP}
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 1 ACK
      Max-Forwards: 70
      {content_type}Content-Length: [len]

{ack_body}
    ]]>
  </send>
  <pause milliseconds="{hold_ms}"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
"#
    )
}

#[test]
fn delayed_offer_call_is_answered_in_the_ack_and_echoes() {
    let gateway = GatewayProcess::start("delayed-offer", &echo_config(""));
    let peer = RtpPeer::bind();
    // The caller picks PCMU out of our offer (which puts Opus first).
    let answer = sipp::sdp_offer(
        peer.port(),
        &[(0, "PCMU/8000"), (101, "telephone-event/8000")],
    );
    let scenario = answering_in_ack(&answer, 4000);
    let dir = gateway.dir.clone();
    let target = gateway.udp;
    let caller = std::thread::spawn(move || {
        sipp::run(
            &dir,
            "call",
            &scenario,
            target,
            SipTransport::Udp,
            "127.0.0.1",
        )
    });
    let gateway_rtp = peer
        .wait_first_packet(Duration::from_secs(10))
        .expect("the gateway never sent RTP after the ACK");
    let sent = speech_like(2 * 8000);
    peer.stream_pcmu(gateway_rtp, &sent);
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);

    let received = peer.received();
    assert!(
        received.iter().all(|p| p.payload_type == 0),
        "RTP follows the codec the ACK chose"
    );
    let audio = peer.received_pcmu();
    let (score, lag) = best_correlation(&sent, &audio, 0..audio.len());
    assert!(score > 0.9, "echo correlation {score:.3} at lag {lag}");
    let answered = gateway.wait_for_log(&["answered", "codec="], Duration::from_secs(3));
    assert!(answered.contains("codec=\"PCMU\""), "{answered}");
    gateway.wait_for_log(&["call ended", "caller hung up"], Duration::from_secs(5));
    gateway.assert_no_panic();
}

#[test]
fn ack_without_an_answer_ends_the_call_with_bye() {
    let gateway = GatewayProcess::start("delayed-offer-no-answer", &echo_config(""));
    let scenario = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="delayed offer, empty ACK">
{INVITE_WITHOUT_SDP}
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv request="BYE"/>
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
"#
    );
    let output = sipp::run(
        &gateway.dir,
        "call",
        &scenario,
        gateway.udp,
        SipTransport::Udp,
        "127.0.0.1",
    );
    sipp::assert_success(&output, &gateway.dir);
    let line = gateway.wait_for_log(&["delayed offer failed"], Duration::from_secs(3));
    assert!(line.contains("no usable SDP answer"), "{line}");
    gateway.wait_for_log(&["call ended"], Duration::from_secs(5));
    gateway.assert_no_panic();
}
