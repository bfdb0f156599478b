//! The server's YAML configuration.
//!
//! A file is read in two steps, in the manner of ripgrep's flags: the YAML
//! is parsed into raw settings, where every scalar is checked for its form
//! (a duration, a size, an address) and every unknown key is refused; the
//! raw settings are then validated and completed (defaults, detected host
//! attributes, relative paths) into a settled [`Config`].
//!
//! Every error names the file, the key and what was expected, with the line
//! and column when the parser knows them:
//!
//! ```text
//! mgmtd.yaml: exec.timeout: expected a duration like "30s", found "thirty" (line 12, column 12)
//! mgmtd.yaml: unknown key "exce" (expected one of: name, node_id, ...) (line 9, column 1)
//! mgmtd.yaml: missing required key "data_dir" (expected the directory where the server keeps its state)
//! ```
//!
//! # The settings
//!
//! [`Config::example`] is a complete, commented file. In brief:
//!
//! | key | required | meaning |
//! |---|---|---|
//! | `name` | yes | this host's name in the fleet: letters, digits, `-`, `_`, `.`; at most 63 |
//! | `node_id` | no | the host's 32-bit id in the group; derived from `name` when absent (see [`derive_node_id`]) |
//! | `listen` | yes | UDP address of the group-communication protocol, `IP:PORT` |
//! | `seeds` | no | peers to contact, `HOST:PORT` each (a host name is resolved when used) |
//! | `multicast.group`, `multicast.port` | no | IP multicast discovery |
//! | `multicast.disseminate` | no | `true`: also send what goes to every member once to the group instead of once per member (every daemon of the fleet must then be on the same group); default `false` |
//! | `multicast.interface` | no | the IPv4 address of the interface to join the group on and send to it from; default: the `listen` address when that is a specific one, else the system's choice (the default route's interface) |
//! | `multicast.ttl` | no | hops a group datagram may cross, 1 (default: the local network) to 255 |
//! | `cluster_key` | yes | the key file written by `mgmtd keygen` |
//! | `data_dir` | yes | where the server keeps its state, job outcomes and audit log |
//! | `attributes` | no | free-form `key: value` host attributes; `os`, `arch` and `hostname` are detected, and a value given here overrides the detected one |
//! | `client.socket` | no | the monitor's Unix socket; default `DATA_DIR/mgmtd.sock` |
//! | `client.tcp` | no | a TCP address for monitors on other hosts |
//! | `exec.shell` | no | absolute path of the shell; default `/bin/sh` |
//! | `exec.timeout` | no | default command timeout; default `30s`, at most `24h` |
//! | `exec.output_cap` | no | bytes kept of stdout and of stderr; default `64KiB`, at most `16MiB` |
//! | `exec.kill_grace` | no | time between `SIGTERM` and `SIGKILL`; default `1s`, at most `60s` |
//! | `log_level` | no | `error`, `warn`, `info` (default), `debug` or `trace` |
//! | `gc` | no | tuning knobs of the group-communication core: `heartbeat_interval`, `suspect_timeout`, `discovery_interval`, `startup_wait`, `join_timeout` (durations); `max_datagram` (bytes, 512 to 60000; default 1400); `busy_poll` (0s to 1ms, default 100us: how long the core keeps looking for an answer before it sleeps; 0s turns it off) |
//! | `event_log` | no | a file where the core appends the views it installs and the messages it delivers, for the checker; off by default |
//! | `maps.hosts` | no | the fleet's hosts (names or node ids) for the replicated maps; no `maps:` section, no maps |
//! | `maps.render` | no | maps written to files: `map`, `file`, `template` each |
//! | `testing.fault_control` | no | test-only: drop traffic to the peers listed in `DATA_DIR/faults`; off by default |
//!
//! Durations are written `500ms`, `30s`, `5m`, `1h` or combined (`1m 30s`).
//! Sizes are a number of bytes, optionally with a unit: `B`, `KiB`, `MiB`,
//! `GiB` (powers of 1024; `KB` and the like are refused as ambiguous).
//! Relative paths are taken from the directory that holds the configuration
//! file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

pub use self::maps::{MapsConfig, RenderConfig, TestingConfig};
use crate::exec::ExecOptions;

/// The longest `exec.timeout` accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The largest `exec.output_cap` accepted: 16 MiB.
pub const MAX_OUTPUT_CAP: u64 = 16 << 20;
/// The longest `exec.kill_grace` accepted.
pub const MAX_KILL_GRACE: Duration = Duration::from_secs(60);
/// The most `seeds` accepted.
pub const MAX_SEEDS: usize = 1024;
/// The most `attributes` accepted (the detected ones included).
pub const MAX_ATTRIBUTES: usize = 256;
/// The longest attribute value accepted, in bytes.
pub const MAX_ATTRIBUTE_VALUE: usize = 1024;
/// The name of the client socket in the data directory, when `client.socket`
/// is not given.
pub const DEFAULT_SOCKET_NAME: &str = "mgmtd.sock";

