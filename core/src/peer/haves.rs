//! Batching of `Haves`: pieces verified since the last batch, per file, and when the batch goes
//! out: at once when the last batch went out at least the piece's batch interval ago
//! (`HAVE_BATCH_INTERVAL`, shorter for large pieces; or for a download's first piece), else
//! that long after the last batch. A piece verified after a quiet spell is told at once (every
//! hop of a piece through the swarm waits for it), and a peer verifying many pieces still sends
//! at most one batch per interval. The state is private; the peer sends what
//! [`HaveBatch::take`] hands it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ids::{FileId, PieceIndex};
use crate::time::Time;

/// Pieces waiting for the next `Haves`.
#[derive(Debug, Default)]
pub(super) struct HaveBatch {
    pieces: BTreeMap<FileId, Vec<PieceIndex>>,
    due: Option<Time>,
    /// When the last batch went out.
    sent_at: Option<Time>,
}

impl HaveBatch {
    /// Nothing waiting.
    pub fn new() -> HaveBatch {
        HaveBatch::default()
    }

    /// Adds `piece`, verified at `now`. Returns whether the batch must go out at once: the last
    /// one went out at least `interval` (the piece's) ago, or a download's `first` piece makes
    /// this peer a holder the tracker can name to others, which matters most while everybody is
    /// just starting.
    pub fn add(&mut self, file_id: FileId, piece: PieceIndex, first: bool, interval: Duration, now: Time) -> bool {
        self.pieces.entry(file_id).or_default().push(piece);
        let next = self.sent_at.map_or(now, |at| at + interval);
        if first || next <= now {
            return true;
        }
        self.due = Some(self.due.map_or(next, |due| due.min(next)));
        false
    }

    /// When the batch goes out, if pieces are waiting.
    pub fn due(&self) -> Option<Time> {
        self.due
    }

    /// The pieces waiting, per file, going out at `now`; the batch is empty afterwards.
    pub fn take(&mut self, now: Time) -> BTreeMap<FileId, Vec<PieceIndex>> {
        self.due = None;
        self.sent_at = Some(now);
        std::mem::take(&mut self.pieces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Digest;
    use crate::limits::{HAVE_BATCH_INTERVAL, HAVE_BATCH_INTERVAL_LARGE_PIECES};

    #[test]
    fn a_piece_after_a_quiet_spell_goes_at_once_and_the_next_wait_for_the_interval() {
        let file = FileId(Digest([1; 32]));
        let ms = Time::from_millis;
        let mut batch = HaveBatch::new();
        assert!(batch.add(file, PieceIndex(1), false, HAVE_BATCH_INTERVAL, Time::ZERO), "nothing went out before");
        assert_eq!(batch.take(Time::ZERO)[&file], vec![PieceIndex(1)]);
        assert!(!batch.add(file, PieceIndex(3), false, HAVE_BATCH_INTERVAL, ms(10)));
        assert!(!batch.add(file, PieceIndex(4), false, HAVE_BATCH_INTERVAL, ms(20)));
        assert_eq!(batch.due(), Some(Time::ZERO + HAVE_BATCH_INTERVAL), "from the last batch");
        assert!(batch.add(file, PieceIndex(0), true, HAVE_BATCH_INTERVAL, ms(30)), "a first piece goes at once");
        assert_eq!(batch.take(ms(30))[&file], vec![PieceIndex(3), PieceIndex(4), PieceIndex(0)]);
        assert_eq!(batch.due(), None);
        assert!(!batch.add(file, PieceIndex(5), false, HAVE_BATCH_INTERVAL, ms(40)));
        assert_eq!(batch.due(), Some(ms(30) + HAVE_BATCH_INTERVAL));
        let quiet = ms(30) + HAVE_BATCH_INTERVAL;
        assert_eq!(batch.take(quiet)[&file], vec![PieceIndex(5)]);
        assert!(
            batch.add(file, PieceIndex(6), false, HAVE_BATCH_INTERVAL, quiet + HAVE_BATCH_INTERVAL),
            "quiet for an interval"
        );
    }

    #[test]
    fn a_large_piece_waits_its_shorter_interval_and_brings_the_batch_forward() {
        let file = FileId(Digest([1; 32]));
        let ms = Time::from_millis;
        let mut batch = HaveBatch::new();
        assert!(batch.add(file, PieceIndex(0), false, HAVE_BATCH_INTERVAL, ms(0)));
        batch.take(ms(0));
        assert!(!batch.add(file, PieceIndex(1), false, HAVE_BATCH_INTERVAL, ms(10)));
        assert_eq!(batch.due(), Some(ms(0) + HAVE_BATCH_INTERVAL));
        assert!(!batch.add(file, PieceIndex(2), false, HAVE_BATCH_INTERVAL_LARGE_PIECES, ms(20)));
        assert_eq!(batch.due(), Some(ms(0) + HAVE_BATCH_INTERVAL_LARGE_PIECES), "the sooner of the two");
        batch.take(ms(0) + HAVE_BATCH_INTERVAL_LARGE_PIECES);
        let later = ms(0) + HAVE_BATCH_INTERVAL_LARGE_PIECES * 2;
        assert!(batch.add(file, PieceIndex(3), false, HAVE_BATCH_INTERVAL_LARGE_PIECES, later), "an interval after");
    }
}
