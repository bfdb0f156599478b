//! Event logs: the checker's [`Trace`] records, written by real nodes and
//! read back from several hosts.
//!
//! The runtime writes one when [`RuntimeConfig::event_log`] is set (see
//! [`crate::runtime`]); [`read_event_logs`] turns the logs of a run (one or
//! more files per host) back into a [`Trace`], and [`check_event_logs`]
//! runs [`crate::check::check`] over it, so the guarantees the simulator
//! proves are also checked on real daemons.
//!
//! # Format
//! JSON lines, appended. Each start of a process (each incarnation) writes a
//! [`LogLine::Start`] line, then one [`LogLine::Record`] per installed
//! configuration, sent message, delivered message and group view, in the
//! order the node did them, and, when the node stops by itself, one
//! [`LogLine::End`]. Record times are microseconds since the Unix epoch on
//! the writing host (the checker compares times across processes only for
//! liveness, which logs do not claim).
//!
//! A process whose log has no `End` line (killed, or still running when the
//! log was read) counts as [`ProcessEnd::Crashed`]: the checker then does
//! not demand that it delivered what it sent or every safe message, which
//! is the most it can promise about a log that may be cut short. Stop
//! daemons cleanly before reading their logs for the strictest check. A
//! last line cut short by a crash is ignored; a malformed line anywhere
//! else is an error.
//!
//! [`RuntimeConfig::event_log`]: crate::runtime::RuntimeConfig::event_log

use crate::check::{check, Violation};
use crate::trace::{ProcessEnd, ProcessTrace, Trace, TraceRecord};
use crate::types::Pid;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// The format version in every [`LogLine::Start`].
pub const EVENT_LOG_FORMAT: u32 = 1;

/// The longest line [`read_event_logs`] accepts. A record names at most
/// [`crate::wire::MAX_MEMBERS`] processes, far below this.
pub const MAX_LINE: usize = 1 << 20;

/// One line of an event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLine {
    /// A process started; the records that follow are its own.
    Start {
        /// The process (node id and incarnation).
        pid: Pid,
        /// When it started, in microseconds since the Unix epoch.
        wall_us: u64,
        /// [`EVENT_LOG_FORMAT`].
        format: u32,
    },
    /// Something the process did.
    Record(TraceRecord),
    /// The process stopped by itself.
    End {
        /// [`ProcessEnd::Left`] after a clean leave; [`ProcessEnd::Crashed`]
        /// when the runtime stopped on an error.
        end: ProcessEnd,
        /// Multicasts accepted but not yet sent when it stopped.
        unsent_at_end: u64,
    },
}

/// Why event logs could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventLogError {
    /// The file could not be opened or read.
    #[error("cannot read event log {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A line other than a torn last one is not a log line.
    #[error("event log {}, line {line}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// The file was written in another format version.
    #[error("event log {}, line {line}: format {found}, this build reads {EVENT_LOG_FORMAT}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: u64,
        /// The version found.
        found: u32,
    },
}

/// Reads the event logs of one run (any number of files, from any hosts)
/// into one [`Trace`] with no liveness phase.
pub fn read_event_logs<P: AsRef<Path>>(paths: &[P]) -> Result<Trace, EventLogError> {
    let mut trace = Trace::default();
    for path in paths {
        read_one(path.as_ref(), &mut trace.processes)?;
    }
    Ok(trace)
}

/// Reads the logs with [`read_event_logs`] and checks them with
/// [`crate::check::check`]; empty when nothing is violated.
pub fn check_event_logs<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<Violation>, EventLogError> {
    Ok(check(&read_event_logs(paths)?))
}

