//! Switchboard media: everything between an RTP socket and a bot's PCM.
//!
//! Each stage is a sans-IO component: it takes packets or samples plus `now`
//! and returns what to send and when it next needs attention. Nothing here
//! knows about SIP, sockets or bots.

pub mod aec;
pub mod codec;
pub mod dtmf;
pub mod dtmf_send;
pub mod frame;
pub mod frame_pool;
pub mod g711;
pub mod jitter;
mod jitter_adapt;
pub mod pacer;
pub mod plc;
pub mod relay;
pub mod resample;
pub mod rtcp;
pub mod rtp;
pub mod sdp;
pub mod srtp;
pub mod tone;

pub use codec::{AudioDecoder, AudioEncoder, Codec, CodecError, Decoder, Encoder, OpusConfig};
pub use frame::{AudioFormat, AudioFrame, FRAME_MS, MAX_FRAME_SAMPLES};
pub use frame_pool::{FramePool, PooledFrame};
pub use g711::G711;
pub use jitter::{AdaptiveConfig, JitterBuffer, JitterConfig, JitterStats, Playout, PushOutcome};
pub use pacer::{FrameKind, Pacer, PacerEvent};
pub use plc::Concealer;
pub use relay::{Rewritten, RtpRewriter};
pub use resample::{ResampleError, Resampler};
pub use rtp::{is_rtcp, write_rtp, RtpError, RtpPacket, RtpSender};
pub use sdp::{
    build_answer, build_media_answer, build_media_offer, build_offer, negotiate, negotiate_media,
    CodecPreferences, Direction, MediaOffer, Negotiated, NegotiatedMedia, OfferedFormat, SdpError,
    SessionOffer,
};
