//! The tracker state machine: who holds which chunk of which file.
//!
//! [`Tracker`] owns the connection protocol (handshake, per-connection deadlines, error replies
//! and closes); its submodules own the state behind the answers:
//! - `conns` — open connections, their handshake stage and deadlines;
//! - `registry` — soft state: file → manifest + one bitfield per holder, peer → TTL;
//! - `quotas` — what one peer registration and one source IP may make the tracker keep;
//! - `locate` — the bounded, shuffled choice of holders named in a `Located` answer;
//! - `answers` — holder lists recently built per file, reused for a short time;
//! - `parked` — peers' asks for a file not known yet, answered soon after an announce registers it;
//! - `view` — read-only views of the registry for a driver to show.
//!
//! Rules enforced here: the first message on a connection is a `Hello` of
//! [`PROTOCOL_VERSION`]; a peer's address is its connection's source IP with the listen port
//! of its `Hello` (from a loopback source, the routable listen IP its `Hello` names, if any), so
//! nobody on another host announces someone else's address, and while a connection holds an
//! address a second `Hello` claiming it is refused (it cannot close the first); [`Role::Client`] connections
//! only `List` and `Locate` and are never holders; a peer is forgotten when its connection
//! closes, when it leaves, or when it has not announced for `TTL_INTERVALS_COUNT` announce
//! intervals. Bad input from the network becomes an `Error` reply (and a close for protocol
//! violations), never a panic.

mod answers;
mod conns;
mod locate;
mod parked;
mod quotas;
mod registry;
#[cfg(test)]
mod tests;
mod view;

pub use view::{TrackedFile, TrackedPeer, TrackerView, ViewBounds};

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::ids::{ConnId, FileId, PeerId};
use crate::limits::{ANNOUNCE_INTERVAL_DEFAULT, OUTPUT_QUEUE_MAX, TRACKER_CONNECTIONS_MAX, TTL_INTERVALS_COUNT};
use crate::machine::{Event, GoneReason, Input, Machine, Output};
use crate::rng::Rng;
use crate::time::Time;
use crate::wire::{is_loopback, ErrorCode, Hello, Message, PeerAddr, Role, PROTOCOL_VERSION};

use conns::{Claimed, Conns, Stage};
use parked::Parked;
use registry::{Refusal, Registry};

/// How a tracker is set up.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// The id the tracker sends in its `Hello` (the driver's: proven by its key on TCP).
    pub peer_id: PeerId,
    /// Seed of the tracker's RNG (the holder shuffles).
    pub seed: u64,
    /// The announce interval peers are expected to keep; the TTL is a multiple of it.
    pub announce_interval: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig { peer_id: PeerId::from_seed(0), seed: 0, announce_interval: ANNOUNCE_INTERVAL_DEFAULT }
    }
}

/// The tracker state machine; drive it through [`Machine`].
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    peer_id: PeerId,
    rng: Rng,
    conns: Conns,
    registry: Registry,
    parked: Parked,
    outputs: VecDeque<Output>,
}

impl Tracker {
    /// A tracker that knows no peer yet. Every random choice comes from `config.seed`.
    pub fn new(config: TrackerConfig) -> Tracker {
        let ttl = config.announce_interval * TTL_INTERVALS_COUNT;
        Tracker {
            peer_id: config.peer_id,
            rng: Rng::from_seed(config.seed),
            config,
            conns: Conns::default(),
            registry: Registry::new(ttl),
            parked: Parked::default(),
            outputs: VecDeque::new(),
        }
    }

    /// The configuration the tracker was built with.
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// The id the tracker sends in its `Hello`.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Its files and peers, within `bounds`; changes nothing.
    pub fn view(&self, bounds: ViewBounds) -> TrackerView {
        self.registry.view(bounds)
    }

    fn push(&mut self, output: Output) {
        assert!(self.outputs.len() < OUTPUT_QUEUE_MAX, "tracker output queue not drained");
        self.outputs.push_back(output);
    }

    fn send(&mut self, conn: ConnId, message: Message) {
        self.push(Output::Send { conn, message });
    }

    fn send_error(&mut self, conn: ConnId, file_id: Option<FileId>, refusal: Refusal) {
        self.send(conn, Message::Error { file_id, code: refusal.code, detail: refusal.detail });
    }

    fn event(&mut self, event: Event) {
        self.push(Output::Event(event));
    }

