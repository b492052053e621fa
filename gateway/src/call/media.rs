//! The per-call media pipeline, without sockets: RTP in → jitter buffer →
//! decode (G.711, G.722 or Opus) → resample to the bot's rate; bot audio →
//! resample to the codec's rate → pacer → encode → RTP out. The session feeds it packets and a 20 ms
//! tick and does the I/O. All buffers are allocated once per call.
//!
//! The two directions keep their own 20 ms schedules, each aligned to when
//! its audio arrives, so that neither waits for the other's tick: the
//! caller's frames are pulled on a schedule started by the packet that let
//! the jitter buffer play ([`MediaPipeline::pull_on_arrival`],
//! [`MediaPipeline::poll_pull`]), and a bot talkspurt is sent the moment its
//! first audio arrives ([`MediaPipeline::push_bot_audio`] says when).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchboard_media::aec::{AecStats, AudioSettings, EchoCanceller};
use switchboard_media::dtmf::DtmfReceiver;
use switchboard_media::dtmf_send::{DtmfSendError, DtmfSender};
use switchboard_media::jitter::{AdaptiveConfig, JitterBuffer, JitterConfig, Playout, PushOutcome};
use switchboard_media::pacer::{FrameKind, Pacer, PacerEvent};
use switchboard_media::resample::Resampler;
use switchboard_media::rtcp::{RtcpSession, RtcpStats};
use switchboard_media::rtp::{is_rtcp, RtpPacket, RtpSender};
use switchboard_media::sdp::NegotiatedMedia;
use switchboard_media::{
    AudioDecoder, AudioEncoder, AudioFrame, Codec, Concealer, Decoder, Encoder, MAX_FRAME_SAMPLES,
};

use super::recording::{interleave, StereoFrame};

/// Largest encoded frame (an Opus packet's maximum).
const MAX_PAYLOAD: usize = 1275;
/// What the caller heard while a DTMF event replaced the audio.
const SILENCE: [i16; MAX_FRAME_SAMPLES] = [0; MAX_FRAME_SAMPLES];
/// Digits held between two ticks.
const MAX_PENDING_DIGITS: usize = 16;
/// Longest bot audio the pacer holds (bots send whole answers at once).
const MAX_QUEUED_MS: u32 = 120_000;
/// One packet time, in both directions; every codec here sends 20 ms packets.
pub const FRAME: Duration = Duration::from_millis(20);
/// A packet arriving this close before the caller's next frame is due
/// plays it at once: one wake-up instead of two, a millisecond early.
const PULL_EARLY: Duration = Duration::from_millis(1);
/// A frame due with no packet arriving waits this long for one before a
/// wake-up of its own pulls it: the frame due is one the jitter buffer
/// already holds, and the packet that usually comes within a millisecond
/// or two of it then carries the pull (one wake-up per packet, not two).
const PULL_LATE: Duration = Duration::from_millis(2);
/// A schedule this far behind (a stalled task) restarts from now instead
/// of bursting the missed frames to the bot.
const MAX_BEHIND: Duration = Duration::from_millis(60);
/// Sends over which the bot's just-in-time frames are watched: if every one
/// of them waited longer than `SEND_SLACK` in the pacer, the send schedule
/// moves earlier by the shortest wait less the slack.
const PHASE_WINDOW: u32 = 25;
/// How long a just-in-time bot frame should wait for its send: room for
/// the bot's scheduling jitter, and no more.
pub const SEND_SLACK: Duration = Duration::from_millis(2);
/// Sends in a row with a frame queued behind them before the queue counts
/// as standing rather than a bot's burst draining.
const STANDING_SENDS: u32 = 25;
/// Loudest sample of a frame that may be skipped: about -54 dBFS, below
/// what a caller hears over a phone line.
const SILENT_LEVEL: i16 = 64;
/// Caller frames the recording may hold while waiting to be paired with
/// what the caller heard (the directions' schedules differ in phase).
const RECORDING_BACKLOG: usize = 3;

