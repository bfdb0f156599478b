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
//! // cfg.hosts: the configured hosts' node ids, as gc-core has them
//! let (mut maps, cut) = MapsServer::open(my_pid, FileStorage::open(dir)?, cfg)?;
//! // log `cut` (a torn log tail removed at recovery) if Some
//! node.join_group(now, &cfg.group)?;                  // on every host
//! for every run of gc-core events ready at once:
//!                            actions = maps.on_events(&events)?;  // one fsync
//! for every client request:  actions = maps.client_request(client_id, request)?;
//! now and then (optional):   actions = maps.retry();  // control messages gc-core refused
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
//! applies it at most once and returns its first outcome; a different
//! update sent with an id already used is refused
//! ([`Refusal::IdReused`], see [`Tables::recall`]). Render targets
//! ([`RenderSpec`]) come from the daemon's configuration only.
//!
//! # How it works
//! - [`Tables`] is the deterministic state machine (bounds in [`bounds`]).
//! - On every regular gc-core primary view, members exchange their maps'
//!   heads and their voting records ([`wire::State`], safe delivery). When
//!   all are in, every member decides alike whether the view may be a maps
//!   **session** ([`vote`]: a majority of the last complete session and of
//!   every session attempted after it), the primary server
//!   ([`primary_server`]: longest tenure in the primary component, then node
//!   id), and per map the history to follow (that of the highest ballot,
//!   then the highest version: see below). Each member records
//!   the session as attempted (on disk), the holder of a chosen history
//!   sends others the log suffix they lack (or a snapshot where the log was
//!   compacted or their history diverged) and the updates it keeps
//!   unapplied ([`wire::Msg::Accept`]); each member, once it holds the
//!   chosen history on disk, takes the session's number as its *ballot*
//!   (on disk) and says so (`Caught`). When every member has, the session
//!   is **complete**: recorded as the last one, and only now does the primary
//!   server order.
//! - The primary server's [`Sequencer`] assigns gap-free versions and
//!   multicasts each update at `Level::Safe`, stamped with the session's
//!   number (its epoch) and the chain digest of the history it follows. A
//!   member that delivers it in the regular configuration of that session
//!   **keeps** it (a `Held` log record, synced at the end of the input) and
//!   reports the versions it has synced (`Durable`). An update is
//!   **applied** (to the tables, answered to its client, rendered) only once
//!   a strict majority of the session's hosts reported it synced. One
//!   delivered in a transitional configuration is kept alike, until the next
//!   session's exchange adopts or drops it.
//! - [`wal`]: checksummed log, snapshots and compaction, recovery that cuts
//!   a torn tail and refuses corruption before it naming file and offset.
//! - [`check`]: the checker the simulator tests run on recorded histories.
//!
//! # Why two histories never both count, and an acknowledged update is never lost
//! gc-core's primary rule is not enough on its own: a gc-core primary view
//! whose maps exchange was cut off never told its members the latest heads,
//! and gc-core lets a majority of it (holding none of them) be the next
//! primary (seeds 1044 and 1074 of the simulator did exactly that).
//! 1. *Complete sessions form one chain, each holding a majority of the
//!    hosts of the one before* ([`vote`] has the induction): every member
//!    records a session as attempted before its `Caught`, so before the
//!    session can complete, and forgets it only on completing a newer one.
//! 2. *Histories of one ballot lie on one chain*: a member's ballot is the
//!    last session whose chosen history it took on (`Caught`), and only a
//!    complete session's primary server orders, one sequencer per session,
//!    each update naming the chain digest of the history below it.
//! 3. *Every chosen history extends every committed update* (committed:
//!    held on disk by a strict majority of its session's hosts, the
//!    condition for anyone to apply it), as in Paxos with ballots = session
//!    numbers and the exchange as phase 1. Let u be committed in session S.
//!    Take any later session T that reaches its `Caught` phase, and suppose
//!    every such session between S and T chose a history extending u. T
//!    holds a majority of the last complete session L before it (1), and
//!    L is S or later. If L is S, T contains a member that keeps u, with a
//!    ballot of at least S. If L is later, every member of L took on L's
//!    chosen history, which extends u, so T contains a member of ballot at
//!    least L with u. The exchange takes the highest ballot B present, and
//!    among members of ballot B the highest version: B's histories extend
//!    u (when B is after S, by the hypothesis; when B is S, they are on S's
//!    chain (2), and the member with u has one of them, so the longest
//!    reaches past u). So T's choice extends u. A member never drops an
//!    applied update (a snapshot below its applied version is ignored),
//!    and keeps held updates on disk, so "keeps u" survives restarts.
//!    The first complete session after S makes every member apply u.
//! 4. Hence the applied tables only ever hold committed updates, which no
//!    later session can drop: any two replicas at version k of a map hold
//!    the same content, and an update reported applied is never lost. An update delivered
//!    only in a transitional configuration, or whose majority the view
//!    change cut off, is answered *unknown*: it may or may not be applied
//!    by a later session, and retrying with its id applies it at most once.
//!
//! Counting is by host (node id), and the records are on the host's disk,
//! so a restarted process keeps its part. A member that crashes holding an
//! update only in gc-core's memory (received, not yet delivered) does not
//! count towards its majority: it never reported it synced.
//!
//! One gap remains in "keeps u on disk": an exchange whose chosen history
//! has a higher ballot than a member's drops that member's kept updates from
//! memory (the chosen history has them, and its holder re-sends them with
//! `Accept`); their log records stay, but a compaction in that window
//! rewrites only what is in memory. A crash of that member right then, with
//! the other members of u's majority also gone, could lose u.
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
pub use table::{
    AppliedUpdate, ApplyError, Entry, InstallError, MapSnapshot, MapState, Recall, Tables,
};
pub use update::{chain_next, Op, Ordered, Outcome, Rejection, Update, UpdateId};
pub use wal::{Cut, Recovered, Wal, WalError};
