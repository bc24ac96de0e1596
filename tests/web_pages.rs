//! The live web pages in a real browser (headless Chromium, `--dump-dom` and `--screenshot`):
//! the tracker's page shows the seed's A/B/C→D swarm (A, B, C a third of the pieces each),
//! every piece with one holder before D and two after, D among the holders; the peer's page form starts D's download. Screenshots are
//! kept under `target/tmp/browser/`.
//!
//! Needs `chromium` on PATH (`apt-get install -y chromium`; `.ci/run` installs it). Without it
//! the test says so and passes, except under CI (`CI` set), where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    assert_same_file, path_str, random_file, run_bounded, subdir, temp_dir, Node, DOWNLOAD_TIMEOUT, STARTUP_TIMEOUT,
};

const PIECE_BYTES: usize = 64 * 1024;
const PIECE_COUNT: usize = 48;
/// Slow enough that D takes several seconds (a third of the file from each holder), so a
/// screenshot catches its pieces arriving.
const UPLOAD_LIMIT_BYTES_PER_S: &str = "131072";
/// How long the browser lets a page's scripts run (virtual time) before dumping it.
const PAGE_SCRIPT_BUDGET_MS: &str = "3000";
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn the_tracker_page_shows_the_abcd_swarm_and_the_peer_page_form_starts_a_download() {
    let Some(browser) = chromium() else { return };
    let dir = temp_dir();
    let original = random_file(dir.path(), "abcd.bin", PIECE_BYTES * PIECE_COUNT, 7);
    let mut tracker = Node::spawn("tracker", &["tracker", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    let tracker_addr = tracker.listening_addr();
    let tracker_page = format!("http://{}/", tracker.http_addr());
    let piece_size = PIECE_BYTES.to_string();
    let mut holders = Vec::new();
    let mut file_id = String::new();
    for (name, pieces) in [("a", "0-15"), ("b", "16-31"), ("c", "32-47")] {
        let args = [
            "--share",
            path_str(&original),
            "--piece-size",
            &piece_size,
            "--only-pieces",
            pieces,
            "--upload-limit",
            UPLOAD_LIMIT_BYTES_PER_S,
        ];
        let mut holder = Node::peer(name, tracker_addr, &subdir(dir.path(), name), &args);
        file_id = holder.wait_sharing().file_id;
        holders.push(holder);
    }
    let d_store = subdir(dir.path(), "d");
    let mut d = Node::peer("d", tracker_addr, &d_store, &["--http", "127.0.0.1:0"]);
    let d_page = format!("http://{}/", d.http_addr());
    let shots = screenshots_dir();

    let before = browser.dump(&tracker_page);
    browser.screenshot(&tracker_page, &shots.join("tracker-before-d.png"));
    assert_eq!(holder_counts(&before), vec![1; PIECE_COUNT], "A, B, C hold one piece each:\n{before}");
    assert!(before.contains("abcd.bin") && before.contains(&file_id), "{before}");

    let token = std::fs::read_to_string(d_store.join("http-token")).expect("D's token");
    let form = format!("{d_page}#file_id={}&token={}&go=1", &file_id[..8], token.trim());
    let answered = browser.dump(&form);
    assert!(answered.contains("data-outcome=\"downloading\""), "the form started the download:\n{answered}");

    browser.screenshot(&tracker_page, &shots.join("tracker-d-arriving.png"));
    browser.screenshot(&d_page, &shots.join("peer-d-arriving.png"));
    let path = d.wait_complete(&file_id, DOWNLOAD_TIMEOUT);
    assert_same_file(&path, &original);

    let d_addr = d.addr().to_string();
    let after = wait_for_page(&browser, &tracker_page, |page| holder_counts(page) == vec![2; PIECE_COUNT]);
    assert!(after.contains(&d_addr), "D ({d_addr}) is named among the holders:\n{after}");
    browser.screenshot(&tracker_page, &shots.join("tracker-after-d.png"));
    let d_view = browser.dump(&d_page);
    assert!(d_view.contains("data-state=\"complete\""), "D's page shows the file complete:\n{d_view}");
    browser.screenshot(&d_page, &shots.join("peer-d-complete.png"));
}

/// Headless Chromium, if installed.
struct Browser {
    program: String,
    /// `--user-data-dir=` a fresh profile folder.
    profile_arg: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1000,700",
        ];
        args.push(&self.profile_arg);
        args.extend_from_slice(extra);
        args
    }

    /// The page's DOM once its scripts ran for a while.
    fn dump(&self, url: &str) -> String {
        let budget = format!("--virtual-time-budget={PAGE_SCRIPT_BUDGET_MS}");
        let output = run_bounded(&self.program, &self.args(&[&budget, "--dump-dom", url]), BROWSER_TIMEOUT);
        assert!(output.status.success(), "chromium failed on {url}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn screenshot(&self, url: &str, file: &Path) {
        let budget = format!("--virtual-time-budget={PAGE_SCRIPT_BUDGET_MS}");
        let shot = format!("--screenshot={}", file.display());
        run_bounded(&self.program, &self.args(&[&budget, &shot, url]), BROWSER_TIMEOUT);
        assert!(file.exists(), "no screenshot of {url} at {}", file.display());
    }
}

fn chromium() -> Option<Browser> {
    let found = Command::new("chromium").arg("--version").output().is_ok_and(|output| output.status.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "chromium is not installed (apt-get install -y chromium)");
        eprintln!("SKIPPED: chromium is not installed (apt-get install -y chromium)");
        return None;
    }
    let profile = temp_dir();
    let profile_arg = format!("--user-data-dir={}", profile.path().display());
    Some(Browser { program: "chromium".into(), profile_arg, _profile: profile })
}

/// The holder count of every piece on a tracker page, in piece order.
fn holder_counts(page: &str) -> Vec<u32> {
    page.split("data-holders=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().and_then(|n| n.parse().ok()).expect("a count"))
        .collect()
}

fn wait_for_page(browser: &Browser, url: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        let page = browser.dump(url);
        if ready(&page) {
            return page;
        }
        assert!(std::time::Instant::now() < deadline, "the page never got there:\n{page}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).expect("the screenshots folder");
    dir
}
