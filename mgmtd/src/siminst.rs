//! siminst: installing a package on many hosts at once.
//!
//! # The flow
//!
//! 1. A monitor streams the package file to the server it is connected to,
//!    the **origin** ([`receive_upload`]), which keeps it in its spool
//!    (`DATA_DIR/siminst/out/JOB.pkg`).
//! 2. The origin multicasts the advertisement ([`Advertisement`]: name,
//!    version, size, digest, the manifest with its requirements Rp, the
//!    installation group Gp) as a command in the `mgmt` group, in agreed
//!    order and at most once per job id like every command.
//! 3. Each target checks Rp against its host ([`Siminst::on_command`]). One
//!    that does not meet it reports *not eligible* with the reason; one
//!    that has the same version installed reports *already installed*
//!    (unless `--force`). The others join Gp and, at every view of Gp they
//!    install while the package is incomplete, tell the group which chunks
//!    they miss ([`GroupMessage::PackageHave`](crate::wire::GroupMessage)).
//! 4. The origin waits until every target in M has answered or said it is
//!    ready (or [`JOIN_WAIT`] passes), then multicasts the chunks to Gp in
//!    order (FIFO), backing off while the group core says its send queue is
//!    full, and an end marker. A receiver that misses chunks (it was cut off
//!    by a partition, or joined late) says so again after the merge; the
//!    origin re-sends just those chunks. It serves until every target has
//!    reported or the job's timeout passes.
//! 5. A receiver unpacks the package into its staging directory with the
//!    safe unpacker as the chunks come, in order (chunks that come before
//!    their turn wait in a spill file), and hashes it on the way. With every
//!    chunk it checks the digest of the whole package; only then does it
//!    check that the manifest is the advertised one, run the install script
//!    with its timeout, move the package to `DATA_DIR/packages/NAME` and
//!    record it in the installed-packages database. Any failure, a wrong
//!    digest first, removes the staging directory and leaves the previous
//!    installation as it was. Installs and removals of one package name on
//!    one host run one at a time.
//!
//! The origin, when it is a target itself, installs from its spool and does
//! not receive the chunks it sends.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use flotilla_client::message::{
    is_valid_package_name, PackageVersion, ServerMessage, Siminst as SiminstRequest, MAX_MANIFEST,
    MAX_PACKAGE_SIZE, MAX_TIMEOUT,
};
use flotilla_client::outcome::{Captured, PackageOutcome, PackageStatus};
use flotilla_client::{JobId, PackageData, ServerConnection, UploadFrame};
use packages::{HostFacts, InstallOutcome, InstalledPackage, Manifest, PackageDb, Sha256Digest};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::group::{Group, GroupError, Order, SubgroupEvent};
use crate::wire::{self, GroupMessage};

/// Bytes of the package in one chunk multicast to Gp.
pub const CHUNK_SIZE: u32 = 256 * 1024;
/// How long the origin waits for the eligible targets to be in Gp before it
/// starts sending to those that are.
pub const JOIN_WAIT: Duration = Duration::from_secs(10);
/// How long a transfer (and install) may take when the monitor gives no
/// timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// The most missing-chunk ranges one receiver reports at once (it reports
/// again after the next end marker).
pub const MAX_RANGES: usize = 1024;
/// Bytes of each script output stream kept.
const OUTPUT_CAP: usize = 64 * 1024;
/// Events queued from Gp to a receiver.
const SUBSCRIPTION: usize = 256;
/// The version byte of the messages in Gp.
const GP_VERSION: u8 = 1;
/// Gp message kinds.
const KIND_CHUNK: u8 = b'C';
const KIND_END: u8 = b'E';
/// How progress lines start (the monitor recognizes them).
pub const PROGRESS_PREFIX: &str = "siminst: ";
/// The longest version string carried.
const MAX_VERSION: usize = 128;

/// A package as the origin advertises it in the `mgmt` group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advertisement {
    /// The package's name (from the manifest).
    pub name: String,
    /// Its version (from the manifest).
    pub version: String,
    /// The package file's size.
    pub size: u64,
    /// Its SHA-256 digest, which every host verifies.
    pub sha256: [u8; 32],
    /// The manifest, as the monitor sent it: the requirements Rp.
    pub manifest: String,
    /// The installation group Gp.
    pub group: String,
    /// Bytes per chunk.
    pub chunk_size: u32,
    /// Install even when the same version is installed.
    pub force: bool,
    /// How long the transfer and install may take.
    pub timeout: Duration,
}

impl Advertisement {
    /// Builds the advertisement of a monitor's request, checking its
    /// manifest. The error is for the monitor.
    pub fn from_request(request: &SiminstRequest) -> Result<Advertisement, String> {
        let manifest = Manifest::from_yaml(&request.manifest)
            .map_err(|e| format!("the package's manifest is invalid: {e}"))?;
        let sha256: Sha256Digest = request
            .sha256
            .parse()
            .map_err(|e| format!("bad digest: {e}"))?;
        let ad = Advertisement {
            name: manifest.name.clone(),
            version: manifest.version.to_string(),
            size: request.size,
            sha256: sha256.0,
            manifest: request.manifest.clone(),
            group: group_name(request.job),
            chunk_size: CHUNK_SIZE,
            force: request.force,
            timeout: request.timeout.unwrap_or(DEFAULT_TIMEOUT),
        };
        ad.check().map_err(str::to_owned)?;
        Ok(ad)
    }

    /// The command as people read it.
    pub fn describe(&self) -> String {
        let force = if self.force { " --force" } else { "" };
        format!("siminst {} {}{force}", self.name, self.version)
    }

    /// Checks the bounds a server relies on; the error names the field.
    pub fn check(&self) -> Result<(), &'static str> {
        let ok = |ok: bool, what| if ok { Ok(()) } else { Err(what) };
        ok(is_valid_package_name(&self.name), "package name")?;
        ok(
            !self.version.is_empty() && self.version.len() <= MAX_VERSION,
            "package version",
        )?;
        ok(
            self.size > 0 && self.size <= MAX_PACKAGE_SIZE,
            "package size",
        )?;
        ok(
            !self.manifest.is_empty() && self.manifest.len() <= MAX_MANIFEST,
            "manifest",
        )?;
        ok(
            self.group.starts_with("pkg/") && self.group.len() <= 64,
            "installation group",
        )?;
        ok((1024..=1 << 20).contains(&self.chunk_size), "chunk size")?;
        ok(
            !self.timeout.is_zero() && self.timeout <= MAX_TIMEOUT,
            "timeout",
        )
    }

    /// How many chunks the package has.
    pub fn chunks(&self) -> u32 {
        let n = self.size.div_ceil(u64::from(self.chunk_size));
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The byte range of chunk `index`.
    fn range(&self, index: u32) -> (u64, usize) {
        let start = u64::from(index) * u64::from(self.chunk_size);
        let len = (self.size - start.min(self.size)).min(u64::from(self.chunk_size));
        // A chunk is at most 1 MiB (checked).
        (start, len as usize)
    }

    /// How long the monitor's server waits for every target's outcome.
    pub fn deadline(&self) -> Duration {
        let install = Manifest::from_yaml(&self.manifest)
            .map(|m| m.install_timeout)
            .unwrap_or(packages::DEFAULT_INSTALL_TIMEOUT);
        self.timeout
            .saturating_add(install)
            .saturating_add(Duration::from_secs(10))
    }
}

/// The installation group of a job.
pub fn group_name(job: JobId) -> String {
    format!("pkg/{job}")
}

