//! Seeding to several downloaders at once: which chunks a peer that holds a whole file tells
//! each downloader it has (super-seeding).
//!
//! Only a peer that shared the whole file itself (an initial seeder) does this, and only until
//! every chunk is in the swarm (uploaded whole by us, or reported held by a downloader): then
//! every downloader is told everything at once, and so is each newcomer. The first copies are
//! out by then, and the seeder's upload serves whatever its downloaders lack most, as any
//! holder's does, rather than one offered chunk at a time that others may hold already. Until
//! then a newcomer is told only `OFFER_WINDOW_CHUNKS` (one) chunk it lacks that was never
//! offered to anyone (a rotating cursor from a random start picks them), also when it is the
//! only downloader so far: in a flash crowd the first to connect is alone for a moment, and
//! told everything it would ask the seeder for chunks offered to others. So each of the seeder's
//! turns with a downloader (see the upload slots in `uploads`) sends a chunk nobody else got,
//! whatever the file's size and however many downloaders arrive. The downloaders fetch different
//! chunks from the seeder and the rest from each other. At most `OFFERS_OUTSTANDING_PER_SLOT`
//! downloaders per upload slot open (more for small chunks) have an offer outstanding at once,
//! enough to keep the seeder's slots and line busy: a newcomer beyond them is told nothing yet, and
//! each chunk the seeder finishes uploading to a downloader, each offered chunk a downloader
//! reports holding (fetched elsewhere) and each downloader that leaves makes room for one more
//! offer, to the downloaders with none outstanding, those told nothing yet first, in the order they
//! connected.
//! So the first copies go out in the order the seeder can send them instead of all being promised
//! when a crowd connects (a downloader promised a chunk while a dozen others wait for the seeder
//! holds the only claim to it until its turn). Once every chunk was offered, a downloader with no
//! offer outstanding is offered one chunk, the least offered, so nobody waits for a chunk the
//! others cannot give it. A downloader that is alone when it has room for an offer (or again, once
//! the others left) is told everything that is left, once it has been connected for
//! `OFFERS_ALONE_AFTER`: a crowd's peers connect within moments of each other, and the first,
//! told everything before the others are seen, would ask for chunks offered to them (the seeder
//! sends them twice) and keep one of the seeder's slots for the whole download. Until then it is
//! offered up to `OFFER_WINDOW_ALONE_CHUNKS` never-offered chunks, topped up as each comes in,
//! and offered again when that time is up, room or not (see [`Offers::settles_at`]): an offered
//! chunk it fetches from another holder stays outstanding until that holder delivers.
//! The seeder keeps per file one offer count per chunk and which chunks are in the swarm; per
//! connection, what it told and which offered chunks are still outstanding; and when each lone
//! downloader settles (at most one entry per downloader and file).
//!
//! [`Offers`] owns that state (private). Its inputs are a downloader's first bitfield, a
//! finished upload, a report of held chunks, a lone downloader, time passing (a lone
//! downloader settling: [`Offers::settled`]) and a closed connection; its
//! outputs are the chunks to tell and the downloaders to tell more ([`Offers::offerees`], every
//! one of them once the file is spread out: [`Offers::offered_to`]).
//! `Peer` routes them and sends the messages; the free functions say which remotes are
//! downloaders.

use std::collections::{BTreeMap, BTreeSet};

use crate::bitfield::Bitfield;
use crate::ids::{ChunkIndex, ConnId, FileId};
use crate::limits::{OFFERS_OUTSTANDING_PER_SLOT, OFFER_SCAN_CHUNKS_MAX, OFFER_WINDOW_CHUNKS, UPLOAD_LINE_BYTES_MIN};
use crate::rng::Rng;
use crate::time::Time;

use super::super::remote::{Remote, Remotes};

/// The seeder's offers: per file it spreads, how often each chunk went out; per downloader and
/// file, what it was told. Private to this module; `Peer` routes its inputs here.
#[derive(Debug, Default)]
pub(in crate::peer) struct Offers {
    spreads: BTreeMap<FileId, Spread>,
    /// What each downloader that sees only offers was told, by connection and file.
    told: BTreeMap<(ConnId, FileId), Offer>,
    /// Lone downloaders offered a window, by when they will have been connected for
    /// `OFFERS_ALONE_AFTER`: then they are told everything left, whether or not room came.
    settling: BTreeSet<(Time, ConnId, FileId)>,
}

