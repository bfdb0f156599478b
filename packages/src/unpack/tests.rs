//! The unpacker against hand-built hostile archives. Every refusal must
//! also leave the staging directory empty.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, Header};

use super::*;

/// Builds archives entry by entry with raw header fields, so it can write
/// what `tar::Builder`'s checked setters refuse.
struct Hostile {
    builder: tar::Builder<Vec<u8>>,
}

impl Hostile {
    fn new() -> Self {
        Hostile {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn raw(mut self, kind: EntryType, path: &[u8], link: &[u8], mode: u32, data: &[u8]) -> Self {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        let old = header.as_old_mut();
        assert!(path.len() < old.name.len() && link.len() < old.linkname.len());
        old.name[..path.len()].copy_from_slice(path);
        old.linkname[..link.len()].copy_from_slice(link);
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
        self
    }

    fn file(self, path: &str, data: &[u8]) -> Self {
        self.raw(EntryType::Regular, path.as_bytes(), b"", 0o644, data)
    }

    fn file_mode(self, path: &str, mode: u32, data: &[u8]) -> Self {
        self.raw(EntryType::Regular, path.as_bytes(), b"", mode, data)
    }

    fn dir(self, path: &str) -> Self {
        self.raw(EntryType::Directory, path.as_bytes(), b"", 0o755, b"")
    }

    fn symlink(self, path: &str, target: &str) -> Self {
        self.raw(
            EntryType::Symlink,
            path.as_bytes(),
            target.as_bytes(),
            0o777,
            b"",
        )
    }

    fn hardlink(self, path: &str, target: &str) -> Self {
        self.raw(
            EntryType::Link,
            path.as_bytes(),
            target.as_bytes(),
            0o644,
            b"",
        )
    }

    /// A GNU long-name extension entry for the next entry.
    fn long_name(self, path: &[u8]) -> Self {
        let mut data = path.to_vec();
        data.push(0);
        self.raw(EntryType::GNULongName, b"././@LongLink", b"", 0o644, &data)
    }

    /// A PAX extended header with one record for the next entry.
    fn pax(self, key: &str, value: &str) -> Self {
        let body = format!(" {key}={value}\n");
        // The length field counts itself.
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        let record = format!("{len}{body}");
        self.raw(
            EntryType::XHeader,
            b"PaxHeader",
            b"",
            0o644,
            record.as_bytes(),
        )
    }

    fn gz(self) -> Vec<u8> {
        let tar = self.builder.into_inner().unwrap();
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }
}

/// A scratch directory holding `staging/` (not created yet) and a canary
/// file beside it, to show nothing was written next to the staging root.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("canary"), b"untouched").unwrap();
        Scratch { dir }
    }

    fn staging(&self) -> PathBuf {
        self.dir.path().join("staging")
    }

    fn unpack(&self, gz: &[u8], limits: &Limits) -> Result<Unpacked, UnpackError> {
        unpack(gz, &self.staging(), limits)
    }

    /// The staging root exists and is empty, and nothing but it and the
    /// canary is beside it.
    fn assert_clean(&self) {
        let staging = self.staging();
        assert!(fs::symlink_metadata(&staging).unwrap().is_dir());
        let left: Vec<_> = fs::read_dir(&staging)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "staging not empty: {left:?}");
        let mut beside: Vec<_> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        beside.sort();
        assert_eq!(beside, ["canary", "staging"]);
        assert_eq!(
            fs::read(self.dir.path().join("canary")).unwrap(),
            b"untouched"
        );
    }
}

/// Unpacks `gz` with default limits, expects an error, checks the staging
/// root was emptied, and returns the error.
fn refused(gz: Vec<u8>) -> UnpackError {
    refused_with(gz, &Limits::default())
}

fn refused_with(gz: Vec<u8>, limits: &Limits) -> UnpackError {
    let scratch = Scratch::new();
    let error = scratch.unpack(&gz, limits).unwrap_err();
    scratch.assert_clean();
    assert!(!error.to_string().is_empty());
    error
}

