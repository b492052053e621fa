#![allow(dead_code)]

pub mod agent;
pub mod api;
pub mod audio;
pub mod baresip;
pub mod clip;
pub mod dns;
pub mod gateway;
pub mod http_server;
pub mod kamailio;
pub mod linphone;
pub mod raw_sip;
pub mod redis;
pub mod registering;
pub mod rtp_peer;
pub mod sipp;
pub mod tls;
pub mod twilio_bot;
pub mod ws_bot;
