//! The peer's side of its tracker connections, one link per tracker it was given: connect (and
//! reconnect with exponential backoff, each link on its own, so a tracker that is down is
//! retried at most every `RECONNECT_DELAY_MAX` while the others serve), handshake, announce
//! every file to every tracker (again at each interval and after every reconnect, so a
//! restarted tracker rebuilds its soft state; verified chunks reach them in the batched `Haves`
//! the scheduler sends remotes, at most every `HAVE_BATCH_INTERVAL`), and ask where the chunks
//! of each download are: every tracker is asked at once (right behind our `Hello`, not a round
//! trip later), every 2 s while a download is
//! stuck, less and less often while chunks keep arriving. Every answer is used; the first one
//! to arrive lets the next ask be planned, so a tracker that is down or slow delays nothing.
//!
//! [`TrackerLinks`] owns the links' state (private): its inputs are the deadlines
//! ([`TrackerLinks::due`]), a connection opened, a tracker's `Hello` and a connection lost;
//! its outputs say what is due ([`LinkDue`]), how a handshake ended ([`Handshake`]) and what a
//! loss means ([`Lost`]). `Peer` routes them: it names connections, sends what the links ask
//! for and reports the events. The free functions here are the tracker side of a file's
//! record: its announce, the acknowledgement, an unknown file and the locate schedule.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::ids::{ConnId, FileId};
use crate::limits::{HANDSHAKE_TIMEOUT, RECONNECT_DELAY_MAX, RECONNECT_DELAY_MIN, TRACKERS_PER_PEER_MAX};
use crate::machine::Event;
use crate::time::Time;
use crate::wire::Message;

use super::chunks::FileEntry;

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

    /// The connections our `Hello` went out on, ready or still awaiting the tracker's, in the
    /// order the trackers were given. A tracker reads a connection's messages in order, so
    /// what follows our `Hello` is read once it accepted it: announces and locates need not
    /// wait a round trip for its answer.
    pub fn open_conns(&self) -> Vec<ConnId> {
        let open = |link: &Link| match link.stage {
            Stage::AwaitHello { conn, .. } | Stage::Ready { conn, .. } => Some(conn),
            Stage::Idle { .. } | Stage::Connecting(_) => None,
        };
        self.links.iter().filter_map(open).collect()
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

impl TrackerLinks {
    /// What is due on the links at `now`, in the order the trackers were given: an idle link
    /// whose retry time came is to be connected, a silent handshake to be closed, and a ready
    /// link whose announce time came is to announce every file (its next announce is planned
    /// `announce_interval` from `now` here).
    pub fn due(&mut self, now: Time, announce_interval: Duration) -> Vec<LinkDue> {
        let mut due = Vec::new();
        for (at, link) in self.links.iter_mut().enumerate() {
            match link.stage {
                Stage::Idle { retry_at } if retry_at <= now => due.push(LinkDue::Connect(LinkId(at), link.addr)),
                Stage::AwaitHello { conn, since } if since + HANDSHAKE_TIMEOUT <= now => {
                    due.push(LinkDue::HandshakeTimedOut(conn))
                }
                Stage::Ready { conn, next_announce } if next_announce <= now => {
                    link.stage = Stage::Ready { conn, next_announce: now + announce_interval };
                    due.push(LinkDue::Announce(conn));
                }
                _ => {}
            }
        }
        due
    }

    /// The driver is connecting `link` (one [`LinkDue::Connect`] named) as `conn`.
    pub fn connecting(&mut self, link: LinkId, conn: ConnId) {
        let link = &mut self.links[link.0];
        debug_assert!(matches!(link.stage, Stage::Idle { .. }), "only an idle link connects");
        link.stage = Stage::Connecting(conn);
    }

    /// The tracker connection `conn` is open at `now`: the peer sends its `Hello` (and what
    /// follows it, see [`TrackerLinks::open_conns`]) and waits for the tracker's.
    pub fn connected(&mut self, conn: ConnId, now: Time) {
        let link = self.link_of(conn);
        debug_assert!(link.is_some(), "the peer routes only its tracker connections here");
        if let Some(link) = link {
            self.links[link].stage = Stage::AwaitHello { conn, since: now };
        }
    }

    /// The tracker sent its `Hello` on `conn` at `now`; `valid` when its version and role are
    /// right. A link that awaited it is ready, and announces next `announce_interval` later.
    pub fn hello(&mut self, conn: ConnId, valid: bool, now: Time, announce_interval: Duration) -> Handshake {
        let awaited = self.link_of(conn).filter(|&link| matches!(self.links[link].stage, Stage::AwaitHello { .. }));
        match awaited {
            Some(link) if valid => {
                let link = &mut self.links[link];
                link.stage = Stage::Ready { conn, next_announce: now + announce_interval };
                link.backoff = RECONNECT_DELAY_MIN;
                Handshake::Ready(link.addr)
            }
            _ => Handshake::Refused,
        }
    }

    /// The tracker connection `conn` closed or could not be opened at `now`: its link retries
    /// after its backoff, which doubles up to [`RECONNECT_DELAY_MAX`].
    pub fn lost(&mut self, conn: ConnId, now: Time) -> Option<Lost> {
        let link = self.link_of(conn);
        debug_assert!(link.is_some(), "the peer routes only its tracker connections here");
        let link = link?;
        let Link { addr, stage, backoff } = self.links[link];
        self.links[link].stage = Stage::Idle { retry_at: now + backoff };
        self.links[link].backoff = (backoff * 2).min(RECONNECT_DELAY_MAX);
        let was_ready = matches!(stage, Stage::Ready { .. });
        Some(Lost { addr, was_ready })
    }
}

/// A link, as [`TrackerLinks::due`] names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LinkId(usize);

/// What a link needs from the peer at its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LinkDue {
    /// Connect to the tracker at this address, then tell [`TrackerLinks::connecting`].
    Connect(LinkId, SocketAddr),
    /// The tracker did not answer the handshake on this connection in time: close it.
    HandshakeTimedOut(ConnId),
    /// Announce every file on this connection.
    Announce(ConnId),
}

