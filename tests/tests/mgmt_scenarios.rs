//! mgmtd on every host of a virtual LAN, driven by the real monitor: every
//! target of a command gets exactly one outcome, whatever the network and
//! the daemons do. Needs root and iproute2; skips otherwise.
//!
//! (a) simex during a partition, (b) map updates on both sides of a
//! partition, (c) the primary server killed during updates, (d) siminst with
//! a host cut off mid-transfer, (e) a rolling restart: see tests/FAULTS.md.

use flotilla_tests::scenario::{self, maps, mgmt, mgmt::MgmtOutcome, siminst, ScenarioError};
use flotilla_tests::vlan;

fn run(f: impl FnOnce() -> Result<MgmtOutcome, ScenarioError>) {
    if let Some(why) = vlan::skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let _one_at_a_time = scenario::serial();
    // The time of each scenario, for CI's budget (tests/FAULTS.md).
    let started = std::time::Instant::now();
    let out = match f() {
        Ok(o) => o,
        Err(e) => panic!("scenario failed: {e}"),
    };
    eprintln!("{out}  took {:.1} s", started.elapsed().as_secs_f64());
    assert!(out.violations.is_empty(), "{out}");
}

#[test]
fn a_simex_during_a_partition() {
    run(|| mgmt::simex_during_partition(5));
}

#[test]
fn b_map_updates_on_both_sides_of_a_partition() {
    run(|| maps::map_updates_across_partition(5));
}

#[test]
fn c_primary_server_killed_during_updates() {
    run(|| maps::primary_killed_during_updates(5));
}

#[test]
fn d_siminst_with_a_host_cut_off_mid_transfer() {
    run(|| siminst::siminst_with_a_host_cut_off(5));
}

#[test]
fn siminst_over_ip_multicast_on_the_bridge() {
    run(|| siminst::siminst_over_multicast(5));
}

#[test]
fn e_rolling_restart_while_simex_runs() {
    run(|| mgmt::rolling_restart(4));
}

#[test]
fn discovery_through_multicast_on_the_named_interface() {
    run(|| mgmt::discovery_on_the_named_interface(3));
}
