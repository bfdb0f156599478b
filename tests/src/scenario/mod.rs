//! Fleets of real processes on a virtual LAN, the scenarios that fault them,
//! and the gc-core checker run on the event logs every host wrote.
//!
//! - [`nodes`]: a fleet of gc-core `node` example processes (the runtime over
//!   UDP), one per host, driven through stdin and followed through the JSON
//!   lines they print;
//! - [`gc`]: the scenarios over that fleet: form a view across the bridge,
//!   partition and heal, kill -9 and restart, SIGSTOP/SIGCONT, IP multicast
//!   discovery;
//! - [`mgmt`]: mgmtd on every host, driven by the real monitor: simex during
//!   a partition, and a rolling restart while simex commands run;
//! - [`maps`]: the replicated maps over that fleet: updates on both sides of
//!   a partition, the primary server killed during updates;
//! - [`siminst`]: a package installed while a host is cut off mid-transfer.
//!
//! Every scenario ends the same way: the workload stops, the harness waits
//! for the fleet to go quiet, reads every host's event log and runs the
//! checker with a liveness phase (the processes still running must share one
//! view and have delivered its messages within the stated bound), then stops
//! every node cleanly and runs the checker again on the complete logs, which
//! is the strict check (self-delivery and safe delivery are only demanded of
//! processes that ended cleanly).

pub mod gc;
pub mod maps;
pub mod mgmt;
pub mod nodes;
pub mod siminst;

use crate::faults::FaultError;
use crate::vlan::proc::ProcError;
use crate::vlan::VlanError;
use gc_core::check::Violation;
use gc_core::eventlog::EventLogError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// What stopped a scenario before it could check anything.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The network.
    #[error(transparent)]
    Vlan(#[from] VlanError),
    /// A process.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// A fault.
    #[error(transparent)]
    Fault(#[from] FaultError),
    /// The event logs could not be read.
    #[error(transparent)]
    EventLog(#[from] EventLogError),
    /// Building the binary under test failed.
    #[error("building {what} failed: {detail}")]
    Build {
        /// What was built.
        what: String,
        /// Cargo's complaint.
        detail: String,
    },
    /// A bounded wait ran out.
    #[error("timed out after {waited:?} waiting for {what}; last seen: {seen}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited: Duration,
        /// The state when it gave up, to debug from.
        seen: String,
    },
    /// A host index the fleet does not have.
    #[error("no host with index {0} in this fleet")]
    NoSuchHost(usize),
    /// Local I/O.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// What the checker found on the traces of a run.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    /// Which check this was ("live, with liveness" or "after clean stop").
    pub label: String,
    /// Incarnations in the logs.
    pub processes: usize,
    /// Views (regular and transitional) installed, over all processes.
    pub installs: usize,
    /// Messages sent.
    pub sends: usize,
    /// Messages delivered, over all processes.
    pub deliveries: usize,
    /// What the checker found (empty: every property holds).
    pub violations: Vec<Violation>,
}

impl CheckReport {
    /// Whether every property held.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "checker ({}): {} processes, {} installs, {} sends, {} deliveries: ",
            self.label, self.processes, self.installs, self.sends, self.deliveries
        )?;
        if self.violations.is_empty() {
            return f.write_str("no violations");
        }
        write!(f, "{} violations", self.violations.len())?;
        for v in &self.violations {
            write!(f, "\n  {v}")?;
        }
        Ok(())
    }
}

/// One executable to build: package, `bin` or `example`, and its name.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The package.
    pub package: &'a str,
    /// `bin` or `example`.
    pub kind: &'a str,
    /// The target's name.
    pub name: &'a str,
}