/// The longest node name.
const MAX_NAME: usize = 63;
/// The longest attribute key.
const MAX_ATTRIBUTE_KEY: usize = 64;
/// The longest path a Unix socket may have (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The commented example configuration, used by the documentation and the
/// tests.
const EXAMPLE: &str = r#"# mgmtd.yaml: the configuration of one Flotilla management server.
# Relative paths are taken from the directory of this file.

# This host's name in the fleet: letters, digits, '-', '_' and '.'.
name: web-1
# The host's 32-bit id in the group; derived from the name when absent.
# node_id: 17

# UDP address of the group-communication protocol.
listen: 0.0.0.0:7946
# Peers to contact at startup, and/or IP multicast discovery.
seeds:
  - 10.0.0.2:7946
  - db-1.example.net:7946
# multicast:
#   group: 239.255.70.76
#   port: 7947
#   # Also send what goes to every member (heartbeats, acknowledgements,
#   # data such as siminst packages) once to the group rather than once per
#   # member. Every server of the fleet must use the same group. Default false.
#   disseminate: true
#   # The interface for the group, by its IPv4 address, on a host with
#   # several networks (default: the listen address, or the default route's
#   # interface when listening on 0.0.0.0).
#   interface: 10.0.0.1
#   # Routers a group datagram may cross (default 1: the local network).
#   ttl: 1

# The fleet's shared secret, written by `mgmtd keygen FILE` (mode 0600).
cluster_key: /etc/flotilla/cluster.key
# Where the server keeps its state, recent job outcomes and audit log.
data_dir: /var/lib/flotilla

# Host attributes for `monitor simex --where key=value`. os, arch and
# hostname are detected; a value given here overrides the detected one.
attributes:
  role: web
  rack: r12

client:
  # The monitor's Unix socket (default: DATA_DIR/mgmtd.sock).
  socket: /run/flotilla/mgmtd.sock
  # A TCP listener for monitors elsewhere; they must hold the cluster key.
  # tcp: 0.0.0.0:7950

exec:
  shell: /bin/sh        # commands run as `shell -c CMD`
  timeout: 30s          # default command timeout
  output_cap: 64KiB     # bytes kept of stdout, and of stderr
  kill_grace: 1s        # from SIGTERM to SIGKILL on timeout

log_level: info         # error | warn | info | debug | trace

# Tuning knobs of the group-communication core (durations).
# gc:
#   heartbeat_interval: 50ms
#   suspect_timeout: 400ms

# Append every view installed and message delivered to this file, for the
# protocol checker (`gc_core::eventlog`). It grows without bound: for tests
# and fault drills, not for production.
# event_log: /var/lib/flotilla/events.jsonl

# The replicated maps: the fleet's hosts (names or node ids; the same list
# on every host) and maps written to local files on every update.
# maps:
#   hosts: [web-1, web-2, db-1]
#   render:
#     - map: hosts
#       file: /etc/flotilla/hosts
#       template: "{value} {key}"
"#;

/// A settled configuration: every value checked, every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from, as given.
    pub file: PathBuf,
    /// This host's name in the fleet.
    pub name: String,
    /// This host's id in the group.
    pub node_id: u32,
    /// Whether `node_id` was derived from the name rather than configured.
    pub node_id_derived: bool,
    /// The UDP address of the group-communication protocol.
    pub listen: SocketAddr,
    /// Peers to contact at startup.
    pub seeds: Vec<PeerAddr>,
    /// IP multicast discovery, if configured.
    pub multicast: Option<Multicast>,
    /// The cluster key file.
    pub cluster_key: PathBuf,
    /// Where the server keeps its state.
    pub data_dir: PathBuf,
    /// Host attributes: the detected `os`, `arch` and `hostname`, overridden
    /// and extended by the configured ones.
    pub attributes: BTreeMap<String, String>,
    /// Where monitors connect.
    pub client: ClientConfig,
    /// How commands are run.
    pub exec: ExecOptions,
    /// The log level.
    pub log_level: LogLevel,
    /// Tuning knobs for the group-communication core, not interpreted here.
    pub gc: BTreeMap<String, serde_yaml::Value>,
    /// Where the group-communication core appends the views it installs and
    /// the messages it delivers, for the checker (`gc_core::eventlog`);
    /// none by default.
    pub event_log: Option<PathBuf>,
    /// The replicated maps (`maps:`); off when absent.
    pub maps: MapsConfig,
    /// Test-only settings (`testing:`).
    pub testing: TestingConfig,
}

