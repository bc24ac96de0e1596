//! One child process (`p2p-node` or `aria2c`) owned by the bench: its stdout lines with the
//! instant each arrived, the tail of its stderr for error messages, and a guard that kills it
//! by PID when dropped, so no case leaves a process behind.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// Lines of stderr kept for error messages.
const STDERR_TAIL_LINES: usize = 12;

/// A stdout line and when the bench read it.
#[derive(Clone, Debug)]
pub struct Line {
    /// When the line arrived (the child's stdout is line-buffered).
    pub at: Instant,
    /// The line without its newline.
    pub text: String,
}

/// A running child process, killed on drop.
#[derive(Debug)]
pub struct NodeProc {
    name: String,
    child: Child,
    /// When the process was spawned.
    pub started: Instant,
    lines: Receiver<Line>,
    seen: Vec<Line>,
    stdout_closed_at: Arc<Mutex<Option<Instant>>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl NodeProc {
    /// Spawns `program args...`, naming it `name` in messages.
    pub fn spawn(name: &str, program: &Path, args: &[String]) -> anyhow::Result<NodeProc> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        let started = Instant::now();
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("{name}: no stdout pipe"))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("{name}: no stderr pipe"))?;
        let (sender, lines) = mpsc::channel();
        let stdout_closed_at = Arc::new(Mutex::new(None));
        let closed_at = Arc::clone(&stdout_closed_at);
        thread::spawn(move || {
            for text in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(Line { at: Instant::now(), text }).is_err() {
                    return;
                }
            }
            if let Ok(mut closed_at) = closed_at.lock() {
                *closed_at = Some(Instant::now());
            }
        });
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = Arc::clone(&stderr_tail);
        thread::spawn(move || keep_tail(stderr, &tail));
        Ok(NodeProc { name: name.to_owned(), child, started, lines, seen: Vec::new(), stdout_closed_at, stderr_tail })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When the child's stdout reached end of file: the moment it exited, for a child that
    /// does not close stdout earlier.
    pub fn stdout_closed_at(&self) -> Option<Instant> {
        self.stdout_closed_at.lock().ok().and_then(|at| *at)
    }

    /// The first stdout line starting with `prefix`, waiting up to `timeout` for it.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<Line> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.seen.iter().find(|line| line.text.starts_with(prefix)) {
                return Ok(line.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    let state = self.describe_state();
                    bail!("{}: no `{prefix}` line within {timeout:?}{state}", self.name)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // The pipe closed: the process is exiting; give it a moment to be reapable.
                    thread::sleep(Duration::from_millis(100));
                    let state = self.describe_state();
                    bail!("{}: exited before printing `{prefix}`{state}", self.name)
                }
            }
        }
    }

    /// Every stdout line read so far (draining what has arrived) that starts with `prefix`.
    pub fn lines_with(&mut self, prefix: &str) -> Vec<Line> {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.iter().filter(|line| line.text.starts_with(prefix)).cloned().collect()
    }

    /// Waits up to `timeout` for the process to exit and reaps it.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().with_context(|| format!("waiting for {}", self.name))? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{}: still running after {timeout:?}{}", self.name, self.stderr_text());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM (by PID) and waits up to `timeout` for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = self.pid().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().context("cannot run kill")?;
        self.wait_exit(timeout)
    }

    /// Kills the process (SIGKILL by PID) and reaps it.
    pub fn kill(&mut self) {
        // Killing a process that exited in between fails harmlessly.
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// ", exit status …; stderr: …" for error messages.
    fn describe_state(&mut self) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => format!(" ({status})"),
            _ => String::new(),
        };
        format!("{status}{}", self.stderr_text())
    }

    fn stderr_text(&self) -> String {
        let tail = match self.stderr_tail.lock() {
            Ok(tail) => tail.iter().cloned().collect::<Vec<_>>().join(" | "),
            Err(_) => String::new(),
        };
        if tail.is_empty() {
            String::new()
        } else {
            format!("; stderr: {tail}")
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // Killing a process that exited in between fails harmlessly.
            self.child.kill().ok();
        }
        self.child.wait().ok();
    }
}

fn keep_tail(stderr: impl Read, tail: &Mutex<VecDeque<String>>) {
    for text in BufReader::new(stderr).lines().map_while(Result::ok) {
        let Ok(mut tail) = tail.lock() else { return };
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text);
    }
}
