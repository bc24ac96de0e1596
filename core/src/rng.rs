//! The seeded random number generator each machine owns.
//!
//! Every random choice in the core (peer ids, tie-breaks, holder shuffles) comes from here, so a
//! machine built with the same seed and fed the same inputs makes the same choices.

use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha12Rng;
use sha2::{Digest as _, Sha256};

/// A seeded, portable RNG (ChaCha12: the same stream on every platform).
#[derive(Clone, Debug)]
pub struct Rng(ChaCha12Rng);

impl Rng {
    /// An RNG whose whole stream is fixed by `seed`.
    pub fn from_seed(seed: u64) -> Rng {
        Rng(ChaCha12Rng::seed_from_u64(seed))
    }

    /// A sub-seed derived from `(seed, label)`: adding a labelled consumer never shifts the
    /// streams of the others.
    pub fn derive_seed(seed: u64, label: &str) -> u64 {
        let digest = Sha256::new().chain_update(seed.to_be_bytes()).chain_update(label.as_bytes()).finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }

    /// A uniformly random `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.0.gen()
    }

    /// A uniformly random index below `len` (`len` must be non-zero).
    pub fn below(&mut self, len: usize) -> usize {
        assert!(len > 0, "Rng::below needs a non-empty range");
        self.0.gen_range(0..len)
    }

    /// True with probability `p` (clamped to 0..=1).
    pub fn chance(&mut self, p: f64) -> bool {
        self.0.gen_bool(p.clamp(0.0, 1.0))
    }

    /// Fills `bytes` with random bytes.
    pub fn fill(&mut self, bytes: &mut [u8]) {
        self.0.fill(bytes);
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_labels_separate_streams() {
        let (mut a, mut b) = (Rng::from_seed(7), Rng::from_seed(7));
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(Rng::derive_seed(7, "peer-a"), Rng::derive_seed(7, "peer-b"));
        assert_eq!(Rng::derive_seed(7, "peer-a"), Rng::derive_seed(7, "peer-a"));
    }
}
