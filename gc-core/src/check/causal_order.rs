//! Causal order, with the holes EVS allows.
//!
//! Definition checked: happened-before among causal-class messages: m1 -> m2
//! if the same process sent m1 before m2, or m2's sender delivered m1 before
//! sending m2; closed transitively (through causal-class messages only). For
//! every process r that delivers causal-class m2 and every m1 -> m2: if r
//! delivers m1 it must be before m2; if r does not deliver m1 and
//! m1.view == m2.view, that is a violation UNLESS r delivered m2 in a
//! Transitional configuration whose member list does not contain m1.sender
//! (EVS allows that hole).
//!
//! The relation is built from each process's own record order, never from
//! times (traces from different hosts have skewed clocks): the processes are
//! replayed together, each one waiting at a delivery until the message's
//! send has been replayed, and every process carries the set of messages
//! that happened before its next send as a bitset. A message's class is its
//! send's level. A delivery that can never be replayed because it waits, in
//! a cycle, on its own consequences is reported as a violation too.

use super::bits::{self, or_into, BitMatrix};
use super::index::{Index, Step};
use super::order::{Class, Receiver};
use super::{list, Sink, MAX_LISTED_MESSAGES};
use crate::types::{ConfId, Level, MsgId, Pid};

pub(super) fn check(ix: &Index<'_>, out: &mut Sink<'_>) {
    let Some(class) = Class::new(ix, Level::is_causal_class, out) else {
        return;
    };
    if class.len() == 0 {
        return;
    }
    let (before, spans) = happened_before(ix, &class, out);
    for r in &ix.procs {
        let mut rx = Receiver::new(&class, r);
        let words = rx.delivered.len();
        let mut so_far = vec![0u64; words];
        // Below this word, r has delivered all it ever delivers: nothing
        // there can be delivered late. In a correct run it trails r's
        // current view, so the scan below covers a word or two, not the
        // whole run.
        let mut lo = 0;
        for d in r.delivers.iter().filter(|d| !d.repeat) {
            let Some(b2) = class.bit(d.msg) else { continue };
            let Some(id2) = ix.id(d.msg) else { continue };
            let preds = before.row(b2);
            while lo < words
                && rx.delivered.get(lo).copied().unwrap_or(0)
                    & !so_far.get(lo).copied().unwrap_or(0)
                    == 0
            {
                lo += 1;
            }
            let hi = spans.get(b2).copied().unwrap_or(words).min(words);

            let mut late = Vec::new();
            let mut late_total = 0;
            for (w, ((&a, &all), (&now, seen))) in preds
                .iter()
                .zip(&rx.delivered)
                .zip(so_far.iter().zip(rx.named.iter_mut()))
                .enumerate()
                .take(hi)
                .skip(lo)
            {
                let mut x = a & all & !now & !*seen;
                if w == b2 / 64 {
                    x &= !(1u64 << (b2 % 64));
                }
                *seen |= x;
                if x != 0 {
                    late_total += x.count_ones() as usize;
                    let room = MAX_LISTED_MESSAGES.saturating_sub(late.len());
                    late.extend(bits::ones(w, x).take(room));
                }
            }
            if late_total > 0 {
                let ids = ix.ids(late.iter().filter_map(|&b| class.msg(b)));
                let detail = format!(
                    "{} delivered {} before {}, which happened before it",
                    r.pid,
                    id2,
                    list(&ids, late_total)
                );
                let mut messages = vec![id2];
                messages.extend(ids);
                if !out.report(vec![r.pid, id2.sender], messages, detail) {
                    return;
                }
            }

            let (missing, total) = rx.holes(ix, &class, d, preds);
            if total > 0 {
                let ids = ix.ids(missing.iter().filter_map(|&b| class.msg(b)));
                let detail = format!(
                    "{} delivered {} in {} but never {}, which happened before it in the same view{}",
                    r.pid,
                    id2,
                    d.conf,
                    list(&ids, total),
                    match d.conf {
                        ConfId::Transitional { .. } => " and whose sender is in that configuration",
                        ConfId::Regular(_) => "",
                    }
                );
                let mut messages = vec![id2];
                messages.extend(ids);
                if !out.report(vec![r.pid, id2.sender], messages, detail) {
                    return;
                }
            }
            bits::set(&mut so_far, b2);
        }
    }
}

