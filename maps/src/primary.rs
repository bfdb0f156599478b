//! The primary server: which member of the primary component orders
//! updates, and the [`Sequencer`] with which it assigns map versions.
//!
//! These are pure functions of their inputs; the daemon feeds them the
//! views and deliveries of gc-core and multicasts what they return.
//!
//! # The rule
//! Every member of the primary component knows its own *tenure*: the number
//! of the first primary component of the unbroken run of primary components
//! it has been a member of ([`Tenure`]). Members exchange their tenures when
//! a primary view is installed (the state exchange that also carries their
//! map versions for catch-up), and every member applies [`primary_server`]
//! to the same list: **the member with the smallest tenure (present the
//! longest), ties broken by the smallest node id, then the smallest
//! incarnation.** The primary server therefore stays put while it lives,
//! rather than moving whenever a lower-numbered host returns, and a
//! restarted process (a new incarnation) starts its tenure anew.

use crate::bounds::{BoundError, MAX_MAPS, MAX_MAP_NAMES};
use crate::table::{Recall, Tables};
use crate::update::{Ordered, Outcome, Update, UpdateId};
use gc_core::Pid;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A member of the primary component, with its tenure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The process.
    pub pid: Pid,
    /// The number of the first primary component of the unbroken run of
    /// primary components this process has been a member of
    /// ([`Tenure::since`]).
    pub since: u64,
}

/// The primary server of a primary component: the member present the
/// longest (smallest `since`), ties broken by node id, then incarnation.
/// `None` only for an empty list. Every member computes the same answer
/// from the same list, whatever its order.
pub fn primary_server(members: &[Member]) -> Option<Pid> {
    members
        .iter()
        .min_by_key(|m| (m.since, m.pid.node, m.pid.incarnation))
        .map(|m| m.pid)
}

/// Tracks one process's tenure in the primary component, from the primary
/// numbers of the regular views it installs (gc-core's `ViewInfo::primary`).
///
/// The run is unbroken while each primary component this process is in is
/// the one right after the previous one it was in: non-primary views in
/// between do not break it, since no primary component (and so no update)
/// existed without this process meanwhile.
#[derive(Clone, Debug, Default)]
pub struct Tenure {
    since: Option<u64>,
    last: Option<u64>,
}

impl Tenure {
    /// A process that has not yet been in a primary component.
    pub fn new() -> Self {
        Tenure::default()
    }

    /// Records a regular view: `primary` is its primary number, `None` when
    /// it is not the primary component. Returns the tenure to state while
    /// in it.
    pub fn on_view(&mut self, primary: Option<u64>) -> Option<u64> {
        let n = primary?;
        let unbroken = self.last.is_some_and(|last| last.checked_add(1) == Some(n));
        if !unbroken || self.since.is_none() {
            self.since = Some(n);
        }
        self.last = Some(n);
        self.since
    }

    /// The current tenure, if this process has been in a primary component.
    pub fn since(&self) -> Option<u64> {
        self.since
    }
}

/// What the primary server should do with a client's update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assigned {
    /// Multicast this to the maps group with safe delivery.
    Ordered(Ordered),
    /// The same update id was already ordered at `version` and is not yet
    /// applied here: answer when it is.
    InFlight {
        /// The map.
        map: String,
        /// The version it was ordered at.
        version: u64,
    },
    /// The update id was already applied: answer with its first outcome.
    Done(Outcome),
}

