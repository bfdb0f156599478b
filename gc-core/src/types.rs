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

/// A 64-bit digest, used to compare payloads in traces without keeping
/// them. Not a cryptographic hash: the wire is authenticated by the
/// runtime's AEAD, this only tells the checker whether bytes changed.
///
/// Four independent multiply-fold lanes over 8-byte words: the runtime
/// traces every message it sends and delivers, and byte-at-a-time FNV-1a
/// (one dependent multiply per byte, under 1 GB/s) was a fifth of a
/// receiver's CPU when a 100 MiB package went through the group.
pub fn digest(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut lanes: [u64; 4] = [
        0xcbf2_9ce4_8422_2325,
        0x8422_2325_cbf2_9ce4,
        0x2545_f491_4f6c_dd1d,
        0x6a09_e667_f3bc_c908,
    ];
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            // The full 128-bit product, folded: a changed bit anywhere in
            // the word changes bits above and below it.
            let m = u128::from(*lane ^ u64::from_le_bytes(w)) * u128::from(K);
            *lane = (m as u64) ^ ((m >> 64) as u64) ^ lane.rotate_left(23);
        }
    }
    let mut h =
        lanes[0] ^ lanes[1].rotate_left(16) ^ lanes[2].rotate_left(32) ^ lanes[3].rotate_left(48);
    for &b in blocks.remainder() {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h ^= bytes.len() as u64;
    // The murmur3 finalizer: every input bit reaches every output bit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod digest_tests {
    use super::digest;

    #[test]
    fn every_bit_and_length_changes_the_digest() {
        let base: Vec<u8> = (0..100u8).collect();
        let d = digest(&base);
        let mut seen = std::collections::BTreeSet::from([d]);
        for i in 0..base.len() * 8 {
            let mut flipped = base.clone();
            flipped[i / 8] ^= 1 << (i % 8);
            assert!(seen.insert(digest(&flipped)), "bit {i}");
        }
        // Zero bytes appended, in the words and in the tail.
        for n in 1..70 {
            let longer = [&base[..], &vec![0u8; n][..]].concat();
            assert!(seen.insert(digest(&longer)), "{n} zeros");
        }
        assert_ne!(digest(b""), digest(&[0]));
    }
}
