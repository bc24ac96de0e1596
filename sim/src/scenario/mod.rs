//! Scenario files: the TOML schema ([`ScenarioFile`], documented in `scenarios/README.md`) and
//! its validation into a checked [`Scenario`].
//!
//! This module owns every rule a scenario must obey (names unique and resolvable, pieces inside
//! the file, times finite and ordered, probabilities in range). A `Scenario` that exists has
//! passed them all, so the world never has to check a name or an index again. The raw form is
//! also `Serialize`, so a generated scenario (property tests) can be printed as a reproducer.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use p2p_core::limits::{ANNOUNCE_INTERVAL_DEFAULT, PIECES_MAX, TRACKERS_PER_PEER_MAX};
use p2p_core::manifest::check_piece_size;
use p2p_core::ManifestBuilder;
use p2p_core::Time;
use toml::Spanned;

use crate::error::ScenarioError;

mod file;

pub use file::{
    EventFile, ExpectFile, FileFile, HoldsFile, LinkFile, PeerFile, PieceItem, Role, ScenarioFile, StoryLevel,
    TrackerFile,
};

/// A node of the simulated world: index 0 is the first tracker, peer `i` of the scenario is
/// `i + 1`, and the other trackers come after the peers ([`Scenario::tracker_node`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeIdx(pub usize);

impl NodeIdx {
    /// The first tracker's index.
    pub const TRACKER: NodeIdx = NodeIdx(0);

    /// The node of the scenario's peer number `peer` (0-based).
    pub fn peer(peer: usize) -> NodeIdx {
        NodeIdx(peer + 1)
    }
}

// ---------------------------------------------------------------------------------------------
// Checked form.
// ---------------------------------------------------------------------------------------------

/// A validated scenario, ready to run.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Its title.
    pub name: String,
    /// The seed from the file (the command line may override it).
    pub seed: u64,
    /// When the run stops.
    pub end: Time,
    /// How much the story tells.
    pub story: StoryLevel,
    /// The tracker.
    pub tracker: TrackerSpec,
    /// The file.
    pub file: FileSpec,
    /// The peers; peer `i` is node `NodeIdx::peer(i)`.
    pub peers: Vec<PeerSpec>,
    /// Timed actions, in time order (ties keep file order).
    pub actions: Vec<Action>,
    /// What must hold at the end.
    pub expects: Vec<Expect>,
}

/// A node's link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkSpec {
    /// One-way latency.
    pub latency: Duration,
    /// Upper bound of the random extra delay per message.
    pub jitter: Duration,
    /// Uplink rate; `None` is unlimited.
    pub up_bytes_per_s: Option<u64>,
    /// Downlink rate; `None` is unlimited.
    pub down_bytes_per_s: Option<u64>,
    /// The standing queue in front of the uplink while it sends bulk data (see
    /// `crate::network`).
    pub queue: Duration,
    /// Loss probability per message, in `0.0..1.0`.
    pub loss: f64,
}

/// The trackers' settings.
#[derive(Clone, Copy, Debug)]
pub struct TrackerSpec {
    /// Announce interval.
    pub announce_interval: Duration,
    /// How many trackers run (at least 1, at most `TRACKERS_PER_PEER_MAX`).
    pub count: usize,
    /// Its link.
    pub link: LinkSpec,
}

/// The shared file.
#[derive(Clone, Debug)]
pub struct FileSpec {
    /// Its name.
    pub name: String,
    /// Its length.
    pub size_bytes: u64,
    /// Its piece size.
    pub piece_size_bytes: u32,
    /// Its number of pieces.
    pub piece_count: u32,
}

/// One peer.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    /// Its name.
    pub name: String,
    /// Pieces held at start.
    pub holds: BTreeSet<u32>,
    /// Whether it downloads.
    pub wants: bool,
    /// Upload cap.
    pub upload_limit_bytes_per_s: Option<u64>,
    /// How it behaves as a sender.
    pub role: Role,
    /// Its link.
    pub link: LinkSpec,
}

/// A timed action.
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    /// When.
    pub at: Time,
    /// What.
    pub kind: ActionKind,
}

/// What a timed action does.
#[derive(Clone, Debug, PartialEq)]
pub enum ActionKind {
    /// A peer starts.
    Join(NodeIdx),
    /// A peer leaves politely.
    Leave(NodeIdx),
    /// A peer crashes.
    Crash(NodeIdx),
    /// A crashed peer restarts.
    Restart(NodeIdx),
    /// A peer's copies of these pieces go bad.
    Corrupt(NodeIdx, Vec<u32>),
    /// These nodes are cut off from the rest.
    Partition(Vec<NodeIdx>),
    /// Partitions end.
    Heal,
    /// The tracker restarts empty.
    TrackerRestart,
    /// A tracker stops.
    TrackerStop(NodeIdx),
    /// A stopped tracker starts again, empty.
    TrackerStart(NodeIdx),
}

