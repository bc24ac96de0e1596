//! Tracker behaviour, driven only through `handle` / `poll_output` / `poll_timeout`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::*;
use crate::bitfield::Bitfield;
use crate::error::DecodeError;
use crate::ids::{ChunkIndex, Digest};
use crate::limits::{
    FRAME_BYTES_MAX, HANDSHAKE_TIMEOUT, HOLDERS_PER_PIECE_MAX, IDLE_TIMEOUT, LOCATED_PEERS_MAX,
    LOCATED_PEERS_NAMED_MAX, LOCATE_PARK_SETTLE_TIME, LOCATE_PARK_TIME, PARKED_ASKS_PER_CONN_MAX, PIECES_MAX,
    PIECE_BYTES_MIN, TRACKER_FILES_PER_IP_MAX, TRACKER_FILES_PER_PEER_MAX, TRACKER_MANIFEST_BYTES_PER_IP_MAX,
    TRACKER_MANIFEST_BYTES_PER_PEER_MAX,
};
use crate::manifest::Manifest;

const PIECE_BYTES: u32 = 16 * 1024;

/// A tracker, a virtual clock, and helpers that drain after every input.
struct Harness {
    tracker: Tracker,
    now: Time,
    /// Check the registry's invariants after every input (O(state): off for big tests).
    check: bool,
}

/// One connection as a test sees it.
#[derive(Clone, Copy, Debug)]
struct Remote {
    conn: ConnId,
    ip: [u8; 4],
    port: u16,
}

impl Remote {
    fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(self.ip)), self.port)
    }
}

impl Harness {
    fn new(seed: u64) -> Harness {
        Harness {
            tracker: Tracker::new(TrackerConfig { peer_id: PeerId::from_seed(seed), seed, ..TrackerConfig::default() }),
            now: Time::ZERO,
            check: true,
        }
    }

    fn input(&mut self, input: Input) -> Vec<Output> {
        self.tracker.handle(self.now, input);
        if self.check {
            self.tracker.registry.check_invariants();
        }
        std::iter::from_fn(|| self.tracker.poll_output()).collect()
    }

    fn connect(&mut self, n: u64, ip: [u8; 4]) -> Remote {
        // The source port is ephemeral and never what others are told.
        let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), 50_000);
        assert!(self.input(Input::Connected { conn: ConnId::Inbound(n), remote, peer_id: id_of(n) }).is_empty());
        Remote { conn: ConnId::Inbound(n), ip, port: 0 }
    }

    fn send(&mut self, remote: Remote, message: Message) -> Vec<Output> {
        self.input(Input::Message { conn: remote.conn, message })
    }

    /// Connects and completes the handshake with `role`, listening on `port`.
    fn join(&mut self, n: u64, role: Role, port: u16) -> Remote {
        let remote = Remote { port, ..self.connect(n, [10, 0, 0, n as u8]) };
        let outputs = self.send(remote, hello(role, n, port));
        assert!(matches!(&outputs[..], [Output::Send { message: Message::Hello(h), .. }] if h.role == Role::Tracker));
        remote
    }

    fn peer(&mut self, n: u64) -> Remote {
        self.join(n, Role::Peer, 6000 + n as u16)
    }

    fn announce(&mut self, remote: Remote, manifest: &Manifest, chunks: &[u32]) -> Vec<Output> {
        let message = Message::Announce {
            file_id: manifest.file_id(),
            manifest: Some(Box::new(manifest.clone())),
            have: have(manifest, chunks),
        };
        self.send(remote, message)
    }

    /// The answer to a `Locate`, as the peers named and, per chunk, indices into them.
    fn locate(&mut self, remote: Remote, manifest: &Manifest) -> (Vec<PeerAddr>, Vec<Vec<u16>>) {
        let outputs = self.send(remote, Message::Locate { file_id: manifest.file_id(), with_manifest: false });
        match only_message(&outputs) {
            Message::Located { file_id, manifest: got, holders } => {
                assert_eq!(*file_id, manifest.file_id());
                assert_eq!(*got, None, "not asked for");
                assert_eq!(holders.chunk_count(), manifest.chunk_count());
                let (peers, have): (Vec<PeerAddr>, Vec<Bitfield>) = holders.iter().unzip();
                let holders = manifest
                    .chunks()
                    .map(|chunk| (0..peers.len()).filter(|i| have[*i].has(chunk)).map(|i| i as u16).collect())
                    .collect();
                (peers, holders)
            }
            other => panic!("expected Located, got {other:?}"),
        }
    }

    /// The answer to a peer's `Locate` of a file the tracker does not know: parked, answered
    /// when its time is up.
    fn locate_unknown(&mut self, remote: Remote, file_id: FileId) -> Vec<Output> {
        let parked = self.send(remote, Message::Locate { file_id, with_manifest: false });
        assert!(parked.is_empty(), "a peer's ask of an unknown file is parked: {parked:?}");
        self.advance(LOCATE_PARK_TIME)
    }

    fn advance(&mut self, span: Duration) -> Vec<Output> {
        self.now = self.now + span;
        assert!(self.tracker.poll_timeout().is_some_and(|t| t <= self.now), "a timer is due");
        self.input(Input::Timeout)
    }
}

/// The id the remote of connection `n` proves (its key's, on TCP).
fn id_of(n: u64) -> PeerId {
    let mut peer_id = [0u8; 16];
    peer_id[..8].copy_from_slice(&n.to_be_bytes());
    PeerId(peer_id)
}

/// The `Hello` of the remote that proved `id_of(n)`.
fn hello(role: Role, n: u64, port: u16) -> Message {
    Message::Hello(Hello::new(role, id_of(n), port))
}

fn manifest(name: &str, chunks: u32) -> Manifest {
    let hashes = (0..chunks).map(|i| Digest::of(&i.to_be_bytes())).collect();
    Manifest::new(name.to_owned(), u64::from(chunks) * u64::from(PIECE_BYTES), PIECE_BYTES, hashes).expect("valid")
}

fn have(manifest: &Manifest, chunks: &[u32]) -> Bitfield {
    let mut field = Bitfield::new(manifest.chunk_count());
    for &chunk in chunks {
        field.set(ChunkIndex(chunk));
    }
    field
}

fn only_message(outputs: &[Output]) -> &Message {
    match outputs {
        [Output::Send { message, .. }] => message,
        other => panic!("expected one message, got {other:?}"),
    }
}

fn error_code(outputs: &[Output]) -> ErrorCode {
    match only_message(outputs) {
        Message::Error { code, .. } => *code,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn is_closed(outputs: &[Output], conn: ConnId) -> bool {
    outputs.iter().any(|o| *o == Output::Close { conn })
}

fn gone(outputs: &[Output]) -> Vec<(SocketAddr, GoneReason)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Event(Event::PeerGone { peer, reason }) => Some((peer.addr, *reason)),
            _ => None,
        })
        .collect()
}

