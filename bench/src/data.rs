//! Test files: seeded random bytes written once per run into the bench's temp dir, with their
//! SHA-256 so a downloaded copy can be checked byte for byte.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// Bytes generated, written and hashed at a time.
const CHUNK_BYTES: usize = 1 << 20;

/// A generated test file.
#[derive(Clone, Debug)]
pub struct TestFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its length.
    pub size_bytes: u64,
    /// SHA-256 of its bytes.
    pub sha256: [u8; 32],
}

/// Writes `size_bytes` of random bytes from `seed` to `dir/name` and hashes them.
pub fn generate(dir: &Path, name: &str, size_bytes: u64, seed: u64) -> anyhow::Result<TestFile> {
    let path = dir.join(name);
    let mut file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; CHUNK_BYTES];
    let mut left = size_bytes;
    while left > 0 {
        // left > 0 and the chunk is small: the min fits a usize.
        let n = left.min(CHUNK_BYTES as u64) as usize;
        rng.fill_bytes(&mut chunk[..n]);
        hasher.update(&chunk[..n]);
        file.write_all(&chunk[..n]).with_context(|| format!("cannot write {}", path.display()))?;
        left -= n as u64;
    }
    file.sync_all().ok();
    Ok(TestFile { path, size_bytes, sha256: hasher.finalize().into() })
}

/// SHA-256 of the file at `path`.
pub fn sha256_of(path: &Path) -> anyhow::Result<[u8; 32]> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = BufReader::with_capacity(CHUNK_BYTES, file);
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; CHUNK_BYTES];
    loop {
        let n = reader.read(&mut chunk).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&chunk[..n]);
    }
}

/// Reads `path` piece by piece, calling `each` with every piece's bytes in order.
pub fn for_each_piece(path: &Path, piece_bytes: usize, mut each: impl FnMut(&[u8])) -> anyhow::Result<()> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut piece = vec![0u8; piece_bytes];
    loop {
        let mut filled = 0;
        while filled < piece_bytes {
            let n = file.read(&mut piece[filled..]).with_context(|| format!("cannot read {}", path.display()))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(());
        }
        each(&piece[..filled]);
        if filled < piece_bytes {
            return Ok(());
        }
    }
}
