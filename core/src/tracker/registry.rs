//! The tracker's soft state: which peer holds which piece of which file, and when each peer's
//! registration expires.
//!
//! A peer is registered under the tracker connection it announced on ([`ConnId`]): it lives as
//! long as that connection and its TTL, so the connection is its identity here.
//!
//! Invariants (checked by `Registry::check_invariants` after every input in the tests):
//! - a file exists while at least one peer holds it (possibly with an empty bitfield), and a
//!   peer exists while it holds at least one file — memory stays bounded by live announces;
//! - per (file, peer) the tracker keeps one [`Bitfield`] and its [`PeerAddr`], nothing per piece;
//! - `FileEntry::counts[p]` is the number of holdings with piece `p`;
//! - `FileEntry::positions` maps every holding's connection to its index in `holdings`;
//! - `expiries` holds exactly one `(expires_at, conn)` per registered peer.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::bitfield::Bitfield;
use crate::ids::{ConnId, FileId, PieceIndex};
use crate::limits::{FRAME_BYTES_MAX, LIST_FILES_MAX, TRACKER_FILES_MAX, TRACKER_PEERS_MAX};
use crate::manifest::Manifest;
use crate::rng::Rng;
use crate::time::Time;
use crate::wire::{ErrorCode, FileSummary, Message, PeerAddr};

use super::locate;

/// Why the registry refused a request: the code and detail of the `Error` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Refusal {
    /// The error code to send.
    pub(super) code: ErrorCode,
    /// A detail for the remote's logs.
    pub(super) detail: String,
}

impl Refusal {
    fn new(code: ErrorCode, detail: impl Into<String>) -> Refusal {
        Refusal { code, detail: detail.into() }
    }
}

/// Files, their holders, and the peers' expiry times.
#[derive(Debug)]
pub(super) struct Registry {
    files: BTreeMap<FileId, FileEntry>,
    peers: BTreeMap<ConnId, PeerEntry>,
    expiries: BTreeSet<(Time, ConnId)>,
    ttl: Duration,
}

/// One known file: its manifest and one holding per peer that announced it.
#[derive(Debug)]
pub(super) struct FileEntry {
    /// The file's manifest.
    pub(super) manifest: Manifest,
    /// One entry per announcing peer, in no meaningful order (removal swaps the last in).
    pub(super) holdings: Vec<Holding>,
    /// Connection → index into `holdings`.
    pub(super) positions: BTreeMap<ConnId, usize>,
    /// Live holders of each piece.
    pub(super) counts: Vec<u32>,
}

/// What one peer holds of one file.
#[derive(Debug)]
pub(super) struct Holding {
    /// The peer's tracker connection.
    pub(super) conn: ConnId,
    /// Where others reach it.
    pub(super) peer: PeerAddr,
    /// The pieces it holds.
    pub(super) have: Bitfield,
}

/// One registered peer.
#[derive(Debug)]
struct PeerEntry {
    peer: PeerAddr,
    files: BTreeSet<FileId>,
    expires_at: Time,
}

impl Registry {
    /// An empty registry whose peers expire `ttl` after their last announce.
    pub(super) fn new(ttl: Duration) -> Registry {
        Registry { files: BTreeMap::new(), peers: BTreeMap::new(), expiries: BTreeSet::new(), ttl }
    }

    /// When the next peer expires.
    pub(super) fn next_expiry(&self) -> Option<Time> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// Forgets one peer whose TTL ran out by `now`, if any; call until `None`.
    pub(super) fn pop_expired(&mut self, now: Time) -> Option<PeerAddr> {
        let (at, conn) = *self.expiries.first()?;
        if at > now {
            return None;
        }
        let gone = self.forget(conn);
        assert!(gone.is_some(), "an expiry entry always names a registered peer");
        gone
    }

