//! What a host reports for a job: the outcome of a command, a `chdir` or an
//! `exit`.
//!
//! These are wire types: the server that ran a command sends its
//! [`Outcome`] to the rest of the group, the server a monitor is connected
//! to relays it, and every server keeps its own in its job store.

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecStatus {
    /// The shell exited with this code. A command that does not exist is
    /// `Exited(127)`, as the shell reports it.
    Exited(i32),
    /// The shell was killed by this signal number.
    Signaled(i32),
    /// The timeout expired; the process group was terminated.
    TimedOut,
    /// The command could not be started: the working directory is missing or
    /// not a directory, or the shell could not be executed. The text says
    /// which.
    SpawnFailed(String),
    /// The command ran, but its exit status could not be collected (another
    /// part of this process reaped it). The text gives the error.
    Lost(String),
}

/// What was kept of one output stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    /// The first bytes of the stream, at most the output cap.
    pub bytes: Vec<u8>,
    /// Whether the stream had more bytes than were kept.
    pub truncated: bool,
    /// How many bytes the command wrote to the stream in all.
    pub total_bytes: u64,
}

impl Captured {
    /// The kept bytes as text, with invalid UTF-8 replaced.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes)
    }

    /// Keeps at most the first `max` bytes, marking the capture truncated
    /// if that drops any.
    pub fn trim(&mut self, max: usize) {
        if self.bytes.len() > max {
            self.bytes.truncate(max);
            self.truncated = true;
        }
    }
}

/// The outcome of one command on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutcome {
    /// How it ended.
    pub status: ExecStatus,
    /// From just before the command was started until it had finished (or
    /// had been killed and reaped).
    pub duration: Duration,
    /// Its standard output.
    pub stdout: Captured,
    /// Its standard error.
    pub stderr: Captured,
}

impl ExecOutcome {
    /// Whether the command exited with code 0.
    pub fn succeeded(&self) -> bool {
        self.status == ExecStatus::Exited(0)
    }

    /// The outcome of a command that could not be started.
    pub fn spawn_failed(reason: String, duration: Duration) -> Self {
        ExecOutcome {
            status: ExecStatus::SpawnFailed(reason),
            duration,
            stdout: Captured::default(),
            stderr: Captured::default(),
        }
    }
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The outcome of a `chdir` on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChdirOutcome {
    /// The working directory after the request: the new one, or the old one
    /// kept when the request was refused.
    pub dir: String,
    /// Why the request was refused (the directory is missing, is not a
    /// directory, or cannot be used), or `None` when it was applied.
    pub error: Option<String>,
}

/// What one host reports for one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// `simex`: the command ran, or could not be started.
    Exec(ExecOutcome),
    /// `chdir`: the directory was changed, or the old one kept.
    Chdir(ChdirOutcome),
    /// `exit`: the server accepted the request and leaves the group.
    Exit,
    /// The server stopped while it ran the job (it was killed or its host
    /// restarted); what became of the job is unknown. A job is never run
    /// again after this.
    Interrupted,
    /// `siminst` or `siminst --remove`.
    Package(PackageOutcome),
}

/// The outcome of a `siminst` (or `siminst --remove`) on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageOutcome {
    /// The package, as `name version` (or the name alone for a removal).
    pub package: String,
    /// How it ended.
    pub status: PackageStatus,
    /// From the command's delivery to its end on this host.
    pub duration: Duration,
    /// The install or uninstall script's standard output, if it ran.
    pub stdout: Captured,
    /// Its standard error.
    pub stderr: Captured,
}

/// How a `siminst` ended on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PackageStatus {
    /// Received, verified, unpacked, installed and recorded; `previous` is
    /// the version it replaced, if any.
    Installed {
        /// The version installed before.
        previous: Option<String>,
    },
    /// The same version (and digest) was installed already; nothing was
    /// done (`--force` installs again).
    AlreadyInstalled,
    /// The host does not meet the requirements; the text says which
    /// (`arch=aarch64, wanted x86_64`).
    NotEligible(String),
    /// `--remove`: the uninstall script ran and the record is gone.
    Removed,
    /// `--remove`: the package was not installed here.
    NotInstalled,
    /// It failed; the text says where (digest, archive, script, disk).
    /// Nothing of it is left installed and its staging is removed.
    Failed(String),
}

impl PackageOutcome {
    /// Whether the host holds what was asked (or, for a host that is not
    /// eligible, correctly declined).
    pub fn succeeded(&self) -> bool {
        !matches!(self.status, PackageStatus::Failed(_))
    }
}

impl Outcome {
    /// Whether the host did what was asked: a command that exited with 0, a
    /// `chdir` applied, an `exit` accepted.
    pub fn succeeded(&self) -> bool {
        match self {
            Outcome::Exec(outcome) => outcome.succeeded(),
            Outcome::Chdir(outcome) => outcome.error.is_none(),
            Outcome::Exit => true,
            Outcome::Interrupted => false,
            Outcome::Package(outcome) => outcome.succeeded(),
        }
    }

    /// Keeps at most `max` bytes of each output stream (see
    /// [`Captured::trim`]).
    pub fn trim(&mut self, max: usize) {
        match self {
            Outcome::Exec(outcome) => {
                outcome.stdout.trim(max);
                outcome.stderr.trim(max);
            }
            Outcome::Package(outcome) => {
                outcome.stdout.trim(max);
                outcome.stderr.trim(max);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_marks_truncation() {
        let mut captured = Captured {
            bytes: b"hello world".to_vec(),
            truncated: false,
            total_bytes: 11,
        };
        captured.trim(20);
        assert!(!captured.truncated);
        captured.trim(5);
        assert_eq!(captured.text(), "hello");
        assert!(captured.truncated);
        assert_eq!(captured.total_bytes, 11);
    }

    #[test]
    fn success_by_kind() {
        let exec = |status| {
            Outcome::Exec(ExecOutcome {
                status,
                duration: Duration::ZERO,
                stdout: Captured::default(),
                stderr: Captured::default(),
            })
        };
        assert!(exec(ExecStatus::Exited(0)).succeeded());
        assert!(!exec(ExecStatus::Exited(1)).succeeded());
        assert!(!exec(ExecStatus::TimedOut).succeeded());
        let chdir = |error: Option<&str>| {
            Outcome::Chdir(ChdirOutcome {
                dir: "/srv".into(),
                error: error.map(str::to_owned),
            })
        };
        assert!(chdir(None).succeeded());
        assert!(!chdir(Some("missing")).succeeded());
        assert!(Outcome::Exit.succeeded());
        assert!(!Outcome::Interrupted.succeeded());
    }
}
