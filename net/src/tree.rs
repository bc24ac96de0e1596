//! Directory trees on disk: describing a directory as one item, and laying a downloaded item
//! out as its tree.
//!
//! A shared directory's item is the concatenation of its regular files in the manifest's order
//! (see `p2p_core::TreeEntry`); its empty files and empty directories are listed too. Only
//! regular files and directories are shared: a symbolic link or a special file in the tree is
//! an error naming it, so a share never follows a link out of the directory.
//!
//! A download of a directory is kept as one `.part` like a file's; when it is complete,
//! [`place`] copies it into a fresh hidden staging directory in the output directory, file by
//! file, syncs every file, and renames the staging directory to a free name (`name`, `name.1`,
//! ...) without ever replacing anything. Every path written is the output directory joined
//! with the manifest's components, each a safe name (checked when the manifest was built or
//! decoded), so nothing lands outside it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use p2p_core::limits::{TREE_ENTRIES_MAX, TREE_PATH_COMPONENTS_MAX};
use p2p_core::{auto_piece_size, Bitfield, Described, Manifest, ManifestBuilder, ManifestError, StoreError, TreeEntry};

use crate::error::{store_io, NetError};
use crate::hasher::feed_file;
use crate::store::{final_names, verify_pieces};

/// The entries of the directory `root` in manifest order: its regular files (with their sizes)
/// and its empty directories, below the root.
pub fn walk(root: &Path) -> Result<Vec<TreeEntry>, NetError> {
    let mut entries = Vec::new();
    walk_into(root, &mut Vec::new(), &mut entries)?;
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    Ok(entries)
}

fn walk_into(dir: &Path, below: &mut Vec<String>, entries: &mut Vec<TreeEntry>) -> Result<(), NetError> {
    let listing = fs::read_dir(dir).map_err(NetError::io("list", dir))?;
    let mut empty = true;
    for child in listing {
        let child = child.map_err(NetError::io("list", dir))?;
        empty = false;
        let path = child.path();
        let Some(name) = child.file_name().to_str().map(str::to_owned) else {
            return Err(unshareable(&path, "a name that is not UTF-8"));
        };
        if entries.len() >= TREE_ENTRIES_MAX {
            return Err(unshareable(dir, &format!("more than {TREE_ENTRIES_MAX} files and empty directories")));
        }
        if below.len() >= TREE_PATH_COMPONENTS_MAX {
            return Err(unshareable(&path, &format!("deeper than {TREE_PATH_COMPONENTS_MAX} levels")));
        }
        let kind = child.file_type().map_err(NetError::io("inspect", &path))?;
        below.push(name);
        if kind.is_dir() {
            walk_into(&path, below, entries)?;
        } else if kind.is_file() {
            let length = child.metadata().map_err(NetError::io("inspect", &path))?.len();
            entries.push(TreeEntry::file(below.clone(), length));
        } else {
            return Err(unshareable(&path, "a symbolic link or special file (only files and directories are shared)"));
        }
        below.pop();
    }
    if empty && !below.is_empty() {
        entries.push(TreeEntry::empty_dir(below.clone()));
    }
    Ok(())
}

fn unshareable(path: &Path, why: &str) -> NetError {
    let error = io::Error::new(io::ErrorKind::InvalidInput, why.to_owned());
    NetError::Io { action: "share", path: path.to_owned(), error }
}

/// The manifest of the directory `root` as one item (see the module docs), with its chunks' digests.
pub fn describe_tree(root: &Path, piece_size_bytes: Option<u32>) -> Result<Described, NetError> {
    let entries = walk(root)?;
    // `.`, `..` or a trailing slash have no last component: name the directory itself.
    let absolute = fs::canonicalize(root).map_err(NetError::io("inspect", root))?;
    let name = absolute.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let length: u64 = entries.iter().filter_map(TreeEntry::length_bytes).sum();
    let piece_size = piece_size_bytes.unwrap_or_else(|| auto_piece_size(length));
    let to_manifest_error = |error| NetError::Manifest { path: root.to_owned(), error };
    let mut builder = ManifestBuilder::new_tree(name, entries.clone(), piece_size).map_err(to_manifest_error)?;
    for entry in &entries {
        let Some(listed) = entry.length_bytes() else { continue };
        let path = join(root, entry);
        let mut file = File::open(&path).map_err(NetError::io("open", &path))?;
        let fed = feed_file(&mut builder, &mut file, &path)?;
        if fed != listed {
            let changed = ManifestError::BadTree(format!("{} changed size while being read", path.display()));
            return Err(to_manifest_error(changed));
        }
    }
    builder.describe().map_err(to_manifest_error)
}

/// Where `entry` of a tree rooted at `root` is.
pub fn join(root: &Path, entry: &TreeEntry) -> PathBuf {
    entry.path().iter().fold(root.to_owned(), |path, component| path.join(component))
}

