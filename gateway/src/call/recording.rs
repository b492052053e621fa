//! Call recording: a stereo 16-bit WAV per call, caller on the left, bot
//! (what the caller heard) on the right, one 20 ms frame of each per tick,
//! so the channels stay aligned whatever the network did.
//!
//! The media loop never waits for the disk: frames go over a bounded
//! channel to a writer task and are dropped (and counted) if it falls
//! behind. The WAV header's sizes are patched when the call ends.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use tokio::fs::File;
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use switchboard_media::MAX_FRAME_SAMPLES;

/// One tick of both channels, interleaved, at the call's codec rate.
#[derive(Clone, Copy)]
pub struct StereoFrame {
    samples: [i16; 2 * MAX_FRAME_SAMPLES],
    /// Samples per channel.
    len: usize,
}

impl Default for StereoFrame {
    fn default() -> Self {
        Self {
            samples: [0; 2 * MAX_FRAME_SAMPLES],
            len: 0,
        }
    }
}
/// Frames queued towards the writer: 2 s of audio.
const QUEUE_FRAMES: usize = 100;
const HEADER_BYTES: u32 = 44;

/// Interleaves one tick of caller and bot audio, `len` samples each
/// (missing samples are silence).
pub fn interleave(caller: &[i16], bot: &[i16], len: usize, out: &mut StereoFrame) {
    out.len = len.min(MAX_FRAME_SAMPLES);
    for (i, pair) in out.samples[..2 * out.len].chunks_exact_mut(2).enumerate() {
        pair[0] = caller.get(i).copied().unwrap_or(0);
        pair[1] = bot.get(i).copied().unwrap_or(0);
    }
}

pub struct Recorder {
    frames: mpsc::Sender<StereoFrame>,
    writer: JoinHandle<std::io::Result<u64>>,
    path: PathBuf,
    dropped: u64,
}

impl Recorder {
    /// Starts recording the call `call_id` into `dir`, at `sample_rate`.
    pub async fn start(dir: &Path, call_id: &str, sample_rate: u32) -> std::io::Result<Recorder> {
        tokio::fs::create_dir_all(dir).await?;
        let path = dir.join(file_name(call_id));
        let file = File::create(&path).await?;
        let (frames, rx) = mpsc::channel(QUEUE_FRAMES);
        let writer = tokio::spawn(write_wav(file, rx, sample_rate));
        Ok(Recorder {
            frames,
            writer,
            path,
            dropped: 0,
        })
    }

    /// Queues one tick; never waits.
    pub fn push(&mut self, frame: &StereoFrame) {
        if self.frames.try_send(*frame).is_err() {
            self.dropped += 1;
        }
    }

    /// Flushes and closes the file; returns its path, bytes of audio and
    /// frames dropped because the disk was slow.
    pub async fn finish(self) -> (PathBuf, std::io::Result<u64>, u64) {
        drop(self.frames);
        let written = match self.writer.await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e)),
        };
        (self.path, written, self.dropped)
    }
}

/// `<unix seconds>-<call-id>.wav`, with the Call-ID reduced to characters
/// safe in a file name (it comes from the network).
fn file_name(call_id: &str) -> String {
    let safe: String = call_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(96)
        .collect();
    let now = time_stamp();
    format!("{now}-{}.wav", safe.trim_start_matches('.'))
}

/// Seconds since the Unix epoch: sorts by start time, needs no calendar.
fn time_stamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn write_wav(
    file: File,
    mut frames: mpsc::Receiver<StereoFrame>,
    sample_rate: u32,
) -> std::io::Result<u64> {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    out.write_all(&header(0, sample_rate)).await?;
    let mut data_bytes: u64 = 0;
    let mut bytes = [0u8; 4 * MAX_FRAME_SAMPLES];
    while let Some(frame) = frames.recv().await {
        let samples = &frame.samples[..2 * frame.len];
        for (chunk, sample) in bytes.chunks_exact_mut(2).zip(samples) {
            chunk.copy_from_slice(&sample.to_le_bytes());
        }
        out.write_all(&bytes[..2 * samples.len()]).await?;
        data_bytes += 2 * samples.len() as u64;
    }
    out.flush().await?;
    let mut file = out.into_inner();
    file.seek(SeekFrom::Start(0)).await?;
    let size = u32::try_from(data_bytes).unwrap_or(u32::MAX - HEADER_BYTES);
    file.write_all(&header(size, sample_rate)).await?;
    file.sync_data().await?;
    Ok(data_bytes)
}

/// RIFF/WAVE header for 16-bit stereo PCM with `data_bytes` of audio.
fn header(data_bytes: u32, sample_rate: u32) -> [u8; HEADER_BYTES as usize] {
    let channels: u16 = 2;
    let block_align = channels * 2;
    let mut h = [0u8; HEADER_BYTES as usize];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(data_bytes.saturating_add(HEADER_BYTES - 8)).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&sample_rate.to_le_bytes());
    h[28..32].copy_from_slice(&(sample_rate * u32::from(block_align)).to_le_bytes());
    h[32..34].copy_from_slice(&block_align.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_a_valid_stereo_wav() {
        let dir = std::env::temp_dir().join(format!("sb-rec-{}", std::process::id()));
        let mut recorder = Recorder::start(&dir, "abc/../def@host", 8000)
            .await
            .unwrap();
        let mut frame = StereoFrame::default();
        for tick in 0..50i16 {
            let caller = [tick; 160];
            let bot = [-tick; 160];
            interleave(&caller, &bot, 160, &mut frame);
            recorder.push(&frame);
        }
        let (path, written, dropped) = recorder.finish().await;
        assert_eq!(written.unwrap(), 50 * 640);
        assert_eq!(dropped, 0);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.ends_with("-abc_.._def_host.wav"), "{name}");
        assert_eq!(
            path.parent().unwrap(),
            dir,
            "the Call-ID cannot leave the directory"
        );
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..4], b"RIFF");
        assert_eq!(
            u32::from_le_bytes(bytes[40..44].try_into().unwrap()),
            50 * 640
        );
        assert_eq!(
            u32::from_le_bytes(bytes[4..8].try_into().unwrap()),
            36 + 50 * 640
        );
        // Tick 7: left 7, right -7.
        let at = 44 + 7 * 640;
        assert_eq!(i16::from_le_bytes([bytes[at], bytes[at + 1]]), 7);
        assert_eq!(i16::from_le_bytes([bytes[at + 2], bytes[at + 3]]), -7);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