/// A peer to contact: a host name or IP address, and a UDP port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr {
    /// A DNS name or an IP address (an IPv6 address without brackets).
    pub host: String,
    /// The UDP port, never 0.
    pub port: u16,
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// IP multicast discovery (and optionally dissemination) settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Multicast {
    /// A multicast group address.
    pub group: IpAddr,
    /// The UDP port, never 0.
    pub port: u16,
    /// Whether what goes to every member is sent once to the group rather
    /// than once per member (`multicast.disseminate`, default false).
    pub disseminate: bool,
    /// The IPv4 address of the interface to join and send on
    /// (`multicast.interface`); `None`: the listen address's interface, or
    /// the system's choice.
    pub interface: Option<Ipv4Addr>,
    /// Time to live of group datagrams (`multicast.ttl`, 1 to 255, default 1).
    pub ttl: u8,
}

/// Where monitors connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The Unix socket path.
    pub socket: PathBuf,
    /// The TCP listen address, if any.
    pub tcp: Option<SocketAddr>,
}

/// The level of log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default: what an operator wants to see.
    #[default]
    Info,
    /// Details for debugging.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// Every level, from the quietest.
    pub const ALL: [LogLevel; 5] = [
        LogLevel::Error,
        LogLevel::Warn,
        LogLevel::Info,
        LogLevel::Debug,
        LogLevel::Trace,
    ];

    /// The level's name, as written in the configuration and accepted by
    /// `tracing`'s filters.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a log level name that is not one of [`LogLevel::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected one of error, warn, info, debug, trace, found {0:?}")]
pub struct ParseLogLevelError(String);

impl FromStr for LogLevel {
    type Err = ParseLogLevelError;

    /// Parses a level name, ignoring case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LogLevel::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseLogLevelError(s.to_owned()))
    }
}

/// Derives a node id from a node name: the 32-bit FNV-1a hash of its UTF-8
/// bytes.
///
/// The function is fixed (it does not depend on the Rust version or on the
/// platform), so a host keeps its id across restarts and upgrades. Two
/// names can hash to the same id (for 1000 hosts, about one chance in ten
/// thousand); the group core refuses a duplicate id, and `node_id` settles
/// it.
pub fn derive_node_id(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// The host attributes detected at load time: `os` and `arch` as Rust names
/// them (`linux`, `x86_64`, `aarch64`, ...) and `hostname` from the kernel.
pub fn detected_attributes() -> BTreeMap<String, String> {
    let mut detected = BTreeMap::new();
    detected.insert("os".to_owned(), std::env::consts::OS.to_owned());
    detected.insert("arch".to_owned(), std::env::consts::ARCH.to_owned());
    if let Some(hostname) = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
    {
        detected.insert("hostname".to_owned(), hostname);
    }
    detected
}

impl Config {
    /// The commented example configuration.
    pub fn example() -> &'static str {
        EXAMPLE
    }

    /// Reads and settles the configuration in `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_owned(),
            key: String::new(),
            kind: ConfigErrorKind::Read(e.to_string()),
            location: None,
        })?;
        Config::from_yaml(&text, file)
    }

    /// Settles the configuration in `text`, as if read from `file`: errors
    /// name `file`, and relative paths are taken from its directory.
    pub fn from_yaml(text: &str, file: &Path) -> Result<Config, ConfigError> {
        Config::from_yaml_with(text, file, detected_attributes())
    }

    /// As [`Config::from_yaml`], with the given detected attributes instead of
    /// this host's.
    pub fn from_yaml_with(
        text: &str,
        file: &Path,
        detected: BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let is_blank = text
            .lines()
            .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'));
        if is_blank {
            return Err(ConfigError::invalid(
                file,
                "",
                "expected a mapping of settings, found an empty file".to_owned(),
            ));
        }
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| ConfigError::from_serde(file, e))?;
        raw.settle(file, detected)
    }
}

/// Why a configuration was refused.
///
/// Its display is one line: the file, the key (a path like `exec.timeout`
/// or `seeds[1]`, when there is one), what is wrong and what is expected,
/// and the line and column when they are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file, as given.
    pub file: PathBuf,
    /// The key at fault, like `exec.timeout`; empty for the whole file.
    pub key: String,
    /// What is wrong.
    pub kind: ConfigErrorKind,
    /// The 1-based line and column, when the parser gave them.
    pub location: Option<(usize, usize)>,
}

