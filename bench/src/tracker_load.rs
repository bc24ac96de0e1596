//! `p2p-bench tracker-load`: a bounded load generator against a real `p2p-node tracker`.
//!
//! 1. `--peers` connections say `Hello` as peers, each with its own listen port (the tracker
//!    keys a peer by source IP and announced port).
//! 2. Every peer announces every file with a random half of its pieces; the first announcer of
//!    a file (peer `file % peers`, in a phase of its own) sends the manifest, the others none.
//! 3. `--locate-conns` client connections send `Locate` for random files for `--seconds`, each
//!    keeping `--window` requests in flight, while the peers re-announce every 10 s so none
//!    expires. Then everything stops by itself.
//!
//! Every reply is decoded whole and checked against its request (the tracker answers in order):
//! `Announced` for the announced file, `Located` for the located file naming at least one holder
//! with a bitfield of the file's piece count; only those are counted as answered, anything else
//! is tallied as an error. Reports the announce rate, the locate answers per second and the
//! tracker's RSS from /proc.
//! Runs on one tokio thread, so the tracker keeps the other core of a 2-core machine.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use p2p_core::limits::{CHUNK_BYTES_MIN, CONNECTIONS_MAX, PIECES_MAX, TRACKER_FILES_MAX};
use p2p_core::wire::{Message, Role};
use p2p_core::{Bitfield, Digest, FileId, Manifest};
use p2p_net::identity::Identity;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::load_conn::Conn;
use crate::node::NodeProc;
use crate::procstat::{self, ProcSample};
use crate::report::{self, Table};
use crate::swarm::listen_addr;

/// How often an idle peer re-announces during the locate phase (the tracker's TTL is 30 s).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// First listen port announced; peer `i` announces `PORT_BASE + i`.
const PORT_BASE: u16 = 1024;
/// Locate answers per second the issue asks for.
const LOCATE_TARGET_PER_S: f64 = 50_000.0;
/// Tracker RSS the issue allows for 1,000 × 1,000 × 1,000, MiB.
const RSS_TARGET_MIB: f64 = 200.0;
/// The load's piece size: the smallest, one chunk a piece, so a holding of a file of
/// `--pieces` pieces is `--pieces` bits of the tracker's bitfields, the load the issue
/// describes. Larger pieces have up to four chunks each, and the tracker keeps a bit per
/// chunk: its per-address chunk quota would then refuse a thousand peers on 127.0.0.1 long
/// before each held a thousand files.
const LOAD_PIECE_BYTES: u32 = CHUNK_BYTES_MIN;

/// Options of `p2p-bench tracker-load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Files announced.
    #[arg(long, default_value_t = 1000)]
    files: usize,
    /// Peer connections, each announcing every file.
    #[arg(long, default_value_t = 1000)]
    peers: usize,
    /// Pieces per file (1 MiB each).
    #[arg(long, default_value_t = 1000)]
    pieces: u32,
    /// Seconds of locates after the announces (at most 60).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=60))]
    seconds: u64,
    /// Connections sending locates.
    #[arg(long, default_value_t = 32)]
    locate_conns: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Seed of the bitfields and file choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Append the results as a dated markdown table to this file.
    #[arg(long)]
    write: Option<PathBuf>,
}

/// One file as announced: its id and manifest.
type Files = Arc<Vec<(FileId, Manifest)>>;

/// What the load generator measured.
#[derive(Debug, Default)]
struct Figures {
    connect_s: f64,
    announces: u64,
    announce_s: f64,
    locates: u64,
    locate_s: f64,
    errors: BTreeMap<String, u64>,
    first_located: String,
    tracker_start: ProcSample,
    tracker_after_announces: ProcSample,
    tracker_end: ProcSample,
    generator_cpu_announce_s: f64,
    generator_cpu_locate_s: f64,
}

/// Runs the load and prints (and optionally appends) the table.
pub fn run(args: &LoadArgs, node_bin: &Path) -> anyhow::Result<()> {
    check(args)?;
    let tracker_args = ["tracker", "--listen", "127.0.0.1:0"].map(str::to_owned);
    let mut tracker = NodeProc::spawn("tracker", node_bin, &tracker_args)?;
    let addr: SocketAddr = listen_addr(&mut tracker)?.parse().context("the tracker's address")?;
    let files = Arc::new(make_files(args)?);
    let load_before = report::load_average();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut figures = Figures { tracker_start: sample(tracker.pid())?, ..Figures::default() };
    runtime.block_on(drive(args, addr, files, tracker.pid(), &mut figures))?;
    let (mut notes, table) = summarise(args, &figures);
    notes.push(format!("1-minute load average before / after: {load_before} / {}", report::load_average()));
    println!();
    for note in &notes {
        println!("{note}");
    }
    print!("{}", table.to_text());
    if let Some(path) = &args.write {
        report::append_markdown(path, "Tracker load", &notes, &table)?;
    }
    Ok(())
}

