//! The driver: one actix actor that owns a sans-IO [`Machine`] (tracker or peer) and carries out
//! what it asks for.
//!
//! Loop: every input goes through core's [`step`] (`handle(now, input)`, then `poll_output`
//! drained fully, with the timer rule asserted), a local command through [`step_command`] (its
//! refusal is the caller's answer), then each output is executed and a single timer is
//! (re)armed at `poll_timeout`. Outputs never feed
//! the machine directly: inputs they cause (a send that found its connection gone) wait in a
//! queue until the drain is over, so every `handle` is followed by a full drain before the next.
//!
//! The driver owns the open connections (by [`ConnId`] and a unique token, so a late report
//! from a closed connection is ignored; a writer's report of `Data` frames that left through its
//! socket becomes [`Input::Sent`]), the dials and transport handshakes in progress (a connection
//! reaches the machine only once its remote proved its key, whose id comes with
//! [`Input::Connected`]; a failed handshake is logged and never reaches it), and the store work
//! in flight: block writes, hashes, reads and finalisation run on worker threads (`spawn_blocking`, at most
//! [`STORE_JOBS_MAX`] at once, block writes in a lane of their own) and come back as
//! [`Input::Completed`]. It also counts the payload bytes received per file, reported when a
//! download completes, and reports how each connection it opens turns out (up, refused, timed
//! out, wrong protocol) as [`NodeEvent`]s, for the program to say which remotes it can reach.
//! What it sees go by (payload bytes, verified pieces and their senders, locate round trips)
//! feeds a [`Watch`], which [`Inspect`] lets the HTTP API read together with the machine.
//!
//! Memory is bounded whatever the traffic: received blocks not yet on disk take a share of
//! [`WRITE_BUDGET_BYTES`] (when it is used up, connections stop reading), and the bytes queued
//! for sending are capped per connection and per driver (a remote that does not read is dropped).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::fut::wrap_future;
use actix::prelude::*;
use bytes::BytesMut;
use p2p_core::limits::{CONNECTIONS_MAX, FRAME_BYTES_MAX, READ_BUFFERS_TOTAL_BYTES_MAX};
use p2p_core::wire::Message;
use p2p_core::{
    step, step_command, Command, CommandError, Completion, ConnId, Event, FileId, Input, Machine, Output, Time,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::connection::{encode_into, ConnEvent, ConnReport, Connection, QueueError};
use crate::read_budget::ReadBudget;
use crate::secure::{self, HandshakeError, Keys, SecureStream};
use crate::store::Store;
use crate::watch::{Metrics, Role, Watch};

/// How long an outbound connection may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a verified chunk waits for its bitfield write, which records every chunk verified
/// meanwhile too: a crash loses at most this long of verified chunks (fetched again).
pub const BITFIELD_WRITE_DELAY: Duration = Duration::from_millis(250);
/// Store jobs (disk and hashing) running on worker threads at once, per driver: at most
/// [`WRITE_JOBS_MAX`] block writes, and the rest hashing, reading and finalising.
pub const STORE_JOBS_MAX: usize = 8;
/// Worker threads that only write received blocks. A write never waits behind hashing, so
/// blocks leave memory at the disk's pace even when hashing falls behind on a busy CPU (they
/// are hashed later, from the page cache).
pub const WRITE_JOBS_MAX: usize = 2;
/// Received payload bytes a peer holds in memory before they are on disk; when they are all
/// taken, its connections stop reading (TCP pushes back on the senders, and the kernel's socket
/// buffers hold what is in flight). With block writes in their own lane the budget drains at
/// the disk's pace; it fills when the CPU is busy, so it is kept small: the peak memory then
/// hardly depends on the load or on how long a download runs. 4 MiB (the largest frame) kept
/// loopback throughput where 8 MiB had it.
pub const WRITE_BUDGET_BYTES: usize = 4 * 1024 * 1024;
// A reader waits for a frame's whole share of the budget; it must fit.
const _: () = assert!(FRAME_BYTES_MAX <= WRITE_BUDGET_BYTES);

/// What a running node reports to the program embedding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// An event of the state machine, as it happened.
    Machine(Event),
    /// A download finished (sent right after [`Event::Complete`]).
    Completed {
        /// The file.
        file_id: FileId,
        /// Where the file is now.
        path: PathBuf,
        /// Payload bytes of this file received over the network by this run (duplicates
        /// included, pieces resumed from disk excluded).
        received_bytes: u64,
    },
    /// A connection this node opened to `addr` (a holder, or the tracker) is up.
    Connected {
        /// The remote.
        addr: SocketAddr,
    },
    /// A connection this node tried to open to `addr` failed, or the remote broke the
    /// protocol before it was of any use.
    ConnectFailed {
        /// The remote.
        addr: SocketAddr,
        /// Why.
        reason: ConnectFailure,
    },
}

