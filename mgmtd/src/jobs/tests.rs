use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::exec::Captured;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn id(n: u8) -> JobId {
    let mut bytes = [n; 16];
    bytes[0] = 0xa0;
    JobId::from_bytes(bytes)
}

fn record(n: u8, stdout: &str) -> JobRecord {
    JobRecord {
        id: id(n),
        accepted_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000 + u64::from(n)),
        client: "uid=1000(alice) unix".to_owned(),
        command: format!("echo {n}"),
        targets: vec!["h1".to_owned()],
        outcome: Some(Outcome::Exec(ExecOutcome {
            status: ExecStatus::Exited(0),
            duration: Duration::from_millis(5),
            stdout: Captured {
                bytes: stdout.as_bytes().to_vec(),
                truncated: false,
                total_bytes: stdout.len() as u64,
            },
            stderr: Captured::default(),
        })),
    }
}

fn stdout_of(record: &JobRecord) -> Option<String> {
    match &record.outcome {
        Some(Outcome::Exec(outcome)) => Some(outcome.stdout.text().into_owned()),
        _ => None,
    }
}

fn ids(store: &JobStore) -> Vec<JobId> {
    store.recent().map(|r| r.id).collect()
}

fn file_len(dir: &Path) -> Result<u64, io::Error> {
    Ok(std::fs::metadata(dir.join(JOBS_FILE))?.len())
}

#[test]
fn job_id_text_forms() -> TestResult {
    let id = JobId::from_bytes([
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66,
        0x77,
    ]);
    assert_eq!(id.to_string(), "0123456789abcdef0011223344556677");
    assert_eq!(id.short(), "0123456789ab");
    assert_eq!("0123456789ABCDEF0011223344556677".parse::<JobId>()?, id);
    assert!("0123".parse::<JobId>().is_err());
    assert!("0123456789abcdef001122334455667g".parse::<JobId>().is_err());
    assert!(id.has_prefix("0123456789AB"));
    assert!(!id.has_prefix("1"));
    assert_eq!(
        serde_json::to_string(&id)?,
        "\"0123456789abcdef0011223344556677\""
    );
    assert_eq!(
        serde_json::from_str::<JobId>("\"0123456789abcdef0011223344556677\"")?,
        id
    );
    let bytes = postcard::to_allocvec(&id)?;
    assert_eq!(bytes.len(), 16);
    assert_eq!(postcard::from_bytes::<JobId>(&bytes)?, id);
    assert_ne!(JobId::random()?, JobId::random()?);
    Ok(())
}

#[test]
fn records_survive_reopening() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut store = JobStore::open(dir.path(), JobStoreLimits::default())?;
    assert!(store.is_empty());
    for n in 1..=3 {
        store.append(record(n, "hello\n"))?;
    }
    drop(store);
    let store = JobStore::open(dir.path(), JobStoreLimits::default())?;
    assert_eq!(ids(&store), [id(3), id(2), id(1)]);
    assert_eq!(store.get(&id(2)), Some(&record(2, "hello\n")));
    assert_eq!(
        store.recovery(),
        Recovery {
            kept: 3,
            ..Recovery::default()
        }
    );
    let mode = std::fs::metadata(dir.path().join(JOBS_FILE))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    Ok(())
}

#[test]
fn the_oldest_records_are_evicted_by_count() -> TestResult {
    let dir = tempfile::tempdir()?;
    let limits = JobStoreLimits {
        max_jobs: 3,
        max_bytes: u64::MAX,
    };
    let mut store = JobStore::open(dir.path(), limits)?;
    for n in 1..=5 {
        store.append(record(n, "x"))?;
    }
    assert_eq!(ids(&store), [id(5), id(4), id(3)]);
    drop(store);
    let store = JobStore::open(dir.path(), limits)?;
    assert_eq!(ids(&store), [id(5), id(4), id(3)]);
    assert_eq!(store.recovery().dropped, 2);
    // The reopened store rewrote its file with the kept records only.
    assert_eq!(file_len(dir.path())?, store.kept_bytes());
    Ok(())
}

