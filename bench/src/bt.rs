//! Just enough BitTorrent for the aria2c comparison: a bencode encoder, a single-file .torrent,
//! and an HTTP tracker on 127.0.0.1 that answers every announce with the compact list of the
//! other peers that announced (all taken to be on 127.0.0.1 at their `port` parameter).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::Context;
use sha1::{Digest, Sha1};

use crate::data;

/// Longest announce request read.
const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Interval the tracker asks peers to keep (they are stopped long before).
const ANNOUNCE_INTERVAL_S: i64 = 1800;

/// A bencoded value.
#[derive(Clone, Debug)]
pub enum Value {
    /// `i…e`
    Int(i64),
    /// `len:bytes`
    Bytes(Vec<u8>),
    /// `d…e`, keys in byte order (BTreeMap keeps them so).
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl Value {
    /// The bencoding of this value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(n) => out.extend_from_slice(format!("i{n}e").as_bytes()),
            Value::Bytes(bytes) => {
                out.extend_from_slice(format!("{}:", bytes.len()).as_bytes());
                out.extend_from_slice(bytes);
            }
            Value::Dict(map) => {
                out.push(b'd');
                for (key, value) in map {
                    Value::Bytes(key.clone()).encode_into(out);
                    value.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }
}

/// A dictionary from `(key, value)` pairs.
fn dict(entries: Vec<(&str, Value)>) -> Value {
    Value::Dict(entries.into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v)).collect())
}

/// The .torrent of the file at `path` (shown as `name`), cut into `piece_bytes` pieces.
pub fn torrent(path: &Path, name: &str, length: u64, piece_bytes: usize, announce: &str) -> anyhow::Result<Vec<u8>> {
    let mut pieces = Vec::new();
    data::for_each_piece(path, piece_bytes, |piece| pieces.extend_from_slice(&Sha1::digest(piece)))?;
    let length = i64::try_from(length).context("file too large for a torrent")?;
    let piece_length = i64::try_from(piece_bytes).context("piece too large")?;
    let info = dict(vec![
        ("length", Value::Int(length)),
        ("name", Value::Bytes(name.as_bytes().to_vec())),
        ("piece length", Value::Int(piece_length)),
        ("pieces", Value::Bytes(pieces)),
    ]);
    Ok(dict(vec![("announce", Value::Bytes(announce.as_bytes().to_vec())), ("info", info)]).encode())
}

/// A running HTTP tracker; stopped on drop.
#[derive(Debug)]
pub struct HttpTracker {
    /// `http://127.0.0.1:PORT/announce`
    pub url: String,
    /// Ports of the peers that announced, with their `left` parameter.
    peers: Arc<Mutex<BTreeMap<u16, u64>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl HttpTracker {
    /// Binds 127.0.0.1:0 and serves announces on a thread.
    pub fn start() -> anyhow::Result<HttpTracker> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind the HTTP tracker")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}/announce", listener.local_addr()?);
        let peers = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (peers2, stop2) = (Arc::clone(&peers), Arc::clone(&stop));
        let handle = thread::spawn(move || serve(&listener, &peers2, &stop2));
        Ok(HttpTracker { url, peers, stop, handle: Some(handle) })
    }

    /// Whether the peer listening on `port` announced with nothing left to download.
    pub fn has_seeder(&self, port: u16) -> bool {
        self.peers.lock().map(|peers| peers.get(&port) == Some(&0)).unwrap_or(false)
    }
}

impl Drop for HttpTracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle.join().ok();
        }
    }
}

fn serve(listener: &TcpListener, peers: &Mutex<BTreeMap<u16, u64>>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            // One bad request only costs that request.
            Ok((stream, _)) => drop(answer(stream, peers)),
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn answer(mut stream: TcpStream, peers: &Mutex<BTreeMap<u16, u64>>) -> anyhow::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let request = read_head(&mut stream)?;
    let query = request.split_whitespace().nth(1).and_then(|target| target.split_once('?')).map_or("", |(_, q)| q);
    let param = |name: &str| query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
    let port: u16 = param("port").context("announce without port")?.parse()?;
    let left: u64 = param("left").and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
    let others: Vec<u8> = {
        let mut peers = peers.lock().map_err(|_| anyhow::anyhow!("tracker state poisoned"))?;
        if param("event") == Some("stopped") {
            peers.remove(&port);
        } else {
            peers.insert(port, left);
        }
        peers.keys().filter(|&&p| p != port).flat_map(|p| [127, 0, 0, 1, (p >> 8) as u8, *p as u8]).collect()
    };
    let body = dict(vec![("interval", Value::Int(ANNOUNCE_INTERVAL_S)), ("peers", Value::Bytes(others))]).encode();
    let head = format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n", body.len());
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)?;
    Ok(())
}

/// The request head, up to the blank line.
fn read_head(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_BYTES_MAX {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bencode_sorts_keys_and_prefixes_lengths() {
        let value = dict(vec![("zz", Value::Int(-3)), ("a", Value::Bytes(b"xy".to_vec()))]);
        assert_eq!(value.encode(), b"d1:a2:xy2:zzi-3ee".to_vec());
    }
}
