//! Per-file state of a peer: the manifest, the verified pieces, and for a download the state of
//! every piece (see `STATE.md`) and how many connected remotes hold each piece.
//!
//! Invariant (checked after every transition in debug builds): a piece is `Have` exactly when
//! its bit is set in `FileEntry::have`, and a piece's assignees hold requests only for blocks
//! that are not yet received.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::bitfield::Bitfield;
use crate::ids::{ConnId, FileId, PeerId, PieceIndex};

use crate::limits::{
    BLOCK_BYTES, HOLDERS_PER_PIECE_MAX, LOCATE_ANSWER_TIMEOUT, LOCATE_INTERVAL, LOCATE_INTERVAL_MAX,
    LOCATE_INTERVAL_SECOND,
};
use crate::manifest::Manifest;
use crate::small::{VecMap, VecSet};
use crate::time::Time;

use super::uploads::Spread;

/// A file the peer shares, downloads, or both.
#[derive(Debug)]
pub(super) struct FileEntry {
    /// The manifest; `None` only for a download whose first `Located` has not arrived.
    pub manifest: Option<Manifest>,
    /// Verified pieces (zero-length until the manifest is known).
    pub have: Bitfield,
    /// Whether the current tracker connection acknowledged an announce of this file.
    pub announced: bool,
    /// Whether `Event::Sharing` was reported (once per file).
    pub sharing_reported: bool,
    /// Download state, while pieces are missing or the file is being finalized.
    pub download: Option<Download>,
    /// Whether the file came from a local share rather than a download: only such a holder
    /// offers its pieces a few at a time (see `offers`).
    pub shared_here: bool,
    /// Offer counts, once the whole file was offered piece by piece to downloaders.
    pub spread: Option<Spread>,
}

/// Where a download stands as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Pieces are being fetched (or waited for).
    Fetching,
    /// Every piece is verified; the driver is moving the file into place.
    Finalizing,
    /// The download stopped for good (e.g. the disk is full).
    Failed,
}

/// A download in progress.
#[derive(Debug)]
pub(super) struct Download {
    /// Where the download stands.
    pub phase: Phase,
    /// One slot per piece (empty until the manifest is known).
    pub slots: Vec<Slot>,
    /// The pieces whose slot is `Missing`, so the piece choice finds them without reading
    /// every slot.
    pub missing: Bitfield,
    /// The pieces whose slot is `Active` with nobody fetching them (see
    /// [`ActivePiece::is_orphan`]), so the piece choice finds them without reading any slot.
    pub orphans: Bitfield,
    /// Connected remotes holding each piece (at most `CONNECTIONS_MAX`, so two bytes each: the
    /// rarest-first scan reads this at random, half the cache lines of four bytes).
    pub availability: Vec<u16>,
    /// Connected remotes that told us their pieces of the file.
    pub holders: u32,
    /// When to ask the tracker again.
    pub next_locate: Time,
    /// The current interval between asks: doubled while pieces keep arriving, reset when
    /// none arrived since the last ask.
    pub locate_interval: Duration,
    /// Whether an answer to an ask arrived.
    pub located: bool,
    /// Verified pieces at the last ask.
    pub have_at_locate: u32,
    /// When the last ask went out, while its answer is awaited (no second ask meanwhile).
    pub locate_awaited: Option<Time>,
    /// Whether the tracker was asked for holders only, the manifest being unknown: they are
    /// asked for it, and the tracker only if that did not work by the next ask.
    pub located_without_manifest: bool,
    /// When a holder was last asked for the manifest.
    pub manifest_asked: Option<Time>,
    /// Pieces last reported missing (reported again only when the set changes).
    pub reported_missing: Vec<PieceIndex>,
    /// `(piece, remote)` pairs that delivered a piece that failed its hash.
    pub bad_sources: BTreeSet<(PieceIndex, PeerId)>,
    /// Pieces in `Slot::Active` or `Slot::Verifying`.
    pub active_count: usize,
}

/// The state of one piece of a download; transitions in `STATE.md`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Slot {
    /// Nobody is fetching it.
    Missing,
    /// Being fetched block by block (boxed: a download has a slot for every piece, few of them
    /// active, and each active one is several times the size of the others).
    Active(Box<ActivePiece>),
    /// Every block is written; its hash is being computed.
    Verifying {
        /// Remotes that sent its blocks (struck if the hash fails).
        senders: VecSet<(PeerId, std::net::SocketAddr)>,
    },
    /// Verified and served.
    Have,
}

/// A piece being fetched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ActivePiece {
    /// Every block of the piece.
    pub all: u64,
    /// Blocks that arrived (and were handed to the driver for writing).
    pub received: u64,
    /// Blocks the driver confirmed written.
    pub written: u64,
    /// Requested blocks per assigned connection (two assignees only in endgame).
    pub assignees: VecMap<ConnId, u64>,
    /// Remotes that sent blocks of this piece.
    pub senders: VecSet<(PeerId, std::net::SocketAddr)>,
}

