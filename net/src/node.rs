//! The public way to run nodes: [`spawn_tracker`] and [`spawn_peer`], and the handles they
//! return. Any number of trackers and peers can run in one process (one actix system).
//!
//! A tracker is given its keys; a peer keeps its key pair in its store ([`IDENTITY_FILE_NAME`],
//! created on its first run), so its peer id stays the same from run to run.
//!
//! Both functions must be called from inside a running actix system. A peer's slow set-up work
//! (describing a shared file, re-hashing a resumed download) runs on worker threads before the
//! resulting command reaches the machine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use p2p_core::limits::{ANNOUNCE_INTERVAL_DEFAULT, TRACKERS_PER_PEER_MAX};
use p2p_core::{
    Bitfield, Command, Described, FileId, FileIdPrefix, IdError, Machine, Manifest, Peer, PeerConfig, PeerId, Tracker,
    TrackerConfig,
};
use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::client::{first_answer, list_files, locate_manifest};
use crate::driver::{Driver, DriverView, EventSink, Inspect, Leave, Local, NodeEvent, Stop};
use crate::error::NetError;
use crate::hasher::describe;
use crate::identity::{Identity, SwarmKey};
use crate::secure::{Keys, Trust};
use crate::store::{Reused, Store};
use crate::watch::{Metrics, Role};

/// How long [`PeerHandle::remove`] waits for the store work in flight for the file.
pub const REMOVAL_WAIT_MAX: Duration = Duration::from_secs(60);
/// How often [`PeerHandle::remove`] looks whether that work is done.
const REMOVAL_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The file in a peer's store that holds its key pair.
pub const IDENTITY_FILE_NAME: &str = "node.key";

/// A running tracker.
#[derive(Debug)]
pub struct TrackerHandle {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    driver: Addr<Driver<Tracker>>,
}

/// How to start a peer; see [`PeerOptions::new`] for the defaults.
#[derive(Clone, Debug)]
pub struct PeerOptions {
    /// The trackers' addresses (1 to `TRACKERS_PER_PEER_MAX`).
    pub trackers: Vec<SocketAddr>,
    /// Where to accept peer connections (port 0: any free port).
    pub listen: SocketAddr,
    /// The store directory (partial downloads and their sidecars).
    pub store_dir: PathBuf,
    /// Where finished downloads go.
    pub out_dir: PathBuf,
    /// Upload cap in bytes per second.
    pub upload_limit_bytes_per_s: Option<u64>,
    /// Seed of the peer's RNG (`None`: a random one).
    pub seed: Option<u64>,
    /// The private swarm's key (`None`: an open swarm).
    pub swarm_key: Option<SwarmKey>,
    /// The remotes it lets connect and the trackers' pinned ids (default: any remote).
    pub trust: Trust,
    /// Interval between announces to the tracker.
    pub announce_interval: Duration,
}

/// How to share a file.
#[derive(Clone, Debug, Default)]
pub struct ShareOptions {
    /// Piece size (`None`: chosen from the file size).
    pub piece_size_bytes: Option<u32>,
    /// Serve only these pieces (`None`: all).
    pub only_pieces: Option<Vec<u32>>,
}

/// What a store already held of a file asked for with [`PeerHandle::get`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resumed {
    /// Chunks verified on disk.
    pub have: u32,
    /// Bytes of those chunks.
    pub have_bytes: u64,
    /// Chunks in the file.
    pub total: u32,
}

/// A running peer.
#[derive(Debug)]
pub struct PeerHandle {
    addr: SocketAddr,
    peer_id: PeerId,
    trackers: Vec<SocketAddr>,
    /// Its own keys, also for its short client connections to its trackers (an allow-list at
    /// a tracker lets them through as it lets the peer).
    keys: Keys,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    driver: Addr<Driver<Peer>>,
}

/// Starts a tracker listening on `listen`, proving `keys` (its id is its key's, whatever
/// `config` says).
pub async fn spawn_tracker(listen: SocketAddr, config: TrackerConfig, keys: Keys) -> Result<TrackerHandle, NetError> {
    spawn_tracker_reporting(listen, config, keys, None).await
}

/// Room for events a tracker's program has not read yet; past it they are dropped (see
/// [`EventSink::UpTo`]).
pub const TRACKER_EVENTS_QUEUED_MAX: usize = 4096;

