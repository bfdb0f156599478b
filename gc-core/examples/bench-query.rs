//! Query round trip: node 1 multicasts a question to group `q`; every
//! other node answers it at the same level to group `a`; the time until
//! node 1 has delivered every answer. Nodes are separate processes over
//! real UDP (loopback, or one network namespace each with `--netns`).
//!
//! `--multicast`: discovery and dissemination over IP multicast.
//!
//! ```text
//! cargo run --release -p gc-core --example bench-query -- --nodes N --samples 500
//!     [--level agreed|safe|fifo|causal] [--netns] [--set KNOB=VALUE]...
//! ```
//! Ends with `nodes: N, samples: S, p50_us: X, p95_us: Y`.

mod common;

use common::harness::{wait_until, Fleet, NodeProc};
use common::{flag, flag_or, machine};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-query: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = flag_or(args, "--nodes", 3)?;
    let samples: u32 = flag_or(args, "--samples", 500)?;
    let level = flag(args, "--level").unwrap_or("agreed").to_owned();
    let netns = args.iter().any(|a| a == "--netns");
    if n < 2 {
        return Err("--nodes must be at least 2".into());
    }
    let mut fleet = Fleet::new("bench-query", n, netns)?;
    if args.iter().any(|a| a == "--multicast") {
        fleet.use_multicast()?;
    }
    for (i, a) in args.iter().enumerate() {
        if a == "--set" {
            if let Some(v) = args.get(i + 1) {
                fleet.common_args.extend(["--set".to_owned(), v.clone()]);
            }
        }
    }
    fleet.common_args.push("--quiet".to_owned());
    // Node 1 asks (it reads the query command on stdin); the others answer.
    let mut nodes: Vec<NodeProc> = vec![fleet.spawn(1, &["--groups", "a"])?];
    for id in 2..=n as u32 {
        nodes.push(fleet.spawn(id, &["--groups", "q", "--answer", "q:a", "--no-stdin"])?);
    }
    let all: Vec<u64> = (1..=n as u64).collect();
    let mut refs: Vec<&mut NodeProc> = nodes.iter_mut().collect();
    if !wait_until(&mut refs, Duration::from_secs(30), |ns| {
        common::harness::one_view(ns, &all)
            && ns.iter().skip(1).all(|p| {
                p.seen.iter().any(|v| {
                    v["type"] == "group_view"
                        && v["group"] == "q"
                        && v["members"].as_array().map(Vec::len) == Some(n - 1)
                })
            })
    }) {
        return Err(format!("the {n} nodes did not form one view with group q within 30 s").into());
    }
    let querier = &mut refs[0];
    let before = counters(querier)?;
    let from = querier.seen.len();
    querier.command(&format!("query {level} {samples} {} q a", n - 1))?;
    let timeout = Duration::from_secs(30 + u64::from(samples) / 10);
    let report = querier
        .wait_line(from, timeout, |v| v["type"] == "query_report")
        .ok_or("no query report in time (lost answers?)")?;
    let after = counters(querier)?;
    let p50 = report["p50_us"].as_u64().unwrap_or(0);
    let p95 = report["p95_us"].as_u64().unwrap_or(0);
    let p99 = report["p99_us"].as_u64().unwrap_or(0);
    let got = report["samples"].as_u64().unwrap_or(0);
    println!(
        "# {level} query round trip, {} placement, {}, machine: {}",
        if netns { "netns" } else { "loopback" },
        if fleet.multicast.is_some() {
            "IP multicast dissemination"
        } else {
            "unicast"
        },
        machine()
    );
    println!("# p99_us: {p99}, max_us: {}", report["max_us"]);
    // Warm-up rounds (as node.rs counts them) included.
    let rounds = (got + (u64::from(samples) / 10).clamp(5, 100)).max(1) as f64;
    println!(
        "# node 1 datagrams per round (heartbeats included): in {:.1}, out {:.1}",
        (after.0 - before.0) as f64 / rounds,
        (after.1 - before.1) as f64 / rounds
    );
    println!("nodes: {n}, samples: {got}, p50_us: {p50}, p95_us: {p95}");
    Ok(())
}

/// Node 1's datagrams in and out so far.
fn counters(node: &mut NodeProc) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let from = node.seen.len();
    node.command("counters")?;
    let c = node
        .wait_line(from, Duration::from_secs(10), |v| v["type"] == "counters")
        .ok_or("no counters from node 1")?;
    if std::env::var_os("BENCH_QUERY_COUNTERS").is_some() {
        eprintln!("{c}");
    }
    Ok((
        c["datagrams_in"].as_u64().unwrap_or(0),
        c["datagrams_out"].as_u64().unwrap_or(0),
    ))
}
