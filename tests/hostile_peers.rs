//! Hostile peers inside a private swarm (they hold the swarm key), against the real binaries on
//! loopback: clients that take every inbound slot of a seeder and only keep their connections
//! alive make way for an honest downloader, which completes (a newcomer meanwhile gets the
//! manifest it asks for and is refused); and a holder that sends garbage for the first block of
//! each piece it is asked for (then drops the connection, so the honest seeder finishes the
//! piece) costs the download nothing and never gets the seeder banned; and
//! clients that take every upload slot of a seeder, keep asking for blocks and never read what
//! they are sent give their slots up to an honest downloader, which completes.

mod common;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use p2p_core::limits::{BLOCK_BYTES, CHUNKS_PER_PIECE_MAX, INBOUND_PEERS_MAX, UPLOAD_SLOTS_MIN, UPLOAD_STALL_TIMEOUT};
use p2p_core::manifest::{Manifest, ManifestBuilder};
use p2p_core::wire::{decode_frame, encode_frame, ErrorCode, Hello, Message, Role};
use p2p_core::{Bitfield, ChunkIndex, Digest, FileId, PeerId};
use p2p_net::identity::{Identity, SwarmKey};
use p2p_net::secure::{self, Keys, SecureStream};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::wire::{Received, WireClient, CONNECT_TIMEOUT};
use common::{assert_same_file, path_str, random_file, run_node, stderr_of, subdir, temp_dir, Node, DOWNLOAD_TIMEOUT};

/// How often each hog sends a frame that exchanges no data.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);

#[test]
fn hogs_holding_every_inbound_slot_of_a_seeder_make_way_for_an_honest_downloader() {
    let dir = temp_dir();
    let swarm = PrivateSwarm::new(dir.path());
    let original = random_file(dir.path(), "payload.bin", 2 * 1024 * 1024, 21);
    let (_tracker, tracker_addr) = swarm.tracker();
    let mut seeder = Node::peer(
        "seeder",
        tracker_addr,
        &subdir(dir.path(), "seeder"),
        &swarm.args(&["--share", path_str(&original)]),
    );
    let file_id = seeder.wait_sharing().file_id;

    let hogs: Vec<WireClient> = (0..INBOUND_PEERS_MAX).map(|_| hog(seeder.addr(), swarm.keys(), None)).collect();
    // With every slot taken by connections that exchanged nothing for less than the eviction
    // delay, a newcomer is let in beside them only to have its manifest ask answered.
    let mut one_more = WireClient::connect(None, seeder.addr(), swarm.keys()).expect("a handshake");
    send_hello(&mut one_more, 0);
    match one_more.recv(CONNECT_TIMEOUT) {
        Some(Message::Hello(_)) => {}
        other => panic!("with every slot taken, a newcomer's hello was answered {other:?}"),
    }
    let file: FileId = file_id.parse().expect("a file id");
    one_more.send(&Message::GetManifest { file_id: file });
    match (one_more.recv(CONNECT_TIMEOUT), one_more.recv(CONNECT_TIMEOUT), one_more.recv(CONNECT_TIMEOUT)) {
        (Some(Message::Manifest { manifest }), Some(Message::Error { code: ErrorCode::Overloaded, .. }), None)
            if manifest.file_id() == file => {}
        other => panic!("a newcomer's manifest ask beside the full slots was answered {other:?}"),
    }
    let keepalive = Keepalive::start(hogs);

    let out = subdir(dir.path(), "out");
    let get_args = swarm.args(&["--get", file_id.as_str(), "--out", path_str(&out)]);
    let mut downloader = Node::peer("downloader", tracker_addr, &subdir(dir.path(), "downloader"), &get_args);
    assert_same_file(&downloader.wait_complete(&file_id, DOWNLOAD_TIMEOUT), &original);
    let evicted = keepalive.stop();
    assert!(evicted >= 1, "the downloader completed, yet no hog lost its slot");
    assert!(seeder.is_running(), "{}", seeder.report());
}

