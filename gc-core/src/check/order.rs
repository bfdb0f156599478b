//! What the causal and the agreed checks share: numbering the messages of
//! one class as bits, and finding the holes EVS does not allow.

use super::bits::{self, range_mask, words_for};
use super::index::{hole_allowed, Delivery, Index, Proc};
use super::{Sink, MAX_LISTED_MESSAGES, MAX_ORDERED_MESSAGES};
use crate::types::{ConfId, Level};

const NO_BIT: u32 = u32::MAX;

/// The messages of one class, numbered in index order (so each view's
/// messages are a contiguous range of bits).
pub(crate) struct Class {
    /// Bit -> message.
    pub(crate) msgs: Vec<usize>,
    /// Message -> bit, or NO_BIT.
    bit_of: Vec<u32>,
    /// Bit -> the bits of its view: [start, end).
    view_of: Vec<(u32, u32)>,
}

impl Class {
    /// The messages whose level passes `of_class`, or `None` (after
    /// reporting it) when there are too many to check.
    pub(crate) fn new(
        ix: &Index<'_>,
        of_class: fn(Level) -> bool,
        out: &mut Sink<'_>,
    ) -> Option<Class> {
        let msgs: Vec<usize> = (0..ix.msgs.len())
            .filter(|&m| ix.msgs.get(m).is_some_and(|x| of_class(x.level)))
            .collect();
        if msgs.len() > MAX_ORDERED_MESSAGES {
            out.report(
                vec![],
                vec![],
                format!(
                    "the trace has {} messages of this class, more than the checker's limit of {}; not checked",
                    msgs.len(),
                    MAX_ORDERED_MESSAGES
                ),
            );
            return None;
        }
        let mut bit_of = vec![NO_BIT; ix.msgs.len()];
        for (b, &m) in msgs.iter().enumerate() {
            if let Some(x) = bit_of.get_mut(m) {
                *x = u32::try_from(b).unwrap_or(NO_BIT);
            }
        }
        // Runs of equal views: the index sorts messages by view first.
        let view = |b: usize| msgs.get(b).and_then(|&m| ix.msgs.get(m)).map(|x| x.id.view);
        let mut view_of = Vec::with_capacity(msgs.len());
        let mut start = 0;
        while start < msgs.len() {
            let v = view(start);
            let mut end = start + 1;
            while end < msgs.len() && view(end) == v {
                end += 1;
            }
            let run = (start as u32, end as u32);
            view_of.extend(std::iter::repeat_n(run, end - start));
            start = end;
        }
        Some(Class {
            msgs,
            bit_of,
            view_of,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.msgs.len()
    }

    #[inline]
    pub(crate) fn bit(&self, m: usize) -> Option<usize> {
        self.bit_of
            .get(m)
            .copied()
            .filter(|&b| b != NO_BIT)
            .map(|b| b as usize)
    }

    #[inline]
    pub(crate) fn msg(&self, b: usize) -> Option<usize> {
        self.msgs.get(b).copied()
    }

    /// The bits of the messages of the same view as bit `b`'s.
    #[inline]
    pub(crate) fn view_bits(&self, b: usize) -> std::ops::Range<usize> {
        self.view_of
            .get(b)
            .map_or(0..0, |&(lo, hi)| lo as usize..hi as usize)
    }

    /// The bits of the messages process `p` ever delivers.
    pub(crate) fn delivered_by(&self, p: &Proc<'_>) -> Vec<u64> {
        let mut all = vec![0u64; words_for(self.len())];
        for d in p.delivers.iter().filter(|d| !d.repeat) {
            if let Some(b) = self.bit(d.msg) {
                bits::set(&mut all, b);
            }
        }
        all
    }
}

/// One receiver, as the order checks walk its deliveries.
pub(crate) struct Receiver<'a, 't> {
    pub(crate) proc: &'a Proc<'t>,
    /// The class's messages it ever delivers.
    pub(crate) delivered: Vec<u64>,
    /// The messages a violation has already named for it: a missing message
    /// is named once per receiver, not once per later message that needed
    /// it.
    pub(crate) named: Vec<u64>,
}

impl<'a, 't> Receiver<'a, 't> {
    pub(crate) fn new(class: &Class, proc: &'a Proc<'t>) -> Self {
        let delivered = class.delivered_by(proc);
        let named = vec![0u64; delivered.len()];
        Receiver {
            proc,
            delivered,
            named,
        }
    }

    /// The predecessors (`preds`) of the message delivered in `d` that are
    /// of the same view, that this receiver never delivers and that EVS does
    /// not excuse, leaving out those already named. Returns up to
    /// [`MAX_LISTED_MESSAGES`] of their bits, now marked as named, and how
    /// many there are.
    pub(crate) fn holes(
        &mut self,
        ix: &Index<'_>,
        class: &Class,
        d: &Delivery<'_>,
        preds: &[u64],
    ) -> (Vec<usize>, usize) {
        let Some(b2) = class.bit(d.msg) else {
            return (Vec::new(), 0);
        };
        let range = class.view_bits(b2);
        if range.is_empty() {
            return (Vec::new(), 0);
        }
        // Only a transitional configuration excuses anything; its members
        // are looked up once there is a hole to excuse.
        let transitional = matches!(d.conf, ConfId::Transitional { .. });
        let mut members = None;
        let mut found = Vec::new();
        let mut total = 0;
        for w in range.start / 64..=(range.end - 1) / 64 {
            let (Some(a), Some(all), Some(seen)) =
                (preds.get(w), self.delivered.get(w), self.named.get(w))
            else {
                continue;
            };
            let x = a & !all & !seen & range_mask(w, range.start, range.end);
            for b in bits::ones(w, x) {
                if transitional {
                    let sender = class
                        .msg(b)
                        .and_then(|m| ix.msgs.get(m))
                        .map(|m| m.id.sender);
                    let members = *members.get_or_insert_with(|| ix.delivery_members(self.proc, d));
                    if sender.is_some_and(|s| hole_allowed(*d.conf, members, s)) {
                        continue;
                    }
                }
                total += 1;
                if found.len() < MAX_LISTED_MESSAGES {
                    found.push(b);
                }
            }
        }
        for &b in &found {
            bits::set(&mut self.named, b);
        }
        (found, total)
    }
}
