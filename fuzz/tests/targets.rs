//! Every fuzz target, briefly, in CI: its seed corpus (which holds every
//! input that ever crashed it) and 20,000 mutations with a fixed seed, so
//! a failure here reproduces exactly. Longer runs: `src/main.rs`.

use switchboard_fuzz::{corpus, run, Budget, TARGETS};

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    let mut failures = Vec::new();
    for target in TARGETS {
        let seeds = corpus(target);
        assert!(
            !seeds.is_empty() || target.name == "rtp" || target.name == "rtcp",
            "{} has no seed corpus",
            target.name
        );
        let report = run(target, &seeds, Budget::Executions(20_000), 1);
        println!(
            "{}: {} executions, {} seeds, slowest {:?}",
            target.name,
            report.executions,
            seeds.len(),
            report.slowest
        );
        for (input, message) in report.crashes {
            failures.push(format!(
                "{}: {message} on {:?}",
                target.name,
                String::from_utf8_lossy(&input)
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The harness finds what it is meant to: a target that panics on some
/// inputs is reported, with the input.
#[test]
fn the_harness_reports_a_panicking_input() {
    fn fragile(bytes: &[u8]) {
        assert!(!bytes.contains(&b'!'), "found the bang");
    }
    let target = switchboard_fuzz::Target {
        name: "fragile",
        run: fragile,
        dictionary: &["!"],
    };
    let report = run(&target, &[b"hello".to_vec()], Budget::Executions(5_000), 7);
    assert!(!report.crashes.is_empty());
    assert!(report.crashes[0].0.contains(&b'!'));
    assert!(report.crashes[0].1.contains("found the bang"));
}
