//! `monitor siminst FILE` and `monitor siminst --remove NAME`.
//!
//! The monitor reads the package's manifest and digest locally, sends the
//! advertisement and then the file to its server (bounded frames; the
//! server spools it), and follows the job like any command: the same M/NR
//! report, `--json`, and exit statuses.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_client::message::{Request, Siminst, MAX_PACKAGE_DATA};
use flotilla_client::tracker::HostState;
use flotilla_client::{
    follow, Endpoint, FollowEvent, JobId, Outcome, PackageOutcome, PackageStatus, Targets,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{print_report, Failure, Output};

/// How a host's progress lines start (mgmtd's `siminst::PROGRESS_PREFIX`).
const PROGRESS_PREFIX: &str = "siminst: ";

/// What `monitor siminst FILE` was asked.
pub(crate) struct InstallArgs<'a> {
    pub(crate) file: &'a Path,
    pub(crate) targets: Targets,
    pub(crate) force: bool,
    pub(crate) sha256: Option<String>,
    pub(crate) timeout: Option<Duration>,
}

fn interactive(out: &Output) -> bool {
    std::io::stdout().is_terminal() && std::io::stderr().is_terminal() && !out.json
}

/// Prints a line that may carry host text (names, reasons, the command),
/// escaped for the terminal (see [`crate::report::safe`]).
fn say(bar: &Option<ProgressBar>, out: &Output, line: String) {
    let line = crate::report::safe(&line);
    match bar {
        Some(bar) => bar.println(line),
        None if !out.json => crate::eprint_line(&line),
        None => {}
    }
}

