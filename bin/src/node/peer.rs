//! `p2p-node peer`: share files, download files, seed until told to stop.
//!
//! Start-up checks every `--share` can be read and a tracker answers as one (with several, a
//! `--tracker` that does not is named on stderr and retried in the background), then starts the
//! node (which locks the store and checks the output directory is writable): all before the
//! `listening on` line, each failure one clear error. Then it shares, serves again what the
//! store remembers, asks for the files, and follows the node's events: the stable lines of
//! `report.rs`, progress, which holders cannot be reached (`reach.rs`), failures. With `--http`
//! it serves the HTTP API, whose shares and downloads (`Job`s) the run follows as it follows
//! its own. With `--exit-when-done` it leaves once every `--get` is complete; otherwise on SIGINT/SIGTERM
//! (exit 130/143 while a download is unfinished). Leaving tells the tracker, waits briefly for
//! the connections to flush, and writes the downloads' verified pieces.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use p2p_core::limits::RECONNECT_DELAY_MAX;
use p2p_core::{Event, FileId};
use p2p_net::client;
use p2p_net::http::limits::EVENTS_BUFFERED_MAX;
use p2p_net::http::{serve_peer, HttpHandle, Job, PeerApi, Token};
use p2p_net::identity::Identity;
use p2p_net::node::IDENTITY_FILE_NAME;
use p2p_net::secure::{Keys, Trust};
use p2p_net::{spawn_peer, NetError, NodeEvent, PeerHandle, PeerOptions, Resumed, ShareOptions};
use tokio::sync::{broadcast, mpsc};

use crate::cli::PeerArgs;
use crate::progress::Progress;
use crate::reach::Reach;
use crate::report;
use crate::tools::{load_allow_list, load_swarm_key, Shutdown};
use crate::uploads::Uploads;

/// How often the reachability of holders is checked against the give-up time.
const REACH_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long leaving waits for the connections to flush and close.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a wanted file may stay unknown to the tracker before `--exit-when-done` gives up:
/// longer than the slowest reconnect, so a tracker that just restarted has heard the
/// re-announces of every live peer.
const FILE_UNKNOWN_GRACE: Duration = RECONNECT_DELAY_MAX.saturating_add(Duration::from_secs(1));

/// Runs the peer until it is done or told to stop.
pub async fn run(args: PeerArgs) -> anyhow::Result<()> {
    let mut shutdown = Shutdown::install()?;
    for path in &args.share {
        check_shareable(path).with_context(|| format!("cannot share {}", path.display()))?;
    }
    let keys = peer_keys(&args)?;
    let trackers = args.tracker_addrs();
    check_trackers(&trackers, &keys).await?;
    let stream = args.http.is_some().then(|| broadcast::channel(EVENTS_BUFFERED_MAX).0);
    report::publish_events(report::Events { json_lines: args.json, stream: stream.clone() });
    let (events_sender, mut events) = mpsc::unbounded_channel();
    let mut options = PeerOptions::new(trackers[0], args.store.clone());
    options.trackers.clone_from(&trackers);
    options.swarm_key = keys.swarm_key.clone();
    options.trust = (*keys.trust).clone();
    options.listen = args.listen;
    options.out_dir = args.out.clone().unwrap_or_else(|| args.store.clone());
    options.upload_limit_bytes_per_s = args.upload_limit;
    let peer = Arc::new(spawn_peer(options, events_sender).await.context("cannot start the peer")?);
    report::listening(peer.addr());
    warn_if_unreachable(peer.addr(), &trackers);
    let (jobs_sender, mut jobs) = mpsc::unbounded_channel();
    let http = match args.http {
        Some(listen) => Some(start_http(listen, &peer, &args, stream, jobs_sender)?),
        None => None,
    };
    let mut session = Session::new(args.exit_when_done, args.get.len(), &trackers);
    let started = tokio::select! {
        biased;
        signal = shutdown.wait() => Err(signal),
        started = start_jobs(&peer, &args, &mut session) => Ok(started),
    };
    let result = match started {
        Ok(Ok(())) => session.follow(&mut events, &mut jobs, &mut shutdown).await,
        Ok(Err(e)) => Err(e),
        Err(signal) => session.stopped_by(signal),
    };
    if let Some(http) = http {
        http.stop().await;
    }
    leave(&peer).await;
    if let Some(summary) = session.uploads.summary() {
        tracing::info!("{summary}");
    }
    result
}

