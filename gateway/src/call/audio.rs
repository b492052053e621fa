//! Who hears whom, every packet and every 20 ms: the caller's pipeline
//! feeds the bot (unless muted) or, in a transcoded bridge, the party's
//! pipeline; a relayed bridge forwards packets between the two sockets;
//! ringback fills the silence while a transfer rings.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchboard_connectors::BotControl;
use switchboard_media::tone::{Cadence, ToneGenerator};
use switchboard_media::AudioFrame;

use super::dial::Ringback;
use super::media::{FRAME, SEND_SLACK};
use super::secure_io::{send_rtcp, send_rtp};
use super::session::Call;
use super::transfer::Transfer;

/// How long a talkspurt's send waits for a bot frame that is late, before
/// the caller gets a silent frame instead.
const SEND_HOLD: Duration = Duration::from_millis(10);
/// How early a 20 ms send may go out with another wake-up rather than wait
/// for its own: well inside any receiver's jitter buffer.
const PIGGYBACK: Duration = Duration::from_millis(5);
/// A send schedule this far behind (a stalled task) restarts from now.
const MAX_TICK_BEHIND: Duration = Duration::from_millis(60);

impl Call {
    pub(super) fn on_caller_rtp(&mut self, packet: &mut [u8], from: SocketAddr, now: Instant) {
        if !self.relaying() {
            if let Some(pipeline) = &mut self.caller_media.pipeline {
                pipeline.on_datagram(packet, from, now);
            }
            if !self.transcoding() {
                self.pull_caller(now, true);
            }
            return;
        }
        let hangup_on_star = self
            .transfer
            .as_ref()
            .is_some_and(|t| t.target.hangup_on_star);
        let Some(media) = self.transfer.as_mut().and_then(Transfer::media_mut) else {
            return;
        };
        let (send, star) = media.relay_from_caller(packet, now);
        if send {
            if let Some(to) = media.remote {
                send_rtp(media.sockets.rtp(), media.srtp.as_mut(), packet, to);
            }
        }
        if star && hangup_on_star {
            self.star_hang_up();
        }
    }

    pub(super) fn on_agent_rtp(&mut self, packet: &mut [u8], from: SocketAddr, now: Instant) {
        let Some(media) = self.transfer.as_mut().and_then(Transfer::media_mut) else {
            return;
        };
        let Some(relayed) = media.relay_from_agent(packet, from, now) else {
            return;
        };
        let caller = &mut self.caller_media;
        let to = caller.pipeline.as_ref().and_then(|p| p.remote());
        if let (Some(to), Some(socket)) = (to, caller.sockets.as_ref().map(|s| s.rtp())) {
            send_rtp(socket, caller.srtp.as_mut(), relayed, to);
        }
    }

    /// A key the caller pressed (RFC 4733 through the pipeline, or INFO).
    pub(super) fn on_caller_digit(&mut self, digit: char) {
        if self.on_gather_digit(digit) {
            return;
        }
        if let Some(transfer) = &mut self.transfer {
            if transfer.is_bridged() {
                if digit == '*' && transfer.target.hangup_on_star {
                    return self.star_hang_up();
                }
                if let Some(agent) = transfer.media_mut().and_then(|m| m.pipeline_mut()) {
                    let _ = agent.send_digits(&digit.to_string());
                }
                return;
            }
        }
        if let Some(bot) = self.bot.as_mut().filter(|bot| !bot.muted) {
            bot.tell(BotControl::Dtmf(digit));
        }
    }

    /// Media runs on the 20 ms schedule: the caller's pipeline, or a
    /// transcoded party's. A relayed bridge has nothing to do every 20 ms:
    /// packets wake it.
    pub(super) fn media_ticking(&self) -> bool {
        !self.relaying()
            && (self.caller_media.is_running()
                || self.transfer.as_ref().is_some_and(|t| t.media().is_some()))
    }

