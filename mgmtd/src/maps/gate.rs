//! Holds a regular node view back from the maps server until every member
//! of the view is in the `maps` group.
//!
//! The maps servers start their state exchange on every regular view and
//! wait for the state of every member of the view. A member that is not in
//! the `maps` group of that view does not receive the others' states, and
//! the exchange never ends. That happens: gc-core builds a view's group
//! membership from the join states its members sent during the view
//! change, and a `join_group` made after a process sent its join state (a
//! daemon starting while the others merge) is dropped at the install as if
//! it had been counted. So the gate:
//!
//! - learns whether this process is in the group: gc-core emits the group
//!   view of each group a process belongs to right after the regular view,
//!   so the event after the view says it; if it is not, and the view is
//!   still the same a moment later (a view change takes the process's
//!   intent into the next group membership and repairs it, while a leave
//!   landing in the next view would do harm), the process leaves and joins
//!   again (agreed order: every member sees the new group view at the same
//!   point of the view's total order). A view change between that check and
//!   the leave is a window left open;
//! - forwards the view (and what came after it) only once a group view of
//!   this view holds every member. Every member does the same, so the
//!   states are multicast after the last join and reach every member.
//!
//! A view superseded while held is forwarded before the next one (the
//! server's tenure counts every view).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gc_core::{ConfId, Event, Pid, ViewId, ViewInfo};

/// How long after a regular view its group view may come before this
/// process concludes it is not in the group. gc-core emits both at once.
pub(super) const MEMBERSHIP_WAIT: Duration = Duration::from_secs(1);
/// How long a view may be held before the gate says why.
const HELD_REPORT: Duration = Duration::from_secs(5);

struct Held {
    info: ViewInfo,
    view: ViewId,
    queued: Vec<Event>,
    since: Instant,
    reported: bool,
    in_group: BTreeSet<Pid>,
}

/// What the pump must do besides forwarding.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Todo {
    /// Nothing.
    Nothing,
    /// Leave and join the `maps` group again: this process is not in it
    /// in this view.
    Rejoin(ViewId),
}

pub(super) struct Gate {
    me: Pid,
    group: String,
    held: Option<Held>,
    /// A regular view was the last event: the next one tells whether this
    /// process is in the group.
    expect: Option<(ViewId, Instant)>,
}

impl Gate {
    pub(super) fn new(me: Pid, group: &str) -> Gate {
        Gate {
            me,
            group: group.to_owned(),
            held: None,
            expect: None,
        }
    }

    /// Whether the pump should call [`Gate::timeout`] at some point.
    pub(super) fn expecting(&self) -> bool {
        self.expect.is_some() || self.held.is_some()
    }

    /// Time passed without events.
    pub(super) fn timeout(&mut self, now: Instant) -> Todo {
        if let Some(held) = &mut self.held {
            if !held.reported && now.duration_since(held.since) > HELD_REPORT {
                held.reported = true;
                let missing: Vec<String> = held
                    .info
                    .members
                    .iter()
                    .filter(|m| !held.in_group.contains(m))
                    .map(Pid::to_string)
                    .collect();
                tracing::warn!(
                    view = %held.view,
                    missing = %missing.join(", "),
                    "members of the view are not in the maps group; the maps wait for them \
                     (does every host have the same `maps:` section?)"
                );
            }
        }
        match self.expect {
            Some((view, at)) if now.duration_since(at) > MEMBERSHIP_WAIT => {
                self.expect = None;
                Todo::Rejoin(view)
            }
            _ => Todo::Nothing,
        }
    }

    /// One event from the runtime; what the server gets is appended to `out`.
    pub(super) fn on_event(&mut self, event: Event, now: Instant, out: &mut Vec<Event>) -> Todo {
        let mut todo = Todo::Nothing;
        if let Some((view, _)) = self.expect.take() {
            let member = matches!(&event, Event::GroupView { group, id, members }
                if *group == self.group && id.view == view && members.contains(&self.me));
            if !member {
                todo = Todo::Rejoin(view);
            }
        }
        match event {
            Event::View(info) => {
                self.release(out);
                match info.conf {
                    ConfId::Regular(view) => {
                        self.expect = Some((view, now));
                        self.held = Some(Held {
                            info,
                            view,
                            queued: Vec::new(),
                            since: now,
                            reported: false,
                            in_group: BTreeSet::new(),
                        });
                    }
                    ConfId::Transitional { .. } => out.push(Event::View(info)),
                }
            }
            Event::GroupView { group, id, members } if group == self.group => {
                let complete = match &mut self.held {
                    Some(held) if held.view == id.view => {
                        held.in_group = members.iter().copied().collect();
                        held.info.members.iter().all(|m| held.in_group.contains(m))
                    }
                    _ => false,
                };
                if complete {
                    self.release(out);
                }
            }
            Event::Left => {
                self.release(out);
                out.push(Event::Left);
            }
            other => match &mut self.held {
                Some(held) => held.queued.push(other),
                None => out.push(other),
            },
        }
        todo
    }

    fn release(&mut self, out: &mut Vec<Event>) {
        if let Some(held) = self.held.take() {
            out.push(Event::View(held.info));
            out.extend(held.queued);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gc_core::GroupViewId;

    fn view(members: &[Pid]) -> (ViewId, Event) {
        let id = ViewId {
            counter: 3,
            coordinator: members[0],
        };
        (
            id,
            Event::View(ViewInfo {
                conf: ConfId::Regular(id),
                members: members.to_vec(),
                primary: Some(1),
            }),
        )
    }

    fn group_view(view: ViewId, change: u32, members: &[Pid]) -> Event {
        Event::GroupView {
            group: "maps".into(),
            id: GroupViewId { view, change },
            members: members.to_vec(),
        }
    }

    #[test]
    fn holds_the_view_until_every_member_is_in_the_group() {
        let (a, b) = (Pid::new(1, 1), Pid::new(2, 1));
        let mut gate = Gate::new(a, "maps");
        let now = Instant::now();
        let mut out = Vec::new();
        let (id, v) = view(&[a, b]);
        assert_eq!(gate.on_event(v, now, &mut out), Todo::Nothing);
        assert_eq!(
            gate.on_event(group_view(id, 0, &[a]), now, &mut out),
            Todo::Nothing
        );
        assert!(out.is_empty());
        assert_eq!(
            gate.on_event(group_view(id, 1, &[a, b]), now, &mut out),
            Todo::Nothing
        );
        assert!(matches!(out.as_slice(), [Event::View(_)]));
    }

    #[test]
    fn a_process_missing_from_the_group_rejoins() {
        let (a, b) = (Pid::new(1, 1), Pid::new(2, 1));
        let mut gate = Gate::new(b, "maps");
        let now = Instant::now();
        let mut out = Vec::new();
        let (id, v) = view(&[a, b]);
        gate.on_event(v, now, &mut out);
        // The next event is not this process's group view.
        assert_eq!(gate.on_event(Event::Left, now, &mut out), Todo::Rejoin(id));
        let mut gate = Gate::new(b, "maps");
        gate.on_event(view(&[a, b]).1, now, &mut Vec::new());
        assert_eq!(gate.timeout(now + MEMBERSHIP_WAIT * 2), Todo::Rejoin(id));
    }
}