/// `monitor siminst FILE`.
pub(crate) async fn install(
    endpoint: &Endpoint,
    args: InstallArgs<'_>,
    job: JobId,
    out: &Output,
) -> Result<u8, Failure> {
    let inspection = packages::inspect(args.file)
        .with_context(|| format!("cannot use the package {}", args.file.display()))?;
    let manifest = inspection
        .manifest
        .to_yaml()
        .context("cannot encode the manifest")?;
    let actual = inspection.sha256.to_string();
    let sha256 = match args.sha256 {
        Some(expected) => {
            let expected = expected.to_ascii_lowercase();
            if expected != actual && !out.json {
                // Each host verifies the digest it was given: the report
                // then shows every host refusing the package.
                crate::eprint_line(&format!(
                    "warning: {} has digest {actual}, not the expected {expected}; the hosts will refuse it",
                    args.file.display()
                ));
            }
            expected
        }
        None => actual,
    };
    let request = Request::Siminst(Siminst {
        job,
        targets: args.targets,
        manifest,
        size: inspection.size,
        sha256,
        force: args.force,
        timeout: args.timeout,
    });
    let mut connection = crate::send_request(endpoint, &request).await?;
    let bar = interactive(out).then(|| {
        let bar = ProgressBar::new(inspection.size);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed}] sending {bytes}/{total_bytes} ({binary_bytes_per_sec})  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    });
    say(
        &bar,
        out,
        format!(
            "job {}: siminst {} {} ({}) via {endpoint}",
            job.short(),
            inspection.manifest.name,
            inspection.manifest.version,
            packages::format_bytes(inspection.size)
        ),
    );
    let started = Instant::now();
    let mut file = std::fs::File::open(args.file)
        .with_context(|| format!("cannot open {}", args.file.display()))?;
    let mut sent: u64 = 0;
    let mut buf = vec![0u8; MAX_PACKAGE_DATA];
    let mut upload_error = None;
    while sent < inspection.size {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", args.file.display()))?;
        if n == 0 {
            return Err(anyhow::anyhow!("{} shrank while it was sent", args.file.display()).into());
        }
        let n = n.min(usize::try_from(inspection.size - sent).unwrap_or(usize::MAX));
        // The server may refuse (and close) before taking everything: its
        // answer is read below.
        if let Err(e) = connection.send_package_data(&buf[..n]).await {
            upload_error = Some(e);
            break;
        }
        sent += n as u64;
        if let Some(bar) = &bar {
            bar.set_position(sent);
        }
    }
    let elapsed = started.elapsed();
    if upload_error.is_none() {
        let rate = sent as f64 / elapsed.as_secs_f64().max(1e-6) / (1024.0 * 1024.0);
        say(
            &bar,
            out,
            format!(
                "sent {} to the server in {:.2}s ({rate:.0} MiB/s); the server multicasts it to the eligible hosts",
                packages::format_bytes(sent),
                elapsed.as_secs_f64()
            ),
        );
    }
    if let Some(bar) = &bar {
        bar.set_length(0);
        bar.set_position(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] {pos}/{len} hosts done  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
    }
    // Per host: what its last progress line said (receiving 40%,
    // verifying, installing).
    let mut states: BTreeMap<String, String> = BTreeMap::new();
    let report = follow(&mut connection, |event, tracker| {
        if let FollowEvent::Output { host, line, .. } = event {
            if let Some(state) = line.strip_prefix(PROGRESS_PREFIX) {
                states.insert(crate::safe(host), crate::safe(state));
            }
        }
        observe(&bar, out, event);
        if let Some(bar) = &bar {
            crate::show_progress(bar, tracker, 6, |waiting| {
                waiting
                    .into_iter()
                    .map(|h| {
                        let h = crate::report::safe(h);
                        match states.get(h.as_ref()) {
                            Some(state) => format!("{h} {state}"),
                            None => format!("{h} eligible"),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            });
        }
    })
    .await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = match (report, upload_error) {
        (Ok(report), _) => report,
        (Err(e), Some(upload)) => {
            return Err(anyhow::anyhow!("{e} (sending the package: {upload})").into())
        }
        (Err(e), None) => return Err(anyhow::Error::new(e).context("the siminst failed").into()),
    };
    let code = print_report(&report, out)?;
    // Not eligible is no failure on a host, but a package that went
    // nowhere is no success either.
    let eligible = report.hosts.iter().any(|(_, state)| {
        !matches!(
            state,
            HostState::NotTargeted
                | HostState::Reported(Outcome::Package(PackageOutcome {
                    status: PackageStatus::NotEligible(_),
                    ..
                }))
        )
    });
    if code == 0 && !eligible {
        crate::eprint_line("monitor: no target is eligible for the package: nothing was installed");
        return Ok(1);
    }
    Ok(code)
}

fn observe(bar: &Option<ProgressBar>, out: &Output, event: FollowEvent<'_>) {
    match event {
        FollowEvent::Accepted(accepted) => say(
            bar,
            out,
            format!(
                "job {} on {} host(s): {}",
                accepted.job.short(),
                accepted.targets.len(),
                accepted.command
            ),
        ),
        FollowEvent::View { disconnected, .. } => {
            for host in disconnected {
                say(
                    bar,
                    out,
                    format!("{host}: disconnected (left the group before reporting)"),
                );
            }
        }
        FollowEvent::Result {
            host,
            outcome: Outcome::Package(p),
        } => {
            let state = match &p.status {
                PackageStatus::Installed { .. } => "installed".to_owned(),
                PackageStatus::AlreadyInstalled => "already installed".to_owned(),
                PackageStatus::Removed => "removed".to_owned(),
                PackageStatus::NotInstalled => "not installed".to_owned(),
                PackageStatus::NotEligible(why) => format!("not eligible: {why}"),
                PackageStatus::Failed(why) => format!("failed: {why}"),
            };
            if bar.is_some() {
                say(bar, out, format!("{host}: {state}"));
            }
        }
        _ => {}
    }
}

/// `monitor siminst --remove NAME`.
pub(crate) async fn remove(
    endpoint: &Endpoint,
    name: String,
    targets: Targets,
    job: JobId,
    out: &Output,
) -> Result<u8, Failure> {
    crate::run_job(endpoint, Request::Remove { job, targets, name }, out).await
}
