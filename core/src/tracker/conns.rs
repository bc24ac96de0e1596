//! The tracker's open connections: handshake stage, per-connection deadline, and the index
//! that keeps one connection per announced peer address.
//!
//! Invariants: `deadlines` holds exactly one `(deadline, conn)` per open connection (the
//! handshake deadline before `Hello`, the idle deadline after); `by_addr` maps a listening
//! peer's address to the one ready `Role::Peer` connection that claimed it; while that
//! connection lives, nobody else may claim the address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::ids::ConnId;
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
    pub(super) fn open(&mut self, now: Time, conn: ConnId, remote: SocketAddr) {
        let deadline = now + HANDSHAKE_TIMEOUT;
        let previous = self.conns.insert(conn, Conn { remote, stage: Stage::AwaitingHello, deadline });
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
    /// same listening address: then `conn` is left as it was and that connection is returned
    /// (the first claimant keeps the address until its connection ends).
    pub(super) fn ready(&mut self, now: Time, conn: ConnId, role: Role, peer: PeerAddr) -> Result<(), ConnId> {
        let claims_addr = role == Role::Peer && peer.addr.port() != 0;
        if claims_addr {
            if let Some(holder) = self.by_addr.get(&peer.addr).filter(|holder| **holder != conn) {
                return Err(*holder);
            }
        }
        let Some(entry) = self.conns.get_mut(&conn) else { return Ok(()) };
        entry.stage = Stage::Ready { role, peer };
        self.deadlines.remove(&(entry.deadline, conn));
        entry.deadline = now + IDLE_TIMEOUT;
        self.deadlines.insert((entry.deadline, conn));
        if claims_addr {
            self.by_addr.insert(peer.addr, conn);
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
