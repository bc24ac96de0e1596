//! Shared wiring for the black-box process tests.
//!
//! Every `p2p-node` a test starts is wrapped in a [`Node`]: its stdout is read line by line on a
//! thread, its stderr is kept (the last lines) for failure messages, and the process is killed by
//! its PID and reaped when the `Node` is dropped, so no process outlives a test, pass or fail.
//! Every wait here is bounded; a broken binary fails the test instead of hanging it.

#![allow(dead_code)] // Each test file uses a different part of these helpers.

pub mod wire;

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a test waits for a line that should come quickly (listening, sharing).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a test waits for a download that should take a few seconds.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a test waits for a process to exit once it should.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines of stderr kept per process for failure messages.
const STDERR_TAIL_LINES_MAX: usize = 40;

/// Lines of stdout kept per process (progress lines included).
const STDOUT_HISTORY_LINES_MAX: usize = 20_000;

/// Lines of stdout shown in a failure message.
const REPORT_LINES_MAX: usize = 60;

/// Polling step of the bounded waits that have nothing to block on (process exit, files).
const POLL_STEP: Duration = Duration::from_millis(20);

/// Path of the `p2p-node` binary under test.
pub fn node_bin() -> &'static str {
    env!("CARGO_BIN_EXE_p2p-node")
}

/// Path of the `p2p-sim` binary under test.
pub fn sim_bin() -> &'static str {
    env!("CARGO_BIN_EXE_p2p-sim")
}

/// A running `p2p-node` process, killed and reaped on drop.
#[derive(Debug)]
pub struct Node {
    name: String,
    child: Child,
    lines: Receiver<String>,
    history: VecDeque<SeenLine>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    exit_status: Option<ExitStatus>,
    listen_addr: Option<SocketAddr>,
}

impl Node {
    /// Starts `p2p-node ARGS`; `name` only labels failure messages.
    pub fn spawn(name: &str, args: &[&str]) -> Node {
        let mut child = piped(node_bin(), args)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {} {args:?}: {e}", node_bin()));
        let stdout = child.stdout.take().expect("stdout was piped");
        let stderr = child.stderr.take().expect("stderr was piped");
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = Arc::clone(&stderr_tail);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut tail = tail.lock().expect("stderr tail lock");
                if tail.len() == STDERR_TAIL_LINES_MAX {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        Node {
            name: name.to_owned(),
            child,
            lines,
            history: VecDeque::new(),
            stderr_tail,
            exit_status: None,
            listen_addr: None,
        }
    }

    /// Starts a tracker on 127.0.0.1 port 0 and returns it with the address it really listens on.
    pub fn tracker() -> (Node, SocketAddr) {
        Node::tracker_on("127.0.0.1:0")
    }

    /// Starts a tracker with `--listen LISTEN` and returns it with the address it really
    /// listens on.
    pub fn tracker_on(listen: &str) -> (Node, SocketAddr) {
        let mut tracker = Node::spawn("tracker", &["tracker", "--listen", listen]);
        let addr = tracker.listening_addr();
        (tracker, addr)
    }

    /// Starts `p2p-node peer --tracker TRACKER --listen 127.0.0.1:0 --store STORE EXTRA...` and
    /// waits for its `listening on` line.
    pub fn peer(name: &str, tracker: SocketAddr, store: &Path, extra: &[&str]) -> Node {
        Node::peer_on(name, &[tracker], "127.0.0.1:0", store, extra)
    }

    /// Starts `p2p-node peer --tracker T1 --tracker T2 ... --listen LISTEN --store STORE
    /// EXTRA...` and waits for its `listening on` line.
    pub fn peer_on(name: &str, trackers: &[SocketAddr], listen: &str, store: &Path, extra: &[&str]) -> Node {
        let trackers: Vec<String> = trackers.iter().map(SocketAddr::to_string).collect();
        let mut args = vec!["peer"];
        for tracker in &trackers {
            args.extend_from_slice(&["--tracker", tracker]);
        }
        args.extend_from_slice(&["--listen", listen, "--store", path_str(store)]);
        args.extend_from_slice(extra);
        let mut peer = Node::spawn(name, &args);
        peer.listening_addr();
        peer
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line starting with `prefix` and returns it. Lines are matched in the
    /// order printed, each at most once, whatever was awaited before: a line printed before an
    /// earlier awaited one is still found. Panics on timeout or when stdout closes first.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> String {
        if let Some(line) = self.take_unmatched(prefix) {
            return line;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let matched = line.starts_with(prefix);
                    self.remember(line.clone(), matched);
                    if matched {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let report = self.report();
                    panic!("{}: no line starting with {prefix:?} within {timeout:?}\n{report}", self.name)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(EXIT_TIMEOUT);
                    let report = self.report();
                    panic!("{}: stdout closed ({status}) before a line starting with {prefix:?}\n{report}", self.name)
                }
            }
        }
    }

