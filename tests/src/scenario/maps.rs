//! The replicated maps on a virtual LAN: scenarios (b) map updates on both
//! sides of a partition and (c) the primary server killed and restarted
//! during a stream of updates, and the map operations the `nemesis --mgmtd`
//! workload uses.
//!
//! Everything goes through the real `monitor map ...` commands, against the
//! daemons' Unix sockets, as in [`super::mgmt`]: what a user sees (exit
//! status, the refusal's text, `map list`, `map history`) is what is
//! checked, and every scenario ends with [`MgmtFleet::finish`], the gc-core
//! checker over every host's event log.

use super::mgmt::{MgmtFleet, MgmtOptions, MgmtOutcome, MonitorRun, MEMBERS_TIMEOUT};
use super::ScenarioError;
use crate::faults::Fault;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long the replicas may take to converge after a heal or a restart.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one update may be retried (same id) before the scenario gives
/// up on it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// The most attempts at one update, whatever the time.
const MAX_ATTEMPTS: u32 = 60;

/// What one `monitor map` update printed, as the user would read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Exit 0: applied at this map version. `duplicate`: a resend whose
    /// first copy had been applied (this is that first outcome).
    Applied {
        /// The version it took.
        version: u64,
        /// It had been applied before.
        duplicate: bool,
    },
    /// The map's state machine rejected it (compare-and-set, a map that
    /// exists): ordered, but no entry changed.
    Rejected(String),
    /// A membership change cut it off: it may or may not be applied.
    Unknown,
    /// Refused outside the primary component.
    NotPrimary,
    /// Refused for another reason (settling, busy): nothing changed.
    Refused(String),
    /// The monitor could not reach its daemon (exit 2): nothing was sent.
    NotSent(String),
    /// Anything else: the monitor's text, for a finding.
    Other(String),
}

impl Answer {
    /// Whether the update may have been applied although not acknowledged.
    pub fn maybe_applied(&self) -> bool {
        matches!(self, Answer::Unknown | Answer::Other(_))
    }
}

/// Reads what `monitor --json map set/create/...` printed.
pub fn answer(run: &MonitorRun) -> Answer {
    let Some(json) = &run.json else {
        if run.text.contains("outcome unknown") {
            return Answer::Unknown;
        }
        if run.code == Some(2) {
            return Answer::NotSent(run.text.trim().to_owned());
        }
        return Answer::Other(format!("exit {:?}: {}", run.code, run.text.trim()));
    };
    let r = &json["response"];
    if let Some(o) = r.get("Outcome") {
        if let Some(v) = o["outcome"]["Applied"]["version"].as_u64() {
            return Answer::Applied {
                version: v,
                duplicate: o["duplicate"].as_bool().unwrap_or(false),
            };
        }
        return Answer::Rejected(o["outcome"].to_string());
    }
    if r.get("Unknown").is_some() {
        return Answer::Unknown;
    }
    if let Some(e) = r.get("Error") {
        if e.get("NotPrimary").is_some() {
            return Answer::NotPrimary;
        }
        return Answer::Refused(e.to_string());
    }
    Answer::Other(format!("exit {:?}: {}", run.code, run.text.trim()))
}

/// A fresh update id, as `--id` takes it.
pub fn new_id(rng: &mut fastrand::Rng) -> String {
    format!("{:032x}", rng.u128(..))
}

