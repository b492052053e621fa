//! The caller's side of a call: its offer, RTP sockets and media pipeline,
//! the answer (or our offer when its INVITE had none), re-INVITEs, SIP INFO
//! key presses, and the media summary when the call ends.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use switchboard_media::sdp::{
    build_media_answer, build_media_offer, build_secure_media_offer, negotiate_media,
    CodecPreferences, Direction, NegotiatedMedia, SessionOffer,
};
use switchboard_media::srtp::SrtpContext;
use tokio::net::UdpSocket;

use super::leg::{EndReason, LegEvent, LegState};
use super::media::MediaPipeline;
use super::ports::RtpSockets;
use super::recording::Recorder;
use super::registry::CallStatus;
use super::session::{Call, JobOutput};
use crate::sip::message::Request;

/// A call's media towards the caller.
pub(super) struct CallerMedia {
    ip: IpAddr,
    pub(super) sockets: Option<RtpSockets>,
    port: u16,
    /// The caller's offer; `None` for a delayed offer (we offer in the 200).
    offer: Option<SessionOffer>,
    pub(super) negotiated: Option<NegotiatedMedia>,
    /// Our side of the agreed session, repeated (with a new version) to
    /// re-INVITEs.
    answer: Option<String>,
    session_id: u64,
    version: u64,
    pub(super) pipeline: Option<MediaPipeline>,
    ticking: bool,
    pub(super) recorder: Option<Recorder>,
    pub(super) answered_at: Option<Instant>,
    /// The rate the pipeline exchanges audio at with the bot or party.
    pipeline_rate: u32,
    /// Ringback while a transfer rings.
    pub(super) ringback: Option<switchboard_media::tone::ToneGenerator>,
    pub(super) rtp_out: Box<[u8; 1500]>,
    pub(super) rtcp_out: Box<[u8; 256]>,
    /// Keys when the caller's media is SRTP (RTP/SAVP with `a=crypto`).
    pub(super) srtp: Option<SrtpContext>,
    /// Our SDES keys when we offered SRTP (a placed call to a
    /// `;secure=true` target).
    offered_keys: Vec<switchboard_media::srtp::CryptoAttribute>,
}

impl CallerMedia {
    pub(super) fn new(ip: IpAddr) -> Self {
        CallerMedia {
            ip,
            sockets: None,
            port: 0,
            offer: None,
            negotiated: None,
            answer: None,
            session_id: rand::random::<u32>() as u64,
            version: 1,
            pipeline: None,
            ticking: false,
            recorder: None,
            answered_at: None,
            pipeline_rate: 8000,
            ringback: None,
            rtp_out: Box::new([0; 1500]),
            rtcp_out: Box::new([0; 256]),
            srtp: None,
            offered_keys: Vec::new(),
        }
    }

    pub(super) fn pipeline_rate(&self) -> u32 {
        self.pipeline_rate
    }

    pub(super) fn sockets(&self) -> Option<(&UdpSocket, &UdpSocket)> {
        self.sockets.as_ref().map(|s| (s.rtp(), s.rtcp()))
    }

    pub(super) fn is_running(&self) -> bool {
        self.ticking && self.pipeline.is_some()
    }

    pub(super) fn stop_ticking(&mut self) {
        self.ticking = false;
    }

    pub(super) fn on_rtcp(&mut self, datagram: &[u8], from: SocketAddr, now: std::time::Instant) {
        if let Some(pipeline) = &mut self.pipeline {
            pipeline.on_rtcp_datagram(datagram, from, now);
        }
    }

    /// Our offer for a call we place, on freshly bound RTP sockets; SRTP
    /// only when `secure`.
    pub(super) fn offer_on(
        &mut self,
        sockets: RtpSockets,
        preferences: &CodecPreferences,
        secure: bool,
    ) -> String {
        self.port = sockets.port();
        self.sockets = Some(sockets);
        self.offered_keys = super::secure_io::offer_keys(secure);
        build_secure_media_offer(
            preferences,
            self.ip,
            self.port,
            self.session_id,
            self.version,
            &self.offered_keys,
        )
    }

