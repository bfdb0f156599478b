//! The tokio runtime: one task drives a [`Node`](crate::Node) over a UDP
//! socket, as `quinn` drives `quinn-proto`.
//!
//! [`spawn`] (or [`Runtime::start`]) binds the socket, gives the process a
//! fresh incarnation, and spawns the **driver**, the one task that owns the
//! node, the [`Sealer`](crate::seal::Sealer) and the socket. The
//! application talks to it through a [`Handle`] (cloneable; requests go
//! through a bounded command queue) and reads what the node delivers from
//! [`Events`] (a bounded queue).
//!
//! ```no_run
//! use gc_core::runtime::{spawn, RuntimeConfig};
//! use gc_core::{Config, Event, Level, Pid, PrimaryState};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let mut node = Config::new(Pid::new(1, 0)); // the runtime picks the incarnation
//! node.seeds = vec!["10.0.0.2:7470".parse()?, "10.0.0.3:7470".parse()?];
//! node.primary = PrimaryState::initial(vec![1, 2, 3]);
//! let mut config = RuntimeConfig::from_files(
//!     node,
//!     "0.0.0.0:7470".parse()?,
//!     "/etc/flotilla/cluster.key", // must be mode 0600
//!     "/var/lib/flotilla",         // incarnation and primary state
//! )?;
//! config.event_log = Some("/var/lib/flotilla/events.jsonl".into());
//! let (handle, mut events) = spawn(config).await?;
//! handle.join_group("mgmt").await?;
//! let id = handle.multicast("mgmt", Level::Agreed, b"status".to_vec()).await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::View(v) => println!("view {} primary {:?}: {:?}", v.conf, v.primary, v.members),
//!         Event::Deliver(d) if d.msg == id => println!("my own message is back"),
//!         Event::Deliver(d) => println!("{} says {:?}", d.msg.sender, d.payload),
//!         _ => {}
//!     }
//! #   break;
//! }
//! handle.shutdown().await?; // a clean leave: the others see a view change
//! # Ok(()) }
//! ```
//!
//! # The driver
//! It waits on three things at once: the socket becoming readable, the
//! node's next deadline, and a command. Then it
//! 1. drains every readable datagram (up to [`RuntimeConfig::recv_batch`]),
//!    opening each with the sealer before the node sees a byte of it (a
//!    datagram that fails is dropped and counted by cause), so that the
//!    acknowledgements for a burst go out as one;
//! 2. calls [`Node::handle_timeout`](crate::Node::handle_timeout) when the
//!    deadline has passed (also when the socket kept it busy, so timers are
//!    never starved by traffic);
//! 3. drains the node's events, saving every
//!    [`PersistPrimary`](crate::Event::PersistPrimary) with the
//!    [`Storage`] before going on, then seals and sends every datagram the
//!    node has, then forwards the events to [`Events`].
//!
//! # Polling before sleeping
//! When input came (a datagram or a command) and the node answered it with
//! datagrams, the next input usually follows within tens of microseconds
//! (acks, the hub's summary, the answers to a question). For up to
//! [`RuntimeConfig::busy_poll`] the driver then looks at its sockets and
//! commands without sleeping, handing the CPU to any other runnable thread
//! or task between looks (`sched_yield`, then a tokio yield), and sleeps in
//! the kernel only after that. The reason is the cost of waking a sleeping
//! CPU: on virtual machines that do not poll before halting an idle vCPU
//! (this project's 2-vCPU test machine, a Firecracker guest with
//! `haltpoll.guest_halt_poll_ns=0`) every wake-up of an idle CPU is an exit
//! to the hypervisor, tens of microseconds, once per hop of a round. The
//! same idea as the kernel's own halt polling, Aeron's back-off idle
//! strategy, or `SO_BUSY_POLL`. It does not poll after a wake-up of the
//! timers alone (an idle node's heartbeats cost nothing more), with a send
//! backlog (a busy sender's input batches better while it sleeps), or
//! during a view change (timers of milliseconds). BENCHMARKS.md has the
//! figures.
//!
//! # Incarnations
//! A process's [`Pid`] must never repeat under one cluster key: the sealer's
//! nonces are built from it. At every start the runtime takes
//! `max(previous incarnation + 1, microseconds since the Unix epoch)`, saves
//! it with [`Storage::save`] (synced) and only then seals anything. The
//! stored counter alone guarantees freshness; the clock term keeps a node
//! whose state file was lost from reusing an old incarnation (unless the
//! clock went back too) and lets it outrank its earlier incarnations, which
//! its peers still remember.
//!
//! # Event log
//! With [`RuntimeConfig::event_log`] the driver appends every configuration
//! it installs, every message it sends and delivers and every group view to
//! a file, in the format of [`crate::eventlog`], so that
//! [`crate::eventlog::check_event_logs`] can run the checker over the logs
//! of every host of a real run. The file is written as the events happen
//! (one `write` per driver wake-up, not synced: after a host crash the log
//! is a prefix, which the checker accepts).
//!
//! # Key rotation
//! The cluster key can be changed without stopping the group; every node
//! accepts the old and the new key during the change:
//! 1. generate the new key (`ClusterKey::generate`, `write_new`) and copy it
//!    to every host (mode 0600);
//! 2. on every node, [`Handle::stage_key`] with the new key: the node now
//!    *accepts* datagrams under it, still sealing under the old one;
//! 3. once every node has staged it, on every node [`Handle::rotate_key`]:
//!    it now *seals* under the new key and still accepts the old one, so
//!    the nodes that have not rotated yet are still heard;
//! 4. once every node has rotated, on every node
//!    [`Handle::retire_old_key`]: the old key is refused from now on.
//!
//! A node that misses a step is not heard by the others after step 4 (its
//! datagrams are dropped and counted as authentication failures): it is
//! excluded from the view as if it had crashed, and merges again once it
//! holds the new key. [`Handle::key_status`] shows each node's keys.
//!
//! # When the application does not keep up
//! Events are never dropped: a lost delivery would break the guarantees the
//! group promises (virtual synchrony, safe delivery) without anyone
//! noticing. When [`Events`] is full the driver stops reading the socket and
//! stops running the node's timers until the application makes room; it
//! still serves commands, so an application that consumes events and sends
//! from one task cannot deadlock. The stall is counted
//! ([`IoCounters::event_stalls`], [`IoCounters::event_stall_us`]) and logged
//! (at most once per 10 s). A short stall costs nothing: the kernel buffers
//! the datagrams that arrive meanwhile. A long one makes the node look like
//! a crashed member, and the others exclude it after their suspicion timeout
//! and merge with it again once it catches up. That is on purpose: the
//! alternative, buffering without bound, would move the problem to memory,
//! and keeping the node's heartbeats going while its deliveries pile up
//! would make the *others'* buffers grow too, since flow control holds a
//! message until every member has it.
//!
//! Sending has the same shape: [`Handle::multicast`] waits (bounded by
//! [`RuntimeConfig::send_timeout`]) while the node's send queue
//! ([`Config::send_queue_bytes`]) is full; [`Handle::try_multicast`] returns
//! [`Error::Refused`] with [`SendError::QueueFull`] at once.
//!
//! # IP multicast
//! With [`RuntimeConfig::multicast`] the runtime joins the group on a
//! second socket bound to the group's port (with `SO_REUSEADDR`, so that
//! several processes on one host can join) and adds the group to the node's
//! discovery addresses: discovery beacons go to every process of the group
//! without knowing their addresses. With [`MulticastConfig::disseminate`]
//! the driver also sends once to the group every datagram that the node
//! addressed, byte for byte the same, to every other member of its view
//! (acknowledgements, heartbeats, data), instead of once per member: the
//! sender's cost per datagram no longer grows with the view. Otherwise
//! dissemination is unicast to each member.
//!
//! # Logging
//! Through `tracing`, never a line per datagram: each cause of dropped
//! datagrams (and send errors, stalls, refused peers) logs at most one line
//! per 10 s, with the count since the last one.

