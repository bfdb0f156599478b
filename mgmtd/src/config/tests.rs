use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The four required keys, on lines 1 to 4.
const BASE: &str = "name: web-1
listen: 0.0.0.0:7946
cluster_key: /etc/flotilla/cluster.key
data_dir: /var/lib/flotilla
";

fn detected() -> BTreeMap<String, String> {
    [("os", "linux"), ("arch", "x86_64"), ("hostname", "box")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_yaml_with(text, Path::new("mgmtd.yaml"), detected())
}

/// The error text for `text`, or "accepted".
fn error(text: &str) -> String {
    match parse(text) {
        Ok(_) => "accepted".to_owned(),
        Err(e) => e.to_string(),
    }
}

fn with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

#[test]
fn the_example_is_valid() -> TestResult {
    let config = parse(Config::example())?;
    assert_eq!(config.name, "web-1");
    assert_eq!(config.node_id, derive_node_id("web-1"));
    assert!(config.node_id_derived);
    assert_eq!(config.listen, "0.0.0.0:7946".parse()?);
    assert_eq!(
        config.seeds,
        [
            PeerAddr {
                host: "10.0.0.2".into(),
                port: 7946
            },
            PeerAddr {
                host: "db-1.example.net".into(),
                port: 7946
            },
        ]
    );
    assert_eq!(config.multicast, None);
    assert_eq!(config.cluster_key, Path::new("/etc/flotilla/cluster.key"));
    assert_eq!(config.data_dir, Path::new("/var/lib/flotilla"));
    assert_eq!(
        config.attributes.get("role").map(String::as_str),
        Some("web")
    );
    assert_eq!(
        config.attributes.get("os").map(String::as_str),
        Some("linux")
    );
    assert_eq!(config.client.socket, Path::new("/run/flotilla/mgmtd.sock"));
    assert_eq!(config.client.tcp, None);
    assert_eq!(config.exec, ExecOptions::default());
    assert_eq!(config.log_level, LogLevel::Info);
    assert!(config.gc.is_empty());
    Ok(())
}

#[test]
fn defaults_fill_a_minimal_file() -> TestResult {
    let config = parse(BASE)?;
    assert_eq!(config.seeds, []);
    assert_eq!(
        config.client.socket,
        Path::new("/var/lib/flotilla/mgmtd.sock")
    );
    assert_eq!(config.exec.shell, Path::new("/bin/sh"));
    assert_eq!(config.exec.timeout, Duration::from_secs(30));
    assert_eq!(config.exec.output_cap, 64 * 1024);
    assert_eq!(config.exec.kill_grace, Duration::from_secs(1));
    assert_eq!(config.log_level, LogLevel::Info);
    assert_eq!(config.attributes, detected());
    Ok(())
}

#[test]
fn node_ids_are_derived_stably_or_configured() -> TestResult {
    // FNV-1a test vectors: the derivation must never change.
    assert_eq!(derive_node_id(""), 0x811c_9dc5);
    assert_eq!(derive_node_id("a"), 0xe40c_292c);
    assert_eq!(derive_node_id("foobar"), 0xbf9c_f968);
    let config = parse(&with("node_id: 4294967295\n"))?;
    assert_eq!(config.node_id, u32::MAX);
    assert!(!config.node_id_derived);
    assert_eq!(
        error(&with("node_id: -1\n")),
        "mgmtd.yaml: node_id: expected a node id from 0 to 4294967295, found -1 (line 5, column 10)"
    );
    Ok(())
}

#[test]
fn every_setting_is_read() -> TestResult {
    let config = parse(&with(
        "seeds: [\"[fe80::1]:7946\", 10.0.0.3:7000]
multicast:
  group: 239.255.70.76
  port: 7947
  disseminate: true
  interface: 10.0.0.3
  ttl: 4
attributes:
  os: plan9
  gpus: 2
  ssd: true
client:
  socket: run/mgmtd.sock
  tcp: 127.0.0.1:7950
exec:
  shell: /bin/bash
  timeout: 1m 30s
  output_cap: 1 MiB
  kill_grace: 500ms
log_level: DEBUG
gc:
  heartbeat: 100ms
  window: 64
",
    ))?;
    assert_eq!(config.seeds[0].to_string(), "[fe80::1]:7946");
    assert_eq!(config.seeds[1].to_string(), "10.0.0.3:7000");
    assert_eq!(
        config.multicast,
        Some(Multicast {
            group: "239.255.70.76".parse()?,
            port: 7947,
            disseminate: true,
            interface: Some(Ipv4Addr::new(10, 0, 0, 3)),
            ttl: 4,
        })
    );
    let attributes: Vec<(&str, &str)> = config
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        attributes,
        [
            ("arch", "x86_64"),
            ("gpus", "2"),
            ("hostname", "box"),
            ("os", "plan9"),
            ("ssd", "true"),
        ]
    );
    // Relative to the directory of the file (here, the current directory).
    assert_eq!(
        config.client.socket,
        std::env::current_dir()?.join("run/mgmtd.sock")
    );
    assert_eq!(config.client.tcp, Some("127.0.0.1:7950".parse()?));
    assert_eq!(
        config.exec,
        ExecOptions {
            shell: "/bin/bash".into(),
            timeout: Duration::from_secs(90),
            output_cap: 1 << 20,
            kill_grace: Duration::from_millis(500),
        }
    );
    assert_eq!(config.log_level, LogLevel::Debug);
    assert_eq!(config.gc.len(), 2);
    Ok(())
}

