//! When a download asks the tracker where its pieces are: later and later while pieces keep
//! arriving, soon again when it is stuck, never twice while an answer is awaited (unless the
//! answer is overdue). One `Locate` per download; its state is private to this module.

use std::time::Duration;

use crate::limits::{
    HOLDERS_PER_PIECE_MAX, LOCATE_ANSWER_TIMEOUT, LOCATE_INTERVAL, LOCATE_INTERVAL_MAX, LOCATE_INTERVAL_SECOND,
};
use crate::time::Time;

/// The tracker-ask schedule of one download.
#[derive(Debug)]
pub(super) struct Locate {
    /// When to ask the tracker again.
    next_at: Time,
    /// The current interval between asks: doubled while pieces keep arriving, reset when
    /// none arrived since the last ask.
    interval: Duration,
    /// Whether an answer to an ask arrived.
    answered_once: bool,
    /// Verified pieces at the last ask.
    have_at_ask: u32,
    /// When the last ask went out, while its answer is awaited (no second ask meanwhile).
    awaited_since: Option<Time>,
    /// Whether the tracker was asked for holders only, the manifest being unknown: they are
    /// asked for it, and the tracker only if that did not work by the next ask.
    asked_without_manifest: bool,
}

impl Locate {
    /// A schedule whose first ask is due at `now`.
    pub fn new(now: Time) -> Locate {
        Locate {
            next_at: now,
            interval: LOCATE_INTERVAL,
            answered_once: false,
            have_at_ask: 0,
            awaited_since: None,
            asked_without_manifest: false,
        }
    }

    /// When the tracker may be asked next: at the planned time, but not while the last ask is
    /// unanswered (unless its answer is overdue).
    pub fn due_at(&self) -> Time {
        match self.awaited_since {
            Some(sent) => self.next_at.max(sent + LOCATE_ANSWER_TIMEOUT),
            None => self.next_at,
        }
    }

    /// An ask goes out at `now` (over an open tracker connection when `sent`), with
    /// `have_count` pieces verified. Returns whether it asks for the manifest too: the first
    /// ask of a download without one is for holders only, which then send it.
    pub fn asked(&mut self, now: Time, have_count: u32, sent: bool, manifest_known: bool) -> bool {
        self.interval =
            if have_count > self.have_at_ask { (self.interval * 2).min(LOCATE_INTERVAL_MAX) } else { LOCATE_INTERVAL };
        self.have_at_ask = have_count;
        self.next_at = now + self.interval;
        self.awaited_since = sent.then_some(now);
        let with_manifest = !manifest_known && self.asked_without_manifest;
        self.asked_without_manifest |= sent && !manifest_known;
        with_manifest
    }

    /// The tracker answered at `now`, naming `peers` peers (`None`: it does not know the
    /// file). The next ask waits at least [`LOCATE_INTERVAL`] from here, however long the
    /// answer took. The first answer that names only a few asks again soon: the tracker names
    /// only peers that hold pieces, so downloaders that started together find each other once
    /// their first pieces arrived.
    pub fn answered(&mut self, now: Time, peers: Option<usize>) {
        if self.awaited_since.take().is_some() {
            self.next_at = self.next_at.max(now + LOCATE_INTERVAL);
        }
        if let Some(peers) = peers {
            if !self.answered_once && peers < HOLDERS_PER_PIECE_MAX {
                self.ask_soon(now);
            }
            self.answered_once = true;
        }
    }

    /// Whether a tracker ever answered with holders (it knew the file).
    pub fn answered_once(&self) -> bool {
        self.answered_once
    }

    /// Asks again [`LOCATE_INTERVAL_SECOND`] from `now` unless an ask is due sooner.
    pub fn ask_soon(&mut self, now: Time) {
        self.next_at = self.next_at.min(now + LOCATE_INTERVAL_SECOND);
    }

    /// A new tracker connection is ready at `now`: ask at once.
    pub fn tracker_ready(&mut self, now: Time) {
        self.next_at = now;
        self.awaited_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_back_off_while_pieces_arrive_and_return_to_the_base_interval_when_stuck() {
        let mut locate = Locate::new(Time::ZERO);
        assert_eq!(locate.due_at(), Time::ZERO);
        locate.asked(Time::ZERO, 0, true, true);
        assert_eq!(locate.due_at(), Time::ZERO + LOCATE_ANSWER_TIMEOUT.max(LOCATE_INTERVAL), "answer awaited");
        locate.answered(Time::from_millis(10), Some(HOLDERS_PER_PIECE_MAX));
        let first = locate.due_at();
        locate.asked(first, 5, true, true);
        locate.answered(first, Some(HOLDERS_PER_PIECE_MAX));
        assert_eq!(locate.due_at(), first + LOCATE_INTERVAL * 2, "progress: twice the interval");
        let second = locate.due_at();
        locate.asked(second, 5, true, true);
        locate.answered(second, Some(HOLDERS_PER_PIECE_MAX));
        assert_eq!(locate.due_at(), second + LOCATE_INTERVAL, "stuck: the base interval");
    }

    #[test]
    fn the_first_ask_without_a_manifest_is_for_holders_only() {
        let mut locate = Locate::new(Time::ZERO);
        assert!(!locate.asked(Time::ZERO, 0, true, false));
        assert!(locate.asked(Time::from_millis(5000), 0, true, false));
    }
}