/// Counters for the call's final log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct MediaCounters {
    pub rtp_in: u64,
    pub rtp_out: u64,
    pub ignored_in: u64,
    pub frames_to_bot: u64,
    pub frames_dropped_to_bot: u64,
    pub concealed: u64,
    pub undecodable: u64,
    /// Lost Opus frames rebuilt from the next packet's in-band FEC.
    pub fec_recovered: u64,
    /// Bot talkspurts sent on arrival instead of at the next tick.
    pub talkspurts_sent_early: u64,
    /// Silent bot frames skipped to shorten a standing queue.
    pub standing_silence_skipped: u64,
}

/// Caller frames pulled but not yet written to the recording.
struct CallerBacklog {
    frames: [[i16; MAX_FRAME_SAMPLES]; RECORDING_BACKLOG],
    first: usize,
    len: usize,
}

impl CallerBacklog {
    fn push(&mut self, frame: &[i16]) {
        if self.len == RECORDING_BACKLOG {
            // The oldest frame is dropped rather than the recording drifting.
            self.first = (self.first + 1) % RECORDING_BACKLOG;
            self.len -= 1;
        }
        let slot = &mut self.frames[(self.first + self.len) % RECORDING_BACKLOG];
        slot[..frame.len()].copy_from_slice(frame);
        slot[frame.len()..].fill(0);
        self.len += 1;
    }

    /// The oldest frame, or silence when the caller sent nothing.
    fn pop_into(&mut self, out: &mut [i16]) {
        if self.len == 0 {
            out.fill(0);
            return;
        }
        out.copy_from_slice(&self.frames[self.first][..out.len()]);
        self.first = (self.first + 1) % RECORDING_BACKLOG;
        self.len -= 1;
    }
}

pub struct MediaPipeline {
    codec: Codec,
    decoder: Decoder,
    encoder: Encoder,
    /// Samples per 20 ms at the codec's rate, and RTP clock units per packet.
    frame_samples: usize,
    timestamp_step: u32,
    payload_type: u8,
    telephone_event: Option<u8>,
    jitter: JitterBuffer,
    to_bot: Resampler,
    from_bot: Resampler,
    pacer: Pacer,
    sender: RtpSender,
    /// Where the caller's RTP comes from (symmetric RTP), else the SDP address.
    remote: Option<SocketAddr>,
    learned_remote: bool,
    last_packet: Option<Instant>,
    dtmf: DtmfReceiver,
    digits: Vec<char>,
    dtmf_out: DtmfSender,
    /// RTP timestamp of the telephone-event being sent.
    event_timestamp: u32,
    pcm: [i16; MAX_FRAME_SAMPLES],
    payload: [u8; MAX_PAYLOAD],
    resampled: AudioFrame,
    counters: MediaCounters,
    /// Send nothing while the pacer has nothing (silence suppression).
    suppress_silence: bool,
    /// The next audio packet starts a talkspurt: set the marker bit.
    talkspurt_start: bool,
    /// The last frame towards the caller had no bot audio: bot audio now
    /// starts a talkspurt, which is sent at once.
    last_sent_silent: bool,
    /// A talkspurt's next frame was due with none queued: the send waits a
    /// little for it rather than put a silent frame inside the talkspurt.
    holding: bool,
    /// When the bot frame at the head of the pacer arrived, if it came to
    /// an empty pacer (a bot streaming in real time, not a burst).
    head_arrival: Option<Instant>,
    /// Shortest wait of such a frame over the sends seen in this window.
    phase_wait_min: Option<Duration>,
    phase_sends: u32,
    /// Sends in a row that left bot audio queued behind them, and the
    /// queue's length at the first of them.
    standing_sends: u32,
    standing_from: Option<usize>,
    /// Repeat-and-fade for codecs without their own concealment (G.711, G.722).
    concealer: Option<Concealer>,
    /// Echo canceller, noise suppressor and gain control, when the flow asks.
    aec: Option<EchoCanceller>,
    /// Caller audio waiting for the recording; `Some` once recording.
    caller_backlog: Option<Box<CallerBacklog>>,
    /// When the caller's next frame is due while its stream plays; `None`
    /// while the jitter buffer fills, when arrivals try to start playout.
    inbound_due: Option<Instant>,
    /// While filling with packets held but no arrival, when to try again.
    inbound_retry: Option<Instant>,
    recording: bool,
    recorded: StereoFrame,
    rtcp: RtcpSession,
    /// Where the caller's RTCP comes from; until it speaks, RTP port + 1.
    remote_rtcp: Option<SocketAddr>,
    /// The caller multiplexes RTCP on its RTP port (RFC 5761): answer there.
    rtcp_mux: bool,
    /// Someone else (a relay) sends the caller's RTP for now.
    send_paused: bool,
}

