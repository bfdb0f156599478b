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

use crate::faults::Fault;
use crate::nemesis::{choose, kind, repairs, NemesisOptions};
use crate::scenario::mgmt::{MgmtFleet, MgmtOutcome, MonitorRun, PendingMonitor};
use crate::scenario::ScenarioError;
use crate::vlan::proc::State;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// Monitors running at once.
const MAX_PENDING: usize = 3;

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
        writeln!(
            f,
            "duration: {:.1} s of faults, {:.1} s in all",
            self.fault_phase.as_secs_f64(),
            self.wall.as_secs_f64()
        )?;
        let total: u64 = self.faults.values().sum();
        let kinds: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(f, "faults injected: {total} ({})", kinds.join(", "))?;
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

/// A command in flight, and whether its daemon was harmed meanwhile.
struct InFlight {
    monitor: PendingMonitor,
    via: usize,
    daemon_faulted: bool,
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
    let mut fleet = MgmtFleet::start(opts.hosts)?;
    if opts.keep {
        fleet.vlan.keep_run_dir();
    }
    progress(&format!(
        "run directory: {}",
        fleet.vlan.run_dir().display()
    ));

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
                let run = done.monitor.wait();
                check_report(&mut report, opts.hosts, done.via, done.daemon_faulted, run);
            } else {
                i += 1;
            }
        }
        let states: Vec<State> = fleet.procs.iter_mut().map(|p| p.state()).collect();
        let running: Vec<usize> = (0..opts.hosts)
            .filter(|&h| states[h] == State::Running)
            .collect();
        if pending.len() < MAX_PENDING && !running.is_empty() {
            let via = running[rng.usize(..running.len())];
            let monitor = fleet.spawn_monitor(via, &["simex", "--timeout", "20s", "--", "true"])?;
            report.commands += 1;
            pending.push(InFlight {
                monitor,
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
                "{:.0} s: {} faults, {} commands, {} reports",
                start.elapsed().as_secs_f64(),
                report.faults.values().sum::<u64>(),
                report.commands,
                report.reports
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
        let run = done.monitor.wait();
        check_report(&mut report, opts.hosts, done.via, done.daemon_faulted, run);
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
    let last = fleet.monitor(0, &["simex", "--", "true"])?;
    let by_host = last.by_host();
    for h in &all {
        let name = format!("h{}", h + 1);
        match by_host.get(&name).map(Vec::as_slice) {
            Some([o]) if o == "ok" => {}
            other => end.violations.push(format!(
                "the last simex: {name} has {other:?}, want [\"ok\"]"
            )),
        }
    }
    end.notes.push(format!(
        "the last simex: exit {:?} in {:.2} s",
        last.code,
        last.took.as_secs_f64()
    ));
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