/// Why siminst's state could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SiminstError {
    /// The installed-packages database.
    #[error(transparent)]
    Db(#[from] packages::DbError),
    /// Its directories.
    #[error("cannot prepare {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What the origin task learns from the core.
#[derive(Debug)]
enum OriginEvent {
    /// A target reported.
    Result(String),
    /// M changed.
    Members(Vec<String>),
    /// A target misses these chunk ranges (inclusive).
    Have(String, Vec<(u32, u32)>),
}

/// Where siminst keeps its files.
#[derive(Debug, Clone)]
struct Paths {
    /// `DATA_DIR/siminst/out`: the origin's spooled packages.
    out: PathBuf,
    /// `DATA_DIR/siminst/staging`: one directory per job being installed.
    staging: PathBuf,
    /// `DATA_DIR/packages`: the installed packages, one directory each.
    installed: PathBuf,
    /// The data directory, for free space.
    data_dir: PathBuf,
}

/// A finished install or removal, for the core to record and report.
pub type Done = mpsc::Sender<(JobId, PackageOutcome)>;

type NameLocks = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// siminst's part of the server core. See the [module documentation](self).
pub struct Siminst {
    paths: Paths,
    db: Arc<Mutex<PackageDb>>,
    locks: NameLocks,
    origins: HashMap<JobId, mpsc::Sender<OriginEvent>>,
    done: Done,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned value is intact.
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The spool file of a job at its origin.
pub fn spool_path(data_dir: &Path, job: JobId) -> PathBuf {
    data_dir
        .join("siminst")
        .join("out")
        .join(format!("{job}.pkg"))
}

impl Siminst {
    /// Opens the database and prepares the directories under `data_dir`.
    /// Staging and spool files left by a previous run are removed: their
    /// jobs are reported as interrupted by the job store.
    pub fn open(data_dir: &Path, done: Done) -> Result<Siminst, SiminstError> {
        let base = data_dir.join("siminst");
        let paths = Paths {
            out: base.join("out"),
            staging: base.join("staging"),
            installed: data_dir.join("packages"),
            data_dir: data_dir.to_owned(),
        };
        for dir in [&paths.out, &paths.staging] {
            if dir.exists() {
                if let Err(e) = fs::remove_dir_all(dir) {
                    tracing::warn!(dir = %dir.display(), "cannot clean a previous run's files: {e}");
                }
            }
        }
        for dir in [&paths.out, &paths.staging, &paths.installed] {
            fs::create_dir_all(dir).map_err(|source| SiminstError::Dir {
                path: dir.clone(),
                source,
            })?;
        }
        let db = PackageDb::open(data_dir)?;
        Ok(Siminst {
            paths,
            db: Arc::new(Mutex::new(db)),
            locks: NameLocks::default(),
            origins: HashMap::new(),
            done,
        })
    }

    /// The installed packages, for `monitor status`.
    pub fn installed(&self) -> Vec<PackageVersion> {
        lock(&self.db)
            .list()
            .filter(|p| p.is_installed())
            .map(|p| PackageVersion {
                name: p.name.clone(),
                version: p.version.to_string(),
            })
            .collect()
    }

    /// The origin's side: serves the chunks of `spool` to the targets until
    /// each has reported or the timeout passes, then removes the spool.
    #[allow(clippy::too_many_arguments)]
    pub fn start_origin<G: Group>(
        &mut self,
        group: Arc<G>,
        job: JobId,
        ad: Advertisement,
        spool: PathBuf,
        targets: Vec<String>,
        members: Vec<String>,
        me: String,
    ) {
        self.origins.retain(|_, tx| !tx.is_closed());
        let (tx, rx) = mpsc::channel(4096);
        self.origins.insert(job, tx);
        tokio::spawn(async move {
            let started = Instant::now();
            let wire_before = group.wire_bytes_sent().await;
            let mut paused = Paused::default();
            let sent = origin(
                &*group,
                job,
                &ad,
                &spool,
                targets,
                members,
                &me,
                rx,
                &mut paused,
            )
            .await;
            // Bounded: the figures must not keep the spool from going.
            let wire_after =
                tokio::time::timeout(Duration::from_secs(2), group.wire_bytes_sent()).await;
            if wire_after.is_err() {
                tracing::warn!(%job, "the core did not give its counters within 2 s");
            }
            let wire = match (wire_before, wire_after.ok().flatten()) {
                (Some(before), Some(after)) => after.saturating_sub(before),
                _ => 0,
            };
            // The figures the siminst benchmark reads.
            tracing::info!(
                %job,
                chunk_bytes = sent,
                wire_bytes = wire,
                seconds = started.elapsed().as_secs_f64(),
                backoffs = paused.times,
                backoff_seconds = paused.total.as_secs_f64(),
                "siminst: the origin is done serving"
            );
            if let Err(e) = fs::remove_file(&spool) {
                tracing::warn!(%job, "cannot remove the spooled package: {e}");
            }
        });
    }

    fn tell(&mut self, job: JobId, event: OriginEvent) {
        if let Some(tx) = self.origins.get(&job) {
            match tx.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.origins.remove(&job);
                }
                // A lost report would keep the origin serving until the
                // install timeout: worth a line.
                Err(mpsc::error::TrySendError::Full(event)) => {
                    tracing::warn!(%job, ?event, "siminst: the origin's queue is full; an event is lost");
                }
            }
        }
    }

    /// A target's result was delivered.
    pub fn on_result(&mut self, job: JobId, host: &str) {
        self.tell(job, OriginEvent::Result(host.to_owned()));
    }

    /// A target says which chunks it misses.
    pub fn on_have(&mut self, job: JobId, host: String, missing: Vec<(u32, u32)>) {
        self.tell(job, OriginEvent::Have(host, missing));
    }

    /// M changed.
    pub fn on_members(&mut self, members: &[String]) {
        let jobs: Vec<JobId> = self.origins.keys().copied().collect();
        for job in jobs {
            self.tell(job, OriginEvent::Members(members.to_vec()));
        }
    }

    /// A target's side of a delivered advertisement. Returns the outcome at
    /// once when the host is not eligible, has the package already, or
    /// cannot take part; otherwise the outcome comes through `done` later.
    #[allow(clippy::too_many_arguments)]
    pub fn on_command<G: Group>(
        &mut self,
        group: Arc<G>,
        job: JobId,
        ad: Advertisement,
        from_spool: bool,
        host: &str,
        attributes: &std::collections::BTreeMap<String, String>,
    ) -> Option<PackageOutcome> {
        let started = Instant::now();
        let package = format!("{} {}", ad.name, ad.version);
        let quick = |status| {
            Some(PackageOutcome {
                package: package.clone(),
                status,
                duration: started.elapsed(),
                stdout: Captured::default(),
                stderr: Captured::default(),
            })
        };
        let manifest = match Manifest::from_yaml(&ad.manifest) {
            Ok(m) if m.name == ad.name && m.version.to_string() == ad.version => m,
            Ok(_) => {
                return quick(PackageStatus::Failed(
                    "the advertisement does not match its manifest".into(),
                ))
            }
            Err(e) => return quick(PackageStatus::Failed(format!("bad manifest: {e}"))),
        };
        let facts = {
            let db = lock(&self.db);
            HostFacts {
                attributes: attributes.clone(),
                free_disk_bytes: free_disk(&self.paths.data_dir),
                installed: db
                    .list()
                    .filter(|p| p.is_installed())
                    .map(|p| (p.name.clone(), p.version.clone()))
                    .collect(),
            }
        };
        if let Err(unmet) = manifest.requirements.check(&facts) {
            return quick(PackageStatus::NotEligible(unmet.to_string()));
        }
        if !ad.force && is_installed(&lock(&self.db), &ad) {
            return quick(PackageStatus::AlreadyInstalled);
        }
        let work = self.paths.staging.join(job.to_string());
        if let Err(e) = fs::create_dir_all(&work) {
            return quick(PackageStatus::Failed(format!(
                "cannot create the staging directory {}: {e}",
                work.display()
            )));
        }
        let file = work.join("package");
        let local = if from_spool {
            // The origin's own copy: a link, so that the origin may remove
            // its spool whenever it is done serving.
            let spool = spool_path(&self.paths.data_dir, job);
            match fs::hard_link(&spool, &file).or_else(|_| fs::copy(&spool, &file).map(drop)) {
                Ok(()) => Some(Staged::File(file)),
                Err(e) => {
                    let _ = fs::remove_dir_all(&work);
                    return quick(PackageStatus::Failed(format!(
                        "cannot take the package from the spool: {e}"
                    )));
                }
            }
        } else {
            None
        };
        let context = Context {
            paths: self.paths.clone(),
            db: self.db.clone(),
            locks: self.locks.clone(),
        };
        let done = self.done.clone();
        let host = host.to_owned();
        tokio::spawn(async move {
            let status = match local {
                Some(staged) => Ok(staged),
                None => receive(&group, job, &ad, &work, &host, started)
                    .await
                    .map(|()| Staged::Unpacked),
            };
            let outcome = match status {
                Ok(staged) => {
                    let state = match staged {
                        Staged::File(_) => "verifying and installing",
                        Staged::Unpacked => "installing",
                    };
                    progress(&group, job, &host, state.into());
                    context
                        .install(job, &ad, manifest, &work, staged, started)
                        .await
                }
                Err(reason) => PackageOutcome {
                    package: format!("{} {}", ad.name, ad.version),
                    status: PackageStatus::Failed(reason),
                    duration: started.elapsed(),
                    stdout: Captured::default(),
                    stderr: Captured::default(),
                },
            };
            if let Err(e) = fs::remove_dir_all(&work) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(%job, "cannot remove the staging directory: {e}");
                }
            }
            let _ = done.send((job, outcome)).await;
        });
        None
    }

    /// `siminst --remove NAME` on this host; the outcome comes through
    /// `done`.
    pub fn remove(&mut self, job: JobId, name: String) {
        let context = Context {
            paths: self.paths.clone(),
            db: self.db.clone(),
            locks: self.locks.clone(),
        };
        let done = self.done.clone();
        tokio::spawn(async move {
            let outcome = context.remove(name).await;
            let _ = done.send((job, outcome)).await;
        });
    }
}

