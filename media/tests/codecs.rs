//! Every codec round trip measured on a speech-like signal, and Opus's
//! in-band FEC measured against its PLC. Figures print with `--nocapture`.

use switchboard_media::codec::{AudioDecoder, AudioEncoder, Codec, OpusConfig, OpusEncoder};

const TAU: f64 = std::f64::consts::TAU;

/// A voiced-speech stand-in: a gliding 100–240 Hz fundamental with harmonics
/// up to 3.4 kHz shaped by three formants, amplitude-modulated at a syllable
/// rate. Unlike a pure tone it exercises every band a codec treats
/// differently, and unlike noise a vocoder like SILK can model it.
fn speech(rate: u32, seconds: f64) -> Vec<i16> {
    let len = (rate as f64 * seconds) as usize;
    let formants = [(500.0, 120.0), (1500.0, 200.0), (2500.0, 300.0)];
    let mut phase = 0.0f64;
    let mut out = Vec::with_capacity(len);
    for n in 0..len {
        let t = n as f64 / rate as f64;
        let f0 = 170.0 + 70.0 * (TAU * 0.7 * t).sin();
        phase += TAU * f0 / rate as f64;
        let mut sample = 0.0;
        let mut k = 1;
        while k as f64 * f0 < 3400.0 {
            let f = k as f64 * f0;
            let envelope: f64 = formants
                .iter()
                .map(|(centre, width)| (-((f - centre) / width).powi(2)).exp())
                .sum::<f64>()
                + 0.05;
            sample += envelope * (k as f64 * phase).sin() / (k as f64).sqrt();
            k += 1;
        }
        let syllables = 0.6 + 0.4 * (TAU * 3.0 * t).sin();
        out.push(sample * syllables);
    }
    let peak = out.iter().fold(0.0f64, |m, s| m.max(s.abs()));
    out.iter().map(|s| (s / peak * 14000.0) as i16).collect()
}

/// Encodes and decodes `pcm` frame by frame; the output has the same length.
fn round_trip(codec: Codec, pcm: &[i16]) -> Vec<i16> {
    let mut encoder = codec.encoder().unwrap();
    let mut decoder = codec.decoder().unwrap();
    let frame = codec.samples_per_frame();
    let mut payload = vec![0u8; codec.max_payload_bytes()];
    let mut out = vec![0i16; pcm.len()];
    for (input, output) in pcm.chunks_exact(frame).zip(out.chunks_exact_mut(frame)) {
        let bytes = encoder.encode(input, &mut payload).unwrap();
        let samples = decoder.decode(&payload[..bytes], output).unwrap();
        assert_eq!(samples, frame, "{codec}");
    }
    out
}

/// Normalised cross-correlation of `reference[i]` with `decoded[i + lag]`
/// over `range` of the reference.
fn correlation(
    reference: &[i16],
    decoded: &[i16],
    lag: usize,
    range: std::ops::Range<usize>,
) -> f64 {
    let (mut xy, mut xx, mut yy) = (0.0, 0.0, 0.0);
    for i in range {
        let (x, y) = (reference[i] as f64, decoded[i + lag] as f64);
        xy += x * y;
        xx += x * x;
        yy += y * y;
    }
    if xx == 0.0 || yy == 0.0 {
        return 0.0;
    }
    xy / (xx * yy).sqrt()
}

fn snr_db(reference: &[i16], decoded: &[i16], lag: usize, range: std::ops::Range<usize>) -> f64 {
    let (mut signal, mut noise) = (0.0, 0.0);
    for i in range {
        let (x, y) = (reference[i] as f64, decoded[i + lag] as f64);
        signal += x * x;
        noise += (x - y) * (x - y);
    }
    10.0 * (signal / noise.max(1e-9)).log10()
}

