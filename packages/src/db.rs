//! The installed-packages database: one small YAML file per host.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::manifest::is_valid_name;
use crate::version::Version;

/// The database's file name inside the data directory.
pub const DB_FILE: &str = "installed-packages.yaml";
/// The temporary file a new version is written to before the rename.
const DB_TEMP_FILE: &str = ".installed-packages.yaml.tmp";
/// The on-disk format this code reads and writes.
const FORMAT: u32 = 1;
/// Largest database file read, in bytes.
const MAX_DB_BYTES: u64 = 16 * 1024 * 1024;

/// What the database knows about one package on this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledPackage {
    /// The package name.
    pub name: String,
    /// The version installed (or attempted).
    pub version: Version,
    /// The digest of the package file it came from.
    pub sha256: Sha256Digest,
    /// When the install finished, in seconds since the Unix epoch.
    pub installed_at: u64,
    /// How the install went.
    pub outcome: InstallOutcome,
}

impl InstalledPackage {
    /// Whether the package is installed (its install succeeded).
    pub fn is_installed(&self) -> bool {
        self.outcome == InstallOutcome::Installed
    }
}

/// How an install ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum InstallOutcome {
    /// Digest, unpacking and install script all succeeded.
    Installed,
    /// The install failed; `reason` says where.
    Failed {
        /// What went wrong, for people.
        reason: String,
    },
}

/// Why the database could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database file exists but could not be read.
    #[error("could not read the installed-packages database {}: {source}", path.display())]
    Read {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The database file is not a database this code wrote: bad YAML,
    /// unknown fields, a duplicate or invalid package name, or too large.
    #[error(
        "the installed-packages database {} is corrupt: {reason}; repair it, or move it aside to start \
         from an empty database",
        path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The database was written by a newer (or unknown) version.
    #[error(
        "the installed-packages database {} has format {found}; this version reads format {FORMAT}",
        path.display()
    )]
    UnsupportedFormat {
        /// The database file.
        path: PathBuf,
        /// The format it declares.
        found: u32,
    },
    /// Writing the new database failed; the file on disk and the database
    /// in memory both still hold the previous contents.
    #[error("could not write the installed-packages database {}: {source}", path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A record with a name that is not a valid package name.
    #[error("`{name}` is not a valid package name")]
    InvalidName {
        /// The name.
        name: String,
    },
}

/// The file's layout.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DbFile {
    format: u32,
    #[serde(default)]
    packages: Vec<InstalledPackage>,
}

#[derive(Serialize)]
struct DbFileRef<'a> {
    format: u32,
    packages: Vec<&'a InstalledPackage>,
}

/// The installed-packages database of one host, kept in
/// `DATA_DIR/installed-packages.yaml`.
///
/// Every change is written to a temporary file, synced, renamed over the
/// database and the directory synced, so after a crash the file holds
/// either the old or the new contents, never a mix. One process owns a
/// database at a time; nothing here locks against a second writer.
#[derive(Debug)]
pub struct PackageDb {
    dir: PathBuf,
    path: PathBuf,
    packages: BTreeMap<String, InstalledPackage>,
}

