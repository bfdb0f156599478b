//! `monitor demo`: a throwaway fleet of real `mgmtd` processes on loopback,
//! a short tour (simex, chdir, the replicated maps, siminst, a killed host),
//! and a clean stop, also on SIGINT, SIGTERM, SIGHUP, a closed stdout and
//! an error.
//!
//! The fleet lives in a temporary directory: a fresh cluster key, and per
//! host a configuration, a data directory, a socket and a log file. The
//! daemons listen on free loopback UDP ports and know each other as seeds.
//! `mgmtd` is looked for beside this executable; when `monitor` runs under
//! `cargo run` and it is not there yet, it is built first.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use flotilla_client::message::{Request, ServerMessage, Simex};
use flotilla_client::{ClusterKey, Connection, Endpoint, JobId, Targets};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::{eprint_line, follow_job, println_checked, run_job, stop_signal, Output, Stop};

/// How long the fleet has to form one view.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// One daemon of the fleet.
struct Daemon {
    name: String,
    socket: PathBuf,
    child: Option<Child>,
}

/// The fleet; dropping it kills whatever is still running.
struct Fleet {
    /// The fleet's directory: removed after a clean stop, kept after an
    /// error (its logs say what happened) and with `--keep`.
    root: PathBuf,
    daemons: Vec<Daemon>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for daemon in &mut self.daemons {
            if let Some(child) = daemon.child.as_mut() {
                let _ = child.start_kill();
            }
        }
    }
}

/// `mgmtd` beside this executable, built with cargo if needed and possible.
fn find_mgmtd() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("FLOTILLA_MGMTD") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let dir = exe.parent().context("this executable has no directory")?;
    let mgmtd = dir.join("mgmtd");
    if mgmtd.exists() {
        return Ok(mgmtd);
    }
    // Under `cargo run`, CARGO names cargo: build the daemon with the same
    // profile as this executable.
    if let Some(cargo) = std::env::var_os("CARGO") {
        let release = dir.file_name().is_some_and(|n| n == "release");
        eprint_line(&format!(
            "building mgmtd ({})…",
            if release { "release" } else { "debug" }
        ));
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "--quiet", "-p", "mgmtd"]);
        if release {
            build.arg("--release");
        }
        let status = build.status().context("cannot run cargo to build mgmtd")?;
        if status.success() && mgmtd.exists() {
            return Ok(mgmtd);
        }
    }
    bail!(
        "cannot find mgmtd beside {} (build it with `cargo build --release -p mgmtd`, or set FLOTILLA_MGMTD)",
        exe.display()
    )
}

fn free_udp_port() -> anyhow::Result<u16> {
    flotilla_client::loopback::free_port(flotilla_client::loopback::Protocol::Udp)
        .context("cannot find a free UDP port on 127.0.0.1")
}

