//! Every message of the protocol, tracker and peer-to-peer alike, in one serde enum.
//!
//! A connection opens with `Hello` both ways. Peers then talk to the tracker with
//! `Announce`/`Have`/`Leave`/`Locate`/`List` and get `Announced`/`Located`/`Files`/`Error`
//! back; peers talk to each other with `Bitfield`/`Have`/`Request`/`Data`/`Reject`/`Cancel`.
//! Decoded messages carry checked types where the type can check itself (a `Manifest` is
//! validated while it decodes, a `Bitfield`'s length matches its bytes); indices that need a
//! manifest to check are checked by the machine that receives them.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::bitfield::Bitfield;
use crate::ids::{ChunkIndex, Digest, FileId, PeerId, PieceIndex};
use crate::manifest::Manifest;
use crate::wire::Holders;

/// Protocol version carried in `Hello`; a peer with another version is refused. Version 2
/// packs a `Located` answer's holders into one byte string of records ([`Holders`]); version 3
/// adds peer exchange (`Peers`); version 4 gives each holder record a tag that says whether
/// the peer holds nothing, everything or the bitfield that follows, and an IPv4 address in 4
/// bytes; version 5 defines a chunk's digest as SHA-256 of its chunks' digests (see
/// [`PieceHasher`](crate::PieceHasher)), so the same file has another id and its chunks other
/// digests than under version 4, whose peers would take ours for liars.
pub const PROTOCOL_VERSION: u32 = 6;

/// What the sender of a `Hello` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The tracker.
    Tracker,
    /// A peer that shares and downloads.
    Peer,
    /// A tool that only queries the tracker (`p2p-node ls`); never listed as a holder.
    Client,
}

/// The first message each way on every connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal [`PROTOCOL_VERSION`].
    pub version: u32,
    /// What the sender is.
    pub role: Role,
    /// The sender's id.
    pub peer_id: PeerId,
    /// The port the sender accepts peer connections on (0 when it does not listen).
    pub listen_port: u16,
    /// The IP address the sender listens on, when it listens on one address (not every
    /// address of a family). A tracker records it in place of the connection's source IP
    /// only where that source is loopback and this is not (a peer on the tracker's host that
    /// reached it at 127.0.0.1 but serves other hosts). Absent from the encoding when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_ip: Option<IpAddr>,
    /// The sender takes part in room calls: as an uploader it sends `Room` to a remote it
    /// refused as `Busy` once room in its upload line is free for it, and as a downloader it
    /// waits for that call rather than asking such a remote again on a timer. A peer sends
    /// `Room` only to remotes that said so here. Absent from the encoding when false, so peers
    /// that do not know the field decode the `Hello` as before (serde skips unknown fields).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub room_calls: bool,
    /// The sender takes `Pushed`: a holder may take a block request on its behalf. A peer
    /// sends `Pushed` only to remotes that said so here. Absent from the encoding when false,
    /// as `room_calls`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub takes_pushes: bool,
    /// The sender takes `Requests`: several block requests in one message. A peer sends
    /// `Requests` only to remotes that said so here (to others each block in a `Request`).
    /// Absent from the encoding when false, as `room_calls`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub request_batches: bool,
    /// The sender answers `Withdraw`. A peer sends `Withdraw` only to remotes that said so
    /// here (to others a `Cancel`). Absent from the encoding when false, as `room_calls`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withdrawals: bool,
}

impl Hello {
    /// A `Hello` of this build's [`PROTOCOL_VERSION`] from `peer_id` as `role`, listening on
    /// `listen_port`, that names no listen IP, takes no part in room calls, takes neither
    /// pushes nor request batches and answers no `Withdraw`: what a tracker or a client sends.
    /// A peer's own sets the other fields too.
    pub fn new(role: Role, peer_id: PeerId, listen_port: u16) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            role,
            peer_id,
            listen_port,
            listen_ip: None,
            room_calls: false,
            takes_pushes: false,
            request_batches: false,
            withdrawals: false,
        }
    }
}

/// A peer as the tracker tells others of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerAddr {
    /// The peer's id.
    pub peer_id: PeerId,
    /// Where it accepts connections: its connection's source IP and its announced port.
    pub addr: SocketAddr,
}

/// Whether `ip` is this host's own: a loopback address, also written as an IPv4-mapped IPv6
/// address (`::ffff:127.0.0.1`, a loopback client of a dual-stack `[::]` listener). The one rule
/// for what the tracker and a peer trust as coming from their own host.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// One file in a `Files` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSummary {
    /// The file's id.
    pub file_id: FileId,
    /// The file's name.
    pub name: String,
    /// The file's length.
    pub length_bytes: u64,
    /// Live peers holding at least one chunk.
    pub peer_count: u32,
    /// Live holders of each chunk, by chunk index.
    pub holders_per_piece: Vec<u32>,
}

