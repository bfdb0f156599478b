//! The real [`Group`]: the `mgmt` group over the `gc-core` runtime (UDP,
//! every datagram sealed with the cluster key).
//!
//! [`start`] starts the runtime with the settings of the configuration,
//! joins `mgmt`, and forwards the runtime's events for that group to the
//! server as [`GroupEvent`]s. Everything else the runtime reports (node
//! views, refused peers) is logged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use gc_core::runtime::{FileStorage, Handle, Runtime, RuntimeConfig, StartError};
use gc_core::{Event, Level, PrimaryState};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::group::{Group, GroupError, GroupEvent, MemberId, Order};
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
    /// The `mgmt` group could not be joined.
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
}

impl GcGroup {
    /// The runtime's handle (counters, view).
    pub fn handle(&self) -> &Handle {
        &self.handle
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
}

/// The `gc` knobs the configuration may set, as durations.
fn apply_knobs(
    node: &mut gc_core::Config,
    knobs: &BTreeMap<String, serde_yaml::Value>,
    file: &str,
) -> Result<(), GcError> {
    for (key, value) in knobs {
        let bad = |message: String| GcError::Knob {
            file: file.to_owned(),
            key: key.clone(),
            message,
        };
        let text = value
            .as_str()
            .ok_or_else(|| bad("expected a duration like \"100ms\"".into()))?;
        let duration: Duration = humantime::parse_duration(text).map_err(|e| {
            bad(format!(
                "expected a duration like \"100ms\", found {text:?}: {e}"
            ))
        })?;
        if duration.is_zero() || duration > Duration::from_secs(60) {
            return Err(bad(format!("{text} is outside 1ms..=60s")));
        }
        match key.as_str() {
            "heartbeat_interval" => node.heartbeat_interval = duration,
            "suspect_timeout" => node.suspect_timeout = duration,
            "discovery_interval" => node.discovery_interval = duration,
            "startup_wait" => node.startup_wait = duration,
            "join_timeout" => node.join_timeout = duration,
            _ => {
                return Err(bad(
                    "unknown knob (expected one of: heartbeat_interval, suspect_timeout, discovery_interval, startup_wait, join_timeout)".into(),
                ))
            }
        }
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
    node.primary = PrimaryState::initial(vec![config.node_id]);
    apply_knobs(&mut node, &config.gc, &config.file.display().to_string())?;
    let seal_key = gc_core::seal::ClusterKey::from_bytes(*key.as_bytes());
    let storage = FileStorage::new(config.data_dir.join(STATE_FILE));
    let mut runtime_config = RuntimeConfig::new(node, config.listen, seal_key, storage);
    if let Some(multicast) = config.multicast {
        match multicast.group {
            std::net::IpAddr::V4(group) => {
                runtime_config.multicast = Some(gc_core::runtime::MulticastConfig::new(
                    std::net::SocketAddrV4::new(group, multicast.port),
                ));
            }
            std::net::IpAddr::V6(_) => {
                tracing::warn!("IPv6 multicast discovery is not supported; using the seeds only")
            }
        }
    }
    let (handle, mut events) = Runtime::start(runtime_config).await?;
    let me = member(handle.pid());
    handle
        .join_group(MGMT_GROUP)
        .await
        .map_err(|e| GcError::Join(e.to_string()))?;
    tracing::info!(%me, addr = %handle.local_addr(), "group-communication runtime started");
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let forward = match event {
                Event::GroupView { group, id, members } if group == MGMT_GROUP => {
                    GroupEvent::View {
                        id: format!("{}/{}", id.view, id.change),
                        members: members.into_iter().map(member).collect(),
                    }
                }
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
                    tracing::trace!(?other, "runtime event ignored");
                    continue;
                }
            };
            let left = forward == GroupEvent::Left;
            if tx.send(forward).await.is_err() || left {
                break;
            }
        }
        // The runtime has stopped (or the server is gone): tell the server
        // once, whatever the reason.
        let _ = tx.send(GroupEvent::Left).await;
    });
    Ok((GcGroup { handle, me }, rx))
}