mod driver;
mod faults;
pub mod fuzzing;
mod kernel_drops;
mod ratelimit;
mod storage;

pub use faults::Faults;
pub use storage::{FileStorage, Storage, StorageError, StoredState};

use crate::seal::{ClusterKey, KeyError, KeyId, SealCounters, SealError, MAX_PLAINTEXT_LEN};
use crate::{Config, Counters, Event, Level, MsgId, Pid, SendError, ViewId};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// [`RuntimeConfig::busy_poll`] unless set otherwise.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(100);

/// Settings of a [`Runtime`].
pub struct RuntimeConfig {
    /// The protocol's settings. `node.me.node` is this host's id; the
    /// runtime chooses `node.me.incarnation` (see the module documentation),
    /// and replaces `node.primary` with the stored primary state when there
    /// is one. `node.seeds` are the unicast discovery addresses.
    pub node: Config,
    /// The UDP address to bind (port 0 picks a free port; see
    /// [`Handle::local_addr`]).
    pub bind: SocketAddr,
    /// The cluster key every datagram is sealed under.
    pub key: ClusterKey,
    /// IP multicast discovery, when configured.
    pub multicast: Option<MulticastConfig>,
    /// Where the incarnation and the primary state are kept.
    pub storage: Box<dyn Storage>,
    /// When set, every installed configuration, sent and delivered message
    /// and group view is appended to this file for the checker (see
    /// [`crate::eventlog`]).
    pub event_log: Option<PathBuf>,
    /// Capacity of [`Events`]; when it is full the driver waits (see the
    /// module documentation).
    pub event_capacity: usize,
    /// Capacity of the command queue from the handles.
    pub command_capacity: usize,
    /// How long [`Handle::multicast`] waits for room in the send queue.
    pub send_timeout: Duration,
    /// How long [`Handle::leave`] waits for a clean leave before the driver
    /// stops anyway (the others then see a crash).
    pub leave_timeout: Duration,
    /// Requested `SO_RCVBUF` and `SO_SNDBUF` of the socket, and `SO_RCVBUF`
    /// of the multicast one, in bytes (the kernel may cap it:
    /// `net.core.rmem_max`, `net.core.wmem_max`); 0 keeps the system's
    /// default.
    pub socket_buffer: usize,
    /// Most datagrams read in one wake-up before the driver sends what they
    /// caused and looks at its timers and commands.
    pub recv_batch: usize,
    /// After a wake-up that answered input with datagrams, how long the
    /// driver keeps looking for the next input (yielding the CPU between
    /// looks) before it sleeps in the kernel; zero sleeps at once. See "Polling before
    /// sleeping" in the module documentation for why and what it costs.
    pub busy_poll: Duration,
    /// Test-only: peers whose datagrams are dropped both ways (see
    /// [`Faults`]); `None` in production.
    pub faults: Option<Faults>,
}

