//! The real [`Group`]: the `mgmt` group over the `gc-core` runtime (UDP,
//! every datagram sealed with the cluster key).
//!
//! [`start`] starts the runtime with the settings of the configuration,
//! joins `mgmt`, and forwards the runtime's events for that group to the
//! server as [`GroupEvent`]s. The parts of the server that use groups of
//! their own (the replicated maps, siminst's installation groups) take
//! their events with [`GcGroup::subscribe`]: one pump reads the runtime's
//! single event stream and routes each event by group, so that every
//! subscriber sees its deliveries and the node views in the runtime's
//! order. Everything nobody subscribed to (refused peers, other groups) is
//! logged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gc_core::runtime::{FileStorage, Handle, Runtime, RuntimeConfig, StartError};
use gc_core::{Event, Level, PrimaryState, ViewInfo};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::group::{Group, GroupError, GroupEvent, MemberId, Order, SubgroupEvent};
use crate::key::ClusterKey;

/// The group every server joins.
pub const MGMT_GROUP: &str = "mgmt";
/// The file in the data directory where the runtime keeps the node's
/// incarnation and primary state.
pub const STATE_FILE: &str = "gc-state";
/// Events queued between the runtime and the server.
const EVENT_QUEUE: usize = 4096;

/// Why the group could not be started.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The runtime did not start.
    #[error("cannot start the group-communication runtime")]
    Start(#[from] StartError),
    /// The runtime could not use the multicast group of the configuration.
    #[error(
        "{file}: multicast: cannot use the group (multicast.interface names the interface for it)"
    )]
    Multicast {
        /// The configuration file.
        file: String,
        /// The runtime's error.
        #[source]
        source: StartError,
    },
    /// The `mgmt` (or `maps`) group could not be joined.
    #[error("cannot join the mgmt group: {0}")]
    Join(String),
    /// A `gc` tuning knob is unknown or has a bad value.
    #[error("{file}: gc.{key}: {message}")]
    Knob {
        /// The configuration file.
        file: String,
        /// The knob.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The `mgmt` group over the runtime.
#[derive(Debug, Clone)]
pub struct GcGroup {
    handle: Handle,
    me: MemberId,
    routes: Routes,
}

impl GcGroup {
    /// The runtime's handle (counters, view, and the multicasts and group
    /// joins of subscribers).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Routes the runtime's events for `group` to the returned queue: its
    /// deliveries and group views, every node view (regular and
    /// transitional, starting with the latest one installed, if any), and
    /// [`Event::Left`] when the runtime stops. Subscribe before joining the
    /// group so that nothing of it is missed. A later subscription to the
    /// same group replaces this one; dropping the receiver ends it.
    ///
    /// The pump waits for room in the queue rather than dropping events
    /// (a subscriber that lost a delivery would diverge), so a subscriber
    /// must keep reading: while its queue is full, every group waits.
    pub fn subscribe(&self, group: &str, capacity: usize) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let mut routes = self.routes.lock();
        if let Some(view) = &routes.last_view {
            // The queue is new and has room for one.
            let _ = tx.try_send(Event::View(view.clone()));
        }
        routes.by_group.insert(group.to_owned(), tx);
        rx
    }
}

/// Where the pump sends what is not the `mgmt` group's.
#[derive(Debug, Clone, Default)]
struct Routes {
    inner: Arc<Mutex<RouteTable>>,
}

#[derive(Debug, Default)]
struct RouteTable {
    by_group: BTreeMap<String, mpsc::Sender<Event>>,
    /// Replayed to a new subscriber, which needs to know the view it starts
    /// in (the maps server: whether it is in the primary component).
    last_view: Option<ViewInfo>,
}