impl Fleet {
    async fn start(hosts: u32, keep: bool) -> anyhow::Result<Fleet> {
        let mgmtd = find_mgmtd()?;
        let dir = tempfile::Builder::new()
            .prefix("flotilla-demo-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        // Removed by `run` after a clean stop only.
        let root = dir.keep();
        let key_path = root.join("cluster.key");
        ClusterKey::generate()?.write_new(&key_path)?;
        let ports: Vec<u16> = (0..hosts)
            .map(|_| free_udp_port())
            .collect::<Result<_, _>>()?;
        let mut fleet = Fleet {
            root: root.clone(),
            daemons: Vec::new(),
        };
        // Many daemons on one small machine miss gc-core's default join
        // and suspicion timeouts (tuned for a LAN of hosts) and never settle
        // on one view: give them more time.
        let gc = if hosts > 10 {
            "gc:\n  join_timeout: 1s\n  suspect_timeout: 2s\n  startup_wait: 1s\n"
        } else {
            ""
        };
        let map_hosts = (1..=hosts)
            .map(|i| format!("demo-{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        for (i, port) in ports.iter().enumerate() {
            let name = format!("demo-{}", i + 1);
            let home = root.join(&name);
            std::fs::create_dir_all(&home)?;
            let seeds: Vec<String> = ports
                .iter()
                .filter(|p| *p != port)
                .map(|p| format!("  - 127.0.0.1:{p}"))
                .collect();
            let role = if i == 0 { "db" } else { "web" };
            let config = format!(
                "name: {name}\nlisten: 127.0.0.1:{port}\nseeds:\n{}\ncluster_key: {}\ndata_dir: {}\nattributes:\n  role: {role}\nclient:\n  socket: {}\nexec:\n  timeout: 30s\nlog_level: info\nmaps:\n  hosts: [{map_hosts}]\n{gc}",
                if seeds.is_empty() { "  []".to_owned() } else { seeds.join("\n") },
                key_path.display(),
                home.join("data").display(),
                home.join("mgmtd.sock").display(),
            );
            let config_path = home.join("mgmtd.yaml");
            std::fs::write(&config_path, config)?;
            let log = std::fs::File::create(home.join("mgmtd.log"))?;
            let child = Command::new(&mgmtd)
                .arg("--config")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                // A kept fleet must survive this process; a throwaway one is
                // killed with it even if it dies without cleaning up.
                .kill_on_drop(!keep)
                .spawn()
                .with_context(|| format!("cannot start {}", mgmtd.display()))?;
            fleet.daemons.push(Daemon {
                name,
                socket: home.join("mgmtd.sock"),
                child: Some(child),
            });
        }
        Ok(fleet)
    }

    fn endpoint(&self, i: usize) -> Endpoint {
        Endpoint::Unix(self.daemons[i].socket.clone())
    }

    /// Waits until the first daemon sees every daemon in M.
    async fn wait_formed(&mut self) -> anyhow::Result<()> {
        let want = self.daemons.len();
        let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
        loop {
            for d in &mut self.daemons {
                if let Some(child) = d.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        bail!(
                            "{} exited during startup ({status}); see {}",
                            d.name,
                            self.root.join(&d.name).join("mgmtd.log").display()
                        );
                    }
                }
            }
            if let Ok(n) = members_count(&self.endpoint(0)).await {
                if n == want {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the fleet did not form one view of {want} within {FORM_TIMEOUT:?}; logs in {}",
                    self.root.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every daemon with SIGTERM (a clean leave), then SIGKILL what is
    /// left after 10 s, or at once on another SIGINT, SIGTERM or SIGHUP
    /// (the operator does not want to wait).
    async fn stop(&mut self) {
        let hurry = stop_signal();
        for d in &self.daemons {
            if let Some(pid) = d.child.as_ref().and_then(Child::id) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
        }
        let leave = async {
            for d in &mut self.daemons {
                if let Some(child) = d.child.as_mut() {
                    let _ = child.wait().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(Duration::from_secs(10), leave) => {}
            _ = hurry => {}
        }
        for d in &mut self.daemons {
            if let Some(mut child) = d.child.take() {
                let _ = child.kill().await;
            }
        }
    }
}

async fn members_count(endpoint: &Endpoint) -> anyhow::Result<usize> {
    let mut connection = Connection::connect(endpoint).await?;
    connection.send(&Request::Members).await?;
    match connection.recv().await? {
        Some(ServerMessage::Members(reply)) => Ok(reply.members.len()),
        _ => bail!("no members yet"),
    }
}

fn heading(text: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        println_checked(&format!("\n\x1b[1m$ {text}\x1b[0m"))
    } else {
        println_checked(&format!("\n$ {text}"))
    }
}

fn simex(command: &str, targets: Targets, timeout: Option<Duration>) -> anyhow::Result<Request> {
    Ok(Request::Simex(Simex {
        job: JobId::random()?,
        targets,
        timeout,
        stream: false,
        command: command.to_owned(),
    }))
}

/// The tour: status, members, simex, chdir, a failing command, a daemon
/// killed mid-command.
async fn tour(fleet: &mut Fleet) -> anyhow::Result<()> {
    let out = Output { json: false };
    let endpoint = fleet.endpoint(0);
    let run = |result: Result<u8, crate::Failure>| result.map_err(|f| f.error);

    heading("monitor members")?;
    run(crate::members(&endpoint, &out).await)?;

    heading("monitor status")?;
    run(crate::status(&endpoint, &out).await)?;

    heading("monitor simex -- uname -sr")?;
    run(run_job(&endpoint, simex("uname -sr", Targets::All, None)?, &out).await)?;

    heading("monitor chdir /tmp && monitor simex -- pwd")?;
    run(run_job(
        &endpoint,
        Request::Chdir {
            job: JobId::random()?,
            dir: "/tmp".into(),
        },
        &out,
    )
    .await)?;
    run(run_job(&endpoint, simex("pwd", Targets::All, None)?, &out).await)?;

    maps_and_siminst(fleet).await?;

    heading("monitor simex --where role=web -- 'ls /nonexistent'   (fails everywhere)")?;
    let web = Targets::Where(vec![("role".into(), "web".into())]);
    run(run_job(&endpoint, simex("ls /nonexistent", web, None)?, &out).await)?;

    heading("monitor simex --targets demo-1,nohost -- true   (an unknown host is reported)")?;
    let named = Targets::Hosts(vec!["demo-1".into(), "nohost".into()]);
    run(run_job(&endpoint, simex("true", named, None)?, &out).await)?;

    if fleet.daemons.len() >= 2 {
        let victim = fleet.daemons.len() - 1;
        let name = fleet.daemons[victim].name.clone();
        heading(&format!(
            "monitor simex -- 'sleep 2; echo done'   (and {name} is killed with SIGKILL after 0.5 s)"
        ))?;
        let pid = fleet.daemons[victim].child.as_ref().and_then(Child::id);
        let killer = async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Some(pid) = pid {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        };
        let request = simex(
            "sleep 2; echo done",
            Targets::All,
            Some(Duration::from_secs(10)),
        )?;
        let (report, ()) = tokio::join!(follow_job(&endpoint, request, &out), killer);
        let report = report.map_err(|f| f.error)?;
        let printable = crate::report::Report::from(&report);
        println_checked(&crate::report::table(&printable))?;
        println_checked(&crate::report::summary_line(&printable))?;
        if let Some(mut child) = fleet.daemons[victim].child.take() {
            let _ = child.wait().await;
        }
    }
    Ok(())
}

/// The replicated maps and siminst, each step run as the `monitor` command
/// line it shows, against the first daemon.
async fn maps_and_siminst(fleet: &Fleet) -> anyhow::Result<()> {
    let socket = fleet.daemons[0].socket.display().to_string();
    let root = format!("{}/", fleet.root.display());
    let step = |args: Vec<String>| {
        let socket = socket.clone();
        // The package's paths are shown relative to the fleet's directory.
        let shown = args.join(" ").replace(&root, "");
        async move {
            heading(&format!("monitor {shown}"))?;
            let argv = ["monitor", "--socket", &socket]
                .into_iter()
                .map(str::to_owned)
                .chain(args);
            let cli = <crate::Cli as clap::Parser>::try_parse_from(argv)
                .context("a demo step is not a valid monitor command line")?;
            // Boxed: `run` is what called the demo.
            match Box::pin(crate::run(cli)).await {
                Ok(0) => Ok(()),
                Ok(code) => bail!("the step exited with status {code}"),
                Err(failure) => Err(failure.error),
            }
        }
    };
    let words = |line: &str| line.split(' ').map(str::to_owned).collect::<Vec<_>>();

    step(words("map create hosts")).await?;
    step(words("map set hosts 10.0.0.1 web-1")).await?;
    step(words("map set hosts 10.0.0.2 web-2")).await?;
    step(words("map list hosts")).await?;

    // A package for the web hosts: demo-1 (role=db) is not eligible.
    let dir = fleet.root.join("hello-package");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("flotilla.yaml"),
        "name: hello\nversion: 1.0.0\nrequirements:\n  attributes:\n    role: [web]\ninstall: install.sh\n",
    )?;
    std::fs::write(dir.join("install.sh"), "echo hello installed\n")?;
    let file = fleet.root.join("hello-1.0.0.fpkg");
    let (dir, file) = (dir.display().to_string(), file.display().to_string());
    step(vec![
        "package".into(),
        "build".into(),
        dir,
        "-o".into(),
        file.clone(),
    ])
    .await?;
    step(vec!["siminst".into(), file]).await?;
    Ok(())
}

/// How the demo ended, before the fleet is stopped.
enum End {
    /// The tour ran (or, with --keep, the fleet formed).
    Done,
    /// SIGINT, SIGTERM or SIGHUP: cancelled by the operator.
    Stopped(Stop),
    /// stdout was closed (`monitor demo | head`).
    PipeClosed(anyhow::Error),
    Failed(anyhow::Error),
}

impl End {
    fn from_error(error: anyhow::Error) -> End {
        if let Some(interrupted) = error.downcast_ref::<crate::Interrupted>() {
            End::Stopped(interrupted.stop)
        } else if crate::is_broken_pipe(&error) {
            End::PipeClosed(error)
        } else {
            End::Failed(error)
        }
    }
}

/// `monitor demo [--hosts N] [--keep]`. Exit status 0 when the tour ran;
/// 128 + the signal when interrupted, after the fleet is stopped and (but
/// with --keep) removed.
pub(crate) async fn run(hosts: u32, keep: bool) -> anyhow::Result<u8> {
    // Before the first daemon starts: from here on a signal is the demo's
    // to handle, and it cleans up.
    let stop = stop_signal();
    println_checked(&format!(
        "starting a fleet of {hosts} mgmtd daemons on loopback…"
    ))?;
    let mut fleet = Fleet::start(hosts, keep).await?;
    let started = tokio::time::Instant::now();
    let end = tokio::select! {
        result = async {
            fleet.wait_formed().await?;
            println_checked(&format!(
                "the fleet formed one view of {hosts} in {} ms (state and logs in {})",
                started.elapsed().as_millis(),
                fleet.root.display()
            ))?;
            if !keep {
                tour(&mut fleet).await?;
            }
            anyhow::Ok(())
        } => result.map_or_else(End::from_error, |()| End::Done),
        stop = stop => End::Stopped(stop),
    };
    if keep && matches!(end, End::Done) {
        print_keep(&fleet)?;
        // Detach: the daemons outlive this process.
        for d in &mut fleet.daemons {
            d.child.take();
        }
        return Ok(0);
    }
    if matches!(end, End::Done) {
        // A closed stdout now still leaves a fleet to stop.
        let _ = println_checked("\nstopping the fleet…");
    }
    fleet.stop().await;
    let root = fleet.root.clone();
    match end {
        End::Done => {
            let _ = std::fs::remove_dir_all(&root);
            println_checked(
                "done. Next: `cargo test --workspace`, or `monitor demo --keep` to keep a fleet.",
            )?;
            Ok(0)
        }
        End::Stopped(stop) => {
            if keep {
                eprint_line(&format!(
                    "demo interrupted; the fleet is stopped; its configurations and logs are kept in {}",
                    root.display()
                ));
            } else {
                let _ = std::fs::remove_dir_all(&root);
                eprint_line("demo interrupted; the fleet is stopped and removed");
            }
            Ok(stop.exit_code())
        }
        End::PipeClosed(error) => {
            if !keep {
                let _ = std::fs::remove_dir_all(&root);
            }
            Err(error)
        }
        End::Failed(error) => Err(error.context(format!(
            "the demo failed; the fleet's configurations and logs are kept in {}",
            root.display()
        ))),
    }
}

/// A POSIX shell command that stops the daemons `pids` and only then
/// removes `root`: SIGTERM (a clean leave), up to 10 s for them to exit,
/// SIGKILL for any still there, then `rm -rf`. `kill -0` is asked per pid,
/// since with several pids dash fails as soon as one is gone while bash
/// succeeds while one is left.
fn stop_command(pids: &[u32], root: &std::path::Path) -> String {
    let list = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let alive = pids
        .iter()
        .map(|p| format!("kill -0 {p}"))
        .collect::<Vec<_>>()
        .join(" || ");
    let quoted = format!("'{}'", root.display().to_string().replace('\'', r"'\''"));
    format!(
        "kill {list}; i=0; while [ $i -lt 100 ] && {{ {alive}; }} 2>/dev/null; do sleep 0.1; i=$((i+1)); done; kill -9 {list} 2>/dev/null; rm -rf {quoted}"
    )
}

fn print_keep(fleet: &Fleet) -> anyhow::Result<()> {
    let pids: Vec<u32> = fleet
        .daemons
        .iter()
        .filter_map(|d| d.child.as_ref().and_then(Child::id))
        .collect();
    println_checked("\nthe fleet keeps running. Point monitor at it:\n")?;
    println_checked(&format!(
        "  export FLOTILLA_SOCKET={}",
        fleet.daemons[0].socket.display()
    ))?;
    println_checked("\nand try `monitor members`, `monitor simex -- uptime`. Stop it with:\n")?;
    println_checked(&format!("  {}", stop_command(&pids, &fleet.root)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The printed command waits for the daemons to be gone before it
    /// removes their directory: here, processes that take 0.5 s to exit
    /// after SIGTERM and write into the directory as they go.
    #[test]
    fn the_stop_command_removes_the_directory_after_the_daemons() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("no temporary directory");
        };
        let root = dir.path().join("fleet it's");
        std::fs::create_dir_all(&root).unwrap_or_default();
        // A daemon that is still leaving writes its state: if the directory
        // were removed first, it would be there again.
        let slow = "trap 'sleep 0.5; mkdir -p \"$0\"; echo bye > \"$0/late\"; exit 0' TERM; while :; do sleep 0.05; done";
        let mut children: Vec<std::process::Child> = (0..2)
            .filter_map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", slow])
                    .arg(&root)
                    .spawn()
                    .ok()
            })
            .collect();
        assert_eq!(children.len(), 2);
        let pids: Vec<u32> = children.iter().map(std::process::Child::id).collect();
        // The traps must be set before the SIGTERM comes.
        std::thread::sleep(Duration::from_millis(200));
        // Reap the children as they exit, as init does for a kept fleet:
        // `kill -0` succeeds on a zombie.
        let reapers: Vec<_> = children
            .drain(..)
            .map(|mut c| std::thread::spawn(move || c.wait()))
            .collect();
        let status = std::process::Command::new("sh")
            .args(["-c", &stop_command(&pids, &root)])
            .status();
        assert!(matches!(status, Ok(s) if s.success()), "{status:?}");
        for reaper in reapers {
            let waited = reaper.join();
            assert!(matches!(waited, Ok(Ok(_))), "{waited:?}");
        }
        assert!(!root.exists(), "{} is left behind", root.display());
    }
}
