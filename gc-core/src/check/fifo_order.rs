//! FIFO order: per sender, within a view.
//!
//! Definition checked: for messages m1, m2 sent by the same process in the
//! same view, m1's Send before m2's, where m1.level == Fifo or both are
//! causal-class: any process that delivers m2 delivered m1 before it.
//!
//! There is no EVS exemption here: a receiver that cannot get m1 from its
//! sender must not deliver the sender's later messages either.
//!
//! Each receiver walks each sender's stream once, keeping the latest
//! delivery among the earlier messages of each kind and the earlier ones it
//! never delivered, so the cost is one pass per (stream, receiver) rather
//! than one per pair of messages.

use super::index::{Index, NONE};
use super::{list, Sink};
use crate::types::{Level, Pid, ViewId};
use std::collections::BTreeMap;

/// What a receiver has seen of the earlier messages of one kind in a stream.
#[derive(Default)]
struct Earlier {
    /// The one it delivered last: (position, message).
    latest: Option<(u32, usize)>,
    /// Those it never delivered and that no violation has named yet.
    missing: Vec<usize>,
}

pub(super) fn check(ix: &Index<'_>, out: &mut Sink<'_>) {
    for sender in &ix.procs {
        let mut streams: BTreeMap<ViewId, Vec<(usize, Level)>> = BTreeMap::new();
        for s in sender.sends.iter().filter(|s| s.canonical) {
            if let Some(m) = ix.msgs.get(s.msg) {
                streams.entry(m.id.view).or_default().push((s.msg, m.level));
            }
        }
        for stream in streams.values() {
            for r in &ix.procs {
                let mut fifo = Earlier::default();
                let mut causal = Earlier::default();
                for &(m2, level) in stream {
                    let at = r.first.get(m2).copied().filter(|&f| f != NONE);
                    if let Some(p2) = at {
                        if fifo.broken_by(p2) && !judge(ix, out, r.pid, m2, p2, &mut fifo) {
                            return;
                        }
                        if level.is_causal_class()
                            && causal.broken_by(p2)
                            && !judge(ix, out, r.pid, m2, p2, &mut causal)
                        {
                            return;
                        }
                    }
                    let kind = if level == Level::Fifo {
                        &mut fifo
                    } else if level.is_causal_class() {
                        &mut causal
                    } else {
                        continue;
                    };
                    match (at, kind.latest) {
                        (Some(p), Some((q, _))) if p <= q => {}
                        (Some(p), _) => kind.latest = Some((p, m2)),
                        (None, _) => kind.missing.push(m2),
                    }
                }
            }
        }
    }
}

impl Earlier {
    /// Whether delivering a later message at position `p2` breaks the order.
    fn broken_by(&self, p2: u32) -> bool {
        !self.missing.is_empty() || self.latest.is_some_and(|(p1, _)| p1 > p2)
    }
}

/// Reports what receiver `r`, delivering `m2` at position `p2`, did wrong
/// with respect to the earlier messages in `earlier`. Returns `false` once
/// the cap is reached.
fn judge(
    ix: &Index<'_>,
    out: &mut Sink<'_>,
    r: Pid,
    m2: usize,
    p2: u32,
    earlier: &mut Earlier,
) -> bool {
    let Some(id2) = ix.id(m2) else { return true };
    if !earlier.missing.is_empty() {
        let n = earlier.missing.len();
        let detail = format!(
            "{r} delivered {id2} but never {}, sent before it by the same process",
            list(ix.ids(earlier.missing.iter().copied()), n)
        );
        let mut messages = ix.ids(earlier.missing.drain(..));
        messages.insert(0, id2);
        if !out.report(vec![r, id2.sender], messages, detail) {
            return false;
        }
    }
    if let Some((_, m1)) = earlier.latest.filter(|&(p1, _)| p1 > p2) {
        let Some(id1) = ix.id(m1) else { return true };
        let detail = format!("{r} delivered {id2} before {id1}, which its sender sent first");
        // Named once: that later messages were also delivered before it
        // adds nothing.
        earlier.latest = None;
        if !out.report(vec![r, id2.sender], vec![id1, id2], detail) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use crate::check::testutil::*;
    use crate::check::{Property, TraceBuilder};
    use crate::types::Level;

    fn two() -> (TraceBuilder, crate::types::ConfId) {
        let (a, b) = (pid(1), pid(2));
        let v = reg(view(1, a));
        let mut t = TraceBuilder::new();
        t.install(a, v, &[a, b], None).install(b, v, &[a, b], None);
        (t, v)
    }

    #[test]
    fn reordered_fifo_messages_are_reported() {
        let (mut t, v) = two();
        let (a, b) = (pid(1), pid(2));
        let m1 = t.multicast(a, Level::Fifo);
        let m2 = t.multicast(a, Level::Fifo);
        t.deliver(a, m1, v).deliver(a, m2, v);
        t.deliver(b, m2, v).deliver(b, m1, v);
        let found = only(&t.build(), Property::FifoOrder);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].processes, vec![b, a]);
        assert_eq!(found[0].messages, vec![m1, m2]);
    }

    #[test]
    fn a_fifo_hole_is_reported() {
        let (mut t, v) = two();
        let (a, b) = (pid(1), pid(2));
        let m1 = t.multicast(a, Level::Fifo);
        let m2 = t.multicast(a, Level::Safe);
        t.deliver(a, m1, v).deliver(a, m2, v);
        t.deliver(b, m2, v);
        let found = only(&t.build(), Property::FifoOrder);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].messages, vec![m2, m1]);
        assert!(found[0].detail.contains("never"), "{}", found[0].detail);
    }

    #[test]
    fn a_fifo_message_may_overtake_a_causal_one() {
        let (mut t, v) = two();
        let (a, b) = (pid(1), pid(2));
        let m1 = t.multicast(a, Level::Agreed);
        let m2 = t.multicast(a, Level::Fifo);
        t.deliver(a, m1, v).deliver(a, m2, v);
        t.deliver(b, m2, v).deliver(b, m1, v);
        clean(&t.build());
    }

    #[test]
    fn causal_class_messages_of_one_sender_stay_in_order() {
        // Caught as a FIFO violation (and as a causal one: program order is
        // part of happened-before).
        let (mut t, v) = two();
        let (a, b) = (pid(1), pid(2));
        let m1 = t.multicast(a, Level::Causal);
        let m2 = t.multicast(a, Level::Causal);
        t.deliver(a, m1, v).deliver(a, m2, v);
        t.deliver(b, m2, v).deliver(b, m1, v);
        let found = crate::check::check(&t.build());
        assert!(found.iter().any(|x| x.property == Property::FifoOrder));
        assert!(found.iter().any(|x| x.property == Property::CausalOrder));
    }

    #[test]
    fn different_views_are_different_streams() {
        let (a, b) = (pid(1), pid(2));
        let (v1, v2) = (view(1, a), view(2, a));
        let mut t = TraceBuilder::new();
        t.install(a, reg(v1), &[a, b], None);
        let m1 = t.multicast(a, Level::Fifo);
        t.deliver(a, m1, reg(v1));
        t.install(a, trans(v1, v2), &[a], None)
            .install(a, reg(v2), &[a, b], None);
        t.install(b, reg(v2), &[a, b], None);
        let m2 = t.multicast(a, Level::Fifo);
        t.deliver(a, m2, reg(v2)).deliver(b, m2, reg(v2));
        clean(&t.build());
    }
}