/// Per chunk, the addresses a `Located` answer names.
fn holder_addrs(located: &(Vec<PeerAddr>, Vec<Vec<u16>>)) -> Vec<Vec<SocketAddr>> {
    let (peers, holders) = located;
    holders.iter().map(|list| list.iter().map(|&i| peers[usize::from(i)].addr).collect()).collect()
}

#[test]
fn handshake_answers_with_the_trackers_hello() {
    let mut h = Harness::new(1);
    let a = h.connect(1, [10, 0, 0, 1]);
    let outputs = h.send(a, hello(Role::Peer, 1, 6001));
    match only_message(&outputs) {
        Message::Hello(reply) => {
            assert_eq!(reply.version, PROTOCOL_VERSION);
            assert_eq!(reply.role, Role::Tracker);
            assert_eq!(reply.peer_id, h.tracker.peer_id());
            assert_eq!(reply.listen_port, 0);
        }
        other => panic!("expected Hello, got {other:?}"),
    }
}

#[test]
fn version_mismatch_is_refused_and_closed() {
    let mut h = Harness::new(1);
    let a = h.connect(1, [10, 0, 0, 1]);
    let mut bad = Hello { version: PROTOCOL_VERSION + 1, ..Hello::new(Role::Peer, PeerId([1; 16]), 1) };
    let outputs = h.send(a, Message::Hello(bad.clone()));
    assert!(matches!(
        &outputs[0],
        Output::Send { message: Message::Error { code: ErrorCode::VersionMismatch, .. }, .. }
    ));
    assert!(is_closed(&outputs, a.conn));
    assert!(outputs.iter().any(|o| matches!(o, Output::Event(Event::ProtocolViolation { .. }))));
    bad.version = PROTOCOL_VERSION;
    assert!(h.send(a, Message::Hello(bad)).is_empty(), "a closed connection is ignored");
}

#[test]
fn a_message_before_hello_is_refused_and_closed() {
    let mut h = Harness::new(1);
    let a = h.connect(1, [10, 0, 0, 1]);
    let outputs = h.send(a, Message::List);
    assert!(matches!(
        &outputs[0],
        Output::Send { message: Message::Error { code: ErrorCode::HandshakeExpected, .. }, .. }
    ));
    assert!(is_closed(&outputs, a.conn));
}

#[test]
fn silent_connection_is_closed_after_the_handshake_timeout() {
    let mut h = Harness::new(1);
    let a = h.connect(1, [10, 0, 0, 1]);
    assert_eq!(h.tracker.poll_timeout(), Some(Time::ZERO + HANDSHAKE_TIMEOUT));
    let outputs = h.advance(HANDSHAKE_TIMEOUT);
    assert!(is_closed(&outputs, a.conn));
    assert_eq!(h.tracker.poll_timeout(), None);
}

#[test]
fn idle_connection_is_closed_and_its_peer_forgotten() {
    let mut h = Harness::new(1);
    let a = h.join(1, Role::Client, 0);
    assert_eq!(h.tracker.poll_timeout(), Some(Time::ZERO + IDLE_TIMEOUT));
    h.now = h.now + Duration::from_secs(30);
    h.send(a, Message::List);
    assert_eq!(h.tracker.poll_timeout(), Some(h.now + IDLE_TIMEOUT), "activity moves the idle deadline");
    let outputs = h.advance(IDLE_TIMEOUT);
    assert!(is_closed(&outputs, a.conn));
}

#[test]
fn announce_with_manifest_is_recorded_and_reported_once() {
    let mut h = Harness::new(1);
    let file = manifest("f", 3);
    let a = h.peer(1);
    let outputs = h.announce(a, &file, &[0, 2]);
    let peer = PeerAddr { peer_id: PeerId([0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]), addr: a.addr() };
    assert_eq!(
        outputs,
        vec![
            Output::Event(Event::PeerAnnounced { peer, file_id: file.file_id(), chunks: 2 }),
            Output::Send { conn: a.conn, message: Message::Announced { file_id: file.file_id() } },
        ]
    );
    let again = h.announce(a, &file, &[0, 1, 2]);
    assert_eq!(only_message(&again), &Message::Announced { file_id: file.file_id() }, "no second PeerAnnounced");
}

#[test]
fn announce_without_manifest_of_an_unknown_file_asks_for_it() {
    let mut h = Harness::new(1);
    let file = manifest("f", 3);
    let a = h.peer(1);
    let outputs = h.send(a, Message::Announce { file_id: file.file_id(), manifest: None, have: have(&file, &[0]) });
    assert_eq!(
        only_message(&outputs),
        &Message::error(Some(file.file_id()), ErrorCode::UnknownFile, "unknown file; send the manifest")
    );
    h.announce(a, &file, &[0]);
    let b = h.peer(2);
    let outputs = h.send(b, Message::Announce { file_id: file.file_id(), manifest: None, have: have(&file, &[1]) });
    let reply = Output::Send { conn: b.conn, message: Message::Announced { file_id: file.file_id() } };
    assert_eq!(outputs.last(), Some(&reply), "a known file needs no manifest");
}

#[test]
fn announce_with_a_wrong_manifest_or_bitfield_is_a_bad_request() {
    let mut h = Harness::new(1);
    let (file, other) = (manifest("f", 3), manifest("g", 3));
    let a = h.peer(1);
    let wrong_id =
        Message::Announce { file_id: other.file_id(), manifest: Some(Box::new(file.clone())), have: have(&file, &[]) };
    assert_eq!(error_code(&h.send(a, wrong_id)), ErrorCode::BadRequest);
    let wrong_len =
        Message::Announce { file_id: file.file_id(), manifest: Some(Box::new(file.clone())), have: Bitfield::new(4) };
    let outputs = h.send(a, wrong_len);
    assert_eq!(error_code(&outputs), ErrorCode::BadRequest);
    assert!(!is_closed(&outputs, a.conn));
    let d = h.peer(4);
    let outputs = h.locate_unknown(d, file.file_id());
    assert_eq!(error_code(&outputs), ErrorCode::UnknownFile, "refused announces register nothing");
    assert!(announced(&h.announce(a, &other, &[0])));
    let known_id_other_manifest =
        Message::Announce { file_id: other.file_id(), manifest: Some(Box::new(file.clone())), have: have(&other, &[]) };
    assert_eq!(error_code(&h.send(d, known_id_other_manifest)), ErrorCode::BadRequest, "a known file's id, too");
}