/// Why a connection to a remote did not work out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Nothing listens there (the remote's host answered with a reset).
    Refused,
    /// No answer within [`CONNECT_TIMEOUT`]: a firewall, or an address of another network.
    TimedOut,
    /// The remote answered, but not in the swarm protocol, or broke it.
    WrongProtocol(String),
    /// The transport's handshake failed (another swarm key, say).
    Handshake(String),
    /// Another socket error.
    Other(String),
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFailure::Refused => write!(f, "connection refused"),
            ConnectFailure::TimedOut => write!(f, "timed out after {CONNECT_TIMEOUT:?}"),
            ConnectFailure::WrongProtocol(reason) => write!(f, "wrong protocol: {reason}"),
            ConnectFailure::Handshake(reason) => write!(f, "{reason}"),
            ConnectFailure::Other(reason) => write!(f, "{reason}"),
        }
    }
}

/// The actor around a machine; see the module docs.
pub struct Driver<M: Machine> {
    machine: M,
    /// Outputs of the last step, carried out once the machine is drained.
    drained: Vec<Output>,
    /// What the node proves and checks in every connection's handshake.
    keys: Arc<Keys>,
    /// Accepted connections whose handshake is under way.
    handshaking: usize,
    label: String,
    start: Instant,
    store: Option<Arc<Store>>,
    events: Option<EventSink>,
    /// Events an [`EventSink::UpTo`] had no room for.
    events_dropped: u64,
    conns: BTreeMap<ConnId, Connection>,
    closing: Vec<JoinHandle<()>>,
    pending: VecDeque<Input>,
    timer: Option<(Time, SpawnHandle)>,
    next_token: u64,
    next_inbound: u64,
    received_bytes: BTreeMap<FileId, u64>,
    /// Permits for hashing, reading and finalising jobs.
    store_jobs: Arc<Semaphore>,
    /// Permits for block writes.
    write_jobs: Arc<Semaphore>,
    /// Bounds received data not yet written (peers only: drivers with a store).
    write_budget: Option<Arc<Semaphore>>,
    /// The budget share of the `Data` message being handled, for the write it causes: core's
    /// write rule (`p2p_core::machine`) says the only `WriteBlock` for the block comes out of
    /// this message's drain, so the share is handed to it there, or freed when the drain ends.
    data_permit: Option<OwnedSemaphorePermit>,
    /// Where outgoing frames are encoded; see [`encode_into`].
    scratch: BytesMut,
    /// Bytes queued for all the connections' writers.
    queued_total: Arc<AtomicUsize>,
    /// Bounds the bytes held by all the connections' receive buffers.
    read_budget: Arc<ReadBudget>,
    listener: Option<JoinHandle<()>>,
    /// Metrics and per-file observations, for people watching the node.
    watch: Watch,
}

impl<M: Machine> std::fmt::Debug for Driver<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("label", &self.label).field("conns", &self.conns.len()).finish_non_exhaustive()
    }
}

/// A connection accepted by the listener.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub struct Accepted {
    stream: TcpStream,
    remote: SocketAddr,
}

/// A local command for the machine; refused when the machine's check refuses it.
#[derive(Debug, actix::Message)]
#[rtype(result = "Result<(), CommandError>")]
pub struct Local(pub Command);

/// Runs a read-only look at the driver's state (its machine, what it saw, its clock) and
/// answers with what the look returns; for the HTTP API.
pub struct Inspect<M, R>(pub Look<M, R>);

