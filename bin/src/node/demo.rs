//! `p2p-node demo`: the seed's example, told as it happens, in one process on real sockets.
//!
//! A tracker and peers A, B, C, D run on 127.0.0.1 (port 0) in a temporary folder. A, B and C
//! each hold one piece of a generated 3-piece file; D asks the tracker, fetches the three pieces
//! from the three holders at once and its copy is checked byte for byte. Then A, B and C leave,
//! and E downloads the file from D alone. Every line of the story comes from a node event.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use p2p_core::{Event, FileId, TrackerConfig};
use p2p_net::secure::Keys;
use p2p_net::{spawn_peer, spawn_tracker, NodeEvent, PeerHandle, PeerOptions, ShareOptions};
use tokio::sync::mpsc;

/// Piece size of the generated file.
const PIECE_BYTES: u32 = 256 * 1024;
/// Pieces of the generated file.
const PIECE_COUNT: u32 = 3;
/// Longest a step of the story may take before the demo gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// An event and the name of the peer that reported it.
type Tagged = (&'static str, NodeEvent);

/// The running demo: its folder, nodes and the story's clock.
struct Demo {
    dir: tempfile::TempDir,
    tracker: SocketAddr,
    start: Instant,
    names: BTreeMap<SocketAddr, &'static str>,
    peers: BTreeMap<&'static str, PeerHandle>,
    events: mpsc::UnboundedReceiver<Tagged>,
    sender: mpsc::UnboundedSender<Tagged>,
}

/// Runs the whole story; the temporary folder is removed at the end, pass or fail.
pub async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let original = write_example_file(dir.path())?;
    let tracker = spawn_tracker(SocketAddr::from(([127, 0, 0, 1], 0)), TrackerConfig::default(), Keys::new_open())
        .await
        .context("cannot start the tracker")?;
    let (sender, events) = mpsc::unbounded_channel();
    let mut demo = Demo {
        dir,
        tracker: tracker.addr(),
        start: Instant::now(),
        names: BTreeMap::new(),
        peers: BTreeMap::new(),
        events,
        sender,
    };
    demo.say(&format!("tracker listening on {}", tracker.addr()));
    let result = demo.story(&original).await;
    for peer in demo.peers.values() {
        peer.stop();
    }
    tracker.stop();
    if result.is_ok() {
        demo.say("done; the temporary folder is removed");
    }
    result
}

impl Demo {
    async fn story(&mut self, original: &Path) -> anyhow::Result<()> {
        let mut file_id = None;
        for (name, piece) in [("A", 0u32), ("B", 1), ("C", 2)] {
            self.start_peer(name).await?;
            let options = ShareOptions { piece_size_bytes: Some(PIECE_BYTES), only_pieces: Some(vec![piece]) };
            let manifest = self.peers[name].share(original, options).await?;
            file_id = Some(manifest.file_id());
            self.wait_for(name, |e| matches!(e, NodeEvent::Machine(Event::Sharing { .. }))).await?;
        }
        let file_id = file_id.context("no file shared")?;
        self.say(&format!("the file is {} ({} pieces of {} KiB)", file_id.short(), PIECE_COUNT, PIECE_BYTES / 1024));

        let copy = self.download("D", file_id).await?;
        ensure_same(original, &copy)?;
        self.say("D's copy is identical to the original, byte for byte");

        for name in ["A", "B", "C"] {
            if let Some(peer) = self.peers.remove(name) {
                peer.leave().await;
                peer.stop();
                self.say(&format!("{name} leaves (the tracker forgets it)"));
            }
        }
        let copy = self.download("E", file_id).await?;
        ensure_same(original, &copy)?;
        self.say("E's copy, fetched from D alone, is identical too");
        Ok(())
    }

