//! The messages of the client protocol: [`Request`]s from the monitor and
//! [`ServerMessage`]s from the server.
//!
//! # A conversation
//!
//! A connection carries one request. The monitor sends it; the server
//! answers with a sequence of messages and closes the connection after the
//! last one:
//!
//! | request | the server's answer |
//! |---|---|
//! | [`Request::Simex`], [`Request::Chdir`], [`Request::Exit`] | [`ServerMessage::Accepted`], then any number of [`ServerMessage::View`], [`ServerMessage::Output`] and [`ServerMessage::HostResult`], then [`ServerMessage::Done`] |
//! | [`Request::Job`] | as for a command: the job's targets, the outcomes the hosts in M keep, then [`ServerMessage::Done`] naming the hosts still running it or keeping no record |
//! | [`Request::Status`] | [`ServerMessage::Status`] |
//! | [`Request::Members`] | [`ServerMessage::Members`] |
//! | [`Request::Jobs`] | [`ServerMessage::Jobs`] |
//! | [`Request::Map`] | [`ServerMessage::Map`] |
//!
//! Any request may instead be answered by one [`ServerMessage::Error`].
//! The M/NR bookkeeping of a command ([`crate::tracker`]) consumes exactly
//! these messages.
//!
//! # Bounds
//!
//! A frame is at most [`MAX_FRAME`] bytes, so no decoded message can be
//! larger. [`Request::validate`] checks the rest: the length of a command,
//! the number of hosts and conditions, names and attribute sizes, the
//! timeout. A server refuses a request that fails it with
//! [`ErrorKind::BadRequest`], and a monitor checks it before sending.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::job::{is_valid_prefix, JobId, MIN_PREFIX};
use crate::outcome::{Outcome, Stream};

/// The largest frame either side sends or accepts: 1 MiB.
pub const MAX_FRAME: usize = 1 << 20;
/// The longest command (`simex`) or directory (`chdir`), in bytes.
pub const MAX_COMMAND: usize = 64 * 1024;
/// The most hosts named in a request or reply.
pub const MAX_HOSTS: usize = 4096;
/// The longest host name.
pub const MAX_HOST_NAME: usize = 253;
/// The most `--where` conditions.
pub const MAX_CONDITIONS: usize = 32;
/// The longest attribute key in a condition.
pub const MAX_ATTRIBUTE_KEY: usize = 64;
/// The longest attribute value in a condition.
pub const MAX_ATTRIBUTE_VALUE: usize = 1024;
/// The longest command timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The most bytes of each output stream in one [`ServerMessage::HostResult`]
/// (more was kept by the host: `monitor` says it was truncated, and the
/// host's job store has the rest).
pub const MAX_RELAYED_OUTPUT: usize = 256 * 1024;
/// The longest line in a [`ServerMessage::Output`].
pub const MAX_LINE: usize = 8 * 1024;
/// The most jobs a [`Request::Jobs`] may ask for.
pub const MAX_JOBS: u32 = 1000;

/// What a monitor asks of the server it is connected to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The state of every server in M and its host.
    Status,
    /// M: the members of the `mgmt` group, with their addresses and
    /// attributes.
    Members,
    /// Run a command on the targets.
    Simex(Simex),
    /// Change the working directory of every server in M for later
    /// commands.
    Chdir {
        /// The job's id, chosen by the monitor.
        job: JobId,
        /// The directory, absolute or relative to each server's current one.
        dir: String,
    },
    /// Terminate the targeted servers: each leaves the group cleanly.
    Exit {
        /// The job's id, chosen by the monitor.
        job: JobId,
        /// Which servers.
        targets: Targets,
    },
    /// Gather the report of a recent job from the servers in M.
    Job {
        /// The job's id, or a prefix of at least [`MIN_PREFIX`] hexadecimal
        /// digits.
        id: String,
    },
    /// List the recent jobs the servers in M keep, newest first.
    Jobs {
        /// At most this many (at most [`MAX_JOBS`]).
        limit: u32,
    },
    /// A replicated-map request ([`maps::api`]), answered by the maps of
    /// the server connected to (updates are forwarded to the primary
    /// server) with one [`ServerMessage::Map`].
    Map(maps::api::Request),
    /// Install a package on the targets that meet its requirements. The
    /// package file follows as [`Request::PackageData`] frames, exactly
    /// [`Siminst::size`] bytes in all; then the server answers as for a
    /// command.
    Siminst(Siminst),
    /// A piece of the package file of a [`Request::Siminst`], at most
    /// [`MAX_PACKAGE_DATA`] bytes.
    PackageData(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Run a package's uninstall script on the targets and forget it.
    Remove {
        /// The job's id, chosen by the monitor.
        job: JobId,
        /// Which servers.
        targets: Targets,
        /// The package's name.
        name: String,
    },
}

