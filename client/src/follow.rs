//! Following a job to its report: the monitor's side of a command.
//!
//! [`follow`] reads a job's answer ([`crate::message`]) from a connection,
//! keeps M and NR with a [`Tracker`], tells an observer what happens (for
//! progress and streamed output), and returns the [`JobReport`] once the
//! server says it is done. If the server says nothing for a long time,
//! [`follow`] stops waiting [`GRACE`] after the job's deadline and records
//! the targets still in NR as timed out.

use std::time::Duration;

use tokio::time::Instant;

use crate::job::JobId;
use crate::message::{Accepted, ServerMessage};
use crate::outcome::{Outcome, Stream};
use crate::tracker::{HostState, Tracker};
use crate::transport::{ClientError, Connection};

/// How long past the job's deadline the monitor waits for the server.
pub const GRACE: Duration = Duration::from_secs(10);

/// Something that happened while following a job.
#[derive(Debug, Clone, Copy)]
pub enum FollowEvent<'a> {
    /// The server accepted the command: the job id, NR and M.
    Accepted(&'a Accepted),
    /// M changed; the targets it dropped from NR are given.
    View {
        /// M now.
        members: &'a [String],
        /// The targets recorded as disconnected.
        disconnected: &'a [String],
    },
    /// A target wrote a line.
    Output {
        /// The target.
        host: &'a str,
        /// The stream.
        stream: Stream,
        /// The line.
        line: &'a str,
    },
    /// A target reported its outcome.
    Result {
        /// The target.
        host: &'a str,
        /// Its outcome.
        outcome: &'a Outcome,
    },
}

/// The report of a job: every host's final state.
#[derive(Debug, Clone, PartialEq)]
pub struct JobReport {
    /// The job.
    pub job: JobId,
    /// The command as people read it.
    pub command: String,
    /// Every target, unknown host and host of M that was not targeted,
    /// sorted by name.
    pub hosts: Vec<(String, HostState<Outcome>)>,
}

impl JobReport {
    /// How many hosts the job was for: its targets and the unknown hosts
    /// it named (not the hosts of M it left out).
    pub fn targeted(&self) -> usize {
        self.hosts
            .iter()
            .filter(|(_, state)| !matches!(state, HostState::NotTargeted))
            .count()
    }

    /// Whether every target reported success (and no host named was
    /// unknown).
    pub fn all_ok(&self) -> bool {
        self.hosts.iter().all(|(_, state)| match state {
            HostState::Reported(outcome) => outcome.succeeded(),
            HostState::NotTargeted => true,
            _ => false,
        })
    }
}

/// Follows the job whose request was just sent on `connection` to its
/// report, calling `observe` with each event and the tracker after it.
pub async fn follow(
    connection: &mut Connection,
    mut observe: impl FnMut(FollowEvent<'_>, &Tracker<Outcome>),
) -> Result<JobReport, ClientError> {
    let accepted = match connection.recv().await? {
        Some(ServerMessage::Accepted(accepted)) => accepted,
        Some(ServerMessage::Error { kind, message }) => {
            return Err(ClientError::Refused { kind, message })
        }
        Some(other) => {
            return Err(ClientError::Unexpected(format!(
                "expected the job's acceptance, got {}",
                message_name(&other)
            )))
        }
        None => return Err(ClientError::Closed),
    };
    let mut tracker = Tracker::from_accepted(&accepted);
    observe(FollowEvent::Accepted(&accepted), &tracker);
    let give_up = Instant::now()
        .checked_add(accepted.deadline.saturating_add(GRACE))
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600));
    loop {
        let message = match tokio::time::timeout_at(give_up, connection.recv()).await {
            Err(_) => {
                tracing::warn!(job = %accepted.job, "no word from the server past the deadline");
                tracker.on_timeout();
                break;
            }
            Ok(received) => received?,
        };
        match message {
            Some(ServerMessage::View { members }) => {
                let disconnected = tracker.on_view(members.iter().cloned());
                observe(
                    FollowEvent::View {
                        members: &members,
                        disconnected: &disconnected,
                    },
                    &tracker,
                );
            }
            Some(ServerMessage::Output { host, stream, line }) => observe(
                FollowEvent::Output {
                    host: &host,
                    stream,
                    line: &line,
                },
                &tracker,
            ),
            Some(ServerMessage::HostResult { host, outcome }) => {
                tracker.on_result(&host, outcome.clone());
                observe(
                    FollowEvent::Result {
                        host: &host,
                        outcome: &outcome,
                    },
                    &tracker,
                );
            }
            Some(ServerMessage::Done { unfinished }) => {
                tracker.on_done(&unfinished);
                break;
            }
            Some(ServerMessage::Error { kind, message }) => {
                return Err(ClientError::Refused { kind, message })
            }
            Some(other) => {
                return Err(ClientError::Unexpected(format!(
                    "unexpected {} during a job",
                    message_name(&other)
                )))
            }
            None => return Err(ClientError::Closed),
        }
    }
    Ok(JobReport {
        job: accepted.job,
        command: accepted.command,
        hosts: tracker.into_report(),
    })
}

/// A message's kind, for errors.
pub fn message_name(message: &ServerMessage) -> &'static str {
    match message {
        ServerMessage::Accepted(_) => "acceptance",
        ServerMessage::View { .. } => "view",
        ServerMessage::Output { .. } => "output line",
        ServerMessage::HostResult { .. } => "host result",
        ServerMessage::Done { .. } => "end of job",
        ServerMessage::Status(_) => "status reply",
        ServerMessage::Members(_) => "members reply",
        ServerMessage::Jobs(_) => "jobs reply",
        ServerMessage::Map(_) => "map reply",
        ServerMessage::Error { .. } => "error",
    }
}
