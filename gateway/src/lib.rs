//! Switchboard gateway: SIP signalling, routing and call control.

pub mod api;
pub mod burst_log;
pub mod call;
pub mod call_limit;
pub mod config;
pub mod endpoint;
pub mod metrics;
pub mod overload;
pub mod registrar;
pub mod registration;
pub mod reload;
pub mod routing;
mod server;
pub mod sip;
pub mod transport;
pub mod webhook;

pub use server::{Gateway, GatewayError};
