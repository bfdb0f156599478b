//! Whole runs through the checker: a hand-written run that exercises every
//! rule's allowances and must pass, the same run with one thing broken, and
//! a generated run the size of a simulator run, for speed.

use gc_core::check::{check, Property, TraceBuilder, Violation, MAX_REPORTED_PER_PROPERTY};
use gc_core::{ConfId, GroupViewId, Level, MsgId, Pid, ProcessEnd, Trace, TraceEvent, ViewId};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn view(counter: u64, coordinator: Pid) -> ViewId {
    ViewId {
        counter,
        coordinator,
    }
}

fn reg(v: ViewId) -> ConfId {
    ConfId::Regular(v)
}

fn trans(from: ViewId, to: ViewId) -> ConfId {
    ConfId::Transitional { from, to }
}

fn shown(found: &[Violation]) -> String {
    found
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn properties(found: &[Violation]) -> BTreeSet<Property> {
    found.iter().map(|v| v.property).collect()
}

/// One thing to break in [`scenario`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    /// d delivers b's causal x2 while still in the regular view, though it
    /// never got x1 (which happened before it) from a.
    CausalHoleInRegular,
    /// d delivers c's agreed y3 in the regular view, without x1, y1 and y2,
    /// which precede it in everyone else's order (but not causally).
    AgreedHoleInRegular,
    /// c delivers y2 before y1, while a and b deliver y1 first.
    AgreedReordered,
    /// The view after the partition is called primary on both sides.
    TwoPrimaries,
    /// c skips the safe message s1 that a delivered in v1.
    SafeNotEverywhere,
    /// After the merge, d' never delivers the last message of the final view.
    LivenessLag,
}