    /// The SDP for our 200 OK: the answer to the caller's offer, or our
    /// offer of every codec when it made none.
    fn sdp_for_answer(&self, preferences: &CodecPreferences) -> String {
        match (&self.offer, &self.negotiated) {
            (Some(offer), Some(negotiated)) => build_media_answer(
                offer,
                negotiated,
                self.ip,
                self.port,
                self.session_id,
                self.version,
            ),
            _ => build_media_offer(
                preferences,
                self.ip,
                self.port,
                self.session_id,
                self.version,
            ),
        }
    }
}

impl Call {
    /// Reads the caller's offer and binds RTP; then the bot starts opening.
    pub(super) fn take_offer(&mut self) {
        let invite = self
            .caller
            .invite()
            .expect("the caller's leg has its INVITE");
        if !invite.body.is_empty() {
            let offer = match parse_offer(invite) {
                Ok(offer) => offer,
                Err(reason) => {
                    tracing::warn!(%reason, "unusable SDP offer: 488");
                    return self.reject(488, format!("rejected 488 ({reason})"));
                }
            };
            match negotiate_media(&offer, &self.shared.media.codecs) {
                Ok(negotiated) => {
                    if let Some(sdes) = &negotiated.srtp {
                        match SrtpContext::new(&sdes.ours, &sdes.theirs) {
                            Ok(srtp) => {
                                tracing::info!(
                                    suite = sdes.ours.suite.name(),
                                    "media is SRTP (SDES)"
                                );
                                self.caller_media.srtp = Some(srtp);
                            }
                            Err(error) => {
                                tracing::warn!(%error, "cannot set up SRTP: 488");
                                return self.reject(488, format!("rejected 488 ({error})"));
                            }
                        }
                    }
                    self.caller_media.negotiated = Some(negotiated);
                    self.caller_media.offer = Some(offer);
                }
                Err(error) => {
                    tracing::warn!(%error, "unusable offer: 488");
                    return self.reject(488, format!("rejected 488 ({error})"));
                }
            }
        }
        match self.shared.rtp_ports.bind(self.local_sip.ip()) {
            Ok(sockets) => {
                self.caller_media.port = sockets.port();
                self.caller_media.sockets = Some(sockets);
            }
            Err(error) => {
                tracing::error!(%error, "no RTP port available: 503");
                return self.reject(503, format!("rejected 503 (RTP ports: {error})"));
            }
        }
        match self.route.destination.clone() {
            crate::routing::Destination::Flow(_) => {
                match (self.flow.webhook.clone(), self.flow.twiml.clone()) {
                    (Some(webhook), _) => self.fetch_twiml(
                        webhook.url.clone(),
                        webhook.method_get(),
                        webhook.fallback_url,
                    ),
                    (None, Some(template)) => self.run_template(&template),
                    (None, None) => self.open_bot(super::bot::OpenPurpose::Initial),
                }
            }
            crate::routing::Destination::User(user) => {
                // No bot: the user's phones ring, and the caller is answered
                // when one of them answers.
                let domain = self
                    .shared
                    .registrar
                    .as_ref()
                    .and_then(|r| r.domains.first().cloned())
                    .unwrap_or_else(|| crate::call::leg::sent_by(self.local_sip));
                let target = switchboard_flows::DialTarget {
                    uri: format!("sip:{user}@{domain}"),
                    ..Default::default()
                };
                self.start_dial(target, super::transfer::Origin::Route);
            }
        }
    }

    /// Refuses the caller's INVITE and ends the call.
    pub(super) fn reject(&mut self, status: u16, reason: String) {
        crate::metrics::call_rejected(status);
        self.resource.set_status(match status {
            486 | 600 => CallStatus::Busy,
            480 | 408 => CallStatus::NoAnswer,
            487 => CallStatus::Canceled,
            _ => CallStatus::Failed,
        });
        self.caller.reject(status, std::time::Instant::now());
        self.end(reason);
    }

