//! The download pipeline: what to request from whom, and what to do with what arrives.
//!
//! Each ready remote keeps block requests in flight for about `REQUEST_PIPELINE_TIME` of its
//! measured delivery rate (at least one block, at most `REQUESTS_IN_FLIGHT_PER_CONN_MAX`), so a
//! slow remote holds up few chunks. Blocks come first from the chunks already assigned to it; a
//! new chunk is the rarest among the connected remotes (random tie-break) that it holds;
//! partially fetched chunks whose remote went away come before fresh ones. When no chunk it
//! holds is left to start and a remote's pipeline is empty, it joins a chunk another remote is
//! fetching (endgame) if that remote lags (nothing arrived from it for a while; only once the
//! download went quiet), and the slower copy is cancelled as blocks arrive; or, if that remote
//! is clearly slower than it, the chunk is withdrawn from that remote and fetched from it once
//! the remote answered that its blocks will not come (at any time). Every block is written by
//! the driver, every written chunk is hashed, and a sender proven to have sent a bad block of a
//! chunk that failed its hash is named to the peer, which strikes it (see `downloads` for the
//! proof, `bans` for what strikes lead to).
//!
//! [`Scheduler`] is a sub-machine over the peer's connection and file tables, borrowed for one
//! input. It owns one chunk of state privately: each connection's [`Requests`] (blocks in
//! flight, chunks assigned, delivery rate, rest, recalls), which nothing outside this module
//! changes. Its inputs are its methods (a block arrived, a request was refused, a block was
//! written, a chunk was hashed, the file was moved into place, a connection stalled or went
//! away); its outputs are `Request`/`Cancel`/`Withdraw` messages and the storage and event
//! [`Output`]s, pushed onto the peer's queue, and the verdicts the peer routes on ([`Hashed`],
//! [`WrongLength`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use crate::error::StoreError;
use crate::ids::{ChunkIndex, ConnId, FileId};
use crate::limits::{
    BLOCK_BYTES_MAX, BUSY_CALL_WAIT_MAX, BUSY_RETRY_DELAY, CHUNKS_CLAIMED_PER_CONN_MAX, CHUNKS_CLAIMED_UNMEASURED_MIN,
    CLAIMS_TIME, CLAIMS_UNMEASURED_BYTES, CROSSED_WITHDRAW_BLOCK_BYTES_MIN, ENDGAME_PATIENCE, OUTPACE_FACTOR,
    RATE_WINDOW, REQUESTS_IN_FLIGHT_PER_CONN_MAX, REQUESTS_PER_MESSAGE_MAX, REQUEST_PIPELINE_BYTES_MIN,
    REQUEST_PIPELINE_TIME, REQUEST_TIMEOUT, REQUEST_TIMEOUT_MAX,
};
use crate::machine::{Event, Output, Progress};
use crate::rng::Rng;
use crate::small::{VecMap, VecSet};
use crate::time::Time;
use crate::wire::{Message, RejectReason};

use super::chunks::{block_at, block_count, block_span, BlockKey, FileEntry};
use super::downloads::{Arrival, Choice, Chooser, Phase, Sender, Verdict};
use super::remote::{Remote, Remotes};
use super::uploads::turn_bytes;
use super::Outputs;

/// Our requests on one connection: the scheduler's private state of a remote.
#[derive(Debug)]
pub(super) struct Requests {
    /// Block requests in flight.
    in_flight: VecSet<BlockKey>,
    /// Chunks assigned to the remote, per file.
    assigned: VecSet<(FileId, ChunkIndex)>,
    /// When it last made progress on our requests: a block arrived, or the first request of
    /// an empty pipeline went out.
    progress_at: Time,
    /// Until when it gets no new requests: it let requests wait for [`REQUEST_TIMEOUT`] without
    /// sending a block (they went to others), or it answered `Busy`. A block arriving ends
    /// this at once, unless it waits for a call.
    resting_until: Option<Time>,
    /// It answered `Busy` and takes part in room calls: it is asked again when it calls
    /// (`Room`), not when a block it read before the refusal arrives.
    awaits_call: bool,
    /// How fast it delivers our requests (sizes our pipeline to it).
    rate: DeliveryRate,
    /// It let our requests wait past its stall deadline and we withdrew them (`Withdraw`):
    /// their chunks stay with it until it answers. Ends when a block arrives.
    withdrawing: bool,
    /// The requests sent at `last_sent_at`, the latest instant any went out: a `Busy` for
    /// one of them came after all our requests, so none of ours crossed it.
    last_sent: Vec<BlockKey>,
    last_sent_at: Time,
    /// Chunks whose requests we withdrew for a faster remote, idle, that holds them: by chunk,
    /// that remote, which is asked first once this one answered that they will not come.
    recalls: VecMap<(FileId, ChunkIndex), ConnId>,
}

impl Requests {
    /// Nothing requested yet, on a connection opened at `now`.
    pub fn new(now: Time) -> Requests {
        Requests {
            in_flight: VecSet::new(),
            assigned: VecSet::new(),
            progress_at: now,
            resting_until: None,
            awaits_call: false,
            rate: DeliveryRate::default(),
            withdrawing: false,
            last_sent: Vec::new(),
            last_sent_at: now,
            recalls: VecMap::new(),
        }
    }

    /// How many block requests are in flight.
    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether no block request is in flight.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// The measured delivery rate (zero until a first window closed).
    pub fn bytes_per_s(&self) -> u64 {
        self.rate.bytes_per_s()
    }

    /// Until when the remote gets no new requests, if it rests.
    pub fn resting_until(&self) -> Option<Time> {
        self.resting_until
    }

    /// Records a request sent at `now`.
    pub fn start(&mut self, key: BlockKey, now: Time) {
        if self.in_flight.is_empty() {
            self.progress_at = now;
        }
        self.rate.start(now);
        self.in_flight.insert(key);
        if self.last_sent_at != now {
            self.last_sent.clear();
            self.last_sent_at = now;
        }
        self.last_sent.push(key);
    }

    /// Whether we sent requests after `key` (so after the remote answered it, they may have
    /// crossed its answer).
    fn sent_after(&self, key: BlockKey) -> bool {
        !self.last_sent.contains(&key)
    }

