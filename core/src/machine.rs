//! The driving contract shared by [`crate::Tracker`] and [`crate::Peer`]: one `Input` enum in,
//! one `Output` enum out.
//!
//! A driver (`net` over TCP, `sim` over a virtual network) owns a machine and loops:
//! 1. `handle(now, input)` with the next input, or `command(now, command)` with a local
//!    command (which the machine checks and may refuse: the caller's mistake comes back as an
//!    `Err`, and a refused command changes nothing);
//! 2. `poll_output()` until it returns `None`, carrying out each output;
//! 3. sleep until the next input or `poll_timeout()`, whichever is first; at the timeout,
//!    `handle(now, Input::Timeout)`.
//!
//! **Every `handle` or `command` is followed by a full drain before the next one.** Slow work (disk,
//! hashing) is an output plus a later [`Completion`] input, so `sim` can complete it at once and
//! `net` on worker threads.
//!
//! **A timer moves once it fired**: after `handle(now, Input::Timeout)` the machine's
//! `poll_timeout()` is `None` or later than `now`; a machine that kept asking for the moment
//! that just passed would be woken again and again at the same instant.
//!
//! **A received block is written in the drain of the message that brought it**: an
//! [`Output::WriteBlock`] comes only out of the drain of an `Input::Message` carrying a `Data`
//! message, at most one per such message, with that message's bytes. So the memory of received
//! blocks is bounded by the driver alone: a driver that gives each `Data` message a share of a
//! write budget holds the share while that message's drain runs, hands it to the `WriteBlock`
//! it produced (freed once the write completes), and frees it at the end of the drain when the
//! machine dropped the block (a duplicate, a cancelled request, a failed download). No budget
//! travels through the machine, and none is needed there: the machine keeps no received bytes.
//!
//! [`step`] is steps 1 and 2 with all three rules asserted, and [`step_command`] the same for a local
//! command, whose refusal the caller hears as an `Err`; every driver goes through them.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::bitfield::Bitfield;
use crate::error::{CommandError, DecodeError, StoreError};
use crate::ids::{ChunkIndex, ConnId, FileId, PeerId, PieceIndex};
use crate::manifest::Manifest;
use crate::store::Resume;
use crate::time::Time;
use crate::wire::Message;

/// Something that happened to a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A connection is open: an `Outbound` one the machine asked for, or an `Inbound` one the
    /// driver accepted. `remote` is the other end's address as the socket reports it, and
    /// `peer_id` the id the other end proved in the transport's handshake (by its key on TCP;
    /// the simulator knows every node's id).
    Connected {
        /// The connection.
        conn: ConnId,
        /// The remote socket address.
        remote: SocketAddr,
        /// The remote's proven id.
        peer_id: PeerId,
    },
    /// A connection closed, or an `Outbound` one could not be opened.
    Disconnected {
        /// The connection.
        conn: ConnId,
    },
    /// A whole message arrived on a connection.
    Message {
        /// The connection.
        conn: ConnId,
        /// The decoded message.
        message: Message,
    },
    /// A frame on a connection was oversized or did not decode. The machine answers with an
    /// error where it can and closes the connection.
    BadFrame {
        /// The connection.
        conn: ConnId,
        /// What was wrong (its text goes to the log and the error reply).
        error: DecodeError,
    },
    /// `data_frames` more of this connection's `Data` frames left the sender, in the order
    /// they were sent: their last byte went out on the link in the simulator, or on TCP the
    /// socket sent it on (it no longer counts among the socket's unsent bytes). A frame
    /// waiting in a driver's queue or a send buffer is not sent. This is the machine's
    /// backpressure and upload-slot signal: a peer serves a connection's next block only as
    /// the earlier ones drain, and passes an upload slot on once the bytes of its turn really
    /// left, so queued data never waits behind a slow link where a `Cancel` can no longer
    /// recall it. Drivers report every `Data` frame exactly once and may send other frames
    /// ahead of `Data` frames not yet started (control traffic first).
    Sent {
        /// The connection.
        conn: ConnId,
        /// How many `Data` frames left since the last report.
        data_frames: u32,
    },
    /// The time asked for by `poll_timeout` has come.
    Timeout,
    /// Slow work asked for by an output is done (peer only).
    Completed(Completion),
}