impl RuntimeConfig {
    /// Defaults: events 4096, commands 1024, send and leave timeouts 5 s,
    /// socket buffers 4 MiB, batches of 256 datagrams, busy polling
    /// [`DEFAULT_BUSY_POLL`], no IP multicast.
    pub fn new(
        node: Config,
        bind: SocketAddr,
        key: ClusterKey,
        storage: impl Storage,
    ) -> RuntimeConfig {
        RuntimeConfig {
            node,
            bind,
            key,
            multicast: None,
            storage: Box::new(storage),
            event_log: None,
            event_capacity: 4096,
            command_capacity: 1024,
            send_timeout: Duration::from_secs(5),
            leave_timeout: Duration::from_secs(5),
            socket_buffer: 4 << 20,
            recv_batch: 256,
            busy_poll: DEFAULT_BUSY_POLL,
            faults: None,
        }
    }
}

impl RuntimeConfig {
    /// [`RuntimeConfig::new`] with the cluster key read from `key_file`
    /// (which must be a private file, mode 0600: see
    /// [`ClusterKey::load`]) and the node's state kept in
    /// `data_dir/node.state` (the directory is created if missing), so that
    /// each start is a new incarnation.
    pub fn from_files(
        node: Config,
        bind: SocketAddr,
        key_file: impl AsRef<Path>,
        data_dir: impl AsRef<Path>,
    ) -> Result<RuntimeConfig, StartError> {
        let key = ClusterKey::load(key_file)?;
        let dir = data_dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| {
            StartError::Storage(StorageError::Io {
                path: dir.to_path_buf(),
                action: "create the data directory",
                source,
            })
        })?;
        Ok(RuntimeConfig::new(
            node,
            bind,
            key,
            FileStorage::new(dir.join("node.state")),
        ))
    }
}

/// Starts a node: binds the socket, loads the stored state, saves a fresh
/// incarnation and spawns the driver on the current tokio runtime. The
/// same as [`Runtime::start`].
pub async fn spawn(config: RuntimeConfig) -> Result<(Handle, Events), StartError> {
    driver::start(config).await
}

/// IP multicast discovery (IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MulticastConfig {
    /// The group address and port, e.g. `239.255.70.76:7470`. Use a port
    /// other than the unicast socket's.
    pub group: SocketAddrV4,
    /// The local interface address to join on and send from. `0.0.0.0`:
    /// the interface of [`RuntimeConfig::bind`] when that is a specific
    /// IPv4 address (group datagrams leave from the unicast socket, with
    /// its address as source, which must belong to the interface they go
    /// out on), otherwise the system's choice.
    pub interface: Ipv4Addr,
    /// Time to live of multicast datagrams (1: the local network only).
    pub ttl: u32,
    /// Whether this host's own processes receive what it sends to the group
    /// (needed for several processes on one host).
    pub loopback: bool,
    /// Also disseminate through the group: a datagram the node addresses
    /// identically to every other member of its view is sent once to the
    /// group instead of once per member. Every node of the cluster must
    /// then listen on the same group (same `group`). Processes of the group
    /// outside the view receive such datagrams too; they treat them as
    /// traffic of a foreign view, as they do discovery beacons.
    pub disseminate: bool,
}

