//! The virtual LAN itself: hosts reach each other, partitions cut them,
//! heals join them, loss drops what it should, processes are managed, and
//! nothing is left behind. Needs root and iproute2; skips otherwise.

// A test panics on its own setup failing: that is its way to fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use flotilla_tests::vlan::proc::{HostProcess, Spec, State};
use flotilla_tests::vlan::{self, Vlan};
use std::time::Duration;

macro_rules! skip_unless_root {
    () => {
        if let Some(why) = vlan::skip_reason() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

const PROBE: Duration = Duration::from_secs(2);
/// A probe that must fail: short, since it always waits the whole time.
const NO_PROBE: Duration = Duration::from_millis(400);

fn base() -> std::path::PathBuf {
    std::env::temp_dir().join("flotilla-runs")
}

fn namespaces() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lan_partitions_heals_drops_and_cleans_up() {
    skip_unless_root!();
    let mut lan = Vlan::new(3, &base()).expect("build the network");
    let prefix = lan.prefix().to_owned();
    assert!(namespaces().contains(&prefix));
    for a in 0..3 {
        for b in 0..3 {
            if a != b {
                assert!(
                    lan.reachable(a, b, PROBE).unwrap(),
                    "h{} -> h{}",
                    a + 1,
                    b + 1
                );
            }
        }
    }

    lan.partition(&[vec![0, 1], vec![2]]).unwrap();
    assert!(lan.reachable(0, 1, PROBE).unwrap());
    assert!(!lan.reachable(0, 2, NO_PROBE).unwrap());
    assert!(!lan.reachable(2, 1, NO_PROBE).unwrap());
    assert_eq!(lan.components(), vec![vec![0, 1], vec![2]]);
    // A partition must name every host exactly once.
    assert!(lan.partition(&[vec![0], vec![0, 1, 2]]).is_err());
    assert!(lan.partition(&[vec![0, 1]]).is_err());

    lan.heal().unwrap();
    assert!(lan.reachable(0, 2, PROBE).unwrap());
    assert!(lan.reachable(2, 1, PROBE).unwrap());

    if lan.loss_tool().is_some() {
        eprintln!("loss tool: {:?}", lan.loss_tool());
        lan.set_loss(0, 1, 100).unwrap();
        assert!(!lan.reachable(0, 1, NO_PROBE).unwrap(), "h1 -> h2 dropped");
        assert!(lan.reachable(1, 0, PROBE).unwrap(), "h2 -> h1 untouched");
        assert!(lan.reachable(0, 2, PROBE).unwrap(), "h1 -> h3 untouched");
        lan.clear_loss().unwrap();
        assert!(lan.reachable(0, 1, PROBE).unwrap());
    } else {
        eprintln!("neither nft nor tc works here: loss not tested");
    }

    lan.remove().unwrap();
    assert!(!namespaces().contains(&prefix), "namespaces left behind");
}

#[test]
fn processes_are_killed_paused_restarted_and_reaped() {
    skip_unless_root!();
    let lan = Vlan::new(3, &base()).expect("build the network");
    let spec = Spec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "echo '{\"up\":true}'; exec sleep 300".into()],
        env: vec![],
    };
    let mut p = HostProcess::new(&lan.hosts()[1], "sleeper", spec, lan.run_dir());
    assert_eq!(p.start().unwrap(), 0);
    let line = p.next_line(Duration::from_secs(5)).expect("first line");
    assert_eq!(line.value["up"], true);
    let pid = p.os_pid().unwrap();
    // It runs inside the host's namespace, not the machine's.
    let ns_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    assert_ne!(ns_of(pid), ns_of(std::process::id()));

    p.pause().unwrap();
    let state = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|r| r.trim().chars().next()))
            .flatten()
    };
    assert!(vlan::wait_for(
        Duration::from_secs(2),
        Duration::from_millis(10),
        || { state(pid) == Some('T') }
    ));
    p.resume().unwrap();
    assert!(vlan::wait_for(
        Duration::from_secs(2),
        Duration::from_millis(10),
        || { state(pid) == Some('S') }
    ));

    p.kill9().unwrap();
    assert_eq!(p.state(), State::Down);
    assert_eq!(p.start().unwrap(), 1);
    assert!(p.out_log(0).exists() && p.out_log(1).exists());
    let second = p.os_pid().unwrap();
    assert_ne!(pid, second);

    // A process still running when the network goes is killed with it.
    std::mem::forget(p);
    lan.remove().unwrap();
    assert!(vlan::wait_for(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || { !matches!(state(second), Some('S' | 'R' | 'T')) }
    ));
}

#[test]
fn dead_runs_are_swept() {
    skip_unless_root!();
    // Pid 4,000,000,000 exceeds the kernel's pid_max: its owner is dead.
    let stale = "flt-4000000000-1-0-h1";
    let st = std::process::Command::new("ip")
        .args(["netns", "add", stale])
        .status()
        .unwrap();
    assert!(st.success());
    // Another test building its network at the same time may sweep it
    // first, so only the result is asserted, not who removed it.
    vlan::sweep_dead_runs();
    assert!(!namespaces().contains(stale));
}
