//! Asks for a file the tracker does not know yet, held until an announce makes it known or
//! their wait ends.
//!
//! A crowd that starts together with its seeders asks before the seeders' announces, which
//! carry the manifest, reach the tracker. Answered "not known yet" at once, every asker would
//! take an answer's room on the tracker's uplink and ask again later, its next answer queued
//! behind all the others. A peer's `Locate` of an unknown file is parked instead, for at most
//! [`LOCATE_PARK_TIME`]. The announce that registers the file has its parked asks answered
//! [`LOCATE_PARK_SETTLE_TIME`] later: seeders that start together announce within moments of
//! each other, and answers sent at the first announce would all name that one seeder. An ask
//! whose time is up first is answered as the tracker then sees the file (unknown, as a rule).
//!
//! [`Parked`] owns the asks (private state): its inputs are an ask to park, a file that became
//! known and the clock; its output is the next ask due for an answer. Bounds: at most
//! [`PARKED_ASKS_PER_CONN_MAX`] asks of one connection wait at a time, and at most
//! [`PARKED_ASKS_MAX`] asks are parked per [`LOCATE_PARK_TIME`] in all (an ask counts until its
//! time is up, answered or not); an ask past either bound is answered at once.

use std::collections::{BTreeMap, VecDeque};

use crate::ids::{ConnId, FileId};
use crate::limits::{LOCATE_PARK_SETTLE_TIME, LOCATE_PARK_TIME, PARKED_ASKS_MAX, PARKED_ASKS_PER_CONN_MAX};
use crate::time::Time;

/// One parked ask: when its wait ends, the asker's connection, and whether it asked for the
/// manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ask {
    until: Time,
    conn: ConnId,
    with_manifest: bool,
}

/// A parked ask whose answer is due: the asker's connection, the file, and whether it asked
/// for the manifest.
pub(super) type DueAsk = (ConnId, FileId, bool);

/// The parked asks.
#[derive(Debug, Default)]
pub(super) struct Parked {
    /// Every ask parked in the last [`LOCATE_PARK_TIME`], answered or not, in the order they
    /// were parked (so their deadlines rise): when each wait ends, and for which file.
    deadlines: VecDeque<(Time, FileId)>,
    /// Per file, the asks still waiting, in the order they were parked.
    by_file: BTreeMap<FileId, VecDeque<Ask>>,
    /// Per connection, how many of its asks are still waiting (no entry for none).
    per_conn: BTreeMap<ConnId, usize>,
    /// Files that became known while asks for them waited, and when those are answered.
    settling: BTreeMap<FileId, Time>,
}

impl Parked {
    /// Parks `conn`'s ask for `file_id` at `now`, unless a bound is reached: false then, and the
    /// ask is to be answered at once.
    pub(super) fn park(&mut self, now: Time, conn: ConnId, file_id: FileId, with_manifest: bool) -> bool {
        let waiting = self.per_conn.get(&conn).copied().unwrap_or(0);
        if waiting >= PARKED_ASKS_PER_CONN_MAX || self.deadlines.len() >= PARKED_ASKS_MAX {
            return false;
        }
        let until = now + LOCATE_PARK_TIME;
        self.deadlines.push_back((until, file_id));
        self.by_file.entry(file_id).or_default().push_back(Ask { until, conn, with_manifest });
        self.per_conn.insert(conn, waiting + 1);
        true
    }

    /// An announce registered or refreshed `file_id` at `now`: the asks parked for it are due
    /// [`LOCATE_PARK_SETTLE_TIME`] after the first such announce.
    pub(super) fn known(&mut self, now: Time, file_id: FileId) {
        if self.by_file.contains_key(&file_id) {
            self.settling.entry(file_id).or_insert(now + LOCATE_PARK_SETTLE_TIME);
        }
    }

    /// One parked ask due for an answer by `now`: of a file known since its settle time, or
    /// whose own time is up; call until `None`.
    pub(super) fn pop_due(&mut self, now: Time) -> Option<DueAsk> {
        let settled = self.settling.iter().find(|(_, at)| **at <= now).map(|(file_id, _)| *file_id);
        if let Some(file_id) = settled {
            return self.pop_first(file_id);
        }
        while let Some(&(until, file_id)) = self.deadlines.front().filter(|(until, _)| *until <= now) {
            self.deadlines.pop_front();
            // A file's asks were parked in the order of `deadlines`: the one due is the first of
            // its file still waiting, unless it was answered already.
            let first = self.by_file.get(&file_id).and_then(VecDeque::front);
            if first.is_some_and(|ask| ask.until == until) {
                return self.pop_first(file_id);
            }
        }
        None
    }

