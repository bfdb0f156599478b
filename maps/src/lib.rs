//! Flotilla's replicated tables.
pub mod bounds;
mod table;
mod update;

pub use bounds::BoundError;
pub use table::{AppliedUpdate, ApplyError, Entry, InstallError, MapSnapshot, MapState, Tables};
pub use update::{Op, Ordered, Outcome, Rejection, Update, UpdateId};
