//! The siminst benchmark of issue 7; prints the figures it measured.
//!
//! ```text
//! cargo run --release -p flotilla-tests --bin siminst-bench -- [--hosts 1,5,20] [--mib 100] [--max-datagram 60000] [--suspect 5s] [--heartbeat 50ms] [--busy-poll 100us] [--multicast]
//! ```
//!
//! `--max-datagram` sets the daemons' `gc.max_datagram` (default 1400
//! bytes: an Ethernet frame); `--suspect 5s` their `gc.suspect_timeout`
//! (default here 2s), `--heartbeat` their `gc.heartbeat_interval` (default
//! 50ms), `--busy-poll` their `gc.busy_poll` (default 100us; `0s` turns
//! it off); `--multicast` puts every daemon of a fleet on one IP
//! multicast group with `multicast.disseminate: true`, so that what goes to
//! every member (the package's chunks among it) leaves the origin once.
//!
//! For each fleet size it starts that many real `mgmtd` daemons on loopback,
//! builds a package of `--mib` MiB of incompressible data with `monitor
//! package build`, and measures:
//! - **siminst**: wall time from starting `monitor siminst FILE` to its
//!   exit (every host verified, unpacked, ran the install script and
//!   recorded the package), and the bytes the origin daemon's group core put
//!   on the wire meanwhile (from its log line `siminst: the origin is done
//!   serving`);
//! - **CPU**: CPU seconds (user + system, all threads, from
//!   `/proc/PID/stat`) the origin daemon and the receivers (mean) used
//!   from the start of `monitor siminst` to its exit;
//! - **copy one at a time**: the same file copied over plain TCP on
//!   loopback to one receiver per host, one connection after the other (no
//!   ssh, no encryption: a lower bound for scp/pdcp loops), wall time and
//!   bytes sent.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_tests::package::{await_origin_figures, PackageSource};
use flotilla_tests::{multicast_section, Error, Fleet, FleetOptions};

/// gc timers for many daemons on one small, shared machine (as in the
/// mgmtd benchmark).
const GC: &str = "gc:\n  join_timeout: 1s\n  suspect_timeout: 2s\n  startup_wait: 1s\n";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// CPU seconds (user + system, every thread, living or gone) of process
/// `pid` so far, or 0 if it cannot be read.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces; the fields after it are
    // counted from its closing parenthesis: utime and stime are 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // USER_HZ is 100 on Linux whatever the kernel's tick rate.
    ticks as f64 / 100.0
}

fn daemon_cpu(fleet: &Fleet) -> Vec<f64> {
    fleet
        .daemons
        .iter()
        .map(|d| d.child.as_ref().map_or(0.0, |c| cpu_seconds(c.id())))
        .collect()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Copies `file` to `hosts` receivers over TCP, one connection at a time;
/// returns the wall time and the bytes sent.
fn copy_loop(
    file: &std::path::Path,
    hosts: usize,
    dir: &std::path::Path,
) -> Result<(Duration, u64), Error> {
    let data = std::fs::read(file)?;
    let mut receivers = Vec::new();
    for i in 0..hosts {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let out = dir.join(format!("copy-{i}.fpkg"));
        let handle = std::thread::spawn(move || -> std::io::Result<u64> {
            let (mut stream, _) = listener.accept()?;
            let mut file = std::fs::File::create(out)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0;
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                file.write_all(&buf[..n])?;
                total += n as u64;
            }
            file.sync_all()?;
            Ok(total)
        });
        receivers.push((addr, handle));
    }
    let start = Instant::now();
    let mut sent = 0;
    for (addr, handle) in receivers {
        let mut stream = TcpStream::connect(addr)?;
        stream.write_all(&data)?;
        drop(stream);
        sent += handle.join().map_err(|_| "receiver panicked")??;
    }
    Ok((start.elapsed(), sent))
}

