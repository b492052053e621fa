//! `cargo run --release -p switchboard-fuzz -- [--secs N] [--seed S] [TARGET…]`:
//! runs each target (all by default) for N seconds (default 60), prints
//! executions per second, the slowest input and any panic, and saves each
//! panicking input under `fuzz/artifacts/<target>/` to become a regression
//! file in `fuzz/corpus/<target>/`. Exits 1 if anything panicked.

use std::time::Duration;

use switchboard_fuzz::{corpus, run, Budget, TARGETS};

fn main() {
    let mut secs = 60u64;
    let mut seed = 0x5b0a_4d11u64;
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--secs" => secs = args.next().and_then(|v| v.parse().ok()).expect("--secs N"),
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).expect("--seed S"),
            "--list" => {
                for target in TARGETS {
                    println!("{}", target.name);
                }
                return;
            }
            name => names.push(name.to_string()),
        }
    }
    let mut failed = false;
    for target in TARGETS {
        if !names.is_empty() && !names.iter().any(|n| n == target.name) {
            continue;
        }
        let seeds = corpus(target);
        let sessions_before = switchboard_fuzz::connectors::sessions_opened_and_inputs_handled();
        let report = run(
            target,
            &seeds,
            Budget::Time(Duration::from_secs(secs)),
            seed,
        );
        println!(
            "{:<14} {:>11} execs in {:>6.1} s ({:>8.0}/s), {} seeds, slowest {:?}, {} panics",
            target.name,
            report.executions,
            report.elapsed.as_secs_f64(),
            report.executions as f64 / report.elapsed.as_secs_f64(),
            seeds.len(),
            report.slowest,
            report.crashes.len()
        );
        let sessions = switchboard_fuzz::connectors::sessions_opened_and_inputs_handled();
        if target.name.starts_with("connector_") {
            println!(
                "  {} sessions opened, {} inputs handled by a live session",
                sessions.0 - sessions_before.0,
                sessions.1 - sessions_before.1
            );
        }
        if !report.crashes.is_empty() {
            failed = true;
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("artifacts")
                .join(target.name);
            std::fs::create_dir_all(&dir).expect("artifacts directory");
            for (index, (input, message)) in report.crashes.iter().enumerate() {
                let path = dir.join(format!("crash-{seed}-{index}"));
                std::fs::write(&path, input).expect("writing a crash input");
                println!("  panic: {message}\n  input: {}", path.display());
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
