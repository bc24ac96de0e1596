//! The command-line contract of docs/cli.md as outside scripts see it: exit code 2 for bad
//! usage, 1 for a job that failed (with a one-line message on stderr), 0 for success; `tracker`
//! prints the real port; `ls` lists what is shared.

mod common;

use std::net::TcpStream;
use std::process::Output;
use std::time::Duration;

use common::{path_str, random_file, run_node, stderr_of, subdir, temp_dir, unused_port, Node, STARTUP_TIMEOUT};

/// Bound on commands expected to fail or finish quickly.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn unknown_flag_or_subcommand_is_bad_usage() {
    let dir = temp_dir();
    let store = path_str(dir.path());
    assert_bad_usage(&["peer", "--tracker", "127.0.0.1:9", "--store", store, "--no-such-flag"]);
    assert_bad_usage(&["tracker", "--listen", "127.0.0.1:0", "--no-such-flag"]);
    assert_bad_usage(&["no-such-subcommand"]);
    assert_bad_usage(&[]);
}

#[test]
fn more_trackers_than_a_peer_keeps_is_bad_usage() {
    let dir = temp_dir();
    let mut args = vec!["peer", "--store", path_str(dir.path())];
    let max = p2p_core::limits::TRACKERS_PER_PEER_MAX;
    args.extend(std::iter::repeat_n(["--tracker", "127.0.0.1:9"], max + 1).flatten());
    assert_bad_usage(&args);
}

#[test]
fn malformed_only_pieces_is_bad_usage() {
    let dir = temp_dir();
    let file = random_file(dir.path(), "f.bin", 64 * 1024, 9);
    let (_tracker, tracker_addr) = Node::tracker();
    let tracker = tracker_addr.to_string();
    for list in ["1-", "a", "-"] {
        let store = subdir(dir.path(), "store");
        let args = [
            "peer",
            "--tracker",
            &tracker,
            "--listen",
            "127.0.0.1:0",
            "--store",
            path_str(&store),
            "--share",
            path_str(&file),
            "--only-pieces",
            list,
            "--exit-when-done",
        ];
        assert_bad_usage(&args);
    }
}

#[test]
fn peer_without_store_is_bad_usage() {
    let dir = temp_dir();
    let file = random_file(dir.path(), "f.bin", 64 * 1024, 10);
    assert_bad_usage(&["peer", "--tracker", "127.0.0.1:9", "--share", path_str(&file)]);
}

#[test]
fn unreachable_tracker_fails_with_one_line_message() {
    let dir = temp_dir();
    let file = random_file(dir.path(), "f.bin", 64 * 1024, 11);
    let tracker = format!("127.0.0.1:{}", unused_port());
    let store = subdir(dir.path(), "store");
    let args = [
        "peer",
        "--tracker",
        &tracker,
        "--listen",
        "127.0.0.1:0",
        "--store",
        path_str(&store),
        "--share",
        path_str(&file),
    ];
    let output = run_node(&args, COMMAND_TIMEOUT);
    assert_job_failed(&args, &output);
}

#[test]
fn get_of_an_id_nobody_shares_fails() {
    let dir = temp_dir();
    let (_tracker, tracker_addr) = Node::tracker();
    let tracker = tracker_addr.to_string();
    let unknown_id = "5eed".repeat(16);
    let store = subdir(dir.path(), "store");
    let out = subdir(dir.path(), "out");
    let args = [
        "peer",
        "--tracker",
        &tracker,
        "--listen",
        "127.0.0.1:0",
        "--store",
        path_str(&store),
        "--out",
        path_str(&out),
        "--get",
        &unknown_id,
        "--exit-when-done",
    ];
    let output = run_node(&args, COMMAND_TIMEOUT);
    assert_job_failed(&args, &output);
}

#[test]
fn id_of_a_missing_file_fails() {
    let dir = temp_dir();
    let missing = dir.path().join("no-such-file.bin");
    let args = ["id", path_str(&missing)];
    let output = run_node(&args, COMMAND_TIMEOUT);
    assert_job_failed(&args, &output);
}

