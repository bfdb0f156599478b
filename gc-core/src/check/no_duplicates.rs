//! No duplicates: a node delivers a message at most once.
//!
//! Definition checked: a process delivers a given MsgId at most once; a
//! MsgId is sent at most once.
//!
//! Also reported here: two process traces with the same pid, since every
//! other property assumes a pid names one record sequence.

use super::index::Index;
use super::Sink;
use std::collections::BTreeMap;

pub(super) fn check(ix: &Index<'_>, out: &mut Sink<'_>) {
    let mut traces: BTreeMap<_, usize> = BTreeMap::new();
    for p in &ix.procs {
        *traces.entry(p.pid).or_default() += 1;
    }
    for (pid, n) in traces {
        if n > 1 && !out.report(vec![pid], vec![], format!("{pid} has {n} process traces")) {
            return;
        }
    }

    for p in &ix.procs {
        if !p.delivers.iter().any(|d| d.repeat) {
            continue;
        }
        let mut times = vec![0u32; ix.msgs.len()];
        for d in &p.delivers {
            if let Some(n) = times.get_mut(d.msg) {
                *n = n.saturating_add(1);
            }
        }
        for d in p.delivers.iter().filter(|d| d.repeat) {
            let (Some(id), Some(n)) = (ix.id(d.msg), times.get_mut(d.msg)) else {
                continue;
            };
            // Zeroed once reported, so each message is reported once per
            // process.
            if *n == 0 {
                continue;
            }
            let detail = format!("{} delivered {} {} times", p.pid, id, *n);
            *n = 0;
            if !out.report(vec![p.pid], vec![id], detail) {
                return;
            }
        }
    }

    for (mi, m) in ix.msgs.iter().enumerate() {
        if m.sends <= 1 {
            continue;
        }
        let senders: Vec<_> = ix
            .procs
            .iter()
            .filter(|p| p.sends.iter().any(|s| s.msg == mi))
            .map(|p| p.pid)
            .collect();
        let detail = format!(
            "{} was sent {} times, by {}",
            m.id,
            m.sends,
            super::list(&senders, senders.len())
        );
        if !out.report(senders, vec![m.id], detail) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::check::testutil::*;
    use crate::check::{Property, TraceBuilder};
    use crate::types::Level;

    #[test]
    fn double_delivery_is_reported_once() {
        let (a, b) = (pid(1), pid(2));
        let v = reg(view(1, a));
        let mut t = TraceBuilder::new();
        t.install(a, v, &[a, b], None).install(b, v, &[a, b], None);
        let m = t.multicast(a, Level::Fifo);
        t.deliver(a, m, v)
            .deliver(b, m, v)
            .deliver(b, m, v)
            .deliver(b, m, v);
        let found = only(&t.build(), Property::NoDuplicates);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].processes, vec![b]);
        assert!(found[0].detail.contains("3 times"), "{}", found[0].detail);
    }

    #[test]
    fn double_send_is_reported() {
        let (a, b) = (pid(1), pid(2));
        let v = reg(view(1, a));
        let mut t = TraceBuilder::new();
        t.install(a, v, &[a, b], None).install(b, v, &[a, b], None);
        let m = t.multicast(a, Level::Fifo);
        t.send(
            a,
            m,
            Level::Fifo,
            "",
            crate::types::digest(m.to_string().as_bytes()),
        );
        t.deliver(a, m, v).deliver(b, m, v);
        let found = only(&t.build(), Property::NoDuplicates);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].messages, vec![m]);
        assert!(
            found[0].detail.contains("sent 2 times"),
            "{}",
            found[0].detail
        );
    }

    #[test]
    fn repeated_pid_is_reported() {
        let a = pid(1);
        let v = reg(view(1, a));
        let mut t = TraceBuilder::new();
        t.install(a, v, &[a], None);
        let mut trace = t.build();
        let copy = trace.processes[0].clone();
        trace.processes.push(copy);
        let found = only(&trace, Property::NoDuplicates);
        assert!(
            found[0].detail.contains("2 process traces"),
            "{}",
            found[0].detail
        );
    }
}
