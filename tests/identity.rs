//! Proven identities, encrypted links and private swarms, against the real binaries on
//! loopback: a client claiming the seeder's id without its key is refused by the tracker and
//! by the seeder, and the download from the real seeder completes; nodes without a private
//! swarm's key are refused with a clear error on both sides and get no data; ids off an
//! allow-list are refused with a clear error on both sides, and a tracker pinned by id must
//! prove it; and every byte of a download between two peers, read on the wire by a relay, is
//! encrypted.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use p2p_core::wire::{ErrorCode, Hello, Message, Role};
use p2p_core::{FileId, PeerId};
use p2p_net::secure::Keys;

use common::wire::WireClient;
use common::{
    assert_same_file, path_str, random_file, run_node, stderr_of, subdir, temp_dir, Node, DOWNLOAD_TIMEOUT,
    EXIT_TIMEOUT,
};

/// How long a test waits for one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a refused client may take to give up.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn a_client_claiming_the_seeders_id_is_refused_and_the_download_from_the_seeder_completes() {
    let dir = temp_dir();
    let original = random_file(dir.path(), "payload.bin", 1024 * 1024, 11);
    let (_tracker, tracker_addr) = Node::tracker();
    let mut seeder =
        Node::peer("seeder", tracker_addr, &subdir(dir.path(), "seeder"), &["--share", path_str(&original)]);
    let file_id = seeder.wait_sharing().file_id;
    let seeder_id = holder_id(tracker_addr, file_id.parse().expect("a file id"), seeder.addr());

    // To the tracker: a Hello with the seeder's id and its own key.
    let mut impostor = WireClient::connect(None, tracker_addr, Keys::new_open()).expect("a handshake");
    impostor.send(&hello(Role::Peer, seeder_id, 7));
    match impostor.recv(ANSWER_TIMEOUT) {
        Some(Message::Error { code: ErrorCode::BadRequest, detail, .. }) => {
            assert!(detail.contains("proves"), "{detail}")
        }
        other => panic!("the tracker answered the impostor's hello with {other:?}"),
    }
    assert_eq!(impostor.recv(ANSWER_TIMEOUT), None, "and closed its connection");

    // To the seeder: the same claim on a peer connection.
    let mut impostor = WireClient::connect(None, seeder.addr(), Keys::new_open()).expect("a handshake");
    assert_eq!(impostor.remote_id(), seeder_id, "the seeder's key proves the id the tracker lists");
    impostor.send(&hello(Role::Peer, seeder_id, 7));
    let mut answers = Vec::new();
    while let Some(message) = impostor.recv(ANSWER_TIMEOUT) {
        answers.push(message);
    }
    assert!(answers.iter().all(|m| !matches!(m, Message::Bitfield { .. } | Message::Data { .. })), "{answers:?}");

    let out = subdir(dir.path(), "out");
    let get_args = ["--get", file_id.as_str(), "--out", path_str(&out), "--exit-when-done"];
    let mut downloader = Node::peer("downloader", tracker_addr, &subdir(dir.path(), "downloader"), &get_args);
    assert_same_file(&downloader.wait_complete(&file_id, DOWNLOAD_TIMEOUT), &original);
    assert!(downloader.wait_exit(EXIT_TIMEOUT).success(), "{}", downloader.report());
    assert_eq!(holder_id(tracker_addr, file_id.parse().expect("a file id"), seeder.addr()), seeder_id, "still listed");
}

