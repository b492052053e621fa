//! Cost of each media stage per 20 ms frame.
//!
//!   cargo bench -p switchboard-media --bench stages

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use switchboard_media::aec::{AudioSettings, EchoCanceller};
use switchboard_media::codec::{OpusConfig, OpusEncoder};
use switchboard_media::jitter::{AdaptiveConfig, JitterBuffer, JitterConfig, Playout};
use switchboard_media::pacer::Pacer;
use switchboard_media::resample::Resampler;
use switchboard_media::rtp::{write_rtp, RtpPacket};
use switchboard_media::{AudioDecoder, AudioEncoder, AudioFrame, Codec, Concealer, G711};

fn tone(rate: u32, samples: usize) -> Vec<i16> {
    (0..samples)
        .map(|n| ((n as f64 * 440.0 * std::f64::consts::TAU / rate as f64).sin() * 12000.0) as i16)
        .collect()
}

fn g711(c: &mut Criterion) {
    let pcm = tone(8000, 160);
    let mut encoded = [0u8; 160];
    let mut decoded = [0i16; 160];
    for law in [G711::Pcmu, G711::Pcma] {
        c.bench_function(&format!("{} encode 20 ms", law.name()), |b| {
            b.iter(|| law.encode(black_box(&pcm), &mut encoded))
        });
        c.bench_function(&format!("{} decode 20 ms", law.name()), |b| {
            b.iter(|| law.decode(black_box(&encoded), &mut decoded))
        });
    }
}

/// Every codec behind the common interface, one 20 ms frame per iteration,
/// on a voice-band signal (three partials) at the codec's own rate.
fn codecs(c: &mut Criterion) {
    for codec in Codec::DEFAULT_PREFERENCE {
        let rate = codec.sample_rate();
        let frame = codec.samples_per_frame();
        let pcm: Vec<i16> = (0..frame)
            .map(|n| {
                let t = n as f64 / rate as f64;
                let s: f64 = [(220.0, 0.5), (660.0, 0.3), (1900.0, 0.2)]
                    .iter()
                    .map(|(f, a)| a * (t * f * std::f64::consts::TAU).sin())
                    .sum();
                (s * 12000.0) as i16
            })
            .collect();
        let mut encoder = codec.encoder().unwrap();
        let mut decoder = codec.decoder().unwrap();
        let mut payload = vec![0u8; codec.max_payload_bytes()];
        let mut out = [0i16; 960];
        c.bench_function(&format!("codec {codec} encode 20 ms"), |b| {
            b.iter(|| encoder.encode(black_box(&pcm), &mut payload).unwrap())
        });
        let len = encoder.encode(&pcm, &mut payload).unwrap();
        let packet = &payload[..len];
        c.bench_function(&format!("codec {codec} decode 20 ms"), |b| {
            b.iter(|| decoder.decode(black_box(packet), &mut out).unwrap())
        });
        if codec == Codec::Opus {
            // libopus defaults to complexity 10; a busy gateway may trade
            // some quality for calls per core.
            let mut light = OpusEncoder::new(OpusConfig {
                complexity: Some(5),
                ..OpusConfig::default()
            })
            .unwrap();
            let mut scratch = [0u8; 1275];
            c.bench_function("codec opus encode 20 ms complexity 5", |b| {
                b.iter(|| light.encode(black_box(&pcm), &mut scratch).unwrap())
            });
            c.bench_function("codec opus conceal (PLC) 20 ms", |b| {
                b.iter(|| decoder.conceal(&mut out).unwrap())
            });
            c.bench_function("codec opus decode_fec 20 ms", |b| {
                b.iter(|| decoder.decode_fec(black_box(packet), &mut out).unwrap())
            });
        }
    }
}

