//! Switchboard gateway: SIP signalling, routing and call control.

pub mod call;
pub mod config;
pub mod endpoint;
pub mod routing;
mod server;
pub mod sip;
pub mod transport;

pub use server::{Gateway, GatewayError};