impl MulticastConfig {
    /// The group on the system's default interface, TTL 1, loopback on.
    pub fn new(group: SocketAddrV4) -> Self {
        MulticastConfig {
            group,
            interface: Ipv4Addr::UNSPECIFIED,
            ttl: 1,
            loopback: true,
            disseminate: false,
        }
    }
}

/// Why [`Runtime::start`] failed. Nothing is left running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Not called from within a tokio runtime.
    #[error("the gc-core runtime must be started from within a tokio runtime")]
    NoTokio,
    /// A setting is out of range.
    #[error("invalid runtime configuration: {0}")]
    Config(String),
    /// The UDP socket could not be created or bound.
    #[error("cannot bind UDP socket {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Joining the IP multicast group failed.
    #[error("cannot join multicast group {group} {}", on_interface(*.interface))]
    Multicast {
        /// The group.
        group: SocketAddrV4,
        /// The interface asked for (`0.0.0.0`: the system's choice).
        interface: Ipv4Addr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The stored state could not be read, or the new incarnation could not
    /// be saved.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The cluster key file is missing, readable by others, or not a key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The event log could not be opened for appending.
    #[error("cannot open event log {}", path.display())]
    EventLog {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The stored incarnation is `u64::MAX`: there is no fresh one left.
    #[error("the stored incarnation is the largest possible; no fresh incarnation is left")]
    IncarnationsExhausted,
}

/// Where a join was tried, and what to do about it: the usual failure is a
/// host with no route for 224.0.0.0/4 (no default route either), where the
/// system has no interface to choose.
fn on_interface(interface: Ipv4Addr) -> String {
    if interface.is_unspecified() {
        "on the interface the system chose for it (a host without a route for 224.0.0.0/4 has none)"
            .to_owned()
    } else {
        format!("on interface {interface} (it must be an address of this host)")
    }
}

/// Why a request through a [`Handle`] failed, or why the runtime stopped.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The node refused the request: its send queue is full
    /// ([`SendError::QueueFull`]: the group is not absorbing messages this
    /// fast), the message is too large, the group name is invalid, or the
    /// node is leaving.
    #[error(transparent)]
    Refused(#[from] SendError),
    /// The command queue to the driver is full ([`Handle::try_multicast`]
    /// only): the driver is behind on requests.
    #[error("the runtime's command queue is full")]
    Busy,
    /// The request waited this long without being accepted.
    #[error("not accepted within {0:?}: the group is not absorbing messages this fast")]
    Timeout(Duration),
    /// The runtime has stopped: the node left, or the driver failed
    /// ([`Handle::closed`] says which).
    #[error("the node's runtime has stopped")]
    Stopped,
    /// A clean leave did not complete within
    /// [`RuntimeConfig::leave_timeout`]; the driver stopped anyway.
    #[error("the clean leave did not complete in time; the node stopped without it")]
    LeaveTimeout,
    /// The driver stopped on an error it cannot go on after.
    #[error(transparent)]
    Fatal(Arc<FatalError>),
}

/// Errors that stop the driver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FatalError {
    /// A primary state change could not be saved. The node must not send
    /// anything that follows it, so it stops (the others see a crash).
    #[error("cannot save the primary state")]
    Storage(#[source] StorageError),
    /// The socket keeps failing to receive.
    #[error("the UDP socket keeps failing")]
    Socket(#[source] std::io::Error),
    /// The sealer can seal no more datagrams for this incarnation.
    #[error("cannot seal")]
    Seal(#[source] SealError),
    /// The storage task panicked.
    #[error("the storage task failed: {0}")]
    Task(String),
}

impl Error {
    /// True when the request failed because the group is not absorbing
    /// messages as fast as they are sent (a full send queue, a full command
    /// queue, or a wait for room that timed out): back off and retry, or
    /// shed load.
    pub fn is_backpressure(&self) -> bool {
        matches!(
            self,
            Error::Busy | Error::Timeout(_) | Error::Refused(SendError::QueueFull { .. })
        )
    }
}

impl From<FatalError> for Error {
    fn from(e: FatalError) -> Self {
        Error::Fatal(Arc::new(e))
    }
}

/// Counters of the driver itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IoCounters {
    /// Datagrams received from the socket(s), before opening.
    pub datagrams_in: u64,
    /// Bytes of those.
    pub bytes_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Bytes of those, sealed.
    pub bytes_out: u64,
    /// Failed receives.
    pub recv_errors: u64,
    /// Failed sends (the datagram was lost; the protocol retransmits).
    pub send_errors: u64,
    /// Times the driver had to wait because [`Events`] was full.
    pub event_stalls: u64,
    /// Total time of those waits, in microseconds.
    pub event_stall_us: u64,
    /// Events dropped because the application had dropped [`Events`].
    pub events_discarded: u64,
    /// Requests refused because the command queue was full
    /// ([`Error::Busy`]).
    pub refused_busy: u64,
    /// Multicasts refused or timed out because the node's send queue was
    /// full.
    pub refused_queue_full: u64,
    /// Saves of the stored state.
    pub state_saves: u64,
    /// Datagrams sent once to the multicast group instead of to each member
    /// ([`MulticastConfig::disseminate`]).
    pub multicast_out: u64,
    /// This node's own group datagrams received back on the multicast
    /// socket (multicast loopback) and discarded unopened.
    pub multicast_own_skipped: u64,
    /// Datagrams from an older incarnation of a node that came from
    /// another address than the node's newest incarnation: two live
    /// processes with one node id (two daemons given the same name or
    /// node id), where the older one is cut off from the group.
    pub identity_conflicts: u64,
    /// Datagrams the kernel dropped because the node's sockets' receive
    /// buffers were full (Linux: the `drops` column of `/proc/net/udp`;
    /// 0 where unknown). The driver never saw them.
    pub receive_buffer_drops: u64,
}

/// Dropped datagrams and refused requests by cause, summed over the
/// layers that count them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drops {
    /// Failed authentication, or sealed under a key this node does not hold.
    pub authentication: u64,
    /// Replayed, duplicated or too old datagrams.
    pub replay: u64,
    /// From an older incarnation of a node than the newest seen.
    pub stale: u64,
    /// Malformed: not a sealed datagram, or not a decodable packet.
    pub decode: u64,
    /// Another wire version (of the seal format or of the protocol).
    pub version: u64,
    /// Requests refused for full queues ([`IoCounters::refused_busy`] and
    /// [`IoCounters::refused_queue_full`]). Events are never dropped; see
    /// [`IoCounters::event_stalls`].
    pub overload: u64,
    /// Datagrams dropped by the kernel for full receive buffers
    /// ([`IoCounters::receive_buffer_drops`]).
    pub receive_buffer: u64,
}

/// Everything a node counts: the protocol, the sealer and the driver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeCounters {
    /// The protocol's counters (view changes, suspicions, retransmissions,
    /// decode and version drops, ...).
    pub protocol: Counters,
    /// The sealer's counters (authentication, replay and stale drops, ...).
    pub seal: SealCounters,
    /// The driver's counters.
    pub io: IoCounters,
}

