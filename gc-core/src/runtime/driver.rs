//! The driver task: the one owner of the node, the sealer and the socket.

use super::ratelimit::{Limiter, Logs};
use super::{
    check_config, next_incarnation, Command, Error, Events, FatalError, Handle, IoCounters,
    KeyStatus, KeyStep, MulticastConfig, Outcome, RuntimeConfig, RuntimeCounters, StartError,
    Storage, StoredState, View,
};
use crate::eventlog::{LogLine, EVENT_LOG_FORMAT};
use crate::seal::{OpenError, SealError, Sealer, MAX_DATAGRAM_LEN};
use crate::trace::{ProcessEnd, TraceEvent, TraceRecord};
use crate::{Event, Level, MsgId, Node, PrimaryState, SendError, Time, Transmit};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::{HashSet, VecDeque};
use std::io::{self, ErrorKind, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// Multicasts waiting for room in the node's send queue, at most.
const MAX_PARKED: usize = 1024;
/// Commands handled in one wake-up before the driver looks at the socket
/// again.
const COMMAND_BATCH: usize = 64;
/// Consecutive receive errors after which the socket is declared broken.
const MAX_RECV_ERRORS: u32 = 1000;

/// A multicast waiting for room in the send queue.
struct Parked {
    group: String,
    level: Level,
    payload: Vec<u8>,
    deadline: Instant,
    /// The wait the caller asked for, for its error.
    timeout: Duration,
    reply: oneshot::Sender<Result<MsgId, Error>>,
}

/// What [`Driver::offer`] made of a multicast.
enum Offer {
    Accepted,
    /// The send queue is full; the payload is given back.
    Full(Vec<u8>),
    Refused(SendError),
}

/// A clean leave under way.
struct Leaving {
    deadline: Instant,
    waiters: Vec<oneshot::Sender<Result<(), Error>>>,
}

pub(super) struct Driver {
    node: Node,
    sealer: Sealer,
    socket: UdpSocket,
    multicast: Option<UdpSocket>,
    /// The unicast socket's address: the source of this node's own group
    /// datagrams, which the multicast socket receives back (loopback).
    local_addr: SocketAddr,
    epoch: Instant,
    commands: mpsc::Receiver<Command>,
    commands_open: bool,
    events: Option<mpsc::Sender<Event>>,
    /// Events taken from the node that [`Events`] had no room for yet.
    pending: VecDeque<Event>,
    storage: Option<Box<dyn Storage>>,
    stored: StoredState,
    recv_buf: Vec<u8>,
    open_buf: Vec<u8>,
    seal_buf: Vec<u8>,
    /// The plaintext `seal_buf` holds sealed, and where that datagram went.
    sealed_plain: Option<(std::sync::Arc<Vec<u8>>, HashSet<SocketAddr>)>,
    io: IoCounters,
    logs: Logs,
    parked: VecDeque<Parked>,
    /// `node.unsent()` when the head of `parked` was last refused.
    unsent_at_refusal: usize,
    /// An upper bound of the bytes in the node's send queue: what was
    /// accepted since it was last seen empty.
    queued_upper: usize,
    send_queue_bytes: usize,
    stall_started: Option<Instant>,
    leaving: Option<Leaving>,
    leave_timeout: Duration,
    recv_batch: usize,
    /// [`RuntimeConfig::busy_poll`](super::RuntimeConfig::busy_poll).
    busy_poll: Duration,
    /// Since the driver last waited, input came (a datagram or a command)
    /// and datagrams went out in response: an answer may be on its way (see
    /// [`Driver::poll_briefly`]). A wake-up of the timers alone (a
    /// heartbeat) does not count, so an idle node does not poll.
    input_since_wait: bool,
    sent_since_wait: bool,
    recv_errors_in_a_row: u32,
    outcome: watch::Sender<Outcome>,
    /// One entry per application message in the node's send queue, in its
    /// order: who waits for the message's [`MsgId`]. The node keeps every
    /// application message in its send queue until it pops it from the
    /// head with a [`TraceEvent::Send`] record (it drops only queued group
    /// joins and leaves at a view change), so the two stay in step; bounded
    /// by the node's send queue bounds.
    sends: VecDeque<oneshot::Sender<Result<MsgId, Error>>>,
    /// The multicast group to disseminate through, when configured.
    disseminate: Option<SocketAddr>,
    event_log: Option<EventLog>,
    faults: Option<super::Faults>,
    /// Microseconds since the Unix epoch at `epoch`, for event log times.
    epoch_wall_us: u64,
}

/// The event log being written.
struct EventLog {
    path: std::path::PathBuf,
    file: std::fs::File,
    /// Lines not yet written; written at the end of every wake-up.
    buf: Vec<u8>,
    failed: bool,
}

/// The event log buffer is written out once it holds this much, even in
/// the middle of a wake-up.
const EVENT_LOG_BUFFER: usize = 256 << 10;

pub(super) async fn start(config: RuntimeConfig) -> Result<(Handle, Events), StartError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(StartError::NoTokio);
    }
    check_config(&config)?;
    let RuntimeConfig {
        node: mut node_config,
        bind,
        key,
        multicast,
        storage,
        event_log,
        event_capacity,
        command_capacity,
        send_timeout,
        leave_timeout,
        socket_buffer,
        recv_batch,
        busy_poll,
        faults,
    } = config;
    let multicast = multicast.map(|m| with_interface_of(m, bind));

    let socket = bind_unicast(bind, socket_buffer)
        .map_err(|source| StartError::Bind { addr: bind, source })?;
    if let Some(m) = &multicast {
        send_to_group_from(&socket, m).map_err(|source| StartError::Multicast {
            group: m.group,
            interface: m.interface,
            source,
        })?;
    }
    let socket: std::net::UdpSocket = socket.into();
    let multicast_socket = match &multicast {
        Some(m) => {
            Some(
                bind_multicast(m, socket_buffer).map_err(|source| StartError::Multicast {
                    group: m.group,
                    interface: m.interface,
                    source,
                })?,
            )
        }
        None => None,
    };
    let local_addr = socket
        .local_addr()
        .map_err(|source| StartError::Bind { addr: bind, source })?;
    // Linux reports twice the granted size (its bookkeeping overhead).
    let granted = match socket_buffer {
        0 => 0,
        asked => socket2::SockRef::from(&socket)
            .recv_buffer_size()
            .map_or(asked, |reported| (reported / 2).min(asked)),
    };
    node_config.window =
        super::window_within(node_config.window, node_config.max_datagram, granted);

    // A fresh incarnation, saved before anything is sealed.
    let initial = node_config.primary.clone();
    let (storage, stored) = tokio::task::spawn_blocking(move || {
        let mut storage = storage;
        let result = (|| {
            let old = storage.load()?;
            let incarnation = next_incarnation(old.as_ref().map(|s| s.incarnation))?;
            let state = StoredState {
                incarnation,
                primary: old.map_or(initial, |s| s.primary),
            };
            storage.save(&state)?;
            Ok::<_, StartError>(state)
        })();
        (storage, result)
    })
    .await
    .map_err(|e| StartError::Config(format!("the storage task failed: {e}")))?;
    let stored = stored?;

    node_config.me.incarnation = stored.incarnation;
    // The trace records give each sent message its MsgId (Handle::multicast)
    // and feed the event log.
    node_config.trace = true;
    node_config.primary = stored.primary.clone();
    if let Some(m) = &multicast {
        node_config.seeds.push(SocketAddr::V4(m.group));
    }
    let me = node_config.me;
    let send_queue_bytes = node_config.send_queue_bytes.min(node_config.max_message);

    let socket =
        UdpSocket::from_std(socket).map_err(|source| StartError::Bind { addr: bind, source })?;
    let multicast_socket = match (multicast_socket, &multicast) {
        (Some(s), Some(m)) => {
            Some(
                UdpSocket::from_std(s).map_err(|source| StartError::Multicast {
                    group: m.group,
                    interface: m.interface,
                    source,
                })?,
            )
        }
        _ => None,
    };

    let epoch_wall_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    // Payload digests are for the checker, which reads the event log.
    node_config.trace_digests = event_log.is_some();
    let event_log = match event_log {
        None => None,
        Some(path) => {
            let open = || -> io::Result<std::fs::File> {
                let mut options = std::fs::OpenOptions::new();
                options.append(true).create(true);
                let mut file = options.open(&path)?;
                let start = LogLine::Start {
                    pid: me,
                    wall_us: epoch_wall_us,
                    format: EVENT_LOG_FORMAT,
                };
                let mut line = serde_json::to_vec(&start).map_err(io::Error::other)?;
                // A line torn by an earlier crash ends here, so this one
                // starts on a line of its own.
                line.insert(0, b'\n');
                line.push(b'\n');
                file.write_all(&line)?;
                Ok(file)
            };
            match open() {
                Ok(file) => Some(EventLog {
                    path,
                    file,
                    buf: Vec::new(),
                    failed: false,
                }),
                Err(source) => return Err(StartError::EventLog { path, source }),
            }
        }
    };
    let (command_tx, command_rx) = mpsc::channel(command_capacity);
    let (event_tx, event_rx) = mpsc::channel(event_capacity);
    let (outcome_tx, outcome_rx) = watch::channel(None);
    let epoch = Instant::now();
    let driver = Driver {
        node: Node::new(node_config, Time::ZERO),
        sealer: Sealer::new(&key, me),
        socket,
        multicast: multicast_socket,
        local_addr,
        epoch,
        commands: command_rx,
        commands_open: true,
        events: Some(event_tx),
        pending: VecDeque::new(),
        storage: Some(storage),
        stored,
        recv_buf: vec![0; MAX_DATAGRAM_LEN + 1],
        open_buf: Vec::with_capacity(MAX_DATAGRAM_LEN),
        seal_buf: Vec::with_capacity(MAX_DATAGRAM_LEN),
        sealed_plain: None,
        io: IoCounters::default(),
        logs: Logs::default(),
        parked: VecDeque::new(),
        unsent_at_refusal: 0,
        queued_upper: 0,
        send_queue_bytes,
        stall_started: None,
        leaving: None,
        leave_timeout,
        recv_batch,
        busy_poll,
        input_since_wait: false,
        sent_since_wait: false,
        recv_errors_in_a_row: 0,
        outcome: outcome_tx,
        sends: VecDeque::new(),
        disseminate: multicast
            .as_ref()
            .filter(|m| m.disseminate)
            .map(|m| SocketAddr::V4(m.group)),
        event_log,
        epoch_wall_us,
        faults,
    };
    info!(%me, %local_addr, multicast = ?multicast.map(|m| m.group), "gc-core node started");
    tokio::spawn(driver.run());
    Ok((
        Handle {
            commands: command_tx,
            outcome: outcome_rx,
            me,
            local_addr,
            send_timeout,
        },
        Events { rx: event_rx },
    ))
}

