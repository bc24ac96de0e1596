//! Every file in `scenarios/` runs, meets its expectations, and replays byte for byte.

use std::path::{Path, PathBuf};

use p2p_sim::{check, run_actix, run_queue, Outcome, Scenario};

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scenarios/ exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

fn run(scenario: &Scenario, seed: u64) -> Outcome {
    let (outcome, trace_error) = run_queue(scenario, seed, None);
    assert!(trace_error.is_none(), "no trace file, no write error");
    outcome
}

#[test]
fn every_scenario_meets_its_expectations_and_replays_identically() {
    let files = scenario_files();
    assert!(files.len() >= 9, "abcd and the eight fault scenarios: {files:?}");
    for path in files {
        let scenario = Scenario::load(&path).expect("scenario validates");
        let first = run(&scenario, scenario.seed);
        let failed: Vec<String> = check(&scenario, &first)
            .into_iter()
            .filter(|v| !v.held)
            .map(|v| format!("{} — {}", v.expected, v.detail))
            .collect();
        assert!(failed.is_empty(), "{}: {failed:#?}", path.display());
        let second = run(&scenario, scenario.seed);
        assert_eq!(first.trace_digest, second.trace_digest, "{}: same seed, same trace", path.display());
        assert_eq!(first.trace_lines, second.trace_lines);
    }
}

#[test]
fn different_seeds_give_different_traces_where_randomness_matters() {
    for name in ["abcd", "churn", "corrupt-seeder"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../scenarios/{name}.toml"));
        let scenario = Scenario::load(&path).expect("scenario validates");
        let a = run(&scenario, 1);
        let b = run(&scenario, 2);
        assert_ne!(a.trace_digest, b.trace_digest, "{name}: seeds 1 and 2 gave the same trace");
    }
}

#[test]
fn actix_paused_clock_driver_and_event_queue_driver_agree_on_abcd() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/abcd.toml");
    let scenario = Scenario::load(&path).expect("abcd validates");
    let queued = run(&scenario, scenario.seed);
    let (acted, trace_error) = run_actix(&scenario, scenario.seed, None).expect("runtime builds");
    assert!(trace_error.is_none());
    assert_eq!(queued.trace_digest, acted.trace_digest, "both drivers give the same trace");
    assert_eq!(queued.peers, acted.peers, "and the same per-peer outcome");
    assert!(check(&scenario, &acted).iter().all(|v| v.held));
}

#[test]
fn a_bad_scenario_names_its_file_and_line() {
    let text = "end_s = 5\n[file]\nsize_bytes = 100\npiece_size_bytes = 16384\n[[peer]]\nname = \"A\"\nholds = [3]\n";
    let err = Scenario::parse(Path::new("bad.toml"), text).expect_err("piece 3 of a one-piece file");
    assert!(err.to_string().starts_with("bad.toml:5:"), "{err}");
}
