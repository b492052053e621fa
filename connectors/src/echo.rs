//! Built-in echo bot (placeholder until the connector lands).
use switchboard_flows::EchoBotConfig;

use crate::{BotConnector, BotSession, CallInfo, ConnectorError};

pub struct EchoConnector {
    _config: EchoBotConfig,
}

impl EchoConnector {
    pub fn new(config: EchoBotConfig) -> Self {
        Self { _config: config }
    }
}

#[async_trait::async_trait]
impl BotConnector for EchoConnector {
    async fn open(&self, _call: &CallInfo) -> Result<BotSession, ConnectorError> {
        Err(ConnectorError::Protocol("echo bot not implemented yet".into()))
    }
}
