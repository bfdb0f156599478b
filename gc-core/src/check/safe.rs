//! Safe delivery: a safe message delivered in a regular configuration was
//! held by every member of that configuration.
//!
//! Definition checked: if any process delivers a Safe-level m in
//! Regular(v), every member of v (the member list of Regular(v)'s Install)
//! whose process end is neither Crashed nor Left delivers m (in any
//! configuration). A member pid that has no trace at all counts as crashed.
//!
//! A message is Safe-level when its send says so or the delivery does (the
//! two disagreeing is an integrity violation of its own). Each (message,
//! view) pair is checked once, and names every member that lacks it.

use super::index::Index;
use super::{list, Sink};
use crate::trace::ProcessEnd;
use crate::types::{ConfId, Level, Pid};
use std::collections::BTreeSet;

pub(super) fn check(ix: &Index<'_>, out: &mut Sink<'_>) {
    let mut checked = vec![false; ix.msgs.len()];
    let mut done = BTreeSet::new();
    for p in &ix.procs {
        for d in p.delivers.iter().filter(|d| !d.repeat) {
            let ConfId::Regular(v) = d.conf else { continue };
            let Some(m) = ix.msgs.get(d.msg) else {
                continue;
            };
            if d.level != Level::Safe && m.level != Level::Safe {
                continue;
            }
            // Checked once per (message, view): a flag per message for its
            // own view, the usual case, and a set for any other.
            let first = if *v == m.id.view {
                checked
                    .get_mut(d.msg)
                    .is_some_and(|c| !std::mem::replace(c, true))
            } else {
                done.insert((d.msg, *v))
            };
            if !first {
                continue;
            }
            let Some(&(_, members)) = ix.confs.get(d.conf) else {
                continue;
            };
            let lacking: Vec<Pid> = members
                .iter()
                .copied()
                .filter(|&q| ix.end_of(q) == ProcessEnd::Running)
                .filter(|q| {
                    ix.by_pid
                        .get(q)
                        .is_some_and(|&qi| ix.delivered_at(qi, d.msg).is_none())
                })
                .collect();
            if lacking.is_empty() {
                continue;
            }
            let detail = format!(
                "{} delivered safe {} in {} but member{} {} never delivered it",
                p.pid,
                m.id,
                v,
                if lacking.len() == 1 { "" } else { "s" },
                list(&lacking, lacking.len())
            );
            let mut processes = vec![p.pid];
            processes.extend(lacking);
            if !out.report(processes, vec![m.id], detail) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::check::testutil::*;
    use crate::check::{Property, TraceBuilder};
    use crate::trace::ProcessEnd;
    use crate::types::Level;

    #[test]
    fn a_running_member_without_the_message_is_reported() {
        let (a, b, c, d) = (pid(1), pid(2), pid(3), pid(4));
        let all = [a, b, c, d];
        let (v1, v2, w2) = (view(1, a), view(2, a), view(2, c));
        let mut t = TraceBuilder::new();
        for p in [a, b, c] {
            t.install(p, reg(v1), &all, None);
        }
        let m = t.multicast(a, Level::Safe);
        // a and b deliver m as safe in v1, though c never got it: c
        // partitions away and moves on without delivering m at all.
        t.deliver(a, m, reg(v1)).deliver(b, m, reg(v1));
        for p in [a, b] {
            t.install(p, trans(v1, v2), &[a, b], None);
        }
        for p in [a, b] {
            t.install(p, reg(v2), &[a, b], None);
        }
        t.install(c, trans(v1, w2), &[c], None)
            .install(c, reg(w2), &[c], None);
        // d has no trace (counts as crashed).
        let found = only(&t.clone().build(), Property::Safe);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].processes, vec![a, c]);

        // c leaving instead is fine, and so is crashing.
        t.end(c, ProcessEnd::Left);
        clean(&t.clone().build());
        t.end(c, ProcessEnd::Crashed);
        clean(&t.build());
    }

    #[test]
    fn delivery_in_the_transitional_configuration_is_enough() {
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let (v1, v2, w2) = (view(1, a), view(2, a), view(2, c));
        let mut t = TraceBuilder::new();
        for p in [a, b, c] {
            t.install(p, reg(v1), &[a, b, c], None);
        }
        let m = t.multicast(a, Level::Safe);
        t.deliver(a, m, reg(v1)).deliver(b, m, reg(v1));
        for p in [a, b] {
            t.install(p, trans(v1, v2), &[a, b], None);
        }
        for p in [a, b] {
            t.install(p, reg(v2), &[a, b], None);
        }
        t.install(c, trans(v1, w2), &[c], None)
            .deliver(c, m, trans(v1, w2));
        t.install(c, reg(w2), &[c], None);
        clean(&t.build());
    }
}
