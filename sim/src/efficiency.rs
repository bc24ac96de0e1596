//! How close a run came to the fastest possible distribution: the Kumar–Ross lower bound of a
//! scenario ([`bound`]) and a run's figures against it ([`measure`], [`Efficiency`]).
//!
//! **The bound.** It is defined for a flash crowd: the *seeders* are the peers that hold every
//! piece at the start, the *downloaders* the peers with `wants` (N of them), and
//! - every peer holding pieces at the start holds all of them (a seeder), and downloaders hold
//!   none;
//! - no downloader has a leave or crash (a departure changes N mid-run);
//! - every seeder joins no later than the first downloader, and the downloaders' first joins lie
//!   within [`JOIN_SPREAD_FRACTION_MAX`] of the bound of each other (one arrival, give or take).
//!
//! With F the file size, u the upload rate of a peer (the smaller of its link's
//! `up_bytes_per_s` and its `upload_limit_bytes_per_s`), d its link's `down_bytes_per_s`, and
//! u_s the seeders' total upload rate, the fluid bound is
//! `T_min = max(F/u_s, F/d_min, N·F/(u_s + Σu_i))` (Kumar & Ross 2006, with the seeders pooled):
//! the seeders must send every byte once, the slowest downlink must take in the whole file, and
//! the swarm must move N copies with all its uplinks. Seeders that leave early, faults and
//! latency only slow a run down, so it stays a lower bound for them too. The piece-level bound
//! adds the store-and-forward pipeline of the last piece, `⌊log2 N⌋·F/(M·u_max)` for M pieces
//! (Mundinger, Weber & Weiss 2008, whose homogeneous case it is), with u_max the fastest upload
//! among seeders and downloaders (the choice that adds least). The pieces of that pipeline are
//! what a peer verifies and passes on, its chunks (a quarter of a piece, at least 16 KiB; see
//! `p2p_core::manifest::chunk_bytes`), so M counts chunks. An unlimited rate makes its term
//! zero; a scenario where every term is zero has no bound.
//!
//! **The run's figures.** A downloader's completion time is counted from its first join; the
//! last, median (p50) and p99 of them (nearest rank; a downloader that never completed counts as
//! infinitely late) are divided by both bounds. Seeder copies are the seeders' file bytes up / F.
//! A seeder byte is *useful* when it is the first copy of its block to reach a downloader that
//! verified the block's piece (a piece's blocks may come from several senders, each credited
//! with its own); the useful fraction is useful bytes / seeder bytes up, so blocks thrown away,
//! duplicates, pieces never verified and bytes queued but never delivered all count against it. Leecher bytes down / F is given as the
//! maximum and the median over downloaders.
//!
//! **Where the time goes** (diagnostics, not targets):
//! - *every chunk out* is when the downloaders together first held every chunk (each verified by
//!   at least one of them), counted from the first downloader's join. Before it the seeders'
//!   chunks trickle out, and where F/u_s is the bound every second it lies past F/u_s is lost one
//!   for one; after it the last chunks only spread among the downloaders, the part the
//!   piece-level bound's pipeline term allows for;
//! - *uplinks used* is the file bytes all seeders and downloaders sent over what their upload
//!   rates allow from the first downloader's join to the last completion. Where N·F/(u_s + Σu_i)
//!   is the bound, T/T_min is about its inverse (times the bytes sent over N·F): the capacity a
//!   run leaves idle, while few peers hold anything to pass on or while asks wait at a few
//!   holders, is the time it loses;
//! - *hop* is the median time from a downloader verifying a chunk to another downloader
//!   verifying its copy of that chunk from it: what each generation of a chunk's spread takes,
//!   where the pipeline term counts one chunk's upload time at u_max.

use std::collections::BTreeSet;
use std::fmt;

use p2p_core::manifest::chunk_bytes;
use p2p_core::Time;

use crate::report::Outcome;
use crate::scenario::{ActionKind, FileSpec, NodeIdx, PeerSpec, Scenario};

/// The downloaders' first joins must lie within this fraction of the fluid bound of each other
/// for the bound to be defined (completion is counted from each one's join, so a wider spread
/// would let a late joiner finish below the bound).
pub const JOIN_SPREAD_FRACTION_MAX: f64 = 0.1;

