//! Outbound registrations: the gateway registered to a PBX or provider as
//! one of its extensions. [`client`] is the sans-IO state machine of one
//! registration; [`manager`] runs them all, reports their status and
//! routes the calls the PBX sends to them.

pub mod client;
pub mod manager;
pub mod registry;
