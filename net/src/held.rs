//! The store's memory of the items its peer serves from outside the store directory: files and
//! directories it shared and downloads it finished. Each is one `<id>.held` record in the store
//! directory (written atomically), so a peer restarted on the same store serves them again
//! without being told: the record keeps the item's path, its manifest, the pieces served, and
//! its size and modification stamp when they were last verified (see [`crate::item::stamp`]:
//! for a directory, over every file). An item whose size and stamp are unchanged is served
//! without hashing; one whose stamp changed has its pieces hashed again first.
//!
//! The record is a few text lines, `KEY VALUE`, with binary values (the path's bytes, the
//! bitfield, the manifest's canonical CBOR) in hex.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use p2p_core::{Bitfield, FileId, Manifest, ManifestError};
use thiserror::Error;

use crate::item::stamp;

/// The first line of every record (its format's version).
const RECORD_HEADER: &str = "swarm-held 1";

/// What a store remembers of one item it serves from outside the store directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// Where the file is (absolute).
    pub path: PathBuf,
    /// The file's manifest.
    pub manifest: Manifest,
    /// The pieces served (all of them, unless a subset was shared).
    pub have: Bitfield,
    /// The item's size when its pieces were last verified.
    pub length_bytes: u64,
    /// Its modification stamp then: a file's time in nanoseconds since the Unix epoch, a
    /// digest of every file's size and time for a directory.
    pub modified_ns: u128,
}

/// What is wrong with a record that does not decode.
#[derive(Debug, Error)]
pub enum HeldError {
    /// Not UTF-8.
    #[error("not text")]
    NotText,
    /// Another first line.
    #[error("does not start with {RECORD_HEADER:?}")]
    Header,
    /// A line is missing or names another key.
    #[error("no {0} line")]
    Missing(&'static str),
    /// A line's value does not parse.
    #[error("bad {0}")]
    Bad(&'static str),
    /// The manifest's bytes do not decode.
    #[error("bad manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// The manifest is another file's.
    #[error("describes another file")]
    OtherFile,
    /// The pieces, length or path disagree with the manifest (or the path is relative).
    #[error("disagrees with its manifest")]
    Disagrees,
}

/// How a remembered file compares with its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Same size and modification time: serve it as recorded.
    Unchanged,
    /// Same size, another modification time: hash the recorded pieces again.
    Touched,
    /// Gone, or another size (a directory: a file gone or of another size): forget it.
    Gone,
}

impl Held {
    /// A record of the item at `path` as it is now.
    pub fn of(path: &Path, manifest: Manifest, have: Bitfield) -> std::io::Result<Held> {
        let path = std::path::absolute(path)?;
        let gone = || std::io::Error::new(std::io::ErrorKind::NotFound, "a file of the item is gone or changed size");
        let (length_bytes, modified_ns) = stamp(&path, &manifest).ok_or_else(gone)?;
        Ok(Held { path, manifest, have, length_bytes, modified_ns })
    }

    /// How the item on disk compares with this record.
    pub fn check(&self) -> Found {
        match stamp(&self.path, &self.manifest) {
            Some((length, modified)) if length == self.length_bytes => {
                if modified == self.modified_ns {
                    Found::Unchanged
                } else {
                    Found::Touched
                }
            }
            _ => Found::Gone,
        }
    }

    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let lines = [
            RECORD_HEADER.to_owned(),
            format!("path {}", hex::encode(self.path.as_os_str().as_bytes())),
            format!("length-bytes {}", self.length_bytes),
            format!("modified-ns {}", self.modified_ns),
            format!("have {} {}", self.have.len(), hex::encode(self.have.as_bytes())),
            format!("manifest {}", hex::encode(self.manifest.to_cbor())),
        ];
        let mut text = lines.join("\n");
        text.push('\n');
        text.into_bytes()
    }

    /// Reads a record that must describe `file_id`; `Err` says what is wrong with it.
    pub fn decode(bytes: &[u8], file_id: FileId) -> Result<Held, HeldError> {
        let text = std::str::from_utf8(bytes).map_err(|_| HeldError::NotText)?;
        let mut lines = text.lines();
        if lines.next() != Some(RECORD_HEADER) {
            return Err(HeldError::Header);
        }
        let mut field = |key: &'static str| {
            let line = lines.next().ok_or(HeldError::Missing(key))?;
            line.strip_prefix(key).and_then(|rest| rest.strip_prefix(' ')).ok_or(HeldError::Missing(key))
        };
        let unhex = |value: &str, what| hex::decode(value).map_err(|_| HeldError::Bad(what));
        let path = PathBuf::from(OsString::from_vec(unhex(field("path")?, "path")?));
        let length_bytes = field("length-bytes")?.parse().map_err(|_| HeldError::Bad("length"))?;
        let modified_ns = field("modified-ns")?.parse().map_err(|_| HeldError::Bad("modification time"))?;
        let (count, bits) = field("have")?.split_once(' ').ok_or(HeldError::Bad("have line"))?;
        let count: u32 = count.parse().map_err(|_| HeldError::Bad("piece count"))?;
        let have = Bitfield::from_bytes(count, &unhex(bits, "bitfield")?).ok_or(HeldError::Bad("bitfield size"))?;
        let manifest = Manifest::from_cbor(&unhex(field("manifest")?, "manifest")?)?;
        if manifest.file_id() != file_id {
            return Err(HeldError::OtherFile);
        }
        if have.len() != manifest.chunk_count() || manifest.length_bytes() != length_bytes || !path.is_absolute() {
            return Err(HeldError::Disagrees);
        }
        Ok(Held { path, manifest, have, length_bytes, modified_ns })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hasher::manifest_of;

    #[test]
    fn a_record_reads_back_and_notices_changes_to_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let odd_dir = dir.path().join("a folder\nwith a newline");
        std::fs::create_dir(&odd_dir).expect("mkdir");
        let path = odd_dir.join("file.bin");
        std::fs::write(&path, vec![7u8; 40_000]).expect("write");
        let manifest = manifest_of(&path, Some(16 * 1024)).expect("manifest");
        let mut have = Bitfield::new(manifest.chunk_count());
        have.set(p2p_core::ChunkIndex(1));
        let held = Held::of(&path, manifest.clone(), have).expect("record");
        let read = Held::decode(&held.encode(), manifest.file_id()).expect("decode");
        assert_eq!(read, held);
        assert_eq!(read.check(), Found::Unchanged);
        let other = FileId(p2p_core::Digest([0; 32]));
        assert!(matches!(Held::decode(&held.encode(), other), Err(HeldError::OtherFile)), "another file's id");
        let cut = Held::decode(b"swarm-held 1\npath 00\n", manifest.file_id());
        assert!(matches!(cut, Err(HeldError::Missing("length-bytes"))), "cut short");

        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options().write(true).open(&path).expect("open").set_modified(later).expect("touch");
        assert_eq!(read.check(), Found::Touched);
        std::fs::write(&path, b"shorter").expect("rewrite");
        assert_eq!(read.check(), Found::Gone);
    }
}
