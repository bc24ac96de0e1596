//! One connection past the transport's handshake ([`crate::secure`]): a reader task that turns
//! frames into reports for the driver, and a writer task that sends the frames the driver queued.
//!
//! Framing is core's (`FrameDecoder` and `encode_frame`, also as a `tokio_util` codec,
//! [`FrameCodec`], for the client): a connection's first frame may be only as large as a
//! `Hello`, and a receive buffer grows with the bytes that arrive, never with what a length
//! prefix claims. A body costly to decode (a manifest of many pieces: over
//! [`BODY_DECODE_CHEAP_BYTES_MAX`](p2p_core::limits::BODY_DECODE_CHEAP_BYTES_MAX), not `Data`) is decoded on a blocking thread, at most
//! [`BODY_DECODES_OFF_THREAD_MAX`] at once per process, so the thread every connection shares
//! answers the others' small requests meanwhile. The reader hands the messages it has whole to the driver in one report with
//! `send().await`, so a busy driver slows the reading down instead of buffering without bound,
//! and holds no buffer while its socket is idle; what its buffer holds counts against the
//! driver's [`ReadBudget`], which evicts the largest holders when all together hold too much.
//! After a bad frame it stops reading (the machine answers and closes); after an eviction it
//! stops and reports the connection closed. The writer takes every frame queued so far, control frames ahead of
//! `Data`, and sends them with vectored writes — many small frames in one system call, a
//! `Data` payload straight from the buffer it was read into — so it keeps no buffer of its
//! own. It tells the driver when each `Data` frame has left (the machine's `Input::Sent`): not
//! when the socket took it, but when the socket's count of bytes it holds unsent says the
//! frame's last byte went out, looking again as often as the socket's pace asks while frames
//! are leaving. The bytes queued for a writer are counted so the driver can drop a connection
//! whose remote does not read. Nothing here panics
//! on what the remote sends.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Message as ActixMessage, Recipient};
use bytes::{Buf, Bytes, BytesMut};
use p2p_core::limits::BODY_DECODES_OFF_THREAD_MAX;
use p2p_core::wire::{
    body_decodes_cheaply, decode_body, decode_frame_within, encode_frame, encode_frame_parts, frame_body_bytes_max,
    FrameDecoder, Message,
};
use p2p_core::{ConnId, DecodeError, EncodeError};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, Encoder};

use crate::read_budget::{BudgetShare, ReadBudget};
use crate::secure::{SecureReader, SecureStream, SecureWriter};

/// Room reserved in a connection's read buffer before each read. The buffer grows with the
/// bytes of the frame being read and is given back whenever it is drained, so an idle
/// connection (a tracker's thousands of peers) holds no read buffer at all.
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// Most messages already received that a connection hands its driver in one report: the
/// requests a client pipelines are then handled in one go and their answers leave in one write.
pub const READ_BATCH_MESSAGES_MAX: usize = 64;
/// Most bytes queued for one connection's writer; beyond this the remote is not reading and
/// the connection is dropped. (A well-behaved remote keeps far less in flight: its pipelining
/// depth in blocks.)
pub const WRITE_QUEUE_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Most bytes queued for all the connections of one driver; a connection whose frame would
/// exceed it is dropped, so slow readers together cannot pin unbounded memory.
pub const WRITE_QUEUE_TOTAL_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Bytes a socket may hold that did not go out yet before it takes a new segment
/// (`TCP_NOTSENT_LOWAT`), so queued data waits in the writer's queue, where control frames
/// pass it, rather than in the kernel. It does not bound what a write takes: one that tops up
/// the last unsent segment is taken whole, a block at once, which is why the writer reports a
/// frame sent from the socket's unsent count, not from the write. Bytes sent and not yet
/// acknowledged are not counted: the congestion window still fills. Where the link is fast
/// the socket drains as fast as the writer refills it, and the low mark costs no throughput
/// (BENCHMARKS.md, "Transfer").
pub const SOCKET_UNSENT_BYTES_MAX: u32 = 16 * 1024;
/// How long a closing connection may take to flush what was queued for it.
pub const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The length-prefixed CBOR framing of core, as a `tokio_util` codec for one connection (its
/// first frame is held to the size of a `Hello`).
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameCodec {
    first_frame_decoded: bool,
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The incoming frame was oversized or did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The outgoing message does not fit in a frame.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The receive buffers of all connections held more than their budget, and this
    /// connection's held the most.
    #[error("evicted: this connection held the most of the receive buffers' {max_bytes}-byte budget")]
    OverBudget {
        /// The budget of all the receive buffers together.
        max_bytes: usize,
    },
}

impl Decoder for FrameCodec {
    type Item = Message;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        let message = decode_frame_within(src, frame_body_bytes_max(self.first_frame_decoded))?;
        self.first_frame_decoded |= message.is_some();
        Ok(message)
    }
}

impl Encoder<&Message> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, message: &Message, dst: &mut BytesMut) -> Result<(), FrameError> {
        Ok(encode_frame(message, dst)?)
    }
}

/// Spare room kept in an encoding scratch buffer, so small frames rarely allocate.
const SCRATCH_SPARE_BYTES: usize = 64 * 1024;

