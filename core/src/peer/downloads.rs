//! The chunk book of one download: the state of every chunk (`Slot`, transitions in
//! `STATE.md`), who fetches and who sent which blocks, how many connected remotes hold each
//! chunk, which remotes are proven bad for which chunk, and where the download stands as a
//! whole.
//!
//! Blame only the guilty: every block's sender is recorded. A chunk that fails its hash with a
//! sole sender proves that sender bad. A chunk with several senders blames nobody at once: it
//! goes on parole — the blocks of one suspect (the sender of the fewest) are fetched again,
//! from others while anyone else holds the chunk, the rest kept. If it then verifies, the
//! suspect's blocks were the bad ones (the kept blocks did not change and are now proven good):
//! the suspect is proven bad. If it fails again, the next suspect goes on parole, at most
//! `PAROLE_ROUNDS_MAX` times before the chunk starts over. An honest sender is never proven
//! bad, whoever else sends what and when.
//!
//! The state is private; the scheduler and the links change it only through the transition
//! methods below, and read it through the choice methods (`next_block`, `choose`).
//!
//! Invariant (checked after every chunk transition in debug builds): a chunk is `Have` exactly
//! when its bit is set in the file's verified bitfield, `missing` and `orphans` mirror the
//! slots, and a chunk's assignees hold requests only for blocks that are not yet received.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::bitfield::Bitfield;
use crate::ids::{ChunkIndex, ConnId, PeerId};
use crate::limits::{
    ASSIGNEES_PER_CHUNK_MAX, CHUNKS_ACTIVE_PER_FILE_MAX, ENDGAME_PATIENCE, LOCATE_INTERVAL, PAROLE_ROUNDS_MAX,
};
use crate::rng::Rng;
use crate::small::{VecMap, VecSet};
use crate::time::Time;

use super::chunks::all_blocks;
use super::locate::Locate;
use super::scheduler::DeliveryRate;

/// A remote that sends blocks: its id and serving address.
pub(super) type Sender = (PeerId, SocketAddr);

/// Who sent which blocks of a chunk (a block mask per sender).
pub(super) type Senders = VecMap<Sender, u64>;

/// Where a download stands as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Chunks are being fetched (or waited for).
    Fetching,
    /// Fetching is paused (`control`): nothing is requested until it resumes.
    Paused,
    /// Every chunk is verified; the driver is moving the file into place.
    Finalizing,
    /// The download stopped for good (e.g. the disk is full).
    Failed,
}

/// Chunks from which a download keeps its chunks by availability (`Download::rarity`). The
/// rarest-first choice reads every chunk the remote holds and we miss, so over a download it
/// costs the square of the chunk count: negligible for a few hundred chunks, where walking the
/// levels costs more than it saves, but most of a downloader's work at 16,384 chunks.
const RARITY_LEVELS_PIECES_MIN: u32 = 2048;

/// A download in progress.
#[derive(Debug)]
pub(super) struct Download {
    phase: Phase,
    /// One slot per chunk (empty until the manifest is known).
    slots: Vec<Slot>,
    /// The chunks whose slot is `Missing`, so the chunk choice finds them without reading
    /// every slot.
    missing: Bitfield,
    /// The chunks whose slot is `Active` with nobody fetching them (see
    /// [`ActiveChunk::is_orphan`]), so the chunk choice finds them without reading any slot.
    orphans: Bitfield,
    /// Connected remotes holding each chunk (at most `CONNECTIONS_MAX`, so two bytes each: the
    /// rarest-first scan reads this at random, half the cache lines of four bytes).
    availability: Vec<u16>,
    /// For a file of at least [`RARITY_LEVELS_PIECES_MIN`] chunks, the chunks by availability:
    /// `rarity[a]` holds those `a` connected remotes hold, so the rarest-first choice counts a
    /// level's chunks 64 at a time instead of reading every chunk's count (empty for smaller
    /// files). At most one level per connection the file can have, plus level 0.
    rarity: Vec<Bitfield>,
    /// Connected remotes that told us their chunks of the file.
    holders: u32,
    /// `(chunk, remote)` pairs: the remote alone sent every block of a copy of the chunk that
    /// failed its hash; it is not asked for that chunk again.
    bad_sources: BTreeSet<(ChunkIndex, PeerId)>,
    /// Chunks in `Slot::Active` or `Slot::Verifying`.
    active_count: usize,
    /// Whether a chunk was ever put on parole: until one is, no slot is read for a suspect
    /// (the chunk choice would read an active chunk's boxed state per orphan it looks at).
    paroled: bool,
    /// When to ask the tracker for holders.
    locate: Locate,
    /// When a holder was last asked for the manifest.
    manifest_asked: Option<Time>,
    /// Chunks last reported missing (reported again only when the set changes).
    reported_missing: Vec<ChunkIndex>,
    /// How fast blocks arrive over all remotes together, and when the last one did.
    arrivals: DeliveryRate,
    arrived_at: Option<Time>,
}

/// The state of one chunk of a download; transitions in `STATE.md`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Slot {
    /// Nobody is fetching it.
    Missing,
    /// Being fetched block by block (boxed: a download has a slot for every chunk, few of them
    /// active, and each active one is several times the size of the others).
    Active(Box<ActiveChunk>),
    /// Every block is written; its hash is being computed (boxed for the same reason: a slot
    /// is two words, and a scale run holds millions of them).
    Verifying(Box<Verifying>),
    /// Verified and served.
    Have,
}

const _: () = assert!(std::mem::size_of::<Slot>() <= 16, "a slot stays two words");

