//! One run of a transfer case with real `p2p-node` processes on 127.0.0.1: a tracker, the
//! seeders (each sharing the whole file or some of its pieces), then every downloader started
//! together. Measures each downloader from its spawn to its `complete` line, its CPU time and
//! peak RSS from `/proc`, and each seeder's upload as it reports it and as the kernel counts it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::data::{sha256_of, TestFile};
use crate::node::NodeProc;
use crate::procstat::{self, ProcUsage, Watcher};
use crate::sockmeter::UploadMeter;

/// Piece size of every shared file, as in the reference figures of issue 4.
pub const PIECE_BYTES: u64 = 1 << 20;
/// How long a tracker or peer may take to print `listening on`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a seeder may take to hash its file and hear back from the tracker.
const SHARE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a finished process may take to print its last lines and exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one run starts.
#[derive(Debug)]
pub struct SwarmPlan<'a> {
    /// The `p2p-node` binary.
    pub node_bin: &'a Path,
    /// The file the seeders share.
    pub file: &'a TestFile,
    /// An empty folder for this run's stores and downloads.
    pub work: &'a Path,
    /// One entry per seeder: `None` shares every piece, `Some("0-9")` only those.
    pub seeders: Vec<Option<String>>,
    /// Downloaders started together.
    pub downloaders: usize,
    /// Longest wait for every downloader to complete.
    pub timeout: Duration,
}

/// One downloader's figures.
#[derive(Clone, Debug)]
pub struct DownloaderRun {
    /// From spawn to the `complete` line, seconds.
    pub wall_s: f64,
    /// User + system CPU seconds over its whole life.
    pub cpu_s: f64,
    /// The system part of `cpu_s`.
    pub sys_s: f64,
    /// Peak RSS, KiB.
    pub peak_rss_kib: u64,
    /// Its `downloaded FILE_ID BYTES` figure.
    pub downloaded_bytes: Option<u64>,
}

impl DownloaderRun {
    /// Its figures: `wall_s` as measured, CPU and peak RSS as its watcher saw them.
    pub fn new(wall_s: f64, usage: &ProcUsage, downloaded_bytes: Option<u64>) -> DownloaderRun {
        DownloaderRun {
            wall_s,
            cpu_s: usage.cpu_s,
            sys_s: usage.sys_s,
            peak_rss_kib: usage.peak_rss_kib,
            downloaded_bytes,
        }
    }
}

/// One seeder's figures.
#[derive(Clone, Debug)]
pub struct SeederRun {
    /// The seeder's own `uploaded … BYTES` line at exit, if it prints one.
    pub uploaded_bytes: Option<u64>,
    /// Bytes the kernel sent on the connections downloaders opened to it (`ss -E`).
    pub socket_bytes: Option<u64>,
    /// CPU seconds until the downloads were done.
    pub cpu_s: f64,
}

/// The figures of one run.
#[derive(Clone, Debug)]
pub struct SwarmRun {
    /// In start order.
    pub downloaders: Vec<DownloaderRun>,
    /// In start order.
    pub seeders: Vec<SeederRun>,
}

/// Runs `plan` once; every process is killed by PID when this returns.
pub fn run(plan: &SwarmPlan<'_>) -> anyhow::Result<SwarmRun> {
    let meter = UploadMeter::start();
    let tracker_args = args(&["tracker", "--listen", "127.0.0.1:0"]);
    let mut tracker = NodeProc::spawn("tracker", plan.node_bin, &tracker_args)?;
    let tracker_addr = listen_addr(&mut tracker)?;
    let (mut seeders, file_id) = start_seeders(plan, &tracker_addr)?;
    let mut downloaders = start_downloaders(plan, &tracker_addr, &file_id)?;
    let (runs, paths) = collect(plan, &mut downloaders)?;
    let mut seeder_runs = stop_seeders(&mut seeders);
    drop(downloaders);
    if let Some(sent) = meter.map(UploadMeter::finish) {
        for (run, seeder) in seeder_runs.iter_mut().zip(&seeders) {
            run.socket_bytes = Some(sent.get(&seeder.port).copied().unwrap_or(0));
        }
    }
    for path in &paths {
        let digest = sha256_of(path)?;
        ensure!(digest == plan.file.sha256, "{} differs from the shared file", path.display());
    }
    Ok(SwarmRun { downloaders: runs, seeders: seeder_runs })
}

