//! Primary component: primary views form one chain, each shares a majority
//! with the one before, and two primaries never exist at once.
//!
//! Definition checked: take every Install with primary = Some(n):
//! (a) one number names one view (same n => same ConfId) — report two
//!     different views with the same number;
//! (b) each process's primary numbers strictly increase;
//! (c) sorting the distinct primary views by n, each consecutive pair shares
//!     a majority of the earlier one's HOSTS (compare by Pid.node, not
//!     incarnation): |nodes(P_i) ∩ nodes(P_i+1)| > |nodes(P_i)| / 2.
//!
//! Also reported: a transitional configuration marked primary, which the
//! trace format rules out.

use super::index::Index;
use super::Sink;
use crate::types::{ConfId, NodeId, Pid};
use std::collections::{BTreeMap, BTreeSet};

pub(super) fn check(ix: &Index<'_>, out: &mut Sink<'_>) {
    // n -> the first view installed with it, by whom, with which members.
    let mut views: BTreeMap<u64, (ConfId, Pid, &[Pid])> = BTreeMap::new();
    let mut reported = BTreeSet::new();
    for p in &ix.procs {
        let mut last: Option<u64> = None;
        for i in &p.installs {
            let Some(n) = i.primary else { continue };
            if let ConfId::Transitional { .. } = i.conf {
                if !out.report(
                    vec![p.pid],
                    vec![],
                    format!("{} installed {} as primary {}", p.pid, i.conf, n),
                ) {
                    return;
                }
            }
            match views.get(&n) {
                None => {
                    views.insert(n, (i.conf, p.pid, i.members));
                }
                Some(&(conf, by, _)) if conf != i.conf && reported.insert((n, i.conf)) => {
                    let detail = format!(
                        "primary {n} names two views: {conf} (installed by {by}) and {} (by {})",
                        i.conf, p.pid
                    );
                    if !out.report(vec![by, p.pid], vec![], detail) {
                        return;
                    }
                }
                Some(_) => {}
            }
            if let Some(prev) = last.filter(|&prev| prev >= n) {
                let detail = format!(
                    "{} installed primary {} ({}) after primary {}",
                    p.pid, n, i.conf, prev
                );
                if !out.report(vec![p.pid], vec![], detail) {
                    return;
                }
            }
            last = Some(n);
        }
    }

    let chain: Vec<_> = views.iter().collect();
    for pair in chain.windows(2) {
        let [(n1, (c1, _, m1)), (n2, (c2, _, m2))] = pair else {
            continue;
        };
        let before = nodes(m1);
        let after = nodes(m2);
        let shared = before.intersection(&after).count();
        if 2 * shared > before.len() {
            continue;
        }
        let detail = format!(
            "primary {n2} ({c2}, hosts {after:?}) shares {shared} of the {} hosts of primary {n1} ({c1}, hosts {before:?}): not a majority",
            before.len()
        );
        let mut processes: Vec<Pid> = m1.iter().chain(m2.iter()).copied().collect();
        processes.sort_unstable();
        processes.dedup();
        if !out.report(processes, vec![], detail) {
            return;
        }
    }
}

fn nodes(members: &[Pid]) -> BTreeSet<NodeId> {
    members.iter().map(|p| p.node).collect()
}

#[cfg(test)]
mod tests {
    use crate::check::testutil::*;
    use crate::check::{Property, TraceBuilder};
    use crate::types::Pid;

    #[test]
    fn one_number_for_two_views_is_reported() {
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let mut t = TraceBuilder::new();
        t.install(a, reg(view(1, a)), &[a, b, c], Some(1));
        t.install(b, reg(view(1, a)), &[a, b, c], Some(1));
        // a and b go on as primary 2; c, alone, claims primary 2 too.
        t.install(a, reg(view(2, a)), &[a, b], Some(2)).install(
            b,
            reg(view(2, a)),
            &[a, b],
            Some(2),
        );
        t.install(c, reg(view(2, c)), &[c], Some(2));
        let found = only(&t.build(), Property::Primary);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].processes, vec![a, c]);
        assert!(
            found[0].detail.contains("names two views"),
            "{}",
            found[0].detail
        );
    }

    #[test]
    fn a_primary_number_going_back_is_reported() {
        let (a, b) = (pid(1), pid(2));
        let mut t = TraceBuilder::new();
        t.install(a, reg(view(1, a)), &[a, b], Some(3));
        t.install(a, reg(view(2, a)), &[a, b], Some(2));
        let found = only(&t.build(), Property::Primary);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].detail.contains("after primary 3"),
            "{}",
            found[0].detail
        );
    }

    #[test]
    fn a_primary_without_a_majority_of_hosts_is_reported() {
        let (a, b, c, d) = (pid(1), pid(2), pid(3), pid(4));
        let mut t = TraceBuilder::new();
        t.install(a, reg(view(1, a)), &[a, b, c, d], Some(1));
        // Two of four hosts is not a majority.
        t.install(c, reg(view(2, c)), &[c, d], Some(2));
        let found = only(&t.build(), Property::Primary);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].detail.contains("not a majority"),
            "{}",
            found[0].detail
        );
    }

    #[test]
    fn hosts_count_not_incarnations() {
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let (a1, b1) = (Pid::new(1, 1), Pid::new(2, 1));
        let mut t = TraceBuilder::new();
        t.install(a, reg(view(1, a)), &[a, b, c], Some(1));
        // a and b restarted: as hosts, they are still two of three.
        t.install(a1, reg(view(2, a1)), &[a1, b1], Some(2));
        clean(&t.clone().build());
        // Primary 3's hosts {1, 3} share only host 1 with primary 2's
        // {1, 2}, however many incarnations of host 1 it lists.
        t.install(
            c,
            reg(view(3, c)),
            &[Pid::new(1, 2), Pid::new(1, 3), c],
            Some(3),
        );
        only(&t.build(), Property::Primary);
    }

    #[test]
    fn a_primary_transitional_configuration_is_reported() {
        let (a, b) = (pid(1), pid(2));
        let (v1, v2) = (view(1, a), view(2, a));
        let mut t = TraceBuilder::new();
        t.install(a, reg(v1), &[a, b], Some(1));
        t.install(a, trans(v1, v2), &[a], Some(2))
            .install(a, reg(v2), &[a], None);
        only(&t.build(), Property::Primary);
    }
}
