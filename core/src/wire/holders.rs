//! [`Holders`]: the peers a `Located` answer names, each with the chunks it holds, packed.
//!
//! On the wire a holder list is `[chunk_count, records]`: one CBOR byte string of records, one
//! per named peer — its 16-byte id, a tag byte, its IP (4 bytes for IPv4, 16 for IPv6), its
//! port (2 bytes, big-endian) and what it holds, in the form the tag names:
//! - nothing more, for a peer that holds none of the chunks or all of them;
//! - its bitfield (`chunk_count` bits, most significant first);
//! - a list: a 2-byte count, then that many chunk indices in increasing order, each in one
//!   byte when the file has at most 256 chunks, two up to 65,536 chunks, else three
//!   (big-endian), whichever of list and bitfield is shorter.
//!
//! The tag's low bit is the address family (set: IPv6), its next two bits the form. A flash
//! crowd's answers name seeders, newcomers that hold nothing yet and holders of a few chunks;
//! an IPv4 swarm needs no 16-byte addresses. Every byte of an answer is the tracker's uplink,
//! which a crowd asking at once waits on: at 256 chunks a seeder's or newcomer's record is 23
//! bytes and a holder of three chunks 28, where a bitfield and a mapped address made 66.
//!
//! The tracker builds the records straight from its bit arena, the encoder copies one byte
//! string, and a built list is shared (reference-counted) between the answers that reuse it.
//! Decoding walks the records once: a tag with unknown bits, a record cut short, a list that
//! is empty, out of order or names a chunk past the count, bytes left over or more than
//! [`LOCATED_PEERS_MAX`] records refuse the list; stray bits past `chunk_count` are cleared
//! when a bitfield is read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::bitfield::Bitfield;
use crate::ids::{ChunkIndex, PeerId};
use crate::limits::{CHUNKS_MAX, LOCATED_PEERS_MAX};
use crate::wire::PeerAddr;

/// Bytes of a peer id.
const ID_BYTES: usize = 16;
/// Tag bit: the address is IPv6 (16 bytes), not IPv4 (4 bytes).
const TAG_IPV6: u8 = 0b001;
/// Tag bits saying what the peer holds.
const TAG_CHUNKS: u8 = 0b110;
/// The peer holds none of the chunks.
const TAG_NONE: u8 = 0b000;
/// The peer holds every chunk.
const TAG_ALL: u8 = 0b010;
/// The peer's bitfield follows its address.
const TAG_BITS: u8 = 0b100;
/// The list of the peer's chunks follows its address.
const TAG_LIST: u8 = 0b110;
/// Bytes of a list's count.
const LIST_COUNT_BYTES: usize = 2;
// A chunk index fits in a list's three bytes.
const _: () = assert!(CHUNKS_MAX <= 1 << 24);

/// A bounded list of holders, each a peer and its bitfield over `chunk_count` chunks.
#[derive(Clone, PartialEq, Eq)]
pub struct Holders {
    chunk_count: u32,
    /// Records in `records` (checked on decode, or counted by `pack`).
    count: usize,
    records: Bytes,
}