/// The look an [`Inspect`] runs.
pub type Look<M, R> = Box<dyn FnOnce(DriverView<'_, M>) -> R + Send>;

impl<M: 'static, R: 'static> actix::Message for Inspect<M, R> {
    type Result = R;
}

impl<M, R> std::fmt::Debug for Inspect<M, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inspect")
    }
}

/// What an [`Inspect`] may read.
#[derive(Debug)]
pub struct DriverView<'a, M> {
    /// The machine.
    pub machine: &'a M,
    /// What the driver saw it do.
    pub watch: &'a Watch,
    /// The machine's clock now.
    pub now: Time,
}

/// `Command::Leave`, answered once the connections it closed are flushed and closed.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub struct Leave;

/// Stops the driver: every connection and the listener are dropped.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Where a driver sends its events for the program embedding it.
#[derive(Debug)]
pub enum EventSink {
    /// Every event, however far behind the reader is: a peer's program waits for some of them
    /// (`Completed`), and a peer makes as many as its files, pieces and remotes.
    Every(mpsc::UnboundedSender<NodeEvent>),
    /// As many as the channel has room for; the others are dropped and counted, with a warning
    /// at each doubling of the count. A tracker makes an event for every announce of every
    /// peer, and its program only tells them, so a flood of announces would otherwise queue
    /// events without bound.
    UpTo(mpsc::Sender<NodeEvent>),
}