fn jitter(c: &mut Criterion) {
    let mut buffer = JitterBuffer::new(JitterConfig::default());
    let payload = [0xffu8; 160];
    let mut packet = [0u8; 172];
    let start = Instant::now();
    let mut sequence: u16 = 0;
    c.bench_function("jitter push+pop 20 ms", |b| {
        b.iter(|| {
            let now = start + Duration::from_millis(20 * sequence as u64);
            write_rtp(
                &mut packet,
                false,
                0,
                sequence,
                sequence as u32 * 160,
                7,
                &payload,
            );
            let parsed = RtpPacket::parse(&packet).unwrap();
            black_box(buffer.push(&parsed, now));
            if let Playout::Packet { payload, .. } = buffer.pop(now) {
                black_box(payload.len());
            }
            sequence = sequence.wrapping_add(1);
        })
    });

    // Adaptive, on a bad network: a fixed pattern of 0-60 ms delays (so
    // packets arrive out of order), one in twenty lost, the receiver ticking
    // every 20 ms. One iteration is one 20 ms tick with its arrivals.
    let mut buffer = JitterBuffer::adaptive(JitterConfig::default(), AdaptiveConfig::default());
    let mut arrivals: Vec<(u64, u16)> = (0..4096u32)
        .filter(|i| i % 20 != 7)
        .map(|i| {
            let delay = (i.wrapping_mul(2_654_435_761) >> 8) as u64 % 60_000;
            (i as u64 * 20_000 + delay, i as u16)
        })
        .collect();
    arrivals.sort();
    let mut next = 0;
    let mut tick: u64 = 0;
    let mut replay: u32 = 0;
    c.bench_function(
        "jitter adaptive push+pop 20 ms (60 ms jitter, 5% loss)",
        |b| {
            b.iter(|| {
                let base = replay as u64 * 4096 * 20_000;
                let now_us = tick * 20_000;
                while next < arrivals.len() && arrivals[next].0 <= now_us {
                    let (at, index) = arrivals[next];
                    let ext = replay * 4096 + index as u32;
                    write_rtp(
                        &mut packet,
                        false,
                        0,
                        ext as u16,
                        ext.wrapping_mul(160),
                        7,
                        &payload,
                    );
                    let parsed = RtpPacket::parse(&packet).unwrap();
                    black_box(buffer.push(&parsed, start + Duration::from_micros(base + at)));
                    next += 1;
                }
                black_box(buffer.pop(start + Duration::from_micros(base + now_us)));
                tick += 1;
                if tick == 4096 {
                    // Replay the pattern as the next 4096 packets.
                    replay += 1;
                    tick = 0;
                    next = 0;
                }
            })
        },
    );
}

fn plc(c: &mut Criterion) {
    let pcm = tone(8000, 160);
    let mut frame = [0i16; 160];
    let mut plc = Concealer::new(8000);
    c.bench_function("plc good frame 20 ms", |b| {
        b.iter(|| {
            frame.copy_from_slice(&pcm);
            plc.good_frame(black_box(&mut frame));
        })
    });
    // Worst case: every other frame lost, so every loss runs the pitch
    // search and every good frame the crossfade back.
    c.bench_function("plc conceal+recover 2x20 ms", |b| {
        b.iter(|| {
            plc.conceal(black_box(&mut frame));
            frame.copy_from_slice(&pcm);
            plc.good_frame(black_box(&mut frame));
        })
    });
}

/// Every pair of supported rates, one 20 ms input frame per iteration.
fn resample(c: &mut Criterion) {
    let rates = switchboard_media::resample::SUPPORTED_RATES;
    let pairs = rates
        .iter()
        .flat_map(|&from| rates.iter().map(move |&to| (from, to)))
        .filter(|(from, to)| from != to);
    for (from, to) in pairs {
        let mut resampler = Resampler::new(from, to).unwrap();
        let input = tone(from, from as usize / 50);
        let mut out = AudioFrame::new(to);
        c.bench_function(&format!("resample {from}->{to} 20 ms"), |b| {
            b.iter(|| resampler.process(black_box(&input), &mut out))
        });
    }
    // Every call opens one each way; the filter is designed once per pair.
    c.bench_function("resampler open 8000->16000 + 16000->8000", |b| {
        b.iter(|| {
            (
                Resampler::new(black_box(8000), 16_000).unwrap(),
                Resampler::new(black_box(16_000), 8000).unwrap(),
            )
        })
    });
}

fn pacer(c: &mut Criterion) {
    let mut pacer = Pacer::new(8000, 120_000);
    let chunk = tone(8000, 160);
    let mut out = [0i16; 160];
    c.bench_function("pacer push+frame 20 ms", |b| {
        b.iter(|| {
            pacer.push_audio(black_box(&chunk));
            black_box(pacer.next_frame(&mut out));
        })
    });
}

