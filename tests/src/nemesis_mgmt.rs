//! The nemesis against the product: random faults against a fleet of real
//! `mgmtd` daemons on a virtual LAN while monitors keep running `simex`
//! commands through random hosts; then every fault is repaired, the fleet
//! must agree on M again, a last command must reach every host, and the
//! gc-core checker runs over the daemons' event logs.
//!
//! ```text
//! cargo run --release -p flotilla-tests --bin nemesis -- --mgmtd --hosts 5 --duration 120s
//! ```
//!
//! What each command's report must show, whatever the faults: every host of
//! the fleet at most once, and each with *ok* (it ran `true`) or
//! *disconnected* (it left the view while the command ran). A monitor whose
//! own daemon was killed or stopped may lose its connection; any other
//! monitor failure is a finding.
//!
//! The workload also sets keys of a replicated map (`monitor map set kv kN
//! VALUE --id ID` through random hosts), counting the updates applied
//! (exit 0), refused (not in the primary component, or settling) and
//! unknown (cut off by a membership change); after the final heal every
//! applied update must be in every replica's history at the version it
//! was acknowledged with, no id (applied or unknown) applied twice, and
//! every replica must list the same entries. Every 20 s a small siminst
//! (64 KiB, a new version each time) goes to the fleet: each host at most
//! once in its report; a last one after the repair must be ok everywhere.

use crate::faults::Fault;
use crate::nemesis::{choose, kind, repairs, NemesisOptions};
use crate::scenario::maps::{self, Acked, Answer};
use crate::scenario::mgmt::{MgmtFleet, MgmtOptions, MgmtOutcome, MonitorRun, PendingMonitor};
use crate::scenario::siminst::build_package;
use crate::scenario::ScenarioError;
use crate::vlan::proc::State;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// Monitors running at once.
const MAX_PENDING: usize = 3;

/// The map the workload updates, and how many keys it spreads them over.
const MAP: &str = "kv";
const KEYS: usize = 20;

/// Between two siminst jobs of the workload.
const SIMINST_EVERY: Duration = Duration::from_secs(20);

/// The size of the workload's packages: small, since the nemesis runs dev
/// daemons (the megabyte case is scenario (d), on release daemons).
const SIMINST_PAYLOAD: usize = 64 << 10;

/// What a run of the nemesis against mgmtd did and found.
#[derive(Debug, Default)]
pub struct MgmtNemesisReport {
    /// Hosts.
    pub hosts: usize,
    /// The seed.
    pub seed: u64,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// Time faults were injected.
    pub fault_phase: Duration,
    /// Faults injected (repairs included), by kind.
    pub faults: BTreeMap<String, u64>,
    /// `simex` commands started.
    pub commands: u64,
    /// Commands whose monitor printed a report.
    pub reports: u64,
    /// Monitors that lost their own daemon to a fault (no report).
    pub lost_daemon: u64,
    /// Host outcomes over all reports, by outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// `map set` commands started.
    pub map_sets: u64,
    /// Their answers: applied, refused, unknown, not sent.
    pub map_answers: BTreeMap<String, u64>,
    /// The updates acknowledged as applied.
    pub applied: Vec<Acked>,
    /// Ids whose outcome was unknown (they may be applied, at most once).
    pub unknown_ids: Vec<String>,
    /// siminst jobs started.
    pub siminsts: u64,
    /// Host outcomes over all siminst reports, by outcome.
    pub siminst_outcomes: BTreeMap<String, u64>,
    /// Time from the final repair until every daemon's M was the whole fleet.
    pub converged_in: Option<Duration>,
    /// The end of the run: the last command, the checker, the fault journal.
    pub end: MgmtOutcome,
    /// Broken promises found during the fault phase.
    pub findings: Vec<String>,
}

impl MgmtNemesisReport {
    /// No finding and no violation.
    pub fn clean(&self) -> bool {
        self.findings.is_empty() && self.end.violations.is_empty()
    }
}

