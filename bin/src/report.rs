//! Every stable stdout line of `p2p-node` (docs/cli.md and the extra lines tests rely on) and
//! the exit codes, in one place.
//!
//! Outside scripts parse these lines: change a format here and nowhere else, and only by adding.
//! A peer's events are also published as JSON objects (`{"event": "complete", ...}`), on stdout
//! beside the text lines with `--json` and on the HTTP event stream; see [`publish_events`].

use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use p2p_core::wire::FileSummary;
use p2p_core::{FileId, PeerId};
use serde_json::json;
use tokio::sync::broadcast;

/// A failure caused by how the program was called (exit 2), as opposed to a failed job (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Writes one line on stdout. A closed stdout (a reader that went away) must not bring a
/// seeding node down, so the error is ignored.
fn emit(line: fmt::Arguments<'_>) {
    writeln!(std::io::stdout().lock(), "{line}").ok();
}

/// Where events go besides the text lines; set once, before the first line.
static EVENTS: OnceLock<Events> = OnceLock::new();

/// Where a peer's events go as JSON objects.
#[derive(Debug)]
pub struct Events {
    /// One JSON line on stdout per event, beside the text line (`--json`).
    pub json_lines: bool,
    /// The HTTP event stream.
    pub stream: Option<broadcast::Sender<Arc<str>>>,
}

/// Publishes every later event as JSON to `events` (the first call wins).
pub fn publish_events(events: Events) {
    EVENTS.set(events).ok();
}

/// Publishes one event, if anyone listens.
fn publish(event: serde_json::Value) {
    let Some(events) = EVENTS.get() else { return };
    let line: Arc<str> = event.to_string().into();
    if events.json_lines {
        emit(format_args!("{line}"));
    }
    if let Some(stream) = &events.stream {
        // No stream open: nobody to tell.
        stream.send(line).ok();
    }
}