/// What one packet towards the caller produced.
pub struct Sent {
    /// Bot frames have been waiting this much longer than needed: the next
    /// send should come this much sooner than 20 ms from now.
    pub advance: Option<Duration>,
    /// Bytes of an RTP packet written into the caller's buffer, and where to.
    pub rtp: Option<(usize, SocketAddr)>,
    /// A frame for the recording is in [`MediaPipeline::recorded_frame`].
    pub recorded: bool,
}

/// What one 20 ms tick produced.
pub struct Tick {
    /// Caller audio for the bot, present once the caller's stream started.
    pub to_bot: Option<AudioFrame>,
    /// A frame for the recording is in [`MediaPipeline::recorded_frame`].
    pub recorded: bool,
    /// Bytes of an RTP packet written into the caller's buffer, and where to.
    pub rtp: Option<(usize, SocketAddr)>,
}

impl MediaPipeline {
    pub fn new(
        negotiated: &NegotiatedMedia,
        bot_rate: u32,
        jitter_depth_ms: u32,
        jitter_adaptive: Option<AdaptiveConfig>,
        cname: &str,
        audio: AudioSettings,
    ) -> Result<Self, String> {
        let codec = negotiated.codec;
        let rate = codec.sample_rate();
        let clock = codec.rtp_clock_rate();
        let sender = RtpSender::random(negotiated.payload_type);
        let rtcp = RtcpSession::new(sender.ssrc(), clock, cname, Instant::now());
        let jitter = JitterBuffer::new(JitterConfig {
            clock_rate: clock,
            samples_per_packet: codec.timestamp_step(),
            // Slots sized for the codec, not for Opus's 1,275 bytes: 25 KB
            // less per G.711 call. Three frames' worth keeps a peer that
            // packs 60 ms per packet from being dropped as too large.
            max_payload: (codec.max_payload_bytes() * 3).min(MAX_PAYLOAD),
            adaptive: jitter_adaptive,
            depth_ms: jitter_depth_ms,
            ..JitterConfig::default()
        });
        let (decoder, encoder) = match (negotiated.decoder(), negotiated.encoder()) {
            (Ok(decoder), Ok(encoder)) => (decoder, encoder),
            (Err(e), _) | (_, Err(e)) => return Err(format!("{}: {e}", codec.name())),
        };
        let aec = if audio.any() {
            Some(EchoCanceller::new(audio, rate).map_err(|e| e.to_string())?)
        } else {
            None
        };
        // Opus conceals from its own state; the others get repeat-and-fade.
        let concealer = (codec != Codec::Opus).then(|| Concealer::new(rate));
        Ok(MediaPipeline {
            suppress_silence: false,
            talkspurt_start: true,
            last_sent_silent: true,
            holding: false,
            head_arrival: None,
            phase_wait_min: None,
            phase_sends: 0,
            standing_sends: 0,
            standing_from: None,
            concealer,
            aec,
            codec,
            decoder,
            encoder,
            frame_samples: codec.samples_per_frame().min(MAX_FRAME_SAMPLES),
            timestamp_step: codec.timestamp_step(),
            payload_type: negotiated.payload_type,
            telephone_event: negotiated.telephone_event,
            jitter,
            to_bot: Resampler::new(rate, bot_rate).map_err(|e| e.to_string())?,
            from_bot: Resampler::new(bot_rate, rate).map_err(|e| e.to_string())?,
            pacer: Pacer::new(rate, MAX_QUEUED_MS),
            sender,
            remote: negotiated.remote_rtp,
            learned_remote: false,
            last_packet: None,
            dtmf: DtmfReceiver::new(),
            digits: Vec::with_capacity(MAX_PENDING_DIGITS),
            // telephone-event runs at the codec's RTP clock (RFC 4733 §2.1).
            dtmf_out: DtmfSender::new(clock, 20),
            event_timestamp: 0,
            pcm: [0; MAX_FRAME_SAMPLES],
            payload: [0; MAX_PAYLOAD],
            resampled: AudioFrame::new(bot_rate),
            counters: MediaCounters::default(),
            caller_backlog: None,
            inbound_due: None,
            inbound_retry: None,
            recording: false,
            recorded: StereoFrame::default(),
            rtcp,
            remote_rtcp: None,
            rtcp_mux: false,
            send_paused: false,
        })
    }

