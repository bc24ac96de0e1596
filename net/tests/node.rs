//! The public API end to end in one process: a tracker and peers on loopback share and fetch a
//! real file, and a peer restarted on a store holding part of a download fetches only the rest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use p2p_core::{Event, FileId, Manifest, TrackerConfig};
use p2p_net::secure::Keys;
use p2p_net::{spawn_peer, spawn_tracker, NodeEvent, PeerHandle, PeerOptions, Resumed, ShareOptions};
use tokio::sync::mpsc;

const PIECE_BYTES: u32 = 16 * 1024;
const FILE_BYTES: usize = 10 * PIECE_BYTES as usize + 123;

fn write_file(dir: &Path) -> PathBuf {
    let path = dir.join("payload.bin");
    let bytes: Vec<u8> = (0..FILE_BYTES).map(|i| (i * 131 % 251) as u8).collect();
    std::fs::write(&path, bytes).expect("write payload");
    path
}

async fn start_peer(tracker: std::net::SocketAddr, store: PathBuf) -> (PeerHandle, mpsc::UnboundedReceiver<NodeEvent>) {
    let (sender, events) = mpsc::unbounded_channel();
    let peer = spawn_peer(PeerOptions::new(tracker, store), sender).await.expect("peer starts");
    (peer, events)
}

async fn wait_event(events: &mut mpsc::UnboundedReceiver<NodeEvent>, wanted: impl Fn(&NodeEvent) -> bool) -> NodeEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv()).await.expect("event in time").expect("peer alive");
        if wanted(&event) {
            return event;
        }
    }
}

async fn share(peer: &PeerHandle, events: &mut mpsc::UnboundedReceiver<NodeEvent>, path: &Path) -> Manifest {
    let options = ShareOptions { piece_size_bytes: Some(PIECE_BYTES), only_pieces: None };
    let manifest = peer.share(path, options).await.expect("share");
    wait_event(events, |e| matches!(e, NodeEvent::Machine(Event::Sharing { .. }))).await;
    manifest
}

async fn completed(events: &mut mpsc::UnboundedReceiver<NodeEvent>) -> (PathBuf, u64) {
    match wait_event(events, |e| matches!(e, NodeEvent::Completed { .. })).await {
        NodeEvent::Completed { path, received_bytes, .. } => (path, received_bytes),
        _ => unreachable!("matched above"),
    }
}

#[actix_rt::test]
async fn a_peer_fetches_a_shared_file_and_a_restarted_one_fetches_only_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let original = write_file(dir.path());
    let tracker = spawn_tracker("127.0.0.1:0".parse().expect("addr"), TrackerConfig::default(), Keys::new_open())
        .await
        .expect("tracker");
    let (seeder, mut seeder_events) = start_peer(tracker.addr(), dir.path().join("seeder")).await;
    let manifest = share(&seeder, &mut seeder_events, &original).await;
    let file_id: FileId = manifest.file_id();

    let (first, mut first_events) = start_peer(tracker.addr(), dir.path().join("first")).await;
    assert_eq!(first.get(file_id).await.expect("get"), None, "nothing to resume in a new store");
    let (path, received) = completed(&mut first_events).await;
    assert_eq!(std::fs::read(&path).expect("copy"), std::fs::read(&original).expect("original"));
    assert_eq!(received, FILE_BYTES as u64);
    first.stop();

    // A store that verified the chunks of pieces 0..4 in an earlier run: built by hand from the
    // original.
    let store = dir.path().join("second");
    let partial = p2p_net::store::Store::open(&store, &store).expect("store");
    partial.allocate(&manifest);
    let bytes = std::fs::read(&original).expect("original");
    let chunks: Vec<_> = manifest.pieces().take(4).flat_map(|piece| manifest.chunks_of(piece)).collect();
    for &chunk in &chunks {
        let start = manifest.chunk_offset(chunk) as usize;
        let block = &bytes[start..start + manifest.chunk_len(chunk) as usize];
        partial.write_block(file_id, chunk, 0, block).expect("write");
        partial.mark_verified(file_id, chunk).expect("mark");
    }
    partial.persist_bitfield(file_id).expect("persist");
    drop(partial);

    let (second, mut second_events) = start_peer(tracker.addr(), store).await;
    let have = chunks.len() as u32;
    let resumed = Resumed { have, have_bytes: 4 * u64::from(PIECE_BYTES), total: manifest.chunk_count() };
    assert_eq!(second.get(file_id).await.expect("get"), Some(resumed));
    let (path, received) = completed(&mut second_events).await;
    assert_eq!(std::fs::read(&path).expect("copy"), bytes);
    assert_eq!(received, (FILE_BYTES - 4 * PIECE_BYTES as usize) as u64, "only the missing pieces travel");
    second.leave().await;
    second.stop();
    seeder.stop();
    tracker.stop();
}
