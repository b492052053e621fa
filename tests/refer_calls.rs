//! Blind transfer by REFER: a flow with `transfer = "refer"` hands the
//! caller's side the target; sipp plays a caller that accepts (202, NOTIFY
//! 100 then 200: the gateway hangs up) and one that refuses (405: the bot
//! hears why and the call goes on).

mod common;

use std::time::Duration;

use common::agent::{Agent, AgentScenario, Behaviour};
use common::gateway::{config_with, scratch_dir, GatewayProcess};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, SipTransport, G711_OFFER};
use common::twilio_bot::{BotCommand, TwilioBot};
use serde_json::json;

fn config(bot_url: &str) -> String {
    config_with(&format!(
        r#"
[dial]
allow = ['^sip:desk@127\.0\.0\.1[:;?]']

[[trunks]]
name = "loopback"
allow = ["127.0.0.1"]
routes = [{{ pattern = '^\+1\d{{10}}$', flow = "bot" }}]

[[flows]]
name = "bot"
bot = {{ kind = "twilio_stream", url = "{bot_url}" }}
transfer = "refer"
"#
    ))
}

/// The caller's side of the dialog from the INVITE to the REFER, then
/// `after` (what it does with the REFER).
fn caller_scenario(sdp: &str, after: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="referee">
  <send retrans="500">
    <![CDATA[
      INVITE sip:+12125550100@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:+12125550100@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Allow: INVITE, ACK, BYE, CANCEL, REFER, NOTIFY
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

{sdp}
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="200" rrs="true">
    <action><ereg regexp=".*" search_in="hdr" header="To:" assign_to="gateway"/><log message="dialog with [$gateway]"/></action>
  </recv>
  <!-- A late ACK: the bot asks for the transfer first, and the REFER must
       wait for the ACK rather than fall back to a bridge. -->
  <pause milliseconds="300"/>
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
  <recv request="REFER" timeout="20000">
    <action>
      <ereg regexp="Refer-To: &lt;sip:desk@127.0.0.1:5090\?X-Case=42&gt;" search_in="msg" check_it="true" assign_to="referto"/>
      <ereg regexp="Referred-By: &lt;sip:" search_in="msg" check_it="true" assign_to="referredby"/>
      <log message="[$referto] [$referredby]"/>
    </action>
  </recv>
{after}
</scenario>
"#
    )
}

fn notify(cseq: u32, state: &str, sipfrag: &str) -> String {
    format!(
        r#"  <send retrans="500">
    <![CDATA[
      NOTIFY [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To:[$gateway]
      Call-ID: [call_id]
      CSeq: {cseq} NOTIFY
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Event: refer
      Subscription-State: {state}
      Max-Forwards: 70
      Content-Type: message/sipfrag;version=2.0
      Content-Length: [len]

{sipfrag}
    ]]>
  </send>
  <recv response="200"/>
"#
    )
}

const ANSWER_REFER: &str = r#"  <send>
    <![CDATA[
      SIP/2.0 STATUS
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
"#;

const ANSWER_BYE: &str = r#"  <recv request="BYE" timeout="20000"/>
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
"#;

fn ask_for_transfer(bot: &TwilioBot) {
    let twiml = "<Response><Dial><Sip>sip:desk@127.0.0.1:5090?X-Case=42</Sip></Dial></Response>";
    bot.send(BotCommand::Json(
        json!({"event": "action", "name": "twiml", "body": twiml}),
    ));
}

#[test]
fn accepted_refer_follows_the_notifies_then_hangs_up() {
    let bot = TwilioBot::start();
    let gateway = GatewayProcess::start("refer-ok", &config(&format!("ws://{}/media", bot.addr)));
    let peer = RtpPeer::bind();
    let after = format!(
        "{}{}{}{}",
        ANSWER_REFER.replace("STATUS", "202 Accepted"),
        notify(2, "active;expires=60", "SIP/2.0 100 Trying"),
        notify(3, "terminated;reason=noresource", "SIP/2.0 200 OK"),
        ANSWER_BYE
    );
    let scenario = caller_scenario(&sipp::sdp_offer(peer.port(), G711_OFFER), &after);
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    bot.wait_event("start", |_| true, Duration::from_secs(10));
    ask_for_transfer(&bot);
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.wait_for_log(&["REFER progress", "status=100"], Duration::from_secs(2));
    gateway.wait_for_log(&["transfer: REFER succeeded"], Duration::from_secs(2));
    gateway.wait_for_log(
        &["call ended", "transferred by REFER"],
        Duration::from_secs(5),
    );
    bot.wait_event("stop", |_| true, Duration::from_secs(3));
    gateway.assert_no_panic();
}

#[test]
fn refused_refer_returns_the_caller_to_the_bot() {
    let bot = TwilioBot::start();
    let gateway = GatewayProcess::start("refer-405", &config(&format!("ws://{}/media", bot.addr)));
    let peer = RtpPeer::bind();
    let after = format!(
        "{}{}",
        ANSWER_REFER.replace("STATUS", "405 Method Not Allowed"),
        ANSWER_BYE
    );
    let scenario = caller_scenario(&sipp::sdp_offer(peer.port(), G711_OFFER), &after);
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    bot.wait_event("start", |_| true, Duration::from_secs(10));
    ask_for_transfer(&bot);
    let (_, result) = bot.wait_event("action_result", |_| true, Duration::from_secs(5));
    assert_eq!(result["ok"], false);
    let message = result["message"].as_str().unwrap();
    assert!(message.contains("405"), "{message}");
    // The call goes on with the bot until it hangs up.
    bot.send(BotCommand::Json(
        json!({"event": "action", "name": "hangup"}),
    ));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.assert_no_panic();
}

/// The referee accepts, then reports that the target was busy: the REFER
/// failed, so the caller stays with the bot, which hears why.
#[test]
fn failed_sipfrag_returns_the_caller_to_the_bot() {
    let bot = TwilioBot::start();
    let gateway = GatewayProcess::start(
        "refer-sipfrag-486",
        &config(&format!("ws://{}/media", bot.addr)),
    );
    let peer = RtpPeer::bind();
    let after = format!(
        "{}{}{}{}",
        ANSWER_REFER.replace("STATUS", "202 Accepted"),
        notify(2, "active;expires=60", "SIP/2.0 100 Trying"),
        notify(3, "terminated;reason=noresource", "SIP/2.0 486 Busy Here"),
        ANSWER_BYE
    );
    let scenario = caller_scenario(&sipp::sdp_offer(peer.port(), G711_OFFER), &after);
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    bot.wait_event("start", |_| true, Duration::from_secs(10));
    ask_for_transfer(&bot);
    let (_, result) = bot.wait_event("action_result", |_| true, Duration::from_secs(5));
    assert_eq!(result["ok"], false);
    let message = result["message"].as_str().unwrap();
    assert!(message.contains("486"), "{message}");
    bot.send(BotCommand::Json(
        json!({"event": "action", "name": "hangup"}),
    ));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.assert_no_panic();
}

/// `transfer = "refer_or_bridge"`: the caller's side refuses the REFER
/// (405), so the gateway dials the target itself and bridges; the agent
/// answers and later hangs up, which ends the caller's side too.
#[test]
fn refused_refer_falls_back_to_a_bridge_when_the_flow_says_so() {
    let scratch = scratch_dir("refer-or-bridge");
    let agent_rtp = RtpPeer::bind();
    let agent = Agent::start(
        &scratch,
        "agent",
        &AgentScenario {
            behaviour: Behaviour::Answer {
                rtp_port: agent_rtp.port(),
                hold_ms: 1000,
            },
            challenge: false,
            require: Some("X-Case: 42"),
            formats: &[(0, "PCMU/8000"), (101, "telephone-event/8000")],
        },
        SipTransport::Udp,
    );
    let bot = TwilioBot::start();
    let gateway = GatewayProcess::start(
        "refer-or-bridge",
        &config(&format!("ws://{}/media", bot.addr))
            .replace("transfer = \"refer\"", "transfer = \"refer_or_bridge\""),
    );
    let peer = RtpPeer::bind();
    let after = format!(
        "{}{}",
        ANSWER_REFER.replace("STATUS", "405 Method Not Allowed"),
        ANSWER_BYE
    );
    let scenario = caller_scenario(&sipp::sdp_offer(peer.port(), G711_OFFER), &after)
        .replace("127.0.0.1:5090", &agent.addr.to_string());
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    bot.wait_event("start", |_| true, Duration::from_secs(10));
    let twiml = format!(
        "<Response><Dial><Sip>sip:desk@{}?X-Case=42</Sip></Dial></Response>",
        agent.addr
    );
    bot.send(BotCommand::Json(
        json!({"event": "action", "name": "twiml", "body": twiml}),
    ));
    sipp::assert_success(&agent.join(), &scratch.join("agent"));
    sipp::assert_success(&caller.join().unwrap(), &gateway.dir);
    gateway.wait_for_log(&["transfer: bridged"], Duration::from_secs(2));
    bot.wait_event("stop", |_| true, Duration::from_secs(3));
    gateway.assert_no_panic();
}
