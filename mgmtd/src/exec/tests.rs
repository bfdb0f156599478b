use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn options() -> ExecOptions {
    ExecOptions::default()
}

fn with_timeout(timeout: Duration) -> ExecOptions {
    ExecOptions {
        timeout,
        ..ExecOptions::default()
    }
}

async fn sh(command: &str) -> ExecOutcome {
    run(command, Path::new("/"), &options(), None).await
}

/// Makes this test process the reaper of its orphans. The group members
/// that outlive a killed shell are re-parented to the nearest subreaper, by
/// default init; in a container whose init does not reap (as on the build
/// machine), they would stay zombies, which still count as members of the
/// group for `kill(2)`. `run` reaps the ones it inherits.
fn become_subreaper() -> TestResult {
    nix::sys::prctl::set_child_subreaper(true)?;
    Ok(())
}

/// Whether `kill(-pgid, 0)` fails with `ESRCH` within `within`, reaping the
/// group's zombies this process inherited meanwhile.
async fn group_gone_within(pgid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        while let Ok(status) = waitpid(Pid::from_raw(-pgid), Some(WaitPidFlag::WNOHANG)) {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        if killpg(Pid::from_raw(pgid), None) == Err(Errno::ESRCH) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The process group id a command printed with `echo $$` as its first line.
fn printed_pgid(outcome: &ExecOutcome) -> Result<i32, Box<dyn std::error::Error>> {
    let text = outcome.stdout.text();
    let first = text.lines().next().ok_or("no output")?;
    Ok(first.trim().parse()?)
}

#[tokio::test]
async fn exit_code_is_reported() {
    let outcome = sh("exit 3").await;
    assert_eq!(outcome.status, ExecStatus::Exited(3));
    assert!(!outcome.succeeded());
    assert!(sh("true").await.succeeded());
}

#[tokio::test]
async fn signal_is_reported() {
    let outcome = sh("kill -9 $$").await;
    assert_eq!(outcome.status, ExecStatus::Signaled(9));
}

#[tokio::test]
async fn stdout_and_stderr_are_captured_separately() {
    let outcome = sh("echo out; echo err >&2; printf 'no newline'").await;
    assert_eq!(outcome.status, ExecStatus::Exited(0));
    assert_eq!(outcome.stdout.text(), "out\nno newline");
    assert_eq!(outcome.stderr.text(), "err\n");
    assert!(!outcome.stdout.truncated);
    assert_eq!(outcome.stdout.total_bytes, 14);
}

#[tokio::test]
async fn output_past_the_cap_is_counted_and_dropped() {
    let options = ExecOptions {
        output_cap: 1000,
        ..ExecOptions::default()
    };
    // A megabyte through a 64 KiB pipe: finishing at all shows that the
    // engine keeps reading past the cap.
    let command = "head -c 1000000 /dev/zero; echo done >&2";
    let outcome = run(command, Path::new("/"), &options, None).await;
    assert_eq!(outcome.status, ExecStatus::Exited(0));
    assert_eq!(outcome.stdout.bytes.len(), 1000);
    assert!(outcome.stdout.truncated);
    assert_eq!(outcome.stdout.total_bytes, 1_000_000);
    assert_eq!(outcome.stderr.text(), "done\n");
    assert!(!outcome.stderr.truncated);
}

#[tokio::test]
async fn stdin_is_empty() {
    let outcome = run(
        "cat",
        Path::new("/"),
        &with_timeout(Duration::from_secs(5)),
        None,
    )
    .await;
    assert_eq!(outcome.status, ExecStatus::Exited(0));
    assert_eq!(outcome.stdout.total_bytes, 0);
}

#[tokio::test]
async fn working_directory_is_respected() -> TestResult {
    let dir = tempfile::tempdir()?;
    let outcome = run("pwd", dir.path(), &options(), None).await;
    let expected = format!("{}\n", dir.path().canonicalize()?.display());
    assert_eq!(outcome.stdout.text(), expected);
    Ok(())
}

#[tokio::test]
async fn missing_working_directory_is_a_clear_spawn_failure() -> TestResult {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("gone");
    let outcome = run("true", &missing, &options(), None).await;
    let expected = format!("working directory {} does not exist", missing.display());
    assert_eq!(outcome.status, ExecStatus::SpawnFailed(expected));

    let file = dir.path().join("file");
    std::fs::write(&file, "")?;
    let outcome = run("true", &file, &options(), None).await;
    let expected = format!("working directory {} is not a directory", file.display());
    assert_eq!(outcome.status, ExecStatus::SpawnFailed(expected));
    Ok(())
}

#[tokio::test]
async fn missing_shell_is_a_spawn_failure() {
    let options = ExecOptions {
        shell: "/nonexistent/sh".into(),
        ..ExecOptions::default()
    };
    let outcome = run("true", Path::new("/"), &options, None).await;
    match outcome.status {
        ExecStatus::SpawnFailed(reason) => {
            assert!(
                reason.starts_with("cannot start /nonexistent/sh: "),
                "{reason}"
            );
        }
        other => panic!("expected a spawn failure, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_command_exits_127() {
    let outcome = sh("no-such-command-flotilla-test").await;
    assert_eq!(outcome.status, ExecStatus::Exited(127));
    assert!(
        outcome.stderr.text().contains("not found"),
        "{:?}",
        outcome.stderr.text()
    );
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() -> TestResult {
    become_subreaper()?;
    let command = "echo $$; sleep 30 & sleep 30 & wait";
    let outcome = run(
        command,
        Path::new("/"),
        &with_timeout(Duration::from_millis(300)),
        None,
    )
    .await;
    assert_eq!(outcome.status, ExecStatus::TimedOut);
    assert!(outcome.duration >= Duration::from_millis(300));
    assert!(
        outcome.duration < Duration::from_secs(3),
        "{:?}",
        outcome.duration
    );
    let pgid = printed_pgid(&outcome)?;
    // `run` has reaped what it inherited: nothing of the group is left.
    assert_eq!(killpg(Pid::from_raw(pgid), None), Err(Errno::ESRCH));
    Ok(())
}

#[tokio::test]
async fn timeout_escalates_to_sigkill_when_sigterm_is_ignored() -> TestResult {
    become_subreaper()?;
    let options = ExecOptions {
        timeout: Duration::from_millis(200),
        kill_grace: Duration::from_millis(200),
        ..ExecOptions::default()
    };
    // The ignored disposition is inherited by the sleeps too.
    let command = "trap '' TERM; echo $$; sleep 30 & sleep 30 & wait";
    let outcome = run(command, Path::new("/"), &options, None).await;
    assert_eq!(outcome.status, ExecStatus::TimedOut);
    assert!(
        outcome.duration >= Duration::from_millis(400),
        "{:?}",
        outcome.duration
    );
    assert!(
        outcome.duration < Duration::from_secs(3),
        "{:?}",
        outcome.duration
    );
    let pgid = printed_pgid(&outcome)?;
    assert_eq!(killpg(Pid::from_raw(pgid), None), Err(Errno::ESRCH));
    Ok(())
}

#[tokio::test]
async fn background_process_holding_the_output_runs_into_the_timeout() -> TestResult {
    become_subreaper()?;
    let command = "echo $$; sleep 30 &";
    let outcome = run(
        command,
        Path::new("/"),
        &with_timeout(Duration::from_millis(300)),
        None,
    )
    .await;
    assert_eq!(outcome.status, ExecStatus::TimedOut);
    let pgid = printed_pgid(&outcome)?;
    assert!(group_gone_within(pgid, Duration::from_secs(1)).await);
    Ok(())
}

#[tokio::test]
async fn background_process_with_its_output_elsewhere_is_left_running() -> TestResult {
    become_subreaper()?;
    let command = "echo $$; sleep 30 >/dev/null 2>&1 &";
    let outcome = run(
        command,
        Path::new("/"),
        &with_timeout(Duration::from_secs(10)),
        None,
    )
    .await;
    assert_eq!(outcome.status, ExecStatus::Exited(0));
    assert!(
        outcome.duration < Duration::from_secs(5),
        "{:?}",
        outcome.duration
    );
    let pgid = printed_pgid(&outcome)?;
    assert_eq!(
        killpg(Pid::from_raw(pgid), None),
        Ok(()),
        "the sleep should still run"
    );
    killpg(Pid::from_raw(pgid), Signal::SIGKILL)?;
    assert!(group_gone_within(pgid, Duration::from_secs(2)).await);
    Ok(())
}

#[tokio::test]
async fn dropping_the_run_kills_the_group() -> TestResult {
    become_subreaper()?;
    let (tx, mut rx) = mpsc::channel(16);
    let options = options();
    let running = run("echo $$; sleep 30", Path::new("/"), &options, Some(tx));
    let cut = tokio::time::timeout(Duration::from_millis(300), running).await;
    assert!(cut.is_err(), "the command should still have been running");
    let line = rx.recv().await.ok_or("no line streamed")?;
    let pgid: i32 = line.text.parse()?;
    assert!(group_gone_within(pgid, Duration::from_secs(2)).await);
    Ok(())
}

#[tokio::test]
async fn lines_stream_in_order() -> TestResult {
    // A small channel, so that the reader has to wait for the receiver.
    let (tx, mut rx) = mpsc::channel(4);
    let collector = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        lines
    });
    let command =
        "i=1; while [ $i -le 200 ]; do echo line $i; i=$((i+1)); done; printf 'a\\r\\nb' >&2";
    let outcome = run(command, Path::new("/"), &options(), Some(tx)).await;
    assert_eq!(outcome.status, ExecStatus::Exited(0));
    let lines = collector.await?;
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|l| l.stream == Stream::Stdout)
        .map(|l| l.text.as_str())
        .collect();
    let expected: Vec<String> = (1..=200).map(|i| format!("line {i}")).collect();
    assert_eq!(stdout, expected);
    let stderr: Vec<&str> = lines
        .iter()
        .filter(|l| l.stream == Stream::Stderr)
        .map(|l| l.text.as_str())
        .collect();
    assert_eq!(stderr, ["a", "b"]);
    Ok(())
}

#[tokio::test]
async fn streaming_stops_at_the_cap_and_a_closed_receiver_is_harmless() -> TestResult {
    let options = ExecOptions {
        output_cap: 10,
        ..ExecOptions::default()
    };
    let (tx, mut rx) = mpsc::channel(16);
    let outcome = run(
        "echo 1234; echo 5678; echo 9abc",
        Path::new("/"),
        &options,
        Some(tx),
    )
    .await;
    let mut streamed = Vec::new();
    while let Some(line) = rx.recv().await {
        streamed.push(line.text);
    }
    assert_eq!(streamed, ["1234", "5678"]);
    assert_eq!(outcome.stdout.text(), "1234\n5678\n");

    let (tx, rx) = mpsc::channel(1);
    drop(rx);
    let outcome = run(
        "seq 1 1000",
        Path::new("/"),
        &ExecOptions::default(),
        Some(tx),
    )
    .await;
    assert_eq!(outcome.status, ExecStatus::Exited(0));
    assert_eq!(outcome.stdout.text().lines().count(), 1000);
    Ok(())
}

#[test]
fn long_lines_are_streamed_in_pieces() {
    let mut splitter = LineSplitter::default();
    let long = vec![b'x'; MAX_STREAMED_LINE * 2 + 5];
    assert_eq!(splitter.push(&long).len(), 2);
    let lines = splitter.push(b"\nshort\n");
    assert_eq!(lines, ["xxxxx", "short"]);
    assert_eq!(splitter.push(&vec![b'y'; MAX_STREAMED_LINE]).len(), 0);
    assert_eq!(
        splitter.push(b"\n"),
        [String::from_utf8_lossy(&[b'y'; MAX_STREAMED_LINE])]
    );
    assert_eq!(splitter.finish(), None);
    splitter.push(b"tail");
    assert_eq!(splitter.finish().as_deref(), Some("tail"));
}

#[test]
fn chdir_resolves_relative_to_the_current_directory() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().canonicalize()?;
    std::fs::create_dir_all(root.join("a/b"))?;
    std::fs::write(root.join("a/file"), "")?;

    assert_eq!(resolve_dir(&root, Path::new("a/b"))?, root.join("a/b"));
    assert_eq!(resolve_dir(&root.join("a/b"), Path::new("../.."))?, root);
    assert_eq!(
        resolve_dir(Path::new("/nowhere"), &root.join("a"))?,
        root.join("a")
    );

    let err = resolve_dir(&root, Path::new("missing"))
        .err()
        .ok_or("accepted")?;
    assert!(matches!(err, ChdirError::NotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("{}/missing does not exist", root.display())
    );

    let err = resolve_dir(&root, Path::new("a/file"))
        .err()
        .ok_or("accepted")?;
    assert_eq!(
        err.to_string(),
        format!("{}/a/file is not a directory", root.display())
    );
    let err = resolve_dir(&root, Path::new("a/file/x"))
        .err()
        .ok_or("accepted")?;
    assert!(matches!(err, ChdirError::NotADirectory { .. }), "{err:?}");

    assert!(matches!(
        resolve_dir(&root, Path::new("")),
        Err(ChdirError::Empty)
    ));
    Ok(())
}
