//! Updates, their identities, their place in a map's order, and their
//! outcomes: the values that travel between servers and into the log.

use crate::bounds::{
    validate_key, validate_map_name, validate_value, BoundError, MAX_BATCH_OPS, MAX_UPDATE_BYTES,
    OP_OVERHEAD,
};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Identifies one update for its whole life, chosen by the client that
/// submits it: a random 128-bit number, or an origin and a counter
/// ([`UpdateId::from_origin`]). A client that retransmits an update after a
/// timeout or a view change sends the same id, which is how a second
/// application is recognised and answered with the first outcome.
///
/// On the wire and on disk (postcard) it is a plain `u128`; in a
/// human-readable format (the monitor's `--json`) it is the same 32
/// hexadecimal digits that [`fmt::Display`] prints and `--id` takes, because
/// JSON numbers cannot hold 128 bits (serde_json refuses them, and readers
/// would round them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UpdateId(pub u128);

impl Serialize for UpdateId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u128(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for UpdateId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            u128::from_str_radix(&text, 16)
                .map(UpdateId)
                .map_err(|_| serde::de::Error::custom("an update id is 32 hexadecimal digits"))
        } else {
            u128::deserialize(d).map(UpdateId)
        }
    }
}

impl UpdateId {
    /// An id from a 128-bit number (for example a random one).
    pub const fn new(id: u128) -> Self {
        UpdateId(id)
    }

    /// An id from an origin (a client, or a server and its incarnation) and
    /// a counter that the origin never reuses.
    pub const fn from_origin(origin: u64, counter: u64) -> Self {
        UpdateId(((origin as u128) << 64) | counter as u128)
    }

    /// The high 64 bits: the origin, for ids made by [`UpdateId::from_origin`].
    pub const fn origin(self) -> u64 {
        (self.0 >> 64) as u64
    }

    /// The low 64 bits: the counter, for ids made by [`UpdateId::from_origin`].
    pub const fn counter(self) -> u64 {
        self.0 as u64
    }
}

impl fmt::Display for UpdateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// What an update does to its map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Creates the map, empty. Rejected if it exists.
    CreateMap,
    /// Drops the map and all its entries. Rejected if it does not exist. The
    /// map's version keeps counting if it is created again.
    DropMap,
    /// Sets `key` to `value`.
    Set {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Deletes `key`; deleting a missing key succeeds and changes nothing.
    Del {
        /// The key.
        key: String,
    },
    /// Several operations on the same map applied atomically: all of them,
    /// or none when one is rejected. Later operations see the effects of
    /// earlier ones (a key set earlier in the batch has the batch's version).
    /// A batch may hold `CreateMap` and `DropMap` (`[DropMap, CreateMap,
    /// Set...]` replaces a map's contents atomically) but not a batch.
    Batch(Vec<Op>),
    /// Sets `key` to `value` only if the key was last written at map version
    /// `expected_version`, or, with `None`, only if the key is absent.
    CompareAndSet {
        /// The key.
        key: String,
        /// The version the key must have, or `None` for "must be absent".
        expected_version: Option<u64>,
        /// The new value.
        value: String,
    },
}

impl Op {
    /// Whether the operation creates its map (is or contains `CreateMap`).
    pub fn creates_map(&self) -> bool {
        match self {
            Op::CreateMap => true,
            Op::Batch(ops) => ops.iter().any(Op::creates_map),
            _ => false,
        }
    }

    /// The bytes counted against [`MAX_UPDATE_BYTES`].
    pub fn counted_bytes(&self) -> usize {
        OP_OVERHEAD
            + match self {
                Op::CreateMap | Op::DropMap => 0,
                Op::Set { key, value } | Op::CompareAndSet { key, value, .. } => {
                    key.len() + value.len()
                }
                Op::Del { key } => key.len(),
                Op::Batch(ops) => ops.iter().map(Op::counted_bytes).sum(),
            }
    }

    /// Checks the keys and values of the operation against their bounds.
    pub fn validate(&self) -> Result<(), BoundError> {
        self.validate_at(0)
    }

    fn validate_at(&self, depth: usize) -> Result<(), BoundError> {
        match self {
            Op::CreateMap | Op::DropMap => Ok(()),
            Op::Set { key, value } | Op::CompareAndSet { key, value, .. } => {
                validate_key(key)?;
                validate_value(key, value)
            }
            Op::Del { key } => validate_key(key),
            Op::Batch(ops) => {
                if ops.len() > MAX_BATCH_OPS {
                    return Err(BoundError::BatchTooLong { len: ops.len() });
                }
                for (index, op) in ops.iter().enumerate() {
                    if depth > 0 || matches!(op, Op::Batch(_)) {
                        return Err(BoundError::NestedBatch { index });
                    }
                    op.validate_at(depth + 1)?;
                }
                Ok(())
            }
        }
    }
}