/// One file of ours as the seeder's offers see it.
#[derive(Clone, Copy, Debug)]
pub(in crate::peer) struct OurFile<'a> {
    /// The file.
    pub file_id: FileId,
    /// The chunks we hold.
    pub have: &'a Bitfield,
    /// Whether the file came from a local share (only such a holder offers).
    pub shared_here: bool,
    /// Its chunks' size.
    pub chunk_bytes: u32,
}

/// What a downloader's report of held chunks means for its offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::peer) enum Held {
    /// It holds the whole file now: it is no downloader any more.
    Complete,
    /// Offered chunks came in from elsewhere: it has room for more offers.
    Room,
    /// Nothing changes.
    Nothing,
}

/// How often each chunk of a whole file was offered or uploaded to a downloader.
#[derive(Debug)]
struct Spread {
    offers: Vec<u16>,
    /// Where the next search for a least-offered chunk starts.
    cursor: usize,
    /// Chunks never offered.
    unoffered: usize,
    /// Chunks in the swarm: we uploaded them whole, or a downloader reported them.
    in_swarm: Bitfield,
    /// Chunks not in the swarm yet (`in_swarm`'s missing ones, counted as they are set).
    missing: usize,
}

/// What a seeder told one downloader of one file.
#[derive(Debug)]
struct Offer {
    /// Chunks announced to it (its view of our bitfield).
    told: Bitfield,
    /// Announced chunks it neither fetched from us nor reported holding yet.
    outstanding: BTreeSet<ChunkIndex>,
}

impl Offers {
    /// No file spread, nothing offered.
    pub fn new() -> Offers {
        Offers::default()
    }

    /// The chunks to tell `conn` we hold of `ours` in our first bitfield: everything, or the
    /// first window of offers when we shared the whole file ourselves, some chunk never went
    /// out yet and `conn` (which holds `holds`, if it told us) is a downloader. `slots`: the
    /// upload slots open (more take offers to more downloaders at once).
    pub fn first_bitfield(
        &mut self,
        conn: ConnId,
        ours: OurFile<'_>,
        holds: Option<&Bitfield>,
        slots: usize,
        rng: &mut Rng,
    ) -> Bitfield {
        let OurFile { file_id, have, shared_here, chunk_bytes } = ours;
        let spreading = shared_here && have.is_full() && !self.spread_out(file_id);
        let downloading = holds.is_some_and(|h| !h.is_full());
        if !spreading || !downloading {
            return have.clone();
        }
        let offer = Offer { told: Bitfield::new(have.len()), outstanding: BTreeSet::new() };
        let pending = self.pending(file_id);
        self.told.insert((conn, file_id), offer);
        if pending < offers_outstanding_max(chunk_bytes, slots) {
            self.fill_window(conn, ours, holds, OFFER_WINDOW_CHUNKS, rng);
        }
        self.told.get(&(conn, file_id)).map_or_else(|| have.clone(), |offer| offer.told.clone())
    }

    /// We finished uploading `chunk` of `file_id` to `conn`; whether it has room for another
    /// offer now.
    pub fn uploaded(&mut self, conn: ConnId, file_id: FileId, chunk: ChunkIndex) -> bool {
        if let Some(spread) = self.spreads.get_mut(&file_id) {
            spread.went_out(chunk);
        }
        match self.told.get_mut(&(conn, file_id)) {
            Some(offer) => offer.outstanding.remove(&chunk),
            // A downloader that sees everything chose this chunk itself: count the copy.
            None => {
                if let Some(spread) = self.spreads.get_mut(&file_id) {
                    spread.count(chunk);
                }
                false
            }
        }
    }

    /// `conn`, which holds `holds` of `file_id` now, reported holding `chunks` more (from us
    /// or from anyone else).
    pub fn held(&mut self, conn: ConnId, file_id: FileId, holds: Option<&Bitfield>, chunks: &[ChunkIndex]) -> Held {
        if let Some(spread) = self.spreads.get_mut(&file_id) {
            chunks.iter().for_each(|chunk| spread.went_out(*chunk));
        }
        if holds.is_some_and(Bitfield::is_full) {
            self.told.remove(&(conn, file_id));
            return Held::Complete;
        }
        let Some(offer) = self.told.get_mut(&(conn, file_id)) else { return Held::Nothing };
        let before = offer.outstanding.len();
        for chunk in chunks {
            offer.outstanding.remove(chunk);
        }
        if offer.outstanding.len() < before {
            Held::Room
        } else {
            Held::Nothing
        }
    }