    /// Answers the caller with media towards a party at `bot_rate` Hz (the
    /// bot's rate, or the codec's own when bridging straight to a human).
    /// A delayed offer gets our offer now and its media once the ACK answers.
    pub(super) fn answer_caller(&mut self, bot_rate: u32) -> Result<(), String> {
        if self.outbound.is_some() {
            // A call we placed was answered already: its media starts now.
            return self.start_caller_media(bot_rate);
        }
        if self.caller.state() != LegState::Inviting {
            return Ok(());
        }
        let sdp = self.caller_media.sdp_for_answer(&self.shared.media.codecs);
        if self.caller_media.negotiated.is_some() {
            self.start_caller_media(bot_rate)?;
        } else {
            tracing::info!("INVITE without SDP: offering in the 200 OK");
        }
        self.caller_media.answer = Some(sdp.clone());
        self.caller.answer(&sdp);
        self.caller_media.answered_at = Some(Instant::now());
        self.resource.set_status(CallStatus::InProgress);
        crate::metrics::call_answered(&self.flow.name);
        Ok(())
    }

    /// Builds the caller's pipeline once the codec is agreed.
    pub(super) fn start_caller_media(&mut self, bot_rate: u32) -> Result<(), String> {
        if self.caller_media.pipeline.is_some() {
            return Ok(());
        }
        let negotiated = self
            .caller_media
            .negotiated
            .clone()
            .ok_or("no agreed codec")?;
        let media = &self.shared.media;
        let mut pipeline = MediaPipeline::new(
            &negotiated,
            bot_rate,
            media.jitter_depth_ms,
            media.jitter_adaptive,
            &format!("switchboard@{}", self.caller_media.ip),
            audio_settings(self.flow.audio),
        )?;
        if media.suppress_silence {
            pipeline.suppress_silence();
        }
        tracing::info!(
            codec = negotiated.codec.name(),
            rtp_port = self.caller_media.port,
            bot_rate,
            "answered"
        );
        self.caller_media.pipeline = Some(pipeline);
        self.caller_media.pipeline_rate = bot_rate;
        self.caller_media.ticking = true;
        if let Some(recording) = &self.flow.recording {
            let dir = recording.dir.clone();
            let call_id = self.call_id.clone();
            let rate = negotiated.codec.sample_rate();
            self.spawn_job(Box::pin(async move {
                JobOutput::Recorder(
                    Recorder::start(&dir, &call_id, rate)
                        .await
                        .map_err(|e| format!("{}: {e}", dir.display())),
                )
            }));
        }
        Ok(())
    }

    pub(super) fn on_recorder(&mut self, result: Result<Recorder, String>) {
        match result {
            Ok(recorder) if !self.is_ending() => {
                if let Some(pipeline) = &mut self.caller_media.pipeline {
                    pipeline.enable_recording();
                }
                self.caller_media.recorder = Some(recorder);
            }
            Ok(_) => {}
            // The conversation matters more than its recording.
            Err(error) => tracing::warn!(%error, "cannot record this call"),
        }
    }

    pub(super) fn on_caller_event(&mut self, event: LegEvent) {
        match event {
            LegEvent::Acknowledged { sdp } => {
                self.on_caller_ack(sdp);
                if let Some((target, origin)) = self.dial_after_ack.take() {
                    self.start_dial(target, origin);
                }
            }
            LegEvent::Offer { sdp } => self.reanswer(sdp),
            LegEvent::Info { content_type, body } => {
                if let Some(digit) = info_dtmf(&content_type, &body) {
                    tracing::info!(%digit, "DTMF (SIP INFO)");
                    self.on_caller_digit(digit);
                }
            }
            LegEvent::ReferProgress { status } => self.on_refer_progress(status),
            LegEvent::ReferEnded(outcome) => self.on_refer_ended(outcome),
            LegEvent::Ended(reason) => {
                let text = match reason {
                    EndReason::RemoteBye => "caller hung up".to_string(),
                    EndReason::Cancelled => "caller cancelled".to_string(),
                    EndReason::AckTimeout => "our 200 OK was never acknowledged".to_string(),
                    EndReason::Rejected(status) => format!("rejected {status}"),
                    EndReason::LocalBye => "hung up".to_string(),
                };
                self.end(text);
            }
            LegEvent::Progress { .. } | LegEvent::Answered { .. } | LegEvent::Failed(_) => {
                self.on_placed_call_event(event)
            }
            LegEvent::OfferAnswered { .. } | LegEvent::OfferRefused { .. } => {}
        }
    }

