//! `p2p-bench`: measures swarm on this machine (issue 4, items 1 and 3).
//!
//! - `transfer` starts real `p2p-node` processes on 127.0.0.1 and times downloads (wall time,
//!   MiB/s, the downloader's CPU seconds and peak RSS) next to the machine's SHA-256 rate and,
//!   when installed, aria2c over BitTorrent on the same file.
//! - `tracker-load` starts a `p2p-node tracker` and drives it with a bounded load generator:
//!   announces of many files by many peers, then locates as fast as the tracker answers.
//!
//! `p2p-node` is found next to this binary: `cargo build --release` builds both (this crate,
//! `bench/`, is the lab; the product's crates do not depend on it).
//! Every child process is killed by PID when its case ends, every wait has a timeout, and all
//! traffic stays on 127.0.0.1.

#![forbid(unsafe_code)]

mod aria2;
mod bt;
mod ceiling;
mod data;
mod load_conn;
mod node;
mod procstat;
mod report;
mod sockmeter;
mod swarm;
mod tracker_load;
mod transfer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{ensure, Context};
use clap::{Parser, Subcommand};

/// Benchmarks of swarm on this machine.
#[derive(Debug, Parser)]
#[command(name = "p2p-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Time real downloads between p2p-node processes on 127.0.0.1.
    Transfer {
        /// Comma-separated cases: 1to1-256m, 3to1-256m, 1to1-1g, 3to1-1g, 1to8-256m,
        /// thirds-1g, aria2-256m (default: all).
        #[arg(long, value_delimiter = ',')]
        cases: Option<Vec<String>>,
        /// 32 MiB files instead of the real sizes, to check the tool quickly.
        #[arg(long)]
        quick: bool,
        /// Runs per case; the table shows medians (default: 2, or 1 with --quick).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=20))]
        runs: Option<u64>,
        /// Install the comparison client (apt-get install -y aria2) when it is missing.
        #[arg(long)]
        install_peers: bool,
        /// Longest wait for one run's downloads, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
        /// Append the results as a dated markdown table to this file.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Drive a p2p-node tracker with announces and locates on 127.0.0.1.
    TrackerLoad(tracker_load::LoadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: BenchCommand) -> anyhow::Result<()> {
    let node_bin = node_binary()?;
    match command {
        BenchCommand::Transfer { cases, quick, runs, install_peers, timeout_s, write } => {
            let runs = runs.map_or(if quick { 1 } else { 2 }, |n| n as usize);
            let timeout = Duration::from_secs(timeout_s);
            let options = transfer::TransferOptions { cases, quick, runs, install_peers, timeout, write };
            transfer::run(&options, &node_bin)
        }
        BenchCommand::TrackerLoad(args) => tracker_load::run(&args, &node_bin),
    }
}

/// `p2p-node`, next to this binary.
fn node_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe().context("cannot find this binary's path")?.with_file_name("p2p-node");
    ensure!(
        path.is_file(),
        "{} not found: build both with `cargo build --release --bin p2p-node --bin p2p-bench`",
        path.display()
    );
    Ok(path)
}
