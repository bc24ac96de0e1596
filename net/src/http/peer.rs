//! A peer's API: its files (state, pieces, rates), one file's pieces and who sent each, its
//! connections and counters, adding a share or a download, pausing, resuming and removing a
//! file, and the event stream. Changes are made one at a time, so a removal's store clean-up
//! never overlaps the next change to the same file.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use p2p_core::peer::{FileState, FileView};
use p2p_core::{ChunkIndex, FileId, FileIdPrefix};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, Semaphore};

use super::limits::{EVENT_STREAMS_MAX, FILES_LISTED_MAX, PEERS_LISTED_MAX};
use super::{authorize, json_body, pages, start, ApiError, HttpHandle, Token};
use crate::error::NetError;
use crate::node::{PeerHandle, Resumed, ShareOptions};
use crate::watch::FileSeen;

/// A change made through the API, for the program running the peer to follow as it follows
/// its command line's (to print `complete` and `downloaded`; shares need no following: their
/// `sharing` event says it all). Told right after the download's command reached the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// A download started.
    Getting {
        /// The file.
        file_id: FileId,
        /// What the store already held of it.
        resumed: Option<Resumed>,
    },
    /// A download was paused.
    Paused {
        /// The file.
        file_id: FileId,
    },
    /// A paused download goes on.
    Resumed {
        /// The file.
        file_id: FileId,
    },
    /// A file was removed: the peer neither serves nor fetches it any more.
    Removed {
        /// The file.
        file_id: FileId,
    },
}

/// What a peer's API serves.
#[derive(Clone, Debug)]
pub struct PeerApi {
    /// The peer.
    pub peer: Arc<PeerHandle>,
    /// The token changes need (`None`: no changes).
    pub token: Option<Token>,
    /// The events streamed at `/api/v1/events`, one JSON object each (`None`: no stream).
    pub events: Option<broadcast::Sender<Arc<str>>>,
    /// Where changes made through the API are told.
    pub jobs: Option<mpsc::UnboundedSender<Job>>,
}

/// Serves `api` on `listen`.
pub fn serve_peer(listen: SocketAddr, api: PeerApi) -> Result<HttpHandle, NetError> {
    let streams = Arc::new(Semaphore::new(EVENT_STREAMS_MAX));
    let state = web::Data::new(State { api, streams, changes: tokio::sync::Mutex::new(()) });
    start(listen, move |config| {
        config
            .app_data(state.clone())
            .route("/", web::get().to(|| async { pages::peer() }))
            .route("/metrics", web::get().to(metrics))
            .route("/api/v1/node", web::get().to(node))
            .route("/api/v1/files", web::get().to(files))
            .route("/api/v1/files/{id}", web::get().to(file))
            .route("/api/v1/files/{id}", web::delete().to(remove))
            .route("/api/v1/files/{id}/pause", web::post().to(pause))
            .route("/api/v1/files/{id}/resume", web::post().to(resume))
            .route("/api/v1/connections", web::get().to(connections))
            .route("/api/v1/shares", web::post().to(share))
            .route("/api/v1/downloads", web::post().to(download))
            .route("/api/v1/events", web::get().to(events));
    })
}

#[derive(Debug)]
struct State {
    api: PeerApi,
    /// Permits for event streams.
    streams: Arc<Semaphore>,
    /// Held by each change while it is made.
    changes: tokio::sync::Mutex<()>,
}

type Api = web::Data<State>;

/// One file in a listing.
#[derive(Debug, Serialize)]
struct FileJson {
    file_id: String,
    name: Option<String>,
    length_bytes: Option<u64>,
    state: &'static str,
    chunks_have: u32,
    chunks_total: u32,
    received_bytes: u64,
    sent_bytes: u64,
    download_bytes_per_s: u64,
    upload_bytes_per_s: u64,
}

/// One file with its chunks.
#[derive(Debug, Serialize)]
struct FileDetailJson {
    #[serde(flatten)]
    file: FileJson,
    path: Option<PathBuf>,
    chunks: Vec<ChunkJson>,
}

#[derive(Debug, Serialize)]
struct ChunkJson {
    index: u32,
    have: bool,
    /// Who sent it, when it came over the network in this run.
    from: Option<SocketAddr>,
}

impl FileJson {
    fn of(view: &FileView, seen: Option<&FileSeen>, now: Instant) -> FileJson {
        let state = match view.state {
            FileState::Downloading => "downloading",
            FileState::Paused => "paused",
            FileState::Finishing => "finishing",
            FileState::Failed => "failed",
            FileState::Serving if view.have.is_full() => "complete",
            FileState::Serving => "partial",
        };
        FileJson {
            file_id: view.file_id.to_string(),
            name: view.name.clone(),
            length_bytes: view.length_bytes,
            state,
            chunks_have: view.have.count(),
            chunks_total: view.have.len(),
            received_bytes: seen.map_or(0, |seen| seen.down.total_bytes),
            sent_bytes: seen.map_or(0, |seen| seen.up.total_bytes),
            download_bytes_per_s: seen.map_or(0, |seen| seen.down.bytes_per_s(now)),
            upload_bytes_per_s: seen.map_or(0, |seen| seen.up.bytes_per_s(now)),
        }
    }
}

