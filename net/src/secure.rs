//! The encrypted transport under every connection: a Noise handshake that proves each side's
//! static key, and so its peer id, and checks that both hold the same swarm key; then every
//! byte both ways in authenticated, encrypted chunks.
//!
//! The handshake is `Noise_XXpsk0_25519_AESGCM_SHA256`: XX has each side send its static key
//! encrypted and prove it holds the private half, so neither needs to know the other's key
//! beforehand; `psk0` mixes the swarm key into the first message, so a node with another swarm
//! key fails on that message, before the responder reveals anything about itself. An open
//! swarm uses 32 zero bytes as its swarm key. AES-GCM is chosen over ChaCha20-Poly1305 because
//! the processors this runs on do AES and GHASH in hardware, several times faster; it runs on
//! `ring`'s assembly, faster again than the portable Rust implementation.
//!
//! On the wire every Noise message (at most 65,535 bytes) follows a 2-byte big-endian length.
//! Handshake messages are at most [`HANDSHAKE_MESSAGE_BYTES_MAX`]; a responder that cannot
//! read the first one (another swarm key) answers with a zero length, the refusal, and closes,
//! so both sides can say why. A side that learns the other's id and does not trust it (not on
//! its allow-list, or, dialling a pinned address, not the pinned id: [`Trust`]) finishes its
//! part of the handshake and then sends the same refusal, an empty chunk, and closes: the
//! other side's first read fails with [`REFUSED_AFTER_HANDSHAKE`]. After the handshake the plaintext byte stream (core's frames) is
//! cut into chunks of at most [`CHUNK_PLAINTEXT_BYTES_MAX`] bytes, each sealed with the next
//! nonce of its direction: a chunk that is changed, dropped, repeated or reordered fails to
//! open and ends the connection. Frame limits apply to the plaintext. A receiver keeps only
//! ciphertext that arrived and is not yet a whole chunk: its reads ask for room as they go,
//! starting small and doubling, up to [`READ_BYTES_MAX`], only while each fills the room it
//! had, and what its buffers hold counts against the driver's read budget.

use std::collections::BTreeMap;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use p2p_core::limits::HANDSHAKE_TIMEOUT;
use p2p_core::PeerId;
use snow::resolvers::{DefaultResolver, FallbackResolver, RingResolver};
use snow::StatelessTransportState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::identity::{peer_id_of, AllowList, Identity, SwarmKey, SECRET_BYTES};

/// The Noise protocol every connection speaks.
pub const NOISE_PROTOCOL: &str = "Noise_XXpsk0_25519_AESGCM_SHA256";
/// Bound into the handshake's hash: a node of another protocol fails the handshake.
const PROLOGUE: &[u8] = b"swarm/noise/1";
/// The swarm key of an open swarm.
const OPEN_SWARM_KEY: [u8; SECRET_BYTES] = [0; SECRET_BYTES];
/// The largest Noise message (the specification's bound).
pub const NOISE_MESSAGE_BYTES_MAX: usize = 65_535;
/// Bytes of the authentication tag of each sealed chunk.
const TAG_BYTES: usize = 16;
/// The most plaintext bytes one chunk carries.
pub const CHUNK_PLAINTEXT_BYTES_MAX: usize = NOISE_MESSAGE_BYTES_MAX - TAG_BYTES;
/// Bytes of the length before every Noise message.
const LENGTH_BYTES: usize = 2;
/// The largest handshake message accepted (the longest, the second, is 96 bytes).
pub const HANDSHAKE_MESSAGE_BYTES_MAX: usize = 256;
/// Bytes of the first handshake message: an ephemeral key and the tag sealing its empty
/// payload under the swarm key.
const FIRST_MESSAGE_BYTES: usize = SECRET_BYTES + TAG_BYTES;
/// Plaintext bytes a writer seals in one go before it writes them out.
const WRITE_BATCH_BYTES: usize = 8 * CHUNK_PLAINTEXT_BYTES_MAX;
/// Room a reader asks for before a read that follows a short one.
const READ_BYTES_MIN: usize = 8 * 1024;
/// The most room a reader asks for before one read: a read that filled its room doubles the
/// next one's, up to this.
pub const READ_BYTES_MAX: usize = 4 * (LENGTH_BYTES + NOISE_MESSAGE_BYTES_MAX);
/// What a remote's refusal after the handshake means.
pub const REFUSED_AFTER_HANDSHAKE: &str =
    "refused by the remote: this node's peer id is not on its allow-list, or the remote refused its key";
