//! The message streams of one regular view: every member's frames, what each
//! member acknowledged, and delivery in the four service levels.
//!
//! Ordering (see PROTOCOL.md for the argument):
//! - **FIFO**: a message is delivered once all earlier frames of its sender
//!   are received.
//! - **Causal**: a causal message carries, per member, the last causal-class
//!   message of that member its sender had delivered; it is delivered once
//!   those are delivered here.
//! - **Agreed**: the order is `(ts, sender)`, where `ts` is the Lamport time
//!   carried by every copy. A message is delivered once every other member's
//!   stream is known up to a timestamp at least as large: either a received
//!   frame, or an acknowledgement promising that its later messages have
//!   larger timestamps. Causal messages with smaller timestamps go first, so
//!   the total order is consistent with causality.
//! - **Safe**: agreed, and every member has acknowledged the message.
//!
//! During a view change the stream is capped at the targets the install
//! decided: nothing past them is delivered, so every member moving to the
//! same next view delivers exactly the same messages of this one.

use crate::types::{Level, MsgId, Pid, Time, ViewId};
use crate::wire::{AckFrame, DataFrame, DataKind, SummaryFrame};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A frame held by a receiver.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) frame: Arc<DataFrame>,
    pub(crate) delivered: bool,
}

/// One member's stream as seen here.
#[derive(Clone, Debug, Default)]
pub(crate) struct SenderStream {
    pub(crate) frames: BTreeMap<u64, Stored>,
    /// Every frame up to this one has been received.
    pub(crate) contig: u64,
    /// Frames up to this one have been examined for delivery.
    processed: u64,
    /// Frames up to this one were delivered, stable, and freed.
    gc_floor: u64,
    gc_ts: u64,
    /// Latest promise: once frames up to `promise_sent` are received, later
    /// messages have timestamps above `promise_clock`.
    promise_sent: u64,
    promise_clock: u64,
    /// Highest frame known to exist.
    pub(crate) known_max: u64,
    pub(crate) next_nack: Time,
    pub(crate) nack_tries: u32,
    /// First sequence number of the last causal-class message delivered.
    last_causal: u64,
}

impl SenderStream {
    /// First sequence number of the last causal-class message delivered.
    pub(crate) fn last_causal_delivered(&self) -> u64 {
        self.last_causal
    }

    fn ts_of(&self, seq: u64) -> u64 {
        if seq == 0 {
            return 0;
        }
        match self.frames.get(&seq) {
            Some(s) => s.frame.ts,
            None if seq == self.gc_floor => self.gc_ts,
            None => 0,
        }
    }
}

/// A message ready for the application.
#[derive(Clone, Debug)]
pub(crate) struct Delivered {
    pub(crate) msg: MsgId,
    /// Its timestamp: the deliverer's clock must pass it.
    pub(crate) ts: u64,
    pub(crate) level: Level,
    pub(crate) kind: DataKind,
    pub(crate) payload: Vec<u8>,
}

/// Result of receiving a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Received {
    New,
    Duplicate,
    /// Too far ahead of what is received: dropped, it will be retransmitted.
    TooFarAhead,
}

type Key = (u64, usize, u64);

/// All streams of one view.
#[derive(Clone, Debug)]
pub(crate) struct Streams {
    pub(crate) view: ViewId,
    pub(crate) members: Vec<Pid>,
    pub(crate) me: usize,
    pub(crate) senders: Vec<SenderStream>,
    /// `acks[q][s]`: member q has every frame of s up to this one.
    pub(crate) acks: Vec<Vec<u64>>,
    /// At the hub: the lowest floor of the other members, and the stable
    /// points, as of its last summary.
    summarized_floor: u64,
    summarized_stable: Vec<u64>,
    /// The largest timestamp of an agreed or safe frame received or sent.
    pub(crate) max_total_ts: u64,
    pending_causal: BTreeSet<Key>,
    pending_total: BTreeSet<Key>,
    /// During a view change: deliver nothing past these frames.
    caps: Option<Vec<u64>>,
    recv_window: u64,
    /// How long a gap must stand before the first retransmission request
    /// for it (see [`Streams::first_nack`]).
    pub(crate) nack_grace: std::time::Duration,
    pub(crate) held_bytes: usize,
    pub(crate) held_frames: usize,
    /// A deliberate bug for the checker's own tests.
    pub(crate) agreed_in_arrival_order: bool,
}

