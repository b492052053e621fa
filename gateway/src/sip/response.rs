//! Building responses from requests (RFC 3261 §8.2.6) and the random
//! identifiers SIP needs.

use rand::Rng;

use super::message::{Request, Response};
use super::uri::NameAddr;

/// A response to `request`: Vias, From, Call-ID and CSeq copied, To given
/// our tag unless it has one (or this is a 100, which carries none). A
/// response that can create a dialog (101-299 to an INVITE or SUBSCRIBE)
/// also copies the Record-Route headers in order (RFC 3261 §12.1.1), so
/// proxies that record-routed stay on the path of the dialog's requests.
pub fn response_for(
    request: &Request,
    status: u16,
    reason: &str,
    to_tag: Option<&str>,
) -> Response {
    let mut response = Response {
        status,
        reason: reason.to_string(),
        headers: Default::default(),
        body: Vec::new(),
    };
    for via in request.headers.get_all("Via") {
        response.headers.push("Via", via);
    }
    let creates_dialog = matches!(
        request.method,
        super::message::Method::Invite | super::message::Method::Subscribe
    ) && (101..300).contains(&status);
    if creates_dialog {
        for route in request.headers.get_all("Record-Route") {
            response.headers.push("Record-Route", route);
        }
    }
    if let Some(from) = request.headers.get("From") {
        response.headers.push("From", from);
    }
    if let Some(to) = request.headers.get("To") {
        let tagged = match (to_tag, NameAddr::parse(to)) {
            (Some(tag), Ok(mut addr)) if status != 100 && addr.tag().is_none() => {
                addr.set_tag(tag);
                addr.to_string()
            }
            _ => to.to_string(),
        };
        response.headers.push("To", &tagged);
    }
    for name in ["Call-ID", "CSeq"] {
        if let Some(value) = request.headers.get(name) {
            response.headers.push(name, value);
        }
    }
    response.headers.push("Server", "switchboard");
    response
}

pub fn default_reason(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        415 => "Unsupported Media Type",
        423 => "Interval Too Brief",
        420 => "Bad Extension",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        486 => "Busy Here",
        487 => "Request Terminated",
        489 => "Bad Event",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        502 => "Bad Gateway",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => "Unknown",
    }
}

fn random_hex(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

pub fn new_tag() -> String {
    random_hex(16)
}

pub fn new_branch() -> String {
    format!("{}{}", super::message::MAGIC_COOKIE, random_hex(20))
}

pub fn new_call_id(host: &str) -> String {
    format!("{}@{host}", random_hex(24))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::framing::parse_message;
    use crate::sip::message::SipMessage;

    fn invite() -> Request {
        let text = "INVITE sip:100@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKp, SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKa\r\nRecord-Route: <sip:p2.example.com;lr>\r\nRecord-Route: <sip:p1.example.com;lr>\r\nFrom: <sip:a@example.com>;tag=f\r\nTo: <sip:100@10.0.0.1>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContact: <sip:a@10.0.0.9>\r\nContent-Length: 0\r\n\r\n";
        match parse_message(text.as_bytes()).unwrap() {
            SipMessage::Request(request) => request,
            _ => unreachable!(),
        }
    }

    #[test]
    fn dialog_creating_responses_copy_record_route_in_order() {
        let request = invite();
        for status in [180, 183, 200] {
            let response = response_for(&request, status, "x", Some("t"));
            assert_eq!(
                response.headers.get_all("Record-Route").collect::<Vec<_>>(),
                vec!["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"],
                "{status}"
            );
        }
        for status in [100, 486] {
            let response = response_for(&request, status, "x", Some("t"));
            assert_eq!(response.headers.get("Record-Route"), None, "{status}");
        }
        assert_eq!(
            response_for(&request, 200, "OK", None)
                .headers
                .get_all("Via")
                .count(),
            1,
            "a comma-joined Via is copied as received"
        );
    }
}
