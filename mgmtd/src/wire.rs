//! What the servers say to each other in the `mgmt` group.
//!
//! Every message is a version byte ([`WIRE_VERSION`]) and a postcard
//! [`GroupMessage`]. The group core has authenticated the sender (every
//! datagram is sealed with the cluster key), but a server still checks every
//! message against the bounds below before acting on it: a bug or an older
//! version elsewhere must not make it run something unexpected or allocate
//! without limit. A message that fails is dropped and logged.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use flotilla_client::message::{
    is_valid_host_name, HostStatus, JobSummary, MAX_ATTRIBUTE_KEY, MAX_ATTRIBUTE_VALUE,
    MAX_COMMAND, MAX_HOSTS, MAX_JOBS, MAX_LINE, MAX_TIMEOUT,
};
use flotilla_client::{JobId, Outcome, Stream};
use serde::{Deserialize, Serialize};

use crate::group::MemberId;
use crate::jobs::JobRecord;

/// The version byte in front of every group message.
pub const WIRE_VERSION: u8 = 1;
/// The most host attributes an announcement may carry.
pub const MAX_ATTRIBUTES: usize = 256;
/// The most job records one server sends in answer to a job query.
pub const MAX_JOB_MATCHES: usize = 16;
/// The longest client identity or address carried.
const MAX_LABEL: usize = 256;

/// One message in the `mgmt` group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GroupMessage {
    /// A server tells the group who it is (sent at every view change).
    Announce(Announce),
    /// A command for the targets. Its job id makes it run at most once.
    Command(Command),
    /// A target's outcome of a job.
    Result {
        /// The job.
        job: JobId,
        /// The target.
        host: String,
        /// Its outcome (output trimmed for the relay).
        outcome: Outcome,
    },
    /// A line a target's command wrote (`simex --stream`).
    Output {
        /// The job.
        job: JobId,
        /// The target.
        host: String,
        /// Which stream.
        stream: Stream,
        /// The line.
        line: String,
    },
    /// A question for every server (status, job records).
    Query {
        /// Chosen by the asking server, unique among its queries.
        id: u64,
        /// The asking server: only it reads the replies.
        origin: MemberId,
        /// What is asked.
        query: Query,
    },
    /// One server's answer to a query.
    Reply {
        /// The query's id.
        id: u64,
        /// The asking server.
        origin: MemberId,
        /// The answering server's host name.
        host: String,
        /// The answer.
        reply: Box<Reply>,
    },
    /// A siminst target in the job's installation group says which chunks
    /// it still misses (inclusive ranges, at most
    /// [`crate::siminst::MAX_RANGES`]): when it joins, after a merge, and
    /// after the end marker. The origin re-sends them.
    PackageHave {
        /// The job.
        job: JobId,
        /// The target.
        host: String,
        /// The missing chunks.
        missing: Vec<(u32, u32)>,
    },
}

/// Who a server is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// Its host name.
    pub name: String,
    /// Its host attributes.
    pub attributes: BTreeMap<String, String>,
    /// Its group-communication address.
    pub address: String,
    /// When it started, by its clock.
    pub started_at: SystemTime,
}

/// A command, as multicast by the server a monitor asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The job, chosen by the monitor.
    pub job: JobId,
    /// The server the monitor is connected to.
    pub origin: MemberId,
    /// The monitor, as that server identified it (for the audit logs).
    pub client: String,
    /// The targets, resolved in M by the origin.
    pub targets: Vec<String>,
    /// What to do.
    pub op: Op,
}

/// What a command does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Run a command.
    Simex {
        /// The command line, for `SHELL -c`.
        command: String,
        /// Its timeout, the same on every host.
        timeout: Duration,
        /// Whether to multicast its output lines as they come.
        stream: bool,
    },
    /// Change the working directory.
    Chdir {
        /// The directory.
        dir: String,
    },
    /// Leave the group and stop.
    Exit,
    /// Install a package (siminst): the advertisement.
    Siminst(Box<crate::siminst::Advertisement>),
    /// Uninstall a package.
    Remove {
        /// The package's name.
        name: String,
    },
}

impl Op {
    /// The command as people read it.
    pub fn describe(&self) -> String {
        match self {
            Op::Simex { command, .. } => command.clone(),
            Op::Chdir { dir } => format!("chdir {dir}"),
            Op::Exit => "exit".to_owned(),
            Op::Siminst(ad) => ad.describe(),
            Op::Remove { name } => format!("siminst --remove {name}"),
        }
    }
}

/// A question for every server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// The server's and its host's state.
    Status,
    /// The records of the jobs whose id starts with the prefix.
    Job {
        /// At least 4 hexadecimal digits.
        prefix: String,
    },
    /// The most recent jobs.
    Jobs {
        /// At most this many.
        limit: u32,
    },
}

/// One server's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// To [`Query::Status`].
    Status(Box<HostStatus>),
    /// To [`Query::Job`]: the matching records (at most
    /// [`MAX_JOB_MATCHES`]).
    Job(Vec<JobRecord>),
    /// To [`Query::Jobs`]: this server's view of its recent jobs.
    Jobs(Vec<JobSummary>),
}

