//! Beyond one tracker, between real processes: a peer given two trackers goes on when one is
//! killed, a silent first tracker does not hold a download up, and peers no tracker named to
//! each other meet by peer exchange and finish once the trackers are killed.

mod common;

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    assert_same_file, path_str, random_file, run_node, stderr_of, subdir, temp_dir, unused_port, wait_store_progress,
    Node, DOWNLOAD_TIMEOUT, STARTUP_TIMEOUT,
};

#[test]
fn two_trackers_one_killed_mid_download_and_the_download_and_a_later_one_complete() {
    const PIECE_BYTES: usize = 16 * 1024;
    let dir = temp_dir();
    let original = random_file(dir.path(), "two.bin", 32 * PIECE_BYTES, 13);
    let (mut doomed, doomed_addr) = Node::tracker();
    let (_survivor, survivor_addr) = Node::tracker();
    let trackers = [doomed_addr, survivor_addr];
    let piece_size = PIECE_BYTES.to_string();
    // Slow enough that the download is under way for a few seconds.
    let seed_args = ["--share", path_str(&original), "--piece-size", &piece_size, "--upload-limit", "131072"];
    let mut seeder = Node::peer_on("seeder", &trackers, "127.0.0.1:0", &subdir(dir.path(), "s"), &seed_args);
    let file_id = seeder.wait_sharing().file_id;

    let d_store = subdir(dir.path(), "d");
    let d_out = subdir(dir.path(), "d-out");
    let d_args = ["--get", &file_id, "--out", path_str(&d_out), "--exit-when-done"];
    let mut d = Node::peer_on("d", &trackers, "127.0.0.1:0", &d_store, &d_args);
    let have = wait_store_progress(&d_store, &mut d, 2, DOWNLOAD_TIMEOUT);
    assert!(!d.has_printed("complete "), "the download ended before a tracker could be killed mid-way ({have})");
    doomed.kill();
    assert_same_file(&d.wait_complete(&file_id, DOWNLOAD_TIMEOUT), &original);

    // A peer started now is given the dead tracker first: it finds the file through the other.
    let e_out = subdir(dir.path(), "e-out");
    let e_args = ["--get", &file_id, "--out", path_str(&e_out), "--exit-when-done"];
    let mut e = Node::peer_on("e", &trackers, "127.0.0.1:0", &subdir(dir.path(), "e"), &e_args);
    assert_same_file(&e.wait_complete(&file_id, DOWNLOAD_TIMEOUT), &original);
}

#[test]
fn a_silent_first_tracker_does_not_hold_up_a_get_that_the_second_one_serves() {
    let dir = temp_dir();
    let original = random_file(dir.path(), "quiet.bin", 8 * 16 * 1024, 17);
    let silent = SilentTracker::start();
    let (_tracker, tracker_addr) = Node::tracker();
    let mut seeder = Node::peer("seeder", tracker_addr, &subdir(dir.path(), "s"), &["--share", path_str(&original)]);
    let file_id = seeder.wait_sharing().file_id;

    let out = subdir(dir.path(), "d-out");
    let args = ["--get", &file_id, "--out", path_str(&out), "--exit-when-done"];
    let trackers = [silent.addr, tracker_addr];
    let mut d = Node::peer_on("d", &trackers, "127.0.0.1:0", &subdir(dir.path(), "d"), &args);
    assert_same_file(&d.wait_complete(&file_id, DOWNLOAD_TIMEOUT), &original);
    assert!(silent.connections.load(Ordering::SeqCst) > 0, "the silent tracker was never asked");
    // A client that gives up on a silent tracker probes it in HTTP (after its 5 s timeout):
    // none came, so neither the start nor the download waited for it.
    assert!(!silent.probed.load(Ordering::SeqCst), "the download waited for the silent tracker's timeout");
}

#[test]
fn ls_of_two_trackers_lists_the_files_of_the_one_that_answers_and_names_it() {
    let dir = temp_dir();
    let original = random_file(dir.path(), "listed.bin", 4 * 16 * 1024, 18);
    let (_tracker, tracker_addr) = Node::tracker();
    let mut seeder = Node::peer("seeder", tracker_addr, &subdir(dir.path(), "s"), &["--share", path_str(&original)]);
    let file_id = seeder.wait_sharing().file_id;
    // Nothing listens at the first address: it refuses, and the second is asked at once.
    let down = SocketAddr::from(([127, 0, 0, 1], unused_port())).to_string();
    let up = tracker_addr.to_string();

    let listed = run_node(&["ls", "--tracker", &down, "--tracker", &up], STARTUP_TIMEOUT);
    assert_eq!(listed.status.code(), Some(0), "{}", stderr_of(&listed));
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(stdout.starts_with(&format!("{file_id} listed.bin ")), "{stdout}");
    assert!(stderr_of(&listed).contains(&format!("files of the tracker at {up}")), "{}", stderr_of(&listed));

    let none = run_node(&["ls", "--tracker", &down, "--tracker", &down], STARTUP_TIMEOUT);
    assert_eq!(none.status.code(), Some(1));
    assert!(stderr_of(&none).contains(&down), "{}", stderr_of(&none));
}

