//! A fleet of gc-core `node` example processes, one per host of a virtual
//! LAN, each writing an event log into the run directory.

use super::{node_binary, CheckReport, ScenarioError};
use crate::faults::{self, Fault};
use crate::vlan::proc::{HostProcess, Spec, State};
use crate::vlan::Vlan;
use gc_core::trace::{LivenessPhase, ProcessEnd, Trace, TraceEvent};
use gc_core::types::{Level, Pid, Time};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The UDP port every node binds on its host.
pub const NODE_PORT: u16 = 7400;
/// The IP multicast group and port of discovery, when used.
pub const MULTICAST_GROUP: &str = "239.77.0.1:7401";
/// The group the workload multicasts to.
pub const GROUP: &str = "work";

/// How to start a fleet.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Hosts (3 to 9).
    pub hosts: usize,
    /// Discover peers by IP multicast over the bridge instead of a seed
    /// list, and disseminate through it.
    pub multicast: bool,
    /// Use the release build of the node (the nemesis) or the dev build.
    pub release: bool,
    /// Protocol settings (`KNOB=VALUE`, see the node's `--set`).
    pub sets: Vec<String>,
}

impl FleetOptions {
    /// `hosts` hosts, seed-list discovery, dev build.
    pub fn new(hosts: usize) -> FleetOptions {
        FleetOptions {
            hosts,
            multicast: false,
            release: false,
            sets: Vec::new(),
        }
    }
}

/// What the harness knows of one host's node, from the lines it printed.
#[derive(Clone, Debug, Default)]
pub struct NodeSeen {
    /// Its latest regular view: id and member node ids (sorted).
    pub view: Option<(String, Vec<u32>)>,
    /// The incarnation of its current start.
    pub incarnation: Option<u64>,
    /// Regular views it installed, over all starts.
    pub views: u64,
    /// Messages it delivered, over all starts.
    pub delivered: u64,
    /// Multicasts it accepted.
    pub sent: u64,
    /// Multicasts it refused (backpressure, no view, stopping).
    pub refused: u64,
    /// `error` lines it printed.
    pub errors: Vec<String>,
}

/// A running fleet.
pub struct NodeFleet {
    /// The network (public so scenarios can probe and fault it).
    pub vlan: Vlan,
    /// The node on each host.
    pub procs: Vec<HostProcess>,
    /// What each node reported.
    pub seen: Vec<NodeSeen>,
    /// Every fault injected, with its time since the fleet started.
    pub journal: Vec<(Duration, Fault)>,
    started: Instant,
    last_delivery: Instant,
    seq: u64,
}

/// Microseconds since the Unix epoch: the clock of event-log records (every
/// namespace shares this machine's clock, so times compare across hosts).
pub fn wall_time() -> Time {
    Time(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
    )
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Fifo => "fifo",
        Level::Causal => "causal",
        Level::Agreed => "agreed",
        Level::Safe => "safe",
    }
}