#[test]
fn located_lists_each_chunks_holders_at_their_announced_addresses() {
    let mut h = Harness::new(1);
    let file = manifest("abc", 3);
    let (a, b, c, d) = (h.peer(1), h.peer(2), h.peer(3), h.peer(4));
    h.announce(a, &file, &[0]);
    h.announce(b, &file, &[1]);
    h.announce(c, &file, &[2]);
    h.announce(d, &file, &[]);
    let located = h.locate(d, &file);
    assert_eq!(located.0.len(), 3);
    assert_eq!(holder_addrs(&located), vec![vec![a.addr()], vec![b.addr()], vec![c.addr()]]);
    assert_eq!(a.addr(), "10.0.0.1:6001".parse().expect("valid address"), "source IP + Hello's listen port");
}

#[test]
fn the_asker_is_never_named_to_itself() {
    let mut h = Harness::new(1);
    let file = manifest("f", 2);
    let (a, b) = (h.peer(1), h.peer(2));
    h.announce(a, &file, &[0, 1]);
    h.announce(b, &file, &[1]);
    let located = h.locate(a, &file);
    assert_eq!(holder_addrs(&located), vec![vec![], vec![b.addr()]]);
}

#[test]
fn holders_per_piece_and_peers_per_answer_are_capped() {
    let mut h = Harness::new(1);
    let file = manifest("f", 200);
    let all: Vec<u32> = (0..200).collect();
    for n in 1..=20 {
        let p = h.peer(n);
        h.announce(p, &file, &all);
    }
    let asker = h.join(99, Role::Client, 0);
    let located = h.locate(asker, &file);
    assert!(located.1.iter().all(|list| list.len() == HOLDERS_PER_PIECE_MAX));
    assert!(located.0.len() <= LOCATED_PEERS_NAMED_MAX);
    // Each chunk names distinct peers.
    for list in &located.1 {
        let mut sorted = list.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), list.len());
    }
    // 200 single-chunk holders: past its peer cap the answer names one holder of each chunk
    // still without one, up to what a peer accepts, before every chunk has a holder.
    let mut h = Harness::new(1);
    for n in 0..200 {
        let p = h.peer(n + 1);
        h.announce(p, &file, &[n as u32]);
    }
    let asker = h.join(999, Role::Client, 0);
    let (peers, holders) = h.locate(asker, &file);
    assert_eq!(peers.len(), LOCATED_PEERS_MAX);
    assert_eq!(holders.iter().filter(|list| !list.is_empty()).count(), LOCATED_PEERS_MAX);
}

#[test]
fn a_peer_that_stops_announcing_expires_and_reannouncing_refreshes() {
    let mut h = Harness::new(1);
    let file = manifest("f", 1);
    let (a, b, d) = (h.peer(1), h.peer(2), h.peer(4));
    h.announce(a, &file, &[0]);
    h.announce(b, &file, &[0]);
    let ttl = ANNOUNCE_INTERVAL_DEFAULT * TTL_INTERVALS_COUNT;
    h.now = h.now + ttl / 2;
    h.announce(b, &file, &[0]);
    h.send(a, Message::List); // traffic keeps the connection, not the registration
    let outputs = h.advance(ttl / 2);
    assert_eq!(gone(&outputs), vec![(a.addr(), GoneReason::Expired)]);
    assert!(!is_closed(&outputs, a.conn), "expiry forgets the peer, not its connection");
    assert_eq!(holder_addrs(&h.locate(d, &file)), vec![vec![b.addr()]]);
    let outputs = h.advance(ttl / 2);
    assert_eq!(gone(&outputs), vec![(b.addr(), GoneReason::Expired)]);
    assert_eq!(error_code(&h.locate_unknown(d, file.file_id())), ErrorCode::UnknownFile);
}

#[test]
fn a_peers_ask_before_the_file_is_known_is_answered_a_settle_time_after_the_first_announce() {
    let mut h = Harness::new(1);
    let file = manifest("f", 1);
    let (a, b, d) = (h.peer(1), h.peer(2), h.peer(4));
    let client = h.join(5, Role::Client, 0);
    let ask = Message::Locate { file_id: file.file_id(), with_manifest: false };
    assert!(h.send(d, ask.clone()).is_empty(), "parked");
    assert_eq!(error_code(&h.send(client, ask)), ErrorCode::UnknownFile, "a client is answered at once");
    let announced = h.announce(a, &file, &[0]);
    assert!(!announced.iter().any(|o| matches!(o, Output::Send { conn, .. } if *conn == d.conn)), "not yet");
    h.now = h.now + LOCATE_PARK_SETTLE_TIME / 2;
    h.announce(b, &file, &[0]);
    let outputs = h.advance(LOCATE_PARK_SETTLE_TIME / 2);
    match only_message(&outputs) {
        Message::Located { holders, .. } => {
            let named: Vec<SocketAddr> = holders.peers().map(|peer| peer.addr).collect();
            assert_eq!(named.len(), 2, "both seeders that announced meanwhile: {named:?}");
        }
        other => panic!("expected Located, got {other:?}"),
    }
    assert!(h.advance(LOCATE_PARK_TIME).is_empty(), "answered once");
}

#[test]
fn parked_asks_are_bounded_per_connection_and_a_closed_ones_are_dropped() {
    let mut h = Harness::new(1);
    let (d, e) = (h.peer(4), h.peer(5));
    let files: Vec<Manifest> = (0..=PARKED_ASKS_PER_CONN_MAX).map(|n| manifest(&format!("f{n}"), 1)).collect();
    for file in &files[..PARKED_ASKS_PER_CONN_MAX] {
        assert!(h.send(d, Message::Locate { file_id: file.file_id(), with_manifest: false }).is_empty());
    }
    let past = Message::Locate { file_id: files[PARKED_ASKS_PER_CONN_MAX].file_id(), with_manifest: false };
    assert_eq!(error_code(&h.send(d, past)), ErrorCode::UnknownFile, "past the bound: answered at once");
    assert!(h.send(e, Message::Locate { file_id: files[0].file_id(), with_manifest: false }).is_empty());
    h.input(Input::Disconnected { conn: e.conn });
    let outputs = h.advance(LOCATE_PARK_TIME);
    assert_eq!(outputs.len(), PARKED_ASKS_PER_CONN_MAX, "d's asks, none to the closed e: {outputs:?}");
    assert!(outputs.iter().all(|o| matches!(o, Output::Send { conn, .. } if *conn == d.conn)));
}

#[test]
fn disconnect_forgets_the_peer_at_once() {
    let mut h = Harness::new(1);
    let file = manifest("f", 1);
    let (a, d) = (h.peer(1), h.peer(4));
    h.announce(a, &file, &[0]);
    let outputs = h.input(Input::Disconnected { conn: a.conn });
    assert_eq!(gone(&outputs), vec![(a.addr(), GoneReason::Disconnected)]);
    assert!(!is_closed(&outputs, a.conn), "no Close for a connection already closed");
    assert_eq!(error_code(&h.locate_unknown(d, file.file_id())), ErrorCode::UnknownFile);
}

