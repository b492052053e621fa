//! SDP offer/answer for one audio stream (RFC 4566, RFC 3264).
//!
//! A small parser of our own: it accepts what real phones and trunks send
//! (LF-only line endings, missing `t=`, attributes we do not know) and only
//! extracts what the gateway needs to answer with one codec (G.711, G.722 or
//! Opus) and RFC 4733 DTMF.
//!
//! Two generations of API live here: [`negotiate`] / [`build_answer`] /
//! [`build_offer`] speak G.711 only and keep the offerer's order; the
//! `*_media` functions take [`CodecPreferences`] and return
//! [`NegotiatedMedia`], which knows every [`Codec`].

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::codec::{Codec, CodecError, Decoder, Encoder, OpusConfig, OpusEncoder};
use crate::g711::G711;
use crate::srtp::CryptoAttribute;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("malformed SDP: {0}")]
    Malformed(String),
    #[error("no audio stream offered")]
    NoAudio,
    #[error("no codec in common")]
    NoCommonCodec,
    /// Audio offered only over a transport we cannot speak (e.g. DTLS).
    #[error("unsupported audio transport {0}")]
    UnsupportedTransport(String),
    /// RTP/SAVP without an `a=crypto` line we can use (RFC 4568: 488).
    #[error("no SRTP crypto suite in common (we take AES_CM_128_HMAC_SHA1_80 and _32)")]
    NoCommonCrypto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answerer takes in reply to this offered one.
    pub fn reversed(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    fn parse(attr: &str) -> Option<Direction> {
        match attr {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedFormat {
    pub payload_type: u8,
    /// Upper-cased encoding name; empty for a dynamic type without rtpmap.
    pub encoding: String,
    /// 0 when unknown.
    pub clock_rate: u32,
    pub fmtp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaOffer {
    pub port: u16,
    pub protocol: String,
    /// Media-level `c=`, which overrides the session-level one.
    pub connection: Option<IpAddr>,
    /// In the offerer's order of preference.
    pub formats: Vec<OfferedFormat>,
    pub ptime: Option<u32>,
    pub direction: Direction,
    /// Usable `a=crypto` lines (SDES), in the offerer's order.
    pub crypto: Vec<CryptoAttribute>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOffer {
    /// Session-level `c=`.
    pub connection: Option<IpAddr>,
    pub audio: Option<MediaOffer>,
    /// Every other `m=` line as "media proto fmts" (port left out), in order,
    /// so the answer can reject each one with port 0.
    pub other_media: Vec<String>,
    /// How many entries of `other_media` came before the audio `m=` line:
    /// RFC 3264 wants the answer's `m=` lines in the offer's order.
    pub audio_index: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub codec: G711,
    pub payload_type: u8,
    /// Payload type of telephone-event/8000, when offered.
    pub telephone_event: Option<u8>,
    /// None when the offer puts the stream on hold (0.0.0.0 or port 0).
    pub remote_rtp: Option<SocketAddr>,
    pub ptime: u32,
    /// Our direction, answering theirs.
    pub direction: Direction,
}

/// Encoding and clock rate of the static payload types RFC 3551 assigns and
/// peers often leave without `a=rtpmap`.
fn static_format(pt: u8) -> Option<(&'static str, u32)> {
    match pt {
        0 => Some(("PCMU", 8000)),
        3 => Some(("GSM", 8000)),
        8 => Some(("PCMA", 8000)),
        9 => Some(("G722", 8000)),
        13 => Some(("CN", 8000)),
        18 => Some(("G729", 8000)),
        _ => None,
    }
}

fn is_rtp_avp(protocol: &str) -> bool {
    protocol.eq_ignore_ascii_case("RTP/AVP") || protocol.eq_ignore_ascii_case("RTP/AVPF")
}

/// SRTP keyed by SDES (RFC 4568).
fn is_rtp_savp(protocol: &str) -> bool {
    protocol.eq_ignore_ascii_case("RTP/SAVP") || protocol.eq_ignore_ascii_case("RTP/SAVPF")
}

fn malformed(what: &str, line: &str) -> SdpError {
    // 80 bytes, cut back to a character boundary: `truncate` inside a
    // UTF-8 sequence panics (found by the fuzzer).
    let mut end = line.len().min(80);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    SdpError::Malformed(format!("{what}: {:?}", &line[..end]))
}

/// Parses `IN IP4 addr[/ttl[/n]]` or `IN IP6 addr`.
fn parse_connection(value: &str) -> Result<IpAddr, SdpError> {
    let mut parts = value.split_whitespace();
    let (Some(net), Some(kind), Some(addr)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("bad c= line", value));
    };
    if !net.eq_ignore_ascii_case("IN") {
        return Err(malformed("unsupported network type", value));
    }
    let addr = addr.split('/').next().unwrap_or(addr);
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| malformed("unsupported connection address", value))?;
    match (kind.to_ascii_uppercase().as_str(), ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(ip),
        _ => Err(malformed("address does not match its type", value)),
    }
}

impl SessionOffer {
    pub fn parse(text: &str) -> Result<SessionOffer, SdpError> {
        let mut lines = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l).trim_end())
            .filter(|l| !l.is_empty());

        match lines.next() {
            Some(l) if l.starts_with("v=") => {}
            Some(l) => return Err(malformed("SDP must start with v=", l)),
            None => return Err(SdpError::Malformed("empty SDP".into())),
        }

        let mut offer = SessionOffer {
            connection: None,
            audio: None,
            other_media: Vec::new(),
            audio_index: 0,
        };
        let mut session_direction = Direction::SendRecv;
        // The m= section being read, if it is the audio one we answer.
        let mut in_audio = false;
        let mut in_media = false;

        for line in lines {
            let bytes = line.as_bytes();
            if bytes.len() < 2 || bytes[1] != b'=' || !bytes[0].is_ascii_alphabetic() {
                return Err(malformed("not a type=value line", line));
            }
            let value = line[2..].trim();
            match bytes[0] {
                b'c' => {
                    let ip = parse_connection(value)?;
                    if in_audio {
                        if let Some(audio) = &mut offer.audio {
                            audio.connection = Some(ip);
                        }
                    } else if !in_media {
                        offer.connection = Some(ip);
                    }
                }
                b'm' => {
                    in_media = true;
                    in_audio = false;
                    let mut parts = value.split_whitespace();
                    let (Some(media), Some(port), Some(proto)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        return Err(malformed("bad m= line", line));
                    };
                    let port: u16 = port
                        .split('/')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .ok_or_else(|| malformed("bad port", line))?;
                    let wanted = media.eq_ignore_ascii_case("audio")
                        && match &offer.audio {
                            None => true,
                            // Prefer a plain RTP audio line over an earlier
                            // SRTP one (best-effort SRTP offers send both).
                            Some(a) => !is_rtp_avp(&a.protocol) && is_rtp_avp(proto),
                        };
                    if !wanted {
                        let fmts: Vec<&str> = parts.collect();
                        offer
                            .other_media
                            .push(format!("{media} {proto} {}", fmts.join(" ")));
                        continue;
                    }
                    if let Some(previous) = offer.audio.take() {
                        offer.other_media.insert(
                            offer.audio_index,
                            format!(
                                "audio {} {}",
                                previous.protocol,
                                previous
                                    .formats
                                    .iter()
                                    .map(|f| f.payload_type.to_string())
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            ),
                        );
                    }
                    let mut formats = Vec::new();
                    for fmt in parts {
                        let Ok(pt) = fmt.parse::<u8>() else {
                            // Non-RTP transports use names; nothing we can use.
                            continue;
                        };
                        let (encoding, clock_rate) = static_format(pt).unwrap_or(("", 0));
                        formats.push(OfferedFormat {
                            payload_type: pt,
                            encoding: encoding.to_string(),
                            clock_rate,
                            fmtp: None,
                        });
                    }
                    offer.audio_index = offer.other_media.len();
                    offer.audio = Some(MediaOffer {
                        port,
                        protocol: proto.to_string(),
                        connection: None,
                        formats,
                        ptime: None,
                        direction: session_direction,
                        crypto: Vec::new(),
                    });
                    in_audio = true;
                }
                b'a' => {
                    let (name, arg) = match value.split_once(':') {
                        Some((n, a)) => (n.trim(), a.trim()),
                        None => (value, ""),
                    };
                    if let Some(dir) = Direction::parse(name) {
                        if !in_media {
                            session_direction = dir;
                        } else if in_audio {
                            if let Some(audio) = &mut offer.audio {
                                audio.direction = dir;
                            }
                        }
                        continue;
                    }
                    let Some(audio) = offer.audio.as_mut().filter(|_| in_audio) else {
                        continue;
                    };
                    apply_media_attribute(audio, name, arg, line)?;
                }
                _ => {}
            }
        }
        Ok(offer)
    }
}

fn apply_media_attribute(
    audio: &mut MediaOffer,
    name: &str,
    arg: &str,
    line: &str,
) -> Result<(), SdpError> {
    match name {
        "rtpmap" => {
            let (pt, rest) = arg
                .split_once(char::is_whitespace)
                .ok_or_else(|| malformed("bad rtpmap", line))?;
            let pt: u8 = pt.parse().map_err(|_| malformed("bad rtpmap", line))?;
            let mut enc = rest.trim().split('/');
            let encoding = enc.next().unwrap_or("").to_ascii_uppercase();
            let clock_rate = enc
                .next()
                .and_then(|r| r.parse().ok())
                .ok_or_else(|| malformed("bad rtpmap clock rate", line))?;
            if let Some(f) = audio.formats.iter_mut().find(|f| f.payload_type == pt) {
                f.encoding = encoding;
                f.clock_rate = clock_rate;
            }
        }
        "fmtp" => {
            if let Some((pt, params)) = arg.split_once(char::is_whitespace) {
                if let Ok(pt) = pt.parse::<u8>() {
                    if let Some(f) = audio.formats.iter_mut().find(|f| f.payload_type == pt) {
                        f.fmtp = Some(params.trim().to_string());
                    }
                }
            }
        }
        "ptime" => audio.ptime = arg.parse().ok(),
        // Unusable lines (suites we lack, MKIs) are skipped: another line
        // of the same offer may do. Bounded, as every offer is.
        "crypto" if audio.crypto.len() < 16 => {
            audio.crypto.extend(CryptoAttribute::parse(arg));
        }
        _ => {}
    }
    Ok(())
}

/// Chooses the codec and DTMF payload type for answering `offer`: the first
/// format in the offer's order that is one of `preferences` (the answerer
/// honours the offerer's preference, RFC 3264 section 6.1).
pub fn negotiate(offer: &SessionOffer, preferences: &[G711]) -> Result<Negotiated, SdpError> {
    let preferences = CodecPreferences {
        codecs: preferences.iter().map(|law| Codec::from(*law)).collect(),
        follow_offerer_order: true,
        ..CodecPreferences::default()
    };
    negotiate_media(offer, &preferences)?
        .to_g711()
        .ok_or(SdpError::NoCommonCodec)
}

/// Which codecs we accept and how we describe them in our own offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecPreferences {
    /// Codecs we accept, best first.
    pub codecs: Vec<Codec>,
    /// Pick the offerer's favourite among ours instead of our favourite
    /// among theirs. RFC 3264 lets the answerer choose; following the
    /// offerer is the polite, G.711-era behaviour of [`negotiate`].
    pub follow_offerer_order: bool,
    /// Dynamic payload type for Opus in our offers (answers reuse the
    /// offerer's number).
    pub opus_payload_type: u8,
    /// telephone-event/8000 payload type in our offers; `None` offers no DTMF
    /// to 8 kHz-clock codecs (G.711, G.722).
    pub telephone_event_8000: Option<u8>,
    /// telephone-event/48000 in our offers, for Opus: RFC 4733 events use
    /// the clock of the audio they travel with.
    pub telephone_event_48000: Option<u8>,
    /// When the offer carries telephone-event, rank first the codecs whose
    /// clock it has: an Opus call offered only telephone-event/8000 would
    /// lose every key press, and a bot menu waiting for "press 1" matters
    /// more than wideband audio.
    pub prefer_dtmf: bool,
}

