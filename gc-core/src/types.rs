//! Identifiers and plain values shared by the protocol, the wire format, the
//! trace and the checker.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A host's configured identity, stable across restarts.
pub type NodeId = u32;

/// One incarnation of a node: the unit of membership.
///
/// A node that crashes and restarts comes back with a higher incarnation and
/// is a different process for the protocol: nothing its earlier incarnation
/// sent is ever mixed with what the new one sends.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Pid {
    /// The host.
    pub node: NodeId,
    /// Increases at every start of the node (persisted by the driver).
    pub incarnation: u64,
}

impl Pid {
    /// A process id.
    pub const fn new(node: NodeId, incarnation: u64) -> Self {
        Pid { node, incarnation }
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}.{}", self.node, self.incarnation)
    }
}

/// Identifies a regular configuration (view).
///
/// Unique across components that form views concurrently: the counter is
/// larger than any counter its coordinator had seen, and the coordinator's
/// process id breaks ties. Ordered by counter first.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct ViewId {
    /// Grows with every view a node takes part in.
    pub counter: u64,
    /// The process that formed the view.
    pub coordinator: Pid,
}

impl fmt::Display for ViewId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}@{}", self.counter, self.coordinator)
    }
}

/// A configuration in the sense of extended virtual synchrony.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConfId {
    /// A regular configuration: new messages are sent and delivered in it.
    Regular(ViewId),
    /// The transitional configuration between regular view `from` and the
    /// next regular view `to`: only the rest of `from`'s messages are
    /// delivered in it.
    Transitional {
        /// The regular view whose messages are delivered in it.
        from: ViewId,
        /// The regular view installed right after it.
        to: ViewId,
    },
}

impl ConfId {
    /// The regular view whose messages may be delivered in this configuration.
    pub fn regular(&self) -> ViewId {
        match *self {
            ConfId::Regular(v) => v,
            ConfId::Transitional { from, .. } => from,
        }
    }
}

impl fmt::Display for ConfId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfId::Regular(v) => write!(f, "{v}"),
            ConfId::Transitional { from, to } => write!(f, "trans({from}->{to})"),
        }
    }
}

/// The service level of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    /// Reliable, in sender order with respect to the sender's earlier FIFO
    /// messages. Never waits for ordering information.
    Fifo,
    /// Reliable, in causal order with respect to every causal, agreed and
    /// safe message.
    Causal,
    /// Causal, and in one total order shared by all receivers of agreed and
    /// safe messages.
    Agreed,
    /// Agreed, and delivered in a regular configuration only once every
    /// member of that configuration has the message.
    Safe,
}

impl Level {
    /// Causal, agreed and safe messages are ordered causally with each other.
    pub fn is_causal_class(self) -> bool {
        self >= Level::Causal
    }

    /// Agreed and safe messages share one total order.
    pub fn is_total_class(self) -> bool {
        self >= Level::Agreed
    }

    /// All levels, weakest first.
    pub const ALL: [Level; 4] = [Level::Fifo, Level::Causal, Level::Agreed, Level::Safe];
}

/// A message's identity: its sender, the view it was sent in and its first
/// sequence number in the sender's stream for that view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MsgId {
    /// The sending process.
    pub sender: Pid,
    /// The regular view the message was sent in.
    pub view: ViewId,
    /// Sequence number of the message's first frame in the sender's stream.
    pub seq: u64,
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.sender, self.view, self.seq)
    }
}

/// A point in time, as microseconds since an epoch the driver chooses.
///
/// The protocol never reads a clock: the driver passes the time in, which is
/// what lets the simulator run on a virtual clock.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Time(pub u64);

impl Time {
    /// The epoch.
    pub const ZERO: Time = Time(0);
    /// A time later than any other.
    pub const NEVER: Time = Time(u64::MAX);

    /// Microseconds since the epoch.
    pub fn as_micros(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(d.as_micros().min(u64::MAX as u128) as u64),
        )
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// A 64-bit FNV-1a digest, used to compare payloads in traces without
/// keeping them. Not a cryptographic hash: the wire is authenticated by the
/// runtime's AEAD, this only tells the checker whether bytes changed.
pub fn digest(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