/// `m` with its interface settled: an unspecified one becomes the
/// interface of the unicast socket's address when that is a specific IPv4
/// address. Datagrams to the group leave from the unicast socket, with its
/// address as their source; left to the system's choice they go out on the
/// default route's interface, where the copies looped back to this host's
/// own processes carry a source that is not that interface's (127.0.0.1 on
/// eth0 is martian and dropped), so a fleet on one host bound to loopback
/// heard nothing of the group: no discovery through it, and with
/// [`MulticastConfig::disseminate`] no heartbeats, so views never settled.
/// Joining on the same interface keeps sending and receiving together.
fn with_interface_of(mut m: MulticastConfig, bind: SocketAddr) -> MulticastConfig {
    if m.interface.is_unspecified() {
        if let SocketAddr::V4(b) = bind {
            if !b.ip().is_unspecified() {
                m.interface = *b.ip();
            }
        }
    }
    m
}

fn bind_unicast(addr: SocketAddr, buffer: usize) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if buffer > 0 {
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = socket.set_recv_buffer_size(buffer);
        let _ = socket.set_send_buffer_size(buffer);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Group datagrams leave from the unicast socket (see [`with_interface_of`]).
fn send_to_group_from(socket: &Socket, m: &MulticastConfig) -> io::Result<()> {
    socket.set_multicast_if_v4(&m.interface)?;
    socket.set_multicast_ttl_v4(m.ttl)?;
    socket.set_multicast_loop_v4(m.loopback)
}

fn bind_multicast(m: &MulticastConfig, buffer: usize) -> io::Result<std::net::UdpSocket> {
    if !m.group.ip().is_multicast() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "not an IPv4 multicast address",
        ));
    }
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if buffer > 0 {
        // With dissemination, data arrives here in the same bursts as on
        // the unicast socket; the system's default (about 208 KiB, three
        // 60000-byte datagrams) dropped most of a burst, each loss then
        // costing a repair. Best effort, as for the unicast socket.
        let _ = socket.set_recv_buffer_size(buffer);
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    // Bound to the group's address, the socket receives only the group's
    // datagrams for the port (Linux).
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(*m.group.ip(), m.group.port())).into())?;
    socket.join_multicast_v4(m.group.ip(), &m.interface)?;
    socket.set_multicast_loop_v4(m.loopback)?;
    Ok(socket.into())
}

