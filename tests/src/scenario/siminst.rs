//! siminst on a virtual LAN: scenario (d), a package installed on five
//! hosts while one of them is cut off mid-transfer and healed afterwards,
//! and the package builder the `nemesis --mgmtd` workload uses.
//!
//! The daemons are dev builds, whose profile optimizes gc-core and the
//! sealing, hashing and gunzip dependencies (unoptimized, moving megabytes
//! on a loaded 2-core machine starved their heartbeats), with the siminst
//! tests' gc timers.

use super::mgmt::{
    expect_outcomes, names, MgmtFleet, MgmtOptions, MgmtOutcome, MonitorRun, MEMBERS_TIMEOUT,
};
use super::ScenarioError;
use crate::faults::Fault;
use crate::package::{await_origin_figures, packages_by_host, OriginFigures, PackageSource};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// gc timers for release daemons moving megabytes on a loaded 2-core
/// machine: a daemon busy with a transfer must not be suspected (the
/// loopback siminst tests use the same).
pub const SIMINST_GC: &str = "gc:\n  join_timeout: 1s\n  suspect_timeout: 2s\n  startup_wait: 1s\n";

/// How long a cut-off host may take to finish its install after the heal.
const RESUME_TIMEOUT: Duration = Duration::from_secs(90);

/// The size of a package chunk (mgmtd's siminst): to count what was re-sent.
const CHUNK: u64 = 256 << 10;

/// How much of the package the cut host has unpacked when the cut comes.
const CUT_AFTER_BYTES: u64 = 1 << 20;

/// Writes a package directory under `dir` (a manifest, an install script
/// that checks its payload, `payload` bytes of noise) and builds it with
/// `monitor package build` (through host `h`'s monitor environment; the
/// build is local). Returns the package file.
pub fn build_package(
    fleet: &MgmtFleet,
    dir: &Path,
    name: &str,
    version: &str,
    payload: usize,
) -> Result<PathBuf, ScenarioError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| ScenarioError::Io { what, source }
    };
    let src = dir.join(format!("src-{name}-{version}"));
    PackageSource {
        name,
        version,
        requirements: "",
        install: "test -f data.bin && echo installed\n",
        install_timeout: "20s",
        payload,
    }
    .write(&src)
    .map_err(io("writing a package directory"))?;
    let file = dir.join(format!("{name}-{version}.fpkg"));
    let run = fleet.monitor_text(
        0,
        &[
            "package",
            "build",
            &src.display().to_string(),
            "-o",
            &file.display().to_string(),
        ],
    )?;
    if run.code != Some(0) {
        return Err(ScenarioError::Build {
            what: format!("package {name} {version}"),
            detail: run.text,
        });
    }
    Ok(file)
}

/// Whether host `h` has a package arriving.
fn receiving(fleet: &MgmtFleet, h: usize) -> bool {
    crate::package::package_arriving(&fleet.data_dir(h).join("siminst/staging"))
}

/// The packages `monitor status` lists for each host ("name version").
fn installed(fleet: &MgmtFleet, h: usize) -> BTreeMap<String, Vec<String>> {
    match fleet.monitor(h, &["status"]) {
        Ok(run) => run
            .json
            .as_ref()
            .map(packages_by_host)
            .unwrap_or_default()
            .into_iter()
            .collect(),
        Err(_) => BTreeMap::new(),
    }
}

/// Host `host`'s outcome in a job report gathered by `monitor job ID`.
fn job_outcome(run: &MonitorRun, host: &str) -> Option<String> {
    run.json
        .as_ref()?
        .get("hosts")?
        .as_array()?
        .iter()
        .find(|h| h["host"] == host)
        .and_then(|h| h["outcome"].as_str().map(str::to_owned))
}

