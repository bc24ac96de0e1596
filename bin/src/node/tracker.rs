//! `p2p-node tracker`: serve until SIGINT/SIGTERM (with `--http`, the HTTP API, `/metrics` and
//! the live piece map too), telling what happens at the default log
//! level: each peer joining with a file, and leaving (and why); and, once per peer, a warning
//! when the tracker records a peer at a loopback or unspecified address while other peers are
//! on other hosts, who would be handed an address they cannot reach.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use p2p_core::limits::TRACKER_PEERS_MAX;
use p2p_core::wire::PeerAddr;
use p2p_core::{Event, GoneReason, PeerId, TrackerConfig};
use p2p_net::http::serve_tracker;
use p2p_net::identity::Identity;
use p2p_net::node::TRACKER_EVENTS_QUEUED_MAX;
use p2p_net::secure::{Keys, Trust};
use p2p_net::{spawn_tracker_reporting, NodeEvent};
use rand::RngCore;
use tokio::sync::mpsc;

use crate::report;
use crate::tools::{load_allow_list, load_swarm_key, Shutdown};

/// Runs the tracker until a signal, with the key pair in `key` (or the default place), the
/// swarm key and the allow-list in the files given, serving the HTTP API on `http` if given.
pub async fn run(
    listen: SocketAddr,
    key: Option<PathBuf>,
    (swarm_key, allow): (Option<&Path>, Option<&Path>),
    http: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let mut shutdown = Shutdown::install()?;
    let trust = Trust { allow: load_allow_list(allow)?, ..Trust::default() };
    let keys = Keys { identity: tracker_identity(key)?, swarm_key: load_swarm_key(swarm_key)?, trust: Arc::new(trust) };
    let config = TrackerConfig { seed: rand::rngs::OsRng.next_u64(), ..TrackerConfig::default() };
    let (sender, mut events) = mpsc::channel(TRACKER_EVENTS_QUEUED_MAX);
    let tracker =
        spawn_tracker_reporting(listen, config, keys, Some(sender)).await.context("cannot start the tracker")?;
    let tracker = Arc::new(tracker);
    report::listening(tracker.addr());
    let http = match http {
        Some(listen) => Some(serve_tracker(listen, tracker.clone()).context("cannot serve the HTTP API")?),
        None => None,
    };
    if let Some(http) = &http {
        report::http_on(http.addr());
    }
    let mut story = Story::default();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            event = events.recv() => match event {
                Some(NodeEvent::Machine(event)) => story.on_event(&event),
                Some(_) => {}
                None => break,
            },
        }
    }
    if let Some(http) = http {
        http.stop().await;
    }
    tracker.stop();
    Ok(())
}

/// The tracker's key pair: the one in `key`, else in `$XDG_STATE_HOME/swarm/tracker.key` (or
/// `~/.local/state/swarm/tracker.key`), created there on first use; a new one for this run
/// when neither variable is set.
fn tracker_identity(key: Option<PathBuf>) -> anyhow::Result<Identity> {
    let state_dir = || {
        let xdg = std::env::var_os("XDG_STATE_HOME").filter(|dir| !dir.is_empty()).map(PathBuf::from);
        xdg.or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")))
    };
    let Some(path) = key.or_else(|| state_dir().map(|dir| dir.join("swarm").join("tracker.key"))) else {
        tracing::info!("no --key, $XDG_STATE_HOME or $HOME: the tracker uses a new key pair this run");
        return Ok(Identity::generate());
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Identity::load_or_create(&path).context("--key")
}

/// The live peers as the tracker recorded them, for the story and the loopback warning: those
/// the tracker keeps, but for one whose `PeerGone` was dropped with the events the story had
/// no room for; at most as many as the tracker keeps, [`TRACKER_PEERS_MAX`].
#[derive(Debug, Default)]
struct Story {
    /// Live peers and their recorded addresses.
    peers: BTreeMap<PeerId, SocketAddr>,
    /// Live peers recorded at another host's address.
    remote_count: usize,
    /// Live peers at a loopback or unspecified address not warned about yet (no remote peer
    /// was live since they joined).
    local_unwarned: BTreeMap<PeerId, SocketAddr>,
}

impl Story {
    fn on_event(&mut self, event: &Event) {
        match event {
            Event::PeerAnnounced { peer, file_id, chunks: 0 } => {
                tracing::info!("peer {} wants {}", peer.addr, file_id.short());
                self.joined(*peer);
            }
            Event::PeerAnnounced { peer, file_id, chunks } => {
                let held = report::count(*chunks, "chunk");
                tracing::info!("peer {} holds {} ({held})", peer.addr, file_id.short());
                self.joined(*peer);
            }
            Event::PeerGone { peer, reason } => {
                let why = match reason {
                    GoneReason::Left => "left",
                    GoneReason::Disconnected => "disconnected",
                    GoneReason::Expired => "stopped announcing; forgotten",
                };
                tracing::info!("peer {} {why}", peer.addr);
                self.gone(peer.peer_id);
            }
            _ => {}
        }
    }

    fn joined(&mut self, peer: PeerAddr) {
        // A `PeerGone` the tracker dropped (its events past their room) leaves a peer here that
        // it no longer keeps: past the tracker's own bound, the story stops adding.
        if self.peers.len() >= TRACKER_PEERS_MAX && !self.peers.contains_key(&peer.peer_id) {
            return;
        }
        if self.peers.insert(peer.peer_id, peer.addr).is_some() {
            return;
        }
        if is_local(peer.addr) {
            self.local_unwarned.insert(peer.peer_id, peer.addr);
        } else {
            self.remote_count += 1;
        }
        if self.remote_count > 0 {
            for addr in std::mem::take(&mut self.local_unwarned).into_values() {
                tracing::warn!(
                    "peer recorded at {addr}, a loopback or unspecified address, while other peers are on other \
                     hosts: they cannot reach it (start it with --tracker set to this host's network address)"
                );
            }
        }
    }

    fn gone(&mut self, peer_id: PeerId) {
        let Some(addr) = self.peers.remove(&peer_id) else { return };
        if is_local(addr) {
            self.local_unwarned.remove(&peer_id);
        } else {
            self.remote_count -= 1;
        }
    }
}

/// An address only this host can reach.
fn is_local(addr: SocketAddr) -> bool {
    addr.ip().is_loopback() || addr.ip().is_unspecified()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u8, ip: [u8; 4]) -> PeerAddr {
        PeerAddr { peer_id: PeerId([id; 16]), addr: SocketAddr::from((ip, 7001)) }
    }

    #[test]
    fn a_loopback_peer_is_warned_about_once_when_a_peer_of_another_host_is_live() {
        let mut story = Story::default();
        story.joined(peer(1, [127, 0, 0, 1]));
        story.joined(peer(2, [127, 0, 0, 1]));
        assert_eq!(story.local_unwarned.len(), 2, "all on one host: nothing to warn about");
        story.joined(peer(3, [192, 0, 2, 7]));
        assert!(story.local_unwarned.is_empty(), "warned once each");
        story.joined(peer(4, [0, 0, 0, 0]));
        assert!(story.local_unwarned.is_empty(), "warned at once: a remote peer is live");
        story.gone(PeerId([3; 16]));
        story.joined(peer(5, [127, 0, 0, 1]));
        assert_eq!(story.local_unwarned.len(), 1, "no remote peer live any more");
        assert_eq!(story.remote_count, 0);
    }
}