#[test]
fn leave_forgets_one_file_or_every_file() {
    let mut h = Harness::new(1);
    let (f, g) = (manifest("f", 1), manifest("g", 1));
    let (a, d) = (h.peer(1), h.peer(4));
    h.announce(a, &f, &[0]);
    h.announce(a, &g, &[0]);
    let outputs = h.send(a, Message::Leave { file_id: Some(f.file_id()) });
    assert!(outputs.is_empty(), "still a holder of g");
    assert_eq!(error_code(&h.locate_unknown(d, f.file_id())), ErrorCode::UnknownFile);
    assert_eq!(holder_addrs(&h.locate(d, &g)), vec![vec![a.addr()]]);
    h.announce(a, &f, &[0]);
    let outputs = h.send(a, Message::Leave { file_id: None });
    assert_eq!(gone(&outputs), vec![(a.addr(), GoneReason::Left)]);
    assert_eq!(error_code(&h.locate_unknown(d, g.file_id())), ErrorCode::UnknownFile);
}

#[test]
fn have_adds_a_holder_and_bad_haves_are_refused_without_closing() {
    let mut h = Harness::new(1);
    let file = manifest("f", 2);
    let (a, d) = (h.peer(1), h.peer(4));
    h.announce(a, &file, &[0]);
    assert!(h.send(a, Message::Have { file_id: file.file_id(), chunk: ChunkIndex(1) }).is_empty());
    assert_eq!(holder_addrs(&h.locate(d, &file)), vec![vec![a.addr()], vec![a.addr()]]);
    let out_of_range = h.send(a, Message::Have { file_id: file.file_id(), chunk: ChunkIndex(2) });
    assert_eq!(error_code(&out_of_range), ErrorCode::BadRequest);
    let unknown = h.send(a, Message::Have { file_id: manifest("g", 1).file_id(), chunk: ChunkIndex(0) });
    assert_eq!(error_code(&unknown), ErrorCode::BadRequest);
    let not_announced = h.send(d, Message::Have { file_id: file.file_id(), chunk: ChunkIndex(0) });
    assert_eq!(error_code(&not_announced), ErrorCode::BadRequest);
    assert_eq!(holder_addrs(&h.locate(d, &file)), vec![vec![a.addr()], vec![a.addr()]]);
}

#[test]
fn garbage_closes_only_that_connection() {
    let mut h = Harness::new(1);
    let file = manifest("f", 1);
    let (a, bad, d) = (h.peer(1), h.peer(2), h.peer(4));
    h.announce(a, &file, &[0]);
    h.announce(bad, &file, &[0]);
    let outputs = h.input(Input::BadFrame { conn: bad.conn, error: DecodeError::Malformed("not CBOR".into()) });
    assert!(matches!(
        &outputs[0],
        Output::Send { message: Message::Error { code: ErrorCode::MalformedFrame, .. }, .. }
    ));
    assert!(is_closed(&outputs, bad.conn));
    assert!(outputs
        .iter()
        .any(|o| matches!(o, Output::Event(Event::ProtocolViolation { conn, .. }) if *conn == bad.conn)));
    assert_eq!(gone(&outputs), vec![(bad.addr(), GoneReason::Disconnected)]);
    assert_eq!(holder_addrs(&h.locate(d, &file)), vec![vec![a.addr()]]);
    let stranger = h.connect(7, [10, 0, 0, 7]);
    assert!(is_closed(
        &h.input(Input::BadFrame {
            conn: stranger.conn,
            error: DecodeError::Oversized { len: FRAME_BYTES_MAX + 1, max: FRAME_BYTES_MAX }
        }),
        stranger.conn
    ));
    assert_eq!(only_message(&h.send(a, Message::Announced { file_id: file.file_id() })).kind(), "error");
}

#[test]
fn clients_may_only_query_and_are_never_listed() {
    let mut h = Harness::new(1);
    let file = manifest("f", 1);
    let (a, client) = (h.peer(1), h.join(2, Role::Client, 7000));
    h.announce(a, &file, &[0]);
    assert_eq!(error_code(&h.announce(client, &file, &[0])), ErrorCode::Unexpected);
    let have = Message::Have { file_id: file.file_id(), chunk: ChunkIndex(0) };
    assert_eq!(error_code(&h.send(client, have)), ErrorCode::Unexpected);
    assert_eq!(holder_addrs(&h.locate(client, &file)), vec![vec![a.addr()]]);
    let outputs = h.send(client, Message::List);
    match only_message(&outputs) {
        Message::Files { files, truncated } => {
            assert!(!truncated);
            assert_eq!(files.len(), 1);
            assert_eq!((files[0].peer_count, files[0].holders_per_piece.clone()), (1, vec![1]));
        }
        other => panic!("expected Files, got {other:?}"),
    }
}

#[test]
fn list_is_ordered_by_file_id_with_per_chunk_counts() {
    let mut h = Harness::new(1);
    let files: Vec<Manifest> = ["a", "b", "c", "d"].iter().map(|name| manifest(name, 2)).collect();
    let (p, q) = (h.peer(1), h.peer(2));
    for file in &files {
        h.announce(p, file, &[0]);
        h.announce(q, file, &[0, 1]);
    }
    let empty = h.peer(3);
    h.announce(empty, &files[0], &[]);
    let outputs = h.send(p, Message::List);
    let Message::Files { files: listed, truncated: false } = only_message(&outputs) else { panic!("expected Files") };
    let mut ids: Vec<FileId> = files.iter().map(Manifest::file_id).collect();
    ids.sort();
    assert_eq!(listed.iter().map(|s| s.file_id).collect::<Vec<_>>(), ids);
    assert!(listed.iter().all(|s| s.peer_count == 2 && s.holders_per_piece == vec![2, 1]));
}

#[test]
fn other_messages_are_unexpected_but_keep_the_connection() {
    let mut h = Harness::new(1);
    let a = h.peer(1);
    let outputs = h.send(a, Message::Announced { file_id: manifest("f", 1).file_id() });
    assert_eq!(error_code(&outputs), ErrorCode::Unexpected);
    assert!(!is_closed(&outputs, a.conn));
    let twice = h.send(a, hello(Role::Peer, 1, 6001));
    assert!(is_closed(&twice, a.conn), "a second Hello breaks the protocol");
}

