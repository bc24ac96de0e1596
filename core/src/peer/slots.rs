//! Inbound slots: whether a peer accepts a new inbound connection, and which connection makes
//! way for it when every slot is taken.
//!
//! A peer accepts at most [`INBOUND_PEERS_MAX`] connections, at most
//! [`INBOUND_PEERS_PER_IP_MAX`] of them from one source IP unless it is a loopback address
//! (the limit's docs say why loopback is exempt). Holding a slot costs a remote one frame per
//! idle timeout, so slots are not kept by merely staying connected: when all are taken, the
//! inbound connection that has gone longest without giving a block we asked for or taking a
//! block we served makes way for the newcomer, once it has been idle for
//! [`INBOUND_IDLE_BEFORE_EVICTION`]. A connection with our requests in flight (mid-transfer of
//! data we want) is never evicted. When no connection qualifies, the newcomer is accepted
//! as a courtesy beside the slots, up to [`INBOUND_COURTESY_MAX`] of them at once: it is sent our
//! `Hello`, its manifest ask is answered, and its first message (whatever it is) gets the
//! refusal. Past that bound, up to [`INBOUND_REFERRALS_MAX`] more are accepted the same way
//! only to be referred: the file their first message names is answered with a `Peers` of
//! other peers of it we are connected to, which know the manifest, before the refusal; past
//! both bounds a newcomer is refused at once. A flash crowd's newcomer learns the manifest
//! from the peers the tracker names as knowing it, whose slots fill first, and without it
//! could not join the exchange until its next ask of the tracker, which a crowd's asks queue
//! behind one another on the tracker's uplink; a referral costs a few hundred bytes where the
//! manifest costs one per piece hash.
//!
//! This module only decides, over the table of remotes; `links` carries the decision out.

use std::net::IpAddr;

use crate::ids::ConnId;
use crate::limits::{
    CONNECTIONS_MAX, INBOUND_COURTESY_MAX, INBOUND_IDLE_BEFORE_EVICTION, INBOUND_PEERS_MAX, INBOUND_PEERS_PER_IP_MAX,
    INBOUND_REFERRALS_MAX,
};
use crate::time::Time;
use crate::wire::is_loopback;

use super::remote::{Courtesy, Remotes};

/// What to do with a new inbound connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// A slot is free.
    Accept,
    /// Every slot is taken: close this idle connection and accept the newcomer.
    Evict(ConnId),
    /// Every slot is taken by a connection that exchanged data lately: accept the newcomer
    /// only to answer its first message as this says (`Remote::courtesy`), then refuse it as
    /// busy.
    Courtesy(Courtesy),
    /// Refuse the newcomer, for this reason.
    Refuse(Refusal),
}

/// Why a new inbound connection is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Every slot is taken by a connection that exchanged data recently.
    Busy,
    /// Its source IP holds [`INBOUND_PEERS_PER_IP_MAX`] connections already.
    AddressFull,
}

impl Refusal {
    /// The detail of the `Overloaded` error the newcomer is sent.
    pub fn detail(self) -> &'static str {
        match self {
            Refusal::Busy => "too many connections",
            Refusal::AddressFull => "too many connections from this address",
        }
    }
}

