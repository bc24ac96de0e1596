//! Per-connection state of a peer: one `Remote` per open peer-to-peer connection.
//!
//! A remote is first `Connecting` (outbound only), then `AwaitHello`, then `Ready`. Only a ready
//! remote exchanges bitfields, requests and data. It owns what we know of the other side's
//! pieces (one bitfield per file it told us about) and our requests in flight to it.

use std::net::SocketAddr;

use crate::bitfield::Bitfield;
use crate::ids::{FileId, PeerId, PieceIndex};
use crate::limits::REQUEST_TIMEOUT;
use crate::small::{VecMap, VecSet};
use crate::time::Time;

use super::uploads::Offer;
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
    /// The remote's id, once its `Hello` arrived (or as the tracker named it).
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
    /// Files of which we told it only the pieces we offer (see `offers`).
    pub offers: VecMap<FileId, Offer>,
    /// Our block requests in flight to it.
    pub in_flight: VecSet<BlockKey>,
    /// When it last made progress on our requests: a block arrived, or the first request of
    /// an empty pipeline went out.
    pub progress_at: Time,
    /// Until when it gets no new requests: it let requests wait for [`REQUEST_TIMEOUT`] without
    /// sending a block (they went to others). A block arriving ends this at once.
    pub resting_until: Option<Time>,
    /// Pieces assigned to it, per file.
    pub assigned: VecSet<(FileId, PieceIndex)>,
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
            offers: VecMap::new(),
            in_flight: VecSet::new(),
            progress_at: now,
            resting_until: None,
            assigned: VecSet::new(),
            last_heard: now,
            opened: now,
        }
    }

    /// Records a request sent at `now`.
    pub fn start_request(&mut self, key: BlockKey, now: Time) {
        if self.in_flight.is_empty() {
            self.progress_at = now;
        }
        self.in_flight.insert(key);
    }

    /// When the remote counts as stalled: requests are waiting and nothing arrived for
    /// `REQUEST_TIMEOUT`.
    pub fn stall_deadline(&self) -> Option<Time> {
        (!self.in_flight.is_empty()).then_some(self.progress_at + REQUEST_TIMEOUT)
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
