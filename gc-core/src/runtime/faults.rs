//! Test-only fault injection: a shared set of peer addresses whose
//! datagrams the driver drops, both ways, as if the network between them
//! were cut. End-to-end tests use it to partition a fleet of real daemons
//! on one loopback interface, where no firewall or namespace is at hand.
//!
//! Off unless [`super::RuntimeConfig::faults`] is set; a production daemon
//! never sets it (mgmtd only with `testing: { fault_control: true }`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

/// The peers cut off from this process. Cheap to clone; every clone shares
/// the set.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    blocked: Arc<RwLock<BTreeSet<SocketAddr>>>,
}

impl Faults {
    /// No peer blocked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the set of blocked peers.
    pub fn set_blocked(&self, peers: impl IntoIterator<Item = SocketAddr>) {
        let peers: BTreeSet<SocketAddr> = peers.into_iter().collect();
        match self.blocked.write() {
            Ok(mut set) => *set = peers,
            // Nothing panics while holding the lock: the set is intact.
            Err(poisoned) => *poisoned.into_inner() = peers,
        }
    }

    /// The blocked peers.
    pub fn blocked(&self) -> BTreeSet<SocketAddr> {
        match self.blocked.read() {
            Ok(set) => set.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether datagrams to or from `peer` are dropped.
    pub fn is_blocked(&self, peer: &SocketAddr) -> bool {
        match self.blocked.read() {
            Ok(set) => set.contains(peer),
            Err(poisoned) => poisoned.into_inner().contains(peer),
        }
    }
}

/// Whether the driver drops a datagram to or from `peer`.
pub(super) fn drops(faults: Option<&Faults>, peer: &SocketAddr) -> bool {
    faults.is_some_and(|f| f.is_blocked(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_only_the_listed_peers() {
        let faults = Faults::new();
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        assert!(!drops(Some(&faults), &a));
        faults.clone().set_blocked([a]);
        assert!(drops(Some(&faults), &a));
        assert!(!drops(Some(&faults), &b));
        assert!(!drops(None, &a));
        faults.set_blocked([]);
        assert!(!drops(Some(&faults), &a));
    }
}
