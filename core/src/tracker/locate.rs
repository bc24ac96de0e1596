//! The holder choice behind a `Located` answer.
//!
//! Owns one pure function, [`select`]: given a file's holdings and the asker, names live holders so
//! that every chunk has up to [`HOLDERS_PER_PIECE_MAX`] of them, at most
//! [`LOCATED_PEERS_NAMED_MAX`] peers in all (more, up to [`LOCATED_PEERS_MAX`], only where a chunk
//! would otherwise have no named holder), never the asker, in an order drawn from the tracker's
//! seeded RNG so load spreads. Each named peer comes with its whole bitfield: bits, not lists, so
//! an answer costs about one bitfield per named peer whatever the chunk count.
//!
//! A flash crowd asks at once while few peers hold chunks, and each peer admits only so many
//! connections, so the choice spreads the askers: a peer already named to
//! [`LOCATED_NAMINGS_PER_PEER_MAX`](crate::limits::LOCATED_NAMINGS_PER_PEER_MAX) askers in the
//! current naming window is passed over while other holders of the same chunks can be named (a
//! chunk whose every holder was passed over, or that the first walk left uncovered at its peer cap,
//! still gets one, in a second walk), and up to [`LOCATED_NEWCOMERS_MAX`] peers that hold nothing
//! yet but know the manifest are named beside the holders, so newcomers meet each other and have
//! more peers to ask for the manifest. An asker that does not know the manifest yet is named
//! fewer ([`Names::Few`]): it can use a peer only to get the manifest until it has it. The
//! registry counts the namings.
//!
//! Cost: the holdings are walked once in a random cyclic order (random start, random stride
//! coprime with their number), a second time only for chunks left without a holder. Holders
//! still wanted per chunk are kept as a 4-bit saturating counter in bit planes over 64-bit
//! words, started at `8 - quota` so that reaching 8 means "enough": each visited peer costs a
//! few word operations per 64 chunks. The walk stops as soon as every chunk has its quota, the
//! peer cap is hit, or every holding was visited.

use slab::Slab;

use crate::ids::ChunkIndex;
use crate::limits::{
    HOLDERS_PER_PIECE_MAX, LOCATED_NEWCOMERS_MAX, LOCATED_PEERS_MAX, LOCATED_PEERS_NAMED_MAX,
    LOCATED_PEERS_UNANNOUNCED_MAX,
};
use crate::rng::Rng;
use crate::wire::Holders;

use super::registry::{is_empty, FileEntry, PeerEntry};

/// Planes of the per-chunk counter: values 0..=15, of which 8 (`HOLDERS_PER_PIECE_MAX`) means
/// the chunk has enough named holders.
const PLANES: usize = 4;
const _: () = assert!(HOLDERS_PER_PIECE_MAX == 1 << (PLANES - 1));

/// How many peers an answer names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Names {
    /// Enough holders for every chunk, up to [`LOCATED_PEERS_NAMED_MAX`], with up to
    /// [`LOCATED_NEWCOMERS_MAX`] newcomers beside them.
    Full,
    /// Up to [`LOCATED_PEERS_UNANNOUNCED_MAX`] peers, newcomers or holders alike, for an asker
    /// that does not know the manifest yet: it can fetch nothing before one of them sends it,
    /// and meets the rest of the swarm through them.
    Few,
}

/// The holders of a `Located` answer, and the peer slot of each (in the same order).
/// `asker_index` is the asker's holding in `file`, if it holds the file; `window` is the
/// current naming window (see [`PeerEntry::may_be_named`]).
pub(super) fn select(
    file: &FileEntry,
    asker_index: Option<usize>,
    peer_table: &Slab<PeerEntry>,
    window: u64,
    rng: &mut Rng,
    names: Names,
) -> (Holders, Vec<u32>) {
    let named_max = match names {
        Names::Full => LOCATED_PEERS_NAMED_MAX,
        Names::Few => LOCATED_PEERS_UNANNOUNCED_MAX,
    };
    let mut named: Vec<(u32, usize)> = Vec::new();
    let mut counter = Counter::new(file, asker_index);
    let mut uncovered = counter.need.clone();
    let mut passed_over = false;
    let total = file.holding_count();
    let (start, stride) = if total > 0 && !counter.is_satisfied() {
        let stride = coprime_stride(total, rng);
        (rng.below(total), stride)
    } else {
        (0, 1)
    };
    let walk = || (0..total).map(move |i| (start + i * stride) % total);
    let eligible = |holding: usize| {
        Some(holding) != asker_index && peer_table[file.holder(holding) as usize].peer.addr.port() != 0
    };
    if !counter.is_satisfied() {
        // Where one answer could name every peer of the file, the mesh forms through the
        // holders as their first chunks arrive, and a denser one only adds messages.
        let newcomers_max = match names {
            Names::Few => named_max,
            Names::Full if total > LOCATED_PEERS_NAMED_MAX => LOCATED_NEWCOMERS_MAX,
            Names::Full => 0,
        };
        let mut newcomers = 0;
        for holding in walk().filter(|&h| eligible(h)) {
            let (slot, bits) = (file.holder(holding), file.holding_bits(holding));
            if !peer_table[slot as usize].may_be_named(window) {
                passed_over = true;
                continue;
            }
            if counter.add(bits) {
                cover(&mut uncovered, bits);
                named.push((slot, holding));
            } else if newcomers < newcomers_max && is_empty(bits) {
                newcomers += 1;
                named.push((slot, holding));
            }
            if counter.is_satisfied() || named.len() == named_max {
                break;
            }
        }
    }
    // Chunks whose every holder was passed over, or that the first walk left without a holder
    // when it reached its peer cap, get one named anyway, past that cap if need be.
    let capped = named.len() == named_max;
    let second = names == Names::Full || named.is_empty();
    if second && (passed_over || capped) && uncovered.iter().any(|word| *word != 0) {
        for holding in walk().filter(|&h| eligible(h)) {
            let bits = file.holding_bits(holding);
            if cover(&mut uncovered, bits) {
                named.push((file.holder(holding), holding));
                if named.len() == LOCATED_PEERS_MAX || uncovered.iter().all(|word| *word == 0) {
                    break;
                }
            }
        }
    }
    let records = named.iter().map(|&(slot, holding)| (peer_table[slot as usize].peer, file.holding_bits(holding)));
    // The arena holds exactly chunk_count bits per holding, and at most LOCATED_PEERS_MAX are named.
    let holders = Holders::pack(file.manifest.chunk_count(), records);
    (holders, named.into_iter().map(|(slot, _)| slot).collect())
}

