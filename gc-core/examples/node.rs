//! One gc-core node over UDP, for tests, benchmarks and trying things out.
//!
//! ```text
//! cargo run -p gc-core --example node -- --keygen cluster.key
//! cargo run -p gc-core --example node -- --id 1 --bind 127.0.0.1:7001 \
//!     --seed 127.0.0.1:7002 --key cluster.key --bootstrap 1,2 --groups chat
//! ```
//!
//! It prints JSON lines on stdout (`started`, `view`, `group_view`,
//! `deliver`, `sent`, `counters`, `left`, `error`, ...) and reads commands
//! on stdin (`send agreed chat hello`, `leave`, ...; `--help` lists them).
//! The end of stdin makes it leave the cluster cleanly, so a node whose
//! parent died does not linger.

mod common;

fn main() -> std::process::ExitCode {
    common::node::main(std::env::args().skip(1).collect())
}
