//! How many upload slots a peer serves at once: [`UPLOAD_SLOTS_COUNT`], more while they leave
//! its uplink idle.
//!
//! One slot passes a piece on at the whole uplink's rate, so its receiver can pass it on in
//! turn soonest. But a slot's flow can be held back by its receiver (a downlink shared with the
//! receiver's other senders, or narrower than our uplink), and neither end knows the other's
//! link. So the gauge measures what leaves: the bytes of `Data` frames reported sent per
//! [`UPLOAD_RATE_WINDOW`] while connections waited for a slot (the uplink had more to send than
//! the slots took). A window that sent less than [`UPLOAD_RATE_SHORTFALL`] of the best such
//! window takes another slot (the slots' receivers hold them back); one within half a slot's
//! share of the best gives one back. An uplink faster than every receiver's downlink is not
//! found this way: its best is one receiver's downlink. [`SlotGauge`] owns that state,
//! private; its input is each report of frames sent, its output the slot count.

use crate::limits::{
    UPLOAD_RATE_SHORTFALL, UPLOAD_RATE_SILENCE, UPLOAD_RATE_WINDOW, UPLOAD_SLOTS_COUNT, UPLOAD_SLOTS_MAX,
};
use crate::time::Time;

/// The upload slot count and the departure rates it is judged by (see the module docs).
#[derive(Debug)]
pub(super) struct SlotGauge {
    slots: usize,
    /// When the current window opened (at a report of frames sent), if one is open.
    window_start: Option<Time>,
    /// The last report of frames sent.
    last_report: Option<Time>,
    /// Bytes reported sent in the window after its opening report.
    window_bytes: u64,
    /// Whether connections waited for a slot, every slot taken, at every report of the window.
    demanded: bool,
    /// The most bytes per second a demanded window sent.
    best_bytes_per_s: u64,
}

impl SlotGauge {
    /// [`UPLOAD_SLOTS_COUNT`] slots, nothing measured.
    pub fn new() -> SlotGauge {
        SlotGauge {
            slots: UPLOAD_SLOTS_COUNT,
            window_start: None,
            last_report: None,
            window_bytes: 0,
            demanded: false,
            best_bytes_per_s: 0,
        }
    }

    /// Connections served at a time now.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// `bytes` of `Data` left at `now`; `demanded`: connections wait for a slot and every slot
    /// is taken.
    pub fn sent(&mut self, now: Time, bytes: u64, demanded: bool) {
        // An uplink that fell silent does not measure its rate over the silence.
        let silent = self.last_report.is_none_or(|at| now.saturating_since(at) > UPLOAD_RATE_SILENCE);
        self.last_report = Some(now);
        let Some(start) = self.window_start.filter(|_| !silent) else {
            self.open(now, demanded);
            return;
        };
        self.window_bytes += bytes;
        self.demanded &= demanded;
        let elapsed = now.saturating_since(start);
        if elapsed < UPLOAD_RATE_WINDOW {
            return;
        }
        if self.demanded {
            let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1);
            self.judge(self.window_bytes.saturating_mul(1_000_000) / micros);
        }
        self.open(now, demanded);
    }

    fn open(&mut self, now: Time, demanded: bool) {
        self.window_start = Some(now);
        self.window_bytes = 0;
        self.demanded = demanded;
    }

    /// A demanded window sent `rate` bytes per second: one slot more, one fewer, or as many.
    fn judge(&mut self, rate: u64) {
        let best = self.best_bytes_per_s;
        self.best_bytes_per_s = best.max(rate);
        let (num, den) = UPLOAD_RATE_SHORTFALL;
        let share = best / self.slots as u64;
        if rate < best / den * num {
            self.slots = (self.slots + 1).min(UPLOAD_SLOTS_MAX);
        } else if rate + share / 2 >= best {
            self.slots = self.slots.saturating_sub(1).max(UPLOAD_SLOTS_COUNT);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Reports `frames` frames of `bytes` each, `every` apart from `at`, all demanded.
    fn run(gauge: &mut SlotGauge, at: &mut Time, frames: u32, bytes: u64, every: Duration) {
        for _ in 0..frames {
            *at = *at + every;
            gauge.sent(*at, bytes, true);
        }
    }

    const BLOCK: u64 = 256 * 1024;
    /// A 256 KiB block's time at 1 MB/s.
    const FULL: Duration = Duration::from_micros(262_144);
    /// At 500 kB/s.
    const HALF: Duration = Duration::from_micros(524_288);

    #[test]
    fn an_uplink_its_receivers_hold_back_takes_a_slot_more_and_gives_it_back_when_they_keep_up() {
        let mut gauge = SlotGauge::new();
        let mut at = Time::ZERO;
        run(&mut gauge, &mut at, 40, BLOCK, FULL);
        assert_eq!(gauge.slots(), UPLOAD_SLOTS_COUNT, "the uplink is full");
        // The receivers' downlinks are shared with their other senders: half the rate leaves.
        run(&mut gauge, &mut at, 4, BLOCK, HALF);
        assert!(gauge.slots() > UPLOAD_SLOTS_COUNT, "{}", gauge.slots());
        let grown = gauge.slots();
        run(&mut gauge, &mut at, 8, BLOCK, HALF);
        assert!(gauge.slots() > grown && gauge.slots() <= UPLOAD_SLOTS_MAX, "{}", gauge.slots());
        run(&mut gauge, &mut at, 80, BLOCK, FULL);
        assert_eq!(gauge.slots(), UPLOAD_SLOTS_COUNT, "the full rate again");
    }

    #[test]
    fn a_slow_window_counts_only_while_connections_wait_and_frames_keep_leaving() {
        let mut gauge = SlotGauge::new();
        let mut at = Time::ZERO;
        run(&mut gauge, &mut at, 40, BLOCK, FULL);
        // Nobody waits for a slot: the uplink has less to send, not less room.
        for _ in 0..8 {
            at = at + HALF;
            gauge.sent(at, BLOCK, false);
        }
        assert_eq!(gauge.slots(), UPLOAD_SLOTS_COUNT);
        // Frames leave after a silence: the rate is measured from the first of them on.
        at = at + UPLOAD_RATE_SILENCE * 2;
        run(&mut gauge, &mut at, 4, BLOCK, FULL);
        assert_eq!(gauge.slots(), UPLOAD_SLOTS_COUNT);
    }
}
