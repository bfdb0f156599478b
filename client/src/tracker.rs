//! The monitor's M and NR sets for one command, as DESIGN.md defines them.
//!
//! - **M** is the latest membership of the `mgmt` group the server reported.
//! - **NR** is the set of targets in M that have not reported the command's
//!   outcome yet.
//!
//! A command starts with NR = the targets in M ([`resolve_targets`] finds
//! them, and the hosts named that are not in M, which are reported as
//! *unknown host*). A result removes its sender from NR. A view that drops a
//! target still in NR records it as *disconnected, outcome unknown*. The
//! command ends when NR is empty, or on its timeout, which records the rest
//! as *timed out*. Every target ends with exactly one outcome: the first
//! thing that happens to it is final, and later news about it is ignored.
//!
//! [`Tracker`] is pure: no clock, no I/O. The server a monitor is connected
//! to runs one to know when a job is done, and the monitor runs one over
//! the same messages to build its report.

use std::collections::{BTreeMap, BTreeSet};

use crate::message::{Accepted, Targets, Unfinished};

/// Where one host stands in a command's report.
#[derive(Debug, Clone, PartialEq)]
pub enum HostState<T> {
    /// A target that reported this outcome.
    Reported(T),
    /// A target in NR: no outcome yet.
    Pending,
    /// A target that left NR without an outcome, and why.
    Unfinished(Unfinished),
    /// A host named in the request that is not in M.
    UnknownHost,
    /// A host in M that is not a target.
    NotTargeted,
}

impl<T> HostState<T> {
    /// Whether the host is a target that has no final state yet.
    pub fn is_pending(&self) -> bool {
        matches!(self, HostState::Pending)
    }
}

/// What [`Tracker::on_result`] did with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The outcome is the host's final outcome; the host left NR.
    Recorded,
    /// The host is not a target of the command; the result is ignored.
    NotATarget,
    /// The host already has its final state (an outcome, or disconnected or
    /// timed out); the result is ignored.
    AlreadyFinal,
}

/// How far a command has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Targets with a final state.
    pub done: usize,
    /// Targets in all (those in M at the start).
    pub total: usize,
}

/// The M/NR bookkeeping of one command. See the [module
/// documentation](self).
#[derive(Debug, Clone)]
pub struct Tracker<T> {
    /// The targets in M at the start; `Pending` while in NR.
    targets: BTreeMap<String, HostState<T>>,
    /// Hosts named that were not in M.
    unknown: BTreeSet<String>,
    /// Hosts of M at the start that are not targets.
    not_targeted: BTreeSet<String>,
    /// M, as last reported.
    members: BTreeSet<String>,
    /// How many targets have left NR.
    done: usize,
}

impl<T> Tracker<T> {
    /// Starts a command with M = `members`. NR is the `targets` that are in
    /// M; a target not in M is an unknown host, like every host in
    /// `unknown`.
    pub fn new(
        members: impl IntoIterator<Item = String>,
        targets: impl IntoIterator<Item = String>,
        unknown: impl IntoIterator<Item = String>,
    ) -> Tracker<T> {
        let members: BTreeSet<String> = members.into_iter().collect();
        let mut unknown: BTreeSet<String> = unknown.into_iter().collect();
        let mut nr = BTreeMap::new();
        for target in targets {
            if members.contains(&target) {
                unknown.remove(&target);
                nr.insert(target, HostState::Pending);
            } else {
                unknown.insert(target);
            }
        }
        let not_targeted = members
            .iter()
            .filter(|host| !nr.contains_key(*host))
            .cloned()
            .collect();
        Tracker {
            targets: nr,
            unknown,
            not_targeted,
            members,
            done: 0,
        }
    }

    /// Starts the command a server accepted.
    pub fn from_accepted(accepted: &Accepted) -> Tracker<T> {
        Tracker::new(
            accepted.members.iter().cloned(),
            accepted.targets.iter().cloned(),
            accepted.unknown_hosts.iter().cloned(),
        )
    }

    /// M changed to `members`: every target in NR that is not in it is
    /// recorded as disconnected. Returns those targets.
    pub fn on_view(&mut self, members: impl IntoIterator<Item = String>) -> Vec<String> {
        self.members = members.into_iter().collect();
        let mut dropped = Vec::new();
        for (host, state) in &mut self.targets {
            if state.is_pending() && !self.members.contains(host) {
                *state = HostState::Unfinished(Unfinished::Disconnected);
                dropped.push(host.clone());
            }
        }
        self.done += dropped.len();
        dropped
    }

