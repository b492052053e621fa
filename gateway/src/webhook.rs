//! Requests to an operator's web hooks the way Twilio makes them: its
//! parameter names, and `X-Twilio-Signature` (HMAC-SHA1 with the auth
//! token over the URL and the sorted POST parameters), so code written
//! against Twilio validates them unchanged.

use base64::Engine;
use hmac::{Hmac, Mac};

use crate::call::registry::CallRecord;

/// Twilio's parameters describing `record`.
pub fn call_params(account_sid: &str, record: &CallRecord) -> Vec<(&'static str, String)> {
    vec![
        ("AccountSid", account_sid.to_string()),
        ("ApiVersion", crate::api::API_VERSION.to_string()),
        ("CallSid", record.sid.clone()),
        ("CallStatus", record.status.name().to_string()),
        ("Called", record.to.clone()),
        ("Caller", record.from.clone()),
        ("Direction", record.direction.name().to_string()),
        ("From", record.from.clone()),
        ("SipCallId", record.call_id.clone()),
        ("To", record.to.clone()),
    ]
}

/// `X-Twilio-Signature` for a request to `url` carrying `params` in its
/// POST body (none for GET, whose parameters are in `url`).
pub fn signature<K: AsRef<str>>(auth_token: &str, url: &str, params: &[(K, String)]) -> String {
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(name, value)| (name.as_ref(), value.as_str()))
        .collect();
    sorted.sort_unstable();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A signed GET (parameters in the query) or form POST to `url`.
pub fn signed_request<K: AsRef<str>>(
    http: &reqwest::Client,
    auth_token: &str,
    url: &str,
    method_get: bool,
    params: &[(K, String)],
) -> reqwest::RequestBuilder {
    let encoded: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().map(|(k, v)| (k.as_ref(), v.as_str())))
        .finish();
    if method_get {
        let separator = if url.contains('?') { '&' } else { '?' };
        let full = format!("{url}{separator}{encoded}");
        let signed = signature::<&str>(auth_token, &full, &[]);
        http.get(full).header("X-Twilio-Signature", signed)
    } else {
        http.post(url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("X-Twilio-Signature", signature(auth_token, url, params))
            .body(encoded)
    }
}

/// Sends a signed request for TwiML and reads the answer, bounded by
/// the largest TwiML document; errors say why, without the URL.
pub async fn fetch_twiml<K: AsRef<str>>(
    http: &reqwest::Client,
    auth_token: &str,
    url: &str,
    method_get: bool,
    params: &[(K, String)],
    timeout: std::time::Duration,
) -> Result<String, String> {
    let mut response = signed_request(http, auth_token, url, method_get, params)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > switchboard_flows::twiml::MAX_TWIML_BYTES {
            return Err("answer larger than a TwiML document may be".into());
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| "answer is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from Twilio's security documentation; the value is what
    /// `twilio.request_validator.RequestValidator.compute_signature` gives.
    #[test]
    fn signs_as_twilio_documents() {
        let params = [
            ("CallSid", "CA1234567890ABCDE".to_string()),
            ("Caller", "+12349013030".to_string()),
            ("Digits", "1234".to_string()),
            ("From", "+12349013030".to_string()),
            ("To", "+18005551212".to_string()),
        ];
        assert_eq!(
            signature(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }
}
