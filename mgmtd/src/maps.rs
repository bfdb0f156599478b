//! The replicated maps in the daemon: a [`MapsServer`] driven over the real
//! runtime.
//!
//! The server lives on a thread of its own, because it writes and fsyncs its
//! log: on the daemon's single async thread an fsync would hold up the
//! group-communication driver (heartbeats included). Around it:
//!
//! - a pump task moves the `maps` group's events ([`GcGroup::subscribe`])
//!   into the thread's input queue; the thread takes one, then drains what
//!   else is ready, and hands all the events to
//!   [`MapsServer::on_events`] at once (one fsync per batch: group commit);
//! - clients' requests come through [`MapsHandle::request`] into the same
//!   queue, and each gets the [`Action::Reply`] addressed to it;
//! - an outbox task multicasts the [`Action::Multicast`]s in the order the
//!   server returned them; one gc-core refuses goes back to
//!   [`MapsServer::on_send_failed`];
//! - a ticker calls [`MapsServer::retry`] now and then.
//!
//! A [`MapsError`] (a failed disk, two primaries seen) stops the daemon:
//! answering from a replica that cannot keep its log would break the
//! guarantees.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_client::message::{ErrorKind, MAX_FRAME};
use flotilla_client::{ServerConnection, ServerMessage};
use gc_core::{Event, Level};
use maps::api::{ClientId, Request, RequestError, Response};
use maps::{Action, FileStorage, MapsError, MapsServer, RenderSpec, ServerConfig};
use tokio::sync::{mpsc, oneshot};

use crate::config::MapsConfig;
use gc_core::runtime::Handle;
use std::time::Instant;

mod gate;
use crate::gc::GcGroup;

/// The gc-core group the maps servers multicast in.
pub const MAPS_GROUP: &str = "maps";
/// The directory under the data directory that holds the maps' log and
/// snapshot.
pub const MAPS_DIR: &str = "maps";
/// Events queued from the runtime to the maps task.
const EVENT_QUEUE: usize = 4096;
/// Inputs queued for the maps thread.
const INPUT_QUEUE: usize = 8192;
/// Most events handed to the server in one batch (one fsync).
const MAX_BATCH: usize = 4096;
/// How long a process missing from the maps group of a view waits for a
/// view change to repair it before it joins again.
const REJOIN_DELAY: Duration = Duration::from_secs(1);
/// How often the pump looks at a held view when no event comes.
const GATE_POLL: Duration = Duration::from_millis(200);
/// How often control messages gc-core refused are sent again.
const RETRY_INTERVAL: Duration = Duration::from_millis(200);
/// How long a client waits for its answer before it is told the outcome is
/// unknown (an update) or the read was interrupted. The server answers
/// every request in progress at a view change, so this is a backstop.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the maps may be unsettled before the daemon logs where they
/// stand (and again at this interval).
const UNSETTLED_REPORT: Duration = Duration::from_secs(5);
/// Room left in a frame for the message's envelope.
const FRAME_MARGIN: usize = 4096;

/// Why the maps could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The maps directory could not be created or opened.
    #[error("cannot open the maps directory {dir}: {source}")]
    Dir {
        /// The directory.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
    /// The log or snapshot could not be recovered (corruption before the
    /// log's tail names the file and offset).
    #[error("cannot recover the replicated maps: {0}")]
    Open(#[from] MapsError),
    /// The maps thread could not be started.
    #[error("cannot start the maps thread: {0}")]
    Thread(std::io::Error),
}

enum Input {
    Events(Vec<Event>),
    Client {
        id: ClientId,
        request: Request,
        reply: oneshot::Sender<Response>,
    },
    SendFailed(Vec<u8>),
    Tick,
}

/// How connection handlers reach the maps. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MapsHandle {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    input: mpsc::Sender<Input>,
    next_client: AtomicU64,
}

/// Why a map request got no answer from the maps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// The configuration has no `maps:` section.
    #[error("the replicated maps are not configured on this server (its configuration has no `maps:` section)")]
    NotConfigured,
    /// The maps stopped (the daemon is stopping).
    #[error("the replicated maps on this server have stopped")]
    Stopped,
}

impl MapsHandle {
    /// A handle for a server without maps: every request is refused.
    pub fn disabled() -> MapsHandle {
        MapsHandle { inner: None }
    }

