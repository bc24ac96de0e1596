//! Every stable stdout line of `p2p-node` (docs/cli.md and the extra lines tests rely on) and
//! the exit codes, in one place.
//!
//! Outside scripts parse these lines: change a format here and nowhere else, and only by adding.

use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use p2p_core::wire::FileSummary;
use p2p_core::FileId;

/// A failure caused by how the program was called (exit 2), as opposed to a failed job (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Writes one line on stdout. A closed stdout (a reader that went away) must not bring a
/// seeding node down, so the error is ignored.
fn emit(line: fmt::Arguments<'_>) {
    writeln!(std::io::stdout().lock(), "{line}").ok();
}

/// Exit code of a successful run.
pub const EXIT_OK: u8 = 0;
/// Exit code of a job that failed; the message on stderr says why.
pub const EXIT_FAILED: u8 = 1;
/// Exit code of bad usage.
pub const EXIT_USAGE: u8 = 2;

/// The exit code for `error`: bad usage or a failed job.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    if error.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// `listening on ADDR`: the node accepts connections at its real address.
pub fn listening(addr: SocketAddr) {
    emit(format_args!("listening on {addr}"));
}

/// `sharing FILE_ID NAME PIECES`: the tracker acknowledged a shared file.
pub fn sharing(file_id: FileId, name: &str, pieces: u32) {
    emit(format_args!("sharing {file_id} {name} {pieces}"));
}

/// `resumed FILE_ID HAVE/TOTAL`: the store already held verified pieces of a download.
pub fn resumed(file_id: FileId, have: u32, total: u32) {
    emit(format_args!("resumed {file_id} {have}/{total}"));
}

/// `complete FILE_ID PATH`: every piece verified and the file is at PATH.
pub fn complete(file_id: FileId, path: &Path) {
    emit(format_args!("complete {file_id} {}", path.display()));
}

/// `downloaded FILE_ID BYTES`: payload bytes of the file received over the network this run.
pub fn downloaded(file_id: FileId, bytes: u64) {
    emit(format_args!("downloaded {file_id} {bytes}"));
}

/// `progress FILE_ID HAVE/TOTAL RATE_BYTES_PER_S peers=N`: a plain progress line.
pub fn progress(file_id: FileId, have: u32, total: u32, rate_bytes_per_s: u64, peers: u32) {
    emit(format_args!("progress {file_id} {have}/{total} {rate_bytes_per_s}B/s peers={peers}"));
}

/// `FILE_ID`: the output of `p2p-node id`.
pub fn file_id(file_id: FileId) {
    emit(format_args!("{file_id}"));
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
