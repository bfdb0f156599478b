//! Runs the deterministic simulator over many seeds and checks every run.
//!
//! ```text
//! cargo run --release -p gc-core --example sim -- --seeds 2000 --first-seed 1
//! ```
//!
//! Options: `--seeds N` (default 100), `--first-seed S` (default 1),
//! `--threads T` (default: the machine's cores), `--bug skip-flush|agreed-arrival`
//! (run a deliberately broken core), `--verbose` (one line per seed),
//! `--no-figures` (skip the fault-free cost measurements).
//!
//! Exits 0 only when no run violated anything; every failing seed is printed
//! with the command that replays it. The last line is
//! `seeds: N, violations: V`.

use gc_core::check::{check, Property, Violation};
use gc_core::sim::{run, Sim, SimConfig, SimStats};
use gc_core::Bug;
use gc_core::{Event, Level};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Args {
    seeds: u64,
    first: u64,
    threads: usize,
    bug: Option<Bug>,
    verbose: bool,
    figures: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seeds: 100,
        first: 1,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        bug: None,
        verbose: false,
        figures: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--seeds" => {
                a.seeds = value("--seeds")?
                    .parse()
                    .map_err(|e| format!("--seeds: {e}"))?
            }
            "--first-seed" => {
                a.first = value("--first-seed")?
                    .parse()
                    .map_err(|e| format!("--first-seed: {e}"))?
            }
            "--threads" => {
                a.threads = value("--threads")?
                    .parse()
                    .map_err(|e| format!("--threads: {e}"))?
            }
            "--bug" => {
                a.bug = Some(match value("--bug")?.as_str() {
                    "skip-flush" => Bug::SkipFlush,
                    "agreed-arrival" => Bug::AgreedInArrivalOrder,
                    other => return Err(format!("--bug: unknown bug {other:?}")),
                })
            }
            "--verbose" => a.verbose = true,
            "--no-figures" => a.figures = false,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

