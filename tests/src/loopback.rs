//! A fleet of real `mgmtd` processes on loopback, for the end-to-end tests
//! and the benchmarks.
//!
//! [`binaries`] builds `mgmtd` and `monitor` with cargo (the same profile as
//! the running test) and finds them. [`Fleet::start`] writes a key and a
//! configuration per host in a temporary directory and starts the daemons;
//! dropping the fleet kills every daemon it started, so a failing test
//! leaves nothing running. Every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use flotilla_client::{loopback, ClusterKey};

/// Any error, for tests.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The two binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `mgmtd`.
    pub mgmtd: PathBuf,
    /// `monitor`.
    pub monitor: PathBuf,
}

/// Builds (once per process) and finds `mgmtd` and `monitor`.
pub fn binaries() -> Result<Binaries, Error> {
    static BUILT: OnceLock<Result<Binaries, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build(false).map_err(|e| e.to_string()))
        .clone()
        .map_err(Into::into)
}

/// Builds (once per process) and finds release `mgmtd` and `monitor`,
/// whatever the test's own profile: for tests that move megabytes between
/// daemons, which debug builds of the group core cannot do on a small
/// machine without their heartbeats starving.
pub fn release_binaries() -> Result<Binaries, Error> {
    static BUILT: OnceLock<Result<Binaries, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build(true).map_err(|e| e.to_string()))
        .clone()
        .map_err(Into::into)
}

fn build(force_release: bool) -> Result<Binaries, Error> {
    // tests: target/PROFILE/deps/NAME-HASH; binaries: target/PROFILE/NAME.
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().ok_or("no directory")?.to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let mut release = dir.file_name().is_some_and(|n| n == "release");
    if force_release && !release {
        dir.pop();
        dir.push("release");
        release = true;
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "mgmtd", "-p", "monitor"]);
        if release {
            build.arg("--release");
        }
        let status = build.status()?;
        if !status.success() {
            return Err("cargo build -p mgmtd -p monitor failed".into());
        }
    }
    let binaries = Binaries {
        mgmtd: dir.join("mgmtd"),
        monitor: dir.join("monitor"),
    };
    for path in [&binaries.mgmtd, &binaries.monitor] {
        if !path.exists() {
            return Err(format!(
                "{} is missing: run `cargo build -p mgmtd -p monitor`",
                path.display()
            )
            .into());
        }
    }
    Ok(binaries)
}

/// A UDP port on loopback that is free now (bound and released; the
/// daemon binds it a moment later), from below the ephemeral range (see
/// [`flotilla_client::loopback`] for why).
pub fn free_udp_port() -> Result<u16, Error> {
    Ok(loopback::free_port(loopback::Protocol::Udp)?)
}

/// A `multicast:` section for [`FleetOptions::extra`], on a group and port
/// of its own so that the fleets of tests running at the same time do not
/// hear each other, with dissemination through the group on or off.
pub fn multicast_section(disseminate: bool) -> Result<String, Error> {
    let port = free_udp_port()?;
    let [hi, lo] = port.to_be_bytes();
    Ok(format!(
        "multicast:\n  group: 239.255.{hi}.{lo}\n  port: {port}\n  disseminate: {disseminate}\n"
    ))
}

/// A free TCP port on loopback (see [`free_udp_port`]).
pub fn free_tcp_port() -> Result<u16, Error> {
    Ok(loopback::free_port(loopback::Protocol::Tcp)?)
}

/// One daemon.
#[derive(Debug)]
pub struct Daemon {
    /// Its host name.
    pub name: String,
    /// Its directory (configuration, data, socket, log).
    pub home: PathBuf,
    /// Its UDP port.
    pub port: u16,
    /// Its client TCP port, if it listens on TCP.
    pub tcp: Option<u16>,
    /// Its process, while it runs.
    pub child: Option<Child>,
}

impl Daemon {
    /// Its client socket.
    pub fn socket(&self) -> PathBuf {
        self.home.join("mgmtd.sock")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("mgmtd.log")).unwrap_or_default()
    }

    /// Waits (up to `timeout`) for its log to contain `needle`: a daemon
    /// answers a client before its log line about it reaches the file, so
    /// a test that reads the log right after the answer races the writer.
    pub fn await_log(&self, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: no {needle:?} in its log after {timeout:?}:\n{log}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Options of a fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// How many daemons.
    pub hosts: usize,
    /// The `exec` section of every configuration.
    pub exec: String,
    /// Whether each daemon also listens for monitors on TCP.
    pub tcp: bool,
    /// The log level.
    pub log_level: String,
    /// A `gc:` section for every configuration (empty: the defaults).
    pub gc: String,
    /// More YAML appended to every configuration (`maps:`, `testing:`).
    pub extra: String,
    /// Extra host attributes of daemon `i` (`key: value` lines), by index.
    pub attributes: Vec<Vec<(String, String)>>,
    /// Run release builds of the daemons and the monitor even from a debug
    /// test ([`release_binaries`]).
    pub release: bool,
    /// Other binaries than the ones built with this test (a benchmark
    /// comparing an older build); `release` is then ignored.
    pub binaries: Option<Binaries>,
}

