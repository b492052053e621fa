//! What the gateway counts, through the `metrics` facade: call admission,
//! live calls, and each call's media quality recorded once when it ends.
//!
//! Nothing here runs per frame: per-call figures are folded into histograms
//! at the end of the call (labelled by flow, which config bounds, never by
//! Call-ID, which would grow the exporter without bound). With no recorder
//! installed (no `[api]` section) every call below is a no-op.

use metrics::{counter, gauge, histogram};
use switchboard_media::jitter::JitterStats;
use switchboard_media::rtcp::RtcpStats;

use crate::call::media::MediaCounters;

pub const CALLS_ACTIVE: &str = "switchboard_calls_active";
pub const CALLS_ANSWERED: &str = "switchboard_calls_answered_total";
pub const CALLS_REJECTED: &str = "switchboard_calls_rejected_total";
pub const BOT_FAILURES: &str = "switchboard_bot_failures_total";
pub const TRANSFERS: &str = "switchboard_transfers_total";
pub const BINDINGS: &str = "switchboard_registrar_bindings";
pub const REGISTRATIONS: &str = "switchboard_registrations";
pub const REGISTER_SENT: &str = "switchboard_registration_requests_total";
pub const AUTH_FAILURES: &str = "switchboard_auth_failures_total";
pub const TCP_REFUSED: &str = "switchboard_tcp_refused_total";
pub const SIP_SHED: &str = "switchboard_sip_shed_total";
pub const OVERLOADED: &str = "switchboard_overloaded";
pub const CALL_LIMIT: &str = "switchboard_adaptive_call_limit";
pub const CALL_DURATION: &str = "switchboard_call_duration_seconds";
pub const CALL_LOSS: &str = "switchboard_call_packet_loss_ratio";
pub const CALL_JITTER: &str = "switchboard_call_jitter_ms";
pub const CALL_RTT: &str = "switchboard_call_rtt_ms";
pub const RTP_PACKETS: &str = "switchboard_rtp_packets_total";
pub const RTP_LOST: &str = "switchboard_rtp_lost_total";
pub const RTP_LATE: &str = "switchboard_rtp_late_total";
pub const RTP_DUPLICATE: &str = "switchboard_rtp_duplicate_total";
pub const CONCEALED_MS: &str = "switchboard_concealed_ms_total";
pub const FEC_RECOVERED: &str = "switchboard_fec_recovered_total";

/// Histogram buckets, chosen around what telephony calls good and bad.
pub const LOSS_BUCKETS: &[f64] = &[0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];
pub const MS_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 20.0, 30.0, 50.0, 100.0, 150.0, 250.0, 400.0, 1000.0,
];
pub const DURATION_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(CALLS_ACTIVE, "Calls in progress");
    describe_counter!(CALLS_ANSWERED, "Calls answered, by flow");
    describe_counter!(
        CALLS_REJECTED,
        "INVITEs refused with a final error status, by status"
    );
    describe_counter!(BOT_FAILURES, "Bots that could not be reached, by flow");
    describe_gauge!(BINDINGS, "Registered contacts (as of the last sweep)");
    describe_gauge!(
        REGISTRATIONS,
        "Outbound registrations, by state: in_progress, successful, failed"
    );
    describe_counter!(
        REGISTER_SENT,
        "REGISTERs the outbound registrations sent (refreshes, retries and challenge answers)"
    );
    describe_counter!(AUTH_FAILURES, "Failed digest authentications, by reason");
    describe_counter!(
        TCP_REFUSED,
        "TCP connections refused at accept or closed for not sending a whole message in time, by reason"
    );
    describe_counter!(
        SIP_SHED,
        "SIP messages turned away under overload, by stage (overload, call_limit, capacity, queue, delay, dropped)"
    );
    describe_gauge!(
        CALL_LIMIT,
        "Calls in progress the CPU carries now, while overload control holds new calls below limits.max_calls; 0 while it does not"
    );
    describe_gauge!(
        OVERLOADED,
        "1 while new calls are answered 503 because tasks wait too long for a CPU"
    );
    describe_counter!(
        TRANSFERS,
        "Transfers to a human, by outcome: answered, busy, no-answer, failed, canceled, referred, refused"
    );
    describe_histogram!(CALL_DURATION, Unit::Seconds, "Answered call length");
    describe_histogram!(
        CALL_LOSS,
        "Per call RTP loss ratio; direction=inbound is the caller's stream as we received it, outbound ours as the caller's RTCP reported it"
    );
    describe_histogram!(
        CALL_JITTER,
        Unit::Milliseconds,
        "Per call RFC 3550 interarrival jitter, by direction as for loss"
    );
    describe_histogram!(
        CALL_RTT,
        Unit::Milliseconds,
        "Per call round-trip time from RTCP"
    );
    describe_counter!(RTP_PACKETS, "RTP packets, by direction");
    describe_counter!(RTP_LOST, "Caller RTP packets never received");
    describe_counter!(RTP_LATE, "Caller RTP packets that came too late to play");
    describe_counter!(RTP_DUPLICATE, "Caller RTP packets received twice");
    describe_counter!(CONCEALED_MS, "Caller audio concealed (PLC), in ms");
    describe_counter!(FEC_RECOVERED, "Lost Opus frames rebuilt from in-band FEC");
}

