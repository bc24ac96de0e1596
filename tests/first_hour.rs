//! The first hour on a real network (issue 15): what a new user runs into, each case checked as
//! the user sees it: exit codes, the one line on stderr that says why, and what the store holds
//! afterwards.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use p2p_core::limits::CHUNKS_PER_PIECE_MAX;
use p2p_core::wire::{Message, Role};

use common::wire::WireClient;
use common::{
    assert_same_file, node_bin, path_str, random_file, run_bounded, run_node, stderr_of, subdir, temp_dir,
    wait_store_progress, Node, DOWNLOAD_TIMEOUT, EXIT_TIMEOUT, STARTUP_TIMEOUT,
};

const PIECE_BYTES: u64 = 256 * 1024;
const PIECE_COUNT: u64 = 32;
const FILE_BYTES: u64 = PIECE_BYTES * PIECE_COUNT; // 8 MiB
/// The seeder's cap: the whole file takes 8 s, time enough to interrupt a download.
const UPLOAD_LIMIT_BYTES_PER_S: u64 = 1024 * 1024;

#[test]
fn interrupted_download_exits_130_or_143_and_the_same_command_resumes_it() {
    let dir = temp_dir();
    let original = random_file(dir.path(), "big.bin", FILE_BYTES as usize, 21);
    let (_tracker, tracker_addr) = Node::tracker();
    let (mut seeder, file_id) = capped_seeder(dir.path(), tracker_addr, &original);

    let store = subdir(dir.path(), "downloader");
    let out = subdir(dir.path(), "out");
    let get_args = ["--get", file_id.as_str(), "--out", path_str(&out), "--exit-when-done"];

    let mut first = Node::peer("downloader (SIGINT)", tracker_addr, &store, &get_args);
    wait_store_progress(&store, &mut first, 4, DOWNLOAD_TIMEOUT);
    first.interrupt();
    let status = first.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(130), "SIGINT mid-download must exit 130\n{}", first.report());
    let (have, total) = interrupted_at(&first);
    assert_eq!(total, PIECE_COUNT as u32 * CHUNKS_PER_PIECE_MAX, "the message counts the file's chunks");
    assert!(have < total, "interrupted with {have}/{total} chunks; the download was not over");

    // The store holds at least what the message said: the same command resumes from there.
    let mut second = Node::peer("downloader (SIGTERM)", tracker_addr, &store, &get_args);
    let resumed = second.wait_for_line(&format!("resumed {file_id} "), STARTUP_TIMEOUT);
    let resumed_have: u32 = resumed_have(&resumed);
    assert!(resumed_have >= have, "interrupted at {have} pieces but resumed with {resumed_have}");
    second.terminate();
    let status = second.wait_exit(EXIT_TIMEOUT);
    if !second.has_printed(&format!("complete {file_id} ")) {
        assert_eq!(status.code(), Some(143), "SIGTERM mid-download must exit 143\n{}", second.report());
        interrupted_at(&second);
    }

    let mut third = Node::peer("downloader (to the end)", tracker_addr, &store, &get_args);
    let copy = third.wait_complete(&file_id, DOWNLOAD_TIMEOUT);
    assert_same_file(&copy, &original);
    assert!(third.wait_exit(EXIT_TIMEOUT).success(), "{}", third.report());

    // A seeder without downloads stops cleanly on SIGINT.
    seeder.interrupt();
    assert!(seeder.wait_exit(EXIT_TIMEOUT).success(), "a seeder exits 0 on SIGINT\n{}", seeder.report());
}

/// A seeder of `original` capped at [`UPLOAD_LIMIT_BYTES_PER_S`], with its file id.
fn capped_seeder(dir: &Path, tracker: SocketAddr, original: &Path) -> (Node, String) {
    let store = subdir(dir, "seeder");
    let piece_size = PIECE_BYTES.to_string();
    let limit = UPLOAD_LIMIT_BYTES_PER_S.to_string();
    let args = ["--share", path_str(original), "--piece-size", &piece_size, "--upload-limit", &limit];
    let mut seeder = Node::peer("seeder", tracker, &store, &args);
    let file_id = seeder.wait_sharing().file_id;
    (seeder, file_id)
}

