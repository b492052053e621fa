//! Debian's baresip (1.0.0, package `baresip-core`) as a real softphone
//! caller: headless, on loopback only, its microphone the `aufile` module
//! playing a WAV the test writes, and what it hears recorded by the `sndfile`
//! filter (`dump-<time>-dec.wav`; `-enc.wav` is what it sent).
//!
//! The config loads no UI, NAT (stun/turn/ice), encryption or network-control
//! module, binds SIP and RTP to 127.0.0.1 (`net_interface` takes an address;
//! the interface name `lo` is not found everywhere), never registers
//! (`regint=0`), and plays to ALSA's `null` device so no sound card is needed.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// One codec a call is forced onto, as each side names it.
#[derive(Clone, Copy, Debug)]
pub struct CodecCase {
    /// The account's `audio_codecs` entry: baresip offers only this.
    pub account: &'static str,
    /// Rate and channels baresip runs the codec at, which `aufile` insists
    /// the source WAV has.
    pub rate: u32,
    pub channels: u16,
    /// What baresip prints once the codec is chosen ("Set audio decoder: …").
    pub baresip_decoder: &'static str,
    /// The gateway's `codec=` on its "answered" log line.
    pub gateway: &'static str,
}

pub const PCMU: CodecCase = CodecCase {
    account: "PCMU/8000/1",
    rate: 8000,
    channels: 1,
    baresip_decoder: "Set audio decoder: PCMU 8000Hz 1ch",
    gateway: "codec=\"PCMU\"",
};

pub const G722: CodecCase = CodecCase {
    // A bare "G722" means G722/8000 to baresip (the RTP clock rate) and
    // matches nothing: its codec is registered at the 16 kHz audio rate.
    account: "G722/16000/1",
    rate: 16000,
    channels: 1,
    baresip_decoder: "Set audio decoder: G722 16000Hz 1ch",
    gateway: "codec=\"G722\"",
};

pub const OPUS: CodecCase = CodecCase {
    account: "opus/48000/2",
    rate: 48000,
    channels: 2,
    baresip_decoder: "Set audio decoder: opus 48000Hz 2ch",
    gateway: "codec=\"opus\"",
};

/// A running baresip that placed one call; killed on drop if still running.
pub struct Baresip {
    child: Child,
    pub dir: PathBuf,
    log: PathBuf,
    /// Its `cons` module's UDP port, for commands (`/accept`…).
    console: SocketAddr,
}

impl Baresip {
    /// Writes a config dir under `dir` and starts baresip dialling
    /// `sip:<number>@<target>` at once with `source` as its microphone; it
    /// hangs up (BYE) and exits `quit_after_secs` after starting.
    pub fn call(
        dir: &Path,
        codec: &CodecCase,
        source: &Path,
        target: SocketAddr,
        number: &str,
        quit_after_secs: u32,
    ) -> Baresip {
        assert!(
            target.ip().is_loopback(),
            "baresip must only talk to loopback"
        );
        let account = format!(
            "<sip:baresip@127.0.0.1>;regint=0;audio_codecs={}",
            codec.account
        );
        Baresip::launch(
            dir.join("baresip"),
            source,
            &account,
            0,
            Some(format!("/dial sip:{number}@{target}")),
            quit_after_secs,
        )
    }

    /// Starts baresip as a callee on `port`: it answers any call at once
    /// (`answermode=auto`) with only `codec`, plays `source` into it and
    /// exits `quit_after_secs` after starting (hanging up a call in progress).
    pub fn answer(
        dir: &Path,
        codec: &CodecCase,
        source: &Path,
        port: u16,
        quit_after_secs: u32,
    ) -> Baresip {
        let account = format!(
            "<sip:agent@127.0.0.1>;regint=0;answermode=auto;audio_codecs={}",
            codec.account
        );
        Baresip::launch(
            dir.join("baresip-callee"),
            source,
            &account,
            port,
            None,
            quit_after_secs,
        )
    }

    /// A phone registered to `registrar` as `user` (digest with
    /// `password`), answering calls by `answermode` (`auto` or `manual`),
    /// optionally dialling `dial` (a full SIP URI) at once.
    #[allow(clippy::too_many_arguments)]
    pub fn registered(
        dir: &Path,
        name: &str,
        codec: &CodecCase,
        source: &Path,
        registrar: SocketAddr,
        user: &str,
        password: &str,
        answermode: &str,
        dial: Option<&str>,
        quit_after_secs: u32,
    ) -> Baresip {
        assert!(
            registrar.ip().is_loopback(),
            "baresip must only talk to loopback"
        );
        let account = format!(
            "<sip:{user}@{registrar}>;auth_pass={password};regint=600;answermode={answermode};audio_codecs={}",
            codec.account
        );
        Baresip::launch(
            dir.join(name),
            source,
            &account,
            0,
            dial.map(|uri| format!("/dial {uri}")),
            quit_after_secs,
        )
    }