/// A broken trace can have many cycles; a few say it, and the order checks
/// after them say more.
const MAX_CYCLES_REPORTED: usize = 3;

/// Row b: the messages that happened before message bit b, and each row's
/// span (the words past it are zero).
fn happened_before(ix: &Index<'_>, class: &Class, out: &mut Sink<'_>) -> (BitMatrix, Vec<usize>) {
    let n = class.len();
    let procs = ix.procs.len();
    let mut before = BitMatrix::new(n, n);
    // Messages mostly descend from earlier ones, so a row's high words are
    // zero until late in the run: copying and merging only up to the span
    // halves the work.
    let mut spans = vec![0usize; n];
    // Knowledge of each process: what happened before its next send.
    let mut know = BitMatrix::new(procs, n);
    let mut know_spans = vec![0usize; procs];
    // A message can be delivered (in the replay) once its send has been
    // replayed; one nobody recorded sending never will be, and waits on
    // nothing.
    let mut sent: Vec<bool> = class
        .msgs
        .iter()
        .map(|&m| ix.msgs.get(m).and_then(|x| x.send).is_none())
        .collect();
    let mut waiting: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut cursor = vec![0usize; procs];
    let mut cycles = 0usize;
    let mut ready: Vec<usize> = (0..procs).rev().collect();

    loop {
        while let Some(pi) = ready.pop() {
            let Some(p) = ix.procs.get(pi) else { continue };
            let Some(at) = cursor.get_mut(pi) else {
                continue;
            };
            while let Some(step) = p.steps.get(*at) {
                match *step {
                    Step::Deliver(d) => {
                        let Some(d) = p.delivers.get(d).filter(|d| !d.repeat) else {
                            *at += 1;
                            continue;
                        };
                        if let Some(b) = class.bit(d.msg) {
                            if !sent.get(b).copied().unwrap_or(true) {
                                if let Some(w) = waiting.get_mut(b) {
                                    w.push(pi);
                                }
                                break;
                            }
                            let span = spans.get(b).copied().unwrap_or(0);
                            let k = know.row_mut(pi);
                            let src = before.row(b);
                            or_into(k, src.get(..span).unwrap_or(src));
                            bits::set(k, b);
                            if let Some(ks) = know_spans.get_mut(pi) {
                                *ks = (*ks).max(span).max(b / 64 + 1);
                            }
                        }
                    }
                    Step::Send(s) => {
                        let Some(s) = p.sends.get(s).filter(|s| s.canonical) else {
                            *at += 1;
                            continue;
                        };
                        if let Some(b) = class.bit(s.msg) {
                            let span = know_spans.get(pi).copied().unwrap_or(0);
                            let k = know.row(pi);
                            for (d, s) in before.row_mut(b).iter_mut().zip(k).take(span) {
                                *d = *s;
                            }
                            if let Some(s) = spans.get_mut(b) {
                                *s = span;
                            }
                            bits::set(know.row_mut(pi), b);
                            if let Some(ks) = know_spans.get_mut(pi) {
                                *ks = (*ks).max(b / 64 + 1);
                            }
                            if let Some(x) = sent.get_mut(b) {
                                *x = true;
                            }
                            if let Some(w) = waiting.get_mut(b) {
                                ready.append(w);
                            }
                        }
                    }
                    Step::Install(_) | Step::GroupView => {}
                }
                *at += 1;
            }
        }

        // Everyone left waits on a send that waits, in turn, on them: the
        // records put deliveries before sends they depend on. Follow the
        // waits around the cycle, report it, and let one of its deliveries
        // go on as if the message had no predecessors, so that the rest of
        // the trace is still checked.
        let stuck_at = |pi: usize| -> Option<(usize, usize)> {
            let p = ix.procs.get(pi)?;
            let Some(Step::Deliver(d)) = p.steps.get(*cursor.get(pi)?) else {
                return None;
            };
            let m = p.delivers.get(*d)?.msg;
            Some((class.bit(m)?, m))
        };
        let Some(start) = (0..procs).find(|&pi| stuck_at(pi).is_some()) else {
            break;
        };
        let mut path: Vec<(usize, usize)> = Vec::new();
        let mut at = start;
        let cycle = loop {
            if let Some(i) = path.iter().position(|&(p, _)| p == at) {
                break path.split_off(i);
            }
            let Some((_, m)) = stuck_at(at) else {
                break path;
            };
            path.push((at, m));
            match ix.msgs.get(m).and_then(|x| x.send) {
                Some(s) => at = s.proc,
                None => break path,
            }
        };
        if cycles < MAX_CYCLES_REPORTED {
            let named: Vec<(Pid, MsgId)> = cycle
                .iter()
                .filter_map(|&(p, m)| Some((ix.pid(p)?, ix.id(m)?)))
                .collect();
            let clauses: Vec<String> = named
                .iter()
                .enumerate()
                .map(|(i, (p, m))| {
                    let next = named.get((i + 1) % named.len()).map_or(m.sender, |x| x.0);
                    format!("{p} delivered {m} before {next} sent it")
                })
                .collect();
            let detail = format!(
                "happened-before has a cycle, which no real run can record: {}",
                clauses.join(", and ")
            );
            out.report(
                named.iter().map(|x| x.0).collect(),
                named.iter().map(|x| x.1).collect(),
                detail,
            );
        }
        cycles += 1;
        let victim = cycle.iter().map(|&(p, _)| p).min().unwrap_or(start);
        if let Some((b, _)) = stuck_at(victim) {
            bits::set(know.row_mut(victim), b);
            if let Some(ks) = know_spans.get_mut(victim) {
                *ks = (*ks).max(b / 64 + 1);
            }
            if let Some(w) = waiting.get_mut(b) {
                w.retain(|&x| x != victim);
            }
        }
        if let Some(c) = cursor.get_mut(victim) {
            *c += 1;
        }
        ready.push(victim);
    }
    if cycles > MAX_CYCLES_REPORTED {
        out.report(
            vec![],
            vec![],
            format!(
                "{} more cycles in happened-before were not reported",
                cycles - MAX_CYCLES_REPORTED
            ),
        );
    }
    (before, spans)
}

