//! Where the log and snapshots live: a flat directory of named files behind
//! the [`Storage`] trait, on a real file system ([`FileStorage`]) or in
//! memory for the simulator ([`MemDisk`]), whose disks survive a simulated
//! crash with exactly what was synced.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A flat directory of files, with the durability operations the log needs.
///
/// The contract, which [`MemDisk`] simulates: bytes appended are durable
/// once [`Storage::sync`] returns; [`Storage::write_atomic`],
/// [`Storage::truncate`] and [`Storage::remove`] are durable when they
/// return; after a crash a file holds what was durable, plus possibly some
/// prefix of what was appended after.
pub trait Storage {
    /// The names of the files, in any order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// The whole content of a file.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// `len` bytes of a file from `offset`; an error if the file is shorter.
    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Appends to an existing file (not yet durable).
    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Makes what was appended to a file durable (`fdatasync`).
    fn sync(&mut self, name: &str) -> io::Result<()>;
    /// Cuts a file to `len` bytes, durably.
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()>;
    /// Creates or replaces a file with `bytes`, atomically and durably:
    /// after a crash the file holds either its old content or `bytes`.
    fn write_atomic(&mut self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Removes a file, durably; removing a missing file is not an error.
    fn remove(&mut self, name: &str) -> io::Result<()>;
    /// How to name the file in a message (its path).
    fn describe(&self, name: &str) -> String;
}

/// Files in one directory of the real file system.
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
    appenders: BTreeMap<String, File>,
}

impl FileStorage {
    /// Uses `dir`, creating it if needed.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(FileStorage {
            dir,
            appenders: BTreeMap::new(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn appender(&mut self, name: &str) -> io::Result<&mut File> {
        if !self.appenders.contains_key(name) {
            let f = OpenOptions::new().append(true).open(self.dir.join(name))?;
            self.appenders.insert(name.to_owned(), f);
        }
        self.appenders
            .get_mut(name)
            .ok_or_else(|| io::Error::other("appender vanished"))
    }
}

impl Storage for FileStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            if let Ok(name) = e.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.dir.join(name))
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut f = File::open(self.dir.join(name))?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0; len];
        f.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.appender(name)?.write_all(bytes)
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        self.appender(name)?.sync_data()
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(self.dir.join(name))?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn write_atomic(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.appenders.remove(name);
        write_file_atomic(&self.dir.join(name), bytes)
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.appenders.remove(name);
        match fs::remove_file(self.dir.join(name)) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn describe(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// Writes `bytes` to `path` atomically and durably: to a temporary file in
/// the same directory, `fsync`, rename over `path`, `fsync` of the
/// directory. After a crash `path` holds its old content or `bytes`, never a
/// mix. The temporary file is removed if anything fails.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Makes a directory's entries (creations, renames, removals) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[derive(Clone, Debug, Default)]
struct MemFile {
    data: Vec<u8>,
    /// Bytes that survive a crash.
    synced: usize,
}

#[derive(Debug, Default)]
struct Disk {
    files: BTreeMap<String, MemFile>,
    /// Fail every write and sync with this kind of error.
    failing: Option<io::ErrorKind>,
}

/// A simulated disk shared by every incarnation of one simulated host: it
/// outlives the process, and [`MemDisk::crash`] leaves on it only what was
/// durable. Cloning gives another handle to the same disk.
#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    disk: Arc<Mutex<Disk>>,
}

impl MemDisk {
    /// An empty disk.
    pub fn new() -> Self {
        MemDisk::default()
    }

    /// A [`Storage`] on this disk.
    pub fn storage(&self) -> MemStorage {
        MemStorage { disk: self.clone() }
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Simulates a power loss: every file keeps only its durable bytes.
    pub fn crash(&self) {
        self.crash_keeping(|_, _| 0);
    }

    /// Simulates a power loss that tears writes: every file keeps its
    /// durable bytes plus the first `keep(name, unsynced)` (at most
    /// `unsynced`) of the bytes appended after them.
    pub fn crash_keeping(&self, mut keep: impl FnMut(&str, usize) -> usize) {
        let mut d = self.lock();
        for (name, f) in d.files.iter_mut() {
            let unsynced = f.data.len() - f.synced;
            let len = f.synced + keep(name, unsynced).min(unsynced);
            f.data.truncate(len);
            f.synced = len;
        }
    }

    /// Makes every later write and sync fail with an error of `kind` (as a
    /// full disk would), or, with `None`, succeed again.
    pub fn fail_writes(&self, kind: Option<io::ErrorKind>) {
        self.lock().failing = kind;
    }

    /// A file's content, durable or not.
    pub fn file(&self, name: &str) -> Option<Vec<u8>> {
        self.lock().files.get(name).map(|f| f.data.clone())
    }

    /// Replaces a file's content, durably (to corrupt it in a test).
    pub fn set_file(&self, name: &str, data: Vec<u8>) {
        let synced = data.len();
        self.lock()
            .files
            .insert(name.to_owned(), MemFile { data, synced });
    }

    /// The names of the files, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().files.keys().cloned().collect()
    }
}

/// [`Storage`] on a [`MemDisk`].
#[derive(Clone, Debug)]
pub struct MemStorage {
    disk: MemDisk,
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name}"))
}

