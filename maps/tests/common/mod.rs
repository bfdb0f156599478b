//! A driver for MapsServers over the gc-core simulator: each simulated host
//! runs a MapsServer on a real directory (in a temp dir that survives the
//! host's crash), the test acts as the clients, and every fact the checker
//! needs is recorded.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use gc_core::sim::{Sim, SimConfig, SimRng};
use gc_core::{ConfId, Event};
use maps::check::{check, Record, Violation};
use maps::wire::Msg;
use maps::{
    Action, ClientId, FileStorage, MapsServer, Op, Request, RequestError, Response, ServerConfig,
    Update, UpdateId,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub const GROUP: &str = "mgmt";

pub struct Host {
    pub server: Option<MapsServer<FileStorage>>,
    pub dir: PathBuf,
    cursor: usize,
}

/// A client request in progress.
#[derive(Clone, Debug)]
pub struct Call {
    pub host: usize,
    pub request: Request,
    pub tries: u32,
}

pub struct World {
    pub sim: Sim,
    pub hosts: Vec<Host>,
    pub records: Vec<Record>,
    pub replies: Vec<(ClientId, usize, Response)>,
    pub calls: BTreeMap<ClientId, Call>,
    pub next_client: ClientId,
    pub cfg: ServerConfig,
    /// Bytes multicast per message kind, for the cost tests.
    pub sent: BTreeMap<&'static str, u64>,
    view_primary: Vec<Option<u64>>,
    _tmp: tempfile::TempDir,
}

fn tmp_root() -> tempfile::TempDir {
    // tmpfs where there is one: the tests fsync a great deal.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

fn kind(m: &Msg) -> &'static str {
    match m {
        Msg::State(_) => "state",
        Msg::Ordered(_) => "ordered",
        Msg::Forward { .. } => "forward",
        Msg::Refused { .. } => "refused",
        Msg::Done { .. } => "done",
        Msg::CatchUp { .. } => "catchup",
        Msg::Snapshot(_) => "snapshot",
        Msg::Want { .. } => "want",
        Msg::Read(_) => "read",
        Msg::ReadReply { .. } => "readreply",
        Msg::Caught { .. } => "caught",
        Msg::Accept { .. } => "accept",
        Msg::Durable { .. } => "durable",
    }
}

impl World {
    pub fn new(mut sim_cfg: SimConfig, cfg: ServerConfig) -> World {
        sim_cfg.groups = 1; // every host joins "mgmt"
        sim_cfg.send_interval = Duration::from_secs(3600);
        let n = sim_cfg.nodes;
        let mut sim = Sim::new(sim_cfg);
        sim.keep_events();
        let tmp = tmp_root();
        let mut cfg = cfg;
        cfg.group = GROUP.to_owned();
        cfg.journal = true;
        let hosts = (0..n)
            .map(|i| Host {
                server: None,
                dir: tmp.path().join(format!("host{i}")),
                cursor: 0,
            })
            .collect();
        let mut w = World {
            sim,
            hosts,
            records: Vec::new(),
            replies: Vec::new(),
            calls: BTreeMap::new(),
            next_client: 0,
            cfg,
            sent: BTreeMap::new(),
            view_primary: vec![None; n],
            _tmp: tmp,
        };
        w.sim.boot();
        w.cfg.hosts = (0..n)
            .filter_map(|i| w.sim.node(i).map(|nd| nd.pid().node))
            .collect();
        for i in 0..n {
            w.open(i);
        }
        w.pump();
        w
    }

    fn open(&mut self, i: usize) {
        let pid = self.sim.node(i).map(|n| n.pid()).expect("node running");
        let storage = FileStorage::open(&self.hosts[i].dir).expect("storage");
        let (mut server, _cut) =
            MapsServer::open(pid, storage, self.cfg.clone()).expect("recovery");
        // What the host holds after recovery must agree with what it held.
        for (map, m) in server.tables().maps() {
            self.records.push(Record::Holds {
                host: i as u32,
                map: map.to_owned(),
                version: m.version(),
                chain: m.chain(),
                digest: m.content_digest(),
            });
        }
        server.take_journal();
        self.hosts[i].server = Some(server);
    }

    pub fn kill(&mut self, i: usize) {
        self.pump();
        self.sim.kill(i);
        self.hosts[i].server = None;
    }

    pub fn restart(&mut self, i: usize) {
        if self.hosts[i].server.is_some() {
            return;
        }
        self.hosts[i].cursor = self.sim.app_events(i).len();
        self.view_primary[i] = None;
        self.sim.restart(i);
        self.open(i);
        self.pump();
    }

    pub fn live(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| self.hosts[i].server.is_some())
            .collect()
    }

    /// Feeds every host the events it has not seen, and carries out what
    /// its server asks, until nothing new happens.
    pub fn pump(&mut self) {
        loop {
            let mut progressed = false;
            for i in 0..self.hosts.len() {
                if self.hosts[i].server.is_none() {
                    continue;
                }
                let events = self.sim.app_events(i);
                let start = self.hosts[i].cursor.min(events.len());
                let new: Vec<Event> = events[start..].to_vec();
                self.hosts[i].cursor = events.len();
                if new.is_empty() {
                    continue;
                }
                progressed = true;
                // Every event that is ready goes in at once (group commit),
                // as a daemon would pass them; what each delivered is
                // noted first to record it against the journal after.
                let mut delivered_all = Vec::new();
                for ev in &new {
                    if let Event::View(v) = &ev {
                        if let ConfId::Regular(_) = v.conf {
                            self.view_primary[i] = v.primary;
                        }
                    }
                    // An update delivered in a regular configuration is
                    // accepted there only if that view is the primary
                    // component, as gc-core says (not as the server says).
                    let delivered: Option<(String, u64, u128, bool)> = match &ev {
                        Event::Deliver(d) if matches!(d.conf, ConfId::Regular(_)) => {
                            match Msg::decode(&d.payload) {
                                Ok(Msg::Ordered(o)) => Some((
                                    o.map().to_owned(),
                                    o.version,
                                    o.update.id.0,
                                    self.view_primary[i].is_some(),
                                )),
                                _ => None,
                            }
                        }
                        _ => None,
                    };
                    delivered_all.extend(delivered);
                }
                let Some(server) = self.hosts[i].server.as_mut() else {
                    continue;
                };
                let actions = match server.on_events(&new) {
                    Ok(a) => a,
                    Err(e) => panic!("host {i} stopped: {e}"),
                };
                let took = self.journal(i);
                for (map, version, id, primary) in delivered_all {
                    if took.iter().any(|t| *t == (map.clone(), version, id)) {
                        self.records.push(Record::Ordered {
                            host: i as u32,
                            map,
                            version,
                            id,
                            primary,
                        });
                    }
                }
                self.exec(i, actions);
            }
            if !progressed {
                break;
            }
        }
    }

    /// Records what host `i` applied since the last call; returns the
    /// updates (map, version, id).
    fn journal(&mut self, i: usize) -> Vec<(String, u64, u128)> {
        let mut took = Vec::new();
        let Some(server) = self.hosts[i].server.as_mut() else {
            return took;
        };
        for j in server.take_journal() {
            if let Some(id) = j.id {
                took.push((j.map.clone(), j.version, id.0));
                self.records.push(Record::Took {
                    map: j.map.clone(),
                    version: j.version,
                    id: id.0,
                });
            }
            if let Some(digest) = j.digest {
                self.records.push(Record::Holds {
                    host: i as u32,
                    map: j.map,
                    version: j.version,
                    chain: j.chain,
                    digest,
                });
            }
        }
        took
    }

    fn exec(&mut self, i: usize, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Multicast { level, payload } => {
                    if let Ok(m) = Msg::decode(&payload) {
                        *self.sent.entry(kind(&m)).or_default() += payload.len() as u64;
                    }
                    if self
                        .sim
                        .multicast(i, GROUP, level, payload.clone())
                        .is_err()
                    {
                        let more = match self.hosts[i].server.as_mut() {
                            Some(s) => s.on_send_failed(&payload),
                            None => Vec::new(),
                        };
                        self.exec(i, more);
                    }
                }
                Action::Reply { client, response } => {
                    if let Response::Outcome {
                        id, map, outcome, ..
                    } = &response
                    {
                        self.records.push(Record::Acked {
                            map: map.clone(),
                            version: outcome.version(),
                            id: id.0,
                        });
                    }
                    self.replies.push((client, i, response));
                }
                Action::Render(r) => {
                    r.write().expect("render");
                }
            }
        }
    }

    /// Sends a request to host `i`; returns its client id.
    pub fn request(&mut self, i: usize, request: Request) -> ClientId {
        self.next_client += 1;
        let client = self.next_client;
        self.calls.insert(
            client,
            Call {
                host: i,
                request: request.clone(),
                tries: 1,
            },
        );
        self.send(client, i, request);
        client
    }

    fn send(&mut self, client: ClientId, i: usize, request: Request) {
        let Some(server) = self.hosts[i].server.as_mut() else {
            return;
        };
        let actions = server.client_request(client, request).expect("request");
        let _ = self.journal(i);
        self.exec(i, actions);
    }

    pub fn advance(&mut self, d: Duration) {
        let step = Duration::from_millis(2);
        let mut t = Duration::ZERO;
        while t < d {
            self.sim.advance(step);
            self.pump();
            t += step;
        }
    }

    /// The last reply to `client`.
    pub fn reply(&self, client: ClientId) -> Option<&Response> {
        self.replies
            .iter()
            .rev()
            .find(|(c, _, _)| *c == client)
            .map(|(_, _, r)| r)
    }

    /// Sends and waits up to `d` for the answer.
    pub fn call(&mut self, i: usize, request: Request, d: Duration) -> Option<Response> {
        let c = self.request(i, request);
        let mut waited = Duration::ZERO;
        while waited < d {
            if let Some(r) = self.reply(c) {
                return Some(r.clone());
            }
            self.advance(Duration::from_millis(10));
            waited += Duration::from_millis(10);
        }
        self.reply(c).cloned()
    }

    /// Whether every live server is settled, current, and agrees on every
    /// map's version and content.
    pub fn converged(&self) -> bool {
        let servers: Vec<_> = self
            .hosts
            .iter()
            .filter_map(|h| h.server.as_ref())
            .collect();
        let Some(first) = servers.first() else {
            return true;
        };
        let summary = |s: &MapsServer<FileStorage>| {
            s.tables()
                .maps()
                .map(|(n, m)| (n.to_owned(), m.version(), m.content_digest()))
                .collect::<Vec<_>>()
        };
        let want = summary(first);
        servers
            .iter()
            .all(|s| s.is_settled() && s.is_current() && summary(s) == want)
    }

    /// Heals, restarts every host, and waits for convergence; records the
    /// final states and runs the checker.
    pub fn finish(&mut self, bound: Duration) -> Vec<Violation> {
        self.sim.heal();
        for i in 0..self.hosts.len() {
            self.restart(i);
        }
        let mut waited = Duration::ZERO;
        while !self.converged() && waited < bound {
            self.advance(Duration::from_millis(50));
            waited += Duration::from_millis(50);
        }
        for i in 0..self.hosts.len() {
            if let Some(s) = &self.hosts[i].server {
                for (map, m) in s.tables().maps() {
                    self.records.push(Record::Final {
                        host: i as u32,
                        map: map.to_owned(),
                        version: m.version(),
                        digest: m.content_digest(),
                    });
                }
            }
        }
        let mut v = check(&self.records);
        if !self.converged() && std::env::var_os("MAPS_DESCRIBE").is_some() {
            eprintln!("sent {:?}", self.sent);
            for i in 0..self.hosts.len() {
                let views: Vec<String> = self
                    .sim
                    .app_events(i)
                    .iter()
                    .filter_map(|e| match e {
                        Event::View(v) => {
                            Some(format!("{:?}:{}:{:?}", v.conf, v.members.len(), v.primary))
                        }
                        _ => None,
                    })
                    .collect();
                let n = views.len();
                eprintln!(
                    "host {i}: {n} views, last {:?}",
                    &views[n.saturating_sub(4)..]
                );
            }
            for h in &self.hosts {
                if let Some(s) = &h.server {
                    eprintln!("{}", s.describe());
                }
            }
        }
        if !self.converged() {
            // Name it even if the final states happen to agree.
            v.push(Violation::NotConverged {
                map: "(not settled within the bound)".into(),
                a: (0, 0, 0),
                b: (0, 0, 0),
            });
        }
        v
    }
}

