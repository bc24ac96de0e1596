//! Scale benchmark: four seeders and N leechers sharing a 256-piece file on the event-queue
//! driver. Prints wall time, simulated time, events per second and, where the scenario has a
//! Kumar–Ross bound, the last and median completion over T_min for each N, with where the time
//! goes: the uplinks' use and the median hop (see `p2p_sim::efficiency`).
//!
//! `cargo bench -p p2p-sim --bench scale` runs 1,000 and 10,000 peers; give other counts as
//! arguments: `cargo bench -p p2p-sim --bench scale -- 100 2000`. The leechers arrive in ten
//! waves over the first ten seconds (no bound: late arrivals find the file spread), or all at
//! once after the argument `flash` (a flash crowd, whose bound is defined):
//! `cargo bench -p p2p-sim --bench scale -- flash 10000`. A run that exceeds
//! `SCALE_WALL_BUDGET_S` seconds of wall time (default 300) is stopped there and reported as
//! partial: how far in virtual time it got, and how many peers had completed. The trace digest
//! (its first 16 hex digits) shows that a change to the simulator kept the run the same.
//!
//! A run ends when the last leecher completes: what is measured is the sharing of the file,
//! not the scenario's idle hour afterwards (peers announcing to the tracker every 10 s).

use std::time::{Duration, Instant};

use p2p_core::{Event, Output};
use p2p_sim::efficiency;
use p2p_sim::node::NodeMachine;
use p2p_sim::scenario::{FileFile, HoldsFile, LinkFile, PeerFile, ScenarioFile};
use p2p_sim::world::Step;
use p2p_sim::{Outcome, Scenario, World};
use toml::Spanned;

/// The run allocates and frees millions of small messages and inputs; mimalloc's per-size
/// pages keep them closer together than the system allocator's chunks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PIECES: u64 = 256;
const PIECE_BYTES: u64 = 16 * 1024;
const SEEDERS: u32 = 4;
const WALL_BUDGET_S_DEFAULT: u64 = 300;
/// Steps between two looks at the wall clock.
const STEPS_PER_CLOCK_CHECK: u64 = 4096;

/// How the leechers arrive.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// In ten waves, one a second.
    Waves,
    /// All at the start.
    Flash,
}

fn scenario(leechers: u32, arrival: Arrival) -> Scenario {
    let peer = |name: &str, count: Option<u32>, holds: Option<HoldsFile>, join_s: f64| PeerFile {
        name: name.to_owned(),
        count,
        holds,
        join_s: Some(join_s),
        ..PeerFile::default()
    };
    let all = Some(HoldsFile::Word("all".to_owned()));
    let mut peers = vec![peer("S", Some(SEEDERS), all, 0.0)];
    let waves = match arrival {
        Arrival::Waves => 10,
        Arrival::Flash => 1,
    };
    let wave = leechers.div_ceil(waves);
    for i in 0..waves {
        let count = wave.min(leechers - (wave * i).min(leechers));
        if count > 0 {
            peers.push(peer(&format!("W{i}-"), Some(count), None, f64::from(i)));
        }
    }
    let file = ScenarioFile {
        seed: 1,
        end_s: 3600.0,
        network: LinkFile {
            latency_ms: Some(30.0),
            jitter_ms: Some(10.0),
            up_bytes_per_s: Some(2_000_000),
            down_bytes_per_s: Some(8_000_000),
            ..LinkFile::default()
        },
        file: FileFile { name: None, size_bytes: PIECES * PIECE_BYTES, piece_size_bytes: PIECE_BYTES },
        peers: peers.into_iter().map(|p| Spanned::new(0..0, p)).collect(),
        ..ScenarioFile::default()
    };
    Scenario::from_file(file).expect("the benchmark scenario is valid")
}

