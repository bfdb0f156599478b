//! The runtime's API, with several nodes in this process over loopback UDP:
//! a view forms, `multicast` returns the identity the members deliver, the
//! event logs pass the checker, a key file readable by others is refused,
//! and `shutdown` is a clean leave.
#![cfg(feature = "runtime")]

use gc_core::eventlog::check_event_logs;
use gc_core::runtime::{spawn, Events, Handle, RuntimeConfig, StartError};
use gc_core::seal::{ClusterKey, KeyError};
use gc_core::{ConfId, Config, Event, Level, Pid, PrimaryState};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;
use tokio::time::{timeout, Instant};

type R = Result<(), Box<dyn std::error::Error>>;

/// Free loopback addresses: bound together so they differ, then released.
fn free_addrs(n: usize) -> std::io::Result<Vec<SocketAddr>> {
    let sockets: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    sockets.iter().map(|s| s.local_addr()).collect()
}

async fn start(
    dir: &Path,
    id: u32,
    addrs: &[SocketAddr],
    key: &Path,
) -> Result<(Handle, Events), StartError> {
    let mut node = Config::new(Pid::new(id, 0));
    node.seeds = addrs.to_vec();
    node.primary = PrimaryState::initial((1..=addrs.len() as u32).collect());
    let mut rc = RuntimeConfig::from_files(
        node,
        addrs[id as usize - 1],
        key,
        dir.join(format!("node{id}")),
    )?;
    rc.event_log = Some(dir.join(format!("node{id}.events")));
    spawn(rc).await
}