#[test]
fn a_hello_claiming_a_live_peers_address_is_refused_and_the_peer_stays() {
    let mut h = Harness::new(1);
    let file = manifest("f", 1);
    let (victim, d) = (h.peer(1), h.peer(4));
    h.announce(victim, &file, &[0]);
    let impostor = Remote { conn: ConnId::Inbound(11), ..victim };
    let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(victim.ip)), 50_001);
    h.input(Input::Connected { conn: impostor.conn, remote, peer_id: id_of(9) });
    let outputs = h.send(impostor, hello(Role::Peer, 9, victim.port));
    let refused = outputs
        .iter()
        .any(|o| matches!(o, Output::Send { message: Message::Error { code: ErrorCode::BadRequest, .. }, .. }));
    assert!(refused, "{outputs:?}");
    assert!(is_closed(&outputs, impostor.conn) && !is_closed(&outputs, victim.conn), "only the impostor goes");
    assert!(gone(&outputs).is_empty());
    let fake = manifest("fake", 1);
    let announced = h.send(
        impostor,
        Message::Announce { file_id: fake.file_id(), manifest: Some(Box::new(fake.clone())), have: Bitfield::full(1) },
    );
    assert!(announced.is_empty(), "a refused connection announces nothing");
    assert_eq!(holder_addrs(&h.locate(d, &file)), vec![vec![victim.addr()]], "the victim is still listed");
}

#[test]
fn a_restarted_peer_takes_its_address_back_once_the_old_connection_closed() {
    let mut h = Harness::new(1);
    let file = manifest("f", 1);
    let (old, d) = (h.peer(1), h.peer(4));
    h.announce(old, &file, &[0]);
    h.input(Input::Disconnected { conn: old.conn });
    let new = Remote { conn: ConnId::Inbound(11), ..old };
    let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(old.ip)), 50_001);
    h.input(Input::Connected { conn: new.conn, remote, peer_id: id_of(1) });
    let outputs = h.send(new, hello(Role::Peer, 1, old.port));
    assert!(matches!(outputs.as_slice(), [Output::Send { message: Message::Hello(_), .. }]), "{outputs:?}");
    h.announce(new, &file, &[0]);
    assert_eq!(holder_addrs(&h.locate(d, &file)), vec![vec![old.addr()]], "listed once");
}

#[test]
fn same_seed_gives_the_same_located_order() {
    let run = |seed: u64| {
        let mut h = Harness::new(seed);
        let file = manifest("f", 16);
        let all: Vec<u32> = (0..16).collect();
        for n in 1..=40 {
            let p = h.peer(n);
            h.announce(p, &file, &all);
        }
        let asker = h.join(100, Role::Client, 0);
        (0..5).map(|_| h.locate(asker, &file)).collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8), "another seed shuffles differently");
    let answers = run(7);
    assert_ne!(answers[0], answers[1], "successive answers spread the load");
}

#[test]
fn locate_stays_cheap_with_many_holders() {
    let mut h = Harness::new(5);
    h.check = false;
    let file = manifest("big", 256);
    for n in 0..2000u64 {
        let p = Remote { port: 6000, ..h.connect(n, [10, (n >> 8) as u8, n as u8, 1]) };
        h.tracker.handle(h.now, Input::Message { conn: p.conn, message: hello(Role::Peer, n, 6000) });
        let chunks: Vec<u32> = ((7 - n as u32 % 7) % 7..256).step_by(7).collect();
        let message = Message::Announce {
            file_id: file.file_id(),
            manifest: Some(Box::new(file.clone())),
            have: have(&file, &chunks),
        };
        h.tracker.handle(h.now, Input::Message { conn: p.conn, message });
        while h.tracker.poll_output().is_some() {}
    }
    let asker = h.join(5000, Role::Client, 0);
    for _ in 0..200 {
        let (peers, holders) = h.locate(asker, &file);
        assert!(peers.len() <= LOCATED_PEERS_MAX);
        assert!(holders.iter().all(|list| !list.is_empty() && list.len() <= HOLDERS_PER_PIECE_MAX));
    }
}

#[test]
fn connections_past_the_limit_are_refused() {
    let mut h = Harness::new(1);
    for n in 0..TRACKER_CONNECTIONS_MAX as u64 {
        let remote = "10.0.0.1:1".parse().expect("ok");
        h.tracker.handle(h.now, Input::Connected { conn: ConnId::Inbound(n), remote, peer_id: id_of(n) });
    }
    let remote = "10.0.0.2:1".parse().expect("valid address");
    let outputs = h.input(Input::Connected { conn: ConnId::Inbound(u64::MAX), remote, peer_id: id_of(u64::MAX) });
    assert_eq!(error_code(&outputs[..1]), ErrorCode::Overloaded);
    assert!(is_closed(&outputs, ConnId::Inbound(u64::MAX)));
}

#[test]
fn the_manifest_travels_only_when_asked_for() {
    let mut h = Harness::new(1);
    let file = manifest("f", 3);
    let (a, d) = (h.peer(1), h.peer(4));
    h.announce(a, &file, &[0, 1, 2]);
    let outputs = h.send(d, Message::Locate { file_id: file.file_id(), with_manifest: false });
    match only_message(&outputs) {
        Message::Located { manifest, holders, .. } => {
            assert_eq!(*manifest, None);
            let (peers, have): (Vec<PeerAddr>, Vec<Bitfield>) = holders.iter().unzip();
            assert_eq!(peers.iter().map(|p| p.addr).collect::<Vec<_>>(), vec![a.addr()]);
            assert_eq!(have, vec![Bitfield::full(3)], "each named peer comes with its bitfield");
        }
        other => panic!("expected Located, got {other:?}"),
    }
}

/// Enough holders that an answer names only some of them (8 per chunk), so reused lists differ.
fn announce_thirty_holders_of_chunks_0_and_1(h: &mut Harness, file: &Manifest) {
    for n in 1..=30 {
        let p = h.peer(n);
        h.announce(p, file, &[0, 1]);
    }
}