impl FleetOptions {
    /// `hosts` daemons with the defaults.
    pub fn new(hosts: usize) -> FleetOptions {
        FleetOptions {
            hosts,
            exec: "exec:\n  timeout: 30s\n  kill_grace: 200ms\n".into(),
            tcp: false,
            log_level: "info".into(),
            gc: String::new(),
            extra: String::new(),
            attributes: Vec::new(),
            release: false,
            binaries: None,
        }
    }
}

/// A fleet of daemons; dropping it kills them.
#[derive(Debug)]
pub struct Fleet {
    /// The binaries.
    pub bin: Binaries,
    /// The temporary directory.
    pub dir: tempfile::TempDir,
    /// The cluster key file.
    pub key: PathBuf,
    /// The daemons, `h1` first.
    pub daemons: Vec<Daemon>,
    options: FleetOptions,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for daemon in &mut self.daemons {
            if let Some(mut child) = daemon.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Fleet {
    /// Starts the fleet and waits until the first daemon sees all of them
    /// in M.
    pub fn start(options: FleetOptions) -> Result<Fleet, Error> {
        let bin = if let Some(bin) = &options.binaries {
            bin.clone()
        } else if options.release {
            release_binaries()?
        } else {
            binaries()?
        };
        let dir = tempfile::Builder::new().prefix("flotilla-e2e-").tempdir()?;
        let key = dir.path().join("cluster.key");
        ClusterKey::generate()?.write_new(&key)?;
        let mut daemons = Vec::new();
        for i in 1..=options.hosts {
            let name = format!("h{i}");
            let home = dir.path().join(&name);
            std::fs::create_dir_all(&home)?;
            let tcp = if options.tcp {
                Some(free_tcp_port()?)
            } else {
                None
            };
            daemons.push(Daemon {
                name,
                home,
                port: free_udp_port()?,
                tcp,
                child: None,
            });
        }
        let mut fleet = Fleet {
            bin,
            dir,
            key,
            daemons,
            options,
        };
        for i in 0..fleet.daemons.len() {
            fleet.spawn(i, None)?;
        }
        fleet.wait_members(0, fleet.daemons.len(), Duration::from_secs(30))?;
        Ok(fleet)
    }

    /// Writes the configuration of daemon `i` (with another key file if
    /// given) and starts it.
    pub fn spawn(&mut self, i: usize, key: Option<&Path>) -> Result<(), Error> {
        let seeds: Vec<String> = self
            .daemons
            .iter()
            .filter(|d| d.port != self.daemons[i].port)
            .map(|d| format!("  - 127.0.0.1:{}", d.port))
            .collect();
        let d = &self.daemons[i];
        let role = if i == 0 { "db" } else { "web" };
        let tcp = d
            .tcp
            .map(|p| format!("  tcp: 127.0.0.1:{p}\n"))
            .unwrap_or_default();
        let attribute_lines: String = self
            .options
            .attributes
            .get(i)
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("  {k}: {v}\n"))
            .collect();
        let config = format!(
            "name: {}\nlisten: 127.0.0.1:{}\nseeds:\n{}\ncluster_key: {}\ndata_dir: {}\nattributes:\n  role: {role}\n{attribute_lines}client:\n  socket: {}\n{tcp}{}log_level: {}\n{}{}",
            d.name,
            d.port,
            if seeds.is_empty() { "  []".to_owned() } else { seeds.join("\n") },
            key.unwrap_or(&self.key).display(),
            d.home.join("data").display(),
            d.socket().display(),
            self.options.exec,
            self.options.log_level,
            self.options.gc,
            self.options.extra,
        );
        let config_path = d.home.join("mgmtd.yaml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.home.join("mgmtd.log"))?;
        let child = Command::new(&self.bin.mgmtd)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.daemons[i].child = Some(child);
        Ok(())
    }

    /// Runs `monitor ARGS` against daemon `i`'s socket, with a time limit.
    pub fn monitor(&self, i: usize, args: &[&str]) -> Result<Output, Error> {
        let mut command = Command::new(&self.bin.monitor);
        command
            .env("FLOTILLA_SOCKET", self.daemons[i].socket())
            .env_remove("FLOTILLA_CONNECT")
            .args(args);
        run_bounded(command, Duration::from_secs(60))
    }

    /// Builds the package in directory `src` into `file` with `monitor
    /// package build`; the digest it printed.
    pub fn build_package(&self, src: &Path, file: &Path) -> Result<String, Error> {
        let (src, file) = (src.display().to_string(), file.display().to_string());
        let out = self.monitor(0, &["package", "build", &src, "-o", &file])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "monitor package build {src} failed: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        match stdout.split_whitespace().next() {
            Some(digest) if digest.len() == 64 => Ok(digest.to_owned()),
            _ => Err(format!("monitor package build printed no digest: {stdout}").into()),
        }
    }

    /// Every daemon's log, for a failed test's message.
    pub fn logs(&self) -> String {
        self.daemons
            .iter()
            .map(|d| format!("--- {}:\n{}", d.name, d.log()))
            .collect()
    }

    /// `monitor --json ARGS` against daemon `i`: its exit code and document.
    pub fn monitor_json(&self, i: usize, args: &[&str]) -> Result<(i32, serde_json::Value), Error> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let output = self.monitor(i, &all)?;
        let code = output.status.code().unwrap_or(-1);
        let json = serde_json::from_slice(&output.stdout).map_err(|e| {
            format!(
                "monitor {args:?} printed no JSON ({e}); exit {code}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
        Ok((code, json))
    }

    /// The host names daemon `i` has in M (empty while it is not ready).
    pub fn members(&self, i: usize) -> Vec<String> {
        let Ok((0, json)) = self.monitor_json(i, &["members"]) else {
            return Vec::new();
        };
        json["members"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| m["host"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many views of the mgmt group daemon `i` has installed so far
    /// (its log's lines), to tell a settled fleet from a churning one.
    pub fn views_installed(&self, i: usize) -> usize {
        self.daemons[i]
            .log()
            .matches("new view of the mgmt group")
            .count()
    }

    /// Waits until daemon `i` has `n` members in M.
    pub fn wait_members(&self, i: usize, n: usize, limit: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + limit;
        loop {
            if self.members(i).len() == n {
                return Ok(());
            }
            if Instant::now() > deadline {
                let members = self.members(i);
                let mut message = format!(
                    "daemon {} never had {n} members; it has {members:?}; its log:\n{}",
                    self.daemons[i].name,
                    self.daemons[i].log()
                );
                // Why the others are missing is in their own logs (a daemon
                // that could not start, one that sees a view of its own).
                for d in self
                    .daemons
                    .iter()
                    .filter(|d| !members.contains(&d.name))
                    .take(3)
                {
                    let log = d.log();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    message.push_str(&format!(
                        "\nlog of {}, not among them (last {} lines):\n{}",
                        d.name,
                        tail.len(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ));
                }
                return Err(message.into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills daemon `i` with SIGKILL (a crash).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.daemons[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes daemon `i` with SIGSTOP: to the others it falls silent, as
    /// if cut off by a partition, until [`Fleet::resume`].
    pub fn pause(&self, i: usize) -> Result<(), Error> {
        self.signal(i, nix::sys::signal::Signal::SIGSTOP)
    }

    /// Lets a paused daemon run again (SIGCONT): the partition heals.
    pub fn resume(&self, i: usize) -> Result<(), Error> {
        self.signal(i, nix::sys::signal::Signal::SIGCONT)
    }

    fn signal(&self, i: usize, signal: nix::sys::signal::Signal) -> Result<(), Error> {
        let child = self.daemons[i].child.as_ref().ok_or("not running")?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, signal)?;
        Ok(())
    }

    /// Stops daemon `i` with SIGTERM and waits for it (bounded); returns its
    /// exit status.
    pub fn terminate(&mut self, i: usize) -> Result<std::process::ExitStatus, Error> {
        let Some(mut child) = self.daemons[i].child.take() else {
            return Err("not running".into());
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        wait_bounded(&mut child, Duration::from_secs(15))
    }
}

/// Waits for a child at most `limit`, killing it after.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus, Error> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("process {} did not end within {limit:?}", child.id()).into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a command to its end, killing it after `limit`.
pub fn run_bounded(mut command: Command, limit: Duration) -> Result<Output, Error> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => Ok(output?),
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Err(format!("{command:?} did not end within {limit:?}").into())
        }
    }
}

/// The hosts of a `monitor --json` report with this outcome, sorted.
pub fn hosts_with(report: &serde_json::Value, outcome: &str) -> Vec<String> {
    let mut hosts: Vec<String> = report["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["outcome"] == outcome)
        .filter_map(|h| h["host"].as_str().map(str::to_owned))
        .collect();
    hosts.sort();
    hosts
}

/// The `p`th percentile (0 to 100, nearest rank) of sorted samples; zero
/// for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
