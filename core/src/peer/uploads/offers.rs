//! Seeding to several downloaders at once: which pieces a peer that holds a whole file tells
//! each downloader it has (super-seeding).
//!
//! Only a peer that shared the whole file itself (an initial seeder) does this, and only until
//! every piece went out once: after that the swarm holds the file and newcomers are told
//! everything. A lone downloader is told everything. While a second downloader of the file is
//! connected, a newcomer is told only `OFFER_WINDOW_PIECES` (one) piece it lacks that was never
//! offered to anyone (a rotating cursor from a random start picks them), so each of the
//! seeder's turns with a downloader (see the upload slots in `uploads`) sends a piece nobody
//! else got, whatever the file's size and however many downloaders arrive. The downloaders
//! fetch different pieces from the seeder and the rest from each other. Each piece
//! the seeder finishes uploading to a downloader, and each offered piece the downloader reports
//! holding (fetched elsewhere), makes room for one more offer. Once every piece went out, a
//! downloader with no offer outstanding is offered one piece, the least offered, so nobody
//! waits for a piece the others cannot give it. A downloader that is alone again is told
//! everything that is left. The seeder keeps per file one offer count per piece; per
//! connection, what it told and which offered pieces are still outstanding.

use std::collections::BTreeSet;

use crate::bitfield::Bitfield;
use crate::ids::{ConnId, FileId, PieceIndex};
use crate::limits::{OFFER_SCAN_PIECES_MAX, OFFER_WINDOW_PIECES};
use crate::rng::Rng;
use crate::wire::Message;

use super::super::remote::Stage;
use super::super::Peer;

/// How often each piece of a whole file was offered or uploaded to a downloader.
#[derive(Debug)]
pub(in crate::peer) struct Spread {
    offers: Vec<u16>,
    /// Where the next search for a least-offered piece starts.
    cursor: usize,
    /// Pieces never offered.
    unoffered: usize,
}

/// What a seeder told one downloader of one file.
#[derive(Debug)]
pub(in crate::peer) struct Offer {
    /// Pieces announced to it (its view of our bitfield).
    told: Bitfield,
    /// Announced pieces it neither fetched from us nor reported holding yet.
    outstanding: BTreeSet<PieceIndex>,
}

impl Spread {
    fn new(piece_count: u32, rng: &mut Rng) -> Spread {
        let start = rng.below(piece_count.max(1) as usize);
        Spread { offers: vec![0; piece_count as usize], cursor: start, unoffered: piece_count as usize }
    }

    /// Counts one more copy of `piece` handed out.
    fn count(&mut self, piece: PieceIndex) {
        if let Some(offers) = self.offers.get_mut(piece.as_usize()) {
            if *offers == 0 {
                self.unoffered -= 1;
            }
            *offers = offers.saturating_add(1);
        }
    }

    /// The least-offered piece offered at most `offers_max` times for which `eligible` holds,
    /// searching a bounded stretch from the cursor; counts it as offered.
    fn pick(&mut self, offers_max: u16, eligible: impl Fn(PieceIndex) -> bool) -> Option<PieceIndex> {
        if offers_max == 0 && self.unoffered == 0 {
            return None;
        }
        let len = self.offers.len();
        let mut best: Option<(u16, usize)> = None;
        for step in 0..len.min(OFFER_SCAN_PIECES_MAX) {
            let i = (self.cursor + step) % len;
            let offers = self.offers[i];
            if offers > offers_max || best.is_some_and(|(b, _)| b <= offers) || !eligible(PieceIndex(i as u32)) {
                continue;
            }
            best = Some((offers, i));
            if offers == 0 {
                break;
            }
        }
        let (_, i) = best?;
        self.cursor = (i + 1) % len;
        let piece = PieceIndex(i as u32);
        self.count(piece);
        Some(piece)
    }
}

impl Peer {
    /// Our bitfield message for `file_id` on `conn`: the whole of what we hold, or the first
    /// window of offers when we shared the whole file ourselves, some piece never went out yet
    /// and `conn` is one of several downloaders.
    pub(in crate::peer) fn bitfield_for(&mut self, conn: ConnId, file_id: FileId) -> Option<Message> {
        let entry = self.files.get(&file_id)?;
        let have = entry.have.clone();
        let spreading = entry.shared_here && have.is_full() && entry.spread.as_ref().is_none_or(|s| s.unoffered > 0);
        let downloading = self.remotes.get(&conn)?.files.get(&file_id).is_some_and(|h| !h.is_full());
        if !spreading || !downloading || !self.other_downloader(conn, file_id) {
            return Some(Message::Bitfield { file_id, have });
        }
        let offer = Offer { told: Bitfield::new(have.len()), outstanding: BTreeSet::new() };
        self.remotes.get_mut(&conn)?.offers.insert(file_id, offer);
        self.fill_window(conn, file_id);
        let told = self.remotes.get(&conn)?.offers.get(&file_id)?.told.clone();
        Some(Message::Bitfield { file_id, have: told })
    }

