//! A virtual LAN: hosts as Linux network namespaces on a bridge.
//!
//! ```text
//!   flt-<owner>-<n>-br            (a namespace of its own, so the machine's
//!   ┌──────────────────────┐       own network is never touched)
//!   │ br0   br1 ...        │      bridges; a partition moves ports to br1..
//!   │  │ h1  │ h2 ... h9   │      one veth end per host, named after it
//!   └──┼─────┼─────────────┘
//!      │     │
//!   flt-…-h1 flt-…-h2 ...          one namespace per host: eth0 10.77.0.<i>/24
//! ```
//!
//! Because every interface lives inside a namespace of this network, names
//! and addresses repeat freely across networks; only the namespace names must
//! be unique, and they carry the owning process ([`cleanup`]).
//!
//! Everything is removed when the [`Vlan`] is dropped (also while
//! unwinding from a panic), when the process gets SIGINT, SIGTERM or SIGHUP,
//! and otherwise by the sweep of dead runs that the next [`Vlan::new`] makes.

mod cleanup;

pub use cleanup::sweep_dead_runs;
pub(crate) mod cmd;
pub mod proc;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The fewest and most hosts a network may have.
pub const HOSTS: std::ops::RangeInclusive<usize> = 3..=9;

/// The address of host `i` (0-based): 10.77.0.<i+1>.
pub fn host_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, (i + 1) as u8)
}

/// What went wrong building, changing or removing a network.
#[derive(Debug, thiserror::Error)]
pub enum VlanError {
    /// A host count outside [`HOSTS`].
    #[error("a network has 3 to 9 hosts, not {0}")]
    HostCount(usize),
    /// A host index that the network does not have.
    #[error("no host {index} in a network of {hosts}")]
    NoSuchHost {
        /// The index asked for.
        index: usize,
        /// How many hosts there are.
        hosts: usize,
    },
    /// A partition that does not place every host in exactly one component.
    #[error("not a partition of the hosts: {0}")]
    BadPartition(String),
    /// A tool could not be started.
    #[error("cannot run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool exited with a failure.
    #[error("`{command}` failed (status {status:?}): {stderr}")]
    Tool {
        /// The command line.
        command: String,
        /// Its exit code, if it exited.
        status: Option<i32>,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A tool did not finish in time and was killed.
    #[error("`{command}` did not finish within {waited:?}")]
    ToolTimeout {
        /// The command line.
        command: String,
        /// How long it was given.
        waited: Duration,
    },
    /// Packet loss was asked for, but nftables is not installed.
    #[error("packet loss needs nftables (`nft`): apt-get install nftables")]
    NoLossTool,
    /// Local I/O (the run directory, a namespace file, a socket).
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl VlanError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VlanError {
        let what = what.into();
        move |source| VlanError::Io { what, source }
    }
}

/// Why the real-network tests cannot run here, or `None` when they can:
/// they need root (to create namespaces) and iproute2's `ip`.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root to create network namespaces (run as root, or in CI)".into());
    }
    if !cmd::tool_works("ip", "-V") {
        return Some("needs iproute2's `ip` (apt-get install iproute2)".into());
    }
    if !Path::new("/proc/self/ns/net").exists() {
        return Some("the kernel has no network namespaces".into());
    }
    None
}

/// How packet loss is made between chosen hosts.
///
/// Only nftables: `tc netem` would be the fallback, but this machine's
/// kernel has neither `sch_netem` nor `sch_prio` (tc answers "Specified qdisc
/// kind is unknown"), so a fallback could not be tested here and is not
/// offered. `.ci/run` installs nftables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossTool {
    /// nftables rules in the bridge's forward hook: exact per (from, to) pair,
    /// for unicast and multicast alike, and silent (a rule in the sender's
    /// output hook would make `sendto` fail with EPERM instead).
    Nft,
}

impl LossTool {
    /// The tool available here.
    pub fn detect() -> Option<LossTool> {
        cmd::tool_works("nft", "--version").then_some(LossTool::Nft)
    }
}

/// One host of a network.
#[derive(Clone, Debug)]
pub struct Host {
    /// Index in the network, from 0.
    pub index: usize,
    /// `h1`, `h2`, ...: the name in logs and the bridge port's name.
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its address on the LAN.
    pub addr: Ipv4Addr,
}

