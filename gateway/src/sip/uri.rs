//! SIP and tel URIs and name-addr values (RFC 3261 §19.1, §20.10), with IPv6
//! hosts in brackets both ways.

use std::fmt;
use std::net::IpAddr;

use super::SipError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Domain(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Domain(name) => f.write_str(name),
        }
    }
}

impl Host {
    /// Parses `host` as written in a URI or Via: `[v6]`, v4 or a name.
    pub fn parse(text: &str) -> Result<Host, SipError> {
        if let Some(inner) = text.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| SipError::new(format!("unterminated IPv6 host `{text}`")))?;
            return inner
                .parse()
                .map(Host::Ip)
                .map_err(|_| SipError::new(format!("invalid IPv6 host `{text}`")));
        }
        if text.is_empty() {
            return Err(SipError::new("empty host"));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        let valid = text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !valid {
            return Err(SipError::new(format!("invalid host `{text}`")));
        }
        Ok(Host::Domain(text.to_string()))
    }
}

/// Splits `host[:port]` where host may be a bracketed IPv6 address.
pub fn split_host_port(text: &str) -> Result<(Host, Option<u16>), SipError> {
    let (host, port) = if text.starts_with('[') {
        match text.find(']') {
            Some(end) => {
                let rest = &text[end + 1..];
                let port = match rest.strip_prefix(':') {
                    Some(port) => Some(port),
                    None if rest.is_empty() => None,
                    None => return Err(SipError::new(format!("junk after IPv6 host in `{text}`"))),
                };
                (&text[..=end], port)
            }
            None => return Err(SipError::new(format!("unterminated IPv6 host `{text}`"))),
        }
    } else {
        match text.rsplit_once(':') {
            // A bare IPv6 address without brackets has several colons.
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            _ => (text, None),
        }
    };
    let port = match port {
        Some(port) => Some(
            port.trim()
                .parse::<u16>()
                .map_err(|_| SipError::new(format!("invalid port in `{text}`")))?,
        ),
        None => None,
    };
    Ok((Host::parse(host.trim())?, port))
}

pub type Params = Vec<(String, Option<String>)>;

/// Parses `;a=b;c` into pairs; empty names are rejected.
pub fn parse_params(text: &str) -> Result<Params, SipError> {
    param_pairs(text)
        .map(|pair| pair.map(|(name, value)| (name.to_string(), value.map(str::to_string))))
        .collect()
}

/// `;a=b;c` as borrowed pairs, in order; an empty name is an error.
fn param_pairs(text: &str) -> impl Iterator<Item = Result<(&str, Option<&str>), SipError>> + '_ {
    split_unquoted(text, b';')
        .into_iter()
        .map(str::trim)
        .filter(|piece| !piece.is_empty())
        .map(move |piece| {
            let (name, value) = match piece.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim())),
                None => (piece, None),
            };
            if name.is_empty() {
                return Err(SipError::new(format!(
                    "parameter without a name in `{text}`"
                )));
            }
            Ok((name, value))
        })
}

pub fn write_params(f: &mut fmt::Formatter<'_>, params: &Params) -> fmt::Result {
    for (name, value) in params {
        match value {
            Some(value) => write!(f, ";{name}={value}")?,
            None => write!(f, ";{name}")?,
        }
    }
    Ok(())
}

pub fn find_param<'a>(params: &'a Params, name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_deref())
}

/// Splits on `sep` outside double quotes and angle brackets. Scans bytes,
/// not chars: every delimiter is ASCII, and no byte of a multi-byte UTF-8
/// character is, so each cut falls on a character boundary.
pub fn split_unquoted(text: &str, sep: u8) -> Vec<&str> {
    debug_assert!(sep.is_ascii());
    let mut parts = Vec::new();
    let (mut quoted, mut escaped, mut angle, mut start) = (false, false, 0usize, 0);
    for (index, &byte) in text.as_bytes().iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match byte {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'<' if !quoted => angle += 1,
            b'>' if !quoted => angle = angle.saturating_sub(1),
            _ if byte == sep && !quoted && angle == 0 => {
                parts.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipUri {
    pub scheme: Scheme,
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Params,
    pub headers: Vec<(String, String)>,
}

impl SipUri {
    pub fn parse(text: &str) -> Result<SipUri, SipError> {
        let text = text.trim();
        let (scheme, rest) = text
            .split_once(':')
            .ok_or_else(|| SipError::new(format!("URI without a scheme: `{text}`")))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "sip" => Scheme::Sip,
            "sips" => Scheme::Sips,
            "tel" => Scheme::Tel,
            other => return Err(SipError::new(format!("unsupported URI scheme `{other}`"))),
        };
        if rest.is_empty() || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SipError::new(format!("invalid URI `{text}`")));
        }
        if scheme == Scheme::Tel {
            let (number, params) = rest.split_once(';').unwrap_or((rest, ""));
            return Ok(SipUri {
                scheme,
                user: Some(number.to_string()),
                password: None,
                host: Host::Domain(String::new()),
                port: None,
                params: parse_params(params)?,
                headers: Vec::new(),
            });
        }
        let (main, headers) = match rest.split_once('?') {
            Some((main, headers)) => (main, parse_uri_headers(headers)),
            None => (rest, Vec::new()),
        };
        let (userinfo, hostpart) = match main.rfind('@') {
            Some(at) => (Some(&main[..at]), &main[at + 1..]),
            None => (None, main),
        };
        let (user, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (Some(user.to_string()), Some(password.to_string())),
                None => (Some(info.to_string()), None),
            },
            None => (None, None),
        };
        if user.as_deref() == Some("") {
            return Err(SipError::new(format!("empty user in `{text}`")));
        }
        let (hostport, params) = hostpart.split_once(';').unwrap_or((hostpart, ""));
        let (host, port) = split_host_port(hostport)?;
        Ok(SipUri {
            scheme,
            user,
            password,
            host,
            port,
            params: parse_params(params)?,
            headers,
        })
    }

    /// The user part with `%XX` escapes resolved, for routing and matching.
    pub fn user_decoded(&self) -> Option<String> {
        self.user.as_deref().map(percent_decode)
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    pub fn transport(&self) -> Option<&str> {
        self.param("transport").flatten()
    }
}

