//! The deterministic simulator: many [`Node`]s in one process, one seeded
//! generator, a virtual clock, and a network that loses, duplicates, delays
//! and reorders datagrams, partitions (symmetrically or one way) and heals,
//! while nodes crash, restart as new incarnations (keeping what they
//! persisted) and leave.
//!
//! Every run ends with a liveness phase: faults stop, the network heals, and
//! the live nodes must converge to one view and deliver a final probe from
//! each member within [`SimConfig::liveness_bound`]. The same seed replays
//! the same run step for step: every collection that can reach the output is
//! ordered, and the only randomness is the seeded generator.

use crate::node::{Bug, Config, Event, Node};
use crate::primary::PrimaryState;
use crate::trace::{LivenessPhase, ProcessEnd, ProcessTrace, Trace, TraceEvent};
use crate::types::{Level, NodeId, Pid, Time};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// The simulator's generator (SplitMix64): small, fast and stable across
/// versions, so a seed means the same run forever.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Exponentially distributed with the given mean.
    pub fn exp(&mut self, mean: Duration) -> Duration {
        let u = self.unit().max(1e-12);
        Duration::from_secs_f64(-u.ln() * mean.as_secs_f64())
    }
}

/// What a run does. [`SimConfig::random`] derives every knob from the seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// Number of nodes (2 to 32).
    pub nodes: usize,
    /// Length of the faulty phase.
    pub fault_phase: Duration,
    /// Datagram loss probability during the faulty phase.
    pub loss: f64,
    /// Datagram duplication probability during the faulty phase.
    pub duplicate: f64,
    /// Smallest one-way delay.
    pub delay_min: Duration,
    /// Mean of the exponential part of the delay (reordering comes from it).
    pub delay_mean: Duration,
    /// Mean time between faults (partition, heal, crash, restart, leave).
    pub fault_interval: Duration,
    /// Allow crashes and restarts.
    pub crashes: bool,
    /// Allow clean leaves.
    pub leaves: bool,
    /// Allow one-way partitions.
    pub one_way: bool,
    /// Mean time between application multicasts (across all nodes).
    pub send_interval: Duration,
    /// Number of groups in the workload.
    pub groups: usize,
    /// Bound on convergence after the heal.
    pub liveness_bound: Duration,
    /// A deliberate bug in every node.
    pub bug: Option<Bug>,
    /// Largest datagram.
    pub max_datagram: usize,
}

impl SimConfig {
    /// Every knob drawn from the seed.
    pub fn random(seed: u64) -> Self {
        let mut r = SimRng::new(seed ^ 0x0005_eed0_ff10_711a);
        let nodes = 2 + r.below(8) as usize;
        let loss = match r.below(4) {
            0 => 0.0,
            1 => 0.02,
            2 => 0.1,
            _ => 0.3 * r.unit(),
        };
        let mut cfg = SimConfig {
            seed,
            nodes,
            fault_phase: Duration::from_millis(1500 + r.below(2500)),
            loss,
            duplicate: if r.chance(0.5) { 0.05 } else { 0.0 },
            delay_min: Duration::from_micros(50 + r.below(400)),
            delay_mean: Duration::from_micros(r.below(3000)),
            fault_interval: Duration::from_millis(150 + r.below(600)),
            crashes: r.chance(0.7),
            leaves: r.chance(0.3),
            one_way: r.chance(0.4),
            send_interval: Duration::from_micros(2_000 + r.below(20_000)),
            groups: 1 + r.below(3) as usize,
            liveness_bound: Duration::from_secs(12),
            bug: None,
            max_datagram: if r.chance(0.5) { 1400 } else { 8192 },
        };
        // One seed in 25 runs a larger group (10 to 16 nodes), where the
        // acknowledgement hub and the size-scaled view-change timers work
        // differently. Drawn last, so every other seed keeps the run it
        // always had (and a regression seed the schedule that once failed).
        if r.chance(0.04) {
            cfg.nodes = 10 + r.below(7) as usize;
        }
        cfg
    }

