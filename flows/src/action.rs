//! Actions a bot can ask of the call: the one vocabulary shared by bot tool
//! calls, TwiML and (later) the HTTP API.

/// Ring time of a dial nobody set one for (Twilio's `<Dial>` default).
pub const DEFAULT_DIAL_TIMEOUT_SECS: u32 = 30;
/// Longest bridged call when nobody set `timeLimit` (Twilio's: 4 hours).
pub const DEFAULT_TIME_LIMIT_SECS: u32 = 14_400;

/// Where a transfer should go and how, as `<Dial>` describes it.
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
    /// Longest the bridged call may last.
    pub time_limit_secs: u32,
    /// `<Dial action>`: told how the dial ended; its TwiML runs next.
    pub action: Option<String>,
    /// `<Dial method>` for the action: POST (default) or GET.
    pub method_get: bool,
    /// `<Dial hangupOnStar>`: the caller's `*` drops the callee and returns
    /// the caller to the flow.
    pub hangup_on_star: bool,
    /// `<Sip registration="…">`: dial out through this outbound
    /// registration, as its extension (`uri` may then be `sip:1002`).
    pub registration: Option<String>,
    /// `<Number>` (or bare digits in `<Dial>`): a phone number, normalised
    /// to `+` and digits, sent out through a trunk's outbound side (`uri`
    /// is then `tel:` and the number).
    pub number: Option<String>,
    /// `<Sip statusCallback>`: the dialed leg's progress is posted here.
    pub status_callback: Option<Box<DialStatusCallback>>,
}

/// Where a dialed leg reports `initiated`, `ringing`, `answered` and
/// `completed` (those asked for).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialStatusCallback {
    pub url: String,
    pub events: Vec<String>,
    pub method_get: bool,
}

impl Default for DialTarget {
    fn default() -> Self {
        DialTarget {
            uri: String::new(),
            caller_id: None,
            username: None,
            password: None,
            timeout_secs: DEFAULT_DIAL_TIMEOUT_SECS,
            time_limit_secs: DEFAULT_TIME_LIMIT_SECS,
            action: None,
            method_get: false,
            hangup_on_star: false,
            registration: None,
            number: None,
            status_callback: None,
        }
    }
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
