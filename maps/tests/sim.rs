//! MapsServers over the gc-core simulator: partitions, loss, crashes and
//! restarts with disks that survive, checked by the maps checker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{random_update, set, update, World};
use gc_core::sim::{SimConfig, SimRng};
use maps::{Op, Outcome, Request, RequestError, Response, ServerConfig};
use std::time::Duration;

fn quiet(nodes: usize) -> World {
    let mut w = World::new(SimConfig::quiet(1, nodes), ServerConfig::default());
    w.advance(Duration::from_millis(600));
    w
}

fn applied(r: &Option<Response>) -> bool {
    matches!(
        r,
        Some(Response::Outcome {
            outcome: Outcome::Applied { .. },
            ..
        })
    )
}

#[test]
fn majority_updates_minority_refuses_naming_members_and_converges() {
    let mut w = quiet(5);
    let r = w.call(0, update(1, "hosts", Op::CreateMap), Duration::from_secs(2));
    assert!(applied(&r), "{r:?}");
    let r = w.call(
        3,
        update(2, "hosts", set("web1", "10.0.0.1")),
        Duration::from_secs(2),
    );
    assert!(applied(&r), "forwarded from a non-primary server: {r:?}");

    w.sim.partition(&[&[0, 1, 2], &[3, 4]]);
    w.advance(Duration::from_secs(2));
    let r = w.call(
        1,
        update(3, "hosts", set("web2", "10.0.0.2")),
        Duration::from_secs(2),
    );
    assert!(applied(&r), "majority side: {r:?}");
    let r = w.call(
        4,
        update(4, "hosts", set("web3", "10.0.0.3")),
        Duration::from_secs(2),
    );
    match &r {
        Some(Response::Error(e @ RequestError::NotPrimary { members, .. })) => {
            assert_eq!(members.len(), 2);
            let text = e.to_string();
            assert!(text.contains("not in the primary component"), "{text}");
            assert!(text.contains("n4.1") && text.contains("n5.1"), "{text}");
        }
        other => panic!("minority side should refuse: {other:?}"),
    }
    // A stale read on the minority side says so.
    let r = w.call(
        4,
        Request::Get {
            map: "hosts".into(),
            key: "web1".into(),
            consistent: false,
        },
        Duration::from_secs(1),
    );
    match r {
        Some(Response::Value {
            entry: Some(e),
            freshness,
            ..
        }) => {
            assert_eq!(e.value, "10.0.0.1");
            assert!(freshness.stale && !freshness.in_primary);
        }
        other => panic!("{other:?}"),
    }
    let r = w.call(
        4,
        Request::Get {
            map: "hosts".into(),
            key: "web1".into(),
            consistent: true,
        },
        Duration::from_secs(1),
    );
    assert!(
        matches!(r, Some(Response::Error(RequestError::NotPrimary { .. }))),
        "{r:?}"
    );
    // A consistent read on the majority side sees the latest update.
    let r = w.call(
        2,
        Request::Get {
            map: "hosts".into(),
            key: "web2".into(),
            consistent: true,
        },
        Duration::from_secs(2),
    );
    match r {
        Some(Response::Value {
            entry: Some(e),
            freshness,
            ..
        }) => {
            assert_eq!(e.value, "10.0.0.2");
            assert!(!freshness.stale);
        }
        other => panic!("{other:?}"),
    }
    let v = w.finish(Duration::from_secs(10));
    assert!(v.is_empty(), "{v:?}");
    let s = w.hosts[4].server.as_ref().expect("live");
    assert_eq!(s.tables().map("hosts").expect("map").len(), 2);
}

#[test]
fn a_retried_update_is_applied_once() {
    let mut w = quiet(3);
    assert!(applied(&w.call(
        0,
        update(1, "m", Op::CreateMap),
        Duration::from_secs(2)
    )));
    let first = w.call(1, update(2, "m", set("a", "1")), Duration::from_secs(2));
    assert!(applied(&first));
    assert!(applied(&w.call(
        2,
        update(3, "m", set("a", "2")),
        Duration::from_secs(2)
    )));
    let again = w.call(2, update(2, "m", set("a", "1")), Duration::from_secs(2));
    match again {
        Some(Response::Outcome {
            duplicate: true,
            outcome,
            ..
        }) => assert_eq!(outcome, Outcome::Applied { version: 2 }),
        other => panic!("{other:?}"),
    }
    let s = w.hosts[0].server.as_ref().expect("live");
    assert_eq!(
        s.tables()
            .map("m")
            .and_then(|m| m.get("a"))
            .map(|e| e.value.as_str()),
        Some("2")
    );
    let v = w.finish(Duration::from_secs(5));
    assert!(v.is_empty(), "{v:?}");
}

/// One run with random faults from `seed`: returns the violations found.
fn run_seed(seed: u64) -> Vec<maps::check::Violation> {
    run_seed_inner(seed, false)
}

