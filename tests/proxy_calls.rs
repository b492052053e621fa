//! Calls through a record-routing proxy (Kamailio): our 200 OK copies the
//! INVITE's Record-Route, so the dialog's requests in both directions keep
//! the proxy on their path. Before that fix the gateway's BYE skipped the
//! route set and Kamailio answered it 404.

mod common;

use std::time::Duration;

use common::gateway::{config_with, GatewayProcess};
use common::kamailio::Kamailio;
use common::rtp_peer::RtpPeer;
use common::sipp::{self, SipTransport, G711_OFFER};
use common::twilio_bot::TwilioBot;
use serde_json::json;

/// Kamailio as a plain record-routing proxy in front of the gateway.
fn proxy_routing(gateway: std::net::SocketAddr) -> String {
    format!(
        r#"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"
loadmodule "textops.so"
loadmodule "pv.so"

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (is_method("OPTIONS") && uri == myself) {{
        sl_send_reply("200", "OK");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) {{
                t_relay();
            }}
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    record_route();
    $du = "sip:{gateway}";
    t_relay();
}}
"#
    )
}

const INVITE: &str = r#"  <send retrans="500">
    <![CDATA[
      INVITE sip:+12125550100@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:+12125550100@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

SDP
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="200" rrs="true">
    <action>
      <ereg regexp="Record-Route: &lt;sip:127.0.0.1" search_in="msg" check_it="true" assign_to="recorded"/>
      <log message="record-routed: [$recorded]"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"#;

fn scenario(sdp: &str, then: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n<scenario name=\"via proxy\">\n{}{then}</scenario>\n",
        INVITE.replace("SDP", sdp)
    )
}

const CALLER_HANGS_UP: &str = r#"  <pause milliseconds="1500"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
"#;

const GATEWAY_HANGS_UP: &str = r#"  <recv request="BYE" timeout="20000"/>
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

fn config(bot: &TwilioBot) -> String {
    config_with(&format!(
        r#"
[[trunks]]
name = "proxy"
allow = ["127.0.0.1"]
routes = [{{ pattern = '^\+1\d{{10}}$', flow = "bot" }}]

[[flows]]
name = "bot"
bot = {{ kind = "twilio_stream", url = "ws://{}/media" }}
"#,
        bot.addr
    ))
}

#[test]
fn the_gateways_bye_follows_the_proxys_record_route() {
    let bot = TwilioBot::start();
    let gateway = GatewayProcess::start("proxy-gateway-bye", &config(&bot));
    let kamailio = Kamailio::start(&gateway.dir, &proxy_routing(gateway.udp));
    let peer = RtpPeer::bind();
    let scenario = scenario(&sipp::sdp_offer(peer.port(), G711_OFFER), GATEWAY_HANGS_UP);
    let dir = gateway.dir.clone();
    let target = kamailio.addr;
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
    bot.wait_event("start", |_| true, Duration::from_secs(10));
    bot.send(common::twilio_bot::BotCommand::Json(
        json!({"event": "action", "name": "hangup", "body": {"reason": "done"}}),
    ));
    let output = caller.join().unwrap();
    if !output.status.success() {
        eprintln!("kamailio:\n{}", kamailio.log());
    }
    sipp::assert_success(&output, &gateway.dir);
    gateway.wait_for_log(&["call ended", "bot hung up: done"], Duration::from_secs(5));
    assert!(
        !kamailio.log().contains("Not here"),
        "kamailio refused an in-dialog request:\n{}",
        kamailio.log()
    );
    gateway.assert_no_panic();
}

#[test]
fn the_callers_bye_reaches_the_gateway_through_the_proxy() {
    let bot = TwilioBot::start();
    let gateway = GatewayProcess::start("proxy-caller-bye", &config(&bot));
    let kamailio = Kamailio::start(&gateway.dir, &proxy_routing(gateway.udp));
    let peer = RtpPeer::bind();
    let scenario = scenario(&sipp::sdp_offer(peer.port(), G711_OFFER), CALLER_HANGS_UP);
    let output = sipp::run(
        &gateway.dir,
        "call",
        &scenario,
        kamailio.addr,
        SipTransport::Udp,
        "127.0.0.1",
    );
    sipp::assert_success(&output, &gateway.dir);
    gateway.wait_for_log(&["call ended", "caller hung up"], Duration::from_secs(5));
    bot.wait_event("stop", |_| true, Duration::from_secs(3));
    gateway.assert_no_panic();
}