impl Streams {
    pub(crate) fn new(view: ViewId, members: Vec<Pid>, me: Pid, recv_window: u64) -> Self {
        let n = members.len();
        let me = members.iter().position(|m| *m == me).unwrap_or(0);
        Streams {
            view,
            members,
            me,
            senders: (0..n)
                .map(|_| SenderStream {
                    next_nack: Time::NEVER,
                    ..SenderStream::default()
                })
                .collect(),
            acks: vec![vec![0; n]; n],
            summarized_floor: 0,
            summarized_stable: vec![0; n],
            max_total_ts: 0,
            pending_causal: BTreeSet::new(),
            pending_total: BTreeSet::new(),
            caps: None,
            recv_window,
            nack_grace: std::time::Duration::ZERO,
            held_bytes: 0,
            held_frames: 0,
            agreed_in_arrival_order: false,
        }
    }

    pub(crate) fn index_of(&self, pid: Pid) -> Option<usize> {
        self.members.binary_search(&pid).ok()
    }

    pub(crate) fn contig_vector(&self) -> Vec<u64> {
        self.senders.iter().map(|s| s.contig).collect()
    }

    /// Adds a received (or own) frame.
    pub(crate) fn insert(&mut self, s: usize, frame: Arc<DataFrame>, now: Time) -> Received {
        let seq = frame.seq;
        let Some(st) = self.senders.get_mut(s) else {
            return Received::Duplicate;
        };
        if seq <= st.contig || st.frames.contains_key(&seq) {
            return Received::Duplicate;
        }
        if seq > st.contig + self.recv_window {
            st.known_max = st.known_max.max(seq);
            return Received::TooFarAhead;
        }
        if matches!(frame.level, Level::Agreed | Level::Safe) {
            self.max_total_ts = self.max_total_ts.max(frame.ts);
        }
        self.held_bytes += frame.payload.len();
        self.held_frames += 1;
        st.frames.insert(
            seq,
            Stored {
                frame,
                delivered: false,
            },
        );
        st.known_max = st.known_max.max(seq);
        while st.frames.contains_key(&(st.contig + 1)) {
            st.contig += 1;
        }
        let first_nack = now.plus(self.nack_grace);
        if st.known_max > st.contig {
            if st.next_nack == Time::NEVER {
                // Not at once: the missing frames are most often still in
                // this process's socket buffer, behind the one that showed
                // the gap; asking at once made most retransmissions under
                // load needless.
                st.next_nack = first_nack;
            }
        } else {
            st.next_nack = Time::NEVER;
            st.nack_tries = 0;
        }
        let contig = st.contig;
        if let Some(row) = self.acks.get_mut(self.me) {
            if let Some(c) = row.get_mut(s) {
                *c = contig;
            }
        }
        // The sender holds every frame of its own stream up to this one (it
        // sent them in order): that is its acknowledgement of them. Without
        // this a safe message waited for its sender's next periodic ack (a
        // heartbeat interval, 50 ms) although the sender had it all along.
        if s != self.me {
            if let Some(c) = self.acks.get_mut(s).and_then(|row| row.get_mut(s)) {
                *c = (*c).max(seq);
            }
        }
        Received::New
    }

    /// Takes in a member's acknowledgement.
    pub(crate) fn on_ack(&mut self, q: usize, ack: &AckFrame, now: Time) {
        if ack.contig.len() != self.members.len() || q == self.me {
            return;
        }
        if let Some(row) = self.acks.get_mut(q) {
            for (mine, theirs) in row.iter_mut().zip(&ack.contig) {
                *mine = (*mine).max(*theirs);
            }
        }
        for (s, &c) in ack.contig.iter().enumerate() {
            if let Some(st) = self.senders.get_mut(s) {
                if s != self.me && c > st.known_max {
                    st.known_max = c;
                }
            }
        }
        self.take_promise(q, ack.sent, ack.clock);
        self.schedule_nacks(now);
    }

