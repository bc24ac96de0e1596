//! The peer's side of its tracker connections, one link per tracker it was given: connect (and
//! reconnect with exponential backoff, each link on its own, so a tracker that is down is
//! retried at most every `RECONNECT_DELAY_MAX` while the others serve), handshake, announce
//! every file to every tracker (again at each interval and after every reconnect, so a
//! restarted tracker rebuilds its soft state; verified pieces reach them in the batched `Haves`
//! the scheduler sends remotes, at most every `HAVE_BATCH_INTERVAL`), and ask where the pieces
//! of each download are: every ready tracker is asked at once, every 2 s while a download is
//! stuck, less and less often while pieces keep arriving. Every answer is used; the first one
//! to arrive lets the next ask be planned, so a tracker that is down or slow delays nothing.

use std::net::SocketAddr;
use std::time::Duration;

use crate::ids::{ConnId, FileId};
use crate::limits::{HANDSHAKE_TIMEOUT, RECONNECT_DELAY_MAX, RECONNECT_DELAY_MIN, TRACKERS_PER_PEER_MAX};
use crate::machine::{Event, Output};
use crate::time::Time;
use crate::wire::{ErrorCode, Message, Role, PROTOCOL_VERSION};

use super::Peer;

/// Where one tracker connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Not connected; try again at `retry_at`.
    Idle { retry_at: Time },
    /// The driver is connecting.
    Connecting(ConnId),
    /// Connected; waiting for the tracker's `Hello` since `since`.
    AwaitHello { conn: ConnId, since: Time },
    /// Handshake done; announce again at `next_announce`.
    Ready { conn: ConnId, next_announce: Time },
}

impl Stage {
    /// The connection, unless idle.
    fn conn(self) -> Option<ConnId> {
        match self {
            Stage::Idle { .. } => None,
            Stage::Connecting(conn) | Stage::AwaitHello { conn, .. } | Stage::Ready { conn, .. } => Some(conn),
        }
    }
}

/// One tracker's connection state.
#[derive(Debug)]
struct Link {
    addr: SocketAddr,
    stage: Stage,
    backoff: Duration,
}

/// The tracker connections' state, one link per tracker in the order they were given.
#[derive(Debug)]
pub(super) struct TrackerLinks {
    links: Vec<Link>,
}

impl TrackerLinks {
    /// One link per address, none connected, each due to connect at once.
    ///
    /// Panics when `addrs` is empty or longer than [`TRACKERS_PER_PEER_MAX`]: the drivers check
    /// their configuration before building a peer.
    pub fn new(addrs: &[SocketAddr]) -> TrackerLinks {
        assert!(
            !addrs.is_empty() && addrs.len() <= TRACKERS_PER_PEER_MAX,
            "a peer needs 1 to {TRACKERS_PER_PEER_MAX} trackers, got {}",
            addrs.len()
        );
        let link = |addr| Link { addr, stage: Stage::Idle { retry_at: Time::ZERO }, backoff: RECONNECT_DELAY_MIN };
        TrackerLinks { links: addrs.iter().copied().map(link).collect() }
    }

    /// Whether `conn` is a tracker connection.
    pub fn owns(&self, conn: ConnId) -> bool {
        self.link_of(conn).is_some()
    }

    /// The link whose connection is `conn`.
    fn link_of(&self, conn: ConnId) -> Option<usize> {
        self.links.iter().position(|link| link.stage.conn() == Some(conn))
    }

    /// The connections whose handshake is done, in the order the trackers were given.
    pub fn ready_conns(&self) -> Vec<ConnId> {
        let ready = |link: &Link| match link.stage {
            Stage::Ready { conn, .. } => Some(conn),
            _ => None,
        };
        self.links.iter().filter_map(ready).collect()
    }

    /// When a link next needs attention.
    pub fn deadline(&self) -> Option<Time> {
        let deadline = |link: &Link| match link.stage {
            Stage::Idle { retry_at } => Some(retry_at),
            Stage::Connecting(_) => None,
            Stage::AwaitHello { since, .. } => Some(since + HANDSHAKE_TIMEOUT),
            Stage::Ready { next_announce, .. } => Some(next_announce),
        };
        self.links.iter().filter_map(deadline).min()
    }
}

impl Peer {
    /// On every link: connects, times out a silent handshake, or re-announces, whichever is due.
    pub(super) fn tracker_timeout(&mut self) {
        if self.left {
            return;
        }
        for link in 0..self.tracker.links.len() {
            self.link_timeout(link);
        }
    }