/// Starts a tracker listening on `listen`, proving `keys`; its events (peers announcing and
/// going) go to `events`, if given, as many as the channel has room for (make it with
/// [`TRACKER_EVENTS_QUEUED_MAX`]).
pub async fn spawn_tracker_reporting(
    listen: SocketAddr,
    mut config: TrackerConfig,
    keys: Keys,
    events: Option<mpsc::Sender<NodeEvent>>,
) -> Result<TrackerHandle, NetError> {
    let listener = TcpListener::bind(listen).await.map_err(NetError::socket("listen on", listen))?;
    let addr = listener.local_addr().map_err(NetError::socket("inspect", listen))?;
    config.peer_id = keys.identity.peer_id();
    let metrics = Arc::new(Metrics::new(Role::Tracker));
    let driver = Driver::new(Tracker::new(config), keys, format!("tracker {addr}"), None, events.map(EventSink::UpTo))
        .with_metrics(metrics.clone());
    Ok(TrackerHandle { addr, metrics, driver: driver.start_with_listener(listener) })
}

/// Starts a peer; its events go to `events`.
pub async fn spawn_peer(
    options: PeerOptions,
    events: mpsc::UnboundedSender<NodeEvent>,
) -> Result<PeerHandle, NetError> {
    let (count, max) = (options.trackers.len(), TRACKERS_PER_PEER_MAX);
    let Some(&first_tracker) = options.trackers.first().filter(|_| count <= max) else {
        return Err(NetError::TrackerCount { count, max });
    };
    let store = Arc::new(Store::open(&options.store_dir, &options.out_dir)?);
    let identity = Identity::load_or_create(&options.store_dir.join(IDENTITY_FILE_NAME))?;
    let listener = TcpListener::bind(options.listen).await.map_err(NetError::socket("listen on", options.listen))?;
    let addr = listener.local_addr().map_err(NetError::socket("inspect", options.listen))?;
    let seed = options.seed.unwrap_or_else(|| rand::rngs::OsRng.next_u64());
    let peer_id = identity.peer_id();
    let mut config = PeerConfig::new(peer_id, seed, first_tracker, addr.port());
    config.trackers.clone_from(&options.trackers);
    // Told to trackers, which take it for a peer that reaches them over loopback.
    config.listen_ip = Some(addr.ip()).filter(|ip| !ip.is_unspecified());
    config.upload_limit_bytes_per_s = options.upload_limit_bytes_per_s;
    config.announce_interval = options.announce_interval;
    let keys = Keys { identity, swarm_key: options.swarm_key, trust: Arc::new(options.trust) };
    let metrics = Arc::new(Metrics::new(Role::Peer));
    let driver = Driver::new(
        Peer::new(config),
        keys.clone(),
        format!("peer {addr}"),
        Some(store.clone()),
        Some(EventSink::Every(events)),
    )
    .with_metrics(metrics.clone());
    let driver = driver.start_with_listener(listener);
    Ok(PeerHandle { addr, peer_id, trackers: options.trackers, keys, store, metrics, driver })
}

impl TrackerHandle {
    /// The address the tracker listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the tracker: its listener and every connection close.
    pub fn stop(&self) {
        self.driver.do_send(Stop);
    }

    /// The tracker's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Runs `look` on the tracker's state and returns what it found.
    pub async fn inspect<R: Send + 'static>(
        &self,
        look: impl FnOnce(DriverView<'_, Tracker>) -> R + Send + 'static,
    ) -> Result<R, NetError> {
        inspect(&self.driver, look).await
    }
}

impl PeerOptions {
    /// Options for a peer of `tracker` keeping its files in `store_dir`: listening on any port
    /// of 127.0.0.1, finished files in the store directory, no upload cap, a random seed.
    pub fn new(tracker: SocketAddr, store_dir: PathBuf) -> PeerOptions {
        PeerOptions {
            trackers: vec![tracker],
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            out_dir: store_dir.clone(),
            store_dir,
            upload_limit_bytes_per_s: None,
            seed: None,
            swarm_key: None,
            trust: Trust::default(),
            announce_interval: ANNOUNCE_INTERVAL_DEFAULT,
        }
    }
}

impl PeerHandle {
    /// The address the peer accepts connections on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer's id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Shares the file or directory at `path` (a directory as one item): describes it on a
    /// worker thread, registers it with the store (served in place) and tells the machine.
    /// Returns its manifest.
    pub async fn share(&self, path: &Path, options: ShareOptions) -> Result<Manifest, NetError> {
        let store = self.store.clone();
        let path = path.to_owned();
        let (manifest, have) = blocking(move || {
            let Described { manifest, chunk_digests } = describe(&path, options.piece_size_bytes)?;
            let have = pieces_to_share(&manifest, options.only_pieces.as_deref(), &path)?;
            store.register_shared(&path, manifest.clone(), have.clone())?;
            store.learn_lists(manifest.file_id(), &chunk_digests);
            Ok((manifest, have))
        })
        .await?;
        self.command(Command::Share { manifest: manifest.clone(), have }).await?;
        Ok(manifest)
    }