/// Bytes of an unreadable answer kept to tell what answered (an HTTP server, text).
const ANSWER_SHOWN_BYTES_MAX: usize = 64;

/// What a node proves and checks in its handshakes: its key pair, in a private swarm the swarm
/// key, and whom it trusts.
#[derive(Clone, Debug)]
pub struct Keys {
    /// The node's static key pair.
    pub identity: Identity,
    /// The private swarm's key (`None`: an open swarm).
    pub swarm_key: Option<SwarmKey>,
    /// The remotes it lets its connections reach.
    pub trust: Arc<Trust>,
}

/// The remotes a node lets its connections reach, by the ids their keys prove.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// The ids allowed, both ways (`None`: any id).
    pub allow: Option<AllowList>,
    /// The id the remote at an address it dials must prove (a tracker's pinned key).
    pub pinned: BTreeMap<SocketAddr, PeerId>,
}

impl Keys {
    /// `identity` in the swarm of `swarm_key`, trusting any remote.
    pub fn new(identity: Identity, swarm_key: Option<SwarmKey>) -> Keys {
        Keys { identity, swarm_key, trust: Arc::default() }
    }

    /// A new key pair, in an open swarm (a tracker or tool that keeps no key file).
    pub fn new_open() -> Keys {
        Keys::new(Identity::generate(), None)
    }