    /// Stops (or resumes) sending to the far end while a relay speaks for
    /// us; resuming carries on the stream from [`Self::resume_rtp`].
    pub fn pause_sending(&mut self, paused: bool) {
        self.send_paused = paused;
    }

    /// Our outgoing stream: SSRC, next sequence number, next timestamp.
    pub fn rtp_position(&self) -> (u32, u16, u32) {
        (
            self.sender.ssrc(),
            self.sender.sequence(),
            self.sender.timestamp(),
        )
    }

    /// Continues our stream where a relay left it.
    pub fn resume_rtp(&mut self, sequence: u16, timestamp: u32) {
        self.sender.resume_at(sequence, timestamp);
        self.talkspurt_start = true;
    }

    /// Where the far end's RTP goes (learned from its packets, else SDP).
    pub fn remote(&self) -> Option<SocketAddr> {
        self.remote
    }

    pub fn payload_type(&self) -> u8 {
        self.payload_type
    }

    pub fn telephone_event(&self) -> Option<u8> {
        self.telephone_event
    }

    /// Nothing queued to play: the bot (or whoever fed the pacer) is quiet.
    pub fn playout_idle(&self) -> bool {
        self.pacer.queued_samples() == 0
    }

    /// Audio already at the codec's rate (a tone the gateway makes).
    pub fn push_codec_audio(&mut self, samples: &[i16]) {
        self.pacer.push_audio(samples);
    }

    /// Samples per 20 ms frame at the codec's rate.
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// A re-INVITE may move the caller's media; symmetric RTP keeps the
    /// learned address until packets come from elsewhere.
    pub fn update_remote(&mut self, negotiated: &NegotiatedMedia) {
        if !self.learned_remote {
            self.remote = negotiated.remote_rtp;
        }
    }

    /// Takes one datagram from the RTP socket.
    pub fn on_datagram(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) {
        if is_rtcp(datagram) {
            self.rtcp_mux = true;
            self.rtcp.handle_rtcp(datagram, now);
            return;
        }
        let Ok(packet) = RtpPacket::parse(datagram) else {
            self.counters.ignored_in += 1;
            return;
        };
        if Some(packet.payload_type) == self.telephone_event {
            self.last_packet = Some(now);
            if let Some(found) = self.dtmf.on_packet(packet.payload, packet.timestamp) {
                // A bounded queue: a phone cannot press keys faster than the
                // call drains them every 20 ms.
                if self.digits.len() < MAX_PENDING_DIGITS {
                    self.digits.push(found.digit);
                }
            }
            return;
        }
        if packet.payload_type != self.payload_type {
            self.counters.ignored_in += 1;
            return;
        }
        self.counters.rtp_in += 1;
        self.last_packet = Some(now);
        self.rtcp
            .on_rtp_received(packet.ssrc, packet.sequence, packet.timestamp, now);
        if self.remote != Some(from) {
            self.remote = Some(from);
            self.learned_remote = true;
        }
        if !matches!(
            self.jitter.push(&packet, now),
            PushOutcome::Accepted | PushOutcome::Reset
        ) {
            self.counters.ignored_in += 1;
        }
    }

    /// A DTMF digit the caller pressed (RFC 4733), oldest first.
    pub fn poll_digit(&mut self) -> Option<char> {
        if self.digits.is_empty() {
            None
        } else {
            Some(self.digits.remove(0))
        }
    }

    /// When the caller last sent RTP.
    pub fn last_packet(&self) -> Option<Instant> {
        self.last_packet
    }

    /// Advances 20 ms in both directions at once: one frame of caller audio
    /// towards the bot and one RTP packet towards the caller. For a leg
    /// whose two directions share one clock (a transcoded bridge).
    pub fn tick(&mut self, now: Instant, rtp_out: &mut [u8]) -> Tick {
        let (to_bot, _) = self.pull(now);
        let sent = self.send(now, rtp_out);
        Tick {
            to_bot,
            rtp: sent.rtp,
            recorded: sent.recorded,
        }
    }

