//! The safe unpacker: a package archive into an empty staging directory,
//! with nothing created outside it.
//!
//! Every path is checked lexically first ([`crate::archive`]), then created
//! relative to directory file descriptors: each parent is opened with
//! `O_DIRECTORY | O_NOFOLLOW` starting from the staging root, and files are
//! created with `O_CREAT | O_EXCL | O_NOFOLLOW`. No path is ever resolved
//! through a symlink, whether the archive made it or it was there before,
//! and nothing that exists is overwritten.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{linkat, symlinkat};

use crate::archive::{self, ArchiveEntry, Kind};
use crate::digest::{self, HashingBufReader, Sha256Digest, VerifyError};
use crate::paths::{self, SymlinkProblem};

/// Bounds on what [`unpack`] accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of file data in total (the sum of regular files' sizes).
    pub max_bytes: u64,
    /// Most entries (files, directories, links).
    pub max_entries: u64,
    /// Longest path of an entry or link target, in bytes.
    pub max_path_len: usize,
    /// Keep setuid, setgid and sticky bits from the archive. Off by default:
    /// they are stripped.
    pub allow_special_bits: bool,
}

impl Default for Limits {
    /// 2 GiB of data, 100 000 entries, paths up to 1024 bytes, no
    /// setuid/setgid/sticky bits.
    fn default() -> Self {
        Limits {
            max_bytes: 2 << 30,
            max_entries: 100_000,
            max_path_len: 1024,
            allow_special_bits: false,
        }
    }
}

impl Limits {
    /// The mode a directory gets: the archive's permission bits without
    /// world-write (and without setuid/setgid/sticky unless allowed), always
    /// with owner read, write and search so unpacking and cleaning up work.
    fn dir_mode(&self, mode: u32) -> Mode {
        Mode::from_bits_truncate(self.mask(mode) | 0o700)
    }

    /// The mode a file gets: the archive's permission bits without
    /// world-write (and without setuid/setgid/sticky unless allowed).
    fn file_mode(&self, mode: u32) -> Mode {
        Mode::from_bits_truncate(self.mask(mode))
    }

    fn mask(&self, mode: u32) -> u32 {
        let keep = if self.allow_special_bits {
            0o7775
        } else {
            0o0775
        };
        mode & keep
    }
}

/// What [`unpack`] created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unpacked {
    /// The staging root everything is in.
    pub root: PathBuf,
    /// Regular files created.
    pub files: u64,
    /// Directories created, including ones implied by file paths.
    pub directories: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hardlinks created.
    pub hardlinks: u64,
    /// Bytes of file data written.
    pub bytes: u64,
}

