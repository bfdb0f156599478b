//! The replicated maps over real daemons (issue 6, item 10); prints the
//! figures it measured.
//!
//! ```text
//! cargo run --release -p flotilla-tests --bin bench_maps -- [--updates 4000] [--catchup 10000]
//! ```
//!
//! Five `mgmtd` daemons on loopback (fsync on, each its own data directory
//! on the same disk), driven through the client library over the first
//! daemon's Unix socket, one connection per request as the monitor makes
//! them:
//! - **updates**: `set` requests with C outstanding (C client tasks), each
//!   counted when its answer says applied (a majority of the five has it
//!   on disk): updates/s, latency p50/p99; and `batch` updates of 100 keys;
//! - **queries**: `get` one after the other, local (from the daemon's own
//!   tables) and `--consistent` (through the primary server in agreed
//!   order): round trip p50/p99, connection included;
//! - **catch-up**: one daemon cut off (the test-only fault control) while
//!   the others take N updates, then healed: the time until it holds them
//!   all, and the catch-up bytes the daemons report sending, against the
//!   size of the missed updates' keys and values.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_client::message::{Request, ServerMessage};
use flotilla_client::{Connection, Endpoint};
use flotilla_tests::{percentile, Error, Fleet, FleetOptions};
use maps::api::{Request as MapRequest, Response};
use maps::{Op, Outcome, Update, UpdateId};

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn arg(name: &str, default: usize) -> Result<usize, Error> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args.get(i + 1).ok_or("missing value")?.parse()?),
        None => Ok(default),
    }
}

async fn ask(endpoint: &Endpoint, request: MapRequest) -> Result<Response, Error> {
    let mut c = Connection::connect(endpoint).await?;
    c.send(&Request::Map(request)).await?;
    match c.recv().await? {
        Some(ServerMessage::Map(r)) => Ok(r),
        other => Err(format!("unexpected answer {other:?}").into()),
    }
}

/// Sends the update until it is applied (the same id after an unknown
/// outcome or a settling refusal).
async fn update(endpoint: &Endpoint, map: &str, id: UpdateId, op: Op) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = ask(
            endpoint,
            MapRequest::Update(Update {
                id,
                map: map.into(),
                op: op.clone(),
            }),
        )
        .await?;
        match r {
            Response::Outcome {
                outcome: Outcome::Applied { .. },
                ..
            } => return Ok(()),
            other if Instant::now() > deadline => {
                return Err(format!("update never applied: {other:?}").into())
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `total` updates with `concurrency` outstanding; the latencies.
async fn run_updates(
    endpoints: &[Endpoint],
    map: &str,
    total: usize,
    concurrency: usize,
    batch: usize,
    base: u64,
) -> Result<(Duration, Vec<Duration>), Error> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let next = next.clone();
        let endpoint = endpoints[t % endpoints.len()].clone();
        let map = map.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, String>(lat);
                }
                let op = if batch <= 1 {
                    Op::Set {
                        key: format!("k{i}"),
                        value: format!("value-{i}"),
                    }
                } else {
                    Op::Batch(
                        (0..batch)
                            .map(|j| Op::Set {
                                key: format!("b{i}-{j}"),
                                value: format!("value-{j}"),
                            })
                            .collect(),
                    )
                };
                let id = UpdateId::from_origin(base, i as u64);
                let t = Instant::now();
                update(&endpoint, &map, id, op)
                    .await
                    .map_err(|e| e.to_string())?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    let elapsed = started.elapsed();
    all.sort();
    Ok((elapsed, all))
}

async fn version(endpoint: &Endpoint, map: &str) -> u64 {
    match ask(endpoint, MapRequest::Maps).await {
        Ok(Response::Maps { maps, .. }) => {
            maps.iter().find(|m| m.name == map).map_or(0, |m| m.version)
        }
        _ => 0,
    }
}

fn catchup_bytes(fleet: &Fleet) -> (u64, u64) {
    (
        logged_total(fleet, "catchup_bytes="),
        logged_total(fleet, "snapshot_bytes="),
    )
}

fn logged_total(fleet: &Fleet, field: &str) -> u64 {
    // Each daemon logs its running totals; the last line of each counts.
    fleet
        .daemons
        .iter()
        .map(|d| {
            d.log()
                .lines()
                .rev()
                .find(|l| l.contains("maps catch-up sent"))
                .and_then(|l| {
                    let at = l.find(field)? + field.len();
                    l[at..].split_whitespace().next()?.parse::<u64>().ok()
                })
                .unwrap_or(0)
        })
        .sum()
}