/// A chunk whose every block is written, being hashed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Verifying {
    /// Every block of the chunk.
    all: u64,
    /// Who sent which of its blocks.
    senders: Senders,
    /// The suspect whose blocks were fetched again, if the chunk is on parole.
    parole: Option<Parole>,
}

/// A chunk being fetched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ActiveChunk {
    /// Every block of the chunk.
    all: u64,
    /// Blocks that arrived (and were handed to the driver for writing).
    received: u64,
    /// Blocks the driver confirmed written.
    written: u64,
    /// Requested blocks per assigned connection (two assignees only in endgame).
    assignees: VecMap<ConnId, u64>,
    /// Who sent which blocks of this chunk.
    senders: Senders,
    /// Set while the chunk is on parole: an earlier attempt failed with several senders.
    parole: Option<Parole>,
}

/// A chunk that failed its hash with several senders, fetched again without one suspect's
/// blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Parole {
    /// The sender whose blocks were dropped; not asked for this chunk while on parole, unless
    /// nobody else connected holds it.
    suspect: Sender,
    /// Senders put on parole for this chunk so far (each once).
    tried: VecSet<PeerId>,
}

impl ActiveChunk {
    fn new(blocks: u32) -> ActiveChunk {
        ActiveChunk { all: all_blocks(blocks), ..ActiveChunk::default() }
    }

    fn is_received(&self) -> bool {
        self.received == self.all
    }

    /// Whether the chunk is partly fetched and nobody is fetching the rest.
    fn is_orphan(&self) -> bool {
        self.assignees.is_empty() && !self.is_received()
    }
}

/// A chunk chosen for a remote, and whether it joins another remote's work (endgame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Choice {
    /// Nobody fetches it: an orphan (maybe on parole), or the rarest missing chunk.
    Fresh(ChunkIndex),
    /// Another remote fetches it and nothing else is left to start.
    Endgame(ChunkIndex),
}

/// What a remote asking for chunks brings to the choice.
#[derive(Clone, Copy, Debug)]
pub(super) struct Chooser<'a> {
    /// Its connection.
    pub conn: ConnId,
    /// Its id (chunks it delivered corrupt are not asked of it again).
    pub peer_id: PeerId,
    /// The chunks it holds.
    pub have: &'a Bitfield,
    /// Whether it has requests of ours in flight.
    pub busy: bool,
}

/// What a block arriving for a chunk being fetched changed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Another remote delivered it first: nothing to write.
    Duplicate,
    /// Taken: to be written.
    Taken {
        /// Other remotes whose request for the same block is cancelled (endgame).
        losers: Vec<ConnId>,
        /// When this was the chunk's last block: every remote that was fetching the chunk.
        released: Vec<ConnId>,
    },
}

/// The hash of a chunk that was verifying.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// It matches: the chunk is `Have`.
    Verified {
        /// Who sent its blocks.
        senders: Senders,
        /// Whether a chunk may start again: the download was at `CHUNKS_ACTIVE_PER_FILE_MAX`.
        room_again: bool,
        /// The suspect of the parole it was on: its earlier blocks are proven bad.
        guilty: Option<Sender>,
    },
    /// It does not match: the chunk is fetched again, whole (`Missing`, after a sole sender
    /// or too many rounds) or on parole (`Active` without one suspect's blocks).
    Corrupt {
        /// Who sent its blocks.
        senders: Senders,
        /// The sole sender, proven bad; it is not asked for this chunk again.
        guilty: Option<Sender>,
    },
}

impl Download {
    /// A download whose manifest is not known yet; the first ask of the tracker is due at `now`.
    pub fn new(now: Time) -> Download {
        Download {
            phase: Phase::Fetching,
            slots: Vec::new(),
            missing: Bitfield::new(0),
            orphans: Bitfield::new(0),
            availability: Vec::new(),
            rarity: Vec::new(),
            holders: 0,
            bad_sources: BTreeSet::new(),
            active_count: 0,
            paroled: false,
            locate: Locate::new(now),
            manifest_asked: None,
            reported_missing: Vec::new(),
            arrivals: DeliveryRate::default(),
            arrived_at: None,
        }
    }

    /// `bytes` of a block arrived at `now`, from any remote.
    pub fn arrived(&mut self, now: Time, bytes: u64) {
        self.arrivals.start(now);
        self.arrivals.arrived(now, bytes);
        self.arrived_at = Some(now);
    }

    /// Whether every chunk still missing is being fetched (none is left to start): the
    /// stretch where a fetcher that lags holds up the whole download (endgame).
    pub fn nothing_to_start(&self) -> bool {
        self.phase == Phase::Fetching && !self.missing.any() && self.active_count > 0
    }

    /// Whether blocks stopped arriving at `now`: none came from any remote for two blocks of
    /// `block_bytes` at the download's measured rate, or for [`ENDGAME_PATIENCE`] before a
    /// rate is measured. While blocks keep coming the downlink is busy, and a second copy of a
    /// chunk (endgame) would only take a share of it from the chunks under way.
    pub fn quiet(&self, now: Time, block_bytes: u32) -> bool {
        let blocks_time = (2 * u64::from(block_bytes) * 1_000_000)
            .checked_div(self.arrivals.bytes_per_s())
            .map_or(ENDGAME_PATIENCE, Duration::from_micros);
        self.arrived_at.is_none_or(|at| at + blocks_time <= now)
    }