/// What is wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The file could not be read; the text is the system's error.
    Read(String),
    /// The text is not valid YAML; the text is the parser's message.
    Syntax(String),
    /// A key that has no meaning here.
    UnknownKey {
        /// The key as written.
        key: String,
        /// The keys accepted here.
        expected: Vec<String>,
    },
    /// A required key is absent; `ConfigError::key` names it.
    MissingKey {
        /// What its value should be.
        expected: String,
    },
    /// A value is not what is expected; the text says what was expected and
    /// what was found.
    Invalid(String),
}

impl ConfigError {
    fn invalid(file: &Path, key: &str, message: String) -> ConfigError {
        ConfigError {
            file: file.to_owned(),
            key: key.to_owned(),
            kind: ConfigErrorKind::Invalid(message),
            location: None,
        }
    }

    fn missing(file: &Path, key: &str, expected: &str) -> ConfigError {
        ConfigError {
            file: file.to_owned(),
            key: key.to_owned(),
            kind: ConfigErrorKind::MissingKey {
                expected: expected.to_owned(),
            },
            location: None,
        }
    }

    fn from_serde(
        file: &Path,
        error: serde_path_to_error::Error<serde_yaml::Error>,
    ) -> ConfigError {
        let segments: Vec<_> = error.path().iter().cloned().collect();
        let mut key = key_path(&segments);
        let inner = error.into_inner();
        let location = inner.location().map(|l| (l.line(), l.column()));
        let text = inner.to_string();
        let kind = match bare_message(&text, &key, location) {
            None => ConfigErrorKind::Syntax(text),
            Some(message) => classify(message),
        };
        if let ConfigErrorKind::UnknownKey { .. } = kind {
            // The path ends with the unknown key itself; name its mapping.
            key = key_path(
                segments
                    .get(..segments.len().saturating_sub(1))
                    .unwrap_or(&[]),
            );
        }
        let location = match kind {
            // The parser's message already tells where.
            ConfigErrorKind::Syntax(_) => None,
            _ => location,
        };
        ConfigError {
            file: file.to_owned(),
            key,
            kind,
            location,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        match &self.kind {
            ConfigErrorKind::Read(error) => write!(f, "cannot read the file: {error}")?,
            ConfigErrorKind::Syntax(message) => {
                if !self.key.is_empty() {
                    write!(f, "{}: ", self.key)?;
                }
                write!(f, "{message}")?;
            }
            ConfigErrorKind::UnknownKey { key, expected } => {
                if !self.key.is_empty() {
                    write!(f, "{}: ", self.key)?;
                }
                write!(f, "unknown key {key:?}")?;
                match expected.as_slice() {
                    [] => write!(f, " (no keys are accepted here)")?,
                    [one] => write!(f, " (expected: {one})")?,
                    many => write!(f, " (expected one of: {})", many.join(", "))?,
                }
            }
            ConfigErrorKind::MissingKey { expected } => {
                write!(
                    f,
                    "missing required key {:?} (expected {expected})",
                    self.key
                )?;
            }
            ConfigErrorKind::Invalid(message) => {
                if !self.key.is_empty() {
                    write!(f, "{}: ", self.key)?;
                }
                write!(f, "{message}")?;
            }
        }
        if let Some((line, column)) = self.location {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A deserializer path as the configuration's keys are written:
/// `exec.timeout`, `seeds[1]`.
fn key_path(segments: &[serde_path_to_error::Segment]) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: name } | Segment::Enum { variant: name } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
            }
            Segment::Unknown => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push('?');
            }
        }
    }
    key
}

/// The message of a YAML deserialization error without the key path and
/// position the YAML library adds to it (`"exec.timeout: MESSAGE at line 3
/// column 12"`), or `None` for a syntax error of the YAML itself, whose text
/// is kept whole.
fn bare_message(text: &str, key: &str, location: Option<(usize, usize)>) -> Option<String> {
    let mut message = text;
    if let Some((line, column)) = location {
        message = message
            .strip_suffix(&format!(" at line {line} column {column}"))
            .unwrap_or(message);
    }
    // A syntax error carries positions in the middle of its text; a
    // deserialization error of a value or key never does.
    if message.contains(" at line ") {
        return None;
    }
    // The YAML library prefixes the path of the node it was reading: the
    // key, or one of its parents (`seeds` for `seeds[1]`). Strip the longest.
    let mut prefixes: Vec<&str> = key
        .match_indices(['.', '['])
        .map(|(at, _)| &key[..at])
        .collect();
    prefixes.push(key);
    for prefix in prefixes.iter().rev().filter(|p| !p.is_empty()) {
        if let Some(rest) = message.strip_prefix(&format!("{prefix}: ")) {
            return Some(rest.to_owned());
        }
    }
    Some(message.to_owned())
}

