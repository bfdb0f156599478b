//! The checker: verifies a run's [`Trace`] against the guarantees of
//! extended virtual synchrony that gc-core promises (DESIGN.md, "The
//! guarantees, as the checker states them").
//!
//! [`check`] builds one index of the trace (per-process record sequences,
//! messages interned in one table, the member list of every configuration)
//! and hands it to one function per property, each in its own file whose
//! doc comment states the definition it checks. It reads record order within
//! each process only: times are compared across processes nowhere except in
//! the liveness bound, because traces gathered from different hosts have
//! skewed clocks.
//!
//! The simulator calls [`check`] after every run, so it is built to be cheap
//! (about 12 ms in the test profile, opt-level 1, for 26 processes, 5,000
//! messages and 41,000 deliveries: the ignored `speed` test in
//! `tests/checker.rs` measures it) and deterministic: everything that
//! reaches the output is ordered. A broken run can violate a property thousands of times; at most
//! [`MAX_REPORTED_PER_PROPERTY`] violations are kept per property, followed
//! by one note saying that more were cut.
//!
//! ```
//! use gc_core::check::{check, Property, TraceBuilder};
//! use gc_core::{ConfId, Level, Pid, ViewId};
//!
//! let (a, b) = (Pid::new(1, 0), Pid::new(2, 0));
//! let v = ViewId { counter: 1, coordinator: a };
//! let mut t = TraceBuilder::new();
//! t.install(a, ConfId::Regular(v), &[a, b], None);
//! t.install(b, ConfId::Regular(v), &[a, b], None);
//! let m = t.multicast(a, Level::Agreed);
//! t.deliver(a, m, ConfId::Regular(v));
//! // b never delivers m although it is running: self-delivery holds, but
//! // liveness, if the run had a liveness phase, would not.
//! assert!(check(&t.clone().build()).is_empty());
//!
//! t.deliver(b, m, ConfId::Regular(v));
//! t.deliver(b, m, ConfId::Regular(v));
//! let found = check(&t.build());
//! assert_eq!(found.len(), 1);
//! assert_eq!(found[0].property, Property::NoDuplicates);
//! ```

use crate::trace::Trace;
use crate::types::{MsgId, Pid};
use serde::{Deserialize, Serialize};
use std::fmt;

mod bits;
mod builder;
mod index;
mod order;

mod agreed_order;
mod causal_order;
mod fifo_order;
mod integrity;
mod liveness;
mod no_duplicates;
mod one_configuration;
mod primary;
mod safe;
mod self_delivery;
mod view_agreement;
mod virtual_synchrony;

#[cfg(test)]
mod testutil;

pub use builder::TraceBuilder;

use index::Index;

/// At most this many violations are reported per property; a note follows
/// when more were found. A broken run must not produce gigabytes of output.
pub const MAX_REPORTED_PER_PROPERTY: usize = 20;

/// At most this many messages are listed in one violation; its detail says
/// how many there were in all.
pub const MAX_LISTED_MESSAGES: usize = 10;

/// The causal and agreed checks keep one bit per pair of messages of their
/// class (`n * n / 8` bytes: 3 MB for 5,000 messages). Beyond this many they
/// report that the trace is too large instead of allocating without bound.
pub const MAX_ORDERED_MESSAGES: usize = 20_000;

/// One of the guarantees the checker verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Property {
    /// Every delivered message was sent, with the same level, group and bytes.
    Integrity,
    /// A process delivers a message at most once; a message is sent once.
    NoDuplicates,
    /// A message is delivered in its view's regular configuration or in the
    /// transitional configuration that follows it, and in the configuration
    /// the receiver had installed.
    OneConfiguration,
    /// Processes agree on the members of each configuration and group view,
    /// and each installs configurations in a legal sequence.
    ViewAgreement,
    /// A process that sends a message and does not crash delivers it.
    SelfDelivery,
    /// Processes that move between the same two regular configurations
    /// deliver the same messages in between.
    VirtualSynchrony,
    /// Per-sender order within a view.
    FifoOrder,
    /// Happened-before order among causal, agreed and safe messages.
    CausalOrder,
    /// One total order among agreed and safe messages.
    AgreedOrder,
    /// A safe message delivered in a regular configuration reaches every
    /// member of that configuration that does not crash or leave.
    Safe,
    /// Primary components form one chain, each with a majority of the last.
    Primary,
    /// After the network heals, running processes converge on one view and
    /// deliver its messages within the stated bound.
    Liveness,
}

impl Property {
    /// Every property, in the order [`check`] reports them.
    pub const ALL: [Property; 12] = [
        Property::Integrity,
        Property::NoDuplicates,
        Property::OneConfiguration,
        Property::ViewAgreement,
        Property::SelfDelivery,
        Property::VirtualSynchrony,
        Property::FifoOrder,
        Property::CausalOrder,
        Property::AgreedOrder,
        Property::Safe,
        Property::Primary,
        Property::Liveness,
    ];

