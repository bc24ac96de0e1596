//! Which holders of each download the peer can reach, told to the person watching: every change
//! (a holder refused the connection, timed out, spoke another protocol, or was reached again)
//! is said once on stderr at the default log level, never once per retry. A download that must
//! end (`--exit-when-done`) gives up when, for [`HOLDERS_UNREACHABLE_TIMEOUT`], it verified no
//! piece while every holder the tracker named was unreachable; the message names each and why.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Instant;

use p2p_core::limits::HOLDERS_UNREACHABLE_TIMEOUT;
use p2p_core::FileId;
use p2p_net::ConnectFailure;

/// The reachability of the holders of this run's downloads.
#[derive(Debug)]
pub struct Reach {
    trackers: Vec<SocketAddr>,
    /// The holders the tracker last named, per unfinished download.
    holders: BTreeMap<FileId, BTreeSet<SocketAddr>>,
    /// Since when each unfinished download has verified no piece.
    quiet_since: BTreeMap<FileId, Instant>,
    /// Remotes (holders, the tracker) whose last connection attempt failed, and why. Only
    /// the tracker and named holders are kept.
    failed: BTreeMap<SocketAddr, ConnectFailure>,
}

impl Reach {
    /// Nothing known yet about the remotes of a peer of `trackers`.
    pub fn new(trackers: &[SocketAddr]) -> Reach {
        Reach {
            trackers: trackers.to_vec(),
            holders: BTreeMap::new(),
            quiet_since: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }

    /// The download of `file_id` starts (or verified a piece) at `now`.
    pub fn progress(&mut self, file_id: FileId, now: Instant) {
        self.quiet_since.insert(file_id, now);
    }

    /// The download of `file_id` is over.
    pub fn finish(&mut self, file_id: FileId) {
        self.quiet_since.remove(&file_id);
        self.holders.remove(&file_id);
        self.forget_unnamed();
    }

    /// The tracker named `holders` for the download of `file_id`.
    pub fn located(&mut self, file_id: FileId, holders: impl IntoIterator<Item = SocketAddr>) {
        if !self.quiet_since.contains_key(&file_id) {
            return;
        }
        self.holders.insert(file_id, holders.into_iter().collect());
        self.forget_unnamed();
    }

    /// A connection to `addr` opened.
    pub fn connected(&mut self, addr: SocketAddr) {
        if self.failed.remove(&addr).is_some() {
            tracing::info!("{} {addr} is reachable again", self.what(addr));
        }
    }

    /// A connection to `addr` failed for `reason`.
    pub fn failed(&mut self, addr: SocketAddr, reason: ConnectFailure) {
        if !self.trackers.contains(&addr) && !self.holders.values().any(|holders| holders.contains(&addr)) {
            return;
        }
        if self.failed.get(&addr) != Some(&reason) {
            tracing::warn!("cannot connect to {} {addr}: {reason}; still trying", self.what(addr));
            self.failed.insert(addr, reason);
        }
    }

    /// The first download that has verified nothing for [`HOLDERS_UNREACHABLE_TIMEOUT`] while
    /// every holder named for it is unreachable, with the message that says so.
    pub fn given_up(&self, now: Instant) -> Option<(FileId, String)> {
        self.quiet_since.iter().find_map(|(file_id, since)| {
            let holders = self.holders.get(file_id).filter(|holders| !holders.is_empty())?;
            let waited = now.saturating_duration_since(*since) >= HOLDERS_UNREACHABLE_TIMEOUT;
            let reasons: Vec<String> = holders
                .iter()
                .map(|addr| self.failed.get(addr).map(|reason| format!("{addr} ({reason})")))
                .collect::<Option<_>>()?;
            waited.then(|| {
                let secs = HOLDERS_UNREACHABLE_TIMEOUT.as_secs();
                (*file_id, format!("cannot reach any holder of {file_id} for {secs} s: {}", reasons.join(", ")))
            })
        })
    }

    fn what(&self, addr: SocketAddr) -> &'static str {
        if self.trackers.contains(&addr) {
            "the tracker"
        } else {
            "holder"
        }
    }

    /// Keeps failures of the tracker and of named holders only (the map stays bounded).
    fn forget_unnamed(&mut self) {
        let (trackers, holders) = (&self.trackers, &self.holders);
        self.failed.retain(|addr, _| trackers.contains(addr) || holders.values().any(|named| named.contains(addr)));
    }
}

#[cfg(test)]
mod tests {
    use p2p_core::Digest;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn gives_up_only_when_every_named_holder_failed_for_the_whole_wait() {
        let file_id = FileId(Digest([7; 32]));
        let start = Instant::now();
        let mut reach = Reach::new(&[addr(1)]);
        reach.progress(file_id, start);
        let late = start + HOLDERS_UNREACHABLE_TIMEOUT;
        assert_eq!(reach.given_up(late), None, "no holder named yet");

        reach.located(file_id, [addr(2), addr(3)]);
        reach.failed(addr(2), ConnectFailure::Refused);
        assert_eq!(reach.given_up(late), None, "holder 3 was not tried yet");
        reach.failed(addr(3), ConnectFailure::TimedOut);
        assert_eq!(reach.given_up(late - std::time::Duration::from_secs(1)), None, "not waited long enough");
        let (given_up, message) = reach.given_up(late).expect("every holder failed");
        assert_eq!(given_up, file_id);
        assert!(message.contains("127.0.0.1:2 (connection refused)") && message.contains("127.0.0.1:3 (timed out"));

        reach.connected(addr(3));
        assert_eq!(reach.given_up(late), None, "holder 3 is reachable again");
        reach.failed(addr(3), ConnectFailure::Refused);
        reach.progress(file_id, late);
        assert_eq!(reach.given_up(late), None, "a verified piece restarts the wait");
    }

    #[test]
    fn failures_of_remotes_never_named_are_not_kept() {
        let mut reach = Reach::new(&[addr(1)]);
        reach.failed(addr(9), ConnectFailure::Refused);
        assert!(reach.failed.is_empty());
        reach.failed(addr(1), ConnectFailure::Refused);
        assert_eq!(reach.failed.len(), 1, "the tracker's failures are kept");
    }
}
