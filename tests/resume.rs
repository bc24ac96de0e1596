//! A downloader SIGKILLed half-way and restarted on the same store resumes: it reports the chunks
//! it already verified (also those of pieces it held in part), fetches only the rest, and ends with a correct file — also when the
//! kill left its `.bitfield` truncated (the restart re-hashes the `.part` and says so once).

mod common;

use std::time::Duration;

use p2p_core::limits::CHUNKS_PER_PIECE_MAX;

use common::{
    assert_same_file, path_str, random_file, subdir, temp_dir, wait_store_progress, Node, DOWNLOAD_TIMEOUT,
    STARTUP_TIMEOUT,
};

const PIECE_BYTES: u64 = 256 * 1024;
const PIECE_COUNT: u64 = 96;
const FILE_BYTES: u64 = PIECE_BYTES * PIECE_COUNT; // 24 MiB
/// Pieces of 256 KiB are exchanged in four chunks of 64 KiB.
const CHUNK_BYTES: u64 = PIECE_BYTES / CHUNKS_PER_PIECE_MAX as u64;
const CHUNK_COUNT: u64 = FILE_BYTES / CHUNK_BYTES;
const UPLOAD_LIMIT_BYTES_PER_S: u64 = 4 * 1024 * 1024;

/// Time the capped seeder needs for the whole file (6 s).
const FULL_DOWNLOAD: Duration = Duration::from_secs(FILE_BYTES / UPLOAD_LIMIT_BYTES_PER_S);

/// Extra pieces the resumed download may fetch beyond the missing ones (endgame duplicates,
/// blocks in flight when the first run was killed and fetched again).
const EXTRA_PIECES_ALLOWED: u64 = 4;

#[test]
fn downloader_killed_half_way_resumes_and_fetches_only_the_missing_pieces() {
    let dir = temp_dir();
    let original = random_file(dir.path(), "big.bin", FILE_BYTES as usize, 5);
    let (_tracker, tracker_addr) = Node::tracker();

    let seeder_store = subdir(dir.path(), "seeder");
    let piece_size = PIECE_BYTES.to_string();
    let limit = UPLOAD_LIMIT_BYTES_PER_S.to_string();
    let seeder_args = ["--share", path_str(&original), "--piece-size", &piece_size, "--upload-limit", &limit];
    let mut seeder = Node::peer("seeder", tracker_addr, &seeder_store, &seeder_args);
    let file_id = seeder.wait_sharing().file_id;

    let store = subdir(dir.path(), "downloader");
    let out = subdir(dir.path(), "out");
    let get_args = ["--get", file_id.as_str(), "--out", path_str(&out), "--exit-when-done"];

    // First run: killed with SIGKILL once its store shows about 40 % of the chunks verified, or
    // after half the time the whole download takes.
    let mut first = Node::peer("downloader (first run)", tracker_addr, &store, &get_args);
    let verified = wait_store_progress(&store, &mut first, (CHUNK_COUNT * 2 / 5) as u32, FULL_DOWNLOAD / 2);
    first.kill();
    eprintln!("first run killed with {verified}/{CHUNK_COUNT} chunks in its store's bitfield");
    assert!(
        !first.has_printed("complete "),
        "the first run completed before it could be killed; nothing left to resume\n{}",
        first.report()
    );

    // Second run on the same store: picks up what is verified, fetches the rest.
    let mut second = Node::peer("downloader (second run)", tracker_addr, &store, &get_args);
    let resumed = second.wait_for_line(&format!("resumed {file_id} "), STARTUP_TIMEOUT);
    let (have, total) = parse_have_total(&resumed);
    assert_eq!(total, CHUNK_COUNT, "resumed line counts the file's chunks: {resumed:?}");
    assert!(have > 0 && have < total, "resumed with {have}/{total} chunks; expected some but not all");

    let copy = second.wait_complete(&file_id, DOWNLOAD_TIMEOUT);
    assert_same_file(&copy, &original);
    let downloaded_bytes = second.wait_downloaded(&file_id);
    let missing_bytes = (total - have) * CHUNK_BYTES;
    eprintln!("second run resumed with {have}/{total} chunks and downloaded {downloaded_bytes} bytes");
    assert!(
        downloaded_bytes >= missing_bytes && downloaded_bytes <= missing_bytes + EXTRA_PIECES_ALLOWED * PIECE_BYTES,
        "resumed with {have}/{total} chunks, so about {missing_bytes} bytes were missing, \
         but the second run downloaded {downloaded_bytes}"
    );
    assert!(downloaded_bytes < FILE_BYTES, "the second run downloaded the whole file again");
    assert!(seeder.is_running(), "seeder died\n{}", seeder.report());
}

#[test]
fn a_truncated_bitfield_is_rebuilt_from_the_part_and_no_verified_piece_is_lost() {
    let dir = temp_dir();
    let original = random_file(dir.path(), "big.bin", FILE_BYTES as usize, 6);
    let (_tracker, tracker_addr) = Node::tracker();
    let (piece_size, limit) = (PIECE_BYTES.to_string(), UPLOAD_LIMIT_BYTES_PER_S.to_string());
    let seeder_args = ["--share", path_str(&original), "--piece-size", &piece_size, "--upload-limit", &limit];
    let mut seeder = Node::peer("seeder", tracker_addr, &subdir(dir.path(), "seeder"), &seeder_args);
    let file_id = seeder.wait_sharing().file_id;
    let (store, out) = (subdir(dir.path(), "downloader"), subdir(dir.path(), "out"));
    let get_args = ["--get", file_id.as_str(), "--out", path_str(&out), "--exit-when-done"];

    let mut first = Node::peer("downloader (first run)", tracker_addr, &store, &get_args);
    let verified = wait_store_progress(&store, &mut first, (CHUNK_COUNT * 2 / 5) as u32, FULL_DOWNLOAD / 2);
    first.kill();
    assert!(!first.has_printed("complete "), "the first run completed before it could be killed\n{}", first.report());
    let bitfield = store.join(format!("{file_id}.bitfield"));
    std::fs::write(&bitfield, [0u8, 0]).expect("truncates the bitfield");

    let mut second = Node::peer("downloader (second run)", tracker_addr, &store, &get_args);
    let (have, total) = parse_have_total(&second.wait_for_line(&format!("resumed {file_id} "), STARTUP_TIMEOUT));
    eprintln!(
        "{verified}/{CHUNK_COUNT} chunks in the bitfield before it was truncated; {have}/{total} after re-hashing"
    );
    assert!(have >= u64::from(verified) && have < total, "resumed with {have}/{total}, {verified} were verified");
    let copy = second.wait_complete(&file_id, DOWNLOAD_TIMEOUT);
    assert_same_file(&copy, &original);
    let reports = second.stderr_tail().matches("hashed again").count();
    assert_eq!(reports, 1, "the damage is reported once on stderr:\n{}", second.stderr_tail());
}

/// `resumed FILE_ID HAVE/TOTAL` → (HAVE, TOTAL).
fn parse_have_total(line: &str) -> (u64, u64) {
    let field = line.split_whitespace().nth(2).unwrap_or("");
    let parsed = field.split_once('/').and_then(|(have, total)| Some((have.parse().ok()?, total.parse().ok()?)));
    parsed.unwrap_or_else(|| panic!("malformed resumed line {line:?}"))
}
