//! Short client connections to a tracker, for tools: the list of known files (`p2p-node ls`,
//! resolving a typed id prefix).
//!
//! The client says `Hello` as [`Role::Client`], so the tracker never lists it as a holder, asks
//! its question, reads the answer and closes. The whole exchange is bounded by a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use p2p_core::wire::{FileSummary, Hello, Message, Role, PROTOCOL_VERSION};
use p2p_core::PeerId;
use rand::RngCore;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::connection::FrameCodec;
use crate::error::NetError;

/// How long a whole client exchange may take.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages a client reads while waiting for its answer before giving up.
const CLIENT_MESSAGES_MAX: usize = 16;

/// The files the tracker at `tracker` knows, ordered by id, and whether the list was cut short.
pub async fn list_files(tracker: SocketAddr) -> Result<(Vec<FileSummary>, bool), NetError> {
    let timed_out = || NetError::Protocol { addr: tracker, reason: "no answer in time".into() };
    tokio::time::timeout(CLIENT_TIMEOUT, list_files_now(tracker)).await.map_err(|_| timed_out())?
}

async fn list_files_now(tracker: SocketAddr) -> Result<(Vec<FileSummary>, bool), NetError> {
    let stream = TcpStream::connect(tracker).await.map_err(NetError::socket("connect to", tracker))?;
    let mut framed = Framed::new(stream, FrameCodec::default());
    let protocol = |reason: String| NetError::Protocol { addr: tracker, reason };
    let hello = Hello { version: PROTOCOL_VERSION, role: Role::Client, peer_id: PeerId(random_id()), listen_port: 0 };
    for message in [Message::Hello(hello), Message::List] {
        framed.send(&message).await.map_err(|e| protocol(format!("cannot send: {e}")))?;
    }
    for _ in 0..CLIENT_MESSAGES_MAX {
        match framed.next().await {
            Some(Ok(Message::Files { files, truncated })) => return Ok((files, truncated)),
            Some(Ok(Message::Error { detail, .. })) => return Err(protocol(format!("tracker refused: {detail}"))),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(protocol(e.to_string())),
            None => break,
        }
    }
    Err(protocol("closed the connection without an answer".into()))
}

fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    id
}
