//! `monitor demo`: a throwaway fleet of real `mgmtd` processes on loopback,
//! a short tour (simex, chdir, the replicated maps, siminst, a killed host),
//! and a clean stop (also on Ctrl-C and on error).
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

use crate::{follow_job, run_job, Output};

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
        eprintln!(
            "building mgmtd ({})…",
            if release { "release" } else { "debug" }
        );
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
    /// left after 10 s.
    async fn stop(&mut self) {
        for d in &self.daemons {
            if let Some(pid) = d.child.as_ref().and_then(Child::id) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
        }
        for d in &mut self.daemons {
            if let Some(mut child) = d.child.take() {
                if tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
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

fn heading(text: &str) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        println!("\n\x1b[1m$ {text}\x1b[0m");
    } else {
        println!("\n$ {text}");
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

    heading("monitor members");
    run(crate::members(&endpoint, &out).await)?;

    heading("monitor status");
    run(crate::status(&endpoint, &out).await)?;

    heading("monitor simex -- uname -sr");
    run(run_job(&endpoint, simex("uname -sr", Targets::All, None)?, &out).await)?;

    heading("monitor chdir /tmp && monitor simex -- pwd");
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

    heading("monitor simex --where role=web -- 'ls /nonexistent'   (fails everywhere)");
    let web = Targets::Where(vec![("role".into(), "web".into())]);
    run(run_job(&endpoint, simex("ls /nonexistent", web, None)?, &out).await)?;

    heading("monitor simex --targets demo-1,nohost -- true   (an unknown host is reported)");
    let named = Targets::Hosts(vec!["demo-1".into(), "nohost".into()]);
    run(run_job(&endpoint, simex("true", named, None)?, &out).await)?;

    if fleet.daemons.len() >= 2 {
        let victim = fleet.daemons.len() - 1;
        let name = fleet.daemons[victim].name.clone();
        heading(&format!(
            "monitor simex -- 'sleep 2; echo done'   (and {name} is killed with SIGKILL after 0.5 s)"
        ));
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
        println!("{}", crate::report::table(&printable));
        println!("{}", crate::report::summary_line(&printable));
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
            heading(&format!("monitor {shown}"));
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

/// `monitor demo [--hosts N] [--keep]`. Exit status 0 when the tour ran.
pub(crate) async fn run(hosts: u32, keep: bool) -> anyhow::Result<u8> {
    println!("starting a fleet of {hosts} mgmtd daemons on loopback…");
    let mut fleet = Fleet::start(hosts, keep).await?;
    let started = tokio::time::Instant::now();
    let result = tokio::select! {
        result = async {
            fleet.wait_formed().await?;
            println!(
                "the fleet formed one view of {hosts} in {} ms (state and logs in {})",
                started.elapsed().as_millis(),
                fleet.root.display()
            );
            if !keep {
                tour(&mut fleet).await?;
            }
            anyhow::Ok(())
        } => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if keep && result.is_ok() {
        print_keep(&fleet);
        // Detach: the daemons outlive this process.
        for d in &mut fleet.daemons {
            d.child.take();
        }
        return Ok(0);
    }
    println!("\nstopping the fleet…");
    fleet.stop().await;
    if let Err(e) = result {
        return Err(e.context(format!(
            "the demo failed; the fleet's configurations and logs are kept in {}",
            fleet.root.display()
        )));
    }
    let _ = std::fs::remove_dir_all(&fleet.root);
    println!("done. Next: `cargo test --workspace`, or `monitor demo --keep` to keep a fleet.");
    Ok(0)
}

fn print_keep(fleet: &Fleet) {
    let pids: Vec<String> = fleet
        .daemons
        .iter()
        .filter_map(|d| d.child.as_ref().and_then(Child::id))
        .map(|p| p.to_string())
        .collect();
    println!("\nthe fleet keeps running. Point monitor at it:\n");
    println!(
        "  export FLOTILLA_SOCKET={}",
        fleet.daemons[0].socket.display()
    );
    println!("\nand try `monitor members`, `monitor simex -- uptime`. Stop it with:\n");
    println!(
        "  kill {} && rm -rf {}",
        pids.join(" "),
        fleet.root.display()
    );
}
