use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;
use crate::digest::{sha256_file, verify_file_digest, VerifyError};
use crate::unpack::unpack;

const MANIFEST: &str = "\
name: webapp
version: 1.4.0
requirements:
  attributes: {arch: x86_64}
install: scripts/install.sh
uninstall: scripts/uninstall.sh
install_timeout: 60s
";

/// A package directory with a manifest, scripts, nested files and a
/// symlink, created in the order given.
fn package_dir(root: &Path, reverse: bool) {
    let mut steps: Vec<Box<dyn Fn()>> = vec![
        Box::new(|| fs::write(root.join(MANIFEST_FILE), MANIFEST).unwrap()),
        Box::new(|| {
            fs::create_dir_all(root.join("scripts")).unwrap();
            fs::write(
                root.join("scripts/install.sh"),
                "#!/bin/sh\necho installed\n",
            )
            .unwrap();
            fs::set_permissions(
                root.join("scripts/install.sh"),
                fs::Permissions::from_mode(0o700),
            )
            .unwrap();
            fs::write(root.join("scripts/uninstall.sh"), "echo removed\n").unwrap();
        }),
        Box::new(|| {
            fs::create_dir_all(root.join("share/doc")).unwrap();
            fs::write(root.join("share/doc/README"), "read me\n").unwrap();
            fs::set_permissions(
                root.join("share/doc/README"),
                fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            fs::write(root.join("share/data.bin"), vec![42u8; 100_000]).unwrap();
        }),
        Box::new(|| symlink("share/doc/README", root.join("README")).unwrap()),
        Box::new(|| fs::create_dir_all(root.join("empty")).unwrap()),
    ];
    if reverse {
        steps.reverse();
    }
    for step in steps {
        step();
    }
}

#[test]
fn same_directory_gives_same_digest() {
    let scratch = tempfile::tempdir().unwrap();
    let (a, b) = (scratch.path().join("a"), scratch.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    package_dir(&a, false);
    package_dir(&b, true);
    // Different times and permissions beyond "executable" do not matter.
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    fs::File::options()
        .write(true)
        .open(b.join("share/data.bin"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    fs::set_permissions(
        b.join("share/doc/README"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();

    let first = build(&a, &scratch.path().join("1.tar.gz")).unwrap();
    let second = build(&a, &scratch.path().join("2.tar.gz")).unwrap();
    let other = build(&b, &scratch.path().join("3.tar.gz")).unwrap();
    assert_eq!(first.sha256, second.sha256);
    assert_eq!(first.sha256, other.sha256);
    assert_eq!(
        fs::read(scratch.path().join("1.tar.gz")).unwrap(),
        fs::read(scratch.path().join("3.tar.gz")).unwrap()
    );
    assert_eq!(first.manifest.name, "webapp");
    assert_eq!(
        sha256_file(&scratch.path().join("1.tar.gz")).unwrap(),
        (first.sha256, first.size)
    );
    assert!(!scratch.path().join("1.tar.gz.partial").exists());

    fs::write(a.join("share/doc/README"), "changed\n").unwrap();
    let changed = build(&a, &scratch.path().join("4.tar.gz")).unwrap();
    assert_ne!(changed.sha256, first.sha256);
}

#[test]
fn inspect_lists_manifest_first_then_sorted_entries() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("pkg");
    fs::create_dir(&dir).unwrap();
    package_dir(&dir, false);
    let out = scratch.path().join("webapp.tar.gz");
    let built = build(&dir, &out).unwrap();
    let inspection = inspect(&out).unwrap();
    assert_eq!(inspection.manifest, built.manifest);
    assert_eq!(
        (inspection.sha256, inspection.size),
        (built.sha256, built.size)
    );
    let listed: Vec<(&str, &EntryKind, u64, u32)> = inspection
        .files
        .iter()
        .map(|f| (f.path.as_str(), &f.kind, f.size, f.mode))
        .collect();
    let readme_link = EntryKind::Symlink("share/doc/README".to_owned());
    assert_eq!(
        listed,
        [
            (
                "flotilla.yaml",
                &EntryKind::File,
                MANIFEST.len() as u64,
                0o644
            ),
            ("README", &readme_link, 0, 0o777),
            ("empty", &EntryKind::Directory, 0, 0o755),
            ("scripts", &EntryKind::Directory, 0, 0o755),
            ("scripts/install.sh", &EntryKind::File, 25, 0o755),
            ("scripts/uninstall.sh", &EntryKind::File, 13, 0o644),
            ("share", &EntryKind::Directory, 0, 0o755),
            ("share/data.bin", &EntryKind::File, 100_000, 0o644),
            ("share/doc", &EntryKind::Directory, 0, 0o755),
            ("share/doc/README", &EntryKind::File, 8, 0o644),
        ]
    );
}

#[test]
fn built_package_unpacks_to_the_same_contents() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("pkg");
    fs::create_dir(&dir).unwrap();
    package_dir(&dir, false);
    let out = scratch.path().join("p.tar.gz");
    let built = build(&dir, &out).unwrap();
    verify_file_digest(&out, &built.sha256).unwrap();
    let staging = scratch.path().join("staging");
    let unpacked = unpack(fs::File::open(&out).unwrap(), &staging, &Limits::default()).unwrap();
    assert_eq!(
        (unpacked.files, unpacked.symlinks, unpacked.bytes),
        (5, 1, MANIFEST.len() as u64 + 100_046)
    );
    assert_eq!(fs::read(staging.join("README")).unwrap(), b"read me\n");
    assert_eq!(
        Manifest::from_file(&staging.join(MANIFEST_FILE)).unwrap(),
        built.manifest
    );
    assert!(built.manifest.install_script(&staging).is_file());
}

#[test]
fn tampered_package_fails_digest_check() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("pkg");
    fs::create_dir(&dir).unwrap();
    package_dir(&dir, false);
    let out = scratch.path().join("p.tar.gz");
    let built = build(&dir, &out).unwrap();
    let mut bytes = fs::read(&out).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    fs::write(&out, &bytes).unwrap();
    match verify_file_digest(&out, &built.sha256) {
        Err(VerifyError::Mismatch(m)) => {
            assert_eq!((m.expected, m.size), (built.sha256, built.size))
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
}

#[test]
fn build_refuses_bad_directories() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("pkg");
    fs::create_dir(&dir).unwrap();
    let out = scratch.path().join("p.tar.gz");

    assert!(matches!(
        build(&dir, &out),
        Err(BuildError::NoManifest { .. })
    ));

    fs::write(
        dir.join(MANIFEST_FILE),
        "name: x\nversion: 1\ninstall: missing.sh\n",
    )
    .unwrap();
    let e = build(&dir, &out).unwrap_err();
    assert!(
        matches!(
            &e,
            BuildError::MissingScript {
                field: "install",
                ..
            }
        ),
        "{e}"
    );

    fs::write(
        dir.join(MANIFEST_FILE),
        "name: X\nversion: 1\ninstall: i.sh\n",
    )
    .unwrap();
    let e = build(&dir, &out).unwrap_err();
    assert!(
        matches!(&e, BuildError::Manifest { .. }) && e.to_string().contains("field `name`"),
        "{e}"
    );

    fs::write(
        dir.join(MANIFEST_FILE),
        "name: x\nversion: 1\ninstall: i.sh\n",
    )
    .unwrap();
    fs::write(dir.join("i.sh"), "true\n").unwrap();
    let e = build(&dir, &dir.join("inside.tar.gz")).unwrap_err();
    assert!(matches!(&e, BuildError::OutputInside { .. }), "{e}");

    symlink("/etc/passwd", dir.join("escape")).unwrap();
    let e = build(&dir, &out).unwrap_err();
    assert!(
        matches!(&e, BuildError::Unpackageable { .. }) && e.to_string().contains("absolute"),
        "{e}"
    );
    fs::remove_file(dir.join("escape")).unwrap();

    nix::unistd::mkfifo(&dir.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let e = build(&dir, &out).unwrap_err();
    assert!(matches!(&e, BuildError::Unpackageable { .. }), "{e}");
    fs::remove_file(dir.join("fifo")).unwrap();

    build(&dir, &out).unwrap();
    assert!(!out.with_extension("gz.partial").exists());
}

/// A gzip tar of the given (path, contents) files, in order.
fn archive_of(files: &[(&str, &str)]) -> Vec<u8> {
    let gz = GzEncoder::new(Vec::new(), Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (path, contents) in files {
        let mut header = file_header(false, contents.len() as u64);
        tar.append_data(&mut header, path, contents.as_bytes())
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

#[test]
fn inspect_refuses_bad_packages() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("p.tar.gz");
    let manifest = "name: x\nversion: 1\ninstall: i.sh\n";

    fs::write(
        &file,
        archive_of(&[("i.sh", "true"), (MANIFEST_FILE, manifest)]),
    )
    .unwrap();
    let e = inspect(&file).unwrap_err();
    assert!(
        matches!(&e, InspectError::NoManifest { found, .. } if found == "i.sh"),
        "{e}"
    );

    fs::write(&file, archive_of(&[(MANIFEST_FILE, manifest)])).unwrap();
    let e = inspect(&file).unwrap_err();
    assert!(
        matches!(
            &e,
            InspectError::MissingScript {
                field: "install",
                ..
            }
        ),
        "{e}"
    );

    fs::write(&file, archive_of(&[(MANIFEST_FILE, "name: x\n")])).unwrap();
    let e = inspect(&file).unwrap_err();
    assert!(matches!(&e, InspectError::Manifest { .. }), "{e}");

    fs::write(&file, archive_of(&[])).unwrap();
    let e = inspect(&file).unwrap_err();
    assert!(
        matches!(&e, InspectError::NoManifest { found, .. } if found == "nothing"),
        "{e}"
    );

    fs::write(&file, b"not a package").unwrap();
    let e = inspect(&file).unwrap_err();
    assert!(
        matches!(
            &e,
            InspectError::Archive {
                source: UnpackError::Malformed(_),
                ..
            }
        ),
        "{e}"
    );

    let e = inspect(&scratch.path().join("missing.tar.gz")).unwrap_err();
    assert!(
        matches!(&e, InspectError::Read { .. }) && e.to_string().contains("missing.tar.gz"),
        "{e}"
    );

    fs::write(
        &file,
        archive_of(&[(MANIFEST_FILE, manifest), ("i.sh", "true")]),
    )
    .unwrap();
    inspect(&file).unwrap();
}
