//! Length-prefixed CBOR framing over byte buffers, with no I/O.
//!
//! A frame is a 4-byte big-endian body length followed by one CBOR-encoded [`Message`]. The
//! length is checked against the limit before any body byte is buffered, and a length prefix
//! reserves nothing: a receiver's buffer grows with the bytes that arrive, never with what a
//! prefix claims. A connection's first frame (its `Hello`) may be at most
//! [`HELLO_FRAME_BYTES_MAX`], later ones [`FRAME_BYTES_MAX`]; [`FrameDecoder`] applies both.
//! `net`'s socket codec, `sim`'s network and the fuzz tests all go through these functions.
//!
//! A `Data` payload is never copied by the codec: [`encode_frame_parts`] hands it back beside the
//! encoded head for a vectored write, and [`decode_frame`] returns it as a slice of the received
//! buffer. Its CBOR byte string is the last item of the body (serde writes fields in order), so
//! the bytes on the wire are the same either way. The holder records of a `Located` answer
//! without a manifest, also the body's last item, are handed back the same way when encoding (a
//! tracker sends the same reused records to many askers).

use std::ops::Range;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ciborium_io::Read as _;
use ciborium_ll::{Decoder, Encoder, Header};

use crate::error::{DecodeError, EncodeError};
use crate::limits::{BODY_DECODE_CHEAP_BYTES_MAX, FRAME_BYTES_MAX, FRAME_HEADER_BYTES, HELLO_FRAME_BYTES_MAX};
use crate::wire::message::Message;

/// The encoding of an empty CBOR byte string: the payload placeholder of a `Data` head.
const EMPTY_BYTE_STRING: u8 = 0x40;

/// Appends `message` as one frame to `dst`. Fails, leaving `dst` as it was, when the encoded
/// body would exceed the frame limit.
pub fn encode_frame(message: &Message, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let payload = encode_frame_parts(message, dst)?;
    dst.extend_from_slice(&payload);
    Ok(())
}

/// Appends the head of `message`'s frame to `dst` and returns the bytes that must follow it on
/// the wire: a `Data` message's payload, shared rather than copied, or nothing. Fails, leaving
/// `dst` as it was, when the encoded body would exceed the frame limit.
pub fn encode_frame_parts(message: &Message, dst: &mut BytesMut) -> Result<Bytes, EncodeError> {
    let start = dst.len();
    dst.put_u32(0);
    let payload = match message {
        Message::Data { file_id, chunk, offset, bytes } => {
            let head = Message::Data { file_id: *file_id, chunk: *chunk, offset: *offset, bytes: Bytes::new() };
            write_head(&head, bytes.len(), dst);
            bytes.clone()
        }
        Message::Located { file_id, manifest: None, holders } => {
            let (without_records, records) = holders.split_records();
            let head = Message::Located { file_id: *file_id, manifest: None, holders: without_records };
            write_head(&head, records.len(), dst);
            records
        }
        _ => {
            write_cbor(message, dst);
            Bytes::new()
        }
    };
    let body_len = dst.len() - start - FRAME_HEADER_BYTES + payload.len();
    if body_len > FRAME_BYTES_MAX {
        dst.truncate(start);
        return Err(EncodeError::Oversized { len: body_len });
    }
    // body_len <= FRAME_BYTES_MAX < u32::MAX.
    dst[start..start + FRAME_HEADER_BYTES].copy_from_slice(&(body_len as u32).to_be_bytes());
    Ok(payload)
}

/// Writes `head`, whose last item is an empty byte string, with that string's header saying
/// `payload_len` bytes follow.
fn write_head(head: &Message, payload_len: usize, dst: &mut BytesMut) {
    write_cbor(head, dst);
    debug_assert_eq!(dst.last(), Some(&EMPTY_BYTE_STRING), "the payload is the body's last item");
    dst.truncate(dst.len() - 1);
    // Writing into a BytesMut cannot fail.
    Encoder::from(dst.writer()).push(Header::Bytes(Some(payload_len))).expect("header encodes to a buffer");
}

fn write_cbor(message: &Message, dst: &mut BytesMut) {
    // Writing into a BytesMut cannot fail and every message field is a plain value.
    ciborium::into_writer(message, dst.writer()).expect("message encodes to a buffer");
}

