//! Every file in `scenarios/` runs, meets its expectations, and replays byte for byte.

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;

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

/// The actix driver paces the world's steps with actors on tokio's paused clock; the queue driver
/// takes them in a plain loop. Timers, mailboxes and the clock's 1 ms rounding must not change
/// what happens: every scenario gives the same trace, line for line, and the same outcome.
#[test]
fn actix_paused_clock_driver_and_event_queue_driver_agree_on_every_scenario() {
    for path in scenario_files() {
        let scenario = Scenario::load(&path).expect("scenario validates");
        let (queued_trace, acted_trace) = (TraceBuffer::default(), TraceBuffer::default());
        let (queued, error) = run_queue(&scenario, scenario.seed, Some(Box::new(queued_trace.clone())));
        assert!(error.is_none());
        let (acted, error) =
            run_actix(&scenario, scenario.seed, Some(Box::new(acted_trace.clone()))).expect("runtime builds");
        assert!(error.is_none());
        let name = path.display();
        assert!(!queued_trace.0.borrow().is_empty(), "{name}: a trace was written");
        assert_eq!(*queued_trace.0.borrow(), *acted_trace.0.borrow(), "{name}: traces, line for line");
        assert_eq!(queued.trace_digest, acted.trace_digest, "{name}");
        assert_eq!(queued.events, acted.events, "{name}: events processed");
        assert_eq!(queued.ended_at, acted.ended_at, "{name}");
        assert_eq!(queued.last_completion, acted.last_completion, "{name}");
        assert_eq!(queued.peers, acted.peers, "{name}: per-peer outcome");
        assert_eq!(queued.chunk_sources, acted.chunk_sources, "{name}");
        assert_eq!((&queued.bans, &queued.missing), (&acted.bans, &acted.missing), "{name}");
        assert_eq!(queued.violations, acted.violations, "{name}");
        assert_eq!(queued.story, acted.story, "{name}: story");
        assert_eq!(check(&scenario, &queued), check(&scenario, &acted), "{name}: verdicts");
    }
}

/// A trace file in memory, readable after the run that wrote it.
#[derive(Clone, Debug, Default)]
struct TraceBuffer(Rc<RefCell<Vec<u8>>>);

impl Write for TraceBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_bad_scenario_names_its_file_and_line() {
    let text = "end_s = 5\n[file]\nsize_bytes = 100\npiece_size_bytes = 16384\n[[peer]]\nname = \"A\"\nholds = [3]\n";
    let err = Scenario::parse(Path::new("bad.toml"), text).expect_err("piece 3 of a one-piece file");
    assert!(err.to_string().starts_with("bad.toml:5:"), "{err}");
}