/// One encoded frame, ready for a writer: the encoded head and, for `Data`, the payload that
/// follows it on the wire, still the buffer the block was read into.
#[derive(Clone, Debug)]
pub struct Frame {
    head: Bytes,
    payload: Bytes,
    /// A `Data` frame: reported sent when it left, and sent after control frames queued with it.
    data: bool,
}

impl Frame {
    /// Bytes the frame takes on the wire.
    pub fn wire_len(&self) -> usize {
        self.head.len() + self.payload.len()
    }
}

/// Encodes `message` as one frame whose head is carved out of `scratch` (whose spare capacity
/// is reused by the next frames, so encoding seldom allocates).
pub fn encode_into(message: &Message, scratch: &mut BytesMut) -> Result<Frame, FrameError> {
    if scratch.capacity() < 1024 {
        scratch.reserve(SCRATCH_SPARE_BYTES);
    }
    let payload = encode_frame_parts(message, scratch)?;
    let data = matches!(message, Message::Data { .. });
    Ok(Frame { head: scratch.split().freeze(), payload, data })
}

/// What a connection tells its driver.
#[derive(Debug)]
pub enum ConnReport {
    /// Whole messages arrived: those read together, in order (at most
    /// [`READ_BATCH_MESSAGES_MAX`]). A `Data` message is always the last of its batch, and the
    /// batch carries its share of the write budget, to be released once its bytes are on disk
    /// (or dropped).
    Messages(Vec<Message>, Option<OwnedSemaphorePermit>),
    /// A frame was oversized or did not decode; nothing more is read.
    BadFrame(DecodeError),
    /// This many more `Data` frames, in the order they were queued, left through the socket
    /// (their last byte is no longer among its unsent ones): the driver's `Input::Sent`.
    Sent(u32),
    /// The stream ended or failed.
    Closed,
}

/// A report from connection `conn`; `token` tells this connection from an earlier one that
/// had the same name.
#[derive(Debug, ActixMessage)]
#[rtype(result = "()")]
pub struct ConnEvent {
    /// The connection.
    pub conn: ConnId,
    /// The connection's unique token.
    pub token: u64,
    /// What happened.
    pub report: ConnReport,
}

enum WriterCmd {
    Frame(QueuedFrame),
    Close,
}

/// Bytes waiting in writers' queues: one connection's and its driver's total.
#[derive(Debug)]
struct QueueCounters {
    conn: AtomicUsize,
    total: Arc<AtomicUsize>,
}

/// A frame in a writer's queue; its bytes are counted until it is dropped (written, or
/// discarded with its connection).
struct QueuedFrame {
    frame: Frame,
    counted: usize,
    counters: Arc<QueueCounters>,
}

impl Drop for QueuedFrame {
    fn drop(&mut self) {
        self.counters.conn.fetch_sub(self.counted, Ordering::Relaxed);
        self.counters.total.fetch_sub(self.counted, Ordering::Relaxed);
    }
}

/// The frames a writer has taken off its queue and not yet fully sent, as one [`Buf`] whose
/// chunks are the frames' heads and payloads, so a vectored write sends many at once.
#[derive(Default)]
struct Outgoing {
    frames: VecDeque<QueuedFrame>,
    remaining: usize,
    /// Bytes written so far.
    written: usize,
    /// Where each `Data` frame fully written since [`Outgoing::take_data_ends`] ended, in
    /// bytes written.
    data_ends: Vec<usize>,
}

impl Outgoing {
    /// Adds a frame taken off the queue, before the round's writing starts: a control frame
    /// goes ahead of the round's `Data` frames, so it never waits for bulk data.
    fn push(&mut self, queued: QueuedFrame) {
        self.remaining += queued.frame.wire_len();
        let first_data = (!queued.frame.data).then(|| self.frames.iter().position(|f| f.frame.data)).flatten();
        match first_data {
            Some(at) => self.frames.insert(at, queued),
            None => self.frames.push_back(queued),
        }
    }

    /// Where the `Data` frames fully written since the last call ended, in bytes written.
    fn take_data_ends(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.data_ends)
    }
}

impl Buf for Outgoing {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        match self.frames.front() {
            Some(queued) if !queued.frame.head.is_empty() => &queued.frame.head,
            Some(queued) => &queued.frame.payload,
            None => &[],
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let parts = self.frames.iter().flat_map(|queued| [&queued.frame.head, &queued.frame.payload]);
        let mut filled = 0;
        for (slot, part) in dst.iter_mut().zip(parts.filter(|part| !part.is_empty())) {
            *slot = IoSlice::new(part);
            filled += 1;
        }
        filled
    }

    fn advance(&mut self, mut count: usize) {
        assert!(count <= self.remaining, "advanced past the queued bytes");
        self.remaining -= count;
        self.written += count;
        let end = self.written;
        while count > 0 {
            let Some(front) = self.frames.front_mut() else { return };
            let frame = &mut front.frame;
            let from_head = count.min(frame.head.len());
            frame.head.advance(from_head);
            let from_payload = (count - from_head).min(frame.payload.len());
            frame.payload.advance(from_payload);
            count -= from_head + from_payload;
            if frame.head.is_empty() && frame.payload.is_empty() {
                if frame.data {
                    self.data_ends.push(end - count);
                }
                self.frames.pop_front();
            }
        }
    }
}

