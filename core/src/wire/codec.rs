//! Length-prefixed CBOR framing over byte buffers, with no I/O.
//!
//! A frame is a 4-byte big-endian body length followed by one CBOR-encoded [`Message`]. The
//! length is checked against [`FRAME_BYTES_MAX`] before any body byte is buffered, so a hostile
//! length costs nothing. `net`'s socket codec, `sim`'s network and the fuzz tests all go through
//! these two functions.

use bytes::{Buf, BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::limits::{FRAME_BYTES_MAX, FRAME_HEADER_BYTES};
use crate::wire::message::Message;

/// Appends `message` as one frame to `dst`. Fails, leaving `dst` as it was, when the encoded
/// body would exceed the frame limit.
pub fn encode_frame(message: &Message, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let start = dst.len();
    dst.put_u32(0);
    // Writing into a BytesMut cannot fail and every message field is a plain value.
    ciborium::into_writer(message, dst.writer()).expect("message encodes to a buffer");
    let body_len = dst.len() - start - FRAME_HEADER_BYTES;
    if body_len > FRAME_BYTES_MAX {
        dst.truncate(start);
        return Err(EncodeError::Oversized { len: body_len });
    }
    // body_len <= FRAME_BYTES_MAX < u32::MAX.
    dst[start..start + FRAME_HEADER_BYTES].copy_from_slice(&(body_len as u32).to_be_bytes());
    Ok(())
}

/// Takes one whole frame off the front of `src` and decodes it.
///
/// `Ok(None)`: more bytes are needed (room for the announced body is reserved). `Err`: the
/// stream is broken — the length is over the limit (nothing is consumed) or the body does not
/// decode (the frame is consumed); the caller should report and close.
pub fn decode_frame(src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
    let Some(header) = src.get(..FRAME_HEADER_BYTES) else {
        return Ok(None);
    };
    let mut len_bytes = [0u8; FRAME_HEADER_BYTES];
    len_bytes.copy_from_slice(header);
    let body_len = u32::from_be_bytes(len_bytes) as usize;
    if body_len > FRAME_BYTES_MAX {
        return Err(DecodeError::Oversized { len: body_len });
    }
    if src.len() < FRAME_HEADER_BYTES + body_len {
        src.reserve(FRAME_HEADER_BYTES + body_len - src.len());
        return Ok(None);
    }
    src.advance(FRAME_HEADER_BYTES);
    let body = src.split_to(body_len);
    ciborium::from_reader(&body[..]).map(Some).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// A buffer that accumulates bytes as they arrive and yields whole messages.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: BytesMut,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole message, if one is buffered; see [`decode_frame`].
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        decode_frame(&mut self.buffer)
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitfield::Bitfield;
    use crate::ids::{Digest, FileId, PeerId, PieceIndex};
    use crate::manifest::Manifest;
    use crate::wire::message::{ErrorCode, FileSummary, Hello, PeerAddr, RejectReason, Role, PROTOCOL_VERSION};
    use proptest::prelude::*;

    fn frame(message: &Message) -> BytesMut {
        let mut buf = BytesMut::new();
        encode_frame(message, &mut buf).expect("fits");
        buf
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&((FRAME_BYTES_MAX as u32) + 1).to_be_bytes()[..]);
        assert_eq!(decode_frame(&mut buf), Err(DecodeError::Oversized { len: FRAME_BYTES_MAX + 1 }));
        assert!(buf.capacity() < 1024, "no room reserved for a hostile length");
    }

    #[test]
    fn truncated_frames_wait_and_garbage_is_a_typed_error() {
        let whole = frame(&Message::List);
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(decode_frame(&mut part), Ok(None), "cut at {cut}");
        }
        let mut garbage = BytesMut::from(&[0, 0, 0, 3, 0xff, 0xfe, 0xfd][..]);
        assert!(matches!(decode_frame(&mut garbage), Err(DecodeError::Malformed(_))));
        assert!(garbage.is_empty(), "the bad frame is consumed");
    }

    #[test]
    fn a_valid_cbor_value_of_the_wrong_shape_is_malformed() {
        let mut body = Vec::new();
        ciborium::into_writer(&("Request", 7u8), &mut body).expect("encodes");
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.extend_from_slice(&body);
        assert!(matches!(decode_frame(&mut buf), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn encoding_an_oversized_message_fails_and_leaves_the_buffer() {
        let huge = Message::error(None, ErrorCode::BadRequest, "x".repeat(FRAME_BYTES_MAX));
        let mut buf = BytesMut::from(&b"kept"[..]);
        assert!(matches!(encode_frame(&huge, &mut buf), Err(EncodeError::Oversized { .. })));
        assert_eq!(&buf[..], b"kept");
    }

    fn arb_digest() -> impl Strategy<Value = Digest> + Clone {
        any::<[u8; 32]>().prop_map(Digest)
    }

    fn arb_bitfield() -> impl Strategy<Value = Bitfield> {
        (0u32..200).prop_flat_map(|len| {
            proptest::collection::vec(any::<u8>(), (len as usize).div_ceil(8))
                .prop_map(move |bytes| Bitfield::from_bytes(len, &bytes).expect("sized to len"))
        })
    }

    fn arb_manifest() -> impl Strategy<Value = Manifest> {
        ("[a-z]{1,12}", 0u64..200_000).prop_flat_map(|(name, len)| {
            let count = len.div_ceil(16 * 1024) as usize;
            proptest::collection::vec(arb_digest(), count)
                .prop_map(move |hashes| Manifest::new(name.clone(), len, 16 * 1024, hashes).expect("consistent"))
        })
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let file_id = arb_digest().prop_map(FileId);
        let peer = (any::<[u8; 16]>(), any::<u16>()).prop_map(|(id, port)| PeerAddr {
            peer_id: PeerId(id),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        });
        prop_oneof![
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(id, port)| Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                role: Role::Peer,
                peer_id: PeerId(id),
                listen_port: port
            })),
            (file_id.clone(), proptest::option::of(arb_manifest()), arb_bitfield())
                .prop_map(|(file_id, manifest, have)| Message::Announce { file_id, manifest, have }),
            (file_id.clone(), any::<u32>()).prop_map(|(file_id, p)| Message::Have { file_id, piece: PieceIndex(p) }),
            (file_id.clone(), proptest::collection::vec(any::<u32>().prop_map(PieceIndex), 0..8))
                .prop_map(|(file_id, pieces)| Message::Haves { file_id, pieces }),
            proptest::option::of(file_id.clone()).prop_map(|file_id| Message::Leave { file_id }),
            (file_id.clone(), any::<bool>())
                .prop_map(|(file_id, with_manifest)| Message::Locate { file_id, with_manifest }),
            (
                file_id.clone(),
                proptest::option::of(arb_manifest()),
                proptest::collection::vec((peer, arb_bitfield()), 0..4)
            )
                .prop_map(|(file_id, manifest, holders)| {
                    let (peers, have) = holders.into_iter().unzip();
                    Message::Located { file_id, manifest, peers, have }
                }),
            Just(Message::List),
            (file_id.clone(), "[a-z]{0,8}", any::<u64>(), proptest::collection::vec(any::<u32>(), 0..5)).prop_map(
                |(file_id, name, length_bytes, holders_per_piece)| Message::Files {
                    files: vec![FileSummary { file_id, name, length_bytes, peer_count: 1, holders_per_piece }],
                    truncated: false
                }
            ),
            (file_id.clone(), arb_bitfield()).prop_map(|(file_id, have)| Message::Bitfield { file_id, have }),
            (file_id.clone(), any::<u32>(), any::<u32>(), any::<u32>())
                .prop_map(|(file_id, p, offset, len)| Message::Request { file_id, piece: PieceIndex(p), offset, len }),
            (file_id.clone(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(
                |(file_id, p, bytes)| {
                    Message::Data { file_id, piece: PieceIndex(p), offset: 0, bytes: bytes.into() }
                }
            ),
            (file_id.clone(), any::<u32>()).prop_map(|(file_id, p)| Message::Reject {
                file_id,
                piece: PieceIndex(p),
                offset: 0,
                reason: RejectReason::Busy
            }),
            (file_id, any::<u32>()).prop_map(|(file_id, p)| Message::Cancel {
                file_id,
                piece: PieceIndex(p),
                offset: 9
            }),
            "[ -~]{0,40}".prop_map(|detail| Message::error(None, ErrorCode::UnknownFile, detail)),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(message in arb_message()) {
            let mut buf = frame(&message);
            prop_assert_eq!(decode_frame(&mut buf), Ok(Some(message)));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn messages_split_anywhere_reassemble(messages in proptest::collection::vec(arb_message(), 1..5), split in 1usize..64) {
            let mut all = BytesMut::new();
            for message in &messages {
                encode_frame(message, &mut all).expect("fits");
            }
            let mut decoder = FrameDecoder::new();
            let mut got = Vec::new();
            for chunk in all.chunks(split) {
                decoder.extend(chunk);
                while let Some(message) = decoder.next_message().expect("valid stream") {
                    got.push(message);
                }
            }
            prop_assert_eq!(got, messages);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut decoder = FrameDecoder::new();
            decoder.extend(&bytes);
            for _ in 0..64 {
                match decoder.next_message() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