impl fmt::Display for MgmtNemesisReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "nemesis (mgmtd): {} hosts, seed {}",
            self.hosts, self.seed
        )?;
        crate::nemesis::write_fault_phase(f, self.fault_phase, self.wall, &self.faults)?;
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "operations: {} simex commands, {} reports ({}), {} monitors lost their daemon",
            self.commands,
            self.reports,
            outcomes.join(", "),
            self.lost_daemon
        )?;
        let answers: Vec<String> = self
            .map_answers
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "            {} map updates ({})",
            self.map_sets,
            answers.join(", ")
        )?;
        let sims: Vec<String> = self
            .siminst_outcomes
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "            {} siminst jobs (host outcomes: {})",
            self.siminsts,
            sims.join(", ")
        )?;
        match self.converged_in {
            Some(d) => writeln!(
                f,
                "converged: M is every host {:.2} s after the final repair",
                d.as_secs_f64()
            )?,
            None => writeln!(f, "converged: NO")?,
        }
        write!(f, "{}", self.end)?;
        if self.findings.is_empty() {
            writeln!(f, "findings: none")
        } else {
            writeln!(f, "findings:")?;
            for x in &self.findings {
                writeln!(f, "  {x}")?;
            }
            Ok(())
        }
    }
}

/// What a monitor in flight runs.
enum Op {
    Simex,
    /// `map set MAP key value --id id`.
    MapSet {
        key: String,
        value: String,
        id: String,
    },
    Siminst,
}

/// A command in flight, and whether its daemon was harmed meanwhile.
struct InFlight {
    monitor: PendingMonitor,
    op: Op,
    via: usize,
    daemon_faulted: bool,
}

/// Checks one finished command, whatever it ran.
fn check_done(report: &mut MgmtNemesisReport, hosts: usize, done: InFlight) {
    let run = done.monitor.wait();
    match done.op {
        Op::Simex => check_report(report, hosts, done.via, done.daemon_faulted, run),
        Op::MapSet { key, value, id } => {
            check_map_set(report, done.via, done.daemon_faulted, run, key, value, id)
        }
        Op::Siminst => check_siminst(report, hosts, done.via, done.daemon_faulted, run),
    }
}

/// Counts one `map set`'s answer; an applied one joins the updates checked
/// at the end, an unknown one the ids that may be applied at most once.
fn check_map_set(
    report: &mut MgmtNemesisReport,
    via: usize,
    daemon_faulted: bool,
    run: Result<MonitorRun, ScenarioError>,
    key: String,
    value: String,
    id: String,
) {
    let label = format!("map set {key} (id {id}) via h{}", via + 1);
    let answer = match run {
        Ok(run) => maps::answer(&run),
        Err(e) => {
            // The monitor hung past its bound: what happened to the update
            // is unknown, and a hang is a finding unless its daemon stopped.
            if !daemon_faulted {
                report.findings.push(format!("{label}: {e}"));
            }
            Answer::Unknown
        }
    };
    let kind = match &answer {
        Answer::Applied { version, .. } => {
            report.applied.push(Acked {
                key,
                value,
                id,
                version: *version,
            });
            "applied"
        }
        Answer::NotPrimary => "refused (not primary)",
        Answer::Refused(_) => "refused (other)",
        Answer::NotSent(_) => "not sent (no daemon)",
        Answer::Unknown => {
            report.unknown_ids.push(id);
            "unknown"
        }
        Answer::Rejected(why) => {
            report
                .findings
                .push(format!("{label}: a plain set was rejected: {why}"));
            "rejected"
        }
        Answer::Other(text) => {
            report.unknown_ids.push(id);
            if !daemon_faulted {
                report
                    .findings
                    .push(format!("{label}: an answer no user should see: {text}"));
            }
            "other"
        }
    };
    *report.map_answers.entry(kind.to_owned()).or_default() += 1;
}

