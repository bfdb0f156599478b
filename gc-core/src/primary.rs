//! The primary component, by dynamic linear voting with ambiguous attempts
//! (Yeger Lotem, Keidar and Dolev).
//!
//! Every process persists the last primary component it knows was formed and
//! the attempts to form one that it entered but did not see complete
//! ("ambiguous"). A new view may try to become primary when it holds a
//! majority of the hosts of the last known primary **and** of every ambiguous
//! attempt newer than it: any attempt that did form somewhere was entered by
//! all of its members, so at least one of them is in any view that holds a
//! majority of the primary before it, and reports it. By induction over the
//! chain of formed primaries, a new primary always holds a majority of the
//! one formed just before it, and two disjoint components can never both be
//! primary.
//!
//! Forming takes two rounds inside the view change: every member records the
//! attempt as ambiguous (persisted) and acknowledges; the representative,
//! having every acknowledgement, records the attempt as formed (persisted)
//! and commits; a member that receives the commit records it as formed. A
//! member cut off before the commit keeps the attempt as ambiguous.
//!
//! An ambiguous attempt is resolved as *not formed* when its representative
//! (the same host, in any incarnation, since its state is persisted) is
//! present and reports a last primary older than the attempt: it never
//! committed, so nobody could have installed it.

use crate::types::{NodeId, ViewId};
use crate::wire::MAX_AMBIGUOUS;
use serde::{Deserialize, Serialize};

/// A view stops trying to become primary while this many attempts are
/// ambiguous: joins and installs carry them all, and the decoder takes at
/// most [`MAX_AMBIGUOUS`]. Half leaves room for the attempts a member enters
/// after its join was sent. Safety is untouched; only progress waits for an
/// ambiguous attempt to be resolved.
pub const AMBIGUOUS_SOFT_LIMIT: usize = MAX_AMBIGUOUS / 2;

/// One primary component, formed or attempted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PrimaryRecord {
    /// Position in the chain of primary components; 0 is the configured
    /// initial cluster.
    pub num: u64,
    /// The view that formed it (the default id for the initial cluster).
    pub view: ViewId,
    /// Its hosts, sorted.
    pub nodes: Vec<NodeId>,
}

/// What a process must persist about the primary component, and give back at
/// its next start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryState {
    /// The latest primary component known to have formed.
    pub last: PrimaryRecord,
    /// Attempts newer than `last` that this process entered without seeing
    /// them complete.
    pub ambiguous: Vec<PrimaryRecord>,
}

impl PrimaryState {
    /// The state of a process that has never run: the initial primary
    /// component is the configured set of hosts. With no hosts configured no
    /// view is ever primary.
    pub fn initial(mut bootstrap: Vec<NodeId>) -> Self {
        bootstrap.sort_unstable();
        bootstrap.dedup();
        PrimaryState {
            last: PrimaryRecord {
                num: 0,
                view: ViewId::default(),
                nodes: bootstrap,
            },
            ambiguous: Vec::new(),
        }
    }

    /// Learns that `rec` formed: it becomes the last primary if newer, and
    /// attempts it supersedes are forgotten.
    pub(crate) fn adopt(&mut self, rec: &PrimaryRecord) -> bool {
        let mut changed = false;
        if rec.num > self.last.num {
            self.last = rec.clone();
            changed = true;
        }
        let before = self.ambiguous.len();
        let last = self.last.num;
        self.ambiguous.retain(|a| a.num > last);
        changed || before != self.ambiguous.len()
    }

    /// Records an attempt this process entered.
    pub(crate) fn enter_attempt(&mut self, rec: &PrimaryRecord) -> bool {
        if rec.num <= self.last.num
            || self
                .ambiguous
                .iter()
                .any(|a| a.equivalent(rec) && a.view >= rec.view)
        {
            return false;
        }
        self.ambiguous.retain(|a| !a.equivalent(rec));
        self.ambiguous.push(rec.clone());
        self.ambiguous.sort();
        true
    }
}

impl PrimaryRecord {
    /// Two attempts are equivalent when they agree on everything the rule
    /// looks at: the number (the chain and the "newer than known" filter),
    /// the representative's host (the only host whose report resolves it)
    /// and the hosts (the majority a later attempt must hold). Keeping one of
    /// each class bounds the list when one representative's attempts keep
    /// being cut off: without it every member kept one record per try.
    pub(crate) fn equivalent(&self, other: &PrimaryRecord) -> bool {
        self.num == other.num
            && self.view.coordinator.node == other.view.coordinator.node
            && self.nodes == other.nodes
    }
}

