//! `POST /2010-04-01/Accounts/{AccountSid}/Calls.json`: place a call, as
//! Twilio's Calls resource does. Everything is checked before anything
//! starts — a bad request places no call — and the answer is 201 with the
//! new call resource (status `queued`); the call then rings, is answered
//! and runs its TwiML or flow on its own.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::Value;
use switchboard_flows::parse_twiml;

use super::twilio::{authorize, call_json, form, param, TwilioError, TwilioState};
use crate::call::dial::parse_target;
use crate::call::outbound::{OutboundRequest, PlaceCall, PlaceError, Program, Reach};
use crate::call::status_callback::StatusCallbackSpec;
use crate::call::EndpointCommand;
use crate::config::ApiCredentials;

/// Twilio's limits on `To`: the URI, and its `?headers` part.
const MAX_TO_LEN: usize = 255;
const MAX_URI_HEADERS_LEN: usize = 1024;
/// `Timeout`: Twilio's default and bounds (seconds of ringing).
const DEFAULT_RING_SECS: u64 = 60;
const MAX_RING_SECS: u64 = 600;
/// `TimeLimit`: Twilio's default (4 h) and bound (24 h).
const DEFAULT_TIME_LIMIT_SECS: u64 = 4 * 3600;
const MAX_TIME_LIMIT_SECS: u64 = 24 * 3600;
const CALLBACK_EVENTS: [&str; 4] = ["initiated", "ringing", "answered", "completed"];

fn invalid(code: u32, message: impl Into<String>) -> TwilioError {
    TwilioError::new(StatusCode::BAD_REQUEST, code, message)
}

pub(super) async fn create_call(
    State(state): State<TwilioState>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), TwilioError> {
    let credentials = authorize(&state, &headers, &account)?;
    let form = form(&body);
    let request = {
        let user = |name: &str| {
            state
                .registrar
                .as_ref()
                .is_some_and(|r| r.directory().user(name).is_some())
        };
        let registration = |id: &str| state.registrations.get(id).is_some();
        let known = Known {
            user: &user,
            registration: &registration,
        };
        outbound_request(&form, &credentials, &known)?
    };
    tracing::info!(to = %request.to, from = %request.from, "Calls API: placing a call");
    let (reply, answer) = tokio::sync::oneshot::channel();
    let unavailable =
        |message: String| TwilioError::new(StatusCode::SERVICE_UNAVAILABLE, 20503, message);
    state
        .endpoint
        .next_shard()
        .send(EndpointCommand::PlaceCall(Box::new(PlaceCall {
            request,
            reply,
        })))
        .await
        .map_err(|_| unavailable("the gateway is stopping".into()))?;
    match answer.await {
        Ok(Ok(record)) => Ok((
            StatusCode::CREATED,
            Json(call_json(&credentials.account_sid, &record)),
        )),
        Ok(Err(PlaceError::Unavailable(reason))) => Err(unavailable(reason)),
        Ok(Err(PlaceError::Invalid(reason))) => Err(invalid(21201, reason)),
        Err(_) => Err(unavailable("the gateway is stopping".into())),
    }
}

/// Reads and checks every parameter; the first problem is the answer.
/// What the gateway knows of the names a `To` may use.
struct Known<'a> {
    user: &'a dyn Fn(&str) -> bool,
    registration: &'a dyn Fn(&str) -> bool,
}

