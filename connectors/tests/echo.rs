//! The echo bot on a paused clock: no real waiting, no flakiness.

use std::time::Duration;

use switchboard_connectors::echo::EchoConnector;
use switchboard_connectors::{BotConnector, BotControl, BotEvent, BotSession, CallInfo};
use switchboard_flows::EchoBotConfig;
use switchboard_media::AudioFrame;
use tokio::sync::mpsc::Receiver;
use tokio::time::{sleep, timeout, Instant};

async fn open(delay_ms: u32, sample_rate: u32) -> BotSession {
    EchoConnector::new(EchoBotConfig {
        delay_ms,
        sample_rate,
    })
    .open(&CallInfo::default())
    .await
    .expect("the echo bot always opens")
}

/// A 20 ms frame at 16 kHz whose samples all carry `tag`.
fn tagged(tag: i16) -> AudioFrame {
    AudioFrame::from_samples(16_000, &[tag; 320])
}

async fn expect_closed_then_end(events: &mut Receiver<BotEvent>) {
    match timeout(Duration::from_secs(5), events.recv()).await {
        Ok(Some(BotEvent::Closed { error: None })) => {}
        other => panic!("expected Closed, got {other:?}"),
    }
    // None means the task dropped its sender: it has exited.
    assert!(timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("the task must end")
        .is_none());
}

#[tokio::test(start_paused = true)]
async fn frames_come_back_in_order_after_the_delay() {
    let mut session = open(100, 16_000).await;
    assert_eq!(session.audio_format.sample_rate, 16_000);

    let audio_in = session.audio_in.clone();
    let sender = tokio::spawn(async move {
        let mut sent = Vec::new();
        for tag in 0..10 {
            sent.push(Instant::now());
            audio_in.send(tagged(tag).into()).await.unwrap();
            sleep(Duration::from_millis(20)).await;
        }
        sent
    });

    let mut received = Vec::new();
    while received.len() < 10 {
        match session.events.recv().await {
            Some(BotEvent::Audio(frame)) => received.push((Instant::now(), frame)),
            other => panic!("unexpected {other:?}"),
        }
    }
    let sent = sender.await.unwrap();
    for (tag, ((at, frame), sent_at)) in received.iter().zip(&sent).enumerate() {
        assert_eq!(frame.samples(), tagged(tag as i16).samples(), "order");
        assert_eq!(frame.sample_rate(), 16_000);
        let delay = *at - *sent_at;
        assert!(
            delay >= Duration::from_millis(100),
            "frame {tag} after {delay:?}"
        );
        assert!(
            delay < Duration::from_millis(120),
            "frame {tag} after {delay:?}"
        );
    }

    // Dropping the caller's audio ends the session.
    let BotSession {
        audio_in,
        mut events,
        control,
        ..
    } = session;
    drop(audio_in);
    expect_closed_then_end(&mut events).await;
    assert!(control.is_closed(), "the task owned the control receiver");
}

#[tokio::test(start_paused = true)]
async fn zero_delay_echoes_at_once() {
    let mut session = open(0, 8_000).await;
    let started = Instant::now();
    session.audio_in.send(tagged(7).into()).await.unwrap();
    match session.events.recv().await {
        Some(BotEvent::Audio(frame)) => assert_eq!(frame.samples()[0], 7),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(Instant::now(), started);
}

#[tokio::test(start_paused = true)]
async fn hangup_closes_the_session() {
    let mut session = open(200, 16_000).await;
    session.audio_in.send(tagged(1).into()).await.unwrap();
    session.control.send(BotControl::Dtmf('5')).await.unwrap();
    session
        .control
        .send(BotControl::MarkPlayed("m".into()))
        .await
        .unwrap();
    session.control.send(BotControl::Hangup).await.unwrap();
    // Queued audio is dropped with the call: Closed comes first.
    expect_closed_then_end(&mut session.events).await;
    assert!(session.audio_in.is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_full_delay_line_drops_the_oldest() {
    // 1 s of delay holds 50 frames + 10 of slack.
    let mut session = open(1_000, 16_000).await;
    for tag in 0..70 {
        session.audio_in.send(tagged(tag).into()).await.unwrap();
    }
    let mut tags = Vec::new();
    while tags.len() < 60 {
        match session.events.recv().await {
            Some(BotEvent::Audio(frame)) => tags.push(frame.samples()[0]),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(tags, (10..70).collect::<Vec<i16>>());
    sleep(Duration::from_secs(2)).await;
    assert!(session.events.try_recv().is_err(), "nothing more to echo");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_events_receiver_ends_the_task() {
    let session = open(100, 16_000).await;
    let BotSession {
        audio_in, events, ..
    } = session;
    drop(events);
    // Sender::closed resolves once the task has dropped its receiver.
    timeout(Duration::from_secs(5), audio_in.closed())
        .await
        .expect("the task must end when nobody listens");
}

/// The echo bot returns the caller's own boxes: once played they go back to
/// the call's pool, so a long call reuses a handful of frames.
#[tokio::test(start_paused = true)]
async fn echoed_frames_return_to_the_calls_pool() {
    let mut session = open(100, 16_000).await;
    let mut addresses = std::collections::HashSet::new();
    for tag in 0..50 {
        let mut frame = session.frames.frame(16_000);
        frame.fill(320).fill(tag);
        session.audio_in.send(frame).await.unwrap();
        sleep(Duration::from_millis(20)).await;
        while let Ok(event) = session.events.try_recv() {
            match event {
                BotEvent::Audio(frame) => {
                    addresses.insert(&*frame as *const AudioFrame as usize);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(session.frames.free_frames() >= 1, "played frames come back");
    assert!(
        addresses.len() <= 10,
        "{} distinct boxes for 50 frames with 5 in flight",
        addresses.len()
    );
}
