//! The execution engine in a process that is not a child subreaper, so that
//! the orphans of a killed command go to init. On machines whose init does
//! not reap them (some containers, this project's build machine) they stay
//! zombies; a timed-out command must still end promptly and leave nothing
//! of its group alive.
//!
//! This is its own test binary because the engine's unit tests make their
//! process a subreaper, which cannot be undone for the threads of the same
//! process.

use std::path::Path;
use std::time::Duration;

use mgmtd::exec::{run, ExecOptions, ExecStatus};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The states of the processes of group `pgid`, from `/proc`.
fn group_states(pgid: i32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|stat| {
            let (_, fields) = stat.rsplit_once(')')?;
            let fields: Vec<&str> = fields.split_whitespace().collect();
            let pgrp: i32 = fields.get(2)?.parse().ok()?;
            (pgrp == pgid).then(|| fields.first().map(|s| s.to_string()))?
        })
        .collect()
}

#[tokio::test]
async fn a_timed_out_group_ends_promptly_and_nothing_of_it_lives() -> TestResult {
    let options = ExecOptions {
        timeout: Duration::from_millis(300),
        kill_grace: Duration::from_secs(5),
        ..ExecOptions::default()
    };
    let outcome = run(
        "echo $$; sleep 30 & sleep 30 & wait",
        Path::new("/"),
        &options,
        None,
    )
    .await;
    assert_eq!(outcome.status, ExecStatus::TimedOut);
    // SIGTERM kills every member at once. Were their zombies counted as
    // alive, the engine would wait out the grace period and more.
    assert!(
        outcome.duration < Duration::from_secs(3),
        "{:?}",
        outcome.duration
    );
    let pgid: i32 = outcome.stdout.text().trim().parse()?;
    let states = group_states(pgid);
    assert!(states.iter().all(|s| s == "Z" || s == "X"), "{states:?}");
    Ok(())
}