#[test]
fn sizes_and_durations_in_their_forms() -> TestResult {
    for (text, bytes) in [
        ("4096", 4096),
        ("\"4096\"", 4096),
        ("64KiB", 65536),
        ("2 kib", 2048),
        ("16MiB", 16 << 20),
        ("0", 0),
        ("10B", 10),
    ] {
        let config = parse(&with(&format!("exec:\n  output_cap: {text}\n")))?;
        assert_eq!(config.exec.output_cap, bytes, "{text}");
    }
    for (text, duration) in [
        ("30s", Duration::from_secs(30)),
        ("500ms", Duration::from_millis(500)),
        ("2h", Duration::from_secs(7200)),
    ] {
        let config = parse(&with(&format!("exec:\n  timeout: {text}\n")))?;
        assert_eq!(config.exec.timeout, duration, "{text}");
    }
    let config = parse(&with("seeds: node-2.example.net:7946\n"))?;
    assert_eq!(config.seeds.len(), 1);
    Ok(())
}

#[test]
fn relative_paths_are_taken_from_the_files_directory() -> TestResult {
    let config = Config::from_yaml_with(
        "name: a\nlisten: 0.0.0.0:1\ncluster_key: cluster.key\ndata_dir: ../state\n",
        Path::new("/etc/flotilla/mgmtd.yaml"),
        detected(),
    )?;
    assert_eq!(config.cluster_key, Path::new("/etc/flotilla/cluster.key"));
    assert_eq!(config.data_dir, Path::new("/etc/flotilla/../state"));
    assert_eq!(config.event_log, None);
    assert_eq!(
        config.client.socket,
        Path::new("/etc/flotilla/../state/mgmtd.sock")
    );
    Ok(())
}

#[test]
fn unknown_keys_are_refused_with_the_keys_expected() {
    assert_eq!(
        error(&with("exce:\n  timeout: 5s\n")),
        "mgmtd.yaml: unknown key \"exce\" (expected one of: name, node_id, listen, seeds, multicast, cluster_key, data_dir, attributes, client, exec, log_level, gc, event_log, maps, testing) (line 5, column 1)"
    );
    assert_eq!(
        error(&with("exec:\n  timout: 5s\n")),
        "mgmtd.yaml: exec: unknown key \"timout\" (expected one of: shell, timeout, output_cap, kill_grace) (line 6, column 3)"
    );
    assert_eq!(
        error(&with("multicast:\n  group: 239.1.1.1\n  prot: 1\n")),
        "mgmtd.yaml: multicast: unknown key \"prot\" (expected one of: group, port, disseminate, interface, ttl) (line 7, column 3)"
    );
}