impl Default for CodecPreferences {
    /// Opus, G.722, PCMU, PCMA; payload types as browsers and most softphones
    /// number them (111 Opus, 101 and 110 for DTMF).
    fn default() -> Self {
        CodecPreferences {
            codecs: Codec::DEFAULT_PREFERENCE.to_vec(),
            follow_offerer_order: false,
            opus_payload_type: Codec::OPUS_DEFAULT_PAYLOAD_TYPE,
            telephone_event_8000: Some(101),
            telephone_event_48000: Some(110),
            prefer_dtmf: true,
        }
    }
}

impl CodecPreferences {
    /// These codecs, best first, with the default payload types.
    pub fn new(codecs: &[Codec]) -> Self {
        CodecPreferences {
            codecs: codecs.to_vec(),
            ..CodecPreferences::default()
        }
    }

    /// What the gateway did before wideband: PCMU and PCMA in the offerer's order.
    pub fn g711_only() -> Self {
        CodecPreferences {
            follow_offerer_order: true,
            ..CodecPreferences::new(&[Codec::Pcmu, Codec::Pcma])
        }
    }

    fn rank(&self, codec: Codec) -> Option<usize> {
        self.codecs.iter().position(|c| *c == codec)
    }
}

/// The outcome of offer/answer for any [`Codec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedMedia {
    pub codec: Codec,
    /// The number RTP carries for `codec`, as the offer assigned it.
    pub payload_type: u8,
    /// Payload type of telephone-event at the codec's RTP clock, when offered.
    pub telephone_event: Option<u8>,
    /// None when the offer puts the stream on hold (0.0.0.0 or port 0).
    pub remote_rtp: Option<SocketAddr>,
    pub ptime: u32,
    /// Our direction, answering theirs.
    pub direction: Direction,
    /// Opus: the peer's decoder uses in-band FEC (`useinbandfec=1`).
    pub peer_uses_fec: bool,
    /// Opus: the peer's `maxaveragebitrate`, bits per second.
    pub peer_max_bitrate: Option<u32>,
    /// SRTP keys, when the audio is RTP/SAVP.
    pub srtp: Option<Sdes>,
}

