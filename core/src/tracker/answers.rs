//! Holder lists recently built for `Located` answers, reused for a short time.
//!
//! Walking a file's holdings costs a cache miss or two per holder visited, so askers of the same
//! file within [`LOCATED_REUSE_TIME`] get one of the [`LOCATED_REUSED_PER_FILE_COUNT`] lists
//! built for it, in turn; each list was drawn with its own shuffle, so load still spreads. A
//! list is built as for an asker that holds nothing, which also suits any asker it does not
//! name: an asker's own pieces only lower its quotas. An asker named in every list gets a list
//! of its own, built fresh.
//!
//! Invariants: the registry drops a file's lists whenever one of its holders comes or goes, so a
//! list never names a peer the tracker has forgotten (pieces gained by known holders show up
//! within the reuse time); `Tracker` calls [`Reuse::expire`] before every input, so no list
//! older than the reuse time is handed out; `built` holds one `(built_at, file slot)` per file
//! with lists, and at most [`LOCATED_REUSE_BYTES_MAX`] bytes of lists are kept (oldest files
//! dropped first). Keys are tracker time and BTree order, so the tracker stays deterministic.

use std::collections::{BTreeMap, BTreeSet};

use crate::limits::{LOCATED_REUSED_PER_FILE_COUNT, LOCATED_REUSE_BYTES_MAX, LOCATED_REUSE_TIME};
use crate::time::Time;
use crate::wire::Holders;

/// Reusable holder lists by file slot.
#[derive(Debug, Default)]
pub(super) struct Reuse {
    files: BTreeMap<u32, Lists>,
    built: BTreeSet<(Time, u32)>,
    bytes: usize,
}

/// The lists of one file.
#[derive(Debug)]
struct Lists {
    built_at: Time,
    /// Each list with the peer slots it names.
    lists: Vec<(Holders, Vec<u32>)>,
    /// The list handed out next.
    next: usize,
    bytes: usize,
}

impl Reuse {
    /// The next of `file_slot`'s lists that does not name `asker`, once all of them are built.
    pub(super) fn get(&mut self, file_slot: u32, asker: Option<u32>) -> Option<Holders> {
        let file = self.files.get_mut(&file_slot)?;
        if file.lists.len() < LOCATED_REUSED_PER_FILE_COUNT {
            return None;
        }
        for _ in 0..LOCATED_REUSED_PER_FILE_COUNT {
            let (holders, slots) = &file.lists[file.next];
            file.next = (file.next + 1) % LOCATED_REUSED_PER_FILE_COUNT;
            if asker.is_none_or(|asker| !slots.contains(&asker)) {
                return Some(holders.clone());
            }
        }
        None
    }

    /// Whether `file_slot` still wants a list built for it.
    pub(super) fn wants(&self, file_slot: u32) -> bool {
        self.files.get(&file_slot).is_none_or(|file| file.lists.len() < LOCATED_REUSED_PER_FILE_COUNT)
    }

    /// Keeps a list built for `file_slot` (which [`Reuse::wants`] one), naming peer `slots`.
    pub(super) fn insert(&mut self, now: Time, file_slot: u32, holders: Holders, slots: Vec<u32>) {
        let bytes = holders.size_bytes() + slots.len() * size_of::<u32>();
        let file = self.files.entry(file_slot).or_insert_with(|| {
            self.built.insert((now, file_slot));
            Lists { built_at: now, lists: Vec::with_capacity(LOCATED_REUSED_PER_FILE_COUNT), next: 0, bytes: 0 }
        });
        assert!(file.lists.len() < LOCATED_REUSED_PER_FILE_COUNT, "lists are built only while wanted");
        file.lists.push((holders, slots));
        file.bytes += bytes;
        self.bytes += bytes;
        while self.bytes > LOCATED_REUSE_BYTES_MAX {
            let Some(&(_, oldest)) = self.built.first() else { break };
            self.forget(oldest);
        }
    }

    /// Drops `file_slot`'s lists (a holder came or went, or the file is gone).
    pub(super) fn forget(&mut self, file_slot: u32) {
        if let Some(file) = self.files.remove(&file_slot) {
            self.built.remove(&(file.built_at, file_slot));
            self.bytes -= file.bytes;
        }
    }

    /// Drops the lists built [`LOCATED_REUSE_TIME`] or longer before `now`.
    pub(super) fn expire(&mut self, now: Time) {
        while let Some(&(built_at, file_slot)) = self.built.first() {
            if built_at + LOCATED_REUSE_TIME > now {
                return;
            }
            self.forget(file_slot);
        }
    }
}