fn parse_uri_headers(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (percent_decode(name), percent_decode(value)))
        .collect()
}

pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).ok();
            if let Some(value) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(value);
                index += 3;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Scheme::Sip => f.write_str("sip:")?,
            Scheme::Sips => f.write_str("sips:")?,
            Scheme::Tel => {
                write!(f, "tel:{}", self.user.as_deref().unwrap_or(""))?;
                return write_params(f, &self.params);
            }
        }
        if let Some(user) = &self.user {
            f.write_str(user)?;
            if let Some(password) = &self.password {
                write!(f, ":{password}")?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        write_params(f, &self.params)?;
        for (index, (name, value)) in self.headers.iter().enumerate() {
            write!(f, "{}{name}={value}", if index == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

/// `"Display" <uri>;params` or a bare URI whose `;params` belong to the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: SipUri,
    pub params: Params,
}

/// A name-addr's parts, borrowed: the display name (a quoted one without
/// its quotes), the URI's text and the header parameters' text.
struct NameAddrParts<'a> {
    display: Option<&'a str>,
    uri: &'a str,
    params: &'a str,
}

fn split_name_addr(text: &str) -> Result<NameAddrParts<'_>, SipError> {
    let text = text.trim();
    let (quoted, after_display) = match text.strip_prefix('"') {
        Some(rest) => {
            let mut escaped = false;
            let end = rest
                .char_indices()
                .find_map(|(index, ch)| match ch {
                    _ if escaped => {
                        escaped = false;
                        None
                    }
                    '\\' => {
                        escaped = true;
                        None
                    }
                    '"' => Some(index),
                    _ => None,
                })
                .ok_or_else(|| SipError::new("unterminated quoted display name"))?;
            (Some(&rest[..end]), rest[end + 1..].trim_start())
        }
        None => (None, text),
    };
    if let Some(open) = after_display.find('<') {
        let close = after_display[open..]
            .find('>')
            .map(|i| i + open)
            .ok_or_else(|| SipError::new("`<` without `>` in address"))?;
        let display = quoted.or_else(|| {
            let name = after_display[..open].trim();
            (!name.is_empty()).then_some(name)
        });
        return Ok(NameAddrParts {
            display,
            uri: &after_display[open + 1..close],
            params: &after_display[close + 1..],
        });
    }
    if quoted.is_some() {
        return Err(SipError::new("display name without <uri>"));
    }
    let (uri, params) = after_display.split_once(';').unwrap_or((after_display, ""));
    Ok(NameAddrParts {
        display: None,
        uri,
        params,
    })
}

/// The `tag` parameter of a From or To value, found without building the
/// address: classifying every message asks for it, and a full
/// [`NameAddr::parse`] allocates the URI and every parameter. For a value
/// that parses, the answer is the same as `NameAddr::parse(value)?.tag()`;
/// the URI itself is not checked here (the parser checked From and To of
/// every message it accepted).
pub fn tag_param(value: &str) -> Option<&str> {
    let parts = split_name_addr(value).ok()?;
    let mut tag = None;
    for pair in param_pairs(parts.params) {
        let (name, value) = pair.ok()?;
        if tag.is_none() && name.eq_ignore_ascii_case("tag") {
            tag = Some(value);
        }
    }
    tag.flatten()
}

impl NameAddr {
    pub fn parse(text: &str) -> Result<NameAddr, SipError> {
        let parts = split_name_addr(text)?;
        Ok(NameAddr {
            display: parts.display.map(str::to_string),
            uri: SipUri::parse(parts.uri)?,
            params: parse_params(parts.params)?,
        })
    }

    pub fn tag(&self) -> Option<&str> {
        find_param(&self.params, "tag").flatten()
    }

    pub fn set_tag(&mut self, tag: &str) {
        self.params
            .retain(|(name, _)| !name.eq_ignore_ascii_case("tag"));
        self.params.push(("tag".into(), Some(tag.to_string())));
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(display) = &self.display {
            write!(f, "\"{display}\" ")?;
        }
        write!(f, "<{}>", self.uri)?;
        write_params(f, &self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_writes_ipv6_hosts() {
        let uri = SipUri::parse("sip:alice@[2001:db8::1]:5070;transport=tcp").unwrap();
        assert_eq!(uri.host, Host::Ip("2001:db8::1".parse().unwrap()));
        assert_eq!(uri.port, Some(5070));
        assert_eq!(uri.transport(), Some("tcp"));
        assert_eq!(
            uri.to_string(),
            "sip:alice@[2001:db8::1]:5070;transport=tcp"
        );
    }

    #[test]
    fn user_with_params_password_and_escapes() {
        let uri = SipUri::parse("sip:%2B1212;isub=4@example.com;user=phone?X-A=1").unwrap();
        assert_eq!(uri.user.as_deref(), Some("%2B1212;isub=4"));
        assert_eq!(uri.user_decoded().as_deref(), Some("+1212;isub=4"));
        assert_eq!(uri.param("user"), Some(Some("phone")));
        assert_eq!(uri.headers, vec![("X-A".to_string(), "1".to_string())]);
        let uri = SipUri::parse("sip:bob:secret@10.0.0.1").unwrap();
        assert_eq!(uri.password.as_deref(), Some("secret"));
        assert_eq!(
            SipUri::parse("tel:+15551234").unwrap().user.as_deref(),
            Some("+15551234")
        );
    }

    #[test]
    fn rejects_bad_uris() {
        for bad in [
            "",
            "sip:",
            "http://x",
            "sip:a b@c",
            "sip:@host",
            "sip:a@[::1",
            "sip:a@host:99999",
            "sip:a@ho<st",
        ] {
            assert!(SipUri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn name_addr_forms() {
        let addr = NameAddr::parse("\"Bob \\\"B\\\"\" <sip:bob@example.com;transport=udp>;tag=abc")
            .unwrap();
        assert_eq!(addr.display.as_deref(), Some("Bob \\\"B\\\""));
        assert_eq!(addr.tag(), Some("abc"));
        assert_eq!(addr.uri.transport(), Some("udp"));
        let bare = NameAddr::parse("sip:carol@10.0.0.2;tag=x9").unwrap();
        assert_eq!(bare.tag(), Some("x9"));
        assert!(bare.uri.params.is_empty());
        let plain = NameAddr::parse("Anonymous <sip:anon@anonymous.invalid>").unwrap();
        assert_eq!(plain.display.as_deref(), Some("Anonymous"));
        assert!(NameAddr::parse("\"open <sip:a@b>").is_err());
    }

    #[test]
    fn split_respects_quotes_and_brackets() {
        let parts = split_unquoted("\"a,b\" <sip:x@y;p=1,2>, <sip:z@w>", b',');
        assert_eq!(parts.len(), 2);
    }

    /// The cheap tag lookup answers as the full parse does, quoting and
    /// angle brackets included, and refuses what the parse refuses.
    #[test]
    fn tag_param_agrees_with_the_parsed_address() {
        let values = [
            "<sip:100@127.0.0.1>",
            "<sip:100@127.0.0.1>;tag=abc",
            " <sip:100@127.0.0.1> ; TAG = abc ;x",
            "<sip:100@127.0.0.1;tag=uri-param>",
            "<sip:100@127.0.0.1;tag=uri-param>;tag=real",
            "\"a;tag=fake <x>\" <sip:100@127.0.0.1>;tag=real",
            "\"esc \\\" ;tag=fake\" <sip:100@127.0.0.1>",
            "Bob <sip:bob@example.com>;tag=1;tag=2",
            "sip:100@127.0.0.1;tag=bare",
            "sip:100@127.0.0.1",
            "<sip:100@127.0.0.1>;tag",
            "<sip:100@127.0.0.1>;tag=\"q;uoted\"",
            "<sip:100@127.0.0.1>;=x;tag=a",
            "<sip:100@127.0.0.1;tag=a",
            "\"unterminated <sip:100@127.0.0.1>;tag=a",
            "\"name\" sip:100@127.0.0.1;tag=a",
        ];
        for value in values {
            let parsed = NameAddr::parse(value).ok();
            assert_eq!(
                tag_param(value),
                parsed.as_ref().and_then(NameAddr::tag),
                "{value}"
            );
        }
    }
}