    /// When [`Self::poll_pull`] has a frame to give, if ever without a new packet.
    pub fn next_pull(&self) -> Option<Instant> {
        self.inbound_due
            .map(|due| due + PULL_LATE)
            .or(self.inbound_retry)
    }

    /// The caller's frame due by `now`, on the schedule the stream set.
    pub fn poll_pull(&mut self, now: Instant) -> Option<AudioFrame> {
        if self.next_pull()? > now {
            return None;
        }
        self.pull_scheduled(now)
    }

    /// Right after [`Self::on_datagram`]: a stream that was filling may
    /// start now, and a frame due within a millisecond plays now. The
    /// schedule thus follows the caller's packets instead of a free-running
    /// tick, and a packet waits the jitter buffer's delay and no more.
    pub fn pull_on_arrival(&mut self, now: Instant) -> Option<AudioFrame> {
        match self.inbound_due {
            Some(due) if due > now + PULL_EARLY => None,
            _ => self.pull_scheduled(now),
        }
    }

    /// The caller's frame for a tick that also clocks where it goes (a
    /// transcoded bridge's party): pulled now, so that it leaves on this
    /// same tick, and off the arrival schedule, whose phase would race the
    /// tick's.
    pub fn pull_on_tick(&mut self, now: Instant) -> Option<AudioFrame> {
        self.inbound_due = None;
        self.inbound_retry = None;
        self.pull(now).0
    }

    fn pull_scheduled(&mut self, now: Instant) -> Option<AudioFrame> {
        let (frame, playing) = self.pull(now);
        if playing {
            self.inbound_due = Some(match self.inbound_due {
                Some(due) if now.saturating_duration_since(due) < MAX_BEHIND => due + FRAME,
                _ => now + FRAME,
            });
            self.inbound_retry = None;
        } else {
            self.inbound_due = None;
            self.inbound_retry = (self.jitter.buffered() > 0).then_some(now + FRAME);
        }
        frame
    }

    /// One frame of the caller's audio out of the jitter buffer: decoded,
    /// concealed or `None` while the buffer fills. The bool says whether the
    /// stream is playing (a frame, real or concealed, came out).
    fn pull(&mut self, now: Instant) -> (Option<AudioFrame>, bool) {
        let n = self.frame_samples;
        let lost_before = self.jitter.stats().lost;
        let decoded = match self.jitter.pop(now) {
            Playout::Waiting => false,
            Playout::Packet { payload, .. } => {
                match self.decoder.decode(payload, &mut self.pcm[..n]) {
                    Ok(samples) => {
                        self.pcm[samples.min(n)..n].fill(0);
                        if let Some(concealer) = &mut self.concealer {
                            // Remembers the frame and fades in after a loss.
                            concealer.good_frame(&mut self.pcm[..n]);
                        }
                    }
                    Err(_) => {
                        self.counters.undecodable += 1;
                        self.conceal();
                    }
                }
                true
            }
            Playout::Lost => {
                // A real loss (not a frame added to grow the delay) may be
                // rebuilt from the next packet's Opus in-band FEC.
                let really_lost = self.jitter.stats().lost > lost_before;
                let recovered = really_lost
                    && self.jitter.peek_due().is_some_and(|next| {
                        self.decoder
                            .decode_fec(next, &mut self.pcm[..n])
                            .is_some_and(|samples| {
                                self.pcm[samples.min(n)..n].fill(0);
                                true
                            })
                    });
                if recovered {
                    self.counters.fec_recovered += 1;
                } else {
                    self.conceal();
                }
                true
            }
        };
        if !decoded {
            return (None, false);
        }
        self.counters.frames_to_bot += 1;
        if let Some(aec) = &mut self.aec {
            aec.near_end(&mut self.pcm[..n]);
        }
        if let Some(backlog) = &mut self.caller_backlog {
            backlog.push(&self.pcm[..n]);
        }
        (Some(self.resample_for_bot()), true)
    }