/// A checked expectation.
#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
    /// These peers complete, by the deadline if any, and within the duration of their first
    /// join if any.
    Completes(Vec<NodeIdx>, Option<Time>, Option<Duration>),
    /// These peers do not complete.
    Incomplete(Vec<NodeIdx>),
    /// `(peer, piece, from)`.
    PieceFrom(NodeIdx, u32, NodeIdx),
    /// `(peer, banned)`.
    Banned(NodeIdx, NodeIdx),
    /// `(peer, missing pieces)`.
    Missing(NodeIdx, Vec<u32>),
    /// `(peer, copies of the file)`.
    UploadedAtMost(NodeIdx, f64),
    /// `(peer, those that uploaded more)`.
    UploadedLess(NodeIdx, Vec<NodeIdx>),
    /// Every downloader completes within `factor` × T_min of its join, the median within
    /// `p50_factor` × T_min.
    WithinBound {
        /// Last completion, in units of T_min.
        factor: f64,
        /// Median completion, in units of T_min.
        p50_factor: Option<f64>,
    },
    /// `(peers, copies of the file)`: each received at most that much.
    DownloadedAtMost(Vec<NodeIdx>, f64),
    /// Nobody banned any of these peers.
    NotBanned(Vec<NodeIdx>),
    /// Every tracker kept each of these flooders within its address's quota, and refused part
    /// of its flood.
    TrackerBounded(Vec<NodeIdx>),
    /// At least this fraction of the seeders' upload was useful.
    SeederUseful(f64),
}

const LATENCY_MS_DEFAULT: f64 = 20.0;
const ANNOUNCE_INTERVAL_S_MIN: f64 = 0.1;
const PEERS_MAX: usize = 100_000;
/// Peers above which the story defaults to milestones.
const STORY_PIECES_PEERS_MAX: usize = 12;

impl Scenario {
    /// The node of tracker number `number` (0-based): the first is node 0, the others follow
    /// the peers.
    pub fn tracker_node(&self, number: usize) -> NodeIdx {
        tracker_node(number, self.peers.len())
    }

    /// Which tracker `node` is (0-based), if it is one.
    pub fn tracker_number(&self, node: NodeIdx) -> Option<usize> {
        match node.0 {
            0 => Some(0),
            i if i > self.peers.len() && i - self.peers.len() < self.tracker.count => Some(i - self.peers.len()),
            _ => None,
        }
    }

    /// Every node of the world: the trackers and the peers.
    pub fn node_count(&self) -> usize {
        1 + self.peers.len() + self.tracker.count - 1
    }

    /// Reads, parses and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ScenarioError::Read { path: path.to_owned(), source })?;
        Scenario::parse(path, &text)
    }

    /// Parses and validates scenario text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
        let file: ScenarioFile = toml::from_str(text).map_err(|e| {
            let start = e.span().map_or(0, |span| span.start);
            let (line, column) = line_column(text, start);
            ScenarioError::Syntax { path: path.to_owned(), line, column, message: e.message().to_owned() }
        })?;
        let stem = path.file_stem().map_or_else(|| "scenario".to_owned(), |s| s.to_string_lossy().into_owned());
        Checker { path, text }.check(file, stem)
    }

    /// Validates an in-memory scenario (the property tests build these).
    pub fn from_file(file: ScenarioFile) -> Result<Scenario, ScenarioError> {
        Checker { path: Path::new("<generated>"), text: "" }.check(file, "generated".to_owned())
    }
}

/// The node of tracker number `number` among `peer_count` peers.
fn tracker_node(number: usize, peer_count: usize) -> NodeIdx {
    if number == 0 {
        NodeIdx::TRACKER
    } else {
        NodeIdx(peer_count + number)
    }
}

/// The name of tracker number `number` (0-based): `tracker`, `tracker2`, ….
pub fn tracker_name(number: usize) -> String {
    if number == 0 {
        "tracker".to_owned()
    } else {
        format!("tracker{}", number + 1)
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, column)
}

/// Validation with the file's path and text at hand, for error positions.
struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
}

/// Name → node, built once the peers are known.
type Names = BTreeMap<String, NodeIdx>;