/// Waits until `socket` is readable, or forever when there is none.
async fn readable(socket: Option<&UdpSocket>) -> io::Result<()> {
    match socket {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl Driver {
    async fn run(mut self) {
        let result = self.run_loop().await;
        match &result {
            Ok(()) => info!(me = %self.node.pid(), "node left the cluster; driver stopped"),
            Err(e) => warn!(me = %self.node.pid(), error = %e, "driver stopped"),
        }
        for p in self.parked.drain(..) {
            let _ = p.reply.send(Err(Error::Stopped));
        }
        self.drain_trace();
        let end = if result.is_ok() {
            ProcessEnd::Left
        } else {
            ProcessEnd::Crashed
        };
        self.log_line(&LogLine::End {
            end,
            unsent_at_end: self.node.unsent() as u64,
        });
        self.write_log();
        // Waiters for messages never sent get `Stopped` as they drop.
        self.sends.clear();
        if let Some(leaving) = self.leaving.take() {
            for w in leaving.waiters {
                let _ = w.send(result.clone());
            }
        }
        // Whatever is still queued gets `Stopped` when the receiver drops.
        self.commands.close();
        self.outcome.send_replace(Some(result));
    }

    fn now(&self) -> Time {
        Time(u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn instant(&self, t: Time) -> Option<Instant> {
        self.epoch.checked_add(Duration::from_micros(t.as_micros()))
    }

    async fn run_loop(&mut self) -> Result<(), Error> {
        loop {
            self.flush().await?;
            if self.node.has_left() && self.pending.is_empty() {
                return Ok(());
            }
            if self
                .leaving
                .as_ref()
                .is_some_and(|l| Instant::now() >= l.deadline)
            {
                return Err(Error::LeaveTimeout);
            }
            if self.pending.is_empty() {
                self.end_stall();
                self.step().await?;
            } else {
                self.stalled().await;
            }
        }
    }

    /// Waits for input and handles it.
    async fn step(&mut self) -> Result<(), Error> {
        let timer = self.node.poll_timeout().and_then(|t| self.instant(t));
        let wake = earliest(
            earliest(timer, self.parked.front().map(|p| p.deadline)),
            self.leaving.as_ref().map(|l| l.deadline),
        );
        // Both flags start afresh at every wait.
        let had_input = std::mem::take(&mut self.input_since_wait);
        let sent = std::mem::take(&mut self.sent_since_wait);
        // A sender with a backlog (messages queued behind its flow-control
        // window, or parked multicasts) is busy, not waiting for an answer:
        // sleeping lets datagrams gather into larger batches. A view change
        // runs on timers of milliseconds, and a whole fleet starting at
        // once on few cores needs every cycle for it.
        let backlog = self.node.unsent() > 0 || !self.parked.is_empty();
        if had_input && sent && !backlog && self.node.is_operational() && !self.busy_poll.is_zero()
        {
            let until = Instant::now() + self.busy_poll;
            self.poll_briefly(wake.map_or(until, |w| w.min(until)))
                .await;
        }
        tokio::select! {
            biased;
            ready = self.socket.readable() => self.on_readable(ready)?,
            ready = readable(self.multicast.as_ref()) => self.on_readable(ready)?,
            command = self.commands.recv(), if self.commands_open => {
                match command {
                    Some(c) => {
                        self.input_since_wait = true;
                        self.on_command(c);
                        self.take_commands(COMMAND_BATCH - 1);
                    }
                    None => {
                        // Every handle is gone: leave cleanly.
                        self.commands_open = false;
                        self.begin_leave(None);
                    }
                }
            }
            () = sleep_until(wake) => {}
        }
        let now = self.now();
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
        }
        self.after_input();
        Ok(())
    }

    /// Looks for a datagram or a command until `until` without sleeping in
    /// the kernel, letting other threads and tasks run between looks (see
    /// "Polling before sleeping" in the module documentation). It only
    /// looks: whatever it finds is read by the `select!` that follows,
    /// whose wait then returns at once.
    async fn poll_briefly(&mut self, until: Instant) {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        loop {
            if has_input(&self.socket, &mut probe, None)
                || self.multicast.as_ref().is_some_and(|m| {
                    has_input(
                        m,
                        &mut probe,
                        Some((self.local_addr, &mut self.io.multicast_own_skipped)),
                    )
                })
                || !self.commands.is_empty()
                || Instant::now() >= until
            {
                return;
            }
            std::thread::yield_now();
            tokio::task::yield_now().await;
        }
    }

    /// The application is behind: wait for room in [`Events`], serving
    /// commands meanwhile, but neither reading the socket nor running the
    /// node's timers.
    async fn stalled(&mut self) {
        let now = Instant::now();
        if self.stall_started.is_none() {
            self.stall_started = Some(now);
            self.io.event_stalls += 1;
            if let Some(n) = self.logs.stall.hit(std::time::Instant::now()) {
                warn!(
                    stalls = n,
                    "the application is not reading events fast enough; the node is paused \
                     until it does (a long pause gets it excluded from the view)"
                );
            }
        }
        let Some(events) = self.events.clone() else {
            self.pending.clear();
            return;
        };
        let wake = earliest(
            self.parked.front().map(|p| p.deadline),
            self.leaving.as_ref().map(|l| l.deadline),
        );
        tokio::select! {
            biased;
            permit = events.reserve() => match permit {
                Ok(permit) => {
                    if let Some(event) = self.pending.pop_front() {
                        permit.send(event);
                    }
                    self.forward_events();
                }
                Err(_) => self.events_closed(),
            },
            command = self.commands.recv(), if self.commands_open => match command {
                Some(c) => self.on_command(c),
                None => {
                    self.commands_open = false;
                    self.begin_leave(None);
                }
            },
            () = sleep_until(wake) => {}
        }
        self.after_input();
    }

    fn end_stall(&mut self) {
        if let Some(started) = self.stall_started.take() {
            let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.io.event_stall_us = self.io.event_stall_us.saturating_add(us);
        }
    }

    /// Bookkeeping after any input: expired and unblocked multicasts.
    fn after_input(&mut self) {
        if self.node.unsent() == 0 {
            self.queued_upper = 0;
        }
        let now = Instant::now();
        while self.parked.front().is_some_and(|p| p.deadline <= now) {
            if let Some(p) = self.parked.pop_front() {
                self.io.refused_queue_full += 1;
                let _ = p.reply.send(Err(Error::Timeout(p.timeout)));
            }
        }
        self.retry_parked();
    }

    /// Offers parked multicasts again once the send queue has shrunk.
    fn retry_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let unsent = self.node.unsent();
        if unsent >= self.unsent_at_refusal && unsent != 0 {
            return;
        }
        while let Some(p) = self.parked.pop_front() {
            if p.reply.is_closed() {
                continue;
            }
            match self.offer(&p.group, p.level, p.payload) {
                Offer::Accepted => self.sends.push_back(p.reply),
                Offer::Refused(e) => {
                    let _ = p.reply.send(Err(e.into()));
                }
                Offer::Full(payload) => {
                    self.unsent_at_refusal = self.node.unsent();
                    self.parked.push_front(Parked { payload, ..p });
                    return;
                }
            }
        }
    }

    /// Gives a multicast to the node. The payload is copied first only when
    /// the queue might be full, so that it can be given back.
    fn offer(&mut self, group: &str, level: Level, payload: Vec<u8>) -> Offer {
        if group.is_empty() {
            // "" marks the protocol's own messages in the trace.
            return Offer::Refused(SendError::BadGroup);
        }
        let len = payload.len();
        if len > self.send_queue_bytes {
            return Offer::Refused(SendError::TooLarge {
                len,
                max: self.send_queue_bytes,
            });
        }
        let surely_fits = self.queued_upper.saturating_add(len) <= self.send_queue_bytes;
        let copy = (!surely_fits).then(|| payload.clone());
        let now = self.now();
        match self.node.multicast(now, group, level, payload) {
            Ok(()) => {
                self.queued_upper = self.queued_upper.saturating_add(len);
                Offer::Accepted
            }
            Err(SendError::QueueFull { queued }) => match copy {
                Some(payload) => Offer::Full(payload),
                None => Offer::Refused(SendError::QueueFull { queued }),
            },
            Err(e) => Offer::Refused(e),
        }
    }

    fn on_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Multicast {
                group,
                level,
                payload,
                deadline,
                reply,
            } => {
                if reply.is_closed() {
                    return;
                }
                match deadline {
                    Some((deadline, timeout)) if !self.parked.is_empty() => {
                        self.park(Parked {
                            group,
                            level,
                            payload,
                            deadline,
                            timeout,
                            reply,
                        });
                    }
                    Some((deadline, timeout)) => match self.offer(&group, level, payload) {
                        Offer::Accepted => self.sends.push_back(reply),
                        Offer::Refused(e) => {
                            let _ = reply.send(Err(e.into()));
                        }
                        Offer::Full(payload) => {
                            self.unsent_at_refusal = self.node.unsent();
                            self.park(Parked {
                                group,
                                level,
                                payload,
                                deadline,
                                timeout,
                                reply,
                            });
                        }
                    },
                    None => {
                        let result = match self.offer(&group, level, payload) {
                            Offer::Accepted => {
                                self.sends.push_back(reply);
                                return;
                            }
                            Offer::Full(_) => {
                                self.io.refused_queue_full += 1;
                                Err(SendError::QueueFull {
                                    queued: self.queued_upper,
                                }
                                .into())
                            }
                            Offer::Refused(e) => {
                                if matches!(e, SendError::QueueFull { .. }) {
                                    self.io.refused_queue_full += 1;
                                }
                                Err(e.into())
                            }
                        };
                        let _ = reply.send(result);
                    }
                }
            }
            Command::JoinGroup { group, reply } => {
                let result = if group.is_empty() {
                    Err(SendError::BadGroup)
                } else {
                    self.node.join_group(now, &group)
                };
                let _ = reply.send(result.map_err(Error::from));
            }
            Command::LeaveGroup { group, reply } => {
                let result = if group.is_empty() {
                    Err(SendError::BadGroup)
                } else {
                    self.node.leave_group(now, &group)
                };
                let _ = reply.send(result.map_err(Error::from));
            }
            Command::Leave { reply } => self.begin_leave(Some(reply)),
            Command::Counters { reply } => {
                let mut io = self.io;
                io.receive_buffer_drops = std::iter::once(&self.socket)
                    .chain(self.multicast.as_ref())
                    .filter_map(super::kernel_drops::receive_buffer_drops)
                    .sum();
                let _ = reply.send(RuntimeCounters {
                    protocol: self.node.counters().clone(),
                    seal: *self.sealer.counters(),
                    io,
                });
            }
            Command::View { reply } => {
                let (id, members) = self.node.view();
                let _ = reply.send(View {
                    me: self.node.pid(),
                    id,
                    members: members.to_vec(),
                    primary: self.node.primary(),
                    changing: self.node.changing_view(),
                    state: self.node.describe(),
                });
            }
            Command::Key { step, reply } => {
                let changed = !matches!(step, KeyStep::Status);
                if changed {
                    // What follows goes out under the key now current.
                    self.sealed_plain = None;
                }
                match step {
                    KeyStep::Stage(k) => self.sealer.stage(&k),
                    KeyStep::Rotate(k) => self.sealer.rotate(&k),
                    KeyStep::RetireOld => self.sealer.retire_old(),
                    KeyStep::Status => {}
                }
                let status = KeyStatus {
                    current: self.sealer.current_key(),
                    staged: self.sealer.staged_key(),
                    previous: self.sealer.previous_key(),
                };
                if changed {
                    info!(
                        current = %status.current,
                        staged = ?status.staged.map(|k| k.to_string()),
                        previous = ?status.previous.map(|k| k.to_string()),
                        "cluster key rotation step"
                    );
                }
                let _ = reply.send(status);
            }
        }
    }

    /// Takes every trace record from the node.
    fn drain_trace(&mut self) {
        while let Some(r) = self.node.poll_trace() {
            self.on_trace(r);
        }
    }

    /// A trace record: a sent message's identity goes to whoever waits for
    /// it; every record goes to the event log.
    fn on_trace(&mut self, record: TraceRecord) {
        // Group joins and leaves are traced with the group "" (which the
        // runtime refuses as a group name), application messages with
        // their group.
        if let TraceEvent::Send { msg, group, .. } = &record.event {
            if !group.is_empty() {
                match self.sends.pop_front() {
                    Some(reply) => {
                        let _ = reply.send(Ok(*msg));
                    }
                    None => debug!(%msg, "a sent message nobody waited for (a bug)"),
                }
            }
        }
        if self.event_log.is_some() {
            let record = TraceRecord {
                time: Time(record.time.as_micros().saturating_add(self.epoch_wall_us)),
                event: record.event,
            };
            self.log_line(&LogLine::Record(record));
        }
    }

    fn log_line(&mut self, line: &LogLine) {
        let Some(log) = &mut self.event_log else {
            return;
        };
        if log.failed {
            return;
        }
        // Serializing these types into a Vec cannot fail (no maps with
        // non-string keys, no custom serializers); if it ever does, the
        // line is skipped rather than the node stopped.
        if serde_json::to_writer(&mut log.buf, line).is_ok() {
            log.buf.push(b'\n');
        }
        if log.buf.len() >= EVENT_LOG_BUFFER {
            self.write_log();
        }
    }

    /// Writes what the event log buffer holds. A failure (full disk) stops
    /// the log, not the node: the group's work matters more than its record.
    fn write_log(&mut self) {
        let Some(log) = &mut self.event_log else {
            return;
        };
        if log.buf.is_empty() || log.failed {
            log.buf.clear();
            return;
        }
        if let Err(e) = log.file.write_all(&log.buf) {
            log.failed = true;
            warn!(path = %log.path.display(), error = %e, "cannot write the event log; it stops here");
        }
        log.buf.clear();
    }

    fn park(&mut self, p: Parked) {
        if self.parked.len() >= MAX_PARKED {
            self.io.refused_queue_full += 1;
            let _ = p.reply.send(Err(SendError::QueueFull {
                queued: self.queued_upper,
            }
            .into()));
        } else {
            self.parked.push_back(p);
        }
    }

    fn begin_leave(&mut self, waiter: Option<oneshot::Sender<Result<(), Error>>>) {
        let now = self.now();
        if self.leaving.is_none() {
            info!(me = %self.node.pid(), "leaving the cluster");
            let deadline = Instant::now()
                .checked_add(self.leave_timeout)
                .unwrap_or_else(Instant::now);
            self.leaving = Some(Leaving {
                deadline,
                waiters: Vec::new(),
            });
            self.node.leave(now);
        }
        if let (Some(leaving), Some(w)) = (&mut self.leaving, waiter) {
            leaving.waiters.push(w);
        }
    }

    /// Reads every datagram waiting on the unicast socket, or on the
    /// multicast one, up to the batch size.
    fn drain(&mut self, multicast: bool) -> Result<(), Error> {
        for _ in 0..self.recv_batch {
            let socket = match (&self.multicast, multicast) {
                (_, false) => &self.socket,
                (Some(s), true) => s,
                (None, true) => return Ok(()),
            };
            match socket.try_recv_from(&mut self.recv_buf) {
                Ok((_, from)) if multicast && from == self.local_addr => {
                    // Our own group datagram, looped back: the node has no
                    // use for it, so it is not even opened.
                    self.recv_errors_in_a_row = 0;
                    self.io.multicast_own_skipped += 1;
                }
                Ok((n, from)) => {
                    self.recv_errors_in_a_row = 0;
                    self.on_datagram(n, from);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return self.recv_error(e),
            }
        }
        Ok(())
    }

    fn recv_error(&mut self, e: io::Error) -> Result<(), Error> {
        self.io.recv_errors += 1;
        self.recv_errors_in_a_row += 1;
        if let Some(n) = self.logs.recv_error.hit(std::time::Instant::now()) {
            warn!(errors = n, error = %e, "UDP receive failed");
        }
        if self.recv_errors_in_a_row >= MAX_RECV_ERRORS {
            return Err(FatalError::Socket(e).into());
        }
        Ok(())
    }

    /// One datagram: opened (authenticated, decrypted, replay-checked)
    /// before the node decodes any of it.
    fn on_datagram(&mut self, len: usize, from: SocketAddr) {
        if super::faults::drops(self.faults.as_ref(), &from) {
            return;
        }
        self.io.datagrams_in += 1;
        self.io.bytes_in += len as u64;
        let now = self.now();
        let Some(datagram) = self.recv_buf.get(..len) else {
            return;
        };
        if let Err(e) = super::receive(
            &mut self.sealer,
            &mut self.node,
            &mut self.open_buf,
            now,
            from,
            datagram,
        ) {
            if let OpenError::Stale { sender, newest } = e {
                self.check_identity(sender, newest, from);
            }
            log_drop(&mut self.logs, &e, from);
        }
    }

    /// A datagram of an old incarnation is the normal leftover of a
    /// restart when it comes from the address of the newest one. From
    /// another address, while the newest is alive too, two processes carry
    /// one node id: the newer one took the older one's place in the group
    /// and the older one is fenced off for good, which nobody would see
    /// but in these logs.
    fn check_identity(&mut self, sender: crate::Pid, newest: u64, from: SocketAddr) {
        let newest_pid = crate::Pid::new(sender.node, newest);
        let Some(newest_addr) = self.node.address_of(newest_pid) else {
            return;
        };
        if newest_addr == from {
            return;
        }
        self.io.identity_conflicts += 1;
        if let Some(n) = self.logs.identity.hit(std::time::Instant::now()) {
            error!(
                node = %sender.node, older = %from, newer = %newest_addr, datagrams = n,
                "two live processes claim one node id: the one at {from} (incarnation {}) was replaced in the group by the one at {newest_addr} (incarnation {newest}) and is cut off; two daemons were given the same name or node_id: stop one and give it a name of its own",
                sender.incarnation
            );
        }
    }

    /// Drains the node: events (saving primary state changes first), then
    /// datagrams, then forwards events to the application. Deliveries are
    /// handed over before the datagrams go out, and the application gets
    /// to run first: what it sends in answer goes out with them, and its
    /// deliveries do not wait behind the sends. (The hub of a 16-node
    /// query round passes 15 answers on to 15 members as it delivers the
    /// last one; each member woken took a core before the querier saw its
    /// answers, and the next question went out in datagrams of its own.)
    async fn flush(&mut self) -> Result<(), Error> {
        self.take_events().await?;
        if !self.pending.is_empty() && self.events.is_some() {
            let before = self.pending.len();
            self.forward_events();
            if self.pending.len() < before {
                tokio::task::yield_now().await;
                self.take_commands(COMMAND_BATCH);
                self.take_events().await?;
            }
        }
        let now = self.now();
        match self.disseminate {
            None => {
                while let Some(transmit) = self.node.poll_transmit(now) {
                    self.send(transmit).await?;
                }
            }
            Some(group) => self.send_disseminating(now, group).await?,
        }
        self.drain_trace();
        self.write_log();
        self.forward_events();
        Ok(())
    }

    /// Both sockets are read whichever woke the driver, before the node's
    /// timers run: with dissemination, data frames come on the multicast
    /// socket and the acks that reveal them on the unicast one, and an ack
    /// handled alone made the node ask for frames still unread in the
    /// other buffer (a retransmission request, and a unicast resend to
    /// every receiver that asked).
    fn on_readable(&mut self, ready: io::Result<()>) -> Result<(), Error> {
        match ready {
            Ok(()) => {
                self.input_since_wait = true;
                self.drain(true)?;
                self.drain(false)
            }
            Err(e) => self.recv_error(e),
        }
    }

    /// Handles up to `max` commands already queued, without waiting.
    fn take_commands(&mut self, max: usize) {
        for _ in 0..max {
            match self.commands.try_recv() {
                Ok(c) => self.on_command(c),
                Err(_) => break,
            }
        }
    }

    /// Takes the node's events, saving primary state changes before
    /// anything else goes out, and writes the event log: a message that
    /// leaves this host must already be in it, or a kill -9 between the
    /// two makes the checker see a delivery nobody sent (found by the
    /// nemesis).
    async fn take_events(&mut self) -> Result<(), Error> {
        while let Some(event) = self.node.poll_event() {
            match event {
                Event::PersistPrimary(primary) => self.persist(primary).await?,
                Event::PeerRefused { addr, reason } => {
                    if let Some(n) = self.logs.refused.hit(std::time::Instant::now()) {
                        warn!(peer = %addr, refusals = n, %reason, "peer refused");
                    }
                    self.pending.push_back(Event::PeerRefused { addr, reason });
                }
                other => self.pending.push_back(other),
            }
        }
        self.drain_trace();
        self.write_log();
        Ok(())
    }

    fn forward_events(&mut self) {
        let Some(events) = &self.events else {
            self.io.events_discarded += self.pending.len() as u64;
            self.pending.clear();
            return;
        };
        while let Some(event) = self.pending.pop_front() {
            match events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.pending.push_front(event);
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    self.events_closed();
                    return;
                }
            }
        }
    }

    fn events_closed(&mut self) {
        debug!("the application dropped its event stream; events are discarded");
        self.events = None;
        self.io.events_discarded += self.pending.len() as u64;
        self.pending.clear();
    }

    /// Sends what the node has, once to the multicast `group` for every
    /// datagram addressed identically to every other view member. Per
    /// destination the order is kept: a datagram is sent at its first
    /// occurrence, and each destination's datagrams come in its order.
    async fn send_disseminating(&mut self, now: Time, group: SocketAddr) -> Result<(), Error> {
        let mut batch = Vec::new();
        while let Some(t) = self.node.poll_transmit(now) {
            batch.push(t);
        }
        let others = self.node.view().1.len().saturating_sub(1);
        if batch.len() < 2 || others < 2 {
            for t in batch {
                self.send(t).await?;
            }
            return Ok(());
        }
        let routes = route_batch(&batch, others);
        for (t, route) in batch.into_iter().zip(routes) {
            match route {
                Route::Group => {
                    self.io.multicast_out += 1;
                    self.send(Transmit {
                        dest: group,
                        payload: t.payload,
                    })
                    .await?;
                }
                Route::Copy => {}
                Route::Unicast => self.send(t).await?,
            }
        }
        Ok(())
    }

    async fn send(&mut self, transmit: Transmit) -> Result<(), Error> {
        self.sent_since_wait = true;
        if super::faults::drops(self.faults.as_ref(), &transmit.dest) {
            return Ok(());
        }
        // A frame for every member (heartbeat, ack, data) comes as the same
        // bytes once per member, one after the other: it is sealed once and
        // the same datagram goes to each, as one multicast datagram would;
        // every receiver keeps its own replay window and takes it once.
        // Never twice to one destination: a retransmission of the same
        // bytes needs a new packet number, or the replay check drops it.
        // (Sealing and opening took 9% of an idle 50-member daemon's CPU.)
        // (Arc's equality looks at the address first: the node hands out
        // one shared payload for every destination of the same frames.)
        let reuse = self.sealed_plain.as_ref().is_some_and(|(plain, sent)| {
            *plain == transmit.payload && !sent.contains(&transmit.dest)
        });
        if !reuse {
            self.sealed_plain = None;
            match self.sealer.seal(&transmit.payload, &mut self.seal_buf) {
                Ok(()) => self.sealed_plain = Some((transmit.payload, HashSet::new())),
                Err(e @ SealError::PacketNumbersExhausted) => {
                    return Err(FatalError::Seal(e).into())
                }
                Err(e) => {
                    // Only a datagram above the limit, which check_config rules
                    // out; drop it rather than stop.
                    warn!(error = %e, dest = %transmit.dest, "cannot seal a datagram; dropped");
                    return Ok(());
                }
            }
        }
        if let Some((_, sent)) = self.sealed_plain.as_mut() {
            sent.insert(transmit.dest);
        }
        match self.socket.send_to(&self.seal_buf, transmit.dest).await {
            Ok(n) => {
                self.io.datagrams_out += 1;
                self.io.bytes_out += n as u64;
            }
            Err(e) => {
                self.io.send_errors += 1;
                if let Some(n) = self.logs.send_error.hit(std::time::Instant::now()) {
                    if transmit.dest.ip().is_multicast()
                        && e.kind() == std::io::ErrorKind::NetworkUnreachable
                    {
                        // A host with no default route and no route for
                        // 224.0.0.0/4 has no interface for the group
                        // unless the configuration names one.
                        warn!(dest = %transmit.dest, errors = n, error = %e,
                            "UDP send to the multicast group failed: no route for the group; name the interface to use (MulticastConfig::interface, mgmtd's multicast.interface)");
                    } else {
                        warn!(dest = %transmit.dest, errors = n, error = %e, "UDP send failed");
                    }
                }
            }
        }
        Ok(())
    }

    /// Saves a primary state change on the blocking pool; nothing is sent
    /// until it is durable.
    async fn persist(&mut self, primary: PrimaryState) -> Result<(), Error> {
        self.stored.primary = primary;
        let state = self.stored.clone();
        let Some(mut storage) = self.storage.take() else {
            return Err(FatalError::Task("the storage was lost".into()).into());
        };
        let (storage, result) = tokio::task::spawn_blocking(move || {
            let result = storage.save(&state);
            (storage, result)
        })
        .await
        .map_err(|e| FatalError::Task(e.to_string()))?;
        self.storage = Some(storage);
        result.map_err(FatalError::Storage)?;
        self.io.state_saves += 1;
        Ok(())
    }
}

