//! The server's logic over a [`Group`]: the `mgmt` group's commands, their
//! execution at most once per job id, and the answers monitors follow.
//!
//! # Tasks
//!
//! - The **core** ([`Server::start`]) owns all state: M, the working
//!   directory, the job store and audit log, the running commands and who
//!   follows which job. It takes the group's events in delivery order and the
//!   calls of connection handlers and finished commands, one at a time, so
//!   that everything a server does happens in the agreed order of the
//!   group's messages: a `chdir` delivered before a `simex` applies to it,
//!   everywhere.
//! - The **sender** multicasts what the core hands it, in order, so that the
//!   core never waits on the group (its queue is bounded; a full queue sheds
//!   streamed output lines first and says so in the log).
//! - One **command task** per running `simex` ([`crate::exec::run`]).
//! - One task per monitor connection ([`handler`]), which talks to the core
//!   through a [`ServerHandle`].
//!
//! # At most once
//!
//! A target runs a job when it first delivers the job's command. Before it
//! starts anything it appends the job to its store (without an outcome), and
//! it checks the store and an in-memory window of recent ids first: a
//! command delivered again (a monitor retrying, the same request through
//! another server, a merge) is never run again. The target answers such a
//! duplicate with the outcome it has, so a retried request still gets a full
//! report. A job found without an outcome at startup was interrupted by a
//! stop of the server: it is reported as interrupted and never run again.
//! The window is the job store's bounds (1000 jobs) plus the last
//! [`SEEN_WINDOW`] ids seen since the start.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flotilla_client::message::{
    Accepted, ErrorKind, JobSummary, Member, MembersReply, MAX_LINE, MAX_RELAYED_OUTPUT,
};
use flotilla_client::outcome::ChdirOutcome;
use flotilla_client::{resolve_targets, JobId, Outcome, Stream, Targets};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::exec::{self, ExecOptions, OutputLine};
use crate::group::{Group, GroupEvent, MemberId, Order};
use crate::jobs::{
    AuditEntry, AuditLog, JobRecord, JobStore, JobStoreLimits, JobsError, OutcomeSummary,
};
use crate::status;
use crate::wire::{self, Announce, Command, GroupMessage, Op, Query, Reply, MAX_JOB_MATCHES};

pub mod handler;

/// How many job ids the server remembers beyond its job store.
pub const SEEN_WINDOW: usize = 65_536;
/// The file in the data directory that keeps the working directory.
pub const CWD_FILE: &str = "cwd";
/// The most lines of one job's output a target multicasts (`--stream`);
/// the rest is in its outcome.
pub const MAX_STREAMED_LINES: usize = 10_000;
/// How long past a `simex` timeout the server waits for outcomes: the kill
/// grace, the time to reap a killed group and the trip back.
const DEADLINE_MARGIN: Duration = Duration::from_secs(5);
/// How long a `chdir` or `exit` may take to be reported.
const QUICK_DEADLINE: Duration = Duration::from_secs(10);
/// How long a clean leave may take before the server stops anyway.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(6);
/// How long a `siminst --remove` may take to be reported (its uninstall
/// script has the package's install timeout, at most this).
const REMOVE_DEADLINE: Duration = Duration::from_secs(600);

/// The server's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Commands running at once on this host; more are refused with an
    /// outcome that says so.
    pub max_running: usize,
    /// Jobs and queries followed at once by this server's monitors.
    pub max_followed: usize,
    /// Messages waiting to be multicast.
    pub outbox: usize,
    /// Calls waiting for the core.
    pub calls: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_running: 256,
            max_followed: 1024,
            outbox: 8192,
            calls: 1024,
        }
    }
}