impl Checker<'_> {
    fn check(&self, file: ScenarioFile, stem: String) -> Result<Scenario, ScenarioError> {
        let end = self.time(file.end_s, self.key_span("end_s"), "end_s")?;
        let defaults = self.link(&file.network, &default_link(), self.key_span("[network]"))?;
        let tracker = self.tracker(&file.tracker, &defaults)?;
        let spec = self.file(&file.file)?;
        let (peers, mut actions) = self.peers(&file.peers, &defaults, &spec)?;
        let names = names(&peers);
        for event in &file.events {
            actions.push(self.event(event.get_ref(), event.span(), &names, (&spec, &tracker))?);
        }
        actions.sort_by_key(|a| a.at);
        let expects = file
            .expects
            .iter()
            .map(|e| self.expect(e.get_ref(), e.span(), &names, &peers, &spec))
            .collect::<Result<_, _>>()?;
        let story = file.story.unwrap_or(if peers.len() <= STORY_PIECES_PEERS_MAX {
            StoryLevel::Pieces
        } else {
            StoryLevel::Milestones
        });
        let scenario = Scenario {
            name: file.name.unwrap_or(stem),
            seed: file.seed,
            end,
            story,
            tracker,
            file: spec,
            peers,
            actions,
            expects,
        };
        let within_bound = file.expects.iter().find(|e| matches!(e.get_ref(), ExpectFile::WithinBound { .. }));
        if let Some(expect) = within_bound {
            if let Err(why) = crate::efficiency::bound(&scenario) {
                return Err(self.invalid(expect.span(), format!("within-bound: this scenario has no bound: {why}")));
            }
        }
        Ok(scenario)
    }

    fn invalid(&self, span: Range<usize>, message: impl Into<String>) -> ScenarioError {
        let line = if span == (0..0) { 0 } else { line_column(self.text, span.start).0 };
        ScenarioError::Invalid { path: PathBuf::from(self.path), line, message: message.into() }
    }

    /// The first line starting with `key` (a top-level key or a table header), for errors
    /// about values the TOML parser gives no position for.
    fn key_span(&self, key: &str) -> Range<usize> {
        let mut offset = 0;
        for line in self.text.split_inclusive('\n') {
            if line.trim_start().starts_with(key) {
                return offset..offset + line.len();
            }
            offset += line.len();
        }
        0..0
    }

    fn time(&self, seconds: f64, span: Range<usize>, key: &str) -> Result<Time, ScenarioError> {
        if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
            return Err(self.invalid(span, format!("{key} = {seconds}: a time is seconds from 0 to 1e9")));
        }
        // Checked finite and in range just above, so the cast cannot saturate.
        Ok(Time::from_micros((seconds * 1e6).round() as u64))
    }

    fn millis(&self, millis: f64, span: Range<usize>, key: &str) -> Result<Duration, ScenarioError> {
        self.time(millis / 1000.0, span, key).map(Time::elapsed)
    }

    fn link(&self, raw: &LinkFile, base: &LinkSpec, span: Range<usize>) -> Result<LinkSpec, ScenarioError> {
        let mut link = *base;
        if let Some(ms) = raw.latency_ms {
            link.latency = self.millis(ms, span.clone(), "latency_ms")?;
        }
        if let Some(ms) = raw.jitter_ms {
            link.jitter = self.millis(ms, span.clone(), "jitter_ms")?;
        }
        if let Some(ms) = raw.queue_ms {
            link.queue = self.millis(ms, span.clone(), "queue_ms")?;
        }
        if let Some(loss) = raw.loss {
            if !(0.0..1.0).contains(&loss) {
                return Err(self.invalid(span, format!("loss = {loss}: must be at least 0 and below 1")));
            }
            link.loss = loss;
        }
        for rate in [raw.up_bytes_per_s, raw.down_bytes_per_s].into_iter().flatten() {
            if rate == 0 {
                return Err(self.invalid(span, "a link rate must be positive (omit it for unlimited)"));
            }
        }
        link.up_bytes_per_s = raw.up_bytes_per_s.or(base.up_bytes_per_s);
        link.down_bytes_per_s = raw.down_bytes_per_s.or(base.down_bytes_per_s);
        Ok(link)
    }

    fn tracker(&self, raw: &TrackerFile, defaults: &LinkSpec) -> Result<TrackerSpec, ScenarioError> {
        let announce_interval = match raw.announce_interval_s {
            Some(s) if s < ANNOUNCE_INTERVAL_S_MIN => {
                return Err(self.invalid(
                    self.key_span("[tracker]"),
                    format!("announce_interval_s = {s}: at least {ANNOUNCE_INTERVAL_S_MIN}"),
                ))
            }
            Some(s) => self.time(s, self.key_span("[tracker]"), "announce_interval_s")?.elapsed(),
            None => ANNOUNCE_INTERVAL_DEFAULT,
        };
        let count = raw.count.unwrap_or(1);
        if !(1..=TRACKERS_PER_PEER_MAX).contains(&count) {
            let message = format!("[tracker] count = {count}: 1 to {TRACKERS_PER_PEER_MAX}");
            return Err(self.invalid(self.key_span("[tracker]"), message));
        }
        Ok(TrackerSpec { announce_interval, count, link: self.link(&raw.link, defaults, self.key_span("[tracker]"))? })
    }

    fn file(&self, raw: &FileFile) -> Result<FileSpec, ScenarioError> {
        let piece_size_bytes = check_piece_size(raw.piece_size_bytes)
            .map_err(|e| self.invalid(self.key_span("[file]"), format!("[file] {e}")))?;
        let piece_count = raw.size_bytes.div_ceil(u64::from(piece_size_bytes));
        if raw.size_bytes == 0 || piece_count > u64::from(PIECES_MAX) {
            return Err(
                self.invalid(self.key_span("[file]"), format!("[file] size_bytes must give 1 to {PIECES_MAX} pieces"))
            );
        }
        // piece_count <= PIECES_MAX, a u32.
        let piece_count = piece_count as u32;
        let name = raw.name.clone().unwrap_or_else(|| "file.bin".to_owned());
        ManifestBuilder::new(name.clone(), piece_size_bytes)
            .map_err(|e| self.invalid(self.key_span("[file]"), format!("[file] {e}")))?;
        Ok(FileSpec { name, size_bytes: raw.size_bytes, piece_size_bytes, piece_count })
    }

    fn peers(
        &self,
        raw: &[Spanned<PeerFile>],
        defaults: &LinkSpec,
        file: &FileSpec,
    ) -> Result<(Vec<PeerSpec>, Vec<Action>), ScenarioError> {
        let mut peers = Vec::new();
        let mut actions = Vec::new();
        let mut seen = BTreeSet::new();
        for entry in raw {
            let (peer, span) = (entry.get_ref(), entry.span());
            let count = peer.count.unwrap_or(1);
            if peer.name.is_empty()
                || peer.name.starts_with("tracker")
                || peer.name.contains(['*', ' ', '@'])
                || count == 0
            {
                return Err(self.invalid(span, format!("peer name {:?} (count {count}) is not allowed", peer.name)));
            }
            let holds = match &peer.holds {
                None => BTreeSet::new(),
                Some(holds) => self.holds(holds, file, span.clone())?,
            };
            let wants = peer.wants.unwrap_or(holds.len() < file.piece_count as usize);
            let link = self.link(&peer.link, defaults, span.clone())?;
            let spread = peer.join_spread_s.map(|s| self.time(s, span.clone(), "join_spread_s")).transpose()?;
            let spread = spread.map_or(Duration::ZERO, Time::elapsed);
            for i in 1..=count {
                let name = if peer.count.is_some() { format!("{}{i}", peer.name) } else { peer.name.clone() };
                if !seen.insert(name.clone()) || peers.len() >= PEERS_MAX {
                    return Err(self.invalid(span, format!("peer {name:?} is named twice (or over {PEERS_MAX} peers)")));
                }
                let node = NodeIdx::peer(peers.len());
                let late = spread.mul_f64(f64::from(i - 1) / f64::from(count.max(2) - 1));
                actions.extend(self.peer_actions(peer, node, late, span.clone())?);
                let (upload_limit_bytes_per_s, role) = (peer.upload_limit_bytes_per_s, peer.role.unwrap_or_default());
                peers.push(PeerSpec { name, holds: holds.clone(), wants, upload_limit_bytes_per_s, role, link });
            }
        }
        Ok((peers, actions))
    }

    /// The actions of `peer` as `node`, its join `late` after its `join_s`.
    fn peer_actions(
        &self,
        peer: &PeerFile,
        node: NodeIdx,
        late: Duration,
        span: Range<usize>,
    ) -> Result<Vec<Action>, ScenarioError> {
        let at = |s: Option<f64>, key| s.map(|s| self.time(s, span.clone(), key)).transpose();
        let join = at(peer.join_s, "join_s")?.unwrap_or(Time::ZERO) + late;
        let mut actions = vec![Action { at: join, kind: ActionKind::Join(node) }];
        if let Some(leave) = at(peer.leave_s, "leave_s")? {
            actions.push(Action { at: leave, kind: ActionKind::Leave(node) });
        }
        let crash = at(peer.crash_s, "crash_s")?;
        let restart = at(peer.restart_s, "restart_s")?;
        match (crash, restart) {
            (None, Some(_)) => return Err(self.invalid(span, "restart_s needs a crash_s before it")),
            (Some(c), Some(r)) if r <= c => return Err(self.invalid(span, "restart_s must come after crash_s")),
            _ => {}
        }
        actions.extend(crash.map(|at| Action { at, kind: ActionKind::Crash(node) }));
        actions.extend(restart.map(|at| Action { at, kind: ActionKind::Restart(node) }));
        Ok(actions)
    }

    fn holds(&self, raw: &HoldsFile, file: &FileSpec, span: Range<usize>) -> Result<BTreeSet<u32>, ScenarioError> {
        match raw {
            HoldsFile::Word(word) if word == "all" => Ok((0..file.piece_count).collect()),
            HoldsFile::Word(word) if word == "none" => Ok(BTreeSet::new()),
            HoldsFile::Word(word) => self.pieces(&[PieceItem::Range(word.clone())], file, span),
            HoldsFile::List(items) => self.pieces(items, file, span),
        }
    }

    fn pieces(&self, items: &[PieceItem], file: &FileSpec, span: Range<usize>) -> Result<BTreeSet<u32>, ScenarioError> {
        let mut pieces = BTreeSet::new();
        for item in items {
            let (first, last) = match item {
                PieceItem::Index(i) => (*i, *i),
                PieceItem::Range(text) => parse_range(text)
                    .ok_or_else(|| self.invalid(span.clone(), format!("{text:?} is not a piece or an a-b range")))?,
            };
            if first > last || last >= file.piece_count {
                let count = file.piece_count;
                return Err(self.invalid(span, format!("pieces {first}-{last} do not fit a file of {count} pieces")));
            }
            pieces.extend(first..=last);
        }
        Ok(pieces)
    }

    fn node(&self, names: &Names, name: &str, span: &Range<usize>) -> Result<NodeIdx, ScenarioError> {
        names.get(name).copied().ok_or_else(|| self.invalid(span.clone(), format!("no peer is called {name:?}")))
    }

    fn event(
        &self,
        raw: &EventFile,
        span: Range<usize>,
        names: &Names,
        (file, trackers): (&FileSpec, &TrackerSpec),
    ) -> Result<Action, ScenarioError> {
        let peer = |name: &str| self.node(names, name, &span);
        let peer_count = names.len();
        let tracker = |name: Option<&str>| {
            let name = name.unwrap_or("tracker");
            let number = (0..trackers.count).find(|&n| tracker_name(n) == name);
            number.map(|n| tracker_node(n, peer_count)).ok_or_else(|| {
                self.invalid(
                    span.clone(),
                    format!("no tracker is called {name:?} ([tracker] count = {})", trackers.count),
                )
            })
        };
        let (at_s, kind) = match raw {
            EventFile::Join { at_s, peer: p } => (at_s, ActionKind::Join(peer(p)?)),
            EventFile::Leave { at_s, peer: p } => (at_s, ActionKind::Leave(peer(p)?)),
            EventFile::Crash { at_s, peer: p } => (at_s, ActionKind::Crash(peer(p)?)),
            EventFile::Restart { at_s, peer: p } => (at_s, ActionKind::Restart(peer(p)?)),
            EventFile::Corrupt { at_s, peer: p, pieces } => {
                let pieces = self.pieces(pieces, file, span.clone())?.into_iter().collect();
                (at_s, ActionKind::Corrupt(peer(p)?, pieces))
            }
            EventFile::Partition { at_s, nodes } => {
                let nodes = nodes
                    .iter()
                    .map(|n| if n.starts_with("tracker") { tracker(Some(n)) } else { peer(n) })
                    .collect::<Result<_, _>>()?;
                (at_s, ActionKind::Partition(nodes))
            }
            EventFile::Heal { at_s } => (at_s, ActionKind::Heal),
            EventFile::TrackerRestart { at_s } => (at_s, ActionKind::TrackerRestart),
            EventFile::TrackerStop { at_s, tracker: t } => (at_s, ActionKind::TrackerStop(tracker(t.as_deref())?)),
            EventFile::TrackerStart { at_s, tracker: t } => (at_s, ActionKind::TrackerStart(tracker(t.as_deref())?)),
        };
        Ok(Action { at: self.time(*at_s, span, "at_s")?, kind })
    }

    fn expect(
        &self,
        raw: &ExpectFile,
        span: Range<usize>,
        names: &Names,
        peers: &[PeerSpec],
        file: &FileSpec,
    ) -> Result<Expect, ScenarioError> {
        let one = |name: &str| self.node(names, name, &span);
        let many = |list: &[String]| self.select(list, names, peers, &span);
        Ok(match raw {
            ExpectFile::Completes { peers: list, by_s, within_s } => {
                let by = by_s.map(|s| self.time(s, span.clone(), "by_s")).transpose()?;
                let within = within_s.map(|s| self.time(s, span.clone(), "within_s")).transpose()?;
                Expect::Completes(many(list)?, by, within.map(Time::elapsed))
            }
            ExpectFile::WithinBound { factor, p50_factor } => {
                for (key, value) in [("factor", Some(*factor)), ("p50_factor", *p50_factor)] {
                    self.factor(value, key, &span)?;
                }
                Expect::WithinBound { factor: *factor, p50_factor: *p50_factor }
            }
            ExpectFile::DownloadedAtMost { peers: list, copies } => {
                if !copies.is_finite() || *copies <= 0.0 {
                    return Err(self.invalid(span, format!("copies = {copies}: a positive number of file sizes")));
                }
                Expect::DownloadedAtMost(many(list)?, *copies)
            }
            ExpectFile::NotBanned { peers: list } => Expect::NotBanned(many(list)?),
            ExpectFile::TrackerBounded { peers: list } => {
                let flooders = many(list)?;
                if let Some(other) = flooders.iter().find(|p| peers[p.0 - 1].role != Role::TrackerFlooder) {
                    let detail = format!("tracker-bounded: {} is no tracker-flooder", peers[other.0 - 1].name);
                    return Err(self.invalid(span, detail));
                }
                Expect::TrackerBounded(flooders)
            }
            ExpectFile::SeederUseful { at_least } => {
                if !(0.0..=1.0).contains(at_least) {
                    return Err(self.invalid(span, format!("at_least = {at_least}: a fraction from 0 to 1")));
                }
                if !peers.iter().any(|p| crate::efficiency::is_seeder(p, file)) {
                    return Err(self.invalid(span, "seeder-useful: no peer seeds the whole file from the start"));
                }
                Expect::SeederUseful(*at_least)
            }
            ExpectFile::Incomplete { peers: list } => Expect::Incomplete(many(list)?),
            ExpectFile::PieceFrom { peer, piece, from } => {
                if *piece >= file.piece_count {
                    return Err(self.invalid(span, format!("piece {piece} is past the end of the file")));
                }
                Expect::PieceFrom(one(peer)?, *piece, one(from)?)
            }
            ExpectFile::Banned { peer, banned } => Expect::Banned(one(peer)?, one(banned)?),
            ExpectFile::Missing { peer, pieces } => {
                Expect::Missing(one(peer)?, self.pieces(pieces, file, span.clone())?.into_iter().collect())
            }
            ExpectFile::UploadedAtMost { peer, copies } => Expect::UploadedAtMost(one(peer)?, *copies),
            ExpectFile::UploadedLess { peer, than } => Expect::UploadedLess(one(peer)?, many(than)?),
        })
    }

    /// A `within-bound` factor: T_min is a lower bound, so a factor below 1 could never hold.
    fn factor(&self, value: Option<f64>, key: &str, span: &Range<usize>) -> Result<(), ScenarioError> {
        match value {
            Some(k) if !k.is_finite() || k < 1.0 => {
                Err(self.invalid(span.clone(), format!("{key} = {k}: at least 1 (T_min is a lower bound)")))
            }
            _ => Ok(()),
        }
    }

    /// Resolves a peer list with `*` (every downloader) and `prefix*` patterns.
    fn select(
        &self,
        list: &[String],
        names: &Names,
        peers: &[PeerSpec],
        span: &Range<usize>,
    ) -> Result<Vec<NodeIdx>, ScenarioError> {
        let mut chosen = BTreeSet::new();
        for pattern in list {
            if pattern == "*" {
                chosen.extend(peers.iter().enumerate().filter(|(_, p)| p.wants).map(|(i, _)| NodeIdx::peer(i)));
            } else if let Some(prefix) = pattern.strip_suffix('*') {
                let before = chosen.len();
                chosen.extend(
                    names.range(prefix.to_owned()..).take_while(|(n, _)| n.starts_with(prefix)).map(|(_, i)| *i),
                );
                if chosen.len() == before {
                    return Err(self.invalid(span.clone(), format!("no peer name starts with {prefix:?}")));
                }
            } else {
                chosen.insert(self.node(names, pattern, span)?);
            }
        }
        Ok(chosen.into_iter().collect())
    }
}