    /// Fires every connection deadline, peer TTL and parked ask that is due at `now`.
    fn expire(&mut self, now: Time) {
        while let Some((conn, entry)) = self.conns.pop_due(now) {
            if entry.stage == Stage::AwaitingHello {
                let reason = format!("no hello within {}s", crate::limits::HANDSHAKE_TIMEOUT.as_secs());
                self.send(conn, Message::error(None, ErrorCode::HandshakeExpected, reason.clone()));
                self.event(Event::ProtocolViolation { conn, reason });
            }
            self.push(Output::Close { conn });
            self.forget_peer(conn, GoneReason::Disconnected);
        }
        while let Some(peer) = self.registry.pop_expired(now) {
            self.event(Event::PeerGone { peer, reason: GoneReason::Expired });
        }
        self.registry.expire_reuse(now);
        while let Some((conn, file_id, with_manifest)) = self.parked.pop_due(now) {
            // Only a peer's ask is parked, on a connection that may have closed since.
            if self.conns.get(conn).is_some() {
                self.answer(now, (conn, Role::Peer), file_id, with_manifest);
            }
        }
    }

    fn forget_peer(&mut self, conn: ConnId, reason: GoneReason) {
        if let Some(peer) = self.registry.forget(conn) {
            self.event(Event::PeerGone { peer, reason });
        }
    }

    /// The connection went away (no `Close` output: it is already closed).
    fn drop_conn(&mut self, conn: ConnId) {
        if self.conns.remove(conn).is_some() {
            self.forget_peer(conn, GoneReason::Disconnected);
        }
    }

    /// Closes `conn` from this side.
    fn close(&mut self, conn: ConnId) {
        if self.conns.remove(conn).is_some() {
            self.push(Output::Close { conn });
            self.forget_peer(conn, GoneReason::Disconnected);
        }
    }

    /// Answers a protocol violation: an error reply, a close, an event.
    fn reject(&mut self, conn: ConnId, code: ErrorCode, reason: String) {
        if self.conns.get(conn).is_none() {
            return;
        }
        self.send(conn, Message::error(None, code, reason.clone()));
        self.close(conn);
        self.event(Event::ProtocolViolation { conn, reason });
    }

    fn on_connected(&mut self, now: Time, conn: ConnId, remote: SocketAddr, peer_id: PeerId) {
        // A reused id means the driver lost a `Disconnected`: start the connection afresh.
        self.drop_conn(conn);
        if self.conns.len() >= TRACKER_CONNECTIONS_MAX {
            let detail = format!("the tracker serves at most {TRACKER_CONNECTIONS_MAX} connections");
            self.send(conn, Message::error(None, ErrorCode::Overloaded, detail));
            self.push(Output::Close { conn });
            return;
        }
        self.conns.open(now, conn, remote, peer_id);
    }

    fn on_message(&mut self, now: Time, conn: ConnId, message: Message) {
        // Messages still in flight on a connection this side closed are dropped.
        let Some(entry) = self.conns.get(conn) else { return };
        let (remote, proven, stage) = (entry.remote, entry.peer_id, entry.stage);
        self.conns.touch(now, conn);
        match stage {
            Stage::AwaitingHello => self.on_hello(now, conn, (remote, proven), message),
            Stage::Ready { role, peer } => self.on_request(now, conn, role, peer, message),
        }
    }

    /// A connection's first message, from `remote` that proved the id `proven`.
    fn on_hello(&mut self, now: Time, conn: ConnId, (remote, proven): (SocketAddr, PeerId), message: Message) {
        let hello = match message {
            Message::Hello(hello) => hello,
            other => {
                let reason = format!("expected hello, got {}", other.kind());
                return self.reject(conn, ErrorCode::HandshakeExpected, reason);
            }
        };
        if hello.version != PROTOCOL_VERSION {
            let reason = format!("tracker speaks protocol version {PROTOCOL_VERSION}, got {}", hello.version);
            return self.reject(conn, ErrorCode::VersionMismatch, reason);
        }
        if hello.role == Role::Tracker {
            return self.reject(conn, ErrorCode::Unexpected, "a tracker does not serve trackers".to_owned());
        }
        if hello.peer_id != proven {
            let reason = format!("hello claims peer id {}, but the connection's key proves {}", hello.peer_id, proven);
            return self.reject(conn, ErrorCode::BadRequest, reason);
        }
        let ip = recorded_ip(remote.ip(), hello.listen_ip);
        let peer = PeerAddr { peer_id: proven, addr: SocketAddr::new(ip, hello.listen_port) };
        if let Err(claimed) = self.conns.ready(now, conn, hello.role, peer) {
            let what = match claimed {
                Claimed::Addr => format!("address {}", peer.addr),
                Claimed::Id => format!("peer id {}", peer.peer_id),
            };
            let reason = format!("{what} is registered by another live connection; retry once it is closed");
            return self.reject(conn, ErrorCode::BadRequest, reason);
        }
        let reply = Hello::new(Role::Tracker, self.peer_id, 0);
        self.send(conn, Message::Hello(reply));
    }

