//! The trace, indexed once for all properties.
//!
//! Messages are interned in one table sorted by (view, sender, seq), so that
//! a message is a small integer everywhere else and the messages of one view
//! are a contiguous range: the order checks use that to look at one view's
//! bits only.

use crate::trace::{ProcessEnd, ProcessTrace, Trace, TraceEvent};
use crate::types::{ConfId, Level, MsgId, Pid, Time, ViewId};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

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
    /// The record, in the process's trace.
    rec: usize,
    /// The canonical send of the message (see [`Msg::send`]).
    pub(crate) canonical: bool,
}

/// Kept small (there are tens of thousands): the group and digest, which
/// only integrity reads, stay in the record.
pub(crate) struct Delivery<'t> {
    pub(crate) msg: usize,
    pub(crate) conf: &'t ConfId,
    pub(crate) level: Level,
    /// Not the process's first delivery of the message.
    pub(crate) repeat: bool,
    /// Index in `installs` of the configuration installed most recently
    /// before this delivery, or NONE.
    installed: u32,
    /// The record, in the process's trace.
    rec: u32,
}

impl<'t> Delivery<'t> {
    /// Index in `installs` of the configuration installed most recently
    /// before this delivery.
    #[inline]
    pub(crate) fn installed(&self) -> Option<usize> {
        (self.installed != NONE).then_some(self.installed as usize)
    }
}

impl<'t> Proc<'t> {
    /// The group and digest a delivery recorded.
    pub(crate) fn payload(&self, d: &Delivery<'t>) -> Option<(&'t str, u64)> {
        match self.trace.records.get(d.rec as usize).map(|r| &r.event) {
            Some(TraceEvent::Deliver { group, digest, .. }) => Some((group.as_str(), *digest)),
            _ => None,
        }
    }
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
        // Messages are numbered as first seen, through a hash map that is
        // only ever looked up, never iterated; then renumbered by sorting,
        // so output stays deterministic. (Sorting every record's id, or
        // looking each up twice, costs more than most properties.)
        let mut table: IdMap = IdMap::default();
        let mut seen: Vec<MsgId> = Vec::new();
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
                delivers: Vec::with_capacity(p.records.len()),
                first: Vec::new(),
            };
            for (rec, r) in p.records.iter().enumerate() {
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
                    TraceEvent::Send { msg, .. } => {
                        let msg = intern(&mut table, &mut seen, msg);
                        proc.steps.push(Step::Send(proc.sends.len()));
                        proc.sends.push(Send {
                            msg,
                            rec,
                            canonical: false,
                        });
                    }
                    TraceEvent::Deliver {
                        msg, level, conf, ..
                    } => {
                        let msg = intern(&mut table, &mut seen, msg);
                        proc.steps.push(Step::Deliver(proc.delivers.len()));
                        proc.delivers.push(Delivery {
                            msg,
                            conf,
                            level: *level,
                            repeat: false,
                            installed: proc
                                .installs
                                .len()
                                .checked_sub(1)
                                .and_then(|i| u32::try_from(i).ok())
                                .unwrap_or(NONE),
                            rec: u32::try_from(rec).unwrap_or(NONE),
                        });
                    }
                    TraceEvent::GroupView { .. } => proc.steps.push(Step::GroupView),
                }
            }
            procs.push(proc);
        }
        drop(table);

        let mut order: Vec<usize> = (0..seen.len()).collect();
        order.sort_unstable_by_key(|&a| seen.get(a).map(msg_key));
        let mut renumber = vec![0usize; seen.len()];
        for (new, &old) in order.iter().enumerate() {
            if let Some(r) = renumber.get_mut(old) {
                *r = new;
            }
        }
        let mut msgs: Vec<Msg<'t>> = order
            .iter()
            .filter_map(|&old| seen.get(old))
            .map(|&id| Msg {
                id,
                send: None,
                sends: 0,
                level: Level::Fifo,
            })
            .collect();
        let n = msgs.len();
        let mut has_level = vec![false; n];

        for (pi, proc) in procs.iter_mut().enumerate() {
            for s in &mut proc.sends {
                s.msg = renumber.get(s.msg).copied().unwrap_or(usize::MAX);
                let Some(TraceEvent::Send {
                    msg,
                    level,
                    group,
                    digest,
                }) = proc.trace.records.get(s.rec).map(|r| &r.event)
                else {
                    continue;
                };
                let (Some(entry), Some(h)) = (msgs.get_mut(s.msg), has_level.get_mut(s.msg)) else {
                    continue;
                };
                entry.sends = entry.sends.saturating_add(1);
                // The sender's own record wins over anyone else's.
                let better = match &entry.send {
                    None => true,
                    Some(prev) => {
                        proc.pid == msg.sender
                            && trace
                                .processes
                                .get(prev.proc)
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
                    *h = true;
                }
            }
            proc.first = vec![NONE; n];
            for (i, d) in proc.delivers.iter_mut().enumerate() {
                d.msg = renumber.get(d.msg).copied().unwrap_or(usize::MAX);
                match proc.first.get_mut(d.msg) {
                    Some(f) if *f == NONE => *f = u32::try_from(i).unwrap_or(NONE),
                    _ => d.repeat = true,
                }
            }
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
        let mut marked = vec![false; n];
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

    #[inline]
    pub(crate) fn id(&self, m: usize) -> Option<MsgId> {
        self.msgs.get(m).map(|x| x.id)
    }

    /// The ids of messages, skipping any out of range.
    pub(crate) fn ids(&self, ms: impl IntoIterator<Item = usize>) -> Vec<MsgId> {
        ms.into_iter().filter_map(|m| self.id(m)).collect()
    }

    #[inline]
    pub(crate) fn pid(&self, p: usize) -> Option<Pid> {
        self.procs.get(p).map(|x| x.pid)
    }

    /// Where process `p` first delivered message `m`, in its delivery order.
    #[inline]
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
        if let Some(i) = d.installed().and_then(|i| p.installs.get(i)) {
            if i.conf == *d.conf {
                return Some(i.members);
            }
        }
        self.confs.get(d.conf).map(|&(_, m)| m)
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

fn intern(table: &mut IdMap, seen: &mut Vec<MsgId>, m: &MsgId) -> usize {
    *table.entry(*m).or_insert_with(|| {
        seen.push(*m);
        seen.len() - 1
    })
}

type IdMap = HashMap<MsgId, usize, BuildHasherDefault<IdHasher>>;

/// A multiply-rotate hasher for message ids (after rustc's FxHasher): ids
/// are not chosen by an adversary, and SipHash would cost several times
/// more on the checker's hottest lookup.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// An EVS hole is allowed only in a transitional configuration that does
/// not contain the missing message's sender: the receiver could not have got
/// it from anyone it still talks to.
pub(crate) fn hole_allowed(conf: ConfId, members: Option<&[Pid]>, missing_sender: Pid) -> bool {
    matches!(conf, ConfId::Transitional { .. })
        && members.is_some_and(|ms| !ms.contains(&missing_sender))
}
