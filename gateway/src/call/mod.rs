//! Calls: one task per call owning its dialog, RTP socket, media pipeline and
//! bot session. The endpoint talks to a call only through [`CallInput`]; the
//! call talks back through [`EndpointCommand`].

pub mod leg;
pub mod media;
mod ports;
mod recording;
mod session;

use crate::sip::message::{Request, Response, SipMessage};
use crate::sip::transaction::{ClientTxId, Peer, ServerTxId};

pub use ports::RtpPorts;
pub use session::{run_call, CallSetup};

/// Messages queued from the endpoint to one call. A full queue means the call
/// task is stuck; the endpoint drops the message and SIP retransmits.
pub const CALL_INPUT_CAPACITY: usize = 32;

/// What the endpoint hands a call.
#[derive(Debug)]
pub enum CallInput {
    /// An in-dialog request (BYE, re-INVITE, INFO, OPTIONS, UPDATE…).
    Request { tx: ServerTxId, request: Request },
    /// The ACK for our 2xx.
    Ack(Request),
    /// The caller cancelled the INVITE before we answered.
    Cancelled,
    /// A response to a request this call sent (its BYE).
    Response { tx: ClientTxId, response: Response },
    /// A request this call sent got no answer.
    RequestTimeout { tx: ClientTxId },
    /// Our 2xx was never acknowledged.
    AckTimeout,
    /// The gateway is stopping: end the call now.
    Shutdown,
}

/// What a call asks of the endpoint.
#[derive(Debug)]
pub enum EndpointCommand {
    /// Answer a server transaction.
    Respond { tx: ServerTxId, response: Response },
    /// Send a request in a new client transaction; the endpoint routes its
    /// responses back to `call_id`.
    SendRequest {
        call_id: String,
        request: Request,
        peer: Peer,
    },
    /// Send without a transaction (ACK for a 2xx).
    SendStateless { message: SipMessage, peer: Peer },
    /// The call has ended and released everything it held.
    CallEnded { call_id: String },
}
