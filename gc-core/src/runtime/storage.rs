//! What a node keeps on disk between starts: its last incarnation and the
//! primary state ([`Event::PersistPrimary`](crate::Event::PersistPrimary)).

use crate::primary::PrimaryState;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

/// The state a node persists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredState {
    /// The incarnation of the last start. The next start uses a larger one.
    pub incarnation: u64,
    /// The primary state, given back to the protocol at the next start.
    pub primary: PrimaryState,
}

/// Durable storage of a node's [`StoredState`].
///
/// The runtime calls [`Storage::load`] once at start, then [`Storage::save`]
/// with the new incarnation before it seals its first datagram, and again for
/// every primary state change before it sends anything that follows it. Both
/// run on tokio's blocking pool.
pub trait Storage: Send + 'static {
    /// The state saved by an earlier start, or `None` if there was none.
    fn load(&mut self) -> Result<Option<StoredState>, StorageError>;
    /// Saves `state`; returns only once it would survive a crash of the
    /// host (written and synced).
    fn save(&mut self, state: &StoredState) -> Result<(), StorageError>;
}

/// Why the node's state could not be read or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An I/O error on the state file or its directory.
    #[error("cannot {action} state file {}", path.display())]
    Io {
        /// The state file.
        path: PathBuf,
        /// What was being done: "open", "read", "write", "sync", "rename".
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The state file exists but does not hold a state this build reads.
    /// The node refuses to start rather than forget its primary state, which
    /// could let two primary components exist at once; an operator must
    /// repair or remove the file.
    #[error("state file {} is not a valid node state: {reason}", path.display())]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another [`Storage`] implementation failed.
    #[error("{0}")]
    Other(String),
}

/// The first bytes of a state file: a name and a format version.
const MAGIC: &[u8; 8] = b"FLOTST\x00\x01";
/// A state file is small: the primary state holds a few records of at most
/// [`crate::wire::MAX_MEMBERS`] node ids each.
const MAX_STATE_FILE: u64 = 1 << 20;

/// [`Storage`] in one small file: `MAGIC` then the postcard encoding of the
/// [`StoredState`]. Saved by writing a temporary file beside it, syncing it,
/// renaming it over the old one and syncing the directory, so a crash
/// leaves the old state or the new one, never a mix.
#[derive(Clone, Debug)]
pub struct FileStorage {
    path: PathBuf,
}

impl FileStorage {
    /// Storage in the file at `path` (created at the first save).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStorage { path: path.into() }
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
        move |source| StorageError::Io {
            path: self.path.clone(),
            action,
            source,
        }
    }

    fn temp_path(&self) -> PathBuf {
        let mut name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".tmp");
        self.path.with_file_name(name)
    }
}

impl Storage for FileStorage {
    fn load(&mut self) -> Result<Option<StoredState>, StorageError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err((self.io("open"))(e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_STATE_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(self.io("read"))?;
        let corrupt = |reason: String| StorageError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        if bytes.len() as u64 > MAX_STATE_FILE {
            return Err(corrupt(format!("longer than {MAX_STATE_FILE} bytes")));
        }
        let body = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| corrupt("does not start with the state file header".into()))?;
        let state: StoredState = postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
        Ok(Some(state))
    }

    fn save(&mut self, state: &StoredState) -> Result<(), StorageError> {
        let mut bytes = MAGIC.to_vec();
        let body = postcard::to_allocvec(state).map_err(|e| StorageError::Corrupt {
            path: self.path.clone(),
            reason: format!("cannot encode: {e}"),
        })?;
        bytes.extend_from_slice(&body);
        let temp = self.temp_path();
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&temp).map_err(self.io("create"))?;
        file.write_all(&bytes).map_err(self.io("write"))?;
        file.sync_all().map_err(self.io("sync"))?;
        drop(file);
        std::fs::rename(&temp, &self.path).map_err(self.io("rename"))?;
        // The rename is durable once the directory is synced.
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io("sync the directory of"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("node.state");
        let mut s = FileStorage::new(&path);
        assert_eq!(s.load()?, None);
        let state = StoredState {
            incarnation: 7,
            primary: PrimaryState::initial(vec![3, 1, 2]),
        };
        s.save(&state)?;
        assert_eq!(s.load()?, Some(state.clone()));
        let next = StoredState {
            incarnation: 8,
            ..state
        };
        s.save(&next)?;
        assert_eq!(FileStorage::new(&path).load()?, Some(next));
        std::fs::write(&path, b"garbage")?;
        assert!(matches!(s.load(), Err(StorageError::Corrupt { .. })));
        let mut truncated = MAGIC.to_vec();
        truncated.push(200);
        std::fs::write(&path, truncated)?;
        assert!(matches!(s.load(), Err(StorageError::Corrupt { .. })));
        Ok(())
    }
}
