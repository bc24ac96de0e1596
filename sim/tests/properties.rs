//! Property tests over random swarms (issue 3): 2–60 peers, 1–64 pieces, random holdings,
//! random join/leave/crash/restart times, loss up to 20 %, latency 1–200 ms.
//!
//! Invariants checked on every run: (i) every completed file equals the original; (ii) no
//! piece that fails its hash is stored as verified or served; (iii) when every piece keeps a
//! live holder, every live downloader completes before the deadline; (iv) when some pieces never
//! have a holder, nobody completes and each downloader's last report names exactly those
//! pieces; a second full holder may serve corrupted copies of random pieces, which must be
//! caught by hash and never kept; (v) the tracker never lists a peer past its TTL; (vi) requests in flight per
//! connection stay bounded. (i), (ii), (v) and (vi) are watched by the world while it runs and
//! arrive as `Outcome::violations`.
//!
//! `PROPTEST_CASES=500 cargo test -p p2p-sim --release --test properties` runs many more cases
//! than the default 16. A failure prints the seed and a scenario TOML that reproduces it with
//! `p2p-sim`; put that file in `sim/tests/regressions/` and it is replayed by
//! `saved_regressions_still_hold`.

use std::path::Path;

use p2p_core::limits::REQUESTS_IN_FLIGHT_PER_CONN_MAX;
use p2p_sim::scenario::{EventFile, FileFile, HoldsFile, LinkFile, PeerFile, PieceItem};
use p2p_sim::{run_queue, Outcome, Scenario, ScenarioFile};
use proptest::prelude::*;
use toml::Spanned;

const CASES_DEFAULT: u32 = 16;
const PIECE_BYTES: u64 = 16 * 1024;
const END_S: f64 = 400.0;
/// A downloader must have been running this long before the end to be held to (iii)/(iv).
const SETTLE_S: f64 = 120.0;

#[derive(Clone, Debug)]
enum Fate {
    Stays,
    Leaves(f64),
    Crashes(f64, Option<f64>),
}

#[derive(Clone, Debug)]
struct PeerPlan {
    holds_mask: u64,
    join_s: f64,
    fate: Fate,
}

#[derive(Clone, Debug)]
struct Swarm {
    seed: u64,
    pieces: u32,
    latency_ms: f64,
    jitter_ms: f64,
    loss: f64,
    missing_mask: u64,
    /// Pieces a second full holder, BAD, serves corrupted (0: no BAD peer).
    corrupt_mask: u64,
    peers: Vec<PeerPlan>,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        3 => Just(Fate::Stays),
        1 => (1.0..60.0f64).prop_map(Fate::Leaves),
        1 => (1.0..60.0f64, proptest::option::of(5.0..60.0f64)).prop_map(|(c, r)| Fate::Crashes(c, r.map(|r| c + r))),
    ]
}

fn swarm() -> impl Strategy<Value = Swarm> {
    let peer = (any::<u64>(), 0.0..30.0f64, fate()).prop_map(|(holds_mask, join_s, fate)| PeerPlan {
        holds_mask,
        join_s,
        fate,
    });
    (
        0..i64::MAX as u64, // TOML integers are i64
        1u32..=64,
        1.0..200.0f64,
        0.0..20.0f64,
        prop_oneof![2 => Just(0.0), 1 => 0.0..0.2f64],
        prop_oneof![3 => Just(0u64), 1 => any::<u64>()],
        prop_oneof![2 => Just(0u64), 1 => any::<u64>()],
        proptest::collection::vec(peer, 1..60),
    )
        .prop_map(|(seed, pieces, latency_ms, jitter_ms, loss, missing, corrupt, peers)| Swarm {
            seed,
            pieces,
            latency_ms,
            jitter_ms,
            loss,
            missing_mask: missing & all_pieces(pieces) & !1, // piece 0 always exists
            corrupt_mask: corrupt & all_pieces(pieces) & !(missing & all_pieces(pieces) & !1),
            peers,
        })
}

fn all_pieces(pieces: u32) -> u64 {
    u64::MAX >> (64 - pieces)
}

fn pieces_of(mask: u64, pieces: u32) -> Vec<u32> {
    (0..pieces).filter(|p| mask & (1 << p) != 0).collect()
}