/// Builds the `targets` with one `cargo build -p P... --bin/--example N...
/// [--release]` in the workspace this crate belongs to (into the same target
/// directory as the running build) and returns their paths, in order. Cargo
/// is quick when they are up to date; the packages are selected together
/// (as the loopback tests build mgmtd and monitor) so that cargo unifies
/// their features the same way and the builds share their artifacts.
///
/// `FLOTILLA_<NAME>_BIN` (e.g. `FLOTILLA_NODE_BIN`) set for every target
/// skips the build and uses those files.
pub fn cargo_build(targets: &[Target<'_>], release: bool) -> Result<Vec<PathBuf>, ScenarioError> {
    let overrides: Vec<Option<PathBuf>> = targets
        .iter()
        .map(|t| {
            let var = format!("FLOTILLA_{}_BIN", t.name.to_uppercase().replace('-', "_"));
            std::env::var_os(var).map(PathBuf::from)
        })
        .collect();
    if overrides.iter().all(Option::is_some) {
        return Ok(overrides.into_iter().flatten().collect());
    }
    let what: Vec<String> = targets
        .iter()
        .map(|t| format!("{} {} {}", t.package, t.kind, t.name))
        .collect();
    let what = what.join(", ");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(&workspace)
        .args(["build", "--message-format=json-render-diagnostics"]);
    let mut packages: Vec<&str> = targets.iter().map(|t| t.package).collect();
    packages.dedup();
    for p in packages {
        cmd.args(["-p", p]);
    }
    for t in targets {
        cmd.arg(format!("--{}", t.kind)).arg(t.name);
    }
    if release {
        cmd.arg("--release");
    }
    // Run by hand (the nemesis binary, not `cargo run`), cargo would build
    // into the workspace's default target directory, from scratch; build
    // beside the running executable instead.
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        if let Some(dir) = target_dir_of_current_exe() {
            cmd.arg("--target-dir").arg(dir);
        }
    }
    let out = cmd.output().map_err(|source| ScenarioError::Io {
        what: format!("running cargo to build {what}"),
        source,
    })?;
    if !out.status.success() {
        return Err(ScenarioError::Build {
            what,
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let messages: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    targets
        .iter()
        .zip(overrides)
        .map(|(t, over)| {
            if let Some(p) = over {
                return Ok(p);
            }
            // The last compiler-artifact message for the target names its
            // file.
            messages
                .iter()
                .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == t.name)
                .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
                .next_back()
                .ok_or(ScenarioError::Build {
                    what: what.clone(),
                    detail: format!("cargo named no executable for {}", t.name),
                })
        })
        .collect()
}

/// The target directory the running executable was built in:
/// `TARGET/PROFILE/NAME` (binaries) or `TARGET/PROFILE/deps/NAME` (tests).
fn target_dir_of_current_exe() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?.to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let profile = dir.file_name()?.to_str()?;
    if profile != "debug" && profile != "release" {
        return None;
    }
    dir.parent().map(Path::to_path_buf)
}

/// The gc-core `node` example (dev profile for tests, release for the
/// nemesis), built once per process.
pub fn node_binary(release: bool) -> Result<PathBuf, ScenarioError> {
    static DEV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static REL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let cell = if release { &REL } else { &DEV };
    cell.get_or_init(|| {
        let node = Target {
            package: "gc-core",
            kind: "example",
            name: "node",
        };
        cargo_build(&[node], release)
            .map_err(|e| e.to_string())
            .and_then(|v| v.into_iter().next().ok_or_else(|| "no executable".into()))
    })
    .clone()
    .map_err(|detail| ScenarioError::Build {
        what: "gc-core example node".into(),
        detail,
    })
}

/// Where host `host` appends what its group-communication core installed
/// and delivered, in a run directory; every incarnation of the host
/// appends to it.
pub(crate) fn event_log(run: &Path, host: &str) -> PathBuf {
    run.join(format!("{host}.events.jsonl"))
}

/// Every host's event log in a network's run directory.
pub(crate) fn event_logs(vlan: &crate::vlan::Vlan) -> Vec<PathBuf> {
    vlan.hosts()
        .iter()
        .map(|h| event_log(vlan.run_dir(), &h.name))
        .collect()
}

/// Where runs keep their logs: `FLOTILLA_RUN_DIR`, or `$TMPDIR/flotilla-runs`.
pub fn runs_base() -> PathBuf {
    std::env::var_os("FLOTILLA_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("flotilla-runs"))
}

/// One scenario at a time per process: the machine has two cores, and two
/// fleets timing each other out would test the machine, not the protocol.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A scenario that panicked holds nothing the next one needs.
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
