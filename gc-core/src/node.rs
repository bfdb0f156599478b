//! The protocol state machine of one process.

use crate::primary::{self, PrimaryRecord, PrimaryState};
use crate::streams::{Delivered, Received, Streams};
use crate::trace::{GroupViewId, TraceEvent, TraceRecord};
use crate::types::{digest, ConfId, Level, MsgId, NodeId, Pid, Time, ViewId};
use crate::wire::{
    self, AckFrame, DataFrame, DataKind, DatagramBuilder, DecodeError, Frame, HelloFrame,
    InstallFrame, JoinFrame, JoinState, NackFrame, OldView, SummaryFrame, MAX_GROUPS_PER_NODE,
    MAX_MEMBERS, MAX_NACK_SPAN,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Settings of one process. [`Config::new`] gives defaults that detect a
/// crashed peer in well under a second on a LAN.
#[derive(Clone, Debug)]
pub struct Config {
    /// This process.
    pub me: Pid,
    /// Addresses to send discovery beacons to (other nodes; its own address
    /// is harmless).
    pub seeds: Vec<SocketAddr>,
    /// The primary state persisted by an earlier incarnation, or the initial
    /// state ([`PrimaryState::initial`]) naming the cluster's hosts.
    pub primary: PrimaryState,
    /// Largest datagram to send. Frames are batched up to it and messages
    /// are fragmented to fit it.
    pub max_datagram: usize,
    /// Largest message accepted from the application.
    pub max_message: usize,
    /// Most bytes of application messages waiting to be sent.
    pub send_queue_bytes: usize,
    /// Flow control: most frames of one's own not yet held by every member.
    pub window: u64,
    /// Acknowledgement and heartbeat period when nothing else is sent.
    pub heartbeat_interval: Duration,
    /// A member silent this long is suspected.
    pub suspect_timeout: Duration,
    /// How often a process re-sends its join, install acknowledgement and
    /// the like during a view change.
    pub join_interval: Duration,
    /// A candidate that sends no join for this long during a view change is
    /// counted as failed.
    pub join_timeout: Duration,
    /// A view change that reaches no agreement for this long drops the
    /// candidates that disagree.
    pub consensus_timeout: Duration,
    /// An install that does not complete in this time is abandoned.
    pub install_timeout: Duration,
    /// Discovery beacon period.
    pub discovery_interval: Duration,
    /// After excluding a silent process, ignore its beacons this long.
    pub merge_cooldown: Duration,
    /// How long a freshly started process waits for peers before forming a
    /// view alone.
    pub startup_wait: Duration,
    /// Retransmission request period.
    pub nack_interval: Duration,
    /// How long a gap in a sender's stream must stand, in a regular view,
    /// before the first retransmission request for it. Zero (the default)
    /// asks at once. On a loaded host the missing frames are often still
    /// unread in the socket buffer behind the frame or ack that revealed
    /// the gap: a few milliseconds here removed most retransmissions in the
    /// runtime's throughput benchmark (BENCHMARKS.md). Left at zero until
    /// the simulator's liveness runs are checked with it.
    pub nack_grace: Duration,
    /// How long an urgent acknowledgement may wait for other traffic to
    /// ride on.
    pub ack_delay: Duration,
    /// In views of at least this many members, urgent acknowledgements go
    /// to the view's hub (its smallest member) alone, which relays them to
    /// everyone in one summary: 2 (N - 1) datagrams instead of N (N - 1),
    /// for one more hop. `usize::MAX` turns the hub off.
    pub ack_hub_from: usize,
    /// In views with a hub and at least this many members, a member sends
    /// its periodic heartbeat to the hub alone, and the hub's summary, sent
    /// to everyone every heartbeat period, says how long ago it heard from
    /// each member: an idle view costs 2 (N - 1) datagrams a period instead
    /// of N (N - 1) (PROTOCOL.md, "Failure detection"). `usize::MAX` turns
    /// it off. Every member of a view should use the same setting: a member
    /// that sends its heartbeats to the hub alone is known alive to the
    /// others only through the hub's summaries.
    pub heartbeat_hub_from: usize,
    /// At the hub: how long news that leaves messages undeliverable may
    /// wait for more acks before it is relayed.
    pub summary_delay: Duration,
    /// How long an ack owed when messages were just handed to the
    /// application waits for the application's answer to ride on.
    pub reply_grace: Duration,
    /// In views with a hub and at least this many members, a member sends
    /// a lone small message (nothing queued behind it, few of its own
    /// frames unstable) to the hub alone, which passes it on to everyone
    /// with its summary, gathering the messages of a burst (the answers to
    /// one question) into one datagram per member: about 3 (N - 1)
    /// datagrams for a burst of N - 1 messages instead of (N - 1)², for
    /// one more hop at members other than the hub. `usize::MAX` turns the
    /// relay off. Every member of a view must use the same setting: a
    /// frame sent to a hub that does not relay reaches the others only by
    /// retransmission.
    pub relay_from: usize,
    /// Largest payload of a frame sent through the hub; larger frames fill
    /// datagrams on their own, and relaying them would only add a hop and
    /// load the hub with every member's bytes.
    pub relay_max_payload: usize,
    /// Record a [`TraceRecord`] stream for the checker.
    pub trace: bool,
    /// Put a digest of each payload in the trace's send and delivery
    /// records (what the checker compares). A driver that traces only to
    /// learn its messages' ids turns it off: digesting every byte was a
    /// fifth of a receiver's CPU during a bulk transfer.
    pub trace_digests: bool,
    /// Seed of the process's random choices (retransmission sources).
    pub rng_seed: u64,
    /// A deliberate bug, for testing that the simulator and checker catch
    /// bugs. Never set outside such tests.
    #[doc(hidden)]
    pub bug: Option<Bug>,
}

/// Deliberate bugs the checker's own tests switch on.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Install new views without fetching the old view's missing messages
    /// and without delivering its rest in the transitional configuration.
    SkipFlush,
    /// Deliver agreed and safe messages as soon as they arrive.
    AgreedInArrivalOrder,
}

impl Config {
    /// Defaults for process `me`.
    pub fn new(me: Pid) -> Self {
        Config {
            me,
            seeds: Vec::new(),
            primary: PrimaryState::initial(Vec::new()),
            max_datagram: 1400,
            max_message: 16 << 20,
            send_queue_bytes: 64 << 20,
            window: 512,
            heartbeat_interval: Duration::from_millis(50),
            suspect_timeout: Duration::from_millis(400),
            join_interval: Duration::from_millis(20),
            join_timeout: Duration::from_millis(150),
            consensus_timeout: Duration::from_millis(600),
            install_timeout: Duration::from_millis(500),
            discovery_interval: Duration::from_millis(200),
            merge_cooldown: Duration::from_millis(1000),
            startup_wait: Duration::from_millis(100),
            nack_interval: Duration::from_millis(10),
            nack_grace: Duration::ZERO,
            ack_delay: Duration::ZERO,
            ack_hub_from: 5,
            heartbeat_hub_from: 5,
            summary_delay: Duration::from_millis(1),
            reply_grace: Duration::from_micros(100),
            relay_from: 5,
            relay_max_payload: 512,
            trace: false,
            trace_digests: true,
            rng_seed: 0,
            bug: None,
        }
    }
}

/// A configuration change, as the application sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewInfo {
    /// The configuration.
    pub conf: ConfId,
    /// Its members, sorted.
    pub members: Vec<Pid>,
    /// The primary number when this regular view is the primary component.
    pub primary: Option<u64>,
}

/// A message for the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Its identity.
    pub msg: MsgId,
    /// The group it was sent to.
    pub group: String,
    /// Its service level.
    pub level: Level,
    /// Its bytes.
    pub payload: Vec<u8>,
    /// The configuration it is delivered in.
    pub conf: ConfId,
}

/// Something the application must learn or do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A regular or transitional configuration was installed.
    View(ViewInfo),
    /// A message of a group this process belongs to.
    Deliver(Delivery),
    /// A view of a group this process belongs to.
    GroupView {
        /// The group.
        group: String,
        /// The group view.
        id: GroupViewId,
        /// Its members, sorted.
        members: Vec<Pid>,
    },
    /// Persist this before sending any datagram polled after it, and pass it
    /// back in [`Config::primary`] at the next start.
    PersistPrimary(PrimaryState),
    /// The process has left the cluster; drop the node.
    Left,
    /// A peer was refused; log it (this is rate-limited per address).
    PeerRefused {
        /// Its address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where.
    pub dest: SocketAddr,
    /// The bytes (to be sealed by the runtime). Shared: a datagram of the
    /// same frames for several destinations is built once and handed out
    /// once per destination.
    pub payload: Arc<Vec<u8>>,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The send queue is full: the group cannot absorb messages this fast.
    /// Try again after some deliveries.
    #[error("send queue full ({queued} bytes waiting): the group is not keeping up")]
    QueueFull {
        /// Bytes waiting.
        queued: usize,
    },
    /// The message exceeds [`Config::max_message`].
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The group name is longer than the protocol allows.
    #[error("group name longer than {} bytes", wire::MAX_GROUP_NAME)]
    BadGroup,
    /// The process belongs to too many groups.
    #[error("a process may belong to at most {MAX_GROUPS_PER_NODE} groups")]
    TooManyGroups,
    /// The process is leaving or has left.
    #[error("the process is leaving the cluster")]
    Leaving,
}

/// Counters the application can read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams handed in.
    pub datagrams_in: u64,
    /// Bytes handed in.
    pub bytes_in: u64,
    /// Datagrams handed out.
    pub datagrams_out: u64,
    /// Bytes handed out.
    pub bytes_out: u64,
    /// Datagrams dropped as undecodable.
    pub drop_decode: u64,
    /// Datagrams dropped for another wire version.
    pub drop_version: u64,
    /// Datagrams dropped from an older incarnation of a node.
    pub drop_stale: u64,
    /// Datagrams that claim this node's id with another incarnation.
    pub drop_own_node: u64,
    /// Joins dropped because the sender had since sent a later attempt.
    pub drop_stale_join: u64,
    /// Frames dropped because they were too far ahead of what was received.
    pub drop_ahead: u64,
    /// Frames retransmitted on request.
    pub retransmissions: u64,
    /// Retransmission requests sent.
    pub nacks_sent: u64,
    /// Regular views installed.
    pub view_changes: u64,
    /// Members suspected for silence.
    pub suspicions: u64,
    /// Messages delivered (node level).
    pub delivered: u64,
    /// Most bytes of message frames held at once.
    pub max_held_bytes: u64,
    /// Most message frames held at once.
    pub max_held_frames: u64,
}

struct Outgoing {
    kind: DataKind,
    level: Level,
    payload: Vec<u8>,
    /// Once the first fragment is out: its timestamp, sequence number and
    /// causal dependencies.
    started: Option<(u64, u64)>,
    next_frag: u32,
}

struct Current {
    id: ViewId,
    members: Vec<Pid>,
    primary: Option<u64>,
    streams: Streams,
    install: Option<Arc<InstallFrame>>,
    groups: BTreeMap<String, BTreeSet<Pid>>,
    group_changes: BTreeMap<String, u32>,
    my_last_causal_sent: u64,
}

#[derive(Clone)]
struct Gather {
    proc_set: BTreeSet<Pid>,
    fail_set: BTreeSet<Pid>,
    joins: BTreeMap<Pid, Arc<JoinFrame>>,
    heard: BTreeMap<Pid, Time>,
    added: BTreeMap<Pid, Time>,
    last_change: Time,
    next_send: Time,
}