/// The address in a node's `listening on ADDR` line.
pub fn listen_addr(node: &mut NodeProc) -> anyhow::Result<String> {
    let line = node.wait_line("listening on ", START_TIMEOUT)?;
    Ok(line.text["listening on ".len()..].trim().to_owned())
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

fn make_dir(path: PathBuf) -> anyhow::Result<String> {
    fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(path.display().to_string())
}

/// A running seeder and the port it accepts connections on.
#[derive(Debug)]
struct Seeder {
    node: NodeProc,
    port: u16,
}

/// Starts every seeder, waits for each `sharing` line, returns them and the file id.
fn start_seeders(plan: &SwarmPlan<'_>, tracker: &str) -> anyhow::Result<(Vec<Seeder>, String)> {
    let piece_size = PIECE_BYTES.to_string();
    let share = plan.file.path.display().to_string();
    let mut seeders = Vec::new();
    for (i, only) in plan.seeders.iter().enumerate() {
        let store = make_dir(plan.work.join(format!("seeder{i}")))?;
        let mut argv = args(&["peer", "--tracker", tracker, "--listen", "127.0.0.1:0", "--store", &store]);
        argv.extend(args(&["--share", &share, "--piece-size", &piece_size]));
        if let Some(list) = only {
            argv.extend(args(&["--only-pieces", list]));
        }
        seeders.push(NodeProc::spawn(&format!("seeder {i}"), plan.node_bin, &argv)?);
    }
    let mut file_id = None;
    let mut ready = Vec::new();
    for mut seeder in seeders {
        let addr = listen_addr(&mut seeder)?;
        let port = addr.rsplit_once(':').and_then(|(_, port)| port.parse().ok()).context("a listen port")?;
        let line = seeder.wait_line("sharing ", SHARE_TIMEOUT)?;
        let id = line.text.split_whitespace().nth(1).unwrap_or_default().to_owned();
        match &file_id {
            None => file_id = Some(id),
            Some(first) if *first == id => {}
            Some(first) => bail!("{} shares {id}, another seeder {first}", seeder.name()),
        }
        ready.push(Seeder { node: seeder, port });
    }
    let file_id = file_id.context("a case needs at least one seeder")?;
    Ok((ready, file_id))
}

/// Starts every downloader at once, each with a `/proc` watcher.
fn start_downloaders(
    plan: &SwarmPlan<'_>,
    tracker: &str,
    file_id: &str,
) -> anyhow::Result<Vec<(NodeProc, Option<Watcher>)>> {
    let mut argvs = Vec::new();
    for i in 0..plan.downloaders {
        let store = make_dir(plan.work.join(format!("downloader{i}/store")))?;
        let out = make_dir(plan.work.join(format!("downloader{i}/out")))?;
        let mut argv = args(&["peer", "--tracker", tracker, "--listen", "127.0.0.1:0", "--store", &store]);
        argv.extend(args(&["--out", &out, "--get", file_id, "--exit-when-done"]));
        argvs.push(argv);
    }
    let mut downloaders = Vec::new();
    for (i, argv) in argvs.iter().enumerate() {
        let node = NodeProc::spawn(&format!("downloader {i}"), plan.node_bin, argv)?;
        let watcher = Watcher::start(node.pid());
        downloaders.push((node, Some(watcher)));
    }
    Ok(downloaders)
}

/// Waits for every downloader's `complete` line and exit; returns the figures and the paths.
fn collect(
    plan: &SwarmPlan<'_>,
    downloaders: &mut [(NodeProc, Option<Watcher>)],
) -> anyhow::Result<(Vec<DownloaderRun>, Vec<PathBuf>)> {
    let deadline = Instant::now() + plan.timeout;
    let mut runs = Vec::new();
    let mut paths = Vec::new();
    for (node, watcher) in downloaders.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        let complete = node.wait_line("complete ", left)?;
        let wall_s = complete.at.duration_since(node.started).as_secs_f64();
        let path = complete.text.splitn(3, ' ').nth(2).context("a `complete` line names a path")?;
        paths.push(PathBuf::from(path));
        let downloaded = node.wait_line("downloaded ", EXIT_TIMEOUT).ok();
        let downloaded_bytes = downloaded.and_then(|line| bytes_field(&line.text));
        let usage = watcher.take().map_or(ProcUsage::default(), |w| w.finish(EXIT_TIMEOUT));
        let status = node.wait_exit(EXIT_TIMEOUT)?;
        ensure!(status.success(), "{} exited with {status} after completing", node.name());
        ensure!(usage.exited, "{}: its exit was not observed in /proc", node.name());
        runs.push(DownloaderRun::new(wall_s, &usage, downloaded_bytes));
    }
    Ok((runs, paths))
}

/// Reads each seeder's CPU time, asks it to leave (SIGTERM), and reads its last lines.
fn stop_seeders(seeders: &mut [Seeder]) -> Vec<SeederRun> {
    let mut runs = Vec::new();
    for Seeder { node, .. } in seeders.iter_mut() {
        let cpu_s = procstat::sample(node.pid()).map_or(0.0, |s| procstat::ticks_to_s(s.cpu_ticks));
        // A seeder that does not leave in time is killed here; its figures stay valid.
        if node.terminate(EXIT_TIMEOUT).is_err() {
            node.kill();
        }
        let uploaded_bytes = node.lines_with("uploaded ").last().and_then(|line| bytes_field(&line.text));
        runs.push(SeederRun { uploaded_bytes, socket_bytes: None, cpu_s });
    }
    runs
}

/// The byte count of a `downloaded FILE_ID BYTES …` or `uploaded FILE_ID BYTES …` line (fields
/// may follow it).
fn bytes_field(text: &str) -> Option<u64> {
    text.split_whitespace().nth(2)?.parse().ok()
}
