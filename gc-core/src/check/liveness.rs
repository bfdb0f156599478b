//! Liveness: once the network heals and stays quiet, all live, connected
//! nodes install one common view and deliver every message their live
//! members sent, within a bound that the test states.
//!
//! Definition checked (only when trace.liveness is Some(phase)): let L be
//! the processes whose end is Running.
//! (a) each has unsent_at_end == 0;
//! (b) some regular view V is the last Install of every process in L, V's
//!     members are exactly L's pids, and each installed it at a time
//!     <= healed_at + bound;
//! (c) every message sent in V by a member of V is delivered by every
//!     process in L.
//!
//! V is taken to be the regular view most processes of L ended in (the
//! highest on a tie), so that the processes named are the ones that lag.
//! When L is empty there is nothing to converge and nothing is reported.

use super::index::Index;
use super::{list, Sink};
use crate::trace::ProcessEnd;
use crate::types::{ConfId, Pid, ViewId};
use std::collections::BTreeMap;

pub(super) fn check(ix: &Index<'_>, out: &mut Sink<'_>) {
    let Some(phase) = ix.trace.liveness else {
        return;
    };
    let deadline = phase.healed_at.plus(phase.bound);
    let live: Vec<usize> = (0..ix.procs.len())
        .filter(|&i| {
            ix.procs
                .get(i)
                .is_some_and(|p| p.trace.end == ProcessEnd::Running)
        })
        .collect();
    if live.is_empty() {
        return;
    }
    let mut pids: Vec<Pid> = live.iter().filter_map(|&i| ix.pid(i)).collect();
    pids.sort_unstable();
    pids.dedup();

    // (a)
    for p in live.iter().filter_map(|&i| ix.procs.get(i)) {
        if p.trace.unsent_at_end > 0 {
            let detail = format!(
                "{} ended with {} multicasts never sent",
                p.pid, p.trace.unsent_at_end
            );
            if !out.report(vec![p.pid], vec![], detail) {
                return;
            }
        }
    }

    // (b)
    let mut ends: BTreeMap<ViewId, usize> = BTreeMap::new();
    for p in live.iter().filter_map(|&i| ix.procs.get(i)) {
        if let Some(ConfId::Regular(v)) = p.installs.last().map(|i| i.conf) {
            *ends.entry(v).or_default() += 1;
        }
    }
    let Some(v) = ends.iter().max_by_key(|&(v, n)| (*n, *v)).map(|(v, _)| *v) else {
        let detail = format!(
            "no running process ended in a regular view (running: {})",
            list(&pids, pids.len())
        );
        out.report(pids, vec![], detail);
        return;
    };
    for p in live.iter().filter_map(|&i| ix.procs.get(i)) {
        let detail = match p.installs.last() {
            None => format!("{} installed no view; the others ended in {}", p.pid, v),
            Some(i) if i.conf != ConfId::Regular(v) => {
                format!(
                    "{} ended in {} (installed at {}), not in {} like the others",
                    p.pid, i.conf, i.time, v
                )
            }
            Some(i) if i.time > deadline => format!(
                "{} installed {} at {}, after the bound (healed at {} + {:?} = {})",
                p.pid, v, i.time, phase.healed_at, phase.bound, deadline
            ),
            Some(_) => continue,
        };
        if !out.report(vec![p.pid], vec![], detail) {
            return;
        }
    }
    let members: &[Pid] = ix.confs.get(&ConfId::Regular(v)).map_or(&[], |&(_, m)| m);
    let absent: Vec<Pid> = pids
        .iter()
        .filter(|p| !members.contains(p))
        .copied()
        .collect();
    if !absent.is_empty() {
        let detail = format!(
            "running {} not members of {}",
            list(&absent, absent.len()),
            v
        );
        if !out.report(absent, vec![], detail) {
            return;
        }
    }
    let gone: Vec<Pid> = members
        .iter()
        .filter(|p| !pids.contains(p))
        .copied()
        .collect();
    if !gone.is_empty() {
        let detail = format!(
            "{} still lists {}, which did not run to the end",
            v,
            list(&gone, gone.len())
        );
        if !out.report(gone, vec![], detail) {
            return;
        }
    }

    // (c)
    let sent: Vec<usize> = ix
        .view_range(v)
        .filter(|&m| {
            ix.msgs
                .get(m)
                .and_then(|x| x.send)
                .and_then(|s| ix.pid(s.proc))
                .is_some_and(|s| members.contains(&s))
        })
        .collect();
    for &pi in &live {
        let Some(pid) = ix.pid(pi) else { continue };
        let lacking: Vec<usize> = sent
            .iter()
            .copied()
            .filter(|&m| ix.delivered_at(pi, m).is_none())
            .collect();
        if lacking.is_empty() {
            continue;
        }
        let ids = ix.ids(lacking.iter().copied());
        let detail = format!(
            "{} lacks {} of the {} messages sent in {}: {}",
            pid,
            lacking.len(),
            sent.len(),
            v,
            list(&ids, ids.len())
        );
        if !out.report(vec![pid], ids, detail) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::check::testutil::*;
    use crate::check::{Property, TraceBuilder};
    use crate::trace::ProcessEnd;
    use crate::types::{Level, Time};
    use std::time::Duration;

    const HEALED: Time = Time(1_000_000);
    const BOUND: Duration = Duration::from_secs(1);

    fn finish(mut t: TraceBuilder) -> TraceBuilder {
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let v2 = view(2, a);
        for p in [a, b, c] {
            t.install(p, reg(v2), &[a, b, c], None);
        }
        let m = t.multicast(b, Level::Agreed);
        for p in [a, b, c] {
            t.deliver(p, m, reg(v2));
        }
        t
    }

    fn base() -> TraceBuilder {
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let (v1, w1, v2) = (view(1, a), view(1, c), view(2, a));
        let mut t = TraceBuilder::new();
        t.install(a, reg(v1), &[a, b], None)
            .install(b, reg(v1), &[a, b], None);
        t.install(c, reg(w1), &[c], None);
        t.liveness(HEALED, BOUND);
        t.at(Time(1_500_000));
        for p in [a, b] {
            t.install(p, trans(v1, v2), &[a, b], None);
        }
        t.install(c, trans(w1, v2), &[c], None);
        t
    }

    #[test]
    fn converged_run_passes() {
        clean(&finish(base()).build());
    }

    #[test]
    fn unsent_multicasts_are_reported() {
        let mut t = finish(base());
        t.unsent(pid(3), 2);
        let found = only(&t.build(), Property::Liveness);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].detail.contains("2 multicasts"),
            "{}",
            found[0].detail
        );
    }

    #[test]
    fn a_process_left_behind_is_reported() {
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let (v1, w1, v2, x2) = (view(1, a), view(1, c), view(2, a), view(2, c));
        let mut t = TraceBuilder::new();
        t.install(a, reg(v1), &[a, b], None)
            .install(b, reg(v1), &[a, b], None);
        t.install(c, reg(w1), &[c], None);
        t.liveness(HEALED, BOUND);
        t.at(Time(1_500_000));
        // c starts a view change of its own that never completes, and v2 is
        // formed without it.
        for p in [a, b] {
            t.install(p, trans(v1, v2), &[a, b], None);
        }
        t.install(c, trans(w1, x2), &[c], None);
        for p in [a, b] {
            t.install(p, reg(v2), &[a, b], None);
        }
        let m = t.multicast(b, Level::Agreed);
        t.deliver(a, m, reg(v2)).deliver(b, m, reg(v2));
        let found = only(&t.build(), Property::Liveness);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].processes, vec![c]);
        assert!(found[0].detail.contains("not in"), "{}", found[0].detail);
        assert!(
            found[1].detail.contains("not members"),
            "{}",
            found[1].detail
        );
        assert!(
            found[2].detail.contains("lacks 1 of the 1"),
            "{}",
            found[2].detail
        );
    }

    #[test]
    fn a_late_view_is_reported() {
        let mut t = base();
        t.at(Time(2_500_000));
        let t = finish(t);
        let found = only(&t.build(), Property::Liveness);
        assert_eq!(found.len(), 3);
        assert!(
            found[0].detail.contains("after the bound"),
            "{}",
            found[0].detail
        );
    }

    #[test]
    fn a_view_listing_a_crashed_process_is_reported() {
        let mut t = finish(base());
        t.end(pid(3), ProcessEnd::Crashed);
        let found = only(&t.build(), Property::Liveness);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].detail.contains("did not run to the end"),
            "{}",
            found[0].detail
        );
    }

    #[test]
    fn an_undelivered_message_is_reported() {
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let v2 = view(2, a);
        let mut t = base();
        for p in [a, b, c] {
            t.install(p, reg(v2), &[a, b, c], None);
        }
        let m = t.multicast(b, Level::Fifo);
        t.deliver(a, m, reg(v2)).deliver(b, m, reg(v2));
        let found = only(&t.build(), Property::Liveness);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].processes, vec![c]);
        assert_eq!(found[0].messages, vec![m]);
    }

    #[test]
    fn no_liveness_phase_no_check() {
        let (a, b) = (pid(1), pid(2));
        let mut t = TraceBuilder::new();
        t.install(a, reg(view(1, a)), &[a], None)
            .install(b, reg(view(1, b)), &[b], None);
        t.unsent(a, 5);
        clean(&t.clone().build());
        t.liveness(HEALED, BOUND);
        only(&t.build(), Property::Liveness);
    }
}