/// The primary server refused to order an update. Nothing was ordered, so a
/// client may correct the update and send it again with the same id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The update breaks a bound.
    #[error("{0}")]
    Invalid(BoundError),
    /// The update changes a map that does not exist and does not create it.
    #[error("map {map:?} does not exist: create it first")]
    NoSuchMap {
        /// The map.
        map: String,
    },
    /// Creating the map would make more than [`MAX_MAPS`] live maps.
    #[error("there are already {live} maps, the limit: drop a map before creating {map:?}")]
    TooManyMaps {
        /// The map to create.
        map: String,
        /// Live maps, counting creations in flight.
        live: usize,
    },
    /// Creating the map would make more than [`MAX_MAP_NAMES`] map names,
    /// live or dropped, to remember.
    #[error("{MAX_MAP_NAMES} map names are in use, live or dropped: reuse a dropped map's name instead of {map:?}")]
    TooManyMapNames {
        /// The map to create.
        map: String,
    },
    /// This server has not yet caught up with a version another member of
    /// the primary component stated for the map; ordering now could reuse a
    /// version.
    #[error("the primary server is catching up on map {map:?} (version {have} of {need}): try again shortly")]
    CatchingUp {
        /// The map.
        map: String,
        /// The version here.
        have: u64,
        /// The version to reach.
        need: u64,
    },
    /// The primary server has not yet completed the primary component's
    /// state exchange (every member catching up); nothing was ordered.
    #[error("the primary component is settling after a membership change: retry shortly")]
    Settling,
    /// Too many ordered updates are waiting to be applied here.
    #[error("{in_flight} updates are waiting to be applied, the limit: try again shortly")]
    Busy {
        /// Updates in flight.
        in_flight: usize,
    },
    /// The update's id was already used for a different update of the map
    /// (applied, rejected, or ordered and not yet applied): the id is how a
    /// retry is recognised, so a new update needs a new id. Last, so that
    /// the encoding of the variants before it stays.
    #[error(
        "update id {id} was already used for a different update of map {map:?}: {first}. \
         Send a new update without --id (a fresh id), or resend that update unchanged"
    )]
    IdReused {
        /// The id.
        id: UpdateId,
        /// The map.
        map: String,
        /// Which update has the id and what became of it ("the one at
        /// version 12 (applied)").
        first: String,
    },
}

impl Refusal {
    /// `update` reuses the id of a different update that took `outcome`.
    pub fn id_reused(update: &Update, outcome: &Outcome) -> Self {
        Refusal::IdReused {
            id: update.id,
            map: update.map.clone(),
            first: match outcome {
                Outcome::Applied { version } => format!("the one at version {version} (applied)"),
                Outcome::Rejected { version, reason } => {
                    format!("the one at version {version} (rejected: {reason})")
                }
            },
        }
    }
}

/// Assigns map versions to the updates that reach the primary server.
///
/// One sequencer serves one primary view: on every view change the daemon
/// discards it, and the new primary server makes a new one once the
/// members have stated their versions. Updates it ordered that no member
/// delivered are simply never applied; their clients learn that the outcome
/// is unknown and retransmit with the same id, which the dedup window makes
/// safe.
///
/// Versions are never reused within a view: the primary first reaches the
/// highest version any member stated (the head of the map's history), then
/// an update takes the next version after the primary's applied version or
/// the last version this sequencer assigned, whichever is higher, and names
/// the chain digest of the history it follows.
#[derive(Clone, Debug)]
pub struct Sequencer {
    /// The primary number of the view: the epoch of every update ordered.
    epoch: u64,
    /// Last version assigned here, and the chain digest after it, per map.
    last: BTreeMap<String, (u64, u64)>,
    /// Versions a member stated that this server must reach before ordering.
    need: BTreeMap<String, u64>,
    /// Ordered and not yet applied here, per map: version to id.
    in_flight: BTreeMap<String, BTreeMap<u64, UpdateId>>,
    /// Map, version and [`Update::digest`] of each update in flight.
    ids: BTreeMap<UpdateId, (String, u64, u64)>,
    /// Maps whose creation is in flight: the version of the last one.
    creating: BTreeMap<String, u64>,
    max_in_flight: usize,
}

impl Sequencer {
    /// Default bound on updates ordered and not yet applied here.
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 65_536;

