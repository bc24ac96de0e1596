//! The upload side of a peer: which remote's request is read from the store next, and when.
//!
//! [`Uploads`] is a small machine of its own. Its inputs are a remote's checked request
//! ([`Uploads::request`]), cancel or withdrawal, every `Data` frame the peer queues on a connection
//! ([`Uploads::data_queued`]), the driver's report that `Data` frames left
//! ([`Uploads::sent`], from `Input::Sent`), a finished read, and a closed connection; its
//! output is the next read to start ([`Uploads::next_read`]) and the time it wants to be asked
//! again. Its state is private to this module; `serve.rs` checks the requests `Peer` routes to
//! it, and [`Offers`] (`offers.rs`), which it owns, decides which chunks a seeder tells each
//! downloader it has (super-seeding).
//!
//! Three mechanisms decide the order, chosen so that a slow uplink is filled without its
//! queued data waiting where a `Cancel` can no longer recall it:
//! - **Backpressure.** A connection gets its next read only while fewer than two blocks read for it
//!   are not yet reported sent (one leaving, one waiting behind it; more while they total under
//!   [`SERVE_UNSENT_BYTES_FLOOR`], small blocks), and their bytes stay under
//!   [`SERVE_UNSENT_BYTES_PER_CONN_MAX`]: the rest of its requests wait here, where a `Cancel`
//!   removes them, not in a transport buffer. `Data` frames leave a connection in the order they
//!   were queued, so each report of sent frames retires the oldest ones.
//! - **Upload slots.** A few connections are served at a time, so each gets a useful share of
//!   the uplink and its blocks (and chunks) arrive soon enough to be passed on: at least
//!   [`UPLOAD_SLOTS_MIN`](crate::limits::UPLOAD_SLOTS_MIN), more while more make the upload
//!   faster, because the receivers' downlinks take less than a slot's share ([`SlotCount`],
//!   `slot_count.rs`, which this machine owns). The others wait in line. A slot holder that
//!   has been served [`UPLOAD_TURN_BYTES`] (or one block of at least
//!   [`UPLOAD_TURN_BLOCK_BYTES_MIN`]) in its turn while others wait goes to the back of the
//!   line (rotation, so a queued request waits for a few turns, not for every connection); one
//!   whose requests are all served and sent gives its slot up. So does one none of whose
//!   `Data` frames left for [`UPLOAD_STALL_TIMEOUT`] while others wait (a remote that asks and
//!   never reads): its queued requests are refused, as are its new ones until its frames drain.
//! - **A short line.** At most [`UPLOAD_LINE_PER_SLOT`] connections per slot wait for one (more
//!   while the line holds less than [`UPLOAD_LINE_BYTES_MIN`]: small chunks); a request of a
//!   connection that is neither served nor in line is refused (`Busy`) while the line is full,
//!   so the downloader asks another holder of the chunk at once instead of waiting here for
//!   every turn before its own (choking, in BitTorrent's terms). A refused connection gets a
//!   ticket: room in the line goes to ticket holders first (rarest chunk first, see below). A
//!   slot holder whose turn ends while tickets are out leaves the line (its queued requests
//!   refused too) and takes a ticket itself, so the line goes round every asker, not only the
//!   few that ask again the moment they were served.
//! - **Room calls.** A remote whose `Hello` set `room_calls` does not ask again on a timer after a
//!   refusal: when room in the line is free for its ticket, it is called (`Room`, from
//!   [`Uploads::take_calls`]) and the room is held for it until it asks, answers that it has
//!   nothing to ask (`Pass`, [`Uploads::pass`]), or [`BUSY_TICKET_TIME`] passed (a round trip with
//!   room to spare): called with room free, it is let in when it asks even if the line took others
//!   meanwhile (it takes any asker while it holds few bytes), so its call is not answered `Busy`.
//!   Each such call holds one of the line's places, so at most as many tickets are called at once
//!   as it has free (at least one). Until then its ticket keeps its place however long the line
//!   takes. To such a remote one `Busy` answers every request it has outstanding: of a refused
//!   queue only the first request is answered, and requests arriving uncalled within
//!   [`BUSY_TICKET_TIME`] of the refusal (sent before it arrived) are dropped
//!   ([`Refused::Covered`]). So a full uploader answers each waiting downloader once per turn, not
//!   once per pipelined request and retry. A request that crossed the `Busy` may still be queued
//!   (the line had room when it arrived, or it came after a call); the downloader withdraws it
//!   (or cancels it) and may ask again when called, so a request for a block already queued,
//!   being read or waiting to leave on the connection is dropped too: the block is sent once.
//!   Other remotes ask again after [`BUSY_RETRY_DELAY`](crate::limits::BUSY_RETRY_DELAY) and
//!   their tickets lapse when they do not.
//! - **Pacing.** With an upload limit, a token bucket (`pacing.rs`) spends the rate.
//!
//! - **Rarest first.** A free slot goes to the waiting connection that asked for the chunk the
//!   fewest of our remotes hold (the earliest in line among equals), and a slot holder's
//!   requests of that chunk are read before its others: a chunk that only a few peers hold
//!   spreads before copies of chunks many could already serve. Room in the line goes to the
//!   tickets the same way (by the chunk each was refused, the earliest refused among equals),
//!   and while the line is full the rarest ticket is called anyway when its chunk has fewer
//!   holders than a waiting connection's rarest one: its request then makes room. So a
//!   seeder's chunk that nobody holds yet is not kept waiting behind copies of one that
//!   went out already, whoever asked first. Rarest first has a bound: a connection refused for
//!   lack of room and not served while [`UPLOAD_STARVED_TURNS`] slots went to others goes
//!   ahead of every rarer asker, for room in the line and for a slot, and is not sent out of
//!   the line to make room. A downloader that fell behind asks for chunks many hold, and every
//!   holder would otherwise serve the others first, turn after turn.
//!
//! Slot holders take turns block by block, and at most [`SERVE_READS_IN_FLIGHT_MAX`] reads are
//! outstanding with the driver at once.

mod offers;
mod pacing;
mod serve;
mod slot_count;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::ids::{ChunkIndex, ConnId, FileId};
use crate::limits::{
    BUSY_TICKET_TIME, BUSY_TICKET_TIME_MAX, SENT_BLOCKS_REMEMBERED_PER_CONN_MAX, SERVE_QUEUE_PER_CONN_MAX,
    SERVE_READS_IN_FLIGHT_MAX, SERVE_UNSENT_BYTES_FLOOR, SERVE_UNSENT_BYTES_PER_CONN_MAX, UPLOAD_LINE_BYTES_MIN,
    UPLOAD_LINE_PER_SLOT, UPLOAD_STALL_TIMEOUT, UPLOAD_STARVED_TURNS, UPLOAD_TURN_BLOCK_BYTES_MIN, UPLOAD_TURN_BYTES,
};
use crate::time::{earlier, Time};

use pacing::TokenBucket;
use slot_count::SlotCount;

use super::chunks::FileEntry;
use super::remote::Remotes;

pub(super) use offers::{other_downloader, sole_downloader, Held, Offers, OurFile};
pub(super) use serve::{check_request, is_last_block};

/// A queued block request of a remote, and the read the driver is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ServeJob {
    pub conn: ConnId,
    pub file_id: FileId,
    pub chunk: ChunkIndex,
    pub offset: u32,
    pub len: u32,
}

impl ServeJob {
    /// The block it asks for: its file, chunk and offset.
    fn block(&self) -> (FileId, ChunkIndex, u32) {
        (self.file_id, self.chunk, self.offset)
    }
}

/// A request that is not queued: the connection has [`SERVE_QUEUE_PER_CONN_MAX`] already, its
/// remote does not read, or it is not in line and the line is full (see [`UPLOAD_LINE_PER_SLOT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// To be answered `Busy`.
    Busy,
    /// Not to be answered: its remote takes part in room calls and was answered `Busy` moments
    /// ago, which answers every request it had outstanding, this one too (it was on its way);
    /// or the same block is already queued or being read for the connection, and that copy
    /// answers it.
    Covered,
}

