//! mgmtd on every host of a virtual LAN, driven by the real monitor: every
//! target of a command gets exactly one outcome, whatever the network and
//! the daemons do. Needs root and iproute2; skips otherwise.
//!
//! Scenarios (b) map updates across a partition, (c) the primary server
//! crashing during updates and (d) siminst across a partition need the maps
//! and siminst, which mgmtd does not serve yet: see tests/FAULTS.md.

use flotilla_tests::scenario::{self, mgmt, mgmt::MgmtOutcome, ScenarioError};
use flotilla_tests::vlan;

fn run(f: impl FnOnce() -> Result<MgmtOutcome, ScenarioError>) {
    if let Some(why) = vlan::skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let _one_at_a_time = scenario::serial();
    let out = match f() {
        Ok(o) => o,
        Err(e) => panic!("scenario failed: {e}"),
    };
    eprintln!("{out}");
    assert!(out.violations.is_empty(), "{out}");
}

#[test]
fn a_simex_during_a_partition() {
    run(|| mgmt::simex_during_partition(5));
}

#[test]
fn e_rolling_restart_while_simex_runs() {
    run(|| mgmt::rolling_restart(4));
}
