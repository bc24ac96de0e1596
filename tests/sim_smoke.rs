//! `p2p-sim` runs the seed's scenario to a successful end, and a run is reproducible: the same
//! scenario twice gives the same trace digest.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{path_str, run_bounded, sim_bin, stderr_of};

/// Bound on one simulator run of the example scenario.
const SIM_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn abcd_scenario_holds_its_expectations_and_replays_to_the_same_digest() {
    let first = run_abcd_scenario();
    let second = run_abcd_scenario();
    assert_eq!(first, second, "two runs of the same scenario gave different trace digests");
}

/// Runs `p2p-sim scenarios/abcd.toml`, checks it exits 0, and returns its `trace-digest` value.
fn run_abcd_scenario() -> String {
    let scenario = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/abcd.toml");
    let output = run_bounded(sim_bin(), &[path_str(&scenario)], SIM_TIMEOUT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "p2p-sim exited with {}\n{stdout}\n{}", output.status, stderr_of(&output));
    let last = stdout.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("");
    let digest = last.strip_prefix("trace-digest ").unwrap_or_else(|| panic!("last line is not a digest: {last:?}"));
    assert!(
        !digest.trim().is_empty() && digest.trim().bytes().all(|b| b.is_ascii_hexdigit()),
        "digest is not hex: {last:?}"
    );
    digest.trim().to_owned()
}