    /// Sizes the per-chunk state for a manifest whose verified chunks are `have`.
    pub fn init_slots(&mut self, have: &Bitfield) {
        self.slots =
            (0..have.len()).map(|i| if have.has(ChunkIndex(i)) { Slot::Have } else { Slot::Missing }).collect();
        self.missing = Bitfield::full(have.len());
        for chunk in have.iter() {
            self.missing.unset(chunk);
        }
        self.orphans = Bitfield::new(have.len());
        self.availability = vec![0; have.len() as usize];
        self.rarity =
            if have.len() >= RARITY_LEVELS_PIECES_MIN { vec![Bitfield::full(have.len())] } else { Vec::new() };
    }

    /// Where the download stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Every chunk is verified: the file is being moved into place.
    pub fn finalizing(&mut self) {
        self.phase = Phase::Finalizing;
    }

    /// Fetching pauses; false unless the download was fetching.
    pub fn pause(&mut self) -> bool {
        let fetching = self.phase == Phase::Fetching;
        if fetching {
            self.phase = Phase::Paused;
        }
        fetching
    }

    /// Fetching resumes; false unless the download was paused.
    pub fn resume(&mut self) -> bool {
        let paused = self.phase == Phase::Paused;
        if paused {
            self.phase = Phase::Fetching;
        }
        paused
    }

    /// The download stops for good; false if it already had.
    pub fn fail(&mut self) -> bool {
        let first = self.phase != Phase::Failed;
        self.phase = Phase::Failed;
        first
    }

    /// The tracker-ask schedule.
    pub fn locate(&self) -> &Locate {
        &self.locate
    }

    /// The tracker-ask schedule, to record an ask or an answer.
    pub fn locate_mut(&mut self) -> &mut Locate {
        &mut self.locate
    }

    /// Whether a holder may be asked for the manifest at `now`: not if another was asked within
    /// the last [`LOCATE_INTERVAL`] (one answer is enough). Records the ask when it may.
    pub fn ask_manifest(&mut self, now: Time) -> bool {
        if self.manifest_asked.is_some_and(|at| at + LOCATE_INTERVAL > now) {
            return false;
        }
        self.manifest_asked = Some(now);
        true
    }

    /// A remote refused us while the manifest was asked: another may be asked at once.
    /// Returns whether an ask was outstanding.
    pub fn manifest_refused(&mut self) -> bool {
        self.manifest_asked.take().is_some()
    }

    /// The chunks of `wanted` nobody holds, when they differ from those last reported.
    pub fn newly_missing(&mut self, wanted: &[(ChunkIndex, Vec<SocketAddr>)]) -> Option<Vec<ChunkIndex>> {
        let missing: Vec<ChunkIndex> = wanted
            .iter()
            .filter(|(chunk, addrs)| addrs.is_empty() && self.availability[chunk.as_usize()] == 0)
            .map(|(chunk, _)| *chunk)
            .collect();
        if missing == self.reported_missing {
            return None;
        }
        self.reported_missing = missing.clone();
        (!missing.is_empty()).then_some(missing)
    }

    /// Connected remotes that told us their chunks of the file.
    pub fn holders(&self) -> u32 {
        self.holders
    }

    /// Records that a connected remote holds (`+1`) or no longer holds (`-1`) `chunks`.
    pub fn count_holder(&mut self, chunks: &Bitfield, holds: bool) {
        self.holders = if holds { self.holders.saturating_add(1) } else { self.holders.saturating_sub(1) };
        for chunk in chunks.iter() {
            if let Some(&count) = self.availability.get(chunk.as_usize()) {
                self.set_availability(chunk, if holds { count.saturating_add(1) } else { count.saturating_sub(1) });
            }
        }
    }

    /// Sets `chunk`'s count of holders (an existing chunk) and moves it to that level.
    fn set_availability(&mut self, chunk: ChunkIndex, count: u16) {
        let old = std::mem::replace(&mut self.availability[chunk.as_usize()], count);
        if old == count || self.rarity.is_empty() {
            return;
        }
        self.rarity[usize::from(old)].unset(chunk);
        let chunks = self.slots.len() as u32;
        if self.rarity.len() <= usize::from(count) {
            self.rarity.resize_with(usize::from(count) + 1, || Bitfield::new(chunks));
        }
        self.rarity[usize::from(count)].set(chunk);
    }

    /// How many connected remotes told us they hold `chunk` (the rarity count the upload side
    /// orders its reads by, kept here as bitfields change).
    pub fn availability(&self, chunk: ChunkIndex) -> usize {
        self.availability.get(chunk.as_usize()).map_or(0, |count| usize::from(*count))
    }

    /// A remote told us of more chunks it holds (`first`: the first we hear of it for this
    /// file). Returns whether we want any of them.
    pub fn count_new_chunks(&mut self, first: bool, chunks: &[ChunkIndex]) -> bool {
        self.holders += u32::from(first);
        let mut wanted = false;
        for chunk in chunks {
            self.set_availability(*chunk, self.availability[chunk.as_usize()].saturating_add(1));
            wanted |= self.missing.has(*chunk) || self.orphans.has(*chunk);
        }
        wanted
    }

    /// A remote turned out not to serve `chunk` after all.
    pub fn count_lost_chunk(&mut self, chunk: ChunkIndex) {
        if let Some(&count) = self.availability.get(chunk.as_usize()) {
            self.set_availability(chunk, count.saturating_sub(1));
        }
    }

    /// Whether `chunk` may be started from `peer_id`: it is missing (nobody fetches it), a
    /// chunk may start, and `peer_id` is not proven bad for it.
    pub fn may_start(&self, chunk: ChunkIndex, peer_id: PeerId) -> bool {
        self.missing.has(chunk)
            && self.active_count < CHUNKS_ACTIVE_PER_FILE_MAX
            && !self.bad_sources.contains(&(chunk, peer_id))
    }

