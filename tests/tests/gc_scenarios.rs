//! The gc-core runtime on a real (virtual) LAN: each scenario faults a fleet
//! of `node` processes in network namespaces and runs the checker on every
//! host's event log. Needs root and iproute2; skips otherwise.

// A test panics on its own setup failing: that is its way to fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use flotilla_tests::scenario::{self, gc, gc::Outcome, ScenarioError};
use flotilla_tests::vlan;

fn run(f: impl FnOnce() -> Result<Outcome, ScenarioError>) {
    if let Some(why) = vlan::skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let _one_at_a_time = scenario::serial();
    let out = match f() {
        Ok(o) => o,
        Err(e) => panic!("scenario failed: {e}"),
    };
    // Printed on success too: `cargo test -- --nocapture` shows the figures.
    eprintln!("{out}");
    assert!(out.ok(), "the checker found violations:\n{out}");
}

#[test]
fn form_a_view_across_the_bridge() {
    run(|| gc::form_view(5));
}

#[test]
fn partition_and_heal() {
    run(|| gc::partition_and_heal(5));
}

#[test]
fn kill_9_and_restart() {
    run(|| gc::kill_and_restart(4));
}

#[test]
fn sigstop_and_sigcont() {
    run(|| gc::pause_and_resume(4));
}

#[test]
fn multicast_discovery_over_the_bridge() {
    run(|| gc::multicast_discovery(3));
}

#[test]
fn packet_loss_between_two_hosts() {
    if vlan::LossTool::detect().is_none() {
        eprintln!("skipping: packet loss needs nftables (apt-get install nftables)");
        return;
    }
    run(|| gc::lossy_links(3, 30));
}