#[test]
fn holder_lists_are_reused_in_turn_until_a_holder_comes_or_goes_or_they_age() {
    use crate::limits::{LOCATED_REUSED_PER_FILE_COUNT as LISTS, LOCATED_REUSE_TIME};
    let mut h = Harness::new(5);
    let file = manifest("f", 3);
    // An answer names 8 of the 30 holders, drawn anew for each list.
    announce_thirty_holders_of_chunks_0_and_1(&mut h, &file);
    let c = h.join(100, Role::Client, 0);
    let answers: Vec<_> = (0..LISTS * 3).map(|_| h.locate(c, &file)).collect();
    for i in LISTS..answers.len() {
        assert_eq!(answers[i], answers[i - LISTS], "the lists are handed out in turn");
    }

    let newcomer = h.peer(31);
    h.announce(newcomer, &file, &[2]);
    assert_eq!(holder_addrs(&h.locate(c, &file))[2], vec![newcomer.addr()], "a new holder drops the lists");
    for _ in 0..LISTS {
        h.locate(c, &file);
    }
    let holder = answers[0].0[0];
    let holder = Remote { conn: ConnId::Inbound(holder.addr.port() as u64 - 6000), ip: [0; 4], port: 0 };
    assert!(h.send(holder, Message::Have { file_id: file.file_id(), chunk: ChunkIndex(2) }).is_empty());
    assert_eq!(holder_addrs(&h.locate(c, &file))[2].len(), 1, "a new chunk of a known holder may wait");
    h.now = h.now + LOCATED_REUSE_TIME;
    assert_eq!(holder_addrs(&h.locate(c, &file))[2].len(), 2, "and shows once the lists are old");

    h.input(Input::Disconnected { conn: newcomer.conn });
    let addrs = holder_addrs(&h.locate(c, &file));
    assert!(addrs.iter().all(|chunk| !chunk.contains(&newcomer.addr())), "a gone holder drops the lists");
}

#[test]
fn a_reused_holder_list_goes_to_a_bounded_number_of_askers_then_fresh_lists_are_drawn() {
    use crate::limits::{LOCATED_REUSED_PER_FILE_COUNT as LISTS, LOCATED_REUSES_PER_LIST_MAX as REUSES};
    let mut h = Harness::new(6);
    let file = manifest("f", 3);
    announce_thirty_holders_of_chunks_0_and_1(&mut h, &file);
    let c = h.join(100, Role::Client, 0);
    let first: Vec<_> = (0..LISTS * REUSES).map(|_| h.locate(c, &file)).collect();
    assert!(first.iter().all(|answer| first[..LISTS].contains(answer)), "one round reuses the first lists");
    let next: Vec<_> = (0..LISTS).map(|_| h.locate(c, &file)).collect();
    assert!(next.iter().any(|answer| !first[..LISTS].contains(answer)), "then the lists are drawn afresh");
}

#[test]
fn a_peer_that_held_nothing_is_named_at_once_after_its_first_chunk() {
    let mut h = Harness::new(7);
    let file = manifest("f", 3);
    announce_thirty_holders_of_chunks_0_and_1(&mut h, &file);
    let starter = h.peer(31);
    h.announce(starter, &file, &[]);
    let c = h.join(100, Role::Client, 0);
    for _ in 0..crate::limits::LOCATED_REUSED_PER_FILE_COUNT {
        assert!(holder_addrs(&h.locate(c, &file))[2].is_empty(), "nobody holds chunk 2 yet");
    }
    assert!(h.send(starter, Message::Have { file_id: file.file_id(), chunk: ChunkIndex(2) }).is_empty());
    assert_eq!(holder_addrs(&h.locate(c, &file))[2], vec![starter.addr()], "its first chunk drops the reused lists");
}

/// Peer `n` connected from `ip`, listening on port `6000 + n`.
fn peer_at(h: &mut Harness, n: u64, ip: [u8; 4]) -> Remote {
    let remote = Remote { port: 6000 + n as u16, ..h.connect(n, ip) };
    h.send(remote, hello(Role::Peer, n, remote.port));
    remote
}

/// A manifest of the most chunks a file may have: its hashes take 1 MiB.
fn largest_manifest(name: &str) -> Manifest {
    let hashes = vec![Digest([7; 32]); PIECES_MAX as usize];
    let length = u64::from(PIECES_MAX) * u64::from(PIECE_BYTES_MIN);
    Manifest::new(name.to_owned(), length, PIECE_BYTES_MIN, hashes).expect("valid")
}

/// The messages among `outputs`.
fn messages(outputs: &[Output]) -> Vec<&Message> {
    outputs.iter().filter_map(|o| if let Output::Send { message, .. } = o { Some(message) } else { None }).collect()
}

fn announced(outputs: &[Output]) -> bool {
    matches!(messages(outputs)[..], [Message::Announced { .. }])
}

fn refused_by_quota(outputs: &[Output]) -> bool {
    matches!(messages(outputs)[..], [Message::Error { code: ErrorCode::Overloaded, detail, .. }] if detail.starts_with("quota"))
}

#[test]
fn a_peer_announces_files_up_to_its_quota_and_no_more() {
    let mut h = Harness::new(1);
    h.check = false;
    let p = h.peer(1);
    for i in 0..TRACKER_FILES_PER_PEER_MAX {
        assert!(announced(&h.announce(p, &manifest(&format!("f{i}"), 1), &[0])), "file {i}");
    }
    assert!(refused_by_quota(&h.announce(p, &manifest("one-more", 1), &[0])));
    assert!(announced(&h.announce(p, &manifest("f0", 1), &[0])), "what it holds it may announce again");
    let other = h.peer(2);
    assert!(announced(&h.announce(other, &manifest("one-more", 1), &[0])), "another peer is not held back");
    h.tracker.registry.check_invariants();
}

#[test]
fn manifest_bytes_are_bounded_per_peer_and_per_address() {
    let mut h = Harness::new(1);
    h.check = false;
    let cost_bytes = 32 * u64::from(PIECES_MAX) + "big-00".len() as u64;
    let per_peer = (TRACKER_MANIFEST_BYTES_PER_PEER_MAX / cost_bytes) as usize;
    let per_ip = (TRACKER_MANIFEST_BYTES_PER_IP_MAX / cost_bytes) as usize;
    let ip = [10, 0, 9, 9];
    let (a, b, c) = (peer_at(&mut h, 1, ip), peer_at(&mut h, 2, ip), peer_at(&mut h, 3, ip));
    let files: Vec<Manifest> = (0..per_ip + 1).map(|i| largest_manifest(&format!("big-{i:02}"))).collect();
    for (i, file) in files[..per_peer].iter().enumerate() {
        assert!(announced(&h.announce(a, file, &[])), "file {i}");
    }
    assert!(refused_by_quota(&h.announce(a, &files[per_peer], &[])), "past the peer's quota");
    for (i, file) in files[per_peer..per_ip].iter().enumerate() {
        let peer = if i < per_peer { b } else { c };
        assert!(announced(&h.announce(peer, file, &[])), "file {}", per_peer + i);
    }
    assert!(refused_by_quota(&h.announce(c, &files[per_ip], &[])), "past the address's quota");
    assert!(announced(&h.announce(c, &files[0], &[])), "a file the address holds costs no more manifest");
    let elsewhere = peer_at(&mut h, 4, [10, 0, 9, 10]);
    assert!(announced(&h.announce(elsewhere, &files[per_ip], &[])), "another address is not held back");
    h.input(Input::Disconnected { conn: a.conn });
    assert!(announced(&h.announce(c, &files[per_ip], &[])), "a peer that goes frees its share");
    h.tracker.registry.check_invariants();
}