struct Installing {
    install: Arc<InstallFrame>,
    gather: Gather,
    started: Time,
    recovered: bool,
    acks: BTreeSet<Pid>,
    next_send: Time,
}

enum Phase {
    Operational,
    Gather(Gather),
    Installing(Installing),
    Left,
}

enum Dest {
    Pid(Pid),
    Addr(SocketAddr),
}

/// Most of its own relayed frames a process remembers to send again
/// directly when it starts sending directly ([`Node::pump_frames`]). A
/// process relays a frame only while fewer of its own are not yet known
/// to be everywhere, so it never has more on their way.
const MAX_RELAYED_COPIES: usize = 8;

/// Where an ack goes ([`Node::send_ack`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum AckRoute {
    /// Riding on data sent to every member, or a heartbeat: to everyone.
    Everyone,
    /// Riding on data sent through the hub: to the hub alone unless a
    /// heartbeat is due and goes to everyone.
    WithRelay,
    /// On its own: to the hub alone when it is urgent and no heartbeat is
    /// due, or when heartbeats go through the hub.
    Alone,
    /// The periodic heartbeat: to everyone, or to the hub alone in a view
    /// of `heartbeat_hub_from` or more members.
    Heartbeat,
}

/// A small deterministic generator (xorshift64*): the protocol's only
/// randomness, seeded by the driver.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One process of the group-communication protocol, without I/O.
///
/// # Driver contract
/// The node owns no socket, clock, task or random source. A driver:
/// 1. creates it with [`Node::new`], passing the current time;
/// 2. feeds it every datagram received ([`Node::handle_datagram`]), every
///    expiry of the deadline it asked for ([`Node::handle_timeout`]; an early
///    or spurious call is harmless), and application requests
///    ([`Node::multicast`], [`Node::join_group`], [`Node::leave_group`],
///    [`Node::leave`]);
/// 3. after any of those, drains [`Node::poll_event`] first (persisting
///    [`Event::PersistPrimary`] before going on), then
///    [`Node::poll_transmit`] (sending each datagram), then asks
///    [`Node::poll_timeout`] for the next deadline.
///
/// Time only moves forward: every call takes `now`, which must not be
/// earlier than in the previous call. The same inputs at the same times give
/// the same outputs: the simulator relies on that to replay a seed.
pub struct Node {
    cfg: Config,
    me: Pid,
    rng: Rng,
    started: Time,
    now: Time,
    phase: Phase,
    cur: Current,
    retained: VecDeque<Streams>,
    clock: u64,
    /// The largest timestamp of a data frame received in the current view.
    /// The clock passes it only when this process promises it in an ack or
    /// delivers past it: raising the clock on receipt made every answer to
    /// a question that arrived after another answer carry a larger
    /// timestamp, and each of those needed an ack round of its own.
    seen: u64,
    attempt: u64,
    max_counter: u64,
    send_queue: VecDeque<Outgoing>,
    queued_bytes: usize,
    groups_intent: BTreeSet<String>,
    primary: PrimaryState,
    addrs: BTreeMap<Pid, SocketAddr>,
    newest: BTreeMap<NodeId, u64>,
    /// The latest join attempt seen from each process, and when: joins
    /// arrive out of order, and a stale one (its fail set from a round the
    /// sender has since left) would exclude the sender again and again.
    join_attempts: BTreeMap<Pid, (u64, Time)>,
    /// When each member was last heard from: directly, or, when heartbeats
    /// go through the hub, as the hub's summary vouches.
    last_heard: BTreeMap<Pid, Time>,
    /// When heartbeats go through the hub: when the hub's latest summary of
    /// the current view arrived. A member other than the hub is suspected
    /// only when that summary shows it silent (see
    /// [`Node::operational_timeouts`]).
    summary_at: Time,
    cooldown: BTreeMap<Pid, Time>,
    pending_merge: BTreeSet<Pid>,
    install_replies: BTreeMap<Pid, Time>,
    refusals: BTreeMap<SocketAddr, Time>,
    leaving: bool,
    /// When the last join went out (see [`Node::next_join_allowed`]).
    last_join_sent: Time,
    ack_pending: bool,
    /// The pending ack already waited for an answer (`reply_grace`).
    ack_postponed: bool,
    /// Until then, an urgent ack waits for the application's answer to
    /// what it was just handed.
    reply_until: Time,
    /// The pending ack is owed because someone may be waiting for it.
    ack_urgent: bool,
    ack_due: Time,
    /// The clock the other members know this process to have passed in the
    /// current view (from its acks and its own messages' timestamps): a
    /// frame at or below it needs no acknowledgement for their agreed order.
    announced_clock: u64,
    /// Frames received in the current view since the last ack.
    unacked_frames: u64,
    /// At the hub: other members' frames to pass on, encoded as data
    /// frames; their payload bytes; and the smallest timestamp of an
    /// agreed or safe one among them (`u64::MAX` if none).
    relay: Vec<Arc<Vec<u8>>>,
    relay_bytes: usize,
    relay_ts: u64,
    /// Its own frames this process sent through the hub in the current
    /// view and may not yet be everywhere (see [`Node::pump_frames`]).
    relayed: VecDeque<u64>,
    next_heartbeat: Time,
    next_discovery: Time,
    out: Vec<(Dest, Arc<Vec<u8>>)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    trace: VecDeque<TraceRecord>,
    counters: Counters,
}

fn null_view(me: Pid) -> ViewId {
    ViewId {
        counter: 0,
        coordinator: me,
    }
}

impl Node {
    /// A process that has just started: it forms a view with the peers it
    /// discovers (alone, if none answer within [`Config::startup_wait`]).
    pub fn new(cfg: Config, now: Time) -> Node {
        let me = cfg.me;
        let id = null_view(me);
        let mut streams = Streams::new(id, vec![me], me, 4 * cfg.window);
        streams.agreed_in_arrival_order = cfg.bug == Some(Bug::AgreedInArrivalOrder);
        let mut gather = Gather {
            proc_set: BTreeSet::new(),
            fail_set: BTreeSet::new(),
            joins: BTreeMap::new(),
            heard: BTreeMap::new(),
            added: BTreeMap::new(),
            last_change: now,
            next_send: now,
        };
        gather.proc_set.insert(me);
        let mut newest = BTreeMap::new();
        newest.insert(me.node, me.incarnation);
        Node {
            rng: Rng(cfg.rng_seed
                ^ (u64::from(me.node) << 32)
                ^ me.incarnation
                ^ 0x9e37_79b9_7f4a_7c15),
            primary: cfg.primary.clone(),
            me,
            started: now,
            now,
            phase: Phase::Gather(gather),
            cur: Current {
                id,
                members: vec![me],
                primary: None,
                streams,
                install: None,
                groups: BTreeMap::new(),
                group_changes: BTreeMap::new(),
                my_last_causal_sent: 0,
            },
            retained: VecDeque::new(),
            clock: 0,
            seen: 0,
            attempt: 1,
            max_counter: 0,
            send_queue: VecDeque::new(),
            queued_bytes: 0,
            groups_intent: BTreeSet::new(),
            addrs: BTreeMap::new(),
            newest,
            join_attempts: BTreeMap::new(),
            last_heard: BTreeMap::new(),
            summary_at: now,
            cooldown: BTreeMap::new(),
            pending_merge: BTreeSet::new(),
            install_replies: BTreeMap::new(),
            refusals: BTreeMap::new(),
            leaving: false,
            last_join_sent: Time::ZERO,
            ack_pending: false,
            ack_postponed: false,
            reply_until: Time::ZERO,
            ack_urgent: false,
            ack_due: Time::NEVER,
            announced_clock: 0,
            unacked_frames: 0,
            relay: Vec::new(),
            relay_bytes: 0,
            relay_ts: u64::MAX,
            relayed: VecDeque::new(),
            next_heartbeat: now,
            next_discovery: now,
            out: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            trace: VecDeque::new(),
            counters: Counters::default(),
            cfg,
        }
    }

    // ----- getters -----

    /// This process.
    pub fn pid(&self) -> Pid {
        self.me
    }

    /// The current regular view and its members (the starting process's own
    /// empty view until the first one is installed).
    pub fn view(&self) -> (ViewId, &[Pid]) {
        (self.cur.id, &self.cur.members)
    }

    /// The primary number when the current view is the primary component.
    pub fn primary(&self) -> Option<u64> {
        self.cur.primary
    }

    /// True when the process is between views.
    pub fn changing_view(&self) -> bool {
        !matches!(self.phase, Phase::Operational)
    }

    /// What the process is doing, for status displays and diagnostics.
    pub fn describe(&self) -> String {
        match &self.phase {
            Phase::Operational => format!("operational in {}", self.cur.id),
            Phase::Gather(g) => format!(
                "gathering from {} (attempt {}): candidates {:?}, failed {:?}, joins from {:?}",
                self.cur.id,
                self.attempt,
                g.proc_set.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                g.fail_set.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                g.joins.keys().map(|p| p.to_string()).collect::<Vec<_>>(),
            ),
            Phase::Installing(i) => format!(
                "installing {} from {} (recovered: {}, acks {:?})",
                i.install.view,
                self.cur.id,
                i.recovered,
                i.acks.iter().map(|p| p.to_string()).collect::<Vec<_>>()
            ),
            Phase::Left => "left".to_owned(),
        }
    }

    /// True once the process has left.
    pub fn has_left(&self) -> bool {
        matches!(self.phase, Phase::Left)
    }

    /// True while the process is in an installed view and not changing it
    /// (its messages flow; no membership round is under way).
    pub fn is_operational(&self) -> bool {
        matches!(self.phase, Phase::Operational)
    }

