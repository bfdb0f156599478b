//! Test packages for siminst: a source directory (manifest, scripts, an
//! incompressible payload) that `monitor package build` turns into a file,
//! and the installed packages a `monitor status` report lists.

use std::path::Path;
use std::time::{Duration, Instant};

/// Whether a daemon whose siminst staging directory is `staging`
/// (`DATA_DIR/siminst/staging`) has a package arriving: a receiver unpacks
/// as the chunks come, and the manifest is a package's first entry, so it
/// is there once the first chunk is.
pub fn package_arriving(staging: &Path) -> bool {
    std::fs::read_dir(staging)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("root/flotilla.yaml").exists())
}

/// Whether a receiver whose staging directory is `staging` has unpacked a
/// package file (of a [`PackageSource`], whose payload is noise) past
/// `offset` bytes. Not by the file's size: the unpacker reserves each
/// file's whole length (fallocate) before it writes, and the reserved
/// part reads as zeros, where 4 KiB of noise never are.
pub fn package_written_past(staging: &Path, offset: u64) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    fn written(path: &Path, offset: u64) -> bool {
        let mut block = [0u8; 4096];
        std::fs::File::open(path)
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(offset))?;
                f.read_exact(&mut block)
            })
            .is_ok_and(|()| block.iter().any(|&b| b != 0))
    }
    fn walk(dir: &Path, offset: u64, depth: usize) -> bool {
        depth > 0
            && std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path(), offset, depth - 1),
                    Ok(t) if t.is_file() => written(&e.path(), offset),
                    _ => false,
                })
    }
    std::fs::read_dir(staging)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| walk(&e.path().join("root"), offset, 8))
}

/// What a siminst origin logged when it was done serving a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginFigures {
    /// Bytes of chunks it multicast (re-sent ones included).
    pub chunk_bytes: u64,
    /// Bytes its group core put on the wire meanwhile.
    pub wire_bytes: u64,
}

/// The figures of the origin's last "the origin is done serving" line,
/// read from `log` (the daemon's log so far) every 50 ms for up to
/// `timeout`: the origin learns the last outcome from its group after the
/// monitor has it, so the line may come a moment after the monitor exits.
/// None if no such line came, or it lacks a figure.
pub fn await_origin_figures(log: impl Fn() -> String, timeout: Duration) -> Option<OriginFigures> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = log();
        if let Some(line) = text
            .lines()
            .rev()
            .find(|l| l.contains("the origin is done serving"))
        {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .and_then(|n| n.parse::<u64>().ok())
            };
            return Some(OriginFigures {
                chunk_bytes: field("chunk_bytes=")?,
                wire_bytes: field("wire_bytes=")?,
            });
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pseudo-random bytes that do not compress (an LCG: no dependency).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What a test package holds.
#[derive(Debug, Clone)]
pub struct PackageSource<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its version.
    pub version: &'a str,
    /// Manifest lines placed before `install:` (e.g. a `requirements:`
    /// block), each ending with a newline; empty for none.
    pub requirements: &'a str,
    /// The install script's text.
    pub install: &'a str,
    /// The manifest's `install_timeout` (e.g. `20s`).
    pub install_timeout: &'a str,
    /// How many bytes of noise `data.bin` holds.
    pub payload: usize,
}

impl PackageSource<'_> {
    /// Writes the package's directory: `flotilla.yaml`, `install.sh`,
    /// `uninstall.sh` and `data.bin`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("flotilla.yaml"),
            format!(
                "name: {}\nversion: {}\ndescription: test package\n{}install: install.sh\nuninstall: uninstall.sh\ninstall_timeout: {}\n",
                self.name, self.version, self.requirements, self.install_timeout
            ),
        )?;
        std::fs::write(dir.join("install.sh"), self.install)?;
        std::fs::write(dir.join("uninstall.sh"), "echo uninstalling\n")?;
        std::fs::write(
            dir.join("data.bin"),
            noise(self.payload, self.payload as u64),
        )
    }
}

/// The packages ("name version") each host of a `monitor --json status`
/// document lists, by host name, in the document's order.
pub fn packages_by_host(status: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    status["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let packages = h["packages"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{} {}",
                        p["name"].as_str().unwrap_or("?"),
                        p["version"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            (h["name"].as_str().unwrap_or("?").to_owned(), packages)
        })
        .collect()
}
