//! A new INVITE read from its bytes, just far enough to refuse it. Offered
//! several times its capacity, the gateway refuses most INVITEs; parsing
//! each one whole (SDP included) before saying 503 cost as much as a
//! quarter of a refused call's CPU. This reads the start line and the five
//! headers a response copies (RFC 3261 §8.2.6.2), and builds the 503 from
//! those lines as they came. Anything it cannot read that simply (folded
//! or repeated headers, not UTF-8, a To tag) is left to the parser.

/// More Via lines than this go the ordinary way.
const MAX_VIAS: usize = 16;

/// The lines of a new INVITE a response needs, borrowed from the datagram.
#[derive(Debug)]
pub struct NewInvite<'a> {
    vias: [&'a str; MAX_VIAS],
    via_count: usize,
    from: &'a str,
    to: &'a str,
    call_id_line: &'a str,
    call_id: &'a str,
    cseq: &'a str,
}

/// The INVITE in `datagram` if it starts a new call (no To tag) and its
/// headers can be read line by line; `None` otherwise.
pub fn read<'a>(datagram: &'a [u8]) -> Option<NewInvite<'a>> {
    if !datagram.starts_with(b"INVITE ") {
        return None;
    }
    let head_end = datagram.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&datagram[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    if !lines.next()?.ends_with(" SIP/2.0") {
        return None;
    }
    let mut invite = NewInvite {
        vias: [""; MAX_VIAS],
        via_count: 0,
        from: "",
        to: "",
        call_id_line: "",
        call_id: "",
        cseq: "",
    };
    let once =
        |slot: &mut &'a str, line: &'a str| -> Option<()> { slot.is_empty().then(|| *slot = line) };
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return None; // folded: the parser joins it
        }
        let (name, value) = line.split_once(':')?;
        let name = name.trim_ascii();
        let is = |long: &str, short: &str| {
            name.eq_ignore_ascii_case(long) || name.eq_ignore_ascii_case(short)
        };
        if is("via", "v") {
            *invite.vias.get_mut(invite.via_count)? = line;
            invite.via_count += 1;
        } else if is("from", "f") {
            once(&mut invite.from, line)?;
        } else if is("to", "t") {
            once(&mut invite.to, line)?;
            if crate::sip::uri::tag_param(value).is_some() {
                return None; // in a dialog already
            }
        } else if is("call-id", "i") {
            once(&mut invite.call_id_line, line)?;
            invite.call_id = value.trim_ascii();
        } else if name.eq_ignore_ascii_case("cseq") {
            once(&mut invite.cseq, line)?;
            let method = value.split_ascii_whitespace().nth(1)?;
            if method != "INVITE" {
                return None;
            }
        }
    }
    let complete = invite.via_count > 0
        && !invite.from.is_empty()
        && !invite.to.is_empty()
        && !invite.call_id.is_empty()
        && !invite.cseq.is_empty();
    complete.then_some(invite)
}