fn is_installed(db: &PackageDb, ad: &Advertisement) -> bool {
    db.get(&ad.name).is_some_and(|p| {
        p.is_installed() && p.version.to_string() == ad.version && p.sha256.0 == ad.sha256
    })
}

/// Free bytes for the server in `dir`'s file system (0 when unknown, so
/// that a requirement on free disk is not met by accident).
pub fn free_disk(dir: &Path) -> u64 {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => s.blocks_available().saturating_mul(s.fragment_size()),
        Err(_) => 0,
    }
}

/// What an install or removal needs.
struct Context {
    paths: Paths,
    db: Arc<Mutex<PackageDb>>,
    locks: NameLocks,
}

impl Context {
    fn name_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = lock(&self.locks);
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(name.to_owned()).or_default().clone()
    }

    #[allow(clippy::too_many_arguments)]
    async fn install(
        &self,
        job: JobId,
        ad: &Advertisement,
        manifest: Manifest,
        work: &Path,
        staged: Staged,
        started: Instant,
    ) -> PackageOutcome {
        let name_lock = self.name_lock(&ad.name);
        let _serial = name_lock.lock().await;
        let paths = self.paths.clone();
        let db = self.db.clone();
        let (ad2, work) = (ad.clone(), work.to_owned());
        let result = tokio::task::spawn_blocking(move || {
            install_blocking(&paths, &db, &ad2, &manifest, &work, staged)
        })
        .await;
        let (status, stdout, stderr) = match result {
            Ok(r) => r,
            Err(e) => (
                PackageStatus::Failed(format!("the install task failed: {e}")),
                Captured::default(),
                Captured::default(),
            ),
        };
        match &status {
            PackageStatus::Failed(reason) => {
                tracing::warn!(%job, package = %ad.name, "siminst failed: {reason}")
            }
            other => {
                tracing::info!(%job, package = %ad.name, version = %ad.version, ?other, "siminst done")
            }
        }
        PackageOutcome {
            package: format!("{} {}", ad.name, ad.version),
            status,
            duration: started.elapsed(),
            stdout,
            stderr,
        }
    }

    async fn remove(&self, name: String) -> PackageOutcome {
        let started = Instant::now();
        let name_lock = self.name_lock(&name);
        let _serial = name_lock.lock().await;
        let paths = self.paths.clone();
        let db = self.db.clone();
        let name2 = name.clone();
        let result =
            tokio::task::spawn_blocking(move || remove_blocking(&paths, &db, &name2)).await;
        let (status, stdout, stderr) = match result {
            Ok(r) => r,
            Err(e) => (
                PackageStatus::Failed(format!("the removal task failed: {e}")),
                Captured::default(),
                Captured::default(),
            ),
        };
        PackageOutcome {
            package: name,
            status,
            duration: started.elapsed(),
            stdout,
            stderr,
        }
    }
}

type Finished = (PackageStatus, Captured, Captured);

fn captured(c: &packages::Captured) -> Captured {
    Captured {
        bytes: c.bytes.clone(),
        truncated: c.truncated,
        total_bytes: c.total_len,
    }
}

fn failed(reason: String) -> Finished {
    (
        PackageStatus::Failed(reason),
        Captured::default(),
        Captured::default(),
    )
}

/// What an install starts from.
enum Staged {
    /// The package file, not verified yet: the origin's spooled copy.
    File(PathBuf),
    /// Received, unpacked into `WORK/root` as the chunks came, and verified
    /// ([`unpack_stream`]).
    Unpacked,
}

/// Verify and unpack (unless the receiver did both already), check, run
/// the install script, move into place, record.
fn install_blocking(
    paths: &Paths,
    db: &Mutex<PackageDb>,
    ad: &Advertisement,
    manifest: &Manifest,
    work: &Path,
    staged: Staged,
) -> Finished {
    // Another job may have installed this very package meanwhile.
    if !ad.force && is_installed(&lock(db), ad) {
        return (
            PackageStatus::AlreadyInstalled,
            Captured::default(),
            Captured::default(),
        );
    }
    let root = work.join("root");
    let clock = std::time::Instant::now();
    let mut unpack_time = Duration::ZERO;
    if let Staged::File(file) = staged {
        let expected = Sha256Digest(ad.sha256);
        let archive = match File::open(&file) {
            Ok(f) => f,
            Err(e) => return failed(format!("cannot open the received package: {e}")),
        };
        // One pass over the file for the digest and the unpack. 128 KiB
        // reads: larger ones gave a slow tail with many unpacks at once
        // (BENCHMARKS.md, siminst run 12).
        let archive = std::io::BufReader::with_capacity(128 * 1024, archive);
        let limits = packages::Limits::default();
        if let Err(e) = packages::unpack_verified(archive, &root, &limits, &expected) {
            return failed(e.to_string());
        }
        unpack_time = clock.elapsed();
        // The package file is no longer needed: give its space back before
        // the script runs.
        let _ = fs::remove_file(&file);
    }
    let staged = match Manifest::from_file(&root.join(packages::MANIFEST_FILE)) {
        Ok(m) => m,
        Err(e) => return failed(format!("the package's manifest: {e}")),
    };
    if staged != *manifest {
        return failed("the package's manifest differs from the advertised one".into());
    }
    let script = staged.install_script(&root);
    let target = paths.installed.join(&ad.name);
    let outcome = match packages::run_script_with_env(
        &script,
        &root,
        &script_env(&ad.name, &ad.version, &target),
        staged.install_timeout,
        OUTPUT_CAP,
    ) {
        Ok(outcome) => outcome,
        Err(e) => return failed(format!("the install script: {e}")),
    };
    let (stdout, stderr) = (captured(&outcome.stdout), captured(&outcome.stderr));
    // Where an install's time goes (the siminst benchmark's per-stage view).
    tracing::info!(
        package = %ad.name,
        unpack_seconds = unpack_time.as_secs_f64(),
        script_seconds = (clock.elapsed() - unpack_time).as_secs_f64(),
        "siminst: verified, unpacked and ran the install script"
    );
    if !outcome.success() {
        let reason = if outcome.timed_out {
            format!(
                "the install script timed out after {}",
                humantime::format_duration(staged.install_timeout)
            )
        } else {
            format!("the install script failed: {}", outcome.status)
        };
        return (PackageStatus::Failed(reason), stdout, stderr);
    }
    // Into place: the previous installation moves aside until the record
    // is written, so that a failure leaves it as it was.
    let aside = paths.installed.join(format!(".old-{}", ad.name));
    let _ = fs::remove_dir_all(&aside);
    let had_previous = target.exists();
    if had_previous {
        if let Err(e) = fs::rename(&target, &aside) {
            return (
                PackageStatus::Failed(format!("cannot move the previous version aside: {e}")),
                stdout,
                stderr,
            );
        }
    }
    if let Err(e) = fs::rename(&root, &target) {
        if had_previous {
            let _ = fs::rename(&aside, &target);
        }
        return (
            PackageStatus::Failed(format!("cannot move the package into place: {e}")),
            stdout,
            stderr,
        );
    }
    let installed_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let record = InstalledPackage {
        name: ad.name.clone(),
        version: staged.version.clone(),
        sha256: Sha256Digest(ad.sha256),
        installed_at,
        outcome: InstallOutcome::Installed,
    };
    let recorded = lock(db).record(record);
    match recorded {
        Ok(previous) => {
            let _ = fs::remove_dir_all(&aside);
            let previous = previous
                .filter(InstalledPackage::is_installed)
                .map(|p| p.version.to_string());
            (PackageStatus::Installed { previous }, stdout, stderr)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&target);
            if had_previous {
                let _ = fs::rename(&aside, &target);
            }
            (
                PackageStatus::Failed(format!("cannot record the package: {e}")),
                stdout,
                stderr,
            )
        }
    }
}