    fn on_request(&mut self, now: Time, conn: ConnId, role: Role, peer: PeerAddr, message: Message) {
        match message {
            Message::Announce { file_id, manifest, have } if role == Role::Peer => {
                let chunks = have.count();
                match self.registry.announce(now, conn, peer, file_id, manifest.map(|m| *m), have) {
                    Ok(first) => {
                        if first {
                            self.event(Event::PeerAnnounced { peer, file_id, chunks });
                        }
                        self.send(conn, Message::Announced { file_id });
                        self.parked.known(now, file_id);
                    }
                    Err(refusal) => self.send_error(conn, Some(file_id), refusal),
                }
            }
            Message::Have { file_id, chunk } if role == Role::Peer => {
                if let Err(refusal) = self.registry.have(conn, file_id, chunk) {
                    self.send_error(conn, Some(file_id), refusal);
                }
            }
            Message::Haves { file_id, chunks } if role == Role::Peer => {
                // One refusal answers the batch: the chunks after it are refused for the same reason.
                if let Some(refusal) = chunks.iter().find_map(|chunk| self.registry.have(conn, file_id, *chunk).err()) {
                    self.send_error(conn, Some(file_id), refusal);
                }
            }
            Message::Leave { file_id } if role == Role::Peer => {
                if let Some(peer) = self.registry.leave(conn, file_id) {
                    self.event(Event::PeerGone { peer, reason: GoneReason::Left });
                }
            }
            Message::Locate { file_id, with_manifest } => self.on_locate(now, (conn, role), file_id, with_manifest),
            Message::List => {
                let files = self.registry.list();
                self.send(conn, files);
            }
            Message::Hello(_) => self.reject(conn, ErrorCode::HandshakeExpected, "hello came twice".to_owned()),
            other => {
                let detail = format!("a {:?} connection may not send {}", role, other.kind());
                self.send(conn, Message::error(None, ErrorCode::Unexpected, detail));
            }
        }
    }

    /// A `Locate`: a peer's ask of a file not known yet is parked (see `parked`), any other
    /// answered at once.
    fn on_locate(&mut self, now: Time, asker: (ConnId, Role), file_id: FileId, with_manifest: bool) {
        let (conn, role) = asker;
        if role == Role::Peer && !self.registry.knows(file_id) && self.parked.park(now, conn, file_id, with_manifest) {
            return;
        }
        self.answer(now, asker, file_id, with_manifest);
    }

    /// Answers a `Locate` with the holders of `file_id`, or that no live peer holds it.
    fn answer(&mut self, now: Time, asker: (ConnId, Role), file_id: FileId, with_manifest: bool) {
        let conn = asker.0;
        match self.registry.locate(now, file_id, asker, with_manifest, &mut self.rng) {
            Some(located) => self.send(conn, located),
            None => {
                let detail = "no live peer holds this file";
                self.send(conn, Message::error(Some(file_id), ErrorCode::UnknownFile, detail));
            }
        }
    }
}

/// The IP a peer is recorded at: its connection's source, unless that source is loopback and
/// the peer says it listens on one address that other hosts may reach (a peer on the tracker's
/// host that reached it at 127.0.0.1). So a remote host can name no address but its own. Both
/// are taken in canonical form (an IPv4-mapped IPv6 address as its IPv4 one), so one host is
/// one IP to the quotas, whichever listener it came through.
fn recorded_ip(source: IpAddr, announced: Option<IpAddr>) -> IpAddr {
    let source = source.to_canonical();
    match announced.map(|ip| ip.to_canonical()) {
        Some(ip) if is_loopback(source) && !(is_loopback(ip) || ip.is_unspecified() || ip.is_multicast()) => ip,
        _ => source,
    }
}

impl Machine for Tracker {
    fn handle(&mut self, now: Time, input: Input) {
        self.expire(now);
        match input {
            Input::Connected { conn, remote, peer_id } => self.on_connected(now, conn, remote, peer_id),
            Input::Disconnected { conn } => self.drop_conn(conn),
            Input::Message { conn, message } => self.on_message(now, conn, message),
            Input::BadFrame { conn, error } => self.reject(conn, ErrorCode::MalformedFrame, error.to_string()),
            // Expiry above is all a timer does; the tracker sends no bulk data, so it needs no
            // backpressure; commands and completions are the peer's.
            Input::Timeout | Input::Sent { .. } | Input::Completed(_) => {}
        }
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        [self.conns.next_deadline(), self.registry.next_expiry(), self.parked.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }
}
