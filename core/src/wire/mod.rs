//! The wire protocol: message enums and length-prefixed CBOR framing.

pub mod codec;
mod holders;
pub mod message;

pub use codec::{decode_frame, encode_frame, encode_frame_parts, FrameDecoder};
pub use holders::Holders;
pub use message::{ErrorCode, FileSummary, Hello, Message, PeerAddr, RejectReason, Role, PROTOCOL_VERSION};
