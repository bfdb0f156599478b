//! One monitor connection: its request, and the answer the server follows
//! for it (see [`flotilla_client::message`] for the conversation).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_client::message::{
    Accepted, ErrorKind, JobSummary, JobsReply, Request, ServerMessage, StatusReply, Unfinished,
};
use flotilla_client::tracker::Recorded;
use flotilla_client::{JobId, ServerConnection, Tracker};
use tokio::time::Instant;

use super::{refusal, Query, Refusal, RequestedOp, ServerHandle, StartRequest, Update};
use crate::jobs::JobRecord;
use crate::wire::Reply;

/// How long a query waits for the answers of every server in M.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves one authenticated connection to its end. Errors are logged: the
/// monitor has gone or broke the protocol, and the jobs it started go on.
pub async fn serve(
    mut connection: ServerConnection,
    server: ServerHandle,
    maps: crate::maps::MapsHandle,
) {
    let client = connection.identity().to_string();
    let request = match connection.recv_request().await {
        Ok(Some(request)) => request,
        Ok(None) => return,
        Err(e) => {
            tracing::info!(%client, "bad request: {e}");
            return;
        }
    };
    if let Err(e) = request.validate() {
        tracing::info!(%client, "refused request: {e}");
        let _ = connection
            .send(&ServerMessage::Error {
                kind: ErrorKind::BadRequest,
                message: e.to_string(),
            })
            .await;
        return;
    }
    tracing::debug!(%client, ?request, "request");
    let result = match request {
        Request::Status => status(&mut connection, &server).await,
        Request::Members => match server.members().await {
            Ok(reply) => connection
                .send(&ServerMessage::Members(reply))
                .await
                .map_err(drop),
            Err(refusal) => refuse(&mut connection, refusal).await,
        },
        Request::Simex(simex) => {
            let request = StartRequest {
                job: simex.job,
                targets: simex.targets,
                op: RequestedOp::Simex {
                    command: simex.command,
                    timeout: simex.timeout,
                    stream: simex.stream,
                },
                client,
            };
            follow(&mut connection, &server, request).await
        }
        Request::Chdir { job, dir } => {
            let request = StartRequest {
                job,
                targets: flotilla_client::Targets::All,
                op: RequestedOp::Chdir { dir },
                client,
            };
            follow(&mut connection, &server, request).await
        }
        Request::Exit { job, targets } => {
            let request = StartRequest {
                job,
                targets,
                op: RequestedOp::Exit,
                client,
            };
            follow(&mut connection, &server, request).await
        }
        Request::Siminst(siminst) => {
            crate::siminst::handle_request(&mut connection, &server, siminst, client).await
        }
        Request::PackageData(_) => {
            send(
                &mut connection,
                ServerMessage::Error {
                    kind: ErrorKind::BadRequest,
                    message: "package data without a siminst request".into(),
                },
            )
            .await
        }
        Request::Remove { job, targets, name } => {
            let request = StartRequest {
                job,
                targets,
                op: RequestedOp::Remove { name },
                client,
            };
            follow(&mut connection, &server, request).await
        }
        Request::Job { id } => gather_job(&mut connection, &server, id).await,
        Request::Jobs { limit } => gather_jobs(&mut connection, &server, limit).await,
        // Straight to the maps task: maps need nothing of the mgmt group.
        Request::Map(request) => crate::maps::serve(&mut connection, &maps, request).await,
    };
    if result.is_err() {
        tracing::debug!("the monitor went away before its answer was complete");
    }
}

pub(crate) type Sent = Result<(), ()>;

async fn send(connection: &mut ServerConnection, message: ServerMessage) -> Sent {
    connection.send(&message).await.map_err(drop)
}

async fn refuse(connection: &mut ServerConnection, Refusal { kind, message }: Refusal) -> Sent {
    send(connection, ServerMessage::Error { kind, message }).await
}