#[test]
fn the_oldest_records_are_evicted_by_bytes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let big = "y".repeat(1000);
    let one = encode_frame(&record(1, &big))?.len() as u64;
    let limits = JobStoreLimits {
        max_jobs: 100,
        max_bytes: 2 * one + one / 2,
    };
    let mut store = JobStore::open(dir.path(), limits)?;
    for n in 1..=4 {
        store.append(record(n, &big))?;
    }
    assert_eq!(ids(&store), [id(4), id(3)]);
    assert_eq!(store.kept_bytes(), 2 * one);
    // A single record over the byte bound is still kept, alone.
    store.append(record(9, &"z".repeat(10_000)))?;
    assert_eq!(ids(&store), [id(9)]);
    Ok(())
}

#[test]
fn a_torn_tail_is_cut_not_fatal() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut store = JobStore::open(dir.path(), JobStoreLimits::default())?;
    for n in 1..=3 {
        store.append(record(n, "output\n"))?;
    }
    let whole = file_len(dir.path())?;
    let last = encode_frame(&record(3, "output\n"))?.len() as u64;
    drop(store);
    // A crash in the middle of writing the third frame.
    let file = OpenOptions::new()
        .write(true)
        .open(dir.path().join(JOBS_FILE))?;
    file.set_len(whole - 5)?;
    drop(file);

    let mut store = JobStore::open(dir.path(), JobStoreLimits::default())?;
    assert_eq!(ids(&store), [id(2), id(1)]);
    assert_eq!(store.recovery().cut_bytes, last - 5);
    assert_eq!(file_len(dir.path())?, whole - last);
    // Appending goes on after the last whole frame.
    store.append(record(4, "again\n"))?;
    drop(store);
    let store = JobStore::open(dir.path(), JobStoreLimits::default())?;
    assert_eq!(ids(&store), [id(4), id(2), id(1)]);
    assert_eq!(store.recovery().cut_bytes, 0);
    Ok(())
}

#[test]
fn a_corrupt_frame_cuts_the_rest() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut store = JobStore::open(dir.path(), JobStoreLimits::default())?;
    for n in 1..=3 {
        store.append(record(n, "output\n"))?;
    }
    drop(store);
    let path = dir.path().join(JOBS_FILE);
    let mut bytes = std::fs::read(&path)?;
    let first = encode_frame(&record(1, "output\n"))?.len();
    // Flip a byte in the second frame's payload.
    bytes[first + FRAME_HEADER + 3] ^= 0xff;
    std::fs::write(&path, &bytes)?;

    let store = JobStore::open(dir.path(), JobStoreLimits::default())?;
    assert_eq!(ids(&store), [id(1)]);
    assert_eq!(store.recovery().cut_bytes, (bytes.len() - first) as u64);

    // Garbage alone, and a length that claims more than the file holds.
    std::fs::write(&path, [0xff; 3])?;
    assert!(JobStore::open(dir.path(), JobStoreLimits::default())?.is_empty());
    std::fs::write(&path, [0xff; 64])?;
    assert!(JobStore::open(dir.path(), JobStoreLimits::default())?.is_empty());
    assert_eq!(file_len(dir.path())?, 0);
    Ok(())
}

#[test]
fn records_of_an_unknown_format_are_dropped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut store = JobStore::open(dir.path(), JobStoreLimits::default())?;
    store.append(record(1, ""))?;
    drop(store);
    let payload = [FORMAT_VERSION + 1, 1, 2, 3];
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    let mut file = open_append(&dir.path().join(JOBS_FILE))?;
    file.write_all(&frame)?;
    drop(file);
    let store = JobStore::open(dir.path(), JobStoreLimits::default())?;
    assert_eq!(ids(&store), [id(1)]);
    assert_eq!(store.recovery().unreadable, 1);
    Ok(())
}

