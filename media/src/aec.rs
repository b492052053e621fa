//! Echo cancellation, noise suppression and automatic gain control for the
//! caller's audio, one instance per call.
//!
//! The bot's voice reaches the caller, leaks back through the handset or a
//! hybrid, and returns in the caller's audio a few tens of milliseconds
//! later. Left in, the bot hears itself: its voice detection barges in on its
//! own speech. [`EchoCanceller`] is given both directions — what the pacer
//! sent ([`EchoCanceller::far_end`]) and what the caller sent back
//! ([`EchoCanceller::near_end`]) — and removes the first from the second.
//!
//! The work is done by WebRTC's classic audio processing module (Debian's
//! `libwebrtc-audio-processing` 0.3). Its Rust binding only runs it at
//! 48 kHz, so both directions are resampled up from the call's rate and the
//! near end back down again; the two up-paths are identical, so the echo
//! keeps the same delay relative to the reference that it had on the wire.
//! Echo delayed by up to about 120 ms is found unaided; beyond that the
//! canceller needs [`EchoCanceller::set_echo_delay_hint_ms`].
//!
//! Latency added to the caller's audio, measured (`latency_stays_under_20ms`):
//! about 4 ms with AGC alone (resampling plus WebRTC's band-splitting
//! filters), 10–11 ms with AEC or noise suppression (their overlapping
//! transforms), 17 ms with both.
//!
//! All buffers are allocated in [`EchoCanceller::new`]; processing a frame
//! does not touch the heap.

use std::ptr::NonNull;

use webrtc_audio_processing as apm;
use webrtc_audio_processing_sys as ffi;

use crate::frame::FRAME_MS;
use crate::resample::{ResampleError, Resampler};

/// The only rate the binding's C++ shim is compiled for.
const APM_RATE: u32 = ffi::SAMPLE_RATE_HZ as u32;
/// One 10 ms frame at [`APM_RATE`], the unit the processing module works in.
const APM_FRAME: usize = ffi::NUM_SAMPLES_PER_FRAME as usize;
/// Largest block [`Resampler::process_any`] hands over at once is one 20 ms
/// frame at 48 kHz; the slack is kept for safety.
const UP_BLOCK_MAX: usize = 2 * APM_FRAME + 64;

/// Which processing a call gets. All off is a bit-exact passthrough.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AudioSettings {
    /// Remove the bot's own voice from the caller's audio.
    pub echo_cancellation: bool,
    /// Suppress steady background noise (fans, road, line hiss).
    pub noise_suppression: bool,
    /// Bring quiet and loud callers to a similar level.
    pub gain_control: bool,
}

impl AudioSettings {
    /// Everything on.
    pub const ALL: AudioSettings = AudioSettings {
        echo_cancellation: true,
        noise_suppression: true,
        gain_control: true,
    };

    pub fn any(&self) -> bool {
        self.echo_cancellation || self.noise_suppression || self.gain_control
    }