/// (d) siminst of a 6 MiB package on five hosts; h5 is cut off (a
/// partition {h1..h4} | {h5}) 0.3 s after it starts receiving the package,
/// kept out until the others have excluded it, then healed. The monitor's
/// report gives every host exactly one outcome (h1-h4 ok; h5 ok or
/// disconnected); after the heal h5 resumes from the chunks it kept,
/// installs, and the job's report gathered from the servers (`monitor job`)
/// says ok for every host; `monitor status` lists the package everywhere.
pub fn siminst_with_a_host_cut_off(hosts: usize) -> Result<MgmtOutcome, ScenarioError> {
    const PAYLOAD: usize = 6 << 20;
    let mut out = MgmtOutcome {
        name: "(d) siminst with a host cut off mid-transfer".into(),
        ..MgmtOutcome::default()
    };
    let mut opts = MgmtOptions::new(hosts);
    // Debug daemons carry megabytes: the dev profile optimizes gc-core and
    // the dependencies that seal, hash and gunzip (Cargo.toml).
    opts.gc = SIMINST_GC.into();
    let mut fleet = MgmtFleet::start_with(&opts)?;
    let all: Vec<usize> = (0..hosts).collect();
    let cut_host = hosts - 1;
    let rest: Vec<usize> = (0..cut_host).collect();
    let dir = fleet.vlan.run_dir().to_owned();
    let file = build_package(&fleet, &dir, "bulk", "1.0.0", PAYLOAD)?;
    let file_arg = file.display().to_string();

    let size = std::fs::metadata(&file)
        .map(|m| m.len())
        .map_err(|source| ScenarioError::Io {
            what: "reading the package's size".into(),
            source,
        })?;
    let chunks = size.div_ceil(CHUNK);
    let pending = fleet.spawn_monitor(0, &["siminst", "--timeout", "120s", &file_arg])?;
    let start = Instant::now();
    // The unpacked manifest appears with the first chunk, when the host
    // has joined the installation group; the other chunks follow. The cut
    // comes into the transfer, so that the cut host holds some chunks and
    // misses others: by what it has unpacked, not by a delay, which on a
    // quiet machine can outlast the whole transfer.
    let staging = fleet.data_dir(cut_host).join("siminst/staging");
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        if crate::vlan::wait_for(Duration::from_secs(60), Duration::from_millis(1), cond) {
            Ok(())
        } else {
            Err(ScenarioError::Timeout {
                what: format!("h{} {what}", cut_host + 1),
                waited: Duration::from_secs(60),
                seen: "not yet".into(),
            })
        }
    };
    wait(
        "to start receiving the package (an unpacked manifest)",
        &|| receiving(&fleet, cut_host),
    )?;
    wait("to unpack 1 MiB of the package", &|| {
        crate::package::package_written_past(&staging, CUT_AFTER_BYTES)
    })?;
    fleet.inject(Fault::Partition(vec![rest.clone(), vec![cut_host]]))?;
    out.notes.push(format!(
        "h{} cut off {:.2} s after the monitor started ({size} bytes, {chunks} chunks)",
        cut_host + 1,
        start.elapsed().as_secs_f64(),
    ));
    let t = fleet.wait_members(&[rest.clone(), vec![cut_host]], MEMBERS_TIMEOUT)?;
    out.notes
        .push(format!("excluded {:.2} s after the cut", t.as_secs_f64()));
    std::thread::sleep(Duration::from_secs(1));
    fleet.inject(Fault::Heal)?;
    let run = pending.wait()?;
    let mut expect: BTreeMap<String, &[&str]> = BTreeMap::new();
    for h in names(rest.iter().copied()) {
        expect.insert(h, &["ok"]);
    }
    let cut_name = format!("h{}", cut_host + 1);
    expect.insert(cut_name.clone(), &["ok", "disconnected"]);
    expect_outcomes(&mut out, "siminst with h5 cut off", &run, &expect);
    let t = fleet.wait_members(std::slice::from_ref(&all), MEMBERS_TIMEOUT)?;
    out.notes
        .push(format!("M whole {:.2} s after the report", t.as_secs_f64()));

    // Whatever the monitor saw, the cut host completes after the merge and
    // records it: the job's report gathered from the servers says so.
    let job = run
        .json
        .as_ref()
        .and_then(|j| j["job"].as_str())
        .map(str::to_owned);
    match job {
        None => out
            .violations
            .push(format!("the siminst report names no job: {}", run.text)),
        Some(job) => {
            let start = Instant::now();
            loop {
                let gathered = fleet.monitor(0, &["job", &job])?;
                let outcomes: Vec<Option<String>> = names(all.iter().copied())
                    .iter()
                    .map(|h| job_outcome(&gathered, h))
                    .collect();
                if outcomes.iter().all(|o| o.as_deref() == Some("ok")) {
                    out.notes.push(format!(
                        "monitor job {job}: every host ok {:.2} s after the report",
                        start.elapsed().as_secs_f64()
                    ));
                    let by_host = gathered.by_host();
                    if by_host.values().any(|o| o.len() != 1) {
                        out.violations
                            .push(format!("monitor job lists a host twice: {by_host:?}"));
                    }
                    break;
                }
                if start.elapsed() >= RESUME_TIMEOUT {
                    out.violations.push(format!(
                        "{cut_name} never reported installed in `monitor job {job}`: {outcomes:?}"
                    ));
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
    let listed = installed(&fleet, 0);
    for h in names(all.iter().copied()) {
        if listed.get(&h).map(Vec::as_slice) != Some(&["bulk 1.0.0".to_owned()][..]) {
            out.violations.push(format!(
                "monitor status: {h} has {:?}, want [\"bulk 1.0.0\"]",
                listed.get(&h)
            ));
        }
    }
    // How the cut host caught up: the origin logs the chunks it re-sent.
    let resent: u64 = fleet
        .daemon_log(0)
        .lines()
        .filter(|l| {
            l.contains("re-sending the chunks a target misses")
                && l.contains(&format!("host={cut_name}"))
        })
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("chunks="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum();
    out.notes.push(format!(
        "h1 re-sent {resent} of {chunks} chunks to {cut_name} after the merge{}",
        if resent == 0 {
            " (it had them all when cut: this run did not exercise the resume)"
        } else if resent < chunks {
            " (it resumed from the chunks it kept)"
        } else {
            ""
        }
    ));
    fleet.finish(out)
}

/// siminst over IP multicast on the bridge: five hosts with
/// `multicast.disseminate`, a 6 MiB package from h1. Every host installs,
/// and the origin puts the package on the wire about once (under twice its
/// size, where unicast to four others costs four times).
pub fn siminst_over_multicast(hosts: usize) -> Result<MgmtOutcome, ScenarioError> {
    const PAYLOAD: usize = 6 << 20;
    let mut out = MgmtOutcome {
        name: "siminst over IP multicast on the bridge".into(),
        ..MgmtOutcome::default()
    };
    let mut opts = MgmtOptions::new(hosts);
    opts.gc = SIMINST_GC.into();
    opts.multicast = true;
    let fleet = MgmtFleet::start_with(&opts)?;
    let dir = fleet.vlan.run_dir().to_owned();
    let file = build_package(&fleet, &dir, "wide", "1.0.0", PAYLOAD)?;
    let start = Instant::now();
    let run = fleet.monitor(0, &["siminst", &file.display().to_string()])?;
    out.notes.push(format!(
        "report after {:.2} s",
        start.elapsed().as_secs_f64()
    ));
    let mut expect: BTreeMap<String, &[&str]> = BTreeMap::new();
    for h in names(0..hosts) {
        expect.insert(h, &["ok"]);
    }
    expect_outcomes(&mut out, "siminst over multicast", &run, &expect);
    match await_origin_figures(|| fleet.daemon_log(0), Duration::from_secs(10)) {
        Some(OriginFigures {
            chunk_bytes: chunks,
            wire_bytes: wire,
        }) => {
            out.notes.push(format!(
                "the origin sent {wire} bytes on the wire for {chunks} bytes of chunks ({:.2}x)",
                wire as f64 / chunks.max(1) as f64
            ));
            if wire >= 2 * chunks {
                out.violations.push(format!(
                    "the origin sent {wire} bytes for {chunks}: not disseminated once"
                ));
            }
        }
        None => out
            .violations
            .push("h1 logged no 'the origin is done serving' line".into()),
    }
    fleet.finish(out)
}
