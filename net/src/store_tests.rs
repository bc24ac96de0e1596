//! Store tests: a download written out of order, resumed, finalised without overwriting.

use std::os::unix::fs::FileExt;

use p2p_core::store::conformance;

use super::*;
use crate::hasher::manifest_of;

struct Fixture {
    _dir: tempfile::TempDir,
    source: PathBuf,
    bytes: Vec<u8>,
    manifest: Manifest,
    store_dir: PathBuf,
    out_dir: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("movie.bin");
    let bytes: Vec<u8> = (0..40_000u32).map(|i| (i * 31 % 251) as u8).collect();
    fs::write(&source, &bytes).expect("write source");
    let manifest = manifest_of(&source, Some(16 * 1024)).expect("manifest");
    let store_dir = dir.path().join("store");
    let out_dir = dir.path().join("out");
    Fixture { source, bytes, manifest, store_dir, out_dir, _dir: dir }
}

impl Fixture {
    fn store(&self) -> Store {
        Store::open(&self.store_dir, &self.out_dir).expect("open store")
    }

    fn piece_bytes(&self, piece: ChunkIndex) -> &[u8] {
        let start = self.manifest.chunk_offset(piece) as usize;
        &self.bytes[start..start + self.manifest.chunk_len(piece) as usize]
    }

    /// Writes `piece` in two blocks, checks its hash and records it.
    fn download_piece(&self, store: &Store, piece: ChunkIndex) {
        let id = self.manifest.file_id();
        let bytes = self.piece_bytes(piece);
        let half = bytes.len() / 2;
        store.write_block(id, piece, half as u32, &bytes[half..]).expect("second half");
        store.write_block(id, piece, 0, &bytes[..half]).expect("first half");
        assert_eq!(
            store.hash_chunk(id, piece).map(|d| p2p_core::piece_digest_of_chunks(&[d])),
            Ok(self.manifest.piece_hash(p2p_core::PieceIndex(piece.0)))
        );
        store.mark_verified(id, piece).expect("mark");
        store.persist_bitfield(id).expect("persist");
    }
}

#[test]
fn a_download_survives_a_restart_and_lands_in_out() {
    let f = fixture();
    let id = f.manifest.file_id();
    let store = f.store();
    store.allocate(&f.manifest);
    assert!(store.read_block(id, ChunkIndex(0), 0, 10).is_err(), "unverified pieces are not served");
    f.download_piece(&store, ChunkIndex(2));
    f.download_piece(&store, ChunkIndex(0));
    drop(store);

    let store = f.store();
    let p2p_core::Resume { manifest, have, .. } = store.resume(id).expect("resume").expect("something to resume");
    assert_eq!(manifest, f.manifest);
    assert_eq!(have.iter().collect::<Vec<_>>(), vec![ChunkIndex(0), ChunkIndex(2)]);
    assert_eq!(store.known_ids(), vec![id]);
    assert_eq!(
        store.read_block(id, ChunkIndex(2), 1, 5).expect("verified").as_ref(),
        &f.piece_bytes(ChunkIndex(2))[1..6]
    );
    assert_eq!(store.finalize(id), Err(StoreError::Incomplete { have: 2, total: 3 }), "piece 1 is missing");
    f.download_piece(&store, ChunkIndex(1));
    let path = store.finalize(id).expect("finalize");
    assert_eq!(path, f.out_dir.join("movie.bin"));
    assert_eq!(fs::read(&path).expect("read final"), f.bytes);
    assert_eq!(store.path_of(id), Some(path));
    assert!(!f.store_dir.join(format!("{id}.part")).exists());
    assert!(!f.store_dir.join(format!("{id}.bitfield")).exists());
    assert_eq!(store.read_block(id, ChunkIndex(1), 0, 4).expect("served").as_ref(), &f.piece_bytes(ChunkIndex(1))[..4]);
}