    /// `host` reported `outcome`: if it is a target in NR, the outcome is
    /// its final one and it leaves NR.
    pub fn on_result(&mut self, host: &str, outcome: T) -> Recorded {
        match self.targets.get_mut(host) {
            None => Recorded::NotATarget,
            Some(state) if !state.is_pending() => Recorded::AlreadyFinal,
            Some(state) => {
                *state = HostState::Reported(outcome);
                self.done += 1;
                Recorded::Recorded
            }
        }
    }

    /// The server stopped waiting: each target still in NR is recorded with
    /// the reason `unfinished` gives for it, or as timed out if it gives
    /// none.
    pub fn on_done(&mut self, unfinished: &[(String, Unfinished)]) {
        let reasons: BTreeMap<&str, Unfinished> = unfinished
            .iter()
            .map(|(host, why)| (host.as_str(), *why))
            .collect();
        for (host, state) in &mut self.targets {
            if state.is_pending() {
                let why = reasons
                    .get(host.as_str())
                    .copied()
                    .unwrap_or(Unfinished::TimedOut);
                *state = HostState::Unfinished(why);
                self.done += 1;
            }
        }
    }

    /// The command's timeout expired: every target still in NR is recorded
    /// as timed out.
    pub fn on_timeout(&mut self) {
        self.on_done(&[]);
    }

    /// Whether NR is empty.
    pub fn is_complete(&self) -> bool {
        self.done == self.targets.len()
    }

    /// NR: the targets without a final state, sorted.
    pub fn pending(&self) -> impl Iterator<Item = &str> + '_ {
        self.targets
            .iter()
            .filter(|(_, state)| state.is_pending())
            .map(|(host, _)| host.as_str())
    }

    /// Targets done, of all targets.
    pub fn progress(&self) -> Progress {
        Progress {
            done: self.done,
            total: self.targets.len(),
        }
    }

    /// M, as last reported, sorted.
    pub fn members(&self) -> impl Iterator<Item = &str> + '_ {
        self.members.iter().map(String::as_str)
    }

    /// Whether `host` is a target of the command.
    pub fn is_target(&self, host: &str) -> bool {
        self.targets.contains_key(host)
    }

    /// The state of `host`, if it is a target.
    pub fn state(&self, host: &str) -> Option<&HostState<T>> {
        self.targets.get(host)
    }

    /// The report: every target, unknown host and host of M that was not
    /// targeted, each once, sorted by name.
    pub fn into_report(self) -> Vec<(String, HostState<T>)> {
        let mut report: BTreeMap<String, HostState<T>> = self.targets;
        for host in self.unknown {
            report.entry(host).or_insert(HostState::UnknownHost);
        }
        for host in self.not_targeted {
            report.entry(host).or_insert(HostState::NotTargeted);
        }
        report.into_iter().collect()
    }
}

/// The targets of a command among the hosts of M.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// The targets in M, sorted.
    pub targets: Vec<String>,
    /// The hosts named that are not in M, sorted.
    pub unknown: Vec<String>,
}