impl RuntimeCounters {
    /// Drops by cause.
    pub fn drops(&self) -> Drops {
        let (p, s, io) = (&self.protocol, &self.seal, &self.io);
        Drops {
            authentication: s.dropped_authentication + s.dropped_unknown_key,
            replay: s.dropped_replay,
            stale: s.dropped_stale + p.drop_stale,
            decode: s.dropped_malformed + p.drop_decode,
            version: s.dropped_version + p.drop_version,
            overload: io.refused_busy + io.refused_queue_full,
            receive_buffer: io.receive_buffer_drops,
        }
    }
}

/// The node's current view, as [`Handle::view`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// This process.
    pub me: Pid,
    /// The current regular view (counter 0 until the first one).
    pub id: ViewId,
    /// Its members, sorted.
    pub members: Vec<Pid>,
    /// The primary number when the view is the primary component.
    pub primary: Option<u64>,
    /// True while a view change is under way.
    pub changing: bool,
    /// A one-line description of what the protocol is doing.
    pub state: String,
}

/// The cluster keys a node holds (their ids, never the keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyStatus {
    /// The key it seals under.
    pub current: KeyId,
    /// A key it accepts but does not seal under yet (after
    /// [`Handle::stage_key`]).
    pub staged: Option<KeyId>,
    /// The key it sealed under before the last rotation, still accepted
    /// until [`Handle::retire_old_key`].
    pub previous: Option<KeyId>,
}

/// A key rotation step (see [`crate::seal`]).
enum KeyStep {
    Stage(ClusterKey),
    Rotate(ClusterKey),
    RetireOld,
    Status,
}

