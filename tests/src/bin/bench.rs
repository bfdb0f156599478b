//! The mgmtd benchmarks of issue 5; prints the figures it measured.
//!
//! ```text
//! cargo run --release -p flotilla-tests --bin bench -- [--hosts 5,20,50] [--runs 20] [--default-gc] [--compare DIR]
//! ```
//!
//! The daemons run with long gc timeouts ([`LARGE_FLEET_GC`]) unless
//! `--default-gc` asks for gc-core's defaults.
//!
//! `--compare DIR` measures another build too (`DIR/mgmtd` and
//! `DIR/monitor`, say the starting commit's), interleaved with this one:
//! for each fleet size, fleets of the two builds take turns, a few runs
//! each, so that both see the same load on a shared machine. Compare the
//! two rows of one run, not figures across runs.
//!
//! For each fleet size it starts that many real `mgmtd` daemons on loopback
//! and measures:
//! - **whole-CLI simex latency**: from starting `monitor simex -- true` to
//!   its exit, as a user runs it (p50, p95, max over `--runs` runs, after
//!   one warm-up run);
//! - **baselines** over the same number of local processes, standing in for
//!   pdsh without ssh's own cost: `sh -c true` run one after the other
//!   (sequential), and all at once then waited for (parallel);
//! - **daemon resident memory** (VmRSS): idle, and while every daemon runs
//!   a `simex -- sleep 1`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_tests::{percentile, Binaries, Error, Fleet, FleetOptions};

/// Timeouts for many daemons on one small machine: gc-core's defaults (join
/// 150 ms, suspect 400 ms) are tuned for a LAN of hosts, and 30 daemons
/// sharing 2 busy cores miss them and never settle on one view.
const LARGE_FLEET_GC: &str = "gc:\n  join_timeout: 1s\n  suspect_timeout: 2s\n  startup_wait: 1s\n";

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    (
        percentile(&samples, 50.0),
        percentile(&samples, 95.0),
        samples.last().copied().unwrap_or_default(),
    )
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn fleet_rss(fleet: &Fleet) -> (f64, f64) {
    let samples: Vec<u64> = fleet
        .daemons
        .iter()
        .filter_map(|d| d.child.as_ref().and_then(|c| rss_kib(c.id())))
        .collect();
    let mean = samples.iter().sum::<u64>() as f64 / samples.len().max(1) as f64;
    let max = samples.iter().copied().max().unwrap_or(0) as f64;
    (mean / 1024.0, max / 1024.0)
}

