use std::fs;
use std::path::PathBuf;

use nix::sys::signal::kill;

use super::*;

/// Writes `body` as a script in a fresh directory.
fn script(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.sh");
    fs::write(&path, body).unwrap();
    (dir, path)
}

/// No live process is left in the group, and the kernel agrees once the
/// zombies of orphans are reaped (init may take a moment).
fn assert_group_gone(pgid: i32) {
    let pgid = Pid::from_raw(pgid);
    assert!(
        !group_alive(pgid),
        "a process of group {pgid} is still running"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match kill(Pid::from_raw(-pgid.as_raw()), None) {
            Err(Errno::ESRCH) => return,
            _ if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            other => panic!("group {pgid} still exists: kill(-pgid, 0) gave {other:?}"),
        }
    }
}

#[test]
fn exit_code_output_and_cwd() {
    let (dir, path) = script("pwd\necho oops >&2\nexit 3\n");
    let outcome = run_script(&path, dir.path(), Duration::from_secs(10), 1024).unwrap();
    assert_eq!(outcome.status, ExitStatus::Code(3));
    assert!(!outcome.success() && !outcome.timed_out && !outcome.stray_processes_killed);
    let cwd = fs::canonicalize(dir.path()).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&outcome.stdout.bytes).trim_end(),
        cwd.to_string_lossy()
    );
    assert_eq!(
        outcome.stderr,
        Captured {
            bytes: b"oops\n".to_vec(),
            truncated: false,
            total_len: 5
        }
    );
    assert_eq!(outcome.status.to_string(), "exit code 3");
}

#[test]
fn relative_script_path_is_relative_to_cwd() {
    let (dir, _) = script("exit 0\n");
    let outcome = run_script(
        Path::new("script.sh"),
        dir.path(),
        Duration::from_secs(10),
        16,
    )
    .unwrap();
    assert!(outcome.success());
}

#[test]
fn timeout_kills_the_whole_group() {
    let (dir, path) = script("sleep 100 & sleep 100; wait\n");
    let started = Instant::now();
    let outcome = run_script(&path, dir.path(), Duration::from_millis(300), 1024).unwrap();
    assert!(outcome.timed_out && !outcome.success());
    assert_eq!(outcome.status, ExitStatus::Signal(Signal::SIGTERM as i32));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SIGTERM should have been enough"
    );
    assert!(outcome.duration >= Duration::from_millis(300));
    assert_group_gone(outcome.pgid);
}

#[test]
fn processes_ignoring_sigterm_get_sigkill() {
    let (dir, path) = script("trap '' TERM\nsleep 100 & sleep 100; wait\n");
    let grace = Duration::from_millis(300);
    let outcome = run_script_with_grace(
        &path,
        dir.path(),
        &[],
        Duration::from_millis(200),
        1024,
        grace,
    )
    .unwrap();
    assert!(outcome.timed_out);
    assert_eq!(outcome.status, ExitStatus::Signal(9));
    assert_eq!(outcome.status.to_string(), "killed by signal 9 (SIGKILL)");
    assert!(outcome.duration >= Duration::from_millis(500));
    assert_group_gone(outcome.pgid);
}

#[test]
fn stray_background_processes_are_stopped() {
    let (dir, path) = script("sleep 100 &\necho started\nexit 0\n");
    let outcome = run_script(&path, dir.path(), Duration::from_secs(30), 1024).unwrap();
    assert!(outcome.success(), "{outcome:?}");
    assert!(outcome.stray_processes_killed);
    assert!(!outcome.output_incomplete);
    assert_eq!(outcome.stdout.bytes, b"started\n");
    assert!(outcome.duration < Duration::from_secs(5));
    assert_group_gone(outcome.pgid);
}

#[test]
fn output_is_capped_and_chatty_scripts_do_not_block() {
    // Far more than a pipe buffer on both streams at once.
    let (dir, path) =
        script("head -c 1000000 /dev/zero\nhead -c 300000 /dev/zero >&2\necho tail\n");
    let outcome = run_script(&path, dir.path(), Duration::from_secs(30), 1000).unwrap();
    assert!(outcome.success(), "{outcome:?}");
    assert_eq!(outcome.stdout.bytes.len(), 1000);
    assert!(outcome.stdout.truncated);
    assert_eq!(outcome.stdout.total_len, 1_000_005);
    assert_eq!(outcome.stderr.bytes.len(), 1000);
    assert_eq!(outcome.stderr.total_len, 300_000);
}

#[test]
fn missing_script() {
    let dir = tempfile::tempdir().unwrap();
    let e = run_script(
        &dir.path().join("nope.sh"),
        dir.path(),
        Duration::from_secs(1),
        10,
    )
    .unwrap_err();
    assert!(matches!(e, ScriptError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("nope.sh"));
}

#[test]
fn process_outside_the_group_holding_the_pipes() {
    // `setsid` puts the sleep in its own session, out of reach of the
    // group signals; it keeps stdout open.
    // The pid file appears only once `setsid` has taken effect.
    let (dir, path) = script(
        "setsid sh -c 'echo $$ > pid.tmp; mv pid.tmp pid; exec sleep 30' &\n\
         while [ ! -s pid ]; do sleep 0.01; done\n\
         echo hi\n",
    );
    let outcome = run_script(&path, dir.path(), Duration::from_secs(10), 1024).unwrap();
    let pid: i32 = fs::read_to_string(dir.path().join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    assert!(outcome.success(), "{outcome:?}");
    assert!(outcome.output_incomplete, "{outcome:?}");
    assert_eq!(outcome.stdout.bytes, b"hi\n");
    assert!(outcome.duration < Duration::from_secs(5));
}
