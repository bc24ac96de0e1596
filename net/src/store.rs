//! The store: the items (files and directory trees) a peer serves and the partial ones it
//! downloads.
//!
//! A download of item `F` lives in the store directory as `F.part` (the item's bytes at their
//! offsets, created at full length; a directory's files one after the other), `F.manifest`
//! (canonical CBOR), `F.bitfield` (verified chunks, rewritten atomically and synced as chunks
//! are verified) and `F.lists` (the chunk digest lists the peer learned, written before the
//! bitfield, so a chunk of a piece held in part can be checked again), so a restarted peer resumes (a damaged sidecar is reported and recovered
//! from: see [`Store::resume`]). On completion a file's `F.part` is moved to `<out>/<name>`, a
//! directory's is laid out as its tree there (see [`crate::tree`]), never replacing anything
//! different; the sidecars are removed and the item is served from its final path. Shared
//! items are served read-only from where they are, never copied; the store remembers both kinds
//! of served items in `F.held` records (see [`crate::held`]) and serves them again after a
//! restart.
//!
//! One process per store: an open store holds an exclusive lock on `<dir>/lock`, and opening
//! checks the output directory is writable, so a second process or a read-only directory fails
//! before anything is fetched.
//!
//! Invariants: only registered files are served, and only their verified (or shared) chunks,
//! checked again here although the machine checks them too; every access stays inside one chunk
//! and one block; memory per operation is one block or one hash chunk, whatever the file size.
//! Every method blocks on disk: call them from worker threads. I/O errors are values naming the
//! path, never panics.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use p2p_core::limits::BLOCK_BYTES_MAX;
use p2p_core::{Bitfield, ChunkIndex, Digest, FileId, Manifest, PieceIndex, Resume, StoreError};

use crate::error::{store_io, NetError};
use crate::hasher::piece_digest_at;
use crate::held::{Found, Held};
use crate::item::ItemFiles;

/// Names tried for a finished file or directory (`name`, `name.1`, ...) before giving up.
const FINAL_NAME_ATTEMPTS_MAX: u32 = 1000;

/// The file in a store directory whose exclusive lock the store's process holds.
const LOCK_FILE_NAME: &str = "lock";

/// The file created (then removed) in the output directory to check it is writable.
const WRITE_CHECK_FILE_NAME: &str = ".p2p-write-check";

/// The files of one peer; see the module docs.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    out: PathBuf,
    /// Output directories of downloads that go elsewhere than `out`.
    outs: Mutex<BTreeMap<FileId, PathBuf>>,
    entries: Mutex<BTreeMap<FileId, Entry>>,
    /// Holds the exclusive lock on `<dir>/lock` while the store is open.
    _lock: File,
}

/// One registered file. A block access reads it under the map's lock and takes out only the
/// shared handles it needs (file, path), never a copy of the entry.
#[derive(Debug)]
struct Entry {
    manifest: Arc<Manifest>,
    /// The item's bytes, or why they could not be opened (reported by every later access).
    file: Result<Arc<ItemFiles>, StoreError>,
    /// Where the bytes are.
    path: Arc<Path>,
    /// Chunks that may be served (shared subset, verified so far, or all).
    served: Bitfield,
    state: State,
    /// Serialises sidecar writes and finalisation of this file.
    sidecars: Arc<Mutex<()>>,
    /// Verified chunks wait for a [`Store::persist_bitfield`] that has not read them yet.
    persist_pending: bool,
    /// The chunk digest lists known, each checked against the manifest: of a download (see
    /// [`Store::keep_list`], written to `F.lists`) and of served pieces (see
    /// [`Store::chunk_digests`]). At most [`p2p_core::limits::CHUNKS_PER_PIECE_MAX`] digests a
    /// piece.
    lists: BTreeMap<PieceIndex, Vec<Digest>>,
    /// Lists kept since the last write of `F.lists`.
    lists_pending: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Served read-only from the user's path.
    Shared,
    /// Being downloaded into `<id>.part`.
    Downloading,
    /// Downloaded and moved to its final path.
    Complete,
}

