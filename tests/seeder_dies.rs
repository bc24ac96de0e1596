//! One of two seeders is SIGKILLed in the middle of a download; the pieces it was serving are
//! fetched from the other and the file still arrives intact.

mod common;

use std::time::Duration;

use common::{
    assert_same_file, path_str, random_file, subdir, temp_dir, wait_store_progress, Node, DOWNLOAD_TIMEOUT,
    EXIT_TIMEOUT,
};

const PIECE_BYTES: u64 = 256 * 1024;
const PIECE_COUNT: u64 = 48;
const FILE_BYTES: u64 = PIECE_BYTES * PIECE_COUNT; // 12 MiB
const UPLOAD_LIMIT_BYTES_PER_S: u64 = 2 * 1024 * 1024;

/// Time both capped seeders together need for the whole file (3 s).
const BOTH_SEEDERS_DOWNLOAD: Duration = Duration::from_secs(FILE_BYTES / (2 * UPLOAD_LIMIT_BYTES_PER_S));

#[test]
fn seeder_killed_mid_download_and_the_other_seeder_delivers_the_rest() {
    let dir = temp_dir();
    let original = random_file(dir.path(), "shared.bin", FILE_BYTES as usize, 6);
    let (_tracker, tracker_addr) = Node::tracker();

    let piece_size = PIECE_BYTES.to_string();
    let limit = UPLOAD_LIMIT_BYTES_PER_S.to_string();
    let seeder_args = ["--share", path_str(&original), "--piece-size", &piece_size, "--upload-limit", &limit];
    let mut doomed = Node::peer("seeder (killed)", tracker_addr, &subdir(dir.path(), "s1"), &seeder_args);
    let mut survivor = Node::peer("seeder (survives)", tracker_addr, &subdir(dir.path(), "s2"), &seeder_args);
    let file_id = doomed.wait_sharing().file_id;
    assert_eq!(survivor.wait_sharing().file_id, file_id, "both seeders share the same file");

    let store = subdir(dir.path(), "downloader");
    let out = subdir(dir.path(), "out");
    let get_args = ["--get", file_id.as_str(), "--out", path_str(&out), "--exit-when-done"];
    let mut downloader = Node::peer("downloader", tracker_addr, &store, &get_args);

    // A quarter of the pieces verified (or half the expected time gone): one seeder crashes.
    let verified = wait_store_progress(&store, &mut downloader, (PIECE_COUNT / 4) as u32, BOTH_SEEDERS_DOWNLOAD / 2);
    doomed.kill();
    eprintln!("seeder killed when the downloader had {verified}/{PIECE_COUNT} pieces");
    assert!(
        !downloader.has_printed("complete "),
        "the download finished before the seeder was killed; the test proves nothing\n{}",
        downloader.report()
    );

    let copy = downloader.wait_complete(&file_id, DOWNLOAD_TIMEOUT);
    assert_same_file(&copy, &original);
    let status = downloader.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "downloader exited with {status}\n{}", downloader.report());
    assert!(survivor.is_running(), "the surviving seeder died\n{}", survivor.report());
}