#[test]
fn resume_drops_pieces_whose_bytes_were_damaged() {
    let f = fixture();
    let id = f.manifest.file_id();
    let store = f.store();
    store.allocate(&f.manifest);
    f.download_piece(&store, ChunkIndex(0));
    f.download_piece(&store, ChunkIndex(1));
    drop(store);
    let part = OpenOptions::new().write(true).open(f.store_dir.join(format!("{id}.part"))).expect("open part");
    part.write_all_at(b"XXXX", 100).expect("damage piece 0");
    let p2p_core::Resume { have, .. } = f.store().resume(id).expect("resume").expect("something to resume");
    assert_eq!(have.iter().collect::<Vec<_>>(), vec![ChunkIndex(1)]);
    let p2p_core::Resume { have: again, .. } = f.store().resume(id).expect("resume").expect("something to resume");
    assert_eq!(again, have, "the corrected bitfield was persisted");
}

/// A download of pieces 0 and 2 left in the store by an earlier run.
fn interrupted_download(f: &Fixture) -> FileId {
    let store = f.store();
    store.allocate(&f.manifest);
    f.download_piece(&store, ChunkIndex(0));
    f.download_piece(&store, ChunkIndex(2));
    f.manifest.file_id()
}

#[test]
fn a_truncated_bitfield_is_rebuilt_by_hashing_the_part_and_no_verified_piece_is_lost() {
    let f = fixture();
    let id = interrupted_download(&f);
    let bitfield = f.store_dir.join(format!("{id}.bitfield"));
    for damage in [&[0u8, 0][..], &[0, 0, 0, 9, 0xff][..], &[][..]] {
        fs::write(&bitfield, damage).expect("damage the bitfield");
        let p2p_core::Resume { manifest, have, .. } =
            f.store().resume(id).expect("a damaged bitfield is no error").expect("resumed");
        assert_eq!(manifest, f.manifest);
        assert_eq!(have.iter().collect::<Vec<_>>(), vec![ChunkIndex(0), ChunkIndex(2)], "after {damage:?}");
        let p2p_core::Resume { have: again, .. } = f.store().resume(id).expect("resume").expect("resumed");
        assert_eq!(again, have, "the rebuilt bitfield was persisted");
    }
}

#[test]
fn a_garbage_manifest_starts_the_download_over() {
    let f = fixture();
    let id = interrupted_download(&f);
    let other = manifest_of(&f.source, Some(32 * 1024)).expect("another manifest of the same bytes");
    for garbage in [b"\xff\x00 not cbor".to_vec(), other.to_cbor()] {
        fs::write(f.store_dir.join(format!("{id}.manifest")), &garbage).expect("damage the manifest");
        fs::write(f.store_dir.join(format!("{id}.bitfield")), b"whatever").expect("a bitfield");
        let store = f.store();
        assert_eq!(store.resume(id).expect("a damaged manifest is no error"), None, "nothing to resume");
        assert_eq!(store.known_ids(), Vec::<FileId>::new(), "the damaged download's files are gone");
        store.allocate(&f.manifest);
        f.download_piece(&store, ChunkIndex(1));
        drop(store); // one store per directory at a time
        let p2p_core::Resume { have, .. } = f.store().resume(id).expect("resume").expect("the new download resumes");
        assert_eq!(have.iter().collect::<Vec<_>>(), vec![ChunkIndex(1)]);
    }
}

#[test]
fn finishing_never_overwrites_a_different_file() {
    let f = fixture();
    fs::create_dir_all(&f.out_dir).expect("out");
    fs::write(f.out_dir.join("movie.bin"), b"precious").expect("existing file");
    let store = f.store();
    store.allocate(&f.manifest);
    for piece in f.manifest.chunks() {
        f.download_piece(&store, piece);
    }
    let path = store.finalize(f.manifest.file_id()).expect("finalize");
    assert_eq!(path, f.out_dir.join("movie.bin.1"));
    assert_eq!(fs::read(f.out_dir.join("movie.bin")).expect("kept"), b"precious");
    assert_eq!(fs::read(path).expect("new"), f.bytes);
}