    /// Requests of blocks of `block_bytes` to keep in flight: the bytes it delivers in
    /// [`REQUEST_PIPELINE_TIME`] at its measured rate, at least [`REQUEST_PIPELINE_BYTES_MIN`]
    /// and at most [`REQUESTS_IN_FLIGHT_PER_CONN_MAX`] requests.
    fn pipeline_depth(&self, block_bytes: u32) -> usize {
        let micros = u64::try_from(REQUEST_PIPELINE_TIME.as_micros()).unwrap_or(u64::MAX);
        let bytes = (self.rate.bytes_per_s().saturating_mul(micros) / 1_000_000).max(REQUEST_PIPELINE_BYTES_MIN);
        let blocks = bytes.div_ceil(u64::from(block_bytes.max(1)));
        usize::try_from(blocks).unwrap_or(usize::MAX).min(REQUESTS_IN_FLIGHT_PER_CONN_MAX)
    }

    /// Chunks of `chunk_bytes` the remote may be assigned at once: what it delivers in
    /// [`CLAIMS_TIME`] at its measured rate (at least one), [`CLAIMS_UNMEASURED_BYTES`] before it
    /// is measured (at least [`CHUNKS_CLAIMED_UNMEASURED_MIN`]); at most
    /// [`CHUNKS_CLAIMED_PER_CONN_MAX`].
    fn claims(&self, chunk_bytes: u32) -> usize {
        claims_for(self.rate.bytes_per_s(), chunk_bytes)
    }

    /// When the remote counts as stalled: requests are waiting and nothing arrived for
    /// `REQUEST_TIMEOUT`, or for two upload turns' time (the longest turns) at its measured rate
    /// when that is longer (a slow remote that keeps delivering is not stalled), at most
    /// `REQUEST_TIMEOUT_MAX`.
    pub fn stall_deadline(&self) -> Option<Time> {
        let patience = turns_time(2, BLOCK_BYTES_MAX, self.rate.bytes_per_s())
            .unwrap_or(REQUEST_TIMEOUT)
            .clamp(REQUEST_TIMEOUT, REQUEST_TIMEOUT_MAX);
        (!self.in_flight.is_empty()).then_some(self.progress_at + patience)
    }

    /// The measured delivery rate, or `unmeasured_bytes_per_s` before one is measured.
    fn rate_or(&self, unmeasured_bytes_per_s: u64) -> u64 {
        match self.rate.bytes_per_s() {
            0 => unmeasured_bytes_per_s,
            measured => measured,
        }
    }

    /// Whether it may be sent new requests at `now`.
    fn is_resting(&self, now: Time) -> bool {
        self.resting_until.is_some_and(|until| until > now)
    }

    /// Whether another request of a `block_bytes` block may go out at `now`: it does not rest
    /// and its pipeline has room.
    fn takes_another(&self, block_bytes: u32, now: Time) -> bool {
        !self.is_resting(now) && self.in_flight.len() < self.pipeline_depth(block_bytes)
    }

    /// Whether the remote delivers clearly slower than an endgame warrants: nothing arrived
    /// from it for [`ENDGAME_PATIENCE`], or for four upload turns' time at its measured rate
    /// when that is longer, turns of the file's `block_bytes` blocks (see [`turn_bytes`]): a
    /// request can wait that long in its upload line, a turn on each of its two slots (more
    /// open only where they make its upload faster), then our own turn at half its rate. A
    /// remote that has delivered nothing
    /// yet is given the time at `unmeasured_bytes_per_s`, the slowest rate another remote
    /// delivered at: until its first block arrives nothing says it is faster, and where every
    /// uplink is slow its first block takes seconds to leave.
    fn lags(&self, now: Time, block_bytes: u32, unmeasured_bytes_per_s: u64) -> bool {
        let patience = turns_time(4, block_bytes, self.rate_or(unmeasured_bytes_per_s)).unwrap_or(ENDGAME_PATIENCE);
        self.progress_at + patience.max(ENDGAME_PATIENCE) <= now
    }

    /// The chunks of `file_id` assigned to the remote, in order.
    fn assigned_in(&self, file_id: FileId) -> impl Iterator<Item = ChunkIndex> + '_ {
        self.assigned_from(file_id, ChunkIndex(0))
    }

    /// The chunks of `file_id` from `first` on assigned to the remote, in order.
    fn assigned_from(&self, file_id: FileId, first: ChunkIndex) -> impl Iterator<Item = ChunkIndex> + '_ {
        self.assigned.range((file_id, first)..=(file_id, ChunkIndex(u32::MAX))).map(|(_, chunk)| *chunk)
    }

    /// Whether every one of the `blocks` blocks of `chunk` is requested and in flight. A scan
    /// of the few requests in flight, chunk numbers first: cheaper than two searches comparing
    /// whole file ids.
    fn requested_whole(&self, file_id: FileId, chunk: ChunkIndex, blocks: u32) -> bool {
        let requested = self.in_flight.iter().filter(|(f, p, _)| *p == chunk && *f == file_id).count();
        requested >= blocks as usize
    }

    /// Whether a request of a block of `chunk` is in flight.
    fn fetches(&self, file_id: FileId, chunk: ChunkIndex) -> bool {
        self.of_chunk(file_id, chunk).next().is_some()
    }

    /// Its requests in flight for blocks of `chunk`, by offset.
    fn of_chunk(&self, file_id: FileId, chunk: ChunkIndex) -> std::slice::Iter<'_, BlockKey> {
        self.in_flight.range((file_id, chunk, 0)..=(file_id, chunk, u32::MAX))
    }

    /// Whether a remote delivering at `bytes_per_s` would fetch a block of `block_bytes`
    /// [`OUTPACE_FACTOR`] times as fast as this one, measured or given `unmeasured_bytes_per_s`,
    /// and nothing arrived from this one for two such blocks' time at that rate.
    fn outpaced_by(&self, now: Time, bytes_per_s: u64, block_bytes: u32, unmeasured_bytes_per_s: u64) -> bool {
        let rate = self.rate_or(unmeasured_bytes_per_s);
        let Some(two_blocks) = (2 * u64::from(block_bytes) * 1_000_000).checked_div(bytes_per_s) else {
            return false;
        };
        rate > 0 && bytes_per_s >= OUTPACE_FACTOR * rate && self.progress_at + Duration::from_micros(two_blocks) <= now
    }

    /// Takes `chunk` away: its requests in flight are dropped and returned (their offsets).
    fn unassign(&mut self, file_id: FileId, chunk: ChunkIndex) -> Vec<u32> {
        self.assigned.remove(&(file_id, chunk));
        self.recalls.remove(&(file_id, chunk));
        let cancelled: Vec<BlockKey> = self.of_chunk(file_id, chunk).copied().collect();
        for key in &cancelled {
            self.in_flight.remove(key);
        }
        cancelled.into_iter().map(|(_, _, offset)| offset).collect()
    }
}

