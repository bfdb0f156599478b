//! Faults, as values: a scenario or the nemesis builds a [`Fault`] and
//! [`inject`]s it into a network and the processes on its hosts; every fault
//! is printed in the run's journal the same way, so a run can be read back.

use crate::vlan::proc::{HostProcess, ProcError};
use crate::vlan::{Vlan, VlanError};
use std::fmt;

/// One fault (or the undoing of one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Cut the network into these components (host indices).
    Partition(Vec<Vec<usize>>),
    /// Put every host back on one bridge.
    Heal,
    /// kill -9 the process on this host.
    Kill(usize),
    /// Start the process on this host again (a new incarnation).
    Restart(usize),
    /// SIGSTOP the process on this host.
    Pause(usize),
    /// SIGCONT the process on this host.
    Resume(usize),
    /// Drop this share of the packets from one host to another.
    Loss {
        /// The sender.
        from: usize,
        /// The receiver.
        to: usize,
        /// Percent, 0 to 100 (0 removes the rule).
        percent: u8,
    },
    /// Remove every loss rule.
    ClearLoss,
}

impl Fault {
    /// Whether this fault undoes damage rather than doing it.
    pub fn is_repair(&self) -> bool {
        matches!(
            self,
            Fault::Heal | Fault::Restart(_) | Fault::Resume(_) | Fault::ClearLoss
        ) || matches!(self, Fault::Loss { percent: 0, .. })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = |i: &usize| format!("h{}", i + 1);
        match self {
            Fault::Partition(comps) => {
                f.write_str("partition ")?;
                let parts: Vec<String> = comps
                    .iter()
                    .map(|c| c.iter().map(h).collect::<Vec<_>>().join(","))
                    .collect();
                write!(f, "{}", parts.join(" | "))
            }
            Fault::Heal => f.write_str("heal"),
            Fault::Kill(i) => write!(f, "kill -9 {}", h(i)),
            Fault::Restart(i) => write!(f, "restart {}", h(i)),
            Fault::Pause(i) => write!(f, "SIGSTOP {}", h(i)),
            Fault::Resume(i) => write!(f, "SIGCONT {}", h(i)),
            Fault::Loss { from, to, percent } => {
                write!(f, "loss {}% {} -> {}", percent, h(from), h(to))
            }
            Fault::ClearLoss => f.write_str("clear loss"),
        }
    }
}

/// Why a fault could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// The network refused it.
    #[error("injecting `{fault}`")]
    Network {
        /// The fault.
        fault: String,
        /// Why.
        #[source]
        source: VlanError,
    },
    /// A process refused it.
    #[error("injecting `{fault}`")]
    Process {
        /// The fault.
        fault: String,
        /// Why.
        #[source]
        source: ProcError,
    },
    /// No process is managed on that host.
    #[error("injecting `{fault}`: no process on host {host}")]
    NoProcess {
        /// The fault.
        fault: String,
        /// The host index.
        host: usize,
    },
}

/// Injects `fault`. `procs[i]` is the process on host `i`.
pub fn inject(vlan: &mut Vlan, procs: &mut [HostProcess], fault: &Fault) -> Result<(), FaultError> {
    let net = |source| FaultError::Network {
        fault: fault.to_string(),
        source,
    };
    let proc_err = |source| FaultError::Process {
        fault: fault.to_string(),
        source,
    };
    match fault {
        Fault::Partition(comps) => vlan.partition(comps).map_err(net),
        Fault::Heal => vlan.heal().map_err(net),
        Fault::Kill(i) => on(procs, *i, fault)?.kill9().map_err(proc_err),
        Fault::Restart(i) => on(procs, *i, fault)?.start().map(drop).map_err(proc_err),
        Fault::Pause(i) => on(procs, *i, fault)?.pause().map_err(proc_err),
        Fault::Resume(i) => on(procs, *i, fault)?.resume().map_err(proc_err),
        Fault::Loss { from, to, percent } => vlan.set_loss(*from, *to, *percent).map_err(net),
        Fault::ClearLoss => vlan.clear_loss().map_err(net),
    }
}

fn on<'a>(
    procs: &'a mut [HostProcess],
    i: usize,
    fault: &Fault,
) -> Result<&'a mut HostProcess, FaultError> {
    procs.get_mut(i).ok_or(FaultError::NoProcess {
        fault: fault.to_string(),
        host: i,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_print_with_host_names() {
        assert_eq!(
            Fault::Partition(vec![vec![0, 1], vec![2]]).to_string(),
            "partition h1,h2 | h3"
        );
        assert_eq!(Fault::Kill(4).to_string(), "kill -9 h5");
        assert_eq!(
            Fault::Loss {
                from: 0,
                to: 2,
                percent: 30
            }
            .to_string(),
            "loss 30% h1 -> h3"
        );
        assert!(Fault::Heal.is_repair());
        assert!(!Fault::Pause(1).is_repair());
    }
}