/// A local command to a peer, from its command line or scenario; given through
/// [`Machine::command`], which checks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Serve the chunks in `have` of the file described by `manifest`, and announce them.
    Share {
        /// The file.
        manifest: Manifest,
        /// The chunks this peer holds and serves (all, or a subset for a partial holder).
        have: Bitfield,
    },
    /// Download the file `file_id`. `resume` carries the manifest and the verified chunks a
    /// store already holds from an earlier run.
    Get {
        /// The file.
        file_id: FileId,
        /// What an earlier run already verified.
        resume: Option<Resume>,
    },
    /// Stop fetching the download `file_id`: its requests in flight are cancelled and no
    /// holder is asked; its verified chunks stay served (see the peer's `control` module).
    Pause {
        /// The file.
        file_id: FileId,
    },
    /// Fetch the paused download `file_id` again.
    Resume {
        /// The file.
        file_id: FileId,
    },
    /// Stop serving and fetching `file_id`, tell the trackers, and forget it;
    /// [`Event::Removed`] follows once no store work for it is in flight.
    Remove {
        /// The file.
        file_id: FileId,
    },
    /// Tell the tracker this peer leaves, and close every connection.
    Leave,
}

/// The result of slow work a peer asked its driver for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// A block asked for by [`Output::WriteBlock`] is on disk, or could not be written.
    BlockWritten {
        /// The file.
        file_id: FileId,
        /// The chunk.
        chunk: ChunkIndex,
        /// The block's offset within the chunk.
        offset: u32,
        /// `Err` says why (e.g. a full disk).
        result: Result<(), StoreError>,
    },
    /// The hash asked for by [`Output::HashChunk`] (SHA-256 of the chunk as stored).
    ChunkHashed {
        /// The file.
        file_id: FileId,
        /// The chunk.
        chunk: ChunkIndex,
        /// The digest, or why the chunk could not be read.
        result: Result<crate::ids::Digest, StoreError>,
    },
    /// The list asked for by [`Output::ReadChunkDigests`].
    ChunkDigestsRead {
        /// The file.
        file_id: FileId,
        /// The piece.
        piece: PieceIndex,
        /// Its chunks' digests, in order, or why they could not be read.
        result: Result<Vec<crate::ids::Digest>, StoreError>,
    },
    /// A block asked for by [`Output::ReadBlock`].
    BlockRead {
        /// The connection that requested it.
        conn: ConnId,
        /// The file.
        file_id: FileId,
        /// The chunk.
        chunk: ChunkIndex,
        /// The block's offset within the chunk.
        offset: u32,
        /// The bytes, or why they could not be read.
        result: Result<Bytes, StoreError>,
    },
    /// The file asked for by [`Output::Finalize`] is in its final place, or could not be.
    Finalized {
        /// The file.
        file_id: FileId,
        /// `Err` says why.
        result: Result<(), StoreError>,
    },
}

