//! The receive path (unseal, decode, handle) under arbitrary input: raw
//! datagrams, authenticated arbitrary plaintexts, mutated real plaintexts,
//! replays and time passing, in any order. It must never panic, and every
//! dropped datagram must be counted. The same harness drives the fuzz
//! target in `gc-core/fuzz` for long runs.
#![cfg(feature = "runtime")]

use gc_core::runtime::fuzzing::ReceiveHarness;
use proptest::prelude::*;

/// One input for the harness: a mode byte and its bytes.
fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Raw datagrams: garbage of any length, up to past the UDP limit.
        proptest::collection::vec(any::<u8>(), 0..1600).prop_map(|b| [vec![0], b].concat()),
        // Authenticated arbitrary plaintexts.
        proptest::collection::vec(any::<u8>(), 0..600).prop_map(|b| [vec![1], b].concat()),
        // Authenticated mutations of real plaintexts: see `mutated`.
        (
            any::<prop::sample::Index>(),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            0usize..3
        )
            .prop_map(|(which, edits, cut)| vec![9, 9, 9, 9]
                .into_iter()
                .chain(encode_mutation(which, &edits, cut))
                .collect()),
        Just(vec![2]),
        (0u8..=255, 0u8..=255).prop_map(|(a, b)| vec![3, a, b]),
    ]
}

/// Carries a mutation request through the input (decoded in `apply`).
fn encode_mutation(
    which: prop::sample::Index,
    edits: &[(prop::sample::Index, u8)],
    cut: usize,
) -> Vec<u8> {
    let mut v = vec![(which.index(256)) as u8, cut as u8];
    for (i, b) in edits {
        v.push(i.index(256) as u8);
        v.push(*b);
    }
    v
}

/// Turns a mutation request into a mode-1 input over a real plaintext.
fn apply(h: &ReceiveHarness, input: &[u8]) -> Vec<u8> {
    let samples = h.sample_plaintexts();
    if input.len() < 6 || samples.is_empty() {
        return input.to_vec();
    }
    let body = &input[4..];
    let mut p = samples[body[0] as usize % samples.len()].clone();
    for pair in body[2..].chunks(2) {
        if let [i, b] = pair {
            if !p.is_empty() {
                let at = *i as usize % p.len();
                p[at] ^= b | 1;
            }
        }
    }
    let cut = body[1] as usize;
    p.truncate(p.len().saturating_sub(cut));
    [vec![1], p].concat()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn the_receive_path_never_panics_and_counts_drops(inputs in proptest::collection::vec(input(), 1..40)) {
        let mut h = ReceiveHarness::new();
        let mut raw = 0u64;
        for i in &inputs {
            let i = if i.starts_with(&[9, 9, 9, 9]) { apply(&h, i) } else { i.clone() };
            if i.first() == Some(&0) {
                raw += 1;
            }
            h.feed(&i);
        }
        // Raw datagrams are random bytes: none can pass authentication, so
        // every one was dropped and counted by the seal.
        prop_assert!(h.sealer().counters().dropped() >= raw);
    }
}

#[test]
fn real_plaintexts_are_accepted_so_the_harness_reaches_the_node() {
    let h = ReceiveHarness::new();
    assert_eq!(h.node().view().1.len(), 2, "the harness formed no view");
    assert!(!h.sample_plaintexts().is_empty());
    assert!(
        h.node().counters().delivered > 0,
        "nothing reached delivery"
    );
}

/// Writes a seed corpus for the fuzz target into `$FUZZ_CORPUS`: each real
/// plaintext as an authenticated record, then a replay and a timer tick.
/// `FUZZ_CORPUS=gc-core/fuzz/corpus/receive_path cargo test -p gc-core
/// --test receive_path -- --ignored write_fuzz_corpus`
#[test]
#[ignore = "writes files; run by hand before fuzzing"]
fn write_fuzz_corpus() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(dir) = std::env::var("FUZZ_CORPUS") else {
        return Err("set FUZZ_CORPUS to the corpus directory".into());
    };
    std::fs::create_dir_all(&dir)?;
    let h = ReceiveHarness::new();
    let record = |body: &[u8]| -> Vec<u8> {
        let mut v = (body.len() as u16).to_le_bytes().to_vec();
        v.extend_from_slice(body);
        v
    };
    for (i, p) in h.sample_plaintexts().iter().enumerate() {
        let mut input = record(&[vec![1], p.clone()].concat());
        input.extend(record(&[2]));
        input.extend(record(&[3, 0, 60]));
        std::fs::write(format!("{dir}/seed-{i:03}"), input)?;
    }
    Ok(())
}