/// Runs `monitor --json map ARGS --id ID` on host `h`.
pub fn update(
    fleet: &MgmtFleet,
    h: usize,
    args: &[&str],
    id: &str,
) -> Result<(Answer, MonitorRun), ScenarioError> {
    let mut all = vec!["map"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--id", id]);
    let run = fleet.monitor(h, &all)?;
    Ok((answer(&run), run))
}

/// One acknowledged update.
#[derive(Clone, Debug)]
pub struct Acked {
    /// The key set.
    pub key: String,
    /// Its value.
    pub value: String,
    /// The update id.
    pub id: String,
    /// The map version it took.
    pub version: u64,
}

/// How an update that had to be retried went.
#[derive(Clone, Debug, Default)]
pub struct Tries {
    /// Attempts made.
    pub attempts: u32,
    /// Answers that said the outcome was unknown.
    pub unknown: u32,
    /// Whether the final answer said a previous copy had been applied.
    pub duplicate: bool,
}

/// Sends `map ARGS --id ID` through `via[0]`, then the next host of `via`
/// after each failed attempt, with the same id, until it is applied;
/// bounded by [`APPLY_TIMEOUT`] and [`MAX_ATTEMPTS`]. `Ok(None)`: never
/// applied (what the last answer was is in the error text of `last`).
pub fn apply(
    fleet: &MgmtFleet,
    via: &[usize],
    args: &[&str],
    id: &str,
    last: &mut String,
) -> Result<Option<(u64, Tries)>, ScenarioError> {
    let start = Instant::now();
    let mut tries = Tries::default();
    while tries.attempts < MAX_ATTEMPTS && start.elapsed() < APPLY_TIMEOUT && !via.is_empty() {
        let h = via[tries.attempts as usize % via.len()];
        tries.attempts += 1;
        let (a, run) = update(fleet, h, args, id)?;
        match a {
            Answer::Applied { version, duplicate } => {
                tries.duplicate = duplicate;
                return Ok(Some((version, tries)));
            }
            Answer::Unknown => tries.unknown += 1,
            _ => {}
        }
        *last = format!("h{}: {a:?} ({})", h + 1, run.text.trim());
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(None)
}

/// A map's version and its entries (key -> (value, version)).
pub type Listing = (u64, BTreeMap<String, (String, u64)>);

/// `map list MAP` on host `h`; `None` when it does not answer with a
/// listing.
pub fn listing(fleet: &MgmtFleet, h: usize, map: &str) -> Option<Listing> {
    let run = fleet
        .monitor(h, &["map", "list", map, "--limit", "10000"])
        .ok()?;
    let l = &run.json.as_ref()?["response"]["Listing"];
    let version = l["version"].as_u64()?;
    let mut entries = BTreeMap::new();
    for e in l["entries"].as_array()? {
        let key = e[0].as_str()?.to_owned();
        let value = e[1]["value"].as_str()?.to_owned();
        entries.insert(key, (value, e[1]["version"].as_u64()?));
    }
    Some((version, entries))
}

/// `map list` (every map with its version and entry count) on host `h`.
pub fn maps_list(fleet: &MgmtFleet, h: usize) -> Option<Vec<(String, u64, u64)>> {
    let run = fleet.monitor(h, &["map", "list"]).ok()?;
    let maps = run.json.as_ref()?["response"]["Maps"]["maps"].as_array()?;
    maps.iter()
        .map(|m| {
            Some((
                m["name"].as_str()?.to_owned(),
                m["version"].as_u64()?,
                m["entries"].as_u64()?,
            ))
        })
        .collect()
}

/// A map's history: the oldest version kept, and (version, id, applied)
/// per update.
pub type History = (u64, Vec<(u64, String, bool)>);

/// A map's history on host `h`; `None` when it does not answer.
pub fn history(fleet: &MgmtFleet, h: usize, map: &str) -> Option<History> {
    let run = fleet
        .monitor(h, &["map", "history", map, "--limit", "10000"])
        .ok()?;
    let hist = &run.json.as_ref()?["response"]["History"];
    let first_kept = hist["first_kept"].as_u64()?;
    let entries = hist["entries"]
        .as_array()?
        .iter()
        .map(|e| {
            Some((
                e["version"].as_u64()?,
                e["id"].as_str()?.to_owned(),
                e["outcome"].get("Applied").is_some(),
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((first_kept, entries))
}

/// Waits (bounded) until every host of `on` lists `map` identically, at
/// `min_version` or later; returns that listing and how long it took.
pub fn wait_converged(
    fleet: &MgmtFleet,
    on: &[usize],
    map: &str,
    min_version: u64,
    timeout: Duration,
) -> Result<(Listing, Duration), ScenarioError> {
    let start = Instant::now();
    loop {
        let all: Vec<Option<Listing>> = on.iter().map(|&h| listing(fleet, h, map)).collect();
        if let Some(Some(first)) = all.first() {
            if first.0 >= min_version && all.iter().all(|l| l.as_ref() == Some(first)) {
                return Ok((first.clone(), start.elapsed()));
            }
        }
        if start.elapsed() >= timeout {
            let versions: Vec<String> = on
                .iter()
                .zip(&all)
                .map(|(h, l)| format!("h{}: {:?}", h + 1, l.as_ref().map(|l| l.0)))
                .collect();
            return Err(ScenarioError::Timeout {
                what: format!("the replicas of {map} to converge at version >= {min_version}"),
                waited: timeout,
                seen: versions.join(", "),
            });
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Checks, on every host of `on`, that every acknowledged update is in the
/// map's history at the version it was acknowledged with, applied, and
/// that no id of `ids` (acknowledged or resent after an unknown outcome) was
/// applied twice. Returns how many acknowledged updates were older than
/// what a host's history keeps (compacted: not checkable there).
pub fn check_histories(
    fleet: &MgmtFleet,
    out: &mut MgmtOutcome,
    on: &[usize],
    map: &str,
    acked: &[Acked],
    ids: &[String],
) -> u64 {
    let mut compacted = 0;
    for &h in on {
        let Some((first_kept, entries)) = history(fleet, h, map) else {
            out.violations
                .push(format!("h{}: `map history {map}` did not answer", h + 1));
            continue;
        };
        let by_version: BTreeMap<u64, (&str, bool)> = entries
            .iter()
            .map(|(v, id, ok)| (*v, (id.as_str(), *ok)))
            .collect();
        for a in acked {
            if a.version < first_kept {
                compacted += 1;
                continue;
            }
            match by_version.get(&a.version) {
                Some((id, true)) if *id == a.id => {}
                other => out.violations.push(format!(
                    "h{}: acknowledged update {} (set {} at version {}) is not in the history: {other:?}",
                    h + 1,
                    a.id,
                    a.key,
                    a.version
                )),
            }
        }
        let mut count: BTreeMap<&str, u32> = BTreeMap::new();
        for (_, id, applied) in &entries {
            if *applied {
                *count.entry(id.as_str()).or_default() += 1;
            }
        }
        for id in ids {
            let n = count.get(id.as_str()).copied().unwrap_or(0);
            if n > 1 {
                out.violations.push(format!(
                    "h{}: update {id} was applied {n} times (at most once promised)",
                    h + 1
                ));
            }
        }
        // Versions are gap-free from the oldest kept.
        let versions: Vec<u64> = entries.iter().map(|e| e.0).collect();
        if versions
            .windows(2)
            .any(|w| w.get(1).copied() != w.first().map(|v| v + 1))
        {
            out.violations
                .push(format!("h{}: the history of {map} has gaps", h + 1));
        }
    }
    compacted
}

/// The node id mgmtd derives from a host name (FNV-1a, as
/// `mgmtd::config::derive_node_id`): how a log line's `n<id>.<incarnation>`
/// names a host.
fn node_id(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// The primary server host `h`'s daemon logged last ("maps settled: the
/// primary server is n<id>.<incarnation>"), as a host index.
pub fn logged_primary(fleet: &MgmtFleet, h: usize) -> Option<usize> {
    let log = fleet.daemon_log(h);
    let (_, rest) = log.rsplit_once("the primary server is n")?;
    let node: u32 = rest.split('.').next()?.parse().ok()?;
    fleet
        .vlan
        .hosts()
        .iter()
        .position(|host| node_id(&host.name) == node)
}

/// Waits (bounded) until every host of `on` has logged the same primary
/// server, and returns it.
pub fn wait_primary(
    fleet: &MgmtFleet,
    on: &[usize],
    timeout: Duration,
) -> Result<usize, ScenarioError> {
    let start = Instant::now();
    loop {
        let seen: Vec<Option<usize>> = on.iter().map(|&h| logged_primary(fleet, h)).collect();
        if let Some(Some(p)) = seen.first() {
            if seen.iter().all(|s| *s == Some(*p)) {
                return Ok(*p);
            }
        }
        if start.elapsed() >= timeout {
            return Err(ScenarioError::Timeout {
                what: "the hosts to agree on the primary server".into(),
                waited: timeout,
                seen: format!("{seen:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn maps_fleet(hosts: usize) -> Result<MgmtFleet, ScenarioError> {
    let mut opts = MgmtOptions::new(hosts);
    opts.maps = true;
    MgmtFleet::start_with(&opts)
}

/// Creates map `map` through host `h` (retried: the maps settle after the
/// fleet forms).
fn create(
    fleet: &MgmtFleet,
    out: &mut MgmtOutcome,
    h: usize,
    map: &str,
    rng: &mut fastrand::Rng,
) -> Result<(), ScenarioError> {
    let mut last = String::new();
    match apply(fleet, &[h], &["create", map], &new_id(rng), &mut last)? {
        Some((v, _)) => {
            out.notes.push(format!("map create {map}: version {v}"));
            Ok(())
        }
        None => Err(ScenarioError::Timeout {
            what: format!("map create {map}"),
            waited: APPLY_TIMEOUT,
            seen: last,
        }),
    }
}

/// Sets `key` of map `kv` through the hosts `via` until applied, recording
/// it in `acked`; a set never applied is a violation.
fn set_acked(
    fleet: &MgmtFleet,
    out: &mut MgmtOutcome,
    via: &[usize],
    key: &str,
    value: &str,
    acked: &mut Vec<Acked>,
    rng: &mut fastrand::Rng,
) -> Result<Option<Tries>, ScenarioError> {
    let id = new_id(rng);
    let mut last = String::new();
    match apply(fleet, via, &["set", "kv", key, value], &id, &mut last)? {
        Some((version, tries)) => {
            acked.push(Acked {
                key: key.into(),
                value: value.into(),
                id,
                version,
            });
            Ok(Some(tries))
        }
        None => {
            out.violations.push(format!(
                "set {key} through {via:?} was never applied: {last}"
            ));
            Ok(None)
        }
    }
}

/// Checks that `listing` holds every acknowledged update that is the
/// latest acknowledged write of its key.
fn check_acked_present(out: &mut MgmtOutcome, label: &str, listing: &Listing, acked: &[Acked]) {
    let mut latest: BTreeMap<&str, &Acked> = BTreeMap::new();
    for a in acked {
        if latest
            .get(a.key.as_str())
            .is_none_or(|b| b.version < a.version)
        {
            latest.insert(&a.key, a);
        }
    }
    for a in latest.values() {
        match listing.1.get(&a.key) {
            Some((v, ver)) if *v == a.value && *ver == a.version => {}
            other => out.violations.push(format!(
                "{label}: acknowledged {}={} (version {}) is missing: {other:?}",
                a.key, a.value, a.version
            )),
        }
    }
}

/// (b) Map updates on both sides of a partition. Five hosts with the
/// maps over all of them; cut {h1,h2,h3} | {h4,h5}. Through a minority
/// host an update is refused (exit 1) with the "not in the primary
/// component" message naming the hosts it can reach, and a plain read
/// answers flagged as possibly stale; through majority hosts updates are
/// applied. After the heal every replica lists the same entries at the
/// same versions (`map list MAP` and `map list`), every acknowledged update
/// is there at its version, and nothing refused is.
pub fn map_updates_across_partition(hosts: usize) -> Result<MgmtOutcome, ScenarioError> {
    let mut out = MgmtOutcome {
        name: "(b) map updates on both sides of a partition".into(),
        ..MgmtOutcome::default()
    };
    let mut rng = fastrand::Rng::with_seed(0xb);
    let mut fleet = maps_fleet(hosts)?;
    let all: Vec<usize> = (0..hosts).collect();
    let cut = hosts.div_ceil(2);
    let near: Vec<usize> = (0..cut).collect();
    let far: Vec<usize> = (cut..hosts).collect();
    let mut acked = Vec::new();

    create(&fleet, &mut out, 0, "kv", &mut rng)?;
    set_acked(&fleet, &mut out, &[0], "a", "before", &mut acked, &mut rng)?;
    wait_converged(&fleet, &all, "kv", 2, CONVERGE_TIMEOUT)?;

    fleet.inject(Fault::Partition(vec![near.clone(), far.clone()]))?;
    let t = fleet.wait_members(&[near.clone(), far.clone()], MEMBERS_TIMEOUT)?;
    out.notes.push(format!(
        "each side's M is its own hosts {:.2} s after the cut",
        t.as_secs_f64()
    ));

    // The minority refuses, saying why and naming what it can reach. Its
    // maps may take a moment to leave the old primary view: bounded retry.
    let far_names = super::mgmt::names(far.iter().copied());
    let near_names = super::mgmt::names(near.iter().copied());
    for &f in &far {
        let key = format!("minority-h{}", f + 1);
        let id = new_id(&mut rng);
        let start = Instant::now();
        // None: refused as promised; Some: what went wrong instead.
        let failure = loop {
            let run = fleet.monitor_text(f, &["map", "set", "kv", &key, "x", "--id", &id])?;
            if run.code == Some(0) {
                break Some(format!(
                    "an update in the minority was applied: {}",
                    run.text.trim()
                ));
            }
            let names_ok = far_names.iter().all(|n| run.text.contains(n.as_str()))
                && !near_names.iter().any(|n| run.text.contains(n.as_str()));
            if run.code == Some(1) && run.text.contains("not in the primary component") && names_ok
            {
                out.notes.push(format!(
                    "minority h{} refused (exit 1) {:.2} s after the cut's M: {}",
                    f + 1,
                    start.elapsed().as_secs_f64(),
                    run.text.trim()
                ));
                break None;
            }
            if start.elapsed() >= CONVERGE_TIMEOUT {
                break Some(format!(
                    "no clear refusal in the minority; last: exit {:?}: {}",
                    run.code,
                    run.text.trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        if let Some(failure) = failure {
            out.violations.push(format!("h{}: {failure}", f + 1));
        }
    }
    let run = fleet.monitor_text(far[0], &["map", "get", "kv", "a"])?;
    if run.code != Some(0) || !run.text.contains("before") || !run.text.contains("may be stale") {
        out.violations.push(format!(
            "a plain read in the minority: want exit 0, the value and \"may be stale\"; got exit {:?}: {}",
            run.code,
            run.text.trim()
        ));
    }

    // The majority goes on, through each of its hosts in turn.
    let mut retried = 0;
    for k in 0..6 {
        let via = near[k % near.len()];
        let tries = set_acked(
            &fleet,
            &mut out,
            &[via],
            &format!("m{k}"),
            &format!("v{k}"),
            &mut acked,
            &mut rng,
        )?;
        retried += tries.map_or(0, |t| t.attempts - 1);
    }
    let majority_version = acked.iter().map(|a| a.version).max().unwrap_or(0);
    out.notes.push(format!(
        "majority: 6 updates applied through {} (retries: {retried}), map version {majority_version}",
        near_names.join(",")
    ));
    wait_converged(&fleet, &near, "kv", majority_version, CONVERGE_TIMEOUT)?;

    fleet.inject(Fault::Heal)?;
    let t = fleet.wait_members(std::slice::from_ref(&all), MEMBERS_TIMEOUT)?;
    let (listing, c) = wait_converged(&fleet, &all, "kv", majority_version, CONVERGE_TIMEOUT)?;
    out.notes.push(format!(
        "after the heal: M whole in {:.2} s, every replica at version {} with {} entries {:.2} s later",
        t.as_secs_f64(),
        listing.0,
        listing.1.len(),
        c.as_secs_f64()
    ));
    if listing.0 != majority_version {
        out.violations.push(format!(
            "after the heal the map is at version {}, the majority left it at {majority_version}",
            listing.0
        ));
    }
    check_acked_present(&mut out, "after the heal", &listing, &acked);
    for f in &far {
        if listing.1.contains_key(&format!("minority-h{}", f + 1)) {
            out.violations.push(format!(
                "a refused minority update (h{}) is in the map",
                f + 1
            ));
        }
    }
    let ids: Vec<String> = acked.iter().map(|a| a.id.clone()).collect();
    check_histories(&fleet, &mut out, &all, "kv", &acked, &ids);
    let lists: Vec<Option<Vec<(String, u64, u64)>>> =
        all.iter().map(|&h| maps_list(&fleet, h)).collect();
    match lists.first() {
        Some(Some(first)) if lists.iter().all(|l| l.as_ref() == Some(first)) => out
            .notes
            .push(format!("`map list` on every host: {first:?}")),
        _ => out
            .violations
            .push(format!("`map list` differs between the hosts: {lists:?}")),
    }

    // A former minority host updates again.
    let tries = set_acked(
        &fleet,
        &mut out,
        &[far[0]],
        "after",
        "heal",
        &mut acked,
        &mut rng,
    )?;
    if tries.is_some() {
        let (listing, _) =
            wait_converged(&fleet, &all, "kv", majority_version + 1, CONVERGE_TIMEOUT)?;
        check_acked_present(&mut out, "after an update from h4", &listing, &acked);
    }
    fleet.finish(out)
}

/// (c) The primary server killed (SIGKILL) and restarted during a stream
/// of updates sent through another host. Every update is sent with its own
/// id; an answer of *unknown* (or a lost connection) is resent with the
/// same id until it is applied. The primary server is killed while an
/// update is in flight, and restarted (from its log) while another is.
/// After the recovery every replica, the restarted one included, lists
/// every acknowledged update at its version, and no id was applied twice.
pub fn primary_killed_during_updates(hosts: usize) -> Result<MgmtOutcome, ScenarioError> {
    const UPDATES: usize = 30;
    const KILL_AT: usize = 8;
    const RESTART_AT: usize = 16;
    let mut out = MgmtOutcome {
        name: "(c) the primary server killed during updates".into(),
        ..MgmtOutcome::default()
    };
    let mut rng = fastrand::Rng::with_seed(0xc);
    let mut fleet = maps_fleet(hosts)?;
    let all: Vec<usize> = (0..hosts).collect();
    create(&fleet, &mut out, 0, "kv", &mut rng)?;
    let primary = wait_primary(&fleet, &all, CONVERGE_TIMEOUT)?;
    let writer = (primary + 1) % hosts;
    out.notes.push(format!(
        "the primary server is h{} (every host logged it); updates go through h{}",
        primary + 1,
        writer + 1
    ));
    let mut acked: Vec<Acked> = Vec::new();
    let mut ids = Vec::new();
    let mut unknown = 0;
    let mut duplicates = 0;
    let mut killed_at = None;
    let mut first_after_kill = None;
    for k in 0..UPDATES {
        let key = format!("k{k}");
        let value = format!("v{k}");
        let id = new_id(&mut rng);
        ids.push(id.clone());
        let pending =
            fleet.spawn_monitor(writer, &["map", "set", "kv", &key, &value, "--id", &id])?;
        if k == KILL_AT || k == RESTART_AT {
            // While the update is on its way to the primary server.
            std::thread::sleep(Duration::from_millis(30));
            if k == KILL_AT {
                fleet.inject(Fault::Kill(primary))?;
                killed_at = Some(Instant::now());
            } else {
                fleet.inject(Fault::Restart(primary))?;
            }
        }
        let first = answer(&pending.wait()?);
        let settled = match first {
            Answer::Applied { version, .. } => Some(version),
            other => {
                if other.maybe_applied() {
                    unknown += 1;
                }
                // Resend with the same id: applied at most once.
                let mut last = format!("{other:?}");
                match apply(
                    &fleet,
                    &[writer],
                    &["set", "kv", &key, &value],
                    &id,
                    &mut last,
                )? {
                    Some((version, tries)) => {
                        unknown += tries.unknown;
                        duplicates += u32::from(tries.duplicate);
                        out.notes.push(format!(
                            "update {k}: first answer {other:?}; applied at version {version} after {} resend(s){}",
                            tries.attempts,
                            if tries.duplicate { " (the first copy had been applied)" } else { "" }
                        ));
                        Some(version)
                    }
                    None => {
                        out.violations
                            .push(format!("update {k} was never applied: {last}"));
                        None
                    }
                }
            }
        };
        if let Some(version) = settled {
            if killed_at.is_some() && first_after_kill.is_none() {
                first_after_kill = killed_at.map(|t| t.elapsed());
            }
            acked.push(Acked {
                key,
                value,
                id,
                version,
            });
        }
    }
    if let Some(d) = first_after_kill {
        out.notes.push(format!(
            "first update applied {:.2} s after the kill",
            d.as_secs_f64()
        ));
    }
    out.notes.push(format!(
        "{} updates acknowledged, {unknown} unknown answers resent, {duplicates} resends answered as already applied",
        acked.len()
    ));
    let t = fleet.wait_members(std::slice::from_ref(&all), MEMBERS_TIMEOUT)?;
    let top = acked.iter().map(|a| a.version).max().unwrap_or(0);
    let (listing, c) = wait_converged(&fleet, &all, "kv", top, CONVERGE_TIMEOUT)?;
    out.notes.push(format!(
        "recovered: M whole {:.2} s after the stream, every replica at version {} {:.2} s later",
        t.as_secs_f64(),
        listing.0,
        c.as_secs_f64()
    ));
    check_acked_present(&mut out, "after the recovery", &listing, &acked);
    if listing.1.len() != UPDATES {
        out.violations.push(format!(
            "the map has {} keys, {UPDATES} were set",
            listing.1.len()
        ));
    }
    check_histories(&fleet, &mut out, &all, "kv", &acked, &ids);
    match wait_primary(&fleet, &all, CONVERGE_TIMEOUT) {
        Ok(p) => out
            .notes
            .push(format!("the primary server after the recovery: h{}", p + 1)),
        Err(e) => out.notes.push(format!("no agreed primary logged: {e}")),
    }
    fleet.finish(out)
}
