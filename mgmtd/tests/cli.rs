//! The `mgmtd` binary: `keygen`, and the checks made before serving.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn mgmtd(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_mgmtd"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_config(dir: &Path, key: &Path) -> Result<std::path::PathBuf, std::io::Error> {
    write_named_config(dir, "mgmtd.yaml", key, "state", "")
}

/// A configuration file `file` in `dir` on a free port, with `data_dir` and
/// `extra` lines.
fn write_named_config(
    dir: &Path,
    file: &str,
    key: &Path,
    data_dir: &str,
    extra: &str,
) -> Result<std::path::PathBuf, std::io::Error> {
    let path = dir.join(file);
    let port = flotilla_client::loopback::free_port(flotilla_client::loopback::Protocol::Udp)?;
    std::fs::write(
        &path,
        format!(
            "name: test-1\nlisten: 127.0.0.1:{port}\ncluster_key: {}\ndata_dir: {data_dir}\n{extra}",
            key.display()
        ),
    )?;
    Ok(path)
}

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() -> TestResult {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("cluster.key");
    let key_arg = key.to_str().ok_or("path")?;

    let output = mgmtd(&["keygen", key_arg])?;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&key)?;
    assert_eq!(text.len(), 65);

    let output = mgmtd(&["keygen", key_arg])?;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        format!("mgmtd: error: {} already exists; refusing to overwrite a cluster key (remove it first to replace it, then give the new key to every host of the fleet)\n", key.display())
    );
    assert_eq!(std::fs::read_to_string(&key)?, text);
    Ok(())
}

#[test]
fn usage_errors_exit_2() -> TestResult {
    assert_eq!(mgmtd(&[])?.status.code(), Some(2));
    assert_eq!(
        mgmtd(&["--config", "x", "--log-level", "loud"])?
            .status
            .code(),
        Some(2)
    );
    assert_eq!(mgmtd(&["keygen"])?.status.code(), Some(2));
    Ok(())
}

#[test]
fn a_bad_configuration_is_reported_with_file_and_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("mgmtd.yaml");
    std::fs::write(&config, "name: a\nexec:\n  timeout: thirty\n")?;
    let output = mgmtd(&["--config", config.to_str().ok_or("path")?])?;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        format!(
            "mgmtd: error: {}: exec.timeout: expected a duration like \"30s\", found \"thirty\" (line 3, column 12)\n",
            config.display()
        )
    );
    Ok(())
}

#[test]
fn a_key_open_to_others_or_missing_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("cluster.key");
    let config = write_config(dir.path(), &key)?;
    let config_arg = config.to_str().ok_or("path")?;

    let output = mgmtd(&["--config", config_arg])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).ends_with(&format!(
            "mgmtd: error: cluster key file {k} does not exist; create one with `mgmtd keygen {k}` and copy it to every host of the fleet\n",
            k = key.display()
        )),
        "{}",
        stderr(&output)
    );

    assert!(mgmtd(&["keygen", key.to_str().ok_or("path")?])?
        .status
        .success());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
    let output = mgmtd(&["--config", config_arg])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).ends_with(&format!(
            "mgmtd: error: cluster key file {k} is open to group or others (mode 0644); fix it with `chmod 600 {k}`\n",
            k = key.display()
        )),
        "{}",
        stderr(&output)
    );
    Ok(())
}

#[test]
fn the_server_prepares_its_state_and_stops_on_sigterm() -> TestResult {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("cluster.key");
    assert!(mgmtd(&["keygen", key.to_str().ok_or("path")?])?
        .status
        .success());
    let config = write_config(dir.path(), &key)?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mgmtd"))
        .args([
            "--config",
            config.to_str().ok_or("path")?,
            "--log-level",
            "info",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    let log = child.stderr.take().ok_or("no stderr")?;
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // "mgmtd ready" comes once the signal handlers are in place.
    let ready = loop {
        match lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.contains("mgmtd ready") => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    };
    if !ready {
        child.kill()?;
        child.wait()?;
        return Err("mgmtd did not get ready".into());
    }
    // The data directory, relative to the configuration, with the job store.
    assert!(dir.path().join("state/jobs.log").exists());
    let state_mode = std::fs::metadata(dir.path().join("state"))?
        .permissions()
        .mode();
    assert_eq!(state_mode & 0o777, 0o700);

    // A second daemon on the same data directory, or on the same client
    // socket, is refused before it touches anything of the first.
    let socket = dir.path().join("state/mgmtd.sock");
    let same_dir = write_named_config(dir.path(), "same-dir.yaml", &key, "state", "")?;
    let second = mgmtd(&["--config", same_dir.to_str().ok_or("path")?])?;
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    let message = format!(
        "data_dir {} is in use by another mgmtd (pid {pid})",
        dir.path().join("state").display()
    );
    assert!(stderr(&second).contains(&message), "{}", stderr(&second));
    let same_socket = write_named_config(
        dir.path(),
        "same-socket.yaml",
        &key,
        "other-state",
        &format!("client:\n  socket: {}\n", socket.display()),
    )?;
    let third = mgmtd(&["--config", same_socket.to_str().ok_or("path")?])?;
    assert_eq!(third.status.code(), Some(1), "{}", stderr(&third));
    assert!(
        stderr(&third).contains("another server is listening on"),
        "{}",
        stderr(&third)
    );
    assert!(socket.exists(), "the first daemon's socket was removed");
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;

    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            return Err("mgmtd did not stop on SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("SIGTERM: shutting down")),
        "{rest:?}"
    );
    reader.join().map_err(|_| "log reader panicked")?;
    Ok(())
}

#[test]
fn example_config_prints_the_commented_example() -> TestResult {
    let output = mgmtd(&["example-config"])?;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout)?;
    for key in [
        "name:",
        "listen:",
        "cluster_key:",
        "data_dir:",
        "# multicast:",
    ] {
        assert!(text.contains(key), "{key} missing from:\n{text}");
    }
    let help = String::from_utf8(mgmtd(&["--help"])?.stdout)?;
    assert!(help.contains("mgmtd example-config"), "{help}");
    Ok(())
}
