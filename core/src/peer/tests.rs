//! Peer behaviour, driven through the public inputs and outputs of real machines in the
//! [`crate::testkit`] harness (tracker + peers + in-memory stores, virtual time).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::ids::{ChunkIndex, PieceIndex};
use crate::limits::{BLOCK_BYTES, CHUNKS_ACTIVE_PER_FILE_MAX, REQUESTS_IN_FLIGHT_PER_CONN_MAX, REQUEST_TIMEOUT};
use crate::machine::{Command, Event};
use crate::testkit::{file, Harness, NodeIx};
use crate::time::Time;

const KIB: usize = 1024;

fn get(h: &mut Harness, node: NodeIx, manifest: &crate::Manifest) {
    h.command(node, Command::Get { file_id: manifest.file_id(), resume: None });
}

/// Lets the shares reach the tracker, then has `node` download the file; checks the copy byte
/// for byte and returns how long the download took in virtual time.
fn fetch(h: &mut Harness, node: NodeIx, manifest: &crate::Manifest, bytes: &[u8], within: Duration) -> Duration {
    h.run_for(Duration::from_millis(10));
    let (start, id) = (h.now(), manifest.file_id());
    get(h, node, manifest);
    h.run_until(within, |h| h.completed(node, id));
    assert_eq!(h.stored(node, id), Some(bytes));
    h.now() - start
}

fn verified_from(h: &Harness, node: NodeIx) -> Vec<(ChunkIndex, std::net::SocketAddr)> {
    verified_at(h, node).into_iter().map(|(_, chunk, from)| (chunk, from)).collect()
}

#[test]
fn a_b_c_each_hold_one_piece_d_fetches_all_three_at_once_then_e_fetches_from_d() {
    let mut h = Harness::new(1);
    // Pieces of four chunks: each chunk is checked against its piece's list, sent before it.
    let (bytes, manifest) = file(3 * 64 * KIB, 64 * 1024, 7);
    let id = manifest.file_id();
    let [a, b, c, d, e] = [11, 12, 13, 14, 15].map(|seed| h.add_peer(seed, None));
    for (node, piece) in [(a, 0), (b, 1), (c, 2)] {
        h.share(node, &manifest, &bytes, Some(&[piece]));
    }
    h.run_until(Duration::from_secs(5), |h| {
        [a, b, c].iter().all(|n| h.events_of(*n).any(|(_, _, e)| matches!(e, Event::Sharing { .. })))
    });
    get(&mut h, d, &manifest);
    h.run_until(Duration::from_secs(5), |h| h.completed(d, id));
    assert_eq!(h.stored(d, id), Some(&bytes[..]));
    let mut sources: Vec<_> = verified_from(&h, d).into_iter().map(|(c, from)| (manifest.piece_of(c), from)).collect();
    sources.sort();
    sources.dedup();
    let holders = [(PieceIndex(0), h.addr(a)), (PieceIndex(1), h.addr(b)), (PieceIndex(2), h.addr(c))];
    assert_eq!(sources, holders, "every chunk of a piece from the piece's holder");
    // The requests went out together, before any chunk arrived.
    let requested: Vec<Time> =
        h.events_of(d).filter_map(|(t, _, e)| matches!(e, Event::ChunkRequested { .. }).then_some(*t)).collect();
    let first_verified = h.events_of(d).find(|(_, _, e)| matches!(e, Event::ChunkVerified { .. })).map(|(t, _, _)| *t);
    assert_eq!(requested.len(), 12);
    assert!(requested.iter().all(|t| Some(*t) <= first_verified));

    for node in [a, b, c] {
        h.command(node, Command::Leave);
    }
    get(&mut h, e, &manifest);
    h.run_until(Duration::from_secs(10), |h| h.completed(e, id));
    assert_eq!(h.stored(e, id), Some(&bytes[..]));
    assert!(verified_from(&h, e).iter().all(|(_, from)| *from == h.addr(d)));
}

#[test]
fn requests_are_pipelined_and_bounded_per_connection() {
    let mut h = Harness::new(2);
    let (bytes, manifest) = file(40 * BLOCK_BYTES as usize, 4 * 1024 * 1024, 1);
    // The pipeline is sized from the seeder's measured rate: 8 MiB/s keeps every request busy.
    let (seeder, leecher) = (h.add_peer(1, Some(8 * 1024 * 1024)), h.add_peer(2, None));
    h.share(seeder, &manifest, &bytes, None);
    h.run_for(Duration::from_millis(10));
    get(&mut h, leecher, &manifest);
    let mut peak = 0;
    h.run_until(Duration::from_secs(10), |h| {
        peak = peak.max(h.peer(leecher).requests_in_flight());
        h.completed(leecher, manifest.file_id())
    });
    assert_eq!(peak, REQUESTS_IN_FLIGHT_PER_CONN_MAX);
    assert_eq!(h.stored(leecher, manifest.file_id()), Some(&bytes[..]));
}

#[test]
fn rarest_chunks_are_fetched_first() {
    let mut h = Harness::new(3);
    let (bytes, manifest) = file(40 * 16 * KIB, 16 * 1024, 3);
    let common: Vec<u32> = (0..30).collect();
    let full = h.add_peer(1, None);
    let partial: Vec<NodeIx> = (2..6).map(|seed| h.add_peer(seed, None)).collect();
    h.share(full, &manifest, &bytes, None);
    for node in &partial {
        h.share(*node, &manifest, &bytes, Some(&common));
    }
    let leecher = h.add_peer(9, None);
    fetch(&mut h, leecher, &manifest, &bytes, Duration::from_secs(10));
    // Chunks 30..40 exist only on `full`; it is asked for them before the common ones.
    let from_full: Vec<u32> = h
        .events_of(leecher)
        .filter_map(|(_, _, e)| match e {
            Event::ChunkRequested { chunk, from, .. } if *from == h.addr(full) => Some(chunk.0),
            _ => None,
        })
        .collect();
    let rare_first = from_full.iter().take(10).filter(|p| **p >= 30).count();
    assert!(rare_first >= 8, "full seeder was asked for {from_full:?}");
}

#[test]
fn a_corrupt_seeder_is_struck_banned_and_the_file_is_still_correct() {
    let mut h = Harness::new(4);
    let (bytes, manifest) = file(64 * 16 * KIB, 16 * 1024, 4);
    let id = manifest.file_id();
    let (liar, honest, leecher) = (h.add_peer(1, None), h.add_peer(2, None), h.add_peer(3, None));
    h.share(liar, &manifest, &bytes, None);
    h.share(honest, &manifest, &bytes, None);
    for chunk in 0..64 {
        h.corrupt(liar, id, chunk);
    }
    fetch(&mut h, leecher, &manifest, &bytes, Duration::from_secs(20));
    let corrupt = h.events_of(leecher).filter(|(_, _, e)| matches!(e, Event::ChunkCorrupt { .. })).count();
    assert!(corrupt >= 1);
    assert!(h.events_of(leecher).any(|(_, _, e)| matches!(e, Event::PeerBanned { addr, .. } if *addr == h.addr(liar))));
    assert!(verified_from(&h, leecher).iter().all(|(_, from)| *from == h.addr(honest)));
}

#[test]
fn a_chunk_nobody_holds_is_reported_and_fetched_once_a_holder_appears() {
    let mut h = Harness::new(5);
    let (bytes, manifest) = file(4 * 16 * KIB, 16 * 1024, 5);
    let id = manifest.file_id();
    let (partial, leecher, late) = (h.add_peer(1, None), h.add_peer(2, None), h.add_peer(3, None));
    h.share(partial, &manifest, &bytes, Some(&[0, 1, 3]));
    h.run_for(Duration::from_millis(10));
    get(&mut h, leecher, &manifest);
    h.run_for(Duration::from_secs(5));
    assert!(!h.completed(leecher, id));
    assert!(h
        .events_of(leecher)
        .any(|(_, _, e)| *e == Event::ChunksMissing { file_id: id, chunks: vec![ChunkIndex(2)] }));
    assert_eq!(h.peer(leecher).have(&id).map(|b| b.count()), Some(3));
    h.share(late, &manifest, &bytes, Some(&[2]));
    h.run_until(Duration::from_secs(10), |h| h.completed(leecher, id));
    assert_eq!(h.stored(leecher, id), Some(&bytes[..]));
}

#[test]
fn a_silent_remote_times_out_and_its_chunk_goes_elsewhere() {
    let mut h = Harness::new(6);
    let (bytes, manifest) = file(6 * 16 * KIB, 16 * 1024, 6);
    let id = manifest.file_id();
    let (hole, good, leecher) = (h.add_peer(1, None), h.add_peer(2, None), h.add_peer(3, None));
    h.share(hole, &manifest, &bytes, None);
    h.silence(hole);
    h.run_for(Duration::from_millis(10));
    get(&mut h, leecher, &manifest);
    // The hole is the only holder, so nothing but the request timeout takes its chunks away
    // (with a second holder, endgame would fetch them there first): they are withdrawn, and
    // the hole, whose blocks left it (and were lost), answers that they will not come.
    h.run_for(REQUEST_TIMEOUT + Duration::from_secs(1));
    let first = |kind| h.received.iter().find(|(_, to, k)| *to == hole && *k == kind).map(|(at, _, _)| *at);
    let requested = h.requested.iter().find(|(_, to)| *to == hole).map(|(at, _)| *at);
    let requested = requested.expect("the hole was asked for blocks");
    let withdrawn = first("withdraw").expect("the unanswered requests were withdrawn");
    assert!(withdrawn >= requested + REQUEST_TIMEOUT, "withdrawn at {withdrawn}, asked at {requested}");
    assert!(!h.completed(leecher, id));
    h.share(good, &manifest, &bytes, None);
    h.run_until(Duration::from_secs(60), |h| h.completed(leecher, id));
    assert_eq!(h.stored(leecher, id), Some(&bytes[..]));
    let good_addr = h.addr(good);
    assert!(
        verified_from(&h, leecher).iter().all(|(_, from)| *from == good_addr),
        "every chunk came from the other holder"
    );
}

#[test]
fn a_seeder_that_crashes_mid_download_is_replaced_by_another_holder() {
    let mut h = Harness::new(7);
    let (bytes, manifest) = file(32 * 16 * KIB, 16 * 1024, 7);
    let id = manifest.file_id();
    let (first, second, leecher) =
        (h.add_peer(1, Some(64 * 1024)), h.add_peer(2, Some(64 * 1024)), h.add_peer(3, None));
    h.share(first, &manifest, &bytes, None);
    h.share(second, &manifest, &bytes, None);
    h.run_for(Duration::from_millis(10));
    get(&mut h, leecher, &manifest);
    h.run_until(Duration::from_secs(30), |h| h.peer(leecher).have(&id).is_some_and(|b| b.count() >= 8));
    h.crash(first);
    h.run_until(Duration::from_secs(60), |h| h.completed(leecher, id));
    assert_eq!(h.stored(leecher, id), Some(&bytes[..]));
}

