//! TwiML that drives a call from a URL: a webhook flow's `url` when a call
//! comes in, or a placed call's `Url` when it is answered. The request
//! carries Twilio's parameters, signed with `X-Twilio-Signature`; the
//! answer's first verb runs: `<Connect><Stream>` opens a bot,
//! `<Dial><Sip>` forwards the call (checked against `[dial] allow`),
//! `<Hangup/>`, `<Reject>`, `<Refer>`, and `<Redirect>` asks again. A URL
//! that fails, or TwiML that cannot run, goes to `fallback_url`, then to the
//! flow's `on_failure`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use switchboard_flows::{actions_from_twiml, parse_twiml, Action, OnFailure, Verb};

use super::leg::LegState;
use super::outbound::stream_flow;
use super::session::{Call, JobOutput};
use super::transfer::Origin;

/// Most TwiML fetches (first, fallback and redirects) one call may make.
const MAX_FETCHES: u32 = 10;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a call's TwiML comes from, and how often it was asked.
#[derive(Default)]
pub(super) struct TwimlSource {
    /// Incremented per fetch: an answer to an older fetch is ignored.
    attempt: u64,
    fetches: u32,
    fallback: Option<String>,
    method_get: bool,
    /// The URL the document in progress came from (relative actions
    /// resolve against it).
    url: Option<String>,
    /// Verbs of the document in progress still to run, in order.
    queue: VecDeque<Verb>,
    /// Incremented per verb started: a Pause or Play that finishes after
    /// the call moved on is ignored.
    step: u64,
}

impl Call {
    /// Asks `url` what the call does next; `fallback` is asked if it fails.
    pub(super) fn fetch_twiml(&mut self, url: String, method_get: bool, fallback: Option<String>) {
        self.fetch_twiml_with(url, method_get, fallback, Vec::new());
    }

    /// [`Call::fetch_twiml`] with parameters beyond Twilio's usual ones
    /// (`Digits` after a `<Gather>`).
    pub(super) fn fetch_twiml_with(
        &mut self,
        url: String,
        method_get: bool,
        fallback: Option<String>,
        extra: Vec<(String, String)>,
    ) {
        let source = self.twiml.get_or_insert_with(TwimlSource::default);
        source.fetches += 1;
        if source.fetches > MAX_FETCHES {
            return self.twiml_failed(format!("more than {MAX_FETCHES} TwiML fetches"));
        }
        source.attempt += 1;
        source.url = Some(url.clone());
        source.fallback = fallback;
        source.method_get = method_get;
        let attempt = source.attempt;
        let mut params = self.twiml_params();
        params.extend(extra);
        let http = self.shared.http.clone();
        let token = self
            .shared
            .twilio
            .as_ref()
            .map(|c| c.auth_token.clone())
            .unwrap_or_default();
        tracing::info!(%url, "asking the webhook for TwiML");
        self.spawn_job(Box::pin(async move {
            let result = crate::webhook::fetch_twiml(
                &http,
                &token,
                &url,
                method_get,
                &params,
                FETCH_TIMEOUT,
            )
            .await
            .map_err(|reason| format!("{url}: {reason}"));
            JobOutput::Twiml { attempt, result }
        }));
    }

    /// Twilio's request parameters for this call.
    fn twiml_params(&self) -> Vec<(String, String)> {
        let account = self
            .shared
            .twilio
            .as_ref()
            .map(|c| c.account_sid.as_str())
            .unwrap_or("");
        let mut params: Vec<(String, String)> =
            match self.shared.call_resources.get(self.resource.sid()) {
                Some(record) => crate::webhook::call_params(account, &record)
                    .into_iter()
                    .map(|(name, value)| (name.to_string(), value))
                    .collect(),
                None => Vec::new(),
            };
        params.push((
            "SipSourceIp".into(),
            self.caller.peer().addr.ip().to_string(),
        ));
        // Twilio names each X- header of the INVITE `SipHeader_X-…`.
        for (name, value) in &self.info.x_headers {
            params.push((format!("SipHeader_{name}"), value.clone()));
        }
        params
    }

    pub(super) fn on_twiml(&mut self, attempt: u64, result: Result<String, String>) {
        if self.is_ending() || self.twiml.as_ref().is_none_or(|s| s.attempt != attempt) {
            return;
        }
        let verbs = result.and_then(|text| parse_twiml(&text).map_err(|e| e.to_string()));
        match verbs {
            Ok(verbs) => self.run_twiml(verbs),
            Err(reason) => self.twiml_failed(reason),
        }
    }

    /// A flow's inline TwiML, its `{{From}}`/`{{To}}` filled in for this call.
    pub(super) fn run_template(&mut self, template: &str) {
        let text =
            switchboard_flows::template::render(template, &self.from_user, &self.route.number);
        match parse_twiml(&text) {
            Ok(verbs) => self.run_twiml(verbs),
            Err(error) => self.twiml_failed(error.to_string()),
        }
    }