/// The largest package file `siminst` carries: 2 GiB.
pub const MAX_PACKAGE_SIZE: u64 = 2 << 30;
/// The most bytes of package data in one [`Request::PackageData`].
pub const MAX_PACKAGE_DATA: usize = 256 * 1024;
/// The postcard tag of [`Request::PackageData`] (its variant's index, a
/// one-byte varint), which [`crate::frame::package_data_range`] looks for
/// to find a package's data in a frame without decoding it into a copy.
/// A test checks it against the encoding of the enum.
pub const PACKAGE_DATA_TAG: u8 = 9;
/// The longest manifest carried in a [`Siminst`].
pub const MAX_MANIFEST: usize = 64 * 1024;
/// The longest package name.
pub const MAX_PACKAGE_NAME: usize = 64;

/// A `siminst` request: the advertisement of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Siminst {
    /// The job's id, chosen by the monitor.
    pub job: JobId,
    /// Which servers may install it (each still checks the requirements).
    pub targets: Targets,
    /// The package's manifest (`flotilla.yaml`) as the package holds it:
    /// name, version and requirements Rp. Each host checks that the
    /// unpacked package holds the same name and version.
    pub manifest: String,
    /// The package file's size in bytes.
    pub size: u64,
    /// The SHA-256 digest every host verifies, 64 hexadecimal digits.
    pub sha256: String,
    /// Install even when the same version is installed already.
    pub force: bool,
    /// How long the transfer and install may take; the servers' default
    /// when `None`.
    pub timeout: Option<Duration>,
}

/// A `simex` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Simex {
    /// The job's id, chosen by the monitor: sending the same request twice
    /// runs it once.
    pub job: JobId,
    /// Which servers run it.
    pub targets: Targets,
    /// How long it may run on each host; the servers' configured default
    /// when `None`.
    pub timeout: Option<Duration>,
    /// Whether to send the output lines as they are written
    /// ([`ServerMessage::Output`]).
    pub stream: bool,
    /// The command, run as `SHELL -c COMMAND` on each target.
    pub command: String,
}

/// Which servers a command is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Targets {
    /// Every server in M.
    All,
    /// These servers, by name; a name not in M is reported as an unknown
    /// host.
    Hosts(Vec<String>),
    /// The servers in M whose host attributes have all these values.
    Where(Vec<(String, String)>),
}

/// Why a request is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// `simex` with an empty command.
    #[error("the command is empty")]
    EmptyCommand,
    /// A command or directory longer than [`MAX_COMMAND`].
    #[error("the {what} is {len} bytes long, more than the limit of {MAX_COMMAND}")]
    TooLong {
        /// "command" or "directory".
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// `chdir` with an empty directory.
    #[error("no directory given")]
    EmptyDirectory,
    /// More than [`MAX_HOSTS`] hosts.
    #[error("{0} hosts named, more than the limit of {MAX_HOSTS}")]
    TooManyHosts(usize),
    /// `--targets` with no host.
    #[error("no target host named")]
    NoHosts,
    /// A host name that is empty, too long or holds a character no host name
    /// has.
    #[error("{0:?} is not a host name (letters, digits, '-', '_', '.'; at most {MAX_HOST_NAME})")]
    BadHostName(String),
    /// More than [`MAX_CONDITIONS`] conditions.
    #[error("{0} conditions, more than the limit of {MAX_CONDITIONS}")]
    TooManyConditions(usize),
    /// `--where` with no condition.
    #[error("no condition given")]
    NoConditions,
    /// A condition's key is empty or too long, or its value too long.
    #[error("bad condition {key:?}={value:?}: keys have 1 to {MAX_ATTRIBUTE_KEY} bytes, values at most {MAX_ATTRIBUTE_VALUE}")]
    BadCondition {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// A timeout of zero or longer than [`MAX_TIMEOUT`].
    #[error("a timeout of {0:?} is outside 1ms..=24h")]
    BadTimeout(Duration),
    /// A job id prefix that is too short, too long or not hexadecimal.
    #[error(
        "expected at least {MIN_PREFIX} and at most 32 hexadecimal digits of a job id, found {0:?}"
    )]
    BadJobPrefix(String),
    /// `jobs` asking for more than [`MAX_JOBS`].
    #[error("at most {MAX_JOBS} jobs may be listed, {0} asked")]
    TooManyJobs(u32),
    /// A map request breaks a bound of [`maps::bounds`].
    #[error("{0}")]
    Map(maps::BoundError),
    /// A `siminst` request outside its bounds (the text says which).
    #[error("bad package request: {0}")]
    BadPackage(String),
}

