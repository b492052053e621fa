//! Twilio-shaped identifiers for calls.

use rand::Rng;

/// `"CA"` + 32 hex digits derived from the SIP Call-ID (FNV-1a, 128 bit), so
/// the same call always shows the same CallSid: to its bot, in `<Dial
/// action>` requests and in the logs.
pub fn call_sid(call_id: &str) -> String {
    if call_id.is_empty() {
        return format!("CA{:032x}", rand::rng().random::<u128>());
    }
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let hash = call_id
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u128::from(b)).wrapping_mul(PRIME));
    format!("CA{hash:032x}")
}
