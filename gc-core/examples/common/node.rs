//! The node process: one gc-core node over UDP that prints what it delivers
//! as JSON lines on stdout and takes commands on stdin.

// Shared by several example binaries and a test, each using a part of it.
#![allow(unreachable_pub, dead_code)]

use super::{flag, flag_or, list_flag};
use gc_core::runtime::{
    FileStorage, Handle, MulticastConfig, Runtime, RuntimeConfig, RuntimeCounters,
};
use gc_core::seal::ClusterKey;
use gc_core::{ConfId, Config, Event, Level, Pid, PrimaryState};
use serde_json::{json, Value};
use std::error::Error;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

/// How to run it.
pub const USAGE: &str = "\
usage: node --id N --bind ADDR [--seed ADDR]... --key FILE [options]
       node --keygen FILE

options:
  --seed ADDR[,ADDR...]  discovery addresses of other nodes (repeatable)
  --state FILE           incarnation and primary state (default node-<id>.state)
  --event-log FILE       append the checker's trace records to FILE
  --bootstrap 1,2,3      the initial primary component's node ids
  --groups g1,g2         groups to join at start
  --multicast GROUP:PORT IP multicast discovery (with --interface IP)
  --disseminate          with --multicast: send what goes to every member once
                         to the group
  --quiet                do not print deliveries
  --answer Q:A           answer every message 'Q...' delivered in group Q with
                         'A...' at the same level to group A (query benchmark)
  --no-stdin             ignore stdin (by default its end makes the node leave)
  --set KNOB=VALUE       protocol and runtime settings (repeatable): max_datagram,
                         ack_delay_us, ack_hub_from, summary_delay_us, reply_grace_us,
                         relay_from, relay_max_payload, heartbeat_hub_from,
                         heartbeat_ms, suspect_ms, join_interval_ms,
                         join_timeout_ms, consensus_ms, install_ms, discovery_ms,
                         merge_cooldown_ms, startup_wait_ms, nack_ms, nack_grace_us, window,
                         send_queue_bytes, event_capacity, socket_buffer, recv_batch,
                         busy_poll_us
  env NODE_LOG=error|warn|info|debug|trace (default warn), logs go to stderr

stdin commands:
  send <fifo|causal|agreed|safe> <group> <text>
  join <group> | leave-group <group> | leave | view | counters
  load <level> <size> <duration_ms> <group> [rate_per_s] [senders]
  query <level> <samples> <answers> <qgroup> <agroup>
                         round trips: multicast 'Q<k>' to qgroup, wait for
                         <answers> answers in agroup (nodes run with --answer)
";

/// Microseconds since the Unix epoch.
pub fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn emit(v: Value) {
    println!("{v}");
}

/// Parses a service level.
pub fn parse_level(s: &str) -> Result<Level, String> {
    match s {
        "fifo" => Ok(Level::Fifo),
        "causal" => Ok(Level::Causal),
        "agreed" => Ok(Level::Agreed),
        "safe" => Ok(Level::Safe),
        _ => Err(format!("unknown level {s:?} (fifo, causal, agreed, safe)")),
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Fifo => "fifo",
        Level::Causal => "causal",
        Level::Agreed => "agreed",
        Level::Safe => "safe",
    }
}

