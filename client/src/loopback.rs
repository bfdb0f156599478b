//! Free ports on loopback for fleets started on one machine: `monitor demo`
//! and the tests.
//!
//! The port is drawn at random from below the kernel's ephemeral range, not
//! taken from a port-0 bind. A port the kernel picked for a port-0 bind goes
//! back, once released, into the pool that every other process's port-0
//! binds and connects draw from. A fleet of 50 daemons starts one daemon
//! after the other over a second or more, and with other programs running
//! beside it, another process took one of its ports now and then: that
//! daemon exited with "Address already in use" and the fleet never formed.
//! Below the ephemeral range only explicit binds land.

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::{Mutex, PoisonError};

/// Which kind of socket the port is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// A UDP port (a daemon's group-communication socket).
    Udp,
    /// A TCP port (a daemon's client listener).
    Tcp,
}

/// The lowest port handed out: well above the well-known and the usual
/// registered service ports.
const LOWEST: u16 = 10_000;

/// Ports handed out in this process: one test binary starts many fleets on
/// its threads, and a port is free for the next fleet until its daemon
/// binds it.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A port on 127.0.0.1 that is free now (bound and released; the caller's
/// daemon binds it a moment later) and that this process has not handed out
/// before. Falls back to a port-0 bind where the ephemeral range leaves no
/// room below it.
pub fn free_port(protocol: Protocol) -> io::Result<u16> {
    let is_free = |port: u16| match protocol {
        Protocol::Udp => UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok(),
        Protocol::Tcp => TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok(),
    };
    if let Some(low) = ephemeral_low().filter(|&low| low > LOWEST + 1_000) {
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..1_000 {
            let offset = getrandom::u32().map_err(io::Error::other)? % u32::from(low - LOWEST);
            let port = LOWEST + u16::try_from(offset).map_err(io::Error::other)?;
            if !handed_out.contains(&port) && is_free(port) {
                handed_out.insert(port);
                return Ok(port);
            }
        }
    }
    match protocol {
        Protocol::Udp => UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr(),
        Protocol::Tcp => TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr(),
    }
    .map(|a| a.port())
}

/// The first port of the kernel's ephemeral range, if it says.
fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_distinct_and_below_the_ephemeral_range() {
        let low = ephemeral_low();
        let mut seen = BTreeSet::new();
        for protocol in [Protocol::Udp, Protocol::Tcp].into_iter().cycle().take(40) {
            let port = free_port(protocol).expect("a free port");
            assert!(seen.insert(port), "port {port} handed out twice");
            if let Some(low) = low.filter(|&low| low > LOWEST + 1_000) {
                assert!(
                    (LOWEST..low).contains(&port),
                    "{port} outside {LOWEST}..{low}"
                );
            }
            match protocol {
                Protocol::Udp => drop(UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).expect("bind")),
                Protocol::Tcp => {
                    drop(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("bind"))
                }
            }
        }
    }
}
