//! Starts node processes and follows what they print (JSON lines).
//!
//! Every child is killed (SIGKILL) and reaped when its [`NodeProc`] is
//! dropped, also during a panic; a child whose parent dies anyway sees its
//! stdin close and leaves (the node's default).

// Shared by several example binaries and a test, each using a part of it.
#![allow(unreachable_pub, dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (the clock node lines carry).
pub fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `n` free loopback UDP addresses: bound together (so distinct), then
/// released for the nodes to bind.
///
/// The ports are drawn at random from below the kernel's ephemeral range:
/// a port the kernel picked for a port-0 bind goes back, once released, to
/// the pool every other process's port-0 binds draw from, and while 50
/// nodes start one after the other beside other tests, one of them now and
/// then found its port taken. Below the range only explicit binds land.
pub fn free_addrs(n: usize) -> std::io::Result<Vec<SocketAddr>> {
    const LOWEST: u32 = 10_000;
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32_768);
    let mut sockets: Vec<UdpSocket> = Vec::with_capacity(n);
    let mut draws = 0;
    while sockets.len() < n && ephemeral_low > LOWEST + 1_000 && draws < 1_000 * n {
        draws += 1;
        let offset = getrandom::u32().map_err(std::io::Error::other)? % (ephemeral_low - LOWEST);
        let port = u16::try_from(LOWEST + offset).map_err(std::io::Error::other)?;
        if let Ok(s) = UdpSocket::bind(("127.0.0.1", port)) {
            sockets.push(s);
        }
    }
    while sockets.len() < n {
        sockets.push(UdpSocket::bind("127.0.0.1:0")?);
    }
    sockets.iter().map(|s| s.local_addr()).collect()
}

/// The latest regular view a node reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenView {
    /// The view id as printed.
    pub id: String,
    /// Member node ids, sorted.
    pub members: Vec<u64>,
    /// Wall-clock time the node installed it (µs since the epoch).
    pub time_us: u64,
}

/// One node process.
pub struct NodeProc {
    /// The node id.
    pub id: u32,
    /// Its address.
    pub addr: SocketAddr,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
    /// Every line read so far.
    pub seen: Vec<Value>,
    /// Its latest regular view.
    pub view: Option<SeenView>,
    /// Its incarnation, from its `started` line.
    pub incarnation: Option<u64>,
}

impl NodeProc {
    /// Starts `exe args...`, stderr to `log` (or discarded).
    pub fn spawn(
        exe: &Path,
        args: &[String],
        id: u32,
        addr: SocketAddr,
        log: Option<&Path>,
    ) -> std::io::Result<NodeProc> {
        let stderr = match log {
            Some(p) => Stdio::from(std::fs::File::create(p)?),
            None => Stdio::null(),
        };
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout pipe"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let stdin = child.stdin.take();
        Ok(NodeProc {
            id,
            addr,
            child,
            stdin,
            lines: rx,
            seen: Vec::new(),
            view: None,
            incarnation: None,
        })
    }

