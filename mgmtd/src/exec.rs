//! The `simex` execution engine: one shell command, run to an outcome.
//!
//! [`run`] starts `SHELL -c CMD` in a working directory, in a process group
//! of its own, with stdin from `/dev/null`. It reads stdout and stderr
//! concurrently, keeps the first [`ExecOptions::output_cap`] bytes of each,
//! and keeps reading and discarding the rest so that a chatty command never
//! blocks on a full pipe. Optionally it streams the kept output line by line
//! through an [`mpsc`] channel while the command runs.
//!
//! # What counts as the end of a command
//!
//! The command is the whole process group, and its output. It has finished
//! when the shell has exited **and** both pipes have reached end-of-file,
//! that is, when every process holding them has exited or closed them. A
//! process the command leaves running in the background with its output
//! redirected elsewhere (`nohup daemon >/dev/null 2>&1 &`) does not hold the
//! command up and is left alone; one that still writes to the command's
//! output keeps the command running, and is killed with the rest of the
//! group when the timeout expires.
//!
//! # Timeout
//!
//! When [`ExecOptions::timeout`] expires the engine sends `SIGTERM` to the
//! whole process group, waits up to [`ExecOptions::kill_grace`] for the group
//! to disappear, then sends `SIGKILL` to the group, reaps the shell, and
//! reports [`ExecStatus::TimedOut`]. The output read until then is kept.
//!
//! The group counts as gone when none of its processes is alive; zombies
//! are dead already. Processes of the group that outlive the shell are
//! re-parented to the nearest child subreaper, normally init, which reaps
//! them; where init does not reap (some containers), they stay zombies. If
//! this process is itself a subreaper (`prctl(PR_SET_CHILD_SUBREAPER)`), the
//! engine reaps the members of the command's group that it inherits, so that
//! nothing of the group is left at all.
//!
//! # Cancellation
//!
//! Dropping the future returned by [`run`] before it completes sends
//! `SIGKILL` to the command's process group.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

// The outcome types are the client protocol's: a host sends its outcome to
// the group as it is.
pub use flotilla_client::outcome::{Captured, ExecOutcome, ExecStatus, Stream};

/// The shell used when the configuration names none.
pub const DEFAULT_SHELL: &str = "/bin/sh";
/// The timeout used when the configuration gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The output cap per stream used when the configuration gives none: 64 KiB.
pub const DEFAULT_OUTPUT_CAP: usize = 64 * 1024;
/// The time between `SIGTERM` and `SIGKILL` when the configuration gives none.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(1);
/// The longest streamed line; a longer line arrives in pieces of this size.
pub const MAX_STREAMED_LINE: usize = 8 * 1024;

/// Bytes read from a pipe at a time.
const READ_CHUNK: usize = 8 * 1024;
/// How often the group is checked while it is being terminated.
const GROUP_POLL: Duration = Duration::from_millis(10);
/// How long to wait for the group to disappear after `SIGKILL` before giving
/// up on it (a process stuck in uninterruptible sleep cannot die sooner).
const KILL_WAIT: Duration = Duration::from_secs(2);
/// An upper bound on the zombies reaped in one sweep.
const MAX_REAP_PER_SWEEP: usize = 4096;

/// How commands are run: the settled `exec` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOptions {
    /// The shell, run as `SHELL -c CMD`.
    pub shell: PathBuf,
    /// How long a command may run before its process group is terminated.
    pub timeout: Duration,
    /// How many bytes of stdout, and separately of stderr, are kept.
    pub output_cap: usize,
    /// How long the group has between `SIGTERM` and `SIGKILL` on timeout.
    pub kill_grace: Duration,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            shell: PathBuf::from(DEFAULT_SHELL),
            timeout: DEFAULT_TIMEOUT,
            output_cap: DEFAULT_OUTPUT_CAP,
            kill_grace: DEFAULT_KILL_GRACE,
        }
    }
}

/// One line of output, streamed while the command runs.
///
/// Lines of one stream arrive in the order the command wrote them; lines of
/// stdout and stderr are not ordered with respect to each other. The
/// streamed lines are exactly the kept bytes ([`Captured::bytes`]) split at
/// `\n`: output past the cap is not streamed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    /// The stream it was written to.
    pub stream: Stream,
    /// The line without its `\n` (or `\r\n`), invalid UTF-8 replaced. A line
    /// longer than [`MAX_STREAMED_LINE`] bytes arrives in several pieces.
    pub text: String,
}