/// The peer's own keys (its key pair in the store, made on first run), which its start-up
/// check of the trackers proves too, so a tracker's allow-list lets the check through as it
/// lets the peer; the swarm key, the allow-list and the pinned trackers' ids.
fn peer_keys(args: &PeerArgs) -> anyhow::Result<Keys> {
    let store = &args.store;
    let created = std::fs::create_dir_all(store).map_err(NetError::io("create the store directory", store));
    created.context("cannot start the peer")?;
    let identity = Identity::load_or_create(&store.join(IDENTITY_FILE_NAME)).context("cannot start the peer")?;
    let pinned = args.trackers.iter().filter_map(|tracker| Some((tracker.addr, tracker.pinned?))).collect();
    let trust = Trust { allow: load_allow_list(args.allow.as_deref())?, pinned };
    Ok(Keys { identity, swarm_key: load_swarm_key(args.swarm_key.as_deref())?, trust: Arc::new(trust) })
}

/// Every `--tracker` is checked at once. The peer starts as soon as one of them answers as a
/// tracker; each other one is named on stderr once its check fails (it may be down for now, and
/// is retried), also after the start: a silent tracker does not hold the start up.
async fn check_trackers(trackers: &[SocketAddr], keys: &Keys) -> anyhow::Result<()> {
    let (sender, mut verdicts) = mpsc::unbounded_channel();
    for (index, tracker) in trackers.iter().copied().enumerate() {
        let (keys, sender) = (keys.clone(), sender.clone());
        actix_rt::spawn(async move {
            // Nobody listens any more once the peer stopped.
            sender.send((index, client::check_tracker(tracker, &keys).await)).ok();
        });
    }
    drop(sender);
    let retrying = |error: p2p_net::NetError| tracing::warn!("--tracker: {error}; retrying it in the background");
    let mut failed = BTreeMap::new();
    while let Some((index, verdict)) = verdicts.recv().await {
        let Err(error) = verdict else {
            failed.into_values().for_each(retrying);
            actix_rt::spawn(async move {
                while let Some((_, verdict)) = verdicts.recv().await {
                    verdict.err().map(retrying);
                }
            });
            return Ok(());
        };
        failed.insert(index, error);
    }
    // `trackers` is not empty (clap requires one), so neither is `failed`.
    let first = failed.into_values().next().expect("one check per tracker");
    Err(anyhow::Error::new(first).context("--tracker"))
}

/// Serves the peer's HTTP API; its token comes from `--http-token-file`, else from the store
/// (created there on first run).
fn start_http(
    listen: SocketAddr,
    peer: &Arc<PeerHandle>,
    args: &PeerArgs,
    events: Option<broadcast::Sender<Arc<str>>>,
    jobs: mpsc::UnboundedSender<Job>,
) -> anyhow::Result<HttpHandle> {
    let token = match &args.http_token_file {
        Some(path) => Token::load(path),
        None => Token::load_or_create(&default_token_path(&args.store)),
    };
    let token = token.context("--http-token-file")?;
    let api = PeerApi { peer: peer.clone(), token: Some(token), events, jobs: Some(jobs) };
    let http = serve_peer(listen, api).context("cannot serve the HTTP API")?;
    report::http_on(http.addr());
    Ok(http)
}

/// Where a peer keeps its API token unless told otherwise.
fn default_token_path(store: &Path) -> PathBuf {
    store.join("http-token")
}

/// Shares every `--share` and asks for every `--get`.
async fn start_jobs(peer: &PeerHandle, args: &PeerArgs, session: &mut Session) -> anyhow::Result<()> {
    let options = ShareOptions {
        piece_size_bytes: args.piece_size,
        only_pieces: args.only_pieces.as_ref().map(|list| list.0.clone()),
    };
    for path in &args.share {
        // The error names the path.
        let manifest = peer.share(path, options.clone()).await.context("cannot share")?;
        session.shares.insert(manifest.file_id());
    }
    match peer.reseed().await {
        Ok(seeding) => session.seeding.extend(seeding),
        // Too many files for one peer, say: the downloads and shares of this run go on.
        Err(e) => tracing::warn!("cannot serve all the store remembers: {e}"),
    }
    for prefix in &args.get {
        let file_id = peer.resolve(prefix).await?;
        if let Some(path) = peer.find_whole(file_id).await? {
            // Downloaded by an earlier run (or shared): checked when the store served it again
            // (same size and modification time, or its pieces hashed again); or found in
            // `--out` and verified piece by piece.
            report::complete(file_id, &path);
            report::downloaded(file_id, 0, 0);
            session.gets_to_start -= 1;
            continue;
        }
        let resumed = peer.get(file_id).await.with_context(|| format!("cannot download {file_id}"))?;
        session.on_job(Job::Getting { file_id, resumed });
        session.gets_to_start -= 1;
    }
    Ok(())
}

/// A `--share` must be a regular file or a directory this process can read.
fn check_shareable(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path)?;
    let metadata = file.metadata()?;
    if metadata.is_dir() {
        std::fs::read_dir(path)?;
    } else if !metadata.is_file() {
        bail!("not a regular file or a directory");
    }
    Ok(())
}

