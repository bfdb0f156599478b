use super::*;

use proptest::prelude::*;
use std::collections::BTreeSet;
use std::error::Error;

type TestResult = Result<(), Box<dyn Error>>;

const ALICE: Pid = Pid::new(1, 7);
const BOB: Pid = Pid::new(2, 3);

fn key(seed: u8) -> ClusterKey {
    ClusterKey::from_bytes([seed; 32])
}

fn pair() -> (Sealer, Sealer) {
    (Sealer::new(&key(1), ALICE), Sealer::new(&key(1), BOB))
}

fn sealed(sealer: &mut Sealer, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut out = Vec::new();
    sealer.seal(plaintext, &mut out)?;
    Ok(out)
}

/// Opens `datagram` and returns the sender and an owned plaintext.
fn opened(sealer: &mut Sealer, datagram: &[u8]) -> Result<(Pid, Vec<u8>), OpenError> {
    let mut buf = Vec::new();
    let o = sealer.open(datagram, &mut buf)?;
    Ok((o.sender, o.plaintext.to_vec()))
}

#[test]
fn round_trip() -> TestResult {
    let (mut a, mut b) = pair();
    let big = vec![0xAB; MAX_PLAINTEXT_LEN];
    let mut sent = 0;
    for plaintext in [&b""[..], b"x", b"hello, group", &[7; 1400], &big] {
        let datagram = sealed(&mut a, plaintext)?;
        assert_eq!(datagram.len(), plaintext.len() + OVERHEAD);
        assert_eq!(datagram[0], MAGIC_VERSION);
        if plaintext.len() >= 8 {
            assert!(
                !datagram.windows(8).any(|w| w == &plaintext[..8]),
                "the plaintext is encrypted"
            );
        }
        let (sender, got) = opened(&mut b, &datagram)?;
        assert_eq!(sender, ALICE);
        assert_eq!(got, plaintext);
        sent += datagram.len() as u64;
    }
    assert_eq!(a.counters().sealed_datagrams, 5);
    assert_eq!(a.counters().sealed_bytes, sent);
    assert_eq!(b.counters().opened_datagrams, 5);
    assert_eq!(b.counters().opened_bytes, sent);
    assert_eq!(b.counters().dropped(), 0);
    Ok(())
}

#[test]
fn sealing_is_bounded() -> TestResult {
    let (mut a, mut b) = pair();
    let mut out = vec![1, 2, 3];
    let too_big = vec![0; MAX_PLAINTEXT_LEN + 1];
    assert_eq!(
        a.seal(&too_big, &mut out),
        Err(SealError::TooLarge {
            len: MAX_PLAINTEXT_LEN + 1,
            max: MAX_PLAINTEXT_LEN
        })
    );
    assert!(out.is_empty());
    assert_eq!(a.counters().seal_failures, 1);

    // A datagram one byte longer than the limit is refused before the tag.
    let mut datagram = sealed(&mut a, &vec![0; MAX_PLAINTEXT_LEN])?;
    datagram.push(0);
    assert!(matches!(
        opened(&mut b, &datagram),
        Err(OpenError::Malformed { .. })
    ));
    Ok(())
}

#[test]
fn packet_numbers_never_wrap() -> TestResult {
    let (mut a, mut b) = pair();
    a.next_packet = u64::MAX - 1;
    let last = sealed(&mut a, b"last")?;
    assert_eq!(
        sealed(&mut a, b"one too many"),
        Err(SealError::PacketNumbersExhausted)
    );
    assert_eq!(
        sealed(&mut a, b"still"),
        Err(SealError::PacketNumbersExhausted)
    );
    assert_eq!(opened(&mut b, &last)?.1, b"last");
    Ok(())
}

#[test]
fn header_fields_are_where_documented() -> TestResult {
    let (mut a, _) = pair();
    a.next_packet = 0x0102_0304_0506_0708;
    let d = sealed(&mut a, b"p")?;
    assert_eq!(d[1..5], key(1).id().0);
    assert_eq!(d[5..9], 1u32.to_be_bytes());
    assert_eq!(d[9..17], 7u64.to_be_bytes());
    assert_eq!(d[17..25], 0x0102_0304_0506_0708u64.to_be_bytes());
    Ok(())
}

