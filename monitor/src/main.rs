//! `monitor`, Flotilla's operator CLI.
//!
//! ```text
//! monitor simex [--targets h1,h2 | --where key=value ...] [--timeout 30s] [--stream] -- CMD [ARGS...]
//! monitor status | members | chdir DIR | exit (--targets h3 | --all --yes) | job ID | jobs
//! monitor demo [--hosts 5] [--keep]
//! monitor map create|drop|set|del|get|list|history|load ...   (see `map.rs`)
//! monitor package build DIR -o FILE | package inspect FILE
//! monitor siminst FILE [--targets ... | --where ...] [--force] [--sha256 HEX] [--timeout 10m]
//! monitor siminst --remove NAME [--targets ... | --where ...]
//! ```
//!
//! It connects to one server: the Unix socket (`--socket`,
//! `FLOTILLA_SOCKET`), or TCP (`--connect HOST:PORT`, `FLOTILLA_CONNECT`,
//! with the cluster key `--key FILE`, `FLOTILLA_KEY`).
//!
//! # Exit status
//!
//! - 0: every target succeeded;
//! - 1: a target did not (failed, timed out, disconnected, or a host named
//!   was unknown);
//! - 2: bad usage, or the server could not be reached or refused;
//! - 130, 143, 129: interrupted by SIGINT, SIGTERM or SIGHUP (128 + the
//!   signal, as a shell reports a command killed by it): a job being
//!   followed keeps running on the hosts, and the monitor says how to
//!   follow it; `monitor demo` stops and removes its fleet first;
//! - 141: stdout was closed (`monitor ... | head`): the monitor stops
//!   quietly, as a tool killed by SIGPIPE would (128 + 13).
//!
//! # Host text
//!
//! Text that came from a server (output, host names, errors) is printed
//! through `report::safe`, so it cannot drive the operator's terminal.

mod demo;
mod map;
mod package;
mod report;
mod siminst;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use comfy_table::{presets, Table};
use flotilla_client::message::{
    MembersReply, Request, ServerMessage, Simex, StatusReply, MAX_JOBS,
};
use flotilla_client::{follow, ClusterKey, Connection, Endpoint, FollowEvent, JobId, Targets};
use indicatif::{ProgressBar, ProgressStyle};

/// The default socket, when neither --socket nor --connect is given.
const DEFAULT_SOCKET: &str = "/var/lib/flotilla/mgmtd.sock";

/// Flotilla's operator CLI: run commands across the fleet and follow every
/// host's answer.
#[derive(Debug, Parser)]
#[command(name = "monitor", version)]
struct Cli {
    #[command(flatten)]
    conn: ConnectArgs,

    /// Print one JSON document instead of tables.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Args)]
struct ConnectArgs {
    /// The server's Unix socket.
    #[arg(long, global = true, env = "FLOTILLA_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,

