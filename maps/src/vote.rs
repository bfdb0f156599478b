//! The maps layer's own chain of primary views: which gc-core primary view
//! may act as the maps primary component.
//!
//! gc-core calls a view primary when it holds a majority of the previous
//! gc-core primary. That is not enough for the maps: a gc-core primary view
//! whose maps state exchange was cut off never told its members the latest
//! heads, so a majority of it may hold none of the latest updates. The maps
//! layer therefore runs dynamic linear voting with ambiguous sessions
//! (Yeger Lotem, Keidar and Dolev; the same rule as gc-core's `primary.rs`)
//! over *its own* sessions:
//!
//! - A **session** is a gc-core primary view (its primary number and its
//!   hosts) whose members all stated their heads and which passed the rule
//!   below. A member records it as **ambiguous** on disk ([`Votes`], file
//!   [`VOTES_FILE`]) *before* it says it has caught up with the chosen
//!   history (the `Caught` message).
//! - It is **complete** when every member's `Caught` was delivered in its
//!   regular configuration: every member then holds the chosen history on
//!   disk. A member that sees completion records it as `last` and forgets its
//!   ambiguous sessions (they are older and superseded). Only then does the
//!   primary server order updates.
//! - **The rule**: a gc-core primary view may become a session when its hosts
//!   hold a strict majority of the hosts of the newest `last` its members
//!   report (initially the configured hosts, number 0) *and* of every
//!   ambiguous session newer than it that any member reports.
//!
//! Why complete sessions form one chain, each holding a majority of the one
//! before: let C be complete and Q the next session to complete. Q holds a
//! majority of the newest `last` K its members reported; K is C or older. If
//! K is older, the complete session C' after K holds a majority of K, so Q
//! and C' share a host x. x recorded C' (as ambiguous) before C' could
//! complete, and forgets it only on completing a session at least as new,
//! which would make K at least C'. So x reported C' as ambiguous and Q also
//! holds a majority of C'. Induction up to C.
//!
//! Records are per host (node id), on the host's disk: a restarted process
//! (a new incarnation) keeps them.

use crate::storage::Storage;
use crate::wal::WalError;
use gc_core::NodeId;
use serde::{Deserialize, Serialize};
use std::io;

/// The file that holds this host's [`Votes`].
pub const VOTES_FILE: &str = "maps.votes";
const VOTES_MAGIC: &[u8; 8] = b"FLMAPVOT";
/// Most ambiguous sessions a host keeps. Attempts with the same hosts are
/// interchangeable for the rule (only the newest counts), so this bounds the
/// distinct host sets; past it a host takes part in no new session (progress
/// waits until a session completes, safety does not change).
pub const MAX_AMBIGUOUS: usize = 64;
/// Most hosts in a session.
pub const MAX_SESSION_HOSTS: usize = 4096;

/// A maps primary session: a gc-core primary view's number and its hosts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Session {
    /// The gc-core primary number of the view.
    pub number: u64,
    /// Its hosts (node ids), sorted, without repeats.
    pub hosts: Vec<NodeId>,
}

impl Session {
    /// A session of `hosts` numbered `number` (hosts sorted and deduplicated).
    pub fn new(number: u64, hosts: impl IntoIterator<Item = NodeId>) -> Self {
        let mut hosts: Vec<NodeId> = hosts.into_iter().collect();
        hosts.sort_unstable();
        hosts.dedup();
        Session { number, hosts }
    }
}

/// True when `nodes` holds a strict majority of `of`.
fn has_majority(nodes: &[NodeId], of: &[NodeId]) -> bool {
    let common = of.iter().filter(|n| nodes.contains(n)).count();
    common * 2 > of.len()
}

/// One host's voting record, persisted in [`VOTES_FILE`] and stated in the
/// state exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Votes {
    /// The newest session this host saw complete (initially the configured
    /// hosts, number 0).
    pub last: Session,
    /// Sessions newer than `last` this host recorded without seeing them
    /// complete.
    pub ambiguous: Vec<Session>,
    /// The newest session whose chosen history this host took on (it said
    /// so with `Caught`); the updates it keeps since are that session's. The
    /// state exchange follows the history of the highest ballot, as Paxos
    /// follows the value accepted at the highest ballot: an update's epoch
    /// alone would let an old session's unapplied updates beat a history a
    /// later session adopted and committed on (simulator seed 6017).
    pub ballot: u64,
}

impl Votes {
    /// A fresh host's record: the configured hosts as session 0.
    pub fn initial(hosts: &[NodeId]) -> Self {
        Votes {
            last: Session::new(0, hosts.iter().copied()),
            ambiguous: Vec::new(),
            ballot: 0,
        }
    }