/// What the upload side keeps per connection.
#[derive(Debug, Default)]
struct ConnUploads {
    /// Requests not yet read, first come first served.
    queue: VecDeque<ServeJob>,
    /// The bytes `queue` asks for, kept with it: the line's bytes are summed at every look for
    /// room, over queues of up to [`SERVE_QUEUE_PER_CONN_MAX`] requests.
    queued_bytes: u64,
    /// Bytes being read for it, or read and not reported sent yet.
    unsent_bytes: u64,
    /// Each `Data` frame queued on it and not reported sent, in order: its block and payload
    /// bytes.
    unsent_data: VecDeque<((FileId, ChunkIndex, u32), u32)>,
    /// The last [`SENT_BLOCKS_REMEMBERED_PER_CONN_MAX`] blocks reported sent, and when.
    sent_lately: VecDeque<((FileId, ChunkIndex, u32), Time)>,
    /// Reads started for it and not finished.
    reads: Vec<ServeJob>,
    /// Bytes read for it since it got its slot.
    turn_bytes: u64,
    /// Its turn is over: it gets no more reads, and hands its slot on once what was read for
    /// it left.
    turn_over: bool,
    /// Its remote takes part in room calls: its ticket waits to be called.
    room_calls: bool,
    /// When its request was last refused because the line was full.
    refused_at: Option<Time>,
    /// The slot count ([`Uploads::turns`]) when it was refused (or sent out of the line)
    /// without being served a block since.
    unserved_since: Option<u64>,
    /// How long its ticket holds room for it: [`BUSY_TICKET_TIME`], or half as long again as
    /// it took to come back after its last refusal when that is longer (a remote far away
    /// asks again a round trip after [`BUSY_RETRY_DELAY`](crate::limits::BUSY_RETRY_DELAY)),
    /// at most [`BUSY_TICKET_TIME_MAX`].
    ticket_time: Duration,
    /// Since when its oldest unsent `Data` frame waits to leave (from the first look at the
    /// slots after it was queued); `None` while it has none.
    stalled_since: Option<Time>,
}

impl ConnUploads {
    fn idle(&self) -> bool {
        self.queue.is_empty() && self.unsent_bytes == 0
    }

    /// Whether its frames have not left for [`UPLOAD_STALL_TIMEOUT`] at `now`.
    fn stalled(&self, now: Time) -> bool {
        self.stalled_since.is_some_and(|since| since + UPLOAD_STALL_TIMEOUT <= now)
    }

    /// Whether its next block may be read: under two blocks read and unsent, or under
    /// [`SERVE_UNSENT_BYTES_FLOOR`] unsent (small blocks), and under
    /// [`SERVE_UNSENT_BYTES_PER_CONN_MAX`] either way.
    fn has_room(&self) -> bool {
        let blocks = self.reads.len() + self.unsent_data.len();
        self.unsent_bytes < SERVE_UNSENT_BYTES_PER_CONN_MAX
            && (blocks < 2 || self.unsent_bytes < SERVE_UNSENT_BYTES_FLOOR)
    }

    /// Bytes queued for it or read and not yet sent.
    fn bytes(&self) -> u64 {
        debug_assert_eq!(self.queued_bytes, self.queue.iter().map(|j| u64::from(j.len)).sum::<u64>());
        self.queued_bytes + self.unsent_bytes
    }

    /// Whether `block` is being read or its `Data` frame waits to leave: it will be sent.
    fn on_its_way(&self, block: (FileId, ChunkIndex, u32)) -> bool {
        self.reads.iter().any(|j| j.block() == block) || self.unsent_data.iter().any(|(b, _)| *b == block)
    }

    /// Whether `block` was reported sent less than [`BUSY_TICKET_TIME`] before `now`: a request
    /// for it now crossed our `Busy`, and the frame on its way answers it.
    fn sent_lately(&self, block: (FileId, ChunkIndex, u32), now: Time) -> bool {
        self.sent_lately.iter().any(|(b, at)| *b == block && now < *at + BUSY_TICKET_TIME)
    }

    /// Queues `job` last.
    fn enqueue(&mut self, job: ServeJob) {
        self.queued_bytes += u64::from(job.len);
        self.queue.push_back(job);
    }

    /// Takes the queued request at `at` out of the queue.
    fn dequeue(&mut self, at: usize) -> Option<ServeJob> {
        let job = self.queue.remove(at)?;
        self.queued_bytes -= u64::from(job.len);
        Some(job)
    }

    /// Empties the queue; its requests, in order.
    fn drain_queue(&mut self) -> std::collections::vec_deque::Drain<'_, ServeJob> {
        self.queued_bytes = 0;
        self.queue.drain(..)
    }
}

/// A connection refused because the line was full, waiting for room in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ticket {
    conn: ConnId,
    /// When it was last refused, or called.
    at: Time,
    /// It was called (`Room`) at `at` and room is held for it.
    called: bool,
    /// It was called while the line had room for it (not into a full line for a rarer chunk,
    /// whose request must make room): it is let in when it comes, whoever came in since.
    held: bool,
    /// The chunk of the refused request it asked for first (the rarest of a refused queue):
    /// room goes to the ticket whose chunk is rarest.
    asked: Option<(FileId, ChunkIndex)>,
}

impl Ticket {
    /// Whether a request of its connection arriving at `now` was on its way when the `Busy`
    /// that gave it the ticket was sent (within [`BUSY_TICKET_TIME`], a round trip with room to
    /// spare, and before any call): for a remote taking part in room calls, that `Busy`
    /// answered it.
    fn covers(&self, now: Time) -> bool {
        !self.called && now < self.at + BUSY_TICKET_TIME
    }
}

/// Bytes a slot holder's turn lasts while others wait, for blocks of `block_bytes`: one block
/// of at least [`UPLOAD_TURN_BLOCK_BYTES_MIN`] (at most [`UPLOAD_TURN_BYTES`]), else
/// [`UPLOAD_TURN_BYTES`] of smaller blocks. A downloader sizes its patience with a busy
/// holder in these turns.
pub(super) fn turn_bytes(block_bytes: u32) -> u64 {
    if block_bytes >= UPLOAD_TURN_BLOCK_BYTES_MIN {
        u64::from(block_bytes).min(UPLOAD_TURN_BYTES)
    } else {
        UPLOAD_TURN_BYTES
    }
}

/// Refuses `state`'s queued requests into `refused`, each to be answered `Busy`; to a remote
/// taking part in room calls one `Busy` answers them all.
fn refuse_queue(state: &mut ConnUploads, refused: &mut Vec<ServeJob>) {
    if state.room_calls {
        refused.extend(state.drain_queue().next());
    } else {
        refused.extend(state.drain_queue());
    }
}

/// Each connection's upload state, looked up at every request, read and report and never
/// iterated: a hash map (which the workspace otherwise forbids for its random iteration order)
/// with a fixed seed, whose one probe reads a line or two where a search of an ordered tree of
/// a seeder's hundreds of connections reads a cold node at each level.
#[allow(clippy::disallowed_types)]
type ConnStates = std::collections::HashMap<ConnId, ConnUploads, foldhash::fast::FixedState>;

/// The serving side's queues, slots, backpressure and pacing.
#[derive(Debug)]
pub(super) struct Uploads {
    bucket: Option<TokenBucket>,
    /// Every open peer connection the peer sent a frame on.
    conns: ConnStates,
    /// Connections holding a slot, in turn order (the front is served next).
    slots: VecDeque<ConnId>,
    /// Connections with queued requests and no slot, in arrival order.
    waiting: VecDeque<ConnId>,
    reads_in_flight: usize,
    wake_at: Option<Time>,
    /// When the first slot holder whose frames do not leave would give its slot up.
    stall_wake_at: Option<Time>,
    /// When the first ticket holding room that a called connection waits behind lapses.
    ticket_wake_at: Option<Time>,
    /// When the first ticket lapses (`None`: none can), or [`Time::ZERO`] once tickets changed:
    /// [`Uploads::lapse_tickets`] looks through the tickets only when it is due.
    lapse_due: Option<Time>,
    /// Connections refused because the line was full, in the order they were first refused:
    /// room in the line goes to them first, while they come back within their ticket's time
    /// (see [`Uploads::lapse_tickets`]).
    tickets: VecDeque<Ticket>,
    /// Queued requests of connections that left the line, to be answered `Busy`.
    refused: Vec<ServeJob>,
    offers: Offers,
    /// Slots given so far: how long a refused connection waited is counted in turns.
    turns: u64,
    /// How many slots to fill.
    slot_count: SlotCount,
}

impl Uploads {
    /// Unpaced when `limit` is `None`.
    pub fn new(limit_bytes_per_s: Option<u64>) -> Uploads {
        Uploads {
            bucket: limit_bytes_per_s.map(TokenBucket::new),
            conns: ConnStates::default(),
            slots: VecDeque::new(),
            waiting: VecDeque::new(),
            reads_in_flight: 0,
            wake_at: None,
            stall_wake_at: None,
            ticket_wake_at: None,
            lapse_due: None,
            tickets: VecDeque::new(),
            refused: Vec::new(),
            offers: Offers::new(),
            turns: 0,
            slot_count: SlotCount::new(),
        }
    }

    /// When the pacer, a slot holder whose frames do not leave, or a ticket whose room is to
    /// go to a connection waiting for a call wants a look again.
    pub fn wake_at(&self) -> Option<Time> {
        let ours = earlier(earlier(self.wake_at, self.stall_wake_at), self.ticket_wake_at);
        earlier(ours, self.offers.settle_wake_at())
    }

