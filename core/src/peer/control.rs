//! Local control of one file: pausing and resuming a download, and removing a file.
//!
//! **Pause.** A paused download stops fetching: every chunk assigned to a remote is released
//! (its requests in flight are cancelled), no tracker is asked for holders, and peers named by
//! peer exchange are not contacted for it; a block already on its way is still taken. It keeps
//! its verified chunks and goes on serving and announcing them, like a partial holder.
//! Resuming fetches the rest. Only a download still fetching can be paused: a file served
//! whole has nothing to fetch (removing it stops serving it).
//!
//! **Remove.** The file leaves the peer's files at once: from then on nothing fetches, serves or
//! announces it, every open tracker connection hears `Leave` for it (after the chunks verified but
//! not yet told, so the tracker's record ends in order), and every remote that exchanged chunks of
//! it with this peer hears it is unknown here (it stops asking for it; a later download of the file
//! exchanges bitfields afresh). The store work the peer asked for the file may still be under way:
//! block writes, hashes and the final move, each answered by exactly one completion. The file stays
//! *removing* until the last of those completions arrived; they are absorbed here and never reach
//! the scheduler, for which a completion of a file it does not know is impossible. Then
//! [`Event::Removed`](crate::machine::Event::Removed) tells the driver no completion for the file
//! is due any more, so it may forget the file's store data. While a file is removing, a `Share` or
//! `Get` of it is refused. Block reads for remotes are not counted: a read that completes after the
//! removal is answered from what the store still holds, or refused.
//!
//! [`StoreWork`] owns the count of store work in flight per file and the set of files being
//! removed; the control block of `Peer`'s routing (in `mod.rs`) carries out the three commands.

use std::collections::{btree_map, BTreeMap, BTreeSet};

use crate::ids::FileId;
use crate::machine::{Completion, Output};

/// Store work in flight per file, and the files being removed; see the module docs.
#[derive(Debug, Default)]
pub(super) struct StoreWork {
    /// Outputs asked for and not completed yet, per file (only files with some).
    in_flight: BTreeMap<FileId, u32>,
    /// Removed files with store work still in flight.
    removing: BTreeSet<FileId>,
}

/// What the peer does with a completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Completed {
    /// Its file is known: route it as usual.
    Route,
    /// Its file is being removed and more of its work is in flight: drop it.
    Absorbed,
    /// Its file is being removed and this was its last work in flight: the file is gone.
    Removed(FileId),
}

impl StoreWork {
    /// Nothing in flight, nothing being removed.
    pub fn new() -> StoreWork {
        StoreWork::default()
    }

    /// Counts `output` when a completion will answer it.
    pub fn asked(&mut self, output: &Output) {
        if let Some(file_id) = awaited(output) {
            *self.in_flight.entry(file_id).or_default() += 1;
        }
    }

    /// Counts `completion` off its file's work in flight and says what to do with it.
    pub fn completed(&mut self, completion: &Completion) -> Completed {
        let Some(file_id) = answered(completion) else { return Completed::Route };
        if let btree_map::Entry::Occupied(mut count) = self.in_flight.entry(file_id) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
        if !self.removing.contains(&file_id) {
            Completed::Route
        } else if self.in_flight.contains_key(&file_id) {
            Completed::Absorbed
        } else {
            self.removing.remove(&file_id);
            Completed::Removed(file_id)
        }
    }

    /// Starts removing `file_id`; true when none of its work is in flight, so it is gone at once.
    pub fn remove(&mut self, file_id: FileId) -> bool {
        if self.in_flight.contains_key(&file_id) {
            self.removing.insert(file_id);
            return false;
        }
        true
    }

    /// Whether `file_id` is being removed.
    pub fn is_removing(&self, file_id: &FileId) -> bool {
        self.removing.contains(file_id)
    }

    /// Files being removed.
    pub fn removing_count(&self) -> usize {
        self.removing.len()
    }
}

/// The file whose completion will answer `output`, if one will.
fn awaited(output: &Output) -> Option<FileId> {
    match output {
        Output::WriteBlock { file_id, .. } | Output::HashChunk { file_id, .. } | Output::Finalize { file_id } => {
            Some(*file_id)
        }
        _ => None,
    }
}