/// The outcome of a tracker's `Hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Handshake {
    /// The link to the tracker at this address is ready.
    Ready(SocketAddr),
    /// Unexpected (no handshake awaited it) or invalid: the connection is to be closed.
    Refused,
}

/// A lost tracker connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Lost {
    /// The tracker.
    pub addr: SocketAddr,
    /// Whether its handshake was done (the loss is reported).
    pub was_ready: bool,
}

/// The announce of the chunks held of `file_id` (with the manifest when a tracker may not know
/// the file); `None` while the manifest is not known.
pub(super) fn announcement(file_id: FileId, entry: &FileEntry, with_manifest: bool) -> Option<Message> {
    let manifest = entry.manifest()?;
    let manifest = with_manifest.then(|| Box::new(manifest.clone()));
    Some(Message::Announce { file_id, manifest, have: entry.have().clone() })
}

/// A tracker acknowledged an announce of `file_id`: the `Sharing` report, the first time.
pub(super) fn acknowledged(file_id: FileId, entry: &mut FileEntry) -> Option<Event> {
    let manifest = entry.manifest()?;
    // At most PIECES_MAX pieces: a u32.
    let pieces = manifest.whole_pieces(entry.have()).count() as u32;
    let name = manifest.name().to_owned();
    entry.sharing_due().then_some(Event::Sharing { file_id, name, pieces })
}

/// What the peer does when a tracker does not know a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unknown {
    /// Announce it with its manifest to that tracker.
    Announce,
    /// Report the file unknown: no tracker located it yet and its manifest is not known.
    Report,
    /// Nothing: another tracker located it already.
    Ignore,
}

/// A tracker does not know the file of `entry` at `now`: the answer counts for its download's
/// locate schedule, and the file is announced to it when its manifest is known.
pub(super) fn unknown(entry: &mut FileEntry, now: Time) -> Unknown {
    let mut located = false;
    if let Some(download) = entry.download_mut() {
        download.locate_mut().answered(now, None);
        located = download.locate().answered_once();
    }
    if entry.manifest().is_some() {
        Unknown::Announce
    } else if located {
        Unknown::Ignore
    } else {
        Unknown::Report
    }
}

