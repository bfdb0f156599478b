//! tmp
use gc_core::sim::{run, SimConfig};
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().unwrap())
        .unwrap_or(3);
    let mut cfg = SimConfig::quiet(1, n);
    cfg.fault_phase = std::time::Duration::from_millis(300);
    let t = std::time::Instant::now();
    let out = run(cfg);
    println!(
        "conv {:?} views {} deliv {} mc {} dg {} steps {} vt {:?} {:?}",
        out.stats.converged_after,
        out.stats.views,
        out.stats.deliveries,
        out.stats.multicasts,
        out.stats.datagrams,
        out.stats.steps,
        out.stats.virtual_time,
        t.elapsed()
    );
    for p in &out.trace.processes {
        for r in p
            .records
            .iter()
            .filter(|r| matches!(r.event, gc_core::TraceEvent::Install { .. }))
            .take(10)
        {
            println!("{} {} {:?}", p.pid, r.time, r.event);
        }
    }
}
