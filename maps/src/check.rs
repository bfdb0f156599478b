//! The maps checker: verifies the guarantees of replicated tables on a
//! recorded history of a run (the simulator's, or a test's), and reports
//! each breach as a typed [`Violation`].
//!
//! The properties (DESIGN.md, "Replicated tables", and issue 6):
//! 1. **Agreement**: all replicas that reach version k of a map hold
//!    identical content at k (same content digest and chain digest).
//! 2. **One update per version**: every record of version k of a map (an
//!    application, an acknowledgement) names the same update id.
//! 3. **Durability**: no acknowledged update is lost: every replica live at
//!    the end holds the map at least at the acknowledged version (with 2,
//!    the very update acknowledged).
//! 4. **Primary only**: every update was ordered by a server whose gc-core
//!    view was the primary component when it multicast the update.
//! 5. **Convergence**: after the heal, every live replica holds every map at
//!    the same version with the same content.

use std::collections::{BTreeMap, BTreeSet};

/// One recorded fact. Hosts are the driver's numbers (stable across
/// restarts: a host's disk survives).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Host `host` holds `map` at `version` (after applying an update,
    /// installing a snapshot, or recovering from its disk).
    Holds {
        /// The host.
        host: u32,
        /// The map.
        map: String,
        /// The version.
        version: u64,
        /// The chain digest.
        chain: u64,
        /// The content digest ([`crate::MapState::content_digest`]).
        digest: u64,
    },
    /// Update `id` took `version` of `map` (seen applied somewhere).
    Took {
        /// The map.
        map: String,
        /// The version.
        version: u64,
        /// The update.
        id: u128,
    },
    /// Host `host` multicast update `id` as `version` of `map`; `primary`
    /// says whether gc-core called its view primary at that moment.
    Ordered {
        /// The host.
        host: u32,
        /// The map.
        map: String,
        /// The version.
        version: u64,
        /// The update.
        id: u128,
        /// gc-core's primary flag of the sender's view.
        primary: bool,
    },
    /// A client was told update `id` took `version` of `map`.
    Acked {
        /// The map.
        map: String,
        /// The version.
        version: u64,
        /// The update.
        id: u128,
    },
    /// Host `host`, live at the end after the heal, holds `map` at
    /// `version` with `digest`.
    Final {
        /// The host.
        host: u32,
        /// The map.
        map: String,
        /// The version.
        version: u64,
        /// The content digest.
        digest: u64,
    },
}

/// A breach of one of the properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Property 1: two hosts hold different content at one version.
    Divergent {
        /// The map.
        map: String,
        /// The version.
        version: u64,
        /// One host and its (digest, chain).
        a: (u32, u64, u64),
        /// Another host and its (digest, chain).
        b: (u32, u64, u64),
    },
    /// Property 2: two updates at one version.
    TwoUpdates {
        /// The map.
        map: String,
        /// The version.
        version: u64,
        /// The update ids.
        ids: (u128, u128),
    },
    /// Property 3: an acknowledged update is missing from a live host.
    AckLost {
        /// The map.
        map: String,
        /// The version acknowledged.
        version: u64,
        /// The update.
        id: u128,
        /// The host.
        host: u32,
        /// The version it holds.
        holds: u64,
    },
    /// Property 4: an update ordered outside the primary component.
    OutsidePrimary {
        /// The host.
        host: u32,
        /// The map.
        map: String,
        /// The version.
        version: u64,
    },
    /// Property 5: live hosts differ at the end.
    NotConverged {
        /// The map.
        map: String,
        /// One host and its (version, digest).
        a: (u32, u64, u64),
        /// Another host and its (version, digest).
        b: (u32, u64, u64),
    },
}

/// Checks a history; an empty result means every property holds.
pub fn check(records: &[Record]) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut held: BTreeMap<(&str, u64), (u32, u64, u64)> = BTreeMap::new();
    let mut ids: BTreeMap<(String, u64), u128> = BTreeMap::new();
    let mut finals: BTreeMap<&str, BTreeMap<u32, (u64, u64)>> = BTreeMap::new();
    let mut final_hosts: BTreeSet<u32> = BTreeSet::new();
    let mut acks = Vec::new();
    let mut reported: BTreeSet<(String, u64)> = BTreeSet::new();
    for r in records {
        match r {
            Record::Holds {
                host,
                map,
                version,
                chain,
                digest,
            } => match held.get(&(map.as_str(), *version)) {
                Some(&(h, d, c)) if (d, c) != (*digest, *chain) => out.push(Violation::Divergent {
                    map: map.clone(),
                    version: *version,
                    a: (h, d, c),
                    b: (*host, *digest, *chain),
                }),
                Some(_) => {}
                None => {
                    held.insert((map, *version), (*host, *digest, *chain));
                }
            },
            Record::Took { map, version, id } => {
                one_id(&mut out, &mut ids, &mut reported, map, *version, *id)
            }
            Record::Ordered {
                host,
                map,
                version,
                primary,
                ..
            } => {
                if !primary {
                    out.push(Violation::OutsidePrimary {
                        host: *host,
                        map: map.clone(),
                        version: *version,
                    });
                }
            }
            Record::Acked { map, version, id } => {
                one_id(&mut out, &mut ids, &mut reported, map, *version, *id);
                acks.push((map, *version, *id));
            }
            Record::Final {
                host,
                map,
                version,
                digest,
            } => {
                final_hosts.insert(*host);
                finals
                    .entry(map)
                    .or_default()
                    .insert(*host, (*version, *digest));
            }
        }
    }
    for (map, version, id) in acks {
        for &host in &final_hosts {
            let holds = finals
                .get(map.as_str())
                .and_then(|f| f.get(&host))
                .map_or(0, |&(v, _)| v);
            if holds < version {
                out.push(Violation::AckLost {
                    map: map.clone(),
                    version,
                    id,
                    host,
                    holds,
                });
            }
        }
    }
    for (map, by_host) in &finals {
        let mut first: Option<(u32, u64, u64)> = None;
        for &host in &final_hosts {
            let (v, d) = by_host.get(&host).copied().unwrap_or((0, 0));
            match first {
                None => first = Some((host, v, d)),
                Some(a) if (a.1, a.2) != (v, d) => {
                    out.push(Violation::NotConverged {
                        map: (*map).to_owned(),
                        a,
                        b: (host, v, d),
                    });
                    break;
                }
                Some(_) => {}
            }
        }
    }
    out
}

