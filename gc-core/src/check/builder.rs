//! Writing traces by hand, for the checker's tests and for reproducing a
//! failure in a few lines.

use crate::trace::{
    GroupViewId, LivenessPhase, ProcessEnd, ProcessTrace, Trace, TraceEvent, TraceRecord,
};
use crate::types::{digest, ConfId, Level, MsgId, Pid, Time, ViewId};
use std::collections::BTreeMap;
use std::time::Duration;

/// The step between two consecutive records, when the caller does not set
/// the clock.
const TICK: Duration = Duration::from_millis(1);

/// Builds a [`Trace`] record by record.
///
/// Records are appended to each process's sequence in call order, and the
/// order of calls is the only order the checker reads within a process.
/// Every record is stamped with the builder's clock, which starts at 1 ms
/// and advances by 1 ms per record; [`TraceBuilder::at`] moves it, for
/// traces whose times matter (the liveness bound). A process exists from its
/// first record (or [`TraceBuilder::process`]) and ends
/// [`ProcessEnd::Running`] with nothing unsent unless told otherwise.
///
/// ```
/// use gc_core::check::TraceBuilder;
/// use gc_core::{ConfId, Level, Pid, ViewId};
///
/// let (a, b) = (Pid::new(1, 0), Pid::new(2, 0));
/// let v1 = ConfId::Regular(ViewId { counter: 1, coordinator: a });
/// let mut t = TraceBuilder::new();
/// t.install(a, v1, &[a, b], Some(1)).install(b, v1, &[a, b], Some(1));
/// let m = t.multicast(a, Level::Safe);
/// t.deliver(a, m, v1).deliver(b, m, v1);
/// let trace = t.build();
/// assert_eq!(trace.processes.len(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct TraceBuilder {
    processes: Vec<ProcessTrace>,
    by_pid: BTreeMap<Pid, usize>,
    clock: Time,
    sends: BTreeMap<MsgId, (Level, String, u64)>,
    view: BTreeMap<Pid, ViewId>,
    next_seq: BTreeMap<(Pid, ViewId), u64>,
    liveness: Option<LivenessPhase>,
}

impl Default for TraceBuilder {
    fn default() -> Self {
        TraceBuilder::new()
    }
}

impl TraceBuilder {
    /// An empty trace, with the clock at 1 ms.
    pub fn new() -> Self {
        TraceBuilder {
            processes: Vec::new(),
            by_pid: BTreeMap::new(),
            clock: Time::ZERO.plus(TICK),
            sends: BTreeMap::new(),
            view: BTreeMap::new(),
            next_seq: BTreeMap::new(),
            liveness: None,
        }
    }

    /// Makes sure `p` has a trace, even with no records.
    pub fn process(&mut self, p: Pid) -> &mut Self {
        self.slot(p);
        self
    }

    /// `p` installs `conf` with `members` (sorted here), primary number
    /// `primary`.
    pub fn install(
        &mut self,
        p: Pid,
        conf: ConfId,
        members: &[Pid],
        primary: Option<u64>,
    ) -> &mut Self {
        let mut members = members.to_vec();
        members.sort_unstable();
        if let ConfId::Regular(v) = conf {
            self.view.insert(p, v);
        }
        self.record(
            p,
            TraceEvent::Install {
                conf,
                members,
                primary,
            },
        )
    }

    /// `p` sends `msg`.
    pub fn send(
        &mut self,
        p: Pid,
        msg: MsgId,
        level: Level,
        group: &str,
        digest: u64,
    ) -> &mut Self {
        self.sends
            .entry(msg)
            .or_insert_with(|| (level, group.to_owned(), digest));
        let next = self.next_seq.entry((msg.sender, msg.view)).or_insert(0);
        *next = (*next).max(msg.seq.saturating_add(1));
        self.record(
            p,
            TraceEvent::Send {
                msg,
                level,
                group: group.to_owned(),
                digest,
            },
        )
    }

