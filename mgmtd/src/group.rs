//! What the server needs of the group-communication core: the `mgmt`
//! group's views and agreed multicast, behind the [`Group`] trait.
//!
//! The server logic ([`crate::server`]) is written against this trait so that
//! it can be tested over [`fake`], an in-memory group with one total order,
//! and run over the real core ([`crate::gc`]). What the server relies on is
//! what extended virtual synchrony gives:
//!
//! - every member delivers the messages multicast to the group in one
//!   agreed order, its own included;
//! - a view change is delivered in the same place of that order at every
//!   member that stays;
//! - a message may be delivered again after a partition merges, or a monitor
//!   may send the same command twice: the server makes that harmless by the
//!   job id (at most once per id).

use std::fmt;
use std::future::Future;

use tokio::sync::mpsc;

/// One incarnation of one server in the group.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct MemberId {
    /// The host's node id.
    pub node: u32,
    /// The server's incarnation: it grows at every start.
    pub incarnation: u64,
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}.{}", self.node, self.incarnation)
    }
}

/// What the group tells the server, in delivery order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// A new view of the `mgmt` group.
    View {
        /// Its id, as the core names it.
        id: String,
        /// Its members, sorted.
        members: Vec<MemberId>,
    },
    /// A message multicast to the group.
    Deliver {
        /// Its sender.
        from: MemberId,
        /// Its bytes, as sent.
        payload: Vec<u8>,
    },
    /// This server has left the group; nothing follows.
    Left,
}

/// The order a message needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// One total order for all members, with the views (commands: a
    /// `chdir` and a `simex` apply in the same order everywhere).
    Agreed,
    /// The sender's order only (results, output, answers, announcements):
    /// delivered without waiting for the total order, which is much faster
    /// in a large group.
    Fifo,
}

/// Why a request to the group failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupError {
    /// The core refused the message: its queues are full, it is too large,
    /// or the server is leaving.
    #[error("the group refused the message: {0}")]
    Refused(String),
    /// The core has stopped.
    #[error("the group-communication core has stopped")]
    Stopped,
    /// The core's send queue is full: the group is not absorbing messages
    /// this fast. Back off and send again.
    #[error("the group is not keeping up: {0}")]
    Backpressure(String),
    /// This group implementation has no groups besides `mgmt`.
    #[error("other groups than mgmt are not supported here")]
    Unsupported,
}

/// What a group other than `mgmt` (a siminst installation group) tells its
/// subscriber, in delivery order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubgroupEvent {
    /// A new view of the group (this server is a member).
    View {
        /// Its members, sorted.
        members: Vec<MemberId>,
    },
    /// A message multicast to the group.
    Deliver {
        /// Its sender.
        from: MemberId,
        /// Its bytes.
        payload: Vec<u8>,
    },
    /// The core has stopped; nothing follows.
    Left,
}

/// The `mgmt` group as the server uses it.
pub trait Group: Send + Sync + 'static {
    /// This server.
    fn me(&self) -> MemberId;

    /// This server's group-communication address, for `monitor members`.
    fn address(&self) -> String;

    /// Multicasts `payload` to the group in `order`. `Ok` means the core
    /// accepted it: every member that stays connected delivers it.
    fn multicast(
        &self,
        order: Order,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<(), GroupError>> + Send;

    /// Leaves the group cleanly, once what this server sent is delivered:
    /// the others install a view without it.
    fn leave(&self) -> impl Future<Output = Result<(), GroupError>> + Send;

    /// Routes the events of another group (`group`, e.g. a siminst
    /// installation group) to the returned queue. Subscribe before joining.
    /// `None` when only `mgmt` is supported.
    fn subscribe(&self, _group: &str, _capacity: usize) -> Option<mpsc::Receiver<SubgroupEvent>> {
        None
    }

    /// Joins another group (in agreed order with its messages).
    fn join_group(&self, _group: &str) -> impl Future<Output = Result<(), GroupError>> + Send {
        std::future::ready(Err(GroupError::Unsupported))
    }

    /// Leaves another group.
    fn leave_group(&self, _group: &str) -> impl Future<Output = Result<(), GroupError>> + Send {
        std::future::ready(Err(GroupError::Unsupported))
    }

    /// Bytes this server's core has put on the wire since it started (all
    /// groups, sealed), when the core counts them: siminst reports what a
    /// transfer cost.
    fn wire_bytes_sent(&self) -> impl Future<Output = Option<u64>> + Send {
        std::future::ready(None)
    }

    /// Multicasts to another group; its members deliver it. A full send
    /// queue is [`GroupError::Backpressure`].
    fn multicast_to(
        &self,
        _group: &str,
        _order: Order,
        _payload: Vec<u8>,
    ) -> impl Future<Output = Result<(), GroupError>> + Send {
        std::future::ready(Err(GroupError::Unsupported))
    }
}

