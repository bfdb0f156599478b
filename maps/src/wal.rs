//! The write-ahead log and snapshots of a server's tables, on a
//! [`Storage`], and recovery from them at start.
//!
//! # Files
//! - `maps.wal`: an 8-byte magic `FLMAPWAL`, the 8-byte generation (little
//!   endian), then frames. A frame is `[len: u32 LE][crc32 of body: u32 LE]
//!   [body]`, the body a postcard [`Change`]. [`Wal::append`] writes a batch
//!   of frames and syncs once (group commit) before returning: the caller
//!   acknowledges nothing before that.
//! - `maps.snapshot`: the magic `FLMAPSNP`, then one frame whose body is a
//!   postcard [`SnapshotFile`]: the generation and every map, followed by
//!   a postcard [`SnapshotDigests`] (the digests of the maps' recent
//!   updates, to refuse a reused update id). Files written before the
//!   digests existed end after the [`SnapshotFile`] and load with none; a
//!   reader that does not know them stops before them. Written by
//!   [`Storage::write_atomic`] (temporary file, fsync, rename, fsync of the
//!   directory), so it is whole or absent.
//!
//! # Compaction
//! [`Wal::snapshot`] writes the snapshot with generation g+1, then replaces
//! the log by an empty one of generation g+1. A crash between the two
//! leaves a log of generation g, all of whose records the snapshot already
//! holds: recovery ignores a log older than the snapshot.
//!
//! # Recovery ([`Wal::open`])
//! The snapshot is loaded, then the log replayed frame by frame. A *torn
//! tail* is the end of the last append, which a crash interrupted before its
//! sync (so nothing in it was acknowledged): a header cut short, a frame
//! whose length runs past the end of the file with no complete frame after
//! it, a last frame whose checksum fails, or a run of zero bytes at the end.
//! The tail is cut (the file truncated, durably) and reported in
//! [`Recovered::cut`]. Everything else is corruption of synced data, and
//! [`WalError::Corrupt`] names the file and the byte offset (the server must
//! not start on a guess): a checksum failure with more bytes after the
//! frame, a length that runs past the end while a complete frame (length
//! that fits, matching checksum, a body that decodes) starts somewhere
//! after it (a damaged length field hiding synced frames), a body that does
//! not decode, or a record that does not follow the state before it.
//!
//! What the format cannot tell: frames carry no sequence number, so if the
//! file system wrote an unsynced append's later pages but not an earlier
//! one, the hole looks like damage with complete frames after it and is
//! reported as corruption. That errs towards stopping, never towards
//! applying or silently dropping synced records.

use crate::replica::Change;
use crate::storage::Storage;
use crate::table::{AppliedUpdate, MapSnapshot, Tables};
use crate::update::{Ordered, UpdateId};
use serde::{Deserialize, Serialize};
use std::io;

/// The log's file name.
pub const WAL_FILE: &str = "maps.wal";
/// The snapshot's file name.
pub const SNAPSHOT_FILE: &str = "maps.snapshot";
const WAL_MAGIC: &[u8; 8] = b"FLMAPWAL";
const SNAP_MAGIC: &[u8; 8] = b"FLMAPSNP";
const WAL_HEADER: u64 = 16;
const FRAME_HEADER: usize = 8;
/// Largest frame body, in bytes (a record, or the whole snapshot). A
/// snapshot of tables larger than this cannot be written; the log keeps
/// growing and [`WalError::TooLarge`] says why.
pub const MAX_FRAME: usize = 1 << 30;

/// Reading or writing the log or the snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The storage failed (a full disk, a permission, an I/O error). When
    /// appending, nothing may be acknowledged: the server stops applying.
    #[error("{op} {file}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file, as the storage names it.
        file: String,
        /// The error.
        source: io::Error,
    },
    /// Synced data is corrupt: the server must not start. Restore the file
    /// from a peer (delete the maps directory to catch up from the primary
    /// component by snapshot) or from a backup.
    #[error("{file} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// The file, as the storage names it.
        file: String,
        /// The byte offset of the bad frame or header.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record or snapshot is larger than [`MAX_FRAME`].
    #[error("a {what} of {len} bytes is over the limit of {MAX_FRAME} bytes")]
    TooLarge {
        /// A record or a snapshot.
        what: &'static str,
        /// Its size.
        len: usize,
    },
}