impl NodeFleet {
    /// Builds the network, a cluster key, and starts one node per host.
    pub fn start(opts: &FleetOptions) -> Result<NodeFleet, ScenarioError> {
        let program = node_binary(opts.release)?;
        let vlan = Vlan::new(opts.hosts, &super::runs_base())?;
        let dir = vlan.run_dir().to_owned();
        let key = dir.join("cluster.key");
        let keygen = std::process::Command::new(&program)
            .arg("--keygen")
            .arg(&key)
            .output()
            .map_err(|source| ScenarioError::Io {
                what: "running node --keygen".into(),
                source,
            })?;
        if !keygen.status.success() {
            return Err(ScenarioError::Build {
                what: "the cluster key".into(),
                detail: String::from_utf8_lossy(&keygen.stderr).into_owned(),
            });
        }
        let all: Vec<String> = (1..=opts.hosts).map(|i| i.to_string()).collect();
        let mut procs = Vec::new();
        for h in vlan.hosts() {
            let mut args = vec![
                "--id".to_owned(),
                (h.index + 1).to_string(),
                "--bind".into(),
                format!("{}:{NODE_PORT}", h.addr),
                "--key".into(),
                key.display().to_string(),
                "--state".into(),
                dir.join(format!("{}.state", h.name)).display().to_string(),
                "--event-log".into(),
                super::event_log(&dir, &h.name).display().to_string(),
                "--bootstrap".into(),
                all.join(","),
                "--groups".into(),
                GROUP.into(),
            ];
            if opts.multicast {
                args.extend([
                    "--multicast".into(),
                    MULTICAST_GROUP.into(),
                    "--interface".into(),
                    h.addr.to_string(),
                    // Dissemination too: every datagram for all members
                    // crosses the bridge once, as multicast.
                    "--disseminate".into(),
                ]);
            } else {
                let seeds: Vec<String> = vlan
                    .hosts()
                    .iter()
                    .filter(|o| o.index != h.index)
                    .map(|o| format!("{}:{NODE_PORT}", o.addr))
                    .collect();
                args.extend(["--seed".into(), seeds.join(",")]);
            }
            for s in &opts.sets {
                args.extend(["--set".into(), s.clone()]);
            }
            let spec = Spec {
                program: program.clone(),
                args,
                env: vec![("NODE_LOG".into(), "info".into())],
            };
            procs.push(HostProcess::new(h, "node", spec, &dir));
        }
        let mut fleet = NodeFleet {
            seen: vec![NodeSeen::default(); procs.len()],
            vlan,
            procs,
            journal: Vec::new(),
            started: Instant::now(),
            last_delivery: Instant::now(),
            seq: 0,
        };
        for p in &mut fleet.procs {
            p.start()?;
        }
        Ok(fleet)
    }

    /// Every host's event log.
    pub fn event_logs(&self) -> Vec<PathBuf> {
        super::event_logs(&self.vlan)
    }

