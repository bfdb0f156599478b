//! Self-delivery: a node that sends m and does not crash delivers m.
//!
//! Definition checked: every Send by a process whose end is not Crashed has
//! a Deliver of the same message by that process.

use super::index::Index;
use super::Sink;
use crate::trace::ProcessEnd;

pub(super) fn check(ix: &Index<'_>, out: &mut Sink<'_>) {
    for (pi, p) in ix.procs.iter().enumerate() {
        if p.trace.end == ProcessEnd::Crashed {
            continue;
        }
        for s in &p.sends {
            if ix.delivered_at(pi, s.msg).is_some() {
                continue;
            }
            let Some(id) = ix.id(s.msg) else { continue };
            let detail = format!(
                "{} sent {} and ended {:?} without delivering it",
                p.pid, id, p.trace.end
            );
            if !out.report(vec![p.pid], vec![id], detail) {
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
    fn undelivered_own_message_is_reported_unless_crashed() {
        let a = pid(1);
        let v = reg(view(1, a));
        let mut t = TraceBuilder::new();
        t.install(a, v, &[a], None);
        let m = t.multicast(a, Level::Causal);
        let found = only(&t.clone().build(), Property::SelfDelivery);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].messages, vec![m]);

        t.end(a, ProcessEnd::Left);
        only(&t.clone().build(), Property::SelfDelivery);

        t.end(a, ProcessEnd::Crashed);
        clean(&t.build());
    }
}
