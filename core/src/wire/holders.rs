//! [`Holders`]: the peers a `Located` answer names, each with the pieces it holds, packed.
//!
//! On the wire a holder list is `[piece_count, records]`: one CBOR byte string of fixed-size
//! records, one per named peer — its 16-byte id, its IP as 16 bytes (IPv4 as an IPv4-mapped
//! IPv6 address), its port (2 bytes, big-endian) and its bitfield (`piece_count` bits, most
//! significant first). The tracker builds the records straight from its bit arena, the encoder
//! copies one byte string, and a built list is shared (reference-counted) between the answers
//! that reuse it. Decoding checks the record size and the count against
//! [`LOCATED_PEERS_MAX`]; stray bits past `piece_count` are cleared when a bitfield is read.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::bitfield::Bitfield;
use crate::ids::PeerId;
use crate::limits::{LOCATED_PEERS_MAX, PIECES_MAX};
use crate::wire::PeerAddr;

/// Bytes of a record before its bitfield: peer id, IPv6 address, port.
const ADDR_RECORD_BYTES: usize = 16 + 16 + 2;

/// A bounded list of holders, each a peer and its bitfield over `piece_count` pieces.
#[derive(Clone, PartialEq, Eq)]
pub struct Holders {
    piece_count: u32,
    records: Bytes,
}

impl Holders {
    /// Packs `holders` (a peer and its packed bits, `piece_count.div_ceil(8)` bytes each).
    ///
    /// # Panics
    /// When a bitfield has another length or there are more than [`LOCATED_PEERS_MAX`] holders:
    /// the callers build lists from checked state.
    pub fn pack<'a>(piece_count: u32, holders: impl ExactSizeIterator<Item = (PeerAddr, &'a [u8])>) -> Holders {
        assert!(holders.len() <= LOCATED_PEERS_MAX, "at most {LOCATED_PEERS_MAX} holders");
        let stride = bits_bytes(piece_count);
        let mut records = Vec::with_capacity(holders.len() * (ADDR_RECORD_BYTES + stride));
        for (peer, bits) in holders {
            assert_eq!(bits.len(), stride, "a holder's bits cover the file's pieces");
            records.extend_from_slice(&peer.peer_id.0);
            let ip = match peer.addr.ip() {
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                IpAddr::V6(ip) => ip,
            };
            records.extend_from_slice(&ip.octets());
            records.extend_from_slice(&peer.addr.port().to_be_bytes());
            records.extend_from_slice(bits);
        }
        Holders { piece_count, records: Bytes::from(records) }
    }

    /// Number of pieces each bitfield covers.
    pub fn piece_count(&self) -> u32 {
        self.piece_count
    }

    /// Number of holders named.
    pub fn len(&self) -> usize {
        self.records.len() / self.record_bytes()
    }

    /// True when no holder is named.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes the records take (what the list costs in memory and on the wire).
    pub fn size_bytes(&self) -> usize {
        self.records.len()
    }

    /// The holders, in the order named, each with its bitfield.
    pub fn iter(&self) -> impl Iterator<Item = (PeerAddr, Bitfield)> + '_ {
        self.records.chunks_exact(self.record_bytes()).map(|record| {
            let (addr, bits) = record.split_at(ADDR_RECORD_BYTES);
            // The record size was checked on decode, or set by `pack`.
            let bits = Bitfield::from_bytes(self.piece_count, bits).expect("record holds the piece count's bits");
            (peer_of(addr), bits)
        })
    }

    /// The holders, in the order named.
    pub fn peers(&self) -> impl Iterator<Item = PeerAddr> + '_ {
        self.records.chunks_exact(self.record_bytes()).map(|record| peer_of(&record[..ADDR_RECORD_BYTES]))
    }

    /// The same list without its records, and the records: the codec writes the head and hands
    /// the records to the writer as they are (see `encode_frame_parts`).
    pub(crate) fn split_records(&self) -> (Holders, Bytes) {
        (Holders { piece_count: self.piece_count, records: Bytes::new() }, self.records.clone())
    }

    fn record_bytes(&self) -> usize {
        ADDR_RECORD_BYTES + bits_bytes(self.piece_count)
    }
}

fn bits_bytes(piece_count: u32) -> usize {
    (piece_count as usize).div_ceil(8)
}

/// The peer of a record's first [`ADDR_RECORD_BYTES`] bytes.
fn peer_of(addr: &[u8]) -> PeerAddr {
    let mut id = [0u8; 16];
    id.copy_from_slice(&addr[..16]);
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&addr[16..32]);
    let port = u16::from_be_bytes([addr[32], addr[33]]);
    let ip = Ipv6Addr::from(ip).to_canonical();
    PeerAddr { peer_id: PeerId(id), addr: SocketAddr::new(ip, port) }
}

impl std::fmt::Debug for Holders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Holders {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (self.piece_count, serde_bytes::Bytes::new(&self.records)).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Holders {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (piece_count, records): (u32, serde_bytes::ByteBuf) = Deserialize::deserialize(deserializer)?;
        if piece_count > PIECES_MAX {
            return Err(serde::de::Error::custom("holders' bitfields longer than the piece limit"));
        }
        let holders = Holders { piece_count, records: Bytes::from(records.into_vec()) };
        if !holders.records.len().is_multiple_of(holders.record_bytes()) || holders.len() > LOCATED_PEERS_MAX {
            return Err(serde::de::Error::custom("holder records do not fit the piece count or the holder limit"));
        }
        Ok(holders)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PieceIndex;

    #[test]
    fn records_round_trip_both_address_families() {
        let v4 = PeerAddr { peer_id: PeerId([1; 16]), addr: SocketAddr::from(([10, 0, 0, 7], 6001)) };
        let v6 = PeerAddr { peer_id: PeerId([2; 16]), addr: "[2001:db8::5]:7000".parse().expect("an address") };
        let mut a = Bitfield::new(11);
        a.set(PieceIndex(10));
        let b = Bitfield::full(11);
        let holders = Holders::pack(11, [(v4, a.as_bytes()), (v6, b.as_bytes())].into_iter());
        assert_eq!(holders.len(), 2);
        assert_eq!(holders.iter().collect::<Vec<_>>(), vec![(v4, a), (v6, b)]);
        let mut encoded = Vec::new();
        ciborium::into_writer(&holders, &mut encoded).expect("encodes");
        let decoded: Holders = ciborium::from_reader(&encoded[..]).expect("decodes");
        assert_eq!(decoded, holders);
    }

    #[test]
    fn records_of_the_wrong_size_are_refused() {
        let mut encoded = Vec::new();
        ciborium::into_writer(&(8u32, serde_bytes::Bytes::new(&[0u8; ADDR_RECORD_BYTES + 2])), &mut encoded)
            .expect("encodes");
        assert!(ciborium::from_reader::<Holders, _>(&encoded[..]).is_err());
        let mut stray = Vec::new();
        let record = [[0u8; ADDR_RECORD_BYTES].as_slice(), &[0xff]].concat();
        ciborium::into_writer(&(3u32, serde_bytes::Bytes::new(&record)), &mut stray).expect("encodes");
        let decoded: Holders = ciborium::from_reader(&stray[..]).expect("decodes");
        assert_eq!(decoded.iter().next().map(|(_, bits)| bits), Some(Bitfield::full(3)), "stray bits are cleared");
    }
}
