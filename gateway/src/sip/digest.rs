//! HTTP Digest authentication as SIP uses it (RFC 3261 §22, RFC 7616,
//! RFC 8760): parsing challenges and credentials, computing responses with
//! MD5 or SHA-256 and `qop=auth`. The client side answers a 401/407; the
//! server side (the registrar) checks what a client sent.

use std::fmt::Write as _;

use md5::Md5;
use sha2::{Digest as _, Sha256};

use super::uri::split_unquoted;
use super::SipError;

/// Hash algorithms we compute. `-sess` variants are not offered by the
/// servers we meet and are refused rather than half-supported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    pub fn parse(text: &str) -> Option<Algorithm> {
        match text.trim().to_ascii_uppercase().as_str() {
            "MD5" => Some(Algorithm::Md5),
            "SHA-256" => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Lower-case hex digest of `data`.
    pub fn hex(self, data: &str) -> String {
        match self {
            Algorithm::Md5 => to_hex(&Md5::digest(data.as_bytes())),
            Algorithm::Sha256 => to_hex(&Sha256::digest(data.as_bytes())),
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// `name=value` pairs of a `Digest …` header value, values unquoted.
fn digest_params(value: &str) -> Result<Vec<(String, String)>, SipError> {
    let value = value.trim();
    let (scheme, rest) = value
        .split_once(char::is_whitespace)
        .ok_or_else(|| SipError::new("digest header without parameters"))?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return Err(SipError::new(format!(
            "authentication scheme `{scheme}` is not Digest"
        )));
    }
    let mut params = Vec::new();
    for part in split_unquoted(rest, b',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (name, raw) = part
            .split_once('=')
            .ok_or_else(|| SipError::new(format!("digest parameter `{part}` has no value")))?;
        let raw = raw.trim();
        let unquoted = match raw.strip_prefix('"') {
            Some(inner) => inner
                .strip_suffix('"')
                .ok_or_else(|| SipError::new(format!("unterminated quote in `{part}`")))?
                .replace("\\\"", "\"")
                .replace("\\\\", "\\"),
            None => raw.to_string(),
        };
        params.push((name.trim().to_ascii_lowercase(), unquoted));
    }
    Ok(params)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// A `WWW-Authenticate` / `Proxy-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// The server offered `qop=auth` (we never use `auth-int`).
    pub qop_auth: bool,
    pub stale: bool,
}

impl Challenge {
    /// Parses one challenge. An algorithm we do not compute is an error so
    /// the caller can pick another challenge of the same response.
    pub fn parse(value: &str) -> Result<Challenge, SipError> {
        let params = digest_params(value)?;
        let algorithm = match param(&params, "algorithm") {
            None => Algorithm::Md5,
            Some(name) => Algorithm::parse(name)
                .ok_or_else(|| SipError::new(format!("unsupported digest algorithm `{name}`")))?,
        };
        let qop = param(&params, "qop");
        let qop_auth = qop.is_some_and(|qop| qop.split(',').any(|q| q.trim() == "auth"));
        if qop.is_some() && !qop_auth {
            return Err(SipError::new("challenge offers no qop we support"));
        }
        Ok(Challenge {
            realm: param(&params, "realm")
                .ok_or_else(|| SipError::new("challenge without realm"))?
                .to_string(),
            nonce: param(&params, "nonce")
                .ok_or_else(|| SipError::new("challenge without nonce"))?
                .to_string(),
            opaque: param(&params, "opaque").map(str::to_string),
            algorithm,
            qop_auth,
            stale: param(&params, "stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }

    /// The best challenge of a 401/407 among those we can answer:
    /// SHA-256 before MD5 (RFC 8760 §2.4 lets the client choose).
    pub fn best<'a>(values: impl Iterator<Item = &'a str>) -> Option<Challenge> {
        values
            .filter_map(|value| Challenge::parse(value).ok())
            .max_by_key(|challenge| match challenge.algorithm {
                Algorithm::Sha256 => 1,
                Algorithm::Md5 => 0,
            })
    }

    /// The header value for a request authenticated against this challenge.
    pub fn authorization(
        &self,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        cnonce: &str,
        nonce_count: u32,
    ) -> String {
        let ha1 = self
            .algorithm
            .hex(&format!("{username}:{}:{password}", self.realm));
        let nc = format!("{nonce_count:08x}");
        let response = response(
            self.algorithm,
            &ha1,
            &self.nonce,
            self.qop_auth.then_some((nc.as_str(), cnonce)),
            method,
            uri,
        );
        let mut value = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", algorithm={}",
            quote(username),
            quote(&self.realm),
            quote(&self.nonce),
            self.algorithm.name()
        );
        if self.qop_auth {
            let _ = write!(value, ", qop=auth, nc={nc}, cnonce=\"{cnonce}\"");
        }
        if let Some(opaque) = &self.opaque {
            let _ = write!(value, ", opaque=\"{}\"", quote(opaque));
        }
        value
    }
}

fn quote(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// RFC 7616 §3.4.1: the `response` value. `qop` is `(nc, cnonce)` when
/// `qop=auth` is in use, absent for RFC 2069 style.
pub fn response(
    algorithm: Algorithm,
    ha1: &str,
    nonce: &str,
    qop: Option<(&str, &str)>,
    method: &str,
    uri: &str,
) -> String {
    let ha2 = algorithm.hex(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce)) => algorithm.hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")),
        None => algorithm.hex(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// An `Authorization` / `Proxy-Authorization` header as a server reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    /// `(nc, cnonce)` when the client used `qop=auth`.
    pub qop: Option<(String, String)>,
    pub opaque: Option<String>,
}

impl Credentials {
    pub fn parse(value: &str) -> Result<Credentials, SipError> {
        let params = digest_params(value)?;
        let required = |name: &str| {
            param(&params, name)
                .map(str::to_string)
                .ok_or_else(|| SipError::new(format!("credentials without {name}")))
        };
        let algorithm = match param(&params, "algorithm") {
            None => Algorithm::Md5,
            Some(name) => Algorithm::parse(name)
                .ok_or_else(|| SipError::new(format!("unsupported digest algorithm `{name}`")))?,
        };
        let qop = match param(&params, "qop") {
            None => None,
            Some("auth") => Some((required("nc")?, required("cnonce")?)),
            Some(other) => return Err(SipError::new(format!("unsupported qop `{other}`"))),
        };
        Ok(Credentials {
            username: required("username")?,
            realm: required("realm")?,
            nonce: required("nonce")?,
            uri: required("uri")?,
            response: required("response")?,
            algorithm,
            qop,
            opaque: param(&params, "opaque").map(str::to_string),
        })
    }

    /// Whether the response matches `ha1` (H(username:realm:password) in
    /// this algorithm) for `method`. Compared in constant time.
    pub fn verify(&self, ha1: &str, method: &str) -> bool {
        let qop = self
            .qop
            .as_ref()
            .map(|(nc, cnonce)| (nc.as_str(), cnonce.as_str()));
        let expected = response(self.algorithm, ha1, &self.nonce, qop, method, &self.uri);
        constant_time_eq(
            expected.as_bytes(),
            self.response.to_ascii_lowercase().as_bytes(),
        )
    }

    /// The nonce count as a number (1 when `qop` was not used).
    pub fn nonce_count(&self) -> Option<u32> {
        match &self.qop {
            Some((nc, _)) => u32::from_str_radix(nc, 16).ok(),
            None => Some(1),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 2617 §3.5's example, with the SIP method and URI swapped for its GET.
    #[test]
    fn rfc2617_md5_example() {
        let challenge = Challenge::parse(
            r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .unwrap();
        assert!(challenge.qop_auth);
        let header = challenge.authorization(
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "0a4f113b",
            1,
        );
        assert!(
            header.contains(r#"response="6629fae49393a05397450978507c4ef1""#),
            "{header}"
        );
        let credentials = Credentials::parse(&header).unwrap();
        let ha1 = Algorithm::Md5.hex("Mufasa:testrealm@host.com:Circle Of Life");
        assert!(credentials.verify(&ha1, "GET"));
        assert!(!credentials.verify(&ha1, "POST"));
        assert_eq!(credentials.nonce_count(), Some(1));
    }

    // RFC 7616 §3.9.1's SHA-256 example.
    #[test]
    fn rfc7616_sha256_example() {
        let challenge = Challenge::parse(
            r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#,
        )
        .unwrap();
        assert_eq!(challenge.algorithm, Algorithm::Sha256);
        let header = challenge.authorization(
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            1,
        );
        assert!(
            header.contains(
                r#"response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1""#
            ),
            "{header}"
        );
    }

    #[test]
    fn best_prefers_sha256_and_skips_unknown_algorithms() {
        let values = [
            r#"Digest realm="r", nonce="n1", algorithm=MD5, qop="auth""#,
            r#"Digest realm="r", nonce="n2", algorithm=SHA-512-256, qop="auth""#,
            r#"Digest realm="r", nonce="n3", algorithm=SHA-256, qop="auth""#,
        ];
        let best = Challenge::best(values.into_iter()).unwrap();
        assert_eq!(
            (best.algorithm, best.nonce.as_str()),
            (Algorithm::Sha256, "n3")
        );
        assert!(Challenge::best([values[1]].into_iter()).is_none());
    }

    #[test]
    fn malformed_headers_are_errors() {
        assert!(Challenge::parse("Basic realm=\"x\"").is_err());
        assert!(Challenge::parse("Digest realm=\"x").is_err());
        assert!(Challenge::parse("Digest nonce=\"x\"").is_err());
        assert!(Credentials::parse("Digest username=\"a\"").is_err());
        assert!(Challenge::parse(r#"Digest realm="r", nonce="n", qop="auth-int""#).is_err());
        let stale = Challenge::parse(r#"Digest realm="r", nonce="n", stale=TRUE"#).unwrap();
        assert!(stale.stale && !stale.qop_auth);
    }
}
