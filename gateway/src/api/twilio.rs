//! Twilio's Calls resource (`/2010-04-01/Accounts/{AccountSid}/Calls…`):
//! bots and scripts written against Twilio read and control Switchboard's
//! calls by changing one base URL. Requests carry HTTP basic auth with
//! `[api] account_sid` / `auth_token`; answers and errors are shaped as
//! Twilio's, so its client libraries parse them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
#[cfg(test)]
use switchboard_flows::Action;
use switchboard_flows::{actions_from_twiml, parse_twiml, Verb};

use crate::call::registry::{rfc2822, CallRecord, CallRegistry, CallStatus};
use crate::call::{CallControl, CallInput};
use crate::config::ApiCredentials;

pub const API_VERSION: &str = "2010-04-01";
/// Largest form body accepted (TwiML is at most 64 KiB, URL-encoded ×3).
pub const MAX_FORM_BYTES: usize = 256 * 1024;
/// Twilio's page size bounds.
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 1000;
/// How long a redirect `Url` may take to answer with TwiML.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the API waits for a busy call to take a command.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub(super) struct TwilioState {
    pub calls: Arc<CallRegistry>,
    pub credentials: Option<ApiCredentials>,
    pub http: reqwest::Client,
    /// Where placed calls start.
    pub endpoint: crate::endpoint::EndpointSender,
    /// Users a call may be placed to, and registrations to dial through.
    pub registrar: Option<Arc<crate::registrar::service::Registrar>>,
    pub registrations: Arc<crate::registration::manager::Registry>,
}

pub(super) fn routes() -> Router<TwilioState> {
    Router::new()
        .route(
            "/2010-04-01/Accounts/{account}/Calls.json",
            get(list_calls).post(super::create_call::create_call),
        )
        .route(
            "/2010-04-01/Accounts/{account}/Calls/{resource}",
            get(fetch_call).post(update_call),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
}

/// An error as Twilio writes it.
#[derive(Debug)]
pub(super) struct TwilioError {
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
}

impl TwilioError {
    pub fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        TwilioError {
            status,
            code,
            message: message.into(),
        }
    }

    fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            20404,
            format!("The requested resource {path} was not found"),
        )
    }

    fn bad_parameter(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 21201, message)
    }
}

impl IntoResponse for TwilioError {
    fn into_response(self) -> Response {
        let body = Json(json!({
            "code": self.code,
            "message": self.message,
            "more_info": format!("https://www.twilio.com/docs/errors/{}", self.code),
            "status": self.status.as_u16(),
        }));
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = [(header::WWW_AUTHENTICATE, "Basic realm=\"Twilio API\"")];
            return (self.status, challenge, body).into_response();
        }
        (self.status, body).into_response()
    }
}

/// Checks the basic-auth login against `[api]` and the account in the path.
pub(super) fn authorize(
    state: &TwilioState,
    headers: &HeaderMap,
    account: &str,
) -> Result<ApiCredentials, TwilioError> {
    let unauthorized = |message: &str| TwilioError::new(StatusCode::UNAUTHORIZED, 20003, message);
    let Some(credentials) = &state.credentials else {
        return Err(unauthorized(
            "Authenticate: the Calls API is off ([api] account_sid and auth_token are not set)",
        ));
    };
    let login = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
        })
        .and_then(|decoded| String::from_utf8(decoded).ok());
    let Some(login) = login else {
        return Err(unauthorized("Authenticate"));
    };
    let (user, password) = login.split_once(':').unwrap_or((&login, ""));
    let user_ok = constant_time_eq(user.as_bytes(), credentials.account_sid.as_bytes());
    let password_ok = constant_time_eq(password.as_bytes(), credentials.auth_token.as_bytes());
    if !(user_ok && password_ok) {
        tracing::warn!("Calls API: wrong account or token: 401");
        return Err(unauthorized("Authenticate"));
    }
    if account != credentials.account_sid {
        return Err(TwilioError::not_found(&format!(
            "/{API_VERSION}/Accounts/{account}"
        )));
    }
    Ok(credentials.clone())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn call_uri(account: &str, sid: &str) -> String {
    format!("/{API_VERSION}/Accounts/{account}/Calls/{sid}.json")
}

/// A call resource with Twilio's field names.
pub(super) fn call_json(account: &str, record: &CallRecord) -> Value {
    let updated = [Some(record.created), record.started, record.ended]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(record.created);
    json!({
        "sid": record.sid,
        "account_sid": account,
        "parent_call_sid": record.parent_call_sid,
        "date_created": rfc2822(record.created),
        "date_updated": rfc2822(updated),
        "to": record.to,
        "to_formatted": record.to,
        "from": record.from,
        "from_formatted": record.from,
        "status": record.status.name(),
        "start_time": record.started.map(rfc2822),
        "end_time": record.ended.map(rfc2822),
        "duration": record.duration().map(|secs| secs.to_string()),
        "direction": record.direction.name(),
        "answered_by": null,
        "api_version": API_VERSION,
        "price": null,
        "price_unit": "USD",
        "forwarded_from": null,
        "caller_name": null,
        "group_sid": null,
        "phone_number_sid": null,
        "queue_time": "0",
        "trunk_sid": null,
        "sip_call_id": record.call_id,
        "uri": call_uri(account, &record.sid),
        "subresource_uris": {},
    })
}

