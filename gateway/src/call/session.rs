//! One inbound call from INVITE to the end of both legs: offer/answer, bot
//! session, the media loop, and hang-up from whichever side ends first.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use switchboard_connectors::{
    BotConnector, BotControl, BotEvent, BotSession, CallInfo, ConnectorError, PlayoutClock,
};
use switchboard_flows::{Action, FlowConfig, OnFailure};
use switchboard_media::sdp::{
    build_media_answer, negotiate_media, CodecPreferences, NegotiatedMedia, SessionOffer,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use super::media::MediaPipeline;
use super::recording::Recorder;

/// A replacement bot session being opened while the call goes on.
type Reopening = Pin<Box<dyn Future<Output = Result<BotSession, ConnectorError>> + Send>>;
use super::{CallInput, EndpointCommand, RtpPorts};
use crate::endpoint::MediaSettings;
use crate::routing::RouteMatch;
use crate::sip::dialog::Dialog;
use crate::sip::message::{Method, Request};
use crate::sip::response::{default_reason, new_tag, response_for};
use crate::sip::transaction::{Peer, ServerTxId, Transport};
use crate::sip::uri::SipUri;

/// Codecs we answer with, in our order of preference.
/// Longest wait for the BYE's response before the call is released anyway.
const BYE_WAIT: Duration = Duration::from_secs(5);

pub struct CallSetup {
    pub call_id: String,
    pub tx: ServerTxId,
    pub invite: Request,
    pub peer: Peer,
    pub route: RouteMatch,
    pub flow: Arc<FlowConfig>,
    pub connector: Arc<dyn BotConnector>,
    /// Our SIP address on the transport the INVITE came in on.
    pub local_sip: SocketAddr,
    pub media: MediaSettings,
    pub rtp_ports: Arc<RtpPorts>,
    pub endpoint: mpsc::Sender<EndpointCommand>,
    pub inputs: mpsc::Receiver<CallInput>,
}

/// Runs the call to its end, inside a span carrying its identity.
pub async fn run_call(setup: CallSetup) {
    let from = setup
        .invite
        .from()
        .ok()
        .map(|from| {
            from.uri
                .user
                .clone()
                .unwrap_or_else(|| from.uri.to_string())
        })
        .unwrap_or_default();
    let span = tracing::info_span!(
        "call",
        call_id = %setup.call_id,
        from = %from,
        to = %setup.route.number,
        flow = %setup.flow.name,
    );
    let endpoint = setup.endpoint.clone();
    let call_id = setup.call_id.clone();
    async move {
        let reason = Call::run(setup, from).await;
        tracing::info!(reason = %reason, "call ended");
    }
    .instrument(span)
    .await;
    let _ = endpoint.send(EndpointCommand::CallEnded { call_id }).await;
}

mod delayed_offer;

struct Call {
    setup: CallSetup,
    local_tag: String,
    contact: SipUri,
}

impl Call {
    async fn run(setup: CallSetup, from: String) -> String {
        let contact = contact_uri(&setup);
        let mut call = Call {
            setup,
            local_tag: new_tag(),
            contact,
        };
        tracing::info!(peer = %call.setup.peer.addr, trunk = %call.setup.route.trunk, "incoming call");

        // An INVITE without a body is a delayed offer (RFC 3261 §13.2.1,
        // the default of some PBX trunks): we offer in the 200 OK and the
        // caller answers in its ACK.
        let offered = if call.setup.invite.body.is_empty() {
            None
        } else {
            let offer = match parse_offer(&call.setup.invite) {
                Ok(offer) => offer,
                Err(reason) => {
                    tracing::warn!(%reason, "unusable SDP offer: 488");
                    call.reject(488).await;
                    return format!("rejected 488 ({reason})");
                }
            };
            match negotiate_media(&offer, &call.setup.media.codecs) {
                Ok(negotiated) => Some((offer, negotiated)),
                Err(error) => {
                    tracing::warn!(%error, "no common codec: 488");
                    call.reject(488).await;
                    return format!("rejected 488 ({error})");
                }
            }
        };
        let media_ip = call.media_ip();
        let (socket, rtcp_socket) = match call.setup.rtp_ports.bind(call.setup.local_sip.ip()) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::error!(%error, "no RTP port available: 503");
                call.reject(503).await;
                return format!("rejected 503 (RTP ports: {error})");
            }
        };
        let rtp_port = socket.local_addr().map(|a| a.port()).unwrap_or(0);

        let info = CallInfo {
            call_id: call.setup.call_id.clone(),
            from,
            to: call.setup.route.number.clone(),
            flow: call.setup.flow.name.clone(),
            parameters: call.setup.flow.parameters.clone(),
            x_headers: call
                .setup
                .invite
                .headers
                .iter()
                .filter(|(name, _)| name.len() > 2 && name[..2].eq_ignore_ascii_case("x-"))
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            playout: Default::default(),
        };
        let playout = info.playout.clone();
        let session = match call.open_bot(&info).await {
            Ok(Some(session)) => session,
            Ok(None) => return "caller cancelled".into(),
            Err(error) => {
                let OnFailure::Hangup(status) = call.setup.flow.on_failure.clone();
                tracing::warn!(flow = %call.setup.flow.name, %error, status, "bot unreachable: on_failure hang-up");
                crate::metrics::bot_failed(&call.setup.flow.name);
                call.reject(status).await;
                return format!("bot failed before answer ({error})");
            }
        };

        let mut dialog = match Dialog::new_uas(&call.setup.invite, call.local_tag.clone()) {
            Ok(dialog) => dialog,
            Err(error) => {
                tracing::warn!(%error, "cannot form a dialog from the INVITE: 400");
                call.reject(400).await;
                return format!("rejected 400 ({error})");
            }
        };
        let session_id = rand::random::<u32>() as u64;
        let delayed = offered.is_none();
        let (negotiated, answer) = match offered {
            Some((offer, negotiated)) => {
                let answer =
                    build_media_answer(&offer, &negotiated, media_ip, rtp_port, session_id, 1);
                (negotiated, answer)
            }
            None => match call
                .delayed_offer(&mut dialog, media_ip, rtp_port, session_id)
                .await
            {
                Ok(agreed) => agreed,
                Err(reason) => return reason,
            },
        };

        let mut pipeline = match MediaPipeline::new(
            &negotiated,
            session.audio_format.sample_rate,
            call.setup.media.jitter_depth_ms,
            call.setup.media.jitter_adaptive,
            &format!("switchboard@{media_ip}"),
            audio_settings(call.setup.flow.audio),
        ) {
            Ok(pipeline) => pipeline,
            Err(error) => {
                tracing::error!(%error, "media pipeline could not start");
                if delayed {
                    call.send_bye(&mut dialog).await;
                } else {
                    call.reject(500).await;
                }
                return format!("media pipeline failed ({error})");
            }
        };
        if call.setup.media.suppress_silence {
            pipeline.suppress_silence();
        }
        if !delayed {
            call.answer(&answer).await;
        }
        crate::metrics::call_answered(&call.setup.flow.name);
        tracing::info!(
            codec = negotiated.codec.name(),
            rtp_port,
            bot_rate = session.audio_format.sample_rate,
            "answered"
        );

        let mut recorder = match &call.setup.flow.recording {
            Some(recording) => match Recorder::start(
                &recording.dir,
                &call.setup.call_id,
                pipeline.codec().sample_rate(),
            )
            .await
            {
                Ok(recorder) => {
                    pipeline.enable_recording();
                    Some(recorder)
                }
                Err(error) => {
                    // The conversation matters more than its recording.
                    tracing::warn!(dir = %recording.dir.display(), %error, "cannot record this call");
                    None
                }
            },
            None => None,
        };
        let answered_at = std::time::Instant::now();
        let ending = call
            .media_loop(
                &info,
                &playout,
                &mut dialog,
                &mut pipeline,
                socket,
                rtcp_socket,
                &mut recorder,
                session,
                negotiated,
                &answer,
            )
            .await;
        if let Some(recorder) = recorder {
            let (path, written, dropped) = recorder.finish().await;
            match written {
                Ok(bytes) => {
                    tracing::info!(path = %path.display(), seconds = bytes / 32_000, dropped, "recording saved")
                }
                Err(error) => tracing::warn!(path = %path.display(), %error, "recording failed"),
            }
        }
        if let Some(aec) = pipeline.aec_stats() {
            tracing::info!(
                erle_db = aec.erle_db,
                echo_delay_ms = aec.delay_median_ms,
                echo_detected = aec.echo_detected,
                "audio processing summary"
            );
        }
        let counters = pipeline.counters();
        let jitter = pipeline.jitter_stats();
        let rtcp = pipeline.rtcp_stats();
        let round = |v: f64| (v * 10.0).round() / 10.0;
        tracing::info!(
            loss_pct = round(rtcp.loss_ratio * 100.0),
            jitter_ms = round(rtcp.jitter_ms),
            remote_loss_pct = rtcp.remote_loss_ratio.map(|v| round(v * 100.0)),
            remote_jitter_ms = rtcp.remote_jitter_ms.map(round),
            rtt_ms = rtcp.rtt_ms.map(round),
            rtcp_sent = rtcp.reports_sent,
            rtcp_received = rtcp.reports_received,
            rtp_in = counters.rtp_in,
            rtp_out = counters.rtp_out,
            ignored_in = counters.ignored_in,
            frames_to_bot = counters.frames_to_bot,
            dropped_to_bot = counters.frames_dropped_to_bot,
            codec = pipeline.codec().name(),
            lost = jitter.lost,
            late = jitter.late,
            duplicate = jitter.duplicate,
            concealed_ms = jitter.concealed_ms,
            fec_recovered = counters.fec_recovered,
            jitter_target_ms = jitter.target_ms,
            jitter_skipped = jitter.dropped,
            jitter_inserted = jitter.inserted,
            "media summary"
        );
        crate::metrics::call_media(
            &call.setup.flow.name,
            answered_at.elapsed().as_secs_f64(),
            &rtcp,
            &jitter,
            &counters,
        );
        ending
    }

    fn media_ip(&self) -> IpAddr {
        self.setup
            .media
            .public_ip
            .unwrap_or(self.setup.local_sip.ip())
    }

    /// Opens the bot while watching for the caller giving up.
    async fn open_bot(&mut self, info: &CallInfo) -> Result<Option<BotSession>, String> {
        let connector = self.setup.connector.clone();
        let open = connector.open(info);
        tokio::pin!(open);
        loop {
            tokio::select! {
                result = &mut open => return result.map(Some).map_err(|e| e.to_string()),
                input = self.setup.inputs.recv() => match input {
                    Some(CallInput::Cancelled) | Some(CallInput::Shutdown) | None => {
                        self.reject(487).await;
                        return Ok(None);
                    }
                    Some(CallInput::Request { tx, request }) => {
                        let response = response_for(&request, 491, default_reason(491), Some(&self.local_tag));
                        self.send(EndpointCommand::Respond { tx, response }).await;
                    }
                    Some(_) => {}
                },
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn media_loop(
        &mut self,
        info: &CallInfo,
        playout: &PlayoutClock,
        dialog: &mut Dialog,
        pipeline: &mut MediaPipeline,
        socket: UdpSocket,
        rtcp_socket: UdpSocket,
        recorder: &mut Option<Recorder>,
        mut session: BotSession,
        negotiated: NegotiatedMedia,
        answer: &str,
    ) -> String {
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut datagram = [0u8; 2048];
        let mut rtp_out = [0u8; 1500];
        let mut rtcp_datagram = [0u8; 1500];
        let mut rtcp_out = [0u8; 256];
        let answered_at = Instant::now();
        let rtp_timeout = self.setup.media.rtp_timeout;
        let mut session_version = 1u64;
        let mut reconnects_left = u32::from(self.setup.flow.reconnect_once);
        // A replacement bot session being opened; the call carries on meanwhile.
        let mut reopening: Option<Reopening> = None;
        let mut caller_hung_up = false;
        let reason = loop {
            tokio::select! {
                received = socket.recv_from(&mut datagram) => {
                    if let Ok((len, from)) = received {
                        pipeline.on_datagram(&datagram[..len], from, std::time::Instant::now());
                    }
                }
                received = rtcp_socket.recv_from(&mut rtcp_datagram) => {
                    if let Ok((len, from)) = received {
                        pipeline.on_rtcp_datagram(&rtcp_datagram[..len], from, std::time::Instant::now());
                    }
                }
                _ = ticker.tick() => {
                    let now = std::time::Instant::now();
                    let tick = pipeline.tick(now, &mut rtp_out);
                    if let Some(frame) = tick.to_bot {
                        if session.audio_in.try_send(frame).is_err() {
                            pipeline.note_dropped_to_bot();
                        }
                    }
                    if let (true, Some(recorder)) = (tick.recorded, recorder.as_mut()) {
                        recorder.push(pipeline.recorded_frame());
                    }
                    if let Some((len, to)) = tick.rtp {
                        let _ = socket.try_send_to(&rtp_out[..len], to);
                    }
                    if let Some((len, to, mux)) = pipeline.poll_rtcp(now, &mut rtcp_out) {
                        let from = if mux { &socket } else { &rtcp_socket };
                        let _ = from.try_send_to(&rtcp_out[..len], to);
                    }
                    playout.set_played_ms(pipeline.played_ms());
                    while let Some(digit) = pipeline.poll_digit() {
                        tracing::info!(%digit, "DTMF (RFC 4733)");
                        let _ = session.control.try_send(BotControl::Dtmf(digit));
                    }
                    while let Some(mark) = pipeline.poll_mark() {
                        let _ = session.control.try_send(BotControl::MarkPlayed(mark));
                    }
                    let last = pipeline.last_packet().map(Instant::from_std).unwrap_or(answered_at);
                    if last.elapsed() >= rtp_timeout {
                        tracing::info!(timeout_secs = rtp_timeout.as_secs(), "no RTP from the caller: hanging up");
                        break "rtp timeout".to_string();
                    }
                }
                reopened = async { reopening.as_mut().expect("guarded").await }, if reopening.is_some() => {
                    reopening = None;
                    match reopened {
                        Ok(new_session) if new_session.audio_format == session.audio_format => {
                            tracing::info!(flow = %self.setup.flow.name, "bot session reopened");
                            session = new_session;
                        }
                        Ok(_) => break "bot failed: the reopened session changed its audio format".to_string(),
                        Err(error) => {
                            let OnFailure::Hangup(status) = self.setup.flow.on_failure.clone();
                            tracing::warn!(flow = %self.setup.flow.name, %error, status, "bot could not be reopened: on_failure hang-up");
                            break format!("bot failed: {error}");
                        }
                    }
                }
                event = session.events.recv(), if reopening.is_none() => match event {
                    Some(BotEvent::Audio(frame)) => pipeline.push_bot_audio(&frame),
                    Some(BotEvent::Clear) => pipeline.clear(),
                    Some(BotEvent::Mark(name)) => pipeline.push_mark(name),
                    Some(BotEvent::Transcript { role, text }) => tracing::info!(%role, %text, "transcript"),
                    Some(BotEvent::Action(Action::Hangup { reason })) => {
                        let _ = session.control.try_send(BotControl::ActionResult {
                            action: "hangup".into(),
                            ok: true,
                            message: "hanging up".into(),
                        });
                        break format!("bot hung up{}", reason.map(|r| format!(": {r}")).unwrap_or_default());
                    }
                    Some(BotEvent::Action(Action::SendDtmf { digits })) => {
                        let (ok, message) = match pipeline.send_digits(&digits) {
                            Ok(count) => (true, format!("sending {count} digits")),
                            Err(reason) => (false, reason),
                        };
                        tracing::info!(%digits, ok, %message, "bot sends DTMF");
                        let _ = session.control.try_send(BotControl::ActionResult {
                            action: "dtmf".into(),
                            ok,
                            message,
                        });
                    }
                    Some(BotEvent::Action(action)) => {
                        // Transfers (B2BUA dial, REFER), DTMF sending and
                        // redirects arrive with the call-control work; the
                        // bot is told so it can carry on the conversation.
                        tracing::info!(action = action.kind(), ?action, "bot asked for an action that is not available yet");
                        let _ = session.control.try_send(BotControl::ActionResult {
                            action: action.kind().to_string(),
                            ok: false,
                            message: format!("{} is not available yet on this gateway", action.kind()),
                        });
                    }
                    Some(BotEvent::Hangup { reason }) => {
                        break format!("bot hung up{}", reason.map(|r| format!(": {r}")).unwrap_or_default());
                    }
                    Some(BotEvent::Closed { error: None }) | None => break "bot closed the session".to_string(),
                    Some(BotEvent::Closed { error: Some(error) }) if reconnects_left > 0 => {
                        reconnects_left -= 1;
                        tracing::warn!(flow = %self.setup.flow.name, %error, "bot failed mid-call: reconnecting once");
                        // What the failed session queued belongs to a conversation that is gone.
                        pipeline.clear();
                        let connector = self.setup.connector.clone();
                        let info = info.clone();
                        reopening = Some(Box::pin(async move { connector.open(&info).await }));
                    }
                    Some(BotEvent::Closed { error: Some(error) }) => {
                        let OnFailure::Hangup(status) = self.setup.flow.on_failure.clone();
                        tracing::warn!(flow = %self.setup.flow.name, %error, status, "bot failed mid-call: on_failure hang-up");
                        break format!("bot failed: {error}");
                    }
                },
                input = self.setup.inputs.recv() => match input {
                    Some(CallInput::Request { tx, request }) => {
                        if let Err(error) = dialog.handle_request(&request) {
                            let response = response_for(&request, 500, "Server Internal Error", None);
                            tracing::info!(%error, method = %request.method, "in-dialog request refused");
                            self.send(EndpointCommand::Respond { tx, response }).await;
                            continue;
                        }
                        match request.method {
                            Method::Bye => {
                                let response = response_for(&request, 200, "OK", None);
                                self.send(EndpointCommand::Respond { tx, response }).await;
                                caller_hung_up = true;
                                break "caller hung up".into();
                            }
                            Method::Invite | Method::Update => {
                                session_version += 1;
                                let body = self.reanswer(&request, pipeline, &negotiated, answer, session_version);
                                let mut response = response_for(&request, 200, "OK", None);
                                response.headers.push("Contact", &format!("<{}>", self.contact));
                                if let Some(body) = body {
                                    response.headers.push("Content-Type", "application/sdp");
                                    response.body = body.into_bytes();
                                }
                                self.send(EndpointCommand::Respond { tx, response }).await;
                            }
                            Method::Info => {
                                // SIP INFO DTMF: the fallback for phones that
                                // do not send RFC 4733 events.
                                if let Some(digit) = info_dtmf(&request) {
                                    tracing::info!(%digit, "DTMF (SIP INFO)");
                                    let _ = session.control.try_send(BotControl::Dtmf(digit));
                                }
                                let response = response_for(&request, 200, "OK", None);
                                self.send(EndpointCommand::Respond { tx, response }).await;
                            }
                            _ => {
                                let response = response_for(&request, 200, "OK", None);
                                self.send(EndpointCommand::Respond { tx, response }).await;
                            }
                        }
                    }
                    Some(CallInput::Ack(_)) => {}
                    Some(CallInput::AckTimeout) => break "our 200 OK was never acknowledged".into(),
                    Some(CallInput::Shutdown) | None => break "gateway shutting down".into(),
                    Some(_) => {}
                },
            }
        };
        let _ = session.control.try_send(BotControl::Hangup);
        drop(session);
        if let Some((len, to, mux)) = pipeline.final_rtcp(std::time::Instant::now(), &mut rtcp_out)
        {
            let from = if mux { &socket } else { &rtcp_socket };
            let _ = from.try_send_to(&rtcp_out[..len], to);
        }
        if !caller_hung_up {
            self.send_bye(dialog).await;
        }
        reason
    }

    /// Answers a re-INVITE/UPDATE without disturbing media: same codec and
    /// port, new session version, remote address updated.
    fn reanswer(
        &self,
        request: &Request,
        pipeline: &mut MediaPipeline,
        negotiated: &NegotiatedMedia,
        answer: &str,
        version: u64,
    ) -> Option<String> {
        if request.body.is_empty() {
            return Some(bump_version(answer, version));
        }
        let offer = parse_offer(request).ok()?;
        // The call keeps its codec; only where the caller's media goes may change.
        let updated = negotiate_media(&offer, &CodecPreferences::new(&[negotiated.codec])).ok()?;
        pipeline.update_remote(&updated);
        Some(bump_version(answer, version))
    }

    async fn send_bye(&mut self, dialog: &mut Dialog) {
        let sent_by = match self.setup.local_sip {
            SocketAddr::V4(addr) => addr.to_string(),
            SocketAddr::V6(addr) => format!("[{}]:{}", addr.ip(), addr.port()),
        };
        let bye = dialog.create_request(
            Method::Bye,
            &sent_by,
            &self.setup.peer.transport.to_string(),
            &self.contact,
        );
        let call_id = self.setup.call_id.clone();
        let peer = self.setup.peer;
        self.send(EndpointCommand::SendRequest {
            call_id,
            request: bye,
            peer,
        })
        .await;
        let deadline = Instant::now() + BYE_WAIT;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                input = self.setup.inputs.recv() => match input {
                    Some(CallInput::Response { response, .. }) if response.status >= 200 => return,
                    Some(CallInput::RequestTimeout { .. }) | None => return,
                    Some(CallInput::Request { tx, request }) => {
                        // Crossing BYEs: both sides hung up at once.
                        let response = response_for(&request, 200, "OK", None);
                        self.send(EndpointCommand::Respond { tx, response }).await;
                        if request.method == Method::Bye {
                            return;
                        }
                    }
                    Some(_) => {}
                },
            }
        }
    }

    async fn reject(&mut self, status: u16) {
        crate::metrics::call_rejected(status);
        let response = response_for(
            &self.setup.invite,
            status,
            default_reason(status),
            Some(&self.local_tag),
        );
        self.send(EndpointCommand::Respond {
            tx: self.setup.tx,
            response,
        })
        .await;
    }

    async fn answer(&mut self, sdp: &str) {
        let mut response = response_for(&self.setup.invite, 200, "OK", Some(&self.local_tag));
        response
            .headers
            .push("Contact", &format!("<{}>", self.contact));
        response
            .headers
            .push("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE");
        response.headers.push("Content-Type", "application/sdp");
        response.body = sdp.as_bytes().to_vec();
        self.send(EndpointCommand::Respond {
            tx: self.setup.tx,
            response,
        })
        .await;
    }

    async fn send(&self, command: EndpointCommand) {
        let _ = self.setup.endpoint.send(command).await;
    }
}

