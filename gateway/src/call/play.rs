//! `<Play>` and `<Pause>` for TwiML-driven calls: a clip from a URL
//! (WAV, 16-bit PCM at any rate, or raw μ-law at 8 kHz), decoded once and
//! kept in a small process-wide cache, resampled to the call's codec rate
//! and fed to the caller's pacer one 20 ms frame per tick; and silence for
//! a while. The caller is answered first if it was not.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_media::Resampler;

use super::session::{Call, JobOutput};

/// Largest clip fetched (about 8 minutes of 8 kHz 16-bit audio).
const MAX_CLIP_BYTES: usize = 8 << 20;
/// Clips kept decoded; the oldest is dropped beyond this.
const CACHE_ENTRIES: usize = 32;
/// `loop="0"` ("until the call ends") plays this many times at most.
const MAX_LOOPS: u32 = 1000;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Decoded audio, mono.
pub struct Clip {
    pub samples: Vec<i16>,
    pub rate: u32,
}

/// Clips by URL, and the URLs oldest first.
#[derive(Default)]
struct Entries {
    clips: HashMap<String, Arc<Clip>>,
    order: VecDeque<String>,
}

/// Recently played clips by URL.
#[derive(Default)]
pub struct ClipCache {
    entries: Mutex<Entries>,
}

impl ClipCache {
    fn get(&self, url: &str) -> Option<Arc<Clip>> {
        self.entries.lock().unwrap().clips.get(url).cloned()
    }

    fn insert(&self, url: &str, clip: Arc<Clip>) {
        let mut entries = self.entries.lock().unwrap();
        let Entries { clips, order } = &mut *entries;
        if clips.insert(url.to_string(), clip).is_none() {
            order.push_back(url.to_string());
        }
        while order.len() > CACHE_ENTRIES {
            if let Some(oldest) = order.pop_front() {
                clips.remove(&oldest);
            }
        }
    }
}

/// A clip being played to the caller, at the codec's rate.
pub(super) struct Playing {
    samples: Vec<i16>,
    position: usize,
    loops_left: u32,
}

impl Call {
    /// Answers the caller if it is still ringing; false if the call cannot
    /// have media (it is ending).
    pub(super) fn ensure_answered(&mut self) -> bool {
        if self.is_ending() {
            return false;
        }
        let rate = self.party_rate();
        if let Err(error) = self.answer_caller(rate) {
            tracing::error!(%error, "media pipeline could not start");
            self.end(format!("media pipeline failed ({error})"));
            return false;
        }
        true
    }

    pub(super) fn start_pause(&mut self, seconds: u32, step: u64) {
        if !self.ensure_answered() {
            return;
        }
        self.spawn_job(Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(seconds))).await;
            JobOutput::VerbDone { step }
        }));
    }

    pub(super) fn start_play(&mut self, url: String, loop_count: u32, step: u64) {
        if !self.ensure_answered() {
            return;
        }
        let loops = if loop_count == 0 {
            MAX_LOOPS
        } else {
            loop_count
        };
        if let Some(clip) = self.shared.clips.get(&url) {
            return self.play_clip(&clip, loops);
        }
        let http = self.shared.http.clone();
        self.spawn_job(Box::pin(async move {
            let result = load(&http, &url).await.map(Arc::new);
            JobOutput::Clip {
                step,
                url,
                loops,
                result,
            }
        }));
    }

    pub(super) fn on_clip(
        &mut self,
        step: u64,
        url: String,
        loops: u32,
        result: Result<Arc<Clip>, String>,
    ) {
        match result {
            Ok(clip) => {
                self.shared.clips.insert(&url, clip.clone());
                if self.is_current_step(step) {
                    self.play_clip(&clip, loops);
                }
            }
            Err(reason) if self.is_current_step(step) => {
                tracing::warn!(%url, %reason, "cannot play: skipping to the next verb");
                self.next_verb();
            }
            Err(_) => {}
        }
    }

    fn play_clip(&mut self, clip: &Clip, loops: u32) {
        let Some(rate) = self
            .caller_media
            .pipeline
            .as_ref()
            .map(|p| p.codec().sample_rate())
        else {
            // No media yet (a delayed offer): nothing to play into.
            return self.next_verb();
        };
        let samples = match Resampler::new(clip.rate, rate) {
            Ok(mut resampler) => {
                let mut out =
                    Vec::with_capacity(clip.samples.len() * rate as usize / clip.rate as usize + 1);
                resampler.process_any(&clip.samples, |chunk| out.extend_from_slice(chunk));
                out
            }
            Err(error) => {
                tracing::warn!(%error, "cannot play this clip's rate: skipping it");
                return self.next_verb();
            }
        };
        tracing::info!(
            seconds = samples.len() as f32 / rate as f32,
            loops,
            "playing"
        );
        self.playing = Some(Playing {
            samples,
            position: 0,
            loops_left: loops,
        });
    }

    /// One frame of the clip whenever the pacer has played what it had.
    pub(super) fn tick_play(&mut self) {
        let Some(pipeline) = self.caller_media.pipeline.as_mut() else {
            return;
        };
        let Some(playing) = self.playing.as_mut() else {
            return;
        };
        if !pipeline.playout_idle() {
            return;
        }
        if playing.position >= playing.samples.len() {
            playing.loops_left = playing.loops_left.saturating_sub(1);
            playing.position = 0;
            if playing.loops_left == 0 || playing.samples.is_empty() {
                self.playing = None;
                return self.next_verb();
            }
        }
        let n = pipeline.frame_samples();
        let end = (playing.position + n).min(playing.samples.len());
        let mut frame = [0i16; switchboard_media::MAX_FRAME_SAMPLES];
        frame[..end - playing.position].copy_from_slice(&playing.samples[playing.position..end]);
        pipeline.push_codec_audio(&frame[..n]);
        playing.position = end;
    }
}