/// A request from a handle to the driver.
enum Command {
    Multicast {
        group: String,
        level: Level,
        payload: Vec<u8>,
        /// When to give up waiting for room in the send queue, and the
        /// wait asked for; `None`: refuse at once when it is full.
        deadline: Option<(Instant, Duration)>,
        reply: oneshot::Sender<Result<MsgId, Error>>,
    },
    JoinGroup {
        group: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    LeaveGroup {
        group: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Leave {
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Counters {
        reply: oneshot::Sender<RuntimeCounters>,
    },
    View {
        reply: oneshot::Sender<View>,
    },
    Key {
        step: KeyStep,
        reply: oneshot::Sender<KeyStatus>,
    },
}

/// How the driver ended: `None` while it runs.
type Outcome = Option<Result<(), Error>>;

/// Starts nodes. See the [module documentation](self).
#[derive(Debug)]
pub struct Runtime;

impl Runtime {
    /// Binds the socket, loads the stored state, saves a fresh incarnation
    /// and spawns the driver on the current tokio runtime.
    ///
    /// The node then discovers its peers (through `config.node.seeds` and
    /// IP multicast) and forms a view with them; the first
    /// [`Event::View`] on [`Events`] reports it.
    pub async fn start(config: RuntimeConfig) -> Result<(Handle, Events), StartError> {
        driver::start(config).await
    }
}

/// The application's side of a running node. Cheap to clone; when every
/// handle is dropped the node leaves the cluster cleanly and stops.
#[derive(Clone, Debug)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    outcome: watch::Receiver<Outcome>,
    me: Pid,
    local_addr: SocketAddr,
    send_timeout: Duration,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Multicast { .. } => "Multicast",
            Command::JoinGroup { .. } => "JoinGroup",
            Command::LeaveGroup { .. } => "LeaveGroup",
            Command::Leave { .. } => "Leave",
            Command::Counters { .. } => "Counters",
            Command::View { .. } => "View",
            Command::Key { .. } => "Key",
        })
    }
}

impl Handle {
    /// This process (its incarnation is the one chosen at start).
    pub fn pid(&self) -> Pid {
        self.me
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Multicasts `payload` to `group` (a non-empty name) at `level`,
    /// waiting up to
    /// [`RuntimeConfig::send_timeout`] for room in the node's send queue.
    ///
    /// Returns the message's identity once the node has given it its place
    /// in a view's stream (at once when the group keeps up; after the view
    /// change when one is under way; later when flow control holds it). It
    /// will be delivered to the group's members (this process included, if
    /// it is one) with that [`MsgId`], unless this process crashes.
    ///
    /// Backpressure ([`Error::is_backpressure`]): [`Error::Timeout`] when
    /// the send queue ([`Config::send_queue_bytes`]) stayed full for the
    /// whole wait; the message was not accepted and will never be sent.
    pub async fn multicast(
        &self,
        group: &str,
        level: Level,
        payload: impl Into<Vec<u8>>,
    ) -> Result<MsgId, Error> {
        self.multicast_within(group, level, payload, self.send_timeout)
            .await
    }

    /// [`Handle::multicast`], waiting at most `timeout`.
    pub async fn multicast_within(
        &self,
        group: &str,
        level: Level,
        payload: impl Into<Vec<u8>>,
        timeout: Duration,
    ) -> Result<MsgId, Error> {
        let deadline = deadline_after(timeout);
        let (reply, answer) = oneshot::channel();
        let command = Command::Multicast {
            group: group.to_owned(),
            level,
            payload: payload.into(),
            deadline: Some((deadline, timeout)),
            reply,
        };
        match tokio::time::timeout_at(deadline, self.commands.send(command)).await {
            Err(_) => return Err(Error::Timeout(timeout)),
            Ok(Err(_)) => return Err(Error::Stopped),
            Ok(Ok(())) => {}
        }
        // The driver refuses by the deadline a message it could not accept;
        // once accepted, the answer (the MsgId) comes when the message is
        // given its place, which a view change can delay: no timeout here,
        // the message will be sent and must not be reported as refused.
        answer.await.unwrap_or(Err(Error::Stopped))
    }

    /// Multicasts without waiting for room: [`Error::Busy`] when the
    /// command queue is full, [`Error::Refused`] with
    /// [`SendError::QueueFull`] when the node's send queue is. Otherwise as
    /// [`Handle::multicast`].
    pub async fn try_multicast(
        &self,
        group: &str,
        level: Level,
        payload: impl Into<Vec<u8>>,
    ) -> Result<MsgId, Error> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Multicast {
            group: group.to_owned(),
            level,
            payload: payload.into(),
            deadline: None,
            reply,
        };
        self.try_command(command)?;
        answer.await.unwrap_or(Err(Error::Stopped))
    }