fn remove_blocking(paths: &Paths, db: &Mutex<PackageDb>, name: &str) -> Finished {
    let installed = lock(db).get(name).cloned();
    let Some(_record) = installed else {
        return (
            PackageStatus::NotInstalled,
            Captured::default(),
            Captured::default(),
        );
    };
    let dir = paths.installed.join(name);
    let (mut stdout, mut stderr) = (Captured::default(), Captured::default());
    if let Ok(manifest) = Manifest::from_file(&dir.join(packages::MANIFEST_FILE)) {
        if let Some(script) = manifest.uninstall_script(&dir) {
            let version = manifest.version.to_string();
            match packages::run_script_with_env(
                &script,
                &dir,
                &script_env(name, &version, &dir),
                manifest.install_timeout,
                OUTPUT_CAP,
            ) {
                Ok(outcome) => {
                    stdout = captured(&outcome.stdout);
                    stderr = captured(&outcome.stderr);
                    if !outcome.success() {
                        return (
                            PackageStatus::Failed(format!(
                                "the uninstall script failed: {}{}; the package stays installed",
                                outcome.status,
                                if outcome.timed_out {
                                    " (timed out)"
                                } else {
                                    ""
                                }
                            )),
                            stdout,
                            stderr,
                        );
                    }
                }
                Err(e) => return failed(format!("the uninstall script: {e}")),
            }
        }
    }
    if let Err(e) = lock(db).remove(name) {
        return (
            PackageStatus::Failed(format!("cannot update the database: {e}")),
            stdout,
            stderr,
        );
    }
    if let Err(e) = fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(package = %name, "cannot remove {}: {e}", dir.display());
        }
    }
    (PackageStatus::Removed, stdout, stderr)
}

// ----- the data in Gp -----

fn encode_chunk(index: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + data.len());
    out.push(GP_VERSION);
    out.push(KIND_CHUNK);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(data);
    out
}

fn encode_end(chunks: u32) -> Vec<u8> {
    let mut out = vec![GP_VERSION, KIND_END];
    out.extend_from_slice(&chunks.to_le_bytes());
    out
}

enum GpMessage<'a> {
    Chunk(u32, &'a [u8]),
    End,
}

fn decode_gp(payload: &[u8]) -> Option<GpMessage<'_>> {
    let (&version, rest) = payload.split_first()?;
    if version != GP_VERSION {
        return None;
    }
    let (&kind, rest) = rest.split_first()?;
    let index = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
    match kind {
        KIND_CHUNK => Some(GpMessage::Chunk(index, &rest[4..])),
        KIND_END => Some(GpMessage::End),
        _ => None,
    }
}

/// The ranges (inclusive) of chunks not yet held, at most [`MAX_RANGES`].
fn missing_ranges(have: &[bool]) -> Vec<(u32, u32)> {
    let mut ranges = Vec::new();
    let mut start: Option<u32> = None;
    for (i, held) in have.iter().enumerate() {
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        match (held, start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                ranges.push((s, i - 1));
                start = None;
                if ranges.len() == MAX_RANGES {
                    return ranges;
                }
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        let last = u32::try_from(have.len().saturating_sub(1)).unwrap_or(u32::MAX);
        ranges.push((s, last));
    }
    ranges
}

/// Receives the package and unpacks it into `WORK/root` as it comes: joins
/// Gp, says what it misses at every view, and hands the chunks to a thread
/// of their own ([`unpack_stream`]), which hashes them in order and feeds
/// them to the safe unpacker, then checks the digest of the whole package.
/// Returns once the package is verified and unpacked; the error is for the
/// report, and nothing is left in the staging root after one.
///
/// The daemon runs on one thread with the group core: the hashing and
/// unpacking stay off it, or heartbeats and the socket wait behind them
/// (and the receive buffer overflows into resends).
async fn receive<G: Group>(
    group: &Arc<G>,
    job: JobId,
    ad: &Advertisement,
    work: &Path,
    host: &str,
    started: Instant,
) -> Result<(), String> {
    let deadline = started + ad.timeout;
    // Without a file the size of the package to reserve, a full disk would
    // only show in the unpack: say it before the transfer when it is plain.
    if let Ok(fs) = nix::sys::statvfs::statvfs(work) {
        let free = fs.blocks_available().saturating_mul(fs.fragment_size());
        if free < ad.size {
            return Err(format!(
                "the server has {} free for a package of {}",
                packages::format_bytes(free),
                packages::format_bytes(ad.size)
            ));
        }
    }
    let n = ad.chunks();
    let mut have = vec![false; n as usize];
    let mut held: u32 = 0;
    let mut reported_tenth: u64 = 0;
    let Some(mut events) = group.subscribe(&ad.group, SUBSCRIPTION) else {
        return Err("this server cannot join installation groups".into());
    };
    group
        .join_group(&ad.group)
        .await
        .map_err(|e| format!("cannot join the installation group: {e}"))?;
    let (to_unpacker, chunks) = mpsc::channel(CHUNK_QUEUE);
    let unpacker = {
        let ad = ad.clone();
        let work = work.to_owned();
        tokio::task::spawn_blocking(move || unpack_stream(&ad, &work, chunks))
    };
    let result = loop {
        if held == n {
            break Ok(());
        }
        let event = tokio::select! {
            event = events.recv() => event,
            () = tokio::time::sleep_until(deadline) => {
                break Err(format!(
                    "the transfer did not complete within {}: {held} of {n} chunks received",
                    humantime::format_duration(ad.timeout)
                ));
            }
        };
        match event {
            Some(SubgroupEvent::View { .. }) => send_have(group, job, host, &have),
            Some(SubgroupEvent::Deliver { payload, .. }) => {
                // Where the chunk's data starts, so that the payload itself
                // goes to the unpacker, uncopied.
                let decoded = decode_gp(&payload).map(|m| match m {
                    GpMessage::Chunk(index, data) => Some((index, payload.len() - data.len())),
                    GpMessage::End => None,
                });
                match decoded {
                    Some(Some((index, data_start))) => {
                        let Some(slot) = have.get_mut(index as usize) else {
                            tracing::warn!(%job, index, "a chunk beyond the package's end; ignored");
                            continue;
                        };
                        if *slot {
                            continue;
                        }
                        let (_, len) = ad.range(index);
                        if payload.len() - data_start != len {
                            tracing::warn!(%job, index, "a chunk of the wrong size; ignored");
                            continue;
                        }
                        if to_unpacker
                            .send(Chunk {
                                index,
                                payload,
                                data_start,
                            })
                            .await
                            .is_err()
                        {
                            // The unpacker stopped on an error, which it returns.
                            break Ok(());
                        }
                        *slot = true;
                        held += 1;
                        let tenth = u64::from(held) * 10 / u64::from(n.max(1));
                        if tenth > reported_tenth {
                            reported_tenth = tenth;
                            progress(group, job, host, format!("receiving {}%", tenth * 10));
                        }
                    }
                    Some(None) => send_have(group, job, host, &have),
                    None => {
                        tracing::warn!(%job, "an undecodable message in the installation group")
                    }
                }
            }
            Some(SubgroupEvent::Left) | None => {
                break Err("the group-communication core stopped".into());
            }
        }
    };
    let received = Instant::now();
    if result.is_ok() && held == n {
        // The unpacker still has the tail of the package to unpack and
        // the digest to check before the host installs.
        progress(group, job, host, "verifying".into());
    }
    drop(events);
    if let Err(e) = group.leave_group(&ad.group).await {
        tracing::debug!(%job, "leaving the installation group: {e}");
    }
    // The unpacker finishes what it was given (or sees the stream cut
    // short, and cleans up) before anyone removes the staging directory.
    drop(to_unpacker);
    let unpacked = unpacker
        .await
        .map_err(|e| format!("the unpacking task failed: {e}"));
    result?;
    let figures = unpacked??;
    tracing::info!(
        %job,
        chunks = n,
        early_chunks = figures.spilled,
        seconds = started.elapsed().as_secs_f64(),
        after_last_chunk_seconds = received.elapsed().as_secs_f64(),
        "siminst: received, unpacked and verified the package"
    );
    Ok(())
}

/// Chunks queued for the unpacker thread (at most 1 MiB each).
const CHUNK_QUEUE: usize = 32;

/// A chunk on its way to the unpacker: the payload as the core delivered
/// it, and where the chunk's data starts in it.
#[derive(Debug)]
struct Chunk {
    index: u32,
    payload: Vec<u8>,
    data_start: usize,
}

/// What [`unpack_stream`] reports for the log.
#[derive(Debug)]
struct StreamFigures {
    /// Chunks that came before a missing one and went through the spill
    /// file.
    spilled: u32,
}

/// The unpacker thread of [`receive`]: unpacks the package from its chunks
/// as they come, in order, into `WORK/root`, then reads whatever follows
/// the archive and checks the digest of the whole package
/// ([`packages::unpack_verified`]). A digest that does not match wins over
/// any unpacking error (the archive was not the advertised one), a
/// transfer cut short over both; the unpacked files are removed on any
/// error.
///
/// Unpacking before the digest is known is as safe as after: the unpacker
/// takes every archive as hostile and creates nothing outside the staging
/// root. What waits for the digest is using the staging root: the install
/// script runs, and anything is moved or recorded, only after `Ok`.
fn unpack_stream(
    ad: &Advertisement,
    work: &Path,
    chunks: mpsc::Receiver<Chunk>,
) -> Result<StreamFigures, String> {
    let root = work.join("root");
    let mut stream = ChunkStream::new(ad, work.join("package"), chunks);
    let expected = Sha256Digest(ad.sha256);
    let limits = packages::Limits::default();
    let result = packages::unpack_verified(&mut stream, &root, &limits, &expected)
        // The unpacker sees the stream's own failures as the archive's.
        .map_err(|e| stream.failure.take().unwrap_or_else(|| e.to_string()));
    let spilled = stream.spilled;
    stream.remove_spill();
    if result.is_err() {
        if let Err(e) = fs::remove_dir_all(&root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(root = %root.display(), "cannot remove the unpacked files: {e}");
            }
        }
    }
    result.map(|_| StreamFigures { spilled })
}