struct Opts {
    id: u32,
    bind: SocketAddr,
    seeds: Vec<SocketAddr>,
    key: PathBuf,
    state: PathBuf,
    event_log: Option<PathBuf>,
    bootstrap: Vec<u32>,
    groups: Vec<String>,
    multicast: Option<MulticastConfig>,
    quiet: bool,
    answer: Option<(String, String)>,
    stdin: bool,
    sets: Vec<(String, String)>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let id: u32 = flag(args, "--id")
            .ok_or("--id is required")?
            .parse()
            .map_err(|_| "--id: not a node id")?;
        let bind = flag(args, "--bind")
            .ok_or("--bind is required")?
            .parse()
            .map_err(|_| "--bind: not an address")?;
        let mut seeds = Vec::new();
        let mut sets = Vec::new();
        for (i, a) in args.iter().enumerate() {
            let value = args.get(i + 1);
            match (a.as_str(), value) {
                ("--seed", Some(v)) => {
                    for s in v.split(',').filter(|s| !s.is_empty()) {
                        seeds.push(
                            s.parse()
                                .map_err(|_| format!("--seed: bad address {s:?}"))?,
                        );
                    }
                }
                ("--set", Some(v)) => {
                    let (k, val) = v.split_once('=').ok_or("--set: expected KNOB=VALUE")?;
                    sets.push((k.to_owned(), val.to_owned()));
                }
                _ => {}
            }
        }
        let multicast = match flag(args, "--multicast") {
            None => None,
            Some(g) => {
                let group: SocketAddrV4 = g.parse().map_err(|_| "--multicast: expected IP:PORT")?;
                let mut m = MulticastConfig::new(group);
                m.interface = flag_or(args, "--interface", Ipv4Addr::UNSPECIFIED)?;
                m.disseminate = args.iter().any(|a| a == "--disseminate");
                Some(m)
            }
        };
        let answer = match flag(args, "--answer") {
            None => None,
            Some(v) => {
                let (q, a) = v.split_once(':').ok_or("--answer: expected Q:A")?;
                Some((q.to_owned(), a.to_owned()))
            }
        };
        Ok(Opts {
            id,
            bind,
            seeds,
            key: flag(args, "--key").ok_or("--key is required")?.into(),
            state: flag(args, "--state")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(format!("node-{id}.state"))),
            event_log: flag(args, "--event-log").map(PathBuf::from),
            bootstrap: list_flag(args, "--bootstrap")?
                .into_iter()
                .map(|n| n as u32)
                .collect(),
            groups: flag(args, "--groups")
                .map(|g| {
                    g.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            multicast,
            quiet: args.iter().any(|a| a == "--quiet"),
            answer,
            stdin: !args.iter().any(|a| a == "--no-stdin"),
            sets,
        })
    }
}

fn apply_sets(rc: &mut RuntimeConfig, sets: &[(String, String)]) -> Result<(), String> {
    for (k, v) in sets {
        let n: u64 = v
            .parse()
            .map_err(|_| format!("--set {k}: {v:?} is not a number"))?;
        let ms = Duration::from_millis(n);
        let c = &mut rc.node;
        match k.as_str() {
            "max_datagram" => c.max_datagram = n as usize,
            "ack_delay_us" => c.ack_delay = Duration::from_micros(n),
            "ack_hub_from" => c.ack_hub_from = n as usize,
            "summary_delay_us" => c.summary_delay = Duration::from_micros(n),
            "reply_grace_us" => c.reply_grace = Duration::from_micros(n),
            "relay_from" => c.relay_from = usize::try_from(n).unwrap_or(usize::MAX),
            "heartbeat_hub_from" => c.heartbeat_hub_from = usize::try_from(n).unwrap_or(usize::MAX),
            "relay_max_payload" => c.relay_max_payload = n as usize,
            "heartbeat_ms" => c.heartbeat_interval = ms,
            "suspect_ms" => c.suspect_timeout = ms,
            "join_interval_ms" => c.join_interval = ms,
            "join_timeout_ms" => c.join_timeout = ms,
            "consensus_ms" => c.consensus_timeout = ms,
            "install_ms" => c.install_timeout = ms,
            "discovery_ms" => c.discovery_interval = ms,
            "merge_cooldown_ms" => c.merge_cooldown = ms,
            "startup_wait_ms" => c.startup_wait = ms,
            "nack_ms" => c.nack_interval = ms,
            "nack_grace_us" => c.nack_grace = Duration::from_micros(n),
            "window" => c.window = n,
            "send_queue_bytes" => c.send_queue_bytes = n as usize,
            "event_capacity" => rc.event_capacity = n as usize,
            "socket_buffer" => rc.socket_buffer = n as usize,
            "recv_batch" => rc.recv_batch = n as usize,
            "busy_poll_us" => rc.busy_poll = Duration::from_micros(n),
            _ => return Err(format!("--set: unknown knob {k:?}")),
        }
    }
    Ok(())
}

