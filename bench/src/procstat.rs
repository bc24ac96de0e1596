//! A process's resource use read from `/proc`, without unsafe code.
//!
//! CPU time comes from `/proc/PID/stat` (utime + stime, and stime alone: time in the kernel,
//! which tells a run slowed by the host's memory or disk from one slowed by the program). A
//! child that has exited but is not reaped yet is a zombie whose `stat` still holds its final
//! CPU time, so the [`Watcher`] keeps sampling until it sees the zombie state and only then lets
//! the caller reap the child: the CPU figure is exact. Peak RSS is the kernel's own high-water
//! mark `VmHWM` from `/proc/PID/status`, polled every [`POLL_INTERVAL`]; it disappears when the
//! process tears its memory down, so the last reading (at most one interval before exit) is
//! kept.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often a [`Watcher`] samples its process.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// User + system CPU time so far, in clock ticks.
    pub cpu_ticks: u64,
    /// The system part of `cpu_ticks`.
    pub sys_ticks: u64,
    /// Peak resident set (`VmHWM`), KiB; absent once the process released its memory.
    pub hwm_kib: Option<u64>,
    /// Current resident set (`VmRSS`), KiB.
    pub rss_kib: Option<u64>,
    /// The process has exited and waits to be reaped.
    pub zombie: bool,
}

/// What a [`Watcher`] saw over a process's life.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcUsage {
    /// User + system CPU seconds (final when `exited`).
    pub cpu_s: f64,
    /// The system part of `cpu_s`.
    pub sys_s: f64,
    /// Highest `VmHWM` read, KiB.
    pub peak_rss_kib: u64,
    /// The watcher saw the process exit (so `cpu_s` is its final figure).
    pub exited: bool,
}

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`, else Linux's 100).
pub fn clock_ticks_per_s() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|&ticks| ticks > 0)
            .unwrap_or(100)
    })
}

/// Converts clock ticks to seconds.
pub fn ticks_to_s(ticks: u64) -> f64 {
    ticks as f64 / clock_ticks_per_s() as f64
}

/// Reads `pid` now; `None` when the process is gone (reaped) or `/proc` is unreadable.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (state, cpu_ticks, sys_ticks) = parse_stat(&stat)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    Some(ProcSample {
        cpu_ticks,
        sys_ticks,
        hwm_kib: status_kib(&status, "VmHWM:"),
        rss_kib: status_kib(&status, "VmRSS:"),
        zombie: state == 'Z' || state == 'X',
    })
}

/// CPU seconds this process (the bench itself) has used so far.
pub fn self_cpu_s() -> f64 {
    let ticks = fs::read_to_string("/proc/self/stat").ok().and_then(|stat| parse_stat(&stat)).map_or(0, |(_, t, _)| t);
    ticks_to_s(ticks)
}

/// State letter, utime + stime and stime from the text of `/proc/PID/stat`.
fn parse_stat(stat: &str) -> Option<(char, u64, u64)> {
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((state, utime + stime, stime))
}

/// A `Key:   123 kB` value of `/proc/PID/status`, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Samples one process on a thread until it exits (or is told to stop).
#[derive(Debug)]
pub struct Watcher {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<ProcUsage>,
}

impl Watcher {
    /// Starts watching `pid`, which should be a child of this process not yet reaped.
    pub fn start(pid: u32) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || watch(pid, &flag));
        Watcher { stop, handle }
    }

    /// Waits up to `timeout` for the process to exit, then returns what was seen. Reap the child
    /// only after this, or the final CPU reading is lost.
    pub fn finish(self, timeout: Duration) -> ProcUsage {
        let deadline = Instant::now() + timeout;
        while !self.handle.is_finished() && Instant::now() < deadline {
            thread::sleep(POLL_INTERVAL / 2);
        }
        self.stop.store(true, Ordering::Relaxed);
        // The thread only reads files and sleeps; a panic there is a bug worth surfacing.
        self.handle.join().expect("the /proc watcher thread does not panic")
    }
}

fn watch(pid: u32, stop: &AtomicBool) -> ProcUsage {
    let mut usage = ProcUsage::default();
    while !stop.load(Ordering::Relaxed) {
        let Some(now) = sample(pid) else { break };
        usage.cpu_s = ticks_to_s(now.cpu_ticks);
        usage.sys_s = ticks_to_s(now.sys_ticks);
        usage.peak_rss_kib = usage.peak_rss_kib.max(now.hwm_kib.unwrap_or(0));
        if now.zombie {
            usage.exited = true;
            break;
        }
        thread::sleep(POLL_INTERVAL);
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let stat = "42 (a (b) c) Z 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat(stat), Some(('Z', 280, 30)));
    }

    #[test]
    fn status_values_are_kib() {
        let status = "Name:\tx\nVmHWM:\t   2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(2048));
        assert_eq!(status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let me = sample(std::process::id()).expect("/proc/self is readable");
        assert!(!me.zombie);
        assert!(me.hwm_kib.unwrap_or(0) > 0);
    }
}