    /// A fault-free run, for measuring costs.
    pub fn quiet(seed: u64, nodes: usize) -> Self {
        SimConfig {
            seed,
            nodes,
            fault_phase: Duration::from_secs(2),
            loss: 0.0,
            duplicate: 0.0,
            delay_min: Duration::from_micros(100),
            delay_mean: Duration::ZERO,
            fault_interval: Duration::from_secs(3600),
            crashes: false,
            leaves: false,
            one_way: false,
            send_interval: Duration::from_millis(5),
            groups: 1,
            liveness_bound: Duration::from_secs(10),
            bug: None,
            max_datagram: 1400,
        }
    }
}

/// Figures from one run.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    /// Datagrams sent by all nodes.
    pub datagrams: u64,
    /// Messages delivered, counted once per receiving process.
    pub deliveries: u64,
    /// Application multicasts requested.
    pub multicasts: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Most bytes of message frames one node held at once.
    pub max_held_bytes: u64,
    /// Most message frames one node held at once.
    pub max_held_frames: u64,
    /// Time from the heal to the common view, when reached.
    pub converged_after: Option<Duration>,
    /// Regular views installed by all nodes.
    pub views: u64,
    /// Virtual time simulated.
    pub virtual_time: Duration,
    /// Simulation steps.
    pub steps: u64,
    /// The run hit [`MAX_STEPS`] and was stopped.
    pub step_budget_exceeded: bool,
    /// Deadlines that handling a timeout did not move (a protocol bug).
    pub stuck_timers: u64,
    /// What each running node was doing when the run ended.
    pub final_states: Vec<(Pid, String)>,
    /// Agreed-delivery latencies seen in the quiet phase, in microseconds.
    pub agreed_latency_us: Vec<u64>,
}

/// The outcome of a run.
#[derive(Clone, Debug)]
pub struct SimOutcome {
    /// What every process did.
    pub trace: Trace,
    /// Figures.
    pub stats: SimStats,
}

struct Slot {
    node_id: NodeId,
    addr: SocketAddr,
    node: Option<Node>,
    incarnation: u64,
    /// What survives a crash: the persisted primary state.
    disk: PrimaryState,
    trace: Option<ProcessTrace>,
    timer: Time,
    left: bool,
    groups: Vec<String>,
    /// Application events kept for scripted scenarios (deliveries beyond a
    /// bound are dropped so long runs stay small).
    events: Vec<Event>,
}

#[derive(Clone, Debug)]
struct InFlight {
    to: usize,
    from: SocketAddr,
    bytes: std::sync::Arc<Vec<u8>>,
}

/// One simulated run.
pub struct Sim {
    cfg: SimConfig,
    /// Three streams, so that a change in the protocol (which changes how
    /// many datagrams the network draws for) leaves the faults and the
    /// workload of a seed where they were: a regression seed keeps testing
    /// the schedule that once failed.
    rng: SimRng,
    fault_rng: SimRng,
    work_rng: SimRng,
    now: Time,
    slots: Vec<Slot>,
    network: BTreeMap<(Time, u64), InFlight>,
    seq: u64,
    blocked: BTreeSet<(usize, usize)>,
    faults_on: bool,
    done: Vec<ProcessTrace>,
    stats: SimStats,
    tag: u64,
    sent_at: BTreeMap<u64, Time>,
    keep_events: bool,
    recorded: Option<Vec<Vec<u8>>>,
}

fn addr_of(i: usize) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(127, 0, 0, (i + 1) as u8),
        7000,
    ))
}

/// Most simulation steps one run may take (a quiet 9-node run takes about
/// 30,000).
pub const MAX_STEPS: u64 = 2_000_000;

const GROUP_NAMES: [&str; 3] = ["mgmt", "table", "install"];