/// The driver's handle on one open connection.
#[derive(Debug)]
pub struct Connection {
    token: u64,
    remote: SocketAddr,
    queue: mpsc::UnboundedSender<WriterCmd>,
    counters: Arc<QueueCounters>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl std::fmt::Debug for WriterCmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriterCmd::Frame(queued) => write!(f, "Frame({} bytes)", queued.frame.wire_len()),
            WriterCmd::Close => f.write_str("Close"),
        }
    }
}

/// The frame could not be queued: the connection's writer is gone or too far behind.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The writer ended (the socket failed).
    Gone,
    /// More than [`WRITE_QUEUE_BYTES_MAX`] would be waiting for this connection.
    Full,
    /// More than [`WRITE_QUEUE_TOTAL_BYTES_MAX`] would be waiting for all connections.
    Overloaded,
}

impl Connection {
    /// Starts the reader and writer tasks of `stream` (past its handshake), reporting to `driver`. With a
    /// `write_budget`, the reader takes one permit per payload byte of each `Data` message
    /// before handing it on, so received data not yet on disk is bounded. `queued_total`
    /// counts the bytes queued for every writer of the driver; `read_budget` bounds the bytes
    /// held by all its receive buffers.
    pub fn start(
        stream: SecureStream,
        (conn, token, remote): (ConnId, u64, SocketAddr),
        driver: Recipient<ConnEvent>,
        write_budget: Option<Arc<Semaphore>>,
        queued_total: Arc<AtomicUsize>,
        read_budget: &Arc<ReadBudget>,
    ) -> Connection {
        if let Err(e) = socket2::SockRef::from(stream.tcp()).set_tcp_notsent_lowat(SOCKET_UNSENT_BYTES_MAX) {
            tracing::debug!("{conn} {remote}: cannot set TCP_NOTSENT_LOWAT: {e}");
        }
        let (read_half, write_half) = stream.into_split();
        let (queue, commands) = mpsc::unbounded_channel();
        let counters = Arc::new(QueueCounters { conn: AtomicUsize::new(0), total: queued_total });
        let reader = Reader { half: read_half, decoder: FrameDecoder::new(), share: read_budget.join(token), conn };
        let reader = tokio::spawn(read_loop(reader, token, driver.clone(), write_budget));
        let writer = tokio::spawn(write_loop(write_half, commands, conn, token, driver));
        Connection { token, remote, queue, counters, reader, writer }
    }

    /// The connection's unique token.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The remote end's address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Queues a frame for sending.
    pub fn send(&self, frame: Frame) -> Result<(), QueueError> {
        let len = frame.wire_len();
        if self.counters.conn.load(Ordering::Relaxed) + len > WRITE_QUEUE_BYTES_MAX {
            return Err(QueueError::Full);
        }
        if self.counters.total.load(Ordering::Relaxed) + len > WRITE_QUEUE_TOTAL_BYTES_MAX {
            return Err(QueueError::Overloaded);
        }
        self.counters.conn.fetch_add(len, Ordering::Relaxed);
        self.counters.total.fetch_add(len, Ordering::Relaxed);
        let queued = QueuedFrame { frame, counted: len, counters: self.counters.clone() };
        // A refused frame is dropped here, which uncounts it.
        self.queue.send(WriterCmd::Frame(queued)).map_err(|_| QueueError::Gone)
    }

