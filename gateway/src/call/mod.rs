//! Calls: one task per call owning its legs (the caller's, and the party it
//! is transferred to), their RTP sockets and media, and a bot session or a
//! bridge. The endpoint talks to a call only through [`CallInput`]; the call
//! talks back through [`EndpointCommand`].

mod audio;
mod bot;
mod bot_link;
mod bridge;
mod caller;
mod control;
pub mod dial;
mod dial_action;
mod dial_resource;
mod gather;
pub mod leg;
pub mod media;
pub mod outbound;
pub mod play;
mod ports;
mod recording;
mod refer;
pub mod registry;
mod secure_io;
mod session;
pub mod status_callback;
mod transfer;
pub mod trunk;
mod twiml_program;

use crate::sip::message::{Request, Response, SipMessage};
use crate::sip::transaction::{Peer, ServerTxId};

pub use leg::LegInput;
pub use ports::{RtpPorts, RtpSockets};
pub use session::{run_call, CallSetup};

/// Messages queued from the endpoint to one call. A full queue means the
/// call task is stuck: the endpoint answers requests 503 itself and drops
/// the rest (SIP retransmits).
pub const CALL_INPUT_CAPACITY: usize = 64;

/// How the endpoint and a call name the call: unique for the process's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallRef(pub u64);

/// One of a call's legs; the caller's is [`LegId::CALLER`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u32);

impl LegId {
    pub const CALLER: LegId = LegId(0);
}

/// What the endpoint hands a call. SIP messages are the common case, so
/// they travel inline rather than boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum CallInput {
    /// Something for one of the call's legs.
    Leg { leg: LegId, input: LegInput },
    /// The gateway is stopping: end the call now.
    Shutdown,
    /// The Calls API acts on the call.
    Control(CallControl),
}

/// What the Calls API may do to a live call.
#[derive(Debug)]
pub enum CallControl {
    /// `Status=completed` (or `canceled`): hang up.
    Hangup,
    /// New TwiML (`Twiml`, or what `Url` answered), already parsed and
    /// checked: it runs now, in place of the bot or verb in progress.
    Actions(Vec<switchboard_flows::Action>),
    /// A new document: what the call was doing stops and it runs.
    Twiml(Vec<switchboard_flows::Verb>),
}

/// What a call asks of the endpoint.
#[derive(Debug)]
pub enum EndpointCommand {
    /// Answer a server transaction.
    Respond { tx: ServerTxId, response: Response },
    /// Answer and forget the transaction (a challenge).
    RespondStatelessly { tx: ServerTxId, response: Response },
    /// Send a request in a new client transaction; its responses (or its
    /// failure) go back to `leg` of `call`.
    SendRequest {
        call: CallRef,
        leg: LegId,
        request: Request,
        peer: Peer,
    },
    /// Send without a transaction (ACK for a 2xx).
    SendStateless { message: SipMessage, peer: Peer },
    /// Send an outbound registration's REGISTER; its answers go back to
    /// the registration manager under `id`.
    Register {
        id: String,
        request: Request,
        peer: Peer,
    },
    /// Send bytes as they are (a keep-alive).
    SendRaw { peer: Peer, bytes: Vec<u8> },
    /// Route requests of the dialog with this Call-ID and our tag to `leg`
    /// (a leg the call created: its dialog is ours to name).
    AddDialog {
        call: CallRef,
        leg: LegId,
        call_id: String,
        local_tag: String,
    },
    /// The Calls API places a call.
    PlaceCall(Box<outbound::PlaceCall>),
    /// A reloaded configuration: new calls route by it.
    Reconfigure(Box<crate::endpoint::Reconfiguration>),
}
