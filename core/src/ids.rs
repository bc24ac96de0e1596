//! Identifier newtypes: files, peers, connections, pieces, digests.
//!
//! Ids print as lowercase hex. A `FileId` typed by a user may be a unique prefix of at least
//! [`FILE_ID_PREFIX_MIN_DIGITS`] digits; [`FileIdPrefix`] holds such a prefix until it is
//! resolved against known ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::IdError;

/// Fewest hex digits a user may type to name a file.
pub const FILE_ID_PREFIX_MIN_DIGITS: usize = 8;

/// A SHA-256 digest. Equal and ordered as its bytes are (see the impls below).
#[derive(Clone, Copy)]
pub struct Digest(pub [u8; 32]);

/// The id of a file: SHA-256 of its manifest's canonical CBOR encoding.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileId(pub Digest);

/// The id of a node: on TCP, derived from its public key and proven in every connection's
/// handshake; in the simulator and the test harness, derived from its seed
/// ([`PeerId::from_seed`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub [u8; 16]);

/// The index of a piece within its file, counted from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PieceIndex(pub u32);

/// The index of a chunk within its file, counted from 0: the unit peers exchange, announce and
/// verify (see [`Manifest::chunk_bytes`](crate::manifest::Manifest::chunk_bytes)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChunkIndex(pub u32);

/// A connection, named by the side that created it: the machine names the connections it opens
/// (`Outbound`), the driver names those it accepts (`Inbound`). The two never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConnId {
    /// A connection the machine asked the driver to open.
    Outbound(u64),
    /// A connection the driver accepted from a listener.
    Inbound(u64),
}

/// A hex prefix of a [`FileId`] as typed by a user; see [`FileIdPrefix::resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileIdPrefix(String);

impl Digest {
    /// The bytes as two 128-bit words, for comparisons without a `memcmp` call.
    #[inline]
    fn halves(&self) -> (u128, u128) {
        let (mut high, mut low) = ([0u8; 16], [0u8; 16]);
        high.copy_from_slice(&self.0[..16]);
        low.copy_from_slice(&self.0[16..]);
        (u128::from_ne_bytes(high), u128::from_ne_bytes(low))
    }
}

/// Byte equality as two word comparisons: file ids are compared in the small sorted maps a
/// peer searches per message, and a `memcmp` call per comparison showed in profiles.
impl PartialEq for Digest {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.halves() == other.halves()
    }
}

impl Eq for Digest {}

impl std::hash::Hash for Digest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

/// Byte order, with equal digests (the usual case: a peer mostly has one file) found first.
impl Ord for Digest {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if self == other {
            std::cmp::Ordering::Equal
        } else {
            self.0.cmp(&other.0)
        }
    }
}

impl PartialOrd for Digest {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Digest {
    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(sha2::Sha256::digest(bytes).into())
    }
}

impl FileId {
    /// The first 8 hex digits, for logs and progress lines.
    pub fn short(&self) -> String {
        hex::encode(&self.0 .0[..4])
    }
}

impl PeerId {
    /// A stand-in id for drivers that run no handshake (the simulator, the test harness): the
    /// first 16 bytes of the SHA-256 of the seed's little-endian bytes.
    pub fn from_seed(seed: u64) -> PeerId {
        let digest = Digest::of(&seed.to_le_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest.0[..16]);
        PeerId(id)
    }

    /// The first 8 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl PieceIndex {
    /// The index as a `usize`, for indexing vectors.
    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl ChunkIndex {
    /// The index as a `usize`, for indexing vectors.
    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl FileIdPrefix {
    /// The prefix, as lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The single id among `known` that starts with this prefix.
    pub fn resolve<'a>(&self, known: impl IntoIterator<Item = &'a FileId>) -> Result<FileId, IdError> {
        let mut found = None;
        for id in known {
            if id.to_string().starts_with(&self.0) {
                if found.is_some_and(|f: FileId| f != *id) {
                    return Err(IdError::AmbiguousPrefix(self.0.clone()));
                }
                found = Some(*id);
            }
        }
        found.ok_or_else(|| IdError::UnknownPrefix(self.0.clone()))
    }

    /// The full id, when all 64 digits were typed.
    pub fn as_full(&self) -> Option<FileId> {
        self.0.parse().ok()
    }
}

impl FromStr for FileIdPrefix {
    type Err = IdError;
    fn from_str(text: &str) -> Result<Self, IdError> {
        let lower = text.trim().to_ascii_lowercase();
        if lower.len() < FILE_ID_PREFIX_MIN_DIGITS || lower.len() > 64 {
            return Err(IdError::Length { digits: lower.len() });
        }
        if !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(IdError::NotHex(text.to_owned()));
        }
        Ok(FileIdPrefix(lower))
    }
}

impl FromStr for FileId {
    type Err = IdError;
    fn from_str(text: &str) -> Result<Self, IdError> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(IdError::Length { digits: text.len() });
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| IdError::NotHex(text.to_owned()))?;
        Ok(FileId(Digest(bytes)))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", hex::encode(&self.0[..4]))
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({})", self.short())
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

impl fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for ChunkIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnId::Outbound(n) => write!(f, "out#{n}"),
            ConnId::Inbound(n) => write!(f, "in#{n}"),
        }
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteArray<32> = Deserialize::deserialize(deserializer)?;
        Ok(Digest(bytes.into_array()))
    }
}

impl Serialize for PeerId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteArray<16> = Deserialize::deserialize(deserializer)?;
        Ok(PeerId(bytes.into_array()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_compare_and_order_as_their_bytes() {
        let digests: Vec<Digest> = [[0u8; 32], [255; 32], [7; 32]]
            .into_iter()
            .chain((0..32).flat_map(|at| {
                [1u8, 128, 255].map(|b| {
                    let mut bytes = [7u8; 32];
                    bytes[at] = b;
                    bytes
                })
            }))
            .map(Digest)
            .collect();
        for a in &digests {
            for b in &digests {
                assert_eq!(a.cmp(b), a.0.cmp(&b.0), "{a:?} against {b:?}");
                assert_eq!(a == b, a.0 == b.0, "{a:?} against {b:?}");
            }
        }
    }

    fn id(first: u8) -> FileId {
        let mut bytes = [0u8; 32];
        bytes[0] = first;
        FileId(Digest(bytes))
    }

    #[test]
    fn file_id_round_trips_through_hex() {
        let a = id(0xab);
        assert_eq!(a.to_string().parse::<FileId>().expect("valid hex"), a);
        assert!("xyz".parse::<FileId>().is_err());
    }

    #[test]
    fn prefix_needs_eight_digits_and_resolves_uniquely() {
        assert!(matches!("abcd".parse::<FileIdPrefix>(), Err(IdError::Length { digits: 4 })));
        assert!(matches!("zzzzzzzz".parse::<FileIdPrefix>(), Err(IdError::NotHex(_))));
        let known = [id(0xab), id(0xac)];
        let prefix: FileIdPrefix = "AB000000".parse().expect("valid prefix");
        assert_eq!(prefix.resolve(&known).expect("unique"), id(0xab));
        let both: FileIdPrefix = "00000000".parse().expect("valid prefix");
        assert!(both.resolve(&[id(0), id(0)]).is_ok(), "the same id twice is not ambiguous");
        let none: FileIdPrefix = "ffffffff".parse().expect("valid prefix");
        assert!(matches!(none.resolve(&known), Err(IdError::UnknownPrefix(_))));
    }
}
