//! Tolerant parsing of SIP off the wire: CRLF or bare-LF lines, folded
//! headers, compact names, Content-Length framing on streams and checking on
//! datagrams, hard size limits. Whatever cannot be parsed is salvaged into a
//! [`PartialRequest`] so the transport can still answer 400.

use super::headers::{canonical_name, Headers};
use super::message::{Method, Request, Response, SipMessage, Via};
use super::response::new_tag;
use super::uri::SipUri;
use super::SipError;

/// Most header lines a message may carry.
pub const MAX_HEADERS: usize = 256;
/// Largest message accepted on any transport.
pub const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub reason: String,
    pub partial: Option<Box<PartialRequest>>,
}

/// Raw header values salvaged from a request that failed to parse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartialRequest {
    pub method: Option<String>,
    pub vias: Vec<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub call_id: Option<String>,
    pub cseq: Option<String>,
}

pub enum Datagram {
    KeepAlive,
    Message(SipMessage),
    Malformed(ParseError),
}

/// Parses one UDP datagram.
pub fn parse_datagram(bytes: &[u8]) -> Datagram {
    if bytes.iter().all(|b| *b == b'\r' || *b == b'\n' || *b == 0) {
        return Datagram::KeepAlive;
    }
    match parse_message(bytes) {
        Ok(message) => Datagram::Message(message),
        Err(error) => Datagram::Malformed(error),
    }
}

/// Where the header section ends: (index of the first body byte).
fn header_end(bytes: &[u8]) -> Option<usize> {
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\n' {
            let next = &bytes[index + 1..];
            if next.first() == Some(&b'\n') {
                return Some(index + 2);
            }
            if next.starts_with(b"\r\n") {
                return Some(index + 3);
            }
        }
        index += 1;
    }
    None
}

fn lines(head: &str) -> Vec<&str> {
    head.split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .collect()
}

/// Parses a complete message; on a datagram the body is whatever follows the
/// headers, checked against Content-Length.
pub fn parse_message(bytes: &[u8]) -> Result<SipMessage, ParseError> {
    let start = bytes
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(bytes.len());
    let bytes = &bytes[start..];
    let fail = |reason: String, bytes: &[u8]| ParseError {
        partial: salvage(bytes),
        reason,
    };
    if bytes.len() > MAX_MESSAGE {
        return Err(fail(format!("message over {MAX_MESSAGE} bytes"), bytes));
    }
    let (head_len, body) = match header_end(bytes) {
        Some(end) => (end, &bytes[end..]),
        None => (bytes.len(), &bytes[bytes.len()..]),
    };
    let head = std::str::from_utf8(&bytes[..head_len])
        .map_err(|_| fail("header section is not UTF-8".into(), bytes))?;
    if head.contains('\0') {
        return Err(fail("NUL byte in the header section".into(), bytes));
    }
    parse_parts(head, body).map_err(|error| fail(error.0, bytes))
}

