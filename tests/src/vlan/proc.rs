//! Processes inside a host's namespace: start, kill -9, restart, SIGSTOP and
//! SIGCONT, with stdout and stderr captured per host and per start into the
//! run directory, and every wait bounded.
//!
//! `ip netns exec NS PROGRAM` enters the namespace and then execs PROGRAM,
//! so the child's pid is the program's own: signals reach it directly.

use super::Host;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What went wrong with a process.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// It could not be started.
    #[error("cannot start {label} on {host}")]
    Spawn {
        /// The host.
        host: String,
        /// The process's label.
        label: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A log file could not be created.
    #[error("cannot create log {path}")]
    Log {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The operation needs a running process.
    #[error("{label} on {host} is not running")]
    NotRunning {
        /// The host.
        host: String,
        /// The process's label.
        label: String,
    },
    /// Writing to its stdin failed (it exited, or closed stdin).
    #[error("cannot write to {label} on {host}")]
    Stdin {
        /// The host.
        host: String,
        /// The process's label.
        label: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A signal could not be sent.
    #[error("cannot signal {label} on {host}: {errno}")]
    Signal {
        /// The host.
        host: String,
        /// The process's label.
        label: String,
        /// Why.
        errno: nix::errno::Errno,
    },
    /// It did not exit within the time allowed.
    #[error("{label} on {host} did not exit within {waited:?}")]
    ExitTimeout {
        /// The host.
        host: String,
        /// The process's label.
        label: String,
        /// How long it was given.
        waited: Duration,
    },
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

/// One line the process printed on stdout, parsed as JSON when it is JSON.
#[derive(Clone, Debug)]
pub struct Line {
    /// Which start of the process printed it (0 for the first).
    pub start: u32,
    /// The line as JSON (`Value::String` of the raw line when not JSON).
    pub value: Value,
}

/// How the process stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Never started, or exited, or killed.
    Down,
    /// Running.
    Running,
    /// Stopped by SIGSTOP.
    Stopped,
}

/// A process on one host, restartable.
pub struct HostProcess {
    host: Host,
    label: String,
    spec: Spec,
    log_dir: PathBuf,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    state: State,
    starts: u32,
    tx: mpsc::Sender<Line>,
    rx: mpsc::Receiver<Line>,
}

/// How long a killed process may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

impl HostProcess {
    /// A process `label` on `host`, not yet started; logs go to `log_dir`.
    pub fn new(host: &Host, label: &str, spec: Spec, log_dir: &Path) -> HostProcess {
        let (tx, rx) = mpsc::channel();
        HostProcess {
            host: host.clone(),
            label: label.to_owned(),
            spec,
            log_dir: log_dir.to_owned(),
            child: None,
            stdin: None,
            state: State::Down,
            starts: 0,
            tx,
            rx,
        }
    }

    /// The host it runs on.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// What it runs.
    pub fn spec_mut(&mut self) -> &mut Spec {
        &mut self.spec
    }

    /// How it stands.
    pub fn state(&mut self) -> State {
        self.reap_if_exited();
        self.state
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The stdout log of start `start`.
    pub fn out_log(&self, start: u32) -> PathBuf {
        self.log_dir
            .join(format!("{}.{}.{start}.out", self.host.name, self.label))
    }

    /// The stderr log of start `start`.
    pub fn err_log(&self, start: u32) -> PathBuf {
        self.log_dir
            .join(format!("{}.{}.{start}.err", self.host.name, self.label))
    }

    /// The OS pid, while it runs.
    pub fn os_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts it (again). Its previous run, if still there, is killed first.
    /// Returns the number of this start.
    pub fn start(&mut self) -> Result<u32, ProcError> {
        if self.child.is_some() {
            self.kill9()?;
        }
        let start = self.starts;
        let err_path = self.err_log(start);
        let out_path = self.out_log(start);
        let err = std::fs::File::create(&err_path).map_err(|source| ProcError::Log {
            path: err_path.clone(),
            source,
        })?;
        let mut out = std::fs::File::create(&out_path).map_err(|source| ProcError::Log {
            path: out_path.clone(),
            source,
        })?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.host.ns])
            .arg(&self.spec.program)
            .args(&self.spec.args)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|source| ProcError::Spawn {
                host: self.host.name.clone(),
                label: self.label.clone(),
                source,
            })?;
        self.stdin = child.stdin.take();
        if let Some(stdout) = child.stdout.take() {
            let tx = self.tx.clone();
            // Tee: every line to the log file as printed, and parsed to the
            // channel. The thread ends when the process's stdout closes.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(out, "{line}");
                    let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                    if tx.send(Line { start, value }).is_err() {
                        break;
                    }
                }
            });
        }
        self.child = Some(child);
        self.state = State::Running;
        self.starts += 1;
        Ok(start)
    }

    /// Writes one line to its stdin.
    pub fn send_line(&mut self, line: &str) -> Result<(), ProcError> {
        let err = |source| ProcError::Stdin {
            host: self.host.name.clone(),
            label: self.label.clone(),
            source,
        };
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(err(std::io::Error::other("stdin is closed")));
        };
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(err)
    }

    /// Every line printed since the last call.
    pub fn drain(&mut self) -> Vec<Line> {
        self.rx.try_iter().collect()
    }

    /// Waits at most `timeout` for the next line.
    pub fn next_line(&mut self, timeout: Duration) -> Option<Line> {
        self.rx.recv_timeout(timeout).ok()
    }

    fn signal(&mut self, sig: nix::sys::signal::Signal) -> Result<(), ProcError> {
        let Some(pid) = self.os_pid() else {
            return Err(ProcError::NotRunning {
                host: self.host.name.clone(),
                label: self.label.clone(),
            });
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).map_err(|errno| {
            ProcError::Signal {
                host: self.host.name.clone(),
                label: self.label.clone(),
                errno,
            }
        })
    }

    /// kill -9, and reaps it (bounded).
    pub fn kill9(&mut self) -> Result<(), ProcError> {
        if self.child.is_none() {
            return Ok(());
        }
        // SIGKILL acts on a stopped process too.
        let _ = self.signal(nix::sys::signal::Signal::SIGKILL);
        self.wait_exit(REAP_TIMEOUT)
    }

    /// SIGSTOP: the process freezes with its sockets open, as a host that
    /// hangs (or swaps) does.
    pub fn pause(&mut self) -> Result<(), ProcError> {
        self.signal(nix::sys::signal::Signal::SIGSTOP)?;
        self.state = State::Stopped;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self) -> Result<(), ProcError> {
        self.signal(nix::sys::signal::Signal::SIGCONT)?;
        self.state = State::Running;
        Ok(())
    }

    /// SIGTERM, then waits up to `grace` for it to exit, then kill -9.
    pub fn terminate(&mut self, grace: Duration) -> Result<(), ProcError> {
        if self.child.is_none() {
            return Ok(());
        }
        let _ = self.signal(nix::sys::signal::Signal::SIGCONT);
        let _ = self.signal(nix::sys::signal::Signal::SIGTERM);
        match self.wait_exit(grace) {
            Ok(()) => Ok(()),
            Err(ProcError::ExitTimeout { .. }) => self.kill9(),
            Err(e) => Err(e),
        }
    }

    /// Closes its stdin (the node example leaves the cluster cleanly on
    /// that) and waits up to `grace` for it to exit, then kill -9. Returns
    /// whether it exited by itself.
    pub fn close_stdin_and_wait(&mut self, grace: Duration) -> Result<bool, ProcError> {
        self.stdin = None;
        match self.wait_exit(grace) {
            Ok(()) => Ok(true),
            Err(ProcError::ExitTimeout { .. }) => self.kill9().map(|()| false),
            Err(e) => Err(e),
        }
    }

    /// Waits up to `timeout` for it to exit and reaps it.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(), ProcError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.reap_if_exited();
            if self.child.is_none() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ProcError::ExitTimeout {
                    host: self.host.name.clone(),
                    label: self.label.clone(),
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn reap_if_exited(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if !matches!(child.try_wait(), Ok(None)) {
                self.child = None;
                self.stdin = None;
                self.state = State::Down;
            }
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        // Never leave a process behind (the network's removal would kill it
        // too, but a process may outlive a network in a caller's code).
        let _ = self.kill9();
    }
}
