//! One configuration per message: all nodes that deliver m deliver it in the
//! same regular configuration, or in the transitional configuration that
//! follows it.
//!
//! Definition checked: every Deliver's conf is Regular(m.view) or
//! Transitional{from: m.view, ..}; and it is the configuration the process
//! had most recently installed at that point of its record sequence.

use super::index::Index;
use super::Sink;

pub(super) fn check(ix: &Index<'_>, out: &mut Sink<'_>) {
    for p in &ix.procs {
        for d in &p.delivers {
            let Some(id) = ix.id(d.msg) else { continue };
            let current = d
                .installed()
                .and_then(|i| p.installs.get(i))
                .map(|i| i.conf);
            let detail = if d.conf.regular() != id.view {
                format!(
                    "{} delivered {} in {}, but it was sent in {}",
                    p.pid, id, d.conf, id.view
                )
            } else if current != Some(*d.conf) {
                match current {
                    Some(c) => format!(
                        "{} delivered {} in {} while its configuration was {}",
                        p.pid, id, d.conf, c
                    ),
                    None => format!(
                        "{} delivered {} in {} before installing any configuration",
                        p.pid, id, d.conf
                    ),
                }
            } else {
                continue;
            };
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
    use crate::types::{Level, MsgId};

    #[test]
    fn delivery_in_another_view_is_reported() {
        let (a, b) = (pid(1), pid(2));
        let (v1, v2) = (view(1, a), view(2, a));
        let mut t = TraceBuilder::new();
        t.install(a, reg(v1), &[a, b], None)
            .install(b, reg(v1), &[a, b], None);
        let m = t.multicast(a, Level::Fifo);
        t.deliver(a, m, reg(v1));
        // b moves on alone and delivers v1's message in v2, which is not
        // the view it was sent in.
        t.install(b, reg(v2), &[b], None);
        t.deliver(b, m, reg(v2));
        let found = only(&t.build(), Property::OneConfiguration);
        assert_eq!(found.len(), 1);
        assert!(found[0].detail.contains("sent in"), "{}", found[0].detail);
    }

    #[test]
    fn delivery_naming_a_configuration_not_installed_is_reported() {
        let (a, b) = (pid(1), pid(2));
        let (v1, v2) = (view(1, a), view(2, a));
        let mut t = TraceBuilder::new();
        t.install(a, reg(v1), &[a, b], None)
            .install(b, reg(v1), &[a, b], None);
        let m = t.multicast(a, Level::Fifo);
        t.deliver(a, m, reg(v1));
        // b claims a transitional configuration it never installed.
        t.install(a, trans(v1, v2), &[a, b], None);
        t.deliver(b, m, trans(v1, v2));
        t.install(a, reg(v2), &[a, b], None)
            .install(b, reg(v2), &[a, b], None);
        let found = only(&t.build(), Property::OneConfiguration);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].detail.contains("while its configuration was"),
            "{}",
            found[0].detail
        );
    }

    #[test]
    fn delivery_before_any_install_is_reported() {
        let a = pid(1);
        let v1 = view(1, a);
        let mut t = TraceBuilder::new();
        let m = MsgId {
            sender: a,
            view: v1,
            seq: 0,
        };
        t.send(a, m, Level::Fifo, "", 0).deliver(a, m, reg(v1));
        t.install(a, reg(v1), &[a], None);
        let found = only(&t.build(), Property::OneConfiguration);
        assert!(
            found[0].detail.contains("before installing"),
            "{}",
            found[0].detail
        );
    }
}