/// Why [`unpack`] refused an archive or failed. Except for
/// [`StagingNotEmpty`](UnpackError::StagingNotEmpty) and
/// [`StagingUnusable`](UnpackError::StagingUnusable), which happen before
/// anything is created, the staging directory has been emptied again when
/// this is returned (or [`Cleanup`](UnpackError::Cleanup) says why not).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The staging directory already has something in it. Unpacking only
    /// goes into an empty directory, so that cleaning up after a failure
    /// removes exactly what was unpacked.
    #[error("staging directory {} is not empty; remove its contents or use a fresh one", path.display())]
    StagingNotEmpty {
        /// The staging directory.
        path: PathBuf,
    },
    /// The staging directory could not be created or opened, or is a
    /// symlink or not a directory.
    #[error("cannot use {} as the staging directory: {source}", path.display())]
    StagingUnusable {
        /// The staging directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The data is not a gzip-compressed tar, or it is damaged or
    /// truncated. Fetch the package again and check its digest.
    #[error("the package archive is damaged or not a gzip-compressed tar: {0}")]
    Malformed(#[source] io::Error),
    /// An entry's path is absolute.
    #[error("refusing archive entry `{path}`: the path is absolute")]
    AbsolutePath {
        /// The entry's path as written.
        path: String,
    },
    /// An entry's path has a `..` component.
    #[error("refusing archive entry `{path}`: the path contains a `..` component")]
    ParentComponent {
        /// The entry's path as written.
        path: String,
    },
    /// An entry's path or link target is longer than
    /// [`Limits::max_path_len`].
    #[error("refusing archive entry `{path}`: the path is {len} bytes long, more than the limit of {max}")]
    PathTooLong {
        /// The entry's path as written (shortened).
        path: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An entry's path is unusable for another reason: empty, not UTF-8,
    /// control characters, a component over 255 bytes, a file named like a
    /// directory.
    #[error("refusing archive entry `{path}`: the path {reason}")]
    BadPath {
        /// The entry's path as written.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A symlink's target is absolute or may resolve outside the staging
    /// root.
    #[error("refusing symlink `{path}` -> `{target}`: {problem}")]
    SymlinkEscape {
        /// The symlink's path.
        path: String,
        /// Its target as written.
        target: String,
        /// What is wrong with the target.
        problem: SymlinkProblem,
    },
    /// A hardlink's target is absolute or has a `..` component (hardlink
    /// targets are paths from the archive root).
    #[error("refusing hardlink `{path}` -> `{target}`: the target {reason}")]
    HardlinkEscape {
        /// The hardlink's path.
        path: String,
        /// Its target as written.
        target: String,
        /// What is wrong with the target.
        reason: String,
    },
    /// A hardlink's target is not a regular file unpacked earlier from the
    /// same archive.
    #[error("refusing hardlink `{path}` -> `{target}`: the target is not a regular file earlier in the archive")]
    HardlinkTargetMissing {
        /// The hardlink's path.
        path: String,
        /// Its target as written.
        target: String,
    },
    /// A device node or FIFO.
    #[error("refusing archive entry `{path}`: packages may not contain a {kind}")]
    SpecialFile {
        /// The entry's path.
        path: String,
        /// `character device`, `block device` or `FIFO`.
        kind: &'static str,
    },
    /// An entry type this unpacker does not handle (sparse files, unknown
    /// types, PAX size overrides).
    #[error("refusing archive entry `{path}`: unsupported {kind}")]
    UnsupportedEntry {
        /// The entry's path.
        path: String,
        /// What it is.
        kind: String,
    },
    /// An entry's path goes through a symlink created earlier. Nothing is
    /// ever written through a symlink.
    #[error("refusing archive entry `{path}`: `{symlink}` is a symlink, and nothing is written through symlinks")]
    ThroughSymlink {
        /// The entry's path.
        path: String,
        /// The symlink on the way.
        symlink: String,
    },
    /// An entry's path goes through something that is not a directory.
    #[error("refusing archive entry `{path}`: `{existing}` is not a directory")]
    NotADirectory {
        /// The entry's path.
        path: String,
        /// The non-directory on the way.
        existing: String,
    },
    /// An entry names something that already exists (a duplicate entry,
    /// or a file over a symlink or directory). Nothing is overwritten.
    #[error(
        "refusing archive entry `{path}`: it already exists (duplicate entries are not allowed)"
    )]
    AlreadyExists {
        /// The entry's path.
        path: String,
    },
    /// The files add up to more than [`Limits::max_bytes`].
    #[error("the package unpacks to more than {max} bytes, the limit")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// The archive has more than [`Limits::max_entries`] entries.
    #[error("the package has more than {max} entries, the limit")]
    TooManyEntries {
        /// The limit.
        max: u64,
    },
    /// A PAX extended header is larger than this unpacker reads.
    #[error("the package has a {size}-byte PAX header; at most {max} bytes are accepted")]
    ExtensionTooLarge {
        /// The header's size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Creating or writing something in the staging directory failed (for
    /// example, the disk is full).
    #[error("could not {action} `{path}` in the staging directory: {source}")]
    Io {
        /// What was being done: `create`, `write`, ...
        action: &'static str,
        /// The entry's path.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Unpacking failed, and removing what had been unpacked failed too:
    /// the staging directory is not empty and needs a look.
    #[error("{original}; also, cleaning up staging directory {} failed: {source}", path.display())]
    Cleanup {
        /// Why unpacking failed.
        original: Box<UnpackError>,
        /// The staging directory.
        path: PathBuf,
        /// Why cleaning up failed.
        #[source]
        source: io::Error,
    },
}

/// Unpacks the gzip-compressed tar read from `archive` into `staging_root`.
///
/// `staging_root` must be an empty directory (it is created, mode 0700, if
/// it does not exist; its parent must exist) and not a symlink. Nothing is
/// created outside it: see [`UnpackError`] for everything that is refused.
/// Modes come from the archive, filtered by [`Limits`]; owners and times do
/// not (everything belongs to the caller and has the current time).
///
/// On any error, everything created is removed and `staging_root` is left
/// empty.
pub fn unpack<R: Read>(
    archive: R,
    staging_root: &Path,
    limits: &Limits,
) -> Result<Unpacked, UnpackError> {
    unpack_buffered(
        std::io::BufReader::with_capacity(archive::READ_BUF, archive),
        staging_root,
        limits,
    )
}

/// [`unpack`] from a reader that buffers itself, such as a package that
/// arrives in chunks: the decompressor reads its buffer in place instead of
/// copying it into a buffer of its own. The same checks, the same cleanup
/// on error.
///
/// Unpacking is only safe as far as the staging root goes: data whose
/// digest is not yet verified may be unpacked, but nothing in the staging
/// root may be used (scripts run, files moved into place) before the digest
/// of the whole archive matched.
pub fn unpack_buffered<R: BufRead>(
    archive: R,
    staging_root: &Path,
    limits: &Limits,
) -> Result<Unpacked, UnpackError> {
    let root = open_staging_root(staging_root)?;
    let mut state = State {
        root,
        limits,
        regular_files: BTreeSet::new(),
        unpacked: Unpacked {
            root: staging_root.to_owned(),
            files: 0,
            directories: 0,
            symlinks: 0,
            hardlinks: 0,
            bytes: 0,
        },
        buf: Vec::new(),
    };
    match archive::walk_buffered(archive, limits, |entry, data| state.apply(entry, data)) {
        Ok(_) => Ok(state.unpacked),
        Err(error) => match empty_dir(staging_root) {
            Ok(()) => Err(error),
            Err(source) => Err(UnpackError::Cleanup {
                original: Box::new(error),
                path: staging_root.to_owned(),
                source,
            }),
        },
    }
}

/// Why [`unpack_verified`] failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifiedUnpackError {
    /// The archive's digest is not the expected one (whatever the unpacker
    /// made of it), or reading it to its end failed. Nothing unpacked is
    /// left.
    #[error(transparent)]
    Digest(#[from] VerifyError),
    /// The digest matched, but the unpacker refused the archive or failed;
    /// see [`UnpackError`] for what is left.
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// The digest did not match, and emptying the staging directory of what
    /// had been unpacked failed: it needs a look.
    #[error("{original}; also, cleaning up staging directory {} failed: {source}", path.display())]
    Cleanup {
        /// The mismatch.
        original: VerifyError,
        /// The staging directory.
        path: PathBuf,
        /// Why cleaning up failed.
        #[source]
        source: io::Error,
    },
}

/// [`unpack_buffered`] in the same pass as checking the SHA-256 digest of
/// the whole archive, for data that must not be read twice (a package
/// arriving over the network): hashes every byte as the unpacker takes it,
/// reads `archive` to its end after the archive's last entry, and checks
/// the digest against `expected` before returning.
///
/// The digest comes first: a mismatch is reported as such whatever the
/// unpacker made of the data, and empties the staging root. Only `Ok` says
/// the staging root holds the expected package; nothing in it may be used
/// (scripts run, files moved into place) before that.
pub fn unpack_verified<R: BufRead>(
    archive: R,
    staging_root: &Path,
    limits: &Limits,
    expected: &Sha256Digest,
) -> Result<Unpacked, VerifiedUnpackError> {
    let mut hashing = HashingBufReader::new(archive);
    let unpacked = unpack_buffered(&mut hashing, staging_root, limits);
    if let Err(e @ (UnpackError::StagingNotEmpty { .. } | UnpackError::StagingUnusable { .. })) =
        unpacked
    {
        // Refused before anything was unpacked: the directory is not ours
        // to empty.
        return Err(e.into());
    }
    let verified = hashing
        .drain()
        .map_err(|source| VerifyError::Read {
            what: "the package data".to_owned(),
            source,
        })
        .and_then(|(actual, size)| digest::check(expected, actual, size));
    match (verified, unpacked) {
        (Ok(()), unpacked) => Ok(unpacked?),
        // The unpacker emptied the staging root on its error.
        (Err(mismatch), Err(_)) => Err(mismatch.into()),
        (Err(mismatch), Ok(_)) => match empty_dir(staging_root) {
            Ok(()) => Err(mismatch.into()),
            Err(source) => Err(VerifiedUnpackError::Cleanup {
                original: mismatch,
                path: staging_root.to_owned(),
                source,
            }),
        },
    }
}

fn open_staging_root(path: &Path) -> Result<OwnedFd, UnpackError> {
    let unusable = |source| UnpackError::StagingUnusable {
        path: path.to_owned(),
        source,
    };
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(unusable(e)),
    }
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| unusable(io::Error::from(e)))?;
    let mut contents = fs::read_dir(path).map_err(unusable)?;
    if contents.next().is_some() {
        return Err(UnpackError::StagingNotEmpty {
            path: path.to_owned(),
        });
    }
    Ok(fd)
}

/// Removes everything inside `dir`, never following symlinks.
fn empty_dir(dir: &Path) -> io::Result<()> {
    for child in fs::read_dir(dir)? {
        let child = child?;
        if child.file_type()?.is_dir() {
            fs::remove_dir_all(child.path())?;
        } else {
            fs::remove_file(child.path())?;
        }
    }
    Ok(())
}

struct State<'a> {
    root: OwnedFd,
    limits: &'a Limits,
    /// Regular files unpacked so far: the only valid hardlink targets.
    regular_files: BTreeSet<Vec<String>>,
    unpacked: Unpacked,
    /// [`copy_exact`]'s buffer, kept from file to file.
    buf: Vec<u8>,
}

