//! A directory shared with `--share DIR` is one item: `p2p-node id DIR` prints the id the seeder
//! announces, `--get` recreates the tree under `--out` byte for byte (empty files and empty
//! directories included), also when the downloader was SIGKILLed half-way and restarted; a
//! fresh store finds the finished tree in `--out` and fetches nothing (and of a tree there in
//! part, only the pieces it lacks), and a store that shared or downloaded a tree seeds it again
//! when restarted without flags.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    offline_file_id, path_str, random_file, subdir, temp_dir, wait_store_progress, Node, DOWNLOAD_TIMEOUT,
    STARTUP_TIMEOUT,
};

/// Files in the shared tree.
const FILE_COUNT: usize = 100;

/// A small piece size, so most pieces span several files.
const SMALL_PIECE_BYTES: &str = "16384";

/// A directory of three levels below `root/NAME`: 4 folders of 3 folders each, the 100 files
/// spread over them and the root, every tenth file empty, and one empty directory.
/// `big_file_bytes` makes every fifth file that large (for a download that takes a while).
fn make_tree(root: &Path, name: &str, big_file_bytes: usize) -> PathBuf {
    let top = subdir(root, name);
    let mut leaves = vec![top.clone()];
    for outer in 0..4 {
        for inner in 0..3 {
            leaves.push(subdir(&top, &format!("level-{outer}/sub {inner}")));
        }
    }
    subdir(&top, "level-0/sub 0/nothing here");
    for i in 0..FILE_COUNT {
        let dir = &leaves[i % leaves.len()];
        let len = match i {
            i if i % 10 == 0 => 0,
            i if i % 5 == 0 => big_file_bytes,
            i => (i * 7_919) % 50_000,
        };
        random_file(dir, &format!("file-{i:03}.bin"), len, i as u64);
    }
    top
}

/// Every path below `root` with its bytes (`None` for a directory).
fn tree_of(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())).flatten() {
            let path = entry.path();
            let relative = path.strip_prefix(root).expect("below the root").to_owned();
            if path.is_dir() {
                found.insert(relative, None);
                pending.push(path);
            } else {
                found.insert(relative, Some(fs::read(&path).expect("read a file")));
            }
        }
    }
    found
}

fn assert_same_tree(copy: &Path, original: &Path) {
    let (copied, source) = (tree_of(copy), tree_of(original));
    assert_eq!(
        copied.keys().collect::<Vec<_>>(),
        source.keys().collect::<Vec<_>>(),
        "{} lists other paths than {}",
        copy.display(),
        original.display()
    );
    for (path, bytes) in &source {
        assert!(copied[path] == *bytes, "{} differs", path.display());
    }
}

#[test]
fn a_directory_of_three_levels_and_a_hundred_files_round_trips_byte_identical() {
    let dir = temp_dir();
    let original = make_tree(dir.path(), "album", 70_000);
    let (_tracker, tracker_addr) = Node::tracker();
    let seeder_store = subdir(dir.path(), "seeder");
    let share_args = ["--share", path_str(&original), "--piece-size", SMALL_PIECE_BYTES];
    let mut seeder = Node::peer("seeder", tracker_addr, &seeder_store, &share_args);
    let sharing = seeder.wait_sharing();
    assert_eq!(sharing.name, "album", "the item is named after the directory");
    assert_eq!(offline_file_id(&original, Some(16_384)), sharing.file_id, "`id DIR` gives the announced id");

    let out = subdir(dir.path(), "out");
    let store = subdir(dir.path(), "downloader");
    let get_args = ["--get", sharing.file_id.as_str(), "--out", path_str(&out), "--exit-when-done"];
    let mut downloader = Node::peer("downloader", tracker_addr, &store, &get_args);
    let copy = downloader.wait_complete(&sharing.file_id, DOWNLOAD_TIMEOUT);
    assert_eq!(copy, out.join("album"));
    assert_same_tree(&copy, &original);
    assert!(copy.join("level-0/sub 0/nothing here").is_dir(), "the empty directory is recreated");
    assert!(downloader.wait_exit(DOWNLOAD_TIMEOUT).success(), "{}", downloader.report());
    assert!(seeder.is_running(), "seeder died\n{}", seeder.report());

    // A fresh store whose --out already holds the tree takes it up without fetching a byte.
    let mut again = Node::peer("downloader (fresh store)", tracker_addr, &subdir(dir.path(), "fresh"), &get_args);
    assert_eq!(again.wait_complete(&sharing.file_id, DOWNLOAD_TIMEOUT), copy);
    assert_eq!(again.wait_downloaded(&sharing.file_id), 0, "the tree in --out was fetched again");

    // Both stores remember the tree: restarted without flags, each seeds it again.
    seeder.terminate();
    seeder.wait_exit(DOWNLOAD_TIMEOUT);
    for (name, store) in [("seeder (restarted)", &seeder_store), ("downloader (restarted)", &store)] {
        let mut restarted = Node::peer(name, tracker_addr, store, &[]);
        restarted.wait_for_line(&format!("seeding {} album ", sharing.file_id), STARTUP_TIMEOUT);
    }
}

const BIG_FILE_BYTES: usize = 2 * 1024 * 1024;
const RESUME_PIECE_BYTES: u64 = 256 * 1024;
const UPLOAD_LIMIT_BYTES_PER_S: u64 = 4 * 1024 * 1024;

