//! Code shared by the `node` example and the benchmarks: the node process
//! itself (`node`), and the harness that starts node processes and reads
//! their JSON lines (`harness`, also used by `tests/runtime_udp.rs`).

// Shared by several example binaries and a test, each using a part of it.
#![allow(unreachable_pub, dead_code)]

pub mod harness;
pub mod node;

/// The `p`-th percentile (0..=100) of sorted `values`, nearest rank.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A flag's value: `--name value`.
pub fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// A flag's value parsed, or `default`.
pub fn flag_or<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match flag(args, name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("{name}: cannot parse {v:?}")),
    }
}

/// A comma-separated list flag.
pub fn list_flag(args: &[String], name: &str) -> Result<Vec<usize>, String> {
    match flag(args, name) {
        None => Ok(Vec::new()),
        Some(v) => v
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|_| format!("{name}: cannot parse {s:?}")))
            .collect(),
    }
}

/// The machine, for benchmark reports.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPUs, {model}")
}
