//! The tracker's soft state: which peer holds which chunk of which file, and when each peer's
//! registration expires.
//!
//! A peer is registered under the tracker connection it announced on ([`ConnId`]): it lives as
//! long as that connection and its TTL. Files and peers live in slabs and refer to each other by
//! `u32` slot, so the cost of one (peer, file) holding is its bits plus a few words:
//! - per file, the holders' bitfields are packed back to back (`stride` bytes each, in holding
//!   order) in fixed-size chunks of [`HOLDINGS_PER_CHUNK`] holdings, so growing a file never
//!   copies or fragments the arena; beside them, each holding's peer slot;
//! - per peer, `files` lists the file slots it holds with its holding index in each, sorted by
//!   file slot (binary search finds a holding; no per-file map from peer to holding).
//!
//! Invariants (checked by `Registry::check_invariants` after every input in the tests):
//! - a file exists while at least one peer holds it (possibly with an empty bitfield), and a
//!   peer exists while it holds at least one file — memory stays bounded by live announces;
//! - `FileEntry::counts[p]` is the number of holdings with chunk `p`;
//! - the files' `holders` and the peers' `files` lists describe the same holdings:
//!   `(f, i)` in peer `p`'s list if and only if `files[f].holders[i] == p`;
//! - `expiries` holds exactly one `(expires_at, peer slot)` per registered peer;
//! - each peer's `usage`, and `quotas` per source IP, count exactly its holdings (`quotas`).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use slab::Slab;

use crate::bitfield::Bitfield;
use crate::ids::{ChunkIndex, ConnId, FileId};
use crate::limits::{
    FRAME_BYTES_MAX, LIST_FILES_MAX, LOCATED_MANIFEST_BYTES_PER_WINDOW, LOCATED_NAMINGS_PER_PEER_MAX,
    LOCATED_NAMING_WINDOW, LOCATED_PEERS_NAMED_MAX, TRACKER_FILES_MAX, TRACKER_PEERS_MAX,
};
use crate::manifest::Manifest;
use crate::rng::Rng;
use crate::time::Time;
use crate::wire::{ErrorCode, FileSummary, Message, PeerAddr, Role};

use super::answers::Reuse;
use super::locate::{self, Names};
use super::quotas::{Cost, Quotas, Usage};
use super::view::{TrackedFile, TrackedPeer, TrackerView, ViewBounds};

/// Holdings whose bitfields share one allocation of a file's arena.
const HOLDINGS_PER_CHUNK: usize = 16;

/// Why the registry refused a request: the code and detail of the `Error` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Refusal {
    /// The error code to send.
    pub(super) code: ErrorCode,
    /// A detail for the remote's logs.
    pub(super) detail: String,
}

impl Refusal {
    pub(super) fn new(code: ErrorCode, detail: impl Into<String>) -> Refusal {
        Refusal { code, detail: detail.into() }
    }
}

/// Files, their holders, and the peers' expiry times.
#[derive(Debug)]
pub(super) struct Registry {
    files_by_id: BTreeMap<FileId, u32>,
    files: Slab<FileEntry>,
    peers_by_conn: BTreeMap<ConnId, u32>,
    peers: Slab<PeerEntry>,
    expiries: BTreeSet<(Time, u32)>,
    ttl: Duration,
    /// Holder lists recently built per file slot.
    reuse: Reuse,
    /// What each source IP holds.
    quotas: Quotas,
    /// The naming window of `manifest_bytes`, and the manifest bytes answers carried in it
    /// (bounded by [`LOCATED_MANIFEST_BYTES_PER_WINDOW`]).
    manifests_sent: (u64, u64),
}

/// One known file: its manifest and one holding per peer that announced it.
#[derive(Debug)]
pub(super) struct FileEntry {
    /// The file's manifest.
    pub(super) manifest: Manifest,
    /// Bytes per holder bitfield in `bits`.
    stride: usize,
    /// Peer slot of each holding, in no meaningful order (removal swaps the last in).
    holders: Vec<u32>,
    /// The holders' bitfields, `stride` bytes each, in holding order, `HOLDINGS_PER_CHUNK` per
    /// chunk; only the last chunk may be partly used.
    chunks: Vec<Box<[u8]>>,
    /// Live holders of each chunk.
    pub(super) counts: Vec<u32>,
}

