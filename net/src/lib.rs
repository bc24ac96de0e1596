//! `p2p-net`: swarm's state machines on real TCP and real files.
//!
//! - [`driver`]: one generic actix actor owning a [`p2p_core::Machine`] (tracker or peer):
//!   feeds it inputs, drains and executes its outputs, keeps its timer.
//! - [`connection`]: one reader and one writer task per connection, framed with core's codec.
//! - [`secure`]: the encrypted transport under every connection (a Noise handshake that
//!   proves each side's key, then sealed chunks); [`identity`]: the key files it uses.
//! - [`read_budget`]: the bound on all the connections' receive buffers together.
//! - [`store`]: partial downloads, their sidecars, shared and finished files and directories.
//! - [`item`]: an item's bytes on disk, one file or a directory's files, read and hashed
//!   across file boundaries; [`tree`]: describing a directory as one item and laying a
//!   downloaded one out under the output directory.
//! - [`held`]: the store's records of the items it serves, so a restarted peer serves them.
//! - [`hasher`]: SHA-256 of pieces and whole-item manifests, for worker threads.
//! - [`watch`]: what a driver saw (metrics, who sent each piece, rates), for people watching.
//! - [`http`]: the HTTP API, `/metrics` and web pages of a running tracker or peer.
//! - [`client`]: short tool connections to a tracker (`List`).
//! - [`node`]: the public entry points, [`spawn_tracker`] (or [`spawn_tracker_reporting`])
//!   and [`spawn_peer`].
//!
//! Disk and hashing never run on the reactor thread. A remote that sends garbage, oversized
//! frames or never reads costs one closed connection and a log line. The crate has one
//! `unsafe` call, an `ioctl` that reads how many bytes a socket has not sent yet (in
//! [`secure`]), which no maintained crate wraps.

#![deny(unsafe_code)]

pub mod client;
pub mod connection;
pub mod driver;
pub mod error;
pub mod hasher;
pub mod held;
pub mod http;
pub mod identity;
pub mod item;
pub mod node;
pub mod read_budget;
pub mod secure;
pub mod store;
pub mod tree;
pub mod watch;

pub use driver::{ConnectFailure, NodeEvent};
pub use error::NetError;
pub use node::{
    spawn_peer, spawn_tracker, spawn_tracker_reporting, PeerHandle, PeerOptions, Resumed, ShareOptions, TrackerHandle,
};