fn check(args: &LoadArgs) -> anyhow::Result<()> {
    ensure!(args.files >= 1 && args.files <= TRACKER_FILES_MAX, "--files must be 1..={TRACKER_FILES_MAX}");
    ensure!(args.pieces >= 1 && args.pieces <= PIECES_MAX, "--pieces must be 1..={PIECES_MAX}");
    ensure!(args.peers >= 1 && args.locate_conns >= 1 && args.window >= 1, "counts must be at least 1");
    let conns = args.peers + args.locate_conns;
    ensure!(conns < CONNECTIONS_MAX, "--peers + --locate-conns must stay under the tracker's {CONNECTIONS_MAX}");
    ensure!(args.peers <= usize::from(u16::MAX - PORT_BASE), "too many peers for distinct ports");
    Ok(())
}

fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    procstat::sample(pid).context("the tracker is gone")
}

/// Manifests with made-up digests (the tracker never checks them against data).
fn make_files(args: &LoadArgs) -> anyhow::Result<Vec<(FileId, Manifest)>> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut files = Vec::with_capacity(args.files);
    for i in 0..args.files {
        let hashes = (0..args.pieces)
            .map(|_| {
                let mut digest = [0u8; 32];
                rng.fill_bytes(&mut digest);
                Digest(digest)
            })
            .collect();
        let length = u64::from(args.pieces) * u64::from(LOAD_PIECE_BYTES);
        let manifest = Manifest::new(format!("load-{i:05}.bin"), length, LOAD_PIECE_BYTES, hashes)?;
        files.push((manifest.file_id(), manifest));
    }
    Ok(files)
}

/// The three phases, on the current-thread runtime.
async fn drive(args: &LoadArgs, addr: SocketAddr, files: Files, pid: u32, figures: &mut Figures) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut peers = Vec::with_capacity(args.peers);
    for i in 0..args.peers {
        let port = PORT_BASE + u16::try_from(i)?;
        peers.push(Conn::open(addr, Role::Peer, identity(args.seed, i), port).await?);
    }
    figures.connect_s = started.elapsed().as_secs_f64();
    let cpu_before = procstat::self_cpu_s();
    let started = Instant::now();
    let peers = announce_phase(args, &files, peers, true, figures).await?.finish().await?;
    let announcing = announce_phase(args, &files, peers, false, figures).await?;
    figures.announce_s = started.elapsed().as_secs_f64();
    figures.generator_cpu_announce_s = procstat::self_cpu_s() - cpu_before;
    figures.tracker_after_announces = sample(pid)?;

    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let cpu_before = procstat::self_cpu_s();
    locate_phase(args, addr, &files, deadline, figures).await?;
    figures.generator_cpu_locate_s = procstat::self_cpu_s() - cpu_before;
    figures.tracker_end = sample(pid)?;
    announcing.finish().await?;
    Ok(())
}

/// The key pair of load connection `i`: drawn from the seed, so runs name the same peers.
fn identity(seed: u64, i: usize) -> Identity {
    let mut private = [0u8; 32];
    private[..8].copy_from_slice(&(i as u64).to_be_bytes());
    private[8..16].copy_from_slice(&seed.to_be_bytes());
    Identity::from_private(private)
}

/// A random half of the pieces (each piece held with probability 1/2).
fn random_half(rng: &mut ChaCha8Rng, pieces: u32) -> Bitfield {
    let mut bytes = vec![0u8; pieces.div_ceil(8) as usize];
    rng.fill_bytes(&mut bytes);
    // Sized from `pieces` just above, so the byte count matches.
    Bitfield::from_bytes(pieces, &bytes).expect("byte count matches the piece count")
}

/// Peers that have announced and keep their registration alive until told to stop.
#[derive(Debug)]
struct Announcing {
    tasks: JoinSet<anyhow::Result<(usize, Conn)>>,
    stop: watch::Sender<bool>,
}

