//! Building responses from requests (RFC 3261 §8.2.6) and the random
//! identifiers SIP needs.

use rand::Rng;

use super::message::{Request, Response};
use super::uri::NameAddr;

/// A response to `request`: Vias, From, Call-ID and CSeq copied, To given
/// our tag unless it has one (or this is a 100, which carries none).
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
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Server Time-out",
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
