//! Scale benchmark: one seeder and N leechers sharing a 256-piece file on the event-queue
//! driver. Prints wall time, simulated time and events per second for each N.
//!
//! `cargo bench -p p2p-sim --bench scale` runs 1,000 and 10,000 peers; give other counts as
//! arguments: `cargo bench -p p2p-sim --bench scale -- 100 2000`.

use p2p_sim::scenario::{FileFile, HoldsFile, LinkFile, PeerFile, ScenarioFile};
use p2p_sim::{run_queue, Scenario};
use toml::Spanned;

const PIECES: u64 = 256;
const PIECE_BYTES: u64 = 16 * 1024;
const SEEDERS: u32 = 4;

fn scenario(leechers: u32) -> Scenario {
    let peer = |name: &str, count: Option<u32>, holds: Option<HoldsFile>, join_s: f64| PeerFile {
        name: name.to_owned(),
        count,
        holds,
        join_s: Some(join_s),
        ..PeerFile::default()
    };
    let all = Some(HoldsFile::Word("all".to_owned()));
    let mut peers = vec![peer("S", Some(SEEDERS), all, 0.0)];
    // Leechers arrive in ten waves over the first ten seconds.
    let wave = leechers.div_ceil(10);
    for i in 0..10 {
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

// Wall time is what a benchmark measures; it never reaches a simulation result.
#[allow(clippy::disallowed_methods)]
fn main() {
    let counts: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let counts = if counts.is_empty() { vec![1_000, 10_000] } else { counts };
    println!("| peers | pieces | wall time | simulated time (last completion) | events | events/s | completed |");
    println!("|------:|-------:|----------:|--------------:|-------:|---------:|----------:|");
    for leechers in counts {
        let scenario = scenario(leechers);
        let started = std::time::Instant::now();
        let (outcome, _) = run_queue(&scenario, scenario.seed, None);
        let wall = started.elapsed();
        let done = outcome.peers.iter().filter(|p| p.completed_at.is_some()).count();
        let simulated = outcome.last_completion.map_or_else(|| "-".to_owned(), |t| t.to_string());
        println!(
            "| {} | {PIECES} | {:.1} s | {simulated} | {} | {:.2} M | {done}/{leechers} |",
            leechers + SEEDERS,
            wall.as_secs_f64(),
            outcome.events,
            outcome.events as f64 / wall.as_secs_f64() / 1e6,
        );
    }
}
