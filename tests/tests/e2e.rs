//! End to end: real `mgmtd` daemons on loopback, driven by the real
//! `monitor` binary (and, where a test needs what the monitor does not do,
//! by the client library). Every wait is bounded; a fleet is killed when
//! its test ends, passing or not.

use flotilla_tests::hosts_with;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_client::message::{Request, Simex};
use flotilla_client::{follow, ClusterKey, Connection, Endpoint, JobId, Targets};
use flotilla_tests::{Error, Fleet, FleetOptions};
use serde_json::Value;

type TestResult = Result<(), Error>;

fn host<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["host"] == name)
}

fn text(output: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A shell snippet that prints the daemon's host name: the name of the
/// directory of its configuration, from the daemon's command line.
const WHOAMI: &str =
    r"tr '\0' '\n' < /proc/$PPID/cmdline | grep mgmtd.yaml | xargs dirname | xargs basename";

/// The monitor through h1's socket, running while the test acts on the
/// fleet; stdout and stderr piped.
fn spawn_monitor(fleet: &Fleet, args: &[&str]) -> std::io::Result<std::process::Child> {
    Command::new(&fleet.bin.monitor)
        .env("FLOTILLA_SOCKET", fleet.daemons[0].socket())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

#[test]
fn simex_with_identical_and_differing_output() -> TestResult {
    let fleet = Fleet::start(FleetOptions::new(3))?;
    let (code, report) = fleet.monitor_json(0, &["simex", "--", "echo", "same"])?;
    assert_eq!(code, 0, "{report}");
    assert_eq!(hosts_with(&report, "ok"), ["h1", "h2", "h3"]);
    for name in ["h1", "h2", "h3"] {
        assert_eq!(
            host(&report, name).map(|h| &h["stdout"]),
            Some(&Value::from("same\n"))
        );
    }
    // Identical answers are gathered under one row.
    let table = fleet.monitor(1, &["simex", "--", "echo", "same"])?;
    assert_eq!(table.status.code(), Some(0), "{}", text(&table));
    let shown = String::from_utf8_lossy(&table.stdout);
    assert!(shown.contains("h[1-3] (3)"), "{shown}");

    // Differing answers: one row each, and the right text for each host.
    let (code, report) = fleet.monitor_json(2, &["simex", "--", WHOAMI])?;
    assert_eq!(code, 0, "{report}");
    for name in ["h1", "h2", "h3"] {
        assert_eq!(
            host(&report, name).map(|h| h["stdout"].clone()),
            Some(Value::from(format!("{name}\n")))
        );
    }
    let table = fleet.monitor(0, &["simex", "--", WHOAMI])?;
    let shown = String::from_utf8_lossy(&table.stdout);
    for name in ["h1 (1)", "h2 (1)", "h3 (1)"] {
        assert!(shown.contains(name), "{shown}");
    }

    // A failing command: exit status 1, the code reported per host.
    let (code, report) = fleet.monitor_json(0, &["simex", "--", "exit 3"])?;
    assert_eq!(code, 1);
    assert_eq!(hosts_with(&report, "failed"), ["h1", "h2", "h3"]);
    assert_eq!(
        host(&report, "h2").map(|h| h["exit"].clone()),
        Some(Value::from(3))
    );

    // --where targets by attribute.
    let (code, report) = fleet.monitor_json(0, &["simex", "--where", "role=web", "--", "true"])?;
    assert_eq!(code, 0);
    assert_eq!(hosts_with(&report, "ok"), ["h2", "h3"]);
    assert_eq!(hosts_with(&report, "not targeted"), ["h1"]);
    // A selection that matches nothing did nothing: not a success.
    let run = fleet.monitor(0, &["simex", "--where", "role=nope", "--", "true"])?;
    assert_eq!(run.status.code(), Some(1), "{}", text(&run));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("no host was targeted"),
        "{}",
        text(&run)
    );
    Ok(())
}

#[test]
fn an_unknown_host_is_reported_not_skipped() -> TestResult {
    let fleet = Fleet::start(FleetOptions::new(3))?;
    let (code, report) =
        fleet.monitor_json(0, &["simex", "--targets", "h2,nohost", "--", "true"])?;
    assert_eq!(code, 1, "{report}");
    assert_eq!(hosts_with(&report, "ok"), ["h2"]);
    assert_eq!(hosts_with(&report, "unknown host"), ["nohost"]);
    // The notation the reports print names hosts too.
    let (code, report) = fleet.monitor_json(0, &["simex", "--targets", "h[1-2]", "--", "true"])?;
    assert_eq!(code, 0, "{report}");
    assert_eq!(hosts_with(&report, "ok"), ["h1", "h2"]);
    Ok(())
}

#[test]
fn a_timeout_kills_the_whole_process_group() -> TestResult {
    let fleet = Fleet::start(FleetOptions::new(3))?;
    // A number no other process uses as its argument.
    let marker = 3_000_000 + std::process::id() % 1_000_000;
    let command = format!("sleep {marker} & sleep {marker}; echo never");
    let started = Instant::now();
    let (code, report) = fleet.monitor_json(0, &["simex", "--timeout", "1s", "--", &command])?;
    assert_eq!(code, 1, "{report}");
    assert_eq!(hosts_with(&report, "timed out"), ["h1", "h2", "h3"]);
    assert!(started.elapsed() < Duration::from_secs(10));
    // Nothing of any group is left (SIGTERM, then SIGKILL after the grace).
    std::thread::sleep(Duration::from_millis(300));
    let pattern = format!("sleep {marker}");
    let survivors = Command::new("pgrep").args(["-f", &pattern]).output()?;
    assert!(
        survivors.stdout.is_empty(),
        "processes of the timed-out groups survive: {}",
        String::from_utf8_lossy(&survivors.stdout)
    );
    Ok(())
}

#[test]
fn a_daemon_killed_during_a_command_is_reported_disconnected() -> TestResult {
    let mut fleet = Fleet::start(FleetOptions::new(3))?;
    let mut monitor = spawn_monitor(&fleet, &["--json", "simex", "--", "sleep 2; echo done"])?;
    std::thread::sleep(Duration::from_millis(700));
    fleet.kill(2);
    let status = flotilla_tests::wait_bounded(&mut monitor, Duration::from_secs(30))?;
    let mut stdout = String::new();
    if let Some(mut out) = monitor.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout)?;
    }
    let report: Value = serde_json::from_str(&stdout)?;
    assert_eq!(status.code(), Some(1), "{report}");
    assert_eq!(hosts_with(&report, "ok"), ["h1", "h2"]);
    assert_eq!(hosts_with(&report, "disconnected"), ["h3"]);
    // And it is gone from M.
    fleet.wait_members(0, 2, Duration::from_secs(10))?;
    Ok(())
}