/// A listener that accepts connections and never says a byte, noting whether one of them was
/// the HTTP probe a client sends a silent tracker once its wait for a handshake timed out.
struct SilentTracker {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    probed: Arc<AtomicBool>,
}

impl SilentTracker {
    /// Connections it accepts before its thread ends.
    const CONNECTIONS_MAX: usize = 64;

    fn start() -> SilentTracker {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let (connections, probed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (counted, seen) = (connections.clone(), probed.clone());
        thread::spawn(move || {
            for stream in listener.incoming().take(SilentTracker::CONNECTIONS_MAX).flatten() {
                counted.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                thread::spawn(move || hold_silently(stream, &seen));
            }
        });
        SilentTracker { addr, connections, probed }
    }
}

/// Reads what a connection sends without a byte in answer, for a bounded time or until it
/// closes; sets `probed` when it opens with an HTTP request.
fn hold_silently(mut stream: TcpStream, probed: &AtomicBool) {
    stream.set_read_timeout(Some(DOWNLOAD_TIMEOUT)).ok();
    let mut opening = [0u8; 5];
    if stream.read_exact(&mut opening).is_ok() && opening.starts_with(b"HEAD ") {
        probed.store(true, Ordering::SeqCst);
    }
    std::io::copy(&mut stream.take(1 << 20), &mut std::io::sink()).ok();
}

#[test]
fn leechers_no_tracker_named_to_each_other_meet_by_peer_exchange_and_finish_without_trackers_or_seeder() {
    const PIECE_BYTES: usize = 16 * 1024;
    const PIECES: usize = 32;
    let dir = temp_dir();
    let original = random_file(dir.path(), "pex.bin", PIECES * PIECE_BYTES, 21);
    // Each leecher has its own tracker, and the seeder announces to both: a tracker names the
    // seeder to its leecher and never the other leecher, whom it does not know.
    let (mut tracker_1, tracker_1_addr) = Node::tracker();
    let (mut tracker_2, tracker_2_addr) = Node::tracker();
    let piece_size = PIECE_BYTES.to_string();
    // Past its first burst the seeder serves four pieces a second.
    let seed_args = ["--share", path_str(&original), "--piece-size", &piece_size, "--upload-limit", "65536"];
    let seeder_store = subdir(dir.path(), "s");
    let mut seeder =
        Node::peer_on("seeder", &[tracker_1_addr, tracker_2_addr], "127.0.0.1:0", &seeder_store, &seed_args);
    let file_id = seeder.wait_sharing().file_id;

    let stores = [subdir(dir.path(), "l1"), subdir(dir.path(), "l2")];
    let mut leechers: Vec<Node> = [tracker_1_addr, tracker_2_addr]
        .iter()
        .zip(&stores)
        .enumerate()
        .map(|(i, (tracker, store))| {
            let out = subdir(dir.path(), &format!("l{}-out", i + 1));
            // Without --exit-when-done: one that completes first keeps serving the other.
            let args = ["--get", &file_id, "--out", path_str(&out)];
            Node::peer(&format!("l{}", i + 1), *tracker, store, &args)
        })
        .collect();
    // Each got the manifest from the seeder (its tracker says so as it announces the file);
    // then the trackers die.
    for tracker in [&mut tracker_1, &mut tracker_2] {
        wait_until("the leecher announces", || tracker.stderr_tail().contains(" wants "));
        tracker.kill();
    }

    // Once the two hold every piece between them, the seeder goes too: each must get the rest
    // from the other, whom only the seeder's peer exchange named. (A finished download's
    // bitfield file gives way to the finished file.)
    wait_until("the leechers hold every piece between them", || {
        union_count(&stores) == PIECES as u32 || leechers.iter_mut().any(|leecher| leecher.has_printed("complete "))
    });
    seeder.kill();
    for leecher in &mut leechers {
        assert_same_file(&leecher.wait_complete(&file_id, DOWNLOAD_TIMEOUT), &original);
    }
}

/// Pieces verified in at least one of `stores` (each holds one download's bitfield file: a
/// 4-byte header, then one bit per piece).
fn union_count(stores: &[impl AsRef<Path>]) -> u32 {
    let mut union: Vec<u8> = Vec::new();
    for store in stores {
        let Ok(entries) = fs::read_dir(store) else { continue };
        for entry in entries.filter_map(Result::ok) {
            if !entry.file_name().to_string_lossy().ends_with(".bitfield") {
                continue;
            }
            let bits = fs::read(entry.path()).unwrap_or_default();
            let bits = bits.get(4..).unwrap_or_default();
            union.resize(union.len().max(bits.len()), 0);
            union.iter_mut().zip(bits).for_each(|(u, b)| *u |= b);
        }
    }
    union.iter().map(|b| b.count_ones()).sum()
}

/// Polls `done` until it holds; panics naming `what` after [`STARTUP_TIMEOUT`] (or
/// [`DOWNLOAD_TIMEOUT`], the longer).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + STARTUP_TIMEOUT.max(DOWNLOAD_TIMEOUT);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}