/// Five hosts a..e, in four acts:
/// 1. v1 = {a,b,c,d,e}, primary 1: FIFO, causal, agreed and safe traffic.
/// 2. e leaves cleanly; v2 = {a,b,c,d}, primary 2, through a transitional
///    configuration.
/// 3. d is cut off. a, b, c go on as v3 = {a,b,c}, primary 3, delivering
///    b's safe s2 in their transitional configuration (d never acked it).
///    d, alone in trans(v2 -> w3), delivers b's x2 and y2 and c's y3
///    without a's x1 and y1, which it never received: holes EVS allows, in
///    causal and in agreed order, because a is not in that configuration. d's own z1,
///    delivered by d alone, never reaches the others. d then crashes with a
///    message it never delivered.
/// 4. d restarts as d' and everyone merges into v5 = {a,b,c,d'}, primary 4,
///    after the network heals; the run ends with a liveness phase.
fn scenario(fault: Fault) -> Trace {
    let [a, b, c, d, e] = [1, 2, 3, 4, 5].map(|n| Pid::new(n, 0));
    let d1 = Pid::new(4, 1);
    let (v1, v2, v3, w3, w4, v5) = (
        view(1, a),
        view(2, a),
        view(3, a),
        view(3, d),
        view(4, d1),
        view(5, a),
    );
    let mut t = TraceBuilder::new();

    // Act 1.
    let all = [a, b, c, d, e];
    for p in all {
        t.install(p, reg(v1), &all, Some(1));
    }
    let mgmt = GroupViewId {
        view: v1,
        change: 1,
    };
    for p in [a, b, c] {
        t.group_view(p, "mgmt", mgmt, &[a, b, c]);
    }
    let m1 = t.multicast(a, Level::Agreed);
    let f1 = t.multicast(c, Level::Fifo);
    t.deliver(b, m1, reg(v1));
    let m2 = t.multicast(b, Level::Causal);
    let f2 = t.multicast(c, Level::Fifo);
    let s1 = t.multicast(e, Level::Safe);
    for p in all {
        // Each receiver interleaves the two streams its own way.
        if p == c {
            t.deliver(p, f1, reg(v1)).deliver(p, f2, reg(v1));
        }
        if p != b {
            t.deliver(p, m1, reg(v1));
        }
        if p != c {
            t.deliver(p, f1, reg(v1));
        }
        t.deliver(p, m2, reg(v1));
        if p != c {
            t.deliver(p, f2, reg(v1));
        }
        if !(fault == Fault::SafeNotEverywhere && p == c) {
            t.deliver(p, s1, reg(v1));
        }
    }

    // Act 2: e leaves.
    t.end(e, ProcessEnd::Left);
    let four = [a, b, c, d];
    for p in four {
        t.install(p, trans(v1, v2), &four, None);
    }
    for p in four {
        t.install(p, reg(v2), &four, Some(2));
    }

    // Act 3: d is cut off.
    let z1 = t.multicast(d, Level::Causal);
    t.deliver(d, z1, reg(v2));
    let y3 = t.multicast(c, Level::Agreed);
    let x1 = t.multicast(a, Level::Agreed);
    t.deliver(a, x1, reg(v2)).deliver(b, x1, reg(v2));
    let x2 = t.multicast(b, Level::Causal);
    let y2 = t.multicast(b, Level::Agreed);
    t.deliver(a, x2, reg(v2)).deliver(b, x2, reg(v2));
    let y1 = t.multicast(a, Level::Agreed);
    let s2 = t.multicast(b, Level::Safe);
    t.deliver(c, x1, reg(v2)).deliver(c, x2, reg(v2));
    for p in [a, b, c] {
        if fault == Fault::AgreedReordered && p == c {
            t.deliver(p, y2, reg(v2)).deliver(p, y1, reg(v2));
        } else {
            t.deliver(p, y1, reg(v2)).deliver(p, y2, reg(v2));
        }
        t.deliver(p, y3, reg(v2));
    }
    match fault {
        Fault::CausalHoleInRegular => {
            t.deliver(d, x2, reg(v2));
        }
        Fault::AgreedHoleInRegular => {
            t.deliver(d, y3, reg(v2));
        }
        _ => {}
    }
    let abc = [a, b, c];
    for p in abc {
        t.install(p, trans(v2, v3), &abc, None);
    }
    for p in abc {
        t.deliver(p, s2, trans(v2, v3));
    }
    t.install(d, trans(v2, w3), &[d], None);
    if fault != Fault::CausalHoleInRegular {
        t.deliver(d, x2, trans(v2, w3));
    }
    if fault != Fault::AgreedHoleInRegular {
        t.deliver(d, y2, trans(v2, w3))
            .deliver(d, y3, trans(v2, w3));
    }
    for p in abc {
        t.install(p, reg(v3), &abc, Some(3));
    }
    let other_side = if fault == Fault::TwoPrimaries {
        Some(3)
    } else {
        None
    };
    t.install(d, reg(w3), &[d], other_side);
    let q1 = t.multicast(c, Level::Agreed);
    for p in abc {
        t.deliver(p, q1, reg(v3));
    }
    t.multicast(d, Level::Fifo);
    t.end(d, ProcessEnd::Crashed);

    // Act 4: d restarts as d', the network heals, everyone merges.
    t.install(d1, reg(w4), &[d1], None);
    let healed = t.now();
    t.liveness(healed, Duration::from_secs(5));
    let last = [a, b, c, d1];
    for p in abc {
        t.install(p, trans(v3, v5), &abc, None);
    }
    t.install(d1, trans(w4, v5), &[d1], None);
    for p in last {
        t.install(p, reg(v5), &last, Some(4));
    }
    let mut in_v5 = Vec::new();
    for (p, level) in [
        (a, Level::Safe),
        (d1, Level::Causal),
        (b, Level::Fifo),
        (c, Level::Agreed),
    ] {
        in_v5.push(t.multicast(p, level));
    }
    for p in last {
        for (i, &m) in in_v5.iter().enumerate() {
            if fault == Fault::LivenessLag && p == d1 && i == in_v5.len() - 1 {
                continue;
            }
            t.deliver(p, m, reg(v5));
        }
    }
    let _ = (m2, f1, f2);
    t.build()
}

#[test]
fn the_full_scenario_passes() {
    let trace = scenario(Fault::None);
    let found = check(&trace);
    assert!(found.is_empty(), "{}", shown(&found));
}