/// Something a machine needs its driver to do, or wants reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Open a connection to `addr`; answer with `Connected` or `Disconnected` for `conn`.
    Connect {
        /// The name the machine gives the connection.
        conn: ConnId,
        /// Where to connect.
        addr: SocketAddr,
    },
    /// Send a message on a connection (dropped if the connection is gone).
    Send {
        /// The connection.
        conn: ConnId,
        /// The message.
        message: Message,
    },
    /// Close a connection after flushing what was sent on it. No `Disconnected` follows.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Prepare to store a file being downloaded: keep its manifest and create its partial file.
    Allocate {
        /// The file.
        manifest: Manifest,
    },
    /// Write a received block at its place in the file's partial copy. Only the drain of the
    /// `Data` message that brought the block asks for it (see the module docs).
    WriteBlock {
        /// The file.
        file_id: FileId,
        /// The chunk.
        chunk: ChunkIndex,
        /// Offset within the chunk.
        offset: u32,
        /// The bytes.
        bytes: Bytes,
    },
    /// Hash a chunk as stored; answer with [`Completion::ChunkHashed`].
    HashChunk {
        /// The file.
        file_id: FileId,
        /// The chunk.
        chunk: ChunkIndex,
    },
    /// A chunk passed its hash: record it as verified (persisted, so a restart resumes).
    ChunkVerified {
        /// The file.
        file_id: FileId,
        /// The chunk.
        chunk: ChunkIndex,
    },
    /// Read a block of a verified chunk for a remote; answer with [`Completion::BlockRead`].
    ReadBlock {
        /// The requesting connection.
        conn: ConnId,
        /// The file.
        file_id: FileId,
        /// The chunk.
        chunk: ChunkIndex,
        /// Offset within the chunk.
        offset: u32,
        /// Bytes to read.
        len: u32,
    },
    /// Keep the chunk digests of a piece of a download with its verified chunks; no completion
    /// (see [`crate::store::Store::keep_list`]).
    KeepList {
        /// The file.
        file_id: FileId,
        /// The piece.
        piece: PieceIndex,
        /// Its chunks' digests, checked against the manifest.
        digests: Vec<crate::ids::Digest>,
    },
    /// Read the digests of the chunks of a piece held whole, to send before its chunks (see
    /// `Message::Chunks`); answer with [`Completion::ChunkDigestsRead`].
    ReadChunkDigests {
        /// The file.
        file_id: FileId,
        /// The piece.
        piece: PieceIndex,
        /// Its chunks, in order.
        chunks: Vec<ChunkIndex>,
    },
    /// Every chunk is verified: move the file to its final place; answer with
    /// [`Completion::Finalized`].
    Finalize {
        /// The file.
        file_id: FileId,
    },
    /// Something worth telling the user or the trace.
    Event(Event),
}

/// Progress of one download.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Verified chunks.
    pub have: u32,
    /// Chunks in the file.
    pub total: u32,
    /// Verified bytes.
    pub have_bytes: u64,
    /// Remotes currently serving this file to us.
    pub peers: u32,
}

/// A report from a machine, for the user, the logs and the simulation trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    // ---- peer ----
    /// A tracker connection is up and the `Hello` exchange is done.
    TrackerConnected {
        /// The tracker.
        addr: SocketAddr,
    },
    /// A tracker connection was lost; the peer will reconnect and re-announce.
    TrackerLost {
        /// The tracker.
        addr: SocketAddr,
    },
    /// The tracker acknowledged a shared file.
    Sharing {
        /// The file.
        file_id: FileId,
        /// Its name.
        name: String,
        /// Pieces this peer serves whole.
        pieces: u32,
    },
    /// The peer asked the tracker where the chunks of a file are.
    LocateSent {
        /// The file.
        file_id: FileId,
    },
    /// The tracker answered a `Locate`: per chunk, the holders it named.
    Located {
        /// The file.
        file_id: FileId,
        /// `(chunk, holders)` for every chunk still wanted.
        holders: Vec<(ChunkIndex, Vec<SocketAddr>)>,
    },
    /// A chunk was assigned to a remote and its blocks requested.
    ChunkRequested {
        /// The file.
        file_id: FileId,
        /// The chunk.
        chunk: ChunkIndex,
        /// The remote asked.
        from: SocketAddr,
    },
    /// A chunk arrived and passed its hash.
    ChunkVerified {
        /// The file.
        file_id: FileId,
        /// The chunk.
        chunk: ChunkIndex,
        /// Who sent it.
        from: SocketAddr,
        /// The download's progress after this chunk.
        progress: Progress,
    },
    /// A chunk arrived and failed its hash; `from` sent blocks of it (a strike only for a
    /// sender proven bad, see `STATE.md` of the peer).
    ChunkCorrupt {
        /// The file.
        file_id: FileId,
        /// The chunk.
        chunk: ChunkIndex,
        /// Who sent it.
        from: SocketAddr,
    },
    /// A remote sent bad data too often and is no longer used.
    PeerBanned {
        /// The remote's id.
        peer_id: PeerId,
        /// Its address.
        addr: SocketAddr,
    },
    /// No live peer holds these chunks; the download waits for a holder.
    ChunksMissing {
        /// The file.
        file_id: FileId,
        /// The chunks nobody holds.
        chunks: Vec<ChunkIndex>,
    },
    /// The tracker does not know a file this peer wants (nobody announced it); the peer keeps
    /// asking.
    FileUnknown {
        /// The file.
        file_id: FileId,
    },
    /// Every chunk is verified and the file is in its final place.
    Complete {
        /// The file.
        file_id: FileId,
    },
    /// The download cannot go on (e.g. the disk is full, the tracker does not know the file).
    DownloadFailed {
        /// The file.
        file_id: FileId,
        /// Why.
        reason: String,
    },
    /// A file removed by [`Command::Remove`] is gone: no completion for it is due any more,
    /// so its store data may be forgotten.
    Removed {
        /// The file.
        file_id: FileId,
    },
    /// The chunks of a piece cannot be served: the store could not read their digests, or
    /// they do not hash to the piece's (damaged on disk). The requests waiting for them are
    /// refused; later ones try again.
    ServeFailed {
        /// The file.
        file_id: FileId,
        /// The piece.
        piece: PieceIndex,
        /// Why.
        reason: String,
    },
    /// A chunk was served to a remote (all its requested blocks sent).
    BlockServed {
        /// The file.
        file_id: FileId,
        /// The chunk.
        chunk: ChunkIndex,
        /// Bytes sent.
        len: u32,
        /// To whom.
        to: SocketAddr,
    },
    // ---- both ----
    /// A connection was closed because its remote broke the protocol.
    ProtocolViolation {
        /// The connection.
        conn: ConnId,
        /// What it did.
        reason: String,
    },
    // ---- tracker ----
    /// A peer announced a file (first announce of this peer for this file).
    PeerAnnounced {
        /// The peer.
        peer: crate::wire::PeerAddr,
        /// The file.
        file_id: FileId,
        /// Chunks it holds.
        chunks: u32,
    },
    /// A peer was forgotten: it left, disconnected, or its TTL ran out.
    PeerGone {
        /// The peer.
        peer: crate::wire::PeerAddr,
        /// Why.
        reason: GoneReason,
    },
}