fn run_seed_dump(seed: u64) -> Vec<maps::check::Violation> {
    run_seed_inner(seed, true)
}

fn run_seed_inner(seed: u64, dump: bool) -> Vec<maps::check::Violation> {
    let mut rng = SimRng::new(seed ^ 0x6d61_7073);
    let mut sc = SimConfig::random(seed);
    sc.nodes = 3 + rng.below(3) as usize;
    let n = sc.nodes;
    let mut w = World::new(sc, ServerConfig::default());
    w.advance(Duration::from_millis(500));
    let mut next_id: u128 = 1_000;
    for (i, map) in ["hosts", "users"].iter().enumerate() {
        w.request(i % n, update(i as u128 + 1, map, Op::CreateMap));
    }
    w.advance(Duration::from_millis(300));
    let phase = 2_000 + rng.below(2_000);
    let mut t = 0;
    while t < phase {
        match rng.below(100) {
            0..=2 => {
                let cut = 1 + rng.below(n as u64 - 1) as usize;
                let mut all: Vec<usize> = (0..n).collect();
                // A random split into two sides.
                for k in (1..n).rev() {
                    all.swap(k, rng.below(k as u64 + 1) as usize);
                }
                let (a, b) = all.split_at(cut);
                w.sim.partition(&[a, b]);
            }
            3..=4 => w.sim.heal(),
            5 => {
                let live = w.live();
                if live.len() > 1 {
                    let i = live[rng.below(live.len() as u64) as usize];
                    w.kill(i);
                }
            }
            6..=7 => {
                let down: Vec<usize> = (0..n).filter(|i| w.hosts[*i].server.is_none()).collect();
                if let Some(&i) = down.get(rng.below(down.len().max(1) as u64) as usize) {
                    w.restart(i);
                }
            }
            _ => random_update(&mut w, &mut rng, &mut next_id),
        }
        let step = 5 + rng.below(20);
        w.advance(Duration::from_millis(step));
        t += step;
    }
    let v = w.finish(Duration::from_secs(30));
    let acks = w
        .records
        .iter()
        .filter(|r| matches!(r, maps::check::Record::Acked { .. }))
        .count();
    let versions: Vec<(String, u64)> = w
        .hosts
        .iter()
        .find_map(|h| h.server.as_ref())
        .map(|s| {
            s.tables()
                .maps()
                .map(|(n, m)| (n.to_owned(), m.version()))
                .collect()
        })
        .unwrap_or_default();
    eprintln!(
        "seed {seed}: {n} hosts, {} requests, {acks} acknowledged, final versions {versions:?}, virtual {:?}",
        w.next_client,
        w.sim.now()
    );
    if dump {
        for r in &w.records {
            eprintln!("{r:?}");
        }
    }
    v
}

/// Seeds that once failed; each stays a regression test.
// 65, 76, 240, 296 and 365 caught updates that gc-core sent in a later view
// than the one they were ordered in (its send queue outlives views), some
// non-primary: an update is now applied only in a view of its own epoch.
// 66 and 431 never converged: gc-core's views did not merge after the heal
// (stale joins excluded their senders), fixed in gc-core on main.
// 6017 and 9365 stalled (and risked a rollback of committed updates): the
// exchange ranked histories by the epoch of their last update, so an old
// session's unapplied updates beat a history a later session had adopted
// and committed on; it now ranks by ballot (the last session whose chosen
// history a member took on), then version.
const REGRESSION_SEEDS: &[u64] = &[65, 66, 76, 240, 296, 365, 431, 6017, 9365];

#[test]
fn regression_seeds_pass() {
    for &seed in REGRESSION_SEEDS {
        let v = run_seed(seed);
        assert!(v.is_empty(), "seed {seed}: {v:?}");
    }
}

