//! The HTTP API of running nodes, from outside: a download added over the API completes with a
//! byte-identical file and the `/metrics` counters agree with the `downloaded` line; changes
//! without the token are refused and change nothing; bad requests get clear 4xx answers; a
//! paused download stops, resumes and completes, and a removed file is forgotten by the peer and
//! the tracker; and `p2p-node ctl` drives a peer the same way.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{
    assert_same_file, path_str, random_file, run_node, subdir, temp_dir, Node, DOWNLOAD_TIMEOUT, STARTUP_TIMEOUT,
};
use serde_json::{json, Value};

const PIECE_BYTES: usize = 64 * 1024;
const FILE_BYTES: usize = PIECE_BYTES * 20 + 1234;
/// Pieces of 64 KiB go in four chunks of 16 KiB; the last piece is one short chunk.
const CHUNK_COUNT: u64 = 20 * 4 + 1;

/// A tracker and a seeder of one file, and a peer with the HTTP API that wants nothing yet.
struct Swarm {
    _dir: tempfile::TempDir,
    original: std::path::PathBuf,
    out: std::path::PathBuf,
    file_id: String,
    _tracker: Node,
    tracker_http: SocketAddr,
    seeder: Node,
    peer: Node,
    peer_http: SocketAddr,
    token: String,
}

impl Swarm {
    fn start() -> Swarm {
        Swarm::start_with_seeder(&[])
    }

    /// The swarm, with `seeder_extra` on the seeder's command line.
    fn start_with_seeder(seeder_extra: &[&str]) -> Swarm {
        let dir = temp_dir();
        let original = random_file(dir.path(), "data.bin", FILE_BYTES, 14);
        let mut tracker = Node::spawn("tracker", &["tracker", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
        let tracker_addr = tracker.listening_addr();
        let tracker_http = tracker.http_addr();
        let piece_size = PIECE_BYTES.to_string();
        let mut seeder_args = vec!["--share", path_str(&original), "--piece-size", &piece_size];
        seeder_args.extend_from_slice(seeder_extra);
        let mut seeder = Node::peer("seeder", tracker_addr, &subdir(dir.path(), "seeder"), &seeder_args);
        let file_id = seeder.wait_sharing().file_id;
        let store = subdir(dir.path(), "peer");
        let mut peer = Node::peer("peer", tracker_addr, &store, &["--http", "127.0.0.1:0", "--json"]);
        let peer_http = peer.http_addr();
        let token = std::fs::read_to_string(store.join("http-token")).expect("the token file in the store");
        let out = subdir(dir.path(), "out");
        Swarm { _dir: dir, original, out, file_id, _tracker: tracker, tracker_http, seeder, peer, peer_http, token }
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token.trim())
    }
}

#[test]
fn a_download_added_over_the_api_completes_byte_identical_and_metrics_match_the_cli() {
    let mut swarm = Swarm::start();
    let events = agent().get(&format!("http://{}/api/v1/events", swarm.peer_http)).call().expect("the event stream");
    let mut events = std::io::BufReader::new(events.into_reader());
    let body = json!({ "file_id": &swarm.file_id[..10], "out": path_str(&swarm.out) });
    let (status, answer) = post(swarm.peer_http, "downloads", Some(&swarm.bearer()), &body.to_string());
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["file_id"], swarm.file_id.as_str(), "the prefix was resolved: {answer}");

    let path = swarm.peer.wait_complete(&swarm.file_id, DOWNLOAD_TIMEOUT);
    let downloaded_bytes = swarm.peer.wait_downloaded(&swarm.file_id);
    assert_eq!(path, swarm.out.join("data.bin"), "into the folder the request named");
    assert_same_file(&path, &swarm.original);
    let json_line = swarm.peer.wait_for_line("{\"event\":\"downloaded\"", STARTUP_TIMEOUT);
    let json_line: Value = serde_json::from_str(&json_line).expect("--json prints JSON");
    assert_eq!(
        (json_line["file_id"].as_str(), json_line["bytes"].as_u64()),
        (Some(&swarm.file_id[..]), Some(downloaded_bytes))
    );
    let streamed = next_event(&mut events, "complete");
    assert_eq!(streamed["path"].as_str(), Some(path_str(&path)), "the stream tells what stdout tells");

    let metrics = prometheus_samples(&get_text(swarm.peer_http, "/metrics"));
    assert_eq!(metrics["swarm_received_bytes_total"], downloaded_bytes as f64, "{metrics:?}");
    assert_eq!(metrics["swarm_chunks_verified_total"], CHUNK_COUNT as f64);
    assert!(metrics["process_resident_memory_bytes"] > 0.0);

