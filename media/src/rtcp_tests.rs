use super::*;

const MS: Duration = Duration::from_millis(1);

/// Two parties exchanging 20 ms packets; `lose` says which sequence numbers
/// never arrive, `delay` the one-way network delay of packet `i`.
fn stream(
    receiver: &mut RtcpSession,
    sender: &mut RtcpSession,
    start: Instant,
    packets: u16,
    lose: impl Fn(u16) -> bool,
    delay: impl Fn(u16) -> Duration,
) {
    for i in 0..packets {
        let sent_at = start + 20 * MS * u32::from(i);
        let seq = 65_500u16.wrapping_add(i);
        let ts = 1_000u32.wrapping_add(160 * u32::from(i));
        sender.on_rtp_sent(160, ts, sent_at);
        if !lose(i) {
            receiver.on_rtp_received(sender.ssrc, seq, ts, sent_at + delay(i));
        }
    }
}

#[test]
fn loss_and_jitter_of_the_callers_stream_across_a_sequence_wrap() {
    let start = Instant::now();
    let mut us = RtcpSession::new(1, 8000, "gw@127.0.0.1", start);
    let mut caller = RtcpSession::new(2, 8000, "caller", start);
    // 500 packets, every 10th lost, delay alternating 10 ms / 30 ms.
    stream(
        &mut us,
        &mut caller,
        start,
        500,
        |i| i % 10 == 5,
        |i| if i % 2 == 0 { 10 * MS } else { 30 * MS },
    );
    let stats = us.stats();
    assert_eq!(stats.packets_lost, 50);
    assert!((stats.loss_ratio - 0.1).abs() < 1e-9);
    // Transit alternates by 20 ms: the RFC 3550 estimate converges near 20 ms.
    assert!(
        (15.0..=21.0).contains(&stats.jitter_ms),
        "jitter {}",
        stats.jitter_ms
    );
}

#[test]
fn reports_carry_what_the_other_side_needs_and_rtt_is_measured() {
    let t0 = Instant::now();
    let mut us = RtcpSession::new(0xaaaa, 8000, "gw", t0);
    let mut caller = RtcpSession::new(0xbbbb, 8000, "caller", t0);
    stream(&mut caller, &mut us, t0, 100, |i| i % 4 == 0, |_| 25 * MS);
    stream(&mut us, &mut caller, t0, 100, |_| false, |_| 25 * MS);

    // Our SR reaches the caller 25 ms later; the caller reports 100 ms after
    // that; its RR takes 25 ms back: RTT 50 ms.
    let mut buf = [0u8; MAX_RTCP_PACKET];
    // Past the longest randomised interval (7.5 s).
    let t1 = t0 + Duration::from_secs(8);
    let len = us.poll_transmit(t1, &mut buf).expect("a report is due");
    assert_eq!(buf[1], PT_SR, "we send audio: a sender report");
    assert_eq!(buf[28 + 24 + 1], PT_SDES, "SDES follows SR + one block");
    assert_eq!(len % 4, 0);
    caller.handle_rtcp(&buf[..len], t1 + 25 * MS);
    let len = caller.final_report(t1 + 125 * MS, &mut buf).unwrap();
    us.handle_rtcp(&buf[..len], t1 + 150 * MS);
    let stats = us.stats();
    let rtt = stats.rtt_ms.expect("rtt");
    assert!((rtt - 50.0).abs() < 1.0, "rtt {rtt}");
    // The caller lost a quarter of our packets and said so.
    let fraction = stats.remote_loss_ratio.unwrap();
    assert!((fraction - 0.25).abs() < 0.01, "fraction {fraction}");
    assert_eq!(stats.remote_jitter_ms, Some(0.0));
    assert_eq!(stats.reports_received, 1);
}

#[test]
fn not_due_before_the_interval_and_rr_when_silent() {
    let t0 = Instant::now();
    let mut us = RtcpSession::new(7, 8000, "gw", t0);
    let mut buf = [0u8; MAX_RTCP_PACKET];
    assert!(us
        .poll_transmit(t0 + Duration::from_secs(2), &mut buf)
        .is_none());
    assert!(us.poll_timeout() <= t0 + Duration::from_millis(7500));
    let len = us.final_report(t0, &mut buf).unwrap();
    assert_eq!(buf[1], PT_RR, "nothing sent yet: a receiver report");
    assert_eq!(buf[0] & 0x1f, 0, "no report block before any RTP arrived");
    assert_eq!(len % 4, 0);
    let words = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    assert_eq!((words + 1) * 4, 8, "RR length field");
}

#[test]
fn hostile_rtcp_is_ignored_without_panicking() {
    let t0 = Instant::now();
    let mut us = RtcpSession::new(7, 8000, "gw", t0);
    for datagram in [
        &[][..],
        &[0x80, 200, 0, 6][..],
        &[0x81, 201, 0xff, 0xff, 0, 0, 0, 1][..],
        &[0x9f, 201, 0, 1, 0, 0, 0, 1][..],
        &[0x40, 200, 0, 0, 1, 2, 3, 4][..],
    ] {
        us.handle_rtcp(datagram, t0);
    }
    // RR claiming 31 blocks but carrying none.
    us.handle_rtcp(&[0x9f, 201, 0, 1, 0, 0, 0, 1], t0);
    assert_eq!(us.stats().rtt_ms, None);
}

/// Found by the fuzzer (`fuzz/corpus/rtcp/regression-empty-rr`): a receiver
/// report whose length word is 0 is four bytes long and has no SSRC; it
/// panicked the call's media task, a remote crash by one datagram.
#[test]
fn a_receiver_report_too_short_for_its_ssrc_is_skipped() {
    let now = Instant::now();
    let mut session = RtcpSession::new(1, 8000, "x", now);
    let empty_rr = [0x81, 201, 0, 0, 0x0b, 0xad, 0xca, 0x56, 0x78, 0, 0, 0, 0];
    session.handle_rtcp(&empty_rr, now);
    assert_eq!(session.stats().reports_received, 0);
}
