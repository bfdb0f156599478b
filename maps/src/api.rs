//! The request/response vocabulary between a client (the `monitor`) and a
//! server (`mgmtd`) for maps: what `monitor map create|drop|set|del|get|
//! list|history|load` send and what they get back. Serde types, bounded:
//! [`Request::validate`] checks a request before a server acts on it, and
//! every list a server returns is capped by the request's limit and by
//! [`MAX_LIST`].

use crate::bounds::{validate_key, validate_map_name, BoundError, MAX_BATCH_OPS, MAX_UPDATE_BYTES};
use crate::primary::Refusal;
use crate::table::Entry;
use crate::update::{Op, Outcome, Update, UpdateId};
use gc_core::Pid;
use serde::{Deserialize, Serialize};

/// Identifies a client connection to the server, chosen by the driver
/// (`mgmtd`), so that replies find their way back.
pub type ClientId = u64;

/// Most entries or history records one response carries; list more with
/// [`Request::List::after`] or [`Request::History::from`].
pub const MAX_LIST: u32 = 10_000;

/// What a client asks a server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Change a map: create, drop, set, del, compare-and-set, or a batch
    /// (`load`). The client chooses the update id and sends the same id
    /// again when it retries after [`Response::Unknown`].
    Update(Update),
    /// Read one key.
    Get {
        /// The map.
        map: String,
        /// The key.
        key: String,
        /// Read through the primary server (linearizable); refused outside
        /// the primary component.
        consistent: bool,
    },
    /// Read a map's entries in key order, after `after`, at most `limit`.
    List {
        /// The map.
        map: String,
        /// Start after this key (exclusive); `None` from the first.
        after: Option<String>,
        /// At most this many entries (capped at [`MAX_LIST`]).
        limit: u32,
        /// Read through the primary server.
        consistent: bool,
    },
    /// The maps this server knows, with their versions.
    Maps,
    /// The updates a map took from version `from`, as far as this server
    /// still keeps them (older ones were compacted).
    History {
        /// The map.
        map: String,
        /// The first version wanted.
        from: u64,
        /// At most this many (capped at [`MAX_LIST`]).
        limit: u32,
    },
}

impl Request {
    /// Checks names, keys and sizes against their bounds.
    pub fn validate(&self) -> Result<(), BoundError> {
        match self {
            Request::Update(u) => u.validate(),
            Request::Get { map, key, .. } => {
                validate_map_name(map)?;
                validate_key(key)
            }
            Request::List { map, after, .. } => {
                validate_map_name(map)?;
                match after {
                    Some(k) => validate_key(k),
                    None => Ok(()),
                }
            }
            Request::History { map, .. } => validate_map_name(map),
            Request::Maps => Ok(()),
        }
    }

    /// Whether the request changes a map.
    pub fn is_update(&self) -> bool {
        matches!(self, Request::Update(_))
    }
}

/// One map as [`Request::Maps`] lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapInfo {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: u64,
    /// Whether it exists (dropped maps keep their version).
    pub live: bool,
    /// Number of entries.
    pub entries: u64,
}

/// One update of a map's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The version it took.
    pub version: u64,
    /// Its id.
    pub id: UpdateId,
    /// What it did.
    pub op: Op,
    /// Its outcome.
    pub outcome: Outcome,
}

/// Whether a read may be stale, and why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshness {
    /// The server is in the primary component, has finished the state
    /// exchange and has caught up with the map: its answer is as fresh as
    /// the primary component's at some recent point. A consistent read is
    /// always `false` here: it came from the primary server in total order.
    pub stale: bool,
    /// The server answering is in the primary component.
    pub in_primary: bool,
}

/// What a server answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The update was ordered and applied (or rejected by the state
    /// machine: see the outcome). `duplicate`: its id had been applied
    /// before; this is the first outcome.
    Outcome {
        /// The update's id.
        id: UpdateId,
        /// The map.
        map: String,
        /// What became of it.
        outcome: Outcome,
        /// It had been applied before.
        duplicate: bool,
    },
    /// A view change happened while the update was on its way: it may or may
    /// not be applied. Retry with the same id: a second application is
    /// impossible, and the retry answers with the first outcome.
    Unknown {
        /// The update's id.
        id: UpdateId,
    },
    /// The request was refused; nothing changed.
    Error(RequestError),
    /// One key.
    Value {
        /// The map.
        map: String,
        /// The key.
        key: String,
        /// Its value and version, `None` if absent.
        entry: Option<Entry>,
        /// The map's version at the read.
        version: u64,
        /// Whether it may be stale.
        freshness: Freshness,
    },
    /// Entries of a map.
    Listing {
        /// The map.
        map: String,
        /// The map's version at the read.
        version: u64,
        /// The entries, in key order.
        entries: Vec<(String, Entry)>,
        /// More entries follow the last one.
        more: bool,
        /// Whether it may be stale.
        freshness: Freshness,
    },
    /// The maps this server knows.
    Maps {
        /// The maps, by name.
        maps: Vec<MapInfo>,
        /// Whether it may be stale.
        freshness: Freshness,
    },
    /// A map's history.
    History {
        /// The map.
        map: String,
        /// The oldest version this server still keeps (versions before it
        /// were compacted).
        first_kept: u64,
        /// The updates, in version order.
        entries: Vec<HistoryEntry>,
    },
}