async fn metrics(api: Api) -> HttpResponse {
    prometheus_text(api.api.peer.metrics().encode())
}

/// A `/metrics` answer.
pub(super) fn prometheus_text(text: String) -> HttpResponse {
    HttpResponse::Ok().content_type("application/openmetrics-text; version=1.0.0; charset=utf-8").body(text)
}

async fn node(api: Api) -> Result<HttpResponse, ApiError> {
    let peer = &api.api.peer;
    let (files, connections, rates) = peer
        .inspect(|view| {
            let now = Instant::now();
            let files = view.machine.file_views();
            let rates = files
                .iter()
                .filter_map(|file| view.watch.file(&file.file_id))
                .fold((0, 0), |(down, up), seen| (down + seen.down.bytes_per_s(now), up + seen.up.bytes_per_s(now)));
            (files.len(), view.machine.remote_views().len(), rates)
        })
        .await?;
    let metrics = peer.metrics();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "peer_id": peer.peer_id().to_string(),
        "listen": peer.addr(),
        "files": files,
        "connections": connections,
        "received_bytes": metrics.received_bytes.get(),
        "sent_bytes": metrics.sent_bytes.get(),
        "chunks_verified": metrics.chunks_verified.get(),
        "chunks_corrupt": metrics.chunks_corrupt.get(),
        "peers_banned": metrics.peers_banned.get(),
        "download_bytes_per_s": rates.0,
        "upload_bytes_per_s": rates.1,
    })))
}

async fn files(api: Api) -> Result<HttpResponse, ApiError> {
    let files = api
        .api
        .peer
        .inspect(|view| {
            let now = Instant::now();
            let files = view.machine.file_views();
            let listed = files.iter().take(FILES_LISTED_MAX);
            let json: Vec<FileJson> =
                listed.map(|file| FileJson::of(file, view.watch.file(&file.file_id), now)).collect();
            (json, files.len() > FILES_LISTED_MAX)
        })
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "files": files.0, "truncated": files.1 })))
}

async fn file(api: Api, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let peer = &api.api.peer;
    let file_id = known_file(peer, &id).await?;
    let detail = peer
        .inspect(move |view| {
            let file = view.machine.file_views().into_iter().find(|file| file.file_id == file_id)?;
            let seen = view.watch.file(&file_id);
            let sources = seen.map_or(&[][..], |seen| &seen.sources[..]);
            let chunks = (0..file.have.len())
                .map(|index| ChunkJson {
                    index,
                    have: file.have.has(ChunkIndex(index)),
                    from: sources.get(index as usize).copied().flatten(),
                })
                .collect();
            Some((FileJson::of(&file, seen, Instant::now()), chunks))
        })
        .await?;
    let (file, chunks) = detail.ok_or_else(|| no_such_file(&id))?;
    let path = peer.held_path(file_id);
    Ok(HttpResponse::Ok().json(FileDetailJson { file, path, chunks }))
}

/// The full id of the peer's file that `id` (64 hex digits or a unique prefix) names.
async fn known_file(peer: &PeerHandle, id: &str) -> Result<FileId, ApiError> {
    let prefix: FileIdPrefix = id.parse().map_err(|e| ApiError::bad_request(format!("{e}")))?;
    let resolved = peer
        .inspect(move |view| {
            let files = view.machine.file_views();
            prefix.resolve(files.iter().map(|file| &file.file_id))
        })
        .await?;
    resolved.map_err(|e| match e {
        p2p_core::IdError::UnknownPrefix(_) => no_such_file(id),
        other => ApiError::bad_request(format!("{other}")),
    })
}

fn no_such_file(id: &str) -> ApiError {
    ApiError::not_found(format!("this peer has no file {id}"))
}

#[derive(Debug, Serialize)]
struct ConnectionJson {
    conn: String,
    addr: SocketAddr,
    peer_id: Option<String>,
    ready: bool,
    download_bytes_per_s: u64,
    requests_in_flight: usize,
}

async fn connections(api: Api) -> Result<HttpResponse, ApiError> {
    let connections = api
        .api
        .peer
        .inspect(|view| {
            let remotes = view.machine.remote_views();
            let truncated = remotes.len() > PEERS_LISTED_MAX;
            let json: Vec<ConnectionJson> = remotes
                .into_iter()
                .take(PEERS_LISTED_MAX)
                .map(|remote| ConnectionJson {
                    conn: remote.conn.to_string(),
                    addr: remote.addr,
                    peer_id: remote.peer_id.map(|id| id.to_string()),
                    ready: remote.ready,
                    download_bytes_per_s: remote.download_bytes_per_s,
                    requests_in_flight: remote.requests_in_flight,
                })
                .collect();
            (json, truncated)
        })
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "connections": connections.0, "truncated": connections.1 })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareRequest {
    path: PathBuf,
    piece_size_bytes: Option<u32>,
}

