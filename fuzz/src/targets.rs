//! One function per parser, taking raw bytes the way the network or a bot
//! hands them over, and driving what the gateway does next with the result
//! (accessors, the transaction layer, codec negotiation and answers).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use switchboard_gateway::sip::digest::{Challenge, Credentials};
use switchboard_gateway::sip::framing::{
    bad_request, parse_datagram, Datagram, StreamDecoder, StreamItem,
};
use switchboard_gateway::sip::message::SipMessage;
use switchboard_gateway::sip::transaction::{Peer, Timers, TransactionLayer, Transport};
use switchboard_gateway::sip::uri::SipUri;
use switchboard_gateway::transport::inbound::is_refusal_ack;
use switchboard_gateway::transport::new_invite;
use switchboard_media::codec::Codec;
use switchboard_media::rtcp::RtcpSession;
use switchboard_media::rtp::RtpPacket;
use switchboard_media::sdp::{build_media_answer, negotiate_media, CodecPreferences, SessionOffer};

pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// Tokens the mutator inserts: the grammar's punctuation and keywords.
    pub dictionary: &'static [&'static str],
}

const SIP_TOKENS: &[&str] = &[
    "\r\n",
    "\r\n\r\n",
    "\n",
    " ",
    ":",
    ";",
    ",",
    "<",
    ">",
    "\"",
    "@",
    "[::1]",
    "%00",
    "%",
    "SIP/2.0",
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "REGISTER",
    "OPTIONS",
    "REFER",
    "sip:",
    "sips:",
    "tel:",
    "Via: ",
    "v: ",
    "f: ",
    "t: ",
    "i: ",
    "m: ",
    "l: ",
    "Content-Length: ",
    "Content-Length: 99999",
    "CSeq: ",
    "Call-ID: ",
    ";branch=z9hG4bK",
    ";tag=",
    ";rport",
    ";transport=tls",
    "Authorization: Digest ",
    "nonce=\"",
    "qop=auth",
    "\t",
    "\r\n ",
];

const SDP_TOKENS: &[&str] = &[
    "\r\n",
    "v=0",
    "o=",
    "s=",
    "c=IN IP4 ",
    "c=IN IP6 ",
    "t=0 0",
    "m=audio ",
    "m=video ",
    " RTP/AVP ",
    " RTP/SAVP ",
    "a=rtpmap:",
    "a=fmtp:",
    "a=sendrecv",
    "a=inactive",
    "a=ptime:",
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:",
    "opus/48000/2",
    "PCMU/8000",
    "G722/8000",
    "telephone-event/8000",
    "101",
    "0",
    "65536",
    "/",
    " ",
];

const XML_TOKENS: &[&str] = &[
    "<Response>",
    "</Response>",
    "<Dial>",
    "</Dial>",
    "<Sip>",
    "</Sip>",
    "<Number>",
    "<Say>",
    "<Play>",
    "<Hangup/>",
    "<Redirect>",
    "<Pause length=\"",
    "<Gather",
    "<Connect>",
    "<Stream",
    "<Parameter",
    " url=\"",
    " action=\"",
    " timeout=\"",
    "\"",
    "/>",
    ">",
    "<",
    "&amp;",
    "&#",
    "<![CDATA[",
    "]]>",
    "<!--",
    "-->",
    "<?xml version=\"1.0\"?>",
    "sip:a@b;transport=tls",
];

const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1e999",
    "\\u0000",
    "\\\"",
    "\"event\":",
    "\"media\"",
    "\"payload\":",
    "\"mark\"",
    "\"clear\"",
    "\"action\"",
    "\"name\":",
    "\"twiml\"",
    "\"body\":",
    "\"type\":",
    "\"delta\":",
];

pub const TARGETS: &[Target] = &[
    Target {
        name: "sip_datagram",
        run: sip_datagram,
        dictionary: SIP_TOKENS,
    },
    Target {
        name: "sip_stream",
        run: sip_stream,
        dictionary: SIP_TOKENS,
    },
    Target {
        name: "sdp",
        run: sdp,
        dictionary: SDP_TOKENS,
    },
    Target {
        name: "rtp",
        run: rtp,
        dictionary: &[],
    },
    Target {
        name: "rtcp",
        run: rtcp,
        dictionary: &[],
    },
    Target {
        name: "twiml",
        run: twiml,
        dictionary: XML_TOKENS,
    },
    Target {
        name: "bot_message",
        run: bot_message,
        dictionary: JSON_TOKENS,
    },
    Target {
        name: "connector_twilio_stream",
        run: crate::connectors::twilio_stream,
        dictionary: JSON_TOKENS,
    },
    Target {
        name: "connector_websocket",
        run: crate::connectors::websocket,
        dictionary: JSON_TOKENS,
    },
    Target {
        name: "connector_ultravox",
        run: crate::connectors::ultravox,
        dictionary: JSON_TOKENS,
    },
    Target {
        name: "connector_openai_realtime",
        run: crate::connectors::openai_realtime,
        dictionary: JSON_TOKENS,
    },
];

const PEER: Peer = Peer {
    transport: Transport::Udp,
    addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5070),
};

