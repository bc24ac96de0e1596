//! Per-connection state of a peer: one `Remote` per open peer-to-peer connection, and the
//! table of them (`Remotes`), which owns the outbound connection policy: at most
//! `OUTBOUND_PEERS_MAX` connections opened here, `CONNECTIONS_MAX` in all, and an address that
//! failed to connect left alone for `REMOTE_RETRY_DELAY`. Which inbound connections are
//! accepted is `slots.rs`.
//!
//! A remote is first `Connecting` (outbound only), then `AwaitHello`, then `Ready`. Only a ready
//! remote exchanges bitfields, requests and data. It owns what we know of the other side's
//! pieces (one bitfield per file it told us about) and our requests in flight to it.

use std::collections::{btree_map, BTreeMap};
use std::net::SocketAddr;
use std::time::Duration;

use crate::bitfield::Bitfield;
use crate::ids::{ConnId, FileId, PeerId, PieceIndex};
use crate::limits::{
    BLOCK_BYTES, CONNECTIONS_MAX, OUTBOUND_PEERS_MAX, RATE_WINDOW, REMOTE_RETRY_DELAY, REQUESTS_IN_FLIGHT_PER_CONN_MAX,
    REQUEST_PIPELINE_BYTES_MIN, REQUEST_PIPELINE_TIME, REQUEST_TIMEOUT, REQUEST_TIMEOUT_MAX,
};
use crate::small::{VecMap, VecSet};
use crate::time::Time;

use super::pieces::BlockKey;

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// We asked the driver to connect.
    Connecting,
    /// Open; waiting for the other side's `Hello`.
    AwaitHello,
    /// Handshake done.
    Ready,
}

/// One open (or opening) peer-to-peer connection.
#[derive(Debug)]
pub(super) struct Remote {
    /// The remote's serving address: the target for outbound connections, the source IP and
    /// announced port for inbound ones once its `Hello` arrived.
    pub addr: SocketAddr,
    /// The remote's id: as the tracker named it while an outbound connection opens, then as
    /// the remote's key proved it in the transport's handshake.
    pub peer_id: Option<PeerId>,
    /// Where the connection stands.
    pub stage: Stage,
    /// Whether we opened it.
    pub outbound: bool,
    /// Files to send our bitfield for once the handshake is done and the manifest is known.
    pub wanted: VecSet<FileId>,
    /// The remote's pieces, per file it sent a bitfield for.
    pub files: VecMap<FileId, Bitfield>,
    /// Files we sent our bitfield for on this connection.
    pub bitfield_sent: VecSet<FileId>,
    /// Our block requests in flight to it.
    pub in_flight: VecSet<BlockKey>,
    /// When it last made progress on our requests: a block arrived, or the first request of
    /// an empty pipeline went out.
    pub progress_at: Time,
    /// Until when it gets no new requests: it let requests wait for [`REQUEST_TIMEOUT`] without
    /// sending a block (they went to others). A block arriving ends this at once.
    pub resting_until: Option<Time>,
    /// How fast it delivers our requests (sizes our pipeline to it).
    pub rate: DeliveryRate,
    /// Pieces assigned to it, per file.
    pub assigned: VecSet<(FileId, PieceIndex)>,
    /// When it last gave a block we asked for or took one we served (or connected): the
    /// least useful inbound connection, idle for longest, makes way for a newcomer.
    pub useful_at: Time,
    /// When a frame last arrived.
    pub last_heard: Time,
    /// When the connection was opened (for the handshake timeout).
    pub opened: Time,
}

impl Remote {
    /// A connection we are opening to `addr`.
    pub fn outbound(addr: SocketAddr, peer_id: Option<PeerId>, now: Time) -> Remote {
        Remote::new(addr, peer_id, Stage::Connecting, true, now)
    }

    /// A connection the driver accepted from `addr`.
    pub fn inbound(addr: SocketAddr, now: Time) -> Remote {
        Remote::new(addr, None, Stage::AwaitHello, false, now)
    }

    fn new(addr: SocketAddr, peer_id: Option<PeerId>, stage: Stage, outbound: bool, now: Time) -> Remote {
        Remote {
            addr,
            peer_id,
            stage,
            outbound,
            wanted: VecSet::new(),
            files: VecMap::new(),
            bitfield_sent: VecSet::new(),
            in_flight: VecSet::new(),
            progress_at: now,
            resting_until: None,
            rate: DeliveryRate::default(),
            assigned: VecSet::new(),
            useful_at: now,
            last_heard: now,
            opened: now,
        }
    }

    /// Records a request sent at `now`.
    pub fn start_request(&mut self, key: BlockKey, now: Time) {
        if self.in_flight.is_empty() {
            self.progress_at = now;
        }
        self.rate.start(now);
        self.in_flight.insert(key);
    }