/// Whether `name` can be a host name: 1 to [`MAX_HOST_NAME`] bytes of
/// letters, digits, `-`, `_` and `.`.
pub fn is_valid_host_name(name: &str) -> bool {
    (1..=MAX_HOST_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Request {
    /// Checks the request against the protocol's bounds.
    pub fn validate(&self) -> Result<(), RequestError> {
        match self {
            Request::Status | Request::Members => Ok(()),
            Request::Simex(simex) => {
                if simex.command.trim().is_empty() {
                    return Err(RequestError::EmptyCommand);
                }
                if simex.command.len() > MAX_COMMAND {
                    return Err(RequestError::TooLong {
                        what: "command",
                        len: simex.command.len(),
                    });
                }
                if let Some(timeout) = simex.timeout {
                    if timeout.is_zero() || timeout > MAX_TIMEOUT {
                        return Err(RequestError::BadTimeout(timeout));
                    }
                }
                simex.targets.validate()
            }
            Request::Chdir { dir, .. } => {
                if dir.is_empty() {
                    return Err(RequestError::EmptyDirectory);
                }
                if dir.len() > MAX_COMMAND {
                    return Err(RequestError::TooLong {
                        what: "directory",
                        len: dir.len(),
                    });
                }
                Ok(())
            }
            Request::Exit { targets, .. } => targets.validate(),
            Request::Job { id } => {
                if is_valid_prefix(id) {
                    Ok(())
                } else {
                    Err(RequestError::BadJobPrefix(id.clone()))
                }
            }
            Request::Map(request) => request.validate().map_err(RequestError::Map),
            Request::Jobs { limit } => {
                if *limit > MAX_JOBS {
                    Err(RequestError::TooManyJobs(*limit))
                } else {
                    Ok(())
                }
            }
            Request::Siminst(siminst) => siminst.validate(),
            Request::PackageData(data) => {
                if data.len() > MAX_PACKAGE_DATA {
                    Err(RequestError::BadPackage(format!(
                        "{} bytes of data in one frame, more than {MAX_PACKAGE_DATA}",
                        data.len()
                    )))
                } else {
                    Ok(())
                }
            }
            Request::Remove { targets, name, .. } => {
                if !is_valid_package_name(name) {
                    return Err(RequestError::BadPackage(format!(
                        "{name:?} is not a package name"
                    )));
                }
                targets.validate()
            }
        }
    }

    /// The job id the monitor chose, for the requests that start a job.
    pub fn job(&self) -> Option<JobId> {
        match self {
            Request::Simex(simex) => Some(simex.job),
            Request::Chdir { job, .. } | Request::Exit { job, .. } => Some(*job),
            Request::Siminst(siminst) => Some(siminst.job),
            Request::Remove { job, .. } => Some(*job),
            _ => None,
        }
    }
}

/// Whether `name` can be a package name: 1 to [`MAX_PACKAGE_NAME`]
/// lowercase letters, digits, `.`, `_`, `+` and `-`, starting with a letter
/// or digit (the manifest's rule).
pub fn is_valid_package_name(name: &str) -> bool {
    (1..=MAX_PACKAGE_NAME).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._+-".contains(&b))
}

impl Siminst {
    /// Checks the advertisement against the protocol's bounds.
    pub fn validate(&self) -> Result<(), RequestError> {
        let bad = |text: String| Err(RequestError::BadPackage(text));
        if self.manifest.is_empty() || self.manifest.len() > MAX_MANIFEST {
            return bad(format!(
                "a manifest of {} bytes (1 to {MAX_MANIFEST})",
                self.manifest.len()
            ));
        }
        if self.size == 0 || self.size > MAX_PACKAGE_SIZE {
            return bad(format!(
                "a package of {} bytes (1 to {MAX_PACKAGE_SIZE})",
                self.size
            ));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad(format!(
                "{:?} is not a SHA-256 digest (64 hexadecimal digits)",
                self.sha256
            ));
        }
        if let Some(timeout) = self.timeout {
            if timeout.is_zero() || timeout > MAX_TIMEOUT {
                return Err(RequestError::BadTimeout(timeout));
            }
        }
        self.targets.validate()
    }
}

impl Targets {
    /// Checks the targets against the protocol's bounds.
    pub fn validate(&self) -> Result<(), RequestError> {
        match self {
            Targets::All => Ok(()),
            Targets::Hosts(hosts) => {
                if hosts.is_empty() {
                    return Err(RequestError::NoHosts);
                }
                if hosts.len() > MAX_HOSTS {
                    return Err(RequestError::TooManyHosts(hosts.len()));
                }
                match hosts.iter().find(|h| !is_valid_host_name(h)) {
                    Some(bad) => Err(RequestError::BadHostName(bad.clone())),
                    None => Ok(()),
                }
            }
            Targets::Where(conditions) => {
                if conditions.is_empty() {
                    return Err(RequestError::NoConditions);
                }
                if conditions.len() > MAX_CONDITIONS {
                    return Err(RequestError::TooManyConditions(conditions.len()));
                }
                let bad = conditions.iter().find(|(k, v)| {
                    k.is_empty() || k.len() > MAX_ATTRIBUTE_KEY || v.len() > MAX_ATTRIBUTE_VALUE
                });
                match bad {
                    Some((key, value)) => Err(RequestError::BadCondition {
                        key: key.clone(),
                        value: value.clone(),
                    }),
                    None => Ok(()),
                }
            }
        }
    }
}

/// What a server sends to a monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// The command was accepted and multicast to the group (or, for
    /// [`Request::Job`], the job was found).
    Accepted(Accepted),
    /// M changed: the members of the `mgmt` group now.
    View {
        /// The host names, sorted.
        members: Vec<String>,
    },
    /// A line a target wrote (only for `simex` with `stream`).
    Output {
        /// The target.
        host: String,
        /// Which stream.
        stream: Stream,
        /// The line, without its end of line; at most [`MAX_LINE`] bytes.
        line: String,
    },
    /// A target's outcome.
    HostResult {
        /// The target.
        host: String,
        /// What it reported. Its output is trimmed to
        /// [`MAX_RELAYED_OUTPUT`] per stream.
        outcome: Outcome,
    },
    /// The server will send nothing more for this job: every target has
    /// reported, dropped out of M, or is listed here.
    Done {
        /// The targets still in NR when the server stopped waiting, and why.
        unfinished: Vec<(String, Unfinished)>,
    },
    /// The answer to [`Request::Status`].
    Status(StatusReply),
    /// The answer to [`Request::Members`].
    Members(MembersReply),
    /// The answer to [`Request::Jobs`].
    Jobs(JobsReply),
    /// The answer to [`Request::Map`].
    Map(maps::api::Response),
    /// The request was refused or failed.
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// What happened, for people.
        message: String,
    },
}

