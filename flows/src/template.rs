//! Enhanced TwiML templates, as Twilio's SIP registration pages write them:
//! `{{From}}` and `{{To}}` are the call's parties, and
//! `{{#e164}}…{{/e164}}` formats what it encloses as an E.164 number. A
//! flow's inline `twiml` is rendered per call; the values are XML-escaped
//! so a caller's From cannot inject markup.

/// Renders `template` for a call from `from` to `to`.
pub fn render(template: &str, from: &str, to: &str) -> String {
    let substituted = template
        .replace("{{From}}", &escape(from))
        .replace("{{To}}", &escape(to));
    let mut out = String::with_capacity(substituted.len());
    let mut rest = substituted.as_str();
    while let Some(start) = rest.find("{{#e164}}") {
        out.push_str(&rest[..start]);
        let inner = &rest[start + "{{#e164}}".len()..];
        match inner.find("{{/e164}}") {
            Some(end) => {
                out.push_str(&e164(&inner[..end]));
                rest = &inner[end + "{{/e164}}".len()..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// `+` and the digits; ten digits without a country code are taken as
/// North American (+1), as Twilio's default does. Text with no digits
/// stays as it is.
pub fn e164(text: &str) -> String {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return text.to_string();
    }
    if text.trim_start().starts_with('+') {
        return format!("+{digits}");
    }
    match digits.len() {
        10 => format!("+1{digits}"),
        _ => format!("+{digits}"),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_twilios_sip_registration_template() {
        let template = r#"<Response><Dial callerId="{{#e164}}{{From}}{{/e164}}">{{#e164}}{{To}}{{/e164}}</Dial></Response>"#;
        assert_eq!(
            render(template, "14155550199", "(415) 555-0100"),
            r#"<Response><Dial callerId="+14155550199">+14155550100</Dial></Response>"#
        );
        assert_eq!(e164("+44 20 7946 0000"), "+442079460000");
        assert_eq!(e164("alice"), "alice");
        // A hostile From cannot add markup.
        let hostile = render(
            "<Response><Dial callerId=\"{{From}}\">1</Dial></Response>",
            "\"><Hangup/>",
            "1",
        );
        assert!(!hostile.contains("<Hangup/>"), "{hostile}");
        assert_eq!(render("{{#e164}}5", "a", "b"), "{{#e164}}5");
    }
}