    /// Records that the peer on `conn` holds `have` of `file_id`, registering the file when
    /// `manifest` describes it, and refreshes the peer's TTL. `Ok(true)` on the peer's first
    /// announce of this file.
    pub(super) fn announce(
        &mut self,
        now: Time,
        conn: ConnId,
        peer: PeerAddr,
        file_id: FileId,
        manifest: Option<Manifest>,
        have: Bitfield,
    ) -> Result<bool, Refusal> {
        self.check_announce(conn, file_id, manifest.as_ref(), &have)?;
        let file = match self.files.entry(file_id) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(slot) => match manifest {
                Some(manifest) => slot.insert(FileEntry::new(manifest)),
                // check_announce refused an unknown file without a manifest.
                None => return Err(Refusal::new(ErrorCode::UnknownFile, "unknown file; send the manifest")),
            },
        };
        let first = file.set_holding(conn, peer, have);
        let record = self.peers.entry(conn).or_insert(PeerEntry { peer, files: BTreeSet::new(), expires_at: now });
        record.files.insert(file_id);
        self.expiries.remove(&(record.expires_at, conn));
        record.expires_at = now + self.ttl;
        self.expiries.insert((record.expires_at, conn));
        Ok(first)
    }

    /// Adds `piece` to what the peer on `conn` holds of `file_id`.
    pub(super) fn have(&mut self, conn: ConnId, file_id: FileId, piece: PieceIndex) -> Result<(), Refusal> {
        let Some(file) = self.files.get_mut(&file_id) else {
            return Err(Refusal::new(ErrorCode::BadRequest, "have for an unknown file"));
        };
        if piece.0 >= file.manifest.piece_count() {
            return Err(Refusal::new(ErrorCode::BadRequest, format!("piece {piece} is out of range")));
        }
        let Some(&index) = file.positions.get(&conn) else {
            return Err(Refusal::new(ErrorCode::BadRequest, "have for a file this peer did not announce"));
        };
        if file.holdings[index].have.set(piece) {
            file.counts[piece.as_usize()] += 1;
        }
        Ok(())
    }

    /// Stops listing the peer on `conn` for `file_id`, or for every file when `None`. Returns
    /// the peer when it holds no file any more and is forgotten.
    pub(super) fn leave(&mut self, conn: ConnId, file_id: Option<FileId>) -> Option<PeerAddr> {
        let Some(file_id) = file_id else {
            return self.forget(conn);
        };
        let record = self.peers.get_mut(&conn)?;
        if !record.files.remove(&file_id) {
            return None;
        }
        if record.files.is_empty() {
            return self.forget(conn);
        }
        self.remove_holding(file_id, conn);
        None
    }

    /// Forgets the peer on `conn` for every file; returns it if it was registered.
    pub(super) fn forget(&mut self, conn: ConnId) -> Option<PeerAddr> {
        let record = self.peers.remove(&conn)?;
        self.expiries.remove(&(record.expires_at, conn));
        for file_id in &record.files {
            self.remove_holding(*file_id, conn);
        }
        Some(record.peer)
    }

    /// The `Located` answer for `file_id` as seen by `asker`, or `None` for an unknown file.
    pub(super) fn locate(&self, file_id: FileId, asker: ConnId, rng: &mut Rng) -> Option<Message> {
        let file = self.files.get(&file_id)?;
        let (peers, holders) = locate::select(file, asker, rng);
        Some(Message::Located { manifest: file.manifest.clone(), peers, holders })
    }

    /// The `Files` answer: summaries ordered by file id, bounded in count and encoded size.
    pub(super) fn list(&self) -> Message {
        let budget_bytes = FRAME_BYTES_MAX / 2;
        let mut used_bytes = 0;
        let mut files = Vec::new();
        for (file_id, file) in &self.files {
            // An upper bound on the CBOR size: id, name, numbers, ≤ 5 bytes per piece count.
            let cost_bytes = 128 + file.manifest.name().len() + 5 * file.counts.len();
            if files.len() == LIST_FILES_MAX || used_bytes + cost_bytes > budget_bytes {
                return Message::Files { files, truncated: true };
            }
            used_bytes += cost_bytes;
            files.push(file.summary(*file_id));
        }
        Message::Files { files, truncated: false }
    }

    fn check_announce(
        &self,
        conn: ConnId,
        file_id: FileId,
        manifest: Option<&Manifest>,
        have: &Bitfield,
    ) -> Result<(), Refusal> {
        if manifest.is_some_and(|m| m.file_id() != file_id) {
            return Err(Refusal::new(ErrorCode::BadRequest, "the manifest's id is not the announced file id"));
        }
        let known = self.files.get(&file_id);
        let piece_count = match (known, manifest) {
            (Some(file), _) => file.manifest.piece_count(),
            (None, Some(manifest)) => manifest.piece_count(),
            (None, None) => return Err(Refusal::new(ErrorCode::UnknownFile, "unknown file; send the manifest")),
        };
        if have.len() != piece_count {
            let detail = format!("bitfield has {} bits, the file has {piece_count} pieces", have.len());
            return Err(Refusal::new(ErrorCode::BadRequest, detail));
        }
        if known.is_none() && self.files.len() >= TRACKER_FILES_MAX {
            return Err(Refusal::new(ErrorCode::Overloaded, "the tracker knows too many files"));
        }
        if !self.peers.contains_key(&conn) && self.peers.len() >= TRACKER_PEERS_MAX {
            return Err(Refusal::new(ErrorCode::Overloaded, "the tracker knows too many peers"));
        }
        Ok(())
    }

    fn remove_holding(&mut self, file_id: FileId, conn: ConnId) {
        let Some(file) = self.files.get_mut(&file_id) else { return };
        file.remove_holding(conn);
        if file.holdings.is_empty() {
            self.files.remove(&file_id);
        }
    }

    /// Panics when an invariant of the module docs does not hold (tests only: it is O(state)).
    #[cfg(test)]
    pub(super) fn check_invariants(&self) {
        assert_eq!(self.expiries.len(), self.peers.len());
        for (conn, record) in &self.peers {
            assert!(!record.files.is_empty());
            assert!(self.expiries.contains(&(record.expires_at, *conn)));
            for file_id in &record.files {
                assert!(self.files[file_id].positions.contains_key(conn));
            }
        }
        for file in self.files.values() {
            assert!(!file.holdings.is_empty());
            assert_eq!(file.positions.len(), file.holdings.len());
            for (index, holding) in file.holdings.iter().enumerate() {
                assert_eq!(file.positions[&holding.conn], index);
            }
            for piece in file.manifest.pieces() {
                let holders = file.holdings.iter().filter(|h| h.have.has(piece)).count();
                assert_eq!(file.counts[piece.as_usize()] as usize, holders);
            }
        }
    }
}