/// Sorts a deserialization message into the error kinds, rewording serde's
/// standard messages into the configuration's terms.
fn classify(message: String) -> ConfigErrorKind {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((key, expected)) = rest.split_once('`') {
            let expected = expected
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            return ConfigErrorKind::UnknownKey {
                key: key.to_owned(),
                expected,
            };
        }
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            let expected = match expected {
                "a map" => "a mapping",
                "a sequence" => "a list",
                other => other,
            };
            return ConfigErrorKind::Invalid(format!(
                "expected {expected}, found {}",
                plain_unexpected(found)
            ));
        }
    }
    ConfigErrorKind::Invalid(message)
}

/// Serde's description of an unexpected value, in plainer words.
fn plain_unexpected(found: &str) -> String {
    let quoted = |prefix: &str| {
        found
            .strip_prefix(prefix)
            .and_then(|v| v.strip_prefix('`'))
            .and_then(|v| v.strip_suffix('`'))
            .map(str::to_owned)
    };
    match found {
        "map" => "a mapping".to_owned(),
        "sequence" => "a list".to_owned(),
        "unit value" => "nothing".to_owned(),
        _ => found
            .strip_prefix("string ")
            .map(str::to_owned)
            .or_else(|| quoted("integer "))
            .or_else(|| quoted("floating point "))
            .or_else(|| quoted("boolean "))
            .unwrap_or_else(|| found.to_owned()),
    }
}

// ---------------------------------------------------------------------------
// Raw settings: the YAML's shape, each scalar checked for its form.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of settings")]
struct RawConfig {
    name: Option<NodeName>,
    node_id: Option<NodeIdValue>,
    listen: Option<Listen>,
    seeds: Option<Seeds>,
    multicast: Option<RawMulticast>,
    cluster_key: Option<PathText>,
    data_dir: Option<PathText>,
    attributes: Option<BTreeMap<String, AttributeValue>>,
    client: Option<RawClient>,
    exec: Option<RawExec>,
    log_level: Option<LogLevel>,
    gc: Option<BTreeMap<String, serde_yaml::Value>>,
    event_log: Option<PathText>,
    maps: Option<maps::RawMaps>,
    testing: Option<maps::RawTesting>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with group, port, disseminate, interface and ttl"
)]
struct RawMulticast {
    group: Option<MulticastGroup>,
    port: Option<Port>,
    disseminate: Option<Switch>,
    interface: Option<MulticastInterface>,
    ttl: Option<Ttl>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with socket and tcp")]
struct RawClient {
    socket: Option<PathText>,
    tcp: Option<TcpListen>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with shell, timeout, output_cap and kill_grace"
)]
struct RawExec {
    shell: Option<PathText>,
    timeout: Option<Dur>,
    output_cap: Option<Size>,
    kill_grace: Option<Dur>,
}

const EXPECT_NAME: &str = "a node name like \"web-1\" (letters, digits, '-', '_' and '.')";
const EXPECT_LISTEN: &str = "a UDP address like \"0.0.0.0:7946\"";
const EXPECT_KEY_FILE: &str = "the path of the cluster key file (see `mgmtd keygen`)";
const EXPECT_DATA_DIR: &str = "the directory where the server keeps its state";