#[test]
fn ls_lists_a_shared_file_id() {
    let dir = temp_dir();
    let file = random_file(dir.path(), "listed.bin", 256 * 1024, 12);
    let (_tracker, tracker_addr) = Node::tracker();
    let mut seeder = Node::peer("seeder", tracker_addr, &subdir(dir.path(), "store"), &["--share", path_str(&file)]);
    let file_id = seeder.wait_sharing().file_id;

    let tracker = tracker_addr.to_string();
    let output = run_node(&["ls", "--tracker", &tracker], COMMAND_TIMEOUT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "ls exited with {}\n{stdout}{}", output.status, stderr_of(&output));
    assert!(stdout.contains(&file_id), "ls does not list the shared id {file_id}:\n{stdout}");
}

#[test]
fn tracker_on_port_zero_prints_the_real_port_and_accepts_connections() {
    let (mut tracker, addr) = Node::tracker();
    assert!(addr.ip().is_loopback(), "tracker listens on {addr}, not on 127.0.0.1");
    TcpStream::connect_timeout(&addr, STARTUP_TIMEOUT).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    assert!(tracker.is_running(), "tracker exited\n{}", tracker.report());
}

fn assert_bad_usage(args: &[&str]) {
    let output = run_node(args, COMMAND_TIMEOUT);
    assert_eq!(output.status.code(), Some(2), "p2p-node {args:?} should be bad usage (exit 2)\n{}", stderr_of(&output));
    assert!(!stderr_of(&output).trim().is_empty(), "p2p-node {args:?} exited 2 without saying why on stderr");
}

/// Exit code 1 and exactly one non-empty line on stderr.
fn assert_job_failed(args: &[&str], output: &Output) {
    let stderr = stderr_of(output);
    assert_eq!(output.status.code(), Some(1), "p2p-node {args:?} should fail with exit 1\nstderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "p2p-node {args:?} should explain the failure in one stderr line, got:\n{stderr}");
}

#[test]
fn completions_and_the_man_page_list_every_subcommand() {
    let subcommands = ["tracker", "peer", "id", "ls", "keygen", "swarm-key", "demo", "ctl", "completions", "man"];
    for shell in ["bash", "zsh", "fish"] {
        let output = run_node(&["completions", shell], COMMAND_TIMEOUT);
        assert!(output.status.success(), "completions {shell}: {}", stderr_of(&output));
        let script = String::from_utf8_lossy(&output.stdout);
        for word in subcommands.iter().chain(&["--exit-when-done", "--config"]) {
            let word = if shell == "fish" { word.trim_start_matches('-') } else { word };
            assert!(script.contains(word), "the {shell} script knows {word}");
        }
    }
    assert_bad_usage(&["completions", "no-such-shell"]);

    let output = run_node(&["man"], COMMAND_TIMEOUT);
    assert!(output.status.success(), "man: {}", stderr_of(&output));
    let page = String::from_utf8_lossy(&output.stdout);
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "a roff page: {}", &page[..page.len().min(200)]);
    assert!(page.contains(".TH p2p-node 1"), "section 1 page of p2p-node");
    for subcommand in subcommands {
        // roff writes a hyphen as `\-`.
        assert!(page.contains(&subcommand.replace('-', "\\-")), "the page lists {subcommand}");
    }
}

#[test]
fn a_config_file_sets_the_options_and_the_command_line_overrides_it() {
    let dir = temp_dir();
    let port = unused_port();
    let config = dir.path().join("tracker.toml");
    std::fs::write(&config, format!("listen = \"127.0.0.1:{port}\"\n")).expect("write the configuration");
    let mut tracker = Node::spawn("tracker (configured)", &["tracker", "--config", path_str(&config)]);
    assert_eq!(tracker.listening_addr().port(), port, "the file's --listen");
    let mut typed =
        Node::spawn("tracker (typed)", &["tracker", "--config", path_str(&config), "--listen", "127.0.0.1:0"]);
    assert_ne!(typed.listening_addr().port(), port, "the typed --listen wins");

    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nlisten-on = \"127.0.0.1:0\"\n").expect("write");
    let output = run_node(&["tracker", "--config", path_str(&config)], COMMAND_TIMEOUT);
    assert_eq!(output.status.code(), Some(2), "an unknown key is bad usage");
    assert!(stderr_of(&output).contains("unknown key `listen-on`"), "{}", stderr_of(&output));
}