    /// Asks the maps; the answer comes when the server has one (an update:
    /// once applied by a majority, or unknown after a view change).
    pub async fn request(&self, request: Request) -> Result<Response, Unavailable> {
        let inner = self.inner.as_ref().ok_or(Unavailable::NotConfigured)?;
        let id = inner.next_client.fetch_add(1, Ordering::Relaxed);
        let update = match &request {
            Request::Update(u) => Some(u.id),
            _ => None,
        };
        let (reply, answer) = oneshot::channel();
        inner
            .input
            .send(Input::Client { id, request, reply })
            .await
            .map_err(|_| Unavailable::Stopped)?;
        match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(Unavailable::Stopped),
            Err(_) => Ok(match update {
                Some(id) => Response::Unknown { id },
                None => Response::Error(RequestError::Interrupted),
            }),
        }
    }
}

/// The running maps: the handle, and a receiver that yields a message if
/// the maps fail (the daemon must then stop).
pub struct Maps {
    /// For the connection handlers.
    pub handle: MapsHandle,
    /// Fires with the reason when the maps stop on an error.
    pub failed: oneshot::Receiver<String>,
}

/// Opens the maps' storage under `data_dir`, recovers it and starts the
/// tasks. Call it right after [`crate::gc::start`] (which joined the `maps`
/// group), with no await in between, so that no event is missed. Corruption before the log's tail is an
/// error naming the file and offset.
pub fn start(group: &GcGroup, data_dir: &Path, config: &MapsConfig) -> Result<Maps, StartError> {
    let dir = data_dir.join(MAPS_DIR);
    let storage = FileStorage::open(&dir).map_err(|source| StartError::Dir {
        dir: dir.display().to_string(),
        source,
    })?;
    let handle = group.handle().clone();
    let cfg = ServerConfig {
        group: MAPS_GROUP.to_owned(),
        renders: config
            .render
            .iter()
            .map(|r| RenderSpec {
                map: r.map.clone(),
                path: r.file.clone(),
                template: r.template.clone(),
            })
            .collect(),
        hosts: config.hosts.clone(),
        ..ServerConfig::default()
    };
    let (server, cut) = MapsServer::open(handle.pid(), storage, cfg)?;
    if let Some(cut) = cut {
        tracing::warn!(
            file = %cut.file,
            offset = cut.offset,
            bytes = cut.bytes,
            "the maps log ended in a torn or corrupt tail; it was cut"
        );
    }
    tracing::info!(maps = server.tables().live_count(), dir = %dir.display(), "replicated maps recovered");

    // gc::start joined the group already. No await since it returned, so
    // its event pump has not run yet: this subscription sees every event
    // of the group from the first.
    let events = group.subscribe(MAPS_GROUP, EVENT_QUEUE);

    let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
    let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
    let (failed_tx, failed_rx) = oneshot::channel();

    std::thread::Builder::new()
        .name("maps".into())
        .spawn(move || {
            if let Err(e) = run(server, input_rx, outbox_tx) {
                tracing::error!("the replicated maps stopped: {e}");
                let _ = failed_tx.send(e.to_string());
            }
        })
        .map_err(StartError::Thread)?;

    tokio::spawn(pump(events, input_tx.clone(), handle.clone()));
    tokio::spawn(outbox(handle, outbox_rx, input_tx.clone()));
    let tick_tx = input_tx.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(RETRY_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            interval.tick().await;
            // A full queue has work in it already: the retry can wait.
            match tick_tx.try_send(Input::Tick) {
                Err(mpsc::error::TrySendError::Closed(_)) => return,
                _ => continue,
            }
        }
    });
    Ok(Maps {
        handle: MapsHandle {
            inner: Some(Arc::new(Inner {
                input: input_tx,
                next_client: AtomicU64::new(1),
            })),
        },
        failed: failed_rx,
    })
}

