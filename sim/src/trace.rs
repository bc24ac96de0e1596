//! The trace: one line per event of a run, virtual time first, and the SHA-256 digest of all
//! lines. Same scenario and seed ⇒ byte-identical trace ⇒ same digest.
//!
//! This module also owns how machine [`Event`]s are written in words, with node names in place
//! of addresses, so the trace and the story read the same way.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::net::SocketAddr;

use p2p_core::{Event, GoneReason, Time};
use sha2::{Digest as _, Sha256};

/// Where trace lines go: always into the digest, optionally into a writer.
pub struct Trace {
    hasher: Sha256,
    lines: u64,
    out: Option<Box<dyn Write>>,
    error: Option<std::io::Error>,
    line: String,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace").field("lines", &self.lines).field("writing", &self.out.is_some()).finish()
    }
}

impl Trace {
    /// A trace that is only digested, or also written to `out`.
    pub fn new(out: Option<Box<dyn Write>>) -> Trace {
        Trace { hasher: Sha256::new(), lines: 0, out, error: None, line: String::new() }
    }

    /// Records `text` about `node` at `at`.
    pub fn record(&mut self, at: Time, node: &str, text: std::fmt::Arguments<'_>) {
        use std::fmt::Write as _;
        self.line.clear();
        // Writing into a String cannot fail.
        let _ = write!(self.line, "{at} ");
        self.line.push_str(node);
        self.line.push(' ');
        let _ = self.line.write_fmt(text);
        self.line.push('\n');
        self.hasher.update(self.line.as_bytes());
        self.lines += 1;
        if let (Some(out), None) = (self.out.as_mut(), self.error.as_ref()) {
            if let Err(e) = out.write_all(self.line.as_bytes()) {
                self.error = Some(e);
            }
        }
    }

    /// Flushes the writer and returns the hex digest and line count, or the first write error.
    pub fn finish(mut self) -> (String, u64, Option<std::io::Error>) {
        if let (Some(out), None) = (self.out.as_mut(), self.error.as_ref()) {
            self.error = out.flush().err();
        }
        (hex::encode(self.hasher.finalize()), self.lines, self.error)
    }
}

/// Turns an address into a node name (borrowed where the node has one).
pub type Names<'a> = &'a dyn Fn(SocketAddr) -> Cow<'a, str>;

/// An event in words, written straight into the trace line (no text is built per event).
pub struct Described<'a> {
    /// The event.
    pub event: &'a Event,
    /// Node names by address.
    pub name: Names<'a>,
}

impl fmt::Debug for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Described").field("event", self.event).finish_non_exhaustive()
    }
}

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name;
        match self.event {
            Event::TrackerConnected { addr } => write!(f, "connected to {}", name(*addr)),
            Event::TrackerLost { addr } => write!(f, "lost {}", name(*addr)),
            Event::Sharing { name: file, pieces, .. } => write!(f, "sharing {file} ({pieces} pieces)"),
            Event::LocateSent { .. } => f.write_str("asks the tracker where the chunks are"),
            Event::Located { holders, .. } => {
                f.write_str("tracker answers ")?;
                write_holders(f, holders, name)
            }
            Event::ChunkRequested { chunk, from, .. } => write!(f, "requests chunk {chunk} from {}", name(*from)),
            Event::ChunkVerified { chunk, from, progress, .. } => {
                write!(f, "got chunk {chunk} from {} ({}/{})", name(*from), progress.have, progress.total)
            }
            Event::ChunkCorrupt { chunk, from, .. } => write!(f, "chunk {chunk} from {} failed its hash", name(*from)),
            Event::PeerBanned { addr, .. } => write!(f, "bans {}", name(*addr)),
            Event::ChunksMissing { chunks, .. } => {
                f.write_str("reports chunks missing: ")?;
                write_chunks(f, chunks)
            }
            Event::FileUnknown { .. } => f.write_str("the tracker does not know the file (yet)"),
            Event::Complete { .. } => f.write_str("COMPLETE"),
            Event::DownloadFailed { reason, .. } => write!(f, "download failed: {reason}"),
            Event::ServeFailed { piece, reason, .. } => write!(f, "cannot serve piece {}: {reason}", piece.0),
            Event::Removed { .. } => f.write_str("removed the file"),
            Event::BlockServed { chunk, len, to, .. } => {
                write!(f, "served {len} bytes of chunk {chunk} to {}", name(*to))
            }
            Event::ProtocolViolation { conn, reason } => write!(f, "protocol violation on {conn}: {reason}"),
            Event::PeerAnnounced { peer, chunks, .. } => write!(f, "{} announced {chunks} chunks", name(peer.addr)),
            Event::PeerGone { peer, reason } => {
                let why = match reason {
                    GoneReason::Left => "left",
                    GoneReason::Disconnected => "disconnected",
                    GoneReason::Expired => "expired",
                };
                write!(f, "forgot {} ({why})", name(peer.addr))
            }
        }
    }
}

/// `0@A 1@B,C 2@-` for a located answer, written piece by piece (an answer lists every chunk).
fn write_holders(
    f: &mut fmt::Formatter<'_>,
    holders: &[(p2p_core::ChunkIndex, Vec<SocketAddr>)],
    name: Names<'_>,
) -> fmt::Result {
    for (i, (chunk, addrs)) in holders.iter().enumerate() {
        if i > 0 {
            f.write_str(" ")?;
        }
        write!(f, "{}@", chunk.0)?;
        if addrs.is_empty() {
            f.write_str("-")?;
        }
        for (j, addr) in addrs.iter().enumerate() {
            if j > 0 {
                f.write_str(",")?;
            }
            f.write_str(&name(*addr))?;
        }
    }
    Ok(())
}

/// `[2, 5]` for a list of chunks.
fn write_chunks(f: &mut fmt::Formatter<'_>, chunks: &[p2p_core::ChunkIndex]) -> fmt::Result {
    f.write_str("[")?;
    for (i, chunk) in chunks.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{}", chunk.0)?;
    }
    f.write_str("]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_lines_same_digest() {
        let run = || {
            let mut t = Trace::new(None);
            t.record(Time::from_millis(1500), "A", format_args!("hello {}", 1));
            t.finish().0
        };
        assert_eq!(run(), run());
        let mut other = Trace::new(None);
        other.record(Time::from_millis(1501), "A", format_args!("hello 1"));
        assert_ne!(run(), other.finish().0);
    }
}