#[test]
fn bad_durations_are_refused() {
    assert_eq!(
        error(&with("exec:\n  timeout: thirty\n")),
        "mgmtd.yaml: exec.timeout: expected a duration like \"30s\", found \"thirty\" (line 6, column 12)"
    );
    assert_eq!(
        error(&with("exec:\n  timeout: 30\n")),
        "mgmtd.yaml: exec.timeout: expected a duration like \"30s\", found 30 (line 6, column 12)"
    );
    assert_eq!(
        error(&with("exec:\n  timeout: 0s\n")),
        "mgmtd.yaml: exec.timeout: expected a duration from 1ms to 24h, found \"0s\""
    );
    assert_eq!(
        error(&with("exec:\n  kill_grace: 2m\n")),
        "mgmtd.yaml: exec.kill_grace: expected a duration of at most 60s, found \"2m\""
    );
}

#[test]
fn bad_sizes_are_refused() {
    assert_eq!(
        error(&with("exec:\n  output_cap: 64KB\n")),
        "mgmtd.yaml: exec.output_cap: expected a size like \"64KiB\", found \"64KB\" (line 6, column 15)"
    );
    assert_eq!(
        error(&with("exec:\n  output_cap: -1\n")),
        "mgmtd.yaml: exec.output_cap: expected a size like \"64KiB\", found -1 (line 6, column 15)"
    );
    assert_eq!(
        error(&with("exec:\n  output_cap: 1GiB\n")),
        "mgmtd.yaml: exec.output_cap: expected a size of at most 16MiB, found \"1GiB\""
    );
}

#[test]
fn bad_addresses_are_refused() {
    assert_eq!(
        error("name: web-1\nlisten: localhost\n"),
        "mgmtd.yaml: listen: expected a UDP address like \"0.0.0.0:7946\", found \"localhost\" (line 2, column 9)"
    );
    assert_eq!(
        error(&with("seeds:\n  - 10.0.0.2:7946\n  - 10.0.0.3\n")),
        "mgmtd.yaml: seeds[1]: expected a peer address like \"10.0.0.2:7946\" or \"node-2.example.net:7946\", found \"10.0.0.3\" (line 7, column 5)"
    );
    assert_eq!(
        error(&with("seeds: [\"bad host:1\"]\n")),
        "mgmtd.yaml: seeds[0]: expected a peer address like \"10.0.0.2:7946\" or \"node-2.example.net:7946\", found \"bad host:1\" (line 5, column 9)"
    );
    assert_eq!(
        error(&with("seeds: [\"h:0\"]\n")),
        "mgmtd.yaml: seeds[0]: expected a peer address like \"10.0.0.2:7946\" or \"node-2.example.net:7946\", found \"h:0\" (line 5, column 9)"
    );
    assert_eq!(
        error(&with("multicast:\n  group: 10.0.0.1\n  port: 7947\n")),
        "mgmtd.yaml: multicast.group: expected a multicast address like \"239.255.70.76\", found \"10.0.0.1\" (line 6, column 10)"
    );
    assert_eq!(
        error(&with("multicast:\n  group: 239.0.0.1\n  port: 70000\n")),
        "mgmtd.yaml: multicast.port: expected a port from 1 to 65535, found 70000 (line 7, column 9)"
    );
    assert_eq!(
        error(&with("client:\n  tcp: 7950\n")),
        "mgmtd.yaml: client.tcp: expected a TCP address like \"0.0.0.0:7950\", found 7950 (line 6, column 8)"
    );
}

