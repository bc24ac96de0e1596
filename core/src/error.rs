//! Error enums for the local caller's mistakes.
//!
//! Bad input from the network is never an `Err` here: the machines turn it into output (an
//! error reply, a closed connection, a strike). These types are for what a local caller — a
//! driver, a command line — got wrong.

use thiserror::Error;

/// A file id or id prefix that could not be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdError {
    /// The text had the wrong number of hex digits.
    #[error("a file id has 64 hex digits (a prefix at least 8); got {digits}")]
    Length {
        /// How many digits were given.
        digits: usize,
    },
    /// The text was not hexadecimal.
    #[error("not a hex file id: {0:?}")]
    NotHex(String),
    /// No known id starts with the prefix.
    #[error("no known file id starts with {0}")]
    UnknownPrefix(String),
    /// More than one known id starts with the prefix.
    #[error("more than one file id starts with {0}; type more digits")]
    AmbiguousPrefix(String),
}

/// A manifest that breaks the rules of [`crate::Manifest`].
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ManifestError {
    /// The name is empty, too long, or could escape a download folder.
    #[error("unsafe or invalid file name {0:?}")]
    BadName(String),
    /// The piece size is outside the allowed range or not a power of two.
    #[error("piece size {0} bytes is not a power of two between 16 KiB and 16 MiB")]
    BadPieceSize(u64),
    /// The number of piece hashes does not match length and piece size.
    #[error("{hashes} piece hashes given but the length needs {expected}")]
    PieceCount {
        /// Hashes in the manifest.
        hashes: usize,
        /// Pieces the length and piece size imply.
        expected: u64,
    },
    /// The file would need more pieces than the system allows.
    #[error("file needs {0} pieces, more than the limit of {max}", max = crate::limits::PIECES_MAX)]
    TooManyPieces(u64),
    /// The file list of a directory breaks a rule: an unsafe path, a list out of order, too
    /// many entries or path bytes, or sizes that do not add up to the length.
    #[error("invalid directory tree: {0}")]
    BadTree(String),
    /// The bytes are not a CBOR manifest.
    #[error("manifest does not decode: {0}")]
    Decode(String),
}

/// A frame that could not be turned into a message.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The length prefix announces more than the frame limit (the small one of a connection's
    /// first frame, or the general one).
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// The announced body length.
        len: usize,
        /// The limit it exceeds.
        max: usize,
    },
    /// The frame body is not a valid CBOR message.
    #[error("frame does not decode: {0}")]
    Malformed(String),
}

/// A local command a machine refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CommandError {
    /// The machine takes no local command (a tracker).
    #[error("this machine takes no command")]
    Unsupported,
    /// The peer already handles as many files as the limit allows.
    #[error("too many files (limit {max})", max = crate::limits::PEER_FILES_MAX)]
    TooManyFiles,
    /// The bitfield given does not match the manifest's chunk count.
    #[error("bitfield has {got} bits, the manifest has {expected} chunks")]
    BitfieldLength {
        /// Bits given.
        got: u32,
        /// Chunks in the manifest.
        expected: u32,
    },
    /// The peer has no such file.
    #[error("this peer has no such file")]
    UnknownFile,
    /// Only a download still fetching pieces can be paused.
    #[error("only a download still fetching pieces can be paused")]
    NotFetching,
    /// Only a paused download can be resumed.
    #[error("the download is not paused")]
    NotPaused,
    /// The file is being removed (store work for it is finishing); it can be added again once
    /// it is gone.
    #[error("the file is being removed; try again in a moment")]
    Removing,
}

/// A message this side could not put into a frame.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    /// The encoded message exceeds the frame limit.
    #[error("message of {len} bytes exceeds the frame limit of {max} bytes", max = crate::limits::FRAME_BYTES_MAX)]
    Oversized {
        /// The encoded body length.
        len: usize,
    },
}

/// Why storage work a peer asked its driver for (write, hash, read, finalize) failed: the `Err`
/// of every [`crate::Completion`]. The kinds say what the peer can do about it; the display
/// text is for the user.
///
/// This is the one error type of every store (net's files on disk, sim's memory, the test
/// harness), so the peer reacts to a failure the same way whichever driver runs it.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum StoreError {
    /// The file is not in the store: never allocated, or its allocation failed.
    #[error("the file is not in the store")]
    NotStored,
    /// A block was written to a file that is not being downloaded (shared or complete).
    #[error("the file is not being downloaded")]
    NotDownloading,
    /// A chunk that is neither verified nor shared here was asked for.
    #[error("chunk {chunk} is not held here")]
    NotHeld {
        /// The chunk.
        chunk: crate::ChunkIndex,
    },
    /// The range is not inside one block of one chunk of the file.
    #[error("{len} bytes at offset {offset} do not fit a block of chunk {chunk}")]
    OutOfRange {
        /// The chunk.
        chunk: crate::ChunkIndex,
        /// Offset within the chunk.
        offset: u32,
        /// Bytes asked for.
        len: u64,
    },
    /// Finalizing a download that still lacks verified chunks.
    #[error("only {have} of {total} chunks are verified")]
    Incomplete {
        /// Verified chunks.
        have: u32,
        /// Chunks in the file.
        total: u32,
    },
    /// The storage itself failed (a full disk, a removed folder, no free final name).
    #[error("cannot {action} {path}: {detail}", path = path.display())]
    Io {
        /// What was being done ("write", "read", "move the finished file to", ...).
        action: &'static str,
        /// The path concerned.
        path: std::path::PathBuf,
        /// The kind of failure, for a caller that tells a full disk from a missing file.
        kind: std::io::ErrorKind,
        /// The system's description of the failure.
        detail: String,
    },
}
