use super::*;
use crate::codec::{AudioDecoder, Codec};
use crate::srtp::Suite;
use std::net::{Ipv4Addr, Ipv6Addr};

const BOTH: [G711; 2] = [G711::Pcmu, G711::Pcma];

/// What sipp's built-in uac scenario sends.
const SIPP: &str = "v=0\r\n\
o=user1 53655765 2353687637 IN IP4 127.0.1.1\r\n\
s=-\r\n\
c=IN IP4 127.0.1.1\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

/// Baresip/Linphone style: Opus first, G.711 both laws, DTMF, media-level c=.
const SOFTPHONE: &str = "v=0\r\n\
o=- 1183928711 3960402512 IN IP4 192.168.1.20\r\n\
s=-\r\n\
c=IN IP4 192.168.1.20\r\n\
t=0 0\r\n\
a=tool:baresip 3.10.1\r\n\
m=audio 10918 RTP/AVP 96 0 8 101\r\n\
c=IN IP4 192.168.1.21\r\n\
b=AS:128\r\n\
a=rtpmap:96 opus/48000/2\r\n\
a=fmtp:96 stereo=1;sprop-stereo=1\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=rtcp-mux\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n\
m=video 10920 RTP/AVP 97\r\n\
a=rtpmap:97 H264/90000\r\n";

fn parse(text: &str) -> SessionOffer {
    SessionOffer::parse(text).unwrap()
}

#[test]
fn sipp_default_offer() {
    let offer = parse(SIPP);
    assert_eq!(
        offer.connection,
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1)))
    );
    let audio = offer.audio.as_ref().unwrap();
    assert_eq!((audio.port, audio.protocol.as_str()), (6000, "RTP/AVP"));
    assert_eq!(audio.direction, Direction::SendRecv);
    assert_eq!(audio.formats.len(), 1);
    let n = negotiate(&offer, &BOTH).unwrap();
    assert_eq!(
        (n.codec, n.payload_type, n.telephone_event),
        (G711::Pcmu, 0, None)
    );
    assert_eq!(n.remote_rtp, Some("127.0.1.1:6000".parse().unwrap()));
    assert_eq!(n.direction, Direction::SendRecv);
    assert_eq!(n.ptime, 20);

    let answer = build_answer(&offer, &n, "10.0.0.5".parse().unwrap(), 20000, 7, 8);
    assert_eq!(
        answer,
        "v=0\r\no=switchboard 7 8 IN IP4 10.0.0.5\r\ns=switchboard\r\nc=IN IP4 10.0.0.5\r\n\
         t=0 0\r\nm=audio 20000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    );
    // Our answer is itself parseable SDP.
    let again = parse(&answer);
    assert_eq!(again.audio.unwrap().port, 20000);
}

#[test]
fn softphone_offer_with_opus_and_dtmf() {
    let offer = parse(SOFTPHONE);
    let audio = offer.audio.as_ref().unwrap();
    let names: Vec<_> = audio.formats.iter().map(|f| f.encoding.as_str()).collect();
    assert_eq!(names, ["OPUS", "PCMU", "PCMA", "TELEPHONE-EVENT"]);
    assert_eq!(audio.formats[0].clock_rate, 48000);
    assert_eq!(
        audio.formats[0].fmtp.as_deref(),
        Some("stereo=1;sprop-stereo=1")
    );
    assert_eq!(audio.ptime, Some(20));
    assert_eq!(audio.connection, Some("192.168.1.21".parse().unwrap()));
    assert_eq!(offer.other_media, ["video RTP/AVP 97"]);
    assert_eq!(offer.audio_index, 0);

    let n = negotiate(&offer, &BOTH).unwrap();
    assert_eq!((n.codec, n.payload_type), (G711::Pcmu, 0));
    assert_eq!(n.telephone_event, Some(101));
    // The media-level c= wins over the session-level one.
    assert_eq!(n.remote_rtp, Some("192.168.1.21:10918".parse().unwrap()));
    // The offerer's order decides, whatever our list says...
    let n2 = negotiate(&offer, &[G711::Pcma, G711::Pcmu]).unwrap();
    assert_eq!(n2.codec, G711::Pcmu);
    // ...but only among codecs we accept.
    let n3 = negotiate(&offer, &[G711::Pcma]).unwrap();
    assert_eq!((n3.codec, n3.payload_type), (G711::Pcma, 8));

    let answer = build_answer(&offer, &n, "10.0.0.5".parse().unwrap(), 20002, 1, 1);
    assert!(answer.contains("m=audio 20002 RTP/AVP 0 101\r\n"));
    assert!(answer.contains("a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"));
    assert!(answer.ends_with("a=sendrecv\r\nm=video 0 RTP/AVP 97\r\n"));
    assert!(answer.split_inclusive('\n').all(|l| l.ends_with("\r\n")));
}

