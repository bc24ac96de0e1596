//! What a driver saw its machine do, for people watching the node: the Prometheus metrics
//! ([`Metrics`]) and, per file, who sent each verified piece and how fast bytes move
//! ([`FileSeen`]). The driver updates a [`Watch`] from the messages it carries and the events
//! it reports; the HTTP API reads it through the driver (see [`crate::driver::Inspect`]).
//!
//! Everything here is bounded by what the machine keeps: a [`FileSeen`] is made only for a file
//! the machine itself names (a block it has written, a block it sends, a piece it verified), one
//! source per piece, one pending locate per file it asked about. Messages from remotes only
//! move the global counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2p_core::wire::Message;
use p2p_core::{Event, FileId};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// A rate is measured over windows of at least this length.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);
/// A rate not updated for this long reads as zero (nothing moved).
pub const RATE_STALE_AFTER: Duration = Duration::from_secs(3);
/// Upper bounds of the locate latency histogram's buckets, in seconds.
const LOCATE_BUCKETS_S: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Which node a [`Metrics`] describes: each registers only the families that apply to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A tracker.
    Tracker,
    /// A peer.
    Peer,
}

/// The Prometheus metrics of one node. Counters and gauges are shared handles: the driver
/// updates them, [`Metrics::encode`] reads them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Payload bytes received in `Data` messages.
    pub received_bytes: Counter,
    /// Payload bytes sent in `Data` messages.
    pub sent_bytes: Counter,
    /// Chunks that arrived and passed their hash.
    pub chunks_verified: Counter,
    /// Chunks that arrived and failed their hash.
    pub chunks_corrupt: Counter,
    /// Remotes banned for bad data.
    pub peers_banned: Counter,
    /// Open connections.
    pub connections: Gauge,
    /// Time from a `Locate` to its answer.
    pub locate_seconds: Histogram,
    /// Files the tracker knows.
    pub tracker_files: Gauge,
    /// Peers the tracker knows.
    pub tracker_peers: Gauge,
    /// (peer, file) holdings the tracker keeps.
    pub tracker_holdings: Gauge,
    resident_memory_bytes: Gauge,
}

impl Metrics {
    /// The metrics of a `role` node, all zero.
    pub fn new(role: Role) -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("swarm"),
            received_bytes: Counter::default(),
            sent_bytes: Counter::default(),
            chunks_verified: Counter::default(),
            chunks_corrupt: Counter::default(),
            peers_banned: Counter::default(),
            connections: Gauge::default(),
            locate_seconds: Histogram::new(LOCATE_BUCKETS_S.into_iter()),
            tracker_files: Gauge::default(),
            tracker_peers: Gauge::default(),
            tracker_holdings: Gauge::default(),
            resident_memory_bytes: Gauge::default(),
        };
        metrics.register(role);
        metrics
    }

    fn register(&mut self, role: Role) {
        let registry = &mut self.registry;
        registry.register("connections", "Open connections", self.connections.clone());
        if role == Role::Tracker {
            registry.register("tracker_files", "Files the tracker knows", self.tracker_files.clone());
            registry.register("tracker_peers", "Peers the tracker knows", self.tracker_peers.clone());
            registry.register(
                "tracker_holdings",
                "Peer-file holdings the tracker keeps",
                self.tracker_holdings.clone(),
            );
            return;
        }
        registry.register_with_unit("received", "Payload bytes received", Unit::Bytes, self.received_bytes.clone());
        registry.register_with_unit("sent", "Payload bytes sent", Unit::Bytes, self.sent_bytes.clone());
        registry.register("chunks_verified", "Chunks that passed their hash", self.chunks_verified.clone());
        registry.register("chunks_corrupt", "Chunks that failed their hash", self.chunks_corrupt.clone());
        registry.register("peers_banned", "Remotes banned for bad data", self.peers_banned.clone());
        registry.register_with_unit(
            "locate_duration",
            "Time from asking the tracker where pieces are to its answer",
            Unit::Seconds,
            self.locate_seconds.clone(),
        );
    }

    /// The metrics in the Prometheus text format, with the process's resident memory read now.
    pub fn encode(&self) -> String {
        self.resident_memory_bytes.set(resident_memory_bytes().unwrap_or(0));
        let mut text = String::new();
        // Writing to a String cannot fail.
        encode(&mut text, &self.registry).ok();
        let memory = "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
                      # TYPE process_resident_memory_bytes gauge\n";
        let eof = text.strip_suffix("# EOF\n").map(str::len).unwrap_or(text.len());
        text.insert_str(eof, &format!("{memory}process_resident_memory_bytes {}\n", self.resident_memory_bytes.get()));
        text
    }
}

/// The process's resident set, from `/proc/self/statm` (Linux; `None` elsewhere).
fn resident_memory_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page_bytes = i64::try_from(rustix::param::page_size()).ok()?;
    Some(pages.saturating_mul(page_bytes))
}

/// Bytes moved, with a rate measured over windows of [`RATE_WINDOW`].
#[derive(Clone, Copy, Debug)]
pub struct Meter {
    /// Bytes since the node started.
    pub total_bytes: u64,
    window_start: Instant,
    window_bytes: u64,
    bytes_per_s: u64,
}

impl Meter {
    fn new(now: Instant) -> Meter {
        Meter { total_bytes: 0, window_start: now, window_bytes: 0, bytes_per_s: 0 }
    }