    /// Like [`Baresip::call`] over TLS: `target` is the gateway's `tls:`
    /// listener, trusted through `ca`; `mediaenc` (e.g. `srtp-mand`) asks
    /// for encrypted media.
    #[allow(clippy::too_many_arguments)]
    pub fn call_tls(
        dir: &Path,
        codec: &CodecCase,
        source: &Path,
        target: SocketAddr,
        number: &str,
        quit_after_secs: u32,
        ca: &Path,
        mediaenc: Option<&str>,
    ) -> Baresip {
        assert!(
            target.ip().is_loopback(),
            "baresip must only talk to loopback"
        );
        let account = format!(
            "<sip:baresip@127.0.0.1;transport=tls>;regint=0;audio_codecs={}{}",
            codec.account,
            mediaenc
                .map(|m| format!(";mediaenc={m}"))
                .unwrap_or_default()
        );
        Baresip::launch_with(
            dir.join("baresip-tls"),
            source,
            &account,
            0,
            Some(format!("/dial sip:{number}@{target};transport=tls")),
            quit_after_secs,
            &format!("sip_cafile\t\t{}\nmodule\t\t\tsrtp.so\n", ca.display()),
        )
    }

    /// Like [`Baresip::answer`] but also taking calls over TLS with
    /// `certificate` (cert and key in one PEM file). baresip listens for
    /// TLS on `port + 1`.
    pub fn answer_tls(
        dir: &Path,
        codec: &CodecCase,
        source: &Path,
        port: u16,
        quit_after_secs: u32,
        certificate: &Path,
        mediaenc: Option<&str>,
    ) -> Baresip {
        let account = format!(
            "<sip:agent@127.0.0.1>;regint=0;answermode=auto;audio_codecs={}{}",
            codec.account,
            mediaenc
                .map(|m| format!(";mediaenc={m}"))
                .unwrap_or_default()
        );
        Baresip::launch_with(
            dir.join("baresip-tls-callee"),
            source,
            &account,
            port,
            None,
            quit_after_secs,
            &format!(
                "sip_certificate\t\t{}\nmodule\t\t\tsrtp.so\n",
                certificate.display()
            ),
        )
    }

    fn launch(
        dir: PathBuf,
        source: &Path,
        account: &str,
        port: u16,
        command: Option<String>,
        quit_after_secs: u32,
    ) -> Baresip {
        Baresip::launch_with(dir, source, account, port, command, quit_after_secs, "")
    }

    fn launch_with(
        dir: PathBuf,
        source: &Path,
        account: &str,
        port: u16,
        command: Option<String>,
        quit_after_secs: u32,
        extra_config: &str,
    ) -> Baresip {
        let recordings = dir.join("recordings");
        std::fs::create_dir_all(&recordings).unwrap();
        let console = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = config(source, &recordings).replace(
            "sip_listen\t\t127.0.0.1:0",
            &format!("sip_listen\t\t127.0.0.1:{port}"),
        ) + &format!("module\t\t\tcons.so\ncons_listen\t\t{console}\n")
            + extra_config;
        std::fs::write(dir.join("config"), config).unwrap();
        std::fs::write(dir.join("accounts"), format!("{account}\n")).unwrap();
        // Created empty so baresip does not write its own example there.
        std::fs::write(dir.join("contacts"), "").unwrap();
        let log = dir.join("baresip.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut baresip = Command::new("baresip");
        baresip
            .arg("-f")
            .arg(&dir)
            .args(["-t", &quit_after_secs.to_string()]);
        if let Some(command) = command {
            baresip.args(["-e", &command]);
        }
        let child = baresip
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawning baresip (scripts/bootstrap installs baresip-core)");
        Baresip {
            child,
            dir,
            log,
            console,
        }
    }

    /// Sends a command to its console (`/accept` answers a ringing call).
    pub fn command(&self, command: &str) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .send_to(format!("{command}\n").as_bytes(), self.console)
            .unwrap();
    }

