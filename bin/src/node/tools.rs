//! The small subcommands: `id`, `ls`, `keygen`, `swarm-key`; the keys of a tool's connections;
//! and catching SIGINT/SIGTERM.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context};
use p2p_net::client::{first_answer, list_files};
use p2p_net::hasher::manifest_of;
use p2p_net::identity::{AllowList, Identity, SwarmKey};
use p2p_net::secure::Keys;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::report;

/// `p2p-node id`: the file id, computed offline.
pub fn id(path: &Path, piece_size_bytes: Option<u32>) -> anyhow::Result<()> {
    let manifest = manifest_of(path, piece_size_bytes)?;
    report::file_id(manifest.file_id());
    Ok(())
}

/// `p2p-node ls`: the tracker's files, as a table for a person at a terminal, as the stable
/// lines (holders per piece) for a script.
pub async fn ls(
    trackers: &[SocketAddr],
    pieces: bool,
    (swarm_key, key): (Option<&Path>, Option<&Path>),
) -> anyhow::Result<()> {
    let identity = match key {
        Some(path) => Identity::load_or_create(path).context("--key")?,
        None => Identity::generate(),
    };
    let keys = Keys::new(identity, load_swarm_key(swarm_key)?);
    let keys = &keys;
    let listed = first_answer(trackers, |tracker| async move { Ok(Some((tracker, list_files(tracker, keys).await?))) });
    let listed = listed.await.context("cannot list the tracker's files")?;
    // Every answer is `Some`, so there is one unless an error came back.
    let Some((tracker, (files, truncated))) = listed else { bail!("no tracker answered") };
    if trackers.len() > 1 {
        eprintln!("files of the tracker at {tracker}");
    }
    if files.is_empty() {
        eprintln!("the tracker at {tracker} knows no files");
    } else if std::io::stdout().is_terminal() {
        report::files_table(&files, truncated, pieces);
    } else {
        report::files(&files, truncated);
    }
    Ok(())
}

/// `p2p-node keygen`: a new key pair in `path`; prints its peer id.
pub fn keygen(path: &Path) -> anyhow::Result<()> {
    let identity = Identity::create(path)?;
    report::peer_id(identity.peer_id());
    Ok(())
}

/// `p2p-node swarm-key`: a new swarm key in `path`.
pub fn swarm_key(path: &Path) -> anyhow::Result<()> {
    SwarmKey::create(path)?;
    eprintln!("wrote a new swarm key to {}; give it to every node of the swarm (--swarm-key)", path.display());
    Ok(())
}

/// The swarm key in `path`, if one is given.
pub fn load_swarm_key(path: Option<&Path>) -> anyhow::Result<Option<SwarmKey>> {
    path.map(|path| SwarmKey::load(path).context("--swarm-key")).transpose()
}

/// The allow-list in `path`, if one is given.
pub fn load_allow_list(path: Option<&Path>) -> anyhow::Result<Option<AllowList>> {
    path.map(|path| AllowList::load(path).context("--allow")).transpose()
}

/// SIGINT and SIGTERM, caught from the moment [`Shutdown::install`] is called.
#[derive(Debug)]
pub struct Shutdown {
    terminate: Signal,
    interrupt: Signal,
}

impl Shutdown {
    /// Starts catching SIGINT and SIGTERM.
    pub fn install() -> anyhow::Result<Shutdown> {
        Ok(Shutdown {
            terminate: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
        })
    }

    /// Resolves when one of the signals arrives (at once if one came already) and says which.
    pub async fn wait(&mut self) -> report::Signal {
        tokio::select! {
            _ = self.terminate.recv() => report::Signal::Terminate,
            _ = self.interrupt.recv() => report::Signal::Interrupt,
        }
    }
}
