//! Where calls may be sent and how a target URI becomes an INVITE: the
//! operator's allow-list (the toll-fraud guard), the target's parts (URI
//! parameters kept, `?X-…` headers moved into the INVITE), and what every
//! call shares for dialing out.

use std::net::SocketAddr;
use std::sync::Arc;

use regex::Regex;

use super::RtpPorts;
use crate::endpoint::MediaSettings;
use crate::sip::resolve::Resolver;
use crate::sip::transaction::Transport;
use crate::sip::uri::{NameAddr, Scheme, SipUri};

/// Longest target URI, headers included (PROTOCOLS.md §1: under 255 for
/// the URI, under 1024 for its headers).
const MAX_TARGET_LEN: usize = 1280;
/// Most headers a target may carry.
const MAX_TARGET_HEADERS: usize = 16;

/// Which ringback callers hear while a transfer rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ringback {
    Us,
    Eu,
    Uk,
    None,
}

/// The operator's rules for outbound calls.
#[derive(Clone, Debug)]
pub struct DialPolicy {
    /// Targets a bot (or TwiML, or the API) may dial: regexes over the
    /// whole target URI. Empty: bots may dial nothing.
    pub allow: Vec<Regex>,
    pub ringback: Ringback,
    /// Carriers phone numbers go out through; the first one is used.
    pub trunks: Vec<super::trunk::OutboundTrunk>,
}

impl Default for DialPolicy {
    fn default() -> Self {
        DialPolicy {
            allow: Vec::new(),
            ringback: Ringback::Us,
            trunks: Vec::new(),
        }
    }
}

impl DialPolicy {
    pub fn allows(&self, uri: &str) -> bool {
        self.allow.iter().any(|pattern| pattern.is_match(uri))
    }
}

/// What every call shares: media settings, RTP ports, the dial policy and
/// the clients it dials and calls webhooks with.
pub struct CallShared {
    pub media: MediaSettings,
    pub rtp_ports: Arc<RtpPorts>,
    /// What bots may dial; a reload publishes a new one, which calls in
    /// progress obey too.
    pub dial: tokio::sync::watch::Receiver<Arc<DialPolicy>>,
    pub http: reqwest::Client,
    pub resolver: Resolver,
    /// Where we listen, to pick our address for an outbound leg.
    pub local: Vec<(Transport, SocketAddr)>,
    /// Our registrar: dialing one of its users rings their phones.
    pub registrar: Option<Arc<crate::registrar::service::Registrar>>,
    /// Our outbound registrations: a dial may go out through one.
    pub registry: Arc<crate::registration::manager::Registry>,
    /// Every call as a Calls API resource.
    pub call_resources: Arc<super::registry::CallRegistry>,
    /// `[api] account_sid` / `auth_token`: webhooks name the account and
    /// are signed with the token.
    pub twilio: Option<crate::config::ApiCredentials>,
    /// `[api] recording_dir`: where `Record=true` placed calls are recorded.
    pub api_recordings: Option<std::path::PathBuf>,
    /// `<Play>` clips, decoded once for every call.
    pub clips: Arc<super::play::ClipCache>,
}

impl CallShared {
    /// Our SIP address for a leg to `peer`: same transport and family.
    pub fn local_for(&self, transport: Transport, peer: SocketAddr) -> Option<SocketAddr> {
        let same_family = |addr: &SocketAddr| addr.is_ipv4() == peer.is_ipv4();
        self.local
            .iter()
            .filter(|(t, _)| *t == transport)
            .map(|(_, addr)| *addr)
            .find(same_family)
    }

    /// Whether `host` (a URI's host) names this gateway: one of the
    /// addresses we listen on or advertise. With no `[registrar] domains`
    /// this is what makes `sip:bob@HOST` one of our users rather than a
    /// bob on some other PBX.
    pub fn is_own_host(&self, host: &str) -> bool {
        is_own_host(host, self.media.public_ip, &self.local)
    }
}

fn is_own_host(
    host: &str,
    public_ip: Option<std::net::IpAddr>,
    local: &[(Transport, SocketAddr)],
) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(ip) = host.parse::<std::net::IpAddr>() else {
        return false;
    };
    if public_ip == Some(ip) || local.iter().any(|(_, a)| a.ip() == ip) {
        return true;
    }
    // A wildcard listener answers on every local address: the kernel knows
    // which those are (binding to any other fails).
    local.iter().any(|(_, a)| a.ip().is_unspecified()) && std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// A dial target taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The Request-URI: the target with its parameters, without headers.
    pub request_uri: SipUri,
    /// `X-…` and `User-to-User` headers for the INVITE.
    pub headers: Vec<(String, String)>,
    /// `;transport=` when given.
    pub transport: Option<Transport>,
    /// `;secure=true`: the media must be SRTP (keys in SDP, so only over
    /// TLS). The parameter is ours and is not sent on.
    pub secure: bool,
}

impl Target {
    pub fn to_header(&self) -> NameAddr {
        NameAddr {
            display: None,
            uri: self.request_uri.clone(),
            params: Vec::new(),
        }
    }
}