/// A scenario's lower bounds on the time to the last completion, term by term (seconds).
#[derive(Clone, Debug, PartialEq)]
pub struct Bound {
    /// N, the downloaders.
    pub downloaders: u32,
    /// F / u_s: the seeders send every byte once.
    pub seeders_s: f64,
    /// F / d_min: the slowest downlink takes in the whole file.
    pub downlink_s: f64,
    /// N·F / (u_s + Σu_i): the swarm moves N copies.
    pub swarm_s: f64,
    /// ⌊log2 N⌋·F/(M·u_max): the last chunk's store-and-forward pipeline (M chunks).
    pub pipeline_s: f64,
}

impl Bound {
    /// The fluid (Kumar–Ross) bound T_min.
    pub fn fluid_s(&self) -> f64 {
        self.seeders_s.max(self.downlink_s).max(self.swarm_s)
    }

    /// The piece-level bound: T_min plus the pipeline term.
    pub fn piece_s(&self) -> f64 {
        self.fluid_s() + self.pipeline_s
    }

    /// The terms for `file` spread from these seeders to these downloaders, whatever the rest of
    /// the scenario does (for a scenario that is not a flash crowd, an estimate of the time its
    /// transfers need rather than a lower bound).
    pub fn of(file: &FileSpec, seeders: &[&PeerSpec], downloaders: &[&PeerSpec]) -> Bound {
        let chunks = file.size_bytes.div_ceil(u64::from(chunk_bytes(file.piece_size_bytes)));
        let f = file.size_bytes as f64;
        let n = downloaders.len() as f64;
        let seeders_up: f64 = seeders.iter().map(|p| upload_rate(p)).sum();
        let downloaders_up: f64 = downloaders.iter().map(|p| upload_rate(p)).sum();
        let down_min = downloaders.iter().map(|p| rate(p.link.down_bytes_per_s)).fold(f64::INFINITY, f64::min);
        let up_max = seeders.iter().chain(downloaders).map(|p| upload_rate(p)).fold(0.0, f64::max);
        let hops = f64::from(downloaders.len().max(1).ilog2());
        Bound {
            downloaders: u32::try_from(downloaders.len()).unwrap_or(u32::MAX),
            seeders_s: f / seeders_up,
            downlink_s: f / down_min,
            swarm_s: n * f / (seeders_up + downloaders_up),
            pipeline_s: hops * f / (chunks as f64 * up_max),
        }
    }
}

/// Why a scenario has no bound.
#[derive(Clone, Debug, PartialEq)]
pub enum NoBound {
    /// No peer holds the whole file at the start.
    NoSeeder,
    /// No peer downloads.
    NoDownloader,
    /// This peer holds some but not all pieces at the start.
    PartialHolder(String),
    /// This downloader leaves or crashes.
    Departs(String),
    /// This seeder joins after the first downloader.
    SeederLate(String),
    /// The downloaders' joins spread over this many seconds, more than the limit.
    JoinSpread {
        /// The spread.
        spread_s: f64,
        /// The largest spread allowed for this scenario.
        allowed_s: f64,
    },
    /// No link or upload limit bounds any term.
    Unlimited,
}

impl fmt::Display for NoBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoBound::NoSeeder => write!(f, "no peer holds the whole file at the start"),
            NoBound::NoDownloader => write!(f, "no peer downloads"),
            NoBound::PartialHolder(name) => write!(f, "{name} holds part of the file at the start"),
            NoBound::Departs(name) => write!(f, "downloader {name} leaves or crashes"),
            NoBound::SeederLate(name) => write!(f, "seeder {name} joins after the first downloader"),
            NoBound::JoinSpread { spread_s, allowed_s } => {
                write!(f, "downloaders join over {spread_s:.3} s, more than {allowed_s:.3} s (not one flash crowd)")
            }
            NoBound::Unlimited => write!(f, "no link or upload limit bounds the transfer"),
        }
    }
}

/// The first join of every peer, indexed like `scenario.peers` (every peer has a join action).
pub fn join_times(scenario: &Scenario) -> Vec<Time> {
    let mut joins = vec![None; scenario.peers.len()];
    for action in &scenario.actions {
        if let ActionKind::Join(node) = action.kind {
            joins[node.0 - 1].get_or_insert(action.at);
        }
    }
    joins.into_iter().map(|at| at.unwrap_or(Time::ZERO)).collect()
}

