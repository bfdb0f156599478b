//! The state of this server and its host, for `monitor status`.
//!
//! Host figures come from `/proc` and `statvfs`; each is `None` where the
//! system does not give it, rather than an error: a status answer is worth
//! having without them.

use std::path::Path;
use std::time::Duration;

use flotilla_client::message::{Disk, HostStatus, Memory, ViewSummary};
use tokio::time::Instant;

use crate::group::MemberId;

/// What the server knows that goes into its status.
#[derive(Debug)]
pub struct StatusInput<'a> {
    /// Its host name.
    pub name: &'a str,
    /// Its member id.
    pub me: MemberId,
    /// When it started.
    pub started: Instant,
    /// Its data directory (the disk measured).
    pub data_dir: &'a Path,
    /// The view's id.
    pub view_id: &'a str,
    /// M.
    pub members: &'a [String],
    /// The working directory.
    pub cwd: &'a Path,
}

/// This server's status now.
pub fn host_status(input: &StatusInput<'_>) -> HostStatus {
    HostStatus {
        name: input.name.to_owned(),
        node: input.me.node,
        incarnation: input.me.incarnation,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime: input.started.elapsed(),
        host_uptime: host_uptime(),
        load: load(),
        memory: memory(),
        disk: disk(input.data_dir),
        view: ViewSummary {
            id: input.view_id.to_owned(),
            members: input.members.to_vec(),
        },
        cwd: input.cwd.display().to_string(),
        maps: Vec::new(),
        packages: Vec::new(),
    }
}

/// Reads a small file of `/proc` (they are all far below this bound).
fn read_proc(path: &str) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(64 * 1024)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

fn host_uptime() -> Option<Duration> {
    let text = read_proc("/proc/uptime")?;
    let seconds: f64 = text.split_whitespace().next()?.parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

fn load() -> Option<[f64; 3]> {
    let text = read_proc("/proc/loadavg")?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

fn memory() -> Option<Memory> {
    let text = read_proc("/proc/meminfo")?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    };
    Some(Memory {
        total: field("MemTotal:")?,
        available: field("MemAvailable:")?,
    })
}

fn disk(dir: &Path) -> Option<Disk> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    let block = stat.fragment_size();
    Some(Disk {
        path: dir.display().to_string(),
        free: stat.blocks_available().saturating_mul(block),
        total: stat.blocks().saturating_mul(block),
    })
}