/// Both keys of an SRTP stream keyed in SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdes {
    /// What we send is protected with this (our `a=crypto` line).
    pub ours: CryptoAttribute,
    /// What the peer sends is protected with this.
    pub theirs: CryptoAttribute,
}

impl NegotiatedMedia {
    /// The G.711-only view, for code that predates [`Codec`].
    pub fn to_g711(&self) -> Option<Negotiated> {
        Some(Negotiated {
            codec: self.codec.g711()?,
            payload_type: self.payload_type,
            telephone_event: self.telephone_event,
            remote_rtp: self.remote_rtp,
            ptime: self.ptime,
            direction: self.direction,
        })
    }

    pub fn decoder(&self) -> Result<Decoder, CodecError> {
        self.codec.decoder()
    }

    /// An encoder set up for this peer. Opus keeps in-band FEC on even when
    /// the peer did not ask for it: the parameter only says whether its
    /// decoder will use the redundancy, and a decoder that ignores it loses
    /// nothing but a few bits. A `maxaveragebitrate` lowers our bitrate.
    pub fn encoder(&self) -> Result<Encoder, CodecError> {
        if self.codec != Codec::Opus {
            return self.codec.encoder();
        }
        let mut config = OpusConfig::default();
        if let Some(max) = self.peer_max_bitrate {
            // Below ~6 kbit/s speech stops being intelligible: treat a
            // lower cap as a typo rather than obey it.
            config.bitrate = config.bitrate.min(max.max(6000) as i32);
        }
        Ok(Encoder::Opus(OpusEncoder::new(config)?))
    }
}