/// The scenario's bound, or why it has none (see the module docs).
pub fn bound(scenario: &Scenario) -> Result<Bound, NoBound> {
    let pieces = scenario.file.piece_count as usize;
    let joins = join_times(scenario);
    let mut seeders = Vec::new();
    let mut downloaders = Vec::new();
    for (i, peer) in scenario.peers.iter().enumerate() {
        match (peer.wants, peer.holds.len()) {
            (true, 0) => downloaders.push(i),
            (false, n) if n == pieces => seeders.push(i),
            (false, 0) => {}
            _ => return Err(NoBound::PartialHolder(peer.name.clone())),
        }
    }
    if seeders.is_empty() {
        return Err(NoBound::NoSeeder);
    }
    let Some(crowd_first) = downloaders.iter().map(|i| joins[*i]).min() else {
        return Err(NoBound::NoDownloader);
    };
    if let Some(late) = seeders.iter().find(|i| joins[**i] > crowd_first) {
        return Err(NoBound::SeederLate(scenario.peers[*late].name.clone()));
    }
    for action in &scenario.actions {
        if let ActionKind::Leave(node) | ActionKind::Crash(node) = action.kind {
            if downloaders.contains(&(node.0 - 1)) {
                return Err(NoBound::Departs(scenario.peers[node.0 - 1].name.clone()));
            }
        }
    }
    let peers = |list: &[usize]| list.iter().map(|i| &scenario.peers[*i]).collect::<Vec<_>>();
    let terms = Bound::of(&scenario.file, &peers(&seeders), &peers(&downloaders));
    if terms.fluid_s() == 0.0 {
        return Err(NoBound::Unlimited);
    }
    let last_join = downloaders.iter().map(|i| joins[*i]).max().unwrap_or(crowd_first);
    let spread_s = seconds(last_join) - seconds(crowd_first);
    let allowed_s = JOIN_SPREAD_FRACTION_MAX * terms.fluid_s();
    if spread_s > allowed_s {
        return Err(NoBound::JoinSpread { spread_s, allowed_s });
    }
    Ok(terms)
}

/// Whether `peer` is a seeder: it holds the whole file at the start and does not download.
pub fn is_seeder(peer: &PeerSpec, file: &FileSpec) -> bool {
    !peer.wants && peer.holds.len() == file.piece_count as usize
}

/// A peer's upload rate: the smaller of its uplink and its own upload limit.
fn upload_rate(peer: &PeerSpec) -> f64 {
    rate(peer.link.up_bytes_per_s).min(rate(peer.upload_limit_bytes_per_s))
}

fn rate(bytes_per_s: Option<u64>) -> f64 {
    bytes_per_s.map_or(f64::INFINITY, |r| r as f64)
}

fn seconds(at: Time) -> f64 {
    at.as_micros() as f64 / 1e6
}

/// A run's figures against its scenario's bound (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Efficiency {
    /// The scenario's bound, or why it has none.
    pub bound: Result<Bound, NoBound>,
    /// Downloaders in the scenario.
    pub downloaders: usize,
    /// Downloaders that completed.
    pub completed: usize,
    /// Seconds from join to completion of the last downloader (`None`: one never completed).
    pub last_s: Option<f64>,
    /// The median of those times, nearest rank.
    pub p50_s: Option<f64>,
    /// Their 99th percentile, nearest rank.
    pub p99_s: Option<f64>,
    /// The seeders' file bytes up / F (`None` without seeders).
    pub seeder_copies: Option<f64>,
    /// The seeders' useful bytes / their bytes up (`None` without seeders or when they sent
    /// nothing).
    pub seeder_useful: Option<f64>,
    /// The largest downloader bytes down / F.
    pub down_max_copies: Option<f64>,
    /// The median downloader bytes down / F.
    pub down_median_copies: Option<f64>,
    /// Seconds from the first downloader's join until the downloaders together held every
    /// chunk (`None`: some chunk never reached one).
    pub all_out_s: Option<f64>,
    /// The seeders' and downloaders' file bytes up over what their upload rates allow from the
    /// first downloader's join to the last completion (`None`: no bound, an unlimited upload,
    /// or a downloader never completed).
    pub uplinks_used: Option<f64>,
    /// The median seconds from a downloader verifying a chunk to another verifying its copy
    /// from it, nearest rank (`None`: no downloader passed a chunk on).
    pub hop_p50_s: Option<f64>,
}

