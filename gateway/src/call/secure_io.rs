//! The socket edge of a media leg: what goes out is protected with SRTP
//! when the leg agreed keys (SDES), what comes in is unprotected before
//! anything reads it. Plain legs pass through untouched.

use std::net::SocketAddr;

use switchboard_media::sdp::{NegotiatedMedia, Sdes};
use switchboard_media::srtp::{CryptoAttribute, SrtpContext, Suite};
use tokio::net::UdpSocket;

/// Sends one RTP packet; a full socket buffer loses it, as RTP may.
pub(super) fn send_rtp(
    socket: &UdpSocket,
    srtp: Option<&mut SrtpContext>,
    packet: &[u8],
    to: SocketAddr,
) {
    send(
        socket,
        srtp.map_or(Some(packet), |s| s.protect_rtp(packet)),
        to,
    );
}

/// Sends one RTCP compound packet.
pub(super) fn send_rtcp(
    socket: &UdpSocket,
    srtp: Option<&mut SrtpContext>,
    packet: &[u8],
    to: SocketAddr,
) {
    send(
        socket,
        srtp.map_or(Some(packet), |s| s.protect_rtcp(packet)),
        to,
    );
}

/// `None`: libsrtp refused to protect it, and it is not sent in clear.
fn send(socket: &UdpSocket, wire: Option<&[u8]>, to: SocketAddr) {
    if let Some(wire) = wire {
        let _ = socket.try_send_to(wire, to);
    }
}

/// A received datagram made plain in place: its length, or `None` when it
/// fails authentication (forged, replayed, or plain RTP on an SRTP leg),
/// which drops it.
pub(super) fn receive(srtp: Option<&mut SrtpContext>, datagram: &mut [u8]) -> Option<usize> {
    match srtp {
        None => Some(datagram.len()),
        Some(srtp) => srtp.unprotect(datagram),
    }
}

/// Our SDES keys for an offer: one per suite, best first; none when the
/// media is plain RTP.
pub(super) fn offer_keys(secure: bool) -> Vec<CryptoAttribute> {
    if !secure {
        return Vec::new();
    }
    (1..)
        .zip(Suite::ALL)
        .map(|(tag, suite)| CryptoAttribute::generate(tag, suite))
        .collect()
}

/// Checks an answer to our offer of `offered` keys (none: plain RTP) and
/// settles `negotiated`'s keys: the answer's line must pick one of ours by
/// tag and suite. Returns the SRTP context when the keys are new, so a
/// 200 repeating its 183's answer keeps the running one.
pub(super) fn answered_keys(
    offered: &[CryptoAttribute],
    previous: Option<&NegotiatedMedia>,
    negotiated: &mut NegotiatedMedia,
) -> Result<Option<SrtpContext>, String> {
    match (negotiated.srtp.take(), offered.is_empty()) {
        (None, true) => Ok(None),
        (Some(_), true) => Err("the answer is RTP/SAVP to our plain RTP offer".into()),
        (None, false) => {
            Err("the answer refuses SRTP, which the call requires (secure=true)".into())
        }
        (Some(answered), false) => {
            let ours = offered
                .iter()
                .find(|k| k.tag == answered.theirs.tag && k.suite == answered.theirs.suite)
                .ok_or("the answer's a=crypto matches none we offered")?
                .clone();
            let unchanged = previous
                .and_then(|n| n.srtp.as_ref())
                .is_some_and(|sdes| sdes.theirs == answered.theirs);
            let context = if unchanged {
                None
            } else {
                Some(SrtpContext::new(&ours, &answered.theirs).map_err(|e| e.to_string())?)
            };
            negotiated.srtp = Some(Sdes {
                ours,
                theirs: answered.theirs,
            });
            Ok(context)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_media::sdp::{negotiate_media, CodecPreferences, SessionOffer};

    fn answer(crypto: Option<&CryptoAttribute>) -> NegotiatedMedia {
        let (proto, line) = match crypto {
            Some(key) => ("RTP/SAVP", format!("a=crypto:{}\r\n", key.to_sdp())),
            None => ("RTP/AVP", String::new()),
        };
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 {proto} 0\r\n{line}"
        );
        negotiate_media(
            &SessionOffer::parse(&sdp).unwrap(),
            &CodecPreferences::g711_only(),
        )
        .unwrap()
    }

    #[test]
    fn an_answer_must_match_what_we_offered() {
        let offered = offer_keys(true);
        assert_eq!(offered.len(), 2);
        assert!(offer_keys(false).is_empty());
        let theirs = CryptoAttribute::generate(2, Suite::AesCm128HmacSha1_32);

        let mut plain = answer(None);
        assert!(answered_keys(&[], None, &mut plain).unwrap().is_none());
        assert!(
            answered_keys(&offered, None, &mut answer(None)).is_err(),
            "SRTP required"
        );
        assert!(answered_keys(&[], None, &mut answer(Some(&theirs))).is_err());
        let wrong_tag = CryptoAttribute::generate(7, Suite::AesCm128HmacSha1_32);
        assert!(answered_keys(&offered, None, &mut answer(Some(&wrong_tag))).is_err());

        let mut first = answer(Some(&theirs));
        assert!(answered_keys(&offered, None, &mut first).unwrap().is_some());
        let sdes = first.srtp.clone().unwrap();
        assert_eq!(
            sdes.ours, offered[1],
            "our key is the offered line they picked"
        );
        assert_eq!(sdes.theirs, theirs);
        // The 200 repeating the 183's answer keeps the running context.
        let mut again = answer(Some(&theirs));
        assert!(answered_keys(&offered, Some(&first), &mut again)
            .unwrap()
            .is_none());
    }
}