impl Announcing {
    /// Stops the keepalives; returns the connections in peer order.
    async fn finish(mut self) -> anyhow::Result<Vec<Conn>> {
        // No receiver left only means every task already ended.
        self.stop.send(true).ok();
        let mut done = Vec::new();
        while let Some(result) = self.tasks.join_next().await {
            done.push(result.context("a peer task panicked")??);
        }
        done.sort_by_key(|(i, _)| *i);
        Ok(done.into_iter().map(|(_, conn)| conn).collect())
    }
}

/// Every peer announces its files concurrently: with `first`, the files it introduces (with
/// the manifest); otherwise every other file. Returns once every peer has its answers; each
/// then re-announces every [`KEEPALIVE_INTERVAL`] until finished, so none expires meanwhile.
async fn announce_phase(
    args: &LoadArgs,
    files: &Files,
    peers: Vec<Conn>,
    first: bool,
    figures: &mut Figures,
) -> anyhow::Result<Announcing> {
    let (tallies, mut tally_rx) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let count = peers.len();
    for (i, mut conn) in peers.into_iter().enumerate() {
        let (files, peer_count, window, pieces) = (Arc::clone(files), args.peers, args.window, args.pieces);
        let (tallies, stop_rx) = (tallies.clone(), stop_rx.clone());
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ ((i as u64) << 32) ^ u64::from(first));
        tasks.spawn(async move {
            let mine = |f: &usize| (f % peer_count == i) == first;
            let requests = (0..files.len()).filter(mine).map(|f| {
                let (file_id, manifest) = &files[f];
                let have = random_half(&mut rng, manifest.chunk_count());
                Message::Announce { file_id: *file_id, manifest: first.then(|| Box::new(manifest.clone())), have }
            });
            let mut tally = Tally::new(pieces);
            conn.pipeline(requests, window, |request, reply| tally.add(request, &reply)).await?;
            // The receiver lives until every tally is in or the phase failed.
            tallies.send(tally).ok();
            keepalive(&mut conn, &files, i, stop_rx, &mut rng).await?;
            anyhow::Ok((i, conn))
        });
    }
    drop(tallies);
    let mut received = 0;
    while let Some(tally) = tally_rx.recv().await {
        figures.announces += tally.ok;
        merge(&mut figures.errors, tally.errors);
        received += 1;
        if received == count {
            return Ok(Announcing { tasks, stop });
        }
    }
    // A task ended without its tally: finishing surfaces its error.
    Announcing { tasks, stop }.finish().await?;
    anyhow::bail!("a peer stopped before its announces were answered")
}

/// Re-announces one file every [`KEEPALIVE_INTERVAL`] until `stop` changes.
async fn keepalive(
    conn: &mut Conn,
    files: &Files,
    i: usize,
    mut stop: watch::Receiver<bool>,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return Ok(()),
            () = tokio::time::sleep(KEEPALIVE_INTERVAL) => {}
        }
        let (file_id, manifest) = &files[i % files.len()];
        let have = random_half(rng, manifest.chunk_count());
        conn.queue(&Message::Announce { file_id: *file_id, manifest: None, have })?;
        conn.flush().await?;
        conn.recv().await?;
    }
}

/// Replies counted by one task.
#[derive(Debug)]
struct Tally {
    /// Pieces of every file.
    pieces: u32,
    ok: u64,
    errors: BTreeMap<String, u64>,
    first_located: Option<String>,
}

impl Tally {
    fn new(pieces: u32) -> Tally {
        Tally { pieces, ok: 0, errors: BTreeMap::new(), first_located: None }
    }

    /// Counts `reply` as answered when it is the right kind of answer to `request`: `Announced`
    /// for the announced file, or `Located` for the located file with holders whose bitfields
    /// cover its pieces. Anything else is counted by kind.
    fn add(&mut self, request: &Message, reply: &Message) {
        match (request, reply) {
            (Message::Announce { file_id: asked, .. }, Message::Announced { file_id }) if file_id == asked => {
                self.ok += 1;
            }
            (Message::Locate { file_id: asked, .. }, Message::Located { file_id, holders, .. })
                if file_id == asked && !holders.is_empty() && holders.chunk_count() == self.pieces =>
            {
                self.ok += 1;
                if self.first_located.is_none() {
                    let pieces = holders.chunk_count();
                    let listed: u64 = holders.iter().map(|(_, bits)| u64::from(bits.count())).sum();
                    self.first_located = Some(format!(
                        "{pieces} pieces, {} peers named with their bitfields ({} bytes of records), \
                         {:.1} holders per piece",
                        holders.len(),
                        holders.size_bytes(),
                        listed as f64 / f64::from(pieces.max(1))
                    ));
                }
            }
            (_, Message::Error { code, .. }) => *self.errors.entry(format!("{code:?}")).or_default() += 1,
            (_, other) => *self.errors.entry(format!("unexpected {}", other.kind())).or_default() += 1,
        }
    }
}