/// An in-memory group for tests: one total order for everyone, views on
/// join, leave and crash, and a way to deliver a message again.
pub mod fake {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex, MutexGuard};

    use super::*;

    /// Capacity of each member's event queue; the fake never blocks, so a
    /// test that overflows it has a bug.
    const QUEUE: usize = 1 << 16;

    #[derive(Default)]
    struct State {
        members: BTreeMap<MemberId, mpsc::Sender<GroupEvent>>,
        views: u64,
        /// Every message delivered, in order, for [`FakeNet::redeliver_all`].
        log: Vec<(MemberId, Vec<u8>)>,
    }

    /// The network all fake members share.
    #[derive(Clone, Default)]
    pub struct FakeNet {
        state: Arc<Mutex<State>>,
    }

    impl FakeNet {
        /// A network with no members.
        pub fn new() -> FakeNet {
            FakeNet::default()
        }

        fn lock(&self) -> MutexGuard<'_, State> {
            // A test that panicked while holding the lock has failed anyway.
            match self.state.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            }
        }

        /// Adds a member; every member (it included) gets the new view.
        pub fn join(&self, me: MemberId) -> (FakeGroup, mpsc::Receiver<GroupEvent>) {
            let (tx, rx) = mpsc::channel(QUEUE);
            let mut state = self.lock();
            state.members.insert(me, tx);
            install_view(&mut state);
            (
                FakeGroup {
                    net: self.clone(),
                    me,
                },
                rx,
            )
        }

        /// Removes a member as a crash: it gets nothing more, the others a
        /// view without it.
        pub fn crash(&self, member: MemberId) {
            let mut state = self.lock();
            if state.members.remove(&member).is_some() {
                install_view(&mut state);
            }
        }

        /// Delivers every message delivered so far once more to every
        /// member, as a merge or a retransmission could.
        pub fn redeliver_all(&self) {
            let state = self.lock();
            for (from, payload) in &state.log {
                for tx in state.members.values() {
                    let _ = tx.try_send(GroupEvent::Deliver {
                        from: *from,
                        payload: payload.clone(),
                    });
                }
            }
        }

        /// The members now.
        pub fn members(&self) -> Vec<MemberId> {
            self.lock().members.keys().copied().collect()
        }
    }

    fn install_view(state: &mut State) {
        state.views += 1;
        let members: Vec<MemberId> = state.members.keys().copied().collect();
        let id = format!("fake-v{}", state.views);
        for tx in state.members.values() {
            let _ = tx.try_send(GroupEvent::View {
                id: id.clone(),
                members: members.clone(),
            });
        }
    }

    /// One member's handle on a [`FakeNet`].
    #[derive(Clone)]
    pub struct FakeGroup {
        net: FakeNet,
        me: MemberId,
    }

    impl Group for FakeGroup {
        fn me(&self) -> MemberId {
            self.me
        }

        fn address(&self) -> String {
            format!("fake:{}", self.me)
        }

        async fn multicast(&self, _order: Order, payload: Vec<u8>) -> Result<(), GroupError> {
            // One total order for everything: stronger than FIFO.
            let mut state = self.net.lock();
            if !state.members.contains_key(&self.me) {
                return Err(GroupError::Stopped);
            }
            for tx in state.members.values() {
                let _ = tx.try_send(GroupEvent::Deliver {
                    from: self.me,
                    payload: payload.clone(),
                });
            }
            state.log.push((self.me, payload));
            Ok(())
        }

        async fn leave(&self) -> Result<(), GroupError> {
            let mut state = self.net.lock();
            if let Some(tx) = state.members.remove(&self.me) {
                let _ = tx.try_send(GroupEvent::Left);
                install_view(&mut state);
            }
            Ok(())
        }
    }
}