/// An update as a client submits it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// Its identity.
    pub id: UpdateId,
    /// The map it changes.
    pub map: String,
    /// What it does.
    pub op: Op,
}

impl Update {
    /// Checks the map name, keys, values and sizes against the bounds of
    /// [`crate::bounds`]. Servers check before forwarding and the primary
    /// before ordering; the state machine checks again and rejects.
    pub fn validate(&self) -> Result<(), BoundError> {
        validate_map_name(&self.map)?;
        let len = self.op.counted_bytes();
        if len > MAX_UPDATE_BYTES {
            return Err(BoundError::UpdateTooLarge { len });
        }
        self.op.validate()
    }
}

impl Update {
    /// A digest of what the update does (its map and operation, not its
    /// id): a server compares it with the one remembered next to an applied
    /// id, to tell a retry of that update from a different update that
    /// reuses its id. Computed by each server from the updates it applied,
    /// never sent to peers, but kept in the server's own snapshot file: so it
    /// is FNV-1a over the postcard encoding of the map and operation, the
    /// same encoding the log uses, which a new build reads as the old one
    /// wrote it. Not cryptographic: the id is the client's own, and this
    /// only guards it against a mistake.
    pub fn digest(&self) -> u64 {
        // Encoding strings, vectors and enums into memory cannot fail; on
        // an error the bytes written so far still digest alike everywhere.
        match postcard::to_extend(&(&self.map, &self.op), Fnv::new()) {
            Ok(h) => h.0,
            Err(_) => Fnv::new().0,
        }
    }
}

/// FNV-1a, 64 bits, fed bytes as postcard writes them.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Extend<u8> for Fnv {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
        for b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// An update with the map version the primary server assigned it: the unit
/// that is multicast, applied, logged and sent in catch-up.
///
/// The map is the update's own `map`, so that a version can never be paired
/// with a different map name than the update's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ordered {
    /// The map version this update takes: one more than the version before
    /// it. Every ordered update takes a version, whatever its outcome.
    pub version: u64,
    /// The primary number (gc-core's `ViewInfo::primary`) of the primary
    /// component whose primary server ordered it. A later primary component
    /// knows every update an earlier one made definitive, so when two
    /// replicas disagree on what follows a version, the later epoch wins.
    pub epoch: u64,
    /// The map's chain digest at `version - 1` (see [`chain_next`]): a
    /// replica applies the update only on top of that exact history, so an
    /// update ordered after a history this replica does not have is never
    /// applied to the wrong one.
    pub prev: u64,
    /// The update.
    pub update: Update,
}

/// The chain digest of a map after the update `id` took `version` in
/// `epoch`, given the digest before it. Two replicas with the same version
/// and chain applied the same updates in the same order, so they hold the
/// same content. Not cryptographic: peers are authenticated by gc-core; the
/// chain catches divergent histories, not forgeries.
pub fn chain_next(prev: u64, version: u64, epoch: u64, id: UpdateId) -> u64 {
    let mut h = prev ^ 0x6a09_e667_f3bc_c908;
    for word in [version, epoch, id.origin(), id.counter()] {
        h = mix(h ^ word);
    }
    h
}

/// SplitMix64's finaliser: every input bit affects every output bit.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Ordered {
    /// The update ordered at `version` in `epoch` after the history whose
    /// chain digest is `prev`.
    pub fn new(version: u64, epoch: u64, prev: u64, update: Update) -> Self {
        Ordered {
            version,
            epoch,
            prev,
            update,
        }
    }

    /// The map's chain digest once this update is applied.
    pub fn chain(&self) -> u64 {
        chain_next(self.prev, self.version, self.epoch, self.update.id)
    }
}

impl Ordered {
    /// The map the update changes.
    pub fn map(&self) -> &str {
        &self.update.map
    }
}

/// What became of an update. Deterministic: every replica computes the same
/// outcome for the same update at the same map version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The update took effect at map version `version`.
    Applied {
        /// The map version it took.
        version: u64,
    },
    /// The update was rejected at map version `version` and changed no
    /// entry; the map's version still advanced to `version`.
    Rejected {
        /// The map version it took.
        version: u64,
        /// Why.
        reason: Rejection,
    },
}

impl Outcome {
    /// The map version the update took.
    pub fn version(&self) -> u64 {
        match self {
            Outcome::Applied { version } | Outcome::Rejected { version, .. } => *version,
        }
    }

    /// Whether the update took effect.
    pub fn is_applied(&self) -> bool {
        matches!(self, Outcome::Applied { .. })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Applied { version } => write!(f, "applied at version {version}"),
            Outcome::Rejected { version, reason } => {
                write!(f, "rejected at version {version}: {reason}")
            }
        }
    }
}

