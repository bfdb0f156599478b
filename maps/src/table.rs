//! The table state machine: every map's entries, version and recent update
//! ids, changed only by applying ordered updates in version order (or by
//! installing a snapshot of a map from a peer).

use crate::bounds::{
    validate_key, validate_map_name, validate_value, BoundError, DEDUP_WINDOW, MAX_ENTRIES,
    MAX_MAP_BYTES,
};
use crate::update::{Op, Ordered, Outcome, Rejection, UpdateId};

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// One key's value and the map version at which it was last written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The value.
    pub value: String,
    /// The map version of the update that last wrote it.
    pub version: u64,
}

/// An ordered update as it was applied: what the log records and what a
/// server answers the client with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedUpdate {
    /// The update and its version.
    pub ordered: Ordered,
    /// Its outcome; for a duplicate, the outcome of its first application.
    pub outcome: Outcome,
    /// The update's id had been applied before (inside the dedup window), so
    /// this copy changed nothing but the map's version.
    pub duplicate: bool,
}

/// What a replica remembers of an update id it applied, compared with an
/// update that carries the same id ([`Tables::recall`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recall<'a> {
    /// The same update (a retry): its first outcome.
    Same(&'a Outcome),
    /// A different update reused the id: the first one's outcome.
    Different(&'a Outcome),
    /// The id came in a peer's snapshot (or a snapshot file written before
    /// digests were kept), without its update's digest.
    Unknown(&'a Outcome),
}

impl<'a> Recall<'a> {
    /// The first outcome of the id.
    pub fn outcome(self) -> &'a Outcome {
        match self {
            Recall::Same(o) | Recall::Different(o) | Recall::Unknown(o) => o,
        }
    }
}

/// The state machine refused to apply an ordered update: the caller broke
/// the contract (versions out of order), or a peer sent something no correct
/// primary orders. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The update names a map no correct primary would order (a bad name).
    #[error("an ordered update names an invalid map: {0}")]
    BadMapName(BoundError),
    /// The update follows a different history of the map than this
    /// replica's (its `prev` chain digest is not the map's): it was ordered
    /// by a primary component that did not know this replica's last
    /// updates, or this replica holds updates that primary never knew.
    /// Catch up from the primary component (a snapshot settles it).
    #[error("map {map:?} version {version} follows another history (chain {got:016x}, here {have:016x}): catch up")]
    Diverged {
        /// The map.
        map: String,
        /// The version offered.
        version: u64,
        /// The chain digest here.
        have: u64,
        /// The chain digest the update follows.
        got: u64,
    },
    /// The update's version is not one more than the map's: apply updates in
    /// version order (a [`crate::Replica`] does).
    #[error("map {map:?} is at version {have}: cannot apply version {got}, only {}", have.saturating_add(1))]
    OutOfOrder {
        /// The map.
        map: String,
        /// Its version.
        have: u64,
        /// The version offered.
        got: u64,
    },
}

/// A map snapshot could not be installed. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    /// The snapshot is of the history this replica already has, at a
    /// version not newer than the map's: installing it would move the map
    /// back.
    #[error("snapshot of map {map:?} at version {got} is not newer than the local version {have}")]
    NotNewer {
        /// The map.
        map: String,
        /// The local version.
        have: u64,
        /// The snapshot's version.
        got: u64,
    },
    /// The snapshot breaks an invariant of a map (unsorted or invalid keys,
    /// an entry newer than the snapshot, too many entries, ...): it is
    /// corrupt or from a buggy peer.
    #[error("snapshot of map {map:?} is invalid: {reason}")]
    Invalid {
        /// The map.
        map: String,
        /// What is wrong.
        reason: String,
    },
}

/// The recent update ids of one map and their first outcomes, oldest first,
/// each with the digest of its update ([`crate::Update::digest`]) where this
/// replica knows it: it applied the update itself, or its own snapshot file
/// kept the digest ([`crate::wal::SnapshotDigests`]). An id that came in a
/// peer's snapshot (catch-up), or in a snapshot file written before digests
/// were kept, has none: [`MapSnapshot`] carries ids and outcomes only, its
/// format unchanged. So replicas at one version may know different digests,
/// and the digest never changes what the state machine does; servers use it
/// to refuse a reused id before ordering ([`Tables::recall`]).
#[derive(Clone, Debug, Default)]
struct Recent {
    order: VecDeque<UpdateId>,
    outcomes: BTreeMap<UpdateId, (Outcome, Option<u64>)>,
}

impl Recent {
    fn get(&self, id: UpdateId) -> Option<&Outcome> {
        self.outcomes.get(&id).map(|(o, _)| o)
    }

    fn recall(&self, id: UpdateId) -> Option<(&Outcome, Option<u64>)> {
        self.outcomes.get(&id).map(|(o, d)| (o, *d))
    }