    /// A promise of member `q`.
    fn take_promise(&mut self, q: usize, sent: u64, clock: u64) {
        let Some(st) = self.senders.get_mut(q) else {
            return;
        };
        st.known_max = st.known_max.max(sent);
        // Both grow at the member, so the larger pair is the newer one
        // (acks and summaries arrive out of order).
        if (sent, clock) > (st.promise_sent, st.promise_clock) {
            st.promise_sent = sent;
            st.promise_clock = clock;
        }
    }

    fn schedule_nacks(&mut self, now: Time) {
        let first_nack = now.plus(self.nack_grace);
        for st in &mut self.senders {
            if st.known_max > st.contig && st.next_nack == Time::NEVER {
                st.next_nack = first_nack;
            }
        }
    }

    /// Takes in the hub's summary: the members' promises it holds, and
    /// what every member holds.
    pub(crate) fn on_summary(&mut self, m: &SummaryFrame, now: Time) {
        let n = self.members.len();
        if m.promises.len() != n || m.stable.len() != n {
            return;
        }
        for (q, &(sent, clock)) in m.promises.iter().enumerate() {
            if q != self.me {
                self.take_promise(q, sent, clock);
            }
        }
        for row in &mut self.acks {
            for (mine, theirs) in row.iter_mut().zip(&m.stable) {
                *mine = (*mine).max(*theirs);
            }
        }
        self.schedule_nacks(now);
    }

    /// At the hub: whether a summary now would let others deliver or
    /// free something: every other member's floor passed the one last
    /// summarized (an agreed message became deliverable), or a sender's
    /// stable point passed a safe message or a quarter of the window.
    /// Relaying each ack on its own would cost more than it saves.
    pub(crate) fn hub_news(&self, window: u64) -> bool {
        let n = self.members.len();
        if self.others_floor() > self.summarized_floor {
            return true;
        }
        (0..n).any(|s| {
            let old = self.summarized_stable.get(s).copied().unwrap_or(0);
            let new = self.stable(s);
            new > old
                && (new - old >= (window / 4).max(1)
                    || self.senders.get(s).is_some_and(|st| {
                        st.frames
                            .range(old + 1..=new)
                            .any(|(_, f)| f.frame.level == Level::Safe)
                    }))
        })
    }

    /// The lowest floor of the other members.
    pub(crate) fn others_floor(&self) -> u64 {
        (0..self.members.len())
            .filter(|q| *q != self.me)
            .map(|q| self.floor(q, 0))
            .min()
            .unwrap_or(0)
    }

    /// The hub's summary of what it holds.
    pub(crate) fn summary(&mut self, my_sent: u64, my_clock: u64) -> SummaryFrame {
        let n = self.members.len();
        self.summarized_floor = self.others_floor();
        self.summarized_stable = (0..n).map(|s| self.stable(s)).collect();
        let promises = self
            .senders
            .iter()
            .enumerate()
            .map(|(q, st)| {
                if q == self.me {
                    (my_sent, my_clock)
                } else {
                    (st.promise_sent, st.promise_clock)
                }
            })
            .collect();
        SummaryFrame {
            view: self.view,
            promises,
            stable: self.summarized_stable.clone(),
            heard: Vec::new(),
        }
    }

    fn cap(&self, s: usize) -> u64 {
        let contig = self.senders.get(s).map_or(0, |st| st.contig);
        match &self.caps {
            Some(caps) => contig.min(caps.get(s).copied().unwrap_or(0)),
            None => contig,
        }
    }

    /// Every message of member `s` with a timestamp up to this one is
    /// complete here. `my_floor` is the same for this process itself.
    fn floor(&self, s: usize, my_floor: u64) -> u64 {
        if s == self.me {
            return my_floor;
        }
        let Some(st) = self.senders.get(s) else {
            return 0;
        };
        let c = self.cap(s);
        // The fragments of one message share its timestamp: while the last
        // received frame is not a message's last fragment, that message is
        // still incomplete and only earlier timestamps are settled.
        let mut f = match st.frames.get(&c) {
            Some(tail) if tail.frame.frag.0 + 1 != tail.frame.frag.1 => {
                tail.frame.ts.saturating_sub(1)
            }
            _ => st.ts_of(c),
        };
        if st.promise_sent <= c {
            f = f.max(st.promise_clock);
        }
        f
    }