/// One registered peer.
#[derive(Debug)]
pub(super) struct PeerEntry {
    conn: ConnId,
    /// Where others reach it.
    pub(super) peer: PeerAddr,
    /// `(file slot, holding index)` of each file it holds, sorted by file slot.
    files: Vec<(u32, u32)>,
    /// What its holdings cost.
    usage: Usage,
    expires_at: Time,
    /// The naming window of `named` (see [`naming_window`]).
    named_in: u64,
    /// Askers it was named to in window `named_in`.
    named: u32,
}

impl PeerEntry {
    /// Whether `select` may name it in naming `window` while other holders of the same chunks
    /// can be named instead: it was named to fewer than [`LOCATED_NAMINGS_PER_PEER_MAX`]
    /// askers in that window.
    pub(super) fn may_be_named(&self, window: u64) -> bool {
        self.named_in != window || self.named < LOCATED_NAMINGS_PER_PEER_MAX
    }

    /// Counts one asker it was named to in naming `window`.
    fn count_naming(&mut self, window: u64) {
        if self.named_in != window {
            (self.named_in, self.named) = (window, 0);
        }
        self.named = self.named.saturating_add(1);
    }
}

/// Whether an answer of naming `window` may carry `manifest`, counting it in `sent` (the
/// window and the manifest bytes sent in it) if so: while fewer than
/// [`LOCATED_MANIFEST_BYTES_PER_WINDOW`] were.
fn spend_manifest(sent: &mut (u64, u64), window: u64, manifest: &Manifest) -> bool {
    if sent.0 != window {
        *sent = (window, 0);
    }
    if sent.1 >= LOCATED_MANIFEST_BYTES_PER_WINDOW {
        return false;
    }
    sent.1 += Cost::of(manifest).manifest_bytes();
    true
}

/// The naming window `now` falls in: [`LOCATED_NAMING_WINDOW`]s since the tracker started.
fn naming_window(now: Time) -> u64 {
    now.as_micros() / duration_micros(LOCATED_NAMING_WINDOW).max(1)
}

impl Registry {
    /// An empty registry whose peers expire `ttl` after their last announce.
    pub(super) fn new(ttl: Duration) -> Registry {
        Registry {
            files_by_id: BTreeMap::new(),
            files: Slab::new(),
            peers_by_conn: BTreeMap::new(),
            peers: Slab::new(),
            expiries: BTreeSet::new(),
            ttl,
            reuse: Reuse::default(),
            quotas: Quotas::default(),
            manifests_sent: (0, 0),
        }
    }