/// Keeps the newest record of each equivalence class; `v` must be sorted.
fn dedup_equivalent(v: &mut Vec<PrimaryRecord>) {
    let mut kept: Vec<PrimaryRecord> = Vec::with_capacity(v.len());
    for rec in v.drain(..).rev() {
        if !kept.iter().any(|k| k.equivalent(&rec)) {
            kept.push(rec);
        }
    }
    kept.sort();
    *v = kept;
}

/// True when `nodes` holds a strict majority of `of`.
pub(crate) fn has_majority(nodes: &[NodeId], of: &[NodeId]) -> bool {
    if of.is_empty() {
        return false;
    }
    let common = of.iter().filter(|n| nodes.binary_search(n).is_ok()).count();
    2 * common > of.len()
}

/// What a view change decides about the primary component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) known: PrimaryRecord,
    pub(crate) ambiguous: Vec<PrimaryRecord>,
    pub(crate) attempt: Option<PrimaryRecord>,
}

/// Decides, from what every member of the new view reported, whether the view
/// `view` with hosts `nodes` (sorted) may try to become primary.
///
/// `reports` gives, per member host, its last primary and ambiguous attempts.
pub(crate) fn decide(
    view: ViewId,
    nodes: &[NodeId],
    reports: &[(NodeId, &PrimaryRecord, &[PrimaryRecord])],
) -> Decision {
    let known = reports
        .iter()
        .map(|(_, last, _)| *last)
        .max_by(|a, b| a.num.cmp(&b.num).then_with(|| a.view.cmp(&b.view)))
        .cloned()
        .unwrap_or_else(|| PrimaryState::initial(Vec::new()).last);
    let mut ambiguous: Vec<PrimaryRecord> = reports
        .iter()
        .flat_map(|(_, _, amb)| amb.iter())
        .filter(|a| a.num > known.num)
        .cloned()
        .collect();
    ambiguous.sort();
    dedup_equivalent(&mut ambiguous);
    // Resolve attempts whose representative is here and never committed.
    ambiguous.retain(|a| {
        let coordinator = a.view.coordinator.node;
        match reports.iter().find(|(n, _, _)| *n == coordinator) {
            Some((_, last, _)) => last.num >= a.num,
            None => true,
        }
    });
    let candidate = has_majority(nodes, &known.nodes)
        && ambiguous.iter().all(|a| has_majority(nodes, &a.nodes))
        && ambiguous.len() < AMBIGUOUS_SOFT_LIMIT;
    let attempt = candidate.then(|| PrimaryRecord {
        num: ambiguous
            .iter()
            .map(|a| a.num)
            .chain(std::iter::once(known.num))
            .max()
            .unwrap_or(0)
            + 1,
        view,
        nodes: nodes.to_vec(),
    });
    Decision {
        known,
        ambiguous,
        attempt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Pid;

    fn view(counter: u64, coord: NodeId) -> ViewId {
        ViewId {
            counter,
            coordinator: Pid::new(coord, 1),
        }
    }

    fn rec(num: u64, v: ViewId, nodes: &[NodeId]) -> PrimaryRecord {
        PrimaryRecord {
            num,
            view: v,
            nodes: nodes.to_vec(),
        }
    }

    #[test]
    fn majority_of_the_initial_cluster_becomes_primary() {
        let init = PrimaryState::initial(vec![1, 2, 3, 4, 5]);
        let reports: Vec<_> = [1, 2, 3]
            .iter()
            .map(|n| (*n, &init.last, &init.ambiguous[..]))
            .collect();
        let d = decide(view(5, 1), &[1, 2, 3], &reports);
        assert_eq!(d.attempt.map(|a| a.num), Some(1));
        let reports: Vec<_> = [4, 5]
            .iter()
            .map(|n| (*n, &init.last, &init.ambiguous[..]))
            .collect();
        assert_eq!(decide(view(5, 4), &[4, 5], &reports).attempt, None);
    }

    #[test]
    fn an_ambiguous_attempt_must_be_covered_too() {
        // {1,2,3} attempted primary 1 from {1..5}; 3 saw no commit. Later
        // {3,4,5} holds a majority of {1..5} but not of {1,2,3}.
        let init = PrimaryState::initial(vec![1, 2, 3, 4, 5]);
        let attempt = rec(1, view(5, 1), &[1, 2, 3]);
        let amb = [attempt.clone()];
        let reports = vec![
            (3, &init.last, &amb[..]),
            (4, &init.last, &[][..]),
            (5, &init.last, &[][..]),
        ];
        assert_eq!(decide(view(9, 3), &[3, 4, 5], &reports).attempt, None);
    }

    #[test]
    fn an_attempt_whose_coordinator_never_committed_is_dropped() {
        let init = PrimaryState::initial(vec![1, 2, 3, 4, 5]);
        let attempt = rec(1, view(5, 1), &[1, 2, 3]);
        let amb = [attempt.clone()];
        // Host 1, the attempt's coordinator, reports last primary 0.
        let reports = vec![
            (1, &init.last, &amb[..]),
            (4, &init.last, &[][..]),
            (5, &init.last, &[][..]),
        ];
        let d = decide(view(9, 1), &[1, 4, 5], &reports);
        assert!(d.ambiguous.is_empty());
        assert_eq!(d.attempt.map(|a| a.num), Some(1));
    }

    #[test]
    fn no_bootstrap_means_never_primary() {
        let init = PrimaryState::initial(vec![]);
        let reports = vec![(1, &init.last, &[][..])];
        assert_eq!(decide(view(2, 1), &[1], &reports).attempt, None);
    }

    #[test]
    fn repeated_cut_off_attempts_of_one_representative_are_kept_once() {
        // Seed 9315: host 1 tried primary 4 over the same six hosts in 64
        // views that were all cut off before the commit; every member kept
        // all 64, the joins outgrew the decoder's limit and the cluster never
        // merged again.
        let mut st = PrimaryState::initial(vec![1, 2, 3, 4, 5, 6]);
        for counter in 6..70 {
            st.enter_attempt(&rec(4, view(counter, 1), &[1, 2, 3, 4, 5, 6]));
        }
        assert_eq!(st.ambiguous.len(), 1);
        assert_eq!(st.ambiguous[0].view, view(69, 1));
        // An older equivalent attempt changes nothing.
        assert!(!st.enter_attempt(&rec(4, view(7, 1), &[1, 2, 3, 4, 5, 6])));
        // A different representative, number or host set is kept apart.
        assert!(st.enter_attempt(&rec(4, view(70, 2), &[1, 2, 3, 4, 5, 6])));
        assert!(st.enter_attempt(&rec(5, view(71, 1), &[1, 2, 3, 4, 5, 6])));
        assert!(st.enter_attempt(&rec(4, view(72, 1), &[1, 2, 3, 4, 5])));
        assert_eq!(st.ambiguous.len(), 4);
    }

    #[test]
    fn decide_merges_equivalent_reports() {
        let init = PrimaryState::initial(vec![1, 2, 3]);
        let a = [rec(1, view(4, 9), &[1, 2, 3])];
        let b = [rec(1, view(5, 9), &[1, 2, 3])];
        let reports = vec![(1, &init.last, &a[..]), (2, &init.last, &b[..])];
        let d = decide(view(6, 1), &[1, 2, 3], &reports);
        assert_eq!(d.ambiguous, vec![rec(1, view(5, 9), &[1, 2, 3])]);
        assert_eq!(d.attempt.map(|a| a.num), Some(2));
    }

    #[test]
    fn too_many_ambiguous_attempts_stop_new_attempts() {
        let init = PrimaryState::initial(vec![1, 2, 3]);
        let many: Vec<PrimaryRecord> = (0..AMBIGUOUS_SOFT_LIMIT as u64)
            .map(|k| rec(1 + k, view(10 + k, 9 + k as NodeId), &[1, 2, 3]))
            .collect();
        let reports = vec![(1, &init.last, &many[..])];
        let d = decide(view(100, 1), &[1, 2, 3], &reports);
        assert_eq!(d.attempt, None);
        let fewer = &many[..AMBIGUOUS_SOFT_LIMIT - 1];
        let reports = vec![(1, &init.last, fewer)];
        assert!(decide(view(100, 1), &[1, 2, 3], &reports).attempt.is_some());
    }
}
