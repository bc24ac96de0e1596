//! The scenario schema exactly as written in TOML (see `scenarios/README.md`). Nothing here is
//! checked beyond types; [`super::Scenario`] validates it. Everything is also `Serialize`, so a
//! generated scenario can be printed as a reproducer.

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// A scenario file as written: see `scenarios/README.md` for every key.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// A title for the story; defaults to the file's stem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The seed used when the command line gives none.
    #[serde(default)]
    pub seed: u64,
    /// When the run stops, in virtual seconds.
    pub end_s: f64,
    /// `"pieces"` tells every piece in the story; `"milestones"` only joins, completions and
    /// faults. Default: `"pieces"` up to 12 peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub story: Option<StoryLevel>,
    /// Link defaults for every node.
    #[serde(default)]
    pub network: LinkFile,
    /// The tracker's settings.
    #[serde(default)]
    pub tracker: TrackerFile,
    /// The shared file.
    pub file: FileFile,
    /// The peers.
    #[serde(default, rename = "peer")]
    pub peers: Vec<Spanned<PeerFile>>,
    /// Timed faults and commands.
    #[serde(default, rename = "event")]
    pub events: Vec<Spanned<EventFile>>,
    /// What must hold at the end.
    #[serde(default, rename = "expect")]
    pub expects: Vec<Spanned<ExpectFile>>,
}

/// How much of the run the story tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoryLevel {
    /// Every located answer, piece and completion.
    Pieces,
    /// Joins, leaves, faults, completions, bans and missing pieces only.
    Milestones,
}

/// Link settings; every key optional (a peer's keys override the network defaults).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkFile {
    /// One-way latency in milliseconds (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Extra random delay, uniform in 0..jitter, per message (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
    /// Uplink rate (default unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_bytes_per_s: Option<u64>,
    /// Downlink rate (default unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_bytes_per_s: Option<u64>,
    /// Standing queue at the uplink while it sends bulk data, in milliseconds (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<f64>,
    /// Probability that a message is lost (it is retransmitted later; four losses in a row reset
    /// the connection) (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
}

/// The `[tracker]` table.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerFile {
    /// Announce interval in seconds (default 10); the TTL is three of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce_interval_s: Option<f64>,
    /// How many trackers run (default 1), named `tracker`, `tracker2`, …; every peer is given
    /// them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// The trackers' own link.
    #[serde(flatten)]
    pub link: LinkFile,
}

/// The `[file]` table.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFile {
    /// The file's name (default `file.bin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its length.
    pub size_bytes: u64,
    /// Its piece size: a power of two from 16 KiB to 16 MiB.
    pub piece_size_bytes: u64,
}

/// A `[[peer]]` entry.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerFile {
    /// Its name, used everywhere else in the file. With `count`, the names are `name1..nameN`.
    pub name: String,
    /// Make this many identical peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// The pieces it holds at start: `"all"`, `"none"` or a list of indices and `"a-b"` ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds: Option<HoldsFile>,
    /// Whether it downloads the file (default: when it does not hold every piece).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wants: Option<bool>,
    /// When it starts (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_s: Option<f64>,
    /// With `count`, the peers start evenly spread over this many seconds from `join_s`, in
    /// name order (default 0: all at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_spread_s: Option<f64>,
    /// When it leaves politely (tells the tracker, closes its connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave_s: Option<f64>,
    /// When it crashes (vanishes; its store survives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_s: Option<f64>,
    /// When it restarts after its crash, resuming from its store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_s: Option<f64>,
    /// Upload cap given to the peer's own scheduler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_limit_bytes_per_s: Option<u64>,
    /// How it behaves as a sender (default: honest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Link overrides.
    #[serde(flatten)]
    pub link: LinkFile,
}

/// The `role` key: an adversary's behaviour, carried out by the simulator around an honest
/// machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Serves what its store holds.
    #[default]
    Honest,
    /// Sends a bad copy of the first block of every piece it is asked for, then drops that
    /// connection, so an honest holder finishes the piece: each such piece fails its hash with
    /// two senders.
    LiarMixed,
    /// Claims the id of the first other peer of the scenario in every `Hello` (to trackers and
    /// peers), while its key proves its own: every such `Hello` is refused.
    Impersonator,
    /// Besides its honest machine, opens one connection more than one address may hold to
    /// every initial holder, says `Hello` on each and then nothing: it keeps inbound slots.
    SlotHog,
    /// Lacks the swarm key the others share: every connection to or from it fails its
    /// handshake.
    NoKey,
    /// Besides its honest machine, opens connections of its own to every tracker and announces
    /// fake files on them, more than one address's quotas allow.
    TrackerFlooder,
}