    /// A server's TCP address for monitors (needs --key).
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_CONNECT",
        value_name = "HOST:PORT",
        conflicts_with = "socket"
    )]
    connect: Option<String>,

    /// The cluster key file (for --connect).
    #[arg(long, global = true, env = "FLOTILLA_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command on the targets (every server by default).
    Simex {
        #[command(flatten)]
        targets: TargetArgs,
        /// How long the command may run on each host (e.g. 30s, 2m); the
        /// servers' default otherwise.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Print output lines as they arrive, prefixed with the host.
        #[arg(long)]
        stream: bool,
        /// The command and its arguments (after `--`), run with `sh -c`.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// The state of every server and its host.
    Status,
    /// M: the members of the mgmt group.
    Members,
    /// Change every server's working directory for later commands.
    Chdir {
        /// The directory.
        dir: String,
    },
    /// Stop servers: each leaves the group cleanly.
    Exit {
        /// The servers to stop, comma-separated; `web-[1-3,7]` names
        /// web-1, web-2, web-3 and web-7.
        #[arg(long, value_parser = parse_hosts, conflicts_with = "all")]
        targets: Vec<HostList>,
        /// Stop every server (needs --yes).
        #[arg(long)]
        all: bool,
        /// Confirm --all.
        #[arg(long)]
        yes: bool,
    },
    /// The report of a recent job, gathered from the servers.
    Job {
        /// Its id, or at least 4 of its first hexadecimal digits.
        id: String,
    },
    /// Recent jobs, newest first.
    Jobs {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// The replicated maps: create, drop, set, del, get, list, history, load.
    Map {
        #[command(subcommand)]
        command: map::MapCommand,
    },
    /// Build or inspect a package file (locally).
    #[command(subcommand)]
    Package(PackageCommand),
    /// Install a package on the targets that meet its requirements, or
    /// remove one (--remove NAME).
    Siminst {
        /// The package file (from `monitor package build`).
        #[arg(required_unless_present = "remove", conflicts_with = "remove")]
        file: Option<PathBuf>,
        /// Run the package's uninstall script and forget it.
        #[arg(long, value_name = "NAME")]
        remove: Option<String>,
        #[command(flatten)]
        targets: TargetArgs,
        /// Install even where the same version is installed already.
        #[arg(long)]
        force: bool,
        /// The digest the hosts must find (the file's own by default).
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// How long the transfer may take (e.g. 10m); the servers' default
        /// otherwise.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Start a throwaway local fleet of real daemons and take a tour.
    Demo {
        /// How many daemons.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=64))]
        hosts: u32,
        /// Leave the fleet running and print how to use and stop it.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PackageCommand {
    /// Build a package from a directory holding flotilla.yaml; prints its
    /// sha256.
    Build {
        /// The package directory.
        dir: PathBuf,
        /// The package file to write.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Show a package's manifest, files and digest.
    Inspect {
        /// The package file.
        file: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
struct TargetArgs {
    /// The target hosts, comma-separated; `web-[1-3,7]` names web-1,
    /// web-2, web-3 and web-7, as the reports print them.
    #[arg(long, value_parser = parse_hosts, conflicts_with = "where_")]
    targets: Vec<HostList>,
    /// Target the hosts whose attribute KEY is VALUE (all must hold).
    #[arg(long = "where", id = "where_", value_name = "KEY=VALUE", value_parser = parse_condition)]
    where_: Vec<(String, String)>,
}

impl TargetArgs {
    fn targets(&self) -> Targets {
        if !self.targets.is_empty() {
            Targets::Hosts(HostList::all(&self.targets))
        } else if !self.where_.is_empty() {
            Targets::Where(self.where_.clone())
        } else {
            Targets::All
        }
    }
}

/// One `--targets` value, expanded. A type of its own: clap reads a
/// `Vec<Vec<_>>` field as several values per occurrence.
#[derive(Debug, Clone)]
struct HostList(Vec<String>);

impl HostList {
    fn all(lists: &[HostList]) -> Vec<String> {
        lists.iter().flat_map(|l| l.0.iter().cloned()).collect()
    }
}

fn parse_hosts(text: &str) -> Result<HostList, String> {
    report::expand_hosts(text, flotilla_client::message::MAX_HOSTS).map(HostList)
}

fn parse_condition(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, found {text:?}")),
    }
}

/// A failure and the exit status it means.
#[derive(Debug)]
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure { code: 2, error }
    }
}

/// The signals that stop the monitor; each is handled as Ctrl-C is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Interrupt,
    Terminate,
    Hangup,
}

impl Stop {
    /// 128 + the signal number, as a shell reports a command it killed.
    pub(crate) fn exit_code(self) -> u8 {
        match self {
            Stop::Interrupt => 130,
            Stop::Terminate => 143,
            Stop::Hangup => 129,
        }
    }
}

/// The first of SIGINT, SIGTERM and SIGHUP to arrive after this call. From
/// the call on, these signals no longer kill the process (tokio keeps its
/// handlers for the life of the process): whoever awaits the future must
/// clean up and exit. If a handler cannot be installed, that signal keeps
/// its default action (the process dies), which is no worse than before.
pub(crate) fn stop_signal() -> impl std::future::Future<Output = Stop> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed now, not at the first poll: a signal that comes before the
    // future is awaited is still seen.
    let streams = [
        (SignalKind::interrupt(), Stop::Interrupt),
        (SignalKind::terminate(), Stop::Terminate),
        (SignalKind::hangup(), Stop::Hangup),
    ]
    .map(|(kind, stop)| (signal(kind).ok(), stop));
    async move {
        let [(mut a, sa), (mut b, sb), (mut c, sc)] = streams;
        async fn recv(stream: &mut Option<tokio::signal::unix::Signal>) {
            match stream {
                Some(stream) => {
                    stream.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = recv(&mut a) => sa,
            () = recv(&mut b) => sb,
            () = recv(&mut c) => sc,
        }
    }
}

/// A command stopped by a signal; `main` prints the message (if any) as it
/// is and exits with the signal's code.
#[derive(Debug)]
pub(crate) struct Interrupted {
    pub(crate) stop: Stop,
    pub(crate) message: Option<String>,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message.as_deref().unwrap_or("interrupted"))
    }
}

impl std::error::Error for Interrupted {}

impl Interrupted {
    /// What stopping while following `job` means: the job is the servers',
    /// not the monitor's, so it goes on.
    /// `accepted`: whether the group accepted the job, if known.
    fn following(stop: Stop, job: Option<JobId>, accepted: Option<bool>) -> Failure {
        let message = job.map(|job| {
            let id = job.short();
            match accepted {
                Some(true) => format!(
                    "interrupted: job {id} keeps running on the hosts; follow it with `monitor job {id}`"
                ),
                Some(false) => format!(
                    "interrupted before the group accepted job {id}; it may still run: `monitor job {id}` says"
                ),
                None => format!(
                    "interrupted: job {id} may keep running on the hosts; follow it with `monitor job {id}`"
                ),
            }
        });
        Failure {
            code: stop.exit_code(),
            error: anyhow::Error::new(Interrupted { stop, message }),
        }
    }
}

/// Whether an error is a write to a closed stdout.
pub(crate) fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// The exit status after stdout was closed: 128 + SIGPIPE, what a shell
/// shows for `ls` cut off by `head`.
const BROKEN_PIPE_EXIT: u8 = 141;

/// A line on stderr. A closed or full stderr is not worth failing for (and
/// `eprintln!` would panic).
pub(crate) fn eprint_line(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Refuses the connection options and --json for `monitor demo`: it starts
/// and talks to its own fleet, and prints a tour for people. Only what is on
/// the command line counts: FLOTILLA_SOCKET and friends, perhaps exported
/// for a fleet kept by an earlier `monitor demo --keep`, are ignored.
fn check_demo_args(matches: &ArgMatches) -> Result<(), String> {
    let Some(("demo", sub)) = matches.subcommand() else {
        return Ok(());
    };
    let given = |id: &str| {
        [matches, sub].iter().any(|m| {
            m.try_contains_id(id).unwrap_or(false)
                && m.value_source(id) == Some(ValueSource::CommandLine)
        })
    };
    for (id, flag) in [
        ("socket", "--socket"),
        ("connect", "--connect"),
        ("key", "--key"),
    ] {
        if given(id) {
            return Err(format!(
                "monitor demo starts its own fleet and talks to it: {flag} does not apply \
                 (to use a running fleet, run the other commands; `monitor demo --keep` leaves one running)"
            ));
        }
    }
    if given("json") {
        return Err(
            "monitor demo prints a tour to read, not JSON: --json does not apply \
             (keep a fleet with `monitor demo --keep` and run any command on it with --json)"
                .to_owned(),
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Err(message) = check_demo_args(&matches) {
        eprint_line(&format!("monitor: error: {message}"));
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprint_line(&format!(
                "monitor: error: cannot start the async runtime: {e}"
            ));
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, error }) => {
            if let Some(interrupted) = error.downcast_ref::<Interrupted>() {
                if let Some(message) = &interrupted.message {
                    eprint_line(&report::safe(message));
                }
                return ExitCode::from(interrupted.stop.exit_code());
            }
            // A closed pipe (`monitor ... | head`): the reader has what it
            // wanted; stop quietly.
            if is_broken_pipe(&error) {
                return ExitCode::from(BROKEN_PIPE_EXIT);
            }
            // The chain may quote a server's refusal.
            eprint_line(&format!(
                "monitor: error: {}",
                report::safe(&flotilla_client::error_chain(error.as_ref()))
            ));
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    if let Command::Demo { hosts, keep } = cli.command {
        return demo::run(hosts, keep).await.map_err(Failure::from);
    }
    if let Command::Package(command) = &cli.command {
        let out = Output { json: cli.json };
        return match command {
            PackageCommand::Build { dir, output } => package::build(dir, output, &out),
            PackageCommand::Inspect { file } => package::inspect(file, &out),
        };
    }
    let endpoint = endpoint(&cli.conn)?;
    let out = Output { json: cli.json };
    match cli.command {
        Command::Simex {
            targets,
            timeout,
            stream,
            command,
        } => {
            let request = Request::Simex(Simex {
                job: new_job()?,
                targets: targets.targets(),
                timeout,
                stream,
                command: command.join(" "),
            });
            run_job(&endpoint, request, &out).await
        }
        Command::Chdir { dir } => {
            let request = Request::Chdir {
                job: new_job()?,
                dir,
            };
            run_job(&endpoint, request, &out).await
        }
        Command::Exit { targets, all, yes } => {
            let targets = match (all, yes, targets.is_empty()) {
                (true, true, _) => Targets::All,
                (true, false, _) => {
                    bail_usage("--all stops every server of the fleet; add --yes to confirm")?
                }
                (false, _, false) => Targets::Hosts(HostList::all(&targets)),
                (false, _, true) => {
                    bail_usage("name the servers to stop with --targets, or --all --yes")?
                }
            };
            let request = Request::Exit {
                job: new_job()?,
                targets,
            };
            run_job(&endpoint, request, &out).await
        }
        Command::Job { id } => run_job(&endpoint, Request::Job { id }, &out).await,
        Command::Jobs { limit } => jobs(&endpoint, limit.min(MAX_JOBS), &out).await,
        Command::Status => status(&endpoint, &out).await,
        Command::Members => members(&endpoint, &out).await,
        Command::Siminst {
            file,
            remove,
            targets,
            force,
            sha256,
            timeout,
        } => match (file, remove) {
            (_, Some(name)) => {
                siminst::remove(&endpoint, name, targets.targets(), new_job()?, &out).await
            }
            (Some(file), None) => {
                let args = siminst::InstallArgs {
                    file: &file,
                    targets: targets.targets(),
                    force,
                    sha256,
                    timeout,
                };
                let job = new_job()?;
                // siminst follows the job itself; whether the group took
                // it before the signal is not known here.
                tokio::select! {
                    result = siminst::install(&endpoint, args, job, &out) => result,
                    stop = stop_signal() => Err(Interrupted::following(stop, Some(job), None)),
                }
            }
            (None, None) => bail_usage("name a package file, or --remove NAME"),
        },
        Command::Map { command } => map::run(&endpoint, command, &out).await,
        Command::Demo { .. } | Command::Package(_) => Ok(0),
    }
}

/// Sets the bar to the tracker's progress, its message to `describe` of
/// the first `shown` hosts still awaited, and says how many more there are.
fn show_progress<T>(
    bar: &ProgressBar,
    tracker: &flotilla_client::Tracker<T>,
    shown: usize,
    describe: impl FnOnce(Vec<&str>) -> String,
) {
    let progress = tracker.progress();
    bar.set_length(progress.total as u64);
    bar.set_position(progress.done as u64);
    let waiting: Vec<&str> = tracker.pending().take(shown).collect();
    let more = tracker.pending().count().saturating_sub(waiting.len());
    let mut msg = describe(waiting);
    if more > 0 {
        msg.push_str(&format!(" and {more} more"));
    }
    bar.set_message(msg);
}

fn bail_usage<T>(message: &str) -> Result<T, Failure> {
    Err(Failure {
        code: 2,
        error: anyhow::anyhow!("{message}"),
    })
}

fn new_job() -> anyhow::Result<JobId> {
    JobId::random().context("cannot get random bytes for a job id")
}

fn endpoint(conn: &ConnectArgs) -> anyhow::Result<Endpoint> {
    match (&conn.connect, &conn.socket) {
        (Some(addr), _) => {
            let Some(key) = &conn.key else {
                bail!("--connect needs the cluster key: --key FILE (or FLOTILLA_KEY)");
            };
            let key = ClusterKey::load(key)?;
            Ok(Endpoint::Tcp {
                addr: addr.clone(),
                key,
            })
        }
        (None, Some(path)) => Ok(Endpoint::Unix(path.clone())),
        (None, None) => Ok(Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET))),
    }
}

/// How results are printed.
pub(crate) struct Output {
    /// One JSON document instead of tables.
    pub(crate) json: bool,
}

async fn connect(endpoint: &Endpoint) -> anyhow::Result<Connection> {
    Connection::connect(endpoint).await.map_err(|e| {
        // Only a failed connect means nobody is there; past it the server
        // was reached and refused, or is not a Flotilla server.
        let context = match &e {
            flotilla_client::transport::ClientError::Connect { .. } => format!(
                "cannot reach the server at {endpoint} (is mgmtd running? see --socket / --connect)"
            ),
            flotilla_client::transport::ClientError::Refused { .. } => {
                format!(
                    "the server at {endpoint} refused the connection (is --key the fleet's key?)"
                )
            }
            _ => format!("cannot talk to the server at {endpoint}"),
        };
        anyhow::Error::new(e).context(context)
    })
}

/// Sends a job request and follows it to its report; prints it. Exit 0 if
/// every target succeeded, 1 otherwise.
pub(crate) async fn run_job(
    endpoint: &Endpoint,
    request: Request,
    out: &Output,
) -> Result<u8, Failure> {
    let report = follow_job(endpoint, request, out).await?;
    print_report(&report, out)
}

/// Prints a job's report; 0 if every target succeeded, 1 otherwise, and 1
/// when there was no target at all: a selection that matched nothing (a
/// typo in `--where`) did nothing, which a script must not take for
/// success.
pub(crate) fn print_report(
    report: &flotilla_client::JobReport,
    out: &Output,
) -> Result<u8, Failure> {
    let printable = report::Report::from(report);
    if out.json {
        println_checked(
            &serde_json::to_string_pretty(&printable).context("cannot encode the report")?,
        )?;
    } else {
        println_checked(&report::table(&printable))?;
        println_checked(&report::summary_line(&printable))?;
    }
    if report.targeted() == 0 {
        eprint_line(&format!(
            "monitor: no host was targeted: the selection matched none of the {} host(s) of the view (see `monitor members`)",
            report.hosts.len()
        ));
        return Ok(1);
    }
    Ok(if printable.all_ok() { 0 } else { 1 })
}

/// Checks a request's bounds (a usage error if broken), connects and sends
/// it; the connection then carries the answer.
pub(crate) async fn send_request(
    endpoint: &Endpoint,
    request: &Request,
) -> Result<Connection, Failure> {
    if let Err(e) = request.validate() {
        return bail_usage(&e.to_string());
    }
    let mut connection = connect(endpoint).await?;
    connection
        .send(request)
        .await
        .context("cannot send the request")?;
    Ok(connection)
}

/// Sends a job request and follows it, with progress on a terminal.
pub(crate) async fn follow_job(
    endpoint: &Endpoint,
    request: Request,
    out: &Output,
) -> Result<flotilla_client::JobReport, Failure> {
    let mut connection = send_request(endpoint, &request).await?;
    let interactive =
        std::io::stdout().is_terminal() && std::io::stderr().is_terminal() && !out.json;
    let bar = interactive.then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] {pos}/{len} done  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message("waiting for the group to accept the command");
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    });
    let job = request.job();
    // Set once the group accepted the job: an interruption then leaves it
    // running on the hosts.
    let accepted = std::cell::Cell::new(false);
    // A closed stdout (`--stream | head`): the first failed write ends the
    // follow, quietly.
    let closed: std::cell::RefCell<Option<std::io::Error>> = Default::default();
    let stdout_closed = tokio::sync::Notify::new();
    let followed = follow(&mut connection, |event, tracker| {
        if let FollowEvent::Accepted(accepted_job) = event {
            accepted.set(true);
            let line = format!(
                "job {} on {} host(s): {}",
                accepted_job.job.short(),
                accepted_job.targets.len(),
                report::safe(&accepted_job.command)
            );
            match &bar {
                Some(bar) => bar.println(line),
                None if !out.json => eprint_line(&line),
                None => {}
            }
        }
        if let FollowEvent::Output { host, line, .. } = event {
            let line = format!("{}: {}", report::safe(host), report::safe(line));
            match &bar {
                Some(bar) => bar.println(line),
                // Keep stdout one JSON document with --json.
                None if out.json => eprint_line(&line),
                None if closed.borrow().is_some() => {}
                None => {
                    if let Err(e) = println_checked(&line) {
                        let io = e
                            .downcast::<std::io::Error>()
                            .unwrap_or_else(|e| std::io::Error::other(e.to_string()));
                        *closed.borrow_mut() = Some(io);
                        stdout_closed.notify_one();
                    }
                }
            }
        }
        if let FollowEvent::View { disconnected, .. } = event {
            for host in disconnected {
                let line = format!(
                    "{}: disconnected (left the group before reporting)",
                    report::safe(host)
                );
                match &bar {
                    Some(bar) => bar.println(line),
                    None if !out.json => eprint_line(&line),
                    None => {}
                }
            }
        }
        if let Some(bar) = &bar {
            show_progress(bar, tracker, 8, |waiting| {
                if waiting.is_empty() {
                    String::new()
                } else {
                    format!("waiting for {}", report::fold_hosts(waiting))
                }
            });
        }
    });
    let outcome = tokio::select! {
        report = followed => Ok(report),
        stop = stop_signal() => Err(stop),
        () = stdout_closed.notified() => {
            // Nothing more can be shown; the job goes on on the hosts.
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let error = closed.take().unwrap_or_else(|| std::io::ErrorKind::BrokenPipe.into());
            return Err(anyhow::Error::new(error).context("cannot write to stdout").into());
        }
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = match outcome {
        Ok(report) => report,
        Err(stop) => return Err(Interrupted::following(stop, job, Some(accepted.get()))),
    };
    let report = report.with_context(|| match job {
        // The server that relayed the job is gone or broke off; the job is
        // the group's and goes on on the other hosts.
        Some(job) if accepted.get() => {
            let id = job.short();
            format!(
                "lost the report of job {id} from {endpoint}; the job may still run on the other hosts: `monitor job {id}` (through another server) gathers its report"
            )
        }
        _ => format!("the job failed at {endpoint}"),
    })?;
    Ok(report)
}