/// Property 2 for one record: the first id seen at a version is the only
/// one allowed there (reported once per version).
fn one_id(
    out: &mut Vec<Violation>,
    ids: &mut BTreeMap<(String, u64), u128>,
    reported: &mut BTreeSet<(String, u64)>,
    map: &str,
    version: u64,
    id: u128,
) {
    let key = (map.to_owned(), version);
    match ids.get(&key) {
        Some(&first) if first != id => {
            if reported.insert(key) {
                out.push(Violation::TwoUpdates {
                    map: map.to_owned(),
                    version,
                    ids: (first, id),
                });
            }
        }
        Some(_) => {}
        None => {
            ids.insert(key, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(host: u32, version: u64, digest: u64) -> Record {
        Record::Holds {
            host,
            map: "m".into(),
            version,
            chain: version * 10,
            digest,
        }
    }

    fn fin(host: u32, version: u64, digest: u64) -> Record {
        Record::Final {
            host,
            map: "m".into(),
            version,
            digest,
        }
    }

    fn good() -> Vec<Record> {
        vec![
            holds(1, 1, 100),
            holds(2, 1, 100),
            Record::Took {
                map: "m".into(),
                version: 1,
                id: 7,
            },
            Record::Ordered {
                host: 1,
                map: "m".into(),
                version: 1,
                id: 7,
                primary: true,
            },
            Record::Acked {
                map: "m".into(),
                version: 1,
                id: 7,
            },
            fin(1, 1, 100),
            fin(2, 1, 100),
        ]
    }

    #[test]
    fn a_good_history_passes() {
        assert_eq!(check(&good()), vec![]);
    }

    #[test]
    fn divergent_content_is_caught() {
        let mut h = good();
        h.push(holds(3, 1, 999));
        assert!(matches!(
            check(&h)[..],
            [Violation::Divergent {
                version: 1,
                b: (3, 999, _),
                ..
            }]
        ));
    }

    #[test]
    fn two_updates_at_one_version_are_caught() {
        let mut h = good();
        h.push(Record::Acked {
            map: "m".into(),
            version: 1,
            id: 8,
        });
        assert!(matches!(
            check(&h)[..],
            [Violation::TwoUpdates { ids: (7, 8), .. }]
        ));
    }

    #[test]
    fn a_lost_acknowledged_update_is_caught() {
        let mut h = good();
        h.push(Record::Acked {
            map: "m".into(),
            version: 2,
            id: 9,
        });
        let v = check(&h);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v.iter().all(|x| matches!(
            x,
            Violation::AckLost {
                version: 2,
                id: 9,
                holds: 1,
                ..
            }
        )));
        // A host that lost its map entirely (a wiped disk) is caught too.
        let mut h = good();
        h.retain(|r| !matches!(r, Record::Final { host: 2, .. }));
        h.push(Record::Final {
            host: 2,
            map: "other".into(),
            version: 1,
            digest: 1,
        });
        assert!(check(&h).iter().any(|x| matches!(
            x,
            Violation::AckLost {
                host: 2,
                holds: 0,
                ..
            }
        )));
    }

    #[test]
    fn an_update_outside_the_primary_is_caught() {
        let mut h = good();
        h.push(Record::Ordered {
            host: 3,
            map: "m".into(),
            version: 2,
            id: 10,
            primary: false,
        });
        assert_eq!(
            check(&h),
            vec![Violation::OutsidePrimary {
                host: 3,
                map: "m".into(),
                version: 2
            }]
        );
    }

    #[test]
    fn hosts_that_do_not_converge_are_caught() {
        let mut h = good();
        h.push(fin(3, 0, 0));
        h.retain(|r| !matches!(r, Record::Acked { .. }));
        assert!(matches!(
            check(&h)[..],
            [Violation::NotConverged { b: (3, 0, 0), .. }]
        ));
    }
}