    /// One packet towards the caller (bot audio, or silence to keep the
    /// stream and NAT bindings alive), and the recording's frame.
    pub fn send(&mut self, now: Instant, rtp_out: &mut [u8]) -> Sent {
        let n = self.frame_samples;
        self.shorten_standing_queue();
        let advance = self.track_phase(now);
        let (rtp, bot_audio) = if self.send_paused {
            (None, false)
        } else {
            self.send_to_caller(now, rtp_out)
        };
        if self.recording {
            let mut caller = [0i16; MAX_FRAME_SAMPLES];
            if let Some(backlog) = &mut self.caller_backlog {
                backlog.pop_into(&mut caller[..n]);
            }
            let bot: &[i16] = if bot_audio { &self.pcm[..n] } else { &[] };
            interleave(&caller[..n], bot, n, &mut self.recorded);
        }
        Sent {
            advance,
            rtp,
            recorded: self.recording,
        }
    }

    /// Watches how long just-in-time bot frames wait for their send. A
    /// schedule set by a talkspurt's first frame stays wherever that frame
    /// happened to land; a real-time stream whose frames all wait longer
    /// than the slack should be sent that much sooner.
    fn track_phase(&mut self, now: Instant) -> Option<Duration> {
        let head = self.head_arrival.take()?;
        if self.pacer.queued_samples() > self.frame_samples {
            // A backlog: its frames arrived together, none is just in time.
            self.phase_wait_min = None;
            self.phase_sends = 0;
            return None;
        }
        let wait = now.saturating_duration_since(head);
        self.phase_wait_min = Some(self.phase_wait_min.map_or(wait, |min| min.min(wait)));
        self.phase_sends += 1;
        if self.phase_sends < PHASE_WINDOW {
            return None;
        }
        let min = self.phase_wait_min.take().unwrap_or_default();
        self.phase_sends = 0;
        (min > SEND_SLACK + Duration::from_millis(1)).then(|| min - SEND_SLACK)
    }

    /// A bot streaming in real time whose frames once arrived late (a send
    /// went out without its frame, or a stall released several at once)
    /// keeps them queued for good: every frame after waits that much longer
    /// than it needs to. Measured at 1,000 calls on 2 vCPUs: most calls had
    /// a frame waiting behind half their sends, 13-22 ms of added latency
    /// for the whole call. A queue that neither empties nor drains over
    /// `STANDING_SENDS` sends is standing (a bot's burst drains a frame a
    /// send); then the next silent frame at its head is skipped. Speech is
    /// never cut, and one frame goes per window.
    fn shorten_standing_queue(&mut self) {
        let queued = self.pacer.queued_samples();
        let n = self.frame_samples;
        let Some(first) = self.standing_from.filter(|_| queued > n) else {
            self.standing_from = (queued > n).then_some(queued);
            self.standing_sends = 0;
            return;
        };
        self.standing_sends += 1;
        let draining = queued + n < first;
        if draining {
            self.standing_from = Some(queued);
            self.standing_sends = 0;
            return;
        }
        if self.standing_sends >= STANDING_SENDS
            && !self.send_paused
            && self.pacer.skip_silent_frame(n, SILENT_LEVEL)
        {
            self.counters.standing_silence_skipped += 1;
            self.standing_from = Some(self.pacer.queued_samples());
            self.standing_sends = 0;
        }
    }

    /// The send schedule restarts from a frame sent the moment it arrived.
    fn restart_phase_tracking(&mut self) {
        self.head_arrival = None;
        self.phase_wait_min = None;
        self.phase_sends = 0;
    }

