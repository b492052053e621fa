//! The Calls API acting on a live call: hang it up, or run new TwiML in
//! place of what it is doing (Twilio's `calls(sid).update(...)`).

use switchboard_flows::Action;

use super::leg::LegState;
use super::registry::CallStatus;
use super::session::Call;
use super::transfer::Origin;
use super::CallControl;

impl Call {
    pub(super) fn on_control(&mut self, control: CallControl) {
        if self.is_ending() {
            return;
        }
        match control {
            CallControl::Hangup => {
                tracing::info!("the Calls API ends the call");
                if self.caller.state() == LegState::Inviting {
                    self.resource.set_status(CallStatus::Canceled);
                    self.reject(487, "canceled through the Calls API".into());
                } else {
                    self.end("hung up through the Calls API");
                }
            }
            CallControl::Twiml(verbs) => {
                if self.transfer.is_some() || self.referring.is_some() {
                    tracing::warn!(
                        "new TwiML from the Calls API while a transfer is under way: ignored"
                    );
                    return;
                }
                tracing::info!(
                    verbs = verbs.len(),
                    "the Calls API replaces the call's TwiML"
                );
                self.close_bot();
                self.playing = None;
                self.gathering = None;
                if let Some(pipeline) = self.caller_media.pipeline.as_mut() {
                    pipeline.clear();
                }
                self.run_new_twiml(verbs);
            }
            CallControl::Actions(actions) => {
                // The verbs run one at a time; what follows a transfer would
                // need the TwiML interpreter, so only the first one runs and
                // the API refused documents where that would drop a verb.
                let Some(action) = actions.into_iter().next() else {
                    return;
                };
                tracing::info!(action = action.kind(), "the Calls API runs new TwiML");
                self.run_api_action(action);
            }
        }
    }

    fn run_api_action(&mut self, action: Action) {
        let unanswered = self.caller.state() == LegState::Inviting;
        match action {
            Action::Hangup { reason } => match (unanswered, reason.as_deref()) {
                (true, Some("busy")) => {
                    self.resource.set_status(CallStatus::Busy);
                    self.reject(486, "rejected busy through the Calls API".into());
                }
                (true, Some(_)) => {
                    self.resource.set_status(CallStatus::Canceled);
                    self.reject(603, "rejected through the Calls API".into());
                }
                _ => self.end("hung up by TwiML from the Calls API"),
            },
            // The bot stays connected but muted while the agent rings, so a
            // transfer that fails goes back to it: never silence.
            Action::Dial(target) => self.start_dial(target, Origin::Bot),
            Action::Refer { uri } => self.start_refer(uri, None, Origin::Bot),
            Action::SendDtmf { digits } => {
                if let Some(pipeline) = self.caller_media.pipeline.as_mut() {
                    if let Err(reason) = pipeline.send_digits(&digits) {
                        tracing::warn!(%reason, "DTMF from the Calls API not sent");
                    }
                }
            }
            Action::Redirect { url } => {
                tracing::warn!(%url, "a redirect from the Calls API is not available yet");
            }
        }
    }
}