    /// Why a remote that proved `remote` (reached at `addr`, when we dialled) is refused.
    fn distrusts(&self, remote: PeerId, dialled: Option<SocketAddr>) -> Option<HandshakeError> {
        let pinned = dialled.and_then(|addr| self.trust.pinned.get(&addr));
        if let Some(&expected) = pinned.filter(|expected| **expected != remote) {
            return Some(HandshakeError::NotPinned { expected, proven: remote });
        }
        let allowed = self.trust.allow.as_ref().is_none_or(|allow| allow.allows(remote));
        (!allowed).then_some(HandshakeError::NotAllowed(remote))
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// (Responder) The remote's first message does not open with our swarm key.
    #[error("handshake failed: the remote holds another swarm key (or none, or we hold none)")]
    SwarmKeyMismatch,
    /// (Initiator) The remote refused our first message: it holds another swarm key.
    #[error("handshake failed: refused by the remote: it holds another swarm key (or none, or we hold none)")]
    RefusedSwarmKey,
    /// The remote proved an id that is not on our allow-list: we refused it.
    #[error("refused peer id {0}: it is not on this node's allow-list (--allow)")]
    NotAllowed(PeerId),
    /// (Initiator) The remote at a pinned address proved another id than the pinned one.
    #[error("handshake failed: the remote proved peer id {proven}, not {expected} pinned by --tracker ID@ADDR")]
    NotPinned {
        /// The id pinned for the address.
        expected: PeerId,
        /// The id the remote proved.
        proven: PeerId,
    },
    /// The remote's bytes are not a swarm handshake; `answer` holds the first of them.
    #[error("handshake failed: the remote does not speak the swarm protocol")]
    NotSwarm {
        /// The first bytes the remote sent.
        answer: Vec<u8>,
    },
    /// A handshake message failed to decrypt or authenticate.
    #[error("handshake failed: {0}")]
    Noise(#[from] snow::Error),
    /// The socket failed or closed during the handshake.
    #[error("handshake failed: {0}")]
    Io(#[from] io::Error),
    /// The handshake did not finish in time.
    #[error("handshake failed: no answer within {0:?}")]
    TimedOut(Duration),
}

/// An open, authenticated connection: its two halves and the remote's proven peer id.
#[derive(Debug)]
pub struct SecureStream {
    reader: SecureReader,
    writer: SecureWriter,
    peer_id: PeerId,
}

/// The receiving half of a [`SecureStream`].
pub struct SecureReader {
    half: OwnedReadHalf,
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    /// Received ciphertext not yet opened (at most [`READ_BYTES_MAX`]).
    sealed: BytesMut,
    /// Room to ask for before the next read.
    read_room_bytes: usize,
    /// Opened bytes not yet taken (by [`AsyncRead`] readers only).
    opened: BytesMut,
}

/// The sending half of a [`SecureStream`].
pub struct SecureWriter {
    half: OwnedWriteHalf,
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    /// Sealed chunks not yet written.
    sealed: BytesMut,
    /// One chunk's plaintext, gathered from the caller's slices.
    gathered: Vec<u8>,
    /// Bytes handed to the socket so far: the position in the connection's byte stream.
    written: u64,
}

/// Opens a connection's transport as the side that dialled: proves our key, learns the
/// remote's, within [`HANDSHAKE_TIMEOUT`].
pub async fn connect(stream: TcpStream, keys: &Keys) -> Result<SecureStream, HandshakeError> {
    within_timeout(initiate(stream, keys)).await
}

/// Opens a connection's transport as the side that accepted it; see [`connect`].
pub async fn accept(stream: TcpStream, keys: &Keys) -> Result<SecureStream, HandshakeError> {
    within_timeout(respond(stream, keys)).await
}

async fn within_timeout(
    handshake: impl std::future::Future<Output = Result<SecureStream, HandshakeError>>,
) -> Result<SecureStream, HandshakeError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await.unwrap_or(Err(HandshakeError::TimedOut(HANDSHAKE_TIMEOUT)))
}

fn builder(keys: &Keys) -> snow::Builder<'_> {
    let params = NOISE_PROTOCOL.parse().unwrap_or_else(|_| unreachable!("{NOISE_PROTOCOL} is a valid Noise name"));
    let swarm_key = keys.swarm_key.as_ref().map_or(&OPEN_SWARM_KEY, SwarmKey::as_bytes);
    // ring's AES-GCM (hand-written assembly); what ring lacks (static X25519 keys) is snow's own.
    let resolver = FallbackResolver::new(Box::new(RingResolver), Box::new(DefaultResolver));
    snow::Builder::with_resolver(params, Box::new(resolver))
        .prologue(PROLOGUE)
        .local_private_key(keys.identity.private_key())
        .psk(0, swarm_key)
}

async fn initiate(mut stream: TcpStream, keys: &Keys) -> Result<SecureStream, HandshakeError> {
    no_delay(&stream);
    let mut noise = builder(keys).build_initiator()?;
    let mut message = [0u8; HANDSHAKE_MESSAGE_BYTES_MAX];
    let len = noise.write_message(&[], &mut message)?;
    write_handshake_message(&mut stream, &message[..len]).await?;
    let answer = read_handshake_message(&mut stream).await?;
    if answer.is_empty() {
        return Err(HandshakeError::RefusedSwarmKey);
    }
    noise.read_message(&answer, &mut message)?;
    let distrust = keys.distrusts(remote_id(&noise)?, stream.peer_addr().ok());
    let len = noise.write_message(&[], &mut message)?;
    write_handshake_message(&mut stream, &message[..len]).await?;
    if let Some(distrust) = distrust {
        return Err(refuse(stream, distrust).await);
    }
    SecureStream::open(stream, noise)
}

async fn respond(mut stream: TcpStream, keys: &Keys) -> Result<SecureStream, HandshakeError> {
    no_delay(&stream);
    let mut noise = builder(keys).build_responder()?;
    let mut message = [0u8; HANDSHAKE_MESSAGE_BYTES_MAX];
    let first = read_handshake_message(&mut stream).await?;
    if first.len() != FIRST_MESSAGE_BYTES {
        let mut answer = (first.len() as u16).to_be_bytes().to_vec();
        answer.extend_from_slice(&first[..first.len().min(ANSWER_SHOWN_BYTES_MAX - LENGTH_BYTES)]);
        return Err(HandshakeError::NotSwarm { answer });
    }
    if noise.read_message(&first, &mut message).is_err() {
        // The refusal; the connection ends either way.
        write_handshake_message(&mut stream, &[]).await.ok();
        return Err(HandshakeError::SwarmKeyMismatch);
    }
    let len = noise.write_message(&[], &mut message)?;
    write_handshake_message(&mut stream, &message[..len]).await?;
    let last = read_handshake_message(&mut stream).await?;
    noise.read_message(&last, &mut message)?;
    if let Some(distrust) = keys.distrusts(remote_id(&noise)?, None) {
        return Err(refuse(stream, distrust).await);
    }
    SecureStream::open(stream, noise)
}

/// The id the remote's static key proves, once the handshake message carrying it was read.
fn remote_id(noise: &snow::HandshakeState) -> Result<PeerId, HandshakeError> {
    // XX always carries the remote's static key; a missing one is a failed handshake.
    Ok(noise.get_remote_static().map(peer_id_of).ok_or(snow::Error::Input)?)
}

/// Refuses a remote after a handshake that proved its key: sends the refusal, an empty
/// chunk (a sealed one holds at least its tag), so the remote can say why, and closes.
async fn refuse(mut stream: TcpStream, why: HandshakeError) -> HandshakeError {
    // The connection ends either way.
    write_handshake_message(&mut stream, &[]).await.ok();
    stream.shutdown().await.ok();
    why
}

/// Small frames (requests, handshake messages) leave at once.
fn no_delay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
}