    /// Whether `chunk` exists and is being fetched.
    pub fn is_active(&self, chunk: ChunkIndex) -> bool {
        matches!(self.slots.get(chunk.as_usize()), Some(Slot::Active(_)))
    }

    /// A block of a chunk assigned to `conn` (among `assigned`) that nobody received and `conn`
    /// has not requested; outside endgame also one no other remote requested.
    pub fn next_block(&self, conn: ConnId, assigned: impl Iterator<Item = ChunkIndex>) -> Option<(ChunkIndex, u32)> {
        for chunk in assigned {
            let Some(Slot::Active(active)) = self.slots.get(chunk.as_usize()) else { continue };
            let mine = active.assignees.get(&conn).copied().unwrap_or(0);
            let others = active.assignees.iter().filter(|(c, _)| **c != conn).fold(0, |acc, (_, m)| acc | m);
            let endgame = active.assignees.len() > 1;
            let taken = active.received | mine | if endgame { 0 } else { others };
            let free = active.all & !taken;
            if free != 0 {
                return Some((chunk, free.trailing_zeros()));
            }
        }
        None
    }

    /// Rarest-first choice of a chunk the remote holds, among chunks nobody is fetching; else
    /// an endgame chunk someone else is fetching, only one whose every fetcher is `lagging`
    /// (clearly slower than the remote asking could be; `None` when none can be, as while
    /// the download is not quiet). `have` is what we verified.
    pub fn choose(
        &self,
        remote: Chooser<'_>,
        have: &Bitfield,
        rng: &mut Rng,
        lagging: Option<impl Fn(ConnId) -> bool>,
    ) -> Option<Choice> {
        // A suspect on parole fetches its chunk again only when nobody else connected holds it:
        // the proof does not depend on who sends the dropped blocks again, only the waste does.
        let usable = |chunk: ChunkIndex| {
            let sole_holder = self.availability[chunk.as_usize()] <= 1;
            !self.bad_sources.contains(&(chunk, remote.peer_id))
                && (sole_holder || self.suspect(chunk) != Some(remote.peer_id))
        };
        // Orphaned partial chunks first, then the rarest missing chunk; one draw among the ties
        // (a draw per tie would cost more than the scan). Only chunks the remote holds can be
        // chosen: walk just those, with the orphans and the missing chunks as bitfields. The
        // ties are counted, then walked again to the one drawn, rather than collected.
        let orphans = || remote.have.iter_and(&self.orphans).filter(|p| usable(*p));
        let orphan_count = orphans().count();
        if orphan_count > 0 {
            return orphans().nth(rng.below(orphan_count)).map(Choice::Fresh);
        }
        if self.active_count < CHUNKS_ACTIVE_PER_FILE_MAX {
            if let Some(choice) = self.rarest_missing(&remote, rng) {
                return Some(choice);
            }
        }
        // Endgame only once no chunk is left to start, only for a remote with nothing else to
        // do, one duplicate chunk at a time, and only of a chunk whose fetchers lag: otherwise
        // it would only fetch twice what is already on its way (a copy already read at the
        // uploader is not recalled by a `Cancel`).
        // Without `lagging` no fetcher lags, so only a chunk nobody fetches could be taken: an
        // orphan, which the first look above already refused. The scan would find nothing.
        let lagging = lagging?;
        let endgame = self.started_held(&remote, have)?.find(|chunk| match &self.slots[chunk.as_usize()] {
            Slot::Active(active) => {
                !active.is_received()
                    && active.assignees.len() < ASSIGNEES_PER_CHUNK_MAX
                    && !active.assignees.contains_key(&remote.conn)
                    && active.assignees.keys().all(|c| lagging(*c))
                    && usable(*chunk)
            }
            _ => false,
        });
        endgame.map(Choice::Endgame)
    }

    /// A chunk to take from a slower fetcher for `remote`, idle, once no chunk it holds is left
    /// to start: one it holds that a single other remote fetches, for which `outpaced` holds;
    /// with that fetcher.
    pub fn outpaced_fetch(
        &self,
        remote: &Chooser<'_>,
        have: &Bitfield,
        outpaced: impl Fn(ConnId, ChunkIndex) -> bool,
    ) -> Option<(ChunkIndex, ConnId)> {
        self.started_held(remote, have)?.find_map(|chunk| {
            let Slot::Active(active) = &self.slots[chunk.as_usize()] else { return None };
            let mut fetchers = active.assignees.keys();
            let (Some(&fetcher), None) = (fetchers.next(), fetchers.next()) else { return None };
            (!active.is_received() && fetcher != remote.conn && outpaced(fetcher, chunk)).then_some((chunk, fetcher))
        })
    }

    /// The rarest missing chunk `remote` holds, one random draw among the ties (in ascending
    /// order); `None` when it holds none we miss.
    fn rarest_missing(&self, remote: &Chooser<'_>, rng: &mut Rng) -> Option<Choice> {
        if !self.rarity.is_empty() && self.bad_sources.is_empty() {
            // The levels from the rarest up: the first holding a missing chunk of the remote's
            // gives the ties, counted and then found 64 chunks at a time.
            for level in &self.rarity {
                let ties = remote.have.count_and_and(&self.missing, level);
                if ties > 0 {
                    let nth = rng.below(ties as usize) as u32;
                    return remote.have.nth_and_and(&self.missing, level, nth).map(Choice::Fresh);
                }
            }
            return None;
        }
        // A missing chunk is on no parole (only an active one is): of `usable`, only the bad
        // sources apply, and its slot need not be read.
        let fresh =
            || remote.have.iter_and(&self.missing).filter(|p| !self.bad_sources.contains(&(*p, remote.peer_id)));
        let (mut lowest, mut ties) = (u16::MAX, 0);
        for chunk in fresh() {
            debug_assert_eq!(self.suspect(chunk), None, "missing chunk {chunk} on parole");
            let rank = self.availability[chunk.as_usize()];
            if rank < lowest {
                (lowest, ties) = (rank, 0);
            }
            if rank == lowest {
                ties += 1;
            }
        }
        if ties == 0 {
            return None;
        }
        let mut rarest = fresh().filter(|p| self.availability[p.as_usize()] == lowest);
        rarest.nth(rng.below(ties)).map(Choice::Fresh)
    }

