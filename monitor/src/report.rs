//! A job's final report: as a table where hosts with identical answers are
//! gathered under one row (as `clush -b` and `dshbak -c` do), or as one
//! JSON document.
//!
//! # The JSON document (stable)
//!
//! ```json
//! {"job": "…32 hex…", "command": "uname -a",
//!  "summary": {"ok": 4, "failed": 0, "timed_out": 0, "disconnected": 1, "unknown_host": 0, "not_targeted": 0, "other": 0},
//!  "hosts": [{"host": "web-1", "outcome": "ok", "exit": 0, "signal": null, "duration_ms": 3,
//!             "stdout": "…", "stderr": "", "stdout_truncated": false, "stderr_truncated": false, "error": null}]}
//! ```
//!
//! `outcome` is one of `ok`, `failed`, `timed out`, `signaled`,
//! `disconnected`, `unknown host`, `not targeted`, `no record`, `running`,
//! `interrupted`, `not started`, `not eligible` (siminst: the host does not
//! meet the package's requirements; `error` says why). A siminst host that
//! is `ok` says what it did in `stdout` (`installed webapp 1.4.0`, `already
//! installed`, `removed`); the script's own output follows it.
//!
//! # Host text on the terminal
//!
//! Everything a host sends (output, host names, error strings) goes
//! through [`safe`] or [`safe_lines`] before it is printed as text, so a
//! command cannot move the cursor, clear the screen or set the window
//! title of the operator's terminal. The JSON document carries the text
//! exactly (JSON escapes control characters itself).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use comfy_table::{presets, Cell, ContentArrangement, Table};

/// Below this many columns the report is not wrapped to the terminal.
const MIN_WRAP_WIDTH: u16 = 40;
use flotilla_client::message::Unfinished;
use flotilla_client::outcome::{ExecStatus, PackageStatus};
use flotilla_client::{HostState, JobReport, Outcome};
use serde::Serialize;

/// Lines of output shown per group in the table.
const SHOWN_LINES: usize = 8;

/// One host's line in the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HostLine {
    /// The host.
    pub(crate) host: String,
    /// What happened, in words.
    pub(crate) outcome: &'static str,
    /// The exit code, when the command exited.
    pub(crate) exit: Option<i32>,
    /// The signal, when it was killed by one.
    pub(crate) signal: Option<i32>,
    /// How long it ran.
    pub(crate) duration_ms: Option<u64>,
    /// Its standard output (as kept).
    pub(crate) stdout: String,
    /// Its standard error (as kept).
    pub(crate) stderr: String,
    /// Whether stdout was cut at the cap.
    pub(crate) stdout_truncated: bool,
    /// Whether stderr was cut at the cap.
    pub(crate) stderr_truncated: bool,
    /// An error: why a command did not start, why a chdir was refused.
    pub(crate) error: Option<String>,
    /// Whether this host counts as a success.
    #[serde(skip)]
    pub(crate) ok: bool,
}

/// Counts by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Summary {
    /// Succeeded.
    pub(crate) ok: usize,
    /// Ran and failed (non-zero exit, signal, chdir refused, not started).
    pub(crate) failed: usize,
    /// Timed out.
    pub(crate) timed_out: usize,
    /// Left M before reporting.
    pub(crate) disconnected: usize,
    /// Named but not in M.
    pub(crate) unknown_host: usize,
    /// In M, not a target.
    pub(crate) not_targeted: usize,
    /// Running, no record, interrupted.
    pub(crate) other: usize,
    /// siminst: the host does not meet the package's requirements.
    pub(crate) not_eligible: usize,
}

/// The report in its printable form.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// The job id.
    pub(crate) job: String,
    /// The command.
    pub(crate) command: String,
    /// Counts.
    pub(crate) summary: Summary,
    /// Every host, sorted.
    pub(crate) hosts: Vec<HostLine>,
}

impl Report {
    /// Whether every target succeeded and no host was unknown.
    pub(crate) fn all_ok(&self) -> bool {
        self.hosts
            .iter()
            .all(|h| h.ok || h.outcome == "not targeted" || h.outcome == "not eligible")
    }
}