impl ActivePiece {
    /// A piece of `piece_len` bytes with nothing fetched yet.
    pub fn new(piece_len: u32) -> ActivePiece {
        ActivePiece { all: all_blocks(block_count(piece_len)), ..ActivePiece::default() }
    }

    /// Whether every block arrived.
    pub fn is_received(&self) -> bool {
        self.received == self.all
    }

    /// Whether the piece is partly fetched and nobody is fetching the rest.
    pub fn is_orphan(&self) -> bool {
        self.assignees.is_empty() && !self.is_received()
    }
}

impl FileEntry {
    /// A file shared from a complete or partial local copy.
    pub fn shared(manifest: Manifest, have: Bitfield) -> FileEntry {
        FileEntry {
            manifest: Some(manifest),
            have,
            announced: false,
            sharing_reported: false,
            download: None,
            shared_here: true,
            spread: None,
        }
    }

    /// A download; `resume` is what a store already verified.
    pub fn download(resume: Option<(Manifest, Bitfield)>, now: Time) -> FileEntry {
        let mut download = Download {
            phase: Phase::Fetching,
            slots: Vec::new(),
            missing: Bitfield::new(0),
            orphans: Bitfield::new(0),
            availability: Vec::new(),
            holders: 0,
            next_locate: now,
            locate_interval: LOCATE_INTERVAL,
            located: false,
            have_at_locate: 0,
            locate_awaited: None,
            located_without_manifest: false,
            manifest_asked: None,
            reported_missing: Vec::new(),
            bad_sources: BTreeSet::new(),
            active_count: 0,
        };
        let (manifest, have) = match resume {
            Some((manifest, have)) => {
                download.init_slots(&have);
                (Some(manifest), have)
            }
            None => (None, Bitfield::new(0)),
        };
        FileEntry {
            manifest,
            have,
            announced: false,
            sharing_reported: true,
            download: Some(download),
            shared_here: false,
            spread: None,
        }
    }

    /// Whether the file is still being fetched.
    pub fn is_fetching(&self) -> bool {
        self.download.as_ref().is_some_and(|d| d.phase == Phase::Fetching)
    }
}

impl Download {
    /// Schedules the next ask of the tracker after one made at `now`: later and later while
    /// the download progresses, soon again when it is stuck.
    pub fn plan_next_locate(&mut self, now: Time, have_count: u32) {
        self.locate_interval = if have_count > self.have_at_locate {
            (self.locate_interval * 2).min(LOCATE_INTERVAL_MAX)
        } else {
            LOCATE_INTERVAL
        };
        self.have_at_locate = have_count;
        self.next_locate = now + self.locate_interval;
    }

    /// An answer named `peers` peers. The first answer of a download that names only a few
    /// asks again soon: the tracker names only peers that hold pieces, so downloaders that
    /// started together find each other once their first pieces arrived.
    pub fn on_answer(&mut self, now: Time, peers: usize) {
        if !self.located && peers < HOLDERS_PER_PIECE_MAX {
            self.ask_soon(now);
        }
        self.located = true;
    }

    /// Asks the tracker again [`LOCATE_INTERVAL_SECOND`] from `now` unless an ask is due sooner.
    pub fn ask_soon(&mut self, now: Time) {
        self.next_locate = self.next_locate.min(now + LOCATE_INTERVAL_SECOND);
    }

    /// When the tracker may be asked next: at the planned time, but not while the last ask is
    /// unanswered (unless its answer is overdue).
    pub fn locate_at(&self) -> Time {
        match self.locate_awaited {
            Some(sent) => self.next_locate.max(sent + LOCATE_ANSWER_TIMEOUT),
            None => self.next_locate,
        }
    }

    /// The tracker answered the last ask at `now`: the next ask waits at least
    /// [`LOCATE_INTERVAL`] from here, however long the answer took.
    pub fn locate_answered(&mut self, now: Time) {
        if self.locate_awaited.take().is_some() {
            self.next_locate = self.next_locate.max(now + LOCATE_INTERVAL);
        }
    }

    /// Sizes the per-piece state for a manifest whose verified pieces are `have`.
    pub fn init_slots(&mut self, have: &Bitfield) {
        self.slots =
            (0..have.len()).map(|i| if have.has(PieceIndex(i)) { Slot::Have } else { Slot::Missing }).collect();
        self.missing = Bitfield::full(have.len());
        for piece in have.iter() {
            self.missing.unset(piece);
        }
        self.orphans = Bitfield::new(have.len());
        self.availability = vec![0; have.len() as usize];
    }

    /// Starts fetching `piece` (of `piece_len` bytes) if it is `Missing`.
    pub fn start(&mut self, piece: PieceIndex, piece_len: u32) {
        if self.missing.unset(piece) {
            *self.slot_mut(piece) = Slot::Active(Box::new(ActivePiece::new(piece_len)));
            self.active_count += 1;
        }
    }