fn default_link() -> LinkSpec {
    LinkSpec {
        latency: Duration::from_secs_f64(LATENCY_MS_DEFAULT / 1000.0),
        jitter: Duration::ZERO,
        up_bytes_per_s: None,
        down_bytes_per_s: None,
        queue: Duration::ZERO,
        loss: 0.0,
    }
}

fn names(peers: &[PeerSpec]) -> Names {
    peers.iter().enumerate().map(|(i, p)| (p.name.clone(), NodeIdx::peer(i))).collect()
}

/// `"a-b"` or `"a"`.
fn parse_range(text: &str) -> Option<(u32, u32)> {
    match text.split_once('-') {
        Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
        None => text.trim().parse().ok().map(|a| (a, a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "end_s = 10\n[file]\nsize_bytes = 65536\npiece_size_bytes = 16384\n";

    fn parse(extra: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(Path::new("t.toml"), &format!("{BASE}{extra}"))
    }

    #[test]
    fn holdings_accept_all_lists_and_ranges() {
        let s = parse("[[peer]]\nname = \"A\"\nholds = \"all\"\n[[peer]]\nname = \"B\"\nholds = [0, \"2-3\"]\n")
            .expect("valid scenario");
        assert_eq!(s.peers[0].holds.len(), 4);
        assert!(!s.peers[0].wants);
        assert_eq!(s.peers[1].holds.iter().copied().collect::<Vec<_>>(), vec![0, 2, 3]);
        assert!(s.peers[1].wants);
    }

    #[test]
    fn counted_peers_expand_and_patterns_select_them() {
        let s = parse("[[peer]]\nname = \"L\"\ncount = 3\n[[expect]]\ncheck = \"completes\"\npeers = [\"L*\"]\n")
            .expect("valid scenario");
        assert_eq!(s.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["L1", "L2", "L3"]);
        assert_eq!(s.expects[0], Expect::Completes(vec![NodeIdx(1), NodeIdx(2), NodeIdx(3)], None, None));
    }

    #[test]
    fn counted_peers_join_spread_evenly_over_their_spread_in_name_order() {
        let s = parse("[[peer]]\nname = \"L\"\ncount = 3\njoin_s = 1\njoin_spread_s = 0.03\n").expect("valid scenario");
        let joins: Vec<(Time, ActionKind)> = s.actions.iter().map(|a| (a.at, a.kind.clone())).collect();
        let expected = [(1000, 1), (1015, 2), (1030, 3)];
        assert_eq!(joins, expected.map(|(ms, node)| (Time::from_millis(ms), ActionKind::Join(NodeIdx(node)))));
    }

    #[test]
    fn several_trackers_follow_the_peers_and_are_named_by_tracker_events() {
        let two = "[tracker]\ncount = 2\n[[peer]]\nname = \"A\"\n[[peer]]\nname = \"B\"\n";
        let stop = |name: &str| format!("{two}[[event]]\ndo = \"tracker-stop\"\nat_s = 1\ntracker = \"{name}\"\n");
        let s = parse(&stop("tracker2")).expect("valid scenario");
        assert_eq!(s.tracker_node(1), NodeIdx(3), "after the tracker and the two peers");
        assert_eq!((s.tracker_number(NodeIdx(3)), s.tracker_number(NodeIdx(2))), (Some(1), None));
        assert_eq!(s.actions.last().map(|a| &a.kind), Some(&ActionKind::TrackerStop(NodeIdx(3))));
        let err = parse(&stop("tracker3")).expect_err("only two trackers");
        assert!(err.to_string().contains("no tracker is called \"tracker3\""), "{err}");
        let err = parse("[tracker]\ncount = 9\n").expect_err("more trackers than a peer keeps");
        assert!(err.to_string().contains("count = 9"), "{err}");
        let err = parse("[[peer]]\nname = \"tracker\"\ncount = 2\n").expect_err("a peer named like a tracker");
        assert!(err.to_string().contains("is not allowed"), "{err}");
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("[[peer]]\nname = \"A\"\nholds = [9]\n").expect_err("piece 9 is out of range");
        assert!(matches!(err, ScenarioError::Invalid { line: 5, .. }), "{err}");
        let err = parse("[[peer]]\nname = \"A\"\nbogus = 1\n").expect_err("unknown key");
        assert!(matches!(err, ScenarioError::Syntax { line: 5..=7, .. }), "{err}");
        let err = parse("[[event]]\ndo = \"crash\"\nat_s = 1\npeer = \"Z\"\n").expect_err("unknown peer");
        assert!(err.to_string().contains("\"Z\""), "{err}");
        let bad_name = BASE.replace("[file]", "[file]\nname = \"../x\"");
        let err = Scenario::parse(Path::new("t.toml"), &bad_name).expect_err("unsafe file name");
        assert!(err.to_string().starts_with("t.toml:2: [file] unsafe"), "{err}");
    }

    #[test]
    fn efficiency_expectations_are_validated() {
        let crowd = "[network]\nup_bytes_per_s = 1000\n[[peer]]\nname = \"S\"\nholds = \"all\"\n\
                     [[peer]]\nname = \"L\"\ncount = 2\n";
        let ok = parse(&format!("{crowd}[[expect]]\ncheck = \"within-bound\"\nfactor = 1.3\np50_factor = 1.1\n"))
            .expect("a flash crowd has a bound");
        assert_eq!(ok.expects[0], Expect::WithinBound { factor: 1.3, p50_factor: Some(1.1) });
        let err = parse(&format!("{crowd}[[expect]]\ncheck = \"within-bound\"\nfactor = 1.3\np50_factor = 0.9\n"))
            .expect_err("below the lower bound");
        assert!(err.to_string().contains("p50_factor = 0.9: at least 1"), "{err}");
        let partial = "[[peer]]\nname = \"A\"\nholds = [0]\n[[peer]]\nname = \"L\"\n\
                       [[expect]]\ncheck = \"within-bound\"\nfactor = 2\n";
        let err = parse(partial).expect_err("no bound with a partial holder");
        assert!(err.to_string().contains("no bound: A holds part of the file"), "{err}");
        let err = parse(&format!("{crowd}[[expect]]\ncheck = \"downloaded-at-most\"\npeers = [\"*\"]\ncopies = 0\n"))
            .expect_err("zero copies");
        assert!(err.to_string().contains("copies = 0"), "{err}");
        let err = parse(partial.replace("within-bound\"\nfactor = 2", "seeder-useful\"\nat_least = 0.9").as_str())
            .expect_err("nobody seeds the whole file");
        assert!(err.to_string().contains("seeder-useful: no peer seeds"), "{err}");
        let s = parse(&format!(
            "{crowd}[[expect]]\ncheck = \"not-banned\"\npeers = [\"L*\"]\n\
             [[expect]]\ncheck = \"completes\"\npeers = [\"L1\"]\nwithin_s = 2.5\n"
        ))
        .expect("valid");
        assert_eq!(s.expects[0], Expect::NotBanned(vec![NodeIdx(2), NodeIdx(3)]));
        assert_eq!(s.expects[1], Expect::Completes(vec![NodeIdx(2)], None, Some(Duration::from_millis(2500))));
    }

    #[test]
    fn tracker_bounded_names_only_tracker_flooders() {
        let peers = "[[peer]]\nname = \"S\"\nholds = \"all\"\n\
                     [[peer]]\nname = \"F\"\nrole = \"tracker-flooder\"\nwants = false\n";
        let s = parse(&format!("{peers}[[expect]]\ncheck = \"tracker-bounded\"\npeers = [\"F\"]\n")).expect("valid");
        assert_eq!(s.expects[0], Expect::TrackerBounded(vec![NodeIdx(2)]));
        let err = parse(&format!("{peers}[[expect]]\ncheck = \"tracker-bounded\"\npeers = [\"S\"]\n"))
            .expect_err("S floods nothing");
        assert!(err.to_string().contains("S is no tracker-flooder"), "{err}");
    }

    #[test]
    fn generated_scenarios_round_trip_through_toml() {
        let s = parse("[[peer]]\nname = \"A\"\nholds = \"0-1\"\nlatency_ms = 5\n").expect("valid scenario");
        assert_eq!(s.peers[0].link.latency, Duration::from_millis(5));
        let raw: ScenarioFile = toml::from_str(&format!("{BASE}[[peer]]\nname = \"A\"\n")).expect("parses");
        let text = toml::to_string(&raw).expect("serializes");
        assert!(Scenario::parse(Path::new("x"), &text).is_ok(), "{text}");
    }
}