/// Logs a dropped datagram, at most once per cause per period.
fn log_drop(logs: &mut Logs, error: &OpenError, from: SocketAddr) {
    let now = std::time::Instant::now();
    let warn_level = |limiter: &mut Limiter, what: &str| {
        if let Some(n) = limiter.hit(now) {
            warn!(peer = %from, dropped = n, error = %error, "dropped {what}");
        }
    };
    match error {
        OpenError::Malformed { .. } => warn_level(&mut logs.malformed, "malformed datagrams"),
        OpenError::Version { .. } => {
            warn_level(&mut logs.version, "datagrams of another wire version")
        }
        OpenError::UnknownKey { .. } => warn_level(
            &mut logs.unknown_key,
            "datagrams sealed under an unknown cluster key",
        ),
        OpenError::Authentication => warn_level(
            &mut logs.authentication,
            "datagrams that failed authentication",
        ),
        OpenError::Replay { .. } => {
            if let Some(n) = logs.replay.hit(now) {
                info!(peer = %from, dropped = n, error = %error, "dropped replayed datagrams");
            }
        }
        OpenError::Stale { .. } => {
            if let Some(n) = logs.stale.hit(now) {
                debug!(peer = %from, dropped = n, error = %error, "dropped datagrams of an old incarnation");
            }
        }
    }
}