impl Routes {
    fn lock(&self) -> MutexGuard<'_, RouteTable> {
        // Nothing panics while holding the lock; a poisoned table is intact.
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The subscribers `event` goes to (cloned out, so that no lock is held
    /// while waiting for room).
    fn targets(&self, event: &Event) -> Vec<(String, mpsc::Sender<Event>)> {
        let mut table = self.lock();
        table.by_group.retain(|_, tx| !tx.is_closed());
        let every = |table: &RouteTable| {
            table
                .by_group
                .iter()
                .map(|(group, tx)| (group.clone(), tx.clone()))
                .collect()
        };
        match event {
            Event::View(info) => {
                table.last_view = Some(info.clone());
                every(&table)
            }
            Event::Left => every(&table),
            Event::Deliver(d) => table
                .by_group
                .get(&d.group)
                .map(|tx| vec![(d.group.clone(), tx.clone())])
                .unwrap_or_default(),
            Event::GroupView { group, .. } => table
                .by_group
                .get(group)
                .map(|tx| vec![(group.clone(), tx.clone())])
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Hands `event` to its subscribers. Gives it back, with whether any
    /// subscriber had it, unless the last subscriber took it: a delivery
    /// for one subscriber is moved, not copied (a 256 KiB siminst chunk
    /// each).
    async fn route(&self, event: Event) -> (Option<Event>, bool) {
        let mut targets = self.targets(&event);
        let routed = !targets.is_empty();
        let last = if for_the_server(&event) {
            None
        } else {
            targets.pop()
        };
        for (group, tx) in targets {
            if tx.send(event.clone()).await.is_err() {
                tracing::debug!(%group, "subscriber gone");
            }
        }
        match last {
            Some((group, tx)) => {
                if tx.send(event).await.is_err() {
                    tracing::debug!(%group, "subscriber gone");
                }
                (None, routed)
            }
            None => (Some(event), routed),
        }
    }
}

/// Whether [`pump`] does something with `event` after its subscribers had
/// it.
fn for_the_server(event: &Event) -> bool {
    match event {
        Event::GroupView { group, .. } => group == MGMT_GROUP,
        Event::Deliver(d) => d.group == MGMT_GROUP,
        Event::Left | Event::View(_) | Event::PeerRefused { .. } => true,
        _ => false,
    }
}

fn member(pid: gc_core::Pid) -> MemberId {
    MemberId {
        node: pid.node,
        incarnation: pid.incarnation,
    }
}

impl Group for GcGroup {
    fn me(&self) -> MemberId {
        self.me
    }

    fn address(&self) -> String {
        self.handle.local_addr().to_string()
    }

    async fn multicast(&self, order: Order, payload: Vec<u8>) -> Result<(), GroupError> {
        let level = match order {
            Order::Agreed => Level::Agreed,
            Order::Fifo => Level::Fifo,
        };
        self.handle
            .multicast(MGMT_GROUP, level, payload)
            .await
            // The message's id is of no use to the server: its job id
            // identifies what it carries.
            .map(drop)
            .map_err(|e| match e {
                gc_core::runtime::Error::Stopped => GroupError::Stopped,
                other => GroupError::Refused(other.to_string()),
            })
    }

    async fn leave(&self) -> Result<(), GroupError> {
        self.handle
            .leave()
            .await
            .map_err(|e| GroupError::Refused(e.to_string()))
    }

    fn subscribe(&self, group: &str, capacity: usize) -> Option<mpsc::Receiver<SubgroupEvent>> {
        let mut events = GcGroup::subscribe(self, group, capacity);
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let name = group.to_owned();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let forward = match event {
                    Event::GroupView { group, members, .. } if group == name => {
                        SubgroupEvent::View {
                            members: members.into_iter().map(member).collect(),
                        }
                    }
                    Event::Deliver(delivery) if delivery.group == name => SubgroupEvent::Deliver {
                        from: member(delivery.msg.sender),
                        payload: delivery.payload,
                    },
                    Event::Left => SubgroupEvent::Left,
                    // Node views: the group's own views say what matters.
                    _ => continue,
                };
                let left = forward == SubgroupEvent::Left;
                if tx.send(forward).await.is_err() || left {
                    break;
                }
            }
        });
        Some(rx)
    }

    async fn wire_bytes_sent(&self) -> Option<u64> {
        self.handle.counters().await.ok().map(|c| c.io.bytes_out)
    }

    async fn join_group(&self, group: &str) -> Result<(), GroupError> {
        self.handle.join_group(group).await.map_err(group_error)
    }

    async fn leave_group(&self, group: &str) -> Result<(), GroupError> {
        self.handle.leave_group(group).await.map_err(group_error)
    }

    async fn multicast_to(
        &self,
        group: &str,
        order: Order,
        payload: Vec<u8>,
    ) -> Result<(), GroupError> {
        let level = match order {
            Order::Agreed => Level::Agreed,
            Order::Fifo => Level::Fifo,
        };
        self.handle
            .multicast(group, level, payload)
            .await
            .map(drop)
            .map_err(group_error)
    }
}

fn group_error(e: gc_core::runtime::Error) -> GroupError {
    if e.is_backpressure() {
        GroupError::Backpressure(e.to_string())
    } else if matches!(e, gc_core::runtime::Error::Stopped) {
        GroupError::Stopped
    } else {
        GroupError::Refused(e.to_string())
    }
}