/// Parses a target URI such as
/// `sip:agent@pbx.example.com;transport=tcp?X-Case=42&User-to-User=…`.
/// Headers other than `X-…` and `User-to-User` are refused (a target must
/// not forge Route, From or Authorization); so are `tel:` targets (they
/// need a trunk's outbound side). `sips:` means TLS.
pub fn parse_target(text: &str) -> Result<Target, String> {
    let text = text.trim();
    if text.len() > MAX_TARGET_LEN {
        return Err(format!("target is longer than {MAX_TARGET_LEN} characters"));
    }
    let mut uri = SipUri::parse(text).map_err(|e| format!("not a SIP URI: {e}"))?;
    if uri.scheme == Scheme::Tel {
        return Err("tel: targets need a trunk to send them through".into());
    }
    if matches!(uri.host, crate::sip::uri::Host::Domain(ref d) if d.is_empty()) {
        return Err("target has no host".into());
    }
    let transport = match uri.transport() {
        None if uri.scheme == Scheme::Sips => Some(Transport::Tls),
        None => None,
        Some(name) => Some(
            Transport::from_name(name)
                .ok_or_else(|| format!("transport `{name}` is not udp, tcp or tls"))?,
        ),
    };
    if uri.scheme == Scheme::Sips && transport != Some(Transport::Tls) {
        return Err("a sips: target must be reached over TLS".into());
    }
    let secure = match uri.param("secure") {
        None => false,
        Some(Some(value)) if value.eq_ignore_ascii_case("true") => true,
        Some(Some(value)) if value.eq_ignore_ascii_case("false") => false,
        Some(_) => return Err("secure= is true or false".into()),
    };
    uri.params
        .retain(|(name, _)| !name.eq_ignore_ascii_case("secure"));
    if secure && transport != Some(Transport::Tls) {
        return Err(
            "secure=true needs transport=tls (or sips:): SRTP keys travel in the SDP".into(),
        );
    }
    if uri.headers.len() > MAX_TARGET_HEADERS {
        return Err(format!(
            "target carries more than {MAX_TARGET_HEADERS} headers"
        ));
    }
    let mut headers = Vec::with_capacity(uri.headers.len());
    for (name, value) in std::mem::take(&mut uri.headers) {
        let allowed =
            crate::sip::headers::is_x_header(&name) || name.eq_ignore_ascii_case("User-to-User");
        if !allowed {
            return Err(format!(
                "header `{name}` may not be set from a target (only X- headers and User-to-User)"
            ));
        }
        let valid_name = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.!%*+`'~".contains(c));
        if !valid_name || value.chars().any(|c| c.is_control()) {
            return Err(format!("header `{name}` is malformed"));
        }
        headers.push((name, value));
    }
    Ok(Target {
        request_uri: uri,
        headers,
        transport,
        secure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_move_out_of_the_uri() {
        let target = parse_target(
            "sip:agent@127.0.0.1:5090;transport=tcp?X-Case=42&User-to-User=abc%3Bencoding%3Dhex",
        )
        .unwrap();
        assert_eq!(
            target.request_uri.to_string(),
            "sip:agent@127.0.0.1:5090;transport=tcp"
        );
        assert_eq!(target.transport, Some(Transport::Tcp));
        assert_eq!(
            target.headers,
            vec![
                ("X-Case".to_string(), "42".to_string()),
                ("User-to-User".to_string(), "abc;encoding=hex".to_string())
            ]
        );
        assert_eq!(
            target.to_header().to_string(),
            "<sip:agent@127.0.0.1:5090;transport=tcp>"
        );
    }

    #[test]
    fn dangerous_or_unsupported_targets_are_refused() {
        for bad in [
            "sip:a@b?Route=%3Csip:evil%3E",
            "sip:a@b?From=x",
            "sip:a@b?X-A=1%0D%0AVia:%20x",
            "tel:+15551234567",
            "sips:a@b;transport=tcp",
            "sip:a@b;secure=true",
            "sip:a@b;transport=tcp;secure=true",
            "sip:a@b;transport=tls;secure=maybe",
            "sip:a@b;transport=sctp",
            "http://example.com",
            "sip:a@b?X%C3%A9=1",
            "sip:a@b?%FF%FE=1",
            "sip:a@b?X-%C3%A9=1",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn own_hosts_are_our_addresses_only() {
        let on_loopback = [(Transport::Udp, "127.0.0.1:5060".parse().unwrap())];
        assert!(is_own_host("127.0.0.1", None, &on_loopback));
        assert!(!is_own_host("[::1]", None, &on_loopback));
        assert!(!is_own_host("pbx.example.com", None, &on_loopback));
        assert!(!is_own_host("192.0.2.7", None, &on_loopback));
        let public = Some("203.0.113.5".parse().unwrap());
        assert!(is_own_host("203.0.113.5", public, &on_loopback));
        let wildcard = [(Transport::Tcp, "0.0.0.0:5060".parse().unwrap())];
        assert!(is_own_host("127.0.0.1", None, &wildcard));
        assert!(
            !is_own_host("192.0.2.7", None, &wildcard),
            "TEST-NET-1 is on no interface here"
        );
    }

    #[test]
    fn tls_and_secure_targets() {
        let target = parse_target("sip:agent@pbx.example.com;transport=tls;secure=true").unwrap();
        assert_eq!(target.transport, Some(Transport::Tls));
        assert!(target.secure);
        assert_eq!(
            target.request_uri.to_string(),
            "sip:agent@pbx.example.com;transport=tls",
            "secure= is ours, not the far end's"
        );
        let sips = parse_target("sips:agent@pbx.example.com").unwrap();
        assert_eq!((sips.transport, sips.secure), (Some(Transport::Tls), false));
    }

    #[test]
    fn allow_list_matches_whole_uris() {
        let policy = DialPolicy {
            allow: vec![Regex::new(r"^sip:[^@]+@pbx\.example\.com(;|\?|$)").unwrap()],
            ringback: Ringback::Us,
            trunks: Vec::new(),
        };
        assert!(policy.allows("sip:agent@pbx.example.com;transport=tcp"));
        assert!(!policy.allows("sip:agent@pbx.example.com.evil.net"));
        assert!(!DialPolicy::default().allows("sip:a@127.0.0.1"));
    }
}