/// A datagram computed independently (Python: SHA-256 from hashlib,
/// HChaCha20 by hand, checked against the XChaCha draft's test vector, then
/// ChaCha20-Poly1305 from `cryptography`): pins the key derivation, the
/// header, the nonce and the cipher, so that a change to any of them, which
/// would split a cluster running two releases, fails here.
#[test]
fn wire_format_is_stable() -> TestResult {
    let mut a = Sealer::new(&key(1), ALICE);
    let expected = "f1430ea18e000000010000000000000007000000000000000080\
                    f2399352dd5626c99f8f461224e2a16c8409f6802283c3";
    let datagram = sealed(&mut a, b"flotilla")?;
    let hex: String = datagram.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, expected);
    assert_eq!(key(1).id().to_string(), "430ea18e");
    Ok(())
}

#[test]
fn every_single_byte_change_is_refused() -> TestResult {
    let (mut a, mut b) = pair();
    let datagram = sealed(&mut a, b"a plaintext of some length")?;
    for i in 0..datagram.len() {
        for delta in 1..=255u8 {
            let mut bad = datagram.clone();
            bad[i] ^= delta;
            let result = opened(&mut b, &bad);
            match i {
                0 => assert!(matches!(
                    result,
                    Err(OpenError::Malformed { .. } | OpenError::Version { .. })
                )),
                1..=4 => assert!(matches!(result, Err(OpenError::UnknownKey { .. }))),
                _ => assert_eq!(result, Err(OpenError::Authentication)),
            }
        }
    }
    // Failures changed no state: the genuine datagram is still accepted.
    assert_eq!(opened(&mut b, &datagram)?.0, ALICE);
    assert_eq!(b.counters().dropped(), datagram.len() as u64 * 255);
    Ok(())
}

#[test]
fn version_and_garbage_are_told_apart() -> TestResult {
    let (mut a, mut b) = pair();
    let mut datagram = sealed(&mut a, b"x")?;
    datagram[0] = 0xF2;
    assert_eq!(
        opened(&mut b, &datagram),
        Err(OpenError::Version { version: 2 })
    );
    // A newer version may have a shorter header: the version comes first.
    assert_eq!(
        opened(&mut b, &[0xF2]),
        Err(OpenError::Version { version: 2 })
    );
    assert!(matches!(
        opened(&mut b, &[]),
        Err(OpenError::Malformed { .. })
    ));
    assert!(matches!(
        opened(&mut b, &[0x01; 100]),
        Err(OpenError::Malformed { .. })
    ));
    datagram[0] = MAGIC_VERSION;
    assert!(matches!(
        opened(&mut b, &datagram[..OVERHEAD - 1]),
        Err(OpenError::Malformed { .. })
    ));
    let c = b.counters();
    assert_eq!((c.dropped_version, c.dropped_malformed), (2, 3));
    Ok(())
}

#[test]
fn another_key_is_refused() -> TestResult {
    let mut a = Sealer::new(&key(1), ALICE);
    let mut b = Sealer::new(&key(2), BOB);
    let datagram = sealed(&mut a, b"x")?;
    assert_eq!(
        opened(&mut b, &datagram),
        Err(OpenError::UnknownKey { key: key(1).id() })
    );
    assert_eq!(b.counters().dropped_unknown_key, 1);

    // Another key that happens to share the id fails the tag instead.
    b.current.id = key(1).id();
    assert_eq!(opened(&mut b, &datagram), Err(OpenError::Authentication));
    assert_eq!(b.counters().dropped_authentication, 1);
    Ok(())
}

#[test]
fn keys_sharing_an_id_are_both_tried() -> TestResult {
    let mut a = Sealer::new(&key(1), ALICE);
    let mut b = Sealer::new(&key(2), BOB);
    b.stage(&key(1));
    b.current.id = key(1).id();
    let datagram = sealed(&mut a, b"x")?;
    assert_eq!(opened(&mut b, &datagram)?.0, ALICE);
    Ok(())
}

