//! Random faults against a live fleet of gc-core nodes (or, with
//! `--mgmtd`, of mgmtd daemons driven by monitors) in network namespaces,
//! under a steady workload; then repair, convergence and every check. Needs
//! root, iproute2 (and nftables for packet loss).
//!
//! ```text
//! cargo run --release -p flotilla-tests --bin nemesis -- --hosts 5 --duration 120s
//! cargo run --release -p flotilla-tests --bin nemesis -- --mgmtd --hosts 5 --duration 120s
//! ```
//!
//! Options: `--hosts N` (3-9, default 5), `--duration 120s` (also `ms`,
//! `m`), `--seed N` (default: from the clock, printed), `--fault-every 1.5s`
//! (mean time between faults), `--multicast` (discover by IP multicast),
//! `--dev` (the dev build of the node instead of release), `--keep` (keep
//! the logs even when the run is clean), `--mgmtd` (the daemons and
//! `simex` commands instead of bare gc-core nodes).
//!
//! Exit status: 0 when the run found nothing, 1 when it found something, 2
//! when it could not run.

use anyhow::{bail, Context, Result};
use flotilla_tests::nemesis::{self, NemesisOptions};
use std::process::ExitCode;
use std::time::Duration;

fn parse_duration(s: &str) -> Result<Duration> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .with_context(|| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        _ => bail!("unknown unit in {s:?} (ms, s, m)"),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn parse(args: &[String]) -> Result<(NemesisOptions, bool)> {
    let mut mgmtd = false;
    let mut o = NemesisOptions::new();
    o.seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--hosts" => o.hosts = value()?.parse().context("--hosts: a number")?,
            "--duration" => o.duration = parse_duration(value()?)?,
            "--seed" => o.seed = value()?.parse().context("--seed: a number")?,
            "--fault-every" => o.fault_every = parse_duration(value()?)?,
            "--multicast" => o.multicast = true,
            "--dev" => o.release = false,
            "--keep" => o.keep = true,
            "--mgmtd" => mgmtd = true,
            "-h" | "--help" => {
                println!("usage: nemesis [--mgmtd] [--hosts N] [--duration 120s] [--seed N] [--fault-every 1.5s] [--multicast] [--dev] [--keep]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if !(3..=9).contains(&o.hosts) {
        bail!("--hosts: 3 to 9");
    }
    if mgmtd && o.multicast {
        bail!("--multicast: for gc-core nodes only");
    }
    Ok((o, mgmtd))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (opts, mgmtd) = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("nemesis: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(why) = flotilla_tests::vlan::skip_reason() {
        eprintln!("nemesis: cannot run: {why}");
        return ExitCode::from(2);
    }
    eprintln!(
        "nemesis: {} hosts, {:?} of faults, seed {} (replay the choices with --seed {})",
        opts.hosts, opts.duration, opts.seed, opts.seed
    );
    let mut progress = |line: &str| eprintln!("nemesis: {line}");
    let result = if mgmtd {
        flotilla_tests::nemesis_mgmt::run(&opts, &mut progress).map(|report| {
            println!("{report}");
            report.clean()
        })
    } else {
        nemesis::run(&opts, &mut progress).map(|report| {
            println!("{report}");
            println!("fault journal:");
            for line in &report.journal {
                println!("  {line}");
            }
            report.clean()
        })
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("nemesis: {:#}", anyhow::Error::from(e));
            ExitCode::from(2)
        }
    }
}