/// What the server is and where it keeps its state.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The host's name in the fleet.
    pub name: String,
    /// Its attributes.
    pub attributes: BTreeMap<String, String>,
    /// The data directory (must exist).
    pub data_dir: PathBuf,
    /// How commands run.
    pub exec: ExecOptions,
    /// Bounds.
    pub limits: Limits,
    /// The job store's bounds.
    pub store: JobStoreLimits,
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The job store could not be opened or updated.
    #[error(transparent)]
    Jobs(#[from] JobsError),
    /// siminst's database or directories could not be opened.
    #[error(transparent)]
    Siminst(#[from] crate::siminst::SiminstError),
    /// The saved working directory could not be read.
    #[error("cannot read the saved working directory {}: {cause}", path.display())]
    Cwd {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

/// Why the core refused a monitor's request: what the monitor is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Its kind.
    pub kind: ErrorKind,
    /// For people.
    pub message: String,
}

fn refusal(kind: ErrorKind, message: impl Into<String>) -> Refusal {
    Refusal {
        kind,
        message: message.into(),
    }
}

/// What a handler learns about a job it follows.
#[derive(Debug, Clone)]
pub enum Update {
    /// M changed.
    View(Vec<String>),
    /// A target's outcome.
    Result(String, Outcome),
    /// A target's output line.
    Output(String, Stream, String),
}

/// A job the core accepted for a handler.
#[derive(Debug)]
pub struct Started {
    /// What to tell the monitor first.
    pub accepted: Accepted,
    /// Views and results.
    pub control: mpsc::Receiver<Update>,
    /// Streamed output lines (shed when the monitor is slow).
    pub output: mpsc::Receiver<Update>,
}

/// A query the core multicast for a handler.
#[derive(Debug)]
pub struct QueryStarted {
    /// M when it was sent: who should answer.
    pub members: Vec<String>,
    /// The answers, by host.
    pub replies: mpsc::Receiver<(String, Reply)>,
}

/// A command a monitor asked for.
#[derive(Debug, Clone)]
pub struct StartRequest {
    /// Its job id.
    pub job: JobId,
    /// Its targets.
    pub targets: Targets,
    /// What to do; a `simex` without a timeout gets the server's default.
    pub op: RequestedOp,
    /// Who asked.
    pub client: String,
}

/// A command as a monitor asked for it.
#[derive(Debug, Clone)]
pub enum RequestedOp {
    /// `simex`.
    Simex {
        /// The command line.
        command: String,
        /// Its timeout, or the default.
        timeout: Option<Duration>,
        /// Whether to stream output.
        stream: bool,
    },
    /// `chdir`.
    Chdir {
        /// The directory.
        dir: String,
    },
    /// `exit`.
    Exit,
    /// `siminst`: the advertisement, and the package spooled at the origin.
    Siminst {
        /// What is advertised.
        ad: Box<crate::siminst::Advertisement>,
        /// The spooled package file.
        spool: PathBuf,
    },
    /// `siminst --remove`.
    Remove {
        /// The package.
        name: String,
    },
}

enum Call {
    Start(StartRequest, oneshot::Sender<Result<Started, Refusal>>),
    Query(Query, oneshot::Sender<Result<QueryStarted, Refusal>>),
    Members(oneshot::Sender<Result<MembersReply, Refusal>>),
    Shutdown,
}

enum Internal {
    Line {
        job: JobId,
        line: OutputLine,
    },
    Done {
        job: JobId,
        outcome: exec::ExecOutcome,
    },
    Package {
        job: JobId,
        outcome: flotilla_client::PackageOutcome,
    },
}

enum Outgoing {
    Message(Order, Vec<u8>),
    Leave,
}

/// How connection handlers reach the core. Cheap to clone.
#[derive(Clone)]
pub struct ServerHandle {
    calls: mpsc::Sender<Call>,
    stopped: watch::Receiver<bool>,
    data_dir: PathBuf,
}

impl ServerHandle {
    /// The server's data directory (where siminst spools uploads).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, Refusal>>) -> Call,
    ) -> Result<T, Refusal> {
        let gone = || refusal(ErrorKind::ShuttingDown, "the server is shutting down");
        let (tx, rx) = oneshot::channel();
        self.calls.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Starts a command: multicasts it and follows it.
    pub async fn start(&self, request: StartRequest) -> Result<Started, Refusal> {
        self.call(|tx| Call::Start(request, tx)).await
    }

    /// Asks every server in M.
    pub async fn query(&self, query: Query) -> Result<QueryStarted, Refusal> {
        self.call(|tx| Call::Query(query, tx)).await
    }

    /// M with each member's details.
    pub async fn members(&self) -> Result<MembersReply, Refusal> {
        self.call(Call::Members).await
    }

    /// Asks the server to leave the group and stop (SIGTERM, SIGINT).
    pub async fn shutdown(&self) {
        let _ = self.calls.send(Call::Shutdown).await;
    }

    /// Waits until the core has stopped.
    pub async fn stopped(&self) {
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|s| *s).await;
    }
}

/// A member as announced.
#[derive(Debug, Clone)]
struct Known {
    announce: Announce,
}

struct Follower {
    control: mpsc::Sender<Update>,
    output: mpsc::Sender<Update>,
}

/// The server. See the [module documentation](self).
pub struct Server<G: Group> {
    group: std::sync::Arc<G>,
    me: MemberId,
    config: ServerConfig,
    started: Instant,
    started_at: SystemTime,
    view_id: Option<String>,
    view: Vec<MemberId>,
    known: BTreeMap<MemberId, Known>,
    since: BTreeMap<MemberId, SystemTime>,
    m: Vec<String>,
    cwd: PathBuf,
    store: JobStore,
    audit: AuditLog,
    seen: HashSet<JobId>,
    seen_order: VecDeque<JobId>,
    running: HashMap<JobId, JoinHandle<()>>,
    streamed: HashMap<JobId, usize>,
    followers: HashMap<JobId, Vec<Follower>>,
    queries: HashMap<u64, mpsc::Sender<(String, Reply)>>,
    next_query: u64,
    outbox: mpsc::Sender<Outgoing>,
    internal_tx: mpsc::Sender<Internal>,
    leaving: Option<Instant>,
    shed: u64,
    siminst: crate::siminst::Siminst,
}

impl<G: Group> Server<G> {
    /// Opens the server's state in the data directory and starts its tasks
    /// on the current tokio runtime. Returns the handle for connection
    /// handlers, and the core's task, which ends once the server has left
    /// the group.
    pub fn start(
        group: G,
        events: mpsc::Receiver<GroupEvent>,
        config: ServerConfig,
    ) -> Result<(ServerHandle, JoinHandle<()>), ServerError> {
        let mut store = JobStore::open(&config.data_dir, config.store)?;
        let interrupted = store.interrupt_unfinished()?;
        if !interrupted.is_empty() {
            tracing::warn!(
                jobs = interrupted.len(),
                "jobs interrupted by the previous stop are recorded as interrupted"
            );
        }
        let cwd = load_cwd(&config.data_dir)?;
        let audit = AuditLog::new(&config.data_dir);
        let group = std::sync::Arc::new(group);
        let (outbox, outbox_rx) = mpsc::channel(config.limits.outbox);
        let (calls_tx, calls_rx) = mpsc::channel(config.limits.calls);
        let (internal_tx, internal_rx) = mpsc::channel(config.limits.calls);
        let (stopped_tx, stopped_rx) = watch::channel(false);
        let (package_tx, mut package_rx) = mpsc::channel(config.limits.calls);
        let siminst = crate::siminst::Siminst::open(&config.data_dir, package_tx)?;
        {
            let internal = internal_tx.clone();
            tokio::spawn(async move {
                while let Some((job, outcome)) = package_rx.recv().await {
                    if internal
                        .send(Internal::Package { job, outcome })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
        let data_dir = config.data_dir.clone();
        tokio::spawn(sender(group.clone(), outbox_rx));
        let server = Server {
            me: group.me(),
            group,
            config,
            started: Instant::now(),
            started_at: SystemTime::now(),
            view_id: None,
            view: Vec::new(),
            known: BTreeMap::new(),
            since: BTreeMap::new(),
            m: Vec::new(),
            cwd,
            store,
            audit,
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            running: HashMap::new(),
            streamed: HashMap::new(),
            followers: HashMap::new(),
            queries: HashMap::new(),
            next_query: 0,
            outbox,
            internal_tx,
            leaving: None,
            shed: 0,
            siminst,
        };
        let core = tokio::spawn(async move {
            server.run(events, calls_rx, internal_rx).await;
            let _ = stopped_tx.send(true);
        });
        Ok((
            ServerHandle {
                calls: calls_tx,
                stopped: stopped_rx,
                data_dir,
            },
            core,
        ))
    }

    async fn run(
        mut self,
        mut events: mpsc::Receiver<GroupEvent>,
        mut calls: mpsc::Receiver<Call>,
        mut internal: mpsc::Receiver<Internal>,
    ) {
        tracing::info!(name = %self.config.name, member = %self.me, cwd = %self.cwd.display(), "server core running");
        loop {
            let leave_deadline = self.leaving.map(|at| at + LEAVE_TIMEOUT);
            tokio::select! {
                event = events.recv() => match event {
                    Some(GroupEvent::Left) | None => {
                        tracing::info!("left the group");
                        break;
                    }
                    Some(GroupEvent::View { id, members }) => self.on_view(id, members),
                    Some(GroupEvent::Deliver { from, payload }) => self.on_deliver(from, &payload),
                },
                Some(call) = calls.recv() => self.on_call(call),
                Some(message) = internal.recv() => self.on_internal(message),
                () = sleep_until_opt(leave_deadline) => {
                    tracing::warn!("the clean leave did not complete in {LEAVE_TIMEOUT:?}; stopping anyway");
                    break;
                }
            }
        }
        // Commands still running are killed with their process groups
        // (dropping their tasks does it); their jobs stay without an outcome
        // in the store and are reported as interrupted after a restart.
        for (job, task) in self.running.drain() {
            tracing::warn!(%job, "stopping with the command still running: killed");
            task.abort();
        }
        if let Err(e) = self.store.sync() {
            tracing::warn!("cannot sync the job store: {e}");
        }
    }

    // ----- the group -----

    fn on_view(&mut self, id: String, members: Vec<MemberId>) {
        let now = SystemTime::now();
        let members: Vec<MemberId> = members
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        self.since.retain(|m, _| members.contains(m));
        for m in &members {
            self.since.entry(*m).or_insert(now);
        }
        // Keep what we know of members only while they are in the view: a
        // server that comes back announces itself again.
        self.known.retain(|m, _| members.contains(m));
        tracing::info!(view = %id, members = members.len(), "new view of the mgmt group");
        // A member that was not in the previous view knows nobody yet: every
        // member announces itself again. A view that only lost members
        // needs no announcement.
        let joined = members.iter().any(|m| !self.view.contains(m));
        self.view_id = Some(id);
        self.view = members;
        if !joined {
            self.update_m();
            return;
        }
        let announce = GroupMessage::Announce(Announce {
            name: self.config.name.clone(),
            attributes: self.config.attributes.clone(),
            address: self.group.address(),
            started_at: self.started_at,
        });
        self.send(&announce);
        self.update_m();
    }

    fn update_m(&mut self) {
        let m: Vec<String> = self
            .view
            .iter()
            .filter_map(|member| self.known.get(member))
            .map(|k| k.announce.name.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if m == self.m {
            return;
        }
        self.m = m;
        self.siminst.on_members(&self.m);
        let m = self.m.clone();
        self.followers.retain(|_, followers| {
            followers.retain(|f| match f.control.try_send(Update::View(m.clone())) {
                Ok(()) => true,
                // A monitor this far behind misses a view; a later one
                // says the same or more.
                Err(mpsc::error::TrySendError::Full(_)) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            !followers.is_empty()
        });
    }

    fn on_deliver(&mut self, from: MemberId, payload: &[u8]) {
        let message = match wire::decode(payload) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(%from, "dropped a group message: {e}");
                return;
            }
        };
        match message {
            GroupMessage::Announce(announce) => {
                if !self.view.contains(&from) {
                    return;
                }
                let clash = self
                    .known
                    .iter()
                    .any(|(m, k)| *m != from && k.announce.name == announce.name);
                if clash {
                    tracing::warn!(%from, name = %announce.name, "two members announce the same host name; check the configurations");
                }
                self.known.insert(from, Known { announce });
                self.update_m();
            }
            GroupMessage::Command(command) => self.on_command(command),
            GroupMessage::Result { job, host, outcome } => {
                self.siminst.on_result(job, &host);
                self.notify_followers(job, Update::Result(host, outcome), false)
            }
            GroupMessage::PackageHave { job, host, missing } => {
                self.siminst.on_have(job, host, missing)
            }
            GroupMessage::Output {
                job,
                host,
                stream,
                line,
            } => self.notify_followers(job, Update::Output(host, stream, line), true),
            GroupMessage::Query { id, origin, query } => self.on_query(id, origin, query),
            GroupMessage::Reply {
                id,
                origin,
                host,
                reply,
            } => {
                if origin != self.me {
                    return;
                }
                if let Some(tx) = self.queries.get(&id) {
                    if tx.try_send((host, *reply)).is_err() {
                        self.queries.remove(&id);
                    }
                }
            }
        }
    }

    fn notify_followers(&mut self, job: JobId, update: Update, is_output: bool) {
        let Some(followers) = self.followers.get_mut(&job) else {
            return;
        };
        followers.retain(|f| {
            let tx = if is_output { &f.output } else { &f.control };
            match tx.try_send(update.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Output is shed; a control queue is sized for every
                    // target's result, so it is full only if the handler
                    // is stuck, and it then misses this result.
                    tracing::debug!(%job, is_output, "a monitor is not keeping up; update dropped");
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if followers.is_empty() {
            self.followers.remove(&job);
        }
    }

    fn on_command(&mut self, command: Command) {
        let job = command.job;
        if !command.targets.contains(&self.config.name) {
            return;
        }
        if let Some(record) = self.store.get(&job) {
            // A duplicate: answer with what we have, never run it again.
            tracing::info!(%job, "duplicate command ignored (at most once)");
            if let Some(outcome) = record.outcome.clone() {
                self.send_result(job, outcome);
            }
            return;
        }
        if self.running.contains_key(&job) || self.seen.contains(&job) {
            tracing::info!(%job, "duplicate command ignored (at most once)");
            return;
        }
        self.remember(job);
        let record = JobRecord {
            id: job,
            accepted_at: SystemTime::now(),
            client: command.client.clone(),
            command: command.op.describe(),
            targets: command.targets.clone(),
            outcome: None,
        };
        // The job is on file before anything runs: a restart then reports
        // it interrupted rather than running it again.
        if let Err(e) = self.store.append(record) {
            tracing::error!(%job, "cannot record the job; not running it: {e}");
            let outcome = Outcome::Exec(exec::ExecOutcome::spawn_failed(
                format!("the server cannot record the job: {e}"),
                Duration::ZERO,
            ));
            self.send_result(job, outcome);
            return;
        }
        tracing::info!(%job, client = %command.client, command = %command.op.describe(), "command accepted");
        let from_spool = command.origin == self.me;
        match command.op {
            Op::Simex {
                command: line,
                timeout,
                stream,
            } => self.spawn_simex(job, line, timeout, stream),
            Op::Chdir { dir } => {
                let outcome = self.chdir(&dir);
                self.finish(job, Outcome::Chdir(outcome));
            }
            Op::Exit => {
                self.finish(job, Outcome::Exit);
                self.begin_leave();
            }
            Op::Siminst(ad) => {
                let immediate = self.siminst.on_command(
                    self.group.clone(),
                    job,
                    *ad,
                    from_spool,
                    &self.config.name,
                    &self.config.attributes,
                );
                if let Some(outcome) = immediate {
                    self.finish(job, Outcome::Package(outcome));
                }
            }
            Op::Remove { name } => self.siminst.remove(job, name),
        }
    }

    fn remember(&mut self, job: JobId) {
        if self.seen.insert(job) {
            self.seen_order.push_back(job);
            if self.seen_order.len() > SEEN_WINDOW {
                if let Some(old) = self.seen_order.pop_front() {
                    self.seen.remove(&old);
                }
            }
        }
    }

    fn spawn_simex(&mut self, job: JobId, command: String, timeout: Duration, stream: bool) {
        if self.running.len() >= self.config.limits.max_running {
            tracing::warn!(%job, running = self.running.len(), "too many commands running; refusing one");
            let outcome = exec::ExecOutcome::spawn_failed(
                format!(
                    "this host is running {} commands already (the limit); not started",
                    self.running.len()
                ),
                Duration::ZERO,
            );
            self.finish(job, Outcome::Exec(outcome));
            return;
        }
        let options = ExecOptions {
            timeout,
            ..self.config.exec.clone()
        };
        let cwd = self.cwd.clone();
        let internal = self.internal_tx.clone();
        let task = tokio::spawn(async move {
            let (line_tx, mut line_rx) = if stream {
                let (tx, rx) = mpsc::channel(256);
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            let forward = {
                let internal = internal.clone();
                async move {
                    if let Some(rx) = line_rx.as_mut() {
                        while let Some(line) = rx.recv().await {
                            if internal.send(Internal::Line { job, line }).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            };
            let (outcome, ()) = tokio::join!(exec::run(&command, &cwd, &options, line_tx), forward);
            let _ = internal.send(Internal::Done { job, outcome }).await;
        });
        self.running.insert(job, task);
    }

    fn chdir(&mut self, dir: &str) -> ChdirOutcome {
        match exec::resolve_dir(&self.cwd, Path::new(dir)) {
            Ok(new) => match save_cwd(&self.config.data_dir, &new) {
                Ok(()) => {
                    tracing::info!(cwd = %new.display(), "working directory changed");
                    self.cwd = new;
                    ChdirOutcome {
                        dir: self.cwd.display().to_string(),
                        error: None,
                    }
                }
                Err(e) => ChdirOutcome {
                    dir: self.cwd.display().to_string(),
                    error: Some(format!("cannot save the working directory: {e}")),
                },
            },
            Err(e) => ChdirOutcome {
                dir: self.cwd.display().to_string(),
                error: Some(e.to_string()),
            },
        }
    }

    /// Records a job's outcome here, audits it and multicasts it.
    fn finish(&mut self, job: JobId, outcome: Outcome) {
        let record = self.store.get(&job).cloned();
        if let Some(mut record) = record {
            record.outcome = Some(outcome.clone());
            let entry = AuditEntry {
                time: record.accepted_at,
                job,
                client: &record.client,
                command: &record.command,
                outcome: OutcomeSummary::from(&outcome),
            };
            if let Err(e) = self.audit.append(&entry) {
                tracing::error!(%job, "cannot write the audit log: {e}");
            }
            if let Err(e) = self.store.append(record) {
                tracing::error!(%job, "cannot record the job's outcome: {e}");
            }
        }
        self.send_result(job, outcome);
    }

    fn send_result(&mut self, job: JobId, mut outcome: Outcome) {
        outcome.trim(MAX_RELAYED_OUTPUT);
        let message = GroupMessage::Result {
            job,
            host: self.config.name.clone(),
            outcome,
        };
        self.send(&message);
    }

    fn begin_leave(&mut self) {
        if self.leaving.is_some() {
            return;
        }
        tracing::info!("leaving the mgmt group");
        self.leaving = Some(Instant::now());
        // After everything queued before it: the exit's own result goes
        // out first.
        if self.outbox.try_send(Outgoing::Leave).is_err() {
            tracing::warn!("the outbox is full or closed; stopping without a clean leave");
            let now = Instant::now();
            self.leaving = Some(now.checked_sub(LEAVE_TIMEOUT).unwrap_or(now));
        }
    }

    fn send(&mut self, message: &GroupMessage) {
        let payload = match wire::encode(message) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        // Commands need the total order (with each other and with the
        // views), and so do queries: a `monitor job` asked after a command
        // was accepted must reach every host after that command, or a host
        // would answer "no record" for a job it is about to run. Results,
        // output, answers and announcements only need their sender's order.
        let order = match message {
            GroupMessage::Command(_) | GroupMessage::Query { .. } => Order::Agreed,
            _ => Order::Fifo,
        };
        if let Err(e) = self.outbox.try_send(Outgoing::Message(order, payload)) {
            self.shed += 1;
            tracing::warn!(
                shed = self.shed,
                "the group is not keeping up; a message was dropped: {e}"
            );
        }
    }

    fn on_query(&mut self, id: u64, origin: MemberId, query: Query) {
        let reply = match query {
            Query::Status => {
                let mut status = status::host_status(&status::StatusInput {
                    name: &self.config.name,
                    me: self.me,
                    started: self.started,
                    data_dir: &self.config.data_dir,
                    view_id: self.view_id.as_deref().unwrap_or(""),
                    members: &self.m,
                    cwd: &self.cwd,
                });
                status.packages = self.siminst.installed();
                Reply::Status(Box::new(status))
            }
            Query::Job { prefix } => Reply::Job(
                self.store
                    .recent()
                    .filter(|r| r.id.has_prefix(&prefix))
                    .take(MAX_JOB_MATCHES)
                    .cloned()
                    .map(|mut r| {
                        if let Some(outcome) = r.outcome.as_mut() {
                            outcome.trim(MAX_RELAYED_OUTPUT);
                        }
                        r
                    })
                    .collect(),
            ),
            Query::Jobs { limit } => Reply::Jobs(
                self.store
                    .recent()
                    .take(limit as usize)
                    .map(|r| JobSummary {
                        job: r.id,
                        accepted_at: r.accepted_at,
                        command: r.command.clone(),
                        targets: u32::try_from(r.targets.len()).unwrap_or(u32::MAX),
                        ok: u32::from(r.outcome.as_ref().is_some_and(Outcome::succeeded)),
                        failed: u32::from(r.outcome.as_ref().is_some_and(|o| !o.succeeded())),
                        running: u32::from(r.outcome.is_none()),
                    })
                    .collect(),
            ),
        };
        let message = GroupMessage::Reply {
            id,
            origin,
            host: self.config.name.clone(),
            reply: Box::new(reply),
        };
        self.send(&message);
    }

    // ----- calls from handlers and command tasks -----

    fn on_call(&mut self, call: Call) {
        match call {
            Call::Start(request, reply) => {
                let _ = reply.send(self.start_job(request));
            }
            Call::Query(query, reply) => {
                let _ = reply.send(self.start_query(query));
            }
            Call::Members(reply) => {
                let _ = reply.send(self.members());
            }
            Call::Shutdown => self.begin_leave(),
        }
    }

    fn ready(&self) -> Result<(), Refusal> {
        if self.leaving.is_some() {
            return Err(refusal(
                ErrorKind::ShuttingDown,
                "the server is leaving the group",
            ));
        }
        if self.m.is_empty() {
            return Err(refusal(
                ErrorKind::NotReady,
                "the server has not joined the mgmt group yet; try again in a moment",
            ));
        }
        Ok(())
    }

    fn prune(&mut self) {
        self.followers.retain(|_, fs| {
            fs.retain(|f| !f.control.is_closed());
            !fs.is_empty()
        });
        self.queries.retain(|_, tx| !tx.is_closed());
    }

    fn start_job(&mut self, request: StartRequest) -> Result<Started, Refusal> {
        let checked = self.ready().and_then(|()| {
            self.prune();
            if self.followers.len() + self.queries.len() >= self.config.limits.max_followed {
                return Err(refusal(
                    ErrorKind::Busy,
                    "too many jobs followed at once; try again later",
                ));
            }
            Ok(())
        });
        if let Err(refused) = checked {
            if let RequestedOp::Siminst { spool, .. } = &request.op {
                let _ = std::fs::remove_file(spool);
            }
            return Err(refused);
        }
        let attributes: Vec<(&str, &BTreeMap<String, String>)> = self
            .view
            .iter()
            .filter_map(|m| self.known.get(m))
            .map(|k| (k.announce.name.as_str(), &k.announce.attributes))
            .collect();
        let targets = match (&request.op, &request.targets) {
            (RequestedOp::Chdir { .. }, _) => Targets::All,
            (_, targets) => targets.clone(),
        };
        let resolution = resolve_targets(&targets, attributes);
        let mut origin = None;
        let (op, deadline) = match request.op {
            RequestedOp::Simex {
                command,
                timeout,
                stream,
            } => {
                let timeout = timeout.unwrap_or(self.config.exec.timeout);
                let deadline = timeout
                    .saturating_add(self.config.exec.kill_grace)
                    .saturating_add(DEADLINE_MARGIN);
                (
                    Op::Simex {
                        command,
                        timeout,
                        stream,
                    },
                    deadline,
                )
            }
            RequestedOp::Chdir { dir } => (Op::Chdir { dir }, QUICK_DEADLINE),
            RequestedOp::Exit => (Op::Exit, QUICK_DEADLINE),
            RequestedOp::Siminst { ad, spool } => {
                let deadline = ad.deadline();
                origin = Some(((*ad).clone(), spool));
                (Op::Siminst(ad), deadline)
            }
            RequestedOp::Remove { name } => {
                (Op::Remove { name }, DEADLINE_MARGIN + REMOVE_DEADLINE)
            }
        };
        let accepted = Accepted {
            job: request.job,
            command: op.describe(),
            targets: resolution.targets.clone(),
            unknown_hosts: resolution.unknown,
            members: self.m.clone(),
            deadline,
        };
        let (control_tx, control) = mpsc::channel(resolution.targets.len() + 256);
        let (output_tx, output) = mpsc::channel(1024);
        if !resolution.targets.is_empty() {
            self.followers
                .entry(request.job)
                .or_default()
                .push(Follower {
                    control: control_tx,
                    output: output_tx,
                });
            let command = GroupMessage::Command(Command {
                job: request.job,
                origin: self.me,
                client: request.client,
                targets: resolution.targets.clone(),
                op,
            });
            self.send(&command);
            if let Some((ad, spool)) = origin.take() {
                self.siminst.start_origin(
                    self.group.clone(),
                    request.job,
                    ad,
                    spool,
                    resolution.targets,
                    self.m.clone(),
                    self.config.name.clone(),
                );
            }
        }
        if let Some((_, spool)) = origin {
            // Nobody to send it to.
            let _ = std::fs::remove_file(spool);
        }
        Ok(Started {
            accepted,
            control,
            output,
        })
    }

    fn start_query(&mut self, query: Query) -> Result<QueryStarted, Refusal> {
        self.ready()?;
        self.prune();
        if self.followers.len() + self.queries.len() >= self.config.limits.max_followed {
            return Err(refusal(
                ErrorKind::Busy,
                "too many requests at once; try again later",
            ));
        }
        self.next_query += 1;
        let id = self.next_query;
        let (tx, replies) = mpsc::channel(self.m.len() + 16);
        self.queries.insert(id, tx);
        self.send(&GroupMessage::Query {
            id,
            origin: self.me,
            query,
        });
        Ok(QueryStarted {
            members: self.m.clone(),
            replies,
        })
    }

    fn members(&self) -> Result<MembersReply, Refusal> {
        self.ready()?;
        let mut members: Vec<Member> = self
            .view
            .iter()
            .filter_map(|m| {
                self.known.get(m).map(|k| Member {
                    host: k.announce.name.clone(),
                    node: m.node,
                    incarnation: m.incarnation,
                    address: k.announce.address.clone(),
                    attributes: k.announce.attributes.clone(),
                    since: self.since.get(m).copied().unwrap_or(SystemTime::UNIX_EPOCH),
                })
            })
            .collect();
        members.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(MembersReply {
            view: self.view_id.clone().unwrap_or_default(),
            members,
        })
    }

    fn on_internal(&mut self, message: Internal) {
        match message {
            Internal::Line { job, line } => {
                let count = self.streamed.entry(job).or_insert(0);
                *count += 1;
                if *count > MAX_STREAMED_LINES {
                    if *count == MAX_STREAMED_LINES + 1 {
                        tracing::info!(%job, "more than {MAX_STREAMED_LINES} lines: no more are streamed");
                    }
                    return;
                }
                let mut text = line.text;
                truncate_utf8(&mut text, MAX_LINE);
                let message = GroupMessage::Output {
                    job,
                    host: self.config.name.clone(),
                    stream: line.stream,
                    line: text,
                };
                self.send(&message);
            }
            Internal::Done { job, outcome } => {
                self.running.remove(&job);
                self.streamed.remove(&job);
                tracing::info!(%job, status = ?outcome.status, duration = ?outcome.duration, "command ended");
                self.finish(job, Outcome::Exec(outcome));
            }
            Internal::Package { job, outcome } => {
                self.finish(job, Outcome::Package(outcome));
            }
        }
    }
}

fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn sender<G: Group>(group: std::sync::Arc<G>, mut outbox: mpsc::Receiver<Outgoing>) {
    while let Some(outgoing) = outbox.recv().await {
        match outgoing {
            Outgoing::Message(order, payload) => {
                if let Err(e) = group.multicast(order, payload).await {
                    tracing::warn!("multicast failed: {e}");
                }
            }
            Outgoing::Leave => {
                if let Err(e) = group.leave().await {
                    tracing::warn!("leaving the group: {e}");
                }
                return;
            }
        }
    }
}

/// The saved working directory, or `/` when none was saved. A saved
/// directory that no longer exists is kept: commands then report it.
fn load_cwd(data_dir: &Path) -> Result<PathBuf, ServerError> {
    let path = data_dir.join(CWD_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            use std::os::unix::ffi::OsStringExt;
            let mut bytes = bytes;
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
            }
            let dir = PathBuf::from(std::ffi::OsString::from_vec(bytes));
            if dir.is_absolute() {
                Ok(dir)
            } else {
                tracing::warn!(path = %path.display(), "the saved working directory is not absolute; using /");
                Ok(PathBuf::from("/"))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PathBuf::from("/")),
        Err(cause) => Err(ServerError::Cwd { path, cause }),
    }
}

/// Saves the working directory: temporary file, sync, rename.
fn save_cwd(data_dir: &Path, dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    let tmp = data_dir.join(format!("{CWD_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(dir.as_os_str().as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, data_dir.join(CWD_FILE))
}

#[cfg(test)]
mod tests;
