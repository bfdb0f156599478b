//! The receive path under arbitrary input, shared by the fuzz target
//! (`gc-core/fuzz`) and the proptest (`tests/receive_path.rs`) so both run
//! exactly the driver's code ([`super::receive`]).
//!
//! Random bytes almost never pass authentication, so a harness that only
//! fed raw datagrams would test the seal's header checks and little else.
//! [`ReceiveHarness::feed`] therefore takes a mode byte first:
//! - `0`: the rest is a raw datagram off the network (garbage, truncated,
//!   oversized, forged);
//! - `1`: the rest is a *plaintext* that a member holding the cluster key
//!   seals and sends: the decoder and the protocol state machine get
//!   arbitrary authenticated input, which is what a compromised or buggy
//!   member could send;
//! - `2`: the rest is replayed: the last datagram sealed in mode 1 is fed
//!   again (the replay window must drop it);
//! - anything else: time passes (the next two bytes, in milliseconds) and
//!   the node's timers run.
//!
//! The node under test is in a two-member view with the sealing peer, so
//! data, acknowledgement and membership frames reach the code that handles
//! them. [`ReceiveHarness::sample_plaintexts`] gives the real plaintexts
//! the peer sent while the view formed: a seed corpus.

use crate::seal::{ClusterKey, Sealer};
use crate::{Config, Node, Pid, PrimaryState, Time};
use std::net::SocketAddr;
use std::time::Duration;

/// A node in a view with one peer, and the peer's sealer.
pub struct ReceiveHarness {
    node: Node,
    sealer: Sealer,
    peer: Node,
    peer_sealer: Sealer,
    buf: Vec<u8>,
    sealed: Vec<u8>,
    now: Time,
    samples: Vec<Vec<u8>>,
}

const A: ([u8; 4], u16) = ([127, 0, 0, 1], 7001);
const B: ([u8; 4], u16) = ([127, 0, 0, 2], 7002);
/// Most sample plaintexts kept.
const MAX_SAMPLES: usize = 64;

impl Default for ReceiveHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl ReceiveHarness {
    /// Forms the two-member view (deterministically, in virtual time).
    pub fn new() -> Self {
        let key = ClusterKey::from_bytes([7; 32]);
        let (pa, pb) = (Pid::new(1, 1), Pid::new(2, 1));
        let (aa, ab) = (SocketAddr::from(A), SocketAddr::from(B));
        let cfg = |me: Pid, seed: SocketAddr| {
            let mut c = Config::new(me);
            c.seeds = vec![seed];
            c.primary = PrimaryState::initial(vec![1, 2]);
            c
        };
        let mut h = ReceiveHarness {
            node: Node::new(cfg(pa, ab), Time::ZERO),
            sealer: Sealer::new(&key, pa),
            peer: Node::new(cfg(pb, aa), Time::ZERO),
            peer_sealer: Sealer::new(&key, pb),
            buf: Vec::new(),
            sealed: Vec::new(),
            now: Time::ZERO,
            samples: Vec::new(),
        };
        // Exchange everything both send, in 1 ms steps, until both share a
        // view (well under a virtual second with the default timers).
        for _ in 0..2000 {
            h.now = h.now.plus(Duration::from_millis(1));
            h.node.handle_timeout(h.now);
            h.peer.handle_timeout(h.now);
            h.exchange();
            if h.node.view().1.len() == 2 && h.peer.view().1.len() == 2 {
                break;
            }
        }
        let _ = h
            .peer
            .multicast(h.now, "g", crate::Level::Agreed, b"hello".to_vec());
        h.exchange();
        h
    }

    /// Delivers every datagram each node has for the other, both ways,
    /// through the seal, until both are quiet (bounded).
    fn exchange(&mut self) {
        for _ in 0..100 {
            let mut moved = false;
            while let Some(t) = self.peer.poll_transmit(self.now) {
                moved = true;
                if self.samples.len() < MAX_SAMPLES {
                    self.samples.push(t.payload.to_vec());
                }
                if self.peer_sealer.seal(&t.payload, &mut self.sealed).is_ok() {
                    let _ = super::receive(
                        &mut self.sealer,
                        &mut self.node,
                        &mut self.buf,
                        self.now,
                        SocketAddr::from(B),
                        &self.sealed,
                    );
                }
            }
            while let Some(t) = self.node.poll_transmit(self.now) {
                moved = true;
                let mut sealed = Vec::new();
                if self.sealer.seal(&t.payload, &mut sealed).is_ok() {
                    let mut buf = Vec::new();
                    let _ = super::receive(
                        &mut self.peer_sealer,
                        &mut self.peer,
                        &mut buf,
                        self.now,
                        SocketAddr::from(A),
                        &sealed,
                    );
                }
            }
            self.drain();
            if !moved {
                return;
            }
        }
    }

    /// Throws away what the nodes produced for an application, so memory
    /// stays bounded however long the fuzzer runs.
    fn drain(&mut self) {
        while self.node.poll_event().is_some() {}
        while self.node.poll_trace().is_some() {}
        while self.peer.poll_event().is_some() {}
        while self.peer.poll_trace().is_some() {}
    }

    /// Plaintexts the peer really sent (a seed corpus for mode 1).
    pub fn sample_plaintexts(&self) -> &[Vec<u8>] {
        &self.samples
    }

    /// The node under test.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The node's sealer (its counters say what was dropped and why).
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Feeds one input (see the module documentation). Never panics.
    pub fn feed(&mut self, input: &[u8]) {
        let Some((&mode, rest)) = input.split_first() else {
            return;
        };
        let from = SocketAddr::from(B);
        match mode {
            0 => {
                let _ = super::receive(
                    &mut self.sealer,
                    &mut self.node,
                    &mut self.buf,
                    self.now,
                    from,
                    rest,
                );
            }
            1 => {
                if self.peer_sealer.seal(rest, &mut self.sealed).is_ok() {
                    let _ = super::receive(
                        &mut self.sealer,
                        &mut self.node,
                        &mut self.buf,
                        self.now,
                        from,
                        &self.sealed,
                    );
                }
            }
            2 => {
                let _ = super::receive(
                    &mut self.sealer,
                    &mut self.node,
                    &mut self.buf,
                    self.now,
                    from,
                    &self.sealed,
                );
            }
            _ => {
                let ms = rest
                    .iter()
                    .take(2)
                    .fold(0u64, |a, &b| (a << 8) | u64::from(b));
                self.now = self.now.plus(Duration::from_millis(ms));
                self.node.handle_timeout(self.now);
            }
        }
        while self.node.poll_transmit(self.now).is_some() {}
        self.drain();
    }
}