/// Piece size of the seeder in the stalled-readers test: one block per chunk.
const STALL_PIECE_BYTES: u32 = BLOCK_BYTES * CHUNKS_PER_PIECE_MAX;
/// Chunks of its file: far more than the socket buffers of a reader that does not read hold.
const STALL_CHUNKS: u32 = 64;
/// The receive buffer of a reader that does not read: small, so the seeder's frames stop
/// leaving after its own send buffer and this fill, well within the head start however busy
/// the machine (a loopback socket's buffer grows to megabytes otherwise).
const STALL_RECV_BUFFER_BYTES: u32 = 64 * 1024;
/// How long the readers that do not read ask for blocks before the honest downloader starts:
/// long enough for their socket buffers to fill, so they hold both slots when it arrives.
const STALL_HEAD_START: Duration = Duration::from_secs(3);

#[test]
fn clients_that_ask_for_blocks_and_never_read_give_their_upload_slots_to_an_honest_downloader() {
    let dir = temp_dir();
    let swarm = PrivateSwarm::new(dir.path());
    let original = random_file(dir.path(), "payload.bin", (STALL_CHUNKS * BLOCK_BYTES) as usize, 41);
    let (_tracker, tracker_addr) = swarm.tracker();
    let piece_size = STALL_PIECE_BYTES.to_string();
    let seeder_args = ["--share", path_str(&original), "--piece-size", piece_size.as_str()];
    let mut seeder = Node::peer("seeder", tracker_addr, &subdir(dir.path(), "seeder"), &swarm.args(&seeder_args));
    let file_id = seeder.wait_sharing().file_id;
    let file: FileId = file_id.parse().expect("a file id");

    let readers = (0..UPLOAD_SLOTS_MIN).map(|_| hog(seeder.addr(), swarm.keys(), Some(STALL_RECV_BUFFER_BYTES)));
    let stalled = StalledReaders::start(readers.collect(), file);
    thread::sleep(STALL_HEAD_START);
    let out = subdir(dir.path(), "out");
    let get_args = swarm.args(&["--get", file_id.as_str(), "--out", path_str(&out)]);
    let mut downloader = Node::peer("downloader", tracker_addr, &subdir(dir.path(), "downloader"), &get_args);
    let started = std::time::Instant::now();
    assert_same_file(&downloader.wait_complete(&file_id, DOWNLOAD_TIMEOUT), &original);
    let took = started.elapsed();
    let counts = stalled.stop();
    println!("the downloader completed in {took:?}; (Data, Busy) frames each reader was sent: {counts:?}");
    for (data, busy) in counts {
        assert!(data >= 1, "a reader that does not read was never served; the test proved nothing");
        assert!(busy >= 1, "a reader whose frames did not leave was never refused");
    }
    assert!(took + STALL_HEAD_START >= UPLOAD_STALL_TIMEOUT, "completed in {took:?}: the slots were not held");
    assert!(seeder.is_running(), "{}", seeder.report());
}

/// Clients that ask a seeder for blocks of `file`, a few every
/// [`StalledReaders::ASK_INTERVAL`] (piece after piece, round and round), on a thread, and read
/// nothing until they are stopped.
struct StalledReaders {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<WireClient>>,
}

impl StalledReaders {
    const ASK_INTERVAL: Duration = Duration::from_millis(250);
    const ASKS_AT_A_TIME: u32 = 4;

    fn start(mut readers: Vec<WireClient>, file_id: FileId) -> StalledReaders {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut next = 0;
            while !stopped.load(Ordering::Relaxed) {
                for reader in &mut readers {
                    for chunk in (next..next + Self::ASKS_AT_A_TIME).map(|c| ChunkIndex(c % STALL_CHUNKS)) {
                        let request = Message::Request { file_id, chunk, offset: 0, len: BLOCK_BYTES };
                        let mut frame = BytesMut::new();
                        encode_frame(&request, &mut frame).expect("fits");
                        // The seeder does not close them; an error would show in the counts.
                        let _ = reader.send_bytes(&frame);
                    }
                }
                next += Self::ASKS_AT_A_TIME;
                thread::sleep(Self::ASK_INTERVAL);
            }
            readers
        });
        StalledReaders { stop, thread }
    }

    /// Stops asking, reads what each was sent; returns the `Data` frames and `Busy` refusals.
    fn stop(self) -> Vec<(usize, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut readers = self.thread.join().expect("the readers' thread");
        let count = |reader: &mut WireClient| {
            let (mut data, mut busy) = (0, 0);
            while let Received::Message(message) = reader.recv_within(Duration::from_millis(500)) {
                match message {
                    Message::Data { .. } => data += 1,
                    Message::Reject { reason: p2p_core::wire::RejectReason::Busy, .. } => busy += 1,
                    _ => {}
                }
            }
            (data, busy)
        };
        readers.iter_mut().map(count).collect()
    }
}

