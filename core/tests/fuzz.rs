//! Fuzz targets for the two decoders that read bytes a remote chose: the frame decoder (every
//! connection) and the manifest decoder (a `Located` or `Manifest` answer).
//!
//! They run on the stable toolchain as property tests: each case starts from valid encodings
//! (a corpus of every message kind, and a manifest) and damages them the way a fuzzer does (flip,
//! insert, cut, splice, rewrite a length prefix), so most cases reach deep into the decoders
//! instead of failing at the first byte. `PROPTEST_CASES` sets the number of cases: the default
//! in `cargo test`, many more in `.ci/run`.
//!
//! Beyond "never panics", each target checks what the peer relies on:
//! - the frame decoder yields the same messages however the bytes are split into reads, and
//!   every message it yields encodes and decodes back to itself;
//! - whatever the manifest decoder accepts is a valid manifest whose canonical encoding decodes
//!   to the same manifest and file id.

use bytes::{Bytes, BytesMut};
use p2p_core::wire::decode_frame;
use p2p_core::wire::{encode_frame, ErrorCode, FrameDecoder, Hello, Holders, Message, PeerAddr, RejectReason, Role};
use p2p_core::{Bitfield, ChunkIndex, DecodeError, Digest, FileId, Manifest, PeerId, PieceIndex};
use proptest::prelude::*;
use proptest::sample::Index;

/// How a case damages its input.
#[derive(Clone, Debug)]
enum Mutation {
    /// XOR a byte.
    Flip(Index, u8),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Remove a stretch.
    Remove(Index, Index),
    /// Overwrite four bytes with a big-endian length (a frame prefix, say).
    Length(Index, u32),
    /// Cut everything after a point.
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 1u8..).prop_map(|(at, x)| Mutation::Flip(at, x)),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, b)| Mutation::Insert(at, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(at, len)| Mutation::Remove(at, len)),
        1 => (any::<Index>(), prop_oneof![0u32..64, any::<u32>()]).prop_map(|(at, len)| Mutation::Length(at, len)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Flip(at, x) if len > 0 => bytes[at.index(len)] ^= x,
            Mutation::Insert(at, more) => {
                let at = at.index(len + 1);
                bytes.splice(at..at, more.iter().copied());
            }
            Mutation::Remove(at, n) if len > 0 => {
                let at = at.index(len);
                let end = at + n.index(len - at + 1);
                bytes.drain(at..end);
            }
            Mutation::Length(at, value) if len >= 4 => {
                let at = at.index(len - 3);
                bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
            }
            Mutation::Truncate(at) => bytes.truncate(at.index(len + 1)),
            _ => {}
        }
    }
}

fn manifest(hash_seed: u8) -> Manifest {
    let hashes = (0..3).map(|i| Digest([hash_seed.wrapping_add(i); 32])).collect();
    Manifest::new("fuzz.bin".to_owned(), 40_000, 16 * 1024, hashes).expect("a valid manifest")
}