    /// Waits for `listening on ADDR` and returns ADDR, checking the port is a real one.
    pub fn listening_addr(&mut self) -> SocketAddr {
        let line = self.wait_for_line("listening on ", STARTUP_TIMEOUT);
        let addr: SocketAddr = line["listening on ".len()..]
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: bad address in {line:?}: {e}", self.name));
        assert_ne!(addr.port(), 0, "{}: printed port 0 instead of the real port: {line:?}", self.name);
        self.listen_addr = Some(addr);
        addr
    }

    /// The address from the `listening on` line already awaited.
    pub fn addr(&self) -> SocketAddr {
        self.listen_addr.unwrap_or_else(|| panic!("{}: `listening on` was not awaited yet", self.name))
    }

    /// Waits for `http on ADDR` (a node started with `--http`) and returns ADDR.
    pub fn http_addr(&mut self) -> SocketAddr {
        let line = self.wait_for_line("http on ", STARTUP_TIMEOUT);
        let addr = line["http on ".len()..].trim();
        addr.parse().unwrap_or_else(|e| panic!("{}: bad address in {line:?}: {e}", self.name))
    }

    /// Waits for `sharing FILE_ID NAME PIECES` and returns it parsed.
    pub fn wait_sharing(&mut self) -> Sharing {
        let line = self.wait_for_line("sharing ", STARTUP_TIMEOUT);
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(fields.len() >= 4, "{}: malformed sharing line {line:?}", self.name);
        assert_file_id(fields[1], &line);
        Sharing { file_id: fields[1].to_owned(), name: fields[2].to_owned(), pieces: fields[3].to_owned() }
    }

    /// Waits for `complete FILE_ID PATH` for `file_id` and returns PATH.
    pub fn wait_complete(&mut self, file_id: &str, timeout: Duration) -> PathBuf {
        let line = self.wait_for_line(&format!("complete {file_id} "), timeout);
        PathBuf::from(line.splitn(3, ' ').nth(2).expect("prefix had three fields").trim())
    }

    /// Waits for `downloaded FILE_ID BYTES` for `file_id` and returns BYTES.
    pub fn wait_downloaded(&mut self, file_id: &str) -> u64 {
        let line = self.wait_for_line(&format!("downloaded {file_id} "), STARTUP_TIMEOUT);
        let bytes = line.split_whitespace().nth(2).unwrap_or("");
        bytes.parse().unwrap_or_else(|e| panic!("{}: bad byte count in {line:?}: {e}", self.name))
    }

    /// Reads the stdout lines already printed, without waiting, and says whether one starts
    /// with `prefix` (now or earlier).
    pub fn has_printed(&mut self, prefix: &str) -> bool {
        while let Ok(line) = self.lines.try_recv() {
            self.remember(line, false);
        }
        self.history.iter().any(|seen| seen.line.starts_with(prefix))
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        if self.poll_exit().is_some() {
            return;
        }
        // SIGKILL by PID; the workspace forbids unsafe code, so not through libc::kill.
        let _ = self.child.kill();
        let _ = self.wait_exit(EXIT_TIMEOUT);
    }

    /// Sends SIGTERM (a graceful stop: the peer tells the tracker it leaves).
    pub fn terminate(&mut self) {
        self.signal("TERM");
    }

    /// Sends SIGINT, as Ctrl-C in a terminal does.
    pub fn interrupt(&mut self) {
        self.signal("INT");
    }