/// The codec delay: the lag (up to `max_lag`) where decoded best matches the
/// reference, measured after the first 100 ms so start-up transients and
/// the encoder's ramp-in do not count.
fn align(reference: &[i16], decoded: &[i16], rate: u32, max_lag: usize) -> (usize, f64) {
    let skip = rate as usize / 10;
    let range = skip..reference.len() - max_lag;
    (0..=max_lag)
        .map(|lag| (lag, correlation(reference, decoded, lag, range.clone())))
        .fold((0, f64::MIN), |best, c| if c.1 > best.1 { c } else { best })
}

struct Quality {
    delay_samples: usize,
    correlation: f64,
    snr_db: f64,
}

fn measure(codec: Codec) -> Quality {
    let rate = codec.sample_rate();
    let reference = speech(rate, 2.0);
    let decoded = round_trip(codec, &reference);
    let (lag, corr) = align(&reference, &decoded, rate, rate as usize / 50);
    let skip = rate as usize / 10;
    let snr = snr_db(
        &reference,
        &decoded,
        lag,
        skip..reference.len() - rate as usize / 50,
    );
    println!(
        "{codec:>5}: delay {lag} samples ({:.2} ms), correlation {corr:.4}, SNR {snr:.1} dB",
        lag as f64 * 1000.0 / rate as f64
    );
    Quality {
        delay_samples: lag,
        correlation: corr,
        snr_db: snr,
    }
}

#[test]
fn g711_round_trip_keeps_30_db_snr() {
    for codec in [Codec::Pcmu, Codec::Pcma] {
        let q = measure(codec);
        assert_eq!(q.delay_samples, 0, "{codec} is sample by sample");
        assert!(q.snr_db >= 30.0, "{codec} SNR {:.1} dB", q.snr_db);
        assert!(
            q.correlation >= 0.999,
            "{codec} correlation {:.4}",
            q.correlation
        );
    }
}

#[test]
fn g722_round_trip_correlates_after_its_delay() {
    let q = measure(Codec::G722);
    // The QMF pair of G.722 delays by 22 samples (1.4 ms) at 16 kHz.
    assert!(
        q.delay_samples > 0 && q.delay_samples < 48,
        "delay {}",
        q.delay_samples
    );
    assert!(q.correlation >= 0.9, "correlation {:.4}", q.correlation);
    assert!(q.snr_db >= 10.0, "SNR {:.1} dB", q.snr_db);
}

#[test]
fn opus_round_trip_correlates_after_its_delay() {
    let q = measure(Codec::Opus);
    let lookahead = OpusEncoder::new(OpusConfig::default())
        .unwrap()
        .lookahead()
        .unwrap();
    println!(" opus: encoder look-ahead {lookahead} samples");
    assert!(
        q.delay_samples.abs_diff(lookahead as usize) <= 24,
        "delay {} vs look-ahead {lookahead}",
        q.delay_samples
    );
    assert!(q.correlation >= 0.9, "correlation {:.4}", q.correlation);
}

#[test]
fn opus_payload_is_small_at_32_kbits() {
    let pcm = speech(48000, 1.0);
    let mut encoder = Codec::Opus.encoder().unwrap();
    let mut payload = [0u8; 1275];
    let frames = pcm.len() / 960;
    let total: usize = pcm
        .chunks_exact(960)
        .map(|frame| encoder.encode(frame, &mut payload).unwrap())
        .sum();
    let kbits = total as f64 * 8.0 / 1000.0;
    println!(
        " opus: {frames} frames, {} bytes per frame on average, {kbits:.1} kbit/s",
        total / frames
    );
    // 32 kbit/s target plus FEC, within VBR's swing.
    assert!((16.0..=48.0).contains(&kbits), "{kbits:.1} kbit/s");
}