/// The node process's `main`.
pub fn main(args: Vec<String>) -> ExitCode {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if let Some(path) = flag(&args, "--keygen") {
        return match ClusterKey::generate().and_then(|k| k.write_new(path)) {
            Ok(()) => {
                emit(json!({"type": "keygen", "path": path}));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("node: {}", chain(&e));
                ExitCode::FAILURE
            }
        };
    }
    let opts = match Opts::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("node: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let level = std::env::var("NODE_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::WARN);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("node: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            emit(json!({"type": "error", "message": chain(e.as_ref())}));
            eprintln!("node: {}", chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// An error and its sources, `: `-separated.
pub fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn pid_json(p: Pid) -> Value {
    json!(p.to_string())
}

/// A throughput run under way (`load` command).
struct Load {
    group: String,
    start_us: u64,
    end_us: u64,
    report_at: Instant,
    sent: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    delivered: u64,
    bytes: u64,
    latencies: Vec<u32>,
    rss_max_kib: u64,
    level: Level,
    size: usize,
}

const LOAD_TAG: u8 = b'L';

/// A query benchmark under way (`query` command): one question at a time.
struct Query {
    level: Level,
    qgroup: String,
    agroup: String,
    /// Questions still to ask, warm-up included.
    remaining: u32,
    /// Questions whose round trip is not recorded (connections, caches).
    warmup: u32,
    expected: usize,
    k: u64,
    t0: Instant,
    answered: std::collections::BTreeSet<Pid>,
    latencies: Vec<u64>,
}

impl Query {
    async fn ask(&mut self, handle: &Handle) {
        self.k += 1;
        self.answered.clear();
        let mut payload = vec![b'Q'];
        payload.extend_from_slice(&self.k.to_le_bytes());
        self.t0 = Instant::now();
        if let Err(e) = handle.multicast(&self.qgroup, self.level, payload).await {
            emit(json!({"type": "error", "message": format!("query: {e}")}));
        }
    }

    /// An answer; true when the benchmark is over.
    async fn on_answer(&mut self, handle: &Handle, from: Pid, payload: &[u8]) -> bool {
        let k = payload
            .get(1..9)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes);
        if k != Some(self.k) || !self.answered.insert(from) || self.answered.len() < self.expected {
            return false;
        }
        let us = u64::try_from(self.t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        if self.warmup > 0 {
            self.warmup -= 1;
        } else {
            self.latencies.push(us);
        }
        self.remaining = self.remaining.saturating_sub(1);
        if self.remaining == 0 {
            return true;
        }
        self.ask(handle).await;
        false
    }

    fn report(mut self) {
        self.latencies.sort_unstable();
        let l = &self.latencies;
        emit(json!({
            "type": "query_report",
            "level": level_name(self.level),
            "answers": self.expected,
            "samples": l.len(),
            "p50_us": super::percentile(l, 50.0),
            "p95_us": super::percentile(l, 95.0),
            "p99_us": super::percentile(l, 99.0),
            "max_us": l.last().copied().unwrap_or(0),
            "time_us": wall_us(),
        }));
    }
}

fn load_payload(size: usize, id: u32) -> Vec<u8> {
    let mut p = vec![0x55u8; size.max(13)];
    p[..8].copy_from_slice(&wall_us().to_le_bytes());
    p[8..12].copy_from_slice(&id.to_le_bytes());
    p[12] = LOAD_TAG;
    p
}

fn self_rss_kib() -> u64 {
    super::harness::vm_rss_kib(std::process::id()).unwrap_or(0)
}

async fn run(o: Opts) -> Result<(), Box<dyn Error>> {
    let key = ClusterKey::load(&o.key)?;
    let mut cfg = Config::new(Pid::new(o.id, 0));
    cfg.seeds = o.seeds.clone();
    cfg.primary = PrimaryState::initial(o.bootstrap.clone());
    let mut rc = RuntimeConfig::new(cfg, o.bind, key, FileStorage::new(&o.state));
    rc.multicast = o.multicast;
    rc.event_log = o.event_log.clone();
    apply_sets(&mut rc, &o.sets)?;
    let (handle, mut events) = Runtime::start(rc).await?;
    emit(json!({
        "type": "started",
        "node": o.id,
        "incarnation": handle.pid().incarnation,
        "pid": pid_json(handle.pid()),
        "addr": handle.local_addr().to_string(),
        "time_us": wall_us(),
    }));
    for g in &o.groups {
        handle.join_group(g).await?;
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = o.stdin;
    let mut load: Option<Load> = None;
    let mut query: Option<Query> = None;
    let mut rss_tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let report_at = load.as_ref().map(|l| l.report_at);
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Deliver(d)) if query.as_ref().is_some_and(|q| q.agroup == d.group) => {
                    let done = match &mut query {
                        Some(q) => q.on_answer(&handle, d.msg.sender, &d.payload).await,
                        None => false,
                    };
                    if done {
                        if let Some(q) = query.take() {
                            q.report();
                        }
                    }
                }
                Some(e) => on_event(&o, &handle, e, &mut load).await,
                None => break,
            },
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(l)) if l.starts_with("query ") => {
                    match parse_query(&l) {
                        Ok(mut q) => {
                            q.ask(&handle).await;
                            query = Some(q);
                        }
                        Err(e) => emit(json!({"type": "error", "command": l, "message": e})),
                    }
                }
                Ok(Some(l)) => {
                    if let Err(e) = on_command(&o, &handle, &l, &mut load).await {
                        emit(json!({"type": "error", "command": l, "message": e}));
                    }
                }
                Ok(None) | Err(_) => {
                    stdin_open = false;
                    spawn_leave(&handle);
                }
            },
            _ = rss_tick.tick(), if load.is_some() => {
                if let Some(l) = &mut load {
                    l.rss_max_kib = l.rss_max_kib.max(self_rss_kib());
                }
            }
            () = sleep_until(report_at) => {
                if let Some(l) = load.take() {
                    report_load(&handle, l).await;
                }
            }
        }
    }
    handle.closed().await?;
    Ok(())
}