/// `conn` as a download's chunk choice sees it: its peer, what it holds of `file_id`, and
/// whether it has requests in flight.
fn chooser(remotes: &Remotes, conn: ConnId, file_id: FileId) -> Option<Chooser<'_>> {
    let remote = remotes.get(&conn)?;
    Some(Chooser {
        conn,
        peer_id: remote.peer_id(),
        have: remote.chunks(file_id)?,
        busy: !remote.requests().in_flight.is_empty(),
    })
}

/// `turns` whole upload turns' time at `bytes_per_s` (`None` at zero), for blocks of
/// `block_bytes` (see [`turn_bytes`]).
fn turns_time(turns: u64, block_bytes: u32, bytes_per_s: u64) -> Option<Duration> {
    (turns * turn_bytes(block_bytes) * 1_000_000).checked_div(bytes_per_s).map(Duration::from_micros)
}

/// Chunks of `chunk_bytes` a remote delivering `bytes_per_s` (0: not measured yet) may be
/// assigned at once on a connection; see [`Requests::claims`].
pub(super) fn claims_for(bytes_per_s: u64, chunk_bytes: u32) -> usize {
    let (bytes, least) = match bytes_per_s {
        0 => (CLAIMS_UNMEASURED_BYTES, CHUNKS_CLAIMED_UNMEASURED_MIN),
        rate => (rate.saturating_mul(u64::try_from(CLAIMS_TIME.as_micros()).unwrap_or(u64::MAX)) / 1_000_000, 1),
    };
    let chunks = bytes / u64::from(chunk_bytes.max(1));
    usize::try_from(chunks).unwrap_or(usize::MAX).clamp(least, CHUNKS_CLAIMED_PER_CONN_MAX)
}

/// Bytes a remote delivered per second: measured over windows of at least [`RATE_WINDOW`] from
/// its first request on, each new window averaged with the estimate so far.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct DeliveryRate {
    window_start: Option<Time>,
    window_bytes: u64,
    bytes_per_s: u64,
}

impl DeliveryRate {
    /// A request went out at `now`: the first one opens the first window.
    pub(super) fn start(&mut self, now: Time) {
        self.window_start.get_or_insert(now);
    }

    /// `bytes` arrived at `now`.
    pub(super) fn arrived(&mut self, now: Time, bytes: u64) {
        let Some(start) = self.window_start else { return };
        self.window_bytes += bytes;
        let elapsed_us = now.as_micros().saturating_sub(start.as_micros());
        let window_us = u64::try_from(RATE_WINDOW.as_micros()).unwrap_or(u64::MAX);
        if elapsed_us < window_us {
            return;
        }
        let measured = self.window_bytes.saturating_mul(1_000_000) / elapsed_us;
        self.bytes_per_s = if self.bytes_per_s == 0 { measured } else { (self.bytes_per_s + measured) / 2 };
        self.window_start = Some(now);
        self.window_bytes = 0;
    }

    /// The estimate (zero until a first window closed).
    pub(super) fn bytes_per_s(&self) -> u64 {
        self.bytes_per_s
    }
}

/// A block whose length is not its span in the chunk: the remote broke the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct WrongLength {
    /// The chunk.
    pub chunk: ChunkIndex,
    /// The block's offset in the chunk.
    pub offset: u32,
    /// The bytes that arrived.
    pub len: usize,
}

impl std::fmt::Display for WrongLength {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "block {}+{} of {} bytes", self.chunk, self.offset, self.len)
    }
}

/// What a chunk's hash means for the rest of the peer.
#[derive(Debug)]
pub(super) enum Hashed {
    /// The chunk could not be read back: the download failed (reported already).
    Failed,
    /// The chunk failed its hash (reported already); `guilty` is proven to have sent bad data.
    /// The chunk is free again: pipelines are refilled after the strike.
    Corrupt {
        /// The sender to strike.
        guilty: Option<Sender>,
    },
    /// The chunk is verified. The peer reports it, queues it for `Haves`, then finalizes the
    /// file when `progress` is whole (or refills pipelines when `room_again`), then strikes
    /// `guilty`.
    Verified {
        /// The address of one sender, if a sender is known.
        from: Option<SocketAddr>,
        /// The file's progress with the chunk.
        progress: Progress,
        /// Whether remotes the chunk held up have room for requests again.
        room_again: bool,
        /// A sender whose blocks of an earlier attempt were the bad ones (see `downloads`).
        guilty: Option<Sender>,
    },
}

/// Where a fill looks for the next block to request. Within one fill only the remote's own
/// requests and assignments change the answer, so a chunk found with no block left stays so:
/// after a block of a chunk is requested, the chunks before it need no second look, and after
/// a chunk is assigned because none had a block left, only that chunk does.
#[derive(Clone, Copy, Debug)]
enum Look {
    /// The assigned chunks from this one on.
    From(ChunkIndex),
    /// Only this chunk, just assigned.
    Only(ChunkIndex),
}

/// The download pipeline over the peer's tables, for one input (see the module docs).
pub(super) struct Scheduler<'a> {
    now: Time,
    remotes: &'a mut Remotes,
    files: &'a mut BTreeMap<FileId, FileEntry>,
    rng: &'a mut Rng,
    out: &'a mut Outputs,
}

