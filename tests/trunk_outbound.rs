//! Phone numbers leave through a trunk's outbound side: a registered user
//! dials +14155550100 and Twilio's enhanced-TwiML template flow sends it
//! to the carrier (a sipp UAS that challenges) with the caller ID from
//! From; the Calls API places a call to an E.164 `To` the same way.

mod common;

use std::time::Duration;

use common::agent::{check_proxy_authorization, Agent, AgentScenario, Behaviour};
use common::api::{api_addr, twilio_request};
use common::gateway::{config_with, scratch_dir, GatewayProcess};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, SipTransport, G711_OFFER};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "token-0123456789abcdef";

fn config(carrier: std::net::SocketAddr) -> String {
    config_with(&format!(
        r#"
[api]
listen = "127.0.0.1:0"
account_sid = "{ACCOUNT}"
auth_token = "{TOKEN}"

[dial]
allow = ['^sip:\+1\d{{10}}@127\.0\.0\.1[:;]']

[[trunks]]
name = "carrier"
allow = ["192.0.2.1"]
outbound = {{ proxy = "sip:{carrier}", username = "agent", password = "s3cret", from_domain = "carrier.test" }}

[[users]]
username = "14155550199"
password = "pw-0199"
flow = "pstn"

[[flows]]
name = "pstn"
twiml = '<Response><Dial callerId="{{{{#e164}}}}{{{{From}}}}{{{{/e164}}}}">{{{{#e164}}}}{{{{To}}}}{{{{/e164}}}}</Dial></Response>'

[[flows]]
name = "echo"
bot = {{ kind = "echo", delay_ms = 100, sample_rate = 8000 }}
"#
    ))
}

fn carrier(dir: &std::path::Path, rtp: &RtpPeer, require: &'static str) -> Agent {
    Agent::start(
        dir,
        "carrier",
        &AgentScenario {
            behaviour: Behaviour::AnswerAndWait {
                rtp_port: rtp.port(),
            },
            challenge: true,
            require: Some(require),
            formats: &[(0, "PCMU/8000")],
        },
        SipTransport::Udp,
    )
}

#[test]
fn a_registered_user_dials_a_number_through_the_template_flow_and_trunk() {
    let dir = scratch_dir("trunk-template");
    let carrier_rtp = RtpPeer::bind();
    let carrier = carrier(
        &dir,
        &carrier_rtp,
        r"From: .sip:\+14155550199@carrier\.test.*To: .sip:\+14155550100@127\.0\.0\.1",
    );
    let gateway = GatewayProcess::start("trunk-template", &config(carrier.addr));
    let caller_rtp = RtpPeer::bind();
    let scenario = sipp::caller_with_digest(
        "+14155550100",
        &sipp::sdp_offer(caller_rtp.port(), &G711_OFFER[..1]),
        ("14155550199", "pw-0199"),
    );
    let output = sipp::run(
        &gateway.dir,
        "caller",
        &scenario,
        gateway.udp,
        SipTransport::Udp,
        "127.0.0.1",
    );
    sipp::assert_success(&output, &gateway.dir);
    // The carrier challenged and got the trunk's credentials.
    check_proxy_authorization(&carrier.messages());
    sipp::assert_success(&carrier.join(), &dir.join("carrier"));
    gateway.wait_for_log(&["transfer: bridged"], Duration::from_secs(1));
    gateway.assert_no_panic();
}

#[test]
fn the_calls_api_calls_a_phone_number_through_the_trunk() {
    let dir = scratch_dir("trunk-api");
    let carrier_rtp = RtpPeer::bind();
    let carrier = carrier(
        &dir,
        &carrier_rtp,
        r"From: .sip:\+15550100@carrier\.test.*To: .sip:\+14155550100@127\.0\.0\.1",
    );
    let gateway = GatewayProcess::start("trunk-api", &config(carrier.addr));
    let api = api_addr(&gateway);
    let calls = format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json");
    let (status, call) = twilio_request(
        api,
        "POST",
        &calls,
        "To=%2B1%20415%20555%200100&From=%2B15550100&Flow=echo",
        (ACCOUNT, TOKEN),
    );
    assert_eq!(status, 201, "{call}");
    carrier_rtp
        .wait_first_packet(Duration::from_secs(10))
        .expect("the echo flow's media reaches the carrier");
    let path = format!(
        "/2010-04-01/Accounts/{ACCOUNT}/Calls/{}.json",
        call["sid"].as_str().unwrap()
    );
    let (status, _) = twilio_request(api, "POST", &path, "Status=completed", (ACCOUNT, TOKEN));
    assert_eq!(status, 200);
    check_proxy_authorization(&carrier.messages());
    sipp::assert_success(&carrier.join(), &dir.join("carrier"));
    gateway.assert_no_panic();
}

/// The same with a real softphone: baresip registers as 14155550199 and
/// dials +14155550100; the carrier sees the number and the caller ID.
#[test]
fn a_registered_baresip_dials_a_number_out_through_the_trunk() {
    use common::baresip::{voice_like, Baresip, Wav, PCMU};
    let dir = scratch_dir("trunk-baresip");
    let carrier_rtp = RtpPeer::bind();
    let carrier = carrier(
        &dir,
        &carrier_rtp,
        r"From: .sip:\+14155550199@carrier\.test.*To: .sip:\+14155550100@127\.0\.0\.1",
    );
    let gateway = GatewayProcess::start("trunk-baresip", &config(carrier.addr));
    let mic = gateway.dir.join("mic.wav");
    Wav {
        rate: 8000,
        channels: 1,
        samples: voice_like(8000, 8 * 8000),
    }
    .write(&mic);
    let target = format!("sip:+14155550100@{}", gateway.udp);
    let mut phone = Baresip::registered(
        &gateway.dir,
        "phone",
        &PCMU,
        &mic,
        gateway.udp,
        "14155550199",
        "pw-0199",
        "manual",
        Some(&target),
        6,
    );
    gateway.wait_for_log(&["transfer: bridged"], Duration::from_secs(10));
    carrier_rtp
        .wait_first_packet(Duration::from_secs(3))
        .expect("the phone's audio reaches the carrier");
    let _ = phone.wait(Duration::from_secs(20));
    assert!(phone.log().contains("Call established"), "{}", phone.log());
    check_proxy_authorization(&carrier.messages());
    sipp::assert_success(&carrier.join(), &dir.join("carrier"));
    gateway.assert_no_panic();
}
