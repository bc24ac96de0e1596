//! How many upload slots a peer opens: [`UPLOAD_SLOTS_MIN`], more while more make its upload
//! faster.
//!
//! Two slots fill an uplink whose receivers can each take half of it. Where they cannot (a
//! seeder far faster than its downloaders' downlinks, or downlinks no faster than the uplinks
//! sending to them, each shared by several senders), two slots leave the uplink partly idle
//! however many connections wait. More slots everywhere would cost the common case: each
//! slot's share of the uplink shrinks, so every chunk takes longer to arrive and be passed on.
//! The peer does not know its link's rate, so it measures and probes:
//! - a **window** lasts until [`SLOT_WINDOW_FRAMES_MIN`] `Data` frames were reported sent and
//!   [`SLOT_WINDOW_MIN`] passed, while connections waited for a slot all along (from report to
//!   report); its rate is the bytes reported sent over its length. A report while nobody waits
//!   ends the window unmeasured: more slots could not have been used then;
//! - after a measured window the peer **probes**: it doubles its slots (every other probe,
//!   opens one fewer while above the minimum) for the next window, and keeps the change if
//!   that window's rate was at least [`SLOT_GAIN_PERCENT`] higher (with one fewer: at most that
//!   much lower), trying one further step the same way at once; else it goes back and
//!   **holds** for [`SLOT_HOLD_WINDOWS`] windows before the next probe. A probe down lets a
//!   peer whose receivers sped up serve fewer connections faster again;
//! - a seeder **checks an undone probe** against the next window: if its rate fell by the
//!   margin from the probe's base and the probe's count did as well against it as a kept probe
//!   must, the probe was read across a drift and is kept after all. Its downloaders starting
//!   to serve each other make each of a seeder's windows slower than the last, and a probe
//!   undone that way would hold the seeder at too few slots for the whole of a swarm's start.
//!
//! Up, a probe doubles rather than adds one: where receivers are the limit, twice the slots
//! should carry about twice the bytes, a gain no window's noise or drift hides, while one slot
//! more among several adds only its fraction. A seeder far faster than its downloaders'
//! downlinks sees its rate fall while they start serving each other: against that drift one
//! slot more at a time shows no gain, and it would serve a few downloaders where a dozen could
//! take its data. Down, one at a time: a slot too many costs each chunk some speed, one too
//! few idles the uplink.
//!
//! With an upload limit the rate cannot rise past it, so probes are undone there too. A remote
//! cannot make us open more than [`UPLOAD_SLOTS_MAX`]: more only open while the bytes leaving
//! grow.
//!
//! [`SlotCount`] owns that state (private); its input is each report of `Data` frames sent,
//! with whether connections wait, and its output the number of slots to fill.

use std::time::Duration;

use crate::limits::{UPLOAD_SLOTS_MAX, UPLOAD_SLOTS_MIN};
use crate::time::Time;

/// Shortest window the upload's rate is measured over.
const SLOT_WINDOW_MIN: Duration = Duration::from_millis(200);
/// Fewest `Data` frames a window counts: frames are reported whole, so fewer make the rate
/// coarse.
const SLOT_WINDOW_FRAMES_MIN: u32 = 8;
/// How much faster twice the slots must make the upload to be kept (and how much slower one
/// fewer may), in percent: less is within what the same slots give from window to window.
const SLOT_GAIN_PERCENT: u64 = 10;
/// Measured windows after an undone probe before the next one.
const SLOT_HOLD_WINDOWS: u32 = 4;

/// The upload slots to fill, and the probe that adjusts them (see the module docs).
#[derive(Debug)]
pub(super) struct SlotCount {
    slots: usize,
    /// The window under way: when it started (at a report) and the bytes and frames reported
    /// since.
    window: Option<Window>,
    /// A probe under way: the slot count before it, and the rate measured with that.
    probe: Option<(usize, u64)>,
    /// The last probe, undone: the slot count it tried, the rate measured with it and the
    /// rate it was measured against, to be set against the next window's rate with the count
    /// restored.
    undone: Option<Undone>,
    /// Measured windows to let pass before the next probe.
    hold: u32,
    /// The next probe tries one slot fewer.
    down_next: bool,
}

#[derive(Clone, Copy, Debug)]
struct Undone {
    tried: usize,
    rate: u64,
    base: u64,
}

#[derive(Clone, Copy, Debug)]
struct Window {
    start: Time,
    bytes: u64,
    frames: u32,
}

impl SlotCount {
    /// [`UPLOAD_SLOTS_MIN`] slots, nothing measured.
    pub fn new() -> SlotCount {
        SlotCount { slots: UPLOAD_SLOTS_MIN, window: None, probe: None, undone: None, hold: 0, down_next: false }
    }

