//! Per-frame cost of each connector's wire path, measured as a round trip:
//! one 20 ms caller frame goes into the session, is encoded the protocol's
//! way (JSON + base64 μ-law for Twilio, binary s16le for Ultravox and the
//! generic bot, JSON + base64 μ-law or PCM for OpenAI), crosses a loopback
//! WebSocket to a bot written here, which answers with one 20 ms frame of
//! its own in the same protocol, decoded back into a `BotEvent::Audio`.
//!
//! Everything runs on one current-thread runtime, so the figure is CPU time
//! for both directions (encode, socket writes and reads, decode, two task
//! wake-ups), not scheduling noise from a second core.
//!
//! cargo bench -p switchboard-connectors --bench frames

use std::collections::BTreeMap;
use std::hint::black_box;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use switchboard_connectors::openai_realtime::OpenAiRealtimeConnector;
use switchboard_connectors::twilio_stream::TwilioStreamConnector;
use switchboard_connectors::ultravox::UltravoxConnector;
use switchboard_connectors::websocket::WebsocketConnector;
use switchboard_connectors::{BotConnector, BotEvent, BotSession, CallInfo};
use switchboard_flows::{
    OpenAiRealtimeConfig, RealtimeAudio, TwilioStreamConfig, UltravoxConfig, WebsocketBotConfig,
};
use switchboard_media::AudioFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::Message;

/// A bot that answers every audio message from the gateway with `reply`.
async fn echo_bot(listener: TcpListener, is_audio: fn(&Message) -> bool, reply: Message) {
    let Ok((tcp, _)) = listener.accept().await else {
        return;
    };
    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    while let Some(Ok(message)) = stream.next().await {
        if is_audio(&message) && sink.send(reply.clone()).await.is_err() {
            return;
        }
    }
}

fn is_binary(message: &Message) -> bool {
    matches!(message, Message::Binary(_))
}

fn is_twilio_media(message: &Message) -> bool {
    matches!(message, Message::Text(t) if t.as_str().contains(r#""event":"media""#))
}

fn is_openai_append(message: &Message) -> bool {
    matches!(message, Message::Text(t) if t.as_str().contains("input_audio_buffer.append"))
}

/// Ultravox's REST step: one call-creation reply pointing at `join`.
async fn ultravox_rest(listener: TcpListener, join: String) {
    let Ok((mut tcp, _)) = listener.accept().await else {
        return;
    };
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    // Head, then the body its Content-Length announces.
    loop {
        let Ok(n) = tcp.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if request.len() >= head_end + 4 + length {
                break;
            }
        }
    }
    let body = json!({"callId": "uv-bench", "joinUrl": join}).to_string();
    let reply = format!(
        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(reply.as_bytes()).await;
}

async fn bound() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, format!("{addr}"))
}

fn tone(rate: u32) -> AudioFrame {
    let samples: Vec<i16> = (0..rate / 50)
        .map(|i| ((i as f32 * 0.3).sin() * 8000.0) as i16)
        .collect();
    AudioFrame::from_samples(rate, &samples)
}

async fn open_twilio() -> BotSession {
    let (listener, addr) = bound().await;
    let payload = B64.encode([0x55u8; 160]);
    let reply = json!({"event": "media", "streamSid": "MZ0", "media": {"payload": payload}});
    tokio::spawn(echo_bot(
        listener,
        is_twilio_media,
        Message::text(reply.to_string()),
    ));
    let connector = TwilioStreamConnector::new(TwilioStreamConfig {
        url: format!("ws://{addr}/media"),
        connect_timeout_ms: 2000,
    });
    connector.open(&CallInfo::default()).await.unwrap()
}

async fn open_websocket(rate: u32) -> BotSession {
    let (listener, addr) = bound().await;
    let reply = Message::binary(vec![0x11u8; rate as usize / 50 * 2]);
    tokio::spawn(echo_bot(listener, is_binary, reply));
    let connector = WebsocketConnector::new(WebsocketBotConfig {
        url: format!("ws://{addr}/bot"),
        sample_rate: rate,
        connect_timeout_ms: 2000,
    });
    connector.open(&CallInfo::default()).await.unwrap()
}