/// The torn tail cut from the log at recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// The file, as the storage names it.
    pub file: String,
    /// Where the tail began (the new length of the file).
    pub offset: u64,
    /// How many bytes were cut.
    pub bytes: u64,
}

/// What [`Wal::open`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The tables as of the last synced record.
    pub tables: Tables,
    /// The updates applied since the snapshot, in log order: the suffix a
    /// server can send in catch-up.
    pub applied: Vec<AppliedUpdate>,
    /// Updates received and kept but not yet applied ([`Change::Held`]),
    /// in log order; those at or below a map's version are left out.
    pub held: Vec<Ordered>,
    /// Records replayed from the log.
    pub records: u64,
    /// The torn tail that was cut, if any.
    pub cut: Option<Cut>,
}

/// The body of the snapshot file.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// The generation: a log of an older generation is covered by it.
    pub generation: u64,
    /// Every map, live or dropped.
    pub maps: Vec<MapSnapshot>,
}

/// What the snapshot file holds after its [`SnapshotFile`]: per map, the
/// digests of its recent updates ([`crate::MapState::digests`]).
pub type SnapshotDigests = Vec<(String, Vec<(UpdateId, u64)>)>;

/// The write-ahead log of one server's tables.
#[derive(Debug)]
pub struct Wal<S: Storage> {
    storage: S,
    generation: u64,
    /// Length of the log file.
    len: u64,
    /// Records written since the last sync.
    unsynced: bool,
}

fn io_err(
    storage: &dyn Storage,
    op: &'static str,
    name: &str,
) -> impl FnOnce(io::Error) -> WalError {
    let file = storage.describe(name);
    move |source| WalError::Io { op, file, source }
}

