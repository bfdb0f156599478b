//! The replicated maps end to end: real `mgmtd` daemons on loopback, driven
//! by the real `monitor` binary. Partitions come from the daemons' test-only
//! fault control (`testing: { fault_control: true }`, `DATA_DIR/faults`).
//! Every wait is bounded; a fleet is killed when its test ends, passing or
//! not.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use flotilla_tests::{Error, Fleet, FleetOptions};

type TestResult = Result<(), Error>;

/// How long a fleet may take to settle a maps session after a start, a
/// partition or a heal.
const SETTLE: Duration = Duration::from_secs(60);

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A fleet of `n` daemons with maps over all of them, `hosts` rendered to
/// `HOME/hosts.rendered`, and the fault control on.
fn maps_fleet(n: usize) -> Result<Fleet, Error> {
    let hosts: Vec<String> = (1..=n).map(|i| format!("h{i}")).collect();
    let mut options = FleetOptions::new(n);
    options.extra = format!(
        "maps:\n  hosts: [{}]\n  render:\n    - map: hosts\n      file: hosts.rendered\n      template: \"{{value}} {{key}}\"\ntesting:\n  fault_control: true\n",
        hosts.join(", ")
    );
    let fleet = Fleet::start(options)?;
    for i in 0..n {
        fleet.wait_members(i, n, Duration::from_secs(30))?;
    }
    Ok(fleet)
}