#[test]
fn the_peers_of_one_address_hold_distinct_files_up_to_its_quota() {
    let mut h = Harness::new(1);
    h.check = false;
    let ip = [10, 0, 9, 9];
    let peers: Vec<Remote> = (1..=5).map(|n| peer_at(&mut h, n, ip)).collect();
    for i in 0..TRACKER_FILES_PER_IP_MAX {
        let peer = peers[i / TRACKER_FILES_PER_PEER_MAX];
        assert!(announced(&h.announce(peer, &manifest(&format!("f{i}"), 1), &[0])), "file {i}");
    }
    assert!(refused_by_quota(&h.announce(peers[4], &manifest("one-more", 1), &[0])));
    assert!(announced(&h.announce(peers[4], &manifest("f0", 1), &[0])), "a file the address holds is no new file");
    h.tracker.registry.check_invariants();
}

#[test]
fn a_hello_claiming_an_id_its_key_does_not_prove_is_refused() {
    let mut h = Harness::new(1);
    let file = manifest("f", 1);
    let (seeder, d) = (h.peer(1), h.peer(4));
    h.announce(seeder, &file, &[0]);
    let liar = h.connect(7, [10, 0, 0, 7]);
    let outputs = h.send(liar, hello(Role::Peer, 1, 6007));
    let refused = outputs
        .iter()
        .any(|o| matches!(o, Output::Send { message: Message::Error { code: ErrorCode::BadRequest, .. }, .. }));
    assert!(refused && is_closed(&outputs, liar.conn), "{outputs:?}");
    assert!(gone(&outputs).is_empty() && !is_closed(&outputs, seeder.conn), "the seeder stays");
    assert_eq!(holder_addrs(&h.locate(d, &file)), vec![vec![seeder.addr()]]);
}

#[test]
fn a_second_registration_of_a_live_peer_id_is_refused() {
    let mut h = Harness::new(1);
    let file = manifest("f", 1);
    let (first, d) = (h.peer(1), h.peer(4));
    h.announce(first, &file, &[0]);
    // The same key from another address (a copy of the key file running elsewhere).
    let copy = Remote { conn: ConnId::Inbound(11), ip: [10, 0, 0, 9], port: 6009 };
    let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(copy.ip)), 50_002);
    h.input(Input::Connected { conn: copy.conn, remote, peer_id: id_of(1) });
    let outputs = h.send(copy, hello(Role::Peer, 1, copy.port));
    assert!(is_closed(&outputs, copy.conn) && !is_closed(&outputs, first.conn), "{outputs:?}");
    assert_eq!(holder_addrs(&h.locate(d, &file)), vec![vec![first.addr()]], "the first stays listed alone");
}

#[test]
fn the_view_shows_each_files_holders_and_each_peers_last_announce_within_bounds() {
    let mut h = Harness::new(1);
    let (a, b) = (h.peer(1), h.peer(2));
    let (first, second) = (manifest("first", 4), manifest("second", 2));
    h.announce(a, &first, &[0, 1]);
    h.now = Time::from_millis(2000);
    h.announce(b, &first, &[1, 2, 3]);
    h.announce(b, &second, &[0]);
    let all = ViewBounds { files_max: 10, holders_max: 10, peers_max: 10 };
    let view = h.tracker.view(all);
    assert_eq!((view.files_count, view.peers_count, view.holdings_count), (2, 2, 3));
    let file = view.files.iter().find(|file| file.file_id == first.file_id()).expect("the first file");
    assert_eq!(file.holders_per_piece, vec![1, 2, 1, 1]);
    let holders: Vec<(SocketAddr, Vec<u32>)> =
        file.holders.iter().map(|(peer, have)| (peer.addr, have.iter().map(|p| p.0).collect())).collect();
    assert_eq!(holders, vec![(a.addr(), vec![0, 1]), (b.addr(), vec![1, 2, 3])], "ordered by address");
    let announced: Vec<(SocketAddr, usize, Time)> =
        view.peers.iter().map(|peer| (peer.peer.addr, peer.files_count, peer.announced_at)).collect();
    assert_eq!(announced, vec![(a.addr(), 1, Time::ZERO), (b.addr(), 2, Time::from_millis(2000))]);

    let cut = h.tracker.view(ViewBounds { files_max: 1, holders_max: 1, peers_max: 0 });
    assert_eq!((cut.files.len(), cut.files[0].holders.len(), cut.peers.len()), (1, 1, 0));
    assert_eq!((cut.files_count, cut.peers_count), (2, 2), "the counts are of everything");
}

#[test]
fn a_peer_on_the_trackers_host_is_recorded_at_the_routable_ip_it_listens_on() {
    let mut h = Harness::new(1);
    let file = manifest("f", 4);
    let hello = |n: u64, listen_ip: [u8; 4]| Hello {
        listen_ip: Some(IpAddr::V4(Ipv4Addr::from(listen_ip))),
        ..Hello::new(Role::Peer, id_of(n), 7000 + n as u16)
    };
    // (connection, source IP, IP its Hello names, where others are told it is)
    let cases = [
        (1, [127, 0, 0, 1], [192, 0, 2, 10], [192, 0, 2, 10]), // same host, listens on its network address
        (2, [127, 0, 0, 1], [127, 0, 0, 2], [127, 0, 0, 1]),   // a loopback listen IP is not taken
        (3, [127, 0, 0, 1], [0, 0, 0, 0], [127, 0, 0, 1]),     // nor an unspecified one
        (4, [198, 51, 100, 4], [192, 0, 2, 99], [198, 51, 100, 4]), // another host names only itself
    ];
    for (n, source, listen_ip, _) in cases {
        let remote = h.connect(n, source);
        let outputs = h.send(remote, Message::Hello(hello(n, listen_ip)));
        assert!(matches!(only_message(&outputs), Message::Hello(_)), "{outputs:?}");
        h.announce(remote, &file, &[0, 1, 2, 3]);
    }
    let asker = h.peer(9);
    let (peers, _) = h.locate(asker, &file);
    for (n, _, _, recorded) in cases {
        let named = peers.iter().find(|peer| peer.peer_id == id_of(n)).expect("every holder is named");
        assert_eq!(named.addr, SocketAddr::from((recorded, 7000 + n as u16)), "peer {n}");
    }
}

