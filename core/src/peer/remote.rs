//! Per-connection state of a peer: one `Remote` per open peer-to-peer connection, and the
//! table of them (`Remotes`), which owns the outbound connection policy: at most
//! `OUTBOUND_PEERS_MAX` connections opened here, `CONNECTIONS_MAX` in all, and an address that
//! failed to connect left alone for `REMOTE_RETRY_DELAY`. Which inbound connections are
//! accepted is `slots.rs`.
//!
//! A remote is first `Connecting` (outbound only), then `AwaitHello`, then `Ready`. Only a ready
//! remote exchanges bitfields, requests and data. It owns what we know of the other side's
//! pieces (one bitfield per file it told us about) and, privately to the scheduler, our
//! requests to it ([`Requests`]).

use std::collections::{btree_map, BTreeMap};
use std::net::SocketAddr;

use crate::bitfield::Bitfield;
use crate::ids::{ConnId, FileId, PeerId, PieceIndex};
use crate::limits::{CONNECTIONS_MAX, OUTBOUND_PEERS_MAX, REMOTE_RETRY_DELAY};
use crate::small::{VecMap, VecSet};
use crate::time::Time;

use super::scheduler::Requests;

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
    /// Our requests to it (the scheduler's state of the remote).
    pub requests: Requests,
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
            requests: Requests::new(now),
            useful_at: now,
            last_heard: now,
            opened: now,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