    /// When the next parked ask is due (an answered one may still count here: its time passes
    /// with nothing to do).
    pub(super) fn next_deadline(&self) -> Option<Time> {
        let first_parked = self.deadlines.front().map(|(until, _)| *until);
        first_parked.into_iter().chain(self.settling.values().copied()).min()
    }

    /// Takes the first ask still waiting for `file_id` out.
    fn pop_first(&mut self, file_id: FileId) -> Option<DueAsk> {
        let asks = self.by_file.get_mut(&file_id)?;
        let ask = asks.pop_front()?;
        if asks.is_empty() {
            self.by_file.remove(&file_id);
            self.settling.remove(&file_id);
        }
        if let Some(waiting) = self.per_conn.get_mut(&ask.conn) {
            *waiting -= 1;
            if *waiting == 0 {
                self.per_conn.remove(&ask.conn);
            }
        }
        Some((ask.conn, file_id, ask.with_manifest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Digest;

    fn file(n: u8) -> FileId {
        FileId(Digest([n; 32]))
    }

    fn all_due(parked: &mut Parked, at: Time) -> Vec<DueAsk> {
        std::iter::from_fn(|| parked.pop_due(at)).collect()
    }

    #[test]
    fn a_known_file_has_its_asks_answered_after_the_settle_time_and_the_rest_when_their_time_is_up() {
        let mut parked = Parked::default();
        let (c1, c2, c3) = (ConnId::Inbound(1), ConnId::Inbound(2), ConnId::Inbound(3));
        let ms = |ms| Time::from_millis(ms);
        assert!(parked.park(ms(0), c1, file(1), false));
        assert!(parked.park(ms(0), c2, file(2), true));
        assert!(parked.park(ms(10), c3, file(1), true));
        assert_eq!(parked.next_deadline(), Some(ms(0) + LOCATE_PARK_TIME));
        parked.known(ms(20), file(1));
        parked.known(ms(30), file(1));
        parked.known(ms(30), file(3));
        let settled = ms(20) + LOCATE_PARK_SETTLE_TIME;
        assert_eq!(parked.next_deadline(), Some(settled), "the first announce counts; a file without asks none");
        assert_eq!(all_due(&mut parked, ms(19) + LOCATE_PARK_SETTLE_TIME), []);
        assert_eq!(all_due(&mut parked, settled), [(c1, file(1), false), (c3, file(1), true)]);
        assert_eq!(all_due(&mut parked, ms(0) + LOCATE_PARK_TIME), [(c2, file(2), true)]);
        assert_eq!(all_due(&mut parked, ms(10) + LOCATE_PARK_TIME), [], "c3's ask was answered");
        assert_eq!(parked.next_deadline(), None);
        assert!(parked.per_conn.is_empty() && parked.by_file.is_empty() && parked.settling.is_empty());
    }

    #[test]
    fn a_connection_parks_a_few_asks_and_all_of_them_at_most_the_overall_bound() {
        let mut parked = Parked::default();
        let conn = ConnId::Inbound(0);
        for n in 0..PARKED_ASKS_PER_CONN_MAX {
            assert!(parked.park(Time::ZERO, conn, file(n as u8), false));
        }
        assert!(!parked.park(Time::ZERO, conn, file(99), false), "this connection's bound");
        parked.known(Time::ZERO, file(0));
        assert_eq!(all_due(&mut parked, Time::ZERO + LOCATE_PARK_SETTLE_TIME), [(conn, file(0), false)]);
        assert!(parked.park(Time::ZERO, conn, file(99), false), "an answered ask frees its place");
        let mut n = 1;
        while parked.park(Time::ZERO, ConnId::Inbound(n), file(1), false) {
            n += 1;
        }
        assert_eq!(parked.deadlines.len(), PARKED_ASKS_MAX, "answered asks count until their time is up");
        assert_eq!(all_due(&mut parked, Time::ZERO + LOCATE_PARK_TIME).len(), PARKED_ASKS_MAX - 1);
        assert!(parked.park(Time::ZERO + LOCATE_PARK_TIME, conn, file(1), false), "room again");
    }
}