    /// Joins `group` (in agreed order with the group's messages; a
    /// [`Event::GroupView`] follows).
    pub async fn join_group(&self, group: &str) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::JoinGroup {
            group: group.to_owned(),
            reply,
        })
        .await?;
        answer.await.unwrap_or(Err(Error::Stopped))
    }

    /// Leaves `group`.
    pub async fn leave_group(&self, group: &str) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::LeaveGroup {
            group: group.to_owned(),
            reply,
        })
        .await?;
        answer.await.unwrap_or(Err(Error::Stopped))
    }

    /// Leaves the cluster cleanly: once every message this process sent is
    /// held by every member, it tells them (they install a view without
    /// it, with no suspicion timeout), [`Event::Left`] is delivered and the
    /// driver ends. Returns then, or [`Error::LeaveTimeout`] after
    /// [`RuntimeConfig::leave_timeout`] (the driver stops anyway).
    pub async fn leave(&self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        if self.command(Command::Leave { reply }).await.is_err() {
            return self.closed().await;
        }
        match answer.await {
            Ok(result) => result,
            Err(_) => self.closed().await,
        }
    }

    /// Leaves the cluster cleanly and waits until the driver has ended (the
    /// same as [`Handle::leave`]).
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.leave().await
    }

    /// All counters.
    pub async fn counters(&self) -> Result<RuntimeCounters, Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Counters { reply }).await?;
        answer.await.map_err(|_| Error::Stopped)
    }

    /// A snapshot of the current view.
    pub async fn view(&self) -> Result<View, Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::View { reply }).await?;
        answer.await.map_err(|_| Error::Stopped)
    }

    /// The members of the current regular view, sorted.
    pub async fn members(&self) -> Result<Vec<Pid>, Error> {
        Ok(self.view().await?.members)
    }

    /// Key rotation, step 1 (see the module documentation): accept
    /// datagrams sealed under `next` too.
    pub async fn stage_key(&self, next: ClusterKey) -> Result<KeyStatus, Error> {
        self.key_step(KeyStep::Stage(next)).await
    }

    /// Key rotation, step 2: seal under `new`, still accepting the old key.
    pub async fn rotate_key(&self, new: ClusterKey) -> Result<KeyStatus, Error> {
        self.key_step(KeyStep::Rotate(new)).await
    }

    /// Key rotation, step 3: stop accepting the previous key.
    pub async fn retire_old_key(&self) -> Result<KeyStatus, Error> {
        self.key_step(KeyStep::RetireOld).await
    }

    /// The ids of the keys the node holds.
    pub async fn key_status(&self) -> Result<KeyStatus, Error> {
        self.key_step(KeyStep::Status).await
    }

    /// Waits until the driver has ended: `Ok` after a clean leave, the
    /// error that stopped it otherwise.
    pub async fn closed(&self) -> Result<(), Error> {
        let mut outcome = self.outcome.clone();
        let result = match outcome.wait_for(Option::is_some).await {
            Ok(done) => done.clone().unwrap_or(Err(Error::Stopped)),
            Err(_) => Err(Error::Stopped),
        };
        result
    }

    /// True once the driver has ended.
    pub fn is_closed(&self) -> bool {
        self.outcome.borrow().is_some()
    }

    async fn key_step(&self, step: KeyStep) -> Result<KeyStatus, Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Key { step, reply }).await?;
        answer.await.map_err(|_| Error::Stopped)
    }

    async fn command(&self, command: Command) -> Result<(), Error> {
        self.commands
            .send(command)
            .await
            .map_err(|_| Error::Stopped)
    }

    fn try_command(&self, command: Command) -> Result<(), Error> {
        self.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Busy,
            mpsc::error::TrySendError::Closed(_) => Error::Stopped,
        })
    }
}

