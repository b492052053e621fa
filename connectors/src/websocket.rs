//! Placeholder: being written.
use switchboard_flows::WebsocketBotConfig;

use crate::{BotConnector, BotSession, CallInfo, ConnectorError};

pub struct WebsocketConnector {
    _config: WebsocketBotConfig,
}

impl WebsocketConnector {
    pub fn new(config: WebsocketBotConfig) -> Self {
        crate::install_crypto_provider();
        Self { _config: config }
    }
}

#[async_trait::async_trait]
impl BotConnector for WebsocketConnector {
    async fn open(&self, _call: &CallInfo) -> Result<BotSession, ConnectorError> {
        Err(ConnectorError::Protocol("not implemented yet".into()))
    }
}
