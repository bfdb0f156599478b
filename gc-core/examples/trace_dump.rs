//! Prints one seed's trace (debugging aid): `trace_dump SEED [PID-FILTER]`.
use gc_core::sim::{run, SimConfig};
use gc_core::TraceEvent;
fn main() {
    let seed: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let out = run(SimConfig::random(seed));
    for (p, st) in &out.stats.final_states {
        println!("FINAL {p}: {st}");
    }
    for p in &out.trace.processes {
        println!("== {} {:?}", p.pid, p.end);
        for r in &p.records {
            match &r.event {
                TraceEvent::Install {
                    conf,
                    members,
                    primary,
                } => println!(
                    "{} {} INSTALL {} {:?} {:?}",
                    r.time,
                    p.pid,
                    conf,
                    members.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
                    primary
                ),
                TraceEvent::Send {
                    msg, level, group, ..
                } => println!("{} {} SEND {} {:?} {:?}", r.time, p.pid, msg, level, group),
                TraceEvent::Deliver {
                    msg,
                    level,
                    group,
                    conf,
                    ..
                } => println!(
                    "{} {} DELIV {} {:?} {:?} in {}",
                    r.time, p.pid, msg, level, group, conf
                ),
                TraceEvent::GroupView { group, id, members } => println!(
                    "{} {} GVIEW {} {:?} {}",
                    r.time,
                    p.pid,
                    group,
                    id,
                    members.len()
                ),
            }
        }
    }
}