    /// Requests of `conn` queued or being read (a connection serving them is not idle).
    pub fn serving(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.queue.len() + c.reads.len())
    }

    /// Queues a checked request at `now`, unless its connection has too many queued, or is not
    /// in line and no room in the line is free for it nor can be made (see
    /// [`Uploads::make_room`]). `room_calls`: its remote takes part in room calls. `holders`
    /// counts the remotes that hold a chunk.
    pub fn request(
        &mut self,
        job: ServeJob,
        now: Time,
        room_calls: bool,
        holders: impl Fn(FileId, ChunkIndex) -> usize,
    ) -> Result<(), Refused> {
        let in_line = self.slots.contains(&job.conn) || self.waiting.contains(&job.conn);
        let state = self.conns.entry(job.conn).or_default();
        if std::mem::replace(&mut state.room_calls, room_calls) != room_calls {
            self.lapse_due = Some(Time::ZERO);
        }
        if state.stalled(now) {
            return Err(Refused::Busy);
        }
        if !in_line && room_calls && self.tickets.iter().any(|t| t.conn == job.conn && t.covers(now)) {
            return Err(Refused::Covered);
        }
        let rarity = Rarity { holders };
        if !in_line && !self.admit(job, now, &rarity) {
            if !self.make_room(job, now, &rarity) {
                return Err(Refused::Busy);
            }
            self.tickets.retain(|t| t.conn != job.conn);
            self.tickets_changed();
        }
        let state = self.conns.entry(job.conn).or_default();
        // A request crossing our `Busy` may be queued after all (the line had room by then),
        // and the downloader, taking it for refused, asks again when called: one copy is sent,
        // also when the first is read and still waits to leave, or left moments ago.
        let block = job.block();
        if state.queue.iter().any(|j| j.block() == block) || state.on_its_way(block) || state.sent_lately(block, now) {
            return Err(Refused::Covered);
        }
        if state.queue.len() + state.reads.len() >= SERVE_QUEUE_PER_CONN_MAX {
            return Err(Refused::Busy);
        }
        state.enqueue(job);
        if !in_line {
            self.waiting.push_back(job.conn);
        }
        Ok(())
    }

    /// Removes a queued request; whether it was queued (a read already started is not recalled).
    pub fn cancel(&mut self, conn: ConnId, file_id: FileId, chunk: ChunkIndex, offset: u32) -> bool {
        let Some(state) = self.conns.get_mut(&conn) else { return false };
        let found = state.queue.iter().position(|j| j.block() == (file_id, chunk, offset));
        let Some(at) = found else { return false };
        state.dequeue(at);
        if state.queue.is_empty() {
            self.waiting.retain(|c| *c != conn);
        }
        true
    }

    /// Removes a queued request that its downloader withdraws; whether to answer that its block
    /// will not come: unless a read of it started or its `Data` frame waits to leave, for then
    /// that frame answers instead (an answer sent now would overtake it: control frames jump
    /// the data queue).
    pub fn withdraw(&mut self, conn: ConnId, file_id: FileId, chunk: ChunkIndex, offset: u32) -> bool {
        self.cancel(conn, file_id, chunk, offset);
        self.conns.get(&conn).is_none_or(|state| !state.on_its_way((file_id, chunk, offset)))
    }

    /// The peer queued a `Data` frame of `bytes` payload on `conn`, the block at `block`'s file,
    /// chunk and offset.
    pub fn data_queued(&mut self, conn: ConnId, block: (FileId, ChunkIndex, u32), bytes: u32) {
        let state = self.conns.entry(conn).or_default();
        state.unsent_data.push_back((block, bytes));
        state.unsent_bytes += u64::from(bytes);
    }

    /// The driver reports `data_frames` more of `conn`'s `Data` frames sent at `now`;
    /// `seeding` tells whether the peer holds every file it has whole (a seeder reads its slot
    /// probes differently, see `slot_count.rs`), asked only when that matters.
    pub fn sent(&mut self, conn: ConnId, data_frames: u32, now: Time, seeding: impl FnOnce() -> bool) {
        let Some(state) = self.conns.get_mut(&conn) else { return };
        let (mut sent_bytes, mut frames) = (0, 0);
        for _ in 0..data_frames {
            let Some((block, bytes)) = state.unsent_data.pop_front() else { break };
            if state.sent_lately.len() == SENT_BLOCKS_REMEMBERED_PER_CONN_MAX {
                state.sent_lately.pop_front();
            }
            state.sent_lately.push_back((block, now));
            sent_bytes += u64::from(bytes);
            frames += 1;
            state.unsent_bytes = state.unsent_bytes.saturating_sub(u64::from(bytes));
            // Its frames move: the wait starts again from the next look.
            state.stalled_since = None;
        }
        let waiting = !self.waiting.is_empty() || !self.tickets.is_empty();
        self.slot_count.sent(now, sent_bytes, frames, waiting, seeding);
    }

    /// The upload slots open now (see `slot_count.rs`).
    pub fn slots(&self) -> usize {
        self.slot_count.slots()
    }

    /// The read of `conn`'s block at `chunk`+`offset` finished (its `Data` frame, if any, is
    /// counted by [`Uploads::data_queued`]).
    pub fn read_done(&mut self, conn: ConnId, file_id: FileId, chunk: ChunkIndex, offset: u32) {
        self.reads_in_flight = self.reads_in_flight.saturating_sub(1);
        let Some(state) = self.conns.get_mut(&conn) else { return };
        let found = state.reads.iter().position(|j| j.block() == (file_id, chunk, offset));
        if let Some(at) = found {
            let job = state.reads.swap_remove(at);
            state.unsent_bytes = state.unsent_bytes.saturating_sub(u64::from(job.len));
        }
    }

    /// Whether `job`'s connection, not in line, may join it at `now`: room is free and not held
    /// for tickets ahead of it (see [`Uploads::ticket_order`]); a newcomer comes after every
    /// ticket. A refused connection gets a ticket (or keeps its own, to be called again if it
    /// was called).
    fn admit(&mut self, job: ServeJob, now: Time, rarity: &Rarity<impl Fn(FileId, ChunkIndex) -> usize>) -> bool {
        let conn = job.conn;
        self.lapse_tickets(now);
        let room = self.room();
        let ticket = self.tickets.iter().position(|t| t.conn == conn);
        // A ticket called with room had its room held from its call on: newcomers and requests
        // let in since (while the line held few bytes) did not take it.
        let held = ticket.is_some_and(|at| self.tickets[at].held);
        let place = match ticket {
            Some(at) if room > 0 => {
                let key = self.ticket_key(at, rarity);
                (0..self.tickets.len()).filter(|&other| self.ticket_key(other, rarity) < key).count()
            }
            Some(at) => at,
            None => self.tickets.len(),
        };
        if held || place < room {
            if let Some(at) = ticket {
                self.tickets.remove(at);
                self.tickets_changed();
            }
            return true;
        }
        let asked = Some((job.file_id, job.chunk));
        match ticket {
            Some(at) => self.tickets[at] = Ticket { conn, at: now, called: false, held: false, asked },
            None => self.tickets.push_back(Ticket { conn, at: now, called: false, held: false, asked }),
        }
        let state = self.conns.entry(conn).or_default();
        let cycle = state.refused_at.map_or(Duration::ZERO, |at| now.saturating_since(at));
        state.ticket_time = (cycle * 3 / 2).clamp(BUSY_TICKET_TIME, BUSY_TICKET_TIME_MAX);
        state.refused_at = Some(now);
        state.unserved_since.get_or_insert(self.turns);
        self.tickets_changed();
        false
    }

    /// How many connections (tickets first, in order) the line takes in now: any number while
    /// it holds less than [`UPLOAD_LINE_BYTES_MIN`], else its free places.
    fn room(&self) -> usize {
        // Counted only as far as the bound: past it the line's bytes do not matter.
        let mut in_line = self.slots.iter().chain(&self.waiting).filter_map(|c| self.conns.get(c));
        let short = in_line
            .try_fold(0, |bytes, state| {
                let bytes = bytes + state.bytes();
                (bytes < UPLOAD_LINE_BYTES_MIN).then_some(bytes)
            })
            .is_some();
        if short {
            self.tickets.len() + 1
        } else {
            self.line_places().saturating_sub(self.slots.len() + self.waiting.len())
        }
    }

    /// Connections served or waiting in line at most: the slots open and
    /// [`UPLOAD_LINE_PER_SLOT`] places in line for each.
    fn line_places(&self) -> usize {
        self.slot_count.slots() * (1 + UPLOAD_LINE_PER_SLOT)
    }

    /// A ticket came, went or changed: the next [`Uploads::lapse_tickets`] looks through them.
    fn tickets_changed(&mut self) {
        self.lapse_due = Some(Time::ZERO);
    }

    /// Drops the tickets that lapsed by `now` (see [`lapses_at`]).
    fn lapse_tickets(&mut self, now: Time) {
        if self.lapse_due.is_none_or(|due| due > now) {
            return;
        }
        let conns = &self.conns;
        self.tickets.retain(|t| lapses_at(conns, t).is_none_or(|at| at > now));
        self.lapse_due = self.tickets.iter().filter_map(|t| lapses_at(conns, t)).min();
    }

    /// `conn`, called, has nothing to ask (`Pass`): the room held for it is free.
    pub fn pass(&mut self, conn: ConnId) {
        self.tickets.retain(|t| t.conn != conn || !t.called);
        self.tickets_changed();
    }

    /// The first `first` tickets in the order room in the line goes to them: those called
    /// first (room is held for them), then by how few of our remotes hold the chunk each asked
    /// for, so a chunk only we (or few) can give, such as a seeder's chunk nobody has yet, is
    /// not kept waiting behind copies others could serve; among equals in the order they were
    /// refused. Only those few are sorted: the line calls a handful at a time, however many
    /// tickets are out.
    fn ticket_order(&self, rarity: &Rarity<impl Fn(FileId, ChunkIndex) -> usize>, first: usize) -> Vec<usize> {
        if first == 0 {
            return Vec::new();
        }
        let mut order: Vec<(bool, bool, usize, usize)> =
            (0..self.tickets.len()).map(|at| self.ticket_key(at, rarity)).collect();
        if first < order.len() {
            // The keys are unique (each ends with its ticket's place): the `first` least are
            // the same tickets in the same order as a whole sort's first.
            order.select_nth_unstable(first - 1);
            order.truncate(first);
        }
        order.sort_unstable();
        order.into_iter().map(|(_, _, _, at)| at).collect()
    }

    /// Whether `conn` was refused (or sent out of the line) and not served while
    /// [`UPLOAD_STARVED_TURNS`] slots went to others.
    fn starved(&self, conn: ConnId) -> bool {
        let since = self.conns.get(&conn).and_then(|state| state.unserved_since);
        since.is_some_and(|since| since + UPLOAD_STARVED_TURNS <= self.turns)
    }

    /// Where ticket `at` sorts in [`Uploads::ticket_order`] (unique: it ends with `at`).
    fn ticket_key(
        &self,
        at: usize,
        rarity: &Rarity<impl Fn(FileId, ChunkIndex) -> usize>,
    ) -> (bool, bool, usize, usize) {
        let ticket = &self.tickets[at];
        let starved = self.starved(ticket.conn);
        let holders = ticket.asked.map_or(usize::MAX, |(file_id, chunk)| rarity.holders(file_id, chunk));
        (!ticket.called, !starved, holders, at)
    }

    /// The connections to call at `now` (`Room`): those taking part in room calls whose tickets
    /// room in the line is free for (in [`Uploads::ticket_order`], no more than the line's free
    /// places) and that were not called yet; while the line is full, the first ticket when fewer
    /// remotes hold its chunk than the commonest rarest chunk of a waiting connection (its request
    /// will make room, see [`Uploads::make_room`]). Plans a look for when a ticket holding room
    /// lapses while a connection waits for its call. `holders` counts the remotes that hold a
    /// chunk.
    pub fn take_calls(&mut self, now: Time, holders: impl Fn(FileId, ChunkIndex) -> usize) -> Vec<ConnId> {
        self.ticket_wake_at = None;
        if self.tickets.is_empty() {
            return Vec::new();
        }
        self.lapse_tickets(now);
        let room = self.room();
        let mut calls = Vec::new();
        let rarity = Rarity { holders };
        // A call holds room in the line for its ticket until it comes (see `admit`): at most
        // as many as the line has free places, so that the calls that come do not fill it past
        // its bound (while it holds few bytes it takes any asker, but not any number of calls).
        let places = self.line_places().saturating_sub(self.slots.len() + self.waiting.len());
        let callable = room.min(places).max(1);
        // Called tickets come first in the order and are not called again: when there are as
        // many as may be called, nobody is, and the others need not be ordered.
        let called = self.tickets.iter().filter(|t| t.called).count();
        let mut order = self.ticket_order(&rarity, if called >= callable { 0 } else { callable });
        if room == 0 {
            let first = order.first().map(|&at| self.tickets[at]);
            let rarer = first.filter(|t| !t.called).and_then(|t| t.asked).is_some_and(|(file_id, chunk)| {
                let asked = rarity.holders(file_id, chunk);
                self.waiting_commoner_than(asked, &rarity)
            });
            order.truncate(usize::from(rarer));
        }
        for &at in &order {
            let ticket = &mut self.tickets[at];
            if !ticket.called && self.conns.get(&ticket.conn).is_some_and(|s| s.room_calls) {
                *ticket = Ticket { called: true, held: room > 0, at: now, ..*ticket };
                calls.push(ticket.conn);
                let lapses = now + BUSY_TICKET_TIME;
                self.lapse_due = Some(self.lapse_due.map_or(lapses, |due| due.min(lapses)));
            }
        }
        let conns = &self.conns;
        if self.lapse_due.is_some() && self.tickets.iter().any(|t| lapses_at(conns, t).is_none()) {
            // Exact here: the tickets were looked through, or none changed, since it was set.
            self.ticket_wake_at = self.lapse_due;
        }
        calls
    }

    /// Makes room in the full line for `job` by sending out the waiting connection whose rarest
    /// request is held by the most remotes, if that is more than hold `job`'s chunk: its
    /// requests are refused (`Busy`), and it asks another holder of its chunks, while `job`'s
    /// chunk has fewer others to come from. So a chunk that only this peer (or few) can give,
    /// such as a seeder's chunk nobody has yet, is never kept out by requests for chunks others
    /// could serve. Returns whether room was made.
    fn make_room(&mut self, job: ServeJob, now: Time, rarity: &Rarity<impl Fn(FileId, ChunkIndex) -> usize>) -> bool {
        let asked = rarity.holders(job.file_id, job.chunk);
        let commonest = self.commonest_waiting(rarity);
        let Some((count, line)) = commonest.filter(|&(count, _)| count > asked) else { return false };
        debug_assert!(count > 0, "more holders than another chunk");
        let Some(conn) = self.waiting.remove(line) else { return false };
        let mut asked = None;
        if let Some(state) = self.conns.get_mut(&conn) {
            asked = rarity.rarest_chunk(&state.queue);
            refuse_queue(state, &mut self.refused);
            state.unserved_since.get_or_insert(self.turns);
        }
        // Its turn comes again once room frees.
        self.tickets.push_back(Ticket { conn, at: now, called: false, held: false, asked });
        self.tickets_changed();
        true
    }

    /// The waiting connection whose rarest request is held by the most remotes (the first in
    /// line among equals): how many hold it, and its place in line.
    fn commonest_waiting(&self, rarity: &Rarity<impl Fn(FileId, ChunkIndex) -> usize>) -> Option<(usize, usize)> {
        (self.waiting.iter().enumerate())
            .filter_map(|(line, conn)| {
                let queue = &self.conns.get(conn).filter(|_| !self.starved(*conn))?.queue;
                Some((rarity.rarest(queue).map_or(usize::MAX, |(_, count)| count), line))
            })
            .max_by_key(|&(count, line)| (count, std::cmp::Reverse(line)))
    }

    /// Whether a waiting connection's rarest request is held by more than `asked` remotes
    /// ([`Uploads::commonest_waiting`]'s count above `asked`): a queue's look ends at its
    /// first request held by fewer.
    fn waiting_commoner_than(&self, asked: usize, rarity: &Rarity<impl Fn(FileId, ChunkIndex) -> usize>) -> bool {
        self.waiting
            .iter()
            .filter_map(|conn| self.conns.get(conn))
            .any(|state| state.queue.iter().all(|job| rarity.holders(job.file_id, job.chunk) > asked))
    }

    /// The queued requests of connections that left the line to make room for refused ones:
    /// each is to be answered `Busy`.
    pub fn take_refused(&mut self) -> Vec<ServeJob> {
        std::mem::take(&mut self.refused)
    }

    /// What a seeder offers each downloader.
    pub fn offers(&self) -> &Offers {
        &self.offers
    }

    /// What a seeder offers each downloader, to change.
    pub fn offers_mut(&mut self) -> &mut Offers {
        &mut self.offers
    }

    /// Forgets a closed connection, and what was offered on it.
    pub fn drop_conn(&mut self, conn: ConnId) {
        self.offers.drop_conn(conn);
        self.conns.remove(&conn);
        self.slots.retain(|c| *c != conn);
        self.waiting.retain(|c| *c != conn);
        self.tickets.retain(|t| t.conn != conn);
        self.tickets_changed();
    }

    /// The next read to start at `now`, if the read bound, the slots, backpressure and the
    /// upload limit allow one. `holders` counts the remotes that hold a chunk.
    pub fn next_read(&mut self, now: Time, holders: impl Fn(FileId, ChunkIndex) -> usize) -> Option<ServeJob> {
        // Reads in flight come back here when they finish, so no timer is kept while they bound.
        (self.wake_at, self.stall_wake_at) = (None, None);
        if self.reads_in_flight >= SERVE_READS_IN_FLIGHT_MAX {
            return None;
        }
        let rarity = Rarity { holders };
        self.fill_slots(&rarity, now);
        let turn = self.slots.iter().position(|conn| {
            let state = &self.conns[conn];
            !state.turn_over && !state.queue.is_empty() && state.has_room()
        })?;
        if let Some(bucket) = self.bucket.as_mut() {
            bucket.refill(now);
            if !bucket.can_spend() {
                self.wake_at = Some(bucket.positive_at());
                return None;
            }
        }
        let job = self.take(turn, &rarity);
        if let Some(bucket) = self.bucket.as_mut() {
            bucket.spend(job.len);
        }
        Some(job)
    }

    /// Takes the request of the slot holder at `turn` for its rarest chunk (the first such),
    /// and puts the holder at the back of the turn order; its turn is over once it was served
    /// [`UPLOAD_TURN_BYTES`], or one block of at least [`UPLOAD_TURN_BLOCK_BYTES_MIN`], while
    /// others wait.
    fn take(&mut self, turn: usize, rarity: &Rarity<impl Fn(FileId, ChunkIndex) -> usize>) -> ServeJob {
        let conn = self.slots.remove(turn).expect("the caller found this slot");
        let state = self.conns.get_mut(&conn).expect("slot holders have state");
        let (at, _) = rarity.rarest(&state.queue).expect("the caller found a queued request");
        let job = state.dequeue(at).expect("rarest names a queued request");
        state.reads.push(job);
        state.unserved_since = None;
        state.unsent_bytes += u64::from(job.len);
        state.turn_bytes += u64::from(job.len);
        let others_wait = !self.waiting.is_empty() || !self.tickets.is_empty();
        state.turn_over = state.turn_bytes >= turn_bytes(job.len) && others_wait;
        self.reads_in_flight += 1;
        self.slots.push_back(conn);
        job
    }

    /// Hands on the slots of holders that are idle, or whose turn is over and whose last block
    /// left (to the back of the line if they have requests left; out of it, with a ticket taken
    /// at `now`, while tickets are out), and gives free slots to the ones in line that asked
    /// for the rarest chunks.
    fn fill_slots(&mut self, rarity: &Rarity<impl Fn(FileId, ChunkIndex) -> usize>, now: Time) {
        let others_wait = !self.waiting.is_empty() || !self.tickets.is_empty();
        // Each holder is taken from the front once; those that keep their slot go to the back
        // in turn, so the kept ones end up in their order, without a second queue.
        for _ in 0..self.slots.len() {
            let Some(conn) = self.slots.pop_front() else { break };
            let Some(state) = self.conns.get_mut(&conn) else { continue };
            if state.unsent_data.is_empty() {
                state.stalled_since = None;
            } else if state.stalled_since.is_none() {
                state.stalled_since = Some(now);
            }
            if others_wait && state.stalled(now) {
                // Its remote does not read: the slot goes to one that does.
                state.turn_over = false;
                refuse_queue(state, &mut self.refused);
                continue;
            }
            if let Some(since) = state.stalled_since.filter(|_| others_wait) {
                let due = since + UPLOAD_STALL_TIMEOUT;
                self.stall_wake_at = earlier(self.stall_wake_at, Some(due));
            }
            if state.turn_over && state.unsent_bytes == 0 {
                state.turn_over = false;
                if !self.tickets.is_empty() && !state.queue.is_empty() {
                    // Others were refused and come back: it makes room for them, and its turn
                    // comes again after theirs.
                    let asked = rarity.rarest_chunk(&state.queue);
                    refuse_queue(state, &mut self.refused);
                    self.tickets.push_back(Ticket { conn, at: now, called: false, held: false, asked });
                    self.lapse_due = Some(Time::ZERO);
                } else if !state.queue.is_empty() {
                    self.waiting.push_back(conn);
                }
            } else if !state.idle() {
                self.slots.push_back(conn);
            }
        }
        while self.slots.len() < self.slot_count.slots() {
            let next = self.waiting.iter().enumerate().min_by_key(|(line, conn)| {
                let queue = self.conns.get(conn).map(|c| &c.queue);
                let holders = queue.and_then(|q| rarity.rarest(q)).map_or(usize::MAX, |(_, holders)| holders);
                (!self.starved(**conn), holders, *line)
            });
            let Some((line, _)) = next else { break };
            let Some(conn) = self.waiting.remove(line) else { break };
            if let Some(state) = self.conns.get_mut(&conn) {
                state.turn_bytes = 0;
                self.slots.push_back(conn);
                self.turns += 1;
            }
        }
    }
}