/// A virtual LAN of 3 to 9 hosts. See the module documentation.
pub struct Vlan {
    prefix: String,
    bridge_ns: String,
    hosts: Vec<Host>,
    run_dir: PathBuf,
    /// Which bridge (0 = br0) each host's port is on.
    component_of: Vec<usize>,
    /// Extra bridges created for partitions (br1..=brN).
    extra_bridges: usize,
    loss: BTreeMap<(usize, usize), u8>,
    loss_tool: Option<LossTool>,
    keep_run_dir: bool,
    removed: bool,
}

impl Vlan {
    /// Builds a network of `hosts` hosts. Its logs go into a fresh run
    /// directory under `base` (named after the network). Sweeps the
    /// namespaces of dead runs first.
    ///
    /// Call [`skip_reason`] first: without root this fails.
    pub fn new(hosts: usize, base: &Path) -> Result<Vlan, VlanError> {
        if !HOSTS.contains(&hosts) {
            return Err(VlanError::HostCount(hosts));
        }
        cleanup::sweep_once();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "{}{}-{}",
            cleanup::NS_PREFIX,
            cleanup::owner_tag(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let run_dir = base.join(&prefix);
        std::fs::create_dir_all(&run_dir)
            .map_err(VlanError::io(format!("creating {}", run_dir.display())))?;
        let hosts: Vec<Host> = (0..hosts)
            .map(|i| Host {
                index: i,
                name: format!("h{}", i + 1),
                ns: format!("{prefix}-h{}", i + 1),
                addr: host_addr(i),
            })
            .collect();
        let bridge_ns = format!("{prefix}-br");
        // Register before creating anything: a signal in the middle of the
        // setup still removes what exists (removing a missing one is fine).
        let mut all: Vec<String> = hosts.iter().map(|h| h.ns.clone()).collect();
        all.push(bridge_ns.clone());
        cleanup::register(&prefix, all);
        let mut vlan = Vlan {
            prefix,
            bridge_ns,
            component_of: vec![0; hosts.len()],
            hosts,
            run_dir,
            extra_bridges: 0,
            loss: BTreeMap::new(),
            loss_tool: LossTool::detect(),
            keep_run_dir: std::env::var_os("FLOTILLA_KEEP_RUNS").is_some(),
            removed: false,
        };
        // On error, dropping `vlan` removes the half-built network.
        vlan.build()?;
        Ok(vlan)
    }

    fn build(&mut self) -> Result<(), VlanError> {
        let br = self.bridge_ns.clone();
        cmd::ip(&["netns", "add", &br])?;
        self.add_bridge(0)?;
        for h in self.hosts.clone() {
            cmd::ip(&["netns", "add", &h.ns])?;
            // The veth is created in the bridge namespace with its peer
            // placed straight into the host's, so no interface ever appears
            // in the machine's own namespace.
            cmd::ip(&[
                "-n", &br, "link", "add", &h.name, "type", "veth", "peer", "name", "eth0", "netns",
                &h.ns,
            ])?;
            cmd::ip(&["-n", &br, "link", "set", &h.name, "master", "br0", "up"])?;
            let cidr = format!("{}/24", h.addr);
            cmd::ip(&["-n", &h.ns, "addr", "add", &cidr, "dev", "eth0"])?;
            cmd::ip(&["-n", &h.ns, "link", "set", "lo", "up"])?;
            cmd::ip(&["-n", &h.ns, "link", "set", "eth0", "up"])?;
            // IP multicast needs a route: there is no default route here.
            cmd::ip(&["-n", &h.ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(())
    }

    fn add_bridge(&self, k: usize) -> Result<(), VlanError> {
        let name = format!("br{k}");
        // No STP and no forwarding delay: a port moved between bridges
        // forwards at once. No multicast snooping: without an IGMP querier
        // on this LAN, snooping could stop forwarding group traffic.
        cmd::ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "add",
            &name,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        cmd::ip(&["-n", &self.bridge_ns, "link", "set", &name, "up"])?;
        Ok(())
    }

    /// Removes the hosts' route for 224.0.0.0/4: a socket that sends to a
    /// group without naming its interface then has none (ENETUNREACH).
    pub fn remove_multicast_routes(&self) -> Result<(), VlanError> {
        for h in &self.hosts {
            cmd::ip(&["-n", &h.ns, "route", "del", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(())
    }

    /// The hosts.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`.
    pub fn host(&self, i: usize) -> Result<&Host, VlanError> {
        self.hosts.get(i).ok_or(VlanError::NoSuchHost {
            index: i,
            hosts: self.hosts.len(),
        })
    }

    /// The directory for this run's logs.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The unique prefix of this network's namespaces.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The tool used for packet loss, if any works here.
    pub fn loss_tool(&self) -> Option<LossTool> {
        self.loss_tool
    }

    /// Keeps the run directory (logs, event logs) after the network is
    /// removed. It is kept anyway when the run panics, or when the
    /// environment sets `FLOTILLA_KEEP_RUNS`.
    pub fn keep_run_dir(&mut self) {
        self.keep_run_dir = true;
    }

    /// The component each host is in now (0 when healed).
    pub fn components(&self) -> Vec<Vec<usize>> {
        let mut by: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (h, c) in self.component_of.iter().enumerate() {
            by.entry(*c).or_default().push(h);
        }
        by.into_values().collect()
    }

    /// Cuts the network into `components`: each host's port moves to the
    /// bridge of its component, so hosts in different components exchange
    /// nothing (unicast, broadcast or multicast). Every host must appear in
    /// exactly one component.
    pub fn partition(&mut self, components: &[Vec<usize>]) -> Result<(), VlanError> {
        let n = self.hosts.len();
        let mut seen = vec![None; n];
        for (k, comp) in components.iter().enumerate() {
            for &h in comp {
                match seen.get_mut(h) {
                    None => return Err(VlanError::NoSuchHost { index: h, hosts: n }),
                    Some(Some(_)) => {
                        return Err(VlanError::BadPartition(format!(
                            "host {h} is in two components"
                        )))
                    }
                    Some(slot) => *slot = Some(k),
                }
            }
        }
        if let Some(h) = seen.iter().position(Option::is_none) {
            return Err(VlanError::BadPartition(format!(
                "host {h} is in no component"
            )));
        }
        while self.extra_bridges + 1 < components.len() {
            self.add_bridge(self.extra_bridges + 1)?;
            self.extra_bridges += 1;
        }
        for (h, k) in seen.into_iter().enumerate() {
            let k = k.unwrap_or(0);
            if self.component_of[h] != k {
                self.move_port(h, k)?;
            }
        }
        Ok(())
    }

    /// Puts host `h` alone in a component; the others stay together.
    pub fn isolate(&mut self, h: usize) -> Result<(), VlanError> {
        self.host(h)?;
        let rest: Vec<usize> = (0..self.hosts.len()).filter(|&i| i != h).collect();
        self.partition(&[rest, vec![h]])
    }

    /// Puts every port back on one bridge.
    pub fn heal(&mut self) -> Result<(), VlanError> {
        for h in 0..self.hosts.len() {
            if self.component_of[h] != 0 {
                self.move_port(h, 0)?;
            }
        }
        Ok(())
    }

    fn move_port(&mut self, h: usize, k: usize) -> Result<(), VlanError> {
        let port = self.hosts[h].name.clone();
        let bridge = format!("br{k}");
        cmd::ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "set",
            &port,
            "master",
            &bridge,
        ])?;
        self.component_of[h] = k;
        Ok(())
    }

    /// Drops `percent` % of the packets (unicast and multicast) from host
    /// `from` to host `to`, at random; 0 removes the rule. One direction
    /// only: call twice for both.
    pub fn set_loss(&mut self, from: usize, to: usize, percent: u8) -> Result<(), VlanError> {
        self.host(from)?;
        self.host(to)?;
        if percent == 0 {
            self.loss.remove(&(from, to));
        } else {
            self.loss.insert((from, to), percent.min(100));
        }
        self.apply_loss()
    }

    /// Removes every loss rule.
    pub fn clear_loss(&mut self) -> Result<(), VlanError> {
        if self.loss.is_empty() {
            return Ok(());
        }
        self.loss.clear();
        self.apply_loss()
    }

    /// The loss rules in force: (from, to) → percent.
    pub fn loss_rules(&self) -> &BTreeMap<(usize, usize), u8> {
        &self.loss
    }

    /// Rewrites the whole rule set from `self.loss`: simpler to get right
    /// than editing rules one by one, and it is a handful of rules.
    fn apply_loss(&mut self) -> Result<(), VlanError> {
        match self.loss_tool {
            None => Err(VlanError::NoLossTool),
            Some(LossTool::Nft) => {
                let mut script = String::from(
                    "table bridge flotilla {\n chain loss { type filter hook forward priority 0; policy accept; }\n}\nflush chain bridge flotilla loss\n",
                );
                for ((from, to), pct) in &self.loss {
                    // numgen's range is 0-99, so "< 100" is refused: total
                    // loss is a plain drop.
                    let share = if *pct >= 100 {
                        String::new()
                    } else {
                        format!("numgen random mod 100 < {pct} ")
                    };
                    script.push_str(&format!(
                        "add rule bridge flotilla loss iifname \"{}\" oifname \"{}\" {share}counter drop\n",
                        self.hosts[*from].name, self.hosts[*to].name
                    ));
                }
                cmd::run(
                    "ip",
                    &["netns", "exec", &self.bridge_ns, "nft", "-f", "-"],
                    Some(&script),
                )?;
                Ok(())
            }
        }
    }

    /// A UDP socket bound to `port` (0: any) on host `h`'s address, inside
    /// its namespace: for probing the network from the test process itself.
    pub fn udp_socket(&self, h: usize, port: u16) -> Result<UdpSocket, VlanError> {
        let host = self.host(h)?.clone();
        let what = format!("binding a UDP socket in {}", host.ns);
        // setns changes the namespace of the calling thread only, and a
        // socket keeps the namespace it was created in: so a short-lived
        // thread enters the namespace, makes the socket and hands it back.
        let ns_path = PathBuf::from("/run/netns").join(&host.ns);
        let joined = std::thread::spawn(move || -> std::io::Result<UdpSocket> {
            let f = std::fs::File::open(&ns_path)?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            UdpSocket::bind(SocketAddr::from((host.addr, port)))
        })
        .join();
        match joined {
            Ok(r) => r.map_err(VlanError::io(what)),
            Err(_) => Err(VlanError::Io {
                what,
                source: std::io::Error::other("the probing thread panicked"),
            }),
        }
    }

    /// Whether a datagram from host `a` reaches host `b` within `timeout`
    /// (several are sent, so moderate loss does not make it false).
    pub fn reachable(&self, a: usize, b: usize, timeout: Duration) -> Result<bool, VlanError> {
        let rx = self.udp_socket(b, 0)?;
        let tx = self.udp_socket(a, 0)?;
        let to = rx.local_addr().map_err(VlanError::io("probe address"))?;
        rx.set_read_timeout(Some(Duration::from_millis(20)))
            .map_err(VlanError::io("probe timeout"))?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 16];
        while Instant::now() < deadline {
            // A send may fail while ARP resolves or with EPERM from a rule;
            // the next round tries again.
            let _ = tx.send_to(b"flotilla-probe", to);
            if let Ok((_, from)) = rx.recv_from(&mut buf) {
                if from.ip() == std::net::IpAddr::V4(self.hosts[a].addr) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Removes everything: processes in the namespaces, the namespaces (and
    /// with them every veth and bridge), and the run directory unless it is
    /// kept. Dropping the network does the same; this reports errors.
    pub fn remove(mut self) -> Result<(), VlanError> {
        self.remove_inner()
    }

    fn remove_inner(&mut self) -> Result<(), VlanError> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        let mut errors = Vec::new();
        for h in &self.hosts {
            cleanup::remove_namespace(&h.ns, &mut errors);
        }
        cleanup::remove_namespace(&self.bridge_ns, &mut errors);
        cleanup::unregister(&self.prefix);
        if !self.keep_run_dir && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(VlanError::Tool {
                command: format!("removing network {}", self.prefix),
                status: None,
                stderr: errors.join("; "),
            })
        }
    }
}

impl Drop for Vlan {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "flotilla-tests: run failed; logs kept in {}",
                self.run_dir.display()
            );
        }
        if let Err(e) = self.remove_inner() {
            eprintln!("flotilla-tests: {e}");
        }
    }
}

/// Pumps `cond` until it holds or `timeout` passes, sleeping `every` between
/// tries. Every wait in the harness goes through a bound like this one.
pub fn wait_for(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}