#[test]
fn replays_are_refused_and_reordering_accepted() -> TestResult {
    let (mut a, mut b) = pair();
    let datagrams = (0..3000)
        .map(|i| sealed(&mut a, format!("{i}").as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let replay = |packet| {
        Err(OpenError::Replay {
            sender: ALICE,
            packet,
        })
    };

    opened(&mut b, &datagrams[0])?;
    assert_eq!(opened(&mut b, &datagrams[0]), replay(0));

    // 1..1200 in reverse: those within the window of 1199 are accepted.
    for i in (1..1200).rev() {
        let result = opened(&mut b, &datagrams[i]);
        if 1199 - i < REPLAY_WINDOW as usize {
            assert_eq!(result?.1, format!("{i}").as_bytes());
        } else {
            assert_eq!(result, replay(i as u64));
        }
    }
    // Each accepted once.
    for (i, datagram) in datagrams.iter().enumerate().take(1200).skip(176) {
        assert_eq!(opened(&mut b, datagram), replay(i as u64));
    }
    // A jump far ahead leaves everything before the window behind.
    opened(&mut b, &datagrams[2999])?;
    assert_eq!(opened(&mut b, &datagrams[1975]), replay(1975));
    assert_eq!(opened(&mut b, &datagrams[1976])?.0, ALICE);
    assert_eq!(opened(&mut b, &datagrams[1976]), replay(1976));
    assert_eq!(b.counters().dropped_replay, b.counters().dropped());
    Ok(())
}

#[test]
fn senders_are_tracked_separately() -> TestResult {
    let mut a = Sealer::new(&key(1), ALICE);
    let mut c = Sealer::new(&key(1), Pid::new(3, 7));
    let mut b = Sealer::new(&key(1), BOB);
    // Same incarnation and packet numbers, different nodes: both accepted.
    for _ in 0..3 {
        let from_a = sealed(&mut a, b"same")?;
        let from_c = sealed(&mut c, b"same")?;
        assert_ne!(
            from_a[HEADER_LEN..],
            from_c[HEADER_LEN..],
            "distinct nonces"
        );
        assert_eq!(opened(&mut b, &from_a)?.0, ALICE);
        assert_eq!(opened(&mut b, &from_c)?.0, Pid::new(3, 7));
    }
    assert_eq!(b.tracked_senders(), 2);
    Ok(())
}

#[test]
fn older_incarnations_are_stale() -> TestResult {
    let mut b = Sealer::new(&key(1), BOB);
    let mut old = Sealer::new(&key(1), Pid::new(1, 1));
    let mut now = Sealer::new(&key(1), Pid::new(1, 2));
    let mut newer = Sealer::new(&key(1), Pid::new(1, 3));
    let old_first = sealed(&mut old, b"old")?;
    let now_first = sealed(&mut now, b"now")?;
    let newer_first = sealed(&mut newer, b"newer")?;

    opened(&mut b, &now_first)?;
    assert_eq!(
        opened(&mut b, &old_first),
        Err(OpenError::Stale {
            sender: Pid::new(1, 1),
            newest: 2
        })
    );
    // A newer incarnation replaces the window: its packet 0 is new.
    opened(&mut b, &newer_first)?;
    assert_eq!(
        opened(&mut b, &sealed(&mut now, b"now")?),
        Err(OpenError::Stale {
            sender: Pid::new(1, 2),
            newest: 3
        })
    );
    assert_eq!(
        opened(&mut b, &newer_first),
        Err(OpenError::Replay {
            sender: Pid::new(1, 3),
            packet: 0
        })
    );
    assert_eq!(b.tracked_senders(), 1);
    assert_eq!(b.counters().dropped_stale, 2);
    Ok(())
}

#[test]
fn least_recent_sender_is_evicted() -> TestResult {
    let mut b = Sealer::new(&key(1), BOB).with_max_senders(2);
    let mut senders: Vec<Sealer> = (10..13)
        .map(|node| Sealer::new(&key(1), Pid::new(node, 1)))
        .collect();
    let mut first = Vec::new();
    for s in &mut senders {
        first.push(sealed(s, b"hi")?);
    }
    opened(&mut b, &first[0])?;
    opened(&mut b, &first[1])?;
    opened(&mut b, &sealed(&mut senders[0], b"again")?)?; // node 10 is fresher
    opened(&mut b, &first[2])?; // evicts node 11
    assert_eq!(b.tracked_senders(), 2);
    assert_eq!(b.counters().sender_evictions, 1);
    assert!(b.senders.contains_key(&10) && b.senders.contains_key(&12));
    // The documented cost: a forgotten sender's datagrams may be replayed.
    // Readmitting node 11 evicts node 10, now the least recent.
    assert!(opened(&mut b, &first[1]).is_ok());
    assert!(matches!(
        opened(&mut b, &first[2]),
        Err(OpenError::Replay { .. })
    ));
    assert_eq!(b.counters().sender_evictions, 2);
    Ok(())
}

#[test]
fn rotation_accepts_old_and_new_until_retired() -> TestResult {
    let (old, new) = (key(1), key(2));
    let (mut a, mut b) = pair();
    let before = sealed(&mut a, b"before")?;

    b.stage(&new);
    assert_eq!(b.staged_key(), Some(new.id()));
    a.stage(&new);
    a.rotate(&new);
    assert_eq!(
        (a.current_key(), a.previous_key()),
        (new.id(), Some(old.id()))
    );
    assert_eq!(a.staged_key(), None);
    let after = sealed(&mut a, b"after")?;
    assert_eq!(after[1..5], new.id().0);
    // b still seals under the old key and opens both.
    assert_eq!(opened(&mut b, &after)?.1, b"after");
    let from_b = sealed(&mut b, b"from b")?;
    assert_eq!(opened(&mut a, &from_b)?.1, b"from b");

    b.rotate(&new);
    assert_eq!(
        opened(&mut b, &before)?.1,
        b"before",
        "old key still accepted"
    );
    b.rotate(&new);
    assert_eq!(
        b.previous_key(),
        Some(old.id()),
        "rotating to the current key changes nothing"
    );

    b.retire_old();
    assert_eq!(b.previous_key(), None);
    let late_old = sealed(&mut Sealer::new(&old, Pid::new(9, 1)), b"late")?;
    assert_eq!(
        opened(&mut b, &late_old),
        Err(OpenError::UnknownKey { key: old.id() })
    );
    let newest = sealed(&mut a, b"newest")?;
    assert_eq!(opened(&mut b, &newest)?.1, b"newest");
    // Packet numbers went on across the rotation; replays are still caught.
    assert!(matches!(
        opened(&mut b, &after),
        Err(OpenError::Replay { .. })
    ));
    Ok(())
}

#[test]
fn key_ids_are_distinct_and_stable() {
    assert_eq!(key(1).id(), key(1).id());
    assert_ne!(key(1).id(), key(2).id());
    assert_eq!(key(1).id().to_string().len(), 8);
}

#[test]
fn debug_does_not_show_the_key() {
    let k = key(0xAB);
    let shown = format!("{k:?} {:?}", Sealer::new(&k, ALICE));
    assert!(!shown.contains("ab, ab") && !shown.contains("abab") && !shown.contains("171"));
    assert!(shown.contains(&k.id().to_string()));
}

#[test]
fn generated_keys_differ() -> TestResult {
    assert_ne!(ClusterKey::generate()?.id(), ClusterKey::generate()?.id());
    Ok(())
}

mod files {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> Result<u32, std::io::Error> {
        Ok(fs::metadata(path)?.permissions().mode() & 0o7777)
    }

    fn chmod(path: &Path, mode: u32) -> Result<(), std::io::Error> {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    }

    #[test]
    fn write_new_then_load() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("cluster.key");
        let k = ClusterKey::generate()?;
        k.write_new(&path)?;
        assert_eq!(mode(&path)?, 0o600);
        let text = fs::read_to_string(&path)?;
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        assert!(text[..64]
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        let loaded = ClusterKey::load(&path)?;
        assert_eq!(loaded.bytes, k.bytes);

        // Never overwrites, and leaves the file as it was.
        let other = ClusterKey::generate()?;
        assert!(matches!(
            other.write_new(&path),
            Err(KeyError::Exists { .. })
        ));
        assert_eq!(ClusterKey::load(&path)?.bytes, k.bytes);
        Ok(())
    }

    #[test]
    fn open_permissions_are_refused_with_the_fix() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("cluster.key");
        key(5).write_new(&path)?;
        for bad in [0o644, 0o640, 0o604, 0o660, 0o602, 0o620] {
            chmod(&path, bad)?;
            let error = ClusterKey::load(&path).err().ok_or("loaded")?;
            assert!(matches!(error, KeyError::Permissions { mode, .. } if mode == bad));
            let message = error.to_string();
            let fix = format!("chmod 600 {}", path.display());
            assert!(message.contains(&fix), "{message}");
        }
        for good in [0o600, 0o400] {
            chmod(&path, good)?;
            assert_eq!(ClusterKey::load(&path)?.id(), key(5).id());
        }
        Ok(())
    }

    #[test]
    fn chmod_hint_is_one_shell_word() {
        assert_eq!(
            shell_word(Path::new("/etc/flotilla/key")),
            "/etc/flotilla/key"
        );
        assert_eq!(shell_word(Path::new("/tmp/my key")), "'/tmp/my key'");
        assert_eq!(shell_word(Path::new("it's")), r"'it'\''s'");
    }

    #[test]
    fn missing_and_bad_files_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("absent");
        assert!(matches!(
            ClusterKey::load(&missing),
            Err(KeyError::Missing { .. })
        ));

        let hex = "0123456789abcdef".repeat(4);
        let cases: [(&str, bool); 11] = [
            (&hex, true),
            (&format!("{hex}\n"), true),
            (&format!("{hex}\n\n"), false),
            (&format!("{hex}\r\n"), false),
            (&format!("{hex}0"), false),
            (&hex[..62], false),
            ("", false),
            (&hex.to_uppercase(), false),
            (&format!("{}g", &hex[..63]), false),
            (&format!(" {}", &hex[..63]), false),
            (&"0".repeat(64), false),
        ];
        for (i, (text, ok)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("key{i}"));
            fs::write(&path, text)?;
            chmod(&path, 0o600)?;
            let result = ClusterKey::load(&path);
            assert_eq!(result.is_ok(), *ok, "case {i}: {result:?}");
            if let Err(error) = result {
                assert!(
                    matches!(error, KeyError::Contents { .. }),
                    "case {i}: {error}"
                );
                assert!(
                    !error.to_string().contains(&hex[..8]),
                    "no contents in errors"
                );
            }
        }
        let long = dir.path().join("long");
        fs::write(&long, "a".repeat(10_000))?;
        chmod(&long, 0o600)?;
        assert!(matches!(
            ClusterKey::load(&long),
            Err(KeyError::Contents { .. })
        ));

        let sub = dir.path().join("dir");
        fs::create_dir(&sub)?;
        chmod(&sub, 0o700)?;
        assert!(matches!(
            ClusterKey::load(&sub),
            Err(KeyError::Contents { .. })
        ));
        Ok(())
    }
}