    /// A stable kebab-case name, for output and for matching in tests and
    /// scripts.
    pub fn name(self) -> &'static str {
        match self {
            Property::Integrity => "integrity",
            Property::NoDuplicates => "no-duplicates",
            Property::OneConfiguration => "one-configuration",
            Property::ViewAgreement => "view-agreement",
            Property::SelfDelivery => "self-delivery",
            Property::VirtualSynchrony => "virtual-synchrony",
            Property::FifoOrder => "fifo-order",
            Property::CausalOrder => "causal-order",
            Property::AgreedOrder => "agreed-order",
            Property::Safe => "safe",
            Property::Primary => "primary",
            Property::Liveness => "liveness",
        }
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One way in which a trace breaks a property.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The property broken.
    pub property: Property,
    /// The processes involved, most relevant first.
    pub processes: Vec<Pid>,
    /// The messages involved (at most [`MAX_LISTED_MESSAGES`] of them).
    pub messages: Vec<MsgId>,
    /// What happened, in words.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.property)?;
        write_list(f, " processes ", &self.processes)?;
        write_list(f, " messages ", &self.messages)?;
        write!(f, ": {}", self.detail)
    }
}

fn write_list<T: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    label: &str,
    items: &[T],
) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    f.write_str(label)?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

/// Checks every property against `trace` and returns what it breaks,
/// grouped by property in the order of [`Property::ALL`]; empty when the run
/// was correct. Liveness is checked only when `trace.liveness` is set.
///
/// Deterministic: the same trace gives the same violations in the same order.
pub fn check(trace: &Trace) -> Vec<Violation> {
    let ix = Index::new(trace);
    let mut out = Vec::new();
    for property in Property::ALL {
        let mut sink = Sink::new(property, &mut out);
        match property {
            Property::Integrity => integrity::check(&ix, &mut sink),
            Property::NoDuplicates => no_duplicates::check(&ix, &mut sink),
            Property::OneConfiguration => one_configuration::check(&ix, &mut sink),
            Property::ViewAgreement => view_agreement::check(&ix, &mut sink),
            Property::SelfDelivery => self_delivery::check(&ix, &mut sink),
            Property::VirtualSynchrony => virtual_synchrony::check(&ix, &mut sink),
            Property::FifoOrder => fifo_order::check(&ix, &mut sink),
            Property::CausalOrder => causal_order::check(&ix, &mut sink),
            Property::AgreedOrder => agreed_order::check(&ix, &mut sink),
            Property::Safe => safe::check(&ix, &mut sink),
            Property::Primary => primary::check(&ix, &mut sink),
            Property::Liveness => liveness::check(&ix, &mut sink),
        }
        sink.finish();
    }
    out
}

/// Collects one property's violations, up to the cap.
pub(crate) struct Sink<'a> {
    property: Property,
    out: &'a mut Vec<Violation>,
    reported: usize,
    truncated: bool,
}

impl<'a> Sink<'a> {
    fn new(property: Property, out: &'a mut Vec<Violation>) -> Self {
        Sink {
            property,
            out,
            reported: 0,
            truncated: false,
        }
    }

    /// Records a violation. Returns `false` once the cap is reached, so that
    /// a property can stop looking: what it would find is not reported.
    pub(crate) fn report(
        &mut self,
        processes: Vec<Pid>,
        mut messages: Vec<MsgId>,
        detail: String,
    ) -> bool {
        if self.reported >= MAX_REPORTED_PER_PROPERTY {
            self.truncated = true;
            return false;
        }
        messages.truncate(MAX_LISTED_MESSAGES);
        self.out.push(Violation {
            property: self.property,
            processes,
            messages,
            detail,
        });
        self.reported += 1;
        true
    }

    fn finish(self) {
        if self.truncated {
            self.out.push(Violation {
                property: self.property,
                processes: Vec::new(),
                messages: Vec::new(),
                detail: format!(
                    "more violations of this property were found and not reported (limit {MAX_REPORTED_PER_PROPERTY})"
                ),
            });
        }
    }
}

/// `"a, b, c (and 7 more)"`, for details that name a list.
pub(crate) fn list<T: fmt::Display>(items: impl IntoIterator<Item = T>, total: usize) -> String {
    let mut s = String::new();
    let mut shown = 0;
    for item in items.into_iter().take(MAX_LISTED_MESSAGES) {
        if shown > 0 {
            s.push_str(", ");
        }
        s.push_str(&item.to_string());
        shown += 1;
    }
    if total > shown {
        s.push_str(&format!(" (and {} more)", total - shown));
    }
    s
}