    /// When the next peer expires.
    pub(super) fn next_expiry(&self) -> Option<Time> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// Forgets one peer whose TTL ran out by `now`, if any; call until `None`.
    pub(super) fn pop_expired(&mut self, now: Time) -> Option<PeerAddr> {
        let (at, slot) = *self.expiries.first()?;
        if at > now {
            return None;
        }
        let conn = self.peers[slot as usize].conn;
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
        self.check_announce(conn, peer.addr.ip(), file_id, manifest.as_ref(), &have)?;
        let file_slot = match self.files_by_id.entry(file_id) {
            Entry::Occupied(known) => *known.get(),
            Entry::Vacant(vacant) => match manifest {
                // Slots are bounded by TRACKER_FILES_MAX, far below u32::MAX.
                Some(manifest) => *vacant.insert(self.files.insert(FileEntry::new(manifest)) as u32),
                // check_announce refused an unknown file without a manifest.
                None => return Err(Refusal::new(ErrorCode::UnknownFile, "unknown file; send the manifest")),
            },
        };
        let peer_slot = match self.peers_by_conn.entry(conn) {
            Entry::Occupied(known) => *known.get(),
            Entry::Vacant(vacant) => {
                let record = PeerEntry {
                    conn,
                    peer,
                    files: Vec::new(),
                    usage: Usage::default(),
                    expires_at: now,
                    named_in: 0,
                    named: 0,
                };
                // Slots are bounded by TRACKER_PEERS_MAX, far below u32::MAX.
                let slot = self.peers.insert(record) as u32;
                self.expiries.insert((now, slot));
                *vacant.insert(slot)
            }
        };
        let record = &mut self.peers[peer_slot as usize];
        let at = record.files.binary_search_by_key(&file_slot, |(f, _)| *f);
        let file = &mut self.files[file_slot as usize];
        let first = match at {
            Ok(at) => {
                let index = record.files[at].1 as usize;
                if is_empty(file.holding_bits(index)) && have.count() > 0 {
                    // A peer that held nothing becomes a holder: lists that leave it out go.
                    self.reuse.forget(file_slot);
                }
                file.replace_holding(index, &have);
                false
            }
            Err(at) => {
                // Holdings are bounded by TRACKER_PEERS_MAX, far below u32::MAX.
                let index = file.add_holding(peer_slot, &have) as u32;
                record.files.insert(at, (file_slot, index));
                let cost = Cost::of(&file.manifest);
                record.usage.add(cost);
                self.quotas.add(record.peer.addr.ip(), file_slot, cost);
                self.reuse.forget(file_slot);
                true
            }
        };
        self.expiries.remove(&(record.expires_at, peer_slot));
        record.expires_at = now + self.ttl;
        self.expiries.insert((record.expires_at, peer_slot));
        Ok(first)
    }

    /// Adds `chunk` to what the peer on `conn` holds of `file_id`.
    pub(super) fn have(&mut self, conn: ConnId, file_id: FileId, chunk: ChunkIndex) -> Result<(), Refusal> {
        let Some(&file_slot) = self.files_by_id.get(&file_id) else {
            return Err(Refusal::new(ErrorCode::BadRequest, "have for an unknown file"));
        };
        let file = &mut self.files[file_slot as usize];
        if chunk.0 >= file.manifest.chunk_count() {
            return Err(Refusal::new(ErrorCode::BadRequest, format!("chunk {chunk} is out of range")));
        }
        let index = self.peers_by_conn.get(&conn).and_then(|slot| holding_of(&self.peers[*slot as usize], file_slot));
        let Some(index) = index else {
            return Err(Refusal::new(ErrorCode::BadRequest, "have for a file this peer did not announce"));
        };
        // A peer's first chunk makes it a holder others should hear of at once (downloaders
        // that started together find each other so): lists that leave it out go.
        if is_empty(file.holding_bits(index)) {
            self.reuse.forget(file_slot);
        }
        let file = &mut self.files[file_slot as usize];
        let mask = 0x80u8 >> (chunk.0 % 8);
        let byte = &mut file.holding_bits_mut(index)[chunk.as_usize() / 8];
        if *byte & mask == 0 {
            *byte |= mask;
            file.counts[chunk.as_usize()] += 1;
        }
        Ok(())
    }

    /// Stops listing the peer on `conn` for `file_id`, or for every file when `None`. Returns
    /// the peer when it holds no file any more and is forgotten.
    pub(super) fn leave(&mut self, conn: ConnId, file_id: Option<FileId>) -> Option<PeerAddr> {
        let Some(file_id) = file_id else {
            return self.forget(conn);
        };
        let peer_slot = *self.peers_by_conn.get(&conn)?;
        let file_slot = *self.files_by_id.get(&file_id)?;
        let record = &mut self.peers[peer_slot as usize];
        let at = record.files.binary_search_by_key(&file_slot, |(f, _)| *f).ok()?;
        if record.files.len() == 1 {
            return self.forget(conn);
        }
        let (_, index) = record.files.remove(at);
        record.usage.remove(Cost::of(&self.files[file_slot as usize].manifest));
        let ip = record.peer.addr.ip();
        self.remove_holding(file_slot, index as usize, ip);
        None
    }

    /// Forgets the peer on `conn` for every file; returns it if it was registered.
    pub(super) fn forget(&mut self, conn: ConnId) -> Option<PeerAddr> {
        let peer_slot = self.peers_by_conn.remove(&conn)?;
        let record = self.peers.remove(peer_slot as usize);
        self.expiries.remove(&(record.expires_at, peer_slot));
        for (file_slot, index) in record.files {
            self.remove_holding(file_slot, index as usize, record.peer.addr.ip());
        }
        Some(record.peer)
    }