/// When `ticket` lapses, if it can: a called one [`BUSY_TICKET_TIME`] after its call, one of a
/// remote that asks again on a timer its ticket time after its last refusal. One waiting for
/// its call keeps its place until it is called.
fn lapses_at(conns: &ConnStates, ticket: &Ticket) -> Option<Time> {
    let state = conns.get(&ticket.conn);
    if ticket.called {
        return Some(ticket.at + BUSY_TICKET_TIME);
    }
    match state {
        Some(state) if state.room_calls => None,
        _ => Some(ticket.at + state.map_or(BUSY_TICKET_TIME, |s| s.ticket_time.max(BUSY_TICKET_TIME))),
    }
}

/// How many of our remotes hold a chunk: a download keeps its chunks' holder counts; other
/// files' are counted over the remotes. A chunk we sent whole counts as held at least once
/// although its receiver has not announced it yet, so the line does not send it again
/// before a chunk nobody has. The rarity the line and the slots order requests by.
pub(super) fn chunk_holders<'a>(
    remotes: &'a Remotes,
    files: &'a BTreeMap<FileId, FileEntry>,
) -> impl Fn(FileId, ChunkIndex) -> usize + 'a {
    move |file_id, chunk| {
        let entry = files.get(&file_id);
        let held = match entry.and_then(|e| e.download()) {
            Some(download) => download.availability(chunk),
            None => remotes.holders(file_id, chunk),
        };
        held.max(usize::from(entry.is_some_and(|e| e.has_sent_whole(chunk))))
    }
}