    /// Waits until its log holds `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "baresip never logged {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything baresip printed so far (its status line uses `\r`).
    pub fn log(&self) -> String {
        let mut text = Vec::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text).replace('\r', "\n")
    }

    /// Asserts baresip saw no address but 127.0.0.1 for itself and got its
    /// media from loopback.
    pub fn assert_loopback_only(&self) {
        let log = self.log();
        let addresses = log
            .lines()
            .find(|line| line.starts_with("Local network address:"))
            .unwrap_or_else(|| panic!("baresip printed no local address:\n{log}"));
        assert!(
            addresses
                .split_whitespace()
                .skip(3)
                .all(|entry| entry.ends_with("|127.0.0.1")),
            "baresip uses a non-loopback address: {addresses}"
        );
        for line in log.lines().filter(|line| line.contains("receiving from")) {
            assert!(
                line.contains("receiving from 127.0.0.1:"),
                "baresip got media from off loopback: {line}"
            );
        }
    }

    /// Waits for baresip to exit on its own.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("baresip did not exit in {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `sndfile` dump of one direction: "dec" is what baresip heard,
    /// "enc" what it sent.
    pub fn recording(&self, direction: &str) -> Wav {
        let suffix = format!("-{direction}.wav");
        let dir = self.dir.join("recordings");
        let path = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| path.to_string_lossy().ends_with(&suffix))
            .unwrap_or_else(|| panic!("no *{suffix} in {}:\n{}", dir.display(), self.log()));
        Wav::read(&path)
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(source: &Path, recordings: &Path) -> String {
    format!(
        "\
poll_method\t\tepoll
sip_listen\t\t127.0.0.1:0
net_interface\t\t127.0.0.1
dns_server\t\t127.0.0.1:53
call_local_timeout\t10
call_max_calls\t\t1
audio_source\t\taufile,{source}
audio_player\t\talsa,null
audio_alert\t\talsa,null
ausrc_format\t\ts16
auplay_format\t\ts16
rtp_ports\t\t20000-29999
rtcp_mux\t\tno
module_path\t\t/usr/lib/baresip/modules
module\t\t\tg711.so
module\t\t\tg722.so
module\t\t\topus.so
module\t\t\tsndfile.so
module\t\t\taufile.so
module\t\t\talsa.so
module_tmp\t\taccount.so
module_app\t\tmenu.so
snd_path\t\t{recordings}
ringback_disabled\tyes
opus_bitrate\t\t32000
",
        source = source.display(),
        recordings = recordings.display(),
    )
}

/// 16-bit PCM samples, interleaved if `channels` > 1.
pub struct Wav {
    pub rate: u32,
    pub channels: u16,
    pub samples: Vec<i16>,
}

impl Wav {
    pub fn write(&self, path: &Path) {
        let data_len = (self.samples.len() * 2) as u32;
        let block_align = self.channels * 2;
        let mut bytes = Vec::with_capacity(44 + data_len as usize);
        bytes.extend_from_slice(b"RIFF");
        bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
        bytes.extend_from_slice(b"WAVEfmt ");
        bytes.extend_from_slice(&16u32.to_le_bytes());
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&self.channels.to_le_bytes());
        bytes.extend_from_slice(&self.rate.to_le_bytes());
        bytes.extend_from_slice(&(self.rate * block_align as u32).to_le_bytes());
        bytes.extend_from_slice(&block_align.to_le_bytes());
        bytes.extend_from_slice(&16u16.to_le_bytes());
        bytes.extend_from_slice(b"data");
        bytes.extend_from_slice(&data_len.to_le_bytes());
        for sample in &self.samples {
            bytes.extend_from_slice(&sample.to_le_bytes());
        }
        std::fs::write(path, bytes).unwrap();
    }

    /// Reads a 16-bit PCM WAV, walking its chunks.
    pub fn read(path: &Path) -> Wav {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
            "{} is not a WAV file",
            path.display()
        );
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let mut format = None;
        let mut at = 12;
        while at + 8 <= bytes.len() {
            let size = u32_at(at + 4) as usize;
            let body = at + 8;
            match &bytes[at..at + 4] {
                b"fmt " => {
                    assert_eq!(u16_at(body), 1, "{}: not PCM", path.display());
                    assert_eq!(u16_at(body + 14), 16, "{}: not 16-bit", path.display());
                    format = Some((u32_at(body + 4), u16_at(body + 2)));
                }
                b"data" => {
                    let (rate, channels) =
                        format.unwrap_or_else(|| panic!("{}: data before fmt", path.display()));
                    // A writer that died early leaves the size unset.
                    let end = (body + size).min(bytes.len());
                    let samples = bytes[body..end]
                        .chunks_exact(2)
                        .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
                        .collect();
                    return Wav {
                        rate,
                        channels,
                        samples,
                    };
                }
                _ => {}
            }
            at = body + size + size % 2;
        }
        panic!("{}: no data chunk", path.display());
    }

    /// The first channel only.
    pub fn mono(&self) -> Vec<i16> {
        self.samples
            .iter()
            .step_by(self.channels.max(1) as usize)
            .copied()
            .collect()
    }

    /// The first channel at 8 kHz: averaging each group of `rate / 8000`
    /// samples (a boxcar low-pass, enough for test signals below 2 kHz).
    pub fn mono_8k(&self) -> Vec<i16> {
        let mono = self.mono();
        assert_eq!(
            self.rate % 8000,
            0,
            "rate {} is not a multiple of 8 kHz",
            self.rate
        );
        let factor = (self.rate / 8000) as usize;
        mono.chunks_exact(factor)
            .map(|group| (group.iter().map(|s| *s as i32).sum::<i32>() / factor as i32) as i16)
            .collect()
    }
}