    /// `p` sends a new message in the regular view it installed last (the
    /// default view if none), with the next sequence number of its stream
    /// there, to group `""`, with a digest derived from the id. Returns the
    /// message's id.
    pub fn multicast(&mut self, p: Pid, level: Level) -> MsgId {
        let view = self.view.get(&p).copied().unwrap_or_default();
        let seq = self.next_seq.get(&(p, view)).copied().unwrap_or(0);
        let msg = MsgId {
            sender: p,
            view,
            seq,
        };
        self.send(p, msg, level, "", digest(msg.to_string().as_bytes()));
        msg
    }

    /// `p` delivers `msg` in `conf`, with the level, group and digest of its
    /// first send in this builder (FIFO, `""` and 0 if it was never sent).
    pub fn deliver(&mut self, p: Pid, msg: MsgId, conf: ConfId) -> &mut Self {
        let (level, group, digest) =
            self.sends
                .get(&msg)
                .cloned()
                .unwrap_or((Level::Fifo, String::new(), 0));
        self.record(
            p,
            TraceEvent::Deliver {
                msg,
                level,
                group,
                digest,
                conf,
            },
        )
    }

    /// `p` delivers `msg` in `conf` as the given level, group and digest,
    /// whatever was sent.
    pub fn deliver_as(
        &mut self,
        p: Pid,
        msg: MsgId,
        level: Level,
        group: &str,
        digest: u64,
        conf: ConfId,
    ) -> &mut Self {
        self.record(
            p,
            TraceEvent::Deliver {
                msg,
                level,
                group: group.to_owned(),
                digest,
                conf,
            },
        )
    }

    /// `p` installs view `id` of group `group` with `members` (sorted here).
    pub fn group_view(
        &mut self,
        p: Pid,
        group: &str,
        id: GroupViewId,
        members: &[Pid],
    ) -> &mut Self {
        let mut members = members.to_vec();
        members.sort_unstable();
        self.record(
            p,
            TraceEvent::GroupView {
                group: group.to_owned(),
                id,
                members,
            },
        )
    }

    /// Appends any event to `p`'s records.
    pub fn record(&mut self, p: Pid, event: TraceEvent) -> &mut Self {
        let time = self.clock;
        self.clock = self.clock.plus(TICK);
        let i = self.slot(p);
        if let Some(pt) = self.processes.get_mut(i) {
            pt.records.push(TraceRecord { time, event });
        }
        self
    }

    /// How `p`'s trace ends.
    pub fn end(&mut self, p: Pid, end: ProcessEnd) -> &mut Self {
        let i = self.slot(p);
        if let Some(pt) = self.processes.get_mut(i) {
            pt.end = end;
        }
        self
    }

    /// How many of `p`'s multicasts were still unsent at the end.
    pub fn unsent(&mut self, p: Pid, n: u64) -> &mut Self {
        let i = self.slot(p);
        if let Some(pt) = self.processes.get_mut(i) {
            pt.unsent_at_end = n;
        }
        self
    }

    /// The run ends with a liveness phase: healed at `healed_at`, converged
    /// within `bound`.
    pub fn liveness(&mut self, healed_at: Time, bound: Duration) -> &mut Self {
        self.liveness = Some(LivenessPhase { healed_at, bound });
        self
    }

    /// Sets the clock: the next record happens at `t`.
    pub fn at(&mut self, t: Time) -> &mut Self {
        self.clock = t;
        self
    }

    /// The time the next record will get.
    pub fn now(&self) -> Time {
        self.clock
    }

    /// The trace. Consumes the builder: clone it first to build a trace
    /// and go on adding to it.
    pub fn build(self) -> Trace {
        Trace {
            processes: self.processes,
            liveness: self.liveness,
        }
    }

    fn slot(&mut self, p: Pid) -> usize {
        if let Some(&i) = self.by_pid.get(&p) {
            return i;
        }
        let i = self.processes.len();
        self.processes.push(ProcessTrace {
            pid: p,
            records: Vec::new(),
            end: ProcessEnd::Running,
            unsent_at_end: 0,
        });
        self.by_pid.insert(p, i);
        i
    }
}
