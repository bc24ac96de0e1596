//! `p2p-core`: the sans-IO heart of swarm.
//!
//! Two state machines, [`Tracker`] and [`Peer`], hold all protocol and scheduling logic. They do
//! no I/O, read no clock and use no OS randomness: time arrives with every input as a [`Time`],
//! randomness comes from a seeded [`rng::Rng`] each machine owns. The same inputs in the same order
//! give the same outputs, which is what lets `p2p-sim` run exactly the code `p2p-net` runs.
//!
//! # Driving contract
//!
//! Both machines implement [`Machine`]:
//! - [`Machine::handle`]`(now, input)` is the only way to change state;
//! - [`Machine::poll_output`] yields what the driver must do (send, connect, close, write,
//!   hash, read) and what it should report ([`Event`]);
//! - [`Machine::poll_timeout`] is the earliest moment the machine wants [`Input::Timeout`].
//!
//! **Every `handle` is followed by a full drain of `poll_output` before the next `handle`**, and
//! a timer moves once it fired; [`step`] does one input with both rules asserted. Slow work is
//! an [`Output`] followed later by an [`Input::Completed`]; the storage part of that work is the
//! [`store::Store`] contract every driver's store implements, failing with a [`StoreError`].
//!
//! Frames on the wire are a 4-byte big-endian length plus one CBOR [`wire::Message`]; see
//! [`wire::codec`]. Every bound lives in [`limits`].

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod bitfield;
pub mod error;
pub mod ids;
pub mod limits;
pub mod machine;
pub mod manifest;
pub mod peer;
pub mod rng;
pub mod small;
pub mod store;
#[cfg(test)]
pub(crate) mod testkit;
pub mod time;
pub mod tracker;
pub mod wire;

pub use bitfield::Bitfield;
pub use error::{CommandError, DecodeError, EncodeError, IdError, ManifestError, StoreError};
pub use ids::{ChunkIndex, ConnId, Digest, FileId, FileIdPrefix, PeerId, PieceIndex};
pub use machine::{step, step_command, Command, Completion, Event, GoneReason, Input, Machine, Output, Progress};
pub use manifest::{
    auto_piece_size, piece_digest, piece_digest_of_chunks, Described, FileSpan, Manifest, ManifestBuilder, PieceHasher,
    TreeEntry,
};
pub use peer::{Peer, PeerConfig};
pub use store::Resume;
pub use time::Time;
pub use tracker::{Tracker, TrackerConfig};