fn outbound_request(
    form: &[(String, String)],
    credentials: &ApiCredentials,
    known: &Known,
) -> Result<OutboundRequest, TwilioError> {
    let to = param(form, "To")
        .filter(|to| !to.is_empty())
        .ok_or_else(|| invalid(21201, "No 'To' number is specified"))?;
    let from = param(form, "From")
        .filter(|from| !from.is_empty())
        .ok_or_else(|| invalid(21603, "A 'From' phone number is required."))?;
    if from.len() > MAX_TO_LEN || from.chars().any(char::is_control) {
        return Err(invalid(21212, format!("Invalid 'From' value: {from:?}")));
    }
    let reach = reach(form, to, known)?;
    let program = program(form)?;
    let credentials_for_dial = match (
        param(form, "SipAuthUsername"),
        param(form, "SipAuthPassword"),
    ) {
        (Some(user), Some(password)) if !user.is_empty() => {
            Some((user.to_string(), password.to_string()))
        }
        (None, None) => None,
        _ => {
            return Err(invalid(
                21201,
                "SipAuthUsername and SipAuthPassword go together",
            ))
        }
    };
    let seconds = |name: &str, default: u64, max: u64| -> Result<u64, TwilioError> {
        match param(form, name) {
            None => Ok(default),
            Some(text) => match text.parse::<u64>() {
                Ok(value) if (1..=max).contains(&value) => Ok(value),
                _ => Err(invalid(
                    21201,
                    format!("{name} must be 1 to {max} seconds, not {text:?}"),
                )),
            },
        }
    };
    let ring_secs = seconds("Timeout", DEFAULT_RING_SECS, MAX_RING_SECS)?;
    let time_limit = seconds("TimeLimit", DEFAULT_TIME_LIMIT_SECS, MAX_TIME_LIMIT_SECS)?;
    let record = match param(form, "Record") {
        None => false,
        Some(r) if r.eq_ignore_ascii_case("true") => true,
        Some(r) if r.eq_ignore_ascii_case("false") => false,
        Some(r) => {
            return Err(invalid(
                21201,
                format!("Record must be true or false, not {r:?}"),
            ))
        }
    };
    if param(form, "ApplicationSid").is_some() {
        return Err(invalid(
            21201,
            "ApplicationSid is not available here: give Twiml, Url or Flow",
        ));
    }
    Ok(OutboundRequest {
        to: to.to_string(),
        reach,
        from: from.to_string(),
        credentials: credentials_for_dial,
        ring_timeout: Duration::from_secs(ring_secs),
        time_limit: Some(Duration::from_secs(time_limit)),
        program,
        callbacks: status_callbacks(form, credentials)?,
        record,
    })
}

/// Who `To` is: an extension through `Registration`, a SIP URI, or one of
/// our registered users by name.
fn reach(form: &[(String, String)], to: &str, known: &Known) -> Result<Reach, TwilioError> {
    if let Some(id) = param(form, "Registration") {
        if !(known.registration)(id) {
            return Err(invalid(21201, format!("there is no registration `{id}`")));
        }
        let extension = to.strip_prefix("sip:").unwrap_or(to);
        let extension = extension.split(['@', ';', '?']).next().unwrap_or("");
        if extension.is_empty()
            || !extension
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-_.*#".contains(c))
        {
            return Err(invalid(
                21211,
                format!("Invalid 'To' {to:?}: not an extension"),
            ));
        }
        return Ok(Reach::Registration {
            id: id.to_string(),
            extension: extension.to_string(),
        });
    }
    if !(to.starts_with("sip:") || to.starts_with("sips:")) {
        let name = to.strip_prefix("client:").unwrap_or(to);
        if (known.user)(name) {
            return Ok(Reach::User(name.to_string()));
        }
        // E.164 (or digits): a phone number, out through a trunk.
        let digits = to.chars().filter(char::is_ascii_digit).count();
        let phone_like = to
            .char_indices()
            .all(|(i, c)| c.is_ascii_digit() || (c == '+' && i == 0) || " -().".contains(c));
        if phone_like && (4..=15).contains(&digits) {
            return Ok(Reach::Number(switchboard_flows::twiml::normalised_number(
                to,
            )));
        }
    }
    sip_target(to).map(Reach::Uri)
}

/// `To`: a SIP URI (`;transport=`, `?X-headers`), within Twilio's limits.
fn sip_target(to: &str) -> Result<crate::call::dial::Target, TwilioError> {
    if to.len() >= MAX_TO_LEN {
        return Err(invalid(
            21211,
            format!("Invalid 'To': longer than {MAX_TO_LEN} characters"),
        ));
    }
    if !(to.starts_with("sip:") || to.starts_with("sips:")) {
        return Err(invalid(
            21211,
            format!("Invalid 'To' {to:?}: not a SIP URI, a phone number or a registered user"),
        ));
    }
    if to
        .split_once('?')
        .is_some_and(|(_, headers)| headers.len() >= MAX_URI_HEADERS_LEN)
    {
        return Err(invalid(
            21211,
            format!("Invalid 'To': its headers are longer than {MAX_URI_HEADERS_LEN} characters"),
        ));
    }
    parse_target(to).map_err(|reason| invalid(21211, format!("Invalid 'To' {to:?}: {reason}")))
}

