//! [`MapsServer`]: one server's part of the replicated tables, without I/O
//! of its own except its storage. The driver (mgmtd, or a test over the
//! gc-core simulator) feeds it gc-core's views and deliveries and clients'
//! requests, and carries out the [`Action`]s it returns.

use crate::api::{
    ClientId, Freshness, HistoryEntry, MapInfo, Request, RequestError, Response, MAX_LIST,
};
use crate::primary::{primary_server, Assigned, Member, Refusal, Sequencer, Tenure};
use crate::render::{RenderSpec, Rendered, Template, TemplateError};
use crate::replica::{Change, Receipt, Replica, ReplicaError, ReplicaLimits};
use crate::storage::Storage;
use crate::table::{AppliedUpdate, ApplyError, MapSnapshot, Recall, Tables};
use crate::update::{Ordered, Update, UpdateId};
use crate::vote::{Session, Votes};
use crate::wal::{Cut, Wal, WalError};
use crate::wire::{Head, Msg, ReadReq, SnapshotPart, State};
use gc_core::{ConfId, Delivery, Event, Level, NodeId, Pid, ViewId, ViewInfo};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// How a server behaves; every field has a bound-respecting default.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The gc-core group the maps servers multicast in; deliveries of other
    /// groups are ignored by [`MapsServer::on_event`].
    pub group: String,
    /// Bounds on updates buffered ahead of their turn.
    pub limits: ReplicaLimits,
    /// Bound on updates the primary server has ordered and not yet applied.
    pub max_in_flight: usize,
    /// Applied updates kept in memory per map, for catch-up and history
    /// (older ones are served by snapshot).
    pub keep_log: usize,
    /// Bytes of applied updates kept in memory per map.
    pub keep_log_bytes: usize,
    /// Compact (snapshot and empty the log) once the log is this long.
    pub compact_after: u64,
    /// Client requests in progress at once.
    pub max_pending: usize,
    /// Target size of a catch-up or snapshot message.
    pub chunk_bytes: usize,
    /// Maps rendered to files (from the daemon's configuration).
    pub renders: Vec<RenderSpec>,
    /// Keep a journal of every change applied, for
    /// [`MapsServer::take_journal`] (tests and checkers).
    pub journal: bool,
    /// The configured hosts (gc-core node ids): the maps primary component's
    /// first session ([`crate::vote`]). Required on a host's first start
    /// (when its storage holds no voting record); the same list as gc-core's.
    pub hosts: Vec<NodeId>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            group: "maps".to_owned(),
            limits: ReplicaLimits::default(),
            max_in_flight: Sequencer::DEFAULT_MAX_IN_FLIGHT,
            keep_log: 100_000,
            keep_log_bytes: 64 << 20,
            compact_after: 64 << 20,
            max_pending: 65_536,
            chunk_bytes: 1 << 20,
            renders: Vec::new(),
            journal: false,
            hosts: Vec::new(),
        }
    }
}

/// Something the driver must do, in the order returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Multicast `payload` to the maps group at `level`. If gc-core refuses
    /// it, pass the payload back to [`MapsServer::on_send_failed`].
    Multicast {
        /// The service level (updates and the state exchange are safe).
        level: Level,
        /// The bytes.
        payload: Vec<u8>,
    },
    /// Send `response` to the client.
    Reply {
        /// The client.
        client: ClientId,
        /// The answer.
        response: Response,
    },
    /// Write a rendered map file ([`Rendered::write`]).
    Render(Rendered),
}

/// The server cannot go on; the daemon should stop (after logging it).
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// The log or snapshot failed (full disk, I/O error, corruption).
    #[error(transparent)]
    Wal(#[from] WalError),
    /// Two different updates were ordered at one version of a map: two
    /// primaries at once, which the primary component rules out.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// The storage holds no voting record and the configuration names no
    /// hosts to start one from.
    #[error("the maps configuration names no hosts (needed on a host's first start)")]
    NoHosts,
    /// A render template in the configuration is invalid.
    #[error("the render template for map {map:?} is invalid: {error}")]
    Template {
        /// The map.
        map: String,
        /// What is wrong.
        error: TemplateError,
    },
}

/// Counters a driver can export.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Updates applied.
    pub applied: u64,
    /// Bytes of catch-up (log suffix) messages sent.
    pub catchup_bytes: u64,
    /// Bytes of snapshot messages sent.
    pub snapshot_bytes: u64,
    /// Updates received in a transitional configuration and held.
    pub held: u64,
    /// Held updates dropped because the primary component chose another
    /// history.
    pub held_dropped: u64,
    /// Messages dropped as undecodable.
    pub bad_messages: u64,
    /// Snapshots installed.
    pub snapshots_installed: u64,
    /// Compactions.
    pub compactions: u64,
}

/// One change applied by a server, as [`MapsServer::take_journal`] reports
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Journaled {
    /// The map.
    pub map: String,
    /// Its version after the change.
    pub version: u64,
    /// Its chain digest after the change.
    pub chain: u64,
    /// Its content digest after the change, when the map is still at that
    /// version (changes are journaled after a batch of them is applied).
    pub digest: Option<u64>,
    /// The update applied; `None` for a snapshot installed.
    pub id: Option<UpdateId>,
}

struct CurView {
    id: ViewId,
    members: Vec<Pid>,
    primary: Option<u64>,
}

/// A primary view whose state exchange is done and which passed the maps
/// voting rule: a session, attempted, and complete once every member said
/// it caught up.
struct Ready {
    primary: Pid,
    /// Per map, the version chosen by the exchange.
    need: BTreeMap<String, u64>,
    /// Per map, the version and chain chosen by the exchange.
    chosen: BTreeMap<String, (u64, u64)>,
    session: Session,
    caught_sent: bool,
    caught: BTreeSet<Pid>,
    complete: bool,
    /// Per host of the session, per map: the version it has synced.
    durable: BTreeMap<NodeId, BTreeMap<String, u64>>,
    seq: Option<Sequencer>,
    /// Updates this (primary) server ordered for another server's client.
    origins: BTreeMap<UpdateId, Pid>,
}

