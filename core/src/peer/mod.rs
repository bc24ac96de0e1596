//! The peer state machine: sharing and downloading. Placeholder until built.

use std::net::SocketAddr;
use std::time::Duration;

use crate::ids::PeerId;
use crate::limits::ANNOUNCE_INTERVAL_DEFAULT;
use crate::machine::{Input, Machine, Output};
use crate::time::Time;

/// How a peer is set up.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Seed of the peer's RNG (its id and every tie-break).
    pub seed: u64,
    /// The tracker's address.
    pub tracker: SocketAddr,
    /// The port this peer accepts connections on, as the driver bound it.
    pub listen_port: u16,
    /// Upload cap in bytes per second (`None`: unlimited).
    pub upload_limit_bytes_per_s: Option<u64>,
    /// Interval between announces to the tracker.
    pub announce_interval: Duration,
}

impl PeerConfig {
    /// A configuration with default intervals and no upload cap.
    pub fn new(seed: u64, tracker: SocketAddr, listen_port: u16) -> PeerConfig {
        PeerConfig {
            seed,
            tracker,
            listen_port,
            upload_limit_bytes_per_s: None,
            announce_interval: ANNOUNCE_INTERVAL_DEFAULT,
        }
    }
}

/// The peer state machine.
#[derive(Debug)]
pub struct Peer {
    config: PeerConfig,
}

impl Peer {
    /// A peer that shares and wants nothing yet.
    pub fn new(config: PeerConfig) -> Peer {
        Peer { config }
    }

    /// The configuration the peer was built with.
    pub fn config(&self) -> &PeerConfig {
        &self.config
    }

    /// This peer's id.
    pub fn peer_id(&self) -> PeerId {
        PeerId([0; 16])
    }
}

impl Machine for Peer {
    fn handle(&mut self, _now: Time, _input: Input) {}
    fn poll_output(&mut self) -> Option<Output> {
        None
    }
    fn poll_timeout(&self) -> Option<Time> {
        None
    }
}
