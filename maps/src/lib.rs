//! Flotilla's replicated tables.
pub mod bounds;
mod primary;
mod replica;
pub mod storage;
mod table;
mod update;
pub mod wal;

pub use bounds::BoundError;
pub use primary::{primary_server, Assigned, Member, Refusal, Sequencer, Tenure};
pub use replica::{Change, Gap, Receipt, Replica, ReplicaError, ReplicaLimits};
pub use storage::{write_file_atomic, FileStorage, MemDisk, MemStorage, Storage};
pub use table::{AppliedUpdate, ApplyError, Entry, InstallError, MapSnapshot, MapState, Tables};
pub use update::{chain_next, Op, Ordered, Outcome, Rejection, Update, UpdateId};
pub use wal::{Cut, Recovered, Wal, WalError};
