//! Test packages for siminst: a source directory (manifest, scripts, an
//! incompressible payload) that `monitor package build` turns into a file,
//! and the installed packages a `monitor status` report lists.

use std::path::Path;

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
