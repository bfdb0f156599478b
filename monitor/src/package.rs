//! `monitor package build DIR -o FILE` and `monitor package inspect FILE`:
//! packages made and read locally, with no server involved.

use std::path::Path;

use anyhow::Context;
use comfy_table::{presets, Table};
use packages::EntryKind;
use serde::Serialize;

use crate::{println_checked, Failure, Output};

#[derive(Serialize)]
struct Built<'a> {
    file: String,
    name: &'a str,
    version: String,
    size: u64,
    sha256: String,
}

/// Builds the package in `dir` into `out` and prints its digest.
pub(crate) fn build(dir: &Path, out: &Path, output: &Output) -> Result<u8, Failure> {
    let built = packages::build(dir, out)
        .with_context(|| format!("cannot build a package from {}", dir.display()))?;
    if output.json {
        let doc = Built {
            file: out.display().to_string(),
            name: &built.manifest.name,
            version: built.manifest.version.to_string(),
            size: built.size,
            sha256: built.sha256.to_string(),
        };
        println_checked(&serde_json::to_string_pretty(&doc).context("cannot encode")?)?;
    } else {
        crate::eprint_line(&format!(
            "built {} {} into {} ({})",
            built.manifest.name,
            built.manifest.version,
            out.display(),
            packages::format_bytes(built.size)
        ));
        // The form of sha256sum, so that `sha256sum -c` reads it.
        println_checked(&format!("{}  {}", built.sha256, out.display()))?;
    }
    Ok(0)
}

#[derive(Serialize)]
struct Inspected {
    file: String,
    sha256: String,
    size: u64,
    manifest: packages::Manifest,
    files: Vec<FileLine>,
}

#[derive(Serialize)]
struct FileLine {
    path: String,
    kind: &'static str,
    target: Option<String>,
    size: u64,
    mode: String,
}

/// Shows a package's manifest, files and digest.
pub(crate) fn inspect(file: &Path, output: &Output) -> Result<u8, Failure> {
    let inspection = packages::inspect(file)
        .with_context(|| format!("cannot inspect the package {}", file.display()))?;
    let files: Vec<FileLine> = inspection
        .files
        .iter()
        .map(|f| {
            let (kind, target) = match &f.kind {
                EntryKind::File => ("file", None),
                EntryKind::Directory => ("directory", None),
                EntryKind::Symlink(t) => ("symlink", Some(t.clone())),
                EntryKind::Hardlink(t) => ("hardlink", Some(t.clone())),
            };
            FileLine {
                path: f.path.clone(),
                kind,
                target,
                size: f.size,
                mode: format!("{:04o}", f.mode),
            }
        })
        .collect();
    if output.json {
        let doc = Inspected {
            file: file.display().to_string(),
            sha256: inspection.sha256.to_string(),
            size: inspection.size,
            manifest: inspection.manifest,
            files,
        };
        println_checked(&serde_json::to_string_pretty(&doc).context("cannot encode")?)?;
        return Ok(0);
    }
    let manifest = inspection
        .manifest
        .to_yaml()
        .context("cannot show the manifest")?;
    println_checked(&format!(
        "{}: {} {}, {}\nsha256 {}\n\nmanifest ({}):\n{}",
        file.display(),
        inspection.manifest.name,
        inspection.manifest.version,
        packages::format_bytes(inspection.size),
        inspection.sha256,
        packages::MANIFEST_FILE,
        manifest.trim_end()
    ))?;
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_header(vec!["mode", "size", "path"]);
    for f in &files {
        let path = match &f.target {
            Some(t) if f.kind == "symlink" => format!("{} -> {t}", f.path),
            Some(t) => format!("{} => {t}", f.path),
            None if f.kind == "directory" => format!("{}/", f.path),
            None => f.path.clone(),
        };
        table.add_row(vec![f.mode.clone(), f.size.to_string(), path]);
    }
    println_checked(&format!("\nfiles ({}):\n{table}", files.len()))?;
    Ok(0)
}