async fn write_handshake_message(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let mut framed = Vec::with_capacity(LENGTH_BYTES + message.len());
    framed.extend_from_slice(&(message.len() as u16).to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// Reads one handshake message (empty: the refusal). A length beyond the handshake's bound
/// means the remote speaks something else: what it sent first is kept to name it.
async fn read_handshake_message(stream: &mut TcpStream) -> Result<Vec<u8>, HandshakeError> {
    let mut length = [0u8; LENGTH_BYTES];
    stream.read_exact(&mut length).await?;
    let len = usize::from(u16::from_be_bytes(length));
    if len > HANDSHAKE_MESSAGE_BYTES_MAX {
        let mut answer = vec![0u8; ANSWER_SHOWN_BYTES_MAX];
        answer[..LENGTH_BYTES].copy_from_slice(&length);
        // Whatever else already arrived; the answer is only shown.
        let more = stream.read(&mut answer[LENGTH_BYTES..]).await.unwrap_or(0);
        answer.truncate(LENGTH_BYTES + more);
        return Err(HandshakeError::NotSwarm { answer });
    }
    let mut message = vec![0u8; len];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

impl SecureStream {
    fn open(stream: TcpStream, noise: snow::HandshakeState) -> Result<SecureStream, HandshakeError> {
        let peer_id = remote_id(&noise)?;
        let transport = Arc::new(noise.into_stateless_transport_mode()?);
        let (read_half, write_half) = stream.into_split();
        let reader = SecureReader {
            half: read_half,
            transport: transport.clone(),
            nonce: 0,
            sealed: BytesMut::new(),
            read_room_bytes: READ_BYTES_MIN,
            opened: BytesMut::new(),
        };
        let writer = SecureWriter {
            half: write_half,
            transport,
            nonce: 0,
            sealed: BytesMut::new(),
            gathered: Vec::new(),
            written: 0,
        };
        Ok(SecureStream { reader, writer, peer_id })
    }

    /// The remote's peer id, proven by its key in the handshake.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The TCP stream underneath, for socket options.
    pub fn tcp(&self) -> &TcpStream {
        self.writer.half.as_ref()
    }

    /// The two halves, for a reader task and a writer task.
    pub fn into_split(self) -> (SecureReader, SecureWriter) {
        (self.reader, self.writer)
    }
}

impl SecureReader {
    /// Waits until the socket has bytes (or its end) to read.
    pub async fn readable(&self) -> io::Result<()> {
        self.half.readable().await
    }

    /// Reads what the socket holds without waiting and appends the plaintext of every whole
    /// chunk to `plain`. `Ok(0)` at the end of the stream; `WouldBlock` when no whole chunk
    /// arrived yet.
    pub fn try_read_buf(&mut self, plain: &mut BytesMut) -> io::Result<usize> {
        let room = self.read_room();
        self.sealed.reserve(room);
        let read = self.half.try_read_buf(&mut self.sealed)?;
        if read == 0 {
            return if self.sealed.is_empty() { Ok(0) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
        }
        // More is likely waiting behind a read that filled its room: fewer, larger reads while
        // data streams in, small ones again once it trickles.
        self.read_room_bytes = if read >= room { (room * 2).min(READ_BYTES_MAX) } else { READ_BYTES_MIN };
        match self.open_chunks(plain)? {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            opened => Ok(opened),
        }
    }

    /// Bytes this reader's buffers hold (allocated), for the driver's read budget.
    pub fn buffer_bytes(&self) -> usize {
        self.sealed.capacity() + self.opened.capacity()
    }

    /// Frees the buffers when they hold no unread byte.
    pub fn release_if_drained(&mut self) {
        if self.sealed.is_empty() {
            self.sealed = BytesMut::new();
        }
        if self.opened.is_empty() {
            self.opened = BytesMut::new();
        }
    }

    /// Room to ask for before a read: at least the rest of the chunk under way.
    fn read_room(&self) -> usize {
        let rest_of_chunk = self.sealed.get(..LENGTH_BYTES).map_or(0, |length| {
            let chunk = LENGTH_BYTES + usize::from(u16::from_be_bytes([length[0], length[1]]));
            chunk.saturating_sub(self.sealed.len())
        });
        rest_of_chunk.max(self.read_room_bytes)
    }

    /// Opens every whole chunk received, appending its plaintext to `plain`; returns the
    /// plaintext bytes added.
    fn open_chunks(&mut self, plain: &mut BytesMut) -> io::Result<usize> {
        let mut added = 0;
        while let Some(length) = self.sealed.get(..LENGTH_BYTES) {
            let len = usize::from(u16::from_be_bytes([length[0], length[1]]));
            if len == 0 {
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, REFUSED_AFTER_HANDSHAKE));
            }
            if len < TAG_BYTES {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "a sealed chunk shorter than its tag"));
            }
            let Some(chunk) = self.sealed.get(LENGTH_BYTES..LENGTH_BYTES + len) else { break };
            let start = plain.len();
            plain.resize(start + len - TAG_BYTES, 0);
            let opened = self.transport.read_message(self.nonce, chunk, &mut plain[start..]).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "a chunk failed authentication (altered in transit?)")
            })?;
            plain.truncate(start + opened);
            self.nonce += 1;
            self.sealed.advance(LENGTH_BYTES + len);
            added += opened;
        }
        Ok(added)
    }
}