impl Sim {
    /// Sets up a run.
    pub fn new(cfg: SimConfig) -> Self {
        let n = cfg.nodes.clamp(2, 32);
        let bootstrap: Vec<NodeId> = (1..=n as NodeId).collect();
        let slots = (0..n)
            .map(|i| Slot {
                node_id: i as NodeId + 1,
                addr: addr_of(i),
                node: None,
                incarnation: 0,
                disk: PrimaryState::initial(bootstrap.clone()),
                trace: None,
                timer: Time::NEVER,
                left: false,
                groups: Vec::new(),
                events: Vec::new(),
            })
            .collect();
        Sim {
            rng: SimRng::new(cfg.seed),
            fault_rng: SimRng::new(cfg.seed ^ 0xfa17_5eed_0000_0001),
            work_rng: SimRng::new(cfg.seed ^ 0x3011_5eed_0000_0002),
            cfg,
            now: Time::ZERO,
            slots,
            network: BTreeMap::new(),
            seq: 0,
            blocked: BTreeSet::new(),
            faults_on: true,
            done: Vec::new(),
            stats: SimStats::default(),
            tag: 0,
            sent_at: BTreeMap::new(),
            keep_events: false,
            recorded: None,
        }
    }

    fn node_config(&self, i: usize) -> Config {
        let slot = &self.slots[i];
        let mut c = Config::new(Pid::new(slot.node_id, slot.incarnation));
        c.seeds = (0..self.slots.len())
            .filter(|j| *j != i)
            .map(addr_of)
            .collect();
        c.primary = slot.disk.clone();
        c.trace = true;
        c.rng_seed = self.cfg.seed;
        c.bug = self.cfg.bug;
        c.max_datagram = self.cfg.max_datagram;
        c
    }

    fn start(&mut self, i: usize) {
        self.slots[i].incarnation += 1;
        let cfg = self.node_config(i);
        let pid = cfg.me;
        let node = Node::new(cfg, self.now);
        let slot = &mut self.slots[i];
        slot.node = Some(node);
        slot.trace = Some(ProcessTrace {
            pid,
            records: Vec::new(),
            end: ProcessEnd::Running,
            unsent_at_end: 0,
        });
        // The application joins one to all of the groups.
        let k = 1 + self.work_rng.below(self.cfg.groups as u64) as usize;
        let mut groups: Vec<String> = Vec::new();
        for g in GROUP_NAMES.iter().take(self.cfg.groups) {
            if groups.len() < k && (self.work_rng.chance(0.6) || groups.is_empty()) {
                groups.push((*g).to_owned());
            }
        }
        let now = self.now;
        if let Some(node) = self.slots[i].node.as_mut() {
            for g in &groups {
                let _ = node.join_group(now, g);
            }
        }
        self.slots[i].groups = groups;
        self.drain(i);
    }

    fn crash(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if let Some(node) = slot.node.take() {
            if let Some(mut t) = slot.trace.take() {
                t.end = ProcessEnd::Crashed;
                t.unsent_at_end = node.unsent() as u64;
                self.done.push(t);
            }
        }
        slot.timer = Time::NEVER;
    }