impl RawConfig {
    fn settle(
        self,
        file: &Path,
        detected: BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let base = base_dir(file);
        let name = self
            .name
            .ok_or_else(|| ConfigError::missing(file, "name", EXPECT_NAME))?
            .0;
        let (node_id, node_id_derived) = match self.node_id {
            Some(NodeIdValue(id)) => (id, false),
            None => (derive_node_id(&name), true),
        };
        let listen = self
            .listen
            .ok_or_else(|| ConfigError::missing(file, "listen", EXPECT_LISTEN))?
            .0;
        // At most MAX_SEEDS, checked while reading.
        let seeds = self.seeds.map(|s| s.0).unwrap_or_default();
        let multicast = match self.multicast {
            None => None,
            Some(raw) => Some(Multicast {
                group: raw
                    .group
                    .ok_or_else(|| ConfigError::missing(file, "multicast.group", EXPECT_MULTICAST))?
                    .0,
                port: raw
                    .port
                    .ok_or_else(|| ConfigError::missing(file, "multicast.port", EXPECT_PORT))?
                    .0,
                disseminate: raw.disseminate.is_some_and(|d| d.0),
                interface: raw.interface.map(|i| i.0),
                ttl: raw.ttl.map_or(1, |t| t.0),
            }),
        };
        if let Some(interface) = multicast.and_then(|m| m.interface) {
            // Group datagrams leave from the unicast socket with its
            // address as their source; out of another interface, that
            // source is martian to the receivers' kernels and dropped.
            if !listen.ip().is_unspecified() && listen.ip() != IpAddr::V4(interface) {
                return Err(ConfigError::invalid(
                    file,
                    "multicast.interface",
                    format!(
                        "{interface} is not the listen address {}: group datagrams are sent from the listen socket, so listen on {interface} or on 0.0.0.0",
                        listen.ip()
                    ),
                ));
            }
        }
        let cluster_key = self
            .cluster_key
            .ok_or_else(|| ConfigError::missing(file, "cluster_key", EXPECT_KEY_FILE))?
            .resolve(&base);
        let data_dir = self
            .data_dir
            .ok_or_else(|| ConfigError::missing(file, "data_dir", EXPECT_DATA_DIR))?
            .resolve(&base);

        let mut attributes = detected;
        for (key, AttributeValue(value)) in self.attributes.unwrap_or_default() {
            if !is_attribute_key(&key) {
                return Err(ConfigError::invalid(
                    file,
                    "attributes",
                    format!("expected attribute names like \"role\" (letters, digits, '-', '_' and '.'), found {key:?}"),
                ));
            }
            attributes.insert(key, value);
        }
        if attributes.len() > MAX_ATTRIBUTES {
            return Err(ConfigError::invalid(
                file,
                "attributes",
                format!(
                    "expected at most {MAX_ATTRIBUTES} attributes (detected ones included), found {}",
                    attributes.len()
                ),
            ));
        }

        let (socket, tcp) = match self.client {
            Some(RawClient { socket, tcp }) => (socket, tcp.map(|t| t.0)),
            None => (None, None),
        };
        let socket = match socket {
            Some(path) => path.resolve(&base),
            None => data_dir.join(DEFAULT_SOCKET_NAME),
        };
        let socket_len = socket.as_os_str().len();
        if socket_len > MAX_SOCKET_PATH {
            return Err(ConfigError::invalid(
                file,
                "client.socket",
                format!(
                    "expected a path of at most {MAX_SOCKET_PATH} bytes (the limit of Unix sockets), found {} ({socket_len} bytes)",
                    socket.display()
                ),
            ));
        }

        let exec = settle_exec(file, self.exec)?;
        let maps = maps::settle_maps(file, &base, self.maps)?;
        let testing = maps::settle_testing(self.testing);
        Ok(Config {
            file: file.to_owned(),
            name,
            node_id,
            node_id_derived,
            listen,
            seeds,
            multicast,
            cluster_key,
            data_dir,
            attributes,
            client: ClientConfig { socket, tcp },
            exec,
            log_level: self.log_level.unwrap_or_default(),
            gc: self.gc.unwrap_or_default(),
            event_log: self.event_log.map(|path| path.resolve(&base)),
            maps,
            testing,
        })
    }
}

fn settle_exec(file: &Path, raw: Option<RawExec>) -> Result<ExecOptions, ConfigError> {
    let mut exec = ExecOptions::default();
    let Some(raw) = raw else {
        return Ok(exec);
    };
    if let Some(shell) = raw.shell {
        if !Path::new(&shell.0).is_absolute() {
            return Err(ConfigError::invalid(
                file,
                "exec.shell",
                format!(
                    "expected an absolute path like \"/bin/sh\", found {:?}",
                    shell.0
                ),
            ));
        }
        exec.shell = PathBuf::from(shell.0);
    }
    if let Some(timeout) = raw.timeout {
        if timeout.value.is_zero() || timeout.value > MAX_TIMEOUT {
            return Err(ConfigError::invalid(
                file,
                "exec.timeout",
                format!(
                    "expected a duration from 1ms to 24h, found {:?}",
                    timeout.text
                ),
            ));
        }
        exec.timeout = timeout.value;
    }
    if let Some(cap) = raw.output_cap {
        let Some(value) = usize::try_from(cap.value)
            .ok()
            .filter(|_| cap.value <= MAX_OUTPUT_CAP)
        else {
            return Err(ConfigError::invalid(
                file,
                "exec.output_cap",
                format!("expected a size of at most 16MiB, found {}", cap.text),
            ));
        };
        exec.output_cap = value;
    }
    if let Some(grace) = raw.kill_grace {
        if grace.value > MAX_KILL_GRACE {
            return Err(ConfigError::invalid(
                file,
                "exec.kill_grace",
                format!("expected a duration of at most 60s, found {:?}", grace.text),
            ));
        }
        exec.kill_grace = grace.value;
    }
    Ok(exec)
}