    fn insert(&mut self, id: UpdateId, outcome: Outcome, digest: Option<u64>) {
        if self.outcomes.insert(id, (outcome, digest)).is_none() {
            self.order.push_back(id);
        }
    }

    /// Forgets the ids applied at versions `DEDUP_WINDOW` or more below
    /// `version`.
    fn expire(&mut self, version: u64) {
        while let Some(id) = self.order.front() {
            match self.outcomes.get(id) {
                Some((o, _)) if o.version().saturating_add(DEDUP_WINDOW) > version => break,
                _ => {
                    if let Some(id) = self.order.pop_front() {
                        self.outcomes.remove(&id);
                    }
                }
            }
        }
    }

    fn digests(&self) -> Vec<(UpdateId, u64)> {
        self.order
            .iter()
            .filter_map(|id| match self.outcomes.get(id) {
                Some((_, Some(d))) => Some((*id, *d)),
                _ => None,
            })
            .collect()
    }

    fn to_vec(&self) -> Vec<(UpdateId, Outcome)> {
        self.order
            .iter()
            .filter_map(|id| self.outcomes.get(id).map(|(o, _)| (*id, o.clone())))
            .collect()
    }
}

/// One map: a stream of versions, live between a `CreateMap` and a
/// `DropMap`. A dropped map keeps its version and recent ids, so its
/// versions never go back and retransmissions are still recognised.
#[derive(Clone, Debug, Default)]
pub struct MapState {
    version: u64,
    /// Chain digest of the updates applied (see [`crate::update::chain_next`]).
    chain: u64,
    /// Epoch of the last update applied (0 for none).
    epoch: u64,
    live: bool,
    entries: BTreeMap<String, Entry>,
    recent: Recent,
    /// Wrapping sum of the entries' hashes (see [`MapState::content_digest`]).
    sum: u64,
    /// Bytes of keys and values.
    bytes: usize,
}

impl MapState {
    /// The map's version: how many ordered updates it has applied.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The chain digest of the map's history up to its version.
    pub fn chain(&self) -> u64 {
        self.chain
    }

    /// The epoch (primary number) of the last update applied.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the map exists (created and not dropped since).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of its keys and values.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// One entry.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// All entries, sorted by key.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, e)| (k.as_str(), e))
    }

    /// The first outcome of update `id`, if it was applied to this map
    /// within the last [`DEDUP_WINDOW`] versions.
    pub fn outcome_of(&self, id: UpdateId) -> Option<&Outcome> {
        self.recent.get(id)
    }

    /// A digest of the map's content (whether it is live, and every key,
    /// value and key version), kept up to date in constant time per change.
    /// Two replicas at the same version must have the same digest; the
    /// checker compares them. Not cryptographic.
    pub fn content_digest(&self) -> u64 {
        self.sum ^ if self.live { 0x9e37_79b9_7f4a_7c15 } else { 0 }
    }

    /// The digests this replica knows of its recent updates, oldest first
    /// (what the snapshot file keeps beside [`MapSnapshot`]).
    pub fn digests(&self) -> Vec<(UpdateId, u64)> {
        self.recent.digests()
    }

    /// A copy of the whole map (entries and recent ids) at its version.
    pub fn snapshot(&self, map: &str) -> MapSnapshot {
        MapSnapshot {
            map: map.to_owned(),
            version: self.version,
            chain: self.chain,
            epoch: self.epoch,
            live: self.live,
            entries: self
                .entries
                .iter()
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect(),
            recent: self.recent.to_vec(),
        }
    }

    fn put(&mut self, key: &str, value: &str, version: u64) {
        match self.entries.get_mut(key) {
            Some(e) => {
                self.sum = self.sum.wrapping_sub(entry_hash(key, e));
                self.bytes = self.bytes - e.value.len() + value.len();
                e.value.clear();
                e.value.push_str(value);
                e.version = version;
                self.sum = self.sum.wrapping_add(entry_hash(key, e));
            }
            None => {
                let e = Entry {
                    value: value.to_owned(),
                    version,
                };
                self.sum = self.sum.wrapping_add(entry_hash(key, &e));
                self.bytes += key.len() + value.len();
                self.entries.insert(key.to_owned(), e);
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.sum = self.sum.wrapping_sub(entry_hash(key, &e));
            self.bytes -= key.len() + e.value.len();
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.sum = 0;
        self.bytes = 0;
    }
}

/// FNV-1a over the key, the value and the key's version, with separators.
fn entry_hash(key: &str, e: &Entry) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(key.as_bytes());
    eat(&[0xff]);
    eat(e.value.as_bytes());
    eat(&[0xff]);
    eat(&e.version.to_le_bytes());
    h
}