    pub(crate) fn set_caps(&mut self, caps: Vec<u64>, now: Time) {
        for (st, &t) in self.senders.iter_mut().zip(&caps) {
            if t > st.known_max {
                st.known_max = t;
            }
            if st.known_max > st.contig && st.next_nack == Time::NEVER {
                st.next_nack = now;
            }
        }
        self.caps = Some(caps);
    }

    pub(crate) fn clear_caps(&mut self) {
        self.caps = None;
    }

    /// True when every frame this process sent in the view is delivered here.
    pub(crate) fn own_all_delivered(&self) -> bool {
        self.senders
            .get(self.me)
            .is_some_and(|st| st.frames.values().all(|f| f.delivered))
    }

    fn last_seq(&self, s: usize, first: u64) -> u64 {
        self.senders
            .get(s)
            .and_then(|st| st.frames.get(&first))
            .map_or(first, |f| first + u64::from(f.frame.frag.1) - 1)
    }

    fn take_message(&mut self, key: Key) -> Option<Delivered> {
        let (_, s, first) = key;
        let last = self.last_seq(s, first);
        let sender = *self.members.get(s)?;
        let st = self.senders.get_mut(s)?;
        let head = st.frames.get(&first)?.frame.clone();
        // Sized once: grown fragment by fragment, a 256 KiB message from
        // 60 KB fragments was copied again at every doubling.
        let total = if head.frag.1 == 1 {
            0
        } else {
            (first..=last)
                .filter_map(|seq| st.frames.get(&seq))
                .map(|f| f.frame.payload.len())
                .sum()
        };
        let mut payload = Vec::with_capacity(total);
        for seq in first..=last {
            let stored = st.frames.get_mut(&seq)?;
            if stored.delivered {
                return None;
            }
            stored.delivered = true;
            if head.frag.1 == 1 {
                payload = stored.frame.payload.clone();
            } else {
                payload.extend_from_slice(&stored.frame.payload);
            }
        }
        if head.level.is_causal_class() {
            st.last_causal = first;
        }
        Some(Delivered {
            msg: MsgId {
                sender,
                view: self.view,
                seq: first,
            },
            ts: head.ts,
            level: head.level,
            kind: head.kind.clone()?,
            payload,
        })
    }

    fn deps_satisfied(&self, key: Key) -> bool {
        let (_, s, first) = key;
        let Some(frame) = self.senders.get(s).and_then(|st| st.frames.get(&first)) else {
            return false;
        };
        let deps = &frame.frame.deps;
        if deps.len() != self.members.len() {
            return false;
        }
        deps.iter()
            .zip(&self.senders)
            .all(|(&d, st)| d <= st.last_causal)
    }

    fn total_deliverable(&self, key: Key, my_floor: u64) -> bool {
        let (ts, s, first) = key;
        let n = self.members.len();
        if (0..n).any(|q| q != s && self.floor(q, my_floor) < ts) {
            return false;
        }
        let Some(level) = self
            .senders
            .get(s)
            .and_then(|st| st.frames.get(&first))
            .map(|f| f.frame.level)
        else {
            return false;
        };
        if level == Level::Safe {
            let last = self.last_seq(s, first);
            return self
                .acks
                .iter()
                .all(|row| row.get(s).copied().unwrap_or(0) >= last);
        }
        true
    }

    /// Examines newly received frames: FIFO messages are delivered at once,
    /// the others wait in the causal or total queue.
    fn process_new_frames(&mut self, out: &mut Vec<Delivered>) {
        for s in 0..self.senders.len() {
            let cap = self.cap(s);
            loop {
                let seq = match self.senders.get(s) {
                    Some(st) if st.processed < cap => st.processed + 1,
                    _ => break,
                };
                let Some(st) = self.senders.get_mut(s) else {
                    break;
                };
                st.processed = seq;
                let Some(stored) = st.frames.get(&seq) else {
                    continue;
                };
                let f = &stored.frame;
                if f.frag.0 + 1 != f.frag.1 {
                    continue;
                }
                let first = seq - u64::from(f.frag.0);
                let Some(head) = st.frames.get(&first) else {
                    continue;
                };
                let key = (head.frame.ts, s, first);
                let level = head.frame.level;
                match level {
                    Level::Fifo => out.extend(self.take_message(key)),
                    _ if self.agreed_in_arrival_order => out.extend(self.take_message(key)),
                    Level::Causal => {
                        self.pending_causal.insert(key);
                    }
                    Level::Agreed | Level::Safe => {
                        self.pending_total.insert(key);
                    }
                }
            }
        }
    }

