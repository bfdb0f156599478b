//! Jobs: their ids, the server's store of recent job outcomes, and the audit
//! log.
//!
//! # Job ids
//!
//! A [`JobId`] is 128 random bits. Monitors and servers create ids without
//! asking anyone, and the id is also what makes a server run a command at
//! most once however often the command is retransmitted or merged, so
//! collisions must be negligible over the life of a fleet: with 128 bits,
//! the first collision is expected after about 2^64 jobs. The id is shown in
//! full as 32 hexadecimal digits (in JSON, the audit log, and anywhere it
//! is stored), and to people as its first 12 digits ([`JobId::short`]):
//! 48 bits, so that even among a million recent jobs two short forms clash
//! with a probability of about 2 in a thousand. Lookups accept any prefix of
//! at least [`MIN_PREFIX`] digits, as git does, and report an ambiguous one
//! rather than guess ([`JobStore::find`]).
//!
//! # The store
//!
//! [`JobStore`] keeps the outcomes of this server's recent jobs, bounded in
//! count and in bytes (the oldest go first), in `DATA_DIR/jobs.log` so that
//! they survive a restart of the daemon. The file is a sequence of frames:
//!
//! ```text
//! length: u32 LE | crc32 of payload: u32 LE | payload: version byte (1), postcard(JobRecord)
//! ```
//!
//! Records are appended. On open, the file is read up to the first frame
//! that is incomplete or fails its checksum (a torn write from a crash):
//! that frame and everything after it are cut off, which is logged and not
//! an error. The records beyond the bounds are dropped, and the file is
//! rewritten (temporary file, fsync, rename, fsync of the directory) when
//! anything was cut or dropped. The same compaction runs while the daemon is
//! up once the file holds more dropped records than kept ones.
//!
//! Appends are not synced one by one: a record survives the daemon's crash
//! or restart as soon as [`JobStore::append`] returns, but a crash of the
//! host may lose the last records (then cut as a torn tail). Call
//! [`JobStore::sync`] where more is needed. The store does blocking file
//! I/O; an async caller runs it on a blocking thread.
//!
//! # The audit log
//!
//! [`AuditLog`] appends one JSON line per accepted command to
//! `DATA_DIR/audit.log` (mode 0600): time, job id, client identity, command
//! and a summary of the outcome. The file is opened for each line, so that
//! log rotation by renaming it works.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize, Serializer};

use crate::exec::{ExecOutcome, ExecStatus};
pub use flotilla_client::job::{JobId, ParseJobIdError, MIN_PREFIX};
use flotilla_client::outcome::Outcome;

/// The store's file name in the data directory.
pub const JOBS_FILE: &str = "jobs.log";
/// The audit log's file name in the data directory.
pub const AUDIT_FILE: &str = "audit.log";
/// The largest record payload, written or read: 64 MiB. A record holds at
/// most two capped outputs, each at most 16 MiB.
pub const MAX_RECORD: usize = 64 << 20;

/// The version byte at the start of every record payload.
const FORMAT_VERSION: u8 = 1;
/// Length and checksum.
const FRAME_HEADER: usize = 8;
/// Dropped bytes the file may hold before a compaction, beyond the kept
/// ones.
const COMPACT_SLACK: u64 = 1 << 20;

/// What the store keeps of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job.
    pub id: JobId,
    /// When this server accepted it.
    pub accepted_at: SystemTime,
    /// Who asked for it (as the client protocol identifies clients).
    pub client: String,
    /// The command as people read it: `uname -a`, `chdir /srv`, `exit`.
    pub command: String,
    /// The job's targets, as the server that accepted it resolved them
    /// (so that a gathered report knows who should have answered).
    pub targets: Vec<String>,
    /// How it ended here; `None` while it runs. A record found without an
    /// outcome at startup is a job the previous run was interrupted in: it
    /// becomes [`Outcome::Interrupted`] and is never run again.
    pub outcome: Option<Outcome>,
}

/// The store's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobStoreLimits {
    /// The most records kept.
    pub max_jobs: usize,
    /// The most bytes kept, counted as the records' frames in the file. The
    /// newest record is kept even when it alone is larger.
    pub max_bytes: u64,
}