/// One valid message of every kind a remote may send.
fn corpus() -> Vec<Message> {
    let file_id = FileId(Digest([3; 32]));
    let peer = PeerAddr { peer_id: PeerId([5; 16]), addr: "127.0.0.1:7001".parse().expect("an address") };
    let mut have = Bitfield::new(11);
    have.set(ChunkIndex(2));
    have.set(ChunkIndex(10));
    let holders = Holders::pack(3, [(peer, &[0b101u8][..])].into_iter());
    vec![
        Message::Hello(Hello::new(Role::Peer, PeerId([9; 16]), 7)),
        Message::Announce { file_id, manifest: Some(Box::new(manifest(1))), have: have.clone() },
        Message::Have { file_id, chunk: ChunkIndex(4) },
        Message::Haves { file_id, chunks: vec![ChunkIndex(1), ChunkIndex(3)] },
        Message::Locate { file_id, with_manifest: true },
        Message::Located { file_id, manifest: Some(Box::new(manifest(2))), holders },
        Message::Bitfield { file_id, have },
        Message::Request { file_id, chunk: ChunkIndex(1), offset: 16_384, len: 16_384 },
        Message::Requests { file_id, blocks: vec![(ChunkIndex(1), 0, 16_384), (ChunkIndex(2), 16_384, 16_384)] },
        Message::Data { file_id, chunk: ChunkIndex(1), offset: 0, bytes: Bytes::from(vec![0xAB; 300]) },
        Message::Chunks { file_id, piece: PieceIndex(1), digests: vec![Digest([3; 32]), Digest([4; 32])] },
        Message::Reject { file_id, chunk: ChunkIndex(1), offset: 0, reason: RejectReason::Busy },
        Message::Cancel { file_id, chunk: ChunkIndex(1), offset: 0 },
        Message::GetManifest { file_id },
        Message::Manifest { manifest: Box::new(manifest(3)) },
        Message::Peers { file_id, peers: vec![peer] },
        Message::Leave { file_id: Some(file_id) },
        Message::error(Some(file_id), ErrorCode::UnknownFile, "no such file".to_owned()),
    ]
}

/// What a decoder yields from a stream fed in reads of `chunk` bytes (all at once for 0):
/// every message up to the first error or the end, and the error if one ended it.
fn decode_stream(bytes: &[u8], chunk: usize) -> (Vec<Message>, Option<DecodeError>) {
    let mut decoder = FrameDecoder::new();
    let mut messages = Vec::new();
    let chunk = if chunk == 0 { bytes.len().max(1) } else { chunk };
    for read in bytes.chunks(chunk) {
        // Both ways of making room, by the parity of the read size: whole frames ahead of
        // their bytes, or room that follows the bytes.
        decoder.reserve(read.len(), chunk % 2 == 1);
        decoder.extend(read);
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(error) => return (messages, Some(error)),
            }
        }
    }
    (messages, None)
}

proptest! {
    #[test]
    fn the_frame_decoder_reads_damaged_streams_the_same_however_they_are_split(
        picks in proptest::collection::vec(any::<Index>(), 1..6),
        mutations in proptest::collection::vec(mutation(), 0..6),
        chunk in 1usize..80,
    ) {
        let corpus = corpus();
        let mut frames = BytesMut::new();
        for pick in &picks {
            encode_frame(pick.get(&corpus), &mut frames).expect("corpus messages fit a frame");
        }
        let mut bytes = frames.to_vec();
        mutate(&mut bytes, &mutations);

        let whole = decode_stream(&bytes, 0);
        let split = decode_stream(&bytes, chunk);
        prop_assert_eq!(&whole.0, &split.0, "the messages do not depend on how the bytes arrive");
        prop_assert_eq!(whole.1.is_some(), split.1.is_some(), "nor does an error");
        for message in whole.0 {
            let mut again = BytesMut::new();
            encode_frame(&message, &mut again).expect("a decoded message fits a frame");
            prop_assert_eq!(decode_frame(&mut again), Ok(Some(message)));
        }
    }

    #[test]
    fn the_manifest_decoder_accepts_only_valid_manifests(
        seed in any::<u8>(),
        mutations in proptest::collection::vec(mutation(), 0..6),
    ) {
        let mut bytes = manifest(seed).to_cbor();
        mutate(&mut bytes, &mutations);
        if let Ok(decoded) = Manifest::from_cbor(&bytes) {
            let checked = Manifest::new(
                decoded.name().to_owned(),
                decoded.length_bytes(),
                decoded.piece_size_bytes(),
                decoded.pieces().map(|p| decoded.piece_hash(p)).collect(),
            );
            prop_assert_eq!(checked.as_ref(), Ok(&decoded), "what decodes is valid");
            let again = Manifest::from_cbor(&decoded.to_cbor());
            prop_assert_eq!(again.as_ref().map(Manifest::file_id), Ok(decoded.file_id()));
            prop_assert_eq!(again, Ok(decoded));
        }
    }
}
