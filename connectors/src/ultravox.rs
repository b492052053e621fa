//! Placeholder: being written.
use switchboard_flows::UltravoxConfig;

use crate::{BotConnector, BotSession, CallInfo, ConnectorError};

pub struct UltravoxConnector {
    _config: UltravoxConfig,
}

impl UltravoxConnector {
    pub fn new(config: UltravoxConfig) -> Self {
        crate::install_crypto_provider();
        Self { _config: config }
    }
}

#[async_trait::async_trait]
impl BotConnector for UltravoxConnector {
    async fn open(&self, _call: &CallInfo) -> Result<BotSession, ConnectorError> {
        Err(ConnectorError::Protocol("not implemented yet".into()))
    }
}
