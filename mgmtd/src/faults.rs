//! Test-only fault control: with `testing: { fault_control: true }` the
//! daemon re-reads `DATA_DIR/faults` a few times a second and drops every
//! datagram to and from the peer addresses listed there (one `IP:PORT` per
//! line; `#` starts a comment; a missing or empty file blocks nothing).
//! End-to-end tests partition a fleet on loopback with it. It is refused
//! unless the configuration enables it, and has no use in production.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gc_core::runtime::Faults;

/// The file in the data directory that lists the blocked peers.
pub const FAULTS_FILE: &str = "faults";
/// How often the file is re-read.
const POLL: Duration = Duration::from_millis(100);

/// The blocked peers listed in `text`; a line that is not an address is
/// reported.
pub fn parse(text: &str) -> Result<Vec<SocketAddr>, String> {
    let mut peers = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let addr = line
            .parse()
            .map_err(|e| format!("line {}: expected IP:PORT, found {line:?}: {e}", n + 1))?;
        peers.push(addr);
    }
    Ok(peers)
}

/// Starts re-reading `DATA_DIR/faults` into the returned set, which the
/// runtime consults on every datagram.
pub fn start(data_dir: &Path) -> Faults {
    let faults = Faults::new();
    let path = data_dir.join(FAULTS_FILE);
    tracing::warn!(file = %path.display(), "test-only fault control is on: peers listed in the file are cut off");
    tokio::spawn(watch(path, faults.clone()));
    faults
}

async fn watch(path: PathBuf, faults: Faults) {
    let mut last: Option<String> = None;
    loop {
        // A few bytes: reading inline is cheaper than a blocking task.
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), "cannot read the fault file: {e}");
                String::new()
            }
        };
        if last.as_deref() != Some(text.as_str()) {
            match parse(&text) {
                Ok(peers) => {
                    tracing::info!(blocked = ?peers, "fault control: blocked peers changed");
                    faults.set_blocked(peers);
                }
                Err(e) => tracing::warn!(file = %path.display(), "fault file ignored: {e}"),
            }
            last = Some(text);
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_comments() {
        let peers = parse("# cut\n127.0.0.1:7000\n\n 127.0.0.1:7001 # b\n").unwrap();
        assert_eq!(peers.len(), 2);
        assert!(parse("nonsense").unwrap_err().contains("line 1"));
    }
}