#[test]
fn a_job_recorded_again_replaces_its_record() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut store = JobStore::open(dir.path(), JobStoreLimits::default())?;
    store.append(record(1, "first"))?;
    store.append(record(2, ""))?;
    store.append(record(1, "second"))?;
    assert_eq!(ids(&store), [id(1), id(2)]);
    drop(store);
    let store = JobStore::open(dir.path(), JobStoreLimits::default())?;
    assert_eq!(ids(&store), [id(1), id(2)]);
    assert_eq!(store.get(&id(1)).and_then(stdout_of), Some("second".into()));
    Ok(())
}

#[test]
fn the_file_is_compacted_while_running() -> TestResult {
    let dir = tempfile::tempdir()?;
    let limits = JobStoreLimits {
        max_jobs: 2,
        max_bytes: u64::MAX,
    };
    let mut store = JobStore::open(dir.path(), limits)?;
    let out = "w".repeat(10_000);
    for n in 0..=250 {
        store.append(record(n, &out))?;
    }
    assert_eq!(store.len(), 2);
    assert!(file_len(dir.path())? <= 2 * store.kept_bytes() + COMPACT_SLACK);
    drop(store);
    let store = JobStore::open(dir.path(), limits)?;
    assert_eq!(ids(&store), [id(250), id(249)]);
    Ok(())
}

#[test]
fn find_by_prefix() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut store = JobStore::open(dir.path(), JobStoreLimits::default())?;
    store.append(record(0x11, ""))?;
    store.append(record(0x12, ""))?;
    // The ids are a0111111... and a0121212...
    assert_eq!(store.find("a01111")?.id, id(0x11));
    assert_eq!(store.find("A01212")?.id, id(0x12));
    assert_eq!(store.find(&id(0x12).to_string())?.id, id(0x12));
    assert_eq!(store.find("a0"), Err(FindError::BadPrefix("a0".to_owned())));
    assert_eq!(
        store.find("a01").err().map(|e| e.to_string()),
        Some(
            "expected at least 4 and at most 32 hexadecimal digits of a job id, found \"a01\""
                .to_owned()
        )
    );
    assert_eq!(
        store.find("b000").err().map(|e| e.to_string()),
        Some("no recent job b000".to_owned())
    );
    store.append(record(0x13, ""))?;
    let mut ambiguous = record(0x14, "");
    ambiguous.id = JobId::from_bytes([0xa0, 0x13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    store.append(ambiguous)?;
    assert_eq!(
        store.find("a013").err().map(|e| e.to_string()),
        Some("job id a013 is ambiguous: 2 recent jobs start with it; give more digits".to_owned())
    );
    Ok(())
}

#[test]
fn audit_lines_are_json_one_per_command() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = AuditLog::new(dir.path());
    let first = record(1, "hi\n");
    log.append(&AuditEntry {
        time: first.accepted_at,
        job: first.id,
        client: &first.client,
        command: "echo hi\necho there",
        outcome: first
            .outcome
            .as_ref()
            .map(OutcomeSummary::from)
            .ok_or("no outcome")?,
    })?;
    log.append(&AuditEntry {
        time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        job: id(2),
        client: "tcp 10.0.0.5:40100",
        command: "chdir /nowhere",
        outcome: OutcomeSummary::error("/nowhere does not exist"),
    })?;
    let text = std::fs::read_to_string(log.path())?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0],
        format!(
            r#"{{"time":"2023-11-14T22:13:21.000Z","job":"{}","client":"uid=1000(alice) unix","command":"echo hi\necho there","outcome":{{"status":"exited","code":0,"duration_ms":5,"stdout_bytes":3,"stderr_bytes":0}}}}"#,
            id(1)
        )
    );
    assert_eq!(
        lines[1],
        format!(
            r#"{{"time":"2023-11-14T22:13:20.123Z","job":"{}","client":"tcp 10.0.0.5:40100","command":"chdir /nowhere","outcome":{{"status":"error","error":"/nowhere does not exist"}}}}"#,
            id(2)
        )
    );
    let mode = std::fs::metadata(log.path())?.permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    Ok(())
}