    /// The ACK to our 200. After a delayed offer it carries the answer.
    fn on_caller_ack(&mut self, sdp: Option<String>) {
        if self.caller_media.negotiated.is_some() || self.is_ending() {
            return;
        }
        match self.take_answer(sdp) {
            Ok(()) => {
                let rate = self.party_rate();
                if let Err(error) = self.start_caller_media(rate) {
                    tracing::error!(%error, "media pipeline could not start");
                    self.end(format!("media pipeline failed ({error})"));
                }
            }
            Err(reason) => {
                tracing::warn!(%reason, "delayed offer failed: hanging up");
                self.end(reason);
            }
        }
    }

    /// The caller's answer to our offer (in an ACK, or the 200 of a call we
    /// placed): the codec is agreed.
    pub(super) fn take_answer(&mut self, sdp: Option<String>) -> Result<(), String> {
        let preferences = self.shared.media.codecs.clone();
        let (answer, mut negotiated) = sdp
            .ok_or_else(|| "no usable SDP answer".to_string())
            .and_then(|sdp| SessionOffer::parse(&sdp).map_err(|e| e.to_string()))
            .and_then(|answer| {
                negotiate_media(&answer, &preferences)
                    .map(|n| (answer, n))
                    .map_err(|e| format!("the answer has no codec we offered: {e}"))
            })?;
        let media = &mut self.caller_media;
        let keys = super::secure_io::answered_keys(
            &media.offered_keys,
            media.negotiated.as_ref(),
            &mut negotiated,
        )?;
        if let Some(srtp) = keys {
            media.srtp = Some(srtp);
        }
        let ours = build_media_answer(
            &answer,
            &negotiated,
            self.caller_media.ip,
            self.caller_media.port,
            self.caller_media.session_id,
            self.caller_media.version,
        );
        self.caller_media.answer = Some(ours);
        self.caller_media.negotiated = Some(negotiated);
        Ok(())
    }

    /// The rate audio is exchanged at with whoever the caller talks to.
    pub(super) fn party_rate(&self) -> u32 {
        match &self.bot {
            Some(bot) => bot.link.audio_format().sample_rate,
            None => self
                .caller_media
                .negotiated
                .as_ref()
                .map(|n| n.codec.sample_rate())
                .unwrap_or(8000),
        }
    }

