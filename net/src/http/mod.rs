//! The HTTP side of a running node: a versioned JSON API under `/api/v1/`, Prometheus text at
//! `/metrics`, a server-sent event stream, and a live web page at `/`, for a peer
//! ([`serve_peer`]) or a tracker ([`serve_tracker`]). `docs/api.md` is the reference.
//!
//! The server only reads and asks: every answer about the node comes from its driver actor
//! (see [`crate::driver::Inspect`]), every change goes through the node's handle, as the
//! command line's do. This module owns what is common to both: the error shape (`{"error":
//! "..."}` with the right status), the per-client rate limit, the body size limit, the bearer
//! token check, and starting and stopping the server. Bounds are in [`limits`].

pub mod auth;
pub mod limits;
mod pages;
mod peer;
mod tracker;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use actix_web::dev::{Service, ServiceRequest};
use actix_web::http::{header, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;

pub use auth::Token;
pub use peer::{serve_peer, Job, PeerApi};
pub use tracker::serve_tracker;

use crate::error::NetError;
use limits::{
    BODY_BYTES_MAX, HTTP_CONNECTIONS_MAX, RATE_CLIENTS_MAX, REQUESTS_BURST_PER_CLIENT, REQUESTS_PER_S_PER_CLIENT,
    SHUTDOWN_TIMEOUT,
};

/// A running HTTP server.
#[derive(Debug)]
pub struct HttpHandle {
    addr: SocketAddr,
    server: actix_web::dev::ServerHandle,
}

impl HttpHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server, waiting briefly for requests in progress.
    pub async fn stop(&self) {
        self.server.stop(true).await;
    }
}

/// Starts a server on `listen` whose routes `configure` adds; the rate limit and the JSON 404
/// for unknown paths wrap them. It runs on one worker thread and leaves signals to the program.
fn start(
    listen: SocketAddr,
    configure: impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
) -> Result<HttpHandle, NetError> {
    let listener = std::net::TcpListener::bind(listen).map_err(NetError::socket("listen on", listen))?;
    let addr = listener.local_addr().map_err(NetError::socket("inspect", listen))?;
    let limiter = Arc::new(RateLimiter::default());
    let server = actix_web::HttpServer::new(move || {
        let limiter = limiter.clone();
        App::new()
            .wrap_fn(move |request: ServiceRequest, service| {
                let client = request.peer_addr().map(|addr| addr.ip());
                let allowed = client.is_some_and(|ip| limiter.allow(ip, Instant::now()));
                let call = allowed.then(|| service.call(request));
                async move {
                    match call {
                        Some(call) => call.await,
                        None => {
                            Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too many requests; slow down").into())
                        }
                    }
                }
            })
            .configure(configure.clone())
            .default_service(web::to(|| async { ApiError::not_found("no such endpoint").error_response() }))
    })
    .workers(1)
    .max_connections(HTTP_CONNECTIONS_MAX)
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_TIMEOUT.as_secs())
    .listen(listener)
    .map_err(NetError::socket("serve HTTP on", addr))?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(HttpHandle { addr, server: handle })
}

/// An answer that is not a success: `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(serde_json::json!({ "error": self.message }))
    }
}

impl From<NetError> for ApiError {
    fn from(error: NetError) -> ApiError {
        let status = match &error {
            NetError::Resolve { error: p2p_core::IdError::UnknownPrefix(_), .. } => StatusCode::NOT_FOUND,
            NetError::Resolve { .. }
            | NetError::Io { .. }
            | NetError::Manifest { .. }
            | NetError::NoSuchPiece { .. }
            | NetError::Corrupt { .. } => StatusCode::BAD_REQUEST,
            NetError::Command(p2p_core::CommandError::UnknownFile) => StatusCode::NOT_FOUND,
            NetError::Command(_) | NetError::RemovalPending { .. } => StatusCode::CONFLICT,
            NetError::Socket { .. } | NetError::Protocol { .. } => StatusCode::BAD_GATEWAY,
            NetError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.to_string())
    }
}

/// Refuses a request whose `Authorization` header does not carry `token` (no token: every
/// change is refused).
fn authorize(request: &HttpRequest, token: Option<&Token>) -> Result<(), ApiError> {
    let header = request.headers().get(header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    match (token, header) {
        (Some(token), Some(header)) if token.authorizes(header) => Ok(()),
        (None, _) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "this node accepts no changes: it has no API token")),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer TOKEN)",
        )),
    }
}

/// Reads a JSON body of at most [`BODY_BYTES_MAX`] bytes into `T`.
async fn json_body<T: serde::de::DeserializeOwned>(mut payload: web::Payload) -> Result<T, ApiError> {
    let too_large = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body exceeds {BODY_BYTES_MAX} bytes"));
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            actix_web::error::PayloadError::Overflow => too_large(),
            other => ApiError::bad_request(format!("cannot read the body: {other}")),
        })?;
        if body.len() + chunk.len() > BODY_BYTES_MAX {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

/// A token bucket per client IP address.
#[derive(Debug, Default)]
struct RateLimiter {
    buckets: Mutex<BTreeMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// Whether `client` may make a request at `now` (and counts it).
    fn allow(&self, client: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let burst = f64::from(REQUESTS_BURST_PER_CLIENT);
        let refill = |bucket: &Bucket| {
            let earned = now.saturating_duration_since(bucket.at).as_secs_f64() * f64::from(REQUESTS_PER_S_PER_CLIENT);
            (bucket.tokens + earned).min(burst)
        };
        if buckets.len() >= RATE_CLIENTS_MAX && !buckets.contains_key(&client) {
            // Clients back to a full bucket are as good as new: forget them.
            buckets.retain(|_, bucket| refill(bucket) < burst);
            if buckets.len() >= RATE_CLIENTS_MAX {
                return false;
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = refill(bucket);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        let limiter = RateLimiter::default();
        let (a, b) = (IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2]));
        let start = Instant::now();
        let allowed = (0..REQUESTS_BURST_PER_CLIENT * 2).filter(|_| limiter.allow(a, start)).count();
        assert_eq!(allowed, REQUESTS_BURST_PER_CLIENT as usize);
        assert!(limiter.allow(b, start), "another client has its own bucket");
        let later = start + Duration::from_secs(1);
        let allowed = (0..REQUESTS_BURST_PER_CLIENT).filter(|_| limiter.allow(a, later)).count();
        assert_eq!(allowed, REQUESTS_PER_S_PER_CLIENT as usize);
    }
}