    fn to_config(self, echo_delay_hint_ms: Option<u32>) -> apm::Config {
        apm::Config {
            echo_cancellation: self.echo_cancellation.then_some(apm::EchoCancellation {
                // Moderate rather than high: a caller talking over the bot
                // (barge-in) must survive, and high trades exactly that away.
                suppression_level: apm::EchoCancellationSuppressionLevel::Moderate,
                // Network echo paths are longer than a room's and their delay
                // is unknown: the extended filter covers ~128 ms of echo tail,
                // and delay-agnostic mode finds the bulk delay by itself (the
                // module ignores it once given a delay).
                enable_extended_filter: true,
                enable_delay_agnostic: true,
                stream_delay_ms: echo_delay_hint_ms.map(|ms| ms.min(i32::MAX as u32) as i32),
            }),
            noise_suppression: self.noise_suppression.then_some(apm::NoiseSuppression {
                // Speech recognisers cope with some noise better than with
                // the musical artefacts of aggressive suppression.
                suppression_level: apm::NoiseSuppressionLevel::Moderate,
            }),
            gain_control: self.gain_control.then_some(apm::GainControl {
                // There is no analog microphone gain to steer on a phone line.
                mode: apm::GainControlMode::AdaptiveDigital,
                // WebRTC's defaults: -3 dBFS peaks, up to 9 dB of boost.
                target_level_dbfs: 3,
                compression_gain_db: 9,
                enable_limiter: true,
            }),
            voice_detection: None,
            enable_transient_suppressor: false,
            // Removes DC and rumble that would otherwise eat AGC headroom and
            // confuse the echo canceller's level estimates.
            enable_high_pass_filter: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AecError {
    #[error("unsupported call rate {0} (supported: 8000, 16000, 48000)")]
    UnsupportedRate(u32),
    #[error("webrtc audio processing could not be created (error {0})")]
    Create(i32),
    #[error(transparent)]
    Resample(#[from] ResampleError),
}

/// What the processing module reports, plus our own counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AecStats {
    /// Whether the last 10 ms might contain echo (`None` with AEC off).
    pub echo_detected: Option<bool>,
    /// Echo return loss enhancement, in dB: how much the canceller removed
    /// from the echo. WebRTC's own estimate, first available after about a
    /// second of echo and updated about once a second.
    pub erle_db: Option<f64>,
    /// Echo return loss, in dB: how much quieter the echo arrived than the
    /// far end was sent. Available like `erle_db`.
    pub erl_db: Option<f64>,
    /// Median echo delay found by delay-agnostic mode, in ms, over the time
    /// since the previous [`EchoCanceller::stats`] (`None` when that was too
    /// short, or there was too little echo, for an estimate).
    pub delay_median_ms: Option<i32>,
    /// Noise suppressor's speech probability for the last 10 ms.
    pub speech_probability: Option<f64>,
    /// 10 ms frames of far-end reference processed.
    pub render_frames: u64,
    /// 10 ms frames of caller audio processed.
    pub capture_frames: u64,
    /// Frames the module refused; they pass through unprocessed.
    pub errors: u64,
    /// Samples dropped because the internal queues overflowed (never with
    /// 20 ms frames).
    pub dropped_samples: u64,
}

/// Per-call echo canceller, noise suppressor and AGC on 20 ms `i16` frames at
/// the call's rate (8 or 16 kHz).
pub struct EchoCanceller {
    settings: AudioSettings,
    call_rate: u32,
    engine: Option<Engine>,
}

impl std::fmt::Debug for EchoCanceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoCanceller")
            .field("settings", &self.settings)
            .field("call_rate", &self.call_rate)
            .finish()
    }
}

struct Engine {
    apm: Apm,
    far_up: Resampler,
    near_up: Resampler,
    near_down: Resampler,
    /// Far end at 48 kHz waiting to make up a 10 ms frame.
    far: Fifo<f32>,
    /// Caller audio at 48 kHz waiting to make up a 10 ms frame.
    near: Fifo<f32>,
    /// Processed caller audio back at the call rate, waiting to be handed out.
    out: Fifo<i16>,
    frame: Box<[f32; APM_FRAME]>,
    frame_i16: Box<[i16; APM_FRAME]>,
    /// Whether the first upsampled block has been lined up (see `align`).
    far_aligned: bool,
    near_aligned: bool,
    stats: AecStats,
}

impl EchoCanceller {
    /// `call_rate` is the rate of the PCM on the phone side: 8000 (G.711),
    /// 16000 (G.722) or 48000 (Opus, which needs no resampling here).
    pub fn new(settings: AudioSettings, call_rate: u32) -> Result<EchoCanceller, AecError> {
        if !matches!(call_rate, 8000 | 16_000 | 48_000) {
            return Err(AecError::UnsupportedRate(call_rate));
        }
        let engine = if settings.any() {
            Some(Engine::new(settings, call_rate)?)
        } else {
            None
        };
        Ok(EchoCanceller {
            settings,
            call_rate,
            engine,
        })
    }

    pub fn settings(&self) -> AudioSettings {
        self.settings
    }

    pub fn call_rate(&self) -> u32 {
        self.call_rate
    }

    /// Samples per 20 ms frame at the call rate.
    pub fn frame_samples(&self) -> usize {
        (self.call_rate * FRAME_MS / 1000) as usize
    }

    /// Feeds the far-end reference: exactly the audio the pacer sent to the
    /// caller, silence included, one 20 ms frame per frame sent.
    pub fn far_end(&mut self, frame: &[i16]) {
        if let Some(engine) = &mut self.engine {
            engine.far_end(frame);
        }
    }

    /// Processes the caller's decoded audio in place, before it goes to the
    /// bot. Call once per 20 ms frame received, after the `far_end` calls for
    /// the frames sent so far. Other lengths work but may add latency.
    pub fn near_end(&mut self, frame: &mut [i16]) {
        let frame_samples = self.frame_samples();
        if let Some(engine) = &mut self.engine {
            for chunk in frame.chunks_mut(frame_samples) {
                engine.near_end(chunk);
            }
        }
    }