#[test]
fn nodes_without_the_swarm_key_are_refused_on_both_sides_and_get_nothing() {
    let dir = temp_dir();
    let key = dir.path().join("swarm.key");
    let other_key = dir.path().join("other.key");
    for path in [&key, &other_key] {
        let made = run_node(&["swarm-key", path_str(path)], EXIT_TIMEOUT);
        assert!(made.status.success(), "{}", stderr_of(&made));
    }
    assert_eq!(
        std::fs::metadata(&key).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777).ok(),
        Some(0o600)
    );
    let original = random_file(dir.path(), "secret.bin", 512 * 1024, 12);
    let mut tracker = Node::spawn("tracker", &["tracker", "--listen", "127.0.0.1:0", "--swarm-key", path_str(&key)]);
    let tracker_addr = tracker.listening_addr();
    let with_key = ["--swarm-key", path_str(&key)];
    let mut seeder_args = vec!["--share", path_str(&original)];
    seeder_args.extend_from_slice(&with_key);
    let mut seeder = Node::peer("seeder", tracker_addr, &subdir(dir.path(), "seeder"), &seeder_args);
    let file_id = seeder.wait_sharing().file_id;

    let tracker_arg = tracker_addr.to_string();
    for (who, extra) in [("no key", vec![]), ("another key", vec!["--swarm-key", path_str(&other_key)])] {
        let mut ls = vec!["ls", "--tracker", tracker_arg.as_str()];
        ls.extend_from_slice(&extra);
        let listed = run_node(&ls, REFUSAL_TIMEOUT);
        assert_eq!(listed.status.code(), Some(1), "ls with {who}");
        assert!(stderr_of(&listed).contains("swarm key"), "ls with {who}: {}", stderr_of(&listed));
        assert!(listed.stdout.is_empty(), "ls with {who} listed {:?}", String::from_utf8_lossy(&listed.stdout));

        let store = subdir(dir.path(), &format!("outsider {who}"));
        let out = subdir(dir.path(), &format!("out {who}"));
        let mut get = vec!["--get", file_id.as_str(), "--out", path_str(&out), "--exit-when-done"];
        get.extend_from_slice(&extra);
        let mut args = vec!["peer", "--tracker", tracker_arg.as_str(), "--store", path_str(&store)];
        args.extend_from_slice(&get);
        let refused = run_node(&args, REFUSAL_TIMEOUT);
        assert_eq!(refused.status.code(), Some(1), "a peer with {who}: {}", stderr_of(&refused));
        assert!(stderr_of(&refused).contains("handshake failed"), "a peer with {who}: {}", stderr_of(&refused));
        assert!(stderr_of(&refused).contains("swarm key"), "a peer with {who}: {}", stderr_of(&refused));
        assert_eq!(dir_entries(&out), 0, "a peer with {who} wrote a download");
        assert!(std::fs::read_dir(&store)
            .map_or(true, |d| d.flatten().all(|e| !e.path().to_string_lossy().ends_with(".part"))));
    }
    let says_why = (0..100).any(|_| {
        thread::sleep(Duration::from_millis(50));
        tracker.stderr_tail().contains("handshake failed: the remote holds another swarm key")
    });
    assert!(says_why, "the tracker says why it refused:\n{}", tracker.stderr_tail());
    assert!(seeder.is_running() && tracker.is_running());

    let mut ls = vec!["ls", "--tracker", tracker_arg.as_str()];
    ls.extend_from_slice(&with_key);
    let listed = run_node(&ls, REFUSAL_TIMEOUT);
    assert!(
        listed.status.success() && String::from_utf8_lossy(&listed.stdout).contains(&file_id),
        "{}",
        stderr_of(&listed)
    );
    let out = subdir(dir.path(), "out");
    let mut get_args = vec!["--get", file_id.as_str(), "--out", path_str(&out), "--exit-when-done"];
    get_args.extend_from_slice(&with_key);
    let mut member = Node::peer("member", tracker_addr, &subdir(dir.path(), "member"), &get_args);
    assert_same_file(&member.wait_complete(&file_id, DOWNLOAD_TIMEOUT), &original);
    assert!(member.wait_exit(EXIT_TIMEOUT).success(), "{}", member.report());
}

