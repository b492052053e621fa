//! When each direction of the media pipeline moves, on a fake clock: the
//! caller's frames follow its packets' arrival (a packet waits the jitter
//! buffer's delay, not also for a free-running tick), and a bot talkspurt
//! goes out the moment it arrives, with the marker bit.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchboard_gateway::call::media::MediaPipeline;
use switchboard_media::aec::AudioSettings;
use switchboard_media::g711::{ulaw_decode, ulaw_encode};
use switchboard_media::jitter::AdaptiveConfig;
use switchboard_media::sdp::{negotiate_media, CodecPreferences, SessionOffer};
use switchboard_media::{AudioFrame, Codec};

const FRAME: Duration = Duration::from_millis(20);
/// How long a due frame waits for a packet to carry its pull.
const PULL_LATE: Duration = Duration::from_millis(2);

/// A PCMU pipeline to a bot at 8 kHz (no resampling, so sample values
/// identify packets), adaptive jitter buffer at its 20 ms floor.
fn pipeline() -> MediaPipeline {
    let offer = SessionOffer::parse(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
    )
    .unwrap();
    let negotiated = negotiate_media(&offer, &CodecPreferences::new(&[Codec::Pcmu])).unwrap();
    let adaptive = AdaptiveConfig {
        min_depth_ms: 20,
        ..AdaptiveConfig::default()
    };
    MediaPipeline::new(
        &negotiated,
        8000,
        20,
        Some(adaptive),
        "gw@127.0.0.1",
        AudioSettings::default(),
    )
    .unwrap()
}

/// Packet `sequence`, every sample the µ-law code of `level`.
fn packet(sequence: u16, level: i16) -> Vec<u8> {
    let mut packet = vec![0x80, 0];
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(&(sequence as u32 * 160).to_be_bytes());
    packet.extend_from_slice(&7u32.to_be_bytes());
    packet.extend(std::iter::repeat_n(ulaw_encode(level), 160));
    packet
}

fn level(sequence: u16) -> i16 {
    ulaw_decode(ulaw_encode(100 * (sequence as i16 + 1)))
}

#[test]
fn caller_frames_play_as_their_packets_arrive() {
    let mut pipeline = pipeline();
    let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    // Packets arrive 7 ms into an arbitrary 20 ms grid.
    let start = Instant::now() + Duration::from_millis(7);
    let mut played = Vec::new();
    for sequence in 0..50u16 {
        let now = start + FRAME * sequence as u32;
        // Nothing is due between packets: no wake-up without a packet.
        let before = now - Duration::from_millis(2);
        assert!(pipeline.poll_pull(before).is_none(), "packet {sequence}");
        pipeline.on_datagram(&packet(sequence, 100 * (sequence as i16 + 1)), from, now);
        if let Some(frame) = pipeline.pull_on_arrival(now) {
            played.push((sequence, frame.samples()[0]));
            // The next frame is due when the next packet is; a wake-up of
            // its own waits a moment longer for that packet to carry it.
            assert_eq!(
                pipeline.next_pull(),
                Some(now + FRAME + PULL_LATE),
                "packet {sequence}"
            );
        }
    }
    assert!(played.len() >= 45, "{} frames played", played.len());
    // Each packet played on the next one's arrival: it waited exactly the
    // jitter buffer's 20 ms.
    for (arrived, sample) in &played[5..] {
        assert_eq!(
            *sample,
            level(arrived - 1),
            "frame played at packet {arrived}"
        );
    }
}

/// A pipeline whose caller sent packets 0..20 on time from `start`.
fn playing_twenty_packets() -> (MediaPipeline, SocketAddr, Instant) {
    let mut pipeline = pipeline();
    let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let start = Instant::now();
    for sequence in 0..20u16 {
        let now = start + FRAME * sequence as u32;
        pipeline.on_datagram(&packet(sequence, 1000), from, now);
        pipeline.pull_on_arrival(now);
    }
    (pipeline, from, start)
}

#[test]
fn caller_frames_keep_their_schedule_through_a_lost_packet() {
    let (mut pipeline, _, start) = playing_twenty_packets();
    // Packet 20 never comes: its frame is still pulled, concealed, as soon
    // as the wait for a packet to carry it is over.
    let due = pipeline.next_pull().expect("playing");
    assert_eq!(due, start + FRAME * 20 + PULL_LATE);
    assert!(pipeline.poll_pull(due - Duration::from_millis(1)).is_none());
    assert!(pipeline.poll_pull(due).is_some());
    // The schedule itself did not move.
    assert_eq!(pipeline.next_pull(), Some(due + FRAME));
}

#[test]
fn a_packet_just_after_the_due_time_carries_the_pull() {
    let (mut pipeline, from, start) = playing_twenty_packets();
    // Packet 20 comes a millisecond late: its arrival pulls the frame due,
    // and the schedule stays on the 20 ms grid.
    let late = start + FRAME * 20 + Duration::from_millis(1);
    assert!(
        pipeline.poll_pull(late).is_none(),
        "no wake-up of its own yet"
    );
    pipeline.on_datagram(&packet(20, 1000), from, late);
    assert!(pipeline.pull_on_arrival(late).is_some());
    assert_eq!(pipeline.next_pull(), Some(start + FRAME * 21 + PULL_LATE));
}