fn main() -> Result<(), Error> {
    let sizes: Vec<usize> = arg("--hosts")
        .unwrap_or_else(|| "1,5,20".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let size_mib: usize = arg("--mib").unwrap_or_else(|| "100".into()).parse()?;
    println!("| hosts | siminst wall (s) | aggregate MiB/s | origin wire MiB | origin CPU (s) | receiver CPU (s, mean) | copy loop wall (s) | copy loop MiB sent | ok |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for hosts in sizes {
        let mut options = FleetOptions::new(hosts);
        options.gc = match arg("--suspect") {
            // Twenty daemons verifying and unpacking 100 MiB each share two
            // cores here: a longer suspicion keeps busy ones in the view.
            Some(suspect) => GC.replace(
                "suspect_timeout: 2s",
                &format!("suspect_timeout: {suspect}"),
            ),
            None => GC.into(),
        };
        if let Some(bytes) = arg("--max-datagram") {
            options.gc.push_str(&format!("  max_datagram: {bytes}\n"));
        }
        if let Some(period) = arg("--heartbeat") {
            options
                .gc
                .push_str(&format!("  heartbeat_interval: {period}\n"));
        }
        if let Some(poll) = arg("--busy-poll") {
            options.gc.push_str(&format!("  busy_poll: {poll}\n"));
        }
        if std::env::args().any(|a| a == "--multicast") {
            // A fresh group per fleet: the previous fleet's daemons may
            // still be going away.
            options.extra = multicast_section(true)?;
        }
        options.log_level = "info".into();
        let fleet = Fleet::start(options)?;
        let src = fleet.dir.path().join("src");
        PackageSource {
            name: "bench",
            version: "1.0.0",
            requirements: "",
            install: "test -f data.bin\n",
            install_timeout: "5m",
            payload: size_mib << 20,
        }
        .write(&src)?;
        let file = fleet.dir.path().join("bench.fpkg");
        fleet.build_package(&src, &file)?;
        let size = std::fs::metadata(&file)?.len();
        let cpu_before = daemon_cpu(&fleet);
        let start = Instant::now();
        let output = Command::new(&fleet.bin.monitor)
            .env("FLOTILLA_SOCKET", fleet.daemons[0].socket())
            .args(["--json", "siminst", &file.display().to_string()])
            .stdin(Stdio::null())
            .output()?;
        let wall = start.elapsed();
        let cpu: Vec<f64> = daemon_cpu(&fleet)
            .iter()
            .zip(&cpu_before)
            .map(|(after, before)| after - before)
            .collect();
        let origin_cpu = cpu.first().copied().unwrap_or(0.0);
        let receivers_cpu = match cpu.len() {
            0 | 1 => 0.0,
            n => cpu[1..].iter().sum::<f64>() / (n - 1) as f64,
        };
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let ok = report["summary"]["ok"].as_u64().unwrap_or(0);
        // The origin logs its counters once every target has reported.
        let wire = await_origin_figures(|| fleet.daemons[0].log(), Duration::from_secs(10))
            .map(|f| f.wire_bytes);
        if wire.is_none() {
            let log = fleet.daemons[0].log();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!(
                "the origin has not logged its figures 10 s after the monitor exited; its last lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        for line in fleet.daemons[0]
            .log()
            .lines()
            .filter(|l| l.contains(" WARN "))
        {
            eprintln!("origin: {line}");
        }
        let wire = wire.unwrap_or(0);
        let (copy_wall, copy_bytes) = copy_loop(&file, hosts, fleet.dir.path())?;
        println!(
            "| {hosts} | {:.2} | {:.0} | {:.1} | {origin_cpu:.2} | {receivers_cpu:.2} | {:.2} | {:.1} | {ok}/{hosts} |",
            wall.as_secs_f64(),
            mib(size * hosts as u64) / wall.as_secs_f64(),
            mib(wire),
            copy_wall.as_secs_f64(),
            mib(copy_bytes),
        );
        if ok != hosts as u64 {
            eprintln!("not every host installed: {report}");
        }
    }
    Ok(())
}
