//! View agreement: nodes that install the same view id install the same
//! member list, and each node is a member of every view it installs.
//!
//! Definition checked:
//! (a) all Install records with the same ConfId list identical members;
//! (b) a process is a member of every configuration it installs;
//! (c) per process, regular ViewIds strictly increase; a
//!     Transitional{from,to} is installed only while the process's current
//!     regular view is `from`, and the process's next Install (if any) is
//!     Regular(to); a transitional configuration's members are a subset of
//!     both `from`'s and `to`'s member lists (as installed by anyone, when
//!     known);
//! (d) GroupView records with the same (group, id) list identical members,
//!     and the installing process is one of them.

use super::index::Index;
use super::Sink;
use crate::trace::TraceEvent;
use crate::types::{ConfId, Pid, ViewId};
use std::collections::BTreeMap;

pub(super) fn check(ix: &Index<'_>, out: &mut Sink<'_>) {
    if !installs(ix, out) || !transitional_members(ix, out) {
        return;
    }
    group_views(ix, out);
}

/// (a), (b) and the per-process sequence of (c).
fn installs(ix: &Index<'_>, out: &mut Sink<'_>) -> bool {
    for p in &ix.procs {
        let mut regular: Option<ViewId> = None;
        // Set by a transitional install: the regular view that must come next.
        let mut expect: Option<ViewId> = None;
        for i in &p.installs {
            let mut problems = Vec::new();
            let mut with = vec![p.pid];
            if let Some(&(first, members)) = ix.confs.get(&i.conf) {
                if members != i.members {
                    let other = ix.pid(first).unwrap_or_default();
                    with.push(other);
                    problems.push(format!(
                        "{} installed {} with members {:?} but {} installed it with {:?}",
                        p.pid, i.conf, i.members, other, members
                    ));
                }
            }
            if !i.members.contains(&p.pid) {
                problems.push(format!(
                    "{} installed {} without being a member of it",
                    p.pid, i.conf
                ));
            }
            if let Some(to) = expect.take() {
                if i.conf != ConfId::Regular(to) {
                    problems.push(format!(
                        "{} installed {} after trans(..->{}) instead of {}",
                        p.pid, i.conf, to, to
                    ));
                }
            }
            match i.conf {
                ConfId::Regular(v) => {
                    if let Some(prev) = regular.filter(|&prev| prev >= v) {
                        problems.push(format!(
                            "{} installed {} after {}: regular views must increase",
                            p.pid, v, prev
                        ));
                    }
                    regular = Some(v);
                }
                ConfId::Transitional { from, to } => {
                    if regular != Some(from) {
                        let now = regular.map_or_else(|| "none".to_owned(), |v| v.to_string());
                        problems.push(format!(
                            "{} installed {} while its regular view was {}",
                            p.pid, i.conf, now
                        ));
                    }
                    expect = Some(to);
                }
            }
            for detail in problems {
                if !out.report(with.clone(), vec![], detail) {
                    return false;
                }
            }
        }
    }
    true
}

/// The member-list part of (c), once per transitional configuration.
fn transitional_members(ix: &Index<'_>, out: &mut Sink<'_>) -> bool {
    for (&conf, &(first, members)) in &ix.confs {
        let ConfId::Transitional { from, to } = conf else {
            continue;
        };
        for v in [from, to] {
            let Some(&(_, of)) = ix.confs.get(&ConfId::Regular(v)) else {
                continue;
            };
            let outside: Vec<Pid> = members
                .iter()
                .filter(|m| !of.contains(m))
                .copied()
                .collect();
            if outside.is_empty() {
                continue;
            }
            let detail = format!(
                "{} has members {:?} that are not members of {}",
                conf, outside, v
            );
            let mut with = vec![ix.pid(first).unwrap_or_default()];
            with.extend(outside);
            if !out.report(with, vec![], detail) {
                return false;
            }
        }
    }
    true
}

