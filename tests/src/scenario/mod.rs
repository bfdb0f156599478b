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
//!   a partition, and a rolling restart while simex commands run.
//!
//! Every scenario ends the same way: the workload stops, the harness waits
//! for the fleet to go quiet, reads every host's event log and runs the
//! checker with a liveness phase (the processes still running must share one
//! view and have delivered its messages within the stated bound), then stops
//! every node cleanly and runs the checker again on the complete logs, which
//! is the strict check (self-delivery and safe delivery are only demanded of
//! processes that ended cleanly).

pub mod gc;
pub mod mgmt;
pub mod nodes;

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

/// Builds `cargo build -p PACKAGE --example/--bin NAME [--release]` in the
/// workspace this crate belongs to (into the same target directory as the
/// running build, which cargo's environment names) and returns the
/// executable's path. Cargo is quick when it is up to date.
///
/// `FLOTILLA_<NAME>_BIN` (e.g. `FLOTILLA_NODE_BIN`) skips the build and uses
/// that file.
pub fn cargo_build(
    package: &str,
    kind: &str,
    name: &str,
    release: bool,
) -> Result<PathBuf, ScenarioError> {
    let var = format!("FLOTILLA_{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&var) {
        return Ok(PathBuf::from(p));
    }
    let what = format!("{package} {kind} {name}");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(&workspace)
        .args([
            "build",
            "--message-format=json-render-diagnostics",
            "-p",
            package,
        ])
        .arg(format!("--{kind}"))
        .arg(name);
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
    // The last compiler-artifact message for the target names its file.
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
        .next_back()
        .ok_or(ScenarioError::Build {
            what,
            detail: "cargo named no executable".into(),
        })
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
        cargo_build("gc-core", "example", "node", release).map_err(|e| e.to_string())
    })
    .clone()
    .map_err(|detail| ScenarioError::Build {
        what: "gc-core example node".into(),
        detail,
    })
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