/// Why a request or announce was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The `Hello` carried another protocol version.
    VersionMismatch,
    /// A message other than `Hello` came first, or `Hello` came twice.
    HandshakeExpected,
    /// The frame was oversized or did not decode.
    MalformedFrame,
    /// The file id is not known here; an announcer should send the manifest.
    UnknownFile,
    /// The message names a chunk, range or bitfield that does not fit the file.
    BadRequest,
    /// A limit on files, peers or connections, or a per-peer or per-address quota, was reached.
    Overloaded,
    /// The message is not one this side handles.
    Unexpected,
}

/// Why a peer refused a block request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// The chunk is not verified here (or the file is unknown).
    NotHave,
    /// The serving queue for this connection is full; ask again later or elsewhere.
    Busy,
    /// Offset or length do not fit the chunk.
    BadRange,
    /// The server could not read its own copy.
    ReadFailed,
    /// The answer to a `Withdraw`: the block will not be sent (its request was dropped, or
    /// never queued).
    Withdrawn,
}

/// Every protocol message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Opens a connection; see [`Hello`].
    Hello(Hello),
    /// Peer → tracker: "I hold these chunks of this file". Carries the manifest the first
    /// time, or when the tracker answered `UnknownFile`.
    Announce {
        /// The file's id.
        file_id: FileId,
        /// The manifest, when the tracker may not know the file (boxed, as in every message:
        /// it is rare, and inline it would make every message as large as itself).
        manifest: Option<Box<Manifest>>,
        /// The chunks the announcer holds.
        have: Bitfield,
    },
    /// Tracker → peer: the announce of `file_id` was recorded.
    Announced {
        /// The file's id.
        file_id: FileId,
    },
    /// Peer → tracker or peer → peer: one more chunk is verified and served.
    Have {
        /// The file's id.
        file_id: FileId,
        /// The new chunk.
        chunk: ChunkIndex,
    },
    /// Peer → peer: more chunks are verified and served (batched `Have`s).
    Haves {
        /// The file's id.
        file_id: FileId,
        /// The new chunks.
        chunks: Vec<ChunkIndex>,
    },
    /// Peer → tracker: stop listing me for this file (`None`: for every file).
    Leave {
        /// The file, or every file.
        file_id: Option<FileId>,
    },
    /// Peer → tracker: who holds the chunks of this file? The tracker may hold the ask of a
    /// file it does not know yet for up to
    /// [`LOCATE_PARK_TIME`](crate::limits::LOCATE_PARK_TIME), answering once an announce
    /// registers the file.
    Locate {
        /// The file's id.
        file_id: FileId,
        /// Whether to include the manifest in the answer (a peer asks when holders did not
        /// send it).
        with_manifest: bool,
    },
    /// Tracker → peer: live holders of a file, each named once with the chunks it holds
    /// (bits, not lists: the answer stays small however many chunks the file has).
    Located {
        /// The file's id.
        file_id: FileId,
        /// The manifest, when the `Locate` asked for it.
        manifest: Option<Box<Manifest>>,
        /// Holders chosen by the tracker (bounded, shuffled; never the asker), each with the
        /// chunks it holds.
        holders: Holders,
    },
    /// Client → tracker: which files do you know?
    List,
    /// Tracker → client: the known files (bounded; `truncated` when more exist).
    Files {
        /// Summaries ordered by file id.
        files: Vec<FileSummary>,
        /// Whether more files exist than were listed.
        truncated: bool,
    },
    /// Either way: a request was refused, or the connection is about to close.
    Error {
        /// The file concerned, if any.
        file_id: Option<FileId>,
        /// What went wrong.
        code: ErrorCode,
        /// A human-readable detail for logs.
        detail: String,
    },
    /// Peer ↔ peer: all chunks the sender holds of a file. The opener of a connection sends it
    /// for the file it wants; the other side answers with its own.
    Bitfield {
        /// The file's id.
        file_id: FileId,
        /// The sender's verified chunks.
        have: Bitfield,
    },
    /// Peer → peer: send me `len` bytes of `chunk` from `offset`.
    Request {
        /// The file's id.
        file_id: FileId,
        /// The chunk.
        chunk: ChunkIndex,
        /// Offset within the chunk.
        offset: u32,
        /// Bytes wanted (at most one block).
        len: u32,
    },
    /// Peer → peer: several `Request`s of one file in one message, each answered as if it came
    /// alone and in this order: the blocks a downloader asks a remote for at once (a first
    /// pipeline, a refill after a call) cost one frame, not one each. At most
    /// [`REQUESTS_PER_MESSAGE_MAX`](crate::limits::REQUESTS_PER_MESSAGE_MAX) blocks, at least two;
    /// sent only to a remote whose `Hello` set `request_batches`.
    Requests {
        /// The file's id.
        file_id: FileId,
        /// The blocks wanted: chunk, offset within the chunk, bytes (at most one block each).
        blocks: Vec<(ChunkIndex, u32, u32)>,
    },
    /// Peer → peer: bytes of a chunk, answering a `Request`.
    Data {
        /// The file's id.
        file_id: FileId,
        /// The chunk.
        chunk: ChunkIndex,
        /// Offset within the chunk.
        offset: u32,
        /// The bytes.
        bytes: Bytes,
    },
    /// Peer → peer: the digests of the chunks of `piece`, which let the receiver check each of
    /// them on its own (see [`Manifest::is_chunk_list`]). A holder sends it on a connection
    /// before the first `Data` of a chunk of a piece of several chunks; a piece of one chunk
    /// needs none.
    Chunks {
        /// The file's id.
        file_id: FileId,
        /// The piece.
        piece: PieceIndex,
        /// Its chunks' digests, in order.
        digests: Vec<Digest>,
    },
    /// Peer → peer: a `Request` will not be served.
    Reject {
        /// The file's id.
        file_id: FileId,
        /// The chunk.
        chunk: ChunkIndex,
        /// Offset within the chunk.
        offset: u32,
        /// Why.
        reason: RejectReason,
    },
    /// Peer → peer: room in the sender's upload line is free for the receiver, whose request
    /// it refused as `Busy`: ask now. Sent only to a remote whose `Hello` set `room_calls`.
    Room,
    /// Peer → peer: the answer to a `Room` call when the sender has nothing to ask of the
    /// caller now: the room it held goes to the next.
    Pass,
    /// Peer → peer: the sender took a `Request` for this block on the receiver's behalf, a
    /// round trip before the receiver could send one: a whole-file seeder's first offer to a
    /// downloader that holds nothing, sent just before the `Bitfield` that offers the chunk.
    /// `Data` or a `Reject` follows as for a request of the receiver's; a receiver that does
    /// not want the block answers `Cancel`. Sent only to a remote whose `Hello` set
    /// `takes_pushes`.
    Pushed {
        /// The file's id.
        file_id: FileId,
        /// The chunk.
        chunk: ChunkIndex,
        /// Offset within the chunk.
        offset: u32,
        /// Bytes to come (at most one block).
        len: u32,
    },
    /// Peer → peer: forget an earlier `Request` (another remote delivered the chunk).
    Cancel {
        /// The file's id.
        file_id: FileId,
        /// The chunk.
        chunk: ChunkIndex,
        /// Offset within the chunk.
        offset: u32,
    },
    /// Peer → peer: forget an earlier `Request`, and say so unless its block is on its way: the
    /// receiver answers `Reject` `Withdrawn` unless it already read the block or started reading it,
    /// whose `Data` then comes instead. Either answer follows every `Data` sent before it, so the
    /// sender knows whether the block can still come, and asks another holder for it only when
    /// it cannot. Sent only to a remote whose `Hello` set `withdrawals`.
    Withdraw {
        /// The file's id.
        file_id: FileId,
        /// The chunk.
        chunk: ChunkIndex,
        /// Offset within the chunk.
        offset: u32,
    },
    /// Peer → peer: send me the manifest of this file. A downloader asks a holder the tracker
    /// named, so the tracker's link does not carry a manifest to every downloader.
    GetManifest {
        /// The file's id.
        file_id: FileId,
    },
    /// Peer → peer: the manifest asked for; the receiver checks it against the file id.
    Manifest {
        /// The manifest.
        manifest: Box<Manifest>,
    },
    /// Peer → peer (peer exchange): other peers of this file the sender is connected to, at
    /// most `PEX_PEERS_PER_MESSAGE_MAX`, each named once per connection.
    Peers {
        /// The file.
        file_id: FileId,
        /// The peers: id and serving address.
        peers: Vec<PeerAddr>,
    },
}

