//! Running install and uninstall scripts: `/bin/sh`, own process group,
//! timeout, captured and capped output.

use std::fmt;
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long a script's process group gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for the output pipes to close once the script's process
/// group is gone (a process that left the group may still hold them).
const PIPE_LINGER: Duration = Duration::from_secs(1);
/// How long to wait for the group's members to disappear after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// How a script ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it (for example SIGTERM or SIGKILL after a timeout).
    Signal(i32),
}

impl ExitStatus {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => match Signal::try_from(*signal) {
                Ok(name) => write!(f, "killed by signal {signal} ({name})"),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
        }
    }
}

/// One output stream of a script, cut at the cap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captured {
    /// The first bytes, up to the cap.
    pub bytes: Vec<u8>,
    /// Whether more was written than kept.
    pub truncated: bool,
    /// How many bytes the script wrote in all.
    pub total_len: u64,
}

impl Captured {
    fn push(&mut self, data: &[u8], cap: usize) {
        self.total_len += data.len() as u64;
        let room = cap.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
        if data.len() > room {
            self.truncated = true;
        }
    }
}

/// What running a script gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptOutcome {
    /// How the script (the `/bin/sh` process) ended.
    pub status: ExitStatus,
    /// The timeout passed and the script's process group was stopped.
    pub timed_out: bool,
    /// The script exited but left processes running in its group; they
    /// were stopped the same way as on a timeout.
    pub stray_processes_killed: bool,
    /// A process outside the script's group (one that called `setsid`, say)
    /// kept the output pipes open, so capture stopped early and the output
    /// may be incomplete.
    pub output_incomplete: bool,
    /// Standard output.
    pub stdout: Captured,
    /// Standard error.
    pub stderr: Captured,
    /// From start to return.
    pub duration: Duration,
    /// The script's process group id (its `/bin/sh`'s pid).
    pub pgid: i32,
}

impl ScriptOutcome {
    /// Exited with code 0 within the timeout.
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }
}

/// Why a script could not be run at all. A script that runs and fails is a
/// [`ScriptOutcome`], not an error.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The script is not a regular file.
    #[error("script {} is not a file", path.display())]
    NotFound {
        /// The script.
        path: PathBuf,
    },
    /// `/bin/sh` could not be started (or an output reader thread could
    /// not be; the script was then stopped).
    #[error("could not start /bin/sh {}: {source}", path.display())]
    Spawn {
        /// The script.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Waiting for the script failed; it has been signalled to stop.
    #[error("could not wait for script {}: {source}", path.display())]
    Wait {
        /// The script.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Runs `/bin/sh path` in `cwd`, in a new process group, with stdin from
/// `/dev/null` and the daemon's environment.
///
/// Output is read concurrently on two threads, so a script that writes a lot
/// to both streams cannot block; each stream keeps its first `output_cap`
/// bytes. When `timeout` passes, the whole group gets SIGTERM, then
/// SIGKILL after [`KILL_GRACE`]. A script that exits but leaves processes
/// in its group has them stopped the same way: when this returns, no
/// process of the group is running (processes that left the group with
/// `setsid` or `setpgid` are beyond its reach). Install scripts that start
/// services should hand them to the service manager.
///
/// A relative `path` is relative to `cwd`.
pub fn run_script(
    path: &Path,
    cwd: &Path,
    timeout: Duration,
    output_cap: usize,
) -> Result<ScriptOutcome, ScriptError> {
    run_script_with_env(path, cwd, &[], timeout, output_cap)
}

/// [`run_script`] with `env` added to the environment: what the script
/// cannot know from where it runs (an install script runs in a staging
/// directory that moves into place only after it succeeded).
pub fn run_script_with_env(
    path: &Path,
    cwd: &Path,
    env: &[(&str, &std::ffi::OsStr)],
    timeout: Duration,
    output_cap: usize,
) -> Result<ScriptOutcome, ScriptError> {
    run_script_with_grace(path, cwd, env, timeout, output_cap, KILL_GRACE)
}

pub(crate) fn run_script_with_grace(
    path: &Path,
    cwd: &Path,
    env: &[(&str, &std::ffi::OsStr)],
    timeout: Duration,
    output_cap: usize,
    grace: Duration,
) -> Result<ScriptOutcome, ScriptError> {
    let resolved = if path.is_absolute() {
        path.to_owned()
    } else {
        cwd.join(path)
    };
    if !resolved.is_file() {
        return Err(ScriptError::NotFound {
            path: path.to_owned(),
        });
    }
    let start = Instant::now();
    let spawn_error = |source| ScriptError::Spawn {
        path: path.to_owned(),
        source,
    };
    let mut child = Command::new("/bin/sh")
        .arg(path)
        .current_dir(cwd)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(spawn_error)?;
    let pgid_raw = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let pgid = Pid::from_raw(pgid_raw);

    let readers = match start_readers(&mut child, output_cap) {
        Ok(readers) => readers,
        Err(source) => {
            // Never leave a script running that nobody watches.
            let _ = stop_group(&mut child, pgid, Duration::ZERO, None);
            return Err(spawn_error(source));
        }
    };

    // A timeout too large to add to the clock means no timeout.
    let deadline = start.checked_add(timeout);
    let mut poll = Duration::from_millis(1);
    let exited = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(source) => {
                let _ = stop_group(&mut child, pgid, Duration::ZERO, None);
                return Err(ScriptError::Wait {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let now = Instant::now();
        let left = deadline.map_or(Duration::MAX, |deadline| {
            deadline.saturating_duration_since(now)
        });
        if left.is_zero() {
            break None;
        }
        thread::sleep(poll.min(left));
        poll = (poll * 2).min(Duration::from_millis(20));
    };

    let timed_out = exited.is_none();
    let stray_processes_killed = !timed_out && group_alive(pgid);
    let status = match exited {
        Some(status) if !stray_processes_killed => status,
        _ => stop_group(&mut child, pgid, grace, exited).map_err(|source| ScriptError::Wait {
            path: path.to_owned(),
            source,
        })?,
    };
    let status = match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(signal)) => ExitStatus::Signal(signal),
        (None, None) => ExitStatus::Code(-1),
    };

    let (stdout, stderr, output_incomplete) = readers.finish(PIPE_LINGER);
    Ok(ScriptOutcome {
        status,
        timed_out,
        stray_processes_killed,
        output_incomplete,
        stdout,
        stderr,
        duration: start.elapsed(),
        pgid: pgid_raw,
    })
}

/// Sends `signal` to the group; a group that is already gone is fine.
fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        // EPERM would mean the group is no longer ours (the number was
        // reused); there is nothing more to do either way.
        Err(_) => {}
    }
}

