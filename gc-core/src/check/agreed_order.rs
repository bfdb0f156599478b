//! Agreed order: one total order among agreed and safe messages, with the
//! holes EVS allows.
//!
//! Definition checked: among total-class messages: the union of all
//! processes' delivery orders must be acyclic (report the conflicting pair
//! or cycle with the processes); and no holes: if m1 precedes m2 in that
//! union order (transitively), same view, and process r delivers m2 but
//! never m1, that is a violation unless r delivered m2 in a Transitional
//! configuration whose members do not contain m1.sender.
//!
//! The union order is a graph with an edge between each process's
//! consecutive total-class deliveries. Its strongly connected components are
//! its cycles: each is reported once, as a pair of processes that deliver
//! two messages in opposite orders when there is one, else as the shortest
//! cycle through its first message. Precedence is then computed over the
//! components (a cycle's members all precede each other), as bitsets.

use super::bits::{self, or_into, BitMatrix};
use super::index::Index;
use super::order::{Class, Receiver};
use super::{list, Sink};
use crate::types::{ConfId, Level, Pid};
use std::collections::VecDeque;

const NONE: usize = usize::MAX;

/// Longest cycle searched for a conflicting pair (the search is quadratic).
const PAIR_SEARCH: usize = 16;

pub(super) fn check(ix: &Index<'_>, out: &mut Sink<'_>) {
    let Some(class) = Class::new(ix, Level::is_total_class, out) else {
        return;
    };
    let n = class.len();
    if n == 0 {
        return;
    }
    let graph = Graph::new(ix, &class);
    let (comp, comps) = graph.components();
    for c in &comps {
        if c.len() > 1 && !report_cycle(ix, &class, &graph, &comp, c, out) {
            return;
        }
    }

    // Precedence per component, in topological order (Tarjan finds
    // components sinks first).
    let mut before = BitMatrix::new(comps.len(), n);
    let mut row = vec![0u64; bits::words_for(n)];
    for (ci, c) in comps.iter().enumerate().rev() {
        row.iter_mut().for_each(|w| *w = 0);
        for &x in c {
            for &(u, _) in graph.preds(x) {
                let cu = comp.get(u).copied().unwrap_or(NONE);
                if cu != ci {
                    or_into(&mut row, before.row(cu));
                    bits::set(&mut row, u);
                }
            }
        }
        if c.len() > 1 {
            for &x in c {
                bits::set(&mut row, x);
            }
        }
        before.row_mut(ci).copy_from_slice(&row);
    }

    for r in &ix.procs {
        let mut rx = Receiver::new(&class, r);
        for d in r.delivers.iter().filter(|d| !d.repeat) {
            let Some(b2) = class.bit(d.msg) else { continue };
            let Some(id2) = ix.id(d.msg) else { continue };
            let preds = before.row(comp.get(b2).copied().unwrap_or(NONE));
            let (missing, total) = rx.holes(ix, &class, d, preds);
            if total == 0 {
                continue;
            }
            let ids = ix.ids(missing.iter().filter_map(|&b| class.msg(b)));
            let detail = format!(
                "{} delivered {} in {} but never {}, which precede it in the agreed order of the same view{}",
                r.pid,
                id2,
                d.conf,
                list(&ids, total),
                match d.conf {
                    ConfId::Transitional { .. } => " and whose sender is in that configuration",
                    ConfId::Regular(_) => "",
                }
            );
            let mut processes = vec![r.pid];
            processes.extend(ids.iter().map(|m| m.sender).filter(|s| *s != r.pid));
            processes.dedup();
            let mut messages = ids;
            messages.push(id2);
            if !out.report(processes, messages, detail) {
                return;
            }
        }
    }
}

/// The union of the delivery orders: bits as nodes, an edge per pair of
/// consecutive deliveries, labelled with the first process that made it.
struct Graph {
    succ_off: Vec<usize>,
    succ: Vec<(usize, usize)>,
    pred_off: Vec<usize>,
    pred: Vec<(usize, usize)>,
}