fn io_error(action: &'static str, path: &str, errno: Errno) -> UnpackError {
    UnpackError::Io {
        action,
        path: path.to_owned(),
        source: io::Error::from(errno),
    }
}

impl State<'_> {
    fn apply(&mut self, entry: &ArchiveEntry, data: &mut dyn Read) -> Result<(), UnpackError> {
        match entry.kind {
            Kind::Directory => {
                if entry.path.is_empty() {
                    return Ok(()); // `./`: the staging root itself.
                }
                let dir = self.open_dir(entry, &entry.path, true)?;
                fchmod(&dir, self.limits.dir_mode(entry.mode))
                    .map_err(|e| io_error("set the mode of", &entry.display, e))
            }
            Kind::Regular => self.create_file(entry, data),
            Kind::Symlink => self.create_symlink(entry),
            Kind::Hardlink => self.create_hardlink(entry),
        }
    }

    /// Opens (creating if asked) the directory at `components`, each step
    /// with `O_NOFOLLOW`, so no symlink is ever followed.
    fn open_dir(
        &mut self,
        entry: &ArchiveEntry,
        components: &[String],
        create: bool,
    ) -> Result<OwnedFd, UnpackError> {
        let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut current = self.root.try_clone().map_err(|e| UnpackError::Io {
            action: "open",
            path: entry.display.clone(),
            source: e,
        })?;
        for (depth, name) in components.iter().enumerate() {
            let next = match openat(&current, name.as_str(), dir_flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    mkdirat(&current, name.as_str(), Mode::S_IRWXU)
                        .map_err(|e| io_error("create", &entry.display, e))?;
                    let fd = openat(&current, name.as_str(), dir_flags, Mode::empty())
                        .map_err(|e| io_error("open", &entry.display, e))?;
                    fchmod(&fd, self.limits.dir_mode(0o755))
                        .map_err(|e| io_error("set the mode of", &entry.display, e))?;
                    self.unpacked.directories += 1;
                    fd
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let on_the_way = components[..=depth].join("/");
                    let is_symlink = fstatat(&current, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                        .map(|st| {
                            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
                        })
                        .unwrap_or(false);
                    return Err(if is_symlink {
                        UnpackError::ThroughSymlink {
                            path: entry.display.clone(),
                            symlink: on_the_way,
                        }
                    } else {
                        UnpackError::NotADirectory {
                            path: entry.display.clone(),
                            existing: on_the_way,
                        }
                    });
                }
                Err(e) => return Err(io_error("open", &entry.display, e)),
            };
            current = next;
        }
        Ok(current)
    }

    /// The directory that will hold `entry`, and the entry's own name.
    fn parent<'e>(&mut self, entry: &'e ArchiveEntry) -> Result<(OwnedFd, &'e str), UnpackError> {
        let Some((name, parents)) = entry.path.split_last() else {
            // The archive walker never hands over an empty path for these.
            return Err(UnpackError::BadPath {
                path: entry.display.clone(),
                reason: "names the root itself".to_owned(),
            });
        };
        Ok((self.open_dir(entry, parents, true)?, name.as_str()))
    }

    fn create_file(
        &mut self,
        entry: &ArchiveEntry,
        data: &mut dyn Read,
    ) -> Result<(), UnpackError> {
        let (parent, name) = self.parent(entry)?;
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(&parent, name, flags, Mode::S_IRUSR | Mode::S_IWUSR) {
            Ok(fd) => fd,
            Err(Errno::EEXIST) => {
                return Err(UnpackError::AlreadyExists {
                    path: entry.display.clone(),
                })
            }
            Err(e) => return Err(io_error("create", &entry.display, e)),
        };
        // Counted at once, so a failure below still leaves a correct tally
        // of what cleanup removes.
        self.unpacked.files += 1;
        let mut file = File::from(fd);
        reserve(&file, entry)?;
        let written = copy_exact(data, &mut file, entry, &mut self.buf)?;
        self.unpacked.bytes += written;
        fchmod(file.as_fd(), self.limits.file_mode(entry.mode))
            .map_err(|e| io_error("set the mode of", &entry.display, e))?;
        self.regular_files.insert(entry.path.clone());
        Ok(())
    }

    fn create_symlink(&mut self, entry: &ArchiveEntry) -> Result<(), UnpackError> {
        let target = entry.link.as_deref().unwrap_or_default();
        let link_dir = &entry.path[..entry.path.len().saturating_sub(1)];
        paths::check_symlink_target(link_dir, target, self.limits.max_path_len).map_err(
            |problem| UnpackError::SymlinkEscape {
                path: entry.display.clone(),
                target: paths::display_path(target),
                problem,
            },
        )?;
        let (parent, name) = self.parent(entry)?;
        // Checked above: UTF-8 without NUL.
        let target = String::from_utf8_lossy(target);
        match symlinkat(target.as_ref(), &parent, name) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                return Err(UnpackError::AlreadyExists {
                    path: entry.display.clone(),
                })
            }
            Err(e) => return Err(io_error("create the symlink", &entry.display, e)),
        }
        self.unpacked.symlinks += 1;
        Ok(())
    }

    fn create_hardlink(&mut self, entry: &ArchiveEntry) -> Result<(), UnpackError> {
        let raw_target = entry.link.as_deref().unwrap_or_default();
        let shown_target = paths::display_path(raw_target);
        let target = paths::normalize(raw_target, self.limits.max_path_len).map_err(|problem| {
            UnpackError::HardlinkEscape {
                path: entry.display.clone(),
                target: shown_target.clone(),
                reason: problem.to_string(),
            }
        })?;
        if !self.regular_files.contains(&target) {
            return Err(UnpackError::HardlinkTargetMissing {
                path: entry.display.clone(),
                target: shown_target,
            });
        }
        let Some((target_name, target_parents)) = target.split_last() else {
            return Err(UnpackError::HardlinkTargetMissing {
                path: entry.display.clone(),
                target: shown_target,
            });
        };
        let target_dir = self.open_dir(entry, target_parents, false)?;
        let (parent, name) = self.parent(entry)?;
        // No AT_SYMLINK_FOLLOW: the target itself is not followed either
        // (and it is a regular file we created).
        match linkat(
            &target_dir,
            target_name.as_str(),
            &parent,
            name,
            AtFlags::empty(),
        ) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                return Err(UnpackError::AlreadyExists {
                    path: entry.display.clone(),
                })
            }
            Err(e) => return Err(io_error("create the hardlink", &entry.display, e)),
        }
        self.unpacked.hardlinks += 1;
        Ok(())
    }
}

