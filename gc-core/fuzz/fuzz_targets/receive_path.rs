//! The driver's receive path (unseal, decode, handle) under libFuzzer.
//!
//! Each input is a sequence of records, `len: u16 (LE)` then `len` bytes,
//! each fed to one long-lived harness ([`ReceiveHarness::feed`]: a mode
//! byte selects a raw datagram, an authenticated plaintext, a replay or
//! time passing), so the fuzzer explores sequences, not only single
//! datagrams. `cargo +nightly fuzz run receive_path` from `gc-core/`.
#![no_main]

use gc_core::runtime::fuzzing::ReceiveHarness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut h = ReceiveHarness::new();
    let mut rest = data;
    // At most 64 records per input keeps each run short.
    for _ in 0..64 {
        let [a, b, tail @ ..] = rest else { break };
        let len = usize::from(u16::from_le_bytes([*a, *b]));
        let take = len.min(tail.len());
        h.feed(&tail[..take]);
        rest = &tail[take..];
    }
});