fn parse_query(line: &str) -> Result<Query, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let [_, level, samples, answers, qgroup, agroup] = w[..] else {
        return Err("query <level> <samples> <answers> <qgroup> <agroup>".into());
    };
    let samples: u32 = samples.parse().map_err(|_| "query: samples")?;
    let warmup = (samples / 10).clamp(5, 100);
    Ok(Query {
        level: parse_level(level)?,
        qgroup: qgroup.to_owned(),
        agroup: agroup.to_owned(),
        remaining: samples + warmup,
        warmup,
        expected: answers.parse().map_err(|_| "query: answers")?,
        k: 0,
        t0: Instant::now(),
        answered: Default::default(),
        latencies: Vec::new(),
    })
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn spawn_leave(handle: &Handle) {
    let h = handle.clone();
    tokio::spawn(async move {
        if let Err(e) = h.leave().await {
            emit(json!({"type": "error", "message": format!("leave: {}", chain(&e))}));
        }
    });
}

async fn on_event(o: &Opts, handle: &Handle, event: Event, load: &mut Option<Load>) {
    let now = wall_us();
    match event {
        Event::View(v) => {
            let (kind, id) = match v.conf {
                ConfId::Regular(id) => ("regular", id.to_string()),
                ConfId::Transitional { .. } => ("transitional", v.conf.to_string()),
            };
            emit(json!({
                "type": "view",
                "kind": kind,
                "id": id,
                "members": v.members.iter().map(|p| p.node).collect::<Vec<_>>(),
                "pids": v.members.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "primary": v.primary,
                "time_us": now,
            }));
        }
        Event::Deliver(d) => {
            if let Some(l) = load.as_mut() {
                if d.group == l.group && d.payload.get(12) == Some(&LOAD_TAG) {
                    if (l.start_us..l.end_us).contains(&now) {
                        l.delivered += 1;
                        l.bytes += d.payload.len() as u64;
                        let mut sent = [0u8; 8];
                        sent.copy_from_slice(&d.payload[..8]);
                        let lat = now.saturating_sub(u64::from_le_bytes(sent));
                        if l.latencies.len() < 4_000_000 {
                            l.latencies.push(lat.min(u32::MAX as u64) as u32);
                        }
                    }
                    return;
                }
            }
            if let Some((q, a)) = &o.answer {
                if &d.group == q && d.payload.first() == Some(&b'Q') {
                    let mut answer = d.payload.clone();
                    answer[0] = b'A';
                    if let Err(e) = handle.multicast(a, d.level, answer).await {
                        emit(json!({"type": "error", "message": format!("answer: {e}")}));
                    }
                    if o.quiet {
                        return;
                    }
                }
            }
            if !o.quiet {
                emit(json!({
                    "type": "deliver",
                    "group": d.group,
                    "level": level_name(d.level),
                    "from": d.msg.sender.node,
                    "msg": d.msg.to_string(),
                    "conf": d.conf.to_string(),
                    "regular": matches!(d.conf, ConfId::Regular(_)),
                    "text": String::from_utf8_lossy(&d.payload),
                    "time_us": now,
                }));
            }
        }
        Event::GroupView { group, id, members } => emit(json!({
            "type": "group_view",
            "group": group,
            "view": id.view.to_string(),
            "change": id.change,
            "members": members.iter().map(|p| p.node).collect::<Vec<_>>(),
            "time_us": now,
        })),
        Event::PeerRefused { addr, reason } => emit(json!({
            "type": "refused", "addr": addr.to_string(), "reason": reason, "time_us": now,
        })),
        Event::Left => emit(json!({"type": "left", "time_us": now})),
        Event::PersistPrimary(_) => {}
    }
}

