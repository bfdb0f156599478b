//! Throughput and latency: every node multicasts `--size`-byte messages at
//! `--level` to one group as fast as the group absorbs them (16 sending
//! tasks per node, each waiting for its message to be accepted) for
//! `--seconds`, and counts what it delivers. Also reports resident memory
//! of the nodes idle (before the load) and under the load, and the
//! suspicions raised during the run (there must be none: a busy member is
//! not a crashed one).
//!
//! `--multicast`: discovery and dissemination over IP multicast.
//!
//! ```text
//! cargo run --release -p gc-core --example bench-throughput -- --nodes 5 \
//!     --size 100 --level agreed --seconds 5 [--netns] [--set KNOB=VALUE]...
//! ```
//! Ends with `nodes: N, level: L, size: B, msgs_per_s: M, mb_per_s: X,
//! deliveries_per_s: D, lat_p50_us: P, lat_p99_us: Q, suspicions: S`.
//! `msgs_per_s` counts distinct messages delivered per second (each at
//! every node); `deliveries_per_s` counts deliveries summed over nodes.
//! With `BENCH_COUNTERS` in the environment, every node's protocol
//! counters go to stderr, one JSON line each.

mod common;

use common::harness::{one_view, wait_until, Fleet, NodeProc};
use common::{flag, flag_or, machine};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-throughput: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = flag_or(args, "--nodes", 5)?;
    let size: usize = flag_or(args, "--size", 100)?;
    let seconds: u64 = flag_or(args, "--seconds", 5)?;
    let senders: usize = flag_or(args, "--senders", 16)?;
    let level = flag(args, "--level").unwrap_or("agreed").to_owned();
    let netns = args.iter().any(|a| a == "--netns");
    let mut fleet = Fleet::new("bench-throughput", n, netns)?;
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
    fleet
        .common_args
        .extend(["--quiet".to_owned(), "--groups".to_owned(), "t".to_owned()]);
    let mut nodes: Vec<NodeProc> = (1..=n as u32)
        .map(|id| fleet.spawn(id, &[]))
        .collect::<Result<_, _>>()?;
    let all: Vec<u64> = (1..=n as u64).collect();
    let mut refs: Vec<&mut NodeProc> = nodes.iter_mut().collect();
    if !wait_until(&mut refs, Duration::from_secs(30), |ns| {
        one_view(ns, &all)
            && ns.iter().all(|p| {
                p.seen.iter().any(|v| {
                    v["type"] == "group_view" && v["members"].as_array().map(Vec::len) == Some(n)
                })
            })
    }) {
        return Err(format!("the {n} nodes did not form one view within 30 s").into());
    }
    std::thread::sleep(Duration::from_millis(500));
    let idle: Vec<u64> = refs.iter().filter_map(|p| p.rss_kib()).collect();
    let marks: Vec<usize> = refs.iter().map(|p| p.seen.len()).collect();
    for p in refs.iter_mut() {
        p.command(&format!(
            "load {level} {size} {} t 0 {senders}",
            seconds * 1000
        ))?;
    }
    let mut reports = Vec::new();
    for (p, from) in refs.iter_mut().zip(marks) {
        let r = p
            .wait_line(from, Duration::from_secs(seconds + 30), |v| {
                v["type"] == "load_report"
            })
            .ok_or("a node sent no load report")?;
        reports.push(r);
    }
    let secs = seconds as f64;
    let delivered: Vec<u64> = reports
        .iter()
        .map(|r| r["delivered"].as_u64().unwrap_or(0))
        .collect();
    let sum: u64 = delivered.iter().sum();
    let distinct = sum as f64 / n as f64;
    let mut p50s: Vec<u64> = reports
        .iter()
        .map(|r| r["lat_p50_us"].as_u64().unwrap_or(0))
        .collect();
    p50s.sort_unstable();
    let p99 = reports
        .iter()
        .map(|r| r["lat_p99_us"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let rss_load = reports
        .iter()
        .map(|r| r["rss_max_kib"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let suspicions: u64 = reports
        .iter()
        .map(|r| r["counters"]["suspicions"].as_u64().unwrap_or(0))
        .sum();
    let view_changes: u64 = reports
        .iter()
        .map(|r| r["counters"]["view_changes"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let sent: u64 = reports
        .iter()
        .map(|r| r["sent"].as_u64().unwrap_or(0))
        .sum();
    let refused: u64 = reports
        .iter()
        .map(|r| r["refused"].as_u64().unwrap_or(0))
        .sum();
    if std::env::var_os("BENCH_COUNTERS").is_some() {
        for r in &reports {
            eprintln!("{}", r["counters"]);
        }
    }
    let retrans: u64 = reports
        .iter()
        .map(|r| r["counters"]["retransmissions"].as_u64().unwrap_or(0))
        .sum();
    let stalls: u64 = reports
        .iter()
        .map(|r| r["counters"]["event_stalls"].as_u64().unwrap_or(0))
        .sum();
    let kernel_drops: u64 = reports
        .iter()
        .map(|r| {
            r["counters"]["drops"]["receive_buffer"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    println!(
        "# {} placement, {}, machine: {}; {senders} sending tasks per node",
        if netns { "netns" } else { "loopback" },
        if fleet.multicast.is_some() {
            "IP multicast dissemination"
        } else {
            "unicast"
        },
        machine()
    );
    println!(
        "# sent (accepted): {sent}, refused: {refused}, delivered per node: {delivered:?}, \
         retransmissions: {retrans}, kernel receive-buffer drops: {kernel_drops}, event stalls: {stalls}, \
         view changes (max per node): {view_changes}"
    );
    println!("# rss_idle_kib: {idle:?}, rss_under_load_max_kib: {rss_load}");
    println!(
        "nodes: {n}, level: {level}, size: {size}, msgs_per_s: {:.0}, mb_per_s: {:.2}, \
         deliveries_per_s: {:.0}, lat_p50_us: {}, lat_p99_us: {p99}, suspicions: {suspicions}",
        distinct / secs,
        distinct * size as f64 / secs / 1e6,
        sum as f64 / secs,
        p50s.get(p50s.len() / 2).copied().unwrap_or(0),
    );
    Ok(())
}
