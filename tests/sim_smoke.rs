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

#[test]
fn table_mode_prints_one_row_per_scenario_and_needs_the_flag_for_several_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let (capped, abcd) = (dir.join("capped-uploads.toml"), dir.join("abcd.toml"));
    let args = ["--table", path_str(&capped), path_str(&abcd)];
    let output = run_bounded(sim_bin(), &args, SIM_TIMEOUT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "p2p-sim --table exited with {}\n{stdout}", output.status);
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows.len(), 3, "a header and two rows:\n{stdout}");
    assert!(rows[1].starts_with("| capped-uploads | 24 | 8.00 s |"), "its N and T_min: {}", rows[1]);
    assert!(rows[2].starts_with("| abcd | 2 | - |"), "abcd has no bound: {}", rows[2]);
    let two_without_flag = run_bounded(sim_bin(), &[path_str(&capped), path_str(&abcd)], SIM_TIMEOUT);
    assert_eq!(two_without_flag.status.code(), Some(2), "{}", stderr_of(&two_without_flag));
}