/// What the call runs once answered: exactly one of `Twiml`, `Flow`, `Url`.
fn program(form: &[(String, String)]) -> Result<Program, TwilioError> {
    match (
        param(form, "Twiml"),
        param(form, "Flow"),
        param(form, "Url"),
    ) {
        (Some(twiml), None, None) => twiml_program(twiml),
        (None, Some(flow), None) => Ok(Program::Flow(flow.to_string())),
        (None, None, Some(url)) => {
            let method = |name: &str| -> Result<String, TwilioError> {
                match param(form, name) {
                    None => Ok("POST".into()),
                    Some(m) if m.eq_ignore_ascii_case("GET") || m.eq_ignore_ascii_case("POST") => {
                        Ok(m.to_ascii_uppercase())
                    }
                    Some(m) => Err(invalid(
                        21201,
                        format!("{name} must be GET or POST, not {m:?}"),
                    )),
                }
            };
            let http_url = |name: &str, text: &str| -> Result<String, TwilioError> {
                match url::Url::parse(text) {
                    Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {
                        Ok(text.to_string())
                    }
                    _ => Err(invalid(
                        21205,
                        format!("{name} {text:?} is not an http(s) URL"),
                    )),
                }
            };
            Ok(Program::Url(switchboard_flows::WebhookConfig {
                url: http_url("Url", url)?,
                method: method("Method")?,
                fallback_url: param(form, "FallbackUrl")
                    .map(|fallback| http_url("FallbackUrl", fallback))
                    .transpose()?,
            }))
        }
        (None, None, None) => Err(invalid(21205, "Url, Twiml or Flow is required")),
        _ => Err(invalid(21201, "give only one of Url, Twiml and Flow")),
    }
}

/// TwiML a placed call runs from its answer, checked now so a bad
/// document places no call.
fn twiml_program(twiml: &str) -> Result<Program, TwilioError> {
    let parse_failure =
        |reason: String| invalid(12100, format!("Document parse failure: {reason}"));
    let verbs = parse_twiml(twiml).map_err(|e| parse_failure(e.to_string()))?;
    if verbs.is_empty() {
        return Err(parse_failure("the document has no verb".into()));
    }
    Ok(Program::Twiml(twiml.to_string()))
}