/// For clients that read through `tokio_util`'s `Framed`.
impl AsyncRead for SecureReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.opened.is_empty() {
            let mut scratch = [0u8; READ_BYTES_MIN];
            let mut read = ReadBuf::new(&mut scratch);
            ready!(Pin::new(&mut this.half).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                let end = if this.sealed.is_empty() { Ok(()) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
                return Poll::Ready(end);
            }
            this.sealed.extend_from_slice(read.filled());
            let mut opened = std::mem::take(&mut this.opened);
            this.open_chunks(&mut opened)?;
            this.opened = opened;
        }
        let taken = buf.remaining().min(this.opened.len());
        buf.put_slice(&this.opened[..taken]);
        this.opened.advance(taken);
        Poll::Ready(Ok(()))
    }
}

impl SecureWriter {
    /// Bytes handed to the socket so far (sealed: the position in the connection's byte stream).
    pub fn socket_bytes_written(&self) -> u64 {
        self.written
    }

    /// Of [`SecureWriter::socket_bytes_written`], the bytes the socket has sent on: those it no
    /// longer holds unsent (sent and not yet acknowledged counts as sent). All of them when the
    /// socket cannot tell.
    pub fn socket_bytes_sent(&self) -> u64 {
        match socket_unsent_bytes(self.half.as_ref()) {
            Ok(unsent) => self.written.saturating_sub(unsent),
            Err(e) => {
                tracing::trace!("cannot read a socket's unsent bytes: {e}");
                self.written
            }
        }
    }