/// Runs `command` with `options.shell -c` in `cwd` and returns its outcome.
///
/// Never fails: a command that cannot be started is
/// [`ExecStatus::SpawnFailed`]. When `on_line` is given, every kept line is
/// sent to it as it is read; a full channel slows the reading of that stream
/// (and so, eventually, the command) but not past the timeout, and a closed
/// channel only stops the streaming.
///
/// See the [module documentation](self) for when a command counts as
/// finished and what happens on timeout.
pub async fn run(
    command: &str,
    cwd: &Path,
    options: &ExecOptions,
    on_line: Option<mpsc::Sender<OutputLine>>,
) -> ExecOutcome {
    let started = Instant::now();
    let deadline = later(started, options.timeout);
    if let Err(reason) = check_working_dir(cwd) {
        return ExecOutcome::spawn_failed(reason, started.elapsed());
    }
    let mut child = match tokio::process::Command::new(&options.shell)
        .arg("-c")
        .arg(command)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            let reason = format!("cannot start {}: {e}", options.shell.display());
            return ExecOutcome::spawn_failed(reason, started.elapsed());
        }
    };
    // The shell leads its own group: the group id is its pid. `id()` is
    // `None` only once the child has been reaped, which has not happened.
    // Never 0 or 1: `killpg` of those would signal this process's own group,
    // or every process.
    let Some(pgid) = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .filter(|&pid| pid > 1)
        .map(Pid::from_raw)
    else {
        return ExecOutcome::spawn_failed("the shell vanished".into(), started.elapsed());
    };
    let mut guard = GroupGuard { pgid, armed: true };
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        // Both were requested as pipes just above.
        return ExecOutcome::spawn_failed("no output pipes".into(), started.elapsed());
    };
    tracing::debug!(pgid = pgid.as_raw(), command, "command started");

    let (stop_tx, stop_rx) = watch::channel(false);
    let cap = options.output_cap;
    let out = capture(
        stdout,
        Stream::Stdout,
        cap,
        on_line.clone(),
        stop_rx.clone(),
    );
    let err = capture(stderr, Stream::Stderr, cap, on_line, stop_rx);
    tokio::pin!(out, err);
    let mut out_done: Option<Captured> = None;
    let mut err_done: Option<Captured> = None;
    // The shell's exit status once reaped, or why it could not be.
    let mut leader: Option<Result<std::process::ExitStatus, String>> = None;
    let mut phase = Phase::Running;

    loop {
        let wake = match phase {
            Phase::Running => deadline,
            Phase::Terminating { kill_at } => kill_at.min(Instant::now() + GROUP_POLL),
            Phase::Killed { give_up_at } => give_up_at.min(Instant::now() + GROUP_POLL),
        };
        tokio::select! {
            captured = &mut out, if out_done.is_none() => out_done = Some(captured),
            captured = &mut err, if err_done.is_none() => err_done = Some(captured),
            status = child.wait(), if leader.is_none() => {
                leader = Some(status.map_err(|e| e.to_string()));
            }
            () = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        match phase {
            Phase::Running => {
                if leader.is_some() && out_done.is_some() && err_done.is_some() {
                    break;
                }
                if now >= deadline {
                    tracing::debug!(pgid = pgid.as_raw(), "timeout: SIGTERM to the group");
                    signal_group(pgid, Signal::SIGTERM);
                    phase = Phase::Terminating {
                        kill_at: later(now, options.kill_grace),
                    };
                }
            }
            Phase::Terminating { kill_at } => {
                if leader.is_some() && group_gone(pgid) {
                    break;
                }
                if now >= kill_at {
                    tracing::debug!(pgid = pgid.as_raw(), "grace over: SIGKILL to the group");
                    signal_group(pgid, Signal::SIGKILL);
                    phase = Phase::Killed {
                        give_up_at: now + KILL_WAIT,
                    };
                }
            }
            Phase::Killed { give_up_at } => {
                if leader.is_some() && group_gone(pgid) {
                    break;
                }
                if now >= give_up_at {
                    tracing::warn!(
                        pgid = pgid.as_raw(),
                        "process group still has members {KILL_WAIT:?} after SIGKILL; giving up on it"
                    );
                    break;
                }
            }
        }
    }

    let timed_out = phase != Phase::Running;
    if leader.is_some() {
        reap_group_zombies(pgid);
    }
    // Either the command finished (what it left running in the background
    // with its output elsewhere is left alone) or its group was killed.
    guard.armed = false;
    // Readers still open (output held by a process outside the group) stop
    // now and return what they have.
    let _ = stop_tx.send(true);
    let stdout = match out_done {
        Some(captured) => captured,
        None => (&mut out).await,
    };
    let stderr = match err_done {
        Some(captured) => captured,
        None => (&mut err).await,
    };
    let status = match leader {
        _ if timed_out => ExecStatus::TimedOut,
        Some(Ok(status)) => match (status.code(), status.signal()) {
            (Some(code), _) => ExecStatus::Exited(code),
            (None, Some(signal)) => ExecStatus::Signaled(signal),
            (None, None) => ExecStatus::Lost(format!("unexpected wait status {status:?}")),
        },
        Some(Err(e)) => ExecStatus::Lost(e),
        None => ExecStatus::Lost("the shell was not reaped".into()),
    };
    let outcome = ExecOutcome {
        status,
        duration: started.elapsed(),
        stdout,
        stderr,
    };
    tracing::debug!(pgid = pgid.as_raw(), status = ?outcome.status, duration = ?outcome.duration, "command ended");
    outcome
}

