//! Checking a scenario's expectations against a run's [`Outcome`].
//!
//! Each expectation gives a [`Verdict`]: what was expected, in words, whether it held, and what
//! actually happened when it did not. A final verdict says whether every invariant of the run
//! held (files intact, nothing unverified served, the tracker within its TTL, requests
//! bounded); a run passes only when every verdict held.

use std::time::Duration;

use p2p_core::limits::TRACKER_FILES_PER_IP_MAX;
use p2p_core::Time;

use crate::efficiency::{self, Efficiency};
use crate::report::Outcome;
use crate::scenario::{Expect, NodeIdx, Scenario};

/// One checked expectation.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// What was expected.
    pub expected: String,
    /// Whether it held.
    pub held: bool,
    /// What happened instead (empty when it held).
    pub detail: String,
}

/// Every expectation of `scenario`, then the invariants, checked against `outcome`.
pub fn check(scenario: &Scenario, outcome: &Outcome) -> Vec<Verdict> {
    let name = |node: NodeIdx| scenario.peers[node.0 - 1].name.clone();
    let mut verdicts: Vec<Verdict> = scenario.expects.iter().map(|e| check_one(e, scenario, outcome, &name)).collect();
    let detail = outcome.violations.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
    verdicts.push(Verdict {
        expected: "every invariant holds (files intact, no bad piece kept or served, tracker within TTL)".to_owned(),
        held: outcome.violations.is_empty(),
        detail,
    });
    verdicts
}

fn check_one(expect: &Expect, scenario: &Scenario, outcome: &Outcome, name: &dyn Fn(NodeIdx) -> String) -> Verdict {
    match expect {
        Expect::Completes(peers, by, within) => completes(scenario, outcome, peers, *by, *within, name),
        Expect::WithinBound { factor, p50_factor } => {
            within_bound(&efficiency::measure(scenario, outcome), *factor, *p50_factor)
        }
        Expect::Incomplete(peers) => {
            let done: Vec<String> = peers
                .iter()
                .filter(|p| outcome.peer(**p).completed_at.is_some() || outcome.peer(**p).finalized)
                .map(|p| name(*p))
                .collect();
            verdict(format!("{} do not complete", list(peers, name)), and_completed(&done))
        }
        Expect::PieceFrom(peer, piece, from) => {
            let sources: Vec<NodeIdx> = outcome
                .chunk_sources
                .iter()
                .filter(|(p, chunk, _)| p == peer && chunk / outcome.chunks_per_piece.max(1) == *piece)
                .map(|(_, _, source)| *source)
                .collect();
            let detail = if sources.contains(from) {
                String::new()
            } else if sources.is_empty() {
                "never got it".to_owned()
            } else {
                format!("got it from {}", sources.iter().map(|s| source_name(*s, name)).collect::<Vec<_>>().join(", "))
            };
            verdict(format!("{} gets piece {piece} from {}", name(*peer), name(*from)), detail)
        }
        Expect::Banned(peer, banned) => {
            let held = outcome.bans.contains(&(*peer, *banned));
            verdict(format!("{} bans {}", name(*peer), name(*banned)), if held { "" } else { "no such ban" }.to_owned())
        }
        Expect::Missing(peer, pieces) => {
            let last = outcome.missing.get(peer);
            let detail = match last {
                Some(reported) if reported == pieces => String::new(),
                Some(reported) => format!("last reported {reported:?}"),
                None => "never reported missing pieces".to_owned(),
            };
            verdict(format!("{} reports pieces {pieces:?} missing", name(*peer)), detail)
        }
        Expect::UploadedAtMost(peer, copies) => {
            let up = outcome.peer(*peer).bytes_up as f64 / outcome.file_size_bytes.max(1) as f64;
            let detail = if up <= *copies { String::new() } else { format!("uploaded {up:.1} copies") };
            verdict(format!("{} uploads at most {copies} copies of the file (did {up:.1})", name(*peer)), detail)
        }
        Expect::DownloadedAtMost(peers, copies) => downloaded_at_most(outcome, peers, *copies, name),
        Expect::SeederUseful(at_least) => seeder_useful(&efficiency::measure(scenario, outcome), *at_least),
        Expect::NotBanned(peers) => not_banned(outcome, peers, name),
        Expect::TrackerBounded(flooders) => tracker_bounded(outcome, flooders, name),
        Expect::UploadedLess(peer, than) => {
            let mine = outcome.peer(*peer).bytes_up;
            let beaten: Vec<String> = than
                .iter()
                .filter(|t| outcome.peer(**t).bytes_up <= mine)
                .map(|t| format!("{} uploaded {}", name(*t), outcome.peer(*t).bytes_up))
                .collect();
            let expected = format!("{} uploads less than {} (did {mine} bytes)", name(*peer), list(than, name));
            verdict(expected, beaten.join(", "))
        }
    }
}

