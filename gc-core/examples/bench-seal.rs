//! Seal and open throughput of `gc_core::seal`, one core, no I/O.
//!
//! `cargo run --release -p gc-core --example bench-seal [-- SECONDS]` prints,
//! for 100-byte and 1400-byte plaintexts, the time to seal, to open, and
//! both, per datagram, and the plaintext throughput of seal+open.
//!
//! Times are the CPU time of the benchmark thread where Linux reports it
//! (`/proc/thread-self/schedstat`), so that a machine shared with other work
//! does not inflate them; the wall-clock figure and the share of a core the
//! thread got are printed beside them.
//!
//! On x86-64, RustCrypto's AVX2 code is chosen at run time but its
//! intrinsics are then not inlined; building with
//! `RUSTFLAGS='-C target-feature=+avx2'` (or `-C target-cpu=native`) made
//! seal+open 2 to 3 times faster when this was written.

use std::error::Error;
use std::hint::black_box;
use std::time::{Duration, Instant};

use gc_core::seal::{ClusterKey, Sealer};
use gc_core::Pid;

fn main() -> Result<(), Box<dyn Error>> {
    let seconds: f64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 1.0,
    };
    let budget = Duration::from_secs_f64(seconds);
    let key = ClusterKey::generate()?;
    println!("seal bench: XChaCha20-Poly1305, {seconds} s per measurement");
    for size in [100usize, 1400] {
        let plaintext = vec![0x5Au8; size];
        let mut sender = Sealer::new(&key, Pid::new(1, 1));
        let mut receiver = Sealer::new(&key, Pid::new(2, 1));
        let mut datagram = Vec::with_capacity(2048);
        let mut buf = Vec::with_capacity(2048);

        let seal = measure(budget, || {
            sender.seal(black_box(&plaintext), &mut datagram)?;
            black_box(&datagram);
            Ok(())
        })?;
        // Opens fresh datagrams, as a receiver does: each seal+open pair is
        // timed and the seal's share taken off.
        let both = measure(budget, || {
            sender.seal(black_box(&plaintext), &mut datagram)?;
            let opened = receiver.open(black_box(&datagram), &mut buf)?;
            black_box(opened.plaintext);
            Ok(())
        })?;
        let (seal_ns, both_ns) = (seal.ns(), both.ns());
        let open_ns = both_ns - seal_ns;
        let mb_per_s = size as f64 / both_ns * 1e3;
        println!(
            "{size:>5} B: seal {seal_ns:6.0} ns, open {open_ns:6.0} ns, \
             seal+open {both_ns:6.0} ns/datagram, {mb_per_s:6.1} MB/s \
             ({} time; wall clock {:.0} ns/datagram, {:.0}% of a core)",
            if both.cpu_ns.is_some() { "CPU" } else { "wall" },
            both.wall_ns,
            both.share() * 100.0,
        );
        let c = receiver.counters();
        if c.dropped() != 0 {
            return Err(format!("{} datagrams dropped", c.dropped()).into());
        }
    }
    Ok(())
}

/// Time per call of a function.
struct Timing {
    wall_ns: f64,
    cpu_ns: Option<f64>,
}

impl Timing {
    /// CPU time per call if known, else wall-clock time.
    fn ns(&self) -> f64 {
        self.cpu_ns.unwrap_or(self.wall_ns)
    }

    /// The share of a core the thread had while measured.
    fn share(&self) -> f64 {
        self.cpu_ns.map_or(1.0, |cpu| cpu / self.wall_ns)
    }
}

/// The CPU time this thread has run, in nanoseconds, where Linux tells.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Time per call of `f`, run in batches of 1000 until `budget` has passed.
fn measure(
    budget: Duration,
    mut f: impl FnMut() -> Result<(), Box<dyn Error>>,
) -> Result<Timing, Box<dyn Error>> {
    for _ in 0..1000 {
        f()?;
    }
    let cpu_start = thread_cpu_ns();
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < budget {
        for _ in 0..1000 {
            f()?;
        }
        calls += 1000;
    }
    let wall = start.elapsed().as_nanos() as f64;
    let cpu = match (cpu_start, thread_cpu_ns()) {
        (Some(start), Some(end)) => Some(end.saturating_sub(start) as f64),
        _ => None,
    };
    Ok(Timing {
        wall_ns: wall / calls as f64,
        cpu_ns: cpu.map(|cpu| cpu / calls as f64),
    })
}