    /// The peer's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Runs `look` on the peer's state and returns what it found.
    pub async fn inspect<R: Send + 'static>(
        &self,
        look: impl FnOnce(DriverView<'_, Peer>) -> R + Send + 'static,
    ) -> Result<R, NetError> {
        inspect(&self.driver, look).await
    }

    /// The full id for a typed one: itself, or the single id starting with the prefix among the
    /// store's files, else among the files of the first tracker whose list has it (all are
    /// asked at once).
    pub async fn resolve(&self, prefix: &FileIdPrefix) -> Result<FileId, NetError> {
        if let Some(file_id) = prefix.as_full() {
            return Ok(file_id);
        }
        if let Ok(file_id) = prefix.resolve(&self.known_ids()) {
            return Ok(file_id);
        }
        let keys = &self.keys;
        let resolve = |tracker| async move {
            let (files, _) = list_files(tracker, keys).await?;
            match prefix.resolve(files.iter().map(|file| &file.file_id)) {
                Ok(file_id) => Ok(Some(file_id)),
                Err(IdError::UnknownPrefix(_)) => Ok(None),
                Err(error) => Err(NetError::Resolve { prefix: prefix.as_str().to_owned(), error }),
            }
        };
        let unknown = || NetError::Resolve {
            prefix: prefix.as_str().to_owned(),
            error: IdError::UnknownPrefix(prefix.as_str().to_owned()),
        };
        first_answer(&self.trackers, resolve).await?.ok_or_else(unknown)
    }

    /// Has the download of `file_id` finish in `out` instead of the output directory the peer
    /// started with (created if missing, checked to be writable).
    pub async fn set_out(&self, file_id: FileId, out: &Path) -> Result<(), NetError> {
        let store = self.store.clone();
        let out = out.to_owned();
        blocking(move || store.set_out(file_id, &out)).await
    }

    /// Downloads `file_id`, resuming from what the store already verified (re-hashed first).
    pub async fn get(&self, file_id: FileId) -> Result<Option<Resumed>, NetError> {
        let store = self.store.clone();
        let resume = blocking(move || store.resume(file_id)).await?;
        let resumed = resume.as_ref().map(|resume| Resumed {
            have: resume.have.count(),
            have_bytes: resume.have.iter().map(|chunk| u64::from(resume.manifest.chunk_len(chunk))).sum(),
            total: resume.manifest.chunk_count(),
        });
        self.command(Command::Get { file_id, resume }).await?;
        Ok(resumed)
    }