/// The package's bytes in order, from chunks that come in any order: the
/// next chunk is handed over as delivered (no copy, no file); a chunk that
/// comes before it (after a gap: a partition, a late join) is written to a
/// spill file and read back when its turn comes.
struct ChunkStream<'a> {
    ad: &'a Advertisement,
    chunks: mpsc::Receiver<Chunk>,
    spill_path: PathBuf,
    spill: Option<File>,
    /// Chunks in the spill file.
    in_spill: Vec<bool>,
    spilled: u32,
    /// The next chunk to take.
    next: u32,
    /// The chunk being read, and where its unread bytes start.
    current: Vec<u8>,
    pos: usize,
    /// Why the stream stopped short; the unpacker sees only an I/O error.
    failure: Option<String>,
}

impl<'a> ChunkStream<'a> {
    fn new(ad: &'a Advertisement, spill_path: PathBuf, chunks: mpsc::Receiver<Chunk>) -> Self {
        ChunkStream {
            ad,
            chunks,
            spill_path,
            spill: None,
            in_spill: vec![false; ad.chunks() as usize],
            spilled: 0,
            next: 0,
            current: Vec::new(),
            pos: 0,
            failure: None,
        }
    }

    /// Makes the next chunk current; `false` after the last.
    fn advance(&mut self) -> Result<bool, String> {
        let n = self.ad.chunks();
        if self.next >= n {
            return Ok(false);
        }
        let (offset, len) = self.ad.range(self.next);
        if self
            .in_spill
            .get(self.next as usize)
            .copied()
            .unwrap_or(false)
        {
            let Some(file) = &self.spill else {
                return Err("a bug: a chunk marked spilled without a spill file".into());
            };
            self.current.clear();
            self.current.resize(len, 0);
            file.read_exact_at(&mut self.current, offset)
                .map_err(|e| format!("cannot read back a chunk that came early: {e}"))?;
            self.pos = 0;
        } else {
            loop {
                let Some(chunk) = self.chunks.blocking_recv() else {
                    return Err(format!(
                        "the transfer stopped with {} of {n} chunks unpacked",
                        self.next
                    ));
                };
                if chunk.index == self.next {
                    self.current = chunk.payload;
                    self.pos = chunk.data_start;
                    break;
                }
                self.keep_for_later(&chunk)?;
            }
        }
        if self.current.len().saturating_sub(self.pos) != len {
            return Err(format!("chunk {} has the wrong size", self.next));
        }
        self.next += 1;
        Ok(true)
    }

    /// Writes a chunk that came before its turn to the spill file.
    fn keep_for_later(&mut self, chunk: &Chunk) -> Result<(), String> {
        let Some(slot) = self.in_spill.get_mut(chunk.index as usize) else {
            return Ok(());
        };
        // Taken already, or kept already: the receiver passes each chunk
        // once, but nothing here relies on it.
        if *slot || chunk.index < self.next {
            return Ok(());
        }
        let (offset, len) = self.ad.range(chunk.index);
        let Some(data) = chunk.payload.get(chunk.data_start..) else {
            return Ok(());
        };
        if data.len() != len {
            return Ok(());
        }
        let file = match &self.spill {
            Some(file) => file,
            None => {
                let file = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&self.spill_path)
                    .map_err(|e| format!("cannot create the staging file: {e}"))?;
                self.spill.insert(file)
            }
        };
        file.write_all_at(data, offset)
            .map_err(|e| format!("cannot write the package: {e}"))?;
        *slot = true;
        self.spilled += 1;
        Ok(())
    }

    fn remove_spill(&mut self) {
        if self.spill.take().is_some() {
            if let Err(e) = fs::remove_file(&self.spill_path) {
                tracing::warn!(file = %self.spill_path.display(), "cannot remove the staging file: {e}");
            }
        }
    }
}

impl std::io::BufRead for ChunkStream<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.pos >= self.current.len() {
            if let Some(failure) = &self.failure {
                return Err(std::io::Error::other(failure.clone()));
            }
            match self.advance() {
                Ok(true) => {}
                Ok(false) => return Ok(&[]),
                Err(e) => {
                    self.failure = Some(e.clone());
                    return Err(std::io::Error::other(e));
                }
            }
        }
        Ok(&self.current[self.pos..])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = self.pos.saturating_add(amount).min(self.current.len());
    }
}