fn parse_parts(head: &str, body: &[u8]) -> Result<SipMessage, SipError> {
    let lines = lines(head);
    let mut iter = lines.iter();
    let start_line = iter.next().copied().unwrap_or("");
    let mut headers = Headers::new();
    // Lines are borrowed; only a header folded over several lines (rare)
    // is copied to join it.
    let mut unfolded: Vec<std::borrow::Cow<str>> = Vec::new();
    for line in iter {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            let last = unfolded
                .last_mut()
                .ok_or_else(|| SipError::new("continuation line before any header"))?
                .to_mut();
            last.push(' ');
            last.push_str(line.trim());
            continue;
        }
        unfolded.push(std::borrow::Cow::Borrowed(line));
        if unfolded.len() > MAX_HEADERS {
            return Err(SipError::new(format!(
                "more than {MAX_HEADERS} header lines"
            )));
        }
    }
    for line in &unfolded {
        let (name, value) = line.split_once(':').ok_or_else(|| {
            SipError::new(format!("header line without a colon: `{}`", truncate(line)))
        })?;
        let name = name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c))
        {
            return Err(SipError::new(format!(
                "invalid header name `{}`",
                truncate(name)
            )));
        }
        headers.push(name, value.trim());
    }
    let body = body_by_length(&headers, body)?;
    for via in headers.get_all_split("Via") {
        Via::parse(via)?;
    }

    let mut words = start_line.splitn(3, ' ');
    let first = words.next().unwrap_or("");
    if first == "SIP/2.0" {
        let code = words.next().unwrap_or("");
        let status: u16 = code
            .parse()
            .ok()
            .filter(|status| (100..=699).contains(status) && code.len() == 3)
            .ok_or_else(|| SipError::new(format!("invalid status code `{}`", truncate(code))))?;
        let response = Response {
            status,
            reason: words.next().unwrap_or("").to_string(),
            headers,
            body,
        };
        response.top_via()?;
        response.cseq()?;
        response.call_id()?;
        response.from()?;
        response.to()?;
        return Ok(SipMessage::Response(response));
    }
    if first.starts_with("SIP/") {
        return Err(SipError::new(format!(
            "unsupported SIP version `{}`",
            truncate(first)
        )));
    }
    let method: Method = first.parse()?;
    let uri_text = words.next().unwrap_or("");
    let version = words.next().unwrap_or("");
    if version != "SIP/2.0" {
        return Err(SipError::new(format!(
            "unsupported SIP version `{}`",
            truncate(version)
        )));
    }
    let uri = SipUri::parse(uri_text)?;
    let request = Request {
        method,
        uri,
        headers,
        body,
    };
    request.top_via()?;
    request.call_id()?;
    let (_, cseq_method) = request.cseq()?;
    if cseq_method != request.method {
        return Err(SipError::new(format!(
            "CSeq method {cseq_method} does not match request method {}",
            request.method
        )));
    }
    request.from()?;
    request.to()?;
    if let Some(value) = request.headers.get("Max-Forwards") {
        value
            .trim()
            .parse::<u8>()
            .map_err(|_| SipError::new(format!("invalid Max-Forwards `{}`", truncate(value))))?;
    }
    Ok(SipMessage::Request(request))
}

fn content_length(headers: &Headers) -> Result<Option<usize>, SipError> {
    let mut found: Option<usize> = None;
    for value in headers.get_all("Content-Length") {
        let length = value
            .trim()
            .parse::<usize>()
            .map_err(|_| SipError::new(format!("invalid Content-Length `{}`", truncate(value))))?;
        if found.is_some_and(|previous| previous != length) {
            return Err(SipError::new("conflicting Content-Length headers"));
        }
        found = Some(length);
    }
    Ok(found)
}

fn body_by_length(headers: &Headers, body: &[u8]) -> Result<Vec<u8>, SipError> {
    match content_length(headers)? {
        None => Ok(body.to_vec()),
        Some(length) if length > body.len() => Err(SipError::new(format!(
            "Content-Length {length} is larger than the {} bytes of body",
            body.len()
        ))),
        // RFC 3261 §18.3: on datagrams, bytes past Content-Length are discarded.
        Some(length) => Ok(body[..length].to_vec()),
    }
}

fn truncate(text: &str) -> &str {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Pulls out what a 400 needs from a message too broken to parse.
fn salvage(bytes: &[u8]) -> Option<Box<PartialRequest>> {
    let head_len = header_end(bytes).unwrap_or(bytes.len()).min(MAX_MESSAGE);
    let head = String::from_utf8_lossy(&bytes[..head_len]);
    let lines = lines(&head);
    let start = lines.first()?;
    if start.starts_with("SIP/") {
        return None; // never answer a response
    }
    let mut partial = PartialRequest {
        method: start.split(' ').next().map(str::to_string),
        ..PartialRequest::default()
    };
    for line in lines.iter().skip(1).take(MAX_HEADERS) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() || value.len() > 1024 || value.contains('\0') {
            continue;
        }
        match canonical_name(name.trim()).as_ref() {
            "Via" => partial.vias.push(value.to_string()),
            "From" => partial.from = Some(value.to_string()),
            "To" => partial.to = Some(value.to_string()),
            "Call-ID" => partial.call_id = Some(value.to_string()),
            "CSeq" => partial.cseq = Some(value.to_string()),
            _ => {}
        }
    }
    Some(Box::new(partial))
}