/// Caller → bot direction of a G.711 call to a 16 kHz bot: parse, jitter,
/// decode, resample. Bot → caller: resample, pace, encode, write RTP.
fn pipeline(c: &mut Criterion) {
    let mut buffer = JitterBuffer::new(JitterConfig::default());
    let mut up = Resampler::new(8000, 16000).unwrap();
    let mut down = Resampler::new(16000, 8000).unwrap();
    let mut pacer = Pacer::new(8000, 120_000);
    let mut packet = [0u8; 172];
    let mut out_packet = [0u8; 172];
    let mut pcm = [0i16; 160];
    let mut encoded = [0u8; 160];
    let mut to_bot = AudioFrame::new(16000);
    let bot_audio = tone(16000, 320);
    let payload: Vec<u8> = tone(8000, 160)
        .iter()
        .map(|s| switchboard_media::g711::ulaw_encode(*s))
        .collect();
    let start = Instant::now();
    let mut sequence: u16 = 0;
    c.bench_function("pipeline caller->bot 20 ms (G.711 -> 16 kHz)", |b| {
        b.iter(|| {
            let now = start + Duration::from_millis(20 * sequence as u64);
            write_rtp(
                &mut packet,
                false,
                0,
                sequence,
                sequence as u32 * 160,
                7,
                &payload,
            );
            let parsed = RtpPacket::parse(black_box(&packet)).unwrap();
            buffer.push(&parsed, now);
            if let Playout::Packet { payload, .. } = buffer.pop(now) {
                G711::Pcmu.decode(payload, &mut pcm);
                up.process(&pcm, &mut to_bot);
            }
            sequence = sequence.wrapping_add(1);
        })
    });
    let mut out_sequence: u16 = 0;
    c.bench_function("pipeline bot->caller 20 ms (16 kHz -> G.711)", |b| {
        b.iter(|| {
            down.process_any(black_box(&bot_audio), |chunk| pacer.push_audio(chunk));
            pacer.next_frame(&mut pcm);
            G711::Pcmu.encode(&pcm, &mut encoded);
            black_box(write_rtp(
                &mut out_packet,
                false,
                0,
                out_sequence,
                out_sequence as u32 * 160,
                9,
                &encoded,
            ));
            out_sequence = out_sequence.wrapping_add(1);
        })
    });
}

/// Echo canceller on one 20 ms frame each way (far-end reference in, caller's
/// audio processed), with the echo already in the caller's audio so the
/// canceller is busy rather than idle.
fn aec(c: &mut Criterion) {
    let aec_only = AudioSettings {
        echo_cancellation: true,
        ..AudioSettings::default()
    };
    for (name, settings) in [("aec", aec_only), ("aec+ns+agc", AudioSettings::ALL)] {
        for rate in [8000, 16000] {
            let mut aec = EchoCanceller::new(settings, rate).unwrap();
            let far = tone(rate, rate as usize / 50);
            let echo: Vec<i16> = far.iter().map(|s| s / 2).collect();
            let mut near = echo.clone();
            c.bench_function(&format!("{name} {} kHz 20 ms", rate / 1000), |b| {
                b.iter(|| {
                    aec.far_end(black_box(&far));
                    near.copy_from_slice(&echo);
                    aec.near_end(black_box(&mut near));
                })
            });
        }
    }
}

/// One 20 ms G.711 packet (172 bytes) and one Opus packet (~92 bytes),
/// protected and then unprotected: the SRTP cost a call pays per packet
/// each way, beside a plain copy of the same bytes.
fn srtp(c: &mut Criterion) {
    use switchboard_media::srtp::{CryptoAttribute, SrtpContext, Suite};
    for (name, payload) in [("G.711", 160usize), ("Opus", 80)] {
        let mut packet = vec![0x80u8, 0, 0, 0, 0, 0, 0, 0, 0x11, 0x22, 0x33, 0x44];
        packet.extend(std::iter::repeat_n(0x55u8, payload));
        for suite in Suite::ALL {
            let a = CryptoAttribute::generate(1, suite);
            let b = CryptoAttribute::generate(1, suite);
            let mut sender = SrtpContext::new(&a, &b).unwrap();
            let mut receiver = SrtpContext::new(&b, &a).unwrap();
            let mut sequence = 0u16;
            let mut wire = [0u8; 1500];
            c.bench_function(
                &format!("srtp {} protect+unprotect {name} packet", suite.name()),
                |bench| {
                    bench.iter(|| {
                        sequence = sequence.wrapping_add(1);
                        packet[2..4].copy_from_slice(&sequence.to_be_bytes());
                        let protected = sender.protect_rtp(black_box(&packet)).unwrap();
                        let len = protected.len();
                        wire[..len].copy_from_slice(protected);
                        black_box(receiver.unprotect(&mut wire[..len]))
                    })
                },
            );
        }
        let mut wire = [0u8; 1500];
        c.bench_function(&format!("srtp none (copy) {name} packet"), |bench| {
            bench.iter(|| {
                wire[..packet.len()].copy_from_slice(black_box(&packet));
                black_box(wire[3])
            })
        });
    }
}

criterion_group! {
    name = stages;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    targets = g711, codecs, jitter, plc, resample, pacer, pipeline, aec, srtp
}
criterion_main!(stages);
