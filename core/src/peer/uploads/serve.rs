//! Serving remotes: requests are checked (only verified pieces, only whole ranges inside the
//! piece), queued per connection up to a bound, and read from the driver a bounded number at a
//! time, paced by a token bucket when an upload limit is set. Connections take turns, one
//! block each, so every remote that asks gets pieces early and can pass them on.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::ids::{ConnId, FileId, PieceIndex};
use crate::limits::{
    BLOCK_BYTES, SERVE_QUEUE_PER_CONN_MAX, SERVE_READS_IN_FLIGHT_MAX, UPLOAD_BURST_FRACTION_OF_SECOND,
};
use crate::machine::{Event, Output};
use crate::time::Time;
use crate::wire::{Message, RejectReason};

use super::Peer;

const MICROS_PER_SECOND: i128 = 1_000_000;

/// A queued block request of a remote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ServeJob {
    conn: ConnId,
    file_id: FileId,
    piece: PieceIndex,
    offset: u32,
    len: u32,
}

/// Upload pacing: bytes may be spent while the balance is positive; it refills at `rate` bytes
/// per second up to a burst. Balances are in byte-microseconds so refills lose nothing to
/// rounding.
#[derive(Clone, Debug)]
struct TokenBucket {
    rate_bytes_per_s: i128,
    burst: i128,
    balance: i128,
    refilled_at: Time,
}

impl TokenBucket {
    fn new(rate_bytes_per_s: u64) -> TokenBucket {
        let rate = i128::from(rate_bytes_per_s.max(1));
        let burst_bytes = (rate / i128::from(UPLOAD_BURST_FRACTION_OF_SECOND)).max(i128::from(BLOCK_BYTES));
        let burst = burst_bytes * MICROS_PER_SECOND;
        TokenBucket { rate_bytes_per_s: rate, burst, balance: burst, refilled_at: Time::ZERO }
    }

    fn refill(&mut self, now: Time) {
        let elapsed = i128::from(now.as_micros().saturating_sub(self.refilled_at.as_micros()));
        self.balance = (self.balance + elapsed * self.rate_bytes_per_s).min(self.burst);
        self.refilled_at = now;
    }

    fn can_spend(&self) -> bool {
        self.balance > 0
    }

    fn spend(&mut self, bytes: u32) {
        self.balance -= i128::from(bytes) * MICROS_PER_SECOND;
    }

    /// When the balance will be positive again.
    fn positive_at(&self) -> Time {
        let deficit = -self.balance + 1;
        let micros = (deficit + self.rate_bytes_per_s - 1) / self.rate_bytes_per_s;
        Time::from_micros(self.refilled_at.as_micros().saturating_add(u64::try_from(micros).unwrap_or(u64::MAX)))
    }
}

/// The serving side's queues and pacing.
#[derive(Debug)]
pub(super) struct Uploads {
    bucket: Option<TokenBucket>,
    /// Queued requests per connection (no empty queues).
    queues: BTreeMap<ConnId, VecDeque<ServeJob>>,
    /// The connection whose request was read last: the next turn goes to the one after it.
    last_turn: Option<ConnId>,
    reads_in_flight: usize,
    wake_at: Option<Time>,
}

impl Uploads {
    /// Unpaced when `limit` is `None`.
    pub fn new(limit_bytes_per_s: Option<u64>) -> Uploads {
        Uploads {
            bucket: limit_bytes_per_s.map(TokenBucket::new),
            queues: BTreeMap::new(),
            last_turn: None,
            reads_in_flight: 0,
            wake_at: None,
        }
    }

    /// When the pacer wants to run again.
    pub fn wake_at(&self) -> Option<Time> {
        self.wake_at
    }

    /// Forgets the queued requests of a closed connection.
    pub fn drop_conn(&mut self, conn: ConnId) {
        self.queues.remove(&conn);
    }

    fn enqueue(&mut self, job: ServeJob) {
        self.queues.entry(job.conn).or_default().push_back(job);
    }

    /// The next request in turn: the first of the connection after the one served last.
    fn next_job(&self) -> Option<ServeJob> {
        let after = self.last_turn.and_then(|last| self.queues.range(last..).find(|(c, _)| **c != last));
        let (_, queue) = after.or_else(|| self.queues.iter().next())?;
        queue.front().copied()
    }

    /// Takes `job` (the one `next_job` returned) off its queue and hands the turn on.
    fn take(&mut self, job: ServeJob) {
        if let Some(queue) = self.queues.get_mut(&job.conn) {
            queue.pop_front();
            if queue.is_empty() {
                self.queues.remove(&job.conn);
            }
        }
        self.last_turn = Some(job.conn);
    }

