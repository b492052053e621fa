//! Placing a call for the Calls API: the endpoint checks it has room,
//! lists the call, and starts its task, which dials.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Core, Endpoint, EndpointState};
use crate::call::outbound::{
    run_outbound_call, twiml_flow, webhook_flow, OutboundSetup, PlaceCall, PlaceError, PlaceReply,
    Program,
};
use crate::call::registry::{CallRecord, CallStatus, Direction};
use crate::call::CALL_INPUT_CAPACITY;

impl Endpoint {
    pub(super) fn place(&self, core: &mut Core, place: PlaceCall) {
        let PlaceCall { request, reply } = place;
        if core.state != EndpointState::Running {
            let _ = reply.send(Err(PlaceError::Unavailable(
                "the gateway is shutting down".into(),
            )));
            return;
        }
        if core.occupancy.calls() >= self.max_calls {
            self.refuse_at_capacity(reply);
            return;
        }
        let (flow, connector) = match &request.program {
            Program::Flow(name) => match self.flows.get(name) {
                Some(flow) => (flow.config.clone(), flow.connector.clone()),
                None => {
                    let _ = reply.send(Err(PlaceError::Invalid(format!(
                        "there is no flow `{name}`"
                    ))));
                    return;
                }
            },
            Program::Twiml(document) => {
                let flow = twiml_flow(document.clone());
                let connector = Arc::from(switchboard_connectors::connector_for(
                    &flow.bot_or_placeholder(),
                ));
                (Arc::new(flow), connector)
            }
            Program::Url(webhook) => {
                let flow = webhook_flow(webhook.clone());
                let connector = Arc::from(switchboard_connectors::connector_for(
                    &flow.bot_or_placeholder(),
                ));
                (Arc::new(flow), connector)
            }
        };
        let (flow, connector) = match (request.record, &self.calls.api_recordings) {
            (false, _) => (flow, connector),
            (true, Some(dir)) => {
                let mut recorded = (*flow).clone();
                recorded.recording = Some(switchboard_flows::RecordingConfig { dir: dir.clone() });
                (Arc::new(recorded), connector)
            }
            (true, None) => {
                let _ = reply.send(Err(PlaceError::Invalid(
                    "Record=true needs [api] recording_dir on this gateway".into(),
                )));
                return;
            }
        };
        let host = self
            .calls
            .local
            .first()
            .map(|(_, addr)| addr.ip().to_string())
            .unwrap_or_else(|| "switchboard".into());
        if !core.occupancy.try_take(self.max_calls) {
            self.refuse_at_capacity(reply);
            return;
        }
        // Its legs' messages must come back to this shard.
        let call_id = self.shard.new_call_id(&host);
        let (inputs_tx, inputs) = mpsc::channel(CALL_INPUT_CAPACITY);
        let record = CallRecord {
            sid: switchboard_flows::call_sid(&call_id),
            call_id: call_id.clone(),
            from: request.from.clone(),
            to: request.to.clone(),
            direction: Direction::OutboundApi,
            status: CallStatus::Queued,
            parent_call_sid: None,
            created: std::time::SystemTime::now(),
            started: None,
            ended: None,
            control: Some(inputs_tx.clone()),
        };
        let answer = CallRecord {
            control: None,
            ..record.clone()
        };
        let resource = self.calls.call_resources.open(record);
        let call = core.routes.place(inputs_tx);
        let setup = OutboundSetup {
            call,
            call_id,
            request,
            flow,
            connector,
            shared: self.calls.clone(),
            endpoint: core.commands.clone(),
            inputs,
            resource,
            shard: self.shard,
        };
        let task = core.tasks.spawn(run_outbound_call(setup));
        core.routes.attach_task(task.id(), call);
        let _ = reply.send(Ok(answer));
    }

    fn refuse_at_capacity(&self, reply: PlaceReply) {
        tracing::warn!(max_calls = self.max_calls, "at capacity: no call placed");
        let _ = reply.send(Err(PlaceError::Unavailable(format!(
            "at capacity ({} calls)",
            self.max_calls
        ))));
    }
}
