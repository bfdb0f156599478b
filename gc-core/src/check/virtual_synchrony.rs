//! Virtual synchrony (failure atomicity): nodes that install the same two
//! consecutive regular configurations deliver the same set of messages
//! between them.
//!
//! Definition checked: if processes p and q both install regular view v and
//! their next regular install is the same v' for both, they delivered the
//! same set of messages between those two installs (transitional deliveries
//! in between included).
//!
//! Each process is compared with the set most processes of the same pair of
//! views delivered, so that the odd one out is the one named.

use super::index::{Index, Step};
use super::{list, Sink};
use crate::types::{ConfId, Pid, ViewId};
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// (v, v') -> each process that went from v to v', with the set of
/// messages it delivered in between.
type Between = BTreeMap<(ViewId, ViewId), Vec<(Pid, Vec<usize>)>>;

pub(super) fn check(ix: &Index<'_>, out: &mut Sink<'_>) {
    let mut between: Between = BTreeMap::new();
    for p in &ix.procs {
        let mut current: Option<ViewId> = None;
        let mut set: Vec<usize> = Vec::new();
        for step in &p.steps {
            match *step {
                Step::Install(i) => {
                    let Some(ConfId::Regular(next)) = p.installs.get(i).map(|i| i.conf) else {
                        continue;
                    };
                    if let Some(v) = current {
                        set.sort_unstable();
                        set.dedup();
                        between
                            .entry((v, next))
                            .or_default()
                            .push((p.pid, std::mem::take(&mut set)));
                    }
                    set.clear();
                    current = Some(next);
                }
                Step::Deliver(d) => {
                    if let Some(d) = p.delivers.get(d) {
                        set.push(d.msg);
                    }
                }
                Step::Send(_) | Step::GroupView => {}
            }
        }
    }

    for ((v, next), sets) in &between {
        if sets.len() < 2 {
            continue;
        }
        let Some(reference) = most_common(sets) else {
            continue;
        };
        let Some((rpid, rset)) = sets.get(reference) else {
            continue;
        };
        for (pid, set) in sets {
            if set == rset {
                continue;
            }
            let extra = difference(set, rset);
            let missing = difference(rset, set);
            let mut detail = format!("{pid} and {rpid} both went from {v} to {next}, but ");
            if !missing.is_empty() {
                detail += &format!(
                    "{pid} did not deliver {}",
                    list(ix.ids(missing.iter().copied()), missing.len())
                );
            }
            if !extra.is_empty() {
                if !missing.is_empty() {
                    detail += " and ";
                }
                detail += &format!(
                    "{pid} alone delivered {}",
                    list(ix.ids(extra.iter().copied()), extra.len())
                );
            }
            let messages = ix.ids(missing.iter().chain(&extra).copied());
            if !out.report(vec![*pid, *rpid], messages, detail) {
                return;
            }
        }
    }
}

/// The index of the set shared by the most processes; the first on a tie.
fn most_common(sets: &[(Pid, Vec<usize>)]) -> Option<usize> {
    sets.iter()
        .enumerate()
        .map(|(i, (_, s))| (sets.iter().filter(|(_, t)| t == s).count(), Reverse(i)))
        .max()
        .map(|(_, Reverse(i))| i)
}

/// Elements of sorted `a` not in sorted `b`.
fn difference(a: &[usize], b: &[usize]) -> Vec<usize> {
    a.iter()
        .filter(|x| b.binary_search(x).is_err())
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::check::testutil::*;
    use crate::check::{Property, TraceBuilder};
    use crate::types::Level;

    #[test]
    fn different_sets_between_the_same_views_are_reported() {
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let (v1, v2) = (view(1, a), view(2, a));
        let mut t = TraceBuilder::new();
        for p in [a, b, c] {
            t.install(p, reg(v1), &[a, b, c], None);
        }
        let m = t.multicast(a, Level::Fifo);
        t.deliver(a, m, reg(v1)).deliver(b, m, reg(v1));
        // c goes through a transitional configuration without a, delivering
        // nothing, and still moves to the same v2 as a and b: it must have
        // delivered m too.
        t.install(c, trans(v1, v2), &[b, c], None);
        for p in [a, b, c] {
            t.install(p, reg(v2), &[a, b, c], None);
        }
        let found = only(&t.build(), Property::VirtualSynchrony);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].processes, vec![c, a]);
        assert_eq!(found[0].messages, vec![m]);
    }

    #[test]
    fn different_next_views_are_not_compared() {
        let (a, b) = (pid(1), pid(2));
        let (v1, v2, v3) = (view(1, a), view(2, a), view(3, b));
        let mut t = TraceBuilder::new();
        t.install(a, reg(v1), &[a, b], None)
            .install(b, reg(v1), &[a, b], None);
        let m = t.multicast(a, Level::Fifo);
        t.deliver(a, m, reg(v1));
        t.install(a, trans(v1, v2), &[a], None)
            .install(a, reg(v2), &[a], None);
        t.install(b, trans(v1, v3), &[b], None)
            .install(b, reg(v3), &[b], None);
        clean(&t.build());
    }
}
