//! Twilio Media Streams connector (placeholder until the connector lands).
use switchboard_flows::TwilioStreamConfig;

use crate::{BotConnector, BotSession, CallInfo, ConnectorError};

pub struct TwilioStreamConnector {
    config: TwilioStreamConfig,
}

impl TwilioStreamConnector {
    pub fn new(config: TwilioStreamConfig) -> Self {
        Self { config }
    }
}

#[async_trait::async_trait]
impl BotConnector for TwilioStreamConnector {
    async fn open(&self, _call: &CallInfo) -> Result<BotSession, ConnectorError> {
        Err(ConnectorError::Connect {
            url: self.config.url.clone(),
            reason: "not implemented yet".into(),
        })
    }
}