/// `at + duration`, or a year after `at` if that is not representable.
fn later(at: Instant, duration: Duration) -> Instant {
    at.checked_add(duration)
        .unwrap_or_else(|| at + Duration::from_secs(365 * 24 * 3600))
}

/// Where [`run`] is in ending a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the deadline.
    Running,
    /// `SIGTERM` sent; `SIGKILL` follows at `kill_at`.
    Terminating { kill_at: Instant },
    /// `SIGKILL` sent; the group should vanish before `give_up_at`.
    Killed { give_up_at: Instant },
}

/// Kills the command's process group if [`run`] is dropped before the end.
struct GroupGuard {
    pgid: Pid,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pgid, Signal::SIGKILL);
        }
    }
}

/// Sends `signal` to every process of the group; a group already gone is fine.
fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(pgid = pgid.as_raw(), %signal, "cannot signal the process group: {e}")
        }
    }
}

/// Whether no live process of the group is left. Only meaningful once the
/// shell (the group leader) has been reaped.
///
/// Zombies do not count: they are dead, only not yet reaped by their
/// parent, and where init does not reap orphans (some containers) they
/// would stay forever. The ones this process inherited are reaped first.
fn group_gone(pgid: Pid) -> bool {
    reap_group_zombies(pgid);
    match killpg(pgid, None) {
        Err(Errno::ESRCH) => true,
        _ => !group_has_live_member(pgid),
    }
}

/// Whether `/proc` shows a process of the group that is not a zombie; `true`
/// when `/proc` cannot be read, to be safe.
fn group_has_live_member(pgid: Pid) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|entry| {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            return false;
        }
        // A process gone since the listing is not a live member.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // "PID (COMM) STATE PPID PGRP ...", where COMM may hold anything.
        let Some((_, fields)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = fields.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|f| f.parse::<i32>().ok());
        pgrp == Some(pgid.as_raw()) && !matches!(state, Some("Z" | "X"))
    })
}

/// Reaps the members of the group that are zombie children of this process
/// (the group's orphans, when this process is a child subreaper). Must only
/// be called once the group leader, which tokio owns, has been reaped.
fn reap_group_zombies(pgid: Pid) {
    let group = Pid::from_raw(-pgid.as_raw());
    for _ in 0..MAX_REAP_PER_SWEEP {
        match waitpid(group, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Checks the working directory before spawning, for a clear message
/// instead of the bare `ENOENT` that `spawn` would give.
fn check_working_dir(cwd: &Path) -> Result<(), String> {
    match std::fs::metadata(cwd) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "working directory {} is not a directory",
            cwd.display()
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "working directory {} does not exist",
            cwd.display()
        )),
        Err(e) => Err(format!(
            "cannot use working directory {}: {e}",
            cwd.display()
        )),
    }
}