    /// Tells the echo canceller that echo arrives at least `hint_ms` late —
    /// say the RTCP round-trip time plus both jitter buffers, less a margin.
    ///
    /// Without a hint, echo delayed by up to about 120 ms is found and
    /// cancelled by itself (`longer_echo_delays_are_found`); with one, echo
    /// from `hint_ms` to about `hint_ms + 100` ms is. A hint longer than the
    /// real delay stops cancellation altogether, so err short. `None` goes
    /// back to searching. The canceller re-adapts after a change.
    pub fn set_echo_delay_hint_ms(&mut self, hint_ms: Option<u32>) {
        if let Some(engine) = &mut self.engine {
            engine.apm.set_config(self.settings.to_config(hint_ms));
        }
    }

    /// Current statistics. Asking resets WebRTC's delay-metric aggregation,
    /// so poll no more than about once a second.
    pub fn stats(&mut self) -> AecStats {
        let Some(engine) = &mut self.engine else {
            return AecStats::default();
        };
        let module = engine.apm.stats();
        // WebRTC reports "no estimate yet" as -100 dB and a -1 ms delay.
        let estimate = |db: Option<f64>| db.filter(|&db| db > -100.0);
        AecStats {
            echo_detected: module.has_echo,
            erle_db: estimate(module.echo_return_loss_enhancement),
            erl_db: estimate(module.echo_return_loss),
            delay_median_ms: module.delay_median_ms.filter(|&ms| ms >= 0),
            speech_probability: module.speech_probability,
            ..engine.stats
        }
    }
}

impl Engine {
    fn new(settings: AudioSettings, call_rate: u32) -> Result<Engine, AecError> {
        let apm = Apm::new(settings.to_config(None))?;
        let near_down = Resampler::new(APM_RATE, call_rate)?;
        // A 20 ms frame needs at most one frame's worth; the rest is slack
        // for callers feeding other sizes.
        let out_cap = 4 * (call_rate * FRAME_MS / 1000) as usize;
        Ok(Engine {
            apm,
            far_up: Resampler::new(call_rate, APM_RATE)?,
            near_up: Resampler::new(call_rate, APM_RATE)?,
            near_down,
            far: Fifo::new(APM_FRAME + UP_BLOCK_MAX),
            near: Fifo::new(APM_FRAME + UP_BLOCK_MAX),
            out: Fifo::new(out_cap),
            frame: Box::new([0.0; APM_FRAME]),
            frame_i16: Box::new([0; APM_FRAME]),
            far_aligned: false,
            near_aligned: false,
            stats: AecStats::default(),
        })
    }

    fn far_end(&mut self, input: &[i16]) {
        let Engine {
            apm,
            far_up,
            far,
            frame,
            far_aligned,
            stats,
            ..
        } = self;
        far_up.process_any(input, |block| {
            align(far, far_aligned, block.len());
            for piece in block.chunks(APM_FRAME) {
                stats.dropped_samples += far.push_i16(piece) as u64;
                while far.pop_into(&mut frame[..]) {
                    stats.render_frames += 1;
                    if !apm.render(frame) {
                        stats.errors += 1;
                    }
                }
            }
        });
    }