/// Finds the targets of `targets` among `members`, the hosts of M with
/// their attributes.
///
/// - [`Targets::All`]: every member.
/// - [`Targets::Hosts`]: the names that are members; the others are
///   unknown hosts.
/// - [`Targets::Where`]: the members whose attributes have every one of the
///   values (a missing attribute matches nothing).
pub fn resolve_targets<'a>(
    targets: &Targets,
    members: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
) -> Resolution {
    let members: BTreeMap<&str, &BTreeMap<String, String>> = members.into_iter().collect();
    match targets {
        Targets::All => Resolution {
            targets: members.keys().map(|h| (*h).to_owned()).collect(),
            unknown: Vec::new(),
        },
        Targets::Hosts(hosts) => {
            let named: BTreeSet<&str> = hosts.iter().map(String::as_str).collect();
            let (found, unknown): (Vec<&str>, Vec<&str>) =
                named.into_iter().partition(|h| members.contains_key(h));
            Resolution {
                targets: found.into_iter().map(str::to_owned).collect(),
                unknown: unknown.into_iter().map(str::to_owned).collect(),
            }
        }
        Targets::Where(conditions) => Resolution {
            targets: members
                .iter()
                .filter(|(_, attributes)| {
                    conditions
                        .iter()
                        .all(|(key, value)| attributes.get(key) == Some(value))
                })
                .map(|(host, _)| (*host).to_owned())
                .collect(),
            unknown: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn five() -> Tracker<u32> {
        Tracker::new(
            names(&["h1", "h2", "h3", "h4", "h5"]),
            names(&["h1", "h2", "h3", "h4"]),
            names(&[]),
        )
    }

    #[test]
    fn nr_starts_as_the_targets_in_m() {
        let tracker: Tracker<u32> = Tracker::new(
            names(&["h1", "h2", "h3"]),
            names(&["h1", "h3", "h9"]),
            names(&["h8"]),
        );
        assert_eq!(tracker.pending().collect::<Vec<_>>(), ["h1", "h3"]);
        assert_eq!(tracker.progress(), Progress { done: 0, total: 2 });
        assert!(!tracker.is_complete());
        assert_eq!(
            tracker.into_report(),
            vec![
                ("h1".to_owned(), HostState::Pending),
                ("h2".to_owned(), HostState::NotTargeted),
                ("h3".to_owned(), HostState::Pending),
                ("h8".to_owned(), HostState::UnknownHost),
                ("h9".to_owned(), HostState::UnknownHost),
            ]
        );
    }

    #[test]
    fn a_result_removes_its_sender_once() {
        let mut tracker = five();
        assert_eq!(tracker.on_result("h2", 0), Recorded::Recorded);
        assert_eq!(tracker.on_result("h2", 1), Recorded::AlreadyFinal);
        assert_eq!(tracker.on_result("h5", 0), Recorded::NotATarget);
        assert_eq!(tracker.on_result("zz", 0), Recorded::NotATarget);
        assert_eq!(tracker.pending().collect::<Vec<_>>(), ["h1", "h3", "h4"]);
        assert_eq!(tracker.state("h2"), Some(&HostState::Reported(0)));
        for host in ["h1", "h3", "h4"] {
            tracker.on_result(host, 7);
        }
        assert!(tracker.is_complete());
        assert_eq!(tracker.progress(), Progress { done: 4, total: 4 });
    }

    #[test]
    fn a_view_that_drops_a_target_records_it_disconnected() {
        let mut tracker = five();
        tracker.on_result("h1", 0);
        // h1 (done) and h3 (in NR) leave; h6 joins, and is not a target.
        let dropped = tracker.on_view(names(&["h2", "h4", "h5", "h6"]));
        assert_eq!(dropped, ["h3"]);
        assert_eq!(
            tracker.state("h3"),
            Some(&HostState::Unfinished(Unfinished::Disconnected))
        );
        assert_eq!(tracker.state("h1"), Some(&HostState::Reported(0)));
        // A late result of a disconnected host does not change its outcome.
        assert_eq!(tracker.on_result("h3", 0), Recorded::AlreadyFinal);
        // Coming back does not either.
        assert!(tracker.on_view(names(&["h2", "h3", "h4"])).is_empty());
        assert_eq!(
            tracker.state("h3"),
            Some(&HostState::Unfinished(Unfinished::Disconnected))
        );
        // h5 is no target: its leaving changes nothing.
        tracker.on_result("h2", 0);
        tracker.on_result("h4", 0);
        assert!(tracker.is_complete());
        let report = tracker.into_report();
        assert_eq!(report.len(), 5);
        assert!(report.iter().all(|(host, _)| host != "h6"));
    }

    #[test]
    fn timeout_records_the_rest_timed_out() {
        let mut tracker = five();
        tracker.on_result("h1", 0);
        tracker.on_view(names(&["h1", "h3", "h4", "h5"]));
        tracker.on_timeout();
        assert!(tracker.is_complete());
        let report = tracker.into_report();
        let states: Vec<_> = report.iter().map(|(_, s)| s.clone()).collect();
        assert_eq!(
            states,
            vec![
                HostState::Reported(0),
                HostState::Unfinished(Unfinished::Disconnected),
                HostState::Unfinished(Unfinished::TimedOut),
                HostState::Unfinished(Unfinished::TimedOut),
                HostState::NotTargeted,
            ]
        );
    }

    #[test]
    fn done_gives_reasons_and_times_out_the_rest() {
        let mut tracker = five();
        tracker.on_done(&[
            ("h1".to_owned(), Unfinished::Running),
            ("h2".to_owned(), Unfinished::NoRecord),
            ("h5".to_owned(), Unfinished::Running),
        ]);
        assert!(tracker.is_complete());
        assert_eq!(
            tracker.state("h1"),
            Some(&HostState::Unfinished(Unfinished::Running))
        );
        assert_eq!(
            tracker.state("h2"),
            Some(&HostState::Unfinished(Unfinished::NoRecord))
        );
        assert_eq!(
            tracker.state("h3"),
            Some(&HostState::Unfinished(Unfinished::TimedOut))
        );
        assert_eq!(tracker.state("h5"), None);
    }

    #[test]
    fn no_targets_is_complete_at_once() {
        let tracker: Tracker<u32> = Tracker::new(names(&["h1"]), names(&[]), names(&["x"]));
        assert!(tracker.is_complete());
    }

    #[test]
    fn every_target_gets_exactly_one_outcome_whatever_the_order() {
        // Every interleaving of results, view drops and a timeout for three
        // targets ends with each target final exactly once.
        let events = ["r1", "r2", "r3", "v1", "v2", "t"];
        let mut order: Vec<usize> = (0..events.len()).collect();
        let mut count = 0;
        permute(&mut order, 0, &mut |order| {
            let mut tracker: Tracker<u8> = Tracker::new(
                names(&["h1", "h2", "h3"]),
                names(&["h1", "h2", "h3"]),
                names(&[]),
            );
            let mut members = BTreeSet::from(["h1", "h2", "h3"]);
            for &i in order.iter() {
                match events[i] {
                    "r1" => drop(tracker.on_result("h1", 1)),
                    "r2" => drop(tracker.on_result("h2", 2)),
                    "r3" => drop(tracker.on_result("h3", 3)),
                    "v1" => {
                        members.remove("h1");
                        tracker.on_view(members.iter().map(|s| (*s).to_owned()));
                    }
                    "v2" => {
                        members.remove("h2");
                        tracker.on_view(members.iter().map(|s| (*s).to_owned()));
                    }
                    _ => tracker.on_timeout(),
                }
            }
            assert!(tracker.is_complete());
            assert_eq!(tracker.progress(), Progress { done: 3, total: 3 });
            let report = tracker.into_report();
            assert_eq!(report.len(), 3);
            assert!(report.iter().all(|(_, s)| !s.is_pending()));
            count += 1;
        });
        assert_eq!(count, 720);
    }

    fn permute(order: &mut Vec<usize>, k: usize, visit: &mut dyn FnMut(&[usize])) {
        if k == order.len() {
            visit(order);
            return;
        }
        for i in k..order.len() {
            order.swap(k, i);
            permute(order, k + 1, visit);
            order.swap(k, i);
        }
    }

    #[test]
    fn targets_resolve_among_m() {
        let attrs = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let web1 = attrs(&[("role", "web"), ("os", "linux")]);
        let web2 = attrs(&[("role", "web"), ("os", "freebsd")]);
        let db1 = attrs(&[("role", "db"), ("os", "linux")]);
        let members = || [("web-1", &web1), ("web-2", &web2), ("db-1", &db1)];

        let all = resolve_targets(&Targets::All, members());
        assert_eq!(all.targets, names(&["db-1", "web-1", "web-2"]));
        assert!(all.unknown.is_empty());

        let hosts = resolve_targets(
            &Targets::Hosts(names(&["web-2", "nope", "db-1", "web-2"])),
            members(),
        );
        assert_eq!(hosts.targets, names(&["db-1", "web-2"]));
        assert_eq!(hosts.unknown, names(&["nope"]));

        let role = |pairs: &[(&str, &str)]| {
            Targets::Where(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        let web = resolve_targets(&role(&[("role", "web")]), members());
        assert_eq!(web.targets, names(&["web-1", "web-2"]));
        let linux_web = resolve_targets(&role(&[("role", "web"), ("os", "linux")]), members());
        assert_eq!(linux_web.targets, names(&["web-1"]));
        let none = resolve_targets(&role(&[("rack", "r1")]), members());
        assert!(none.targets.is_empty());
    }
}
