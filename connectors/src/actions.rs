//! Bot "action" messages (Voiceflow-style custom actions, PROTOCOLS.md §2),
//! shared by the Twilio Media Streams and the generic WebSocket connectors:
//!
//! - `{"event":"action","name":"twiml","body":"<Response>…</Response>"}` →
//!   the TwiML's actions ([`switchboard_flows::twiml`]);
//! - `{"event":"action","name":"forward-call","body":{"number":"…"}}` (the
//!   body may also be that object as a JSON string) → [`Action::Dial`] to the
//!   SIP URI, or to `tel:<number>` for a phone number;
//! - `{"event":"action","name":"hangup"}` (optional `body.reason`) → [`Action::Hangup`];
//! - `{"event":"action","name":"DTMF","body":{"digits":"12#"}}` → [`Action::SendDtmf`].
//!
//! Names match case-insensitively. Errors are plain sentences, fit for the
//! log and for the `action_result` the bot is sent back.

use serde_json::Value;
use switchboard_flows::twiml::{actions_from_twiml, is_sip_uri, parse_twiml};
use switchboard_flows::{Action, DialTarget};

/// Ring time of a `forward-call` (Twilio's `<Dial>` default).
pub const FORWARD_TIMEOUT_SECS: u32 = 30;
/// Most DTMF digits one action may send.
const MAX_DIGITS: usize = 64;
/// Longest reason kept from a bot's hang-up.
const MAX_REASON_CHARS: usize = 200;

/// The `name` of an action message, for answering the bot; empty when absent.
pub fn action_name(value: &Value) -> &str {
    value.get("name").and_then(Value::as_str).unwrap_or("")
}

/// The actions one `{"event":"action",…}` message asks for, in order.
pub fn parse_action_message(value: &Value) -> Result<Vec<Action>, String> {
    let name = match value.get("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => name.trim(),
        _ => return Err("the action has no name".to_owned()),
    };
    let body = value.get("body").unwrap_or(&Value::Null);
    if name.eq_ignore_ascii_case("twiml") {
        twiml(body)
    } else if name.eq_ignore_ascii_case("forward-call") {
        forward_call(body).map(|action| vec![action])
    } else if name.eq_ignore_ascii_case("hangup") {
        // A bot that wants to hang up is never refused over its reason.
        let reason = match body {
            Value::String(text) if !text.trim_start().starts_with('{') => Some(text.clone()),
            _ => string_field(body, "reason").ok().flatten(),
        }
        .map(|r| r.trim().chars().take(MAX_REASON_CHARS).collect::<String>())
        .filter(|r| !r.is_empty());
        Ok(vec![Action::Hangup { reason }])
    } else if name.eq_ignore_ascii_case("dtmf") {
        dtmf(body).map(|action| vec![action])
    } else {
        Err(format!("unknown action {name:?}"))
    }
}

fn twiml(body: &Value) -> Result<Vec<Action>, String> {
    let Value::String(text) = body else {
        return Err("the twiml action needs the TwiML text as its body".to_owned());
    };
    let verbs = parse_twiml(text).map_err(|e| format!("bad TwiML: {e}"))?;
    let actions = actions_from_twiml(&verbs).map_err(|e| format!("bad TwiML: {e}"))?;
    if actions.is_empty() {
        return Err("the TwiML holds no verb".to_owned());
    }
    Ok(actions)
}

/// An object body, also accepted as a JSON string of one; `Null` when absent.
fn object_body(body: &Value) -> Result<Value, String> {
    match body {
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(value @ Value::Object(_)) => Ok(value),
            _ => Err("the body is not a JSON object".to_owned()),
        },
        Value::Object(_) | Value::Null => Ok(body.clone()),
        _ => Err("the body is not a JSON object".to_owned()),
    }
}

/// A string field of an object body; numbers are taken as their digits
/// (bots often send phone numbers and digits as numbers).
fn string_field(body: &Value, key: &str) -> Result<Option<String>, String> {
    match object_body(body)?.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) if n.is_u64() => Ok(Some(n.to_string())),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

fn forward_call(body: &Value) -> Result<Action, String> {
    let number = string_field(body, "number")?
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .ok_or("forward-call needs a number")?;
    // Through an outbound registration the number is an extension of its PBX.
    let registration = string_field(body, "registration")?
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    let uri = match &registration {
        Some(_)
            if !number.contains(':')
                && number
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-_.*#".contains(c)) =>
        {
            format!("sip:{number}")
        }
        _ => dial_uri(&number)
            .ok_or_else(|| format!("{number:?} is neither a SIP URI nor a phone number"))?,
    };
    Ok(Action::Dial(DialTarget {
        uri,
        timeout_secs: FORWARD_TIMEOUT_SECS,
        registration,
        ..DialTarget::default()
    }))
}

/// `sip:`/`sips:` URIs pass as they are; phone numbers (optional leading
/// `+`, digits, visual separators) become `tel:` URIs without separators.
fn dial_uri(number: &str) -> Option<String> {
    if is_sip_uri(number) {
        return Some(number.to_owned());
    }
    let number = match number.get(..4) {
        Some(scheme) if scheme.eq_ignore_ascii_case("tel:") => &number[4..],
        _ => number,
    };
    let (plus, rest) = match number.strip_prefix('+') {
        Some(rest) => ("+", rest),
        None => ("", number),
    };
    if !rest
        .chars()
        .all(|c| c.is_ascii_digit() || " -().".contains(c))
    {
        return None;
    }
    let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() || digits.len() > 32 {
        return None;
    }
    Some(format!("tel:{plus}{digits}"))
}