    /// Seals up to [`WRITE_BATCH_BYTES`] of `slices` into chunks; returns the plaintext bytes
    /// taken.
    fn seal(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut taken = 0;
        'slices: for slice in slices {
            let mut rest: &[u8] = slice;
            while !rest.is_empty() {
                if !self.gathered.is_empty() && rest.len() >= CHUNK_PLAINTEXT_BYTES_MAX {
                    // A long slice (a block's payload) after short ones (its frame's head):
                    // the short ones go as a chunk of their own, so the long one is sealed
                    // where it lies rather than copied in behind them.
                    self.seal_gathered()?;
                }
                let room = (CHUNK_PLAINTEXT_BYTES_MAX - self.gathered.len()).min(WRITE_BATCH_BYTES - taken);
                if room == 0 {
                    break 'slices;
                }
                let part = rest.len().min(room);
                if self.gathered.is_empty() && part == CHUNK_PLAINTEXT_BYTES_MAX {
                    self.seal_chunk(&rest[..part])?;
                } else {
                    self.gathered.extend_from_slice(&rest[..part]);
                    if self.gathered.len() == CHUNK_PLAINTEXT_BYTES_MAX {
                        self.seal_gathered()?;
                    }
                }
                rest = &rest[part..];
                taken += part;
            }
        }
        if !self.gathered.is_empty() {
            self.seal_gathered()?;
        }
        Ok(taken)
    }

    fn seal_gathered(&mut self) -> io::Result<()> {
        let gathered = std::mem::take(&mut self.gathered);
        let sealed = self.seal_chunk(&gathered);
        self.gathered = gathered;
        self.gathered.clear();
        sealed
    }

    /// Seals `plaintext`, at most [`CHUNK_PLAINTEXT_BYTES_MAX`], as the next chunk.
    fn seal_chunk(&mut self, plaintext: &[u8]) -> io::Result<()> {
        let len = plaintext.len() + TAG_BYTES;
        self.sealed.put_u16(len as u16);
        let start = self.sealed.len();
        self.sealed.resize(start + len, 0);
        self.transport
            .write_message(self.nonce, plaintext, &mut self.sealed[start..])
            .map_err(|e| io::Error::other(format!("cannot seal a chunk: {e}")))?;
        self.nonce += 1;
        Ok(())
    }

    /// Writes every sealed chunk out.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.sealed.is_empty() {
            let written = ready!(Pin::new(&mut self.half).poll_write(cx, &self.sealed))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sealed.advance(written);
            self.written += written as u64;
        }
        Poll::Ready(Ok(()))
    }
}

/// Bytes `socket` holds that it has not sent yet (Linux's `SIOCOUTQNSD`). The one call here
/// that no maintained crate wraps safely: `TCP_NOTSENT_LOWAT` bounds these bytes only when
/// the socket takes a new segment, and a write that tops up the last unsent one is taken
/// whole, so only the count itself tells when a frame has left.
#[allow(unsafe_code)]
fn socket_unsent_bytes(socket: &TcpStream) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut unsent: libc::c_int = 0;
    // SAFETY: `SIOCOUTQNSD` writes one `int` through its argument, which points at `unsent`,
    // alive for the call; the descriptor is the open socket `socket` borrows.
    let status = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCOUTQNSD, &mut unsent as *mut libc::c_int) };
    if status == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(unsent).unwrap_or(0))
}

impl AsyncWrite for SecureWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        let taken = this.seal(slices)?;
        // Start sending at once; what the socket does not take yet goes on the next call or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        // An idle writer keeps no buffer.
        this.sealed = BytesMut::new();
        Pin::new(&mut this.half).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.half).poll_shutdown(cx)
    }
}

/// A whole stream for `tokio_util`'s `Framed` (the tool clients).
impl AsyncRead for SecureStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for SecureStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().writer).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().writer).poll_write_vectored(cx, slices)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_shutdown(cx)
    }
}