    /// A sequencer for the primary view numbered `epoch`. `stated` holds,
    /// per map, the highest version any member of the view stated; the
    /// primary refuses to order a map until its own replica has reached that
    /// version.
    pub fn new(epoch: u64, stated: &BTreeMap<String, u64>, max_in_flight: usize) -> Self {
        Sequencer {
            epoch,
            last: BTreeMap::new(),
            need: stated.clone(),
            in_flight: BTreeMap::new(),
            ids: BTreeMap::new(),
            creating: BTreeMap::new(),
            max_in_flight,
        }
    }

    /// Updates ordered here and not yet known to be applied by the primary's
    /// replica (a map's applied updates are forgotten at its next update, and
    /// every map's when the bound is reached).
    pub fn in_flight(&self) -> usize {
        self.ids.len()
    }

    /// Decides what to do with `update`, given the primary server's applied
    /// tables.
    pub fn assign(&mut self, tables: &Tables, update: Update) -> Result<Assigned, Refusal> {
        update.validate().map_err(Refusal::Invalid)?;
        let map = update.map.as_str();
        let have = tables.version(map);
        self.prune(tables, map);
        if let Some(&need) = self.need.get(map) {
            if have < need {
                return Err(Refusal::CatchingUp {
                    map: map.to_owned(),
                    have,
                    need,
                });
            }
        }
        match tables.recall(&update) {
            Some(Recall::Different(first)) => return Err(Refusal::id_reused(&update, first)),
            Some(r) => return Ok(Assigned::Done(r.outcome().clone())),
            None => {}
        }
        if let Some((m, v, digest)) = self.ids.get(&update.id) {
            if m == map {
                if *digest != update.digest() {
                    return Err(Refusal::IdReused {
                        id: update.id,
                        map: m.clone(),
                        first: format!("the one ordered at version {v}, not yet applied"),
                    });
                }
                return Ok(Assigned::InFlight {
                    map: m.clone(),
                    version: *v,
                });
            }
        }
        let creates = update.op.creates_map();
        let live = tables.is_live(map) || self.creating.contains_key(map);
        if !live && !creates {
            return Err(Refusal::NoSuchMap {
                map: map.to_owned(),
            });
        }
        if creates && !live {
            let live_count =
                tables.live_count() + self.creating.keys().filter(|m| !tables.is_live(m)).count();
            if live_count >= MAX_MAPS {
                return Err(Refusal::TooManyMaps {
                    map: map.to_owned(),
                    live: live_count,
                });
            }
            let known = tables.map(map).is_some()
                || self.last.contains_key(map)
                || self.need.contains_key(map);
            if !known {
                let names = tables.maps().count()
                    + self
                        .last
                        .keys()
                        .chain(self.need.keys())
                        .filter(|m| tables.map(m).is_none())
                        .collect::<std::collections::BTreeSet<_>>()
                        .len();
                if names >= MAX_MAP_NAMES {
                    return Err(Refusal::TooManyMapNames {
                        map: map.to_owned(),
                    });
                }
            }
        }
        if self.ids.len() >= self.max_in_flight {
            self.prune_all(tables);
            if self.ids.len() >= self.max_in_flight {
                return Err(Refusal::Busy {
                    in_flight: self.ids.len(),
                });
            }
        }
        let (base, prev) = match self.last.get(map) {
            Some(&(v, chain)) if v >= have => (v, chain),
            _ => (have, tables.chain(map)),
        };
        let version = base.saturating_add(1);
        let map = map.to_owned();
        let ordered = Ordered::new(version, self.epoch, prev, update);
        self.last.insert(map.clone(), (version, ordered.chain()));
        let update = &ordered.update;
        self.in_flight
            .entry(map.to_owned())
            .or_default()
            .insert(version, update.id);
        self.ids
            .insert(update.id, (map.to_owned(), version, update.digest()));
        if creates {
            self.creating.insert(map.to_owned(), version);
        }
        Ok(Assigned::Ordered(ordered))
    }

