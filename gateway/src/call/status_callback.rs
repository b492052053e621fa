//! Twilio-style status callbacks for calls placed through the Calls API:
//! the events asked for (`initiated`, `ringing`, `answered`, `completed`),
//! in order, with Twilio's parameters and signature, each retried on
//! failure. A task per call delivers them so the call never waits on the
//! operator's web server; its queue is bounded (a call has at most four
//! events) and the task ends once the call's events are delivered.

use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::registry::{rfc2822, CallRecord};

/// Events one call can report: a full queue drops the newest (never
/// happens with four events, but the bound is the decision).
const QUEUE: usize = 8;
/// Attempts per event, and the wait before each retry.
const RETRY_WAITS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how a call reports its progress.
#[derive(Clone, Debug)]
pub struct StatusCallbackSpec {
    pub url: String,
    pub method_get: bool,
    /// Of `initiated`, `ringing`, `answered`, `completed`.
    pub events: Vec<String>,
    pub account_sid: String,
    pub auth_token: String,
}

/// Hands a call's events to its delivery task.
#[derive(Clone)]
pub struct StatusCallbacks {
    spec: std::sync::Arc<StatusCallbackSpec>,
    queue: mpsc::Sender<Vec<(&'static str, String)>>,
    /// Twilio's `SequenceNumber`: 0, 1, 2… over the events sent.
    sequence: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl StatusCallbacks {
    pub fn start(spec: StatusCallbackSpec, http: reqwest::Client) -> StatusCallbacks {
        let spec = std::sync::Arc::new(spec);
        let (queue, mut events) = mpsc::channel::<Vec<(&'static str, String)>>(QUEUE);
        let task_spec = spec.clone();
        tokio::spawn(async move {
            while let Some(params) = events.recv().await {
                deliver(&http, &task_spec, &params).await;
            }
        });
        StatusCallbacks {
            spec,
            queue,
            sequence: Default::default(),
        }
    }

    /// Reports `event` (when asked for) with the call as `record` shows it.
    pub fn report(&self, event: &str, record: &CallRecord, sip_status: Option<u16>) {
        if !self.spec.events.iter().any(|wanted| wanted == event) {
            return;
        }
        let sequence = self
            .sequence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut params = crate::webhook::call_params(&self.spec.account_sid, record);
        if event == "initiated" {
            // The resource still reads `queued`; the event says dialing began.
            for (name, value) in params.iter_mut() {
                if *name == "CallStatus" {
                    *value = "initiated".into();
                }
            }
        }
        params.push(("CallbackSource", "call-progress-events".into()));
        params.push(("SequenceNumber", sequence.to_string()));
        params.push(("Timestamp", rfc2822(SystemTime::now())));
        if let Some(duration) = record.duration() {
            params.push(("CallDuration", duration.to_string()));
            params.push(("Duration", duration.div_ceil(60).to_string()));
        }
        if let Some(status) = sip_status {
            params.push(("SipResponseCode", status.to_string()));
        }
        if self.queue.try_send(params).is_err() {
            tracing::warn!(event, "status callback queue full: event dropped");
        }
    }
}

async fn deliver(
    http: &reqwest::Client,
    spec: &StatusCallbackSpec,
    params: &[(&'static str, String)],
) {
    let mut waits = RETRY_WAITS.iter();
    loop {
        let request = crate::webhook::signed_request(
            http,
            &spec.auth_token,
            &spec.url,
            spec.method_get,
            params,
        );
        let outcome = match request.timeout(REQUEST_TIMEOUT).send().await {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => format!("HTTP {}", response.status()),
            Err(error) => error.to_string(),
        };
        match waits.next() {
            Some(wait) => {
                tracing::warn!(url = %spec.url, %outcome, "status callback failed: retrying");
                tokio::time::sleep(*wait).await;
            }
            None => {
                tracing::warn!(url = %spec.url, %outcome, "status callback failed: giving up");
                return;
            }
        }
    }
}