    /// Drops the holder lists kept for reuse that are too old by `now`.
    pub(super) fn expire_reuse(&mut self, now: Time) {
        self.reuse.expire(now);
    }

    /// The `Located` answer for `file_id` as seen by `asker` (its connection and role), or
    /// `None` for an unknown file. The holders are a list kept for reuse when one suits the
    /// asker (see `answers`), or, for a peer that has not announced the file in a swarm one
    /// answer cannot name whole, a few peers to get the manifest from ([`Names::Few`]); each
    /// peer named counts one naming (see [`PeerEntry::may_be_named`]).
    pub(super) fn locate(
        &mut self,
        now: Time,
        file_id: FileId,
        (asker, role): (ConnId, Role),
        with_manifest: bool,
        rng: &mut Rng,
    ) -> Option<Message> {
        let file_slot = *self.files_by_id.get(&file_id)?;
        let file = &self.files[file_slot as usize];
        let asker_slot = self.peers_by_conn.get(&asker).copied();
        let asker_index = asker_slot.and_then(|slot| holding_of(&self.peers[slot as usize], file_slot));
        let window = naming_window(now);
        let manifest = (with_manifest && spend_manifest(&mut self.manifests_sent, window, &file.manifest))
            .then(|| Box::new(file.manifest.clone()));
        // An asker that has not announced the file does not know its manifest yet (a download
        // announces as soon as it does): it is sent a few peers to get it from, not a reused list.
        let unannounced = role == Role::Peer && asker_index.is_none() && file.holding_count() > LOCATED_PEERS_NAMED_MAX;
        let reused = if unannounced { None } else { self.reuse.get(file_slot, asker_slot) };
        let (holders, slots) = match reused {
            _ if unannounced => locate::select(file, None, &self.peers, window, rng, Names::Few),
            Some(reused) => reused,
            None => {
                let mut fresh = None;
                if self.reuse.wants(file_slot) {
                    let (holders, slots) = locate::select(file, None, &self.peers, window, rng, Names::Full);
                    if asker_slot.is_none_or(|asker| !slots.contains(&asker)) {
                        fresh = Some((holders.clone(), slots.clone()));
                    }
                    self.reuse.insert(now, file_slot, holders, slots);
                }
                fresh.unwrap_or_else(|| locate::select(file, asker_index, &self.peers, window, rng, Names::Full))
            }
        };
        for slot in slots {
            self.peers[slot as usize].count_naming(window);
        }
        Some(Message::Located { file_id, manifest, holders })
    }

    /// Whether some live peer announced `file_id` (its manifest is known).
    pub(super) fn knows(&self, file_id: FileId) -> bool {
        self.files_by_id.contains_key(&file_id)
    }

    /// The `Files` answer: summaries ordered by file id, bounded in count and encoded size.
    pub(super) fn list(&self) -> Message {
        let budget_bytes = FRAME_BYTES_MAX / 2;
        let mut used_bytes = 0;
        let mut files = Vec::new();
        for (file_id, slot) in &self.files_by_id {
            let file = &self.files[*slot as usize];
            // An upper bound on the CBOR size: id, name, numbers, ≤ 5 bytes per chunk count.
            let cost_bytes = 128 + file.manifest.name().len() + 5 * file.counts.len();
            if files.len() == LIST_FILES_MAX || used_bytes + cost_bytes > budget_bytes {
                return Message::Files { files, truncated: true };
            }
            used_bytes += cost_bytes;
            files.push(file.summary(*file_id));
        }
        Message::Files { files, truncated: false }
    }

