//! Running the system tools (`ip`, `nft`, `tc`) with a bound on every wait.

use super::VlanError;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one `ip`/`nft`/`tc` invocation may take. They answer in
/// milliseconds; a hung one (a wedged netlink socket) must not hang a test.
pub(crate) const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `program args...`, waits at most [`TOOL_TIMEOUT`] (then kills it),
/// and returns its stdout when it exits with status 0. `stdin` is written to
/// the tool first (for `nft -f -`).
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, VlanError> {
    let line = || {
        let mut s = program.to_owned();
        for a in args {
            s.push(' ');
            s.push_str(a);
        }
        s
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| VlanError::Spawn {
            command: line(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        // A script of a few lines fits in the pipe buffer, so this does not
        // block on a tool that has not started reading yet. Dropping the pipe
        // closes it so the tool sees the end of its input.
        let _ = pipe.write_all(text.as_bytes());
    }
    // Read both pipes on threads so a chatty tool cannot block on a full pipe
    // while we wait for it to exit.
    let out = child.stdout.take().map(reader);
    let err = child.stderr.take().map(reader);
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(VlanError::ToolTimeout {
                    command: line(),
                    waited: TOOL_TIMEOUT,
                });
            }
            Err(source) => {
                return Err(VlanError::Spawn {
                    command: line(),
                    source,
                })
            }
        }
    };
    let stdout = out.map(join).unwrap_or_default();
    let stderr = err.map(join).unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(VlanError::Tool {
            command: line(),
            status: status.code(),
            stderr: stderr.trim().to_owned(),
        })
    }
}

fn reader<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

fn join(h: std::thread::JoinHandle<String>) -> String {
    h.join().unwrap_or_default()
}

/// `ip args...`.
pub(crate) fn ip(args: &[&str]) -> Result<String, VlanError> {
    run("ip", args, None)
}

/// True when `program` can be started (`program --version`/`-V` exits 0).
pub(crate) fn tool_works(program: &str, version_flag: &str) -> bool {
    run(program, &[version_flag], None).is_ok()
}