/// A whole map at one version: what catch-up sends when the log no longer
/// reaches back far enough, and what the log records when one is installed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapSnapshot {
    /// The map.
    pub map: String,
    /// Its version.
    pub version: u64,
    /// Its chain digest at that version.
    pub chain: u64,
    /// The epoch of the update at that version.
    pub epoch: u64,
    /// Whether it exists at that version.
    pub live: bool,
    /// Its entries, sorted by key.
    pub entries: Vec<(String, Entry)>,
    /// Its recent update ids and their first outcomes, oldest first.
    pub recent: Vec<(UpdateId, Outcome)>,
}

impl MapSnapshot {
    /// Checks the invariants of a map, and builds its state.
    fn into_state(self) -> Result<MapState, InstallError> {
        let bad = |reason: String| InstallError::Invalid {
            map: self.map.clone(),
            reason,
        };
        validate_map_name(&self.map).map_err(|e| bad(e.to_string()))?;
        if self.entries.len() > MAX_ENTRIES {
            return Err(bad(format!("{} entries", self.entries.len())));
        }
        if !self.live && !self.entries.is_empty() {
            return Err(bad("a dropped map with entries".into()));
        }
        let mut state = MapState {
            version: self.version,
            chain: self.chain,
            epoch: self.epoch,
            live: self.live,
            ..MapState::default()
        };
        let mut prev: Option<&str> = None;
        for (key, e) in &self.entries {
            validate_key(key).map_err(|e| bad(e.to_string()))?;
            validate_value(key, &e.value).map_err(|e| bad(e.to_string()))?;
            if prev.is_some_and(|p| p >= key.as_str()) {
                return Err(bad(format!("keys out of order at {key:?}")));
            }
            if e.version == 0 || e.version > self.version {
                return Err(bad(format!(
                    "key {key:?} at version {} outside 1..={}",
                    e.version, self.version
                )));
            }
            prev = Some(key);
        }
        let mut last = 0;
        for (id, outcome) in &self.recent {
            let v = outcome.version();
            if v < last || v > self.version || v.saturating_add(DEDUP_WINDOW) <= self.version {
                return Err(bad(format!(
                    "recent update {id} at version {v} is out of order or outside the window"
                )));
            }
            if state.recent.get(*id).is_some() {
                return Err(bad(format!("recent update {id} appears twice")));
            }
            last = v;
            state.recent.insert(*id, outcome.clone(), None);
        }
        for (key, e) in self.entries {
            state.sum = state.sum.wrapping_add(entry_hash(&key, &e));
            state.bytes += key.len() + e.value.len();
            state.entries.insert(key, e);
        }
        Ok(state)
    }
}

/// Every map, by name: the replicated state.
///
/// Deterministic: a map's content at version k depends only on the updates
/// ordered at its versions 1 to k (and every map is independent of the
/// others), so replicas that apply the same updates hold the same content,
/// whatever order they interleave different maps in.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    maps: BTreeMap<String, MapState>,
}

impl Tables {
    /// No maps.
    pub fn new() -> Self {
        Tables::default()
    }

    /// One map (live or dropped), if this replica has heard of it.
    pub fn map(&self, name: &str) -> Option<&MapState> {
        self.maps.get(name)
    }

    /// Every map this replica has heard of, live or dropped, by name.
    pub fn maps(&self) -> impl Iterator<Item = (&str, &MapState)> {
        self.maps.iter().map(|(k, m)| (k.as_str(), m))
    }

    /// The chain digest of a map; 0 for a map never heard of.
    pub fn chain(&self, map: &str) -> u64 {
        self.maps.get(map).map_or(0, |m| m.chain)
    }

    /// The version of a map; 0 for a map never heard of.
    pub fn version(&self, map: &str) -> u64 {
        self.maps.get(map).map_or(0, |m| m.version)
    }

    /// Every known map's version (what a replica states in catch-up).
    pub fn versions(&self) -> BTreeMap<String, u64> {
        self.maps
            .iter()
            .map(|(k, m)| (k.clone(), m.version))
            .collect()
    }

    /// Whether a map exists.
    pub fn is_live(&self, map: &str) -> bool {
        self.maps.get(map).is_some_and(|m| m.live)
    }

    /// Number of live maps.
    pub fn live_count(&self) -> usize {
        self.maps.values().filter(|m| m.live).count()
    }

    /// The first outcome of update `id` on `map`, if it was applied within
    /// the map's dedup window.
    pub fn outcome_of(&self, map: &str, id: UpdateId) -> Option<&Outcome> {
        self.maps.get(map).and_then(|m| m.recent.get(id))
    }