    async fn start_peer(&mut self, name: &'static str) -> anyhow::Result<()> {
        let store = self.dir.path().join(name);
        let options = PeerOptions::new(self.tracker, store);
        let (sender, mut events) = mpsc::unbounded_channel();
        let peer = spawn_peer(options, sender).await.with_context(|| format!("cannot start peer {name}"))?;
        let all = self.sender.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if all.send((name, event)).is_err() {
                    return;
                }
            }
        });
        self.say(&format!("peer {name} listening on {}", peer.addr()));
        self.names.insert(peer.addr(), name);
        self.peers.insert(name, peer);
        Ok(())
    }

    /// Starts `name`, has it get `file_id` and tells what happens until it completes.
    async fn download(&mut self, name: &'static str, file_id: FileId) -> anyhow::Result<PathBuf> {
        self.start_peer(name).await?;
        self.say(&format!("{name} wants {}", file_id.short()));
        self.peers[name].get(file_id).await?;
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        // Requests made before the first piece arrived: they were all in flight at once.
        let mut requested_at_once = Some(0u32);
        loop {
            let Ok(Some((who, event))) = tokio::time::timeout_at(deadline, self.events.recv()).await else {
                bail!("{name} did not finish the download in {STEP_TIMEOUT:?}");
            };
            match (&event, requested_at_once) {
                (NodeEvent::Machine(Event::ChunkRequested { .. }), Some(count)) if who == name => {
                    requested_at_once = Some(count + 1);
                }
                (NodeEvent::Machine(Event::ChunkVerified { .. }), Some(count)) if who == name => {
                    self.say(&format!("{name} had {count} requests in flight at once when the first chunk arrived"));
                    requested_at_once = None;
                }
                _ => {}
            }
            if let NodeEvent::Completed { path, received_bytes, .. } = &event {
                if who == name {
                    self.say(&format!("{name} has the file at {} ({received_bytes} bytes fetched)", path.display()));
                    return Ok(path.clone());
                }
            }
            if let NodeEvent::Machine(event) = event {
                self.narrate(who, &event)?;
            }
        }
    }

    /// Waits for an event of `name` matching `wanted`; other events are narrated meanwhile.
    async fn wait_for(&mut self, name: &str, wanted: impl Fn(&NodeEvent) -> bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            let Ok(Some((who, event))) = tokio::time::timeout_at(deadline, self.events.recv()).await else {
                bail!("peer {name} did not get going in {STEP_TIMEOUT:?}");
            };
            let matched = who == name && wanted(&event);
            if let NodeEvent::Machine(event) = event {
                self.narrate(who, &event)?;
            }
            if matched {
                return Ok(());
            }
        }
    }

    fn narrate(&self, who: &str, event: &Event) -> anyhow::Result<()> {
        let line = match event {
            Event::Sharing { pieces, .. } => format!("{who} shares {pieces} piece(s); the tracker acknowledged"),
            Event::LocateSent { .. } => format!("{who} asks the tracker: where are the chunks?"),
            Event::Located { holders, .. } => {
                let answer: Vec<String> =
                    holders.iter().map(|(chunk, at)| format!("chunk {chunk} @ {}", self.name_all(at))).collect();
                format!("tracker answers {who}: {}", answer.join(", "))
            }
            Event::ChunkRequested { chunk, from, .. } => {
                format!("{who} requests chunk {chunk} from {}", self.name(*from))
            }
            Event::ChunkVerified { chunk, from, progress, .. } => {
                format!("{who} verified chunk {chunk} from {} ({}/{})", self.name(*from), progress.have, progress.total)
            }
            Event::BlockServed { chunk, len, .. } => format!("{who} sent {len} bytes of chunk {chunk}"),
            Event::ChunkCorrupt { chunk, from, .. } => {
                format!("{who}: chunk {chunk} from {} was corrupt", self.name(*from))
            }
            Event::DownloadFailed { reason, .. } => bail!("{who}'s download failed: {reason}"),
            _ => return Ok(()),
        };
        self.say(&line);
        Ok(())
    }

    fn name(&self, addr: SocketAddr) -> String {
        self.names.get(&addr).map_or_else(|| addr.to_string(), |name| (*name).to_owned())
    }

    fn name_all(&self, addrs: &[SocketAddr]) -> String {
        if addrs.is_empty() {
            return "nobody".into();
        }
        addrs.iter().map(|addr| self.name(*addr)).collect::<Vec<_>>().join("+")
    }

    fn say(&self, line: &str) {
        println!("[{:>5} ms] {line}", self.start.elapsed().as_millis());
    }
}

/// Writes the example file: 3 pieces of pseudo-random bytes.
fn write_example_file(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("seed-example.bin");
    let mut state = 0x5eed_u64;
    let bytes: Vec<u8> = (0..PIECE_BYTES * PIECE_COUNT)
        .map(|_| {
            // xorshift: any bytes do, as long as the pieces differ.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn ensure_same(original: &Path, copy: &Path) -> anyhow::Result<()> {
    let read = |path: &Path| std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
    ensure!(read(original)? == read(copy)?, "{} differs from the original", copy.display());
    Ok(())
}
