//! The documented bounds on maps, keys, values and updates, and the checks
//! that enforce them.
//!
//! | what | bound | enforced by |
//! |---|---|---|
//! | map name | 1 to [`MAX_MAP_NAME`] bytes of `a-z A-Z 0-9 . _ -`, not `.` or `..` | [`validate_map_name`] everywhere |
//! | key | 1 to [`MAX_KEY`] bytes, no control characters | [`validate_key`], a rejection in the state machine |
//! | value | at most [`MAX_VALUE`] bytes (64 KiB) | [`validate_value`], a rejection in the state machine |
//! | entries per map | at most [`MAX_ENTRIES`] | the state machine ([`crate::Rejection::MapFull`]) |
//! | bytes per map | at most [`MAX_MAP_BYTES`] of keys and values | the state machine ([`crate::Rejection::MapTooLarge`]) |
//! | operations per batch | at most [`MAX_BATCH_OPS`], no batch inside a batch | [`crate::Update::validate`] |
//! | one update | at most [`MAX_UPDATE_BYTES`] of keys and values | [`crate::Update::validate`] |
//! | live maps | at most [`MAX_MAPS`] | the primary's [`crate::Sequencer`] (admission) |
//! | map names ever used | at most [`MAX_MAP_NAMES`] live or dropped | the primary's [`crate::Sequencer`] (admission) |
//! | recent update ids remembered (with their update's digest, to refuse a reused id) | the last [`DEDUP_WINDOW`] versions of each map | the state machine |
//!
//! Bounds that concern one map are decided by the state machine from that
//! map's own history, so every replica decides them alike. The two bounds
//! that count maps are admission checks at the primary server instead:
//! replicas that catch up map by map may apply updates of *different* maps
//! in different relative orders, so a rule that looked across maps would let
//! them disagree.

use serde::{Deserialize, Serialize};

/// Longest map name, in bytes.
pub const MAX_MAP_NAME: usize = 64;
/// Longest key, in bytes.
pub const MAX_KEY: usize = 256;
/// Largest value, in bytes (64 KiB).
pub const MAX_VALUE: usize = 64 * 1024;
/// Most entries in one map.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Most bytes of keys and values in one map (128 MiB): what every replica
/// holds in memory, renders, and sends in a snapshot. An update that would
/// grow a map past it is rejected (the version still advances); one that
/// shrinks or keeps its size is not.
pub const MAX_MAP_BYTES: usize = 128 << 20;
/// Most live (created and not dropped) maps.
pub const MAX_MAPS: usize = 256;
/// Most map names remembered, live or dropped. A dropped map keeps its name
/// and version so that its versions never go back if it is created again.
pub const MAX_MAP_NAMES: usize = 1024;
/// Most operations in one batch.
pub const MAX_BATCH_OPS: usize = 100_000;
/// Largest update, counted as the bytes of its keys and values plus
/// [`OP_OVERHEAD`] per operation (an upper bound on its encoded size). 8 MiB
/// leaves room under gc-core's default 16 MiB message limit.
pub const MAX_UPDATE_BYTES: usize = 8 << 20;
/// Bytes counted per operation on top of its keys and values.
pub const OP_OVERHEAD: usize = 16;
/// A map remembers the ids (and outcomes) of the updates applied at its last
/// `DEDUP_WINDOW` versions; a retransmission inside that window gets its
/// first outcome back instead of being applied again.
pub const DEDUP_WINDOW: u64 = 16_384;