    /// Runs the 20 ms tick when it is due, or due within [`PIGGYBACK`] of
    /// a wake-up the call has anyway (a caller packet, bot audio) when what
    /// it sends is ready: one wake-up instead of two, the packet a moment
    /// early. The schedule itself stays where it was.
    pub(super) fn tick_if_due(&mut self, now: Instant) {
        if !self.media_ticking() || self.tick_due > now + PIGGYBACK {
            return;
        }
        if self.tick_due > now && !self.can_send_early() {
            return;
        }
        let mut due = self.tick_due;
        if now > due + MAX_TICK_BEHIND {
            // A stalled task starts again from now rather than burst.
            due = now;
        }
        self.tick_due = due + FRAME;
        self.on_tick(now, due);
    }

    /// Sending early changes nothing the caller hears: a whole frame of bot
    /// audio is queued, or the bot is quiet and silence goes out. Not while
    /// a talkspurt's next frame is late (the send waits for it), nor in a
    /// transcoded bridge, whose tick clocks the party too.
    fn can_send_early(&self) -> bool {
        !self.transcoding()
            && self
                .caller_media
                .pipeline
                .as_ref()
                .is_some_and(|p| p.can_send_early())
    }

    /// `due` is when the schedule wanted this tick; `now` may be a moment
    /// before (a send riding on another wake-up) or after.
    fn on_tick(&mut self, now: Instant, due: Instant) {
        let bridged = self.transfer.as_ref().is_some_and(Transfer::is_bridged);
        let relaying = self.relaying();
        let mut digits = [None::<char>; 4];
        if let Some(due) = self.send_held.take() {
            // The held send's own tick: silence now, then back on schedule.
            if let Some(pipeline) = self.caller_media.pipeline.as_mut() {
                pipeline.stop_holding();
            }
            if !relaying {
                self.send_caller(now, &mut digits);
            }
            self.tick_due = due + FRAME;
            self.on_digits(digits);
            return;
        }
        // What the gateway itself plays to the caller (ringback, a clip, a
        // transcoded party's audio) goes into the pacer before this tick's
        // send, so it leaves now rather than a tick later.
        if self.transcoding() {
            self.pull_caller_on_tick(now);
        }
        self.tick_ringback(now);
        self.tick_play();
        self.tick_agent(now);
        let hold = !relaying
            && self
                .caller_media
                .pipeline
                .as_mut()
                .is_some_and(|p| p.hold_for_audio());
        if hold {
            self.send_held = Some(due);
            self.tick_due = now + SEND_HOLD;
        } else if !relaying {
            let advance = self.send_caller(now, &mut digits);
            // The bot's frames keep arriving well before their send: send
            // sooner. Never while bridged, as the tick also clocks the party.
            if let (Some(advance), false) = (advance, bridged) {
                self.tick_due = due + FRAME.saturating_sub(advance);
            }
        }
        self.on_digits(digits);
        self.check_rtp_timeouts(now, relaying);
    }

    /// The caller's frame due now, if any, to the bot or the party. Called
    /// after each caller packet (`arrival`) and when its schedule is due.
    pub(super) fn pull_caller(&mut self, now: Instant, arrival: bool) {
        let Some(pipeline) = self.caller_media.pipeline.as_mut() else {
            return;
        };
        let frame = if arrival {
            pipeline.pull_on_arrival(now)
        } else {
            pipeline.poll_pull(now)
        };
        if let Some(frame) = frame {
            self.route_caller_frame(frame, now);
        }
    }

    /// A transcoded bridge's tick: the caller's frame goes into the party's
    /// pacer just before the party's send on the same tick.
    fn pull_caller_on_tick(&mut self, now: Instant) {
        let frame = self
            .caller_media
            .pipeline
            .as_mut()
            .and_then(|p| p.pull_on_tick(now));
        if let Some(frame) = frame {
            self.route_caller_frame(frame, now);
        }
    }

    /// The caller's audio to the bot, or to the party when bridged.
    fn route_caller_frame(&mut self, frame: AudioFrame, now: Instant) {
        let Call {
            caller_media,
            bot,
            transfer,
            ..
        } = self;
        let Some(pipeline) = caller_media.pipeline.as_mut() else {
            return;
        };
        let bridged = transfer.as_ref().is_some_and(Transfer::is_bridged);
        let agent = transfer
            .as_mut()
            .filter(|_| bridged)
            .and_then(Transfer::media_mut)
            .and_then(|m| m.pipeline_mut());
        match (agent, bot.as_mut().filter(|b| !b.muted)) {
            (Some(agent), _) => {
                agent.push_bot_audio(&frame, now);
            }
            (None, Some(bot)) => {
                if !bot.link.send_audio(&frame, now) {
                    pipeline.note_dropped_to_bot();
                }
            }
            (None, None) => {}
        }
    }