/// The efficiency figures of `outcome`, a run of `scenario`.
pub fn measure(scenario: &Scenario, outcome: &Outcome) -> Efficiency {
    let file_bytes = scenario.file.size_bytes as f64;
    let joins = join_times(scenario);
    let downloaders: Vec<usize> = (0..scenario.peers.len()).filter(|i| scenario.peers[*i].wants).collect();
    let mut times: Vec<Option<f64>> =
        downloaders.iter().map(|i| outcome.peers[*i].completed_at.map(|at| seconds(at) - seconds(joins[*i]))).collect();
    // `None` (never completed) sorts last, as infinitely late.
    times.sort_by(|a, b| a.unwrap_or(f64::INFINITY).total_cmp(&b.unwrap_or(f64::INFINITY)));
    let mut downs: Vec<f64> = downloaders.iter().map(|i| outcome.peers[*i].bytes_down as f64 / file_bytes).collect();
    downs.sort_by(f64::total_cmp);
    let (seeder_copies, seeder_useful) = seeder_figures(scenario, outcome);
    let first_join = downloaders.iter().map(|i| joins[*i]).min().unwrap_or(Time::ZERO);
    let bound = bound(scenario);
    let last_s = percentile(&times, 1.0).flatten();
    let uplinks_used = bound.as_ref().ok().zip(last_s).and_then(|(_, last_s)| uplinks_used(scenario, outcome, last_s));
    Efficiency {
        bound,
        downloaders: downloaders.len(),
        completed: times.iter().flatten().count(),
        last_s,
        p50_s: percentile(&times, 0.5).flatten(),
        p99_s: percentile(&times, 0.99).flatten(),
        seeder_copies,
        seeder_useful,
        down_max_copies: downs.last().copied(),
        down_median_copies: percentile(&downs, 0.5),
        all_out_s: all_out(outcome).map(|at| seconds(at) - seconds(first_join)),
        uplinks_used,
        hop_p50_s: hop_p50(scenario, outcome),
    }
}

/// When the downloaders together first held every chunk of the file.
fn all_out(outcome: &Outcome) -> Option<Time> {
    let mut first: Vec<Option<Time>> = vec![None; outcome.chunk_count as usize];
    for ((_, chunk, _), at) in outcome.chunk_sources.iter().zip(&outcome.chunk_verified_at) {
        if let Some(slot) = first.get_mut(*chunk as usize) {
            *slot = Some(slot.map_or(*at, |t| t.min(*at)));
        }
    }
    first.into_iter().try_fold(Time::ZERO, |last, at| at.map(|at| last.max(at)))
}

/// The seeders' and downloaders' file bytes up over their upload rates times `last_s`, the
/// seconds from the first downloader's join to the last completion (see the module docs).
fn uplinks_used(scenario: &Scenario, outcome: &Outcome, last_s: f64) -> Option<f64> {
    let (mut bytes, mut rate) = (0, 0.0);
    for (i, peer) in scenario.peers.iter().enumerate() {
        if peer.wants || is_seeder(peer, &scenario.file) {
            bytes += outcome.peers.get(i)?.bytes_up;
            rate += upload_rate(peer);
        }
    }
    let capacity = rate * last_s;
    (capacity.is_finite() && capacity > 0.0).then(|| bytes as f64 / capacity)
}

/// The median time from a downloader verifying a chunk to another verifying the copy it got
/// from that downloader (see the module docs).
fn hop_p50(scenario: &Scenario, outcome: &Outcome) -> Option<f64> {
    let chunks = outcome.chunk_count as usize;
    let passes_on =
        |node: NodeIdx| node != NodeIdx::TRACKER && scenario.peers.get(node.0 - 1).is_some_and(|peer| peer.wants);
    // When each downloader first verified each chunk, by `node * chunks + chunk`: a run
    // verifies every chunk at every downloader, so a table is as small as a map and needs
    // no hashing.
    let mut verified: Vec<Option<Time>> = vec![None; (scenario.peers.len() + 1) * chunks];
    let mut hops = Vec::new();
    for ((node, chunk, from), at) in outcome.chunk_sources.iter().zip(&outcome.chunk_verified_at) {
        let slot = |node: NodeIdx| node.0 * chunks + *chunk as usize;
        if let Some(first) = verified.get_mut(slot(*node)) {
            first.get_or_insert(*at);
        }
        if passes_on(*from) {
            if let Some(Some(held)) = verified.get(slot(*from)) {
                hops.push(seconds(*at) - seconds(*held));
            }
        }
    }
    hops.sort_by(f64::total_cmp);
    percentile(&hops, 0.5)
}

/// The nearest-rank percentile `p` (in 0..=1) of `sorted`.
fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied()
}

