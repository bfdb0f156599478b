//! The nemesis: random faults against a live fleet of gc-core nodes on a
//! virtual LAN, under a steady workload at every service level; then every
//! fault is repaired, the fleet must converge, and every check runs.
//!
//! ```text
//! cargo run --release -p flotilla-tests --bin nemesis -- --hosts 5 --duration 120s
//! ```
//!
//! Not part of CI. The seed it prints replays the same choice of faults
//! (though not the same run: real processes and real time are not
//! deterministic). See `tests/FAULTS.md` for what a run found.

use crate::faults::Fault;
use crate::scenario::nodes::{wall_time, FleetOptions, NodeFleet};
use crate::scenario::{CheckReport, ScenarioError};
use crate::vlan::proc::State;
use crate::vlan::Vlan;
use gc_core::trace::LivenessPhase;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// How a nemesis run is set up.
#[derive(Clone, Debug)]
pub struct NemesisOptions {
    /// Hosts (3 to 9).
    pub hosts: usize,
    /// How long faults are injected.
    pub duration: Duration,
    /// The seed of the fault choices.
    pub seed: u64,
    /// Mean time between two faults.
    pub fault_every: Duration,
    /// Time between two workload rounds (each running node multicasts one
    /// message per round).
    pub workload_every: Duration,
    /// How long the fleet may take to converge after the final repair.
    pub converge_within: Duration,
    /// The release build of the node (the dev build otherwise).
    pub release: bool,
    /// Discover by IP multicast rather than seed lists.
    pub multicast: bool,
    /// Keep the run directory (logs, event logs) even when all is well.
    pub keep: bool,
}

impl NemesisOptions {
    /// Five hosts for two minutes, a fault every 1.5 s on average.
    pub fn new() -> NemesisOptions {
        NemesisOptions {
            hosts: 5,
            duration: Duration::from_secs(120),
            seed: 1,
            fault_every: Duration::from_millis(1500),
            workload_every: Duration::from_millis(100),
            converge_within: Duration::from_secs(60),
            release: true,
            multicast: false,
            keep: false,
        }
    }
}

impl Default for NemesisOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// What a nemesis run did and found.
#[derive(Debug, Default)]
pub struct NemesisReport {
    /// Hosts.
    pub hosts: usize,
    /// The seed.
    pub seed: u64,
    /// Wall time of the whole run (faults, convergence, checks).
    pub wall: Duration,
    /// Time faults were injected.
    pub fault_phase: Duration,
    /// Faults injected (repairs included), by kind.
    pub faults: BTreeMap<String, u64>,
    /// Every fault, in order, with its time.
    pub journal: Vec<String>,
    /// Multicasts the workload asked for.
    pub asked: u64,
    /// Multicasts the nodes accepted.
    pub accepted: u64,
    /// Multicasts the nodes refused (backpressure, no view, leaving).
    pub refused: u64,
    /// Messages delivered, summed over nodes (from their output).
    pub delivered: u64,
    /// Regular views installed, summed over nodes.
    pub views: u64,
    /// Time from the final repair to one common view, if it came.
    pub converged_in: Option<Duration>,
    /// The checker's reports.
    pub checks: Vec<CheckReport>,
    /// Everything that went wrong (violations are in `checks`).
    pub findings: Vec<String>,
    /// Where the logs are (when kept).
    pub run_dir: Option<String>,
}

impl NemesisReport {
    /// No finding and no violation.
    pub fn clean(&self) -> bool {
        self.findings.is_empty()
            && self.checks.iter().all(CheckReport::ok)
            && !self.checks.is_empty()
    }
}

/// The lines every nemesis report starts with after its title: how long
/// the faults ran, and how many of each kind were injected.
pub(crate) fn write_fault_phase(
    f: &mut fmt::Formatter<'_>,
    fault_phase: Duration,
    wall: Duration,
    faults: &BTreeMap<String, u64>,
) -> fmt::Result {
    writeln!(
        f,
        "duration: {:.1} s of faults, {:.1} s in all",
        fault_phase.as_secs_f64(),
        wall.as_secs_f64()
    )?;
    let total: u64 = faults.values().sum();
    let kinds: Vec<String> = faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
    writeln!(f, "faults injected: {total} ({})", kinds.join(", "))
}