impl Graph {
    fn new(ix: &Index<'_>, class: &Class) -> Self {
        let n = class.len();
        let mut edges: Vec<(usize, usize, usize)> = Vec::new();
        // Processes mostly deliver in the same order: skipping an edge the
        // previous process already gave keeps the sort small.
        let mut last_succ = vec![NONE; n];
        for (pi, p) in ix.procs.iter().enumerate() {
            let mut prev = None;
            for d in p.delivers.iter().filter(|d| !d.repeat) {
                let Some(b) = class.bit(d.msg) else { continue };
                if let Some(a) = prev {
                    if let Some(l) = last_succ.get_mut(a) {
                        if *l != b {
                            *l = b;
                            edges.push((a, b, pi));
                        }
                    }
                }
                prev = Some(b);
            }
        }
        edges.sort_unstable();
        edges.dedup_by_key(|e| (e.0, e.1));
        let (succ_off, succ) = csr(n, edges.iter().map(|&(a, b, p)| (a, b, p)));
        let mut rev: Vec<_> = edges.iter().map(|&(a, b, p)| (b, a, p)).collect();
        rev.sort_unstable();
        let (pred_off, pred) = csr(n, rev.into_iter());
        Graph {
            succ_off,
            succ,
            pred_off,
            pred,
        }
    }

    fn succs(&self, x: usize) -> &[(usize, usize)] {
        slice(&self.succ_off, &self.succ, x)
    }

    fn preds(&self, x: usize) -> &[(usize, usize)] {
        slice(&self.pred_off, &self.pred, x)
    }

    fn len(&self) -> usize {
        self.succ_off.len().saturating_sub(1)
    }

    /// Tarjan's strongly connected components, iteratively (a long order
    /// would overflow the stack recursively). Returns each node's component
    /// and the components, sinks first.
    fn components(&self) -> (Vec<usize>, Vec<Vec<usize>>) {
        let n = self.len();
        let mut index = vec![NONE; n];
        let mut low = vec![0usize; n];
        let mut on_stack = vec![false; n];
        let mut comp = vec![NONE; n];
        let mut comps: Vec<Vec<usize>> = Vec::new();
        let mut stack: Vec<usize> = Vec::new();
        let mut calls: Vec<(usize, usize)> = Vec::new();
        let mut next = 0usize;
        for root in 0..n {
            if index.get(root).copied() != Some(NONE) {
                continue;
            }
            visit(
                root,
                &mut next,
                &mut index,
                &mut low,
                &mut on_stack,
                &mut stack,
                &mut calls,
            );
            while let Some(&mut (v, ref mut e)) = calls.last_mut() {
                if let Some(&(w, _)) = self.succs(v).get(*e) {
                    *e += 1;
                    if index.get(w).copied() == Some(NONE) {
                        visit(
                            w,
                            &mut next,
                            &mut index,
                            &mut low,
                            &mut on_stack,
                            &mut stack,
                            &mut calls,
                        );
                    } else if on_stack.get(w).copied().unwrap_or(false) {
                        let iw = index.get(w).copied().unwrap_or(NONE);
                        if let Some(lv) = low.get_mut(v) {
                            *lv = (*lv).min(iw);
                        }
                    }
                    continue;
                }
                calls.pop();
                let lv = low.get(v).copied().unwrap_or(0);
                if let Some(&(u, _)) = calls.last() {
                    if let Some(lu) = low.get_mut(u) {
                        *lu = (*lu).min(lv);
                    }
                }
                if index.get(v).copied() == Some(lv) {
                    let id = comps.len();
                    let mut c = Vec::new();
                    while let Some(w) = stack.pop() {
                        if let Some(s) = on_stack.get_mut(w) {
                            *s = false;
                        }
                        if let Some(cw) = comp.get_mut(w) {
                            *cw = id;
                        }
                        c.push(w);
                        if w == v {
                            break;
                        }
                    }
                    c.sort_unstable();
                    comps.push(c);
                }
            }
        }
        (comp, comps)
    }
}

fn visit(
    v: usize,
    next: &mut usize,
    index: &mut [usize],
    low: &mut [usize],
    on_stack: &mut [bool],
    stack: &mut Vec<usize>,
    calls: &mut Vec<(usize, usize)>,
) {
    if let (Some(i), Some(l), Some(s)) = (index.get_mut(v), low.get_mut(v), on_stack.get_mut(v)) {
        *i = *next;
        *l = *next;
        *s = true;
        *next += 1;
        stack.push(v);
        calls.push((v, 0));
    }
}

fn csr(
    n: usize,
    sorted: impl Iterator<Item = (usize, usize, usize)>,
) -> (Vec<usize>, Vec<(usize, usize)>) {
    let mut off = vec![0usize; n + 1];
    let mut out = Vec::new();
    for (a, b, p) in sorted {
        if let Some(o) = off.get_mut(a + 1) {
            *o += 1;
        }
        out.push((b, p));
    }
    for i in 1..off.len() {
        let prev = off.get(i - 1).copied().unwrap_or(0);
        if let Some(o) = off.get_mut(i) {
            *o += prev;
        }
    }
    (off, out)
}

