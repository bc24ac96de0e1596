//! The live web pages: plain HTML, CSS and JavaScript embedded in the binary (no build step),
//! reading the same JSON API a script would. Each page is assembled once from its HTML and the
//! shared style and script.

use std::sync::OnceLock;

use actix_web::HttpResponse;

const STYLE: &str = include_str!("pages/style.css");
const COMMON: &str = include_str!("pages/common.js");

/// The tracker's page: every file as a piece map (holders per piece), and the peers.
pub(super) fn tracker() -> HttpResponse {
    static PAGE: OnceLock<String> = OnceLock::new();
    html(PAGE.get_or_init(|| assemble(include_str!("pages/tracker.html"))))
}

/// The peer's page: downloads and shares with their pieces and rates, a form to add a
/// download, and the event stream.
pub(super) fn peer() -> HttpResponse {
    static PAGE: OnceLock<String> = OnceLock::new();
    html(PAGE.get_or_init(|| assemble(include_str!("pages/peer.html"))))
}

fn assemble(page: &str) -> String {
    page.replace("/*STYLE*/", STYLE).replace("/*COMMON*/", COMMON)
}

fn html(page: &'static str) -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(page)
}
