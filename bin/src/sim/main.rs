//! `p2p-sim SCENARIO.toml [--seed N] [--trace FILE] [--svg FILE] [--driver actix|queue]`: runs a
//! scenario in virtual time and tells what happened (docs/cli.md), and draws it with `--svg`.
//!
//! Prints the story, a per-peer summary table, the efficiency against the scenario's lower
//! bound (`p2p_sim::efficiency`) and the expectation verdicts; the last line is always
//! `trace-digest HEX`. `p2p-sim --table A.toml B.toml …` instead runs every file (on the
//! event-queue driver unless `--driver` says otherwise) and prints one markdown row of
//! efficiency figures per scenario. Exit codes: 0 every expectation held, 1 one did not (or the
//! run could not be carried out), 2 bad usage (bad arguments, or a scenario file that does not
//! parse or validate).

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use p2p_sim::efficiency::{self, EfficiencyReport, TableRow, TABLE_HEADER};
use p2p_sim::{check, run_actix, run_queue, Outcome, Scenario, SummaryTable, Verdict};

/// Run a swarm scenario in virtual time.
///
/// It runs the real tracker and peer state machines on a seeded
/// virtual network (latency, bandwidth, loss, partitions, crashes), telling the story as it
/// happens and checking the scenario's expectations. Exit 0 when every expectation held, 1
/// otherwise; the last line is `trace-digest HEX` (same scenario and seed, same digest).
#[derive(Debug, Parser)]
#[command(name = "p2p-sim", version, after_help = EXAMPLES)]
struct Cli {
    /// The scenario file (TOML; see scenarios/README.md); several with `--table`.
    #[arg(required = true)]
    scenarios: Vec<PathBuf>,
    /// Run every scenario given and print one markdown table of efficiency figures.
    #[arg(long, conflicts_with = "trace")]
    table: bool,
    /// Seed for every random choice (default: the scenario's `seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Write every event to this file, one line each, virtual time first.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Draw the run into this SVG file: a timeline per peer of the pieces it received and
    /// from whom, with the scenario's faults marked.
    #[arg(long, conflicts_with = "table", value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Which driver steps the machines (both give the same trace); default actix, or queue
    /// with `--table`.
    #[arg(long, value_enum)]
    driver: Option<Driver>,
}

/// Examples shown after the options in `--help`.
const EXAMPLES: &str = "\
Examples:
  p2p-sim scenarios/abcd.toml                      A, B, C hold a piece each; D gets all three
  p2p-sim scenarios/abcd.toml --seed 7 --trace t   another seed; every event written to t
  p2p-sim scenarios/abcd.toml --svg abcd.svg       the run drawn: who got which piece from whom, when";

/// The two drivers over the one network model.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Driver {
    /// actix actors on tokio's paused clock.
    Actix,
    /// A plain event-queue loop (fastest).
    Queue,
}