impl Default for JobStoreLimits {
    /// 1000 jobs, 64 MiB.
    fn default() -> Self {
        JobStoreLimits {
            max_jobs: 1000,
            max_bytes: 64 << 20,
        }
    }
}

/// What opening the store found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records kept.
    pub kept: usize,
    /// Valid records dropped to respect the bounds (or replaced by a later
    /// record of the same job).
    pub dropped: usize,
    /// Records with a valid checksum but a format this version cannot read
    /// (written by a newer version); they are dropped.
    pub unreadable: usize,
    /// Bytes cut from the end of the file: a torn or corrupt tail.
    pub cut_bytes: u64,
}

/// Why the store or the audit log failed.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// A file operation failed.
    #[error("cannot {action} {}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// What the system said.
        cause: io::Error,
    },
    /// A record could not be encoded.
    #[error("cannot encode a job record: {0}")]
    Encode(String),
    /// A record is larger than [`MAX_RECORD`].
    #[error("a job record of {bytes} bytes is larger than the limit of {MAX_RECORD}")]
    TooLarge {
        /// The encoded size.
        bytes: usize,
    },
}

/// Why a lookup by prefix found no single job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindError {
    /// The prefix is shorter than [`MIN_PREFIX`], longer than an id, or not
    /// hexadecimal.
    #[error(
        "expected at least {MIN_PREFIX} and at most 32 hexadecimal digits of a job id, found {0:?}"
    )]
    BadPrefix(String),
    /// No kept job has an id with the prefix.
    #[error("no recent job {0}")]
    NotFound(String),
    /// Several kept jobs have ids with the prefix.
    #[error("job id {prefix} is ambiguous: {count} recent jobs start with it; give more digits")]
    Ambiguous {
        /// The prefix.
        prefix: String,
        /// How many ids start with it.
        count: usize,
    },
}

/// A kept record and the size of its frame.
#[derive(Debug)]
struct Kept {
    record: JobRecord,
    frame_len: u64,
}

/// The bounded, persistent store of this server's recent job outcomes. See
/// the [module documentation](self).
#[derive(Debug)]
pub struct JobStore {
    path: PathBuf,
    file: File,
    /// The length of the file's whole frames; anything past it is a failed
    /// write to be cut.
    file_len: u64,
    /// Whether a failed write may have left bytes past `file_len`.
    needs_cut: bool,
    limits: JobStoreLimits,
    /// Oldest first.
    jobs: VecDeque<Kept>,
    /// The sum of the kept frames' lengths.
    kept_bytes: u64,
    recovery: Recovery,
}

