//! A tracker's API: its files with the holders of every piece, and its peers with their
//! addresses and last announce.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use p2p_core::tracker::{TrackedFile, ViewBounds};
use p2p_core::{FileIdPrefix, Time, Tracker};
use serde::Serialize;

use super::limits::{FILES_LISTED_MAX, HOLDERS_LISTED_MAX, PEERS_LISTED_MAX};
use super::peer::prometheus_text;
use super::{pages, start, ApiError, HttpHandle};
use crate::driver::DriverView;
use crate::error::NetError;
use crate::node::TrackerHandle;

/// Serves the API of `tracker` on `listen`. The tracker changes only through its peers, so
/// nothing here needs a token.
pub fn serve_tracker(listen: SocketAddr, tracker: Arc<TrackerHandle>) -> Result<HttpHandle, NetError> {
    let state = web::Data::from(tracker);
    start(listen, move |config| {
        config
            .app_data(state.clone())
            .route("/", web::get().to(|| async { pages::tracker() }))
            .route("/metrics", web::get().to(metrics))
            .route("/api/v1/files", web::get().to(files))
            .route("/api/v1/files/{id}", web::get().to(file))
            .route("/api/v1/peers", web::get().to(peers));
    })
}

type Api = web::Data<TrackerHandle>;

#[derive(Debug, Serialize)]
struct FileJson {
    file_id: String,
    name: String,
    length_bytes: u64,
    pieces_total: usize,
    holders_count: usize,
    holders_per_piece: Vec<u32>,
    /// Holders by address with the chunks each holds (only in one file's answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    holders: Option<Vec<HolderJson>>,
}

#[derive(Debug, Serialize)]
struct HolderJson {
    peer_id: String,
    addr: SocketAddr,
    /// The pieces it holds whole.
    pieces: Vec<u32>,
    chunks: Vec<u32>,
}

impl FileJson {
    fn of(file: TrackedFile, with_holders: bool) -> FileJson {
        let holders = with_holders.then(|| {
            let holders = file.holders.iter();
            holders
                .map(|(peer, have)| HolderJson {
                    peer_id: peer.peer_id.to_string(),
                    addr: peer.addr,
                    pieces: have.whole_groups(file.chunks_per_piece).collect(),
                    chunks: have.iter().map(|chunk| chunk.0).collect(),
                })
                .collect()
        });
        FileJson {
            file_id: file.file_id.to_string(),
            name: file.name,
            length_bytes: file.length_bytes,
            pieces_total: file.holders_per_piece.len(),
            holders_count: file.holders_count,
            holders_per_piece: file.holders_per_piece,
            holders,
        }
    }
}

const LISTING: ViewBounds = ViewBounds { files_max: FILES_LISTED_MAX, holders_max: 0, peers_max: 0 };

async fn metrics(tracker: Api) -> Result<HttpResponse, ApiError> {
    let counts = ViewBounds { files_max: 0, holders_max: 0, peers_max: 0 };
    let view = tracker.inspect(move |view| view.machine.view(counts)).await?;
    let metrics = tracker.metrics();
    let gauge = |count: usize| i64::try_from(count).unwrap_or(i64::MAX);
    metrics.tracker_files.set(gauge(view.files_count));
    metrics.tracker_peers.set(gauge(view.peers_count));
    metrics.tracker_holdings.set(gauge(view.holdings_count));
    Ok(prometheus_text(metrics.encode()))
}

async fn files(tracker: Api) -> Result<HttpResponse, ApiError> {
    let view = tracker.inspect(|view| view.machine.view(LISTING)).await?;
    let truncated = view.files_count > view.files.len();
    let files: Vec<FileJson> = view.files.into_iter().map(|file| FileJson::of(file, false)).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "files": files, "truncated": truncated })))
}

async fn file(tracker: Api, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let prefix: FileIdPrefix = id.parse().map_err(|e| ApiError::bad_request(format!("{e}")))?;
    let bounds = ViewBounds { holders_max: HOLDERS_LISTED_MAX, ..LISTING };
    let found = tracker
        .inspect(move |view: DriverView<'_, Tracker>| {
            let files = view.machine.view(bounds).files;
            let file_id = prefix.resolve(files.iter().map(|file| &file.file_id)).ok()?;
            files.into_iter().find(|file| file.file_id == file_id)
        })
        .await?;
    let file = found.ok_or_else(|| ApiError::not_found(format!("the tracker knows no file {id}")))?;
    Ok(HttpResponse::Ok().json(FileJson::of(file, true)))
}

#[derive(Debug, Serialize)]
struct PeerJson {
    peer_id: String,
    addr: SocketAddr,
    files_count: usize,
    last_announce_ms_ago: u64,
}

async fn peers(tracker: Api) -> Result<HttpResponse, ApiError> {
    let bounds = ViewBounds { files_max: 0, holders_max: 0, peers_max: PEERS_LISTED_MAX };
    let (view, now): (_, Time) = tracker.inspect(move |view| (view.machine.view(bounds), view.now)).await?;
    let peers: Vec<PeerJson> = view
        .peers
        .iter()
        .map(|peer| PeerJson {
            peer_id: peer.peer.peer_id.to_string(),
            addr: peer.peer.addr,
            files_count: peer.files_count,
            last_announce_ms_ago: u64::try_from(now.saturating_since(peer.announced_at).as_millis())
                .unwrap_or(u64::MAX),
        })
        .collect();
    let truncated = view.peers_count > peers.len();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "peers": peers, "truncated": truncated })))
}