impl From<&Negotiated> for NegotiatedMedia {
    fn from(n: &Negotiated) -> Self {
        NegotiatedMedia {
            codec: Codec::from(n.codec),
            payload_type: n.payload_type,
            telephone_event: n.telephone_event,
            remote_rtp: n.remote_rtp,
            ptime: n.ptime,
            direction: n.direction,
            peer_uses_fec: false,
            peer_max_bitrate: None,
            srtp: None,
        }
    }
}

/// The value of `name` in an fmtp parameter list (`a=b;c=d`).
fn fmtp_param<'a>(fmtp: &'a str, name: &str) -> Option<&'a str> {
    fmtp.split(';').find_map(|param| {
        let (key, value) = param.split_once('=')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Chooses the codec for answering `offer` (or reading an answer to our
/// offer): the best one both sides have, by `preferences`. DTMF is the
/// telephone-event at the chosen codec's RTP clock, so a call on Opus uses
/// telephone-event/48000 and one on G.711 or G.722 telephone-event/8000.
pub fn negotiate_media(
    offer: &SessionOffer,
    preferences: &CodecPreferences,
) -> Result<NegotiatedMedia, SdpError> {
    let audio = offer.audio.as_ref().ok_or(SdpError::NoAudio)?;
    let srtp = if is_rtp_savp(&audio.protocol) {
        // Answering, the first usable line wins and we key our direction
        // with a fresh key of the same suite and tag; reading an answer,
        // its one line is the peer's key (ours is the offered line with
        // that tag).
        let theirs = audio.crypto.first().ok_or(SdpError::NoCommonCrypto)?;
        Some(Sdes {
            ours: CryptoAttribute::generate(theirs.tag, theirs.suite),
            theirs: theirs.clone(),
        })
    } else if is_rtp_avp(&audio.protocol) {
        None
    } else {
        return Err(SdpError::UnsupportedTransport(audio.protocol.clone()));
    };
    let event_at = |rate: u32| {
        audio
            .formats
            .iter()
            .find(|f| f.encoding == "TELEPHONE-EVENT" && f.clock_rate == rate)
            .map(|f| f.payload_type)
    };
    let offers_events = audio
        .formats
        .iter()
        .any(|f| f.encoding == "TELEPHONE-EVENT");
    let (_, codec, format) = audio
        .formats
        .iter()
        .enumerate()
        .filter_map(|(position, f)| {
            let codec = Codec::from_rtpmap(&f.encoding, f.clock_rate)?;
            let rank = preferences.rank(codec)?;
            let loses_dtmf = preferences.prefer_dtmf
                && offers_events
                && event_at(codec.rtp_clock_rate()).is_none();
            let order = if preferences.follow_offerer_order {
                position
            } else {
                rank
            };
            Some(((loses_dtmf, order), codec, f))
        })
        // min_by_key keeps the first of equals: the offerer's order breaks ties.
        .min_by_key(|(key, _, _)| *key)
        .ok_or(SdpError::NoCommonCodec)?;
    let telephone_event = event_at(codec.rtp_clock_rate());
    let fmtp = format.fmtp.as_deref().filter(|_| codec == Codec::Opus);
    let peer_uses_fec = fmtp.and_then(|f| fmtp_param(f, "useinbandfec")) == Some("1");
    let peer_max_bitrate = fmtp
        .and_then(|f| fmtp_param(f, "maxaveragebitrate"))
        .and_then(|v| v.parse().ok());
    let ip = audio
        .connection
        .or(offer.connection)
        .ok_or_else(|| SdpError::Malformed("no connection address for audio".into()))?;
    let remote_rtp =
        (!ip.is_unspecified() && audio.port != 0).then(|| SocketAddr::new(ip, audio.port));
    Ok(NegotiatedMedia {
        codec,
        payload_type: format.payload_type,
        telephone_event,
        remote_rtp,
        ptime: 20,
        direction: audio.direction.reversed(),
        peer_uses_fec,
        peer_max_bitrate,
        srtp,
    })
}

fn ip_kind(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

fn write_session_header(sdp: &mut String, local_ip: IpAddr, session_id: u64, version: u64) {
    let kind = ip_kind(local_ip);
    let _ = write!(
        sdp,
        "v=0\r\no=switchboard {session_id} {version} IN {kind} {local_ip}\r\ns=switchboard\r\n\
         c=IN {kind} {local_ip}\r\nt=0 0\r\n"
    );
}

/// One `m=audio` section: `codecs` then `telephone_events` (payload type,
/// clock rate) in the order given.
fn write_audio_section(
    sdp: &mut String,
    port: u16,
    protocol: &str,
    codecs: &[(u8, Codec)],
    telephone_events: &[(u8, u32)],
    direction: Direction,
    crypto: &[&CryptoAttribute],
) {
    let _ = write!(sdp, "m=audio {port} {protocol}");
    for (pt, _) in codecs {
        let _ = write!(sdp, " {pt}");
    }
    for (pt, _) in telephone_events {
        let _ = write!(sdp, " {pt}");
    }
    sdp.push_str("\r\n");
    for (pt, codec) in codecs {
        let _ = write!(sdp, "a=rtpmap:{pt} {}\r\n", codec.rtpmap());
        if *codec == Codec::Opus {
            // Tells the peer our decoder uses its in-band FEC (RFC 7587),
            // which is what makes it worth its encoder's bits.
            let _ = write!(sdp, "a=fmtp:{pt} useinbandfec=1\r\n");
        }
    }
    for (pt, rate) in telephone_events {
        let _ = write!(
            sdp,
            "a=rtpmap:{pt} telephone-event/{rate}\r\na=fmtp:{pt} 0-16\r\n"
        );
    }
    let _ = write!(sdp, "a=ptime:20\r\na={}\r\n", direction.as_str());
    for line in crypto {
        let _ = write!(sdp, "a=crypto:{}\r\n", line.to_sdp());
    }
}

/// Builds the answer to `offer`: our audio stream first-class, every other
/// `m=` line rejected with port 0, in the offer's order.
pub fn build_answer(
    offer: &SessionOffer,
    negotiated: &Negotiated,
    local_ip: IpAddr,
    local_port: u16,
    session_id: u64,
    session_version: u64,
) -> String {
    let media = NegotiatedMedia::from(negotiated);
    build_media_answer(
        offer,
        &media,
        local_ip,
        local_port,
        session_id,
        session_version,
    )
}

/// [`build_answer`] for any codec: the chosen codec under the offerer's
/// payload type (with `useinbandfec=1` for Opus) and telephone-event at its
/// clock when the offer had one.
pub fn build_media_answer(
    offer: &SessionOffer,
    negotiated: &NegotiatedMedia,
    local_ip: IpAddr,
    local_port: u16,
    session_id: u64,
    session_version: u64,
) -> String {
    let mut sdp = String::with_capacity(512);
    write_session_header(&mut sdp, local_ip, session_id, session_version);
    let reject = |sdp: &mut String, m: &str| {
        let (media, rest) = m.split_once(' ').unwrap_or((m, ""));
        let _ = write!(sdp, "m={media} 0 {rest}\r\n");
    };
    let split = offer.audio_index.min(offer.other_media.len());
    for m in &offer.other_media[..split] {
        reject(&mut sdp, m);
    }
    // A disabled offered stream stays disabled in the answer.
    let (port, protocol) = match &offer.audio {
        Some(a) if a.port == 0 => (0, a.protocol.as_str()),
        Some(a) => (local_port, a.protocol.as_str()),
        None => (local_port, "RTP/AVP"),
    };
    let rate = negotiated.codec.rtp_clock_rate();
    let events: &[(u8, u32)] = match negotiated.telephone_event {
        Some(pt) => &[(pt, rate)],
        None => &[],
    };
    write_audio_section(
        &mut sdp,
        port,
        protocol,
        &[(negotiated.payload_type, negotiated.codec)],
        events,
        negotiated.direction,
        &negotiated
            .srtp
            .iter()
            .map(|sdes| &sdes.ours)
            .collect::<Vec<_>>(),
    );
    for m in &offer.other_media[split..] {
        reject(&mut sdp, m);
    }
    sdp
}

/// Builds an offer for an outbound call with `codecs` in preference order.
pub fn build_offer(
    codecs: &[G711],
    telephone_event_pt: Option<u8>,
    local_ip: IpAddr,
    local_port: u16,
    session_id: u64,
    session_version: u64,
) -> String {
    let preferences = CodecPreferences {
        codecs: codecs.iter().map(|law| Codec::from(*law)).collect(),
        telephone_event_8000: telephone_event_pt,
        ..CodecPreferences::default()
    };
    build_media_offer(
        &preferences,
        local_ip,
        local_port,
        session_id,
        session_version,
    )
}

/// An offer listing `preferences.codecs` best first, Opus under its dynamic
/// payload type, and telephone-event at each clock rate those codecs use.
pub fn build_media_offer(
    preferences: &CodecPreferences,
    local_ip: IpAddr,
    local_port: u16,
    session_id: u64,
    session_version: u64,
) -> String {
    build_secure_media_offer(
        preferences,
        local_ip,
        local_port,
        session_id,
        session_version,
        &[],
    )
}

/// [`build_media_offer`] as RTP/SAVP with `crypto` (SDES keys, one per
/// suite, best first) when it is not empty.
pub fn build_secure_media_offer(
    preferences: &CodecPreferences,
    local_ip: IpAddr,
    local_port: u16,
    session_id: u64,
    session_version: u64,
    crypto: &[CryptoAttribute],
) -> String {
    let mut sdp = String::with_capacity(512);
    write_session_header(&mut sdp, local_ip, session_id, session_version);
    let codecs: Vec<(u8, Codec)> = preferences
        .codecs
        .iter()
        .map(|c| {
            let pt = c
                .static_payload_type()
                .unwrap_or(preferences.opus_payload_type);
            (pt, *c)
        })
        .collect();
    let uses_clock = |rate| {
        preferences
            .codecs
            .iter()
            .any(|c| c.rtp_clock_rate() == rate)
    };
    let mut events = Vec::with_capacity(2);
    for (pt, rate) in [
        (preferences.telephone_event_8000, 8000),
        (preferences.telephone_event_48000, 48000),
    ] {
        if let Some(pt) = pt.filter(|_| uses_clock(rate)) {
            events.push((pt, rate));
        }
    }
    write_audio_section(
        &mut sdp,
        local_port,
        if crypto.is_empty() {
            "RTP/AVP"
        } else {
            "RTP/SAVP"
        },
        &codecs,
        &events,
        Direction::SendRecv,
        &crypto.iter().collect::<Vec<_>>(),
    );
    sdp
}

#[cfg(test)]
#[path = "sdp_tests.rs"]
mod tests;