fn millis(d: Duration) -> Option<u64> {
    Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn line(host: String, state: &HostState<Outcome>) -> HostLine {
    let mut l = HostLine {
        host,
        outcome: "",
        exit: None,
        signal: None,
        duration_ms: None,
        stdout: String::new(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        error: None,
        ok: false,
    };
    match state {
        HostState::Reported(Outcome::Exec(e)) => {
            l.duration_ms = millis(e.duration);
            l.stdout = e.stdout.text().into_owned();
            l.stderr = e.stderr.text().into_owned();
            l.stdout_truncated = e.stdout.truncated;
            l.stderr_truncated = e.stderr.truncated;
            match &e.status {
                ExecStatus::Exited(0) => {
                    l.outcome = "ok";
                    l.exit = Some(0);
                    l.ok = true;
                }
                ExecStatus::Exited(code) => {
                    l.outcome = "failed";
                    l.exit = Some(*code);
                }
                ExecStatus::Signaled(signal) => {
                    l.outcome = "signaled";
                    l.signal = Some(*signal);
                }
                ExecStatus::TimedOut => l.outcome = "timed out",
                ExecStatus::SpawnFailed(why) => {
                    l.outcome = "not started";
                    l.error = Some(why.clone());
                }
                ExecStatus::Lost(why) => {
                    l.outcome = "failed";
                    l.error = Some(why.clone());
                }
            }
        }
        HostState::Reported(Outcome::Chdir(c)) => match &c.error {
            None => {
                l.outcome = "ok";
                l.ok = true;
                l.stdout = format!("now in {}\n", c.dir);
            }
            Some(e) => {
                l.outcome = "failed";
                l.error = Some(format!("{e} (still in {})", c.dir));
            }
        },
        HostState::Reported(Outcome::Exit) => {
            l.outcome = "ok";
            l.ok = true;
            l.stdout = "leaving the group\n".into();
        }
        HostState::Reported(Outcome::Interrupted) => l.outcome = "interrupted",
        HostState::Reported(Outcome::Package(p)) => {
            l.duration_ms = millis(p.duration);
            let script_out = p.stdout.text();
            l.stderr = p.stderr.text().into_owned();
            l.stdout_truncated = p.stdout.truncated;
            l.stderr_truncated = p.stderr.truncated;
            let said = match &p.status {
                PackageStatus::Installed { previous: None } => {
                    Some(format!("installed {}", p.package))
                }
                PackageStatus::Installed {
                    previous: Some(old),
                } => Some(format!("installed {} (was {old})", p.package)),
                PackageStatus::AlreadyInstalled => Some(format!("{} already installed", p.package)),
                PackageStatus::Removed => Some(format!("removed {}", p.package)),
                PackageStatus::NotInstalled => Some(format!("{} was not installed", p.package)),
                PackageStatus::NotEligible(why) => {
                    l.outcome = "not eligible";
                    l.error = Some(why.clone());
                    None
                }
                PackageStatus::Failed(why) => {
                    l.outcome = "failed";
                    l.error = Some(why.clone());
                    l.stdout = script_out.clone().into_owned();
                    None
                }
            };
            if let Some(said) = said {
                l.outcome = "ok";
                l.ok = true;
                l.stdout = format!("{said}\n{script_out}");
            }
        }
        HostState::Pending | HostState::Unfinished(Unfinished::TimedOut) => l.outcome = "timed out",
        HostState::Unfinished(Unfinished::Disconnected) => l.outcome = "disconnected",
        HostState::Unfinished(Unfinished::Running) => l.outcome = "running",
        HostState::Unfinished(Unfinished::NoRecord) => l.outcome = "no record",
        HostState::UnknownHost => l.outcome = "unknown host",
        HostState::NotTargeted => l.outcome = "not targeted",
    }
    l
}

impl From<&JobReport> for Report {
    fn from(report: &JobReport) -> Report {
        let hosts: Vec<HostLine> = report
            .hosts
            .iter()
            .map(|(host, state)| line(host.clone(), state))
            .collect();
        let mut summary = Summary::default();
        for h in &hosts {
            match h.outcome {
                "ok" => summary.ok += 1,
                "failed" | "signaled" | "not started" => summary.failed += 1,
                "timed out" => summary.timed_out += 1,
                "disconnected" => summary.disconnected += 1,
                "unknown host" => summary.unknown_host += 1,
                "not targeted" => summary.not_targeted += 1,
                "not eligible" => summary.not_eligible += 1,
                _ => summary.other += 1,
            }
        }
        Report {
            job: report.job.to_string(),
            command: report.command.clone(),
            summary,
            hosts,
        }
    }
}

/// How [`escape`] treats line breaks and tabs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// One line (a host name, an error, one streamed output line): a tab
    /// is kept (it only moves the cursor right), `\n` is escaped.
    Line,
    /// A multi-line table cell: `\n` is kept; a tab becomes spaces to the
    /// next multiple of 8 columns, since the table counts it as one column
    /// and a raw tab would break the borders.
    Lines,
}

/// Host-supplied text made safe for a terminal, on one line: ESC is shown
/// as `\e`, CR as `\r`, every other C0 control (`\n` too), DEL and the C1
/// controls as `\xNN`, and the bidirectional overrides and isolates (which
/// reorder what is shown) as `\u{NNNN}`; a tab is kept. A backslash is left
/// as it is: the aim is that nothing reaches the terminal as a control, not
/// a reversible encoding (the JSON output is exact).
pub(crate) fn safe(text: &str) -> Cow<'_, str> {
    escape(text, Layout::Line)
}