/// The receive path of the driver, for every datagram the socket gives it:
/// opened by `sealer` (authenticated, decrypted, replay-checked) before the
/// node decodes a byte of it, then handed to
/// [`Node::handle_authenticated`](crate::Node::handle_authenticated) with
/// the sender the seal authenticated. A datagram that fails to open is
/// counted by the sealer and returned as the error; one that opens but does
/// not decode is counted by the node. Never panics, whatever the bytes:
/// the fuzz target (`gc-core/fuzz`) and `tests/receive_path.rs` feed it
/// arbitrary input. `buf` is scratch space, reused across calls.
pub fn receive(
    sealer: &mut crate::seal::Sealer,
    node: &mut crate::Node,
    buf: &mut Vec<u8>,
    now: crate::Time,
    from: SocketAddr,
    datagram: &[u8],
) -> Result<(), crate::seal::OpenError> {
    let opened = sealer.open(datagram, buf)?;
    // The seal authenticated the sender; the node drops a packet whose
    // header names anyone else, so a member holding the key still cannot
    // speak for another member.
    node.handle_authenticated(now, from, opened.sender, opened.plaintext);
    Ok(())
}

/// `timeout` from now, or a year from now if that overflows.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// What the node delivers, in order: views, messages, group views, refused
/// peers and, last, [`Event::Left`]. Ends (`None`) when the driver has
/// ended. [`Event::PersistPrimary`] is handled by the runtime and never
/// appears here.
///
/// Bounded ([`RuntimeConfig::event_capacity`]): an application that does
/// not keep up pauses the node (see the module documentation).
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event, or `None` once the driver has ended and every event
    /// was read.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Polls for the next event (for a hand-written `Stream`).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }

    /// Events waiting to be read.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// True when no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

/// The incarnation of a new start: above the stored one and, when the
/// clock allows, the current time in microseconds since the Unix epoch.
fn next_incarnation(previous: Option<u64>) -> Result<u64, StartError> {
    let after = match previous {
        Some(p) => p.checked_add(1).ok_or(StartError::IncarnationsExhausted)?,
        None => 1,
    };
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Ok(after.max(clock))
}

/// The flow-control window (frames) cut so that a window of full
/// datagrams fits in the socket receive buffer. The window is counted in
/// frames, so with large datagrams (`max_datagram` 60,000) the default 512
/// let a sender run 30 MB ahead of a member whose 4 MiB buffer then
/// overflowed whenever that member was not scheduled for a few
/// milliseconds; every datagram the kernel dropped was asked for again and
/// re-sent by unicast, and on a loaded host that load got the sender
/// suspected (BENCHMARKS.md, siminst run 6). The kernel may grant less
/// than `socket_buffer` (`net.core.rmem_max`): the granted size is used.
pub(super) fn window_within(window: u64, max_datagram: usize, socket_buffer: usize) -> u64 {
    if socket_buffer == 0 || max_datagram == 0 {
        return window;
    }
    let fits = u64::try_from(socket_buffer / max_datagram).unwrap_or(u64::MAX);
    // Below this the acks (one urgent ack per quarter window) and the
    // sender's waits for them cost more than the drops they avoid.
    window.min(fits.max(MIN_WINDOW))
}

/// The smallest window [`window_within`] cuts to.
const MIN_WINDOW: u64 = 16;

fn check_config(config: &RuntimeConfig) -> Result<(), StartError> {
    let bad = |what: String| Err(StartError::Config(what));
    let max = config.node.max_datagram;
    if !(512..=MAX_PLAINTEXT_LEN).contains(&max) {
        return bad(format!(
            "max_datagram is {max}; it must be between 512 and {MAX_PLAINTEXT_LEN} (the largest \
             UDP payload less the seal's overhead)"
        ));
    }
    if config.event_capacity == 0 || config.command_capacity == 0 || config.recv_batch == 0 {
        return bad("event_capacity, command_capacity and recv_batch must be positive".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnations_grow_and_follow_the_clock() -> Result<(), StartError> {
        let first = next_incarnation(None)?;
        assert!(first > 1_600_000_000_000_000, "microseconds since 1970");
        assert!(next_incarnation(Some(first))? > first);
        assert_eq!(next_incarnation(Some(u64::MAX - 1))?, u64::MAX);
        assert!(matches!(
            next_incarnation(Some(u64::MAX)),
            Err(StartError::IncarnationsExhausted)
        ));
        Ok(())
    }

    #[test]
    fn the_window_of_full_datagrams_fits_the_receive_buffer() {
        // Ethernet-sized datagrams: the core's default stands.
        assert_eq!(window_within(512, 1400, 4 << 20), 512);
        assert_eq!(window_within(512, 60_000, 4 << 20), 69);
        // Never below the floor, however small the buffer.
        assert_eq!(window_within(512, 60_000, 64 << 10), MIN_WINDOW);
        // A window set smaller stays.
        assert_eq!(window_within(8, 60_000, 4 << 20), 8);
        // The system's default buffer (0): unknown size, unchanged window.
        assert_eq!(window_within(512, 60_000, 0), 512);
    }
}