fn merge(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (key, count) in from {
        *into.entry(key).or_default() += count;
    }
}

/// Client connections locate random files until `deadline`.
async fn locate_phase(
    args: &LoadArgs,
    addr: SocketAddr,
    files: &Files,
    deadline: Instant,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for c in 0..args.locate_conns {
        let mut conn = Conn::open(addr, Role::Client, identity(!args.seed, c), 0).await?;
        let (files, window, pieces) = (Arc::clone(files), args.window, args.pieces);
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed.wrapping_add(c as u64));
        tasks.spawn(async move {
            let requests = std::iter::from_fn(|| {
                let f = (rng.next_u64() % files.len() as u64) as usize;
                (Instant::now() < deadline).then(|| Message::Locate { file_id: files[f].0, with_manifest: false })
            });
            let mut tally = Tally::new(pieces);
            conn.pipeline(requests, window, |request, reply| tally.add(request, &reply)).await?;
            anyhow::Ok(tally)
        });
    }
    while let Some(result) = tasks.join_next().await {
        let tally = result.context("a locate task panicked")??;
        figures.locates += tally.ok;
        merge(&mut figures.errors, tally.errors);
        if figures.first_located.is_empty() {
            figures.first_located = tally.first_located.unwrap_or_default();
        }
    }
    figures.locate_s = started.elapsed().as_secs_f64();
    Ok(())
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".to_owned(), |kib| format!("{:.1}", kib as f64 / 1024.0))
}

fn summarise(args: &LoadArgs, f: &Figures) -> (Vec<String>, Table) {
    let notes = vec![
        format!("command: `{}`", report::command_line()),
        format!(
            "{} files × {} peers × {} pieces; {} locate connections × {} in flight for {} s; one run; \
             generator on one tokio thread, {} cores",
            args.files,
            args.peers,
            args.pieces,
            args.locate_conns,
            args.window,
            args.seconds,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        format!("first Located answer: {}", f.first_located),
    ];
    let cpu = |a: &ProcSample, b: &ProcSample| format!("{:.2}", procstat::ticks_to_s(b.cpu_ticks - a.cpu_ticks));
    let rss_after = f.tracker_after_announces.rss_kib.unwrap_or(0) as f64 / 1024.0;
    let errors: Vec<String> = f.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let mut table = Table::new(&["metric", "value", "target (issue 4)"]);
    let mut row = |metric: &str, value: String, target: &str| table.push(vec![metric.into(), value, target.into()]);
    row("peer connections opened (s)", format!("{:.2}", f.connect_s), "");
    row("announces answered", f.announces.to_string(), "");
    row("announce phase (s)", format!("{:.2}", f.announce_s), "");
    row("announces/s", format!("{:.0}", f.announces as f64 / f.announce_s), "");
    row("locate answers", f.locates.to_string(), "");
    row("locate answers/s", format!("{:.0}", f.locates as f64 / f.locate_s), &format!("≥ {LOCATE_TARGET_PER_S:.0}"));
    row("tracker RSS at start (MiB)", mib(f.tracker_start.rss_kib), "");
    row("tracker RSS after announces (MiB)", format!("{rss_after:.1}"), &format!("< {RSS_TARGET_MIB:.0}"));
    row("tracker peak RSS, VmHWM (MiB)", mib(f.tracker_end.hwm_kib), "");
    row("tracker CPU s, announce phase", cpu(&f.tracker_start, &f.tracker_after_announces), "");
    row("tracker CPU s, locate phase", cpu(&f.tracker_after_announces, &f.tracker_end), "");
    row(
        "generator CPU s, announce / locate",
        format!("{:.2} / {:.2}", f.generator_cpu_announce_s, f.generator_cpu_locate_s),
        "",
    );
    row("error replies", if errors.is_empty() { "none".to_owned() } else { errors.join(", ") }, "");
    (notes, table)
}