/// Moves the group's events to the maps thread in batches, through the
/// [`gate::Gate`].
async fn pump(mut events: mpsc::Receiver<Event>, input: mpsc::Sender<Input>, handle: Handle) {
    let mut gate = gate::Gate::new(handle.pid(), MAPS_GROUP);
    loop {
        let first = if gate.expecting() {
            match tokio::time::timeout(GATE_POLL, events.recv()).await {
                Ok(Some(event)) => Some(event),
                Ok(None) => return,
                Err(_) => None,
            }
        } else {
            match events.recv().await {
                Some(event) => Some(event),
                None => return,
            }
        };
        let mut batch = Vec::new();
        let mut todo = Vec::new();
        match first {
            Some(event) => {
                todo.push(gate.on_event(event, Instant::now(), &mut batch));
                while batch.len() < MAX_BATCH {
                    match events.try_recv() {
                        Ok(event) => todo.push(gate.on_event(event, Instant::now(), &mut batch)),
                        Err(_) => break,
                    }
                }
            }
            None => todo.push(gate.timeout(Instant::now())),
        }
        for t in todo {
            if let gate::Todo::Rejoin(view) = t {
                tokio::spawn(rejoin(handle.clone(), view));
            }
        }
        if !batch.is_empty() && input.send(Input::Events(batch)).await.is_err() {
            return;
        }
    }
}