impl Message {
    /// How many block requests it carries: one for a `Request`, one per block of a `Requests`,
    /// none for any other message.
    pub fn block_requests(&self) -> usize {
        match self {
            Message::Request { .. } => 1,
            Message::Requests { blocks, .. } => blocks.len(),
            _ => 0,
        }
    }

    /// A short name of the variant, for logs and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Announce { .. } => "announce",
            Message::Announced { .. } => "announced",
            Message::Have { .. } => "have",
            Message::Haves { .. } => "haves",
            Message::Leave { .. } => "leave",
            Message::Locate { .. } => "locate",
            Message::Located { .. } => "located",
            Message::List => "list",
            Message::Files { .. } => "files",
            Message::Error { .. } => "error",
            Message::Bitfield { .. } => "bitfield",
            Message::Request { .. } => "request",
            Message::Requests { .. } => "requests",
            Message::Data { .. } => "data",
            Message::Chunks { .. } => "chunks",
            Message::Reject { .. } => "reject",
            Message::Room => "room",
            Message::Pass => "pass",
            Message::Pushed { .. } => "pushed",
            Message::Cancel { .. } => "cancel",
            Message::Withdraw { .. } => "withdraw",
            Message::GetManifest { .. } => "get-manifest",
            Message::Manifest { .. } => "manifest",
            Message::Peers { .. } => "peers",
        }
    }

    /// An `Error` message.
    pub fn error(file_id: Option<FileId>, code: ErrorCode, detail: impl Into<String>) -> Message {
        Message::Error { file_id, code, detail: detail.into() }
    }
}