fn completes(
    scenario: &Scenario,
    outcome: &Outcome,
    peers: &[NodeIdx],
    by: Option<Time>,
    within: Option<Duration>,
    name: &dyn Fn(NodeIdx) -> String,
) -> Verdict {
    let joins = within.map(|_| efficiency::join_times(scenario));
    let late: Vec<String> = peers
        .iter()
        .filter_map(|p| {
            let at = outcome.peer(*p).completed_at?;
            let took = joins.as_ref().map(|joins| at.saturating_since(joins[p.0 - 1]));
            match (by, within.zip(took)) {
                (Some(by), _) if at > by => Some(format!("{} completed at {at}", name(*p))),
                (_, Some((within, took))) if took > within => {
                    Some(format!("{} took {:.3} s from its join", name(*p), took.as_secs_f64()))
                }
                _ => None,
            }
        })
        .chain(
            peers
                .iter()
                .filter(|p| outcome.peer(**p).completed_at.is_none())
                .map(|p| format!("{} did not complete", name(*p))),
        )
        .collect();
    let deadline = by.map_or_else(String::new, |by| format!(" by {by}"));
    let from_join = within.map_or_else(String::new, |w| format!(" within {:.3} s of joining", w.as_secs_f64()));
    verdict(format!("{} complete{deadline}{from_join}", list(peers, name)), late.join(", "))
}

fn downloaded_at_most(outcome: &Outcome, peers: &[NodeIdx], copies: f64, name: &dyn Fn(NodeIdx) -> String) -> Verdict {
    let file_bytes = outcome.file_size_bytes.max(1) as f64;
    let over: Vec<String> = peers
        .iter()
        .map(|p| (p, outcome.peer(*p).bytes_down as f64 / file_bytes))
        .filter(|(_, down)| *down > copies)
        .map(|(p, down)| format!("{} downloaded {down:.3} copies", name(*p)))
        .collect();
    verdict(format!("{} each download at most {copies} copies of the file", list(peers, name)), over.join(", "))
}

fn seeder_useful(e: &Efficiency, at_least: f64) -> Verdict {
    let detail = match e.seeder_useful {
        Some(u) if u >= at_least => String::new(),
        Some(u) => format!("{:.1} % was", u * 100.0),
        None => "the seeders uploaded nothing".to_owned(),
    };
    verdict(format!("at least {:.1} % of the seeders' upload is useful", at_least * 100.0), detail)
}

fn not_banned(outcome: &Outcome, peers: &[NodeIdx], name: &dyn Fn(NodeIdx) -> String) -> Verdict {
    let banned: Vec<String> = outcome
        .bans
        .iter()
        .filter(|(_, banned)| peers.contains(banned))
        .map(|(by, banned)| format!("{} banned {}", name(*by), name(*banned)))
        .collect();
    verdict(format!("nobody bans {}", list(peers, name)), banned.join(", "))
}

fn tracker_bounded(outcome: &Outcome, flooders: &[NodeIdx], name: &dyn Fn(NodeIdx) -> String) -> Verdict {
    let over: Vec<String> = outcome
        .floods
        .iter()
        // A flood nothing refused did not reach the quotas: it proves nothing.
        .filter(|((flooder, _), tally)| flooders.contains(flooder) && !(tally.within_quota() && tally.refused > 0))
        .map(|((flooder, tracker), tally)| {
            format!(
                "tracker {tracker} kept {} of {}'s fake files at once, refused {}",
                tally.kept_max,
                name(*flooder),
                tally.refused
            )
        })
        .collect();
    let unseen: Vec<String> = flooders
        .iter()
        .filter(|f| !outcome.floods.keys().any(|(flooder, _)| flooder == *f))
        .map(|f| format!("{} never flooded", name(*f)))
        .collect();
    let expected = format!(
        "trackers refuse part of {}'s flood and keep at most {TRACKER_FILES_PER_IP_MAX} fake files of it",
        list(flooders, name)
    );
    verdict(expected, [over, unseen].concat().join(", "))
}

fn within_bound(e: &Efficiency, factor: f64, p50_factor: Option<f64>) -> Verdict {
    // Validation refuses `within-bound` in a scenario without a bound.
    let t_min = e.bound.as_ref().map_or(f64::NAN, efficiency::Bound::fluid_s);
    let mut expected = format!("every downloader completes within {factor} × T_min ({:.3} s) of joining", t_min);
    let mut missed = Vec::new();
    match e.last_s {
        None => missed.push(format!("{} of {} completed", e.completed, e.downloaders)),
        Some(t) if t > factor * t_min => missed.push(format!("the last took {t:.3} s = {:.2} × T_min", t / t_min)),
        Some(_) => {}
    }
    if let Some(k) = p50_factor {
        expected.push_str(&format!(", the median within {k} × T_min"));
        match e.p50_s {
            None => missed.push("the median never completed".to_owned()),
            Some(t) if t > k * t_min => missed.push(format!("the median took {t:.3} s = {:.2} × T_min", t / t_min)),
            Some(_) => {}
        }
    }
    verdict(expected, missed.join("; "))
}

