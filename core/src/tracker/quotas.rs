//! What one peer registration and one source IP may make the tracker keep.
//!
//! Every holding (a peer holding a file) costs its file's manifest bytes and one bit per chunk.
//! A peer registration is charged for each of its holdings (its chunks are at most an 8th of
//! its manifest bytes: 32 a piece, at most 4 chunks a piece); a source IP is charged for each
//! distinct file its peers hold (the manifest is kept once) and for the chunks of all their
//! holdings. An announce that would take a new holding past a bound is refused with an
//! `Overloaded` error naming the bound; what is already held stays. Peer ids are chosen by the
//! peers themselves, so a registration (one connection, one address) and its source IP are
//! what the quotas count.
//!
//! Invariant: `by_ip` holds exactly the IPs with at least one holding, and each [`IpUsage`]
//! is the sum of the costs of its peers' holdings (manifests counted once per distinct file).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::limits::{
    TRACKER_CHUNKS_PER_IP_MAX, TRACKER_FILES_PER_IP_MAX, TRACKER_FILES_PER_PEER_MAX, TRACKER_MANIFEST_BYTES_PER_IP_MAX,
    TRACKER_MANIFEST_BYTES_PER_PEER_MAX,
};
use crate::manifest::Manifest;
use crate::wire::ErrorCode;

use super::registry::Refusal;

/// What one holding of a file costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Cost {
    /// The manifest: 32 bytes per piece hash, plus the name and a directory's paths.
    manifest_bytes: u64,
    /// One bit each in the holder's bitfield.
    chunks: u64,
}

impl Cost {
    /// The cost of holding the file `manifest` describes.
    pub(super) fn of(manifest: &Manifest) -> Cost {
        let hash_bytes = 32 * u64::from(manifest.piece_count());
        let text_bytes = manifest.name().len() + manifest.tree_paths_bytes();
        Cost { manifest_bytes: hash_bytes + text_bytes as u64, chunks: u64::from(manifest.chunk_count()) }
    }

    /// Bytes of the manifest: its piece hashes, name and paths.
    pub(super) fn manifest_bytes(self) -> u64 {
        self.manifest_bytes
    }
}

/// What one peer registration holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Usage {
    files: usize,
    manifest_bytes: u64,
}

impl Usage {
    /// Refuses a new holding of cost `cost` past a per-peer bound.
    pub(super) fn check(&self, cost: Cost) -> Result<(), Refusal> {
        if self.files >= TRACKER_FILES_PER_PEER_MAX {
            return Err(over(format!("a peer may hold at most {TRACKER_FILES_PER_PEER_MAX} files")));
        }
        if self.manifest_bytes + cost.manifest_bytes > TRACKER_MANIFEST_BYTES_PER_PEER_MAX {
            return Err(over(format!(
                "a peer's files may have at most {TRACKER_MANIFEST_BYTES_PER_PEER_MAX} manifest bytes"
            )));
        }
        Ok(())
    }

    /// Counts a new holding.
    pub(super) fn add(&mut self, cost: Cost) {
        self.files += 1;
        self.manifest_bytes += cost.manifest_bytes;
    }

    /// Uncounts a holding that goes.
    pub(super) fn remove(&mut self, cost: Cost) {
        self.files -= 1;
        self.manifest_bytes -= cost.manifest_bytes;
    }
}

/// What the peers of one source IP hold together.
#[derive(Debug, Default)]
struct IpUsage {
    /// Holdings per file slot.
    files: BTreeMap<u32, u32>,
    /// Manifest bytes of the distinct files in `files`.
    manifest_bytes: u64,
    /// Chunks of every holding.
    chunks: u64,
}

/// The usage of every source IP with a holding.
#[derive(Debug, Default)]
pub(super) struct Quotas {
    by_ip: BTreeMap<IpAddr, IpUsage>,
}