    /// Requests of blocks of `block_bytes` to keep in flight: the bytes it delivers in
    /// [`REQUEST_PIPELINE_TIME`] at its measured rate, at least [`REQUEST_PIPELINE_BYTES_MIN`]
    /// and at most [`REQUESTS_IN_FLIGHT_PER_CONN_MAX`] requests.
    pub fn pipeline_depth(&self, block_bytes: u32) -> usize {
        let micros = u64::try_from(REQUEST_PIPELINE_TIME.as_micros()).unwrap_or(u64::MAX);
        let bytes = (self.rate.bytes_per_s().saturating_mul(micros) / 1_000_000).max(REQUEST_PIPELINE_BYTES_MIN);
        let blocks = bytes.div_ceil(u64::from(block_bytes.max(1)));
        usize::try_from(blocks).unwrap_or(usize::MAX).min(REQUESTS_IN_FLIGHT_PER_CONN_MAX)
    }

    /// When the remote counts as stalled: requests are waiting and nothing arrived for
    /// `REQUEST_TIMEOUT`, or for two blocks' time at its measured rate when that is longer (a
    /// slow remote that keeps delivering is not stalled), at most `REQUEST_TIMEOUT_MAX`.
    pub fn stall_deadline(&self) -> Option<Time> {
        let blocks_time = (2 * u64::from(BLOCK_BYTES) * 1_000_000)
            .checked_div(self.rate.bytes_per_s())
            .map_or(REQUEST_TIMEOUT, Duration::from_micros);
        let patience = blocks_time.clamp(REQUEST_TIMEOUT, REQUEST_TIMEOUT_MAX);
        (!self.in_flight.is_empty()).then_some(self.progress_at + patience)
    }

    /// Whether it may be sent new requests at `now`.
    pub fn is_resting(&self, now: Time) -> bool {
        self.resting_until.is_some_and(|until| until > now)
    }

    /// An identity for strike and sender bookkeeping.
    pub fn identity(&self) -> Option<(PeerId, SocketAddr)> {
        self.peer_id.map(|id| (id, self.addr))
    }
}

/// The open (or opening) peer-to-peer connections; see the module docs for the policy.
#[derive(Debug, Default)]
pub(super) struct Remotes {
    by_conn: BTreeMap<ConnId, Remote>,
    /// Addresses that recently failed to connect, with when they may be tried again.
    retry_at: BTreeMap<SocketAddr, Time>,
}

impl Remotes {
    /// No connection.
    pub fn new() -> Remotes {
        Remotes::default()
    }

    /// The connection `conn`, if open.
    pub fn get(&self, conn: &ConnId) -> Option<&Remote> {
        self.by_conn.get(conn)
    }

    /// The connection `conn`, if open.
    pub fn get_mut(&mut self, conn: &ConnId) -> Option<&mut Remote> {
        self.by_conn.get_mut(conn)
    }

    /// Whether `conn` is open.
    pub fn contains_key(&self, conn: &ConnId) -> bool {
        self.by_conn.contains_key(conn)
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.by_conn.is_empty()
    }

    /// Every connection, in `ConnId` order.
    pub fn iter(&self) -> btree_map::Iter<'_, ConnId, Remote> {
        self.by_conn.iter()
    }

    /// Every connection id, in order.
    pub fn keys(&self) -> btree_map::Keys<'_, ConnId, Remote> {
        self.by_conn.keys()
    }

    /// Every connection, in `ConnId` order.
    pub fn values(&self) -> btree_map::Values<'_, ConnId, Remote> {
        self.by_conn.values()
    }

    /// Forgets `conn`.
    pub fn remove(&mut self, conn: &ConnId) -> Option<Remote> {
        self.by_conn.remove(conn)
    }

    /// How many remotes told us they hold `piece` of `file_id`.
    pub fn holders(&self, file_id: FileId, piece: PieceIndex) -> usize {
        self.values().filter(|r| r.files.get(&file_id).is_some_and(|have| have.has(piece))).count()
    }

    /// The connections whose handshake is done.
    pub fn ready(&self) -> Vec<ConnId> {
        self.by_conn.iter().filter(|(_, r)| r.stage == Stage::Ready).map(|(c, _)| *c).collect()
    }

    /// The connections to `peer_id`.
    pub fn of_peer(&self, peer_id: PeerId) -> Vec<ConnId> {
        self.by_conn.iter().filter(|(_, r)| r.peer_id == Some(peer_id)).map(|(c, _)| *c).collect()
    }

    /// A connection to `peer_id` or to `addr`, if one is open.
    pub fn find(&self, peer_id: PeerId, addr: SocketAddr) -> Option<ConnId> {
        self.by_conn.iter().find(|(_, r)| r.peer_id == Some(peer_id) || r.addr == addr).map(|(c, _)| *c)
    }

    /// Whether a connection to `addr` may be opened at `now`: under the caps, and `addr` did
    /// not fail within [`REMOTE_RETRY_DELAY`].
    pub fn may_open(&self, addr: SocketAddr, now: Time) -> bool {
        let outbound = self.by_conn.values().filter(|r| r.outbound).count();
        let retry_ok = self.retry_at.get(&addr).is_none_or(|t| *t <= now);
        outbound < OUTBOUND_PEERS_MAX && self.by_conn.len() < CONNECTIONS_MAX && retry_ok
    }

    /// Records a connection being opened (see [`Remotes::may_open`]).
    pub fn open(&mut self, conn: ConnId, remote: Remote) {
        self.retry_at.remove(&remote.addr);
        self.by_conn.insert(conn, remote);
    }

    /// Records an accepted connection (see `slots::admit`).
    pub fn accept(&mut self, conn: ConnId, remote: Remote) {
        self.by_conn.insert(conn, remote);
    }

    /// Leaves `addr` alone for a while after a failed or refused connection at `now`. Expired
    /// entries are dropped here, so the map holds only addresses that failed recently.
    pub fn back_off(&mut self, addr: SocketAddr, now: Time) {
        self.retry_at.retain(|_, until| *until > now);
        self.retry_at.insert(addr, now + REMOTE_RETRY_DELAY);
    }
}