impl Store {
    /// A store in `dir` whose finished downloads go to `out`; both are created if missing and
    /// checked to be writable. The store holds an exclusive lock on `<dir>/lock` until it is
    /// dropped: a second store on the same directory, in this process or another, is refused.
    pub fn open(dir: &Path, out: &Path) -> Result<Store, NetError> {
        fs::create_dir_all(dir).map_err(NetError::io("create the store directory", dir))?;
        let lock = lock_dir(dir)?;
        fs::create_dir_all(out).map_err(NetError::io("create the output directory", out))?;
        check_writable(out)?;
        Ok(Store {
            dir: dir.to_owned(),
            out: out.to_owned(),
            outs: Mutex::new(BTreeMap::new()),
            entries: Mutex::new(BTreeMap::new()),
            _lock: lock,
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Has the download of `file_id` finish in `out` instead of the store's output directory;
    /// `out` is created if missing and checked to be writable.
    pub fn set_out(&self, file_id: FileId, out: &Path) -> Result<(), NetError> {
        fs::create_dir_all(out).map_err(NetError::io("create the output directory", out))?;
        check_writable(out)?;
        self.outs.lock().unwrap_or_else(PoisonError::into_inner).insert(file_id, out.to_owned());
        Ok(())
    }

    /// Serves `have` chunks of the file or directory at `path`, described by `manifest`,
    /// read-only in place. The store remembers it (see [`crate::held`]).
    pub fn register_shared(&self, path: &Path, manifest: Manifest, have: Bitfield) -> Result<(), NetError> {
        let file = ItemFiles::open(path, &manifest)?;
        let held = Held::of(path, manifest.clone(), have.clone()).map_err(NetError::io("inspect", path))?;
        self.remember(&held)?;
        let entry = Entry::new(manifest, Ok(Arc::new(file)), held.path, have, State::Shared);
        let file_id = entry.manifest.file_id();
        self.lock().insert(file_id, entry);
        Ok(())
    }

    /// Prepares the download of `manifest`'s file: `<id>.part` at full length and `<id>.manifest`.
    /// A file already registered (resumed, shared or complete) is left as it is. A failure is
    /// remembered and reported by every later write.
    pub fn allocate(&self, manifest: &Manifest) {
        let file_id = manifest.file_id();
        if self.lock().contains_key(&file_id) {
            return;
        }
        let part = self.sidecar(file_id, "part");
        let file = self.create_part(manifest, &part).map(|file| Arc::new(ItemFiles::part(file, &part)));
        let file = file.inspect_err(|e| tracing::error!("{e}"));
        let served = Bitfield::new(manifest.chunk_count());
        let entry = Entry::new(manifest.clone(), file, part, served, State::Downloading);
        self.lock().entry(file_id).or_insert(entry);
    }

    /// Writes a received block at its place in the partial file.
    pub fn write_block(&self, file_id: FileId, chunk: ChunkIndex, offset: u32, bytes: &[u8]) -> Result<(), StoreError> {
        let (file, at) = self.with_entry(file_id, |entry| {
            if entry.state != State::Downloading {
                return Err(StoreError::NotDownloading);
            }
            entry.access(chunk, offset, bytes.len() as u64)
        })?;
        file.write_all_at(bytes, at)
    }

    /// The digest (SHA-256) of a chunk as stored.
    pub fn hash_chunk(&self, file_id: FileId, chunk: ChunkIndex) -> Result<Digest, StoreError> {
        let (file, at, len) = self.with_entry(file_id, |entry| {
            let len = entry.chunk_len_checked(chunk)?;
            let (file, at) = entry.access(chunk, 0, u64::from(len))?;
            Ok((file, at, len))
        })?;
        file.digest(at, u64::from(len))
    }

    /// The chunk digests of `piece` as stored: its list (see
    /// [`p2p_core::store::Store::chunk_digests`]). A list known already (from describing the
    /// item, from the download, or from an earlier call) is answered from memory; else the piece
    /// is hashed, and its list kept when it matches the manifest, so a served piece is hashed
    /// once at most.
    pub fn chunk_digests(&self, file_id: FileId, piece: PieceIndex) -> Result<Vec<Digest>, StoreError> {
        let known = self.with_entry(file_id, |entry| {
            if piece.0 >= entry.manifest.piece_count() {
                // Past the last piece: named by the first chunk past the file's.
                return Err(StoreError::OutOfRange {
                    chunk: ChunkIndex(entry.manifest.chunk_count()),
                    offset: 0,
                    len: 0,
                });
            }
            Ok(entry.lists.get(&piece).cloned().ok_or_else(|| entry.manifest.clone()))
        })?;
        let manifest = match known {
            Ok(list) => return Ok(list),
            Err(manifest) => manifest,
        };
        let list: Vec<Digest> =
            manifest.chunks_of(piece).map(|chunk| self.hash_chunk(file_id, chunk)).collect::<Result<_, _>>()?;
        if manifest.is_chunk_list(piece, &list) {
            if let Some(entry) = self.lock().get_mut(&file_id) {
                entry.lists.insert(piece, list.clone());
            }
        }
        Ok(list)
    }

    /// Keeps the chunk digests of a whole item, in chunk order, as describing it computed
    /// them: its pieces' lists are then served without reading the item (see
    /// [`Store::chunk_digests`]). Digests that are not the item's are ignored.
    pub fn learn_lists(&self, file_id: FileId, chunk_digests: &[Digest]) {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(&file_id) else { return };
        let manifest = entry.manifest.clone();
        if chunk_digests.len() != manifest.chunk_count() as usize || manifest.chunks_per_piece() == 1 {
            return;
        }
        for piece in manifest.pieces() {
            let list: Vec<Digest> = manifest.chunks_of(piece).map(|chunk| chunk_digests[chunk.0 as usize]).collect();
            if manifest.is_chunk_list(piece, &list) {
                entry.lists.insert(piece, list);
            }
        }
    }

    /// Reads a block of a served chunk.
    pub fn read_block(&self, file_id: FileId, chunk: ChunkIndex, offset: u32, len: u32) -> Result<Bytes, StoreError> {
        let (file, at) = self.with_entry(file_id, |entry| {
            if !entry.served.has(chunk) {
                return Err(StoreError::NotHeld { chunk });
            }
            if len > BLOCK_BYTES_MAX {
                return Err(StoreError::OutOfRange { chunk, offset, len: u64::from(len) });
            }
            entry.access(chunk, offset, u64::from(len))
        })?;
        file.read(len as usize, at)
    }

    /// Keeps the chunk digests of `piece` of a download, checked by the peer: written to
    /// `F.lists` with the next bitfield, so every chunk the bitfield records has its list on
    /// disk. Cheap (no disk).
    pub fn keep_list(&self, file_id: FileId, piece: PieceIndex, digests: &[Digest]) -> Result<(), StoreError> {
        let mut entries = self.lock();
        let entry = entries.get_mut(&file_id).ok_or(StoreError::NotStored)?;
        if entry.state == State::Downloading && piece.0 < entry.manifest.piece_count() {
            entry.lists.insert(piece, digests.to_vec());
            entry.lists_pending = true;
        }
        Ok(())
    }

    /// Records a verified chunk: it is served from now on. Cheap (no disk): call it in order
    /// with the other outputs. `Ok(true)`: call [`Store::persist_bitfield`] on a worker thread;
    /// `Ok(false)`: a call already waiting will persist this chunk too, so the synced writes
    /// keep pace with the disk, not with the chunks.
    pub fn mark_verified(&self, file_id: FileId, chunk: ChunkIndex) -> Result<bool, StoreError> {
        let mut entries = self.lock();
        let entry = entries.get_mut(&file_id).ok_or(StoreError::NotStored)?;
        entry.chunk_len_checked(chunk)?;
        entry.served.set(chunk);
        let schedule = !entry.persist_pending;
        entry.persist_pending = true;
        Ok(schedule)
    }

    /// Moves a fully verified download to the output directory and returns its final path.
    pub fn finalize(&self, file_id: FileId) -> Result<PathBuf, StoreError> {
        let sidecars = self.with_entry(file_id, |entry| Ok(entry.sidecars.clone()))?;
        let _guard = sidecars.lock().unwrap_or_else(PoisonError::into_inner);
        // Read under the sidecar lock, so no bitfield write races the move.
        let downloading = self.with_entry(file_id, |entry| match entry.state {
            State::Complete | State::Shared => Ok(Err(entry.path.to_path_buf())),
            State::Downloading if !entry.served.is_full() => {
                Err(StoreError::Incomplete { have: entry.served.count(), total: entry.served.len() })
            }
            State::Downloading => Ok(Ok((entry.path.clone(), entry.manifest.clone()))),
        })?;
        // A file already in its final place stays where it is.
        let (part, manifest) = match downloading {
            Ok(download) => download,
            Err(in_place) => return Ok(in_place),
        };
        let out = self.outs.lock().unwrap_or_else(PoisonError::into_inner).get(&file_id).cloned();
        let out = out.as_deref().unwrap_or(&self.out);
        let target = match manifest.tree() {
            None => place_final(&part, out, &manifest)?,
            Some(_) => crate::tree::place(&part, out, &manifest)?,
        };
        for kind in ["manifest", "bitfield", "lists"] {
            remove_if_present(&self.sidecar(file_id, kind))?;
        }
        let file = ItemFiles::open(&target, &manifest).map_err(|e| into_store_error(e, "open", &target))?;
        let held = Held::of(&target, (*manifest).clone(), Bitfield::full(manifest.chunk_count()));
        if let Err(e) = held.map_err(store_io("inspect", &target)).and_then(|held| self.remember(&held)) {
            // The download is done all the same; only a restart will not seed it unasked.
            tracing::warn!("{e}");
        }
        if let Some(stored) = self.lock().get_mut(&file_id) {
            stored.file = Ok(Arc::new(file));
            stored.path = Arc::from(target.as_path());
            stored.state = State::Complete;
        }
        Ok(target)
    }

    /// Where the bytes of a registered file are (the final path once complete).
    pub fn path_of(&self, file_id: FileId) -> Option<PathBuf> {
        self.lock().get(&file_id).map(|entry| entry.path.to_path_buf())
    }

    /// Every file id this store knows: registered files and partial downloads on disk.
    pub fn known_ids(&self) -> Vec<FileId> {
        let mut ids: Vec<FileId> = self.lock().keys().copied().collect();
        if let Ok(listing) = fs::read_dir(&self.dir) {
            for name in listing.flatten().map(|e| e.file_name()) {
                let name = name.to_string_lossy();
                if let Some(id) = name.strip_suffix(".manifest").and_then(|hex| hex.parse().ok()) {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        ids.dedup();
        ids
    }

    /// Picks up an earlier run's download of `file_id`: re-hashes every chunk its bitfield
    /// claims (on all cores), keeps those that match, registers the partial file and returns the
    /// manifest and the verified chunks. `None` when there is nothing to resume.
    ///
    /// Damaged sidecars never stop a restart; each is reported once (a warning on stderr). A
    /// `.bitfield` that does not read back is replaced by re-hashing every chunk of the `.part`,
    /// so no verified chunk is lost; a `.manifest` that does not read back (or describes
    /// another file) leaves nothing to check the `.part` against, so the download's files are
    /// removed and it starts over.
    pub fn resume(&self, file_id: FileId) -> Result<Option<Resume>, NetError> {
        let (manifest_path, bitfield_path) = (self.sidecar(file_id, "manifest"), self.sidecar(file_id, "bitfield"));
        if !manifest_path.exists() || !bitfield_path.exists() {
            return Ok(None);
        }
        let manifest = match read_manifest(&manifest_path, file_id) {
            Err(NetError::Corrupt { path, reason }) => {
                tracing::warn!("{}: {reason}; the download of {file_id} starts over", path.display());
                for kind in ["bitfield", "lists", "part", "manifest"] {
                    remove_if_present(&self.sidecar(file_id, kind))?;
                }
                return Ok(None);
            }
            read => read?,
        };
        let (claimed, rehash_all) = match read_bitfield(&bitfield_path, manifest.chunk_count()) {
            Err(NetError::Corrupt { path, reason }) => {
                tracing::warn!("{}: {reason}; every stored chunk of {file_id} is hashed again", path.display());
                (Bitfield::full(manifest.chunk_count()), true)
            }
            read => (read?, false),
        };
        let lists_path = self.sidecar(file_id, "lists");
        let lists = match read_lists(&lists_path, &manifest) {
            Err(NetError::Corrupt { path, reason }) => {
                tracing::warn!("{}: {reason}; pieces of {file_id} held in part are fetched again", path.display());
                BTreeMap::new()
            }
            read => read?,
        };
        let part = self.sidecar(file_id, "part");
        let file = ItemFiles::part(self.create_part(&manifest, &part)?, &part);
        let mut verified = verify_pieces(&file, &manifest, &claimed)?;
        verify_listed_chunks(&file, &manifest, &claimed, &lists, &mut verified)?;
        // The lists of pieces held whole are of no more use: their chunks are checked with the
        // piece.
        let lists: BTreeMap<PieceIndex, Vec<Digest>> = lists
            .into_iter()
            .filter(|(piece, _)| manifest.chunks_of(*piece).any(|chunk| !verified.has(chunk)))
            .collect();
        let mut entry = Entry::new(manifest.clone(), Ok(Arc::new(file)), part, verified.clone(), State::Downloading);
        entry.lists = lists.clone();
        self.lock().insert(file_id, entry);
        if verified != claimed {
            if !rehash_all {
                let failed = claimed.count() - verified.count();
                tracing::warn!("{file_id}: {failed} of {} stored chunks failed their hash", claimed.count());
            }
            self.persist_bitfield(file_id)?;
        }
        Ok(Some(Resume { manifest, have: verified, lists: lists.into_iter().collect() }))
    }

    /// Writes the verified chunks of a download to `<id>.bitfield` (nothing once complete).
    pub fn persist_bitfield(&self, file_id: FileId) -> Result<(), StoreError> {
        let sidecars = self.with_entry(file_id, |entry| Ok(entry.sidecars.clone()))?;
        let _guard = sidecars.lock().unwrap_or_else(PoisonError::into_inner);
        // Read under the sidecar lock, so the newest bitfield is always the one written last;
        // chunks verified from now on ask for another write.
        let (bitfield, lists) = {
            let mut entries = self.lock();
            let entry = entries.get_mut(&file_id).ok_or(StoreError::NotStored)?;
            entry.persist_pending = false;
            let downloading = entry.state == State::Downloading;
            let lists = (downloading && std::mem::take(&mut entry.lists_pending)).then(|| encode_lists(&entry.lists));
            (downloading.then(|| encode_bitfield(&entry.served)), lists)
        };
        if let Some(lists) = lists {
            // Not synced: the bitfield's write just after syncs the folder, and a list lost to
            // a power cut costs only the refetch of its piece's chunks.
            replace(&self.sidecar(file_id, "lists"), &lists, false)?;
        }
        match bitfield {
            Some(bytes) => write_atomically(&self.sidecar(file_id, "bitfield"), &bytes),
            None => Ok(()),
        }
    }

    /// Files the store remembers serving (see [`crate::held`]) that are not registered in
    /// this run yet, by id.
    pub fn remembered(&self) -> Vec<FileId> {
        let Ok(listing) = fs::read_dir(&self.dir) else { return Vec::new() };
        let held: Vec<FileId> = listing
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.strip_suffix(".held")?.parse().ok())
            .collect();
        let registered = self.lock();
        let mut ids: Vec<FileId> = held.into_iter().filter(|id| !registered.contains_key(id)).collect();
        ids.sort();
        ids
    }

    /// Serves a remembered file again: as recorded when its size and modification time are
    /// unchanged, else after hashing its recorded chunks again (keeping those that match).
    /// Returns its manifest and the chunks served; `None` (and the record is forgotten) when
    /// the file is gone, has another size, or the record is damaged.
    pub fn reopen(&self, file_id: FileId) -> Result<Option<(Manifest, Bitfield)>, NetError> {
        let record = self.sidecar(file_id, "held");
        let bytes = fs::read(&record).map_err(NetError::io("read", &record))?;
        let held = match Held::decode(&bytes, file_id) {
            Ok(held) => held,
            Err(reason) => return self.forget(&record, reason),
        };
        let found = held.check();
        if found == Found::Gone {
            return self.forget(&record, format_args!("{} is gone or changed size", held.path.display()));
        }
        let file = ItemFiles::open(&held.path, &held.manifest)?;
        let mut have = held.have.clone();
        if found == Found::Touched {
            have = verify_pieces(&file, &held.manifest, &held.have)?;
            let again = Held::of(&held.path, held.manifest.clone(), have.clone());
            self.remember(&again.map_err(NetError::io("inspect", &held.path))?)?;
        }
        let entry = Entry::new(held.manifest.clone(), Ok(Arc::new(file)), held.path, have.clone(), State::Shared);
        self.lock().insert(file_id, entry);
        Ok(Some((held.manifest, have)))
    }

    /// Where the whole of `file_id` is, when this store serves all of it (shared or finished).
    pub fn held_path(&self, file_id: FileId) -> Option<PathBuf> {
        let entries = self.lock();
        let entry = entries.get(&file_id).filter(|entry| entry.state != State::Downloading)?;
        entry.served.is_full().then(|| entry.path.to_path_buf())
    }

    /// Removes `file_id`: it is served no more, and a restarted peer does not serve it again
    /// (its `.held` record goes). A download's data in the store stays, its verified chunks
    /// recorded, so a later `--get` resumes it; with `delete_partial` it goes too (`.part`,
    /// `.manifest`, `.bitfield`). A shared file or a finished download in the output
    /// directory is never deleted. Call it once the machine asks nothing more of the file.
    pub fn remove(&self, file_id: FileId, delete_partial: bool) -> Result<(), NetError> {
        let sidecars = self.lock().get(&file_id).map(|entry| entry.sidecars.clone()).unwrap_or_default();
        if !delete_partial && self.lock().get(&file_id).is_some_and(|entry| entry.state == State::Downloading) {
            self.persist_bitfield(file_id)?;
        }
        // Held while the entry and its files go, so no bitfield write races the removal.
        let _guard = sidecars.lock().unwrap_or_else(PoisonError::into_inner);
        self.lock().remove(&file_id);
        self.outs.lock().unwrap_or_else(PoisonError::into_inner).remove(&file_id);
        remove_if_present(&self.sidecar(file_id, "held"))?;
        if delete_partial {
            for kind in ["part", "bitfield", "lists", "manifest"] {
                remove_if_present(&self.sidecar(file_id, kind))?;
            }
        }
        Ok(())
    }

    /// Lets another store open this directory while this one is still alive: for tests that
    /// restart a store in place (the new one is opened before the old one is dropped).
    #[cfg(test)]
    fn unlock(&self) {
        rustix::fs::flock(&self._lock, rustix::fs::FlockOperation::Unlock).expect("unlock the store");
    }

    fn remember(&self, held: &Held) -> Result<(), StoreError> {
        write_atomically(&self.sidecar(held.manifest.file_id(), "held"), &held.encode())
    }

    fn forget(&self, record: &Path, reason: impl std::fmt::Display) -> Result<Option<(Manifest, Bitfield)>, NetError> {
        tracing::warn!("no longer serving what {} remembers: {reason}", record.display());
        remove_if_present(record)?;
        Ok(None)
    }

    /// [`Store::persist_bitfield`] for every unfinished download.
    pub fn persist_all(&self) -> Result<(), StoreError> {
        let downloading: Vec<FileId> =
            self.lock().iter().filter(|(_, entry)| entry.state == State::Downloading).map(|(id, _)| *id).collect();
        downloading.into_iter().try_for_each(|file_id| self.persist_bitfield(file_id))
    }

    fn create_part(&self, manifest: &Manifest, part: &Path) -> Result<File, StoreError> {
        write_atomically(&self.sidecar(manifest.file_id(), "manifest"), &manifest.to_cbor())?;
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(part);
        let file = file.map_err(store_io("create", part))?;
        file.set_len(manifest.length_bytes()).map_err(store_io("allocate", part))?;
        Ok(file)
    }

    fn sidecar(&self, file_id: FileId, kind: &str) -> PathBuf {
        self.dir.join(format!("{file_id}.{kind}"))
    }

    /// `look` applied to the entry of `file_id`, under the map's lock (keep it short: no I/O).
    fn with_entry<T>(
        &self,
        file_id: FileId,
        look: impl FnOnce(&Entry) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        look(self.lock().get(&file_id).ok_or(StoreError::NotStored)?)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<FileId, Entry>> {
        // A panic while holding the lock cannot leave the map half-updated: every update is one
        // insert or one field assignment.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Entry {
    fn new(
        manifest: Manifest,
        file: Result<Arc<ItemFiles>, StoreError>,
        path: PathBuf,
        served: Bitfield,
        state: State,
    ) -> Entry {
        let sidecars = Arc::default();
        Entry {
            manifest: Arc::new(manifest),
            file,
            path: Arc::from(path),
            served,
            state,
            sidecars,
            persist_pending: false,
            lists: BTreeMap::new(),
            lists_pending: false,
        }
    }

    /// The length of `chunk`, if it exists.
    fn chunk_len_checked(&self, chunk: ChunkIndex) -> Result<u32, StoreError> {
        match self.manifest.chunk(chunk.0) {
            Some(chunk) => Ok(self.manifest.chunk_len(chunk)),
            None => Err(StoreError::OutOfRange { chunk, offset: 0, len: 0 }),
        }
    }

    /// The item's bytes and the item offset of `len` bytes at `offset` in `chunk`, checked to
    /// stay inside the chunk.
    fn access(&self, chunk: ChunkIndex, offset: u32, len: u64) -> Result<(Arc<ItemFiles>, u64), StoreError> {
        let chunk_len = self.chunk_len_checked(chunk)?;
        if u64::from(offset) + len > u64::from(chunk_len) {
            return Err(StoreError::OutOfRange { chunk, offset, len });
        }
        let at = self.manifest.chunk_offset(chunk) + u64::from(offset);
        Ok((self.file.clone()?, at))
    }
}

/// Takes the exclusive lock of the store directory `dir` (created and writable, or the error
/// says why not), or fails at once when another store holds it.
fn lock_dir(dir: &Path) -> Result<File, NetError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new().write(true).create(true).truncate(false).open(&path);
    let file = file.map_err(NetError::io("create the lock file", &path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(NetError::StoreInUse(dir.to_owned())),
        Err(e) => Err(NetError::io("lock", &path)(e.into())),
    }
}

/// Fails unless a file can be created in the directory `dir`.
fn check_writable(dir: &Path) -> Result<(), NetError> {
    let probe = dir.join(WRITE_CHECK_FILE_NAME);
    File::create(&probe).map_err(NetError::io("write in the output directory", dir))?;
    fs::remove_file(&probe).map_err(NetError::io("remove", &probe))
}

/// The chunks of `claimed` (a bitfield over the item's chunks) whose pieces are claimed whole
/// and whose stored bytes match the manifest, hashed on every core. A piece claimed in part is
/// left out: its chunks cannot be checked one by one without its list (see
/// `p2p_core::Manifest::is_chunk_list`), and the peer fetches it again.
pub(crate) fn verify_pieces(file: &ItemFiles, manifest: &Manifest, claimed: &Bitfield) -> Result<Bitfield, NetError> {
    let pieces: Vec<PieceIndex> = manifest.whole_pieces(claimed).collect();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per_worker = pieces.len().div_ceil(workers).max(1);
    let results: Vec<Result<Vec<PieceIndex>, NetError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = pieces
            .chunks(per_worker)
            .map(|share| {
                scope.spawn(move || {
                    let mut good = Vec::new();
                    for &piece in share {
                        let len = u64::from(manifest.piece_len(piece));
                        let digest =
                            file.piece_digest(manifest.piece_offset(piece), len, manifest.piece_size_bytes())?;
                        if digest == manifest.piece_hash(piece) {
                            good.push(piece);
                        }
                    }
                    Ok(good)
                })
            })
            .collect();
        // A worker only panics on a bug in hashing; re-raise it on this thread.
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let mut verified = Bitfield::new(manifest.chunk_count());
    for piece in results.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().flatten() {
        manifest.chunks_of(piece).for_each(|chunk| _ = verified.set(chunk));
    }
    Ok(verified)
}

/// Moves `part` to a free name in `out` (`name`, `name.1`, ...) and returns it. A name taken by
/// a file with exactly the manifest's content is reused; a different file is never replaced.
fn place_final(part: &Path, out: &Path, manifest: &Manifest) -> Result<PathBuf, StoreError> {
    for name in final_names(manifest) {
        let target = out.join(name);
        match link_or_copy(part, &target) {
            Ok(()) => {
                fs::remove_file(part).map_err(store_io("remove", part))?;
                return Ok(target);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if holds_manifest_content(&target, manifest) {
                    fs::remove_file(part).map_err(store_io("remove", part))?;
                    return Ok(target);
                }
            }
            Err(e) => return Err(store_io("move the finished file to", target)(e)),
        }
    }
    let source = io::Error::new(io::ErrorKind::AlreadyExists, "every candidate name is taken");
    Err(store_io("find a free name in", out)(source))
}

/// The names a finished item may take in its output directory, in order: `name`, `name.1`, ...
/// (the manifest's name is one safe path component, checked by `Manifest::new`).
pub(crate) fn final_names(manifest: &Manifest) -> impl Iterator<Item = String> + '_ {
    (0..FINAL_NAME_ATTEMPTS_MAX).map(|attempt| match attempt {
        0 => manifest.name().to_owned(),
        n => format!("{}.{n}", manifest.name()),
    })
}

/// Creates `target` with `source`'s content, failing with `AlreadyExists` rather than replacing
/// anything: a hard link on one file system, a copy (then fsync) across file systems.
fn link_or_copy(source: &Path, target: &Path) -> io::Result<()> {
    match fs::hard_link(source, target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices || e.kind() == io::ErrorKind::PermissionDenied => {
            copy_new(source, target)
        }
        Err(e) => Err(e),
    }
}

fn copy_new(source: &Path, target: &Path) -> io::Result<()> {
    let mut from = File::open(source)?;
    let mut to = OpenOptions::new().write(true).create_new(true).open(target)?;
    let copied = io::copy(&mut from, &mut to).and_then(|_| to.sync_all());
    if copied.is_err() {
        // Do not leave a half-copied file behind under the final name.
        fs::remove_file(target).ok();
    }
    copied
}

fn holds_manifest_content(path: &Path, manifest: &Manifest) -> bool {
    let Ok(file) = File::open(path) else { return false };
    if file.metadata().map(|m| m.len()).ok() != Some(manifest.length_bytes()) {
        return false;
    }
    manifest.pieces().all(|piece| {
        let len = u64::from(manifest.piece_len(piece));
        let at = manifest.piece_offset(piece);
        piece_digest_at(&file, at, len, manifest.piece_size_bytes(), path).ok() == Some(manifest.piece_hash(piece))
    })
}

fn read_manifest(path: &Path, file_id: FileId) -> Result<Manifest, NetError> {
    let bytes = fs::read(path).map_err(NetError::io("read", path))?;
    let manifest =
        Manifest::from_cbor(&bytes).map_err(|e| NetError::Corrupt { path: path.to_owned(), reason: e.to_string() })?;
    if manifest.file_id() != file_id {
        return Err(NetError::Corrupt { path: path.to_owned(), reason: "describes another file".into() });
    }
    Ok(manifest)
}

/// The chunks of `claimed` of pieces held in part (not in `verified`) whose list is in `lists`
/// and whose stored bytes match it, added to `verified`.
fn verify_listed_chunks(
    file: &ItemFiles,
    manifest: &Manifest,
    claimed: &Bitfield,
    lists: &BTreeMap<PieceIndex, Vec<Digest>>,
    verified: &mut Bitfield,
) -> Result<(), StoreError> {
    for (piece, list) in lists {
        for (place, chunk) in manifest.chunks_of(*piece).enumerate() {
            if claimed.has(chunk) && !verified.has(chunk) {
                let digest = file.digest(manifest.chunk_offset(chunk), u64::from(manifest.chunk_len(chunk)))?;
                if digest == list[place] {
                    verified.set(chunk);
                }
            }
        }
    }
    Ok(())
}

/// A `.lists` sidecar's bytes: per list, the piece (4 bytes, big-endian), the digest count (1
/// byte), then the digests.
fn encode_lists(lists: &BTreeMap<PieceIndex, Vec<Digest>>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (piece, digests) in lists {
        bytes.extend_from_slice(&piece.0.to_be_bytes());
        // At most CHUNKS_PER_PIECE_MAX digests.
        bytes.push(digests.len() as u8);
        digests.iter().for_each(|digest| bytes.extend_from_slice(&digest.0));
    }
    bytes
}

/// Reads a `.lists` sidecar (none: no lists); each list must be its piece's (see
/// `Manifest::is_chunk_list`).
fn read_lists(path: &Path, manifest: &Manifest) -> Result<BTreeMap<PieceIndex, Vec<Digest>>, NetError> {
    let bytes = match fs::read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        read => read.map_err(NetError::io("read", path))?,
    };
    let corrupt = |reason: &str| NetError::Corrupt { path: path.to_owned(), reason: reason.into() };
    let mut lists = BTreeMap::new();
    let mut rest = &bytes[..];
    while let Some((piece, after)) = rest.split_first_chunk::<4>() {
        let (count, after) = after.split_first().ok_or_else(|| corrupt("a list cut short"))?;
        let (digests, after) =
            after.split_at_checked(usize::from(*count) * 32).ok_or_else(|| corrupt("a list cut short"))?;
        let piece = PieceIndex(u32::from_be_bytes(*piece));
        let digests: Vec<Digest> = digests.chunks_exact(32).map(|d| Digest(d.try_into().expect("32 bytes"))).collect();
        if piece.0 >= manifest.piece_count() || !manifest.is_chunk_list(piece, &digests) {
            return Err(corrupt("a list that is not its piece's"));
        }
        lists.insert(piece, digests);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(corrupt("a list cut short"));
    }
    Ok(lists)
}

/// A `.bitfield` sidecar's bytes: the chunk count (4 bytes, big-endian), then the bits.
fn encode_bitfield(bitfield: &Bitfield) -> Vec<u8> {
    let mut bytes = bitfield.len().to_be_bytes().to_vec();
    bytes.extend_from_slice(bitfield.as_bytes());
    bytes
}

fn read_bitfield(path: &Path, chunk_count: u32) -> Result<Bitfield, NetError> {
    let bytes = fs::read(path).map_err(NetError::io("read", path))?;
    let corrupt = |reason: &str| NetError::Corrupt { path: path.to_owned(), reason: reason.into() };
    let (len, bits) = bytes.split_at_checked(4).ok_or_else(|| corrupt("too short"))?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    if len != chunk_count {
        return Err(corrupt("chunk count differs from the manifest"));
    }
    Bitfield::from_bytes(len, bits).ok_or_else(|| corrupt("byte count differs from the chunk count"))
}

/// Replaces `path` with `bytes` through a temporary file and a rename, so a crash leaves the old
/// or the new content, never a mix. The temporary file is synced before the rename and the
/// folder after it, so once this returns the new content survives a power cut too.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    replace(path, bytes, true)?;
    let folder = path.parent().unwrap_or(Path::new("."));
    File::open(folder).and_then(|dir| dir.sync_all()).map_err(store_io("sync", folder))
}

/// Replaces `path` with `bytes` through a temporary file and a rename, synced before the rename
/// when `durable`. Unsynced, a power cut may leave the file empty or cut short: only for a
/// sidecar whose loss costs a refetch (the `.lists`, read back strictly).
fn replace(path: &Path, bytes: &[u8], durable: bool) -> Result<(), StoreError> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let written = File::create(&temp)
        .map_err(store_io("create", &temp))
        .and_then(|mut file| {
            file.write_all(bytes)
                .and_then(|()| if durable { file.sync_all() } else { Ok(()) })
                .map_err(store_io("write", &temp))
        })
        .and_then(|()| fs::rename(&temp, path).map_err(store_io("rename into place", path)));
    if written.is_err() {
        // Leave no stray temporary file behind (a full disk, say); the old content stays.
        fs::remove_file(&temp).ok();
    }
    written
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(store_io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// The storage contract as the peer's driver sees it, for one owner of the store (the driver
/// itself shares it with worker threads through the `&self` methods above).
impl p2p_core::store::Store for Store {
    fn allocate(&mut self, manifest: &Manifest) -> Result<(), StoreError> {
        Store::allocate(self, manifest);
        Ok(())
    }

    fn write_block(&mut self, file_id: FileId, chunk: ChunkIndex, offset: u32, bytes: Bytes) -> Result<(), StoreError> {
        Store::write_block(self, file_id, chunk, offset, &bytes)
    }

    fn hash_chunk(&mut self, file_id: FileId, chunk: ChunkIndex) -> Result<Digest, StoreError> {
        Store::hash_chunk(self, file_id, chunk)
    }

    fn chunk_digests(
        &mut self,
        file_id: FileId,
        piece: PieceIndex,
        _chunks: &[ChunkIndex],
    ) -> Result<Vec<Digest>, StoreError> {
        Store::chunk_digests(self, file_id, piece)
    }

    fn mark_verified(&mut self, file_id: FileId, chunk: ChunkIndex) -> Result<(), StoreError> {
        // Persisted at once whether or not a write is pending: this owner has no worker.
        Store::mark_verified(self, file_id, chunk)?;
        Store::persist_bitfield(self, file_id)
    }

    fn read_block(&mut self, file_id: FileId, chunk: ChunkIndex, offset: u32, len: u32) -> Result<Bytes, StoreError> {
        Store::read_block(self, file_id, chunk, offset, len)
    }

    fn finalize(&mut self, file_id: FileId) -> Result<(), StoreError> {
        Store::finalize(self, file_id).map(|_| ())
    }

    fn keep_list(&mut self, file_id: FileId, piece: PieceIndex, digests: &[Digest]) -> Result<(), StoreError> {
        Store::keep_list(self, file_id, piece, digests)
    }

    fn resume(&mut self, file_id: FileId) -> Result<Option<Resume>, StoreError> {
        Store::resume(self, file_id).map_err(|e| into_store_error(e, "resume from", &self.dir))
    }
}

/// A store's [`NetError`] as the [`StoreError`] a machine's completion carries; anything but an
/// I/O error (a damaged sidecar, an item that changed) fails `action` on `path`.
fn into_store_error(error: NetError, action: &'static str, path: &Path) -> StoreError {
    match error {
        NetError::Store(e) => e,
        NetError::Io { action, path, error } => {
            StoreError::Io { action, path, kind: error.kind(), detail: error.to_string() }
        }
        other => StoreError::Io {
            action,
            path: path.to_owned(),
            kind: io::ErrorKind::InvalidData,
            detail: other.to_string(),
        },
    }
}

#[path = "store_reuse.rs"]
mod reuse;
pub use reuse::Reused;

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
