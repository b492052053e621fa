//! `<Gather input="dtmf">`: its prompts (`<Play>`, `<Pause>`) play until the
//! first key; keys collect until `numDigits`, `finishOnKey` or `timeout`
//! (seconds after the prompts, and between keys). The `Digits` go to its
//! `action`, whose TwiML runs next; with no input the document goes on.

use std::collections::VecDeque;
use std::time::Duration;

use switchboard_flows::{Gather, Verb};

use super::session::{Call, JobOutput};

pub(super) struct Gathering {
    spec: Gather,
    prompts: VecDeque<Verb>,
    digits: String,
    /// Incremented per timer armed: only the latest may fire.
    epoch: u64,
}

impl Call {
    pub(super) fn start_gather(&mut self, mut gather: Gather) {
        if !self.ensure_answered() {
            return;
        }
        let prompts = std::mem::take(&mut gather.prompts).into();
        self.gathering = Some(Gathering {
            spec: gather,
            prompts,
            digits: String::new(),
            epoch: 0,
        });
        self.gather_next_prompt();
    }

    /// The next prompt, or — prompts done — the wait for a first key.
    pub(super) fn gather_next_prompt(&mut self) {
        let step = self.twiml_step();
        let Some(gathering) = self.gathering.as_mut() else {
            return;
        };
        match gathering.prompts.pop_front() {
            Some(Verb::Play { url, loop_count }) => self.start_play(url, loop_count, step),
            Some(Verb::Pause { length_secs }) => self.start_pause(length_secs, step),
            Some(_) => self.gather_next_prompt(),
            None => self.arm_gather_timer(),
        }
    }

    fn arm_gather_timer(&mut self) {
        let Some(gathering) = self.gathering.as_mut() else {
            return;
        };
        gathering.epoch += 1;
        let (epoch, wait) = (
            gathering.epoch,
            Duration::from_secs(u64::from(gathering.spec.timeout_secs)),
        );
        self.spawn_job(Box::pin(async move {
            tokio::time::sleep(wait).await;
            JobOutput::GatherTimeout { epoch }
        }));
    }

    pub(super) fn on_gather_timeout(&mut self, epoch: u64) {
        if self.gathering.as_ref().is_some_and(|g| g.epoch == epoch) && !self.is_ending() {
            self.finish_gather();
        }
    }

    /// A key press while gathering; false when nothing gathers.
    pub(super) fn on_gather_digit(&mut self, digit: char) -> bool {
        if self.gathering.is_none() || self.is_ending() {
            return false;
        }
        let first = self.gathering.as_ref().is_some_and(|g| g.digits.is_empty());
        if first {
            // The prompts stop; whatever they still had pending is stale.
            self.playing = None;
            if let Some(pipeline) = self.caller_media.pipeline.as_mut() {
                pipeline.clear();
            }
            self.bump_twiml_step();
        }
        let Some(gathering) = self.gathering.as_mut() else {
            return false;
        };
        gathering.prompts.clear();
        if Some(digit) == gathering.spec.finish_on_key {
            self.finish_gather();
            return true;
        }
        gathering.digits.push(digit);
        let enough = gathering
            .spec
            .num_digits
            .is_some_and(|n| gathering.digits.len() >= n as usize);
        if enough {
            self.finish_gather();
        } else {
            self.arm_gather_timer();
        }
        true
    }

    fn finish_gather(&mut self) {
        let Some(gathering) = self.gathering.take() else {
            return;
        };
        tracing::info!(digits = %gathering.digits, "gathered");
        match (gathering.spec.action, gathering.digits.is_empty()) {
            (Some(action), false) => match self.resolve_twiml_url(&action) {
                Some(url) => {
                    let extra = vec![("Digits".to_string(), gathering.digits)];
                    self.fetch_twiml_with(url, gathering.spec.method_get, None, extra);
                }
                None => {
                    tracing::warn!(%action, "a relative <Gather action> needs a document URL");
                    self.next_verb();
                }
            },
            // No input (or nowhere to send it): the document goes on.
            _ => self.next_verb(),
        }
    }
}