    /// `conn` fetches `piece` (which is `Active`) from now on.
    pub fn add_assignee(&mut self, piece: PieceIndex, conn: ConnId) {
        if let Slot::Active(active) = self.slot_mut(piece) {
            active.assignees.insert(conn, 0);
            self.orphans.unset(piece);
        }
    }

    /// `conn` no longer fetches `piece`; the piece is an orphan if nobody else does and blocks
    /// are still missing.
    pub fn remove_assignee(&mut self, piece: PieceIndex, conn: ConnId) {
        if let Some(Slot::Active(active)) = self.slots.get_mut(piece.as_usize()) {
            active.assignees.remove(&conn);
            if active.is_orphan() {
                self.orphans.set(piece);
            }
        }
    }

    /// The slot of `piece` (which the manifest has checked).
    pub fn slot_mut(&mut self, piece: PieceIndex) -> &mut Slot {
        &mut self.slots[piece.as_usize()]
    }

    /// Moves `piece` back to `Missing`, forgetting its partial blocks.
    pub fn reset(&mut self, piece: PieceIndex) {
        let slot = self.slot_mut(piece);
        if matches!(slot, Slot::Active(_) | Slot::Verifying { .. }) {
            *slot = Slot::Missing;
            self.missing.set(piece);
            self.orphans.unset(piece);
            self.active_count -= 1;
        }
    }

    /// Records that a connected remote holds (`+1`) or no longer holds (`-1`) `pieces`.
    pub fn count_holder(&mut self, pieces: &Bitfield, holds: bool) {
        self.holders = if holds { self.holders.saturating_add(1) } else { self.holders.saturating_sub(1) };
        for piece in pieces.iter() {
            if let Some(count) = self.availability.get_mut(piece.as_usize()) {
                *count = if holds { count.saturating_add(1) } else { count.saturating_sub(1) };
            }
        }
    }

    /// Checks the slot/bitfield agreement and the active count.
    pub fn debug_check(&self, have: &Bitfield) {
        if cfg!(debug_assertions) {
            let mut active = 0;
            for (i, slot) in self.slots.iter().enumerate() {
                let piece = PieceIndex(i as u32);
                debug_assert_eq!(matches!(slot, Slot::Have), have.has(piece), "slot/have disagree for {piece}");
                debug_assert_eq!(
                    matches!(slot, Slot::Missing),
                    self.missing.has(piece),
                    "slot/missing disagree for {piece}"
                );
                let orphan = matches!(slot, Slot::Active(a) if a.is_orphan());
                debug_assert_eq!(orphan, self.orphans.has(piece), "slot/orphans disagree for {piece}");
                if let Slot::Active(a) = slot {
                    active += 1;
                    for mask in a.assignees.values() {
                        debug_assert_eq!(mask & a.received, 0, "request outstanding for a received block");
                    }
                }
                active += usize::from(matches!(slot, Slot::Verifying { .. }));
            }
            debug_assert_eq!(active, self.active_count);
        }
    }
}

/// Number of blocks in a piece of `piece_len` bytes.
pub(super) fn block_count(piece_len: u32) -> u32 {
    piece_len.div_ceil(BLOCK_BYTES)
}

/// Offset and length of block `block` of a piece of `piece_len` bytes.
pub(super) fn block_span(piece_len: u32, block: u32) -> (u32, u32) {
    let offset = block * BLOCK_BYTES;
    (offset, (piece_len - offset).min(BLOCK_BYTES))
}

/// Mask with the low `blocks` bits set: every block of a piece.
pub(super) fn all_blocks(blocks: u32) -> u64 {
    if blocks >= 64 {
        u64::MAX
    } else {
        (1u64 << blocks) - 1
    }
}

/// The block index an offset names, if it is a block boundary inside the piece.
pub(super) fn block_at(piece_len: u32, offset: u32) -> Option<u32> {
    (offset.is_multiple_of(BLOCK_BYTES) && offset < piece_len.max(1)).then_some(offset / BLOCK_BYTES)
}

/// Key of one outstanding block request on a connection.
pub(super) type BlockKey = (FileId, PieceIndex, u32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_arithmetic_covers_short_last_blocks() {
        assert_eq!(block_count(BLOCK_BYTES * 2 + 1), 3);
        assert_eq!(block_span(BLOCK_BYTES * 2 + 1, 2), (BLOCK_BYTES * 2, 1));
        assert_eq!(block_count(10), 1);
        assert_eq!(block_span(10, 0), (0, 10));
        assert_eq!(all_blocks(3), 0b111);
        assert_eq!(all_blocks(64), u64::MAX);
        assert_eq!(block_at(BLOCK_BYTES * 2, BLOCK_BYTES), Some(1));
        assert_eq!(block_at(BLOCK_BYTES * 2, 7), None);
        assert_eq!(block_at(BLOCK_BYTES * 2, BLOCK_BYTES * 2), None);
    }
}