impl Message {
    /// Bytes of the frame [`encode_frame`] writes for this message (the length prefix and the
    /// CBOR body); nothing is written and a `Data` payload is not touched. A message over the
    /// frame limit has a length too, though `encode_frame` refuses it.
    ///
    /// The messages a transfer sends for every block are summed from CBOR's rules (a simulator
    /// sizes every message it carries, and running the serializer would cost more than the
    /// rest of such a message's trip); the others are counted by running the serializer into a
    /// counter. The codec's tests hold both to the encoder's output.
    pub fn encoded_len(&self) -> usize {
        let uint = |n: u32| head_len(u64::from(n));
        let body = match self {
            Message::Data { chunk, offset, bytes, .. } => struct_variant_len(
                "Data",
                &[
                    ("file_id", FILE_ID_LEN),
                    ("chunk", uint(chunk.0)),
                    ("offset", uint(*offset)),
                    ("bytes", head_len(bytes.len() as u64) + bytes.len()),
                ],
            ),
            Message::Request { chunk, offset, len, .. } => struct_variant_len(
                "Request",
                &[("file_id", FILE_ID_LEN), ("chunk", uint(chunk.0)), ("offset", uint(*offset)), ("len", uint(*len))],
            ),
            Message::Requests { blocks, .. } => {
                let tuples: usize = blocks.iter().map(|(c, o, l)| head_len(3) + uint(c.0) + uint(*o) + uint(*l)).sum();
                let blocks = head_len(blocks.len() as u64) + tuples;
                struct_variant_len("Requests", &[("file_id", FILE_ID_LEN), ("blocks", blocks)])
            }
            Message::Have { chunk, .. } => {
                struct_variant_len("Have", &[("file_id", FILE_ID_LEN), ("chunk", uint(chunk.0))])
            }
            Message::Haves { chunks, .. } => {
                let chunks = head_len(chunks.len() as u64) + chunks.iter().map(|c| uint(c.0)).sum::<usize>();
                struct_variant_len("Haves", &[("file_id", FILE_ID_LEN), ("chunks", chunks)])
            }
            Message::Reject { chunk, offset, reason, .. } => struct_variant_len(
                "Reject",
                &[
                    ("file_id", FILE_ID_LEN),
                    ("chunk", uint(chunk.0)),
                    ("offset", uint(*offset)),
                    ("reason", counted_len(reason)),
                ],
            ),
            Message::Cancel { chunk, offset, .. } => struct_variant_len(
                "Cancel",
                &[("file_id", FILE_ID_LEN), ("chunk", uint(chunk.0)), ("offset", uint(*offset))],
            ),
            _ => counted_len(self),
        };
        FRAME_HEADER_BYTES + body
    }
}

/// CBOR bytes of a file id: a byte string of 32 bytes (its header takes two).
const FILE_ID_LEN: usize = 2 + 32;