#[test]
fn a_bot_talkspurt_goes_out_when_it_arrives() {
    let mut pipeline = pipeline();
    let mut out = [0u8; 1500];
    let start = Instant::now();
    // Silence goes out on the send schedule while the bot is quiet.
    for tick in 0..5u32 {
        let sent = pipeline.send(start + FRAME * tick, &mut out);
        let (len, _) = sent.rtp.expect("silence keeps the stream alive");
        if tick > 0 {
            assert_eq!(
                out[1] & 0x80,
                0,
                "no marker on silence after the first packet"
            );
        }
        assert!(out[12..len].iter().all(|&b| b == ulaw_encode(0)));
    }
    // The bot's first frame, 13 ms after a tick: it should go now, not 7 ms later.
    let speech = AudioFrame::from_samples(8000, &[4000i16; 160]);
    let arrival = start + FRAME * 4 + Duration::from_millis(13);
    assert!(
        pipeline.push_bot_audio(&speech, arrival),
        "a talkspurt starts"
    );
    let sent = pipeline.send(arrival, &mut out);
    let (len, _) = sent.rtp.expect("sent at once");
    assert_ne!(out[1] & 0x80, 0, "the marker bit starts the talkspurt");
    assert_eq!(ulaw_decode(out[12]), ulaw_decode(ulaw_encode(4000)));
    assert_eq!(len, 172);
    // More audio while the talkspurt plays waits for its tick.
    assert!(!pipeline.push_bot_audio(&speech, arrival));
    assert!(!pipeline.push_bot_audio(&speech, arrival));
    pipeline.send(arrival + FRAME, &mut out);
    assert_eq!(out[1] & 0x80, 0, "no marker within a talkspurt");
    assert!(!pipeline.push_bot_audio(&speech, arrival), "still playing");
    pipeline.send(arrival + FRAME * 2, &mut out);
    // The queue ran dry inside the talkspurt: the send waits for the bot,
    // and its frame, arriving late, goes at once without a marker.
    assert!(!pipeline.hold_for_audio(), "a frame is still queued");
    pipeline.send(arrival + FRAME * 3, &mut out);
    assert!(pipeline.hold_for_audio());
    assert!(!pipeline.hold_for_audio(), "one hold per dry spell");
    assert!(
        pipeline.push_bot_audio(&speech, arrival),
        "the held send goes now"
    );
    pipeline.send(arrival + FRAME * 4 + Duration::from_millis(3), &mut out);
    assert_eq!(out[1] & 0x80, 0, "a held frame continues the talkspurt");
    assert_eq!(ulaw_decode(out[12]), ulaw_decode(ulaw_encode(4000)));
    // Nothing comes during the next hold: silence, and the next audio
    // starts a new talkspurt.
    assert!(pipeline.hold_for_audio());
    pipeline.stop_holding();
    pipeline.send(arrival + FRAME * 5 + Duration::from_millis(10), &mut out);
    assert!(out[12..172].iter().all(|&b| b == ulaw_encode(0)));
    assert!(!pipeline.hold_for_audio(), "no hold after silence");
    assert!(pipeline.push_bot_audio(&speech, arrival));
    assert_eq!(pipeline.counters().talkspurts_sent_early, 2);
}

#[test]
fn a_real_time_bot_stream_pulls_the_send_schedule_to_its_frames() {
    let mut pipeline = pipeline();
    let mut out = [0u8; 1500];
    let speech = AudioFrame::from_samples(8000, &[4000i16; 160]);
    let start = Instant::now();
    assert!(pipeline.push_bot_audio(&speech, start));
    assert!(pipeline.send(start, &mut out).advance.is_none());
    // Each frame arrives 9 ms before its send: 7 ms more than needed.
    let mut advance = None;
    for n in 1..=25u32 {
        let send = start + FRAME * n;
        assert!(!pipeline.push_bot_audio(&speech, send - Duration::from_millis(9)));
        let sent = pipeline.send(send, &mut out);
        assert!(sent.rtp.is_some());
        if sent.advance.is_some() {
            advance = sent.advance;
            assert_eq!(n, 25, "decided once per window");
        }
    }
    assert_eq!(advance, Some(Duration::from_millis(7)));
    // A burst (frames queued ahead) says nothing about the phase.
    for n in 26..=60u32 {
        let send = start + FRAME * n;
        if n == 26 {
            for _ in 0..40 {
                pipeline.push_bot_audio(&speech, send - Duration::from_millis(15));
            }
        }
        assert!(pipeline.send(send, &mut out).advance.is_none(), "send {n}");
    }
}