#[test]
fn ipv6_offer_and_answer() {
    let text = "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\n\
                m=audio 4000 RTP/AVP 8 0\r\n";
    let offer = parse(text);
    let n = negotiate(&offer, &BOTH).unwrap();
    assert_eq!((n.codec, n.payload_type), (G711::Pcma, 8));
    assert_eq!(n.remote_rtp, Some("[2001:db8::1]:4000".parse().unwrap()));
    let local = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99));
    let answer = build_answer(&offer, &n, local, 30000, 5, 6);
    assert!(answer.contains("o=switchboard 5 6 IN IP6 2001:db8::99\r\n"));
    assert!(answer.contains("c=IN IP6 2001:db8::99\r\n"));
    assert!(answer.contains("m=audio 30000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"));
}

#[test]
fn hold_offers() {
    let old_style = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
                     m=audio 6000 RTP/AVP 0\r\na=sendonly\r\n";
    let n = negotiate(&parse(old_style), &BOTH).unwrap();
    assert_eq!(n.remote_rtp, None);
    assert_eq!(n.direction, Direction::RecvOnly);

    let session_level = "v=0\r\no=- 1 2 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n\
                         a=inactive\r\nm=audio 6000 RTP/AVP 0\r\n";
    let n = negotiate(&parse(session_level), &BOTH).unwrap();
    assert_eq!(n.direction, Direction::Inactive);
    assert!(n.remote_rtp.is_some());

    let recvonly = SIPP.replace("a=rtpmap:0 PCMU/8000\r\n", "a=recvonly\r\n");
    assert_eq!(
        negotiate(&parse(&recvonly), &BOTH).unwrap().direction,
        Direction::SendOnly
    );
}

#[test]
fn lf_only_and_trailing_whitespace() {
    let text = SOFTPHONE
        .replace("\r\n", "\n")
        .replace("a=ptime:20", "a=ptime:30  ");
    let offer = parse(&text);
    let audio = offer.audio.as_ref().unwrap();
    assert_eq!(audio.ptime, Some(30));
    assert_eq!(audio.formats.len(), 4);
    assert_eq!(negotiate(&offer, &BOTH).unwrap().telephone_event, Some(101));
}

#[test]
fn missing_t_line_and_unknown_lines_are_tolerated() {
    let text = "v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nc=IN IP4 1.2.3.4\nz=0 0\nk=clear:x\n\
                m=audio 5000 RTP/AVP 0\na=x-unknown:1\na=rtcp:5001\n";
    let n = negotiate(&parse(text), &BOTH).unwrap();
    assert_eq!(n.remote_rtp, Some("1.2.3.4:5000".parse().unwrap()));
}

#[test]
fn no_common_codec() {
    let text = SIPP
        .replace("RTP/AVP 0", "RTP/AVP 18")
        .replace("0 PCMU", "18 G729");
    let offer = parse(&text);
    assert_eq!(offer.audio.as_ref().unwrap().formats[0].encoding, "G729");
    assert_eq!(negotiate(&offer, &BOTH), Err(SdpError::NoCommonCodec));
    // PCMU at the wrong clock rate is not PCMU.
    let text = SIPP
        .replace("RTP/AVP 0", "RTP/AVP 96")
        .replace("0 PCMU/8000", "96 PCMU/16000");
    assert_eq!(
        negotiate(&parse(&text), &BOTH),
        Err(SdpError::NoCommonCodec)
    );
}