impl<M: Machine + Unpin + 'static> Driver<M> {
    /// A driver for `machine` whose connections prove and check `keys`; `label` prefixes its
    /// log lines.
    pub fn new(
        machine: M,
        keys: Keys,
        label: String,
        store: Option<Arc<Store>>,
        events: Option<EventSink>,
    ) -> Driver<M> {
        let write_budget = store.is_some().then(|| Arc::new(Semaphore::new(WRITE_BUDGET_BYTES)));
        Driver {
            machine,
            drained: Vec::new(),
            keys: Arc::new(keys),
            handshaking: 0,
            write_budget,
            data_permit: None,
            scratch: BytesMut::new(),
            queued_total: Arc::default(),
            read_budget: ReadBudget::new(READ_BUFFERS_TOTAL_BYTES_MAX),
            label,
            start: Instant::now(),
            store,
            events,
            events_dropped: 0,
            conns: BTreeMap::new(),
            closing: Vec::new(),
            pending: VecDeque::new(),
            timer: None,
            next_token: 0,
            next_inbound: 0,
            received_bytes: BTreeMap::new(),
            store_jobs: Arc::new(Semaphore::new(STORE_JOBS_MAX - WRITE_JOBS_MAX)),
            write_jobs: Arc::new(Semaphore::new(WRITE_JOBS_MAX)),
            listener: None,
            watch: Watch::new(Arc::new(Metrics::new(Role::Peer))),
        }
    }

    /// Has the driver feed `metrics` (by default, fresh peer metrics nobody reads).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Driver<M> {
        self.watch = Watch::new(metrics);
        self
    }

    /// Starts the actor and a task accepting connections on `listener`.
    pub fn start_with_listener(self, listener: TcpListener) -> Addr<Driver<M>> {
        Driver::create(move |ctx| {
            let mut driver = self;
            driver.listener = Some(tokio::spawn(accept_loop(listener, ctx.address().recipient())));
            driver
        })
    }

    fn now(&self) -> Time {
        Time::from_elapsed(self.start.elapsed())
    }

    /// Handles `input`, then every input its outputs caused, each a [`step`] (a full drain).
    fn feed(&mut self, ctx: &mut Context<Self>, input: Input) {
        self.pending.push_back(input);
        self.run_pending(ctx);
    }

    /// Steps the machine through every queued input, carrying out the outputs of each step
    /// before the next; then re-arms the timer.
    fn run_pending(&mut self, ctx: &mut Context<Self>) {
        while let Some(input) = self.pending.pop_front() {
            self.count_received(&input);
            let now = self.now();
            let mut outputs = std::mem::take(&mut self.drained);
            step(&mut self.machine, now, input, |output| outputs.push(output));
            self.carry_out(ctx, &mut outputs);
            self.drained = outputs;
        }
        self.watch.connections(self.conns.len());
        self.arm_timer(ctx);
    }

    /// Carries out a drained step's outputs (inputs they cause wait in `pending`).
    fn carry_out(&mut self, ctx: &mut Context<Self>, outputs: &mut Vec<Output>) {
        for output in outputs.drain(..) {
            self.execute(ctx, output);
        }
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        let wanted = self.machine.poll_timeout();
        if self.timer.as_ref().map(|(at, _)| *at) == wanted {
            return;
        }
        if let Some((_, handle)) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = wanted {
            let handle = ctx.run_later(at.saturating_since(self.now()), |driver, ctx| {
                driver.timer = None;
                driver.feed(ctx, Input::Timeout);
            });
            self.timer = Some((at, handle));
        }
    }

    /// Counts the block bytes received for each file this node was told to download. Only
    /// those files get a count: the ids in a remote's `Data` frames are the remote's choice, and
    /// a count per id it names would grow without bound.
    fn count_received(&mut self, input: &Input) {
        let Input::Message { message, .. } = input else { return };
        if let Message::Data { file_id, bytes, .. } = message {
            if let Some(count) = self.received_bytes.get_mut(file_id) {
                *count += bytes.len() as u64;
            }
        }
        self.watch.received(message);
    }

    /// Starts counting the bytes received for a file the node is told to download.
    fn count_command(&mut self, command: &Command) {
        if let Command::Get { file_id, .. } = command {
            self.received_bytes.entry(*file_id).or_default();
        }
    }

    fn execute(&mut self, ctx: &mut Context<Self>, output: Output) {
        match output {
            Output::Connect { conn, addr } => self.dial(ctx, conn, addr),
            Output::Send { conn, message } => self.send(conn, &message),
            Output::Close { conn } => {
                if let Some(connection) = self.conns.remove(&conn) {
                    self.closing.retain(|task| !task.is_finished());
                    self.closing.push(connection.close());
                }
            }
            Output::Event(event) => self.report(event),
            store_output => self.store_work(ctx, store_output),
        }
    }

    fn dial(&mut self, ctx: &mut Context<Self>, conn: ConnId, addr: SocketAddr) {
        let keys = self.keys.clone();
        let connect = async move {
            let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err(ConnectFailure::Refused),
                Ok(Err(e)) => return Err(ConnectFailure::Other(e.to_string())),
                Err(_) => return Err(ConnectFailure::TimedOut),
            };
            secure::connect(stream, &keys).await.map_err(|e| match e {
                HandshakeError::NotSwarm { .. } => ConnectFailure::WrongProtocol(e.to_string()),
                other => ConnectFailure::Handshake(other.to_string()),
            })
        };
        ctx.spawn(wrap_future(connect).map(move |result, driver: &mut Self, ctx| {
            let reason = match result {
                Ok(stream) => {
                    driver.notify(NodeEvent::Connected { addr });
                    return driver.open(ctx, conn, stream, addr);
                }
                Err(reason) => reason,
            };
            tracing::debug!("{}: {conn}: cannot connect to {addr}: {reason}", driver.label);
            driver.notify(NodeEvent::ConnectFailed { addr, reason });
            driver.feed(ctx, Input::Disconnected { conn });
        }));
    }

    fn open(&mut self, ctx: &mut Context<Self>, conn: ConnId, stream: SecureStream, remote: SocketAddr) {
        let peer_id = stream.peer_id();
        self.next_token += 1;
        let connection = Connection::start(
            stream,
            (conn, self.next_token, remote),
            ctx.address().recipient(),
            self.write_budget.clone(),
            self.queued_total.clone(),
            &self.read_budget,
        );
        if let Some(old) = self.conns.insert(conn, connection) {
            tracing::warn!("{}: {conn} reused while open; dropping the old one", self.label);
            old.abort();
        }
        self.feed(ctx, Input::Connected { conn, remote, peer_id });
    }

    fn send(&mut self, conn: ConnId, message: &Message) {
        let Some(connection) = self.conns.get(&conn) else {
            tracing::trace!("{}: {conn} is gone; dropping a {}", self.label, message.kind());
            return;
        };
        let frame = match encode_into(message, &mut self.scratch) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::error!("{}: {conn}: cannot send a {}: {e}", self.label, message.kind());
                return;
            }
        };
        match connection.send(frame) {
            Ok(()) => {
                tracing::trace!("{}: {conn}: queued a {}", self.label, message.kind());
                self.watch.sent(message);
            }
            Err(QueueError::Full) => {
                tracing::warn!("{}: {conn} {}: remote does not read; dropping it", self.label, connection.remote());
                self.drop_conn(conn);
            }
            Err(QueueError::Overloaded) => {
                tracing::warn!(
                    "{}: {conn} {}: too much queued for slow remotes; dropping it",
                    self.label,
                    connection.remote()
                );
                self.drop_conn(conn);
            }
            Err(QueueError::Gone) => self.drop_conn(conn),
        }
    }

    /// Drops a connection the driver gave up on and tells the machine.
    fn drop_conn(&mut self, conn: ConnId) {
        if let Some(connection) = self.conns.remove(&conn) {
            connection.abort();
            self.pending.push_back(Input::Disconnected { conn });
        }
    }

    /// Sends `event` to the embedding program, if it listens (see [`EventSink`]).
    fn notify(&mut self, event: NodeEvent) {
        match &self.events {
            // The embedding program may have stopped listening; the node runs on regardless.
            Some(EventSink::Every(events)) => {
                events.send(event).ok();
            }
            Some(EventSink::UpTo(events)) => {
                if let Err(mpsc::error::TrySendError::Full(_)) = events.try_send(event) {
                    self.events_dropped += 1;
                    // Each doubling once: a reader that stays behind costs a few lines, not one per event.
                    if self.events_dropped.is_power_of_two() {
                        tracing::warn!(
                            "{}: {} events dropped in all: the program reading them is behind",
                            self.label,
                            self.events_dropped
                        );
                    }
                }
            }
            None => {}
        }
    }

    fn report(&mut self, event: Event) {
        tracing::debug!("{}: {event:?}", self.label);
        self.watch.event(&event);
        if let Event::ProtocolViolation { conn: conn @ ConnId::Outbound(_), reason } = &event {
            if let Some(connection) = self.conns.get(conn) {
                let reason = ConnectFailure::WrongProtocol(reason.clone());
                self.notify(NodeEvent::ConnectFailed { addr: connection.remote(), reason });
            }
        }
        if let Event::Removed { file_id } = &event {
            self.received_bytes.remove(file_id);
        }
        if self.events.is_none() {
            return;
        }
        let completed = match &event {
            Event::Complete { file_id } => Some(*file_id),
            _ => None,
        };
        self.notify(NodeEvent::Machine(event));
        if let Some(file_id) = completed {
            let path = self.store.as_ref().and_then(|store| store.path_of(file_id)).unwrap_or_default();
            let received_bytes = self.received_bytes.remove(&file_id).unwrap_or(0);
            self.notify(NodeEvent::Completed { file_id, path, received_bytes });
        }
    }

    fn store_work(&mut self, ctx: &mut Context<Self>, output: Output) {
        let Some(store) = self.store.clone() else {
            tracing::error!("{}: no store for {output:?}", self.label);
            return;
        };
        match output {
            // Inline: it is a few small writes once per download, and every later store
            // output for the file relies on it having happened (it has no completion).
            Output::Allocate { manifest } => store.allocate(&manifest),
            Output::ChunkVerified { file_id, chunk } => match store.mark_verified(file_id, chunk) {
                Ok(true) => self.persist_later(move || {
                    if let Err(e) = store.persist_bitfield(file_id) {
                        tracing::error!("cannot record chunk {chunk} of {file_id}: {e}");
                    }
                }),
                // A write already waiting records this chunk too.
                Ok(false) => {}
                Err(e) => tracing::error!("{}: cannot record chunk {chunk}: {e}", self.label),
            },
            // Inline: no disk (written with the next bitfield).
            Output::KeepList { file_id, piece, digests } => {
                if let Err(e) = store.keep_list(file_id, piece, &digests) {
                    tracing::error!("{}: cannot keep the chunk list of piece {}: {e}", self.label, piece.0);
                }
            }
            Output::WriteBlock { file_id, chunk, offset, bytes } => {
                self.watch.kept(file_id, bytes.len());
                let permit = self.data_permit.take();
                let lane = self.write_jobs.clone();
                self.work(ctx, lane, move || {
                    let result = store.write_block(file_id, chunk, offset, &bytes);
                    drop(permit);
                    Completion::BlockWritten { file_id, chunk, offset, result }
                })
            }
            Output::HashChunk { file_id, chunk } => self.work(ctx, self.store_jobs.clone(), move || {
                let result = store.hash_chunk(file_id, chunk);
                Completion::ChunkHashed { file_id, chunk, result }
            }),
            Output::ReadChunkDigests { file_id, piece, .. } => self.work(ctx, self.store_jobs.clone(), move || {
                let result = store.chunk_digests(file_id, piece);
                Completion::ChunkDigestsRead { file_id, piece, result }
            }),
            Output::ReadBlock { conn, file_id, chunk, offset, len } => {
                self.work(ctx, self.store_jobs.clone(), move || {
                    let result = store.read_block(file_id, chunk, offset, len);
                    Completion::BlockRead { conn, file_id, chunk, offset, result }
                })
            }
            Output::Finalize { file_id } => self.work(ctx, self.store_jobs.clone(), move || {
                let result = store.finalize(file_id).map(|_| ());
                Completion::Finalized { file_id, result }
            }),
            other => tracing::error!("{}: not store work: {other:?}", self.label),
        }
    }

    /// Runs `job` on a worker thread, once `lane` has a permit for it, and feeds its
    /// completion back to the machine.
    fn work(
        &mut self,
        ctx: &mut Context<Self>,
        lane: Arc<Semaphore>,
        job: impl FnOnce() -> Completion + Send + 'static,
    ) {
        let run = async move {
            // The semaphore is never closed, so acquiring only waits.
            let _permit = lane.acquire_owned().await.ok();
            tokio::task::spawn_blocking(job).await
        };
        ctx.spawn(wrap_future(run).map(|result, driver: &mut Self, ctx| match result {
            Ok(completion) => driver.feed(ctx, Input::Completed(completion)),
            Err(e) => tracing::error!("{}: a store job failed: {e}", driver.label),
        }));
    }

    /// Runs `job`, a bitfield write, on a worker thread after [`BITFIELD_WRITE_DELAY`];
    /// nothing comes back. The chunks verified meanwhile go in the same write: the writes, each
    /// synced and holding a store worker, keep to a few a second however fast chunks come.
    fn persist_later(&self, job: impl FnOnce() + Send + 'static) {
        let permits = self.store_jobs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(BITFIELD_WRITE_DELAY).await;
            let _permit = permits.acquire_owned().await.ok();
            tokio::task::spawn_blocking(job).await.ok();
        });
    }
}

