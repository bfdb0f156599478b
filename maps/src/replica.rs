//! A replica: the tables of one server, fed ordered updates in whatever
//! order they arrive, applying them strictly in version order.

use crate::bounds::validate_map_name;
use crate::table::{AppliedUpdate, ApplyError, InstallError, MapSnapshot, Tables};
use crate::update::{Ordered, UpdateId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A change to the tables, as the log records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// An ordered update was applied.
    Applied(AppliedUpdate),
    /// A map was replaced by a snapshot (catch-up past the responder's log).
    Installed(MapSnapshot),
    /// An ordered update was received and kept, not yet applied: applied
    /// only once a majority of its session holds it (see the crate docs).
    Held(Ordered),
}

impl Change {
    /// The map changed.
    pub fn map(&self) -> &str {
        match self {
            Change::Applied(a) => a.ordered.map(),
            Change::Installed(s) => &s.map,
            Change::Held(o) => o.map(),
        }
    }

    /// The map's version after the change.
    pub fn version(&self) -> u64 {
        match self {
            Change::Applied(a) => a.ordered.version,
            Change::Installed(s) => s.version,
            Change::Held(o) => o.version,
        }
    }
}

/// Missing versions of a map: `have + 1` up to `seen - 1`, where `seen` is a
/// version this replica has received (or been told of) but cannot apply
/// yet. Fill it by catch-up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The map.
    pub map: String,
    /// The version applied.
    pub have: u64,
    /// The lowest version received beyond it.
    pub seen: u64,
}

/// What became of one ordered update offered to a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Receipt {
    /// It was applied, followed by any buffered updates it unblocked, in
    /// order. Log them, then answer their clients.
    Applied(Vec<AppliedUpdate>),
    /// The map is already past its version (a copy delivered twice, or
    /// overlapping catch-up): ignored.
    Stale {
        /// The map's version.
        have: u64,
    },
    /// Kept until the versions before it arrive.
    Buffered(Gap),
    /// Too far ahead, or the buffer is full: dropped. Catch up.
    Dropped(Gap),
}

/// How far ahead of a map's version a replica buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaLimits {
    /// Versions beyond a map's version that may be buffered.
    pub max_ahead: u64,
    /// Updates buffered across all maps.
    pub max_buffered: usize,
    /// Bytes (as counted by [`crate::bounds::MAX_UPDATE_BYTES`]) buffered
    /// across all maps.
    pub max_buffered_bytes: usize,
}

impl Default for ReplicaLimits {
    fn default() -> Self {
        ReplicaLimits {
            max_ahead: 65_536,
            max_buffered: 65_536,
            max_buffered_bytes: 64 << 20,
        }
    }
}

/// Something no correct primary or peer sends arrived; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// The update could not be applied (an invalid map name).
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A map snapshot could not be installed.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// Two different updates arrived for the same version of a map: two
    /// primaries ordered the same map at once, which the primary component
    /// should make impossible. Stop and report.
    #[error("map {map:?} version {version} was ordered twice: update {held} and update {offered}")]
    Conflict {
        /// The map.
        map: String,
        /// The version.
        version: u64,
        /// The update buffered first.
        held: UpdateId,
        /// The other one.
        offered: UpdateId,
    },
}

/// The tables of one server with a bounded buffer of updates that arrived
/// ahead of their turn.
///
/// Updates of one map are applied in version order, exactly once each; maps
/// are independent of each other.
#[derive(Debug, Default)]
pub struct Replica {
    tables: Tables,
    buffered: BTreeMap<String, BTreeMap<u64, Ordered>>,
    count: usize,
    bytes: usize,
    limits: ReplicaLimits,
}

impl Replica {
    /// A replica over `tables` (empty, or recovered from disk).
    pub fn new(tables: Tables, limits: ReplicaLimits) -> Self {
        Replica {
            tables,
            limits,
            ..Replica::default()
        }
    }

    /// The applied state.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// The applied state, dropping the buffer.
    pub fn into_tables(self) -> Tables {
        self.tables
    }

