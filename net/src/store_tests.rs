//! Store tests: a download written out of order, resumed, finalised without overwriting.

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

    fn piece_bytes(&self, piece: PieceIndex) -> &[u8] {
        let start = self.manifest.piece_offset(piece) as usize;
        &self.bytes[start..start + self.manifest.piece_len(piece) as usize]
    }

    /// Writes `piece` in two blocks, checks its hash and records it.
    fn download_piece(&self, store: &Store, piece: PieceIndex) {
        let id = self.manifest.file_id();
        let bytes = self.piece_bytes(piece);
        let half = bytes.len() / 2;
        store.write_block(id, piece, half as u32, &bytes[half..]).expect("second half");
        store.write_block(id, piece, 0, &bytes[..half]).expect("first half");
        assert_eq!(store.hash_piece(id, piece), Ok(self.manifest.piece_hash(piece)));
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
    assert!(store.read_block(id, PieceIndex(0), 0, 10).is_err(), "unverified pieces are not served");
    f.download_piece(&store, PieceIndex(2));
    f.download_piece(&store, PieceIndex(0));
    drop(store);

    let store = f.store();
    let (manifest, have) = store.resume(id).expect("resume").expect("something to resume");
    assert_eq!(manifest, f.manifest);
    assert_eq!(have.iter().collect::<Vec<_>>(), vec![PieceIndex(0), PieceIndex(2)]);
    assert_eq!(store.known_ids(), vec![id]);
    assert_eq!(
        store.read_block(id, PieceIndex(2), 1, 5).expect("verified").as_ref(),
        &f.piece_bytes(PieceIndex(2))[1..6]
    );
    assert_eq!(store.finalize(id), Err(StoreError::Incomplete { have: 2, total: 3 }), "piece 1 is missing");
    f.download_piece(&store, PieceIndex(1));
    let path = store.finalize(id).expect("finalize");
    assert_eq!(path, f.out_dir.join("movie.bin"));
    assert_eq!(fs::read(&path).expect("read final"), f.bytes);
    assert_eq!(store.path_of(id), Some(path));
    assert!(!f.store_dir.join(format!("{id}.part")).exists());
    assert!(!f.store_dir.join(format!("{id}.bitfield")).exists());
    assert_eq!(store.read_block(id, PieceIndex(1), 0, 4).expect("served").as_ref(), &f.piece_bytes(PieceIndex(1))[..4]);
}

#[test]
fn resume_drops_pieces_whose_bytes_were_damaged() {
    let f = fixture();
    let id = f.manifest.file_id();
    let store = f.store();
    store.allocate(&f.manifest);
    f.download_piece(&store, PieceIndex(0));
    f.download_piece(&store, PieceIndex(1));
    drop(store);
    let part = OpenOptions::new().write(true).open(f.store_dir.join(format!("{id}.part"))).expect("open part");
    part.write_all_at(b"XXXX", 100).expect("damage piece 0");
    let (_, have) = f.store().resume(id).expect("resume").expect("something to resume");
    assert_eq!(have.iter().collect::<Vec<_>>(), vec![PieceIndex(1)]);
    let (_, again) = f.store().resume(id).expect("resume").expect("something to resume");
    assert_eq!(again, have, "the corrected bitfield was persisted");
}

/// A download of pieces 0 and 2 left in the store by an earlier run.
fn interrupted_download(f: &Fixture) -> FileId {
    let store = f.store();
    store.allocate(&f.manifest);
    f.download_piece(&store, PieceIndex(0));
    f.download_piece(&store, PieceIndex(2));
    f.manifest.file_id()
}

#[test]
fn a_truncated_bitfield_is_rebuilt_by_hashing_the_part_and_no_verified_piece_is_lost() {
    let f = fixture();
    let id = interrupted_download(&f);
    let bitfield = f.store_dir.join(format!("{id}.bitfield"));
    for damage in [&[0u8, 0][..], &[0, 0, 0, 9, 0xff][..], &[][..]] {
        fs::write(&bitfield, damage).expect("damage the bitfield");
        let (manifest, have) = f.store().resume(id).expect("a damaged bitfield is no error").expect("resumed");
        assert_eq!(manifest, f.manifest);
        assert_eq!(have.iter().collect::<Vec<_>>(), vec![PieceIndex(0), PieceIndex(2)], "after {damage:?}");
        let (_, again) = f.store().resume(id).expect("resume").expect("resumed");
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
        f.download_piece(&store, PieceIndex(1));
        let (_, have) = f.store().resume(id).expect("resume").expect("the new download resumes");
        assert_eq!(have.iter().collect::<Vec<_>>(), vec![PieceIndex(1)]);
    }
}

#[test]
fn finishing_never_overwrites_a_different_file() {
    let f = fixture();
    fs::create_dir_all(&f.out_dir).expect("out");
    fs::write(f.out_dir.join("movie.bin"), b"precious").expect("existing file");
    let store = f.store();
    store.allocate(&f.manifest);
    for piece in f.manifest.pieces() {
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
    let mut have = Bitfield::new(f.manifest.piece_count());
    have.set(PieceIndex(1));
    store.register_shared(&f.source, f.manifest.clone(), have).expect("share");
    assert_eq!(store.read_block(id, PieceIndex(0), 0, 10), Err(StoreError::NotHeld { piece: PieceIndex(0) }));
    let crossing = store.read_block(id, PieceIndex(1), 16 * 1024 - 4, 10);
    assert!(matches!(crossing, Err(StoreError::OutOfRange { .. })), "crosses the piece end");
    assert_eq!(store.write_block(id, PieceIndex(1), 0, b"no"), Err(StoreError::NotDownloading), "shared is read-only");
    assert_eq!(store.read_block(id, PieceIndex(1), 0, 3).expect("served").as_ref(), &f.piece_bytes(PieceIndex(1))[..3]);
    assert_eq!(store.finalize(id), Ok(f.source.clone()));
}

#[test]
fn io_errors_name_the_path() {
    let f = fixture();
    let id = f.manifest.file_id();
    let store = f.store();
    assert_eq!(store.write_block(id, PieceIndex(0), 0, b"x"), Err(StoreError::NotStored));
    fs::remove_dir_all(&f.store_dir).expect("remove store dir");
    store.allocate(&f.manifest);
    let error = store.write_block(id, PieceIndex(0), 0, b"x").expect_err("allocation failed");
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
    // A restart reopens the store from disk, as a restarted peer does.
    conformance::check(&mut open(), |store| *store = open(), &manifest, &bytes);
    assert_eq!(fs::read(out_dir.join("sample.bin")).expect("the finished file"), bytes);
}

#[test]
fn verified_pieces_share_one_pending_bitfield_write() {
    let f = fixture();
    let id = f.manifest.file_id();
    let store = f.store();
    store.allocate(&f.manifest);
    assert_eq!(store.mark_verified(id, PieceIndex(0)), Ok(true), "the first piece asks for a write");
    assert_eq!(store.mark_verified(id, PieceIndex(1)), Ok(false), "the waiting write records this one too");
    store.persist_bitfield(id).expect("persist");
    let sidecar = f.store_dir.join(format!("{id}.bitfield"));
    let written = read_bitfield(&sidecar, f.manifest.piece_count()).expect("a bitfield");
    assert_eq!(written.iter().collect::<Vec<_>>(), vec![PieceIndex(0), PieceIndex(1)], "one write recorded both");
    assert_eq!(store.mark_verified(id, PieceIndex(2)), Ok(true), "after the write, the next piece asks again");
}