impl FileEntry {
    fn new(manifest: Manifest) -> FileEntry {
        let counts = vec![0; manifest.piece_count() as usize];
        FileEntry { manifest, holdings: Vec::new(), positions: BTreeMap::new(), counts }
    }

    /// Sets or replaces the holding of `conn`; true when it is new.
    fn set_holding(&mut self, conn: ConnId, peer: PeerAddr, have: Bitfield) -> bool {
        add_counts(&mut self.counts, &have, 1);
        match self.positions.get(&conn) {
            Some(&index) => {
                let old = std::mem::replace(&mut self.holdings[index].have, have);
                add_counts(&mut self.counts, &old, -1);
                false
            }
            None => {
                self.positions.insert(conn, self.holdings.len());
                self.holdings.push(Holding { conn, peer, have });
                true
            }
        }
    }

    fn remove_holding(&mut self, conn: ConnId) {
        let Some(index) = self.positions.remove(&conn) else { return };
        let removed = self.holdings.swap_remove(index);
        add_counts(&mut self.counts, &removed.have, -1);
        if let Some(moved) = self.holdings.get(index) {
            self.positions.insert(moved.conn, index);
        }
    }

    fn summary(&self, file_id: FileId) -> FileSummary {
        let peer_count = self.holdings.iter().filter(|h| h.have.count() > 0).count();
        FileSummary {
            file_id,
            name: self.manifest.name().to_owned(),
            length_bytes: self.manifest.length_bytes(),
            // Bounded by TRACKER_PEERS_MAX, far below u32::MAX.
            peer_count: peer_count as u32,
            holders_per_piece: self.counts.clone(),
        }
    }
}

/// Adds `sign` (±1) to the count of every piece in `have`.
fn add_counts(counts: &mut [u32], have: &Bitfield, sign: i32) {
    for piece in have.iter() {
        let count = &mut counts[piece.as_usize()];
        // Never underflows: a bitfield is subtracted only after it was added, and counts are
        // bounded by TRACKER_PEERS_MAX so they never overflow.
        *count = count.checked_add_signed(sign).expect("holder counts match the holdings");
    }
}