fn contact_uri(setup: &CallSetup) -> SipUri {
    let host = setup.media.public_ip.unwrap_or(setup.local_sip.ip());
    let transport = match setup.peer.transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    };
    let text = match host {
        IpAddr::V4(ip) => format!(
            "sip:switchboard@{ip}:{};transport={transport}",
            setup.local_sip.port()
        ),
        IpAddr::V6(ip) => format!(
            "sip:switchboard@[{ip}]:{};transport={transport}",
            setup.local_sip.port()
        ),
    };
    SipUri::parse(&text).expect("a contact built from an IP and port parses")
}

fn parse_offer(request: &Request) -> Result<SessionOffer, String> {
    if request.body.is_empty() {
        return Err(format!("{} without SDP", request.method));
    }
    let text = std::str::from_utf8(&request.body).map_err(|_| "SDP is not UTF-8".to_string())?;
    SessionOffer::parse(text).map_err(|e| e.to_string())
}

/// Same answer with the `o=` session version raised, as RFC 3264 §8 requires
/// for a changed or repeated answer within the session.
fn bump_version(answer: &str, version: u64) -> String {
    answer
        .split_inclusive('\n')
        .map(|line| {
            if let Some(rest) = line.strip_prefix("o=") {
                let mut fields: Vec<&str> = rest.trim_end().split(' ').collect();
                if fields.len() >= 3 {
                    let version = version.to_string();
                    fields[2] = &version;
                    return format!("o={}\r\n", fields.join(" "));
                }
            }
            line.to_string()
        })
        .collect()
}

/// The digit of an INFO carrying `application/dtmf-relay` (`Signal=5`) or
/// `application/dtmf` (the digit alone).
fn info_dtmf(request: &Request) -> Option<char> {
    let content_type = request
        .headers
        .get("Content-Type")?
        .trim()
        .to_ascii_lowercase();
    let body = std::str::from_utf8(&request.body).ok()?;
    let value = match content_type.as_str() {
        "application/dtmf-relay" => body.lines().find_map(|line| {
            let (key, value) = line.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("signal")
                .then(|| value.trim())
        })?,
        "application/dtmf" => body.trim(),
        _ => return None,
    };
    let digit = match value {
        "10" => '*',
        "11" => '#',
        other if other.chars().count() == 1 => other.chars().next()?.to_ascii_uppercase(),
        _ => return None,
    };
    matches!(digit, '0'..='9' | '*' | '#' | 'A'..='D').then_some(digit)
}

fn audio_settings(audio: switchboard_flows::AudioConfig) -> switchboard_media::aec::AudioSettings {
    switchboard_media::aec::AudioSettings {
        echo_cancellation: audio.echo_cancellation,
        noise_suppression: audio.noise_suppression,
        gain_control: audio.gain_control,
    }
}