/// `StatusCallback`, `StatusCallbackEvent` (repeated, or space-separated)
/// and `StatusCallbackMethod`.
fn status_callbacks(
    form: &[(String, String)],
    credentials: &ApiCredentials,
) -> Result<Option<StatusCallbackSpec>, TwilioError> {
    let Some(url) = param(form, "StatusCallback") else {
        return Ok(None);
    };
    let parsed = url::Url::parse(url)
        .map_err(|e| invalid(21609, format!("Invalid StatusCallback {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(
            21609,
            format!("Invalid StatusCallback {url:?}: not http(s)"),
        ));
    }
    let mut events: Vec<String> = Vec::new();
    for value in form
        .iter()
        .filter(|(k, _)| k == "StatusCallbackEvent")
        .map(|(_, v)| v)
    {
        for event in value.split_whitespace() {
            if !CALLBACK_EVENTS.contains(&event) {
                return Err(invalid(
                    21626,
                    format!("Invalid StatusCallbackEvent {event:?}"),
                ));
            }
            if !events.iter().any(|e| e == event) {
                events.push(event.to_string());
            }
        }
    }
    if events.is_empty() {
        events.push("completed".into());
    }
    let method_get = match param(form, "StatusCallbackMethod") {
        None => false,
        Some(m) if m.eq_ignore_ascii_case("POST") => false,
        Some(m) if m.eq_ignore_ascii_case("GET") => true,
        Some(m) => {
            return Err(invalid(
                21610,
                format!("Invalid StatusCallbackMethod {m:?}"),
            ))
        }
    };
    Ok(Some(StatusCallbackSpec {
        url: url.to_string(),
        method_get,
        events,
        account_sid: credentials.account_sid.clone(),
        auth_token: credentials.auth_token.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> ApiCredentials {
        ApiCredentials {
            account_sid: "AC1".into(),
            auth_token: "0123456789abcdef".into(),
        }
    }

    fn request(pairs: &[(&str, &str)]) -> Result<OutboundRequest, TwilioError> {
        let form: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let known = Known {
            user: &|name| name == "alice",
            registration: &|id| id == "pbx",
        };
        outbound_request(&form, &login(), &known)
    }

    #[test]
    fn a_good_request_names_target_program_and_callbacks() {
        let placed = request(&[
            ("To", "sip:agent@127.0.0.1:5070;transport=tcp?X-Case=42"),
            ("From", "Jack"),
            (
                "Twiml",
                "<Response><Connect><Stream url=\"ws://127.0.0.1:9/m\"/></Connect></Response>",
            ),
            ("StatusCallback", "http://127.0.0.1:9/cb"),
            ("StatusCallbackEvent", "initiated ringing"),
            ("StatusCallbackEvent", "answered"),
            ("StatusCallbackEvent", "completed"),
            ("Timeout", "15"),
        ])
        .unwrap();
        let Reach::Uri(target) = &placed.reach else {
            panic!("a SIP URI is reached by DNS")
        };
        assert_eq!(
            target.headers,
            vec![("X-Case".to_string(), "42".to_string())]
        );
        assert!(
            matches!(placed.program, Program::Twiml(ref doc) if doc.contains("ws://127.0.0.1:9/m"))
        );
        assert_eq!(placed.ring_timeout, Duration::from_secs(15));
        let callbacks = placed.callbacks.unwrap();
        assert_eq!(
            callbacks.events,
            ["initiated", "ringing", "answered", "completed"]
        );
    }

    #[test]
    fn bad_requests_get_twilio_codes() {
        let base = [
            ("To", "sip:a@127.0.0.1"),
            ("From", "Jack"),
            ("Twiml", "<Response><Hangup/></Response>"),
        ];
        let with = |change: (&str, &str)| {
            let mut pairs: Vec<(&str, &str)> = base
                .iter()
                .copied()
                .filter(|(k, _)| *k != change.0)
                .collect();
            if !change.1.is_empty() {
                pairs.push(change);
            }
            request(&pairs).err().map(|e| e.code)
        };
        assert_eq!(with(("To", "")), Some(21201));
        assert_eq!(with(("From", "")), Some(21603));
        assert_eq!(with(("To", "+1415555010x")), Some(21211));
        assert_eq!(with(("To", "sip:a@127.0.0.1?Call-ID=x")), Some(21211));
        let long = format!("sip:a@127.0.0.1?X-Long={}", "x".repeat(300));
        assert_eq!(with(("To", &long)), Some(21211));
        assert_eq!(
            with(("Twiml", "<Response><Say>hi</Say></Response>")),
            Some(12100)
        );
        assert_eq!(with(("Twiml", "")), Some(21205));
        assert_eq!(with(("Timeout", "0")), Some(21201));
        assert_eq!(with(("StatusCallback", "ftp://x")), Some(21609));
        let mut both = base.to_vec();
        both.push(("Flow", "echo"));
        assert_eq!(request(&both).err().map(|e| e.code), Some(21201));
        let mut event = base.to_vec();
        event.extend([
            ("StatusCallback", "http://127.0.0.1:9/"),
            ("StatusCallbackEvent", "bogus"),
        ]);
        assert_eq!(request(&event).err().map(|e| e.code), Some(21626));
        assert!(request(&base).is_ok());
        let mut through = base.to_vec();
        through.extend([("Registration", "nope")]);
        assert_eq!(request(&through).err().map(|e| e.code), Some(21201));
    }

    #[test]
    fn to_names_a_user_or_an_extension_through_a_registration() {
        let twiml = ("Twiml", "<Response><Hangup/></Response>");
        let user = request(&[("To", "alice"), ("From", "Jack"), twiml]).unwrap();
        assert!(matches!(user.reach, Reach::User(ref name) if name == "alice"));
        let number = request(&[("To", "+1 415 555 0100"), ("From", "Jack"), twiml]).unwrap();
        assert!(matches!(number.reach, Reach::Number(ref n) if n == "+14155550100"));
        let client = request(&[("To", "client:alice"), ("From", "Jack"), twiml]).unwrap();
        assert!(matches!(client.reach, Reach::User(_)));
        assert_eq!(
            request(&[("To", "bob"), ("From", "Jack"), twiml])
                .err()
                .map(|e| e.code),
            Some(21211)
        );
        let extension = request(&[
            ("To", "1002"),
            ("From", "Jack"),
            ("Registration", "pbx"),
            twiml,
        ])
        .unwrap();
        assert!(matches!(
            extension.reach,
            Reach::Registration { ref id, ref extension } if id == "pbx" && extension == "1002"
        ));
    }
}