fn verdict(expected: String, detail: String) -> Verdict {
    Verdict { expected, held: detail.is_empty(), detail }
}

fn and_completed(done: &[String]) -> String {
    if done.is_empty() {
        String::new()
    } else {
        format!("{} completed or wrote the file as complete", done.join(", "))
    }
}

fn source_name(node: NodeIdx, name: &dyn Fn(NodeIdx) -> String) -> String {
    if node == NodeIdx::TRACKER {
        "an unknown address".to_owned()
    } else {
        name(node)
    }
}

/// `A, B, C`, or `L1, L2, L3, … (200 peers)` for long lists.
fn list(peers: &[NodeIdx], name: &dyn Fn(NodeIdx) -> String) -> String {
    const SHOWN_MAX: usize = 4;
    let shown: Vec<String> = peers.iter().take(SHOWN_MAX).map(|p| name(*p)).collect();
    if peers.len() > SHOWN_MAX {
        format!("{}, … ({} peers)", shown.join(", "), peers.len())
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::report::PeerSummary;

    /// S seeds 1 MB at 100 kB/s to L1 and L2 (joining at 2 s): T_min = 2 MB / 200 kB/s = 10 s.
    const CROWD: &str = "end_s = 100\n[network]\nup_bytes_per_s = 100_000\n\
                         [file]\nsize_bytes = 1_000_000\npiece_size_bytes = 16384\n\
                         [[peer]]\nname = \"S\"\nholds = \"all\"\n[[peer]]\nname = \"L\"\ncount = 2\njoin_s = 2\n\
                         [[expect]]\ncheck = \"completes\"\npeers = [\"*\"]\nwithin_s = 12\n\
                         [[expect]]\ncheck = \"within-bound\"\nfactor = 1.2\np50_factor = 1.1\n\
                         [[expect]]\ncheck = \"downloaded-at-most\"\npeers = [\"*\"]\ncopies = 1.05\n\
                         [[expect]]\ncheck = \"not-banned\"\npeers = [\"S\"]\n\
                         [[expect]]\ncheck = \"seeder-useful\"\nat_least = 0.9\n";

    fn run_ending(done_s: [f64; 2], down: [u64; 2], banned_s: bool, up_pieces: u64) -> Vec<bool> {
        let scenario = Scenario::parse(Path::new("t.toml"), CROWD).expect("valid");
        let mut peers = vec![PeerSummary::default()];
        for (at, bytes_down) in done_s.into_iter().zip(down) {
            let completed_at = Some(Time::from_millis((at * 1000.0) as u64));
            peers.push(PeerSummary { completed_at, bytes_down, ..PeerSummary::default() });
        }
        let mut outcome = Outcome { file_size_bytes: 1_000_000, peers, ..Outcome::default() };
        // L1 verified 19 distinct pieces from S (piece 18's block arrived twice): 19 × 16 KiB
        // useful.
        outcome.peers[0].bytes_up = up_pieces * 16_384;
        let (seeder, l1) = (NodeIdx(1), NodeIdx(2));
        for piece in 0..20 {
            outcome.block_arrived(l1, seeder, piece.min(18), 0, 16_384);
        }
        outcome.chunk_sources = (0..20).map(|piece| (l1, piece.min(18), seeder)).collect();
        if banned_s {
            outcome.bans.insert((NodeIdx(2), NodeIdx(1)));
        }
        check(&scenario, &outcome).into_iter().map(|v| v.held).collect()
    }

    #[test]
    fn efficiency_expectations_judge_times_from_join_bytes_down_and_bans() {
        // 10.5 and 11.5 s from the join: within 12 s, last 1.15 × T_min, median 1.05 ×.
        assert_eq!(run_ending([12.5, 13.5], [1_000_000, 1_050_000], false, 20), [true; 6]);
        // 12.5 s from the join: late for within_s and for the 1.2 factor; the median is fine.
        assert_eq!(run_ending([12.5, 14.5], [1_000_000, 1_000_000], false, 20), [false, false, true, true, true, true]);
        // Both at 11.5 s: the median misses 1.1 ×; one downloaded too much; S is banned; S sent
        // 40 pieces of which 19 were useful.
        let verdicts = run_ending([13.5, 13.5], [1_060_000, 1_000_000], true, 40);
        assert_eq!(verdicts, [true, false, false, false, false, true]);
    }
}
