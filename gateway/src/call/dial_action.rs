//! `<Dial action="…">`: when the dialed leg ends, the URL hears how
//! (Twilio's request parameters: `DialCallStatus`, `DialCallSid`,
//! `DialCallDuration`, `DialSipResponseCode`, `DialSipCallId`, with the
//! call's `CallSid`, `From`, `To`) and the TwiML it answers decides what the
//! call does next.

use std::time::Duration;

use switchboard_flows::{actions_from_twiml, parse_twiml, Action};

use super::session::{Call, JobOutput};
use super::transfer::{Origin, Stage};

/// Longest wait for the action URL.
const ACTION_TIMEOUT: Duration = Duration::from_secs(10);

impl Call {
    /// Tells the transfer's action URL how the dial ended.
    pub(super) fn report_dial(&mut self, status: &str, sip_code: u16, duration_secs: u64) {
        let Some(transfer) = &mut self.transfer else {
            return;
        };
        let Some(url) = transfer.target.action.clone() else {
            return;
        };
        transfer.stage = Stage::Reporting;
        let attempt = transfer.attempt;
        let method_get = transfer.target.method_get;
        let params = self.dial_params("in-progress", status, sip_code, duration_secs);
        let (http, token) = self.webhook_client();
        tracing::info!(%url, %status, sip_code, "transfer: telling the dial action");
        self.spawn_job(Box::pin(async move {
            let result = crate::webhook::fetch_twiml(
                &http,
                &token,
                &url,
                method_get,
                &params,
                ACTION_TIMEOUT,
            )
            .await;
            JobOutput::DialAction { attempt, result }
        }));
    }

    /// The call ends while its dial rings or is bridged (the caller hung
    /// up, the gateway drains): Twilio still requests the action URL, with
    /// `DialCallStatus` canceled or completed and `CallStatus` completed,
    /// and ignores what it answers. The request outlives the call's task
    /// by at most [`ACTION_TIMEOUT`].
    pub(super) fn report_dial_at_end(&mut self) {
        let Some(transfer) = &self.transfer else {
            return;
        };
        let Some(url) = transfer.target.action.clone() else {
            return;
        };
        let (status, sip_code, seconds) = match &transfer.stage {
            Stage::Ringing { .. } => ("canceled", 487, 0),
            Stage::Bridged { since, .. } => ("completed", 200, since.elapsed().as_secs()),
            _ => return,
        };
        let method_get = transfer.target.method_get;
        let params = self.dial_params("completed", status, sip_code, seconds);
        let (http, token) = self.webhook_client();
        tracing::info!(%url, %status, "transfer: the call ended, telling the dial action");
        tokio::spawn(async move {
            let result = crate::webhook::fetch_twiml(
                &http,
                &token,
                &url,
                method_get,
                &params,
                ACTION_TIMEOUT,
            )
            .await;
            if let Err(error) = result {
                tracing::warn!(%url, %error, "dial action at the call's end failed");
            }
        });
    }

    /// Twilio's parameters for a `<Dial action>` request.
    fn dial_params(
        &self,
        call_status: &str,
        status: &str,
        sip_code: u16,
        duration_secs: u64,
    ) -> Vec<(&'static str, String)> {
        let dial_call_id = self
            .transfer
            .as_ref()
            .and_then(|t| t.dial_call_id.clone())
            .unwrap_or_default();
        let bridged = matches!(status, "completed" | "answered");
        let account_sid = match &self.shared.twilio {
            Some(credentials) => credentials.account_sid.clone(),
            None => switchboard_connectors::twilio_stream::ACCOUNT_SID.to_string(),
        };
        vec![
            ("CallSid", self.sid.clone()),
            ("AccountSid", account_sid),
            ("From", self.from_user.clone()),
            ("To", self.route.number.clone()),
            ("CallStatus", call_status.into()),
            ("Direction", "inbound".into()),
            ("ApiVersion", "2010-04-01".into()),
            ("DialCallStatus", status.to_string()),
            ("DialCallSid", switchboard_flows::call_sid(&dial_call_id)),
            ("DialCallDuration", duration_secs.to_string()),
            ("DialBridged", bridged.to_string()),
            ("DialSipResponseCode", sip_code.to_string()),
            ("DialSipCallId", dial_call_id),
        ]
    }

    /// The HTTP client and the token webhooks are signed with.
    fn webhook_client(&self) -> (reqwest::Client, String) {
        let token = self
            .shared
            .twilio
            .as_ref()
            .map(|c| c.auth_token.clone())
            .unwrap_or_default();
        (self.shared.http.clone(), token)
    }

    /// Runs what the action URL answered.
    pub(super) fn on_dial_action(&mut self, attempt: u64, result: Result<String, String>) {
        let Some(transfer) = &self.transfer else {
            return;
        };
        if transfer.attempt != attempt || self.is_ending() {
            return;
        }
        let origin = transfer.origin;
        let bridged = transfer.was_bridged;
        let url = transfer.target.action.clone().unwrap_or_default();
        self.transfer = None;
        let twiml = match result {
            Ok(twiml) => twiml,
            Err(error) => {
                tracing::warn!(%url, %error, "dial action failed");
                return self.after_action_without_twiml(
                    origin,
                    bridged,
                    format!("dial action failed: {error}"),
                );
            }
        };
        let actions = parse_twiml(&twiml)
            .map_err(|e| e.to_string())
            .and_then(|verbs| actions_from_twiml(&verbs).map_err(|e| e.to_string()));
        let actions = match actions {
            Ok(actions) => actions,
            Err(error) => {
                tracing::warn!(%url, %error, "dial action answered unusable TwiML");
                return self.after_action_without_twiml(
                    origin,
                    bridged,
                    format!("dial action TwiML: {error}"),
                );
            }
        };
        let mut actions = actions.into_iter();
        let Some(first) = actions.next() else {
            return self.after_action_without_twiml(
                origin,
                bridged,
                "the dial action had nothing more to do".into(),
            );
        };
        if actions.next().is_some() {
            tracing::info!(%url, "dial action TwiML holds several verbs: only the first runs");
        }
        tracing::info!(action = first.kind(), "running the dial action's TwiML");
        match first {
            Action::Hangup { reason } => self.end(format!(
                "dial action hung up{}",
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            )),
            Action::Dial(target) => {
                self.mute_bot(true);
                self.start_dial(target, Origin::DialAction);
            }
            Action::Refer { uri } => self.start_refer(uri, None, Origin::DialAction),
            Action::SendDtmf { digits } => {
                if let Some(pipeline) = self.caller_media.pipeline.as_mut() {
                    let _ = pipeline.send_digits(&digits);
                }
                self.return_to_flow("dial action played digits".into());
            }
            Action::Redirect { url } => {
                tracing::info!(%url, "dial action redirects, which is not available yet");
                self.return_to_flow("redirect is not available yet on this gateway".into());
            }
        }
    }

    /// The action gave nothing to run. A bridged call that ended is over
    /// (Twilio hangs up there too); a failed dial goes back to the bot so
    /// the caller is never left in silence.
    fn after_action_without_twiml(&mut self, origin: Origin, bridged: bool, message: String) {
        if matches!(origin, Origin::OnFailure | Origin::Route | Origin::Webhook) || bridged {
            self.end(message);
        } else {
            self.return_to_flow(message);
        }
    }
}
