//! Flotilla's replicated tables.
pub mod api;
pub mod bounds;
pub mod check;
mod primary;
pub mod render;
mod replica;
mod server;
pub mod storage;
mod table;
mod update;
pub mod wal;
pub mod wire;

pub use api::{ClientId, Request, RequestError, Response};
pub use bounds::BoundError;
pub use primary::{primary_server, Assigned, Member, Refusal, Sequencer, Tenure};
pub use render::{RenderSpec, Rendered, Template};
pub use replica::{Change, Gap, Receipt, Replica, ReplicaError, ReplicaLimits};
pub use server::{Action, Journaled, MapsError, MapsServer, ServerConfig, Stats};
pub use storage::{write_file_atomic, FileStorage, MemDisk, MemStorage, Storage};
pub use table::{AppliedUpdate, ApplyError, Entry, InstallError, MapSnapshot, MapState, Tables};
pub use update::{chain_next, Op, Ordered, Outcome, Rejection, Update, UpdateId};
pub use wal::{Cut, Recovered, Wal, WalError};
