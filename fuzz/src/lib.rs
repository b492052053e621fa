//! Fuzz targets for every parser that takes bytes from the network (SIP
//! datagrams and streams, SDP, RTP, RTCP), from bots (TwiML, bot action
//! messages, each connector's JSON) and a driver that runs them on the
//! stable toolchain: seed corpus in `fuzz/corpus/<target>/`, random
//! mutations (bit flips, byte edits, splices, dictionary tokens, repeats,
//! truncation), panics caught and the input saved. It is not coverage
//! guided: it trades depth for running in CI without nightly or sanitizers.

pub mod connectors;
pub mod mutate;
pub mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use targets::{Target, TARGETS};

/// Every panic in the process while a run is on, in any thread: tasks
/// that tokio catches still pass through the hook.
static PANICS: AtomicU64 = AtomicU64::new(0);

pub fn panics_seen() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// What one run of a target found.
#[derive(Debug, Default)]
pub struct Report {
    pub executions: u64,
    /// Inputs that panicked, each with its panic message.
    pub crashes: Vec<(Vec<u8>, String)>,
    /// The slowest input's time: a parser that loops on some input shows
    /// here long before it hangs a call.
    pub slowest: Duration,
    pub elapsed: Duration,
}

/// How long to run: a number of mutated inputs, or a wall-clock budget.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    Executions(u64),
    Time(Duration),
}

/// The seed corpus of `target`: every file under `fuzz/corpus/<name>/`,
/// plus the SIP torture corpus for the SIP targets.
pub fn corpus(target: &Target) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("corpus").join(target.name)];
    if target.name.starts_with("sip_") {
        dirs.push(root.join("../gateway/tests/torture"));
    }
    let mut inputs = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if let Ok(bytes) = std::fs::read(&path) {
                inputs.push(bytes);
            }
        }
    }
    inputs
}

/// Runs `target` on its corpus as is, then on mutations of it until the
/// budget is spent. Panics are caught (the process's panic hook is
/// silenced meanwhile) and returned with their inputs.
pub fn run(target: &Target, corpus: &[Vec<u8>], budget: Budget, seed: u64) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = Report::default();
    let started = Instant::now();
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {
        PANICS.fetch_add(1, Ordering::Relaxed);
    }));
    let execute = |input: &[u8], report: &mut Report| {
        let at = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
        report.slowest = report.slowest.max(at.elapsed());
        report.executions += 1;
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            if report.crashes.len() < 20 {
                report.crashes.push((input.to_vec(), message));
            }
        }
    };
    for input in corpus {
        execute(input, &mut report);
    }
    let fallback = [Vec::new()];
    let seeds: &[Vec<u8>] = if corpus.is_empty() { &fallback } else { corpus };
    let mut scratch = Vec::with_capacity(4096);
    loop {
        let done = match budget {
            Budget::Executions(n) => report.executions >= n,
            Budget::Time(limit) => report.executions % 256 == 0 && started.elapsed() >= limit,
        };
        if done {
            break;
        }
        let base = &seeds[rng.random_range(0..seeds.len())];
        let other = &seeds[rng.random_range(0..seeds.len())];
        mutate::mutate(&mut rng, base, other, target.dictionary, &mut scratch);
        execute(&scratch, &mut report);
    }
    std::panic::set_hook(previous_hook);
    report.elapsed = started.elapsed();
    report
}