/// The scenario a swarm describes: an always-present seeder holding every piece but the
/// missing ones, plus the random peers (holding nothing that is missing).
fn scenario_file(swarm: &Swarm) -> ScenarioFile {
    let available = !swarm.missing_mask & all_pieces(swarm.pieces);
    let list = |mask: u64| HoldsFile::List(pieces_of(mask, swarm.pieces).into_iter().map(PieceItem::Index).collect());
    let mut peers = vec![PeerFile {
        name: "SEED".to_owned(),
        holds: Some(list(available)),
        wants: Some(false),
        ..PeerFile::default()
    }];
    let mut events = Vec::new();
    if swarm.corrupt_mask != 0 {
        let bad = PeerFile {
            name: "BAD".to_owned(),
            holds: Some(list(available)),
            wants: Some(false),
            ..PeerFile::default()
        };
        peers.push(bad);
        let pieces = pieces_of(swarm.corrupt_mask, swarm.pieces).into_iter().map(PieceItem::Index).collect();
        events.push(Spanned::new(0..0, EventFile::Corrupt { at_s: 0.0, peer: "BAD".to_owned(), pieces }));
    }
    for (i, plan) in swarm.peers.iter().enumerate() {
        let mut peer = PeerFile {
            name: format!("P{i}"),
            holds: Some(list(plan.holds_mask & available & !(u64::MAX << (swarm.pieces / 2)))),
            wants: Some(true),
            join_s: Some(plan.join_s),
            ..PeerFile::default()
        };
        match plan.fate {
            Fate::Stays => {}
            Fate::Leaves(at) => peer.leave_s = Some(plan.join_s + at),
            Fate::Crashes(at, restart) => {
                peer.crash_s = Some(plan.join_s + at);
                peer.restart_s = restart.map(|r| plan.join_s + r);
            }
        }
        peers.push(peer);
    }
    ScenarioFile {
        seed: swarm.seed,
        end_s: END_S,
        network: LinkFile {
            latency_ms: Some(swarm.latency_ms),
            jitter_ms: Some(swarm.jitter_ms),
            up_bytes_per_s: Some(1_000_000),
            loss: Some(swarm.loss),
            ..LinkFile::default()
        },
        file: FileFile {
            name: None,
            size_bytes: u64::from(swarm.pieces) * PIECE_BYTES - PIECE_BYTES / 3,
            piece_size_bytes: PIECE_BYTES,
        },
        peers: peers.into_iter().map(|p| Spanned::new(0..0, p)).collect(),
        events,
        ..ScenarioFile::default()
    }
}

/// Checks every invariant of one run; `Err` says which broke.
fn check_invariants(scenario: &Scenario, outcome: &Outcome, missing: &[u32]) -> Result<(), String> {
    if !outcome.violations.is_empty() {
        return Err(format!("invariants broken: {:#?}", outcome.violations));
    }
    let bound = REQUESTS_IN_FLIGHT_PER_CONN_MAX * 4;
    if outcome.requests_in_flight_max > bound {
        return Err(format!("{} requests in flight on one connection", outcome.requests_in_flight_max));
    }
    let end = scenario.end.as_micros() as f64 / 1e6;
    for (i, (spec, summary)) in scenario.peers.iter().zip(&outcome.peers).enumerate() {
        let settled = scenario
            .actions
            .iter()
            .filter(|a| {
                a.kind.clone() == p2p_sim::scenario::ActionKind::Join(p2p_sim::scenario::NodeIdx::peer(i))
                    || a.kind.clone() == p2p_sim::scenario::ActionKind::Restart(p2p_sim::scenario::NodeIdx::peer(i))
            })
            .all(|a| (a.at.as_micros() as f64 / 1e6) < end - SETTLE_S);
        if !spec.wants || !summary.running || !settled {
            continue;
        }
        let node = p2p_sim::scenario::NodeIdx::peer(i);
        if missing.is_empty() && summary.completed_at.is_none() {
            return Err(format!("(iii) {} is running with every piece available but did not complete", spec.name));
        }
        if !missing.is_empty() {
            if summary.completed_at.is_some() || summary.finalized {
                return Err(format!("(iv) {} completed although pieces {missing:?} have no holder", spec.name));
            }
            if outcome.missing.get(&node).map(Vec::as_slice) != Some(missing) {
                let got = outcome.missing.get(&node);
                return Err(format!("(iv) {} last reported {got:?} missing, not {missing:?}", spec.name));
            }
        }
    }
    Ok(())
}

fn run_swarm(swarm: &Swarm) -> Result<(), String> {
    let file = scenario_file(swarm);
    let text = toml::to_string(&file).expect("a scenario serializes");
    let scenario = Scenario::from_file(file).map_err(|e| format!("generated an invalid scenario: {e}\n{text}"))?;
    let missing = pieces_of(swarm.missing_mask, swarm.pieces);
    if missing_pieces(&scenario) != missing {
        return Err(format!("the scenario lacks pieces {:?}, the swarm {missing:?}", missing_pieces(&scenario)));
    }
    let (outcome, _) = run_queue(&scenario, swarm.seed, None);
    check_invariants(&scenario, &outcome, &missing)
        .map_err(|why| format!("{why}\nseed {}; reproduce with p2p-sim on this scenario:\n{text}", swarm.seed))
}

/// The pieces no peer of `scenario` ever holds: those a swarm leaves without a holder.
fn missing_pieces(scenario: &Scenario) -> Vec<u32> {
    (0..scenario.file.piece_count).filter(|p| scenario.peers.iter().all(|peer| !peer.holds.contains(p))).collect()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES_DEFAULT)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_swarms_keep_every_invariant(swarm in swarm()) {
        if let Err(why) = run_swarm(&swarm) {
            prop_assert!(false, "{}", why);
        }
    }
}

/// Scenarios saved from earlier failures (TOML, as printed by a failing case) still hold.
#[test]
fn saved_regressions_still_hold() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions");
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).expect("regressions dir").map(|e| e.expect("entry").path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    files.sort();
    assert!(!files.is_empty(), "no saved regression in {}", dir.display());
    for path in files {
        let scenario = Scenario::load(&path).expect("saved regression validates");
        let (outcome, _) = run_queue(&scenario, scenario.seed, None);
        let missing = missing_pieces(&scenario);
        let verdicts = p2p_sim::check(&scenario, &outcome);
        assert!(verdicts.iter().all(|v| v.held), "{}: {verdicts:#?}", path.display());
        check_invariants(&scenario, &outcome, &missing).unwrap_or_else(|why| panic!("{}: {why}", path.display()));
    }
}
