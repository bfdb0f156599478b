//! Scenarios over the gc-core runtime's `node` example: real processes, real
//! UDP, a real bridge that really splits. Each returns an [`Outcome`]: what
//! it measured, and what the checker found on the hosts' event logs.

use super::nodes::{wall_time, FleetOptions, NodeFleet};
use super::{CheckReport, ScenarioError};
use crate::faults::Fault;
use gc_core::trace::LivenessPhase;
use gc_core::types::Time;
use std::fmt;
use std::time::Duration;

/// How long a fleet may take to form or change a view before a scenario
/// fails. The protocol's defaults suspect a silent member after 0.4 s and
/// merge within a few discovery rounds (0.2 s); this leaves room for a slow
/// debug build on a busy 2-core machine.
pub const VIEW_TIMEOUT: Duration = Duration::from_secs(20);

/// The liveness bound the checker is given: from the heal to the common view
/// installed by every running process.
pub const LIVENESS_BOUND: Duration = VIEW_TIMEOUT;

/// How long the running nodes must keep one view before the liveness check
/// judges it: longer than a suspicion (0.4 s) plus a failed view change's
/// consensus timeout (0.6 s), the longest a flap started during the fault
/// can take to show.
pub const SETTLE: Duration = Duration::from_millis(1500);

/// What a scenario did and found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The scenario.
    pub name: String,
    /// What it measured, in words ("one view of 5 in 0.31 s").
    pub notes: Vec<String>,
    /// The faults it injected, in order.
    pub faults: Vec<String>,
    /// The checker's reports: live with liveness, then after a clean stop.
    pub checks: Vec<CheckReport>,
    /// Lines the nodes printed as errors (a send refused is not one).
    pub node_errors: Vec<String>,
}

impl Outcome {
    /// Every check passed.
    pub fn ok(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(CheckReport::ok)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "scenario {}:", self.name)?;
        for n in &self.notes {
            writeln!(f, "  {n}")?;
        }
        if !self.faults.is_empty() {
            writeln!(f, "  faults: {}", self.faults.join("; "))?;
        }
        for c in &self.checks {
            writeln!(f, "  {c}")?;
        }
        for e in &self.node_errors {
            writeln!(f, "  node error: {e}")?;
        }
        Ok(())
    }
}

/// Runs `rounds` workload rounds, cycling through the four levels, with a
/// short pause between rounds so that they interleave with view changes.
fn workload(fleet: &mut NodeFleet, rounds: u64) -> usize {
    let mut asked = 0;
    for r in 0..rounds {
        asked += fleet.workload_round(NodeFleet::level_for(r));
        std::thread::sleep(Duration::from_millis(20));
        fleet.pump();
    }
    asked
}

