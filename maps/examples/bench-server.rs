//! bench-server: acknowledged updates per second and their latency through
//! five MapsServers with fsync on, with and without group commit.
//!
//! `cargo run --release -p maps --example bench-server [DIR] [UPDATES]`
//!
//! Five servers, each on its own directory under DIR (default: the system
//! temp directory; put it on the disk the daemon will use), share one
//! in-process bus that delivers every multicast to all five in one total
//! order (what gc-core gives a fault-free primary view). The bench runs in
//! rounds: each server takes every message delivered since its last turn in
//! one [`MapsServer::on_events`] call (one fsync), the five in parallel
//! threads as five hosts would. Clients keep `window` updates outstanding
//! at the primary server; an update counts when its reply says applied
//! (that is, once a majority has it on disk). Window 1 is one update at a
//! time (no batching possible); larger windows let deliveries batch.
//!
//! What this leaves out: gc-core's own cost and the network (see gc-core's
//! bench-throughput), and the five hosts share one disk here.

use gc_core::{ConfId, Delivery, Event, Level, MsgId, Pid, ViewId, ViewInfo};
use maps::{
    Action, ClientId, FileStorage, MapsServer, Op, Outcome, Request, Response, ServerConfig,
    Update, UpdateId,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const N: usize = 5;
const GROUP: &str = "maps";

struct Bench {
    servers: Vec<MapsServer<FileStorage>>,
    view: ViewId,
    /// Multicasts not yet delivered, in the bus's total order.
    queue: Vec<(Pid, Level, Vec<u8>)>,
    seq: u64,
    replies: Vec<(ClientId, Response)>,
}

impl Bench {
    fn new(dir: &std::path::Path) -> Result<Bench, Box<dyn std::error::Error>> {
        let members: Vec<Pid> = (1..=N as u32).map(|n| Pid::new(n, 1)).collect();
        let cfg = ServerConfig {
            group: GROUP.to_owned(),
            hosts: (1..=N as u32).collect(),
            ..ServerConfig::default()
        };
        let mut servers = Vec::new();
        for p in &members {
            let storage = FileStorage::open(dir.join(format!("host{}", p.node)))?;
            servers.push(MapsServer::open(*p, storage, cfg.clone())?.0);
        }
        let view = ViewId {
            counter: 1,
            coordinator: members[0],
        };
        let mut b = Bench {
            servers,
            view,
            queue: Vec::new(),
            seq: 0,
            replies: Vec::new(),
        };
        let info = ViewInfo {
            conf: ConfId::Regular(view),
            members,
            primary: Some(1),
        };
        for i in 0..N {
            let a = b.servers[i].on_event(&Event::View(info.clone()))?;
            b.exec(i, a);
        }
        Ok(b)
    }

    fn exec(&mut self, i: usize, actions: Vec<Action>) {
        let pid = self.servers[i].pid();
        for a in actions {
            match a {
                Action::Multicast { level, payload } => self.queue.push((pid, level, payload)),
                Action::Reply { client, response } => self.replies.push((client, response)),
                Action::Render(_) => {}
            }
        }
    }

    /// Delivers everything queued to every server, one `on_events` (one
    /// fsync) per server, the servers in parallel.
    fn round(&mut self) -> Result<(), String> {
        let queued = std::mem::take(&mut self.queue);
        let events: Vec<Event> = queued
            .into_iter()
            .map(|(sender, level, payload)| {
                self.seq += 1;
                Event::Deliver(Delivery {
                    msg: MsgId {
                        sender,
                        view: self.view,
                        seq: self.seq,
                    },
                    group: GROUP.to_owned(),
                    level,
                    payload,
                    conf: ConfId::Regular(self.view),
                })
            })
            .collect();
        let results: Vec<Result<Vec<Action>, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .servers
                .iter_mut()
                .map(|srv| {
                    let ev = &events;
                    s.spawn(move || srv.on_events(ev).map_err(|e| e.to_string()))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("server thread panicked".into()))
                })
                .collect()
        });
        for (i, r) in results.into_iter().enumerate() {
            self.exec(i, r?);
        }
        Ok(())
    }

    fn request(&mut self, client: ClientId, request: Request) -> Result<(), String> {
        let a = self.servers[0]
            .client_request(client, request)
            .map_err(|e| e.to_string())?;
        self.exec(0, a);
        Ok(())
    }
}

fn update(id: u128, op: Op) -> Request {
    Request::Update(Update {
        id: UpdateId(id),
        map: "hosts".to_owned(),
        op,
    })
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run(
    dir: &std::path::Path,
    window: usize,
    total: usize,
) -> Result<(f64, Duration, Duration, f64), Box<dyn std::error::Error>> {
    let mut b = Bench::new(dir)?;
    // Settle: states, caught-up, then create the map.
    for _ in 0..4 {
        b.round()?;
    }
    if !b.servers.iter().all(|s| s.is_settled()) {
        return Err("the servers did not settle".into());
    }
    b.request(0, update(0, Op::CreateMap))?;
    for _ in 0..6 {
        b.round()?;
    }
    b.replies.clear();
    let mut sent: BTreeMap<ClientId, Instant> = BTreeMap::new();
    let mut lat = Vec::with_capacity(total);
    let mut next: ClientId = 1;
    let mut rounds = 0u64;
    let start = Instant::now();
    while lat.len() < total {
        while sent.len() < window && (next as usize) <= total {
            let op = Op::Set {
                key: format!("host{:06}.example.org", next % 100_000),
                value: format!("10.0.{}.{}", (next >> 8) & 255, next & 255),
            };
            sent.insert(next, Instant::now());
            b.request(next, update(u128::from(next), op))?;
            next += 1;
        }
        b.round()?;
        rounds += 1;
        for (client, r) in std::mem::take(&mut b.replies) {
            match r {
                Response::Outcome {
                    outcome: Outcome::Applied { .. },
                    ..
                } => {
                    if let Some(t) = sent.remove(&client) {
                        lat.push(t.elapsed());
                    }
                }
                other => return Err(format!("update {client}: {other:?}").into()),
            }
        }
        if rounds > 100 * total as u64 + 100 {
            return Err("no progress".into());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    Ok((
        total as f64 / secs,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        total as f64 / rounds as f64,
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let total: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5_000);
    let dir = tempfile::tempdir_in(&base)?;
    println!(
        "bench-server in {}: {N} servers, fsync on, {total} updates per window",
        dir.path().display()
    );
    for window in [1usize, 16, 256, 1024] {
        let n = if window == 1 { total.min(300) } else { total };
        let d = dir.path().join(format!("w{window}"));
        let (rate, p50, p99, per_round) = run(&d, window, n)?;
        println!(
            "window {window:5}: {rate:9.0} acknowledged updates/s, latency p50 {:.1} ms p99 {:.1} ms, {per_round:.1} updates per round ({n} updates)",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