#[test]
fn each_fault_in_the_scenario_is_found() {
    let cases = [
        (Fault::CausalHoleInRegular, vec![Property::CausalOrder]),
        (Fault::AgreedHoleInRegular, vec![Property::AgreedOrder]),
        (Fault::AgreedReordered, vec![Property::AgreedOrder]),
        (Fault::TwoPrimaries, vec![Property::Primary]),
        (
            Fault::SafeNotEverywhere,
            vec![Property::VirtualSynchrony, Property::Safe],
        ),
        (Fault::LivenessLag, vec![Property::Liveness]),
    ];
    for (fault, expected) in cases {
        let found = check(&scenario(fault));
        let expected: BTreeSet<_> = expected.into_iter().collect();
        assert_eq!(
            properties(&found),
            expected,
            "{fault:?}:\n{}",
            shown(&found)
        );
    }
}

#[test]
fn violations_display_with_property_processes_and_messages() {
    let found = check(&scenario(Fault::AgreedReordered));
    let text = found.first().map(|v| v.to_string()).unwrap_or_default();
    assert!(
        text.starts_with(
            "[agreed-order] processes n1.0,n3.0 messages n1.0/v2@n1.0#1,n2.0/v2@n1.0#1: "
        ),
        "{text}"
    );
    let names: Vec<_> = Property::ALL.iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        [
            "integrity",
            "no-duplicates",
            "one-configuration",
            "view-agreement",
            "self-delivery",
            "virtual-synchrony",
            "fifo-order",
            "causal-order",
            "agreed-order",
            "safe",
            "primary",
            "liveness"
        ]
    );
}

/// A small deterministic generator (xorshift64*), so the test needs no
/// dependency and a run replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A correct run the size of a simulator run: 9 hosts, most crashing twice
/// (up to 27 processes), 5,000 messages of all levels, ~40,000 deliveries.
///
/// Each view is one epoch. Within it, processes act in random turns: send a
/// new message, or deliver the next message of the epoch's global send
/// order. That order is consistent with causality (a process only sends
/// after delivering a prefix of it) and is the one total order, so every
/// property holds. In most epochs one process crashes partway through; the
/// others then deliver what remains in the transitional configuration. It
/// rejoins, as a new incarnation, two views later. The last view follows the
/// heal and has no faults.
fn large_run(seed: u64) -> Trace {
    const HOSTS: u32 = 9;
    const EPOCHS: u64 = 40;
    const PER_EPOCH: usize = 125;
    let mut rng = Rng(seed);
    let mut t = TraceBuilder::new();
    let mut incarnation = [0u64; HOSTS as usize];
    let mut rejoin: Vec<(u64, Pid)> = Vec::new();
    let mut members: Vec<Pid> = (1..=HOSTS).map(|n| Pid::new(n, 0)).collect();
    let mut v = view(1, members[0]);
    for &p in &members {
        t.install(p, reg(v), &members, Some(1));
    }

    for epoch in 1..=EPOCHS {
        let last = epoch == EPOCHS;
        let victim = if epoch < EPOCHS - 2 && rng.below(4) != 0 {
            let p = members[rng.below(members.len())];
            (incarnation[(p.node - 1) as usize] < 2).then_some(p)
        } else {
            None
        };
        let crash_at = rng.below(PER_EPOCH);

        let mut sent: Vec<MsgId> = Vec::new();
        let mut next: Vec<usize> = vec![0; members.len()];
        let mut crashed = false;
        while sent.len() < PER_EPOCH {
            let i = rng.below(members.len());
            let p = members[i];
            if Some(p) == victim && (crashed || sent.len() >= crash_at) {
                crashed = true;
                continue;
            }
            if rng.below(3) == 0 || next[i] >= sent.len() {
                sent.push(t.multicast(p, Level::ALL[rng.below(4)]));
            } else {
                t.deliver(p, sent[next[i]], reg(v));
                next[i] += 1;
            }
        }

        // The next view: the survivors and whoever rejoins now.
        let survivors: Vec<Pid> = members
            .iter()
            .copied()
            .filter(|&p| Some(p) != victim)
            .collect();
        let mut upcoming = survivors.clone();
        upcoming.extend(
            rejoin
                .iter()
                .filter(|(at, _)| *at == epoch + 1)
                .map(|&(_, p)| p),
        );
        upcoming.sort_unstable();
        let nv = view(epoch + 1, upcoming[0]);

        // Survivors catch up: in the regular view when nobody crashed, else
        // in the transitional configuration towards the next one.
        if victim.is_some() {
            for &p in &survivors {
                t.install(p, trans(v, nv), &survivors, None);
            }
        }
        let conf = if victim.is_some() {
            trans(v, nv)
        } else {
            reg(v)
        };
        for (i, &p) in members.iter().enumerate() {
            if Some(p) != victim {
                for &m in &sent[next[i]..] {
                    t.deliver(p, m, conf);
                }
            }
        }
        if last {
            break;
        }
        if let Some(p) = victim {
            t.end(p, ProcessEnd::Crashed);
            let host = (p.node - 1) as usize;
            incarnation[host] += 1;
            rejoin.push((epoch + 2, Pid::new(p.node, incarnation[host])));
        } else {
            for &p in &survivors {
                t.install(p, trans(v, nv), &survivors, None);
            }
        }
        if epoch + 1 == EPOCHS {
            t.liveness(t.now(), Duration::from_secs(10));
        }
        for &p in &upcoming {
            t.install(p, reg(nv), &upcoming, Some(epoch + 1));
        }
        members = upcoming;
        v = nv;
    }
    t.build()
}