#[derive(Default)]
struct Totals {
    failing: Vec<(u64, Vec<Violation>)>,
    max_held_bytes: u64,
    max_held_frames: u64,
    worst_convergence: Duration,
    stuck_timers: u64,
    not_converged: u64,
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Datagrams per delivered message and agreed latency with no faults.
fn figures() {
    println!("fault-free costs (one-way delay 100 us, 100-byte messages at all four levels, every 5 ms):");
    for n in [3usize, 5, 9, 16] {
        let cfg = SimConfig::quiet(7, n);
        let delay = cfg.delay_min.as_micros() as f64;
        let out = run(cfg);
        let s: SimStats = out.stats;
        let mut lat = s.agreed_latency_us.clone();
        let p50 = percentile(&mut lat, 0.5) as f64 / delay;
        let max = lat.last().copied().unwrap_or(0) as f64 / delay;
        println!(
            "  nodes: {n}, multicasts: {}, datagrams per multicast: {:.1}, per delivery: {:.2}, agreed self-delivery p50: {:.1} hops, max: {:.1} hops",
            s.multicasts,
            s.datagrams as f64 / s.multicasts.max(1) as f64,
            s.datagrams as f64 / s.deliveries.max(1) as f64,
            p50,
            max
        );
    }
    println!("idle view (no messages, after the view formed):");
    for n in [5usize, 16, 50] {
        let per = idle_datagrams(n);
        println!(
            "  nodes: {n}, datagrams per heartbeat period: {per:.1} (N (N - 1) = {}, 2 (N - 1) = {})",
            n * (n - 1),
            2 * (n - 1)
        );
    }
    println!("query round (bench-query's pattern; answers sent on delivery, one round at a time):");
    let cases = [
        (3usize, Level::Agreed, 0usize, ""),
        (5, Level::Agreed, 0, ""),
        (10, Level::Agreed, 0, ""),
        (16, Level::Agreed, 0, ""),
        (5, Level::Safe, 0, ", safe"),
        (
            16,
            Level::Agreed,
            15,
            ", asked by the last node (not the hub)",
        ),
    ];
    for (n, level, asker, what) in cases {
        match query_round(n, level, asker, 100) {
            Some((per_round, p50)) => println!(
                "  nodes: {n}{what}, datagrams per round: {per_round:.1}, round p50: {p50:.1} hops"
            ),
            None => println!("  nodes: {n}{what}: the rounds did not complete"),
        }
    }
}

/// Datagrams an idle view sends per heartbeat period (all nodes, after
/// the view formed), fault-free: heartbeats and the hub's summaries.
fn idle_datagrams(n: usize) -> f64 {
    let mut sim = Sim::new(SimConfig::quiet(7, n));
    sim.boot();
    sim.advance(Duration::from_secs(5));
    let before = sim.datagrams_sent();
    let span = Duration::from_secs(10);
    sim.advance(span);
    // The heartbeat period of Config::new (it does not grow with the
    // view while heartbeats go through the hub).
    let periods = span.as_micros() as f64 / 50_000.0;
    (sim.datagrams_sent() - before) as f64 / periods
}

/// The query round of `bench-query`, fault-free, in the simulator: node
/// `asker` (0 in the benchmark: the view's smallest member, its hub)
/// multicasts a question at `level`, every other node answers it at the
/// same level as soon as it delivers it, and the round ends when the asker
/// has delivered every answer. Returns datagrams per round (all nodes,
/// heartbeats included) and the p50 round in network hops.
fn query_round(n: usize, level: Level, asker: usize, rounds: usize) -> Option<(f64, f64)> {
    let cfg = SimConfig::quiet(7, n);
    let hop = cfg.delay_min;
    let mut sim = Sim::new(cfg);
    sim.keep_events();
    sim.boot();
    sim.advance(Duration::from_secs(2));
    let delivered = |sim: &Sim, i: usize, text: &[u8]| {
        sim.app_events(i)
            .iter()
            .filter(|e| matches!(e, Event::Deliver(d) if d.payload == text))
            .count()
    };
    let before = sim.datagrams_sent();
    let mut lat = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let q = format!("Q{r}").into_bytes();
        let a = format!("A{r}").into_bytes();
        sim.multicast(asker, "mgmt", level, q.clone()).ok()?;
        let t0 = sim.now();
        let mut answered = vec![false; n];
        *answered.get_mut(asker)? = true;
        loop {
            sim.advance(Duration::from_micros(10));
            for (i, done) in answered.iter_mut().enumerate() {
                if !*done && delivered(&sim, i, &q) > 0 {
                    *done = true;
                    sim.multicast(i, "mgmt", level, a.clone()).ok()?;
                }
            }
            if delivered(&sim, asker, &a) == n - 1 {
                break;
            }
            if sim.now().since(t0) > Duration::from_secs(1) {
                return None;
            }
        }
        lat.push(sim.now().since(t0).as_micros() as u64);
        sim.advance(Duration::from_millis(1));
    }
    let per_round = (sim.datagrams_sent() - before) as f64 / rounds as f64;
    let p50 = percentile(&mut lat, 0.5) as f64 / hop.as_micros() as f64;
    Some((per_round, p50))
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sim: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let next = AtomicU64::new(args.first);
    let end = args.first + args.seeds;
    let totals = Mutex::new(Totals::default());
    std::thread::scope(|scope| {
        for _ in 0..args.threads.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let mut cfg = SimConfig::random(seed);
                cfg.bug = args.bug;
                let nodes = cfg.nodes;
                let out = run(cfg);
                let mut violations = check(&out.trace);
                if out.stats.step_budget_exceeded {
                    violations.push(Violation {
                        property: Property::Liveness,
                        processes: Vec::new(),
                        messages: Vec::new(),
                        detail: format!(
                            "the run exceeded {} simulation steps (a datagram storm?)",
                            gc_core::sim::MAX_STEPS
                        ),
                    });
                }
                if args.verbose {
                    println!(
                        "seed {seed}: nodes {nodes}, views {}, multicasts {}, deliveries {}, datagrams {}, converged after {:?}, faults {:?}, stuck timers {}, violations {}",
                        out.stats.views,
                        out.stats.multicasts,
                        out.stats.deliveries,
                        out.stats.datagrams,
                        out.stats.converged_after,
                        out.stats.faults,
                        out.stats.stuck_timers,
                        violations.len()
                    );
                }
                let Ok(mut t) = totals.lock() else { return };
                t.max_held_bytes = t.max_held_bytes.max(out.stats.max_held_bytes);
                t.max_held_frames = t.max_held_frames.max(out.stats.max_held_frames);
                t.stuck_timers += out.stats.stuck_timers;
                match out.stats.converged_after {
                    Some(d) => t.worst_convergence = t.worst_convergence.max(d),
                    None => t.not_converged += 1,
                }
                if !violations.is_empty() {
                    t.failing.push((seed, violations));
                }
            });
        }
    });
    let Ok(mut t) = totals.into_inner() else {
        eprintln!("sim: a worker panicked");
        return ExitCode::FAILURE;
    };
    t.failing.sort_by_key(|(s, _)| *s);
    let bug = match args.bug {
        Some(Bug::SkipFlush) => " --bug skip-flush",
        Some(Bug::AgreedInArrivalOrder) => " --bug agreed-arrival",
        None => "",
    };
    for (seed, vs) in &t.failing {
        println!("seed {seed}: {} violation(s)", vs.len());
        for v in vs.iter().take(5) {
            println!("  {v}");
        }
        println!(
            "  replay: cargo run --release -p gc-core --example sim -- --seeds 1 --first-seed {seed}{bug} --verbose"
        );
    }
    if args.figures && args.bug.is_none() {
        figures();
    }
    let elapsed = started.elapsed();
    println!(
        "largest buffer seen: {} bytes in {} frames; slowest convergence after heal: {:?}; runs that did not converge: {}; stuck timers: {}",
        t.max_held_bytes, t.max_held_frames, t.worst_convergence, t.not_converged, t.stuck_timers
    );
    println!(
        "elapsed: {:.1} s ({:.1} ms per seed, {} threads)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / args.seeds.max(1) as f64,
        args.threads
    );
    let violations: usize = t.failing.iter().map(|(_, v)| v.len()).sum();
    println!("seeds: {}, violations: {}", args.seeds, violations);
    if violations == 0 && t.stuck_timers == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
