//! `p2p-bench transfer`: the transfer cases of issue 4, each run `--runs` times with real
//! processes on 127.0.0.1, summarised as medians next to the machine's SHA-256 ceiling.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;

use crate::aria2;
use crate::ceiling::{self, HashCeiling};
use crate::data::{self, TestFile};
use crate::report::{self, median, Table};
use crate::swarm::{self, SwarmPlan, SwarmRun, PIECE_BYTES};

const MIB: u64 = 1 << 20;
/// File size of every case with `--quick`.
const QUICK_SIZE_MIB: u64 = 32;
/// Bytes hashed in memory for the SHA-256 ceiling (`--quick`: 32 MiB).
const CEILING_BYTES: usize = 256 << 20;

/// Options of `p2p-bench transfer`.
#[derive(Debug)]
pub struct TransferOptions {
    /// Case names to run (default: all).
    pub cases: Option<Vec<String>>,
    /// Small files, to check the tool quickly.
    pub quick: bool,
    /// Runs per case; the table shows medians.
    pub runs: usize,
    /// May install aria2 with apt-get.
    pub install_peers: bool,
    /// Longest wait for one run's downloads.
    pub timeout: Duration,
    /// Markdown file to append the results to.
    pub write: Option<PathBuf>,
}

/// Who runs a case.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// p2p-node: `seeders` seeders (each a third of the pieces when `thirds`), `downloaders`
    /// downloaders started together.
    Swarm { seeders: usize, thirds: bool, downloaders: usize },
    /// aria2c over BitTorrent, 1 seeder → 1 downloader.
    Aria2,
}

/// One case of the table.
#[derive(Clone, Copy, Debug)]
struct Case {
    name: &'static str,
    what: &'static str,
    size_mib: u64,
    kind: Kind,
}

const fn swarm(name: &'static str, what: &'static str, size_mib: u64, seeders: usize, downloaders: usize) -> Case {
    Case { name, what, size_mib, kind: Kind::Swarm { seeders, thirds: false, downloaders } }
}

const CASES: [Case; 7] = [
    swarm("1to1-256m", "1 seeder → 1 downloader", 256, 1, 1),
    swarm("3to1-256m", "3 seeders → 1 downloader", 256, 3, 1),
    swarm("1to1-1g", "1 seeder → 1 downloader", 1024, 1, 1),
    swarm("3to1-1g", "3 seeders → 1 downloader", 1024, 3, 1),
    swarm("1to8-256m", "1 seeder → 8 downloaders started together", 256, 1, 8),
    Case {
        name: "thirds-1g",
        what: "3 seeders each holding a third → 1 downloader",
        size_mib: 1024,
        kind: Kind::Swarm { seeders: 3, thirds: true, downloaders: 1 },
    },
    Case { name: "aria2-256m", what: "aria2c BitTorrent, 1 seeder → 1 downloader", size_mib: 256, kind: Kind::Aria2 },
];

/// The outcome of every run of one case.
#[derive(Debug)]
struct CaseResult {
    case: Case,
    size_bytes: u64,
    runs: Vec<Result<SwarmRun, String>>,
}

/// Runs the selected cases and prints (and optionally appends) the table.
pub fn run(options: &TransferOptions, node_bin: &Path) -> anyhow::Result<()> {
    let cases = select(options)?;
    let aria2_ready = !cases.iter().any(|c| matches!(c.kind, Kind::Aria2)) || aria2::ready(options.install_peers);
    let temp = tempfile::Builder::new().prefix("p2p-bench-").tempdir()?;
    eprintln!("work dir {}", temp.path().display());
    let load_before = report::load_average();
    let ceiling = ceiling::measure(if options.quick { (QUICK_SIZE_MIB * MIB) as usize } else { CEILING_BYTES });
    eprintln!("{}", ceiling_note(&ceiling));
    let mut files: BTreeMap<u64, TestFile> = BTreeMap::new();
    let mut results = Vec::new();
    for case in cases {
        let size_bytes = if options.quick { QUICK_SIZE_MIB * MIB } else { case.size_mib * MIB };
        if matches!(case.kind, Kind::Aria2) && !aria2_ready {
            let reason = "aria2c not installed (run with --install-peers)".to_owned();
            println!("{reason}");
            results.push(CaseResult { case, size_bytes, runs: vec![Err(reason)] });
            continue;
        }
        let file = match files.entry(size_bytes) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let name = format!("test-{}m.bin", size_bytes / MIB);
                entry.insert(data::generate(temp.path(), &name, size_bytes, size_bytes)?)
            }
        };
        let runs = (0..options.runs).map(|i| run_once(options, node_bin, case, file, temp.path(), i)).collect();
        results.push(CaseResult { case, size_bytes, runs });
    }
    let table = summarise(&results);
    let mut notes = notes(options, &ceiling);
    notes.push(format!(
        "1-minute load average before / after: {load_before} / {} (the machine is shared; other work adds noise)",
        report::load_average()
    ));
    println!();
    for note in &notes {
        println!("{note}");
    }
    print!("{}", table.to_text());
    if let Some(path) = &options.write {
        report::append_markdown(path, "Transfer", &notes, &table)?;
    }
    Ok(())
}