/// A stateless `400 Bad Request` for a broken request, when there is enough
/// of it to address one. Never for an ACK (RFC 3261 §17.2.1 forbids answering it).
pub fn bad_request(partial: &PartialRequest, reason: &str) -> Option<Vec<u8>> {
    let is_ack = partial.method.as_deref() == Some("ACK")
        || partial
            .cseq
            .as_deref()
            .is_some_and(|cseq| cseq.trim_end().ends_with("ACK"));
    if is_ack || partial.vias.is_empty() {
        return None;
    }
    let (from, to, call_id, cseq) = (
        partial.from.as_ref()?,
        partial.to.as_ref()?,
        partial.call_id.as_ref()?,
        partial.cseq.as_ref()?,
    );
    let mut out = String::from("SIP/2.0 400 Bad Request\r\n");
    for via in &partial.vias {
        out.push_str(&format!("Via: {via}\r\n"));
    }
    out.push_str(&format!("From: {from}\r\n"));
    if to.contains("tag=") {
        out.push_str(&format!("To: {to}\r\n"));
    } else {
        out.push_str(&format!("To: {to};tag={}\r\n", new_tag()));
    }
    let warning: String = reason
        .chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .take(120)
        .collect();
    out.push_str(&format!(
        "Call-ID: {call_id}\r\nCSeq: {cseq}\r\nWarning: 399 switchboard \"{warning}\"\r\nServer: switchboard\r\nContent-Length: 0\r\n\r\n"
    ));
    Some(out.into_bytes())
}

pub enum StreamItem {
    Message(SipMessage),
    /// RFC 5626 double-CRLF ping; answer with a single CRLF.
    KeepAlivePing,
    Malformed(ParseError),
    /// Framing is lost; answer 400 if the error allows, then close.
    Fatal(ParseError),
}

/// Splits a byte stream (TCP) into messages by Content-Length.
pub struct StreamDecoder {
    buffer: Vec<u8>,
    max_message: usize,
}

impl StreamDecoder {
    pub fn new(max_message: usize) -> Self {
        Self {
            buffer: Vec::with_capacity(4096),
            max_message,
        }
    }

