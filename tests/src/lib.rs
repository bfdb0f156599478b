//! Flotilla's end-to-end tests and fault harness.
//!
//! - [`loopback`] (re-exported at the crate root): a fleet of real `mgmtd`
//!   processes on loopback, driven by the real `monitor` binary;
//! - [`vlan`]: hosts as Linux network namespaces on a bridge, and the
//!   processes running in them;
//! - [`faults`]: partitions, heals, kill -9 and restart, SIGSTOP/SIGCONT,
//!   packet loss between chosen hosts;
//! - [`scenario`]: fleets of real processes on such a network, and the gc-core
//!   checker run on the event logs every host wrote;
//! - [`package`]: siminst test packages and the packages `status` lists;
//! - [`nemesis`]: random faults against a live fleet of gc-core nodes under a
//!   steady workload; [`nemesis_mgmt`]: the same against mgmtd daemons
//!   driven by monitors.
//!
//! The tests in `tests/` need root and iproute2; without them they print why
//! and pass without doing anything. `tests/FAULTS.md` describes the suite.

pub mod faults;
pub mod loopback;
pub mod nemesis;
pub mod nemesis_mgmt;
pub mod package;
pub mod scenario;
pub mod vlan;

pub use loopback::*;