/// Checks one siminst report: every host at most once, each with an
/// outcome a fault can explain (ok, disconnected, timed out).
fn check_siminst(
    report: &mut MgmtNemesisReport,
    hosts: usize,
    via: usize,
    daemon_faulted: bool,
    run: Result<MonitorRun, ScenarioError>,
) {
    let label = format!("siminst via h{}", via + 1);
    let run = match run {
        Ok(run) if run.json.is_some() => run,
        Ok(run) => {
            if !daemon_faulted {
                report.findings.push(format!(
                    "{label}: no report (exit {:?}): {}",
                    run.code,
                    run.text.trim()
                ));
            }
            return;
        }
        Err(e) => {
            if !daemon_faulted {
                report.findings.push(format!("{label}: {e}"));
            }
            return;
        }
    };
    for (host, outcomes) in run.by_host() {
        if !(1..=hosts).any(|i| host == format!("h{i}")) {
            report
                .findings
                .push(format!("{label}: a host not in the fleet: {host}"));
        }
        if outcomes.len() > 1 {
            report
                .findings
                .push(format!("{label}: {host} has outcomes {outcomes:?}"));
        }
        for o in outcomes {
            if !["ok", "disconnected", "timed out"].contains(&o.as_str()) {
                report.findings.push(format!(
                    "{label}: {host} reported {o:?}: {}",
                    run.text.trim()
                ));
            }
            *report.siminst_outcomes.entry(o).or_default() += 1;
        }
    }
}

/// Checks one finished command's report.
fn check_report(
    report: &mut MgmtNemesisReport,
    hosts: usize,
    via: usize,
    daemon_faulted: bool,
    run: Result<MonitorRun, ScenarioError>,
) {
    let label = format!(
        "simex #{} via h{}",
        report.reports + report.lost_daemon + 1,
        via + 1
    );
    let run = match run {
        Ok(run) => run,
        Err(e) if daemon_faulted => {
            report.lost_daemon += 1;
            note_lost(&label, &e.to_string());
            return;
        }
        Err(e) => {
            report.findings.push(format!("{label}: {e}"));
            return;
        }
    };
    if run.json.is_none() {
        if daemon_faulted {
            report.lost_daemon += 1;
        } else {
            report.findings.push(format!(
                "{label}: no report (exit {:?}) although h{} was not faulted: {}",
                run.code,
                via + 1,
                run.text.trim()
            ));
        }
        return;
    }
    report.reports += 1;
    for (host, outcomes) in run.by_host() {
        let known = (1..=hosts).any(|i| host == format!("h{i}"));
        if !known {
            report
                .findings
                .push(format!("{label}: a host not in the fleet: {host}"));
        }
        if outcomes.len() > 1 {
            report.findings.push(format!(
                "{label}: {host} has {} outcomes: {outcomes:?}",
                outcomes.len()
            ));
        }
        for o in outcomes {
            if o != "ok" && o != "disconnected" {
                report
                    .findings
                    .push(format!("{label}: {host} reported {o:?} for `true`"));
            }
            *report.outcomes.entry(o).or_default() += 1;
        }
    }
}

fn note_lost(label: &str, what: &str) {
    // The monitor of a killed or stopped daemon has nothing to report; say
    // so on stderr for whoever reads the run, not as a finding.
    eprintln!("nemesis: {label}: its daemon was faulted: {what}");
}

