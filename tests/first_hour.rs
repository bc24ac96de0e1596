//! The first hour on a real network (issue 15): what a new user runs into, each case checked as
//! the user sees it: exit codes, the one line on stderr that says why, and what the store holds
//! afterwards.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::{
    assert_same_file, path_str, random_file, subdir, temp_dir, wait_store_progress, Node, DOWNLOAD_TIMEOUT,
    EXIT_TIMEOUT, STARTUP_TIMEOUT,
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
    let (have, total) = interrupted_at(&first.stderr_tail());
    assert_eq!(total, PIECE_COUNT as u32, "the message counts the file's pieces");
    assert!(have < total, "interrupted with {have}/{total} pieces; the download was not over");

    // The store holds at least what the message said: the same command resumes from there.
    let mut second = Node::peer("downloader (SIGTERM)", tracker_addr, &store, &get_args);
    let resumed = second.wait_for_line(&format!("resumed {file_id} "), STARTUP_TIMEOUT);
    let resumed_have: u32 = resumed_have(&resumed);
    assert!(resumed_have >= have, "interrupted at {have} pieces but resumed with {resumed_have}");
    second.terminate();
    let status = second.wait_exit(EXIT_TIMEOUT);
    if !second.has_printed(&format!("complete {file_id} ")) {
        assert_eq!(status.code(), Some(143), "SIGTERM mid-download must exit 143\n{}", second.report());
        interrupted_at(&second.stderr_tail());
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

/// `interrupted at H/T pieces; run the same command to resume` on stderr → (H, T).
fn interrupted_at(stderr: &str) -> (u32, u32) {
    let line = stderr
        .lines()
        .find(|line| line.starts_with("interrupted at ") && line.ends_with("; run the same command to resume"))
        .unwrap_or_else(|| panic!("no interruption message on stderr:\n{stderr}"));
    let field = line.split_whitespace().nth(2).unwrap_or("");
    let parsed = field.split_once('/').and_then(|(have, total)| Some((have.parse().ok()?, total.parse().ok()?)));
    parsed.unwrap_or_else(|| panic!("malformed interruption message {line:?}"))
}

/// `resumed FILE_ID HAVE/TOTAL` → HAVE.
fn resumed_have(line: &str) -> u32 {
    let field = line.split_whitespace().nth(2).unwrap_or("");
    field.split('/').next().and_then(|have| have.parse().ok()).unwrap_or_else(|| panic!("malformed {line:?}"))
}