/// The file of a completion that [`awaited`] counted.
fn answered(completion: &Completion) -> Option<FileId> {
    match completion {
        Completion::BlockWritten { file_id, .. }
        | Completion::ChunkHashed { file_id, .. }
        | Completion::Finalized { file_id, .. } => Some(*file_id),
        Completion::BlockRead { .. } | Completion::ChunkDigestsRead { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::{CommandError, StoreError};
    use crate::ids::{ChunkIndex, ConnId, Digest};
    use crate::machine::{Command, Event};
    use crate::peer::FileState;
    use crate::testkit::{file, Harness, NodeIx, TRACKER};
    use crate::time::Time;

    fn file_id(byte: u8) -> FileId {
        FileId(Digest([byte; 32]))
    }

    fn written(file_id: FileId) -> Completion {
        Completion::BlockWritten { file_id, chunk: ChunkIndex(0), offset: 0, result: Ok(()) }
    }

    /// Messages of `kind` that `node` received after `after`.
    fn received_after(h: &Harness, node: NodeIx, kind: &str, after: Time) -> usize {
        h.received.iter().filter(|(at, to, k)| *to == node && *k == kind && *at > after).count()
    }

    fn requested_after(h: &Harness, node: NodeIx, after: Time) -> usize {
        h.requested.iter().filter(|(at, to)| *to == node && *at > after).count()
    }

    fn have(h: &Harness, node: NodeIx, file_id: FileId) -> u32 {
        h.peer(node).have(&file_id).map_or(0, |have| have.count())
    }

    #[test]
    fn a_removal_waits_for_the_last_completion_of_its_file_only() {
        let (removed, kept) = (file_id(1), file_id(2));
        let mut work = StoreWork::new();
        for file_id in [removed, removed, kept] {
            work.asked(&Output::WriteBlock { file_id, chunk: ChunkIndex(0), offset: 0, bytes: bytes::Bytes::new() });
        }
        let conn = ConnId::Inbound(1);
        work.asked(&Output::ReadBlock { conn, file_id: removed, chunk: ChunkIndex(0), offset: 0, len: 1 });
        assert!(!work.remove(removed), "two writes are in flight");
        assert!(work.is_removing(&removed));
        assert_eq!(work.completed(&written(kept)), Completed::Route, "another file's work is routed");
        let read = Completion::BlockRead {
            conn,
            file_id: removed,
            chunk: ChunkIndex(0),
            offset: 0,
            result: Err(StoreError::NotStored),
        };
        assert_eq!(work.completed(&read), Completed::Route, "reads are not counted");
        assert_eq!(work.completed(&written(removed)), Completed::Absorbed);
        assert_eq!(work.completed(&written(removed)), Completed::Removed(removed));
        assert!(!work.is_removing(&removed));
        assert_eq!(work.removing_count(), 0);
        assert!(work.remove(kept), "nothing of it is in flight any more");
    }

    #[test]
    fn a_paused_download_asks_nothing_until_resumed_then_completes() {
        let mut h = Harness::new(21);
        let (bytes, manifest) = file(32 * 16 * 1024, 16 * 1024, 21);
        let id = manifest.file_id();
        let (seeder, leecher) = (h.add_peer(1, Some(64 * 1024)), h.add_peer(2, None));
        h.share(seeder, &manifest, &bytes, None);
        h.run_for(Duration::from_millis(10));
        h.command(leecher, Command::Get { file_id: id, resume: None });
        h.run_until(Duration::from_secs(5), |h| have(h, leecher, id) >= 4);

        h.command(leecher, Command::Pause { file_id: id });
        h.run_for(Duration::from_millis(1));
        let paused_at = h.now();
        let view = h.peer(leecher).file_views().into_iter().find(|view| view.file_id == id);
        assert_eq!(view.map(|view| view.state), Some(FileState::Paused));
        // Blocks already on their way may still complete a chunk; nothing new is asked for.
        let have_paused = have(&h, leecher, id);
        h.run_for(Duration::from_secs(20));
        assert_eq!(requested_after(&h, seeder, paused_at), 0, "no request while paused");
        assert_eq!(received_after(&h, TRACKER, "locate", paused_at), 0, "no locate while paused");
        assert_eq!(have(&h, leecher, id), have_paused);
        assert!(!h.completed(leecher, id));

        h.command(leecher, Command::Resume { file_id: id });
        h.run_until(Duration::from_secs(20), |h| h.completed(leecher, id));
        assert_eq!(h.stored(leecher, id), Some(&bytes[..]));
    }

    #[test]
    fn a_removed_download_waits_for_its_hashes_then_is_gone_and_can_be_fetched_again() {
        let mut h = Harness::new(22);
        let (bytes, manifest) = file(32 * 16 * 1024, 16 * 1024, 22);
        let id = manifest.file_id();
        let (seeder, leecher) = (h.add_peer(1, Some(256 * 1024)), h.add_peer(2, None));
        h.share(seeder, &manifest, &bytes, None);
        h.run_for(Duration::from_millis(10));
        h.hold_hashes(leecher);
        h.command(leecher, Command::Get { file_id: id, resume: None });
        h.run_until(Duration::from_secs(5), |h| requested_after(h, seeder, Time::ZERO) >= 8);
        h.run_for(Duration::from_millis(200));

        h.command(leecher, Command::Remove { file_id: id });
        h.run_for(Duration::from_millis(1));
        let removed_at = h.now();
        let removed = |h: &Harness| h.events_of(leecher).any(|(_, _, e)| *e == Event::Removed { file_id: id });
        assert!(h.peer(leecher).is_removing(&id), "hashes of written chunks are still out");
        assert!(!removed(&h));
        assert!(h.peer(leecher).file_views().is_empty(), "the file is no longer listed");
        assert_eq!(received_after(&h, TRACKER, "leave", Time::ZERO), 1);
        // A new download of the file waits until the removal is over.
        let refused = h.try_command(leecher, Command::Get { file_id: id, resume: None });
        assert_eq!(refused, Err(CommandError::Removing), "a Get while removing is refused");
        h.run_for(Duration::from_secs(2));
        assert!(h.peer(leecher).file_views().is_empty(), "and changes nothing");
        assert_eq!(requested_after(&h, seeder, removed_at), 0);

        h.release_hashes(leecher);
        h.run_until(Duration::from_secs(1), removed);
        assert!(!h.peer(leecher).is_removing(&id));

        // The seeder heard the file is unknown here: a new download exchanges bitfields afresh.
        h.command(leecher, Command::Get { file_id: id, resume: None });
        h.run_until(Duration::from_secs(30), |h| h.completed(leecher, id));
        assert_eq!(h.stored(leecher, id), Some(&bytes[..]));
    }
}