    /// A view of the registry within `bounds`; see [`TrackerView`].
    pub(super) fn view(&self, bounds: ViewBounds) -> TrackerView {
        let files = self.files_by_id.iter().take(bounds.files_max).map(|(file_id, slot)| {
            let file = &self.files[*slot as usize];
            let chunk_count = file.manifest.chunk_count();
            let mut holders: Vec<(PeerAddr, Bitfield)> = (0..file.holding_count())
                .filter_map(|index| {
                    let bits = Bitfield::from_bytes(chunk_count, file.holding_bits(index))?;
                    Some((self.peers[file.holder(index) as usize].peer, bits))
                })
                .collect();
            holders.sort_by_key(|(peer, _)| (peer.addr, peer.peer_id));
            holders.truncate(bounds.holders_max);
            TrackedFile {
                file_id: *file_id,
                name: file.manifest.name().to_owned(),
                length_bytes: file.manifest.length_bytes(),
                holders_per_piece: holders_per_piece(&file.manifest, &file.counts),
                chunks_per_piece: file.manifest.chunks_per_piece(),
                holders,
                holders_count: file.holding_count(),
            }
        });
        let mut peers: Vec<TrackedPeer> = self
            .peers
            .iter()
            .map(|(_, entry)| TrackedPeer {
                peer: entry.peer,
                files_count: entry.files.len(),
                announced_at: Time::from_micros(entry.expires_at.as_micros().saturating_sub(duration_micros(self.ttl))),
            })
            .collect();
        peers.sort_by_key(|peer| (peer.peer.addr, peer.peer.peer_id));
        peers.truncate(bounds.peers_max);
        TrackerView {
            files: files.collect(),
            files_count: self.files.len(),
            peers,
            peers_count: self.peers.len(),
            holdings_count: self.peers.iter().map(|(_, entry)| entry.files.len()).sum(),
        }
    }

    fn check_announce(
        &self,
        conn: ConnId,
        ip: IpAddr,
        file_id: FileId,
        manifest: Option<&Manifest>,
        have: &Bitfield,
    ) -> Result<(), Refusal> {
        let known_slot = self.files_by_id.get(&file_id).copied();
        let known = known_slot.map(|slot| &self.files[slot as usize]);
        let described = match (known, manifest) {
            (Some(file), _) => &file.manifest,
            (None, Some(manifest)) => manifest,
            (None, None) => return Err(Refusal::new(ErrorCode::UnknownFile, "unknown file; send the manifest")),
        };
        let chunk_count = described.chunk_count();
        if have.len() != chunk_count {
            let detail = format!("bitfield has {} bits, the file has {chunk_count} chunks", have.len());
            return Err(Refusal::new(ErrorCode::BadRequest, detail));
        }
        if known.is_none() && self.files.len() >= TRACKER_FILES_MAX {
            return Err(Refusal::new(ErrorCode::Overloaded, "the tracker knows too many files"));
        }
        let record = self.peers_by_conn.get(&conn).map(|slot| &self.peers[*slot as usize]);
        if record.is_none() && self.peers.len() >= TRACKER_PEERS_MAX {
            return Err(Refusal::new(ErrorCode::Overloaded, "the tracker knows too many peers"));
        }
        let holds = record.zip(known_slot).is_some_and(|(record, slot)| holding_of(record, slot).is_some());
        if !holds {
            let cost = Cost::of(described);
            record.map_or(Usage::default(), |record| record.usage).check(cost)?;
            self.quotas.check(ip, known_slot, cost)?;
        }
        // Last, as the dearest check: hashing a manifest of the most chunks costs more than
        // every check above together, and a flood of announces past a quota never gets here.
        let matches = match (known, manifest) {
            (Some(file), Some(manifest)) => file.manifest == *manifest,
            (None, Some(manifest)) => manifest.file_id() == file_id,
            (_, None) => true,
        };
        if !matches {
            return Err(Refusal::new(ErrorCode::BadRequest, "the manifest's id is not the announced file id"));
        }
        Ok(())
    }