/// Holder counts of chunks, asked of the peer's per-chunk counts at each look (a count is a
/// map lookup and an index, cheaper than remembering the counts already asked for).
struct Rarity<F> {
    holders: F,
}

impl<F: Fn(FileId, ChunkIndex) -> usize> Rarity<F> {
    fn holders(&self, file_id: FileId, chunk: ChunkIndex) -> usize {
        (self.holders)(file_id, chunk)
    }

    /// The rarest chunk `queue` asks for (the first such).
    fn rarest_chunk(&self, queue: &VecDeque<ServeJob>) -> Option<(FileId, ChunkIndex)> {
        let (at, _) = self.rarest(queue)?;
        queue.get(at).map(|job| (job.file_id, job.chunk))
    }

    /// The position of the first request for the rarest chunk in `queue`, and its holders.
    fn rarest(&self, queue: &VecDeque<ServeJob>) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize)> = None;
        for (at, job) in queue.iter().enumerate() {
            let count = self.holders(job.file_id, job.chunk);
            if best.is_none_or(|(_, least)| count < least) {
                best = Some((at, count));
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{BLOCK_BYTES, UPLOAD_SLOTS_MIN};

    #[test]
    fn a_chunk_we_sent_whole_counts_as_held_before_its_receiver_announces_it() {
        let (_, manifest) = crate::testkit::file(4 * 16 * 1024, 16 * 1024, 3);
        let file_id = manifest.file_id();
        let mut files = BTreeMap::new();
        files.insert(file_id, FileEntry::shared(manifest, crate::Bitfield::full(4)));
        let remotes = Remotes::new();
        assert_eq!(chunk_holders(&remotes, &files)(file_id, ChunkIndex(2)), 0, "nobody holds it yet");
        files.get_mut(&file_id).expect("shared above").sent_whole(ChunkIndex(2));
        let holders = chunk_holders(&remotes, &files);
        assert_eq!(holders(file_id, ChunkIndex(2)), 1, "its copy is on its way");
        assert_eq!(holders(file_id, ChunkIndex(1)), 0);
    }

    const FILE: FileId = FileId(crate::ids::Digest([7; 32]));

    fn request(uploads: &mut Uploads, conn: u64, chunk: u32) {
        assert!(ask(uploads, conn, chunk, 0), "room in the queue");
    }

    /// A request of `conn` for `chunk` at `at_ms`: whether it was queued.
    fn ask(uploads: &mut Uploads, conn: u64, chunk: u32, at_ms: u64) -> bool {
        ask_as(uploads, conn, chunk, at_ms, false)
    }

    /// [`ask`], from a remote that takes part in room calls when `room_calls`.
    fn ask_as(uploads: &mut Uploads, conn: u64, chunk: u32, at_ms: u64, room_calls: bool) -> bool {
        answer(uploads, conn, chunk, at_ms, room_calls).is_ok()
    }

    /// What becomes of a request (see [`ask_as`]).
    fn answer(uploads: &mut Uploads, conn: u64, chunk: u32, at_ms: u64, room_calls: bool) -> Result<(), Refused> {
        answer_among(uploads, conn, chunk, at_ms, room_calls, |_, _| 0)
    }

    /// [`answer`], with `holders` counting the remotes that hold a chunk.
    fn answer_among(
        uploads: &mut Uploads,
        conn: u64,
        chunk: u32,
        at_ms: u64,
        room_calls: bool,
        holders: impl Fn(FileId, ChunkIndex) -> usize,
    ) -> Result<(), Refused> {
        let job = ServeJob {
            conn: ConnId::Inbound(conn),
            file_id: FILE,
            chunk: ChunkIndex(chunk),
            offset: 0,
            len: BLOCK_BYTES,
        };
        uploads.request(job, Time::from_millis(at_ms), room_calls, holders)
    }

    /// Starts every read allowed now; each becomes a queued `Data` frame at once.
    fn serve(uploads: &mut Uploads) -> Vec<(u64, u32)> {
        serve_rarest(uploads, |_| 0)
    }

    /// [`serve`], with `holders` counting the remotes that hold a chunk.
    fn serve_rarest(uploads: &mut Uploads, holders: impl Fn(u32) -> usize) -> Vec<(u64, u32)> {
        serve_at(uploads, Time::ZERO, holders)
    }

    /// [`serve_rarest`] at `now`.
    fn serve_at(uploads: &mut Uploads, now: Time, holders: impl Fn(u32) -> usize) -> Vec<(u64, u32)> {
        let mut served = Vec::new();
        while let Some(job) = uploads.next_read(now, |_, chunk| holders(chunk.0)) {
            uploads.read_done(job.conn, job.file_id, job.chunk, job.offset);
            uploads.data_queued(job.conn, job.block(), job.len);
            let ConnId::Inbound(conn) = job.conn else { unreachable!("inbound only") };
            served.push((conn, job.chunk.0));
        }
        served
    }

    #[test]
    fn a_connection_gets_its_next_block_only_when_the_earlier_ones_left() {
        let mut uploads = Uploads::new(None);
        for chunk in 0..5 {
            request(&mut uploads, 1, chunk);
        }
        assert_eq!(serve(&mut uploads), [(1, 0), (1, 1)], "two blocks unsent at most");
        uploads.sent(ConnId::Inbound(1), 1, Time::ZERO, || false);
        assert_eq!(serve(&mut uploads), [(1, 2)]);
        assert!(uploads.cancel(ConnId::Inbound(1), FILE, ChunkIndex(3), 0), "a queued request is recalled");
        uploads.sent(ConnId::Inbound(1), 2, Time::ZERO, || false);
        assert_eq!(serve(&mut uploads), [(1, 4)]);
    }

    #[test]
    fn small_blocks_are_read_ahead_up_to_the_floor_not_only_two() {
        let mut uploads = Uploads::new(None);
        let len = 16 * 1024;
        for chunk in 0..20 {
            let job = ServeJob { conn: ConnId::Inbound(1), file_id: FILE, chunk: ChunkIndex(chunk), offset: 0, len };
            assert_eq!(uploads.request(job, Time::ZERO, false, |_, _| 0), Ok(()));
        }
        let floor_blocks = usize::try_from(SERVE_UNSENT_BYTES_FLOOR / u64::from(len)).expect("small");
        assert_eq!(serve(&mut uploads).len(), floor_blocks, "blocks under the floor are read ahead");
        uploads.sent(ConnId::Inbound(1), 1, Time::ZERO, || false);
        assert_eq!(serve(&mut uploads).len(), 1, "one left, one more is read");
    }

    #[test]
    fn a_bounded_number_of_connections_is_served_and_the_others_take_their_turns() {
        let mut uploads = Uploads::new(None);
        let conns = UPLOAD_SLOTS_MIN as u64 + 2;
        for conn in 1..=conns {
            request(&mut uploads, conn, 0);
            request(&mut uploads, conn, 1);
        }
        let first: Vec<u64> = serve(&mut uploads).into_iter().map(|(c, _)| c).collect();
        assert_eq!(first, (1..=UPLOAD_SLOTS_MIN as u64).collect::<Vec<_>>(), "one block per turn, slots only");
        // The first holder's block left: its slot goes to the first in line, and it queues
        // behind the others for its second block.
        uploads.sent(ConnId::Inbound(1), 1, Time::ZERO, || false);
        assert_eq!(serve(&mut uploads), [(UPLOAD_SLOTS_MIN as u64 + 1, 0)]);
        for conn in 2..=UPLOAD_SLOTS_MIN as u64 {
            uploads.sent(ConnId::Inbound(conn), 1, Time::ZERO, || false);
        }
        // Every holder but the newcomer let its slot go: the last newcomer, then the earlier
        // holders in turn.
        let next: Vec<u64> = serve(&mut uploads).into_iter().map(|(c, _)| c).collect();
        let expected: Vec<u64> = std::iter::once(conns).chain(1..UPLOAD_SLOTS_MIN as u64 - 1).collect();
        assert_eq!(next, expected);
    }

    #[test]
    fn a_turn_is_one_large_block_while_others_wait() {
        let mut uploads = Uploads::new(None);
        let ask_block = |uploads: &mut Uploads, conn, chunk| {
            let len = UPLOAD_TURN_BLOCK_BYTES_MIN;
            let job = ServeJob { conn: ConnId::Inbound(conn), file_id: FILE, chunk: ChunkIndex(chunk), offset: 0, len };
            assert_eq!(uploads.request(job, Time::ZERO, false, |_, _| 0), Ok(()));
        };
        for conn in 1..=UPLOAD_SLOTS_MIN as u64 {
            for chunk in 0..4 {
                ask_block(&mut uploads, conn, chunk);
            }
        }
        let waiting = UPLOAD_SLOTS_MIN as u64 + 1;
        ask_block(&mut uploads, waiting, 0);
        let first: Vec<(u64, u32)> = serve(&mut uploads);
        assert!(first.iter().all(|&(conn, _)| conn != waiting), "slots only: {first:?}");
        // The first holder's blocks left: its turn is over, and the waiting connection is served
        // before its third block.
        let unsent = first.iter().filter(|&&(conn, _)| conn == 1).count();
        uploads.sent(ConnId::Inbound(1), u32::try_from(unsent).expect("a few"), Time::ZERO, || false);
        assert_eq!(serve(&mut uploads), [(waiting, 0)]);
    }

    /// An upload line taken whole: connections `1..=line` each asked for chunk 0 at time 0,
    /// filling every slot and every place in line. Returns it with `line`.
    fn full_line() -> (Uploads, u64) {
        let mut uploads = Uploads::new(None);
        let line = (UPLOAD_SLOTS_MIN * (1 + UPLOAD_LINE_PER_SLOT)) as u64;
        for conn in 1..=line {
            assert!(ask(&mut uploads, conn, 0, 0), "room in line for {conn}");
        }
        (uploads, line)
    }

    #[test]
    fn a_full_line_refuses_newcomers_and_lets_the_refused_in_first() {
        let (mut uploads, line) = full_line();
        assert!(!ask(&mut uploads, line + 1, 0, 0), "the line is full");
        assert!(!ask(&mut uploads, line + 2, 0, 0), "still full");
        assert_eq!(serve(&mut uploads).len(), UPLOAD_SLOTS_MIN);
        // The first holder's block left and it asks for nothing more: one room frees, held for
        // the first connection refused, not for a newcomer or the second refused.
        uploads.sent(ConnId::Inbound(1), 1, Time::ZERO, || false);
        serve(&mut uploads);
        assert!(!ask(&mut uploads, line + 3, 0, 100), "a newcomer waits behind the tickets");
        assert!(!ask(&mut uploads, line + 2, 0, 100), "the second ticket waits for the first");
        assert!(ask(&mut uploads, line + 1, 0, 100), "the first ticket gets the room");
        // Tickets lapse when their holders do not come back.
        uploads.sent(ConnId::Inbound(2), 1, Time::ZERO, || false);
        serve(&mut uploads);
        let late = BUSY_TICKET_TIME.as_millis() as u64 + 200;
        assert!(ask(&mut uploads, line + 4, 0, late), "the room is free again after the tickets lapsed");
    }

    #[test]
    fn a_refused_connection_that_takes_calls_is_called_when_room_frees_and_keeps_its_place_until_then() {
        let (mut uploads, line) = full_line();
        let (first, second) = (line + 1, line + 2);
        assert!(!ask_as(&mut uploads, first, 0, 0, true), "the line is full");
        assert!(!ask_as(&mut uploads, second, 0, 0, true));
        assert!(uploads.take_calls(Time::ZERO, |_, _| 0).is_empty(), "no room yet");
        assert_eq!(serve(&mut uploads).len(), UPLOAD_SLOTS_MIN);
        // Long after any ticket of a remote asking on a timer would have lapsed, the first
        // holder's block leaves and it asks for nothing more: the first refused is called,
        // and the room is held for it, not for a newcomer.
        // Within the stall timeout, so no slot holder loses its slot for not reading.
        let later = Time::ZERO + BUSY_TICKET_TIME_MAX * 2;
        assert!(later < Time::ZERO + UPLOAD_STALL_TIMEOUT);
        uploads.sent(ConnId::Inbound(1), 1, Time::ZERO, || false);
        serve_at(&mut uploads, later, |_| 0);
        assert_eq!(uploads.take_calls(later, |_, _| 0), [ConnId::Inbound(first)]);
        assert!(uploads.take_calls(later, |_, _| 0).is_empty(), "called once");
        let later_ms = later.as_micros() / 1000;
        assert!(!ask(&mut uploads, line + 3, 0, later_ms), "the room is held for the called one");
        // It does not come back: its room goes to the next once its ticket lapsed.
        let wake = uploads.wake_at().expect("a look when the called ticket lapses");
        assert_eq!(wake, later + BUSY_TICKET_TIME);
        assert_eq!(uploads.take_calls(wake, |_, _| 0), [ConnId::Inbound(second)]);
        assert!(ask_as(&mut uploads, second, 0, wake.as_micros() / 1000, true), "the called one comes in");
    }

    #[test]
    fn a_connection_called_into_a_line_holding_few_bytes_is_let_in_though_newcomers_filled_it_since() {
        const SMALL: u32 = 16 * 1024;
        let per_conn = u32::try_from(UPLOAD_LINE_BYTES_MIN / u64::from(SMALL) / 4).expect("small");
        // Each asker queues a quarter of the bytes under which the line takes anyone.
        let ask_small = |uploads: &mut Uploads, conn: u64, blocks: u32, at_ms: u64| {
            (0..blocks).all(|chunk| {
                let job = ServeJob {
                    conn: ConnId::Inbound(conn),
                    file_id: FILE,
                    chunk: ChunkIndex(chunk),
                    offset: 0,
                    len: SMALL,
                };
                uploads.request(job, Time::from_millis(at_ms), true, |_, _| 0).is_ok()
            })
        };
        let mut uploads = Uploads::new(None);
        let line = (UPLOAD_SLOTS_MIN * (1 + UPLOAD_LINE_PER_SLOT)) as u64;
        for conn in 1..=line {
            assert!(ask_small(&mut uploads, conn, per_conn, 0), "room in line for {conn}");
        }
        let called = line + 1;
        assert!(!ask_small(&mut uploads, called, 1, 0), "the line is full");
        serve(&mut uploads);
        for conn in 1..=UPLOAD_SLOTS_MIN as u64 {
            uploads.sent(ConnId::Inbound(conn), per_conn, Time::ZERO, || false);
        }
        // The first holders were served and left: the line holds few bytes, and the refused
        // one is called.
        serve(&mut uploads);
        assert_eq!(uploads.take_calls(Time::ZERO, |_, _| 0), [ConnId::Inbound(called)]);
        // Newcomers come before its request does; while the line holds few bytes they are let
        // in, until it is full again.
        for newcomer in line + 2..line + 2 + UPLOAD_SLOTS_MIN as u64 {
            assert!(ask_small(&mut uploads, newcomer, per_conn, 10), "few bytes in line: {newcomer} is let in");
        }
        assert!(!ask_small(&mut uploads, line + 10, 1, 10), "the line is full again");
        assert!(ask_small(&mut uploads, called, 1, 30), "the room held for the called one is its own");
    }

    #[test]
    fn a_called_connection_that_passes_frees_its_room_for_the_next_at_once() {
        let (mut uploads, line) = full_line();
        let (first, second) = (line + 1, line + 2);
        assert!(!ask_as(&mut uploads, first, 0, 0, true));
        assert!(!ask_as(&mut uploads, second, 0, 0, true));
        serve(&mut uploads);
        uploads.sent(ConnId::Inbound(1), 1, Time::ZERO, || false);
        serve(&mut uploads);
        assert_eq!(uploads.take_calls(Time::ZERO, |_, _| 0), [ConnId::Inbound(first)]);
        uploads.pass(ConnId::Inbound(first));
        assert_eq!(uploads.take_calls(Time::ZERO, |_, _| 0), [ConnId::Inbound(second)], "the next is called at once");
    }

    #[test]
    fn a_block_asked_for_again_while_queued_being_read_or_just_sent_is_sent_once() {
        let mut uploads = Uploads::new(None);
        assert_eq!(answer(&mut uploads, 1, 0, 0, true), Ok(()));
        assert_eq!(answer(&mut uploads, 1, 1, 0, true), Ok(()));
        assert_eq!(answer(&mut uploads, 1, 1, 10, true), Err(Refused::Covered), "queued already");
        let reading = uploads.next_read(Time::ZERO, |_, _| 0).map(|job| job.chunk);
        assert_eq!(reading, Some(ChunkIndex(0)));
        assert_eq!(answer(&mut uploads, 1, 0, 20, true), Err(Refused::Covered), "being read");
        assert_eq!(answer(&mut uploads, 2, 0, 20, true), Ok(()), "another connection's copy is its own");
        uploads.read_done(ConnId::Inbound(1), FILE, ChunkIndex(0), 0);
        uploads.data_queued(ConnId::Inbound(1), (FILE, ChunkIndex(0), 0), BLOCK_BYTES);
        assert_eq!(answer(&mut uploads, 1, 0, 30, true), Err(Refused::Covered), "read, waiting to leave");
        uploads.sent(ConnId::Inbound(1), 1, Time::from_millis(40), || false);
        // The downloader cancelled its copy when our `Busy` crossed the request, and asks
        // again when called: the frame on its way answers it.
        assert_eq!(answer(&mut uploads, 1, 0, 50, true), Err(Refused::Covered), "it left moments ago");
        let later = 40 + u64::try_from(BUSY_TICKET_TIME.as_millis()).expect("short");
        assert_eq!(answer(&mut uploads, 1, 0, later, true), Ok(()), "long gone: asked again, it is sent again");
    }

    /// Chunk 0 is held by five remotes, every other chunk by none.
    fn chunk_zero_common(_: FileId, chunk: ChunkIndex) -> usize {
        if chunk.0 == 0 {
            5
        } else {
            0
        }
    }

    #[test]
    fn room_goes_first_to_the_ticket_that_asked_for_the_rarest_chunk() {
        let (mut uploads, line) = full_line();
        let (common, rare) = (line + 1, line + 2);
        assert!(!ask_as(&mut uploads, common, 0, 0, true), "the line is full");
        assert!(!ask_as(&mut uploads, rare, 1, 0, true));
        serve(&mut uploads);
        uploads.sent(ConnId::Inbound(1), 1, Time::ZERO, || false);
        serve(&mut uploads);
        assert_eq!(uploads.take_calls(Time::ZERO, chunk_zero_common), [ConnId::Inbound(rare)], "refused later");
        uploads.pass(ConnId::Inbound(rare));
        assert_eq!(uploads.take_calls(Time::ZERO, chunk_zero_common), [ConnId::Inbound(common)]);
    }

    #[test]
    fn a_connection_asking_for_a_common_chunk_is_served_within_its_starved_turns_though_rarer_ones_keep_asking() {
        let mut uploads = Uploads::new(None);
        let askers = (UPLOAD_SLOTS_MIN * (1 + UPLOAD_LINE_PER_SLOT)) as u64 + 2;
        let common = askers + 1;
        // Each asker of rare chunks (held by nobody else) asks for a new one whenever it may.
        let mut next_rare = vec![0u32; askers as usize + 1];
        let mut ask_rare = |uploads: &mut Uploads, conn: u64, at_ms: u64| {
            next_rare[conn as usize] += 1;
            let chunk = u32::try_from(conn * 1000).expect("small") + next_rare[conn as usize];
            answer_among(uploads, conn, chunk, at_ms, true, chunk_zero_common).is_ok()
        };
        let ask_common = |uploads: &mut Uploads, at_ms: u64| {
            answer_among(uploads, common, 0, at_ms, true, chunk_zero_common).is_ok()
        };
        for conn in 1..=askers {
            for _ in 0..2 {
                ask_rare(&mut uploads, conn, 0);
            }
        }
        assert!(!ask_common(&mut uploads, 0), "the line is full");
        let mut served_common = None;
        for round in 1..=100u64 {
            let now = Time::from_millis(round * 10);
            let served = serve_at(&mut uploads, now, |chunk| chunk_zero_common(FILE, ChunkIndex(chunk)));
            if served.iter().any(|&(conn, _)| conn == common) {
                served_common = Some(uploads.turns);
                break;
            }
            for (conn, _) in served {
                uploads.sent(ConnId::Inbound(conn), 1, Time::ZERO, || false);
            }
            uploads.take_refused();
            for called in uploads.take_calls(now, chunk_zero_common) {
                let ConnId::Inbound(conn) = called else { unreachable!("inbound only") };
                if conn == common {
                    ask_common(&mut uploads, round * 10);
                } else {
                    ask_rare(&mut uploads, conn, round * 10);
                    ask_rare(&mut uploads, conn, round * 10);
                }
            }
        }
        let turns = served_common.expect("the asker of the common chunk is served");
        assert!(turns <= UPLOAD_STARVED_TURNS + askers, "served after {turns} turns");
    }

    #[test]
    fn a_ticket_for_a_rarer_chunk_than_a_waiting_connection_asked_for_is_called_into_a_full_line() {
        let (mut uploads, line) = full_line();
        serve(&mut uploads);
        let (common, rare) = (line + 1, line + 2);
        assert!(!ask_as(&mut uploads, common, 0, 0, true), "the line is full");
        assert!(uploads.take_calls(Time::ZERO, chunk_zero_common).is_empty(), "no rarer chunk than the line's");
        assert!(!ask_as(&mut uploads, rare, 1, 0, true));
        assert_eq!(uploads.take_calls(Time::ZERO, chunk_zero_common), [ConnId::Inbound(rare)]);
        assert!(uploads.take_calls(Time::ZERO, chunk_zero_common).is_empty(), "one such call at a time");
        let job =
            ServeJob { conn: ConnId::Inbound(rare), file_id: FILE, chunk: ChunkIndex(1), offset: 0, len: BLOCK_BYTES };
        assert_eq!(uploads.request(job, Time::from_millis(60), true, chunk_zero_common), Ok(()), "it makes room");
        let refused: Vec<ConnId> = uploads.take_refused().iter().map(|j| j.conn).collect();
        let first_waiting = UPLOAD_SLOTS_MIN as u64 + 1;
        assert_eq!(refused, [ConnId::Inbound(first_waiting)], "a waiting asker of the common chunk leaves the line");
    }

    #[test]
    fn to_a_remote_taking_calls_one_busy_answers_every_request_it_has_outstanding() {
        let mut uploads = Uploads::new(None);
        let line = (UPLOAD_SLOTS_MIN * (1 + UPLOAD_LINE_PER_SLOT)) as u64;
        assert!(ask_as(&mut uploads, 1, 0, 0, true));
        assert!(ask_as(&mut uploads, 1, 1, 0, true), "it queues more while in line");
        assert!(ask_as(&mut uploads, 1, 2, 0, true));
        for conn in 2..=line {
            assert!(ask(&mut uploads, conn, 0, 0));
        }
        let caller = line + 1;
        assert_eq!(answer(&mut uploads, caller, 0, 0, true), Err(Refused::Busy), "the line is full");
        let on_its_way = BUSY_TICKET_TIME.as_millis() as u64 - 1;
        assert_eq!(answer(&mut uploads, caller, 1, on_its_way, true), Err(Refused::Covered), "answered already");
        // Much later (no call came, so its remote asks on its own): answered again.
        let late = BUSY_TICKET_TIME.as_millis() as u64;
        assert_eq!(answer(&mut uploads, caller, 2, late, true), Err(Refused::Busy));
        // 1's turn ends while a ticket is out: of its queued requests only the first is answered.
        serve(&mut uploads);
        uploads.sent(ConnId::Inbound(1), 1, Time::ZERO, || false);
        serve_at(&mut uploads, Time::from_millis(late), |_| 0);
        let refused: Vec<(ConnId, u32)> = uploads.take_refused().iter().map(|j| (j.conn, j.chunk.0)).collect();
        assert_eq!(refused, [(ConnId::Inbound(1), 1)], "one Busy for its requests of chunks 1 and 2");
        assert_eq!(uploads.serving(ConnId::Inbound(1)), 0, "nothing of it is queued");
    }

    #[test]
    fn a_holder_whose_turn_ends_while_others_were_refused_leaves_the_line() {
        let (mut uploads, line) = full_line();
        assert!(ask(&mut uploads, 1, 1, 0), "a connection in line queues more");
        assert!(!ask(&mut uploads, line + 1, 0, 0));
        serve(&mut uploads);
        uploads.sent(ConnId::Inbound(1), 1, Time::ZERO, || false);
        serve(&mut uploads);
        let refused: Vec<(ConnId, u32)> = uploads.take_refused().iter().map(|j| (j.conn, j.chunk.0)).collect();
        assert_eq!(refused, [(ConnId::Inbound(1), 1)], "its queued request is refused");
        assert!(ask(&mut uploads, line + 1, 0, 100), "the refused connection comes in");
        assert!(!ask(&mut uploads, 1, 1, 100), "the one that left waits its turn");
    }

    #[test]
    fn free_slots_and_a_holder_s_next_block_go_to_the_rarest_chunk() {
        let mut uploads = Uploads::new(None);
        // Chunk 9 is held by nobody else, the others by three remotes.
        let holders = |chunk| if chunk == 9 { 0 } else { 3 };
        request(&mut uploads, 1, 0);
        request(&mut uploads, 2, 1);
        request(&mut uploads, 3, 2);
        request(&mut uploads, 3, 9);
        request(&mut uploads, 4, 9);
        let first = serve_rarest(&mut uploads, holders);
        assert_eq!(first, [(3, 9), (4, 9)], "the askers of the rare chunk first, its request before the others");
        for conn in [3, 4] {
            uploads.sent(ConnId::Inbound(conn), 1, Time::ZERO, || false);
        }
        // Nothing rare is left: the earliest in line.
        assert_eq!(serve_rarest(&mut uploads, holders), [(1, 0), (2, 1)]);
    }

    #[test]
    fn a_slot_holder_whose_frames_do_not_leave_gives_its_slot_to_one_waiting() {
        assert_eq!(UPLOAD_SLOTS_MIN, 2, "two holders, one waiting");
        let mut uploads = Uploads::new(None);
        for conn in 1..=3 {
            request(&mut uploads, conn, 0);
            request(&mut uploads, conn, 1);
        }
        let mut first = serve(&mut uploads);
        first.sort_unstable();
        assert_eq!(first, [(1, 0), (2, 0)], "1 and 2 hold the slots, one block each while 3 waits");
        request(&mut uploads, 1, 2);
        let due = Time::ZERO + UPLOAD_STALL_TIMEOUT;
        assert_eq!(uploads.wake_at(), Some(due), "a look is due when the holders' frames have waited too long");
        let just_before = Time::from_millis(UPLOAD_STALL_TIMEOUT.as_millis() as u64 - 1);
        assert_eq!(serve_at(&mut uploads, just_before, |_| 0), [], "3 waits while nobody's frames waited that long");
        assert!(uploads.take_refused().is_empty());
        // At the bound 2's frame leaves, so 2 takes its turns again; 1 never read: its slot
        // goes to 3, its queued requests are refused, and so are new ones.
        uploads.sent(ConnId::Inbound(2), 1, Time::ZERO, || false);
        let mut then = serve_at(&mut uploads, due, |_| 0);
        then.sort_unstable();
        assert_eq!(then, [(2, 1), (3, 0), (3, 1)]);
        assert!(uploads.wake_at().is_none_or(|at| at > due), "the timer moves on once it fired");
        let refused: Vec<(ConnId, u32)> = uploads.take_refused().iter().map(|j| (j.conn, j.chunk.0)).collect();
        assert_eq!(refused, [(ConnId::Inbound(1), 1), (ConnId::Inbound(1), 2)]);
        let at_ms = UPLOAD_STALL_TIMEOUT.as_millis() as u64;
        assert!(!ask(&mut uploads, 1, 3, at_ms), "busy while its frame waits");
        // Once its frame left, it asks like anyone else.
        uploads.sent(ConnId::Inbound(1), 1, Time::ZERO, || false);
        assert!(ask(&mut uploads, 1, 4, at_ms), "room in the line once its frame left");
    }

    #[test]
    fn a_slot_holder_whose_frames_do_not_leave_keeps_its_slot_while_nobody_waits() {
        let mut uploads = Uploads::new(None);
        request(&mut uploads, 1, 0);
        request(&mut uploads, 1, 1);
        assert_eq!(serve(&mut uploads), [(1, 0), (1, 1)]);
        request(&mut uploads, 1, 2);
        assert_eq!(uploads.wake_at(), None, "no look is due while nobody waits");
        let long_after = Time::ZERO + UPLOAD_STALL_TIMEOUT * 3;
        assert_eq!(serve_at(&mut uploads, long_after, |_| 0), [], "its frames have not left");
        uploads.sent(ConnId::Inbound(1), 2, Time::ZERO, || false);
        assert_eq!(serve_at(&mut uploads, long_after, |_| 0), [(1, 2)], "it is served as soon as they did");
        assert!(uploads.take_refused().is_empty());
    }
}
