//! bench-wal: the cost of the maps write-ahead log and of catch-up.
//!
//! `cargo run --release -p maps --example bench-wal [DIR]`
//!
//! Prints: appends per second with an fsync per commit (one record, and 64
//! records per commit), recovery time for 100,000 records, and the bytes of
//! catch-up for 1 and 10,000 missed updates against the size of those
//! updates and of a snapshot of the map. DIR (default: the system temp
//! directory) should be on the disk the daemon will use.

use maps::wal::Wal;
use maps::wire::Msg;
use maps::{Change, Tables};
use maps::{FileStorage, Op, Ordered, Update, UpdateId};
use std::time::Instant;

fn next(t: &mut Tables, map: &str, id: u128, op: Op) -> Ordered {
    Ordered::new(
        t.version(map) + 1,
        1,
        t.chain(map),
        Update {
            id: UpdateId(id),
            map: map.to_owned(),
            op,
        },
    )
}

fn set(i: u128) -> Op {
    Op::Set {
        key: format!("host{:06}.example.org", i % 100_000),
        value: format!("10.0.{}.{}", (i >> 8) & 255, i & 255),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base)?;
    println!("bench-wal in {}", dir.path().display());

    // Appends with fsync.
    for per_commit in [1usize, 64] {
        let path = dir.path().join(format!("append{per_commit}"));
        let (mut wal, _) = Wal::open(FileStorage::open(&path)?)?;
        let mut t = Tables::new();
        let first = next(&mut t, "m", 0, Op::CreateMap);
        wal.append(&[Change::Applied(t.apply(first)?)])?;
        let commits = if per_commit == 1 { 1000 } else { 200 };
        let start = Instant::now();
        let mut id = 1;
        for _ in 0..commits {
            let mut batch = Vec::with_capacity(per_commit);
            for _ in 0..per_commit {
                let o = next(&mut t, "m", id, set(id));
                batch.push(Change::Applied(t.apply(o)?));
                id += 1;
            }
            wal.append(&batch)?;
        }
        let secs = start.elapsed().as_secs_f64();
        let records = (commits * per_commit) as f64;
        println!(
            "append, {per_commit:>2} record(s) per fsync: {:>9.0} records/s, {:>7.0} fsyncs/s, {:.3} ms per commit",
            records / secs,
            commits as f64 / secs,
            secs * 1e3 / commits as f64
        );
    }

    // Recovery of 100,000 records.
    let path = dir.path().join("recover");
    {
        let (mut wal, _) = Wal::open(FileStorage::open(&path)?)?;
        let mut t = Tables::new();
        let first = next(&mut t, "m", 0, Op::CreateMap);
        wal.append(&[Change::Applied(t.apply(first)?)])?;
        let mut id = 1;
        for _ in 0..100 {
            let mut batch = Vec::new();
            for _ in 0..1000 {
                let o = next(&mut t, "m", id, set(id));
                batch.push(Change::Applied(t.apply(o)?));
                id += 1;
            }
            wal.append(&batch)?;
        }
        println!("log of 100,001 records: {} bytes", wal.len());
    }
    let start = Instant::now();
    let (_, rec) = Wal::open(FileStorage::open(&path)?)?;
    println!(
        "recovery of {} records: {:.1} ms ({} entries)",
        rec.records,
        start.elapsed().as_secs_f64() * 1e3,
        rec.tables.map("m").map_or(0, |m| m.len())
    );

    // Catch-up bytes: a 100,000-entry map, then 1 or 10,000 missed updates.
    let mut t = Tables::new();
    let first = next(&mut t, "m", 0, Op::CreateMap);
    t.apply(first)?;
    for i in 0..100_000u128 {
        let o = next(&mut t, "m", 1 + i, set(i));
        t.apply(o)?;
    }
    let snapshot_bytes: usize = Msg::Snapshot(maps::wire::SnapshotPart {
        map: "m".into(),
        version: 0,
        chain: 0,
        epoch: 0,
        live: true,
        part: 0,
        entries: t
            .map("m")
            .map(|m| {
                m.entries()
                    .map(|(k, e)| (k.to_owned(), e.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        recent: None,
    })
    .encode()
    .len();
    for missed in [1u128, 10_000] {
        let mut updates = Vec::new();
        let mut raw = 0;
        for i in 0..missed {
            let o = next(&mut t, "m", 200_000 + i, set(i * 7));
            raw += postcard::to_stdvec(&o)?.len();
            updates.push(o.clone());
            t.apply(o)?;
        }
        // As the server sends them: messages of about 1 MiB.
        let mut sent = 0;
        for chunk in updates.chunks(20_000) {
            sent += Msg::CatchUp {
                updates: chunk.to_vec(),
            }
            .encode()
            .len();
        }
        println!(
            "catch-up of {missed:>6} missed update(s): {sent:>8} bytes sent for {raw:>8} bytes of updates ({:.3}x); a snapshot of the map would be {snapshot_bytes} bytes",
            sent as f64 / raw as f64
        );
    }
    Ok(())
}
