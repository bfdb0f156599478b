//! mgmtd on every host of a virtual LAN, driven by the real `monitor`
//! binary: DESIGN.md's promise that every target of a command gets exactly
//! one outcome, and that hosts cut off are reported *disconnected*, never
//! lost, checked on a network that really splits.
//!
//! The monitor runs in the machine's own namespace and reaches a daemon
//! through its Unix socket (the file system is shared by all namespaces), so
//! it keeps its connection to its daemon whatever the faults do to the LAN.
//!
//! Scenarios (ISSUE 8, item 5): (a) simex during a partition, (e) a rolling
//! restart of every daemon while simex commands run; (b) and (c), over the
//! replicated maps, are in [`super::maps`], and (d), siminst, in
//! [`super::siminst`], on the same fleet ([`MgmtFleet::start_with`]).
//!
//! Every daemon writes an event log (`event_log:` in its configuration);
//! [`MgmtFleet::finish`] runs the gc-core checker over the logs of every
//! incarnation of every host once the daemons have stopped, so each
//! scenario also checks the group-communication guarantees on real
//! processes and a real network.

use super::{cargo_build, ScenarioError, Target};
use crate::faults::Fault;
use crate::vlan::proc::{HostProcess, Spec, State};
use crate::vlan::Vlan;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The UDP port of every daemon.
pub const MGMT_PORT: u16 = 7600;

/// How long the fleet may take to agree on M after a start, heal or restart.
pub const MEMBERS_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one monitor command may run.
pub const MONITOR_TIMEOUT: Duration = Duration::from_secs(60);

/// The two binaries.
#[derive(Clone, Debug)]
pub struct MgmtBinaries {
    /// mgmtd.
    pub mgmtd: PathBuf,
    /// monitor.
    pub monitor: PathBuf,
}

/// Builds mgmtd and monitor (dev profile, together), once per process.
pub fn binaries() -> Result<MgmtBinaries, ScenarioError> {
    static BUILT: std::sync::OnceLock<Result<MgmtBinaries, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let t = |package, name| Target {
                package,
                kind: "bin",
                name,
            };
            match cargo_build(&[t("mgmtd", "mgmtd"), t("monitor", "monitor")], false) {
                Ok(v) => match v.as_slice() {
                    [mgmtd, monitor] => Ok(MgmtBinaries {
                        mgmtd: mgmtd.clone(),
                        monitor: monitor.clone(),
                    }),
                    _ => Err("cargo named the wrong number of executables".into()),
                },
                Err(e) => Err(e.to_string()),
            }
        })
        .clone()
        .map_err(|detail| ScenarioError::Build {
            what: "mgmtd and monitor".into(),
            detail,
        })
}

/// One host's outcome in a monitor report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostOutcome {
    /// The host.
    pub host: String,
    /// `ok`, `failed`, `disconnected`, ...
    pub outcome: String,
}

/// A finished monitor command.
#[derive(Clone, Debug)]
pub struct MonitorRun {
    /// Its exit code.
    pub code: Option<i32>,
    /// Its JSON document, when it printed one.
    pub json: Option<Value>,
    /// stdout and stderr, for messages.
    pub text: String,
    /// How long it ran.
    pub took: Duration,
}

impl MonitorRun {
    /// Every host line of the report, in order (duplicates kept: a host
    /// listed twice is a bug the scenarios look for).
    pub fn outcomes(&self) -> Vec<HostOutcome> {
        self.json
            .as_ref()
            .and_then(|j| j["hosts"].as_array())
            .map(|hs| {
                hs.iter()
                    .map(|h| HostOutcome {
                        host: h["host"].as_str().unwrap_or("?").to_owned(),
                        outcome: h["outcome"].as_str().unwrap_or("?").to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// host → outcomes (more than one is a violation).
    pub fn by_host(&self) -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for o in self.outcomes() {
            m.entry(o.host).or_default().push(o.outcome);
        }
        m
    }
}

/// A monitor command still running.
pub struct PendingMonitor {
    child: Child,
    started: Instant,
    out: std::thread::JoinHandle<Vec<u8>>,
    err: std::thread::JoinHandle<Vec<u8>>,
}

impl PendingMonitor {
    /// Whether it has exited, or has run past [`MONITOR_TIMEOUT`]: either
    /// way [`PendingMonitor::wait`] now returns at once.
    pub fn finished(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)) | Err(_))
            || self.started.elapsed() >= MONITOR_TIMEOUT
    }

    /// Waits for it (bounded by [`MONITOR_TIMEOUT`], then killed).
    pub fn wait(self) -> Result<MonitorRun, ScenarioError> {
        self.wait_for(MONITOR_TIMEOUT)
    }

    /// Waits for it at most `limit` from its start, then kills it.
    pub fn wait_for(mut self, limit: Duration) -> Result<MonitorRun, ScenarioError> {
        let deadline = self.started + limit;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
                Err(source) => {
                    return Err(ScenarioError::Io {
                        what: "waiting for monitor".into(),
                        source,
                    })
                }
            }
        };
        let out = self.out.join().unwrap_or_default();
        let err = self.err.join().unwrap_or_default();
        let took = self.started.elapsed();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        );
        let Some(status) = status else {
            return Err(ScenarioError::Timeout {
                what: "a monitor command".into(),
                waited: limit,
                seen: text,
            });
        };
        Ok(MonitorRun {
            code: status.code(),
            json: serde_json::from_slice(&out).ok(),
            text,
            took,
        })
    }
}