#[test]
fn the_number_of_seeds_is_bounded() {
    let seeds: Vec<String> = (0..=MAX_SEEDS)
        .map(|i| format!("\"10.0.{}.{}:7946\"", i / 256, i % 256))
        .collect();
    let text = with(&format!("seeds: [{}]\n", seeds.join(", ")));
    assert!(
        error(&text).starts_with("mgmtd.yaml: seeds: expected at most 1024 peers (line 5, column "),
        "{}",
        error(&text)
    );
}

#[test]
fn missing_required_keys_are_named() {
    assert_eq!(
        error("name: web-1\nlisten: 0.0.0.0:7946\ncluster_key: k\n"),
        "mgmtd.yaml: missing required key \"data_dir\" (expected the directory where the server keeps its state)"
    );
    assert_eq!(
        error("listen: 0.0.0.0:7946\n"),
        "mgmtd.yaml: missing required key \"name\" (expected a node name like \"web-1\" (letters, digits, '-', '_' and '.'))"
    );
    assert_eq!(
        error(&with("multicast:\n  group: 239.0.0.1\n")),
        "mgmtd.yaml: missing required key \"multicast.port\" (expected a port from 1 to 65535)"
    );
}

#[test]
fn other_bad_values_are_refused() {
    assert_eq!(
        error(&with("log_level: loud\n")),
        "mgmtd.yaml: log_level: expected one of error, warn, info, debug, trace, found \"loud\" (line 5, column 12)"
    );
    assert_eq!(
        error("name: web 1\n"),
        "mgmtd.yaml: name: expected a node name like \"web-1\" (letters, digits, '-', '_' and '.'), found \"web 1\" (line 1, column 7)"
    );
    assert_eq!(
        error(&with("exec:\n  shell: sh\n")),
        "mgmtd.yaml: exec.shell: expected an absolute path like \"/bin/sh\", found \"sh\""
    );
    assert_eq!(
        error(&with("exec: fast\n")),
        "mgmtd.yaml: exec: expected a mapping with shell, timeout, output_cap and kill_grace, found \"fast\" (line 5, column 7)"
    );
    assert_eq!(
        error(&with("attributes:\n  role: [web, db]\n")),
        "mgmtd.yaml: attributes.role: expected a text, number or boolean of at most 1024 bytes, found a list (line 6, column 9)"
    );
    assert_eq!(
        error(&with("attributes:\n  \"a=b\": x\n")),
        "mgmtd.yaml: attributes: expected attribute names like \"role\" (letters, digits, '-', '_' and '.'), found \"a=b\""
    );
    assert_eq!(
        error(&with("gc: 3\n")),
        "mgmtd.yaml: gc: expected a mapping, found 3 (line 5, column 5)"
    );
    let long = format!("client:\n  socket: /{}\n", "s".repeat(120));
    assert_eq!(
        error(&with(&long)),
        format!("mgmtd.yaml: client.socket: expected a path of at most 107 bytes (the limit of Unix sockets), found /{} (121 bytes)", "s".repeat(120))
    );
}

#[test]
fn malformed_files_are_refused() -> TestResult {
    assert_eq!(
        error("# nothing but a comment\n\n"),
        "mgmtd.yaml: expected a mapping of settings, found an empty file"
    );
    assert_eq!(
        error("- name\n- listen\n"),
        "mgmtd.yaml: expected a mapping of settings, found a list (line 1, column 1)"
    );
    assert_eq!(
        error("name: 'web-1\n"),
        "mgmtd.yaml: name: found unexpected end of stream at line 2 column 1, while scanning a quoted scalar at line 1 column 7"
    );
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("mgmtd.yaml");
    let err = Config::load(&missing)
        .err()
        .ok_or("loaded a missing file")?;
    assert_eq!(
        err.to_string(),
        format!(
            "{}: cannot read the file: No such file or directory (os error 2)",
            missing.display()
        )
    );
    std::fs::write(&missing, Config::example())?;
    assert_eq!(Config::load(&missing)?.file, missing);
    Ok(())
}