/// Frames `body`: length, checksum, body.
fn frame(body: &[u8], what: &'static str) -> Result<Vec<u8>, WalError> {
    if body.len() > MAX_FRAME {
        return Err(WalError::TooLarge {
            what,
            len: body.len(),
        });
    }
    let mut out = Vec::with_capacity(FRAME_HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

fn wal_header(generation: u64) -> Vec<u8> {
    let mut h = WAL_MAGIC.to_vec();
    h.extend_from_slice(&generation.to_le_bytes());
    h
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

impl<S: Storage> Wal<S> {
    /// Recovers the tables from the snapshot and the log on `storage`,
    /// cutting a torn tail, and opens the log for appending. An empty
    /// storage gives empty tables.
    pub fn open(mut storage: S) -> Result<(Self, Recovered), WalError> {
        let names = storage.list().map_err(io_err(&storage, "listing", "."))?;
        let mut rec = Recovered::default();
        let mut generation = 0;
        if names.iter().any(|n| n == SNAPSHOT_FILE) {
            let (snap, digests) = read_snapshot(&storage)?;
            generation = snap.generation;
            for m in snap.maps {
                let name = m.map.clone();
                rec.tables.restore(m).map_err(|e| WalError::Corrupt {
                    file: storage.describe(SNAPSHOT_FILE),
                    offset: 8,
                    reason: format!("map {name:?}: {e}"),
                })?;
            }
            for (map, d) in &digests {
                rec.tables.restore_digests(map, d);
            }
        }
        let mut len = WAL_HEADER;
        let have_wal = names.iter().any(|n| n == WAL_FILE);
        let data = if have_wal {
            storage
                .read(WAL_FILE)
                .map_err(io_err(&storage, "reading", WAL_FILE))?
        } else {
            Vec::new()
        };
        let file = storage.describe(WAL_FILE);
        let corrupt = |offset: u64, reason: String| WalError::Corrupt {
            file: file.clone(),
            offset,
            reason,
        };
        let mut fresh = !have_wal;
        if have_wal {
            if data.len() < WAL_HEADER as usize {
                // Created by an atomic write, so never short unless damaged.
                return Err(corrupt(
                    0,
                    format!("{} bytes: shorter than the header", data.len()),
                ));
            }
            if &data[..8] != WAL_MAGIC {
                return Err(corrupt(0, "not a maps log (bad magic)".into()));
            }
            let wal_gen = le_u64(&data[8..16]);
            if wal_gen > generation {
                return Err(corrupt(
                    8,
                    format!("log generation {wal_gen} is newer than the snapshot's {generation}: the snapshot is missing"),
                ));
            }
            if wal_gen < generation {
                // A crash between writing the snapshot and resetting the
                // log: the snapshot holds all of it.
                fresh = true;
            } else {
                len = replay(&data, &mut rec, &corrupt)?;
                if len < data.len() as u64 {
                    storage.truncate(WAL_FILE, len).map_err(io_err(
                        &storage,
                        "cutting the torn tail of",
                        WAL_FILE,
                    ))?;
                    rec.cut = Some(Cut {
                        file: file.clone(),
                        offset: len,
                        bytes: data.len() as u64 - len,
                    });
                }
            }
        }
        if fresh {
            storage
                .write_atomic(WAL_FILE, &wal_header(generation))
                .map_err(io_err(&storage, "creating", WAL_FILE))?;
            len = WAL_HEADER;
        }
        Ok((
            Wal {
                storage,
                generation,
                len,
                unsynced: false,
            },
            rec,
        ))
    }

    /// Appends `changes` and syncs them: when this returns `Ok`, they
    /// survive a crash. On an error, some of them may or may not have
    /// reached the disk; acknowledge none of them.
    pub fn append(&mut self, changes: &[Change]) -> Result<(), WalError> {
        self.write(changes)?;
        self.sync()
    }

    /// Appends `changes` without syncing them (group commit): nothing may
    /// be acknowledged until [`Wal::sync`] has returned `Ok`.
    pub fn write(&mut self, changes: &[Change]) -> Result<(), WalError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for c in changes {
            let body = postcard::to_stdvec(c).map_err(|e| WalError::Io {
                op: "encoding a record for",
                file: self.storage.describe(WAL_FILE),
                source: io::Error::other(e),
            })?;
            buf.extend(frame(&body, "log record")?);
        }
        self.storage.append(WAL_FILE, &buf).map_err(io_err(
            &self.storage,
            "appending to",
            WAL_FILE,
        ))?;
        self.len += buf.len() as u64;
        self.unsynced = true;
        Ok(())
    }

    /// Syncs what [`Wal::write`] appended: when this returns `Ok`, it
    /// survives a crash. One fsync for any number of writes before it.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if !self.unsynced {
            return Ok(());
        }
        self.storage
            .sync(WAL_FILE)
            .map_err(io_err(&self.storage, "syncing", WAL_FILE))?;
        self.unsynced = false;
        Ok(())
    }

    /// Whether records were written and not yet synced.
    pub fn is_dirty(&self) -> bool {
        self.unsynced
    }

    /// The storage, to write other small files beside the log.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Writes a snapshot of `tables` and empties the log (compaction),
    /// keeping the records of `held` updates (received, not yet applied) in
    /// the new log, written in the same atomic replace: they must survive
    /// as they did before.
    pub fn snapshot(&mut self, tables: &Tables, held: &[Ordered]) -> Result<(), WalError> {
        let generation = self.generation + 1;
        let snap = SnapshotFile {
            generation,
            maps: tables.maps().map(|(name, m)| m.snapshot(name)).collect(),
        };
        let digests: SnapshotDigests = tables
            .maps()
            .map(|(name, m)| (name.to_owned(), m.digests()))
            .filter(|(_, d)| !d.is_empty())
            .collect();
        let encoding = |e| WalError::Io {
            op: "encoding",
            file: self.storage.describe(SNAPSHOT_FILE),
            source: io::Error::other(e),
        };
        let mut body = postcard::to_stdvec(&snap).map_err(encoding)?;
        body.extend(postcard::to_stdvec(&digests).map_err(encoding)?);
        let mut bytes = SNAP_MAGIC.to_vec();
        bytes.extend(frame(&body, "snapshot")?);
        self.storage
            .write_atomic(SNAPSHOT_FILE, &bytes)
            .map_err(io_err(&self.storage, "writing", SNAPSHOT_FILE))?;
        self.generation = generation;
        let mut log = wal_header(generation);
        for o in held {
            let body = postcard::to_stdvec(&Change::Held(o.clone())).map_err(|e| WalError::Io {
                op: "encoding a record for",
                file: self.storage.describe(WAL_FILE),
                source: io::Error::other(e),
            })?;
            log.extend(frame(&body, "log record")?);
        }
        self.storage.write_atomic(WAL_FILE, &log).map_err(io_err(
            &self.storage,
            "resetting",
            WAL_FILE,
        ))?;
        self.len = log.len() as u64;
        // The snapshot, written and synced, holds every record written.
        self.unsynced = false;
        Ok(())
    }

    /// Bytes in the log (compact when it grows past a bound).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the log holds no record.
    pub fn is_empty(&self) -> bool {
        self.len <= WAL_HEADER
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }
}