/// The `holds` key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HoldsFile {
    /// `"all"`, `"none"` or `"0-3"`.
    Word(String),
    /// Indices and `"a-b"` ranges.
    List(Vec<PieceItem>),
}

/// One item of a piece list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PieceItem {
    /// One piece.
    Index(u32),
    /// `"a-b"`, both ends included.
    Range(String),
}

/// An `[[event]]` entry: `do` names the action.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case", deny_unknown_fields)]
pub enum EventFile {
    /// A peer starts (again, after a leave).
    Join {
        /// When.
        at_s: f64,
        /// Who.
        peer: String,
    },
    /// A peer leaves politely.
    Leave {
        /// When.
        at_s: f64,
        /// Who.
        peer: String,
    },
    /// A peer crashes.
    Crash {
        /// When.
        at_s: f64,
        /// Who.
        peer: String,
    },
    /// A crashed peer restarts from its store.
    Restart {
        /// When.
        at_s: f64,
        /// Who.
        peer: String,
    },
    /// A peer's stored copy of these pieces goes bad; it keeps serving them.
    Corrupt {
        /// When.
        at_s: f64,
        /// Whose store.
        peer: String,
        /// Which pieces.
        pieces: Vec<PieceItem>,
    },
    /// These nodes (peer or tracker names) are cut off from all others.
    Partition {
        /// When.
        at_s: f64,
        /// The cut-off side.
        nodes: Vec<String>,
    },
    /// Every partition ends.
    Heal {
        /// When.
        at_s: f64,
    },
    /// The tracker restarts with empty state.
    TrackerRestart {
        /// When.
        at_s: f64,
    },
    /// A tracker stops: its connections reset, new ones are refused until it starts again.
    TrackerStop {
        /// When.
        at_s: f64,
        /// Which (default `tracker`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tracker: Option<String>,
    },
    /// A stopped tracker starts again, with empty state.
    TrackerStart {
        /// When.
        at_s: f64,
        /// Which (default `tracker`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tracker: Option<String>,
    },
}

/// An `[[expect]]` entry: `check` names what must hold at the end. Peer lists accept `"*"`
/// (every downloader) and `"prefix*"` (every peer whose name starts with prefix).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "check", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ExpectFile {
    /// These peers complete (by `by_s` when given, and within `within_s` of their first join
    /// when given).
    Completes {
        /// Who.
        peers: Vec<String>,
        /// Deadline in virtual seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by_s: Option<f64>,
        /// Longest time from each peer's first join to its completion, in seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        within_s: Option<f64>,
    },
    /// These peers do not complete.
    Incomplete {
        /// Who.
        peers: Vec<String>,
    },
    /// `peer` got `piece` from `from`.
    PieceFrom {
        /// The downloader.
        peer: String,
        /// The piece.
        piece: u32,
        /// The sender.
        from: String,
    },
    /// `peer` banned `banned`.
    Banned {
        /// The downloader.
        peer: String,
        /// The banned sender.
        banned: String,
    },
    /// `peer`'s last missing-pieces report is exactly `pieces`.
    Missing {
        /// The downloader.
        peer: String,
        /// The pieces nobody holds.
        pieces: Vec<PieceItem>,
    },
    /// `peer` uploaded at most `copies` times the file's size.
    UploadedAtMost {
        /// The uploader.
        peer: String,
        /// Copies of the file.
        copies: f64,
    },
    /// Every downloader completes within `factor` × the scenario's fluid bound T_min, counted
    /// from its join, and the median within `p50_factor` × T_min when given (see
    /// [`crate::efficiency`]; the scenario must have a bound).
    WithinBound {
        /// Largest last-completion time, in units of T_min.
        factor: f64,
        /// Largest median completion time, in units of T_min.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        p50_factor: Option<f64>,
    },
    /// Each of `peers` received at most `copies` × the file's size.
    DownloadedAtMost {
        /// Who.
        peers: Vec<String>,
        /// Copies of the file.
        copies: f64,
    },
    /// At least `at_least` (a fraction) of the seeders' upload was useful (see
    /// [`crate::efficiency`]; the scenario must have a peer holding the whole file at the start
    /// that does not download).
    SeederUseful {
        /// The smallest useful fraction, in `0.0..=1.0`.
        at_least: f64,
    },
    /// No peer banned any of `peers`.
    NotBanned {
        /// Who.
        peers: Vec<String>,
    },
    /// Every tracker refused part of each `tracker-flooder` of `peers`' flood and kept no more
    /// of its fake files than one address's quota.
    TrackerBounded {
        /// The flooders.
        peers: Vec<String>,
    },
    /// `peer` uploaded fewer bytes than each of `than`.
    UploadedLess {
        /// The uploader.
        peer: String,
        /// Those that must have uploaded more.
        than: Vec<String>,
    },
}