    fn near_end(&mut self, chunk: &mut [i16]) {
        let Engine {
            apm,
            near_up,
            near_down,
            near,
            out,
            frame,
            frame_i16,
            near_aligned,
            stats,
            ..
        } = self;
        near_up.process_any(chunk, |block| {
            align(near, near_aligned, block.len());
            for piece in block.chunks(APM_FRAME) {
                // Cannot overflow: drained below every 480 samples.
                near.push_i16(piece);
                while near.pop_into(&mut frame[..]) {
                    stats.capture_frames += 1;
                    // Passing the caller through unprocessed beats whatever
                    // state a failed call left the buffer in.
                    let original = **frame;
                    if !apm.capture(frame) {
                        stats.errors += 1;
                        **frame = original;
                    }
                    for (d, &s) in frame_i16.iter_mut().zip(frame.iter()) {
                        *d = (s * 32768.0)
                            .round()
                            .clamp(i16::MIN as f32, i16::MAX as f32)
                            as i16;
                    }
                    near_down.process_any(&frame_i16[..], |down| {
                        stats.dropped_samples += out.push(down) as u64;
                    });
                }
            }
        });
        // A frame can come up short only while the module's 10 ms framing
        // holds part of it: pad the front with silence rather than stall.
        let have = out.len().min(chunk.len());
        let missing = chunk.len() - have;
        chunk[..missing].fill(0);
        out.pop_exact(&mut chunk[missing..]);
    }
}

/// A first block that is not a whole number of 10 ms frames (the caller's
/// first frame short, say) would leave its remainder in the queue for the
/// whole call as extra latency. Padding the front once instead lines every
/// later 20 ms frame up with exactly two module frames. Both directions get
/// the same padding, so the echo's delay is unchanged.
fn align(fifo: &mut Fifo<f32>, aligned: &mut bool, first_block: usize) {
    if !*aligned {
        *aligned = true;
        fifo.push_zeros((APM_FRAME - first_block % APM_FRAME) % APM_FRAME);
    }
}

/// A fixed-capacity queue of samples, for regrouping 20 ms frames into the
/// module's 10 ms ones. Contiguous, because the module wants a plain slice.
struct Fifo<T> {
    buf: Vec<T>,
    len: usize,
}

impl<T: Copy + Default> Fifo<T> {
    fn new(capacity: usize) -> Fifo<T> {
        Fifo {
            buf: vec![T::default(); capacity],
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Appends what fits; returns how many samples did not.
    fn push(&mut self, samples: &[T]) -> usize {
        let take = samples.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + take].copy_from_slice(&samples[..take]);
        self.len += take;
        samples.len() - take
    }

    fn push_zeros(&mut self, n: usize) {
        let take = n.min(self.buf.len() - self.len);
        self.buf[self.len..self.len + take].fill(T::default());
        self.len += take;
    }

    /// Fills `dst` from the front of the queue, or returns false and leaves
    /// both alone if there is not enough.
    fn pop_into(&mut self, dst: &mut [T]) -> bool {
        if self.len < dst.len() {
            return false;
        }
        self.pop_exact(dst);
        true
    }

    fn pop_exact(&mut self, dst: &mut [T]) {
        let n = dst.len();
        dst.copy_from_slice(&self.buf[..n]);
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }
}

impl Fifo<f32> {
    fn push_i16(&mut self, samples: &[i16]) -> usize {
        let take = samples.len().min(self.buf.len() - self.len);
        for (d, &s) in self.buf[self.len..self.len + take].iter_mut().zip(samples) {
            *d = s as f32 / 32768.0;
        }
        self.len += take;
        samples.len() - take
    }
}

/// Owns one processing module through the C shim. The binding's safe
/// `Processor` collects a `Vec` of channel pointers on every call; going to
/// the shim directly keeps the per-frame path off the heap.
struct Apm {
    ptr: NonNull<ffi::AudioProcessing>,
}

// SAFETY: the module has no thread affinity, and `Apm` is only used through
// `&mut self`, so it is never touched from two threads at once.
unsafe impl Send for Apm {}

impl Apm {
    fn new(config: apm::Config) -> Result<Apm, AecError> {
        let init = ffi::InitializationConfig {
            num_capture_channels: 1,
            num_render_channels: 1,
            enable_experimental_agc: false,
            enable_intelligibility_enhancer: false,
        };
        let mut code = 0;
        // SAFETY: both pointers are to live locals for the duration of the call.
        let ptr = unsafe { ffi::audio_processing_create(&init, &mut code) };
        let ptr = NonNull::new(ptr).ok_or(AecError::Create(code))?;
        let mut apm = Apm { ptr };
        apm.set_config(config);
        Ok(apm)
    }

    fn set_config(&mut self, config: apm::Config) {
        let config: ffi::Config = config.into();
        // SAFETY: `self.ptr` is live until drop; the shim copies what it
        // needs from `config` before returning.
        unsafe { ffi::set_config(self.ptr.as_ptr(), &config) };
    }

    /// Processes 10 ms of caller audio in place; false on error.
    fn capture(&mut self, frame: &mut [f32; APM_FRAME]) -> bool {
        let mut channels = [frame.as_mut_ptr()];
        // SAFETY: one channel of APM_FRAME samples, as the module was set up
        // for; `self.ptr` is live until drop.
        unsafe {
            let code = ffi::process_capture_frame(self.ptr.as_ptr(), channels.as_mut_ptr());
            ffi::is_success(code)
        }
    }

    /// Analyses 10 ms of far-end reference (it is not modified with the
    /// settings we use); false on error.
    fn render(&mut self, frame: &mut [f32; APM_FRAME]) -> bool {
        let mut channels = [frame.as_mut_ptr()];
        // SAFETY: as in `capture`.
        unsafe {
            let code = ffi::process_render_frame(self.ptr.as_ptr(), channels.as_mut_ptr());
            ffi::is_success(code)
        }
    }

    fn stats(&mut self) -> apm::Stats {
        // SAFETY: `self.ptr` is live until drop.
        unsafe { ffi::get_stats(self.ptr.as_ptr()) }.into()
    }
}

impl Drop for Apm {
    fn drop(&mut self) {
        // SAFETY: created by `audio_processing_create`, freed exactly once here.
        unsafe { ffi::audio_processing_delete(self.ptr.as_ptr()) }
    }
}

#[cfg(test)]
#[path = "aec_tests.rs"]
mod tests;
