//! The cluster key: the secret every daemon of a fleet shares.
//!
//! The key file holds 32 random bytes as 64 lowercase hexadecimal digits and
//! a newline, and must be readable by its owner only. `mgmtd keygen FILE`
//! writes one ([`keygen`]); the daemon loads it with [`ClusterKey::load`],
//! which refuses a missing file or one whose mode lets the group or others
//! in, and says how to fix it.
//!
//! It lives in the client protocol crate because both sides load it: the
//! daemon for the group and its TCP client listener, the monitor for
//! `--connect HOST:PORT --key FILE`.

use std::fmt;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The length of the key in bytes.
pub const KEY_LEN: usize = 32;
/// The largest key file read; a key file is 65 bytes.
const MAX_KEY_FILE: u64 = 4096;

/// The fleet's shared secret. Its `Debug` does not show the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; KEY_LEN]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Why a key could not be made, written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The system's random number generator failed.
    #[error("cannot get random bytes from the system: {0}")]
    Random(io::Error),
    /// [`ClusterKey::load`]: there is no file at the path.
    #[error("cluster key file {} does not exist; create one with `mgmtd keygen {}` and copy it to every host of the fleet", path.display(), shell_quote(path))]
    Missing {
        /// The key file.
        path: PathBuf,
    },
    /// [`ClusterKey::load`]: the file's mode gives the group or others some
    /// access.
    #[error("cluster key file {} is open to group or others (mode {mode:04o}); fix it with `chmod 600 {}`", path.display(), shell_quote(path))]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// [`ClusterKey::load`]: the path is a directory or a special file.
    #[error("cluster key file {} is not a regular file", path.display())]
    NotAFile {
        /// The key file.
        path: PathBuf,
    },
    /// [`ClusterKey::load`]: the file does not hold 64 hexadecimal digits.
    #[error("cluster key file {} is malformed: {detail}; a key file holds 64 hexadecimal digits, as `mgmtd keygen` writes", path.display())]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// [`ClusterKey::write_new`]: something exists at the path already.
    #[error("{} already exists; refusing to overwrite a cluster key (remove it first to replace it, then give the new key to every host of the fleet)", path.display())]
    Exists {
        /// The path given.
        path: PathBuf,
    },
    /// Reading or writing the file failed.
    #[error("cannot {action} cluster key file {}: {cause}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// What was being done: "open", "read", "create", "write".
        action: &'static str,
        /// What the system said.
        cause: io::Error,
    },
}

impl ClusterKey {
    /// A new key from the system's random number generator.
    pub fn generate() -> Result<ClusterKey, KeyError> {
        let mut bytes = [0; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.into()))?;
        Ok(ClusterKey(bytes))
    }

    /// A key with the given bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> ClusterKey {
        ClusterKey(bytes)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Loads the key in `path`, refusing a missing file, anything but a
    /// regular file, a mode that gives the group or others any access
    /// (`mode & 0o077 != 0`), and anything but 64 hexadecimal digits
    /// (surrounding whitespace allowed).
    pub fn load(path: &Path) -> Result<ClusterKey, KeyError> {
        let io_error = |action, cause| KeyError::Io {
            path: path.to_owned(),
            action,
            cause,
        };
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(KeyError::Missing {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(io_error("open", e)),
        };
        // The mode of the file opened, not of whatever is at the path now.
        let meta = file.metadata().map_err(|e| io_error("read", e))?;
        if !meta.is_file() {
            return Err(KeyError::NotAFile {
                path: path.to_owned(),
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
        let mut bytes = Vec::new();
        file.take(MAX_KEY_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io_error("read", e))?;
        let malformed = |detail: String| KeyError::Malformed {
            path: path.to_owned(),
            detail,
        };
        if bytes.len() as u64 > MAX_KEY_FILE {
            return Err(malformed(format!("it is larger than {MAX_KEY_FILE} bytes")));
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| malformed("it is not text".to_owned()))?
            .trim();
        decode_hex(text).map(ClusterKey).ok_or_else(|| {
            malformed(format!(
                "found {} characters{}",
                text.chars().count(),
                if text.chars().all(|c| c.is_ascii_hexdigit()) {
                    ""
                } else {
                    ", not all hexadecimal digits"
                }
            ))
        })
    }

    /// Writes the key to a new file at `path` with mode 0600: 64 lowercase
    /// hexadecimal digits and a newline, synced to disk. Refuses to replace
    /// anything that exists at `path`; removes its partial file on failure.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => KeyError::Exists {
                    path: path.to_owned(),
                },
                _ => KeyError::Io {
                    path: path.to_owned(),
                    action: "create",
                    cause: e,
                },
            })?;
        let mut text = encode_hex(&self.0);
        text.push('\n');
        // Exactly 0600, whatever the umask.
        let written = file
            .set_permissions(Permissions::from_mode(0o600))
            .and_then(|()| file.write_all(text.as_bytes()))
            .and_then(|()| file.sync_all());
        if let Err(cause) = written {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(KeyError::Io {
                path: path.to_owned(),
                action: "write",
                cause,
            });
        }
        Ok(())
    }
}