    /// When the caller's next frame is due without a packet arriving.
    pub(super) fn caller_pull_deadline(&self) -> Option<Instant> {
        if self.relaying() || self.transcoding() {
            return None;
        }
        self.caller_media.pipeline.as_ref()?.next_pull()
    }

    /// Bridged with RTP relayed untouched: the caller's pipeline is idle.
    fn relaying(&self) -> bool {
        self.transfer.as_ref().is_some_and(Transfer::is_relaying)
    }

    /// Bridged through both pipelines, which the tick clocks together.
    fn transcoding(&self) -> bool {
        self.transfer
            .as_ref()
            .filter(|t| t.is_bridged())
            .and_then(Transfer::media)
            .is_some_and(|m| m.is_transcode())
    }

    /// Bot audio for the caller; a talkspurt starting goes out at once and
    /// the caller's 20 ms send schedule restarts from it.
    pub(super) fn play_bot_audio(&mut self, frame: &AudioFrame) {
        let Some(pipeline) = self.caller_media.pipeline.as_mut() else {
            return;
        };
        let now = Instant::now();
        if !pipeline.push_bot_audio(frame, now) {
            return;
        }
        self.send_held = None;
        let mut digits = [None::<char>; 4];
        self.send_caller(now, &mut digits);
        self.tick_due = now + FRAME + SEND_SLACK;
        self.on_digits(digits);
    }

    fn on_digits(&mut self, digits: [Option<char>; 4]) {
        for digit in digits.into_iter().flatten() {
            tracing::info!(%digit, "DTMF (RFC 4733)");
            self.on_caller_digit(digit);
        }
    }

    /// The caller's 20 ms towards it: bot (or party) audio or silence, RTCP,
    /// marks played, digits received. Returns how much sooner than 20 ms
    /// the next send should come, if the bot's frames wait too long.
    fn send_caller(&mut self, now: Instant, digits: &mut [Option<char>; 4]) -> Option<Duration> {
        let Call {
            caller_media,
            bot,
            info,
            ..
        } = self;
        let pipeline = caller_media.pipeline.as_mut()?;
        let sent = pipeline.send(now, &mut caller_media.rtp_out[..]);
        if let (true, Some(recorder)) = (sent.recorded, caller_media.recorder.as_mut()) {
            recorder.push(pipeline.recorded_frame());
        }
        let (rtp, rtcp) = caller_media.sockets.as_ref().map(|s| (s.rtp(), s.rtcp()))?;
        if let Some((len, to)) = sent.rtp {
            send_rtp(
                rtp,
                caller_media.srtp.as_mut(),
                &caller_media.rtp_out[..len],
                to,
            );
        }
        if let Some((len, to, mux)) = pipeline.poll_rtcp(now, &mut caller_media.rtcp_out[..]) {
            let from = if mux { rtp } else { rtcp };
            send_rtcp(
                from,
                caller_media.srtp.as_mut(),
                &caller_media.rtcp_out[..len],
                to,
            );
        }
        info.playout.set_played_ms(pipeline.played_ms());
        for slot in digits.iter_mut() {
            *slot = pipeline.poll_digit();
        }
        while let Some(mark) = pipeline.poll_mark() {
            if let Some(bot) = bot.as_mut() {
                bot.tell(BotControl::MarkPlayed(mark));
            }
        }
        sent.advance
    }