#[test]
fn a_large_correct_run_passes_quickly() {
    let trace = large_run(0x5eed);
    let deliveries = trace
        .processes
        .iter()
        .flat_map(|p| &p.records)
        .filter(|r| matches!(r.event, TraceEvent::Deliver { .. }))
        .count();
    let sends = trace
        .processes
        .iter()
        .flat_map(|p| &p.records)
        .filter(|r| matches!(r.event, TraceEvent::Send { .. }))
        .count();
    let start = Instant::now();
    let found = check(&trace);
    let took = start.elapsed();
    eprintln!(
        "check: {} processes, {} messages, {} deliveries: {:?}",
        trace.processes.len(),
        sends,
        deliveries,
        took
    );
    assert!(found.is_empty(), "{}", shown(&found));
    assert_eq!(check(&trace), found, "deterministic");
}

/// The same run with one receiver's deliveries of one view reversed: what
/// a receiver that buffered a whole view and then emptied the buffer
/// backwards would record.
fn reversed_view_at(trace: &mut Trace, process: usize) -> Option<ViewId> {
    let p = trace.processes.get_mut(process)?;
    let view = p.records.iter().find_map(|r| match r.event {
        TraceEvent::Deliver { conf, .. } => Some(conf.regular()),
        _ => None,
    })?;
    let at: Vec<usize> = (0..p.records.len())
        .filter(
            |&i| matches!(&p.records[i].event, TraceEvent::Deliver { msg, .. } if msg.view == view),
        )
        .collect();
    let events: Vec<TraceEvent> = at.iter().map(|&i| p.records[i].event.clone()).collect();
    for (&i, e) in at.iter().zip(events.into_iter().rev()) {
        p.records[i].event = e;
    }
    Some(view)
}

#[test]
fn a_large_broken_run_is_caught_and_capped() {
    let mut trace = large_run(0x5eed);
    assert!(reversed_view_at(&mut trace, 3).is_some());
    let found = check(&trace);
    let props = properties(&found);
    for p in [
        Property::FifoOrder,
        Property::CausalOrder,
        Property::AgreedOrder,
    ] {
        assert!(props.contains(&p), "{p} missing from:\n{}", shown(&found));
    }
    for p in props {
        let of_p: Vec<_> = found.iter().filter(|v| v.property == p).collect();
        assert!(
            of_p.len() <= MAX_REPORTED_PER_PROPERTY + 1,
            "{p}: {}",
            of_p.len()
        );
        if of_p.len() == MAX_REPORTED_PER_PROPERTY + 1 {
            let note = of_p.last().map(|v| v.detail.as_str()).unwrap_or_default();
            assert!(note.contains("not reported"), "{note}");
        }
    }
}