    /// Serves again every file the store remembers serving (shared, or downloaded) that this
    /// run has not registered yet: unchanged files at once, changed ones re-hashed first (on a
    /// worker thread). A file that cannot be read is skipped with a log line. Returns the ids
    /// whose `Share` reached the machine.
    pub async fn reseed(&self) -> Result<Vec<FileId>, NetError> {
        let mut seeded = Vec::new();
        for file_id in self.store.remembered() {
            let store = self.store.clone();
            match blocking(move || store.reopen(file_id)).await {
                Ok(Some((manifest, have))) => {
                    self.command(Command::Share { manifest, have }).await?;
                    seeded.push(file_id);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("cannot serve {file_id} again: {e}"),
            }
        }
        Ok(seeded)
    }

    /// Where the whole of `file_id` already is, when this peer serves all of it (shared, or
    /// downloaded by an earlier run): such a file needs no download.
    pub fn held_path(&self, file_id: FileId) -> Option<PathBuf> {
        self.store.held_path(file_id)
    }

    /// Where the whole of `file_id` already is, if anywhere: a file this peer serves whole
    /// ([`PeerHandle::held_path`]), else a file the store never saw that is in the download's
    /// output folder under its manifest's name (asked of the trackers) and verifies piece by
    /// piece; that one is served from then on. A file there that verifies in part seeds the
    /// download, so [`PeerHandle::get`] fetches only its other pieces. Call it before `get`
    /// (and after [`PeerHandle::set_out`] for a download that goes elsewhere).
    pub async fn find_whole(&self, file_id: FileId) -> Result<Option<PathBuf>, NetError> {
        if let Some(path) = self.held_path(file_id) {
            return Ok(Some(path));
        }
        if self.known_ids().contains(&file_id) {
            return Ok(None);
        }
        let Some(manifest) = self.locate_manifest(file_id).await else { return Ok(None) };
        let store = self.store.clone();
        let found = manifest.clone();
        match blocking(move || store.reuse_out(&found)).await? {
            Reused::Whole(path) => {
                let have = Bitfield::full(manifest.chunk_count());
                self.command(Command::Share { manifest, have }).await?;
                Ok(Some(path))
            }
            Reused::Partial(_) | Reused::Nothing => Ok(None),
        }
    }

    /// The manifest of `file_id` from the first tracker that answers with it (all are asked at
    /// once); `None` when none does (the download learns it from holders then), or none can be
    /// asked (logged).
    async fn locate_manifest(&self, file_id: FileId) -> Option<Manifest> {
        let keys = &self.keys;
        let found = first_answer(&self.trackers, |tracker| locate_manifest(tracker, keys, file_id)).await;
        found.unwrap_or_else(|e| {
            tracing::debug!("cannot ask for the manifest of {file_id}: {e}");
            None
        })
    }

    /// Pauses the download of `file_id` (see [`Command::Pause`]).
    pub async fn pause(&self, file_id: FileId) -> Result<(), NetError> {
        self.command(Command::Pause { file_id }).await
    }

    /// Resumes the paused download of `file_id`.
    pub async fn resume(&self, file_id: FileId) -> Result<(), NetError> {
        self.command(Command::Resume { file_id }).await
    }

    /// Stops serving and fetching `file_id` and forgets it: the machine at once (the trackers
    /// hear it leaves the file), the store once no store work for the file is in flight any
    /// more (see [`crate::store::Store::remove`]; `delete_partial` deletes a download's data
    /// in the store).
    pub async fn remove(&self, file_id: FileId, delete_partial: bool) -> Result<(), NetError> {
        self.command(Command::Remove { file_id }).await?;
        let started = Instant::now();
        // Store jobs take a block's or a piece's time; the wait is short, and polled so the
        // driver needs no bookkeeping of who waits for which file.
        while self.inspect(move |view| view.machine.is_removing(&file_id)).await? {
            if started.elapsed() >= REMOVAL_WAIT_MAX {
                return Err(NetError::RemovalPending { file_id, waited: REMOVAL_WAIT_MAX });
            }
            tokio::time::sleep(REMOVAL_POLL_INTERVAL).await;
        }
        let store = self.store.clone();
        blocking(move || store.remove(file_id, delete_partial)).await
    }

    /// Every file id the store knows (shared, downloaded, partial on disk); for resolving a
    /// typed prefix.
    pub fn known_ids(&self) -> Vec<FileId> {
        self.store.known_ids()
    }

    /// Tells the tracker this peer leaves and waits until the connections are flushed and
    /// closed (each for at most a few seconds). The peer keeps its listener until stopped.
    pub async fn leave(&self) {
        // The driver being gone already means every connection is closed.
        self.driver.send(Leave).await.ok();
    }

    /// Stops the peer: its listener and every connection close.
    pub fn stop(&self) {
        self.driver.do_send(Stop);
    }

    /// Writes the verified pieces of every unfinished download to the store, so the next run
    /// resumes from all of them; for a peer about to exit.
    pub async fn flush(&self) -> Result<(), NetError> {
        let store = self.store.clone();
        blocking(move || Ok(store.persist_all()?)).await
    }

    async fn command(&self, command: Command) -> Result<(), NetError> {
        Ok(self.driver.send(Local(command)).await.map_err(|_| NetError::Stopped)??)
    }
}

/// The chunks of `manifest` to share: all, or those of the listed pieces, each checked to
/// exist.
fn pieces_to_share(manifest: &Manifest, only: Option<&[u32]>, path: &Path) -> Result<Bitfield, NetError> {
    let Some(only) = only else { return Ok(Bitfield::full(manifest.chunk_count())) };
    let mut have = Bitfield::new(manifest.chunk_count());
    for &piece in only {
        let Some(piece) = manifest.pieces().nth(piece as usize) else {
            return Err(NetError::NoSuchPiece { piece, count: manifest.piece_count(), path: path.to_owned() });
        };
        manifest.chunks_of(piece).for_each(|chunk| _ = have.set(chunk));
    }
    Ok(have)
}

/// Runs `look` on the state of `driver`'s machine.
async fn inspect<M: Machine + Unpin + 'static, R: Send + 'static>(
    driver: &Addr<Driver<M>>,
    look: impl FnOnce(DriverView<'_, M>) -> R + Send + 'static,
) -> Result<R, NetError> {
    driver.send(Inspect(Box::new(look))).await.map_err(|_| NetError::Stopped)
}

async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    match tokio::task::spawn_blocking(job).await {
        Ok(result) => result,
        // A panicking job is a bug worth surfacing as such.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: the runtime is shutting down.
        Err(_) => Err(NetError::Stopped),
    }
}