    /// We finished uploading `piece` to `conn`.
    pub(in crate::peer) fn offer_uploaded(&mut self, conn: ConnId, file_id: FileId, piece: PieceIndex) {
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        match remote.offers.get_mut(&file_id) {
            Some(offer) => {
                if offer.outstanding.remove(&piece) {
                    self.top_up(conn, file_id);
                }
            }
            // A downloader that sees everything chose this piece itself: count the copy.
            None => {
                if let Some(spread) = self.files.get_mut(&file_id).and_then(|e| e.spread.as_mut()) {
                    spread.count(piece);
                }
            }
        }
    }

    /// `conn` reported holding `pieces` (from us or from anyone else).
    pub(in crate::peer) fn offer_held(&mut self, conn: ConnId, file_id: FileId, pieces: &[PieceIndex]) {
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        if remote.files.get(&file_id).is_some_and(Bitfield::is_full) {
            remote.offers.remove(&file_id);
            self.downloader_gone(file_id);
            return;
        }
        let Some(offer) = remote.offers.get_mut(&file_id) else { return };
        let before = offer.outstanding.len();
        for piece in pieces {
            offer.outstanding.remove(piece);
        }
        if offer.outstanding.len() < before {
            self.top_up(conn, file_id);
        }
    }

    /// A downloader of `file_id` left or completed: if one is left and it sees only offers, it
    /// is told everything.
    pub(in crate::peer) fn downloader_gone(&mut self, file_id: FileId) {
        let mut downloading = self
            .remotes
            .iter()
            .filter(|(_, r)| r.stage == Stage::Ready && r.files.get(&file_id).is_some_and(|h| !h.is_full()));
        let (Some((conn, remote)), None) = (downloading.next(), downloading.next()) else { return };
        if remote.offers.contains_key(&file_id) {
            self.top_up(*conn, file_id);
        }
    }

    /// Offers `conn` more pieces up to the window (everything left when it is the only
    /// downloader) and sends them in one `Haves`.
    fn top_up(&mut self, conn: ConnId, file_id: FileId) {
        let pieces = if self.other_downloader(conn, file_id) {
            self.fill_window(conn, file_id)
        } else {
            self.tell_rest(conn, file_id)
        };
        if !pieces.is_empty() {
            self.send(conn, Message::Haves { file_id, pieces });
        }
    }

    /// Adds pieces `conn` lacks to its offer and returns them: never-offered ones until the
    /// window is full; once every piece went out, one at a time (the least offered), when
    /// nothing is outstanding, so the downloaders fetch what others already got from each other.
    fn fill_window(&mut self, conn: ConnId, file_id: FileId) -> Vec<PieceIndex> {
        let Some(entry) = self.files.get_mut(&file_id) else { return Vec::new() };
        let spread = entry.spread.get_or_insert_with(|| Spread::new(entry.have.len(), &mut self.rng));
        let Some(remote) = self.remotes.get_mut(&conn) else { return Vec::new() };
        let (Some(holds), Some(offer)) = (remote.files.get(&file_id), remote.offers.get_mut(&file_id)) else {
            return Vec::new();
        };
        let mut added = Vec::new();
        while offer.outstanding.len() < OFFER_WINDOW_PIECES {
            let offers_max = if offer.outstanding.is_empty() { u16::MAX } else { 0 };
            let Some(piece) = spread.pick(offers_max, |p| !holds.has(p) && !offer.told.has(p)) else { break };
            offer.told.set(piece);
            offer.outstanding.insert(piece);
            added.push(piece);
        }
        added
    }

    /// Tells `conn` every piece not yet told and stops offering: it sees all we hold.
    fn tell_rest(&mut self, conn: ConnId, file_id: FileId) -> Vec<PieceIndex> {
        let Some(remote) = self.remotes.get_mut(&conn) else { return Vec::new() };
        let Some(offer) = remote.offers.remove(&file_id) else { return Vec::new() };
        offer.told.iter_missing().collect()
    }

    /// Whether a ready remote other than `conn` is downloading `file_id` from us.
    fn other_downloader(&self, conn: ConnId, file_id: FileId) -> bool {
        self.remotes
            .iter()
            .any(|(c, r)| *c != conn && r.stage == Stage::Ready && r.files.get(&file_id).is_some_and(|h| !h.is_full()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_offered_pieces_go_first_and_every_piece_once_before_any_twice() {
        let mut rng = Rng::from_seed(1);
        let mut spread = Spread::new(10, &mut rng);
        let mut first_round: Vec<u32> = (0..10).filter_map(|_| spread.pick(u16::MAX, |_| true).map(|p| p.0)).collect();
        first_round.sort_unstable();
        assert_eq!(first_round, (0..10).collect::<Vec<u32>>());
        assert_eq!(spread.pick(0, |_| true), None, "every piece went out once");
        // Piece 3 is not eligible now: the others go round again, 3 stays at one offer.
        let second: Vec<u32> = (0..9).filter_map(|_| spread.pick(u16::MAX, |p| p.0 != 3).map(|p| p.0)).collect();
        assert_eq!(second.len(), 9);
        assert!(!second.contains(&3));
        assert_eq!(spread.pick(u16::MAX, |_| true), Some(PieceIndex(3)));
        assert_eq!(spread.pick(u16::MAX, |_| false), None);
    }
}