impl JobStore {
    /// Opens the store in `data_dir` (which must exist), recovering what a
    /// previous run left: see the [module documentation](self).
    pub fn open(data_dir: &Path, limits: JobStoreLimits) -> Result<JobStore, JobsError> {
        let path = data_dir.join(JOBS_FILE);
        let io_error = |action, cause| JobsError::Io {
            path: path.clone(),
            action,
            cause,
        };
        let mut jobs = VecDeque::new();
        let mut kept_bytes = 0;
        let mut recovery = Recovery::default();
        let mut valid_len = 0;
        let mut file_len = 0;
        match File::open(&path) {
            Ok(file) => {
                file_len = file.metadata().map_err(|e| io_error("read", e))?.len();
                let mut reader = BufReader::new(file);
                loop {
                    let payload = match read_frame(&mut reader, file_len - valid_len) {
                        Ok(Some(payload)) => payload,
                        Ok(None) => break,
                        Err(e) => return Err(io_error("read", e)),
                    };
                    valid_len += (FRAME_HEADER + payload.len()) as u64;
                    match decode_record(&payload) {
                        Some(record) => {
                            let frame_len = (FRAME_HEADER + payload.len()) as u64;
                            recovery.dropped += remove_job(&mut jobs, &mut kept_bytes, &record.id);
                            kept_bytes += frame_len;
                            jobs.push_back(Kept { record, frame_len });
                            recovery.dropped += evict(&mut jobs, &mut kept_bytes, &limits);
                        }
                        None => recovery.unreadable += 1,
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("open", e)),
        }
        recovery.kept = jobs.len();
        recovery.cut_bytes = file_len - valid_len;
        if recovery.cut_bytes > 0 {
            tracing::warn!(
                path = %path.display(),
                bytes = recovery.cut_bytes,
                "cut a torn or corrupt tail from the job store"
            );
        }
        if recovery.unreadable > 0 {
            tracing::warn!(
                path = %path.display(),
                records = recovery.unreadable,
                "dropped job records of an unknown format"
            );
        }
        let mut store = JobStore {
            file: open_append(&path).map_err(|e| io_error("open", e))?,
            path,
            file_len,
            needs_cut: false,
            limits,
            jobs,
            kept_bytes,
            recovery,
        };
        if recovery.cut_bytes > 0 || recovery.dropped > 0 || recovery.unreadable > 0 {
            store.compact()?;
        }
        tracing::debug!(path = %store.path.display(), ?recovery, "job store open");
        Ok(store)
    }

    /// What opening the store found.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// The store's bounds.
    pub fn limits(&self) -> JobStoreLimits {
        self.limits
    }

    /// The number of kept records.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether no record is kept.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The bytes the kept records take, as counted against
    /// [`JobStoreLimits::max_bytes`].
    pub fn kept_bytes(&self) -> u64 {
        self.kept_bytes
    }

    /// Appends a record, replacing any earlier record of the same job and
    /// dropping the oldest records beyond the bounds. The record is in the
    /// file when this returns (not necessarily on the disk: see
    /// [`JobStore::sync`]).
    pub fn append(&mut self, record: JobRecord) -> Result<(), JobsError> {
        let frame = encode_frame(&record)?;
        if self.needs_cut {
            self.cut_failed_write()?;
        }
        if let Err(cause) = self.file.write_all(&frame) {
            self.needs_cut = true;
            // Best effort now; retried before the next append otherwise.
            let _ = self.cut_failed_write();
            return Err(self.io_error("write", cause));
        }
        let frame_len = frame.len() as u64;
        self.file_len += frame_len;
        remove_job(&mut self.jobs, &mut self.kept_bytes, &record.id);
        self.kept_bytes += frame_len;
        self.jobs.push_back(Kept { record, frame_len });
        evict(&mut self.jobs, &mut self.kept_bytes, &self.limits);
        let dropped = self.file_len - self.kept_bytes;
        if dropped > self.kept_bytes && dropped > COMPACT_SLACK {
            self.compact()?;
        }
        Ok(())
    }

    /// Flushes the appended records to the disk.
    pub fn sync(&mut self) -> Result<(), JobsError> {
        self.file
            .sync_data()
            .map_err(|cause| self.io_error("sync", cause))
    }

    /// The record of a job, if kept.
    pub fn get(&self, id: &JobId) -> Option<&JobRecord> {
        self.jobs
            .iter()
            .map(|kept| &kept.record)
            .find(|record| record.id == *id)
    }

    /// The one kept job whose id starts with `prefix` (at least
    /// [`MIN_PREFIX`] hexadecimal digits, either case).
    pub fn find(&self, prefix: &str) -> Result<&JobRecord, FindError> {
        let valid = (MIN_PREFIX..=32).contains(&prefix.len())
            && prefix.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return Err(FindError::BadPrefix(prefix.to_owned()));
        }
        let mut matches = self.recent().filter(|record| record.id.has_prefix(prefix));
        match (matches.next(), matches.count()) {
            (None, _) => Err(FindError::NotFound(prefix.to_owned())),
            (Some(record), 0) => Ok(record),
            (Some(_), more) => Err(FindError::Ambiguous {
                prefix: prefix.to_owned(),
                count: more + 1,
            }),
        }
    }

    /// Records every kept job that has no outcome (it was running when the
    /// previous run of the server stopped) as [`Outcome::Interrupted`], so
    /// that it is reported and never run again. Returns their ids.
    pub fn interrupt_unfinished(&mut self) -> Result<Vec<JobId>, JobsError> {
        let unfinished: Vec<JobRecord> = self
            .jobs
            .iter()
            .filter(|kept| kept.record.outcome.is_none())
            .map(|kept| kept.record.clone())
            .collect();
        let mut ids = Vec::with_capacity(unfinished.len());
        for mut record in unfinished {
            record.outcome = Some(Outcome::Interrupted);
            ids.push(record.id);
            self.append(record)?;
        }
        Ok(ids)
    }

    /// The kept records, newest first.
    pub fn recent(&self) -> impl Iterator<Item = &JobRecord> + '_ {
        self.jobs.iter().rev().map(|kept| &kept.record)
    }