#[test]
fn a_download_relayed_on_the_wire_carries_none_of_the_files_bytes_in_the_clear() {
    let dir = temp_dir();
    let original = random_file(dir.path(), "clear.bin", 1024 * 1024, 13);
    let (_tracker, tracker_addr) = Node::tracker();
    // The seeder listens on 127.0.0.2; the tracker records it at its source address,
    // 127.0.0.1, with the same port, where the relay listens and forwards to the seeder.
    let share = ["--share", path_str(&original)];
    let store = subdir(dir.path(), "seeder");
    let tracker_arg = tracker_addr.to_string();
    let mut args =
        vec!["peer", "--tracker", tracker_arg.as_str(), "--listen", "127.0.0.2:0", "--store", path_str(&store)];
    args.extend_from_slice(&share);
    let mut seeder = Node::spawn("seeder", &args);
    let seeder_addr = seeder.listening_addr();
    let file_id = seeder.wait_sharing().file_id;
    let relay_addr = SocketAddr::from(([127, 0, 0, 1], seeder_addr.port()));
    let captured = relay(relay_addr, seeder_addr);

    let out = subdir(dir.path(), "out");
    let get_args = ["--get", file_id.as_str(), "--out", path_str(&out), "--exit-when-done"];
    let mut downloader = Node::peer("downloader", tracker_addr, &subdir(dir.path(), "downloader"), &get_args);
    assert_same_file(&downloader.wait_complete(&file_id, DOWNLOAD_TIMEOUT), &original);
    assert!(downloader.wait_exit(EXIT_TIMEOUT).success(), "{}", downloader.report());

    let wire = captured.lock().expect("the relay's capture").clone();
    let file = std::fs::read(&original).expect("the original");
    assert!(wire.len() >= file.len(), "the file went through the relay ({} bytes on the wire)", wire.len());
    let found = clear_windows(&file, &wire);
    assert_eq!(found, 0, "{found} pieces of the file appear in the clear on the wire");
    // The check itself finds the file's bytes where they are in the clear.
    assert!(clear_windows(&file, &file[1000..5000]) > 0);
}

/// The `Hello` of a peer claiming `peer_id`.
fn hello(role: Role, peer_id: PeerId, listen_port: u16) -> Message {
    Message::Hello(Hello::new(role, peer_id, listen_port))
}

/// The id the tracker lists for the holder at `addr` of `file_id`.
fn holder_id(tracker: SocketAddr, file_id: FileId, addr: SocketAddr) -> PeerId {
    let mut asker = WireClient::hello(None, tracker, Role::Client, 0);
    asker.send(&Message::Locate { file_id, with_manifest: false });
    match asker.recv(ANSWER_TIMEOUT) {
        Some(Message::Located { holders, .. }) => {
            holders.peers().find(|p| p.addr == addr).map(|p| p.peer_id).expect("the holder is listed")
        }
        other => panic!("locate answered with {other:?}"),
    }
}

fn dir_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// Bytes of the file compared at a time: a run this long found on the wire is the file's.
const WINDOW_BYTES: usize = 32;

/// How many of the file's aligned 32-byte windows appear anywhere in `wire`. A run of the
/// file of at least two windows' length in the clear contains an aligned window.
fn clear_windows(file: &[u8], wire: &[u8]) -> usize {
    let windows: HashSet<&[u8]> = file.chunks_exact(WINDOW_BYTES).collect();
    wire.windows(WINDOW_BYTES).filter(|w| windows.contains(w)).count()
}

/// Accepts connections on `listen` and relays each to `target` both ways, keeping every byte
/// that passes; the relay threads end with the test process.
fn relay(listen: SocketAddr, target: SocketAddr) -> Arc<Mutex<Vec<u8>>> {
    let listener = TcpListener::bind(listen).expect("the relay binds the seeder's port on 127.0.0.1");
    let captured = Arc::new(Mutex::new(Vec::new()));
    let capture = captured.clone();
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(target) else { continue };
            for (from, to) in [(&client, &server), (&server, &client)] {
                let (mut from, mut to) = (from.try_clone().expect("a handle"), to.try_clone().expect("a handle"));
                let capture = capture.clone();
                thread::spawn(move || {
                    let mut buffer = [0u8; 64 * 1024];
                    while let Ok(n @ 1..) = from.read(&mut buffer) {
                        capture.lock().expect("the capture").extend_from_slice(&buffer[..n]);
                        if to.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                    to.shutdown(Shutdown::Write).ok();
                });
            }
        }
    });
    captured
}

/// Runs `p2p-node keygen PATH` and returns the new key's peer id.
fn keygen(path: &Path) -> String {
    let made = run_node(&["keygen", path_str(path)], EXIT_TIMEOUT);
    assert!(made.status.success(), "{}", stderr_of(&made));
    String::from_utf8_lossy(&made.stdout).trim().to_owned()
}