fn select(options: &TransferOptions) -> anyhow::Result<Vec<Case>> {
    let Some(names) = &options.cases else { return Ok(CASES.to_vec()) };
    let mut chosen = Vec::new();
    for name in names {
        match CASES.iter().find(|case| case.name == name) {
            Some(case) => chosen.push(*case),
            None => {
                let known: Vec<&str> = CASES.iter().map(|case| case.name).collect();
                bail!("unknown case {name:?}; cases: {}", known.join(", "))
            }
        }
    }
    Ok(chosen)
}

/// One run of `case` in its own folder, removed afterwards.
fn run_once(
    options: &TransferOptions,
    node_bin: &Path,
    case: Case,
    file: &TestFile,
    temp: &Path,
    index: usize,
) -> Result<SwarmRun, String> {
    let work = temp.join(format!("{}-run{}", case.name, index + 1));
    let outcome = match case.kind {
        Kind::Swarm { seeders, thirds, downloaders } => {
            let seeders = seeder_pieces(file.size_bytes, seeders, thirds);
            let plan = SwarmPlan { node_bin, file, work: &work, seeders, downloaders, timeout: options.timeout };
            swarm::run(&plan)
        }
        Kind::Aria2 => aria2::run(file, &work, options.timeout),
    };
    // Downloaded copies are large; a folder that cannot be removed only costs disk space.
    std::fs::remove_dir_all(&work).ok();
    let outcome = outcome.map_err(|e| format!("{e:#}"));
    match &outcome {
        Ok(run) => {
            let walls: Vec<String> = run.downloaders.iter().map(|d| format!("{:.2}", d.wall_s)).collect();
            eprintln!("{} run {}: {} s", case.name, index + 1, walls.join(" "));
        }
        Err(reason) => eprintln!("{} run {} FAILED: {reason}", case.name, index + 1),
    }
    outcome
}

/// `--only-pieces` of each seeder: every piece, or consecutive thirds.
fn seeder_pieces(size_bytes: u64, seeders: usize, thirds: bool) -> Vec<Option<String>> {
    if !thirds {
        return vec![None; seeders];
    }
    let pieces = size_bytes.div_ceil(PIECE_BYTES);
    let bounds = [0, pieces / 3, pieces * 2 / 3, pieces];
    bounds.windows(2).map(|w| Some(format!("{}-{}", w[0], w[1] - 1))).collect()
}

fn ceiling_note(ceiling: &HashCeiling) -> String {
    let openssl = ceiling.openssl_mb_s.map_or("openssl not available".to_owned(), |mb_s| {
        format!("`openssl speed -evp sha256 -seconds 1` (16 KiB blocks): {mb_s:.0} MB/s")
    });
    format!(
        "SHA-256 ceiling, one core: sha2 crate {:.0} MB/s ({} MiB in memory, 1 MiB pieces); {openssl}",
        ceiling.sha2_mb_s,
        ceiling.sha2_bytes / MIB
    )
}

