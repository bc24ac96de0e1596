//! The tracker state machine: who holds which piece of which file. Placeholder until built.

use std::time::Duration;

use crate::limits::ANNOUNCE_INTERVAL_DEFAULT;
use crate::machine::{Input, Machine, Output};
use crate::time::Time;

/// How a tracker is set up.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// Seed of the tracker's RNG (its id and the holder shuffles).
    pub seed: u64,
    /// The announce interval peers are expected to keep; the TTL is a multiple of it.
    pub announce_interval: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig { seed: 0, announce_interval: ANNOUNCE_INTERVAL_DEFAULT }
    }
}

/// The tracker state machine.
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
}

impl Tracker {
    /// A tracker that knows no peer yet.
    pub fn new(config: TrackerConfig) -> Tracker {
        Tracker { config }
    }

    /// The configuration the tracker was built with.
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }
}

impl Machine for Tracker {
    fn handle(&mut self, _now: Time, _input: Input) {}
    fn poll_output(&mut self) -> Option<Output> {
        None
    }
    fn poll_timeout(&self) -> Option<Time> {
        None
    }
}