#[test]
fn shared_files_serve_only_their_pieces_and_reject_bad_ranges() {
    let f = fixture();
    let id = f.manifest.file_id();
    let store = f.store();
    let mut have = Bitfield::new(f.manifest.chunk_count());
    have.set(ChunkIndex(1));
    store.register_shared(&f.source, f.manifest.clone(), have).expect("share");
    assert_eq!(store.read_block(id, ChunkIndex(0), 0, 10), Err(StoreError::NotHeld { chunk: ChunkIndex(0) }));
    let crossing = store.read_block(id, ChunkIndex(1), 16 * 1024 - 4, 10);
    assert!(matches!(crossing, Err(StoreError::OutOfRange { .. })), "crosses the piece end");
    assert_eq!(store.write_block(id, ChunkIndex(1), 0, b"no"), Err(StoreError::NotDownloading), "shared is read-only");
    assert_eq!(store.read_block(id, ChunkIndex(1), 0, 3).expect("served").as_ref(), &f.piece_bytes(ChunkIndex(1))[..3]);
    assert_eq!(store.finalize(id), Ok(f.source.clone()));
}

/// The lists of a shared file of 64 KiB pieces (four chunks each) are answered from what
/// describing it computed, or hashed once: the bytes are not read again for them.
#[test]
fn chunk_lists_are_hashed_at_most_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("lists.bin");
    let bytes: Vec<u8> = (0..150_000u32).map(|i| (i * 13 % 241) as u8).collect();
    fs::write(&source, &bytes).expect("write source");
    let described = crate::hasher::describe(&source, Some(64 * 1024)).expect("describe");
    let manifest = described.manifest.clone();
    let id = manifest.file_id();
    let store = Store::open(&dir.path().join("store"), &dir.path().join("out")).expect("open store");
    let full = Bitfield::full(manifest.chunk_count());
    store.register_shared(&source, manifest.clone(), full).expect("share");
    let hashed = store.chunk_digests(id, PieceIndex(0)).expect("hashed");
    assert!(manifest.is_chunk_list(PieceIndex(0), &hashed));
    store.learn_lists(id, &described.chunk_digests);
    // Spoil the bytes: the lists known stay what the manifest says.
    fs::write(&source, vec![0u8; bytes.len()]).expect("overwrite");
    for piece in manifest.pieces() {
        let list = store.chunk_digests(id, piece).expect("known");
        assert!(manifest.is_chunk_list(piece, &list), "piece {}", piece.0);
    }
    assert!(matches!(store.chunk_digests(id, PieceIndex(3)), Err(StoreError::OutOfRange { .. })));
}

#[test]
fn io_errors_name_the_path() {
    let f = fixture();
    let id = f.manifest.file_id();
    let store = f.store();
    assert_eq!(store.write_block(id, ChunkIndex(0), 0, b"x"), Err(StoreError::NotStored));
    fs::remove_dir_all(&f.store_dir).expect("remove store dir");
    store.allocate(&f.manifest);
    let error = store.write_block(id, ChunkIndex(0), 0, b"x").expect_err("allocation failed");
    let StoreError::Io { path, kind, .. } = &error else { panic!("an I/O error: {error}") };
    assert!(path.starts_with(&f.store_dir), "{error}");
    assert_eq!(*kind, io::ErrorKind::NotFound);
    assert!(error.to_string().contains(&f.store_dir.display().to_string()), "{error}");
}

#[test]
fn the_disk_store_keeps_the_store_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store_dir, out_dir) = (dir.path().join("store"), dir.path().join("out"));
    let open = || Store::open(&store_dir, &out_dir).expect("open store");
    let (manifest, bytes) = conformance::sample_file();
    // A restart reopens the store from disk, as a restarted peer does (after the old one let
    // go of the directory's lock).
    let restart = |store: &mut Store| {
        store.unlock();
        *store = open();
    };
    conformance::check(&mut open(), restart, &manifest, &bytes);
    assert_eq!(fs::read(out_dir.join("sample.bin")).expect("the finished file"), bytes);
}