    /// Takes back `ordered`, the last update this sequencer assigned for its
    /// map, because it could not be multicast: its version is assigned again
    /// to the next update. Returns false (and changes nothing) if a later
    /// update of the map was assigned since; the map then has a hole that
    /// only a new view repairs, so the driver should not let that happen
    /// (it multicasts each returned update before asking for the next).
    pub fn take_back(&mut self, ordered: &Ordered) -> bool {
        let map = ordered.map();
        if self.last.get(map) != Some(&(ordered.version, ordered.chain())) {
            return false;
        }
        self.last
            .insert(map.to_owned(), (ordered.version - 1, ordered.prev));
        if let Some(p) = self.in_flight.get_mut(map) {
            p.remove(&ordered.version);
        }
        self.ids.remove(&ordered.update.id);
        if self.creating.get(map) == Some(&ordered.version) {
            self.creating.remove(map);
        }
        true
    }

    /// Forgets what the primary's replica has applied of `map`.
    fn prune(&mut self, tables: &Tables, map: &str) {
        let have = tables.version(map);
        if let Some(pending) = self.in_flight.get_mut(map) {
            let rest = pending.split_off(&have.saturating_add(1));
            for id in std::mem::replace(pending, rest).into_values() {
                self.ids.remove(&id);
            }
            if pending.is_empty() {
                self.in_flight.remove(map);
            }
        }
        if self.creating.get(map).is_some_and(|&v| v <= have) {
            self.creating.remove(map);
        }
    }

