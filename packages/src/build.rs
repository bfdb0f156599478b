//! Building a package from a directory, and listing one.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, Header};

use crate::archive::{self, Kind};
use crate::digest::{HashingReader, HashingWriter, Sha256Digest};
use crate::manifest::{Manifest, ManifestError, MANIFEST_FILE, MAX_MANIFEST_BYTES};
use crate::paths::{self, PathProblem};
use crate::unpack::{Limits, UnpackError};

/// A package [`build`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltPackage {
    /// Its manifest.
    pub manifest: Manifest,
    /// The SHA-256 digest of the package file.
    pub sha256: Sha256Digest,
    /// The package file's size in bytes.
    pub size: u64,
}

/// What an entry of a package is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symlink, with its target.
    Symlink(String),
    /// A hardlink to an earlier file, with that file's path.
    Hardlink(String),
}

/// One entry of a package, as [`inspect`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// The path inside the package, normalized (`./a//b` is `a/b`; the root
    /// is the empty string).
    pub path: String,
    /// What the entry is.
    pub kind: EntryKind,
    /// Bytes of data (zero except for files).
    pub size: u64,
    /// Permission bits as stored in the archive.
    pub mode: u32,
}

/// What [`inspect`] found in a package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    /// The manifest.
    pub manifest: Manifest,
    /// Every entry, in archive order; the manifest is first.
    pub files: Vec<FileInfo>,
    /// The SHA-256 digest of the package file.
    pub sha256: Sha256Digest,
    /// The package file's size in bytes.
    pub size: u64,
}