    /// Reads what every node printed since the last call.
    pub fn pump(&mut self) {
        for (i, p) in self.procs.iter_mut().enumerate() {
            let current = p.starts().saturating_sub(1);
            for line in p.drain() {
                let v = &line.value;
                let seen = &mut self.seen[i];
                match v["type"].as_str() {
                    Some("deliver") => {
                        seen.delivered += 1;
                        self.last_delivery = Instant::now();
                    }
                    // A killed start's last lines may still be in the pipe:
                    // they must not pass for the new start's view.
                    _ if line.start != current => {}
                    Some("view") if v["kind"] == "regular" => {
                        let mut members: Vec<u32> = v["members"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|m| m.as_u64())
                                    .map(|m| m as u32)
                                    .collect()
                            })
                            .unwrap_or_default();
                        members.sort_unstable();
                        let id = v["id"].as_str().unwrap_or_default().to_owned();
                        seen.view = Some((id, members));
                        seen.views += 1;
                    }
                    Some("started") => seen.incarnation = v["incarnation"].as_u64(),
                    Some("sent") if v["ok"] == true => seen.sent += 1,
                    Some("sent") => seen.refused += 1,
                    // Bounded: a node stuck in a loop of errors must not
                    // fill the harness's memory.
                    Some("error") if seen.errors.len() < 100 => seen.errors.push(v.to_string()),
                    _ => {}
                }
            }
        }
    }

    /// A one-line summary of every node's view, for error messages.
    pub fn describe(&mut self) -> String {
        self.pump();
        let mut parts = Vec::new();
        for (i, p) in self.procs.iter_mut().enumerate() {
            let state = match p.state() {
                State::Down => "down",
                State::Running => "up",
                State::Stopped => "stopped",
            };
            let view = match &self.seen[i].view {
                Some((id, m)) => format!("{id} {m:?}"),
                None => "no view".into(),
            };
            parts.push(format!("h{} {state} {view}", i + 1));
        }
        parts.join("; ")
    }

    /// Waits until the nodes of each component share one regular view whose
    /// members are exactly that component's node ids. Returns how long it
    /// took.
    pub fn wait_views(
        &mut self,
        components: &[Vec<usize>],
        timeout: Duration,
    ) -> Result<Duration, ScenarioError> {
        let start = Instant::now();
        loop {
            self.pump();
            if components.iter().all(|comp| self.in_one_view(comp)) {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return Err(ScenarioError::Timeout {
                    what: format!("views {components:?} (host indices)"),
                    waited: timeout,
                    seen: self.describe(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the nodes of `component` share one regular view whose
    /// members are exactly their node ids, as far as their output says.
    fn in_one_view(&self, component: &[usize]) -> bool {
        let mut want: Vec<u32> = component.iter().map(|&h| h as u32 + 1).collect();
        want.sort_unstable();
        let first = component.first().and_then(|&h| self.seen[h].view.as_ref());
        first.is_some_and(|(id, members)| {
            *members == want
                && component
                    .iter()
                    .all(|&h| self.seen[h].view.as_ref().is_some_and(|(i, _)| i == id))
        })
    }

    /// Waits until every host's node shares one view of all hosts.
    pub fn wait_one_view(&mut self, timeout: Duration) -> Result<Duration, ScenarioError> {
        let all: Vec<usize> = (0..self.procs.len()).collect();
        self.wait_views(&[all], timeout)
    }

    /// Waits until the running nodes share one view of exactly themselves
    /// and none has installed another view for `settle`; returns how long
    /// until that view was first seen. Right after a fault is repaired the
    /// view the nodes report may still be the one from before it, about
    /// to change (a suspicion from the faulty period is still running its
    /// timers), so a single look can see one view that then splits and
    /// merges again, well within the liveness bound. The checker judges
    /// the view the fleet settles in, and when it was installed.
    pub fn wait_settled_view(
        &mut self,
        settle: Duration,
        timeout: Duration,
    ) -> Result<Duration, ScenarioError> {
        let start = Instant::now();
        let mut steady: Option<(Instant, Vec<u64>)> = None;
        loop {
            self.pump();
            let running = self.running();
            let installs: Vec<u64> = self.seen.iter().map(|s| s.views).collect();
            if !self.in_one_view(&running) {
                steady = None;
            } else {
                match &steady {
                    Some((since, seen)) if *seen == installs => {
                        if since.elapsed() >= settle {
                            return Ok(since.duration_since(start));
                        }
                    }
                    _ => steady = Some((Instant::now(), installs)),
                }
            }
            if start.elapsed() >= timeout {
                return Err(ScenarioError::Timeout {
                    what: format!(
                        "one view of the running hosts {running:?}, steady for {settle:?}"
                    ),
                    waited: timeout,
                    seen: self.describe(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asks host `h`'s node to multicast `text` to the workload group.
    pub fn send(&mut self, h: usize, level: Level, text: &str) -> Result<(), ScenarioError> {
        let line = format!("send {} {GROUP} {text}", level_name(level));
        self.procs
            .get_mut(h)
            .ok_or(ScenarioError::NoSuchHost(h))?
            .send_line(&line)?;
        Ok(())
    }

    /// One round of the workload: every running node (not stopped, not
    /// down) multicasts one message at `level`. Returns how many were asked.
    pub fn workload_round(&mut self, level: Level) -> usize {
        let mut asked = 0;
        for h in 0..self.procs.len() {
            if self.procs[h].state() != State::Running {
                continue;
            }
            self.seq += 1;
            let text = format!("h{}-{}-{:?}", h + 1, self.seq, level);
            // A node whose stdin just closed (killed a moment ago) refuses;
            // the workload goes on with the others.
            if self.send(h, level, &text).is_ok() {
                asked += 1;
            }
        }
        asked
    }

    /// The four levels in turn, for workloads that cover all of them.
    pub fn level_for(round: u64) -> Level {
        match round % 4 {
            0 => Level::Fifo,
            1 => Level::Causal,
            2 => Level::Agreed,
            _ => Level::Safe,
        }
    }

    /// Waits until no node has delivered anything for `quiet` (bounded by
    /// `timeout`): the workload has drained.
    pub fn wait_quiet(&mut self, quiet: Duration, timeout: Duration) -> Result<(), ScenarioError> {
        let start = Instant::now();
        loop {
            self.pump();
            if self.last_delivery.elapsed() >= quiet {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(ScenarioError::Timeout {
                    what: "the fleet to go quiet".into(),
                    waited: timeout,
                    seen: self.describe(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Injects a fault and journals it.
    pub fn inject(&mut self, fault: Fault) -> Result<(), ScenarioError> {
        self.pump();
        faults::inject(&mut self.vlan, &mut self.procs, &fault)?;
        match fault {
            Fault::Kill(h) | Fault::Restart(h) => {
                if let Some(s) = self.seen.get_mut(h) {
                    s.view = None;
                    s.incarnation = None;
                }
            }
            _ => {}
        }
        self.journal.push((self.started.elapsed(), fault));
        Ok(())
    }

    /// Host indices whose node is running now.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.procs.len())
            .filter(|&h| self.procs[h].state() == State::Running)
            .collect()
    }

    /// Reads every event log and checks it while the fleet runs. With
    /// `liveness`, the current incarnation of every running node counts as
    /// running (the others as crashed, which is all a log without an end can
    /// say), so the checker demands that they share one view, installed by
    /// `healed_at + bound`, and delivered its messages.
    pub fn check_live(
        &mut self,
        liveness: Option<LivenessPhase>,
    ) -> Result<CheckReport, ScenarioError> {
        self.pump();
        let mut trace = gc_core::eventlog::read_event_logs(&self.event_logs())?;
        let live: BTreeSet<Pid> = self
            .running()
            .into_iter()
            .filter_map(|h| {
                self.seen[h]
                    .incarnation
                    .map(|inc| Pid::new(h as u32 + 1, inc))
            })
            .collect();
        for p in &mut trace.processes {
            if live.contains(&p.pid) {
                p.end = ProcessEnd::Running;
            }
        }
        trace.liveness = liveness;
        Ok(report("live, with liveness", &trace))
    }

    /// Stops every node cleanly (SIGCONT for the stopped ones, then the end
    /// of stdin, on which a node leaves the group and writes the end of its
    /// log), waits for them (bounded; a node that does not leave in time is
    /// killed, and its log then ends as a crash) and checks the complete
    /// logs.
    pub fn stop_and_check(&mut self) -> Result<CheckReport, ScenarioError> {
        for p in &mut self.procs {
            if p.state() == State::Stopped {
                p.resume()?;
            }
        }
        let mut unclean = Vec::new();
        for p in &mut self.procs {
            if p.state() == State::Down {
                continue;
            }
            if !p.close_stdin_and_wait(Duration::from_secs(10))? {
                unclean.push(p.host().name.clone());
            }
        }
        self.pump();
        let trace = gc_core::eventlog::read_event_logs(&self.event_logs())?;
        let mut r = report("after a clean stop", &trace);
        if !unclean.is_empty() {
            r.label = format!("after a stop; killed, not left: {}", unclean.join(","));
        }
        Ok(r)
    }
}

/// Counts what a trace holds and runs the checker on it.
pub fn report(label: &str, trace: &Trace) -> CheckReport {
    let mut r = CheckReport {
        label: label.into(),
        processes: trace.processes.len(),
        ..CheckReport::default()
    };
    for p in &trace.processes {
        for rec in &p.records {
            match rec.event {
                TraceEvent::Install { .. } => r.installs += 1,
                TraceEvent::Send { .. } => r.sends += 1,
                TraceEvent::Deliver { .. } => r.deliveries += 1,
                TraceEvent::GroupView { .. } => {}
            }
        }
    }
    r.violations = gc_core::check::check(trace);
    r
}