/// Bytes a remote delivered per second: measured over windows of at least [`RATE_WINDOW`] from
/// its first request on, each new window averaged with the estimate so far.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct DeliveryRate {
    window_start: Option<Time>,
    window_bytes: u64,
    bytes_per_s: u64,
}

impl DeliveryRate {
    /// A request went out at `now`: the first one opens the first window.
    fn start(&mut self, now: Time) {
        self.window_start.get_or_insert(now);
    }

    /// `bytes` arrived at `now`.
    pub fn arrived(&mut self, now: Time, bytes: u64) {
        let Some(start) = self.window_start else { return };
        self.window_bytes += bytes;
        let elapsed_us = now.as_micros().saturating_sub(start.as_micros());
        let window_us = u64::try_from(RATE_WINDOW.as_micros()).unwrap_or(u64::MAX);
        if elapsed_us < window_us {
            return;
        }
        let measured = self.window_bytes.saturating_mul(1_000_000) / elapsed_us;
        self.bytes_per_s = if self.bytes_per_s == 0 { measured } else { (self.bytes_per_s + measured) / 2 };
        self.window_start = Some(now);
        self.window_bytes = 0;
    }

    /// The estimate (zero until a first window closed).
    pub fn bytes_per_s(&self) -> u64 {
        self.bytes_per_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_that_delivers_faster_gets_a_deeper_pipeline() {
        let addr = "10.0.0.1:1".parse().expect("an address");
        let mut slow = Remote::inbound(addr, Time::ZERO);
        let mut fast = Remote::inbound(addr, Time::ZERO);
        let first = Remote::inbound(addr, Time::ZERO).pipeline_depth(BLOCK_BYTES);
        assert_eq!(first, 1, "nothing measured yet: the smallest pipeline");
        slow.rate.start(Time::ZERO);
        fast.rate.start(Time::ZERO);
        for ms in 1..=20 {
            slow.rate.arrived(Time::from_millis(ms * 100), 16 * 1024);
            fast.rate.arrived(Time::from_millis(ms * 100), 256 * 1024);
        }
        // 160 KB/s against 2.6 MB/s.
        assert_eq!(slow.pipeline_depth(16 * 1024), 16, "16 KiB blocks: a count bound, not bytes");
        assert_eq!(slow.pipeline_depth(BLOCK_BYTES), 1);
        assert!(fast.pipeline_depth(BLOCK_BYTES) >= 9, "{}", fast.pipeline_depth(BLOCK_BYTES));
    }

    #[test]
    fn a_slow_remote_that_keeps_delivering_is_given_longer_before_it_counts_as_stalled() {
        let addr = "10.0.0.1:1".parse().expect("an address");
        let mut crawling = Remote::inbound(addr, Time::ZERO);
        let key = (FileId(crate::ids::Digest([1; 32])), PieceIndex(0), 0);
        crawling.start_request(key, Time::ZERO);
        assert_eq!(crawling.stall_deadline(), Some(Time::ZERO + REQUEST_TIMEOUT), "nothing measured yet");
        // 16 KiB a second: two blocks take longer than the longest patience.
        for s in 1..=4 {
            crawling.rate.arrived(Time::from_millis(s * 1000), 16 * 1024);
        }
        crawling.progress_at = Time::from_millis(4000);
        assert_eq!(crawling.stall_deadline(), Some(Time::from_millis(4000) + REQUEST_TIMEOUT_MAX));
    }

    #[test]
    fn a_failed_address_waits_out_its_back_off_and_outbound_connections_are_capped() {
        let mut remotes = Remotes::new();
        let addr: SocketAddr = "10.0.0.1:1".parse().expect("an address");
        assert!(remotes.may_open(addr, Time::ZERO));
        remotes.back_off(addr, Time::ZERO);
        assert!(!remotes.may_open(addr, Time::ZERO + REMOTE_RETRY_DELAY / 2), "backing off");
        assert!(remotes.may_open(addr, Time::ZERO + REMOTE_RETRY_DELAY));
        for n in 0..OUTBOUND_PEERS_MAX as u64 {
            let other = SocketAddr::from(([10, 0, 1, 1], 1000 + n as u16));
            remotes.open(ConnId::Outbound(n), Remote::outbound(other, None, Time::ZERO));
        }
        assert!(!remotes.may_open("10.0.0.2:1".parse().expect("an address"), Time::ZERO), "at the cap");
    }
}
