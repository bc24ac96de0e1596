//! `p2p-sim`: swarm's tracker and peer state machines — the very code `p2p-net` runs — over a
//! seeded virtual network in virtual time.
//!
//! A [`Scenario`] (TOML, see `scenarios/README.md`) names a file, peers with their holdings and
//! links, timed faults and expectations. A run builds a [`World`] (network, stores, timers and
//! scenario actions around one central event queue) and drives the machines with one of two
//! drivers that share that model: [`run_queue`], a plain loop for scale and property tests, and
//! [`run_actix`], actix actors on tokio's paused clock. Both produce the same [`Outcome`]:
//! a story, per-peer figures, and the SHA-256 digest of a trace with one line per event.
//!
//! Determinism: every random choice comes from sub-seeds of the run's seed derived per label
//! (`network`, `file`, `peer/NAME/LIFE`, `tracker/LIFE`), so adding a peer leaves the others'
//! streams alone; nothing reads a clock, OS randomness or a hash map's order.
//!
//! Module map: [`scenario`] (schema, validation), [`network`] (latency, bandwidth, loss,
//! partitions) with [`uplink`] (send buffers, fair sharing of a sender's rate), [`queue`]
//! (the event queue), [`store`] (each peer's in-memory disk), [`world`] (the model and the event-queue driver),
//! `effects` (carrying out machine outputs), [`node`] (machines and the actix driver),
//! [`trace`], [`report`], [`svg`] (a picture of a run), [`efficiency`] (a run against the Kumar–Ross lower bound),
//! [`expect`], [`error`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod adversary;
mod effects;
pub mod efficiency;
pub mod error;
pub mod expect;
pub mod network;
pub mod node;
pub mod queue;
pub mod report;
pub mod scenario;
pub mod store;
pub mod svg;
pub mod trace;
pub mod uplink;
pub mod world;

pub use adversary::{FloodTally, FLOOD_CONNECTIONS};
pub use error::ScenarioError;
pub use expect::{check, Verdict};
pub use node::run_actix;
pub use report::{Outcome, StoryLine, SummaryTable};
pub use scenario::{Scenario, ScenarioFile};
pub use world::{run_queue, World};
