//! Who sent bad data: strikes per remote id, and bans that expire with back-off. A remote
//! proven to have sent a bad block gets a strike; `STRIKES_BEFORE_BAN_COUNT` strikes ban its id
//! and its serving address for [`BAN_DURATION_MIN`], doubled at each further ban up to
//! [`BAN_DURATION_MAX`]. The state is private; both maps are bounded by [`STRUCK_PEERS_MAX`]
//! (ids are self-chosen, so a remote could otherwise grow them at will): when full, the entry
//! that matters least goes (one without an active ban, else the ban that ends first).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::ids::PeerId;
use crate::limits::{BAN_DURATION_MAX, BAN_DURATION_MIN, STRIKES_BEFORE_BAN_COUNT, STRUCK_PEERS_MAX};
use crate::time::Time;

/// Strikes and bans of remotes.
#[derive(Debug, Default)]
pub(super) struct Bans {
    peers: BTreeMap<PeerId, Record>,
    /// Banned serving addresses, with when the ban ends.
    addrs: BTreeMap<SocketAddr, Time>,
}

/// What one remote id did.
#[derive(Clone, Copy, Debug, Default)]
struct Record {
    /// Strikes since its last ban ended.
    strikes: u32,
    /// Bans so far (each lasts twice the one before).
    bans: u32,
    /// When its current (or last) ban ends.
    until: Option<Time>,
}

impl Record {
    fn is_banned(&self, now: Time) -> bool {
        self.until.is_some_and(|until| until > now)
    }
}

impl Bans {
    /// Nobody struck.
    pub fn new() -> Bans {
        Bans::default()
    }

    /// Whether `peer_id` is banned at `now`.
    pub fn is_banned(&self, peer_id: &PeerId, now: Time) -> bool {
        self.peers.get(peer_id).is_some_and(|r| r.is_banned(now))
    }

    /// Whether the serving address `addr` is banned at `now`.
    pub fn is_addr_banned(&self, addr: &SocketAddr, now: Time) -> bool {
        self.addrs.get(addr).is_some_and(|until| *until > now)
    }

    /// `peer_id` (serving at `addr`) is proven to have sent bad data at `now`. Returns when it
    /// is banned from now on, if this strike bans it (a strike during a ban changes nothing).
    pub fn strike(&mut self, peer_id: PeerId, addr: SocketAddr, now: Time) -> Option<Time> {
        if !self.peers.contains_key(&peer_id) && self.peers.len() >= STRUCK_PEERS_MAX {
            self.evict_peer(now);
        }
        let record = self.peers.entry(peer_id).or_default();
        if record.is_banned(now) {
            return None;
        }
        if record.until.take().is_some() {
            // The last ban is over: strikes count afresh, bans keep counting.
            record.strikes = 0;
        }
        record.strikes += 1;
        if record.strikes < STRIKES_BEFORE_BAN_COUNT {
            return None;
        }
        record.strikes = 0;
        record.bans = record.bans.saturating_add(1);
        let doublings = (record.bans - 1).min(16);
        let until = now + (BAN_DURATION_MIN * (1u32 << doublings)).min(BAN_DURATION_MAX);
        record.until = Some(until);
        self.ban_addr(addr, until, now);
        Some(until)
    }

    fn ban_addr(&mut self, addr: SocketAddr, until: Time, now: Time) {
        self.addrs.retain(|_, end| *end > now);
        if !self.addrs.contains_key(&addr) && self.addrs.len() >= STRUCK_PEERS_MAX {
            let first_to_end = self.addrs.iter().min_by_key(|(_, end)| **end).map(|(a, _)| *a);
            if let Some(first) = first_to_end {
                self.addrs.remove(&first);
            }
        }
        self.addrs.insert(addr, until);
    }

    /// Makes room for one more id: drops one without an active ban (fewest strikes first),
    /// else the one whose ban ends first.
    fn evict_peer(&mut self, now: Time) {
        let least =
            self.peers.iter().min_by_key(|(_, r)| (r.is_banned(now), r.until, r.strikes)).map(|(peer_id, _)| *peer_id);
        if let Some(peer_id) = least {
            self.peers.remove(&peer_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn liar(n: u8) -> (PeerId, SocketAddr) {
        (PeerId([n; 16]), SocketAddr::from(([10, 0, 0, n], 7000)))
    }

    fn strike_until_banned(bans: &mut Bans, n: u8, now: Time) -> Time {
        let (id, addr) = liar(n);
        for _ in 1..STRIKES_BEFORE_BAN_COUNT {
            assert_eq!(bans.strike(id, addr, now), None, "not yet");
        }
        bans.strike(id, addr, now).expect("banned at the last strike")
    }

    #[test]
    fn a_ban_expires_and_the_next_one_lasts_twice_as_long_up_to_the_bound() {
        let mut bans = Bans::new();
        let (id, addr) = liar(1);
        let until = strike_until_banned(&mut bans, 1, Time::ZERO);
        assert_eq!(until, Time::ZERO + BAN_DURATION_MIN);
        assert!(bans.is_banned(&id, Time::ZERO) && bans.is_addr_banned(&addr, Time::ZERO));
        assert_eq!(bans.strike(id, addr, Time::ZERO), None, "a strike during a ban changes nothing");
        assert!(!bans.is_banned(&id, until) && !bans.is_addr_banned(&addr, until), "over");
        let second = strike_until_banned(&mut bans, 1, until);
        assert_eq!(second, until + BAN_DURATION_MIN * 2);
        let mut now = second;
        for _ in 0..40 {
            now = strike_until_banned(&mut bans, 1, now);
        }
        let last = strike_until_banned(&mut bans, 1, now);
        assert_eq!(last, now + BAN_DURATION_MAX, "bounded");
    }

    #[test]
    fn many_struck_ids_keep_the_maps_bounded_and_active_bans_in_place() {
        let mut bans = Bans::new();
        let (id, _) = liar(1);
        strike_until_banned(&mut bans, 1, Time::ZERO);
        for n in 0..STRUCK_PEERS_MAX as u32 * 2 {
            let mut raw = [0xee; 16];
            raw[..4].copy_from_slice(&n.to_be_bytes());
            bans.strike(PeerId(raw), SocketAddr::from(([10, 1, 0, 1], 1)), Time::ZERO);
        }
        assert!(bans.peers.len() <= STRUCK_PEERS_MAX && bans.addrs.len() <= STRUCK_PEERS_MAX);
        assert!(bans.is_banned(&id, Time::ZERO), "ids with one strike went first");
    }
}