/// Why [`build`] failed. The output file is not created (or is removed).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The directory has no `flotilla.yaml`, or it is not a regular file.
    #[error("{} has no {MANIFEST_FILE}; a package directory needs a manifest at its top", dir.display())]
    NoManifest {
        /// The package directory.
        dir: PathBuf,
    },
    /// The manifest is invalid.
    #[error("{}: {source}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: ManifestError,
    },
    /// The manifest names an install or uninstall script that is not a
    /// regular file in the directory.
    #[error("the manifest's {field} script `{script}` is not a regular file in {}", dir.display())]
    MissingScript {
        /// `install` or `uninstall`.
        field: &'static str,
        /// The path the manifest gives.
        script: String,
        /// The package directory.
        dir: PathBuf,
    },
    /// A file in the directory cannot go into a package: a device, FIFO or
    /// socket, a name that is not UTF-8 or has control characters, or a
    /// symlink that the unpacker would refuse.
    #[error("cannot package {}: {reason}", path.display())]
    Unpackageable {
        /// The file.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// The directory exceeds [`Limits::default`], so servers would refuse
    /// the package.
    #[error("the package would be refused by servers: {0}")]
    OverLimits(String),
    /// The output file is inside the package directory.
    #[error("the output file {} must be outside the package directory {}", out.display(), dir.display())]
    OutputInside {
        /// The output file.
        out: PathBuf,
        /// The package directory.
        dir: PathBuf,
    },
    /// Reading the directory or writing the package failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Why [`inspect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The file could not be opened or read.
    #[error("could not read {}: {source}", path.display())]
    Read {
        /// The package file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The archive is damaged, or has an entry that servers would refuse
    /// to unpack (with the default [`Limits`]).
    #[error("{}: {source}", path.display())]
    Archive {
        /// The package file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: UnpackError,
    },
    /// The first entry is not `flotilla.yaml`.
    #[error("{}: the first entry must be {MANIFEST_FILE}, found `{found}`", path.display())]
    NoManifest {
        /// The package file.
        path: PathBuf,
        /// The first entry's path, or `nothing` for an empty archive.
        found: String,
    },
    /// The manifest is invalid.
    #[error("{}: {source}", path.display())]
    Manifest {
        /// The package file.
        path: PathBuf,
        /// What is wrong with the manifest.
        #[source]
        source: ManifestError,
    },
    /// The manifest names a script that is not a file in the package.
    #[error("{}: the manifest's {field} script `{script}` is not a file in the package", path.display())]
    MissingScript {
        /// The package file.
        path: PathBuf,
        /// `install` or `uninstall`.
        field: &'static str,
        /// The path the manifest gives.
        script: String,
    },
}

/// Makes a [`BuildError::Io`] for `map_err`.
fn io<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> BuildError + 'p {
    move |source| BuildError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A file system entry to be archived.
struct Item {
    /// Path inside the package, `/`-separated.
    name: String,
    source: PathBuf,
    kind: ItemKind,
}

enum ItemKind {
    File { size: u64, executable: bool },
    Directory,
    Symlink(String),
}

/// Mode of a regular file in a package: only "executable or not" survives,
/// so a checkout's umask or file system does not change the digest.
fn file_mode(executable: bool) -> u32 {
    if executable {
        0o755
    } else {
        0o644
    }
}

/// Builds a package from `dir` into `out_file`.
///
/// `dir` must hold `flotilla.yaml` (valid, see [`Manifest::validate`]) and
/// the scripts it names. The archive has the manifest first, then every
/// other entry in byte order of its path (parents before children); owners
/// are 0, times are 0, modes are 0755 for directories and executables and
/// 0644 for other files, and the gzip header carries no time or name. So
/// the same directory contents always give the same digest.
///
/// Symlinks are stored as symlinks, and must satisfy the unpacker's rules;
/// hardlinked files are stored as separate copies. Devices, FIFOs and
/// sockets are refused. The package is written to `out_file` with a
/// `.partial` suffix first and renamed into place once complete and synced.
pub fn build(dir: &Path, out_file: &Path) -> Result<BuiltPackage, BuildError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    match fs::symlink_metadata(&manifest_path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            return Err(BuildError::NoManifest {
                dir: dir.to_owned(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BuildError::NoManifest {
                dir: dir.to_owned(),
            })
        }
        Err(e) => return Err(io("read", &manifest_path)(e)),
    }
    // Read once: what is parsed is exactly what is archived.
    let mut manifest_bytes = Vec::new();
    File::open(&manifest_path)
        .and_then(|f| {
            f.take(MAX_MANIFEST_BYTES + 1)
                .read_to_end(&mut manifest_bytes)
        })
        .map_err(io("read", &manifest_path))?;
    let manifest =
        Manifest::from_reader(&manifest_bytes[..]).map_err(|source| BuildError::Manifest {
            path: manifest_path.clone(),
            source,
        })?;
    let scripts = [
        ("install", Some(&manifest.install)),
        ("uninstall", manifest.uninstall.as_ref()),
    ];
    for (field, script) in scripts {
        if let Some(script) = script {
            let is_file = fs::symlink_metadata(dir.join(script)).is_ok_and(|m| m.is_file());
            if !is_file {
                return Err(BuildError::MissingScript {
                    field,
                    script: script.clone(),
                    dir: dir.to_owned(),
                });
            }
        }
    }

    let canonical_dir = fs::canonicalize(dir).map_err(io("resolve", dir))?;
    let out_parent = match out_file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let canonical_out_parent = fs::canonicalize(&out_parent).map_err(io("resolve", &out_parent))?;
    if canonical_out_parent.starts_with(&canonical_dir) {
        return Err(BuildError::OutputInside {
            out: out_file.to_owned(),
            dir: dir.to_owned(),
        });
    }

    let limits = Limits::default();
    let mut items = Vec::new();
    collect(dir, "", &limits, &mut items)?;
    if items.len() as u64 + 1 > limits.max_entries {
        return Err(BuildError::OverLimits(format!(
            "more than {} entries",
            limits.max_entries
        )));
    }
    let total: u64 = items
        .iter()
        .map(|i| match i.kind {
            ItemKind::File { size, .. } => size,
            _ => 0,
        })
        .fold(manifest_bytes.len() as u64, u64::saturating_add);
    if total > limits.max_bytes {
        return Err(BuildError::OverLimits(format!(
            "more than {} bytes of files",
            limits.max_bytes
        )));
    }

    let mut partial = out_file.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let result = write_package(&manifest_bytes, &items, &partial);
    match result {
        Ok((sha256, size)) => {
            fs::rename(&partial, out_file).map_err(|e| {
                let _ = fs::remove_file(&partial);
                io("rename into", out_file)(e)
            })?;
            Ok(BuiltPackage {
                manifest,
                sha256,
                size,
            })
        }
        Err(e) => {
            let _ = fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Lists `dir` recursively, children in byte order of their names, each
/// directory before what it holds. `prefix` is `dir`'s path in the package.
fn collect(
    dir: &Path,
    prefix: &str,
    limits: &Limits,
    items: &mut Vec<Item>,
) -> Result<(), BuildError> {
    let read_error = |source| BuildError::Io {
        action: "read directory",
        path: dir.to_owned(),
        source,
    };
    let mut children = Vec::new();
    for child in fs::read_dir(dir).map_err(read_error)? {
        let child = child.map_err(read_error)?;
        children.push(child);
    }
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let source = child.path();
        let unpackageable = |reason: String| BuildError::Unpackageable {
            path: source.clone(),
            reason,
        };
        let Some(file_name) = child.file_name().to_str().map(str::to_owned) else {
            return Err(unpackageable("the name is not UTF-8".to_owned()));
        };
        if prefix.is_empty() && file_name == MANIFEST_FILE {
            continue; // Written first, separately.
        }
        let name = if prefix.is_empty() {
            file_name
        } else {
            format!("{prefix}/{file_name}")
        };
        let components = paths::normalize(name.as_bytes(), limits.max_path_len).map_err(
            |problem: PathProblem| unpackageable(format!("its path in the package {problem}")),
        )?;
        let meta = fs::symlink_metadata(&source).map_err(|e| BuildError::Io {
            action: "read",
            path: source.clone(),
            source: e,
        })?;
        let file_type = meta.file_type();
        if file_type.is_dir() {
            items.push(Item {
                name: name.clone(),
                source: source.clone(),
                kind: ItemKind::Directory,
            });
            collect(&source, &name, limits, items)?;
        } else if file_type.is_file() {
            let executable = meta.permissions().mode() & 0o111 != 0;
            items.push(Item {
                name,
                source,
                kind: ItemKind::File {
                    size: meta.len(),
                    executable,
                },
            });
        } else if file_type.is_symlink() {
            let target = fs::read_link(&source).map_err(|e| BuildError::Io {
                action: "read the symlink",
                path: source.clone(),
                source: e,
            })?;
            let Some(target) = target.to_str().map(str::to_owned) else {
                return Err(unpackageable("the symlink target is not UTF-8".to_owned()));
            };
            let link_dir = &components[..components.len().saturating_sub(1)];
            paths::check_symlink_target(link_dir, target.as_bytes(), limits.max_path_len).map_err(
                |problem| unpackageable(format!("servers would refuse this symlink: {problem}")),
            )?;
            items.push(Item {
                name,
                source,
                kind: ItemKind::Symlink(target),
            });
        } else {
            return Err(unpackageable(
                "only files, directories and symlinks can be packaged".to_owned(),
            ));
        }
    }
    Ok(())
}

/// Writes the archive to `path` and returns its digest and size.
fn write_package(
    manifest: &[u8],
    items: &[Item],
    path: &Path,
) -> Result<(Sha256Digest, u64), BuildError> {
    let write_error = |source| BuildError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    };
    let file = File::create(path).map_err(write_error)?;
    let hashing = HashingWriter::new(BufWriter::new(file));
    // `GzEncoder::new` writes a header with no file name and time 0.
    let gz = GzEncoder::new(hashing, Compression::default());
    let mut tar = tar::Builder::new(gz);

    let mut header = file_header(false, manifest.len() as u64);
    tar.append_data(&mut header, MANIFEST_FILE, manifest)
        .map_err(write_error)?;
    for item in items {
        append(&mut tar, item).map_err(|e| match e {
            AppendError::Source(source) => BuildError::Io {
                action: "read",
                path: item.source.clone(),
                source,
            },
            AppendError::Output(source) => write_error(source),
        })?;
    }
    let gz = tar.into_inner().map_err(write_error)?;
    let hashing = gz.finish().map_err(write_error)?;
    let (buffered, sha256, size) = hashing.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| write_error(e.into_error()))?;
    file.sync_all().map_err(write_error)?;
    Ok((sha256, size))
}

enum AppendError {
    /// Reading the source file failed, or it changed size.
    Source(io::Error),
    /// Writing the archive failed.
    Output(io::Error),
}

/// A header with the fixed fields every entry shares: owner 0, time 0.
fn base_header(entry_type: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(entry_type);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

fn file_header(executable: bool, size: u64) -> Header {
    base_header(EntryType::Regular, file_mode(executable), size)
}

fn append<W: Write>(tar: &mut tar::Builder<W>, item: &Item) -> Result<(), AppendError> {
    match &item.kind {
        ItemKind::Directory => {
            let mut header = base_header(EntryType::Directory, 0o755, 0);
            tar.append_data(&mut header, &item.name, io::empty())
                .map_err(AppendError::Output)
        }
        ItemKind::File { size, executable } => {
            let mut header = file_header(*executable, *size);
            let file = File::open(&item.source).map_err(AppendError::Source)?;
            let mut exact = ExactReader {
                inner: file.take(*size),
                left: *size,
                error: None,
            };
            let result = tar.append_data(&mut header, &item.name, &mut exact);
            match (exact.error, result) {
                (Some(source_error), _) => Err(AppendError::Source(source_error)),
                (None, result) => result.map_err(AppendError::Output),
            }
        }
        ItemKind::Symlink(target) => {
            let mut header = base_header(EntryType::Symlink, 0o777, 0);
            tar.append_link(&mut header, &item.name, target)
                .map_err(AppendError::Output)
        }
    }
}

/// Reads exactly the size the header announced; a file that shrank while
/// being archived is an error instead of a corrupt archive.
struct ExactReader<R> {
    inner: R,
    left: u64,
    /// A source-side error, kept apart from output errors.
    error: Option<io::Error>,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let error = match self.inner.read(buf) {
            Ok(0) if self.left > 0 && !buf.is_empty() => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being packaged",
            ),
            Ok(n) => {
                self.left -= n as u64;
                return Ok(n);
            }
            Err(e) => e,
        };
        // Keep the real error for the report; tar only learns that the
        // source failed.
        self.error = Some(error);
        Err(io::Error::other("reading the source file failed"))
    }
}