    /// Members of a group in the current view.
    pub fn group_members(&self, group: &str) -> Vec<Pid> {
        self.cur
            .groups
            .get(group)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The address a process was last heard from, if it was.
    pub fn address_of(&self, pid: Pid) -> Option<SocketAddr> {
        self.addrs.get(&pid).copied()
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Application messages accepted but not yet sent.
    pub fn unsent(&self) -> usize {
        self.send_queue.len()
    }

    /// Bytes of message frames held now.
    pub fn held_bytes(&self) -> usize {
        self.cur.streams.held_bytes + self.retained.iter().map(|s| s.held_bytes).sum::<usize>()
    }

    // ----- outputs -----

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next trace record (only with [`Config::trace`]).
    pub fn poll_trace(&mut self) -> Option<TraceRecord> {
        self.trace.pop_front()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self, now: Time) -> Option<Transmit> {
        self.advance(now);
        if self.transmits.is_empty() {
            if self.ack_pending && self.ack_due <= now {
                self.send_ack(AckRoute::Alone);
            }
            self.assemble();
        }
        let t = self.transmits.pop_front()?;
        self.counters.datagrams_out += 1;
        self.counters.bytes_out += t.payload.len() as u64;
        Some(t)
    }

    /// When [`Node::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut t = self.next_discovery;
        let mut at = |x: Time| {
            if x < t {
                t = x
            }
        };
        if self.ack_pending {
            at(self.ack_due);
        }
        match &self.phase {
            Phase::Left => return None,
            Phase::Operational => {
                at(self.next_heartbeat);
                let suspect_timeout = self.hb_timer(self.cfg.suspect_timeout);
                let via = self.heard_via();
                for m in &self.cur.members {
                    if *m != self.me {
                        at(self.silent_from(*m, via, suspect_timeout));
                    }
                }
            }
            Phase::Gather(g) => {
                at(g.next_send.max(self.next_join_allowed()));
                at(g.last_change
                    .plus(self.vc_timer(self.cfg.consensus_timeout)));
                let join_timeout = self.vc_timer(self.cfg.join_timeout);
                for (p, added) in &g.added {
                    if *p != self.me && !g.fail_set.contains(p) {
                        let heard = g.heard.get(p).copied().unwrap_or(*added);
                        at(heard.plus(join_timeout));
                    }
                }
                if let Some(startup) = self.startup_deadline(g) {
                    if self.now < startup {
                        at(startup);
                    }
                }
            }
            Phase::Installing(i) => {
                at(i.next_send);
                at(i.started.plus(self.vc_timer(self.cfg.install_timeout)));
            }
        }
        for st in &self.cur.streams.senders {
            at(st.next_nack);
        }
        Some(t)
    }

    // ----- inputs -----

    /// Takes in a datagram whose sender the runtime authenticated (the
    /// sealed header named `sender`): a packet that claims another sender
    /// is dropped and counted, so a member cannot speak for another.
    pub fn handle_authenticated(&mut self, now: Time, from: SocketAddr, sender: Pid, bytes: &[u8]) {
        match wire::peek_sender(bytes) {
            Some(p) if p == sender => self.handle_datagram(now, from, bytes),
            _ => {
                self.advance(now);
                self.counters.datagrams_in += 1;
                self.counters.drop_decode += 1;
            }
        }
    }

    /// Takes in a datagram from `from`. Prefer
    /// [`Node::handle_authenticated`] on a real network.
    pub fn handle_datagram(&mut self, now: Time, from: SocketAddr, bytes: &[u8]) {
        self.advance(now);
        if matches!(self.phase, Phase::Left) {
            return;
        }
        self.counters.datagrams_in += 1;
        self.counters.bytes_in += bytes.len() as u64;
        let packet = match wire::decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                if let DecodeError::Version { .. } = e {
                    self.counters.drop_version += 1;
                    self.refuse(from, e.to_string());
                } else {
                    self.counters.drop_decode += 1;
                }
                return;
            }
        };
        let sender = packet.from;
        if sender.node == self.me.node {
            // An older incarnation's leftovers, or a second process
            // configured with this node's id. Taking a newer one at its word
            // would make this process fail itself.
            if sender != self.me {
                self.counters.drop_own_node += 1;
            }
            return;
        }
        match self.newest.get(&sender.node) {
            Some(&inc) if inc > sender.incarnation => {
                self.counters.drop_stale += 1;
                return;
            }
            Some(&inc) if inc < sender.incarnation => self.newer_incarnation(sender),
            None => {
                self.newest.insert(sender.node, sender.incarnation);
            }
            _ => {}
        }
        self.addrs.insert(sender, from);
        for frame in packet.frames {
            if self.shows_membership(&frame) {
                self.last_heard.insert(sender, now);
            }
            self.handle_frame(sender, frame);
        }
        self.progress();
    }

    /// Handles expired deadlines. Harmless when nothing is due.
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
        if matches!(self.phase, Phase::Left) {
            return;
        }
        if now >= self.next_discovery {
            self.send_hellos();
            self.next_discovery = now.plus(self.cfg.discovery_interval);
        }
        match &self.phase {
            Phase::Operational => self.operational_timeouts(),
            Phase::Gather(_) => self.gather_timeouts(),
            Phase::Installing(_) => self.installing_timeouts(),
            Phase::Left => {}
        }
        self.send_nacks();
        self.progress();
    }

    /// Multicasts `payload` to `group` at `level`. Anyone may send to a
    /// group; its members deliver it.
    pub fn multicast(
        &mut self,
        now: Time,
        group: &str,
        level: Level,
        payload: Vec<u8>,
    ) -> Result<(), SendError> {
        self.advance(now);
        if wire::check_group(group).is_err() {
            return Err(SendError::BadGroup);
        }
        self.enqueue(DataKind::App(group.to_owned()), level, payload)?;
        self.progress();
        Ok(())
    }

    /// Joins a group (in agreed order with the group's messages).
    pub fn join_group(&mut self, now: Time, group: &str) -> Result<(), SendError> {
        self.advance(now);
        if wire::check_group(group).is_err() {
            return Err(SendError::BadGroup);
        }
        if self.groups_intent.contains(group) {
            return Ok(());
        }
        if self.groups_intent.len() >= MAX_GROUPS_PER_NODE {
            return Err(SendError::TooManyGroups);
        }
        self.enqueue(
            DataKind::GroupJoin(group.to_owned()),
            Level::Agreed,
            Vec::new(),
        )?;
        self.groups_intent.insert(group.to_owned());
        self.progress();
        Ok(())
    }

    /// Leaves a group.
    pub fn leave_group(&mut self, now: Time, group: &str) -> Result<(), SendError> {
        self.advance(now);
        if !self.groups_intent.contains(group) {
            return Ok(());
        }
        self.enqueue(
            DataKind::GroupLeave(group.to_owned()),
            Level::Agreed,
            Vec::new(),
        )?;
        self.groups_intent.remove(group);
        self.progress();
        Ok(())
    }

    /// Leaves the cluster cleanly: once every message this process sent is
    /// delivered and held by all members, it tells them and stops
    /// ([`Event::Left`]). The others install a view without it.
    pub fn leave(&mut self, now: Time) {
        self.advance(now);
        self.leaving = true;
        self.progress();
    }

    // ----- internals -----

    fn advance(&mut self, now: Time) {
        if now > self.now {
            self.now = now;
        }
    }

    /// The payload's digest for a trace record, or 0 when nothing is
    /// traced or the trace goes without digests.
    fn trace_digest(&self, payload: &[u8]) -> u64 {
        if self.cfg.trace && self.cfg.trace_digests {
            digest(payload)
        } else {
            0
        }
    }

    fn record(&mut self, event: TraceEvent) {
        if self.cfg.trace {
            self.trace.push_back(TraceRecord {
                time: self.now,
                event,
            });
        }
    }

    fn refuse(&mut self, addr: SocketAddr, reason: String) {
        let now = self.now;
        let due = self.refusals.get(&addr).is_none_or(|t| now >= *t);
        if due {
            if self.refusals.len() >= 1024 {
                self.refusals.retain(|_, t| *t > now);
            }
            self.refusals
                .insert(addr, now.plus(Duration::from_secs(60)));
            self.events.push_back(Event::PeerRefused { addr, reason });
        }
    }

    fn enqueue(&mut self, kind: DataKind, level: Level, payload: Vec<u8>) -> Result<(), SendError> {
        if self.leaving || matches!(self.phase, Phase::Left) {
            return Err(SendError::Leaving);
        }
        if payload.len() > self.cfg.max_message {
            return Err(SendError::TooLarge {
                len: payload.len(),
                max: self.cfg.max_message,
            });
        }
        if self.queued_bytes + payload.len() > self.cfg.send_queue_bytes
            || self.send_queue.len() >= 1 << 20
        {
            return Err(SendError::QueueFull {
                queued: self.queued_bytes,
            });
        }
        self.queued_bytes += payload.len();
        self.send_queue.push_back(Outgoing {
            kind,
            level,
            payload,
            started: None,
            next_frag: 0,
        });
        Ok(())
    }

    fn newer_incarnation(&mut self, pid: Pid) {
        self.newest.insert(pid.node, pid.incarnation);
        self.join_attempts
            .retain(|p, _| p.node != pid.node || p.incarnation >= pid.incarnation);
        let old: Vec<Pid> = self
            .cur
            .members
            .iter()
            .copied()
            .filter(|m| m.node == pid.node && m.incarnation < pid.incarnation)
            .collect();
        if !old.is_empty() {
            self.start_gather(&[], &old);
        }
        if let Phase::Gather(g) = &mut self.phase {
            let stale: Vec<Pid> = g
                .proc_set
                .iter()
                .copied()
                .filter(|m| m.node == pid.node && m.incarnation < pid.incarnation)
                .collect();
            for s in stale {
                g.fail_set.insert(s);
                g.last_change = self.now;
            }
        }
    }

    fn queue_frame(&mut self, dest: Dest, frame: &Frame) {
        let bytes = Arc::new(wire::encode_frame(frame));
        self.out.push((dest, bytes));
    }

    fn queue_to_members(&mut self, members: &[Pid], frame: &Frame) {
        let bytes = Arc::new(wire::encode_frame(frame));
        for m in members {
            if *m != self.me {
                self.out.push((Dest::Pid(*m), bytes.clone()));
            }
        }
    }

    /// Batches queued frames into datagrams, one destination at a time.
    fn assemble(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let mut per_dest: BTreeMap<SocketAddr, Vec<Arc<Vec<u8>>>> = BTreeMap::new();
        for (dest, bytes) in std::mem::take(&mut self.out) {
            let addr = match dest {
                Dest::Addr(a) => Some(a),
                Dest::Pid(p) => self.addrs.get(&p).copied(),
            };
            if let Some(a) = addr {
                per_dest.entry(a).or_default().push(bytes);
            }
        }
        // A frame for every member is one allocation shared by every
        // destination's list, so equal runs of frames are found by their
        // addresses, and their datagram is built once: a sender of bulk
        // data to 19 members otherwise copied each 60 KB datagram 38 times
        // and faulted in fresh pages for 19 of them (most of its CPU).
        let mut built: HashMap<Vec<*const Vec<u8>>, Arc<Vec<u8>>> = HashMap::new();
        // `per_dest` holds every frame until the end, so no address in
        // `built` can be freed and reused by another frame meanwhile.
        let mut b = DatagramBuilder::new(self.me);
        for (&dest, frames) in &per_dest {
            let mut first = 0;
            while first < frames.len() {
                // At least one frame per datagram, however large.
                let mut end = first + 1;
                let mut bytes = frames[first].len();
                while let Some(f) = frames.get(end) {
                    if b.len_with(bytes + f.len()) > self.cfg.max_datagram
                        || end - first >= wire::MAX_FRAMES
                    {
                        break;
                    }
                    bytes += f.len();
                    end += 1;
                }
                let run = &frames[first..end];
                let key: Vec<*const Vec<u8>> = run.iter().map(Arc::as_ptr).collect();
                let payload = built
                    .entry(key)
                    .or_insert_with(|| {
                        for f in run {
                            b.push(f);
                        }
                        Arc::new(b.take())
                    })
                    .clone();
                self.transmits.push_back(Transmit { dest, payload });
                first = end;
            }
        }
    }

    /// Frames that show the sender is in this process's view or taking
    /// part in a view change with it; a beacon alone does not keep a member
    /// from being suspected, since a member that moved to another view still
    /// sends beacons.
    fn shows_membership(&self, frame: &Frame) -> bool {
        match frame {
            Frame::Data(d) | Frame::Relay(d) => d.view == self.cur.id,
            Frame::Ack(a) => a.view == self.cur.id,
            Frame::Summary(m) => m.view == self.cur.id,
            Frame::Hello(h) => h.view == self.cur.id,
            Frame::Nack(_) | Frame::Leave { .. } => false,
            Frame::Join(_)
            | Frame::Install(_)
            | Frame::InstallAck { .. }
            | Frame::Commit { .. } => true,
        }
    }

    /// Traffic of a view this process is not in: a member that moved on, or
    /// a separate component to merge with.
    fn foreign_traffic(&mut self, from: Pid, view: ViewId) {
        if view == self.cur.id || self.retained.iter().any(|s| s.view == view) {
            return;
        }
        match &self.phase {
            Phase::Installing(i) if i.install.view == view => return,
            Phase::Left => return,
            _ => {}
        }
        if self.in_cooldown(from) {
            return;
        }
        if self.cur.members.contains(&from) {
            if view.counter > self.cur.id.counter {
                self.start_gather(&[], &[]);
            }
        } else {
            match &mut self.phase {
                Phase::Installing(_) => {
                    self.pending_merge.insert(from);
                }
                Phase::Gather(g) if g.proc_set.contains(&from) => {}
                _ => self.start_gather(&[from], &[]),
            }
        }
    }

    fn handle_frame(&mut self, from: Pid, frame: Frame) {
        match frame {
            Frame::Data(d) => {
                self.on_data(from, d);
            }
            Frame::Relay(d) => self.on_relay(from, d),
            Frame::Ack(a) => self.on_ack(from, a),
            Frame::Summary(m) => self.on_summary(from, m),
            Frame::Nack(n) => self.on_nack(from, n),
            Frame::Hello(h) => self.on_hello(from, h),
            Frame::Join(j) => self.on_join(from, Arc::from(j)),
            Frame::Install(i) => self.on_install(Arc::from(i)),
            Frame::InstallAck { view } => self.on_install_ack(from, view),
            Frame::Commit { view } => self.on_commit(view),
            Frame::Leave { view } => {
                if view == self.cur.id && self.cur.members.contains(&from) {
                    let far = self.now.plus(Duration::from_secs(3600));
                    self.cooldown.insert(from, far);
                    self.start_gather(&[], &[from]);
                }
            }
        }
    }

    /// Takes in a data frame; true when it is new in the current view.
    fn on_data(&mut self, from: Pid, d: DataFrame) -> bool {
        self.max_counter = self.max_counter.max(d.view.counter);
        let streams = if d.view == self.cur.id {
            &mut self.cur.streams
        } else if let Some(s) = self.retained.iter_mut().find(|s| s.view == d.view) {
            s
        } else {
            self.foreign_traffic(from, d.view);
            return false;
        };
        let Some(s) = streams.index_of(d.sender) else {
            return false;
        };
        if !streams.members.contains(&from) {
            return false;
        }
        if d.level == Level::Causal && d.frag.0 == 0 && d.deps.len() != streams.members.len() {
            self.counters.drop_decode += 1;
            return false;
        }
        let ts = d.ts;
        let level = d.level;
        let is_current = d.view == self.cur.id;
        match streams.insert(s, Arc::new(d), self.now) {
            Received::New => {
                if is_current {
                    self.seen = self.seen.max(ts);
                    self.unacked_frames += 1;
                    // Acknowledging every frame to every member made one hop
                    // cost N x (N - 1) datagrams. An ack is urgent only when
                    // someone may be waiting for it: a safe message needs
                    // every member's `contig`, an agreed one every member's
                    // promise past its timestamp (one already announced does
                    // not need repeating), and the sender's flow-control
                    // window needs stability before it fills. The rest waits
                    // for the heartbeat or rides on the next data datagram.
                    let for_order = match level {
                        Level::Safe => true,
                        Level::Agreed => ts > self.announced_clock,
                        Level::Fifo | Level::Causal => false,
                    };
                    let for_window = self.unacked_frames >= (self.cfg.window / 4).max(1);
                    if (for_order || for_window) && self.hub() == Some(self.me) {
                        self.hub_summarize();
                    } else if for_window {
                        // The sender's window waits: no waiting for an
                        // answer to ride on (it held a FIFO sender back).
                        self.want_ack(true);
                        self.ack_due = self.ack_due.min(self.now.plus(self.cfg.ack_delay));
                    } else {
                        self.want_ack(for_order);
                    }
                }
                is_current
            }
            Received::Duplicate => false,
            Received::TooFarAhead => {
                self.counters.drop_ahead += 1;
                false
            }
        }
    }

    /// A member's own frame sent to this process as the hub: taken in as
    /// data, and passed on to every other member with the hub's next
    /// summary. Anywhere else (the view changed, or this process is not
    /// the hub) it is plain data: the others get it by retransmission, and
    /// in a view change by the flush, as they would a lost frame.
    fn on_relay(&mut self, from: Pid, d: DataFrame) {
        let relay = from == d.sender
            && d.view == self.cur.id
            && matches!(self.phase, Phase::Operational)
            && self.relay_hub() == Some(self.me);
        if !relay {
            self.on_data(from, d);
            return;
        }
        let level = d.level;
        let ts = d.ts;
        let len = d.payload.len();
        // A burst is under way when an agreed or safe message received
        // before this one is not yet past every member's floor: concurrent
        // messages (the answers to one question) are coming in.
        let burst = {
            let st = &self.cur.streams;
            st.others_floor() < st.max_total_ts
        };
        let bytes = Arc::new(wire::encode_frame(&Frame::Data(d.clone())));
        if !self.on_data(from, d) {
            return;
        }
        self.relay.push(bytes);
        self.relay_bytes += len;
        let total = matches!(level, Level::Agreed | Level::Safe);
        if total {
            self.relay_ts = self.relay_ts.min(ts);
        }
        if !total || !burst || self.relay_bytes >= self.cfg.max_datagram / 2 {
            // A lone message waits for nothing; a FIFO or causal one is
            // deliverable on arrival; a datagram's worth gains nothing by
            // waiting.
            self.want_ack(true);
        } else {
            // Gathered like the promises of a burst, for at most
            // `summary_delay`: until the rest of the burst is here the
            // members could not deliver these anyway (no floor passed
            // them), and `progress` sends them the moment every floor
            // does.
            self.hub_summarize();
        }
    }

    /// At the hub: the burst the held frames belong to is complete: every
    /// member's floor passed the earliest of them. Holding them longer
    /// only delays the others, and a later one (an answer sent after its
    /// sender promised past the others' answers) needs the others'
    /// promises, which they give once they have it.
    fn relay_ready(&self) -> bool {
        !self.relay.is_empty() && self.cur.streams.others_floor() >= self.relay_ts
    }

    /// Passes the held frames on to every other member (their senders too:
    /// the batch is then the same for everyone, which IP multicast
    /// dissemination sends once).
    fn flush_relay(&mut self) {
        if self.relay.is_empty() {
            return;
        }
        let members = self.cur.members.clone();
        for bytes in std::mem::take(&mut self.relay) {
            for m in &members {
                if *m != self.me {
                    self.out.push((Dest::Pid(*m), bytes.clone()));
                }
            }
        }
        self.relay_bytes = 0;
        self.relay_ts = u64::MAX;
    }

    fn on_ack(&mut self, from: Pid, a: AckFrame) {
        self.max_counter = self.max_counter.max(a.view.counter);
        if a.view != self.cur.id {
            self.foreign_traffic(from, a.view);
            return;
        }
        if let Some(q) = self.cur.streams.index_of(from) {
            // The clock is not raised to the ack's: causality only needs it
            // above the messages received, and raising it spread the
            // timestamps of concurrent messages (answers to one question),
            // so each of them needed an ack round of its own.
            self.cur.streams.on_ack(q, &a, self.now);
            if self.hub() == Some(self.me) && self.cur.streams.hub_news(self.cfg.window) {
                self.hub_summarize();
            }
        }
    }

    fn on_summary(&mut self, from: Pid, m: SummaryFrame) {
        self.max_counter = self.max_counter.max(m.view.counter);
        if m.view != self.cur.id {
            self.foreign_traffic(from, m.view);
            return;
        }
        // Any member's summary is made of acks it received; the hub's is
        // the one that comes.
        if self.cur.streams.index_of(from).is_some() {
            self.cur.streams.on_summary(&m, self.now);
        }
        if self.heard_via() == Some(from) && m.heard.len() == self.cur.members.len() {
            // The hub heard from each member `age` ago. The summary's
            // flight time makes that a little later than it was, which
            // delays a suspicion by one hop at most.
            self.summary_at = self.now;
            let now = self.now.as_micros();
            for (q, age) in self.cur.members.iter().zip(&m.heard) {
                if *q == self.me || *q == from {
                    continue;
                }
                let t = Time(now.saturating_sub(*age));
                let e = self.last_heard.entry(*q).or_insert(t);
                *e = (*e).max(t);
            }
        }
    }

    /// At the hub, news the others may be waiting for (a promise, its own
    /// or relayed): at once when every agreed or safe message received so
    /// far is past every floor (a lone message waits for nothing). While promises are
    /// still coming in for a burst of concurrent messages, a summary per
    /// ack would cost more than the others gain: they are gathered for up
    /// to `summary_delay`, and the last promise of the burst sends them.
    fn hub_summarize(&mut self) {
        let streams = &self.cur.streams;
        if streams.others_floor() >= streams.max_total_ts {
            self.want_ack(true);
        } else {
            self.ack_pending = true;
            self.ack_urgent = true;
            let due = self.now.plus(self.cfg.summary_delay);
            if due < self.ack_due {
                self.ack_due = due;
            }
        }
    }

    /// The member that relays urgent acks in this view, if the view is
    /// large enough to have one.
    fn hub(&self) -> Option<Pid> {
        if self.cur.members.len() >= self.cfg.ack_hub_from.max(3) {
            self.cur.members.first().copied()
        } else {
            None
        }
    }

    /// The hub, when this process is not it and sends its periodic
    /// heartbeats to it alone in this view: the other members then hear of
    /// each other through the hub's summaries.
    fn heard_via(&self) -> Option<Pid> {
        self.hub()
            .filter(|h| *h != self.me && self.heartbeats_through_hub())
    }

    /// Whether this view's periodic heartbeats go to the hub alone (the
    /// hub's included: it hears every member and answers with summaries).
    fn heartbeats_through_hub(&self) -> bool {
        self.hub().is_some() && self.cur.members.len() >= self.cfg.heartbeat_hub_from
    }

    /// The hub, when it also relays data frames in this view.
    fn relay_hub(&self) -> Option<Pid> {
        self.hub()
            .filter(|_| self.cur.members.len() >= self.cfg.relay_from)
    }

    fn on_nack(&mut self, from: Pid, n: NackFrame) {
        let streams = if n.view == self.cur.id {
            &self.cur.streams
        } else if let Some(s) = self.retained.iter().find(|s| s.view == n.view) {
            s
        } else {
            return;
        };
        let Some(s) = streams.index_of(n.sender) else {
            return;
        };
        let frames: Vec<Arc<DataFrame>> = (n.from..=n.to)
            .filter_map(|seq| streams.frame(s, seq))
            .collect();
        for f in frames {
            self.counters.retransmissions += 1;
            self.queue_frame(Dest::Pid(from), &Frame::Data((*f).clone()));
        }
    }

    fn in_cooldown(&self, p: Pid) -> bool {
        self.cooldown.get(&p).is_some_and(|t| *t > self.now)
    }

    fn on_hello(&mut self, from: Pid, h: HelloFrame) {
        self.max_counter = self.max_counter.max(h.view.counter);
        if self.cur.members.contains(&from) {
            if h.view != self.cur.id {
                self.foreign_traffic(from, h.view);
            }
            return;
        }
        if self.in_cooldown(from) {
            return;
        }
        match &mut self.phase {
            Phase::Installing(_) => {
                self.pending_merge.insert(from);
            }
            Phase::Gather(g) if g.fail_set.contains(&from) || g.proc_set.contains(&from) => {}
            Phase::Left => {}
            _ => self.start_gather(&[from], &[]),
        }
    }

    fn on_join(&mut self, from: Pid, j: Arc<JoinFrame>) {
        // Only for a while: a forged or corrupted attempt number must not
        // silence a process for good.
        if let Some((seen, at)) = self.join_attempts.get(&from) {
            if *seen > j.attempt && self.now.since(*at) < self.vc_timer(self.cfg.join_timeout) {
                self.counters.drop_stale_join += 1;
                return;
            }
        }
        self.join_attempts.insert(from, (j.attempt, self.now));
        self.max_counter = self
            .max_counter
            .max(j.state.max_counter)
            .max(j.state.view.counter);
        for (p, a) in &j.addrs {
            if *p != self.me && self.newest.get(&p.node).is_none_or(|i| *i <= p.incarnation) {
                self.addrs.entry(*p).or_insert(*a);
            }
        }
        let excluded_me = j.fail_set.contains(&self.me);
        match &self.phase {
            Phase::Left => {}
            Phase::Operational => {
                if self.cur.members.contains(&from) {
                    if j.state.view == self.cur.id {
                        if excluded_me {
                            self.start_gather(&[], &[from]);
                        } else {
                            self.start_gather(&j.proc_set, &j.fail_set);
                            self.merge_join(from, j);
                        }
                    } else if self.is_stale_join(from, &j) {
                        self.resend_install(from);
                    } else {
                        self.start_gather(&[], &[]);
                        self.merge_join(from, j);
                    }
                } else if !excluded_me {
                    // A join is direct evidence the sender wants to merge:
                    // it overrides the cooldown, which only mutes beacons.
                    self.cooldown.remove(&from);
                    self.start_gather(&[from], &[]);
                    self.merge_join(from, j);
                }
            }
            Phase::Gather(_) => self.merge_join(from, j),
            Phase::Installing(i) => {
                let install = i.install.clone();
                match install.index_of(from) {
                    Some(idx) => {
                        let used = install.attempts.get(idx).copied().unwrap_or(0);
                        if j.attempt <= used && j.state.view != install.view {
                            self.resend_install(from);
                        } else if j.attempt > used {
                            self.abort_install();
                            self.merge_join(from, j);
                        }
                    }
                    None => {
                        if !excluded_me {
                            self.pending_merge.insert(from);
                        }
                    }
                }
            }
        }
    }

    /// A join from a member of the current view that reflects the view
    /// change that formed it: it was delayed, or the member missed the
    /// install.
    fn is_stale_join(&self, from: Pid, j: &JoinFrame) -> bool {
        let Some(inst) = &self.cur.install else {
            return false;
        };
        let Some(idx) = inst.index_of(from) else {
            return false;
        };
        let used = inst.attempts.get(idx).copied().unwrap_or(0);
        inst.old_view_of(from)
            .is_some_and(|o| o.view == j.state.view)
            && j.attempt <= used
    }

    fn resend_install(&mut self, to: Pid) {
        let install = match &self.phase {
            Phase::Installing(i) => Some(i.install.clone()),
            _ => self.cur.install.clone(),
        };
        let Some(inst) = install else {
            return;
        };
        let now = self.now;
        if self.install_replies.get(&to).is_some_and(|t| *t > now) {
            return;
        }
        let interval = self.vc_timer(self.cfg.join_interval);
        self.install_replies.insert(to, now.plus(interval));
        self.queue_frame(Dest::Pid(to), &Frame::Install(Box::new((*inst).clone())));
        if inst.view == self.cur.id && inst.primary_attempt.is_some() && self.cur.primary.is_some()
        {
            self.queue_frame(Dest::Pid(to), &Frame::Commit { view: inst.view });
        }
    }

    /// Folds a join into the gathering (the node is in the gather phase).
    fn merge_join(&mut self, from: Pid, j: Arc<JoinFrame>) {
        let me = self.me;
        let now = self.now;
        let newest = &self.newest;
        let superseded = |p: &Pid| newest.get(&p.node).is_some_and(|inc| *inc > p.incarnation);
        let Phase::Gather(g) = &mut self.phase else {
            return;
        };
        if g.fail_set.contains(&from) {
            return;
        }
        let mut changed = false;
        if j.fail_set.contains(&me) {
            changed |= g.fail_set.insert(from);
        } else {
            for p in j.proc_set.iter().chain(std::iter::once(&from)) {
                if !g.proc_set.contains(p) {
                    g.proc_set.insert(*p);
                    g.added.insert(*p, now);
                    if superseded(p) {
                        g.fail_set.insert(*p);
                    }
                    changed = true;
                }
            }
            for p in &j.fail_set {
                if *p != me && g.fail_set.insert(*p) {
                    g.proc_set.insert(*p);
                    changed = true;
                }
            }
            g.heard.insert(from, now);
            g.joins.insert(from, j);
        }
        if changed {
            g.last_change = now;
            g.next_send = now;
            self.attempt += 1;
        }
        self.check_consensus();
    }

    fn start_gather(&mut self, add_proc: &[Pid], add_fail: &[Pid]) {
        let now = self.now;
        if matches!(self.phase, Phase::Installing(_)) {
            self.abort_install();
        }
        // What the hub held goes out as it is: the members are still
        // collecting the old view's frames.
        self.flush_relay();
        match &mut self.phase {
            Phase::Left => return,
            Phase::Operational => {
                let mut g = Gather {
                    proc_set: self.cur.members.iter().copied().collect(),
                    fail_set: BTreeSet::new(),
                    joins: BTreeMap::new(),
                    heard: BTreeMap::new(),
                    added: BTreeMap::new(),
                    last_change: now,
                    next_send: now,
                };
                for m in &self.cur.members {
                    // Members have been heard recently: give them the full
                    // join timeout from now.
                    g.added.insert(*m, now);
                }
                g.proc_set.insert(self.me);
                g.added.remove(&self.me);
                self.phase = Phase::Gather(g);
                self.attempt += 1;
                for o in &mut self.send_queue {
                    o.started = None;
                    o.next_frag = 0;
                }
            }
            Phase::Gather(_) | Phase::Installing(_) => {}
        }
        if let Phase::Gather(g) = &mut self.phase {
            let mut changed = false;
            for p in add_proc {
                if *p != self.me && g.proc_set.insert(*p) {
                    g.added.insert(*p, now);
                    changed = true;
                }
            }
            for p in add_fail {
                if *p != self.me && g.fail_set.insert(*p) {
                    g.proc_set.insert(*p);
                    changed = true;
                }
            }
            if changed {
                g.last_change = now;
                g.next_send = now;
                self.attempt += 1;
            }
        }
        self.check_consensus();
    }

    fn abort_install(&mut self) {
        let phase = std::mem::replace(&mut self.phase, Phase::Operational);
        match phase {
            Phase::Installing(i) => {
                let mut g = i.gather;
                g.last_change = self.now;
                g.next_send = self.now;
                // Everyone gets a fresh join timeout in the new round.
                for p in g.proc_set.iter() {
                    if *p != self.me {
                        g.added.insert(*p, self.now);
                        g.heard.remove(p);
                    }
                }
                g.joins.clear();
                self.phase = Phase::Gather(g);
                self.attempt += 1;
                self.cur.streams.clear_caps();
            }
            other => self.phase = other,
        }
    }

    fn my_join_state(&self) -> JoinState {
        JoinState {
            view: self.cur.id,
            view_members: self.cur.members.clone(),
            contig: self.cur.streams.contig_vector(),
            max_counter: self.max_counter,
            last_primary: self.primary.last.clone(),
            ambiguous: self.primary.ambiguous.clone(),
            groups: self.groups_intent.iter().cloned().collect(),
        }
    }

    fn send_join(&mut self) {
        let Phase::Gather(g) = &self.phase else {
            return;
        };
        let proc_set: Vec<Pid> = g.proc_set.iter().copied().collect();
        let fail_set: Vec<Pid> = g.fail_set.iter().copied().collect();
        let addrs: Vec<(Pid, SocketAddr)> = proc_set
            .iter()
            .filter_map(|p| self.addrs.get(p).map(|a| (*p, *a)))
            .collect();
        let frame = Frame::Join(Box::new(JoinFrame {
            attempt: self.attempt,
            proc_set: proc_set.clone(),
            fail_set,
            addrs,
            state: self.my_join_state(),
        }));
        self.queue_to_members(&proc_set, &frame);
    }

    /// How many times the configured view-change timers to use. A round of
    /// a view change costs each process O(n) datagrams and the group
    /// O(n²); on a few shared cores a round of 32 processes outlasted the
    /// fixed timers, so processes failed each other and views churned
    /// through singletons. Up to 15 processes the timers are as
    /// configured, then they grow with n / 8. n counts the failed
    /// candidates too, so that it never shrinks during a gather (a
    /// deadline computed with a smaller factor would lie in the past).
    fn vc_scale(&self) -> u32 {
        let n = match &self.phase {
            Phase::Gather(g) => g.proc_set.len(),
            Phase::Installing(i) => i.install.members.len(),
            Phase::Operational | Phase::Left => 0,
        }
        .max(self.cur.members.len());
        u32::try_from(n / 8).unwrap_or(u32::MAX).max(1)
    }

    /// The heartbeat and suspicion timers, as configured while heartbeats
    /// go through the hub (`heartbeat_hub_from`): the idle load is then
    /// about 2n datagrams a period. With heartbeats from every member to
    /// every other (the hub turned off), from 32 members on they grow with
    /// n / 16: that load is n (n − 1) datagrams a period, 49,000 a second
    /// at 50 members, more than a few shared cores could seal, so members
    /// fell silent for lack of CPU and were suspected.
    fn hb_timer(&self, d: Duration) -> Duration {
        if self.heartbeats_through_hub() {
            return d;
        }
        let n = u32::try_from(self.cur.members.len() / 16).unwrap_or(u32::MAX);
        d.saturating_mul(n.max(1))
    }

    fn vc_timer(&self, d: Duration) -> Duration {
        d.saturating_mul(self.vc_scale())
    }

    /// A change of the sets sends a join at once, but in a large gather
    /// changes come in bursts (every newcomer, every failure): sending
    /// each one to everyone at once cost O(n³) datagrams. They are
    /// coalesced to one join per half a (scaled) join interval.
    fn next_join_allowed(&self) -> Time {
        let gap = self
            .cfg
            .join_interval
            .saturating_mul(self.vc_scale().saturating_sub(1))
            / 2;
        self.last_join_sent.plus(gap)
    }

    /// A process that has not formed its first view waits for the peers
    /// starting with it: until no new candidate appeared for
    /// `startup_wait`, and at most ten times that from its start.
    /// Processes started one after another over a few hundred
    /// milliseconds formed several first views (then merged) when the
    /// wait counted from each process's own start only.
    fn startup_deadline(&self, g: &Gather) -> Option<Time> {
        if self.cur.id.counter != 0 {
            return None;
        }
        let last_added = g
            .added
            .values()
            .copied()
            .max()
            .unwrap_or(self.started)
            .max(self.started);
        let quiet = last_added.plus(self.cfg.startup_wait);
        let cap = self.started.plus(self.cfg.startup_wait.saturating_mul(10));
        Some(quiet.min(cap))
    }

    fn check_consensus(&mut self) {
        let Phase::Gather(g) = &self.phase else {
            return;
        };
        let memb: Vec<Pid> = g.proc_set.difference(&g.fail_set).copied().collect();
        if memb.first() != Some(&self.me) {
            return;
        }
        if self.startup_deadline(g).is_some_and(|d| self.now < d) {
            return;
        }
        let proc_set: Vec<Pid> = g.proc_set.iter().copied().collect();
        let fail_set: Vec<Pid> = g.fail_set.iter().copied().collect();
        let agreed = memb.iter().skip(1).all(|m| {
            g.joins
                .get(m)
                .is_some_and(|j| j.proc_set == proc_set && j.fail_set == fail_set)
        });
        if agreed {
            self.form_install(memb);
        }
    }

    /// The representative decides the new view.
    fn form_install(&mut self, members: Vec<Pid>) {
        let Phase::Gather(g) = &self.phase else {
            return;
        };
        let mine = Arc::new(JoinFrame {
            attempt: self.attempt,
            proc_set: Vec::new(),
            fail_set: Vec::new(),
            addrs: Vec::new(),
            state: self.my_join_state(),
        });
        let mut joins: Vec<Arc<JoinFrame>> = Vec::with_capacity(members.len());
        for m in &members {
            if *m == self.me {
                joins.push(mine.clone());
            } else if let Some(j) = g.joins.get(m) {
                joins.push(j.clone());
            } else {
                return;
            }
        }
        let counter = joins
            .iter()
            .map(|j| j.state.max_counter.max(j.state.view.counter))
            .max()
            .unwrap_or(0)
            .max(self.max_counter)
            + 1;
        self.max_counter = counter;
        let view = ViewId {
            counter,
            coordinator: self.me,
        };
        let mut old_views: Vec<OldView> = Vec::new();
        for (m, j) in members.iter().zip(&joins) {
            let st = &j.state;
            match old_views.iter_mut().find(|o| o.view == st.view) {
                Some(o) => {
                    if o.view_members != st.view_members {
                        continue;
                    }
                    o.movers.push(*m);
                    for (i, c) in st.contig.iter().enumerate() {
                        if let (Some(t), Some(h)) = (o.targets.get_mut(i), o.holders.get_mut(i)) {
                            if *c > *t {
                                *t = *c;
                                *h = *m;
                            }
                        }
                    }
                }
                None => old_views.push(OldView {
                    view: st.view,
                    view_members: st.view_members.clone(),
                    movers: vec![*m],
                    targets: st.contig.clone(),
                    holders: vec![*m; st.contig.len()],
                }),
            }
        }
        let nodes = wire::nodes_of(&members);
        let reports: Vec<(NodeId, &PrimaryRecord, &[PrimaryRecord])> = members
            .iter()
            .zip(&joins)
            .map(|(m, j)| (m.node, &j.state.last_primary, &j.state.ambiguous[..]))
            .collect();
        let decision = primary::decide(view, &nodes, &reports);
        let install = InstallFrame {
            view,
            attempts: joins.iter().map(|j| j.attempt).collect(),
            addrs: members
                .iter()
                .filter_map(|m| self.addrs.get(m).map(|a| (*m, *a)))
                .collect(),
            old_views,
            groups: joins.iter().map(|j| j.state.groups.clone()).collect(),
            known_primary: decision.known,
            ambiguous: decision.ambiguous,
            primary_attempt: decision.attempt,
            members,
        };
        let frame = Frame::Install(Box::new(install.clone()));
        let members = install.members.clone();
        self.queue_to_members(&members, &frame);
        self.on_install(Arc::new(install));
    }

    fn on_install(&mut self, inst: Arc<InstallFrame>) {
        self.max_counter = self.max_counter.max(inst.view.counter);
        if inst.members.len() > MAX_MEMBERS || inst.index_of(self.me).is_none() {
            return;
        }
        if inst.old_view_of(self.me).map(|o| o.view) != Some(self.cur.id) {
            return;
        }
        let gather = match &self.phase {
            Phase::Gather(g) => g.clone(),
            Phase::Installing(i) if inst.view > i.install.view => i.gather.clone(),
            _ => return,
        };
        for (p, a) in &inst.addrs {
            if *p != self.me {
                self.addrs.insert(*p, *a);
            }
        }
        let caps = inst
            .old_view_of(self.me)
            .map(|o| o.targets.clone())
            .unwrap_or_default();
        self.cur.streams.set_caps(caps, self.now);
        // The representative has just sent the install: re-sending is for
        // later (an install formed while handling a timeout, at the end of
        // the startup wait, must not leave a deadline at the present).
        let next_send = self.now.plus(self.vc_timer(self.cfg.join_interval));
        self.phase = Phase::Installing(Installing {
            install: inst,
            gather,
            started: self.now,
            recovered: false,
            acks: BTreeSet::new(),
            next_send,
        });
        self.check_recovered();
    }

    /// Once every message the install asks for is here: acknowledge a
    /// primary attempt, or install at once.
    fn check_recovered(&mut self) {
        let Phase::Installing(i) = &self.phase else {
            return;
        };
        if i.recovered {
            return;
        }
        let inst = i.install.clone();
        let Some(old) = inst.old_view_of(self.me) else {
            return;
        };
        let skip_flush = self.cfg.bug == Some(Bug::SkipFlush);
        let complete = skip_flush
            || old.targets.iter().enumerate().all(|(s, t)| {
                self.cur
                    .streams
                    .senders
                    .get(s)
                    .is_some_and(|st| st.contig >= *t)
            });
        if !complete {
            return;
        }
        let next_send = self.now.plus(self.vc_timer(self.cfg.join_interval));
        if let Phase::Installing(i) = &mut self.phase {
            i.recovered = true;
            // The acknowledgement goes out just below; re-sent later.
            i.next_send = next_send;
        }
        match &inst.primary_attempt {
            None => self.finish_install(None),
            Some(attempt) => {
                if self.primary.enter_attempt(attempt) {
                    self.events
                        .push_back(Event::PersistPrimary(self.primary.clone()));
                }
                let rep = inst.view.coordinator;
                if rep == self.me {
                    self.on_install_ack(self.me, inst.view);
                } else {
                    self.queue_frame(Dest::Pid(rep), &Frame::InstallAck { view: inst.view });
                }
            }
        }
    }

    fn on_install_ack(&mut self, from: Pid, view: ViewId) {
        let Phase::Installing(i) = &mut self.phase else {
            return;
        };
        if i.install.view != view || view.coordinator != self.me {
            return;
        }
        if i.install.index_of(from).is_none() {
            return;
        }
        i.acks.insert(from);
        if i.recovered && i.install.members.iter().all(|m| i.acks.contains(m)) {
            let members = i.install.members.clone();
            self.queue_to_members(&members, &Frame::Commit { view });
            self.on_commit(view);
        }
    }

    fn on_commit(&mut self, view: ViewId) {
        let Phase::Installing(i) = &self.phase else {
            return;
        };
        if i.install.view != view || !i.recovered {
            return;
        }
        let Some(attempt) = i.install.primary_attempt.clone() else {
            return;
        };
        if self.primary.adopt(&attempt) {
            self.events
                .push_back(Event::PersistPrimary(self.primary.clone()));
        }
        self.finish_install(Some(attempt.num));
    }

    fn emit_deliveries(&mut self, delivered: Vec<Delivered>, conf: ConfId) {
        let regular = matches!(conf, ConfId::Regular(_));
        for d in delivered {
            self.clock = self.clock.max(d.ts);
            self.counters.delivered += 1;
            if self.cfg.trace {
                self.record(TraceEvent::Deliver {
                    msg: d.msg,
                    level: d.level,
                    group: d.kind.trace_group().to_owned(),
                    digest: self.trace_digest(&d.payload),
                    conf,
                });
            }
            let sender = d.msg.sender;
            match d.kind {
                DataKind::App(group) => {
                    if self
                        .cur
                        .groups
                        .get(&group)
                        .is_some_and(|m| m.contains(&self.me))
                    {
                        self.events.push_back(Event::Deliver(Delivery {
                            msg: d.msg,
                            group,
                            level: d.level,
                            payload: d.payload,
                            conf,
                        }));
                    }
                }
                DataKind::GroupJoin(group) => {
                    let set = self.cur.groups.entry(group.clone()).or_default();
                    if set.insert(sender) && regular {
                        self.group_changed(&group);
                    }
                }
                DataKind::GroupLeave(group) => {
                    let removed = self
                        .cur
                        .groups
                        .get_mut(&group)
                        .is_some_and(|s| s.remove(&sender));
                    if removed && regular {
                        self.group_changed(&group);
                    }
                }
            }
        }
    }

    fn group_changed(&mut self, group: &str) {
        let change = self.cur.group_changes.entry(group.to_owned()).or_insert(0);
        *change += 1;
        let id = GroupViewId {
            view: self.cur.id,
            change: *change,
        };
        let members: Vec<Pid> = self
            .cur
            .groups
            .get(group)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        if members.contains(&self.me) {
            self.emit_group_view(group, id, members);
        }
    }

    fn emit_group_view(&mut self, group: &str, id: GroupViewId, members: Vec<Pid>) {
        self.record(TraceEvent::GroupView {
            group: group.to_owned(),
            id,
            members: members.clone(),
        });
        self.events.push_back(Event::GroupView {
            group: group.to_owned(),
            id,
            members,
        });
    }

    /// Delivers the rest of the old view and installs the new one.
    fn finish_install(&mut self, primary_num: Option<u64>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Operational);
        let Phase::Installing(inst_state) = phase else {
            self.phase = phase;
            return;
        };
        let inst = inst_state.install;
        let old_id = self.cur.id;
        let mut out = Vec::new();
        let floor = self.delivery_floor();
        self.cur.streams.deliver(floor, &mut out);
        self.emit_deliveries(out, ConfId::Regular(old_id));
        if old_id.counter != 0 {
            let movers = inst
                .old_view_of(self.me)
                .map(|o| o.movers.clone())
                .unwrap_or_default();
            let conf = ConfId::Transitional {
                from: old_id,
                to: inst.view,
            };
            self.record(TraceEvent::Install {
                conf,
                members: movers.clone(),
                primary: None,
            });
            self.events.push_back(Event::View(ViewInfo {
                conf,
                members: movers,
                primary: None,
            }));
            if self.cfg.bug != Some(Bug::SkipFlush) {
                let mut out = Vec::new();
                self.cur.streams.deliver_rest(&mut out);
                self.emit_deliveries(out, conf);
            }
        }
        // The new regular view.
        let mut streams = Streams::new(
            inst.view,
            inst.members.clone(),
            self.me,
            4 * self.cfg.window,
        );
        streams.agreed_in_arrival_order = self.cfg.bug == Some(Bug::AgreedInArrivalOrder);
        streams.nack_grace = self.cfg.nack_grace;
        let old = std::mem::replace(&mut self.cur.streams, streams);
        if old_id.counter != 0 {
            self.retained.push_back(old);
            while self.retained.len() > 2 {
                self.retained.pop_front();
            }
        }
        let mut groups: BTreeMap<String, BTreeSet<Pid>> = BTreeMap::new();
        for (m, gs) in inst.members.iter().zip(&inst.groups) {
            for g in gs {
                groups.entry(g.clone()).or_default().insert(*m);
            }
        }
        self.cur.id = inst.view;
        self.cur.members = inst.members.clone();
        self.cur.primary = primary_num;
        self.cur.groups = groups;
        self.cur.group_changes = BTreeMap::new();
        self.cur.my_last_causal_sent = 0;
        self.cur.install = Some(inst.clone());
        if self.primary.adopt(&inst.known_primary) {
            self.events
                .push_back(Event::PersistPrimary(self.primary.clone()));
        }
        self.counters.view_changes += 1;
        self.record(TraceEvent::Install {
            conf: ConfId::Regular(inst.view),
            members: inst.members.clone(),
            primary: primary_num,
        });
        self.events.push_back(Event::View(ViewInfo {
            conf: ConfId::Regular(inst.view),
            members: inst.members.clone(),
            primary: primary_num,
        }));
        let mine: Vec<(String, Vec<Pid>)> = self
            .cur
            .groups
            .iter()
            .filter(|(_, s)| s.contains(&self.me))
            .map(|(g, s)| (g.clone(), s.iter().copied().collect()))
            .collect();
        for (g, members) in mine {
            let id = GroupViewId {
                view: inst.view,
                change: 0,
            };
            self.emit_group_view(&g, id, members);
        }
        let now = self.now;
        for m in &inst.members {
            self.last_heard.insert(*m, now);
        }
        self.summary_at = now;
        for o in &mut self.send_queue {
            o.started = None;
            o.next_frag = 0;
        }
        // Group joins and leaves that were queued but not sent are already
        // reflected in the new view's membership (it used our intent).
        self.send_queue.retain(|o| match &o.kind {
            DataKind::App(_) => true,
            DataKind::GroupJoin(_) | DataKind::GroupLeave(_) => false,
        });
        self.queued_bytes = self.send_queue.iter().map(|o| o.payload.len()).sum();
        self.ack_pending = true;
        self.ack_due = now;
        self.announced_clock = 0;
        self.unacked_frames = 0;
        self.relay.clear();
        self.relay_bytes = 0;
        self.relay_ts = u64::MAX;
        self.relayed.clear();
        self.reply_until = Time::ZERO;
        self.next_heartbeat = now;
        if !self.pending_merge.is_empty() {
            let merge: Vec<Pid> = std::mem::take(&mut self.pending_merge)
                .into_iter()
                .filter(|p| !self.cur.members.contains(p))
                .collect();
            if !merge.is_empty() {
                self.start_gather(&merge, &[]);
            }
        }
    }

    /// Gives queued application messages their place in the stream, as far
    /// as flow control allows.
    fn pump_sends(&mut self) {
        if !matches!(self.phase, Phase::Operational) {
            return;
        }
        let (sent_any, sent_direct, lone_ts) = self.pump_frames();
        if let Some(ts) = lone_ts {
            // A lone agreed or safe message promises the next timestamp
            // too: whoever answers it, or speaks next after delivering it,
            // takes that one, and with this process's promise already
            // there, no ack round is needed before the others deliver it
            // (a query round: question and answers, two hops instead of
            // three, four with a hub). The clock passes it, so nothing
            // this process sends later contradicts the promise; a promise
            // is only ever a lower bound on later timestamps, so a larger
            // one is as sound as the exact one.
            self.clock = self.clock.max(ts.saturating_add(1));
            self.ack_pending = true;
        }
        if sent_any && self.ack_pending {
            // The ack rides in the data's datagrams instead of its own.
            self.send_ack(if sent_direct {
                AckRoute::Everyone
            } else {
                AckRoute::WithRelay
            });
        }
    }

    /// Whether at least one frame went out, and whether one went to every
    /// member rather than through the hub.
    ///
    /// Only a lone message goes through the relaying hub: one small frame,
    /// with nothing queued behind it and few of its own before it not yet
    /// everywhere (an answer to a question). A busy sender's datagrams
    /// already carry many frames each, and relaying them made the hub,
    /// which then passed on everyone's traffic, the bottleneck (5 nodes
    /// sending all they could: 38 % less throughput, and retransmission
    /// storms as its queue grew). A frame
    /// sent directly would overtake the relayed frames before it still on
    /// their way through the hub, and every member would ask for the
    /// apparent gap at once: copies of those go directly with it.
    fn pump_frames(&mut self) -> (bool, bool, Option<u64>) {
        let mut sent_any = false;
        let mut sent_direct = false;
        let mut lone_ts = None;
        let frag_payload = self.cfg.max_datagram.saturating_sub(160).max(64);
        loop {
            let me_idx = self.cur.streams.me;
            let next_seq = self
                .cur
                .streams
                .senders
                .get(me_idx)
                .map_or(1, |s| s.contig + 1);
            let stable = self.cur.streams.stable(me_idx);
            if next_seq.saturating_sub(stable) > self.cfg.window {
                return (sent_any, sent_direct, lone_ts);
            }
            let queued = self.send_queue.len();
            let Some(head) = self.send_queue.front_mut() else {
                return (sent_any, sent_direct, lone_ts);
            };
            let count = head.payload.len().div_ceil(frag_payload).max(1) as u32;
            let (ts, first) = match head.started {
                Some(x) => x,
                None => {
                    self.clock += 1;
                    head.started = Some((self.clock, next_seq));
                    (self.clock, next_seq)
                }
            };
            let i = head.next_frag;
            let start = (i as usize) * frag_payload;
            let end = (start + frag_payload).min(head.payload.len());
            let deps = if i == 0 && head.level == Level::Causal {
                let mut d: Vec<u64> = self
                    .cur
                    .streams
                    .senders
                    .iter()
                    .map(|s| s.last_causal_delivered())
                    .collect();
                if let Some(x) = d.get_mut(me_idx) {
                    *x = self.cur.my_last_causal_sent;
                }
                d
            } else {
                Vec::new()
            };
            let frame = DataFrame {
                view: self.cur.id,
                sender: self.me,
                seq: next_seq,
                ts,
                level: head.level,
                frag: (i, count),
                kind: (i == 0).then(|| head.kind.clone()),
                deps,
                payload: head.payload.get(start..end).unwrap_or_default().to_vec(),
            };
            head.next_frag += 1;
            let done = head.next_frag == count;
            // Frames of its own not yet known to be everywhere: a busy
            // sender has many (the driver hands its messages in one by
            // one, so an empty queue alone does not tell).
            let idle = next_seq.saturating_sub(stable) <= MAX_RELAYED_COPIES as u64;
            let lone = idle && count == 1 && !sent_any && queued == 1;
            let hub = self
                .relay_hub()
                .filter(|h| *h != self.me)
                .filter(|_| lone && frame.payload.len() <= self.cfg.relay_max_payload);
            match hub {
                Some(h) => {
                    if self.relayed.len() >= MAX_RELAYED_COPIES {
                        self.relayed.pop_front();
                    }
                    self.relayed.push_back(next_seq);
                    self.queue_frame(Dest::Pid(h), &Frame::Relay(frame.clone()));
                }
                None => {
                    sent_direct = true;
                    let members = self.cur.members.clone();
                    for seq in std::mem::take(&mut self.relayed) {
                        if seq > stable {
                            if let Some(f) = self.cur.streams.frame(me_idx, seq) {
                                self.queue_to_members(&members, &Frame::Data((*f).clone()));
                            }
                        }
                    }
                    self.queue_to_members(&members, &Frame::Data(frame.clone()));
                }
            }
            self.cur.streams.insert(me_idx, Arc::new(frame), self.now);
            sent_any = true;
            // Its receivers take the frame as this process's floor: the
            // message's timestamp once its last fragment is out.
            let floor = if done { ts } else { ts.saturating_sub(1) };
            self.announced_clock = self.announced_clock.max(floor);
            if done {
                if let Some(o) = self.send_queue.pop_front() {
                    lone_ts = (idle
                        && self.send_queue.is_empty()
                        && matches!(o.level, Level::Agreed | Level::Safe))
                    .then_some(ts);
                    self.queued_bytes = self.queued_bytes.saturating_sub(o.payload.len());
                    if o.level.is_causal_class() {
                        self.cur.my_last_causal_sent = first;
                    }
                    self.record(TraceEvent::Send {
                        msg: MsgId {
                            sender: self.me,
                            view: self.cur.id,
                            seq: first,
                        },
                        level: o.level,
                        group: o.kind.trace_group().to_owned(),
                        digest: self.trace_digest(&o.payload),
                    });
                }
            }
        }
    }

    /// Everything that may follow an input: sending, delivering, freeing,
    /// and view-change progress.
    fn progress(&mut self) {
        if matches!(self.phase, Phase::Left) {
            return;
        }
        if let Phase::Installing(_) = self.phase {
            self.check_recovered();
        }
        if let Phase::Gather(_) = self.phase {
            self.check_consensus();
        }
        if let Phase::Gather(g) = &self.phase {
            if g.next_send <= self.now && self.next_join_allowed() <= self.now {
                self.send_join();
                self.last_join_sent = self.now;
                let interval = self.vc_timer(self.cfg.join_interval);
                if let Phase::Gather(g) = &mut self.phase {
                    g.next_send = self.now.plus(interval);
                }
            }
        }
        if matches!(self.phase, Phase::Operational) {
            self.pump_sends();
            let mut out = Vec::new();
            let floor = self.delivery_floor();
            self.cur.streams.deliver(floor, &mut out);
            let conf = ConfId::Regular(self.cur.id);
            let handed = self.events.len();
            self.emit_deliveries(out, conf);
            if self.events.len() > handed && !self.ack_postponed && self.hub() != Some(self.me) {
                // The application may answer what it was just handed (a
                // query, a command): its answer's datagrams would carry
                // the ack, and taking the answer's timestamp before the
                // ack's promise keeps concurrent answers on one timestamp
                // (else each needs an ack round of its own). That holds
                // for an ack owed now and for one that falls due meanwhile
                // (another member's answer arriving first). Once per ack;
                // never at the hub, whose summary others are waiting for.
                self.ack_postponed = true;
                self.reply_until = self.now.plus(self.cfg.reply_grace);
                if self.ack_pending && self.ack_due < self.reply_until {
                    self.ack_due = self.reply_until;
                }
            }
            if self.relay_ready() {
                self.want_ack(true);
            }
            self.cur.streams.collect_garbage();
            self.pump_sends();
            self.maybe_depart();
        }
        let held = self.held_bytes() as u64;
        self.counters.max_held_bytes = self.counters.max_held_bytes.max(held);
        let frames = (self.cur.streams.held_frames
            + self.retained.iter().map(|s| s.held_frames).sum::<usize>())
            as u64;
        self.counters.max_held_frames = self.counters.max_held_frames.max(frames);
    }

    fn maybe_depart(&mut self) {
        if !self.leaving || !self.send_queue.is_empty() {
            return;
        }
        let me_idx = self.cur.streams.me;
        let Some(own) = self.cur.streams.senders.get(me_idx) else {
            return;
        };
        if self.cur.streams.stable(me_idx) < own.contig || !self.cur.streams.own_all_delivered() {
            return;
        }
        self.flush_relay();
        let members = self.cur.members.clone();
        let frame = Frame::Leave { view: self.cur.id };
        self.queue_to_members(&members, &frame);
        self.queue_to_members(&members, &frame);
        self.phase = Phase::Left;
        self.events.push_back(Event::Left);
    }

    /// Every later message of this process will have a timestamp above
    /// this: the clock, or just below a message whose fragments are still
    /// going out (they keep its timestamp).
    fn my_floor(&self) -> u64 {
        match self.send_queue.front().and_then(|o| o.started) {
            Some((ts, _)) => ts.saturating_sub(1),
            None => self.clock,
        }
    }

    /// This process's own floor when it delivers: any timestamp it has
    /// seen, since delivering a message raises the clock past it
    /// ([`Node::emit_deliveries`]), so nothing it sends afterwards can be
    /// ordered before what it delivered. A message whose fragments are
    /// still going out keeps its timestamp and holds the floor below it.
    fn delivery_floor(&self) -> u64 {
        match self.send_queue.front().and_then(|o| o.started) {
            Some((ts, _)) => ts.saturating_sub(1),
            None => self.clock.max(self.seen),
        }
    }

    /// An ack is owed: soon when `urgent`, else with the next heartbeat
    /// (or the next data datagram, whichever comes first).
    fn want_ack(&mut self, urgent: bool) {
        self.ack_pending = true;
        self.ack_urgent |= urgent;
        let due = if urgent {
            self.now.plus(self.cfg.ack_delay).max(self.reply_until)
        } else {
            self.next_heartbeat
        };
        if due < self.ack_due {
            self.ack_due = due;
        }
    }

    /// Sends the ack: to every member, or only to the hub (see
    /// [`AckRoute`]). The hub adds its summary and the frames it relays.
    fn send_ack(&mut self, route: AckRoute) {
        let hub = self.hub();
        let hb_via_hub = self.heard_via().is_some();
        let before_heartbeat = self.now < self.next_heartbeat;
        let only_hub = hub.is_some_and(|h| h != self.me)
            && match route {
                AckRoute::Everyone => false,
                AckRoute::Heartbeat => hb_via_hub,
                AckRoute::WithRelay => hb_via_hub || before_heartbeat,
                AckRoute::Alone => hb_via_hub || (before_heartbeat && self.ack_urgent),
            };
        self.ack_pending = false;
        self.ack_postponed = false;
        // The wait was for this ack (or the answer it rides on); the next
        // one has nothing to wait for.
        self.reply_until = Time::ZERO;
        self.ack_urgent = false;
        self.ack_due = Time::NEVER;
        self.unacked_frames = 0;
        if !only_hub || hb_via_hub {
            // With heartbeats through the hub, any ack to the hub is one.
            self.next_heartbeat = self.now.plus(self.hb_timer(self.cfg.heartbeat_interval));
        }
        if !matches!(self.phase, Phase::Operational) || self.cur.members.len() < 2 {
            return;
        }
        if !only_hub {
            // Before the promises: a member that read a promise covering
            // frames it has not received would ask for them.
            self.flush_relay();
        }
        let me_idx = self.cur.streams.me;
        let sent = self.cur.streams.senders.get(me_idx).map_or(0, |s| s.contig);
        // A promise covers every timestamp seen: the clock passes them
        // now, so that nothing sent later contradicts it.
        self.clock = self.clock.max(self.seen);
        let clock = self.my_floor();
        self.announced_clock = self.announced_clock.max(clock);
        let frame = Frame::Ack(AckFrame {
            view: self.cur.id,
            clock,
            sent,
            contig: self.cur.streams.contig_vector(),
        });
        match hub {
            Some(h) if only_hub => self.queue_frame(Dest::Pid(h), &frame),
            _ => {
                let members = self.cur.members.clone();
                self.queue_to_members(&members, &frame);
                if hub == Some(self.me) {
                    let mut summary = self.cur.streams.summary(sent, clock);
                    let now = self.now;
                    summary.heard = self
                        .cur
                        .members
                        .iter()
                        .map(|m| {
                            let t = self.last_heard.get(m).copied().unwrap_or(now);
                            let age = if *m == self.me {
                                0
                            } else {
                                now.since(t).as_micros()
                            };
                            u64::try_from(age).unwrap_or(u64::MAX)
                        })
                        .collect();
                    let summary = Frame::Summary(summary);
                    self.queue_to_members(&members, &summary);
                }
            }
        }
    }

    fn send_hellos(&mut self) {
        let frame = Frame::Hello(HelloFrame {
            view: self.cur.id,
            members: self.cur.members.len() as u32,
        });
        let member_addrs: BTreeSet<SocketAddr> = self
            .cur
            .members
            .iter()
            .filter_map(|m| self.addrs.get(m).copied())
            .collect();
        let mut targets: BTreeSet<SocketAddr> = self.cfg.seeds.iter().copied().collect();
        for (p, a) in &self.addrs {
            if !self.cur.members.contains(p)
                && self.newest.get(&p.node).is_none_or(|i| *i <= p.incarnation)
            {
                targets.insert(*a);
            }
        }
        let bytes = Arc::new(wire::encode_frame(&frame));
        for a in targets {
            if !member_addrs.contains(&a) {
                self.out.push((Dest::Addr(a), bytes.clone()));
            }
        }
    }

    /// When member `m` counts as silent for `timeout` and is suspected:
    /// the moment it was last heard plus the timeout, or, for a member
    /// heard of only through the hub (`via`), now if the hub's latest
    /// summary shows it silent and never otherwise. The hub's vouching is
    /// news that arrives with a datagram, not a deadline: the mere age of
    /// the last summary says nothing while summaries are late.
    fn silent_from(&self, m: Pid, via: Option<Pid>, timeout: Duration) -> Time {
        let heard = self.last_heard.get(&m).copied().unwrap_or(self.now);
        match via {
            Some(h) if m != h => {
                if self.summary_at.since(heard) >= timeout {
                    self.now
                } else {
                    Time::NEVER
                }
            }
            _ => heard.plus(timeout),
        }
    }

    fn operational_timeouts(&mut self) {
        let now = self.now;
        let suspect_timeout = self.hb_timer(self.cfg.suspect_timeout);
        let via = self.heard_via();
        let heard = |m: &Pid| self.last_heard.get(m).copied().unwrap_or(now);
        let suspects: Vec<Pid> = match via {
            // A silent hub is suspected with only those silent for twice
            // the timeout: the others, heard of only through it, fell
            // silent with it and may well be alive. The view change's
            // joins find out (`join_timeout`); suspecting them too would
            // split members that reach each other. Everyone silent that
            // long means this process was cut off or stopped itself, and
            // waiting for their joins only delayed its merge (by the
            // join timeout, 250 ms at 16 members in `bench-membership`).
            Some(h) if now.since(heard(&h)) >= suspect_timeout => self
                .cur
                .members
                .iter()
                .copied()
                .filter(|m| {
                    *m == h
                        || (*m != self.me
                            && now.since(heard(m)) >= suspect_timeout.saturating_mul(2))
                })
                .collect(),
            _ => self
                .cur
                .members
                .iter()
                .copied()
                .filter(|m| *m != self.me && self.silent_from(*m, via, suspect_timeout) <= now)
                .collect(),
        };
        if !suspects.is_empty() {
            self.counters.suspicions += suspects.len() as u64;
            self.start_gather(&[], &suspects);
            return;
        }
        if now >= self.next_heartbeat {
            self.send_ack(AckRoute::Heartbeat);
        }
    }

    fn gather_timeouts(&mut self) {
        let now = self.now;
        let me = self.me;
        let cfg_join_timeout = self.vc_timer(self.cfg.join_timeout);
        let consensus_timeout = self.vc_timer(self.cfg.consensus_timeout);
        let merge_cooldown = self.cfg.merge_cooldown;
        let Phase::Gather(g) = &mut self.phase else {
            return;
        };
        let mut failed: Vec<Pid> = Vec::new();
        for p in g.proc_set.difference(&g.fail_set) {
            if *p == me {
                continue;
            }
            let since = g
                .heard
                .get(p)
                .or_else(|| g.added.get(p))
                .copied()
                .unwrap_or(now);
            if now.since(since) >= cfg_join_timeout {
                failed.push(*p);
            }
        }
        if failed.is_empty() && now.since(g.last_change) >= consensus_timeout {
            let proc_set: Vec<Pid> = g.proc_set.iter().copied().collect();
            let fail_set: Vec<Pid> = g.fail_set.iter().copied().collect();
            for p in g.proc_set.difference(&g.fail_set) {
                let agrees = g
                    .joins
                    .get(p)
                    .is_some_and(|j| j.proc_set == proc_set && j.fail_set == fail_set);
                if *p != me && !agrees {
                    failed.push(*p);
                }
            }
            g.last_change = now;
        }
        if !failed.is_empty() {
            for p in &failed {
                g.fail_set.insert(*p);
                self.cooldown.insert(*p, now.plus(merge_cooldown));
            }
            g.last_change = now;
            g.next_send = now;
            self.attempt += 1;
        }
    }

    fn installing_timeouts(&mut self) {
        let now = self.now;
        let install_timeout = self.vc_timer(self.cfg.install_timeout);
        let resend = self.vc_timer(self.cfg.join_interval);
        let Phase::Installing(i) = &mut self.phase else {
            return;
        };
        if now.since(i.started) >= install_timeout {
            // Drop whoever held the install up, so the next round can
            // succeed without them.
            let inst = i.install.clone();
            let rep = inst.view.coordinator;
            let mut blame: Vec<Pid> = Vec::new();
            if rep == self.me {
                blame.extend(inst.members.iter().filter(|m| !i.acks.contains(m)));
            } else if i.recovered {
                blame.push(rep);
            } else if let Some(old) = inst.old_view_of(self.me) {
                for (s, t) in old.targets.iter().enumerate() {
                    let have = self.cur.streams.senders.get(s).map_or(0, |st| st.contig);
                    if have < *t {
                        if let Some(h) = old.holders.get(s) {
                            blame.push(*h);
                        }
                    }
                }
            }
            blame.retain(|p| *p != self.me);
            self.abort_install();
            self.start_gather(&[], &blame);
            return;
        }
        if i.next_send > now {
            return;
        }
        i.next_send = now.plus(resend);
        let inst = i.install.clone();
        let rep = inst.view.coordinator;
        if rep == self.me {
            let missing: Vec<Pid> = inst
                .members
                .iter()
                .copied()
                .filter(|m| *m != self.me && !i.acks.contains(m))
                .collect();
            let frame = Frame::Install(Box::new((*inst).clone()));
            self.queue_to_members(&missing, &frame);
        } else if i.recovered && inst.primary_attempt.is_some() {
            self.queue_frame(Dest::Pid(rep), &Frame::InstallAck { view: inst.view });
        }
    }

    /// Asks for missing frames: gaps in the current view, and during an
    /// install the frames the install says to deliver.
    fn send_nacks(&mut self) {
        let now = self.now;
        let view = self.cur.id;
        let targets: Option<(Vec<u64>, Vec<Pid>)> = match &self.phase {
            Phase::Installing(i) => i
                .install
                .old_view_of(self.me)
                .map(|o| (o.targets.clone(), o.holders.clone())),
            _ => None,
        };
        let n = self.cur.members.len();
        let me_idx = self.cur.streams.me;
        let mut requests: Vec<(Pid, NackFrame)> = Vec::new();
        let mut idle: Vec<usize> = Vec::new();
        for s in 0..n {
            if s == me_idx {
                continue;
            }
            let Some(st) = self.cur.streams.senders.get(s) else {
                continue;
            };
            if st.next_nack > now {
                continue;
            }
            let upto = match &targets {
                Some((t, _)) => t.get(s).copied().unwrap_or(0),
                None => st.known_max,
            };
            let Some((from, to)) = self.cur.streams.missing(s, upto, MAX_NACK_SPAN) else {
                idle.push(s);
                continue;
            };
            let sender = self.cur.members[s];
            let tries = st.nack_tries;
            let holder = match &targets {
                Some((_, h)) if tries % 2 == 0 => h.get(s).copied().unwrap_or(sender),
                _ if tries % 2 == 0 => sender,
                _ => {
                    // Anyone who has it: pick among members that acknowledged it.
                    let have: Vec<Pid> = (0..n)
                        .filter(|q| *q != me_idx)
                        .filter(|q| {
                            self.cur
                                .streams
                                .acks
                                .get(*q)
                                .and_then(|r| r.get(s))
                                .is_some_and(|c| *c >= to)
                        })
                        .map(|q| self.cur.members[q])
                        .collect();
                    if have.is_empty() {
                        sender
                    } else {
                        have[(self.rng.next() % have.len() as u64) as usize]
                    }
                }
            };
            requests.push((
                holder,
                NackFrame {
                    view,
                    sender,
                    from,
                    to,
                },
            ));
        }
        for s in idle {
            // Nothing to ask for now: wait for news of a gap.
            if let Some(st) = self.cur.streams.senders.get_mut(s) {
                st.next_nack = Time::NEVER;
            }
        }
        for (holder, nack) in requests {
            if let Some(s) = self.cur.streams.index_of(nack.sender) {
                if let Some(st) = self.cur.streams.senders.get_mut(s) {
                    st.next_nack = now.plus(self.cfg.nack_interval);
                    st.nack_tries += 1;
                }
            }
            if holder != self.me {
                self.counters.nacks_sent += 1;
                self.queue_frame(Dest::Pid(holder), &Frame::Nack(nack));
            }
        }
    }
}