#[cfg(test)]
mod tests {
    use crate::check::testutil::*;
    use crate::check::{Property, TraceBuilder};
    use crate::types::{Level, MsgId};

    /// a sends m1; b delivers it and then sends m2: m1 -> m2.
    fn chain(level: Level) -> (TraceBuilder, crate::types::ConfId, MsgId, MsgId) {
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let v = reg(view(1, a));
        let mut t = TraceBuilder::new();
        for p in [a, b, c] {
            t.install(p, v, &[a, b, c], None);
        }
        let m1 = t.multicast(a, level);
        t.deliver(a, m1, v).deliver(b, m1, v);
        let m2 = t.multicast(b, level);
        t.deliver(b, m2, v).deliver(a, m2, v);
        (t, v, m1, m2)
    }

    #[test]
    fn delivering_an_effect_before_its_cause_is_reported() {
        let (mut t, v, m1, m2) = chain(Level::Causal);
        let c = pid(3);
        t.deliver(c, m2, v).deliver(c, m1, v);
        let found = only(&t.build(), Property::CausalOrder);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].processes, vec![c, pid(2)]);
        assert_eq!(found[0].messages, vec![m2, m1]);
    }

    #[test]
    fn a_hole_in_a_regular_configuration_is_reported() {
        let (mut t, v, m1, m2) = chain(Level::Causal);
        let c = pid(3);
        t.deliver(c, m2, v);
        let found = only(&t.build(), Property::CausalOrder);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].messages, vec![m2, m1]);
        assert!(found[0].detail.contains("never"), "{}", found[0].detail);
    }

    #[test]
    fn transitive_predecessors_count() {
        // a: m1; b delivers m1, sends m2; c delivers m2, sends m3; d
        // delivers m3 and m1 but in the wrong order.
        let (a, b, c, d) = (pid(1), pid(2), pid(3), pid(4));
        let v = reg(view(1, a));
        let all = [a, b, c, d];
        let mut t = TraceBuilder::new();
        for p in all {
            t.install(p, v, &all, None);
        }
        let m1 = t.multicast(a, Level::Causal);
        t.deliver(a, m1, v).deliver(b, m1, v);
        let m2 = t.multicast(b, Level::Causal);
        t.deliver(b, m2, v)
            .deliver(a, m2, v)
            .deliver(c, m1, v)
            .deliver(c, m2, v);
        let m3 = t.multicast(c, Level::Agreed);
        for p in [a, b, c] {
            t.deliver(p, m3, v);
        }
        t.deliver(d, m2, v).deliver(d, m3, v).deliver(d, m1, v);
        let found = only(&t.build(), Property::CausalOrder);
        // d delivered m2 before m1, and m3 before m1; m1 is named once.
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].messages, vec![m2, m1]);
    }

    #[test]
    fn fifo_deliveries_carry_no_causality() {
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let v = reg(view(1, a));
        let mut t = TraceBuilder::new();
        for p in [a, b, c] {
            t.install(p, v, &[a, b, c], None);
        }
        let m1 = t.multicast(a, Level::Fifo);
        t.deliver(a, m1, v).deliver(b, m1, v);
        let m2 = t.multicast(b, Level::Causal);
        t.deliver(b, m2, v)
            .deliver(a, m2, v)
            .deliver(c, m2, v)
            .deliver(c, m1, v);
        clean(&t.build());
    }

    #[test]
    fn an_allowed_hole_in_a_transitional_configuration_passes() {
        // c is cut off from a and b after b's m2 reached it but a's m1 did
        // not; it delivers m2 in a transitional configuration of its own:
        // it could not get m1 from anyone it still talks to.
        let (mut t, _, _, m2) = chain(Level::Causal);
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let (v1, v2, w2) = (view(1, a), view(2, a), view(2, c));
        t.install(c, trans(v1, w2), &[c], None);
        t.deliver(c, m2, trans(v1, w2));
        t.install(c, reg(w2), &[c], None);
        for p in [a, b] {
            t.install(p, trans(v1, v2), &[a, b], None);
        }
        for p in [a, b] {
            t.install(p, reg(v2), &[a, b], None);
        }
        clean(&t.build());
    }

    #[test]
    fn a_hole_whose_sender_is_in_the_transitional_configuration_is_reported() {
        let (mut t, _, m1, m2) = chain(Level::Causal);
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let (v1, v2, w2) = (view(1, a), view(2, c), view(2, b));
        // a is in c's transitional configuration: c could have had m1. (a
        // then crashes, so that only causal order is at stake.)
        t.end(a, crate::trace::ProcessEnd::Crashed);
        t.install(c, trans(v1, v2), &[a, c], None);
        t.deliver(c, m2, trans(v1, v2));
        t.install(c, reg(v2), &[a, c], None);
        t.install(b, trans(v1, w2), &[b], None)
            .install(b, reg(w2), &[b], None);
        let found = only(&t.build(), Property::CausalOrder);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].messages, vec![m2, m1]);
        assert!(
            found[0]
                .detail
                .contains("whose sender is in that configuration"),
            "{}",
            found[0].detail
        );
    }

    #[test]
    fn a_delivery_that_precedes_its_own_send_is_reported() {
        // a delivers b's m2 before sending m1, and b delivered m1 before
        // sending m2: no real run can record that.
        let (a, b) = (pid(1), pid(2));
        let v = reg(view(1, a));
        let mut t = TraceBuilder::new();
        t.install(a, v, &[a, b], None).install(b, v, &[a, b], None);
        let m1 = MsgId {
            sender: a,
            view: view(1, a),
            seq: 0,
        };
        let m2 = MsgId {
            sender: b,
            view: view(1, a),
            seq: 0,
        };
        t.deliver_as(a, m2, Level::Causal, "", 2, v);
        t.send(a, m1, Level::Causal, "", 1).deliver(a, m1, v);
        t.deliver(b, m1, v);
        t.send(b, m2, Level::Causal, "", 2).deliver(b, m2, v);
        let found = only(&t.build(), Property::CausalOrder);
        assert!(
            found[0].detail.contains("has a cycle"),
            "{}",
            found[0].detail
        );
    }
}