/// Allocates the blocks of a regular file before its data is written.
/// Writing into allocated blocks skips ext4's delayed-allocation
/// bookkeeping for every 4 KiB block (about a tenth of unpacking the
/// siminst benchmark's 100 MiB file). It also reports a full disk before
/// the copy starts. File systems without `fallocate` (it is Linux's)
/// simply allocate as the data comes.
fn reserve(file: &File, entry: &ArchiveEntry) -> Result<(), UnpackError> {
    #[cfg(target_os = "linux")]
    if entry.size > 0 {
        use nix::fcntl::{fallocate, FallocateFlags};
        // Within `Limits::max_bytes`, which the archive walk checked.
        let len = i64::try_from(entry.size).unwrap_or(i64::MAX);
        match fallocate(file, FallocateFlags::empty(), 0, len) {
            Ok(()) | Err(Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL) => {}
            Err(e) => return Err(io_error("reserve space for", &entry.display, e)),
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, entry);
    Ok(())
}

/// Most bytes [`copy_exact`] moves at a time (it was 64 KiB; see
/// [`crate::archive`]'s `READ_BUF` for the measurements). The buffer is
/// kept for the whole archive and grows only as far as its largest file
/// needs, so an archive of small files does not zero a large one.
const COPY_BUF: usize = 128 * 1024;

/// Copies exactly `entry.size` bytes through `buf` (grown as needed, up to
/// [`COPY_BUF`]); fewer means the archive is truncated. Read errors are the
/// archive's fault, write errors the disk's.
fn copy_exact(
    data: &mut dyn Read,
    file: &mut File,
    entry: &ArchiveEntry,
    buf: &mut Vec<u8>,
) -> Result<u64, UnpackError> {
    let want = usize::try_from(entry.size)
        .unwrap_or(usize::MAX)
        .min(COPY_BUF);
    if buf.len() < want {
        buf.resize(want, 0);
    }
    let mut data = data.take(entry.size);
    let mut written = 0u64;
    loop {
        let n = match data.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(UnpackError::Malformed(e)),
        };
        file.write_all(&buf[..n])
            .map_err(|source| UnpackError::Io {
                action: "write",
                path: entry.display.clone(),
                source,
            })?;
        written += n as u64;
    }
    if written != entry.size {
        return Err(UnpackError::Malformed(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the archive ends inside `{}`", entry.display),
        )));
    }
    Ok(written)
}

#[cfg(test)]
mod tests;