impl fmt::Display for NemesisReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "nemesis: {} hosts, seed {}", self.hosts, self.seed)?;
        write_fault_phase(f, self.fault_phase, self.wall, &self.faults)?;
        writeln!(
            f,
            "operations: {} multicasts asked, {} accepted, {} refused; {} deliveries; {} regular views installed",
            self.asked, self.accepted, self.refused, self.delivered, self.views
        )?;
        match self.converged_in {
            Some(d) => writeln!(
                f,
                "converged: one view {:.2} s after the final repair",
                d.as_secs_f64()
            )?,
            None => writeln!(f, "converged: NO")?,
        }
        for c in &self.checks {
            writeln!(f, "{c}")?;
        }
        if self.findings.is_empty() {
            writeln!(f, "findings: none")?;
        } else {
            writeln!(f, "findings:")?;
            for x in &self.findings {
                writeln!(f, "  {x}")?;
            }
        }
        if let Some(d) = &self.run_dir {
            writeln!(f, "logs: {d}")?;
        }
        Ok(())
    }
}

/// The kind of a fault, for the report's counts.
pub(crate) fn kind(f: &Fault) -> &'static str {
    match f {
        Fault::Partition(_) => "partition",
        Fault::Heal => "heal",
        Fault::Kill(_) => "kill -9",
        Fault::Restart(_) => "restart",
        Fault::Pause(_) => "SIGSTOP",
        Fault::Resume(_) => "SIGCONT",
        Fault::Loss { percent: 0, .. } | Fault::ClearLoss => "clear loss",
        Fault::Loss { .. } => "loss",
    }
}

/// Picks the next fault from the fleet's state (`states`: each host's
/// process): damage while little is damaged, repairs more often as damage
/// accumulates, so the fleet spends its time in many different states
/// rather than all dead.
pub(crate) fn choose(rng: &mut fastrand::Rng, states: &[State], vlan: &Vlan) -> Option<Fault> {
    let hosts = states.len();
    let down: Vec<usize> = (0..hosts).filter(|&h| states[h] == State::Down).collect();
    let stopped: Vec<usize> = (0..hosts)
        .filter(|&h| states[h] == State::Stopped)
        .collect();
    let running: Vec<usize> = (0..hosts)
        .filter(|&h| states[h] == State::Running)
        .collect();
    let split = vlan.components().len() > 1;
    let lossy = !vlan.loss_rules().is_empty();
    let mut options: Vec<Fault> = Vec::new();
    if !split {
        // Two or three components, at random.
        let k = if hosts >= 5 && rng.bool() { 3 } else { 2 };
        let mut comps = vec![Vec::new(); k];
        let mut order: Vec<usize> = (0..hosts).collect();
        rng.shuffle(&mut order);
        for (i, h) in order.into_iter().enumerate() {
            // The first k hosts seed the k components, so none is empty.
            let c = if i < k { i } else { rng.usize(..k) };
            comps[c].push(h);
        }
        options.push(Fault::Partition(comps));
    } else {
        options.push(Fault::Heal);
        options.push(Fault::Heal);
    }
    // At most two nodes down and one stopped at a time, and always two
    // running, so that there is a group to fault.
    if down.len() < 2 && running.len() > 2 {
        options.push(Fault::Kill(running[rng.usize(..running.len())]));
    }
    for &h in &down {
        options.push(Fault::Restart(h));
    }
    if stopped.is_empty() && running.len() > 2 {
        options.push(Fault::Pause(running[rng.usize(..running.len())]));
    }
    for &h in &stopped {
        options.push(Fault::Resume(h));
    }
    if vlan.loss_tool().is_some() {
        if lossy {
            options.push(Fault::ClearLoss);
        }
        let from = rng.usize(..hosts);
        let to = (from + 1 + rng.usize(..hosts - 1)) % hosts;
        options.push(Fault::Loss {
            from,
            to,
            percent: rng.u8(10..=60),
        });
    }
    if options.is_empty() {
        return None;
    }
    let i = rng.usize(..options.len());
    Some(options.swap_remove(i))
}

/// What repairs everything: heal, clear loss, resume the stopped hosts and
/// restart the dead ones.
pub(crate) fn repairs(states: &[State], vlan: &Vlan) -> Vec<Fault> {
    let mut repairs = vec![Fault::Heal];
    if vlan.loss_tool().is_some() {
        repairs.push(Fault::ClearLoss);
    }
    for (h, state) in states.iter().enumerate() {
        match state {
            State::Stopped => repairs.push(Fault::Resume(h)),
            State::Down => repairs.push(Fault::Restart(h)),
            State::Running => {}
        }
    }
    repairs
}