#[test]
fn no_audio_and_srtp_only() {
    let video = "v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 5000 RTP/AVP 96\r\n";
    let offer = parse(video);
    assert_eq!(negotiate(&offer, &BOTH), Err(SdpError::NoAudio));
    let srtp = SIPP.replace("RTP/AVP", "RTP/SAVP");
    assert_eq!(
        negotiate(&parse(&srtp), &BOTH),
        Err(SdpError::NoCommonCrypto),
        "SAVP without a=crypto is a 488"
    );
    let gcm_only = format!(
        "{srtp}a=crypto:1 AEAD_AES_256_GCM inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n"
    );
    assert_eq!(
        negotiate(&parse(&gcm_only), &BOTH),
        Err(SdpError::NoCommonCrypto)
    );
    let dtls = SIPP.replace("RTP/AVP", "UDP/TLS/RTP/SAVPF");
    assert_eq!(
        negotiate(&parse(&dtls), &BOTH),
        Err(SdpError::UnsupportedTransport("UDP/TLS/RTP/SAVPF".into()))
    );
}

#[test]
fn an_sdes_offer_is_answered_with_our_own_key_for_the_first_usable_suite() {
    let offer = parse(&format!(
        "{}a=crypto:1 AEAD_AES_256_GCM inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n\
         a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n\
         a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n",
        SIPP.replace("RTP/AVP", "RTP/SAVP")
    ));
    let negotiated = negotiate_media(&offer, &CodecPreferences::g711_only()).unwrap();
    let sdes = negotiated.srtp.clone().expect("SRTP keys");
    assert_eq!(
        (sdes.theirs.tag, sdes.theirs.suite),
        (2, Suite::AesCm128HmacSha1_32)
    );
    assert_eq!(
        (sdes.ours.tag, sdes.ours.suite),
        (2, Suite::AesCm128HmacSha1_32)
    );
    assert_ne!(sdes.ours.key, sdes.theirs.key, "we never echo their key");
    let answer = build_media_answer(&offer, &negotiated, "10.0.0.1".parse().unwrap(), 7000, 1, 1);
    assert!(answer.contains("m=audio 7000 RTP/SAVP "), "{answer}");
    let crypto: Vec<_> = answer
        .lines()
        .filter(|l| l.starts_with("a=crypto:"))
        .collect();
    assert_eq!(crypto, [format!("a=crypto:{}", sdes.ours.to_sdp())]);
    // Reading it back as an answer gives the same key.
    let read = negotiate_media(&parse(&answer), &CodecPreferences::g711_only()).unwrap();
    assert_eq!(read.srtp.unwrap().theirs, sdes.ours);
}

#[test]
fn a_secure_offer_carries_one_key_per_suite() {
    let keys = Suite::ALL.map(|suite| CryptoAttribute::generate(suite as u32 + 1, suite));
    let offer = build_secure_media_offer(
        &CodecPreferences::g711_only(),
        "10.0.0.1".parse().unwrap(),
        7000,
        1,
        1,
        &keys,
    );
    let parsed = parse(&offer);
    let audio = parsed.audio.unwrap();
    assert_eq!(audio.protocol, "RTP/SAVP");
    assert_eq!(audio.crypto, keys);
}

#[test]
fn plain_rtp_line_preferred_over_earlier_srtp_line() {
    let text = "v=0\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n\
                m=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x\r\n\
                m=audio 5002 RTP/AVP 0 8\r\n";
    let offer = parse(text);
    assert_eq!(offer.audio.as_ref().unwrap().port, 5002);
    assert_eq!(offer.other_media, ["audio RTP/SAVP 0"]);
    assert_eq!(offer.audio_index, 1);
    let n = negotiate(&offer, &BOTH).unwrap();
    let answer = build_answer(&offer, &n, "10.0.0.1".parse().unwrap(), 7000, 1, 1);
    let m_lines: Vec<_> = answer.lines().filter(|l| l.starts_with("m=")).collect();
    assert_eq!(m_lines, ["m=audio 0 RTP/SAVP 0", "m=audio 7000 RTP/AVP 0"]);
}

