//! SIP requests and responses: typed start lines, ordered headers, body, and
//! accessors for the headers every layer needs.

use std::fmt;
use std::str::FromStr;

use super::headers::Headers;
use super::uri::{
    find_param, parse_params, split_host_port, tag_param, write_params, Host, NameAddr, Params,
    SipUri,
};
use super::SipError;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Update,
    Refer,
    Notify,
    Subscribe,
    Message,
    Prack,
    Publish,
    Other(String),
}

impl FromStr for Method {
    type Err = SipError;

    fn from_str(text: &str) -> Result<Method, SipError> {
        let method = match text {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "REFER" => Method::Refer,
            "NOTIFY" => Method::Notify,
            "SUBSCRIBE" => Method::Subscribe,
            "MESSAGE" => Method::Message,
            "PRACK" => Method::Prack,
            "PUBLISH" => Method::Publish,
            other => {
                // RFC 3261 token characters; methods are case-sensitive.
                let token = !other.is_empty()
                    && other
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c));
                if !token {
                    return Err(SipError::new(format!("invalid method `{other}`")));
                }
                Method::Other(other.to_string())
            }
        };
        Ok(method)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Refer => "REFER",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Message => "MESSAGE",
            Method::Prack => "PRACK",
            Method::Publish => "PUBLISH",
            Method::Other(other) => other,
        };
        f.write_str(text)
    }
}

/// One Via value: `SIP/2.0/UDP host:port;branch=…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Params,
}

/// RFC 3261 branch prefix that marks a branch as globally unique.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

impl Via {
    pub fn parse(text: &str) -> Result<Via, SipError> {
        let text = text.trim();
        let (protocol, rest) = text
            .split_once(|c: char| c.is_whitespace())
            .ok_or_else(|| SipError::new(format!("invalid Via `{text}`")))?;
        let mut parts = protocol.split('/').map(str::trim);
        let (name, version, transport) = (parts.next(), parts.next(), parts.next());
        if name != Some("SIP") || version != Some("2.0") || transport.is_none_or(str::is_empty) {
            return Err(SipError::new(format!("invalid Via protocol `{protocol}`")));
        }
        let rest = rest.trim();
        let (sent_by, params) = rest.split_once(';').unwrap_or((rest, ""));
        let (host, port) = split_host_port(sent_by.trim())?;
        Ok(Via {
            transport: transport.unwrap_or_default().to_ascii_uppercase(),
            host,
            port,
            params: parse_params(params)?,
        })
    }

    pub fn branch(&self) -> Option<&str> {
        find_param(&self.params, "branch").flatten()
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        match self
            .params
            .iter_mut()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
        {
            Some(entry) => entry.1 = value,
            None => self.params.push((name.to_string(), value)),
        }
    }

    /// `host:port` as a comparable string.
    pub fn sent_by(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.to_string(),
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.sent_by())?;
        write_params(f, &self.params)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: SipUri,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SipMessage {
    Request(Request),
    Response(Response),
}

/// Accessors shared by requests and responses.
pub trait HeaderAccess {
    fn headers(&self) -> &Headers;

    fn call_id(&self) -> Result<&str, SipError> {
        self.headers()
            .get("Call-ID")
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| SipError::new("missing Call-ID"))
    }

    fn cseq(&self) -> Result<(u32, Method), SipError> {
        let value = self
            .headers()
            .get("CSeq")
            .ok_or_else(|| SipError::new("missing CSeq"))?;
        let mut parts = value.split_whitespace();
        let number = parts
            .next()
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n < (1 << 31))
            .ok_or_else(|| SipError::new(format!("invalid CSeq `{value}`")))?;
        let method = parts
            .next()
            .ok_or_else(|| SipError::new(format!("CSeq without method `{value}`")))?
            .parse()?;
        if parts.next().is_some() {
            return Err(SipError::new(format!("invalid CSeq `{value}`")));
        }
        Ok((number, method))
    }

    fn from(&self) -> Result<NameAddr, SipError> {
        NameAddr::parse(
            self.headers()
                .get("From")
                .ok_or_else(|| SipError::new("missing From"))?,
        )
    }

    fn to(&self) -> Result<NameAddr, SipError> {
        NameAddr::parse(
            self.headers()
                .get("To")
                .ok_or_else(|| SipError::new("missing To"))?,
        )
    }

    /// To's tag, without parsing the address (see [`tag_param`]).
    fn tag_in_to(&self) -> Option<&str> {
        self.headers().get("To").and_then(tag_param)
    }

    /// From's tag, without parsing the address.
    fn tag_in_from(&self) -> Option<&str> {
        self.headers().get("From").and_then(tag_param)
    }

    fn top_via(&self) -> Result<Via, SipError> {
        let vias = self.headers().get_all_split("Via");
        Via::parse(vias.first().ok_or_else(|| SipError::new("missing Via"))?)
    }

    fn contact(&self) -> Option<NameAddr> {
        let contacts = self.headers().get_all_split("Contact");
        contacts
            .first()
            .and_then(|value| NameAddr::parse(value).ok())
    }

    fn content_type(&self) -> Option<&str> {
        self.headers().get("Content-Type").map(str::trim)
    }
}