/// A value breaks one of the bounds above.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum BoundError {
    /// The map name is empty or longer than [`MAX_MAP_NAME`] bytes.
    #[error("map name of {len} bytes: a map name has 1 to {MAX_MAP_NAME} bytes")]
    MapNameLength {
        /// Its length in bytes.
        len: usize,
    },
    /// The map name has a character outside `a-z A-Z 0-9 . _ -`.
    #[error(
        "map name {name:?} has {ch:?} at byte {at}: use only letters, digits, '.', '_' and '-'"
    )]
    MapNameChar {
        /// The name.
        name: String,
        /// The first character refused.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// The map name is `.` or `..`, which would be confusing as file names.
    #[error("map name {name:?} is reserved: choose a name that is not '.' or '..'")]
    MapNameReserved {
        /// The name.
        name: String,
    },
    /// A key is empty.
    #[error("empty key: a key has 1 to {MAX_KEY} bytes")]
    KeyEmpty,
    /// A key is longer than [`MAX_KEY`] bytes.
    #[error("key {start:?}... is {len} bytes, over the limit of {MAX_KEY} bytes")]
    KeyTooLong {
        /// Its first characters.
        start: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A key contains a control character (newline, tab, NUL and the like),
    /// which would break rendered files and terminal output.
    #[error("key {key:?} contains the control character {ch:?}: keys may not contain control characters")]
    KeyControl {
        /// The key.
        key: String,
        /// The first control character.
        ch: char,
    },
    /// A value is larger than [`MAX_VALUE`] bytes.
    #[error("the value of key {key:?} is {len} bytes, over the limit of {MAX_VALUE} bytes")]
    ValueTooLarge {
        /// Its key.
        key: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A batch has more than [`MAX_BATCH_OPS`] operations.
    #[error("a batch of {len} operations is over the limit of {MAX_BATCH_OPS}: split it into several batches")]
    BatchTooLong {
        /// Its number of operations.
        len: usize,
    },
    /// A batch contains a batch.
    #[error("operation {index} of the batch is itself a batch: batches do not nest")]
    NestedBatch {
        /// Its position in the batch.
        index: usize,
    },
    /// The update is larger than [`MAX_UPDATE_BYTES`].
    #[error("the update is {len} bytes, over the limit of {MAX_UPDATE_BYTES}: split it into several batches")]
    UpdateTooLarge {
        /// Its size as counted by [`MAX_UPDATE_BYTES`].
        len: usize,
    },
}

/// Checks a map name: 1 to [`MAX_MAP_NAME`] bytes of `a-z A-Z 0-9 . _ -`,
/// and not `.` or `..`.
pub fn validate_map_name(name: &str) -> Result<(), BoundError> {
    if name.is_empty() || name.len() > MAX_MAP_NAME {
        return Err(BoundError::MapNameLength { len: name.len() });
    }
    if let Some((at, ch)) = name
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(BoundError::MapNameChar {
            name: name.to_owned(),
            ch,
            at,
        });
    }
    if name == "." || name == ".." {
        return Err(BoundError::MapNameReserved {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Checks a key: 1 to [`MAX_KEY`] bytes, no control characters.
pub fn validate_key(key: &str) -> Result<(), BoundError> {
    if key.is_empty() {
        return Err(BoundError::KeyEmpty);
    }
    if key.len() > MAX_KEY {
        return Err(BoundError::KeyTooLong {
            start: key.chars().take(32).collect(),
            len: key.len(),
        });
    }
    if let Some(ch) = key.chars().find(|c| c.is_control()) {
        return Err(BoundError::KeyControl {
            key: key.to_owned(),
            ch,
        });
    }
    Ok(())
}

/// Checks the value of `key`: at most [`MAX_VALUE`] bytes.
pub fn validate_value(key: &str, value: &str) -> Result<(), BoundError> {
    if value.len() > MAX_VALUE {
        return Err(BoundError::ValueTooLarge {
            key: key.to_owned(),
            len: value.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_names() {
        assert!(validate_map_name("hosts").is_ok());
        assert!(validate_map_name("a.B_c-9").is_ok());
        assert!(validate_map_name(&"x".repeat(64)).is_ok());
        assert_eq!(
            validate_map_name(&"x".repeat(65)),
            Err(BoundError::MapNameLength { len: 65 })
        );
        assert_eq!(
            validate_map_name(""),
            Err(BoundError::MapNameLength { len: 0 })
        );
        let e = validate_map_name("my map").unwrap_err();
        assert_eq!(
            e.to_string(),
            "map name \"my map\" has ' ' at byte 2: use only letters, digits, '.', '_' and '-'"
        );
        assert!(validate_map_name("../x").is_err());
        assert!(matches!(
            validate_map_name(".."),
            Err(BoundError::MapNameReserved { .. })
        ));
    }

    #[test]
    fn keys_and_values() {
        assert!(validate_key("web01.example.org").is_ok());
        assert!(validate_key(&"k".repeat(256)).is_ok());
        assert!(matches!(
            validate_key(&"k".repeat(257)),
            Err(BoundError::KeyTooLong { len: 257, .. })
        ));
        assert_eq!(validate_key(""), Err(BoundError::KeyEmpty));
        assert!(matches!(
            validate_key("a\nb"),
            Err(BoundError::KeyControl { ch: '\n', .. })
        ));
        assert!(validate_value("k", &"v".repeat(MAX_VALUE)).is_ok());
        let e = validate_value("k", &"v".repeat(MAX_VALUE + 1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the value of key \"k\" is 65537 bytes, over the limit of 65536 bytes"
        );
    }
}