    fn link_timeout(&mut self, link: usize) {
        let Link { addr, stage, .. } = self.tracker.links[link];
        match stage {
            Stage::Idle { retry_at } if retry_at <= self.now => {
                let conn = self.new_conn();
                self.push(Output::Connect { conn, addr });
                self.tracker.links[link].stage = Stage::Connecting(conn);
            }
            Stage::AwaitHello { conn, since } if since + HANDSHAKE_TIMEOUT <= self.now => {
                self.push(Output::Close { conn });
                self.on_tracker_lost(conn);
            }
            Stage::Ready { conn, next_announce } if next_announce <= self.now => {
                let next_announce = self.now + self.config.announce_interval;
                self.tracker.links[link].stage = Stage::Ready { conn, next_announce };
                let files: Vec<FileId> = self.files.keys().copied().collect();
                for file_id in files {
                    self.announce_to(conn, file_id, false);
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_tracker_connected(&mut self, conn: ConnId) {
        let Some(link) = self.tracker.link_of(conn) else { return };
        let hello = self.hello();
        self.send(conn, hello);
        self.tracker.links[link].stage = Stage::AwaitHello { conn, since: self.now };
    }

    /// A tracker connection closed or could not be opened: retry that tracker after its backoff.
    pub(super) fn on_tracker_lost(&mut self, conn: ConnId) {
        let Some(link) = self.tracker.link_of(conn) else { return };
        let Link { addr, stage, backoff } = self.tracker.links[link];
        if matches!(stage, Stage::Ready { .. }) {
            self.event(Event::TrackerLost { addr });
        }
        self.tracker.links[link].stage = Stage::Idle { retry_at: self.now + backoff };
        self.tracker.links[link].backoff = (backoff * 2).min(RECONNECT_DELAY_MAX);
        if self.tracker.ready_conns().is_empty() {
            for entry in self.files.values_mut() {
                entry.announced = false;
            }
        }
    }

    pub(super) fn on_tracker_message(&mut self, conn: ConnId, message: Message) {
        match message {
            Message::Hello(hello) => {
                let awaited = self
                    .tracker
                    .link_of(conn)
                    .filter(|&link| matches!(self.tracker.links[link].stage, Stage::AwaitHello { .. }));
                let valid = hello.version == PROTOCOL_VERSION && hello.role == Role::Tracker;
                match awaited {
                    Some(link) if valid => self.on_tracker_ready(link, conn),
                    _ => {
                        self.event(Event::ProtocolViolation {
                            conn,
                            reason: format!("unexpected tracker hello {hello:?}"),
                        });
                        self.push(Output::Close { conn });
                        self.on_tracker_lost(conn);
                    }
                }
            }
            Message::Announced { file_id } => self.on_announced(file_id),
            Message::Located { file_id, manifest, holders } => self.on_located(file_id, manifest.map(|m| *m), &holders),
            Message::Error { file_id: Some(file_id), code: ErrorCode::UnknownFile, .. } => {
                self.on_unknown_file(conn, file_id)
            }
            // Other errors answer a single request; the periodic announce and locate retry.
            _ => {}
        }
    }

    fn on_tracker_ready(&mut self, link: usize, conn: ConnId) {
        let next_announce = self.now + self.config.announce_interval;
        let addr = self.tracker.links[link].addr;
        self.tracker.links[link].stage = Stage::Ready { conn, next_announce };
        self.tracker.links[link].backoff = RECONNECT_DELAY_MIN;
        self.event(Event::TrackerConnected { addr });
        let files: Vec<FileId> = self.files.keys().copied().collect();
        for file_id in files {
            self.announce_to(conn, file_id, false);
        }
        for entry in self.files.values_mut() {
            if let Some(download) = entry.download.as_mut() {
                download.locate_mut().tracker_ready(self.now);
            }
        }
        self.locate_due();
    }

    fn on_announced(&mut self, file_id: FileId) {
        let Some(entry) = self.files.get_mut(&file_id) else { return };
        entry.announced = true;
        if entry.sharing_reported {
            return;
        }
        entry.sharing_reported = true;
        let name = entry.manifest.as_ref().map(|m| m.name().to_owned()).unwrap_or_default();
        let pieces = entry.have.count();
        self.event(Event::Sharing { file_id, name, pieces });
    }

    /// A tracker does not know `file_id`: it hears the manifest, when this peer knows it. A
    /// download that no tracker located yet reports the file unknown.
    fn on_unknown_file(&mut self, conn: ConnId, file_id: FileId) {
        let now = self.now;
        let Some(entry) = self.files.get_mut(&file_id) else { return };
        let mut located = false;
        if let Some(download) = entry.download.as_mut() {
            download.locate_mut().answered(now, None);
            located = download.locate().answered_once();
        }
        if entry.manifest.is_some() {
            self.announce_to(conn, file_id, true);
        } else if !located {
            self.event(Event::FileUnknown { file_id });
        }
    }

    /// Announces the pieces held of `file_id` to every ready tracker (with the manifest when a
    /// tracker may not know the file).
    pub(super) fn announce(&mut self, file_id: FileId, with_manifest: bool) {
        for conn in self.tracker.ready_conns() {
            self.announce_to(conn, file_id, with_manifest);
        }
    }

    /// Announces the pieces held of `file_id` on the tracker connection `conn`. Files whose
    /// manifest is not yet known are skipped.
    fn announce_to(&mut self, conn: ConnId, file_id: FileId, with_manifest: bool) {
        let Some(entry) = self.files.get(&file_id) else { return };
        let Some(manifest) = entry.manifest.as_ref() else { return };
        let manifest = with_manifest.then(|| Box::new(manifest.clone()));
        let message = Message::Announce { file_id, manifest, have: entry.have.clone() };
        self.send(conn, message);
    }

    /// Sends `Locate` to every ready tracker for every download whose next locate is due.
    pub(super) fn locate_due(&mut self) {
        let now = self.now;
        let ready = self.tracker.ready_conns();
        let mut due: Vec<(FileId, bool)> = Vec::new();
        for (file_id, entry) in &mut self.files {
            if !entry.is_fetching() {
                continue;
            }
            let (have_count, manifest_known) = (entry.have.count(), entry.manifest.is_some());
            let Some(download) = entry.download.as_mut() else { continue };
            if download.locate().due_at() <= now {
                let with_manifest = download.locate_mut().asked(now, have_count, !ready.is_empty(), manifest_known);
                due.push((*file_id, with_manifest));
            }
        }
        if ready.is_empty() {
            return;
        }
        for (file_id, with_manifest) in due {
            for &conn in &ready {
                self.send(conn, Message::Locate { file_id, with_manifest });
            }
            self.event(Event::LocateSent { file_id });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use crate::limits::RECONNECT_DELAY_MIN;
    use crate::machine::{step, Command, Input, Output};
    use crate::peer::{Peer, PeerConfig};
    use crate::testkit::file;
    use crate::time::Time;
    use crate::wire::{Hello, Message, Role, PROTOCOL_VERSION};

    /// What `peer` outputs for `input` at `ms` milliseconds.
    fn outputs(peer: &mut Peer, ms: u64, input: Input) -> Vec<Output> {
        let mut outputs = Vec::new();
        step(peer, Time::from_millis(ms), input, |output| outputs.push(output));
        outputs
    }

    fn connects(outputs: &[Output]) -> Vec<(crate::ConnId, SocketAddr)> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Connect { conn, addr } => Some((*conn, *addr)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_peer_announces_to_and_locates_from_the_tracker_that_is_up_while_the_other_is_retried() {
        let (up, down) = (SocketAddr::from(([10, 0, 0, 1], 7000)), SocketAddr::from(([10, 0, 0, 2], 7000)));
        let mut config = PeerConfig::new(crate::PeerId::from_seed(1), 1, down, 7001);
        config.trackers.push(up);
        let mut peer = Peer::new(config);
        let (_, manifest) = file(4 * 16 * 1024, 16 * 1024, 3);
        let get = Command::Get { file_id: manifest.file_id(), resume: None };
        outputs(&mut peer, 0, Input::Command(Box::new(get)));
        let first = connects(&outputs(&mut peer, 0, Input::Timeout));
        assert_eq!(first.iter().map(|(_, addr)| *addr).collect::<Vec<_>>(), [down, up], "both trackers at once");
        let (to_down, to_up) = (first[0].0, first[1].0);

        outputs(&mut peer, 5, Input::Disconnected { conn: to_down });
        outputs(&mut peer, 10, Input::Connected { conn: to_up, remote: up, peer_id: crate::PeerId([9; 16]) });
        let hello = Hello {
            version: PROTOCOL_VERSION,
            role: Role::Tracker,
            peer_id: crate::PeerId([9; 16]),
            listen_port: 0,
            listen_ip: None,
        };
        let ready = outputs(&mut peer, 20, Input::Message { conn: to_up, message: Message::Hello(hello) });
        let locates: Vec<_> = ready
            .iter()
            .filter(|o| matches!(o, Output::Send { message: Message::Locate { .. }, .. }))
            .map(|o| match o {
                Output::Send { conn, .. } => *conn,
                _ => unreachable!("filtered on Send"),
            })
            .collect();
        assert_eq!(locates, [to_up], "the download asks the tracker that is up, without waiting for the other");

        // The tracker that is down is retried after its backoff, and after twice that next time.
        let retry_ms = 5 + RECONNECT_DELAY_MIN.as_millis() as u64;
        assert!(connects(&outputs(&mut peer, retry_ms - 1, Input::Timeout)).is_empty());
        let again = connects(&outputs(&mut peer, retry_ms, Input::Timeout));
        assert_eq!(again.iter().map(|(_, addr)| *addr).collect::<Vec<_>>(), [down]);
        outputs(&mut peer, retry_ms + 1, Input::Disconnected { conn: again[0].0 });
        let doubled_ms = retry_ms + 1 + 2 * RECONNECT_DELAY_MIN.as_millis() as u64;
        assert!(connects(&outputs(&mut peer, doubled_ms - 1, Input::Timeout)).is_empty(), "the backoff doubled");
        assert_eq!(connects(&outputs(&mut peer, doubled_ms, Input::Timeout)).len(), 1);
    }
}