/// SIGTERM to the group, up to `grace` for it to go (reaping `child`
/// meanwhile), then SIGKILL to what is left. Returns `child`'s status.
fn stop_group(
    child: &mut Child,
    pgid: Pid,
    grace: Duration,
    mut status: Option<std::process::ExitStatus>,
) -> io::Result<std::process::ExitStatus> {
    signal_group(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    loop {
        if status.is_none() {
            status = child.try_wait()?;
        }
        if status.is_some() && !group_alive(pgid) {
            break;
        }
        if Instant::now() >= deadline {
            signal_group(pgid, Signal::SIGKILL);
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let status = match status {
        Some(status) => status,
        None => child.wait()?,
    };
    let deadline = Instant::now() + KILL_WAIT;
    while group_alive(pgid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    Ok(status)
}

/// Whether any process of group `pgid` is still running. Zombies do not
/// count: they run nothing, and an orphan's zombie lingers until init reaps
/// it. Reads `/proc`; without it, asks the kernel, zombies included.
fn group_alive(pgid: Pid) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return killpg(pgid, None).is_ok();
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // Gone meanwhile.
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parens.
        let Some(after_comm) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = after_comm.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
        if pgrp == Some(pgid.as_raw()) && !matches!(state, Some("Z" | "X")) {
            return true;
        }
    }
    false
}

type SharedCapture = Arc<Mutex<Captured>>;

struct Readers {
    stdout: (SharedCapture, JoinHandle<()>),
    stderr: (SharedCapture, JoinHandle<()>),
}

fn start_readers(child: &mut Child, cap: usize) -> io::Result<Readers> {
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(io::Error::other("the script's output pipes are missing"));
    };
    Ok(Readers {
        stdout: spawn_reader(stdout, cap, "script-stdout")?,
        stderr: spawn_reader(stderr, cap, "script-stderr")?,
    })
}

fn spawn_reader<R: Read + Send + 'static>(
    mut pipe: R,
    cap: usize,
    name: &str,
) -> io::Result<(SharedCapture, JoinHandle<()>)> {
    let captured = SharedCapture::default();
    let shared = Arc::clone(&captured);
    let handle = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => shared
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .push(&buf[..n], cap),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })?;
    Ok((captured, handle))
}

impl Readers {
    /// Waits up to `linger` for both pipes to reach end of file, then takes
    /// what was captured. Readers still blocked are left to finish on their
    /// own; the third value says whether that happened.
    fn finish(self, linger: Duration) -> (Captured, Captured, bool) {
        let deadline = Instant::now() + linger;
        while !(self.stdout.1.is_finished() && self.stderr.1.is_finished())
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(5));
        }
        let incomplete = !(self.stdout.1.is_finished() && self.stderr.1.is_finished());
        let take = |(shared, handle): (SharedCapture, JoinHandle<()>)| {
            if handle.is_finished() {
                let _ = handle.join();
            }
            let mut guard = shared
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::take(&mut *guard)
        };
        (take(self.stdout), take(self.stderr), incomplete)
    }
}

#[cfg(test)]
mod tests;