    /// Downloaders of `file_id` with an offer outstanding (told, neither uploaded nor held).
    fn pending(&self, file_id: FileId) -> usize {
        self.told.iter().filter(|((_, f), offer)| *f == file_id && !offer.outstanding.is_empty()).count()
    }

    /// The downloaders of `ours` to offer more now (see [`Offers::top_up`]): while fewer than
    /// [`offers_outstanding_max`] have an offer outstanding, those with none, the ones told
    /// nothing yet first, each in connection order (the order they came in), with `slots`
    /// upload slots open.
    pub fn offerees(&self, ours: OurFile<'_>, slots: usize) -> Vec<ConnId> {
        let room = offers_outstanding_max(ours.chunk_bytes, slots).saturating_sub(self.pending(ours.file_id));
        let mut idle: Vec<(bool, ConnId)> = (self.told.iter())
            .filter(|((_, file_id), offer)| *file_id == ours.file_id && offer.outstanding.is_empty())
            .map(|((conn, _), offer)| (offer.told.count() > 0, *conn))
            .collect();
        idle.sort_unstable();
        idle.into_iter().take(room).map(|(_, conn)| conn).collect()
    }

    /// Whether every chunk of `file_id` is in the swarm (we uploaded it, or a downloader
    /// reported holding it).
    pub fn spread_out(&self, file_id: FileId) -> bool {
        self.spreads.get(&file_id).is_some_and(|s| s.missing == 0)
    }

    /// The downloaders of `file_id` that see only offers.
    pub fn offered_to(&self, file_id: FileId) -> Vec<ConnId> {
        self.told.keys().filter(|(_, f)| *f == file_id).map(|(conn, _)| *conn).collect()
    }

    /// Whether `conn` sees only the chunks offered to it of `file_id`.
    pub fn sees_offers(&self, conn: ConnId, file_id: FileId) -> bool {
        self.told.contains_key(&(conn, file_id))
    }

    /// The chunks to tell `conn` (which holds `holds`, if it told us) now that it has room:
    /// up to `window` outstanding, or everything not yet told without one (after which it
    /// sees all we hold).
    pub fn top_up(
        &mut self,
        conn: ConnId,
        ours: OurFile<'_>,
        holds: Option<&Bitfield>,
        window: Option<usize>,
        rng: &mut Rng,
    ) -> Vec<ChunkIndex> {
        if let Some(window) = window {
            return self.fill_window(conn, ours, holds, window, rng);
        }
        let offer = self.told.remove(&(conn, ours.file_id));
        offer.map(|offer| offer.told.iter_missing().collect()).unwrap_or_default()
    }

    /// `conn`, the only downloader of `file_id` and offered a window of it, settles `at`: it is
    /// to be offered again then (see [`Offers::settled`]). An offered chunk it fetches from
    /// another holder stays outstanding here until that one delivers, and room for another
    /// offer would come only then.
    pub fn settles_at(&mut self, conn: ConnId, file_id: FileId, at: Time) {
        self.settling.insert((at, conn, file_id));
    }

    /// When the next downloader settles.
    pub fn settle_wake_at(&self) -> Option<Time> {
        self.settling.first().map(|(at, _, _)| *at)
    }

    /// The downloaders settled by `now` that still see only offers, each once.
    pub fn settled(&mut self, now: Time) -> Vec<(ConnId, FileId)> {
        let mut due = Vec::new();
        while let Some(&(at, conn, file_id)) = self.settling.first() {
            if at > now {
                break;
            }
            self.settling.pop_first();
            if self.told.contains_key(&(conn, file_id)) {
                due.push((conn, file_id));
            }
        }
        due
    }

    /// Forgets the offers to a closed connection.
    pub fn drop_conn(&mut self, conn: ConnId) {
        self.told.retain(|(c, _), _| *c != conn);
        self.settling.retain(|(_, c, _)| *c != conn);
    }

