//! Flotilla's management server, `mgmtd`, as a library.
//!
//! One `mgmtd` runs on every host of a fleet; together they form the `mgmt`
//! process group over `gc-core` and carry out the operator's commands
//! (`status`, `chdir`, `simex`, `exit`, later `siminst` and the replicated
//! maps). The binary in `src/main.rs` is a thin shell over this library, in
//! the manner of mini-redis.
//!
//! - [`group`]: what the server needs of the group core (the [`group::Group`]
//!   trait) and an in-memory fake for tests;
//! - [`server`]: the server logic over a group: commands in agreed order,
//!   at most once per job id, M/NR for the monitors it serves;
//! - [`gc`]: the real group, over the `gc-core` runtime;
//! - [`listener`]: the monitors' Unix socket and TCP listener;
//! - [`wire`]: the messages servers exchange in the `mgmt` group;
//! - [`status`]: the host figures `monitor status` shows;
//! - [`config`]: the YAML configuration, parsed and then validated into a
//!   settled [`config::Config`];
//! - [`key`]: the cluster key file (`mgmtd keygen FILE`, and the permission
//!   check made before the daemon starts);
//! - [`exec`]: the `simex` execution engine: one command in its own process
//!   group, with a timeout, capped output and optional line streaming;
//! - [`maps`]: the replicated maps, driven on a thread of their own;
//! - [`faults`]: test-only fault control (a peer cut off by a file);
//! - [`siminst`]: installing a package on many hosts at once: the origin's
//!   dissemination in an installation group, each target's staged install;
//! - [`jobs`]: job ids, the bounded on-disk store of recent job outcomes and
//!   the audit log.

pub mod config;
pub mod exec;
pub mod faults;
pub mod gc;
pub mod group;
pub mod jobs;
pub mod listener;
pub mod maps;
pub mod server;
pub mod siminst;
pub mod status;
pub mod wire;
/// The cluster key file, shared with the monitor: see [`flotilla_client::key`].
pub use flotilla_client::key;

pub use config::{Config, ConfigError, LogLevel};
pub use exec::{ExecOptions, ExecOutcome, ExecStatus};
pub use jobs::{AuditLog, JobId, JobRecord, JobStore};
pub use key::ClusterKey;