/// Where [`Driver::send_disseminating`] sends one datagram of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// The first of identical datagrams that go to every other member:
    /// once, to the multicast group.
    Group,
    /// A later copy of a [`Route::Group`] datagram: not sent.
    Copy,
    /// To its own destination.
    Unicast,
}

/// Bytes of each end of a datagram that pick its bucket in [`route_batch`].
const ROUTE_KEY_BYTES: usize = 64;

/// Routes each datagram of `batch`: identical payloads addressed to
/// `others` distinct destinations go to the group once, at their first
/// occurrence; the rest are unicast.
///
/// Datagrams are bucketed by their length and a few bytes of each end (the
/// node's headers differ there) and compared in full only within a bucket:
/// hashing whole payloads cost the origin of a 100 MiB siminst to 20 hosts
/// over a second and a half of SipHash (every 60 KB datagram hashed about
/// 40 times), more than sealing it.
fn route_batch(batch: &[Transmit], others: usize) -> Vec<Route> {
    type Key<'a> = (usize, &'a [u8], &'a [u8]);
    // One class per distinct payload: its first datagram, its destinations.
    let mut classes: Vec<(usize, Vec<SocketAddr>)> = Vec::new();
    let mut class_of = Vec::with_capacity(batch.len());
    let mut buckets: std::collections::HashMap<Key<'_>, Vec<usize>> =
        std::collections::HashMap::with_capacity(batch.len());
    for (i, t) in batch.iter().enumerate() {
        let p = t.payload.as_slice();
        let ends = p.len().min(ROUTE_KEY_BYTES);
        let key = (p.len(), &p[..ends], &p[p.len() - ends..]);
        let bucket = buckets.entry(key).or_default();
        let found = bucket
            .iter()
            .copied()
            .find(|&c| batch[classes[c].0].payload == t.payload);
        let c = match found {
            Some(c) => c,
            None => {
                classes.push((i, Vec::new()));
                bucket.push(classes.len() - 1);
                classes.len() - 1
            }
        };
        let dests = &mut classes[c].1;
        if !dests.contains(&t.dest) {
            dests.push(t.dest);
        }
        class_of.push(c);
    }
    class_of
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let (first, dests) = &classes[c];
            match (dests.len() == others, *first == i) {
                (true, true) => Route::Group,
                (true, false) => Route::Copy,
                (false, _) => Route::Unicast,
            }
        })
        .collect()
}