#[test]
fn video_before_audio_keeps_order_in_answer() {
    let text = "v=0\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=video 5000 RTP/AVP 96\r\n\
                c=IN IP4 9.9.9.9\r\nm=audio 5002 RTP/AVP 8\r\nm=application 9 UDP/BFCP *\r\n";
    let offer = parse(text);
    assert_eq!(offer.audio.as_ref().unwrap().connection, None);
    let n = negotiate(&offer, &BOTH).unwrap();
    assert_eq!(n.remote_rtp, Some("1.2.3.4:5002".parse().unwrap()));
    let answer = build_answer(&offer, &n, "10.0.0.1".parse().unwrap(), 7000, 1, 1);
    let m_lines: Vec<_> = answer.lines().filter(|l| l.starts_with("m=")).collect();
    assert_eq!(
        m_lines,
        [
            "m=video 0 RTP/AVP 96",
            "m=audio 7000 RTP/AVP 8",
            "m=application 0 UDP/BFCP *"
        ]
    );
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let cases = [
        "",
        "\r\n\r\n",
        "hello world",
        "v=0\r\nthis is not sdp\r\n",
        "v=0\r\nc=IN IP4 not-an-ip\r\n",
        "v=0\r\nc=IN IP4 2001:db8::1\r\n",
        "v=0\r\nc=IN\r\n",
        "v=0\r\nm=audio\r\n",
        "v=0\r\nm=audio 99999 RTP/AVP 0\r\n",
        "v=0\r\nm=audio 5000 RTP/AVP 0\r\na=rtpmap:0\r\n",
        "v=0\r\nm=audio 5000 RTP/AVP 0\r\na=rtpmap:x PCMU/8000\r\n",
        "v=0\r\nm=audio 5000 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n",
        "o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n",
    ];
    for case in cases {
        assert!(
            matches!(SessionOffer::parse(case), Err(SdpError::Malformed(_))),
            "{case:?}"
        );
    }
    // Missing connection address only shows up when negotiating.
    let offer = parse("v=0\r\nm=audio 5000 RTP/AVP 0\r\n");
    assert!(matches!(
        negotiate(&offer, &BOTH),
        Err(SdpError::Malformed(_))
    ));
    // Every prefix and some byte noise of a real offer: never a panic.
    for end in 0..SOFTPHONE.len() {
        if SOFTPHONE.is_char_boundary(end) {
            if let Ok(offer) = SessionOffer::parse(&SOFTPHONE[..end]) {
                let _ = negotiate(&offer, &BOTH);
            }
        }
    }
    let mut bytes = SOFTPHONE.as_bytes().to_vec();
    for i in (0..bytes.len()).step_by(7) {
        bytes[i] = bytes[i].wrapping_mul(31).wrapping_add(i as u8);
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(offer) = SessionOffer::parse(&text) {
            let _ = negotiate(&offer, &BOTH);
        }
    }
}

#[test]
fn disabled_audio_stream_stays_disabled() {
    let text = SIPP.replace("m=audio 6000", "m=audio 0");
    let offer = parse(&text);
    let n = negotiate(&offer, &BOTH).unwrap();
    assert_eq!(n.remote_rtp, None);
    let answer = build_answer(&offer, &n, "10.0.0.1".parse().unwrap(), 7000, 1, 1);
    assert!(answer.contains("m=audio 0 RTP/AVP 0\r\n"));
}

#[test]
fn outbound_offer() {
    let sdp = build_offer(&BOTH, Some(101), "192.0.2.1".parse().unwrap(), 20000, 42, 1);
    assert_eq!(
        sdp,
        "v=0\r\no=switchboard 42 1 IN IP4 192.0.2.1\r\ns=switchboard\r\nc=IN IP4 192.0.2.1\r\n\
         t=0 0\r\nm=audio 20000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n\
         a=ptime:20\r\na=sendrecv\r\n"
    );
    // It round-trips through our own parser and negotiation.
    let offer = parse(&sdp);
    let n = negotiate(&offer, &[G711::Pcma]).unwrap();
    assert_eq!((n.payload_type, n.telephone_event), (8, Some(101)));
    assert_eq!(n.remote_rtp, Some("192.0.2.1:20000".parse().unwrap()));
}

// ---- Any-codec negotiation (negotiate_media / build_media_*) ----

/// A browser-style offer: Opus with FEC, G.722, both G.711 laws and
/// telephone-event at both clocks.
const WEBRTC_STYLE: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 198.51.100.7\r\n\
s=-\r\n\
t=0 0\r\n\
m=audio 40000 RTP/AVP 111 9 0 8 110 126\r\n\
c=IN IP4 198.51.100.7\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:110 telephone-event/48000\r\n\
a=rtpmap:126 telephone-event/8000\r\n\
a=sendrecv\r\n";