    /// One packet towards the caller: a DTMF event or the pacer's audio
    /// (left in `pcm`; the bool says so).
    fn send_to_caller(
        &mut self,
        now: Instant,
        rtp_out: &mut [u8],
    ) -> (Option<(usize, SocketAddr)>, bool) {
        let mut rtp = None;
        if let (Some(remote), Some(event_pt)) = (self.remote, self.telephone_event) {
            if let Some(event) = self.dtmf_out.tick() {
                // The key replaces this packet's audio; the bot's audio waits
                // in the pacer rather than being lost.
                if event.start {
                    self.event_timestamp = self.sender.timestamp();
                }
                let ts = self.event_timestamp;
                let len = self
                    .sender
                    .packet_at(event_pt, ts, &event.payload, event.start, rtp_out);
                self.sender.skip(self.timestamp_step);
                if let Some(aec) = &mut self.aec {
                    aec.far_end(&SILENCE[..self.frame_samples]);
                }
                if len > 0 {
                    self.counters.rtp_out += 1;
                    return (Some((len, remote)), false);
                }
            }
        }
        let mut bot_audio = false;
        if let Some(remote) = self.remote {
            bot_audio = true;
            let n = self.frame_samples;
            let kind = self.pacer.next_frame(&mut self.pcm[..n]);
            self.last_sent_silent = kind == FrameKind::Silence;
            // The far-end reference is exactly what the caller is sent.
            if let Some(aec) = &mut self.aec {
                aec.far_end(&self.pcm[..n]);
            }
            if self.suppress_silence && kind == FrameKind::Silence {
                // Time passes on the RTP clock; the caller sees a gap.
                self.sender.skip(self.timestamp_step);
                self.talkspurt_start = true;
                return (None, bot_audio);
            }
            let marker = std::mem::take(&mut self.talkspurt_start);
            let Ok(size) = self.encoder.encode(&self.pcm[..n], &mut self.payload) else {
                // Keep the clock honest so the caller sees a gap, not a jump.
                self.sender.skip(self.timestamp_step);
                return (None, bot_audio);
            };
            let timestamp = self.sender.timestamp();
            let len =
                self.sender
                    .packet(&self.payload[..size], self.timestamp_step, marker, rtp_out);
            if len > 0 {
                self.rtcp.on_rtp_sent(size, timestamp, now);
                self.counters.rtp_out += 1;
                rtp = Some((len, remote));
            }
        }
        (rtp, bot_audio)
    }

    /// Send nothing while the bot is silent (RFC 3551 §4.1 silence
    /// suppression); each talkspurt then starts with the marker bit.
    pub fn suppress_silence(&mut self) {
        self.suppress_silence = true;
    }

    /// Record this call from now on: each tick fills [`Self::recorded_frame`].
    pub fn enable_recording(&mut self) {
        if self.caller_backlog.is_none() {
            self.caller_backlog = Some(Box::new(CallerBacklog {
                frames: [[0; MAX_FRAME_SAMPLES]; RECORDING_BACKLOG],
                first: 0,
                len: 0,
            }));
        }
        self.recording = true;
    }

    /// Caller (left) and what the caller heard (right) of the last tick.
    pub fn recorded_frame(&self) -> &StereoFrame {
        &self.recorded
    }

    fn resample_for_bot(&mut self) -> AudioFrame {
        self.to_bot
            .process(&self.pcm[..self.frame_samples], &mut self.resampled);
        self.resampled
    }

    /// A lost frame: the codec's own concealment where it has one (Opus),
    /// else silence.
    fn conceal(&mut self) {
        let n = self.frame_samples;
        self.counters.concealed += 1;
        if let Some(concealer) = &mut self.concealer {
            concealer.conceal(&mut self.pcm[..n]);
            return;
        }
        match self.decoder.conceal(&mut self.pcm[..n]) {
            Some(samples) => self.pcm[samples.min(n)..n].fill(0),
            None => self.pcm[..n].fill(0),
        }
    }

