//! Short client connections to a tracker, for tools: the check that an address is a tracker
//! (a peer's start-up), the list of known files (`p2p-node ls`, resolving a typed id prefix),
//! a file's manifest (a peer checking whether a download is already in its output folder).
//! A remote that is not a tracker (an HTTP server, a peer's port, silence) is named as such.
//!
//! The client runs the transport's handshake with the keys it is given (a tool's key pair may
//! be a new one each run; a private swarm's key is needed to get past the handshake), says
//! `Hello` as [`Role::Client`], so the tracker never lists it as a holder, asks its question,
//! reads the answer and closes. The whole exchange is bounded by a timeout.
//!
//! A peer with several trackers asks them in turn, hedged ([`first_answer`]): a tracker that
//! is down or silent costs at most [`TRACKER_HEDGE_DELAY`] while another answers, and one
//! that answers at once spares the others a connection.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use p2p_core::wire::{ErrorCode, FileSummary, Hello, Message, Role};
use p2p_core::{FileId, Manifest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::connection::FrameCodec;
use crate::error::NetError;
use crate::secure::{self, HandshakeError, Keys, SecureStream};

/// How long a whole client exchange may take.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`first_answer`] waits for a tracker's answer before it asks the next one too:
/// a tracker on a working network answers a client within a few round trips, so this is
/// rarely reached unless the tracker is silent, and it is short beside [`CLIENT_TIMEOUT`].
pub const TRACKER_HEDGE_DELAY: Duration = Duration::from_millis(300);
/// Messages a client reads while waiting for its answer before giving up.
const CLIENT_MESSAGES_MAX: usize = 16;
/// What an HTTP server is called in errors.
const HTTP_SERVER: &str = "this is an HTTP server, not a swarm node";
/// How long the HTTP probe of a silent remote may take.
const HTTP_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of an unexpected text answer quoted in an error.
const TEXT_SHOWN_BYTES_MAX: usize = 60;

/// The files the tracker at `tracker` knows, ordered by id, and whether the list was cut short.
pub async fn list_files(tracker: SocketAddr, keys: &Keys) -> Result<(Vec<FileSummary>, bool), NetError> {
    match tokio::time::timeout(CLIENT_TIMEOUT, list_files_now(tracker, keys)).await {
        Ok(result) => result,
        Err(_) => Err(silent(tracker).await),
    }
}

/// The manifest of `file_id` as the tracker at `tracker` knows it; `None` when it knows no such
/// file.
pub async fn locate_manifest(tracker: SocketAddr, keys: &Keys, file_id: FileId) -> Result<Option<Manifest>, NetError> {
    match tokio::time::timeout(CLIENT_TIMEOUT, locate_manifest_now(tracker, keys, file_id)).await {
        Ok(result) => result,
        Err(_) => Err(silent(tracker).await),
    }
}

/// Asks the trackers of `trackers` in turn, hedged: the next one is asked as soon as the one
/// before fails or has nothing, or after [`TRACKER_HEDGE_DELAY`] without an answer, so a
/// tracker that is down or silent delays the answer by at most that, and trackers that answer
/// at once are not asked beyond the first. Returns the first answer that has something
/// (`Some`) as soon as it comes; the questions still out are dropped and their connections
/// closed. `Ok(None)` when none had it and at least one answered; the error of the first
/// tracker (in the order given) when none answered. Errors of trackers that do not decide the
/// outcome go to the debug log.
pub async fn first_answer<T, F>(trackers: &[SocketAddr], ask: impl Fn(SocketAddr) -> F) -> Result<Option<T>, NetError>
where
    F: Future<Output = Result<Option<T>, NetError>>,
{
    let mut waiting = trackers.iter().copied().enumerate();
    let mut pending = FuturesUnordered::new();
    let mut errors = BTreeMap::new();
    let mut answered = false;
    loop {
        if pending.is_empty() {
            let Some((index, tracker)) = waiting.next() else { break };
            pending.push(tagged(index, ask(tracker)));
        }
        let more_waiting = waiting.len() > 0;
        tokio::select! {
            Some((index, result)) = pending.next() => match result {
                Ok(Some(answer)) => return Ok(Some(answer)),
                Ok(None) => answered = true,
                Err(e) => {
                    tracing::debug!("{e}");
                    errors.insert(index, e);
                }
            },
            () = tokio::time::sleep(TRACKER_HEDGE_DELAY), if more_waiting => {
                if let Some((index, tracker)) = waiting.next() {
                    pending.push(tagged(index, ask(tracker)));
                }
            }
        }
    }
    match errors.into_values().next() {
        Some(error) if !answered => Err(error),
        _ => Ok(None),
    }
}

/// `question`'s answer with the index of the tracker asked.
async fn tagged<T>(index: usize, question: impl Future<Output = T>) -> (usize, T) {
    (index, question.await)
}

/// Checks that `tracker` is a swarm tracker: it answers the handshake as one. Anything else
/// (nothing listening, an HTTP server, a peer's port, silence) is an error naming what it is.
pub async fn check_tracker(tracker: SocketAddr, keys: &Keys) -> Result<(), NetError> {
    match tokio::time::timeout(CLIENT_TIMEOUT, handshake(tracker, keys)).await {
        Ok(result) => result.map(drop),
        Err(_) => Err(silent(tracker).await),
    }
}

async fn list_files_now(tracker: SocketAddr, keys: &Keys) -> Result<(Vec<FileSummary>, bool), NetError> {
    ask(tracker, keys, Message::List, |answer| match answer {
        Message::Files { files, truncated } => Ok((files, truncated)),
        other => Err(other),
    })
    .await
}

async fn locate_manifest_now(tracker: SocketAddr, keys: &Keys, file_id: FileId) -> Result<Option<Manifest>, NetError> {
    ask(tracker, keys, Message::Locate { file_id, with_manifest: true }, |answer| match answer {
        Message::Located { file_id: located, manifest, .. } if located == file_id => Ok(manifest.map(|m| *m)),
        Message::Error { code: ErrorCode::UnknownFile, .. } => Ok(None),
        other => Err(other),
    })
    .await
}

/// Says `question` to the tracker at `tracker` after the handshakes and returns what `answer`
/// makes of the first message it takes (it hands back the others). An `Error` it does not
/// take is the tracker's refusal; other messages are skipped, up to a bound.
async fn ask<T>(
    tracker: SocketAddr,
    keys: &Keys,
    question: Message,
    answer: impl Fn(Message) -> Result<T, Message>,
) -> Result<T, NetError> {
    let mut framed = handshake(tracker, keys).await?;
    framed.send(&question).await.map_err(|e| protocol(tracker, format!("cannot send: {e}")))?;
    for _ in 0..CLIENT_MESSAGES_MAX {
        match framed.next().await.map(|message| message.map(&answer)) {
            Some(Ok(Ok(answer))) => return Ok(answer),
            Some(Ok(Err(Message::Error { detail, .. }))) => {
                return Err(protocol(tracker, format!("tracker refused: {detail}")))
            }
            Some(Ok(Err(_))) => continue,
            Some(Err(e)) => return Err(protocol(tracker, e.to_string())),
            None => break,
        }
    }
    Err(protocol(tracker, "closed the connection without an answer".into()))
}

/// Connects to `tracker`, runs the transport's handshake, says `Hello` as a client and waits
/// for the tracker's `Hello`.
async fn handshake(tracker: SocketAddr, keys: &Keys) -> Result<Framed<SecureStream, FrameCodec>, NetError> {
    let stream = TcpStream::connect(tracker).await.map_err(NetError::socket("connect to", tracker))?;
    let stream = secure::connect(stream, keys).await.map_err(|e| match e {
        HandshakeError::NotSwarm { answer } => protocol(tracker, not_swarm(&answer, "not a swarm handshake")),
        HandshakeError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            protocol(tracker, "closed the connection during the handshake: not a swarm tracker".into())
        }
        other => protocol(tracker, other.to_string()),
    })?;
    let mut framed = Framed::new(stream, FrameCodec::default());
    let hello = Hello::new(Role::Client, keys.identity.peer_id(), 0);
    framed.send(&Message::Hello(hello)).await.map_err(|e| protocol(tracker, format!("cannot send: {e}")))?;
    for _ in 0..CLIENT_MESSAGES_MAX {
        match framed.next().await {
            Some(Ok(Message::Hello(hello))) if hello.role == Role::Tracker => return Ok(framed),
            Some(Ok(Message::Hello(hello))) => {
                let role = format!("{:?}", hello.role).to_lowercase();
                return Err(protocol(tracker, format!("this is a swarm {role}, not a tracker")));
            }
            Some(Ok(Message::Error { detail, .. })) => {
                return Err(protocol(tracker, format!("refused the handshake: {detail}")))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(protocol(tracker, e.to_string())),
            None => break,
        }
    }
    Err(protocol(tracker, "closed the connection without a swarm handshake: not a swarm tracker".into()))
}

/// Names a remote that answered bytes the swarm protocol cannot read: an HTTP server by its
/// status line, any other text by its first line, else the decoding error.
fn not_swarm(answer: &[u8], error: &str) -> String {
    if answer.starts_with(b"HTTP/") {
        return HTTP_SERVER.into();
    }
    let first_line = answer.split(|byte| *byte == b'\n').next().unwrap_or_default();
    let shown = &first_line[..first_line.len().min(TEXT_SHOWN_BYTES_MAX)];
    if !shown.is_empty() && shown.iter().all(|byte| byte.is_ascii_graphic() || *byte == b' ' || *byte == b'\r') {
        let text = String::from_utf8_lossy(shown);
        return format!("answered with text ({:?}), not the swarm protocol", text.trim_end());
    }
    format!("does not speak the swarm protocol ({error})")
}

fn protocol(addr: SocketAddr, reason: String) -> NetError {
    NetError::Protocol { addr, reason }
}

/// The error for a remote that did not answer the handshake in time. Some HTTP servers wait
/// for a line ending that the handshake never sends: those are recognised by a second
/// connection that asks them in HTTP (a tracker closes it as a bad frame).
async fn silent(addr: SocketAddr) -> NetError {
    let probe = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"HEAD / HTTP/1.0\r\n\r\n").await.ok()?;
        let mut answer = [0u8; 5];
        stream.read_exact(&mut answer).await.ok()?;
        Some(answer)
    };
    match tokio::time::timeout(HTTP_PROBE_TIMEOUT, probe).await {
        Ok(Some(answer)) if answer.starts_with(b"HTTP/") => protocol(addr, HTTP_SERVER.into()),
        _ => {
            protocol(addr, format!("no swarm handshake within {CLIENT_TIMEOUT:?}: not a swarm tracker, or overloaded"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn trackers(count: u16) -> Vec<SocketAddr> {
        (1..=count).map(|port| SocketAddr::from(([127, 0, 0, 1], port))).collect()
    }

    fn refused(tracker: SocketAddr) -> NetError {
        protocol(tracker, "refused".into())
    }

    #[tokio::test]
    async fn a_tracker_that_answers_at_once_spares_the_others_a_question() {
        let asked = Mutex::new(Vec::new());
        let answer = first_answer(&trackers(3), |tracker| {
            asked.lock().expect("not poisoned").push(tracker.port());
            async move { Ok(Some(tracker.port())) }
        })
        .await;
        assert_eq!(answer.ok(), Some(Some(1)));
        assert_eq!(*asked.lock().expect("not poisoned"), vec![1]);
    }

    #[tokio::test]
    async fn a_silent_tracker_holds_the_answer_up_only_until_the_next_is_asked() {
        let started = tokio::time::Instant::now();
        let answer = first_answer(&trackers(2), |tracker| async move {
            if tracker.port() == 1 {
                std::future::pending::<()>().await;
            }
            Ok(Some(tracker.port()))
        })
        .await;
        assert_eq!(answer.ok(), Some(Some(2)));
        assert!(started.elapsed() < CLIENT_TIMEOUT, "asked the second after {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn trackers_that_fail_or_know_nothing_are_followed_at_once_and_the_first_error_wins() {
        let asked = Mutex::new(Vec::new());
        let none_had_it = first_answer(&trackers(3), |tracker| {
            asked.lock().expect("not poisoned").push(tracker.port());
            async move {
                match tracker.port() {
                    1 => Err(refused(tracker)),
                    2 => Ok(None::<u16>),
                    _ => Ok(Some(3)),
                }
            }
        })
        .await;
        assert_eq!(none_had_it.ok(), Some(Some(3)));
        assert_eq!(*asked.lock().expect("not poisoned"), vec![1, 2, 3]);

        let two = trackers(2);
        let all_down = first_answer(&two, |tracker| async move { Err::<Option<u16>, _>(refused(tracker)) });
        let error = all_down.await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("127.0.0.1:1"), "{error}");
        let one_answered = first_answer(&two, |tracker| async move {
            if tracker.port() == 1 {
                Ok(None::<u16>)
            } else {
                Err(refused(tracker))
            }
        });
        assert_eq!(one_answered.await.ok(), Some(None));
    }
}