/// The `gc` knobs the configuration may set: `max_datagram` in bytes, the
/// rest durations (the protocol's timers, and the runtime's `busy_poll`).
fn apply_knobs(
    runtime: &mut RuntimeConfig,
    knobs: &BTreeMap<String, serde_yaml::Value>,
    file: &str,
) -> Result<(), GcError> {
    for (key, value) in knobs {
        let bad = |message: String| GcError::Knob {
            file: file.to_owned(),
            key: key.clone(),
            message,
        };
        if key == "max_datagram" {
            // Datagram size is the one knob in bytes: on loopback or a
            // jumbo-frame LAN, large datagrams cut the per-datagram cost of
            // bulk transfers (siminst) many times.
            let bytes = value
                .as_u64()
                .filter(|b| (512..=60_000).contains(b))
                .ok_or_else(|| bad("expected a number of bytes in 512..=60000".into()))?;
            runtime.node.max_datagram = usize::try_from(bytes).unwrap_or(1400);
            continue;
        }
        // Every other knob is a duration, each with its range. busy_poll
        // is the runtime's and microseconds long, and zero turns it off
        // (gc_core::runtime, "Polling before sleeping").
        const TIMER: (Duration, Duration, &str) = (
            Duration::from_millis(1),
            Duration::from_secs(60),
            "1ms..=60s",
        );
        let node = &mut runtime.node;
        let (slot, (min, max, range)) = match key.as_str() {
            "heartbeat_interval" => (&mut node.heartbeat_interval, TIMER),
            "suspect_timeout" => (&mut node.suspect_timeout, TIMER),
            "discovery_interval" => (&mut node.discovery_interval, TIMER),
            "startup_wait" => (&mut node.startup_wait, TIMER),
            "join_timeout" => (&mut node.join_timeout, TIMER),
            "busy_poll" => (
                &mut runtime.busy_poll,
                (Duration::ZERO, Duration::from_millis(1), "0s..=1ms"),
            ),
            _ => {
                return Err(bad(
                    "unknown knob (expected one of: heartbeat_interval, suspect_timeout, discovery_interval, startup_wait, join_timeout, max_datagram, busy_poll)".into(),
                ))
            }
        };
        let text = value
            .as_str()
            .ok_or_else(|| bad(format!("expected a duration in {range}, like \"100ms\"")))?;
        let duration: Duration = humantime::parse_duration(text).map_err(|e| {
            bad(format!(
                "expected a duration in {range}, like \"100ms\", found {text:?}: {e}"
            ))
        })?;
        if !(min..=max).contains(&duration) {
            return Err(bad(format!("{text} is outside {range}")));
        }
        *slot = duration;
    }
    Ok(())
}

/// Starts the runtime for `config`, joins `mgmt` and returns the group and
/// its events. Must be called within a tokio runtime.
pub async fn start(
    config: &Config,
    key: &ClusterKey,
) -> Result<(GcGroup, mpsc::Receiver<GroupEvent>), GcError> {
    let mut seeds: Vec<SocketAddr> = Vec::new();
    for seed in &config.seeds {
        // A seed that does not resolve now may later; the others suffice.
        match tokio::net::lookup_host((seed.host.as_str(), seed.port)).await {
            Ok(addrs) => seeds.extend(addrs),
            Err(e) => tracing::warn!(%seed, "cannot resolve seed: {e}"),
        }
    }
    let mut node = gc_core::Config::new(gc_core::Pid::new(config.node_id, 0));
    node.seeds = seeds;
    // With maps configured, the fleet's hosts are the first primary
    // component, as the maps' own voting record starts from them: a lone
    // host (or any minority) that has never met the others is then not
    // primary, and gc-core's primary chain and the maps' sessions start
    // from the same set (otherwise a minority's chain could hold the
    // primary and no maps session could ever form in the majority).
    let bootstrap = if config.maps.enabled() {
        config.maps.hosts.clone()
    } else {
        vec![config.node_id]
    };
    node.primary = PrimaryState::initial(bootstrap);
    let seal_key = gc_core::seal::ClusterKey::from_bytes(*key.as_bytes());
    let storage = FileStorage::new(config.data_dir.join(STATE_FILE));
    let mut runtime_config = RuntimeConfig::new(node, config.listen, seal_key, storage);
    apply_knobs(
        &mut runtime_config,
        &config.gc,
        &config.file.display().to_string(),
    )?;
    runtime_config.event_log = config.event_log.clone();
    if config.testing.fault_control {
        runtime_config.faults = Some(crate::faults::start(&config.data_dir));
    }
    if let Some(multicast) = config.multicast {
        match multicast.group {
            std::net::IpAddr::V4(group) => {
                let mut m = gc_core::runtime::MulticastConfig::new(std::net::SocketAddrV4::new(
                    group,
                    multicast.port,
                ));
                m.disseminate = multicast.disseminate;
                m.ttl = u32::from(multicast.ttl);
                if let Some(interface) = multicast.interface {
                    m.interface = interface;
                }
                runtime_config.multicast = Some(m);
            }
            std::net::IpAddr::V6(_) => {
                tracing::warn!("IPv6 multicast discovery is not supported; using the seeds only")
            }
        }
    }
    let (handle, events) = Runtime::start(runtime_config)
        .await
        .map_err(|source| match source {
            StartError::Multicast { .. } => GcError::Multicast {
                file: config.file.display().to_string(),
                source,
            },
            other => GcError::Start(other),
        })?;
    let me = member(handle.pid());
    // The maps group is joined now, with mgmt (both commands reach the
    // driver in the same wake-up), before the first view with the others
    // forms: the maps servers take part in the state exchange of every node
    // view, and a join that misses the view change is lost (see
    // maps/gate.rs).
    let maps_join = async {
        if config.maps.enabled() {
            handle.join_group(crate::maps::MAPS_GROUP).await
        } else {
            Ok(())
        }
    };
    let (mgmt, maps) = tokio::join!(handle.join_group(MGMT_GROUP), maps_join);
    mgmt.map_err(|e| GcError::Join(e.to_string()))?;
    maps.map_err(|e| GcError::Join(format!("{}: {e}", crate::maps::MAPS_GROUP)))?;
    tracing::info!(%me, addr = %handle.local_addr(), "group-communication runtime started");
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let routes = Routes::default();
    tokio::spawn(pump(events, tx, routes.clone()));
    Ok((GcGroup { handle, me, routes }, rx))
}