    /// Delivers every message the rules allow now. `my_floor`: every later
    /// message of this process will have a larger timestamp.
    pub(crate) fn deliver(&mut self, my_floor: u64, out: &mut Vec<Delivered>) {
        self.process_new_frames(out);
        loop {
            let mut progress = false;
            let ready: Vec<Key> = self
                .pending_causal
                .iter()
                .copied()
                .filter(|k| self.deps_satisfied(*k))
                .collect();
            for key in ready {
                // Delivering one may satisfy the next, in key order.
                if self.deps_satisfied(key) && self.pending_causal.remove(&key) {
                    out.extend(self.take_message(key));
                    progress = true;
                }
            }
            if let Some(&head) = self.pending_total.first() {
                if self.total_deliverable(head, my_floor) {
                    let before: Vec<Key> = self.pending_causal.range(..head).copied().collect();
                    let mut blocked = false;
                    for key in before {
                        if !self.deps_satisfied(key) {
                            blocked = true;
                            break;
                        }
                        self.pending_causal.remove(&key);
                        out.extend(self.take_message(key));
                    }
                    if !blocked {
                        self.pending_total.remove(&head);
                        out.extend(self.take_message(head));
                        progress = true;
                    }
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// Delivers the rest of the view in the transitional configuration:
    /// everything up to the caps, in `(ts, sender)` order, leaving holes only
    /// for messages nobody moving with us received.
    pub(crate) fn deliver_rest(&mut self, out: &mut Vec<Delivered>) {
        self.process_new_frames(out);
        let mut all: Vec<Key> = self
            .pending_causal
            .iter()
            .chain(self.pending_total.iter())
            .copied()
            .collect();
        all.sort_unstable();
        self.pending_causal.clear();
        self.pending_total.clear();
        for key in all {
            out.extend(self.take_message(key));
        }
    }

    /// Frees frames that are delivered here and held by every member.
    pub(crate) fn collect_garbage(&mut self) {
        for s in 0..self.senders.len() {
            let stable = self
                .acks
                .iter()
                .map(|row| row.get(s).copied().unwrap_or(0))
                .min()
                .unwrap_or(0);
            let Some(st) = self.senders.get_mut(s) else {
                continue;
            };
            while st.gc_floor < stable {
                let next = st.gc_floor + 1;
                match st.frames.get(&next) {
                    Some(f) if f.delivered => {
                        if let Some(f) = st.frames.remove(&next) {
                            self.held_bytes = self.held_bytes.saturating_sub(f.frame.payload.len());
                            self.held_frames = self.held_frames.saturating_sub(1);
                            st.gc_ts = f.frame.ts;
                        }
                        st.gc_floor = next;
                    }
                    _ => break,
                }
            }
        }
    }

    /// Frames of member `s` known to exist but missing here, up to `limit`.
    pub(crate) fn missing(&self, s: usize, upto: u64, span: u64) -> Option<(u64, u64)> {
        let st = self.senders.get(s)?;
        if upto <= st.contig {
            return None;
        }
        let from = st.contig + 1;
        let mut to = from;
        while to < upto && to - from + 1 < span && !st.frames.contains_key(&(to + 1)) {
            to += 1;
        }
        Some((from, to))
    }

    /// A stored frame, for retransmission.
    pub(crate) fn frame(&self, s: usize, seq: u64) -> Option<Arc<DataFrame>> {
        self.senders
            .get(s)?
            .frames
            .get(&seq)
            .map(|f| f.frame.clone())
    }

    /// The lowest frame of `s` not yet known to be held by every member.
    pub(crate) fn stable(&self, s: usize) -> u64 {
        self.acks
            .iter()
            .map(|row| row.get(s).copied().unwrap_or(0))
            .min()
            .unwrap_or(0)
    }
}