/// Reference model of the replay window: the set of packets accepted and
/// the highest one.
fn window_model(packets: &[u64]) -> Vec<bool> {
    let mut seen = BTreeSet::new();
    let mut top = 0;
    packets
        .iter()
        .map(|&p| {
            let ok = !seen.contains(&p) && (p > top || top - p < REPLAY_WINDOW);
            if ok {
                seen.insert(p);
                top = top.max(p);
            }
            ok
        })
        .collect()
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Truncate { len: usize },
    Append { bytes: Vec<u8> },
    Insert { at: usize, byte: u8 },
    Remove { at: usize },
}

impl Mutation {
    fn apply(&self, datagram: &[u8]) -> Vec<u8> {
        let mut d = datagram.to_vec();
        let n = d.len();
        match self {
            Mutation::Flip { at, mask } if n > 0 => d[at % n] ^= mask,
            Mutation::Truncate { len } if n > 0 => d.truncate(len % n),
            Mutation::Remove { at } if n > 0 => {
                d.remove(at % n);
            }
            Mutation::Append { bytes } => d.extend_from_slice(bytes),
            Mutation::Insert { at, byte } => d.insert(at % (n + 1), *byte),
            Mutation::Flip { .. } | Mutation::Truncate { .. } | Mutation::Remove { .. } => {}
        }
        d
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        prop::collection::vec(any::<u8>(), 1..40).prop_map(|bytes| Mutation::Append { bytes }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Remove { at }),
    ]
}