/// Why a tracker forgot a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoneReason {
    /// It sent `Leave`.
    Left,
    /// Its tracker connection closed.
    Disconnected,
    /// It did not announce within the TTL.
    Expired,
}

/// The push-input, poll-output interface of a sans-IO state machine.
pub trait Machine {
    /// Applies one input at time `now` (never earlier than the previous `now`).
    fn handle(&mut self, now: Time, input: Input);
    /// Applies a local command at time `now` (never earlier than the previous `now`), or
    /// refuses it, unchanged, with the caller's mistake (a bitfield of the wrong length, one
    /// file too many). A refused command queues no output.
    ///
    /// The default refuses every command, for a machine that takes none (the tracker).
    fn command(&mut self, _now: Time, _command: Command) -> Result<(), CommandError> {
        Err(CommandError::Unsupported)
    }
    /// The next thing for the driver to do, or `None` when drained.
    fn poll_output(&mut self) -> Option<Output>;
    /// The earliest time at which the machine wants `Input::Timeout`.
    fn poll_timeout(&self) -> Option<Time>;
}

/// One step of the driving contract: `handle(now, input)`, then `poll_output` drained into
/// `carry_out` until it is empty, then the machine's next timeout (step 3 is the driver's).
///
/// # Panics
/// When the machine breaks the timer rule (after an `Input::Timeout` it still asks to be woken
/// at `now` or earlier) or the write rule (a `WriteBlock` that no `Data` message of this input
/// brought, or a second one for the same message).
pub fn step<M: Machine + ?Sized>(
    machine: &mut M,
    now: Time,
    input: Input,
    mut carry_out: impl FnMut(Output),
) -> Option<Time> {
    let fired = input == Input::Timeout;
    let mut received = match &input {
        Input::Message { message: Message::Data { bytes, .. }, .. } => Some(bytes.len()),
        _ => None,
    };
    machine.handle(now, input);
    let next = drain(machine, |output| {
        if let Output::WriteBlock { bytes, .. } = &output {
            assert_eq!(
                received.take(),
                Some(bytes.len()),
                "a block is written only in the drain of the one Data message that brought it"
            );
        }
        carry_out(output);
    });
    assert!(
        !fired || next.is_none_or(|at| at > now),
        "a machine's timer must move once it fired: woken at {now}, it asks again for {next:?}"
    );
    next
}

/// [`step`] for a local command: [`Machine::command`], then the same drain; the machine's next
/// timeout, or why it refused the command.
pub fn step_command<M: Machine + ?Sized>(
    machine: &mut M,
    now: Time,
    command: Command,
    carry_out: impl FnMut(Output),
) -> Result<Option<Time>, CommandError> {
    let taken = machine.command(now, command);
    let next = drain(machine, carry_out);
    taken.map(|()| next)
}