/// The end of every scenario: drain, check live with a liveness phase from
/// `healed_at`, stop cleanly, check the complete logs.
fn finish(
    mut fleet: NodeFleet,
    mut out: Outcome,
    healed_at: Time,
) -> Result<Outcome, ScenarioError> {
    fleet.wait_quiet(Duration::from_millis(600), Duration::from_secs(20))?;
    let left = LIVENESS_BOUND.saturating_sub(wall_time().since(healed_at));
    fleet.wait_settled_view(SETTLE, left)?;
    out.checks.push(fleet.check_live(Some(LivenessPhase {
        healed_at,
        bound: LIVENESS_BOUND,
    }))?);
    out.checks.push(fleet.stop_and_check()?);
    out.faults = fleet
        .journal
        .iter()
        .map(|(t, f)| format!("{:.1}s {f}", t.as_secs_f64()))
        .collect();
    let sent: u64 = fleet.seen.iter().map(|s| s.sent).sum();
    let refused: u64 = fleet.seen.iter().map(|s| s.refused).sum();
    out.notes.push(format!(
        "workload: {sent} multicasts accepted, {refused} refused"
    ));
    out.node_errors = fleet.seen.iter().flat_map(|s| s.errors.clone()).collect();
    if !out.ok() {
        fleet.vlan.keep_run_dir();
        out.notes
            .push(format!("logs kept in {}", fleet.vlan.run_dir().display()));
    }
    Ok(out)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn outcome(name: &str) -> Outcome {
    Outcome {
        name: name.into(),
        ..Outcome::default()
    }
}

/// `hosts` nodes on one bridge form one view and exchange messages at every
/// level.
pub fn form_view(hosts: usize) -> Result<Outcome, ScenarioError> {
    let mut out = outcome("form a view across the bridge");
    let mut fleet = NodeFleet::start(&FleetOptions::new(hosts))?;
    let t = fleet.wait_one_view(VIEW_TIMEOUT)?;
    out.notes
        .push(format!("one view of {hosts} hosts {} after start", secs(t)));
    let at = wall_time();
    workload(&mut fleet, 8);
    finish(fleet, out, at)
}

/// A view of `hosts` splits into two components that keep working, then
/// heals into one view again.
pub fn partition_and_heal(hosts: usize) -> Result<Outcome, ScenarioError> {
    let mut out = outcome("partition and heal");
    let mut fleet = NodeFleet::start(&FleetOptions::new(hosts))?;
    fleet.wait_one_view(VIEW_TIMEOUT)?;
    workload(&mut fleet, 4);
    let cut = hosts.div_ceil(2);
    let comps = vec![(0..cut).collect::<Vec<_>>(), (cut..hosts).collect()];
    fleet.inject(Fault::Partition(comps.clone()))?;
    // The bridge really is cut before anything is concluded from the nodes.
    if fleet
        .vlan
        .reachable(0, hosts - 1, Duration::from_millis(300))?
    {
        out.notes
            .push("WARNING: the partition did not cut h1 from the last host".into());
    }
    let t = fleet.wait_views(&comps, VIEW_TIMEOUT)?;
    out.notes.push(format!(
        "each component in its own view {} after the cut",
        secs(t)
    ));
    workload(&mut fleet, 8);
    fleet.inject(Fault::Heal)?;
    let at = wall_time();
    let t = fleet.wait_one_view(VIEW_TIMEOUT)?;
    out.notes
        .push(format!("one merged view {} after the heal", secs(t)));
    workload(&mut fleet, 8);
    finish(fleet, out, at)
}

/// kill -9 of one node: the others install a view without it; restarted, it
/// comes back as a new incarnation and joins again.
pub fn kill_and_restart(hosts: usize) -> Result<Outcome, ScenarioError> {
    let mut out = outcome("kill -9 and restart");
    let mut fleet = NodeFleet::start(&FleetOptions::new(hosts))?;
    fleet.wait_one_view(VIEW_TIMEOUT)?;
    let victim = 1;
    workload(&mut fleet, 4);
    let before = fleet.seen[victim].incarnation;
    fleet.inject(Fault::Kill(victim))?;
    let rest: Vec<usize> = (0..hosts).filter(|&h| h != victim).collect();
    let t = fleet.wait_views(&[rest], VIEW_TIMEOUT)?;
    out.notes.push(format!(
        "survivors' view without h{} {} after kill -9",
        victim + 1,
        secs(t)
    ));
    workload(&mut fleet, 6);
    fleet.inject(Fault::Restart(victim))?;
    let at = wall_time();
    let t = fleet.wait_one_view(VIEW_TIMEOUT)?;
    let after = fleet.seen[victim].incarnation;
    out.notes.push(format!(
        "restarted h{} (incarnation {before:?} -> {after:?}) back in the view {} after restart",
        victim + 1,
        secs(t)
    ));
    if before.is_some() && before >= after {
        out.notes
            .push("WARNING: the restart did not come back as a new incarnation".into());
    }
    workload(&mut fleet, 6);
    finish(fleet, out, at)
}

/// SIGSTOP of one node for longer than the suspicion timeout: the others go
/// on without it; after SIGCONT it finds itself excluded and merges back.
pub fn pause_and_resume(hosts: usize) -> Result<Outcome, ScenarioError> {
    let mut out = outcome("SIGSTOP and SIGCONT");
    let mut fleet = NodeFleet::start(&FleetOptions::new(hosts))?;
    fleet.wait_one_view(VIEW_TIMEOUT)?;
    let victim = hosts - 1;
    workload(&mut fleet, 4);
    fleet.inject(Fault::Pause(victim))?;
    let rest: Vec<usize> = (0..hosts).filter(|&h| h != victim).collect();
    let t = fleet.wait_views(&[rest], VIEW_TIMEOUT)?;
    out.notes.push(format!(
        "view without the stopped h{} {} after SIGSTOP",
        victim + 1,
        secs(t)
    ));
    workload(&mut fleet, 6);
    fleet.inject(Fault::Resume(victim))?;
    let at = wall_time();
    let t = fleet.wait_one_view(VIEW_TIMEOUT)?;
    out.notes
        .push(format!("merged view {} after SIGCONT", secs(t)));
    workload(&mut fleet, 6);
    finish(fleet, out, at)
}

/// Nodes that know no seed find each other by IP multicast over the bridge,
/// send what goes to every member through it (dissemination), and find
/// each other again after a partition.
pub fn multicast_discovery(hosts: usize) -> Result<Outcome, ScenarioError> {
    let mut out = outcome("IP multicast discovery and dissemination over the bridge");
    let mut opts = FleetOptions::new(hosts);
    opts.multicast = true;
    let mut fleet = NodeFleet::start(&opts)?;
    let t = fleet.wait_one_view(VIEW_TIMEOUT)?;
    out.notes.push(format!(
        "one view of {hosts} hosts by multicast discovery (no seeds) {} after start",
        secs(t)
    ));
    workload(&mut fleet, 4);
    fleet.inject(Fault::Partition(vec![vec![0], (1..hosts).collect()]))?;
    fleet.wait_views(&[vec![0], (1..hosts).collect()], VIEW_TIMEOUT)?;
    workload(&mut fleet, 4);
    fleet.inject(Fault::Heal)?;
    let at = wall_time();
    let t = fleet.wait_one_view(VIEW_TIMEOUT)?;
    out.notes.push(format!(
        "rediscovered by multicast and merged {} after the heal",
        secs(t)
    ));
    workload(&mut fleet, 4);
    finish(fleet, out, at)
}

/// Heavy packet loss between two hosts, both ways, under the workload: the
/// protocol retransmits; once the loss stops everything converges.
pub fn lossy_links(hosts: usize, percent: u8) -> Result<Outcome, ScenarioError> {
    let mut out = outcome("packet loss between two hosts");
    let mut fleet = NodeFleet::start(&FleetOptions::new(hosts))?;
    fleet.wait_one_view(VIEW_TIMEOUT)?;
    fleet.inject(Fault::Loss {
        from: 0,
        to: 1,
        percent,
    })?;
    fleet.inject(Fault::Loss {
        from: 1,
        to: 0,
        percent,
    })?;
    workload(&mut fleet, 12);
    fleet.inject(Fault::ClearLoss)?;
    let at = wall_time();
    let t = fleet.wait_settled_view(SETTLE, VIEW_TIMEOUT)?;
    out.notes.push(format!(
        "{percent}% loss h1<->h2 during the workload; one view {} after it stopped ({} views installed in all)",
        secs(t),
        fleet.seen.iter().map(|s| s.views).sum::<u64>()
    ));
    workload(&mut fleet, 4);
    finish(fleet, out, at)
}
