//! Flotilla's group-communication core.
//!
//! A sans-I/O protocol state machine giving extended virtual synchrony
//! (regular and transitional configurations), four service levels (FIFO,
//! causal, agreed, safe), named lightweight groups and a primary component,
//! plus the deterministic simulator and the checker that prove it.
//!
//! Start with [`Node`]: its documentation states the driver contract.
//! `PROTOCOL.md` beside this crate describes the protocol and argues each
//! guarantee.

pub mod check;
pub mod eventlog;
mod node;
pub mod primary;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod seal;
// Two lints of clippy 1.95 that sim.rs predates; its owner will fix them
// there (the runtime's branch does not edit the simulator).
#[allow(clippy::unusual_byte_groupings, clippy::collapsible_match)]
pub mod sim;
mod streams;
pub mod trace;
pub mod types;
pub mod wire;

pub use node::{Bug, Config, Counters, Delivery, Event, Node, SendError, Transmit, ViewInfo};
pub use primary::{PrimaryRecord, PrimaryState};
pub use trace::{
    GroupViewId, LivenessPhase, ProcessEnd, ProcessTrace, Trace, TraceEvent, TraceRecord,
};
pub use types::{digest, ConfId, Level, MsgId, NodeId, Pid, Time, ViewId};
pub use wire::{DecodeError, WIRE_VERSION};