/// A benign prefix, so every refusal has something to clean up.
fn benign() -> Hostile {
    Hostile::new()
        .dir("ok")
        .file("ok/a.txt", b"hello")
        .file("top.txt", b"top")
        .symlink("ok/link", "a.txt")
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn unpacks_a_benign_archive() {
    let gz = Hostile::new()
        .dir("./")
        .dir("bin")
        .file_mode("bin/tool", 0o755, b"#!/bin/sh\n")
        .file_mode("bin/suid", 0o4755, b"x")
        .file_mode("shared", 0o666, b"y")
        .file("deep/er/file", b"implicit parents")
        .symlink("bin/up", "../deep/er/file")
        .symlink("deep/er/self", ".")
        .hardlink("bin/tool2", "bin/tool")
        .dir("bin/")
        .gz();
    let scratch = Scratch::new();
    let unpacked = scratch.unpack(&gz, &Limits::default()).unwrap();
    let root = scratch.staging();
    assert_eq!(
        unpacked,
        Unpacked {
            root: root.clone(),
            files: 4,
            directories: 3,
            symlinks: 2,
            hardlinks: 1,
            bytes: 28
        }
    );
    assert_eq!(fs::read(root.join("bin/up")).unwrap(), b"implicit parents");
    assert_eq!(
        fs::read_link(root.join("deep/er/self")).unwrap(),
        PathBuf::from(".")
    );
    assert_eq!(mode_of(&root.join("bin/tool")), 0o755);
    assert_eq!(mode_of(&root.join("bin/suid")), 0o755, "setuid stripped");
    assert_eq!(mode_of(&root.join("shared")), 0o664, "world-write stripped");
    assert_eq!(mode_of(&root.join("deep")), 0o755);
    let tool = fs::metadata(root.join("bin/tool")).unwrap();
    let tool2 = fs::metadata(root.join("bin/tool2")).unwrap();
    assert_eq!((tool.dev(), tool.ino()), (tool2.dev(), tool2.ino()));
}

#[test]
fn special_bits_kept_only_when_allowed() {
    let gz = Hostile::new()
        .file_mode("suid", 0o4755, b"x")
        .file_mode("ww", 0o4777, b"x")
        .gz();
    let scratch = Scratch::new();
    let limits = Limits {
        allow_special_bits: true,
        ..Limits::default()
    };
    scratch.unpack(&gz, &limits).unwrap();
    assert_eq!(mode_of(&scratch.staging().join("suid")), 0o4755);
    assert_eq!(
        mode_of(&scratch.staging().join("ww")),
        0o4775,
        "never world-writable"
    );
}

#[test]
fn absolute_path() {
    let e = refused(benign().file("/tmp/flotilla-evil", b"x").gz());
    assert!(
        matches!(&e, UnpackError::AbsolutePath { path } if path == "/tmp/flotilla-evil"),
        "{e}"
    );
    assert!(!Path::new("/tmp/flotilla-evil").exists());
}

#[test]
fn parent_path() {
    let e = refused(benign().file("../evil", b"x").gz());
    assert!(
        matches!(&e, UnpackError::ParentComponent { path } if path == "../evil"),
        "{e}"
    );
}

#[test]
fn parent_in_the_middle() {
    let e = refused(benign().file("a/../../x", b"x").gz());
    assert!(matches!(&e, UnpackError::ParentComponent { .. }), "{e}");
    let e = refused(benign().dir("ok/../..").gz());
    assert!(matches!(&e, UnpackError::ParentComponent { .. }), "{e}");
}

#[test]
fn parent_path_in_long_name_and_pax() {
    let e = refused(
        benign()
            .long_name(b"x/../../evil")
            .file("innocent", b"x")
            .gz(),
    );
    assert!(
        matches!(&e, UnpackError::ParentComponent { path } if path == "x/../../evil"),
        "{e}"
    );
    let e = refused(benign().pax("path", "../evil").file("innocent", b"x").gz());
    assert!(
        matches!(&e, UnpackError::ParentComponent { path } if path == "../evil"),
        "{e}"
    );
    let e = refused(benign().pax("linkpath", "/etc").symlink("ln", "fine").gz());
    assert!(
        matches!(
            &e,
            UnpackError::SymlinkEscape {
                problem: SymlinkProblem::Absolute,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn symlink_with_absolute_target() {
    let e = refused(benign().symlink("etc", "/etc").gz());
    assert!(
        matches!(&e, UnpackError::SymlinkEscape { path, target, problem: SymlinkProblem::Absolute }
            if path == "etc" && target == "/etc"),
        "{e}"
    );
}

#[test]
fn symlink_with_relative_escape() {
    let e = refused(benign().symlink("ok/etc", "../../etc").gz());
    assert!(
        matches!(
            &e,
            UnpackError::SymlinkEscape {
                problem: SymlinkProblem::OutsideRoot,
                ..
            }
        ),
        "{e}"
    );
    let e = refused(benign().symlink("up", "..").gz());
    assert!(
        matches!(
            &e,
            UnpackError::SymlinkEscape {
                problem: SymlinkProblem::OutsideRoot,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn symlink_chain_that_would_escape_is_refused() {
    // `ok/root` -> `..` is the staging root: fine on its own. But
    // `esc` -> `ok/root/..` looks like it stays inside if read as text,
    // while the kernel climbs from the root to its parent.
    let e = refused(
        benign()
            .symlink("ok/root", "..")
            .symlink("esc", "ok/root/..")
            .gz(),
    );
    assert!(
        matches!(
            &e,
            UnpackError::SymlinkEscape {
                problem: SymlinkProblem::ParentAfterName,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn file_written_through_a_symlink() {
    // The symlink itself is harmless (it points inside), but nothing may be
    // created through it.
    let e = refused(
        benign()
            .dir("d")
            .symlink("ln", "d")
            .file("ln/evil", b"x")
            .gz(),
    );
    assert!(
        matches!(&e, UnpackError::ThroughSymlink { path, symlink } if path == "ln/evil" && symlink == "ln"),
        "{e}"
    );
    let e = refused(benign().symlink("ln", "ok").dir("ln/sub").gz());
    assert!(matches!(&e, UnpackError::ThroughSymlink { .. }), "{e}");
}

#[test]
fn file_over_an_existing_symlink() {
    // O_EXCL | O_NOFOLLOW: the file is not written to where `ok/link` points.
    let e = refused(benign().file("ok/link", b"overwrite?").gz());
    assert!(
        matches!(&e, UnpackError::AlreadyExists { path } if path == "ok/link"),
        "{e}"
    );
}

#[test]
fn duplicate_entries() {
    let e = refused(benign().file("top.txt", b"again").gz());
    assert!(matches!(&e, UnpackError::AlreadyExists { .. }), "{e}");
    let e = refused(benign().file("ok/a.txt/x", b"under a file").gz());
    assert!(
        matches!(&e, UnpackError::NotADirectory { existing, .. } if existing == "ok/a.txt"),
        "{e}"
    );
}

#[test]
fn hardlink_escape() {
    let e = refused(benign().hardlink("passwd", "../../etc/passwd").gz());
    assert!(matches!(&e, UnpackError::HardlinkEscape { .. }), "{e}");
    let e = refused(benign().hardlink("passwd", "/etc/passwd").gz());
    assert!(
        matches!(&e, UnpackError::HardlinkEscape { target, .. } if target == "/etc/passwd"),
        "{e}"
    );
}

#[test]
fn hardlink_to_a_file_not_yet_unpacked() {
    let e = refused(benign().hardlink("early", "later").file("later", b"x").gz());
    assert!(
        matches!(&e, UnpackError::HardlinkTargetMissing { path, target } if path == "early" && target == "later"),
        "{e}"
    );
}

#[test]
fn hardlink_to_a_symlink_or_directory() {
    let e = refused(benign().hardlink("h", "ok/link").gz());
    assert!(
        matches!(&e, UnpackError::HardlinkTargetMissing { .. }),
        "{e}"
    );
    let e = refused(benign().hardlink("h", "ok").gz());
    assert!(
        matches!(&e, UnpackError::HardlinkTargetMissing { .. }),
        "{e}"
    );
}

#[test]
fn device_nodes_and_fifos() {
    for (kind, name) in [
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
        (EntryType::Fifo, "FIFO"),
    ] {
        let e = refused(benign().raw(kind, b"dev/thing", b"", 0o600, b"").gz());
        assert!(
            matches!(&e, UnpackError::SpecialFile { path, kind } if path == "dev/thing" && *kind == name),
            "{e}"
        );
    }
}

#[test]
fn oversize_total() {
    let limits = Limits {
        max_bytes: 100,
        ..Limits::default()
    };
    let gz = Hostile::new().file("a", &[1; 60]).file("b", &[2; 60]).gz();
    let e = refused_with(gz, &limits);
    assert!(matches!(e, UnpackError::TooLarge { max: 100 }), "{e}");
    // Refused on the header's claim, before the data is written.
    let e = refused_with(Hostile::new().file("big", &[0; 101]).gz(), &limits);
    assert!(matches!(e, UnpackError::TooLarge { max: 100 }), "{e}");
}

#[test]
fn too_many_entries() {
    let limits = Limits {
        max_entries: 3,
        ..Limits::default()
    };
    let gz = Hostile::new()
        .file("1", b"")
        .file("2", b"")
        .file("3", b"")
        .file("4", b"")
        .gz();
    let e = refused_with(gz, &limits);
    assert!(matches!(e, UnpackError::TooManyEntries { max: 3 }), "{e}");
}

#[test]
fn over_long_paths() {
    let limits = Limits {
        max_path_len: 20,
        ..Limits::default()
    };
    let e = refused_with(benign().file("a/very/long/path/indeed", b"x").gz(), &limits);
    assert!(
        matches!(
            e,
            UnpackError::PathTooLong {
                len: 23,
                max: 20,
                ..
            }
        ),
        "{e}"
    );
    // A GNU long name larger than the bound is refused before it is read.
    let e = refused_with(
        benign().long_name(&[b'a'; 5000]).file("x", b"x").gz(),
        &limits,
    );
    assert!(matches!(e, UnpackError::PathTooLong { max: 20, .. }), "{e}");
}

#[test]
fn long_names_within_bounds_work() {
    let long = format!("{}/{}", "d".repeat(150), "f".repeat(150));
    let gz = Hostile::new()
        .long_name(long.as_bytes())
        .file("truncated-in-header", b"long")
        .gz();
    let scratch = Scratch::new();
    scratch.unpack(&gz, &Limits::default()).unwrap();
    assert_eq!(fs::read(scratch.staging().join(&long)).unwrap(), b"long");
}

#[test]
fn damaged_archives() {
    let good = benign().file("more", &[7; 10_000]).gz();
    let e = refused(good[..good.len() / 2].to_vec());
    assert!(matches!(e, UnpackError::Malformed(_)), "{e}");
    let e = refused(b"this is not gzip".to_vec());
    assert!(matches!(e, UnpackError::Malformed(_)), "{e}");
    let mut flipped = good.clone();
    let last = flipped.len() - 6;
    flipped[last] ^= 0xff; // inside the gzip trailer's CRC
    let e = refused(flipped);
    assert!(matches!(e, UnpackError::Malformed(_)), "{e}");
}

#[test]
fn directory_entry_with_data() {
    let e = refused(
        benign()
            .raw(EntryType::Directory, b"d", b"", 0o755, &[0; 1024])
            .gz(),
    );
    assert!(matches!(e, UnpackError::Malformed(_)), "{e}");
}

#[test]
fn sparse_and_unknown_types() {
    let e = refused(
        benign()
            .raw(EntryType::GNUSparse, b"s", b"", 0o644, b"")
            .gz(),
    );
    assert!(matches!(e, UnpackError::UnsupportedEntry { .. }), "{e}");
    let e = refused(
        benign()
            .raw(EntryType::new(b'Z'), b"z", b"", 0o644, b"")
            .gz(),
    );
    assert!(matches!(e, UnpackError::UnsupportedEntry { .. }), "{e}");
}

#[test]
fn staging_must_be_an_empty_real_directory() {
    let scratch = Scratch::new();
    let staging = scratch.staging();
    fs::create_dir(&staging).unwrap();
    std::os::unix::fs::symlink(scratch.dir.path().join("canary"), staging.join("planted")).unwrap();
    let e = scratch
        .unpack(&benign().file("planted", b"x").gz(), &Limits::default())
        .unwrap_err();
    assert!(matches!(e, UnpackError::StagingNotEmpty { .. }), "{e}");
    assert!(
        fs::symlink_metadata(staging.join("planted"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "not ours to remove"
    );
    assert_eq!(
        fs::read(scratch.dir.path().join("canary")).unwrap(),
        b"untouched"
    );

    let elsewhere = tempfile::tempdir().unwrap();
    let linked = scratch.dir.path().join("linked");
    std::os::unix::fs::symlink(elsewhere.path(), &linked).unwrap();
    let e = unpack(&benign().gz()[..], &linked, &Limits::default()).unwrap_err();
    assert!(matches!(e, UnpackError::StagingUnusable { .. }), "{e}");
    assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

/// Files larger and smaller than the copy buffer, in turn, through the one
/// buffer the unpacker keeps per archive (and allocated with `fallocate`
/// first): every byte lands, and no file is longer than its entry.
#[test]
fn files_around_the_buffer_sizes_unpack_exactly() {
    let big: Vec<u8> = (0..3 * COPY_BUF + 17)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let edge: Vec<u8> = (0..COPY_BUF + 1).map(|i| (i % 13) as u8).collect();
    let gz = Hostile::new()
        .file("big", &big)
        .file("small", b"small")
        .file("empty", b"")
        .file("edge", &edge)
        .file("big-again", &big)
        .gz();
    let scratch = Scratch::new();
    let unpacked = scratch.unpack(&gz, &Limits::default()).unwrap();
    assert_eq!(unpacked.files, 5);
    let staging = scratch.staging();
    assert_eq!(fs::read(staging.join("big")).unwrap(), big);
    assert_eq!(fs::read(staging.join("small")).unwrap(), b"small");
    assert_eq!(fs::read(staging.join("empty")).unwrap(), b"");
    assert_eq!(fs::read(staging.join("edge")).unwrap(), edge);
    assert_eq!(fs::read(staging.join("big-again")).unwrap(), big);
}

/// An archive cut inside a large file: refused, and the file, whose
/// blocks were allocated before its data came, is gone with the rest.
#[test]
fn archive_cut_inside_a_large_file() {
    let big: Vec<u8> = (0..4 * COPY_BUF).map(|i| (i * 31 % 253) as u8).collect();
    let good = benign().file("big", &big).gz();
    let e = refused(good[..good.len() * 3 / 4].to_vec());
    assert!(matches!(e, UnpackError::Malformed(_)), "{e}");
}

/// Hands out an archive a few bytes at a time through its own buffer, as
/// a package arriving in small parts would.
struct Trickle<'a> {
    data: &'a [u8],
    piece: usize,
}

impl io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.fill_buf()?.len().min(buf.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Trickle<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        Ok(&self.data[..self.piece.min(self.data.len())])
    }

    fn consume(&mut self, amount: usize) {
        self.data = &self.data[amount.min(self.data.len())..];
    }
}

/// The buffered entry point unpacks from the caller's buffer, whatever the
/// size of its pieces, exactly what [`unpack`] does from a reader.
#[test]
fn unpack_buffered_in_small_pieces_matches_unpack() {
    let big: Vec<u8> = (0..2 * COPY_BUF + 5).map(|i| (i * 7 % 251) as u8).collect();
    let gz = benign().file("big", &big).file("small", b"small").gz();
    for piece in [1, 511, 4096, COPY_BUF + 3] {
        let scratch = Scratch::new();
        let unpacked = unpack_buffered(
            Trickle { data: &gz, piece },
            &scratch.staging(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(unpacked.files, 4, "pieces of {piece}");
        let staging = scratch.staging();
        assert_eq!(fs::read(staging.join("big")).unwrap(), big);
        assert_eq!(fs::read(staging.join("ok/a.txt")).unwrap(), b"hello");
        assert_eq!(
            fs::read_link(staging.join("ok/link")).unwrap(),
            Path::new("a.txt")
        );
    }
}

/// The buffered entry point refuses what [`unpack`] refuses, and cleans up
/// the same way.
#[test]
fn unpack_buffered_refuses_and_cleans_up_the_same() {
    let archives = [
        benign().file("../escape", b"x").gz(),
        benign().symlink("out", "../..").gz(),
        benign().raw(EntryType::Char, b"dev", b"", 0o644, b"").gz(),
    ];
    for gz in archives {
        let scratch = Scratch::new();
        let error = unpack_buffered(
            Trickle {
                data: &gz,
                piece: 1000,
            },
            &scratch.staging(),
            &Limits::default(),
        )
        .unwrap_err();
        let plain = refused(gz.clone());
        assert_eq!(error.to_string(), plain.to_string());
        scratch.assert_clean();
    }
    let big: Vec<u8> = (0..4 * COPY_BUF).map(|i| (i * 31 % 253) as u8).collect();
    let good = benign().file("big", &big).gz();
    let cut = &good[..good.len() * 3 / 4];
    let scratch = Scratch::new();
    let error = unpack_buffered(
        Trickle {
            data: cut,
            piece: 4096,
        },
        &scratch.staging(),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(error, UnpackError::Malformed(_)), "{error}");
    scratch.assert_clean();
}

fn digest_of(data: &[u8]) -> Sha256Digest {
    crate::sha256_reader(data).unwrap().0
}

fn verified(
    gz: &[u8],
    expected: &Sha256Digest,
) -> (Scratch, Result<Unpacked, VerifiedUnpackError>) {
    let scratch = Scratch::new();
    let result = unpack_verified(
        Trickle {
            data: gz,
            piece: 4096,
        },
        &scratch.staging(),
        &Limits::default(),
        expected,
    );
    (scratch, result)
}

#[test]
fn unpack_verified_unpacks_what_has_the_expected_digest() {
    let gz = benign().file("data", b"payload").gz();
    let (scratch, result) = verified(&gz, &digest_of(&gz));
    assert_eq!(result.unwrap().files, 3);
    assert_eq!(
        fs::read(scratch.staging().join("data")).unwrap(),
        b"payload"
    );
}

/// A wrong digest empties the staging root even though the archive
/// unpacked, and is reported as a wrong digest even when the archive is
/// hostile too.
#[test]
fn unpack_verified_with_a_wrong_digest_leaves_nothing() {
    let gz = benign().file("data", b"payload").gz();
    let mut wrong = digest_of(&gz);
    wrong.0[31] ^= 1;
    let (scratch, result) = verified(&gz, &wrong);
    let e = result.unwrap_err();
    assert!(
        matches!(e, VerifiedUnpackError::Digest(VerifyError::Mismatch(_))),
        "{e}"
    );
    scratch.assert_clean();
    let hostile = benign().file("../escape", b"x").gz();
    let (scratch, result) = verified(&hostile, &wrong);
    let e = result.unwrap_err();
    assert!(
        matches!(e, VerifiedUnpackError::Digest(VerifyError::Mismatch(_))),
        "{e}"
    );
    scratch.assert_clean();
}

/// A hostile archive with the expected digest (the sender meant it) is the
/// unpacker's refusal, and leaves nothing either.
#[test]
fn unpack_verified_refuses_a_hostile_archive_whatever_its_digest() {
    let hostile = benign().symlink("out", "../..").gz();
    let (scratch, result) = verified(&hostile, &digest_of(&hostile));
    let e = result.unwrap_err();
    assert!(
        matches!(
            e,
            VerifiedUnpackError::Unpack(UnpackError::SymlinkEscape { .. })
        ),
        "{e}"
    );
    scratch.assert_clean();
}

/// The digest covers the whole data, not just the gzip stream the
/// unpacker reads: whatever follows it is hashed too.
#[test]
fn unpack_verified_hashes_what_follows_the_archive() {
    let mut data = benign().gz();
    let archive_only = digest_of(&data);
    data.extend_from_slice(&[7; 100_000]);
    let (_, result) = verified(&data, &digest_of(&data));
    assert!(result.is_ok());
    let (scratch, result) = verified(&data, &archive_only);
    assert!(matches!(result, Err(VerifiedUnpackError::Digest(_))));
    scratch.assert_clean();
}

/// A staging directory that is not empty is refused before anything is
/// read, and what was in it stays.
#[test]
fn unpack_verified_leaves_a_staging_directory_it_refused_alone() {
    let gz = benign().gz();
    let scratch = Scratch::new();
    fs::create_dir(scratch.staging()).unwrap();
    fs::write(scratch.staging().join("theirs"), b"keep").unwrap();
    let e = unpack_verified(
        &gz[..],
        &scratch.staging(),
        &Limits::default(),
        &digest_of(&gz),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            VerifiedUnpackError::Unpack(UnpackError::StagingNotEmpty { .. })
        ),
        "{e}"
    );
    assert_eq!(fs::read(scratch.staging().join("theirs")).unwrap(), b"keep");
}