async fn share(api: Api, request: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    authorize(&request, api.api.token.as_ref())?;
    let ShareRequest { path, piece_size_bytes } = json_body(body).await?;
    let _change = api.changes.lock().await;
    if !path.is_absolute() {
        return Err(ApiError::bad_request("the path to share must be absolute"));
    }
    let options = ShareOptions { piece_size_bytes, only_pieces: None };
    let manifest = api.api.peer.share(&path, options).await?;
    let answer = serde_json::json!({
        "file_id": manifest.file_id().to_string(),
        "name": manifest.name(),
        "pieces_total": manifest.piece_count(),
    });
    Ok(HttpResponse::Created().json(answer))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DownloadRequest {
    file_id: String,
    out: Option<PathBuf>,
}

async fn download(api: Api, request: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    authorize(&request, api.api.token.as_ref())?;
    let DownloadRequest { file_id, out } = json_body(body).await?;
    let prefix: FileIdPrefix = file_id.parse().map_err(|e| ApiError::bad_request(format!("file_id: {e}")))?;
    if out.as_ref().is_some_and(|out| !out.is_absolute()) {
        return Err(ApiError::bad_request("the output folder must be an absolute path"));
    }
    let _change = api.changes.lock().await;
    let peer = &api.api.peer;
    let file_id = peer.resolve(&prefix).await?;
    if let Some(out) = &out {
        peer.set_out(file_id, out).await?;
    }
    if let Some(path) = peer.find_whole(file_id).await? {
        let answer = serde_json::json!({ "file_id": file_id.to_string(), "state": "complete", "path": path });
        return Ok(HttpResponse::Ok().json(answer));
    }
    let resumed = peer.get(file_id).await?;
    api.tell(Job::Getting { file_id, resumed });
    let answer = serde_json::json!({ "file_id": file_id.to_string(), "state": "downloading" });
    Ok(HttpResponse::build(StatusCode::ACCEPTED).json(answer))
}

async fn pause(api: Api, request: HttpRequest, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    authorize(&request, api.api.token.as_ref())?;
    let _change = api.changes.lock().await;
    let file_id = known_file(&api.api.peer, &id).await?;
    api.api.peer.pause(file_id).await?;
    api.tell(Job::Paused { file_id });
    Ok(HttpResponse::Ok().json(serde_json::json!({ "file_id": file_id.to_string(), "state": "paused" })))
}

async fn resume(api: Api, request: HttpRequest, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    authorize(&request, api.api.token.as_ref())?;
    let _change = api.changes.lock().await;
    let file_id = known_file(&api.api.peer, &id).await?;
    api.api.peer.resume(file_id).await?;
    api.tell(Job::Resumed { file_id });
    Ok(HttpResponse::Ok().json(serde_json::json!({ "file_id": file_id.to_string(), "state": "downloading" })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveQuery {
    /// Also delete a download's data in the store.
    #[serde(default)]
    delete_data: bool,
}

async fn remove(api: Api, request: HttpRequest, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    authorize(&request, api.api.token.as_ref())?;
    let query = web::Query::<RemoveQuery>::from_query(request.query_string())
        .map_err(|e| ApiError::bad_request(format!("malformed query: {e}")))?;
    let _change = api.changes.lock().await;
    let file_id = known_file(&api.api.peer, &id).await?;
    api.api.peer.remove(file_id, query.delete_data).await?;
    api.tell(Job::Removed { file_id });
    Ok(HttpResponse::Ok().json(serde_json::json!({ "file_id": file_id.to_string(), "state": "removed" })))
}

async fn events(api: Api) -> Result<HttpResponse, ApiError> {
    let sender = api.api.events.as_ref().ok_or_else(|| ApiError::not_found("this peer streams no events"))?;
    let permit = api.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, format!("{EVENT_STREAMS_MAX} event streams are open already"))
    })?;
    let receiver = sender.subscribe();
    let hello = futures_util::stream::iter([Ok::<_, Infallible>(Bytes::from_static(b": events follow\n\n"))]);
    let stream = futures_util::stream::unfold((receiver, permit), |(mut receiver, permit)| async move {
        let chunk = match receiver.recv().await {
            Ok(event) => format!("data: {event}\n\n"),
            Err(broadcast::error::RecvError::Lagged(missed)) => format!("event: lagged\ndata: {missed}\n\n"),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(Bytes::from(chunk)), (receiver, permit)))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(futures_util::StreamExt::chain(hello, stream)))
}

impl State {
    /// Tells the program of a change made through the API, if it listens.
    fn tell(&self, job: Job) {
        if let Some(jobs) = &self.api.jobs {
            // A program that stopped listening is stopping; the change is made all the same.
            jobs.send(job).ok();
        }
    }
}