    /// Stops reading, flushes what was queued (for at most [`CLOSE_FLUSH_TIMEOUT`]) and closes.
    /// The returned task ends when the socket is closed.
    pub fn close(self) -> JoinHandle<()> {
        self.reader.abort();
        // A writer that already ended has nothing left to flush.
        self.queue.send(WriterCmd::Close).ok();
        let mut writer = self.writer;
        tokio::spawn(async move {
            if tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, &mut writer).await.is_err() {
                writer.abort();
            }
        })
    }

    /// Drops the connection at once, discarding what was queued.
    pub fn abort(self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// The lanes of [`BODY_DECODES_OFF_THREAD_MAX`]: costly frame bodies (a manifest of many pieces)
/// are decoded on blocking threads, so the connections' thread keeps answering the cheap
/// requests of others (a tracker's locates behind a flood of announces) meanwhile.
static DEAR_DECODES: Semaphore = Semaphore::const_new(BODY_DECODES_OFF_THREAD_MAX);

/// The receiving side of a connection: its socket half, its frames so far and its share of the
/// driver's read budget.
struct Reader {
    half: SecureReader,
    decoder: FrameDecoder,
    share: BudgetShare,
    conn: ConnId,
}

async fn read_loop(mut reader: Reader, token: u64, driver: Recipient<ConnEvent>, write_budget: Option<Arc<Semaphore>>) {
    let conn = reader.conn;
    loop {
        let (batch, end) = reader.read_batch(write_budget.as_ref()).await;
        if let Some((messages, permit)) = batch {
            if driver.send(ConnEvent { conn, token, report: ConnReport::Messages(messages, permit) }).await.is_err() {
                return;
            }
        }
        if let Some(report) = end {
            // The driver may be gone already; the connection ends either way.
            driver.send(ConnEvent { conn, token, report }).await.ok();
            return;
        }
    }
}

/// Messages received, with the budget share of the `Data` message that ends them, if any.
type Batch = (Vec<Message>, Option<OwnedSemaphorePermit>);

impl Reader {
    /// The next message: one already buffered, or one read. While it waits for the socket, a
    /// drained buffer is given back. `None` at the end of the stream.
    async fn next_message(&mut self) -> Option<Result<Message, FrameError>> {
        loop {
            if let Some(decoded) = self.buffered_message().await {
                return Some(decoded);
            }
            self.release_if_drained();
            tokio::select! {
                biased;
                () = self.share.evicted() => return Some(Err(self.over_budget())),
                readable = self.half.readable() => {
                    if let Err(e) = readable {
                        return Some(Err(e.into()));
                    }
                }
            }
            // A frame's room is reserved whole at its prefix only while the buffers hold under
            // half their budget: near it, room follows the bytes that arrive, so the remotes
            // that send most are the ones evicted, not those with the longest frames.
            self.decoder.reserve(READ_BUFFER_BYTES, self.share.roomy());
            let read = self.half.try_read_buf(self.decoder.buffer_mut());
            if !self.share.hold(self.buffer_bytes()) {
                return Some(Err(self.over_budget()));
            }
            match read {
                Ok(0) if self.decoder.buffered_bytes() == 0 => return None,
                Ok(0) => return Some(Err(io::Error::from(io::ErrorKind::UnexpectedEof).into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// The next message already buffered, if any. A body [`body_decodes_cheaply`] does not
    /// approve of is decoded on a blocking thread, one of [`DEAR_DECODES`]' lanes, and counts
    /// against the read budget until then.
    async fn buffered_message(&mut self) -> Option<Result<Message, FrameError>> {
        let body = match self.decoder.next_body() {
            Ok(body) => body?,
            Err(e) => return Some(Err(e.into())),
        };
        if body_decodes_cheaply(&body) {
            return Some(decode_body(body).map_err(FrameError::from));
        }
        if !self.share.hold(self.buffer_bytes() + body.len()) {
            return Some(Err(self.over_budget()));
        }
        // The semaphore is static and never closed.
        let lane = DEAR_DECODES.acquire().await.ok();
        let decoded = tokio::task::spawn_blocking(move || {
            let _lane = lane;
            decode_body(body)
        });
        Some(match decoded.await {
            Ok(decoded) => decoded.map_err(FrameError::from),
            Err(e) => Err(FrameError::Io(io::Error::other(e))),
        })
    }

    fn over_budget(&self) -> FrameError {
        FrameError::OverBudget { max_bytes: self.share.max_bytes() }
    }

    /// Frees a buffer that holds no unread byte, so waiting connections hold no memory, and
    /// tells the budget what the buffer holds now.
    fn release_if_drained(&mut self) {
        self.decoder.release_if_drained();
        self.half.release_if_drained();
        self.share.hold(self.buffer_bytes());
    }

    /// Bytes the receive buffers hold: the frames' and the transport's.
    fn buffer_bytes(&self) -> usize {
        self.decoder.capacity_bytes() + self.half.buffer_bytes()
    }

    /// Waits for a message, then takes the messages already buffered behind it, up to
    /// [`READ_BATCH_MESSAGES_MAX`] or a `Data` message, which ends the batch and waits for its
    /// budget share. Also returns the report that ends the connection, when the stream ended or
    /// broke.
    async fn read_batch(&mut self, write_budget: Option<&Arc<Semaphore>>) -> (Option<Batch>, Option<ConnReport>) {
        let mut messages = Vec::new();
        let mut permit = None;
        let end = loop {
            let next = if messages.is_empty() {
                self.next_message().await
            } else {
                // Only what is buffered: no read, no wait but for a costly body's decoding.
                self.buffered_message().await
            };
            match next {
                Some(Ok(message)) => {
                    let data_bytes = match &message {
                        Message::Data { bytes, .. } => Some(bytes.len()),
                        _ => None,
                    };
                    messages.push(message);
                    if let Some(len) = data_bytes {
                        if let Some(budget) = write_budget {
                            // A frame is far smaller than the budget, and the budget is never closed.
                            permit = budget.clone().acquire_many_owned(len as u32).await.ok();
                        }
                        break None;
                    }
                    if messages.len() == READ_BATCH_MESSAGES_MAX {
                        break None;
                    }
                }
                None if !messages.is_empty() => break None,
                None => break Some(ConnReport::Closed),
                Some(Err(FrameError::Decode(e))) => {
                    tracing::debug!("{}: bad frame: {e}", self.conn);
                    break Some(ConnReport::BadFrame(e));
                }
                Some(Err(e @ FrameError::OverBudget { .. })) => {
                    tracing::warn!("{}: {e}", self.conn);
                    break Some(ConnReport::Closed);
                }
                // The remote refused our key after the handshake: worth a line.
                Some(Err(FrameError::Io(e))) if e.kind() == io::ErrorKind::PermissionDenied => {
                    tracing::warn!("{}: {e}", self.conn);
                    break Some(ConnReport::Closed);
                }
                // A socket error (reading never meets an encoding error).
                Some(Err(e)) => {
                    tracing::debug!("{}: read failed: {e}", self.conn);
                    break Some(ConnReport::Closed);
                }
            }
        };
        // The messages own their bytes now (a `Data` payload keeps its share of the allocation).
        self.release_if_drained();
        ((!messages.is_empty()).then_some((messages, permit)), end)
    }
}

async fn write_loop(
    half: SecureWriter,
    mut commands: mpsc::UnboundedReceiver<WriterCmd>,
    conn: ConnId,
    token: u64,
    driver: Recipient<ConnEvent>,
) {
    let mut out = half;
    let sent = |frames| driver.do_send(ConnEvent { conn, token, report: ConnReport::Sent(frames) });
    match write_until_close(&mut out, &mut commands, sent).await {
        Ok(()) => {
            if let Err(e) = out.shutdown().await {
                tracing::debug!("{conn}: shutdown failed: {e}");
            }
        }
        Err(e) => {
            tracing::debug!("{conn}: write failed: {e}");
            driver.do_send(ConnEvent { conn, token, report: ConnReport::Closed });
        }
    }
}

/// Writes queued frames until `Close` or the driver drops the queue: each round takes every
/// frame queued by then (control frames first) and sends them all. A `Data` frame is reported
/// to `sent` once the socket has sent its last byte on, not when it took the frame: a socket
/// takes a whole block at once even with [`SOCKET_UNSENT_BYTES_MAX`] set, and the machine
/// counts a block reported sent as beyond recall and gone from the uplink, when on a slow link
/// it would still be most of a second's sending.
async fn write_until_close(
    out: &mut SecureWriter,
    commands: &mut mpsc::UnboundedReceiver<WriterCmd>,
    sent: impl Fn(u32),
) -> io::Result<()> {
    let mut leaving = Leaving::default();
    loop {
        let command = match leaving.next_look() {
            None => commands.recv().await,
            Some(wait) => tokio::select! {
                biased;
                command = commands.recv() => command,
                () = tokio::time::sleep(wait) => {
                    report_left(out, &mut leaving, &sent);
                    continue;
                }
            },
        };
        let Some(mut command) = command else { return Ok(()) };
        // A fresh queue each round: an idle writer keeps nothing.
        let mut outgoing = Outgoing::default();
        let closing = loop {
            match command {
                WriterCmd::Frame(queued) => outgoing.push(queued),
                WriterCmd::Close => break true,
            }
            match commands.try_recv() {
                Ok(next) => command = next,
                Err(_) => break false,
            }
        };
        while outgoing.has_remaining() {
            if out.write_buf(&mut outgoing).await? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            // The transport sealed what it took; flushed, it is on the socket, and the round's
            // bytes written so far end where the socket's stream does (a frame's end is placed
            // a few bytes early: the transport's overhead on the bytes after it).
            out.flush().await?;
            let stream_end = out.socket_bytes_written();
            for end in outgoing.take_data_ends() {
                leaving.push(stream_end.saturating_sub((outgoing.written - end) as u64));
            }
            report_left(out, &mut leaving, &sent);
        }
        if closing {
            return Ok(());
        }
    }
}

/// Tells `sent` how many of the frames in `leaving` the socket has sent on by now (asking the
/// socket only while some are leaving: a tracker's writers never do).
fn report_left(out: &SecureWriter, leaving: &mut Leaving, sent: &impl Fn(u32)) {
    if leaving.next_look().is_none() {
        return;
    }
    let frames = leaving.retire(out.socket_bytes_sent(), tokio::time::Instant::now());
    if frames > 0 {
        sent(frames);
    }
}

/// Soonest the writer looks again whether the socket has sent a frame on: a frame is reported
/// at most this much late while the socket keeps its pace, and a fast socket is not looked at
/// more often than this.
const LEAVING_LOOK_MIN: Duration = Duration::from_millis(2);
/// Latest: a frame is reported at most this late when the socket's pace changes.
const LEAVING_LOOK_MAX: Duration = Duration::from_millis(25);

/// The `Data` frames a socket took and has not all sent on, each by where it ends in the
/// connection's byte stream, and when to look again: when the socket, at the pace it keeps
/// while frames are leaving, will have sent the first of them on.
#[derive(Debug, Default)]
struct Leaving {
    ends: VecDeque<u64>,
    /// Where the pace is measured from: a look while frames were leaving, and the bytes sent
    /// on by then (an idle socket's time says nothing of its pace).
    mark: Option<(tokio::time::Instant, u64)>,
    /// Bytes a second the socket sent on while frames were leaving, smoothed over the
    /// measures; none before the first.
    pace: Option<f64>,
    wait: Duration,
}

impl Leaving {
    /// A frame the socket took, ending at `end` in the stream.
    fn push(&mut self, end: u64) {
        self.ends.push_back(end);
    }

    /// Retires the frames that end by `sent`, the bytes the socket had sent on at `now`;
    /// returns how many, and plans the next look.
    fn retire(&mut self, sent: u64, now: tokio::time::Instant) -> u32 {
        let mut frames = 0;
        while self.ends.front().is_some_and(|&end| end <= sent) {
            self.ends.pop_front();
            frames += 1;
        }
        let mut stalled = false;
        match self.mark {
            // Over a span of at least the shortest wait, so a look just after a write
            // does not measure a burst.
            Some((then, before)) if now.saturating_duration_since(then) >= LEAVING_LOOK_MIN => {
                // Saturating: a socket that could not tell counted every byte written as sent.
                let pace = sent.saturating_sub(before) as f64 / now.saturating_duration_since(then).as_secs_f64();
                stalled = sent <= before;
                if !stalled {
                    self.pace = Some(self.pace.map_or(pace, |smoothed| (smoothed + pace) / 2.0));
                }
                self.mark = Some((now, sent));
            }
            Some(_) => {}
            None => self.mark = Some((now, sent)),
        }
        let Some(&next_end) = self.ends.front() else {
            self.mark = None;
            return frames;
        };
        let wait = match self.pace {
            // A remote that stopped reading: back off.
            _ if stalled => self.wait * 2,
            Some(pace) => Duration::try_from_secs_f64((next_end - sent) as f64 / pace).unwrap_or(LEAVING_LOOK_MAX),
            None => LEAVING_LOOK_MIN,
        };
        self.wait = wait.clamp(LEAVING_LOOK_MIN, LEAVING_LOOK_MAX);
        frames
    }

    /// How long to wait before looking again, while frames are leaving.
    fn next_look(&self) -> Option<Duration> {
        (!self.ends.is_empty()).then_some(self.wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_core::limits::{FRAME_BYTES_MAX, HELLO_FRAME_BYTES_MAX};
    use p2p_core::wire::ErrorCode;

    #[test]
    fn codec_round_trips_and_reports_garbage() {
        let message = Message::error(None, ErrorCode::Unexpected, "x");
        let frame = encode_into(&message, &mut BytesMut::new()).expect("fits");
        let mut buffer = BytesMut::from(&frame.head[..]);
        buffer.extend_from_slice(&[0, 0, 0, 2, 0xff, 0xff]);
        assert_eq!(FrameCodec::default().decode(&mut buffer).expect("valid"), Some(message));
        assert!(matches!(
            FrameCodec::default().decode(&mut buffer),
            Err(FrameError::Decode(DecodeError::Malformed(_)))
        ));
        let mut oversized = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(matches!(
            FrameCodec::default().decode(&mut oversized),
            Err(FrameError::Decode(DecodeError::Oversized { .. }))
        ));
    }

    fn queued(message: &Message) -> QueuedFrame {
        let frame = encode_into(message, &mut BytesMut::new()).expect("fits");
        let counters = Arc::new(QueueCounters { conn: AtomicUsize::new(0), total: Arc::new(AtomicUsize::new(0)) });
        QueuedFrame { counted: 0, frame, counters }
    }

    #[test]
    fn control_frames_go_ahead_of_data_and_data_is_placed_once_written_whole() {
        let data = |chunk| Message::Data {
            file_id: p2p_core::FileId(p2p_core::Digest([1; 32])),
            chunk: p2p_core::ChunkIndex(chunk),
            offset: 0,
            bytes: Bytes::from_static(&[7; 100]),
        };
        let mut outgoing = Outgoing::default();
        for message in [data(0), Message::List, data(1), Message::List] {
            outgoing.push(queued(&message));
        }
        let order: Vec<bool> = outgoing.frames.iter().map(|q| q.frame.data).collect();
        assert_eq!(order, [false, false, true, true], "both lists first, the data in its order");
        let lists = 2 * outgoing.frames[0].frame.wire_len();
        let data_len = outgoing.frames[2].frame.wire_len();
        outgoing.advance(lists + data_len - 1);
        assert!(outgoing.take_data_ends().is_empty(), "one byte of the first data frame is unwritten");
        outgoing.advance(1);
        assert_eq!(outgoing.take_data_ends(), [lists + data_len]);
        outgoing.advance(outgoing.remaining());
        assert_eq!(outgoing.take_data_ends(), [lists + 2 * data_len], "placed where it ended");
    }

    #[test]
    fn both_data_frames_ended_by_one_write_are_placed_where_each_ended() {
        let data = Message::Data {
            file_id: p2p_core::FileId(p2p_core::Digest([1; 32])),
            chunk: p2p_core::ChunkIndex(0),
            offset: 0,
            bytes: Bytes::from_static(&[7; 100]),
        };
        let mut outgoing = Outgoing::default();
        for _ in 0..3 {
            outgoing.push(queued(&data));
        }
        let len = outgoing.frames[0].frame.wire_len();
        outgoing.advance(2 * len + 10);
        assert_eq!(outgoing.take_data_ends(), [len, 2 * len], "the third is not written whole");
    }

    #[test]
    fn a_frame_leaves_when_the_socket_sent_its_last_byte_and_looks_follow_the_pace() {
        let start = tokio::time::Instant::now();
        let at = |millis| start + Duration::from_millis(millis);
        let millis = |n| Some(Duration::from_millis(n));
        let mut leaving = Leaving::default();
        assert_eq!(leaving.next_look(), None, "nothing leaving: no look");
        leaving.push(100_000);
        leaving.push(200_000);
        assert_eq!(leaving.retire(20_000, at(0)), 0);
        assert_eq!(leaving.next_look(), Some(LEAVING_LOOK_MIN), "no pace yet");
        // 10,000 bytes a millisecond: the first frame's 60,000 still unsent take 6 ms.
        assert_eq!(leaving.retire(40_000, at(2)), 0);
        assert_eq!(leaving.next_look(), millis(6));
        // A look sooner than the shortest wait (after a write) measures no pace.
        assert_eq!(leaving.retire(45_000, at(3)), 0);
        assert_eq!(leaving.next_look(), Some(Duration::from_micros(5_500)));
        // 25,000 a millisecond since the look at 2 ms: smoothed, 17,500; the 10,000 left would
        // take under a millisecond, but looks come no sooner than the shortest wait.
        assert_eq!(leaving.retire(90_000, at(4)), 0);
        assert_eq!(leaving.next_look(), Some(LEAVING_LOOK_MIN));
        assert_eq!(leaving.retire(100_000, at(6)), 1, "its last byte is sent");
        // 5,000 a millisecond since: smoothed, 11,250; the next frame's 100,000 take 8.9 ms.
        let wait = leaving.next_look().expect("a frame is leaving");
        assert_eq!(wait.as_micros(), 8_888, "{wait:?}");
        assert_eq!(leaving.retire(100_000, at(15)), 0, "a remote that stopped reading");
        assert_eq!(leaving.next_look(), Some(2 * wait), "backs off");
        assert_eq!(leaving.retire(100_000, at(33)), 0);
        assert_eq!(leaving.next_look(), Some(LEAVING_LOOK_MAX), "no further than the longest wait");
        assert_eq!(leaving.retire(250_000, at(55)), 1);
        assert_eq!(leaving.next_look(), None);
        // Idle time measures nothing: the next frame starts from the pace kept so far.
        leaving.push(300_000);
        assert_eq!(leaving.retire(250_000, at(1_000)), 0);
        assert!(leaving.next_look() > Some(LEAVING_LOOK_MIN), "{:?}", leaving.next_look());
    }

    #[actix_rt::test]
    async fn data_frames_are_reported_sent_no_sooner_than_they_arrive_and_all_once_read() {
        const FRAMES: u32 = 64;
        let (sender, receiver) = crate::secure::tests::connected_pair().await;
        socket2::SockRef::from(sender.tcp()).set_tcp_notsent_lowat(SOCKET_UNSENT_BYTES_MAX).expect("sets");
        let (_, mut writer) = sender.into_split();
        let (queue, mut commands) = mpsc::unbounded_channel();
        let block = Bytes::from(vec![7; 16 * 1024]);
        let data = Message::Data {
            file_id: p2p_core::FileId(p2p_core::Digest([1; 32])),
            chunk: p2p_core::ChunkIndex(0),
            offset: 0,
            bytes: block,
        };
        let frame_bytes = queued(&data).frame.wire_len();
        // Like the machine: two frames not yet reported sent, the next queued as one is.
        let (reported, queued_frames) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(2)));
        for _ in 0..2 {
            queue.send(WriterCmd::Frame(queued(&data))).expect("queued");
        }
        let (counted, refill) = (reported.clone(), queue.clone());
        let writing = tokio::task::spawn_local(async move {
            let sent = |frames: u32| {
                counted.fetch_add(frames as usize, Ordering::Relaxed);
                for _ in 0..frames {
                    if queued_frames.fetch_add(1, Ordering::Relaxed) < FRAMES as usize {
                        refill.send(WriterCmd::Frame(queued(&data))).expect("queued");
                    }
                }
            };
            let written = write_until_close(&mut writer, &mut commands, sent).await;
            (written, writer)
        });
        // The receiver reads nothing yet: its window fills and the sender's socket holds the rest.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before_reading = reported.load(Ordering::Relaxed);
        let mut arrived = 0;
        let mut scratch = vec![0; 1 << 20];
        while let Ok(n) = receiver.tcp().try_read(&mut scratch) {
            if n == 0 {
                break;
            }
            arrived += n;
        }
        assert!(before_reading < FRAMES as usize, "the socket cannot have sent them all: {before_reading}");
        assert!(
            before_reading * frame_bytes <= arrived,
            "{before_reading} frames reported sent, but only {arrived} bytes arrived"
        );
        // Once the receiver reads, every frame leaves and is reported.
        let drained = async {
            while reported.load(Ordering::Relaxed) < FRAMES as usize {
                // Bounded: the last report may come after the last bytes were read.
                let _ = tokio::time::timeout(Duration::from_millis(50), receiver.tcp().readable()).await;
                while let Ok(n) = receiver.tcp().try_read(&mut scratch) {
                    if n == 0 {
                        break;
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), drained).await.expect("every frame reported in time");
        assert_eq!(reported.load(Ordering::Relaxed), FRAMES as usize);
        queue.send(WriterCmd::Close).expect("queued");
        let (written, _) = writing.await.expect("the writer ends");
        written.expect("no write failed");
    }

    #[actix_rt::test]
    async fn frames_received_together_make_one_batch_ended_by_data() {
        let read_budget = ReadBudget::new(1 << 20);
        let (mut sender, mut reader) = connected_reader(&read_budget, 1).await;
        let data = Message::Data {
            file_id: p2p_core::FileId(p2p_core::Digest([1; 32])),
            chunk: p2p_core::ChunkIndex(0),
            offset: 0,
            bytes: Bytes::from_static(&[7; 100]),
        };
        let list = Message::List;
        let mut wire = BytesMut::new();
        encode_frame(&list, &mut wire).expect("fits");
        for message in [&list, &data, &list] {
            encode_frame(message, &mut wire).expect("fits");
        }
        sender.write_all(&wire).await.expect("sends");
        sender.shutdown().await.expect("sent");

        let budget = Arc::new(Semaphore::new(1000));
        let (batch, end) = reader.read_batch(Some(&budget)).await;
        let (messages, permit) = batch.expect("messages");
        assert_eq!(messages, vec![list.clone(), list.clone(), data]);
        assert_eq!(permit.map(|p| p.num_permits()), Some(100), "the data's budget share comes along");
        assert!(end.is_none());
        let (batch, _) = reader.read_batch(Some(&budget)).await;
        assert_eq!(batch.map(|(messages, _)| messages), Some(vec![list]));
        let (batch, end) = reader.read_batch(Some(&budget)).await;
        assert!(batch.is_none() && matches!(end, Some(ConnReport::Closed)), "then the stream's end");
        assert_eq!(reader.decoder.capacity_bytes(), 0, "a drained reader holds no buffer");
        assert_eq!(read_budget.total_bytes(), 0, "and counts nothing against the budget");
    }

    #[actix_rt::test]
    async fn a_dear_body_is_decoded_off_the_thread_in_its_place_among_the_others() {
        let read_budget = ReadBudget::new(4 << 20);
        let (mut sender, mut reader) = connected_reader(&read_budget, 1).await;
        let hashes = vec![p2p_core::Digest([3; 32]); 4096];
        let manifest = p2p_core::Manifest::new("big".to_owned(), 4096 * 16 * 1024, 16 * 1024, hashes).expect("valid");
        let big = Message::Manifest { manifest: Box::new(manifest) };
        let mut big_frame = BytesMut::new();
        encode_frame(&big, &mut big_frame).expect("fits");
        let big_body = &big_frame[p2p_core::limits::FRAME_HEADER_BYTES..];
        assert!(!p2p_core::wire::body_decodes_cheaply(big_body), "the manifest is decoded off the thread");
        let mut wire = BytesMut::new();
        encode_frame(&Message::List, &mut wire).expect("fits");
        wire.extend_from_slice(&big_frame);
        encode_frame(&Message::List, &mut wire).expect("fits");
        sender.write_all(&wire).await.expect("sends");
        sender.shutdown().await.expect("sent");

        let mut received = Vec::new();
        loop {
            let (batch, end) = reader.read_batch(None).await;
            received.extend(batch.into_iter().flat_map(|(messages, _)| messages));
            if end.is_some() {
                break;
            }
        }
        let kinds: Vec<&str> = received.iter().map(Message::kind).collect();
        assert_eq!(kinds, ["list", "manifest", "list"], "in order");
        assert!(received[1] == big, "the manifest decoded whole");
        assert_eq!(read_budget.total_bytes(), 0, "nothing counted once decoded");
    }

    /// A reader of the connection `sender` is connected to, with a share of `read_budget`.
    async fn connected_reader(read_budget: &Arc<ReadBudget>, token: u64) -> (SecureWriter, Reader) {
        let (sender, receiver) = crate::secure::tests::connected_pair().await;
        let (_, sender) = sender.into_split();
        let (half, _) = receiver.into_split();
        let reader =
            Reader { half, decoder: FrameDecoder::new(), share: read_budget.join(token), conn: ConnId::Inbound(token) };
        (sender, reader)
    }

    #[actix_rt::test]
    async fn a_first_frame_longer_than_a_hello_is_refused_from_its_length_prefix() {
        let read_budget = ReadBudget::new(1 << 20);
        let (mut sender, mut reader) = connected_reader(&read_budget, 1).await;
        sender.write_all(&((HELLO_FRAME_BYTES_MAX + 1) as u32).to_be_bytes()).await.expect("sends");
        sender.flush().await.expect("sent");
        let (batch, end) = reader.read_batch(None).await;
        assert!(batch.is_none());
        let refused = DecodeError::Oversized { len: HELLO_FRAME_BYTES_MAX + 1, max: HELLO_FRAME_BYTES_MAX };
        assert!(matches!(end, Some(ConnReport::BadFrame(ref e)) if *e == refused), "{end:?}");
    }

    #[actix_rt::test]
    async fn the_connection_holding_most_of_the_read_budget_is_evicted() {
        let read_budget = ReadBudget::new(256 * 1024);
        let (mut hog, mut hog_reader) = connected_reader(&read_budget, 1).await;
        let (mut honest, mut honest_reader) = connected_reader(&read_budget, 2).await;
        let mut wire = BytesMut::new();
        encode_frame(&Message::List, &mut wire).expect("fits");
        wire.extend_from_slice(&(FRAME_BYTES_MAX as u32).to_be_bytes());
        wire.extend_from_slice(&vec![0; 300 * 1024]);
        hog.write_all(&wire).await.expect("sends");
        hog.flush().await.expect("sent");
        let (batch, end) = hog_reader.read_batch(None).await;
        assert_eq!(batch.map(|(messages, _)| messages), Some(vec![Message::List]));
        assert!(end.is_none());
        let (batch, end) = hog_reader.read_batch(None).await;
        assert!(batch.is_none() && matches!(end, Some(ConnReport::Closed)), "{end:?}");
        assert!(!hog_reader.share.hold(0), "closed because it was evicted (its sender is still open)");

        let mut small = BytesMut::new();
        for _ in 0..2 {
            encode_frame(&Message::List, &mut small).expect("fits");
        }
        honest.write_all(&small).await.expect("sends");
        honest.flush().await.expect("sent");
        let (batch, end) = honest_reader.read_batch(None).await;
        assert_eq!(batch.map(|(messages, _)| messages), Some(vec![Message::List, Message::List]));
        assert!(end.is_none(), "the small holder reads on");
    }
}