/// Why a server refused a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RequestError {
    /// The request breaks a bound.
    #[error("{0}")]
    Invalid(BoundError),
    /// The server is not in the primary component: updates and consistent
    /// reads are refused; plain reads answer with a stale flag.
    #[error("this server is not in the primary component, so it cannot {what}; it can reach {}", show_members(.members))]
    NotPrimary {
        /// What was refused ("update a map", "read consistently").
        what: String,
        /// The members of its current view (the hosts it can reach).
        members: Vec<Pid>,
    },
    /// The primary component is forming (its members are exchanging their
    /// versions). Retry shortly.
    #[error("the primary component is settling after a membership change: retry shortly")]
    Settling,
    /// The primary server refused the update.
    #[error("{0}")]
    Refused(Refusal),
    /// The map does not exist here.
    #[error("map {map:?} does not exist")]
    NoSuchMap {
        /// The map.
        map: String,
    },
    /// A consistent read was cut off by a view change. Retry.
    #[error("a membership change interrupted the consistent read: retry")]
    Interrupted,
    /// The server holds too many requests in progress. Retry shortly.
    #[error("the server has {pending} requests in progress, the limit: retry shortly")]
    Busy {
        /// Requests in progress.
        pending: usize,
    },
    /// The server's storage failed; it is stopping.
    #[error("the server's map storage failed: {0}")]
    Storage(String),
}

fn show_members(members: &[Pid]) -> String {
    if members.is_empty() {
        return "no other member".to_owned();
    }
    let names: Vec<String> = members.iter().map(Pid::to_string).collect();
    names.join(", ")
}

/// Splits a bulk load of `entries` into batches: each a [`Op::Batch`] of at
/// most `max_ops` operations (capped at [`MAX_BATCH_OPS`]) and under
/// [`MAX_UPDATE_BYTES`]. With `replace`, the first batch drops and creates
/// the map, so with one batch the map's content is replaced atomically;
/// with several, readers may see the load in progress between batches.
/// Refuses an entry that breaks a bound, naming it.
pub fn load_batches(
    entries: &[(String, String)],
    replace: bool,
    max_ops: usize,
) -> Result<Vec<Op>, BoundError> {
    let max_ops = max_ops.clamp(1, MAX_BATCH_OPS);
    let mut batches = Vec::new();
    let mut cur: Vec<Op> = if replace {
        vec![Op::DropMap, Op::CreateMap]
    } else {
        Vec::new()
    };
    // Keep well under the update bound: leave room for the batch itself.
    let budget = MAX_UPDATE_BYTES - 1024;
    let mut bytes: usize = cur.iter().map(Op::counted_bytes).sum();
    for (key, value) in entries {
        let op = Op::Set {
            key: key.clone(),
            value: value.clone(),
        };
        op.validate()?;
        let n = op.counted_bytes();
        if !cur.is_empty() && (cur.len() >= max_ops || bytes + n > budget) {
            batches.push(Op::Batch(std::mem::take(&mut cur)));
            bytes = 0;
        }
        bytes += n;
        cur.push(op);
    }
    if !cur.is_empty() {
        batches.push(Op::Batch(cur));
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_batches_split_and_replace() {
        let entries: Vec<(String, String)> =
            (0..25).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        let b = load_batches(&entries, true, 10).unwrap();
        assert_eq!(b.len(), 3);
        match &b[0] {
            Op::Batch(ops) => {
                assert_eq!(ops[..2], [Op::DropMap, Op::CreateMap]);
                assert_eq!(ops.len(), 10);
            }
            other => panic!("{other:?}"),
        }
        for op in &b {
            let u = Update {
                id: UpdateId(1),
                map: "m".into(),
                op: op.clone(),
            };
            u.validate().unwrap();
        }
        let bad = vec![("a\nb".to_owned(), String::new())];
        assert!(load_batches(&bad, false, 10).is_err());
        // A large load stays under the update bound.
        let big: Vec<(String, String)> = (0..300)
            .map(|i| (format!("k{i}"), "x".repeat(60_000)))
            .collect();
        let b = load_batches(&big, false, 100_000).unwrap();
        assert!(b.len() >= 3);
        assert!(b.iter().all(|op| op.counted_bytes() <= MAX_UPDATE_BYTES));
    }

    #[test]
    fn errors_name_the_reachable_members() {
        let e = RequestError::NotPrimary {
            what: "update a map".into(),
            members: vec![Pid::new(4, 1), Pid::new(5, 2)],
        };
        assert_eq!(
            e.to_string(),
            "this server is not in the primary component, so it cannot update a map; it can reach n4.1, n5.2"
        );
        let r = Request::Get {
            map: "hosts".into(),
            key: "".into(),
            consistent: false,
        };
        assert_eq!(r.validate(), Err(BoundError::KeyEmpty));
        let bytes = postcard::to_stdvec(&Response::Unknown { id: UpdateId(3) }).unwrap();
        let back: Response = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, Response::Unknown { id: UpdateId(3) });
    }
}
