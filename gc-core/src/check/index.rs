//! The trace, indexed once for all properties.
//!
//! Messages are interned in one table sorted by (view, sender, seq), so that
//! a message is a small integer everywhere else and the messages of one view
//! are a contiguous range: the order checks use that to look at one view's
//! bits only.

use crate::trace::{ProcessEnd, ProcessTrace, Trace, TraceEvent};
use crate::types::{ConfId, Level, MsgId, Pid, Time, ViewId};
use std::collections::BTreeMap;

/// Marks "never delivered" in [`Proc::first`].
pub(crate) const NONE: u32 = u32::MAX;

pub(crate) struct Index<'t> {
    pub(crate) trace: &'t Trace,
    /// One per entry of `trace.processes`, in the same order.
    pub(crate) procs: Vec<Proc<'t>>,
    /// The first process trace of each pid.
    pub(crate) by_pid: BTreeMap<Pid, usize>,
    /// Every message sent or delivered anywhere, sorted by [`msg_key`].
    pub(crate) msgs: Vec<Msg<'t>>,
    /// Each configuration's first Install anywhere (process index, members).
    pub(crate) confs: BTreeMap<ConfId, (usize, &'t [Pid])>,
}

pub(crate) struct Proc<'t> {
    pub(crate) pid: Pid,
    pub(crate) trace: &'t ProcessTrace,
    /// What it did, in order.
    pub(crate) steps: Vec<Step>,
    pub(crate) installs: Vec<Install<'t>>,
    pub(crate) sends: Vec<Send>,
    pub(crate) delivers: Vec<Delivery<'t>>,
    /// Per message: the index in `delivers` of its first delivery, or NONE.
    pub(crate) first: Vec<u32>,
}

/// One record of a process, pointing into its typed lists.
#[derive(Clone, Copy)]
pub(crate) enum Step {
    Install(usize),
    Send(usize),
    Deliver(usize),
    GroupView,
}

pub(crate) struct Install<'t> {
    pub(crate) conf: ConfId,
    pub(crate) members: &'t [Pid],
    pub(crate) primary: Option<u64>,
    pub(crate) time: Time,
}

pub(crate) struct Send {
    pub(crate) msg: usize,
    /// The canonical send of the message (see [`Msg::send`]).
    pub(crate) canonical: bool,
}

pub(crate) struct Delivery<'t> {
    pub(crate) msg: usize,
    pub(crate) level: Level,
    pub(crate) group: &'t str,
    pub(crate) digest: u64,
    pub(crate) conf: ConfId,
    /// Index in `installs` of the configuration installed most recently
    /// before this delivery.
    pub(crate) installed: Option<usize>,
    /// Not the process's first delivery of the message.
    pub(crate) repeat: bool,
}

pub(crate) struct Msg<'t> {
    pub(crate) id: MsgId,
    /// The send the checker takes as the message's: the first one recorded
    /// by `id.sender`, else the first one recorded by anyone.
    pub(crate) send: Option<SendRef<'t>>,
    /// How many Send records name this message.
    pub(crate) sends: u32,
    /// The send's level, or the first delivery's when nobody recorded a send.
    pub(crate) level: Level,
}

#[derive(Clone, Copy)]
pub(crate) struct SendRef<'t> {
    pub(crate) proc: usize,
    pub(crate) level: Level,
    pub(crate) group: &'t str,
    pub(crate) digest: u64,
}

/// The interning order: view first, so each view is a contiguous range.
pub(crate) fn msg_key(m: &MsgId) -> (ViewId, Pid, u64) {
    (m.view, m.sender, m.seq)
}