#[test]
fn a_directory_download_killed_half_way_resumes_and_lays_out_the_same_tree() {
    let dir = temp_dir();
    let original = make_tree(dir.path(), "album", BIG_FILE_BYTES);
    let (_tracker, tracker_addr) = Node::tracker();
    let (piece_size, limit) = (RESUME_PIECE_BYTES.to_string(), UPLOAD_LIMIT_BYTES_PER_S.to_string());
    let seeder_args = ["--share", path_str(&original), "--piece-size", &piece_size, "--upload-limit", &limit];
    let mut seeder = Node::peer("seeder", tracker_addr, &subdir(dir.path(), "seeder"), &seeder_args);
    let sharing = seeder.wait_sharing();
    let pieces: u32 = sharing.pieces.parse().expect("a piece count");
    let full_download = Duration::from_secs(u64::from(pieces) * RESUME_PIECE_BYTES / UPLOAD_LIMIT_BYTES_PER_S);

    let (store, out) = (subdir(dir.path(), "downloader"), subdir(dir.path(), "out"));
    let get_args = ["--get", sharing.file_id.as_str(), "--out", path_str(&out), "--exit-when-done"];
    let mut first = Node::peer("downloader (first run)", tracker_addr, &store, &get_args);
    let verified = wait_store_progress(&store, &mut first, pieces * 2 / 5, full_download / 2);
    first.kill();
    eprintln!("first run killed with {verified}/{pieces} pieces in its store's bitfield");
    assert!(!first.has_printed("complete "), "completed before it could be killed\n{}", first.report());
    assert!(!out.join("album").exists(), "nothing is laid out before every piece is verified");

    let mut second = Node::peer("downloader (second run)", tracker_addr, &store, &get_args);
    let resumed = second.wait_for_line(&format!("resumed {} ", sharing.file_id), STARTUP_TIMEOUT);
    let have: u32 = resumed.split_whitespace().nth(2).and_then(|h| h.split('/').next()?.parse().ok()).expect("H/T");
    assert!(have > 0 && have < pieces, "resumed with {have}/{pieces} pieces: {resumed:?}");
    let copy = second.wait_complete(&sharing.file_id, DOWNLOAD_TIMEOUT);
    assert_same_tree(&copy, &original);
    let downloaded = second.wait_downloaded(&sharing.file_id);
    let item_bytes = u64::from(pieces) * RESUME_PIECE_BYTES;
    assert!(downloaded < item_bytes, "the second run fetched {downloaded} bytes: the whole item again");
}

#[test]
fn a_tree_partly_in_out_keeps_its_verified_pieces_and_fetches_only_the_rest() {
    let dir = temp_dir();
    let original = make_tree(dir.path(), "album", 70_000);
    let (_tracker, tracker_addr) = Node::tracker();
    let share_args = ["--share", path_str(&original), "--piece-size", SMALL_PIECE_BYTES];
    let mut seeder = Node::peer("seeder", tracker_addr, &subdir(dir.path(), "seeder"), &share_args);
    let sharing = seeder.wait_sharing();

    // An earlier copy of the tree in --out, one file missing and another damaged.
    let out = subdir(dir.path(), "out");
    let partial = out.join("album");
    let mut item_bytes = 0;
    for (relative, bytes) in tree_of(&original) {
        match bytes {
            None => fs::create_dir_all(partial.join(&relative)).expect("create a directory"),
            Some(bytes) => {
                item_bytes += bytes.len() as u64;
                let path = partial.join(&relative);
                fs::create_dir_all(path.parent().expect("a parent")).expect("create a directory");
                fs::write(path, bytes).expect("copy a file");
            }
        }
    }
    let find = |name: &str| {
        let found = tree_of(&partial).into_keys().find(|path| path.ends_with(name));
        partial.join(found.unwrap_or_else(|| panic!("{name} in the tree")))
    };
    fs::remove_file(find("file-001.bin")).expect("remove a file");
    let damaged = find("file-005.bin");
    let mut bytes = fs::read(&damaged).expect("read");
    bytes[30_000..30_010].copy_from_slice(b"not theirs");
    fs::write(&damaged, bytes).expect("damage a file");

    let get_args = ["--get", sharing.file_id.as_str(), "--out", path_str(&out), "--exit-when-done"];
    let mut downloader = Node::peer("downloader", tracker_addr, &subdir(dir.path(), "fresh"), &get_args);
    let copy = downloader.wait_complete(&sharing.file_id, DOWNLOAD_TIMEOUT);
    assert_eq!(copy, out.join("album.1"), "the finished tree goes beside the partial one");
    assert_same_tree(&copy, &original);
    // The missing file (7,919 bytes) touches at most 2 pieces, the damaged bytes at most 2.
    let downloaded = downloader.wait_downloaded(&sharing.file_id);
    let piece_bytes: u64 = SMALL_PIECE_BYTES.parse().expect("a number");
    assert!(
        downloaded > 0 && downloaded <= 4 * piece_bytes,
        "fetched {downloaded} of the item's {item_bytes} bytes: more than the pieces the copy lacks"
    );
    assert!(downloader.wait_exit(DOWNLOAD_TIMEOUT).success(), "{}", downloader.report());
}
