//! The tracker's open connections: the id each remote proved, handshake stage,
//! per-connection deadline, and the indexes that keep one connection per announced peer
//! address and per peer id.
//!
//! Invariants: `deadlines` holds exactly one `(deadline, conn)` per open connection (the
//! handshake deadline before `Hello`, the idle deadline after); `by_addr` maps a listening
//! peer's address, and `by_id` a peer's proven id, to the one ready `Role::Peer` connection
//! that claimed it; while that connection lives, nobody else may claim the address or the id.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::ids::{ConnId, PeerId};
use crate::limits::{HANDSHAKE_TIMEOUT, IDLE_TIMEOUT};
use crate::time::Time;
use crate::wire::{PeerAddr, Role};

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Connected; its `Hello` has not arrived.
    AwaitingHello,
    /// `Hello` exchanged.
    Ready {
        /// What the remote said it is.
        role: Role,
        /// Its address for others: source IP and announced listen port.
        peer: PeerAddr,
    },
}

/// One open connection.
#[derive(Clone, Copy, Debug)]
pub(super) struct Conn {
    /// The socket's source address.
    pub(super) remote: SocketAddr,
    /// The id the remote proved in the transport's handshake.
    pub(super) peer_id: PeerId,
    /// Handshake stage.
    pub(super) stage: Stage,
    deadline: Time,
}

/// Every open connection, with deadlines ordered for the timer.
#[derive(Debug, Default)]
pub(super) struct Conns {
    conns: BTreeMap<ConnId, Conn>,
    deadlines: BTreeSet<(Time, ConnId)>,
    by_addr: BTreeMap<SocketAddr, ConnId>,
    by_id: BTreeMap<PeerId, ConnId>,
}

/// Why a `Hello` cannot make its connection ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Claimed {
    /// Another live connection registered this listening address.
    Addr,
    /// Another live connection registered this peer id.
    Id,
}

impl Conns {
    /// Number of open connections.
    pub(super) fn len(&self) -> usize {
        self.conns.len()
    }

    /// The connection, if open.
    pub(super) fn get(&self, conn: ConnId) -> Option<&Conn> {
        self.conns.get(&conn)
    }

    /// Records a new connection that must send `Hello` within the handshake timeout.
    pub(super) fn open(&mut self, now: Time, conn: ConnId, remote: SocketAddr, peer_id: PeerId) {
        let deadline = now + HANDSHAKE_TIMEOUT;
        let previous = self.conns.insert(conn, Conn { remote, peer_id, stage: Stage::AwaitingHello, deadline });
        assert!(previous.is_none(), "a connection is opened once");
        self.deadlines.insert((deadline, conn));
    }

    /// Something arrived on `conn`: a ready connection's idle deadline moves to `now + IDLE`.
    pub(super) fn touch(&mut self, now: Time, conn: ConnId) {
        let Some(entry) = self.conns.get_mut(&conn) else { return };
        if matches!(entry.stage, Stage::Ready { .. }) {
            self.deadlines.remove(&(entry.deadline, conn));
            entry.deadline = now + IDLE_TIMEOUT;
            self.deadlines.insert((entry.deadline, conn));
        }
    }

    /// Marks `conn` as past its handshake, unless another live connection already claimed the
    /// same listening address or (for a peer) the same peer id: then `conn` is left as it was
    /// (the first claimant keeps both until its connection ends).
    pub(super) fn ready(&mut self, now: Time, conn: ConnId, role: Role, peer: PeerAddr) -> Result<(), Claimed> {
        let claims_addr = role == Role::Peer && peer.addr.port() != 0;
        let other = |holder: &&ConnId| **holder != conn;
        if claims_addr && self.by_addr.get(&peer.addr).filter(other).is_some() {
            return Err(Claimed::Addr);
        }
        if role == Role::Peer && self.by_id.get(&peer.peer_id).filter(other).is_some() {
            return Err(Claimed::Id);
        }
        let Some(entry) = self.conns.get_mut(&conn) else { return Ok(()) };
        entry.stage = Stage::Ready { role, peer };
        self.deadlines.remove(&(entry.deadline, conn));
        entry.deadline = now + IDLE_TIMEOUT;
        self.deadlines.insert((entry.deadline, conn));
        if claims_addr {
            self.by_addr.insert(peer.addr, conn);
        }
        if role == Role::Peer {
            self.by_id.insert(peer.peer_id, conn);
        }
        Ok(())
    }

    /// Forgets `conn`; returns it if it was open.
    pub(super) fn remove(&mut self, conn: ConnId) -> Option<Conn> {
        let entry = self.conns.remove(&conn)?;
        self.deadlines.remove(&(entry.deadline, conn));
        if let Stage::Ready { peer, .. } = entry.stage {
            if self.by_addr.get(&peer.addr) == Some(&conn) {
                self.by_addr.remove(&peer.addr);
            }
            if self.by_id.get(&peer.peer_id) == Some(&conn) {
                self.by_id.remove(&peer.peer_id);
            }
        }
        Some(entry)
    }

    /// The earliest deadline of any connection.
    pub(super) fn next_deadline(&self) -> Option<Time> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Removes and returns one connection whose deadline is at or before `now`.
    pub(super) fn pop_due(&mut self, now: Time) -> Option<(ConnId, Conn)> {
        let (at, conn) = *self.deadlines.first()?;
        if at > now {
            return None;
        }
        let entry = self.remove(conn);
        assert!(entry.is_some(), "a deadline always names an open connection");
        entry.map(|entry| (conn, entry))
    }
}