    /// Rewrites the file with the kept records only.
    fn compact(&mut self) -> Result<(), JobsError> {
        let tmp = self.path.with_extension("log.tmp");
        let tmp_error = |action, cause| JobsError::Io {
            path: tmp.clone(),
            action,
            cause,
        };
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| tmp_error("create", e))?;
        let mut len = 0;
        for kept in &self.jobs {
            let frame = encode_frame(&kept.record)?;
            out.write_all(&frame).map_err(|e| tmp_error("write", e))?;
            len += frame.len() as u64;
        }
        out.sync_all().map_err(|e| tmp_error("sync", e))?;
        drop(out);
        std::fs::rename(&tmp, &self.path).map_err(|e| tmp_error("rename", e))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| JobsError::Io {
                    path: dir.to_owned(),
                    action: "sync",
                    cause: e,
                })?;
        }
        self.file = open_append(&self.path).map_err(|e| self.io_error("open", e))?;
        self.file_len = len;
        self.needs_cut = false;
        tracing::debug!(path = %self.path.display(), bytes = len, jobs = self.jobs.len(), "job store compacted");
        Ok(())
    }

    /// Removes what a failed write may have left past the last whole frame.
    fn cut_failed_write(&mut self) -> Result<(), JobsError> {
        self.file
            .set_len(self.file_len)
            .map_err(|cause| self.io_error("truncate", cause))?;
        self.needs_cut = false;
        Ok(())
    }

    fn io_error(&self, action: &'static str, cause: io::Error) -> JobsError {
        JobsError::Io {
            path: self.path.clone(),
            action,
            cause,
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Removes the record of `id`, if kept; returns how many were removed.
fn remove_job(jobs: &mut VecDeque<Kept>, kept_bytes: &mut u64, id: &JobId) -> usize {
    let Some(at) = jobs.iter().position(|kept| kept.record.id == *id) else {
        return 0;
    };
    if let Some(kept) = jobs.remove(at) {
        *kept_bytes -= kept.frame_len;
    }
    1
}

/// Drops the oldest records beyond the bounds, keeping at least the newest;
/// returns how many were dropped.
fn evict(jobs: &mut VecDeque<Kept>, kept_bytes: &mut u64, limits: &JobStoreLimits) -> usize {
    let mut dropped = 0;
    while jobs.len() > limits.max_jobs.max(1) || (*kept_bytes > limits.max_bytes && jobs.len() > 1)
    {
        let Some(oldest) = jobs.pop_front() else {
            break;
        };
        *kept_bytes -= oldest.frame_len;
        dropped += 1;
    }
    dropped
}

fn encode_frame(record: &JobRecord) -> Result<Vec<u8>, JobsError> {
    // `to_extend` appends the encoding to the version byte.
    let payload = postcard::to_extend(record, vec![FORMAT_VERSION])
        .map_err(|e| JobsError::Encode(e.to_string()))?;
    if payload.len() > MAX_RECORD {
        return Err(JobsError::TooLarge {
            bytes: payload.len(),
        });
    }
    let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
    // MAX_RECORD fits in a u32.
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Reads the next frame's payload. `Ok(None)` at the end of the file and at
/// a frame that is incomplete, too long for the `remaining` bytes, or fails
/// its checksum: the start of a tail to cut.
fn read_frame(reader: &mut impl Read, remaining: u64) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0; FRAME_HEADER];
    if !read_full(reader, &mut header)? {
        return Ok(None);
    }
    let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if len == 0 || len > MAX_RECORD || (FRAME_HEADER + len) as u64 > remaining {
        return Ok(None);
    }
    let mut payload = vec![0; len];
    if !read_full(reader, &mut payload)? || crc32fast::hash(&payload) != crc {
        return Ok(None);
    }
    Ok(Some(payload))
}

/// Fills `buf`; `false` if the file ends first.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn decode_record(payload: &[u8]) -> Option<JobRecord> {
    match payload.split_first() {
        Some((&FORMAT_VERSION, body)) => postcard::from_bytes(body).ok(),
        _ => None,
    }
}

