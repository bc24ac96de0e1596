//! The file list of a manifest that describes a directory tree, and the mapping from the item's
//! bytes to its files.
//!
//! A directory is shared as one item: its bytes are the concatenation of its files in the
//! list's order, cut into pieces like a single file's, so a piece may span several files. The
//! list names every file (empty ones too) and every empty directory by its path below the root,
//! one component at a time. A [`Tree`] that exists has been validated:
//! - every component is one safe name (the rules of a single file's name), so joined under a
//!   download folder no path can leave it;
//! - paths are strictly increasing (component by component, bytewise), which makes the list
//!   canonical and free of duplicates;
//! - no entry lies below a file or below a listed directory (a listed directory is empty);
//! - file sizes add up to the manifest's length, and the counts and path lengths stay within
//!   the bounds of [`crate::limits`].

use serde::{Deserialize, Serialize, Serializer};

use crate::error::ManifestError;
use crate::limits::{TREE_ENTRIES_MAX, TREE_PATHS_TOTAL_BYTES_MAX, TREE_PATH_BYTES_MAX, TREE_PATH_COMPONENTS_MAX};

use super::check_name;

/// One file or empty directory of a shared directory tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Components of the path below the root, outermost first.
    path: Vec<String>,
    /// The file's size; absent for an empty directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    length_bytes: Option<u64>,
}

impl TreeEntry {
    /// A file of `length_bytes` at `path` (components below the root).
    pub fn file(path: Vec<String>, length_bytes: u64) -> TreeEntry {
        TreeEntry { path, length_bytes: Some(length_bytes) }
    }

    /// An empty directory at `path`.
    pub fn empty_dir(path: Vec<String>) -> TreeEntry {
        TreeEntry { path, length_bytes: None }
    }

    /// The path's components below the root, outermost first.
    pub fn path(&self) -> &[String] {
        &self.path
    }

    /// The file's size, or `None` for an empty directory.
    pub fn length_bytes(&self) -> Option<u64> {
        self.length_bytes
    }

    /// Bytes of the path written with `/` between components.
    fn path_bytes(&self) -> usize {
        self.path.iter().map(String::len).sum::<usize>() + self.path.len().saturating_sub(1)
    }
}

/// A run of bytes of the item that lies in one file: `len_bytes` bytes at `offset_bytes` in
/// the file of entry `entry` (entry 0 for a single file's manifest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSpan {
    /// Index of the file in the manifest's tree (0 for a single file).
    pub entry: usize,
    /// Offset of the run within that file.
    pub offset_bytes: u64,
    /// Length of the run, at least 1.
    pub len_bytes: u64,
}

/// A validated file list with the offset of each entry in the item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Tree {
    entries: Vec<TreeEntry>,
    /// Offset in the item of each entry's first byte (directories take no room).
    starts: Vec<u64>,
}

impl Tree {
    /// The list `entries`, checked against every rule and against the item's `length_bytes`.
    pub(super) fn new(entries: Vec<TreeEntry>, length_bytes: u64) -> Result<Tree, ManifestError> {
        let bad = |reason: String| Err(ManifestError::BadTree(reason));
        if entries.len() > TREE_ENTRIES_MAX {
            return bad(format!("{} entries, more than {TREE_ENTRIES_MAX}", entries.len()));
        }
        let mut paths_total_bytes = 0usize;
        let mut starts = Vec::with_capacity(entries.len());
        let mut next_start = 0u64;
        for (index, entry) in entries.iter().enumerate() {
            check_path(entry)?;
            paths_total_bytes += entry.path_bytes() + 1;
            if paths_total_bytes > TREE_PATHS_TOTAL_BYTES_MAX {
                return bad(format!("more than {TREE_PATHS_TOTAL_BYTES_MAX} bytes of paths"));
            }
            if let Some(previous) = index.checked_sub(1).map(|i| &entries[i]) {
                if previous.path >= entry.path {
                    return bad(format!("{} is out of order", entry.path.join("/")));
                }
                if entry.path.starts_with(&previous.path) {
                    return bad(format!("{} lies below a file or an empty directory", entry.path.join("/")));
                }
            }
            starts.push(next_start);
            let length = entry.length_bytes.unwrap_or(0);
            next_start = match next_start.checked_add(length) {
                Some(next) => next,
                None => return bad("file sizes overflow".into()),
            };
        }
        if next_start != length_bytes {
            return bad(format!("file sizes add up to {next_start} bytes, the item has {length_bytes}"));
        }
        Ok(Tree { entries, starts })
    }

    pub(super) fn entries(&self) -> &[TreeEntry] {
        &self.entries
    }

    /// Bytes of path text the list holds.
    pub(super) fn paths_total_bytes(&self) -> usize {
        self.entries.iter().map(|entry| entry.path_bytes() + 1).sum()
    }

    /// The files holding the `len_bytes` bytes at `at` in the item, in order. The range must
    /// lie inside the item.
    pub(super) fn spans(&self, at: u64, len_bytes: u64) -> impl Iterator<Item = FileSpan> + '_ {
        // The last entry starting at or before `at`: a file containing `at` when the range is
        // inside the item (an empty entry starting there would be followed by one starting
        // there too).
        let first = self.starts.partition_point(|start| *start <= at).saturating_sub(1);
        let end = at + len_bytes;
        (first..self.entries.len())
            .map_while(move |entry| {
                let start = self.starts[entry];
                (start < end).then_some(entry)
            })
            .filter_map(move |entry| {
                let start = self.starts[entry];
                let file_end = start + self.entries[entry].length_bytes.unwrap_or(0);
                let (from, to) = (at.max(start), end.min(file_end));
                (from < to).then_some(FileSpan { entry, offset_bytes: from - start, len_bytes: to - from })
            })
    }
}