    /// Moves a node's outputs into the world.
    fn drain(&mut self, i: usize) {
        let now = self.now;
        let mut transmits = Vec::new();
        let mut left = false;
        {
            let slot = &mut self.slots[i];
            let Some(node) = slot.node.as_mut() else {
                return;
            };
            let slot_pid = node.pid();
            while let Some(ev) = node.poll_event() {
                match &ev {
                    Event::PersistPrimary(p) => slot.disk = p.clone(),
                    Event::Left => left = true,
                    Event::Deliver(d) if d.level == Level::Agreed => {
                        if let Some(tag) = d.payload.get(..8) {
                            let mut b = [0u8; 8];
                            b.copy_from_slice(tag);
                            let tag = u64::from_le_bytes(b);
                            if let Some(t0) = self.sent_at.get(&tag) {
                                if d.msg.sender == slot_pid {
                                    self.stats
                                        .agreed_latency_us
                                        .push(now.since(*t0).as_micros() as u64);
                                }
                            }
                        }
                    }
                    _ => {}
                }
                if self.keep_events && slot.events.len() < 100_000 {
                    slot.events.push(ev);
                }
            }
            if let Some(t) = slot.trace.as_mut() {
                while let Some(r) = node.poll_trace() {
                    if let TraceEvent::Deliver { .. } = r.event {
                        self.stats.deliveries += 1;
                    }
                    if let TraceEvent::Install {
                        conf: crate::types::ConfId::Regular(_),
                        ..
                    } = r.event
                    {
                        self.stats.views += 1;
                    }
                    t.records.push(r);
                }
            }
            while let Some(tx) = node.poll_transmit(now) {
                transmits.push(tx);
            }
            let c = node.counters();
            self.stats.max_held_bytes = self.stats.max_held_bytes.max(c.max_held_bytes);
            self.stats.max_held_frames = self.stats.max_held_frames.max(c.max_held_frames);
            slot.timer = node.poll_timeout().unwrap_or(Time::NEVER);
        }
        if left {
            let slot = &mut self.slots[i];
            slot.left = true;
            if let Some(node) = slot.node.take() {
                if let Some(mut t) = slot.trace.take() {
                    t.end = ProcessEnd::Left;
                    t.unsent_at_end = node.unsent() as u64;
                    self.done.push(t);
                }
            }
            slot.timer = Time::NEVER;
        }
        let from = self.slots[i].addr;
        for tx in transmits {
            self.stats.datagrams += 1;
            if let Some(rec) = self.recorded.as_mut() {
                if rec.len() < 10_000 {
                    rec.push(tx.payload.to_vec());
                }
            }
            let Some(to) = self.slots.iter().position(|s| s.addr == tx.dest) else {
                continue;
            };
            if self.faults_on && self.rng.chance(self.cfg.loss) {
                continue;
            }
            let copies = if self.faults_on && self.rng.chance(self.cfg.duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = self.cfg.delay_min + self.rng.exp(self.cfg.delay_mean);
                self.seq += 1;
                self.network.insert(
                    (now.plus(delay), self.seq),
                    InFlight {
                        to,
                        from,
                        bytes: tx.payload.clone(),
                    },
                );
            }
        }
    }

