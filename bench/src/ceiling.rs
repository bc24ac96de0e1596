//! The machine's SHA-256 rate, measured in the same run as the transfers: the ceiling a
//! downloader that hashes every byte once cannot beat on one core.

use std::process::Command;
use std::time::Instant;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// The SHA-256 rates of this machine.
#[derive(Clone, Debug)]
pub struct HashCeiling {
    /// Bytes hashed in memory with the `sha2` crate.
    pub sha2_bytes: u64,
    /// `sha2` rate, MB/s (10^6 bytes per second), one core.
    pub sha2_mb_s: f64,
    /// `openssl speed -evp sha256` rate for 16 KiB blocks, MB/s, when openssl ran.
    pub openssl_mb_s: Option<f64>,
}

/// Hashes `size_bytes` of random bytes in memory with sha2, 1 MiB piece by piece, and asks
/// openssl for its figure.
pub fn measure(size_bytes: usize) -> HashCeiling {
    let mut data = vec![0u8; size_bytes];
    ChaCha8Rng::seed_from_u64(7).fill_bytes(&mut data);
    let started = Instant::now();
    let mut sink = 0u8;
    for piece in data.chunks(1 << 20) {
        sink ^= Sha256::digest(piece)[0];
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    HashCeiling {
        sha2_bytes: size_bytes as u64,
        sha2_mb_s: size_bytes as f64 / elapsed_s / 1e6,
        openssl_mb_s: openssl_sha256_mb_s(),
    }
}

/// Runs `openssl speed -evp sha256 -seconds 1` and reads its 16384-byte-block column.
fn openssl_sha256_mb_s() -> Option<f64> {
    let out = Command::new("openssl").args(["speed", "-evp", "sha256", "-seconds", "1"]).output().ok()?;
    parse_openssl(&String::from_utf8_lossy(&out.stdout))
}

/// The last figure of the `sha256` result line (`sha256  1.0k  …  1702000.00k`), in MB/s.
fn parse_openssl(text: &str) -> Option<f64> {
    let line = text.lines().rev().find(|line| line.to_ascii_lowercase().starts_with("sha256"))?;
    let last = line.split_whitespace().last()?;
    let kilobytes_per_s: f64 = last.trim_end_matches('k').parse().ok()?;
    Some(kilobytes_per_s * 1000.0 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_table_is_read_in_megabytes() {
        let text = "type  16 bytes 64 bytes\nsha256  200000.00k  1702000.00k\n";
        let mb_s = parse_openssl(text).expect("a figure");
        assert!((mb_s - 1702.0).abs() < 1e-6);
    }
}