fn main() -> Result<(), Error> {
    let updates = arg("--updates", 4000)?;
    let missed = arg("--catchup", 10_000)?;
    let hosts: Vec<String> = (1..=5).map(|i| format!("h{i}")).collect();
    let mut options = FleetOptions::new(5);
    options.log_level = "info".into();
    options.extra = format!(
        "maps:\n  hosts: [{}]\ntesting:\n  fault_control: true\n",
        hosts.join(", ")
    );
    let fleet = Fleet::start(options)?;
    for i in 0..5 {
        fleet.wait_members(i, 5, Duration::from_secs(30))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let endpoint = Endpoint::Unix(fleet.daemons[0].socket());
    let base = u64::from(fastrand::u32(..));
    rt.block_on(async {
        update(
            &endpoint,
            "bench",
            UpdateId::from_origin(base, u64::MAX),
            Op::CreateMap,
        )
        .await?;
        println!("## updates through 5 daemons (fsync on), {updates} per row\n");
        println!("| outstanding | kind | acknowledged updates/s | latency p50 | latency p99 |");
        println!("|---|---|---|---|---|");
        let mut round = 1u64;
        for concurrency in [1usize, 16, 64, 256] {
            let n = if concurrency == 1 {
                updates.min(500)
            } else {
                updates
            };
            let (elapsed, lat) = run_updates(
                std::slice::from_ref(&endpoint),
                "bench",
                n,
                concurrency,
                1,
                base + round,
            )
            .await?;
            round += 1;
            println!(
                "| {concurrency} | set | {:.0} | {} | {} |",
                n as f64 / elapsed.as_secs_f64(),
                ms(percentile(&lat, 50.0)),
                ms(percentile(&lat, 99.0))
            );
        }
        for concurrency in [1usize, 16] {
            let n = (updates / 100).max(20);
            let (elapsed, lat) = run_updates(
                std::slice::from_ref(&endpoint),
                "bench",
                n,
                concurrency,
                100,
                base + round,
            )
            .await?;
            round += 1;
            println!(
                "| {concurrency} | batch of 100 sets | {:.0} keys/s ({:.0} updates/s) | {} | {} |",
                (n * 100) as f64 / elapsed.as_secs_f64(),
                n as f64 / elapsed.as_secs_f64(),
                ms(percentile(&lat, 50.0)),
                ms(percentile(&lat, 99.0))
            );
        }

        // The same with the clients spread over the five daemons (updates
        // reach the primary server forwarded).
        let all: Vec<Endpoint> = (0..5)
            .map(|i| Endpoint::Unix(fleet.daemons[i].socket()))
            .collect();
        let (elapsed, lat) = run_updates(&all, "bench", updates, 256, 1, base + round).await?;
        println!(
            "| 256 over 5 daemons | set | {:.0} | {} | {} |",
            updates as f64 / elapsed.as_secs_f64(),
            ms(percentile(&lat, 50.0)),
            ms(percentile(&lat, 99.0))
        );

        println!("\n## queries (one connection per request, round trip)\n");
        println!("| query | p50 | p99 |");
        println!("|---|---|---|");
        for consistent in [false, true] {
            let mut lat = Vec::new();
            for i in 0..1000 {
                let t = Instant::now();
                let r = ask(
                    &endpoint,
                    MapRequest::Get {
                        map: "bench".into(),
                        key: format!("k{}", i % 100),
                        consistent,
                    },
                )
                .await?;
                lat.push(t.elapsed());
                if !matches!(r, Response::Value { .. }) {
                    return Err(format!("query failed: {r:?}").into());
                }
            }
            lat.sort();
            println!(
                "| get{} | {} | {} |",
                if consistent {
                    " --consistent"
                } else {
                    " (local)"
                },
                ms(percentile(&lat, 50.0)),
                ms(percentile(&lat, 99.0))
            );
        }
        Ok::<_, Error>(())
    })?;

    // Catch-up: h5 misses `missed` updates.
    let cut = |on: bool| -> Result<(), Error> {
        let addr = |i: usize| format!("127.0.0.1:{}\n", fleet.daemons[i].port);
        let others: String = (0..4).map(addr).collect();
        let five = if on { addr(4) } else { String::new() };
        std::fs::write(
            fleet.daemons[4].home.join("data").join("faults"),
            if on { others } else { String::new() },
        )?;
        for i in 0..4 {
            std::fs::write(fleet.daemons[i].home.join("data").join("faults"), &five)?;
        }
        Ok(())
    };
    let five = Endpoint::Unix(fleet.daemons[4].socket());
    rt.block_on(async {
        let start_version = version(&endpoint, "bench").await;
        cut(true)?;
        fleet.wait_members(0, 4, Duration::from_secs(30))?;
        let before = catchup_bytes(&fleet);
        let (elapsed, _) =
            run_updates(std::slice::from_ref(&endpoint), "bench", missed, 256, 1, base + 1000).await?;
        let target = version(&endpoint, "bench").await;
        let payload_bytes: usize = (0..missed)
            .map(|i| format!("k{i}").len() + format!("value-{i}").len())
            .sum();
        // The missed updates as the log and the wire encode them (id,
        // version, epoch, chain digest, map name, operation).
        let missed_bytes: usize = (0..missed)
            .map(|i| {
                let u = Update {
                    id: UpdateId::from_origin(base + 1000, i as u64),
                    map: "bench".into(),
                    op: Op::Set {
                        key: format!("k{i}"),
                        value: format!("value-{i}"),
                    },
                };
                let o = maps::Ordered::new(start_version + 1 + i as u64, 2, u64::MAX / 3, u);
                postcard::to_stdvec(&o).map_or(0, |b| b.len())
            })
            .sum();
        let t = Instant::now();
        cut(false)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while version(&five, "bench").await < target {
            if Instant::now() > deadline {
                return Err("h5 never caught up".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = t.elapsed();
        // The totals are logged on the daemons' next tick.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let after = catchup_bytes(&fleet);
        let sent = after.0 - before.0;
        let snapshot = after.1 - before.1;
        println!("\n## catch-up of a replica that missed {missed} updates\n");
        println!("| what | figure |");
        println!("|---|---|");
        println!(
            "| updates while cut off | {missed} in {:.1} s (versions {start_version} to {target}) |",
            elapsed.as_secs_f64()
        );
        println!("| heal to caught up (includes the merge) | {} |", ms(took));
        println!("| catch-up (log suffix) bytes sent | {sent} |");
        println!("| snapshot bytes sent | {snapshot} |");
        println!("| the missed updates, encoded | {missed_bytes} |");
        println!("| their keys and values alone | {payload_bytes} |");
        println!(
            "| ratio | {:.2}x |",
            sent as f64 / missed_bytes.max(1) as f64
        );
        Ok::<_, Error>(())
    })?;
    Ok(())
}
