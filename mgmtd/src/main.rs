//! `mgmtd`, the Flotilla management server.
//!
//! ```text
//! mgmtd --config FILE [--log-level LEVEL] [--event-log FILE]   run the server
//! mgmtd keygen FILE                         write a new cluster key, mode 0600
//! ```
//!
//! Exit status: 0 on success (and after SIGTERM or SIGINT), 1 on an error,
//! 2 on bad usage. Errors go to stderr as `mgmtd: error: ` and their whole
//! chain of causes.
//!
//! The log level is, from the first given: `--log-level`, the `RUST_LOG`
//! environment variable (a full `tracing` filter), `log_level` in the
//! configuration.

use std::io::IsTerminal;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use mgmtd::config::{Config, LogLevel};
use mgmtd::gc;
use mgmtd::jobs::JobStoreLimits;
use mgmtd::key::{self, ClusterKey};
use mgmtd::listener;
use mgmtd::server::{Limits, Server, ServerConfig};
use tracing_subscriber::EnvFilter;

/// Flotilla's management server: runs the fleet's commands on this host.
#[derive(Debug, Parser)]
#[command(
    name = "mgmtd",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Every configuration key, with its default, is in the commented example that `mgmtd example-config` prints."
)]
struct Cli {
    /// The configuration file (YAML).
    #[arg(long, value_name = "FILE", required = true)]
    config: Option<PathBuf>,

    /// The log level: error, warn, info, debug or trace. Overrides RUST_LOG
    /// and the configuration.
    #[arg(long, value_name = "LEVEL", value_parser = parse_level)]
    log_level: Option<LogLevel>,

    /// Append the views installed and the messages delivered to FILE, for
    /// the protocol checker. Overrides `event_log` in the configuration.
    #[arg(long, value_name = "FILE")]
    event_log: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a new random cluster key to FILE, readable by its owner only.
    ///
    /// Refuses to overwrite an existing file. Copy the key to every host of
    /// the fleet (keeping mode 0600) and name it in each configuration as
    /// `cluster_key`.
    Keygen {
        /// Where to write the key.
        file: PathBuf,
    },
    /// Print a complete configuration file, every key commented with its
    /// meaning and default.
    ///
    /// Start from it: `mgmtd example-config > /etc/flotilla/mgmtd.yaml`,
    /// then set `name`, `listen`, `seeds` and the paths.
    ExampleConfig,
}