/// Follows a command to its end: M/NR with a [`Tracker`], relaying views,
/// output and each target's first result, then `Done`.
pub(crate) async fn follow(
    connection: &mut ServerConnection,
    server: &ServerHandle,
    request: StartRequest,
) -> Sent {
    let started = match server.start(request).await {
        Ok(started) => started,
        Err(refusal) => return refuse(connection, refusal).await,
    };
    let super::Started {
        accepted,
        mut control,
        mut output,
    } = started;
    let job = accepted.job;
    let deadline = Instant::now() + accepted.deadline;
    let mut tracker: Tracker<()> = Tracker::from_accepted(&accepted);
    send(connection, ServerMessage::Accepted(accepted)).await?;
    let mut output_open = true;
    while !tracker.is_complete() {
        tokio::select! {
            biased;
            update = control.recv() => match update {
                Some(Update::View(members)) => {
                    tracker.on_view(members.iter().cloned());
                    send(connection, ServerMessage::View { members }).await?;
                }
                Some(Update::Result(host, outcome)) => {
                    // The core queued a target's lines before its result
                    // (they come in its order): relay them first.
                    while let Ok(Update::Output(host, stream, line)) = output.try_recv() {
                        if tracker.is_target(&host) {
                            send(connection, ServerMessage::Output { host, stream, line }).await?;
                        }
                    }
                    if tracker.on_result(&host, ()) == Recorded::Recorded {
                        send(connection, ServerMessage::HostResult { host, outcome }).await?;
                    }
                }
                Some(Update::Output(..)) => {}
                None => break,
            },
            line = output.recv(), if output_open => match line {
                Some(Update::Output(host, stream, line)) => {
                    if tracker.is_target(&host) {
                        send(connection, ServerMessage::Output { host, stream, line }).await?;
                    }
                }
                Some(_) => {}
                None => output_open = false,
            },
            () = tokio::time::sleep_until(deadline) => {
                tracing::info!(%job, pending = tracker.pending().count(), "job deadline passed");
                break;
            }
        }
    }
    let unfinished = tracker
        .pending()
        .map(|host| (host.to_owned(), Unfinished::TimedOut))
        .collect();
    send(connection, ServerMessage::Done { unfinished }).await
}

