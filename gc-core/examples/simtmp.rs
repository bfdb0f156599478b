use gc_core::sim::{run, SimConfig};
fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (first, n) = (
        args.first().copied().unwrap_or(1),
        args.get(1).copied().unwrap_or(10),
    );
    let mut bad = 0;
    for seed in first..first + n {
        let cfg = SimConfig::random(seed);
        let nodes = cfg.nodes;
        let t = std::time::Instant::now();
        let out = run(cfg);
        let conv = out.stats.converged_after;
        if conv.is_none() {
            bad += 1;
        }
        println!("seed {seed} nodes {nodes} conv {:?} views {} stuck {} deliv {} mc {} dg {} steps {} held {} {:?} {:?}", conv, out.stats.views, out.stats.stuck_timers, out.stats.deliveries, out.stats.multicasts, out.stats.datagrams, out.stats.steps, out.stats.max_held_bytes, out.stats.faults, t.elapsed());
    }
    println!("not converged: {bad}");
}