    fn prune_all(&mut self, tables: &Tables) {
        let maps: Vec<String> = self
            .in_flight
            .keys()
            .chain(self.creating.keys())
            .cloned()
            .collect();
        for m in maps {
            self.prune(tables, &m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::{set, step};
    use crate::update::Op;

    fn m(node: u32, inc: u64, since: u64) -> Member {
        Member {
            pid: Pid::new(node, inc),
            since,
        }
    }

    #[test]
    fn primary_server_rule() {
        assert_eq!(primary_server(&[]), None);
        // Present the longest wins over a smaller node id.
        let ms = [m(1, 3, 9), m(4, 1, 2), m(2, 1, 2), m(3, 1, 5)];
        assert_eq!(primary_server(&ms), Some(Pid::new(2, 1)));
        let mut rev = ms;
        rev.reverse();
        assert_eq!(primary_server(&rev), primary_server(&ms));
        // Same tenure and node: the smaller incarnation.
        assert_eq!(
            primary_server(&[m(2, 7, 1), m(2, 6, 1)]),
            Some(Pid::new(2, 6))
        );
    }

    #[test]
    fn tenure() {
        let mut t = Tenure::new();
        assert_eq!(t.on_view(None), None);
        assert_eq!(t.on_view(Some(4)), Some(4));
        assert_eq!(t.on_view(Some(5)), Some(4));
        // A non-primary view with no primary elsewhere meanwhile.
        assert_eq!(t.on_view(None), None);
        assert_eq!(t.on_view(Some(6)), Some(4));
        // A primary formed without us (7): the run is broken.
        assert_eq!(t.on_view(Some(8)), Some(8));
        assert_eq!(t.since(), Some(8));
    }

    fn upd(id: u128, map: &str, op: Op) -> Update {
        Update {
            id: UpdateId(id),
            map: map.into(),
            op,
        }
    }

    fn ordered(a: Result<Assigned, Refusal>) -> Ordered {
        match a {
            Ok(Assigned::Ordered(o)) => o,
            other => panic!("not ordered: {other:?}"),
        }
    }

    #[test]
    fn assigns_gap_free_versions_and_answers_duplicates() {
        let mut t = Tables::new();
        let mut s = Sequencer::new(1, &BTreeMap::new(), 100);
        let o1 = ordered(s.assign(&t, upd(1, "m", Op::CreateMap)));
        let o2 = ordered(s.assign(&t, upd(2, "m", set("a", "1"))));
        let o3 = ordered(s.assign(&t, upd(3, "n", Op::CreateMap)));
        assert_eq!((o1.version, o2.version, o3.version), (1, 2, 1));
        assert_eq!(s.in_flight(), 3);
        // A retransmission of an update in flight is not ordered again.
        assert_eq!(
            s.assign(&t, upd(2, "m", set("a", "1"))),
            Ok(Assigned::InFlight {
                map: "m".into(),
                version: 2
            })
        );
        // Its id, reused for a different update while it is in flight.
        assert!(matches!(
            s.assign(&t, upd(2, "m", set("a", "other"))),
            Err(Refusal::IdReused { ref first, .. }) if first == "the one ordered at version 2, not yet applied"
        ));
        for o in [o1, o2, o3] {
            t.apply(o).unwrap();
        }
        // Once applied, it is answered from the dedup window.
        assert_eq!(
            s.assign(&t, upd(2, "m", set("a", "1"))),
            Ok(Assigned::Done(Outcome::Applied { version: 2 }))
        );
        // The id of an applied update, reused for a different one.
        let e = s.assign(&t, upd(2, "m", set("a", "2"))).unwrap_err();
        assert_eq!(
            e,
            Refusal::IdReused {
                id: UpdateId(2),
                map: "m".into(),
                first: "the one at version 2 (applied)".into()
            }
        );
        assert!(
            e.to_string().starts_with(&format!(
                "update id {} was already used for a different update of map \"m\": the one \
                 at version 2 (applied). Send a new update without --id",
                UpdateId(2)
            )),
            "{e}"
        );
        let o4 = ordered(s.assign(&t, upd(4, "m", set("b", "1"))));
        assert_eq!(o4.version, 3);
        // Map n's applied update is forgotten at the next update to n.
        assert_eq!(s.in_flight(), 2);
    }

    #[test]
    fn refuses_unknown_maps_and_respects_map_bounds() {
        let mut t = Tables::new();
        let mut s = Sequencer::new(1, &BTreeMap::new(), 10_000);
        assert_eq!(
            s.assign(&t, upd(1, "typo", set("a", "1"))),
            Err(Refusal::NoSuchMap { map: "typo".into() })
        );
        assert!(t.map("typo").is_none(), "no stream was started");
        // Creation in flight counts as live, for bounds and for later ops.
        let o = ordered(s.assign(&t, upd(2, "m", Op::CreateMap)));
        ordered(s.assign(&t, upd(3, "m", set("a", "1"))));
        t.apply(o).unwrap();
        for i in 1..MAX_MAPS {
            let o = ordered(s.assign(&t, upd(100 + i as u128, &format!("m{i}"), Op::CreateMap)));
            if i % 2 == 0 {
                t.apply(o).unwrap();
            }
        }
        let e = s.assign(&t, upd(9, "one-too-many", Op::CreateMap));
        assert_eq!(
            e,
            Err(Refusal::TooManyMaps {
                map: "one-too-many".into(),
                live: MAX_MAPS
            })
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "there are already 256 maps, the limit: drop a map before creating \"one-too-many\""
        );
        assert!(matches!(
            s.assign(&t, upd(10, "m", set("", "x"))),
            Err(Refusal::Invalid(_))
        ));
    }

    #[test]
    fn waits_for_stated_versions_and_bounds_in_flight() {
        let mut t = Tables::new();
        step(&mut t, "m", 1, Op::CreateMap);
        let stated = BTreeMap::from([("m".to_owned(), 3)]);
        let mut s = Sequencer::new(1, &stated, 2);
        assert_eq!(
            s.assign(&t, upd(5, "m", set("a", "1"))),
            Err(Refusal::CatchingUp {
                map: "m".into(),
                have: 1,
                need: 3
            })
        );
        step(&mut t, "m", 2, set("x", "1"));
        step(&mut t, "m", 3, set("x", "2"));
        assert_eq!(ordered(s.assign(&t, upd(5, "m", set("a", "1")))).version, 4);
        assert_eq!(ordered(s.assign(&t, upd(6, "m", set("a", "2")))).version, 5);
        assert_eq!(
            s.assign(&t, upd(7, "m", set("a", "3"))),
            Err(Refusal::Busy { in_flight: 2 })
        );
    }
}
