//! Reading a package archive entry by entry, with every path, type and size
//! checked before anyone sees the entry. Shared by [`crate::unpack`] and
//! [`crate::inspect`].
//!
//! The `tar` crate is used in raw mode: it parses headers and checksums, but
//! GNU long names, long link names and PAX headers are handled here, so each
//! is bounded in size before it is read into memory (the crate itself would
//! read a long name of any claimed size).

use std::io::{self, BufRead, BufReader, Read};

use flate2::bufread::GzDecoder;
use tar::EntryType;

use crate::paths::{self, PathProblem};
use crate::unpack::{Limits, UnpackError};

/// Largest PAX extended header accepted, in bytes.
const MAX_PAX_HEADER: u64 = 64 * 1024;
/// How much decompressed data may follow the end-of-archive marker before
/// the gzip stream ends. `tar` pads to 10 KiB records; this leaves room.
const MAX_TRAILER: u64 = 1024 * 1024;
/// How much of the compressed archive is read at a time. flate2's own
/// reader reads 32 KiB at a time, and the kernel's cost per call was a
/// good part of unpacking the siminst benchmark's 100 MiB package. Larger
/// than 128 KiB was no better alone and worse with ten unpacks at once on
/// two cores: 512 KiB reads made one in ten of them take 2-3 times the CPU
/// (see `examples/unpack_speed.rs` and BENCHMARKS.md, siminst run 12).
pub(crate) const READ_BUF: usize = 128 * 1024;

/// What an entry creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Regular,
    Directory,
    Symlink,
    Hardlink,
}

/// An entry whose path, type and size passed the checks.
#[derive(Debug)]
pub(crate) struct ArchiveEntry {
    /// The path's components from the root; empty for the root itself
    /// (`./`), which only a directory entry may be.
    pub(crate) path: Vec<String>,
    /// The path for messages.
    pub(crate) display: String,
    pub(crate) kind: Kind,
    /// Bytes of data; zero unless `kind` is `Regular`.
    pub(crate) size: u64,
    /// Mode bits from the header, unfiltered.
    pub(crate) mode: u32,
    /// The raw link target of a symlink or hardlink.
    pub(crate) link: Option<Vec<u8>>,
}

/// Totals over an archive.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
}

/// GNU and PAX extension data waiting for the entry it describes.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    pax_link: Option<Vec<u8>>,
    pax_size: Option<u64>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none()
            && self.long_link.is_none()
            && self.pax_path.is_none()
            && self.pax_link.is_none()
            && self.pax_size.is_none()
    }
}

fn malformed(message: impl Into<String>) -> UnpackError {
    UnpackError::Malformed(io::Error::new(io::ErrorKind::InvalidData, message.into()))
}

/// Reads an extension entry's data, known to be at most a small bound.
fn read_small<R: Read>(entry: &mut R, size: u64) -> Result<Vec<u8>, UnpackError> {
    let mut data = Vec::new();
    entry
        .take(size)
        .read_to_end(&mut data)
        .map_err(UnpackError::Malformed)?;
    if data.len() as u64 != size {
        return Err(malformed("the archive ends inside an extension header"));
    }
    Ok(data)
}