#[test]
fn a_restarted_tracker_is_rebuilt_from_announces_and_downloads_finish() {
    let mut h = Harness::new(8);
    let (bytes, manifest) = file(32 * 16 * KIB, 16 * 1024, 8);
    let id = manifest.file_id();
    let (seeder, leecher) = (h.add_peer(1, Some(128 * 1024)), h.add_peer(2, None));
    h.share(seeder, &manifest, &bytes, None);
    h.run_for(Duration::from_millis(10));
    get(&mut h, leecher, &manifest);
    h.run_for(Duration::from_secs(1));
    h.restart_tracker(99);
    let late = h.add_peer(3, None);
    get(&mut h, late, &manifest);
    h.run_until(Duration::from_secs(60), |h| h.completed(leecher, id) && h.completed(late, id));
    assert_eq!(h.stored(late, id), Some(&bytes[..]));
    assert!(h.events_of(seeder).filter(|(_, _, e)| matches!(e, Event::TrackerConnected { .. })).count() >= 2);
}

#[test]
fn an_upload_cap_paces_the_transfer() {
    let mut h = Harness::new(9);
    let (bytes, manifest) = file(4 * 1024 * KIB, 256 * 1024, 9);
    let (seeder, leecher) = (h.add_peer(1, Some(1024 * 1024)), h.add_peer(2, None));
    h.share(seeder, &manifest, &bytes, None);
    let took = fetch(&mut h, leecher, &manifest, &bytes, Duration::from_secs(30));
    // 4 MiB at 1 MiB/s, less the initial burst and the one block the pacer may overdraw.
    assert!(took >= Duration::from_millis(3450) && took <= Duration::from_millis(4200), "took {took:?}");
}

#[test]
fn same_seed_same_events() {
    let run = |seed| {
        let mut h = Harness::new(seed);
        let (bytes, manifest) = file(20 * 16 * KIB, 16 * 1024, 1);
        let seeders: Vec<NodeIx> = (0..3).map(|s| h.add_peer(seed + s, None)).collect();
        for (i, node) in seeders.iter().enumerate() {
            let chunks: Vec<u32> = (0..20).filter(|p| p % 3 != i as u32).collect();
            h.share(*node, &manifest, &bytes, Some(&chunks));
        }
        let leechers: Vec<NodeIx> = (0..4).map(|s| h.add_peer(seed + 10 + s, None)).collect();
        h.run_for(Duration::from_millis(10));
        for node in &leechers {
            get(&mut h, *node, &manifest);
        }
        h.run_until(Duration::from_secs(20), |h| leechers.iter().all(|n| h.completed(*n, manifest.file_id())));
        format!("{:?}", h.events)
    };
    assert_eq!(run(40), run(40));
    assert_ne!(run(40), run(41));
}

#[test]
fn a_full_seeder_refuses_extra_connections_politely_and_everyone_still_completes() {
    let mut h = Harness::new(10);
    let (bytes, manifest) = file(16 * 16 * KIB, 16 * 1024, 10);
    let id = manifest.file_id();
    let seeder = h.add_peer(1, None);
    h.share(seeder, &manifest, &bytes, None);
    h.run_for(Duration::from_millis(10));
    let leechers: Vec<NodeIx> =
        (0..crate::limits::INBOUND_PEERS_MAX as u64 + 16).map(|s| h.add_peer(100 + s, None)).collect();
    for node in &leechers {
        get(&mut h, *node, &manifest);
    }
    h.run_until(Duration::from_secs(120), |h| leechers.iter().all(|n| h.completed(*n, id)));
    assert!(leechers.iter().all(|n| h.stored(*n, id) == Some(&bytes[..])));
    let violations = h.events.iter().filter(|(_, _, e)| matches!(e, Event::ProtocolViolation { .. })).count();
    assert_eq!(violations, 0, "a refusal is not a protocol violation");
}

#[test]
fn endgame_lets_an_idle_fast_remote_finish_what_a_slow_one_holds_up() {
    let mut h = Harness::new(11);
    let (bytes, manifest) = file(8 * 256 * KIB, 1024 * 1024, 11);
    // 32 KiB/s after a one-block burst: the slow seeder needs 8 s per chunk it was given; the
    // fast one takes such a chunk over once the slow one lagged for `ENDGAME_PATIENCE`.
    let (slow, fast, leecher) = (h.add_peer(1, Some(32 * 1024)), h.add_peer(2, None), h.add_peer(3, None));
    h.share(slow, &manifest, &bytes, None);
    h.share(fast, &manifest, &bytes, None);
    let took = fetch(&mut h, leecher, &manifest, &bytes, Duration::from_secs(60));
    let from_slow = verified_from(&h, leecher).iter().filter(|(_, from)| *from == h.addr(slow)).count();
    let within = crate::limits::ENDGAME_PATIENCE + Duration::from_secs(1);
    assert!(took < within, "took {took:?}; the slow seeder delivered {from_slow} chunks");
    assert!(from_slow <= 2, "the slow seeder delivered {from_slow} of 8 chunks");
}

/// A silent seeder, which takes requests and never answers, and a fast one share a file; a
/// third peer starts to download it. Returns the harness, the three nodes and when the
/// download started.
fn silent_and_fast_seeders(seed: u64) -> (Harness, [NodeIx; 3], crate::Manifest, Time) {
    let mut h = Harness::new(seed);
    let (bytes, manifest) = file(16 * 64 * KIB, 64 * 1024, seed as u8);
    let [silent, fast, leecher] = [1, 2, 3].map(|s| h.add_peer(s, None));
    h.share(silent, &manifest, &bytes, None);
    h.share(fast, &manifest, &bytes, None);
    h.silence(silent);
    h.run_for(Duration::from_millis(10));
    let start = h.now();
    get(&mut h, leecher, &manifest);
    (h, [silent, fast, leecher], manifest, start)
}