impl<'a> Scheduler<'a> {
    /// The pipeline at `now` over the peer's connections and files.
    pub fn new(
        now: Time,
        remotes: &'a mut Remotes,
        files: &'a mut BTreeMap<FileId, FileEntry>,
        rng: &'a mut Rng,
        out: &'a mut Outputs,
    ) -> Scheduler<'a> {
        Scheduler { now, remotes, files, rng, out }
    }

    fn send(&mut self, conn: ConnId, message: Message) {
        self.out.push(Output::Send { conn, message });
    }

    fn event(&mut self, event: Event) {
        self.out.push(Output::Event(event));
    }

    /// Fills the pipeline of every ready remote.
    pub fn schedule_all(&mut self) {
        for conn in self.remotes.ready() {
            self.schedule(conn);
        }
    }

    /// Fills the pipelines of the ready remotes that hold `chunk`, which has just become free
    /// to fetch (its remote refused it), until one of them takes it: only they can, and the
    /// others' choices did not change. A downloader told `Busy` thus asks the next holder with
    /// room, not every remote at once.
    fn schedule_holders(&mut self, file_id: FileId, chunk: ChunkIndex) {
        let now = self.now;
        let mut after = None;
        // One holder at a time, in `ConnId` order: filling one remote's pipeline changes no
        // other remote's stage, rest or chunks.
        while let Some(conn) = self
            .remotes
            .iter_after(after)
            .filter(|(_, r)| r.is_ready() && !r.requests().is_resting(now))
            .find(|(_, r)| r.chunks(file_id).is_some_and(|have| have.has(chunk)))
            .map(|(conn, _)| *conn)
        {
            self.schedule(conn);
            if self.remotes.get(&conn).is_some_and(|r| r.requests().assigned.contains(&(file_id, chunk))) {
                return;
            }
            after = Some(conn);
        }
    }

    /// Remotes whose rest is over (stalled, or `Busy`) get requests again.
    pub fn wake_rested(&mut self) {
        for conn in self.remotes.rests_over(self.now) {
            self.rest(conn, None);
            self.schedule(conn);
        }
    }

    /// Starts (`Some` end) or ends `conn`'s rest, keeping the table's index of rests.
    fn rest(&mut self, conn: ConnId, until: Option<Time>) {
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        if until.is_none() {
            remote.requests_mut().awaits_call = false;
        }
        let old = std::mem::replace(&mut remote.requests_mut().resting_until, until);
        if old != until {
            self.remotes.rest_changed(conn, old, until);
        }
    }

    /// Fills `conn`'s pipeline with block requests for every file it can help with.
    pub fn schedule(&mut self, conn: ConnId) {
        let Some(remote) = self.remotes.get(&conn) else { return };
        if !remote.is_ready() || remote.requests().is_resting(self.now) {
            return;
        }
        // Most remotes share one file with us: only the files after the first are collected
        // (an empty collect does not allocate).
        let mut files = remote.files().map(|(file_id, _)| *file_id);
        let (first, rest): (Option<FileId>, Vec<FileId>) = (files.next(), files.collect());
        for file_id in first.into_iter().chain(rest) {
            if self.files.get(&file_id).is_some_and(|e| e.is_fetching()) {
                self.fill(conn, file_id);
            }
        }
    }

    /// Fills `conn`'s pipeline for `file_id`. The blocks asked for go in one `Requests`
    /// message to a remote that takes request batches (one frame, however many), each in a
    /// `Request` of its own otherwise.
    fn fill(&mut self, conn: ConnId, file_id: FileId) {
        let mut blocks = Vec::new();
        self.fill_blocks(conn, file_id, &mut blocks);
        debug_assert!(blocks.len() <= REQUESTS_PER_MESSAGE_MAX, "a pipeline is at most that deep");
        if blocks.len() > 1 && self.remotes.get(&conn).is_some_and(Remote::request_batches) {
            return self.send(conn, Message::Requests { file_id, blocks });
        }
        for (chunk, offset, len) in blocks {
            self.send(conn, Message::Request { file_id, chunk, offset, len });
        }
    }

    /// Requests blocks of `file_id` from `conn` until its pipeline is full or nothing is left
    /// to ask it for; the requests to send are appended to `blocks`.
    fn fill_blocks(&mut self, conn: ConnId, file_id: FileId, blocks: &mut Vec<(ChunkIndex, u32, u32)>) {
        let Some(manifest) = self.files.get(&file_id).and_then(|e| e.manifest()) else { return };
        let (block_bytes, chunk_bytes) = (manifest.block_bytes(), manifest.chunk_bytes());
        let mut look = Look::From(ChunkIndex(0));
        loop {
            let Some(remote) = self.remotes.get(&conn) else { return };
            let requests = remote.requests();
            if !requests.takes_another(block_bytes, self.now) {
                return;
            }
            if let Some((chunk, block)) = self.next_block(conn, file_id, look) {
                let (offset, len) = self.start_request(conn, file_id, chunk, block);
                blocks.push((chunk, offset, len));
                if let Look::From(_) = look {
                    look = Look::From(chunk);
                }
                continue;
            }
            if requests.assigned_in(file_id).count() >= requests.claims(chunk_bytes) {
                return;
            }
            match self.choose_chunk(conn, file_id) {
                Some(choice) => look = Look::Only(self.assign(conn, file_id, choice)),
                None => {
                    self.recall_outpaced(conn, file_id);
                    return;
                }
            }
        }
    }

    /// A block of a chunk assigned to `conn`, among those `look` names, that nobody received
    /// and `conn` has not requested.
    fn next_block(&self, conn: ConnId, file_id: FileId, look: Look) -> Option<(ChunkIndex, u32)> {
        let requests = self.remotes.get(&conn)?.requests();
        let entry = self.files.get(&file_id)?;
        let (manifest, download) = (entry.manifest()?, entry.download()?);
        let block_bytes = manifest.block_bytes();
        match look {
            // A chunk whose every block `conn` has requested offers it nothing: the chunk book,
            // a few pointers away from here, is read only for the others.
            Look::From(first) => {
                let open = requests.assigned_from(file_id, first).filter(|chunk| {
                    let whole =
                        requests.requested_whole(file_id, *chunk, block_count(block_bytes, manifest.chunk_len(*chunk)));
                    debug_assert!(
                        !whole || download.next_block(conn, std::iter::once(*chunk)).is_none(),
                        "{conn} requested every block of {chunk}, yet the chunk book offers one"
                    );
                    !whole
                });
                download.next_block(conn, open)
            }
            Look::Only(chunk) => download.next_block(conn, std::iter::once(chunk)),
        }
    }

    /// The next chunk for `conn` (see [`super::downloads::Download::choose`]).
    fn choose_chunk(&mut self, conn: ConnId, file_id: FileId) -> Option<Choice> {
        let chooser = chooser(self.remotes, conn, file_id)?;
        let entry = self.files.get(&file_id)?;
        let (remotes, now, download) = (&*self.remotes, self.now, entry.download()?);
        let block_bytes = entry.manifest()?.block_bytes();
        // Fetchers can lag only while the download is quiet, which is rare; only then are the
        // remotes passed over once for the slowest delivery.
        let lagging = download.quiet(now, block_bytes).then(|| {
            let unmeasured = remotes.slowest_delivery();
            move |c: ConnId| remotes.get(&c).is_none_or(|r| r.requests().lags(now, block_bytes, unmeasured))
        });
        download.choose(chooser, entry.have(), self.rng, lagging)
    }

    /// `conn`, idle, found nothing to fetch: a chunk it holds that one clearly slower remote
    /// fetches, whose block has not arrived, is withdrawn from that remote (`Withdraw`), to be
    /// fetched from `conn` once the remote answered that its block will not come. A block
    /// whose upload started comes anyway, and nothing is fetched twice: a slow holder does not
    /// keep chunks while a fast one idles. This holds while other blocks keep arriving too
    /// (unlike endgame, which fetches a second copy): where uplinks differ, the chunks parked
    /// at slow holders are what the download waits for long before it goes quiet.
    fn recall_outpaced(&mut self, conn: ConnId, file_id: FileId) {
        let rate = self.remotes.get(&conn).map_or(0, |r| r.requests().bytes_per_s());
        if rate == 0 {
            return;
        }
        let Some(entry) = self.files.get(&file_id) else { return };
        let (Some(download), Some(manifest)) = (entry.download(), entry.manifest()) else { return };
        let (remotes, now, block_bytes) = (&*self.remotes, self.now, manifest.block_bytes());
        let Some(chooser) = chooser(remotes, conn, file_id) else { return };
        let unmeasured = remotes.slowest_delivery();
        let outpaced = |c: ConnId, chunk: ChunkIndex| {
            remotes.get(&c).is_some_and(|r| {
                r.withdrawals()
                    && !r.requests().withdrawing
                    && !r.requests().recalls.contains_key(&(file_id, chunk))
                    && r.requests().outpaced_by(now, rate, block_bytes, unmeasured)
            })
        };
        let Some((chunk, fetcher)) = download.outpaced_fetch(&chooser, entry.have(), outpaced) else { return };
        let Some(requests) = self.remotes.get_mut(&fetcher).map(Remote::requests_mut) else { return };
        requests.recalls.insert((file_id, chunk), conn);
        let offsets: Vec<u32> = requests.of_chunk(file_id, chunk).map(|k| k.2).collect();
        for offset in offsets {
            self.send(fetcher, Message::Withdraw { file_id, chunk, offset });
        }
    }

    /// Gives `conn` the chunk `choose_chunk` chose for it; returns the chunk.
    fn assign(&mut self, conn: ConnId, file_id: FileId, choice: Choice) -> ChunkIndex {
        let Some((manifest, download, _)) = self.files.get_mut(&file_id).and_then(FileEntry::download_parts) else {
            unreachable!("a chunk is chosen only for a download whose manifest is known")
        };
        let (Choice::Fresh(chunk) | Choice::Endgame(chunk)) = choice;
        let blocks = block_count(manifest.block_bytes(), manifest.chunk_len(chunk));
        let chunk = download.assign(choice, blocks, conn);
        let Some(remote) = self.remotes.get_mut(&conn) else { unreachable!("a chunk is chosen only for a remote") };
        remote.requests_mut().assigned.insert((file_id, chunk));
        let from = remote.addr();
        self.event(Event::ChunkRequested { file_id, chunk, from });
        chunk
    }

    /// Records a request of `block` of `chunk`, assigned to `conn`, as in flight; returns its
    /// offset and length.
    fn start_request(&mut self, conn: ConnId, file_id: FileId, chunk: ChunkIndex, block: u32) -> (u32, u32) {
        let Some((manifest, download, _)) = self.files.get_mut(&file_id).and_then(FileEntry::download_parts) else {
            unreachable!("a block is requested only of a download whose manifest is known")
        };
        let (offset, len) = block_span(manifest.block_bytes(), manifest.chunk_len(chunk), block);
        download.request(chunk, block, conn);
        let Some(remote) = self.remotes.get_mut(&conn) else { unreachable!("a block is requested only of a remote") };
        remote.requests_mut().start((file_id, chunk, offset), self.now);
        (offset, len)
    }

    /// `conn` took a request of ours for a block on our behalf (`Pushed`): it counts as our
    /// own when the block is one we would ask it for now, a block of a chunk nobody fetches,
    /// with room in its pipeline. Returns whether it was taken (if not, it is to be
    /// cancelled).
    pub fn on_pushed(&mut self, conn: ConnId, file_id: FileId, chunk: ChunkIndex, offset: u32, len: u32) -> bool {
        let Some(remote) = self.remotes.get(&conn) else { return false };
        let requests = remote.requests();
        let Some(entry) = self.files.get(&file_id).filter(|e| e.is_fetching()) else { return false };
        let (Some(manifest), Some(download)) = (entry.manifest(), entry.download()) else { return false };
        let block_bytes = manifest.block_bytes();
        let Some(block) = manifest.chunk(chunk.0).and_then(|p| block_at(block_bytes, manifest.chunk_len(p), offset))
        else {
            return false;
        };
        if block_span(block_bytes, manifest.chunk_len(chunk), block).1 != len
            || !remote.is_ready()
            || !requests.takes_another(block_bytes, self.now)
            || requests.assigned_in(file_id).count() >= requests.claims(manifest.chunk_bytes())
            || !download.may_start(chunk, remote.peer_id())
        {
            return false;
        }
        self.assign(conn, file_id, Choice::Fresh(chunk));
        self.start_request(conn, file_id, chunk, block);
        true
    }

    /// A block arrived. A block requested and then cancelled (late) is still taken while its
    /// chunk is being fetched and lacks it; other unrequested blocks are dropped. A block of the
    /// wrong length is a protocol violation, for the peer to act on.
    pub fn on_data(
        &mut self,
        conn: ConnId,
        file_id: FileId,
        chunk: ChunkIndex,
        offset: u32,
        bytes: Bytes,
    ) -> Result<(), WrongLength> {
        let now = self.now;
        let Some(remote) = self.remotes.get_mut(&conn) else { return Ok(()) };
        // Bytes arriving are progress, requested or late; only a requested block is useful.
        if remote.requests_mut().in_flight.remove(&(file_id, chunk, offset)) {
            remote.useful(now);
        }
        let requests = remote.requests_mut();
        requests.progress_at = now;
        requests.withdrawing = false;
        requests.rate.arrived(now, bytes.len() as u64);
        let awaits_call = requests.awaits_call;
        let sender = remote.identity();
        if !awaits_call {
            self.rest(conn, None);
        }
        let Some((manifest, download, _)) = self.files.get_mut(&file_id).and_then(FileEntry::download_parts) else {
            return Ok(());
        };
        download.arrived(now, bytes.len() as u64);
        let Some(chunk_len) = manifest.chunk(chunk.0).map(|p| manifest.chunk_len(p)) else { return Ok(()) };
        let block_bytes = manifest.block_bytes();
        let Some(block) = block_at(block_bytes, chunk_len, offset).filter(|_| download.is_active(chunk)) else {
            return Ok(());
        };
        if bytes.len() != block_span(block_bytes, chunk_len, block).1 as usize {
            return Err(WrongLength { chunk, offset, len: bytes.len() });
        }
        let Arrival::Taken { losers, released } = download.receive(chunk, block, conn, sender) else {
            self.schedule(conn);
            return Ok(());
        };
        for loser in &losers {
            // Another remote delivered the block it was also fetching (endgame): cancel its copy.
            if let Some(remote) = self.remotes.get_mut(loser) {
                remote.requests_mut().in_flight.remove(&(file_id, chunk, offset));
                self.send(*loser, Message::Cancel { file_id, chunk, offset });
            }
        }
        // Every block of the chunk arrived: it no longer occupies any remote.
        for conn in released {
            if let Some(remote) = self.remotes.get_mut(&conn) {
                remote.requests_mut().assigned.remove(&(file_id, chunk));
                remote.requests_mut().recalls.remove(&(file_id, chunk));
            }
        }
        // A remote waiting for a call keeps a chunk only while blocks of it are on their way
        // (read before its `Busy`, or withdrawn too late): the rest goes to other holders.
        let requests = self.remotes.get(&conn).map(Remote::requests);
        if awaits_call && requests.is_some_and(|r| r.assigned.contains(&(file_id, chunk)) && !r.fetches(file_id, chunk))
        {
            self.release(conn, file_id, chunk);
            self.schedule_holders(file_id, chunk);
        }
        self.out.push(Output::WriteBlock { file_id, chunk, offset, bytes });
        // Only the sender and the remotes whose copy was cancelled have room in their pipelines.
        self.schedule(conn);
        for loser in losers {
            self.schedule(loser);
        }
        Ok(())
    }

    /// The remote will not serve a block: give the chunk to someone else. A remote that is
    /// `Busy` (its upload slots and line are taken) keeps its chunks in our view. One that
    /// takes part in room calls answered every request we had outstanding with it (see
    /// `uploads`): all its chunks go to other holders (those we asked for after the refused
    /// one once it answered our `Withdraw`), and it is asked again when it calls
    /// (`Room`, see [`Scheduler::on_room`]), or after [`BUSY_CALL_WAIT_MAX`] without a call.
    /// Another gives up this chunk and is asked again after [`BUSY_RETRY_DELAY`]. Any other
    /// refusal means it will not serve this chunk.
    pub fn on_reject(&mut self, conn: ConnId, file_id: FileId, chunk: ChunkIndex, offset: u32, reason: RejectReason) {
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        let was_in_flight = remote.requests_mut().in_flight.remove(&(file_id, chunk, offset));
        if reason == RejectReason::Withdrawn {
            if was_in_flight {
                self.withdrawn(conn, file_id, chunk, offset);
            }
            return;
        }
        if reason == RejectReason::Busy && remote.room_calls() {
            // Even when this request was cancelled meanwhile: the others are dropped all the same.
            let chunks: Vec<(FileId, ChunkIndex)> = remote.requests().assigned.iter().copied().collect();
            let crossed = remote.requests().sent_after((file_id, chunk, offset));
            let block_bytes = self.files.get(&file_id).and_then(FileEntry::manifest).map(|m| m.block_bytes());
            let withdraw = crossed && remote.withdrawals() && block_bytes >= Some(CROSSED_WITHDRAW_BLOCK_BYTES_MIN);
            remote.requests_mut().awaits_call = true;
            let keys: Vec<BlockKey> =
                if withdraw { remote.requests().in_flight.iter().copied().collect() } else { Vec::new() };
            self.rest(conn, Some(self.now + BUSY_CALL_WAIT_MAX));
            if withdraw {
                // Requests sent after the refused one crossed the `Busy`, and one may have
                // found room there after all (called meanwhile): a `Cancel` comes too late for
                // a block already read. Withdrawn, each chunk goes to other holders once the
                // remote answered that its block will not come; a block already read comes.
                if was_in_flight {
                    self.unrequest(conn, file_id, chunk, offset);
                }
                for (file_id, chunk, offset) in keys {
                    self.send(conn, Message::Withdraw { file_id, chunk, offset });
                }
                for (file_id, chunk) in chunks {
                    if !self.remotes.get(&conn).is_some_and(|r| r.requests().fetches(file_id, chunk)) {
                        self.release(conn, file_id, chunk);
                        self.schedule_holders(file_id, chunk);
                    }
                }
                return;
            }
            // The remote dropped our requests sent with or before the refused one. Those sent
            // later crossed its `Busy` and may have found room there after all: cancel them, or
            // the chunks they ask for, freed here for other holders, would come twice.
            for &(file_id, chunk) in &chunks {
                if crossed {
                    self.unassign(conn, file_id, chunk);
                } else {
                    self.release(conn, file_id, chunk);
                }
            }
            for (file_id, chunk) in chunks {
                self.schedule_holders(file_id, chunk);
            }
            return;
        }
        if !was_in_flight {
            return;
        }
        if reason == RejectReason::Busy {
            self.rest(conn, Some(self.now + BUSY_RETRY_DELAY));
            self.unassign(conn, file_id, chunk);
        } else {
            self.give_up_on(conn, file_id, chunk);
        }
        self.schedule_holders(file_id, chunk);
    }

    /// `conn` answered that it will not send the block at `offset` of `chunk`, which we
    /// withdrew: the block may be asked for again, and once no other block of the chunk can
    /// still come from `conn`, another holder is asked for the chunk.
    fn withdrawn(&mut self, conn: ConnId, file_id: FileId, chunk: ChunkIndex, offset: u32) {
        if !self.unrequest(conn, file_id, chunk, offset) {
            return;
        }
        if !self.remotes.get(&conn).is_some_and(|r| r.requests().fetches(file_id, chunk)) {
            let recalled_for =
                self.remotes.get(&conn).and_then(|r| r.requests().recalls.get(&(file_id, chunk)).copied());
            self.release(conn, file_id, chunk);
            if let Some(faster) = recalled_for {
                self.schedule(faster);
            }
            self.schedule_holders(file_id, chunk);
        }
    }

    /// The block at `offset` of `chunk`, which `conn` was asked for, will not come from it: the
    /// block may be asked for again. Returns whether the file is still being fetched.
    fn unrequest(&mut self, conn: ConnId, file_id: FileId, chunk: ChunkIndex, offset: u32) -> bool {
        let Some((manifest, download, _)) = self.files.get_mut(&file_id).and_then(FileEntry::download_parts) else {
            return false;
        };
        // The request was in flight, so its chunk and offset are ones we asked for.
        if let Some(block) = block_at(manifest.block_bytes(), manifest.chunk_len(chunk), offset) {
            download.unrequest(chunk, block, conn);
        }
        true
    }

    /// `conn` calls: room in its upload line is free for us. Its rest ends and it is asked
    /// for what it can give; returns whether it was asked for anything (if not, the room is
    /// to be passed on).
    pub fn on_room(&mut self, conn: ConnId) -> bool {
        self.rest(conn, None);
        self.schedule(conn);
        self.remotes.get(&conn).is_some_and(|r| !r.requests().is_empty())
    }

    /// Stops asking `conn` for `chunk` (it refused it): the chunk goes to another
    /// remote, and this connection is not asked for it again.
    fn give_up_on(&mut self, conn: ConnId, file_id: FileId, chunk: ChunkIndex) {
        if !self.remotes.contains_key(&conn) {
            return;
        }
        if self.remotes.drop_chunk(&conn, file_id, chunk) {
            if let Some(download) = self.files.get_mut(&file_id).and_then(|e| e.download_mut()) {
                download.count_lost_chunk(chunk);
            }
        }
        self.unassign(conn, file_id, chunk);
    }

    /// Takes `chunk` away from `conn`: cancels its requests for the chunk; the received blocks
    /// stay, and the chunk is free for another remote.
    pub fn unassign(&mut self, conn: ConnId, file_id: FileId, chunk: ChunkIndex) {
        for offset in self.release(conn, file_id, chunk) {
            self.send(conn, Message::Cancel { file_id, chunk, offset });
        }
    }

    /// Takes `chunk` away from `conn` without telling it; returns the offsets of the requests
    /// for the chunk that were in flight.
    fn release(&mut self, conn: ConnId, file_id: FileId, chunk: ChunkIndex) -> Vec<u32> {
        let withdrawn =
            self.remotes.get_mut(&conn).map(|r| r.requests_mut().unassign(file_id, chunk)).unwrap_or_default();
        if let Some(download) = self.files.get_mut(&file_id).and_then(|e| e.download_mut()) {
            download.unassign(chunk, conn);
        }
        withdrawn
    }

    /// Stops fetching `file_id` from `conn`.
    pub fn release_file(&mut self, conn: ConnId, file_id: FileId) {
        let Some(remote) = self.remotes.get(&conn) else { return };
        let chunks: Vec<ChunkIndex> = remote.requests().assigned_in(file_id).collect();
        for chunk in chunks {
            self.unassign(conn, file_id, chunk);
        }
    }

    /// `conn` let its requests wait past its stall deadline: slow, not wrong, it keeps its
    /// chunks' received blocks (a late block is still taken) but rests for
    /// [`REQUEST_TIMEOUT`], and the chunks it has requests for go to others. From a remote that
    /// answers `Withdraw` they go only once it answered that their blocks will not come: a
    /// block leaving a slow uplink takes seconds and tells nothing of itself until it is all
    /// in, so one already on its way would otherwise come twice. If it lets its next deadline
    /// pass too (no answer, no block), they go then.
    pub fn stalled(&mut self, conn: ConnId) {
        let now = self.now;
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        let withdraw = remote.withdrawals() && !remote.requests().withdrawing;
        let requests = remote.requests_mut();
        let keys: Vec<BlockKey> = requests.in_flight.iter().copied().collect();
        requests.withdrawing = withdraw;
        if withdraw {
            // Its next deadline, should it neither answer nor send, counts from now.
            requests.progress_at = now;
        }
        self.rest(conn, Some(now + REQUEST_TIMEOUT));
        if withdraw {
            for (file_id, chunk, offset) in keys {
                self.send(conn, Message::Withdraw { file_id, chunk, offset });
            }
            return;
        }
        let mut chunks: Vec<(FileId, ChunkIndex)> =
            keys.into_iter().map(|(file_id, chunk, _)| (file_id, chunk)).collect();
        chunks.dedup();
        for (file_id, chunk) in chunks {
            self.unassign(conn, file_id, chunk);
        }
    }

    /// The connection `conn` is gone (its remote already forgotten) with `requests`: its
    /// chunks are free for others. Returns whether it had any (pipelines are worth refilling).
    pub fn conn_gone(&mut self, conn: ConnId, requests: &Requests) -> bool {
        debug_assert!(!self.remotes.contains_key(&conn), "only a forgotten connection's chunks are orphaned");
        for (file_id, chunk) in &requests.assigned {
            self.unassign(conn, *file_id, *chunk);
        }
        !requests.assigned.is_empty()
    }

    /// The driver wrote a block: a chunk whose every block is written is hashed.
    pub fn on_block_written(
        &mut self,
        file_id: FileId,
        chunk: ChunkIndex,
        offset: u32,
        result: Result<(), StoreError>,
    ) {
        if let Err(reason) = result {
            self.fail_download(file_id, format!("cannot write chunk {chunk}: {reason}"));
            return;
        }
        let Some((manifest, download, _)) = self.files.get_mut(&file_id).and_then(FileEntry::download_parts) else {
            unreachable!("a write completes a block of a download whose manifest is known")
        };
        let block = block_at(manifest.block_bytes(), manifest.chunk_len(chunk), offset);
        debug_assert!(block.is_some(), "a write completes a block this peer asked to write");
        if block.is_some_and(|block| download.written(chunk, block)) {
            self.out.push(Output::HashChunk { file_id, chunk });
        }
    }

    /// The driver hashed a written chunk, and the digest matched what the chunk's piece
    /// expects or not (`result`): it is verified or corrupt (see [`Hashed`] for what the peer
    /// does next).
    pub fn on_chunk_hashed(&mut self, file_id: FileId, chunk: ChunkIndex, result: Result<bool, StoreError>) -> Hashed {
        let matches = match result {
            Ok(matches) => matches,
            Err(reason) => {
                self.fail_download(file_id, format!("cannot read back chunk {chunk}: {reason}"));
                return Hashed::Failed;
            }
        };
        let Some((_, download, have)) = self.files.get_mut(&file_id).and_then(FileEntry::download_parts) else {
            unreachable!("a hash completes a chunk of a download whose manifest is known")
        };
        let (senders, room_again, guilty) = match download.hashed(chunk, matches, have) {
            Verdict::Verified { senders, room_again, guilty } => (senders, room_again, guilty),
            Verdict::Corrupt { senders, guilty } => {
                for (_, addr) in senders.keys() {
                    self.event(Event::ChunkCorrupt { file_id, chunk, from: *addr });
                }
                return Hashed::Corrupt { guilty };
            }
        };
        if have.count() == 1 {
            // Downloaders that started together get their first chunks about now: ask soon
            // for the holders among them.
            download.locate_mut().ask_soon(self.now);
        }
        let from = senders.keys().next().map(|(_, addr)| *addr);
        Hashed::Verified { from, progress: progress(&self.files[&file_id]), room_again, guilty }
    }

    /// Every chunk is verified: ask the driver to move the file into place.
    pub fn finalize(&mut self, file_id: FileId) {
        let Some(download) = self.files.get_mut(&file_id).and_then(|e| e.download_mut()) else { return };
        download.finalizing();
        self.out.push(Output::Finalize { file_id });
    }

    /// The driver moved the finished file into place (or could not).
    pub fn on_finalized(&mut self, file_id: FileId, result: Result<(), StoreError>) {
        let Some(entry) = self.files.get_mut(&file_id) else { return };
        if !entry.download().is_some_and(|d| d.phase() == Phase::Finalizing) {
            return;
        }
        match result {
            Ok(()) => {
                entry.finished();
                self.event(Event::Complete { file_id });
            }
            Err(reason) => self.fail_download(file_id, format!("cannot move the finished file into place: {reason}")),
        }
    }

    /// The download cannot go on: stop fetching it and say why. Verified chunks stay served.
    fn fail_download(&mut self, file_id: FileId, reason: String) {
        let Some(download) = self.files.get_mut(&file_id).and_then(|e| e.download_mut()) else { return };
        if !download.fail() {
            return;
        }
        let assigned: Vec<(ConnId, ChunkIndex)> = self
            .remotes
            .iter()
            .flat_map(|(c, r)| r.requests().assigned_in(file_id).map(move |p| (*c, p)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for (conn, chunk) in assigned {
            self.unassign(conn, file_id, chunk);
        }
        self.event(Event::DownloadFailed { file_id, reason });
    }
}

/// A file's progress: its verified chunks and bytes, and the holders its download counts.
fn progress(entry: &FileEntry) -> Progress {
    let have_bytes = entry.manifest().map_or(0, |m| {
        // Every held chunk is full size but the last, which may be short.
        let last = ChunkIndex(m.chunk_count().saturating_sub(1));
        let short = if entry.have().has(last) { m.chunk_bytes() - m.chunk_len(last) } else { 0 };
        u64::from(entry.have().count()) * u64::from(m.chunk_bytes()) - u64::from(short)
    });
    let peers = entry.download().map_or(0, |d| d.holders());
    Progress { have: entry.have().count(), total: entry.have().len(), have_bytes, peers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::UPLOAD_TURN_BYTES;

    #[test]
    fn claims_cover_half_a_second_at_the_rate_and_128_kib_before_it_is_measured() {
        const KIB: u32 = 1024;
        assert_eq!(claims_for(0, 16 * KIB), 8, "128 KiB of 16 KiB chunks");
        assert_eq!(claims_for(0, 64 * KIB), 2);
        assert_eq!(claims_for(0, 1024 * KIB), CHUNKS_CLAIMED_UNMEASURED_MIN, "two, however large");
        assert_eq!(claims_for(0, 8 * KIB), CHUNKS_CLAIMED_PER_CONN_MAX, "capped");
        assert_eq!(claims_for(1_000_000, 64 * KIB), 7, "500 kB of 64 KiB chunks");
        assert_eq!(claims_for(10_000, 64 * KIB), 1, "a slow remote claims one");
    }

    #[test]
    fn a_remote_that_delivers_faster_gets_a_deeper_pipeline() {
        let mut slow = Requests::new(Time::ZERO);
        let mut fast = Requests::new(Time::ZERO);
        const BLOCK: u32 = 256 * 1024;
        let first = Requests::new(Time::ZERO).pipeline_depth(BLOCK);
        assert_eq!(first, 1, "nothing measured yet: the smallest pipeline");
        slow.rate.start(Time::ZERO);
        fast.rate.start(Time::ZERO);
        for ms in 1..=20 {
            slow.rate.arrived(Time::from_millis(ms * 100), 16 * 1024);
            fast.rate.arrived(Time::from_millis(ms * 100), 256 * 1024);
        }
        // 160 KB/s against 2.6 MB/s.
        assert_eq!(slow.pipeline_depth(16 * 1024), 16, "16 KiB blocks: a count bound, not bytes");
        assert_eq!(slow.pipeline_depth(BLOCK), 1);
        assert!(fast.pipeline_depth(BLOCK) >= 9, "{}", fast.pipeline_depth(BLOCK));
    }

    #[test]
    fn a_remote_not_yet_measured_lags_after_four_turns_at_the_slowest_rate_measured() {
        const BLOCK: u32 = 256 * 1024;
        let mut waiting = Requests::new(Time::ZERO);
        waiting.start((FileId(crate::ids::Digest([1; 32])), ChunkIndex(0), 0), Time::ZERO);
        assert!(!waiting.lags(Time::ZERO + (ENDGAME_PATIENCE - Duration::from_millis(1)), BLOCK, 0));
        assert!(waiting.lags(Time::ZERO + ENDGAME_PATIENCE, BLOCK, 0), "no rate measured anywhere: the patience");
        // Half of a 125 KB/s uplink: four turns take longer than the patience.
        let slowest = 62_500;
        let four_turns = Duration::from_micros(4 * UPLOAD_TURN_BYTES * 1_000_000 / slowest);
        assert!(four_turns > ENDGAME_PATIENCE);
        assert!(!waiting.lags(Time::ZERO + (four_turns - Duration::from_millis(1)), BLOCK, slowest));
        assert!(waiting.lags(Time::ZERO + four_turns, BLOCK, slowest));
        // Where a turn is one block of 64 KiB, four turns are four such blocks.
        let slower = 31_250;
        let four_block_turns = Duration::from_micros(4 * 64 * 1024 * 1_000_000 / slower);
        assert!(four_block_turns > ENDGAME_PATIENCE);
        assert!(!waiting.lags(Time::ZERO + (four_block_turns - Duration::from_millis(1)), 64 * 1024, slower));
        assert!(waiting.lags(Time::ZERO + four_block_turns, 64 * 1024, slower));
        // Its own rate, once measured, is what counts.
        for s in 1..=4 {
            waiting.rate.arrived(Time::from_millis(s * 100), 1024 * 1024);
        }
        waiting.progress_at = Time::from_millis(400);
        assert!(waiting.lags(Time::from_millis(400) + ENDGAME_PATIENCE, BLOCK, slowest));
    }

    #[test]
    fn a_slow_remote_that_keeps_delivering_is_given_longer_before_it_counts_as_stalled() {
        let mut crawling = Requests::new(Time::ZERO);
        let key = (FileId(crate::ids::Digest([1; 32])), ChunkIndex(0), 0);
        crawling.start(key, Time::ZERO);
        assert_eq!(crawling.stall_deadline(), Some(Time::ZERO + REQUEST_TIMEOUT), "nothing measured yet");
        // 16 KiB a second: two blocks take longer than the longest patience.
        for s in 1..=4 {
            crawling.rate.arrived(Time::from_millis(s * 1000), 16 * 1024);
        }
        crawling.progress_at = Time::from_millis(4000);
        assert_eq!(crawling.stall_deadline(), Some(Time::from_millis(4000) + REQUEST_TIMEOUT_MAX));
    }
}
