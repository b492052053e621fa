//! Twilio Media Streams client: the gateway plays Twilio and the bot plays
//! the customer's `<Stream>` server (PROTOCOLS.md §3). Many bot frameworks
//! (Pipecat, Voiceflow-style bridges, …) speak this, so one connector covers them.
//!
//! Beyond Twilio's protocol, bots may send Voiceflow-style actions
//! (`{"event":"action","name":"twiml","body":"<Response>…"}`, see
//! [`crate::actions`]) and are told the outcome with
//! `{"event":"action_result","sequenceNumber":…,"streamSid":…,"name":…,"ok":…,"message":…}`,
//! also sent at once with `ok: false` when the action cannot be understood.
//!
//! The session is a [`PolledBot`], driven by the call's own task
//! ([`crate::polled`] says why). It ends with the call (Hangup or dropped:
//! `stop` and a close frame are sent, and the closing handshake finishes in
//! a small task of its own) or with the bot (close frame, socket error),
//! reported as `Closed`.
//!
//! TLS: `wss://` goes through rustls with the ring provider that
//! [`crate::install_crypto_provider`] installs when the connector is made.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, Engine, GeneralPurpose, GeneralPurposeConfig};
use futures_util::SinkExt;
use rand::Rng;
use serde::{Deserialize, Serialize, Serializer};
use switchboard_flows::TwilioStreamConfig;
use switchboard_media::{AudioFormat, AudioFrame, G711, MAX_FRAME_SAMPLES};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::polled::{poll_socket_session, BotOutput, PolledBot, PolledConnector, SocketSession};
use crate::socket::{worth_logging, Closing, PolledSocket, Socket};
use crate::{BotControl, BotEvent, CallInfo, ConnectorError};

/// The protocol is fixed to 8 kHz μ-law.
pub const SAMPLE_RATE: u32 = 8_000;
/// Bot audio is cut into 20 ms frames so the call's pacer sees ordinary frames.
const BOT_FRAME_SAMPLES: usize = 160;
/// We have no Twilio account: bots only echo it back in logs, so a fixed,
/// obviously fake SID is more honest than a random one.
pub const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";

/// Bots disagree on base64 padding; accept both rather than drop their audio.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Opens Twilio Media Streams sessions to one bot URL.
pub struct TwilioStreamConnector {
    config: TwilioStreamConfig,
}

impl TwilioStreamConnector {
    pub fn new(config: TwilioStreamConfig) -> Self {
        crate::install_crypto_provider();
        Self { config }
    }
}

impl TwilioStreamConnector {
    async fn connect(&self, call: &CallInfo) -> Result<TwilioBot, ConnectorError> {
        let url = &self.config.url;
        let limit = Duration::from_millis(self.config.connect_timeout_ms);
        let mut out = Outgoing::new(call);
        // The greeting is part of "ready for audio", so it shares the budget.
        let ws = match timeout(limit, connect_and_start(url, call, &mut out)).await {
            Err(_) => {
                return Err(ConnectorError::ConnectTimeout {
                    url: url.clone(),
                    timeout_ms: self.config.connect_timeout_ms,
                })
            }
            Ok(Err(reason)) => {
                return Err(ConnectorError::Connect {
                    url: url.clone(),
                    reason,
                })
            }
            Ok(Ok(ws)) => ws,
        };
        tracing::debug!(call_id = %call.call_id, stream_sid = %out.stream_sid, %url, "media stream started");
        Ok(TwilioBot {
            socket: PolledSocket::new(ws),
            output: BotOutput::new(SAMPLE_RATE),
            out,
            payload: Vec::with_capacity(4 * BOT_FRAME_SAMPLES),
            stats: Stats::default(),
        })
    }
}

#[async_trait::async_trait]
impl PolledConnector for TwilioStreamConnector {
    async fn connect_polled(&self, call: &CallInfo) -> Result<Box<dyn PolledBot>, ConnectorError> {
        Ok(Box::new(self.connect(call).await?))
    }
}