/// Strips the NUL terminator(s) of a GNU long name.
fn strip_nuls(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

pub(crate) fn path_error(display: String, problem: PathProblem) -> UnpackError {
    match problem {
        PathProblem::Absolute => UnpackError::AbsolutePath { path: display },
        PathProblem::ParentComponent => UnpackError::ParentComponent { path: display },
        PathProblem::TooLong { len, max } => UnpackError::PathTooLong {
            path: display,
            len,
            max,
        },
        other => UnpackError::BadPath {
            path: display,
            reason: other.to_string(),
        },
    }
}

/// Decompresses `gzip` and calls `visit` for every file, directory,
/// symlink and hardlink entry, in archive order, with a reader over the
/// entry's data. Refuses, before calling `visit`:
/// device, FIFO, sparse and unknown entry types; unsafe or over-long paths;
/// more than `limits.max_entries` entries or more than `limits.max_bytes`
/// bytes of file data in total; non-file entries that carry data; over-long
/// extension headers. After the last entry it reads the rest of the gzip
/// stream (a bounded amount), so the gzip checksum is verified too.
pub(crate) fn walk<R, F, E>(gzip: R, limits: &Limits, visit: F) -> Result<Totals, E>
where
    R: Read,
    F: FnMut(&ArchiveEntry, &mut dyn Read) -> Result<(), E>,
    E: From<UnpackError>,
{
    walk_buffered(BufReader::with_capacity(READ_BUF, gzip), limits, visit)
}

/// [`walk`] over a reader that buffers itself: the decompressor reads from
/// its buffer in place (a package arriving in chunks is inflated straight
/// from the chunks, without another copy).
pub(crate) fn walk_buffered<R, F, E>(gzip: R, limits: &Limits, mut visit: F) -> Result<Totals, E>
where
    R: BufRead,
    F: FnMut(&ArchiveEntry, &mut dyn Read) -> Result<(), E>,
    E: From<UnpackError>,
{
    let mut archive = tar::Archive::new(GzDecoder::new(gzip));
    let mut totals = Totals::default();
    let mut pending = Pending::default();
    // Long names carry a NUL terminator.
    let max_long_name = limits.max_path_len as u64 + 1;
    let entries = archive.entries().map_err(UnpackError::Malformed)?.raw(true);
    for item in entries {
        let mut entry = item.map_err(UnpackError::Malformed)?;
        let header = entry.header().clone();
        let entry_type = header.entry_type();
        let size = header.entry_size().map_err(UnpackError::Malformed)?;

        match entry_type {
            EntryType::GNULongName | EntryType::GNULongLink => {
                let what = if entry_type == EntryType::GNULongName {
                    "name"
                } else {
                    "link name"
                };
                if size > max_long_name {
                    return Err(UnpackError::PathTooLong {
                        path: format!("(a GNU long {what} of {size} bytes)"),
                        len: usize::try_from(size).unwrap_or(usize::MAX),
                        max: limits.max_path_len,
                    }
                    .into());
                }
                let slot = if entry_type == EntryType::GNULongName {
                    &mut pending.long_name
                } else {
                    &mut pending.long_link
                };
                if slot.is_some() {
                    return Err(
                        malformed(format!("two GNU long {what} headers for one entry")).into(),
                    );
                }
                *slot = Some(strip_nuls(read_small(&mut entry, size)?));
                continue;
            }
            EntryType::XHeader => {
                if size > MAX_PAX_HEADER {
                    return Err(UnpackError::ExtensionTooLarge {
                        size,
                        max: MAX_PAX_HEADER,
                    }
                    .into());
                }
                if pending.pax_path.is_some()
                    || pending.pax_link.is_some()
                    || pending.pax_size.is_some()
                {
                    return Err(malformed("two PAX headers for one entry").into());
                }
                let data = read_small(&mut entry, size)?;
                for record in tar::PaxExtensions::new(&data) {
                    let record = record.map_err(UnpackError::Malformed)?;
                    match record.key_bytes() {
                        b"path" => pending.pax_path = Some(record.value_bytes().to_vec()),
                        b"linkpath" => pending.pax_link = Some(record.value_bytes().to_vec()),
                        b"size" => {
                            let value = std::str::from_utf8(record.value_bytes())
                                .ok()
                                .and_then(|v| v.parse::<u64>().ok())
                                .ok_or_else(|| malformed("a PAX size record is not a number"))?;
                            pending.pax_size = Some(value);
                        }
                        key if key.starts_with(b"GNU.sparse") => {
                            return Err(UnpackError::UnsupportedEntry {
                                path: "(PAX header)".to_owned(),
                                kind: "GNU sparse file".to_owned(),
                            }
                            .into());
                        }
                        // Times, owners, comments, xattrs: not used.
                        _ => {}
                    }
                }
                continue;
            }
            EntryType::XGlobalHeader => {
                // Archive-wide metadata (`git archive` writes one); creates
                // nothing, but counts as an entry.
                bump_entries(&mut totals, limits)?;
                if size > MAX_PAX_HEADER {
                    return Err(UnpackError::ExtensionTooLarge {
                        size,
                        max: MAX_PAX_HEADER,
                    }
                    .into());
                }
                read_small(&mut entry, size)?;
                continue;
            }
            _ => {}
        }

        bump_entries(&mut totals, limits)?;
        let raw_path = match (pending.pax_path.take(), pending.long_name.take()) {
            (Some(path), _) | (None, Some(path)) => path,
            (None, None) => header.path_bytes().into_owned(),
        };
        let display = paths::display_path(&raw_path);

        let kind = match entry_type {
            EntryType::Regular | EntryType::Continuous => Kind::Regular,
            EntryType::Directory => Kind::Directory,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::Hardlink,
            EntryType::Char => {
                return Err(UnpackError::SpecialFile {
                    path: display,
                    kind: "character device",
                }
                .into())
            }
            EntryType::Block => {
                return Err(UnpackError::SpecialFile {
                    path: display,
                    kind: "block device",
                }
                .into())
            }
            EntryType::Fifo => {
                return Err(UnpackError::SpecialFile {
                    path: display,
                    kind: "FIFO",
                }
                .into())
            }
            EntryType::GNUSparse => {
                return Err(UnpackError::UnsupportedEntry {
                    path: display,
                    kind: "GNU sparse file".to_owned(),
                }
                .into());
            }
            other => {
                return Err(UnpackError::UnsupportedEntry {
                    path: display,
                    kind: format!("type {:?}", char::from(other.as_byte())),
                }
                .into());
            }
        };

        if let Some(pax_size) = pending.pax_size.take() {
            if pax_size != size {
                // The header and the PAX record disagree on where the next
                // header starts; a classic way to show two parsers two
                // different archives.
                return Err(UnpackError::UnsupportedEntry {
                    path: display,
                    kind: "a PAX size that overrides the header's size".to_owned(),
                }
                .into());
            }
        }

        let path = paths::normalize(&raw_path, limits.max_path_len)
            .map_err(|p| path_error(display.clone(), p))?;
        if kind != Kind::Directory && path.is_empty() {
            return Err(UnpackError::BadPath {
                path: display,
                reason: "names the root itself".to_owned(),
            }
            .into());
        }
        if kind == Kind::Regular && raw_path.ends_with(b"/") {
            return Err(UnpackError::BadPath {
                path: display,
                reason: "is a file whose name ends with `/`".to_owned(),
            }
            .into());
        }
        if kind != Kind::Regular && size != 0 {
            return Err(malformed(format!(
                "{display}: a {kind:?} entry carries {size} bytes of data"
            ))
            .into());
        }
        if kind == Kind::Regular {
            totals.bytes = totals.bytes.saturating_add(size);
            if totals.bytes > limits.max_bytes {
                return Err(UnpackError::TooLarge {
                    max: limits.max_bytes,
                }
                .into());
            }
        }
        let mode = header.mode().map_err(UnpackError::Malformed)?;
        let link = match kind {
            Kind::Symlink | Kind::Hardlink => {
                let target = match (pending.pax_link.take(), pending.long_link.take()) {
                    (Some(link), _) | (None, Some(link)) => link,
                    (None, None) => header
                        .link_name_bytes()
                        .map(|l| l.into_owned())
                        .unwrap_or_default(),
                };
                Some(target)
            }
            _ => None,
        };
        pending = Pending::default();

        let checked = ArchiveEntry {
            path,
            display,
            kind,
            size,
            mode,
            link,
        };
        visit(&checked, &mut entry)?;
    }
    if !pending.is_empty() {
        return Err(
            malformed("the archive ends with an extension header that describes no entry").into(),
        );
    }
    archive_rest(archive)?;
    Ok(totals)
}

fn bump_entries(totals: &mut Totals, limits: &Limits) -> Result<(), UnpackError> {
    totals.entries += 1;
    if totals.entries > limits.max_entries {
        return Err(UnpackError::TooManyEntries {
            max: limits.max_entries,
        });
    }
    Ok(())
}

/// Reads what follows the end-of-archive marker up to the end of the gzip
/// stream, so a damaged gzip checksum is noticed.
fn archive_rest<R: BufRead>(archive: tar::Archive<GzDecoder<R>>) -> Result<(), UnpackError> {
    let rest = archive.into_inner();
    let read = io::copy(&mut rest.take(MAX_TRAILER + 1), &mut io::sink())
        .map_err(UnpackError::Malformed)?;
    if read > MAX_TRAILER {
        return Err(malformed(
            "more than 1 MiB of data follows the end of the archive",
        ));
    }
    Ok(())
}