    /// Adds chunks `conn` lacks to its offer and returns them: never-offered ones until
    /// `window` are outstanding; once every chunk went out, one at a time (the least offered),
    /// when nothing is outstanding, so the downloaders fetch what others already got from each
    /// other.
    fn fill_window(
        &mut self,
        conn: ConnId,
        ours: OurFile<'_>,
        holds: Option<&Bitfield>,
        window: usize,
        rng: &mut Rng,
    ) -> Vec<ChunkIndex> {
        let spread = self.spreads.entry(ours.file_id).or_insert_with(|| Spread::new(ours.have.len(), rng));
        let offer = self.told.get_mut(&(conn, ours.file_id));
        debug_assert!(offer.is_some(), "a window is filled only for a downloader that sees offers");
        // A downloader that took back its bitfield (the file is unknown to it) is told nothing.
        let (Some(holds), Some(offer)) = (holds, offer) else { return Vec::new() };
        let mut added = Vec::new();
        while offer.outstanding.len() < window {
            let offers_max = if offer.outstanding.is_empty() { u16::MAX } else { 0 };
            let Some(chunk) = spread.pick(offers_max, |p| !holds.has(p) && !offer.told.has(p)) else { break };
            offer.told.set(chunk);
            offer.outstanding.insert(chunk);
            added.push(chunk);
        }
        added
    }
}

/// Downloaders of a file with an offer outstanding at once while `slots` upload slots are open:
/// [`OFFERS_OUTSTANDING_PER_SLOT`] per slot, or as many as hold [`UPLOAD_LINE_BYTES_MIN`] of
/// chunks of `chunk_bytes`.
fn offers_outstanding_max(chunk_bytes: u32, slots: usize) -> usize {
    let for_bytes = UPLOAD_LINE_BYTES_MIN.div_ceil(u64::from(chunk_bytes.max(1)));
    (OFFERS_OUTSTANDING_PER_SLOT * slots).max(usize::try_from(for_bytes).unwrap_or(usize::MAX))
}

impl Spread {
    fn new(chunk_count: u32, rng: &mut Rng) -> Spread {
        let start = rng.below(chunk_count.max(1) as usize);
        let count = chunk_count as usize;
        let in_swarm = Bitfield::new(chunk_count);
        Spread { offers: vec![0; count], cursor: start, unoffered: count, in_swarm, missing: count }
    }

    /// `chunk` is in the swarm now.
    fn went_out(&mut self, chunk: ChunkIndex) {
        if self.in_swarm.set(chunk) {
            self.missing -= 1;
        }
    }

    /// Counts one more copy of `chunk` handed out.
    fn count(&mut self, chunk: ChunkIndex) {
        if let Some(offers) = self.offers.get_mut(chunk.as_usize()) {
            if *offers == 0 {
                self.unoffered -= 1;
            }
            *offers = offers.saturating_add(1);
        }
    }

    /// The least-offered chunk offered at most `offers_max` times for which `eligible` holds,
    /// searching a bounded stretch from the cursor; counts it as offered.
    fn pick(&mut self, offers_max: u16, eligible: impl Fn(ChunkIndex) -> bool) -> Option<ChunkIndex> {
        if offers_max == 0 && self.unoffered == 0 {
            return None;
        }
        let len = self.offers.len();
        let mut best: Option<(u16, usize)> = None;
        for step in 0..len.min(OFFER_SCAN_CHUNKS_MAX) {
            let i = (self.cursor + step) % len;
            let offers = self.offers[i];
            if offers > offers_max || best.is_some_and(|(b, _)| b <= offers) || !eligible(ChunkIndex(i as u32)) {
                continue;
            }
            best = Some((offers, i));
            if offers == 0 {
                break;
            }
        }
        let (_, i) = best?;
        self.cursor = (i + 1) % len;
        let chunk = ChunkIndex(i as u32);
        self.count(chunk);
        Some(chunk)
    }
}

/// Whether a ready remote other than `conn` is downloading `file_id` from us.
pub(in crate::peer) fn other_downloader(remotes: &Remotes, conn: ConnId, file_id: FileId) -> bool {
    remotes.iter().any(|(c, r)| *c != conn && is_downloader(r, file_id))
}

