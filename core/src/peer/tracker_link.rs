//! The peer's side of the tracker connection: connect (and reconnect with exponential backoff),
//! handshake, announce every file (again at each interval and after every reconnect, so a
//! restarted tracker rebuilds its soft state; verified pieces reach it in the batched `Haves`
//! the scheduler sends remotes, at most every `HAVE_BATCH_INTERVAL`), and ask
//! where the pieces of each download are: every 2 s while a download is stuck, less and less
//! often while pieces keep arriving.

use std::time::Duration;

use crate::ids::{ConnId, FileId};
use crate::limits::{HANDSHAKE_TIMEOUT, RECONNECT_DELAY_MAX, RECONNECT_DELAY_MIN};
use crate::machine::{Event, Output};
use crate::time::Time;
use crate::wire::{ErrorCode, Message, Role, PROTOCOL_VERSION};

use super::Peer;

/// Where the tracker connection stands.
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

/// The tracker connection's state.
#[derive(Debug)]
pub(super) struct TrackerLink {
    stage: Stage,
    backoff: Duration,
}

impl TrackerLink {
    /// Not connected, due to connect at once.
    pub fn new() -> TrackerLink {
        TrackerLink { stage: Stage::Idle { retry_at: Time::ZERO }, backoff: RECONNECT_DELAY_MIN }
    }

    /// Whether `conn` is the tracker connection.
    pub fn owns(&self, conn: ConnId) -> bool {
        match self.stage {
            Stage::Idle { .. } => false,
            Stage::Connecting(c) | Stage::AwaitHello { conn: c, .. } | Stage::Ready { conn: c, .. } => c == conn,
        }
    }

    /// The connection, when the handshake is done.
    pub fn ready_conn(&self) -> Option<ConnId> {
        match self.stage {
            Stage::Ready { conn, .. } => Some(conn),
            _ => None,
        }
    }

    /// When the link next needs attention.
    pub fn deadline(&self) -> Option<Time> {
        match self.stage {
            Stage::Idle { retry_at } => Some(retry_at),
            Stage::Connecting(_) => None,
            Stage::AwaitHello { since, .. } => Some(since + HANDSHAKE_TIMEOUT),
            Stage::Ready { next_announce, .. } => Some(next_announce),
        }
    }
}

impl Peer {
    /// Connects, times out a silent handshake, or re-announces, whichever is due.
    pub(super) fn tracker_timeout(&mut self) {
        if self.left {
            return;
        }
        match self.tracker.stage {
            Stage::Idle { retry_at } if retry_at <= self.now => {
                let conn = self.new_conn();
                self.push(Output::Connect { conn, addr: self.config.tracker });
                self.tracker.stage = Stage::Connecting(conn);
            }
            Stage::AwaitHello { conn, since } if since + HANDSHAKE_TIMEOUT <= self.now => {
                self.push(Output::Close { conn });
                self.on_tracker_lost();
            }
            Stage::Ready { conn, next_announce } if next_announce <= self.now => {
                self.tracker.stage = Stage::Ready { conn, next_announce: self.now + self.config.announce_interval };
                let files: Vec<FileId> = self.files.keys().copied().collect();
                for file_id in files {
                    self.announce(file_id, false);
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_tracker_connected(&mut self, conn: ConnId) {
        let hello = self.hello();
        self.send(conn, hello);
        self.tracker.stage = Stage::AwaitHello { conn, since: self.now };
    }

    /// The tracker connection closed or could not be opened: retry after the backoff.
    pub(super) fn on_tracker_lost(&mut self) {
        if self.tracker.ready_conn().is_some() {
            self.event(Event::TrackerLost);
        }
        for entry in self.files.values_mut() {
            entry.announced = false;
        }
        self.tracker.stage = Stage::Idle { retry_at: self.now + self.tracker.backoff };
        self.tracker.backoff = (self.tracker.backoff * 2).min(RECONNECT_DELAY_MAX);
    }

    pub(super) fn on_tracker_message(&mut self, conn: ConnId, message: Message) {
        match message {
            Message::Hello(hello) => {
                let valid = hello.version == PROTOCOL_VERSION && hello.role == Role::Tracker;
                if !valid || !matches!(self.tracker.stage, Stage::AwaitHello { .. }) {
                    self.event(Event::ProtocolViolation {
                        conn,
                        reason: format!("unexpected tracker hello {hello:?}"),
                    });
                    self.push(Output::Close { conn });
                    self.on_tracker_lost();
                    return;
                }
                self.on_tracker_ready(conn);
            }
            Message::Announced { file_id } => self.on_announced(file_id),
            Message::Located { file_id, manifest, holders } => self.on_located(file_id, manifest.map(|m| *m), &holders),
            Message::Error { file_id: Some(file_id), code: ErrorCode::UnknownFile, .. } => {
                self.on_unknown_file(file_id)
            }
            // Other errors answer a single request; the periodic announce and locate retry.
            _ => {}
        }
    }

    fn on_tracker_ready(&mut self, conn: ConnId) {
        self.tracker.stage = Stage::Ready { conn, next_announce: self.now + self.config.announce_interval };
        self.tracker.backoff = RECONNECT_DELAY_MIN;
        self.event(Event::TrackerConnected);
        let files: Vec<FileId> = self.files.keys().copied().collect();
        for file_id in files {
            self.announce(file_id, false);
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

    fn on_unknown_file(&mut self, file_id: FileId) {
        let now = self.now;
        let Some(entry) = self.files.get_mut(&file_id) else { return };
        if let Some(download) = entry.download.as_mut() {
            download.locate_mut().answered(now, None);
        }
        if entry.manifest.is_some() {
            self.announce(file_id, true);
        } else {
            self.event(Event::FileUnknown { file_id });
        }
    }

    /// Announces the pieces held of `file_id` (with the manifest when the tracker may not know
    /// the file). Files whose manifest is not yet known are skipped.
    pub(super) fn announce(&mut self, file_id: FileId, with_manifest: bool) {
        let Some(conn) = self.tracker.ready_conn() else { return };
        let Some(entry) = self.files.get(&file_id) else { return };
        let Some(manifest) = entry.manifest.as_ref() else { return };
        let manifest = with_manifest.then(|| Box::new(manifest.clone()));
        let message = Message::Announce { file_id, manifest, have: entry.have.clone() };
        self.send(conn, message);
    }

    /// Sends `Locate` for every download whose next locate is due.
    pub(super) fn locate_due(&mut self) {
        let now = self.now;
        let ready = self.tracker.ready_conn();
        let mut due: Vec<(FileId, bool)> = Vec::new();
        for (file_id, entry) in &mut self.files {
            if !entry.is_fetching() {
                continue;
            }
            let (have_count, manifest_known) = (entry.have.count(), entry.manifest.is_some());
            let Some(download) = entry.download.as_mut() else { continue };
            if download.locate().due_at() <= now {
                let with_manifest = download.locate_mut().asked(now, have_count, ready.is_some(), manifest_known);
                due.push((*file_id, with_manifest));
            }
        }
        let Some(conn) = ready else { return };
        for (file_id, with_manifest) in due {
            self.send(conn, Message::Locate { file_id, with_manifest });
            self.event(Event::LocateSent { file_id });
        }
    }
}
