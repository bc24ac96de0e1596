//! The efficiency family in `scenarios/efficiency/` (issue 10): targets the swarm works
//! towards, so CI checks what must always hold — every file validates with a bound, runs with
//! its invariants intact, no run is faster than the bound (a lower bound the link model must
//! honour) and no run's peers send more than their uplinks carry — and prints the table; the
//! targets themselves are asserted by the ignored test
//! (`cargo test -p p2p-sim --release --test efficiency -- --ignored --nocapture`).

use std::path::{Path, PathBuf};

use p2p_sim::efficiency::{self, TableRow, TABLE_HEADER};
use p2p_sim::scenario::Expect;
use p2p_sim::{check, run_queue, Scenario};

/// Files with more downloaders than this run only in the ignored test (CI time).
const CI_DOWNLOADERS_MAX: usize = 200;
/// Rounding slack for "no run beats the bound" (times are whole microseconds).
const BOUND_SLACK: f64 = 1e-6;
/// Slack for "no uplink carries more than its rate": blocks already leaving when the last
/// downloader completes still count as sent.
const UPLINKS_USED_SLACK: f64 = 0.01;

fn family() -> Vec<(PathBuf, Scenario)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/efficiency");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scenarios/efficiency/ exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files.into_iter().map(|path| (path.clone(), Scenario::load(&path).expect("scenario validates"))).collect()
}

/// Runs each scenario, prints its table row, and returns the failed verdicts per file.
fn run_family(scenarios: &[(PathBuf, Scenario)]) -> Vec<String> {
    println!("{TABLE_HEADER}");
    let mut failed = Vec::new();
    for (path, scenario) in scenarios {
        let (outcome, _) = run_queue(scenario, scenario.seed, None);
        let verdicts = check(scenario, &outcome);
        let e = efficiency::measure(scenario, &outcome);
        let bound = e.bound.as_ref().expect("validation keeps within-bound scenarios with a bound");
        if let Some(last) = e.last_s {
            assert!(
                last >= bound.fluid_s() * (1.0 - BOUND_SLACK),
                "{}: the last downloader took {last} s, below the lower bound {} s",
                path.display(),
                bound.fluid_s()
            );
        }
        if let Some(used) = e.uplinks_used {
            assert!(
                used <= 1.0 + UPLINKS_USED_SLACK,
                "{}: the peers sent {:.1} % of what their uplinks carry in the time taken",
                path.display(),
                used * 100.0
            );
        }
        let invariants = verdicts.last().expect("the invariant verdict is always there");
        assert!(invariants.held, "{}: {}", path.display(), invariants.detail);
        let held = verdicts.iter().filter(|v| v.held).count();
        print!("{}", TableRow { scenario: outcome.scenario.clone(), efficiency: e, held: (held, verdicts.len()) });
        failed.extend(
            verdicts
                .into_iter()
                .filter(|v| !v.held)
                .map(|v| format!("{}: {} — {}", path.display(), v.expected, v.detail)),
        );
    }
    failed
}

#[test]
fn every_file_is_a_flash_crowd_with_the_issue_targets() {
    let scenarios = family();
    assert!(scenarios.len() >= 16, "the family of issue 10: {} files", scenarios.len());
    for (path, scenario) in &scenarios {
        let mut targets = (None, None, None);
        for expect in &scenario.expects {
            match expect {
                Expect::WithinBound { factor, .. } => targets.0 = Some(*factor),
                Expect::DownloadedAtMost(_, copies) => targets.1 = Some(*copies),
                Expect::SeederUseful(at_least) => targets.2 = Some(*at_least),
                _ => {}
            }
        }
        let (Some(factor), Some(copies), Some(useful)) = targets else {
            panic!("{}: within-bound, downloaded-at-most and seeder-useful expected", path.display());
        };
        assert!(factor <= 1.5 && copies <= 1.05 && useful >= 0.9, "{}: a target below issue 10's", path.display());
        assert!(efficiency::bound(scenario).is_ok(), "{}", path.display());
    }
}

#[test]
fn family_runs_keep_their_invariants_and_never_beat_the_bound() {
    let small: Vec<_> = family()
        .into_iter()
        .filter(|(_, s)| s.peers.iter().filter(|p| p.wants).count() <= CI_DOWNLOADERS_MAX)
        .collect();
    // Targets are reported here, not judged: the ignored test below judges them.
    let missed = run_family(&small);
    println!("{} target verdicts missed (issue 10)", missed.len());
}

#[test]
#[ignore = "issue 10: the swarm does not reach these targets yet; run in release with --ignored"]
fn family_meets_the_issue_10_targets() {
    let missed = run_family(&family());
    assert!(missed.is_empty(), "{missed:#?}");
}