    /// Updates buffered across all maps.
    pub fn buffered(&self) -> usize {
        self.count
    }

    /// Offers one ordered update.
    pub fn receive(&mut self, ordered: Ordered) -> Result<Receipt, ReplicaError> {
        validate_map_name(ordered.map()).map_err(ApplyError::BadMapName)?;
        let have = self.tables.version(ordered.map());
        let version = ordered.version;
        if version <= have {
            return Ok(Receipt::Stale { have });
        }
        if version == have + 1 {
            let map = ordered.map().to_owned();
            let mut out = vec![self.tables.apply(ordered)?];
            self.drain(&map, &mut out)?;
            return Ok(Receipt::Applied(out));
        }
        let gap = Gap {
            map: ordered.map().to_owned(),
            have,
            seen: version,
        };
        if let Some(held) = self
            .buffered
            .get(ordered.map())
            .and_then(|b| b.get(&version))
        {
            return if held.update.id == ordered.update.id {
                Ok(Receipt::Buffered(gap))
            } else {
                Err(ReplicaError::Conflict {
                    map: gap.map,
                    version,
                    held: held.update.id,
                    offered: ordered.update.id,
                })
            };
        }
        let size = ordered.update.op.counted_bytes();
        if version - have > self.limits.max_ahead
            || self.count >= self.limits.max_buffered
            || self.bytes + size > self.limits.max_buffered_bytes
        {
            return Ok(Receipt::Dropped(gap));
        }
        self.count += 1;
        self.bytes += size;
        self.buffered
            .entry(gap.map.clone())
            .or_default()
            .insert(version, ordered);
        Ok(Receipt::Buffered(gap))
    }

    /// Replaces a map with a newer snapshot of it, then applies what that
    /// unblocked from the buffer. Returns the changes to log, in order.
    pub fn install(&mut self, snapshot: MapSnapshot) -> Result<Vec<Change>, ReplicaError> {
        let map = snapshot.map.clone();
        self.tables.install(snapshot.clone())?;
        let mut applied = Vec::new();
        self.drain(&map, &mut applied)?;
        let mut out = vec![Change::Installed(snapshot)];
        out.extend(applied.into_iter().map(Change::Applied));
        Ok(out)
    }

    /// Every map with buffered updates, and what it lacks.
    pub fn gaps(&self) -> Vec<Gap> {
        self.buffered
            .iter()
            .filter_map(|(map, b)| {
                b.keys().next().map(|&seen| Gap {
                    map: map.clone(),
                    have: self.tables.version(map),
                    seen,
                })
            })
            .collect()
    }

