//! Every bound of the HTTP API in one place. A client of the API is remote input like any other:
//! what it can make the node hold or do is bounded here.

use std::time::Duration;

/// Largest request body accepted (a share or download request is a few hundred bytes).
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Requests a client (by IP address) may make per second, on average.
pub const REQUESTS_PER_S_PER_CLIENT: u32 = 20;
/// Requests a client may make at once after being idle.
pub const REQUESTS_BURST_PER_CLIENT: u32 = 60;
/// Clients whose request rate is tracked at once; when all are busy, new clients are refused.
pub const RATE_CLIENTS_MAX: usize = 1024;
/// Connections the HTTP server keeps open at once.
pub const HTTP_CONNECTIONS_MAX: usize = 256;
/// Server-sent event streams open at once.
pub const EVENT_STREAMS_MAX: usize = 16;
/// Events buffered for the streams; a stream that falls further behind is told how many it
/// missed.
pub const EVENTS_BUFFERED_MAX: usize = 1024;
/// Files listed in one answer.
pub const FILES_LISTED_MAX: usize = 1000;
/// Holders listed per file in one answer.
pub const HOLDERS_LISTED_MAX: usize = 64;
/// Peers and connections listed in one answer.
pub const PEERS_LISTED_MAX: usize = 1000;
/// Random bytes of a generated API token.
pub const TOKEN_BYTES: usize = 32;
/// Largest token file read.
pub const TOKEN_FILE_BYTES_MAX: u64 = 4096;
/// How long a stopping server waits for requests in progress.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);