/// Says at start when peers on other hosts cannot connect to this one: it listens on loopback
/// while a tracker is elsewhere, so that tracker hands out an address only this host reaches.
fn warn_if_unreachable(listen: SocketAddr, trackers: &[SocketAddr]) {
    let Some(tracker) = trackers.iter().find(|tracker| !tracker.ip().is_loopback()) else { return };
    if listen.ip().is_loopback() {
        tracing::warn!(
            "listening on {listen}, a loopback address, while the tracker {tracker} is on another host: \
             peers there cannot connect to this one (use --listen 0.0.0.0:PORT)"
        );
    }
}

/// Tells the tracker the peer leaves, closes the connections and writes the downloads' state.
async fn leave(peer: &PeerHandle) {
    // A peer that cannot flush in time exits anyway; the tracker expires it.
    tokio::time::timeout(LEAVE_TIMEOUT, peer.leave()).await.ok();
    peer.stop();
    if let Err(e) = peer.flush().await {
        eprintln!("{e}");
    }
}

/// What the running peer still waits for.
#[derive(Debug)]
struct Session {
    exit_when_done: bool,
    started: Instant,
    /// Shared files the tracker has not acknowledged yet.
    shares: BTreeSet<FileId>,
    /// Files the store remembered, not acknowledged by the tracker yet.
    seeding: BTreeSet<FileId>,
    /// Downloads not complete yet, with their pieces verified so far.
    gets: BTreeMap<FileId, Pieces>,
    /// `--get`s not handed to the node yet.
    gets_to_start: usize,
    progress: Progress,
    reach: Reach,
    uploads: Uploads,
    /// Downloads the tracker was said to know no holder of (said once until it knows one).
    said_unknown: BTreeSet<FileId>,
}

/// Verified and total pieces of a download (0/0 while its manifest is unknown).
#[derive(Clone, Copy, Debug, Default)]
struct Pieces {
    have: u32,
    total: u32,
    /// Bytes of the verified pieces.
    have_bytes: u64,
    /// Bytes of the pieces verified before this run (resumed from the store).
    start_have_bytes: u64,
}

impl Session {
    fn new(exit_when_done: bool, gets_to_start: usize, trackers: &[SocketAddr]) -> Session {
        Session {
            exit_when_done,
            started: Instant::now(),
            shares: BTreeSet::new(),
            seeding: BTreeSet::new(),
            gets: BTreeMap::new(),
            gets_to_start,
            progress: Progress::default(),
            reach: Reach::new(trackers),
            uploads: Uploads::default(),
            said_unknown: BTreeSet::new(),
        }
    }

    /// Follows the node's events until done (`--exit-when-done`), a signal, or a failure.
    async fn follow(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<NodeEvent>,
        jobs: &mut mpsc::UnboundedReceiver<Job>,
        shutdown: &mut Shutdown,
    ) -> anyhow::Result<()> {
        let mut check = tokio::time::interval(REACH_CHECK_INTERVAL);
        while !self.done() {
            tokio::select! {
                biased;
                signal = shutdown.wait() => return self.stopped_by(signal),
                // Before the events: a download is followed before its first event arrives.
                Some(job) = jobs.recv() => self.on_job(job),
                event = events.recv() => match event {
                    Some(event) => self.on_event(event)?,
                    None => bail!("the peer stopped unexpectedly"),
                },
                _ = check.tick() => self.check_reach()?,
            }
        }
        Ok(())
    }

    /// A signal stopped the peer: fine for a seeder, an interruption while downloads are
    /// unfinished.
    fn stopped_by(&self, signal: report::Signal) -> anyhow::Result<()> {
        if self.gets.is_empty() && self.gets_to_start == 0 {
            return Ok(());
        }
        let have = self.gets.values().map(|pieces| pieces.have).sum();
        let total = self.gets.values().map(|pieces| pieces.total).sum();
        Err(report::Interrupted { signal, have, total }.into())
    }

    /// Gives up a download whose holders have all been unreachable too long, when it must end.
    fn check_reach(&mut self) -> anyhow::Result<()> {
        if !self.exit_when_done {
            return Ok(());
        }
        match self.reach.given_up(Instant::now()) {
            Some((file_id, message)) => self.fail(file_id, message),
            None => Ok(()),
        }
    }

    /// A change made by the command line or through the API: follow it.
    fn on_job(&mut self, job: Job) {
        match job {
            Job::Getting { file_id, resumed } => self.getting(file_id, resumed),
            // A paused download makes no progress on purpose: its holders are not given up on.
            Job::Paused { file_id } => self.reach.finish(file_id),
            Job::Resumed { file_id } => self.reach.progress(file_id, Instant::now()),
            // Nothing is waited for any more: a removed download is neither done nor failed.
            Job::Removed { file_id } => {
                self.gets.remove(&file_id);
                self.shares.remove(&file_id);
                self.seeding.remove(&file_id);
                self.progress.finish(file_id);
                self.reach.finish(file_id);
            }
        }
    }

