//! `monitor demo` stopped by a signal while its fleet forms: every daemon
//! is stopped, the fleet's directory is removed, and the exit status is
//! 128 + the signal. The daemons are stand-ins (`FLOTILLA_MGMTD`, a shell
//! script that sleeps and records its pid), so the fleet never forms and
//! the test needs no real mgmtd.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const MONITOR: &str = env!("CARGO_BIN_EXE_monitor");

struct Setup {
    _dir: tempfile::TempDir,
    tmp: PathBuf,
    pids: PathBuf,
    fake: PathBuf,
}

fn setup() -> Result<Setup, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp)?;
    let pids = dir.path().join("pids");
    let fake = dir.path().join("mgmtd");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho $$ >> '{}'\nexec sleep 600\n",
            pids.display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755))?;
    Ok(Setup {
        tmp,
        pids,
        fake,
        _dir: dir,
    })
}

fn start(setup: &Setup, args: &[&str]) -> std::io::Result<Child> {
    Command::new(MONITOR)
        .args(args)
        .env("FLOTILLA_MGMTD", &setup.fake)
        .env("TMPDIR", &setup.tmp)
        // Exported for another fleet: the demo ignores it.
        .env("FLOTILLA_SOCKET", "/nonexistent/mgmtd.sock")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

fn daemon_pids(path: &Path, want: usize) -> Result<Vec<i32>, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.len() >= want {
            return Ok(pids);
        }
        if Instant::now() > deadline {
            return Err(format!("only {} of {want} daemons started", pids.len()).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the child (bounded; killed after), returns its status and
/// stderr.
fn finish(mut child: Child) -> Result<(Option<i32>, String), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the monitor did not exit within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr)?;
    }
    Ok((status.code(), stderr))
}

fn alive(pid: i32) -> bool {
    // A zombie counts as gone: it runs nothing.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn stopped_and_removed(signal: Signal, code: i32) -> TestResult {
    let setup = setup()?;
    let child = start(&setup, &["demo", "--hosts", "3"])?;
    let pids = daemon_pids(&setup.pids, 3)?;
    kill(Pid::from_raw(i32::try_from(child.id())?), signal)?;
    let (status, stderr) = finish(child)?;
    for pid in &pids {
        if alive(*pid) {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            return Err(format!("daemon {pid} is still running after {signal}").into());
        }
    }
    assert_eq!(status, Some(code), "{signal}: {stderr}");
    assert!(
        stderr.contains("demo interrupted; the fleet is stopped and removed"),
        "{signal}: {stderr}"
    );
    assert!(!stderr.contains("error"), "{signal}: {stderr}");
    let left: Vec<_> = std::fs::read_dir(&setup.tmp)?.collect();
    assert!(left.is_empty(), "{signal}: left behind: {left:?}");
    Ok(())
}

#[test]
fn sigint_stops_and_removes_the_fleet() -> TestResult {
    stopped_and_removed(Signal::SIGINT, 130)
}

#[test]
fn sigterm_stops_and_removes_the_fleet() -> TestResult {
    stopped_and_removed(Signal::SIGTERM, 143)
}

#[test]
fn sighup_stops_and_removes_the_fleet() -> TestResult {
    stopped_and_removed(Signal::SIGHUP, 129)
}

/// With --keep, an interrupted demo still stops its daemons (nobody was
/// told how to reach or stop them) but keeps the directory and its logs.
#[test]
fn an_interrupted_kept_fleet_is_stopped_and_its_directory_kept() -> TestResult {
    let setup = setup()?;
    let child = start(&setup, &["demo", "--hosts", "2", "--keep"])?;
    let pids = daemon_pids(&setup.pids, 2)?;
    kill(Pid::from_raw(i32::try_from(child.id())?), Signal::SIGTERM)?;
    let (status, stderr) = finish(child)?;
    assert_eq!(status, Some(143), "{stderr}");
    for pid in pids {
        assert!(!alive(pid), "daemon {pid} is still running");
    }
    assert!(
        stderr.contains("the fleet is stopped; its configurations and logs are kept in"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(&setup.tmp)?.count(), 1, "{stderr}");
    Ok(())
}

#[test]
fn demo_refuses_connection_options_and_json() -> TestResult {
    for (args, said) in [
        (&["demo", "--json"][..], "--json does not apply"),
        (&["--json", "demo"][..], "--json does not apply"),
        (
            &["demo", "--socket", "/tmp/x.sock"][..],
            "--socket does not apply",
        ),
        (
            &["--connect", "h:1", "demo"][..],
            "--connect does not apply",
        ),
        (&["demo", "--key", "k"][..], "--key does not apply"),
    ] {
        let output = Command::new(MONITOR)
            .args(args)
            .env("FLOTILLA_MGMTD", "/nonexistent/mgmtd")
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
    Ok(())
}