async fn connect_and_start(
    url: &str,
    call: &CallInfo,
    out: &mut Outgoing,
) -> Result<Socket, String> {
    // Nagle would hold back 20 ms frames waiting for ACKs: disable it.
    let (mut ws, _response) = tokio_tungstenite::connect_async_with_config(
        url,
        Some(crate::socket::bot_socket_limits()),
        true,
    )
    .await
    .map_err(|e| e.to_string())?;
    let connected =
        serde_json::json!({"event": "connected", "protocol": "Call", "version": "1.0.0"});
    ws.send(Message::text(connected.to_string()))
        .await
        .map_err(|e| format!("sending connected: {e}"))?;
    let start = out.start(&custom_parameters(call));
    ws.send(start)
        .await
        .map_err(|e| format!("sending start: {e}"))?;
    Ok(ws)
}

/// What the bot gets in `start.customParameters`. Gateway facts override the
/// flow's parameters, which override caller-supplied X- headers: a caller
/// must not be able to spoof what the operator configured.
fn custom_parameters(call: &CallInfo) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    for (name, value) in &call.x_headers {
        params.insert(name.clone(), value.clone());
    }
    for (name, value) in &call.parameters {
        params.insert(name.clone(), value.clone());
    }
    params.insert("from".to_owned(), call.from.clone());
    params.insert("to".to_owned(), call.to.clone());
    params.insert("sip_call_id".to_owned(), call.call_id.clone());
    params
}

use switchboard_flows::call_sid;

// ---- messages we send -------------------------------------------------------

/// Twilio writes every counter as a string of digits.
fn as_decimal<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    // collect_str writes straight into serde_json's output: no temporary String.
    serializer.collect_str(value)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Outbound<'a> {
    event: &'static str,
    #[serde(serialize_with = "as_decimal")]
    sequence_number: u64,
    stream_sid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<StartBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    media: Option<MediaBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mark: Option<MarkBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dtmf: Option<DtmfBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<StopBody<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StartBody<'a> {
    stream_sid: &'a str,
    account_sid: &'a str,
    call_sid: &'a str,
    tracks: [&'static str; 1],
    custom_parameters: &'a BTreeMap<String, String>,
    media_format: MediaFormat,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MediaFormat {
    encoding: &'static str,
    sample_rate: u32,
    channels: u8,
}

#[derive(Serialize)]
struct MediaBody<'a> {
    track: &'static str,
    #[serde(serialize_with = "as_decimal")]
    chunk: u64,
    #[serde(serialize_with = "as_decimal")]
    timestamp: u64,
    payload: &'a str,
}

#[derive(Serialize)]
struct MarkBody<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct DtmfBody<'a> {
    track: &'static str,
    digit: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StopBody<'a> {
    account_sid: &'a str,
    call_sid: &'a str,
}

/// Our side of the stream: identifiers, counters and reusable buffers, so a
/// media message costs no allocation except the owned payload tungstenite's
/// `Message` needs (one exact-size copy of the JSON).
struct Outgoing {
    stream_sid: String,
    call_sid: String,
    /// Last sequence number used; Twilio numbers every message after
    /// `connected`, starting with `start` = 1.
    sequence: u64,
    /// Media chunks sent, numbered from 1.
    chunk: u64,
    started: Instant,
    ulaw: [u8; MAX_FRAME_SAMPLES],
    base64: String,
    json: Vec<u8>,
}

impl Outgoing {
    fn new(call: &CallInfo) -> Self {
        Self {
            stream_sid: format!("MZ{:032x}", rand::rng().random::<u128>()),
            call_sid: call_sid(&call.call_id),
            sequence: 0,
            chunk: 0,
            started: Instant::now(),
            ulaw: [0; MAX_FRAME_SAMPLES],
            base64: String::with_capacity(4 * MAX_FRAME_SAMPLES / 3 + 4),
            json: Vec::with_capacity(1024),
        }
    }

    fn next_sequence(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }

    fn start(&mut self, custom_parameters: &BTreeMap<String, String>) -> Message {
        let sequence = self.next_sequence();
        self.started = Instant::now();
        let mut msg = envelope("start", sequence, &self.stream_sid);
        msg.start = Some(StartBody {
            stream_sid: &self.stream_sid,
            account_sid: ACCOUNT_SID,
            call_sid: &self.call_sid,
            tracks: ["inbound"],
            custom_parameters,
            media_format: MediaFormat {
                encoding: "audio/x-mulaw",
                sample_rate: SAMPLE_RATE,
                channels: 1,
            },
        });
        encode(&mut self.json, &msg)
    }

    fn media(&mut self, frame: &AudioFrame) -> Message {
        let sequence = self.next_sequence();
        self.chunk += 1;
        let timestamp = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let n = G711::Pcmu.encode(frame.samples(), &mut self.ulaw);
        self.base64.clear();
        BASE64.encode_string(&self.ulaw[..n], &mut self.base64);
        let mut msg = envelope("media", sequence, &self.stream_sid);
        msg.media = Some(MediaBody {
            track: "inbound",
            chunk: self.chunk,
            timestamp,
            payload: &self.base64,
        });
        encode(&mut self.json, &msg)
    }

    fn mark(&mut self, name: &str) -> Message {
        let sequence = self.next_sequence();
        let mut msg = envelope("mark", sequence, &self.stream_sid);
        msg.mark = Some(MarkBody { name });
        encode(&mut self.json, &msg)
    }

    fn dtmf(&mut self, digit: char) -> Message {
        let sequence = self.next_sequence();
        let mut utf8 = [0u8; 4];
        let digit: &str = digit.encode_utf8(&mut utf8);
        let mut msg = envelope("dtmf", sequence, &self.stream_sid);
        msg.dtmf = Some(DtmfBody {
            track: "inbound_track",
            digit,
        });
        encode(&mut self.json, &msg)
    }

    /// Not Twilio's: the outcome of a bot's action. Rare, so built with `json!`.
    fn action_result(&mut self, name: &str, ok: bool, message: &str) -> Message {
        let sequence = self.next_sequence();
        let msg = serde_json::json!({
            "event": "action_result",
            "sequenceNumber": sequence.to_string(),
            "streamSid": self.stream_sid,
            "name": name,
            "ok": ok,
            "message": message,
        });
        Message::text(msg.to_string())
    }

    fn stop(&mut self) -> Message {
        let sequence = self.next_sequence();
        let mut msg = envelope("stop", sequence, &self.stream_sid);
        msg.stop = Some(StopBody {
            account_sid: ACCOUNT_SID,
            call_sid: &self.call_sid,
        });
        encode(&mut self.json, &msg)
    }
}

/// A message with no body yet. A free function, not a method, so the borrow
/// of `stream_sid` stays disjoint from the `json` buffer being written.
fn envelope<'a>(event: &'static str, sequence_number: u64, stream_sid: &'a str) -> Outbound<'a> {
    Outbound {
        event,
        sequence_number,
        stream_sid,
        start: None,
        media: None,
        mark: None,
        dtmf: None,
        stop: None,
    }
}

/// Serialise into the reused buffer, then copy out the one owned payload a
/// tungstenite `Message` requires.
fn encode(json: &mut Vec<u8>, msg: &Outbound<'_>) -> Message {
    json.clear();
    // Serialising plain structs into a Vec cannot fail.
    serde_json::to_writer(&mut *json, msg).expect("serialising an outbound message");
    // serde_json only writes UTF-8.
    let text = std::str::from_utf8(json).expect("serde_json writes UTF-8");
    Message::text(text)
}

// ---- messages we receive -----------------------------------------------------

/// The fields we use of any bot message; everything else is ignored. Strings
/// borrow from the frame unless they contain escapes.
#[derive(Deserialize)]
struct Inbound<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    media: Option<InboundMedia<'a>>,
    #[serde(borrow, default)]
    mark: Option<InboundMark<'a>>,
}

#[derive(Deserialize)]
struct InboundMedia<'a> {
    #[serde(borrow, default)]
    payload: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct InboundMark<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