/// The one ready remote downloading `file_id` from us, if exactly one is.
pub(in crate::peer) fn sole_downloader(remotes: &Remotes, file_id: FileId) -> Option<ConnId> {
    let mut downloading = remotes.iter().filter(|(_, r)| is_downloader(r, file_id));
    match (downloading.next(), downloading.next()) {
        (Some((conn, _)), None) => Some(*conn),
        _ => None,
    }
}

fn is_downloader(remote: &Remote, file_id: FileId) -> bool {
    remote.is_ready() && remote.chunks(file_id).is_some_and(|h| !h.is_full())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::UPLOAD_SLOTS_MIN;

    #[test]
    fn a_crowd_is_offered_chunks_as_the_seeder_serves_them_those_told_nothing_first() {
        let mut rng = Rng::from_seed(1);
        let mut offers = Offers::new();
        let (have, nothing) = (Bitfield::full(16), Bitfield::new(16));
        let ours = OurFile {
            file_id: FileId(crate::ids::Digest([7; 32])),
            have: &have,
            shared_here: true,
            chunk_bytes: 256 * 1024,
        };
        let outstanding = OFFERS_OUTSTANDING_PER_SLOT * UPLOAD_SLOTS_MIN;
        let crowd = outstanding as u64 + 2;
        let told: Vec<u32> = (1..=crowd)
            .map(|n| {
                offers.first_bitfield(ConnId::Inbound(n), ours, Some(&nothing), UPLOAD_SLOTS_MIN, &mut rng).count()
            })
            .collect();
        let mut expected = vec![1; outstanding];
        expected.extend([0, 0]);
        assert_eq!(told, expected, "one chunk each to as many as the seeder serves soon, nothing yet to the rest");
        assert!(offers.offerees(ours, UPLOAD_SLOTS_MIN).is_empty(), "no room while every offer is outstanding");
        let first = ConnId::Inbound(1);
        let chunk = offers.told[&(first, ours.file_id)].outstanding.first().copied().expect("one offer");
        assert!(offers.uploaded(first, ours.file_id, chunk));
        let next = ConnId::Inbound(outstanding as u64 + 1);
        assert_eq!(offers.offerees(ours, UPLOAD_SLOTS_MIN), [next], "the first told nothing, not the one just served");
        let offered = offers.top_up(next, ours, Some(&nothing), Some(OFFER_WINDOW_CHUNKS), &mut rng);
        assert_eq!(offered.len(), 1);
        assert!(!offered.contains(&chunk), "a chunk never offered");
        assert!(offers.offerees(ours, UPLOAD_SLOTS_MIN).is_empty());
        // Small chunks: as many outstanding as fill the line's bytes.
        let small = OurFile { chunk_bytes: 16 * 1024, ..ours };
        assert!(offers_outstanding_max(small.chunk_bytes, UPLOAD_SLOTS_MIN) > outstanding);
        assert_eq!(offers.offerees(small, UPLOAD_SLOTS_MIN).len(), 2, "both the served one and the last newcomer");
        // A slot more: offers to more downloaders at once.
        assert_eq!(
            offers.offerees(ours, UPLOAD_SLOTS_MIN + 1).len(),
            2,
            "room for the served one and the last newcomer"
        );
    }

    #[test]
    fn least_offered_chunks_go_first_and_every_chunk_once_before_any_twice() {
        let mut rng = Rng::from_seed(1);
        let mut spread = Spread::new(10, &mut rng);
        let mut first_round: Vec<u32> = (0..10).filter_map(|_| spread.pick(u16::MAX, |_| true).map(|p| p.0)).collect();
        first_round.sort_unstable();
        assert_eq!(first_round, (0..10).collect::<Vec<u32>>());
        assert_eq!(spread.pick(0, |_| true), None, "every chunk went out once");
        // Chunk 3 is not eligible now: the others go round again, 3 stays at one offer.
        let second: Vec<u32> = (0..9).filter_map(|_| spread.pick(u16::MAX, |p| p.0 != 3).map(|p| p.0)).collect();
        assert_eq!(second.len(), 9);
        assert!(!second.contains(&3));
        assert_eq!(spread.pick(u16::MAX, |_| true), Some(ChunkIndex(3)));
        assert_eq!(spread.pick(u16::MAX, |_| false), None);
    }
}