/// The start of a job's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The job.
    pub job: JobId,
    /// The command as people read it: `uname -a`, `chdir /srv`, `exit`.
    pub command: String,
    /// The targets in M: NR at the start. Sorted.
    pub targets: Vec<String>,
    /// Hosts named in the request that are not in M. Sorted.
    pub unknown_hosts: Vec<String>,
    /// M when the command was accepted. Sorted.
    pub members: Vec<String>,
    /// How long the server waits for the targets' outcomes before it
    /// reports the rest as timed out.
    pub deadline: Duration,
}

/// Why a target of a job has no outcome in a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Unfinished {
    /// It left M before reporting: its outcome is unknown.
    Disconnected,
    /// It did not report before the deadline.
    TimedOut,
    /// (A gathered job report) it has accepted the job and not finished it.
    Running,
    /// (A gathered job report) it is in M but keeps no record of the job
    /// (the record was evicted, or the command never reached it).
    NoRecord,
}

/// Kinds of [`ServerMessage::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The client did not prove it may use the server: its peer
    /// credentials are not the socket owner's or root's, or it does not
    /// hold the cluster key.
    Unauthenticated,
    /// The client speaks a protocol version the server does not.
    UnsupportedVersion,
    /// The request is malformed or outside the protocol's bounds.
    BadRequest,
    /// No job matches the id.
    NotFound,
    /// Several jobs match the id prefix.
    Ambiguous,
    /// The server is not in a view of the `mgmt` group yet.
    NotReady,
    /// The server has too much to do: too many connections or jobs.
    Busy,
    /// The server is shutting down.
    ShuttingDown,
    /// Something failed inside the server; the message says what.
    Internal,
}

