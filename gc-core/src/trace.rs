//! What a process did, as the checker reads it.
//!
//! A node records, in order, the configurations it installed, the messages it
//! sent (at the moment the message was given a place in a view's stream) and
//! the messages it delivered (at the node level, before any group filtering,
//! so that every member of a configuration is expected to deliver the same
//! messages whatever groups it joined). The simulator gathers one
//! [`ProcessTrace`] per incarnation; a daemon can write the same records to an
//! event log so the checker runs on real runs too.

use crate::types::{ConfId, Level, MsgId, Pid, Time, ViewId};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Identifies one view of a named group: the node view it was formed in and
/// the number of group membership changes since that node view began.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupViewId {
    /// The node-level regular view.
    pub view: ViewId,
    /// Joins and leaves of this group delivered since that view began.
    pub change: u32,
}

/// One thing a process did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceEvent {
    /// The process installed a configuration with these members (sorted).
    /// `primary` is the primary component's sequence number when a regular
    /// configuration is primary, and `None` otherwise (always `None` for a
    /// transitional configuration).
    Install {
        /// The configuration.
        conf: ConfId,
        /// Its members, sorted.
        members: Vec<Pid>,
        /// The primary number, when this regular view is primary.
        primary: Option<u64>,
    },
    /// The process sent a message: it was given identity `msg` in view
    /// `msg.view`.
    Send {
        /// The message.
        msg: MsgId,
        /// Its service level.
        level: Level,
        /// The group it was sent to ("" for the protocol's own messages).
        group: String,
        /// [`crate::digest`] of the payload.
        digest: u64,
    },
    /// The process delivered a message in configuration `conf`.
    Deliver {
        /// The message.
        msg: MsgId,
        /// Its service level as the receiver saw it.
        level: Level,
        /// Its group as the receiver saw it.
        group: String,
        /// [`crate::digest`] of the payload as delivered.
        digest: u64,
        /// The configuration it was delivered in.
        conf: ConfId,
    },
    /// The process installed a view of a named group it belongs to.
    GroupView {
        /// The group.
        group: String,
        /// The group view.
        id: GroupViewId,
        /// Its members, sorted.
        members: Vec<Pid>,
    },
}

/// An event and when it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// When the process did it.
    pub time: Time,
    /// What it did.
    pub event: TraceEvent,
}

/// How a process's trace ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessEnd {
    /// Still running when the run ended.
    Running,
    /// Crashed (its later incarnation, if any, is another process).
    Crashed,
    /// Left the cluster cleanly.
    Left,
}

/// Everything one incarnation did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessTrace {
    /// The process.
    pub pid: Pid,
    /// Its events, in the order it did them.
    pub records: Vec<TraceRecord>,
    /// How it ended.
    pub end: ProcessEnd,
    /// Multicasts the application asked for that had not been sent (given a
    /// place in a view) when the run ended.
    pub unsent_at_end: u64,
}

/// The liveness phase of a run: from `healed_at` on, no faults were injected
/// and every running process could reach every other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivenessPhase {
    /// When the faults stopped and the network healed.
    pub healed_at: Time,
    /// The bound the run promises: by `healed_at + bound` the running
    /// processes share one regular view and have delivered every message
    /// sent in it by its members.
    pub bound: Duration,
}

/// A whole run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// One entry per incarnation.
    pub processes: Vec<ProcessTrace>,
    /// Present when the run ended with a liveness phase.
    pub liveness: Option<LivenessPhase>,
}
