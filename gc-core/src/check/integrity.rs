//! Integrity: every delivered message was sent, with the same bytes.
//!
//! Definition checked: every Deliver of m has a Send of m recorded by the
//! process m.sender, with equal level, group and digest.
//!
//! A Deliver whose message has a Send only by some other process, or whose
//! sender has no trace at all, breaks it as well: the checker cannot vouch
//! for bytes nobody on the sending side recorded.

use super::index::Index;
use super::Sink;

pub(super) fn check(ix: &Index<'_>, out: &mut Sink<'_>) {
    for p in &ix.procs {
        for d in &p.delivers {
            let Some(m) = ix.msgs.get(d.msg) else {
                continue;
            };
            let sender = m.id.sender;
            let (group, digest) = p.payload(d).unwrap_or_default();
            let send = m.send.filter(|s| ix.pid(s.proc) == Some(sender));
            let detail = match send {
                None if !ix.by_pid.contains_key(&sender) => {
                    format!("{} delivered {} but its sender {} has no trace", p.pid, m.id, sender)
                }
                None => match m.send.and_then(|s| ix.pid(s.proc)) {
                    Some(other) => format!(
                        "{} delivered {}, which was recorded as sent by {}, not by its sender",
                        p.pid, m.id, other
                    ),
                    None => format!("{} delivered {}, which its sender never sent", p.pid, m.id),
                },
                Some(s) if s.level != d.level || s.group != group || s.digest != digest => format!(
                    "{} delivered {} as ({:?}, group {:?}, digest {:016x}) but it was sent as ({:?}, group {:?}, digest {:016x})",
                    p.pid, m.id, d.level, group, digest, s.level, s.group, s.digest
                ),
                Some(_) => continue,
            };
            if !out.report(vec![p.pid, sender], vec![m.id], detail) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::check::testutil::*;
    use crate::check::{Property, TraceBuilder};
    use crate::types::{Level, MsgId};

    fn base() -> (TraceBuilder, crate::types::ConfId) {
        let (a, b) = (pid(1), pid(2));
        let v = reg(view(1, a));
        let mut t = TraceBuilder::new();
        t.install(a, v, &[a, b], None).install(b, v, &[a, b], None);
        (t, v)
    }

    #[test]
    fn clean_delivery_passes() {
        let (mut t, v) = base();
        let m = t.multicast(pid(1), Level::Causal);
        t.deliver(pid(1), m, v).deliver(pid(2), m, v);
        clean(&t.build());
    }

    #[test]
    fn changed_digest_is_reported() {
        let (mut t, v) = base();
        let m = t.multicast(pid(1), Level::Fifo);
        t.deliver(pid(1), m, v)
            .deliver_as(pid(2), m, Level::Fifo, "", 42, v);
        let found = only(&t.build(), Property::Integrity);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].messages, vec![m]);
        assert!(found[0].detail.contains("digest"), "{}", found[0].detail);
    }

    #[test]
    fn changed_level_or_group_is_reported() {
        let (mut t, v) = base();
        let m = t.multicast(pid(1), Level::Fifo);
        let d = crate::types::digest(m.to_string().as_bytes());
        t.deliver(pid(1), m, v)
            .deliver_as(pid(2), m, Level::Fifo, "mgmt", d, v);
        assert_eq!(only(&t.clone().build(), Property::Integrity).len(), 1);
        let (mut t, v) = base();
        let m = t.multicast(pid(1), Level::Fifo);
        t.deliver(pid(1), m, v)
            .deliver_as(pid(2), m, Level::Causal, "", d, v);
        assert_eq!(only(&t.build(), Property::Integrity).len(), 1);
    }

    #[test]
    fn delivery_of_unsent_message_is_reported() {
        let (mut t, v) = base();
        let ghost = MsgId {
            sender: pid(1),
            view: view(1, pid(1)),
            seq: 9,
        };
        t.deliver(pid(2), ghost, v);
        let found = only(&t.build(), Property::Integrity);
        assert!(
            found[0].detail.contains("never sent"),
            "{}",
            found[0].detail
        );
    }

    #[test]
    fn send_recorded_by_another_process_is_reported() {
        let (mut t, v) = base();
        // b records a send of a message that names a as its sender.
        let forged = MsgId {
            sender: pid(1),
            view: view(1, pid(1)),
            seq: 0,
        };
        t.send(pid(2), forged, Level::Fifo, "", 1)
            .deliver(pid(2), forged, v);
        let found = only(&t.build(), Property::Integrity);
        assert!(
            found[0].detail.contains("not by its sender"),
            "{}",
            found[0].detail
        );
    }
}