/// Whether a read of `socket` would return something now: a datagram, or
/// an error that the read reports (either way the driver should read).
/// With `own`, this node's own group datagrams at the head of the queue
/// (multicast loopback, which follows every send at once) are taken off
/// and counted, as [`Driver::drain`] would, rather than ending the poll.
fn has_input(
    socket: &UdpSocket,
    probe: &mut [std::mem::MaybeUninit<u8>],
    mut own: Option<(SocketAddr, &mut u64)>,
) -> bool {
    let socket = socket2::SockRef::from(socket);
    loop {
        match socket.peek_from(probe) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Ok((_, from)) => match own.as_mut() {
                Some((me, skipped)) if from.as_socket() == Some(*me) => {
                    // Truncated into the probe: it is discarded unread.
                    if socket.recv(probe).is_err() {
                        return true;
                    }
                    **skipped += 1;
                }
                _ => return true,
            },
            Err(_) => return true,
        }
    }
}

#[cfg(test)]
mod route_tests {
    use super::{route_batch, Route};
    use crate::Transmit;
    use std::net::SocketAddr;

    fn t(port: u16, payload: &[u8]) -> Transmit {
        Transmit {
            dest: SocketAddr::from(([127, 0, 0, 1], port)),
            payload: std::sync::Arc::new(payload.to_vec()),
        }
    }

    #[test]
    fn identical_payloads_to_every_member_go_to_the_group_once() {
        let big_a = [vec![1u8; 200], vec![7u8; 1000], vec![1u8; 200]].concat();
        // Same length and ends as `big_a`, different middle: its own class.
        let big_b = [vec![1u8; 200], vec![8u8; 1000], vec![1u8; 200]].concat();
        let batch = vec![
            t(1, &big_a),
            t(1, b"ack"),
            t(2, &big_a),
            t(1, &big_b),
            t(3, &big_a),
            t(2, &big_b),
            t(2, b"ack"),
        ];
        use Route::*;
        assert_eq!(
            route_batch(&batch, 3),
            [Group, Unicast, Copy, Unicast, Copy, Unicast, Unicast]
        );
        // Two other members: `big_b` and the ack reach both.
        let batch2 = vec![t(1, b"x"), t(2, b"x"), t(1, b"x"), t(2, b"y")];
        assert_eq!(route_batch(&batch2, 2), [Group, Copy, Copy, Unicast]);
    }
}
