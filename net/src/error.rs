//! `NetError`: what went wrong in the network driver or the store, with what was being done and
//! to which path or address.
//!
//! Failures of storage work a running machine asked for reach it as core's [`StoreError`] (its
//! completions' error type; [`store_io`] builds the I/O kind); errors a caller of the public API
//! can act on are returned as `NetError`, which wraps a `StoreError` where one is the cause.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use p2p_core::{CommandError, FileId, IdError, ManifestError, StoreError};
use thiserror::Error;

/// An error of the network driver, the store or the hasher.
#[derive(Debug, Error)]
pub enum NetError {
    /// A file-system operation failed.
    #[error("cannot {action} {path}: {error}")]
    Io {
        /// What was being done ("create", "read", "rename", ...).
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error (shown in the message, so not a separate `source`).
        error: io::Error,
    },
    /// A socket operation failed.
    #[error("cannot {action} {addr}: {error}")]
    Socket {
        /// What was being done ("listen on", "connect to", ...).
        action: &'static str,
        /// The address concerned.
        addr: SocketAddr,
        /// The underlying error (shown in the message, so not a separate `source`).
        error: io::Error,
    },
    /// A peer was given no tracker, or more than it keeps connections to.
    #[error("a peer needs 1 to {max} trackers, got {count}")]
    TrackerCount {
        /// Trackers given.
        count: usize,
        /// `TRACKERS_PER_PEER_MAX`.
        max: usize,
    },
    /// A file could not be described by a manifest (bad name, piece size, too many pieces).
    #[error("{path}: {error}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// Why.
        error: ManifestError,
    },
    /// A stored sidecar file is damaged or belongs to another file.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The sidecar file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A piece named by the caller is not in the file.
    #[error("piece {piece} is beyond the end of {path} ({count} pieces)")]
    NoSuchPiece {
        /// The piece asked for.
        piece: u32,
        /// Pieces in the file.
        count: u32,
        /// The file.
        path: PathBuf,
    },
    /// Another process (or another store in this one) has the store directory open.
    #[error("the store {0} is in use by another p2p-node (one process per store; it holds the lock file in it)")]
    StoreInUse(PathBuf),
    /// The store does not hold the file.
    #[error("file {0} is not in the store")]
    NotStored(FileId),
    /// A tracker or peer answered something unexpected or nothing at all.
    #[error("{addr}: {reason}")]
    Protocol {
        /// The remote.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// Storage work failed (the same error a machine's completion carries).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The machine refused a local command.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A typed file id matches no file, or several, of the store's and the tracker's.
    #[error("cannot resolve the file id prefix {prefix}: {error}")]
    Resolve {
        /// What was typed.
        prefix: String,
        /// Why it matches no single file.
        error: IdError,
    },
    /// A removed file's store work did not finish in time; its store data is kept.
    #[error("the store work for {file_id} did not finish within {waited:?}; its data in the store is kept")]
    RemovalPending {
        /// The file.
        file_id: FileId,
        /// How long the removal waited.
        waited: std::time::Duration,
    },
    /// The driver actor is gone (the node was stopped).
    #[error("the node has stopped")]
    Stopped,
}

impl NetError {
    /// An [`NetError::Io`] for `action` on `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> NetError {
        let path = path.into();
        move |error| NetError::Io { action, path, error }
    }

    /// A [`NetError::Socket`] for `action` on `addr`.
    pub fn socket(action: &'static str, addr: SocketAddr) -> impl FnOnce(io::Error) -> NetError {
        move |error| NetError::Socket { action, addr, error }
    }
}

/// A [`StoreError::Io`] for `action` on `path`.
pub fn store_io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.into();
    move |error| StoreError::Io { action, path, kind: error.kind(), detail: error.to_string() }
}