/// Collects the answers to a query from every server in M, for at most
/// [`QUERY_TIMEOUT`]. Returns the answers by host and the hosts of M that
/// did not answer.
async fn gather(
    server: &ServerHandle,
    query: Query,
) -> Result<(BTreeMap<String, Reply>, Vec<String>, Vec<String>), Refusal> {
    let mut started = server.query(query).await?;
    let expected: BTreeSet<String> = started.members.iter().cloned().collect();
    let mut replies = BTreeMap::new();
    let deadline = Instant::now() + QUERY_TIMEOUT;
    while replies.len() < expected.len() {
        match tokio::time::timeout_at(deadline, started.replies.recv()).await {
            Ok(Some((host, reply))) => {
                if expected.contains(&host) {
                    replies.insert(host, reply);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    let missing = expected
        .iter()
        .filter(|h| !replies.contains_key(*h))
        .cloned()
        .collect();
    Ok((replies, missing, started.members))
}

async fn status(connection: &mut ServerConnection, server: &ServerHandle) -> Sent {
    let (replies, missing, _) = match gather(server, Query::Status).await {
        Ok(gathered) => gathered,
        Err(refusal) => return refuse(connection, refusal).await,
    };
    let hosts = replies
        .into_values()
        .filter_map(|reply| match reply {
            Reply::Status(status) => Some(*status),
            _ => None,
        })
        .collect();
    let unanswered = missing
        .into_iter()
        .map(|h| (h, Unfinished::TimedOut))
        .collect();
    send(
        connection,
        ServerMessage::Status(StatusReply { hosts, unanswered }),
    )
    .await
}

/// `monitor job ID`: the report of a recent job from the records the servers
/// in M keep.
async fn gather_job(
    connection: &mut ServerConnection,
    server: &ServerHandle,
    prefix: String,
) -> Sent {
    let (replies, _missing, members) = match gather(
        server,
        Query::Job {
            prefix: prefix.clone(),
        },
    )
    .await
    {
        Ok(gathered) => gathered,
        Err(refusal) => return refuse(connection, refusal).await,
    };
    let mut records: BTreeMap<String, Vec<JobRecord>> = BTreeMap::new();
    let mut ids: BTreeSet<JobId> = BTreeSet::new();
    for (host, reply) in replies {
        if let Reply::Job(list) = reply {
            ids.extend(list.iter().map(|r| r.id));
            records.insert(host, list);
        }
    }
    let job = match ids.len() {
        0 => {
            return refuse(
                connection,
                refusal(
                    ErrorKind::NotFound,
                    format!("no server in M keeps a record of job {prefix}"),
                ),
            )
            .await
        }
        1 => match ids.first() {
            Some(id) => *id,
            None => return Err(()),
        },
        n => {
            return refuse(
                connection,
                refusal(
                    ErrorKind::Ambiguous,
                    format!(
                    "job id {prefix} is ambiguous: {n} recent jobs start with it; give more digits"
                ),
                ),
            )
            .await
        }
    };
    let mut mine: BTreeMap<String, JobRecord> = BTreeMap::new();
    for (host, list) in records {
        if let Some(record) = list.into_iter().find(|r| r.id == job) {
            mine.insert(host, record);
        }
    }
    let Some(first) = mine.values().next() else {
        return Err(());
    };
    let command = first.command.clone();
    let targets: BTreeSet<String> = mine
        .values()
        .flat_map(|r| r.targets.iter().cloned())
        .collect();
    let members_set: BTreeSet<String> = members.iter().cloned().collect();
    // Targets that have left M are still targets: listed with M so that
    // the report says they are disconnected, not unknown.
    let all: BTreeSet<String> = members_set.union(&targets).cloned().collect();
    let accepted = Accepted {
        job,
        command,
        targets: targets.iter().cloned().collect(),
        unknown_hosts: Vec::new(),
        members: all.into_iter().collect(),
        deadline: Duration::ZERO,
    };
    send(connection, ServerMessage::Accepted(accepted)).await?;
    let mut unfinished = Vec::new();
    for host in &targets {
        match mine.remove(host) {
            Some(JobRecord {
                outcome: Some(outcome),
                ..
            }) => {
                send(
                    connection,
                    ServerMessage::HostResult {
                        host: host.clone(),
                        outcome,
                    },
                )
                .await?
            }
            Some(_) => unfinished.push((host.clone(), Unfinished::Running)),
            None if members_set.contains(host) => {
                unfinished.push((host.clone(), Unfinished::NoRecord))
            }
            None => unfinished.push((host.clone(), Unfinished::Disconnected)),
        }
    }
    send(connection, ServerMessage::Done { unfinished }).await
}

async fn gather_jobs(connection: &mut ServerConnection, server: &ServerHandle, limit: u32) -> Sent {
    let (replies, missing, _) = match gather(server, Query::Jobs { limit }).await {
        Ok(gathered) => gathered,
        Err(refusal) => return refuse(connection, refusal).await,
    };
    let mut merged: BTreeMap<JobId, JobSummary> = BTreeMap::new();
    for reply in replies.into_values() {
        let Reply::Jobs(jobs) = reply else { continue };
        for summary in jobs {
            merged
                .entry(summary.job)
                .and_modify(|m| {
                    m.accepted_at = m.accepted_at.min(summary.accepted_at);
                    m.targets = m.targets.max(summary.targets);
                    m.ok = m.ok.saturating_add(summary.ok);
                    m.failed = m.failed.saturating_add(summary.failed);
                    m.running = m.running.saturating_add(summary.running);
                })
                .or_insert(summary);
        }
    }
    let mut jobs: Vec<JobSummary> = merged.into_values().collect();
    jobs.sort_by_key(|j| std::cmp::Reverse(j.accepted_at));
    jobs.truncate(limit as usize);
    let unanswered = missing
        .into_iter()
        .map(|h| (h, Unfinished::TimedOut))
        .collect();
    send(
        connection,
        ServerMessage::Jobs(JobsReply { jobs, unanswered }),
    )
    .await
}
