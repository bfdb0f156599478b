//! Shorthands for the per-property tests.

use super::{check, Property, Violation};
use crate::trace::Trace;
use crate::types::{ConfId, Pid, ViewId};

pub(crate) fn pid(node: u32) -> Pid {
    Pid::new(node, 0)
}

pub(crate) fn view(counter: u64, coordinator: Pid) -> ViewId {
    ViewId {
        counter,
        coordinator,
    }
}

pub(crate) fn reg(v: ViewId) -> ConfId {
    ConfId::Regular(v)
}

pub(crate) fn trans(from: ViewId, to: ViewId) -> ConfId {
    ConfId::Transitional { from, to }
}

/// Asserts that `trace` breaks `property` and nothing else, and returns the
/// violations (each of which also names the property when displayed).
pub(crate) fn only(trace: &Trace, property: Property) -> Vec<Violation> {
    let found = check(trace);
    let shown: Vec<String> = found.iter().map(|v| v.to_string()).collect();
    assert!(
        !found.is_empty(),
        "expected a {property} violation, found none"
    );
    assert!(
        found.iter().all(|v| v.property == property),
        "expected only {property} violations, found:\n{}",
        shown.join("\n")
    );
    let prefix = format!("[{}]", property.name());
    assert!(shown.iter().all(|s| s.starts_with(&prefix)), "{shown:?}");
    found
}

/// Asserts that `trace` breaks nothing.
pub(crate) fn clean(trace: &Trace) {
    let found: Vec<String> = check(trace).iter().map(|v| v.to_string()).collect();
    assert!(
        found.is_empty(),
        "expected no violations, found:\n{}",
        found.join("\n")
    );
}