    /// The OS process id.
    pub fn os_pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes a command line to the node's stdin.
    pub fn command(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stdin closed"))?;
        stdin.write_all(line.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()
    }

    /// Reads every line available now; returns how many.
    pub fn pump(&mut self) -> usize {
        let mut n = 0;
        while let Ok(v) = self.lines.try_recv() {
            self.absorb(v);
            n += 1;
        }
        n
    }

    fn absorb(&mut self, v: Value) {
        match v["type"].as_str() {
            Some("view") if v["kind"] == "regular" => {
                let mut members: Vec<u64> = v["members"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default();
                members.sort_unstable();
                self.view = Some(SeenView {
                    id: v["id"].as_str().unwrap_or_default().to_owned(),
                    members,
                    time_us: v["time_us"].as_u64().unwrap_or(0),
                });
            }
            Some("started") => self.incarnation = v["incarnation"].as_u64(),
            _ => {}
        }
        self.seen.push(v);
    }

    /// Waits up to `timeout` for a line `pred` accepts (looking at lines
    /// already seen from index `from` on first); returns it.
    pub fn wait_line(
        &mut self,
        from: usize,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Option<Value> {
        if let Some(v) = self.seen.iter().skip(from).find(|v| pred(v)) {
            return Some(v.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    let hit = pred(&v);
                    self.absorb(v.clone());
                    if hit {
                        return Some(v);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Sends a signal (SIGSTOP, SIGCONT, SIGKILL, ...).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> nix::Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal)
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes stdin and waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.stdin = None;
        let deadline = Instant::now() + timeout;
        loop {
            self.pump();
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => return None,
            }
        }
    }

    /// Resident memory (VmRSS) in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        vm_rss_kib(self.child.id())
    }

    /// CPU time used so far (user and system).
    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time(self.child.id())
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        // Resume a stopped child first, or it cannot be reaped promptly.
        let _ = self.signal(nix::sys::signal::Signal::SIGCONT);
        self.kill();
    }
}

/// CPU time (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it do not.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after ')'.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // In USER_HZ ticks, which Linux fixes at 100 per second for /proc.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// VmRSS of a process, in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Pumps every node until `cond` holds or `timeout` passes.
pub fn wait_until(
    nodes: &mut [&mut NodeProc],
    timeout: Duration,
    mut cond: impl FnMut(&[&mut NodeProc]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        for n in nodes.iter_mut() {
            n.pump();
        }
        if cond(nodes) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// True when every node's latest regular view is the same and has exactly
/// the node ids `members`.
pub fn one_view(nodes: &[&mut NodeProc], members: &[u64]) -> bool {
    let mut members = members.to_vec();
    members.sort_unstable();
    let Some(first) = nodes.first().and_then(|n| n.view.clone()) else {
        return false;
    };
    first.members == members
        && nodes.iter().all(|n| {
            n.view
                .as_ref()
                .is_some_and(|v| v.id == first.id && v.members == first.members)
        })
}

/// The scratch directory of a run: `$TMPDIR/<name>-<pid>-<time>`, created.
pub fn scratch_dir(name: &str) -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{name}-{}-{}", std::process::id(), wall_us()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Where node processes run.
pub enum Placement {
    /// All on 127.0.0.1, free ports.
    Loopback,
    /// One network namespace per node on a bridge (root only).
    Netns(Netns),
}

/// Network namespaces `flt<tag>-<i>`, each with one veth on the bridge
/// `flbr<tag>`, addresses 10.201.<i/250>.<i%250+1>/16. Removed on drop.
pub struct Netns {
    tag: String,
    n: usize,
}

fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Netns {
    /// Creates `n` namespaces on a fresh bridge.
    pub fn create(n: usize) -> std::io::Result<Netns> {
        let tag = format!("{}", std::process::id() % 100_000);
        let me = Netns { tag, n: 0 };
        let br = me.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["link", "set", &br, "up"])?;
        let mut me = me;
        for i in 1..=n {
            let ns = me.ns(i);
            ip(&["netns", "add", &ns])?;
            me.n = i;
            let (host, peer) = (me.host_if(i), "eth0".to_owned());
            ip(&[
                "link",
                "add",
                &host,
                "type",
                "veth",
                "peer",
                "name",
                &me.peer_if(i),
            ])?;
            ip(&["link", "set", &me.peer_if(i), "netns", &ns])?;
            ip(&["-n", &ns, "link", "set", &me.peer_if(i), "name", &peer])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/16", me.addr(i)),
                "dev",
                &peer,
            ])?;
            ip(&["-n", &ns, "link", "set", &peer, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["link", "set", &host, "master", &br])?;
            ip(&["link", "set", &host, "up"])?;
        }
        Ok(me)
    }

    fn bridge(&self) -> String {
        format!("flbr{}", self.tag)
    }

    fn host_if(&self, i: usize) -> String {
        format!("flv{}x{i}", self.tag)
    }

    fn peer_if(&self, i: usize) -> String {
        format!("flp{}x{i}", self.tag)
    }

    /// Node `i`'s namespace (1-based).
    pub fn ns(&self, i: usize) -> String {
        format!("flt{}-{i}", self.tag)
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, 201, (i / 250) as u8, (i % 250 + 1) as u8)
    }

    /// Cuts node `i` off the bridge (a partition of one).
    pub fn cut(&self, i: usize) -> std::io::Result<()> {
        ip(&["link", "set", &self.host_if(i), "down"])
    }

    /// Reconnects node `i`.
    pub fn heal(&self, i: usize) -> std::io::Result<()> {
        ip(&["link", "set", &self.host_if(i), "up"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for i in 1..=self.n {
            let _ = ip(&["link", "del", &self.host_if(i)]);
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// The `node` example beside the running example, built first with the
/// same profile (`cargo run --example bench-*` builds only the bench).
pub fn node_exe() -> std::io::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me
        .parent()
        .ok_or_else(|| std::io::Error::other("no directory"))?;
    let exe = dir.join("node");
    let release = dir.components().any(|c| c.as_os_str() == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", "gc-core", "--example", "node"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status()?;
    if !status.success() || !exe.exists() {
        return Err(std::io::Error::other(format!(
            "cannot build the node example at {}",
            exe.display()
        )));
    }
    Ok(exe)
}

/// A set of node processes under one key, in one scratch directory.
pub struct Fleet {
    /// The scratch directory (removed on drop).
    pub dir: PathBuf,
    /// The key file.
    pub key: PathBuf,
    /// Every node's address (index i is node i+1).
    pub addrs: Vec<SocketAddr>,
    /// Where they run.
    pub placement: Placement,
    exe: PathBuf,
    /// Extra arguments for every node.
    pub common_args: Vec<String>,
    /// IP multicast group for discovery and dissemination, when used.
    pub multicast: Option<SocketAddr>,
}

/// The port every node binds in its own namespace.
const NETNS_PORT: u16 = 7470;

impl Fleet {
    /// `n` nodes' worth of addresses and a fresh key.
    pub fn new(name: &str, n: usize, netns: bool) -> Result<Fleet, Box<dyn std::error::Error>> {
        let dir = scratch_dir(name)?;
        let key = dir.join("cluster.key");
        gc_core::seal::ClusterKey::generate()?.write_new(&key)?;
        let (placement, addrs) = if netns {
            let ns = Netns::create(n)?;
            let addrs = (1..=n)
                .map(|i| SocketAddr::from((ns.addr(i), NETNS_PORT)))
                .collect();
            (Placement::Netns(ns), addrs)
        } else {
            (Placement::Loopback, free_addrs(n)?)
        };
        Ok(Fleet {
            dir,
            key,
            addrs,
            placement,
            exe: node_exe()?,
            common_args: Vec::new(),
            multicast: None,
        })
    }

    /// Discovery and dissemination through an IP multicast group of this
    /// run (a free port, so concurrent runs stay apart).
    pub fn use_multicast(&mut self) -> std::io::Result<()> {
        let port = free_addrs(1)?[0].port();
        let octet = (std::process::id() % 250) as u8 + 1;
        self.multicast = Some(SocketAddr::from(([239, 255, 77, octet], port)));
        Ok(())
    }

    /// Starts node `id` (1-based) with `extra` arguments, seeded with every
    /// address, the bootstrap primary being every node.
    pub fn spawn(&self, id: u32, extra: &[&str]) -> std::io::Result<NodeProc> {
        let addr = self.addrs[id as usize - 1];
        let seeds: Vec<String> = self.addrs.iter().map(|a| a.to_string()).collect();
        let bootstrap: Vec<String> = (1..=self.addrs.len()).map(|i| i.to_string()).collect();
        let mut args: Vec<String> = vec![
            "--id".into(),
            id.to_string(),
            "--bind".into(),
            addr.to_string(),
            "--seed".into(),
            seeds.join(","),
            "--key".into(),
            self.key.display().to_string(),
            "--state".into(),
            self.dir
                .join(format!("node{id}.state"))
                .display()
                .to_string(),
            "--bootstrap".into(),
            bootstrap.join(","),
        ];
        if let Some(group) = self.multicast {
            args.extend([
                "--multicast".to_owned(),
                group.to_string(),
                "--interface".to_owned(),
                addr.ip().to_string(),
                "--disseminate".to_owned(),
            ]);
        }
        args.extend(self.common_args.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = self.dir.join(format!("node{id}.log"));
        match &self.placement {
            Placement::Loopback => NodeProc::spawn(&self.exe, &args, id, addr, Some(&log)),
            Placement::Netns(ns) => {
                let mut full = vec![
                    "netns".to_owned(),
                    "exec".to_owned(),
                    ns.ns(id as usize),
                    self.exe.display().to_string(),
                ];
                full.extend(args);
                NodeProc::spawn(Path::new("ip"), &full, id, addr, Some(&log))
            }
        }
    }

    /// Removes every node's stored state (the next start is a fresh node).
    pub fn forget_state(&self) {
        for i in 1..=self.addrs.len() {
            let _ = std::fs::remove_file(self.dir.join(format!("node{i}.state")));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Median and maximum of `values` (sorted here).
pub fn p50_max(values: &mut [u64]) -> (u64, u64) {
    values.sort_unstable();
    // Nearest rank, as common::percentile (not reachable from the tests
    // that include this file alone).
    let median = match values.len() {
        0 => 0,
        len => values[len.div_ceil(2) - 1],
    };
    (median, values.last().copied().unwrap_or(0))
}