#[test]
fn a_loopback_source_is_loopback_also_as_an_ipv4_mapped_address() {
    let mapped = IpAddr::from(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
    let routable = IpAddr::from([192, 0, 2, 10]);
    assert_eq!(super::recorded_ip(mapped, Some(routable)), routable, "a dual-stack listener's loopback client");
    let mapped_loopback_listen = IpAddr::from(Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped());
    let local = IpAddr::from(Ipv4Addr::LOCALHOST);
    assert_eq!(
        super::recorded_ip(mapped, Some(mapped_loopback_listen)),
        local,
        "a mapped loopback listen IP is not taken"
    );
    let remote = IpAddr::from(Ipv4Addr::new(198, 51, 100, 4).to_ipv6_mapped());
    let canonical_remote = IpAddr::from([198, 51, 100, 4]);
    assert_eq!(super::recorded_ip(remote, Some(routable)), canonical_remote, "another host names only itself");
}

#[test]
fn a_peer_named_to_many_askers_is_passed_over_while_another_holds_its_chunks() {
    use crate::limits::{LOCATED_NAMINGS_PER_PEER_MAX, LOCATED_NAMING_WINDOW};
    let mut h = Harness::new(8);
    let file = manifest("f", 2);
    let first = h.peer(1);
    h.announce(first, &file, &[0, 1]);
    let c = h.join(100, Role::Client, 0);
    for _ in 0..LOCATED_NAMINGS_PER_PEER_MAX {
        assert_eq!(holder_addrs(&h.locate(c, &file)), vec![vec![first.addr()]; 2], "the only holder");
    }
    let second = h.peer(2);
    h.announce(second, &file, &[0, 1]);
    assert_eq!(holder_addrs(&h.locate(c, &file)), vec![vec![second.addr()]; 2], "the first was named enough");
    h.now = h.now + LOCATED_NAMING_WINDOW;
    let both = holder_addrs(&h.locate(c, &file));
    assert!(both.iter().all(|chunk| chunk.len() == 2), "a new window names both again: {both:?}");

    // A chunk whose only holder was named enough still gets it named.
    let mut h = Harness::new(9);
    let first = h.peer(1);
    h.announce(first, &file, &[0, 1]);
    let c = h.join(100, Role::Client, 0);
    for _ in 0..LOCATED_NAMINGS_PER_PEER_MAX {
        h.locate(c, &file);
    }
    let second = h.peer(2);
    h.announce(second, &file, &[0]);
    let (peers, holders) = h.locate(c, &file);
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert_eq!(peers[holders[1][0] as usize].addr, first.addr(), "chunk 1 has only the first holder");
}

#[test]
fn peers_holding_nothing_are_named_beside_the_holders_once_an_answer_cannot_name_everyone() {
    use crate::limits::LOCATED_NEWCOMERS_MAX;
    let mut h = Harness::new(10);
    let file = manifest("f", 3);
    let seeder = h.peer(1);
    h.announce(seeder, &file, &[0, 1, 2]);
    for n in 2..=LOCATED_PEERS_NAMED_MAX as u64 {
        let newcomer = h.peer(n);
        h.announce(newcomer, &file, &[]);
    }
    let c = h.join(200, Role::Client, 0);
    let (peers, _) = h.locate(c, &file);
    assert_eq!(peers.iter().map(|p| p.addr).collect::<Vec<_>>(), vec![seeder.addr()], "one answer could name all");
    // Eight more seeders: the walk looks for eight holders of each chunk among nine, passing
    // most of the newcomers on the way, of which it names only so many.
    for n in 1..=HOLDERS_PER_PIECE_MAX as u64 {
        let seeder = h.peer(LOCATED_PEERS_NAMED_MAX as u64 + n);
        h.announce(seeder, &file, &[0, 1, 2]);
    }
    let (peers, holders) = h.locate(c, &file);
    assert_eq!(peers.len(), HOLDERS_PER_PIECE_MAX + LOCATED_NEWCOMERS_MAX, "{peers:?}");
    assert!(
        holders.iter().all(|chunk| chunk.len() == HOLDERS_PER_PIECE_MAX),
        "the newcomers hold nothing: {holders:?}"
    );
}

#[test]
fn answers_carry_a_bounded_number_of_manifest_bytes_per_window() {
    use crate::limits::{LOCATED_MANIFEST_BYTES_PER_WINDOW, LOCATED_NAMING_WINDOW};
    let mut h = Harness::new(11);
    // A quarter of the budget each: four answers carry it, the fifth names the holder only.
    let chunks = u32::try_from(LOCATED_MANIFEST_BYTES_PER_WINDOW / 4 / 32).expect("fits");
    let file = manifest("f", chunks);
    let seeder = h.peer(1);
    h.announce(seeder, &file, &[0]);
    let asker = h.peer(2);
    let ask = Message::Locate { file_id: file.file_id(), with_manifest: true };
    let carried = |h: &mut Harness| match only_message(&h.send(asker, ask.clone())) {
        Message::Located { manifest, holders, .. } => {
            assert_eq!(holders.peers().map(|p| p.addr).collect::<Vec<_>>(), vec![seeder.addr()]);
            manifest.is_some()
        }
        other => panic!("expected Located, got {other:?}"),
    };
    for n in 0..4 {
        assert!(carried(&mut h), "answer {n} is within the budget");
    }
    assert!(!carried(&mut h), "the budget is spent: the holders send it");
    h.now = h.now + LOCATED_NAMING_WINDOW;
    assert!(carried(&mut h), "a new window, a new budget");
}

#[test]
fn a_peer_that_has_not_announced_the_file_of_a_large_swarm_is_named_a_few_peers_to_get_its_manifest_from() {
    use crate::limits::LOCATED_PEERS_UNANNOUNCED_MAX;
    let mut h = Harness::new(11);
    let file = manifest("f", 64);
    let all: Vec<u32> = (0..64).collect();
    for n in 1..=4 {
        let seeder = h.peer(n);
        h.announce(seeder, &file, &all);
    }
    for n in 5..=LOCATED_PEERS_NAMED_MAX as u64 + 8 {
        let newcomer = h.peer(n);
        h.announce(newcomer, &file, &[]);
    }
    // A downloader without the manifest has not announced the file: a few names, any of which
    // can send it the manifest.
    let asker = h.peer(200);
    let (peers, _) = h.locate(asker, &file);
    assert!(!peers.is_empty() && peers.len() <= LOCATED_PEERS_UNANNOUNCED_MAX, "{peers:?}");
    // Once it announced (it knows the manifest), the whole answer.
    h.announce(asker, &file, &[]);
    let (peers, holders) = h.locate(asker, &file);
    assert!(peers.len() > LOCATED_PEERS_UNANNOUNCED_MAX, "{peers:?}");
    assert!(holders.iter().all(|chunk| chunk.len() == 4), "every seeder of every chunk: {holders:?}");
    // A client asking where the chunks are (it announces nothing) gets the whole answer too.
    let client = h.join(201, Role::Client, 0);
    let (peers, _) = h.locate(client, &file);
    assert!(peers.len() > LOCATED_PEERS_UNANNOUNCED_MAX, "{peers:?}");
}