#[test]
fn an_allow_list_refuses_other_ids_on_both_sides_and_a_pinned_tracker_must_prove_its_id() {
    let dir = temp_dir();
    let (seeder_store, member_store) = (subdir(dir.path(), "seeder"), subdir(dir.path(), "member"));
    let tracker_key = dir.path().join("tracker.key");
    let tracker_id = keygen(&tracker_key);
    let seeder_id = keygen(&seeder_store.join("node.key"));
    let member_id = keygen(&member_store.join("node.key"));
    let allow = dir.path().join("allow");
    std::fs::write(&allow, format!("# the swarm\n{tracker_id}\n{seeder_id}\n{member_id}  # member\n"))
        .expect("written");
    let original = random_file(dir.path(), "team.bin", 256 * 1024, 13);
    let mut tracker = Node::spawn(
        "tracker",
        &["tracker", "--listen", "127.0.0.1:0", "--key", path_str(&tracker_key), "--allow", path_str(&allow)],
    );
    let tracker_addr = tracker.listening_addr();
    let pinned = format!("{tracker_id}@{tracker_addr}");
    let trusting = ["--allow", path_str(&allow)];
    let seeder_args = [&["--share", path_str(&original)][..], &trusting[..]].concat();
    let mut seeder = Node::spawn(
        "seeder",
        &[&["peer", "--tracker", pinned.as_str(), "--store", path_str(&seeder_store)][..], &seeder_args].concat(),
    );
    seeder.listening_addr();
    let file_id = seeder.wait_sharing().file_id;

    let tracker_arg = tracker_addr.to_string();
    let outsider = subdir(dir.path(), "outsider");
    let refused = run_node(
        &["peer", "--tracker", &tracker_arg, "--store", path_str(&outsider), "--get", &file_id, "--exit-when-done"],
        REFUSAL_TIMEOUT,
    );
    assert_eq!(refused.status.code(), Some(1), "an unlisted peer: {}", stderr_of(&refused));
    assert!(stderr_of(&refused).contains("allow-list"), "an unlisted peer is told why: {}", stderr_of(&refused));
    let says_why = (0..100).any(|_| {
        thread::sleep(Duration::from_millis(50));
        tracker.stderr_tail().contains("not on this node's allow-list")
    });
    assert!(says_why, "the tracker says why it refused:\n{}", tracker.stderr_tail());
    let listed = run_node(&["ls", "--tracker", &tracker_arg], REFUSAL_TIMEOUT);
    assert_eq!(listed.status.code(), Some(1), "ls with a new key");
    assert!(listed.stdout.is_empty() && stderr_of(&listed).contains("allow-list"), "{}", stderr_of(&listed));
    let member_key = member_store.join("node.key");
    let listed = run_node(&["ls", "--tracker", &tracker_arg, "--key", path_str(&member_key)], REFUSAL_TIMEOUT);
    assert!(listed.status.success() && String::from_utf8_lossy(&listed.stdout).contains(&file_id), "ls --key");

    let wrong_pin = format!("{seeder_id}@{tracker_addr}");
    let misled = run_node(&["peer", "--tracker", &wrong_pin, "--store", path_str(&outsider)], REFUSAL_TIMEOUT);
    assert_eq!(misled.status.code(), Some(1), "a tracker proving another id: {}", stderr_of(&misled));
    assert!(stderr_of(&misled).contains("pinned"), "the peer says why: {}", stderr_of(&misled));

    let out = subdir(dir.path(), "out");
    let get = [&["--get", file_id.as_str(), "--out", path_str(&out), "--exit-when-done"][..], &trusting[..]].concat();
    let mut member = Node::spawn(
        "member",
        &[&["peer", "--tracker", pinned.as_str(), "--store", path_str(&member_store)][..], &get].concat(),
    );
    assert_same_file(&member.wait_complete(&file_id, DOWNLOAD_TIMEOUT), &original);
    assert!(member.wait_exit(EXIT_TIMEOUT).success(), "{}", member.report());
    assert!(seeder.is_running() && tracker.is_running());
}