/// Leaves and joins the maps group again if the view is still `view` after
/// a moment (see [`gate`]).
async fn rejoin(handle: Handle, view: gc_core::ViewId) {
    tokio::time::sleep(REJOIN_DELAY).await;
    for _ in 0..50 {
        let now = match handle.view().await {
            Ok(now) => now,
            Err(_) => return,
        };
        if now.id != view {
            // The next view took the intent into its group membership.
            return;
        }
        if !now.changing {
            tracing::warn!(
                %view,
                "this daemon is not in the maps group of the view (its join came while the view \
                 was forming): joining again"
            );
            let again = async {
                handle.leave_group(MAPS_GROUP).await?;
                handle.join_group(MAPS_GROUP).await
            };
            if let Err(e) = again.await {
                tracing::error!("cannot join the maps group again: {e}");
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Multicasts in the server's order; what gc-core refuses goes back.
async fn outbox(
    handle: gc_core::runtime::Handle,
    mut outbox: mpsc::UnboundedReceiver<(Level, Vec<u8>)>,
    input: mpsc::Sender<Input>,
) {
    while let Some((level, payload)) = outbox.recv().await {
        if let Err(e) = handle.multicast(MAPS_GROUP, level, payload.clone()).await {
            if matches!(e, gc_core::runtime::Error::Stopped) {
                return;
            }
            tracing::debug!("maps multicast refused: {e}");
            if input.send(Input::SendFailed(payload)).await.is_err() {
                return;
            }
        }
    }
}

/// The maps thread: the server's inputs in batches, its actions carried out.
fn run(
    mut server: MapsServer<FileStorage>,
    mut input: mpsc::Receiver<Input>,
    outbox: mpsc::UnboundedSender<(Level, Vec<u8>)>,
) -> Result<(), MapsError> {
    let mut clients: HashMap<ClientId, oneshot::Sender<Response>> = HashMap::new();
    // Where an unsettled server stands, logged now and then: what an
    // operator (or a failed test) needs to see why updates are refused.
    let mut unsettled_since: Option<std::time::Instant> = None;
    let mut described = std::time::Instant::now();
    let mut sent = (0, 0);
    // The primary server last logged: which host orders the updates is
    // what an operator (or a fault test that crashes it) needs to know,
    // and no request shows it.
    let mut logged_primary = None;
    while let Some(first) = input.blocking_recv() {
        let mut events = Vec::new();
        let mut requests = Vec::new();
        let mut failed = Vec::new();
        let mut tick = false;
        let mut take = |item: Input| match item {
            Input::Events(mut batch) => events.append(&mut batch),
            Input::Client { id, request, reply } => requests.push((id, request, reply)),
            Input::SendFailed(payload) => failed.push(payload),
            Input::Tick => tick = true,
        };
        take(first);
        while let Ok(item) = input.try_recv() {
            take(item);
        }
        let mut actions = Vec::new();
        if !events.is_empty() {
            actions.extend(server.on_events(&events)?);
            let primary = server.primary_server().filter(|_| server.is_settled());
            if primary.is_some() && primary != logged_primary {
                logged_primary = primary;
                if let Some(p) = primary {
                    tracing::info!(primary = %p, "maps settled: the primary server is {p}");
                }
            }
        }
        for payload in failed {
            actions.extend(server.on_send_failed(&payload));
        }
        for (id, request, reply) in requests {
            clients.insert(id, reply);
            actions.extend(server.client_request(id, request)?);
        }
        if tick {
            actions.extend(server.retry());
            // Clients that gave up (the connection closed, or the backstop
            // timeout) are not waited for.
            clients.retain(|_, reply| !reply.is_closed());
            let stats = server.stats();
            if (stats.catchup_bytes, stats.snapshot_bytes) != sent {
                sent = (stats.catchup_bytes, stats.snapshot_bytes);
                tracing::info!(
                    catchup_bytes = stats.catchup_bytes,
                    snapshot_bytes = stats.snapshot_bytes,
                    applied = stats.applied,
                    "maps catch-up sent (totals since start)"
                );
            }
            let now = std::time::Instant::now();
            if server.is_settled() {
                unsettled_since = None;
            } else {
                let since = *unsettled_since.get_or_insert(now);
                if now.duration_since(since) > UNSETTLED_REPORT
                    && now.duration_since(described) > UNSETTLED_REPORT
                {
                    described = now;
                    tracing::info!(state = %server.describe(), "the maps are not settled");
                }
            }
        }
        for action in actions {
            match action {
                Action::Multicast { level, payload } => {
                    if outbox.send((level, payload)).is_err() {
                        // The daemon is stopping.
                        return Ok(());
                    }
                }
                Action::Reply { client, response } => {
                    if let Some(reply) = clients.remove(&client) {
                        let _ = reply.send(response);
                    }
                }
                Action::Render(rendered) => {
                    if let Err(e) = rendered.write() {
                        tracing::warn!(map = %rendered.map, file = %rendered.path.display(), "cannot render the map: {e}");
                    } else {
                        tracing::debug!(map = %rendered.map, version = rendered.version, file = %rendered.path.display(), "map rendered");
                    }
                }
            }
        }
    }
    Ok(())
}

/// Answers one monitor's map request on its connection.
pub async fn serve(
    connection: &mut ServerConnection,
    maps: &MapsHandle,
    request: Request,
) -> Result<(), ()> {
    let message = match maps.request(request).await {
        Ok(response) => ServerMessage::Map(fit_frame(response)),
        Err(e) => ServerMessage::Error {
            kind: match e {
                Unavailable::NotConfigured => ErrorKind::NotReady,
                Unavailable::Stopped => ErrorKind::ShuttingDown,
            },
            message: e.to_string(),
        },
    };
    connection.send(&message).await.map_err(drop)
}

/// Trims a listing or a history to what one frame carries; the client
/// pages on from where it ends.
fn fit_frame(mut response: Response) -> Response {
    let limit = MAX_FRAME - FRAME_MARGIN;
    let size = |r: &Response| postcard::to_stdvec(r).map_or(usize::MAX, |b| b.len());
    let mut len = size(&response);
    while len > limit {
        match &mut response {
            Response::Listing { entries, more, .. } if !entries.is_empty() => {
                // Shrink in proportion, then check again.
                let keep = entries.len() * limit / len;
                entries.truncate(keep.min(entries.len() - 1));
                *more = true;
            }
            Response::History { entries, .. } if !entries.is_empty() => {
                let keep = entries.len() * limit / len;
                entries.truncate(keep.min(entries.len() - 1));
            }
            _ => break,
        }
        len = size(&response);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use maps::api::Freshness;
    use maps::Entry;

    #[test]
    fn large_listings_fit_a_frame() {
        let entries: Vec<(String, Entry)> = (0..100)
            .map(|i| {
                (
                    format!("k{i}"),
                    Entry {
                        value: "x".repeat(60_000),
                        version: i,
                    },
                )
            })
            .collect();
        let r = fit_frame(Response::Listing {
            map: "m".into(),
            version: 100,
            entries,
            more: false,
            freshness: Freshness {
                stale: false,
                in_primary: true,
            },
        });
        let bytes = postcard::to_stdvec(&r).unwrap();
        assert!(bytes.len() <= MAX_FRAME - FRAME_MARGIN);
        match r {
            Response::Listing { entries, more, .. } => {
                assert!(more);
                assert!(!entries.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }
}