/// Carries out every queued output, then asks for the next timeout.
fn drain<M: Machine + ?Sized>(machine: &mut M, mut carry_out: impl FnMut(Output)) -> Option<Time> {
    while let Some(output) = machine.poll_output() {
        carry_out(output);
    }
    machine.poll_timeout()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::ids::ConnId;

    /// A machine that turns each input into three outputs and refuses an input while outputs
    /// are still queued; its timer stays where it is unless told to move.
    struct Strict {
        queued: VecDeque<Output>,
        timer: Option<Time>,
        timer_moves: bool,
    }

    impl Machine for Strict {
        fn handle(&mut self, now: Time, input: Input) {
            assert!(self.queued.is_empty(), "an input arrived before the last outputs were drained");
            if input == Input::Timeout && self.timer_moves {
                self.timer = Some(now + std::time::Duration::from_secs(1));
            }
            let close = Output::Close { conn: ConnId::Outbound(1) };
            self.queued.extend([close.clone(), close.clone(), close]);
        }

        fn poll_output(&mut self) -> Option<Output> {
            self.queued.pop_front()
        }

        fn poll_timeout(&self) -> Option<Time> {
            self.timer
        }
    }

    #[test]
    fn a_step_drains_every_output_before_the_next_input() {
        let mut machine = Strict { queued: VecDeque::new(), timer: Some(Time::ZERO), timer_moves: true };
        let mut carried = 0;
        for _ in 0..3 {
            let next = step(&mut machine, Time::ZERO, Input::Timeout, |_| carried += 1);
            assert!(next > Some(Time::ZERO));
        }
        assert_eq!(carried, 9);
    }

    #[test]
    #[should_panic(expected = "timer must move once it fired")]
    fn a_timer_that_does_not_move_after_firing_is_refused() {
        let mut machine = Strict { queued: VecDeque::new(), timer: Some(Time::ZERO), timer_moves: false };
        step(&mut machine, Time::ZERO, Input::Timeout, |_| {});
    }

    /// A machine that asks `writes` times to write a block of 16 bytes, whatever the input.
    struct Writer {
        queued: VecDeque<Output>,
        writes: usize,
    }

    impl Machine for Writer {
        fn handle(&mut self, _now: Time, _input: Input) {
            let file_id = FileId(crate::ids::Digest([1; 32]));
            let write =
                Output::WriteBlock { file_id, chunk: ChunkIndex(0), offset: 0, bytes: Bytes::from(vec![0; 16]) };
            self.queued.extend(std::iter::repeat_n(write, self.writes));
        }

        fn poll_output(&mut self) -> Option<Output> {
            self.queued.pop_front()
        }

        fn poll_timeout(&self) -> Option<Time> {
            None
        }
    }

    fn data(len: usize) -> Input {
        let file_id = FileId(crate::ids::Digest([1; 32]));
        let message = Message::Data { file_id, chunk: ChunkIndex(0), offset: 0, bytes: Bytes::from(vec![0; len]) };
        Input::Message { conn: ConnId::Outbound(1), message }
    }

    #[test]
    fn a_block_is_written_in_the_drain_of_the_data_message_that_brought_it() {
        let mut machine = Writer { queued: VecDeque::new(), writes: 1 };
        let mut written = 0;
        step(&mut machine, Time::ZERO, data(16), |output| {
            written += usize::from(matches!(output, Output::WriteBlock { .. }))
        });
        assert_eq!(written, 1);
    }

    #[test]
    #[should_panic(expected = "a block is written only in the drain of the one Data message that brought it")]
    fn a_write_without_a_data_message_is_refused() {
        let mut machine = Writer { queued: VecDeque::new(), writes: 1 };
        step(&mut machine, Time::ZERO, Input::Timeout, |_| {});
    }

    #[test]
    #[should_panic(expected = "a block is written only in the drain of the one Data message that brought it")]
    fn a_second_write_for_one_data_message_is_refused() {
        let mut machine = Writer { queued: VecDeque::new(), writes: 2 };
        step(&mut machine, Time::ZERO, data(16), |_| {});
    }
}