pub fn update(id: u128, map: &str, op: Op) -> Request {
    Request::Update(Update {
        id: UpdateId(id),
        map: map.to_owned(),
        op,
    })
}

pub fn set(k: &str, v: &str) -> Op {
    Op::Set {
        key: k.to_owned(),
        value: v.to_owned(),
    }
}

/// A random workload step: an update from a small key space, sent to a
/// random live host; an update whose answer was unknown or refused is sent
/// again (same id) to another host.
pub fn random_update(w: &mut World, rng: &mut SimRng, next_id: &mut u128) {
    let live = w.live();
    if live.is_empty() {
        return;
    }
    let host = live[rng.below(live.len() as u64) as usize];
    // Retry an earlier update now and then.
    let retry: Option<Request> = w
        .replies
        .iter()
        .rev()
        .take(20)
        .find_map(|(c, _, r)| match r {
            Response::Unknown { .. }
            | Response::Error(RequestError::NotPrimary { .. })
            | Response::Error(RequestError::Settling) => w.calls.get(c).map(|c| c.request.clone()),
            _ => None,
        });
    if let Some(r) = retry.filter(|_| rng.chance(0.3)) {
        w.request(host, r);
        return;
    }
    let map = ["hosts", "users"][rng.below(2) as usize];
    let key = format!("k{}", rng.below(20));
    *next_id += 1;
    let op = match rng.below(10) {
        0 => Op::Del { key },
        1 => Op::CompareAndSet {
            key,
            expected_version: None,
            value: format!("c{next_id}"),
        },
        2 => Op::Batch(vec![
            set(&key, "b1"),
            set(&format!("{key}x"), &format!("b{next_id}")),
        ]),
        _ => set(&key, &format!("v{next_id}")),
    };
    w.request(host, update(*next_id, map, op));
}
