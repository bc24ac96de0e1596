//! The live web pages, plain HTML, CSS and JavaScript embedded in the binary: they read the
//! same JSON API a script would.

use actix_web::HttpResponse;

/// The tracker's page: every file as a piece map, and the peers.
pub(super) fn tracker() -> HttpResponse {
    html(include_str!("pages/tracker.html"))
}

/// The peer's page: downloads and shares with their pieces, and a form to add a download.
pub(super) fn peer() -> HttpResponse {
    html(include_str!("pages/peer.html"))
}

fn html(page: &'static str) -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(page)
}
