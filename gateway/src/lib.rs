//! Switchboard gateway: SIP signalling, routing and call control.

pub mod sip;
