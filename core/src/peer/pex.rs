//! Peer exchange: connected peers of a file tell each other of the other peers of that file
//! they are connected to, so a swarm keeps finding peers when its trackers are gone or slow.
//! The trackers remain the first source; what a remote tells is used like a tracker's answer
//! (a connection is opened to each named peer, within the outbound bound).
//!
//! [`Pex`] is a sub-machine with private state. Its inputs are a round's view of the peer's
//! connections ([`Pex::round`], every [`PEX_INTERVAL`]) and a remote's `Peers` message
//! ([`Pex::heard`]); its outputs are the `Peers` messages to send and the verdict on a message
//! received. The peer routes its timer and the `Peers` messages it receives here.
//!
//! **Sending.** A remote that downloads a file (it sent a bitfield for it that is not whole)
//! is told, in a `Peers` message, of up to [`PEX_PEERS_PER_MESSAGE_MAX`] of the file's other
//! peers we have a ready connection with, drawn at random so that a crowd's members do not all
//! hear of the same few first. Only peers with a serving address and an id (from their
//! `Hello`) are named, and nobody is named twice on a connection. How often a connection is
//! told depends on the trackers, the first source of peers:
//! - while one of our trackers is ready, a connection gets one message, its first: an
//!   introduction to at most [`PEX_INTRODUCTION_PEERS_MAX`] of the peers we know (a tracker
//!   names the holders of chunks, so a newcomer of a crowd, holding nothing, would otherwise
//!   be found by others only once it holds chunks), at one message per connection rather than
//!   one per connection and round. A downloader's first bitfield brings the next round forward
//!   to at most [`PEX_INTRODUCTION_DELAY`] away: the newcomers of a crowd meet each other
//!   before the first chunks arrive, and pass those on at once instead of after the tracker's
//!   next answer;
//! - while none is ready, the peers not yet named to it follow every round, so a swarm whose
//!   trackers are gone keeps forming.
//!
//! **Receiving.** A remote's `Peers` for a file is acted on at most every
//! [`PEX_RECEIVE_INTERVAL_MIN`], only while the file is being fetched; a message naming more
//! than [`PEX_PEERS_PER_MESSAGE_MAX`] peers breaks the protocol. While one of our trackers is
//! ready, only as many of the named peers are dialled as keep the file's connections (open or
//! opening) under [`PEX_MESH_PEERS`]: the tracker keeps naming holders as they appear, and
//! every connection more is more `Haves` and requests to carry, so a crowd's mesh stays
//! sparse. Without a ready tracker every named peer is dialled (within the outbound bound).
//!
//! State: the next round's time and, per connection and file, the peers named to it (pruned to
//! the peers still connected, so within the connection bound) and when its last message was
//! acted on. Entries of closed connections are dropped at the next round, so both maps stay
//! within the open connections.

use std::collections::BTreeMap;

use crate::ids::{ConnId, FileId, PeerId};
use crate::limits::{
    PEX_INTERVAL, PEX_INTRODUCTION_DELAY, PEX_INTRODUCTION_PEERS_MAX, PEX_MESH_PEERS, PEX_PEERS_PER_MESSAGE_MAX,
    PEX_RECEIVE_INTERVAL_MIN,
};
use crate::rng::Rng;
use crate::small::VecSet;
use crate::time::Time;
use crate::wire::PeerAddr;

use super::remote::Remotes;

/// The peer-exchange state of one peer.
#[derive(Debug)]
pub(super) struct Pex {
    /// When the next round of `Peers` messages goes out.
    due_at: Time,
    /// The peers already named to each connection, per file (an entry exists once a message
    /// went out on it).
    told: BTreeMap<(ConnId, FileId), VecSet<PeerId>>,
    /// When each connection's last `Peers` of each file was acted on.
    heard_at: BTreeMap<(ConnId, FileId), Time>,
}

/// What to do with a `Peers` message a remote sent.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Heard {
    /// Dial this many of the peers it names (the first ones), as if a tracker named them.
    Use(usize),
    /// Drop it: the file is not being fetched, the remote's last one was acted on too
    /// recently, or a tracker is ready and the file's mesh is full.
    Ignore,
    /// It names more peers than a message may: a protocol violation.
    TooLong,
}

/// One round's `Peers` messages: `(connection, file, peers)`.
pub(super) type Round = Vec<(ConnId, FileId, Vec<PeerAddr>)>;

impl Pex {
    /// Nothing told or heard; the first round is due at once.
    pub fn new() -> Pex {
        Pex { due_at: Time::ZERO, told: BTreeMap::new(), heard_at: BTreeMap::new() }
    }