impl Ready {
    /// The highest version of `map` that a strict majority of the
    /// session's hosts have synced.
    fn majority_durable(&self, map: &str) -> u64 {
        let mut v: Vec<u64> = self
            .session
            .hosts
            .iter()
            .map(|h| {
                self.durable
                    .get(h)
                    .and_then(|m| m.get(map))
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        // The (n/2+1)-th highest: that many hosts hold at least it.
        v.get(v.len() / 2).copied().unwrap_or(0)
    }
}

#[derive(Default)]
struct KeptLog {
    updates: VecDeque<AppliedUpdate>,
    bytes: usize,
}

/// One server's replicated tables, driven by gc-core events.
///
/// # Driver contract
/// - Create it with [`MapsServer::open`] at every start of the process
///   (with the new incarnation's pid); it recovers from its storage.
/// - Set [`ServerConfig::hosts`] to the configured hosts (gc-core's list).
/// - Join the group [`ServerConfig::group`] on every host, and pass every
///   gc-core [`Event`] to [`MapsServer::on_events`] (views and the group's
///   deliveries; every event ready at once in one call, so that one fsync
///   covers them all), and every client request to
///   [`MapsServer::client_request`]. [`MapsServer::retry`] resends control
///   messages gc-core refused; every input does that too.
/// - Carry out the returned actions in order: multicasts (at the level
///   given; hand a refused one back to [`MapsServer::on_send_failed`]),
///   replies, and file renders.
/// - An `Err` means the server cannot go on (its disk failed, or two
///   primaries ordered the same version): stop the daemon with the message.
///
/// Writes to the log happen inside the calls and are synced once at the end
/// of each call, before anything is reported to peers; a reply that says
/// "applied" means a majority of the session's hosts hold the update on
/// disk (see the crate docs).
pub struct MapsServer<S: Storage> {
    me: Pid,
    cfg: ServerConfig,
    templates: Vec<(RenderSpec, Template)>,
    wal: Wal<S>,
    replica: Replica,
    log: BTreeMap<String, KeptLog>,
    tenure: Tenure,
    view: Option<CurView>,
    in_trans: bool,
    exchange: Option<BTreeMap<Pid, State>>,
    ready: Option<Ready>,
    held: BTreeMap<String, BTreeMap<u64, Ordered>>,
    held_count: usize,
    /// Clients waiting for an update's outcome, by id, with the update's
    /// digest: a second client that sends a different update with an id on
    /// its way is refused, not given the first update's outcome.
    pending: BTreeMap<UpdateId, (u64, Vec<ClientId>)>,
    pending_count: usize,
    reads: BTreeMap<u64, ClientId>,
    next_token: u64,
    snap_in: BTreeMap<String, (MapSnapshot, u32)>,
    wants: BTreeSet<String>,
    /// Control messages gc-core refused, sent again at the next input.
    unsent: Vec<Vec<u8>>,
    /// The exchange of this view is done and the voting rule refused it.
    blocked: bool,
    votes: Votes,
    /// Outcomes waiting for a majority of the session to sync them, per
    /// map and version.
    /// Maps applied since the last sync, to report as durable.
    touched: BTreeSet<String>,
    /// Renders waiting for the sync of what they show.
    renders: Vec<Action>,
    stats: Stats,
    journal: Vec<Journaled>,
}

impl<S: Storage> MapsServer<S> {
    /// Recovers from `storage` and starts as process `me`. Returns the torn
    /// log tail that was cut, if any, for the daemon to log.
    pub fn open(me: Pid, storage: S, cfg: ServerConfig) -> Result<(Self, Option<Cut>), MapsError> {
        let mut templates = Vec::new();
        for spec in &cfg.renders {
            let t = Template::parse(&spec.template).map_err(|error| MapsError::Template {
                map: spec.map.clone(),
                error,
            })?;
            templates.push((spec.clone(), t));
        }
        let (wal, rec) = Wal::open(storage)?;
        let votes = match Votes::load(wal.storage())? {
            Some(v) => v,
            None if cfg.hosts.is_empty() => return Err(MapsError::NoHosts),
            None => Votes::initial(&cfg.hosts),
        };
        let mut server = MapsServer {
            me,
            templates,
            wal,
            replica: Replica::new(rec.tables, cfg.limits),
            log: BTreeMap::new(),
            tenure: Tenure::new(),
            view: None,
            in_trans: false,
            exchange: None,
            ready: None,
            held: BTreeMap::new(),
            held_count: 0,
            pending: BTreeMap::new(),
            pending_count: 0,
            reads: BTreeMap::new(),
            next_token: 0,
            snap_in: BTreeMap::new(),
            wants: BTreeSet::new(),
            unsent: Vec::new(),
            blocked: false,
            votes,
            touched: BTreeSet::new(),
            renders: Vec::new(),
            stats: Stats::default(),
            journal: Vec::new(),
            cfg,
        };
        for a in rec.applied {
            server.keep(a);
        }
        // Kept updates survive a restart as they were: this host may be
        // one of the majority a session counted on for them.
        for o in rec.held {
            if o.version > server.tables().version(o.map())
                && server.held_count < server.cfg.limits.max_buffered
            {
                let h = server.held.entry(o.map().to_owned()).or_default();
                if h.insert(o.version, o).is_none() {
                    server.held_count += 1;
                }
            }
        }
        Ok((server, rec.cut))
    }

    // ----- getters -----

    /// This process.
    pub fn pid(&self) -> Pid {
        self.me
    }

    /// The applied tables.
    pub fn tables(&self) -> &Tables {
        self.replica.tables()
    }

    /// Whether this server is in the primary component and has finished
    /// its state exchange there.
    pub fn is_settled(&self) -> bool {
        self.ready.as_ref().is_some_and(|r| r.complete) && !self.in_trans
    }

    /// The primary server, once settled in the primary component.
    pub fn primary_server(&self) -> Option<Pid> {
        self.ready.as_ref().map(|r| r.primary)
    }

    /// Whether this server has caught up with every map's history as the
    /// primary component stated it (and has no update waiting for a gap).
    pub fn is_current(&self) -> bool {
        match &self.ready {
            Some(r) if r.complete && !self.in_trans => {
                r.need.iter().all(|(m, &v)| self.tables().version(m) >= v)
                    && self.replica.buffered() == 0
            }
            _ => false,
        }
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The changes applied since the last call (only with
    /// [`ServerConfig::journal`]).
    pub fn take_journal(&mut self) -> Vec<Journaled> {
        std::mem::take(&mut self.journal)
    }

    /// Requests waiting for an outcome.
    pub fn pending(&self) -> usize {
        self.pending_count + self.reads.len()
    }

    // ----- inputs -----

    /// A one-line account of where this server stands in the primary
    /// component, for logs and failed tests.
    pub fn describe(&self) -> String {
        let view = self
            .view
            .as_ref()
            .map(|v| (v.id.counter, v.primary, v.members.len()));
        let ready = self.ready.as_ref().map(|r| {
            format!(
                "session {} complete {} caught {}/{} sent {} chosen {:?} durable {:?}",
                r.session.number,
                r.complete,
                r.caught.len(),
                r.session.hosts.len(),
                r.caught_sent,
                r.chosen,
                r.durable
            )
        });
        let tops: Vec<(String, u64, u64, u64, u64)> = self
            .tables()
            .maps()
            .map(|(m, t)| {
                let (v, _, e) = self.top(m);
                (m.to_owned(), t.version(), t.epoch(), v, e)
            })
            .collect();
        let held: Vec<(u64, u64, u128)> = self
            .held
            .values()
            .flat_map(|h| h.values())
            .map(|o| (o.version, o.epoch, o.update.id.0))
            .take(8) // a sample: the line stays short
            .collect();
        format!(
            "{}: view {view:?} trans {} blocked {} exchange {:?} ready {ready:?} votes {:?} maps {tops:?} held {} {held:?}",
            self.me,
            self.in_trans,
            self.blocked,
            self.exchange.as_ref().map(|e| e.len()),
            self.votes,
            self.held_count
        )
    }

    /// This host's record of maps primary sessions ([`crate::vote`]).
    pub fn votes(&self) -> &Votes {
        &self.votes
    }

    /// Handles one gc-core event: views, and deliveries of the maps group.
    pub fn on_event(&mut self, event: &Event) -> Result<Vec<Action>, MapsError> {
        self.on_events(std::slice::from_ref(event))
    }

    /// Handles a run of gc-core events with one log sync for all of them
    /// (group commit): what they apply is written as it comes, synced once
    /// at the end, and only then reported durable to the other members and
    /// rendered. Pass every event that is ready at once.
    pub fn on_events(&mut self, events: &[Event]) -> Result<Vec<Action>, MapsError> {
        let mut out = Vec::new();
        self.resend(&mut out);
        for event in events {
            match event {
                Event::View(info) => out.extend(self.on_view(info)),
                Event::Deliver(d) if d.group == self.cfg.group => self.delivery(d, &mut out)?,
                _ => {}
            }
        }
        self.finish(&mut out)?;
        Ok(out)
    }

    /// Sends again what gc-core refused to send (a full send queue). Every
    /// input does this first; a driver with a timer may call it too.
    pub fn retry(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.resend(&mut out);
        out
    }

    /// A regular or transitional configuration was installed. Every update
    /// and consistent read in progress gets its answer now: *unknown* for an
    /// update (its outcome is decided, or not, by views this server may not
    /// see), *interrupted* for a read.
    pub fn on_view(&mut self, info: &ViewInfo) -> Vec<Action> {
        let mut out = Vec::new();
        self.fail_pending(&mut out);
        self.ready = None;
        self.exchange = None;
        self.snap_in.clear();
        self.wants.clear();
        // What was unsent belongs to the view that ended.
        self.unsent.clear();
        self.blocked = false;
        match info.conf {
            ConfId::Transitional { .. } => self.in_trans = true,
            ConfId::Regular(id) => {
                self.in_trans = false;
                let since = self.tenure.on_view(info.primary);
                self.view = Some(CurView {
                    id,
                    members: info.members.clone(),
                    primary: info.primary,
                });
                if let (Some(_), Some(since)) = (info.primary, since) {
                    self.exchange = Some(BTreeMap::new());
                    let payload = Msg::State(State {
                        view: id,
                        since,
                        heads: self.heads(),
                        votes: self.votes.clone(),
                    })
                    .encode();
                    out.push(Action::Multicast {
                        level: Level::Safe,
                        payload,
                    });
                }
            }
        }
        out
    }

    /// A message of the maps group was delivered.
    pub fn on_delivery(&mut self, d: &Delivery) -> Result<Vec<Action>, MapsError> {
        let mut out = Vec::new();
        self.resend(&mut out);
        self.delivery(d, &mut out)?;
        self.finish(&mut out)?;
        Ok(out)
    }

    fn delivery(&mut self, d: &Delivery, out: &mut Vec<Action>) -> Result<(), MapsError> {
        let msg = match Msg::decode(&d.payload) {
            Ok(m) => m,
            Err(_) => {
                self.stats.bad_messages += 1;
                return Ok(());
            }
        };
        let Some(view) = &self.view else {
            return Ok(());
        };
        let regular = d.conf == ConfId::Regular(view.id);
        let sender = d.msg.sender;
        let is_member = view.members.contains(&sender);
        let serving = regular && self.is_primary_server();
        match msg {
            Msg::State(state) => {
                if regular && is_member && state.view == view.id {
                    if let Some(ex) = self.exchange.as_mut() {
                        ex.insert(sender, state);
                        if ex.len() == view.members.len() {
                            self.settle(out)?;
                        }
                    }
                }
            }
            Msg::Ordered(o) => {
                // Only the sequencer of this very primary view orders what
                // is delivered in it: an update that gc-core sent in a later
                // view than the one it was ordered in (its send queue
                // outlives views) has another epoch and is ignored by every
                // member alike; its client hears "unknown" and retries.
                let this_epoch = view.primary == Some(o.epoch);
                let complete = self.ready.as_ref().is_some_and(|r| r.complete);
                if this_epoch && (complete || !regular) {
                    // Kept on disk, not applied: applied once a majority of
                    // the session holds it (`finish`). One delivered in the
                    // transitional configuration is kept alike, until a
                    // later session's exchange adopts or drops it.
                    let map = o.map().to_owned();
                    if self.hold(o)? && regular {
                        self.touched.insert(map);
                    }
                }
            }
            Msg::Forward { origin, update } => {
                if serving {
                    self.order(origin, update, out);
                }
            }
            Msg::Refused {
                origin,
                id,
                refusal,
            } => {
                if origin == self.me {
                    self.answer(id, Response::Error(RequestError::Refused(refusal)), out);
                }
            }
            Msg::Done {
                origin,
                id,
                map,
                outcome,
            } => {
                if origin == self.me {
                    let r = Response::Outcome {
                        id,
                        map: map.clone(),
                        outcome,
                        duplicate: true,
                    };
                    self.answer(id, r, out);
                }
            }
            Msg::CatchUp { updates } => self.apply(updates, out)?,
            Msg::Accept { updates } => {
                // The exchange's chosen history beyond what its holder has
                // applied: kept, applied when the session completes.
                if regular && self.ready.is_some() {
                    for o in updates {
                        self.hold(o)?;
                    }
                }
            }
            Msg::Snapshot(part) => self.snapshot_part(part, out)?,
            Msg::Want { map, have, chain } => {
                if serving {
                    self.send_catch_up(&map, &[(have, chain)], out);
                }
            }
            Msg::Read(req) => {
                if serving {
                    let complete = self.ready.as_ref().is_some_and(|r| r.complete);
                    let result = if complete {
                        self.read_consistent(&req.request)
                    } else {
                        Err(RequestError::Settling)
                    };
                    if req.origin == self.me {
                        if let Some(client) = self.reads.remove(&req.token) {
                            out.push(reply(client, result));
                        }
                    } else {
                        out.push(multicast(
                            Level::Agreed,
                            &Msg::ReadReply {
                                origin: req.origin,
                                token: req.token,
                                result,
                            },
                        ));
                    }
                }
            }
            Msg::ReadReply {
                origin,
                token,
                result,
            } => {
                if origin == self.me {
                    if let Some(client) = self.reads.remove(&token) {
                        out.push(reply(client, result));
                    }
                }
            }
            Msg::Caught { view: v } => {
                if regular && is_member && v == view.id {
                    self.caught(sender)?;
                }
            }
            Msg::Durable { view: v, heads } => {
                if regular && is_member && v == view.id {
                    if let Some(r) = self.ready.as_mut().filter(|r| r.complete) {
                        let d = r.durable.entry(sender.node).or_default();
                        for (map, version) in heads {
                            let e = d.entry(map).or_default();
                            *e = (*e).max(version);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A client's request.
    pub fn client_request(
        &mut self,
        client: ClientId,
        request: Request,
    ) -> Result<Vec<Action>, MapsError> {
        let mut out = Vec::new();
        self.resend(&mut out);
        if let Err(e) = request.validate() {
            out.push(reply(client, Err(RequestError::Invalid(e))));
            return Ok(out);
        }
        match request {
            Request::Update(update) => self.client_update(client, update, &mut out),
            Request::Get {
                consistent: true, ..
            }
            | Request::List {
                consistent: true, ..
            } => {
                if let Err(e) = self.may_order("read consistently") {
                    out.push(reply(client, Err(e)));
                } else if self.pending() >= self.cfg.max_pending {
                    out.push(reply(
                        client,
                        Err(RequestError::Busy {
                            pending: self.pending(),
                        }),
                    ));
                } else {
                    self.next_token += 1;
                    let token = self.next_token;
                    self.reads.insert(token, client);
                    out.push(multicast(
                        Level::Agreed,
                        &Msg::Read(ReadReq {
                            origin: self.me,
                            token,
                            request,
                        }),
                    ));
                }
            }
            Request::History { map, from, limit } => {
                out.push(reply(client, Ok(self.history(&map, from, limit))));
            }
            other => {
                let r = self.read_local(&other, false);
                out.push(reply(client, r));
            }
        }
        self.finish(&mut out)?;
        Ok(out)
    }

    /// gc-core refused to multicast `payload` (a full send queue). An
    /// update this server ordered is taken back and its client told to
    /// retry (through its own server, by an explicit refusal, when it came
    /// forwarded); a forwarded update or a consistent read is answered
    /// busy; control messages (state, caught-up, durable, refusals) are
    /// sent again at the next input or [`MapsServer::retry`].
    pub fn on_send_failed(&mut self, payload: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        let Ok(msg) = Msg::decode(payload) else {
            return out;
        };
        let busy = |n| Response::Error(RequestError::Refused(Refusal::Busy { in_flight: n }));
        match msg {
            Msg::State(_)
            | Msg::Caught { .. }
            | Msg::Durable { .. }
            | Msg::Refused { .. }
            | Msg::Done { .. }
            // Bounded: at most a few per view, plus one refusal per update
            // in flight (itself bounded).
                if self.unsent.len() < self.cfg.max_in_flight =>
            {
                self.unsent.push(payload.to_vec());
            }
            Msg::Ordered(o) => {
                let id = o.update.id;
                if let Some(r) = self.ready.as_mut() {
                    let origin = r.origins.remove(&id);
                    if let Some(seq) = r.seq.as_mut() {
                        seq.take_back(&o);
                        let in_flight = seq.in_flight();
                        match origin {
                            Some(origin) if origin != self.me => out.push(multicast(
                                Level::Agreed,
                                &Msg::Refused {
                                    origin,
                                    id,
                                    refusal: Refusal::Busy { in_flight },
                                },
                            )),
                            _ => self.answer(id, busy(in_flight), &mut out),
                        }
                    }
                }
            }
            Msg::Forward { update, .. } => self.answer(update.id, busy(0), &mut out),
            Msg::Read(r) => {
                if let Some(client) = self.reads.remove(&r.token) {
                    out.push(reply(client, Err(RequestError::Busy { pending: 0 })));
                }
            }
            _ => {}
        }
        out
    }

    // ----- the primary component -----

    fn is_primary_server(&self) -> bool {
        !self.in_trans && self.ready.as_ref().is_some_and(|r| r.primary == self.me)
    }

    /// Whether updates and consistent reads may start here.
    fn may_order(&self, what: &str) -> Result<(), RequestError> {
        let view = self.view.as_ref();
        if self.in_trans || view.is_none_or(|v| v.primary.is_none()) {
            return Err(RequestError::NotPrimary {
                what: what.to_owned(),
                members: view.map(|v| v.members.clone()).unwrap_or_default(),
            });
        }
        if self.blocked {
            // gc-core's primary, but not a maps session: a majority of the
            // last complete session (or of an attempt after it) is missing.
            return Err(RequestError::NotPrimary {
                what: what.to_owned(),
                members: view.map(|v| v.members.clone()).unwrap_or_default(),
            });
        }
        if !self.ready.as_ref().is_some_and(|r| r.complete) {
            return Err(RequestError::Settling);
        }
        Ok(())
    }

    /// Every map's head: what this server states in the exchange.
    fn heads(&self) -> Vec<Head> {
        let mut names: BTreeSet<&str> = self.tables().maps().map(|(n, _)| n).collect();
        names.extend(self.held.keys().map(String::as_str));
        names
            .into_iter()
            .map(|map| {
                let (top_version, top_chain, top_epoch) = self.top(map);
                Head {
                    map: map.to_owned(),
                    version: self.tables().version(map),
                    chain: self.tables().chain(map),
                    top_version,
                    top_chain,
                    top_epoch,
                }
            })
            .collect()
    }

    /// The highest version held of a map (applied, then held updates that
    /// follow on from it), its chain and its epoch.
    fn top(&self, map: &str) -> (u64, u64, u64) {
        let t = self.tables();
        let (mut v, mut c, mut e) = (
            t.version(map),
            t.chain(map),
            t.map(map).map_or(0, |m| m.epoch()),
        );
        if let Some(h) = self.held.get(map) {
            for (&ver, o) in h.range(v.saturating_add(1)..) {
                if ver != v + 1 || o.prev != c {
                    break;
                }
                (v, c, e) = (ver, o.chain(), o.epoch);
            }
        }
        (v, c, e)
    }

    /// The state exchange is complete: every member of the primary view
    /// stated its heads. Every member decides alike, from the same states:
    /// the primary server, each map's history (the head of the latest epoch,
    /// then the highest version), whether its own held updates belong to it,
    /// and whether it is the member that sends others what they lack.
    fn settle(&mut self, out: &mut Vec<Action>) -> Result<(), MapsError> {
        let (Some(states), Some(view)) = (self.exchange.take(), self.view.as_ref()) else {
            return Ok(());
        };
        let epoch = view.primary.unwrap_or(0);
        let members: Vec<Member> = states
            .iter()
            .map(|(pid, s)| Member {
                pid: *pid,
                since: s.since,
            })
            .collect();
        let Some(primary) = primary_server(&members) else {
            return Ok(());
        };
        // The maps voting rule (crate::vote): a gc-core primary view is a
        // maps session only with a majority of the last complete session and
        // of every attempt after it. Recorded as attempted before this
        // server says it caught up, so completion implies every member has
        // the record.
        let session = Session::new(epoch, view.members.iter().map(|p| p.node));
        if !Votes::allows(&session.hosts, states.values().map(|s| &s.votes))
            || !self.votes.attempt(session.clone())
        {
            self.blocked = true;
            return Ok(());
        }
        self.votes.store(self.wal.storage_mut())?;
        // Per map, the history of the highest ballot, then the highest
        // version (one session orders on one chain, so histories of one
        // ballot are prefixes of one another).
        let mut best: BTreeMap<String, (Head, Pid, u64)> = BTreeMap::new();
        for (pid, s) in &states {
            let ballot = s.votes.ballot;
            for h in &s.heads {
                let rank = (ballot, h.top_version);
                let better = best
                    .get(&h.map)
                    .is_none_or(|(b, _, bb)| rank > (*bb, b.top_version));
                if better {
                    best.insert(h.map.clone(), (h.clone(), *pid, ballot));
                }
            }
        }
        // Held updates on the chosen history stay held, to be applied when
        // the session completes. They are on it when this server's top is
        // the chosen one, or an earlier version of the same ballot: one
        // session orders on one chain. (That case matters: a holder of an
        // update a majority kept must keep it through attempts that choose
        // a longer history of the same ballot and then fail.)
        // The rest were never applied anywhere and are dropped here (their
        // records on disk are harmless: a held update only counts where its
        // chain digest follows the applied history).
        let tops: BTreeMap<String, (u64, u64, u64)> =
            self.held.keys().map(|m| (m.clone(), self.top(m))).collect();
        let held = std::mem::take(&mut self.held);
        self.held_count = 0;
        for (map, updates) in held {
            let (v, c, _) = tops.get(&map).copied().unwrap_or_default();
            let chosen = best
                .get(&map)
                .map(|(h, _, b)| (h.top_version, h.top_chain, *b));
            let mine = self.votes.ballot;
            let adopt = chosen.is_some_and(|(cv, cc, cb)| {
                (cv, cc) == (v, c) || (cb == mine && cv > v && v > self.tables().version(&map))
            });
            let upto = chosen.map_or(0, |(cv, _, _)| cv);
            let have = self.tables().version(&map);
            let keep: BTreeMap<u64, Ordered> = updates
                .into_iter()
                .filter(|(ver, _)| adopt && *ver > have && *ver <= upto)
                .collect();
            if !adopt {
                self.stats.held_dropped += 1;
            }
            if !keep.is_empty() {
                self.held_count += keep.len();
                self.held.insert(map, keep);
            }
        }
        let need: BTreeMap<String, u64> = best
            .iter()
            .map(|(m, (h, _, _))| (m.clone(), h.top_version))
            .collect();
        for (map, (h, source, _)) in &best {
            if *source != self.me {
                continue;
            }
            let lagging: Vec<(u64, u64)> = states
                .values()
                .map(|s| {
                    s.heads
                        .iter()
                        .find(|x| &x.map == map)
                        .map_or((0, 0), |x| (x.version, x.chain))
                })
                .filter(|&(v, c)| (v, c) != (h.top_version, h.top_chain))
                .collect();
            if !lagging.is_empty() {
                self.send_catch_up(map, &lagging, out);
                let held = self.held_chain(map, u64::MAX);
                if !held.is_empty() {
                    out.push(multicast(Level::Agreed, &Msg::Accept { updates: held }));
                }
            }
        }
        let chosen = best
            .iter()
            .map(|(m, (h, _, _))| (m.clone(), (h.top_version, h.top_chain)))
            .collect();
        // Nothing is ordered before the session completes (every member
        // caught up): see `caught`.
        self.ready = Some(Ready {
            primary,
            need,
            chosen,
            session,
            caught_sent: false,
            caught: BTreeSet::new(),
            complete: false,
            durable: BTreeMap::new(),
            seq: None,
            origins: BTreeMap::new(),
        });
        Ok(())
    }

    /// `sender` caught up with the exchange's choice. When every member has,
    /// the session is complete: recorded as the last one, and the primary
    /// server starts ordering.
    fn caught(&mut self, sender: Pid) -> Result<(), MapsError> {
        let Some(view) = &self.view else {
            return Ok(());
        };
        let Some(r) = self.ready.as_mut() else {
            return Ok(());
        };
        if r.complete {
            return Ok(());
        }
        r.caught.insert(sender);
        if !view.members.iter().all(|p| r.caught.contains(p)) {
            return Ok(());
        }
        r.complete = true;
        // Every member holds the chosen history on disk.
        for p in &view.members {
            r.durable.insert(p.node, r.need.clone());
        }
        if r.primary == self.me {
            r.seq = Some(Sequencer::new(
                r.session.number,
                &r.need,
                self.cfg.max_in_flight,
            ));
        }
        self.votes.complete(r.session.clone());
        self.votes.store(self.wal.storage_mut())?;
        Ok(())
    }

    /// Whether this server holds (applied, or kept on disk to apply)
    /// exactly the history the exchange chose.
    fn caught_up(&self, r: &Ready) -> bool {
        r.chosen.iter().all(|(m, &(v, c))| {
            let (tv, tc, _) = self.top(m);
            (tv, tc) == (v, c)
        })
    }

    /// The end of every input: syncs what was written (one fsync for the
    /// whole input, group commit), then renders, reports the synced versions
    /// to the session, releases outcomes a majority now holds, and says
    /// when this server caught up.
    fn finish(&mut self, out: &mut Vec<Action>) -> Result<(), MapsError> {
        self.wal.sync()?;
        out.append(&mut self.renders);
        let touched = std::mem::take(&mut self.touched);
        let (Some(view), false) = (self.view.as_ref(), self.in_trans) else {
            return Ok(());
        };
        let view_id = view.id;
        let me = self.me.node;
        // What this server holds on disk, applied or kept: the top.
        let heads: Vec<(String, u64)> = touched
            .into_iter()
            .map(|m| {
                let v = self.top(&m).0;
                (m, v)
            })
            .collect();
        if let Some(r) = self.ready.as_mut() {
            if r.complete && !heads.is_empty() {
                let d = r.durable.entry(me).or_default();
                for (m, v) in &heads {
                    let e = d.entry(m.clone()).or_default();
                    *e = (*e).max(*v);
                }
                out.push(multicast(
                    Level::Agreed,
                    &Msg::Durable {
                        view: view_id,
                        heads,
                    },
                ));
            }
        }
        self.commit_ready(out)?;
        out.append(&mut self.renders);
        let send_caught = self
            .ready
            .as_ref()
            .is_some_and(|r| !r.complete && !r.caught_sent && self.caught_up(r));
        if send_caught {
            let mut session = 0;
            if let Some(r) = self.ready.as_mut() {
                r.caught_sent = true;
                session = r.session.number;
            }
            // This history is now the session's: on disk before saying so.
            self.votes.ballot = session;
            self.votes.store(self.wal.storage_mut())?;
            out.push(multicast(Level::Agreed, &Msg::Caught { view: view_id }));
        }
        Ok(())
    }

    /// Applies what a majority of the session now holds on disk: only then
    /// can no later session lose it (crate docs). The applied tables hold
    /// nothing else, so every outcome read from them is final.
    fn commit_ready(&mut self, out: &mut Vec<Action>) -> Result<(), MapsError> {
        let Some(r) = self.ready.as_ref().filter(|r| r.complete) else {
            return Ok(());
        };
        let upto: Vec<(String, u64)> = self
            .held
            .keys()
            .map(|m| (m.clone(), r.majority_durable(m)))
            .filter(|(m, v)| *v > self.tables().version(m))
            .collect();
        for (map, v) in upto {
            let chain = self.held_chain(&map, v);
            self.apply(chain, out)?;
        }
        Ok(())
    }

    /// The held updates of `map` that follow on from its applied version,
    /// up to version `upto`, in order.
    fn held_chain(&self, map: &str, upto: u64) -> Vec<Ordered> {
        let t = self.tables();
        let (mut v, mut c) = (t.version(map), t.chain(map));
        let mut chain = Vec::new();
        if let Some(h) = self.held.get(map) {
            for (&ver, o) in h.range(v.saturating_add(1)..) {
                if ver != v + 1 || o.prev != c || ver > upto {
                    break;
                }
                (v, c) = (ver, o.chain());
                chain.push(o.clone());
            }
        }
        chain
    }

    /// Keeps an ordered update, unapplied, in memory and in the log
    /// (synced at the end of the input). Returns whether it is new here.
    fn hold(&mut self, o: Ordered) -> Result<bool, MapsError> {
        if o.version <= self.tables().version(o.map()) {
            return Ok(false);
        }
        let same = self
            .held
            .get(o.map())
            .and_then(|h| h.get(&o.version))
            .map(|x| x.chain() == o.chain());
        match same {
            Some(true) => return Ok(false),
            // Another update at that version (from a history the exchange
            // dropped): the newer delivery replaces it.
            Some(false) => {}
            None if self.held_count >= self.cfg.limits.max_buffered => return Ok(false),
            None => self.held_count += 1,
        }
        self.wal.write(&[Change::Held(o.clone())])?;
        self.stats.held += 1;
        self.held
            .entry(o.map().to_owned())
            .or_default()
            .insert(o.version, o);
        Ok(true)
    }

    /// The primary server orders an update from `origin`.
    fn order(&mut self, origin: Pid, update: Update, out: &mut Vec<Action>) {
        let id = update.id;
        let map = update.map.clone();
        let tables = self.replica.tables();
        let assigned = match self.ready.as_mut() {
            Some(r) => match r.seq.as_mut() {
                Some(seq) => {
                    let a = seq.assign(tables, update);
                    if let (Ok(Assigned::Ordered(_)), true) = (&a, origin != self.me) {
                        r.origins.insert(id, origin);
                    }
                    a
                }
                None => Err(Refusal::Settling),
            },
            None => Err(Refusal::Settling),
        };
        match assigned {
            Ok(Assigned::Ordered(o)) => out.push(multicast(Level::Safe, &Msg::Ordered(o))),
            Ok(Assigned::InFlight { .. }) => {}
            Ok(Assigned::Done(outcome)) => {
                if origin == self.me {
                    let r = Response::Outcome {
                        id,
                        map: map.clone(),
                        outcome,
                        duplicate: true,
                    };
                    self.answer(id, r, out);
                } else {
                    out.push(multicast(
                        Level::Agreed,
                        &Msg::Done {
                            origin,
                            id,
                            map,
                            outcome,
                        },
                    ));
                }
            }
            Err(refusal) => {
                if origin == self.me {
                    self.answer(id, Response::Error(RequestError::Refused(refusal)), out);
                } else {
                    out.push(multicast(
                        Level::Agreed,
                        &Msg::Refused {
                            origin,
                            id,
                            refusal,
                        },
                    ));
                }
            }
        }
    }

    fn client_update(&mut self, client: ClientId, update: Update, out: &mut Vec<Action>) {
        if let Err(e) = self.may_order("update a map") {
            out.push(reply(client, Err(e)));
            return;
        }
        let id = update.id;
        if self.pending() >= self.cfg.max_pending {
            let pending = self.pending();
            out.push(reply(client, Err(RequestError::Busy { pending })));
            return;
        }
        let digest = update.digest();
        if let Some(recall) = self.tables().recall(&update) {
            let outcome = match recall {
                Recall::Different(first) => {
                    let refusal = Refusal::id_reused(&update, first);
                    out.push(reply(client, Err(RequestError::Refused(refusal))));
                    return;
                }
                Recall::Same(outcome) | Recall::Unknown(outcome) => outcome.clone(),
            };
            let r = Response::Outcome {
                id,
                map: update.map.clone(),
                outcome,
                duplicate: true,
            };
            self.pending
                .entry(id)
                .or_insert((digest, Vec::new()))
                .1
                .push(client);
            self.pending_count += 1;
            self.answer(id, r, out);
            return;
        }
        let (first, waiting) = self.pending.entry(id).or_insert((digest, Vec::new()));
        if *first != digest {
            let refusal = Refusal::IdReused {
                id,
                map: update.map.clone(),
                first: "another update sent with it is on its way, its outcome not yet known"
                    .to_owned(),
            };
            out.push(reply(client, Err(RequestError::Refused(refusal))));
            return;
        }
        waiting.push(client);
        self.pending_count += 1;
        if waiting.len() > 1 {
            return; // already on its way
        }
        if self.is_primary_server() {
            let me = self.me;
            self.order(me, update, out);
        } else {
            out.push(multicast(
                Level::Agreed,
                &Msg::Forward {
                    origin: self.me,
                    update,
                },
            ));
        }
    }

    fn answer(&mut self, id: UpdateId, response: Response, out: &mut Vec<Action>) {
        if let Some((_, clients)) = self.pending.remove(&id) {
            self.pending_count -= clients.len();
            for client in clients {
                out.push(Action::Reply {
                    client,
                    response: response.clone(),
                });
            }
        }
    }

    fn fail_pending(&mut self, out: &mut Vec<Action>) {
        for (id, (_, clients)) in std::mem::take(&mut self.pending) {
            for client in clients {
                out.push(Action::Reply {
                    client,
                    response: Response::Unknown { id },
                });
            }
        }
        self.pending_count = 0;
        for (_, client) in std::mem::take(&mut self.reads) {
            out.push(reply(client, Err(RequestError::Interrupted)));
        }
    }

    fn resend(&mut self, out: &mut Vec<Action>) {
        for payload in std::mem::take(&mut self.unsent) {
            // The state exchange is safe; the other control messages agreed.
            let level = match Msg::decode(&payload) {
                Ok(Msg::State(_)) => Level::Safe,
                _ => Level::Agreed,
            };
            out.push(Action::Multicast { level, payload });
        }
    }

    // ----- applying -----

    /// Offers definitive updates (ordered in the regular configuration of a
    /// primary view, adopted at the exchange, or sent in catch-up) to the
    /// replica, logs what it applied, then answers and renders.
    fn apply(&mut self, updates: Vec<Ordered>, out: &mut Vec<Action>) -> Result<(), MapsError> {
        let mut changes = Vec::new();
        for o in updates {
            let map = o.map().to_owned();
            match self.replica.receive(o) {
                Ok(Receipt::Applied(list)) => changes.extend(list.into_iter().map(Change::Applied)),
                Ok(Receipt::Stale { .. }) | Ok(Receipt::Buffered(_)) => {}
                Ok(Receipt::Dropped(_)) | Err(ReplicaError::Apply(ApplyError::Diverged { .. })) => {
                    self.want(&map, out)
                }
                Err(ReplicaError::Apply(ApplyError::BadMapName(_))) => self.stats.bad_messages += 1,
                Err(e) => {
                    self.commit(changes, out)?;
                    return Err(e.into());
                }
            }
        }
        self.commit(changes, out)
    }

    fn commit(&mut self, changes: Vec<Change>, out: &mut Vec<Action>) -> Result<(), MapsError> {
        if changes.is_empty() {
            return Ok(());
        }
        // Written now, synced once at the end of the input (`finish`).
        self.wal.write(&changes)?;
        let mut touched = BTreeSet::new();
        for c in changes {
            let map = c.map().to_owned();
            let version = c.version();
            if let Some(h) = self.held.get_mut(&map) {
                let rest = h.split_off(&version.saturating_add(1));
                self.held_count -= h.len();
                *h = rest;
            }
            let (id, chain) = match &c {
                Change::Applied(a) => (Some(a.ordered.update.id), a.ordered.chain()),
                Change::Installed(s) => (None, s.chain),
                // The replica reports applied and installed changes only.
                Change::Held(_) => continue,
            };
            match c {
                Change::Applied(a) => {
                    self.stats.applied += 1;
                    let id = a.ordered.update.id;
                    let reused = a.duplicate
                        && matches!(
                            self.replica.tables().recall(&a.ordered.update),
                            Some(Recall::Different(_))
                        );
                    let r = if reused {
                        // A different update with an applied id got
                        // ordered anyway (past the checks before
                        // ordering, in a race): the state machine took it
                        // as a duplicate and changed nothing, and its
                        // client must not hear the first update's outcome
                        // as its own.
                        Response::Error(RequestError::Refused(Refusal::id_reused(
                            &a.ordered.update,
                            &a.outcome,
                        )))
                    } else {
                        Response::Outcome {
                            id,
                            map: map.clone(),
                            outcome: a.outcome.clone(),
                            duplicate: a.duplicate,
                        }
                    };
                    if let Some(r) = self.ready.as_mut() {
                        r.origins.remove(&id);
                    }
                    self.answer(id, r, out);
                    self.keep(a);
                }
                Change::Installed(_) => {
                    self.stats.snapshots_installed += 1;
                    self.log.remove(&map);
                }
                Change::Held(_) => {}
            }
            if self.cfg.journal {
                let t = self.replica.tables();
                self.journal.push(Journaled {
                    map: map.clone(),
                    version,
                    chain,
                    digest: t
                        .map(&map)
                        .filter(|m| m.version() == version)
                        .map(|m| m.content_digest()),
                    id,
                });
            }
            self.touched.insert(map.clone());
            touched.insert(map);
        }
        if !self.templates.is_empty() {
            for map in &touched {
                for (spec, tpl) in &self.templates {
                    if &spec.map == map {
                        let state = self.replica.tables().map(map);
                        self.renders.push(Action::Render(Rendered {
                            map: map.clone(),
                            version: state.map_or(0, |m| m.version()),
                            path: spec.path.clone(),
                            contents: state.map(|m| tpl.render(m)).unwrap_or_default(),
                        }));
                    }
                }
            }
        }
        if self.wal.len() > self.cfg.compact_after {
            let held: Vec<Ordered> = self
                .held
                .values()
                .flat_map(|h| h.values().cloned())
                .collect();
            self.wal.snapshot(self.replica.tables(), &held)?;
            self.stats.compactions += 1;
        }
        Ok(())
    }

    /// Keeps an applied update for catch-up and history, within bounds.
    fn keep(&mut self, a: AppliedUpdate) {
        let size = a.ordered.update.op.counted_bytes();
        let k = self.log.entry(a.ordered.map().to_owned()).or_default();
        if k.updates
            .back()
            .is_some_and(|b| b.ordered.version + 1 != a.ordered.version)
        {
            // Not contiguous (a snapshot came in between): start afresh.
            k.updates.clear();
            k.bytes = 0;
        }
        k.updates.push_back(a);
        k.bytes += size;
        while k.updates.len() > self.cfg.keep_log || k.bytes > self.cfg.keep_log_bytes {
            match k.updates.pop_front() {
                Some(old) => k.bytes -= old.ordered.update.op.counted_bytes(),
                None => break,
            }
        }
    }

    fn want(&mut self, map: &str, out: &mut Vec<Action>) {
        if self.ready.is_none() || !self.wants.insert(map.to_owned()) {
            return;
        }
        let t = self.tables();
        out.push(multicast(
            Level::Agreed,
            &Msg::Want {
                map: map.to_owned(),
                have: t.version(map),
                chain: t.chain(map),
            },
        ));
    }

    // ----- catch-up -----

    /// Whether the kept log can bring a replica at `(version, chain)` up to
    /// date: it reaches back to `version` and agrees with its history there.
    fn log_covers(&self, map: &str, version: u64, chain: u64) -> bool {
        let Some(k) = self.log.get(map) else {
            return false;
        };
        let Some(first) = k.updates.front() else {
            return false;
        };
        let f = first.ordered.version;
        if version + 1 == f {
            return first.ordered.prev == chain;
        }
        if version < f || version >= self.tables().version(map) {
            return false;
        }
        k.updates
            .get((version - f) as usize)
            .is_some_and(|a| a.ordered.chain() == chain)
    }

    /// Sends members at the given positions what they lack of `map`: the
    /// log suffix after the lowest position the log covers, then a
    /// snapshot if some position is not covered (compacted, or another
    /// history).
    fn send_catch_up(&mut self, map: &str, lagging: &[(u64, u64)], out: &mut Vec<Action>) {
        let my = self.tables().version(map);
        let mut from: Option<u64> = None;
        let mut snapshot = false;
        for &(v, c) in lagging {
            if v < my && self.log_covers(map, v, c) {
                from = Some(from.map_or(v, |f: u64| f.min(v)));
            } else if (v, c) != (my, self.tables().chain(map)) {
                snapshot = true;
            }
        }
        if let (Some(from), Some(k)) = (from, self.log.get(map)) {
            let mut chunk = Vec::new();
            let mut bytes = 0;
            let mut msgs = Vec::new();
            for a in k.updates.iter().filter(|a| a.ordered.version > from) {
                bytes += a.ordered.update.op.counted_bytes();
                chunk.push(a.ordered.clone());
                if bytes >= self.cfg.chunk_bytes {
                    msgs.push(Msg::CatchUp {
                        updates: std::mem::take(&mut chunk),
                    });
                    bytes = 0;
                }
            }
            if !chunk.is_empty() {
                msgs.push(Msg::CatchUp { updates: chunk });
            }
            for m in msgs {
                let payload = m.encode();
                self.stats.catchup_bytes += payload.len() as u64;
                out.push(Action::Multicast {
                    level: Level::Agreed,
                    payload,
                });
            }
        }
        if snapshot {
            if let Some(state) = self.tables().map(map) {
                let snap = state.snapshot(map);
                for m in snapshot_parts(snap, self.cfg.chunk_bytes) {
                    let payload = m.encode();
                    self.stats.snapshot_bytes += payload.len() as u64;
                    out.push(Action::Multicast {
                        level: Level::Agreed,
                        payload,
                    });
                }
            }
        }
    }

    fn snapshot_part(
        &mut self,
        part: SnapshotPart,
        out: &mut Vec<Action>,
    ) -> Result<(), MapsError> {
        let map = part.map.clone();
        if part.part == 0 {
            let snap = MapSnapshot {
                map: part.map,
                version: part.version,
                chain: part.chain,
                epoch: part.epoch,
                live: part.live,
                entries: Vec::new(),
                recent: Vec::new(),
            };
            self.snap_in.insert(map.clone(), (snap, 0));
        }
        let Some((snap, next)) = self.snap_in.get_mut(&map) else {
            return Ok(());
        };
        if (snap.version, snap.chain, *next) != (part.version, part.chain, part.part) {
            self.snap_in.remove(&map);
            return Ok(());
        }
        if snap.entries.len() + part.entries.len() > crate::bounds::MAX_ENTRIES {
            self.snap_in.remove(&map);
            self.stats.bad_messages += 1;
            return Ok(());
        }
        snap.entries.extend(part.entries);
        *next += 1;
        let Some(recent) = part.recent else {
            return Ok(());
        };
        let Some((mut snap, _)) = self.snap_in.remove(&map) else {
            return Ok(());
        };
        snap.recent = recent;
        let have = (self.tables().version(&map), self.tables().chain(&map));
        // Applied tables hold only what a session committed, and every
        // later chosen history extends that: a snapshot below the applied
        // version has nothing this replica lacks, and installing it would
        // roll committed updates back.
        if (snap.version, snap.chain) == have || snap.version < have.0 {
            return Ok(()); // nothing new for this replica
        }
        match self.replica.install(snap) {
            Ok(changes) => self.commit(changes, out),
            Err(ReplicaError::Install(_)) => {
                self.stats.bad_messages += 1;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    // ----- reads -----

    fn freshness(&self, map: &str) -> Freshness {
        let in_primary = !self.in_trans
            && !self.blocked
            && self.view.as_ref().is_some_and(|v| v.primary.is_some());
        let current = match &self.ready {
            Some(r) if in_primary && r.complete => {
                self.tables().version(map) >= r.need.get(map).copied().unwrap_or(0)
                    && !self.replica.gaps().iter().any(|g| g.map == map)
            }
            _ => false,
        };
        Freshness {
            stale: !current,
            in_primary,
        }
    }

    fn read_consistent(&self, request: &Request) -> Result<Response, RequestError> {
        let map = match request {
            Request::Get { map, .. } | Request::List { map, .. } => map,
            _ => return self.read_local(request, true),
        };
        if let Some(r) = &self.ready {
            if self.tables().version(map) < r.need.get(map).copied().unwrap_or(0) {
                return Err(RequestError::Settling);
            }
        }
        self.read_local(request, true)
    }

    fn read_local(&self, request: &Request, consistent: bool) -> Result<Response, RequestError> {
        let fresh = |map: &str| {
            let mut f = self.freshness(map);
            if consistent {
                f.stale = false;
            }
            f
        };
        let live_map = |map: &str| {
            self.tables()
                .map(map)
                .filter(|m| m.is_live())
                .ok_or_else(|| RequestError::NoSuchMap {
                    map: map.to_owned(),
                })
        };
        match request {
            Request::Get { map, key, .. } => {
                let m = live_map(map)?;
                Ok(Response::Value {
                    map: map.clone(),
                    key: key.clone(),
                    entry: m.get(key).cloned(),
                    version: m.version(),
                    freshness: fresh(map),
                })
            }
            Request::List {
                map, after, limit, ..
            } => {
                let m = live_map(map)?;
                let limit = (*limit).min(MAX_LIST) as usize;
                let mut iter = m
                    .entries()
                    .filter(|(k, _)| after.as_deref().is_none_or(|a| *k > a));
                let entries: Vec<_> = iter
                    .by_ref()
                    .take(limit)
                    .map(|(k, e)| (k.to_owned(), e.clone()))
                    .collect();
                Ok(Response::Listing {
                    map: map.clone(),
                    version: m.version(),
                    entries,
                    more: iter.next().is_some(),
                    freshness: fresh(map),
                })
            }
            Request::Maps => {
                let maps = self
                    .tables()
                    .maps()
                    .take(MAX_LIST as usize)
                    .map(|(name, m)| MapInfo {
                        name: name.to_owned(),
                        version: m.version(),
                        live: m.is_live(),
                        entries: m.len() as u64,
                    })
                    .collect();
                let mut freshness = fresh("");
                freshness.stale = !self.is_current() && !consistent;
                Ok(Response::Maps { maps, freshness })
            }
            Request::History { map, from, limit } => Ok(self.history(map, *from, *limit)),
            Request::Update(_) => Err(RequestError::Settling),
        }
    }

    fn history(&self, map: &str, from: u64, limit: u32) -> Response {
        let k = self.log.get(map);
        let first_kept = k
            .and_then(|k| k.updates.front())
            .map_or(self.tables().version(map) + 1, |a| a.ordered.version);
        let entries = k
            .map(|k| {
                k.updates
                    .iter()
                    .filter(|a| a.ordered.version >= from)
                    .take(limit.min(MAX_LIST) as usize)
                    .map(|a| HistoryEntry {
                        version: a.ordered.version,
                        id: a.ordered.update.id,
                        op: a.ordered.update.op.clone(),
                        outcome: a.outcome.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Response::History {
            map: map.to_owned(),
            first_kept,
            entries,
        }
    }
}

fn multicast(level: Level, msg: &Msg) -> Action {
    Action::Multicast {
        level,
        payload: msg.encode(),
    }
}

fn reply(client: ClientId, result: Result<Response, RequestError>) -> Action {
    Action::Reply {
        client,
        response: result.unwrap_or_else(Response::Error),
    }
}

/// Splits a snapshot into messages of about `chunk` bytes of entries.
fn snapshot_parts(snap: MapSnapshot, chunk: usize) -> Vec<Msg> {
    let mut parts = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    let meta = |part: u32, entries, recent| {
        Msg::Snapshot(SnapshotPart {
            map: snap.map.clone(),
            version: snap.version,
            chain: snap.chain,
            epoch: snap.epoch,
            live: snap.live,
            part,
            entries,
            recent,
        })
    };
    let mut n = 0u32;
    for (k, e) in snap.entries.iter() {
        bytes += k.len() + e.value.len() + 16;
        cur.push((k.clone(), e.clone()));
        if bytes >= chunk {
            parts.push(meta(n, std::mem::take(&mut cur), None));
            n += 1;
            bytes = 0;
        }
    }
    parts.push(meta(n, cur, Some(snap.recent.clone())));
    parts
}
