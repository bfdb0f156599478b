//! Flotilla's replicated tables (NIS-style maps): named tables of string
//! keys to values, updated only in the primary component, ordered by one
//! primary server, kept on disk by every server, and caught up after a
//! partition or a restart with only what a replica lacks.
//!
//! # For the daemon: [`MapsServer`]
//! One object per process, without I/O of its own except its [`Storage`]
//! (a [`FileStorage`] directory from the daemon's configuration):
//!
//! ```text
//! let (mut maps, cut) = MapsServer::open(my_pid, FileStorage::open(dir)?, cfg)?;
//! // log `cut` (a torn log tail removed at recovery) if Some
//! node.join_group(now, &cfg.group)?;                  // on every host
//! for every gc-core event:   actions = maps.on_event(&event)?;
//! for every client request:  actions = maps.client_request(client_id, request)?;
//! for each action, in order:
//!     Action::Multicast { level, payload } => node.multicast(now, &cfg.group, level, payload)
//!                                             (on Err: actions = maps.on_send_failed(&payload))
//!     Action::Reply { client, response }   => send `response` to that client
//!     Action::Render(r)                    => r.write()  (write, fsync, rename)
//! an Err from MapsServer: its disk failed or two primaries were seen; stop
//! the daemon with the message.
//! ```
//!
//! Clients speak [`api::Request`] / [`api::Response`] (serde, bounded):
//! updates ([`Op`]: create, drop, set, del, compare-and-set, batch; bulk loads
//! through [`api::load_batches`]), `get`/`list` with a stale flag or
//! `consistent` through the primary server, `maps`, and `history`. Each
//! update carries a client-chosen [`UpdateId`]: an update caught by a view
//! change is answered [`Response::Unknown`], and retrying with the same id
//! applies it at most once and returns its first outcome. Render targets
//! ([`RenderSpec`]) come from the daemon's configuration only.
//!
//! # How it works
//! - [`Tables`] is the deterministic state machine (bounds in [`bounds`]).
//! - On every regular primary view, members exchange their maps' heads
//!   ([`wire::State`], safe delivery). When all are in, every member picks
//!   alike: the primary server ([`primary_server`]: longest tenure in the
//!   primary component, then node id), and per map the history to follow
//!   (the head of the latest epoch, then the highest version). The member
//!   holding it sends others the log suffix they lack, or a snapshot where
//!   the log was compacted or their history diverged.
//! - The primary server's [`Sequencer`] assigns gap-free versions and
//!   multicasts each update at `Level::Safe`, stamped with the view's primary
//!   number (its epoch) and the chain digest of the history it follows. An
//!   update delivered in the regular configuration of the primary view of
//!   its own epoch is applied and logged (fsync) before any reply; one
//!   delivered in a transitional configuration is held, unapplied, until
//!   the next primary view's exchange adopts or drops it.
//! - [`wal`]: checksummed log, snapshots and compaction, recovery that cuts
//!   a torn tail and refuses corruption before it naming file and offset.
//! - [`check`]: the checker the simulator tests run on recorded histories.
// Tests may unwrap: a panic there is a failed test, not a crashed daemon.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

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
pub mod vote;
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