impl Holders {
    /// Packs `holders` (a peer and its packed bits, `chunk_count.div_ceil(8)` bytes each).
    ///
    /// # Panics
    /// When a bitfield has another length or there are more than [`LOCATED_PEERS_MAX`] holders:
    /// the callers build lists from checked state.
    pub fn pack<'a>(chunk_count: u32, holders: impl ExactSizeIterator<Item = (PeerAddr, &'a [u8])>) -> Holders {
        let count = holders.len();
        assert!(count <= LOCATED_PEERS_MAX, "at most {LOCATED_PEERS_MAX} holders");
        let width = index_bytes(chunk_count);
        let mut records = Vec::new();
        for (peer, bits) in holders {
            // Read as a bitfield, which leaves out stray bits past the count.
            let set = Bitfield::from_bytes(chunk_count, bits).expect("a holder's bits cover the file's chunks");
            let held = set.count() as usize;
            let chunks = if held == 0 {
                TAG_NONE
            } else if held == chunk_count as usize {
                TAG_ALL
            } else if LIST_COUNT_BYTES + held * width < bits.len() {
                TAG_LIST
            } else {
                TAG_BITS
            };
            records.extend_from_slice(&peer.peer_id.0);
            match peer.addr.ip().to_canonical() {
                IpAddr::V4(ip) => {
                    records.push(chunks);
                    records.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    records.push(chunks | TAG_IPV6);
                    records.extend_from_slice(&ip.octets());
                }
            }
            records.extend_from_slice(&peer.addr.port().to_be_bytes());
            if chunks == TAG_BITS {
                records.extend_from_slice(bits);
            } else if chunks == TAG_LIST {
                // A list is chosen only while shorter than the bitfield, so `held` < 2^16.
                records.extend_from_slice(&(held as u16).to_be_bytes());
                for chunk in set.iter() {
                    records.extend_from_slice(&chunk.0.to_be_bytes()[4 - width..]);
                }
            }
        }
        Holders { chunk_count, count, records: Bytes::from(records) }
    }

    /// Number of chunks each bitfield covers.
    pub fn chunk_count(&self) -> u32 {
        self.chunk_count
    }

    /// Number of holders named.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no holder is named.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the records take (what the list costs in memory and on the wire).
    pub fn size_bytes(&self) -> usize {
        self.records.len()
    }

    /// The holders, in the order named, each with its bitfield.
    pub fn iter(&self) -> impl Iterator<Item = (PeerAddr, Bitfield)> + '_ {
        self.records().map(|record| {
            let bits = match record.chunks {
                Chunks::Nothing => Bitfield::new(self.chunk_count),
                Chunks::Every => Bitfield::full(self.chunk_count),
                // The record size was checked on decode, or set by `pack`.
                Chunks::Bits(bits) => {
                    Bitfield::from_bytes(self.chunk_count, bits).expect("record holds the chunk count's bits")
                }
                Chunks::List(indices) => {
                    let mut bits = Bitfield::new(self.chunk_count);
                    for chunk in list_chunks(indices, index_bytes(self.chunk_count)) {
                        bits.set(ChunkIndex(chunk));
                    }
                    bits
                }
            };
            (record.peer, bits)
        })
    }

    /// The holders, in the order named.
    pub fn peers(&self) -> impl Iterator<Item = PeerAddr> + '_ {
        self.records().map(|record| record.peer)
    }

    /// The same list without its records, and the records: the codec writes the head and hands
    /// the records to the writer as they are (see `encode_frame_parts`).
    pub(crate) fn split_records(&self) -> (Holders, Bytes) {
        (Holders { chunk_count: self.chunk_count, count: 0, records: Bytes::new() }, self.records.clone())
    }

    /// The records in order; every record was checked on decode, or written by `pack`.
    fn records(&self) -> impl Iterator<Item = Record<'_>> + '_ {
        let mut rest: &[u8] = &self.records;
        std::iter::from_fn(move || {
            let (record, tail) = read_record(rest, self.chunk_count)?;
            rest = tail;
            Some(record)
        })
    }
}

/// One record as read.
struct Record<'a> {
    peer: PeerAddr,
    chunks: Chunks<'a>,
}

/// What a record says the peer holds.
enum Chunks<'a> {
    Nothing,
    Every,
    Bits(&'a [u8]),
    /// Chunk indices, checked on decode (or written by `pack`): increasing, below the count.
    List(&'a [u8]),
}

/// Reads the record at the front of `bytes` (of a list over `chunk_count` chunks) and returns
/// it with the bytes after it; `None` when `bytes` is empty, cut short, the tag is not known
/// or a list is empty, out of order or names a chunk past the count.
fn read_record(bytes: &[u8], chunk_count: u32) -> Option<(Record<'_>, &[u8])> {
    let (id, rest) = bytes.split_first_chunk::<ID_BYTES>()?;
    let (&tag, rest) = rest.split_first()?;
    let (ip, rest) = if tag & TAG_IPV6 != 0 {
        let (ip, rest) = rest.split_first_chunk::<16>()?;
        (IpAddr::V6(Ipv6Addr::from(*ip)), rest)
    } else {
        let (ip, rest) = rest.split_first_chunk::<4>()?;
        (IpAddr::V4(Ipv4Addr::from(*ip)), rest)
    };
    let (port, rest) = rest.split_first_chunk::<2>()?;
    if tag & !(TAG_IPV6 | TAG_CHUNKS) != 0 {
        return None;
    }
    let (chunks, rest) = match tag & TAG_CHUNKS {
        TAG_NONE => (Chunks::Nothing, rest),
        TAG_ALL => (Chunks::Every, rest),
        TAG_BITS => {
            let (bits, rest) = rest.split_at_checked(Bitfield::bytes_for(chunk_count))?;
            (Chunks::Bits(bits), rest)
        }
        _ => {
            let (count, rest) = rest.split_first_chunk::<LIST_COUNT_BYTES>()?;
            let width = index_bytes(chunk_count);
            let (indices, rest) = rest.split_at_checked(usize::from(u16::from_be_bytes(*count)) * width)?;
            let mut last = None;
            for chunk in list_chunks(indices, width) {
                if chunk >= chunk_count || last.is_some_and(|last| chunk <= last) {
                    return None;
                }
                last = Some(chunk);
            }
            last?;
            (Chunks::List(indices), rest)
        }
    };
    let peer = PeerAddr { peer_id: PeerId(*id), addr: SocketAddr::new(ip.to_canonical(), u16::from_be_bytes(*port)) };
    Some((Record { peer, chunks }, rest))
}

/// Bytes of one chunk index in a list: one while every index fits in a byte.
fn index_bytes(chunk_count: u32) -> usize {
    match chunk_count {
        0..=0x100 => 1,
        0x101..=0x1_0000 => 2,
        _ => 3,
    }
}

/// The indices of a list, `width` bytes each, big-endian.
fn list_chunks(indices: &[u8], width: usize) -> impl Iterator<Item = u32> + '_ {
    indices.chunks_exact(width).map(|index| index.iter().fold(0u32, |value, byte| value << 8 | u32::from(*byte)))
}