#[test]
fn one_swapped_pair_in_a_large_run_is_found() {
    let mut trace = large_run(0x5eed);
    // Swap the 100th and 101st total-class deliveries of the fifth process.
    let p = &mut trace.processes[4];
    let total: Vec<usize> = (0..p.records.len())
        .filter(|&i| matches!(&p.records[i].event, TraceEvent::Deliver { level, .. } if level.is_total_class()))
        .collect();
    let (i, j) = (total[100], total[101]);
    let (a, b) = (p.records[i].event.clone(), p.records[j].event.clone());
    p.records[i].event = b;
    p.records[j].event = a;
    let found = check(&trace);
    assert!(
        properties(&found).contains(&Property::AgreedOrder),
        "{}",
        shown(&found)
    );
    let pair = found.iter().find(|v| v.property == Property::AgreedOrder);
    assert!(
        pair.is_some_and(|v| v.detail.contains(" but ")),
        "{}",
        shown(&found)
    );
}

/// `cargo test -p gc-core --test checker speed -- --ignored --nocapture`
/// prints how long the checker takes on [`large_run`].
#[test]
#[ignore]
fn speed() {
    let trace = large_run(0x5eed);
    let mut best = Duration::MAX;
    for _ in 0..40 {
        let start = Instant::now();
        std::hint::black_box(check(&trace));
        best = best.min(start.elapsed());
    }
    eprintln!("check on the large run, best of 40: {best:?}");
}

/// The checker reads traces from real runs too, so nonsense must give
/// violations, never a panic: random records over a few pids, views and
/// messages, with repeated pids, deliveries before sends and the like.
#[test]
fn arbitrary_traces_never_panic() {
    let mut rng = Rng(7);
    let pids: Vec<Pid> = (1..=4)
        .flat_map(|n| [Pid::new(n, 0), Pid::new(n, 1)])
        .collect();
    let views: Vec<ViewId> = (1..=3)
        .flat_map(|c| pids.iter().take(3).map(move |&p| view(c, p)))
        .collect();
    let confs: Vec<ConfId> = views
        .iter()
        .flat_map(|&v| {
            views
                .iter()
                .take(4)
                .map(move |&w| trans(v, w))
                .chain([reg(v)])
        })
        .collect();
    let ends = [ProcessEnd::Running, ProcessEnd::Crashed, ProcessEnd::Left];
    for round in 0..300 {
        let mut t = TraceBuilder::new();
        for _ in 0..rng.below(60) {
            let p = pids[rng.below(pids.len())];
            let msg = MsgId {
                sender: pids[rng.below(pids.len())],
                view: views[rng.below(views.len())],
                seq: rng.below(4) as u64,
            };
            let members: Vec<Pid> = pids.iter().copied().filter(|_| rng.below(2) == 0).collect();
            let level = Level::ALL[rng.below(4)];
            let conf = confs[rng.below(confs.len())];
            match rng.below(6) {
                0 => t.install(
                    p,
                    conf,
                    &members,
                    (rng.below(3) == 0).then(|| rng.below(4) as u64),
                ),
                1 | 2 => t.send(p, msg, level, "", rng.below(2) as u64),
                3 | 4 => t.deliver(p, msg, conf),
                _ => t.group_view(
                    p,
                    "g",
                    GroupViewId {
                        view: msg.view,
                        change: 1,
                    },
                    &members,
                ),
            };
            t.end(p, ends[rng.below(3)]);
        }
        if round % 2 == 0 {
            t.liveness(t.now(), Duration::from_millis(rng.below(100) as u64));
        }
        let mut trace = t.build();
        if round % 5 == 0 {
            if let Some(p) = trace.processes.first().cloned() {
                trace.processes.push(p);
            }
        }
        let found = check(&trace);
        assert_eq!(check(&trace), found);
    }
}