/// As [`safe`], for text printed on several lines (a report's output
/// cell): `\n` is kept and tabs are expanded to spaces.
pub(crate) fn safe_lines(text: &str) -> Cow<'_, str> {
    escape(text, Layout::Lines)
}

/// Whether `c` must not reach the terminal as it is.
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape(text: &str, layout: Layout) -> Cow<'_, str> {
    let kept = |c: char| match layout {
        Layout::Line => c == '\t',
        Layout::Lines => c == '\n',
    };
    if !text.chars().any(|c| is_unsafe(c) && !kept(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    // Characters shown since the last line break, for the tab stops.
    let mut column = 0usize;
    for c in text.chars() {
        let shown = match c {
            '\n' if layout == Layout::Lines => {
                out.push('\n');
                column = 0;
                continue;
            }
            '\t' if layout == Layout::Lines => " ".repeat(8 - column % 8),
            '\t' => "\t".to_owned(),
            '\u{1b}' => "\\e".to_owned(),
            '\r' => "\\r".to_owned(),
            c if c.is_control() => format!("\\x{:02x}", u32::from(c)),
            c if is_unsafe(c) => format!("\\u{{{:04x}}}", u32::from(c)),
            c => c.to_string(),
        };
        column += shown.chars().count();
        out.push_str(&shown);
    }
    Cow::Owned(out)
}

/// Host names folded where they share a prefix and differ by a number:
/// `web-1,web-2,web-3,db-1` becomes `db-1,web-[1-3]`.
pub(crate) fn fold_hosts<'a>(hosts: impl IntoIterator<Item = &'a str>) -> String {
    let mut numbered: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut plain: Vec<&str> = Vec::new();
    for host in hosts {
        let digits = host.len() - host.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (prefix, number) = host.split_at(host.len() - digits);
        // Leading zeros would not survive the fold.
        match number.parse::<u64>() {
            Ok(n) if !number.starts_with('0') || number == "0" => {
                numbered.entry(prefix).or_default().push(n)
            }
            _ => plain.push(host),
        }
    }
    let mut parts: Vec<String> = plain.into_iter().map(str::to_owned).collect();
    for (prefix, mut numbers) in numbered {
        numbers.sort_unstable();
        numbers.dedup();
        if numbers.len() == 1 {
            parts.push(format!("{prefix}{}", numbers[0]));
            continue;
        }
        let mut ranges: Vec<String> = Vec::new();
        let mut start = numbers[0];
        let mut end = start;
        for &n in &numbers[1..] {
            if n == end + 1 {
                end = n;
            } else {
                ranges.push(range(start, end));
                start = n;
                end = n;
            }
        }
        ranges.push(range(start, end));
        parts.push(format!("{prefix}[{}]", ranges.join(",")));
    }
    parts.sort();
    safe(&parts.join(",")).into_owned()
}