impl NewInvite<'_> {
    pub fn call_id(&self) -> &str {
        self.call_id
    }

    /// `503 Service Unavailable` with `Retry-After`, To tagged `to_tag`.
    pub fn refusal(&self, to_tag: &str, retry_after: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"SIP/2.0 503 Service Unavailable\r\n");
        for line in self.vias[..self.via_count].iter().chain([&self.from]) {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(self.to.trim_end().as_bytes());
        out.extend_from_slice(b";tag=");
        out.extend_from_slice(to_tag.as_bytes());
        out.extend_from_slice(b"\r\n");
        for line in [self.call_id_line, self.cseq] {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Retry-After: ");
        out.extend_from_slice(retry_after.as_bytes());
        out.extend_from_slice(b"\r\nServer: switchboard\r\nContent-Length: 0\r\n\r\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::framing::parse_message;
    use crate::sip::message::SipMessage;

    /// sipp's `uac` INVITE with a second Via in compact form and an SDP body.
    const INVITE: &str = "INVITE sip:100@127.0.0.1:5060 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5098;branch=z9hG4bK-1-1-0\r\n\
        v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKproxy, SIP/2.0/TCP 10.0.0.2;branch=z9hG4bKfirst\r\n\
        From: sipp <sip:sipp@127.0.0.1:5098>;tag=1\r\n\
        To: sut <sip:100@127.0.0.1:5060>\r\n\
        Call-ID: 1-3407@127.0.0.1\r\n\
        CSeq: 1 INVITE\r\n\
        Contact: sip:sipp@127.0.0.1:5098\r\n\
        Max-Forwards: 70\r\n\
        Content-Type: application/sdp\r\n\
        Content-Length:   129\r\n\r\n\
        v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

    fn parsed(bytes: &[u8]) -> crate::sip::message::Response {
        match parse_message(bytes).expect("a valid response") {
            SipMessage::Response(response) => response,
            SipMessage::Request(_) => panic!("a request"),
        }
    }

    /// The refusal built from the bytes says what the one built from the
    /// parsed request says (`shed_response`), To tag aside.
    #[test]
    fn the_refusal_matches_the_one_built_from_the_parsed_invite() {
        let invite = read(INVITE.as_bytes()).expect("a new INVITE");
        assert_eq!(invite.call_id(), "1-3407@127.0.0.1");
        let fast = parsed(&invite.refusal("shedabc", "5"));
        let SipMessage::Request(request) = parse_message(INVITE.as_bytes()).unwrap() else {
            unreachable!()
        };
        let slow = parsed(&crate::transport::inbound::shed_response(&request));
        assert_eq!(fast.status, 503);
        for name in ["Via", "From", "Call-ID", "CSeq", "Retry-After", "Server"] {
            assert_eq!(
                fast.headers.get_all(name).collect::<Vec<_>>(),
                slow.headers.get_all(name).collect::<Vec<_>>(),
                "{name}"
            );
        }
        let (fast_to, slow_to) = (fast.to().unwrap(), slow.to().unwrap());
        assert_eq!(fast_to.uri, slow_to.uri);
        assert_eq!(fast_to.tag(), Some("shedabc"));
        assert!(slow_to.tag().is_some_and(|tag| tag.starts_with("shed")));
        assert_eq!(fast.headers.get("Content-Length"), Some("0"));
        assert!(fast.body.is_empty());
    }

    #[test]
    fn to_without_angle_brackets_gets_its_tag_as_a_header_parameter() {
        let text = INVITE.replace("To: sut <sip:100@127.0.0.1:5060>", "t: sip:100@127.0.0.1 ");
        let refusal = read(text.as_bytes()).unwrap().refusal("shedx", "5");
        let to = parsed(&refusal).to().unwrap();
        assert_eq!(to.uri.to_string(), "sip:100@127.0.0.1");
        assert_eq!(to.tag(), Some("shedx"));
    }

    /// Whatever this reader cannot be sure of goes to the parser.
    #[test]
    fn anything_unusual_is_left_to_the_parser() {
        let cases = [
            (
                "in a dialog",
                INVITE.replace("127.0.0.1:5060>\r\n", "127.0.0.1:5060>;tag=9\r\n"),
            ),
            (
                "not an INVITE",
                INVITE.replacen("INVITE sip", "OPTIONS sip", 1),
            ),
            (
                "CSeq of another method",
                INVITE.replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS"),
            ),
            (
                "folded",
                INVITE.replace("Max-Forwards: 70\r\n", "Subject: a\r\n b\r\n"),
            ),
            ("two To", INVITE.replace("CSeq:", "To: <sip:x@y>\r\nCSeq:")),
            ("two Call-ID", INVITE.replace("CSeq:", "i: other\r\nCSeq:")),
            (
                "no Call-ID",
                INVITE.replace("Call-ID: 1-3407@127.0.0.1\r\n", ""),
            ),
            (
                "no Via",
                INVITE
                    .replace("Via: SIP", "X-Via: SIP")
                    .replace("v: SIP", "X-v: SIP"),
            ),
            (
                "a line without a colon",
                INVITE.replace("Max-Forwards: 70", "Max-Forwards 70"),
            ),
            (
                "not SIP/2.0",
                INVITE.replacen(" SIP/2.0\r\n", " SIP/3.0\r\n", 1),
            ),
            ("no end of headers", INVITE[..200].to_string()),
            (
                "too many Vias",
                INVITE.replace(
                    "CSeq:",
                    &format!(
                        "{}CSeq:",
                        "Via: SIP/2.0/UDP h;branch=z9hG4bKx\r\n".repeat(15)
                    ),
                ),
            ),
        ];
        for (why, text) in &cases {
            assert!(read(text.as_bytes()).is_none(), "{why}");
        }
        let mut bytes = INVITE.as_bytes().to_vec();
        bytes[60] = 0xff;
        assert!(read(&bytes).is_none(), "not UTF-8");
    }
}