/// A trunk offering G.711 first and G.722 by static type only (no rtpmap).
const TRUNK_WITH_G722: &str = "v=0\r\n\
o=- 1 1 IN IP4 203.0.113.9\r\n\
s=-\r\n\
c=IN IP4 203.0.113.9\r\n\
t=0 0\r\n\
m=audio 30000 RTP/AVP 0 8 9 101\r\n\
a=rtpmap:101 telephone-event/8000\r\n";

fn local() -> IpAddr {
    "10.0.0.5".parse().unwrap()
}

#[test]
fn opus_wins_with_its_dynamic_type_fec_and_48k_dtmf() {
    let offer = parse(WEBRTC_STYLE);
    let n = negotiate_media(&offer, &CodecPreferences::default()).unwrap();
    assert_eq!(
        (n.codec, n.payload_type, n.telephone_event),
        (Codec::Opus, 111, Some(110))
    );
    assert!(n.peer_uses_fec);
    assert_eq!(n.peer_max_bitrate, None);
    assert_eq!(n.remote_rtp, Some("198.51.100.7:40000".parse().unwrap()));
    assert_eq!(n.to_g711(), None);

    let answer = build_media_answer(&offer, &n, local(), 20000, 7, 8);
    assert!(answer.contains(
        "m=audio 20000 RTP/AVP 111 110\r\n\
         a=rtpmap:111 opus/48000/2\r\n\
         a=fmtp:111 useinbandfec=1\r\n\
         a=rtpmap:110 telephone-event/48000\r\n\
         a=fmtp:110 0-16\r\n\
         a=ptime:20\r\na=sendrecv\r\n"
    ));
    // The offerer reads our answer back to the same choice.
    let back = negotiate_media(&parse(&answer), &CodecPreferences::default()).unwrap();
    assert_eq!(
        (back.codec, back.payload_type, back.telephone_event),
        (Codec::Opus, 111, Some(110))
    );
    assert!(back.peer_uses_fec);
}

#[test]
fn our_order_or_the_offerers() {
    let offer = parse(TRUNK_WITH_G722);
    let ours = negotiate_media(&offer, &CodecPreferences::default()).unwrap();
    assert_eq!(
        (ours.codec, ours.payload_type, ours.telephone_event),
        (Codec::G722, 9, Some(101))
    );

    let theirs = CodecPreferences {
        follow_offerer_order: true,
        ..CodecPreferences::default()
    };
    let n = negotiate_media(&offer, &theirs).unwrap();
    assert_eq!((n.codec, n.payload_type), (Codec::Pcmu, 0));

    let alaw_first = CodecPreferences::new(&[Codec::Pcma, Codec::Pcmu]);
    assert_eq!(
        negotiate_media(&offer, &alaw_first).unwrap().codec,
        Codec::Pcma
    );

    // The G.711-only configuration still answers as before.
    let g711 = negotiate_media(&offer, &CodecPreferences::g711_only()).unwrap();
    assert_eq!((g711.codec, g711.telephone_event), (Codec::Pcmu, Some(101)));
    let answer = build_media_answer(&offer, &ours, local(), 20000, 1, 1);
    assert!(answer.contains(
        "m=audio 20000 RTP/AVP 9 101\r\na=rtpmap:9 G722/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n"
    ));
}

#[test]
fn the_old_g711_api_is_unchanged_by_wideband_offers() {
    let offer = parse(WEBRTC_STYLE);
    let n = negotiate(&offer, &BOTH).unwrap();
    assert_eq!(
        (n.codec, n.payload_type, n.telephone_event),
        (G711::Pcmu, 0, Some(126))
    );
    let media = NegotiatedMedia::from(&n);
    assert_eq!(media.to_g711(), Some(n.clone()));
    assert_eq!(
        build_answer(&offer, &n, local(), 20000, 3, 4),
        build_media_answer(&offer, &media, local(), 20000, 3, 4)
    );
}