fn slice<'a>(off: &[usize], items: &'a [(usize, usize)], x: usize) -> &'a [(usize, usize)] {
    match (off.get(x), off.get(x + 1)) {
        (Some(&lo), Some(&hi)) => items.get(lo..hi).unwrap_or(&[]),
        _ => &[],
    }
}

/// Reports one cycle of component `c`. Returns `false` once the cap is
/// reached.
fn report_cycle(
    ix: &Index<'_>,
    class: &Class,
    g: &Graph,
    comp: &[usize],
    c: &[usize],
    out: &mut Sink<'_>,
) -> bool {
    let Some(&start) = c.first() else { return true };
    let ci = comp.get(start).copied().unwrap_or(NONE);
    let cycle = shortest_cycle(g, comp, ci, start);
    let msg = |b: usize| class.msg(b);

    // A pair delivered in opposite orders says it best.
    let near: Vec<usize> = cycle.iter().map(|&(b, _)| b).take(PAIR_SEARCH).collect();
    for (i, &x) in near.iter().enumerate() {
        for &y in near.iter().skip(i + 1) {
            let (Some(mx), Some(my)) = (msg(x), msg(y)) else {
                continue;
            };
            let mut xy = None;
            let mut yx = None;
            for (pi, p) in ix.procs.iter().enumerate() {
                if let (Some(px), Some(py)) = (ix.delivered_at(pi, mx), ix.delivered_at(pi, my)) {
                    if px < py {
                        xy = xy.or(Some(p.pid));
                    } else {
                        yx = yx.or(Some(p.pid));
                    }
                }
            }
            if let (Some(p), Some(q), Some(idx), Some(idy)) = (xy, yx, ix.id(mx), ix.id(my)) {
                let detail = format!(
                    "{p} delivered {idx} before {idy} but {q} delivered {idy} before {idx}"
                );
                return out.report(vec![p, q], vec![idx, idy], detail);
            }
        }
    }

    let mut processes: Vec<Pid> = Vec::new();
    let mut text = String::new();
    for &(b, p) in &cycle {
        let (Some(id), Some(pid)) = (msg(b).and_then(|m| ix.id(m)), ix.pid(p)) else {
            continue;
        };
        text += &format!("{id} <{pid} ");
        if !processes.contains(&pid) {
            processes.push(pid);
        }
    }
    if let Some(first) = cycle
        .first()
        .and_then(|&(b, _)| msg(b))
        .and_then(|m| ix.id(m))
    {
        text += &first.to_string();
    }
    let messages = ix.ids(cycle.iter().filter_map(|&(b, _)| msg(b)));
    let detail = format!(
        "the delivery orders form a cycle of {} messages (a <p b: p delivered a right before b): {}",
        cycle.len(),
        text
    );
    out.report(processes, messages, detail)
}