#[test]
fn random_faults_over_many_seeds() {
    // MAPS_SEEDS=first..last widens the band (e.g. MAPS_SEEDS=0..500).
    let (first, last) = std::env::var("MAPS_SEEDS")
        .ok()
        .and_then(|s| {
            let (a, b) = s.split_once("..")?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .unwrap_or((0u64, 12u64));
    let mut failed = Vec::new();
    for seed in first..last {
        let v = run_seed(seed);
        if !v.is_empty() {
            eprintln!("seed {seed} FAILED: {v:?}");
            failed.push(seed);
        }
    }
    eprintln!(
        "maps sim: seeds {first}..{last}, {} failed: {failed:?}",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "failing seeds (replay with MAPS_SEEDS=s..s+1): {failed:?}"
    );
}

#[test]
#[ignore]
fn debug_seed() {
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let v = run_seed_dump(seed);
    eprintln!("{v:?}");
}

/// Loads `n` entries into map `m` through host 0, in batches.
fn load(w: &mut World, map: &str, n: usize, first_id: u128) {
    let entries: Vec<(String, String)> = (0..n)
        .map(|i| {
            (
                format!("host{i:06}.example.org"),
                format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
            )
        })
        .collect();
    let batches = maps::api::load_batches(&entries, true, 10_000).expect("bounded");
    for (k, op) in batches.into_iter().enumerate() {
        let r = w.call(
            0,
            update(first_id + k as u128, map, op),
            Duration::from_secs(20),
        );
        assert!(applied(&r), "batch {k}: {r:?}");
    }
}

#[test]
fn one_missed_update_on_a_100k_map_costs_the_gap_not_the_map() {
    let mut w = quiet(3);
    assert!(applied(&w.call(
        0,
        update(1, "hosts", Op::CreateMap),
        Duration::from_secs(2)
    )));
    load(&mut w, "hosts", 100_000, 100);
    w.advance(Duration::from_secs(1));
    assert!(w.converged());
    let map_bytes = w.hosts[2]
        .server
        .as_ref()
        .and_then(|s| s.tables().map("hosts"))
        .map_or(0, |m| m.bytes());

    w.sim.partition(&[&[0, 1], &[2]]);
    w.advance(Duration::from_secs(2));
    let r = w.call(
        1,
        update(9, "hosts", set("new.example.org", "10.9.9.9")),
        Duration::from_secs(2),
    );
    assert!(applied(&r), "{r:?}");
    let before = w.sent.clone();
    w.sim.heal();
    let mut waited = 0;
    while !w.converged() && waited < 100 {
        w.advance(Duration::from_millis(100));
        waited += 1;
    }
    assert!(w.converged(), "host 2 did not catch up");
    let delta = |k: &str| w.sent.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    let (catchup, snapshot, state) = (delta("catchup"), delta("snapshot"), delta("state"));
    eprintln!(
        "catch-up after missing 1 update of a 100,000-entry map ({map_bytes} bytes of keys and values): \
         {catchup} bytes of log suffix, {snapshot} bytes of snapshot, {state} bytes of state exchange"
    );
    assert_eq!(snapshot, 0, "no snapshot for a gap the log covers");
    assert!(
        catchup > 0 && catchup < 200,
        "{catchup} bytes for one update"
    );
    assert!(
        state < 2_000,
        "the state exchange is per map, not per entry: {state}"
    );
    let s = w.hosts[2].server.as_ref().expect("live");
    assert_eq!(
        s.tables()
            .map("hosts")
            .and_then(|m| m.get("new.example.org"))
            .map(|e| e.value.as_str()),
        Some("10.9.9.9")
    );
    let v = w.finish(Duration::from_secs(5));
    assert!(v.is_empty(), "{v:?}");
}

#[test]
fn a_gap_beyond_the_kept_log_is_filled_by_snapshot() {
    let cfg = ServerConfig {
        keep_log: 10,
        compact_after: 4096,
        ..ServerConfig::default()
    };
    let mut w = World::new(SimConfig::quiet(2, 3), cfg);
    w.advance(Duration::from_millis(600));
    assert!(applied(&w.call(
        0,
        update(1, "m", Op::CreateMap),
        Duration::from_secs(2)
    )));
    w.kill(2);
    w.advance(Duration::from_secs(2));
    for i in 0..50u128 {
        let r = w.call(
            (i % 2) as usize,
            update(10 + i, "m", set(&format!("k{}", i % 7), &format!("v{i}"))),
            Duration::from_secs(2),
        );
        assert!(applied(&r), "{r:?}");
    }
    let before = w.sent.clone();
    let v = w.finish(Duration::from_secs(10));
    assert!(v.is_empty(), "{v:?}");
    let snapshot =
        w.sent.get("snapshot").copied().unwrap_or(0) - before.get("snapshot").copied().unwrap_or(0);
    assert!(
        snapshot > 0,
        "host 2 was 50 updates behind a log of 10: a snapshot"
    );
    let s = w.hosts[2].server.as_ref().expect("live");
    assert_eq!(s.tables().version("m"), 51);
    assert!(s.stats().snapshots_installed >= 1);
}

/// Seeds that failed until the maps layer kept its own primary sessions:
/// two primary views each ordered the same version of a map. A primary view
/// whose state exchange was cut off (so its new members never learned the
/// heads its old members held) was followed by a primary view made of a
/// majority of it that held none of them. gc-core's primary rule allows
/// that; the maps voting rule ([`maps::vote`]) does not: a session needs a
/// majority of the last complete session and of every attempt after it.
/// 1074 then showed the second half of the fix: an update applied by one
/// member (delivered safe in the regular configuration) whose other holders
/// crashed before delivering it, reordered at its version by the next
/// session; updates are now applied only once a majority holds them on disk.
const KNOWN_FAILING_SEEDS: &[u64] = &[1044, 1074];

#[test]
fn known_failing_seeds() {
    for &seed in KNOWN_FAILING_SEEDS {
        let v = run_seed(seed);
        assert!(v.is_empty(), "seed {seed}: {v:?}");
    }
}