fn simex_once(fleet: &Fleet, command: &str) -> Result<Duration, Error> {
    let start = Instant::now();
    // The report is read only when the simex failed, after the time is
    // taken; a report of 50 hosts fits the pipe.
    let output = Command::new(&fleet.bin.monitor)
        .env("FLOTILLA_SOCKET", fleet.daemons[0].socket())
        .args(["simex", "--", command])
        .stdin(Stdio::null())
        .output()?;
    let elapsed = start.elapsed();
    if !output.status.success() {
        return Err(format!(
            "monitor simex -- {command} exited with {}; its report:\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(elapsed)
}

fn sequential(n: usize) -> Result<Duration, Error> {
    let start = Instant::now();
    for _ in 0..n {
        Command::new("/bin/sh").args(["-c", "true"]).status()?;
    }
    Ok(start.elapsed())
}

fn parallel(n: usize) -> Result<Duration, Error> {
    let start = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|_| Command::new("/bin/sh").args(["-c", "true"]).spawn())
        .collect::<Result<_, _>>()?;
    for mut child in children {
        child.wait()?;
    }
    Ok(start.elapsed())
}

/// Runs per turn of a build when two builds are compared.
const TURN: usize = 5;

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn start(
    n: usize,
    default_gc: bool,
    binaries: Option<&Binaries>,
) -> Result<(Fleet, Duration), Error> {
    let mut options = FleetOptions::new(n);
    options.log_level = "warn".into();
    if !default_gc {
        options.gc = LARGE_FLEET_GC.into();
    }
    options.binaries = binaries.cloned();
    let formed = Instant::now();
    let fleet = Fleet::start(options)?;
    let form = formed.elapsed();
    // Let the view settle (announcements, the first stability rounds).
    std::thread::sleep(Duration::from_secs(2));
    Ok((fleet, form))
}

/// Memory while every daemon runs a command.
fn busy_rss(fleet: &Fleet) -> Result<(f64, f64), Error> {
    let (rss, run) = std::thread::scope(|scope| {
        let run = scope.spawn(|| simex_once(fleet, "sleep 1"));
        std::thread::sleep(Duration::from_millis(600));
        (fleet_rss(fleet), run.join())
    });
    match run {
        Ok(result) => result.map(|_| rss),
        Err(_) => Err("the busy run panicked".into()),
    }
}

/// One build's figures for one fleet size.
#[derive(Default)]
struct Figures {
    form: Vec<Duration>,
    samples: Vec<Duration>,
    idle: Option<(f64, f64)>,
    busy: Option<(f64, f64)>,
}

fn main() -> Result<(), Error> {
    let mut sizes = vec![5, 20, 50];
    let mut runs = 20;
    let mut default_gc = false;
    let mut compare: Option<Binaries> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--hosts" => {
                sizes = args
                    .next()
                    .ok_or("--hosts needs a list like 5,20,50")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--runs" => runs = args.next().ok_or("--runs needs a number")?.parse()?,
            "--default-gc" => default_gc = true,
            "--compare" => {
                let dir = std::path::PathBuf::from(
                    args.next()
                        .ok_or("--compare needs a directory with mgmtd and monitor")?,
                );
                let bin = Binaries {
                    mgmtd: dir.join("mgmtd"),
                    monitor: dir.join("monitor"),
                };
                for path in [&bin.mgmtd, &bin.monitor] {
                    if !path.is_file() {
                        return Err(format!("--compare: no {}", path.display()).into());
                    }
                }
                compare = Some(bin);
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    // Build (or find) the binaries before anything is timed.
    flotilla_tests::binaries()?;
    println!(
        "machine: {} cores; {runs} runs per figure after one warm-up; gc timeouts: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if default_gc {
            "gc-core's defaults"
        } else {
            "join 1 s, suspect 2 s, startup 1 s"
        }
    );
    let builds: Vec<(&str, Option<&Binaries>)> = match &compare {
        Some(other) => vec![("this", None), ("compared", Some(other))],
        None => vec![("this", None)],
    };
    println!(
        "| daemons | build | form (ms) | simex p50 | p95 | max | seq sh p50 | par sh p50 | RSS idle mean/max (MiB) | RSS in simex mean/max (MiB) | load avg |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        let load_before = load_average();
        let mut figures: Vec<Figures> = builds.iter().map(|_| Figures::default()).collect();
        // Alone, one fleet takes all the runs; two builds take turns, the
        // order swapped every round.
        let turn = if builds.len() > 1 { TURN } else { runs };
        let mut round = 0;
        let mut baselines = None;
        while figures.iter().any(|f| f.samples.len() < runs) {
            for k in 0..builds.len() {
                let b = if round % 2 == 0 {
                    k
                } else {
                    builds.len() - 1 - k
                };
                let (build, binaries) = builds[b];
                let f = &mut figures[b];
                let take = turn.min(runs - f.samples.len());
                if take == 0 {
                    continue;
                }
                let (fleet, form) = start(n, default_gc, binaries)
                    .map_err(|e| format!("{n} daemons of the build {build:?}: {e}"))?;
                f.form.push(form);
                if f.idle.is_none() {
                    f.idle = Some(fleet_rss(&fleet));
                }
                simex_once(&fleet, "true")?;
                for _ in 0..take {
                    f.samples.push(simex_once(&fleet, "true")?);
                }
                if f.samples.len() >= runs {
                    f.busy = Some(busy_rss(&fleet)?);
                    // The baselines run beside idle daemons, as the simex does.
                    if b == 0 {
                        baselines = Some((
                            stats(
                                (0..runs.min(10))
                                    .map(|_| sequential(n))
                                    .collect::<Result<_, _>>()?,
                            )
                            .0,
                            stats(
                                (0..runs.min(10))
                                    .map(|_| parallel(n))
                                    .collect::<Result<_, _>>()?,
                            )
                            .0,
                        ));
                    }
                }
            }
            round += 1;
        }
        let load = format!("{load_before} to {}", load_average());
        let (seq, par) = baselines.unwrap_or_default();
        for ((name, _), f) in builds.iter().zip(figures) {
            let (p50, p95, max) = stats(f.samples);
            let (form, _, _) = stats(f.form);
            let idle = f.idle.unwrap_or_default();
            let busy = f.busy.unwrap_or_default();
            println!(
                "| {n} | {name} | {} | {} | {} | {} | {} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {load} |",
                form.as_millis(),
                ms(p50),
                ms(p95),
                ms(max),
                ms(seq),
                ms(par),
                idle.0,
                idle.1,
                busy.0,
                busy.1
            );
        }
    }
    Ok(())
}
