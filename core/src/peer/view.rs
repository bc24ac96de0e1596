//! Read-only views of a peer, for a driver to show (an HTTP API, a status page): the files it
//! shares and downloads, and its connections. This module owns no state: it builds a view from
//! the peer's record of one file or one connection, and `Peer::file_views` and
//! `Peer::remote_views` list them in the machine's order (by file id, by connection). Building
//! a view changes nothing, so a driver may build one between any two inputs.

use std::net::SocketAddr;

use super::chunks::FileEntry;
use super::downloads::Phase;
use super::remote::Remote;
use crate::bitfield::Bitfield;
use crate::ids::{ConnId, FileId, PeerId};

/// Where a file stands for this peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileState {
    /// Being downloaded (or waiting for holders or for its manifest).
    Downloading,
    /// A download whose fetching is paused; its verified chunks are served.
    Paused,
    /// Every chunk is verified; the file is being moved into place.
    Finishing,
    /// The download stopped for good.
    Failed,
    /// Served: every chunk, or the chunks of a partial share.
    Serving,
}

/// One file as the peer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileView {
    /// The file.
    pub file_id: FileId,
    /// Its name, once the manifest is known.
    pub name: Option<String>,
    /// Its length, once the manifest is known.
    pub length_bytes: Option<u64>,
    /// Verified chunks (zero-length until the manifest is known).
    pub have: Bitfield,
    /// Where it stands.
    pub state: FileState,
}

/// One peer-to-peer connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteView {
    /// The connection.
    pub conn: ConnId,
    /// The remote's serving address.
    pub addr: SocketAddr,
    /// Its id, once its `Hello` arrived.
    pub peer_id: Option<PeerId>,
    /// Whether the handshake is done.
    pub ready: bool,
    /// How fast it delivers this peer's requests (zero until measured).
    pub download_bytes_per_s: u64,
    /// Block requests in flight to it.
    pub requests_in_flight: usize,
}

impl FileView {
    /// The view of `entry`, the peer's record of `file_id`.
    pub(super) fn of(file_id: FileId, entry: &FileEntry) -> FileView {
        let state = match entry.download().map(|download| download.phase()) {
            None => FileState::Serving,
            Some(Phase::Fetching) => FileState::Downloading,
            Some(Phase::Paused) => FileState::Paused,
            Some(Phase::Finalizing) => FileState::Finishing,
            Some(Phase::Failed) => FileState::Failed,
        };
        FileView {
            file_id,
            name: entry.manifest().map(|manifest| manifest.name().to_owned()),
            length_bytes: entry.manifest().map(|manifest| manifest.length_bytes()),
            have: entry.have().clone(),
            state,
        }
    }
}

impl RemoteView {
    /// The view of `remote`, the peer's record of the connection `conn`.
    pub(super) fn of(conn: ConnId, remote: &Remote) -> RemoteView {
        RemoteView {
            conn,
            addr: remote.addr(),
            peer_id: Some(remote.peer_id()),
            ready: remote.is_ready(),
            download_bytes_per_s: remote.requests().bytes_per_s(),
            requests_in_flight: remote.requests().len(),
        }
    }
}