    /// When the next round is due (the peer asks for it while it has remotes).
    pub fn due_at(&self) -> Time {
        self.due_at
    }

    /// A remote that downloads a file sent its first bitfield for it at `now`: the next round
    /// comes within [`PEX_INTRODUCTION_DELAY`] (see the module docs).
    pub fn newcomer(&mut self, now: Time) {
        self.due_at = self.due_at.min(now + PEX_INTRODUCTION_DELAY);
    }

    /// This round's messages, if the round is due at `now` (empty otherwise). `tracker_ready`
    /// says whether one of our trackers is ready (see the module docs).
    pub fn round(&mut self, now: Time, remotes: &Remotes, tracker_ready: bool, rng: &mut Rng) -> Round {
        if self.due_at > now {
            return Vec::new();
        }
        self.due_at = now + PEX_INTERVAL;
        self.told.retain(|(conn, _), _| remotes.contains_key(conn));
        self.heard_at.retain(|(conn, _), _| remotes.contains_key(conn));
        // The remotes come in connection order and each one's files in id order, as the keys
        // of `told` do: one walk over both finds who was introduced, not a search per pair.
        let mut told = self.told.keys().peekable();
        let due: Vec<(ConnId, FileId)> = remotes
            .iter()
            .filter(|(_, remote)| remote.is_ready())
            .flat_map(|(conn, remote)| remote.files().map(move |(file_id, have)| (*conn, *file_id, have)))
            .filter(|(conn, file_id, have)| {
                let key = (*conn, *file_id);
                while told.next_if(|told| **told < key).is_some() {}
                let introduced = told.peek().is_some_and(|told| **told == key);
                // The chunks (behind one more pointer) are read only for a connection that is due.
                (!tracker_ready || !introduced) && !have.is_full()
            })
            .map(|(conn, file_id, _)| (conn, file_id))
            .collect();
        if due.is_empty() {
            return Vec::new();
        }
        let by_file = nameable_by_file(remotes);
        let mut round = Vec::new();
        let most = if tracker_ready { PEX_INTRODUCTION_PEERS_MAX } else { PEX_PEERS_PER_MESSAGE_MAX };
        for (conn, file_id) in due {
            let Some(peers) = by_file.get(&file_id) else { continue };
            if let Some(fresh) = self.fresh(conn, file_id, peers, most, rng) {
                round.push((conn, file_id, fresh));
            }
        }
        round
    }

    /// The peers of `peers` (the file's nameable ones) that `conn` has not heard of, at most a
    /// message's worth drawn at random, recorded as told; `None` when there are none.
    fn fresh(
        &mut self,
        conn: ConnId,
        file_id: FileId,
        peers: &[(ConnId, PeerAddr)],
        most: usize,
        rng: &mut Rng,
    ) -> Option<Vec<PeerAddr>> {
        let told = self.told.get(&(conn, file_id));
        // Drawn among references (the same draws as among the addresses themselves), and only
        // the chosen few copied: the message holds `most` addresses, not the file's every peer.
        let mut candidates: Vec<&PeerAddr> = peers
            .iter()
            .filter(|(c, p)| *c != conn && told.is_none_or(|told| !told.contains(&p.peer_id)))
            .map(|(_, p)| p)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        rng.shuffle(&mut candidates);
        let fresh: Vec<PeerAddr> = candidates.into_iter().take(most).copied().collect();
        let mut kept = VecSet::new();
        // Only peers still connected stay recorded: the set stays within the connection bound.
        kept.extend(
            told.into_iter().flat_map(VecSet::iter).copied().filter(|id| peers.iter().any(|(_, p)| p.peer_id == *id)),
        );
        kept.extend(fresh.iter().map(|p| p.peer_id));
        self.told.insert((conn, file_id), kept);
        Some(fresh)
    }

    /// A remote on `conn` sent a `Peers` for `file_id` naming `named` peers at `now`;
    /// `fetching` says whether we fetch the file, `remotes` are our connections and
    /// `tracker_ready` whether one of our trackers is ready (see the module docs).
    pub fn heard(
        &mut self,
        now: Time,
        (conn, file_id): (ConnId, FileId),
        named: usize,
        fetching: bool,
        (remotes, tracker_ready): (&Remotes, bool),
    ) -> Heard {
        if named > PEX_PEERS_PER_MESSAGE_MAX {
            return Heard::TooLong;
        }
        let key = (conn, file_id);
        if !fetching || self.heard_at.get(&key).is_some_and(|at| now < *at + PEX_RECEIVE_INTERVAL_MIN) {
            return Heard::Ignore;
        }
        let most = if tracker_ready {
            let meshed = remotes.values().filter(|r| r.chunks(file_id).is_some() || r.wants(file_id));
            PEX_MESH_PEERS.saturating_sub(meshed.count())
        } else {
            named
        };
        if most == 0 {
            return Heard::Ignore;
        }
        self.heard_at.insert(key, now);
        Heard::Use(most)
    }
}

