//! Nodes in separate processes (the `node` example) over real UDP on
//! loopback: one view forms and all four service levels are delivered; a
//! node killed with SIGKILL is excluded within the detection bound; a node
//! stopped with SIGSTOP is excluded and merges back after SIGCONT; a node
//! with another cluster key never enters the view and its datagrams are
//! counted as authentication failures.
//!
//! Every child is killed when its guard drops, also when a test fails.
#![cfg(feature = "runtime")]

#[path = "../examples/common/harness.rs"]
mod harness;

use harness::{free_addrs, one_view, scratch_dir, wait_until, NodeProc};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

type R = Result<(), Box<dyn std::error::Error>>;

/// The `node` example, built once per run of this test binary with the
/// test profile (a no-op when `cargo test` already built it), so the
/// processes always run the code under test.
fn node_exe() -> Result<PathBuf, String> {
    static EXE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    EXE.get_or_init(|| {
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        // target/<profile>/deps/runtime_udp-<hash>
        let profile_dir = me
            .parent()
            .and_then(Path::parent)
            .ok_or("unexpected test binary location")?;
        let exe = profile_dir.join("examples").join("node");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "gc-core",
                "--example",
                "node",
                "--profile",
                "test",
            ])
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() || !exe.exists() {
            return Err(format!(
                "cannot build the node example at {}",
                exe.display()
            ));
        }
        Ok(exe)
    })
    .clone()
}

/// A small cluster of node processes sharing one key.
struct Cluster {
    dir: PathBuf,
    key: PathBuf,
    addrs: Vec<std::net::SocketAddr>,
}

impl Cluster {
    fn new(name: &str, n: usize) -> Result<Cluster, Box<dyn std::error::Error>> {
        let dir = scratch_dir(name)?;
        let key = dir.join("cluster.key");
        gc_core::seal::ClusterKey::generate()?.write_new(&key)?;
        Ok(Cluster {
            dir,
            key,
            addrs: free_addrs(n)?,
        })
    }

    /// Starts node `id` (1-based) with `key`, seeded with every address.
    fn spawn_with_key(&self, id: u32, key: &Path) -> Result<NodeProc, Box<dyn std::error::Error>> {
        let seeds: Vec<String> = self.addrs.iter().map(|a| a.to_string()).collect();
        self.spawn_with(id, key, &["--seed".into(), seeds.join(",")])
    }

    fn spawn_with(
        &self,
        id: u32,
        key: &Path,
        extra: &[String],
    ) -> Result<NodeProc, Box<dyn std::error::Error>> {
        let addr = self.addrs[id as usize - 1];
        let bootstrap: Vec<String> = (1..=self.addrs.len()).map(|i| i.to_string()).collect();
        let mut args = vec![
            "--id".into(),
            id.to_string(),
            "--bind".into(),
            addr.to_string(),
            "--key".into(),
            key.display().to_string(),
            "--state".into(),
            self.dir
                .join(format!("node{id}.state"))
                .display()
                .to_string(),
            "--event-log".into(),
            self.dir
                .join(format!("node{id}.events"))
                .display()
                .to_string(),
            "--bootstrap".into(),
            bootstrap.join(","),
            "--groups".into(),
            "g".into(),
        ];
        args.extend(extra.iter().cloned());
        let log = self.dir.join(format!("node{id}.log"));
        Ok(NodeProc::spawn(&node_exe()?, &args, id, addr, Some(&log))?)
    }

    fn spawn(&self, id: u32) -> Result<NodeProc, Box<dyn std::error::Error>> {
        self.spawn_with_key(id, &self.key)
    }

