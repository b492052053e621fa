//! Media between the caller and a party we dialed. When both legs agreed
//! on the same codec, RTP is relayed without decoding: headers rewritten in
//! place so each side keeps seeing one continuous stream from us, RFC 4733
//! events passed through with their payload types mapped. When the codecs
//! differ, the party's audio runs through a second pipeline (jitter buffer,
//! decode, resample to the caller's pipeline rate) and the two pipelines
//! feed each other every 20 ms. Recording needs decoded audio, so a
//! recorded call is always transcoded.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use switchboard_media::dtmf::DtmfReceiver;
use switchboard_media::rtp::RtpPacket;
use switchboard_media::sdp::{
    build_media_answer, build_secure_media_offer, negotiate_media, CodecPreferences,
    NegotiatedMedia, SessionOffer,
};
use switchboard_media::srtp::{CryptoAttribute, SrtpContext};

use super::ports::RtpSockets;
use super::secure_io::{answered_keys, offer_keys};
use switchboard_media::{Codec, RtpRewriter};

use super::media::MediaPipeline;

/// How the party's audio reaches the caller and back.
pub(super) enum MediaPath {
    Relay(Relay),
    Transcode(Box<MediaPipeline>),
}

pub(super) struct Relay {
    pub(super) to_caller: RtpRewriter,
    pub(super) to_agent: RtpRewriter,
    /// The caller's RFC 4733 payload type, to watch for `*`.
    caller_events: Option<u8>,
    caller_digits: DtmfReceiver,
    pub(super) last_from_caller: Option<Instant>,
}

/// The party's RTP sockets, what it agreed to, and the path audio takes.
pub(super) struct AgentMedia {
    pub(super) sockets: RtpSockets,
    ip: IpAddr,
    port: u16,
    session_id: u64,
    /// Our SDP's `o=` version: raised with each answer to a re-INVITE.
    session_version: u64,
    /// What we offered, best first: the caller's codec leads, so a relay
    /// is possible whenever the party takes it.
    pub(super) preferences: CodecPreferences,
    pub(super) negotiated: Option<NegotiatedMedia>,
    /// Where the party's RTP comes from (symmetric RTP), else its SDP.
    pub(super) remote: Option<SocketAddr>,
    pub(super) path: Option<MediaPath>,
    pub(super) last_packet: Option<Instant>,
    pub(super) rtp_out: Box<[u8; 1500]>,
    pub(super) rtcp_out: Box<[u8; 256]>,
    /// Our SDES keys, one per suite, when the dial asked for SRTP.
    offered_keys: Vec<CryptoAttribute>,
    /// Keys once the party's answer picked one of ours.
    pub(super) srtp: Option<SrtpContext>,
}

impl AgentMedia {
    pub(super) fn new(
        sockets: RtpSockets,
        ip: IpAddr,
        caller_codec: Option<Codec>,
        ours: &CodecPreferences,
        secure: bool,
    ) -> AgentMedia {
        let port = sockets.port();
        let mut preferences = ours.clone();
        if let Some(codec) = caller_codec {
            preferences.codecs.retain(|c| *c != codec);
            preferences.codecs.insert(0, codec);
        }
        AgentMedia {
            sockets,
            ip,
            port,
            session_id: rand::random::<u32>() as u64,
            session_version: 1,
            preferences,
            negotiated: None,
            remote: None,
            path: None,
            last_packet: None,
            rtp_out: Box::new([0; 1500]),
            rtcp_out: Box::new([0; 256]),
            offered_keys: offer_keys(secure),
            srtp: None,
        }
    }

    pub(super) fn offer(&self) -> String {
        build_secure_media_offer(
            &self.preferences,
            self.ip,
            self.port,
            self.session_id,
            1,
            &self.offered_keys,
        )
    }

    /// Reads the party's answer (from a 183 or the 200); with SRTP, its
    /// `a=crypto` line must take one of our offered suites, by tag.
    pub(super) fn take_answer(&mut self, sdp: &str) -> Result<&NegotiatedMedia, String> {
        let answer = SessionOffer::parse(sdp).map_err(|e| e.to_string())?;
        let mut negotiated = negotiate_media(&answer, &self.preferences)
            .map_err(|e| format!("the answer has no codec we offered: {e}"))?;
        let keys = answered_keys(
            &self.offered_keys,
            self.negotiated.as_ref(),
            &mut negotiated,
        )?;
        if let Some(srtp) = keys {
            self.srtp = Some(srtp);
        }
        self.remote = negotiated.remote_rtp;
        Ok(self.negotiated.insert(negotiated))
    }

    /// Answers the party's re-INVITE (hold, a new address, a session
    /// refresh) from its offer: the bridge's codec, under the offer's
    /// payload type, with the direction mirrored (sendonly → recvonly), so
    /// the answer holds nothing the offer did not. `Err(488)` when the
    /// offer no longer has that codec. Without an offer, or keyed by SRTP
    /// (its keys stay as agreed), our offer again.
    pub(super) fn reanswer(&mut self, offer: Option<&str>) -> Result<String, u16> {
        let (Some(offer), Some(current)) = (offer, &self.negotiated) else {
            return Ok(self.offer());
        };
        if current.srtp.is_some() {
            return Ok(self.offer());
        }
        let offer = SessionOffer::parse(offer).map_err(|_| 488u16)?;
        let updated = negotiate_media(&offer, &CodecPreferences::new(&[current.codec]))
            .map_err(|_| 488u16)?;
        if updated.srtp.is_some() {
            return Err(488);
        }
        if let Some(remote) = updated.remote_rtp {
            self.remote = Some(remote);
        }
        if let Some(MediaPath::Transcode(pipeline)) = &mut self.path {
            pipeline.update_remote(&updated);
        }
        self.session_version += 1;
        Ok(build_media_answer(
            &offer,
            &updated,
            self.ip,
            self.port,
            self.session_id,
            self.session_version,
        ))
    }