impl std::io::Read for ChunkStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::BufRead;
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Tells the monitors following the job how far this host is, as an output
/// line of the job (`siminst: receiving 40%`), from a task of its own (see
/// [`send_have`]). Lost lines only leave the progress display behind.
fn progress<G: Group>(group: &Arc<G>, job: JobId, host: &str, state: String) {
    let message = GroupMessage::Output {
        job,
        host: host.to_owned(),
        stream: flotilla_client::Stream::Stdout,
        line: format!("{PROGRESS_PREFIX}{state}"),
    };
    let Ok(payload) = wire::encode(&message) else {
        return;
    };
    let group = group.clone();
    tokio::spawn(async move {
        let _ = group.multicast(Order::Fifo, payload).await;
    });
}

/// Says which chunks are missing, from a task of its own: the receiver must
/// never wait on the group core, whose events it consumes (a full
/// subscription stalls the core, which then accepts nothing).
fn send_have<G: Group>(group: &Arc<G>, job: JobId, host: &str, have: &[bool]) {
    let missing = missing_ranges(have);
    if missing.is_empty() {
        return;
    }
    let message = GroupMessage::PackageHave {
        job,
        host: host.to_owned(),
        missing,
    };
    let payload = match wire::encode(&message) {
        Ok(payload) => payload,
        Err(e) => {
            tracing::error!("{e}");
            return;
        }
    };
    let group = group.clone();
    tokio::spawn(async move {
        if let Err(e) = group.multicast(Order::Fifo, payload).await {
            tracing::warn!(%job, "cannot say which chunks are missing: {e}");
        }
    });
}

/// What the origin knows of the targets.
struct Serving {
    /// Targets that have not reported.
    pending: BTreeSet<String>,
    /// Targets that said they are in Gp.
    ready: BTreeSet<String>,
    /// M.
    members: Vec<String>,
    /// Chunks to send again.
    resend: BTreeSet<u32>,
    /// The next chunk never sent.
    next: u32,
    /// Whether the end marker went out after the last chunk sent.
    end_sent: bool,
}

impl Serving {
    fn apply(&mut self, event: OriginEvent) {
        match event {
            OriginEvent::Result(host) => {
                self.pending.remove(&host);
            }
            OriginEvent::Members(m) => self.members = m,
            OriginEvent::Have(host, missing) => {
                if self.next == 0 {
                    self.ready.insert(host);
                    return;
                }
                let before = self.resend.len();
                for (from, to) in missing.iter().copied() {
                    // Chunks not sent yet go out in order anyway.
                    let to = to.min(self.next - 1);
                    if from > to {
                        continue;
                    }
                    self.resend.extend(from..=to);
                    // Say the end again once the gaps are filled.
                    self.end_sent = false;
                }
                let added = self.resend.len() - before;
                if added > 0 {
                    tracing::info!(%host, chunks = added, "siminst: re-sending the chunks a target misses");
                }
                self.ready.insert(host);
            }
        }
    }

    fn waiting_for_joins(&self) -> bool {
        self.pending
            .iter()
            .any(|h| !self.ready.contains(h) && self.members.contains(h))
    }
}

/// The origin's loop; returns the bytes of chunks it multicast.
#[allow(clippy::too_many_arguments)]
async fn origin<G: Group>(
    group: &G,
    job: JobId,
    ad: &Advertisement,
    spool: &Path,
    targets: Vec<String>,
    members: Vec<String>,
    me: &str,
    mut events: mpsc::Receiver<OriginEvent>,
    paused: &mut Paused,
) -> u64 {
    let started = Instant::now();
    let deadline = started + ad.timeout;
    let file = match File::open(spool) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(%job, "cannot open the spooled package: {e}");
            return 0;
        }
    };
    let n = ad.chunks();
    let mut s = Serving {
        pending: targets.into_iter().collect(),
        // This server installs from its spool, not from Gp.
        ready: BTreeSet::from([me.to_owned()]),
        members,
        resend: BTreeSet::new(),
        next: 0,
        end_sent: false,
    };
    let mut sent_bytes: u64 = 0;
    let join_deadline = started + JOIN_WAIT;
    let mut buf = vec![0u8; ad.chunk_size as usize];
    // Wait for the targets to be in Gp (or to answer, or to leave M).
    while s.waiting_for_joins() {
        tokio::select! {
            event = events.recv() => match event {
                Some(e) => s.apply(e),
                None => return 0,
            },
            () = tokio::time::sleep_until(join_deadline) => {
                tracing::warn!(%job, "not every target joined the installation group in time; sending to those that did");
                break;
            }
        }
    }
    tracing::info!(%job, chunks = n, ready = s.ready.len(), "siminst: sending the package");
    loop {
        // Take what came first, then decide: reports drained after the
        // check left the origin waiting for events when none would come
        // (it served until the install timeout after the last report).
        while let Ok(e) = events.try_recv() {
            s.apply(e);
        }
        // This server's own result needs nothing from Gp.
        if !s.pending.iter().any(|h| h != me) || Instant::now() >= deadline {
            break;
        }
        let index = if let Some(i) = s.resend.pop_first() {
            Some(i)
        } else if s.next < n {
            s.next += 1;
            Some(s.next - 1)
        } else {
            None
        };
        let payload = match index {
            Some(i) => {
                let (offset, len) = ad.range(i);
                if let Err(e) = file.read_exact_at(&mut buf[..len], offset) {
                    tracing::error!(%job, "cannot read the spooled package: {e}");
                    return sent_bytes;
                }
                sent_bytes += len as u64;
                encode_chunk(i, &buf[..len])
            }
            None if !s.end_sent => {
                s.end_sent = true;
                tracing::info!(%job, waiting_for = ?s.pending, "siminst: every chunk sent; waiting for the targets' reports");
                encode_end(n)
            }
            None => {
                tokio::select! {
                    event = events.recv() => match event {
                        Some(e) => s.apply(e),
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                }
                continue;
            }
        };
        // The targets' reports keep coming while the core takes the chunk:
        // once every target has reported, the chunk (accepted, or still
        // waiting for room) serves nobody, and the origin must not wait on
        // it.
        let asked = Instant::now();
        let send = multicast_with_backoff(group, &ad.group, payload, deadline, paused);
        tokio::pin!(send);
        let sent = loop {
            tokio::select! {
                result = &mut send => break Some(result),
                event = events.recv() => match event {
                    Some(e) => {
                        s.apply(e);
                        if !s.pending.iter().any(|h| h != me) {
                            break None;
                        }
                    }
                    None => break Some(send.await),
                },
            }
        };
        match sent {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::warn!(%job, "siminst: stopped sending: {e}");
                break;
            }
            None => {
                let waited = asked.elapsed();
                if waited > Duration::from_secs(1) {
                    tracing::warn!(
                        %job,
                        waited_seconds = waited.as_secs_f64(),
                        "siminst: every target reported while the core still held a chunk back"
                    );
                }
                break;
            }
        }
    }
    if s.pending.iter().any(|h| h != me) {
        tracing::warn!(%job, pending = s.pending.len(), "siminst: stopped serving with targets unfinished");
    }
    sent_bytes
}

/// How often and how long the origin waited for room in the core's send
/// queue (logged with the origin's figures).
#[derive(Debug, Default)]
struct Paused {
    times: u64,
    total: Duration,
}

