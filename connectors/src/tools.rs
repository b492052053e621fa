//! Bot tools (Ultravox client tools, OpenAI functions): what each
//! [`ToolKind`] tells the model it does, and the [`Action`] an invocation
//! becomes. Shared so every model-driven bot offers the same tools.

use serde_json::Value;
use switchboard_flows::{Action, DialTarget, ToolKind};

/// Ring time for transfers: the tool has no way to choose one.
const DIAL_TIMEOUT_SECS: u32 = 30;
/// Longest DTMF string or transfer target accepted from the model.
const MAX_DIGITS: usize = 64;
const MAX_TARGET_CHARS: usize = 512;

/// How a tool is described to the model: what it does and its string
/// parameters (name, description), all required.
pub(crate) struct ToolSpec {
    pub description: &'static str,
    pub parameters: &'static [(&'static str, &'static str)],
}

pub(crate) fn spec(kind: ToolKind) -> ToolSpec {
    match kind {
        ToolKind::Transfer => ToolSpec {
            description: "Transfer the caller to another party. Say goodbye first.",
            parameters: &[(
                "target",
                "SIP URI (sip:user@host) or tel: URI of the party to transfer to",
            )],
        },
        ToolKind::Hangup => ToolSpec {
            description: "End the call. Say goodbye first.",
            parameters: &[],
        },
        ToolKind::SendDtmf => ToolSpec {
            description:
                "Send touch-tone (DTMF) digits on the call, e.g. to navigate a phone menu.",
            parameters: &[("digits", "Digits to send: 0-9, *, #, A-D")],
        },
    }
}

/// The action a tool invocation asks for, or why its arguments are unusable
/// (told to the model so it can retry).
pub(crate) fn tool_action(kind: ToolKind, parameters: Option<&Value>) -> Result<Action, String> {
    let param = |name: &str| parameters.and_then(|p| p.get(name));
    match kind {
        ToolKind::Transfer => {
            let target = param("target").and_then(Value::as_str).unwrap_or("").trim();
            if !is_dial_uri(target) {
                return Err("target must be a sip:, sips: or tel: URI".to_owned());
            }
            Ok(Action::Dial(DialTarget {
                uri: target.to_owned(),
                timeout_secs: DIAL_TIMEOUT_SECS,
                ..DialTarget::default()
            }))
        }
        ToolKind::Hangup => {
            let reason = param("reason")
                .and_then(Value::as_str)
                .map(|r| r.chars().take(200).collect::<String>())
                .filter(|r| !r.trim().is_empty());
            Ok(Action::Hangup { reason })
        }
        ToolKind::SendDtmf => {
            // Models sometimes pass digits as a number.
            let digits = match param("digits") {
                Some(Value::String(s)) => s.trim().to_ascii_uppercase(),
                Some(Value::Number(n)) if n.is_u64() => n.to_string(),
                _ => String::new(),
            };
            let valid = !digits.is_empty()
                && digits.len() <= MAX_DIGITS
                && digits
                    .bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'*' | b'#' | b'A'..=b'D'));
            if !valid {
                return Err(format!(
                    "digits must be 1 to {MAX_DIGITS} of 0-9, *, #, A-D"
                ));
            }
            Ok(Action::SendDtmf { digits })
        }
    }
}

/// A transfer target we are willing to put in a Request-URI: a known scheme,
/// something after it, and nothing that could break a SIP header.
pub(crate) fn is_dial_uri(target: &str) -> bool {
    let lower = target.get(..5).unwrap_or(target).to_ascii_lowercase();
    let rest = if lower.starts_with("sips:") {
        &target[5..]
    } else if lower.starts_with("sip:") || lower.starts_with("tel:") {
        &target[4..]
    } else {
        return false;
    };
    !rest.is_empty()
        && target.chars().count() <= MAX_TARGET_CHARS
        && !target
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"'))
}
