//! Membership timings over `--trials` trials of `--nodes` processes:
//! - start: from spawning the first of N fresh nodes (all at once) to all
//!   of them sharing one view of N; also counts trials in which some node's
//!   first view was not the full one (a transient split);
//! - kill: from `kill -9` of one node to the survivors' common view
//!   without it;
//! - heal: a node is cut off (SIGSTOP on loopback; its link taken down
//!   with `--netns`) until the others exclude it, then restored (SIGCONT;
//!   link up); from the restore to the merged view of all.
//!
//! Also the resident memory of the idle nodes after the start, and the CPU
//! they use while idle (first trial, over 3 s).
//!
//! `--multicast`: discovery and dissemination over IP multicast.
//!
//! ```text
//! cargo run --release -p gc-core --example bench-membership -- --nodes 16 --trials 10 [--netns]
//! ```
//! Ends with `nodes: N, trials: T, start_p50_ms: .., start_max_ms: ..,
//! kill_p50_ms: .., kill_max_ms: .., heal_p50_ms: .., heal_max_ms: ..`.

mod common;

use common::harness::{one_view, p50_max, wait_until, Fleet, NodeProc, Placement};
use common::{flag_or, machine};
use nix::sys::signal::Signal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-membership: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = flag_or(args, "--nodes", 5)?;
    let trials: usize = flag_or(args, "--trials", 10)?;
    let netns = args.iter().any(|a| a == "--netns");
    if n < 3 {
        return Err("--nodes must be at least 3".into());
    }
    let mut fleet = Fleet::new("bench-membership", n, netns)?;
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
        .extend(["--quiet".to_owned(), "--no-stdin".to_owned()]);
    let (mut start, mut kill, mut heal) = (Vec::new(), Vec::new(), Vec::new());
    let mut splits = 0;
    let mut rss = Vec::new();
    let mut idle_cpu = None;
    for trial in 0..trials {
        fleet.forget_state();
        let t0 = Instant::now();
        let mut nodes: Vec<NodeProc> = (1..=n as u32)
            .map(|id| fleet.spawn(id, &[]))
            .collect::<Result<_, _>>()?;
        let all: Vec<u64> = (1..=n as u64).collect();
        {
            let mut refs: Vec<&mut NodeProc> = nodes.iter_mut().collect();
            if !wait_until(&mut refs, Duration::from_secs(30), |ns| one_view(ns, &all)) {
                return Err(format!("trial {trial}: no common view of {n} within 30 s").into());
            }
        }
        start.push(ms(t0.elapsed()));
        // A node whose first regular view was not the full one saw a split.
        if nodes.iter().any(|p| {
            p.seen
                .iter()
                .find(|v| v["type"] == "view" && v["kind"] == "regular")
                .and_then(|v| v["members"].as_array().map(Vec::len))
                != Some(n)
        }) {
            splits += 1;
        }
        std::thread::sleep(Duration::from_millis(300));
        if trial == 0 {
            rss = nodes.iter().filter_map(|p| p.rss_kib()).collect();
            idle_cpu = idle_cpu_share(&nodes, IDLE_SPAN);
        }

        // kill -9 the last node.
        let mut victim = nodes.pop().ok_or("no node")?;
        let t1 = Instant::now();
        victim.signal(Signal::SIGKILL)?;
        victim.kill();
        let survivors: Vec<u64> = (1..n as u64).collect();
        {
            let mut refs: Vec<&mut NodeProc> = nodes.iter_mut().collect();
            if !wait_until(&mut refs, Duration::from_secs(30), |ns| {
                one_view(ns, &survivors)
            }) {
                return Err(format!("trial {trial}: kill -9 not resolved within 30 s").into());
            }
        }
        kill.push(ms(t1.elapsed()));

        // Cut off the (new) last node, wait for its exclusion, restore it.
        let cut = nodes.len();
        match &fleet.placement {
            Placement::Loopback => nodes[cut - 1].signal(Signal::SIGSTOP)?,
            Placement::Netns(ns) => ns.cut(cut)?,
        }
        let rest: Vec<u64> = (1..cut as u64).collect();
        {
            let (left, _) = nodes.split_at_mut(cut - 1);
            let mut refs: Vec<&mut NodeProc> = left.iter_mut().collect();
            if !wait_until(&mut refs, Duration::from_secs(30), |ns| one_view(ns, &rest)) {
                return Err(format!("trial {trial}: the cut node was not excluded").into());
            }
        }
        // Let the cut-off node notice too (netns: it forms its own view).
        std::thread::sleep(Duration::from_millis(600));
        let t2 = Instant::now();
        match &fleet.placement {
            Placement::Loopback => nodes[cut - 1].signal(Signal::SIGCONT)?,
            Placement::Netns(ns) => ns.heal(cut)?,
        }
        {
            let mut refs: Vec<&mut NodeProc> = nodes.iter_mut().collect();
            if !wait_until(&mut refs, Duration::from_secs(30), |ns| {
                one_view(ns, &survivors)
            }) {
                return Err(format!("trial {trial}: no merge within 30 s").into());
            }
        }
        heal.push(ms(t2.elapsed()));
        eprintln!(
            "trial {trial}: start {} ms, kill {} ms, heal {} ms",
            start[trial], kill[trial], heal[trial]
        );
        drop(nodes);
    }
    let (s50, smax) = p50_max(&mut start);
    let (k50, kmax) = p50_max(&mut kill);
    let (h50, hmax) = p50_max(&mut heal);
    rss.sort_unstable();
    println!(
        "# {} placement, {}, machine: {}; default timers unless --set",
        if netns { "netns" } else { "loopback" },
        if fleet.multicast.is_some() {
            "IP multicast dissemination"
        } else {
            "unicast"
        },
        machine()
    );
    println!(
        "# trials whose first view was not the full one (transient split): {splits}; idle rss_kib min/median/max: {}/{}/{}",
        rss.first().copied().unwrap_or(0),
        rss.get(rss.len() / 2).copied().unwrap_or(0),
        rss.last().copied().unwrap_or(0)
    );
    if let Some(share) = idle_cpu {
        println!(
            "# idle cpu: {:.2} % of one core per node, {:.1} % for all {n} nodes",
            share * 100.0 / n as f64,
            share * 100.0
        );
    }
    println!(
        "nodes: {n}, trials: {trials}, start_p50_ms: {s50}, start_max_ms: {smax}, kill_p50_ms: {k50}, \
         kill_max_ms: {kmax}, heal_p50_ms: {h50}, heal_max_ms: {hmax}"
    );
    Ok(())
}

/// How long the idle nodes' CPU is measured.
const IDLE_SPAN: Duration = Duration::from_secs(3);

/// CPU seconds the nodes used per second over `span`, all together (1.0 is
/// one core busy), or `None` when `/proc` could not be read.
fn idle_cpu_share(nodes: &[NodeProc], span: Duration) -> Option<f64> {
    let total = |nodes: &[NodeProc]| -> Option<Duration> {
        nodes
            .iter()
            .map(NodeProc::cpu_time)
            .sum::<Option<Duration>>()
    };
    let before = total(nodes)?;
    let t0 = Instant::now();
    std::thread::sleep(span);
    let used = total(nodes)?.checked_sub(before)?;
    Some(used.as_secs_f64() / t0.elapsed().as_secs_f64())
}
