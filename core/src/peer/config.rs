//! How a peer is set up: its id, seed, trackers, listening address, upload cap and announce
//! interval.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::ids::PeerId;
use crate::limits::ANNOUNCE_INTERVAL_DEFAULT;

/// How a peer is set up.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// The peer's id (the driver's: proven by its key on TCP).
    pub peer_id: PeerId,
    /// Seed of the peer's RNG (every tie-break).
    pub seed: u64,
    /// The trackers' addresses (1 to `TRACKERS_PER_PEER_MAX`): the peer announces to each and
    /// locates from every one that answers.
    pub trackers: Vec<SocketAddr>,
    /// The port this peer accepts connections on, as the driver bound it.
    pub listen_port: u16,
    /// The one IP address it listens on, told to trackers (`None`: every address, or unknown).
    pub listen_ip: Option<IpAddr>,
    /// Upload cap in bytes per second (`None`: unlimited).
    pub upload_limit_bytes_per_s: Option<u64>,
    /// Interval between announces to the tracker.
    pub announce_interval: Duration,
}

impl PeerConfig {
    /// A configuration with one tracker, default intervals and no upload cap.
    pub fn new(peer_id: PeerId, seed: u64, tracker: SocketAddr, listen_port: u16) -> PeerConfig {
        PeerConfig {
            peer_id,
            seed,
            trackers: vec![tracker],
            listen_port,
            listen_ip: None,
            upload_limit_bytes_per_s: None,
            announce_interval: ANNOUNCE_INTERVAL_DEFAULT,
        }
    }
}