    fn add(&mut self, now: Instant, bytes: u64) {
        self.total_bytes += bytes;
        self.window_bytes += bytes;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            self.bytes_per_s = self.window_bytes.saturating_mul(1_000_000) / micros;
            self.window_start = now;
            self.window_bytes = 0;
        }
    }

    /// The last measured rate, zero when nothing moved for a while.
    pub fn bytes_per_s(&self, now: Instant) -> u64 {
        if now.saturating_duration_since(self.window_start) > RATE_STALE_AFTER {
            0
        } else {
            self.bytes_per_s
        }
    }
}

/// What was seen of one file.
#[derive(Clone, Debug)]
pub struct FileSeen {
    /// Who sent each verified piece (by piece index; `None`: not from the network this run).
    pub sources: Vec<Option<SocketAddr>>,
    /// Payload received and kept (duplicates the machine dropped are not counted).
    pub down: Meter,
    /// Payload sent.
    pub up: Meter,
}

/// A driver's observations; see the module docs.
#[derive(Debug)]
pub struct Watch {
    metrics: std::sync::Arc<Metrics>,
    files: BTreeMap<FileId, FileSeen>,
    /// When the `Locate` awaiting an answer was sent, per file.
    locating: BTreeMap<FileId, Instant>,
}

impl Watch {
    /// Observations feeding `metrics`.
    pub fn new(metrics: std::sync::Arc<Metrics>) -> Watch {
        Watch { metrics, files: BTreeMap::new(), locating: BTreeMap::new() }
    }

    /// The metrics this watch feeds.
    pub fn metrics(&self) -> &std::sync::Arc<Metrics> {
        &self.metrics
    }

    /// What was seen of `file_id`.
    pub fn file(&self, file_id: &FileId) -> Option<&FileSeen> {
        self.files.get(file_id)
    }

    /// Counts the payload of a message that arrived, and times a tracker's answer to a
    /// `Locate` (holders, or an error about the file).
    pub fn received(&mut self, message: &Message) {
        match message {
            Message::Data { bytes, .. } => {
                self.metrics.received_bytes.inc_by(bytes.len() as u64);
            }
            Message::Located { file_id, .. } | Message::Error { file_id: Some(file_id), .. } => {
                if let Some(sent) = self.locating.remove(file_id) {
                    self.metrics.locate_seconds.observe(sent.elapsed().as_secs_f64());
                }
            }
            _ => {}
        }
    }

    /// Counts a received block the machine kept (asked to write) for the file's rate.
    pub fn kept(&mut self, file_id: FileId, len_bytes: usize) {
        self.seen(file_id).down.add(Instant::now(), len_bytes as u64);
    }

    /// Counts the payload of a message handed to a connection.
    pub fn sent(&mut self, message: &Message) {
        if let Message::Data { file_id, bytes, .. } = message {
            self.metrics.sent_bytes.inc_by(bytes.len() as u64);
            self.seen(*file_id).up.add(Instant::now(), bytes.len() as u64);
        }
    }

    /// The number of open connections.
    pub fn connections(&self, count: usize) {
        self.metrics.connections.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Records what `event` tells.
    pub fn event(&mut self, event: &Event) {
        match event {
            Event::ChunkVerified { file_id, chunk, from, .. } => {
                self.metrics.chunks_verified.inc();
                let sources = &mut self.seen(*file_id).sources;
                if sources.len() <= chunk.as_usize() {
                    sources.resize(chunk.as_usize() + 1, None);
                }
                sources[chunk.as_usize()] = Some(*from);
            }
            Event::ChunkCorrupt { .. } => {
                self.metrics.chunks_corrupt.inc();
            }
            Event::PeerBanned { .. } => {
                self.metrics.peers_banned.inc();
            }
            Event::LocateSent { file_id } => {
                self.locating.insert(*file_id, Instant::now());
            }
            Event::Removed { file_id } => {
                self.files.remove(file_id);
                self.locating.remove(file_id);
            }
            _ => {}
        }
    }

    fn seen(&mut self, file_id: FileId) -> &mut FileSeen {
        self.files.entry(file_id).or_insert_with(|| {
            let now = Instant::now();
            FileSeen { sources: Vec::new(), down: Meter::new(now), up: Meter::new(now) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meter_measures_a_window_and_reads_zero_once_idle() {
        let start = Instant::now();
        let mut meter = Meter::new(start);
        meter.add(start + Duration::from_millis(500), 1000);
        assert_eq!(meter.bytes_per_s(start + Duration::from_millis(500)), 0, "no window closed yet");
        meter.add(start + Duration::from_secs(2), 3000);
        assert_eq!(meter.total_bytes, 4000);
        assert_eq!(meter.bytes_per_s(start + Duration::from_secs(2)), 2000);
        assert_eq!(meter.bytes_per_s(start + Duration::from_secs(6)), 0, "idle: nothing moves");
    }

    #[test]
    fn peer_metrics_encode_with_prometheus_names_and_units() {
        let metrics = Metrics::new(Role::Peer);
        metrics.received_bytes.inc_by(42);
        let text = metrics.encode();
        assert!(text.contains("\nswarm_received_bytes_total 42\n"), "{text}");
        assert!(text.contains("swarm_locate_duration_seconds_bucket"), "{text}");
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(!text.contains("tracker_files"), "a peer has no tracker families");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
