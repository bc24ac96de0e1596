//! Peer-to-peer links: the decisions about connections that need no other sub-machine. The
//! peer's links routing (in `mod.rs`) opens connections to the holders the tracker or peer
//! exchange names, runs the `Hello` handshake, asks a holder for the manifest a download does
//! not know yet, exchanges bitfields and `Have`s, carries out `slots`' decision on each inbound
//! connection, and tears a connection down (its chunks go back to the scheduler). This module
//! decides, from the connection table and the message at hand:
//! - which peers of a `Located` answer are worth a connection (holders of a missing chunk, and
//!   newcomers that hold nothing yet), and who holds each missing chunk ([`located`]);
//! - whether a remote's `Hello` completes its handshake ([`hello`]);
//! - which connections timed out: a courtesy connection (see `slots`) kept past its second, a
//!   handshake too slow, a connection idle too long, a remote that let our requests stall
//!   ([`timeouts`], checked once a second).

use std::net::SocketAddr;

use crate::bitfield::Bitfield;
use crate::ids::{ChunkIndex, ConnId, FileId, PeerId};
use crate::limits::{HANDSHAKE_TIMEOUT, HOLDERS_PER_PIECE_MAX, IDLE_TIMEOUT};
use crate::time::Time;
use crate::wire::{Hello, Holders, PeerAddr, PROTOCOL_VERSION};

use super::remote::{Remote, Remotes};

/// What a `Located` answer means for a download: the missing chunks with up to
/// [`HOLDERS_PER_PIECE_MAX`] holders' addresses each, and the holders of any of them.
#[derive(Debug)]
pub(super) struct Located {
    /// The peers that hold nothing yet, then the holders that hold a chunk we miss, each in the
    /// answer's order: the tracker names a few such newcomers so that a crowd that starts
    /// together meets before its first chunks arrive, and each fetches what another received.
    /// They come first because the peers are dialled in this order while outbound room lasts,
    /// and an answer names more holders than that room: the holders left out are busy
    /// serving others, the newcomers are who a newcomer trades with first.
    pub useful: Vec<PeerAddr>,
    /// Every missing chunk, with the addresses of some of its holders.
    pub wanted: Vec<(ChunkIndex, Vec<SocketAddr>)>,
}

/// Which of `holders` hold chunks missing from `have` (of the same length), and which hold
/// nothing.
pub(super) fn located(have: &Bitfield, holders: &Holders) -> Located {
    let mut wanted: Vec<(ChunkIndex, Vec<SocketAddr>)> = have.iter_missing().map(|p| (p, Vec::new())).collect();
    let mut holding = Vec::new();
    let mut useful = Vec::new();
    for (peer, bits) in holders.iter() {
        if bits.count() == 0 {
            useful.push(peer);
            continue;
        }
        let mut holds_missing = false;
        for (_, addrs) in wanted.iter_mut().filter(|(chunk, _)| bits.has(*chunk)) {
            holds_missing = true;
            if addrs.len() < HOLDERS_PER_PIECE_MAX {
                addrs.push(peer.addr);
            }
        }
        if holds_missing {
            holding.push(peer);
        }
    }
    useful.append(&mut holding);
    Located { useful, wanted }
}

/// Why a remote's `Hello` ends its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HelloRefused {
    /// It speaks another protocol version (told to the remote, too).
    Version {
        /// The version it sent.
        theirs: u32,
    },
    /// It claims another id than the one its key proved.
    WrongId {
        /// The id its `Hello` names.
        claimed: PeerId,
        /// The id its key proved.
        proven: PeerId,
    },
}

impl std::fmt::Display for HelloRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelloRefused::Version { theirs } => write!(f, "protocol version {PROTOCOL_VERSION} here, {theirs} there"),
            HelloRefused::WrongId { claimed, proven } => {
                write!(f, "hello claims peer id {claimed}, but its key proves {proven}")
            }
        }
    }
}

/// The remote's `Hello` arrived: its handshake is done unless the hello is refused. An inbound
/// remote's serving address takes the port it announces. Returns the files to exchange
/// bitfields for now.
pub(super) fn hello(remote: &mut Remote, hello: &Hello) -> Result<Vec<FileId>, HelloRefused> {
    if hello.version != PROTOCOL_VERSION {
        return Err(HelloRefused::Version { theirs: hello.version });
    }
    if remote.peer_id() != hello.peer_id {
        return Err(HelloRefused::WrongId { claimed: hello.peer_id, proven: remote.peer_id() });
    }
    Ok(remote.ready(hello))
}

/// The connections whose deadline passed at `now`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Timeouts {
    /// Courtesy connections (see `slots`) still open
    /// [`crate::limits::INBOUND_COURTESY_TIMEOUT`] after they connected, handshakes that took
    /// longer than [`HANDSHAKE_TIMEOUT`], and ready connections idle for [`IDLE_TIMEOUT`] (no
    /// request of ours waiting, nothing being served to them).
    pub close: Vec<ConnId>,
    /// Ready remotes that let our requests wait past their stall deadline.
    pub stalled: Vec<ConnId>,
}

/// Which connections time out at `now`; `serving` counts the requests being served to one.
pub(super) fn timeouts(remotes: &Remotes, now: Time, serving: impl Fn(ConnId) -> usize) -> Timeouts {
    let mut found = Timeouts::default();
    for (conn, remote) in remotes.iter() {
        if let Some(deadline) = remote.courtesy_deadline() {
            if deadline <= now {
                found.close.push(*conn);
            }
        } else if let Some(opened) = remote.handshake_since() {
            if opened + HANDSHAKE_TIMEOUT <= now {
                found.close.push(*conn);
            }
        } else if let Some(deadline) = remote.requests().stall_deadline() {
            if deadline <= now {
                found.stalled.push(*conn);
            }
        } else if serving(*conn) == 0 && remote.last_heard() + IDLE_TIMEOUT <= now {
            found.close.push(*conn);
        }
    }
    found
}
