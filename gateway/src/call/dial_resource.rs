//! A dialed leg (`<Dial>`, a transfer) as a Calls API resource: direction
//! `outbound-dial`, its parent the caller's call, its status following the
//! leg; and the `<Sip statusCallback>` events it was asked for. Dropped with
//! its transfer, however that ends: the resource is then final and
//! `completed` is reported.

use std::sync::Arc;

use switchboard_flows::DialStatusCallback;

use super::dial::CallShared;
use super::leg::FailKind;
use super::registry::{CallRecord, CallRegistry, CallResource, CallStatus, Direction};
use super::status_callback::{StatusCallbackSpec, StatusCallbacks};

pub(super) struct DialResource {
    resource: Option<CallResource>,
    registry: Arc<CallRegistry>,
    sid: String,
    callbacks: Option<StatusCallbacks>,
}

impl DialResource {
    pub(super) fn open(
        shared: &CallShared,
        parent_sid: &str,
        call_id: &str,
        from: &str,
        to: &str,
        callback: Option<&DialStatusCallback>,
    ) -> DialResource {
        let sid = switchboard_flows::call_sid(call_id);
        let registry = shared.call_resources.clone();
        let mut resource = registry.open(CallRecord {
            sid: sid.clone(),
            call_id: call_id.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            direction: Direction::OutboundDial,
            status: CallStatus::Queued,
            parent_call_sid: Some(parent_sid.to_string()),
            created: std::time::SystemTime::now(),
            started: None,
            ended: None,
            // Hanging up the dialed leg alone is not offered: the parent's
            // Sid controls the call.
            control: None,
        });
        // Ended before it was answered or refused: the caller gave up.
        resource.end_status = CallStatus::Canceled;
        let callbacks = callback.map(|callback| {
            let (account_sid, auth_token) = shared
                .twilio
                .as_ref()
                .map(|c| (c.account_sid.clone(), c.auth_token.clone()))
                .unwrap_or_default();
            StatusCallbacks::start(
                StatusCallbackSpec {
                    url: callback.url.clone(),
                    method_get: callback.method_get,
                    events: callback.events.clone(),
                    account_sid,
                    auth_token,
                },
                shared.http.clone(),
            )
        });
        let dialed = DialResource {
            resource: Some(resource),
            registry,
            sid,
            callbacks,
        };
        dialed.report("initiated");
        dialed
    }

    pub(super) fn ringing(&self) {
        let first = self
            .registry
            .get(&self.sid)
            .is_some_and(|r| r.status == CallStatus::Queued);
        if first {
            self.set(CallStatus::Ringing);
            self.report("ringing");
        }
    }

    pub(super) fn answered(&self) {
        self.set(CallStatus::InProgress);
        self.report("answered");
    }

    pub(super) fn failed(&self, kind: FailKind) {
        self.set(match kind {
            FailKind::Busy => CallStatus::Busy,
            FailKind::NoAnswer => CallStatus::NoAnswer,
            FailKind::Canceled => CallStatus::Canceled,
            FailKind::Failed => CallStatus::Failed,
        });
    }

    fn set(&self, status: CallStatus) {
        if let Some(resource) = &self.resource {
            resource.set_status(status);
        }
    }

    fn report(&self, event: &str) {
        if let (Some(callbacks), Some(record)) = (&self.callbacks, self.registry.get(&self.sid)) {
            callbacks.report(event, &record, None);
        }
    }
}

impl Drop for DialResource {
    fn drop(&mut self) {
        drop(self.resource.take());
        self.report("completed");
    }
}