fn dtmf(body: &Value) -> Result<Action, String> {
    // A bare string of digits is accepted too.
    let digits = match body {
        Value::String(text) if !text.trim_start().starts_with('{') => Some(text.clone()),
        _ => string_field(body, "digits")?,
    };
    let digits: String = digits
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if digits.is_empty() {
        return Err("DTMF needs digits".to_owned());
    }
    if digits.len() > MAX_DIGITS {
        return Err(format!("DTMF takes at most {MAX_DIGITS} digits"));
    }
    if let Some(bad) = digits
        .chars()
        .find(|c| !(c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D' | 'a'..='d')))
    {
        return Err(format!("{bad:?} is not a DTMF digit"));
    }
    Ok(Action::SendDtmf {
        digits: digits.to_ascii_uppercase(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn dial(uri: &str) -> Action {
        Action::Dial(DialTarget {
            uri: uri.into(),
            timeout_secs: FORWARD_TIMEOUT_SECS,
            ..DialTarget::default()
        })
    }

    #[test]
    fn twiml_actions() {
        let msg = json!({"event": "action", "name": "twiml",
            "body": "<Response><Dial timeout=\"9\"><Sip>sip:agent@pbx;transport=tcp</Sip></Dial></Response>"});
        let actions = parse_action_message(&msg).unwrap();
        let [Action::Dial(target)] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert_eq!(target.uri, "sip:agent@pbx;transport=tcp");
        assert_eq!(target.timeout_secs, 9);
        let msg = json!({"name": "TwiML", "body": "<Response><Hangup/></Response>"});
        assert_eq!(
            parse_action_message(&msg).unwrap(),
            vec![Action::Hangup { reason: None }]
        );
        for (body, needle) in [
            (json!("<Response><Dial>"), "bad TwiML: malformed"),
            (
                json!("<Response><Say>hi</Say></Response>"),
                "unknown verb <Say>",
            ),
            (
                json!("<Response><Pause/></Response>"),
                "<Pause> is not supported",
            ),
            (json!("<Response/>"), "no verb"),
            (json!({"twiml": "<Response/>"}), "TwiML text"),
            (Value::Null, "TwiML text"),
        ] {
            let err = parse_action_message(&json!({"name": "twiml", "body": body})).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn forward_call() {
        let cases = [
            (
                json!({"number": "sip:agent@pbx.example.com"}),
                "sip:agent@pbx.example.com",
            ),
            (json!({"number": " +1 (555) 123-4567 "}), "tel:+15551234567"),
            (json!({"number": 5551234}), "tel:5551234"),
            (json!({"number": "tel:+4930123"}), "tel:+4930123"),
            (
                json!("{\"number\": \"sips:a@b;transport=tls\"}"),
                "sips:a@b;transport=tls",
            ),
        ];
        for (body, uri) in cases {
            let msg = json!({"event": "action", "name": "forward-call", "body": body});
            assert_eq!(
                parse_action_message(&msg).unwrap(),
                vec![dial(uri)],
                "{msg}"
            );
        }
        for body in [
            json!({}),
            json!({"number": ""}),
            json!({"number": "agent"}),
            json!({"number": "+1+2"}),
            json!({"number": "sip:a b@c"}),
            json!({"number": ["1"]}),
            json!("not json"),
            json!(42),
            Value::Null,
        ] {
            let msg = json!({"name": "forward-call", "body": body});
            assert!(parse_action_message(&msg).is_err(), "{msg}");
        }
    }

    #[test]
    fn hangup_and_dtmf() {
        assert_eq!(
            parse_action_message(&json!({"event": "action", "name": "hangup"})).unwrap(),
            vec![Action::Hangup { reason: None }]
        );
        assert_eq!(
            parse_action_message(&json!({"name": "Hangup", "body": {"reason": " done "}})).unwrap(),
            vec![Action::Hangup {
                reason: Some("done".into())
            }]
        );
        for body in [
            json!({"digits": "12#"}),
            json!("{\"digits\":\"12#\"}"),
            json!("1 2 #"),
        ] {
            let msg = json!({"event": "action", "name": "DTMF", "body": body});
            assert_eq!(
                parse_action_message(&msg).unwrap(),
                vec![Action::SendDtmf {
                    digits: "12#".into()
                }],
                "{msg}"
            );
        }
        assert_eq!(
            parse_action_message(&json!({"name": "dtmf", "body": {"digits": 90}})).unwrap(),
            vec![Action::SendDtmf {
                digits: "90".into()
            }]
        );
        for body in [
            json!({}),
            json!({"digits": "12x"}),
            json!({"digits": "1".repeat(65)}),
        ] {
            assert!(parse_action_message(&json!({"name": "DTMF", "body": body})).is_err());
        }
    }

    #[test]
    fn names() {
        let err = parse_action_message(&json!({"event": "action"})).unwrap_err();
        assert!(err.contains("no name"), "{err}");
        let msg = json!({"name": "interruption", "body": {"allowInterrupts": false}});
        let err = parse_action_message(&msg).unwrap_err();
        assert!(err.contains("unknown action \"interruption\""), "{err}");
        assert_eq!(action_name(&msg), "interruption");
        assert_eq!(action_name(&json!({"name": 3})), "");
    }
}
