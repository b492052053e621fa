//! SIP signalling as sans-IO pieces: message model and tolerant framing,
//! URIs, transactions (RFC 3261 §17 with RFC 6026), dialogs and response
//! building. Sockets live in `crate::transport`.
//!
//! We own the message model rather than use rsip: rsip mangles IPv6 hosts,
//! ignores compact header forms and folding, and does not check
//! Content-Length (see DESIGN.md §6).

pub mod authenticator;
pub mod dialog;
pub mod digest;
pub mod framing;
pub mod headers;
pub mod message;
pub mod pending_invites;
pub mod resolve;
pub mod response;
pub mod transaction;
pub mod uri;

/// Something in a SIP message that does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SipError(pub String);

impl SipError {
    pub fn new(reason: impl Into<String>) -> Self {
        SipError(reason.into())
    }
}
