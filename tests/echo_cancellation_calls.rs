//! Echo cancellation through the real binary: the caller is a speakerphone
//! that plays the bot's voice back into its microphone 40 ms later at
//! -6 dB. With `echo_cancellation` on, the bot hears far less of itself.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::audio::{rms, speech_like};
use common::gateway::{config_with, GatewayProcess};
use common::rtp_peer::RtpPeer;
use common::sipp::{self, G711_OFFER};
use common::ws_bot::{from_s16le, s16le, Received, WsBot};
use switchboard_media::g711::{ulaw_decode, ulaw_encode};

const ECHO_DELAY: Duration = Duration::from_millis(40);
const FRAME: Duration = Duration::from_millis(20);

/// Energy (dBFS) of what the bot heard from the caller over the last 3 s
/// of 6 s of its own speech echoed back.
fn bot_hears_its_echo(echo_cancellation: bool) -> f64 {
    let ws = WsBot::start();
    let config = config_with(&format!(
        r#"
[[trunks]]
name = "loopback"
allow = ["127.0.0.1"]
routes = [{{ pattern = ".*", flow = "speaker" }}]

[[flows]]
name = "speaker"
bot = {{ kind = "websocket", url = "ws://{}/bot", sample_rate = 8000 }}
audio = {{ echo_cancellation = {echo_cancellation} }}
"#,
        ws.addr
    ));
    let gateway = GatewayProcess::start("aec", &config);
    let peer = Arc::new(RtpPeer::bind());
    let scenario = sipp::caller_hangs_up("100", &sipp::sdp_offer(peer.port(), G711_OFFER), 8000);
    let caller = sipp::spawn_udp_call(&gateway, scenario);
    ws.wait_text("event", "start", Duration::from_secs(10));
    let gateway_rtp = peer
        .wait_first_packet(Duration::from_secs(10))
        .expect("answered");

    // The speakerphone: what the caller gets comes back 40 ms later, halved,
    // as the caller's own stream. Like a phone, it plays and records on one
    // steady clock: packet k goes out 40 ms + k × 20 ms after the first one
    // arrived, whenever packet k itself arrived, so the echo's delay does
    // not wander with this thread's or the gateway's scheduling (a wandering
    // delay makes any canceller re-converge, and the test flaky).
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let (peer, stop) = (peer.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut next = 0usize;
            let mut sequence = 0u16;
            let mut clock: Option<Instant> = None;
            while !stop.load(Ordering::Relaxed) {
                let received = peer.received();
                while let Some(packet) = received.get(next) {
                    next += 1;
                    if packet.payload_type != 0 {
                        continue;
                    }
                    let start = *clock.get_or_insert(packet.at);
                    let due = start + ECHO_DELAY + FRAME * u32::from(sequence);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let mut datagram = vec![0x80, 0];
                    datagram.extend_from_slice(&sequence.to_be_bytes());
                    datagram.extend_from_slice(&(160 * u32::from(sequence)).to_be_bytes());
                    datagram.extend_from_slice(&0xec40u32.to_be_bytes());
                    datagram.extend(
                        packet
                            .payload
                            .iter()
                            .map(|b| ulaw_encode(ulaw_decode(*b) / 2)),
                    );
                    peer.send_raw(&datagram, gateway_rtp);
                    sequence = sequence.wrapping_add(1);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    // The bot talks for 6 s.
    ws.send_binary(s16le(&speech_like(48_000)));
    std::thread::sleep(Duration::from_millis(6500));
    stop.store(true, Ordering::Relaxed);
    echo.join().unwrap();
    let heard: Vec<i16> = {
        let log = ws.log.lock().unwrap();
        let bytes: Vec<u8> = log
            .messages
            .iter()
            .filter_map(|(_, m)| match m {
                Received::Binary(data) => Some(data.clone()),
                Received::Text(_) => None,
            })
            .flatten()
            .collect();
        from_s16le(&bytes)
    };
    let output = caller.join().unwrap();
    sipp::assert_success(&output, &gateway.dir);
    gateway.assert_no_panic();
    // Seconds 3 to 6 of the bot's speech, after the canceller converged.
    assert!(heard.len() >= 6 * 8000, "bot got {} samples", heard.len());
    let tail = &heard[3 * 8000..6 * 8000];
    20.0 * (rms(tail).max(1.0) / 32768.0).log10()
}

#[test]
fn echo_cancellation_removes_the_bots_voice_from_a_speakerphone() {
    let without = bot_hears_its_echo(false);
    let with = bot_hears_its_echo(true);
    eprintln!("bot hears its echo at {without:.1} dBFS without AEC, {with:.1} dBFS with");
    assert!(without > -30.0, "the echo path works: {without:.1} dBFS");
    assert!(
        without - with >= 20.0,
        "only {:.1} dB less echo",
        without - with
    );
}
