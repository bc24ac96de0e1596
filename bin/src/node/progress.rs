//! Download progress for a person: an indicatif bar per file on stderr when stdout is a
//! terminal (pieces, rate, ETA, peers), plain `progress` lines on stdout otherwise (at most a few
//! per second per file, with the rate in binary units and the time left).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use p2p_core::FileId;

use crate::report;

/// Shortest interval between two plain progress lines of one file.
const PLAIN_LINE_INTERVAL: Duration = Duration::from_millis(500);

/// Progress display of every download of this run.
#[derive(Debug)]
pub struct Progress {
    bars: Option<MultiProgress>,
    files: BTreeMap<FileId, FileProgress>,
}

#[derive(Debug)]
struct FileProgress {
    bar: Option<ProgressBar>,
    started: Instant,
    start_have_bytes: u64,
    last_line: Option<Instant>,
}

impl Default for Progress {
    fn default() -> Progress {
        let terminal = std::io::stdout().is_terminal();
        let bars = terminal.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress { bars, files: BTreeMap::new() }
    }
}

impl Progress {
    /// The download of `file_id` starts now, with `have_bytes` already on disk.
    pub fn start(&mut self, file_id: FileId, have_bytes: u64) {
        let file = FileProgress { bar: None, started: Instant::now(), start_have_bytes: have_bytes, last_line: None };
        self.files.insert(file_id, file);
    }

    /// A piece of `file_id` was verified; `progress` is the download's state after it.
    pub fn piece(&mut self, file_id: FileId, progress: &p2p_core::Progress) {
        let Some(file) = self.files.get_mut(&file_id) else { return };
        if file.bar.is_none() {
            file.bar = self.bars.as_ref().map(|bars| bars.add(new_bar(file_id, progress.total)));
        }
        let elapsed = file.started.elapsed().as_secs_f64();
        let gained = progress.have_bytes.saturating_sub(file.start_have_bytes);
        let rate = if elapsed > 0.0 { gained as f64 / elapsed } else { 0.0 };
        // Whole bytes per second are precise enough for a display.
        let rate = rate as u64;
        match &file.bar {
            Some(bar) => {
                bar.set_position(u64::from(progress.have));
                bar.set_message(format!("{}/s, {}", HumanBytes(rate), report::count(progress.peers, "peer")));
            }
            None => {
                let due = file.last_line.is_none_or(|at| at.elapsed() >= PLAIN_LINE_INTERVAL);
                if due || progress.have == progress.total {
                    file.last_line = Some(Instant::now());
                    let left = time_left(progress, gained, elapsed);
                    report::progress(file_id, progress.have, progress.total, rate, progress.peers, left);
                }
            }
        }
    }

    /// The download of `file_id` ended; its bar is removed.
    pub fn finish(&mut self, file_id: FileId) {
        if let Some(bar) = self.files.remove(&file_id).and_then(|file| file.bar) {
            bar.finish_and_clear();
        }
    }
}

/// The time the rest of a download takes at the pace of this run so far: `gained` bytes in
/// `elapsed_s` seconds. The rest is counted in pieces of the average verified size.
fn time_left(progress: &p2p_core::Progress, gained: u64, elapsed_s: f64) -> Option<Duration> {
    if gained == 0 || progress.have == 0 {
        return None;
    }
    let piece_bytes = progress.have_bytes as f64 / f64::from(progress.have);
    let left_bytes = f64::from(progress.total - progress.have) * piece_bytes;
    Duration::try_from_secs_f64(left_bytes * elapsed_s / gained as f64).ok()
}

fn new_bar(file_id: FileId, total: u32) -> ProgressBar {
    let bar = ProgressBar::new(u64::from(total));
    // The template is a constant known to parse.
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} pieces {msg} ETA {eta}")
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(file_id.short());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_is_the_rest_at_this_runs_pace() {
        let progress = p2p_core::Progress { have: 4, total: 10, have_bytes: 4 << 20, peers: 1 };
        // 2 MiB gained in 2 s: 6 pieces of 1 MiB left take 6 s.
        assert_eq!(time_left(&progress, 2 << 20, 2.0), Some(Duration::from_secs(6)));
        assert_eq!(time_left(&progress, 0, 2.0), None, "nothing gained yet");
    }
}