/// Release builds of mgmtd and monitor, built once per process by the
/// loopback tests' [`crate::loopback::release_binaries`]: for scenarios that
/// move megabytes (siminst), which debug builds of the group core cannot do
/// on a small machine without their heartbeats starving.
pub fn release_binaries() -> Result<MgmtBinaries, ScenarioError> {
    crate::loopback::release_binaries()
        .map(|b| MgmtBinaries {
            mgmtd: b.mgmtd,
            monitor: b.monitor,
        })
        .map_err(|e| ScenarioError::Build {
            what: "release mgmtd and monitor".into(),
            detail: e.to_string(),
        })
}

/// The IP multicast group and port of [`MgmtOptions::multicast`].
const MGMT_MULTICAST_GROUP: &str = "239.77.0.2";
const MGMT_MULTICAST_PORT: u16 = 7402;

/// How a fleet is built and configured.
#[derive(Clone, Debug)]
pub struct MgmtOptions {
    /// How many hosts.
    pub hosts: usize,
    /// Release daemons ([`release_binaries`]) rather than dev ones.
    pub release: bool,
    /// The replicated maps over every host (`maps: {hosts: [h1, ...]}`).
    pub maps: bool,
    /// A `gc:` section (empty: the defaults).
    pub gc: String,
    /// IP multicast over the bridge: discovery and dissemination
    /// (`multicast: {group, port, disseminate: true}`).
    pub multicast: bool,
    /// With [`MgmtOptions::multicast`]: the daemons listen on 0.0.0.0, know
    /// no seeds and name the interface for the group
    /// (`multicast.interface`), on hosts without a multicast route, where
    /// the system has no interface to choose for the group by itself.
    pub multicast_interface: bool,
}

impl MgmtOptions {
    /// `hosts` dev daemons, no maps, the default gc timers.
    pub fn new(hosts: usize) -> MgmtOptions {
        MgmtOptions {
            hosts,
            release: false,
            maps: false,
            gc: String::new(),
            multicast: false,
            multicast_interface: false,
        }
    }
}

/// mgmtd on every host.
pub struct MgmtFleet {
    /// The network.
    pub vlan: Vlan,
    /// The daemon on each host.
    pub procs: Vec<HostProcess>,
    /// The binaries.
    pub bin: MgmtBinaries,
    /// Faults injected, with their time.
    pub journal: Vec<(Duration, Fault)>,
    started: Instant,
}

fn host_dir(run: &Path, name: &str) -> PathBuf {
    run.join(name)
}

impl MgmtFleet {
    /// Builds the network, a key, a configuration per host, and starts the
    /// daemons; waits until every daemon has every host in M.
    pub fn start(hosts: usize) -> Result<MgmtFleet, ScenarioError> {
        MgmtFleet::start_with(&MgmtOptions::new(hosts))
    }

