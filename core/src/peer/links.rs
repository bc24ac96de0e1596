//! Peer-to-peer links: the decisions about connections that need no other sub-machine. The
//! peer's links routing (in `mod.rs`) opens connections to the holders the tracker or peer
//! exchange names, runs the `Hello` handshake, asks a holder for the manifest a download does
//! not know yet, exchanges bitfields and `Have`s, carries out `slots`' decision on each inbound
//! connection, and tears a connection down (its pieces go back to the scheduler). This module
//! decides, from the connection table and the message at hand:
//! - which holders of a `Located` answer are worth a connection, and who holds each missing
//!   piece ([`located`]);
//! - whether a remote's `Hello` completes its handshake ([`hello`]);
//! - what a remote's `Have`s add to what we know it holds ([`record_haves`]);
//! - which connections timed out: a handshake too slow, a connection idle too long, a remote
//!   that let our requests stall ([`timeouts`], checked once a second).

use std::net::SocketAddr;

use crate::bitfield::Bitfield;
use crate::ids::{ConnId, FileId, PeerId, PieceIndex};
use crate::limits::{HANDSHAKE_TIMEOUT, HOLDERS_PER_PIECE_MAX, IDLE_TIMEOUT};
use crate::time::Time;
use crate::wire::{Hello, Holders, PeerAddr, PROTOCOL_VERSION};

use super::remote::{Remote, Remotes, Stage};

/// What a `Located` answer means for a download: the missing pieces with up to
/// [`HOLDERS_PER_PIECE_MAX`] holders' addresses each, and the holders of any of them.
#[derive(Debug)]
pub(super) struct Located {
    /// The holders that hold a piece we miss, in the answer's order.
    pub useful: Vec<PeerAddr>,
    /// Every missing piece, with the addresses of some of its holders.
    pub wanted: Vec<(PieceIndex, Vec<SocketAddr>)>,
}

/// Which of `holders` hold pieces missing from `have` (of the same length).
pub(super) fn located(have: &Bitfield, holders: &Holders) -> Located {
    let mut wanted: Vec<(PieceIndex, Vec<SocketAddr>)> = have.iter_missing().map(|p| (p, Vec::new())).collect();
    let mut useful = Vec::new();
    for (peer, bits) in holders.iter() {
        let mut holds_missing = false;
        for (_, addrs) in wanted.iter_mut().filter(|(piece, _)| bits.has(*piece)) {
            holds_missing = true;
            if addrs.len() < HOLDERS_PER_PIECE_MAX {
                addrs.push(peer.addr);
            }
        }
        if holds_missing {
            useful.push(peer);
        }
    }
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
        /// The id its key proved, if any.
        proven: Option<PeerId>,
    },
}

impl std::fmt::Display for HelloRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelloRefused::Version { theirs } => write!(f, "protocol version {PROTOCOL_VERSION} here, {theirs} there"),
            HelloRefused::WrongId { claimed, proven } => {
                let proven = proven.map_or_else(|| "nothing".to_owned(), |id| id.to_string());
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
    if remote.peer_id != Some(hello.peer_id) {
        return Err(HelloRefused::WrongId { claimed: hello.peer_id, proven: remote.peer_id });
    }
    if !remote.outbound && hello.listen_port != 0 {
        remote.addr = SocketAddr::new(remote.addr.ip(), hello.listen_port);
    }
    remote.stage = Stage::Ready;
    Ok(std::mem::take(&mut remote.wanted).into_iter().collect())
}

/// Records that `remote` holds `pieces` of `file_id` (of `piece_count` pieces, each checked
/// against it). Returns whether this is the first we hear of the file from it, and the pieces
/// that are new.
pub(super) fn record_haves(
    remote: &mut Remote,
    file_id: FileId,
    piece_count: u32,
    pieces: &[PieceIndex],
) -> (bool, Vec<PieceIndex>) {
    let first = !remote.files.contains_key(&file_id);
    let have = remote.files.get_or_insert_with(file_id, || Bitfield::new(piece_count));
    (first, pieces.iter().copied().filter(|p| have.set(*p)).collect())
}

/// The connections whose deadline passed at `now`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Timeouts {
    /// Handshakes that took longer than [`HANDSHAKE_TIMEOUT`], and ready connections idle for
    /// [`IDLE_TIMEOUT`] (no request of ours waiting, nothing being served to them).
    pub close: Vec<ConnId>,
    /// Ready remotes that let our requests wait past their stall deadline.
    pub stalled: Vec<ConnId>,
}

/// Which connections time out at `now`; `serving` counts the requests being served to one.
pub(super) fn timeouts(remotes: &Remotes, now: Time, serving: impl Fn(ConnId) -> usize) -> Timeouts {
    let mut found = Timeouts::default();
    for (conn, remote) in remotes.iter() {
        if remote.stage != Stage::Ready {
            if remote.opened + HANDSHAKE_TIMEOUT <= now {
                found.close.push(*conn);
            }
        } else if let Some(deadline) = remote.requests.stall_deadline() {
            if deadline <= now {
                found.stalled.push(*conn);
            }
        } else if serving(*conn) == 0 && remote.last_heard + IDLE_TIMEOUT <= now {
            found.close.push(*conn);
        }
    }
    found
}