/// The downloads whose next `Locate` is due at `now`, each with whether it asks for the
/// manifest; each is planned again (`sent`: some tracker is ready to hear it).
/// A download whose tracker is busy (its last answer came late), that exchanges chunks with
/// `meshed` peers already and got chunks since its last ask is planned again without asking:
/// it learns of the crowd's other peers by peer exchange, and the asks the tracker is spared
/// are the answers others wait for. One that got nothing asks: its peers may all lack what it
/// misses, and a holder they do not know of only the tracker can name.
pub(super) fn locates_due(
    files: &mut BTreeMap<FileId, FileEntry>,
    now: Time,
    sent: bool,
    meshed: impl Fn(FileId) -> bool,
) -> Vec<(FileId, bool)> {
    let mut due = Vec::new();
    for (file_id, entry) in files.iter_mut() {
        if !entry.is_fetching() {
            continue;
        }
        let (have_count, manifest_known) = (entry.have().count(), entry.manifest().is_some());
        let download = entry.download_mut();
        debug_assert!(download.is_some(), "a file being fetched has a download");
        let Some(download) = download else { continue };
        if download.locate().due_at() > now {
            continue;
        }
        let locate = download.locate();
        let spared = manifest_known && locate.tracker_busy() && locate.progressing(have_count) && meshed(*file_id);
        let asked = download.locate_mut().asked(now, have_count, sent && !spared, manifest_known);
        if !spared {
            due.push((*file_id, asked));
        }
    }
    due
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use crate::limits::RECONNECT_DELAY_MIN;
    use crate::machine::{step, step_command, Command, Input, Output};
    use crate::peer::{Peer, PeerConfig};
    use crate::testkit::file;
    use crate::time::Time;
    use crate::wire::{Hello, Message, Role};

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
        step_command(&mut peer, Time::ZERO, get, |_| {}).expect("a valid command");
        let first = connects(&outputs(&mut peer, 0, Input::Timeout));
        assert_eq!(first.iter().map(|(_, addr)| *addr).collect::<Vec<_>>(), [down, up], "both trackers at once");
        let (to_down, to_up) = (first[0].0, first[1].0);

        outputs(&mut peer, 5, Input::Disconnected { conn: to_down });
        let open =
            outputs(&mut peer, 10, Input::Connected { conn: to_up, remote: up, peer_id: crate::PeerId([9; 16]) });
        let sent: Vec<_> = open
            .iter()
            .filter_map(|o| match o {
                Output::Send { conn, message } => Some((*conn, message.kind())),
                _ => None,
            })
            .collect();
        assert_eq!(
            sent,
            [(to_up, "hello"), (to_up, "locate")],
            "the download asks the tracker that is up right behind the hello, without waiting for the other"
        );
        let hello = Hello::new(Role::Tracker, crate::PeerId([9; 16]), 0);
        let ready = outputs(&mut peer, 20, Input::Message { conn: to_up, message: Message::Hello(hello) });
        assert!(!ready.iter().any(|o| matches!(o, Output::Send { .. })), "asked once: {ready:?}");

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

    #[test]
    fn a_shared_file_is_announced_with_its_manifest_until_a_tracker_acknowledged_it() {
        let tracker = SocketAddr::from(([10, 0, 0, 1], 7000));
        let mut peer = Peer::new(PeerConfig::new(crate::PeerId::from_seed(1), 1, tracker, 7001));
        let (_, manifest) = file(4 * 16 * 1024, 16 * 1024, 3);
        let file_id = manifest.file_id();
        let share = Command::Share { manifest: manifest.clone(), have: crate::Bitfield::full(manifest.chunk_count()) };
        step_command(&mut peer, Time::ZERO, share, |_| {}).expect("a valid command");
        let tracker_id = crate::PeerId([9; 16]);
        let mut announces_with_manifest = |ms: u64| {
            let conn = connects(&outputs(&mut peer, ms, Input::Timeout))[0].0;
            let open = outputs(&mut peer, ms, Input::Connected { conn, remote: tracker, peer_id: tracker_id });
            let hello = Message::Hello(Hello::new(Role::Tracker, tracker_id, 0));
            outputs(&mut peer, ms, Input::Message { conn, message: hello });
            outputs(&mut peer, ms, Input::Message { conn, message: Message::Announced { file_id } });
            outputs(&mut peer, ms, Input::Disconnected { conn });
            let announce = open.iter().find_map(|o| match o {
                Output::Send { message: Message::Announce { manifest, .. }, .. } => Some(manifest.is_some()),
                _ => None,
            });
            announce.expect("an announce right behind the hello")
        };
        assert!(announces_with_manifest(0), "no tracker may know the file yet");
        let retry_ms = RECONNECT_DELAY_MIN.as_millis() as u64;
        assert!(!announces_with_manifest(retry_ms), "a tracker acknowledged it");
    }

    #[test]
    fn a_meshed_download_that_gets_chunks_spares_a_busy_tracker_its_ask_and_a_stuck_one_asks() {
        use std::collections::BTreeMap;

        use super::{locates_due, FileEntry};
        use crate::bitfield::Bitfield;
        use crate::ids::{ChunkIndex, FileId};
        use crate::limits::{LOCATE_BUSY_ANSWER_DELAY, LOCATE_INTERVAL};

        let (_, manifest) = file(4 * 16 * 1024, 16 * 1024, 3);
        let file_id = manifest.file_id();
        let entry = FileEntry::downloading(Some((manifest.clone(), Bitfield::new(manifest.chunk_count()))), Time::ZERO);
        let mut files = BTreeMap::from([(file_id, entry)]);
        let answer_late = |files: &mut BTreeMap<FileId, FileEntry>, asked: Time| {
            let download = files.get_mut(&file_id).and_then(|e| e.download_mut()).expect("a download");
            download.locate_mut().answered(asked + LOCATE_BUSY_ANSWER_DELAY * 2, Some(1));
            download.locate().due_at()
        };
        assert_eq!(locates_due(&mut files, Time::ZERO, true, |_| true), [(file_id, false)], "no answer yet: ask");
        let due = answer_late(&mut files, Time::ZERO);
        let (_, _, have) = files.get_mut(&file_id).and_then(FileEntry::download_parts).expect("a manifest");
        have.set(ChunkIndex(0));
        assert_eq!(locates_due(&mut files, due, true, |_| false).len(), 1, "busy, a chunk came, not meshed: ask");
        let due = answer_late(&mut files, due);
        assert_eq!(locates_due(&mut files, due, true, |_| true).len(), 1, "busy and meshed, but stuck: ask");
        let due = answer_late(&mut files, due);
        let (_, _, have) = files.get_mut(&file_id).and_then(FileEntry::download_parts).expect("a manifest");
        have.set(ChunkIndex(1));
        assert!(locates_due(&mut files, due, true, |_| true).is_empty(), "busy, meshed and a chunk came: spared");
        let download = files.get_mut(&file_id).and_then(|e| e.download_mut()).expect("a download");
        assert_eq!(download.locate().due_at(), due + LOCATE_INTERVAL * 2, "planned again as if asked");
    }
}