/// The server the monitor follows a job through dies mid-command: the job
/// is the group's, so the monitor says how to get its report elsewhere,
/// and the others finish it.
#[test]
fn losing_the_relaying_server_points_to_monitor_job() -> TestResult {
    let mut fleet = Fleet::start(FleetOptions::new(3))?;
    let mut monitor = spawn_monitor(&fleet, &["simex", "--", "sleep 1.5; echo late"])?;
    std::thread::sleep(Duration::from_millis(700));
    fleet.kill(0);
    let status = flotilla_tests::wait_bounded(&mut monitor, Duration::from_secs(30))?;
    let mut said = String::new();
    if let Some(mut err) = monitor.stderr.take() {
        std::io::Read::read_to_string(&mut err, &mut said)?;
    }
    assert_eq!(status.code(), Some(2), "{said}");
    let id = said
        .lines()
        .find_map(|l| l.strip_prefix("job "))
        .and_then(|l| l.split_whitespace().next())
        .ok_or_else(|| format!("no job line in {said:?}"))?;
    assert!(
        said.contains(&format!("lost the report of job {id}"))
            && said.contains(&format!("`monitor job {id}`")),
        "{said}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, report) = fleet.monitor_json(1, &["job", id])?;
        if hosts_with(&report, "ok") == ["h2", "h3"] {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("h2 and h3 never finished: {report}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[test]
fn a_client_without_the_key_is_refused() -> TestResult {
    let mut options = FleetOptions::new(2);
    options.tcp = true;
    let fleet = Fleet::start(options)?;
    let port = fleet.daemons[0].tcp.ok_or("no tcp port")?;
    let addr = format!("127.0.0.1:{port}");
    let wrong = fleet.dir.path().join("wrong.key");
    ClusterKey::generate()?.write_new(&wrong)?;
    let run = |key: &std::path::Path| -> Result<std::process::Output, Error> {
        let mut command = Command::new(&fleet.bin.monitor);
        command
            .env_remove("FLOTILLA_SOCKET")
            .args(["--connect", &addr, "--key"])
            .arg(key)
            .args(["simex", "--", "echo", "hi"]);
        flotilla_tests::run_bounded(command, Duration::from_secs(30))
    };
    let refused = run(&wrong)?;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    // Reached, and refused: not "cannot reach" (the server is there).
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains(&format!("the server at tcp {addr} refused the connection"))
            && said.contains("cluster key")
            && !said.contains("cannot reach"),
        "{}",
        text(&refused)
    );
    fleet.daemons[0].await_log("does not hold the cluster key", Duration::from_secs(10))?;
    let accepted = run(&fleet.key)?;
    assert_eq!(accepted.status.code(), Some(0), "{}", text(&accepted));
    Ok(())
}

#[test]
fn a_command_runs_at_most_once_across_a_retransmission() -> TestResult {
    let fleet = Fleet::start(FleetOptions::new(3))?;
    let file = fleet.dir.path().join("runs");
    let request = Request::Simex(Simex {
        job: JobId::random()?,
        targets: Targets::All,
        timeout: None,
        stream: false,
        command: format!("echo ran >> {}", file.display()),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The monitor sends the request, loses the connection, and retries the
    // same job through another server, then the first one again.
    for i in [0, 1, 0] {
        let report = runtime.block_on(async {
            let mut connection =
                Connection::connect(&Endpoint::Unix(fleet.daemons[i].socket())).await?;
            connection.send(&request).await?;
            let report =
                tokio::time::timeout(Duration::from_secs(20), follow(&mut connection, |_, _| {}))
                    .await??;
            Ok::<_, Error>(report)
        })?;
        assert!(report.all_ok(), "{report:?}");
        assert_eq!(report.hosts.len(), 3);
    }
    std::thread::sleep(Duration::from_millis(200));
    let runs = std::fs::read_to_string(&file)?;
    assert_eq!(runs.lines().count(), 3, "one run per host: {runs:?}");
    Ok(())
}

#[test]
fn a_job_report_outlives_an_interrupted_monitor() -> TestResult {
    let fleet = Fleet::start(FleetOptions::new(3))?;
    let mut monitor = spawn_monitor(&fleet, &["simex", "--", "sleep 1.5; echo late"])?;
    // "job 0123456789ab on 3 host(s): ..." comes first on stderr.
    let stderr = monitor.stderr.take().ok_or("no stderr")?;
    let mut first = String::new();
    BufReader::new(stderr).read_line(&mut first)?;
    let id = first
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| format!("no job id in {first:?}"))?
        .to_owned();
    monitor.kill()?;
    monitor.wait()?;
    // Mid-command: the hosts are still running it.
    let (code, report) = fleet.monitor_json(1, &["job", &id])?;
    assert_eq!(code, 1, "{report}");
    assert_eq!(hosts_with(&report, "running"), ["h1", "h2", "h3"]);
    std::thread::sleep(Duration::from_millis(2000));
    let (code, report) = fleet.monitor_json(2, &["job", &id])?;
    assert_eq!(code, 0, "{report}");
    assert_eq!(hosts_with(&report, "ok"), ["h1", "h2", "h3"]);
    assert_eq!(
        host(&report, "h3").map(|h| h["stdout"].clone()),
        Some(Value::from("late\n"))
    );
    let (code, jobs) = fleet.monitor_json(0, &["jobs"])?;
    assert_eq!(code, 0);
    assert!(jobs["jobs"].as_array().is_some_and(|j| !j.is_empty()));
    Ok(())
}

#[test]
fn chdir_persists_across_a_restart_and_exit_leaves_cleanly() -> TestResult {
    let mut fleet = Fleet::start(FleetOptions::new(3))?;
    let place = fleet.dir.path().canonicalize()?;
    let place = place.to_str().ok_or("not utf-8")?.to_owned();
    let (code, report) = fleet.monitor_json(0, &["chdir", &place])?;
    assert_eq!(code, 0, "{report}");
    let (code, report) = fleet.monitor_json(0, &["chdir", "/no/such/dir"])?;
    assert_eq!(code, 1, "{report}");
    assert_eq!(hosts_with(&report, "failed"), ["h1", "h2", "h3"]);

    // SIGTERM: a clean leave, exit status 0.
    let status = fleet.terminate(1)?;
    assert!(status.success(), "{status:?}");
    fleet.wait_members(0, 2, Duration::from_secs(10))?;
    fleet.spawn(1, None)?;
    fleet.wait_members(0, 3, Duration::from_secs(30))?;
    let (code, report) = fleet.monitor_json(0, &["simex", "--", "pwd"])?;
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        host(&report, "h2").map(|h| h["stdout"].clone()),
        Some(Value::from(format!("{place}\n")))
    );

    // monitor exit: the host leaves and its daemon ends with status 0.
    let refused = fleet.monitor(0, &["exit", "--all"])?;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    let (code, report) = fleet.monitor_json(0, &["exit", "--targets", "h3"])?;
    assert_eq!(code, 0, "{report}");
    let child = fleet.daemons[2].child.as_mut().ok_or("h3 not running")?;
    let status = flotilla_tests::wait_bounded(child, Duration::from_secs(15))?;
    assert!(status.success(), "{status:?}");
    fleet.daemons[2].child = None;
    fleet.wait_members(0, 2, Duration::from_secs(10))?;
    Ok(())
}

#[test]
fn output_is_capped_and_truncation_reported() -> TestResult {
    let mut options = FleetOptions::new(2);
    options.exec = "exec:\n  output_cap: 1KiB\n".into();
    let fleet = Fleet::start(options)?;
    let (code, report) =
        fleet.monitor_json(0, &["simex", "--", "head -c 5000 /dev/zero | tr '\\0' a"])?;
    assert_eq!(code, 0, "{report}");
    let h1 = host(&report, "h1").ok_or("no h1")?;
    assert_eq!(h1["stdout_truncated"], Value::from(true));
    assert_eq!(h1["stdout"].as_str().map(str::len), Some(1024));
    Ok(())
}

#[test]
fn a_daemon_with_the_wrong_key_never_appears_in_m() -> TestResult {
    let mut fleet = Fleet::start(FleetOptions::new(3))?;
    fleet.kill(2);
    fleet.wait_members(0, 2, Duration::from_secs(10))?;
    let wrong = fleet.dir.path().join("wrong.key");
    ClusterKey::generate()?.write_new(&wrong)?;
    fleet.spawn(2, Some(&wrong))?;
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(fleet.members(0), ["h1", "h2"]);
    assert_eq!(fleet.members(1), ["h1", "h2"]);
    Ok(())
}

#[test]
fn status_and_members_show_every_host() -> TestResult {
    let fleet = Fleet::start(FleetOptions::new(3))?;
    let (code, status) = fleet.monitor_json(0, &["status"])?;
    assert_eq!(code, 0, "{status}");
    let names: Vec<&str> = status["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["name"].as_str())
        .collect();
    assert_eq!(names, ["h1", "h2", "h3"]);
    let table = fleet.monitor(1, &["members"])?;
    assert_eq!(table.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&table.stdout).contains("role=web"));
    Ok(())
}

#[test]
fn stream_prints_lines_prefixed_with_the_host() -> TestResult {
    let fleet = Fleet::start(FleetOptions::new(2))?;
    let output = fleet.monitor(0, &["simex", "--stream", "--", "echo one; echo two >&2"])?;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let shown = String::from_utf8_lossy(&output.stdout);
    for line in ["h1: one", "h1: two", "h2: one", "h2: two"] {
        assert!(shown.contains(line), "{line:?} missing in {shown}");
    }
    Ok(())
}

/// The Unix socket's real check is the peer's uid, not the file mode: with
/// the mode opened up (as a careless operator might), another user is still
/// refused, told why, and logged. Needs root (to act as another uid).
#[test]
fn another_user_on_the_unix_socket_is_refused() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root to connect as another user");
        return Ok(());
    }
    let fleet = Fleet::start(FleetOptions::new(1))?;
    let daemon = &fleet.daemons[0];
    // Let uid 65534 reach the socket and run the monitor: every directory
    // on the way must be searchable.
    let mut dir = Some(daemon.home.as_path());
    while let Some(d) = dir {
        if d.starts_with(fleet.dir.path()) {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        }
        dir = d.parent();
    }
    std::fs::set_permissions(daemon.socket(), std::fs::Permissions::from_mode(0o777))?;
    let mut command = Command::new(&fleet.bin.monitor);
    command
        .env("FLOTILLA_SOCKET", daemon.socket())
        .env_remove("FLOTILLA_CONNECT")
        .args(["simex", "--", "id -u"])
        .uid(65534)
        .gid(65534);
    let refused = flotilla_tests::run_bounded(command, Duration::from_secs(30))?;
    let said = text(&refused);
    if said.contains("Permission denied") {
        eprintln!("skipping: uid 65534 cannot reach the test's files here: {said}");
        return Ok(());
    }
    assert_eq!(refused.status.code(), Some(2), "{said}");
    assert!(said.contains("uid 65534 may not use this socket"), "{said}");
    daemon.await_log("refused uid 65534", Duration::from_secs(10))?;
    Ok(())
}

/// The README's first command: the tour runs every step against a real
/// fleet, and the fleet's directory is gone after the clean stop.
#[test]
fn the_demo_tour_runs_and_cleans_up() -> TestResult {
    let bin = flotilla_tests::binaries()?;
    let mut command = Command::new(&bin.monitor);
    command
        .env("FLOTILLA_MGMTD", &bin.mgmtd)
        .env_remove("FLOTILLA_SOCKET")
        .env_remove("FLOTILLA_CONNECT")
        .args(["demo", "--hosts", "3"]);
    let output = flotilla_tests::run_bounded(command, Duration::from_secs(240))?;
    let all = text(&output);
    assert_eq!(output.status.code(), Some(0), "{all}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "the fleet formed one view of 3",
        "map hosts at version 3",
        "2 ok, 1 not eligible",
        "1 disconnected",
        "stopping the fleet",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in\n{all}");
    }
    let root = stdout
        .lines()
        .find_map(|l| l.split("(state and logs in ").nth(1))
        .and_then(|rest| rest.strip_suffix(')'))
        .ok_or_else(|| format!("no fleet directory in\n{all}"))?;
    assert!(
        !std::path::Path::new(root).exists(),
        "{root} is left behind"
    );
    Ok(())
}

/// With `multicast.disseminate` on, heartbeats, acknowledgements and data
/// that go to every member are sent once to the group: the fleet must form
/// one view, keep it (no view change while idle and while running a
/// simex), and run commands everywhere, as it does with unicast. Default
/// gc timers (400 ms suspect timeout): lost group datagrams show at once.
#[test]
fn multicast_dissemination_forms_one_stable_view() -> TestResult {
    let mut options = FleetOptions::new(3);
    options.extra = flotilla_tests::multicast_section(true)?;
    let fleet = Fleet::start(options)?;
    for i in 0..3 {
        fleet.wait_members(i, 3, Duration::from_secs(30))?;
    }
    // Time for the last view to be installed everywhere.
    std::thread::sleep(Duration::from_secs(1));
    let before: Vec<usize> = (0..3).map(|i| fleet.views_installed(i)).collect();
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..3 {
        let (code, report) = fleet.monitor_json(i, &["simex", "--", "echo", "same"])?;
        assert_eq!(code, 0, "{report}\n{}", fleet.logs());
        assert_eq!(hosts_with(&report, "ok"), ["h1", "h2", "h3"], "{report}");
    }
    let after: Vec<usize> = (0..3).map(|i| fleet.views_installed(i)).collect();
    assert_eq!(
        before,
        after,
        "views kept changing with dissemination on\n{}",
        fleet.logs()
    );
    Ok(())
}