/// Why a group message was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// An empty payload.
    #[error("empty message")]
    Empty,
    /// Another version.
    #[error("group message of version {0}; this server speaks version {WIRE_VERSION}")]
    Version(u8),
    /// Not a message.
    #[error("malformed group message: {0}")]
    Decode(String),
    /// A field outside its bounds.
    #[error("group message out of bounds: {0}")]
    Bounds(&'static str),
    /// Could not be encoded.
    #[error("cannot encode a group message: {0}")]
    Encode(String),
}

/// Encodes a message.
pub fn encode(message: &GroupMessage) -> Result<Vec<u8>, WireError> {
    postcard::to_extend(message, vec![WIRE_VERSION]).map_err(|e| WireError::Encode(e.to_string()))
}

/// Decodes and checks a message.
pub fn decode(payload: &[u8]) -> Result<GroupMessage, WireError> {
    let Some((&version, body)) = payload.split_first() else {
        return Err(WireError::Empty);
    };
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let message: GroupMessage =
        postcard::from_bytes(body).map_err(|e| WireError::Decode(e.to_string()))?;
    check(&message)?;
    Ok(message)
}

fn check_host(name: &str) -> Result<(), WireError> {
    if is_valid_host_name(name) {
        Ok(())
    } else {
        Err(WireError::Bounds("host name"))
    }
}

fn check(message: &GroupMessage) -> Result<(), WireError> {
    let bound = |ok: bool, what| {
        if ok {
            Ok(())
        } else {
            Err(WireError::Bounds(what))
        }
    };
    match message {
        GroupMessage::Announce(a) => {
            check_host(&a.name)?;
            bound(a.attributes.len() <= MAX_ATTRIBUTES, "attribute count")?;
            bound(
                a.attributes.iter().all(|(k, v)| {
                    !k.is_empty() && k.len() <= MAX_ATTRIBUTE_KEY && v.len() <= MAX_ATTRIBUTE_VALUE
                }),
                "attribute",
            )?;
            bound(a.address.len() <= MAX_LABEL, "address")
        }
        GroupMessage::Command(c) => {
            bound(c.client.len() <= MAX_LABEL, "client")?;
            bound(c.targets.len() <= MAX_HOSTS, "target count")?;
            c.targets.iter().try_for_each(|t| check_host(t))?;
            match &c.op {
                Op::Simex {
                    command, timeout, ..
                } => {
                    bound(
                        !command.is_empty() && command.len() <= MAX_COMMAND,
                        "command",
                    )?;
                    bound(!timeout.is_zero() && *timeout <= MAX_TIMEOUT, "timeout")
                }
                Op::Chdir { dir } => {
                    bound(!dir.is_empty() && dir.len() <= MAX_COMMAND, "directory")
                }
                Op::Exit => Ok(()),
                Op::Siminst(ad) => ad.check().map_err(WireError::Bounds),
                Op::Remove { name } => bound(
                    flotilla_client::message::is_valid_package_name(name),
                    "package name",
                ),
            }
        }
        GroupMessage::Result { host, .. } => check_host(host),
        GroupMessage::Output { host, line, .. } => {
            check_host(host)?;
            bound(line.len() <= MAX_LINE, "line")
        }
        GroupMessage::Query { query, .. } => match query {
            Query::Status => Ok(()),
            Query::Job { prefix } => bound(
                flotilla_client::job::is_valid_prefix(prefix),
                "job id prefix",
            ),
            Query::Jobs { limit } => bound(*limit <= MAX_JOBS, "job limit"),
        },
        GroupMessage::Reply { host, reply, .. } => {
            check_host(host)?;
            match reply.as_ref() {
                Reply::Status(_) => Ok(()),
                Reply::Job(records) => bound(records.len() <= MAX_JOB_MATCHES, "job records"),
                Reply::Jobs(jobs) => bound(jobs.len() <= MAX_JOBS as usize, "jobs"),
            }
        }
        GroupMessage::PackageHave { host, missing, .. } => {
            check_host(host)?;
            bound(
                missing.len() <= crate::siminst::MAX_RANGES
                    && missing.iter().all(|(from, to)| from <= to),
                "missing chunks",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_bounds() -> Result<(), WireError> {
        let command = GroupMessage::Command(Command {
            job: JobId::from_bytes([3; 16]),
            origin: MemberId {
                node: 1,
                incarnation: 2,
            },
            client: "unix uid=0".into(),
            targets: vec!["h1".into(), "h2".into()],
            op: Op::Simex {
                command: "true".into(),
                timeout: Duration::from_secs(3),
                stream: false,
            },
        });
        let bytes = encode(&command)?;
        assert_eq!(decode(&bytes)?, command);
        let mut other = bytes.clone();
        other[0] = 9;
        assert_eq!(decode(&other), Err(WireError::Version(9)));
        let bad = GroupMessage::Result {
            job: JobId::from_bytes([3; 16]),
            host: "no spaces allowed".into(),
            outcome: Outcome::Exit,
        };
        assert!(matches!(decode(&encode(&bad)?), Err(WireError::Bounds(_))));
        Ok(())
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = decode(&bytes);
            let mut versioned = vec![WIRE_VERSION];
            versioned.extend_from_slice(&bytes);
            let _ = decode(&versioned);
        }
    }
}