/// Things the bot got wrong, counted so a chatty bad bot cannot flood the
/// logs and so a later policy (on_failure for malformed input) can use them.
#[derive(Default, Debug)]
struct Stats {
    malformed: u64,
    bad_base64: u64,
    binary: u64,
    unknown: u64,
    bad_actions: u64,
}

/// One Media Streams session, driven by its call.
struct TwilioBot {
    socket: PolledSocket,
    output: BotOutput,
    out: Outgoing,
    /// Reused for every decoded media payload.
    payload: Vec<u8>,
    stats: Stats,
}

impl TwilioBot {
    /// The call is done with the bot: `stop`, as Twilio sends, a close
    /// frame, and the closing handshake in the background.
    fn hang_up(&mut self) {
        self.end(None);
        if self.socket.is_open() {
            let stop = self.out.stop();
            self.socket.close_in_background(Closing::Ours(Some(stop)));
        }
    }

    /// The actions a bot asks for go to the call; one it got wrong is
    /// answered at once so the bot can carry on.
    fn on_action(&mut self, text: &str) {
        // Already parsed once as `Inbound`, so this is valid JSON.
        let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        match crate::actions::parse_action_message(&value) {
            Ok(actions) => {
                for action in actions {
                    self.output.push(BotEvent::Action(action));
                }
            }
            Err(reason) => {
                self.stats.bad_actions += 1;
                let name = crate::actions::action_name(&value);
                tracing::warn!(action = name, %reason, "refusing an action from the bot");
                let msg = self.out.action_result(name, false, &reason);
                self.socket.send(msg);
            }
        }
    }

    fn malformed(&mut self, what: &str) {
        self.stats.malformed += 1;
        if worth_logging(self.stats.malformed) {
            tracing::warn!(count = self.stats.malformed, "ignoring {what} from the bot");
        }
    }

    /// Bot audio of any length becomes 20 ms frames (the last may be shorter).
    fn on_media(&mut self, payload: &str) {
        self.payload.clear();
        if let Err(e) = BASE64.decode_vec(payload, &mut self.payload) {
            self.stats.bad_base64 += 1;
            if worth_logging(self.stats.bad_base64) {
                tracing::warn!(count = self.stats.bad_base64, error = %e, "ignoring media with bad base64 from the bot");
            }
            return;
        }
        let samples = self.output.audio();
        samples.resize(self.payload.len(), 0);
        G711::Pcmu.decode(&self.payload, samples);
    }
}

impl SocketSession for TwilioBot {
    fn output(&mut self) -> &mut BotOutput {
        &mut self.output
    }

    fn socket(&mut self) -> &mut PolledSocket {
        &mut self.socket
    }

    fn on_text(&mut self, text: &str) {
        let inbound: Inbound<'_> = match serde_json::from_str(text) {
            Ok(inbound) => inbound,
            Err(e) => {
                self.stats.malformed += 1;
                if worth_logging(self.stats.malformed) {
                    tracing::warn!(count = self.stats.malformed, error = %e, "ignoring a malformed message from the bot");
                }
                return;
            }
        };
        match &*inbound.event {
            "media" => {
                let Some(payload) = inbound.media.and_then(|m| m.payload) else {
                    return self.malformed("media without a payload");
                };
                self.on_media(&payload);
            }
            "mark" => {
                let Some(name) = inbound.mark.and_then(|m| m.name) else {
                    return self.malformed("mark without a name");
                };
                self.output.push(BotEvent::Mark(name.into_owned()));
            }
            "clear" => self.output.push(BotEvent::Clear),
            "action" => self.on_action(text),
            other => {
                self.stats.unknown += 1;
                if worth_logging(self.stats.unknown) {
                    tracing::debug!(
                        event = other,
                        count = self.stats.unknown,
                        "ignoring an unknown event from the bot"
                    );
                }
            }
        }
    }

    fn on_binary(&mut self, _data: &[u8]) {
        self.stats.binary += 1;
        if worth_logging(self.stats.binary) {
            tracing::warn!(
                count = self.stats.binary,
                "ignoring a binary message from the bot"
            );
        }
    }

    /// The session is over; `error` says why when it was not a clean end.
    fn end(&mut self, error: Option<String>) {
        let Stats {
            malformed,
            bad_base64,
            binary,
            unknown,
            bad_actions,
        } = self.stats;
        if !self.output.is_ended() {
            tracing::debug!(
                stream_sid = %self.out.stream_sid,
                chunks = self.out.chunk,
                malformed,
                bad_base64,
                binary,
                unknown,
                bad_actions,
                ?error,
                "media stream ended"
            );
        }
        self.output.end(error);
    }
}