/// `interrupted at H/T pieces; run the same command to resume` on the stderr of `node`, which
/// exited → (H, T). Its stderr is read on a thread that may lag the exit a little.
fn interrupted_at(node: &Node) -> (u32, u32) {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let is_message =
        |line: &&str| line.starts_with("interrupted at ") && line.ends_with("; run the same command to resume");
    let stderr = loop {
        let stderr = node.stderr_tail();
        if stderr.lines().any(|line| is_message(&line)) || Instant::now() >= deadline {
            break stderr;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let line =
        stderr.lines().find(is_message).unwrap_or_else(|| panic!("no interruption message on stderr:\n{stderr}"));
    let field = line.split_whitespace().nth(2).unwrap_or("");
    let parsed = field.split_once('/').and_then(|(have, total)| Some((have.parse().ok()?, total.parse().ok()?)));
    parsed.unwrap_or_else(|| panic!("malformed interruption message {line:?}"))
}

/// `resumed FILE_ID HAVE/TOTAL` → HAVE.
fn resumed_have(line: &str) -> u32 {
    let field = line.split_whitespace().nth(2).unwrap_or("");
    field.split('/').next().and_then(|have| have.parse().ok()).unwrap_or_else(|| panic!("malformed {line:?}"))
}

#[test]
fn a_second_process_on_a_store_is_refused_at_once_and_leaves_the_store_alone() {
    let dir = temp_dir();
    let original = random_file(dir.path(), "f.bin", 1024 * 1024, 22);
    let (_tracker, tracker_addr) = Node::tracker();
    let store = subdir(dir.path(), "store");
    let mut first = Node::peer("first", tracker_addr, &store, &["--share", path_str(&original)]);
    let file_id = first.wait_sharing().file_id;
    let before = store_listing(&store);

    let tracker = tracker_addr.to_string();
    let args =
        ["peer", "--tracker", &tracker, "--listen", "127.0.0.1:0", "--store", path_str(&store), "--get", &file_id];
    let started = Instant::now();
    let output = run_node(&args, COMMAND_TIMEOUT);
    assert_eq!(output.status.code(), Some(1), "second process on the store\n{}", stderr_of(&output));
    assert!(started.elapsed() < QUICK_FAILURE, "refused after {:?}, not at once", started.elapsed());
    let stderr = stderr_of(&output);
    assert!(stderr.contains("in use by another p2p-node"), "the message says why: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening on"), "refused before listening");
    assert_eq!(store_listing(&store), before, "the refused process changed the store");
    assert!(first.is_running(), "the first process is unharmed\n{}", first.report());
}

#[test]
fn unusable_paths_fail_before_listening_with_one_line_naming_the_operation() {
    let dir = temp_dir();
    let original = random_file(dir.path(), "f.bin", 1024 * 1024, 23);
    let (_tracker, tracker_addr) = Node::tracker();
    let mut seeder =
        Node::peer("seeder", tracker_addr, &subdir(dir.path(), "seeder"), &["--share", path_str(&original)]);
    let file_id = seeder.wait_sharing().file_id;
    let tracker = tracker_addr.to_string();

    let missing = dir.path().join("no-such-file");
    let store = subdir(dir.path(), "sharer");
    let args = ["peer", "--tracker", &tracker, "--store", path_str(&store), "--share", path_str(&missing)];
    let output = run_node(&args, COMMAND_TIMEOUT);
    assert_fails_before_listening(&output, &format!("cannot share {}", missing.display()));

    let out = subdir(dir.path(), "read-only-out");
    let store = subdir(dir.path(), "downloader");
    let args = [
        "peer",
        "--tracker",
        &tracker,
        "--store",
        path_str(&store),
        "--get",
        &file_id,
        "--out",
        path_str(&out),
        "--exit-when-done",
    ];
    let output = run_read_only(&out, &args);
    assert_fails_before_listening(&output, &format!("cannot write in the output directory {}", out.display()));
    assert!(seeder.is_running(), "{}", seeder.report());
}

/// Bound on a failure that should come at once (no download, no retry loop).
const QUICK_FAILURE: Duration = Duration::from_secs(5);

/// Bound on naming a remote that is not a tracker: a silent one is asked again in HTTP after
/// the client's handshake timeout (5 s).
const HANDSHAKE_FAILURE: Duration = Duration::from_secs(10);

/// Bound on commands expected to fail or finish quickly.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `p2p-node ARGS` with the directory `read_only` unwritable: by its mode for a normal
/// user; for root (whom modes do not stop) by a read-only bind mount in a mount namespace of
/// its own, so nothing outside the command sees the mount.
fn run_read_only(read_only: &Path, args: &[&str]) -> Output {
    let mut mode = fs::metadata(read_only).expect("metadata").permissions();
    mode.set_mode(0o555);
    fs::set_permissions(read_only, mode).expect("chmod");
    if fs::write(read_only.join("probe"), b"").is_err() {
        return run_node(args, COMMAND_TIMEOUT);
    }
    fs::remove_file(read_only.join("probe")).expect("remove probe");
    let dir = path_str(read_only);
    let script = format!("mount --bind {dir} {dir} && mount -o remount,bind,ro {dir} && exec \"$@\"");
    let mut wrapped = vec!["--mount", "sh", "-c", &script, "sh", node_bin()];
    wrapped.extend_from_slice(args);
    run_bounded("unshare", &wrapped, COMMAND_TIMEOUT)
}

/// The command failed with exit 1 and one stderr line containing `expected`, before it printed
/// `listening on` (so before it announced or fetched anything).
fn assert_fails_before_listening(output: &Output, expected: &str) {
    let stderr = stderr_of(output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(expected), "stderr should say {expected:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("listening on"), "failed only after listening: {stdout}");
}

/// Names and sizes of the files in `dir`, sorted.
fn store_listing(dir: &Path) -> Vec<(String, u64)> {
    let mut listing: Vec<(String, u64)> = fs::read_dir(dir)
        .expect("read store")
        .map(|entry| entry.expect("entry"))
        .map(|entry| (entry.file_name().to_string_lossy().into_owned(), entry.metadata().expect("metadata").len()))
        .collect();
    listing.sort();
    listing
}

#[test]
fn a_tracker_address_that_is_an_http_server_or_a_peer_is_named_as_such() {
    let dir = temp_dir();
    let original = random_file(dir.path(), "f.bin", 256 * 1024, 24);
    let (_tracker, tracker_addr) = Node::tracker();
    let mut seeder =
        Node::peer("seeder", tracker_addr, &subdir(dir.path(), "seeder"), &["--share", path_str(&original)]);
    let file_id = seeder.wait_sharing().file_id;
    let http = http_server_answering_400();

    for (wrong, what) in [(http, "this is an HTTP server"), (seeder.addr(), "this is a swarm peer, not a tracker")] {
        let wrong = wrong.to_string();
        let store = temp_dir();
        let get =
            ["peer", "--tracker", &wrong, "--store", path_str(store.path()), "--get", &file_id, "--exit-when-done"];
        for args in [&get[..], &["ls", "--tracker", &wrong][..]] {
            let started = Instant::now();
            let output = run_node(args, COMMAND_TIMEOUT);
            let stderr = stderr_of(&output);
            assert_eq!(output.status.code(), Some(1), "p2p-node {args:?}\n{stderr}");
            assert!(stderr.contains(what) && stderr.contains(&wrong), "p2p-node {args:?} names {what:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
            assert!(started.elapsed() < HANDSHAKE_FAILURE, "p2p-node {args:?} took {:?}", started.elapsed());
        }
    }
    assert!(seeder.is_running(), "{}", seeder.report());
}

/// Connections an [`http_server_answering_400`] answers before its thread ends.
const HTTP_ANSWERS_MAX: usize = 8;

/// A stand-in for a web server on 127.0.0.1: like many, it reads a request up to its first line
/// ending and answers anything that is not HTTP with `400 Bad Request`, then closes.
fn http_server_answering_400() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    thread::spawn(move || {
        for stream in listener.incoming().take(HTTP_ANSWERS_MAX) {
            let Ok(mut stream) = stream else { continue };
            stream.set_read_timeout(Some(COMMAND_TIMEOUT)).ok();
            let mut byte = [0u8; 1];
            while let Ok(1) = stream.read(&mut byte) {
                if byte[0] == b'\n' {
                    stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").ok();
                    break;
                }
            }
        }
    });
    addr
}

#[test]
fn a_download_whose_only_holder_is_unreachable_gives_up_naming_it_and_why() {
    let dir = temp_dir();
    let original = random_file(dir.path(), "f.bin", 1024 * 1024, 25);
    let (_tracker, tracker_addr) = Node::tracker();
    // The seeder listens on 127.0.0.2 but reaches the tracker from 127.0.0.1: the tracker hands
    // out 127.0.0.1 with the seeder's port, where nothing listens (as a seeder on the tracker's
    // host that uses --tracker 127.0.0.1:PORT is handed out to other hosts).
    let tracker = tracker_addr.to_string();
    let seeder_store = subdir(dir.path(), "seeder");
    let seeder_args = ["peer", "--tracker", &tracker, "--listen", "127.0.0.2:0", "--store", path_str(&seeder_store)];
    let mut seeder = Node::spawn("seeder", &[&seeder_args[..], &["--share", path_str(&original)]].concat());
    let seeder_port = seeder.listening_addr().port();
    let file_id = seeder.wait_sharing().file_id;
    let handed_out = format!("127.0.0.1:{seeder_port}");

    let stderr = download_giving_up(
        tracker_addr,
        &subdir(dir.path(), "downloader"),
        &file_id,
        &handed_out,
        "connection refused",
    );
    let said = stderr.lines().filter(|line| line.contains(&format!("cannot connect to holder {handed_out}"))).count();
    assert_eq!(said, 1, "the failure is said once at the default level, not per retry: {stderr}");
    assert!(seeder.is_running(), "{}", seeder.report());
}

/// Runs a download of `file_id` on `store` with `--exit-when-done`, whose holders cannot be
/// reached: it must exit 1 within the bounded time, its last stderr line naming `holder` and
/// `reason`. Returns its stderr.
fn download_giving_up(tracker: SocketAddr, store: &Path, file_id: &str, holder: &str, reason: &str) -> String {
    let tracker = tracker.to_string();
    let args = ["peer", "--tracker", &tracker, "--store", path_str(store), "--get", file_id, "--exit-when-done"];
    let started = Instant::now();
    let output = run_node(&args, UNREACHABLE_FAILURE);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() < UNREACHABLE_FAILURE, "gave up after {:?}", started.elapsed());
    let last = stderr.lines().last().unwrap_or("");
    assert!(last.contains(&format!("cannot reach any holder of {file_id}")), "the last line says why: {stderr}");
    assert!(last.contains(&format!("{holder} ({reason}")), "names the holder and why: {stderr}");
    stderr
}

/// Bound on giving up on unreachable holders: the node's wait (20 s) and some slack.
const UNREACHABLE_FAILURE: Duration = Duration::from_secs(40);

#[test]
fn a_restarted_peer_seeds_what_its_store_holds_and_a_finished_get_is_not_fetched_again() {
    let dir = temp_dir();
    let original = random_file(dir.path(), "kept.bin", 2 * 1024 * 1024, 26);
    let (_tracker, tracker_addr) = Node::tracker();

    // A seeder shares the file, stops, and comes back on the same store without --share.
    let seeder_store = subdir(dir.path(), "seeder");
    let mut first = Node::peer("seeder", tracker_addr, &seeder_store, &["--share", path_str(&original)]);
    let file_id = first.wait_sharing().file_id;
    first.terminate();
    assert!(first.wait_exit(EXIT_TIMEOUT).success(), "{}", first.report());
    let mut seeder = Node::peer("seeder (restarted, no flags)", tracker_addr, &seeder_store, &[]);
    let seeding = seeder.wait_for_line(&format!("seeding {file_id} "), STARTUP_TIMEOUT);
    assert!(seeding.ends_with(" kept.bin 8"), "the remembered file with its pieces: {seeding:?}");

    // It is a holder again: a download from it alone completes.
    let store = subdir(dir.path(), "downloader");
    let out = subdir(dir.path(), "out");
    let get_args = ["--get", file_id.as_str(), "--out", path_str(&out), "--exit-when-done"];
    let mut downloader = Node::peer("downloader", tracker_addr, &store, &get_args);
    let copy = downloader.wait_complete(&file_id, DOWNLOAD_TIMEOUT);
    assert_same_file(&copy, &original);
    assert!(downloader.wait_exit(EXIT_TIMEOUT).success(), "{}", downloader.report());

    // The same command again: the file in --out is reused, nothing is fetched.
    let mut again = Node::peer("downloader (again)", tracker_addr, &store, &get_args);
    assert_eq!(again.wait_complete(&file_id, STARTUP_TIMEOUT), copy);
    assert_eq!(again.wait_downloaded(&file_id), 0, "a finished download is not fetched again");
    assert!(again.wait_exit(EXIT_TIMEOUT).success(), "{}", again.report());
    assert_same_file(&copy, &original);
}

#[test]
fn a_fresh_store_reuses_the_file_already_in_out_and_fetches_only_the_pieces_that_fail() {
    let dir = temp_dir();
    let original = random_file(dir.path(), "done.bin", (PIECE_BYTES * 4) as usize, 27);
    let (_tracker, tracker_addr) = Node::tracker();
    let (mut seeder, file_id) = capped_seeder(dir.path(), tracker_addr, &original);

    // The finished file is in --out (an earlier run on another store left it there).
    let out = subdir(dir.path(), "out");
    fs::copy(&original, out.join("done.bin")).expect("copy");
    let get_args = ["--get", file_id.as_str(), "--out", path_str(&out), "--exit-when-done"];
    let mut again = Node::peer("downloader (fresh store)", tracker_addr, &subdir(dir.path(), "fresh"), &get_args);
    assert_eq!(again.wait_complete(&file_id, STARTUP_TIMEOUT), out.join("done.bin"));
    assert_eq!(again.wait_downloaded(&file_id), 0, "a verified file in --out is not fetched again");
    assert!(again.wait_exit(EXIT_TIMEOUT).success(), "{}", again.report());

    // A copy with one damaged piece: the other three are kept, that one is fetched.
    let damaged_out = subdir(dir.path(), "damaged-out");
    let damaged = damaged_out.join("done.bin");
    fs::copy(&original, &damaged).expect("copy");
    let mut file = fs::OpenOptions::new().write(true).open(&damaged).expect("open");
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(PIECE_BYTES * 2 + 10)).expect("seek");
    file.write_all(b"not the original bytes").expect("damage");
    drop(file);
    let get_args = ["--get", file_id.as_str(), "--out", path_str(&damaged_out), "--exit-when-done"];
    let mut repair = Node::peer("downloader (damaged copy)", tracker_addr, &subdir(dir.path(), "fresh2"), &get_args);
    let copy = repair.wait_complete(&file_id, DOWNLOAD_TIMEOUT);
    assert_same_file(&copy, &original);
    let line = repair.wait_for_line(&format!("downloaded {file_id} "), STARTUP_TIMEOUT);
    assert!(line.contains(&format!(" useful={PIECE_BYTES} ")), "only the damaged piece is fetched: {line:?}");
    assert!(repair.wait_exit(EXIT_TIMEOUT).success(), "{}", repair.report());
    assert!(seeder.is_running(), "{}", seeder.report());
}