impl<M: Machine + Unpin + 'static> Actor for Driver<M> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Connection reports wait in the mailbox while the driver is busy; keep it small so the
        // readers feel the back-pressure.
        ctx.set_mailbox_capacity(64);
        self.arm_timer(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
        for (_, connection) in std::mem::take(&mut self.conns) {
            connection.abort();
        }
    }
}

impl<M: Machine + Unpin + 'static> Handler<ConnEvent> for Driver<M> {
    type Result = ();

    fn handle(&mut self, event: ConnEvent, ctx: &mut Context<Self>) {
        let ConnEvent { conn, token, report } = event;
        if self.conns.get(&conn).map(Connection::token) != Some(token) {
            return; // a report from a connection already closed
        }
        match report {
            ConnReport::Messages(messages, permit) => {
                let mut permit = permit;
                let last = messages.len().saturating_sub(1);
                for (i, message) in messages.into_iter().enumerate() {
                    // An earlier message of the batch may have closed the connection.
                    if self.conns.get(&conn).map(Connection::token) != Some(token) {
                        break;
                    }
                    // The budget share belongs to the `Data` message that ends a batch.
                    self.data_permit = if i == last { permit.take() } else { None };
                    tracing::trace!("{}: {conn}: received a {}", self.label, message.kind());
                    self.feed(ctx, Input::Message { conn, message });
                    // The machine dropped the block (a duplicate, say): its budget is free again.
                    self.data_permit = None;
                }
            }
            ConnReport::Sent(data_frames) => {
                tracing::trace!("{}: {conn}: {data_frames} data frames sent on by the socket", self.label);
                self.feed(ctx, Input::Sent { conn, data_frames });
            }
            ConnReport::BadFrame(error) => {
                tracing::warn!("{}: {conn}: bad frame: {error}", self.label);
                self.feed(ctx, Input::BadFrame { conn, error });
            }
            ConnReport::Closed => {
                self.conns.remove(&conn);
                self.feed(ctx, Input::Disconnected { conn });
            }
        }
    }
}

