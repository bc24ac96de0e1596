//! `p2p-node`: run a tracker or a peer, compute a file id, list a tracker's files, make a key
//! pair or a swarm key, or watch the seed's example run in one process (`demo`). The command line is docs/cli.md.
//!
//! This file only parses, sets up logging and maps the outcome to an exit code; the work is in
//! the subcommand modules, every stable stdout line in `report.rs`.

#![forbid(unsafe_code)]

#[path = "../cli.rs"]
mod cli;
#[path = "../config.rs"]
mod config;
mod ctl;
mod demo;
mod manual;
mod peer;
mod progress;
mod reach;
#[path = "../report.rs"]
mod report;
mod tools;
mod tracker;
mod uploads;

use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;

use crate::cli::{Cli, NodeCommand};

fn main() -> ExitCode {
    let cli = match Cli::try_parse_checked() {
        Ok(cli) => cli,
        Err(e) => {
            // Printing the usage text only fails when stderr is gone; the exit code still tells.
            e.print().ok();
            return ExitCode::from(if e.use_stderr() { report::EXIT_USAGE } else { report::EXIT_OK });
        }
    };
    init_logging(cli.verbose, cli.quiet);
    match run(cli.command) {
        Ok(()) => ExitCode::from(report::EXIT_OK),
        Err(e) => report::failure(&e),
    }
}

fn run(command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Tracker { listen, key, swarm_key, allow, http, config: _ } => {
            in_actix(tracker::run(listen, key, (swarm_key.as_deref(), allow.as_deref()), http))
        }
        NodeCommand::Peer(args) => in_actix(peer::run(args)),
        NodeCommand::Id { path, piece_size } => tools::id(&path, piece_size),
        NodeCommand::Ls { tracker, pieces, swarm_key, key } => {
            in_actix(tools::ls(&tracker, pieces, (swarm_key.as_deref(), key.as_deref())))
        }
        NodeCommand::Keygen { path } => tools::keygen(&path),
        NodeCommand::SwarmKey { path } => tools::swarm_key(&path),
        NodeCommand::Demo => in_actix(demo::run()),
        NodeCommand::Ctl(args) => ctl::run(&args),
        NodeCommand::Completions { shell } => manual::completions(shell),
        NodeCommand::Man => manual::man(),
    }
}

/// Runs `job` inside an actix system (the nodes are actors). Store work never runs more than
/// `STORE_JOBS_MAX` jobs at once, so the worker pool is held to that many threads: left to
/// itself it starts a new thread whenever a job is handed over just before another finishes,
/// and every extra thread keeps its stack and hashing buffer (peak memory then grew with the
/// length of a download).
fn in_actix(job: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    raise_open_files_limit();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(p2p_net::driver::STORE_JOBS_MAX)
            .build()
            // As in `actix_rt::System::new`: only fails when the OS refuses an event queue.
            .expect("a tokio runtime")
    };
    actix_rt::System::with_tokio_rt(runtime).block_on(job)
}

/// A tracker keeps one connection per peer and a peer many: lift the soft limit on open files
/// (often 1024) to the hard limit. Failing to is not fatal; the limit then shows as refused
/// connections, with a log line.
fn raise_open_files_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!("cannot raise the open files limit: {e}");
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` when it is set, else by `-q`/`-v`: by default the
/// program's own story (what changed, once per change) and every warning and error.
fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn,p2p_node=info",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