/// Three ways to fill a dropped frame, scored by correlation with the
/// original audio there: FEC from the next packet, PLC, silence. Returns the
/// mean FEC and PLC scores over several loss positions (one lucky frame
/// proves little).
fn lost_frame_scores(config: OpusConfig) -> (f64, f64) {
    let pcm = speech(48000, 1.2);
    let frame = 960;
    let mut encoder = OpusEncoder::new(config).unwrap();
    let packets: Vec<Vec<u8>> = pcm
        .chunks_exact(frame)
        .map(|input| {
            let mut payload = [0u8; 1275];
            let len = encoder.encode(input, &mut payload).unwrap();
            payload[..len].to_vec()
        })
        .collect();
    let (lag, _) = align(&pcm, &round_trip(Codec::Opus, &pcm), 48000, 960);

    let (mut fec_sum, mut plc_sum, mut count) = (0.0, 0.0, 0);
    for lost in [10, 17, 25, 33, 41, 50] {
        let decode_with = |strategy: &str| -> Vec<i16> {
            let mut decoder = Codec::Opus.decoder().unwrap();
            let mut out = vec![0i16; packets.len() * frame];
            for (k, packet) in packets.iter().enumerate() {
                let slot = &mut out[k * frame..(k + 1) * frame];
                let produced = if k != lost || strategy == "none" {
                    decoder.decode(packet, slot).unwrap()
                } else {
                    match strategy {
                        "fec" => decoder.decode_fec(&packets[k + 1], slot).unwrap(),
                        "plc" => decoder.conceal(slot).unwrap(),
                        _ => frame, // silence: leave the zeros
                    }
                };
                assert_eq!(produced, frame);
            }
            out
        };
        // The decoded frame `lost` holds the original shifted by the codec delay.
        let window = lost * frame - lag..(lost + 1) * frame - lag;
        let fec = correlation(&pcm, &decode_with("fec"), lag, window.clone());
        let plc = correlation(&pcm, &decode_with("plc"), lag, window.clone());
        let silence = correlation(&pcm, &decode_with("silence"), lag, window.clone());
        let clean = correlation(&pcm, &decode_with("none"), lag, window.clone());
        println!(
            " opus (FEC {}): frame {lost} lost: FEC {fec:.3}, PLC {plc:.3}, silence {silence:.3} (not lost {clean:.3})",
            if config.inband_fec { "on" } else { "off" }
        );
        fec_sum += fec;
        plc_sum += plc;
        count += 1;
    }
    (fec_sum / count as f64, plc_sum / count as f64)
}

#[test]
fn opus_fec_recovers_a_dropped_packet_better_than_plc() {
    let (fec, plc) = lost_frame_scores(OpusConfig::default());
    println!(" opus: mean correlation of a lost frame: FEC {fec:.3}, PLC {plc:.3}, silence 0");
    assert!(fec >= 0.8, "FEC {fec:.3}");
    assert!(fec - plc >= 0.2, "FEC {fec:.3} vs PLC {plc:.3}");

    // Control: without FEC in the stream, decode_fec can only do what PLC
    // does, so the gain above really comes from the redundancy.
    let without = OpusConfig {
        inband_fec: false,
        ..OpusConfig::default()
    };
    let (fec_off, plc_off) = lost_frame_scores(without);
    println!(" opus: encoder without FEC: decode_fec {fec_off:.3}, PLC {plc_off:.3}");
    assert!(
        fec_off < fec - 0.2,
        "decode_fec without FEC data scored {fec_off:.3}"
    );
}

#[test]
fn concealment_is_codec_plc_or_none() {
    let mut out = [0i16; 960];
    for codec in [Codec::Pcmu, Codec::Pcma, Codec::G722] {
        assert_eq!(codec.decoder().unwrap().conceal(&mut out), None, "{codec}");
        assert_eq!(
            codec.decoder().unwrap().decode_fec(&[1, 2, 3], &mut out),
            None
        );
    }
    // Before any packet Opus still conceals one 20 ms frame.
    assert_eq!(Codec::Opus.decoder().unwrap().conceal(&mut out), Some(960));
}