/// The call lets a send ride on another wake-up only when going early
/// changes nothing the caller hears.
#[test]
fn a_send_may_go_early_only_with_its_frame_ready_or_silence() {
    let mut pipeline = pipeline();
    let mut out = [0u8; 1500];
    let start = Instant::now();
    pipeline.send(start, &mut out);
    assert!(
        pipeline.can_send_early(),
        "the bot is quiet: silence goes out"
    );
    let speech = AudioFrame::from_samples(8000, &[4000i16; 160]);
    assert!(pipeline.push_bot_audio(&speech, start + Duration::from_millis(5)));
    pipeline.send(start + Duration::from_millis(5), &mut out);
    // The talkspurt's next frame has not come: the send must wait for it.
    assert!(!pipeline.can_send_early());
    // Half a frame is not a frame.
    let half = AudioFrame::from_samples(8000, &[4000i16; 80]);
    assert!(!pipeline.push_bot_audio(&half, start + Duration::from_millis(20)));
    assert!(!pipeline.can_send_early());
    assert!(!pipeline.push_bot_audio(&half, start + Duration::from_millis(21)));
    assert!(pipeline.can_send_early(), "a whole frame is queued");
}

/// A real-time bot one frame behind for good (a send once went out before
/// its frame came) gets its latency back at the next silence, and its
/// speech is never cut.
#[test]
fn a_standing_queue_behind_a_real_time_bot_is_shortened_in_silence() {
    let mut pipeline = pipeline();
    let mut out = [0u8; 1500];
    let silence = AudioFrame::from_samples(8000, &[0i16; 160]);
    let speech = |n: u32| AudioFrame::from_samples(8000, &[1000 + 100 * n as i16; 160]);
    let start = Instant::now();
    // Two frames come at once, then one a tick: one frame always waits.
    pipeline.push_bot_audio(&silence, start);
    pipeline.push_bot_audio(&silence, start);
    pipeline.send(start, &mut out);
    // Frame n is pushed a millisecond before send n; speech from 10 to 39,
    // silence from 40 on, speech again at 70.
    let mut sent_at = Vec::new();
    for n in 1..=80u32 {
        let send = start + FRAME * n;
        let frame = if (10..40).contains(&n) || n == 70 {
            speech(n)
        } else {
            silence
        };
        pipeline.push_bot_audio(&frame, send - Duration::from_millis(1));
        let (len, _) = pipeline.send(send, &mut out).rtp.expect("a packet a tick");
        let level = ulaw_decode(out[12]);
        if level != 0 {
            assert!(out[12..len].iter().all(|&b| b == out[12]));
            sent_at.push((n, level));
        }
    }
    // Speech plays whole, one tick late while the queue stands...
    let expected = |n: u32| ulaw_decode(ulaw_encode(1000 + 100 * n as i16));
    let speech_sends: Vec<_> = sent_at.iter().filter(|(n, _)| *n <= 41).collect();
    assert_eq!(speech_sends.len(), 30, "{sent_at:?}");
    for (at, level) in &speech_sends {
        assert_eq!(*level, expected(at - 1), "send {at}");
    }
    // ...and the first silence after 25 such sends is skipped: the frame
    // pushed at 70 leaves on its own tick.
    assert_eq!(sent_at.last(), Some(&(70, expected(70))));
    assert_eq!(pipeline.counters().standing_silence_skipped, 1);
}

/// After a stall released several frames at once, the queue they left is
/// shortened a silent frame per window until the bot is on time again; a
/// burst that drains (a bot ahead of real time) is left alone.
#[test]
fn a_deeper_standing_queue_drains_a_frame_per_window_and_a_burst_is_left_alone() {
    let mut pipeline = pipeline();
    let mut out = [0u8; 1500];
    let silence = AudioFrame::from_samples(8000, &[0i16; 160]);
    let start = Instant::now();
    for _ in 0..4 {
        pipeline.push_bot_audio(&silence, start);
    }
    pipeline.send(start, &mut out);
    let tone = AudioFrame::from_samples(8000, &[3000i16; 160]);
    let mut tone_sent = None;
    for n in 1..=120u32 {
        let send = start + FRAME * n;
        let frame = if n == 110 { &tone } else { &silence };
        pipeline.push_bot_audio(frame, send - Duration::from_millis(1));
        pipeline.send(send, &mut out);
        if ulaw_decode(out[12]) != 0 {
            tone_sent = Some(n);
        }
    }
    assert_eq!(tone_sent, Some(110), "three frames skipped by then");
    assert_eq!(pipeline.counters().standing_silence_skipped, 3);

    // Two seconds of silence at once (a bot's answer with a pause in it)
    // drains as sent: nothing of it is skipped.
    for _ in 0..100 {
        pipeline.push_bot_audio(&silence, start + FRAME * 120);
    }
    for n in 121..=220u32 {
        pipeline.send(start + FRAME * n, &mut out);
    }
    assert_eq!(pipeline.counters().standing_silence_skipped, 3);
}