/// Both cases wait out the node's bounded search for a reachable holder, so they run side by
/// side: as two tests they would take two of the test harness's threads for that long.
#[test]
fn a_holder_that_says_nothing_or_speaks_another_protocol_is_named_and_the_download_gives_up() {
    let silent = thread::spawn(|| {
        let holder = fake_holder(|stream| {
            // Holds the connection open without a byte, as a stuck process or a black hole would.
            thread::sleep(UNREACHABLE_FAILURE);
            drop(stream);
        });
        gives_up_on_the_fake_holder(holder, "handshake failed: no answer within", 28);
    });
    let web_server = thread::spawn(|| {
        let holder = fake_holder(|mut stream| {
            stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").ok();
        });
        gives_up_on_the_fake_holder(holder, "wrong protocol: handshake failed: the remote does not speak", 29);
    });
    for (case, handle) in [("a silent holder", silent), ("a web server", web_server)] {
        if let Err(panic) = handle.join() {
            eprintln!("the case of {case} failed");
            std::panic::resume_unwind(panic);
        }
    }
}

/// A listener on 127.0.0.1 that hands each connection to `serve` on a thread of its own.
fn fake_holder(serve: fn(std::net::TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    thread::spawn(move || {
        for stream in listener.incoming().take(FAKE_HOLDER_CONNECTIONS_MAX).flatten() {
            thread::spawn(move || serve(stream));
        }
    });
    addr
}

/// Connections a [`fake_holder`] accepts before its thread ends.
const FAKE_HOLDER_CONNECTIONS_MAX: usize = 64;

/// A tracker told that the peer at `holder` holds a whole file, and a downloader of that file
/// that gives up on it for `reason` ([`download_giving_up`]).
fn gives_up_on_the_fake_holder(holder: SocketAddr, reason: &str, seed: u64) {
    let dir = temp_dir();
    let original = random_file(dir.path(), "f.bin", 512 * 1024, seed);
    let manifest = p2p_net::hasher::manifest_of(&original, None).expect("a manifest");
    let file_id = manifest.file_id().to_string();
    let (_tracker, tracker_addr) = Node::tracker();
    // The announcer's connection comes from 127.0.0.1, so the tracker records the holder at
    // 127.0.0.1 with the port it announces: the fake holder's.
    let mut announcer = WireClient::hello(None, tracker_addr, Role::Peer, holder.port());
    let have = p2p_core::Bitfield::full(manifest.chunk_count());
    announcer.send(&Message::Announce { file_id: manifest.file_id(), manifest: Some(Box::new(manifest)), have });
    match announcer.recv(STARTUP_TIMEOUT) {
        Some(Message::Announced { .. }) => {}
        other => panic!("the announce was answered with {other:?}"),
    }

    download_giving_up(tracker_addr, &subdir(dir.path(), "downloader"), &file_id, &holder.to_string(), reason);
    drop(announcer);
}

#[test]
fn the_default_output_tells_who_joins_what_is_sent_to_whom_and_who_leaves() {
    let dir = temp_dir();
    let original = random_file(dir.path(), "story.bin", 8 * 16 * 1024, 34);
    let (tracker, tracker_addr) = Node::tracker();
    let mut seeder = Node::peer("seeder", tracker_addr, &subdir(dir.path(), "s"), &["--share", path_str(&original)]);
    let file_id = seeder.wait_sharing().file_id;
    let short = &file_id[..8];
    let out = subdir(dir.path(), "out");
    let get_args = ["--get", file_id.as_str(), "--out", path_str(&out), "--exit-when-done"];
    let mut downloader = Node::peer("downloader", tracker_addr, &subdir(dir.path(), "d"), &get_args);
    let downloader_addr = downloader.addr();
    assert_same_file(&downloader.wait_complete(&file_id, DOWNLOAD_TIMEOUT), &original);
    assert!(downloader.wait_exit(EXIT_TIMEOUT).success(), "{}", downloader.report());

    // Without RUST_LOG or -v: the tracker tells the downloader joining and leaving, the seeder
    // whom it sends to, and on leaving how much it sent to whom.
    for line in [format!("peer {downloader_addr} wants {short}"), format!("peer {downloader_addr} left")] {
        wait_for_stderr(&tracker, &line);
    }
    wait_for_stderr(&seeder, &format!("sending {short} to 127.0.0.1:"));
    seeder.terminate();
    seeder.wait_exit(EXIT_TIMEOUT);
    wait_for_stderr(&seeder, "to 1 peer: 127.0.0.1:");
}

/// Waits (bounded) until `node` printed `text` on stderr.
fn wait_for_stderr(node: &Node, text: &str) {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while !node.stderr_tail().contains(text) {
        assert!(Instant::now() < deadline, "no {text:?} on stderr:\n{}", node.stderr_tail());
        thread::sleep(Duration::from_millis(20));
    }
}
