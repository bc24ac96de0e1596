//! Batching of `Haves`: pieces verified since the last batch, per file, and when the batch goes
//! out (`HAVE_BATCH_INTERVAL` after its first piece, at once for a download's first piece). The
//! state is private; the peer sends what [`HaveBatch::take`] hands it.

use std::collections::BTreeMap;

use crate::ids::{FileId, PieceIndex};
use crate::limits::HAVE_BATCH_INTERVAL;
use crate::time::Time;

/// Pieces waiting for the next `Haves`.
#[derive(Debug, Default)]
pub(super) struct HaveBatch {
    pieces: BTreeMap<FileId, Vec<PieceIndex>>,
    due: Option<Time>,
}

impl HaveBatch {
    /// Nothing waiting.
    pub fn new() -> HaveBatch {
        HaveBatch::default()
    }

    /// Adds `piece`, verified at `now`. Returns whether the batch must go out at once: a
    /// download's `first` piece makes this peer a holder the tracker can name to others, which
    /// matters most while everybody is just starting.
    pub fn add(&mut self, file_id: FileId, piece: PieceIndex, first: bool, now: Time) -> bool {
        self.pieces.entry(file_id).or_default().push(piece);
        if !first && self.due.is_none() {
            self.due = Some(now + HAVE_BATCH_INTERVAL);
        }
        first
    }

    /// When the batch goes out, if pieces are waiting.
    pub fn due(&self) -> Option<Time> {
        self.due
    }

    /// The pieces waiting, per file; the batch is empty afterwards.
    pub fn take(&mut self) -> BTreeMap<FileId, Vec<PieceIndex>> {
        self.due = None;
        std::mem::take(&mut self.pieces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Digest;

    #[test]
    fn pieces_wait_for_the_interval_unless_a_download_just_got_its_first() {
        let file = FileId(Digest([1; 32]));
        let mut batch = HaveBatch::new();
        assert!(!batch.add(file, PieceIndex(3), false, Time::ZERO));
        assert!(!batch.add(file, PieceIndex(4), false, Time::from_millis(5)));
        assert_eq!(batch.due(), Some(Time::ZERO + HAVE_BATCH_INTERVAL), "from the first piece");
        assert!(batch.add(file, PieceIndex(0), true, Time::from_millis(6)), "a first piece goes at once");
        assert_eq!(batch.take()[&file], vec![PieceIndex(3), PieceIndex(4), PieceIndex(0)]);
        assert_eq!(batch.due(), None);
        assert!(batch.take().is_empty());
    }
}
