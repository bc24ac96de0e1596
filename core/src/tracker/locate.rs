//! The holder choice behind a `Located` answer.
//!
//! Owns one pure function, [`select`]: given a file's holdings and the asker, pick per piece up
//! to [`HOLDERS_PER_PIECE_MAX`] live holders, naming at most [`LOCATED_PEERS_MAX`] distinct
//! peers, never the asker, in an order drawn from the tracker's seeded RNG so load spreads.
//!
//! Cost: the holdings are walked once in a random cyclic order (random start, random stride
//! coprime with their number), and each visited peer costs one AND of its bitfield with the
//! mask of pieces still short of holders. The walk stops as soon as every piece has its quota
//! (the quota is known up front from the per-piece counts), the peer cap is hit, or every
//! holding was visited. Nothing is allocated per holding.

use crate::limits::{HOLDERS_PER_PIECE_MAX, LOCATED_PEERS_MAX};
use crate::rng::Rng;
use crate::wire::PeerAddr;

use super::registry::FileEntry;
use crate::ids::ConnId;

/// `(peers, holders)` of a `Located` answer: `holders[piece]` lists indices into `peers`.
pub(super) fn select(file: &FileEntry, asker: ConnId, rng: &mut Rng) -> (Vec<PeerAddr>, Vec<Vec<u16>>) {
    let mut holders: Vec<Vec<u16>> = vec![Vec::new(); file.counts.len()];
    let mut peers = Vec::new();
    let asker_have = file.positions.get(&asker).map(|&index| &file.holdings[index].have);
    let mut quota: Vec<u8> = file
        .counts
        .iter()
        .enumerate()
        .map(|(piece, &count)| {
            // The asker's own bit is in the count but it is never named to itself.
            let own = asker_have.is_some_and(|have| have.has(crate::ids::PieceIndex(piece as u32)));
            let others = count.saturating_sub(u32::from(own)) as usize;
            // At most HOLDERS_PER_PIECE_MAX (8), so it fits a u8.
            others.min(HOLDERS_PER_PIECE_MAX) as u8
        })
        .collect();
    let mut need = need_mask(&quota);
    let mut short_pieces = quota.iter().filter(|&&q| q > 0).count();
    let total = file.holdings.len();
    if short_pieces == 0 || total == 0 {
        return (peers, holders);
    }
    let stride = coprime_stride(total, rng);
    let mut index = rng.below(total);
    for _ in 0..total {
        let holding = &file.holdings[index];
        index = (index + stride) % total;
        if holding.conn == asker || holding.peer.addr.port() == 0 {
            continue;
        }
        // At most LOCATED_PEERS_MAX (64) peers, so every index fits a u16.
        let peer_index = peers.len() as u16;
        let mut named = false;
        for (byte_index, (&have_byte, need_byte)) in holding.have.as_bytes().iter().zip(need.iter_mut()).enumerate() {
            let mut useful = have_byte & *need_byte;
            while useful != 0 {
                let bit = useful.leading_zeros() as usize;
                useful &= !(0x80u8 >> bit);
                let piece = byte_index * 8 + bit;
                holders[piece].push(peer_index);
                quota[piece] -= 1;
                if quota[piece] == 0 {
                    *need_byte &= !(0x80u8 >> bit);
                    short_pieces -= 1;
                }
                named = true;
            }
        }
        if named {
            peers.push(holding.peer);
            if short_pieces == 0 || peers.len() == LOCATED_PEERS_MAX {
                break;
            }
        }
    }
    (peers, holders)
}

/// A bit per piece (most significant bit first, as in `Bitfield`): set while the piece still
/// wants holders.
fn need_mask(quota: &[u8]) -> Vec<u8> {
    let mut mask = vec![0u8; quota.len().div_ceil(8)];
    for (piece, &q) in quota.iter().enumerate() {
        if q > 0 {
            mask[piece / 8] |= 0x80 >> (piece % 8);
        }
    }
    mask
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