    /// Update `id` on `map`, if it was applied within the map's dedup
    /// window: its first outcome, and whether `update` (sent with that id)
    /// is the same update ([`Recall::Same`]), a different one
    /// ([`Recall::Different`]), or cannot be told apart because this replica
    /// took the id from a peer's snapshot ([`Recall::Unknown`], treated as a
    /// retry as before digests were kept).
    pub fn recall(&self, update: &crate::Update) -> Option<Recall<'_>> {
        let (outcome, digest) = self.maps.get(&update.map)?.recent.recall(update.id)?;
        Some(match digest {
            Some(d) if d == update.digest() => Recall::Same(outcome),
            Some(_) => Recall::Different(outcome),
            None => Recall::Unknown(outcome),
        })
    }

    /// Applies the next update of a map: `ordered.version` must be one more
    /// than the map's version. Every ordered update advances the version;
    /// a rejected one changes no entry, and one whose id was applied within
    /// the last [`DEDUP_WINDOW`] versions is a duplicate that changes no
    /// entry and reports the first outcome.
    pub fn apply(&mut self, ordered: Ordered) -> Result<AppliedUpdate, ApplyError> {
        validate_map_name(ordered.map()).map_err(ApplyError::BadMapName)?;
        let have = self.version(ordered.map());
        if Some(ordered.version) != have.checked_add(1) {
            return Err(ApplyError::OutOfOrder {
                map: ordered.map().to_owned(),
                have,
                got: ordered.version,
            });
        }
        let version = ordered.version;
        let have_chain = self.chain(ordered.map());
        if ordered.prev != have_chain {
            return Err(ApplyError::Diverged {
                map: ordered.map().to_owned(),
                version,
                have: have_chain,
                got: ordered.prev,
            });
        }
        let chain = ordered.chain();
        let state = self.maps.entry(ordered.update.map.clone()).or_default();
        let id = ordered.update.id;
        let (outcome, duplicate) = match state.recent.get(id) {
            Some(first) => (first.clone(), true),
            None => {
                let outcome = match ordered.update.validate() {
                    Err(e) => Outcome::Rejected {
                        version,
                        reason: Rejection::Invalid(e),
                    },
                    Ok(()) => match execute(state, &ordered.update.op, version) {
                        Ok(()) => Outcome::Applied { version },
                        Err(reason) => Outcome::Rejected { version, reason },
                    },
                };
                state
                    .recent
                    .insert(id, outcome.clone(), Some(ordered.update.digest()));
                (outcome, false)
            }
        };
        state.version = version;
        state.chain = chain;
        state.epoch = ordered.epoch;
        state.recent.expire(version);
        Ok(AppliedUpdate {
            ordered,
            outcome,
            duplicate,
        })
    }

    /// Replaces a map with a snapshot of it from a peer (catch-up) or from
    /// the log. The snapshot must be valid, and newer than the local map or
    /// of another history (its chain differs): a replica that holds a
    /// history the primary component never made definitive is rolled back.
    pub fn install(&mut self, snapshot: MapSnapshot) -> Result<(), InstallError> {
        let have = self.version(&snapshot.map);
        let same_history = self.chain(&snapshot.map) == snapshot.chain;
        if snapshot.version <= have && same_history {
            return Err(InstallError::NotNewer {
                map: snapshot.map,
                have,
                got: snapshot.version,
            });
        }
        let name = snapshot.map.clone();
        let state = snapshot.into_state()?;
        self.maps.insert(name, state);
        Ok(())
    }

    /// Gives the recent ids of `map` the digests the local snapshot file
    /// kept for them; ids no longer remembered are skipped.
    pub(crate) fn restore_digests(&mut self, map: &str, digests: &[(UpdateId, u64)]) {
        if let Some(m) = self.maps.get_mut(map) {
            for (id, d) in digests {
                if let Some((_, slot)) = m.recent.outcomes.get_mut(id) {
                    *slot = Some(*d);
                }
            }
        }
    }

    /// Loads a map from a local snapshot file, replacing whatever is there.
    pub(crate) fn restore(&mut self, snapshot: MapSnapshot) -> Result<(), InstallError> {
        let name = snapshot.map.clone();
        let state = snapshot.into_state()?;
        self.maps.insert(name, state);
        Ok(())
    }
}

/// Runs `op` against `state` at `version`: all of it takes effect, or none
/// of it and the reason is returned.
fn execute(state: &mut MapState, op: &Op, version: u64) -> Result<(), Rejection> {
    let plan = {
        let mut tx = Tx {
            base: state,
            version,
            live: state.live,
            cleared: false,
            writes: BTreeMap::new(),
            len: state.entries.len(),
            bytes: state.bytes,
        };
        match op {
            Op::Batch(ops) => {
                for (index, op) in ops.iter().enumerate() {
                    tx.run(op).map_err(|reason| Rejection::InBatch {
                        index,
                        reason: Box::new(reason),
                    })?;
                }
            }
            op => tx.run(op)?,
        }
        Plan {
            live: tx.live,
            cleared: tx.cleared,
            writes: tx.writes,
        }
    };
    state.live = plan.live;
    if plan.cleared {
        state.clear();
    }
    for (key, write) in plan.writes {
        match write {
            Some(value) => state.put(key, value, version),
            None => state.remove(key),
        }
    }
    debug_assert!(state.entries.len() <= MAX_ENTRIES);
    Ok(())
}