/// Up to [`PEX_INTRODUCTION_PEERS_MAX`] of our ready remotes of `file_id` other than `conn`,
/// drawn at random: where a peer too busy to take `conn` sends it instead.
pub(super) fn referral(remotes: &Remotes, conn: ConnId, file_id: FileId, rng: &mut Rng) -> Vec<PeerAddr> {
    let mut candidates: Vec<PeerAddr> = remotes
        .iter()
        .filter(|(c, r)| **c != conn && !r.is_courtesy() && r.chunks(file_id).is_some())
        .filter_map(|(_, r)| r.nameable())
        .collect();
    rng.shuffle(&mut candidates);
    candidates.truncate(PEX_INTRODUCTION_PEERS_MAX);
    candidates
}

/// Per file, the ready remotes that may be named (an id and a serving address), with their
/// connections.
fn nameable_by_file(remotes: &Remotes) -> BTreeMap<FileId, Vec<(ConnId, PeerAddr)>> {
    let mut by_file: BTreeMap<FileId, Vec<(ConnId, PeerAddr)>> = BTreeMap::new();
    for (conn, remote) in remotes.iter() {
        let Some(named) = remote.nameable() else { continue };
        for (file_id, _) in remote.files() {
            by_file.entry(*file_id).or_default().push((*conn, named));
        }
    }
    by_file
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use crate::bitfield::Bitfield;
    use crate::ids::{ConnId, PeerId};
    use crate::limits::{PEX_INTERVAL, PEX_PEERS_PER_MESSAGE_MAX, PEX_RECEIVE_INTERVAL_MIN};
    use crate::machine::{step, step_command, Command, Event, Input, Output};
    use crate::peer::{Peer, PeerConfig};
    use crate::testkit::file;
    use crate::time::Time;
    use crate::wire::{Hello, Message, PeerAddr, Role};

    fn outputs(peer: &mut Peer, at: Time, input: Input) -> Vec<Output> {
        let mut outputs = Vec::new();
        step(peer, at, input, |output| outputs.push(output));
        outputs
    }

    fn addr(host: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, host], port))
    }

    /// A peer of tracker 10.0.0.1, with a ready inbound connection from each of `hosts`.
    fn peer_with_remotes(hosts: &[u8]) -> (Peer, Vec<ConnId>) {
        let mut peer = Peer::new(PeerConfig::new(PeerId::from_seed(1), 1, addr(1, 7000), 7001));
        let conns = hosts.iter().map(|&host| accept(&mut peer, host, Time::ZERO)).collect();
        (peer, conns)
    }

    /// A ready inbound connection from `host` (peer id `[host; 16]`, serving on port 7001) at `at`.
    fn accept(peer: &mut Peer, host: u8, at: Time) -> ConnId {
        let conn = ConnId::Inbound(u64::from(host));
        outputs(peer, at, Input::Connected { conn, remote: addr(host, 40_000), peer_id: PeerId([host; 16]) });
        let hello = Hello::new(Role::Peer, PeerId([host; 16]), 7001);
        outputs(peer, at, Input::Message { conn, message: Message::Hello(hello) });
        conn
    }

    fn peers_sent(outputs: &[Output]) -> Vec<(ConnId, Vec<SocketAddr>)> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Send { conn, message: Message::Peers { peers, .. } } => {
                    Some((*conn, peers.iter().map(|p| p.addr).collect()))
                }
                _ => None,
            })
            .collect()
    }

    fn connects(outputs: &[Output]) -> Vec<SocketAddr> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Connect { addr, .. } => Some(*addr),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_seeder_tells_each_downloader_of_the_others_once() {
        let (_, manifest) = file(4 * 16 * 1024, 16 * 1024, 7);
        let (mut seeder, conns) = peer_with_remotes(&[2, 3, 4]);
        let share = Command::Share { manifest: manifest.clone(), have: Bitfield::full(4) };
        step_command(&mut seeder, Time::ZERO, share, |_| {}).expect("a valid command");
        // Two downloaders and one remote that holds the whole file (it downloads nothing).
        let bitfields = [Bitfield::new(4), Bitfield::new(4), Bitfield::full(4)];
        for (conn, have) in conns.iter().zip(bitfields) {
            let message = Message::Bitfield { file_id: manifest.file_id(), have };
            outputs(&mut seeder, Time::ZERO, Input::Message { conn: *conn, message });
        }
        let round = peers_sent(&outputs(&mut seeder, Time::ZERO + PEX_INTERVAL, Input::Timeout));
        let mut told: Vec<(ConnId, Vec<SocketAddr>)> =
            round.into_iter().map(|(conn, mut addrs)| (conn, (addrs.sort(), addrs).1)).collect();
        told.sort();
        assert_eq!(
            told,
            [(conns[0], vec![addr(3, 7001), addr(4, 7001)]), (conns[1], vec![addr(2, 7001), addr(4, 7001)])],
            "each downloader hears of the two others; the whole holder hears nothing"
        );
        let next = outputs(&mut seeder, Time::ZERO + PEX_INTERVAL * 2, Input::Timeout);
        assert!(peers_sent(&next).is_empty(), "nobody is named twice on a connection: {next:?}");
    }

    #[test]
    fn a_downloader_s_first_bitfield_brings_the_next_round_forward() {
        use crate::limits::PEX_INTRODUCTION_DELAY;

        let (_, manifest) = file(4 * 16 * 1024, 16 * 1024, 6);
        let (mut seeder, conns) = peer_with_remotes(&[2, 3]);
        let share = Command::Share { manifest: manifest.clone(), have: Bitfield::full(4) };
        step_command(&mut seeder, Time::ZERO, share, |_| {}).expect("a valid command");
        assert!(peers_sent(&outputs(&mut seeder, Time::ZERO, Input::Timeout)).is_empty(), "nobody downloads yet");
        let joined = Time::from_millis(300);
        assert!(joined + PEX_INTRODUCTION_DELAY < Time::ZERO + PEX_INTERVAL, "sooner than the next round");
        for conn in &conns {
            let message = Message::Bitfield { file_id: manifest.file_id(), have: Bitfield::new(4) };
            outputs(&mut seeder, joined, Input::Message { conn: *conn, message });
        }
        let early = joined + (PEX_INTRODUCTION_DELAY - std::time::Duration::from_millis(1));
        assert!(peers_sent(&outputs(&mut seeder, early, Input::Timeout)).is_empty(), "not before the delay");
        let mut told = peers_sent(&outputs(&mut seeder, joined + PEX_INTRODUCTION_DELAY, Input::Timeout));
        told.sort();
        assert_eq!(told, [(conns[0], vec![addr(3, 7001)]), (conns[1], vec![addr(2, 7001)])]);
    }

    #[test]
    fn while_a_tracker_is_ready_a_connection_is_told_once_and_once_it_is_gone_of_every_newcomer() {
        let (_, manifest) = file(4 * 16 * 1024, 16 * 1024, 9);
        let file_id = manifest.file_id();
        let (mut seeder, conns) = peer_with_remotes(&[2, 3]);
        let tracker = addr(1, 7000);
        let dialled = outputs(&mut seeder, Time::ZERO, Input::Timeout);
        let Some(&Output::Connect { conn: to_tracker, .. }) =
            dialled.iter().find(|o| matches!(o, Output::Connect { addr, .. } if *addr == tracker))
        else {
            panic!("the peer dials its tracker: {dialled:?}");
        };
        let tracker_id = PeerId([1; 16]);
        outputs(&mut seeder, Time::ZERO, Input::Connected { conn: to_tracker, remote: tracker, peer_id: tracker_id });
        let hello = Hello::new(Role::Tracker, tracker_id, 0);
        outputs(&mut seeder, Time::ZERO, Input::Message { conn: to_tracker, message: Message::Hello(hello) });
        let share = Command::Share { manifest: manifest.clone(), have: Bitfield::full(4) };
        step_command(&mut seeder, Time::ZERO, share, |_| {}).expect("a valid command");
        let downloads = |seeder: &mut Peer, conn, at| {
            let message = Message::Bitfield { file_id, have: Bitfield::new(4) };
            outputs(seeder, at, Input::Message { conn, message });
        };
        for conn in &conns {
            downloads(&mut seeder, *conn, Time::ZERO);
        }
        let round =
            |seeder: &mut Peer, n: u32| peers_sent(&outputs(seeder, Time::ZERO + PEX_INTERVAL * n, Input::Timeout));

        let first = round(&mut seeder, 1);
        assert_eq!(first, [(conns[0], vec![addr(3, 7001)]), (conns[1], vec![addr(2, 7001)])], "an introduction each");
        let newcomer = accept(&mut seeder, 4, Time::ZERO + PEX_INTERVAL);
        downloads(&mut seeder, newcomer, Time::ZERO + PEX_INTERVAL);
        let mut second = round(&mut seeder, 2);
        second.iter_mut().for_each(|(_, addrs)| addrs.sort());
        assert_eq!(second, [(newcomer, vec![addr(2, 7001), addr(3, 7001)])], "the tracker answers: only the newcomer");
        outputs(&mut seeder, Time::ZERO + PEX_INTERVAL * 2, Input::Disconnected { conn: to_tracker });
        let third = round(&mut seeder, 3);
        assert_eq!(third, [(conns[0], vec![addr(4, 7001)]), (conns[1], vec![addr(4, 7001)])], "the tracker is gone");
    }

    #[test]
    fn a_downloader_dials_the_peers_it_is_told_of_at_a_bounded_rate_and_refuses_long_lists() {
        let (_, manifest) = file(4 * 16 * 1024, 16 * 1024, 8);
        let file_id = manifest.file_id();
        let (mut leecher, conns) = peer_with_remotes(&[2]);
        step_command(&mut leecher, Time::ZERO, Command::Get { file_id, resume: None }, |_| {})
            .expect("a valid command");
        let named = |hosts: std::ops::Range<u8>| {
            let peers = hosts.map(|h| PeerAddr { peer_id: PeerId([h; 16]), addr: addr(h, 7001) }).collect();
            Input::Message { conn: conns[0], message: Message::Peers { file_id, peers } }
        };
        let at = Time::from_millis(1_000);
        assert_eq!(connects(&outputs(&mut leecher, at, named(5..7))), [addr(5, 7001), addr(6, 7001)]);
        let soon = at + (PEX_RECEIVE_INTERVAL_MIN - std::time::Duration::from_millis(1));
        assert!(connects(&outputs(&mut leecher, soon, named(7..8))).is_empty(), "too soon: ignored");
        let later = at + PEX_RECEIVE_INTERVAL_MIN;
        assert_eq!(connects(&outputs(&mut leecher, later, named(7..8))), [addr(7, 7001)]);

        let too_many = u8::try_from(PEX_PEERS_PER_MESSAGE_MAX).expect("a small bound") + 1;
        let refused = outputs(&mut leecher, later + PEX_RECEIVE_INTERVAL_MIN, named(100..100 + too_many));
        assert!(connects(&refused).is_empty());
        assert!(refused.iter().any(|o| matches!(o, Output::Event(Event::ProtocolViolation { .. }))), "{refused:?}");
        assert!(refused.contains(&Output::Close { conn: conns[0] }));
    }

    #[test]
    fn while_a_tracker_is_ready_named_peers_are_dialled_only_up_to_the_mesh_size() {
        use crate::limits::PEX_MESH_PEERS;
        use crate::peer::pex::{Heard, Pex};
        use crate::peer::remote::{Remote, Remotes};

        let file_id = crate::ids::FileId(crate::ids::Digest([5; 32]));
        let mut remotes = Remotes::new();
        let mut pex = Pex::new();
        let mut heard = |remotes: &Remotes, conn: u64, tracker_ready| {
            pex.heard(Time::ZERO, (ConnId::Inbound(conn), file_id), 8, true, (remotes, tracker_ready))
        };
        let connected = PEX_MESH_PEERS as u8 - 3;
        for host in 2..2 + connected {
            let remote = Remote::inbound(addr(host, 40_000), PeerId([host; 16]), Time::ZERO);
            remotes.accept(ConnId::Inbound(u64::from(host)), remote);
            remotes.set_chunks(&ConnId::Inbound(u64::from(host)), file_id, Bitfield::new(4));
        }
        assert_eq!(heard(&remotes, 2, true), Heard::Use(3), "three more fill the mesh");
        assert_eq!(heard(&remotes, 3, false), Heard::Use(8), "no tracker: every named peer");
        for host in 2 + connected..2 + connected + 3 {
            let remote = Remote::inbound(addr(host, 40_000), PeerId([host; 16]), Time::ZERO);
            remotes.accept(ConnId::Inbound(u64::from(host)), remote);
            remotes.set_chunks(&ConnId::Inbound(u64::from(host)), file_id, Bitfield::new(4));
        }
        assert_eq!(heard(&remotes, 4, true), Heard::Ignore, "the mesh is full");
    }
}