/// The shortest cycle through `start` within component `ci`, as (node,
/// process of the edge leaving it).
fn shortest_cycle(g: &Graph, comp: &[usize], ci: usize, start: usize) -> Vec<(usize, usize)> {
    let mut parent: std::collections::BTreeMap<usize, (usize, usize)> =
        std::collections::BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(x) = queue.pop_front() {
        for &(y, p) in g.succs(x) {
            if comp.get(y).copied() != Some(ci) {
                continue;
            }
            if y == start {
                // Walk back from x to start.
                let mut cycle = vec![(x, p)];
                let mut at = x;
                while at != start {
                    let Some(&(prev, pp)) = parent.get(&at) else {
                        break;
                    };
                    cycle.push((prev, pp));
                    at = prev;
                }
                cycle.reverse();
                return cycle;
            }
            if y != start && !parent.contains_key(&y) {
                parent.insert(y, (x, p));
                queue.push_back(y);
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use crate::check::testutil::*;
    use crate::check::{Property, TraceBuilder};
    use crate::trace::ProcessEnd;
    use crate::types::Level;

    fn three() -> (TraceBuilder, crate::types::ConfId) {
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let v = reg(view(1, a));
        let mut t = TraceBuilder::new();
        for p in [a, b, c] {
            t.install(p, v, &[a, b, c], None);
        }
        (t, v)
    }

    #[test]
    fn opposite_orders_are_reported_as_a_pair() {
        let (mut t, v) = three();
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let m1 = t.multicast(a, Level::Agreed);
        let m2 = t.multicast(b, Level::Agreed);
        let m3 = t.multicast(c, Level::Agreed);
        for p in [a, b] {
            t.deliver(p, m1, v).deliver(p, m3, v).deliver(p, m2, v);
        }
        t.deliver(c, m2, v).deliver(c, m3, v).deliver(c, m1, v);
        let found = only(&t.build(), Property::AgreedOrder);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].processes, vec![a, c]);
        assert!(found[0].detail.contains("but"), "{}", found[0].detail);
    }

    #[test]
    fn a_cycle_without_a_conflicting_pair_is_reported() {
        // Each process sees two of the three messages; the orders chain up
        // into m1 < m2 < m3 < m1.
        let (mut t, v) = three();
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let m1 = t.multicast(a, Level::Safe);
        let m2 = t.multicast(b, Level::Safe);
        let m3 = t.multicast(c, Level::Safe);
        t.deliver(a, m1, v).deliver(a, m2, v);
        t.deliver(b, m2, v).deliver(b, m3, v);
        t.deliver(c, m3, v).deliver(c, m1, v);
        // Everyone crashes afterwards, so that safe delivery asks nothing.
        for p in [a, b, c] {
            t.end(p, ProcessEnd::Crashed);
        }
        // The cycle comes first; the holes it implies (b never delivers m1,
        // which precedes m2 around the cycle) follow.
        let found = only(&t.build(), Property::AgreedOrder);
        assert!(
            found[0].detail.contains("cycle of 3"),
            "{}",
            found[0].detail
        );
        assert_eq!(found[0].messages, vec![m1, m2, m3]);
        assert_eq!(found[0].processes, vec![a, b, c]);
    }

    #[test]
    fn a_hole_in_the_agreed_order_is_reported() {
        let (mut t, v) = three();
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let m1 = t.multicast(a, Level::Agreed);
        let m2 = t.multicast(b, Level::Agreed);
        for p in [a, b] {
            t.deliver(p, m1, v).deliver(p, m2, v);
        }
        // c skips m1 in the regular configuration.
        t.deliver(c, m2, v);
        let found = only(&t.build(), Property::AgreedOrder);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].messages, vec![m1, m2]);
        assert_eq!(found[0].processes, vec![c, a]);
    }

    #[test]
    fn an_allowed_hole_in_a_transitional_configuration_passes() {
        // a's m1 was ordered before b's m2 on a's side of a partition; c,
        // cut off from a, gets m2 only and delivers it in a transitional
        // configuration without a.
        let (mut t, v) = three();
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let (v1, v2, w2) = (view(1, a), view(2, a), view(2, c));
        let m1 = t.multicast(a, Level::Agreed);
        let m2 = t.multicast(b, Level::Agreed);
        for p in [a, b] {
            t.deliver(p, m1, v).deliver(p, m2, v);
        }
        t.install(c, trans(v1, w2), &[c], None)
            .deliver(c, m2, trans(v1, w2));
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
        let (mut t, v) = three();
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let (v1, v2, w2) = (view(1, a), view(2, c), view(2, b));
        let m1 = t.multicast(a, Level::Agreed);
        let m2 = t.multicast(b, Level::Agreed);
        for p in [a, b] {
            t.deliver(p, m1, v).deliver(p, m2, v);
        }
        // a is with c, so c could have had m1; a crashes right after.
        t.end(a, ProcessEnd::Crashed);
        t.install(c, trans(v1, v2), &[a, c], None)
            .deliver(c, m2, trans(v1, v2));
        t.install(c, reg(v2), &[a, c], None);
        t.install(b, trans(v1, w2), &[b], None)
            .install(b, reg(w2), &[b], None);
        let found = only(&t.build(), Property::AgreedOrder);
        assert_eq!(found.len(), 1);
        assert!(
            found[0]
                .detail
                .contains("whose sender is in that configuration"),
            "{}",
            found[0].detail
        );
    }

    #[test]
    fn transitive_precedence_counts() {
        // a: m1 m2; b: m2 m3; c delivers m3 but never m1.
        let (mut t, v) = three();
        let (a, b, c) = (pid(1), pid(2), pid(3));
        let m1 = t.multicast(a, Level::Agreed);
        // A FIFO message between them is not part of the agreed order.
        let fifo = t.multicast(a, Level::Fifo);
        let m2 = t.multicast(b, Level::Agreed);
        let m3 = t.multicast(c, Level::Agreed);
        t.deliver(a, m1, v)
            .deliver(a, fifo, v)
            .deliver(a, m2, v)
            .deliver(a, m3, v);
        t.deliver(b, m2, v).deliver(b, m3, v);
        t.deliver(c, m3, v);
        t.end(a, ProcessEnd::Crashed).end(b, ProcessEnd::Crashed);
        let found = only(&t.build(), Property::AgreedOrder);
        // b misses m1; c misses m1 and m2.
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].processes, vec![c, a, b]);
    }
}
