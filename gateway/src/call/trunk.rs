//! A carrier's outbound side: where calls to phone numbers go, with which
//! credentials and which From. `<Dial><Number>` and an E.164 `To` on the
//! Calls API leave through the first trunk that has one.

use super::dial::Target;
use crate::config::TrunkOutboundConfig;
use crate::sip::transaction::Transport;
use crate::sip::uri::{NameAddr, SipUri};

#[derive(Clone, Debug)]
pub struct OutboundTrunk {
    pub name: String,
    /// The carrier's proxy (host, port, `;transport=`).
    pub proxy: SipUri,
    pub transport: Transport,
    pub credentials: Option<(String, String)>,
    pub from_domain: String,
}

impl OutboundTrunk {
    /// Checks `[[trunks]] outbound`; errors name the field and why.
    pub fn new(
        name: &str,
        config: &TrunkOutboundConfig,
    ) -> Result<OutboundTrunk, (&'static str, String)> {
        let text = if config.proxy.starts_with("sip:") || config.proxy.starts_with("sips:") {
            config.proxy.clone()
        } else {
            format!("sip:{}", config.proxy)
        };
        let proxy = SipUri::parse(&text)
            .map_err(|e| ("proxy", format!("`{}` is not a SIP URI: {e}", config.proxy)))?;
        if proxy.user.is_some() {
            return Err(("proxy", "names a host, without a user".into()));
        }
        let transport = match proxy.param("transport").flatten() {
            None if proxy.scheme == crate::sip::uri::Scheme::Sips => Transport::Tls,
            None => Transport::Udp,
            Some(name) => Transport::from_name(name).ok_or_else(|| {
                (
                    "proxy",
                    format!("transport `{name}` is not udp, tcp or tls"),
                )
            })?,
        };
        let credentials = match (&config.username, &config.password) {
            (Some(user), Some(password)) if !user.is_empty() => {
                Some((user.clone(), password.clone()))
            }
            (None, None) => None,
            _ => return Err(("username", "username and password go together".into())),
        };
        let from_domain = match &config.from_domain {
            Some(domain) if domain.is_empty() || domain.contains(['@', ' ', '<', '>', ';']) => {
                return Err(("from_domain", format!("`{domain}` is not a host")))
            }
            Some(domain) => domain.clone(),
            None => proxy.host.to_string(),
        };
        Ok(OutboundTrunk {
            name: name.to_string(),
            proxy,
            transport,
            credentials,
            from_domain,
        })
    }

    /// Where `number` goes: `sip:NUMBER@proxy` with the proxy's transport.
    pub fn target(&self, number: &str) -> Target {
        let mut request_uri = self.proxy.clone();
        request_uri.user = Some(number.to_string());
        Target {
            request_uri,
            headers: Vec::new(),
            transport: Some(self.transport),
            secure: false,
        }
    }

    /// Our From towards the carrier: the caller ID at `from_domain`.
    pub fn from(&self, caller_id: &str) -> NameAddr {
        let user = super::transfer::caller_id_user(caller_id, "anonymous");
        NameAddr::parse(&format!("<sip:{user}@{}>", self.from_domain)).unwrap_or_else(|_| {
            NameAddr::parse("<sip:anonymous@invalid>").expect("a fixed URI parses")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(proxy: &str) -> TrunkOutboundConfig {
        TrunkOutboundConfig {
            proxy: proxy.into(),
            username: Some("acct".into()),
            password: Some("pw".into()),
            from_domain: Some("carrier.example.com".into()),
        }
    }

    #[test]
    fn numbers_go_to_the_carriers_proxy() {
        let trunk =
            OutboundTrunk::new("carrier", &config("sip:127.0.0.1:5080;transport=tcp")).unwrap();
        let target = trunk.target("+14155550100");
        assert_eq!(
            target.request_uri.to_string(),
            "sip:+14155550100@127.0.0.1:5080;transport=tcp"
        );
        assert_eq!(target.transport, Some(Transport::Tcp));
        assert_eq!(
            trunk.from("+15550100").uri.to_string(),
            "sip:+15550100@carrier.example.com"
        );
        assert_eq!(trunk.credentials, Some(("acct".into(), "pw".into())));
        assert_eq!(
            OutboundTrunk::new("c", &config("pbx.test;transport=sctp"))
                .unwrap_err()
                .0,
            "proxy"
        );
        let tls = OutboundTrunk::new("c", &config("sips:pbx.test")).unwrap();
        assert_eq!(tls.transport, Transport::Tls);
        assert_eq!(
            OutboundTrunk::new("c", &config("sip:u@pbx.test"))
                .unwrap_err()
                .0,
            "proxy"
        );
    }
}
