use super::*;

const RATE: u32 = 8000;
const N: usize = 160;
/// 5 ms at 8 kHz.
const XF: usize = 40;

fn tone(freq: f64, amp: f64, offset: usize) -> [i16; N] {
    let mut f = [0i16; N];
    for (i, s) in f.iter_mut().enumerate() {
        let t = (offset + i) as f64 / RATE as f64;
        *s = (amp * (std::f64::consts::TAU * freq * t).sin()).round() as i16;
    }
    f
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

fn db(a: f64, b: f64) -> f64 {
    20.0 * (a / b).log10()
}

#[test]
fn good_frames_pass_through_untouched() {
    let mut plc = Concealer::new(RATE);
    for k in 0..5 {
        let original = tone(440.0, 8000.0, k * N);
        let mut frame = original;
        plc.good_frame(&mut frame);
        assert_eq!(frame, original);
    }
    assert_eq!((plc.lost_run(), plc.concealed()), (0, 0));
}

#[test]
fn nothing_received_conceals_as_silence() {
    let mut plc = Concealer::new(RATE);
    let mut out = [7i16; N];
    plc.conceal(&mut out);
    assert!(out.iter().all(|&s| s == 0));
}

#[test]
fn constant_frame_repeats_with_a_linear_ramp_to_half() {
    let mut plc = Concealer::new(RATE);
    let mut good = [1000i16; N];
    plc.good_frame(&mut good);
    let mut out = [0i16; N];
    plc.conceal(&mut out);
    // Gain 1 -> 0.5 across the frame: 1000 at the start, 750 halfway,
    // just over 500 at the end.
    assert_eq!(out[0], 1000);
    assert_eq!(out[80], 750);
    assert_eq!(out[N - 1], 503);
    assert!(out.windows(2).all(|w| w[1] <= w[0]));
    // Second frame carries on from 500 to 250.
    plc.conceal(&mut out);
    assert_eq!(out[0], 500);
    assert_eq!(out[80], 375);
}

#[test]
fn each_lost_frame_is_6_db_down_and_the_sixth_is_silent() {
    let mut plc = Concealer::new(RATE);
    let mut good = tone(440.0, 10000.0, 0);
    plc.good_frame(&mut good);
    let mut levels = Vec::new();
    let mut out = [0i16; N];
    for _ in 0..7 {
        plc.conceal(&mut out);
        levels.push(rms(&out));
    }
    // Frames 1 to 4 ramp over the same shape at half the gain each time.
    for k in 1..4 {
        let step = db(levels[k], levels[k - 1]);
        assert!((step + 6.02).abs() < 0.3, "frame {}: {step:.2} dB", k + 1);
    }
    // The fifth ramps to nothing; from the sixth on, silence.
    assert!(levels[4] < levels[3] && levels[4] > 0.0);
    assert_eq!(&levels[5..], &[0.0, 0.0]);
    assert_eq!(plc.lost_run(), 7);
    assert_eq!(plc.concealed(), 7);
}

/// Largest step between neighbouring samples over a stretch of output.
fn max_step(x: &[i16]) -> i32 {
    x.windows(2)
        .map(|w| (w[1] as i32 - w[0] as i32).abs())
        .max()
        .unwrap()
}

#[test]
fn seams_do_not_click() {
    // 440 Hz does not fit a whole number of periods in 20 ms, so naive
    // repetition jumps at every frame start.
    let mut plc = Concealer::new(RATE);
    let amp = 10000.0;
    let mut good = tone(440.0, amp, 0);
    plc.good_frame(&mut good);
    let smooth = max_step(&good);
    let naive_jump = (good[0] as i32 - good[N - 1] as i32).abs();
    assert!(naive_jump > 2 * smooth, "the test tone must have a seam");

    let mut stream: Vec<i16> = good.to_vec();
    for _ in 0..2 {
        let mut out = [0i16; N];
        plc.conceal(&mut out);
        stream.extend_from_slice(&out);
    }
    let mut next = tone(440.0, amp, 3 * N);
    plc.good_frame(&mut next);
    stream.extend_from_slice(&next);
    assert_eq!(plc.lost_run(), 0);
    // Every seam (good->lost, each repetition of the cycle, lost->good)
    // stays as smooth as the tone itself.
    let limit = smooth + smooth / 10;
    assert!(
        max_step(&stream) <= limit,
        "{} > {limit}",
        max_step(&stream)
    );
}

#[test]
fn recovery_crossfades_from_the_concealment_into_the_good_frame() {
    let mut plc = Concealer::new(RATE);
    let mut good = [1000i16; N];
    plc.good_frame(&mut good);
    let mut out = [0i16; N];
    plc.conceal(&mut out);
    // The concealment would have gone on at 500; the good frame is 2000.
    let mut next = [2000i16; N];
    plc.good_frame(&mut next);
    assert!((500..560).contains(&next[0]), "{}", next[0]);
    // Weight of the good frame at sample 19: 20/41.
    assert_eq!(next[XF / 2 - 1], 1232);
    assert!(next[..XF].windows(2).all(|w| w[1] >= w[0]));
    assert!(next[XF..].iter().all(|&s| s == 2000));
}

#[test]
fn recovery_after_a_long_loss_fades_in_from_silence() {
    let mut plc = Concealer::new(RATE);
    let mut good = [8000i16; N];
    plc.good_frame(&mut good);
    let mut out = [0i16; N];
    for _ in 0..8 {
        plc.conceal(&mut out);
    }
    assert!(out.iter().all(|&s| s == 0));
    let mut next = [8000i16; N];
    plc.good_frame(&mut next);
    // 1/41 of the way in at the first sample, all the way at the 40th.
    assert_eq!(next[0], 195);
    assert_eq!(next[XF - 1], 7805);
    assert!(next[XF..].iter().all(|&s| s == 8000));
}

#[test]
fn beats_silence_on_a_steady_tone_with_single_losses() {
    // A 400 Hz tone fits 20 ms exactly, the best case for repetition:
    // single lost frames come back nearly whole, where zero-fill loses them.
    let mut plc = Concealer::new(RATE);
    let mut err_plc = 0.0;
    let mut err_zero = 0.0;
    for k in 0..50 {
        let truth = tone(400.0, 8000.0, k * N);
        let mut frame = truth;
        if k % 10 == 5 {
            plc.conceal(&mut frame);
            err_zero += truth.iter().map(|&s| (s as f64).powi(2)).sum::<f64>();
        } else {
            plc.good_frame(&mut frame);
        }
        err_plc += truth
            .iter()
            .zip(&frame)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum::<f64>();
    }
    // Fading linearly to half over the frame leaves an error of
    // 0.5/sqrt(3) of the signal (-10.8 dB) where silence leaves all of it;
    // the crossfade back from the faded copy adds a little (-9.9 dB here).
    let gain = db(err_plc.sqrt(), err_zero.sqrt());
    assert!(gain < -9.0, "{gain:.1} dB");
}

#[test]
fn frame_length_is_taken_from_each_call() {
    // A 16 kHz stream: 320-sample frames, an 80-sample crossfade.
    let mut plc = Concealer::new(16_000);
    let mut good = [1000i16; 320];
    plc.good_frame(&mut good);
    let mut out = [0i16; 320];
    plc.conceal(&mut out);
    assert_eq!(out[160], 750);
    let mut next = [1000i16; 320];
    plc.good_frame(&mut next);
    assert!(next[80..].iter().all(|&s| s == 1000));
    assert!(next[79] < 1000);
}

#[test]
fn reset_forgets_the_last_frame() {
    let mut plc = Concealer::new(RATE);
    let mut good = [1000i16; N];
    plc.good_frame(&mut good);
    plc.reset();
    let mut out = [1i16; N];
    plc.conceal(&mut out);
    assert!(out.iter().all(|&s| s == 0));
}

#[test]
fn repeats_one_pitch_period_of_a_voice_like_signal() {
    // 130 Hz with two harmonics: a period of 61.5 samples, which 160 is
    // no multiple of.
    let mut frame = [0i16; N];
    for (i, s) in frame.iter_mut().enumerate() {
        let t = i as f64 / RATE as f64;
        let w = std::f64::consts::TAU * 130.0 * t;
        *s = (6000.0 * w.sin() + 3000.0 * (2.0 * w).sin() + 1500.0 * (3.0 * w).sin()) as i16;
    }
    let mut plc = Concealer::new(RATE);
    plc.good_frame(&mut frame);
    let mut out = [0i16; N];
    plc.conceal(&mut out);
    assert!((61..=62).contains(&plc.lag), "lag {}", plc.lag);
    // White noise has no period: the longest cycle is used.
    let mut noise = [0i16; N];
    let mut x = 1u32;
    for s in noise.iter_mut() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        *s = ((x >> 16) as i16) / 4;
    }
    plc.good_frame(&mut noise);
    plc.conceal(&mut out);
    assert_eq!(plc.lag, N - XF);
}