impl std::fmt::Debug for Holders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Holders {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (self.chunk_count, serde_bytes::Bytes::new(&self.records)).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Holders {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (chunk_count, records): (u32, serde_bytes::ByteBuf) = Deserialize::deserialize(deserializer)?;
        if chunk_count > CHUNKS_MAX {
            return Err(serde::de::Error::custom("holders' bitfields longer than the chunk limit"));
        }
        let mut rest = records.as_slice();
        let mut count = 0;
        while !rest.is_empty() {
            let Some((_, tail)) = read_record(rest, chunk_count) else {
                return Err(serde::de::Error::custom("a holder record is cut short, malformed or has an unknown tag"));
            };
            count += 1;
            if count > LOCATED_PEERS_MAX {
                return Err(serde::de::Error::custom("more holder records than the holder limit"));
            }
            rest = tail;
        }
        Ok(Holders { chunk_count, count, records: Bytes::from(records.into_vec()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunk_count: u32, records: &[u8]) -> Result<Holders, ciborium::de::Error<std::io::Error>> {
        let mut encoded = Vec::new();
        ciborium::into_writer(&(chunk_count, serde_bytes::Bytes::new(records)), &mut encoded).expect("encodes");
        ciborium::from_reader::<Holders, _>(&encoded[..])
    }

    #[test]
    fn records_round_trip_both_address_families_and_every_kind_of_holding() {
        let v4 = PeerAddr { peer_id: PeerId([1; 16]), addr: SocketAddr::from(([10, 0, 0, 7], 6001)) };
        let v6 = PeerAddr { peer_id: PeerId([2; 16]), addr: "[2001:db8::5]:7000".parse().expect("an address") };
        let mapped = PeerAddr { peer_id: PeerId([3; 16]), addr: "[::ffff:10.0.0.9]:7001".parse().expect("an address") };
        let mut some = Bitfield::new(11);
        some.set(ChunkIndex(10));
        let (all, none) = (Bitfield::full(11), Bitfield::new(11));
        let holders = Holders::pack(
            11,
            [(v4, some.as_bytes()), (v6, all.as_bytes()), (mapped, none.as_bytes()), (v4, all.as_bytes())].into_iter(),
        );
        assert_eq!(holders.len(), 4);
        let unmapped = PeerAddr { addr: SocketAddr::from(([10, 0, 0, 9], 7001)), ..mapped };
        let expected = vec![(v4, some), (v6, all.clone()), (unmapped, none), (v4, all)];
        assert_eq!(holders.iter().collect::<Vec<_>>(), expected);
        // id, tag, address and port each; a bitfield only where the peer holds some chunks.
        assert_eq!(holders.size_bytes(), (16 + 1 + 4 + 2 + 2) + (16 + 1 + 16 + 2) + (16 + 1 + 4 + 2) * 2);
        let mut encoded = Vec::new();
        ciborium::into_writer(&holders, &mut encoded).expect("encodes");
        let decoded: Holders = ciborium::from_reader(&encoded[..]).expect("decodes");
        assert_eq!(decoded, holders);
        assert_eq!(decoded.iter().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn a_holder_of_a_few_chunks_is_listed_in_one_or_two_bytes_a_chunk() {
        let peer = PeerAddr { peer_id: PeerId([1; 16]), addr: SocketAddr::from(([10, 0, 0, 7], 6001)) };
        for (chunk_count, width) in [(256u32, 1usize), (257, 2), (0x1_0000, 2), (0x1_0001, 3), (CHUNKS_MAX, 3)] {
            let mut few = Bitfield::new(chunk_count);
            for chunk in [0, 7, 8, chunk_count - 1] {
                few.set(ChunkIndex(chunk));
            }
            let mut many = Bitfield::full(chunk_count);
            many.unset(ChunkIndex(3));
            let holders = Holders::pack(chunk_count, [(peer, few.as_bytes()), (peer, many.as_bytes())].into_iter());
            let bitfield_bytes = chunk_count.div_ceil(8) as usize;
            assert_eq!(holders.size_bytes(), (23 + 2 + 4 * width) + (23 + bitfield_bytes), "{chunk_count} chunks");
            let mut encoded = Vec::new();
            ciborium::into_writer(&holders, &mut encoded).expect("encodes");
            let decoded: Holders = ciborium::from_reader(&encoded[..]).expect("decodes");
            assert_eq!(decoded.iter().collect::<Vec<_>>(), vec![(peer, few), (peer, many)]);
        }
    }

    #[test]
    fn hostile_records_are_refused() {
        let head = |tag: u8| [[7u8; ID_BYTES].as_slice(), &[tag]].concat();
        let v4_all = [head(TAG_ALL).as_slice(), &[10, 0, 0, 1], &[0x1b, 0x58]].concat();
        assert!(decode(8, &v4_all).is_ok_and(|h| h.len() == 1));
        let cut = |chunks, record: &[u8]| (1..record.len()).all(|end| decode(chunks, &record[..end]).is_err());
        assert!(cut(8, &v4_all), "a record cut anywhere");
        let v6_bits = [head(TAG_BITS | TAG_IPV6).as_slice(), &[0; 16], &[0, 1], &[0xff; 2]].concat();
        assert!(decode(9, &v6_bits).is_ok_and(|h| h.len() == 1));
        assert!(cut(9, &v6_bits), "an IPv6 record or its bitfield cut anywhere");
        assert!(decode(17, &v6_bits).is_err(), "a bitfield shorter than the chunk count");
        assert!(decode(8, &[v4_all.as_slice(), &[0]].concat()).is_err(), "bytes after the last record");
        for tag in [TAG_CHUNKS, TAG_CHUNKS | TAG_IPV6, 0b1000, 0x80] {
            let record = [head(tag).as_slice(), &[10, 0, 0, 1], &[0x1b, 0x58]].concat();
            assert!(decode(8, &record).is_err(), "unknown tag {tag:#b}");
        }
        assert!(decode(8, &v4_all.repeat(LOCATED_PEERS_MAX)).is_ok());
        assert!(decode(8, &v4_all.repeat(LOCATED_PEERS_MAX + 1)).is_err(), "past the holder limit");
        assert!(decode(CHUNKS_MAX + 1, &[]).is_err(), "bitfields past the chunk limit");
        // A list of `count` chunks whose indices are `chunks`.
        let list_of = |count: u8, chunks: &[u8]| {
            [head(TAG_LIST).as_slice(), &[10, 0, 0, 1], &[0x1b, 0x58], &[0, count], chunks].concat()
        };
        let list = |chunks: &[u8]| list_of(u8::try_from(chunks.len()).expect("a short list"), chunks);
        assert!(decode(256, &list(&[1, 5, 255])).is_ok_and(|h| h.len() == 1));
        assert!(cut(256, &list(&[1, 5, 255])), "a list cut anywhere");
        assert!(decode(256, &list(&[])).is_err(), "an empty list");
        assert!(decode(256, &list(&[5, 1])).is_err(), "a list out of order");
        assert!(decode(256, &list(&[5, 5])).is_err(), "a chunk listed twice");
        assert!(decode(200, &list(&[1, 200])).is_err(), "a chunk past the count");
        assert!(decode(300, &list_of(2, &[0, 1, 1, 2])).is_ok(), "two bytes an index past 256 chunks");
        assert!(decode(300, &list_of(2, &[0, 1, 1])).is_err(), "an index cut short");
        assert!(decode(300, &list_of(1, &[1, 44])).is_err(), "a chunk past the count in two bytes");
        let stray = [head(TAG_BITS).as_slice(), &[10, 0, 0, 1], &[0x1b, 0x58], &[0xff]].concat();
        let decoded = decode(3, &stray).expect("decodes");
        assert_eq!(decoded.iter().next().map(|(_, bits)| bits), Some(Bitfield::full(3)), "stray bits are cleared");
    }
}