/// Reads the runtime's events until it stops: the `mgmt` group's go to the
/// server, the rest to their subscribers.
async fn pump(
    mut events: gc_core::runtime::Events,
    mgmt: mpsc::Sender<GroupEvent>,
    routes: Routes,
) {
    while let Some(event) = events.recv().await {
        let (event, routed) = routes.route(event).await;
        let Some(event) = event else {
            continue;
        };
        let forward = match event {
            Event::GroupView { group, id, members } if group == MGMT_GROUP => GroupEvent::View {
                id: format!("{}/{}", id.view, id.change),
                members: members.into_iter().map(member).collect(),
            },
            Event::Deliver(delivery) if delivery.group == MGMT_GROUP => GroupEvent::Deliver {
                from: member(delivery.msg.sender),
                payload: delivery.payload,
            },
            Event::Left => GroupEvent::Left,
            Event::View(view) => {
                tracing::debug!(conf = %view.conf, members = view.members.len(), "node view");
                continue;
            }
            Event::PeerRefused { addr, reason } => {
                tracing::warn!(%addr, "peer refused: {reason}");
                continue;
            }
            other => {
                if !routed {
                    tracing::trace!(?other, "runtime event ignored");
                }
                continue;
            }
        };
        let left = forward == GroupEvent::Left;
        if mgmt.send(forward).await.is_err() || left {
            break;
        }
    }
    // The runtime has stopped (or the server is gone): tell the server
    // once, whatever the reason.
    let _ = mgmt.send(GroupEvent::Left).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> RuntimeConfig {
        let node = gc_core::Config::new(gc_core::Pid::new(1, 0));
        let key = gc_core::seal::ClusterKey::from_bytes([7; 32]);
        let dir = std::env::temp_dir().join("flotilla-gc-knobs-never-written");
        RuntimeConfig::new(
            node,
            "127.0.0.1:0".parse().expect("a literal address"),
            key,
            FileStorage::new(dir.join(STATE_FILE)),
        )
    }

    fn knobs(yaml: &str) -> BTreeMap<String, serde_yaml::Value> {
        serde_yaml::from_str(yaml).expect("test YAML")
    }

    #[test]
    fn busy_poll_takes_microseconds_and_zero() {
        let mut rc = runtime();
        assert_eq!(rc.busy_poll, gc_core::runtime::DEFAULT_BUSY_POLL);
        apply_knobs(&mut rc, &knobs("busy_poll: 250us"), "f").expect("valid");
        assert_eq!(rc.busy_poll, Duration::from_micros(250));
        apply_knobs(&mut rc, &knobs("busy_poll: 0s"), "f").expect("zero turns it off");
        assert!(rc.busy_poll.is_zero());
    }

    #[test]
    fn bad_knobs_name_the_key_and_the_range() {
        let mut rc = runtime();
        for (yaml, expect) in [
            ("busy_poll: 5ms", "0s..=1ms"),
            ("busy_poll: 100", "0s..=1ms"),
            ("heartbeat_interval: 0s", "outside"),
            ("max_datagram: 70000", "512..=60000"),
            ("no_such_knob: 1s", "unknown knob"),
        ] {
            let err = apply_knobs(&mut rc, &knobs(yaml), "f").expect_err(yaml);
            assert!(err.to_string().contains(expect), "{yaml}: {err}");
        }
        apply_knobs(
            &mut rc,
            &knobs("heartbeat_interval: 20ms\nmax_datagram: 9000"),
            "f",
        )
        .expect("valid");
        assert_eq!(rc.node.heartbeat_interval, Duration::from_millis(20));
        assert_eq!(rc.node.max_datagram, 9000);
    }
}