    /// Whether a view of `hosts` may become a session, given what every
    /// member stated. Every member evaluates it on the same statements.
    pub fn allows<'a>(hosts: &[NodeId], stated: impl IntoIterator<Item = &'a Votes>) -> bool {
        let stated: Vec<&Votes> = stated.into_iter().collect();
        let Some(known) = stated.iter().map(|v| &v.last).max() else {
            return false;
        };
        has_majority(hosts, &known.hosts)
            && stated
                .iter()
                .flat_map(|v| v.ambiguous.iter())
                .filter(|a| a.number > known.number)
                .all(|a| has_majority(hosts, &a.hosts))
    }

    /// Records an attempt at `s`. False (nothing changed) when the record is
    /// full: the host must not take part.
    pub fn attempt(&mut self, s: Session) -> bool {
        if s.number <= self.last.number {
            return false;
        }
        // Only the newest attempt of a host set counts for the rule.
        self.ambiguous
            .retain(|a| a.hosts != s.hosts || a.number > s.number);
        if self.ambiguous.iter().any(|a| a.hosts == s.hosts) {
            return true;
        }
        if self.ambiguous.len() >= MAX_AMBIGUOUS {
            return false;
        }
        self.ambiguous.push(s);
        self.ambiguous.sort();
        true
    }

    /// `s` completed: it is the newest session known, older ones are
    /// superseded.
    pub fn complete(&mut self, s: Session) {
        if s.number > self.last.number {
            self.ambiguous.retain(|a| a.number > s.number);
            self.last = s;
        }
    }

    /// Whether the record is within its bounds (a peer's statement).
    pub fn within_bounds(&self) -> bool {
        self.ambiguous.len() <= MAX_AMBIGUOUS
            && std::iter::once(&self.last)
                .chain(&self.ambiguous)
                .all(|s| s.hosts.len() <= MAX_SESSION_HOSTS)
    }

    /// Loads the record from `storage`; `None` when there is none yet.
    pub fn load<S: Storage>(storage: &S) -> Result<Option<Votes>, WalError> {
        let names = storage.list().map_err(|e| io_err(storage, "listing", e))?;
        if !names.iter().any(|n| n == VOTES_FILE) {
            return Ok(None);
        }
        let data = storage
            .read(VOTES_FILE)
            .map_err(|e| io_err(storage, "reading", e))?;
        let corrupt = |reason: String| WalError::Corrupt {
            file: storage.describe(VOTES_FILE),
            offset: 0,
            reason,
        };
        // Written atomically, so it is whole: anything else is damage.
        let body = data
            .strip_prefix(VOTES_MAGIC.as_slice())
            .ok_or_else(|| corrupt("not a maps voting record (bad magic)".into()))?;
        if body.len() < 4 {
            return Err(corrupt("shorter than its checksum".into()));
        }
        let (crc, body) = body.split_at(4);
        let mut c = [0u8; 4];
        c.copy_from_slice(crc);
        if u32::from_le_bytes(c) != crc32fast::hash(body) {
            return Err(corrupt("checksum mismatch".into()));
        }
        let votes: Votes = postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
        if !votes.within_bounds() {
            return Err(corrupt("over its bounds".into()));
        }
        Ok(Some(votes))
    }

    /// Writes the record durably (write, fsync, rename).
    pub fn store<S: Storage>(&self, storage: &mut S) -> Result<(), WalError> {
        let body = postcard::to_stdvec(self).map_err(|e| WalError::Io {
            op: "encoding",
            file: storage.describe(VOTES_FILE),
            source: io::Error::other(e),
        })?;
        let mut bytes = VOTES_MAGIC.to_vec();
        bytes.extend(crc32fast::hash(&body).to_le_bytes());
        bytes.extend(body);
        storage
            .write_atomic(VOTES_FILE, &bytes)
            .map_err(|e| io_err(storage, "writing", e))
    }
}

fn io_err<S: Storage>(storage: &S, op: &'static str, source: io::Error) -> WalError {
    WalError::Io {
        op,
        file: storage.describe(VOTES_FILE),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemDisk;

    #[test]
    fn a_majority_of_the_last_and_of_every_newer_ambiguous_session() {
        let init = Votes::initial(&[1, 2, 3, 4, 5]);
        assert!(Votes::allows(&[1, 2, 3], [&init]));
        assert!(!Votes::allows(&[4, 5], [&init]));
        // The seed-1044 shape: {1,2,3} completed as 5; {1,2,3,4,5} (6) was
        // attempted and cut off. {3,4,5} holds a majority of 6 but not of 5.
        let mut a = init.clone();
        a.complete(Session::new(5, [1, 2, 3]));
        let mut b = a.clone();
        assert!(b.attempt(Session::new(6, [1, 2, 3, 4, 5])));
        let fresh4 = init.clone();
        assert!(!Votes::allows(&[3, 4, 5], [&b, &fresh4, &fresh4]));
        // A host that missed the cut-off attempt still reports 5.
        assert!(!Votes::allows(&[3, 4, 5], [&a, &fresh4, &fresh4]));
        // {1,2,4}: majority of 5 and of 6.
        assert!(Votes::allows(&[1, 2, 4], [&b, &a, &fresh4]));
        // Completion forgets older attempts.
        b.complete(Session::new(7, [1, 2, 4]));
        assert!(b.ambiguous.is_empty());
        assert_eq!(b.last.number, 7);
    }

    #[test]
    fn attempts_of_one_host_set_are_kept_once_and_bounded() {
        let mut v = Votes::initial(&[1, 2, 3]);
        assert!(v.attempt(Session::new(2, [1, 2])));
        assert!(v.attempt(Session::new(3, [1, 2])));
        assert_eq!(v.ambiguous, vec![Session::new(3, [1, 2])]);
        assert!(!v.attempt(Session::new(0, [1])), "not newer than last");
        for i in 0..MAX_AMBIGUOUS as u32 - 1 {
            assert!(v.attempt(Session::new(10 + u64::from(i), [100 + i])));
        }
        assert!(!v.attempt(Session::new(1000, [7])), "full");
    }

    #[test]
    fn stored_and_loaded_and_damage_is_named() {
        let disk = MemDisk::new();
        let mut s = disk.storage();
        assert_eq!(Votes::load(&s).unwrap(), None);
        let mut v = Votes::initial(&[1, 2, 3]);
        v.attempt(Session::new(4, [1, 2]));
        v.store(&mut s).unwrap();
        assert_eq!(Votes::load(&s).unwrap(), Some(v));
        let mut bytes = disk.file(VOTES_FILE).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        disk.set_file(VOTES_FILE, bytes);
        assert!(matches!(Votes::load(&s), Err(WalError::Corrupt { .. })));
    }
}