/// `mgmtd keygen FILE`: writes a new random key to a new file.
pub fn keygen(path: &Path) -> Result<(), KeyError> {
    ClusterKey::generate()?.write_new(path)
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<[u8; KEY_LEN]> {
    let digits = text.as_bytes();
    if digits.len() != KEY_LEN * 2 {
        return None;
    }
    let mut key = [0; KEY_LEN];
    for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(key)
}

/// A path as a shell word, for the commands the errors suggest.
fn shell_quote(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@,%=".contains(c));
    if plain {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn mode(path: &Path) -> Result<u32, io::Error> {
        Ok(std::fs::metadata(path)?.mode() & 0o7777)
    }

    #[test]
    fn keygen_writes_64_hex_digits_with_mode_0600() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("cluster.key");
        keygen(&path)?;
        assert_eq!(mode(&path)?, 0o600);
        let text = std::fs::read_to_string(&path)?;
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        assert!(text[..64]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        let key = ClusterKey::load(&path)?;
        assert_eq!(encode_hex(key.as_bytes()), text[..64]);
        assert_eq!(format!("{key:?}"), "ClusterKey(..)");
        Ok(())
    }

    #[test]
    fn keygen_refuses_to_overwrite() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("cluster.key");
        keygen(&path)?;
        let before = std::fs::read(&path)?;
        let err = keygen(&path).err().ok_or("overwrote the key")?;
        assert!(matches!(err, KeyError::Exists { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "{} already exists; refusing to overwrite a cluster key (remove it first to replace it, then give the new key to every host of the fleet)",
                path.display()
            )
        );
        assert_eq!(std::fs::read(&path)?, before);
        Ok(())
    }

    #[test]
    fn two_keys_differ() -> TestResult {
        assert_ne!(ClusterKey::generate()?, ClusterKey::generate()?);
        Ok(())
    }

    #[test]
    fn load_refuses_a_key_open_to_others_and_says_how_to_fix_it() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("cluster.key");
        keygen(&path)?;
        for bad in [0o640, 0o604, 0o644, 0o660, 0o601] {
            std::fs::set_permissions(&path, Permissions::from_mode(bad))?;
            let err = ClusterKey::load(&path).err().ok_or("accepted")?;
            assert_eq!(
                err.to_string(),
                format!(
                    "cluster key file {p} is open to group or others (mode {bad:04o}); fix it with `chmod 600 {p}`",
                    p = path.display()
                )
            );
        }
        std::fs::set_permissions(&path, Permissions::from_mode(0o400))?;
        ClusterKey::load(&path)?;
        Ok(())
    }

    #[test]
    fn load_refuses_a_missing_key_and_says_how_to_make_one() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("my key");
        let err = ClusterKey::load(&path).err().ok_or("accepted")?;
        assert_eq!(
            err.to_string(),
            format!(
                "cluster key file {} does not exist; create one with `mgmtd keygen '{}'` and copy it to every host of the fleet",
                path.display(),
                path.display()
            )
        );
        Ok(())
    }

    #[test]
    fn load_refuses_malformed_keys() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("cluster.key");
        for (content, detail) in [
            ("abc\n", "found 3 characters"),
            (
                &"zz".repeat(32),
                "found 64 characters, not all hexadecimal digits",
            ),
            ("", "found 0 characters"),
        ] {
            let _ = std::fs::remove_file(&path);
            std::fs::write(&path, content)?;
            std::fs::set_permissions(&path, Permissions::from_mode(0o600))?;
            match ClusterKey::load(&path) {
                Err(KeyError::Malformed { detail: d, .. }) => assert_eq!(d, detail),
                other => return Err(format!("{content:?}: {other:?}").into()),
            }
        }
        // Upper case and surrounding whitespace are accepted.
        std::fs::write(&path, format!("  {}\r\n", "AB".repeat(32)))?;
        assert_eq!(ClusterKey::load(&path)?.as_bytes(), &[0xab; KEY_LEN]);
        Ok(())
    }

    #[test]
    fn load_refuses_a_directory() -> TestResult {
        let dir = tempfile::tempdir()?;
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o700))?;
        let err = ClusterKey::load(dir.path()).err().ok_or("accepted")?;
        assert!(matches!(err, KeyError::NotAFile { .. }), "{err:?}");
        Ok(())
    }
}
