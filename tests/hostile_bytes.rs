//! Hostile or broken clients cost the tracker and a seeding peer one closed connection each,
//! never the process: after garbage, an absurd frame length, a truncated frame, an undecodable
//! frame, a `Hello` of another version, a message before `Hello` and an idle connection, both
//! still run and a normal download still succeeds. Each is sent twice: as raw bytes where the
//! transport's handshake is expected, and sealed inside the encrypted stream after it, where
//! core's framing reads them.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use p2p_core::wire::{encode_frame, Hello, Message, Role, PROTOCOL_VERSION};
use p2p_core::PeerId;
use p2p_net::secure::Keys;

use common::wire::WireClient;
use common::{assert_same_file, path_str, random_file, subdir, temp_dir, Node, DOWNLOAD_TIMEOUT, EXIT_TIMEOUT};

/// How long a server may take to close a connection after an invalid frame. Shorter than the
/// handshake timeout (10 s), so closing only because the `Hello` never came does not pass.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(8);

/// Bytes read from a hostile connection before giving up on seeing it closed.
const READ_BYTES_MAX: usize = 1024 * 1024;

#[test]
fn tracker_and_seeder_survive_hostile_bytes_and_still_serve_a_download() {
    let dir = temp_dir();
    let original = random_file(dir.path(), "target.bin", 1024 * 1024, 8);
    let (mut tracker, tracker_addr) = Node::tracker();
    let seeder_args = ["--share", path_str(&original), "--piece-size", "65536"];
    let mut seeder = Node::peer("seeder", tracker_addr, &subdir(dir.path(), "seeder"), &seeder_args);
    let seeder_addr = seeder.addr();
    let file_id = seeder.wait_sharing().file_id;

    let mut idle_connections = Vec::new();
    for (server, addr) in [("tracker", tracker_addr), ("seeder", seeder_addr)] {
        idle_connections.push(connect(addr));
        let hostile: [(&str, Vec<u8>); 7] = [
            ("text garbage", b"GET / HTTP/1.1\r\nHost: swarm\r\n\r\n\x00\x13\xfe".to_vec()),
            ("length 0xFFFFFFFF", vec![0xff, 0xff, 0xff, 0xff]),
            ("length 0xFFFFFFFF and bytes", vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]),
            ("non-CBOR frame", frame(&[0xff; 16])),
            ("empty frame", frame(&[])),
            ("Hello of another protocol version", hello(PROTOCOL_VERSION + 1)),
            ("a message before Hello", encoded(&Message::List)),
        ];
        for (what, bytes) in &hostile {
            send_and_expect_close(server, addr, what, bytes);
            send_sealed_and_expect_close(server, addr, what, bytes);
        }
        send_truncated_frame_and_hang_up(addr);
        assert!(tracker.is_running(), "tracker died after hostile bytes to the {server}\n{}", tracker.report());
        assert!(seeder.is_running(), "seeder died after hostile bytes to the {server}\n{}", seeder.report());
    }

    // With the idle connections still open, an honest downloader gets the file.
    let out = subdir(dir.path(), "out");
    let get_args = ["--get", file_id.as_str(), "--out", path_str(&out), "--exit-when-done"];
    let mut downloader = Node::peer("downloader", tracker_addr, &subdir(dir.path(), "downloader"), &get_args);
    let copy = downloader.wait_complete(&file_id, DOWNLOAD_TIMEOUT);
    assert_same_file(&copy, &original);
    let status = downloader.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "downloader exited with {status}\n{}", downloader.report());

    assert!(tracker.is_running(), "tracker died\n{}", tracker.report());
    assert!(seeder.is_running(), "seeder died\n{}", seeder.report());
    drop(idle_connections);
}

/// A frame as the wire protocol has it: 4-byte big-endian length, then the body.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut bytes = u32::try_from(body.len()).expect("small body").to_be_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// A well-formed `Hello` frame claiming protocol `version`.
fn hello(version: u32) -> Vec<u8> {
    encoded(&Message::Hello(Hello { version, ..Hello::new(Role::Peer, PeerId([7; 16]), 0) }))
}

/// `message` framed by the protocol's own encoder.
fn encoded(message: &Message) -> Vec<u8> {
    let mut bytes = BytesMut::new();
    encode_frame(message, &mut bytes).expect("a small message fits in a frame");
    bytes.to_vec()
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Sends `bytes` and waits until the server closes the connection (EOF or reset), reading and
/// discarding whatever it answers first (an error message is allowed).
fn send_and_expect_close(server: &str, addr: SocketAddr, what: &str, bytes: &[u8]) {
    let mut stream = connect(addr);
    if stream.write_all(bytes).is_err() {
        return; // Already closed by the server: as good as it gets.
    }
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    let mut buffer = [0u8; 4096];
    let mut read_bytes = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{server} kept the connection open {CLOSE_TIMEOUT:?} after {what}");
        stream.set_read_timeout(Some(left)).expect("set read timeout");
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                read_bytes += n;
                assert!(read_bytes <= READ_BYTES_MAX, "{server} answered {what} with more than {READ_BYTES_MAX} bytes");
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => return, // Reset by the server: closed.
        }
    }
}

/// Sends `bytes` inside the encrypted stream, after the handshake, and waits until the server
/// closes the connection (an error message first is allowed).
fn send_sealed_and_expect_close(server: &str, addr: SocketAddr, what: &str, bytes: &[u8]) {
    let mut client = WireClient::connect(None, addr, Keys::new_open()).expect("a handshake");
    if client.send_bytes(bytes).is_err() {
        return; // Already closed by the server.
    }
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    while client.recv(deadline.saturating_duration_since(Instant::now())).is_some() {
        assert!(Instant::now() < deadline, "{server} kept the connection open {CLOSE_TIMEOUT:?} after sealed {what}");
    }
}

/// Announces a 100-byte frame, sends 10 bytes of it and hangs up.
fn send_truncated_frame_and_hang_up(addr: SocketAddr) {
    let mut stream = connect(addr);
    let mut bytes = vec![0, 0, 0, 100];
    bytes.extend_from_slice(&[0xa5; 10]);
    let _ = stream.write_all(&bytes);
    let _ = stream.shutdown(Shutdown::Both);
}