/// Reads one stream to its end (or until `stop`), keeping the first `cap`
/// bytes and streaming them as lines to `lines`.
async fn capture<R: AsyncRead + Unpin>(
    mut reader: R,
    stream: Stream,
    cap: usize,
    mut lines: Option<mpsc::Sender<OutputLine>>,
    mut stop: watch::Receiver<bool>,
) -> Captured {
    let mut captured = Captured::default();
    let mut splitter = LineSplitter::default();
    let mut chunk = vec![0; READ_CHUNK];
    let mut stopped = false;
    'read: loop {
        let n = tokio::select! {
            biased;
            _ = stop.changed() => {
                stopped = true;
                break;
            }
            read = reader.read(&mut chunk) => match read {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(?stream, "read error: {e}");
                    break;
                }
            },
        };
        captured.total_bytes += n as u64;
        let room = cap.saturating_sub(captured.bytes.len());
        let kept = &chunk[..n.min(room)];
        captured.bytes.extend_from_slice(kept);
        if let Some(tx) = &lines {
            for text in splitter.push(kept) {
                tokio::select! {
                    biased;
                    _ = stop.changed() => {
                        stopped = true;
                        break 'read;
                    }
                    sent = tx.send(OutputLine { stream, text }) => if sent.is_err() {
                        // The receiver is gone: keep capturing, stop streaming.
                        lines = None;
                        break;
                    }
                }
            }
        }
    }
    captured.truncated = captured.total_bytes > captured.bytes.len() as u64;
    if let (Some(tx), Some(text)) = (&lines, splitter.finish()) {
        let line = OutputLine { stream, text };
        if stopped {
            let _ = tx.try_send(line);
        } else {
            tokio::select! {
                biased;
                _ = stop.changed() => {}
                _ = tx.send(line) => {}
            }
        }
    }
    captured
}

/// Splits a byte stream into lines of at most [`MAX_STREAMED_LINE`] bytes.
#[derive(Debug, Default)]
struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Takes the next bytes and returns the lines they complete.
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for piece in bytes.split_inclusive(|&b| b == b'\n') {
            let (body, ended) = match piece.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (piece, false),
            };
            self.pending.extend_from_slice(body);
            while self.pending.len() > MAX_STREAMED_LINE {
                let rest = self.pending.split_off(MAX_STREAMED_LINE);
                lines.push(line_text(std::mem::replace(&mut self.pending, rest)));
            }
            if ended {
                lines.push(line_text(std::mem::take(&mut self.pending)));
            }
        }
        lines
    }

    /// The last line if the stream did not end with `\n`.
    fn finish(&mut self) -> Option<String> {
        (!self.pending.is_empty()).then(|| line_text(std::mem::take(&mut self.pending)))
    }
}

fn line_text(mut bytes: Vec<u8>) -> String {
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Why a `chdir` request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChdirError {
    /// The request named no directory.
    #[error("no directory given")]
    Empty,
    /// Nothing exists at the path (or a component of it is missing).
    #[error("{} does not exist", path.display())]
    NotFound {
        /// The requested path, joined to the current directory.
        path: PathBuf,
    },
    /// The path, or one of its components, is not a directory.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The requested path, joined to the current directory.
        path: PathBuf,
    },
    /// The path could not be resolved for another reason, such as
    /// permissions or a symbolic link loop.
    #[error("cannot use {}: {cause}", path.display())]
    Inaccessible {
        /// The requested path, joined to the current directory.
        path: PathBuf,
        /// What the system said.
        cause: io::Error,
    },
}

/// Resolves a `chdir` request: `requested` relative to `current` (or
/// absolute), canonicalized (symbolic links and `..` resolved), and checked
/// to be an existing directory. `~` is not expanded.
pub fn resolve_dir(current: &Path, requested: &Path) -> Result<PathBuf, ChdirError> {
    if requested.as_os_str().is_empty() {
        return Err(ChdirError::Empty);
    }
    let path = current.join(requested);
    let resolved = match std::fs::canonicalize(&path) {
        Ok(resolved) => resolved,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ChdirError::NotFound { path }),
        Err(e) if e.raw_os_error() == Some(Errno::ENOTDIR as i32) => {
            return Err(ChdirError::NotADirectory { path })
        }
        Err(cause) => return Err(ChdirError::Inaccessible { path, cause }),
    };
    match std::fs::metadata(&resolved) {
        Ok(meta) if meta.is_dir() => Ok(resolved),
        Ok(_) => Err(ChdirError::NotADirectory { path }),
        Err(cause) => Err(ChdirError::Inaccessible { path, cause }),
    }
}

#[cfg(test)]
mod tests;