impl PolledBot for TwilioBot {
    fn audio_format(&self) -> AudioFormat {
        AudioFormat::new(SAMPLE_RATE)
    }

    fn send_audio(&mut self, frame: &AudioFrame) -> bool {
        if self.output.is_ended() || !self.socket.ready_for_audio() {
            return false;
        }
        let msg = self.out.media(frame);
        self.socket.send_audio(msg);
        true
    }

    fn control(&mut self, control: BotControl) {
        let msg = match control {
            BotControl::Hangup => return self.hang_up(),
            BotControl::MarkPlayed(name) => self.out.mark(&name),
            BotControl::Dtmf(digit) => self.out.dtmf(digit),
            BotControl::ActionResult {
                action,
                ok,
                message,
            } => self.out.action_result(&action, ok, &message),
        };
        self.socket.send(msg);
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<BotEvent> {
        poll_socket_session(self, cx)
    }
}

impl Drop for TwilioBot {
    /// A session dropped without a Hangup still says goodbye to the bot.
    fn drop(&mut self) {
        self.hang_up();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_sid_is_stable_and_shaped() {
        let a = call_sid("abc@10.0.0.1");
        assert_eq!(a, call_sid("abc@10.0.0.1"));
        assert_ne!(a, call_sid("abd@10.0.0.1"));
        assert_eq!(a.len(), 34);
        assert!(a.starts_with("CA"));
        assert!(a[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn custom_parameters_precedence() {
        let mut call = CallInfo {
            call_id: "cid".into(),
            from: "alice".into(),
            to: "100".into(),
            ..CallInfo::default()
        };
        call.parameters.insert("X-Tier".into(), "gold".into());
        call.parameters.insert("from".into(), "spoof".into());
        call.x_headers.push(("X-Tier".into(), "caller".into()));
        call.x_headers.push(("X-Lang".into(), "fr".into()));
        let params = custom_parameters(&call);
        assert_eq!(params["X-Tier"], "gold");
        assert_eq!(params["X-Lang"], "fr");
        assert_eq!(params["from"], "alice");
        assert_eq!(params["sip_call_id"], "cid");
    }

    #[test]
    fn media_message_shape() {
        let mut out = Outgoing::new(&CallInfo::default());
        let _ = out.start(&BTreeMap::new());
        let frame = AudioFrame::from_samples(SAMPLE_RATE, &[0; 160]);
        let Message::Text(text) = out.media(&frame) else {
            panic!("media must be text");
        };
        let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(v["event"], "media");
        assert_eq!(v["sequenceNumber"], "2");
        assert_eq!(v["media"]["chunk"], "1");
        assert_eq!(v["media"]["track"], "inbound");
        assert!(v["media"]["timestamp"].is_string());
        let payload = BASE64
            .decode(v["media"]["payload"].as_str().unwrap())
            .unwrap();
        assert_eq!(payload, vec![0xff; 160]);
    }

    #[test]
    fn action_result_shape() {
        let mut out = Outgoing::new(&CallInfo::default());
        let _ = out.start(&BTreeMap::new());
        let Message::Text(text) = out.action_result("dial", false, "busy \"here\"") else {
            panic!("action_result must be text");
        };
        let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": "action_result", "sequenceNumber": "2",
                "streamSid": out.stream_sid, "name": "dial", "ok": false, "message": "busy \"here\""})
        );
    }
}