const EXIT_HELD: u8 = 0;
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Printing the usage text only fails when stderr is gone; the exit code still tells.
            e.print().ok();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_HELD });
        }
    };
    let scenarios = match cli.scenarios.iter().map(|path| Scenario::load(path)).collect::<Result<Vec<_>, _>>() {
        Ok(scenarios) => scenarios,
        Err(e) => {
            eprintln!("p2p-sim: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = match scenarios.as_slice() {
        _ if cli.table => table(&cli, &scenarios),
        [scenario] => run(&cli, scenario),
        _ => {
            eprintln!("p2p-sim: one scenario file, or several with --table");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match result {
        Ok(true) => ExitCode::from(EXIT_HELD),
        Ok(false) => ExitCode::from(EXIT_FAILED),
        Err(e) => {
            eprintln!("p2p-sim: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Runs and reports; `Ok(true)` when every expectation held.
fn run(cli: &Cli, scenario: &Scenario) -> anyhow::Result<bool> {
    let seed = cli.seed.unwrap_or(scenario.seed);
    let trace: Option<Box<dyn Write>> = match &cli.trace {
        Some(path) => {
            let file = File::create(path).with_context(|| format!("creating trace file {}", path.display()))?;
            Some(Box::new(BufWriter::new(file)))
        }
        None => None,
    };
    let (outcome, trace_error) = run_with(cli.driver.unwrap_or(Driver::Actix), scenario, seed, trace)?;
    let verdicts = check(scenario, &outcome);
    if let Some(path) = &cli.svg {
        std::fs::write(path, p2p_sim::svg::render(scenario, &outcome))
            .with_context(|| format!("writing the picture {}", path.display()))?;
    }
    let mut stdout = std::io::stdout().lock();
    print_report(&mut stdout, scenario, &outcome, &verdicts).context("writing the report to stdout")?;
    if let (Some(e), Some(path)) = (trace_error, &cli.trace) {
        return Err(e).with_context(|| format!("writing trace file {}", path.display()));
    }
    Ok(verdicts.iter().all(|v| v.held))
}

fn run_with(
    driver: Driver,
    scenario: &Scenario,
    seed: u64,
    trace: Option<Box<dyn Write>>,
) -> anyhow::Result<(Outcome, Option<std::io::Error>)> {
    Ok(match driver {
        Driver::Actix => run_actix(scenario, seed, trace).context("starting the actix runtime")?,
        Driver::Queue => run_queue(scenario, seed, trace),
    })
}

/// Runs every scenario and prints a table row for each as it finishes; `Ok(true)` when every
/// expectation of every scenario held.
fn table(cli: &Cli, scenarios: &[Scenario]) -> anyhow::Result<bool> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{TABLE_HEADER}").context("writing the table to stdout")?;
    let mut all_held = true;
    for scenario in scenarios {
        let seed = cli.seed.unwrap_or(scenario.seed);
        let (outcome, _) = run_with(cli.driver.unwrap_or(Driver::Queue), scenario, seed, None)?;
        let verdicts = check(scenario, &outcome);
        let held = verdicts.iter().filter(|v| v.held).count();
        all_held &= held == verdicts.len();
        let row = TableRow {
            scenario: outcome.scenario.clone(),
            efficiency: efficiency::measure(scenario, &outcome),
            held: (held, verdicts.len()),
        };
        write!(stdout, "{row}").and_then(|()| stdout.flush()).context("writing the table to stdout")?;
    }
    Ok(all_held)
}

fn print_report(
    out: &mut impl Write,
    scenario: &Scenario,
    outcome: &Outcome,
    verdicts: &[Verdict],
) -> std::io::Result<()> {
    let file = &scenario.file;
    writeln!(
        out,
        "scenario {} (seed {}): {} of {} bytes in {} pieces of {} bytes, {} peers",
        outcome.scenario,
        outcome.seed,
        file.name,
        file.size_bytes,
        file.piece_count,
        file.piece_size_bytes,
        scenario.peers.len()
    )?;
    writeln!(out, "\nstory (virtual time):")?;
    for line in &outcome.story {
        writeln!(out, "  {line}")?;
    }
    writeln!(out, "\n{}", SummaryTable(outcome))?;
    writeln!(out, "{}", EfficiencyReport(&efficiency::measure(scenario, outcome)))?;
    writeln!(out, "expectations:")?;
    for v in verdicts {
        let mark = if v.held { "ok  " } else { "FAIL" };
        let detail = if v.held { String::new() } else { format!(" — {}", v.detail) };
        writeln!(out, "  {mark} {}{detail}", v.expected)?;
    }
    let held = verdicts.iter().filter(|v| v.held).count();
    writeln!(
        out,
        "\n{held}/{} expectations held; {} events, {} trace lines, virtual time {}",
        verdicts.len(),
        outcome.events,
        outcome.trace_lines,
        outcome.ended_at
    )?;
    writeln!(out, "trace-digest {}", outcome.trace_digest)?;
    out.flush()
}