/// The effect of an operation, worked out against an unchanged map.
struct Plan<'o> {
    live: bool,
    /// Every entry of the map goes (a create or a drop) before `writes`.
    cleared: bool,
    /// Key to new value, or `None` to delete.
    writes: BTreeMap<&'o str, Option<&'o str>>,
}

/// An operation in progress: the map as the operation's earlier steps left
/// it, seen through an overlay on the unchanged map.
struct Tx<'m, 'o> {
    base: &'m MapState,
    version: u64,
    live: bool,
    cleared: bool,
    writes: BTreeMap<&'o str, Option<&'o str>>,
    /// Entries the map has at this point of the operation.
    len: usize,
    /// Bytes of keys and values the map has at this point.
    bytes: usize,
}

impl<'o> Tx<'_, 'o> {
    /// The version of `key` at this point, `None` if absent.
    fn key_version(&self, key: &str) -> Option<u64> {
        match self.writes.get(key) {
            Some(Some(_)) => Some(self.version),
            Some(None) => None,
            None if self.cleared => None,
            None => self.base.entries.get(key).map(|e| e.version),
        }
    }

    /// The bytes `key` and its value take at this point, 0 if absent.
    fn key_bytes(&self, key: &str) -> usize {
        match self.writes.get(key) {
            Some(Some(v)) => key.len() + v.len(),
            Some(None) => 0,
            None if self.cleared => 0,
            None => self
                .base
                .entries
                .get(key)
                .map_or(0, |e| key.len() + e.value.len()),
        }
    }

    fn run(&mut self, op: &'o Op) -> Result<(), Rejection> {
        match op {
            Op::CreateMap => {
                if self.live {
                    return Err(Rejection::MapExists);
                }
                self.live = true;
                self.reset();
            }
            Op::DropMap => {
                if !self.live {
                    return Err(Rejection::NoSuchMap);
                }
                self.live = false;
                self.reset();
            }
            Op::Set { key, value } => self.set(key, value)?,
            Op::CompareAndSet {
                key,
                expected_version,
                value,
            } => {
                if !self.live {
                    return Err(Rejection::NoSuchMap);
                }
                let actual = self.key_version(key);
                if actual != *expected_version {
                    return Err(Rejection::VersionMismatch {
                        key: key.clone(),
                        expected: *expected_version,
                        actual,
                    });
                }
                self.set(key, value)?;
            }
            Op::Del { key } => {
                if !self.live {
                    return Err(Rejection::NoSuchMap);
                }
                if self.key_version(key).is_some() {
                    self.len -= 1;
                    self.bytes -= self.key_bytes(key);
                    self.writes.insert(key, None);
                }
            }
            // Validation refuses nested batches before this runs.
            Op::Batch(_) => {
                return Err(Rejection::Invalid(BoundError::NestedBatch { index: 0 }));
            }
        }
        Ok(())
    }

    fn set(&mut self, key: &'o str, value: &'o str) -> Result<(), Rejection> {
        if !self.live {
            return Err(Rejection::NoSuchMap);
        }
        let bytes = self.bytes - self.key_bytes(key) + key.len() + value.len();
        // Only growth past the bound is refused: a map over it (a bound
        // lowered since) can still shrink.
        if bytes > MAX_MAP_BYTES && bytes > self.bytes {
            return Err(Rejection::MapTooLarge { bytes });
        }
        if self.key_version(key).is_none() {
            if self.len >= MAX_ENTRIES {
                return Err(Rejection::MapFull);
            }
            self.len += 1;
        }
        self.bytes = bytes;
        self.writes.insert(key, Some(value));
        Ok(())
    }

    fn reset(&mut self) {
        self.cleared = true;
        self.writes.clear();
        self.len = 0;
        self.bytes = 0;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::update::Update;

    pub(crate) fn set(k: &str, v: &str) -> Op {
        Op::Set {
            key: k.into(),
            value: v.into(),
        }
    }

    pub(crate) fn del(k: &str) -> Op {
        Op::Del { key: k.into() }
    }

    pub(crate) fn cas(k: &str, expected: Option<u64>, v: &str) -> Op {
        Op::CompareAndSet {
            key: k.into(),
            expected_version: expected,
            value: v.into(),
        }
    }

    /// Applies `op` to `map` at its next version, with id `id`.
    pub(crate) fn step(t: &mut Tables, map: &str, id: u128, op: Op) -> AppliedUpdate {
        let version = t.version(map) + 1;
        t.apply(Ordered::new(
            version,
            1,
            t.chain(map),
            Update {
                id: UpdateId(id),
                map: map.into(),
                op,
            },
        ))
        .unwrap()
    }

    fn content(t: &Tables, map: &str) -> Vec<(String, String, u64)> {
        t.map(map)
            .unwrap()
            .entries()
            .map(|(k, e)| (k.to_owned(), e.value.clone(), e.version))
            .collect()
    }

    #[test]
    fn a_map_is_bounded_in_bytes() {
        let mut t = Tables::new();
        step(&mut t, "m", 1, Op::CreateMap);
        let big = "v".repeat(crate::bounds::MAX_VALUE);
        let per = 8 + big.len();
        let fit = MAX_MAP_BYTES / per;
        for i in 0..fit {
            let a = step(&mut t, "m", 10 + i as u128, set(&format!("k{i:07}"), &big));
            assert!(a.outcome.is_applied(), "{i}: {:?}", a.outcome);
        }
        let used = t.map("m").unwrap().bytes();
        assert_eq!(used, fit * per);
        // One more entry of that size would pass the bound: rejected, with
        // the map unchanged and its version advanced.
        let v = t.version("m");
        let a = step(&mut t, "m", 1 << 40, set("another", &big));
        assert_eq!(
            a.outcome,
            Outcome::Rejected {
                version: v + 1,
                reason: Rejection::MapTooLarge {
                    bytes: used + 7 + big.len()
                }
            }
        );
        assert!(a.outcome.to_string().contains("over the limit"));
        assert_eq!(t.map("m").unwrap().bytes(), used);
        // In a batch, a delete first makes room.
        let a = step(
            &mut t,
            "m",
            (1 << 40) + 1,
            Op::Batch(vec![del("k0000000"), set("another", &big)]),
        );
        assert!(a.outcome.is_applied(), "{:?}", a.outcome);
        // Overwriting with a smaller value always fits.
        let a = step(&mut t, "m", (1 << 40) + 2, set("another", "x"));
        assert!(a.outcome.is_applied());
        assert_eq!(t.map("m").unwrap().bytes(), used - per + 8);
    }

    #[test]
    fn create_set_del_drop() {
        let mut t = Tables::new();
        let a = step(&mut t, "hosts", 1, set("a", "1"));
        assert_eq!(
            a.outcome,
            Outcome::Rejected {
                version: 1,
                reason: Rejection::NoSuchMap
            }
        );
        assert!(!t.is_live("hosts"));
        assert_eq!(t.version("hosts"), 1, "a rejected update takes a version");

        assert!(step(&mut t, "hosts", 2, Op::CreateMap).outcome.is_applied());
        assert_eq!(
            step(&mut t, "hosts", 3, Op::CreateMap).outcome,
            Outcome::Rejected {
                version: 3,
                reason: Rejection::MapExists
            }
        );
        step(&mut t, "hosts", 4, set("a", "1"));
        step(&mut t, "hosts", 5, set("b", "2"));
        step(&mut t, "hosts", 6, set("a", "3"));
        assert_eq!(
            content(&t, "hosts"),
            vec![("a".into(), "3".into(), 6), ("b".into(), "2".into(), 5)]
        );
        assert!(step(&mut t, "hosts", 7, del("b")).outcome.is_applied());
        assert!(
            step(&mut t, "hosts", 8, del("zz")).outcome.is_applied(),
            "deleting a missing key succeeds"
        );
        assert_eq!(content(&t, "hosts"), vec![("a".into(), "3".into(), 6)]);
        assert_eq!(t.map("hosts").unwrap().bytes(), 2);

        step(&mut t, "hosts", 9, Op::DropMap);
        assert!(!t.is_live("hosts"));
        assert!(t.map("hosts").unwrap().is_empty());
        assert_eq!(t.version("hosts"), 9);
        assert_eq!(
            step(&mut t, "hosts", 10, Op::DropMap).outcome,
            Outcome::Rejected {
                version: 10,
                reason: Rejection::NoSuchMap
            }
        );
        step(&mut t, "hosts", 11, Op::CreateMap);
        assert_eq!(t.version("hosts"), 11, "versions keep counting");
        assert!(t.map("hosts").unwrap().is_empty());
    }

    #[test]
    fn out_of_order_is_an_error() {
        let mut t = Tables::new();
        let e = t
            .apply(Ordered::new(
                2,
                1,
                0,
                Update {
                    id: UpdateId(1),
                    map: "m".into(),
                    op: Op::CreateMap,
                },
            ))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "map \"m\" is at version 0: cannot apply version 2, only 1"
        );
        assert!(t.map("m").is_none(), "nothing changed");
        let e = t
            .apply(Ordered::new(
                1,
                1,
                0,
                Update {
                    id: UpdateId(1),
                    map: "a b".into(),
                    op: Op::CreateMap,
                },
            ))
            .unwrap_err();
        assert!(matches!(e, ApplyError::BadMapName(_)));
    }

    #[test]
    fn batch_is_all_or_nothing() {
        let mut t = Tables::new();
        step(&mut t, "m", 1, Op::CreateMap);
        step(&mut t, "m", 2, set("a", "1"));
        let before = content(&t, "m");
        let digest = t.map("m").unwrap().content_digest();
        let r = step(
            &mut t,
            "m",
            3,
            Op::Batch(vec![
                set("b", "2"),
                del("a"),
                cas("c", Some(1), "x"), // c is absent: rejected
                set("d", "4"),
            ]),
        );
        assert_eq!(
            r.outcome,
            Outcome::Rejected {
                version: 3,
                reason: Rejection::InBatch {
                    index: 2,
                    reason: Box::new(Rejection::VersionMismatch {
                        key: "c".into(),
                        expected: Some(1),
                        actual: None
                    })
                }
            }
        );
        assert_eq!(content(&t, "m"), before);
        assert_eq!(t.map("m").unwrap().content_digest(), digest);
        assert_eq!(t.version("m"), 3);

        // Later operations see earlier ones: CAS on a key set in the batch
        // finds the batch's version.
        let r = step(
            &mut t,
            "m",
            4,
            Op::Batch(vec![set("b", "2"), cas("b", Some(4), "3"), del("a")]),
        );
        assert!(r.outcome.is_applied(), "{:?}", r.outcome);
        assert_eq!(content(&t, "m"), vec![("b".into(), "3".into(), 4)]);
    }

    #[test]
    fn batch_replaces_a_map_atomically() {
        let mut t = Tables::new();
        step(&mut t, "m", 1, Op::CreateMap);
        step(&mut t, "m", 2, set("old", "1"));
        let r = step(
            &mut t,
            "m",
            3,
            Op::Batch(vec![Op::DropMap, Op::CreateMap, set("new", "2")]),
        );
        assert!(r.outcome.is_applied());
        assert_eq!(content(&t, "m"), vec![("new".into(), "2".into(), 3)]);
        // A batch that drops, recreates, then fails leaves the old contents.
        let r = step(
            &mut t,
            "m",
            4,
            Op::Batch(vec![Op::DropMap, Op::CreateMap, Op::CreateMap]),
        );
        assert!(!r.outcome.is_applied());
        assert_eq!(content(&t, "m"), vec![("new".into(), "2".into(), 3)]);
        // Create inside a batch on a fresh map.
        let r = step(
            &mut t,
            "n",
            5,
            Op::Batch(vec![Op::CreateMap, set("k", "v")]),
        );
        assert!(r.outcome.is_applied());
        assert_eq!(content(&t, "n"), vec![("k".into(), "v".into(), 1)]);
    }

    #[test]
    fn compare_and_set() {
        let mut t = Tables::new();
        step(&mut t, "m", 1, Op::CreateMap);
        assert!(step(&mut t, "m", 2, cas("k", None, "a"))
            .outcome
            .is_applied());
        assert_eq!(
            step(&mut t, "m", 3, cas("k", None, "b")).outcome,
            Outcome::Rejected {
                version: 3,
                reason: Rejection::VersionMismatch {
                    key: "k".into(),
                    expected: None,
                    actual: Some(2)
                }
            }
        );
        assert!(step(&mut t, "m", 4, cas("k", Some(2), "c"))
            .outcome
            .is_applied());
        assert!(!step(&mut t, "m", 5, cas("k", Some(2), "d"))
            .outcome
            .is_applied());
        assert_eq!(content(&t, "m"), vec![("k".into(), "c".into(), 4)]);
        step(&mut t, "m", 6, del("k"));
        assert!(step(&mut t, "m", 7, cas("k", None, "e"))
            .outcome
            .is_applied());
    }

    #[test]
    fn invalid_updates_are_rejected_and_take_a_version() {
        let mut t = Tables::new();
        step(&mut t, "m", 1, Op::CreateMap);
        let r = step(&mut t, "m", 2, set("", "v"));
        assert_eq!(
            r.outcome,
            Outcome::Rejected {
                version: 2,
                reason: Rejection::Invalid(BoundError::KeyEmpty)
            }
        );
        assert_eq!(t.version("m"), 2);
    }

    #[test]
    fn duplicates_get_the_first_outcome() {
        let mut t = Tables::new();
        step(&mut t, "m", 1, Op::CreateMap);
        let first = step(&mut t, "m", 7, set("k", "a"));
        step(&mut t, "m", 8, set("k", "b"));
        let again = step(&mut t, "m", 7, set("k", "a"));
        assert!(again.duplicate);
        assert_eq!(again.outcome, first.outcome);
        assert_eq!(again.outcome, Outcome::Applied { version: 2 });
        assert_eq!(t.version("m"), 4, "the duplicate took a version");
        assert_eq!(content(&t, "m"), vec![("k".into(), "b".into(), 3)]);
        // A rejected update's retransmission is rejected alike, even once
        // the reason has gone away.
        let r1 = step(&mut t, "m", 9, cas("z", Some(1), "x"));
        step(&mut t, "m", 10, set("z", "y"));
        let r2 = step(&mut t, "m", 9, cas("z", Some(1), "x"));
        assert!(r2.duplicate);
        assert_eq!(r1.outcome, r2.outcome);
    }

    #[test]
    fn a_reused_id_is_told_from_a_retry() {
        let mut t = Tables::new();
        step(&mut t, "m", 1, Op::CreateMap);
        step(&mut t, "m", 7, set("k", "v1"));
        let u = |op| crate::Update {
            id: UpdateId(7),
            map: "m".into(),
            op,
        };
        let applied = Outcome::Applied { version: 2 };
        assert_eq!(t.recall(&u(set("k", "v1"))), Some(Recall::Same(&applied)));
        assert_eq!(
            t.recall(&u(set("k", "DIFFERENT"))),
            Some(Recall::Different(&applied))
        );
        assert_eq!(
            t.recall(&u(set("other", "v1"))),
            Some(Recall::Different(&applied))
        );
        assert_eq!(
            t.recall(&crate::Update {
                map: "n".into(),
                ..u(set("k", "v1"))
            }),
            None
        );
        // A different update that got ordered with the id anyway changes
        // nothing (every replica decides alike, digest or not).
        let again = step(&mut t, "m", 7, set("k", "DIFFERENT"));
        assert!(again.duplicate);
        assert_eq!(content(&t, "m"), vec![("k".into(), "v1".into(), 2)]);
        // Ids that came in a snapshot have no digest: taken as retries.
        let mut fresh = Tables::new();
        fresh.install(t.map("m").unwrap().snapshot("m")).unwrap();
        assert_eq!(
            fresh.recall(&u(set("k", "DIFFERENT"))),
            Some(Recall::Unknown(&applied))
        );
        // Updates applied after it have theirs.
        step(&mut fresh, "m", 9, set("j", "x"));
        let later = Outcome::Applied { version: 4 };
        assert_eq!(
            fresh.recall(&crate::Update {
                id: UpdateId(9),
                ..u(set("j", "y"))
            }),
            Some(Recall::Different(&later))
        );
    }

    #[test]
    fn dedup_window_is_bounded_and_per_map_version() {
        let mut t = Tables::new();
        step(&mut t, "m", 0, Op::CreateMap);
        for i in 1..=DEDUP_WINDOW + 5 {
            step(&mut t, "m", u128::from(i), set("k", "v"));
        }
        let m = t.map("m").unwrap();
        assert_eq!(m.recent.order.len() as u64, DEDUP_WINDOW);
        assert!(m.outcome_of(UpdateId(5)).is_none());
        assert!(m.outcome_of(UpdateId(6)).is_some());
        // Another map's traffic does not push ids out of this one.
        for i in 0..100 {
            step(&mut t, "other", 1_000_000 + i, Op::CreateMap);
        }
        assert!(t.outcome_of("m", UpdateId(6)).is_some());
    }

    #[test]
    fn digest_tracks_content() {
        let mut a = Tables::new();
        let mut b = Tables::new();
        for t in [&mut a, &mut b] {
            step(t, "m", 1, Op::CreateMap);
        }
        step(&mut a, "m", 2, set("x", "1"));
        step(&mut b, "m", 2, set("x", "2"));
        let (da, db) = (
            a.map("m").unwrap().content_digest(),
            b.map("m").unwrap().content_digest(),
        );
        assert_ne!(da, db);
        // The digest equals a recomputation from scratch.
        let snap = a.map("m").unwrap().snapshot("m");
        let mut c = Tables::new();
        c.install(snap).unwrap();
        assert_eq!(c.map("m").unwrap().content_digest(), da);
    }

    #[test]
    fn install_checks_the_snapshot() {
        let mut t = Tables::new();
        step(&mut t, "m", 1, Op::CreateMap);
        step(&mut t, "m", 2, set("a", "1"));
        let snap = t.map("m").unwrap().snapshot("m");
        assert!(matches!(
            t.clone().install(snap.clone()),
            Err(InstallError::NotNewer { .. })
        ));
        let mut bad = snap.clone();
        bad.entries.push(("0".into(), bad.entries[0].1.clone()));
        let e = Tables::new().install(bad).unwrap_err();
        assert!(e.to_string().contains("out of order"), "{e}");
        let mut bad = snap.clone();
        bad.entries[0].1.version = 9;
        assert!(Tables::new().install(bad).is_err());
        let mut fresh = Tables::new();
        fresh.install(snap).unwrap();
        assert_eq!(content(&fresh, "m"), content(&t, "m"));
        assert!(fresh.outcome_of("m", UpdateId(2)).is_some());
    }
}