/// The hosts a `--targets` list names, in the notation the reports print:
/// names separated by commas, where `web-[1-3,7]` stands for `web-1`,
/// `web-2`, `web-3` and `web-7` (what [`fold_hosts`] writes). At most
/// `max` names, so that `h[1-999999999]` is refused rather than
/// expanded.
pub(crate) fn expand_hosts(text: &str, max: usize) -> Result<Vec<String>, String> {
    let mut hosts = Vec::new();
    let mut push = |host: String| {
        if hosts.len() >= max {
            return Err(format!("{text:?} names more than {max} hosts"));
        }
        hosts.push(host);
        Ok(())
    };
    let mut rest = text;
    while !rest.is_empty() {
        // One item: up to a comma outside brackets.
        let mut depth = 0usize;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '[' => depth += 1,
                    ']' => depth = depth.saturating_sub(1),
                    _ => {}
                }
                c == ',' && depth == 0
            })
            .map_or(rest.len(), |(i, _)| i);
        let item = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or("");
        match item.split_once('[') {
            None if item.contains(']') => return Err(format!("unbalanced ']' in {item:?}")),
            None if item.is_empty() => return Err(format!("an empty host name in {text:?}")),
            None => push(item.to_owned())?,
            Some((prefix, ranges)) => {
                let ranges = ranges
                    .strip_suffix(']')
                    .filter(|r| !r.contains(['[', ']']))
                    .ok_or_else(|| {
                        format!("expected PREFIX[RANGES] like web-[1-3,7], found {item:?}")
                    })?;
                for part in ranges.split(',') {
                    let number = |n: &str| {
                        n.parse::<u64>()
                            .map_err(|_| format!("expected numbers in {item:?}, found {n:?}"))
                    };
                    let (start, end) = match part.split_once('-') {
                        Some((a, b)) => (number(a)?, number(b)?),
                        None => (number(part)?, number(part)?),
                    };
                    if start > end {
                        return Err(format!("the range {part:?} in {item:?} runs backwards"));
                    }
                    if end - start >= max as u64 {
                        return Err(format!("{text:?} names more than {max} hosts"));
                    }
                    for n in start..=end {
                        push(format!("{prefix}{n}"))?;
                    }
                }
            }
        }
    }
    if hosts.is_empty() {
        return Err("no host named".to_owned());
    }
    Ok(hosts)
}

fn range(start: u64, end: u64) -> String {
    if start == end {
        start.to_string()
    } else {
        format!("{start}-{end}")
    }
}

fn shown_output(h: &HostLine) -> String {
    let mut text = String::new();
    if let Some(e) = &h.error {
        text.push_str(&safe(e));
        text.push('\n');
    }
    let mut lines: Vec<&str> = h.stdout.lines().collect();
    lines.extend(h.stderr.lines());
    let total = lines.len();
    for l in lines.iter().take(SHOWN_LINES) {
        text.push_str(&safe_lines(l));
        text.push('\n');
    }
    if total > SHOWN_LINES {
        text.push_str(&format!("… {} more lines\n", total - SHOWN_LINES));
    }
    if h.stdout_truncated || h.stderr_truncated {
        text.push_str("(output truncated at the cap)\n");
    }
    text.trim_end().to_owned()
}

/// The table: one row per group of hosts with the same outcome, exit and
/// output; the hosts not targeted are left out (they are counted).
pub(crate) fn table(report: &Report) -> String {
    let mut groups: BTreeMap<(String, String, String), Vec<&HostLine>> = BTreeMap::new();
    for h in report.hosts.iter().filter(|h| h.outcome != "not targeted") {
        let exit = match (h.exit, h.signal) {
            (Some(code), _) => code.to_string(),
            (None, Some(signal)) => format!("signal {signal}"),
            _ => "-".into(),
        };
        groups
            .entry((h.outcome.to_owned(), exit, shown_output(h)))
            .or_default()
            .push(h);
    }
    let mut rows: Vec<_> = groups.into_iter().collect();
    // Failures first, then by size: what needs a look comes first.
    rows.sort_by_key(|((outcome, _, _), hosts)| (outcome == "ok", std::cmp::Reverse(hosts.len())));
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec!["hosts", "outcome", "exit", "duration", "output"]);
    // A terminal that reports no size (0 columns, as a pty made by `script`
    // or a serial console may) would squeeze every column to one character:
    // better unwrapped lines.
    if matches!(table.width(), Some(w) if w < MIN_WRAP_WIDTH) {
        table.set_content_arrangement(ContentArrangement::Disabled);
    }
    for ((outcome, exit, output), hosts) in rows {
        let names = fold_hosts(hosts.iter().map(|h| h.host.as_str()));
        let durations: Vec<u64> = hosts.iter().filter_map(|h| h.duration_ms).collect();
        let duration = match (durations.iter().min(), durations.iter().max()) {
            (Some(a), Some(b)) if a == b => format!("{a}ms"),
            (Some(a), Some(b)) => format!("{a}-{b}ms"),
            _ => "-".into(),
        };
        table.add_row(vec![
            Cell::new(format!("{names} ({})", hosts.len())),
            Cell::new(outcome),
            Cell::new(exit),
            Cell::new(duration),
            Cell::new(output),
        ]);
    }
    table.to_string()
}