/// Moves the complete download `part` of the directory `manifest` describes to a free name in
/// `out` (`name`, `name.1`, ...) and returns it. A name already holding exactly this tree is
/// reused; nothing existing is ever replaced.
pub fn place(part: &Path, out: &Path, manifest: &Manifest) -> Result<PathBuf, StoreError> {
    let staging = out.join(format!(".{}.p2p-staging", manifest.file_id()));
    // Left by a run that stopped while laying the tree out: the `.part` is still whole.
    match fs::remove_dir_all(&staging) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(store_io("remove", &staging)(e)),
        _ => {}
    }
    lay_out(part, &staging, manifest)?;
    for name in final_names(manifest) {
        let target = out.join(name);
        let renamed = rustix::fs::renameat_with(
            rustix::fs::CWD,
            &staging,
            rustix::fs::CWD,
            &target,
            rustix::fs::RenameFlags::NOREPLACE,
        );
        match renamed.map_err(io::Error::from) {
            Ok(()) => {
                fs::remove_file(part).map_err(store_io("remove", part))?;
                return Ok(target);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if holds_tree(&target, manifest) {
                    fs::remove_dir_all(&staging).map_err(store_io("remove", &staging))?;
                    fs::remove_file(part).map_err(store_io("remove", part))?;
                    return Ok(target);
                }
            }
            Err(e) => return Err(store_io("move the finished directory to", target)(e)),
        }
    }
    let source = io::Error::new(io::ErrorKind::AlreadyExists, "every candidate name is taken");
    Err(store_io("find a free name in", out)(source))
}

/// Creates the tree of `manifest` in the new directory `root`, its files' bytes read in order
/// from the item `part`, every file synced.
fn lay_out(part: &Path, root: &Path, manifest: &Manifest) -> Result<(), StoreError> {
    fs::create_dir(root).map_err(store_io("create", root))?;
    let mut item = File::open(part).map_err(store_io("open", part))?;
    for entry in manifest.tree().unwrap_or_default() {
        let path = join(root, entry);
        let Some(length) = entry.length_bytes() else {
            fs::create_dir_all(&path).map_err(store_io("create", &path))?;
            continue;
        };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(store_io("create", parent))?;
        }
        let mut file =
            OpenOptions::new().write(true).create_new(true).open(&path).map_err(store_io("create", &path))?;
        let copied = io::copy(&mut (&mut item).take(length), &mut file).map_err(store_io("write", &path))?;
        if copied != length {
            let short = io::Error::new(io::ErrorKind::UnexpectedEof, "the downloaded item is shorter than its tree");
            return Err(store_io("read", part)(short));
        }
        file.sync_all().map_err(store_io("sync", &path))?;
    }
    Ok(())
}

/// Whether the directory `root` holds exactly the tree of `manifest`: the same entries, and
/// every piece matching its hash.
pub(crate) fn holds_tree(root: &Path, manifest: &Manifest) -> bool {
    let same_entries = walk(root).is_ok_and(|entries| Some(&entries[..]) == manifest.tree());
    let every_chunk = Bitfield::full(manifest.chunk_count());
    same_entries
        && crate::item::ItemFiles::open(root, manifest)
            .is_ok_and(|files| verify_pieces(&files, manifest, &every_chunk).is_ok_and(|good| good.is_full()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_lists_files_and_empty_directories_in_manifest_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("top");
        fs::create_dir_all(root.join("a/empty")).expect("mkdir");
        fs::create_dir_all(root.join("b")).expect("mkdir");
        fs::write(root.join("a.txt"), b"12345").expect("write");
        fs::write(root.join("a/z"), b"").expect("write");
        fs::write(root.join("b/c"), b"xy").expect("write");
        let listed: Vec<(String, Option<u64>)> =
            walk(&root).expect("walk").iter().map(|e| (e.path().join("/"), e.length_bytes())).collect();
        let expected = [("a/empty", None), ("a/z", Some(0)), ("a.txt", Some(5)), ("b/c", Some(2))];
        assert_eq!(listed, expected.map(|(p, len)| (p.to_owned(), len)));
        let manifest = describe_tree(&root.join("b/.."), None).expect("manifest").manifest;
        assert_eq!((manifest.name(), manifest.length_bytes()), ("top", 7), "named after the directory itself");
    }

    #[test]
    fn a_symbolic_link_in_the_tree_is_refused_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("top");
        fs::create_dir_all(&root).expect("mkdir");
        std::os::unix::fs::symlink("/etc", root.join("escape")).expect("symlink");
        let error = walk(&root).expect_err("a link is not shared").to_string();
        assert!(error.contains("escape") && error.contains("symbolic link"), "{error}");
    }
}