impl<M: Machine + Unpin + 'static> Handler<Accepted> for Driver<M> {
    type Result = ();

    fn handle(&mut self, accepted: Accepted, ctx: &mut Context<Self>) {
        let Accepted { stream, remote } = accepted;
        if self.conns.len() + self.handshaking >= CONNECTIONS_MAX {
            tracing::warn!(
                "{}: {} connections open; refusing {remote}",
                self.label,
                self.conns.len() + self.handshaking
            );
            return;
        }
        self.handshaking += 1;
        let keys = self.keys.clone();
        let handshake = async move { secure::accept(stream, &keys).await };
        ctx.spawn(wrap_future(handshake).map(move |result, driver: &mut Self, ctx| {
            driver.handshaking -= 1;
            match result {
                Ok(stream) => {
                    driver.next_inbound += 1;
                    driver.open(ctx, ConnId::Inbound(driver.next_inbound), stream, remote);
                }
                // Another swarm's node, or a key refused, is told why; someone else's junk is not news.
                Err(e @ (HandshakeError::SwarmKeyMismatch | HandshakeError::NotAllowed(_))) => {
                    tracing::warn!("{}: {remote}: {e}", driver.label)
                }
                Err(e) => tracing::debug!("{}: {remote}: {e}", driver.label),
            }
        }));
    }
}

