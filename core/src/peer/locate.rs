//! When a download asks the tracker where its chunks are: later and later while chunks keep
//! arriving, soon again when it is stuck, sooner still while it lacks the manifest, never twice
//! while an answer is awaited (unless the answer is overdue). One `Locate` per download; its
//! state is private to this module. It also tells whether the tracker answers late (busy with
//! a crowd's asks), so that a download that has peers to exchange with spares it (see
//! `tracker_link::locates_due`).

use std::time::Duration;

use crate::limits::{
    HOLDERS_PER_PIECE_MAX, LOCATE_ANSWER_TIMEOUT, LOCATE_BUSY_ANSWER_DELAY, LOCATE_INTERVAL, LOCATE_INTERVAL_MAX,
    LOCATE_INTERVAL_SECOND,
};
use crate::time::Time;

/// The tracker-ask schedule of one download.
#[derive(Debug)]
pub(super) struct Locate {
    /// When to ask the tracker again.
    next_at: Time,
    /// The current interval between asks: doubled while chunks keep arriving, reset when
    /// none arrived since the last ask.
    interval: Duration,
    /// Verified chunks at the last ask.
    have_at_ask: u32,
    /// When the last ask went out, while its answer is awaited (no second ask meanwhile).
    awaited_since: Option<Time>,
    /// Whether a tracker answered with holders (it knew the file). While the manifest is
    /// unknown the first ask is for holders only, which then send it; the asks after such an
    /// answer ask the tracker for it too. An answer that only says the file is not known yet
    /// (its holders have not announced) names nobody to ask, so it does not count.
    located: bool,
    /// Whether a tracker said it does not know the file.
    told_unknown: bool,
    /// How long the last answer took: a tracker whose uplink is queued with answers to a
    /// crowd answers late, and every ask it is sent meanwhile lengthens its queue.
    answer_delay: Duration,
    /// The last ask went out while the manifest was unknown.
    asked_without_manifest: bool,
    /// How long after an answer naming holders a download that still lacks the manifest asks
    /// again: from [`LOCATE_INTERVAL_SECOND`], doubled at each such answer up to
    /// [`LOCATE_INTERVAL`].
    unmanifested_wait: Duration,
}

