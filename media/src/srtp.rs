//! SRTP (RFC 3711) keyed by SDES (RFC 4568): the `a=crypto` attribute, our
//! keys, and a context per media leg that protects what we send and
//! unprotects what arrives. The cryptography is libsrtp2's (Debian's
//! `libsrtp2`, through the `srtp` crate); this module only frames it.
//!
//! Debian builds libsrtp2 without OpenSSL, so the AEAD (GCM) suites are not
//! available: we offer and accept AES_CM_128_HMAC_SHA1_80 and _32.

use std::io::Cursor;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore;

/// Master key (16 bytes) and master salt (14 bytes), as `inline:` carries them.
pub const MASTER_LEN: usize = 30;

/// Room libsrtp may add to a packet: the authentication tag, the SRTCP
/// index and an MKI.
const MAX_TRAILER: usize = 144;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
}

impl Suite {
    /// Best first: the 80-bit tag is the one every implementation has.
    pub const ALL: [Suite; 2] = [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32];

    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    pub fn parse(name: &str) -> Option<Suite> {
        Suite::ALL
            .into_iter()
            .find(|suite| suite.name().eq_ignore_ascii_case(name))
    }

    fn policy(self, key: &[u8]) -> srtp::StreamPolicy<'_> {
        let rtp = match self {
            Suite::AesCm128HmacSha1_80 => srtp::CryptoPolicy::aes_cm_128_hmac_sha1_80(),
            Suite::AesCm128HmacSha1_32 => srtp::CryptoPolicy::aes_cm_128_hmac_sha1_32(),
        };
        srtp::StreamPolicy {
            rtp,
            // RFC 4568 §6.2.2: SRTCP keeps the 80-bit tag with either suite.
            rtcp: srtp::CryptoPolicy::aes_cm_128_hmac_sha1_80(),
            key,
            ..Default::default()
        }
    }
}

/// One `a=crypto:` line.
#[derive(Clone, PartialEq, Eq)]
pub struct CryptoAttribute {
    pub tag: u32,
    pub suite: Suite,
    pub key: [u8; MASTER_LEN],
}

