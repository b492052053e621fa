//! SDP offer/answer for one audio stream (RFC 4566, RFC 3264).
//!
//! A small parser of our own: it accepts what real phones and trunks send
//! (LF-only line endings, missing `t=`, attributes we do not know) and only
//! extracts what the gateway needs to answer with G.711 and RFC 4733 DTMF.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::g711::G711;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("malformed SDP: {0}")]
    Malformed(String),
    #[error("no audio stream offered")]
    NoAudio,
    #[error("no codec in common")]
    NoCommonCodec,
    /// Audio offered only over a transport we cannot speak (e.g. RTP/SAVP).
    #[error("unsupported audio transport {0}")]
    UnsupportedTransport(String),
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

fn malformed(what: &str, line: &str) -> SdpError {
    let mut line = line.to_string();
    line.truncate(80);
    SdpError::Malformed(format!("{what}: {line:?}"))
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
        _ => {}
    }
    Ok(())
}

/// Chooses the codec and DTMF payload type for answering `offer`: the first
/// format in the offer's order that is one of `preferences` (the answerer
/// honours the offerer's preference, RFC 3264 section 6.1).
pub fn negotiate(offer: &SessionOffer, preferences: &[G711]) -> Result<Negotiated, SdpError> {
    let audio = offer.audio.as_ref().ok_or(SdpError::NoAudio)?;
    if !is_rtp_avp(&audio.protocol) {
        return Err(SdpError::UnsupportedTransport(audio.protocol.clone()));
    }
    let (codec, payload_type) = audio
        .formats
        .iter()
        .find_map(|f| {
            preferences
                .iter()
                .find(|c| f.clock_rate == 8000 && f.encoding == c.name())
                .map(|c| (*c, f.payload_type))
        })
        .ok_or(SdpError::NoCommonCodec)?;
    let telephone_event = audio
        .formats
        .iter()
        .find(|f| f.encoding == "TELEPHONE-EVENT" && f.clock_rate == 8000)
        .map(|f| f.payload_type);
    let ip = audio
        .connection
        .or(offer.connection)
        .ok_or_else(|| SdpError::Malformed("no connection address for audio".into()))?;
    let remote_rtp =
        (!ip.is_unspecified() && audio.port != 0).then(|| SocketAddr::new(ip, audio.port));
    Ok(Negotiated {
        codec,
        payload_type,
        telephone_event,
        remote_rtp,
        ptime: 20,
        direction: audio.direction.reversed(),
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

fn write_audio_section(
    sdp: &mut String,
    port: u16,
    protocol: &str,
    codecs: &[(u8, &str)],
    telephone_event: Option<u8>,
    direction: Direction,
) {
    let _ = write!(sdp, "m=audio {port} {protocol}");
    for (pt, _) in codecs {
        let _ = write!(sdp, " {pt}");
    }
    if let Some(te) = telephone_event {
        let _ = write!(sdp, " {te}");
    }
    sdp.push_str("\r\n");
    for (pt, name) in codecs {
        let _ = write!(sdp, "a=rtpmap:{pt} {name}/8000\r\n");
    }
    if let Some(te) = telephone_event {
        let _ = write!(
            sdp,
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n"
        );
    }
    let _ = write!(sdp, "a=ptime:20\r\na={}\r\n", direction.as_str());
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
    write_audio_section(
        &mut sdp,
        port,
        protocol,
        &[(negotiated.payload_type, negotiated.codec.name())],
        negotiated.telephone_event,
        negotiated.direction,
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
    let mut sdp = String::with_capacity(512);
    write_session_header(&mut sdp, local_ip, session_id, session_version);
    let codecs: Vec<(u8, &str)> = codecs
        .iter()
        .map(|c| (c.payload_type(), c.name()))
        .collect();
    write_audio_section(
        &mut sdp,
        local_port,
        "RTP/AVP",
        &codecs,
        telephone_event_pt,
        Direction::SendRecv,
    );
    sdp
}

#[cfg(test)]
#[path = "sdp_tests.rs"]
mod tests;