/// Clears the chunks of `bits` (packed, most significant bit first) from `uncovered` (64
/// chunks a word, the counter's layout); true when it cleared any.
fn cover(uncovered: &mut [u64], bits: &[u8]) -> bool {
    let mut any = false;
    for (word, chunk) in uncovered.iter_mut().zip(bits.chunks(8)) {
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        let have = u64::from_be_bytes(bytes) & *word;
        any |= have != 0;
        *word &= !have;
    }
    any
}

/// Per chunk, how many more holders it wants, as a saturating bit-plane counter.
struct Counter {
    /// `planes[p][w]`: bit `p` of the counters of the 64 chunks in word `w`.
    planes: [Vec<u64>; PLANES],
    /// Chunks that still want holders.
    need: Vec<u64>,
}

impl Counter {
    /// Counters at `8 - quota`, where a chunk's quota is its holders other than the asker,
    /// capped at 8. A word of 64 chunks that all have more than 8 holders (the common case in a
    /// big swarm) wants 8 of each whoever asks: its counters stay at 0, with no per-chunk work.
    fn new(file: &FileEntry, asker_index: Option<usize>) -> Counter {
        let words = file.counts.len().div_ceil(64);
        let mut planes: [Vec<u64>; PLANES] = std::array::from_fn(|_| vec![0; words]);
        let mut need = vec![0u64; words];
        for (word, counts) in file.counts.chunks(64).enumerate() {
            if counts.iter().copied().min().unwrap_or(0) > HOLDERS_PER_PIECE_MAX as u32 {
                // The word's first `counts.len()` bits, most significant first.
                need[word] = !(u64::MAX.checked_shr(counts.len() as u32).unwrap_or(0));
                continue;
            }
            for (i, &count) in counts.iter().enumerate() {
                let chunk = word * 64 + i;
                // The asker's own bit is in the count but it is never named to itself.
                let own = asker_index.is_some_and(|index| file.holding_has(index, ChunkIndex(chunk as u32)));
                let quota = (count.saturating_sub(u32::from(own)) as usize).min(HOLDERS_PER_PIECE_MAX);
                let start = HOLDERS_PER_PIECE_MAX - quota;
                let bit = 63 - i;
                for (p, plane) in planes.iter_mut().enumerate() {
                    plane[word] |= (((start >> p) & 1) as u64) << bit;
                }
                need[word] |= u64::from(quota > 0) << bit;
            }
        }
        Counter { planes, need }
    }

    /// Counts one holder's chunks; true when it holds a chunk that still wanted holders.
    fn add(&mut self, bits: &[u8]) -> bool {
        let words = bits.chunks_exact(8);
        let tail = words.remainder();
        let mut useful_any = false;
        for (word, chunk) in words.enumerate() {
            // chunks_exact yields 8-byte slices.
            useful_any |= self.add_word(word, u64::from_be_bytes(chunk.try_into().expect("8 bytes")));
        }
        if !tail.is_empty() {
            let mut last = [0u8; 8];
            last[..tail.len()].copy_from_slice(tail);
            useful_any |= self.add_word(bits.len() / 8, u64::from_be_bytes(last));
        }
        useful_any
    }

    /// Adds one to the counters of the chunks set in `have` that still want holders.
    fn add_word(&mut self, word: usize, have: u64) -> bool {
        let mut carry = have & self.need[word];
        if carry == 0 {
            return false;
        }
        for plane in &mut self.planes {
            let sum = plane[word] ^ carry;
            carry &= plane[word];
            plane[word] = sum;
        }
        // Counters only grow where they were below 8, so 8 is reached exactly, never passed.
        self.need[word] &= !self.planes[PLANES - 1][word];
        true
    }

    fn is_satisfied(&self) -> bool {
        self.need.iter().all(|w| *w == 0)
    }
}

/// A random step in `1..total` coprime with `total` (1 when `total` is 1), so that
/// `start + i * stride (mod total)` visits every index once.
fn coprime_stride(total: usize, rng: &mut Rng) -> usize {
    if total <= 2 {
        return 1;
    }
    let mut stride = 1 + rng.below(total - 1);
    while gcd(stride, total) != 1 {
        stride = if stride + 1 == total { 1 } else { stride + 1 };
    }
    stride
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stride_is_coprime_so_the_walk_visits_everyone_once() {
        let mut rng = Rng::from_seed(3);
        for total in 1..200 {
            let stride = coprime_stride(total, &mut rng);
            let mut seen = vec![false; total];
            let mut index = rng.below(total);
            for _ in 0..total {
                assert!(!seen[index]);
                seen[index] = true;
                index = (index + stride) % total;
            }
        }
    }
}
