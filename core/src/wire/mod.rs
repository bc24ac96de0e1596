//! The wire protocol: message enums and length-prefixed CBOR framing.

pub mod codec;
mod holders;
pub mod message;

pub use codec::{
    body_decodes_cheaply, decode_body, decode_frame, decode_frame_within, encode_frame, encode_frame_parts,
    frame_body_bytes_max, FrameDecoder,
};
pub use holders::Holders;
pub use message::{
    is_loopback, ErrorCode, FileSummary, Hello, Message, PeerAddr, RejectReason, Role, PROTOCOL_VERSION,
};