/// CBOR bytes of the header of an item whose argument is `n`: an unsigned integer `n`, or a
/// string, array or map of length `n`.
fn head_len(n: u64) -> usize {
    match n {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// CBOR bytes of a struct variant as serde writes it: a map of one entry, from the variant's
/// name to the map of its fields, given as `(name, bytes of the value)` in order.
fn struct_variant_len(variant: &str, fields: &[(&str, usize)]) -> usize {
    let text_len = |text: &str| head_len(text.len() as u64) + text.len();
    let fields_len: usize = fields.iter().map(|(name, value)| text_len(name) + value).sum();
    head_len(1) + text_len(variant) + head_len(fields.len() as u64) + fields_len
}

/// CBOR bytes of `value`, counted by running the serializer.
fn counted_len<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    let mut counter = ByteCounter(0);
    // Counting cannot fail and every message field is a plain value.
    ciborium::into_writer(value, &mut counter).expect("message encodes to a counter");
    counter.0
}

/// A writer that keeps only the number of bytes written to it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Takes one whole frame of at most [`FRAME_BYTES_MAX`] off the front of `src` and decodes it;
/// see [`decode_frame_within`].
pub fn decode_frame(src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
    decode_frame_within(src, FRAME_BYTES_MAX)
}

/// Takes one whole frame whose body is at most `body_bytes_max` off the front of `src` and
/// decodes it.
///
/// `Ok(None)`: more bytes are needed (nothing is reserved for them). `Err`: the stream is
/// broken — the length is over the limit (nothing is consumed) or the body does not decode
/// (the frame is consumed); the caller should report and close.
pub fn decode_frame_within(src: &mut BytesMut, body_bytes_max: usize) -> Result<Option<Message>, DecodeError> {
    take_body_within(src, body_bytes_max)?.map(decode_body).transpose()
}

/// Takes one whole frame's body of at most `body_bytes_max` off the front of `src`, not yet
/// decoded (see [`decode_body`]). `Ok(None)`: more bytes are needed. `Err`: the length is over
/// the limit (nothing is consumed).
fn take_body_within(src: &mut BytesMut, body_bytes_max: usize) -> Result<Option<Bytes>, DecodeError> {
    let Some(body_len) = body_len(src) else {
        return Ok(None);
    };
    if body_len > body_bytes_max {
        return Err(DecodeError::Oversized { len: body_len, max: body_bytes_max });
    }
    if src.len() < FRAME_HEADER_BYTES + body_len {
        return Ok(None);
    }
    src.advance(FRAME_HEADER_BYTES);
    Ok(Some(src.split_to(body_len).freeze()))
}

/// Whether decoding `body` is cheap: it is small, or a `Data` body (its payload is sliced,
/// not decoded).
pub fn body_decodes_cheaply(body: &[u8]) -> bool {
    body.len() <= BODY_DECODE_CHEAP_BYTES_MAX || data_payload(body).is_some()
}

/// The largest body a connection accepts in its next frame: [`HELLO_FRAME_BYTES_MAX`] until its
/// first frame was decoded, [`FRAME_BYTES_MAX`] from then on.
pub fn frame_body_bytes_max(first_frame_decoded: bool) -> usize {
    if first_frame_decoded {
        FRAME_BYTES_MAX
    } else {
        HELLO_FRAME_BYTES_MAX
    }
}

/// The body length the frame at the front of `src` announces, once its prefix is there.
fn body_len(src: &[u8]) -> Option<usize> {
    let mut len_bytes = [0u8; FRAME_HEADER_BYTES];
    len_bytes.copy_from_slice(src.get(..FRAME_HEADER_BYTES)?);
    Some(u32::from_be_bytes(len_bytes) as usize)
}

/// Decodes one frame body (from [`FrameDecoder::next_body`]). A `Data` body decodes its head with serde, an empty byte string in
/// place of the payload, and takes the payload as a slice of `body`; any other body, or one
/// that does not have that shape, decodes whole.
pub fn decode_body(body: Bytes) -> Result<Message, DecodeError> {
    if let Some((payload_header_at, payload)) = data_payload(&body) {
        let mut head = Vec::with_capacity(payload_header_at + 1);
        head.extend_from_slice(&body[..payload_header_at]);
        head.push(EMPTY_BYTE_STRING);
        if let Ok(Message::Data { file_id, chunk, offset, .. }) = ciborium::from_reader(&head[..]) {
            return Ok(Message::Data { file_id, chunk, offset, bytes: body.slice(payload) });
        }
    }
    ciborium::from_reader(&body[..]).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Where the payload of a `Data` body lies: the offset of its byte-string header and the
/// payload's range, which must end the body. `None` for any other body.
fn data_payload(body: &[u8]) -> Option<(usize, Range<usize>)> {
    let mut decoder = Decoder::from(body);
    if decoder.pull().ok()? != Header::Map(Some(1)) || !next_text_is(&mut decoder, b"Data")? {
        return None;
    }
    let Header::Map(Some(fields)) = decoder.pull().ok()? else {
        return None;
    };
    for _ in 0..fields {
        let is_payload = next_text_is(&mut decoder, b"bytes")?;
        let header_at = decoder.offset();
        match decoder.pull().ok()? {
            Header::Bytes(Some(len)) if is_payload => {
                let start = decoder.offset();
                return (start.checked_add(len)? == body.len()).then_some((header_at, start..body.len()));
            }
            Header::Bytes(Some(len)) if len <= 64 => decoder.read_exact(&mut [0u8; 64][..len]).ok()?,
            Header::Positive(_) => {}
            _ => return None,
        }
    }
    None
}

/// Reads a short text item and tells whether it equals `expected`; `None` when the next item is
/// not a short text.
fn next_text_is(decoder: &mut Decoder<&[u8]>, expected: &[u8]) -> Option<bool> {
    let mut text = [0u8; 16];
    match decoder.pull().ok()? {
        Header::Text(Some(len)) if len <= text.len() => {
            decoder.read_exact(&mut text[..len]).ok()?;
            Some(&text[..len] == expected)
        }
        _ => None,
    }
}

/// One connection's receive buffer: it accumulates bytes as they arrive and yields whole
/// messages, the first under [`HELLO_FRAME_BYTES_MAX`] and the others under
/// [`FRAME_BYTES_MAX`]. Its memory follows the bytes received, not the length prefixes: the
/// allocation stays under twice the bytes buffered plus one read, or the size of a frame the
/// remote sent whole before, and a drained decoder holds none.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: BytesMut,
    first_frame_decoded: bool,
    /// The largest frame (head and body) taken off the buffer so far: room for a frame under
    /// way is reserved up to this at once, where growing the buffer by doubling would copy
    /// what it holds at every step.
    frame_bytes_seen_max: usize,
}

impl FrameDecoder {
    /// An empty decoder for a connection whose first frame has not arrived.
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The largest frame body accepted next.
    pub fn body_bytes_max(&self) -> usize {
        frame_body_bytes_max(self.first_frame_decoded)
    }

    /// The next whole message, if one is buffered; see [`decode_frame_within`].
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        self.next_body()?.map(decode_body).transpose()
    }

    /// The next whole frame's body, if one is buffered, not yet decoded: its caller decodes it
    /// with [`decode_body`] (where it likes, when [`body_decodes_cheaply`] says it is costly).
    /// The limits are those of [`FrameDecoder::next_message`].
    pub fn next_body(&mut self) -> Result<Option<Bytes>, DecodeError> {
        let body_bytes_max = self.body_bytes_max();
        let body = take_body_within(&mut self.buffer, body_bytes_max)?;
        if let Some(body) = &body {
            // A first frame that does not decode closes the connection, so none comes after it.
            self.first_frame_decoded = true;
            self.frame_bytes_seen_max = self.frame_bytes_seen_max.max(FRAME_HEADER_BYTES + body.len());
        }
        Ok(body)
    }

    /// Makes room for the next read into [`FrameDecoder::buffer_mut`] of up to `read_bytes`,
    /// and with `whole_frame` for the rest of the frame under way as far as a frame received
    /// before was long. Nothing more is reserved for what a length prefix claims: past that,
    /// the buffer's allocation at most doubles when full, so it grows with the bytes that
    /// actually arrive.
    pub fn reserve(&mut self, read_bytes: usize, whole_frame: bool) {
        let rest_of_frame = body_len(&self.buffer).filter(|_| whole_frame).map_or(0, |len| {
            (FRAME_HEADER_BYTES + len).min(self.frame_bytes_seen_max).saturating_sub(self.buffer.len())
        });
        self.buffer.reserve(read_bytes.max(rest_of_frame));
    }

    /// The buffer to read received bytes into (after [`FrameDecoder::reserve`]).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// Frees the buffer when it holds no unread byte, so a waiting connection holds no memory.
    pub fn release_if_drained(&mut self) {
        if self.buffer.is_empty() {
            self.buffer = BytesMut::new();
        }
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Bytes the buffer holds allocated (buffered or reserved).
    pub fn capacity_bytes(&self) -> usize {
        self.buffer.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitfield::Bitfield;
    use crate::ids::{ChunkIndex, Digest, FileId, PeerId, PieceIndex};
    use crate::manifest::Manifest;
    use crate::wire::message::{ErrorCode, FileSummary, Hello, PeerAddr, RejectReason, Role, PROTOCOL_VERSION};
    use crate::wire::Holders;
    use proptest::prelude::*;

    fn frame(message: &Message) -> BytesMut {
        let mut buf = BytesMut::new();
        encode_frame(message, &mut buf).expect("fits");
        buf
    }

    fn hello() -> Message {
        Message::Hello(Hello {
            version: u32::MAX,
            role: Role::Tracker,
            peer_id: PeerId([0xff; 16]),
            listen_port: u16::MAX,
            listen_ip: Some(std::net::IpAddr::from([0xff; 16])),
            room_calls: true,
            takes_pushes: true,
            request_batches: true,
            withdrawals: true,
        })
    }

    /// A frame whose body is `body_len` bytes of CBOR that is not a message.
    fn filler_frame(body_len: usize) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u32(body_len as u32);
        buf.resize(FRAME_HEADER_BYTES + body_len, 0xff);
        buf
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&((FRAME_BYTES_MAX as u32) + 1).to_be_bytes()[..]);
        let refused = Err(DecodeError::Oversized { len: FRAME_BYTES_MAX + 1, max: FRAME_BYTES_MAX });
        assert_eq!(decode_frame(&mut buf), refused);
        assert!(buf.capacity() < 1024, "no room reserved for a hostile length");
    }

    #[test]
    fn a_frame_under_way_gets_room_up_to_the_largest_frame_the_remote_sent() {
        let mut decoder = FrameDecoder::new();
        decoder.extend(&frame(&hello()));
        assert_eq!(decoder.next_message(), Ok(Some(hello())));
        let big = filler_frame(300 * 1024);
        decoder.extend(&big[..FRAME_HEADER_BYTES]);
        decoder.reserve(8 * 1024, true);
        assert!(decoder.capacity_bytes() < 64 * 1024, "the first such frame grows with its bytes");
        decoder.extend(&big[FRAME_HEADER_BYTES..]);
        // Still held, as a block is until it is on disk: the buffer cannot take its room back.
        let first = decoder.next_body().expect("within limits");
        assert!(first.is_some());

        // The next one as long: room for all of it at its prefix, so no byte of it is copied
        // as the buffer grows.
        decoder.extend(&big[..FRAME_HEADER_BYTES]);
        decoder.reserve(8 * 1024, true);
        assert!(decoder.capacity_bytes() >= big.len(), "{} for a frame of {}", decoder.capacity_bytes(), big.len());
        decoder.extend(&big[FRAME_HEADER_BYTES..]);
        let second = decoder.next_body().expect("within limits");
        assert!(second.is_some());

        // Not asked for the whole frame (the budget runs short): room follows the bytes.
        decoder.extend(&big[..FRAME_HEADER_BYTES]);
        decoder.reserve(8 * 1024, false);
        assert!(decoder.capacity_bytes() < 64 * 1024, "{} for a bare prefix", decoder.capacity_bytes());
        decoder.extend(&big[FRAME_HEADER_BYTES..]);
        assert!(decoder.next_body().expect("within limits").is_some());

        // A longer claim gets no more than the longest frame received.
        decoder.extend(&(FRAME_BYTES_MAX as u32).to_be_bytes());
        decoder.reserve(8 * 1024, true);
        assert!(decoder.capacity_bytes() <= big.len(), "{} for a bare prefix", decoder.capacity_bytes());
    }

    #[test]
    fn a_length_prefix_reserves_nothing_until_the_bytes_arrive() {
        let mut buf = BytesMut::from(&(FRAME_BYTES_MAX as u32).to_be_bytes()[..]);
        assert_eq!(decode_frame(&mut buf), Ok(None));
        assert!(buf.capacity() < 1024, "a claim of {FRAME_BYTES_MAX} bytes reserved {}", buf.capacity());

        let mut decoder = FrameDecoder::new();
        decoder.extend(&frame(&hello()));
        assert_eq!(decoder.next_message(), Ok(Some(hello())));
        decoder.extend(&(FRAME_BYTES_MAX as u32).to_be_bytes());
        decoder.reserve(8 * 1024, true);
        assert!(decoder.capacity_bytes() < 64 * 1024, "reserved {} for a bare prefix", decoder.capacity_bytes());
        let mut received = FRAME_HEADER_BYTES;
        while received < 1024 * 1024 {
            decoder.reserve(8 * 1024, true);
            let spare = decoder.capacity_bytes() - decoder.buffered_bytes();
            decoder.extend(&vec![0; spare.min(100_000)]);
            received += spare.min(100_000);
            assert!(
                decoder.capacity_bytes() <= 2 * received + 16 * 1024,
                "{} for {received}",
                decoder.capacity_bytes()
            );
        }
        assert_eq!(decoder.next_message(), Ok(None), "the frame is still incomplete");
    }

    #[test]
    fn a_hello_without_room_calls_or_pushes_encodes_as_before_and_one_with_them_decodes_where_they_are_unknown() {
        let Message::Hello(mut calling) = hello() else { unreachable!("hello() is a Hello") };
        calling.listen_ip = None;
        let plain = Hello {
            room_calls: false,
            takes_pushes: false,
            request_batches: false,
            withdrawals: false,
            ..calling.clone()
        };
        let body = |hello: &Hello| frame(&Message::Hello(hello.clone())).split_off(FRAME_HEADER_BYTES);
        for needle in [&b"room_calls"[..], b"takes_pushes", b"request_batches", b"withdrawals"] {
            assert!(!body(&plain).windows(needle.len()).any(|w| w == needle), "the field is absent when false");
            assert!(body(&calling).windows(needle.len()).any(|w| w == needle));
        }
        // A peer that predates the field: its `Hello` has the other five.
        #[derive(serde::Deserialize)]
        struct EarlierHello {
            version: u32,
            role: Role,
            peer_id: PeerId,
            listen_port: u16,
            listen_ip: Option<std::net::IpAddr>,
        }
        #[derive(serde::Deserialize)]
        enum EarlierMessage {
            Hello(EarlierHello),
        }
        let decoded: EarlierMessage = ciborium::from_reader(&body(&calling)[..]).expect("unknown fields are skipped");
        let EarlierMessage::Hello(earlier) = decoded;
        let fields = (earlier.version, earlier.role, earlier.peer_id, earlier.listen_port, earlier.listen_ip);
        assert_eq!(fields, (u32::MAX, Role::Tracker, PeerId([0xff; 16]), u16::MAX, None));
        assert_eq!(decode_body(body(&plain).freeze()), Ok(Message::Hello(plain)));
    }

    #[test]
    fn the_largest_hello_fits_the_first_frame_limit_with_room_for_a_refusal() {
        let body_len = frame(&hello()).len() - FRAME_HEADER_BYTES;
        assert!(body_len < 192, "a hello of {body_len} bytes");
        let refusal = Message::error(None, ErrorCode::Overloaded, "x".repeat(400));
        assert!(frame(&refusal).len() - FRAME_HEADER_BYTES <= HELLO_FRAME_BYTES_MAX);
    }

    #[test]
    fn a_first_frame_over_the_hello_limit_is_refused_and_later_frames_may_be_large() {
        let mut at_bound = FrameDecoder::new();
        at_bound.extend(&filler_frame(HELLO_FRAME_BYTES_MAX));
        assert!(matches!(at_bound.next_message(), Err(DecodeError::Malformed(_))), "decoded, not refused");

        let mut over = FrameDecoder::new();
        over.extend(&filler_frame(HELLO_FRAME_BYTES_MAX + 1)[..FRAME_HEADER_BYTES]);
        let refused = Err(DecodeError::Oversized { len: HELLO_FRAME_BYTES_MAX + 1, max: HELLO_FRAME_BYTES_MAX });
        assert_eq!(over.next_message(), refused, "refused from its prefix alone");

        let mut after_hello = FrameDecoder::new();
        after_hello.extend(&frame(&hello()));
        after_hello.extend(&filler_frame(FRAME_BYTES_MAX));
        assert_eq!(after_hello.next_message(), Ok(Some(hello())));
        assert!(matches!(after_hello.next_message(), Err(DecodeError::Malformed(_))), "the largest frame is read");
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

    #[test]
    fn data_payloads_are_shared_not_copied() {
        let payload = Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let data = Message::Data {
            file_id: FileId(Digest([7; 32])),
            chunk: ChunkIndex(3),
            offset: 65_536,
            bytes: payload.clone(),
        };
        let mut head = BytesMut::new();
        let rest = encode_frame_parts(&data, &mut head).expect("fits");
        assert_eq!(rest.as_ptr(), payload.as_ptr(), "the payload is handed back, not copied");
        assert!(head.len() < 128, "only the head is encoded: {} bytes", head.len());
        let mut whole = head.clone();
        whole.extend_from_slice(&rest);
        assert_eq!(whole, frame(&data), "head + payload is the frame `encode_frame` writes");

        let received = whole.freeze();
        let mut buf = BytesMut::from(&received[..]);
        let span = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let Ok(Some(Message::Data { bytes, offset, .. })) = decode_frame(&mut buf) else { panic!("a data frame") };
        assert_eq!((offset, &bytes), (65_536, &payload));
        assert!(span.contains(&(bytes.as_ptr() as usize)), "the payload is a slice of the received buffer");
    }

    #[test]
    fn located_records_are_shared_not_copied() {
        let peer = PeerAddr { peer_id: PeerId([3; 16]), addr: std::net::SocketAddr::from(([127, 0, 0, 1], 7000)) };
        let bits = Bitfield::full(1000);
        let holders = Holders::pack(1000, std::iter::repeat_n((peer, bits.as_bytes()), 30));
        let located = Message::Located { file_id: FileId(Digest([7; 32])), manifest: None, holders: holders.clone() };
        let mut head = BytesMut::new();
        let rest = encode_frame_parts(&located, &mut head).expect("fits");
        assert_eq!(rest.as_ptr(), holders.split_records().1.as_ptr(), "the records are handed back, not copied");
        assert!(head.len() < 128, "only the head is encoded: {} bytes", head.len());
        let mut whole = head;
        whole.extend_from_slice(&rest);
        assert_eq!(decode_frame(&mut whole.clone()), Ok(Some(located.clone())));
        let mut plain = Vec::new();
        ciborium::into_writer(&located, &mut plain).expect("encodes");
        assert_eq!(&whole[FRAME_HEADER_BYTES..], &plain[..], "the bytes on the wire are plain CBOR");
    }

    #[test]
    fn encoded_len_counts_every_cbor_length_prefix_width() {
        for len in [0usize, 23, 24, 255, 256, 65_535, 65_536, 262_144] {
            let data = Message::Data {
                file_id: FileId(Digest([7; 32])),
                chunk: ChunkIndex(3),
                offset: 262_144,
                bytes: Bytes::from(vec![1u8; len]),
            };
            assert_eq!(data.encoded_len(), frame(&data).len(), "payload of {len} bytes");
        }
        for n in [0u32, 23, 24, 255, 256, 65_535, 65_536, u32::MAX] {
            let file_id = FileId(Digest([9; 32]));
            let (chunk, offset) = (ChunkIndex(n), n);
            let count = n.min(300) as usize;
            let reasons = [
                RejectReason::NotHave,
                RejectReason::Busy,
                RejectReason::BadRange,
                RejectReason::ReadFailed,
                RejectReason::Withdrawn,
            ];
            let mut messages = vec![
                Message::Request { file_id, chunk, offset, len: n },
                Message::Requests { file_id, blocks: vec![(chunk, offset, n); count] },
                Message::Have { file_id, chunk },
                Message::Haves { file_id, chunks: vec![chunk; count] },
                Message::Cancel { file_id, chunk, offset },
            ];
            messages.extend(reasons.map(|reason| Message::Reject { file_id, chunk, offset, reason }));
            for message in messages {
                assert_eq!(message.encoded_len(), frame(&message).len(), "{message:?}");
            }
        }
    }

    #[test]
    fn a_data_shaped_body_with_bad_fields_is_malformed() {
        let mut body = Vec::new();
        let fields = vec![
            ("file_id", ciborium::Value::Bytes(vec![1; 5])),
            ("chunk", 1.into()),
            ("offset", 0.into()),
            ("bytes", ciborium::Value::Bytes(vec![9; 10])),
        ];
        let fields = fields.into_iter().map(|(k, v)| (ciborium::Value::Text(k.into()), v)).collect();
        ciborium::into_writer(&ciborium::Value::Map(vec![("Data".into(), ciborium::Value::Map(fields))]), &mut body)
            .expect("encodes");
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.extend_from_slice(&body);
        assert!(matches!(decode_frame(&mut buf), Err(DecodeError::Malformed(_))), "a 5-byte file id is refused");
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

    fn arb_holders(peer: impl Strategy<Value = PeerAddr> + Clone) -> impl Strategy<Value = Holders> {
        (0u32..200).prop_flat_map(move |len| {
            let bits = proptest::collection::vec(any::<u8>(), (len as usize).div_ceil(8));
            proptest::collection::vec((peer.clone(), bits), 0..4).prop_map(move |holders| {
                Holders::pack(len, holders.iter().map(|(peer, bits)| (*peer, bits.as_slice())))
            })
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
            (any::<[u8; 16]>(), any::<u16>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
                |(id, port, room_calls, takes_pushes, request_batches, withdrawals)| Message::Hello(Hello {
                    version: PROTOCOL_VERSION,
                    role: Role::Peer,
                    peer_id: PeerId(id),
                    listen_port: port,
                    listen_ip: None,
                    room_calls,
                    takes_pushes,
                    request_batches,
                    withdrawals,
                })
            ),
            (file_id.clone(), proptest::option::of(arb_manifest().prop_map(Box::new)), arb_bitfield())
                .prop_map(|(file_id, manifest, have)| Message::Announce { file_id, manifest, have }),
            (file_id.clone(), any::<u32>()).prop_map(|(file_id, p)| Message::Have { file_id, chunk: ChunkIndex(p) }),
            (file_id.clone(), proptest::collection::vec(any::<u32>().prop_map(ChunkIndex), 0..8))
                .prop_map(|(file_id, chunks)| Message::Haves { file_id, chunks }),
            (file_id.clone(), any::<u32>(), proptest::collection::vec(any::<[u8; 32]>().prop_map(Digest), 0..5))
                .prop_map(|(file_id, piece, digests)| Message::Chunks { file_id, piece: PieceIndex(piece), digests }),
            proptest::option::of(file_id.clone()).prop_map(|file_id| Message::Leave { file_id }),
            (file_id.clone(), any::<bool>())
                .prop_map(|(file_id, with_manifest)| Message::Locate { file_id, with_manifest }),
            (file_id.clone(), proptest::option::of(arb_manifest().prop_map(Box::new)), arb_holders(peer.clone()))
                .prop_map(|(file_id, manifest, holders)| Message::Located { file_id, manifest, holders }),
            Just(Message::List),
            (file_id.clone(), "[a-z]{0,8}", any::<u64>(), proptest::collection::vec(any::<u32>(), 0..5)).prop_map(
                |(file_id, name, length_bytes, holders_per_piece)| Message::Files {
                    files: vec![FileSummary { file_id, name, length_bytes, peer_count: 1, holders_per_piece }],
                    truncated: false
                }
            ),
            (file_id.clone(), arb_bitfield()).prop_map(|(file_id, have)| Message::Bitfield { file_id, have }),
            (file_id.clone(), any::<u32>(), any::<u32>(), any::<u32>())
                .prop_map(|(file_id, p, offset, len)| Message::Request { file_id, chunk: ChunkIndex(p), offset, len }),
            (file_id.clone(), proptest::collection::vec((any::<u32>(), any::<u32>(), any::<u32>()), 0..20)).prop_map(
                |(file_id, blocks)| Message::Requests {
                    file_id,
                    blocks: blocks.into_iter().map(|(p, offset, len)| (ChunkIndex(p), offset, len)).collect()
                }
            ),
            (file_id.clone(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(
                |(file_id, p, bytes)| {
                    Message::Data { file_id, chunk: ChunkIndex(p), offset: 0, bytes: bytes.into() }
                }
            ),
            (file_id.clone(), any::<u32>()).prop_map(|(file_id, p)| Message::Reject {
                file_id,
                chunk: ChunkIndex(p),
                offset: 0,
                reason: RejectReason::Busy
            }),
            (file_id.clone(), any::<u32>()).prop_map(|(file_id, p)| Message::Reject {
                file_id,
                chunk: ChunkIndex(p),
                offset: 0,
                reason: RejectReason::Withdrawn
            }),
            (file_id.clone(), any::<u32>()).prop_map(|(file_id, p)| Message::Cancel {
                file_id,
                chunk: ChunkIndex(p),
                offset: 9
            }),
            (file_id.clone(), any::<u32>(), any::<u32>()).prop_map(|(file_id, p, offset)| Message::Withdraw {
                file_id,
                chunk: ChunkIndex(p),
                offset
            }),
            (file_id.clone(), any::<u32>(), any::<u32>(), any::<u32>())
                .prop_map(|(file_id, p, offset, len)| Message::Pushed { file_id, chunk: ChunkIndex(p), offset, len }),
            Just(Message::Room),
            Just(Message::Pass),
            file_id.clone().prop_map(|file_id| Message::GetManifest { file_id }),
            arb_manifest().prop_map(|manifest| Message::Manifest { manifest: Box::new(manifest) }),
            (file_id, proptest::collection::vec(peer, 0..4))
                .prop_map(|(file_id, peers)| Message::Peers { file_id, peers }),
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
        fn encoded_len_is_the_length_of_the_encoded_frame(message in arb_message()) {
            prop_assert_eq!(message.encoded_len(), frame(&message).len());
        }

        #[test]
        fn messages_split_anywhere_reassemble(messages in proptest::collection::vec(arb_message(), 1..5), split in 1usize..64) {
            let mut all = frame(&hello());
            for message in &messages {
                encode_frame(message, &mut all).expect("fits");
            }
            let mut decoder = FrameDecoder::new();
            let mut got = Vec::new();
            for chunk in all.chunks(split) {
                decoder.reserve(split, true);
                decoder.extend(chunk);
                while let Some(message) = decoder.next_message().expect("valid stream") {
                    got.push(message);
                }
            }
            prop_assert_eq!(got.first(), Some(&hello()));
            prop_assert_eq!(&got[1..], &messages[..]);
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
