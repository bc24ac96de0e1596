//! What a run leaves behind: the [`Outcome`] (per-peer figures, who sent which chunk, bans,
//! missing-piece reports, broken invariants, the story and the trace digest).
//!
//! Expectations are checked against an outcome, and the binary prints one; nothing here
//! changes a run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use p2p_core::Time;

use crate::adversary::FloodTally;
use crate::scenario::NodeIdx;

/// One line of the readable story.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoryLine {
    /// When.
    pub at: Time,
    /// Who (a node name, or `sim` for scenario actions).
    pub who: String,
    /// What happened.
    pub text: String,
}

impl fmt::Display for StoryLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>9}  {:<8} {}", self.at.to_string(), self.who, self.text)
    }
}

/// Per-peer figures at the end of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSummary {
    /// The peer's name.
    pub name: String,
    /// Verified chunks in its store at the end.
    pub chunks: u32,
    /// File bytes that left its uplink (payload of `Data` frames; not what is still queued).
    pub bytes_up: u64,
    /// File bytes it received.
    pub bytes_down: u64,
    /// When it first completed the file.
    pub completed_at: Option<Time>,
    /// Whether its machine asked for the file to be finalized (written as complete).
    pub finalized: bool,
    /// Whether it was running at the end.
    pub running: bool,
}

/// Everything a run produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The scenario's title.
    pub scenario: String,
    /// The seed the run used.
    pub seed: u64,
    /// The file's size.
    pub file_size_bytes: u64,
    /// The file's chunks (see `p2p_core::Manifest::chunk_bytes`).
    pub chunk_count: u32,
    /// The chunks of each of its pieces but possibly the last.
    pub chunks_per_piece: u32,
    /// Virtual time when the run stopped.
    pub ended_at: Time,
    /// Virtual time of the last completion, if any.
    pub last_completion: Option<Time>,
    /// Events processed (items taken off the queue).
    pub events: u64,
    /// Per peer, in scenario order.
    pub peers: Vec<PeerSummary>,
    /// `(downloader, chunk, source)` for every verified chunk, in the order they were verified
    /// (a list, not a map: a 10,000-peer run verifies 2.5 million chunks).
    pub chunk_sources: Vec<(NodeIdx, u32, NodeIdx)>,
    /// When each entry of `chunk_sources` was verified (same index).
    pub chunk_verified_at: Vec<Time>,
    /// `(downloader, chunk, offset, sender, length)` of every block that reached a downloader,
    /// in arrival order: the first entry of a block at a downloader is its first copy, later
    /// ones are duplicates. Kept as a list (sorted only when measured) because it grows by one
    /// entry per block in every run.
    pub block_arrivals: Vec<(NodeIdx, u32, u32, NodeIdx, u32)>,
    /// `(banner, banned)`.
    pub bans: BTreeSet<(NodeIdx, NodeIdx)>,
    /// The last missing-pieces report of each downloader.
    pub missing: BTreeMap<NodeIdx, Vec<u32>>,
    /// Broken invariants, in words (empty on a healthy run).
    pub violations: Vec<String>,
    /// What each tracker answered each `tracker-flooder`: `(flooder, tracker number)` → tally.
    pub floods: BTreeMap<(NodeIdx, usize), FloodTally>,
    /// Largest number of block requests one connection had outstanding.
    pub requests_in_flight_max: usize,
    /// The readable story.
    pub story: Vec<StoryLine>,
    /// Hex SHA-256 of the trace.
    pub trace_digest: String,
    /// Lines in the trace.
    pub trace_lines: u64,
}

impl Outcome {
    /// The summary of peer `node` (a peer, not the tracker).
    pub fn peer(&self, node: NodeIdx) -> &PeerSummary {
        &self.peers[node.0 - 1]
    }

    /// `len` bytes at `offset` of `chunk` arrived at `node` from `from` (see `block_arrivals`).
    pub fn block_arrived(&mut self, node: NodeIdx, from: NodeIdx, chunk: u32, offset: u32, len: u32) {
        self.block_arrivals.push((node, chunk, offset, from, len));
    }
}

/// The per-peer summary table.
#[derive(Debug)]
pub struct SummaryTable<'a>(pub &'a Outcome);

impl fmt::Display for SummaryTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = self.0;
        writeln!(
            f,
            "{:<10} {:>7} {:>12} {:>12} {:>10}  state",
            "peer", "chunks", "bytes up", "bytes down", "complete"
        )?;
        for p in &outcome.peers {
            let done = p.completed_at.map_or_else(|| "-".to_owned(), |t| t.to_string());
            let state = if p.running { "running" } else { "gone" };
            let chunks = format!("{}/{}", p.chunks, outcome.chunk_count);
            writeln!(f, "{:<10} {:>7} {:>12} {:>12} {:>10}  {state}", p.name, chunks, p.bytes_up, p.bytes_down, done)?;
        }
        Ok(())
    }
}