pub fn active_calls(count: usize) {
    gauge!(CALLS_ACTIVE).set(count as f64);
}

/// 1 while new calls are shed because tasks wait too long for a CPU.
pub fn overloaded(shedding: bool) {
    gauge!(OVERLOADED).set(if shedding { 1.0 } else { 0.0 });
}

/// The adaptive limit on calls in progress (`None`: only `max_calls`).
pub fn adaptive_call_limit(limit: Option<usize>) {
    gauge!(CALL_LIMIT).set(limit.unwrap_or(0) as f64);
}

/// A SIP message turned away under overload: `overload` (new INVITE while
/// tasks wait too long for a CPU: 503), `queue` (new request, queue full:
/// 503), `delay` (new INVITE waited too long for the endpoint: 503),
/// `capacity` (new INVITE while `limits.max_calls` calls are up: 503),
/// `call_limit` (new INVITE while the calls in progress run late and
/// overload control holds them below `max_calls`: 503),
/// `dropped` (in-dialog datagram, queue full: the sender retransmits).
pub fn sip_shed(stage: &'static str) {
    counter!(SIP_SHED, "stage" => stage).increment(1);
}

/// A TCP connection refused or closed by a limit (`reason`).
pub fn tcp_refused(reason: &'static str) {
    counter!(TCP_REFUSED, "reason" => reason).increment(1);
}

pub fn call_rejected(status: u16) {
    counter!(CALLS_REJECTED, "status" => status.to_string()).increment(1);
}

pub fn call_answered(flow: &str) {
    counter!(CALLS_ANSWERED, "flow" => flow.to_owned()).increment(1);
}

pub fn register_sent() {
    counter!(REGISTER_SENT).increment(1);
}

pub fn registrations(state: &'static str, count: usize) {
    gauge!(REGISTRATIONS, "state" => state).set(count as f64);
}

pub fn bindings(count: usize) {
    gauge!(BINDINGS).set(count as f64);
}

/// A REGISTER changed how many bindings there are; the periodic sweep sets
/// the exact count again (other gateways share a Redis store).
pub fn bindings_changed(by: i64) {
    gauge!(BINDINGS).increment(by as f64);
}

pub fn auth_failed(reason: &'static str) {
    counter!(AUTH_FAILURES, "reason" => reason).increment(1);
}

pub fn transfer_finished(outcome: &'static str) {
    counter!(TRANSFERS, "outcome" => outcome).increment(1);
}

pub fn bot_failed(flow: &str) {
    counter!(BOT_FAILURES, "flow" => flow.to_owned()).increment(1);
}

/// Folds one ended call's media figures into the totals.
pub fn call_media(
    flow: &str,
    seconds: f64,
    rtcp: &RtcpStats,
    jitter: &JitterStats,
    counters: &MediaCounters,
) {
    let flow = flow.to_owned();
    histogram!(CALL_DURATION, "flow" => flow.clone()).record(seconds);
    let inbound = [("flow", flow.clone()), ("direction", "inbound".to_owned())];
    histogram!(CALL_LOSS, &inbound).record(rtcp.loss_ratio);
    histogram!(CALL_JITTER, &inbound).record(rtcp.jitter_ms);
    let outbound = [("flow", flow.clone()), ("direction", "outbound".to_owned())];
    if let Some(loss) = rtcp.remote_loss_ratio {
        histogram!(CALL_LOSS, &outbound).record(loss);
    }
    if let Some(jitter_ms) = rtcp.remote_jitter_ms {
        histogram!(CALL_JITTER, &outbound).record(jitter_ms);
    }
    if let Some(rtt) = rtcp.rtt_ms {
        histogram!(CALL_RTT, "flow" => flow.clone()).record(rtt);
    }
    counter!(RTP_PACKETS, "direction" => "inbound").increment(counters.rtp_in);
    counter!(RTP_PACKETS, "direction" => "outbound").increment(counters.rtp_out);
    counter!(RTP_LOST).increment(jitter.lost);
    counter!(RTP_LATE).increment(jitter.late);
    counter!(RTP_DUPLICATE).increment(jitter.duplicate);
    counter!(CONCEALED_MS).increment(jitter.concealed_ms);
    counter!(FEC_RECOVERED).increment(counters.fec_recovered);
}