fn parse_level(text: &str) -> Result<LogLevel, String> {
    text.parse().map_err(|e| format!("{e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match (cli.command, cli.config) {
        (Some(Command::Keygen { file }), _) => keygen(&file),
        (Some(Command::ExampleConfig), _) => {
            use std::io::Write;
            // A closed pipe (`| head`) is the reader's choice, not an error.
            let _ = std::io::stdout().write_all(Config::example().as_bytes());
            Ok(())
        }
        (None, Some(config)) => serve(&config, cli.log_level, cli.event_log),
        (None, None) => Err(anyhow::anyhow!("--config FILE is required")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mgmtd: error: {}", flotilla_client::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// `mgmtd keygen FILE`.
fn keygen(file: &Path) -> anyhow::Result<()> {
    key::keygen(file)?;
    println!(
        "wrote a new cluster key to {}; copy it to every host of the fleet, readable by its owner only",
        file.display()
    );
    Ok(())
}

/// `mgmtd --config FILE`: joins the fleet and serves until SIGTERM, SIGINT
/// or an `exit` command, then leaves the group cleanly.
fn serve(
    config_file: &Path,
    log_level: Option<LogLevel>,
    event_log: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut config = Config::load(config_file)?;
    if event_log.is_some() {
        config.event_log = event_log;
    }
    init_logging(log_level.unwrap_or(config.log_level), log_level.is_some())?;
    let key = ClusterKey::load(&config.cluster_key)?;

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    // Held until the process ends: the kernel releases it even on kill -9.
    let _data_dir_lock = lock_data_dir(&config.data_dir)?;
    listener::check_unix_free(&config.client.socket).with_context(|| {
        format!(
            "cannot listen on the client socket {}",
            config.client.socket.display()
        )
    })?;
    if !config.exec.shell.exists() {
        tracing::warn!(shell = %config.exec.shell.display(), "the configured shell does not exist; every command will fail to start");
    }
    tracing::info!(
        name = %config.name,
        node_id = config.node_id,
        node_id_derived = config.node_id_derived,
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        socket = %config.client.socket.display(),
        "mgmtd starting"
    );

    keep_bulk_buffers_in_the_heap();
    // One thread: the daemon mostly waits, and stays small (the commands
    // it runs are processes of their own).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(config, key))?;
    tracing::info!("mgmtd stopped");
    Ok(())
}

/// A siminst receiver allocates a 256 KiB buffer per chunk on the runtime
/// thread and frees it on the writer thread, a few dozen at a time. glibc's
/// heap starts by giving freed memory above 256 KiB at its top back to the
/// system (and mapping blocks above 128 KiB of their own), so the same
/// pages were returned and faulted in again over and over: brk, munmap and
/// page faults, about a tenth of a receiver's CPU and of the origin's.
/// glibc raises both thresholds when a mapped block is freed (mallopt(3),
/// M_MMAP_THRESHOLD), to its size and twice that: freeing one 16 MiB block,
/// never touched, keeps up to 32 MiB of freed heap for reuse, against the
/// few MiB a transfer has in flight. (Without unsafe code there is no
/// mallopt; other allocators ignore this.)
fn keep_bulk_buffers_in_the_heap() {
    let block: Vec<u8> = Vec::with_capacity(16 << 20);
    drop(std::hint::black_box(block));
}

async fn run(config: Config, key: ClusterKey) -> anyhow::Result<()> {
    let mut signals = ShutdownSignals::new()?;
    let (group, events) = gc::start(&config, &key).await?;
    let server_config = ServerConfig {
        name: config.name.clone(),
        attributes: config.attributes.clone(),
        data_dir: config.data_dir.clone(),
        exec: config.exec.clone(),
        limits: Limits::default(),
        store: JobStoreLimits::default(),
    };
    let maps = if config.maps.enabled() {
        Some(mgmtd::maps::start(&group, &config.data_dir, &config.maps)?)
    } else {
        None
    };
    let (maps_handle, mut maps_failed) = match maps {
        Some(m) => (m.handle, Some(m.failed)),
        None => (mgmtd::maps::MapsHandle::disabled(), None),
    };
    let (server, core) = Server::start(group, events, server_config)?;
    let (unix, socket_file) = listener::bind_unix(&config.client.socket).with_context(|| {
        format!(
            "cannot listen on the client socket {}",
            config.client.socket.display()
        )
    })?;
    let owner = nix::unistd::geteuid().as_raw();
    let unix_task = tokio::spawn(listener::serve_unix(
        unix,
        owner,
        server.clone(),
        maps_handle.clone(),
    ));
    let tcp_task = match config.client.tcp {
        Some(addr) => {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for monitors on TCP {addr}"))?;
            tracing::info!(%addr, "listening for monitors on TCP (cluster key required)");
            Some(tokio::spawn(listener::serve_tcp(
                tcp,
                key.clone(),
                server.clone(),
                maps_handle.clone(),
            )))
        }
        None => None,
    };
    tracing::info!(socket = %config.client.socket.display(), "mgmtd ready");
    let maps_failure = async {
        match maps_failed.as_mut() {
            Some(failed) => failed.await.ok(),
            None => std::future::pending().await,
        }
    };
    let mut failure = None;
    tokio::select! {
        () = signals.wait() => server.shutdown().await,
        () = server.stopped() => tracing::info!("exit requested by a monitor"),
        Some(reason) = maps_failure => {
            failure = Some(reason);
            server.shutdown().await;
        }
    }
    // No new monitors while leaving.
    unix_task.abort();
    if let Some(task) = tcp_task {
        task.abort();
    }
    if tokio::time::timeout(std::time::Duration::from_secs(10), core)
        .await
        .is_err()
    {
        tracing::warn!("the server did not stop within 10s");
    }
    // The monitors' handlers end once the core has: give them a moment to
    // send their last answers (an `exit` reports before the leave).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    socket_file.remove();
    if let Some(reason) = failure {
        bail!("the replicated maps failed: {reason}");
    }
    Ok(())
}

/// SIGTERM and SIGINT, watched from creation on.
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn new() -> anyhow::Result<ShutdownSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
        })
    }

    /// Returns on the first of the signals.
    async fn wait(&mut self) {
        let name = tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        };
        tracing::info!("{name}: shutting down");
    }
}

/// Logs to stderr at `level`, or by `RUST_LOG` when it is set and the level
/// was not given on the command line.
fn init_logging(level: LogLevel, from_command_line: bool) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !from_command_line => EnvFilter::try_new(&directives)
            .with_context(|| format!("RUST_LOG={directives:?} is not a valid log filter"))?,
        _ => EnvFilter::new(level.as_str()),
    };
    if let Err(e) = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal, not for journald or a file.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
    {
        bail!("cannot set up logging: {e}");
    }
    Ok(())
}

/// Locks `DATA_DIR/mgmtd.lock` for this process, with its pid in the file.
/// Two daemons on one data directory would interleave the job store, the
/// maps' write-ahead log and the group state, and the second would remove
/// the first's socket.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("mgmtd.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // Bounded: a pid is a few digits; the file is ours to read.
            let _ = (&mut file).take(32).read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.chars().all(|c| c.is_ascii_digit()) && !holder.is_empty() {
                format!("another mgmtd (pid {holder})")
            } else {
                "another mgmtd".to_owned()
            };
            bail!(
                "data_dir {} is in use by {who}: each daemon needs a data_dir of its own",
                data_dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(file)
}