    /// Removes holding `index` of a file, held by a peer at `ip`; the holding moved into its
    /// place gets its new index.
    fn remove_holding(&mut self, file_slot: u32, index: usize, ip: IpAddr) {
        self.reuse.forget(file_slot);
        let file = &mut self.files[file_slot as usize];
        self.quotas.remove(ip, file_slot, Cost::of(&file.manifest));
        if let Some(moved) = file.remove_holding(index) {
            let record = &mut self.peers[moved as usize];
            // A holding's peer lists it: the module's invariant.
            let at =
                record.files.binary_search_by_key(&file_slot, |(f, _)| *f).expect("the moved holder lists the file");
            record.files[at].1 = index as u32;
        }
        if file.holders.is_empty() {
            let removed = self.files.remove(file_slot as usize);
            self.files_by_id.remove(&removed.manifest.file_id());
        }
    }

    /// Panics when an invariant of the module docs does not hold (tests only: it is O(state)).
    #[cfg(test)]
    pub(super) fn check_invariants(&self) {
        assert_eq!(self.expiries.len(), self.peers.len());
        assert_eq!(self.peers_by_conn.len(), self.peers.len());
        assert_eq!(self.files_by_id.len(), self.files.len());
        for (slot, record) in &self.peers {
            assert!(!record.files.is_empty());
            assert!(record.files.windows(2).all(|w| w[0].0 < w[1].0), "sorted by file slot");
            assert_eq!(self.peers_by_conn[&record.conn] as usize, slot);
            assert!(self.expiries.contains(&(record.expires_at, slot as u32)));
            let mut usage = Usage::default();
            for (file_slot, index) in &record.files {
                assert_eq!(self.files[*file_slot as usize].holders[*index as usize] as usize, slot);
                usage.add(Cost::of(&self.files[*file_slot as usize].manifest));
            }
            assert_eq!(record.usage, usage);
            let ip = record.peer.addr.ip();
            let at_ip: usize =
                self.peers.iter().filter(|(_, r)| r.peer.addr.ip() == ip).map(|(_, r)| r.files.len()).sum();
            assert_eq!(self.quotas.holdings(ip) as usize, at_ip);
        }
        let holdings: usize = self.peers.iter().map(|(_, record)| record.files.len()).sum();
        assert_eq!(holdings, self.files.iter().map(|(_, file)| file.holders.len()).sum::<usize>());
        for (_, file) in &self.files {
            assert!(!file.holders.is_empty());
            assert_eq!(file.chunks.len(), file.holders.len().div_ceil(HOLDINGS_PER_CHUNK));
            for chunk in file.manifest.chunks() {
                let holders = (0..file.holders.len()).filter(|i| file.holding_has(*i, chunk)).count();
                assert_eq!(file.counts[chunk.as_usize()] as usize, holders);
            }
        }
    }
}

impl FileEntry {
    fn new(manifest: Manifest) -> FileEntry {
        let counts = vec![0; manifest.chunk_count() as usize];
        let stride = (manifest.chunk_count() as usize).div_ceil(8);
        FileEntry { manifest, stride, holders: Vec::new(), chunks: Vec::new(), counts }
    }

    /// Number of holdings.
    pub(super) fn holding_count(&self) -> usize {
        self.holders.len()
    }

    /// The peer slot of holding `index`.
    pub(super) fn holder(&self, index: usize) -> u32 {
        self.holders[index]
    }

    /// The packed bitfield of holding `index`.
    pub(super) fn holding_bits(&self, index: usize) -> &[u8] {
        let (chunk, range) = locate_holding(self.stride, index);
        &self.chunks[chunk][range]
    }

    fn holding_bits_mut(&mut self, index: usize) -> &mut [u8] {
        let (chunk, range) = locate_holding(self.stride, index);
        &mut self.chunks[chunk][range]
    }

    /// Subtracts the chunks of holding `index` from the per-chunk counts.
    fn uncount(&mut self, index: usize) {
        let (chunk, range) = locate_holding(self.stride, index);
        add_counts(&mut self.counts, &self.chunks[chunk][range], -1);
    }

    /// Whether holding `index` has `chunk`.
    pub(super) fn holding_has(&self, index: usize, chunk: ChunkIndex) -> bool {
        self.holding_bits(index)[chunk.as_usize() / 8] & (0x80 >> (chunk.0 % 8)) != 0
    }

    /// Replaces the bits of holding `index`.
    fn replace_holding(&mut self, index: usize, have: &Bitfield) {
        add_counts(&mut self.counts, have.as_bytes(), 1);
        self.uncount(index);
        self.holding_bits_mut(index).copy_from_slice(have.as_bytes());
    }