impl HeaderAccess for Request {
    fn headers(&self) -> &Headers {
        &self.headers
    }
}

impl HeaderAccess for Response {
    fn headers(&self) -> &Headers {
        &self.headers
    }
}

impl Request {
    pub fn call_id(&self) -> Result<&str, SipError> {
        HeaderAccess::call_id(self)
    }
    pub fn cseq(&self) -> Result<(u32, Method), SipError> {
        HeaderAccess::cseq(self)
    }
    pub fn from(&self) -> Result<NameAddr, SipError> {
        HeaderAccess::from(self)
    }
    pub fn to(&self) -> Result<NameAddr, SipError> {
        HeaderAccess::to(self)
    }
    pub fn tag_in_to(&self) -> Option<&str> {
        HeaderAccess::tag_in_to(self)
    }
    pub fn tag_in_from(&self) -> Option<&str> {
        HeaderAccess::tag_in_from(self)
    }
    pub fn top_via(&self) -> Result<Via, SipError> {
        HeaderAccess::top_via(self)
    }
    pub fn contact(&self) -> Option<NameAddr> {
        HeaderAccess::contact(self)
    }

    pub fn max_forwards(&self) -> Option<u32> {
        self.headers
            .get("Max-Forwards")
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let start = format!("{} {} SIP/2.0", self.method, self.uri);
        serialize(&start, &self.headers, &self.body)
    }
}

impl Response {
    pub fn call_id(&self) -> Result<&str, SipError> {
        HeaderAccess::call_id(self)
    }
    pub fn cseq(&self) -> Result<(u32, Method), SipError> {
        HeaderAccess::cseq(self)
    }
    pub fn from(&self) -> Result<NameAddr, SipError> {
        HeaderAccess::from(self)
    }
    pub fn to(&self) -> Result<NameAddr, SipError> {
        HeaderAccess::to(self)
    }
    pub fn top_via(&self) -> Result<Via, SipError> {
        HeaderAccess::top_via(self)
    }
    pub fn contact(&self) -> Option<NameAddr> {
        HeaderAccess::contact(self)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let start = format!("SIP/2.0 {} {}", self.status, self.reason);
        serialize(&start, &self.headers, &self.body)
    }
}

impl SipMessage {
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            SipMessage::Request(request) => request.to_bytes(),
            SipMessage::Response(response) => response.to_bytes(),
        }
    }

    pub fn headers(&self) -> &Headers {
        match self {
            SipMessage::Request(request) => &request.headers,
            SipMessage::Response(response) => &response.headers,
        }
    }
}

/// Writes a message with exactly one, correct Content-Length.
fn serialize(start: &str, headers: &Headers, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(start.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers.iter() {
        if name.eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.uri)
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_ipv6_and_params() {
        let via = Via::parse("SIP/2.0/udp [2001:db8::9]:5070;branch=z9hG4bKabc;rport").unwrap();
        assert_eq!(via.transport, "UDP");
        assert_eq!(via.branch(), Some("z9hG4bKabc"));
        assert_eq!(via.param("rport"), Some(None));
        assert_eq!(
            via.to_string(),
            "SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bKabc;rport"
        );
        assert!(Via::parse("SIP/3.0/UDP host").is_err());
    }

    #[test]
    fn methods_parse_case_sensitively() {
        assert_eq!("INVITE".parse::<Method>().unwrap(), Method::Invite);
        assert_eq!(
            "invite".parse::<Method>().unwrap(),
            Method::Other("invite".into())
        );
        assert!("IN VITE".parse::<Method>().is_err());
    }
}