/// Seeder copies and useful fraction (see the module docs).
fn seeder_figures(scenario: &Scenario, outcome: &Outcome) -> (Option<f64>, Option<f64>) {
    let file = &scenario.file;
    let is_seeder = |node: NodeIdx| node != NodeIdx::TRACKER && is_seeder(&scenario.peers[node.0 - 1], file);
    let seeders: Vec<NodeIdx> = (0..scenario.peers.len()).map(NodeIdx::peer).filter(|n| is_seeder(*n)).collect();
    if seeders.is_empty() {
        return (None, None);
    }
    let up: u64 = seeders.iter().map(|n| outcome.peer(*n).bytes_up).sum();
    let verified: BTreeSet<(NodeIdx, u32)> =
        outcome.chunk_sources.iter().map(|(node, piece, _)| (*node, *piece)).collect();
    // A stable sort keeps each block's copies in arrival order: the first is its first copy.
    let mut arrivals = outcome.block_arrivals.clone();
    arrivals.sort_by_key(|&(node, piece, offset, _, _)| (node, piece, offset));
    arrivals.dedup_by_key(|&mut (node, piece, offset, _, _)| (node, piece, offset));
    let useful: u64 = arrivals
        .iter()
        .filter(|(node, piece, _, from, _)| is_seeder(*from) && verified.contains(&(*node, *piece)))
        .map(|(_, _, _, _, len)| u64::from(*len))
        .sum();
    let useful = (up > 0).then(|| useful as f64 / up as f64);
    (Some(up as f64 / file.size_bytes as f64), useful)
}

/// The `efficiency:` block of the `p2p-sim` report.
#[derive(Debug)]
pub struct EfficiencyReport<'a>(pub &'a Efficiency);

impl fmt::Display for EfficiencyReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        writeln!(f, "efficiency:")?;
        match &e.bound {
            Ok(b) => writeln!(
                f,
                "  bound: T_min {:.3} s = max(F/u_s {:.3} s, F/d_min {:.3} s, N·F/(u_s+Σu_i) {:.3} s), N {}; \
                 piece-level {:.3} s (+ ⌊log2 N⌋·F/(M·u_max) {:.3} s)",
                b.fluid_s(),
                b.seeders_s,
                b.downlink_s,
                b.swarm_s,
                b.downloaders,
                b.piece_s(),
                b.pipeline_s
            )?,
            Err(why) => writeln!(f, "  bound: n/a ({why})")?,
        }
        let time = |t: Option<f64>| t.map_or_else(|| "-".to_owned(), |t| format!("{t:.3} s"));
        writeln!(
            f,
            "  completion from join: last {}, p50 {}, p99 {} ({} of {} downloaders)",
            time(e.last_s),
            time(e.p50_s),
            time(e.p99_s),
            e.completed,
            e.downloaders
        )?;
        if let Ok(b) = &e.bound {
            let ratios = |t: Option<f64>| {
                t.map_or_else(
                    || "-".to_owned(),
                    |t| format!("{:.2} (piece-level {:.2})", t / b.fluid_s(), t / b.piece_s()),
                )
            };
            writeln!(f, "  T/T_min: last {}, p50 {}, p99 {}", ratios(e.last_s), ratios(e.p50_s), ratios(e.p99_s))?;
        }
        let copies = |c: Option<f64>| c.map_or_else(|| "-".to_owned(), |c| format!("{c:.2}"));
        let percent = |p: Option<f64>| p.map_or_else(|| "-".to_owned(), |p| format!("{:.1} %", p * 100.0));
        match e.seeder_copies {
            Some(up) => writeln!(f, "  seeder: {up:.2} copies up, {} useful", percent(e.seeder_useful))?,
            None => writeln!(f, "  seeder: none (no peer holds the whole file at the start)")?,
        }
        writeln!(
            f,
            "  leecher bytes down / F: max {}, median {}",
            copies(e.down_max_copies),
            copies(e.down_median_copies)
        )?;
        match (e.all_out_s, &e.bound) {
            (Some(out), Ok(b)) => writeln!(
                f,
                "  every chunk out: {out:.3} s after the first join ({:.2} × F/u_s), the last completion {} later",
                out / b.seeders_s,
                e.last_s.map_or_else(|| "-".to_owned(), |last| format!("{:.3} s", last - out))
            )?,
            (Some(out), Err(_)) => writeln!(f, "  every chunk out: {out:.3} s after the first join")?,
            (None, _) => writeln!(f, "  every chunk out: never")?,
        }
        if let Some(used) = e.uplinks_used {
            writeln!(
                f,
                "  uplinks used: {} of the seeders' and downloaders' upload rate, join to last completion",
                percent(Some(used))
            )?;
        }
        match e.hop_p50_s {
            Some(hop) => writeln!(
                f,
                "  hop: a chunk passed on reached the next downloader {hop:.3} s (median) after its holder verified it"
            ),
            None => writeln!(f, "  hop: no downloader passed a chunk on"),
        }
    }
}