#[test]
fn a_liar_mixing_bad_blocks_into_pieces_the_seeder_finishes_never_gets_the_seeder_banned() {
    let dir = temp_dir();
    let swarm = PrivateSwarm::new(dir.path());
    let piece_size_bytes = 1024 * 1024;
    let original = random_file(dir.path(), "payload.bin", 16 * piece_size_bytes, 31);
    let bytes = std::fs::read(&original).expect("reads the original");
    let (_tracker, tracker_addr) = swarm.tracker();
    // More pieces than one connection is assigned at once, so the liar is asked for some
    // whichever holder the downloader reaches first; and the seeder slowed down, so that the
    // download lasts long enough for the liar to be asked again.
    let seeder_args = ["--share", path_str(&original), "--piece-size", "1048576", "--upload-limit", "3000000"];
    let mut seeder = Node::peer(
        "seeder",
        tracker_addr,
        &subdir(dir.path(), "seeder"),
        &swarm.args(&[&seeder_args[..], &HTTP[..]].concat()),
    );
    let file_id = seeder.wait_sharing().file_id;
    let seeder_id = node_json(seeder.http_addr(), "node")["peer_id"].as_str().expect("an id").to_owned();

    let mut builder = ManifestBuilder::new("payload.bin".to_owned(), piece_size_bytes as u32).expect("a builder");
    builder.update(&bytes);
    let manifest = builder.finish().expect("a manifest");
    assert_eq!(manifest.file_id().to_string(), file_id, "the liar announces the seeder's file");
    let liar = Liar::start(swarm.keys(), manifest, bytes);
    let _registration = liar.announce(tracker_addr);

    let out = subdir(dir.path(), "out");
    let get_args = swarm.args(&["--get", file_id.as_str(), "--out", path_str(&out), "--http", "127.0.0.1:0"]);
    let mut downloader = Node::peer("downloader", tracker_addr, &subdir(dir.path(), "downloader"), &get_args);
    let api = downloader.http_addr();
    assert_same_file(&downloader.wait_complete(&file_id, DOWNLOAD_TIMEOUT), &original);
    let liar_id = liar.keys.identity.peer_id();
    let Tally { connections, requests, lies } = liar.stop();
    let tally = format!("the liar had {connections} connection(s), {requests} request(s)");
    assert!(lies >= 1, "the downloader never asked the liar for a first block ({tally}); the test proved nothing");

    let stats = node_json(api, "node");
    let log = downloader.stderr_tail();
    println!("{tally}, {lies} bad block(s) sent; the downloader's counts: {stats}");
    assert!(!log.contains(&format!("banned peer {seeder_id}")), "the honest seeder was banned:\n{log}");
    assert!(stats["chunks_corrupt"].as_u64() >= Some(1), "the liar's chunks failed their hash: {stats}");
    match stats["peers_banned"].as_u64() {
        Some(0) => {}
        Some(1) => assert!(log.contains(&format!("banned peer {liar_id}")), "one ban, not the liar's:\n{log}"),
        _ => panic!("only the liar may be banned: {stats}\n{log}"),
    }
}

const HTTP: [&str; 2] = ["--http", "127.0.0.1:0"];

/// A private swarm's key, given to the tracker, every node and every hostile client.
struct PrivateSwarm {
    path: std::path::PathBuf,
    key: SwarmKey,
}

impl PrivateSwarm {
    fn new(dir: &Path) -> PrivateSwarm {
        let path = dir.join("swarm.key");
        let made = run_node(&["swarm-key", path_str(&path)], DOWNLOAD_TIMEOUT);
        assert!(made.status.success(), "{}", stderr_of(&made));
        let key = SwarmKey::load(&path).expect("reads the swarm key");
        PrivateSwarm { path, key }
    }

    fn tracker(&self) -> (Node, SocketAddr) {
        let mut tracker =
            Node::spawn("tracker", &["tracker", "--listen", "127.0.0.1:0", "--swarm-key", path_str(&self.path)]);
        let addr = tracker.listening_addr();
        (tracker, addr)
    }