/// A short account of an outcome, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeSummary {
    /// `exited`, `signaled`, `timed_out`, `spawn_failed`, `lost`, or `error`
    /// for a command that failed before running anything (a refused
    /// `chdir`, for example).
    pub status: String,
    /// The exit code, for `exited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal number, for `signaled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// What went wrong, for `spawn_failed`, `lost` and `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the command ran, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The bytes written to stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_bytes: Option<u64>,
    /// The bytes written to stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_bytes: Option<u64>,
}

impl OutcomeSummary {
    /// The summary of a command that failed before running anything.
    pub fn error(message: impl Into<String>) -> OutcomeSummary {
        OutcomeSummary {
            status: "error".to_owned(),
            code: None,
            signal: None,
            error: Some(message.into()),
            duration_ms: None,
            stdout_bytes: None,
            stderr_bytes: None,
        }
    }
}

impl From<&ExecOutcome> for OutcomeSummary {
    fn from(outcome: &ExecOutcome) -> OutcomeSummary {
        let (status, code, signal, error) = match &outcome.status {
            ExecStatus::Exited(code) => ("exited", Some(*code), None, None),
            ExecStatus::Signaled(signal) => ("signaled", None, Some(*signal), None),
            ExecStatus::TimedOut => ("timed_out", None, None, None),
            ExecStatus::SpawnFailed(e) => ("spawn_failed", None, None, Some(e.clone())),
            ExecStatus::Lost(e) => ("lost", None, None, Some(e.clone())),
        };
        OutcomeSummary {
            status: status.to_owned(),
            code,
            signal,
            error,
            duration_ms: Some(u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX)),
            stdout_bytes: Some(outcome.stdout.total_bytes),
            stderr_bytes: Some(outcome.stderr.total_bytes),
        }
    }
}

impl From<&Outcome> for OutcomeSummary {
    fn from(outcome: &Outcome) -> OutcomeSummary {
        let bare = |status: &str| OutcomeSummary {
            status: status.to_owned(),
            code: None,
            signal: None,
            error: None,
            duration_ms: None,
            stdout_bytes: None,
            stderr_bytes: None,
        };
        match outcome {
            Outcome::Exec(exec) => OutcomeSummary::from(exec),
            Outcome::Chdir(chdir) => match &chdir.error {
                None => bare("ok"),
                Some(error) => OutcomeSummary::error(error.clone()),
            },
            Outcome::Exit => bare("exit"),
            Outcome::Interrupted => bare("interrupted"),
            Outcome::Package(package) => match &package.status {
                flotilla_client::PackageStatus::Failed(reason) => {
                    OutcomeSummary::error(reason.clone())
                }
                flotilla_client::PackageStatus::NotEligible(_) => bare("not_eligible"),
                flotilla_client::PackageStatus::AlreadyInstalled => bare("already_installed"),
                flotilla_client::PackageStatus::NotInstalled => bare("not_installed"),
                flotilla_client::PackageStatus::Removed => bare("removed"),
                flotilla_client::PackageStatus::Installed { .. } => bare("installed"),
            },
        }
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry<'a> {
    /// When the command was accepted; written in RFC 3339, UTC, to the
    /// millisecond.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// The job.
    pub job: JobId,
    /// Who asked for it.
    pub client: &'a str,
    /// The command, as given.
    pub command: &'a str,
    /// How it ended.
    pub outcome: OutcomeSummary,
}

fn rfc3339<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*time))
}

/// The audit log: `DATA_DIR/audit.log`, one JSON object per line.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// The audit log of `data_dir`. Nothing is opened until the first
    /// [`AuditLog::append`].
    pub fn new(data_dir: &Path) -> AuditLog {
        AuditLog {
            path: data_dir.join(AUDIT_FILE),
        }
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry as one line (the command's newlines are escaped by
    /// JSON), creating the file with mode 0600 if needed.
    pub fn append(&self, entry: &AuditEntry<'_>) -> Result<(), JobsError> {
        let io_error = |action, cause| JobsError::Io {
            path: self.path.clone(),
            action,
            cause,
        };
        let mut line = serde_json::to_vec(entry).map_err(|e| JobsError::Encode(e.to_string()))?;
        line.push(b'\n');
        let mut file = open_append(&self.path).map_err(|e| io_error("open", e))?;
        // One write: with O_APPEND, lines of concurrent writers do not mix.
        file.write_all(&line).map_err(|e| io_error("write", e))
    }
}

#[cfg(test)]
mod tests;