#[test]
fn one_store_per_directory_at_a_time() {
    let f = fixture();
    let store = f.store();
    let second = Store::open(&f.store_dir, &f.out_dir).expect_err("the directory is locked");
    assert!(matches!(second, NetError::StoreInUse(ref dir) if *dir == f.store_dir), "{second}");
    drop(store);
    f.store();
}

#[test]
fn served_files_are_remembered_and_rehashed_only_when_touched() {
    let f = fixture();
    let id = f.manifest.file_id();
    let store = f.store();
    store.register_shared(&f.source, f.manifest.clone(), Bitfield::full(f.manifest.chunk_count())).expect("share");
    drop(store);

    let store = f.store();
    assert_eq!(store.remembered(), vec![id]);
    let (manifest, have) = store.reopen(id).expect("reopen").expect("remembered");
    assert_eq!((manifest, have.is_full()), (f.manifest.clone(), true));
    assert_eq!(store.held_path(id), Some(f.source.clone()));
    assert!(store.remembered().is_empty(), "registered in this run");
    drop(store);

    // Same size, new bytes in piece 0 and a new modification time: piece 0 is not served.
    let part = OpenOptions::new().write(true).open(&f.source).expect("open source");
    part.write_all_at(b"XXXX", 10).expect("damage piece 0");
    part.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).expect("touch");
    let store = f.store();
    let (_, have) = store.reopen(id).expect("reopen").expect("remembered");
    assert!(!have.has(ChunkIndex(0)) && have.count() == f.manifest.chunk_count() - 1, "piece 0 hashed again");
    assert_eq!(store.held_path(id), None, "not all of it any more");
    drop(store);

    fs::write(&f.source, b"short").expect("rewrite");
    let store = f.store();
    assert_eq!(store.reopen(id).expect("reopen"), None, "another size: forgotten");
    assert!(store.remembered().is_empty());
}

#[test]
fn verified_pieces_share_one_pending_bitfield_write() {
    let f = fixture();
    let id = f.manifest.file_id();
    let store = f.store();
    store.allocate(&f.manifest);
    assert_eq!(store.mark_verified(id, ChunkIndex(0)), Ok(true), "the first piece asks for a write");
    assert_eq!(store.mark_verified(id, ChunkIndex(1)), Ok(false), "the waiting write records this one too");
    store.persist_bitfield(id).expect("persist");
    let sidecar = f.store_dir.join(format!("{id}.bitfield"));
    let written = read_bitfield(&sidecar, f.manifest.chunk_count()).expect("a bitfield");
    assert_eq!(written.iter().collect::<Vec<_>>(), vec![ChunkIndex(0), ChunkIndex(1)], "one write recorded both");
    assert_eq!(store.mark_verified(id, ChunkIndex(2)), Ok(true), "after the write, the next piece asks again");
}

/// A directory of three levels: a file across pieces 0 and 1, an empty file, an empty
/// directory, and a file across pieces 1 to 3; its bytes in item order.
fn tree_fixture(root: &Path) -> (Manifest, Vec<u8>) {
    let one: Vec<u8> = (0..30_000u32).map(|i| (i % 251) as u8).collect();
    let two: Vec<u8> = (0..25_000u32).map(|i| (i % 13) as u8).collect();
    fs::create_dir_all(root.join("a/b")).expect("mkdir");
    fs::create_dir_all(root.join("a/nothing")).expect("mkdir");
    fs::write(root.join("a/b/one.bin"), &one).expect("write");
    fs::write(root.join("a/empty.txt"), b"").expect("write");
    fs::write(root.join("z.bin"), &two).expect("write");
    let manifest = manifest_of(root, Some(16 * 1024)).expect("a directory's manifest");
    (manifest, [one, two].concat())
}

