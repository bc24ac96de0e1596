//! Upload pacing under a configured limit: a token bucket.

use crate::limits::{BLOCK_BYTES_MAX, UPLOAD_BURST_FRACTION_OF_SECOND};
use crate::time::Time;

const MICROS_PER_SECOND: i128 = 1_000_000;

/// Bytes may be spent while the balance is positive; it refills at `rate` bytes per second up
/// to a burst. Balances are in byte-microseconds so refills lose nothing to rounding.
#[derive(Clone, Debug)]
pub(super) struct TokenBucket {
    rate_bytes_per_s: i128,
    burst: i128,
    balance: i128,
    refilled_at: Time,
}

impl TokenBucket {
    pub fn new(rate_bytes_per_s: u64) -> TokenBucket {
        let rate = i128::from(rate_bytes_per_s.max(1));
        let burst_bytes = (rate / i128::from(UPLOAD_BURST_FRACTION_OF_SECOND)).max(i128::from(BLOCK_BYTES_MAX));
        let burst = burst_bytes * MICROS_PER_SECOND;
        TokenBucket { rate_bytes_per_s: rate, burst, balance: burst, refilled_at: Time::ZERO }
    }

    pub fn refill(&mut self, now: Time) {
        let elapsed = i128::from(now.as_micros().saturating_sub(self.refilled_at.as_micros()));
        self.balance = (self.balance + elapsed * self.rate_bytes_per_s).min(self.burst);
        self.refilled_at = now;
    }

    pub fn can_spend(&self) -> bool {
        self.balance > 0
    }

    pub fn spend(&mut self, bytes: u32) {
        self.balance -= i128::from(bytes) * MICROS_PER_SECOND;
    }

    /// When the balance will be positive again.
    pub fn positive_at(&self) -> Time {
        let deficit = -self.balance + 1;
        let micros = (deficit + self.rate_bytes_per_s - 1) / self.rate_bytes_per_s;
        Time::from_micros(self.refilled_at.as_micros().saturating_add(u64::try_from(micros).unwrap_or(u64::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces_to_its_rate() {
        let mut bucket = TokenBucket::new(1_000_000);
        // Burst: max(rate/8, one block) = one block.
        let mut now = Time::ZERO;
        let mut sent = 0u64;
        while now < Time::from_millis(10_000) {
            bucket.refill(now);
            if bucket.can_spend() {
                bucket.spend(100_000);
                sent += 100_000;
            } else {
                now = bucket.positive_at();
            }
        }
        // 10 s at 1 MB/s plus the initial burst, within one block.
        let expected = 10_000_000 + u64::from(BLOCK_BYTES_MAX);
        assert!(sent.abs_diff(expected) <= 200_000, "sent {sent}, expected about {expected}");
    }
}