/// Runs the nemesis against a fleet of daemons. Errors are setup failures;
/// what the run found is in the report.
pub fn run(
    opts: &NemesisOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<MgmtNemesisReport, ScenarioError> {
    let wall = Instant::now();
    let mut report = MgmtNemesisReport {
        hosts: opts.hosts,
        seed: opts.seed,
        ..MgmtNemesisReport::default()
    };
    let mut rng = fastrand::Rng::with_seed(opts.seed);
    let mut fleet_opts = MgmtOptions::new(opts.hosts);
    fleet_opts.maps = true;
    let mut fleet = MgmtFleet::start_with(&fleet_opts)?;
    if opts.keep {
        fleet.vlan.keep_run_dir();
    }
    progress(&format!(
        "run directory: {}",
        fleet.vlan.run_dir().display()
    ));
    let run_dir = fleet.vlan.run_dir().to_owned();
    let mut last = String::new();
    if maps::apply(
        &fleet,
        &[0],
        &["create", MAP],
        &maps::new_id(&mut rng),
        &mut last,
    )?
    .is_none()
    {
        return Err(ScenarioError::Timeout {
            what: format!("map create {MAP} before the faults"),
            waited: Duration::from_secs(60),
            seen: last,
        });
    }
    let mut next_siminst = Instant::now() + SIMINST_EVERY / 2;
    let mut siminst_running = false;

    let start = Instant::now();
    let mut next_fault = start + opts.fault_every;
    let mut pending: Vec<InFlight> = Vec::new();
    let mut last_progress = Instant::now();
    // Between commands: a monitor per command costs a process start, so
    // the workload is paced more slowly than the gc-core nemesis's.
    let command_every = opts.workload_every.max(Duration::from_millis(200));
    while start.elapsed() < opts.duration {
        let mut i = 0;
        while i < pending.len() {
            if pending[i].monitor.finished() {
                let done = pending.swap_remove(i);
                if matches!(done.op, Op::Siminst) {
                    siminst_running = false;
                }
                check_done(&mut report, opts.hosts, done);
            } else {
                i += 1;
            }
        }
        let states: Vec<State> = fleet.procs.iter_mut().map(|p| p.state()).collect();
        let running: Vec<usize> = (0..opts.hosts)
            .filter(|&h| states[h] == State::Running)
            .collect();
        if !running.is_empty() && !siminst_running && Instant::now() >= next_siminst {
            // One siminst at a time, beside the other monitors: a new
            // version each time, so every host has something to install.
            next_siminst = Instant::now() + SIMINST_EVERY;
            let version = format!("1.0.{}", report.siminsts);
            let file = build_package(&fleet, &run_dir, "nem", &version, SIMINST_PAYLOAD)?;
            let via = running[rng.usize(..running.len())];
            let file = file.display().to_string();
            let monitor = fleet.spawn_monitor(via, &["siminst", "--timeout", "30s", &file])?;
            report.siminsts += 1;
            siminst_running = true;
            pending.push(InFlight {
                monitor,
                op: Op::Siminst,
                via,
                daemon_faulted: false,
            });
        }
        if pending.len() < MAX_PENDING + usize::from(siminst_running) && !running.is_empty() {
            let via = running[rng.usize(..running.len())];
            // Map updates and simex commands in about equal numbers.
            let (monitor, op) = if rng.bool() {
                let key = format!("k{}", rng.usize(..KEYS));
                let value = format!("v{}", report.map_sets);
                let id = maps::new_id(&mut rng);
                let monitor =
                    fleet.spawn_monitor(via, &["map", "set", MAP, &key, &value, "--id", &id])?;
                report.map_sets += 1;
                (monitor, Op::MapSet { key, value, id })
            } else {
                report.commands += 1;
                let args = ["simex", "--timeout", "20s", "--", "true"];
                (fleet.spawn_monitor(via, &args)?, Op::Simex)
            };
            pending.push(InFlight {
                monitor,
                op,
                via,
                daemon_faulted: false,
            });
        }
        if Instant::now() >= next_fault {
            if let Some(fault) = choose(&mut rng, &states, &fleet.vlan) {
                if let Fault::Kill(h) | Fault::Pause(h) | Fault::Restart(h) = fault {
                    for p in pending.iter_mut().filter(|p| p.via == h) {
                        p.daemon_faulted = true;
                    }
                }
                let name = kind(&fault).to_owned();
                match fleet.inject(fault) {
                    Ok(()) => *report.faults.entry(name).or_default() += 1,
                    Err(e) => report.findings.push(format!("could not inject: {e}")),
                }
            }
            let f = 0.2 + rng.f64() * 1.6;
            next_fault = Instant::now() + opts.fault_every.mul_f64(f);
        }
        if last_progress.elapsed() >= Duration::from_secs(15) {
            last_progress = Instant::now();
            progress(&format!(
                "{:.0} s: {} faults, {} commands, {} reports, {} map updates ({} applied), {} siminst",
                start.elapsed().as_secs_f64(),
                report.faults.values().sum::<u64>(),
                report.commands,
                report.reports,
                report.map_sets,
                report.applied.len(),
                report.siminsts
            ));
        }
        std::thread::sleep(command_every);
    }
    report.fault_phase = start.elapsed();

    progress("repairing: heal, clear loss, resume, restart");
    let states: Vec<State> = fleet.procs.iter_mut().map(|p| p.state()).collect();
    for fault in repairs(&states, &fleet.vlan) {
        if let Err(e) = fleet.inject(fault) {
            report.findings.push(format!("could not repair: {e}"));
        }
    }
    // The commands still running end now that every daemon runs again.
    for done in pending.drain(..) {
        check_done(&mut report, opts.hosts, done);
    }
    let all: Vec<usize> = (0..opts.hosts).collect();
    match fleet.wait_members(std::slice::from_ref(&all), opts.converge_within) {
        Ok(d) => report.converged_in = Some(d),
        Err(e) => report.findings.push(format!("no convergence: {e}")),
    }
    let mut end = MgmtOutcome {
        name: "nemesis: after the repair".into(),
        ..MgmtOutcome::default()
    };
    progress("the last simex, the map's replicas, the last siminst");
    // A monitor that hangs past its bound here is a finding, not a reason
    // to throw the run (and its logs) away.
    match fleet.monitor(0, &["simex", "--", "true"]) {
        Ok(last) => {
            expect_all_ok(&mut end, "the last simex", &last, &all);
            end.notes.push(format!(
                "the last simex: exit {:?} in {:.2} s",
                last.code,
                last.took.as_secs_f64()
            ));
        }
        Err(e) => end.violations.push(format!("the last simex: {e}")),
    }
    check_maps_after_repair(&fleet, &mut report, &mut end, &all);
    // A last siminst after the repair reaches every host. A job of the
    // same package still running on a host (a transfer the faults cut, up
    // to its 30 s timeout) goes first: hence the longer bound.
    let version = format!("1.0.{}", report.siminsts);
    let file = build_package(&fleet, &run_dir, "nem", &version, SIMINST_PAYLOAD)?;
    let file = file.display().to_string();
    let sim = fleet
        .spawn_monitor(0, &["siminst", "--timeout", "60s", &file])
        .and_then(|m| m.wait_for(Duration::from_secs(120)));
    match sim {
        Ok(sim) => {
            end.notes.push(format!(
                "the last siminst (nem {version}): exit {:?} in {:.2} s: {}",
                sim.code,
                sim.took.as_secs_f64(),
                summary(&sim)
            ));
            last_siminst_everywhere(&fleet, &mut end, &sim, &all);
        }
        Err(e) => end.violations.push(format!("the last siminst: {e}")),
    }
    progress("stopping the daemons and checking the event logs");
    if !report.findings.is_empty() {
        fleet.vlan.keep_run_dir();
        end.notes
            .push(format!("logs kept in {}", fleet.vlan.run_dir().display()));
    }
    report.end = fleet.finish(end)?;
    report.wall = wall.elapsed();
    Ok(report)
}

/// After the repair: every replica converges to one listing of the map,
/// every applied update is in every replica's history at its version, and
/// no id (applied or unknown) was applied twice.
fn check_maps_after_repair(
    fleet: &MgmtFleet,
    report: &mut MgmtNemesisReport,
    end: &mut MgmtOutcome,
    all: &[usize],
) {
    let top = report.applied.iter().map(|a| a.version).max().unwrap_or(1);
    match maps::wait_converged(fleet, all, MAP, top, maps::CONVERGE_TIMEOUT) {
        Ok(((version, entries), took)) => end.notes.push(format!(
            "the map: every replica at version {version} with {} keys {:.2} s after M was whole",
            entries.len(),
            took.as_secs_f64()
        )),
        Err(e) => {
            end.violations.push(format!("the map's replicas: {e}"));
            return;
        }
    }
    let mut ids: Vec<String> = report.applied.iter().map(|a| a.id.clone()).collect();
    ids.extend(report.unknown_ids.iter().cloned());
    let before = end.violations.len();
    let compacted = maps::check_histories(fleet, end, all, MAP, &report.applied, &ids);
    end.notes.push(format!(
        "the map's histories on {} hosts: {} applied updates checked ({} older than a host's kept history), {} ids checked for at most once: {}",
        all.len(),
        report.applied.len(),
        compacted,
        ids.len(),
        if end.violations.len() == before { "all there, none twice" } else { "VIOLATIONS" }
    ));
}

/// Every host of `all` has exactly one outcome, ok, in `run`'s report.
fn expect_all_ok(end: &mut MgmtOutcome, label: &str, run: &MonitorRun, all: &[usize]) {
    let by_host = run.by_host();
    for h in all {
        let name = format!("h{}", h + 1);
        match by_host.get(&name).map(Vec::as_slice) {
            Some([o]) if o == "ok" => {}
            other => end.violations.push(format!(
                "{label}: {name} has {other:?}, want [\"ok\"]: {}",
                summary(run)
            )),
        }
    }
}

/// `h1=ok h2=disconnected ...`, or the monitor's text when it printed no
/// report.
fn summary(run: &MonitorRun) -> String {
    let outcomes = run.outcomes();
    if outcomes.is_empty() {
        return run.text.trim().chars().take(500).collect();
    }
    let parts: Vec<String> = outcomes
        .iter()
        .map(|o| format!("{}={}", o.host, o.outcome))
        .collect();
    parts.join(" ")
}

/// The last siminst, after the repair: its report gives every host exactly
/// one outcome, ok or disconnected (a membership change while it ran: the
/// host still installs and records it); then, once M is whole, the job's
/// report gathered from the servers (`monitor job`) must say ok for every
/// host (bounded).
fn last_siminst_everywhere(
    fleet: &MgmtFleet,
    end: &mut MgmtOutcome,
    sim: &MonitorRun,
    all: &[usize],
) {
    let by_host = sim.by_host();
    for h in all {
        let name = format!("h{}", h + 1);
        match by_host.get(&name).map(Vec::as_slice) {
            Some([o]) if o == "ok" || o == "disconnected" => {}
            other => end.violations.push(format!(
                "the last siminst: {name} has {other:?}, want [\"ok\"] or [\"disconnected\"]: {}",
                summary(sim)
            )),
        }
    }
    let Some(job) = sim
        .json
        .as_ref()
        .and_then(|j| j["job"].as_str())
        .map(str::to_owned)
    else {
        end.violations
            .push(format!("the last siminst names no job: {}", summary(sim)));
        return;
    };
    if let Err(e) = fleet.wait_members(&[all.to_vec()], Duration::from_secs(60)) {
        end.violations
            .push(format!("after the last siminst, M never whole again: {e}"));
        return;
    }
    let start = Instant::now();
    loop {
        let gathered = fleet.monitor(0, &["job", &job]);
        let ok = gathered.as_ref().is_ok_and(|g| {
            let by_host = g.by_host();
            all.iter().all(|h| {
                by_host.get(&format!("h{}", h + 1)).map(Vec::as_slice) == Some(&["ok".to_owned()])
            })
        });
        if ok {
            if by_host.values().any(|o| o.iter().any(|o| o != "ok")) {
                end.notes.push(format!(
                    "`monitor job {job}`: every host ok {:.2} s after the report",
                    start.elapsed().as_secs_f64()
                ));
            }
            return;
        }
        if start.elapsed() >= Duration::from_secs(60) {
            let seen = match &gathered {
                Ok(g) => summary(g),
                Err(e) => e.to_string(),
            };
            end.violations.push(format!(
                "the last siminst never ok on every host in `monitor job {job}`: {seen}"
            ));
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