/// `{Sid}.json` → `Sid`.
fn sid_of(resource: &str) -> Option<&str> {
    resource.strip_suffix(".json").filter(|sid| !sid.is_empty())
}

pub(super) fn form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

pub(super) fn param<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// `GET …/Calls/{Sid}.json`.
async fn fetch_call(
    State(state): State<TwilioState>,
    Path((account, resource)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, TwilioError> {
    let credentials = authorize(&state, &headers, &account)?;
    let sid =
        sid_of(&resource).ok_or_else(|| TwilioError::not_found(&call_uri(&account, &resource)))?;
    let record = state
        .calls
        .get(sid)
        .ok_or_else(|| TwilioError::not_found(&call_uri(&account, sid)))?;
    Ok(Json(call_json(&credentials.account_sid, &record)))
}

/// `GET …/Calls.json?Status=&To=&From=&Page=&PageSize=`, newest first.
async fn list_calls(
    State(state): State<TwilioState>,
    Path(account): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, TwilioError> {
    let credentials = authorize(&state, &headers, &account)?;
    let query = form(query.unwrap_or_default().as_bytes());
    let status = match param(&query, "Status") {
        Some(text) => Some(CallStatus::parse(text).ok_or_else(|| {
            TwilioError::bad_parameter(format!("Status `{text}` is not a call status"))
        })?),
        None => None,
    };
    let to = param(&query, "To");
    let from = param(&query, "From");
    let number = |name: &str, default: usize| -> Result<usize, TwilioError> {
        match param(&query, name) {
            None => Ok(default),
            Some(text) => text.parse().map_err(|_| {
                TwilioError::bad_parameter(format!("{name} `{text}` is not a number"))
            }),
        }
    };
    let page_size = number("PageSize", DEFAULT_PAGE_SIZE)?.clamp(1, MAX_PAGE_SIZE);
    let page = number("Page", 0)?;
    let matching = state.calls.list(|record| {
        status.is_none_or(|s| record.status == s)
            && to.is_none_or(|to| record.to == to)
            && from.is_none_or(|from| record.from == from)
    });
    let start = page.saturating_mul(page_size);
    let calls: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(page_size)
        .map(|record| call_json(&credentials.account_sid, record))
        .collect();
    let base = format!("/{API_VERSION}/Accounts/{account}/Calls.json");
    let filters: String = [
        ("Status", status.map(CallStatus::name)),
        ("To", to),
        ("From", from),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| (name, v)))
    .fold(String::new(), |mut out, (name, value)| {
        let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        out.push_str(&format!("&{name}={encoded}"));
        out
    });
    let page_uri = |page: usize| format!("{base}?PageSize={page_size}&Page={page}{filters}");
    let more = start + calls.len() < matching.len();
    Ok(Json(json!({
        "calls": calls,
        "start": start,
        "end": (start + calls.len()).saturating_sub(1),
        "page": page,
        "page_size": page_size,
        "uri": page_uri(page),
        "first_page_uri": page_uri(0),
        "next_page_uri": more.then(|| page_uri(page + 1)),
        "previous_page_uri": (page > 0).then(|| page_uri(page - 1)),
    })))
}

/// `POST …/Calls/{Sid}.json`: `Status=completed|canceled`, `Twiml`, or
/// `Url` (+`Method`) — the live call hangs up or runs the new TwiML.
async fn update_call(
    State(state): State<TwilioState>,
    Path((account, resource)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, TwilioError> {
    let credentials = authorize(&state, &headers, &account)?;
    let sid =
        sid_of(&resource).ok_or_else(|| TwilioError::not_found(&call_uri(&account, &resource)))?;
    let not_found = || TwilioError::not_found(&call_uri(&account, sid));
    let form = form(&body);
    let record = state.calls.get(sid).ok_or_else(not_found)?;
    // Bot frameworks read 20404 as "the call already ended": only an
    // ended call gets it. A live dialed leg is controlled through its parent.
    let control = match (&record.control, record.ended) {
        (Some(control), None) => control.clone(),
        (None, None) => {
            return Err(TwilioError::new(
                StatusCode::BAD_REQUEST,
                21220,
                format!(
                    "Call {sid} is a dialed leg: update its parent call {}",
                    record.parent_call_sid.as_deref().unwrap_or("")
                ),
            ))
        }
        _ => return Err(not_found()),
    };
    let command = match param(&form, "Status") {
        Some("completed") => Some(CallControl::Hangup),
        Some("canceled") if record.status.is_final() || record.status == CallStatus::InProgress => {
            // Twilio cancels only calls that have not been answered.
            None
        }
        Some("canceled") => Some(CallControl::Hangup),
        Some(other) => {
            return Err(TwilioError::bad_parameter(format!(
                "Status `{other}` is not completed or canceled"
            )))
        }
        None => {
            let twiml = match (param(&form, "Twiml"), param(&form, "Url")) {
                (Some(twiml), _) => twiml.to_string(),
                (None, Some(url)) => {
                    let method_get =
                        param(&form, "Method").is_some_and(|m| m.eq_ignore_ascii_case("GET"));
                    fetch_twiml(&state.http, &credentials, &record, url, method_get).await?
                }
                (None, None) => {
                    return Err(TwilioError::bad_parameter(
                        "give one of Status, Twiml or Url",
                    ))
                }
            };
            Some(runnable_twiml(&twiml)?)
        }
    };
    if let Some(command) = command {
        control
            .send_timeout(CallInput::Control(command), CONTROL_TIMEOUT)
            .await
            .map_err(|error| match error {
                tokio::sync::mpsc::error::SendTimeoutError::Closed(_) => not_found(),
                tokio::sync::mpsc::error::SendTimeoutError::Timeout(_) => TwilioError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    20503,
                    "the call is too busy to take a command; try again",
                ),
            })?;
    }
    let record = state.calls.get(sid).unwrap_or(record);
    Ok(Json(call_json(&credentials.account_sid, &record)))
}

/// What new TwiML does to a live call. One transfer (`<Dial>`, `<Refer>`)
/// or `<Hangup/>` runs beside the bot, which stays (muted) so a failed
/// transfer goes back to it; any other document replaces what the call is
/// doing: the bot is told goodbye and the verbs run in order.
fn runnable_twiml(twiml: &str) -> Result<CallControl, TwilioError> {
    let invalid = |reason: String| {
        TwilioError::new(
            StatusCode::BAD_REQUEST,
            12100,
            format!("Document parse failure: {reason}"),
        )
    };
    let verbs = parse_twiml(twiml).map_err(|e| invalid(e.to_string()))?;
    if verbs.is_empty() {
        return Err(invalid("the document has no verb".into()));
    }
    let mut main = verbs.clone();
    while main.len() > 1 && main.last() == Some(&Verb::Hangup) {
        main.pop();
    }
    if let [Verb::Dial(_) | Verb::Refer { .. } | Verb::Hangup | Verb::Reject { .. }] =
        main.as_slice()
    {
        if let Ok(actions) = actions_from_twiml(&main) {
            return Ok(CallControl::Actions(actions));
        }
    }
    Ok(CallControl::Twiml(verbs))
}

/// Asks `url` for TwiML with Twilio's request parameters, signed as
/// Twilio signs them.
async fn fetch_twiml(
    http: &reqwest::Client,
    credentials: &ApiCredentials,
    record: &CallRecord,
    url: &str,
    method_get: bool,
) -> Result<String, TwilioError> {
    let failure = |reason: String| {
        TwilioError::new(
            StatusCode::BAD_REQUEST,
            11200,
            format!("HTTP retrieval failure: {url}: {reason}"),
        )
    };
    let parsed = url::Url::parse(url).map_err(|e| failure(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(failure("not an http(s) URL".into()));
    }
    let params = crate::webhook::call_params(&credentials.account_sid, record);
    crate::webhook::fetch_twiml(
        http,
        &credentials.auth_token,
        url,
        method_get,
        &params,
        FETCH_TIMEOUT,
    )
    .await
    .map_err(failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_calls_take_a_transfer_beside_the_bot_or_a_new_document() {
        let dial = "<Response><Dial><Sip>sip:agent@127.0.0.1</Sip></Dial><Hangup/></Response>";
        assert!(matches!(
            runnable_twiml(dial).unwrap(),
            CallControl::Actions(actions) if matches!(actions.as_slice(), [Action::Dial(_)])
        ));
        let play = "<Response><Play>http://x/a.wav</Play><Hangup/></Response>";
        assert!(
            matches!(runnable_twiml(play).unwrap(), CallControl::Twiml(verbs) if verbs.len() == 2)
        );
        for bad in [
            "<Response><Say>hi</Say></Response>",
            "<Response></Response>",
            "not xml",
        ] {
            let error = runnable_twiml(bad).unwrap_err();
            assert_eq!(
                (error.status, error.code),
                (StatusCode::BAD_REQUEST, 12100),
                "{bad}"
            );
        }
    }

    #[test]
    fn paths_name_json_resources() {
        assert_eq!(sid_of("CA0123.json"), Some("CA0123"));
        assert_eq!(sid_of("CA0123"), None);
        assert_eq!(sid_of(".json"), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
