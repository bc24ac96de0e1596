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

#[test]
fn svg_draws_the_abcd_run_the_same_way_every_time() {
    let scenario = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/abcd.toml");
    let dir = common::temp_dir();
    let draw = |name: &str| {
        let path = dir.path().join(name);
        let output = run_bounded(sim_bin(), &[path_str(&scenario), "--svg", path_str(&path)], SIM_TIMEOUT);
        assert!(output.status.success(), "p2p-sim --svg exited with {}\n{}", output.status, stderr_of(&output));
        std::fs::read_to_string(&path).expect("the picture is written")
    };
    let svg = draw("first.svg");
    assert_eq!(svg, draw("second.svg"), "the same run draws the same bytes");
    assert_well_formed(&svg);
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{}", &svg[..80]);
    // D got piece 0 from A, 1 from B and 2 from C; E got every piece from D. A mark is a chunk,
    // a piece of 256 KiB four chunks.
    for (piece, sender) in [(0, "A"), (1, "B"), (2, "C"), (0, "D"), (1, "D"), (2, "D")] {
        for chunk in piece * 4..piece * 4 + 4 {
            let label = format!(">{chunk} \u{2190} {sender}</text>");
            assert!(svg.contains(&label), "chunk {chunk} of piece {piece} from {sender} is labelled");
        }
    }
    assert_eq!(svg.matches(" complete at ").count(), 2, "D and E complete");
    assert_eq!(svg.matches(">leaves</text>").count(), 3, "A, B and C leave");
}

/// Every element opened is closed, in order, and nothing but comments and text is outside
/// the root element.
fn assert_well_formed(svg: &str) {
    let mut open: Vec<&str> = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').map(|end| start + end).expect("every tag ends");
        let tag = &rest[start + 1..end];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop(), Some(name), "</{name}> closes the element opened last");
        } else if !tag.ends_with('/') {
            open.push(tag.split_whitespace().next().expect("a tag name"));
        }
        rest = &rest[end + 1..];
        if open.is_empty() {
            assert!(rest.trim().is_empty(), "nothing after the root element: {rest:?}");
        }
    }
    assert!(open.is_empty(), "unclosed elements: {open:?}");
}