/// One row of the efficiency table of a scenario family.
#[derive(Clone, Debug)]
pub struct TableRow {
    /// The scenario's title.
    pub scenario: String,
    /// Its figures.
    pub efficiency: Efficiency,
    /// Expectations that held, of how many.
    pub held: (usize, usize),
}

/// The header of the markdown table [`TableRow`]s are printed in.
pub const TABLE_HEADER: &str = "| scenario | N | T_min | T last | ratio | p50 ratio | piece-level ratio | \
                                seeder copies | seeder useful | leecher bytes/F max | every chunk out / (F/u_s) | \
                                uplinks used | hop p50 | expectations |\n\
                                |:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|";

impl fmt::Display for TableRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.efficiency;
        let fixed = |v: Option<f64>, unit: &str| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}{unit}"));
        let t_min = e.bound.as_ref().ok().map(Bound::fluid_s);
        let ratio = |t: Option<f64>, of: Option<f64>| t.zip(of).map(|(t, of)| t / of);
        let last = e.last_s.map_or_else(|| format!("{}/{} done", e.completed, e.downloaders), |t| format!("{t:.2} s"));
        writeln!(
            f,
            "| {} | {} | {} | {last} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} |",
            self.scenario,
            e.downloaders,
            fixed(t_min, " s"),
            fixed(ratio(e.last_s, t_min), "×"),
            fixed(ratio(e.p50_s, t_min), "×"),
            fixed(ratio(e.last_s, e.bound.as_ref().ok().map(Bound::piece_s)), "×"),
            fixed(e.seeder_copies, ""),
            fixed(e.seeder_useful.map(|u| u * 100.0), " %"),
            fixed(e.down_max_copies, ""),
            fixed(ratio(e.all_out_s, e.bound.as_ref().ok().map(|b| b.seeders_s)), "×"),
            fixed(e.uplinks_used.map(|u| u * 100.0), " %"),
            fixed(e.hop_p50_s, " s"),
            self.held.0,
            self.held.1
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::report::PeerSummary;

    /// 4 MiB in 16 pieces of 256 KiB; seeder S uploads 1 MB/s; four leechers upload 0.5 MB/s
    /// and download 2 MB/s.
    const CROWD: &str = "end_s = 100\n[network]\nup_bytes_per_s = 500_000\ndown_bytes_per_s = 2_000_000\n\
                         [file]\nsize_bytes = 4_194_304\npiece_size_bytes = 262_144\n\
                         [[peer]]\nname = \"S\"\nholds = \"all\"\nup_bytes_per_s = 1_000_000\n\
                         [[peer]]\nname = \"L\"\ncount = 4\njoin_s = 1\n";

    fn scenario(extra: &str) -> Scenario {
        Scenario::parse(Path::new("t.toml"), &format!("{CROWD}{extra}")).expect("valid scenario")
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn flash_crowd_bound_by_hand() {
        let b = bound(&scenario("")).expect("a flash crowd has a bound");
        assert_eq!(b.downloaders, 4);
        assert!(close(b.seeders_s, 4.194_304), "F/u_s = 4194304 / 1e6: {b:?}");
        assert!(close(b.downlink_s, 2.097_152), "F/d = 4194304 / 2e6: {b:?}");
        assert!(close(b.swarm_s, 5.592_405_333), "4·F/(1e6 + 4·0.5e6): {b:?}");
        assert!(close(b.fluid_s(), b.swarm_s));
        assert!(close(b.pipeline_s, 0.131_072), "⌊log2 4⌋ = 2 chunks of 65536 B at u_max 1e6: {b:?}");
        assert!(close(b.piece_s(), 5.592_405_333 + 0.131_072));
    }

    #[test]
    fn upload_limit_and_extra_seeders_change_the_rates() {
        // S's own limit, a quarter of its uplink, makes F/u_s the largest term.
        let capped = Scenario::parse(
            Path::new("t.toml"),
            &CROWD.replace(
                "up_bytes_per_s = 1_000_000\n",
                "up_bytes_per_s = 1_000_000\nupload_limit_bytes_per_s = 250_000\n",
            ),
        )
        .expect("valid");
        let b = bound(&capped).expect("bound");
        assert!(close(b.seeders_s, 16.777_216), "F / 250 kB/s: {b:?}");
        assert!(close(b.fluid_s(), 16.777_216));
        // A second seeder pools its upload with S's.
        let two = scenario("[[peer]]\nname = \"T\"\nholds = \"all\"\nup_bytes_per_s = 1_000_000\n");
        let b = bound(&two).expect("bound");
        assert!(close(b.seeders_s, 2.097_152), "F / 2e6: {b:?}");
        assert!(close(b.swarm_s, 4.194_304), "4·F/(2e6 + 2e6): {b:?}");
    }

    #[test]
    fn the_bound_names_why_it_is_not_defined() {
        let partial = scenario("[[peer]]\nname = \"P\"\nholds = [0]\n");
        assert_eq!(bound(&partial), Err(NoBound::PartialHolder("P".to_owned())));
        let leaves = scenario("[[event]]\ndo = \"leave\"\nat_s = 3\npeer = \"L2\"\n");
        assert_eq!(bound(&leaves), Err(NoBound::Departs("L2".to_owned())));
        let late = scenario("[[peer]]\nname = \"T\"\nholds = \"all\"\njoin_s = 2\n");
        assert_eq!(bound(&late), Err(NoBound::SeederLate("T".to_owned())));
        // T_min 5.59 s allows 0.56 s of spread; a leecher 1 s late breaks it.
        let spread = scenario("[[peer]]\nname = \"X\"\njoin_s = 2\n");
        assert!(matches!(bound(&spread), Err(NoBound::JoinSpread { .. })), "{:?}", bound(&spread));
        let just_in = scenario("[[peer]]\nname = \"X\"\njoin_s = 1.5\n");
        assert!(bound(&just_in).is_ok());
        let free = Scenario::parse(
            Path::new("t.toml"),
            "end_s = 9\n[file]\nsize_bytes = 65536\npiece_size_bytes = 16384\n\
             [[peer]]\nname = \"S\"\nholds = \"all\"\n[[peer]]\nname = \"L\"\n",
        )
        .expect("valid");
        assert_eq!(bound(&free), Err(NoBound::Unlimited));
    }

    fn outcome(scenario: &Scenario, done_s: &[Option<f64>], down: &[u64]) -> Outcome {
        let mut peers = vec![PeerSummary { bytes_up: 4 * 262_144, ..PeerSummary::default() }];
        for (at, bytes_down) in done_s.iter().zip(down) {
            let completed_at = at.map(|s| Time::from_micros((s * 1e6) as u64));
            peers.push(PeerSummary { completed_at, bytes_down: *bytes_down, ..PeerSummary::default() });
        }
        let chunk_count = scenario.file.size_bytes.div_ceil(u64::from(chunk_bytes(scenario.file.piece_size_bytes)));
        let chunk_count = u32::try_from(chunk_count).expect("a small file");
        Outcome { file_size_bytes: scenario.file.size_bytes, chunk_count, peers, ..Outcome::default() }
    }

    #[test]
    fn completion_is_counted_from_join_with_nearest_rank_percentiles() {
        let s = scenario("");
        let f = 4_194_304;
        // Leechers join at 1 s: they take 6, 7, 9 and 11 s.
        let o = outcome(&s, &[Some(8.0), Some(7.0), Some(10.0), Some(12.0)], &[f, f, f + f / 2, 2 * f]);
        let e = measure(&s, &o);
        assert_eq!((e.completed, e.downloaders), (4, 4));
        assert!(close(e.last_s.expect("all done"), 11.0));
        assert!(close(e.p50_s.expect("p50"), 7.0), "rank ⌈0.5·4⌉ = 2: {e:?}");
        assert!(close(e.p99_s.expect("p99"), 11.0), "rank ⌈0.99·4⌉ = 4");
        assert_eq!(e.down_max_copies, Some(2.0));
        assert_eq!(e.down_median_copies, Some(1.0));
        // One never completes: no last, the p99 is infinitely late, the median still defined.
        let o = outcome(&s, &[Some(8.0), None, Some(10.0), Some(4.0)], &[f; 4]);
        let e = measure(&s, &o);
        assert_eq!((e.completed, e.last_s, e.p99_s), (3, None, None));
        assert!(close(e.p50_s.expect("p50"), 7.0), "3, 7, 9, never");
    }

    #[test]
    fn seeder_bytes_count_as_useful_once_per_downloader_and_block_of_a_verified_piece() {
        let s = scenario("");
        let mut o = outcome(&s, &[None; 4], &[0; 4]);
        let (seeder, l1, l2) = (NodeIdx::peer(0), NodeIdx::peer(1), NodeIdx::peer(2));
        let half = 131_072;
        // The seeder sent 4 pieces' worth (1 MiB): piece 0 to L1 twice (only the first copy
        // counts), piece 0 to L2, and half of piece 1 to L2, whose other half came from L1 (the
        // seeder's half counts, though L2 credits L1 with the piece). Piece 2 went to L1, which
        // never verified it.
        o.block_arrived(l1, seeder, 0, 0, 2 * half);
        o.block_arrived(l1, seeder, 0, 0, 2 * half);
        o.block_arrived(l2, seeder, 0, 0, 2 * half);
        o.block_arrived(l2, seeder, 1, 0, half);
        o.block_arrived(l2, l1, 1, half, half);
        o.block_arrived(l1, seeder, 2, 0, half);
        o.chunk_sources = vec![(l1, 0, seeder), (l2, 0, seeder), (l2, 1, l1)];
        let e = measure(&s, &o);
        assert_eq!(e.seeder_copies, Some(0.25));
        assert_eq!(e.seeder_useful, Some(0.625), "2.5 of the 4 pieces sent were useful");
    }

    #[test]
    fn every_chunk_is_out_when_the_last_chunk_first_reached_a_downloader() {
        let s = scenario("");
        let mut o = outcome(&s, &[None; 4], &[0; 4]);
        assert_eq!(o.chunk_count, 64, "16 pieces of four 64 KiB chunks");
        let (seeder, l1, l2) = (NodeIdx::peer(0), NodeIdx::peer(1), NodeIdx::peer(2));
        let at = |s: f64| Time::from_micros((s * 1e6) as u64);
        // Chunks 0 to 62 first reach L1 at 2 s, 2.05 s, ..., 5.1 s; chunk 63 reaches L2 at
        // 5.5 s, before L1 (6 s): the swarm holds every chunk from 5.5 s on, 4.5 s after the
        // leechers joined.
        for chunk in 0..63 {
            o.chunk_sources.push((l1, chunk, seeder));
            o.chunk_verified_at.push(at(2.0 + 0.05 * f64::from(chunk)));
        }
        assert_eq!(measure(&s, &o).all_out_s, None, "chunk 63 reached nobody");
        o.chunk_sources.extend([(l2, 63, seeder), (l1, 63, l2)]);
        o.chunk_verified_at.extend([at(5.5), at(6.0)]);
        let out = measure(&s, &o).all_out_s.expect("every chunk reached a downloader");
        assert!(close(out, 4.5), "{out}");
    }

    #[test]
    fn uplinks_used_is_bytes_up_over_the_upload_rates_until_the_last_completion() {
        let s = scenario("");
        let f = 4_194_304;
        // The leechers join at 1 s and the last completes at 9 s: 8 s at 1 MB/s (S) and
        // 4 × 0.5 MB/s, 24 MB of upload, of which S sent 1 MiB and each leecher 3 MiB.
        let mut o = outcome(&s, &[Some(6.0), Some(7.0), Some(8.0), Some(9.0)], &[f; 4]);
        for peer in &mut o.peers[1..] {
            peer.bytes_up = 3 * 1_048_576;
        }
        let used = measure(&s, &o).uplinks_used.expect("a bound, finite rates, all completed");
        assert!(close(used, 13.0 * 1_048_576.0 / 24e6), "{used}");
        // A downloader that never completed leaves it undefined.
        let o = outcome(&s, &[Some(6.0), None, Some(8.0), Some(9.0)], &[f; 4]);
        assert_eq!(measure(&s, &o).uplinks_used, None);
    }

    #[test]
    fn a_hop_is_counted_from_the_relaying_downloaders_own_verification() {
        let s = scenario("");
        let mut o = outcome(&s, &[None; 4], &[0; 4]);
        let (seeder, l1, l2, l3, l4) =
            (NodeIdx::peer(0), NodeIdx::peer(1), NodeIdx::peer(2), NodeIdx::peer(3), NodeIdx::peer(4));
        let at = |s: f64| Time::from_micros((s * 1e6) as u64);
        assert_eq!(measure(&s, &o).hop_p50_s, None, "nothing passed on");
        // Chunk 0: S → L1 at 2 s (from a seeder: no hop), L1 → L2 at 2.5 s, L2 → L3 at 3.5 s
        // and L1 → L4 at 4 s: hops of 0.5, 1 and 2 s.
        let got = [(l1, seeder, 2.0), (l2, l1, 2.5), (l3, l2, 3.5), (l4, l1, 4.0)];
        for (node, from, t) in got {
            o.chunk_sources.push((node, 0, from));
            o.chunk_verified_at.push(at(t));
        }
        let hop = measure(&s, &o).hop_p50_s.expect("three hops");
        assert!(close(hop, 1.0), "the median of 0.5, 1 and 2 s: {hop}");
    }
}