impl std::fmt::Debug for SecureReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureReader").field("nonce", &self.nonce).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SecureWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureWriter").field("nonce", &self.nonce).finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;

    /// Both ends of a loopback connection after their handshakes, the dialler's first, each
    /// with a new key pair and the given swarm key.
    pub(crate) async fn handshaken(
        dialler_swarm_key: Option<SwarmKey>,
        acceptor_swarm_key: Option<SwarmKey>,
    ) -> (Result<SecureStream, HandshakeError>, Result<SecureStream, HandshakeError>, Keys, Keys) {
        let dialler = Keys::new(Identity::generate(), dialler_swarm_key);
        let acceptor = Keys::new(Identity::generate(), acceptor_swarm_key);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let (dialled, accepted) = handshaken_with(listener, &dialler, &acceptor).await;
        (dialled, accepted, dialler, acceptor)
    }

    /// Both ends of a connection to `listener` after their handshakes, the dialler's first.
    async fn handshaken_with(
        listener: tokio::net::TcpListener,
        dialler: &Keys,
        acceptor: &Keys,
    ) -> (Result<SecureStream, HandshakeError>, Result<SecureStream, HandshakeError>) {
        let addr = listener.local_addr().expect("bound");
        let dial = async { connect(TcpStream::connect(addr).await.expect("connects"), dialler).await };
        let answer = async { accept(listener.accept().await.expect("accepts").0, acceptor).await };
        tokio::join!(dial, answer)
    }

    /// Keys of a new key pair in an open swarm that trust what `trust` says.
    fn trusting(trust: Trust) -> Keys {
        Keys { trust: Arc::new(trust), ..Keys::new_open() }
    }

    /// The error of the first read on `stream`, which the remote refused.
    async fn refusal_read(stream: Result<SecureStream, HandshakeError>) -> io::Error {
        let mut stream = stream.expect("the refused side finishes its handshake");
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect_err("the remote refused")
    }

    #[actix_rt::test]
    async fn an_id_off_the_allow_list_is_refused_on_both_sides_whichever_dials() {
        let listed = Keys::new_open();
        let list = AllowList::parse(&listed.identity.peer_id().to_string()).expect("one id");
        let strict = trusting(Trust { allow: Some(list), ..Trust::default() });
        let stranger = Keys::new_open();
        for (dialler, acceptor) in [(&stranger, &strict), (&strict, &stranger)] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
            let (dialled, accepted) = handshaken_with(listener, dialler, acceptor).await;
            let (refuser, refused) =
                if dialler.trust.allow.is_some() { (dialled, accepted) } else { (accepted, dialled) };
            let proven = stranger.identity.peer_id();
            assert!(matches!(refuser, Err(HandshakeError::NotAllowed(id)) if id == proven), "{refuser:?}");
            let error = refusal_read(refused).await;
            assert_eq!(error.kind(), io::ErrorKind::PermissionDenied, "{error}");
            assert!(error.to_string().contains("allow-list"), "{error}");
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let (dialled, accepted) = handshaken_with(listener, &listed, &strict).await;
        assert!(dialled.is_ok() && accepted.is_ok(), "a listed id is let in");
    }

    #[actix_rt::test]
    async fn a_pinned_address_must_prove_the_pinned_id() {
        let (tracker, impostor) = (Keys::new_open(), Keys::new_open());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("bound");
        let pinned = BTreeMap::from([(addr, tracker.identity.peer_id())]);
        let peer = trusting(Trust { pinned, ..Trust::default() });
        let (dialled, accepted) = handshaken_with(listener, &peer, &impostor).await;
        let (expected, proven) = (tracker.identity.peer_id(), impostor.identity.peer_id());
        assert!(
            matches!(dialled, Err(HandshakeError::NotPinned { expected: e, proven: p }) if e == expected && p == proven),
            "{dialled:?}"
        );
        assert_eq!(refusal_read(accepted).await.kind(), io::ErrorKind::PermissionDenied);
        let listener = tokio::net::TcpListener::bind(addr).await.expect("binds again");
        let (dialled, accepted) = handshaken_with(listener, &peer, &tracker).await;
        assert!(dialled.is_ok() && accepted.is_ok(), "the pinned key is let in");
    }

    /// Both ends of an open-swarm connection, the dialler's first.
    pub(crate) async fn connected_pair() -> (SecureStream, SecureStream) {
        let (dialled, accepted, ..) = handshaken(None, None).await;
        (dialled.expect("the dialler's handshake"), accepted.expect("the acceptor's handshake"))
    }

    #[actix_rt::test]
    async fn each_side_learns_the_others_proven_id_and_bytes_cross_both_ways() {
        let (dialled, accepted, dialler, acceptor) = handshaken(None, None).await;
        let (mut dialled, mut accepted) = (dialled.expect("dialled"), accepted.expect("accepted"));
        assert_eq!(dialled.peer_id(), acceptor.identity.peer_id());
        assert_eq!(accepted.peer_id(), dialler.identity.peer_id());
        let big: Vec<u8> = (0..3 * CHUNK_PLAINTEXT_BYTES_MAX + 17).map(|i| i as u8).collect();
        dialled.write_all(&big).await.expect("sends");
        dialled.flush().await.expect("sent");
        let mut received = vec![0u8; big.len()];
        accepted.read_exact(&mut received).await.expect("receives");
        assert!(received == big, "the bytes arrive whole and in order");
        // A frame's short head, a long payload sealed where it lies, and a short tail.
        let mut framed = Bytes::from_static(b"head:").chain(Bytes::from(big.clone())).chain(&b":tail"[..]);
        dialled.write_all_buf(&mut framed).await.expect("sends the slices");
        dialled.flush().await.expect("sent");
        let mut received = vec![0u8; big.len() + 10];
        accepted.read_exact(&mut received).await.expect("receives");
        assert!(
            received[..5] == *b"head:"
                && received[5..5 + big.len()] == big[..]
                && received[5 + big.len()..] == *b":tail"
        );
        accepted.write_all(b"back").await.expect("answers");
        accepted.flush().await.expect("answered");
        let mut back = [0u8; 4];
        dialled.read_exact(&mut back).await.expect("reads the answer");
        assert_eq!(&back, b"back");
    }

    #[actix_rt::test]
    async fn another_swarm_key_is_refused_on_both_sides() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let key = SwarmKey::create(&dir.path().join("swarm.key")).expect("a key");
        let other = SwarmKey::create(&dir.path().join("other.key")).expect("a key");
        for (dialler_key, acceptor_key) in
            [(None, Some(key.clone())), (Some(key.clone()), None), (Some(key), Some(other))]
        {
            let (dialled, accepted, ..) = handshaken(dialler_key, acceptor_key).await;
            assert!(matches!(dialled, Err(HandshakeError::RefusedSwarmKey)), "{dialled:?}");
            assert!(matches!(accepted, Err(HandshakeError::SwarmKeyMismatch)), "{accepted:?}");
        }
    }

    #[actix_rt::test]
    async fn a_chunk_altered_in_transit_ends_the_stream() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("bound");
        let keys = Keys::new_open();
        // A relay that flips one bit of the first chunk after the handshake.
        let relay = async {
            let (mut dialler, _) = listener.accept().await.expect("accepts");
            let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
            let inner_addr = inner.local_addr().expect("bound");
            let acceptor = tokio::spawn(async move {
                let keys = Keys::new_open();
                let mut stream = accept(inner.accept().await.expect("accepts").0, &keys).await.expect("handshake");
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte).await
            });
            let mut server = TcpStream::connect(inner_addr).await.expect("connects");
            let mut relayed = 0usize;
            let (mut upstream, mut downstream) = ([0u8; 4096], [0u8; 4096]);
            let handshake_bytes = 2 + FIRST_MESSAGE_BYTES + 2 + 64;
            loop {
                tokio::select! {
                    read = dialler.read(&mut upstream) => {
                        let n = read.expect("reads");
                        if n == 0 { break; }
                        for (i, byte) in upstream[..n].iter_mut().enumerate() {
                            if relayed + i == handshake_bytes + 5 { *byte ^= 1; }
                        }
                        relayed += n;
                        server.write_all(&upstream[..n]).await.expect("relays");
                    }
                    read = server.read(&mut downstream) => {
                        let Ok(n) = read else { break };
                        if n == 0 { break; }
                        dialler.write_all(&downstream[..n]).await.expect("relays");
                    }
                }
            }
            acceptor.await.expect("the acceptor ran")
        };
        let dial = async {
            let mut stream =
                connect(TcpStream::connect(addr).await.expect("connects"), &keys).await.expect("handshake");
            stream.write_all(b"hello there").await.expect("sends");
            stream.flush().await.expect("sent");
            stream.shutdown().await.ok();
        };
        let (read, ()) = tokio::join!(relay, dial);
        let error = read.expect_err("the altered chunk does not open");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }
}
