//! Upload caps add up: three seeders capped at the same rate deliver a file in well under the
//! time one of them needs alone. Both downloads run in the same test, so the check is a ratio of
//! two measurements on the same (possibly loaded) machine, not an absolute time.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{assert_same_file, path_str, random_file, subdir, temp_dir, Node, DOWNLOAD_TIMEOUT, EXIT_TIMEOUT};

const PIECE_BYTES: u64 = 256 * 1024;
const FILE_BYTES: u64 = 12 * 1024 * 1024;
const UPLOAD_LIMIT_BYTES_PER_S: u64 = 2 * 1024 * 1024;

#[test]
fn three_capped_seeders_deliver_in_at_most_half_the_time_of_one() {
    let dir = temp_dir();
    let original = random_file(dir.path(), "capped.bin", FILE_BYTES as usize, 7);
    let (_tracker, tracker_addr) = Node::tracker();

    let piece_size = PIECE_BYTES.to_string();
    let limit = UPLOAD_LIMIT_BYTES_PER_S.to_string();
    let seeder_args = ["--share", path_str(&original), "--piece-size", &piece_size, "--upload-limit", &limit];
    let mut seeders = vec![Node::peer("seeder 1", tracker_addr, &subdir(dir.path(), "s1"), &seeder_args)];
    let file_id = seeders[0].wait_sharing().file_id;

    let one_seeder = timed_download(dir.path(), "alone", tracker_addr, &file_id, &original);

    for name in ["seeder 2", "seeder 3"] {
        let mut seeder = Node::peer(name, tracker_addr, &subdir(dir.path(), name), &seeder_args);
        assert_eq!(seeder.wait_sharing().file_id, file_id, "{name} shares the same file");
        seeders.push(seeder);
    }

    let three_seeders = timed_download(dir.path(), "together", tracker_addr, &file_id, &original);

    eprintln!("one seeder: {one_seeder:?}, three seeders: {three_seeders:?}");
    assert!(
        three_seeders.as_secs_f64() <= 0.5 * one_seeder.as_secs_f64(),
        "three seeders took {three_seeders:?}, one seeder {one_seeder:?}: caps did not add up"
    );
    for seeder in &mut seeders {
        assert!(seeder.is_running(), "a seeder died\n{}", seeder.report());
    }
}

/// Starts a fresh downloader for `file_id`, waits until it completes and exits, checks the copy
/// and returns the time from its start to its `complete` line.
fn timed_download(
    dir: &Path,
    label: &str,
    tracker_addr: std::net::SocketAddr,
    file_id: &str,
    original: &Path,
) -> Duration {
    let store = subdir(dir, &format!("{label}-store"));
    let out = subdir(dir, &format!("{label}-out"));
    let get_args = ["--get", file_id, "--out", path_str(&out), "--exit-when-done"];
    let started = Instant::now();
    let mut downloader = Node::peer(&format!("downloader ({label})"), tracker_addr, &store, &get_args);
    let copy = downloader.wait_complete(file_id, DOWNLOAD_TIMEOUT);
    let took = started.elapsed();
    assert_same_file(&copy, original);
    let status = downloader.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "downloader ({label}) exited with {status}\n{}", downloader.report());
    took
}
