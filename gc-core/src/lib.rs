//! Flotilla's group-communication core.
//!
//! A sans-I/O protocol state machine giving extended virtual synchrony
//! (regular and transitional configurations), four service levels (FIFO,
//! causal, agreed, safe), named lightweight groups and a primary component,
//! plus the deterministic simulator and the checker that prove it.

pub mod check;
pub mod trace;
// `Time::add(Duration)` is not `Add<Time>`; the name stays until the owner
// of the shared vocabulary decides otherwise.
#[allow(clippy::should_implement_trait)]
pub mod types;

pub use trace::{
    GroupViewId, LivenessPhase, ProcessEnd, ProcessTrace, Trace, TraceEvent, TraceRecord,
};
pub use types::{digest, ConfId, Level, MsgId, NodeId, Pid, Time, ViewId};
