//! A read-only view of a tracker's registry, for a driver to show (an HTTP API, a chunk map):
//! every file with its holders per chunk, every peer with its address and last announce.
//! Building a view changes nothing; it is bounded by the caller's maxima and ordered (files by
//! id, holders and peers by address), so the same state gives the same view.

use crate::bitfield::Bitfield;
use crate::ids::FileId;
use crate::time::Time;
use crate::wire::PeerAddr;

/// How much of the registry a view may copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewBounds {
    /// Files listed at most.
    pub files_max: usize,
    /// Holders listed at most per file.
    pub holders_max: usize,
    /// Peers listed at most.
    pub peers_max: usize,
}

/// The tracker's files and peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerView {
    /// Files by id, at most [`ViewBounds::files_max`].
    pub files: Vec<TrackedFile>,
    /// Files the tracker knows.
    pub files_count: usize,
    /// Peers by address, at most [`ViewBounds::peers_max`].
    pub peers: Vec<TrackedPeer>,
    /// Peers the tracker knows.
    pub peers_count: usize,
    /// (peer, file) holdings the tracker keeps.
    pub holdings_count: usize,
}

/// One file the tracker knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedFile {
    /// The file.
    pub file_id: FileId,
    /// Its name.
    pub name: String,
    /// Its length.
    pub length_bytes: u64,
    /// Live holders of each piece: the fewest of any of its chunks.
    pub holders_per_piece: Vec<u32>,
    /// Chunks in each piece but possibly the last.
    pub chunks_per_piece: u32,
    /// Holders by address with the chunks each holds, at most [`ViewBounds::holders_max`].
    pub holders: Vec<(PeerAddr, Bitfield)>,
    /// Peers holding (or wanting) the file.
    pub holders_count: usize,
}

/// One registered peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackedPeer {
    /// Its id and address.
    pub peer: PeerAddr,
    /// Files it announced.
    pub files_count: usize,
    /// When it last announced.
    pub announced_at: Time,
}