/// When `node` verified each chunk, from whom.
fn verified_at(h: &Harness, node: NodeIx) -> Vec<(Time, ChunkIndex, std::net::SocketAddr)> {
    h.events_of(node)
        .filter_map(|(at, _, e)| match e {
            Event::ChunkVerified { chunk, from, .. } => Some((*at, *chunk, *from)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_lone_downloader_is_told_everything_once_settled_though_offered_chunks_come_from_elsewhere() {
    // Each seeder offers the lone downloader a window of chunks. The ones both offered that
    // it asked of the silent seeder stay outstanding at the fast one, which therefore never
    // has room for another offer: it tells everything once the downloader has been connected
    // for `OFFERS_ALONE_AFTER`, room or not.
    let (mut h, [silent, _, leecher], manifest, start) = silent_and_fast_seeders(14);
    h.run_for(Duration::from_secs(1));
    let asked_of_silent: BTreeSet<ChunkIndex> = h
        .events_of(leecher)
        .filter_map(|(_, _, e)| match e {
            Event::ChunkRequested { chunk, from, .. } if *from == h.addr(silent) => Some(*chunk),
            _ => None,
        })
        .collect();
    assert!(!asked_of_silent.is_empty(), "the silent seeder was asked for chunks");
    let verified = verified_at(&h, leecher);
    let settled = start + crate::limits::OFFERS_ALONE_AFTER + Duration::from_millis(100);
    let late: Vec<_> = verified.iter().filter(|(at, _, _)| *at > settled).collect();
    assert!(late.is_empty(), "verified late: {late:?}");
    let total = manifest.chunk_count() as usize;
    assert_eq!(verified.len() + asked_of_silent.len(), total, "every other chunk is in by {settled}");
}

#[test]
fn a_download_held_up_only_by_a_silent_fetcher_takes_a_chunk_elsewhere_as_soon_as_it_lags() {
    // Once the fast seeder delivered everything else, the download has nothing left to start
    // and waits for the silent seeder alone, which lags `ENDGAME_PATIENCE` after its requests
    // went out. The check that finds it comes every `ENDGAME_CHECK_INTERVAL` in that stretch.
    let (mut h, [_, fast, leecher], _, start) = silent_and_fast_seeders(14);
    let verified = |h: &Harness| verified_at(h, leecher).len();
    h.run_for(Duration::from_secs(1));
    let before = verified(&h);
    h.run_until(Duration::from_secs(30), |h| verified(h) > before);
    let (at, _, from) = verified_at(&h, leecher)[before];
    assert_eq!(from, h.addr(fast));
    let lags = start + crate::limits::ENDGAME_PATIENCE;
    assert!(at >= lags, "taken over at {at}, before the silent seeder lagged");
    assert!(at <= lags + crate::limits::ENDGAME_CHECK_INTERVAL, "taken over at {at}");
}

#[test]
fn a_progressing_download_asks_the_tracker_less_and_less_often_and_a_stuck_one_keeps_asking() {
    let mut h = Harness::new(12);
    let (bytes, manifest) = file(32 * 64 * KIB, 64 * 1024, 12);
    let id = manifest.file_id();
    // 64 KiB/s: about 30 s of steady progress, one chunk a second.
    let (seeder, leecher) = (h.add_peer(1, Some(64 * 1024)), h.add_peer(2, None));
    h.share(seeder, &manifest, &bytes, None);
    let took = fetch(&mut h, leecher, &manifest, &bytes, Duration::from_secs(60));
    let asks =
        |h: &Harness, node| h.events_of(node).filter(|(_, _, e)| *e == Event::LocateSent { file_id: id }).count();
    let every_two_seconds = (took.as_secs() / 2) as usize;
    assert!(asks(&h, leecher) <= 6, "{} asks in {took:?} (every 2 s would be {every_two_seconds})", asks(&h, leecher));

    let (partial, stuck) = (h.add_peer(3, None), h.add_peer(4, None));
    let (bytes, manifest) = file(4 * 16 * KIB, 16 * 1024, 13);
    h.share(partial, &manifest, &bytes, Some(&[0, 1, 2]));
    h.run_for(Duration::from_millis(10));
    get(&mut h, stuck, &manifest);
    h.run_for(Duration::from_secs(20));
    let stuck_asks = h.events_of(stuck).filter(|(_, _, e)| matches!(e, Event::LocateSent { .. })).count();
    assert!(stuck_asks >= 9, "a download waiting for a missing chunk asked only {stuck_asks} times in 20 s");
}

#[test]
fn one_seeder_and_eight_downloaders_started_together_the_seeder_uploads_little_more_than_the_file() {
    let mut h = Harness::new(13);
    let (bytes, manifest) = file(64 * 64 * KIB, 64 * 1024, 13);
    let id = manifest.file_id();
    // The seeder needs 4 s to send the file once; the downloaders upload four times as fast.
    let rate = 1024 * 1024;
    let seeder = h.add_peer(1, Some(rate));
    h.share(seeder, &manifest, &bytes, None);
    h.run_for(Duration::from_millis(10));
    let downloaders: Vec<NodeIx> = (0..8).map(|s| h.add_peer(100 + s, Some(4 * rate))).collect();
    for node in &downloaders {
        get(&mut h, *node, &manifest);
    }
    h.run_until(Duration::from_secs(60), |h| downloaders.iter().all(|n| h.completed(*n, id)));
    assert!(downloaders.iter().all(|n| h.stored(*n, id) == Some(&bytes[..])));
    let uploaded: u64 = h
        .events_of(seeder)
        .filter_map(|(_, _, e)| match e {
            Event::BlockServed { len, .. } => Some(u64::from(*len)),
            _ => None,
        })
        .sum();
    // Before the seeder spread distinct chunks and downloaders found each other early: 2.02×,
    // everyone done after 7.8 s.
    let multiple = uploaded as f64 / bytes.len() as f64;
    let took = h.now();
    assert!(multiple <= 1.5, "the seeder uploaded {multiple:.2}× the file; everyone done at {took}");
    assert!(took <= Time::from_millis(6500), "everyone done at {took} (the seeder uploaded {multiple:.2}×)");
}

#[test]
fn a_crowd_whose_first_downloader_comes_alone_gets_every_chunk_from_the_seeder_once_before_any_twice() {
    let mut h = Harness::new(25);
    let (bytes, manifest) = file(64 * 16 * KIB, 64 * 1024, 25);
    let id = manifest.file_id();
    let rate = 256 * 1024;
    let seeder = h.add_peer(1, Some(rate));
    h.share(seeder, &manifest, &bytes, None);
    h.run_for(Duration::from_millis(10));
    // The first downloader is alone for a few of the seeder's chunks, as when the processes
    // of a real crowd start one after another; the others come 200 ms later.
    let first = h.add_peer(100, Some(4 * rate));
    get(&mut h, first, &manifest);
    h.run_for(Duration::from_millis(200));
    let mut downloaders: Vec<NodeIx> = (1..6).map(|s| h.add_peer(100 + s, Some(4 * rate))).collect();
    for node in &downloaders {
        get(&mut h, *node, &manifest);
    }
    downloaders.push(first);
    h.run_until(Duration::from_secs(60), |h| downloaders.iter().all(|n| h.completed(*n, id)));
    assert!(downloaders.iter().all(|n| h.stored(*n, id) == Some(&bytes[..])));
    let served = h.events_of(seeder).filter_map(|(_, _, e)| match e {
        Event::BlockServed { chunk, .. } => Some(*chunk),
        _ => None,
    });
    let mut first_copies = std::collections::BTreeSet::new();
    let mut again = Vec::new();
    for chunk in served {
        if first_copies.len() == manifest.chunk_count() as usize {
            break;
        }
        if !first_copies.insert(chunk) {
            again.push(chunk);
        }
    }
    // Told everything when its first offer was served, the first downloader asked the seeder
    // for chunks it then also offered to the others.
    assert!(again.is_empty(), "sent twice before every chunk went out once: {again:?}");
}

#[test]
fn a_seeder_offering_chunks_a_few_at_a_time_hears_of_offers_fetched_elsewhere_and_offers_more() {
    let mut h = Harness::new(14);
    let (bytes, manifest) = file(64 * 16 * KIB, 16 * 1024, 14);
    let id = manifest.file_id();
    // Chunk 63 exists only on the slow seeder; the partial holder serves the rest at once, so
    // the downloaders fetch most of the seeder's offers from it.
    let (seeder, partial) = (h.add_peer(1, Some(64 * 1024)), h.add_peer(2, None));
    h.share(seeder, &manifest, &bytes, None);
    h.share(partial, &manifest, &bytes, Some(&(0..63).collect::<Vec<u32>>()));
    h.run_for(Duration::from_millis(10));
    let downloaders = [h.add_peer(3, None), h.add_peer(4, None)];
    for node in downloaders {
        get(&mut h, node, &manifest);
    }
    h.run_until(Duration::from_secs(30), |h| downloaders.iter().all(|n| h.completed(*n, id)));
    assert!(downloaders.iter().all(|n| h.stored(*n, id) == Some(&bytes[..])));
}

/// Drives one peer by hand: what it outputs for `input` at `at`.
fn step(peer: &mut super::Peer, at: Time, input: crate::machine::Input) -> Vec<crate::machine::Output> {
    use crate::machine::Machine;
    peer.handle(at, input);
    std::iter::from_fn(|| peer.poll_output()).collect()
}

/// Gives `peer` a command at `at`; its outputs are dropped.
fn command(peer: &mut super::Peer, at: Time, command: Command) {
    crate::machine::step_command(peer, at, command, |_| {}).expect("a valid command");
}

fn sent(outputs: &[crate::machine::Output]) -> Vec<&crate::wire::Message> {
    outputs
        .iter()
        .filter_map(|o| match o {
            crate::machine::Output::Send { message, .. } => Some(message),
            _ => None,
        })
        .collect()
}

/// A peer sharing the whole of a file of `chunks` chunks of 16 KiB (its bytes drawn from
/// `seed`) since time zero: the peer and the file's manifest.
fn seeding(chunks: u32, seed: u8) -> (super::Peer, crate::Manifest) {
    let (_, manifest) = file(chunks as usize * 16 * KIB, 16 * 1024, seed);
    let tracker = "10.0.0.1:7000".parse().expect("valid address");
    let mut peer = super::Peer::new(super::PeerConfig::new(crate::PeerId::from_seed(6), 6, tracker, 7001));
    command(&mut peer, Time::ZERO, Command::Share { manifest: manifest.clone(), have: crate::Bitfield::full(chunks) });
    (peer, manifest)
}

#[test]
fn the_first_ask_is_for_holders_one_of_which_sends_the_manifest_and_no_ask_goes_out_while_one_is_unanswered() {
    use crate::machine::{Input, Output};
    use crate::wire::{Hello, Message, PeerAddr, Role};
    let (_, manifest) = file(4 * 16 * KIB, 16 * 1024, 21);
    let id = manifest.file_id();
    let tracker: std::net::SocketAddr = "10.0.0.1:7000".parse().expect("valid address");
    let holder = PeerAddr { peer_id: crate::PeerId([7; 16]), addr: "10.0.0.2:7000".parse().expect("valid address") };
    let hello = |role, peer_id| Message::Hello(Hello::new(role, peer_id, 0));
    let connect_to = |outputs: &[Output], to| {
        outputs.iter().find(|o| matches!(o, Output::Connect { addr, .. } if *addr == to)).cloned()
    };
    let mut peer = super::Peer::new(super::PeerConfig::new(crate::PeerId::from_seed(5), 5, tracker, 7001));
    let at = |ms| Time::from_millis(ms);
    command(&mut peer, at(0), Command::Get { file_id: id, resume: None });
    let Some(Output::Connect { conn: to_tracker, .. }) = connect_to(&step(&mut peer, at(0), Input::Timeout), tracker)
    else {
        panic!("the peer connects to the tracker first");
    };
    let open = step(
        &mut peer,
        at(10),
        Input::Connected { conn: to_tracker, remote: tracker, peer_id: crate::PeerId([1; 16]) },
    );
    let our_hello = Message::Hello(Hello {
        room_calls: true,
        takes_pushes: true,
        request_batches: true,
        withdrawals: true,
        ..Hello::new(Role::Peer, peer.peer_id(), 7001)
    });
    assert_eq!(sent(&open), vec![&our_hello, &Message::Locate { file_id: id, with_manifest: false }]);
    let ready = step(
        &mut peer,
        at(20),
        Input::Message { conn: to_tracker, message: hello(Role::Tracker, crate::PeerId([1; 16])) },
    );
    assert!(sent(&ready).is_empty(), "asked once: {ready:?}");
    // However long the answer takes, no second ask goes out meanwhile.
    let waiting = step(&mut peer, at(20_000), Input::Timeout);
    assert!(!sent(&waiting).iter().any(|m| matches!(m, Message::Locate { .. })), "{waiting:?}");
    let holders = crate::wire::Holders::pack(4, [(holder, crate::Bitfield::full(4).as_bytes())].into_iter());
    let answer = Message::Located { file_id: id, manifest: None, holders };
    let answered = step(&mut peer, at(20_000), Input::Message { conn: to_tracker, message: answer });
    let Some(Output::Connect { conn, .. }) = connect_to(&answered, holder.addr) else {
        panic!("the peer connects to the holder: {answered:?}");
    };
    step(&mut peer, at(20_010), Input::Connected { conn, remote: holder.addr, peer_id: holder.peer_id });
    let asked = step(&mut peer, at(20_020), Input::Message { conn, message: hello(Role::Peer, holder.peer_id) });
    assert_eq!(sent(&asked), vec![&Message::GetManifest { file_id: id }]);
    // The answer named fewer than 8 peers, so the next ask comes soon (downloaders that
    // started together find each other); the manifest still unknown, it asks for that too.
    let soon = 20_000 + crate::limits::LOCATE_INTERVAL_SECOND.as_millis() as u64;
    assert!(!sent(&step(&mut peer, at(soon - 1), Input::Timeout)).iter().any(|m| matches!(m, Message::Locate { .. })));
    let again = step(&mut peer, at(soon), Input::Timeout);
    assert_eq!(sent(&again), vec![&Message::Locate { file_id: id, with_manifest: true }]);
    let adopted = step(
        &mut peer,
        at(soon + 10),
        Input::Message { conn, message: Message::Manifest { manifest: Box::new(manifest.clone()) } },
    );
    assert_eq!(peer.manifest(&id), Some(&manifest));
    assert!(
        sent(&adopted).iter().any(|m| matches!(m, Message::Bitfield { file_id, .. } if *file_id == id)),
        "{adopted:?}"
    );
}

#[test]
fn a_holder_asked_for_the_manifest_sends_its_bitfield_behind_it_once() {
    use crate::machine::Input;
    use crate::wire::{Hello, Message, Role};
    let (mut holder, manifest) = seeding(4, 22);
    let id = manifest.file_id();
    let (asker, addr) = (crate::PeerId([7; 16]), "10.0.0.2:40000".parse().expect("valid address"));
    let at = |ms| Time::from_millis(ms);
    let conn = crate::ConnId::Inbound(1);
    step(&mut holder, at(10), Input::Connected { conn, remote: addr, peer_id: asker });
    step(&mut holder, at(20), Input::Message { conn, message: Message::Hello(Hello::new(Role::Peer, asker, 7002)) });
    // Asking for the manifest says the asker holds nothing: our bitfield follows at once (the
    // holder shared the whole file itself, so it tells a newcomer one offered chunk).
    let answered = step(&mut holder, at(30), Input::Message { conn, message: Message::GetManifest { file_id: id } });
    let answered = sent(&answered);
    assert_eq!(answered.len(), 2, "{answered:?}");
    assert_eq!(answered[0], &Message::Manifest { manifest: Box::new(manifest) });
    assert!(
        matches!(answered[1], Message::Bitfield { file_id, have }
            if *file_id == id && have.count() as usize == crate::limits::OFFER_WINDOW_CHUNKS),
        "{answered:?}"
    );
    // The asker's own (empty) bitfield, sent once it has the manifest, is not answered twice.
    let empty = Message::Bitfield { file_id: id, have: crate::Bitfield::new(4) };
    assert!(sent(&step(&mut holder, at(40), Input::Message { conn, message: empty })).is_empty());
}

#[test]
fn a_seeders_only_downloader_is_offered_a_window_until_it_has_been_alone_a_while_and_one_chunk_in_a_crowd() {
    use crate::limits::{OFFERS_ALONE_AFTER, OFFER_WINDOW_ALONE_CHUNKS, OFFER_WINDOW_CHUNKS};
    use crate::machine::Input;
    use crate::wire::Message;
    let chunks = 64;
    let (mut holder, manifest) = seeding(chunks, 24);
    let id = manifest.file_id();
    let at = |ms| Time::from_millis(ms);
    let empty = || Message::Bitfield { file_id: id, have: crate::Bitfield::new(chunks) };
    let holds = |chunks: &[ChunkIndex]| Message::Haves { file_id: id, chunks: chunks.to_vec() };

    let (first, _) = connect_numbered(&mut holder, 1, at(10));
    let offered = told_to(&step(&mut holder, at(10), Input::Message { conn: first, message: empty() }), first);
    assert_eq!(offered.len(), OFFER_WINDOW_CHUNKS);
    // Its offer came in (from elsewhere): alone, but connected only just now, it is offered a
    // wider window of chunks, not every one.
    let window = told_to(&step(&mut holder, at(20), Input::Message { conn: first, message: holds(&offered) }), first);
    assert_eq!(window.len(), OFFER_WINDOW_ALONE_CHUNKS, "{window:?}");
    assert!(!window.contains(&offered[0]));
    // A chunk of the window in, it is topped up at once, without waiting for the others.
    let more = told_to(&step(&mut holder, at(30), Input::Message { conn: first, message: holds(&window[..1]) }), first);
    assert_eq!(more.len(), 1, "{more:?}");
    // Alone for `OFFERS_ALONE_AFTER`, it is told every chunk left at its next room.
    let later = 10 + u64::try_from(OFFERS_ALONE_AFTER.as_millis()).expect("short");
    let rest =
        told_to(&step(&mut holder, at(later), Input::Message { conn: first, message: holds(&window[1..2]) }), first);
    assert_eq!(rest.len(), chunks as usize - 2 - OFFER_WINDOW_ALONE_CHUNKS, "every chunk not yet told");

    // A crowd: the second downloader arrives before the first one's offer came in, and each
    // is offered one chunk at a time from then on.
    let (mut holder, _) = seeding(chunks, 24);
    let (first, _) = connect_numbered(&mut holder, 1, at(10));
    let offered = told_to(&step(&mut holder, at(10), Input::Message { conn: first, message: empty() }), first);
    let (second, _) = connect_numbered(&mut holder, 2, at(15));
    assert_eq!(told_to(&step(&mut holder, at(15), Input::Message { conn: second, message: empty() }), second).len(), 1);
    let next = told_to(&step(&mut holder, at(20), Input::Message { conn: first, message: holds(&offered) }), first);
    assert_eq!(next.len(), OFFER_WINDOW_CHUNKS, "{next:?}");
}

#[test]
fn once_every_chunk_is_in_the_swarm_a_seeders_downloaders_are_told_everything() {
    use crate::machine::Input;
    use crate::wire::Message;
    let chunks = 8;
    let (mut holder, manifest) = seeding(chunks, 25);
    let id = manifest.file_id();
    let at = |ms| Time::from_millis(ms);
    let empty = || Message::Bitfield { file_id: id, have: crate::Bitfield::new(chunks) };
    let downloaders = [connect_numbered(&mut holder, 1, at(10)).0, connect_numbered(&mut holder, 2, at(10)).0];
    let mut offered: Vec<Vec<ChunkIndex>> = (downloaders.iter())
        .map(|conn| told_to(&step(&mut holder, at(10), Input::Message { conn: *conn, message: empty() }), *conn))
        .collect();
    // Each reports holding what it was offered (fetched from each other, as far as the seeder
    // knows), in turns, until every chunk is in the swarm.
    let mut reported = [0, 0];
    let mut in_swarm = std::collections::BTreeSet::new();
    for turn in 0..4 * chunks as usize {
        let i = turn % 2;
        let news: Vec<ChunkIndex> = offered[i][reported[i]..].to_vec();
        if news.is_empty() {
            continue;
        }
        reported[i] = offered[i].len();
        in_swarm.extend(news.iter().copied());
        let message = Message::Haves { file_id: id, chunks: news };
        let outputs = step(&mut holder, at(20 + turn as u64), Input::Message { conn: downloaders[i], message });
        for (j, conn) in downloaders.iter().enumerate() {
            offered[j].extend(told_to(&outputs, *conn));
        }
        if in_swarm.len() < chunks as usize {
            for (j, offers) in offered.iter().enumerate() {
                assert!(offers.len() <= reported[j] + 1, "one offer at a time while spreading: {offered:?}");
            }
        } else {
            break;
        }
    }
    assert_eq!(in_swarm.len(), chunks as usize, "every chunk was offered and reported: {offered:?}");
    for (offers, conn) in offered.iter().zip(downloaders) {
        let mut all: Vec<u32> = offers.iter().map(|c| c.0).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), chunks as usize, "{conn:?} is told every chunk, once: {offers:?}");
        assert_eq!(offers.len(), chunks as usize, "{conn:?} is told no chunk twice: {offers:?}");
    }
}

/// The chunks `outputs` tell `to` we hold, in the order told: a `Bitfield`'s, then `Haves`'.
fn told_to(outputs: &[crate::machine::Output], to: crate::ConnId) -> Vec<ChunkIndex> {
    use crate::machine::Output;
    use crate::wire::Message;
    let told = outputs.iter().filter_map(|o| match o {
        Output::Send { conn, message: Message::Bitfield { have, .. } } if *conn == to => Some(have.iter().collect()),
        Output::Send { conn, message: Message::Haves { chunks, .. } } if *conn == to => Some(chunks.clone()),
        _ => None,
    });
    told.flatten().collect()
}

/// Remote `n` connects to `holder` at `at` from its own address (10.1.x.y, serving on port
/// 40000) and says `Hello`; returns its connection and what the holder output.
fn connect_numbered(holder: &mut super::Peer, n: u16, at: Time) -> (crate::ConnId, Vec<crate::machine::Output>) {
    use crate::machine::Input;
    use crate::wire::{Hello, Message, Role};
    let (conn, peer_id) = (crate::ConnId::Inbound(u64::from(n)), crate::PeerId::from_seed(1000 + u64::from(n)));
    let addr = std::net::SocketAddr::from(([10, 1, (n >> 8) as u8, n as u8], 40_000));
    let mut outputs = step(holder, at, Input::Connected { conn, remote: addr, peer_id });
    let hello = Message::Hello(Hello::new(Role::Peer, peer_id, 40_000));
    outputs.extend(step(holder, at, Input::Message { conn, message: hello }));
    (conn, outputs)
}

#[test]
fn a_full_holder_answers_a_newcomers_manifest_ask_before_refusing_it_and_keeps_few_such_newcomers_for_long() {
    use crate::limits::{
        CONNECTION_CHECK_INTERVAL, INBOUND_COURTESY_MAX, INBOUND_COURTESY_TIMEOUT, INBOUND_PEERS_MAX,
        INBOUND_REFERRALS_MAX,
    };
    use crate::machine::{Input, Output};
    use crate::wire::{ErrorCode, Message};
    let (mut holder, manifest) = seeding(4, 23);
    let id = manifest.file_id();
    let at = |ms| Time::from_millis(ms);
    let connect = |holder: &mut super::Peer, n: u16, ms: u64| connect_numbered(holder, n, at(ms));
    let closed = |outputs: &[Output], conn| outputs.contains(&Output::Close { conn });
    let refused = |outputs: &[Output]| {
        sent(outputs).iter().any(|m| matches!(m, Message::Error { code: ErrorCode::Overloaded, .. }))
    };
    let slots = u16::try_from(INBOUND_PEERS_MAX).expect("fits");
    for n in 1..=slots {
        let (conn, outputs) = connect(&mut holder, n, 0);
        assert!(!closed(&outputs, conn), "slot {n} is free: {outputs:?}");
    }

    // Every slot exchanged data lately: a newcomer is let in only to ask for the manifest.
    let (asker, outputs) = connect(&mut holder, slots + 1, 100);
    assert!(!closed(&outputs, asker) && !refused(&outputs), "{outputs:?}");
    let answered =
        step(&mut holder, at(200), Input::Message { conn: asker, message: Message::GetManifest { file_id: id } });
    let messages = sent(&answered);
    assert_eq!(messages.len(), 2, "the manifest and the refusal, no bitfield: {answered:?}");
    assert_eq!(messages[0], &Message::Manifest { manifest: Box::new(manifest.clone()) });
    assert!(refused(&answered) && closed(&answered, asker), "{answered:?}");

    // One that knows the manifest already gets the refusal at its first message.
    let (knower, _) = connect(&mut holder, slots + 2, 300);
    let bitfield = Message::Bitfield { file_id: id, have: crate::Bitfield::new(4) };
    let turned = step(&mut holder, at(400), Input::Message { conn: knower, message: bitfield });
    assert_eq!(sent(&turned).len(), 1, "{turned:?}");
    assert!(refused(&turned) && closed(&turned, knower), "{turned:?}");

    // At most INBOUND_COURTESY_MAX wait at once, then INBOUND_REFERRALS_MAX to be referred;
    // the next is refused as it connects, and the silent ones are closed once their time is
    // up, the one that never said `Hello` too.
    let courtesy = u16::try_from(INBOUND_COURTESY_MAX + INBOUND_REFERRALS_MAX).expect("fits");
    let mut silent: Vec<crate::ConnId> = (1..courtesy).map(|i| connect(&mut holder, slots + 10 + i, 500).0).collect();
    let mute = crate::ConnId::Inbound(u64::from(slots + 10));
    let (remote, peer_id) = (std::net::SocketAddr::from(([10, 2, 0, 1], 40_000)), crate::PeerId::from_seed(999));
    step(&mut holder, at(500), Input::Connected { conn: mute, remote, peer_id });
    silent.push(mute);
    let (late, outputs) = connect(&mut holder, slots + 10 + courtesy, 500);
    assert!(refused(&outputs) && closed(&outputs, late), "{outputs:?}");
    let due = 500 + (INBOUND_COURTESY_TIMEOUT + CONNECTION_CHECK_INTERVAL).as_millis() as u64;
    let timed_out = step(&mut holder, at(due), Input::Timeout);
    assert!(silent.iter().all(|conn| closed(&timed_out, *conn)), "{timed_out:?}");
    let (again, outputs) = connect(&mut holder, slots + 10 + courtesy + 1, due);
    assert!(!closed(&outputs, again), "room for a newcomer's ask again: {outputs:?}");
}

#[test]
fn a_download_whose_hashing_fell_behind_resumes_as_the_hashes_come_in() {
    // More chunks than may be active at once, and every hash held back: the downloader fills
    // its active chunks and waits. As soon as the hashes arrive it must start the rest itself;
    // nothing else wakes it (the seeder has nothing more to say).
    let mut h = Harness::new(3);
    let chunks = CHUNKS_ACTIVE_PER_FILE_MAX + 8;
    let (bytes, manifest) = file(chunks * 16 * KIB, 16 * 1024, 5);
    let id = manifest.file_id();
    let (seeder, leecher) = (h.add_peer(1, None), h.add_peer(2, None));
    h.share(seeder, &manifest, &bytes, None);
    h.hold_hashes(leecher);
    h.run_for(Duration::from_millis(10));
    get(&mut h, leecher, &manifest);
    h.run_for(Duration::from_secs(2));
    let requested =
        |h: &Harness| h.events_of(leecher).filter(|(_, _, e)| matches!(e, Event::ChunkRequested { .. })).count();
    assert_eq!(requested(&h), CHUNKS_ACTIVE_PER_FILE_MAX, "no chunk starts while the active ones wait for hashes");
    h.release_hashes(leecher);
    h.run_until(Duration::from_secs(1), |h| h.completed(leecher, id));
    assert_eq!(h.stored(leecher, id), Some(&bytes[..]));
}

#[test]
fn past_its_courtesies_a_full_holder_refers_a_newcomer_to_peers_of_its_file_instead_of_the_manifest() {
    use crate::limits::{INBOUND_COURTESY_MAX, INBOUND_PEERS_MAX, PEX_INTRODUCTION_PEERS_MAX};
    use crate::machine::{Input, Output};
    use crate::wire::{ErrorCode, Message};
    let (mut holder, manifest) = seeding(4, 24);
    let id = manifest.file_id();
    let at = |ms| Time::from_millis(ms);
    let connect = |holder: &mut super::Peer, n: u16, ms: u64| connect_numbered(holder, n, at(ms)).0;
    // Every slot is taken by a downloader of the file, which knows its manifest.
    let slots = u16::try_from(INBOUND_PEERS_MAX).expect("fits");
    for n in 1..=slots {
        let conn = connect(&mut holder, n, 0);
        let bitfield = Message::Bitfield { file_id: id, have: crate::Bitfield::new(4) };
        step(&mut holder, at(0), Input::Message { conn, message: bitfield });
    }
    let courtesy = u16::try_from(INBOUND_COURTESY_MAX).expect("fits");
    for n in 1..=courtesy {
        connect(&mut holder, slots + n, 100);
    }
    let referred = connect(&mut holder, slots + courtesy + 1, 100);
    let answered =
        step(&mut holder, at(200), Input::Message { conn: referred, message: Message::GetManifest { file_id: id } });
    let messages = sent(&answered);
    assert_eq!(messages.len(), 2, "peers of the file and the refusal, no manifest: {answered:?}");
    let Message::Peers { file_id, peers } = messages[0] else { panic!("a referral first: {answered:?}") };
    assert_eq!((*file_id, peers.len()), (id, PEX_INTRODUCTION_PEERS_MAX));
    let slot_holder =
        |p: &&crate::wire::PeerAddr| p.addr.port() == 40_000 && p.addr.ip().to_string().starts_with("10.1.0.");
    assert!(peers.iter().all(|p| slot_holder(&p)), "only peers that know the file: {peers:?}");
    assert!(matches!(messages[1], Message::Error { code: ErrorCode::Overloaded, .. }), "{answered:?}");
    assert!(answered.contains(&Output::Close { conn: referred }), "{answered:?}");
}

#[test]
fn a_download_asks_another_ready_holder_for_the_manifest_at_once_when_the_one_asked_cannot_send_it() {
    use crate::machine::{Input, Output};
    use crate::wire::{ErrorCode, Hello, Message, PeerAddr, Role};
    let named =
        |n: u8| PeerAddr { peer_id: crate::PeerId([n; 16]), addr: std::net::SocketAddr::from(([10, 0, 0, n], 7000)) };
    let holders = [named(2), named(3), named(4)];
    let (mut peer, conns) = dialling_named_holders(&holders, 16 * KIB);
    let mut asked = Vec::new();
    for (conn, holder) in conns.iter().zip(&holders) {
        let conn = *conn;
        step(&mut peer, Time::from_millis(10), Input::Connected { conn, remote: holder.addr, peer_id: holder.peer_id });
        let hello = Message::Hello(Hello::new(Role::Peer, holder.peer_id, 7000));
        let outputs = step(&mut peer, Time::from_millis(10), Input::Message { conn, message: hello });
        if sent(&outputs).iter().any(|m| matches!(m, Message::GetManifest { .. })) {
            asked.push(conn);
        }
    }
    assert_eq!(asked, vec![conns[0]], "one holder is asked at a time");
    let file_id = *peer.files.keys().next().expect("the download");
    let asked_of = |outputs: &[Output]| {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Send { conn, message: Message::GetManifest { file_id: asked } } if *asked == file_id => {
                    Some(*conn)
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // The first does not know the file after all: another is asked at once.
    let unknown = Message::error(Some(file_id), ErrorCode::UnknownFile, "file not known here");
    let outputs = step(&mut peer, Time::from_millis(30), Input::Message { conn: conns[0], message: unknown });
    let second = asked_of(&outputs);
    assert!(second.len() == 1 && second[0] != conns[0], "{outputs:?}");
    // That one is too busy to send it: the last is asked at once.
    let busy = Message::error(None, ErrorCode::Overloaded, "too many connections");
    let outputs = step(&mut peer, Time::from_millis(40), Input::Message { conn: second[0], message: busy });
    assert!(outputs.contains(&Output::Close { conn: second[0] }), "{outputs:?}");
    let third = asked_of(&outputs);
    assert!(third.len() == 1 && third[0] != conns[0] && third[0] != second[0], "{outputs:?}");
}

/// A peer that asked the tracker for `file` and was named `holder`; returns it with its
/// outbound connection to the holder, before the connection opens.
fn dialling_a_named_holder(holder: crate::wire::PeerAddr, chunk_bytes: usize) -> (super::Peer, crate::ConnId) {
    let (peer, conns) = dialling_named_holders(&[holder], chunk_bytes);
    (peer, conns[0])
}

/// A peer that asked the tracker for a file of one piece of four chunks of `chunk_bytes` and was named
/// `holders` (each holding all of it); returns it with its outbound connections to them, in
/// order, before they open.
fn dialling_named_holders(holders: &[crate::wire::PeerAddr], chunk_bytes: usize) -> (super::Peer, Vec<crate::ConnId>) {
    use crate::machine::{Input, Output};
    use crate::wire::{Hello, Message, Role};
    let (_, manifest) = file(4 * chunk_bytes, 4 * chunk_bytes as u32, 21);
    let id = manifest.file_id();
    let tracker: std::net::SocketAddr = "10.0.0.1:7000".parse().expect("valid address");
    let mut peer = super::Peer::new(super::PeerConfig::new(crate::PeerId::from_seed(5), 5, tracker, 7001));
    command(&mut peer, Time::ZERO, Command::Get { file_id: id, resume: None });
    let to_tracker = step(&mut peer, Time::ZERO, Input::Timeout)
        .into_iter()
        .find_map(|o| match o {
            Output::Connect { conn, .. } => Some(conn),
            _ => None,
        })
        .expect("the peer connects to the tracker");
    step(
        &mut peer,
        Time::from_millis(1),
        Input::Connected { conn: to_tracker, remote: tracker, peer_id: crate::PeerId([1; 16]) },
    );
    let hello = Hello::new(Role::Tracker, crate::PeerId([1; 16]), 0);
    step(&mut peer, Time::from_millis(2), Input::Message { conn: to_tracker, message: Message::Hello(hello) });
    let full = crate::Bitfield::full(4);
    let holders_list = crate::wire::Holders::pack(4, holders.iter().map(|h| (*h, full.as_bytes())));
    let answer = Message::Located { file_id: id, manifest: None, holders: holders_list };
    let outputs = step(&mut peer, Time::from_millis(3), Input::Message { conn: to_tracker, message: answer });
    let dialled = holders
        .iter()
        .map(|holder| {
            outputs
                .iter()
                .find_map(|o| match o {
                    Output::Connect { conn, addr } if *addr == holder.addr => Some(*conn),
                    _ => None,
                })
                .expect("the peer dials every holder")
        })
        .collect();
    (peer, dialled)
}

#[test]
fn a_holder_that_answers_the_manifest_ask_then_refuses_is_dialled_again_only_after_the_back_off() {
    use crate::limits::REMOTE_RETRY_DELAY;
    use crate::machine::{Input, Output};
    use crate::wire::{ErrorCode, Hello, Message, Role};
    let holder =
        crate::wire::PeerAddr { peer_id: crate::PeerId([7; 16]), addr: "10.0.0.2:7000".parse().expect("valid") };
    let (mut peer, conn) = dialling_a_named_holder(holder, 16 * KIB);
    step(&mut peer, Time::from_millis(10), Input::Connected { conn, remote: holder.addr, peer_id: holder.peer_id });
    let hello = Message::Hello(Hello::new(Role::Peer, holder.peer_id, 7000));
    let asked = step(&mut peer, Time::from_millis(20), Input::Message { conn, message: hello });
    assert!(sent(&asked).iter().any(|m| matches!(m, Message::GetManifest { .. })), "{asked:?}");
    let busy = Message::error(None, ErrorCode::Overloaded, "too many connections");
    let refused = step(&mut peer, Time::from_millis(30), Input::Message { conn, message: busy });
    assert!(refused.contains(&Output::Close { conn }), "{refused:?}");
    let retry_ms = 10 + REMOTE_RETRY_DELAY.as_millis() as u64;
    assert!(!peer.remotes.may_open(holder.addr, Time::from_millis(retry_ms - 1)));
    assert!(peer.remotes.may_open(holder.addr, Time::from_millis(retry_ms)), "counted from when it opened");
}

#[test]
fn a_holder_whose_key_proves_another_id_than_the_tracker_named_is_dropped_unbanned() {
    use crate::machine::{Event, Input, Output};
    let holder =
        crate::wire::PeerAddr { peer_id: crate::PeerId([7; 16]), addr: "10.0.0.2:7000".parse().expect("valid") };
    let (mut peer, conn) = dialling_a_named_holder(holder, 16 * KIB);
    let impostor = crate::PeerId([8; 16]);
    let outputs =
        step(&mut peer, Time::from_millis(10), Input::Connected { conn, remote: holder.addr, peer_id: impostor });
    assert!(outputs.iter().any(|o| matches!(o, Output::Close { conn: c } if *c == conn)), "{outputs:?}");
    assert!(sent(&outputs).is_empty(), "no hello to an impostor: {outputs:?}");
    assert!(outputs.iter().any(|o| matches!(o, Output::Event(Event::ProtocolViolation { .. }))));
    assert!(!outputs.iter().any(|o| matches!(o, Output::Event(Event::PeerBanned { .. }))), "nobody is banned");
}

#[test]
fn a_hello_claiming_another_id_than_the_key_proved_is_a_violation() {
    use crate::machine::{Event, Input, Output};
    use crate::wire::{Hello, Message, Role};
    let holder =
        crate::wire::PeerAddr { peer_id: crate::PeerId([7; 16]), addr: "10.0.0.2:7000".parse().expect("valid") };
    let (mut peer, conn) = dialling_a_named_holder(holder, 16 * KIB);
    let opened =
        step(&mut peer, Time::from_millis(10), Input::Connected { conn, remote: holder.addr, peer_id: holder.peer_id });
    assert!(matches!(sent(&opened)[..], [Message::Hello(_)]), "{opened:?}");
    let claim = Hello::new(Role::Peer, crate::PeerId([9; 16]), 0);
    let outputs = step(&mut peer, Time::from_millis(20), Input::Message { conn, message: Message::Hello(claim) });
    assert!(outputs.iter().any(|o| matches!(o, Output::Close { conn: c } if *c == conn)), "{outputs:?}");
    assert!(outputs.iter().any(|o| matches!(o, Output::Event(Event::ProtocolViolation { .. }))));
}

#[test]
fn views_show_a_partial_share_a_download_waiting_for_a_missing_chunk_and_the_connections() {
    use super::{FileState, FileView};
    let mut h = Harness::new(4);
    let (bytes, manifest) = file(4 * 64 * KIB, 64 * 1024, 9);
    let id = manifest.file_id();
    let [seeder, downloader] = [21, 22].map(|seed| h.add_peer(seed, Some(64 * KIB as u64)));
    h.share(seeder, &manifest, &bytes, Some(&[0, 1, 2]));
    let states = |h: &Harness, node| -> Vec<(FileState, u32, u32)> {
        h.peer(node).file_views().iter().map(|f: &FileView| (f.state, f.have.count(), f.have.len())).collect()
    };
    h.run_for(Duration::from_millis(10));
    assert_eq!(states(&h, seeder), vec![(FileState::Serving, 12, 16)], "a partial share");
    get(&mut h, downloader, &manifest);
    h.run_until(Duration::from_secs(1), |h| !h.peer(downloader).file_views().is_empty());
    let unknown = h.peer(downloader).file_views();
    assert_eq!(
        (unknown[0].state, unknown[0].name.as_deref(), unknown[0].have.len()),
        (FileState::Downloading, None, 0)
    );
    h.run_until(Duration::from_secs(10), |h| h.peer(downloader).have(&id).is_some_and(|have| have.count() == 12));
    assert_eq!(states(&h, downloader), vec![(FileState::Downloading, 12, 16)], "piece 3 has no holder");
    let remotes = h.peer(downloader).remote_views();
    assert!(remotes.iter().any(|r| r.ready && r.addr == h.addr(seeder) && r.peer_id.is_some()), "{remotes:?}");
    assert_eq!(h.peer(downloader).file_views()[0].name.as_deref(), Some(manifest.name()));
}

/// The list of the chunks of a file of one piece, as its holder sends it before the first
/// `Data` of the piece on a connection.
fn list_of_the_piece(bytes: &[u8], manifest: &crate::Manifest) -> crate::wire::Message {
    let digests = manifest
        .chunks()
        .map(|c| {
            let at = manifest.chunk_offset(c) as usize;
            crate::Digest::of(&bytes[at..at + manifest.chunk_len(c) as usize])
        })
        .collect();
    crate::wire::Message::Chunks { file_id: manifest.file_id(), piece: PieceIndex(0), digests }
}

/// A peer whose connection to the holder the tracker named for its file of four 16 KiB
/// chunks is open (at 10 ms, before any `Hello`): the peer, the connection, the holder, and the
/// file's bytes and manifest.
fn connected_to_a_named_holder() -> (super::Peer, crate::ConnId, crate::wire::PeerAddr, Vec<u8>, crate::Manifest) {
    connected_to_a_named_holder_of(16 * KIB)
}

/// [`connected_to_a_named_holder`], the file's four chunks of `chunk_bytes`.
fn connected_to_a_named_holder_of(
    chunk_bytes: usize,
) -> (super::Peer, crate::ConnId, crate::wire::PeerAddr, Vec<u8>, crate::Manifest) {
    let holder =
        crate::wire::PeerAddr { peer_id: crate::PeerId([7; 16]), addr: "10.0.0.2:7000".parse().expect("valid") };
    let (mut peer, conn) = dialling_a_named_holder(holder, chunk_bytes);
    // The file `dialling_a_named_holder` asks for.
    let (bytes, manifest) = file(4 * chunk_bytes, 4 * chunk_bytes as u32, 21);
    let connected = crate::machine::Input::Connected { conn, remote: holder.addr, peer_id: holder.peer_id };
    step(&mut peer, Time::from_millis(10), connected);
    (peer, conn, holder, bytes, manifest)
}

#[test]
fn a_busy_remote_taking_room_calls_gives_up_every_chunk_and_is_asked_again_only_when_it_calls() {
    use crate::machine::{Input, Output};
    use crate::wire::{Hello, Message, RejectReason, Role, PROTOCOL_VERSION};
    let (mut peer, conn, holder, bytes, manifest) = connected_to_a_named_holder();
    let id = manifest.file_id();
    let at = Time::from_millis;
    let hello = Hello {
        version: PROTOCOL_VERSION,
        role: Role::Peer,
        peer_id: holder.peer_id,
        listen_port: 7000,
        listen_ip: None,
        room_calls: true,
        takes_pushes: false,
        request_batches: true,
        withdrawals: false,
    };
    let hear = |peer: &mut super::Peer, ms, message| step(peer, at(ms), Input::Message { conn, message });
    hear(&mut peer, 20, Message::Hello(hello));
    hear(&mut peer, 21, Message::Manifest { manifest: Box::new(manifest.clone()) });
    let asked = hear(&mut peer, 22, Message::Bitfield { file_id: id, have: crate::Bitfield::full(4) });
    let requests = |outputs: &[Output]| -> Vec<u32> {
        sent(outputs)
            .iter()
            .flat_map(|m| match m {
                Message::Request { chunk, .. } => vec![chunk.0],
                Message::Requests { blocks, .. } => blocks.iter().map(|(chunk, _, _)| chunk.0).collect(),
                _ => Vec::new(),
            })
            .collect()
    };
    // As many chunks as a remote not measured yet may claim (of the four).
    let chunks = requests(&asked);
    assert_eq!(chunks.len(), super::scheduler::claims_for(0, 16 * 1024).min(4), "its claims: {asked:?}");
    // One `Busy` answers them all, sent with the refused one: nothing is cancelled (they were
    // dropped), nothing asked.
    let first = ChunkIndex(chunks[0]);
    let busy = Message::Reject { file_id: id, chunk: first, offset: 0, reason: RejectReason::Busy };
    let refused = hear(&mut peer, 30, busy);
    assert!(sent(&refused).is_empty(), "{refused:?}");
    // Neither time nor a block it read before the refusal brings a new request.
    let later = step(&mut peer, at(1_000), Input::Timeout);
    assert!(requests(&later).is_empty(), "{later:?}");
    let block_of = |chunk: u32| {
        let at = chunk as usize * 16 * KIB;
        bytes::Bytes::copy_from_slice(&bytes[at..at + 16 * KIB])
    };
    let read_before = chunks[1];
    hear(&mut peer, 1_050, list_of_the_piece(&bytes, &manifest));
    let data = Message::Data { file_id: id, chunk: ChunkIndex(read_before), offset: 0, bytes: block_of(read_before) };
    let data = hear(&mut peer, 1_100, data);
    assert!(requests(&data).is_empty(), "{data:?}");
    // Its call does: the chunk it gave up is asked for again, not the one that came.
    let called = hear(&mut peer, 1_200, Message::Room);
    let again = requests(&called);
    assert!(again.contains(&chunks[0]) && !again.contains(&read_before), "{called:?}");
    // Its blocks come and bring the requests of the chunks still missing (a few at a time: a
    // remote whose rate is not measured claims few), until every chunk is here or asked for.
    let deliver = |peer: &mut super::Peer, ms, chunk: u32| {
        let data = Message::Data { file_id: id, chunk: ChunkIndex(chunk), offset: 0, bytes: block_of(chunk) };
        requests(&hear(peer, ms, data))
    };
    let mut here = vec![read_before];
    let mut rest = Vec::new();
    for chunk in again {
        rest.extend(deliver(&mut peer, 1_300, chunk));
        here.push(chunk);
    }
    while here.len() + rest.len() < 4 {
        let chunk = rest.remove(0);
        rest.extend(deliver(&mut peer, 1_350, chunk));
        here.push(chunk);
    }
    // Refused again, then the blocks it read before the refusal come: called with nothing left
    // to ask of it, the room is passed on.
    let busy = Message::Reject { file_id: id, chunk: ChunkIndex(rest[0]), offset: 0, reason: RejectReason::Busy };
    hear(&mut peer, 1_450, busy);
    for chunk in rest {
        hear(
            &mut peer,
            1_460,
            Message::Data { file_id: id, chunk: ChunkIndex(chunk), offset: 0, bytes: block_of(chunk) },
        );
    }
    let passed = hear(&mut peer, 1_500, Message::Room);
    assert!(matches!(sent(&passed)[..], [Message::Pass]), "{passed:?}");
}

#[test]
fn a_seeder_serves_the_blocks_of_a_requests_message_in_order_and_refuses_an_oversized_one() {
    use crate::limits::REQUESTS_PER_MESSAGE_MAX;
    use crate::machine::{Event, Input, Output};
    use crate::wire::{Hello, Message, Role};
    let (mut peer, manifest) = seeding(32, 23);
    let id = manifest.file_id();
    let open = |peer: &mut super::Peer, n: u64| {
        let conn = crate::ConnId::Inbound(n);
        let remote = std::net::SocketAddr::from(([10, 0, 0, 10 + n as u8], 7000));
        let peer_id = crate::PeerId([n as u8; 16]);
        step(peer, Time::from_millis(10 * n), Input::Connected { conn, remote, peer_id });
        let hello = Message::Hello(Hello::new(Role::Peer, peer_id, 7000));
        step(peer, Time::from_millis(10 * n + 1), Input::Message { conn, message: hello });
        conn
    };
    let reads = |outputs: &[Output]| -> Vec<u32> {
        (outputs.iter())
            .filter_map(|o| match o {
                Output::ReadBlock { chunk, .. } => Some(chunk.0),
                _ => None,
            })
            .collect()
    };
    let conn = open(&mut peer, 1);
    let blocks = vec![(ChunkIndex(3), 0, 16 * 1024), (ChunkIndex(1), 0, 16 * 1024), (ChunkIndex(2), 0, 16 * 1024)];
    let asked = step(
        &mut peer,
        Time::from_millis(12),
        Input::Message { conn, message: Message::Requests { file_id: id, blocks } },
    );
    assert_eq!(reads(&asked), [3, 1, 2], "each block read, in the order asked: {asked:?}");

    let violated = |outputs: &[Output], conn| {
        outputs.iter().any(|o| matches!(o, Output::Event(Event::ProtocolViolation { .. })))
            && outputs.iter().any(|o| matches!(o, Output::Close { conn: c } if *c == conn))
    };
    let conn = open(&mut peer, 2);
    let blocks: Vec<_> = (0..=REQUESTS_PER_MESSAGE_MAX as u32).map(|p| (ChunkIndex(p), 0, 16 * 1024)).collect();
    let oversized = step(
        &mut peer,
        Time::from_millis(22),
        Input::Message { conn, message: Message::Requests { file_id: id, blocks } },
    );
    assert!(violated(&oversized, conn), "{oversized:?}");
    assert!(reads(&oversized).is_empty(), "nothing of it is read: {oversized:?}");
    let conn = open(&mut peer, 3);
    let single = Message::Requests { file_id: id, blocks: vec![(ChunkIndex(0), 0, 16 * 1024)] };
    let outputs = step(&mut peer, Time::from_millis(32), Input::Message { conn, message: single });
    assert!(violated(&outputs, conn), "one block goes in a Request: {outputs:?}");
}

#[test]
fn a_pushed_block_counts_as_our_request_and_one_we_would_not_ask_for_is_cancelled() {
    use crate::machine::{Input, Output};
    use crate::wire::{Hello, Message, Role};
    let (mut peer, conn, holder, bytes, manifest) = connected_to_a_named_holder();
    let id = manifest.file_id();
    let at = Time::from_millis;
    let hear = |peer: &mut super::Peer, ms, message| step(peer, at(ms), Input::Message { conn, message });
    hear(&mut peer, 20, Message::Hello(Hello { room_calls: true, ..Hello::new(Role::Peer, holder.peer_id, 7000) }));
    // Before the manifest is known nothing can be taken on our behalf.
    let pushed =
        |chunk: u32, offset: u32, len: u32| Message::Pushed { file_id: id, chunk: ChunkIndex(chunk), offset, len };
    let cancel = |chunk: u32, offset: u32| Message::Cancel { file_id: id, chunk: ChunkIndex(chunk), offset };
    let early = hear(&mut peer, 21, pushed(2, 0, 16 * 1024));
    assert_eq!(sent(&early), vec![&cancel(2, 0)]);
    hear(&mut peer, 22, Message::Manifest { manifest: Box::new(manifest.clone()) });
    let taken = hear(&mut peer, 23, pushed(2, 0, 16 * 1024));
    assert!(sent(&taken).is_empty(), "{taken:?}");
    // A second push of the same block, a range that is no block, a chunk past the end and
    // another file are all cancelled, and none is a protocol violation.
    let unknown = crate::FileId(crate::ids::Digest([9; 32]));
    for (ms, message, answer) in [
        (24, pushed(2, 0, 16 * 1024), cancel(2, 0)),
        (25, pushed(1, 0, 1), cancel(1, 0)),
        (26, pushed(1, 7, 16 * 1024), cancel(1, 7)),
        (27, pushed(4, 0, 16 * 1024), cancel(4, 0)),
        (
            28,
            Message::Pushed { file_id: unknown, chunk: ChunkIndex(0), offset: 0, len: 1 },
            Message::Cancel { file_id: unknown, chunk: ChunkIndex(0), offset: 0 },
        ),
    ] {
        let outputs = hear(&mut peer, ms, message);
        assert_eq!(sent(&outputs), vec![&answer], "{outputs:?}");
    }
    // Its bitfield: the other chunks are asked for, not the pushed one.
    let asked = hear(&mut peer, 30, Message::Bitfield { file_id: id, have: crate::Bitfield::full(4) });
    let requested: Vec<u32> = sent(&asked)
        .iter()
        .filter_map(|m| match m {
            Message::Request { chunk, .. } => Some(chunk.0),
            _ => None,
        })
        .collect();
    // As many as a remote not measured yet may claim (of the four), the pushed one among them.
    assert!(!requested.contains(&2), "{asked:?}");
    assert_eq!(requested.len(), super::scheduler::claims_for(0, 16 * 1024).min(4) - 1, "{asked:?}");
    // The pushed block is taken as a requested one.
    let block = bytes::Bytes::copy_from_slice(&bytes[2 * 16 * KIB..3 * 16 * KIB]);
    hear(&mut peer, 35, list_of_the_piece(&bytes, &manifest));
    let data = hear(&mut peer, 40, Message::Data { file_id: id, chunk: ChunkIndex(2), offset: 0, bytes: block });
    assert!(data.iter().any(|o| matches!(o, Output::WriteBlock { chunk: ChunkIndex(2), .. })), "{data:?}");
}

#[test]
fn a_whole_file_seeder_takes_a_newcomers_first_request_on_its_behalf() {
    let mut h = Harness::new(3);
    let (bytes, manifest) = file(4 * 16 * KIB, 16 * 1024, 9);
    let (seeder, downloader) = (h.add_peer(1, None), h.add_peer(2, None));
    h.share(seeder, &manifest, &bytes, None);
    fetch(&mut h, downloader, &manifest, &bytes, Duration::from_secs(10));
    let kinds = |node: NodeIx, kind: &str| h.received.iter().filter(|(_, n, k)| *n == node && *k == kind).count();
    // The seeder offers one chunk at a time; the first goes out with its offer, unasked.
    assert_eq!(kinds(downloader, "pushed"), 1);
    assert_eq!(h.requested.iter().filter(|(_, to)| *to == seeder).count(), 3, "blocks asked for");
    assert_eq!(kinds(seeder, "cancel"), 0);
}

/// A peer fetching a file of four `chunk_bytes` chunks from one holder that takes part in room
/// calls (and answers `Withdraw` if `withdrawals`): it asked for chunk 0, then for chunk 1, and
/// the holder's `Busy` for chunk 0 crossed the second request. Returns the peer, the connection, the file's bytes and
/// manifest, and the outputs of the refusal.
fn a_busy_crossed_by_a_later_request(
    withdrawals: bool,
    chunk_bytes: usize,
) -> (super::Peer, crate::ConnId, Vec<u8>, crate::Manifest, Vec<crate::machine::Output>) {
    use crate::wire::{Hello, Message, RejectReason, Role};
    let (mut peer, conn, holder, bytes, manifest) = connected_to_a_named_holder_of(chunk_bytes);
    let id = manifest.file_id();
    let at = Time::from_millis;
    let hear =
        |peer: &mut super::Peer, ms, message| step(peer, at(ms), crate::machine::Input::Message { conn, message });
    let hello = Hello { room_calls: true, withdrawals, ..Hello::new(Role::Peer, holder.peer_id, 7000) };
    hear(&mut peer, 20, Message::Hello(hello));
    hear(&mut peer, 21, Message::Manifest { manifest: Box::new(manifest.clone()) });
    let mut have = crate::Bitfield::new(4);
    have.set(ChunkIndex(0));
    let asked = hear(&mut peer, 22, Message::Bitfield { file_id: id, have });
    assert!(matches!(sent(&asked)[..], [Message::Request { chunk: ChunkIndex(0), .. }]), "{asked:?}");
    // The remote gets chunk 1 and is asked for it: a request sent after the first one.
    let later = hear(&mut peer, 25, Message::Have { file_id: id, chunk: ChunkIndex(1) });
    assert!(matches!(sent(&later)[..], [Message::Request { chunk: ChunkIndex(1), .. }]), "{later:?}");
    // Its `Busy` for the first crossed the second, which may have found room after all.
    let busy = Message::Reject { file_id: id, chunk: ChunkIndex(0), offset: 0, reason: RejectReason::Busy };
    let refused = hear(&mut peer, 30, busy);
    assert!(!refused.iter().any(|o| matches!(o, crate::machine::Output::Close { .. })), "{refused:?}");
    (peer, conn, bytes, manifest, refused)
}

#[test]
fn a_busy_for_an_earlier_request_cancels_the_requests_sent_after_it_which_crossed_it() {
    use crate::wire::Message;
    // A remote that does not answer `Withdraw`; and a block whose duplicate costs less than
    // the round trip a withdrawal waits.
    for (withdrawals, chunk_bytes) in [(false, 128 * KIB), (true, 64 * KIB)] {
        let (_, conn, _, manifest, refused) = a_busy_crossed_by_a_later_request(withdrawals, chunk_bytes);
        let cancel = Message::Cancel { file_id: manifest.file_id(), chunk: ChunkIndex(1), offset: 0 };
        assert_eq!(sent_to(&refused, conn), [&cancel], "{refused:?}");
    }
}

#[test]
fn a_busy_crossed_by_a_later_request_withdraws_it_and_its_block_is_taken_when_it_comes() {
    use crate::machine::{Input, Output};
    use crate::wire::Message;
    let (mut peer, conn, bytes, manifest, refused) = a_busy_crossed_by_a_later_request(true, 128 * KIB);
    let id = manifest.file_id();
    // The remote may have been calling us when the request arrived and read its block: withdrawn,
    // the chunk stays with it until it answers.
    assert_eq!(sent_to(&refused, conn), [&Message::Withdraw { file_id: id, chunk: ChunkIndex(1), offset: 0 }]);
    let len = manifest.chunk_len(manifest.chunk(1).expect("chunk 1")) as usize;
    let start = manifest.chunk_len(manifest.chunk(0).expect("chunk 0")) as usize;
    let block = bytes::Bytes::copy_from_slice(&bytes[start..start + len]);
    let list = list_of_the_piece(&bytes, &manifest);
    step(&mut peer, Time::from_millis(35), Input::Message { conn, message: list });
    let message = Message::Data { file_id: id, chunk: ChunkIndex(1), offset: 0, bytes: block };
    let data = step(&mut peer, Time::from_millis(40), Input::Message { conn, message });
    assert!(data.iter().any(|o| matches!(o, Output::WriteBlock { chunk: ChunkIndex(1), .. })), "{data:?}");
}

/// A peer fetching a 4-chunk file whose chunk 0 only two remotes hold, A (dialled) and B
/// (inbound), both answering `Withdraw`: it asked A for the chunk, and A let the request wait
/// past its stall deadline. Returns the peer, A's and B's connections, the file's bytes and
/// the outputs of the stall.
fn a_request_stalled_with_a_second_holder(
) -> (super::Peer, crate::ConnId, crate::ConnId, Vec<u8>, crate::Manifest, Vec<crate::machine::Output>) {
    use crate::machine::Input;
    use crate::wire::{Hello, Message, Role};
    let (mut peer, a, holder, bytes, manifest) = connected_to_a_named_holder();
    let id = manifest.file_id();
    let mut chunk_0 = crate::Bitfield::new(4);
    chunk_0.set(ChunkIndex(0));
    let hello = |peer_id| {
        Message::Hello(Hello { room_calls: true, withdrawals: true, ..Hello::new(Role::Peer, peer_id, 7000) })
    };
    let hear =
        |peer: &mut super::Peer, ms, conn, message| step(peer, Time::from_millis(ms), Input::Message { conn, message });
    hear(&mut peer, 20, a, hello(holder.peer_id));
    hear(&mut peer, 21, a, Message::Manifest { manifest: Box::new(manifest.clone()) });
    let asked = hear(&mut peer, 22, a, Message::Bitfield { file_id: id, have: chunk_0.clone() });
    assert!(matches!(sent(&asked)[..], [Message::Request { chunk: ChunkIndex(0), .. }]), "{asked:?}");
    let b = crate::ConnId::Inbound(1);
    let (b_addr, b_id) = (std::net::SocketAddr::from(([10, 0, 0, 3], 7000)), crate::PeerId([8; 16]));
    step(&mut peer, Time::from_millis(30), Input::Connected { conn: b, remote: b_addr, peer_id: b_id });
    hear(&mut peer, 31, b, hello(b_id));
    let b_asked = hear(&mut peer, 32, b, Message::Bitfield { file_id: id, have: chunk_0 });
    assert!(sent_to(&b_asked, b).is_empty(), "chunk 0 is A's: {b_asked:?}");
    let stall = step(&mut peer, Time::from_millis(22) + REQUEST_TIMEOUT + Duration::from_millis(100), Input::Timeout);
    (peer, a, b, bytes, manifest, stall)
}

/// The messages about blocks (requests, cancels, withdrawals) among `outputs` sent to `to`.
fn sent_to(outputs: &[crate::machine::Output], to: crate::ConnId) -> Vec<&crate::wire::Message> {
    use crate::wire::Message;
    outputs
        .iter()
        .filter_map(|o| match o {
            crate::machine::Output::Send { conn, message } if *conn == to => Some(message),
            _ => None,
        })
        .filter(|m| m.block_requests() > 0 || matches!(m, Message::Cancel { .. } | Message::Withdraw { .. }))
        .collect()
}

#[test]
fn a_stalled_request_is_withdrawn_and_its_chunk_asked_of_another_holder_only_once_it_cannot_come() {
    use crate::machine::Input;
    use crate::wire::{Message, RejectReason};
    let (mut peer, a, b, _, manifest, stall) = a_request_stalled_with_a_second_holder();
    let id = manifest.file_id();
    // Its block may be on its way from A (a block tells nothing of itself until it is all in).
    assert_eq!(sent_to(&stall, a), [&Message::Withdraw { file_id: id, chunk: ChunkIndex(0), offset: 0 }], "{stall:?}");
    assert!(sent_to(&stall, b).is_empty(), "{stall:?}");
    // A answers that it will not come: B is asked.
    let withdrawn = Message::Reject { file_id: id, chunk: ChunkIndex(0), offset: 0, reason: RejectReason::Withdrawn };
    let answered = step(&mut peer, Time::from_millis(10_200), Input::Message { conn: a, message: withdrawn });
    assert!(matches!(sent_to(&answered, b)[..], [Message::Request { chunk: ChunkIndex(0), .. }]), "{answered:?}");
    assert!(sent_to(&answered, a).is_empty(), "{answered:?}");
}

#[test]
fn a_withdrawn_request_whose_block_comes_is_asked_of_nobody_else() {
    use crate::machine::{Input, Output};
    use crate::wire::Message;
    let (mut peer, a, b, bytes, manifest, stall) = a_request_stalled_with_a_second_holder();
    let id = manifest.file_id();
    assert!(sent_to(&stall, b).is_empty(), "{stall:?}");
    let block = bytes::Bytes::copy_from_slice(&bytes[..16 * KIB]);
    let list = list_of_the_piece(&bytes, &manifest);
    step(&mut peer, Time::from_millis(10_200), Input::Message { conn: a, message: list });
    let data = Message::Data { file_id: id, chunk: ChunkIndex(0), offset: 0, bytes: block };
    let arrived = step(&mut peer, Time::from_millis(10_200), Input::Message { conn: a, message: data });
    assert!(arrived.iter().any(|o| matches!(o, Output::WriteBlock { chunk: ChunkIndex(0), .. })), "{arrived:?}");
    assert!(sent_to(&arrived, b).is_empty(), "{arrived:?}");
    // Nor later, when its stall deadline would have passed again.
    let later = step(&mut peer, Time::from_millis(21_000), Input::Timeout);
    assert!(sent_to(&later, b).is_empty(), "{later:?}");
}

#[test]
fn a_withdrawal_is_answered_unless_the_block_is_being_read_or_sent_and_its_data_answers() {
    use crate::machine::{Completion, Input, Output};
    use crate::wire::{Hello, Message, RejectReason, Role};
    let (mut peer, manifest) = seeding(32, 24);
    let id = manifest.file_id();
    let conn = crate::ConnId::Inbound(1);
    let (remote, peer_id) = (std::net::SocketAddr::from(([10, 0, 0, 11], 7000)), crate::PeerId([1; 16]));
    step(&mut peer, Time::from_millis(10), Input::Connected { conn, remote, peer_id });
    let hello = Hello { withdrawals: true, request_batches: true, ..Hello::new(Role::Peer, peer_id, 7000) };
    step(&mut peer, Time::from_millis(11), Input::Message { conn, message: Message::Hello(hello) });
    let blocks: Vec<_> = (0..16).map(|p| (ChunkIndex(p), 0, 16 * 1024)).collect();
    let asked = step(
        &mut peer,
        Time::from_millis(12),
        Input::Message { conn, message: Message::Requests { file_id: id, blocks } },
    );
    let read: Vec<u32> = (asked.iter())
        .filter_map(|o| match o {
            Output::ReadBlock { chunk, .. } => Some(chunk.0),
            _ => None,
        })
        .collect();
    assert!(
        read.contains(&0) && read.contains(&1) && !read.contains(&15),
        "the first blocks are read, the rest wait: {asked:?}"
    );
    let withdraw = |chunk| Message::Withdraw { file_id: id, chunk: ChunkIndex(chunk), offset: 0 };
    let reading = step(&mut peer, Time::from_millis(13), Input::Message { conn, message: withdraw(0) });
    assert!(sent(&reading).is_empty(), "its Data answers: {reading:?}");
    // A block read and queued but not yet sent: its Data frame answers too, for a Reject would
    // overtake it (drivers send control frames ahead of queued Data).
    let block = bytes::Bytes::from(vec![0u8; 16 * 1024]);
    let result = Ok(block);
    let done = Completion::BlockRead { conn, file_id: id, chunk: ChunkIndex(1), offset: 0, result };
    let queued = step(&mut peer, Time::from_millis(13), Input::Completed(done));
    assert!(sent(&queued).iter().any(|m| matches!(m, Message::Data { chunk: ChunkIndex(1), .. })), "{queued:?}");
    let unsent = step(&mut peer, Time::from_millis(13), Input::Message { conn, message: withdraw(1) });
    assert!(sent(&unsent).is_empty(), "its queued Data answers: {unsent:?}");
    let waiting = step(&mut peer, Time::from_millis(14), Input::Message { conn, message: withdraw(15) });
    let answer = Message::Reject { file_id: id, chunk: ChunkIndex(15), offset: 0, reason: RejectReason::Withdrawn };
    assert_eq!(sent(&waiting), [&answer], "{waiting:?}");
    // Never asked for: nothing can come either.
    let unknown = step(&mut peer, Time::from_millis(15), Input::Message { conn, message: withdraw(20) });
    assert!(matches!(sent(&unknown)[..], [Message::Reject { reason: RejectReason::Withdrawn, .. }]), "{unknown:?}");
}

#[test]
fn a_withdrawal_left_unanswered_gives_the_chunk_up_at_the_next_deadline() {
    use crate::machine::Input;
    use crate::wire::Message;
    let (mut peer, a, b, _, manifest, stall) = a_request_stalled_with_a_second_holder();
    let id = manifest.file_id();
    assert!(sent_to(&stall, b).is_empty(), "{stall:?}");
    let given_up =
        step(&mut peer, Time::from_millis(22) + 2 * REQUEST_TIMEOUT + Duration::from_millis(200), Input::Timeout);
    assert_eq!(
        sent_to(&given_up, a),
        [&Message::Cancel { file_id: id, chunk: ChunkIndex(0), offset: 0 }],
        "{given_up:?}"
    );
    assert!(matches!(sent_to(&given_up, b)[..], [Message::Request { chunk: ChunkIndex(0), .. }]), "{given_up:?}");
}

#[test]
fn a_slow_holder_gives_the_chunks_it_has_not_started_up_to_a_fast_idle_one() {
    let mut h = Harness::new(21);
    let (bytes, manifest) = file(64 * 64 * KIB, 64 * 1024, 21);
    let id = manifest.file_id();
    let kib = KIB as u64;
    let (fast, slow, leecher) = (h.add_peer(1, Some(4096 * kib)), h.add_peer(2, Some(16 * kib)), h.add_peer(3, None));
    h.share(fast, &manifest, &bytes, None);
    h.share(slow, &manifest, &bytes, None);
    let took = fetch(&mut h, leecher, &manifest, &bytes, Duration::from_secs(120));
    // The slow holder (a chunk every 4 s) was asked for chunks while the fast one served the
    // rest; those it had not started were withdrawn and fetched from the fast one, idle by
    // then. Left with them, it takes 16 s.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(h.received.iter().any(|(_, to, kind)| *to == slow && *kind == "withdraw"), "nothing withdrawn");
    let from = verified_from(&h, leecher);
    assert_eq!(from.len(), manifest.chunk_count() as usize, "each chunk verified once: {from:?}");
    assert!(h.completed(leecher, id));
}

#[test]
fn a_slow_holder_gives_up_its_chunks_to_a_fast_idle_one_while_another_still_delivers() {
    let mut h = Harness::new(22);
    let (bytes, manifest) = file(64 * 64 * KIB, 64 * 1024, 22);
    let kib = KIB as u64;
    let fast = h.add_peer(1, Some(4096 * kib));
    let (medium, slow, leecher) = (h.add_peer(2, Some(128 * kib)), h.add_peer(3, Some(16 * kib)), h.add_peer(4, None));
    for holder in [fast, medium, slow] {
        h.share(holder, &manifest, &bytes, None);
    }
    let took = fetch(&mut h, leecher, &manifest, &bytes, Duration::from_secs(120));
    // The medium holder's blocks keep coming after the fast one ran out of chunks to start, so
    // the download does not go quiet; the fast one takes what waits at the slow one all the
    // same, not only after the medium holder's last block.
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(h.received.iter().any(|(_, to, kind)| *to == slow && *kind == "withdraw"), "nothing withdrawn");
    assert_eq!(verified_from(&h, leecher).len(), manifest.chunk_count() as usize, "each chunk verified once");
}

#[test]
fn a_download_without_the_manifest_refused_by_every_peer_it_knows_asks_the_tracker_again_soon() {
    use crate::limits::LOCATE_INTERVAL_SECOND;
    use crate::machine::{Input, Output};
    use crate::wire::{ErrorCode, Hello, Holders, Message, PeerAddr, Role};
    let (_, manifest) = file(4 * 16 * KIB, 16 * KIB as u32, 21);
    let id = manifest.file_id();
    let tracker: std::net::SocketAddr = "10.0.0.1:7000".parse().expect("valid address");
    let mut peer = super::Peer::new(super::PeerConfig::new(crate::PeerId::from_seed(5), 5, tracker, 7001));
    command(&mut peer, Time::ZERO, Command::Get { file_id: id, resume: None });
    let connects = |outputs: &[Output]| {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Connect { conn, .. } => Some(*conn),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let asks = |outputs: &[Output]| sent(outputs).iter().filter(|m| matches!(m, Message::Locate { .. })).count();
    let to_tracker = connects(&step(&mut peer, Time::ZERO, Input::Timeout))[0];
    let tracker_id = crate::PeerId([1; 16]);
    step(&mut peer, Time::from_millis(1), Input::Connected { conn: to_tracker, remote: tracker, peer_id: tracker_id });
    let hello = Message::Hello(Hello::new(Role::Tracker, tracker_id, 0));
    step(&mut peer, Time::from_millis(2), Input::Message { conn: to_tracker, message: hello });
    let holder = PeerAddr { peer_id: crate::PeerId([7; 16]), addr: "10.0.0.2:7000".parse().expect("valid") };
    let full = crate::Bitfield::full(4);
    let located = || Message::Located {
        file_id: id,
        manifest: None,
        holders: Holders::pack(4, [(holder, full.as_bytes())].into_iter()),
    };
    let dialled = step(&mut peer, Time::from_millis(3), Input::Message { conn: to_tracker, message: located() });
    let conn = connects(&dialled)[0];
    // The second ask, answered while the holder is still being dialled: the next is planned
    // further off.
    let at = Time::from_millis(3) + LOCATE_INTERVAL_SECOND;
    assert_eq!(asks(&step(&mut peer, at, Input::Timeout)), 1);
    step(&mut peer, at, Input::Message { conn: to_tracker, message: located() });
    let refused_at = at + Duration::from_millis(20);
    step(&mut peer, refused_at, Input::Connected { conn, remote: holder.addr, peer_id: holder.peer_id });
    let busy = Message::error(None, ErrorCode::Overloaded, "too many connections");
    step(&mut peer, refused_at, Input::Message { conn, message: busy });
    let soon = refused_at + LOCATE_INTERVAL_SECOND;
    assert_eq!(asks(&step(&mut peer, soon, Input::Timeout)), 1, "nobody left to ask for the manifest");
}
