//! The seed's example between real processes: A, B and C each hold one piece of a three-piece
//! file; D downloads all three; then A, B and C go away and E downloads the file from D alone.
//! They go away twice over: gracefully (SIGTERM: they tell the tracker they leave), and by
//! crashing (SIGKILL: the tracker notices the closed connections, well before the TTL). The
//! same story runs on the IPv6 loopback, where the machine has one.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    assert_same_file, has_ipv6_loopback, random_file, run_node, subdir, temp_dir, Node, DOWNLOAD_TIMEOUT, EXIT_TIMEOUT,
};

const PIECE_BYTES: usize = 64 * 1024;

/// Bound on the tracker forgetting departed peers; shorter than its TTL (3 × 10 s), so only
/// noticing the leave or the closed connection passes.
const FORGET_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn d_gathers_one_piece_each_from_a_b_c_then_they_leave_and_e_downloads_from_d_alone() {
    abcd_story(HoldersGo::Terminated, IpAddr::V4(Ipv4Addr::LOCALHOST));
}

#[test]
fn d_gathers_one_piece_each_from_a_b_c_then_they_crash_and_e_downloads_from_d_alone() {
    abcd_story(HoldersGo::Killed, IpAddr::V4(Ipv4Addr::LOCALHOST));
}

#[test]
fn the_same_story_on_the_ipv6_loopback() {
    if has_ipv6_loopback() {
        abcd_story(HoldersGo::Killed, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
}

/// How A, B and C go away once D has the file.
#[derive(Debug, Clone, Copy, PartialEq)]
enum HoldersGo {
    /// SIGTERM: each tells the tracker it leaves and exits 0.
    Terminated,
    /// SIGKILL: the tracker only sees the connections close.
    Killed,
}

/// The story with the tracker and every peer listening on `loopback`.
fn abcd_story(holders_go: HoldersGo, loopback: IpAddr) {
    let listen = SocketAddr::new(loopback, 0).to_string();
    let dir = temp_dir();
    let original = random_file(dir.path(), "abc.bin", 3 * PIECE_BYTES, 1);
    let source = original.to_str().expect("UTF-8 path");
    let piece_size = PIECE_BYTES.to_string();
    let (_tracker, tracker_addr) = Node::tracker_on(&listen);

    // A, B and C each share one piece of the same file.
    let mut holders: Vec<Node> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(piece, name)| {
            let store = subdir(dir.path(), name);
            let piece = piece.to_string();
            let args = ["--share", source, "--only-pieces", &piece, "--piece-size", &piece_size];
            Node::peer_on(name, &[tracker_addr], &listen, &store, &args)
        })
        .collect();
    let ids: Vec<String> = holders.iter_mut().map(|holder| holder.wait_sharing().file_id).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "A, B and C announced different ids for one file: {ids:?}");
    let file_id = ids[0].clone();

    // D asks for the file and gathers piece 0 from A, 1 from B and 2 from C; it stays to seed.
    let d_store = subdir(dir.path(), "d");
    let d_out = subdir(dir.path(), "d-out");
    let d_args = ["--get", &file_id, "--out", d_out.to_str().expect("UTF-8 path")];
    let mut d = Node::peer_on("d", &[tracker_addr], &listen, &d_store, &d_args);
    let d_copy = d.wait_complete(&file_id, DOWNLOAD_TIMEOUT);
    assert_same_file(&d_copy, &original);
    assert_eq!(d.wait_downloaded(&file_id), (3 * PIECE_BYTES) as u64, "D fetched more or less than the file");

    // A, B and C go away, and the tracker forgets them: D alone holds each piece.
    for holder in &mut holders {
        match holders_go {
            HoldersGo::Terminated => holder.terminate(),
            HoldersGo::Killed => holder.kill(),
        }
    }
    for holder in &mut holders {
        let status = holder.wait_exit(EXIT_TIMEOUT);
        if holders_go == HoldersGo::Terminated {
            assert!(status.success(), "a holder stopped by SIGTERM exited with {status}\n{}", holder.report());
        }
    }
    let d_alone = "peers=1 holders=1,1,1";
    let listing = wait_until_listed_holders(tracker_addr, &file_id, d_alone);
    assert!(listing.contains(d_alone), "`ls` should show only D holding the file, got {listing:?}");

    // E finds only D, downloads everything from it and exits 0 on its own.
    let e_store = subdir(dir.path(), "e");
    let e_out = subdir(dir.path(), "e-out");
    let e_args = ["--get", &file_id, "--out", e_out.to_str().expect("UTF-8 path"), "--exit-when-done"];
    let mut e = Node::peer_on("e", &[tracker_addr], &listen, &e_store, &e_args);
    let e_copy = e.wait_complete(&file_id, DOWNLOAD_TIMEOUT);
    assert_same_file(&e_copy, &original);
    assert_eq!(e.wait_downloaded(&file_id), (3 * PIECE_BYTES) as u64, "E fetched more or less than the file");
    let status = e.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "E with --exit-when-done exited with {status}\n{}", e.report());
    assert!(d.is_running(), "D stopped seeding\n{}", d.report());
}

/// Polls `p2p-node ls` until the line of `file_id` contains `wanted` or [`FORGET_TIMEOUT`]
/// passed; returns the last line seen for the file.
fn wait_until_listed_holders(tracker: SocketAddr, file_id: &str, wanted: &str) -> String {
    let tracker = tracker.to_string();
    let deadline = Instant::now() + FORGET_TIMEOUT;
    loop {
        let output = run_node(&["ls", "--tracker", &tracker], EXIT_TIMEOUT);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let line = stdout.lines().find(|line| line.starts_with(file_id)).unwrap_or("").to_owned();
        if line.contains(wanted) || Instant::now() >= deadline {
            return line;
        }
        thread::sleep(Duration::from_millis(200));
    }
}