/// Exit code of a successful run.
pub const EXIT_OK: u8 = 0;
/// Exit code of a job that failed; the message on stderr says why.
pub const EXIT_FAILED: u8 = 1;
/// Exit code of bad usage.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a download interrupted by SIGINT (128 + the signal's number, as shells do).
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit code of a download interrupted by SIGTERM (128 + the signal's number).
pub const EXIT_TERMINATED: u8 = 143;

/// The signals that stop a node cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

/// A download stopped by a signal before it was complete. Its verified chunks are in the
/// store, so the same command resumes it.
#[derive(Debug, thiserror::Error)]
#[error("interrupted at {}; run the same command to resume", at_chunks(*.have, *.total))]
pub struct Interrupted {
    /// The signal that stopped it.
    pub signal: Signal,
    /// Verified chunks of the unfinished downloads.
    pub have: u32,
    /// Pieces of the unfinished downloads whose size is known.
    pub total: u32,
}

/// `H/T chunks`, or what it means when no download knew its size yet.
fn at_chunks(have: u32, total: u32) -> String {
    if total == 0 {
        "the start (no file size known yet)".to_owned()
    } else {
        format!("{have}/{total} chunks")
    }
}

/// Prints why a run failed on stderr and returns its exit code: bad usage, an interrupted
/// download (its message alone: not an error of the program), or a failed job.
pub fn failure(error: &anyhow::Error) -> ExitCode {
    if let Some(interrupted) = error.downcast_ref::<Interrupted>() {
        eprintln!("{interrupted}");
        return ExitCode::from(match interrupted.signal {
            Signal::Interrupt => EXIT_INTERRUPTED,
            Signal::Terminate => EXIT_TERMINATED,
        });
    }
    eprintln!("error: {error:#}");
    if error.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// `N unit` or `N units`, as a person reads it ("1 piece", "3 pieces").
pub fn count(n: u32, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// `listening on ADDR`: the node accepts connections at its real address.
pub fn listening(addr: SocketAddr) {
    emit(format_args!("listening on {addr}"));
    publish(json!({ "event": "listening", "addr": addr }));
}

/// `http on ADDR`: the HTTP API, /metrics and the web page are served at ADDR.
pub fn http_on(addr: SocketAddr) {
    emit(format_args!("http on {addr}"));
    publish(json!({ "event": "http", "addr": addr }));
}

/// `sharing FILE_ID NAME PIECES`: the tracker acknowledged a shared file.
pub fn sharing(file_id: FileId, name: &str, pieces: u32) {
    emit(format_args!("sharing {file_id} {name} {pieces}"));
    publish(json!({ "event": "sharing", "file_id": file_id.to_string(), "name": name, "pieces": pieces }));
}

/// `resumed FILE_ID HAVE/TOTAL`: the store already held verified chunks of a download.
pub fn resumed(file_id: FileId, have: u32, total: u32) {
    emit(format_args!("resumed {file_id} {have}/{total}"));
    publish(json!({ "event": "resumed", "file_id": file_id.to_string(), "have": have, "total": total }));
}

/// `complete FILE_ID PATH`: every piece verified and the file is at PATH.
pub fn complete(file_id: FileId, path: &Path) {
    emit(format_args!("complete {file_id} {}", path.display()));
    publish(json!({ "event": "complete", "file_id": file_id.to_string(), "path": path }));
}

/// `downloaded FILE_ID BYTES useful=U duplicate=D`: payload bytes of the file received over
/// the network this run; of those, U are the chunks this run verified and D the rest (blocks
/// fetched twice near the end, chunks that failed their hash).
pub fn downloaded(file_id: FileId, bytes: u64, useful_bytes: u64) {
    let duplicate_bytes = bytes.saturating_sub(useful_bytes);
    emit(format_args!("downloaded {file_id} {bytes} useful={useful_bytes} duplicate={duplicate_bytes}"));
    publish(json!({
        "event": "downloaded",
        "file_id": file_id.to_string(),
        "bytes": bytes,
        "useful_bytes": useful_bytes,
        "duplicate_bytes": duplicate_bytes,
    }));
}

/// `seeding FILE_ID NAME PIECES`: the tracker acknowledged a file the store remembered serving
/// (shared or downloaded by an earlier run; not a `--share` of this run).
pub fn seeding(file_id: FileId, name: &str, pieces: u32) {
    emit(format_args!("seeding {file_id} {name} {pieces}"));
    publish(json!({ "event": "seeding", "file_id": file_id.to_string(), "name": name, "pieces": pieces }));
}

/// `progress FILE_ID HAVE/TOTAL RATE_BYTES_PER_S peers=N RATE ETA`: a plain progress line; the
/// last fields are for a person: the rate in binary units and the time left at that rate
/// (`ETA ?` before the first piece of this run).
pub fn progress(file_id: FileId, have: u32, total: u32, rate_bytes_per_s: u64, peers: u32, left: Option<Duration>) {
    let rate = indicatif::HumanBytes(rate_bytes_per_s);
    let left = left.map_or_else(|| "?".to_owned(), |left| indicatif::HumanDuration(left).to_string());
    emit(format_args!("progress {file_id} {have}/{total} {rate_bytes_per_s}B/s peers={peers} {rate}/s ETA {left}"));
    publish(json!({
        "event": "progress",
        "file_id": file_id.to_string(),
        "have": have,
        "total": total,
        "rate_bytes_per_s": rate_bytes_per_s,
        "peers": peers,
    }));
}

/// `FILE_ID STATE HAVE/TOTAL NAME`: one file of `p2p-node ctl ls` (`?` for a name not known
/// yet).
pub fn ctl_file(file_id: &str, state: &str, have: u64, total: u64, name: Option<&str>) {
    emit(format_args!("{file_id} {state} {have}/{total} {}", name.unwrap_or("?")));
}

/// `STATE FILE_ID`: what `p2p-node ctl get`, `pause`, `resume` or `rm` left the file in
/// (`downloading`, `paused`, `removed`).
pub fn ctl_state(state: &str, file_id: &str) {
    emit(format_args!("{state} {file_id}"));
}

/// `shared FILE_ID NAME PIECES`: `p2p-node ctl share` shared a file (the peer prints `sharing`
/// once the tracker acknowledged it).
pub fn ctl_shared(file_id: &str, name: &str, pieces: u64) {
    emit(format_args!("shared {file_id} {name} {pieces}"));
}

/// `FILE_ID`: the output of `p2p-node id`.
pub fn file_id(file_id: FileId) {
    emit(format_args!("{file_id}"));
}

/// The output of `p2p-node keygen`: `PEER_ID` (32 hex digits).
pub fn peer_id(peer_id: PeerId) {
    emit(format_args!("{peer_id}"));
}

/// The output of `p2p-node ls`: one line per file,
/// `FILE_ID NAME LENGTH_BYTES peers=N holders=H0,H1,...` (live holders of each piece).
pub fn files(files: &[FileSummary], truncated: bool) {
    for file in files {
        let holders: Vec<String> = file.holders_per_piece.iter().map(u32::to_string).collect();
        emit(format_args!(
            "{} {} {} peers={} holders={}",
            file.file_id,
            file.name,
            file.length_bytes,
            file.peer_count,
            holders.join(",")
        ));
    }
    if truncated {
        emit(format_args!("(more files not listed)"));
    }
}

/// The output of `p2p-node ls` for a person: a table with one row per file (id prefix, name,
/// size, pieces, peers, how well its pieces are covered) and, with `pieces`, the holders of
/// every piece under each row, as runs of pieces with the same count.
pub fn files_table(files: &[FileSummary], truncated: bool, pieces: bool) {
    for line in table_lines(files, truncated, pieces) {
        emit(format_args!("{line}"));
    }
}

fn table_lines(files: &[FileSummary], truncated: bool, pieces: bool) -> Vec<String> {
    let header = ["FILE", "NAME", "SIZE", "PIECES", "PEERS", "COVERAGE"].map(str::to_owned);
    let rows: Vec<[String; 6]> = files
        .iter()
        .map(|file| {
            [
                file.file_id.short(),
                file.name.clone(),
                indicatif::HumanBytes(file.length_bytes).to_string(),
                file.holders_per_piece.len().to_string(),
                file.peer_count.to_string(),
                coverage(&file.holders_per_piece),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|title| title.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let render = |cells: &[String; 6]| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut lines = vec![render(&header)];
    for (row, file) in rows.iter().zip(files) {
        lines.push(render(row));
        if pieces {
            lines.push(format!("  holders per piece: {}", piece_runs(&file.holders_per_piece)));
        }
    }
    if truncated {
        lines.push("(more files not listed)".into());
    }
    lines
}

/// How well the pieces are held: how many nobody holds, else the fewest and most holders.
fn coverage(holders_per_piece: &[u32]) -> String {
    let unheld = holders_per_piece.iter().filter(|holders| **holders == 0).count();
    if unheld > 0 {
        return format!("{unheld} of {} held by nobody", count(holders_per_piece.len() as u32, "piece"));
    }
    let fewest = holders_per_piece.iter().min().copied().unwrap_or(0);
    let most = holders_per_piece.iter().max().copied().unwrap_or(0);
    match (fewest, most) {
        (0, 0) => "no pieces".into(),
        (fewest, most) if fewest == most => format!("every piece held by {}", count(fewest, "peer")),
        (fewest, most) => format!("every piece held by {fewest} to {most} peers"),
    }
}

/// `0-511: 3, 512-1023: 2`: runs of consecutive pieces with the same number of holders.
fn piece_runs(holders_per_piece: &[u32]) -> String {
    let mut runs: Vec<String> = Vec::new();
    let mut start = 0;
    for end in 1..=holders_per_piece.len() {
        if end == holders_per_piece.len() || holders_per_piece[end] != holders_per_piece[start] {
            let range = if end - 1 == start { start.to_string() } else { format!("{start}-{}", end - 1) };
            runs.push(format!("{range}: {}", holders_per_piece[start]));
            start = end;
        }
    }
    runs.join(", ")
}

#[cfg(test)]
mod tests {
    use p2p_core::Digest;

    use super::*;

    fn summary(name: &str, holders_per_piece: Vec<u32>) -> FileSummary {
        FileSummary {
            file_id: FileId(Digest([0xab; 32])),
            name: name.into(),
            length_bytes: 3 << 20,
            peer_count: 2,
            holders_per_piece,
        }
    }

    #[test]
    fn an_interruption_says_where_it_stopped() {
        let at = |have, total| Interrupted { signal: Signal::Interrupt, have, total }.to_string();
        assert_eq!(at(3, 8), "interrupted at 3/8 chunks; run the same command to resume");
        assert_eq!(at(0, 0), "interrupted at the start (no file size known yet); run the same command to resume");
    }

    #[test]
    fn the_table_aligns_its_columns_and_summarises_the_pieces() {
        let files = [summary("movie.mkv", vec![2, 2, 1]), summary("a.bin", vec![1, 0, 0])];
        let lines = table_lines(&files, true, true);
        assert_eq!(lines[0], "FILE      NAME       SIZE      PIECES  PEERS  COVERAGE");
        assert_eq!(lines[1], "abababab  movie.mkv  3.00 MiB  3       2      every piece held by 1 to 2 peers");
        assert_eq!(lines[2], "  holders per piece: 0-1: 2, 2: 1");
        assert_eq!(lines[3], "abababab  a.bin      3.00 MiB  3       2      2 of 3 pieces held by nobody");
        assert_eq!(lines[5], "(more files not listed)");
        assert_eq!(coverage(&[1]), "every piece held by 1 peer");
        assert_eq!(piece_runs(&[]), "");
    }
}