    /// Adds a holding for `peer_slot`; returns its index.
    fn add_holding(&mut self, peer_slot: u32, have: &Bitfield) -> usize {
        add_counts(&mut self.counts, have.as_bytes(), 1);
        let index = self.holders.len();
        if index.is_multiple_of(HOLDINGS_PER_CHUNK) {
            self.chunks.push(vec![0u8; self.stride * HOLDINGS_PER_CHUNK].into_boxed_slice());
        }
        self.holders.push(peer_slot);
        self.holding_bits_mut(index).copy_from_slice(have.as_bytes());
        index
    }

    /// Removes holding `index` by moving the last holding into its place; returns the peer slot
    /// of the moved holding, if one moved.
    fn remove_holding(&mut self, index: usize) -> Option<u32> {
        let last = self.holders.len() - 1;
        self.uncount(index);
        if index != last {
            let moved = self.holding_bits(last).to_vec();
            self.holding_bits_mut(index).copy_from_slice(&moved);
        }
        self.holders.swap_remove(index);
        if last.is_multiple_of(HOLDINGS_PER_CHUNK) {
            self.chunks.pop();
        } else {
            self.holding_bits_mut(last).fill(0);
        }
        (index != last).then(|| self.holders[index])
    }

    fn summary(&self, file_id: FileId) -> FileSummary {
        let peer_count = (0..self.holders.len()).filter(|i| self.holding_bits(*i).iter().any(|b| *b != 0)).count();
        FileSummary {
            file_id,
            name: self.manifest.name().to_owned(),
            length_bytes: self.manifest.length_bytes(),
            // Bounded by TRACKER_PEERS_MAX, far below u32::MAX.
            peer_count: peer_count as u32,
            holders_per_piece: holders_per_piece(&self.manifest, &self.counts),
        }
    }
}

/// The holders of each piece of `manifest`: of `per_chunk`, the holders of each chunk, the
/// fewest among the piece's chunks.
fn holders_per_piece(manifest: &Manifest, per_chunk: &[u32]) -> Vec<u32> {
    let per_chunk = |chunk: ChunkIndex| per_chunk.get(chunk.as_usize()).copied().unwrap_or(0);
    manifest.pieces().map(|piece| manifest.chunks_of(piece).map(per_chunk).min().unwrap_or(0)).collect()
}

/// The holding index of `record` in file `file_slot`, if it holds the file.
fn holding_of(record: &PeerEntry, file_slot: u32) -> Option<usize> {
    let at = record.files.binary_search_by_key(&file_slot, |(f, _)| *f).ok()?;
    Some(record.files[at].1 as usize)
}

/// The chunk and byte range of holding `index` in an arena of `stride`-byte bitfields.
fn locate_holding(stride: usize, index: usize) -> (usize, std::ops::Range<usize>) {
    let start = (index % HOLDINGS_PER_CHUNK) * stride;
    (index / HOLDINGS_PER_CHUNK, start..start + stride)
}

/// `span` in whole microseconds, saturating at `u64::MAX`.
fn duration_micros(span: Duration) -> u64 {
    u64::try_from(span.as_micros()).unwrap_or(u64::MAX)
}

/// Whether the packed bits hold no chunk.
pub(super) fn is_empty(bits: &[u8]) -> bool {
    bits.iter().all(|byte| *byte == 0)
}

/// Adds `sign` (±1) to the count of every chunk set in the packed bits `have`.
fn add_counts(counts: &mut [u32], have: &[u8], sign: i32) {
    for (byte_index, &byte) in have.iter().enumerate() {
        let mut rest = byte;
        while rest != 0 {
            let bit = rest.leading_zeros() as usize;
            rest &= !(0x80u8 >> bit);
            let count = &mut counts[byte_index * 8 + bit];
            // Never underflows: bits are subtracted only after they were added, and counts are
            // bounded by TRACKER_PEERS_MAX so they never overflow.
            *count = count.checked_add_signed(sign).expect("holder counts match the holdings");
        }
    }
}