/// Reads events until `pred` accepts one, for at most `within`.
async fn wait_for(
    events: &mut Events,
    within: Duration,
    mut pred: impl FnMut(&Event) -> bool,
) -> Option<Event> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match timeout(left, events.recv()).await {
            Ok(Some(e)) if pred(&e) => return Some(e),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn three_nodes_form_a_view_and_deliver_with_the_returned_id() -> R {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("cluster.key");
    ClusterKey::generate()?.write_new(&key)?;
    let addrs = free_addrs(3)?;
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(dir.path(), id, &addrs, &key).await?);
    }
    for (_, events) in &mut nodes {
        let v = wait_for(events, Duration::from_secs(5), |e| {
            matches!(e, Event::View(v) if matches!(v.conf, ConfId::Regular(_)) && v.members.len() == 3)
        })
        .await;
        assert!(v.is_some(), "no 3-member view within 5 s");
    }
    for (h, _) in &nodes {
        h.join_group("g").await?;
    }
    for (_, events) in &mut nodes {
        let joined = wait_for(
            events,
            Duration::from_secs(5),
            |e| matches!(e, Event::GroupView { members, .. } if members.len() == 3),
        )
        .await;
        assert!(joined.is_some(), "no 3-member group view within 5 s");
    }
    let id = nodes[0]
        .0
        .multicast("g", Level::Safe, b"hello".to_vec())
        .await?;
    assert_eq!(id.sender, nodes[0].0.pid());
    for (_, events) in &mut nodes {
        let got = wait_for(
            events,
            Duration::from_secs(5),
            |e| matches!(e, Event::Deliver(d) if d.msg == id),
        )
        .await;
        match got {
            Some(Event::Deliver(d)) => assert_eq!(d.payload, b"hello"),
            other => panic!("message {id} not delivered: {other:?}"),
        }
    }
    let members = nodes[1].0.members().await?;
    assert_eq!(members.len(), 3);
    let c = nodes[1].0.counters().await?;
    assert!(c.io.datagrams_in > 0 && c.io.datagrams_out > 0);
    assert_eq!(c.drops().authentication, 0);

    for (h, _) in &nodes {
        timeout(Duration::from_secs(10), h.shutdown()).await??;
    }
    let logs: Vec<_> = (1..=3)
        .map(|i| dir.path().join(format!("node{i}.events")))
        .collect();
    let violations = check_event_logs(&logs)?;
    assert!(violations.is_empty(), "{violations:?}");
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn a_key_file_others_can_read_is_refused() -> R {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("cluster.key");
    ClusterKey::generate()?.write_new(&key)?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
    let addrs = free_addrs(1)?;
    match start(dir.path(), 1, &addrs, &key).await {
        Err(StartError::Key(KeyError::Permissions { mode, .. })) => {
            assert_eq!(mode, 0o644);
            let message = StartError::Key(KeyError::Permissions {
                path: key.clone(),
                mode,
            })
            .to_string();
            assert!(message.contains("chmod 600"), "{message}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a world-readable key was accepted"),
    }
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn every_start_is_a_new_incarnation() -> R {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("cluster.key");
    ClusterKey::generate()?.write_new(&key)?;
    let addrs = free_addrs(1)?;
    let (h1, _e1) = start(dir.path(), 1, &addrs, &key).await?;
    let first = h1.pid();
    timeout(Duration::from_secs(5), h1.shutdown()).await??;
    let (h2, _e2) = start(dir.path(), 1, &addrs, &key).await?;
    assert_eq!(h2.pid().node, first.node);
    assert!(h2.pid().incarnation > first.incarnation);
    timeout(Duration::from_secs(5), h2.shutdown()).await??;
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_send_queue_is_backpressure_not_memory() -> R {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("cluster.key");
    ClusterKey::generate()?.write_new(&key)?;
    let addrs = free_addrs(1)?;
    let mut node = Config::new(Pid::new(1, 0));
    node.seeds = addrs.clone();
    // No view for a long while: nothing leaves the send queue.
    node.startup_wait = Duration::from_secs(30);
    node.send_queue_bytes = 1000;
    let rc = RuntimeConfig::from_files(node, addrs[0], &key, dir.path().join("n1"))?;
    let (h, _events) = spawn(rc).await?;
    let first = {
        let h = h.clone();
        tokio::spawn(async move { h.multicast("g", Level::Agreed, vec![0u8; 800]).await })
    };
    // Let the first one be accepted.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = h.try_multicast("g", Level::Agreed, vec![0u8; 800]).await;
    match &refused {
        Err(e) => assert!(e.is_backpressure(), "{e}"),
        Ok(id) => panic!("accepted beyond the queue bound: {id}"),
    }
    let waited = h
        .multicast_within(
            "g",
            Level::Agreed,
            vec![0u8; 800],
            Duration::from_millis(100),
        )
        .await;
    assert!(
        matches!(waited, Err(gc_core::runtime::Error::Timeout(_))),
        "{waited:?}"
    );
    let empty = h.try_multicast("", Level::Agreed, vec![1]).await;
    assert!(matches!(
        empty,
        Err(gc_core::runtime::Error::Refused(
            gc_core::SendError::BadGroup
        ))
    ));
    let c = h.counters().await?;
    assert_eq!(c.drops().overload, 2);
    assert!(!first.is_finished(), "sent without a view");
    first.abort();
    Ok(())
}

/// Garbage, truncated, oversized, other-version, wrong-key, replayed and
/// undecodable-but-authentic datagrams sent to a live node's socket: each
/// dropped and counted by cause, and the node goes on working.
#[tokio::test(flavor = "current_thread")]
async fn hostile_datagrams_are_dropped_and_counted_by_cause() -> R {
    use gc_core::seal::{Sealer, MAGIC_VERSION};
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("cluster.key");
    let cluster_key = ClusterKey::generate()?;
    cluster_key.write_new(&key)?;
    let addrs = free_addrs(1)?;
    let (h, _events) = start(dir.path(), 1, &addrs, &key).await?;
    let target = h.local_addr();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;

    // Not a Flotilla datagram, empty, truncated, large garbage.
    sock.send_to(b"GET / HTTP/1.0\r\n\r\n", target).await?;
    sock.send_to(&[], target).await?;
    sock.send_to(&[MAGIC_VERSION, 1, 2], target).await?;
    sock.send_to(&vec![MAGIC_VERSION; 65_000], target).await?;
    // Another format version of the seal.
    let mut other = vec![0u8; 100];
    other[0] = (MAGIC_VERSION & 0xF0) | 0x2;
    sock.send_to(&other, target).await?;
    // Sealed under another key.
    let mut sealed = Vec::new();
    Sealer::new(&ClusterKey::generate()?, Pid::new(9, 1)).seal(b"x", &mut sealed)?;
    sock.send_to(&sealed, target).await?;
    // Authentic but garbage inside, then the same datagram again (replay).
    let mut peer = Sealer::new(&cluster_key, Pid::new(7, 1));
    peer.seal(b"\x01 not a packet", &mut sealed)?;
    sock.send_to(&sealed, target).await?;
    sock.send_to(&sealed, target).await?;
    // Authentic, tampered.
    peer.seal(b"anything", &mut sealed)?;
    if let Some(b) = sealed.last_mut() {
        *b ^= 1;
    }
    sock.send_to(&sealed, target).await?;

    let deadline = Instant::now() + Duration::from_secs(5);
    let drops = loop {
        let c = h.counters().await?;
        if c.io.datagrams_in >= 9 || Instant::now() > deadline {
            break c.drops();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Wrong key, tampered, and the large garbage one (its header parses and
    // names a key id nobody holds).
    assert_eq!(drops.authentication, 3, "{drops:?}");
    assert_eq!(drops.replay, 1, "{drops:?}");
    assert!(drops.decode >= 4, "{drops:?}"); // 3 malformed + 1 undecodable
    assert!(drops.version >= 1, "{drops:?}");
    // Still alive and answering.
    assert_eq!(h.view().await?.me, h.pid());
    timeout(Duration::from_secs(5), h.shutdown()).await??;
    Ok(())
}

/// The cluster key changes while three nodes run: stage everywhere, rotate
/// everywhere, retire everywhere. The view never changes and messages go
/// on being delivered; afterwards the old key is refused.
#[tokio::test(flavor = "current_thread")]
async fn the_cluster_key_rotates_without_a_view_change() -> R {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("cluster.key");
    ClusterKey::generate()?.write_new(&key)?;
    let old = ClusterKey::load(&key)?;
    let addrs = free_addrs(3)?;
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(dir.path(), id, &addrs, &key).await?);
    }
    for (h, events) in &mut nodes {
        let v = wait_for(events, Duration::from_secs(5), |e| {
            matches!(e, Event::View(v) if matches!(v.conf, ConfId::Regular(_)) && v.members.len() == 3)
        })
        .await;
        assert!(v.is_some());
        h.join_group("g").await?;
    }
    let view = nodes[0].0.view().await?.id;
    let next = ClusterKey::generate()?;
    let next_id = next.id();
    // Each step on every node, with traffic between the steps.
    for step in 0..3 {
        for (h, _) in &nodes {
            let status = match step {
                0 => h.stage_key(next.clone()).await?,
                1 => h.rotate_key(next.clone()).await?,
                _ => h.retire_old_key().await?,
            };
            match step {
                0 => assert_eq!(status.staged, Some(next_id)),
                1 => assert_eq!((status.current, status.previous), (next_id, Some(old.id()))),
                _ => assert_eq!((status.current, status.previous), (next_id, None)),
            }
        }
        let id = nodes[step % 3]
            .0
            .multicast("g", Level::Agreed, format!("step {step}").into_bytes())
            .await?;
        for (_, events) in &mut nodes {
            let got = wait_for(
                events,
                Duration::from_secs(5),
                |e| matches!(e, Event::Deliver(d) if d.msg == id),
            )
            .await;
            assert!(got.is_some(), "message of step {step} not delivered");
        }
    }
    for (h, _) in &nodes {
        assert_eq!(h.view().await?.id, view, "the view changed during rotation");
        assert_eq!(h.counters().await?.drops().authentication, 0);
    }
    // The old key is refused now.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let mut sealed = Vec::new();
    gc_core::seal::Sealer::new(&old, Pid::new(8, 1)).seal(b"x", &mut sealed)?;
    sock.send_to(&sealed, nodes[0].0.local_addr()).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while nodes[0].0.counters().await?.drops().authentication == 0 {
        assert!(Instant::now() < deadline, "the old key was not refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (h, _) in &nodes {
        timeout(Duration::from_secs(10), h.shutdown()).await??;
    }
    Ok(())
}