impl std::fmt::Debug for CryptoAttribute {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoAttribute")
            .field("tag", &self.tag)
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl CryptoAttribute {
    /// A fresh random key for `suite` under `tag`.
    pub fn generate(tag: u32, suite: Suite) -> CryptoAttribute {
        let mut key = [0u8; MASTER_LEN];
        rand::rng().fill_bytes(&mut key);
        CryptoAttribute { tag, suite, key }
    }

    /// Parses the value after `a=crypto:`; `None` for a suite or key
    /// parameter we cannot use (an MKI, a second key, session parameters we
    /// do not implement), which the offer's other lines may make up for.
    pub fn parse(value: &str) -> Option<CryptoAttribute> {
        let mut parts = value.split_whitespace();
        let tag = parts.next()?.parse::<u32>().ok()?;
        let suite = Suite::parse(parts.next()?)?;
        let key_params = parts.next()?;
        // Session parameters (UNENCRYPTED_SRTP, KDR=…, WSH=…) change what
        // the keys mean; we implement none of them.
        if parts.next().is_some() || key_params.contains(';') {
            return None;
        }
        let inline = key_params.strip_prefix("inline:")?;
        let mut fields = inline.split('|');
        let encoded = fields.next()?;
        for field in fields {
            // A lifetime is fine (libsrtp enforces 2^48 anyway); an MKI is not.
            if field.contains(':') {
                return None;
            }
        }
        let decoded = STANDARD.decode(encoded).ok()?;
        let key: [u8; MASTER_LEN] = decoded.try_into().ok()?;
        Some(CryptoAttribute { tag, suite, key })
    }

    /// The value for `a=crypto:`.
    pub fn to_sdp(&self) -> String {
        format!(
            "{} {} inline:{}",
            self.tag,
            self.suite.name(),
            STANDARD.encode(self.key)
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("SRTP: {0}")]
pub struct SrtpError(String);

/// Both directions of one media leg: our key for what we send, the peer's
/// for what it sends.
pub struct SrtpContext {
    outbound: srtp::Session,
    inbound: srtp::Session,
    /// Where packets are protected; its capacity is kept, so sending
    /// allocates nothing once the first packet went out.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpContext")
    }
}

impl SrtpContext {
    /// `ours` keys what we send, `theirs` what we receive; the suite is
    /// the one both lines name.
    pub fn new(ours: &CryptoAttribute, theirs: &CryptoAttribute) -> Result<SrtpContext, SrtpError> {
        let outbound = srtp::Session::with_outbound_template(ours.suite.policy(&ours.key))
            .map_err(|e| SrtpError(format!("outbound session: {e}")))?;
        let inbound = srtp::Session::with_inbound_template(theirs.suite.policy(&theirs.key))
            .map_err(|e| SrtpError(format!("inbound session: {e}")))?;
        Ok(SrtpContext {
            outbound,
            inbound,
            scratch: Vec::with_capacity(1500 + MAX_TRAILER),
        })
    }

    /// `packet` (RTP) as SRTP, or `None` if libsrtp refused it.
    pub fn protect_rtp(&mut self, packet: &[u8]) -> Option<&[u8]> {
        self.scratch.clear();
        self.scratch.extend_from_slice(packet);
        self.scratch.reserve(MAX_TRAILER);
        self.outbound.protect(&mut self.scratch).ok()?;
        Some(&self.scratch)
    }

    /// `packet` (RTCP) as SRTCP.
    pub fn protect_rtcp(&mut self, packet: &[u8]) -> Option<&[u8]> {
        self.scratch.clear();
        self.scratch.extend_from_slice(packet);
        self.scratch.reserve(MAX_TRAILER);
        self.outbound.protect_rtcp(&mut self.scratch).ok()?;
        Some(&self.scratch)
    }

    /// Decrypts and authenticates `datagram` in place, RTP or RTCP told
    /// apart by its packet type (RFC 5761, for rtcp-mux); its new length,
    /// or `None` when it fails authentication or replays an old packet.
    pub fn unprotect(&mut self, datagram: &mut [u8]) -> Option<usize> {
        if datagram.len() < 12 {
            return None;
        }
        let rtcp = is_rtcp(datagram);
        let len = datagram.len();
        let mut cursor = Cursor::new(datagram);
        cursor.set_position(len as u64);
        let result = if rtcp {
            self.inbound.unprotect_rtcp(&mut cursor)
        } else {
            self.inbound.unprotect(&mut cursor)
        };
        result.ok()?;
        Some(cursor.position() as usize)
    }
}

/// RTCP packet types 192–223 sit where RTP has marker + payload type
/// (RFC 5761 §4): an RTP payload type in that range is never used.
pub fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= 2 && (192..=223).contains(&datagram[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, payload: u8) -> Vec<u8> {
        let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0x11, 0x22, 0x33, 0x44];
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        packet.extend(std::iter::repeat_n(payload, 160));
        packet
    }

    fn pair(suite: Suite) -> (SrtpContext, SrtpContext) {
        let a = CryptoAttribute::generate(1, suite);
        let b = CryptoAttribute::generate(1, suite);
        (
            SrtpContext::new(&a, &b).unwrap(),
            SrtpContext::new(&b, &a).unwrap(),
        )
    }

    #[test]
    fn both_suites_round_trip_rtp_and_rtcp() {
        for suite in Suite::ALL {
            let (mut alice, mut bob) = pair(suite);
            for seq in 0..50u16 {
                let sent = rtp(seq, seq as u8);
                let mut wire = alice.protect_rtp(&sent).unwrap().to_vec();
                let tag = if suite == Suite::AesCm128HmacSha1_80 {
                    10
                } else {
                    4
                };
                assert_eq!(wire.len(), sent.len() + tag);
                assert_ne!(&wire[12..sent.len()], &sent[12..], "payload encrypted");
                let len = bob.unprotect(&mut wire).unwrap();
                assert_eq!(&wire[..len], &sent[..]);
            }
            // A receiver report, both ways of telling it from RTP.
            let report = [0x80, 201, 0, 1, 0x11, 0x22, 0x33, 0x44];
            let mut wire = bob.protect_rtcp(&report).unwrap().to_vec();
            assert!(is_rtcp(&wire));
            let len = alice.unprotect(&mut wire).unwrap();
            assert_eq!(&wire[..len], &report[..]);
        }
    }

    #[test]
    fn tampered_replayed_or_wrongly_keyed_packets_are_refused() {
        let (mut alice, mut bob) = pair(Suite::AesCm128HmacSha1_80);
        let wire = alice.protect_rtp(&rtp(7, 1)).unwrap().to_vec();
        let mut tampered = wire.clone();
        tampered[20] ^= 1;
        assert!(bob.unprotect(&mut tampered).is_none());
        let mut good = wire.clone();
        assert!(bob.unprotect(&mut good).is_some());
        let mut replayed = wire.clone();
        assert!(bob.unprotect(&mut replayed).is_none(), "replay refused");
        let (_, mut stranger) = pair(Suite::AesCm128HmacSha1_80);
        let mut other = alice.protect_rtp(&rtp(8, 1)).unwrap().to_vec();
        assert!(stranger.unprotect(&mut other).is_none());
        assert!(bob.unprotect(&mut [0u8; 5]).is_none());
    }

    #[test]
    fn crypto_lines_parse_and_print() {
        let ours = CryptoAttribute::generate(3, Suite::AesCm128HmacSha1_32);
        let line = ours.to_sdp();
        assert!(line.starts_with("3 AES_CM_128_HMAC_SHA1_32 inline:"));
        assert_eq!(CryptoAttribute::parse(&line), Some(ours.clone()));
        // RFC 4568's example, with a lifetime.
        let rfc = "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20";
        let parsed = CryptoAttribute::parse(rfc).unwrap();
        assert_eq!((parsed.tag, parsed.suite), (1, Suite::AesCm128HmacSha1_80));
        for unusable in [
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32",
            "1 AEAD_AES_256_GCM inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
            "1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=",
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR KDR=1",
            "x AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
            "",
        ] {
            assert!(CryptoAttribute::parse(unusable).is_none(), "{unusable}");
        }
        assert!(!format!("{ours:?}").contains("inline"), "no key in Debug");
    }
}