/// The directory relative paths in `file` are taken from: the file's own
/// directory, made absolute when the current directory is known.
fn base_dir(file: &Path) -> PathBuf {
    let parent = file.parent().unwrap_or(Path::new(""));
    if parent.is_absolute() {
        return parent.to_owned();
    }
    match std::env::current_dir() {
        Ok(cwd) => cwd.join(parent),
        Err(_) => parent.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Scalars, each with its own "expected ..., found ..." message.

/// Any YAML value, reduced to what an error message needs.
enum Scalar {
    Str(String),
    Int(i128),
    Float(f64),
    Bool(bool),
    Null,
    List,
    Mapping,
}

impl Scalar {
    /// How the value is shown after "found".
    fn found(&self) -> String {
        match self {
            Scalar::Str(s) => format!("{s:?}"),
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(x) => x.to_string(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Null => "nothing".to_owned(),
            Scalar::List => "a list".to_owned(),
            Scalar::Mapping => "a mapping".to_owned(),
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A visitor that reduces any value to a [`Scalar`] and parses it with
/// `parse`, failing with "expected EXPECTED, found VALUE". The failure is
/// raised inside the visitor, so that the YAML library marks it with the
/// value's own line and column.
struct ScalarVisitor<'a, F> {
    expected: &'a str,
    parse: F,
}

impl<T, F: FnOnce(&Scalar) -> Option<T>> ScalarVisitor<'_, F> {
    fn finish<E: de::Error>(self, value: Scalar) -> Result<T, E> {
        let expected = self.expected;
        (self.parse)(&value)
            .ok_or_else(|| E::custom(format_args!("expected {expected}, found {}", value.found())))
    }
}

impl<'de, T, F: FnOnce(&Scalar) -> Option<T>> Visitor<'de> for ScalarVisitor<'_, F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expected)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        self.finish(Scalar::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.finish(Scalar::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.finish(Scalar::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<T, E> {
        self.finish(Scalar::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<T, E> {
        self.finish(i128::try_from(v).map_or_else(|_| Scalar::Str(v.to_string()), Scalar::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.finish(Scalar::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        self.finish(Scalar::Str(v.to_owned()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        self.finish(Scalar::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        self.finish(Scalar::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.finish(Scalar::List)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.finish(Scalar::Mapping)
    }
}

/// Reads a value and parses it with `parse`; on failure the error says
/// "expected EXPECTED, found VALUE".
fn scalar<'de, D, T>(
    deserializer: D,
    expected: &str,
    parse: impl FnOnce(&Scalar) -> Option<T>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    deserializer.deserialize_any(ScalarVisitor { expected, parse })
}

/// Declares a newtype whose `Deserialize` goes through [`scalar`].
macro_rules! scalar_type {
    ($(#[$doc:meta])* $name:ident($inner:ty), $expected:expr, $parse:expr) => {
        $(#[$doc])*
        struct $name($inner);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                scalar(deserializer, $expected, $parse).map($name)
            }
        }
    };
}

scalar_type!(
    /// `name`.
    NodeName(String),
    EXPECT_NAME,
    |v| v.as_str().filter(|s| is_node_name(s)).map(str::to_owned)
);

scalar_type!(
    /// `node_id`.
    NodeIdValue(u32),
    "a node id from 0 to 4294967295",
    |v| match v {
        Scalar::Int(n) => u32::try_from(*n).ok(),
        _ => None,
    }
);

scalar_type!(
    /// `listen`.
    Listen(SocketAddr),
    EXPECT_LISTEN,
    |v| v.as_str().and_then(|s| s.trim().parse().ok())
);

scalar_type!(
    /// `client.tcp`.
    TcpListen(SocketAddr),
    "a TCP address like \"0.0.0.0:7950\"",
    |v| v.as_str().and_then(|s| s.trim().parse().ok())
);

scalar_type!(
    /// One of `seeds`.
    Peer(PeerAddr),
    "a peer address like \"10.0.0.2:7946\" or \"node-2.example.net:7946\"",
    |v| v.as_str().and_then(parse_peer)
);

const EXPECT_MULTICAST: &str = "a multicast address like \"239.255.70.76\"";
scalar_type!(
    /// `multicast.group`.
    MulticastGroup(IpAddr),
    EXPECT_MULTICAST,
    |v| v
        .as_str()
        .and_then(|s| s.trim().parse::<IpAddr>().ok())
        .filter(IpAddr::is_multicast)
);

const EXPECT_PORT: &str = "a port from 1 to 65535";
scalar_type!(
    /// `multicast.port`.
    Port(u16),
    EXPECT_PORT,
    |v| match v {
        Scalar::Int(n) => u16::try_from(*n).ok().filter(|&p| p != 0),
        _ => None,
    }
);

const EXPECT_INTERFACE: &str =
    "the IPv4 address of one of this host's interfaces, like \"10.0.0.1\"";
scalar_type!(
    /// `multicast.interface`.
    MulticastInterface(Ipv4Addr),
    EXPECT_INTERFACE,
    |v| v
        .as_str()
        .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast())
);

scalar_type!(
    /// `multicast.ttl`.
    Ttl(u8),
    "a hop count from 1 to 255",
    |v| match v {
        Scalar::Int(n) => u8::try_from(*n).ok().filter(|&t| t != 0),
        _ => None,
    }
);

scalar_type!(
    /// A yes-or-no setting (`multicast.disseminate`).
    Switch(bool),
    "true or false",
    |v| match v {
        Scalar::Bool(b) => Some(*b),
        _ => None,
    }
);

scalar_type!(
    /// A path setting.
    PathText(String),
    "a path",
    |v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
);

impl PathText {
    fn resolve(self, base: &Path) -> PathBuf {
        base.join(self.0)
    }
}

scalar_type!(
    /// A value of `attributes`: text, or a number or boolean taken as text.
    AttributeValue(String),
    "a text, number or boolean of at most 1024 bytes",
    |v| match v {
        Scalar::Str(s) => Some(s.clone()),
        Scalar::Int(n) => Some(n.to_string()),
        Scalar::Float(x) => Some(x.to_string()),
        Scalar::Bool(b) => Some(b.to_string()),
        _ => None,
    }
    .filter(|s| s.len() <= MAX_ATTRIBUTE_VALUE)
);

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(
            deserializer,
            "one of error, warn, info, debug, trace",
            |v| v.as_str().and_then(|s| s.parse().ok()),
        )
    }
}

/// A duration and the text it was written as.
struct Dur {
    value: Duration,
    text: String,
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, "a duration like \"30s\"", |v| {
            let text = v.as_str()?;
            let value = humantime::parse_duration(text.trim()).ok()?;
            Some(Dur {
                value,
                text: text.to_owned(),
            })
        })
    }
}

/// A size in bytes and the text it was written as.
struct Size {
    value: u64,
    text: String,
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, "a size like \"64KiB\"", |v| match v {
            Scalar::Int(n) => Some(Size {
                value: u64::try_from(*n).ok()?,
                text: n.to_string(),
            }),
            Scalar::Str(s) => Some(Size {
                value: parse_size(s)?,
                text: format!("{s:?}"),
            }),
            _ => None,
        })
    }
}

/// `seeds`: a list of peers, or a single one.
struct Seeds(Vec<PeerAddr>);

impl<'de> Deserialize<'de> for Seeds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SeedsVisitor;
        impl<'de> Visitor<'de> for SeedsVisitor {
            type Value = Seeds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of peer addresses like [\"10.0.0.2:7946\"]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Seeds, E> {
                Peer::deserialize(de::value::StrDeserializer::<E>::new(v)).map(|p| Seeds(vec![p.0]))
            }
            fn visit_unit<E>(self) -> Result<Seeds, E> {
                Ok(Seeds(Vec::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seeds, A::Error> {
                let mut peers = Vec::new();
                while let Some(Peer(peer)) = seq.next_element()? {
                    if peers.len() == MAX_SEEDS {
                        return Err(de::Error::custom(format_args!(
                            "expected at most {MAX_SEEDS} peers"
                        )));
                    }
                    peers.push(peer);
                }
                Ok(Seeds(peers))
            }
        }
        deserializer.deserialize_any(SeedsVisitor)
    }
}

/// Parses a size: a number of bytes with an optional unit `B`, `KiB`, `MiB`
/// or `GiB` (case ignored, spaces allowed between).
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let number: u64 = digits.parse().ok()?;
    let unit = unit.trim();
    let multiplier = [
        ("", 1),
        ("B", 1),
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
    ]
    .into_iter()
    .find(|(name, _)| name.eq_ignore_ascii_case(unit))?
    .1;
    number.checked_mul(multiplier)
}

/// Parses `HOST:PORT`, where HOST is an IP address (IPv6 in brackets) or a
/// DNS name, and PORT is not 0.
fn parse_peer(text: &str) -> Option<PeerAddr> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return (addr.port() != 0).then(|| PeerAddr {
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    is_dns_name(host).then(|| PeerAddr {
        host: host.to_owned(),
        port,
    })
}

/// A DNS name: dot-separated labels of letters, digits and inner hyphens.
fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn is_node_name(name: &str) -> bool {
    name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_attribute_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_ATTRIBUTE_KEY
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

mod maps;

#[cfg(test)]
mod tests;