    /// Echo canceller figures, when it runs (resets its delay window: call rarely).
    pub fn aec_stats(&mut self) -> Option<AecStats> {
        self.aec.as_mut().map(EchoCanceller::stats)
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Bot audio at the bot's rate, any length. True when it should go out
    /// now ([`Self::send`]) rather than at the next tick: it starts a
    /// talkspurt (the packet then carries the marker bit, so the caller's
    /// jitter buffer takes the new phase as a new talkspurt), or the send is
    /// [holding](Self::hold_for_audio) for it.
    pub fn push_bot_audio(&mut self, frame: &AudioFrame, now: Instant) -> bool {
        let was_empty = !self.pacer.is_playing();
        let was_idle = self.last_sent_silent && was_empty;
        let pacer = &mut self.pacer;
        self.from_bot
            .process_any(frame.samples(), &mut |chunk: &[i16]| {
                pacer.push_audio(chunk)
            });
        let can_send = self.pacer.is_playing()
            && !self.send_paused
            && self.remote.is_some()
            && !self.dtmf_out.is_busy();
        if was_empty && self.pacer.is_playing() {
            self.head_arrival = Some(now);
        }
        if self.holding && can_send {
            self.holding = false;
            self.restart_phase_tracking();
            return true;
        }
        let early = was_idle && can_send;
        if early {
            self.talkspurt_start = true;
            self.counters.talkspurts_sent_early += 1;
            self.restart_phase_tracking();
        }
        early
    }

    /// Whether this 20 ms send may go out a moment before its time without
    /// changing what the caller hears: a whole frame of bot audio is
    /// queued, or the bot is quiet and the send is silence (or nothing).
    pub fn can_send_early(&self) -> bool {
        self.pacer.queued_samples() >= self.frame_samples
            || (self.last_sent_silent && !self.pacer.is_playing())
    }

    /// Whether this tick's send should wait for the bot: its talkspurt is
    /// playing, the queue ran dry, and a bot streaming in real time is
    /// probably a moment late. The caller then hears its audio on time
    /// instead of a silent frame in the middle of it. Once per dry spell.
    pub fn hold_for_audio(&mut self) -> bool {
        let hold = !self.holding
            && !self.last_sent_silent
            && !self.pacer.is_playing()
            && !self.send_paused
            && self.remote.is_some()
            && !self.dtmf_out.is_busy();
        if hold {
            self.holding = true;
        }
        hold
    }

    /// The hold ended without audio: the next send is silence.
    pub fn stop_holding(&mut self) {
        self.holding = false;
    }

    /// An RTCP datagram that came to the RTCP port.
    pub fn on_rtcp_datagram(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) {
        self.remote_rtcp = Some(from);
        self.rtcp.handle_rtcp(datagram, now);
    }

    /// Our RTCP report, when one is due: its length in `buf`, where to send
    /// it, and whether it goes out of the RTP socket (rtcp-mux).
    pub fn poll_rtcp(&mut self, now: Instant, buf: &mut [u8]) -> Option<(usize, SocketAddr, bool)> {
        let to = self.rtcp_destination()?;
        let len = self.rtcp.poll_transmit(now, buf)?;
        Some((len, to, self.rtcp_mux))
    }

    /// The last report, sent as the call ends.
    pub fn final_rtcp(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(usize, SocketAddr, bool)> {
        let to = self.rtcp_destination()?;
        let len = self.rtcp.final_report(now, buf)?;
        Some((len, to, self.rtcp_mux))
    }

    fn rtcp_destination(&self) -> Option<SocketAddr> {
        if self.rtcp_mux {
            return self.remote;
        }
        self.remote_rtcp.or_else(|| {
            let rtp = self.remote?;
            Some(SocketAddr::new(rtp.ip(), rtp.port().checked_add(1)?))
        })
    }

    pub fn rtcp_stats(&self) -> RtcpStats {
        self.rtcp.stats()
    }

    /// Queue digits to play to the caller as RFC 4733 events.
    pub fn send_digits(&mut self, digits: &str) -> Result<usize, String> {
        if self.telephone_event.is_none() {
            return Err("the caller's side did not offer telephone-event".to_owned());
        }
        self.dtmf_out
            .enqueue(digits)
            .map_err(|e: DtmfSendError| e.to_string())
    }

    pub fn clear(&mut self) {
        self.pacer.clear();
    }

    pub fn push_mark(&mut self, name: String) {
        self.pacer.push_mark(name);
    }

    /// A mark whose audio has played.
    pub fn poll_mark(&mut self) -> Option<String> {
        match self.pacer.poll_event()? {
            PacerEvent::MarkPlayed(name) => Some(name),
        }
    }

    /// Bot audio played to the caller so far (cleared audio never counts).
    pub fn played_ms(&self) -> u64 {
        self.pacer.played_ms()
    }

    pub fn note_dropped_to_bot(&mut self) {
        self.counters.frames_dropped_to_bot += 1;
    }

    pub fn counters(&self) -> MediaCounters {
        self.counters
    }

    pub fn jitter_stats(&self) -> switchboard_media::jitter::JitterStats {
        self.jitter.stats()
    }
}