async fn on_command(
    o: &Opts,
    handle: &Handle,
    line: &str,
    load: &mut Option<Load>,
) -> Result<(), String> {
    let mut words = line.split_whitespace();
    match words.next() {
        None => Ok(()),
        Some("send") => {
            let level = parse_level(words.next().ok_or("send: missing level")?)?;
            let group = words.next().ok_or("send: missing group")?;
            let text: Vec<&str> = words.collect();
            let text = text.join(" ");
            match handle.multicast(group, level, text.clone()).await {
                Ok(id) => {
                    emit(json!({"type": "sent", "ok": true, "text": text, "msg": id.to_string()}))
                }
                Err(e) => {
                    emit(json!({"type": "sent", "ok": false, "text": text, "error": e.to_string()}))
                }
            }
            Ok(())
        }
        Some("join") => {
            let g = words.next().ok_or("join: missing group")?;
            handle.join_group(g).await.map_err(|e| e.to_string())
        }
        Some("leave-group") => {
            let g = words.next().ok_or("leave-group: missing group")?;
            handle.leave_group(g).await.map_err(|e| e.to_string())
        }
        Some("leave") => {
            spawn_leave(handle);
            Ok(())
        }
        Some("view") => {
            let v = handle.view().await.map_err(|e| e.to_string())?;
            emit(json!({
                "type": "current_view",
                "id": v.id.to_string(),
                "members": v.members.iter().map(|p| p.node).collect::<Vec<_>>(),
                "primary": v.primary,
                "changing": v.changing,
                "state": v.state,
            }));
            Ok(())
        }
        Some("counters") => {
            let c = handle.counters().await.map_err(|e| e.to_string())?;
            emit(counters_json(&c));
            Ok(())
        }
        Some("load") => {
            let level = parse_level(words.next().ok_or("load: missing level")?)?;
            let size: usize = words
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or("load: size")?;
            let ms: u64 = words
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or("load: duration")?;
            let group = words.next().ok_or("load: group")?.to_owned();
            let rate: u64 = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let senders: usize = words.next().and_then(|s| s.parse().ok()).unwrap_or(16);
            start_load(o, handle, level, size, ms, group, rate, senders, load);
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}")),
    }
}

