//! The budget shared by the receive buffers of all the connections of one driver.
//!
//! Each connection's reader reports the bytes its buffer holds (allocated: received, not yet
//! decoded, or reserved for the next read) after every change. When all of them together hold
//! more than the budget, the connections holding the most are evicted, largest first, until the
//! rest fit: an evicted reader stops, logs why and reports its connection closed, and the
//! driver drops it.
//!
//! Why evict rather than pause reading: a pause holds every partly received frame where it is,
//! so a few remotes that send most of a large frame and stop would pause everybody else until
//! their idle timeout; and readers waiting for budget that only other waiting readers can free
//! would never resume. Honest frames complete and leave the buffer as fast as they arrive, so
//! the largest holders under pressure are the remotes that send large frames slowly.
//!
//! Invariant: `total_bytes` is the sum of the holders' `bytes`; an evicted holder counts 0.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// The budget of one driver's receive buffers.
#[derive(Debug)]
pub struct ReadBudget {
    max_bytes: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total_bytes: usize,
    /// By connection token.
    holders: BTreeMap<u64, Holder>,
}

#[derive(Debug)]
struct Holder {
    bytes: usize,
    evicted: bool,
    notify: Arc<Notify>,
}

/// One connection's part of a [`ReadBudget`]; leaving it (dropping) frees what it held.
#[derive(Debug)]
pub struct BudgetShare {
    budget: Arc<ReadBudget>,
    token: u64,
    notify: Arc<Notify>,
}

impl ReadBudget {
    /// A budget of `max_bytes` for all the receive buffers together.
    pub fn new(max_bytes: usize) -> Arc<ReadBudget> {
        Arc::new(ReadBudget { max_bytes, state: Mutex::default() })
    }

    /// Bytes all the buffers hold now.
    pub fn total_bytes(&self) -> usize {
        self.lock().total_bytes
    }

    /// The share of the connection with `token`, holding nothing yet.
    pub fn join(self: &Arc<Self>, token: u64) -> BudgetShare {
        let notify = Arc::new(Notify::new());
        let holder = Holder { bytes: 0, evicted: false, notify: notify.clone() };
        self.lock().holders.insert(token, holder);
        BudgetShare { budget: self.clone(), token, notify }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every statement that can panic, so a poisoned lock's
        // state is usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Evicts the largest holders (the newest first among equals) until the total fits.
    fn evict_over(&mut self, max_bytes: usize) {
        while self.total_bytes > max_bytes {
            let largest =
                self.holders.iter_mut().filter(|(_, h)| !h.evicted).max_by_key(|(token, h)| (h.bytes, **token));
            let Some((_, holder)) = largest else { return };
            self.total_bytes -= holder.bytes;
            holder.bytes = 0;
            holder.evicted = true;
            // Stored if the reader is not waiting now: its next wait ends at once.
            holder.notify.notify_one();
        }
    }
}

impl BudgetShare {
    /// Records that this connection's buffer holds `bytes`, evicting the largest holders if
    /// the budget is exceeded. `false` when this connection is evicted (now or before).
    pub fn hold(&self, bytes: usize) -> bool {
        let mut state = self.budget.lock();
        let Some(holder) = state.holders.get_mut(&self.token) else { return false };
        if holder.evicted {
            return false;
        }
        let before = std::mem::replace(&mut holder.bytes, bytes);
        state.total_bytes = state.total_bytes - before + bytes;
        state.evict_over(self.budget.max_bytes);
        state.holders.get(&self.token).is_some_and(|holder| !holder.evicted)
    }

    /// Whether all the receive buffers together hold under half the budget: room enough to
    /// reserve whole frames ahead of their bytes.
    pub fn roomy(&self) -> bool {
        self.budget.lock().total_bytes < self.budget.max_bytes / 2
    }

    /// The budget of all the receive buffers together.
    pub fn max_bytes(&self) -> usize {
        self.budget.max_bytes
    }

    /// Resolves once this connection has been evicted to make room for others.
    pub async fn evicted(&self) {
        self.notify.notified().await;
    }
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        let mut state = self.budget.lock();
        if let Some(holder) = state.holders.remove(&self.token) {
            state.total_bytes -= holder.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_the_budget_nobody_is_evicted_and_leaving_frees_the_bytes() {
        let budget = ReadBudget::new(100);
        let (a, b) = (budget.join(1), budget.join(2));
        assert!(a.hold(30) && b.hold(19) && a.roomy(), "under half the budget");
        assert!(b.hold(20) && !a.roomy() && !b.roomy(), "half the budget held");
        assert!(a.hold(60) && b.hold(40), "exactly at the budget");
        assert_eq!(budget.total_bytes(), 100);
        drop(a);
        assert_eq!(budget.total_bytes(), 40);
        assert!(b.hold(100));
    }

    #[tokio::test]
    async fn past_the_budget_the_largest_holder_is_evicted_and_told() {
        let budget = ReadBudget::new(100);
        let (hog, honest) = (budget.join(1), budget.join(2));
        assert!(hog.hold(90));
        assert!(honest.hold(11), "the one that grew is not the largest");
        hog.evicted().await;
        assert!(!hog.hold(0), "an evicted share stays evicted");
        assert_eq!(budget.total_bytes(), 11);
        assert!(!honest.hold(101), "a holder alone over the budget evicts itself");
        assert_eq!(budget.total_bytes(), 0);
    }
}