impl<'t> Index<'t> {
    pub(crate) fn new(trace: &'t Trace) -> Self {
        let mut ids: Vec<MsgId> = Vec::new();
        for p in &trace.processes {
            for r in &p.records {
                match &r.event {
                    TraceEvent::Send { msg, .. } | TraceEvent::Deliver { msg, .. } => {
                        ids.push(*msg)
                    }
                    TraceEvent::Install { .. } | TraceEvent::GroupView { .. } => {}
                }
            }
        }
        ids.sort_unstable_by_key(msg_key);
        ids.dedup();
        let mut msgs: Vec<Msg<'t>> = ids
            .iter()
            .map(|&id| Msg {
                id,
                send: None,
                sends: 0,
                level: Level::Fifo,
            })
            .collect();
        let mut has_level = vec![false; msgs.len()];

        let mut by_pid = BTreeMap::new();
        let mut confs = BTreeMap::new();
        let mut procs = Vec::with_capacity(trace.processes.len());
        for (pi, p) in trace.processes.iter().enumerate() {
            by_pid.entry(p.pid).or_insert(pi);
            let mut proc = Proc {
                pid: p.pid,
                trace: p,
                steps: Vec::with_capacity(p.records.len()),
                installs: Vec::new(),
                sends: Vec::new(),
                delivers: Vec::new(),
                first: vec![NONE; msgs.len()],
            };
            for r in &p.records {
                match &r.event {
                    TraceEvent::Install {
                        conf,
                        members,
                        primary,
                    } => {
                        confs.entry(*conf).or_insert((pi, members.as_slice()));
                        proc.steps.push(Step::Install(proc.installs.len()));
                        proc.installs.push(Install {
                            conf: *conf,
                            members,
                            primary: *primary,
                            time: r.time,
                        });
                    }
                    TraceEvent::Send {
                        msg,
                        level,
                        group,
                        digest,
                    } => {
                        let Some(m) = lookup(&ids, msg) else { continue };
                        let Some(entry) = msgs.get_mut(m) else {
                            continue;
                        };
                        entry.sends += 1;
                        let better = match &entry.send {
                            None => true,
                            Some(s) => {
                                p.pid == msg.sender
                                    && trace
                                        .processes
                                        .get(s.proc)
                                        .is_some_and(|q| q.pid != msg.sender)
                            }
                        };
                        if better {
                            entry.send = Some(SendRef {
                                proc: pi,
                                level: *level,
                                group,
                                digest: *digest,
                            });
                            entry.level = *level;
                            if let Some(h) = has_level.get_mut(m) {
                                *h = true;
                            }
                        }
                        proc.steps.push(Step::Send(proc.sends.len()));
                        proc.sends.push(Send {
                            msg: m,
                            canonical: false,
                        });
                    }
                    TraceEvent::Deliver {
                        msg,
                        level,
                        group,
                        digest,
                        conf,
                    } => {
                        let Some(m) = lookup(&ids, msg) else { continue };
                        let d = proc.delivers.len();
                        let mut repeat = true;
                        if let Some(f) = proc.first.get_mut(m) {
                            if *f == NONE {
                                *f = u32::try_from(d).unwrap_or(NONE);
                                repeat = false;
                            }
                        }
                        proc.steps.push(Step::Deliver(d));
                        proc.delivers.push(Delivery {
                            msg: m,
                            level: *level,
                            group,
                            digest: *digest,
                            conf: *conf,
                            installed: proc.installs.len().checked_sub(1),
                            repeat,
                        });
                    }
                    TraceEvent::GroupView { .. } => proc.steps.push(Step::GroupView),
                }
            }
            procs.push(proc);
        }

        // A message nobody recorded sending takes its class from its first
        // delivery, so a lost Send record does not hide it from the orders.
        for proc in &procs {
            for d in &proc.delivers {
                if let (Some(h), Some(m)) = (has_level.get_mut(d.msg), msgs.get_mut(d.msg)) {
                    if !*h {
                        *h = true;
                        m.level = d.level;
                    }
                }
            }
        }
        // Mark which Send record is the canonical one: the first by the
        // chosen process.
        let mut marked = vec![false; msgs.len()];
        for (pi, proc) in procs.iter_mut().enumerate() {
            for s in &mut proc.sends {
                let Some(m) = msgs.get(s.msg) else { continue };
                let Some(done) = marked.get_mut(s.msg) else {
                    continue;
                };
                if !*done && m.send.is_some_and(|r| r.proc == pi) {
                    *done = true;
                    s.canonical = true;
                }
            }
        }

        Index {
            trace,
            procs,
            by_pid,
            msgs,
            confs,
        }
    }

    pub(crate) fn id(&self, m: usize) -> Option<MsgId> {
        self.msgs.get(m).map(|x| x.id)
    }

    /// The ids of messages, skipping any out of range.
    pub(crate) fn ids(&self, ms: impl IntoIterator<Item = usize>) -> Vec<MsgId> {
        ms.into_iter().filter_map(|m| self.id(m)).collect()
    }

    pub(crate) fn pid(&self, p: usize) -> Option<Pid> {
        self.procs.get(p).map(|x| x.pid)
    }

    /// Where process `p` first delivered message `m`, in its delivery order.
    pub(crate) fn delivered_at(&self, p: usize, m: usize) -> Option<u32> {
        self.procs
            .get(p)?
            .first
            .get(m)
            .copied()
            .filter(|&f| f != NONE)
    }

    /// The member list of the configuration a delivery was made in: the
    /// receiver's own Install of it, or else anyone's.
    pub(crate) fn delivery_members(&self, p: &Proc<'t>, d: &Delivery<'t>) -> Option<&'t [Pid]> {
        if let Some(i) = d.installed.and_then(|i| p.installs.get(i)) {
            if i.conf == d.conf {
                return Some(i.members);
            }
        }
        self.confs.get(&d.conf).map(|&(_, m)| m)
    }

    /// How a pid's process ended; a pid with no trace counts as crashed.
    pub(crate) fn end_of(&self, pid: Pid) -> ProcessEnd {
        self.by_pid
            .get(&pid)
            .and_then(|&p| self.procs.get(p))
            .map_or(ProcessEnd::Crashed, |p| p.trace.end)
    }

    /// The range of message indices of view `v`.
    pub(crate) fn view_range(&self, v: ViewId) -> std::ops::Range<usize> {
        let lo = self.msgs.partition_point(|m| m.id.view < v);
        let hi = self.msgs.partition_point(|m| m.id.view <= v);
        lo..hi
    }
}

fn lookup(ids: &[MsgId], m: &MsgId) -> Option<usize> {
    ids.binary_search_by(|x| msg_key(x).cmp(&msg_key(m))).ok()
}

/// An EVS hole is allowed only in a transitional configuration that does
/// not contain the missing message's sender: the receiver could not have got
/// it from anyone it still talks to.
pub(crate) fn hole_allowed(conf: ConfId, members: Option<&[Pid]>, missing_sender: Pid) -> bool {
    matches!(conf, ConfId::Transitional { .. })
        && members.is_some_and(|ms| !ms.contains(&missing_sender))
}