fn read_snapshot(storage: &dyn Storage) -> Result<(SnapshotFile, SnapshotDigests), WalError> {
    let file = storage.describe(SNAPSHOT_FILE);
    let data = storage
        .read(SNAPSHOT_FILE)
        .map_err(io_err(storage, "reading", SNAPSHOT_FILE))?;
    let corrupt = |offset: u64, reason: &str| WalError::Corrupt {
        file: file.clone(),
        offset,
        reason: reason.to_owned(),
    };
    if data.len() < 8 + FRAME_HEADER || &data[..8] != SNAP_MAGIC {
        return Err(corrupt(0, "not a maps snapshot (bad magic or too short)"));
    }
    let len = le_u32(&data[8..]) as usize;
    let crc = le_u32(&data[12..]);
    let body = data
        .get(16..)
        .filter(|b| b.len() == len)
        .ok_or_else(|| corrupt(8, "the frame length does not match the file"))?;
    if crc32fast::hash(body) != crc {
        return Err(corrupt(8, "checksum mismatch"));
    }
    let (snap, rest) = postcard::take_from_bytes::<SnapshotFile>(body)
        .map_err(|e| corrupt(16, &format!("undecodable: {e}")))?;
    if rest.is_empty() {
        return Ok((snap, Vec::new())); // written before the digests
    }
    let at = 16 + (body.len() - rest.len()) as u64;
    let digests = postcard::from_bytes(rest)
        .map_err(|e| corrupt(at, &format!("undecodable digests: {e}")))?;
    Ok((snap, digests))
}

/// Replays the frames of `data` (a whole log file) into `rec`; returns the
/// length of the good prefix (less than `data.len()` when a torn tail
/// follows it).
fn replay(
    data: &[u8],
    rec: &mut Recovered,
    corrupt: &dyn Fn(u64, String) -> WalError,
) -> Result<u64, WalError> {
    let end = data.len();
    let mut at = WAL_HEADER as usize;
    while at < end {
        let Some(header) = data.get(at..at + FRAME_HEADER) else {
            return Ok(at as u64); // a torn header: nothing can follow it
        };
        let len = le_u32(header) as usize;
        let crc = le_u32(&header[4..]);
        if len == 0 {
            if data[at..].iter().all(|&b| b == 0) {
                return Ok(at as u64); // zeros the file system left at the end
            }
            return Err(corrupt(at as u64, "a frame of length 0".into()));
        }
        let body_end = at.saturating_add(FRAME_HEADER).saturating_add(len);
        if len > MAX_FRAME || body_end > end {
            // Either the last frame was cut short by a crash (torn), or this
            // length field is damaged and points past the end. A torn tail
            // is the unsynced end of the last append, so no complete frame
            // follows a torn one's start; a damaged length hides the synced
            // frames after it, and one of them checks out.
            if let Some(next) = valid_frame_after(data, at + FRAME_HEADER + 1) {
                return Err(corrupt(
                    at as u64,
                    format!(
                        "a frame length of {len} bytes runs past the end of the file, \
                         but a complete frame follows at byte {next}: a damaged length"
                    ),
                ));
            }
            return Ok(at as u64); // the frame runs past the end: torn
        }
        let body = &data[at + FRAME_HEADER..body_end];
        if crc32fast::hash(body) != crc {
            if body_end == end {
                return Ok(at as u64); // the last frame, torn
            }
            return Err(corrupt(
                at as u64,
                format!(
                    "checksum mismatch with {} bytes after the frame",
                    end - body_end
                ),
            ));
        }
        let change: Change = postcard::from_bytes(body)
            .map_err(|e| corrupt(at as u64, format!("undecodable record: {e}")))?;
        apply(rec, change).map_err(|reason| corrupt(at as u64, reason))?;
        rec.records += 1;
        at = body_end;
    }
    Ok(at as u64)
}