    let (status, file) = get(swarm.peer_http, &format!("/api/v1/files/{}", &swarm.file_id[..12]));
    assert_eq!(status, 200, "{file}");
    assert_eq!((file["state"].as_str(), file["chunks_have"].as_u64()), (Some("complete"), Some(CHUNK_COUNT)));
    let seeder = swarm.seeder.addr().to_string();
    let chunks = file["chunks"].as_array().expect("chunks");
    assert!(chunks.iter().all(|chunk| chunk["have"] == true && chunk["from"] == seeder.as_str()), "{file}");

    // The tracker hears of the new holder's chunks from its batched `Have`s.
    let tracked_path = format!("/api/v1/files/{}", swarm.file_id);
    let holds_all = |holder: &Value| holder["chunks"].as_array().map(Vec::len) == Some(CHUNK_COUNT as usize);
    let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        let (status, tracked) = get(swarm.tracker_http, &tracked_path);
        assert_eq!(status, 200, "{tracked}");
        let holders = tracked["holders"].as_array().expect("holders");
        if holders.len() == 2 && holders.iter().all(holds_all) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the seeder and the new holder, each with every piece: {tracked}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let tracker_metrics = prometheus_samples(&get_text(swarm.tracker_http, "/metrics"));
    assert_eq!(tracker_metrics["swarm_tracker_files"], 1.0);
    assert_eq!(tracker_metrics["swarm_tracker_holdings"], 2.0);
}

#[test]
fn a_change_without_the_token_is_refused_and_changes_nothing() {
    let swarm = Swarm::start();
    let download = json!({ "file_id": swarm.file_id }).to_string();
    let share = json!({ "path": path_str(&swarm.original) }).to_string();
    for authorization in [None, Some("Bearer wrong"), Some(swarm.token.trim())] {
        for (endpoint, body) in [("downloads", &download), ("shares", &share)] {
            let (status, answer) = post(swarm.peer_http, endpoint, authorization, body);
            assert_eq!(status, 401, "{endpoint} with {authorization:?}: {answer}");
            assert!(answer["error"].as_str().is_some_and(|error| error.contains("token")), "{answer}");
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let (_, files) = get(swarm.peer_http, "/api/v1/files");
    assert_eq!(files["files"], json!([]), "nothing was shared or downloaded");
    let (_, node) = get(swarm.peer_http, "/api/v1/node");
    assert!(!node.to_string().contains(swarm.token.trim()), "no answer carries the token");
    assert_eq!(std::fs::read_dir(&swarm.out).expect("out").count(), 0);
}

#[test]
fn malformed_json_unknown_ids_and_oversize_bodies_get_clear_4xx_answers() {
    let swarm = Swarm::start();
    let bearer = swarm.bearer();
    let cases = [
        ("malformed JSON", "downloads", "{\"file_id\": ".to_owned(), 400, "malformed JSON"),
        ("unknown field", "downloads", json!({ "file": "x" }).to_string(), 400, "unknown field"),
        ("not an id", "downloads", json!({ "file_id": "not-hex!" }).to_string(), 400, "file_id"),
        ("unknown id", "downloads", json!({ "file_id": "00000000" }).to_string(), 404, "no known file id"),
        ("relative path", "shares", json!({ "path": "data.bin" }).to_string(), 400, "absolute"),
        ("missing file", "shares", json!({ "path": "/nonexistent/x" }).to_string(), 400, "/nonexistent/x"),
        ("oversize body", "shares", format!("{{\"path\": \"{}\"}}", "a".repeat(100_000)), 413, "exceeds"),
    ];
    for (case, endpoint, body, status, message) in cases {
        let (got, answer) = post(swarm.peer_http, endpoint, Some(&bearer), &body);
        assert_eq!(got, status, "{case}: {answer}");
        let error = answer["error"].as_str().unwrap_or_else(|| panic!("{case}: no error message in {answer}"));
        assert!(error.contains(message), "{case}: {error:?} should say {message:?}");
    }
    for (path, status) in [("/api/v1/files/00000000", 404), ("/api/v1/files/zz", 400), ("/api/v2/files", 404)] {
        let (got, answer) = get(swarm.peer_http, path);
        assert_eq!(got, status, "{path}: {answer}");
        assert!(answer["error"].is_string(), "{path}: {answer}");
    }
    let (got, answer) = get(swarm.tracker_http, "/api/v1/files/00000000");
    assert_eq!(got, 404, "{answer}");
}

#[test]
fn ctl_lists_downloads_and_shares_through_a_running_peer() {
    let mut swarm = Swarm::start();
    let http = swarm.peer_http.to_string();
    let token_dir = temp_dir();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, &swarm.token).expect("write the token");

    let refused = run_node(&["ctl", "--http", &http, "get", &swarm.file_id], STARTUP_TIMEOUT);
    assert_eq!(refused.status.code(), Some(2), "a change without --token-file is bad usage");

    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", "--http", http.as_str(), "--token-file", path_str(&token_file)];
        all.extend_from_slice(args);
        run_node(&all, STARTUP_TIMEOUT)
    };
    let get = ctl(&["get", &swarm.file_id[..8], "--out", path_str(&swarm.out)]);
    assert_eq!(get.status.code(), Some(0), "{}", String::from_utf8_lossy(&get.stderr));
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), format!("downloading {}", swarm.file_id));
    let path = swarm.peer.wait_complete(&swarm.file_id, DOWNLOAD_TIMEOUT);
    assert_same_file(&path, &swarm.original);

    let ls = ctl(&["ls"]);
    let expected = format!("{} complete {CHUNK_COUNT}/{CHUNK_COUNT} data.bin", swarm.file_id);
    assert_eq!(String::from_utf8_lossy(&ls.stdout).trim(), expected);

    let unknown = ctl(&["get", "00000000"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("404"), "{unknown:?}");

    let other = random_file(token_dir.path(), "other.bin", 5000, 3);
    let share = ctl(&["share", path_str(&other)]);
    assert_eq!(share.status.code(), Some(0), "{}", String::from_utf8_lossy(&share.stderr));
    let shared = String::from_utf8_lossy(&share.stdout).into_owned();
    let other_id = shared.split_whitespace().nth(1).expect("shared FILE_ID NAME PIECES").to_owned();
    let line = swarm.peer.wait_for_line(&format!("sharing {other_id} other.bin "), STARTUP_TIMEOUT);
    assert!(line.ends_with(" 1"), "{line}");
}