proptest! {
    #[test]
    fn window_matches_model(packets in prop::collection::vec(
        prop_oneof![0..3000u64, 0..80u64, Just(u64::MAX), u64::MAX - 3000..u64::MAX],
        1..400,
    )) {
        let mut window = ReplayWindow::new();
        let got: Vec<bool> = packets
            .iter()
            .map(|&p| {
                let ok = window.check(p);
                if ok {
                    window.record(p);
                }
                ok
            })
            .collect();
        prop_assert_eq!(got, window_model(&packets));
    }

    #[test]
    fn arbitrary_bytes_are_refused(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        magic in any::<bool>(),
    ) {
        let (_, mut b) = pair();
        let mut bytes = bytes;
        if magic && !bytes.is_empty() {
            bytes[0] = MAGIC_VERSION;
            if bytes.len() > 4 {
                bytes[1..5].copy_from_slice(&key(1).id().0);
            }
        }
        prop_assert!(opened(&mut b, &bytes).is_err());
        prop_assert_eq!(b.counters().dropped(), 1);
        prop_assert_eq!(b.tracked_senders(), 0);
    }

    #[test]
    fn mutated_datagrams_are_refused(
        plaintext in prop::collection::vec(any::<u8>(), 0..200),
        first_packet in any::<u64>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let (mut a, mut b) = pair();
        a.next_packet = first_packet.min(u64::MAX - 1);
        let datagram = sealed(&mut a, &plaintext)?;
        let mut bad = datagram.clone();
        for m in &mutations {
            bad = m.apply(&bad);
        }
        prop_assume!(bad != datagram);
        prop_assert!(opened(&mut b, &bad).is_err());
        prop_assert_eq!(b.tracked_senders(), 0);
        let (sender, got) = opened(&mut b, &datagram)?;
        prop_assert_eq!(sender, ALICE);
        prop_assert_eq!(got, plaintext);
    }
}