    /// Answers a re-INVITE/UPDATE without disturbing media: same codec and
    /// port, a new session version, the caller's media address updated.
    fn reanswer(&mut self, sdp: Option<String>) {
        let media = &mut self.caller_media;
        let Some(answer) = media.answer.clone() else {
            // Nothing agreed yet (an offer before the ACK): not now.
            self.caller.reject_offer(491);
            return;
        };
        // A caller putting us on hold (sendonly) gets recvonly back.
        let mut direction = None;
        if let (Some(sdp), Some(negotiated)) = (sdp, media.negotiated.clone()) {
            let offer = match SessionOffer::parse(&sdp) {
                Ok(offer) => offer,
                Err(error) => {
                    tracing::info!(%error, "unusable SDP in a re-INVITE: 488");
                    self.caller.reject_offer(488);
                    return;
                }
            };
            // The call keeps its codec; only where the caller's media goes may change.
            match negotiate_media(&offer, &CodecPreferences::new(&[negotiated.codec])) {
                Ok(updated) if updated.srtp.is_some() != negotiated.srtp.is_some() => {
                    tracing::info!("re-INVITE switches between RTP and SRTP: 488");
                    self.caller.reject_offer(488);
                    return;
                }
                Ok(updated) => {
                    direction = Some(updated.direction);
                    if let Some(pipeline) = &mut media.pipeline {
                        pipeline.update_remote(&updated);
                    }
                    // The caller may re-key (RFC 4568 §7.1.4); our answer,
                    // and so our key, stays the same.
                    if let (Some(old), Some(new)) = (&negotiated.srtp, &updated.srtp) {
                        if old.theirs != new.theirs {
                            match SrtpContext::new(&old.ours, &new.theirs) {
                                Ok(srtp) => media.srtp = Some(srtp),
                                Err(error) => {
                                    tracing::info!(%error, "re-INVITE with unusable keys: 488");
                                    self.caller.reject_offer(488);
                                    return;
                                }
                            }
                            if let Some(current) = &mut media.negotiated {
                                current.srtp = Some(switchboard_media::sdp::Sdes {
                                    ours: old.ours.clone(),
                                    theirs: new.theirs.clone(),
                                });
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::info!(%error, "re-INVITE without our codec: 488");
                    self.caller.reject_offer(488);
                    return;
                }
            }
        }
        media.version += 1;
        let bumped = reanswered(&answer, media.version, direction);
        self.caller.accept_offer(Some(&bumped));
    }

    /// Final RTCP report, recording closed, summary logged and counted.
    pub(super) async fn finish_media(&mut self) {
        let media = &mut self.caller_media;
        let Some(pipeline) = &mut media.pipeline else {
            return;
        };
        let now = std::time::Instant::now();
        if let Some((len, to, mux)) = pipeline.final_rtcp(now, &mut media.rtcp_out[..]) {
            let from = match &media.sockets {
                Some(sockets) if mux => Some(sockets.rtp()),
                Some(sockets) => Some(sockets.rtcp()),
                None => None,
            };
            if let Some(socket) = from {
                super::secure_io::send_rtcp(
                    socket,
                    media.srtp.as_mut(),
                    &media.rtcp_out[..len],
                    to,
                );
            }
        }
        if let Some(recorder) = media.recorder.take() {
            let (path, written, dropped) = recorder.finish().await;
            match written {
                Ok(bytes) => {
                    tracing::info!(path = %path.display(), seconds = bytes / 32_000, dropped, "recording saved")
                }
                Err(error) => tracing::warn!(path = %path.display(), %error, "recording failed"),
            }
        }
        let Some(pipeline) = &mut media.pipeline else {
            return;
        };
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
            jitter_delay_ms = jitter.depth_ms,
            talkspurts_sent_early = counters.talkspurts_sent_early,
            standing_silence_skipped = counters.standing_silence_skipped,
            jitter_skipped = jitter.dropped,
            jitter_inserted = jitter.inserted,
            "media summary"
        );
        let seconds = media
            .answered_at
            .map(|at| at.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        crate::metrics::call_media(&self.flow.name, seconds, &rtcp, &jitter, &counters);
    }
}

pub(super) fn parse_offer(request: &Request) -> Result<SessionOffer, String> {
    if request.body.is_empty() {
        return Err(format!("{} without SDP", request.method));
    }
    let text = std::str::from_utf8(&request.body).map_err(|_| "SDP is not UTF-8".to_string())?;
    SessionOffer::parse(text).map_err(|e| e.to_string())
}

/// Same SDP with the `o=` session version raised, as RFC 3264 §8 requires
/// for a changed or repeated answer within the session.
/// Our first answer again, with `version` in its `o=` line and, when
/// given, `direction` in place of its direction attribute.
fn reanswered(answer: &str, version: u64, direction: Option<Direction>) -> String {
    answer
        .split_inclusive('\n')
        .map(|line| {
            if let Some(direction) = direction {
                let attribute = line.trim_end().strip_prefix("a=");
                if matches!(
                    attribute,
                    Some("sendrecv" | "sendonly" | "recvonly" | "inactive")
                ) {
                    return format!("a={}\r\n", direction.as_str());
                }
            }
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
fn info_dtmf(content_type: &str, body: &[u8]) -> Option<char> {
    let body = std::str::from_utf8(body).ok()?;
    let value = match content_type {
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

#[cfg(test)]
mod tests {
    #[test]
    fn info_digits() {
        assert_eq!(
            super::info_dtmf("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n"),
            Some('5')
        );
        assert_eq!(
            super::info_dtmf("application/dtmf-relay", b"Signal=10"),
            Some('*')
        );
        assert_eq!(super::info_dtmf("application/dtmf", b"#"), Some('#'));
        assert_eq!(super::info_dtmf("text/plain", b"5"), None);
        assert_eq!(super::info_dtmf("application/dtmf", b"55"), None);
    }
}
