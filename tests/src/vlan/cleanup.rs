//! Removing what a run made: on `Drop`, on SIGINT/SIGTERM/SIGHUP, and, for
//! runs that died without either (SIGKILL, a power cut), by a sweep at the
//! start of the next run.
//!
//! Every namespace a run creates is named `flt-<pid>-<starttime>-<n>-<role>`,
//! where `pid` and `starttime` (the kernel's start time of that process, in
//! clock ticks since boot) identify the owning process even after its pid is
//! reused. The sweep removes exactly the namespaces whose owner is gone, so
//! runs in parallel (test threads, another test binary, a nemesis) never
//! touch each other's.

use super::cmd;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The prefix shared by every namespace this harness creates.
pub(crate) const NS_PREFIX: &str = "flt-";

/// Namespaces of the live networks of this process, by network prefix, in
/// the order they must be removed (hosts first, the bridge last).
static LIVE: Mutex<BTreeMap<String, Vec<String>>> = Mutex::new(BTreeMap::new());

fn live() -> MutexGuard<'static, BTreeMap<String, Vec<String>>> {
    // A panic while holding the lock leaves the map intact (every update is
    // one insert or remove), so a poisoned lock is still usable.
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// This process's identity in namespace names: `<pid>-<starttime>`.
pub(crate) fn owner_tag() -> String {
    let pid = std::process::id();
    format!("{pid}-{}", start_time(pid).unwrap_or(0))
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; the
    // fields after the last ')' are plain numbers, starting at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Registers the namespaces of a network so that a signal removes them.
pub(crate) fn register(prefix: &str, namespaces: Vec<String>) {
    install_signal_handler();
    live().insert(prefix.to_owned(), namespaces);
}

/// Forgets a network once it has been removed.
pub(crate) fn unregister(prefix: &str) {
    live().remove(prefix);
}

/// Kills every process inside namespace `ns` and deletes it. Errors are
/// collected, not returned early: cleanup removes as much as it can.
pub(crate) fn remove_namespace(ns: &str, errors: &mut Vec<String>) {
    kill_all_in(ns);
    if let Err(e) = cmd::ip(&["netns", "del", ns]) {
        // Already gone is the goal, not a failure.
        if !e.to_string().contains("No such file") {
            errors.push(e.to_string());
        }
    }
}

/// SIGKILLs every process in `ns` and waits (bounded) for them to go, so the
/// namespace is really released when its name is deleted.
pub(crate) fn kill_all_in(ns: &str) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<i32> = match cmd::ip(&["netns", "pids", ns]) {
            Ok(out) => out
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect(),
            Err(_) => return,
        };
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for p in pids {
            // A stopped process dies of SIGKILL too; SIGCONT first anyway so
            // that a parent waiting on it is not left hanging.
            let _ = kill(Pid::from_raw(p), Signal::SIGCONT);
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes every registered network. Called from the signal thread.
fn remove_all_live() {
    let all: Vec<(String, Vec<String>)> = std::mem::take(&mut *live()).into_iter().collect();
    for (prefix, namespaces) in all {
        let mut errors = Vec::new();
        for ns in &namespaces {
            remove_namespace(ns, &mut errors);
        }
        eprintln!(
            "flotilla-tests: interrupted; removed network {prefix} ({} namespaces){}",
            namespaces.len(),
            if errors.is_empty() {
                String::new()
            } else {
                format!(", errors: {}", errors.join("; "))
            }
        );
    }
}

fn install_signal_handler() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(mut signals) => {
                std::thread::spawn(move || {
                    if let Some(sig) = signals.forever().next() {
                        remove_all_live();
                        // The conventional status of death by a signal.
                        std::process::exit(128 + sig);
                    }
                });
            }
            Err(e) => eprintln!(
                "flotilla-tests: cannot watch SIGINT/SIGTERM ({e}); an interrupted run \
                 leaves namespaces that the next run sweeps"
            ),
        }
    });
}

/// [`sweep_dead_runs`], once per process.
pub(crate) fn sweep_once() {
    static SWEPT: OnceLock<usize> = OnceLock::new();
    SWEPT.get_or_init(sweep_dead_runs);
}

/// Removes the namespaces of runs whose owning process is gone (and every
/// process still inside them). Returns how many namespaces it removed.
pub fn sweep_dead_runs() -> usize {
    {
        let Ok(list) = cmd::ip(&["netns", "list"]) else {
            return 0;
        };
        // Group by owner, and remove host namespaces before bridges (their
        // role sorts after the host names only by accident, so order it).
        let mut stale: Vec<String> = list
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| name.starts_with(NS_PREFIX) && !owner_alive(name))
            .map(str::to_owned)
            .collect();
        stale.sort_by_key(|n| (n.ends_with("-br"), n.clone()));
        let mut errors = Vec::new();
        for ns in &stale {
            remove_namespace(ns, &mut errors);
        }
        if !stale.is_empty() {
            eprintln!(
                "flotilla-tests: swept {} namespaces of dead runs{}",
                stale.len(),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" (errors: {})", errors.join("; "))
                }
            );
        }
        stale.len()
    }
}

/// Whether the process that made namespace `name` still runs. A name that
/// does not parse is treated as alive: the sweep only removes what it is sure
/// of.
fn owner_alive(name: &str) -> bool {
    let mut parts = name[NS_PREFIX.len()..].split('-');
    let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
        return true;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return true;
    };
    match start_time(pid) {
        None => false,
        Some(now) => now == start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespaces_count_as_alive() {
        let name = format!("{NS_PREFIX}{}-0-h1", owner_tag());
        assert!(owner_alive(&name));
    }

    #[test]
    fn reused_pid_with_another_start_time_is_dead() {
        let pid = std::process::id();
        let start = start_time(pid).unwrap_or(0);
        assert!(!owner_alive(&format!(
            "{NS_PREFIX}{pid}-{}-0-br",
            start + 1
        )));
    }

    #[test]
    fn unparsable_names_are_left_alone() {
        assert!(owner_alive("flt-something-else"));
        assert!(owner_alive("flt-"));
    }
}