/// What the endpoint reads from a parsed message before routing it.
fn inspect(message: &SipMessage) {
    let headers = message.headers();
    let _ = headers.get("Call-ID");
    for name in ["Authorization", "Proxy-Authorization"] {
        if let Some(value) = headers.get(name) {
            let _ = Credentials::parse(value);
        }
    }
    for name in ["WWW-Authenticate", "Proxy-Authenticate"] {
        if let Some(value) = headers.get(name) {
            let _ = Challenge::parse(value);
        }
    }
    for name in ["Refer-To", "Route", "Record-Route"] {
        for value in headers.get_all_split(name) {
            let _ = switchboard_gateway::sip::uri::NameAddr::parse(value);
        }
    }
    match message {
        SipMessage::Request(request) => {
            let _ = (
                request.cseq(),
                request.from(),
                request.to(),
                request.top_via(),
            );
            let _ = (
                request.contact(),
                request.max_forwards(),
                request.uri.user_decoded(),
            );
            let _ = SipUri::parse(&request.uri.to_string());
            if let Ok(text) = std::str::from_utf8(&request.body) {
                let _ = SessionOffer::parse(text);
            }
        }
        SipMessage::Response(response) => {
            let _ = (
                response.cseq(),
                response.from(),
                response.to(),
                response.top_via(),
            );
        }
    }
}

/// Into the transaction layer, and its timers run out, as the endpoint
/// would do with it.
fn transact(message: SipMessage, transport: Transport) {
    let mut layer = TransactionLayer::new(Timers::default());
    let now = Instant::now();
    let peer = Peer { transport, ..PEER };
    layer.handle_input(message.clone(), peer, now);
    layer.handle_input(message, peer, now + Duration::from_millis(1));
    while layer.poll_event().is_some() {}
    while layer.poll_transmit().is_some() {}
    layer.handle_timeout(now + Duration::from_secs(64));
    while layer.poll_event().is_some() {}
    while layer.poll_transmit().is_some() {}
}

fn sip_datagram(bytes: &[u8]) {
    // What the UDP reader looks at before parsing, under overload.
    let _ = is_refusal_ack(bytes);
    if let Some(invite) = new_invite::read(bytes) {
        let _ = invite.call_id();
        if let Ok(SipMessage::Response(refusal)) =
            switchboard_gateway::sip::framing::parse_message(&invite.refusal("shedfuzz", "5"))
        {
            let _ = (refusal.to(), refusal.top_via(), refusal.cseq());
        }
    }
    match parse_datagram(bytes) {
        Datagram::Message(message) => {
            inspect(&message);
            let _ = message.to_bytes();
            transact(message, Transport::Udp);
        }
        Datagram::Malformed(error) => {
            if let Some(partial) = &error.partial {
                let _ = bad_request(partial, &error.reason);
            }
        }
        Datagram::KeepAlive => {}
    }
}

/// A TCP/TLS byte stream, fed in uneven pieces (the first byte picks the
/// piece size) as the network would.
fn sip_stream(bytes: &[u8]) {
    let Some((&split, rest)) = bytes.split_first() else {
        return;
    };
    let piece = 1 + split as usize * 7;
    let mut decoder = StreamDecoder::new(64 * 1024);
    for chunk in rest.chunks(piece) {
        decoder.extend(chunk);
        while let Some(item) = decoder.next() {
            match item {
                StreamItem::Message(message) => {
                    inspect(&message);
                    transact(message, Transport::Tcp);
                }
                StreamItem::Malformed(error) | StreamItem::Fatal(error) => {
                    if let Some(partial) = &error.partial {
                        let _ = bad_request(partial, &error.reason);
                    }
                }
                StreamItem::KeepAlivePing => {}
            }
        }
        assert!(
            decoder.buffered() <= 64 * 1024 + piece,
            "the decoder holds more than its cap"
        );
    }
}

fn sdp(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(offer) = SessionOffer::parse(text) else {
        return;
    };
    let preferences = CodecPreferences::new(&[Codec::Opus, Codec::G722, Codec::Pcmu, Codec::Pcma]);
    if let Ok(negotiated) = negotiate_media(&offer, &preferences) {
        let answer = build_media_answer(
            &offer,
            &negotiated,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            40000,
            1,
            1,
        );
        assert!(
            SessionOffer::parse(&answer).is_ok(),
            "our own answer does not parse:\n{answer}"
        );
    }
}

fn rtp(bytes: &[u8]) {
    if let Ok(packet) = RtpPacket::parse(bytes) {
        let _ = (packet.sequence, packet.ssrc, packet.marker);
        // Any payload type may claim to be telephone-event.
        let mut dtmf = switchboard_media::dtmf::DtmfReceiver::new();
        let _ = dtmf.on_packet(packet.payload, packet.timestamp);
    }
}

fn rtcp(bytes: &[u8]) {
    let now = Instant::now();
    let mut session = RtcpSession::new(0x1234_5678, 8000, "fuzz@switchboard", now);
    session.on_rtp_received(0x0bad_cafe, 1, 160, now);
    session.handle_rtcp(bytes, now);
    let mut buf = [0u8; 1500];
    let _ = session.poll_transmit(now + Duration::from_secs(10), &mut buf);
    let _ = session.stats();
}

fn twiml(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(verbs) = switchboard_flows::twiml::parse_twiml(text) {
        let _ = switchboard_flows::twiml::actions_from_twiml(&verbs);
    }
}

/// A bot's `{"event":"action",…}` message, the part every connector
/// shares once its JSON parsed.
fn bot_message(bytes: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    let _ = switchboard_connectors::actions::action_name(&value);
    let _ = switchboard_connectors::actions::parse_action_message(&value);
}