/// (d).
fn group_views(ix: &Index<'_>, out: &mut Sink<'_>) {
    let mut seen: BTreeMap<(&str, _), (Pid, &[Pid])> = BTreeMap::new();
    for p in &ix.procs {
        for r in &p.trace.records {
            let TraceEvent::GroupView { group, id, members } = &r.event else {
                continue;
            };
            let at = format!("group {:?} view {}/{}", group, id.view, id.change);
            let mut problems = Vec::new();
            let mut with = vec![p.pid];
            match seen.get(&(group.as_str(), *id)) {
                Some(&(other, first)) if first != members.as_slice() => {
                    with.push(other);
                    problems.push(format!(
                        "{} installed {} with members {:?} but {} installed it with {:?}",
                        p.pid, at, members, other, first
                    ));
                }
                Some(_) => {}
                None => {
                    seen.insert((group.as_str(), *id), (p.pid, members.as_slice()));
                }
            }
            if !members.contains(&p.pid) {
                problems.push(format!(
                    "{} installed {} without being a member of it",
                    p.pid, at
                ));
            }
            for detail in problems {
                if !out.report(with.clone(), vec![], detail) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::check::testutil::*;
    use crate::check::{Property, TraceBuilder};
    use crate::trace::GroupViewId;

    #[test]
    fn different_member_lists_are_reported() {
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let v = reg(view(1, a));
        let mut t = TraceBuilder::new();
        t.install(a, v, &[a, b, c], None)
            .install(b, v, &[a, b], None);
        let found = only(&t.build(), Property::ViewAgreement);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].processes, vec![b, a]);
    }

    #[test]
    fn installing_a_view_without_self_is_reported() {
        let (a, b) = (pid(1), pid(2));
        let mut t = TraceBuilder::new();
        t.install(a, reg(view(1, b)), &[b], None);
        let found = only(&t.build(), Property::ViewAgreement);
        assert!(
            found[0].detail.contains("without being a member"),
            "{}",
            found[0].detail
        );
    }

    #[test]
    fn regular_views_going_back_are_reported() {
        let a = pid(1);
        let mut t = TraceBuilder::new();
        t.install(a, reg(view(2, a)), &[a], None)
            .install(a, reg(view(1, a)), &[a], None);
        let found = only(&t.build(), Property::ViewAgreement);
        assert!(
            found[0].detail.contains("must increase"),
            "{}",
            found[0].detail
        );
        // The same view twice is not an increase either.
        let mut t = TraceBuilder::new();
        t.install(a, reg(view(2, a)), &[a], None)
            .install(a, reg(view(2, a)), &[a], None);
        only(&t.build(), Property::ViewAgreement);
    }

    #[test]
    fn transitional_from_another_view_is_reported() {
        let (a, b) = (pid(1), pid(2));
        let (v1, v2, v3) = (view(1, a), view(2, a), view(3, a));
        let mut t = TraceBuilder::new();
        t.install(a, reg(v1), &[a, b], None);
        t.install(a, trans(v2, v3), &[a], None)
            .install(a, reg(v3), &[a], None);
        let found = only(&t.build(), Property::ViewAgreement);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].detail.contains("while its regular view was"),
            "{}",
            found[0].detail
        );
    }

    #[test]
    fn transitional_not_followed_by_its_view_is_reported() {
        let (a, b) = (pid(1), pid(2));
        let (v1, v2, v3) = (view(1, a), view(2, a), view(3, a));
        let mut t = TraceBuilder::new();
        t.install(a, reg(v1), &[a, b], None);
        t.install(a, trans(v1, v2), &[a], None)
            .install(a, reg(v3), &[a], None);
        let found = only(&t.build(), Property::ViewAgreement);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].detail.contains("instead of"),
            "{}",
            found[0].detail
        );
    }

    #[test]
    fn transitional_members_outside_either_view_are_reported() {
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let (v1, v2) = (view(1, a), view(2, a));
        let mut t = TraceBuilder::new();
        t.install(a, reg(v1), &[a, b], None)
            .install(b, reg(v1), &[a, b], None);
        // The transitional configuration names b, who is not in v2.
        t.install(a, trans(v1, v2), &[a, b], None)
            .install(a, reg(v2), &[a, c], None);
        t.install(c, reg(v2), &[a, c], None);
        let found = only(&t.build(), Property::ViewAgreement);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].processes, vec![a, b]);
        // And one naming c, who was not in v1.
        let mut t = TraceBuilder::new();
        t.install(a, reg(v1), &[a, b], None)
            .install(b, reg(v1), &[a, b], None);
        t.install(a, trans(v1, v2), &[a, c], None)
            .install(a, reg(v2), &[a, c], None);
        t.install(c, reg(v2), &[a, c], None);
        let found = only(&t.build(), Property::ViewAgreement);
        assert!(
            found[0].detail.contains(&format!("not members of {v1}")),
            "{}",
            found[0].detail
        );
    }

    #[test]
    fn group_view_disagreement_is_reported() {
        let (a, b) = (pid(1), pid(2));
        let v = view(1, a);
        let id = GroupViewId { view: v, change: 1 };
        let mut t = TraceBuilder::new();
        t.install(a, reg(v), &[a, b], None)
            .install(b, reg(v), &[a, b], None);
        t.group_view(a, "mgmt", id, &[a, b])
            .group_view(b, "mgmt", id, &[b]);
        assert_eq!(only(&t.clone().build(), Property::ViewAgreement).len(), 1);
        // Another group with the same id is a different group view.
        t.group_view(a, "maps", id, &[a]);
        assert_eq!(only(&t.clone().build(), Property::ViewAgreement).len(), 1);
        t.group_view(b, "maps", GroupViewId { view: v, change: 2 }, &[a]);
        let found = only(&t.build(), Property::ViewAgreement);
        assert_eq!(found.len(), 2);
        assert!(
            found[1].detail.contains("without being a member"),
            "{}",
            found[1].detail
        );
    }
}