#[test]
fn errors_carry_their_parts() {
    let err = parse(&with("exec:\n  timeout: thirty\n")).err();
    assert_eq!(
        err,
        Some(ConfigError {
            file: "mgmtd.yaml".into(),
            key: "exec.timeout".into(),
            kind: ConfigErrorKind::Invalid(
                "expected a duration like \"30s\", found \"thirty\"".into()
            ),
            location: Some((6, 12)),
        })
    );
}

#[test]
fn the_event_log_is_off_unless_named() -> TestResult {
    assert_eq!(parse(BASE)?.event_log, None);
    let config = Config::from_yaml_with(
        &with("event_log: events.jsonl\n"),
        Path::new("/etc/flotilla/mgmtd.yaml"),
        detected(),
    )?;
    assert_eq!(
        config.event_log.as_deref(),
        Some(Path::new("/etc/flotilla/events.jsonl"))
    );
    Ok(())
}

#[test]
fn multicast_dissemination_is_off_unless_asked() -> TestResult {
    let off = parse(&with("multicast:\n  group: 239.255.70.76\n  port: 7947\n"))?;
    assert_eq!(off.multicast.map(|m| m.disseminate), Some(false));
    let on = parse(&with(
        "multicast:\n  group: 239.255.70.76\n  port: 7947\n  disseminate: true\n",
    ))?;
    assert_eq!(on.multicast.map(|m| m.disseminate), Some(true));
    assert_eq!(
        error(&with(
            "multicast:\n  group: 239.255.70.76\n  port: 7947\n  disseminate: yes please\n"
        )),
        "mgmtd.yaml: multicast.disseminate: expected true or false, found \"yes please\" (line 8, column 16)"
    );
    Ok(())
}

#[test]
fn the_multicast_interface_and_ttl_are_checked() -> TestResult {
    let default = parse(&with("multicast:\n  group: 239.255.70.76\n  port: 7947\n"))?;
    assert_eq!(
        default.multicast.map(|m| (m.interface, m.ttl)),
        Some((None, 1))
    );
    let group = "multicast:\n  group: 239.255.70.76\n  port: 7947\n";
    assert_eq!(
        error(&with(&format!("{group}  interface: eth0\n"))),
        "mgmtd.yaml: multicast.interface: expected the IPv4 address of one of this host's interfaces, like \"10.0.0.1\", found \"eth0\" (line 8, column 14)"
    );
    assert_eq!(
        error(&with(&format!("{group}  interface: 0.0.0.0\n"))),
        "mgmtd.yaml: multicast.interface: expected the IPv4 address of one of this host's interfaces, like \"10.0.0.1\", found \"0.0.0.0\" (line 8, column 14)"
    );
    assert_eq!(
        error(&with(&format!("{group}  ttl: 0\n"))),
        "mgmtd.yaml: multicast.ttl: expected a hop count from 1 to 255, found 0 (line 8, column 8)"
    );
    assert_eq!(
        error(&with(&format!("{group}  ttl: 256\n"))),
        "mgmtd.yaml: multicast.ttl: expected a hop count from 1 to 255, found 256 (line 8, column 8)"
    );
    // A listen address on another interface would be the source of the
    // group datagrams sent out of this one.
    let on_one_address = format!(
        "name: web-1\nlisten: 10.0.0.2:7946\ncluster_key: k\ndata_dir: d\n{group}  interface: 10.0.0.3\n"
    );
    assert_eq!(
        error(&on_one_address),
        "mgmtd.yaml: multicast.interface: 10.0.0.3 is not the listen address 10.0.0.2: group datagrams are sent from the listen socket, so listen on 10.0.0.3 or on 0.0.0.0"
    );
    let matching = on_one_address.replace("10.0.0.2", "10.0.0.3");
    assert_eq!(
        parse(&matching)?.multicast.and_then(|m| m.interface),
        Some(Ipv4Addr::new(10, 0, 0, 3))
    );
    Ok(())
}