    /// A download started: follow it.
    fn getting(&mut self, file_id: FileId, resumed: Option<Resumed>) {
        let resumed = resumed.filter(|resumed| resumed.have > 0);
        if let Some(resumed) = resumed {
            report::resumed(file_id, resumed.have, resumed.total);
        }
        let pieces = resumed.map_or(Pieces::default(), |resumed| Pieces {
            have: resumed.have,
            total: resumed.total,
            have_bytes: resumed.have_bytes,
            start_have_bytes: resumed.have_bytes,
        });
        self.progress.start(file_id, pieces.start_have_bytes);
        self.gets.insert(file_id, pieces);
        self.reach.progress(file_id, Instant::now());
    }

    fn done(&self) -> bool {
        self.exit_when_done && self.shares.is_empty() && self.gets.is_empty()
    }

    fn on_event(&mut self, event: NodeEvent) -> anyhow::Result<()> {
        match event {
            NodeEvent::Machine(event) => self.on_machine_event(event),
            NodeEvent::Connected { addr } => {
                self.reach.connected(addr);
                Ok(())
            }
            NodeEvent::ConnectFailed { addr, reason } => {
                self.reach.failed(addr, reason);
                Ok(())
            }
            NodeEvent::Completed { file_id, path, received_bytes } => {
                if let Some(pieces) = self.gets.remove(&file_id) {
                    self.progress.finish(file_id);
                    self.reach.finish(file_id);
                    report::complete(file_id, &path);
                    let useful_bytes = pieces.have_bytes.saturating_sub(pieces.start_have_bytes);
                    report::downloaded(file_id, received_bytes, useful_bytes);
                }
                Ok(())
            }
        }
    }

    fn on_machine_event(&mut self, event: Event) -> anyhow::Result<()> {
        match event {
            Event::Sharing { file_id, name, pieces } if self.seeding.remove(&file_id) => {
                report::seeding(file_id, &name, pieces);
            }
            // A `--share`, or a share added through the API (which may be acknowledged before
            // its job is followed).
            Event::Sharing { file_id, name, pieces } => {
                self.shares.remove(&file_id);
                report::sharing(file_id, &name, pieces);
            }
            Event::ChunkVerified { file_id, progress, .. } => {
                if let Some(pieces) = self.gets.get_mut(&file_id) {
                    pieces.have = progress.have;
                    pieces.total = progress.total;
                    pieces.have_bytes = progress.have_bytes;
                    self.reach.progress(file_id, Instant::now());
                }
                self.progress.piece(file_id, &progress);
            }
            Event::DownloadFailed { file_id, reason } => {
                self.fail(file_id, format!("download of {file_id} failed: {reason}"))?;
            }
            Event::FileUnknown { file_id } => {
                let reason = format!("the tracker knows no peer sharing {file_id}");
                let waited_enough = self.started.elapsed() >= FILE_UNKNOWN_GRACE;
                if self.exit_when_done && waited_enough && self.gets.contains_key(&file_id) {
                    bail!(reason);
                }
                // With --exit-when-done, the error after the grace time says it.
                if !self.exit_when_done && self.said_unknown.insert(file_id) {
                    tracing::info!("{reason} yet; still asking");
                }
            }
            Event::Located { file_id, holders } => {
                if self.said_unknown.remove(&file_id) {
                    tracing::info!("the tracker knows holders of {file_id} now");
                }
                self.reach.located(file_id, holders.into_iter().flat_map(|(_, addrs)| addrs));
            }
            Event::ChunksMissing { file_id, chunks } => {
                let missing = report::count(chunks.len() as u32, "chunk");
                tracing::info!("no live peer holds {missing} of {file_id}; waiting for one");
            }
            Event::BlockServed { file_id, len, to, .. } => self.uploads.served(file_id, to, len),
            Event::TrackerLost { addr } => tracing::warn!("lost the tracker {addr}; reconnecting"),
            Event::PeerBanned { peer_id, addr } => tracing::warn!("banned peer {peer_id} at {addr}: it sent bad data"),
            _ => {}
        }
        Ok(())
    }

    /// A download cannot go on: the job fails with `--exit-when-done`, else the peer says so
    /// and keeps seeding.
    fn fail(&mut self, file_id: FileId, message: String) -> anyhow::Result<()> {
        if self.gets.remove(&file_id).is_none() {
            return Ok(());
        }
        self.progress.finish(file_id);
        self.reach.finish(file_id);
        if self.exit_when_done {
            bail!(message);
        }
        eprintln!("{message}");
        Ok(())
    }
}
