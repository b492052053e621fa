//! Blind transfer by REFER on the caller's leg: the caller's side places
//! the new call itself. While it does, the bot is muted; a transfer that
//! succeeds ends our call with BYE, one that is refused or fails returns the
//! caller to the bot, or bridges instead when the flow says so.

use switchboard_flows::DialTarget;

use super::dial::parse_target;
use super::leg::ReferOutcome;
use super::session::Call;
use super::transfer::Origin;

pub(super) struct Referring {
    uri: String,
    /// Bridge to this target when the REFER does not work.
    fallback: Option<DialTarget>,
    origin: Origin,
}

impl Call {
    pub(super) fn start_refer(
        &mut self,
        uri: String,
        fallback: Option<DialTarget>,
        origin: Origin,
    ) {
        if self.is_ending() {
            return;
        }
        if self.transfer.is_some() || self.referring.is_some() {
            self.action_result("refer", false, "a transfer is already in progress");
            return;
        }
        if !matches!(origin, Origin::OnFailure | Origin::Route)
            && !self.shared.dial.borrow().allows(&uri)
        {
            tracing::warn!(target = %uri, "REFER refused: the target is not allowed by [dial] allow");
            crate::metrics::transfer_finished("refused");
            self.action_result(
                "refer",
                false,
                format!("{uri} is not an allowed transfer target"),
            );
            return;
        }
        // Same rules for headers as a dial; the URI goes out as written,
        // its X- headers as Refer-To URI headers.
        if let Err(reason) = parse_target(&uri) {
            tracing::warn!(target = %uri, %reason, "REFER refused: unusable target");
            self.action_result("refer", false, reason);
            return;
        }
        let host = crate::call::leg::sent_by(self.local_sip);
        let referred_by = format!(
            "sip:{}@{host}",
            self.route.number.replace(['<', '>', '"', ' '], "")
        );
        if !self
            .caller
            .refer(&uri, &referred_by, std::time::Instant::now())
        {
            self.action_result("refer", false, "the call is not in a state to transfer");
            return;
        }
        tracing::info!(target = %uri, "transfer: REFER sent to the caller's side");
        self.mute_bot(true);
        self.referring = Some(Referring {
            uri,
            fallback,
            origin,
        });
    }

    pub(super) fn on_refer_progress(&mut self, status: u16) {
        if let Some(referring) = &self.referring {
            tracing::info!(target = %referring.uri, status, "transfer: REFER progress");
        }
    }

    pub(super) fn on_refer_ended(&mut self, outcome: ReferOutcome) {
        let Some(referring) = self.referring.take() else {
            return;
        };
        let (status, reason) = match outcome {
            ReferOutcome::Transferred => {
                tracing::info!(target = %referring.uri, "transfer: REFER succeeded");
                crate::metrics::transfer_finished("referred");
                self.end("transferred by REFER");
                return;
            }
            ReferOutcome::Refused { status, reason } | ReferOutcome::Failed { status, reason } => {
                (status, reason)
            }
        };
        tracing::info!(target = %referring.uri, status, %reason, "transfer: REFER did not work");
        match referring.fallback {
            Some(target) => {
                tracing::info!("bridging instead of REFER");
                self.start_bridge(target, referring.origin);
            }
            None => {
                crate::metrics::transfer_finished("failed");
                self.return_to_flow(format!(
                    "transfer to {} failed ({status} {reason})",
                    referring.uri
                ));
            }
        }
    }
}
