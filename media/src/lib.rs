//! Switchboard media: everything between an RTP socket and a bot's PCM.
//!
//! Each stage is a sans-IO component: it takes packets or samples plus `now`
//! and returns what to send and when it next needs attention. Nothing here
//! knows about SIP, sockets or bots.

pub mod frame;

pub use frame::{AudioFormat, AudioFrame, FRAME_MS, MAX_FRAME_SAMPLES};
pub mod g711;

pub use g711::G711;
