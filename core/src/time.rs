//! `Time`: the only notion of "now" in the core.
//!
//! A `Time` is the span elapsed since the driver started, handed in with every input. The core
//! never reads a clock: `net` passes real elapsed time, `sim` passes virtual time.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// A moment, as the time elapsed since the driver's start, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    /// The driver's start.
    pub const ZERO: Time = Time(0);

    /// A moment `elapsed` after the driver's start (saturating at about 584,000 years).
    pub fn from_elapsed(elapsed: Duration) -> Time {
        Time(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX))
    }

    /// A moment `micros` microseconds after the driver's start.
    pub const fn from_micros(micros: u64) -> Time {
        Time(micros)
    }

    /// A moment `millis` milliseconds after the driver's start.
    pub const fn from_millis(millis: u64) -> Time {
        Time(millis.saturating_mul(1000))
    }

    /// Microseconds since the driver's start.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Time since the driver's start.
    pub const fn elapsed(self) -> Duration {
        Duration::from_micros(self.0)
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

/// The earlier of two optional deadlines (`None`: none set). Written out rather than as a
/// `min` over an iterator of options: machines fold their deadlines this way after every
/// input, and the iterator chain cost more than the comparisons.
pub(crate) fn earlier(a: Option<Time>, b: Option<Time>) -> Option<Time> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, span: Duration) -> Time {
        self.0.checked_add(u64::try_from(span.as_micros()).unwrap_or(u64::MAX)).map_or(Time(u64::MAX), Time)
    }
}

impl Sub for Time {
    type Output = Duration;
    fn sub(self, earlier: Time) -> Duration {
        self.saturating_since(earlier)
    }
}

impl fmt::Display for Time {
    /// Seconds with millisecond precision, e.g. `12.345s`. Written digit by digit into one
    /// buffer: every line of a simulator trace begins with a time, and the formatter's
    /// zero padding cost more than the rest of the line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digit = |n: u64| b'0' + (n % 10) as u8;
        let millis = self.0 / 1000 % 1000;
        // At most 14 digits of seconds (u64::MAX microseconds), then `.mmms`.
        let mut text = [0u8; 20];
        let mut at = text.len() - 5;
        text[at..].copy_from_slice(&[b'.', digit(millis / 100), digit(millis / 10), digit(millis), b's']);
        let mut secs = self.0 / 1_000_000;
        loop {
            at -= 1;
            text[at] = digit(secs);
            secs /= 10;
            if secs == 0 {
                break;
            }
        }
        f.write_str(std::str::from_utf8(&text[at..]).map_err(|_| fmt::Error)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        assert_eq!(Time::from_micros(u64::MAX) + Duration::from_secs(1), Time::from_micros(u64::MAX));
        assert_eq!(Time::from_millis(5) - Time::from_millis(9), Duration::ZERO);
        assert_eq!(Time::from_millis(9) - Time::from_millis(5), Duration::from_millis(4));
    }

    #[test]
    fn displays_seconds_with_millis() {
        assert_eq!(Time::from_micros(12_345_678).to_string(), "12.345s");
        assert_eq!(Time::ZERO.to_string(), "0.000s");
        assert_eq!(Time::from_micros(1_000_999).to_string(), "1.000s");
        assert_eq!(Time::from_micros(u64::MAX).to_string(), "18446744073709.551s");
    }
}