/// The event-queue driver loop of `run_queue`, stopping once every leecher completed or
/// `budget` of wall time is spent. Returns the outcome and whether every leecher completed.
// Wall time is what a benchmark measures; it only decides when to stop, never a result.
#[allow(clippy::disallowed_methods)]
fn run_with_budget(scenario: &Scenario, leechers: u32, budget: Duration) -> (Outcome, bool, Duration) {
    let started = Instant::now();
    let mut world = World::new(scenario, scenario.seed, None);
    let mut machines: Vec<Option<NodeMachine>> = (0..=scenario.peers.len()).map(|_| None).collect();
    let mut outputs = Vec::new();
    let mut steps = 0u64;
    let mut completed = 0u32;
    let finished = loop {
        steps += 1;
        if steps.is_multiple_of(STEPS_PER_CLOCK_CHECK) && started.elapsed() > budget {
            break false;
        }
        if completed == leechers {
            break true;
        }
        let Some((now, step)) = world.next_step() else { break false };
        match step {
            Step::Spawn(node, machine) => machines[node.0] = Some(machine),
            Step::Kill(node) => machines[node.0] = None,
            Step::Input(node, input) => {
                let Some(machine) = machines[node.0].as_mut() else { continue };
                let timeout = p2p_core::step(machine, now, input, |output| outputs.push(output));
                completed += count_u32(outputs.iter().filter(|o| matches!(o, Output::Event(Event::Complete { .. }))));
                world.after_step(node, &mut outputs, timeout);
            }
            Step::Command(node, command) => {
                let Some(machine) = machines[node.0].as_mut() else { continue };
                let (timeout, refused) = p2p_sim::node::step_command(machine, now, *command, &mut outputs);
                world.after_command(node, &mut outputs, timeout, refused);
            }
        }
    };
    let wall = started.elapsed();
    (world.finish().0, finished, wall)
}

fn count_u32<T>(items: impl Iterator<Item = T>) -> u32 {
    u32::try_from(items.count()).unwrap_or(u32::MAX)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arrival = if args.iter().any(|a| a == "flash") { Arrival::Flash } else { Arrival::Waves };
    let counts: Vec<u32> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let counts = if counts.is_empty() { vec![1_000, 10_000] } else { counts };
    let budget_s =
        std::env::var("SCALE_WALL_BUDGET_S").ok().and_then(|v| v.parse().ok()).unwrap_or(WALL_BUDGET_S_DEFAULT);
    println!(
        "| peers | pieces | wall time | simulated time | events | events/s | completed | T/T_min last, p50 | trace digest |"
    );
    println!(
        "|------:|-------:|----------:|---------------:|-------:|---------:|----------:|:------------------|:-------------|"
    );
    for leechers in counts {
        let scenario = scenario(leechers, arrival);
        let (outcome, finished, wall) = run_with_budget(&scenario, leechers, Duration::from_secs(budget_s));
        let done = outcome.peers.iter().filter(|p| p.completed_at.is_some()).count();
        let measured = efficiency::measure(&scenario, &outcome);
        let ratios = match (&measured.bound, measured.last_s, measured.p50_s) {
            (Ok(bound), Some(last), Some(p50)) => {
                let t_min = bound.fluid_s();
                let used = measured.uplinks_used.map_or_else(|| "-".to_owned(), |u| format!("{:.0} %", u * 100.0));
                let hop = measured.hop_p50_s.map_or_else(|| "-".to_owned(), |h| format!("{h:.2} s"));
                format!(
                    "{:.2}, {:.2} (T_min {t_min:.2} s; uplinks used {used}, hop p50 {hop})",
                    last / t_min,
                    p50 / t_min
                )
            }
            (Ok(_), _, _) => "- (not all completed)".to_owned(),
            (Err(why), _, _) => format!("n/a ({why})"),
        };
        let simulated = match (finished, outcome.last_completion) {
            (true, Some(t)) => format!("{t} (last completion)"),
            _ => format!("{} reached (stopped)", outcome.ended_at),
        };
        println!(
            "| {} | {PIECES} | {:.1} s | {simulated} | {} | {:.2} M | {done}/{leechers} | {ratios} | {} |",
            leechers + SEEDERS,
            wall.as_secs_f64(),
            outcome.events,
            outcome.events as f64 / wall.as_secs_f64() / 1e6,
            &outcome.trace_digest[..16],
        );
    }
}