impl MemStorage {
    fn writable(&self) -> io::Result<MutexGuard<'_, Disk>> {
        let d = self.disk.lock();
        match d.failing {
            Some(kind) => Err(io::Error::new(kind, "simulated disk failure")),
            None => Ok(d),
        }
    }
}

impl Storage for MemStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.disk.names())
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.disk.file(name).ok_or_else(|| not_found(name))
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let d = self.disk.lock();
        let f = d.files.get(name).ok_or_else(|| not_found(name))?;
        usize::try_from(offset)
            .ok()
            .and_then(|start| f.data.get(start..start.checked_add(len)?))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut d = self.writable()?;
        let f = d.files.get_mut(name).ok_or_else(|| not_found(name))?;
        f.data.extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        let mut d = self.writable()?;
        let f = d.files.get_mut(name).ok_or_else(|| not_found(name))?;
        f.synced = f.data.len();
        Ok(())
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        let mut d = self.writable()?;
        let f = d.files.get_mut(name).ok_or_else(|| not_found(name))?;
        let len = usize::try_from(len).unwrap_or(usize::MAX).min(f.data.len());
        f.data.truncate(len);
        f.synced = len;
        Ok(())
    }

    fn write_atomic(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut d = self.writable()?;
        d.files.insert(
            name.to_owned(),
            MemFile {
                data: bytes.to_vec(),
                synced: bytes.len(),
            },
        );
        Ok(())
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.writable()?.files.remove(name);
        Ok(())
    }

    fn describe(&self, name: &str) -> String {
        format!("mem:{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(s: &mut dyn Storage) {
        s.write_atomic("a", b"head").unwrap();
        s.append("a", b"-tail").unwrap();
        s.sync("a").unwrap();
        assert_eq!(s.read("a").unwrap(), b"head-tail");
        assert_eq!(s.read_at("a", 4, 3).unwrap(), b"-ta");
        assert!(s.read_at("a", 8, 3).is_err());
        s.truncate("a", 4).unwrap();
        s.append("a", b"!").unwrap();
        assert_eq!(s.read("a").unwrap(), b"head!");
        assert!(s.append("missing", b"x").is_err());
        let mut names = s.list().unwrap();
        names.sort();
        assert_eq!(names, vec!["a".to_owned()]);
        s.remove("a").unwrap();
        s.remove("a").unwrap();
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn file_storage() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileStorage::open(dir.path().join("maps")).unwrap();
        exercise(&mut s);
        write_file_atomic(&dir.path().join("maps/f"), b"x").unwrap();
        assert_eq!(fs::read(dir.path().join("maps/f")).unwrap(), b"x");
        assert_eq!(s.list().unwrap(), vec!["f".to_owned()], "no temp file left");
    }

    #[test]
    fn mem_storage_and_crashes() {
        let disk = MemDisk::new();
        exercise(&mut disk.storage());
        let mut s = disk.storage();
        s.write_atomic("log", b"12").unwrap();
        s.append("log", b"34").unwrap();
        s.sync("log").unwrap();
        s.append("log", b"5678").unwrap();
        disk.crash_keeping(|_, unsynced| unsynced / 2);
        assert_eq!(disk.file("log").unwrap(), b"123456");
        s.append("log", b"9").unwrap();
        disk.crash();
        assert_eq!(disk.file("log").unwrap(), b"123456");
        disk.fail_writes(Some(io::ErrorKind::PermissionDenied));
        assert_eq!(
            s.append("log", b"x").unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        disk.fail_writes(None);
        s.append("log", b"x").unwrap();
    }
}
