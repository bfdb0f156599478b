//! Times [`packages::unpack`] of one package file, as a siminst receiver
//! unpacks it: the CPU time of each round (this thread's, from
//! `/proc/thread-self/schedstat`) and the wall time.
//!
//! ```text
//! cargo run --release -p packages --example unpack_speed -- FILE.fpkg STAGING_DIR [ROUNDS]
//! ```
//!
//! `STAGING_DIR` is removed and unpacked into again every round.

use std::time::Instant;

/// This thread's CPU time so far, in nanoseconds (0 if unknown).
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(file), Some(dir)) = (args.next(), args.next()) else {
        return Err("usage: unpack_speed FILE.fpkg STAGING_DIR [ROUNDS]".into());
    };
    let dir = std::path::Path::new(&dir);
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let mut cpu = Vec::new();
    for _ in 0..rounds {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        let (wall, before) = (Instant::now(), cpu_ns());
        let unpacked = packages::unpack(
            std::fs::File::open(&file)?,
            dir,
            &packages::Limits::default(),
        )?;
        let ms = cpu_ns().saturating_sub(before) as f64 / 1e6;
        cpu.push(ms);
        println!(
            "unpacked {} bytes: {:.1} ms wall, {ms:.1} ms CPU",
            unpacked.bytes,
            wall.elapsed().as_secs_f64() * 1e3
        );
    }
    cpu.sort_by(f64::total_cmp);
    if let (Some(min), Some(median)) = (cpu.first(), cpu.get(cpu.len() / 2)) {
        println!("CPU ms: min {min:.1}, median {median:.1}");
    }
    Ok(())
}