    /// `extra` and the swarm key, as a node's arguments.
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        [extra, &["--swarm-key", path_str(&self.path)]].concat()
    }

    /// A new key pair of this swarm.
    fn keys(&self) -> Keys {
        Keys::new(Identity::generate(), Some(self.key.clone()))
    }
}

fn send_hello(client: &mut WireClient, listen_port: u16) {
    let peer_id = client.peer_id();
    client.send(&Message::Hello(Hello::new(Role::Peer, peer_id, listen_port)));
}

/// A connection to `seeder` past its `Hello`, that will exchange nothing; its socket's receive
/// buffer is `recv_buffer_bytes` when given.
fn hog(seeder: SocketAddr, keys: Keys, recv_buffer_bytes: Option<u32>) -> WireClient {
    let mut client = WireClient::connect_with(None, seeder, keys, recv_buffer_bytes).expect("a handshake");
    send_hello(&mut client, 0);
    match client.recv(CONNECT_TIMEOUT) {
        Some(Message::Hello(_)) => client,
        other => panic!("a hog's hello was answered {other:?}"),
    }
}

/// The hogs, each sending a frame every [`KEEPALIVE_INTERVAL`] on a thread, which notes those
/// the seeder closed.
struct Keepalive {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<usize>,
}

impl Keepalive {
    fn start(mut hogs: Vec<WireClient>) -> Keepalive {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut evicted = vec![false; hogs.len()];
            let unknown = FileId(p2p_core::Digest([0xab; 32]));
            while !stopped.load(Ordering::Relaxed) {
                for (hog, gone) in hogs.iter_mut().zip(evicted.iter_mut()).filter(|(_, gone)| !**gone) {
                    // An error is the seeder's close, seen next.
                    let _ = hog_ping(hog, unknown);
                    *gone = was_evicted(hog);
                }
                thread::sleep(KEEPALIVE_INTERVAL);
            }
            hogs.iter_mut().zip(evicted).filter_map(|(hog, gone)| (gone || was_evicted(hog)).then_some(())).count()
        });
        Keepalive { stop, thread }
    }

    /// Stops the thread; returns how many hogs lost their slot.
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the keepalive thread")
    }
}

/// Whether the seeder told `hog` it lost its slot, or closed its connection.
fn was_evicted(hog: &mut WireClient) -> bool {
    loop {
        match hog.recv_within(Duration::from_millis(1)) {
            Received::Closed | Received::Message(Message::Error { code: ErrorCode::Overloaded, .. }) => return true,
            Received::Message(_) => {}
            Received::Nothing => return false,
        }
    }
}

/// A frame that exchanges no data: a `Have` of a file the seeder does not know.
fn hog_ping(hog: &mut WireClient, unknown: FileId) -> std::io::Result<()> {
    let mut frame = BytesMut::new();
    encode_frame(&Message::Have { file_id: unknown, chunk: p2p_core::ChunkIndex(0) }, &mut frame).expect("fits");
    hog.send_bytes(&frame)
}

