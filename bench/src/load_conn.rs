//! One load-generator connection to a tracker: the product's transport handshake, then
//! p2p-core's own frames and messages, with pipelined request/reply exchanges.

use std::collections::VecDeque;
use std::net::SocketAddr;

use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use p2p_core::wire::{decode_frame, encode_frame, Hello, Message, Role};
use p2p_net::identity::Identity;
use p2p_net::secure::{self, Keys, SecureStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes reserved in the read buffer before each read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A handshaken connection to the tracker.
#[derive(Debug)]
pub struct Conn {
    stream: SecureStream,
    read_buf: BytesMut,
    write_buf: BytesMut,
}

impl Conn {
    /// Connects, proves `identity` in the handshake (an open swarm), sends `Hello` and waits
    /// for the tracker's.
    pub async fn open(addr: SocketAddr, role: Role, identity: Identity, listen_port: u16) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
        let peer_id = identity.peer_id();
        let keys = Keys::new(identity, None);
        let stream = secure::connect(stream, &keys).await.with_context(|| format!("handshake with {addr}"))?;
        let mut conn = Conn { stream, read_buf: BytesMut::new(), write_buf: BytesMut::new() };
        conn.queue(&Message::Hello(Hello::new(role, peer_id, listen_port)))?;
        conn.flush().await?;
        match conn.recv().await? {
            Message::Hello(_) => Ok(conn),
            other => bail!("the tracker answered hello with {}: {other:?}", other.kind()),
        }
    }

    /// Encodes `message` into the send buffer.
    pub fn queue(&mut self, message: &Message) -> anyhow::Result<()> {
        encode_frame(message, &mut self.write_buf).map_err(|e| anyhow!("cannot encode {}: {e}", message.kind()))
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.write_buf.is_empty() {
            self.stream.write_all(&self.write_buf).await.context("cannot send to the tracker")?;
            self.stream.flush().await.context("cannot send to the tracker")?;
            self.write_buf.clear();
        }
        Ok(())
    }

    /// The next whole message already received, if any.
    fn try_next(&mut self) -> anyhow::Result<Option<Message>> {
        decode_frame(&mut self.read_buf).map_err(|e| anyhow!("undecodable frame from the tracker: {e}"))
    }

    /// The next message, reading as needed.
    pub async fn recv(&mut self) -> anyhow::Result<Message> {
        loop {
            if let Some(message) = self.try_next()? {
                return Ok(message);
            }
            let mut chunk = vec![0u8; READ_CHUNK_BYTES];
            let n = self.stream.read(&mut chunk).await.context("cannot read from the tracker")?;
            self.read_buf.extend_from_slice(&chunk[..n]);
            if n == 0 {
                bail!("the tracker closed the connection");
            }
        }
    }

    /// Sends `requests` with at most `window` awaiting a reply, passing every request and its
    /// reply (the tracker answers in order) to `on_reply`; returns once every request sent has
    /// had its reply.
    pub async fn pipeline(
        &mut self,
        mut requests: impl Iterator<Item = Message>,
        window: usize,
        mut on_reply: impl FnMut(&Message, Message),
    ) -> anyhow::Result<()> {
        let mut outstanding = VecDeque::with_capacity(window);
        loop {
            while outstanding.len() < window {
                let Some(request) = requests.next() else { break };
                self.queue(&request)?;
                outstanding.push_back(request);
            }
            let Some(request) = outstanding.pop_front() else { return Ok(()) };
            self.flush().await?;
            on_reply(&request, self.recv().await?);
            while let Some(request) = outstanding.front() {
                let Some(reply) = self.try_next()? else { break };
                on_reply(request, reply);
                outstanding.pop_front();
            }
        }
    }
}