    /// The chunks `remote` holds that someone fetches (active, or being verified) and we lack,
    /// in ascending order, when `remote` has nothing in flight and no chunk is left to start:
    /// what endgame and taking a chunk from a slower fetcher look among; `None` otherwise.
    fn started_held<'r>(
        &'r self,
        remote: &Chooser<'r>,
        have: &'r Bitfield,
    ) -> Option<impl Iterator<Item = ChunkIndex> + 'r> {
        if remote.busy || self.missing.any() {
            return None;
        }
        Some(remote.have.iter_and_not(have).filter(|p| !self.missing.has(*p)))
    }

    /// `conn` fetches the chosen chunk (of `blocks` blocks) from now on: a `Missing` chunk
    /// becomes `Active`.
    pub fn assign(&mut self, choice: Choice, blocks: u32, conn: ConnId) -> ChunkIndex {
        let chunk = match choice {
            Choice::Fresh(chunk) | Choice::Endgame(chunk) => chunk,
        };
        if self.missing.unset(chunk) {
            self.slots[chunk.as_usize()] = Slot::Active(Box::new(ActiveChunk::new(blocks)));
            self.active_count += 1;
        }
        let Slot::Active(active) = &mut self.slots[chunk.as_usize()] else {
            unreachable!("a chosen chunk is missing or active, and a missing one was just started")
        };
        active.assignees.insert(conn, 0);
        self.orphans.unset(chunk);
        chunk
    }

    /// `conn` requests `block` of `chunk`, which `next_block` offered it.
    pub fn request(&mut self, chunk: ChunkIndex, block: u32, conn: ConnId) {
        let active = self.active_mut(chunk);
        *active.assignees.get_or_insert_with(conn, || 0) |= 1 << block;
    }

    /// `conn` will not send `block` of `chunk` after all (it answered our withdrawal): the block
    /// may be asked for again.
    pub fn unrequest(&mut self, chunk: ChunkIndex, block: u32, conn: ConnId) {
        if let Some(Slot::Active(active)) = self.slots.get_mut(chunk.as_usize()) {
            if let Some(mask) = active.assignees.get_mut(&conn) {
                *mask &= !(1 << block);
            }
        }
    }

    /// `conn` no longer fetches `chunk`; the chunk is an orphan if nobody else does and blocks
    /// are still missing.
    pub fn unassign(&mut self, chunk: ChunkIndex, conn: ConnId) {
        if let Some(Slot::Active(active)) = self.slots.get_mut(chunk.as_usize()) {
            active.assignees.remove(&conn);
            if active.is_orphan() {
                self.orphans.set(chunk);
            }
        }
    }

    /// `block` of the active `chunk` arrived from `conn` (whose remote is `sender`). A
    /// block requested and then cancelled (late) is still taken while the chunk lacks it.
    pub fn receive(&mut self, chunk: ChunkIndex, block: u32, conn: ConnId, sender: Sender) -> Arrival {
        let bit = 1u64 << block;
        let active = self.active_mut(chunk);
        if let Some(mask) = active.assignees.get_mut(&conn) {
            *mask &= !bit;
        }
        if active.received & bit != 0 {
            return Arrival::Duplicate;
        }
        active.received |= bit;
        *active.senders.get_or_insert_with(sender, || 0) |= bit;
        let losers: Vec<ConnId> = active.assignees.iter().filter(|(_, m)| **m & bit != 0).map(|(c, _)| *c).collect();
        for loser in &losers {
            if let Some(mask) = active.assignees.get_mut(loser) {
                *mask &= !bit;
            }
        }
        let mut released = Vec::new();
        if active.is_received() {
            // Nobody fetches it any more (a late block may complete a chunk nobody was
            // fetching).
            released = std::mem::take(&mut active.assignees).into_keys().collect();
            self.orphans.unset(chunk);
        }
        Arrival::Taken { losers, released }
    }

    /// The driver wrote `block` of `chunk`. Returns whether that was its last block: the chunk
    /// is `Verifying`, to be hashed.
    pub fn written(&mut self, chunk: ChunkIndex, block: u32) -> bool {
        let active = self.active_mut(chunk);
        active.written |= 1 << block;
        if active.written != active.all {
            return false;
        }
        let senders = std::mem::take(&mut active.senders);
        let (all, parole) = (active.all, active.parole.take());
        self.slots[chunk.as_usize()] = Slot::Verifying(Box::new(Verifying { all, senders, parole }));
        true
    }

    /// The driver hashed the verifying `chunk`; `matches` says whether the hash is the
    /// manifest's. A verified chunk is set in `have`.
    pub fn hashed(&mut self, chunk: ChunkIndex, matches: bool, have: &mut Bitfield) -> Verdict {
        let slot = std::mem::replace(&mut self.slots[chunk.as_usize()], Slot::Missing);
        let Slot::Verifying(verifying) = slot else {
            unreachable!("a hash completes only a chunk this download sent to be hashed, in state Verifying")
        };
        let Verifying { all, senders, parole } = *verifying;
        let verdict = if matches {
            self.slots[chunk.as_usize()] = Slot::Have;
            have.set(chunk);
            self.active_count -= 1;
            let room_again = self.active_count + 1 == CHUNKS_ACTIVE_PER_FILE_MAX;
            Verdict::Verified { senders, room_again, guilty: parole.map(|p| p.suspect) }
        } else {
            self.failed(chunk, all, senders, parole)
        };
        self.debug_check(have);
        verdict
    }

    /// `chunk` (every block in `all`) failed its hash: a sole sender is proven bad; with
    /// several, the next suspect goes on parole; else (every sender tried, or
    /// `PAROLE_ROUNDS_MAX` rounds) the chunk starts over.
    fn failed(&mut self, chunk: ChunkIndex, all: u64, senders: Senders, parole: Option<Parole>) -> Verdict {
        let guilty = match senders.iter().next() {
            Some((sender, blocks)) if senders.len() == 1 && *blocks == all => Some(*sender),
            _ => None,
        };
        let tried = parole.map(|p| p.tried).unwrap_or_default();
        // The sender of the fewest blocks: the cheapest to fetch again.
        let suspect = senders
            .iter()
            .filter(|((peer_id, _), _)| !tried.contains(peer_id))
            .min_by_key(|(_, blocks)| blocks.count_ones())
            .map(|(sender, blocks)| (*sender, *blocks));
        match suspect {
            Some((suspect, blocks)) if guilty.is_none() && tried.len() < PAROLE_ROUNDS_MAX => {
                let mut kept = senders.clone();
                kept.remove(&suspect);
                let mut tried = tried;
                tried.insert(suspect.0);
                let active = ActiveChunk {
                    all,
                    received: all & !blocks,
                    written: all & !blocks,
                    assignees: VecMap::new(),
                    senders: kept,
                    parole: Some(Parole { suspect, tried }),
                };
                self.slots[chunk.as_usize()] = Slot::Active(Box::new(active));
                self.orphans.set(chunk);
                self.paroled = true;
            }
            _ => {
                self.missing.set(chunk);
                self.active_count -= 1;
                if let Some((peer_id, _)) = guilty {
                    self.bad_sources.insert((chunk, peer_id));
                }
            }
        }
        Verdict::Corrupt { senders, guilty }
    }

    /// The suspect of `chunk`, if it is on parole.
    fn suspect(&self, chunk: ChunkIndex) -> Option<PeerId> {
        if !self.paroled {
            return None;
        }
        match self.slots.get(chunk.as_usize()) {
            Some(Slot::Active(active)) => active.parole.as_ref().map(|p| p.suspect.0),
            _ => None,
        }
    }

    fn active_mut(&mut self, chunk: ChunkIndex) -> &mut ActiveChunk {
        match &mut self.slots[chunk.as_usize()] {
            Slot::Active(active) => active,
            other => unreachable!("chunk {chunk} is {other:?}, not being fetched"),
        }
    }

    /// Checks the slot/bitfield agreement and the active count.
    fn debug_check(&self, have: &Bitfield) {
        if cfg!(debug_assertions) {
            let mut active = 0;
            for (i, slot) in self.slots.iter().enumerate() {
                let chunk = ChunkIndex(i as u32);
                debug_assert_eq!(matches!(slot, Slot::Have), have.has(chunk), "slot/have disagree for {chunk}");
                debug_assert_eq!(
                    matches!(slot, Slot::Missing),
                    self.missing.has(chunk),
                    "slot/missing disagree for {chunk}"
                );
                let orphan = matches!(slot, Slot::Active(a) if a.is_orphan());
                debug_assert_eq!(orphan, self.orphans.has(chunk), "slot/orphans disagree for {chunk}");
                if let Slot::Active(a) = slot {
                    active += 1;
                    for mask in a.assignees.values() {
                        debug_assert_eq!(mask & a.received, 0, "request outstanding for a received block");
                    }
                }
                active += usize::from(matches!(slot, Slot::Verifying(_)));
            }
            debug_assert_eq!(active, self.active_count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ConnId = ConnId::Outbound(1);
    const B: ConnId = ConnId::Outbound(2);

    fn sender(n: u8) -> Sender {
        (PeerId([n; 16]), SocketAddr::from(([10, 0, 0, n], 7000)))
    }

    /// A download of `chunks` chunks of two blocks each, one remote holding all of them.
    fn download(chunks: u32) -> (Download, Bitfield, Bitfield) {
        let mut download = Download::new(Time::ZERO);
        let have = Bitfield::new(chunks);
        download.init_slots(&have);
        let remote_have = Bitfield::full(chunks);
        download.count_holder(&remote_have, true);
        (download, have, remote_have)
    }

    fn chooser(conn: ConnId, n: u8, have: &Bitfield) -> Chooser<'_> {
        Chooser { conn, peer_id: PeerId([n; 16]), have, busy: false }
    }

    /// Fetches and writes every block of `chunk` that `conn` is offered, one at a time; returns
    /// whether the chunk went to hashing.
    fn fetch_all(download: &mut Download, chunk: ChunkIndex, conn: ConnId, from: u8) -> bool {
        let mut verifying = false;
        while let Some((p, block)) = download.next_block(conn, [chunk].into_iter()) {
            download.request(p, block, conn);
            assert!(matches!(download.receive(p, block, conn, sender(from)), Arrival::Taken { .. }));
            verifying = download.written(p, block);
        }
        verifying
    }

    #[test]
    fn a_chunk_goes_from_missing_through_active_and_verifying_to_have() {
        let (mut download, mut have, remote_have) = download(1);
        let mut rng = Rng::from_seed(1);
        let choice = download.choose(chooser(A, 1, &remote_have), &have, &mut rng, Some(|_: ConnId| true));
        assert_eq!(choice, Some(Choice::Fresh(ChunkIndex(0))));
        let chunk = download.assign(Choice::Fresh(ChunkIndex(0)), 2, A);
        assert!(download.is_active(chunk));
        assert!(fetch_all(&mut download, chunk, A, 1), "the last write sends the chunk to be hashed");
        let verdict = download.hashed(chunk, true, &mut have);
        assert!(matches!(verdict, Verdict::Verified { room_again: false, .. }), "{verdict:?}");
        assert!(have.has(chunk));
        assert_eq!(
            download.choose(chooser(A, 1, &remote_have), &have, &mut rng, Some(|_: ConnId| true)),
            None,
            "nothing left"
        );
    }

    #[test]
    fn a_corrupt_chunk_is_missing_again_and_not_asked_of_its_sender() {
        let (mut download, mut have, remote_have) = download(1);
        let mut rng = Rng::from_seed(1);
        let chunk = download.assign(Choice::Fresh(ChunkIndex(0)), 2, A);
        assert!(fetch_all(&mut download, chunk, A, 1));
        let Verdict::Corrupt { senders, guilty } = download.hashed(chunk, false, &mut have) else {
            panic!("a bad hash")
        };
        assert_eq!(senders.keys().copied().collect::<Vec<_>>(), vec![sender(1)]);
        assert_eq!(guilty, Some(sender(1)), "the sole sender is proven bad");
        assert!(!have.has(chunk));
        assert_eq!(
            download.choose(chooser(A, 1, &remote_have), &have, &mut rng, Some(|_: ConnId| true)),
            None,
            "not from the same sender"
        );
        let other = download.choose(chooser(B, 2, &remote_have), &have, &mut rng, Some(|_: ConnId| true));
        assert_eq!(other, Some(Choice::Fresh(chunk)), "from another");
    }

    #[test]
    fn in_endgame_the_first_copy_of_a_block_wins_and_the_other_request_is_cancelled() {
        let (mut download, have, remote_have) = download(1);
        let mut rng = Rng::from_seed(1);
        let chunk = download.assign(Choice::Fresh(ChunkIndex(0)), 2, A);
        download.request(chunk, 0, A);
        download.request(chunk, 1, A);
        let busy_b = Chooser { busy: true, ..chooser(B, 2, &remote_have) };
        assert_eq!(
            download.choose(busy_b, &have, &mut rng, Some(|_: ConnId| true)),
            None,
            "a busy remote does not duplicate"
        );
        let prompt = download.choose(chooser(B, 2, &remote_have), &have, &mut rng, Some(|_: ConnId| false));
        assert_eq!(prompt, None, "a chunk whose fetcher keeps up is not fetched twice");
        let endgame = download.choose(chooser(B, 2, &remote_have), &have, &mut rng, Some(|_: ConnId| true));
        assert_eq!(endgame, Some(Choice::Endgame(chunk)));
        download.assign(Choice::Endgame(chunk), 2, B);
        assert_eq!(download.next_block(B, [chunk].into_iter()), Some((chunk, 0)), "endgame asks for taken blocks");
        download.request(chunk, 0, B);
        let first = download.receive(chunk, 0, B, sender(2));
        assert_eq!(first, Arrival::Taken { losers: vec![A], released: vec![] });
        assert_eq!(download.receive(chunk, 0, A, sender(1)), Arrival::Duplicate);
        let last = download.receive(chunk, 1, A, sender(1));
        assert_eq!(last, Arrival::Taken { losers: vec![], released: vec![A, B] });
    }

    proptest::proptest! {
        /// The availability levels of a large file choose exactly what reading every chunk's
        /// count chooses: the rarest level's chunks, one drawn in ascending order.
        #[test]
        fn the_levels_choose_what_a_scan_of_every_chunk_chooses(seed in proptest::prelude::any::<u64>()) {
            let chunks = RARITY_LEVELS_PIECES_MIN + 77;
            let mut download = Download::new(Time::ZERO);
            download.init_slots(&Bitfield::new(chunks));
            let mut rng = Rng::from_seed(seed);
            let mut held = Vec::new();
            for _ in 0..1 + rng.below(5) {
                let mut have = Bitfield::new(chunks);
                for chunk in (0..chunks).map(ChunkIndex).filter(|_| rng.chance(0.6)) {
                    have.set(chunk);
                }
                download.count_holder(&have, true);
                held.push(have);
            }
            for _ in 0..rng.below(300) {
                let chunk = ChunkIndex(rng.below(chunks as usize) as u32);
                if rng.chance(0.7) {
                    download.count_new_chunks(false, &[chunk]);
                } else {
                    download.count_lost_chunk(chunk);
                }
            }
            for _ in 0..rng.below(200) {
                let chunk = ChunkIndex(rng.below(chunks as usize) as u32);
                if download.may_start(chunk, PeerId([1; 16])) {
                    download.assign(Choice::Fresh(chunk), 1, A);
                }
            }
            let remote = &held[rng.below(held.len())];
            let mut draw = Rng::from_seed(seed.wrapping_add(1));
            let chosen = download.choose(chooser(B, 2, remote), &Bitfield::new(chunks), &mut draw, None::<fn(ConnId) -> bool>);
            let fresh: Vec<ChunkIndex> = remote.iter_and(&download.missing).collect();
            let lowest = fresh.iter().map(|p| download.availability[p.as_usize()]).min();
            let rarest: Vec<ChunkIndex> =
                fresh.into_iter().filter(|p| Some(download.availability[p.as_usize()]) == lowest).collect();
            let mut draw = Rng::from_seed(seed.wrapping_add(1));
            let expected = (!rarest.is_empty()).then(|| Choice::Fresh(rarest[draw.below(rarest.len())]));
            proptest::prop_assert_eq!(chosen, expected);
        }
    }

    #[test]
    fn availability_follows_the_remotes_bitfields_haves_and_losses() {
        let (mut download, _, remote_have) = download(3);
        assert_eq!((0..3).map(|p| download.availability(ChunkIndex(p))).collect::<Vec<_>>(), [1, 1, 1]);
        download.count_new_chunks(true, &[ChunkIndex(2)]);
        download.count_lost_chunk(ChunkIndex(0));
        assert_eq!((0..3).map(|p| download.availability(ChunkIndex(p))).collect::<Vec<_>>(), [0, 1, 2]);
        download.count_holder(&remote_have, false);
        assert_eq!((0..3).map(|p| download.availability(ChunkIndex(p))).collect::<Vec<_>>(), [0, 0, 1]);
        assert_eq!(download.availability(ChunkIndex(3)), 0, "past the last chunk");
    }

    #[test]
    fn a_chunk_mixed_from_a_liar_and_an_honest_sender_blames_nobody_then_proves_the_liar() {
        let (mut download, mut have, remote_have) = download(1);
        download.count_holder(&remote_have, true); // A and B hold it.
        let mut rng = Rng::from_seed(1);
        let chunk = download.assign(Choice::Fresh(ChunkIndex(0)), 4, A);
        // The liar (1) sends the first block and goes; the honest one (2) sends the rest.
        download.request(chunk, 0, A);
        download.receive(chunk, 0, A, sender(1));
        download.written(chunk, 0);
        download.unassign(chunk, A);
        download.assign(Choice::Fresh(chunk), 4, B);
        assert!(fetch_all(&mut download, chunk, B, 2));
        let verdict = download.hashed(chunk, false, &mut have);
        assert!(matches!(verdict, Verdict::Corrupt { guilty: None, .. }), "nobody proven: {verdict:?}");
        // On parole: only the liar's block is fetched again, and not from the liar.
        assert_eq!(
            download.choose(chooser(A, 1, &remote_have), &have, &mut rng, Some(|_: ConnId| true)),
            None,
            "not from the suspect"
        );
        let again = download.choose(chooser(B, 2, &remote_have), &have, &mut rng, Some(|_: ConnId| true));
        assert_eq!(again, Some(Choice::Fresh(chunk)));
        download.count_holder(&remote_have, false);
        let alone = download.choose(chooser(A, 1, &remote_have), &have, &mut rng, Some(|_: ConnId| true));
        assert_eq!(alone, Some(Choice::Fresh(chunk)), "the suspect, when it is the only holder left");
        download.count_holder(&remote_have, true);
        download.assign(Choice::Fresh(chunk), 4, B);
        assert_eq!(download.next_block(B, [chunk].into_iter()), Some((chunk, 0)), "only the suspect's block");
        assert!(fetch_all(&mut download, chunk, B, 2));
        let verdict = download.hashed(chunk, true, &mut have);
        assert!(matches!(verdict, Verdict::Verified { guilty, .. } if guilty == Some(sender(1))), "{verdict:?}");
    }

    /// Random interleavings of two honest senders and a liar that sends a bad copy of a block
    /// half the time: a sender is proven bad only if it is the liar, and the chunk completes.
    #[test]
    fn an_honest_sender_is_never_proven_bad_in_any_interleaving() {
        const LIAR: u8 = 3;
        let conns = [ConnId::Outbound(1), ConnId::Outbound(2), ConnId::Outbound(3)];
        let mut rng = Rng::from_seed(7);
        let mut liar_proven = 0;
        for _ in 0..500 {
            let (mut download, mut have, remote_have) = download(1);
            for _ in 1..conns.len() {
                download.count_holder(&remote_have, true);
            }
            let chunk = ChunkIndex(0);
            let mut good = [true; 4];
            for _round in 0..200 {
                if have.has(chunk) {
                    break;
                }
                let who = rng.below(3);
                let (conn, n) = (conns[who], who as u8 + 1);
                if !download.is_active(chunk) || download.next_block(conn, [chunk].into_iter()).is_none() {
                    let Some(choice) =
                        download.choose(chooser(conn, n, &remote_have), &have, &mut rng, Some(|_: ConnId| true))
                    else {
                        continue;
                    };
                    download.assign(choice, 4, conn);
                }
                let Some((_, block)) = download.next_block(conn, [chunk].into_iter()) else { continue };
                download.request(chunk, block, conn);
                download.receive(chunk, block, conn, sender(n));
                good[block as usize] = n != LIAR || rng.below(2) == 0;
                if rng.below(4) == 0 {
                    download.unassign(chunk, conn);
                }
                if !download.written(chunk, block) {
                    continue;
                }
                let guilty = match download.hashed(chunk, good.iter().all(|g| *g), &mut have) {
                    Verdict::Verified { guilty, .. } | Verdict::Corrupt { guilty, .. } => guilty,
                };
                if let Some((peer_id, _)) = guilty {
                    assert_eq!(peer_id, PeerId([LIAR; 16]), "an honest sender was proven bad");
                    liar_proven += 1;
                }
            }
            assert!(have.has(chunk), "the chunk completed");
        }
        assert!(liar_proven > 100, "the liar was proven bad only {liar_proven} times");
    }
}