impl<M: Machine + Unpin + 'static> Handler<Local> for Driver<M> {
    type Result = Result<(), CommandError>;

    fn handle(&mut self, Local(command): Local, ctx: &mut Context<Self>) -> Result<(), CommandError> {
        self.count_command(&command);
        let now = self.now();
        let mut outputs = std::mem::take(&mut self.drained);
        let taken = step_command(&mut self.machine, now, command, |output| outputs.push(output));
        self.carry_out(ctx, &mut outputs);
        self.drained = outputs;
        self.run_pending(ctx);
        taken.map(|_| ())
    }
}

impl<M: Machine + Unpin + 'static, R: Send + 'static> Handler<Inspect<M, R>> for Driver<M> {
    type Result = MessageResult<Inspect<M, R>>;

    fn handle(&mut self, Inspect(look): Inspect<M, R>, _ctx: &mut Context<Self>) -> Self::Result {
        let now = self.now();
        MessageResult(look(DriverView { machine: &self.machine, watch: &self.watch, now }))
    }
}

impl<M: Machine + Unpin + 'static> Handler<Leave> for Driver<M> {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _leave: Leave, ctx: &mut Context<Self>) -> ResponseFuture<()> {
        Handler::<Local>::handle(self, Local(Command::Leave), ctx).ok();
        let closing = std::mem::take(&mut self.closing);
        Box::pin(async move {
            for task in closing {
                // Each close is bounded by CLOSE_FLUSH_TIMEOUT; a failed one has nothing to wait for.
                task.await.ok();
            }
        })
    }
}

impl<M: Machine + Unpin + 'static> Handler<Stop> for Driver<M> {
    type Result = ();

    fn handle(&mut self, _stop: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

async fn accept_loop(listener: TcpListener, driver: Recipient<Accepted>) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                // A dual-stack listener (`[::]`) reports IPv4 clients as IPv4-mapped IPv6
                // addresses; the machines see the plain IPv4 address, so a peer has one address
                // whichever family the listener has (tracker records, loopback checks, bans).
                let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
                if driver.send(Accepted { stream, remote }).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
