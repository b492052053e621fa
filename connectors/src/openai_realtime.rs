//! Placeholder: being written.
use switchboard_flows::OpenAiRealtimeConfig;

use crate::{BotConnector, BotSession, CallInfo, ConnectorError};

pub struct OpenAiRealtimeConnector {
    _config: OpenAiRealtimeConfig,
}

impl OpenAiRealtimeConnector {
    pub fn new(config: OpenAiRealtimeConfig) -> Self {
        crate::install_crypto_provider();
        Self { _config: config }
    }
}

#[async_trait::async_trait]
impl BotConnector for OpenAiRealtimeConnector {
    async fn open(&self, _call: &CallInfo) -> Result<BotSession, ConnectorError> {
        Err(ConnectorError::Protocol("not implemented yet".into()))
    }
}