async fn open_ultravox(rate: u32) -> BotSession {
    let (ws_listener, ws_addr) = bound().await;
    let reply = Message::binary(vec![0x11u8; rate as usize / 50 * 2]);
    tokio::spawn(echo_bot(ws_listener, is_binary, reply));
    let (rest_listener, rest_addr) = bound().await;
    tokio::spawn(ultravox_rest(rest_listener, format!("ws://{ws_addr}/join")));
    let connector = UltravoxConnector::new(UltravoxConfig {
        api_key: "k".into(),
        base_url: format!("http://{rest_addr}"),
        agent_id: None,
        system_prompt: None,
        voice: None,
        model: None,
        sample_rate: rate,
        tools: BTreeMap::new(),
        connect_timeout_ms: 2000,
    });
    connector.open(&CallInfo::default()).await.unwrap()
}

async fn open_openai(audio: RealtimeAudio) -> BotSession {
    let (listener, addr) = bound().await;
    let bytes = match audio {
        RealtimeAudio::Pcmu => 160,
        RealtimeAudio::Pcm24k => 960,
    };
    let reply = json!({"type": "response.output_audio.delta", "response_id": "r",
        "item_id": "i", "output_index": 0, "content_index": 0,
        "delta": B64.encode(vec![0x55u8; bytes])});
    tokio::spawn(echo_bot(
        listener,
        is_openai_append,
        Message::text(reply.to_string()),
    ));
    let connector = OpenAiRealtimeConnector::new(OpenAiRealtimeConfig {
        api_key: "sk".into(),
        base_url: format!("ws://{addr}/v1/realtime"),
        model: "gpt-realtime".into(),
        instructions: None,
        voice: "alloy".into(),
        audio,
        tools: BTreeMap::new(),
        connect_timeout_ms: 2000,
        speak_first: false,
    });
    connector.open(&CallInfo::default()).await.unwrap()
}

/// One caller frame in, one bot frame out.
async fn round_trip(session: &mut BotSession, frame: &AudioFrame) {
    let frame = session.frames.copy_of(frame);
    session.audio_in.send(frame).await.unwrap();
    loop {
        match session.events.recv().await {
            Some(BotEvent::Audio(audio)) => {
                black_box(audio);
                return;
            }
            Some(_) => continue,
            None => panic!("the session ended"),
        }
    }
}

fn bench(c: &mut Criterion, name: &str, rt: &Runtime, mut session: BotSession, rate: u32) {
    let frame = tone(rate);
    c.bench_function(name, |b| {
        b.iter(|| rt.block_on(round_trip(&mut session, &frame)));
    });
}

fn connectors(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let twilio = rt.block_on(open_twilio());
    bench(
        c,
        "twilio μ-law 8k JSON+base64 round trip",
        &rt,
        twilio,
        8000,
    );
    let ultravox = rt.block_on(open_ultravox(16_000));
    bench(
        c,
        "ultravox s16le 16k binary round trip",
        &rt,
        ultravox,
        16_000,
    );
    let generic = rt.block_on(open_websocket(16_000));
    bench(
        c,
        "websocket s16le 16k binary round trip",
        &rt,
        generic,
        16_000,
    );
    let openai = rt.block_on(open_openai(RealtimeAudio::Pcmu));
    bench(
        c,
        "openai pcmu 8k JSON+base64 round trip",
        &rt,
        openai,
        8000,
    );
    let openai = rt.block_on(open_openai(RealtimeAudio::Pcm24k));
    bench(
        c,
        "openai pcm 24k JSON+base64 round trip",
        &rt,
        openai,
        24_000,
    );
}

criterion_group!(benches, connectors);
criterion_main!(benches);