#[test]
fn a_paused_download_stops_resumes_byte_identical_and_a_removed_file_is_forgotten() {
    // About 7 s for the whole file: time to pause it on the way.
    let swarm = Swarm::start_with_seeder(&["--upload-limit", "200000"]);
    let (http, bearer, id) = (swarm.peer_http, swarm.bearer(), swarm.file_id.as_str());
    let file_path = format!("/api/v1/files/{id}");
    let store = swarm.out.parent().expect("the test folder").join("peer");
    let start = |out: &std::path::Path| {
        let body = json!({ "file_id": id, "out": path_str(out) }).to_string();
        let (status, answer) = post(http, "downloads", Some(&bearer), &body);
        assert_eq!(status, 202, "{answer}");
    };
    let chunks_have = || get(http, &file_path).1["chunks_have"].as_u64().unwrap_or(0);

    // Paused, then removed with its data: nothing of it stays.
    start(&swarm.out);
    wait_until("two chunks", || chunks_have() >= 2);
    let (status, answer) = post(http, &format!("files/{}/pause", &id[..8]), Some(&bearer), "");
    assert_eq!((status, answer["state"].as_str()), (200, Some("paused")), "{answer}");
    let paused = stable_chunks(http, &file_path);
    assert!(paused < CHUNK_COUNT, "paused before the end: {paused}");
    let (status, answer) = delete(http, &format!("{file_path}?delete_data=true"), None);
    assert_eq!(status, 401, "a removal needs the token: {answer}");
    let (status, answer) = delete(http, &format!("{file_path}?delete_data=true"), Some(&bearer));
    assert_eq!((status, answer["state"].as_str()), (200, Some("removed")), "{answer}");
    assert_eq!(get(http, "/api/v1/files").1["files"], json!([]), "the peer no longer lists it");
    assert_eq!(get(http, &file_path).0, 404);
    let left: Vec<String> = std::fs::read_dir(&store)
        .expect("the store")
        .map(|entry| entry.expect("an entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(id))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "--delete-data leaves nothing of the download in the store");
    wait_for_holders(swarm.tracker_http, id, 1);

    // Fetched afresh elsewhere, paused and resumed: byte-identical.
    let out = subdir(swarm.out.parent().expect("the test folder"), "out2");
    start(&out);
    wait_until("a chunk", || chunks_have() >= 1);
    let (status, _) = post(http, &format!("files/{id}/pause"), Some(&bearer), "");
    assert_eq!(status, 200);
    let paused = stable_chunks(http, &file_path);
    assert!(paused < CHUNK_COUNT, "paused before the end: {paused}");
    let (status, answer) = post(http, &format!("files/{id}/pause"), Some(&bearer), "");
    assert_eq!(status, 409, "a paused download cannot be paused again: {answer}");
    let (status, answer) = post(http, &format!("files/{id}/resume"), Some(&bearer), "");
    assert_eq!((status, answer["state"].as_str()), (200, Some("downloading")), "{answer}");
    let mut peer = swarm.peer;
    let path = peer.wait_complete(id, DOWNLOAD_TIMEOUT);
    assert_eq!(path, out.join("data.bin"));
    assert_same_file(&path, &swarm.original);
    wait_for_holders(swarm.tracker_http, id, 2);

    // Removed once complete, through ctl: the peer and the tracker forget it; the file stays.
    let token_file = store.join("http-token");
    let rm = run_node(
        &["ctl", "--http", &http.to_string(), "--token-file", path_str(&token_file), "rm", &id[..10]],
        STARTUP_TIMEOUT,
    );
    assert_eq!(rm.status.code(), Some(0), "{}", String::from_utf8_lossy(&rm.stderr));
    assert_eq!(String::from_utf8_lossy(&rm.stdout).trim(), format!("removed {id}"));
    assert_eq!(get(http, "/api/v1/files").1["files"], json!([]));
    assert!(!store.join(format!("{id}.held")).exists(), "a restart would not serve it again");
    assert_same_file(&path, &swarm.original);
    wait_for_holders(swarm.tracker_http, id, 1);
}

/// Waits (bounded) until `done` holds.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + DOWNLOAD_TIMEOUT;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "waited too long for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The chunks a paused download holds once blocks already on their way have landed, checked
/// to stay the same for two seconds.
fn stable_chunks(http: SocketAddr, file_path: &str) -> u64 {
    std::thread::sleep(Duration::from_millis(500));
    let (_, before) = get(http, file_path);
    std::thread::sleep(Duration::from_secs(2));
    let (_, after) = get(http, file_path);
    assert_eq!(after["state"], "paused", "{after}");
    assert_eq!(before["chunks_have"], after["chunks_have"], "no progress while paused");
    after["chunks_have"].as_u64().unwrap_or(0)
}

/// Waits (bounded) until the tracker lists `count` holders of the file.
fn wait_for_holders(tracker_http: SocketAddr, file_id: &str, count: usize) {
    let path = format!("/api/v1/files/{file_id}");
    let holders = || get(tracker_http, &path).1["holders"].as_array().map_or(0, Vec::len);
    wait_until(&format!("{count} holders on the tracker"), || holders() == count);
}

/// The next server-sent event of `kind` on a stream.
fn next_event(stream: &mut impl std::io::BufRead, kind: &str) -> Value {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stream.read_line(&mut line).expect("the stream") > 0, "the stream ended before a {kind} event");
        let Some(data) = line.strip_prefix("data: ") else { continue };
        let event: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("not JSON: {data:?}: {e}"));
        if event["event"] == kind {
            return event;
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(STARTUP_TIMEOUT).build()
}

/// Status and JSON body of an answer (an error status included).
fn json_of(result: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("no answer: {e}"),
    };
    let status = response.status();
    (status, response.into_json().unwrap_or_else(|e| panic!("a {status} answer that is not JSON: {e}")))
}

fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    json_of(agent().get(&format!("http://{addr}{path}")).call())
}

fn get_text(addr: SocketAddr, path: &str) -> String {
    let response = agent().get(&format!("http://{addr}{path}")).call().expect("an answer");
    response.into_string().expect("text")
}

fn post(addr: SocketAddr, endpoint: &str, authorization: Option<&str>, body: &str) -> (u16, Value) {
    let mut request = agent().post(&format!("http://{addr}/api/v1/{endpoint}")).set("Content-Type", "application/json");
    if let Some(authorization) = authorization {
        request = request.set("Authorization", authorization);
    }
    json_of(request.send_string(body))
}

fn delete(addr: SocketAddr, path: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut request = agent().delete(&format!("http://{addr}{path}"));
    if let Some(authorization) = authorization {
        request = request.set("Authorization", authorization);
    }
    json_of(request.call())
}

/// The unlabelled samples of a Prometheus text exposition, checking every line's syntax:
/// `# HELP`, `# TYPE`, `# UNIT`, `# EOF`, or `name{labels} value`.
fn prometheus_samples(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let keyword = comment.split_whitespace().next().unwrap_or("");
            assert!(["HELP", "TYPE", "UNIT", "EOF"].contains(&keyword), "bad comment line {line:?}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
        let name = series.split('{').next().unwrap_or("");
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        assert!(!name.is_empty() && name.chars().all(valid), "bad metric name in {line:?}");
        assert!(series == name || series.ends_with('}'), "bad labels in {line:?}");
        if series == name {
            samples.insert(name.to_owned(), value);
        }
    }
    assert!(text.ends_with("# EOF\n"), "the exposition ends with # EOF");
    samples
}
