//! The server over the in-memory group: several servers in one process.

use std::time::Duration;

use flotilla_client::outcome::ExecStatus;
use tempfile::TempDir;

use super::*;
use crate::group::fake::FakeNet;

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Host {
    name: String,
    id: MemberId,
    handle: ServerHandle,
    core: JoinHandle<()>,
    dir: TempDir,
}

fn member(n: u32) -> MemberId {
    MemberId {
        node: n,
        incarnation: 1,
    }
}

fn config(name: &str, dir: &Path) -> ServerConfig {
    let mut attributes = BTreeMap::new();
    attributes.insert(
        "role".to_owned(),
        if name == "h1" { "db" } else { "web" }.to_owned(),
    );
    ServerConfig {
        name: name.to_owned(),
        attributes,
        data_dir: dir.to_owned(),
        exec: ExecOptions {
            timeout: Duration::from_secs(10),
            kill_grace: Duration::from_millis(100),
            ..ExecOptions::default()
        },
        limits: Limits::default(),
        store: JobStoreLimits::default(),
    }
}

fn start_host(net: &FakeNet, n: u32, dir: TempDir) -> Result<Host, ServerError> {
    let name = format!("h{n}");
    let id = member(n);
    let (group, events) = net.join(id);
    let (handle, core) = Server::start(group, events, config(&name, dir.path()))?;
    Ok(Host {
        name,
        id,
        handle,
        core,
        dir,
    })
}

async fn fleet(n: u32) -> Result<(FakeNet, Vec<Host>), Box<dyn std::error::Error>> {
    let net = FakeNet::new();
    let mut hosts = Vec::new();
    for i in 1..=n {
        hosts.push(start_host(&net, i, tempfile::tempdir()?)?);
    }
    // Wait until every server knows every other (announcements delivered).
    for host in &hosts {
        wait_for_m(&host.handle, n as usize).await?;
    }
    Ok((net, hosts))
}