fn notes(options: &TransferOptions, ceiling: &HashCeiling) -> Vec<String> {
    vec![
        format!("command: `{}`", report::command_line()),
        format!(
            "{} run(s) per case, medians shown; {} cores; 127.0.0.1 only; piece size 1 MiB",
            options.runs,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        ceiling_note(ceiling),
        "wall: downloader spawn → its `complete` line (slowest downloader when several); \
         CPU (its system part in brackets) and peak RSS: the downloader process (max over \
         downloaders), from /proc"
            .to_owned(),
    ]
}

/// The table: one row per case, medians over the successful runs.
fn summarise(results: &[CaseResult]) -> Table {
    let mut table = Table::new(&[
        "case",
        "what",
        "size MiB",
        "runs ok",
        "wall s (median)",
        "each run s",
        "MiB/s",
        "dl CPU s (system)",
        "dl peak RSS MiB",
        "notes",
    ]);
    let swarm_1to1 = results.iter().find(|r| r.case.name == "1to1-256m").and_then(median_wall);
    for result in results {
        table.push(row(result, swarm_1to1));
    }
    table
}

/// The slowest downloader's wall time of each successful run.
fn walls(result: &CaseResult) -> Vec<f64> {
    let slowest = |run: &SwarmRun| run.downloaders.iter().map(|d| d.wall_s).fold(0.0, f64::max);
    result.runs.iter().filter_map(|run| run.as_ref().ok()).map(slowest).collect()
}

fn median_wall(result: &CaseResult) -> Option<f64> {
    median(&walls(result))
}

fn row(result: &CaseResult, swarm_1to1: Option<f64>) -> Vec<String> {
    let ok: Vec<&SwarmRun> = result.runs.iter().filter_map(|run| run.as_ref().ok()).collect();
    let size_mib = result.size_bytes as f64 / MIB as f64;
    let mut cells = vec![
        result.case.name.to_owned(),
        result.case.what.to_owned(),
        format!("{size_mib:.0}"),
        format!("{}/{}", ok.len(), result.runs.len()),
    ];
    let Some(wall) = median_wall(result) else {
        cells.extend(["-", "-", "-", "-", "-"].map(str::to_owned));
        cells.push(format!("FAILED: {}", failures(result).join("; ")));
        return cells;
    };
    let each: Vec<String> = walls(result).iter().map(|w| format!("{w:.2}")).collect();
    let max_of = |f: fn(&swarm::DownloaderRun) -> f64| {
        median(&ok.iter().map(|run| run.downloaders.iter().map(f).fold(0.0, f64::max)).collect::<Vec<_>>())
    };
    cells.push(format!("{wall:.2}"));
    cells.push(each.join(", "));
    cells.push(format!("{:.0}", size_mib / wall));
    let cpu = max_of(|d| d.cpu_s).unwrap_or(0.0);
    cells.push(format!("{cpu:.2} ({:.2})", max_of(|d| d.sys_s).unwrap_or(0.0)));
    cells.push(format!("{:.1}", max_of(|d| d.peak_rss_kib as f64 / 1024.0).unwrap_or(0.0)));
    cells.push(case_notes(result, &ok, wall, swarm_1to1));
    cells
}

fn failures(result: &CaseResult) -> Vec<String> {
    let failed = result.runs.iter().enumerate().filter_map(|(i, run)| run.as_ref().err().map(|e| (i, e)));
    failed.map(|(i, reason)| format!("run {} failed: {reason}", i + 1)).collect()
}

fn case_notes(result: &CaseResult, ok: &[&SwarmRun], wall: f64, swarm_1to1: Option<f64>) -> String {
    let mut notes = failures(result);
    let size = result.size_bytes as f64;
    match result.case.kind {
        Kind::Aria2 => match swarm_1to1 {
            Some(swarm) => notes.push(format!("aria2c / swarm 1to1-256m wall: {:.2}× (same run)", wall / swarm)),
            None => notes.push("no swarm 1to1-256m figure in this run to compare with".to_owned()),
        },
        Kind::Swarm { downloaders, .. } => {
            if downloaders > 1 {
                notes.push(format!("all {downloaders} downloaders completed in {} run(s)", ok.len()));
                for (i, run) in ok.iter().enumerate() {
                    let each: Vec<String> = run.downloaders.iter().map(|d| format!("{:.2}", d.wall_s)).collect();
                    notes.push(format!("run {} per downloader s: {}", i + 1, each.join(" ")));
                }
            }
            notes.push(received_note(ok, size));
            notes.push(seeder_note(ok, size));
            notes.push(rss_note(ok));
        }
    }
    notes.join("; ")
}

/// Each run's largest downloader peak RSS, to show the spread behind the median.
fn rss_note(ok: &[&SwarmRun]) -> String {
    let peaks: Vec<String> = ok
        .iter()
        .map(|run| run.downloaders.iter().map(|d| d.peak_rss_kib).max().unwrap_or(0))
        .map(|kib| format!("{:.1}", kib as f64 / 1024.0))
        .collect();
    format!("dl peak RSS MiB per run: {}", peaks.join(" "))
}

/// The most any downloader received (its own `downloaded` line) as a multiple of the file size.
fn received_note(ok: &[&SwarmRun], size: f64) -> String {
    let most = |run: &&SwarmRun| run.downloaders.iter().filter_map(|d| d.downloaded_bytes).max();
    let multiples: Vec<f64> = ok.iter().filter_map(most).map(|b| b as f64 / size).collect();
    let shown = median(&multiples).map_or("n/a".to_owned(), |m| format!("{m:.3}×"));
    format!("downloader received / file size (`downloaded` line, max): {shown}")
}

/// Seeders' uploads as multiples of the file size: their own `uploaded` line if printed, and
/// the kernel's count of their write() bytes (medians over runs).
fn seeder_note(ok: &[&SwarmRun], size: f64) -> String {
    let seeders = ok.first().map_or(0, |run| run.seeders.len());
    // The median over runs, then each run's figure.
    let multiple = |pick: fn(&swarm::SeederRun) -> Option<u64>, i: usize| {
        let values: Vec<f64> = ok.iter().filter_map(|run| pick(&run.seeders[i])).map(|b| b as f64 / size).collect();
        let each: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
        median(&values).map_or("n/a".to_owned(), |m| format!("{m:.2}× (runs {})", each.join(" ")))
    };
    let uploaded: Vec<String> = (0..seeders).map(|i| multiple(|s| s.uploaded_bytes, i)).collect();
    let sent: Vec<String> = (0..seeders).map(|i| multiple(|s| s.socket_bytes, i)).collect();
    let cpu: Vec<String> = (0..seeders)
        .map(|i| {
            format!("{:.2}", median(&ok.iter().map(|run| run.seeders[i].cpu_s).collect::<Vec<_>>()).unwrap_or(0.0))
        })
        .collect();
    format!(
        "seeder upload / file size: TCP bytes sent (ss -E) {}, own `uploaded` line {}; seeder CPU s: {}",
        sent.join(" "),
        uploaded.join(" "),
        cpu.join(" ")
    )
}