/// A voice-like test signal at any rate: a fundamental gliding 120-240 Hz
/// (integrated, so it stays there however long the signal runs) with its 3rd
/// and 7th harmonics under a syllable-rate envelope. Everything is below
/// 1.8 kHz, inside every codec's band, so what a codec loses is its noise and
/// not the signal. Unlike `audio::speech_like`, whose pitch term is not
/// integrated and so climbs past 4 kHz after a few seconds.
pub fn voice_like(rate: u32, samples: usize) -> Vec<i16> {
    use std::f64::consts::PI;
    (0..samples)
        .map(|n| {
            let t = n as f64 / rate as f64;
            // Instantaneous pitch 180 + 60 sin(2π 0.7 t) Hz, plus a 1.1 Hz vibrato.
            let phase = 2.0 * PI * 180.0 * t - (60.0 / 0.7) * (2.0 * PI * 0.7 * t).cos()
                + 3.0 * (2.0 * PI * 1.1 * t).sin();
            let envelope = 0.55 + 0.45 * (2.0 * PI * 3.3 * t).sin();
            let value = 0.5 * phase.sin() + 0.3 * (3.0 * phase).sin() + 0.2 * (7.0 * phase).sin();
            (value * envelope * 12000.0) as i16
        })
        .collect()
}

/// Normalised cross-correlation of `sent` with `heard[lag..lag + sent.len()]`
/// (0 when that runs past the end or either side is silent).
pub fn correlation_at(sent: &[i16], heard: &[i16], lag: usize) -> f64 {
    let Some(part) = heard.get(lag..lag + sent.len()) else {
        return 0.0;
    };
    let energy = |samples: &[i16]| samples.iter().map(|s| (*s as f64).powi(2)).sum::<f64>();
    let (sent_energy, part_energy) = (energy(sent), energy(part));
    if sent_energy == 0.0 || part_energy == 0.0 {
        return 0.0;
    }
    let dot: f64 = sent
        .iter()
        .zip(part)
        .map(|(a, b)| *a as f64 * *b as f64)
        .sum();
    dot / (sent_energy * part_energy).sqrt()
}

/// Peak correlation of one second of `sent` (mono, at `rate`, starting at
/// sample `start`) in `heard`, found at 8 kHz over every lag from `start` on
/// and then refined at the full rate, where the round trip's resamplers may
/// have left a fraction of an 8 kHz sample of delay. Returns the peak and
/// its delay after `start`, in samples at `rate`.
pub fn peak_correlation(sent: &[i16], heard: &[i16], rate: u32, start: usize) -> (f64, usize) {
    let to_8k = |samples: &[i16]| {
        Wav {
            rate,
            channels: 1,
            samples: samples.to_vec(),
        }
        .mono_8k()
    };
    let factor = (rate / 8000) as usize;
    let (sent_8k, heard_8k) = (to_8k(sent), to_8k(heard));
    let start_8k = start / factor;
    let (_, lag_8k) =
        super::audio::best_correlation(&sent_8k[start_8k..], &heard_8k, start_8k..heard_8k.len());
    let window = &sent[start..start + rate as usize];
    let around = lag_8k * factor;
    let (score, lag) = (around.saturating_sub(2 * factor)..=around + 2 * factor)
        .map(|lag| (correlation_at(window, heard, lag), lag))
        .filter(|(_, lag)| *lag >= start)
        .fold(
            (0.0, start),
            |best, next| if next.0 > best.0 { next } else { best },
        );
    (score, lag - start)
}