    /// Applies buffered updates of `map` that are next in line; discards
    /// buffered ones the map is already past.
    fn drain(&mut self, map: &str, out: &mut Vec<AppliedUpdate>) -> Result<(), ReplicaError> {
        let Some(buf) = self.buffered.get_mut(map) else {
            return Ok(());
        };
        loop {
            let have = self.tables.version(map);
            let Some(entry) = buf.first_entry() else {
                break;
            };
            if *entry.key() > have + 1 {
                break;
            }
            let o = entry.remove();
            self.count -= 1;
            self.bytes -= o.update.op.counted_bytes();
            if o.version == have + 1 {
                out.push(self.tables.apply(o)?);
            }
        }
        if buf.is_empty() {
            self.buffered.remove(map);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::set;
    use crate::update::{Op, Update};

    /// Updates 1..=n of `map` in one epoch, each on top of the one before.
    fn history(map: &str, ops: Vec<Op>) -> Vec<Ordered> {
        let mut prev = 0;
        ops.into_iter()
            .enumerate()
            .map(|(i, op)| {
                let v = i as u64 + 1;
                let o = Ordered::new(
                    v,
                    1,
                    prev,
                    Update {
                        id: UpdateId(u128::from(v)),
                        map: map.into(),
                        op,
                    },
                );
                prev = o.chain();
                o
            })
            .collect()
    }

    fn versions(r: &Receipt) -> Vec<u64> {
        match r {
            Receipt::Applied(a) => a.iter().map(|a| a.ordered.version).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn applies_in_version_order() {
        let h = history("m", vec![Op::CreateMap, set("a", "2"), set("a", "3")]);
        let mut r = Replica::new(Tables::new(), ReplicaLimits::default());
        let r3 = r.receive(h[2].clone()).unwrap();
        assert_eq!(
            r3,
            Receipt::Buffered(Gap {
                map: "m".into(),
                have: 0,
                seen: 3
            })
        );
        assert!(matches!(
            r.receive(h[1].clone()).unwrap(),
            Receipt::Buffered(_)
        ));
        assert_eq!(r.gaps().len(), 1);
        let done = r.receive(h[0].clone()).unwrap();
        assert_eq!(versions(&done), vec![1, 2, 3]);
        assert_eq!(r.tables().map("m").unwrap().get("a").unwrap().value, "3");
        assert_eq!(r.buffered(), 0);
        assert!(r.gaps().is_empty());
        assert_eq!(r.receive(h[1].clone()).unwrap(), Receipt::Stale { have: 3 });
    }

    #[test]
    fn conflicting_orders_are_reported() {
        let h = history("m", vec![Op::CreateMap; 5]);
        let mut r = Replica::new(Tables::new(), ReplicaLimits::default());
        r.receive(h[4].clone()).unwrap();
        assert!(matches!(
            r.receive(h[4].clone()).unwrap(),
            Receipt::Buffered(_)
        ));
        let mut other = h[4].clone();
        other.update.id = UpdateId(51);
        let e = r.receive(other).unwrap_err();
        assert!(
            matches!(e, ReplicaError::Conflict { version: 5, .. }),
            "{e}"
        );
    }

    #[test]
    fn an_update_on_another_history_is_not_applied() {
        let h = history("m", vec![Op::CreateMap, set("a", "1")]);
        let mut r = Replica::new(Tables::new(), ReplicaLimits::default());
        r.receive(h[0].clone()).unwrap();
        let mut forked = h[1].clone();
        forked.prev ^= 1;
        let e = r.receive(forked).unwrap_err();
        assert!(
            matches!(
                e,
                ReplicaError::Apply(ApplyError::Diverged { version: 2, .. })
            ),
            "{e}"
        );
        assert_eq!(r.tables().version("m"), 1, "nothing changed");
    }

    #[test]
    fn buffer_is_bounded() {
        let limits = ReplicaLimits {
            max_ahead: 10,
            max_buffered: 3,
            max_buffered_bytes: 1 << 20,
        };
        let h = history("m", vec![Op::CreateMap; 12]);
        let mut r = Replica::new(Tables::new(), limits);
        assert!(matches!(
            r.receive(h[11].clone()).unwrap(),
            Receipt::Dropped(Gap { seen: 12, .. })
        ));
        for v in 2..5 {
            assert!(matches!(
                r.receive(h[v - 1].clone()).unwrap(),
                Receipt::Buffered(_)
            ));
        }
        assert!(matches!(
            r.receive(h[4].clone()).unwrap(),
            Receipt::Dropped(_)
        ));
        assert_eq!(r.buffered(), 3);
    }

    #[test]
    fn install_unblocks_and_discards_the_buffer() {
        let h = history(
            "m",
            vec![Op::CreateMap, set("a", "1"), set("b", "2"), set("c", "3")],
        );
        let mut source = Replica::new(Tables::new(), ReplicaLimits::default());
        for o in &h[..3] {
            source.receive(o.clone()).unwrap();
        }
        let snap = source.tables().map("m").unwrap().snapshot("m");

        let mut r = Replica::new(Tables::new(), ReplicaLimits::default());
        r.receive(h[1].clone()).unwrap();
        r.receive(h[3].clone()).unwrap();
        let changes = r.install(snap).unwrap();
        assert_eq!(
            changes.iter().map(Change::version).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert!(matches!(changes[0], Change::Installed(_)));
        assert_eq!(r.buffered(), 0);
        assert_eq!(r.tables().map("m").unwrap().len(), 3);
    }
}