fn read_one(path: &Path, out: &mut Vec<ProcessTrace>) -> Result<(), EventLogError> {
    let io = |source| EventLogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut number = 0u64;
    let mut current: Option<ProcessTrace> = None;
    loop {
        line.clear();
        // Bounded: a line longer than MAX_LINE is an error, not memory.
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(io)?;
        if n == 0 {
            break;
        }
        number += 1;
        let complete = line.last() == Some(&b'\n');
        let malformed = |reason: String| EventLogError::Malformed {
            path: path.to_path_buf(),
            line: number,
            reason,
        };
        if line.len() > MAX_LINE {
            return Err(malformed(format!("longer than {MAX_LINE} bytes")));
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed: LogLine = match serde_json::from_slice(text) {
            Ok(l) => l,
            // A crash can cut the last line short; what came before stands.
            Err(_) if !complete => break,
            Err(e) => return Err(malformed(e.to_string())),
        };
        match parsed {
            LogLine::Start { pid, format, .. } => {
                if format != EVENT_LOG_FORMAT {
                    return Err(EventLogError::Format {
                        path: path.to_path_buf(),
                        line: number,
                        found: format,
                    });
                }
                out.extend(current.take());
                current = Some(ProcessTrace {
                    pid,
                    records: Vec::new(),
                    end: ProcessEnd::Crashed,
                    unsent_at_end: 0,
                });
            }
            LogLine::Record(r) => match &mut current {
                Some(p) => p.records.push(r),
                None => return Err(malformed("a record before any Start line".into())),
            },
            LogLine::End { end, unsent_at_end } => match current.take() {
                Some(mut p) => {
                    p.end = end;
                    p.unsent_at_end = unsent_at_end;
                    out.push(p);
                }
                None => return Err(malformed("an End line before any Start line".into())),
            },
        }
    }
    out.extend(current);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceEvent;
    use crate::types::{ConfId, Level, MsgId, Time, ViewId};
    use std::io::Write;

    fn line(l: &LogLine) -> Result<String, serde_json::Error> {
        Ok(serde_json::to_string(l)? + "\n")
    }

    #[test]
    fn logs_from_two_hosts_read_back_and_check() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (a, b) = (Pid::new(1, 5), Pid::new(2, 9));
        let v = ViewId {
            counter: 1,
            coordinator: a,
        };
        let msg = MsgId {
            sender: a,
            view: v,
            seq: 1,
        };
        let install = |t| {
            LogLine::Record(TraceRecord {
                time: Time(t),
                event: TraceEvent::Install {
                    conf: ConfId::Regular(v),
                    members: vec![a, b],
                    primary: None,
                },
            })
        };
        let deliver = LogLine::Record(TraceRecord {
            time: Time(3),
            event: TraceEvent::Deliver {
                msg,
                level: Level::Agreed,
                group: "g".into(),
                digest: 7,
                conf: ConfId::Regular(v),
            },
        });
        let send = LogLine::Record(TraceRecord {
            time: Time(2),
            event: TraceEvent::Send {
                msg,
                level: Level::Agreed,
                group: "g".into(),
                digest: 7,
            },
        });
        let start = |pid| LogLine::Start {
            pid,
            wall_us: 1,
            format: EVENT_LOG_FORMAT,
        };
        let pa = dir.path().join("a.log");
        let pb = dir.path().join("b.log");
        let mut fa = std::fs::File::create(&pa)?;
        for l in [&start(a), &install(1), &send, &deliver] {
            fa.write_all(line(l)?.as_bytes())?;
        }
        fa.write_all(
            line(&LogLine::End {
                end: ProcessEnd::Left,
                unsent_at_end: 0,
            })?
            .as_bytes(),
        )?;
        let mut fb = std::fs::File::create(&pb)?;
        for l in [&start(b), &install(1), &deliver] {
            fb.write_all(line(l)?.as_bytes())?;
        }
        // A torn last line, as kill -9 can leave.
        fb.write_all(b"{\"Record\":{\"ti")?;
        drop((fa, fb));

        let trace = read_event_logs(&[&pa, &pb])?;
        assert_eq!(trace.processes.len(), 2);
        assert_eq!(trace.processes[0].end, ProcessEnd::Left);
        assert_eq!(trace.processes[1].end, ProcessEnd::Crashed);
        assert_eq!(trace.processes[1].records.len(), 2);
        assert!(check_event_logs(&[&pa, &pb])?.is_empty());

        // b delivers the message twice: the checker says so.
        let mut fb = std::fs::File::create(&pb)?;
        for l in [&start(b), &install(1), &deliver, &deliver] {
            fb.write_all(line(l)?.as_bytes())?;
        }
        drop(fb);
        let found = check_event_logs(&[&pa, &pb])?;
        assert_eq!(found.len(), 1, "{found:?}");

        // Garbage in the middle is an error that names the line.
        std::fs::write(&pb, b"not json\n{}\n")?;
        assert!(matches!(
            read_event_logs(&[&pb]),
            Err(EventLogError::Malformed { line: 1, .. })
        ));
        Ok(())
    }
}