impl PackageDb {
    /// Opens the database in `data_dir`; a missing file is an empty
    /// database (the file is created at the first change).
    pub fn open(data_dir: &Path) -> Result<PackageDb, DbError> {
        let path = data_dir.join(DB_FILE);
        let corrupt = |reason: String| DbError::Corrupt {
            path: path.clone(),
            reason,
        };
        let mut packages = BTreeMap::new();
        let file = match File::open(&path) {
            Ok(file) => Some(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => return Err(DbError::Read { path, source }),
        };
        if let Some(file) = file {
            let mut bytes = Vec::new();
            file.take(MAX_DB_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|source| DbError::Read {
                    path: path.clone(),
                    source,
                })?;
            if bytes.len() as u64 > MAX_DB_BYTES {
                return Err(corrupt(format!("it is larger than {MAX_DB_BYTES} bytes")));
            }
            let text =
                String::from_utf8(bytes).map_err(|_| corrupt("it is not UTF-8 text".to_owned()))?;
            let db: DbFile = serde_yaml::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
            if db.format != FORMAT {
                return Err(DbError::UnsupportedFormat {
                    path,
                    found: db.format,
                });
            }
            for package in db.packages {
                if !is_valid_name(&package.name) {
                    return Err(corrupt(format!(
                        "`{}` is not a valid package name",
                        package.name.escape_debug()
                    )));
                }
                if packages.contains_key(&package.name) {
                    return Err(corrupt(format!(
                        "package `{}` is listed twice",
                        package.name
                    )));
                }
                packages.insert(package.name.clone(), package);
            }
        }
        Ok(PackageDb {
            dir: data_dir.to_owned(),
            path,
            packages,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record for `name`, if any.
    pub fn get(&self, name: &str) -> Option<&InstalledPackage> {
        self.packages.get(name)
    }

    /// Every record, by name.
    pub fn list(&self) -> impl Iterator<Item = &InstalledPackage> + '_ {
        self.packages.values()
    }

    /// Stores `package`, replacing any record of the same name, and writes
    /// the database. Returns the record it replaced.
    pub fn record(
        &mut self,
        package: InstalledPackage,
    ) -> Result<Option<InstalledPackage>, DbError> {
        if !is_valid_name(&package.name) {
            return Err(DbError::InvalidName { name: package.name });
        }
        let name = package.name.clone();
        let previous = self.packages.insert(name.clone(), package);
        if let Err(e) = self.save() {
            match previous {
                Some(previous) => self.packages.insert(name, previous),
                None => self.packages.remove(&name),
            };
            return Err(e);
        }
        Ok(previous)
    }

    /// Removes the record for `name` and writes the database. Returns the
    /// removed record; removing a name that has none changes nothing.
    pub fn remove(&mut self, name: &str) -> Result<Option<InstalledPackage>, DbError> {
        let Some(previous) = self.packages.remove(name) else {
            return Ok(None);
        };
        if let Err(e) = self.save() {
            self.packages.insert(previous.name.clone(), previous);
            return Err(e);
        }
        Ok(Some(previous))
    }

    fn save(&self) -> Result<(), DbError> {
        let temp = self.dir.join(DB_TEMP_FILE);
        let text = serde_yaml::to_string(&DbFileRef {
            format: FORMAT,
            packages: self.packages.values().collect(),
        })
        .map_err(|e| DbError::Write {
            path: temp.clone(),
            source: io::Error::other(e),
        })?;
        let write = || -> io::Result<()> {
            let mut file = File::create(&temp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()
        };
        if let Err(source) = write() {
            let _ = fs::remove_file(&temp);
            return Err(DbError::Write { path: temp, source });
        }
        if let Err(source) = fs::rename(&temp, &self.path) {
            let _ = fs::remove_file(&temp);
            return Err(DbError::Write {
                path: self.path.clone(),
                source,
            });
        }
        // Make the rename itself durable.
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| DbError::Write {
                path: self.dir.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, version: &str, outcome: InstallOutcome) -> InstalledPackage {
        InstalledPackage {
            name: name.to_owned(),
            version: version.parse().unwrap(),
            sha256: Sha256Digest([7; 32]),
            installed_at: 1_700_000_000,
            outcome,
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = PackageDb::open(dir.path()).unwrap();
        assert_eq!(db.list().count(), 0);
        assert!(!db.path().exists(), "nothing written until a change");

        assert_eq!(
            db.record(package("webapp", "1.0", InstallOutcome::Installed))
                .unwrap(),
            None
        );
        db.record(package(
            "libfoo",
            "2.1.0",
            InstallOutcome::Failed {
                reason: "install script exited with 3".into(),
            },
        ))
        .unwrap();
        let replaced = db
            .record(package("webapp", "1.1", InstallOutcome::Installed))
            .unwrap();
        assert_eq!(replaced.unwrap().version.to_string(), "1.0");

        let reopened = PackageDb::open(dir.path()).unwrap();
        let names: Vec<_> = reopened.list().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["libfoo", "webapp"]);
        let webapp = reopened.get("webapp").unwrap();
        assert_eq!(webapp, &package("webapp", "1.1", InstallOutcome::Installed));
        assert!(webapp.is_installed());
        assert!(!reopened.get("libfoo").unwrap().is_installed());
        assert_eq!(
            reopened.get("libfoo").unwrap().outcome,
            InstallOutcome::Failed {
                reason: "install script exited with 3".into()
            }
        );

        let mut db = reopened;
        assert_eq!(db.remove("webapp").unwrap().unwrap().name, "webapp");
        assert_eq!(db.remove("webapp").unwrap(), None);
        let reopened = PackageDb::open(dir.path()).unwrap();
        assert_eq!(reopened.list().count(), 1);
        assert!(!dir.path().join(DB_TEMP_FILE).exists());
    }

    #[test]
    fn corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        for (contents, expected) in [
            ("format: 1\npackages: [{name: x}]\n", "missing field"),
            ("{{{{", "corrupt"),
            ("format: 1\nextra: true\n", "unknown field `extra`"),
            (
                "format: 1\npackages:\n- {name: a, version: '1', sha256: '0707070707070707070707070707070707070707070707070707070707070707', installed_at: 1, outcome: {result: installed}}\n- {name: a, version: '2', sha256: '0707070707070707070707070707070707070707070707070707070707070707', installed_at: 1, outcome: {result: installed}}\n",
                "listed twice",
            ),
        ] {
            fs::write(&path, contents).unwrap();
            let e = PackageDb::open(dir.path()).unwrap_err();
            assert!(matches!(e, DbError::Corrupt { .. }), "{e}");
            let message = e.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(expected), "{message}");
        }
        fs::write(&path, "format: 9\n").unwrap();
        let e = PackageDb::open(dir.path()).unwrap_err();
        assert!(
            matches!(e, DbError::UnsupportedFormat { found: 9, .. }),
            "{e}"
        );
    }

    #[test]
    fn failed_write_keeps_memory_and_disk_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = PackageDb::open(dir.path()).unwrap();
        db.record(package("a", "1", InstallOutcome::Installed))
            .unwrap();
        // A directory where the temporary file goes makes the write fail.
        fs::create_dir(dir.path().join(DB_TEMP_FILE)).unwrap();
        let e = db
            .record(package("b", "1", InstallOutcome::Installed))
            .unwrap_err();
        assert!(matches!(e, DbError::Write { .. }), "{e}");
        assert!(db.get("b").is_none());
        let e = db.remove("a").unwrap_err();
        assert!(matches!(e, DbError::Write { .. }), "{e}");
        assert!(db.get("a").is_some());
        fs::remove_dir(dir.path().join(DB_TEMP_FILE)).unwrap();
        assert_eq!(PackageDb::open(dir.path()).unwrap().list().count(), 1);
    }

    #[test]
    fn invalid_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = PackageDb::open(dir.path()).unwrap();
        let e = db
            .record(package("../evil", "1", InstallOutcome::Installed))
            .unwrap_err();
        assert!(matches!(e, DbError::InvalidName { .. }), "{e}");
    }
}