/// How [`inspect`]'s walk over the archive stops early.
enum InspectStop {
    Archive(UnpackError),
    Other(InspectError),
}

impl From<UnpackError> for InspectStop {
    fn from(error: UnpackError) -> Self {
        InspectStop::Archive(error)
    }
}

/// Lists a package: its manifest, every entry and its digest.
///
/// The whole archive is checked the way servers check it before unpacking
/// (with the default [`Limits`]): a package [`inspect`] accepts is one the
/// servers will unpack, unless they run with tighter limits. The first entry
/// must be `flotilla.yaml`, and the scripts it names must be files in the
/// package.
pub fn inspect(path: &Path) -> Result<Inspection, InspectError> {
    let read_error = |source| InspectError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut hashing = HashingReader::new(io::BufReader::new(file));
    let mut files: Vec<FileInfo> = Vec::new();
    let mut manifest: Option<Manifest> = None;

    let walked = archive::walk(&mut hashing, &Limits::default(), |entry, data| {
        let normalized = entry.path.join("/");
        if files.is_empty() {
            if entry.kind != Kind::Regular || normalized != MANIFEST_FILE {
                return Err(InspectStop::Other(InspectError::NoManifest {
                    path: path.to_owned(),
                    found: entry.display.clone(),
                }));
            }
            let parsed = Manifest::from_reader(data).map_err(|source| {
                InspectStop::Other(InspectError::Manifest {
                    path: path.to_owned(),
                    source,
                })
            })?;
            manifest = Some(parsed);
        }
        let link =
            || String::from_utf8_lossy(entry.link.as_deref().unwrap_or_default()).into_owned();
        let kind = match entry.kind {
            Kind::Regular => EntryKind::File,
            Kind::Directory => EntryKind::Directory,
            Kind::Symlink => EntryKind::Symlink(link()),
            Kind::Hardlink => EntryKind::Hardlink(link()),
        };
        files.push(FileInfo {
            path: normalized,
            kind,
            size: entry.size,
            mode: entry.mode,
        });
        Ok(())
    });
    match walked {
        Ok(_) => {}
        Err(InspectStop::Archive(source)) => {
            return Err(InspectError::Archive {
                path: path.to_owned(),
                source,
            })
        }
        Err(InspectStop::Other(error)) => return Err(error),
    }
    let (sha256, size) = hashing.drain().map_err(read_error)?;
    let Some(manifest) = manifest else {
        return Err(InspectError::NoManifest {
            path: path.to_owned(),
            found: "nothing".to_owned(),
        });
    };
    let scripts = [
        ("install", Some(&manifest.install)),
        ("uninstall", manifest.uninstall.as_ref()),
    ];
    for (field, script) in scripts {
        if let Some(script) = script {
            // Validated by the manifest: a relative path without `..`.
            let wanted = paths::normalize(script.as_bytes(), usize::MAX)
                .unwrap_or_default()
                .join("/");
            if !files
                .iter()
                .any(|f| f.path == wanted && f.kind == EntryKind::File)
            {
                return Err(InspectError::MissingScript {
                    path: path.to_owned(),
                    field,
                    script: script.clone(),
                });
            }
        }
    }
    Ok(Inspection {
        manifest,
        files,
        sha256,
        size,
    })
}

#[cfg(test)]
mod tests;