/// Why the state machine rejected an update. Part of the replicated state:
/// every replica rejects the same update for the same reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The update changes a map that does not exist (never created, or
    /// dropped), or drops one.
    #[error("the map does not exist: create it first")]
    NoSuchMap,
    /// `CreateMap` of a map that exists.
    #[error("the map already exists")]
    MapExists,
    /// The update would add an entry to a map that has
    /// [`crate::bounds::MAX_ENTRIES`] entries.
    #[error(
        "the map is full ({} entries): delete entries or use another map",
        crate::bounds::MAX_ENTRIES
    )]
    MapFull,
    /// A compare-and-set found the key at another version than expected.
    #[error("key {key:?} is {}, expected {}", show_version(*actual), show_version(*expected))]
    VersionMismatch {
        /// The key.
        key: String,
        /// The version the update expected (`None`: absent).
        expected: Option<u64>,
        /// The version found (`None`: absent).
        actual: Option<u64>,
    },
    /// An operation of a batch was rejected, so none of the batch applied.
    #[error("operation {index} of the batch: {reason} (nothing in the batch applied)")]
    InBatch {
        /// Its position in the batch.
        index: usize,
        /// Why it was rejected.
        reason: Box<Rejection>,
    },
    /// The update breaks a bound (a primary server checks this before
    /// ordering, so this means a server that forwarded without checking).
    #[error("{0}")]
    Invalid(BoundError),
    /// The update would grow the map past [`crate::bounds::MAX_MAP_BYTES`]
    /// bytes of keys and values.
    #[error(
        "the map would hold {bytes} bytes of keys and values, over the limit of {}: delete entries or use another map",
        crate::bounds::MAX_MAP_BYTES
    )]
    // Last, so that the log's encoding of the variants before it stays.
    MapTooLarge {
        /// The bytes it would hold.
        bytes: usize,
    },
}

fn show_version(v: Option<u64>) -> String {
    match v {
        Some(v) => format!("at version {v}"),
        None => "absent".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let id = UpdateId::from_origin(7, 42);
        assert_eq!((id.origin(), id.counter()), (7, 42));
        assert_eq!(id.to_string(), format!("{:016x}{:016x}", 7, 42));
    }

    #[test]
    fn ids_keep_their_wire_form() {
        // The wire and the log still carry a plain u128: what older
        // daemons wrote reads back the same.
        let id = UpdateId(u128::MAX - 5);
        let bytes = postcard::to_stdvec(&id).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&(u128::MAX - 5)).unwrap());
        assert_eq!(postcard::from_bytes::<UpdateId>(&bytes).unwrap(), id);
    }

    #[test]
    fn the_digest_of_an_update_stays() {
        // Kept in snapshot files: a new build must compute what an old one
        // wrote.
        let u = Update {
            id: UpdateId(1),
            map: "hosts".into(),
            op: Op::Set {
                key: "idk".into(),
                value: "v1".into(),
            },
        };
        assert_eq!(u.digest(), 0x7824_de4a_7b15_4e49);
        assert_eq!(
            Update {
                id: UpdateId(2),
                ..u.clone()
            }
            .digest(),
            u.digest()
        );
        let other = Update {
            op: Op::Set {
                key: "idk".into(),
                value: "DIFFERENT".into(),
            },
            ..u.clone()
        };
        assert_ne!(other.digest(), u.digest());
    }

    #[test]
    fn validation() {
        let u = |op| Update {
            id: UpdateId(1),
            map: "hosts".into(),
            op,
        };
        assert!(
            u(Op::Batch(vec![Op::CreateMap, Op::Del { key: "a".into() }]))
                .validate()
                .is_ok()
        );
        assert_eq!(
            u(Op::Batch(vec![Op::CreateMap, Op::Batch(vec![])])).validate(),
            Err(BoundError::NestedBatch { index: 1 })
        );
        let big = "v".repeat(crate::bounds::MAX_VALUE);
        let ops = (0..200)
            .map(|i| Op::Set {
                key: format!("k{i}"),
                value: big.clone(),
            })
            .collect();
        assert!(matches!(
            u(Op::Batch(ops)).validate(),
            Err(BoundError::UpdateTooLarge { .. })
        ));
        let e = u(Op::Set {
            key: "a b\n".into(),
            value: String::new(),
        })
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("control character"), "{e}");
    }

    #[test]
    fn rejection_messages() {
        let r = Rejection::InBatch {
            index: 3,
            reason: Box::new(Rejection::VersionMismatch {
                key: "web1".into(),
                expected: None,
                actual: Some(12),
            }),
        };
        assert_eq!(
            r.to_string(),
            "operation 3 of the batch: key \"web1\" is at version 12, expected absent (nothing in the batch applied)"
        );
    }
}