    /// The slots to fill.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// `frames` `Data` frames of `bytes` payload were reported sent at `now`; `waiting`:
    /// connections wait for a slot; `seeding` tells whether the peer holds every file it has
    /// whole, asked only when an undone probe is checked.
    pub fn sent(&mut self, now: Time, bytes: u64, frames: u32, waiting: bool, seeding: impl FnOnce() -> bool) {
        if !waiting {
            self.window = None;
            return;
        }
        let Some(window) = self.window.as_mut() else {
            self.window = Some(Window { start: now, bytes: 0, frames: 0 });
            return;
        };
        window.bytes += bytes;
        window.frames += frames;
        let elapsed = now.saturating_since(window.start);
        if window.frames < SLOT_WINDOW_FRAMES_MIN || elapsed < SLOT_WINDOW_MIN {
            return;
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let rate = window.bytes.saturating_mul(1_000_000) / micros;
        self.window = Some(Window { start: now, bytes: 0, frames: 0 });
        self.measured(rate, seeding);
    }

    /// A window measured `rate` bytes a second with the current slots.
    fn measured(&mut self, rate: u64, seeding: impl FnOnce() -> bool) {
        if let Some((before, base)) = self.probe.take() {
            let up = self.slots > before;
            if !kept(up, rate, base) {
                self.undone = Some(Undone { tried: self.slots, rate, base });
                self.slots = before;
                self.hold = SLOT_HOLD_WINDOWS;
            } else if !self.try_probe(up, rate) {
                self.hold = SLOT_HOLD_WINDOWS;
            }
            return;
        }
        if let Some(Undone { tried, rate: tried_rate, base }) = self.undone.take() {
            // The restored count measured again. A probe compares two windows one after the
            // other, and the rate can drift between them: while a seeder's downloaders start
            // serving each other, they fill each other's downlinks, and every window of the
            // seeder's is slower than the last. If the restored count fell by the margin from
            // the probe's base and the undone count did as well against this window as a kept
            // probe must, the probe was undone against a rate that no longer holds: it is
            // kept now, as it would have been (the next probe tried at once). A seeder only:
            // on downlinks its flows share, a flow more takes its share from the other
            // senders, which for a seeder is a share of data only it has, but for a
            // downloader, data others pass on too, each chunk of it now passed on more
            // slowly.
            let up = tried > self.slots;
            let fell = rate.saturating_mul(100 + SLOT_GAIN_PERCENT) <= base.saturating_mul(100);
            if fell && kept(up, tried_rate, rate) && seeding() {
                self.slots = tried;
                if !self.try_probe(up, tried_rate) {
                    self.hold = SLOT_HOLD_WINDOWS;
                }
                return;
            }
        }
        if self.hold > 0 {
            self.hold -= 1;
            return;
        }
        let down = self.down_next && self.slots > UPLOAD_SLOTS_MIN;
        self.down_next = !self.down_next;
        self.try_probe(!down, rate);
    }

    /// Doubles the slots (`up`; at most [`UPLOAD_SLOTS_MAX`]) or opens one fewer for the next
    /// window, measured against `rate`; whether the count allows it.
    fn try_probe(&mut self, up: bool, rate: u64) -> bool {
        let next = if up { (self.slots * 2).min(UPLOAD_SLOTS_MAX) } else { self.slots - 1 };
        if next == self.slots || !(UPLOAD_SLOTS_MIN..=UPLOAD_SLOTS_MAX).contains(&next) {
            return false;
        }
        self.probe = Some((self.slots, rate));
        self.slots = next;
        true
    }
}

/// Whether a probe that measured `rate` against `base` is kept: twice the slots (`up`) must
/// be [`SLOT_GAIN_PERCENT`] faster, one fewer at most that much slower.
fn kept(up: bool, rate: u64, base: u64) -> bool {
    let percent = if up { 100 + SLOT_GAIN_PERCENT } else { 100 - SLOT_GAIN_PERCENT };
    rate.saturating_mul(100) >= base.saturating_mul(percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds one window at `rate` bytes a second (frames of 64 KiB, connections waiting)
    /// from `*at`, the start of a window under way; returns the slots after it.
    fn window(count: &mut SlotCount, at: &mut Time, rate: u64) -> usize {
        window_of(count, at, rate, true)
    }

    /// [`window`] for a peer that seeds or (`seeding` false) downloads.
    fn window_of(count: &mut SlotCount, at: &mut Time, rate: u64, seeding: bool) -> usize {
        const FRAME: u64 = 64 * 1024;
        let every = Duration::from_micros(FRAME * 1_000_000 / rate);
        let for_time = SLOT_WINDOW_MIN.as_micros().div_ceil(every.as_micros().max(1));
        let frames = u32::try_from(for_time).expect("few frames").max(SLOT_WINDOW_FRAMES_MIN);
        for _ in 0..frames {
            *at = *at + every;
            count.sent(*at, FRAME, 1, true, || seeding);
        }
        count.slots()
    }

    /// A count with a window under way, and the time it started.
    fn started() -> (SlotCount, Time) {
        let mut count = SlotCount::new();
        let at = Time::from_millis(1_000);
        count.sent(at, 64 * 1024, 1, true, || true);
        (count, at)
    }

    #[test]
    fn slots_double_while_the_upload_gets_faster_and_go_back_when_it_does_not() {
        let min = UPLOAD_SLOTS_MIN;
        let (mut count, mut at) = started();
        assert_eq!(count.slots(), min);
        // The minimum measured: the next window has twice the slots.
        assert_eq!(window(&mut count, &mut at, 1_000_000), 2 * min);
        // Half as fast again with them: kept, twice as many tried.
        assert_eq!(window(&mut count, &mut at, 1_500_000), 4 * min);
        // No faster with those: back, and held there.
        assert_eq!(window(&mut count, &mut at, 1_550_000), 2 * min);
        for _ in 0..SLOT_HOLD_WINDOWS {
            assert_eq!(window(&mut count, &mut at, 1_500_000), 2 * min);
        }
        // Held long enough: the next probe tries one fewer, keeps it as the upload stays as
        // fast, and tries one fewer again, down to the minimum.
        assert_eq!(window(&mut count, &mut at, 1_500_000), 2 * min - 1);
        for slots in (min..2 * min - 1).rev() {
            assert_eq!(window(&mut count, &mut at, 1_480_000), slots);
        }
        assert_eq!(window(&mut count, &mut at, 1_480_000), min, "never under the minimum");
    }

    #[test]
    fn one_fewer_that_slows_the_upload_is_undone() {
        let min = UPLOAD_SLOTS_MIN;
        let (mut count, mut at) = started();
        window(&mut count, &mut at, 1_000_000);
        assert_eq!(window(&mut count, &mut at, 2_000_000), 4 * min);
        assert_eq!(window(&mut count, &mut at, 3_000_000), (8 * min).min(UPLOAD_SLOTS_MAX));
        assert_eq!(window(&mut count, &mut at, 3_000_000), 4 * min, "no gain: undone");
        for _ in 0..SLOT_HOLD_WINDOWS {
            window(&mut count, &mut at, 3_000_000);
        }
        assert_eq!(window(&mut count, &mut at, 3_000_000), 4 * min - 1, "a probe down");
        assert_eq!(window(&mut count, &mut at, 2_000_000), 4 * min, "slower: undone");
    }

    #[test]
    fn a_seeders_probe_undone_against_a_rate_that_since_fell_is_taken_up_again() {
        let min = UPLOAD_SLOTS_MIN;
        let (mut count, mut at) = started();
        assert_eq!(window(&mut count, &mut at, 1_000_000), 2 * min);
        // Twice the slots measure slower than the window before them: undone.
        assert_eq!(window(&mut count, &mut at, 950_000), min);
        // The restored count is slower still: the rate fell under both, and the probe's
        // count did better than this one. It is kept, and twice as many tried at once.
        assert_eq!(window(&mut count, &mut at, 600_000), 4 * min);

        // The same windows at a downloader: the probe stays undone, and the count is held.
        let (mut count, mut at) = started();
        assert_eq!(window_of(&mut count, &mut at, 1_000_000, false), 2 * min);
        assert_eq!(window_of(&mut count, &mut at, 950_000, false), min);
        for _ in 0..SLOT_HOLD_WINDOWS {
            assert_eq!(window_of(&mut count, &mut at, 600_000, false), min, "held");
        }
        assert_eq!(window_of(&mut count, &mut at, 600_000, false), 2 * min, "the next probe");

        // The restored count does about as well as the probe: it stays, and is held.
        let (mut count, mut at) = started();
        window(&mut count, &mut at, 1_000_000);
        assert_eq!(window(&mut count, &mut at, 950_000), min);
        assert_eq!(window(&mut count, &mut at, 900_000), min);
        for _ in 1..SLOT_HOLD_WINDOWS {
            assert_eq!(window(&mut count, &mut at, 600_000), min, "held");
        }
        assert_eq!(window(&mut count, &mut at, 600_000), 2 * min, "the next probe");

        // Windows that vary about one rate: the probe does a little better than its base,
        // not by the margin, and the restored count a little worse than the probe. The rate
        // did not fall from the base by the margin, so the undone count is not taken up.
        let (mut count, mut at) = started();
        window(&mut count, &mut at, 1_000_000);
        assert_eq!(window(&mut count, &mut at, 1_050_000), min);
        assert_eq!(window(&mut count, &mut at, 950_000), min);
    }

    #[test]
    fn nothing_is_measured_while_nobody_waits_and_the_slots_stay_within_their_bounds() {
        let (mut count, mut at) = started();
        for _ in 0..4 * SLOT_WINDOW_FRAMES_MIN {
            at = at + Duration::from_millis(50);
            count.sent(at, 64 * 1024, 1, false, || true);
        }
        assert_eq!(count.slots(), UPLOAD_SLOTS_MIN, "no window while nobody waits");
        count.sent(at, 64 * 1024, 1, true, || true);
        let mut rate = 1_000_000;
        // Doubling from the minimum reaches the most within as many probes as it has bits.
        for _ in 0..=UPLOAD_SLOTS_MAX.ilog2() {
            rate = rate * 3 / 2;
            assert!(window(&mut count, &mut at, rate) <= UPLOAD_SLOTS_MAX);
        }
        assert_eq!(count.slots(), UPLOAD_SLOTS_MAX, "every probe gained");
        assert_eq!(window(&mut count, &mut at, rate * 2), UPLOAD_SLOTS_MAX, "and no more than the most");
    }
}