/// The offset of the first complete frame (a length that fits, a body whose
/// checksum matches and that decodes) starting at or after `from`, if any.
/// A chance match in torn garbage needs a 32-bit checksum to agree and the
/// body to decode as a record, so a hit means synced data lies there.
fn valid_frame_after(data: &[u8], from: usize) -> Option<usize> {
    let end = data.len();
    (from..end.saturating_sub(FRAME_HEADER)).find(|&at| {
        let Some(header) = data.get(at..at + FRAME_HEADER) else {
            return false;
        };
        let len = le_u32(header) as usize;
        let crc = le_u32(&header[4..]);
        let body_end = at + FRAME_HEADER + len;
        len > 0
            && len <= MAX_FRAME
            && body_end <= end
            && crc32fast::hash(&data[at + FRAME_HEADER..body_end]) == crc
            && postcard::from_bytes::<Change>(&data[at + FRAME_HEADER..body_end]).is_ok()
    })
}

/// Applies one logged change to the recovered state.
fn apply(rec: &mut Recovered, change: Change) -> Result<(), String> {
    match change {
        Change::Applied(a) => {
            let have = rec.tables.version(a.ordered.map());
            if a.ordered.version <= have {
                // Covered by an installed snapshot logged before it.
                return Ok(());
            }
            let again = rec
                .tables
                .apply(a.ordered.clone())
                .map_err(|e| format!("the record does not follow the state before it: {e}"))?;
            if again.outcome != a.outcome {
                return Err(format!(
                    "replaying map {:?} version {} gave {}, the log says {}",
                    a.ordered.map(),
                    a.ordered.version,
                    again.outcome,
                    a.outcome
                ));
            }
            rec.applied.push(a);
        }
        Change::Installed(s) => {
            let map = s.map.clone();
            rec.tables.restore(s).map_err(|e| e.to_string())?;
            rec.applied.retain(|a| a.ordered.map() != map);
        }
        Change::Held(o) => rec.held.push(o),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{FileStorage, MemDisk};
    use crate::table::tests::set;
    use crate::update::{Op, Ordered, Update, UpdateId};

    fn change(t: &mut Tables, map: &str, id: u128, op: Op) -> Change {
        let o = Ordered::new(
            t.version(map) + 1,
            1,
            t.chain(map),
            Update {
                id: UpdateId(id),
                map: map.into(),
                op,
            },
        );
        Change::Applied(t.apply(o).unwrap())
    }

    fn digest(t: &Tables) -> Vec<(String, u64, u64)> {
        t.maps()
            .map(|(n, m)| (n.to_owned(), m.version(), m.content_digest()))
            .collect()
    }

    #[test]
    fn append_recover_compact() {
        let disk = MemDisk::new();
        let (mut wal, rec) = Wal::open(disk.storage()).unwrap();
        assert_eq!(rec.records, 0);
        let mut t = Tables::new();
        let c = vec![
            change(&mut t, "m", 1, Op::CreateMap),
            change(&mut t, "m", 2, set("a", "1")),
        ];
        wal.append(&c).unwrap();
        wal.append(&[change(&mut t, "n", 3, Op::CreateMap)])
            .unwrap();
        disk.crash();
        let (mut wal, rec) = Wal::open(disk.storage()).unwrap();
        assert_eq!(rec.records, 3);
        assert_eq!(digest(&rec.tables), digest(&t));
        assert_eq!(rec.applied.len(), 3);
        wal.snapshot(&t, &[]).unwrap();
        assert!(wal.is_empty());
        wal.append(&[change(&mut t, "m", 4, set("b", "2"))])
            .unwrap();
        disk.crash();
        let (_, rec) = Wal::open(disk.storage()).unwrap();
        assert_eq!(digest(&rec.tables), digest(&t));
        assert_eq!(rec.records, 1, "only the record after the snapshot");
        assert_eq!(rec.applied.len(), 1);
    }

    #[test]
    fn unsynced_tail_is_lost_and_torn_tail_cut() {
        let disk = MemDisk::new();
        let (mut wal, _) = Wal::open(disk.storage()).unwrap();
        let mut t = Tables::new();
        wal.append(&[change(&mut t, "m", 1, Op::CreateMap)])
            .unwrap();
        let synced = digest(&t);
        let good_len = disk.file(WAL_FILE).unwrap().len() as u64;
        // A torn write: half of the next frame reaches the disk.
        let next = change(&mut t, "m", 2, set("a", "1"));
        let mut s = disk.storage();
        let body = postcard::to_stdvec(&next).unwrap();
        s.append(WAL_FILE, &frame(&body, "r").unwrap()).unwrap();
        disk.crash_keeping(|_, n| n / 2);
        let (_, rec) = Wal::open(disk.storage()).unwrap();
        assert_eq!(digest(&rec.tables), synced);
        let cut = rec.cut.unwrap();
        assert_eq!(cut.offset, good_len);
        assert!(cut.bytes > 0);
        assert_eq!(
            disk.file(WAL_FILE).unwrap().len() as u64,
            good_len,
            "cut durably"
        );
        // A last frame with a bad checksum is a torn tail too.
        let mut data = disk.file(WAL_FILE).unwrap();
        let mut f = frame(&body, "r").unwrap();
        let last = f.len() - 1;
        f[last] ^= 0xff;
        data.extend(f);
        disk.set_file(WAL_FILE, data);
        let (_, rec) = Wal::open(disk.storage()).unwrap();
        assert_eq!(rec.cut.unwrap().offset, good_len);
        // Zeros at the end are a tail.
        let mut data = disk.file(WAL_FILE).unwrap();
        data.extend([0u8; 100]);
        disk.set_file(WAL_FILE, data);
        assert!(Wal::open(disk.storage()).unwrap().1.cut.is_some());
    }

    #[test]
    fn a_damaged_length_is_corruption_a_short_last_frame_is_torn() {
        let disk = MemDisk::new();
        let (mut wal, _) = Wal::open(disk.storage()).unwrap();
        let mut t = Tables::new();
        wal.append(&[change(&mut t, "m", 1, Op::CreateMap)])
            .unwrap();
        let second = disk.file(WAL_FILE).unwrap().len();
        for i in 2..6 {
            wal.append(&[change(&mut t, "m", i, set("k", &format!("v{i}")))])
                .unwrap();
        }
        let good = disk.file(WAL_FILE).unwrap();
        // The second frame's length now points past the end of the file,
        // with complete synced frames after it: corruption, not a tail.
        let mut data = good.clone();
        data[second..second + 4].copy_from_slice(&u32::MAX.to_le_bytes()[..4]);
        data[second + 3] = 0x3f; // under MAX_FRAME, past the end
        disk.set_file(WAL_FILE, data);
        match Wal::open(disk.storage()) {
            Err(WalError::Corrupt { offset, reason, .. }) => {
                assert_eq!(offset, second as u64);
                assert!(reason.contains("damaged length"), "{reason}");
            }
            other => panic!("expected corruption, got {:?}", other.map(|r| r.1.cut)),
        }
        assert_eq!(disk.file(WAL_FILE).unwrap().len(), good.len(), "not cut");
        // The same damage to the last frame's length: nothing complete
        // follows, so it is a torn tail and is cut.
        let mut data = good.clone();
        let last = {
            // Walk the frames to the start of the last one.
            let mut at = WAL_HEADER as usize;
            let mut last = at;
            while at < data.len() {
                last = at;
                at += FRAME_HEADER + le_u32(&data[at..]) as usize;
            }
            last
        };
        data[last..last + 4].copy_from_slice(&0x3fff_ffffu32.to_le_bytes());
        disk.set_file(WAL_FILE, data);
        let (_, rec) = Wal::open(disk.storage()).unwrap();
        assert_eq!(rec.cut.unwrap().offset, last as u64);
        // A last frame cut anywhere, header included, is torn.
        for keep in [last + 3, last + FRAME_HEADER + 2, good.len() - 1] {
            disk.set_file(WAL_FILE, good[..keep].to_vec());
            let (_, rec) = Wal::open(disk.storage()).unwrap();
            assert_eq!(rec.cut.unwrap().offset, last as u64, "cut at {keep}");
        }
    }

    #[test]
    fn corruption_before_the_tail_names_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FileStorage::open(dir.path()).unwrap();
        let (mut wal, _) = Wal::open(storage).unwrap();
        let mut t = Tables::new();
        wal.append(&[change(&mut t, "m", 1, Op::CreateMap)])
            .unwrap();
        let second = std::fs::metadata(dir.path().join(WAL_FILE)).unwrap().len();
        wal.append(&[change(&mut t, "m", 2, set("a", "1"))])
            .unwrap();
        wal.append(&[change(&mut t, "m", 3, set("b", "1"))])
            .unwrap();
        drop(wal);
        let path = dir.path().join(WAL_FILE);
        let mut data = std::fs::read(&path).unwrap();
        data[second as usize + 10] ^= 0x55;
        std::fs::write(&path, &data).unwrap();
        let e = Wal::open(FileStorage::open(dir.path()).unwrap()).unwrap_err();
        match &e {
            WalError::Corrupt { file, offset, .. } => {
                assert_eq!(*offset, second);
                assert!(file.ends_with(WAL_FILE), "{file}");
            }
            other => panic!("{other}"),
        }
        let msg = e.to_string();
        assert!(msg.contains(&format!("corrupt at byte {second}")), "{msg}");
        assert_eq!(std::fs::read(&path).unwrap(), data, "nothing was cut");
    }

    #[test]
    fn crash_between_snapshot_and_log_reset() {
        let disk = MemDisk::new();
        let (mut wal, _) = Wal::open(disk.storage()).unwrap();
        let mut t = Tables::new();
        wal.append(&[
            change(&mut t, "m", 1, Op::CreateMap),
            change(&mut t, "m", 2, set("a", "1")),
        ])
        .unwrap();
        let old_log = disk.file(WAL_FILE).unwrap();
        wal.snapshot(&t, &[]).unwrap();
        disk.set_file(WAL_FILE, old_log); // as if the reset never happened
        let (wal, rec) = Wal::open(disk.storage()).unwrap();
        assert_eq!(digest(&rec.tables), digest(&t));
        assert_eq!(rec.records, 0);
        assert!(wal.is_empty());
        // A snapshot with a flipped bit is corruption, never a guess.
        let mut snap = disk.file(SNAPSHOT_FILE).unwrap();
        let n = snap.len() - 3;
        snap[n] ^= 1;
        disk.set_file(SNAPSHOT_FILE, snap);
        assert!(matches!(
            Wal::open(disk.storage()),
            Err(WalError::Corrupt { offset: 8, .. })
        ));
    }

    #[test]
    fn the_snapshot_keeps_the_digests_of_recent_updates_and_old_ones_load() {
        use crate::table::Recall;
        let disk = MemDisk::new();
        let (mut wal, _) = Wal::open(disk.storage()).unwrap();
        let mut t = Tables::new();
        wal.append(&[
            change(&mut t, "m", 1, Op::CreateMap),
            change(&mut t, "m", 2, set("a", "1")),
        ])
        .unwrap();
        wal.snapshot(&t, &[]).unwrap();
        let other = Update {
            id: UpdateId(2),
            map: "m".into(),
            op: set("a", "other"),
        };
        // Compacted, the reused id is still told from a retry.
        let (_, rec) = Wal::open(disk.storage()).unwrap();
        assert!(matches!(
            rec.tables.recall(&other),
            Some(Recall::Different(_))
        ));
        // A reader without the digests reads the file as before.
        let file = disk.file(SNAPSHOT_FILE).unwrap();
        let old: SnapshotFile = postcard::from_bytes(&file[16..]).unwrap();
        assert_eq!(old.maps.len(), 1);
        // A file written before the digests loads, its ids without them.
        let body = postcard::to_stdvec(&old).unwrap();
        let mut bytes = SNAP_MAGIC.to_vec();
        bytes.extend(frame(&body, "snapshot").unwrap());
        disk.set_file(SNAPSHOT_FILE, bytes);
        let (_, rec) = Wal::open(disk.storage()).unwrap();
        assert_eq!(digest(&rec.tables), digest(&t));
        assert!(matches!(
            rec.tables.recall(&other),
            Some(Recall::Unknown(_))
        ));
    }
}