/// Decides on a connection from `ip` arriving at `now`; see the module docs.
pub(super) fn admit(remotes: &Remotes, ip: IpAddr, now: Time) -> Admission {
    let ip = ip.to_canonical();
    let inbound = || remotes.iter().filter(|(_, r)| !r.is_outbound());
    if !is_loopback(ip)
        && inbound().filter(|(_, r)| r.addr().ip().to_canonical() == ip).count() >= INBOUND_PEERS_PER_IP_MAX
    {
        return Admission::Refuse(Refusal::AddressFull);
    }
    let courtesies = inbound().filter(|(_, r)| r.courtesy_kind() == Some(Courtesy::Manifest)).count();
    let referrals = inbound().filter(|(_, r)| r.courtesy_kind() == Some(Courtesy::Referral)).count();
    let room = remotes.iter().len() < CONNECTIONS_MAX;
    if inbound().count() - courtesies - referrals < INBOUND_PEERS_MAX && room {
        return Admission::Accept;
    }
    let idle = inbound()
        .filter(|(_, r)| {
            !r.is_courtesy() && r.requests().is_empty() && r.useful_at() + INBOUND_IDLE_BEFORE_EVICTION <= now
        })
        .min_by_key(|(conn, r)| (r.useful_at(), **conn));
    match idle {
        Some((conn, _)) => Admission::Evict(*conn),
        None if courtesies < INBOUND_COURTESY_MAX && room => Admission::Courtesy(Courtesy::Manifest),
        None if referrals < INBOUND_REFERRALS_MAX && room => Admission::Courtesy(Courtesy::Referral),
        None => Admission::Refuse(Refusal::Busy),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Duration;

    use super::*;
    use crate::ids::{ChunkIndex, Digest, FileId, PeerId};
    use crate::machine::{Input, Machine, Output};
    use crate::peer::remote::Remote;
    use crate::peer::{Peer, PeerConfig};
    use crate::wire::{ErrorCode, Hello, Message, Role};

    fn addr(host: u32) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::from(0x0A00_0000 | host), 40_000))
    }

    /// `count` inbound connections, one per IP from 10.0.0.1 on, accepted at `at`.
    fn filled(count: usize, at: Time) -> Remotes {
        let mut remotes = Remotes::new();
        for n in 0..count {
            let host = u32::try_from(n + 1).expect("a small count");
            assert_eq!(admit(&remotes, addr(host).ip(), at), Admission::Accept, "slot {n} is free");
            remotes.accept(ConnId::Inbound(n as u64), Remote::inbound(addr(host), PeerId([1; 16]), at));
        }
        remotes
    }

    #[test]
    fn when_every_slot_is_taken_the_connection_idle_longest_makes_way_once_idle_long_enough() {
        let mut remotes = filled(INBOUND_PEERS_MAX, Time::ZERO);
        let newcomer = addr(1000).ip();
        let soon = Time::ZERO + (INBOUND_IDLE_BEFORE_EVICTION - Duration::from_millis(1));
        let manifest = Admission::Courtesy(Courtesy::Manifest);
        assert_eq!(admit(&remotes, newcomer, soon), manifest, "all exchanged data lately: a manifest ask");
        for n in 0..INBOUND_COURTESY_MAX {
            let courtesy = Remote::courtesy(addr(2000 + n as u32), PeerId([2; 16]), Time::ZERO, Courtesy::Manifest);
            remotes.accept(ConnId::Inbound(1000 + n as u64), courtesy);
        }
        let referral = Admission::Courtesy(Courtesy::Referral);
        assert_eq!(admit(&remotes, newcomer, soon), referral, "a few manifest asks at once, then referrals");
        for n in 0..INBOUND_REFERRALS_MAX {
            let courtesy = Remote::courtesy(addr(3000 + n as u32), PeerId([3; 16]), Time::ZERO, Courtesy::Referral);
            remotes.accept(ConnId::Inbound(2000 + n as u64), courtesy);
        }
        assert_eq!(admit(&remotes, newcomer, soon), Admission::Refuse(Refusal::Busy), "a bounded number of both");
        let later = Time::ZERO + INBOUND_IDLE_BEFORE_EVICTION;
        assert_eq!(admit(&remotes, newcomer, later), Admission::Evict(ConnId::Inbound(0)), "ties go by connection");
        // The first gave a block lately, the second has our requests in flight: the third goes.
        let first = remotes.get_mut(&ConnId::Inbound(0)).expect("open");
        first.useful(Time::from_millis(1));
        let second = remotes.get_mut(&ConnId::Inbound(1)).expect("open");
        second.requests_mut().start((FileId(Digest([1; 32])), ChunkIndex(0), 0), Time::ZERO);
        for n in 2..INBOUND_PEERS_MAX as u64 {
            remotes.get_mut(&ConnId::Inbound(n)).expect("open").useful(Time::from_millis(2));
        }
        remotes.get_mut(&ConnId::Inbound(2)).expect("open").useful(Time::ZERO);
        assert_eq!(admit(&remotes, newcomer, later), Admission::Evict(ConnId::Inbound(2)));
        let much_later = later + INBOUND_IDLE_BEFORE_EVICTION;
        assert_eq!(admit(&remotes, newcomer, much_later), Admission::Evict(ConnId::Inbound(2)));
        remotes.remove(&ConnId::Inbound(2));
        assert_eq!(admit(&remotes, newcomer, soon), Admission::Accept, "a slot is free again");
    }

    #[test]
    fn one_address_holds_at_most_its_share_of_slots_unless_it_is_loopback() {
        let mut remotes = Remotes::new();
        let host = addr(7);
        for n in 0..INBOUND_PEERS_PER_IP_MAX as u64 {
            assert_eq!(admit(&remotes, host.ip(), Time::ZERO), Admission::Accept);
            let port = 50_000 + u16::try_from(n).expect("small");
            remotes.accept(
                ConnId::Inbound(n),
                Remote::inbound(SocketAddr::new(host.ip(), port), PeerId([1; 16]), Time::ZERO),
            );
        }
        assert_eq!(admit(&remotes, host.ip(), Time::ZERO), Admission::Refuse(Refusal::AddressFull));
        let mapped = IpAddr::from(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped());
        assert_eq!(admit(&remotes, mapped, Time::ZERO), Admission::Refuse(Refusal::AddressFull), "one host");
        assert_eq!(admit(&remotes, addr(8).ip(), Time::ZERO), Admission::Accept, "another address");

        let mut local = Remotes::new();
        let loopback = IpAddr::from(Ipv4Addr::LOCALHOST);
        for n in 0..INBOUND_PEERS_MAX as u64 {
            assert_eq!(admit(&local, loopback, Time::ZERO), Admission::Accept, "loopback slot {n}");
            local.accept(
                ConnId::Inbound(n),
                Remote::inbound(SocketAddr::new(loopback, 40_000), PeerId([1; 16]), Time::ZERO),
            );
        }
        assert_eq!(
            admit(&local, loopback, Time::ZERO),
            Admission::Courtesy(Courtesy::Manifest),
            "the overall cap holds: only a manifest ask beside it"
        );

        // Loopback through a dual-stack listener is loopback too.
        let mut mapped = Remotes::new();
        let mapped_ip = IpAddr::from(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
        for n in 0..=INBOUND_PEERS_PER_IP_MAX as u64 {
            assert_eq!(admit(&mapped, mapped_ip, Time::ZERO), Admission::Accept, "mapped loopback slot {n}");
            mapped.accept(
                ConnId::Inbound(n),
                Remote::inbound(SocketAddr::new(mapped_ip, 40_000), PeerId([1; 16]), Time::ZERO),
            );
        }
    }

    fn peer_id(n: u8) -> PeerId {
        PeerId([n; 16])
    }

    /// Accepts an inbound connection at `now` whose key proved `peer_id(n)`, and has it say
    /// `Hello`; returns what the peer output.
    fn connect(peer: &mut Peer, n: u8, now: Time) -> Vec<Output> {
        let conn = ConnId::Inbound(u64::from(n));
        let from = addr(u32::from(n));
        peer.handle(now, Input::Connected { conn, remote: from, peer_id: peer_id(n) });
        let hello = Hello::new(Role::Peer, peer_id(n), 40_000);
        peer.handle(now, Input::Message { conn, message: Message::Hello(hello) });
        std::iter::from_fn(|| peer.poll_output()).collect()
    }

    #[test]
    fn a_newcomer_at_a_full_peer_closes_the_slot_of_a_remote_that_only_keeps_its_connection_alive() {
        let tracker = SocketAddr::from(([10, 255, 0, 1], 7000));
        let mut peer = Peer::new(PeerConfig::new(peer_id(0), 1, tracker, 40_000));
        let hogs = u8::try_from(INBOUND_PEERS_MAX).expect("fits");
        for n in 1..=hogs {
            let outputs = connect(&mut peer, n, Time::ZERO);
            assert!(!outputs.iter().any(|o| matches!(o, Output::Close { .. })), "slot {n} is free: {outputs:?}");
        }
        let keepalive_at = Time::ZERO + INBOUND_IDLE_BEFORE_EVICTION;
        let refused =
            connect(&mut peer, hogs + 1, Time::ZERO + (INBOUND_IDLE_BEFORE_EVICTION - Duration::from_millis(1)));
        assert!(!refused.contains(&Output::Close { conn: ConnId::Inbound(u64::from(hogs) + 1) }), "{refused:?}");
        assert!(peer.remotes.get(&ConnId::Inbound(u64::from(hogs) + 1)).is_some_and(Remote::is_courtesy));
        // Every hog keeps its connection alive with a frame that exchanges no data.
        for n in 1..=hogs {
            let message = Message::error(None, ErrorCode::BadRequest, "still here");
            peer.handle(keepalive_at, Input::Message { conn: ConnId::Inbound(u64::from(n)), message });
        }

        let outputs = connect(&mut peer, hogs + 2, keepalive_at);
        let closed: Vec<ConnId> =
            outputs.iter().filter_map(|o| if let Output::Close { conn } = o { Some(*conn) } else { None }).collect();
        assert_eq!(closed, vec![ConnId::Inbound(1)], "the first hog makes way: {outputs:?}");
        assert!(peer.remotes.contains_key(&ConnId::Inbound(u64::from(hogs) + 2)), "the newcomer is in");
    }
}