/// Only the entries are encoded: the offsets follow from them.
impl Serialize for Tree {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.entries.serialize(serializer)
    }
}

/// A path is 1 to [`TREE_PATH_COMPONENTS_MAX`] safe names, [`TREE_PATH_BYTES_MAX`] bytes at most.
fn check_path(entry: &TreeEntry) -> Result<(), ManifestError> {
    let shown = || entry.path.join("/");
    if entry.path.is_empty() || entry.path.len() > TREE_PATH_COMPONENTS_MAX {
        return Err(ManifestError::BadTree(format!(
            "a path of {} components (1 to {TREE_PATH_COMPONENTS_MAX} allowed)",
            entry.path.len()
        )));
    }
    if entry.path_bytes() > TREE_PATH_BYTES_MAX {
        return Err(ManifestError::BadTree(format!("a path longer than {TREE_PATH_BYTES_MAX} bytes")));
    }
    for component in &entry.path {
        check_name(component).map_err(|_| ManifestError::BadTree(format!("unsafe path {:?}", shown())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> Vec<String> {
        text.split('/').map(str::to_owned).collect()
    }

    fn tree(entries: &[(&str, Option<u64>)]) -> Result<Tree, ManifestError> {
        let entries: Vec<TreeEntry> =
            entries.iter().map(|(p, len)| TreeEntry { path: path(p), length_bytes: *len }).collect();
        let total = entries.iter().filter_map(|e| e.length_bytes).sum();
        Tree::new(entries, total)
    }

    #[test]
    fn components_that_could_escape_or_hide_are_refused() {
        for bad in ["..", "a/../b", ".", "a/./b", "", "a//b", "/abs", "a/", "c:x", "a\\b", "new\nline", "a/nul\0"] {
            let refused = tree(&[(bad, Some(1))]);
            assert!(matches!(refused, Err(ManifestError::BadTree(_))), "{bad:?}: {refused:?}");
        }
        let deep = vec!["d".to_owned(); TREE_PATH_COMPONENTS_MAX + 1];
        assert!(Tree::new(vec![TreeEntry::file(deep, 0)], 0).is_err(), "too deep");
        let long = vec!["x".repeat(200); 6];
        assert!(Tree::new(vec![TreeEntry::file(long, 0)], 0).is_err(), "path too long");
        assert!(tree(&[("a/b c/d.txt", Some(3)), ("e", None)]).is_ok());
    }

    #[test]
    fn the_list_is_sorted_unique_and_nothing_lies_below_a_file_or_empty_directory() {
        assert!(tree(&[("a", Some(1)), ("b/c", Some(1)), ("b/d", None)]).is_ok());
        for bad in [
            &[("b", Some(1)), ("a", Some(1))][..],
            &[("a", Some(1)), ("a", Some(1))],
            &[("a", Some(1)), ("a/b", Some(1))],
            &[("a", None), ("a/b", Some(1))],
        ] {
            assert!(matches!(tree(bad), Err(ManifestError::BadTree(_))), "{bad:?}");
        }
    }

    #[test]
    fn sizes_must_add_up_to_the_length() {
        let entries = vec![TreeEntry::file(path("a"), 3), TreeEntry::file(path("b"), 4)];
        assert!(Tree::new(entries.clone(), 7).is_ok());
        assert!(matches!(Tree::new(entries, 8), Err(ManifestError::BadTree(_))));
        let huge = vec![TreeEntry::file(path("a"), u64::MAX), TreeEntry::file(path("b"), 1)];
        assert!(matches!(Tree::new(huge, 0), Err(ManifestError::BadTree(_))), "overflow");
    }

    #[test]
    fn spans_cross_file_boundaries_and_skip_empty_files_and_directories() {
        // Item bytes: a = [0, 5), b empty, c/ empty dir, d = [5, 6), e = [6, 16).
        let t = tree(&[("a", Some(5)), ("b", Some(0)), ("c", None), ("d", Some(1)), ("e", Some(10))]).expect("valid");
        let spans = |at, len| t.spans(at, len).map(|s| (s.entry, s.offset_bytes, s.len_bytes)).collect::<Vec<_>>();
        assert_eq!(spans(0, 16), vec![(0, 0, 5), (3, 0, 1), (4, 0, 10)]);
        assert_eq!(spans(3, 4), vec![(0, 3, 2), (3, 0, 1), (4, 0, 1)]);
        assert_eq!(spans(5, 1), vec![(3, 0, 1)]);
        assert_eq!(spans(6, 3), vec![(4, 0, 3)]);
        assert_eq!(spans(15, 1), vec![(4, 9, 1)]);
        assert_eq!(spans(4, 0), vec![]);
        let covered: u64 = (0..16).map(|at| t.spans(at, 1).map(|s| s.len_bytes).sum::<u64>()).sum();
        assert_eq!(covered, 16, "every byte lies in exactly one file");
    }
}
