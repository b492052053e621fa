//! A registering phone written for the tests: REGISTERs over UDP from its
//! own socket, answers digest challenges (MD5 or SHA-256, computed here,
//! independently of the gateway), and can replay what it sent.

use std::net::SocketAddr;
use std::time::Duration;

use md5::Md5;
use sha2::{Digest, Sha256};

use super::raw_sip::{header, status, RawSip};

pub struct Phone {
    pub sip: RawSip,
    pub user: String,
    pub password: String,
    pub domain: String,
    pub call_id: String,
    cseq: u32,
    nonce_count: u32,
    /// The last Authorization header sent.
    pub last_authorization: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hash(algorithm: &str, text: &str) -> String {
    match algorithm {
        "SHA-256" => hex(&Sha256::digest(text.as_bytes())),
        _ => hex(&Md5::digest(text.as_bytes())),
    }
}

/// A parameter of a digest header.
pub fn param(value: &str, name: &str) -> Option<String> {
    value.split(',').find_map(|part| {
        let part = part.trim().trim_start_matches("Digest ").trim();
        let (key, value) = part.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"').to_string())
    })
}

impl Phone {
    pub fn new(target: SocketAddr, user: &str, password: &str) -> Phone {
        Phone {
            sip: RawSip::new(target),
            user: user.into(),
            password: password.into(),
            domain: target.to_string(),
            call_id: format!("reg-{user}-{}", std::process::id()),
            cseq: 0,
            nonce_count: 0,
            last_authorization: None,
        }
    }

    fn register_text(
        &mut self,
        contacts: &[String],
        expires: Option<u32>,
        authorization: Option<&str>,
    ) -> String {
        self.cseq += 1;
        let mut extra = String::new();
        for contact in contacts {
            extra.push_str(&format!("Contact: {contact}\r\n"));
        }
        if let Some(expires) = expires {
            extra.push_str(&format!("Expires: {expires}\r\n"));
        }
        if let Some(authorization) = authorization {
            extra.push_str(&format!("Authorization: {authorization}\r\n"));
        }
        extra.push_str("User-Agent: test-phone/1.0\r\n");
        format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bKreg{call}{cseq}\r\nFrom: <sip:{user}@{domain}>;tag=ph{cseq}\r\nTo: <sip:{user}@{domain}>\r\nCall-ID: {call}\r\nCSeq: {cseq} REGISTER\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n",
            domain = self.domain,
            via = self.sip.sent_by(),
            user = self.user,
            call = self.call_id,
            cseq = self.cseq,
        )
    }

    /// Sends a REGISTER, answers one challenge (preferring `algorithm`),
    /// and returns the final response.
    pub fn register(
        &mut self,
        contacts: &[String],
        expires: Option<u32>,
        algorithm: &str,
    ) -> String {
        let first = self.register_text(contacts, expires, None);
        self.sip.send(&first);
        let response = self.final_response();
        if status(&response) != Some(401) {
            return response;
        }
        let authorization = self.answer(&response, algorithm, "REGISTER");
        let second = self.register_text(contacts, expires, Some(&authorization));
        self.last_authorization = Some(authorization);
        self.sip.send(&second);
        self.final_response()
    }

    /// Sends a REGISTER carrying exactly `authorization` (a replay).
    pub fn register_with(
        &mut self,
        contacts: &[String],
        expires: Option<u32>,
        authorization: &str,
    ) -> String {
        let text = self.register_text(contacts, expires, Some(authorization));
        self.sip.send(&text);
        self.final_response()
    }

    /// The Authorization for `response`'s challenge of `algorithm` (or
    /// its first one).
    pub fn answer(&mut self, response: &str, algorithm: &str, method: &str) -> String {
        let challenges: Vec<&str> = response
            .lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.eq_ignore_ascii_case("WWW-Authenticate")
                    || key.eq_ignore_ascii_case("Proxy-Authenticate"))
                .then_some(value.trim())
            })
            .collect();
        let challenge = challenges
            .iter()
            .find(|c| param(c, "algorithm").as_deref() == Some(algorithm))
            .or(challenges.first())
            .unwrap_or_else(|| panic!("no challenge in:\n{response}"));
        let algorithm = param(challenge, "algorithm").unwrap_or_else(|| "MD5".into());
        let realm = param(challenge, "realm").unwrap();
        let nonce = param(challenge, "nonce").unwrap();
        let uri = format!("sip:{}", self.domain);
        self.nonce_count += 1;
        let nc = format!("{:08x}", self.nonce_count);
        let cnonce = "0a4f113b";
        let ha1 = hash(
            &algorithm,
            &format!("{}:{realm}:{}", self.user, self.password),
        );
        let ha2 = hash(&algorithm, &format!("{method}:{uri}"));
        let response = hash(
            &algorithm,
            &format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"),
        );
        format!(
            "Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm={algorithm}, qop=auth, nc={nc}, cnonce=\"{cnonce}\"",
            self.user
        )
    }

    fn final_response(&self) -> String {
        self.sip
            .wait_for(
                |text| {
                    status(text).is_some_and(|s| s >= 200)
                        && header(text, "CSeq").is_some_and(|c| c.ends_with("REGISTER"))
                },
                Duration::from_secs(5),
            )
            .expect("a final response to REGISTER")
    }
}