/// Runs `monitor ARGS` against daemon `i` until it exits 0, at most `limit`.
fn until_ok(fleet: &Fleet, i: usize, args: &[&str], limit: Duration) -> Result<Output, Error> {
    let deadline = Instant::now() + limit;
    loop {
        let output = fleet.monitor(i, args)?;
        if output.status.success() {
            return Ok(output);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "monitor {args:?} on {} never succeeded; last:\n{}\nlogs:\n{}",
                fleet.daemons[i].name,
                text(&output),
                fleet.logs()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sets `key` in `map` through daemon `i`, retrying (with the same update
/// id after an unknown outcome) until it is applied.
fn set(fleet: &Fleet, i: usize, map: &str, key: &str, value: &str) -> Result<(), Error> {
    let id = format!("{:032x}", fastrand::u128(..));
    until_ok(
        fleet,
        i,
        &["map", "set", map, key, value, "--id", &id],
        SETTLE,
    )?;
    Ok(())
}

/// A map's version, and its entries: key -> (value, version).
type Listing = (u64, BTreeMap<String, (String, u64)>);

/// The entries of `map` (key -> (value, version)) and its version, as
/// daemon `i` has them; `None` if it cannot say.
fn listing(fleet: &Fleet, i: usize, map: &str) -> Option<Listing> {
    let (code, json) = fleet
        .monitor_json(i, &["map", "list", map, "--limit", "10000"])
        .ok()?;
    if code != 0 {
        return None;
    }
    let listing = &json["response"]["Listing"];
    let version = listing["version"].as_u64()?;
    let mut entries = BTreeMap::new();
    for e in listing["entries"].as_array()? {
        let key = e[0].as_str()?.to_owned();
        let value = e[1]["value"].as_str()?.to_owned();
        let v = e[1]["version"].as_u64()?;
        entries.insert(key, (value, v));
    }
    Some((version, entries))
}

/// Waits until every daemon in `on` holds the same listing of `map` as
/// daemon `on[0]`, with at least `min_version`.
fn converged(
    fleet: &Fleet,
    on: &[usize],
    map: &str,
    min_version: u64,
    limit: Duration,
) -> Result<Listing, Error> {
    let deadline = Instant::now() + limit;
    loop {
        let all: Vec<_> = on.iter().map(|&i| listing(fleet, i, map)).collect();
        if let Some(Some(first)) = all.first() {
            if first.0 >= min_version && all.iter().all(|l| l.as_ref() == Some(first)) {
                return Ok(first.clone());
            }
        }
        if Instant::now() > deadline {
            let versions: Vec<_> = all.iter().map(|l| l.as_ref().map(|l| l.0)).collect();
            return Err(format!("the replicas never converged: versions {versions:?}").into());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Cuts daemons `a` off from daemons `b`, both ways.
fn partition(fleet: &Fleet, a: &[usize], b: &[usize]) -> Result<(), Error> {
    let addr = |i: usize| format!("127.0.0.1:{}\n", fleet.daemons[i].port);
    for (side, other) in [(a, b), (b, a)] {
        let blocked: String = other.iter().map(|&i| addr(i)).collect();
        for &i in side {
            std::fs::write(faults_file(fleet, i), &blocked)?;
        }
    }
    Ok(())
}

fn heal(fleet: &Fleet) -> Result<(), Error> {
    for i in 0..fleet.daemons.len() {
        std::fs::write(faults_file(fleet, i), "")?;
    }
    Ok(())
}

fn faults_file(fleet: &Fleet, i: usize) -> PathBuf {
    fleet.daemons[i].home.join("data").join("faults")
}

fn wal(fleet: &Fleet, i: usize) -> PathBuf {
    fleet.daemons[i]
        .home
        .join("data")
        .join("maps")
        .join("maps.wal")
}

#[test]
fn partition_majority_updates_minority_refuses_then_converges() -> TestResult {
    let fleet = maps_fleet(5)?;
    until_ok(&fleet, 0, &["map", "create", "hosts"], SETTLE)?;
    set(&fleet, 0, "hosts", "a", "10.0.0.1")?;
    converged(&fleet, &[0, 1, 2, 3, 4], "hosts", 2, SETTLE)?;

    partition(&fleet, &[0, 1, 2], &[3, 4])?;
    fleet.wait_members(3, 2, Duration::from_secs(30))?;
    fleet.wait_members(0, 3, Duration::from_secs(30))?;

    // The minority refuses, naming the hosts it can reach.
    let deadline = Instant::now() + SETTLE;
    loop {
        let output = fleet.monitor(3, &["map", "set", "hosts", "b", "minority"])?;
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        if output.status.code() == Some(1)
            && stderr.contains("not in the primary component")
            && stderr.contains("h4")
            && stderr.contains("h5")
            && !stderr.contains("h1")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no clear refusal: {}",
            text(&output)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let output = fleet.monitor(4, &["map", "get", "hosts", "a", "--consistent"])?;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    // A plain read answers, flagged as possibly stale.
    let output = fleet.monitor(4, &["map", "get", "hosts", "a"])?;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "10.0.0.1");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("may be stale"),
        "{}",
        text(&output)
    );

    // The majority goes on.
    for k in 0..5 {
        set(&fleet, k % 3, "hosts", &format!("m{k}"), &format!("v{k}"))?;
    }
    let output = until_ok(
        &fleet,
        1,
        &["map", "get", "hosts", "m4", "--consistent"],
        SETTLE,
    )?;
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "v4");
    let (majority_version, _) = converged(&fleet, &[0, 1, 2], "hosts", 7, SETTLE)?;

    // After the heal the minority catches up: same content, same versions.
    heal(&fleet)?;
    let (version, entries) =
        converged(&fleet, &[0, 1, 2, 3, 4], "hosts", majority_version, SETTLE)?;
    assert_eq!(version, majority_version);
    assert!(!entries.contains_key("b"));
    assert_eq!(entries.get("m4").map(|e| e.0.as_str()), Some("v4"));
    // And updates work from a former minority host.
    set(&fleet, 4, "hosts", "after", "heal")?;
    converged(&fleet, &[0, 1, 2, 3, 4], "hosts", version + 1, SETTLE)?;
    Ok(())
}

/// `monitor ARGS` against a socket, outside the fleet (for a writer thread).
fn monitor_at(
    bin: &std::path::Path,
    socket: &std::path::Path,
    args: &[&str],
) -> Result<Output, Error> {
    let mut command = std::process::Command::new(bin);
    command
        .env("FLOTILLA_SOCKET", socket)
        .env_remove("FLOTILLA_CONNECT")
        .args(args);
    flotilla_tests::loopback::run_bounded(command, Duration::from_secs(60))
}

#[test]
fn sigkill_mid_update_loses_no_acknowledged_update() -> TestResult {
    let mut fleet = maps_fleet(3)?;
    until_ok(&fleet, 0, &["map", "create", "kv"], SETTLE)?;
    let bin = fleet.bin.monitor.clone();
    let sockets: Vec<PathBuf> = fleet.daemons.iter().map(|d| d.socket()).collect();
    let (progress_tx, progress_rx) = std::sync::mpsc::channel::<usize>();
    // The writer sets k0, k1, ... one after the other, each with its own
    // id, moving to the next daemon when one fails and retrying the same id
    // (at most once applied); it records what was acknowledged.
    let writer = std::thread::spawn(move || -> Result<Vec<(String, String)>, String> {
        let mut acked = Vec::new();
        let mut target = 1;
        let deadline = Instant::now() + Duration::from_secs(240);
        for k in 0..80 {
            let key = format!("k{k}");
            let value = format!("v{k}");
            let id = format!("{:032x}", fastrand::u128(..));
            loop {
                let output = monitor_at(
                    &bin,
                    &sockets[target],
                    &["map", "set", "kv", &key, &value, "--id", &id],
                )
                .map_err(|e| e.to_string())?;
                if output.status.success() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("the writer is stuck at {key}: {}", text(&output)));
                }
                target = (target + 1) % sockets.len();
                std::thread::sleep(Duration::from_millis(100));
            }
            acked.push((key, value));
            let _ = progress_tx.send(acked.len());
        }
        Ok(acked)
    });
    let wait_for = |n: usize| -> Result<(), Error> {
        loop {
            match progress_rx.recv_timeout(Duration::from_secs(120)) {
                Ok(done) if done >= n => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("the writer made no progress: {e}").into()),
            }
        }
    };
    // Crash a replica, then the daemon the writer talks to, mid-stream;
    // restart each from its log.
    wait_for(15)?;
    fleet.kill(0);
    wait_for(30)?;
    fleet.spawn(0, None)?;
    wait_for(45)?;
    fleet.kill(1);
    wait_for(60)?;
    fleet.spawn(1, None)?;
    let acked = writer
        .join()
        .map_err(|_| "the writer panicked")?
        .map_err(|e| -> Error { e.into() })?;
    assert_eq!(acked.len(), 80);
    let (_, entries) = converged(&fleet, &[0, 1, 2], "kv", 81, SETTLE)?;
    for (key, value) in &acked {
        assert_eq!(entries.get(key).map(|e| &e.0), Some(value), "{key} lost");
    }

    // Every daemon at once: what was acknowledged is on their disks.
    for i in 0..3 {
        fleet.kill(i);
    }
    for i in 0..3 {
        fleet.spawn(i, None)?;
    }
    let (_, entries) = converged(&fleet, &[0, 1, 2], "kv", 81, SETTLE)?;
    for (key, value) in &acked {
        assert_eq!(
            entries.get(key).map(|e| &e.0),
            Some(value),
            "{key} lost after a restart"
        );
    }
    Ok(())
}

#[test]
fn torn_log_tail_is_cut_and_corruption_before_it_stops_the_daemon() -> TestResult {
    let mut fleet = maps_fleet(3)?;
    until_ok(&fleet, 0, &["map", "create", "hosts"], SETTLE)?;
    for k in 0..5 {
        set(&fleet, 0, "hosts", &format!("k{k}"), "v")?;
    }
    converged(&fleet, &[0, 1, 2], "hosts", 6, SETTLE)?;

    // A torn tail: the start of a frame header, as a crash mid-append leaves.
    fleet.kill(2);
    let path = wal(&fleet, 2);
    let mut bytes = std::fs::read(&path)?;
    let good_len = bytes.len();
    bytes.extend_from_slice(&[0x40, 0, 0, 0, 0xde, 0xad]);
    std::fs::write(&path, &bytes)?;
    fleet.spawn(2, None)?;
    fleet.daemons[2].await_log("it was cut", Duration::from_secs(30))?;
    set(&fleet, 0, "hosts", "after", "cut")?;
    converged(&fleet, &[0, 1, 2], "hosts", 7, SETTLE)?;

    // Damage inside the first frame, with synced frames after it: the
    // daemon refuses to start, naming the file and the offset.
    fleet.kill(2);
    let mut bytes = std::fs::read(&path)?;
    assert!(bytes.len() >= good_len, "the log shrank");
    bytes[16 + 8 + 1] ^= 0xff;
    std::fs::write(&path, &bytes)?;
    fleet.spawn(2, None)?;
    let mut child = fleet.daemons[2].child.take().ok_or("not started")?;
    let status = flotilla_tests::loopback::wait_bounded(&mut child, Duration::from_secs(30))?;
    assert!(!status.success());
    let log = fleet.daemons[2].log();
    assert!(
        log.contains("maps.wal is corrupt at byte 16"),
        "the error does not name the file and offset:\n{log}"
    );
    Ok(())
}

#[test]
fn load_atomic_and_chunked_and_render_to_files() -> TestResult {
    let fleet = maps_fleet(3)?;
    let file = fleet.dir.path().join("hosts.yaml");
    let yaml: String = (0..300)
        .map(|i| format!("host{i}: 10.0.{}.{}\n", i / 256, i % 256))
        .collect();
    std::fs::write(&file, yaml)?;
    let file_arg = file.to_string_lossy().to_string();
    let output = until_ok(
        &fleet,
        0,
        &["--json", "map", "load", "hosts", &file_arg],
        SETTLE,
    )?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(report["entries"], 300, "{report}");
    assert_eq!(report["atomic"], true, "{report}");

    let (code, report) =
        fleet.monitor_json(1, &["map", "load", "big", &file_arg, "--chunk", "50"])?;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["entries"], 300, "{report}");
    assert_eq!(report["atomic"], false, "{report}");
    assert!(report["batches"].as_u64() >= Some(6), "{report}");

    let output = until_ok(
        &fleet,
        2,
        &["map", "get", "hosts", "host5", "--consistent"],
        SETTLE,
    )?;
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "10.0.0.5");

    // Every daemon renders the map to its file, one line per entry.
    for d in &fleet.daemons {
        let rendered = d.home.join("hosts.rendered");
        let deadline = Instant::now() + SETTLE;
        loop {
            let text = std::fs::read_to_string(&rendered).unwrap_or_default();
            if text.lines().count() == 300 && text.lines().any(|l| l == "10.0.1.4 host260") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never rendered the map; it has {} lines",
                d.name,
                text.lines().count()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

#[test]
fn load_keeps_values_as_written_and_a_reused_update_id_is_refused() -> TestResult {
    let fleet = maps_fleet(3)?;
    let file = fleet.dir.path().join("typed.yaml");
    std::fs::write(&file, "ver: 1.50\nhex: 0x10\nsci: 1e3\nflag: yes\n")?;
    let file_arg = file.to_string_lossy().to_string();
    until_ok(&fleet, 0, &["map", "load", "typed", &file_arg], SETTLE)?;
    for (key, want) in [
        ("ver", "1.50"),
        ("hex", "0x10"),
        ("sci", "1e3"),
        ("flag", "yes"),
    ] {
        let output = until_ok(
            &fleet,
            1,
            &["map", "get", "typed", key, "--consistent"],
            SETTLE,
        )?;
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), want);
    }

    // A duplicate key refuses the file, naming the key and its lines.
    let dup = fleet.dir.path().join("dup.yaml");
    std::fs::write(&dup, "a: 1\nb: 2\na: 3\n")?;
    let output = fleet.monitor(0, &["map", "load", "typed", &dup.to_string_lossy()])?;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("duplicate key \"a\" (lines 1 and 3)"),
        "{}",
        text(&output)
    );

    // An empty file changes nothing and says so, with the map's version.
    let version = listing(&fleet, 0, "typed").ok_or("no listing")?.0;
    let empty = fleet.dir.path().join("empty.yaml");
    std::fs::write(&empty, "")?;
    let output = until_ok(
        &fleet,
        0,
        &["map", "load", "typed", &empty.to_string_lossy()],
        SETTLE,
    )?;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!(
            "typed: {} holds no entries: nothing was changed, map version {version}",
            empty.display()
        )
    );

    // The same update id for a different update is refused; the same
    // update sent again with it is a retry.
    let id = format!("{:032x}", fastrand::u128(..));
    until_ok(
        &fleet,
        1,
        &["map", "set", "typed", "idk", "v1", "--id", &id],
        SETTLE,
    )?;
    for i in [0, 1, 2] {
        let output = fleet.monitor(i, &["map", "set", "typed", "idk", "DIFFERENT", "--id", &id])?;
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(&format!(
                "update id {id} was already used for a different update of map \"typed\""
            )),
            "{}",
            text(&output)
        );
    }
    let output = fleet.monitor(2, &["map", "set", "typed", "idk", "v1", "--id", &id])?;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("(a retry:"),
        "{}",
        text(&output)
    );
    let output = until_ok(
        &fleet,
        0,
        &["map", "get", "typed", "idk", "--consistent"],
        SETTLE,
    )?;
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "v1");
    Ok(())
}