    fn live(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|i| self.slots[*i].node.is_some())
            .collect()
    }

    fn multicast_random(&mut self) {
        let live = self.live();
        if live.is_empty() {
            return;
        }
        let i = live[self.work_rng.below(live.len() as u64) as usize];
        let level = Level::ALL[self.work_rng.below(4) as usize];
        let group = GROUP_NAMES[self.work_rng.below(self.cfg.groups as u64) as usize];
        let len = match self.work_rng.below(50) {
            0 => 8 + self.work_rng.below(40_000) as usize,
            1..=4 => 8 + self.work_rng.below(3_000) as usize,
            _ => 8 + self.work_rng.below(100) as usize,
        };
        self.send(i, group, level, len);
    }

    fn send(&mut self, i: usize, group: &str, level: Level, len: usize) {
        self.tag += 1;
        let tag = self.tag;
        let mut payload = tag.to_le_bytes().to_vec();
        payload.extend((0..len.saturating_sub(8)).map(|k| (k as u64 ^ tag) as u8));
        let now = self.now;
        if let Some(node) = self.slots[i].node.as_mut() {
            if node.multicast(now, group, level, payload).is_ok() {
                self.stats.multicasts += 1;
                self.sent_at.insert(tag, now);
            }
        }
        self.drain(i);
    }

    fn fault(&mut self) {
        let n = self.slots.len();
        let kind = self.fault_rng.below(10);
        let live = self.live();
        match kind {
            0..=2 => {
                // Partition into two or three components.
                let k = 2 + self.fault_rng.below(2) as usize;
                let comp: Vec<usize> = (0..n)
                    .map(|_| self.fault_rng.below(k as u64) as usize)
                    .collect();
                let one_way = self.cfg.one_way && self.fault_rng.chance(0.5);
                self.blocked.clear();
                for a in 0..n {
                    for b in 0..n {
                        if comp[a] != comp[b] && (!one_way || comp[a] < comp[b]) {
                            self.blocked.insert((a, b));
                        }
                    }
                }
                let name = if one_way {
                    "partition-one-way"
                } else {
                    "partition"
                };
                *self.stats.faults.entry(name).or_default() += 1;
            }
            3 | 4 => {
                self.blocked.clear();
                *self.stats.faults.entry("heal").or_default() += 1;
            }
            5 | 6 if self.cfg.crashes && live.len() > 1 => {
                let i = live[self.fault_rng.below(live.len() as u64) as usize];
                self.crash(i);
                *self.stats.faults.entry("crash").or_default() += 1;
            }
            7 | 8 if self.cfg.crashes => {
                let down: Vec<usize> = (0..n)
                    .filter(|i| self.slots[*i].node.is_none() && !self.slots[*i].left)
                    .collect();
                if !down.is_empty() {
                    let i = down[self.fault_rng.below(down.len() as u64) as usize];
                    self.start(i);
                    *self.stats.faults.entry("restart").or_default() += 1;
                }
            }
            9 if self.cfg.leaves && live.len() > 2 => {
                let i = live[self.fault_rng.below(live.len() as u64) as usize];
                let now = self.now;
                if let Some(node) = self.slots[i].node.as_mut() {
                    node.leave(now);
                }
                self.drain(i);
                *self.stats.faults.entry("leave").or_default() += 1;
            }
            _ => {
                // Group churn: a node leaves or joins a group.
                if let Some(&i) = live.get(self.fault_rng.below(live.len().max(1) as u64) as usize)
                {
                    let g = GROUP_NAMES[self.fault_rng.below(self.cfg.groups as u64) as usize];
                    let now = self.now;
                    let joined = self.slots[i].groups.iter().any(|x| x == g);
                    if let Some(node) = self.slots[i].node.as_mut() {
                        let r = if joined {
                            node.leave_group(now, g)
                        } else {
                            node.join_group(now, g)
                        };
                        if r.is_ok() {
                            if joined {
                                self.slots[i].groups.retain(|x| x != g);
                            } else {
                                self.slots[i].groups.push(g.to_owned());
                            }
                        }
                    }
                    self.drain(i);
                    *self.stats.faults.entry("group-churn").or_default() += 1;
                }
            }
        }
    }

    /// Advances to the next thing that happens before `until`; false when
    /// nothing does.
    fn step(&mut self, until: Time) -> bool {
        if self.stats.steps >= MAX_STEPS {
            // A run that never quiets down (a datagram storm) is a liveness
            // failure; stop it instead of eating the machine.
            self.stats.step_budget_exceeded = true;
            return false;
        }
        let net = self.network.keys().next().copied();
        let timer = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.node.is_some())
            .min_by_key(|(_, s)| s.timer)
            .map(|(i, s)| (s.timer, i));
        let next_net = net.map_or(Time::NEVER, |(t, _)| t);
        let next_timer = timer.map_or(Time::NEVER, |(t, _)| t);
        let t = next_net.min(next_timer);
        if t > until {
            return false;
        }
        self.stats.steps += 1;
        self.now = t.max(self.now);
        if next_net <= next_timer {
            if let Some((_, d)) = net.and_then(|k| self.network.remove(&k).map(|d| (k, d))) {
                let from = self.slots.iter().position(|s| s.addr == d.from);
                let blocked = from.is_some_and(|f| self.blocked.contains(&(f, d.to)));
                if !blocked {
                    let now = self.now;
                    if let Some(node) = self.slots[d.to].node.as_mut() {
                        node.handle_datagram(now, d.from, &d.bytes);
                        self.drain(d.to);
                    }
                }
            }
        } else if let Some((_, i)) = timer {
            let now = self.now;
            if let Some(node) = self.slots[i].node.as_mut() {
                node.handle_timeout(now);
            }
            self.drain(i);
            if self.slots[i].timer <= now {
                // A deadline that handling did not move would spin forever:
                // a protocol bug, counted so runs report it.
                self.stats.stuck_timers += 1;
                self.slots[i].timer = now.plus(Duration::from_micros(100));
            }
        }
        true
    }

    fn run_until(&mut self, until: Time) {
        while self.step(until) {}
        self.now = self.now.max(until);
    }

    fn out_of_budget(&self) -> bool {
        self.stats.step_budget_exceeded
    }

    /// The live nodes share one regular view made of exactly them, with
    /// nothing left to send.
    fn converged(&self) -> bool {
        let live: Vec<&Node> = self.slots.iter().filter_map(|s| s.node.as_ref()).collect();
        let pids: Vec<Pid> = {
            let mut v: Vec<Pid> = live.iter().map(|n| n.pid()).collect();
            v.sort();
            v
        };
        let Some(first) = live.first() else {
            return true;
        };
        let (id, _) = first.view();
        live.iter().all(|n| {
            let (v, members) = n.view();
            v == id && members == pids.as_slice() && !n.changing_view() && n.unsent() == 0
        })
    }

    fn probes_delivered(&self, probes: &BTreeSet<u64>) -> bool {
        // Every live process delivered every probe (read from the traces).
        self.slots.iter().filter(|s| s.node.is_some()).all(|s| {
            let Some(t) = &s.trace else { return false };
            let seen: BTreeSet<u64> = t
                .records
                .iter()
                .filter_map(|r| match &r.event {
                    TraceEvent::Deliver { digest, .. } => Some(*digest),
                    _ => None,
                })
                .collect();
            probes.iter().all(|p| seen.contains(p))
        })
    }

    // ----- scripted scenarios (tests drive these directly) -----

    /// Keeps every application event for [`Sim::app_events`].
    pub fn keep_events(&mut self) {
        self.keep_events = true;
    }

    /// Starts keeping copies of the datagrams sent (up to 10,000), for
    /// tests that mutate real traffic.
    pub fn record_datagrams(&mut self) {
        self.recorded = Some(Vec::new());
    }

    /// The datagrams kept since [`Sim::record_datagrams`].
    pub fn recorded_datagrams(&self) -> &[Vec<u8>] {
        self.recorded.as_deref().unwrap_or(&[])
    }

    /// Starts every node.
    pub fn boot(&mut self) {
        for i in 0..self.slots.len() {
            self.start(i);
        }
    }

    /// Lets virtual time pass.
    pub fn advance(&mut self, d: Duration) {
        let until = self.now.plus(d);
        self.run_until(until);
    }

    /// The current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Node `i`, when running.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.slots.get(i).and_then(|s| s.node.as_ref())
    }

    /// Datagrams the running nodes have sent so far, all together: the
    /// cost figures (datagrams per round, per heartbeat period) are
    /// differences of it.
    pub fn datagrams_sent(&self) -> u64 {
        self.slots
            .iter()
            .filter_map(|s| s.node.as_ref())
            .map(|x| x.counters().datagrams_out)
            .sum()
    }

    /// Multicasts from node `i`.
    pub fn multicast(
        &mut self,
        i: usize,
        group: &str,
        level: Level,
        payload: Vec<u8>,
    ) -> Result<(), crate::node::SendError> {
        let now = self.now;
        let r = match self.slots.get_mut(i).and_then(|s| s.node.as_mut()) {
            Some(node) => node.multicast(now, group, level, payload),
            None => Err(crate::node::SendError::Leaving),
        };
        if r.is_ok() {
            self.stats.multicasts += 1;
        }
        self.drain(i);
        r
    }

    /// Hands node `i` a raw datagram as if it came from `from`.
    pub fn inject(&mut self, i: usize, from: SocketAddr, bytes: &[u8]) {
        let now = self.now;
        if let Some(node) = self.slots.get_mut(i).and_then(|s| s.node.as_mut()) {
            node.handle_datagram(now, from, bytes);
        }
        self.drain(i);
    }

    /// Cuts the network into the given components (node indexes).
    pub fn partition(&mut self, components: &[&[usize]]) {
        self.blocked.clear();
        let n = self.slots.len();
        let comp = |x: usize| components.iter().position(|c| c.contains(&x));
        for a in 0..n {
            for b in 0..n {
                if comp(a) != comp(b) {
                    self.blocked.insert((a, b));
                }
            }
        }
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Crashes node `i`.
    pub fn kill(&mut self, i: usize) {
        if i < self.slots.len() {
            self.crash(i);
        }
    }

    /// Restarts node `i` as a new incarnation.
    pub fn restart(&mut self, i: usize) {
        if i < self.slots.len() && self.slots[i].node.is_none() {
            self.start(i);
        }
    }

    /// Events the application of node `i` received that the simulator does
    /// not consume itself, oldest first.
    pub fn app_events(&self, i: usize) -> &[Event] {
        self.slots.get(i).map_or(&[], |s| &s.events[..])
    }

    /// Ends a scripted run: every process's trace, without a liveness phase.
    pub fn finish(mut self) -> Trace {
        let mut processes = std::mem::take(&mut self.done);
        for slot in &mut self.slots {
            if let (Some(node), Some(mut t)) = (slot.node.as_ref(), slot.trace.take()) {
                t.unsent_at_end = node.unsent() as u64;
                processes.push(t);
            }
        }
        processes.sort_by_key(|p| p.pid);
        Trace {
            processes,
            liveness: None,
        }
    }

    /// Runs the whole scenario.
    pub fn run(mut self) -> SimOutcome {
        for i in 0..self.slots.len() {
            self.start(i);
        }
        let fault_end = Time::ZERO.plus(self.cfg.fault_phase);
        let mut next_fault = self.now.plus(self.fault_rng.exp(self.cfg.fault_interval));
        let mut next_send = self.now.plus(self.work_rng.exp(self.cfg.send_interval));
        while self.now < fault_end && !self.out_of_budget() {
            let until = next_fault.min(next_send).min(fault_end);
            self.run_until(until);
            if self.now >= fault_end {
                break;
            }
            if self.now >= next_fault {
                self.fault();
                next_fault = self.now.plus(self.fault_rng.exp(self.cfg.fault_interval));
            }
            if self.now >= next_send {
                self.multicast_random();
                next_send = self.now.plus(self.work_rng.exp(self.cfg.send_interval));
            }
        }
        // Liveness phase: heal, stop faults, restart the crashed.
        self.faults_on = false;
        self.blocked.clear();
        for i in 0..self.slots.len() {
            if self.slots[i].node.is_none() && !self.slots[i].left {
                self.start(i);
            }
        }
        let healed_at = self.now;
        let deadline = healed_at.plus(self.cfg.liveness_bound);
        let tick = Duration::from_millis(10);
        // A view change already under way at the heal (a suspicion timed
        // before it) can split a converged cluster again; then wait for the
        // merge and probe again, until the deadline.
        loop {
            while self.now < deadline && !self.converged() && !self.out_of_budget() {
                let until = self.now.plus(tick);
                self.run_until(until);
            }
            if !self.converged() {
                self.stats.converged_after = None;
                break;
            }
            self.stats.converged_after = Some(self.now.since(healed_at));
            // A probe from every live node at every level.
            let mut probes = BTreeSet::new();
            for i in self.live() {
                for level in Level::ALL {
                    self.tag += 1;
                    let payload = self.tag.to_le_bytes().to_vec();
                    probes.insert(crate::types::digest(&payload));
                    let now = self.now;
                    if let Some(node) = self.slots[i].node.as_mut() {
                        let _ = node.multicast(now, "probe", level, payload);
                    }
                    self.drain(i);
                }
            }
            while self.now < deadline && !self.probes_delivered(&probes) && !self.out_of_budget() {
                let until = self.now.plus(tick);
                self.run_until(until);
            }
            // Let acknowledgements settle so unsent counts are final.
            let until = self.now.plus(Duration::from_millis(50));
            self.run_until(until.min(deadline.max(self.now)));
            if self.converged() || self.now >= deadline || self.out_of_budget() {
                break;
            }
        }
        self.stats.virtual_time = self.now.since(Time::ZERO);
        self.stats.final_states = self
            .slots
            .iter()
            .filter_map(|s| s.node.as_ref().map(|n| (n.pid(), n.describe())))
            .collect();
        let mut processes = std::mem::take(&mut self.done);
        for slot in &mut self.slots {
            if let (Some(node), Some(mut t)) = (slot.node.as_ref(), slot.trace.take()) {
                t.unsent_at_end = node.unsent() as u64;
                processes.push(t);
            }
        }
        processes.sort_by_key(|p| p.pid);
        SimOutcome {
            trace: Trace {
                processes,
                liveness: Some(LivenessPhase {
                    healed_at,
                    bound: self.cfg.liveness_bound,
                }),
            },
            stats: self.stats,
        }
    }
}

/// Runs one seed's scenario.
pub fn run(cfg: SimConfig) -> SimOutcome {
    Sim::new(cfg).run()
}