    /// [`MgmtFleet::start`] with options.
    pub fn start_with(opts: &MgmtOptions) -> Result<MgmtFleet, ScenarioError> {
        let hosts = opts.hosts;
        let bin = if opts.release {
            release_binaries()?
        } else {
            binaries()?
        };
        let vlan = Vlan::new(hosts, &super::runs_base())?;
        let run = vlan.run_dir().to_owned();
        let key = run.join("cluster.key");
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| ScenarioError::Io { what, source }
        };
        let st = Command::new(&bin.mgmtd)
            .arg("keygen")
            .arg(&key)
            .output()
            .map_err(io("running mgmtd keygen"))?;
        if !st.status.success() {
            return Err(ScenarioError::Build {
                what: "the cluster key".into(),
                detail: String::from_utf8_lossy(&st.stderr).into_owned(),
            });
        }
        // The same maps section on every host: majorities count all of them.
        let maps = if opts.maps {
            let names: Vec<&str> = vlan.hosts().iter().map(|h| h.name.as_str()).collect();
            format!("maps:\n  hosts: [{}]\n", names.join(", "))
        } else {
            String::new()
        };
        let multicast = if opts.multicast {
            format!("multicast:\n  group: {MGMT_MULTICAST_GROUP}\n  port: {MGMT_MULTICAST_PORT}\n  disseminate: true\n")
        } else {
            String::new()
        };
        let by_interface = opts.multicast && opts.multicast_interface;
        if by_interface {
            vlan.remove_multicast_routes()?;
        }
        let mut procs = Vec::new();
        for h in vlan.hosts() {
            let home = host_dir(&run, &h.name);
            std::fs::create_dir_all(home.join("data")).map_err(io("creating a data dir"))?;
            let seeds: Vec<String> = vlan
                .hosts()
                .iter()
                .filter(|o| o.index != h.index && !by_interface)
                .map(|o| format!("  - {}:{MGMT_PORT}", o.addr))
                .collect();
            let (listen, seeds, multicast) = if by_interface {
                (
                    "0.0.0.0".to_owned(),
                    "[]".to_owned(),
                    format!("{multicast}  interface: {}\n", h.addr),
                )
            } else {
                (
                    h.addr.to_string(),
                    format!("\n{}", seeds.join("\n")),
                    multicast.clone(),
                )
            };
            let config = format!(
                "name: {name}\nlisten: {listen}:{MGMT_PORT}\nseeds: {seeds}\ncluster_key: {key}\ndata_dir: {data}\nattributes:\n  role: {role}\nclient:\n  socket: {sock}\nexec:\n  timeout: 30s\n  kill_grace: 200ms\nlog_level: info\nevent_log: {events}\n{maps}{multicast}{gc}",
                gc = opts.gc,
                name = h.name,
                key = key.display(),
                data = home.join("data").display(),
                role = if h.index == 0 { "db" } else { "web" },
                sock = home.join("mgmtd.sock").display(),
                events = super::event_log(&run, &h.name).display(),
            );
            let path = home.join("mgmtd.yaml");
            std::fs::write(&path, config).map_err(io("writing a configuration"))?;
            let spec = Spec {
                program: bin.mgmtd.clone(),
                args: vec!["--config".into(), path.display().to_string()],
                env: vec![],
            };
            procs.push(HostProcess::new(h, "mgmtd", spec, &run));
        }
        let mut fleet = MgmtFleet {
            vlan,
            procs,
            bin,
            journal: Vec::new(),
            started: Instant::now(),
        };
        for p in &mut fleet.procs {
            p.start()?;
        }
        let all: Vec<usize> = (0..hosts).collect();
        fleet.wait_members(&[all], MEMBERS_TIMEOUT)?;
        Ok(fleet)
    }

    /// Host `h`'s data directory (maps log, siminst staging, packages).
    pub fn data_dir(&self, h: usize) -> PathBuf {
        host_dir(self.vlan.run_dir(), &format!("h{}", h + 1)).join("data")
    }

    /// What host `h`'s daemon has logged (stderr) since its latest start.
    pub fn daemon_log(&self, h: usize) -> String {
        self.procs
            .get(h)
            .map(|p| p.err_log(p.starts().saturating_sub(1)))
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }

    /// Host `h`'s client socket.
    pub fn socket(&self, h: usize) -> PathBuf {
        host_dir(self.vlan.run_dir(), &format!("h{}", h + 1)).join("mgmtd.sock")
    }

    /// Starts `monitor --json ARGS` against host `h`'s daemon.
    pub fn spawn_monitor(&self, h: usize, args: &[&str]) -> Result<PendingMonitor, ScenarioError> {
        self.spawn_monitor_as(h, true, args)
    }

    /// Runs `monitor ARGS` without `--json`: the text a user reads.
    pub fn monitor_text(&self, h: usize, args: &[&str]) -> Result<MonitorRun, ScenarioError> {
        self.spawn_monitor_as(h, false, args)?.wait()
    }

    /// Starts `monitor [--json] ARGS` against host `h`'s daemon.
    pub fn spawn_monitor_as(
        &self,
        h: usize,
        json: bool,
        args: &[&str],
    ) -> Result<PendingMonitor, ScenarioError> {
        let mut child = Command::new(&self.bin.monitor)
            .env("FLOTILLA_SOCKET", self.socket(h))
            .env_remove("FLOTILLA_CONNECT")
            .args(json.then_some("--json"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ScenarioError::Io {
                what: "starting monitor".into(),
                source,
            })?;
        let read = |r: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut v);
                }
                v
            })
        };
        let out = read(child.stdout.take().map(|s| Box::new(s) as _));
        let err = read(child.stderr.take().map(|s| Box::new(s) as _));
        Ok(PendingMonitor {
            child,
            started: Instant::now(),
            out,
            err,
        })
    }

    /// Runs `monitor --json ARGS` against host `h`'s daemon.
    pub fn monitor(&self, h: usize, args: &[&str]) -> Result<MonitorRun, ScenarioError> {
        self.spawn_monitor(h, args)?.wait()
    }

    /// The hosts in host `h`'s M (empty when it cannot say).
    pub fn members(&self, h: usize) -> Vec<String> {
        let Ok(run) = self.monitor(h, &["members"]) else {
            return Vec::new();
        };
        let mut names: Vec<String> = run
            .json
            .as_ref()
            .and_then(|j| j["members"].as_array())
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| m["host"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Waits until, in each component, every daemon's M is exactly that
    /// component's hosts.
    pub fn wait_members(
        &self,
        components: &[Vec<usize>],
        timeout: Duration,
    ) -> Result<Duration, ScenarioError> {
        let start = Instant::now();
        loop {
            let mut last = String::new();
            let ok = components.iter().all(|comp| {
                let mut want: Vec<String> = comp.iter().map(|h| format!("h{}", h + 1)).collect();
                want.sort();
                comp.iter().all(|&h| {
                    let m = self.members(h);
                    if m != want {
                        last = format!("h{} has M = {m:?}, want {want:?}", h + 1);
                    }
                    m == want
                })
            });
            if ok {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return Err(ScenarioError::Timeout {
                    what: format!("M of components {components:?}"),
                    waited: timeout,
                    seen: last,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Injects a fault and journals it.
    pub fn inject(&mut self, fault: Fault) -> Result<(), ScenarioError> {
        crate::faults::inject(&mut self.vlan, &mut self.procs, &fault)?;
        self.journal.push((self.started.elapsed(), fault));
        Ok(())
    }

    /// Stops every daemon with SIGTERM (a clean leave), bounded.
    pub fn stop(&mut self) -> Result<(), ScenarioError> {
        for p in &mut self.procs {
            if p.state() == State::Stopped {
                p.resume()?;
            }
            if p.state() != State::Down {
                p.terminate(Duration::from_secs(10))?;
            }
        }
        Ok(())
    }

    /// Every host's event log.
    pub fn event_logs(&self) -> Vec<PathBuf> {
        super::event_logs(&self.vlan)
    }

    /// The end of every scenario: stops the daemons, runs the gc-core
    /// checker over the event logs of every incarnation of every host, and
    /// keeps the run directory when anything was found.
    pub fn finish(mut self, mut out: MgmtOutcome) -> Result<MgmtOutcome, ScenarioError> {
        self.stop()?;
        let trace = gc_core::eventlog::read_event_logs(&self.event_logs())?;
        let check = super::nodes::report("the daemons' event logs, after a clean stop", &trace);
        out.violations
            .extend(check.violations.iter().map(|v| format!("checker: {v}")));
        out.notes.push(check.to_string());
        out.notes.extend(
            self.journal
                .iter()
                .map(|(t, f)| format!("fault at {:.1} s: {f}", t.as_secs_f64())),
        );
        if !out.violations.is_empty() {
            self.vlan.keep_run_dir();
            out.notes
                .push(format!("logs kept in {}", self.vlan.run_dir().display()));
        }
        Ok(out)
    }
}

/// What an mgmtd scenario found: an empty `violations` means it held.
#[derive(Debug, Default)]
pub struct MgmtOutcome {
    /// The scenario.
    pub name: String,
    /// What it measured and saw.
    pub notes: Vec<String>,
    /// Broken promises.
    pub violations: Vec<String>,
}

impl std::fmt::Display for MgmtOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "scenario {}:", self.name)?;
        for n in &self.notes {
            writeln!(f, "  {n}")?;
        }
        if self.violations.is_empty() {
            writeln!(f, "  no violations")
        } else {
            for v in &self.violations {
                writeln!(f, "  VIOLATION: {v}")?;
            }
            Ok(())
        }
    }
}

/// Checks that `run` gave every host in `expect` exactly one outcome, one
/// of the allowed ones, and no outcome to anyone else.
pub(crate) fn expect_outcomes(
    out: &mut MgmtOutcome,
    label: &str,
    run: &MonitorRun,
    expect: &BTreeMap<String, &[&str]>,
) {
    let got = run.by_host();
    if run.json.is_none() {
        out.violations.push(format!(
            "{label}: monitor printed no JSON report (exit {:?}): {}",
            run.code, run.text
        ));
        return;
    }
    for (host, allowed) in expect {
        match got.get(host).map(Vec::as_slice) {
            None => out
                .violations
                .push(format!("{label}: {host} has no outcome (lost)")),
            Some([one]) if allowed.contains(&one.as_str()) => {}
            Some([one]) => out.violations.push(format!(
                "{label}: {host} outcome {one:?}, expected one of {allowed:?}"
            )),
            Some(many) => out.violations.push(format!(
                "{label}: {host} has {} outcomes: {many:?}",
                many.len()
            )),
        }
    }
    // The report also lists the hosts of M that were not targets, as
    // "not targeted" (issue 5's table); anything else is a host that should
    // not be there.
    for (host, outcomes) in &got {
        if !expect.contains_key(host) && outcomes.iter().any(|o| o != "not targeted") {
            out.violations.push(format!(
                "{label}: {host} was not a target but has outcomes {outcomes:?}"
            ));
        }
    }
    let summary: Vec<String> = run
        .outcomes()
        .iter()
        .map(|o| format!("{}={}", o.host, o.outcome))
        .collect();
    out.notes.push(format!(
        "{label}: exit {:?} in {:.2} s: {}",
        run.code,
        run.took.as_secs_f64(),
        summary.join(" ")
    ));
}

pub(crate) fn names(hosts: impl IntoIterator<Item = usize>) -> Vec<String> {
    hosts.into_iter().map(|h| format!("h{}", h + 1)).collect()
}

/// (a) simex during a partition. A command that runs 3 s starts on all five
/// hosts; 0.7 s in, the network splits {h1,h2,h3} | {h4,h5}. The monitor
/// (on h1) must report h1-h3 ok and h4, h5 *disconnected*, each exactly
/// once. During the partition, each side runs commands on its own side;
/// after the heal, one command reaches everyone again.
pub fn simex_during_partition(hosts: usize) -> Result<MgmtOutcome, ScenarioError> {
    let mut out = MgmtOutcome {
        name: "(a) simex during a partition".into(),
        ..MgmtOutcome::default()
    };
    let mut fleet = MgmtFleet::start(hosts)?;
    let cut = hosts.div_ceil(2);
    let near: Vec<usize> = (0..cut).collect();
    let far: Vec<usize> = (cut..hosts).collect();

    let pending = fleet.spawn_monitor(0, &["simex", "--", "sleep 3; echo done"])?;
    std::thread::sleep(Duration::from_millis(700));
    fleet.inject(Fault::Partition(vec![near.clone(), far.clone()]))?;
    let run = pending.wait()?;
    let mut expect: BTreeMap<String, &[&str]> = BTreeMap::new();
    for h in names(near.clone()) {
        expect.insert(h, &["ok"]);
    }
    for h in names(far.clone()) {
        expect.insert(h, &["disconnected"]);
    }
    expect_outcomes(&mut out, "simex cut mid-command", &run, &expect);

    let t = fleet.wait_members(&[near.clone(), far.clone()], MEMBERS_TIMEOUT)?;
    out.notes.push(format!(
        "each side's M is its own hosts {:.2} s after the command",
        t.as_secs_f64()
    ));
    // Each side keeps working on its own.
    for (side, at) in [(&near, near[0]), (&far, far[0])] {
        let run = fleet.monitor(at, &["simex", "--", "hostname; true"])?;
        let expect: BTreeMap<String, &[&str]> = names(side.iter().copied())
            .into_iter()
            .map(|h| (h, &["ok"][..]))
            .collect();
        expect_outcomes(
            &mut out,
            &format!("simex on h{}'s side", at + 1),
            &run,
            &expect,
        );
    }
    // A far host named explicitly is reported, not skipped.
    let far_name = format!("h{}", far[0] + 1);
    let run = fleet.monitor(0, &["simex", "--targets", &far_name, "--", "true"])?;
    let mut expect: BTreeMap<String, &[&str]> = BTreeMap::new();
    expect.insert(far_name.clone(), &["unknown host", "disconnected"]);
    expect_outcomes(
        &mut out,
        &format!("simex --targets {far_name} from h1"),
        &run,
        &expect,
    );
    if run.code == Some(0) {
        out.violations
            .push("simex to a host across the partition exited 0".into());
    }

    fleet.inject(Fault::Heal)?;
    let all: Vec<usize> = (0..hosts).collect();
    let t = fleet.wait_members(std::slice::from_ref(&all), MEMBERS_TIMEOUT)?;
    out.notes.push(format!(
        "M is every host again {:.2} s after the heal",
        t.as_secs_f64()
    ));
    let run = fleet.monitor(0, &["simex", "--", "true"])?;
    let expect: BTreeMap<String, &[&str]> =
        names(all).into_iter().map(|h| (h, &["ok"][..])).collect();
    expect_outcomes(&mut out, "simex after the heal", &run, &expect);
    fleet.finish(out)
}

/// Daemons that know no seeds and listen on 0.0.0.0, on hosts without a
/// multicast route, find each other through the group on the interface
/// their configuration names (`multicast.interface`), and serve a simex.
pub fn discovery_on_the_named_interface(hosts: usize) -> Result<MgmtOutcome, ScenarioError> {
    let mut out = MgmtOutcome {
        name: "discovery through IP multicast on the named interface".into(),
        ..MgmtOutcome::default()
    };
    let mut opts = MgmtOptions::new(hosts);
    opts.multicast = true;
    opts.multicast_interface = true;
    // Returns once every daemon has every host in M.
    let fleet = MgmtFleet::start_with(&opts)?;
    let run = fleet.monitor(hosts - 1, &["simex", "--", "true"])?;
    let expect: BTreeMap<String, &[&str]> = names(0..hosts)
        .into_iter()
        .map(|h| (h, &["ok"][..]))
        .collect();
    expect_outcomes(&mut out, "simex over the discovered fleet", &run, &expect);
    fleet.finish(out)
}

/// (e) A rolling restart of every daemon, one at a time, while simex
/// commands run: for each host, a 1.5 s command starts from another host's
/// monitor, the host's daemon gets SIGTERM mid-command and starts again.
/// Every target gets exactly one outcome (the restarted one: ok or
/// disconnected; the others: ok), and the fleet is whole again before the
/// next host restarts.
pub fn rolling_restart(hosts: usize) -> Result<MgmtOutcome, ScenarioError> {
    let mut out = MgmtOutcome {
        name: "(e) rolling restart while simex runs".into(),
        ..MgmtOutcome::default()
    };
    let mut fleet = MgmtFleet::start(hosts)?;
    let all: Vec<usize> = (0..hosts).collect();
    for victim in 0..hosts {
        let via = (victim + 1) % hosts;
        let pending = fleet.spawn_monitor(via, &["simex", "--", "sleep 1.5; echo done"])?;
        std::thread::sleep(Duration::from_millis(400));
        let t0 = Instant::now();
        // SIGTERM: the daemon leaves the group cleanly, as a restart by
        // the service manager does.
        fleet.procs[victim].terminate(Duration::from_secs(10))?;
        fleet.inject(Fault::Restart(victim))?;
        let run = pending.wait()?;
        let mut expect: BTreeMap<String, &[&str]> = BTreeMap::new();
        for h in names(all.iter().copied()) {
            expect.insert(h, &["ok"]);
        }
        expect.insert(format!("h{}", victim + 1), &["ok", "disconnected"]);
        expect_outcomes(
            &mut out,
            &format!("simex via h{} while h{} restarts", via + 1, victim + 1),
            &run,
            &expect,
        );
        let t = fleet.wait_members(std::slice::from_ref(&all), MEMBERS_TIMEOUT)?;
        out.notes.push(format!(
            "h{} back in every M {:.2} s after its restart began",
            victim + 1,
            (t0.elapsed().max(t)).as_secs_f64()
        ));
    }
    let run = fleet.monitor(0, &["simex", "--", "true"])?;
    let expect: BTreeMap<String, &[&str]> =
        names(all).into_iter().map(|h| (h, &["ok"][..])).collect();
    expect_outcomes(&mut out, "simex after the rolling restart", &run, &expect);
    fleet.finish(out)
}