/// The one-line summary under the table.
pub(crate) fn summary_line(report: &Report) -> String {
    let s = &report.summary;
    let mut parts = vec![format!("{} ok", s.ok)];
    for (n, what) in [
        (s.failed, "failed"),
        (s.not_eligible, "not eligible"),
        (s.timed_out, "timed out"),
        (s.disconnected, "disconnected"),
        (s.unknown_host, "unknown host"),
        (s.other, "other"),
        (s.not_targeted, "not targeted"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    format!(
        "job {}: {}",
        &report.job[..12.min(report.job.len())],
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_fold_into_ranges() {
        assert_eq!(
            fold_hosts(["web-1", "web-2", "web-3", "db-1", "web-7", "solo"]),
            "db-1,solo,web-[1-3,7]"
        );
        assert_eq!(fold_hosts(["a01", "a02"]), "a01,a02");
    }

    #[test]
    fn host_lists_expand_as_reports_fold_them() {
        let names = ["web-1", "web-2", "web-3", "db-1", "web-7", "solo"];
        let folded = fold_hosts(names);
        let mut expanded = expand_hosts(&folded, 100).unwrap();
        expanded.sort();
        let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(expanded, want);
        assert_eq!(expand_hosts("h[1-2],h9", 10).unwrap(), ["h1", "h2", "h9"]);
        assert_eq!(expand_hosts("a", 10).unwrap(), ["a"]);
        for bad in [
            "", "h[", "h]", "h[1-x]", "h[3-1]", "a,,b", "h[1-2]x", "h[[1]]",
        ] {
            assert!(expand_hosts(bad, 10).is_err(), "{bad:?} accepted");
        }
        assert!(expand_hosts("h[1-11]", 10).is_err());
        assert!(expand_hosts("h[0-18446744073709551615]", 4096).is_err());
        assert_eq!(expand_hosts("h[1-10]", 10).unwrap().len(), 10);
    }

    #[test]
    fn escapes_and_titles_do_not_reach_the_terminal() {
        assert_eq!(
            safe("\u{1b}]0;pwned\u{7}\u{1b}[2J"),
            "\\e]0;pwned\\x07\\e[2J"
        );
        assert_eq!(safe("a\rb\u{7f}c\u{9b}d\0"), "a\\rb\\x7fc\\x9bd\\x00");
        assert_eq!(safe("two\nlines"), "two\\x0alines");
        assert_eq!(safe("evil\u{202e}txt"), "evil\\u{202e}txt");
    }

    #[test]
    fn plain_text_is_borrowed_and_unchanged() {
        for text in ["uname -sr: Linux 6.1", "a\tb", "é ü 日本 \\ \"quoted\""] {
            assert!(
                matches!(safe(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
        assert!(matches!(safe_lines("one\ntwo"), Cow::Borrowed(_)));
    }

    #[test]
    fn lines_keep_line_breaks_and_expand_tabs() {
        assert_eq!(
            safe_lines("a\tb\nabcdefgh\tc"),
            "a       b\nabcdefgh        c"
        );
        assert_eq!(safe_lines("x\u{1b}[31m\ny"), "x\\e[31m\ny");
    }

    #[test]
    fn host_names_and_output_in_the_table_are_escaped() {
        let line = |host: &str, stdout: &str| HostLine {
            host: host.into(),
            outcome: "ok",
            exit: Some(0),
            signal: None,
            duration_ms: Some(1),
            stdout: stdout.into(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            error: Some("no\u{1b}[2Jpe".into()),
            ok: true,
        };
        let report = Report {
            job: "0123456789abcdef".into(),
            command: "printf".into(),
            summary: Summary::default(),
            hosts: vec![line(
                "evil\u{1b}]0;t\u{7}",
                "\u{1b}]0;pwned\u{7}\u{1b}[2J\nok",
            )],
        };
        let shown = table(&report);
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
            "{shown}"
        );
        assert!(shown.contains("\\e]0;pwned\\x07\\e[2J"), "{shown}");
        assert!(shown.contains("evil\\e]0;t\\x07"), "{shown}");
        assert!(shown.contains("no\\e[2Jpe"), "{shown}");
        // The JSON keeps the exact text.
        let json = serde_json::to_string(&report).unwrap_or_default();
        assert!(json.contains("\\u001b]0;pwned\\u0007"), "{json}");
    }
}