/// The answer to [`Request::Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The servers in M that answered, sorted by name.
    pub hosts: Vec<HostStatus>,
    /// The servers in M that did not answer, and why.
    pub unanswered: Vec<(String, Unfinished)>,
}

/// The state of one server and its host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host's name in the fleet.
    pub name: String,
    /// Its node id in the group.
    pub node: u32,
    /// The server's incarnation: it grows at every start.
    pub incarnation: u64,
    /// The server's version.
    pub version: String,
    /// How long the server has been running.
    pub uptime: Duration,
    /// How long the host has been up, from `/proc/uptime`.
    pub host_uptime: Option<Duration>,
    /// The 1, 5 and 15 minute load averages, from `/proc/loadavg`.
    pub load: Option<[f64; 3]>,
    /// Memory, from `/proc/meminfo`.
    pub memory: Option<Memory>,
    /// The file system of the server's data directory.
    pub disk: Option<Disk>,
    /// The view of the `mgmt` group as this server sees it.
    pub view: ViewSummary,
    /// The working directory for `simex`.
    pub cwd: String,
    /// The replicated maps and their versions. Always empty in this
    /// version: filled once the maps land.
    pub maps: Vec<MapVersion>,
    /// The packages installed by `siminst`. Always empty in this version:
    /// filled once `siminst` lands.
    pub packages: Vec<PackageVersion>,
}

/// Memory of a host, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable`.
    pub available: u64,
}

/// A file system's space, in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// The directory measured (the server's data directory).
    pub path: String,
    /// Space available to the server.
    pub free: u64,
    /// Size of the file system.
    pub total: u64,
}

/// A view as one server sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewSummary {
    /// The view's id, as the group core names it.
    pub id: String,
    /// Its members' names, sorted.
    pub members: Vec<String>,
}

/// A replicated map's version (reserved: see [`HostStatus::maps`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapVersion {
    /// The map.
    pub name: String,
    /// Its version on this server.
    pub version: u64,
}

/// An installed package (reserved: see [`HostStatus::packages`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageVersion {
    /// The package.
    pub name: String,
    /// Its version.
    pub version: String,
}

/// The answer to [`Request::Members`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersReply {
    /// The view's id.
    pub view: String,
    /// M, sorted by name.
    pub members: Vec<Member>,
}

/// One member of M.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its name.
    pub host: String,
    /// Its node id.
    pub node: u32,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its group-communication address.
    pub address: String,
    /// Its host attributes.
    pub attributes: BTreeMap<String, String>,
    /// Since when (by the answering server's clock) it has been in the view
    /// without interruption.
    pub since: SystemTime,
}

/// The answer to [`Request::Jobs`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobsReply {
    /// The jobs, newest first.
    pub jobs: Vec<JobSummary>,
    /// The servers in M that did not answer, and why.
    pub unanswered: Vec<(String, Unfinished)>,
}

/// A recent job, as the servers in M keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    /// The job.
    pub job: JobId,
    /// When the first server accepted it.
    pub accepted_at: SystemTime,
    /// The command as people read it.
    pub command: String,
    /// How many targets it had.
    pub targets: u32,
    /// How many of them reported success.
    pub ok: u32,
    /// How many reported anything else.
    pub failed: u32,
    /// How many are still running it.
    pub running: u32,
}