/// Multicasts to Gp, waiting and trying again while the core's send queue
/// is full (flow control), until `deadline`.
async fn multicast_with_backoff<G: Group>(
    group: &G,
    gp: &str,
    payload: Vec<u8>,
    deadline: Instant,
    paused: &mut Paused,
) -> Result<(), GroupError> {
    let mut pause = Duration::from_millis(2);
    loop {
        match group.multicast_to(gp, Order::Fifo, payload.clone()).await {
            Err(GroupError::Backpressure(why)) => {
                if Instant::now() + pause > deadline {
                    return Err(GroupError::Backpressure(why));
                }
                let before = Instant::now();
                tokio::time::sleep(pause).await;
                paused.times += 1;
                paused.total += before.elapsed();
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// What a package's scripts are told: an install script runs in the
/// staging directory, which becomes `FLOTILLA_INSTALL_DIR` only once the
/// script succeeded, so a script that records where the package lives (a
/// unit file, a symlink) must use that, not its working directory.
fn script_env<'a>(
    name: &'a str,
    version: &'a str,
    install_dir: &'a Path,
) -> [(&'static str, &'a std::ffi::OsStr); 3] {
    [
        ("FLOTILLA_PACKAGE", name.as_ref()),
        ("FLOTILLA_VERSION", version.as_ref()),
        ("FLOTILLA_INSTALL_DIR", install_dir.as_os_str()),
    ]
}

// ----- the monitor's upload -----

/// How many received frames may wait for the spool writer: enough to keep
/// reading the socket while a write is in the kernel, few enough that an
/// upload holds at most a few MiB (frames are at most
/// [`flotilla_client::MAX_FRAME`]).
const SPOOL_QUEUE: usize = 4;

/// Why the upload stopped before the writer's end.
enum UploadStop {
    /// The monitor's fault or the connection's: the message for the monitor.
    Refused(String),
    /// The spool writer stopped (a write failed); its error says why.
    WriterGone,
}

/// Reads the package file of `request` from the monitor into `spool`:
/// exactly `request.size` bytes in
/// [`flotilla_client::Request::PackageData`] frames. The error is for the
/// monitor; the spool is removed on error.
///
/// Frames are read in place into recycled buffers and handed to one
/// blocking thread that writes them with `std::fs`: the runtime thread
/// (which also runs the group core) neither copies the data nor hands off
/// one write per frame.
pub async fn receive_upload(
    connection: &mut ServerConnection,
    request: &SiminstRequest,
    spool: &Path,
) -> Result<(), String> {
    let dir = spool.parent().unwrap_or(Path::new("."));
    let free = free_disk(dir);
    if free < request.size {
        return Err(format!(
            "the server has {} free for a package of {}",
            packages::format_bytes(free),
            packages::format_bytes(request.size)
        ));
    }
    let result = async {
        let path = spool.to_owned();
        let out = tokio::task::spawn_blocking(move || File::create(path))
            .await
            .map_err(|e| format!("cannot create the spool file: {e}"))?
            .map_err(|e| format!("cannot create the spool file: {e}"))?;
        let (frames, queued) = mpsc::channel::<PackageData>(SPOOL_QUEUE);
        // Room for every buffer in flight, so the writer never waits here.
        let (recycle, mut recycled) = mpsc::channel::<Vec<u8>>(SPOOL_QUEUE + 2);
        let writer = tokio::task::spawn_blocking(move || write_spool(out, queued, recycle));
        let received = receive_frames(connection, request.size, &frames, &mut recycled).await;
        drop(frames);
        let written = writer
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
            .map_err(|e| format!("cannot write the spool file: {e}"));
        match received {
            Ok(()) => written,
            // The writer only stops early on an error; never let a short
            // spool pass for a complete one.
            Err(UploadStop::WriterGone) => Err(written.err().unwrap_or_else(|| {
                "cannot write the spool file: the writer stopped early".to_owned()
            })),
            Err(UploadStop::Refused(message)) => Err(message),
        }
    }
    .await;
    if result.is_err() {
        let _ = fs::remove_file(spool);
    }
    result
}

/// Reads the upload's frames and queues their data for the spool writer,
/// checking that exactly `size` bytes arrive.
async fn receive_frames(
    connection: &mut ServerConnection,
    size: u64,
    frames: &mpsc::Sender<PackageData>,
    recycled: &mut mpsc::Receiver<Vec<u8>>,
) -> Result<(), UploadStop> {
    let mut received: u64 = 0;
    while received < size {
        let buffer = recycled.try_recv().unwrap_or_default();
        let data = match connection.recv_upload(buffer).await {
            Ok(Some(UploadFrame::Data(data))) => data,
            Ok(Some(UploadFrame::Other(_))) => {
                return Err(UploadStop::Refused(
                    "expected the package's data".to_owned(),
                ))
            }
            Ok(None) => {
                return Err(UploadStop::Refused(
                    "the monitor closed before sending the package".into(),
                ))
            }
            Err(e) => return Err(UploadStop::Refused(format!("receiving the package: {e}"))),
        };
        received += data.bytes().len() as u64;
        if received > size {
            return Err(UploadStop::Refused(format!(
                "more package data than the {size} bytes announced"
            )));
        }
        if frames.send(data).await.is_err() {
            return Err(UploadStop::WriterGone);
        }
    }
    Ok(())
}

/// The spool writer: writes the queued frames' data in order until the
/// queue closes, and hands each buffer back for the next frame.
fn write_spool(
    mut out: File,
    mut queued: mpsc::Receiver<PackageData>,
    recycle: mpsc::Sender<Vec<u8>>,
) -> std::io::Result<()> {
    use std::io::Write;
    while let Some(data) = queued.blocking_recv() {
        out.write_all(data.bytes())?;
        // A full or closed pool only costs an allocation.
        let _ = recycle.try_send(data.into_buffer());
    }
    out.flush()
}

/// Serves a monitor's `siminst`: the upload into the spool, then the job
/// as any command.
pub(crate) async fn handle_request(
    connection: &mut ServerConnection,
    server: &crate::server::ServerHandle,
    request: SiminstRequest,
    client: String,
) -> crate::server::handler::Sent {
    let refuse = |message: String| ServerMessage::Error {
        kind: flotilla_client::ErrorKind::BadRequest,
        message,
    };
    let ad = match Advertisement::from_request(&request) {
        Ok(ad) => ad,
        Err(message) => return connection.send(&refuse(message)).await.map_err(drop),
    };
    let spool = spool_path(server.data_dir(), request.job);
    if spool.exists() {
        let message = format!("job {} is being sent already", request.job);
        return connection.send(&refuse(message)).await.map_err(drop);
    }
    if let Err(message) = receive_upload(connection, &request, &spool).await {
        tracing::info!(job = %request.job, %client, "siminst upload refused: {message}");
        return connection.send(&refuse(message)).await.map_err(drop);
    }
    tracing::info!(job = %request.job, %client, package = %ad.describe(), bytes = request.size, "siminst: package received from the monitor");
    let start = crate::server::StartRequest {
        job: request.job,
        targets: request.targets,
        op: crate::server::RequestedOp::Siminst {
            ad: Box::new(ad),
            spool: spool.clone(),
        },
        client,
    };
    let result = crate::server::handler::follow(connection, server, start).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ranges_are_inclusive_and_bounded() {
        assert_eq!(missing_ranges(&[true, true]), vec![]);
        assert_eq!(
            missing_ranges(&[false, false, true, false]),
            vec![(0, 1), (3, 3)]
        );
        let alternating: Vec<bool> = (0..10_000).map(|i| i % 2 == 0).collect();
        assert_eq!(missing_ranges(&alternating).len(), MAX_RANGES);
    }

    #[test]
    fn gp_messages_round_trip() {
        let chunk = encode_chunk(7, b"abc");
        assert!(matches!(
            decode_gp(&chunk),
            Some(GpMessage::Chunk(7, b"abc"))
        ));
        assert!(matches!(decode_gp(&encode_end(3)), Some(GpMessage::End)));
        assert!(decode_gp(&[GP_VERSION, KIND_CHUNK, 1]).is_none());
        assert!(decode_gp(&[9, KIND_END, 0, 0, 0, 0]).is_none());
        assert!(decode_gp(&[]).is_none());
    }

    #[test]
    fn chunk_ranges_cover_the_file() {
        let ad = Advertisement {
            name: "p".into(),
            version: "1".into(),
            size: 2 * 1024 + 5,
            sha256: [0; 32],
            manifest: "x".into(),
            group: "pkg/x".into(),
            chunk_size: 1024,
            force: false,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(ad.chunks(), 3);
        assert_eq!(ad.range(0), (0, 1024));
        assert_eq!(ad.range(2), (2048, 5));
        assert!(ad.check().is_ok());
    }

    /// A small package built the way `monitor package build` does, in
    /// 1 KiB chunks: its advertisement, its bytes, and the file inside.
    fn small_package(dir: &Path) -> (Advertisement, Vec<u8>, Vec<u8>) {
        let src = dir.join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(
            src.join(packages::MANIFEST_FILE),
            "name: streamed\nversion: 1.0.0\ninstall: install.sh\n",
        )
        .unwrap();
        fs::write(src.join("install.sh"), "true\n").unwrap();
        // Incompressible, so the package has many chunks.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..40_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        fs::write(src.join("data.bin"), &data).unwrap();
        let file = dir.join("streamed.fpkg");
        let built = packages::build(&src, &file).unwrap();
        let bytes = fs::read(&file).unwrap();
        let ad = Advertisement {
            name: "streamed".into(),
            version: "1.0.0".into(),
            size: bytes.len() as u64,
            sha256: built.sha256.0,
            manifest: String::new(),
            group: "pkg/x".into(),
            chunk_size: 1024,
            force: false,
            timeout: Duration::from_secs(10),
        };
        (ad, bytes, data)
    }

    /// Runs [`unpack_stream`] over the chunks of `bytes` in `order` (a
    /// prefix of it when the stream is cut short), as [`receive`] passes
    /// them: each chunk in a payload behind a 6-byte header.
    fn stream(
        ad: &Advertisement,
        bytes: &[u8],
        order: &[u32],
        work: &Path,
    ) -> Result<StreamFigures, String> {
        fs::create_dir_all(work).unwrap();
        let (tx, rx) = mpsc::channel(order.len().max(1));
        for &index in order {
            let (offset, len) = ad.range(index);
            let offset = offset as usize;
            let payload = encode_chunk(index, &bytes[offset..offset + len]);
            tx.try_send(Chunk {
                index,
                payload,
                data_start: 6,
            })
            .unwrap();
        }
        drop(tx);
        unpack_stream(ad, work, rx)
    }

    fn left_in(work: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(work)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_package_streamed_in_order_unpacks_without_a_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        let (ad, bytes, data) = small_package(dir.path());
        let n = ad.chunks();
        assert!(n > 20, "{n} chunks");
        let work = dir.path().join("work");
        let order: Vec<u32> = (0..n).collect();
        let figures = stream(&ad, &bytes, &order, &work).unwrap();
        assert_eq!(figures.spilled, 0);
        assert_eq!(fs::read(work.join("root/data.bin")).unwrap(), data);
        assert_eq!(left_in(&work), ["root"]);
    }

    #[test]
    fn chunks_out_of_order_and_after_a_gap_unpack_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let (ad, bytes, data) = small_package(dir.path());
        let n = ad.chunks();
        // A gap (chunks 3 to 9 come last, as after a partition), the last
        // chunk first, and a pair swapped.
        let mut order: Vec<u32> = vec![n - 1];
        order.extend([0, 2, 1]);
        order.extend(10..n - 1);
        order.extend((3..10).rev());
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        let work = dir.path().join("work");
        let figures = stream(&ad, &bytes, &order, &work).unwrap();
        assert!(figures.spilled > 0);
        assert_eq!(fs::read(work.join("root/data.bin")).unwrap(), data);
        // The spill file is gone with the package verified.
        assert_eq!(left_in(&work), ["root"]);
    }

    #[test]
    fn a_digest_mismatch_after_streaming_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ad, bytes, _) = small_package(dir.path());
        ad.sha256[0] ^= 1;
        let n = ad.chunks();
        let work = dir.path().join("work");
        // Out of order too, so that a spill file was made.
        let mut order: Vec<u32> = (0..n).collect();
        order.swap(1, 5);
        let error = stream(&ad, &bytes, &order, &work).unwrap_err();
        assert!(error.contains("sha256 mismatch"), "{error}");
        assert!(left_in(&work).is_empty(), "{:?}", left_in(&work));
    }

    #[test]
    fn a_hostile_archive_with_the_right_digest_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ad, mut bytes, _) = small_package(dir.path());
        // Damage the data (the gzip checksum no longer matches) and
        // advertise the damaged package's digest: the digest passes, the
        // unpacker refuses, and what it wrote goes.
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        let (digest, _) = packages::sha256_reader(&bytes[..]).unwrap();
        ad.sha256 = digest.0;
        let order: Vec<u32> = (0..ad.chunks()).collect();
        let work = dir.path().join("work");
        let error = stream(&ad, &bytes, &order, &work).unwrap_err();
        assert!(error.contains("damaged"), "{error}");
        assert!(left_in(&work).is_empty(), "{:?}", left_in(&work));
    }

    #[test]
    fn a_stream_cut_short_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (ad, bytes, _) = small_package(dir.path());
        let n = ad.chunks();
        // Most of the package, then the sender goes (the receive loop gave
        // up), with a chunk waiting in the spill file.
        let mut order: Vec<u32> = (0..n - 3).collect();
        order.push(n - 1);
        let work = dir.path().join("work");
        let error = stream(&ad, &bytes, &order, &work).unwrap_err();
        assert!(error.contains("transfer stopped"), "{error}");
        assert!(left_in(&work).is_empty(), "{:?}", left_in(&work));
    }

    use flotilla_client::Request;

    /// Runs [`receive_upload`] of a `size`-byte package against a monitor
    /// that sends `frames` (sealed, as over TCP) and then closes.
    fn upload(size: u64, frames: Vec<Request>, spool: &Path) -> Result<(), String> {
        use flotilla_client::{ClusterKey, Connection, Targets};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let key = ClusterKey::from_bytes([3; 32]);
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let monitor_key = key.clone();
            let monitor = tokio::spawn(async move {
                let mut connection =
                    Connection::handshake(Box::new(client_io), "test".into(), &monitor_key)
                        .await
                        .unwrap();
                for frame in frames {
                    let sent = match &frame {
                        Request::PackageData(data) => connection.send_package_data(data).await,
                        other => connection.send(other).await,
                    };
                    if sent.is_err() {
                        break;
                    }
                }
            });
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
            let mut connection = ServerConnection::handshake(Box::new(server_io), addr, &key)
                .await
                .unwrap();
            let request = SiminstRequest {
                job: JobId::from_bytes([1; 16]),
                targets: Targets::All,
                manifest: String::new(),
                size,
                sha256: String::new(),
                force: false,
                timeout: None,
            };
            let result = receive_upload(&mut connection, &request, spool).await;
            drop(connection);
            let _ = monitor.await;
            result
        })
    }

    fn data_frames(bytes: &[u8], frame: usize) -> Vec<Request> {
        bytes
            .chunks(frame)
            .map(|c| Request::PackageData(c.to_vec()))
            .collect()
    }

    #[test]
    fn an_upload_of_the_announced_size_lands_in_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("job.spool");
        let bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        // Uneven frames, an empty one among them.
        let mut frames = data_frames(&bytes[..300_000], 100_000);
        frames.push(Request::PackageData(Vec::new()));
        frames.extend(data_frames(&bytes[300_000..], 70_001));
        upload(bytes.len() as u64, frames, &spool).unwrap();
        assert_eq!(fs::read(&spool).unwrap(), bytes);
    }

    #[test]
    fn a_longer_or_shorter_upload_fails_and_leaves_no_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("job.spool");
        let bytes = vec![5u8; 600_000];
        let longer = upload(599_999, data_frames(&bytes, 200_000), &spool);
        assert_eq!(
            longer,
            Err("more package data than the 599999 bytes announced".to_owned())
        );
        assert!(!spool.exists());
        let shorter = upload(600_001, data_frames(&bytes, 200_000), &spool);
        assert_eq!(
            shorter,
            Err("the monitor closed before sending the package".to_owned())
        );
        assert!(!spool.exists());
        let mut frames = data_frames(&bytes, 200_000);
        frames.insert(1, Request::Status);
        let other = upload(600_000, frames, &spool);
        assert_eq!(other, Err("expected the package's data".to_owned()));
        assert!(!spool.exists());
    }

    #[test]
    fn an_uncreatable_spool_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the spool file would be.
        let spool = dir.path().join("job.spool");
        fs::create_dir(&spool).unwrap();
        let result = upload(10, data_frames(&[1; 10], 10), &spool);
        assert!(
            matches!(&result, Err(m) if m.starts_with("cannot create the spool file: ")),
            "{result:?}"
        );
    }
}