    pub fn extend(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// Bytes of a message not yet whole.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<StreamItem> {
        loop {
            if self.buffer.starts_with(b"\r\n\r\n") {
                self.buffer.drain(..4);
                return Some(StreamItem::KeepAlivePing);
            }
            match self.buffer.first() {
                Some(b'\r') | Some(b'\n') => {
                    // A lone CRLF may be the first half of a ping.
                    if self.buffer.len() < 4
                        && self.buffer.iter().all(|b| *b == b'\r' || *b == b'\n')
                    {
                        return None;
                    }
                    self.buffer.remove(0);
                    continue;
                }
                None => return None,
                _ => break,
            }
        }
        let Some(head_len) = header_end(&self.buffer) else {
            if self.buffer.len() > self.max_message {
                let partial = salvage(&self.buffer);
                self.buffer.clear();
                return Some(StreamItem::Fatal(ParseError {
                    reason: format!("no end of headers within {} bytes", self.max_message),
                    partial,
                }));
            }
            return None;
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_len]).into_owned();
        let mut length = None;
        for line in lines(&head).iter().skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                if canonical_name(name.trim()) == "Content-Length" {
                    match value.trim().parse::<usize>() {
                        Ok(parsed) => length = Some(parsed),
                        Err(_) => {
                            let error = ParseError {
                                reason: format!(
                                    "invalid Content-Length `{}` on a stream",
                                    truncate(value.trim())
                                ),
                                partial: salvage(&self.buffer[..head_len]),
                            };
                            self.buffer.clear();
                            return Some(StreamItem::Fatal(error));
                        }
                    }
                }
            }
        }
        let total = head_len + length.unwrap_or(0);
        if total > self.max_message {
            let error = ParseError {
                reason: format!("message of {total} bytes over the limit"),
                partial: salvage(&self.buffer[..head_len]),
            };
            self.buffer.clear();
            return Some(StreamItem::Fatal(error));
        }
        if self.buffer.len() < total {
            return None;
        }
        let message: Vec<u8> = self.buffer.drain(..total).collect();
        Some(match parse_message(&message) {
            Ok(message) => StreamItem::Message(message),
            Err(error) => StreamItem::Malformed(error),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 4\r\n\r\nbody";

    #[test]
    fn parses_lf_only_folded_compact() {
        let text = "OPTIONS sip:100@127.0.0.1 SIP/2.0\nv: SIP/2.0/UDP\n 127.0.0.1;branch=z9hG4bK2\nf: <sip:a@b>;tag=1\nt: <sip:c@d>\ni: x\nCSeq: 7 OPTIONS\n\n";
        let SipMessage::Request(request) = parse_message(text.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(request.call_id().unwrap(), "x");
        assert_eq!(request.top_via().unwrap().branch(), Some("z9hG4bK2"));
    }

    #[test]
    fn content_length_is_enforced() {
        assert!(parse_message(INVITE.as_bytes()).is_ok());
        let short = INVITE.replace("Content-Length: 4", "Content-Length: 40");
        assert!(parse_message(short.as_bytes()).is_err());
        let negative = INVITE.replace("Content-Length: 4", "Content-Length: -4");
        assert!(parse_message(negative.as_bytes()).is_err());
        let long = INVITE.replace("Content-Length: 4", "Content-Length: 2");
        let SipMessage::Request(request) = parse_message(long.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(request.body, b"bo");
    }

    #[test]
    fn salvages_enough_for_a_400() {
        let broken = INVITE.replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
        let error = parse_message(broken.as_bytes()).unwrap_err();
        let response = bad_request(error.partial.as_ref().unwrap(), &error.reason).unwrap();
        let text = String::from_utf8(response).unwrap();
        assert!(text.starts_with("SIP/2.0 400 Bad Request\r\n"));
        assert!(text.contains("Call-ID: c1\r\n") && text.contains("tag="));
        let ack = broken
            .replace("INVITE sip", "ACK sip")
            .replace("1 BYE", "1 ACK2");
        let error = parse_message(ack.as_bytes()).unwrap_err();
        assert!(error
            .partial
            .as_ref()
            .and_then(|p| bad_request(p, "x"))
            .is_none());
    }

    #[test]
    fn stream_decoder_frames_pings_and_messages() {
        let mut decoder = StreamDecoder::new(MAX_MESSAGE);
        decoder.extend(b"\r\n\r\n");
        decoder.extend(&INVITE.as_bytes()[..50]);
        assert!(matches!(decoder.next(), Some(StreamItem::KeepAlivePing)));
        assert!(decoder.next().is_none());
        decoder.extend(&INVITE.as_bytes()[50..]);
        decoder.extend(INVITE.as_bytes());
        assert!(matches!(decoder.next(), Some(StreamItem::Message(_))));
        assert!(matches!(decoder.next(), Some(StreamItem::Message(_))));
        assert!(decoder.next().is_none());
        decoder.extend(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: x\r\n\r\n");
        assert!(matches!(decoder.next(), Some(StreamItem::Fatal(_))));
    }

    #[test]
    fn never_panics_on_truncations_and_flips() {
        let bytes = INVITE.as_bytes();
        for cut in 0..bytes.len() {
            let _ = parse_datagram(&bytes[..cut]);
            let mut flipped = bytes.to_vec();
            flipped[cut] ^= 0xa5;
            let _ = parse_datagram(&flipped);
            let mut decoder = StreamDecoder::new(MAX_MESSAGE);
            decoder.extend(&flipped);
            while decoder.next().is_some() {}
        }
    }
}
