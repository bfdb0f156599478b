//! Flotilla's group-communication core.
//!
//! A sans-I/O protocol state machine giving extended virtual synchrony
//! (regular and transitional configurations), four service levels (FIFO,
//! causal, agreed, safe), named lightweight groups and a primary component,
//! plus the deterministic simulator and the checker that prove it.

pub mod seal;
pub mod trace;
pub mod types;

pub use trace::{GroupViewId, LivenessPhase, ProcessEnd, ProcessTrace, Trace, TraceEvent, TraceRecord};
pub use types::{digest, ConfId, Level, MsgId, NodeId, Pid, Time, ViewId};