/// Sends `size`-byte messages for `ms` milliseconds from `senders` tasks
/// (as fast as the group absorbs them, or `rate` per second in all), and
/// counts what is delivered meanwhile.
#[allow(clippy::too_many_arguments)]
fn start_load(
    o: &Opts,
    handle: &Handle,
    level: Level,
    size: usize,
    ms: u64,
    group: String,
    rate: u64,
    senders: usize,
    load: &mut Option<Load>,
) {
    let start_us = wall_us();
    let end_us = start_us + ms * 1000;
    let deadline = Instant::now() + Duration::from_millis(ms);
    let sent = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let senders = if rate > 0 { 1 } else { senders.max(1) };
    for _ in 0..senders {
        let (h, g, sent, refused, id) = (
            handle.clone(),
            group.clone(),
            sent.clone(),
            refused.clone(),
            o.id,
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let per_tick = rate.div_ceil(1000).max(1);
            let mut budget = 0u64;
            while Instant::now() < deadline {
                if rate > 0 {
                    if budget == 0 {
                        tick.tick().await;
                        budget = per_tick;
                    }
                    budget -= 1;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                match h
                    .multicast_within(
                        &g,
                        level,
                        load_payload(size, id),
                        left.max(Duration::from_millis(1)),
                    )
                    .await
                {
                    Ok(_) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(gc_core::runtime::Error::Stopped) => break,
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    *load = Some(Load {
        group,
        start_us,
        end_us,
        // Deliveries of the last messages sent still count if they arrive
        // within the window; the report waits for stragglers to drain.
        report_at: deadline + Duration::from_millis(1500),
        sent,
        refused,
        delivered: 0,
        bytes: 0,
        latencies: Vec::new(),
        rss_max_kib: self_rss_kib(),
        level,
        size,
    });
}

async fn report_load(handle: &Handle, mut l: Load) {
    l.latencies.sort_unstable();
    let lat: Vec<u64> = l.latencies.iter().map(|x| u64::from(*x)).collect();
    let secs = (l.end_us - l.start_us) as f64 / 1e6;
    let counters = handle.counters().await.ok();
    emit(json!({
        "type": "load_report",
        "level": level_name(l.level),
        "size": l.size,
        "seconds": secs,
        "sent": l.sent.load(Ordering::Relaxed),
        "refused": l.refused.load(Ordering::Relaxed),
        "delivered": l.delivered,
        "delivered_bytes": l.bytes,
        "lat_p50_us": super::percentile(&lat, 50.0),
        "lat_p99_us": super::percentile(&lat, 99.0),
        "lat_max_us": lat.last().copied().unwrap_or(0),
        "rss_max_kib": l.rss_max_kib.max(self_rss_kib()),
        "counters": counters.as_ref().map(counters_json),
        "time_us": wall_us(),
    }));
}

/// The counters as a JSON line.
pub fn counters_json(c: &RuntimeCounters) -> Value {
    let d = c.drops();
    json!({
        "type": "counters",
        "datagrams_in": c.io.datagrams_in,
        "bytes_in": c.io.bytes_in,
        "datagrams_out": c.io.datagrams_out,
        "bytes_out": c.io.bytes_out,
        "drops": {
            "authentication": d.authentication,
            "replay": d.replay,
            "stale": d.stale,
            "decode": d.decode,
            "version": d.version,
            "overload": d.overload,
            "receive_buffer": d.receive_buffer,
        },
        "view_changes": c.protocol.view_changes,
        "suspicions": c.protocol.suspicions,
        "retransmissions": c.protocol.retransmissions,
        "nacks_sent": c.protocol.nacks_sent,
        "delivered": c.protocol.delivered,
        "max_held_bytes": c.protocol.max_held_bytes,
        "event_stalls": c.io.event_stalls,
        "event_stall_us": c.io.event_stall_us,
        "send_errors": c.io.send_errors,
        "recv_errors": c.io.recv_errors,
        "state_saves": c.io.state_saves,
        "multicast_out": c.io.multicast_out,
        "multicast_own_skipped": c.io.multicast_own_skipped,
        "identity_conflicts": c.io.identity_conflicts,
    })
}