impl Quotas {
    /// Refuses a new holding of file `file_slot` (`None`: a file not registered yet) by a peer
    /// at `ip` past a per-IP bound.
    pub(super) fn check(&self, ip: IpAddr, file_slot: Option<u32>, cost: Cost) -> Result<(), Refusal> {
        let Some(usage) = self.by_ip.get(&ip) else { return Ok(()) };
        let new_file = file_slot.is_none_or(|slot| !usage.files.contains_key(&slot));
        if new_file && usage.files.len() >= TRACKER_FILES_PER_IP_MAX {
            return Err(over(format!("the peers of one address may hold at most {TRACKER_FILES_PER_IP_MAX} files")));
        }
        if new_file && usage.manifest_bytes + cost.manifest_bytes > TRACKER_MANIFEST_BYTES_PER_IP_MAX {
            let bound = TRACKER_MANIFEST_BYTES_PER_IP_MAX;
            return Err(over(format!("the files of one address's peers may have at most {bound} manifest bytes")));
        }
        if usage.chunks + cost.chunks > TRACKER_CHUNKS_PER_IP_MAX {
            return Err(over(format!(
                "the peers of one address may announce at most {TRACKER_CHUNKS_PER_IP_MAX} chunks"
            )));
        }
        Ok(())
    }

    /// Counts a new holding of file `file_slot` by a peer at `ip`.
    pub(super) fn add(&mut self, ip: IpAddr, file_slot: u32, cost: Cost) {
        let usage = self.by_ip.entry(ip).or_default();
        let holdings = usage.files.entry(file_slot).or_insert(0);
        if *holdings == 0 {
            usage.manifest_bytes += cost.manifest_bytes;
        }
        *holdings += 1;
        usage.chunks += cost.chunks;
    }

    /// Uncounts a holding of file `file_slot` by a peer at `ip`.
    pub(super) fn remove(&mut self, ip: IpAddr, file_slot: u32, cost: Cost) {
        // A holding that goes was counted when it came (the module's invariant).
        let usage = self.by_ip.get_mut(&ip).expect("a holding that goes was counted");
        usage.chunks -= cost.chunks;
        let holdings = usage.files.get_mut(&file_slot).expect("a holding that goes was counted");
        *holdings -= 1;
        if *holdings == 0 {
            usage.files.remove(&file_slot);
            usage.manifest_bytes -= cost.manifest_bytes;
        }
        if usage.files.is_empty() {
            self.by_ip.remove(&ip);
        }
    }

    /// The holdings counted for `ip` (tests check them against the registry).
    #[cfg(test)]
    pub(super) fn holdings(&self, ip: IpAddr) -> u32 {
        self.by_ip.get(&ip).map_or(0, |usage| usage.files.values().sum())
    }
}

fn over(detail: String) -> Refusal {
    Refusal::new(ErrorCode::Overloaded, format!("quota: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_has_room_for_as_many_files_of_a_thousand_pieces_as_it_may_hold() {
        // Four chunks a piece: charged by chunks, the 263rd such file would be refused.
        let pieces = 1000;
        let hashes = vec![crate::Digest([1; 32]); pieces as usize];
        let piece_bytes = 1 << 20;
        let manifest = Manifest::new("f".to_owned(), u64::from(pieces) * u64::from(piece_bytes), piece_bytes, hashes)
            .expect("valid");
        assert_eq!(manifest.chunk_count(), 4 * pieces, "one hash a piece in the manifest");
        let cost = Cost::of(&manifest);
        assert_eq!(cost.manifest_bytes(), 32 * u64::from(pieces) + 1);
        let mut usage = Usage::default();
        for _ in 0..TRACKER_FILES_PER_PEER_MAX {
            assert_eq!(usage.check(cost), Ok(()));
            usage.add(cost);
        }
        assert!(usage.check(cost).is_err(), "past the files a peer may hold");
    }

    #[test]
    fn the_chunks_of_one_address_are_bounded_across_its_holdings() {
        let ip = IpAddr::from([10, 0, 0, 1]);
        let half = Cost { manifest_bytes: 0, chunks: TRACKER_CHUNKS_PER_IP_MAX / 2 };
        let mut quotas = Quotas::default();
        for file_slot in [1, 1] {
            assert_eq!(quotas.check(ip, Some(file_slot), half), Ok(()));
            quotas.add(ip, file_slot, half);
        }
        let one = Cost { manifest_bytes: 0, chunks: 1 };
        assert!(quotas.check(ip, Some(1), one).is_err(), "at the bound, one chunk more is refused");
        assert_eq!(quotas.check(IpAddr::from([10, 0, 0, 2]), Some(1), one), Ok(()));
        quotas.remove(ip, 1, half);
        assert_eq!(quotas.check(ip, Some(1), one), Ok(()), "a holding that goes frees its chunks");
        assert_eq!(quotas.holdings(ip), 1);
    }
}
