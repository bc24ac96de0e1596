//! Holder lists recently built for `Located` answers, reused for a short time.
//!
//! Walking a file's holdings costs a cache miss or two per holder visited, so askers of the same
//! file within [`LOCATED_REUSE_TIME`] get one of the lists built for it, in turn, each list at
//! most [`LOCATED_REUSES_PER_LIST_MAX`] times on average before the file's lists are built
//! afresh (so newcomers are not all sent to the same few holders): up to
//! [`LOCATED_REUSED_PER_FILE_COUNT`] per file while the byte budget allows (see
//! [`Reuse::wants`]), each drawn with its own shuffle, so load still spreads. A list is built as for an asker that holds nothing, which
//! also suits any asker it does not name: an asker's own chunks only lower its quotas. An asker
//! named in every list gets a list of its own, built fresh; so does every asker of a file that
//! has no list while the budget is used up (lists are never evicted early: under a working set
//! larger than the budget, evicting would throw lists away before they are reused).
//!
//! Invariants: the registry drops a file's lists whenever one of its holders comes or goes, so a
//! list never names a peer the tracker has forgotten (chunks gained by known holders show up
//! within the reuse time); `Tracker` calls [`Reuse::expire`] before every input, so no list
//! older than the reuse time is handed out; `built` holds one `(built_at, file slot)` per file
//! with lists; lists are kept only while fewer than [`LOCATED_REUSE_BYTES_MAX`] bytes are, so
//! memory is bounded by that plus one list. Keys are tracker time and BTree order, so the
//! tracker stays deterministic.

use std::collections::{BTreeMap, BTreeSet};

use crate::limits::{
    LOCATED_REUSED_PER_FILE_COUNT, LOCATED_REUSES_PER_LIST_MAX, LOCATED_REUSE_BYTES_MAX, LOCATED_REUSE_TIME,
};
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
    /// Lists handed out so far.
    handed: usize,
    bytes: usize,
}

impl Reuse {
    /// The next of `file_slot`'s lists that does not name `asker`, with the peer slots it
    /// names, unless the file still [`Reuse::wants`] another list.
    pub(super) fn get(&mut self, file_slot: u32, asker: Option<u32>) -> Option<(Holders, Vec<u32>)> {
        if self.wants(file_slot) {
            return None;
        }
        let file = self.files.get_mut(&file_slot)?;
        if file.handed >= LOCATED_REUSED_PER_FILE_COUNT * LOCATED_REUSES_PER_LIST_MAX {
            self.forget(file_slot);
            return None;
        }
        for _ in 0..file.lists.len() {
            let (holders, slots) = &file.lists[file.next];
            file.next = (file.next + 1) % file.lists.len();
            if asker.is_none_or(|asker| !slots.contains(&asker)) {
                file.handed += 1;
                return Some((holders.clone(), slots.clone()));
            }
        }
        None
    }

    /// Whether a list built for `file_slot` now would be kept. A file's list number `n` (from
    /// 0) is kept while less than `(COUNT - n) / COUNT` of the budget is used: under pressure
    /// every asked file keeps one list before any keeps more.
    pub(super) fn wants(&self, file_slot: u32) -> bool {
        let built = self.files.get(&file_slot).map_or(0, |file| file.lists.len());
        built < LOCATED_REUSED_PER_FILE_COUNT
            && self.bytes * LOCATED_REUSED_PER_FILE_COUNT
                < LOCATED_REUSE_BYTES_MAX * (LOCATED_REUSED_PER_FILE_COUNT - built)
    }

    /// Keeps a list built for `file_slot` (which [`Reuse::wants`] one), naming peer `slots`.
    pub(super) fn insert(&mut self, now: Time, file_slot: u32, holders: Holders, slots: Vec<u32>) {
        let bytes = holders.size_bytes() + slots.len() * size_of::<u32>();
        let file = self.files.entry(file_slot).or_insert_with(|| {
            self.built.insert((now, file_slot));
            Lists {
                built_at: now,
                lists: Vec::with_capacity(LOCATED_REUSED_PER_FILE_COUNT),
                next: 0,
                handed: 0,
                bytes: 0,
            }
        });
        assert!(file.lists.len() < LOCATED_REUSED_PER_FILE_COUNT, "lists are built only while wanted");
        file.lists.push((holders, slots));
        // The asker it was built for is its first.
        file.handed += 1;
        file.bytes += bytes;
        self.bytes += bytes;
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