async fn wait_for_m(handle: &ServerHandle, n: usize) -> Result<(), String> {
    for _ in 0..200 {
        if let Ok(reply) = handle.members().await {
            if reply.members.len() == n {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!("M never reached {n} members"))
}

fn simex(command: &str, targets: Targets) -> Result<StartRequest, std::io::Error> {
    Ok(StartRequest {
        job: JobId::random()?,
        targets,
        op: RequestedOp::Simex {
            command: command.to_owned(),
            timeout: None,
            stream: false,
        },
        client: "test".to_owned(),
    })
}

/// Follows a started job to its end, as a handler does: the first result of
/// each target, or the targets dropped from M.
async fn collect(started: Started) -> Result<(BTreeMap<String, Outcome>, Vec<String>), String> {
    let Started {
        accepted,
        mut control,
        ..
    } = started;
    let mut tracker: flotilla_client::Tracker<Outcome> =
        flotilla_client::Tracker::from_accepted(&accepted);
    let mut disconnected = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !tracker.is_complete() {
        match tokio::time::timeout_at(deadline, control.recv()).await {
            Ok(Some(Update::View(m))) => disconnected.extend(tracker.on_view(m)),
            Ok(Some(Update::Result(host, outcome))) => {
                tracker.on_result(&host, outcome);
            }
            Ok(Some(Update::Output(..))) => {}
            Ok(None) => return Err("the core dropped the follower".into()),
            Err(_) => return Err("the job did not complete".into()),
        }
    }
    let results = tracker
        .into_report()
        .into_iter()
        .filter_map(|(host, state)| match state {
            flotilla_client::HostState::Reported(o) => Some((host, o)),
            _ => None,
        })
        .collect();
    Ok((results, disconnected))
}

fn stdout(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Exec(e) => e.stdout.text().into_owned(),
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simex_runs_on_every_target_and_reports() -> TestResult {
    let (_net, hosts) = fleet(3).await?;
    let started = hosts[0]
        .handle
        .start(simex("echo $((6*7))", Targets::All)?)
        .await?;
    assert_eq!(started.accepted.targets, ["h1", "h2", "h3"]);
    let (results, disconnected) = collect(started).await?;
    assert!(disconnected.is_empty());
    assert_eq!(results.len(), 3);
    for outcome in results.values() {
        assert!(outcome.succeeded());
        assert_eq!(stdout(outcome), "42\n");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_where_and_unknown_hosts() -> TestResult {
    let (_net, hosts) = fleet(3).await?;
    let web = Targets::Where(vec![("role".into(), "web".into())]);
    let started = hosts[1].handle.start(simex("true", web)?).await?;
    assert_eq!(started.accepted.targets, ["h2", "h3"]);
    let (results, _) = collect(started).await?;
    assert_eq!(results.keys().collect::<Vec<_>>(), ["h2", "h3"]);

    let named = Targets::Hosts(vec!["h3".into(), "nope".into()]);
    let started = hosts[1].handle.start(simex("true", named)?).await?;
    assert_eq!(started.accepted.targets, ["h3"]);
    assert_eq!(started.accepted.unknown_hosts, ["nope"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_runs_at_most_once_whatever_is_delivered_again() -> TestResult {
    let (net, hosts) = fleet(3).await?;
    let marks = tempfile::tempdir()?;
    let file = marks.path().join("runs");
    let request = simex(&format!("echo ran >> {}", file.display()), Targets::All)?;
    let (first, _) = collect(hosts[0].handle.start(request.clone()).await?).await?;
    assert_eq!(first.len(), 3);
    // A merge delivers every message again; a monitor retries through
    // another server with the same job id.
    net.redeliver_all();
    let (again, _) = collect(hosts[2].handle.start(request.clone()).await?).await?;
    assert_eq!(again.len(), 3, "a retried request still gets every outcome");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let runs = std::fs::read_to_string(&file)?;
    assert_eq!(runs.lines().count(), 3, "one run per target: {runs:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chdir_applies_in_order_keeps_the_old_directory_on_error_and_persists() -> TestResult {
    let (net, mut hosts) = fleet(2).await?;
    let place = tempfile::tempdir()?;
    let place_path = std::fs::canonicalize(place.path())?;
    let chdir = |dir: &str| -> Result<StartRequest, std::io::Error> {
        Ok(StartRequest {
            job: JobId::random()?,
            targets: Targets::All,
            op: RequestedOp::Chdir {
                dir: dir.to_owned(),
            },
            client: "test".into(),
        })
    };
    // chdir and simex started back to back: the simex runs in the new
    // directory because the chdir is delivered first.
    let first = hosts[0]
        .handle
        .start(chdir(&place_path.display().to_string())?)
        .await?;
    let pwd = hosts[1].handle.start(simex("pwd", Targets::All)?).await?;
    let (changed, _) = collect(first).await?;
    assert!(changed.values().all(Outcome::succeeded));
    let (pwds, _) = collect(pwd).await?;
    for outcome in pwds.values() {
        assert_eq!(stdout(outcome).trim(), place_path.display().to_string());
    }
    let (missing, _) = collect(hosts[0].handle.start(chdir("/no/such/dir")?).await?).await?;
    for outcome in missing.values() {
        match outcome {
            Outcome::Chdir(c) => {
                assert!(c
                    .error
                    .as_deref()
                    .is_some_and(|e| e.contains("does not exist")));
                assert_eq!(c.dir, place_path.display().to_string());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Restart h2: it comes back in the same directory.
    let h2 = hosts.remove(1);
    net.crash(h2.id);
    h2.core.abort();
    let _ = h2.core.await;
    let h2 = start_host(&net, 2, h2.dir)?;
    wait_for_m(&h2.handle, 2).await?;
    let (pwds, _) = collect(
        h2.handle
            .start(simex("pwd", Targets::Hosts(vec!["h2".into()]))?)
            .await?,
    )
    .await?;
    assert_eq!(
        pwds.get("h2").map(|o| stdout(o).trim().to_owned()),
        Some(place_path.display().to_string())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_crashes_is_disconnected_and_the_job_completes() -> TestResult {
    let (net, hosts) = fleet(3).await?;
    let started = hosts[0]
        .handle
        .start(simex("sleep 0.3", Targets::All)?)
        .await?;
    net.crash(hosts[2].id);
    hosts[2].core.abort();
    let (results, disconnected) = collect(started).await?;
    assert_eq!(disconnected, ["h3"]);
    assert_eq!(results.keys().collect::<Vec<_>>(), ["h1", "h2"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_interrupted_by_a_stop_is_never_run_again() -> TestResult {
    let net = FakeNet::new();
    let dir = tempfile::tempdir()?;
    let job = JobId::random()?;
    {
        let mut store = JobStore::open(dir.path(), JobStoreLimits::default())?;
        store.append(JobRecord {
            id: job,
            accepted_at: SystemTime::now(),
            client: "test".into(),
            command: "touch /tmp/should-not-run".into(),
            targets: vec!["h1".into()],
            outcome: None,
        })?;
    }
    let host = start_host(&net, 1, dir)?;
    wait_for_m(&host.handle, 1).await?;
    let mut request = simex("echo ran", Targets::All)?;
    request.job = job;
    let (results, _) = collect(host.handle.start(request).await?).await?;
    assert_eq!(results.get("h1"), Some(&Outcome::Interrupted));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_jobs_queries_reach_every_member() -> TestResult {
    let (_net, hosts) = fleet(3).await?;
    let (results, _) = collect(
        hosts[0]
            .handle
            .start(simex("exit 3", Targets::All)?)
            .await?,
    )
    .await?;
    assert!(results
        .values()
        .all(|o| matches!(o, Outcome::Exec(e) if e.status == ExecStatus::Exited(3))));
    let mut status = hosts[1].handle.query(Query::Status).await?;
    assert_eq!(status.members.len(), 3);
    let mut names = Vec::new();
    for _ in 0..3 {
        let (host, reply) = tokio::time::timeout(Duration::from_secs(5), status.replies.recv())
            .await?
            .ok_or("no reply")?;
        assert!(
            matches!(reply, Reply::Status(ref s) if s.name == host && s.view.members.len() == 3)
        );
        names.push(host);
    }
    names.sort();
    assert_eq!(names, ["h1", "h2", "h3"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_leaves_the_group_cleanly() -> TestResult {
    let (net, hosts) = fleet(3).await?;
    let request = StartRequest {
        job: JobId::random()?,
        targets: Targets::Hosts(vec!["h3".into()]),
        op: RequestedOp::Exit,
        client: "test".into(),
    };
    let (results, disconnected) = collect(hosts[0].handle.start(request).await?).await?;
    assert_eq!(results.get("h3"), Some(&Outcome::Exit));
    assert!(disconnected.is_empty());
    tokio::time::timeout(Duration::from_secs(5), hosts[2].handle.stopped()).await?;
    assert_eq!(net.members(), [hosts[0].id, hosts[1].id]);
    let _ = &hosts[2].name;
    Ok(())
}