impl Locate {
    /// A schedule whose first ask is due at `now`.
    pub fn new(now: Time) -> Locate {
        Locate {
            next_at: now,
            interval: LOCATE_INTERVAL,
            have_at_ask: 0,
            awaited_since: None,
            located: false,
            told_unknown: false,
            answer_delay: Duration::ZERO,
            asked_without_manifest: false,
            unmanifested_wait: LOCATE_INTERVAL_SECOND,
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
    /// `have_count` chunks verified. Returns whether it asks for the manifest too: a download
    /// without one asks for holders only, which then send it, until a tracker named holders.
    pub fn asked(&mut self, now: Time, have_count: u32, sent: bool, manifest_known: bool) -> bool {
        self.interval =
            if have_count > self.have_at_ask { (self.interval * 2).min(LOCATE_INTERVAL_MAX) } else { LOCATE_INTERVAL };
        self.have_at_ask = have_count;
        self.next_at = now + self.interval;
        self.awaited_since = sent.then_some(now);
        self.asked_without_manifest = !manifest_known;
        !manifest_known && self.located
    }

    /// The tracker answered at `now`, naming `peers` peers (`None`: it does not know the
    /// file). The next ask waits at least [`LOCATE_INTERVAL`] from here, however long the
    /// answer took. The first answer that names only a few asks again soon: the tracker names
    /// only peers that hold chunks, so downloaders that started together find each other once
    /// their first chunks arrived. So does the first answer that the file is not known (yet):
    /// in a crowd that starts with its seeders, the seeders' announces may reach the tracker
    /// just after the downloaders' first asks.
    ///
    /// A download that asked without the manifest and is answered with holders asks again
    /// [`LOCATE_INTERVAL_SECOND`] later, then at twice the wait each time, up to
    /// [`LOCATE_INTERVAL`], unless the answer came late (the tracker is busy): until some peer
    /// sends it the manifest it can neither fetch nor be named to others, and in a crowd that
    /// arrives at once the holders it was named admit few connections and the tracker sends
    /// the manifest itself to few askers
    /// ([`LOCATED_MANIFEST_BYTES_PER_WINDOW`](crate::limits::LOCATED_MANIFEST_BYTES_PER_WINDOW)),
    /// while the askers that got it are named as newcomers from their announce on.
    pub fn answered(&mut self, now: Time, peers: Option<usize>) {
        if let Some(sent) = self.awaited_since.take() {
            self.answer_delay = now - sent;
            self.next_at = self.next_at.max(now + LOCATE_INTERVAL);
            if self.asked_without_manifest && peers.is_some() && !self.tracker_busy() {
                self.next_at = now + self.unmanifested_wait;
                self.unmanifested_wait = (self.unmanifested_wait * 2).min(LOCATE_INTERVAL);
            }
        }
        match peers {
            Some(peers) => {
                if !self.located && peers < HOLDERS_PER_PIECE_MAX {
                    self.ask_soon(now);
                }
                self.located = true;
            }
            None if !self.located && !self.told_unknown => {
                self.told_unknown = true;
                self.ask_soon(now);
            }
            None => {}
        }
    }

    /// Whether the last answer took longer than [`LOCATE_BUSY_ANSWER_DELAY`]: the tracker is
    /// busy answering a crowd.
    pub fn tracker_busy(&self) -> bool {
        self.answer_delay > LOCATE_BUSY_ANSWER_DELAY
    }

    /// Whether chunks arrived since the last ask (`have_count` verified now).
    pub fn progressing(&self, have_count: u32) -> bool {
        have_count > self.have_at_ask
    }

    /// Whether a tracker ever answered with holders (it knew the file).
    pub fn answered_once(&self) -> bool {
        self.located
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
    fn asks_back_off_while_chunks_arrive_and_return_to_the_base_interval_when_stuck() {
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
    fn an_answer_later_than_the_busy_delay_marks_the_tracker_busy_and_a_prompt_one_clears_it() {
        let mut locate = Locate::new(Time::ZERO);
        locate.asked(Time::ZERO, 0, true, true);
        let late = Time::ZERO + LOCATE_BUSY_ANSWER_DELAY + Duration::from_millis(1);
        locate.answered(late, Some(HOLDERS_PER_PIECE_MAX));
        assert!(locate.tracker_busy());
        assert_eq!(locate.due_at(), late + LOCATE_INTERVAL, "the schedule itself is unchanged");
        locate.asked(locate.due_at(), 0, true, true);
        let prompt = locate.due_at();
        locate.asked(prompt, 0, true, true);
        locate.answered(prompt + LOCATE_BUSY_ANSWER_DELAY, Some(HOLDERS_PER_PIECE_MAX));
        assert!(!locate.tracker_busy());
    }

    #[test]
    fn a_download_without_the_manifest_asks_again_at_growing_waits_until_it_has_it() {
        let mut locate = Locate::new(Time::ZERO);
        let mut now = Time::ZERO;
        for wait_ms in [250, 500, 1000, 2000, 2000] {
            locate.asked(now, 0, true, false);
            now = now + Duration::from_millis(50);
            locate.answered(now, Some(HOLDERS_PER_PIECE_MAX));
            assert_eq!(locate.due_at(), now + Duration::from_millis(wait_ms));
            now = locate.due_at();
        }
        locate.asked(now, 0, true, true);
        locate.answered(now, Some(HOLDERS_PER_PIECE_MAX));
        assert_eq!(locate.due_at(), now + LOCATE_INTERVAL, "the manifest is known: the base interval");

        let mut busy = Locate::new(Time::ZERO);
        busy.asked(Time::ZERO, 0, true, false);
        let late = Time::ZERO + LOCATE_BUSY_ANSWER_DELAY + Duration::from_millis(1);
        busy.answered(late, Some(HOLDERS_PER_PIECE_MAX));
        assert_eq!(busy.due_at(), late + LOCATE_INTERVAL, "a late answer: the tracker is not asked sooner");
    }

    #[test]
    fn asks_without_a_manifest_are_for_holders_only_until_a_tracker_named_holders() {
        let mut locate = Locate::new(Time::ZERO);
        assert!(!locate.asked(Time::ZERO, 0, true, false));
        locate.answered(Time::from_millis(100), None);
        let soon = Time::from_millis(100) + LOCATE_INTERVAL_SECOND;
        assert_eq!(locate.due_at(), soon, "the file not known yet: ask again soon, once");
        assert!(!locate.asked(soon, 0, true, false), "no holder was named to send the manifest");
        locate.answered(soon, None);
        assert_eq!(locate.due_at(), soon + LOCATE_INTERVAL, "not known again: the base interval");
        let first = locate.due_at();
        assert!(!locate.asked(first, 0, true, false));
        locate.answered(first, Some(1));
        assert!(locate.asked(locate.due_at(), 0, true, false), "holders named: the tracker sends it too");
        assert!(!locate.asked(locate.due_at(), 0, true, true), "the manifest is known");
    }
}