    /// Sends the signal `name` (as `kill -NAME` spells it) by PID, unless the process exited.
    fn signal(&mut self, name: &str) {
        if self.poll_exit().is_some() {
            return;
        }
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("run kill -{name}: {e}"));
        assert!(status.success() || self.poll_exit().is_some(), "{}: kill -{name} failed", self.name);
    }

    /// Waits until the process exits and returns its status; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let report = self.report();
                panic!("{}: still running after {timeout:?}; killed\n{report}", self.name);
            }
            thread::sleep(POLL_STEP);
        }
    }

    /// The last stdout and stderr lines, for failure messages.
    pub fn report(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.remember(line, false);
        }
        let skip = self.history.len().saturating_sub(REPORT_LINES_MAX);
        let stdout: Vec<&str> = self.history.iter().skip(skip).map(|seen| seen.line.as_str()).collect();
        let stderr = self.stderr_tail();
        format!("--- {} stdout ---\n{}\n--- {} stderr ---\n{}", self.name, stdout.join("\n"), self.name, stderr)
    }

    /// The last lines the process wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().expect("stderr tail lock");
        tail.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            self.exit_status = self.child.try_wait().expect("try_wait");
        }
        self.exit_status
    }

    fn take_unmatched(&mut self, prefix: &str) -> Option<String> {
        let seen = self.history.iter_mut().find(|seen| !seen.matched && seen.line.starts_with(prefix))?;
        seen.matched = true;
        Some(seen.line.clone())
    }

    fn remember(&mut self, line: String, matched: bool) {
        if self.history.len() == STDOUT_HISTORY_LINES_MAX {
            self.history.pop_front();
        }
        self.history.push_back(SeenLine { line, matched });
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.poll_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One stdout line, and whether a wait already returned it.
#[derive(Debug)]
struct SeenLine {
    line: String,
    matched: bool,
}

/// A parsed `sharing FILE_ID NAME PIECES` line.
#[derive(Debug, Clone)]
pub struct Sharing {
    /// The 64-hex-digit file id.
    pub file_id: String,
    /// The file name as announced.
    pub name: String,
    /// The PIECES field as printed.
    pub pieces: String,
}

/// Runs `p2p-node ARGS` to completion (bounded by `timeout`) and returns its output.
pub fn run_node(args: &[&str], timeout: Duration) -> Output {
    run_bounded(node_bin(), args, timeout)
}

/// `program args` with stdout and stderr piped, no stdin, and no inherited `RUST_LOG` (the
/// tests read stdout lines and must not get debug logs mixed into stderr).
/// A node the tests start keeps nothing outside the folders its arguments name: without
/// `XDG_STATE_HOME` and `HOME` a tracker makes a new key each run instead of writing one to the
/// user's state folder.
fn piped(program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args).env_remove("RUST_LOG").env_remove("XDG_STATE_HOME").env_remove("HOME");
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

/// Runs `PROGRAM ARGS` to completion, killing it and failing after `timeout`.
pub fn run_bounded(program: &str, args: &[&str], timeout: Duration) -> Output {
    let mut child = piped(program, args).spawn().unwrap_or_else(|e| panic!("cannot start {program} {args:?}: {e}"));
    let stdout = drain(child.stdout.take().expect("stdout was piped"));
    let stderr = drain(child.stderr.take().expect("stderr was piped"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            panic!("{program} {args:?} still running after {timeout:?}; killed\nstderr:\n{stderr}");
        }
        thread::sleep(POLL_STEP);
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    Output { status, stdout, stderr }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// `p2p-node id PATH [--piece-size BYTES]`: the FILE_ID it prints.
pub fn offline_file_id(path: &Path, piece_size_bytes: Option<u32>) -> String {
    let size = piece_size_bytes.map(|s| s.to_string());
    let mut args = vec!["id", path_str(path)];
    if let Some(size) = &size {
        args.extend_from_slice(&["--piece-size", size]);
    }
    let output = run_node(&args, EXIT_TIMEOUT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "p2p-node {args:?} failed: {}\n{stdout}{}", output.status, stderr_of(&output));
    let id = stdout.split_whitespace().next().unwrap_or("").to_owned();
    assert_file_id(&id, &stdout);
    id
}

/// A file of `len_bytes` pseudo-random bytes from `seed` (same seed, same bytes) in `dir`.
pub fn random_file(dir: &Path, name: &str, len_bytes: usize, seed: u64) -> PathBuf {
    let mut state = seed;
    let mut bytes = Vec::with_capacity(len_bytes + 8);
    while bytes.len() < len_bytes {
        bytes.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    bytes.truncate(len_bytes);
    let path = dir.join(name);
    fs::write(&path, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SHA-256 of a file's contents, as hex.
pub fn sha256_file(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    hex::encode(Sha256::digest(&bytes))
}

/// Asserts that `copy` has exactly the bytes of `original`.
pub fn assert_same_file(copy: &Path, original: &Path) {
    assert_eq!(sha256_file(copy), sha256_file(original), "{} differs from {}", copy.display(), original.display());
}

/// A fresh temporary directory.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::TempDir::new().expect("create a temporary directory")
}

/// A subdirectory `name` of `parent`, created.
pub fn subdir(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Whether this machine can listen on `::1`; the IPv6 tests skip, saying so, where it cannot.
pub fn has_ipv6_loopback() -> bool {
    let usable = TcpListener::bind("[::1]:0").is_ok();
    if !usable {
        eprintln!("skipped: this machine has no IPv6 loopback (::1)");
    }
    usable
}

/// A port on 127.0.0.1 that nobody listens on (bound, then released).
pub fn unused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Pieces a peer's store has verified so far, read from its `<id>.bitfield` files (a 4-byte
/// piece count, then one bit per piece); 0 while none is written. Only used to time a kill in the
/// middle of a download: what the peer itself reports is checked from its stdout.
pub fn store_pieces_verified(store: &Path) -> u32 {
    let Ok(entries) = fs::read_dir(store) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".bitfield"))
        .filter_map(|entry| fs::read(entry.path()).ok())
        .map(|bytes| bytes.iter().skip(4).map(|b| b.count_ones()).sum::<u32>())
        .sum()
}

/// Waits until `store` has at least `pieces` verified pieces, or `downloader` has completed,
/// or `timeout` passed; returns the count seen last.
pub fn wait_store_progress(store: &Path, downloader: &mut Node, pieces: u32, timeout: Duration) -> u32 {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = store_pieces_verified(store);
        if seen >= pieces || Instant::now() >= deadline || downloader.has_printed("complete ") {
            return seen;
        }
        assert!(downloader.is_running(), "downloader exited mid-download\n{}", downloader.report());
        thread::sleep(POLL_STEP);
    }
}

/// Panics unless `id` is 64 lowercase hex digits.
pub fn assert_file_id(id: &str, context: &str) {
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "expected a 64-hex-digit FILE_ID, got {id:?} in {context:?}"
    );
}

/// The stderr of a finished command, for failure messages.
pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A path as the `&str` a command line needs (temporary paths are UTF-8).
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}