    /// The URL gave nothing to run: its fallback, else `on_failure`.
    fn twiml_failed(&mut self, reason: String) {
        let fallback = self
            .twiml
            .as_mut()
            .and_then(|s| s.fallback.take().map(|url| (url, s.method_get)));
        if let Some((url, method_get)) = fallback {
            tracing::warn!(%reason, %url, "webhook failed: asking its fallback");
            return self.fetch_twiml(url, method_get, None);
        }
        tracing::warn!(%reason, "webhook failed: on_failure");
        crate::metrics::bot_failed(&self.flow.name);
        match self.flow.on_failure.clone() {
            OnFailure::Hangup(status) if self.caller.state() == LegState::Inviting => {
                self.reject(status, format!("webhook failed ({reason})"))
            }
            OnFailure::Hangup(_) => self.end(format!("webhook failed ({reason})")),
            OnFailure::Dial(uri) => {
                let target = switchboard_flows::DialTarget {
                    uri,
                    ..Default::default()
                };
                self.start_dial(target, Origin::OnFailure)
            }
        }
    }

    /// Runs a document: its verbs one after another, as Twilio does; the
    /// call hangs up after the last one.
    fn run_twiml(&mut self, verbs: Vec<Verb>) {
        let source = self.twiml.get_or_insert_with(TwimlSource::default);
        source.queue = verbs.into();
        self.next_verb();
    }

    /// A document from the Calls API: whatever ran before is stale.
    pub(super) fn run_new_twiml(&mut self, verbs: Vec<Verb>) {
        self.bump_twiml_step();
        self.run_twiml(verbs);
    }

    pub(super) fn is_current_step(&self, step: u64) -> bool {
        !self.is_ending() && self.twiml.as_ref().is_some_and(|s| s.step == step)
    }

    /// `target` made absolute against the current document's URL.
    pub(super) fn resolve_twiml_url(&self, target: &str) -> Option<String> {
        if !target.starts_with('/') {
            return Some(target.to_string());
        }
        let base = self.twiml.as_ref()?.url.as_deref()?;
        url::Url::parse(base)
            .and_then(|base| base.join(target))
            .ok()
            .map(String::from)
    }

    pub(super) fn twiml_step(&self) -> u64 {
        self.twiml.as_ref().map_or(0, |s| s.step)
    }

    pub(super) fn bump_twiml_step(&mut self) {
        if let Some(source) = self.twiml.as_mut() {
            source.step += 1;
        }
    }

    pub(super) fn on_verb_done(&mut self, step: u64) {
        if self.is_current_step(step) {
            self.next_verb();
        }
    }

    /// Starts the next verb; verbs that hand the call on (`<Connect>`,
    /// `<Dial>`, `<Refer>`, `<Redirect>`) end the document.
    pub(super) fn next_verb(&mut self) {
        if self.is_ending() {
            return;
        }
        // A `<Gather>`'s prompts run before the document goes on.
        if self.gathering.is_some() {
            return self.gather_next_prompt();
        }
        let Some(source) = self.twiml.as_mut() else {
            return;
        };
        source.step += 1;
        let step = source.step;
        let Some(verb) = source.queue.pop_front() else {
            return self.end("end of the TwiML document");
        };
        let hands_over = matches!(
            verb,
            Verb::Connect { .. } | Verb::Dial(_) | Verb::Refer { .. } | Verb::Redirect { .. }
        );
        if hands_over && !source.queue.is_empty() {
            tracing::info!(
                verb = verb.name(),
                ignored = source.queue.len(),
                "verbs after one that hands the call over do not run"
            );
            source.queue.clear();
        }
        let unanswered = self.caller.state() == LegState::Inviting;
        tracing::info!(verb = verb.name(), "running TwiML");
        match verb {
            Verb::Connect {
                stream_url,
                parameters,
            } => {
                let mut flow = stream_flow(&stream_url, parameters.into_iter().collect());
                // The call keeps its flow's settings; only the bot is new.
                flow.on_failure = self.flow.on_failure.clone();
                flow.name = self.flow.name.clone();
                flow.recording = self.flow.recording.clone();
                flow.audio = self.flow.audio;
                flow.transfer = self.flow.transfer;
                self.info.parameters = flow.parameters.clone();
                self.connector = Arc::from(switchboard_connectors::connector_for(
                    &flow.bot_or_placeholder(),
                ));
                self.flow = Arc::new(flow);
                self.open_bot(super::bot::OpenPurpose::Initial);
            }
            Verb::Hangup if unanswered => self.reject(603, "TwiML <Hangup/> before answer".into()),
            Verb::Hangup => self.end("TwiML <Hangup/>"),
            Verb::Reject { reason } => {
                let status = if reason == "busy" { 486 } else { 603 };
                if unanswered {
                    self.reject(status, format!("TwiML <Reject reason=\"{reason}\">"));
                } else {
                    self.end(format!("TwiML <Reject reason=\"{reason}\">"));
                }
            }
            Verb::Pause { length_secs } => self.start_pause(length_secs, step),
            Verb::Play { url, loop_count } => self.start_play(url, loop_count, step),
            Verb::Gather(gather) => self.start_gather(gather),
            Verb::Redirect { url } => {
                let method_get = self.twiml.as_ref().is_some_and(|s| s.method_get);
                self.fetch_twiml(url, method_get, None);
            }
            Verb::Refer { uri } if !unanswered => self.start_refer(uri, None, Origin::Webhook),
            verb @ Verb::Dial(_) => match actions_from_twiml(std::slice::from_ref(&verb)) {
                Ok(actions) => match actions.into_iter().next() {
                    Some(Action::Dial(target)) => self.start_dial(target, Origin::Webhook),
                    _ => self.twiml_failed("<Dial> gave no target".into()),
                },
                Err(error) => self.twiml_failed(error.to_string()),
            },
            other => self.twiml_failed(format!("<{}> is not available here yet", other.name())),
        }
    }
}
