//! Actions a bot can ask of the call: the one vocabulary shared by bot tool
//! calls, TwiML and (later) the HTTP API.

/// Where a transfer should go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialTarget {
    /// SIP URI of the human or system to reach, e.g. `sip:agent@pbx;transport=tcp`.
    pub uri: String,
    /// Caller ID to present on the new leg, if the bot chose one.
    pub caller_id: Option<String>,
    /// Digest credentials for the new leg's INVITE.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Ring time before giving up.
    pub timeout_secs: u32,
}

/// Something a bot wants the gateway to do with the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Bridge the caller to another SIP party (B2BUA).
    Dial(DialTarget),
    /// Ask the caller's side to call someone else (SIP REFER).
    Refer { uri: String },
    /// End the call.
    Hangup { reason: Option<String> },
    /// Play DTMF digits to the caller's side.
    SendDtmf { digits: String },
    /// Fetch new instructions for the call from a URL.
    Redirect { url: String },
}

impl Action {
    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Dial(_) => "dial",
            Action::Refer { .. } => "refer",
            Action::Hangup { .. } => "hangup",
            Action::SendDtmf { .. } => "dtmf",
            Action::Redirect { .. } => "redirect",
        }
    }
}