#[test]
fn a_shared_directory_serves_pieces_across_its_files_and_is_remembered() {
    let f = fixture();
    let root = f._dir.path().join("photos");
    let (manifest, bytes) = tree_fixture(&root);
    let id = manifest.file_id();
    assert_eq!((manifest.name(), manifest.length_bytes(), manifest.chunk_count()), ("photos", 55_000, 4));
    assert_eq!(manifest.tree().map(<[_]>::len), Some(4), "two files, the empty file and the empty directory");
    let store = f.store();
    store.register_shared(&root, manifest.clone(), Bitfield::full(4)).expect("share");
    // Piece 1 starts in one.bin and ends in z.bin.
    let piece = ChunkIndex(1);
    let read = store.read_block(id, piece, 0, manifest.chunk_len(piece)).expect("read across files");
    assert_eq!(read.as_ref(), &bytes[16_384..32_768]);
    assert_eq!(
        store.hash_chunk(id, piece).map(|d| p2p_core::piece_digest_of_chunks(&[d])),
        Ok(manifest.piece_hash(p2p_core::PieceIndex(piece.0)))
    );
    drop(store);

    let store = f.store();
    assert_eq!(store.reopen(id).expect("reopen").map(|(_, have)| have.is_full()), Some(true));
    drop(store);
    let file = OpenOptions::new().write(true).open(root.join("z.bin")).expect("open");
    file.write_all_at(b"XX", 20_000).expect("damage the last piece");
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).expect("touch");
    let (_, have) = f.store().reopen(id).expect("reopen").expect("remembered");
    assert_eq!(have.iter().collect::<Vec<_>>(), vec![ChunkIndex(0), ChunkIndex(1), ChunkIndex(2)], "re-hashed");
    fs::remove_file(root.join("a/b/one.bin")).expect("remove a file");
    assert_eq!(f.store().reopen(id).expect("reopen"), None, "a file gone: forgotten");
}

#[test]
fn a_downloaded_directory_is_laid_out_as_its_tree_beside_a_different_one() {
    let f = fixture();
    let (manifest, bytes) = tree_fixture(&f._dir.path().join("photos"));
    let id = manifest.file_id();
    fs::create_dir_all(f.out_dir.join("photos")).expect("mkdir");
    fs::write(f.out_dir.join("photos/mine.txt"), b"not the download").expect("write");
    let store = f.store();
    store.allocate(&manifest);
    for piece in manifest.chunks() {
        let start = manifest.chunk_offset(piece) as usize;
        let piece_bytes = &bytes[start..start + manifest.chunk_len(piece) as usize];
        store.write_block(id, piece, 0, piece_bytes).expect("write");
        assert_eq!(
            store.hash_chunk(id, piece).map(|d| p2p_core::piece_digest_of_chunks(&[d])),
            Ok(manifest.piece_hash(p2p_core::PieceIndex(piece.0)))
        );
        store.mark_verified(id, piece).expect("mark");
    }
    let path = store.finalize(id).expect("finalize");
    assert_eq!(path, f.out_dir.join("photos.1"), "the different tree is kept");
    assert_eq!(fs::read(f.out_dir.join("photos/mine.txt")).expect("untouched"), b"not the download");
    let copy = manifest_of(&path, Some(16 * 1024)).expect("describe the copy");
    assert_eq!(copy.tree(), manifest.tree(), "the same tree");
    assert!(manifest.pieces().all(|p| copy.piece_hash(p) == manifest.piece_hash(p)), "the same bytes");
    assert!(path.join("a/nothing").is_dir() && fs::read(path.join("a/empty.txt")).expect("empty").is_empty());
    let piece = ChunkIndex(2);
    let read = store.read_block(id, piece, 0, 100).expect("served from the tree");
    assert_eq!(read.as_ref(), &bytes[32_768..32_868]);
    assert!(!f.store_dir.join(format!("{id}.part")).exists());
    let leftovers: Vec<_> = fs::read_dir(&f.out_dir).expect("list").flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 2, "no staging directory left: {leftovers:?}");
    drop(store);
    assert_eq!(f.store().reopen(id).expect("reopen").map(|(_, have)| have.is_full()), Some(true), "seeded again");
}