    /// Removes a queued request; whether it was queued.
    fn cancel(&mut self, conn: ConnId, file_id: FileId, piece: PieceIndex, offset: u32) -> bool {
        let Some(queue) = self.queues.get_mut(&conn) else { return false };
        let Some(at) = queue.iter().position(|j| j.file_id == file_id && j.piece == piece && j.offset == offset) else {
            return false;
        };
        queue.remove(at);
        if queue.is_empty() {
            self.queues.remove(&conn);
        }
        true
    }
}

impl Peer {
    pub(super) fn on_request(&mut self, conn: ConnId, file_id: FileId, piece: PieceIndex, offset: u32, len: u32) {
        let reject = |reason| Message::Reject { file_id, piece, offset, reason };
        let entry = self.files.get(&file_id);
        let piece_len = entry.and_then(|e| e.manifest.as_ref()).and_then(|m| m.piece(piece.0).map(|p| m.piece_len(p)));
        let Some(piece_len) = piece_len.filter(|_| entry.is_some_and(|e| e.have.has(piece))) else {
            return self.send(conn, reject(RejectReason::NotHave));
        };
        let in_range = len > 0 && len <= BLOCK_BYTES && offset.checked_add(len).is_some_and(|end| end <= piece_len);
        if !in_range {
            return self.send(conn, reject(RejectReason::BadRange));
        }
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        if remote.serving >= SERVE_QUEUE_PER_CONN_MAX {
            return self.send(conn, reject(RejectReason::Busy));
        }
        remote.serving += 1;
        self.uploads.enqueue(ServeJob { conn, file_id, piece, offset, len });
        self.pump_uploads();
    }

    pub(super) fn on_cancel(&mut self, conn: ConnId, file_id: FileId, piece: PieceIndex, offset: u32) {
        if self.uploads.cancel(conn, file_id, piece, offset) {
            if let Some(remote) = self.remotes.get_mut(&conn) {
                remote.serving = remote.serving.saturating_sub(1);
            }
        }
    }

    /// Starts reads for queued requests while the read bound and the upload limit allow.
    pub(super) fn pump_uploads(&mut self) {
        let now = self.now;
        self.uploads.wake_at = None;
        while self.uploads.reads_in_flight < SERVE_READS_IN_FLIGHT_MAX {
            let Some(job) = self.uploads.next_job() else { break };
            if let Some(bucket) = self.uploads.bucket.as_mut() {
                bucket.refill(now);
                if !bucket.can_spend() {
                    self.uploads.wake_at = Some(bucket.positive_at());
                    break;
                }
                bucket.spend(job.len);
            }
            self.uploads.take(job);
            self.uploads.reads_in_flight += 1;
            let ServeJob { conn, file_id, piece, offset, len } = job;
            self.push(Output::ReadBlock { conn, file_id, piece, offset, len });
        }
    }

    pub(super) fn on_block_read(
        &mut self,
        conn: ConnId,
        file_id: FileId,
        piece: PieceIndex,
        offset: u32,
        result: Result<Bytes, String>,
    ) {
        self.uploads.reads_in_flight = self.uploads.reads_in_flight.saturating_sub(1);
        if let Some(remote) = self.remotes.get_mut(&conn) {
            remote.serving = remote.serving.saturating_sub(1);
            let to = remote.addr;
            match result {
                Ok(bytes) => {
                    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                    self.send(conn, Message::Data { file_id, piece, offset, bytes });
                    self.event(Event::BlockServed { file_id, piece, len, to });
                    if self.is_last_block(file_id, piece, offset, len) {
                        self.offer_uploaded(conn, file_id, piece);
                    }
                }
                Err(_) => self.send(conn, Message::Reject { file_id, piece, offset, reason: RejectReason::ReadFailed }),
            }
        }
        self.pump_uploads();
    }
}

impl Peer {
    /// Whether `offset..offset + len` ends `piece`.
    fn is_last_block(&self, file_id: FileId, piece: PieceIndex, offset: u32, len: u32) -> bool {
        let manifest = self.files.get(&file_id).and_then(|e| e.manifest.as_ref());
        manifest.is_some_and(|m| offset.checked_add(len) == Some(m.piece_len(piece)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces_to_its_rate() {
        let mut bucket = TokenBucket::new(1_000_000);
        // Burst: max(rate/8, one block) = one block.
        let mut now = Time::ZERO;
        let mut sent = 0u64;
        while now < Time::from_millis(10_000) {
            bucket.refill(now);
            if bucket.can_spend() {
                bucket.spend(100_000);
                sent += 100_000;
            } else {
                now = bucket.positive_at();
            }
        }
        // 10 s at 1 MB/s plus the initial burst, within one block.
        let expected = 10_000_000 + u64::from(BLOCK_BYTES);
        assert!(sent.abs_diff(expected) <= 200_000, "sent {sent}, expected about {expected}");
    }
}