#[test]
fn opus_offered_only_with_8k_dtmf_gives_way_to_a_codec_with_dtmf() {
    // SOFTPHONE offers Opus but telephone-event only at 8000: on Opus the
    // caller's key presses would have no payload type at Opus's clock.
    let offer = parse(SOFTPHONE);
    let n = negotiate_media(&offer, &CodecPreferences::default()).unwrap();
    assert_eq!((n.codec, n.telephone_event), (Codec::Pcmu, Some(101)));

    let audio_first = CodecPreferences {
        prefer_dtmf: false,
        ..CodecPreferences::default()
    };
    let n = negotiate_media(&offer, &audio_first).unwrap();
    assert_eq!(
        (n.codec, n.payload_type, n.telephone_event),
        (Codec::Opus, 96, None)
    );
    // Its fmtp says nothing about FEC.
    assert!(!n.peer_uses_fec);
    let answer = build_media_answer(&offer, &n, local(), 20000, 1, 1);
    assert!(answer.contains("m=audio 20000 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\n"));
    assert!(!answer.contains("telephone-event"));
}

#[test]
fn opus_at_another_clock_is_not_opus() {
    let offer = parse(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.4\r\ns=-\r\nc=IN IP4 192.0.2.4\r\nt=0 0\r\n\
         m=audio 5000 RTP/AVP 100 8\r\na=rtpmap:100 opus/16000\r\n",
    );
    let n = negotiate_media(&offer, &CodecPreferences::default()).unwrap();
    assert_eq!((n.codec, n.payload_type), (Codec::Pcma, 8));
    let opus_only = CodecPreferences::new(&[Codec::Opus]);
    assert_eq!(
        negotiate_media(&offer, &opus_only),
        Err(SdpError::NoCommonCodec)
    );
}

#[test]
fn max_average_bitrate_caps_our_opus_encoder() {
    let offer = parse(&WEBRTC_STYLE.replace(
        "minptime=10;useinbandfec=1",
        "useinbandfec=0; maxaveragebitrate=20000",
    ));
    let n = negotiate_media(&offer, &CodecPreferences::default()).unwrap();
    assert!(!n.peer_uses_fec);
    assert_eq!(n.peer_max_bitrate, Some(20000));
    match n.encoder().unwrap() {
        crate::codec::Encoder::Opus(encoder) => {
            let config = encoder.config();
            assert_eq!(config.bitrate, 20000);
            assert!(config.inband_fec, "FEC stays on whatever the peer says");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(n.decoder().unwrap().sample_rate(), 48000);
}

#[test]
fn wideband_offer_lists_every_codec_and_dtmf_at_both_clocks() {
    let sdp = build_media_offer(
        &CodecPreferences::default(),
        "192.0.2.1".parse().unwrap(),
        20000,
        42,
        1,
    );
    assert_eq!(
        sdp,
        "v=0\r\no=switchboard 42 1 IN IP4 192.0.2.1\r\ns=switchboard\r\nc=IN IP4 192.0.2.1\r\n\
         t=0 0\r\nm=audio 20000 RTP/AVP 111 9 0 8 101 110\r\n\
         a=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n\
         a=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n\
         a=rtpmap:110 telephone-event/48000\r\na=fmtp:110 0-16\r\n\
         a=ptime:20\r\na=sendrecv\r\n"
    );
    // A peer answering it the way we would lands on Opus with 48 kHz DTMF.
    let n = negotiate_media(&parse(&sdp), &CodecPreferences::default()).unwrap();
    assert_eq!(
        (n.codec, n.payload_type, n.telephone_event),
        (Codec::Opus, 111, Some(110))
    );

    // Without Opus there is no 48 kHz clock, so no telephone-event/48000.
    let narrow = CodecPreferences::new(&[Codec::G722, Codec::Pcmu]);
    let sdp = build_media_offer(&narrow, "192.0.2.1".parse().unwrap(), 20000, 42, 1);
    assert!(sdp.contains("m=audio 20000 RTP/AVP 9 0 101\r\n"));
    assert!(!sdp.contains("48000"));
}

/// Found by the fuzzer (`fuzz/corpus/sip_datagram/regression-sdp-utf8`): a
/// malformed line whose 80th byte falls inside a UTF-8 character panicked
/// while quoting it in the error — from an INVITE's body, a remote crash.
#[test]
fn a_malformed_line_is_quoted_without_splitting_a_character() {
    let line = format!("m={}§ trailing", "x".repeat(77));
    let text = format!("v=0\r\n{line}\r\n");
    assert!(matches!(
        SessionOffer::parse(&text),
        Err(SdpError::Malformed(_))
    ));
}
