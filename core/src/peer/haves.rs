//! Batching of `Haves`: chunks verified since the last batch, per file, and when the batch goes
//! out: at once when the last batch went out at least the chunk's batch interval ago
//! (`HAVE_BATCH_INTERVAL`, shorter for large chunks; or for a download's first chunk), else
//! that long after the last batch. A chunk verified after a quiet spell is told at once (every
//! hop of a chunk through the swarm waits for it), and a peer verifying many chunks still sends
//! at most one batch per interval. The state is private; the peer sends what
//! [`HaveBatch::take`] hands it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ids::{ChunkIndex, FileId};
use crate::time::Time;

/// Chunks waiting for the next `Haves`.
#[derive(Debug, Default)]
pub(super) struct HaveBatch {
    chunks: BTreeMap<FileId, Vec<ChunkIndex>>,
    due: Option<Time>,
    /// When the last batch went out.
    sent_at: Option<Time>,
}

impl HaveBatch {
    /// Nothing waiting.
    pub fn new() -> HaveBatch {
        HaveBatch::default()
    }

    /// Adds `chunk`, verified at `now`. Returns whether the batch must go out at once: the last
    /// one went out at least `interval` (the chunk's) ago, or a download's `first` chunk makes
    /// this peer a holder the tracker can name to others, which matters most while everybody is
    /// just starting.
    pub fn add(&mut self, file_id: FileId, chunk: ChunkIndex, first: bool, interval: Duration, now: Time) -> bool {
        self.chunks.entry(file_id).or_default().push(chunk);
        let next = self.sent_at.map_or(now, |at| at + interval);
        if first || next <= now {
            return true;
        }
        self.due = Some(self.due.map_or(next, |due| due.min(next)));
        false
    }

    /// When the batch goes out, if chunks are waiting.
    pub fn due(&self) -> Option<Time> {
        self.due
    }

    /// The chunks waiting, per file, going out at `now`; the batch is empty afterwards.
    pub fn take(&mut self, now: Time) -> BTreeMap<FileId, Vec<ChunkIndex>> {
        self.due = None;
        self.sent_at = Some(now);
        std::mem::take(&mut self.chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Digest;
    use crate::limits::{HAVE_BATCH_INTERVAL, HAVE_BATCH_INTERVAL_LARGE_CHUNKS};

    #[test]
    fn a_chunk_after_a_quiet_spell_goes_at_once_and_the_next_wait_for_the_interval() {
        let file = FileId(Digest([1; 32]));
        let ms = Time::from_millis;
        let mut batch = HaveBatch::new();
        assert!(batch.add(file, ChunkIndex(1), false, HAVE_BATCH_INTERVAL, Time::ZERO), "nothing went out before");
        assert_eq!(batch.take(Time::ZERO)[&file], vec![ChunkIndex(1)]);
        assert!(!batch.add(file, ChunkIndex(3), false, HAVE_BATCH_INTERVAL, ms(10)));
        assert!(!batch.add(file, ChunkIndex(4), false, HAVE_BATCH_INTERVAL, ms(20)));
        assert_eq!(batch.due(), Some(Time::ZERO + HAVE_BATCH_INTERVAL), "from the last batch");
        assert!(batch.add(file, ChunkIndex(0), true, HAVE_BATCH_INTERVAL, ms(30)), "a first chunk goes at once");
        assert_eq!(batch.take(ms(30))[&file], vec![ChunkIndex(3), ChunkIndex(4), ChunkIndex(0)]);
        assert_eq!(batch.due(), None);
        assert!(!batch.add(file, ChunkIndex(5), false, HAVE_BATCH_INTERVAL, ms(40)));
        assert_eq!(batch.due(), Some(ms(30) + HAVE_BATCH_INTERVAL));
        let quiet = ms(30) + HAVE_BATCH_INTERVAL;
        assert_eq!(batch.take(quiet)[&file], vec![ChunkIndex(5)]);
        assert!(
            batch.add(file, ChunkIndex(6), false, HAVE_BATCH_INTERVAL, quiet + HAVE_BATCH_INTERVAL),
            "quiet for an interval"
        );
    }

    #[test]
    fn a_large_chunk_waits_its_shorter_interval_and_brings_the_batch_forward() {
        let file = FileId(Digest([1; 32]));
        let ms = Time::from_millis;
        let mut batch = HaveBatch::new();
        assert!(batch.add(file, ChunkIndex(0), false, HAVE_BATCH_INTERVAL, ms(0)));
        batch.take(ms(0));
        assert!(!batch.add(file, ChunkIndex(1), false, HAVE_BATCH_INTERVAL, ms(10)));
        assert_eq!(batch.due(), Some(ms(0) + HAVE_BATCH_INTERVAL));
        assert!(!batch.add(file, ChunkIndex(2), false, HAVE_BATCH_INTERVAL_LARGE_CHUNKS, ms(20)));
        assert_eq!(batch.due(), Some(ms(0) + HAVE_BATCH_INTERVAL_LARGE_CHUNKS), "the sooner of the two");
        batch.take(ms(0) + HAVE_BATCH_INTERVAL_LARGE_CHUNKS);
        let later = ms(0) + HAVE_BATCH_INTERVAL_LARGE_CHUNKS * 2;
        assert!(batch.add(file, ChunkIndex(3), false, HAVE_BATCH_INTERVAL_LARGE_CHUNKS, later), "an interval after");
    }
}