/// A holder of the whole file that answers a request for the first block of a piece with a
/// corrupted copy and then drops the connection; any other block it sends correctly.
struct Liar {
    addr: SocketAddr,
    keys: Keys,
    file: Arc<(Manifest, Vec<u8>)>,
    tally: Arc<[AtomicUsize; 3]>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Liar {
    fn start(keys: Keys, manifest: Manifest, bytes: Vec<u8>) -> Liar {
        let listener = StdListener::bind("127.0.0.1:0").expect("binds a port");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("an address");
        let file = Arc::new((manifest, bytes));
        let (tally, stop) = (Arc::new([(); 3].map(|_| AtomicUsize::new(0))), Arc::new(AtomicBool::new(false)));
        let (keys2, file2, tally2, stop2) = (keys.clone(), Arc::clone(&file), Arc::clone(&tally), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                while !stop2.load(Ordering::Relaxed) {
                    let accepted = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
                    if let Ok(Ok((stream, _))) = accepted {
                        let (keys, file, tally) = (keys2.clone(), Arc::clone(&file2), Arc::clone(&tally2));
                        tokio::spawn(async move {
                            if let Ok(stream) = secure::accept(stream, &keys).await {
                                tally[0].fetch_add(1, Ordering::Relaxed);
                                lie(stream, keys.identity.peer_id(), addr.port(), &file, &tally).await;
                            }
                        });
                    }
                }
            });
        });
        Liar { addr, keys, file, tally, stop, thread }
    }

    /// Registers the liar at the tracker as a holder of the whole file; the registration lasts
    /// while the returned connection is open.
    fn announce(&self, tracker: SocketAddr) -> WireClient {
        let mut client = WireClient::connect(None, tracker, self.keys.clone()).expect("a handshake");
        send_hello(&mut client, self.addr.port());
        assert!(matches!(client.recv(CONNECT_TIMEOUT), Some(Message::Hello(_))), "the tracker said hello");
        let manifest = self.file.0.clone();
        let have = Bitfield::full(manifest.chunk_count());
        client.send(&Message::Announce { file_id: manifest.file_id(), manifest: Some(Box::new(manifest)), have });
        match client.recv(CONNECT_TIMEOUT) {
            Some(Message::Announced { .. }) => client,
            other => panic!("the liar's announce was answered {other:?}"),
        }
    }

    /// Stops accepting; returns what it did.
    fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the liar's thread");
        let [connections, requests, lies] = self.tally.as_ref().each_ref().map(|n| n.load(Ordering::Relaxed));
        Tally { connections, requests, lies }
    }
}

/// What the liar saw and did: connections past their handshake, block requests, bad blocks sent.
struct Tally {
    connections: usize,
    requests: usize,
    lies: usize,
}

/// One connection of the liar, until it lies once or the remote closes.
async fn lie(
    mut stream: SecureStream,
    peer_id: PeerId,
    port: u16,
    file: &(Manifest, Vec<u8>),
    tally: &[AtomicUsize; 3],
) {
    let (manifest, bytes) = file;
    let mut buffer = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Ok(Some(message)) = decode_frame(&mut buffer) {
            let answer = match message {
                Message::Hello(_) => {
                    let hello = Hello::new(Role::Peer, peer_id, port);
                    vec![Message::Hello(hello)]
                }
                // As an honest holder does, it answers the downloader's bitfield with its own
                // (sent earlier, it could arrive before the downloader knows the manifest).
                Message::Bitfield { file_id, .. } if file_id == manifest.file_id() => {
                    vec![Message::Bitfield { file_id, have: Bitfield::full(manifest.chunk_count()) }]
                }
                Message::Request { file_id, chunk, offset, len } => {
                    tally[1].fetch_add(1, Ordering::Relaxed);
                    let start = usize::try_from(manifest.chunk_offset(chunk)).expect("fits") + offset as usize;
                    let mut block = bytes[start..start + len as usize].to_vec();
                    // The true list of the chunk's piece, as an honest holder sends it first.
                    let piece = manifest.piece_of(chunk);
                    let digests = manifest
                        .chunks_of(piece)
                        .map(|c| {
                            let at = usize::try_from(manifest.chunk_offset(c)).expect("fits");
                            Digest::of(&bytes[at..at + manifest.chunk_len(c) as usize])
                        })
                        .collect();
                    let list = Message::Chunks { file_id, piece, digests };
                    if offset == 0 {
                        block[0] ^= 0xff;
                        let data = Message::Data { file_id, chunk, offset, bytes: Bytes::from(block) };
                        send(&mut stream, &[list, data]).await;
                        tally[2].fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    vec![list, Message::Data { file_id, chunk, offset, bytes: Bytes::from(block) }]
                }
                _ => Vec::new(),
            };
            send(&mut stream, &answer).await;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn send(stream: &mut SecureStream, messages: &[Message]) {
    let mut frames = BytesMut::new();
    for message in messages {
        encode_frame(message, &mut frames).expect("fits a frame");
    }
    // A write error is the remote's close, seen by the next read.
    let _ = stream.write_all(&frames).await;
    let _ = stream.flush().await;
}

/// `GET /api/v1/{path}` of a node's API, as JSON.
fn node_json(api: SocketAddr, path: &str) -> Value {
    let response = ureq::get(&format!("http://{api}/api/v1/{path}")).call().expect("the API answers");
    response.into_json().expect("JSON")
}