/// Runs the nemesis. Errors are setup failures; what the run found is in
/// the report.
pub fn run(
    opts: &NemesisOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<NemesisReport, ScenarioError> {
    let wall = Instant::now();
    let mut report = NemesisReport {
        hosts: opts.hosts,
        seed: opts.seed,
        ..NemesisReport::default()
    };
    let mut rng = fastrand::Rng::with_seed(opts.seed);
    let mut fo = FleetOptions::new(opts.hosts);
    fo.release = opts.release;
    fo.multicast = opts.multicast;
    let mut fleet = NodeFleet::start(&fo)?;
    if opts.keep {
        fleet.vlan.keep_run_dir();
    }
    progress(&format!(
        "run directory: {}",
        fleet.vlan.run_dir().display()
    ));
    let t = fleet.wait_one_view(Duration::from_secs(30))?;
    progress(&format!(
        "one view of {} hosts after {:.2} s",
        opts.hosts,
        t.as_secs_f64()
    ));

    let start = Instant::now();
    let mut next_fault = start + opts.fault_every;
    let mut round = 0u64;
    // Nodes the nemesis killed: a node down for any other reason crashed.
    let mut killed = vec![false; opts.hosts];
    let mut last_progress = Instant::now();
    while start.elapsed() < opts.duration {
        report.asked += fleet.workload_round(NodeFleet::level_for(round)) as u64;
        round += 1;
        for (h, was_killed) in killed.iter_mut().enumerate() {
            if fleet.procs[h].state() == State::Down && !*was_killed {
                let log = fleet.procs[h].err_log(fleet.procs[h].starts().saturating_sub(1));
                report.findings.push(format!(
                    "h{} exited without being killed (stderr: {})",
                    h + 1,
                    log.display()
                ));
                // Counted as killed, so the nemesis may restart it.
                *was_killed = true;
            }
        }
        if Instant::now() >= next_fault {
            let states: Vec<State> = fleet.procs.iter_mut().map(|p| p.state()).collect();
            if let Some(fault) = choose(&mut rng, &states, &fleet.vlan) {
                match &fault {
                    Fault::Kill(h) => killed[*h] = true,
                    Fault::Restart(h) => killed[*h] = false,
                    _ => {}
                }
                let name = kind(&fault).to_owned();
                if let Err(e) = fleet.inject(fault) {
                    report.findings.push(format!("could not inject: {e}"));
                } else {
                    *report.faults.entry(name).or_default() += 1;
                }
            }
            // Exponential-ish spacing: between 0.2x and 1.8x the mean.
            let f = 0.2 + rng.f64() * 1.6;
            next_fault = Instant::now() + opts.fault_every.mul_f64(f);
        }
        if last_progress.elapsed() >= Duration::from_secs(15) {
            last_progress = Instant::now();
            progress(&format!(
                "{:.0} s: {} faults, {} multicasts asked; {}",
                start.elapsed().as_secs_f64(),
                report.faults.values().sum::<u64>(),
                report.asked,
                fleet.describe()
            ));
        }
        std::thread::sleep(opts.workload_every);
        fleet.pump();
    }
    report.fault_phase = start.elapsed();

    // Repair everything, then the fleet must converge.
    progress("repairing: heal, clear loss, resume, restart");
    let states: Vec<State> = fleet.procs.iter_mut().map(|p| p.state()).collect();
    for fault in repairs(&states, &fleet.vlan) {
        if let Err(e) = fleet.inject(fault) {
            report.findings.push(format!("could not repair: {e}"));
        }
    }
    let healed_at = wall_time();
    match fleet.wait_one_view(opts.converge_within) {
        Ok(d) => report.converged_in = Some(d),
        Err(e) => report.findings.push(format!("no convergence: {e}")),
    }
    // A last round in the common view, which liveness demands be delivered
    // everywhere.
    for r in 0..4 {
        report.asked += fleet.workload_round(NodeFleet::level_for(r)) as u64;
    }
    if let Err(e) = fleet.wait_quiet(Duration::from_secs(1), Duration::from_secs(30)) {
        report.findings.push(format!("{e}"));
    }
    progress("checking the event logs");
    report.checks.push(fleet.check_live(Some(LivenessPhase {
        healed_at,
        bound: opts.converge_within,
    }))?);
    report.checks.push(fleet.stop_and_check()?);
    report.journal = fleet
        .journal
        .iter()
        .map(|(t, f)| format!("{:7.2}s {f}", t.as_secs_f64()))
        .collect();
    report.accepted = fleet.seen.iter().map(|s| s.sent).sum();
    report.refused = fleet.seen.iter().map(|s| s.refused).sum();
    report.delivered = fleet.seen.iter().map(|s| s.delivered).sum();
    report.views = fleet.seen.iter().map(|s| s.views).sum();
    for (h, s) in fleet.seen.iter().enumerate() {
        if !s.errors.is_empty() {
            report.findings.push(format!(
                "h{} printed {} error lines, first: {}",
                h + 1,
                s.errors.len(),
                s.errors[0]
            ));
        }
    }
    if !report.clean() {
        fleet.vlan.keep_run_dir();
    }
    if opts.keep || !report.clean() {
        report.run_dir = Some(fleet.vlan.run_dir().display().to_string());
    }
    report.wall = wall.elapsed();
    Ok(report)
}