    /// While the party rings without early media, the caller hears
    /// ringback once the bot's last words have played.
    fn tick_ringback(&mut self, _now: Instant) {
        let ringback = self
            .transfer
            .as_ref()
            .filter(|t| t.is_ringing() && t.media().is_some_and(|m| m.path.is_none()))
            .map(|t| t.ringback);
        let media = &mut self.caller_media;
        let Some(ringback) = ringback else {
            media.ringback = None;
            return;
        };
        let Some(pipeline) = media.pipeline.as_mut() else {
            return;
        };
        if !pipeline.playout_idle() {
            return;
        }
        if media.ringback.is_none() {
            let cadence = match ringback {
                Ringback::Us => Cadence::US_RINGBACK,
                Ringback::Eu => Cadence::EU_RINGBACK,
                Ringback::Uk => Cadence::UK_RINGBACK,
                Ringback::None => return,
            };
            media.ringback = Some(ToneGenerator::new(cadence, pipeline.codec().sample_rate()));
        }
        let Some(tone) = media.ringback.as_mut() else {
            return;
        };
        let n = pipeline.frame_samples();
        let mut frame = [0i16; switchboard_media::MAX_FRAME_SAMPLES];
        tone.fill(&mut frame[..n]);
        pipeline.push_codec_audio(&frame[..n]);
    }

    /// The party's 20 ms when transcoding: its audio to the caller's
    /// pipeline, the caller's (queued by `tick_caller`) out to it.
    fn tick_agent(&mut self, now: Instant) {
        let Call {
            caller_media,
            transfer,
            ..
        } = self;
        let Some(media) = transfer.as_mut().and_then(Transfer::media_mut) else {
            return;
        };
        let remote = media.remote;
        let rtp_socket = media.sockets.rtp();
        let rtcp_socket = media.sockets.rtcp();
        let out = &mut media.rtp_out;
        let rtcp_out = &mut media.rtcp_out;
        let srtp = &mut media.srtp;
        let Some(agent) = (match &mut media.path {
            Some(super::bridge::MediaPath::Transcode(pipeline)) => Some(pipeline),
            _ => None,
        }) else {
            return;
        };
        let tick = agent.tick(now, &mut out[..]);
        if let (Some(frame), Some(caller)) = (tick.to_bot, caller_media.pipeline.as_mut()) {
            // The party's audio already comes on this tick: nothing to gain
            // from sending it early.
            let _ = caller.push_bot_audio(&frame, now);
        }
        if let (Some((len, to)), Some(_)) = (tick.rtp, remote) {
            send_rtp(rtp_socket, srtp.as_mut(), &out[..len], to);
        }
        if let Some((len, to, mux)) = agent.poll_rtcp(now, &mut rtcp_out[..]) {
            let from = if mux { rtp_socket } else { rtcp_socket };
            send_rtcp(from, srtp.as_mut(), &rtcp_out[..len], to);
        }
        while let Some(digit) = agent.poll_digit() {
            if let Some(caller) = caller_media.pipeline.as_mut() {
                let _ = caller.send_digits(&digit.to_string());
            }
        }
    }

    /// Nobody sends media for `rtp_timeout`: the call is dead.
    pub(super) fn check_rtp_timeouts(&mut self, now: Instant, relaying: bool) {
        let timeout = self.shared.media.rtp_timeout;
        let started = self.caller_media.answered_at.unwrap_or(now);
        let caller_last = if relaying {
            self.transfer
                .as_ref()
                .and_then(Transfer::media)
                .and_then(|m| m.relay_last_from_caller())
        } else {
            self.caller_media
                .pipeline
                .as_ref()
                .and_then(|p| p.last_packet())
        };
        if self.caller_media.pipeline.is_some()
            && now.duration_since(caller_last.unwrap_or(started).max(started)) >= timeout
        {
            tracing::info!(
                timeout_secs = timeout.as_secs(),
                "no RTP from the caller: hanging up"
            );
            return self.end("rtp timeout");
        }
        let Some(transfer) = self.transfer.as_ref().filter(|t| t.is_bridged()) else {
            return;
        };
        let Some(media) = transfer.media() else {
            return;
        };
        let agent_last = media
            .last_packet
            .or_else(|| media.pipeline_last_packet())
            .unwrap_or(started);
        let since = match &transfer.stage {
            super::transfer::Stage::Bridged { since, .. } => since.into_std(),
            _ => now,
        };
        if now.duration_since(agent_last.max(since)) >= timeout {
            tracing::info!(
                timeout_secs = timeout.as_secs(),
                "no RTP from the transferred party: hanging up"
            );
            self.end("rtp timeout (transferred party)");
        }
    }
}
