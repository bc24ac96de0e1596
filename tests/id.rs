//! `p2p-node id PATH` computes, offline, the same FILE_ID a peer announces for that file, and the
//! piece size is part of the id.

mod common;

use common::{offline_file_id, random_file, subdir, temp_dir, Node};

const FILE_BYTES: usize = 1024 * 1024;

#[test]
fn offline_id_equals_the_id_a_peer_announces_with_the_same_piece_size() {
    let dir = temp_dir();
    let file = random_file(dir.path(), "one-mib.bin", FILE_BYTES, 2);
    let (_tracker, tracker_addr) = Node::tracker();

    let store = subdir(dir.path(), "store");
    let args = ["--share", file.to_str().expect("UTF-8 path"), "--piece-size", "65536"];
    let mut peer = Node::peer("seeder", tracker_addr, &store, &args);
    let sharing = peer.wait_sharing();

    assert_eq!(offline_file_id(&file, Some(65536)), sharing.file_id);
    assert_eq!(sharing.name, "one-mib.bin", "sharing line names the file");
    assert_eq!(sharing.pieces, (FILE_BYTES / 65536).to_string(), "sharing line counts 64 KiB pieces");
}

#[test]
fn offline_id_equals_the_id_a_peer_announces_with_the_default_piece_size() {
    let dir = temp_dir();
    let file = random_file(dir.path(), "default.bin", FILE_BYTES, 3);
    let (_tracker, tracker_addr) = Node::tracker();

    let store = subdir(dir.path(), "store");
    let mut peer = Node::peer("seeder", tracker_addr, &store, &["--share", file.to_str().expect("UTF-8 path")]);

    assert_eq!(offline_file_id(&file, None), peer.wait_sharing().file_id);
}

#[test]
fn piece_size_changes_the_id_and_the_same_piece_size_gives_the_same_id() {
    let dir = temp_dir();
    let file = random_file(dir.path(), "sizes.bin", FILE_BYTES, 4);
    let copy = random_file(&subdir(dir.path(), "elsewhere"), "sizes.bin", FILE_BYTES, 4);

    let id_64k = offline_file_id(&file, Some(64 * 1024));
    let id_128k = offline_file_id(&file, Some(128 * 1024));

    assert_ne!(id_64k, id_128k, "64 KiB and 128 KiB pieces must give different ids");
    assert_eq!(offline_file_id(&file, Some(64 * 1024)), id_64k, "the id is stable across runs");
    assert_eq!(offline_file_id(&copy, Some(64 * 1024)), id_64k, "the same bytes and name elsewhere give the same id");
}