/// Fetches and decodes a clip.
async fn load(http: &reqwest::Client, url: &str) -> Result<Clip, String> {
    let mut response = http
        .get(url)
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_CLIP_BYTES {
            return Err(format!("larger than {MAX_CLIP_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    decode(&body, &content_type, url)
}

/// WAV (16-bit PCM, first channel) by its RIFF header; raw μ-law by its
/// content type (`audio/basic`) or extension.
pub fn decode(body: &[u8], content_type: &str, url: &str) -> Result<Clip, String> {
    if body.starts_with(b"RIFF") {
        let reader =
            hound::WavReader::new(std::io::Cursor::new(body)).map_err(|e| format!("WAV: {e}"))?;
        let spec = reader.spec();
        if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
            return Err("WAV must be 16-bit PCM".into());
        }
        let channels = usize::from(spec.channels.max(1));
        let samples: Vec<i16> = reader
            .into_samples::<i16>()
            .step_by(channels)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("WAV: {e}"))?;
        return Ok(Clip {
            samples,
            rate: spec.sample_rate,
        });
    }
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    let ulaw = content_type.starts_with("audio/basic")
        || content_type.starts_with("audio/x-mulaw")
        || [".ulaw", ".mulaw", ".ul", ".au"]
            .iter()
            .any(|ext| path.ends_with(ext));
    if ulaw {
        return Ok(Clip {
            samples: body
                .iter()
                .map(|b| switchboard_media::g711::ulaw_decode(*b))
                .collect(),
            rate: 8000,
        });
    }
    Err("not a WAV or μ-law clip".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_and_ulaw_decode() {
        let mut wav = Vec::new();
        {
            let spec = hound::WavSpec {
                channels: 2,
                sample_rate: 16_000,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut writer = hound::WavWriter::new(std::io::Cursor::new(&mut wav), spec).unwrap();
            for n in 0..100i16 {
                writer.write_sample(n).unwrap();
                writer.write_sample(-n).unwrap();
            }
            writer.finalize().unwrap();
        }
        let clip = decode(&wav, "audio/wav", "http://x/a.wav").unwrap();
        assert_eq!((clip.rate, clip.samples.len()), (16_000, 100));
        assert_eq!(clip.samples[5], 5, "the first channel");
        let ulaw = decode(&[0xff, 0x00], "audio/basic", "http://x/a").unwrap();
        assert_eq!((ulaw.rate, ulaw.samples.len()), (8000, 2));
        assert!(decode(b"hello", "text/plain", "http://x/a.txt").is_err());
    }
}