    fn event_logs(&self, ids: &[u32]) -> Vec<PathBuf> {
        ids.iter()
            .map(|i| self.dir.join(format!("node{i}.events")))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Keep the nodes' logs of a failed test for whoever reads it.
        if std::thread::panicking() {
            eprintln!("node logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn counters(node: &mut NodeProc) -> Option<Value> {
    let from = node.seen.len();
    node.command("counters").ok()?;
    node.wait_line(from, Duration::from_secs(5), |v| v["type"] == "counters")
}

fn deliveries(node: &NodeProc, level: &str) -> Vec<String> {
    node.seen
        .iter()
        .filter(|v| v["type"] == "deliver" && v["level"] == level)
        .filter_map(|v| v["text"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn processes_form_one_view_and_deliver_all_four_levels() -> R {
    let cluster = Cluster::new("gc-udp-levels", 3)?;
    let mut nodes: Vec<NodeProc> = (1..=3)
        .map(|i| cluster.spawn(i))
        .collect::<Result<_, _>>()?;
    let mut refs: Vec<&mut NodeProc> = nodes.iter_mut().collect();
    assert!(
        wait_until(&mut refs, Duration::from_secs(5), |n| one_view(
            n,
            &[1, 2, 3]
        )),
        "no common view of 3 within 5 s"
    );
    // Every node joined g at start; wait until each sees all three in it.
    assert!(wait_until(&mut refs, Duration::from_secs(5), |ns| ns
        .iter()
        .all(|n| {
            n.seen.iter().any(|v| {
                v["type"] == "group_view" && v["members"].as_array().map(Vec::len) == Some(3)
            })
        })));
    let levels = ["fifo", "causal", "agreed", "safe"];
    for round in 0..3 {
        for (i, n) in refs.iter_mut().enumerate() {
            for level in levels {
                n.command(&format!("send {level} g {level}-{}-{round}", i + 1))?;
            }
        }
    }
    let expected = 3 * 3; // per level: 3 senders x 3 rounds
    let all_delivered = wait_until(&mut refs, Duration::from_secs(10), |ns| {
        ns.iter()
            .all(|n| levels.iter().all(|l| deliveries(n, l).len() == expected))
    });
    if !all_delivered {
        for n in refs.iter() {
            let counts: Vec<usize> = levels.iter().map(|l| deliveries(n, l).len()).collect();
            eprintln!("node {}: delivered per level {counts:?}", n.id);
        }
        panic!("not every message was delivered within 10 s");
    }
    for level in levels {
        for n in refs.iter() {
            let got = deliveries(n, level);
            // FIFO per sender.
            for s in 1..=3 {
                let mine: Vec<&String> = got
                    .iter()
                    .filter(|t| t.starts_with(&format!("{level}-{s}-")))
                    .collect();
                let want: Vec<String> = (0..3).map(|r| format!("{level}-{s}-{r}")).collect();
                assert_eq!(mine, want.iter().collect::<Vec<_>>(), "{level} order");
            }
        }
    }
    // Agreed and safe: one total order on every node.
    for level in ["agreed", "safe"] {
        let first = deliveries(refs[0], level);
        for n in refs.iter().skip(1) {
            assert_eq!(deliveries(n, level), first, "{level} order differs");
        }
    }
    for n in refs.iter_mut() {
        let c = counters(n).ok_or("no counters")?;
        assert_eq!(c["drops"]["authentication"], 0);
        assert_eq!(c["drops"]["decode"], 0);
    }
    // Clean leaves, then the checker over the three processes' event logs.
    for n in refs.iter_mut() {
        assert!(
            n.wait_exit(Duration::from_secs(10)).is_some(),
            "no clean exit"
        );
    }
    let violations = gc_core::eventlog::check_event_logs(&cluster.event_logs(&[1, 2, 3]))?;
    assert!(violations.is_empty(), "{violations:#?}");
    Ok(())
}

#[test]
fn kill_9_is_detected_and_a_stopped_node_merges_after_sigcont() -> R {
    let cluster = Cluster::new("gc-udp-faults", 4)?;
    let mut nodes: Vec<NodeProc> = (1..=4)
        .map(|i| cluster.spawn(i))
        .collect::<Result<_, _>>()?;
    {
        let mut refs: Vec<&mut NodeProc> = nodes.iter_mut().collect();
        assert!(
            wait_until(&mut refs, Duration::from_secs(5), |n| one_view(
                n,
                &[1, 2, 3, 4]
            )),
            "no common view of 4 within 5 s"
        );
    }
    // kill -9 node 4: the others install a view without it. The default
    // suspicion timeout is 400 ms; the bound is 1 s.
    let killed = Instant::now();
    let mut victim = nodes.pop().ok_or("no node")?;
    victim.signal(Signal::SIGKILL)?;
    victim.kill();
    {
        let mut refs: Vec<&mut NodeProc> = nodes.iter_mut().collect();
        assert!(
            wait_until(&mut refs, Duration::from_secs(3), |n| one_view(
                n,
                &[1, 2, 3]
            )),
            "the survivors did not exclude the killed node within 3 s"
        );
    }
    let detected = killed.elapsed();
    assert!(
        detected < Duration::from_secs(1),
        "kill -9 to new view took {detected:?}, over the 1 s bound"
    );

    // SIGSTOP node 3: excluded like a crash; SIGCONT: it merges back, as a
    // member of one common view (no restart, so the same incarnation).
    nodes[2].signal(Signal::SIGSTOP)?;
    {
        let (left, _) = nodes.split_at_mut(2);
        let mut refs: Vec<&mut NodeProc> = left.iter_mut().collect();
        assert!(
            wait_until(&mut refs, Duration::from_secs(3), |n| one_view(n, &[1, 2])),
            "the others did not exclude the stopped node within 3 s"
        );
    }
    nodes[2].signal(Signal::SIGCONT)?;
    let resumed = Instant::now();
    {
        let mut refs: Vec<&mut NodeProc> = nodes.iter_mut().collect();
        assert!(
            wait_until(&mut refs, Duration::from_secs(5), |n| one_view(
                n,
                &[1, 2, 3]
            )),
            "the resumed node did not merge within 5 s"
        );
    }
    let merged = resumed.elapsed();
    assert!(merged < Duration::from_secs(2), "merge took {merged:?}");
    for n in nodes.iter_mut() {
        assert!(
            n.wait_exit(Duration::from_secs(10)).is_some(),
            "no clean exit"
        );
    }
    let violations = gc_core::eventlog::check_event_logs(&cluster.event_logs(&[1, 2, 3, 4]))?;
    assert!(violations.is_empty(), "{violations:#?}");
    Ok(())
}

#[test]
fn a_node_with_the_wrong_key_never_enters_and_is_counted() -> R {
    let cluster = Cluster::new("gc-udp-wrong-key", 3)?;
    let wrong = cluster.dir.join("wrong.key");
    gc_core::seal::ClusterKey::generate()?.write_new(&wrong)?;
    let mut nodes = [cluster.spawn(1)?, cluster.spawn(2)?];
    let mut intruder = cluster.spawn_with_key(3, &wrong)?;
    {
        let mut refs: Vec<&mut NodeProc> = nodes.iter_mut().collect();
        assert!(
            wait_until(&mut refs, Duration::from_secs(5), |n| one_view(n, &[1, 2])),
            "the two nodes with the right key did not form a view"
        );
    }
    // Give discovery several rounds (200 ms each) to let the intruder in,
    // if it could.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        intruder.pump();
        for n in nodes.iter_mut() {
            n.pump();
            if let Some(v) = &n.view {
                assert!(
                    !v.members.contains(&3),
                    "the intruder entered a view: {v:?}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(v) = &intruder.view {
        assert_eq!(v.members, vec![3], "the intruder formed a view with others");
    }
    for n in nodes.iter_mut() {
        let c = counters(n).ok_or("no counters")?;
        let auth = c["drops"]["authentication"].as_u64().unwrap_or(0);
        assert!(auth > 0, "no authentication drops counted: {c}");
    }
    let c = counters(&mut intruder).ok_or("no counters")?;
    assert!(c["drops"]["authentication"].as_u64().unwrap_or(0) > 0);
    Ok(())
}

/// A second process started with a running node's id (two daemons given
/// one name) takes its place in the group; the peers cannot tell which is
/// right, but they must say loudly that two live processes carry one id.
#[test]
fn two_live_processes_with_one_node_id_are_reported() -> R {
    let cluster = Cluster::new("gc-udp-one-id", 3)?;
    let mut nodes = [cluster.spawn(1)?, cluster.spawn(2)?];
    {
        let mut refs: Vec<&mut NodeProc> = nodes.iter_mut().collect();
        assert!(
            wait_until(&mut refs, Duration::from_secs(5), |n| one_view(n, &[1, 2])),
            "nodes 1 and 2 did not form a view"
        );
    }
    // Node 2 again, at the third address, with a state of its own.
    let addr = cluster.addrs[2];
    let args: Vec<String> = vec![
        "--id".into(),
        "2".into(),
        "--bind".into(),
        addr.to_string(),
        "--key".into(),
        cluster.key.display().to_string(),
        "--state".into(),
        cluster.dir.join("twin.state").display().to_string(),
        "--seed".into(),
        cluster.addrs[0].to_string(),
        "--groups".into(),
        "g".into(),
    ];
    let log = cluster.dir.join("twin.log");
    let mut twin = NodeProc::spawn(&node_exe()?, &args, 2, addr, Some(&log))?;
    let until = Instant::now() + Duration::from_secs(10);
    let mut conflicts = 0;
    while Instant::now() < until && conflicts == 0 {
        twin.pump();
        nodes[1].pump();
        let c = counters(&mut nodes[0]).ok_or("no counters")?;
        conflicts = c["identity_conflicts"].as_u64().unwrap_or(0);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(conflicts > 0, "node 1 counted no identity conflict");
    let text = std::fs::read_to_string(cluster.dir.join("node1.log"))?;
    let line = text
        .lines()
        .find(|l| l.contains("two live processes claim one node id"));
    assert!(line.is_some(), "node 1 did not log the conflict:\n{text}");
    eprintln!("{}", line.unwrap_or_default());
    Ok(())
}

#[test]
fn ip_multicast_discovers_without_seeds_and_disseminates() -> R {
    multicast_cluster("gc-udp-multicast", Some("127.0.0.1"))
}

/// No interface given, as mgmtd configures it: the runtime must send and
/// join on the interface of the bound address (127.0.0.1), not the default
/// route's, where this host drops its own looped-back datagrams (their
/// source, 127.0.0.1, is martian there) and nothing is heard of the group.
#[test]
fn ip_multicast_without_an_interface_uses_the_bound_address() -> R {
    multicast_cluster("gc-udp-multicast-noif", None)
}

/// Three nodes bound to loopback, no seeds, discovering each other and
/// disseminating through a group of their own, on `interface` if given.
fn multicast_cluster(name: &str, interface: Option<&str>) -> R {
    let cluster = Cluster::new(name, 3)?;
    let port = free_addrs(1)?[0].port();
    let [hi, lo] = port.to_be_bytes();
    let group = format!("239.255.{hi}.{lo}:{port}");
    let mut extra: Vec<String> = vec!["--multicast".into(), group, "--disseminate".into()];
    if let Some(interface) = interface {
        extra.extend(["--interface".into(), interface.into()]);
    }
    let mut nodes: Vec<NodeProc> = (1..=3)
        .map(|i| cluster.spawn_with(i, &cluster.key, &extra))
        .collect::<Result<_, _>>()?;
    let mut refs: Vec<&mut NodeProc> = nodes.iter_mut().collect();
    assert!(
        wait_until(&mut refs, Duration::from_secs(5), |n| one_view(
            n,
            &[1, 2, 3]
        )),
        "no common view of 3 through multicast discovery within 5 s"
    );
    assert!(wait_until(&mut refs, Duration::from_secs(5), |ns| ns
        .iter()
        .all(|n| {
            n.seen.iter().any(|v| {
                v["type"] == "group_view" && v["members"].as_array().map(Vec::len) == Some(3)
            })
        })));
    for i in 0..20 {
        refs[i % 3].command(&format!("send agreed g m{i}"))?;
    }
    assert!(
        wait_until(&mut refs, Duration::from_secs(5), |ns| ns
            .iter()
            .all(|n| deliveries(n, "agreed").len() == 20)),
        "not all 20 messages delivered everywhere"
    );
    let first = deliveries(refs[0], "agreed");
    for n in refs.iter_mut() {
        assert_eq!(deliveries(n, "agreed"), first);
        let c = counters(n).ok_or("no counters")?;
        assert!(
            c["multicast_out"].as_u64().unwrap_or(0) > 0,
            "nothing went through the group: {c}"
        );
    }
    Ok(())
}

/// Dissemination of 60000-byte datagrams as fast as the group absorbs
/// them: the multicast socket must have the configured receive buffer, not
/// the system's default (about three such datagrams), or receivers drop
/// most of every burst and the sender repairs it datagram by datagram.
#[test]
fn disseminated_bursts_are_not_lost_in_the_multicast_socket() -> R {
    let cluster = Cluster::new("gc-udp-multicast-burst", 3)?;
    let port = free_addrs(1)?[0].port();
    let [hi, lo] = port.to_be_bytes();
    let group = format!("239.254.{hi}.{lo}:{port}");
    let seeds: Vec<String> = cluster.addrs.iter().map(|a| a.to_string()).collect();
    let extra: Vec<String> = [
        "--seed",
        &seeds.join(","),
        "--multicast",
        &group,
        "--interface",
        "127.0.0.1",
        "--disseminate",
        "--quiet",
        "--set",
        "max_datagram=60000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut nodes: Vec<NodeProc> = (1..=3)
        .map(|i| cluster.spawn_with(i, &cluster.key, &extra))
        .collect::<Result<_, _>>()?;
    let mut refs: Vec<&mut NodeProc> = nodes.iter_mut().collect();
    assert!(
        wait_until(&mut refs, Duration::from_secs(10), |n| one_view(
            n,
            &[1, 2, 3]
        )),
        "no common view of 3 within 10 s"
    );
    // Group views of g everywhere before the load starts.
    assert!(wait_until(&mut refs, Duration::from_secs(5), |ns| ns
        .iter()
        .all(|n| {
            n.seen.iter().any(|v| {
                v["type"] == "group_view" && v["members"].as_array().map(Vec::len) == Some(3)
            })
        })));
    refs[0].command("load fifo 240000 1500 g")?;
    assert!(
        wait_until(&mut refs, Duration::from_secs(20), |ns| ns[0]
            .seen
            .iter()
            .any(|v| v["type"] == "load_report")),
        "the load never reported"
    );
    let c = counters(refs[0]).ok_or("no counters")?;
    let out = c["datagrams_out"].as_u64().unwrap_or(0);
    let repairs = c["retransmissions"].as_u64().unwrap_or(0);
    eprintln!("sender counters: {c}");
    assert!(
        c["multicast_out"].as_u64().unwrap_or(0) > 0,
        "nothing went through the group: {c}"
    );
    assert!(
        repairs * 10 < out,
        "{repairs} retransmissions for {out} datagrams sent: {c}"
    );
    // The sender's own group datagrams come back (multicast loopback) and
    // are discarded before they are opened.
    assert!(
        c["multicast_own_skipped"].as_u64().unwrap_or(0) > 0,
        "no own datagram skipped: {c}"
    );
    Ok(())
}