    /// Chooses the path for the party's audio once its codec is known: a
    /// relay when it matches the caller's and nothing needs decoded audio,
    /// else a pipeline at `party_rate` (the caller's pipeline's rate).
    pub(super) fn choose_path(
        &mut self,
        caller: &MediaPipeline,
        recording: bool,
        party_rate: u32,
        jitter: (u32, Option<switchboard_media::jitter::AdaptiveConfig>),
        now: Instant,
    ) -> Result<(), String> {
        let negotiated = self.negotiated.clone().ok_or("no agreed codec")?;
        if negotiated.codec == caller.codec() && !recording {
            let clock = negotiated.codec.rtp_clock_rate();
            let step = negotiated.codec.timestamp_step();
            let (ssrc, sequence, timestamp) = caller.rtp_position();
            let mut to_caller = RtpRewriter::continuing(ssrc, sequence, timestamp, clock, step);
            to_caller.map(negotiated.payload_type, caller.payload_type());
            let mut to_agent = RtpRewriter::random(clock, step);
            to_agent.map(caller.payload_type(), negotiated.payload_type);
            if let (Some(theirs), Some(ours)) =
                (negotiated.telephone_event, caller.telephone_event())
            {
                to_caller.map(theirs, ours);
                to_agent.map(ours, theirs);
            }
            self.path = Some(MediaPath::Relay(Relay {
                to_caller,
                to_agent,
                caller_events: caller.telephone_event(),
                caller_digits: DtmfReceiver::new(),
                last_from_caller: Some(now),
            }));
            tracing::info!(
                codec = negotiated.codec.name(),
                "bridge relays RTP without decoding"
            );
        } else {
            let pipeline = MediaPipeline::new(
                &negotiated,
                party_rate,
                jitter.0,
                jitter.1,
                &format!("switchboard@{}", self.ip),
                Default::default(),
            )?;
            tracing::info!(
                caller = caller.codec().name(),
                party = negotiated.codec.name(),
                "bridge transcodes"
            );
            self.path = Some(MediaPath::Transcode(Box::new(pipeline)));
        }
        Ok(())
    }

    pub(super) fn is_relay(&self) -> bool {
        matches!(self.path, Some(MediaPath::Relay(_)))
    }

    pub(super) fn is_transcode(&self) -> bool {
        matches!(self.path, Some(MediaPath::Transcode(_)))
    }

    pub(super) fn pipeline_mut(&mut self) -> Option<&mut MediaPipeline> {
        match &mut self.path {
            Some(MediaPath::Transcode(pipeline)) => Some(pipeline),
            _ => None,
        }
    }

    /// The caller's stream position after a relay spoke for its pipeline.
    pub(super) fn relay_position(&self, now: Instant) -> Option<(u16, u32)> {
        match &self.path {
            Some(MediaPath::Relay(relay)) => Some(relay.to_caller.position(now)),
            _ => None,
        }
    }

    /// A packet from the party: relayed (rewritten in place; returns the
    /// bytes to send to the caller) or fed to its pipeline.
    pub(super) fn relay_from_agent<'a>(
        &mut self,
        packet: &'a mut [u8],
        from: SocketAddr,
        now: Instant,
    ) -> Option<&'a [u8]> {
        self.remote = Some(from);
        self.last_packet = Some(now);
        match &mut self.path {
            Some(MediaPath::Relay(relay)) => match relay.to_caller.rewrite(packet, now) {
                switchboard_media::Rewritten::Send { .. } => Some(packet),
                switchboard_media::Rewritten::Drop => None,
            },
            Some(MediaPath::Transcode(pipeline)) => {
                pipeline.on_datagram(packet, from, now);
                None
            }
            None => None,
        }
    }

    /// A packet from the caller while relaying: rewritten for the party.
    /// Returns whether to send it, and whether it carried the end of a `*`.
    pub(super) fn relay_from_caller(&mut self, packet: &mut [u8], now: Instant) -> (bool, bool) {
        let Some(MediaPath::Relay(relay)) = &mut self.path else {
            return (false, false);
        };
        relay.last_from_caller = Some(now);
        let mut star = false;
        if let (Some(events), Ok(parsed)) = (relay.caller_events, RtpPacket::parse(packet)) {
            if parsed.payload_type == events {
                if let Some(found) = relay
                    .caller_digits
                    .on_packet(parsed.payload, parsed.timestamp)
                {
                    star = found.digit == '*';
                }
            }
        }
        let send = matches!(
            relay.to_agent.rewrite(packet, now),
            switchboard_media::Rewritten::Send { .. }
        );
        (send, star)
    }

    pub(super) fn pipeline_last_packet(&self) -> Option<Instant> {
        match &self.path {
            Some(MediaPath::Transcode(pipeline)) => pipeline.last_packet(),
            _ => None,
        }
    }

    /// When the caller last sent media through the relay.
    pub(super) fn relay_last_from_caller(&self) -> Option<Instant> {
        match &self.path {
            Some(MediaPath::Relay(relay)) => relay.last_from_caller,
            _ => None,
        }
    }
}
