//! The aria2c side of the comparison: the same file, 1 seeder → 1 downloader over BitTorrent
//! on 127.0.0.1 with the bench's own HTTP tracker, DHT, LPD and peer exchange off. The
//! downloader is timed from its spawn to its exit (`--seed-time=0` makes it exit when done).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::bt::{self, HttpTracker};
use crate::data::{sha256_of, TestFile};
use crate::node::NodeProc;
use crate::procstat::{self, ProcUsage, Watcher};
use crate::swarm::{DownloaderRun, SeederRun, SwarmRun, PIECE_BYTES};

/// How long the seeder may take to announce itself.
const SEEDER_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether aria2c can run, installing the Debian package first when `install` is set.
pub fn ready(install: bool) -> bool {
    if installed() {
        return true;
    }
    if !install {
        return false;
    }
    eprintln!("installing aria2 with apt-get");
    let apt = |args: &[&str]| Command::new("apt-get").args(args).status().is_ok_and(|s| s.success());
    if !apt(&["install", "-y", "aria2"]) {
        // The package lists may be missing on a fresh machine.
        apt(&["update"]);
        apt(&["install", "-y", "aria2"]);
    }
    installed()
}

fn installed() -> bool {
    Command::new("aria2c").arg("--version").output().is_ok_and(|out| out.status.success())
}

/// Flags both aria2c processes share: loopback only, no discovery but the tracker, quiet.
fn common_args(dir: &Path, port: u16) -> Vec<String> {
    let mut args: Vec<String> = [
        "--no-conf",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--disable-ipv6=true",
        "--file-allocation=none",
        "--summary-interval=0",
        "--console-log-level=warn",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.push(format!("--dir={}", dir.display()));
    args.push(format!("--listen-port={port}"));
    args
}

/// Runs the comparison once in `work`.
pub fn run(file: &TestFile, work: &Path, timeout: Duration) -> anyhow::Result<SwarmRun> {
    let seed_dir = work.join("aria2-seed");
    let get_dir = work.join("aria2-get");
    std::fs::create_dir_all(&seed_dir)?;
    std::fs::create_dir_all(&get_dir)?;
    let name = "payload.bin";
    link_or_copy(&file.path, &seed_dir.join(name))?;
    let tracker = HttpTracker::start()?;
    let torrent_path = work.join("payload.torrent");
    let piece_bytes = usize::try_from(PIECE_BYTES)?;
    std::fs::write(&torrent_path, bt::torrent(&file.path, name, file.size_bytes, piece_bytes, &tracker.url)?)?;
    let torrent_arg = torrent_path.display().to_string();

    let (seed_port, get_port) = (free_port()?, free_port()?);
    let mut seeder_args = common_args(&seed_dir, seed_port);
    seeder_args.extend(["--seed-ratio=0.0", "--bt-seed-unverified=true"].map(str::to_owned));
    seeder_args.push(torrent_arg.clone());
    let mut seeder = NodeProc::spawn("aria2c seeder", Path::new("aria2c"), &seeder_args)?;
    wait_seeder(&tracker, &mut seeder, seed_port)?;

    let mut getter_args = common_args(&get_dir, get_port);
    getter_args.push("--seed-time=0".to_owned());
    getter_args.push(torrent_arg);
    let mut getter = NodeProc::spawn("aria2c downloader", Path::new("aria2c"), &getter_args)?;
    let watcher = Watcher::start(getter.pid());
    let (wall_s, usage) = time_to_exit(&mut getter, watcher, timeout)?;
    let seeder_run = SeederRun {
        uploaded_bytes: None,
        socket_bytes: None,
        cpu_s: procstat::sample(seeder.pid()).map_or(0.0, |s| procstat::ticks_to_s(s.cpu_ticks)),
    };
    drop(seeder);
    ensure!(sha256_of(&get_dir.join(name))? == file.sha256, "aria2c's copy differs from the shared file");
    Ok(SwarmRun { downloaders: vec![DownloaderRun::new(wall_s, &usage, None)], seeders: vec![seeder_run] })
}

fn wait_seeder(tracker: &HttpTracker, seeder: &mut NodeProc, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + SEEDER_READY_TIMEOUT;
    while !tracker.has_seeder(port) {
        if Instant::now() > deadline {
            let status = seeder.wait_exit(Duration::ZERO).err().map_or("exited".to_owned(), |e| format!("{e:#}"));
            bail!("the aria2c seeder did not announce within {SEEDER_READY_TIMEOUT:?} ({status})");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits for `node` to exit successfully; returns its wall time and resource use.
fn time_to_exit(node: &mut NodeProc, watcher: Watcher, timeout: Duration) -> anyhow::Result<(f64, ProcUsage)> {
    let usage = watcher.finish(timeout);
    let status = node.wait_exit(Duration::from_secs(5))?;
    ensure!(status.success(), "{} exited with {status}", node.name());
    // The reader thread marks end of file right after the exit; give it a moment.
    thread::sleep(Duration::from_millis(50));
    let ended = node.stdout_closed_at().context("aria2c's stdout did not close at exit")?;
    Ok((ended.duration_since(node.started).as_secs_f64(), usage))
}

/// A port free on 127.0.0.1 right now (bound then released).
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

fn link_or_copy(from: &Path, to: &PathBuf) -> anyhow::Result<()> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}