/// Host-supplied text for a table cell or a line (see `report::safe`).
pub(crate) fn safe(text: &str) -> String {
    report::safe(text).into_owned()
}

pub(crate) fn println_checked(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}").context("cannot write to stdout")?;
    Ok(())
}

async fn single(endpoint: &Endpoint, request: Request) -> anyhow::Result<ServerMessage> {
    let mut connection = connect(endpoint).await?;
    connection
        .send(&request)
        .await
        .context("cannot send the request")?;
    match connection.recv().await? {
        Some(ServerMessage::Error { message, .. }) => bail!("the server refused: {message}"),
        Some(message) => Ok(message),
        None => bail!("the server closed the connection without an answer"),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn short_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// `monitor status`.
pub(crate) async fn status(endpoint: &Endpoint, out: &Output) -> Result<u8, Failure> {
    let reply: StatusReply = match single(endpoint, Request::Status).await? {
        ServerMessage::Status(reply) => reply,
        other => return Err(anyhow::anyhow!("unexpected answer: {other:?}").into()),
    };
    if out.json {
        println_checked(&serde_json::to_string_pretty(&reply).context("cannot encode")?)?;
    } else {
        let mut table = Table::new();
        table
            .load_preset(presets::UTF8_FULL_CONDENSED)
            .set_header(vec![
                "host",
                "node.incarnation",
                "version",
                "up",
                "load",
                "memory free",
                "disk free",
                "view",
                "cwd",
                "packages",
            ]);
        for h in &reply.hosts {
            table.add_row(vec![
                safe(&h.name),
                format!("{}.{}", h.node, h.incarnation),
                safe(&h.version),
                short_duration(h.uptime),
                h.load
                    .map(|l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
                    .unwrap_or_else(|| "-".into()),
                h.memory
                    .map(|m| format!("{} / {}", bytes(m.available), bytes(m.total)))
                    .unwrap_or_else(|| "-".into()),
                h.disk
                    .as_ref()
                    .map(|d| format!("{} / {}", bytes(d.free), bytes(d.total)))
                    .unwrap_or_else(|| "-".into()),
                format!("{} ({} members)", h.view.id, h.view.members.len()),
                safe(&h.cwd),
                safe(
                    &h.packages
                        .iter()
                        .map(|p| format!("{} {}", p.name, p.version))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            ]);
        }
        for (host, _) in &reply.unanswered {
            table.add_row(vec![safe(host), "no answer".into()]);
        }
        println_checked(&table.to_string())?;
    }
    Ok(if reply.unanswered.is_empty() { 0 } else { 1 })
}

/// `monitor members`.
pub(crate) async fn members(endpoint: &Endpoint, out: &Output) -> Result<u8, Failure> {
    let reply: MembersReply = match single(endpoint, Request::Members).await? {
        ServerMessage::Members(reply) => reply,
        other => return Err(anyhow::anyhow!("unexpected answer: {other:?}").into()),
    };
    if out.json {
        println_checked(&serde_json::to_string_pretty(&reply).context("cannot encode")?)?;
    } else {
        let mut table = Table::new();
        table
            .load_preset(presets::UTF8_FULL_CONDENSED)
            .set_header(vec![
                "host",
                "address",
                "incarnation",
                "attributes",
                "in the view since",
            ]);
        for m in &reply.members {
            let attributes: Vec<String> = m
                .attributes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            table.add_row(vec![
                safe(&m.host),
                safe(&m.address),
                m.incarnation.to_string(),
                safe(&attributes.join(" ")),
                humantime::format_rfc3339_seconds(m.since).to_string(),
            ]);
        }
        println_checked(&format!(
            "view {} ({} members)",
            reply.view,
            reply.members.len()
        ))?;
        println_checked(&table.to_string())?;
    }
    Ok(0)
}

/// `monitor jobs`.
async fn jobs(endpoint: &Endpoint, limit: u32, out: &Output) -> Result<u8, Failure> {
    let reply = match single(endpoint, Request::Jobs { limit }).await? {
        ServerMessage::Jobs(reply) => reply,
        other => return Err(anyhow::anyhow!("unexpected answer: {other:?}").into()),
    };
    if out.json {
        println_checked(&serde_json::to_string_pretty(&reply).context("cannot encode")?)?;
    } else {
        let mut table = Table::new();
        table
            .load_preset(presets::UTF8_FULL_CONDENSED)
            .set_header(vec![
                "job", "accepted", "targets", "ok", "failed", "running", "command",
            ]);
        for j in &reply.jobs {
            table.add_row(vec![
                j.job.short(),
                humantime::format_rfc3339_seconds(j.accepted_at).to_string(),
                j.targets.to_string(),
                j.ok.to_string(),
                j.failed.to_string(),
                j.running.to_string(),
                safe(&j.command),
            ]);
        }
        println_checked(&table.to_string())?;
    }
    Ok(0)
}
